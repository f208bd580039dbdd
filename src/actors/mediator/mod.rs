//! The Mediator's data path: export streams, each a task that owns its pipeline
//! (`mediation::spec::Pipeline`) and its sink, fed through its own queue, bounded in bytes of
//! decoded messages. Sessions hold a [`Streams`] handle and hand each decoded message (an `Arc`,
//! shared by every stream that takes it) to the streams whose tenants, exporters and domains
//! match.
//!
//! A stream's task ends when every handle is gone and its queue is empty (the drain), after its
//! aggregates are flushed and its sink has written everything; or early, with an error, when
//! its sink fails. `serve` watches them: an output that can no longer write takes the node
//! down, as the interim writer this replaces did.

mod ndjson_sink;

use crate::config::{OutputFormat, Settings};
use crate::mediation::spec::{DEFAULT_QUEUE_BYTES, OnFull, Pipeline, SinkSpec, StreamSpec};
use crate::mediation::{Records, Source};
use crate::wire::Registry;
use crate::wire::decoder::DecodedMessage;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;

/// A stream's figures, shared between its task and whoever reports them.
#[derive(Debug, Default)]
pub struct StreamStats {
    pub records_in: AtomicU64,
    pub records_out: AtomicU64,
    pub filtered: AtomicU64,
    pub dropped: AtomicU64,
    pub sink_errors: AtomicU64,
}

struct Item {
    recs: Records,
    /// The message's bytes in the queue, given back when the stream is done with it.
    _room: OwnedSemaphorePermit,
}

struct Handle {
    spec: StreamSpec,
    /// `spec.exporters`, parsed (the pipeline checked them).
    exporters: Vec<ipnet::IpNet>,
    on_full: OnFull,
    capacity: u32,
    room: Arc<Semaphore>,
    tx: mpsc::UnboundedSender<Item>,
    stats: Arc<StreamStats>,
}

impl Handle {
    /// The stream's tenants, exporters and domains take records of `source` under `domain`.
    fn takes(&self, source: &Source, domain: u32) -> bool {
        (self.spec.tenants.is_empty() || self.spec.tenants.contains(&source.tenant))
            && (self.exporters.is_empty()
                || self.exporters.iter().any(|n| n.contains(&source.addr)))
            && (self.spec.domains.is_empty() || self.spec.domains.contains(&domain))
    }
}

/// What sessions hold: the node's streams. Cloned per session; when the last clone is dropped
/// the streams drain and end.
#[derive(Clone)]
pub struct Streams {
    streams: Arc<Vec<Handle>>,
}

impl std::fmt::Debug for Streams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.streams.iter().map(|h| &h.spec.name))
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("export stream {0:?} is closed (its sink failed)")]
pub struct StreamClosed(pub String);

/// A stream task's end: its name, and the sink's error if it failed.
pub type StreamEnd = (String, std::io::Result<()>);

