//! ExportStream: one export stream's actor. Its mailbox is the stream's queue (bounded in
//! bytes by the permits that travel with each message); it runs the records through the
//! pipeline and hands what comes out to its sink.

use super::http_sink::HttpSink;
use super::ipfix_file_sink::IpfixFileSink;
use super::ipfix_sink::IpfixSink;
use super::ndjson_sink::NdjsonSink;
use super::redis_sink::RedisSink;
use super::series_sink::{LocalSeries, SeriesSink};
use super::{Item, StreamStats};
use crate::mediation::Records;
use crate::mediation::spec::{Pipeline, PipelineStats, SeriesKeeping, SinkSpec, StreamSpec};
use crate::store::unix_ms as now_ms;
use crate::telemetry::metrics::{self, Work};
use crate::wire::Registry;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorMessage;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

#[derive(RactorMessage)]
pub enum StreamMsg {
    Records(Item),
    /// Aggregate windows that ended, and a flush of what the sink buffers (latency bound).
    Tick,
    /// The queue ran empty within `EAGER_FLUSH` of the last flush: flush now if still held.
    Flush,
    /// Drain: everything before this in the mailbox is done; flush aggregates and the sink.
    Finish(RpcReplyPort<Result<(), String>>),
    /// A new configuration: what came before is finished with the old pipeline and sink,
    /// what comes after goes through the new ones (no record in between is lost).
    Replace(Box<StreamArgs>, RpcReplyPort<Result<(), String>>),
    /// A `timeseries` sink's cells for a tenant (`SeriesAsk`); an error for another sink or a
    /// key it does not keep.
    Series(
        super::SeriesAsk,
        RpcReplyPort<Result<super::series_sink::LocalSeries, String>>,
    ),
}

/// The sink could not write: the supervisor stops the node rather than restart the stream.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SinkFailed(pub std::io::Error);

pub struct StreamArgs {
    pub spec: StreamSpec,
    pub pipeline: Pipeline,
    pub registry: Arc<Registry>,
    pub stats: Arc<StreamStats>,
    pub room: Arc<Semaphore>,
    pub capacity: u32,
    /// The node's store of live series, and the stream's name in it (`{tenant}/{name}` for
    /// a tenant's own stream): for a `timeseries` sink with `store = "redis"`.
    pub series_store: Option<(Arc<crate::store::series::SeriesStore>, String)>,
}

/// Where a stream's records end up.
enum Sink {
    Ndjson(NdjsonSink),
    Discard,
    Ipfix(Box<IpfixSink>),
    IpfixFile(Box<IpfixFileSink>),
    Redis(Box<RedisSink>),
    Http(Box<HttpSink>),
    Series(Box<SeriesSink>),
}

impl Sink {
    async fn open(
        spec: &StreamSpec,
        registry: Arc<Registry>,
        stats: &Arc<StreamStats>,
        series_store: Option<(Arc<crate::store::series::SeriesStore>, String)>,
    ) -> std::io::Result<Sink> {
        Ok(match &spec.sink {
            SinkSpec::Ndjson {
                path,
                rotate_bytes,
                rotate_secs,
            } => Sink::Ndjson(
                NdjsonSink::open(path.as_deref(), (*rotate_bytes, *rotate_secs), registry).await?,
            ),
            SinkSpec::IpfixFile {
                dir,
                rotate_bytes,
                rotate_secs,
            } => Sink::IpfixFile(Box::new(IpfixFileSink::new(
                dir,
                &spec.name,
                *rotate_bytes,
                *rotate_secs,
                stats.clone(),
            ))),
            SinkSpec::Discard {} => Sink::Discard,
            SinkSpec::Timeseries { .. } => {
                let opts = spec
                    .sink
                    .live_options()
                    .ok_or_else(|| std::io::Error::other("not a timeseries sink"))?;
                let keep = match spec.sink.series_keeping() {
                    Some(SeriesKeeping::Redis) => Some(series_store.ok_or_else(|| {
                        std::io::Error::other(
                            "sink.store = \"redis\" needs the node's redis.url (none is set)",
                        )
                    })?),
                    _ => None,
                };
                Sink::Series(Box::new(SeriesSink::new(
                    opts,
                    registry,
                    stats.clone(),
                    keep,
                )?))
            }
            SinkSpec::Http {
                url,
                batch_records,
                timeout_secs,
                ca_file,
            } => Sink::Http(Box::new(HttpSink::new(
                url.clone(),
                *batch_records,
                *timeout_secs,
                ca_file.as_deref(),
                spec.on_full.unwrap_or(spec.sink.default_on_full()),
                stats.clone(),
                registry,
            )?)),
            SinkSpec::RedisStream {
                url,
                key,
                maxlen,
                entry,
            } => Sink::Redis(Box::new(RedisSink::new(
                url,
                key.clone(),
                *maxlen,
                *entry,
                spec.on_full.unwrap_or(spec.sink.default_on_full()),
                stats.clone(),
                registry,
            ))),
            SinkSpec::Ipfix {
                transport,
                to,
                template_refresh_secs,
                max_message_bytes,
            } => Sink::Ipfix(Box::new(IpfixSink::new(
                *transport,
                to.clone(),
                *template_refresh_secs,
                *max_message_bytes,
                spec.on_full.unwrap_or(spec.sink.default_on_full()),
                stats.clone(),
            ))),
        })
    }

