//! The node's figures as OpenTelemetry instruments, read by `/metrics` and the OTLP exporter
//! alike. Three ways in, by where a figure lives:
//!
//! - Hot-path counts (each exporter's messages, records, bytes...; each tenant's busy time;
//!   each actor kind's messages and busy time) are atomics here, added to by the actors as they
//!   work and read by observable instruments when a reader collects. Nothing on the hot path
//!   waits for telemetry.
//! - Figures an actor holds in its state (the collector's session counts, the template cache,
//!   the streams, the job queue, the process itself) are sampled by the TelemetrySampler every
//!   `telemetry.sample_secs` (and when `/metrics` is scraped) and published here as a snapshot.
//! - Durations (HTTP requests, Redis operations, cluster calls, sink writes, jobs' wait and run
//!   times) are histograms recorded where they happen.
//!
//! Per-tenant and per-exporter labels are capped (`telemetry.max_label_values` distinct values
//! each): an exporter churning through addresses must not make the node's telemetry its memory
//! problem. Values past the cap are folded into `other`, and every fold is counted.

use opentelemetry::KeyValue;
use opentelemetry::metrics::Meter;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// What a capped label's folded values are called.
pub const OTHER: &str = "other";

pub fn meter() -> Meter {
    opentelemetry::global::meter("ipfixsvc")
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The maps hold counters only: one a panicking thread left half-updated is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One label dimension's values, capped: the first `max` distinct values are kept, the rest
/// are `other`. A value once kept stays kept (its series already exist).
pub struct LabelCap {
    max: AtomicUsize,
    seen: Mutex<HashSet<String>>,
    folded: AtomicU64,
}

impl LabelCap {
    fn new(max: usize) -> LabelCap {
        LabelCap {
            max: AtomicUsize::new(max),
            seen: Mutex::new(HashSet::new()),
            folded: AtomicU64::new(0),
        }
    }

    /// The label value `v` is shown as.
    pub fn value(&self, v: &str) -> String {
        let mut seen = lock(&self.seen);
        if seen.contains(v) {
            return v.to_string();
        }
        if seen.len() < self.max.load(Relaxed) {
            seen.insert(v.to_string());
            return v.to_string();
        }
        self.folded.fetch_add(1, Relaxed);
        OTHER.to_string()
    }

    pub fn folded(&self) -> u64 {
        self.folded.load(Relaxed)
    }
}

/// What one exporter session counts, in the order of `COUNTS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    Messages,
    Bytes,
    DataRecords,
    OptionsRecords,
    DecodeErrors,
    SequenceLost,
    DroppedNoTemplate,
    DroppedBufferFull,
    DroppedDatagrams,
    Templates,
}

const N_COUNTS: usize = 10;

