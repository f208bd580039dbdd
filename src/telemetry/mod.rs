//! Logs, traces and metrics. Logs are a `tracing` subscriber on standard error (standard output
//! stays free for records). Traces: `tracing` spans, exported over OTLP/HTTP when
//! `telemetry.otlp_endpoint` is set (sampled at `telemetry.sampling_ratio`, decided where a trace
//! starts). Metrics: OpenTelemetry instruments (`global::meter`), read by two readers: the
//! Prometheus registry that `/metrics` renders, and the OTLP exporter when it is set. One set of
//! instruments, two ways out.
//!
//! An OTLP receiver that is down or slow costs the service nothing but the data: spans wait in
//! the batch processor's bounded queue (dropped past it), and exports run on the SDK's own
//! threads with a timeout. The SDK's own export errors are logged at most as errors, through
//! the same subscriber.

use crate::config::{LogFormat, LogSettings, TelemetrySettings};
use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use std::io::IsTerminal;
use std::sync::OnceLock;
use std::time::Duration;
use tracing_subscriber::filter::FilterExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The SDK's own log lines (failed exports), at most one per this many seconds.
const SDK_LOG_EVERY_SECS: u64 = 60;
/// The filter's calls for one event come within this many milliseconds of each other.
const ONE_EVENT_MS: u64 = 10;

/// How long an OTLP export may take before it is given up.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

struct Telemetry {
    tracer: Option<SdkTracerProvider>,
    meter: SdkMeterProvider,
    registry: prometheus::Registry,
}

static TELEMETRY: OnceLock<Telemetry> = OnceLock::new();

/// Logs only, as `dump`, `convert` and `send` want.
pub fn init(settings: &LogSettings) {
    let _ = subscriber(settings, None).try_init();
}

/// Logs, traces and metrics for `serve`. A second call (tests) keeps the first setup.
pub fn init_node(
    log: &LogSettings,
    telemetry: &TelemetrySettings,
    node: &str,
) -> Result<(), String> {
    if TELEMETRY.get().is_some() {
        return Ok(());
    }
    let resource = Resource::builder()
        .with_service_name("ipfixsvc")
        .with_attribute(KeyValue::new("service.instance.id", node.to_string()))
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    let base = telemetry.otlp_endpoint.trim_end_matches('/');
    let tracer = if base.is_empty() {
        None
    } else {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(format!("{base}/v1/traces"))
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| format!("telemetry.otlp_endpoint (traces): {e}"))?;
        Some(
            SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                    telemetry.sampling_ratio,
                ))))
                .with_resource(resource.clone())
                .build(),
        )
    };
    let registry = prometheus::Registry::new();
    let prometheus = opentelemetry_prometheus::exporter()
        .with_registry(registry.clone())
        .without_target_info()
        .build()
        .map_err(|e| format!("metrics: {e}"))?;
    let mut meter = SdkMeterProvider::builder()
        .with_reader(prometheus)
        .with_resource(resource);
    if !base.is_empty() {
        let exporter = opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .with_endpoint(format!("{base}/v1/metrics"))
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .map_err(|e| format!("telemetry.otlp_endpoint (metrics): {e}"))?;
        meter = meter.with_reader(
            PeriodicReader::builder(exporter)
                .with_interval(Duration::from_secs(telemetry.metrics_interval_secs))
                .build(),
        );
    }
    let meter = meter.build();
    opentelemetry::global::set_meter_provider(meter.clone());
    let _ = subscriber(log, tracer.as_ref()).try_init();
    let _ = TELEMETRY.set(Telemetry {
        tracer,
        meter,
        registry,
    });
    Ok(())
}

/// The log layer (text on a terminal or JSON, with its own filter) and, with a tracer, the
/// OpenTelemetry layer with a filter of its own: a global filter would also decide which spans
/// are exported.
fn subscriber(
    settings: &LogSettings,
    tracer: Option<&SdkTracerProvider>,
) -> impl tracing::Subscriber + Send + Sync {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"))
        // The SDK reports each failed export (about once a second with no receiver): errors
        // only.
        .add_directive("opentelemetry=error".parse().expect("a directive"))
        .add_directive("opentelemetry_sdk=error".parse().expect("a directive"))
        .add_directive("opentelemetry_otlp=error".parse().expect("a directive"));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    let fmt = match settings.format {
        LogFormat::Json => fmt.json().boxed(),
        LogFormat::Text => fmt.boxed(),
    };
    // A receiver that is down makes the SDK report every failed export: one line a minute.
    let last_sdk_line = std::sync::atomic::AtomicU64::new(0);
    let quiet_sdk = tracing_subscriber::filter::dynamic_filter_fn(move |meta, _cx| {
        if !meta.target().starts_with("opentelemetry") {
            return true;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_millis() as u64);
        // The filter is asked more than once for one event, within microseconds: what is asked
        // within ONE_EVENT of the line let through belongs to it. Exports are a second or more
        // apart, so a second failure never falls in it.
        let last = last_sdk_line.load(std::sync::atomic::Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < ONE_EVENT_MS {
            return true;
        }
        (last == 0 || now >= last + SDK_LOG_EVERY_SECS * 1000)
            && last_sdk_line
                .compare_exchange(
                    last,
                    now,
                    std::sync::atomic::Ordering::Relaxed,
                    std::sync::atomic::Ordering::Relaxed,
                )
                .is_ok()
    });
    let otel = tracer.map(|t| {
        tracing_opentelemetry::layer()
            .with_tracer(t.tracer("ipfixsvc"))
            // Busy/idle time and thread names on every span: noise at a collector.
            .with_tracked_inactivity(false)
            .with_threads(false)
            .with_filter(EnvFilter::new("ipfixsvc=info"))
    });
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter.and(quiet_sdk)))
        .with(otel)
}

/// The metrics in the Prometheus text format (`/metrics`); empty before `init_node`.
pub fn prometheus_text() -> String {
    let Some(t) = TELEMETRY.get() else {
        return String::new();
    };
    prometheus::TextEncoder::new()
        .encode_to_string(&t.registry.gather())
        .unwrap_or_default()
}

/// Exports what is left (spans in the queue, the last metrics), within `within`: the SDK's
/// exporters block, so they run on a thread of their own that the process does not wait for
/// past it.
pub fn shutdown(within: Duration) {
    let Some(t) = TELEMETRY.get() else {
        return;
    };
    let (tracer, meter) = (t.tracer.clone(), t.meter.clone());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        if let Some(t) = tracer {
            let _ = t.shutdown();
        }
        let _ = meter.shutdown();
        let _ = tx.send(());
    });
    let _ = rx.recv_timeout(within);
}