    /// Returns how many records left the stream for good (handed to the OS, or discarded).
    async fn write(&mut self, recs: &[Records]) -> std::io::Result<u64> {
        match self {
            Sink::Ndjson(s) => s.write(recs).await,
            Sink::Discard => Ok(recs.iter().map(|r| r.count() as u64).sum()),
            Sink::Ipfix(s) => s.write(recs).await,
            Sink::IpfixFile(s) => s.write(recs).await,
            Sink::Redis(s) => s.write(recs).await,
            Sink::Http(s) => s.write(recs).await,
            Sink::Series(s) => Ok(s.write(recs)),
        }
    }

    /// Time-based work with no record: a rotating file old enough is finished. Returns the
    /// records that went to the OS on the way.
    async fn tick(&mut self) -> std::io::Result<u64> {
        match self {
            Sink::Ndjson(s) => s.tick().await.map(|()| 0),
            Sink::IpfixFile(s) => s.tick().await,
            Sink::Series(s) => {
                s.tick().await;
                Ok(0)
            }
            Sink::Discard | Sink::Ipfix(_) | Sink::Redis(_) | Sink::Http(_) => Ok(0),
        }
    }

    /// The stream stops (or gets a new sink): files being written are finished.
    async fn close(&mut self) -> std::io::Result<()> {
        match self {
            Sink::Ndjson(s) => s.close().await,
            Sink::IpfixFile(s) => s.close().await,
            Sink::Series(s) => {
                s.close().await;
                Ok(())
            }
            Sink::Discard | Sink::Ipfix(_) | Sink::Redis(_) | Sink::Http(_) => Ok(()),
        }
    }

    async fn flush(&mut self) -> std::io::Result<u64> {
        match self {
            Sink::Ndjson(s) => s.flush().await,
            Sink::Discard | Sink::Series(_) => Ok(0),
            Sink::Ipfix(s) => s.flush().await,
            Sink::IpfixFile(s) => s.flush().await,
            Sink::Redis(s) => s.flush().await,
            Sink::Http(s) => s.flush().await,
        }
    }

    /// Records held and not yet written.
    fn buffered(&self) -> u64 {
        match self {
            Sink::Ndjson(s) => s.buffered(),
            Sink::IpfixFile(s) => s.buffered(),
            Sink::Redis(s) => s.buffered(),
            Sink::Http(s) => s.buffered(),
            Sink::Ipfix(s) => s.buffered(),
            Sink::Discard | Sink::Series(_) => 0,
        }
    }
}

pub struct StreamState {
    pipeline: Pipeline,
    sink: Sink,
    stats: Arc<StreamStats>,
    seen: PipelineStats,
    room: Arc<Semaphore>,
    capacity: u32,
    /// The sink holds records not yet flushed.
    dirty: bool,
    /// When the sink was last flushed.
    flushed: Instant,
    /// A `Flush` is on its way.
    flush_due: bool,
    /// Where each tenant's busy time goes (the records of several tenants may share a stream).
    busy: std::collections::HashMap<String, Arc<metrics::Busy>>,
    /// `ipfixsvc.stream.sink.duration`, with this stream's name and sink kind.
    sink_duration: opentelemetry::metrics::Histogram<f64>,
    sink_attrs: Vec<opentelemetry::KeyValue>,
    name: String,
    sink_kind: &'static str,
    #[cfg(feature = "fault-injection")]
    panic_at: Option<u64>,
}

/// How often aggregates are checked and an idle sink flushed.
const TICK: Duration = Duration::from_millis(250);

/// The shortest time between two flushes made because the queue ran empty.
const EAGER_FLUSH: Duration = Duration::from_millis(20);