/// A count, its instrument, and the attribute that tells it from others in the same one.
type CountMeta = (Count, &'static str, Option<(&'static str, &'static str)>);

const COUNTS: [CountMeta; N_COUNTS] = [
    (Count::Messages, "ipfixsvc.collector.messages", None),
    (Count::Bytes, "ipfixsvc.collector.io", None),
    (
        Count::DataRecords,
        "ipfixsvc.collector.records",
        Some(("ipfix.set.kind", "data")),
    ),
    (
        Count::OptionsRecords,
        "ipfixsvc.collector.records",
        Some(("ipfix.set.kind", "options")),
    ),
    (
        Count::DecodeErrors,
        "ipfixsvc.collector.decode_errors",
        None,
    ),
    (
        Count::SequenceLost,
        "ipfixsvc.collector.sequence_lost",
        None,
    ),
    (
        Count::DroppedNoTemplate,
        "ipfixsvc.collector.dropped_sets",
        Some(("reason", "no_template")),
    ),
    (
        Count::DroppedBufferFull,
        "ipfixsvc.collector.dropped_sets",
        Some(("reason", "buffer_full")),
    ),
    (
        Count::DroppedDatagrams,
        "ipfixsvc.collector.dropped_datagrams",
        None,
    ),
    (
        Count::Templates,
        "ipfixsvc.collector.templates_received",
        None,
    ),
];

/// The per-exporter counters' instruments: name, unit, description.
const EXPORTER_INSTRUMENTS: [(&str, &str, &str); 8] = [
    (
        "ipfixsvc.collector.messages",
        "{message}",
        "IPFIX and NetFlow v9 messages decoded",
    ),
    (
        "ipfixsvc.collector.io",
        "By",
        "bytes of the messages decoded",
    ),
    (
        "ipfixsvc.collector.records",
        "{record}",
        "records decoded, by set kind (data, options)",
    ),
    (
        "ipfixsvc.collector.decode_errors",
        "{message}",
        "messages that could not be decoded (malformed, refused templates, a broken stream)",
    ),
    (
        "ipfixsvc.collector.sequence_lost",
        "{record}",
        "data records missing by the sequence numbers (NetFlow v9: packets)",
    ),
    (
        "ipfixsvc.collector.dropped_sets",
        "{set}",
        "Data Sets dropped undecoded, by reason (no_template, buffer_full)",
    ),
    (
        "ipfixsvc.collector.dropped_datagrams",
        "{datagram}",
        "UDP datagrams dropped because the session's queue was full",
    ),
    (
        "ipfixsvc.collector.templates_received",
        "{template}",
        "Template and Options Template Records received",
    ),
];

/// The counters of one (tenant, exporter, transport) label set; every session of that set adds
/// to it, so it outlives the sessions.
#[derive(Default)]
pub struct ExporterSeries {
    counts: [AtomicU64; N_COUNTS],
    live: AtomicI64,
    /// Bytes its live sessions hold (Data Sets waiting for a template), as they last said.
    held: AtomicI64,
    /// What its live sessions' queues hold, read when asked (a session that is stuck does not
    /// say).
    queues: Mutex<Vec<Weak<dyn Held>>>,
    /// `STATE.clock` when a session last published to it.
    active: AtomicU64,
}

/// Memory a session's queue holds, read when the tenant's memory is sampled.
pub trait Held: Send + Sync {
    fn held(&self) -> usize;
}

/// A session's own totals, as last added to its series.
pub type SessionCounts = [u64; N_COUNTS];

impl ExporterSeries {
    /// Adds what a session counted since it last published (`last`, updated).
    pub fn publish(&self, last: &mut SessionCounts, now: &SessionCounts) {
        self.active.store(STATE.clock.load(Relaxed), Relaxed);
        for i in 0..N_COUNTS {
            let d = now[i].saturating_sub(last[i]);
            if d > 0 {
                self.counts[i].fetch_add(d, Relaxed);
            }
        }
        *last = *now;
    }

    fn get(&self, c: Count) -> u64 {
        self.counts[c as usize].load(Relaxed)
    }
}

/// A live session of a series: counted in `ipfixsvc.collector.sessions`, and what it holds in
/// its tenant's memory, until dropped.
pub struct LiveSession {
    series: Arc<ExporterSeries>,
    held: i64,
}

impl LiveSession {
    pub fn series(&self) -> &ExporterSeries {
        &self.series
    }

    /// Counts what `queue` holds in the tenant's memory while it lives.
    pub fn watch(&self, queue: Weak<dyn Held>) {
        lock(&self.series.queues).push(queue);
    }

    /// The bytes the session holds now.
    pub fn set_held(&mut self, bytes: usize) {
        let bytes = bytes as i64;
        if bytes != self.held {
            self.series.held.fetch_add(bytes - self.held, Relaxed);
            self.held = bytes;
        }
    }
}

impl Drop for LiveSession {
    fn drop(&mut self) {
        self.series.live.fetch_sub(1, Relaxed);
        self.series.held.fetch_sub(self.held, Relaxed);
    }
}

/// Bytes held by each tenant's live sessions.
pub fn held_by_tenant() -> HashMap<String, u64> {
    let mut out: HashMap<String, u64> = HashMap::new();
    for ((tenant, _, _), s) in lock(&STATE.exporters_series).iter() {
        let mut queued = 0;
        lock(&s.queues).retain(|q| match q.upgrade() {
            Some(q) => {
                queued += q.held() as u64;
                true
            }
            None => false,
        });
        *out.entry(tenant.clone()).or_default() += s.held.load(Relaxed).max(0) as u64 + queued;
    }
    out
}

/// Advances the coarse clock series are marked with (seconds since the sampler began), and
/// removes the series no session has used for `idle`, freeing their exporter label values: a
/// cap filled by exporters that came and went (or by forged sources) frees itself. Their
/// counters start again from zero if the exporter comes back (a counter reset).
pub fn sweep(now_secs: u64, idle: Duration) {
    STATE.clock.store(now_secs, Relaxed);
    let mut series = lock(&STATE.exporters_series);
    let before = series.len();
    series.retain(|_, s| {
        s.live.load(Relaxed) > 0 || now_secs.saturating_sub(s.active.load(Relaxed)) < idle.as_secs()
    });
    if series.len() < before {
        let used: HashSet<&str> = series.keys().map(|k| k.1.as_str()).collect();
        lock(&STATE.exporters.seen).retain(|e| used.contains(e.as_str()));
    }
}

/// Whose work a tenant's busy time was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Work {
    Session,
    Stream,
    Job,
}