/// The streams a node runs when `mediator.streams` names none: NDJSON on standard output or
/// in `output.path`, as `output.*` says (the behaviour before the mediator existed).
pub fn default_streams(settings: &Settings) -> Vec<StreamSpec> {
    if !settings.mediator.streams.is_empty() {
        return settings.mediator.streams.clone();
    }
    let sink = match settings.output.format {
        OutputFormat::Count => SinkSpec::Discard {},
        OutputFormat::Ndjson => SinkSpec::Ndjson {
            path: (!settings.output.path.is_empty()).then(|| settings.output.path.clone()),
        },
    };
    vec![StreamSpec {
        name: "default".into(),
        tenants: Vec::new(),
        exporters: Vec::new(),
        domains: Vec::new(),
        templates: Vec::new(),
        filter: None,
        transforms: Vec::new(),
        sink,
        on_full: Some(OnFull::Block),
        queue_bytes: Some((settings.output.queue_chunks as u64).saturating_mul(1 << 20)),
    }]
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Bytes a decoded message holds: its buffer and its batches' columns.
fn weight(m: &DecodedMessage) -> usize {
    m.buf.len() + m.batches.iter().map(|b| b.heap_bytes()).sum::<usize>()
}

impl Streams {
    /// Starts one task per stream. Errors name the stream and the field at fault.
    pub async fn start(
        specs: Vec<StreamSpec>,
        registry: Arc<Registry>,
    ) -> anyhow::Result<(Streams, JoinSet<StreamEnd>)> {
        let mut names = std::collections::HashSet::new();
        let mut handles = Vec::new();
        let mut tasks = JoinSet::new();
        for spec in specs {
            if !names.insert(spec.name.clone()) {
                anyhow::bail!("mediator.streams: two streams are named {:?}", spec.name);
            }
            let pipeline = Pipeline::build(&spec, &registry)?;
            let sink = Sink::open(&spec.sink, registry.clone()).await?;
            let capacity = spec
                .queue_bytes
                .unwrap_or(DEFAULT_QUEUE_BYTES)
                .min(u32::MAX as u64) as u32;
            let room = Arc::new(Semaphore::new(capacity as usize));
            let (tx, rx) = mpsc::unbounded_channel();
            let stats = Arc::new(StreamStats::default());
            let name = spec.name.clone();
            let run = run(pipeline, sink, rx, stats.clone());
            tasks.spawn(async move { (name, run.await) });
            let exporters = spec
                .exporters
                .iter()
                .filter_map(|e| {
                    e.parse::<ipnet::IpNet>()
                        .ok()
                        .or_else(|| e.parse::<std::net::IpAddr>().ok().map(Into::into))
                })
                .collect();
            handles.push(Handle {
                exporters,
                on_full: spec.on_full.unwrap_or(spec.sink.default_on_full()),
                spec,
                capacity,
                room,
                tx,
                stats,
            });
        }
        Ok((
            Streams {
                streams: Arc::new(handles),
            },
            tasks,
        ))
    }

    /// Whether any stream renders or sends records (not only counts them): when none does,
    /// sessions need not hand anything over.
    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// Hands `msgs` (decoded by the session of `source`) to every stream that takes them.
    /// Waits on a full stream whose policy is `block`; never on one whose policy is `drop`.
    pub async fn deliver(
        &self,
        source: &Arc<Source>,
        msgs: Vec<DecodedMessage>,
    ) -> Result<(), StreamClosed> {
        for m in msgs {
            if m.batches.is_empty() {
                continue;
            }
            let m = Arc::new(m);
            let w = weight(&m);
            for h in self.streams.iter() {
                if !h.takes(source, m.header.observation_domain) {
                    continue;
                }
                let n = m.data_records() as u64;
                let need = (w.min(h.capacity as usize)).max(1) as u32;
                let permit = match h.on_full {
                    OnFull::Block => h
                        .room
                        .clone()
                        .acquire_many_owned(need)
                        .await
                        .map_err(|_| StreamClosed(h.spec.name.clone()))?,
                    OnFull::Drop => match h.room.clone().try_acquire_many_owned(need) {
                        Ok(p) => p,
                        Err(_) => {
                            h.stats.records_in.fetch_add(n, Ordering::Relaxed);
                            h.stats.dropped.fetch_add(n, Ordering::Relaxed);
                            continue;
                        }
                    },
                };
                let item = Item {
                    recs: Records::all(m.clone(), source.clone()),
                    _room: permit,
                };
                if h.tx.send(item).is_err() {
                    return Err(StreamClosed(h.spec.name.clone()));
                }
            }
        }
        Ok(())
    }

    /// Each stream's name and figures, with its queue's bytes in use.
    pub fn report(&self) -> Vec<(String, u64, Arc<StreamStats>)> {
        self.streams
            .iter()
            .map(|h| {
                let used = h.capacity as u64 - h.room.available_permits() as u64;
                (h.spec.name.clone(), used, h.stats.clone())
            })
            .collect()
    }
}

/// Where a stream's records end up.
enum Sink {
    Ndjson(ndjson_sink::NdjsonSink),
    Discard,
}

impl Sink {
    async fn open(spec: &SinkSpec, registry: Arc<Registry>) -> anyhow::Result<Sink> {
        Ok(match spec {
            SinkSpec::Ndjson { path } => {
                Sink::Ndjson(ndjson_sink::NdjsonSink::open(path.as_deref(), registry).await?)
            }
            SinkSpec::Discard {} => Sink::Discard,
        })
    }

    async fn write(&mut self, recs: &[Records]) -> std::io::Result<()> {
        match self {
            Sink::Ndjson(s) => s.write(recs).await,
            Sink::Discard => Ok(()),
        }
    }

    /// Called when the queue is empty: low latency when idle, large writes when busy.
    async fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::Ndjson(s) => s.flush().await,
            Sink::Discard => Ok(()),
        }
    }
}

async fn write(sink: &mut Sink, stats: &StreamStats, out: Vec<Records>) -> std::io::Result<()> {
    let n: u64 = out.iter().map(|r| r.count() as u64).sum();
    sink.write(&out).await?;
    stats.records_out.fetch_add(n, Ordering::Relaxed);
    Ok(())
}

/// Guards against a clock that jumps: a window is flushed at most this late.
const TICK: Duration = Duration::from_millis(250);

async fn run(
    mut pipeline: Pipeline,
    mut sink: Sink,
    mut rx: mpsc::UnboundedReceiver<Item>,
    stats: Arc<StreamStats>,
) -> std::io::Result<()> {
    let seen = Mutex::new(crate::mediation::spec::PipelineStats::default());
    let publish = |p: &Pipeline| {
        let now = p.stats();
        let mut last = seen.lock().unwrap_or_else(|e| e.into_inner());
        stats
            .records_in
            .fetch_add(now.records_in - last.records_in, Ordering::Relaxed);
        stats
            .filtered
            .fetch_add(now.filtered - last.filtered, Ordering::Relaxed);
        *last = now;
    };
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            item = rx.recv() => {
                let Some(item) = item else { break };
                let out = pipeline.push(item.recs, now_ms());
                publish(&pipeline);
                if let Err(e) = write(&mut sink, &stats, out).await {
                    stats.sink_errors.fetch_add(1, Ordering::Relaxed);
                    return Err(e);
                }
                if rx.is_empty() {
                    sink.flush().await?;
                }
            }
            _ = ticker.tick(), if pipeline.next_due_ms().is_some() => {
                let out = pipeline.tick(now_ms());
                if !out.is_empty() {
                    write(&mut sink, &stats, out).await?;
                    sink.flush().await?;
                }
            }
        }
    }
    // Every handle is gone and the queue is empty: what aggregates hold goes out last.
    let out = pipeline.finish(now_ms());
    publish(&pipeline);
    write(&mut sink, &stats, out).await?;
    sink.flush().await
}