impl StreamState {
    async fn write(&mut self, out: Vec<Records>) -> Result<(), SinkFailed> {
        self.stats
            .add_pipeline(self.pipeline.stats(), &mut self.seen);
        if out.is_empty() {
            return Ok(());
        }
        match self.sink.write(&out).await {
            Ok(n) => self.stats.records_out.fetch_add(n, Ordering::Relaxed),
            Err(e) => {
                self.stats.sink_errors.fetch_add(1, Ordering::Relaxed);
                return Err(SinkFailed(e));
            }
        };
        self.dirty = true;
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SinkFailed> {
        if self.dirty {
            use tracing::Instrument;
            let started = Instant::now();
            // One span per delivery to the sink (a flush), a trace of its own: at most one per
            // EAGER_FLUSH per stream, sampled as traces are.
            let span = tracing::info_span!(
                "stream delivery",
                otel.name = %format_args!("deliver {}", self.name),
                otel.kind = "producer",
                stream = %self.name,
                sink.kind = self.sink_kind,
                records = tracing::field::Empty,
                otel.status_code = tracing::field::Empty,
            );
            let flushed = self.sink.flush().instrument(span.clone()).await;
            match &flushed {
                Ok(n) => span.record("records", n),
                Err(_) => span.record("otel.status_code", "ERROR"),
            };
            self.sink_duration
                .record(started.elapsed().as_secs_f64(), &self.sink_attrs);
            match flushed {
                Ok(n) => self.stats.records_out.fetch_add(n, Ordering::Relaxed),
                Err(e) => {
                    self.stats.sink_errors.fetch_add(1, Ordering::Relaxed);
                    return Err(SinkFailed(e));
                }
            };
            self.dirty = false;
            self.flushed = Instant::now();
        }
        Ok(())
    }
}

fn sink_attrs(spec: &StreamSpec) -> Vec<opentelemetry::KeyValue> {
    vec![
        opentelemetry::KeyValue::new("stream", spec.name.clone()),
        opentelemetry::KeyValue::new("sink.kind", spec.sink.kind()),
    ]
}

/// How long a sink takes to write out what it buffered (a file's write, a network send).
fn sink_duration() -> opentelemetry::metrics::Histogram<f64> {
    metrics::meter()
        .f64_histogram("ipfixsvc.stream.sink.duration")
        .with_unit("s")
        .with_description(
            "time a stream's sink took to write out what it held, by stream and sink.kind",
        )
        .with_boundaries(vec![
            0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0,
        ])
        .build()
}

impl StreamState {
    /// Where the busy time for `tenant`'s records goes: the node's map is asked once per
    /// tenant, then this stream's own (tenants are few: their ids are capped for telemetry).
    fn busy_for(&mut self, tenant: &str) -> Arc<metrics::Busy> {
        if let Some(b) = self.busy.get(tenant) {
            return b.clone();
        }
        let b = metrics::busy(tenant, Work::Stream);
        self.busy.insert(tenant.to_string(), b.clone());
        b
    }
}

impl StreamState {
    /// Everything held goes out: aggregates, the sink's buffer, the file being written.
    async fn wind_up(&mut self) -> Result<(), SinkFailed> {
        let out = self.pipeline.finish(now_ms());
        self.write(out).await?;
        self.flush().await?;
        self.sink.close().await.map_err(SinkFailed)
    }
}

impl Drop for StreamState {
    /// Records rendered but never written (the actor panicked, or its sink failed) are lost:
    /// counted, so records in = out + filtered + dropped holds.
    fn drop(&mut self) {
        self.stats
            .dropped
            .fetch_add(self.sink.buffered(), Ordering::Relaxed);
    }
}

pub struct ExportStream;

impl Actor for ExportStream {
    type Msg = StreamMsg;
    type State = StreamState;
    type Arguments = StreamArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<StreamMsg>,
        args: StreamArgs,
    ) -> Result<StreamState, ActorProcessingErr> {
        let sink = Sink::open(
            &args.spec,
            args.registry,
            &args.stats,
            args.series_store.clone(),
        )
        .await
        .map_err(|e| format!("stream {:?}: sink: {e}", args.spec.name))?;
        myself.send_interval(TICK, || StreamMsg::Tick);
        let sink_attrs = sink_attrs(&args.spec);
        Ok(StreamState {
            name: args.spec.name.clone(),
            sink_kind: args.spec.sink.kind(),
            busy: Default::default(),
            sink_duration: sink_duration(),
            sink_attrs,
            pipeline: args.pipeline,
            sink,
            stats: args.stats,
            seen: PipelineStats::default(),
            room: args.room,
            capacity: args.capacity,
            dirty: false,
            flushed: Instant::now(),
            flush_due: false,
            #[cfg(feature = "fault-injection")]
            panic_at: args.spec.fault_panic_at_records,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<StreamMsg>,
        msg: StreamMsg,
        state: &mut StreamState,
    ) -> Result<(), ActorProcessingErr> {
        crate::telemetry::metrics::ActorKind::ExportStream
            .timed(async move {
                match msg {
                    StreamMsg::Records(item) => {
                        let Some(recs) = item.records() else {
                            return Ok(());
                        };
                        #[cfg(feature = "fault-injection")]
                        if let Some(n) = state.panic_at {
                            let before = state.stats.records_in.load(Ordering::Relaxed);
                            if before < n && before + recs.count() as u64 >= n {
                                panic!("fault injection: the stream's records crossed {n}");
                            }
                        }
                        // The tenant's busy time: the pipeline and the sink's work on its
                        // records, not the sink's waits for the network or the disk.
                        let busy = state.busy_for(&recs.source.tenant);
                        let (written, spent) = metrics::Polled::new(async {
                            let out = state.pipeline.push(recs, now_ms());
                            item.done();
                            state.write(out).await
                        })
                        .await;
                        busy.add(spent);
                        written?;
                        // The queue is empty when all its room is back: flush then, so an idle
                        // stream's records go out at once and a busy one's in large writes. Not more
                        // often than EAGER_FLUSH: a stream that keeps up with its sessions finds its
                        // queue empty after every message, and a flush each time (a file's is a trip
                        // to tokio's blocking pool) cost it half its rate; sooner, a timer does it.
                        if state.room.available_permits() >= state.capacity as usize {
                            let since = state.flushed.elapsed();
                            if since >= EAGER_FLUSH {
                                state.flush().await?;
                            } else if !state.flush_due {
                                // One timer at a time: records reach the sink within EAGER_FLUSH.
                                state.flush_due = true;
                                myself.send_after(EAGER_FLUSH - since, || StreamMsg::Flush);
                            }
                        }
                    }
                    StreamMsg::Flush => {
                        state.flush_due = false;
                        state.flush().await?;
                    }
                    StreamMsg::Tick => {
                        let out = state.pipeline.tick(now_ms());
                        state.write(out).await?;
                        state.flush().await?;
                        match state.sink.tick().await {
                            Ok(n) => state.stats.records_out.fetch_add(n, Ordering::Relaxed),
                            Err(e) => {
                                state.stats.sink_errors.fetch_add(1, Ordering::Relaxed);
                                return Err(SinkFailed(e).into());
                            }
                        };
                    }
                    StreamMsg::Replace(args, reply) => {
                        if let Err(e) = state.wind_up().await {
                            let _ = reply.send(Err(e.to_string()));
                            return Err(e.into());
                        }
                        match Sink::open(
                            &args.spec,
                            args.registry,
                            &args.stats,
                            args.series_store.clone(),
                        )
                        .await
                        {
                            Ok(sink) => {
                                state.sink = sink;
                                state.sink_kind = args.spec.sink.kind();
                                state.sink_attrs = sink_attrs(&args.spec);
                                state.pipeline = args.pipeline;
                                state.seen = PipelineStats::default();
                                state.room = args.room;
                                state.capacity = args.capacity;
                                #[cfg(feature = "fault-injection")]
                                {
                                    state.panic_at = args.spec.fault_panic_at_records;
                                }
                                let _ = reply.send(Ok(()));
                            }
                            Err(e) => {
                                let _ = reply.send(Err(format!("sink: {e}")));
                                return Err(SinkFailed(e).into());
                            }
                        }
                    }
                    StreamMsg::Series(ask, reply) => {
                        let answer = match &state.sink {
                            Sink::Series(s) => {
                                s.window(&ask.tenant, ask.by.as_deref(), ask.from_ms, ask.to_ms)
                            }
                            _ => Err(format!(
                                "stream {:?} is not a timeseries stream",
                                state.name
                            )),
                        };
                        match answer {
                            // The other writers' cells are read from the store by a task: the
                            // stream goes on with its records meanwhile.
                            Ok((mine, Some(fetch))) => {
                                tokio::spawn(async move {
                                    let _ = reply.send(Ok(fetch.run(mine).await));
                                });
                            }
                            Ok((mine, None)) => {
                                let _ = reply.send(Ok(LocalSeries {
                                    cells: mine,
                                    writers: None,
                                    errors: Vec::new(),
                                }));
                            }
                            Err(e) => {
                                let _ = reply.send(Err(e));
                            }
                        }
                    }
                    StreamMsg::Finish(reply) => {
                        let done = state.wind_up().await;
                        let _ = reply.send(done.map_err(|e| e.to_string()));
                        myself.stop(Some("drained".into()));
                    }
                }
                Ok(())
            })
            .await
    }
}