impl Work {
    pub fn name(self) -> &'static str {
        match self {
            Work::Session => "session",
            Work::Stream => "stream",
            Work::Job => "job",
        }
    }
}

/// Time spent working for one tenant, in nanoseconds.
#[derive(Default)]
pub struct Busy(AtomicU64);

impl Busy {
    pub fn add(&self, d: std::time::Duration) {
        self.0.fetch_add(d.as_nanos() as u64, Relaxed);
    }
}

/// The actors whose messages and busy time are counted, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActorKind {
    ExporterSession,
    TcpListener,
    UdpListener,
    ExportStream,
    TemplateCache,
    ClusterMember,
    SessionDirectory,
    JobSupervisor,
    ConversionJob,
    TimeSeriesJob,
    AnalysisJob,
    TelemetrySampler,
}

const N_ACTOR_KINDS: usize = 12;

const ACTOR_NAMES: [&str; N_ACTOR_KINDS] = [
    "ExporterSession",
    "TcpListener",
    "UdpListener",
    "ExportStream",
    "TemplateCache",
    "ClusterMember",
    "SessionDirectory",
    "JobSupervisor",
    "PcapConversionJob",
    "TimeSeriesJob",
    "AnalysisJob",
    "TelemetrySampler",
];

#[derive(Default)]
struct ActorSeries {
    messages: AtomicU64,
    busy_ns: AtomicU64,
}

/// Counts one message of an actor kind when dropped, with the time since it was made.
pub struct ActorBusy(ActorKind, Instant);

impl Drop for ActorBusy {
    fn drop(&mut self) {
        self.0.handled(self.1);
    }
}

impl ActorKind {
    /// Held while synchronous work is done: `let _busy = ActorKind::X.busy();`.
    pub fn busy(self) -> ActorBusy {
        ActorBusy(self, Instant::now())
    }

    /// One message handled, which took since `started`.
    pub fn handled(self, started: Instant) {
        self.handled_in(started.elapsed());
    }

    /// One message handled, which kept the actor busy for `busy`.
    pub fn handled_in(self, busy: Duration) {
        let s = &STATE.actors[self as usize];
        s.messages.fetch_add(1, Relaxed);
        s.busy_ns.fetch_add(busy.as_nanos() as u64, Relaxed);
    }

    /// Handles one message (`work`), counting the time spent running it: its polls, not its
    /// waits (a handler that waits for another actor or for I/O is not busy meanwhile).
    pub async fn timed<T>(self, work: impl Future<Output = T>) -> T {
        let (out, busy) = Polled::new(work).await;
        self.handled_in(busy);
        out
    }
}

