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

pub mod metrics;
pub mod process;

use crate::config::{LogFormat, LogSettings, Settings, TelemetrySettings};
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
    sampling_ratio: f64,
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
        let in_flight = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let batch = opentelemetry_sdk::trace::BatchSpanProcessor::builder(CountedExporter {
            inner: exporter,
            in_flight: in_flight.clone(),
        })
        // Set, not left to OTEL_BSP_MAX_QUEUE_SIZE: a smaller queue than the bound in front of
        // it would drop spans without counting them, and their room would never come back.
        .with_batch_config(
            opentelemetry_sdk::trace::BatchConfigBuilder::default()
                .with_max_queue_size(SPAN_QUEUE)
                .build(),
        )
        .build();
        Some(
            SdkTracerProvider::builder()
                .with_span_processor(BoundedQueue {
                    inner: batch,
                    in_flight,
                })
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
    metrics::set_max_label_values(telemetry.max_label_values);
    metrics::register();
    let _ = subscriber(log, tracer.as_ref()).try_init();
    let _ = TELEMETRY.set(Telemetry {
        tracer,
        sampling_ratio: telemetry.sampling_ratio,
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
        LogFormat::Json => fmt
            .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
            .event_format(JsonWithTrace(
                tracing_subscriber::fmt::format().json().with_target(false),
            ))
            .boxed(),
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

/// The node's configuration version: a hash of its effective configuration, without what
/// differs between the pods of one deployment by design (`node.name`, `cluster.advertise`).
/// Nodes with equal versions run the same configuration.
pub fn config_version(settings: &Settings) -> String {
    let mut s = settings.clone();
    s.node.name.clear();
    s.cluster.advertise.clear();
    // serde_json's maps are ordered: the text, and so the hash, is stable.
    let text = serde_json::to_value(&s)
        .and_then(|v| serde_json::to_vec(&v))
        .unwrap_or_default();
    // FNV-1a (64 bits): stable across builds and platforms, unlike std's hashers.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Whether the current span is in a trace (what `current_traceparent` would give, without
/// formatting it).
pub fn in_trace() -> bool {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    tracing::Span::current()
        .context()
        .span()
        .span_context()
        .is_valid()
}

/// W3C Trace Context (`traceparent`) of the current span, to send with a request to another
/// node; empty when there is no trace (telemetry off, or no span of ours is current). A trace
/// that is not sampled has one too: its flag tells the other node not to sample either.
pub fn current_traceparent() -> String {
    use opentelemetry::propagation::TextMapPropagator;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let cx = tracing::Span::current().context();
    let mut carrier = std::collections::HashMap::new();
    opentelemetry_sdk::propagation::TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove("traceparent").unwrap_or_default()
}

/// Makes `span` a child of the remote span a `traceparent` names (from another node or an
/// HTTP client); a missing or malformed one leaves the span a root.
pub fn follow(span: &tracing::Span, traceparent: &str) {
    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if traceparent.is_empty() {
        return;
    }
    let carrier =
        std::collections::HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
    let cx = opentelemetry_sdk::propagation::TraceContextPropagator::new().extract(&carrier);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// The JSON log line, with the `trace_id` and `span_id` of the span it was logged in (or of its
/// nearest traced ancestor) when traces are on: a line leads to its trace and back.
struct JsonWithTrace(
    tracing_subscriber::fmt::format::Format<tracing_subscriber::fmt::format::Json>,
);

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for JsonWithTrace
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        // Asked before formatting: the context lookup locks the span's extensions.
        let ids = trace_ids(ctx, event);
        let mut line = String::new();
        self.0.format_event(
            ctx,
            tracing_subscriber::fmt::format::Writer::new(&mut line),
            event,
        )?;
        match (ids, line.trim_end().strip_suffix('}')) {
            (Some((trace, span)), Some(body)) => {
                writeln!(
                    writer,
                    "{body},\"trace_id\":\"{trace}\",\"span_id\":\"{span}\"}}"
                )
            }
            _ => writer.write_str(&line),
        }
    }
}

fn trace_ids<S, N>(
    ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
    event: &tracing::Event<'_>,
) -> Option<(opentelemetry::trace::TraceId, opentelemetry::trace::SpanId)>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    use opentelemetry::trace::TraceContextExt;
    TELEMETRY.get()?.tracer.as_ref()?;
    let span = match event.parent() {
        Some(id) => ctx.span(id),
        None if event.is_contextual() => ctx.lookup_current(),
        None => None,
    }?;
    let dispatch = tracing::dispatcher::get_default(|d| d.clone());
    span.scope().find_map(|s| {
        let cx = tracing_opentelemetry::get_otel_context(&s.id(), &dispatch)?;
        let sc = cx.span().span_context().clone();
        // Only ids of what is exported: a line must not lead to a trace that is nowhere.
        (sc.is_valid() && sc.is_sampled()).then(|| (sc.trace_id(), sc.span_id()))
    })
}

/// Spans waiting for export at most: the batch processor's own queue size, so that this
/// bound, which counts what it drops, is the one that drops.
const SPAN_QUEUE: usize = 2048;

/// The batch span processor behind a bound that counts: a span past `SPAN_QUEUE` waiting is
/// dropped here and counted in `ipfixsvc.telemetry.spans{outcome="dropped"}` (the SDK's own
/// queue drops silently).
#[derive(Debug)]
struct BoundedQueue {
    inner: opentelemetry_sdk::trace::BatchSpanProcessor,
    in_flight: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl opentelemetry_sdk::trace::SpanProcessor for BoundedQueue {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &opentelemetry::Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: opentelemetry_sdk::trace::SpanData) {
        use std::sync::atomic::Ordering::AcqRel;
        if self.in_flight.fetch_add(1, AcqRel) >= SPAN_QUEUE {
            self.in_flight.fetch_sub(1, AcqRel);
            metrics::span_outcome(metrics::SpanOutcome::Dropped, 1);
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The OTLP span exporter, counting what it exported and what failed, and giving the bound its
/// room back.
#[derive(Debug)]
struct CountedExporter<E> {
    inner: E,
    in_flight: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl<E: opentelemetry_sdk::trace::SpanExporter> opentelemetry_sdk::trace::SpanExporter
    for CountedExporter<E>
{
    async fn export(
        &self,
        batch: Vec<opentelemetry_sdk::trace::SpanData>,
    ) -> opentelemetry_sdk::error::OTelSdkResult {
        let n = batch.len();
        let result = self.inner.export(batch).await;
        self.in_flight
            .fetch_sub(n, std::sync::atomic::Ordering::AcqRel);
        let outcome = if result.is_ok() {
            metrics::SpanOutcome::Exported
        } else {
            metrics::SpanOutcome::Failed
        };
        metrics::span_outcome(outcome, n as u64);
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// An HTTP client's `traceparent`, with the sampling decision made here: the client's trace is
/// joined, but its sampled flag does not override `telemetry.sampling_ratio` (any client could
/// otherwise have every request of its exported). The decision is the ratio sampler's, from the
/// trace id, so every node decides alike. `None` for a header that is not a traceparent.
pub fn client_traceparent(header: &str) -> Option<String> {
    traceparent_at(header, TELEMETRY.get().map_or(0.0, |t| t.sampling_ratio))
}

fn traceparent_at(header: &str, ratio: f64) -> Option<String> {
    let parts: Vec<&str> = header.trim().split('-').collect();
    let [version, trace, span, _flags] = parts[..] else {
        return None;
    };
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    if version != "00" || !hex(trace, 32) || !hex(span, 16) {
        return None;
    }
    // The ratio sampler's test: the trace id's low 64 bits, shifted, against ratio x 2^63.
    let low = u64::from_str_radix(&trace[16..], 16).ok()?;
    let keep = (low >> 1) < (ratio.clamp(0.0, 1.0) * (1u64 << 63) as f64) as u64;
    Some(format!(
        "00-{trace}-{span}-{}",
        if keep { "01" } else { "00" }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clients_traceparent_is_joined_with_our_own_sampling_decision() {
        let t = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        assert_eq!(traceparent_at(t, 1.0).as_deref(), Some(t));
        assert_eq!(
            traceparent_at(t, 0.0).as_deref(),
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"),
            "the client's sampled flag does not force sampling"
        );
        // The low 64 bits 0x8448eb211c80319c >> 1 is about 0.52 of 2^63: kept at 0.6, not 0.5.
        assert!(traceparent_at(t, 0.6).is_some_and(|p| p.ends_with("-01")));
        assert!(traceparent_at(t, 0.5).is_some_and(|p| p.ends_with("-00")));
        for bad in [
            "",
            "garbage",
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333g-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
        ] {
            assert_eq!(traceparent_at(bad, 1.0), None, "{bad}");
        }
    }

    #[test]
    fn the_config_version_ignores_what_differs_between_pods_by_design() {
        let a = Settings::default();
        let mut b = a.clone();
        b.node.name = "other-pod".into();
        b.cluster.advertise = "10.0.0.9:4800".into();
        assert_eq!(config_version(&a), config_version(&b));
        b.jobs.workers += 1;
        assert_ne!(config_version(&a), config_version(&b));
        assert_eq!(config_version(&a).len(), 16);
    }
}