pin_project_lite::pin_project! {
    /// A future, and the time spent in its polls: the time it kept a thread busy, without the
    /// time it waited (for a lock, a queue, the network).
    pub struct Polled<F> {
        #[pin]
        inner: F,
        spent: Duration,
    }
}

impl<F> Polled<F> {
    pub fn new(inner: F) -> Polled<F> {
        Polled {
            inner,
            spent: Duration::ZERO,
        }
    }
}

impl<F: Future> Future for Polled<F> {
    type Output = (F::Output, Duration);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let started = Instant::now();
        let r = this.inner.poll(cx);
        *this.spent += started.elapsed();
        r.map(|out| (out, *this.spent))
    }
}

/// What became of a span handed to the exporter.
#[derive(Debug, Clone, Copy)]
pub enum SpanOutcome {
    Exported,
    Failed,
    Dropped,
}

const SPAN_OUTCOMES: [&str; 3] = ["exported", "failed", "dropped"];

pub fn span_outcome(outcome: SpanOutcome, n: u64) {
    STATE.spans[outcome as usize].fetch_add(n, Relaxed);
}

/// One point of a sampled instrument.
#[derive(Debug, Clone)]
pub struct Point {
    pub attrs: Vec<KeyValue>,
    pub value: f64,
}

/// What the TelemetrySampler read last, by instrument name.
pub type Sample = HashMap<&'static str, Vec<Point>>;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
}

/// The sampled instruments: name, kind, unit, description. The TelemetrySampler fills them.
const SAMPLED: &[(&str, Kind, &str, &str)] = &[
    (
        "process.cpu.time",
        Kind::Counter,
        "s",
        "CPU time of the process, by cpu.mode (user, system)",
    ),
    (
        "process.memory.usage",
        Kind::Gauge,
        "By",
        "resident memory of the process",
    ),
    (
        "process.memory.virtual",
        Kind::Gauge,
        "By",
        "virtual memory of the process",
    ),
    (
        "process.thread.count",
        Kind::Gauge,
        "{thread}",
        "threads of the process",
    ),
    (
        "process.unix.file_descriptor.count",
        Kind::Gauge,
        "{file_descriptor}",
        "open file descriptors (sockets included)",
    ),
    (
        "ipfixsvc.thread.cpu.time",
        Kind::Counter,
        "s",
        "CPU time by thread name (runtime workers, running jobs, exporters' threads), threads \
         that ended included",
    ),
    (
        "ipfixsvc.tenant.cpu.time",
        Kind::Counter,
        "s",
        "process CPU time attributed to a tenant, by work (session, stream, job)",
    ),
    (
        "ipfixsvc.tenant.memory.usage",
        Kind::Gauge,
        "By",
        "memory held for a tenant: queued datagrams and held Data Sets of its sessions, its \
         streams' queues",
    ),
    (
        "ipfixsvc.cpu.unattributed.time",
        Kind::Counter,
        "s",
        "process CPU time not attributed to a tenant (runtime, API, cluster, telemetry)",
    ),
    (
        "ipfixsvc.collector.sessions.refused",
        Kind::Counter,
        "{session}",
        "sessions refused, by reason (limit_tcp, limit_udp, unknown_exporter, tls_handshake)",
    ),
    (
        "ipfixsvc.collector.sessions.failed",
        Kind::Counter,
        "{session}",
        "sessions that failed",
    ),
    (
        "ipfixsvc.collector.sessions.evicted",
        Kind::Counter,
        "{session}",
        "idle UDP sessions retired for a newcomer",
    ),
    (
        "ipfixsvc.collector.lost_datagrams",
        Kind::Counter,
        "{datagram}",
        "datagrams queued for a UDP session that ended before reading them",
    ),
    (
        "ipfixsvc.collector.memory.usage",
        Kind::Gauge,
        "By",
        "memory the collector holds, by use (templates, udp_queue, pending_sets)",
    ),
    (
        "ipfixsvc.template_cache.templates",
        Kind::Gauge,
        "{template}",
        "templates in the node's cache",
    ),
    (
        "ipfixsvc.template_cache.memory.usage",
        Kind::Gauge,
        "By",
        "bytes of templates in the node's cache",
    ),
    (
        "ipfixsvc.template_store.healthy",
        Kind::Gauge,
        "",
        "1 when the template store answers",
    ),
    (
        "ipfixsvc.template_cache.lookups",
        Kind::Counter,
        "{lookup}",
        "template lookups, by where they were answered (cache, store)",
    ),
    (
        "ipfixsvc.template_cache.conflicts",
        Kind::Counter,
        "{template}",
        "keys defined differently by two live sessions",
    ),
    (
        "ipfixsvc.template_cache.dropped_messages",
        Kind::Counter,
        "{message}",
        "session messages the cache had no room for",
    ),
    (
        "ipfixsvc.stream.queue.usage",
        Kind::Gauge,
        "By",
        "bytes of records waiting in a stream's queue",
    ),
    (
        "ipfixsvc.stream.queue.limit",
        Kind::Gauge,
        "By",
        "a stream's queue capacity",
    ),
    (
        "ipfixsvc.stream.records",
        Kind::Counter,
        "{record}",
        "records through a stream, by direction (in, out, filtered, dropped)",
    ),
    (
        "ipfixsvc.stream.sink.errors",
        Kind::Counter,
        "{error}",
        "writes a stream's sink failed",
    ),
    (
        "ipfixsvc.stream.restarts",
        Kind::Counter,
        "{restart}",
        "times a stream's actor was restarted",
    ),
    (
        "ipfixsvc.stream.breaker.state",
        Kind::Gauge,
        "",
        "1 for a network sink's circuit breaker state (closed, open, half-open), 0 otherwise",
    ),
    (
        "ipfixsvc.jobs.queue.depth",
        Kind::Gauge,
        "{job}",
        "jobs waiting for a worker",
    ),
    (
        "ipfixsvc.jobs.running",
        Kind::Gauge,
        "{job}",
        "jobs running",
    ),
    (
        "ipfixsvc.jobs.workers",
        Kind::Gauge,
        "{worker}",
        "job workers (jobs.workers)",
    ),
    (
        "ipfixsvc.cluster.members",
        Kind::Gauge,
        "{node}",
        "nodes this node is connected to, itself included",
    ),
    (
        "ipfixsvc.node.info",
        Kind::Gauge,
        "",
        "1, labelled with the node's config.version and service.version",
    ),
];

/// An exporter series' labels: tenant, exporter, transport.
type SeriesKey = (String, String, &'static str);

struct State {
    tenants: LabelCap,
    exporters: LabelCap,
    threads: LabelCap,
    exporters_series: Mutex<HashMap<SeriesKey, Arc<ExporterSeries>>>,
    busy: Mutex<HashMap<(String, Work), Arc<Busy>>>,
    actors: [ActorSeries; N_ACTOR_KINDS],
    sample: Mutex<Arc<Sample>>,
    spans: [AtomicU64; 3],
    /// Seconds since the sampler began (see `sweep`).
    clock: AtomicU64,
    /// Nodes of one process (tests) share the instruments: registered once.
    registered: std::sync::Once,
}

static STATE: LazyLock<State> = LazyLock::new(|| State {
    tenants: LabelCap::new(200),
    exporters: LabelCap::new(200),
    threads: LabelCap::new(64),
    exporters_series: Mutex::new(HashMap::new()),
    busy: Mutex::new(HashMap::new()),
    actors: Default::default(),
    sample: Mutex::new(Arc::new(Sample::new())),
    spans: Default::default(),
    clock: AtomicU64::new(0),
    registered: std::sync::Once::new(),
});

/// Sets the label caps (`telemetry.max_label_values`).
pub fn set_max_label_values(max: usize) {
    STATE.tenants.max.store(max, Relaxed);
    STATE.exporters.max.store(max, Relaxed);
}

/// The tenant label for `tenant` (capped).
pub fn tenant_label(tenant: &str) -> String {
    STATE.tenants.value(tenant)
}

/// The thread-name label (capped: thread names are few, but not the service's to choose).
pub fn thread_label(name: &str) -> String {
    STATE.threads.value(name)
}

/// A new live session of `tenant`'s exporter at `addr` over `transport`: its series (made on
/// first use), counted live until the guard drops.
pub fn exporter_session(
    tenant: &str,
    addr: std::net::IpAddr,
    transport: &'static str,
) -> LiveSession {
    let key = (
        STATE.tenants.value(tenant),
        STATE.exporters.value(&addr.to_string()),
        transport,
    );
    let series = lock(&STATE.exporters_series)
        .entry(key)
        .or_default()
        .clone();
    series.live.fetch_add(1, Relaxed);
    series.active.store(STATE.clock.load(Relaxed), Relaxed);
    LiveSession { series, held: 0 }
}

/// Where a tenant's busy time of one kind of work is added.
pub fn busy(tenant: &str, work: Work) -> Arc<Busy> {
    let key = (STATE.tenants.value(tenant), work);
    lock(&STATE.busy).entry(key).or_default().clone()
}

/// Every tenant's busy time so far, in seconds.
pub fn busy_totals() -> Vec<((String, Work), f64)> {
    lock(&STATE.busy)
        .iter()
        .map(|(k, b)| (k.clone(), b.0.load(Relaxed) as f64 / 1e9))
        .collect()
}

/// Replaces what the sampled instruments show.
pub fn publish(sample: Sample) {
    *lock(&STATE.sample) = Arc::new(sample);
}

fn attrs(tenant: &str, exporter: &str, transport: &'static str) -> Vec<KeyValue> {
    vec![
        KeyValue::new("tenant", tenant.to_string()),
        KeyValue::new("exporter", exporter.to_string()),
        KeyValue::new("transport", transport),
    ]
}

/// Registers every observable instrument with the global meter provider (once a process).
pub fn register() {
    STATE.registered.call_once(|| {
        let m = meter();
        for (name, unit, help) in EXPORTER_INSTRUMENTS {
            let _ = m
                .u64_observable_counter(name)
                .with_unit(unit)
                .with_description(help)
                .with_callback(move |o| {
                    let series = lock(&STATE.exporters_series);
                    for ((tenant, exporter, transport), s) in series.iter() {
                        for (count, instrument, extra) in COUNTS {
                            if instrument != name {
                                continue;
                            }
                            let mut a = attrs(tenant, exporter, transport);
                            if let Some((k, v)) = extra {
                                a.push(KeyValue::new(k, v));
                            }
                            o.observe(s.get(count), &a);
                        }
                    }
                })
                .build();
        }
        let _ = m
            .i64_observable_up_down_counter("ipfixsvc.collector.sessions")
            .with_unit("{session}")
            .with_description("live exporter sessions")
            .with_callback(|o| {
                for ((tenant, exporter, transport), s) in lock(&STATE.exporters_series).iter() {
                    o.observe(s.live.load(Relaxed), &attrs(tenant, exporter, transport));
                }
            })
            .build();
        let _ = m
            .f64_observable_counter("ipfixsvc.tenant.busy.time")
            .with_unit("s")
            .with_description(
                "time the node worked for a tenant, by work (session: decoding; stream: \
                 filtering, shaping, writing; job: a job's thread)",
            )
            .with_callback(|o| {
                for ((tenant, work), secs) in busy_totals() {
                    o.observe(
                        secs,
                        &[
                            KeyValue::new("tenant", tenant),
                            KeyValue::new("work", work.name()),
                        ],
                    );
                }
            })
            .build();
        let _ = m
            .u64_observable_counter("ipfixsvc.actor.messages")
            .with_unit("{message}")
            .with_description("messages actors handled, by actor.kind")
            .with_callback(|o| {
                for (i, s) in STATE.actors.iter().enumerate() {
                    o.observe(
                        s.messages.load(Relaxed),
                        &[KeyValue::new("actor.kind", ACTOR_NAMES[i])],
                    );
                }
            })
            .build();
        let _ = m
            .f64_observable_counter("ipfixsvc.actor.busy.time")
            .with_unit("s")
            .with_description("time actors spent handling messages, by actor.kind")
            .with_callback(|o| {
                for (i, s) in STATE.actors.iter().enumerate() {
                    o.observe(
                        s.busy_ns.load(Relaxed) as f64 / 1e9,
                        &[KeyValue::new("actor.kind", ACTOR_NAMES[i])],
                    );
                }
            })
            .build();
        let _ = m
            .u64_observable_counter("ipfixsvc.telemetry.folded_label_values")
            .with_unit("{value}")
            .with_description(
                "label values folded into `other` at telemetry.max_label_values, by dimension",
            )
            .with_callback(|o| {
                for (dim, cap) in [
                    ("tenant", &STATE.tenants),
                    ("exporter", &STATE.exporters),
                    ("thread.name", &STATE.threads),
                ] {
                    o.observe(cap.folded(), &[KeyValue::new("dimension", dim)]);
                }
            })
            .build();
        let _ = m
            .u64_observable_counter("ipfixsvc.telemetry.spans")
            .with_unit("{span}")
            .with_description(
                "spans given to the OTLP exporter, by outcome (exported, failed: the receiver \
                 refused or was not there; dropped: the export queue was full)",
            )
            .with_callback(|o| {
                for (i, n) in STATE.spans.iter().enumerate() {
                    o.observe(
                        n.load(Relaxed),
                        &[KeyValue::new("outcome", SPAN_OUTCOMES[i])],
                    );
                }
            })
            .build();
        for &(name, kind, unit, help) in SAMPLED {
            let read = move |o: &dyn opentelemetry::metrics::AsyncInstrument<f64>| {
                let sample = lock(&STATE.sample).clone();
                for p in sample.get(name).into_iter().flatten() {
                    o.observe(p.value, &p.attrs);
                }
            };
            match kind {
                Kind::Counter => {
                    let _ = m
                        .f64_observable_counter(name)
                        .with_unit(unit)
                        .with_description(help)
                        .with_callback(move |o| read(o))
                        .build();
                }
                Kind::Gauge => {
                    let _ = m
                        .f64_observable_gauge(name)
                        .with_unit(unit)
                        .with_description(help)
                        .with_callback(move |o| read(o))
                        .build();
                }
            }
        }
    });
}

/// Whether `name` is one of the sampled instruments (the sampler publishes no other).
pub fn is_sampled(name: &str) -> bool {
    SAMPLED.iter().any(|s| s.0 == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capped_label_keeps_its_first_values_and_folds_the_rest() {
        let cap = LabelCap::new(2);
        assert_eq!(cap.value("a"), "a");
        assert_eq!(cap.value("b"), "b");
        assert_eq!(cap.value("c"), OTHER);
        assert_eq!(cap.value("a"), "a", "a kept value stays kept");
        assert_eq!(cap.value("d"), OTHER);
        assert_eq!(cap.folded(), 2);
    }

    #[test]
    fn a_series_adds_only_what_changed_since_the_last_publish() {
        let s = ExporterSeries::default();
        let mut last = SessionCounts::default();
        let mut now = SessionCounts::default();
        now[Count::DataRecords as usize] = 10;
        s.publish(&mut last, &now);
        now[Count::DataRecords as usize] = 25;
        s.publish(&mut last, &now);
        s.publish(&mut last, &now);
        assert_eq!(s.get(Count::DataRecords), 25);
        assert_eq!(last, now);
    }

    #[test]
    fn every_count_has_a_described_instrument() {
        for (i, (count, instrument, _)) in COUNTS.iter().enumerate() {
            assert_eq!(*count as usize, i, "COUNTS is in Count's order");
            assert!(
                EXPORTER_INSTRUMENTS.iter().any(|e| e.0 == *instrument),
                "{instrument}"
            );
        }
    }
}
