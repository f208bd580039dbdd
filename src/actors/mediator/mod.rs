//! The Mediator: a MediatorSupervisor ("mediator") with one ExportStream actor per stream
//! ("stream/<name>"), each owning its pipeline (`mediation::spec::Pipeline`) and its sink.
//!
//! Sessions hold a [`Streams`] handle: the routing table the supervisor keeps current. Per
//! decoded message they make one `Arc` and hand it to every stream whose tenants, exporters
//! and Observation Domains take it. A stream's queue is its mailbox, bounded in bytes by a
//! semaphore whose permits travel with each message: `block` waits for room, `drop` counts
//! the records and goes on.
//!
//! A stream whose actor panics is restarted with its configuration (counted, shown in
//! `/debug/actors`); what its mailbox held is lost and counted. A stream whose local sink
//! fails (a full disk, a closed pipe) stops the supervisor, and with it the node: the pod is
//! restarted rather than kept running while it loses records. On drain (after the sessions),
//! every stream works through its mailbox, flushes its aggregates and its sink, and stops.

mod breaker;
mod http_sink;
mod ipfix_file_sink;
mod ipfix_sink;
mod ndjson_sink;
mod redis_sink;
mod rotating;
pub mod series_sink;
pub mod stream;

use crate::config::{OutputFormat, Settings};
use crate::mediation::spec::{
    DEFAULT_QUEUE_BYTES, OnFull, Pipeline, PipelineStats, SinkSpec, StreamSpec, for_tenant,
};
use crate::mediation::{Records, Source};
use crate::store::streams::{STREAMS_CHANGED, StoredStream, StreamStore};
use crate::wire::Registry;
use crate::wire::decoder::DecodedMessage;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use ractor_cluster::RactorMessage;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use stream::{ExportStream, SinkFailed, StreamArgs, StreamMsg};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub const MEDIATOR_NAME: &str = "mediator";

/// A stream's figures, shared between its actor and whoever reports them. They outlive a
/// restart: the new actor counts on.
#[derive(Debug, Default)]
pub struct StreamStats {
    pub records_in: AtomicU64,
    pub records_out: AtomicU64,
    pub filtered: AtomicU64,
    pub dropped: AtomicU64,
    pub sink_errors: AtomicU64,
    pub restarts: AtomicU64,
    /// A network sink's circuit breaker (`breaker::CLOSED`, `OPEN`, `HALF_OPEN`).
    pub breaker: Arc<std::sync::atomic::AtomicU8>,
}

impl StreamStats {
    /// Adds what the pipeline counted since `last`.
    fn add_pipeline(&self, now: PipelineStats, last: &mut PipelineStats) {
        self.records_in
            .fetch_add(now.records_in - last.records_in, Ordering::Relaxed);
        self.filtered
            .fetch_add(now.filtered - last.filtered, Ordering::Relaxed);
        *last = now;
    }
}

/// Records on their way to a stream, with the room they take in its queue (given back when
/// the stream is done with them, or when a dead actor's mailbox is dropped).
pub struct Item {
    recs: Option<Records>,
    _room: OwnedSemaphorePermit,
    stats: Arc<StreamStats>,
}

impl Item {
    /// The records (a cheap clone: the message is shared). The item stays armed until
    /// [`Item::done`], so a panic while they are processed counts them as lost.
    fn records(&self) -> Option<Records> {
        self.recs.clone()
    }

    fn done(mut self) {
        self.recs = None;
    }
}

impl Drop for Item {
    /// An item dropped unprocessed (its actor died with it in the mailbox, or panicked while
    /// processing it) is counted.
    fn drop(&mut self) {
        if let Some(r) = &self.recs {
            let n = r.count() as u64;
            self.stats.records_in.fetch_add(n, Ordering::Relaxed);
            self.stats.dropped.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// One stream as sessions see it.
struct Route {
    name: String,
    tenants: Vec<String>,
    exporters: Vec<ipnet::IpNet>,
    domains: Vec<u32>,
    on_full: OnFull,
    capacity: u32,
    room: Arc<Semaphore>,
    to: ActorRef<StreamMsg>,
    stats: Arc<StreamStats>,
    /// A `discard` stream that takes every record as it is: the session counts the records
    /// itself (nothing to queue, nothing for the actor to do).
    counts_only: bool,
}

impl Route {
    fn takes(&self, source: &Source, domain: u32) -> bool {
        (self.tenants.is_empty() || self.tenants.contains(&source.tenant))
            && (self.exporters.is_empty()
                || self.exporters.iter().any(|n| n.contains(&source.addr)))
            && (self.domains.is_empty() || self.domains.contains(&domain))
    }
}

type Table = Arc<Vec<Arc<Route>>>;

/// What sessions hold: the node's streams, kept current by the MediatorSupervisor.
#[derive(Clone, Default)]
pub struct Streams {
    table: Arc<RwLock<Table>>,
}

impl std::fmt::Debug for Streams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = self.snapshot();
        f.debug_list().entries(t.iter().map(|r| &r.name)).finish()
    }
}

/// Bytes a decoded message holds: its buffer and its batches' columns.
fn weight(m: &DecodedMessage) -> usize {
    m.buf.len() + m.batches.iter().map(|b| b.heap_bytes()).sum::<usize>()
}

impl Streams {
    fn snapshot(&self) -> Table {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, t: Vec<Arc<Route>>) {
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(t);
    }

    /// Hands `msgs` (decoded by the session of `source`) to every stream that takes them.
    /// Waits on a full stream whose policy is `block`; never on one whose policy is `drop`.
    pub async fn deliver(&self, source: &Arc<Source>, msgs: Vec<DecodedMessage>) {
        let routes = self.snapshot();
        if routes.is_empty() {
            return;
        }
        for m in msgs {
            if m.batches.is_empty() {
                continue;
            }
            let m = Arc::new(m);
            let w = weight(&m);
            for r in routes.iter() {
                if !r.takes(source, m.header.observation_domain) {
                    continue;
                }
                if r.counts_only {
                    let n = m.data_records() as u64;
                    r.stats.records_in.fetch_add(n, Ordering::Relaxed);
                    r.stats.records_out.fetch_add(n, Ordering::Relaxed);
                    continue;
                }
                let need = w.clamp(1, r.capacity as usize) as u32;
                let permit = match r.on_full {
                    OnFull::Block => match r.room.clone().acquire_many_owned(need).await {
                        Ok(p) => p,
                        Err(_) => continue, // the stream was replaced or removed meanwhile
                    },
                    OnFull::Drop => match r.room.clone().try_acquire_many_owned(need) {
                        Ok(p) => p,
                        Err(_) => {
                            let n = m.data_records() as u64;
                            r.stats.records_in.fetch_add(n, Ordering::Relaxed);
                            r.stats.dropped.fetch_add(n, Ordering::Relaxed);
                            continue;
                        }
                    },
                };
                let item = Item {
                    recs: Some(Records::all(m.clone(), source.clone())),
                    _room: permit,
                    stats: r.stats.clone(),
                };
                // A stream that died meanwhile: the item is dropped, and counted as it goes.
                let _ = r.to.send_message(StreamMsg::Records(item));
            }
        }
    }
}

/// The streams a node runs from its configuration: `mediator.streams`, or when that names
/// none, one stream `default` that writes NDJSON as `output.*` says (the behaviour before the
/// mediator existed).
pub fn configured_streams(settings: &Settings) -> Vec<StreamSpec> {
    if !settings.mediator.streams.is_empty() {
        return settings.mediator.streams.clone();
    }
    let sink = match settings.output.format {
        OutputFormat::Count => SinkSpec::Discard {},
        OutputFormat::Ndjson => SinkSpec::Ndjson {
            path: (!settings.output.path.is_empty()).then(|| settings.output.path.clone()),
            rotate_bytes: None,
            rotate_secs: None,
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
        #[cfg(feature = "fault-injection")]
        fault_panic_at_records: None,
    }]
}

/// A stream's state, as the API and `/debug/actors` show it.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub struct StreamState {
    pub name: String,
    /// The tenant of a stream made through the API; none for the configuration's.
    pub tenant: Option<String>,
    pub node: String,
    /// `running`, or `failed: <why>` (a tenant's sink that could not write; fixed by replacing
    /// the stream).
    pub state: String,
    pub queue_bytes: u64,
    pub queue_capacity: u64,
    pub records_in: u64,
    pub records_out: u64,
    pub filtered: u64,
    pub dropped: u64,
    pub sink_errors: u64,
    pub restarts: u64,
    /// A network sink's circuit breaker: `closed`, `open` or `half-open`.
    pub breaker: String,
}

/// A question for a tenant's live series (`GET .../timeseries`), asked of every node.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SeriesAsk {
    pub tenant: String,
    /// The stream to ask; none: the tenant's only `timeseries` stream.
    pub stream: Option<String>,
    /// A key the stream keeps; none: the total.
    pub by: Option<String>,
    /// Unix milliseconds, both ends in.
    pub from_ms: i64,
    pub to_ms: i64,
}

/// The answer of one node, or of several merged.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SeriesAnswer {
    /// The stream that answered; none where no stream matched.
    pub stream: Option<String>,
    pub cells: crate::analysis::series::Cells,
    /// Nodes whose stream answered (from the store: the writers whose cells it held).
    pub nodes: u32,
    /// Read from the series store (`store = "redis"`): every node's cells are in it, so no
    /// other node needs asking.
    #[serde(default)]
    pub stored: bool,
    /// Why the question cannot be answered as asked (a key the stream does not keep, several
    /// streams to choose from): the same on every node.
    pub refusal: Option<String>,
    /// Nodes or actors that did not answer.
    pub errors: Vec<String>,
}

impl SeriesAnswer {
    /// Another node's answer joins this one (cells of the same stream add up). An answer from
    /// the store holds every node's cells already: it stands alone.
    pub fn join(&mut self, mut other: SeriesAnswer) {
        if self.stored {
            self.errors.extend(other.errors);
            return;
        }
        if other.stored {
            other.errors.append(&mut self.errors);
            *self = other;
            return;
        }
        if let Some(name) = other.stream {
            if self.stream.is_none() {
                self.stream = Some(name);
                self.cells.interval_secs = other.cells.interval_secs;
                self.cells.by = other.cells.by.clone();
            } else if (other.cells.interval_secs, &other.cells.by)
                != (self.cells.interval_secs, &self.cells.by)
            {
                // A stream being replaced: nodes may briefly hold different intervals.
                self.errors.push(format!(
                    "a node answered with {} s intervals by {:?}, not {} s by {:?} (a stream being replaced): its cells are left out",
                    other.cells.interval_secs,
                    other.cells.by,
                    self.cells.interval_secs,
                    self.cells.by
                ));
                self.errors.extend(other.errors);
                return;
            }
            self.cells.merge(other.cells);
        }
        self.nodes += other.nodes;
        if self.refusal.is_none() {
            self.refusal = other.refusal;
        }
        self.errors.extend(other.errors);
    }
}

#[derive(RactorMessage)]
pub enum MediatorMsg {
    /// Every stream works through what it holds, flushes, and stops; the answer names the
    /// streams that could not finish in time (or failed).
    Drain(Duration, RpcReplyPort<Vec<String>>),
    /// Each stream's figures.
    States(RpcReplyPort<Vec<StreamState>>),
    /// For `/debug/actors`: each stream's actor id, figures and last failure.
    Tree(RpcReplyPort<Vec<(String, StreamState, Option<String>)>>),
    /// Read the tenants' streams from the store again and start, replace or stop streams to
    /// match (a change announced, or the periodic check).
    Reload,
    /// This node's part of a tenant's live series.
    Series(SeriesAsk, RpcReplyPort<SeriesAnswer>),
}

pub struct MediatorArgs {
    pub specs: Vec<StreamSpec>,
    pub registry: Arc<Registry>,
    pub streams: Streams,
    pub node: String,
    /// Tenants' streams (made through the API).
    pub store: Arc<StreamStore>,
    /// Tenants' NDJSON files go under `<storage_dir>/streams/<tenant>/`.
    pub storage_dir: PathBuf,
    /// `mediator.tenant_network_sinks`.
    pub tenant_network_sinks: bool,
    /// Where `timeseries` sinks with `store = "redis"` keep their series (the node's
    /// `redis.url`); none without it.
    pub series_store: Option<Arc<crate::store::series::SeriesStore>>,
}

/// Where a stream's configuration comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Origin {
    /// The node's configuration file: fixed for the node's life; its local sink failing stops
    /// the node.
    Config,
    /// A tenant, through the API and the store: changed at run time; its sink failing stops
    /// the stream only.
    Tenant(String),
}

struct Running {
    spec: StreamSpec,
    origin: Origin,
    /// Why the stream's previous actor failed, if it did.
    last_failure: Option<String>,
    actor: ActorRef<StreamMsg>,
    route: Arc<Route>,
}

/// A tenant's stream whose sink failed: not run again until its configuration changes.
struct Failed {
    spec: StreamSpec,
    tenant: String,
    why: String,
    stats: Arc<StreamStats>,
}

pub struct MediatorState {
    args: MediatorArgs,
    /// By key: the name (configuration) or `tenant/name` (API).
    running: HashMap<String, Running>,
    failed: HashMap<String, Failed>,
    draining: bool,
    follower: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for MediatorState {
    fn drop(&mut self) {
        if let Some(f) = self.follower.take() {
            f.abort();
        }
    }
}

/// How often the store is read again anyway (a change announced while a subscription was
/// down).
const RELOAD_EVERY: Duration = Duration::from_secs(30);

/// How long a stream being removed gets to write what it holds.
const FINISH_WITHIN_MS: u64 = 10_000;

pub struct MediatorSupervisor;

fn route(
    spec: &StreamSpec,
    trivial: bool,
    capacity: u32,
    room: Arc<Semaphore>,
    to: ActorRef<StreamMsg>,
    stats: Arc<StreamStats>,
) -> Arc<Route> {
    Arc::new(Route {
        name: spec.name.clone(),
        tenants: spec.tenants.clone(),
        exporters: spec
            .exporters
            .iter()
            .filter_map(|e| {
                e.parse::<ipnet::IpNet>()
                    .ok()
                    .or_else(|| e.parse::<std::net::IpAddr>().ok().map(Into::into))
            })
            .collect(),
        domains: spec.domains.clone(),
        on_full: spec.on_full.unwrap_or(spec.sink.default_on_full()),
        capacity,
        room,
        to,
        stats,
        counts_only: matches!(spec.sink, SinkSpec::Discard {}) && trivial,
    })
}

fn capacity_of(spec: &StreamSpec) -> u32 {
    spec.queue_bytes
        .unwrap_or(DEFAULT_QUEUE_BYTES)
        .min(u32::MAX as u64) as u32
}

impl MediatorState {
    /// Starts (or restarts, with the same figures) the actor of `spec` under `key`, and
    /// routes to it.
    async fn start(
        &mut self,
        myself: &ActorRef<MediatorMsg>,
        key: String,
        spec: StreamSpec,
        origin: Origin,
        stats: Arc<StreamStats>,
    ) -> Result<(), ActorProcessingErr> {
        let (args, trivial) = self.stream_args(&key, &spec, stats.clone())?;
        let (capacity, room) = (args.capacity, args.room.clone());
        let (actor, _) = Actor::spawn_linked(
            Some(format!("stream/{key}")),
            ExportStream,
            args,
            myself.get_cell(),
        )
        .await?;
        let route = route(&spec, trivial, capacity, room, actor.clone(), stats);
        self.running.insert(
            key,
            Running {
                spec,
                origin,
                last_failure: None,
                actor,
                route,
            },
        );
        self.publish();
        Ok(())
    }

    /// What an ExportStream runs for `spec` (a fresh queue bound), and whether its pipeline
    /// takes every record as it is.
    fn stream_args(
        &self,
        key: &str,
        spec: &StreamSpec,
        stats: Arc<StreamStats>,
    ) -> Result<(StreamArgs, bool), crate::mediation::spec::SpecError> {
        let pipeline = Pipeline::build(spec, &self.args.registry)?;
        let trivial = pipeline.is_trivial();
        let capacity = capacity_of(spec);
        let args = StreamArgs {
            spec: spec.clone(),
            pipeline,
            registry: self.args.registry.clone(),
            stats,
            room: Arc::new(Semaphore::new(capacity as usize)),
            capacity,
            series_store: self.args.series_store.clone().map(|s| (s, key.to_string())),
        };
        Ok((args, trivial))
    }

    /// Gives the running stream `key` a new configuration without a gap.
    async fn replace(&mut self, key: &str, spec: StreamSpec) -> Result<(), String> {
        let Some(r) = self.running.get(key) else {
            return Err("not running".into());
        };
        let stats = r.route.stats.clone();
        let actor = r.actor.clone();
        let (args, trivial) = self
            .stream_args(key, &spec, stats.clone())
            .map_err(|e| e.to_string())?;
        let (capacity, room) = (args.capacity, args.room.clone());
        match ractor::call_t!(actor, StreamMsg::Replace, FINISH_WITHIN_MS, Box::new(args)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(format!("the stream did not answer: {e}")),
        }
        if let Some(r) = self.running.get_mut(key) {
            r.route = route(&spec, trivial, capacity, room, actor, stats);
            r.spec = spec;
        }
        self.publish();
        Ok(())
    }

    /// Stops routing to `key`, then lets it write what it holds and stop (in a task: the
    /// supervisor keeps answering).
    fn remove(&mut self, key: &str) {
        if let Some(r) = self.running.remove(key) {
            self.publish();
            let actor = r.actor;
            tokio::spawn(async move {
                if !matches!(
                    ractor::call_t!(actor, StreamMsg::Finish, FINISH_WITHIN_MS),
                    Ok(Ok(()))
                ) {
                    actor.stop(Some("removed".into()));
                }
            });
        }
        self.failed.remove(key);
    }

    /// Runs what the store holds: new streams started, changed ones replaced, deleted ones
    /// stopped. Streams from the configuration are left as they are.
    async fn reconcile(&mut self, myself: &ActorRef<MediatorMsg>, stored: Vec<StoredStream>) {
        let mut wanted: HashMap<String, (String, StreamSpec)> = HashMap::new();
        for st in stored {
            let key = st.key();
            match for_tenant(
                &st.spec,
                &st.tenant,
                &self.args.storage_dir,
                self.args.tenant_network_sinks,
            ) {
                Ok(spec) => {
                    wanted.insert(key, (st.tenant, spec));
                }
                Err(e) => tracing::warn!(stream = key, error = %e, "stored stream not run"),
            }
        }
        let gone: Vec<String> = self
            .running
            .iter()
            .filter(|(k, r)| matches!(r.origin, Origin::Tenant(_)) && !wanted.contains_key(*k))
            .map(|(k, _)| k.clone())
            .chain(
                self.failed
                    .keys()
                    .filter(|k| !wanted.contains_key(*k))
                    .cloned(),
            )
            .collect();
        for k in gone {
            tracing::info!(stream = k, "stream deleted: stopping it");
            self.remove(&k);
        }
        let mut keys: Vec<&String> = wanted.keys().collect();
        keys.sort();
        let keys: Vec<String> = keys.into_iter().cloned().collect();
        for key in keys {
            let Some((tenant, spec)) = wanted.remove(&key) else {
                continue;
            };
            if self.failed.get(&key).is_some_and(|f| f.spec == spec) {
                continue;
            }
            let stats = self
                .failed
                .remove(&key)
                .map(|f| f.stats)
                .unwrap_or_default();
            match self.running.get(&key) {
                Some(r) if r.spec == spec => {}
                Some(_) => {
                    if let Err(e) = self.replace(&key, spec.clone()).await {
                        tracing::warn!(stream = key, error = %e, "stream not replaced");
                    } else {
                        tracing::info!(stream = key, "stream replaced");
                    }
                }
                None => {
                    let started = self
                        .start(
                            myself,
                            key.clone(),
                            spec.clone(),
                            Origin::Tenant(tenant.clone()),
                            stats.clone(),
                        )
                        .await;
                    match started {
                        Ok(()) => tracing::info!(stream = key, "stream started"),
                        Err(e) => {
                            tracing::warn!(stream = key, error = %e, "stream not started");
                            self.failed.insert(
                                key,
                                Failed {
                                    spec,
                                    tenant,
                                    why: e.to_string(),
                                    stats,
                                },
                            );
                        }
                    }
                }
            }
        }
    }

    /// The routing table sessions read, from the streams running now.
    fn publish(&self) {
        let mut routes: Vec<Arc<Route>> = self.running.values().map(|r| r.route.clone()).collect();
        routes.sort_by(|a, b| a.name.cmp(&b.name));
        self.args.streams.set(routes);
    }

    fn states(&self) -> Vec<StreamState> {
        let figures = |s: &StreamStats| StreamState {
            records_in: s.records_in.load(Ordering::Relaxed),
            records_out: s.records_out.load(Ordering::Relaxed),
            filtered: s.filtered.load(Ordering::Relaxed),
            dropped: s.dropped.load(Ordering::Relaxed),
            sink_errors: s.sink_errors.load(Ordering::Relaxed),
            restarts: s.restarts.load(Ordering::Relaxed),
            breaker: breaker::breaker_name(s.breaker.load(Ordering::Relaxed)).into(),
            node: self.args.node.clone(),
            ..StreamState::default()
        };
        let mut v: Vec<StreamState> = self
            .running
            .values()
            .map(|r| {
                let cap = r.route.capacity as u64;
                StreamState {
                    name: r.spec.name.clone(),
                    tenant: match &r.origin {
                        Origin::Tenant(t) => Some(t.clone()),
                        Origin::Config => None,
                    },
                    state: "running".into(),
                    queue_bytes: cap - r.route.room.available_permits().min(cap as usize) as u64,
                    queue_capacity: cap,
                    ..figures(&r.route.stats)
                }
            })
            .chain(self.failed.values().map(|f| StreamState {
                name: f.spec.name.clone(),
                tenant: Some(f.tenant.clone()),
                state: format!("failed: {}", f.why),
                ..figures(&f.stats)
            }))
            .collect();
        v.sort_by(|a, b| (&a.tenant, &a.name).cmp(&(&b.tenant, &b.name)));
        v
    }
}

/// Reloads whenever a change to the tenants' streams is announced: Redis pub/sub (every
/// node), or the memory store's counter (one node). Resubscribes after a lost connection.
async fn follow_changes(store: Arc<StreamStore>, me: ActorRef<MediatorMsg>) {
    use futures_util::StreamExt;
    if let Some(mut w) = store.watch() {
        while w.changed().await.is_ok() {
            if me.cast(MediatorMsg::Reload).is_err() {
                return;
            }
        }
        return;
    }
    let Some(client) = store.subscription_client() else {
        return;
    };
    loop {
        match client.get_async_pubsub().await {
            Ok(mut pubsub) => {
                if pubsub.subscribe(STREAMS_CHANGED).await.is_ok() {
                    // Changes made while this node was not listening.
                    let _ = me.cast(MediatorMsg::Reload);
                    let mut messages = pubsub.on_message();
                    while messages.next().await.is_some() {
                        if me.cast(MediatorMsg::Reload).is_err() {
                            return;
                        }
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "stream changes: no subscription yet"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

impl Actor for MediatorSupervisor {
    type Msg = MediatorMsg;
    type State = MediatorState;
    type Arguments = MediatorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<MediatorMsg>,
        mut args: MediatorArgs,
    ) -> Result<MediatorState, ActorProcessingErr> {
        let specs = std::mem::take(&mut args.specs);
        let mut names = std::collections::HashSet::new();
        for s in &specs {
            if !names.insert(s.name.clone()) {
                return Err(format!("mediator.streams: two streams are named {:?}", s.name).into());
            }
            // Every stream is checked before any starts: one bad stream, no half-started set.
            Pipeline::build(s, &args.registry)?;
        }
        let follower = Some(tokio::spawn(follow_changes(
            args.store.clone(),
            myself.clone(),
        )));
        let mut state = MediatorState {
            args,
            running: HashMap::new(),
            failed: HashMap::new(),
            draining: false,
            follower,
        };
        for s in specs {
            state
                .start(&myself, s.name.clone(), s, Origin::Config, Arc::default())
                .await?;
        }
        myself.send_interval(RELOAD_EVERY, || MediatorMsg::Reload);
        let _ = myself.cast(MediatorMsg::Reload);
        Ok(state)
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<MediatorMsg>,
        state: &mut MediatorState,
    ) -> Result<(), ActorProcessingErr> {
        state.args.streams.set(Vec::new());
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<MediatorMsg>,
        msg: MediatorMsg,
        state: &mut MediatorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            MediatorMsg::States(reply) => {
                let _ = reply.send(state.states());
            }
            MediatorMsg::Series(ask, reply) => {
                let found: Vec<(String, ActorRef<StreamMsg>)> = state
                    .running
                    .values()
                    .filter(|r| matches!(r.spec.sink, SinkSpec::Timeseries { .. }))
                    .filter(|r| match &r.origin {
                        Origin::Tenant(t) => *t == ask.tenant,
                        Origin::Config => {
                            r.spec.tenants.is_empty() || r.spec.tenants.contains(&ask.tenant)
                        }
                    })
                    .filter(|r| ask.stream.as_ref().is_none_or(|n| *n == r.spec.name))
                    .map(|r| (r.spec.name.clone(), r.actor.clone()))
                    .collect();
                let node = state.args.node.clone();
                // The stream answers from a task: this actor goes on routing meanwhile.
                tokio::spawn(async move {
                    let mut answer = SeriesAnswer::default();
                    match found.as_slice() {
                        [] => {}
                        [(name, actor)] => {
                            match ractor::call_t!(actor, StreamMsg::Series, 2_000, ask) {
                                Ok(Ok(local)) => {
                                    answer.stream = Some(name.clone());
                                    answer.cells = local.cells;
                                    answer.nodes = local.writers.unwrap_or(1);
                                    answer.stored = local.writers.is_some();
                                    answer.errors = local
                                        .errors
                                        .into_iter()
                                        .map(|e| format!("{node}: {e}"))
                                        .collect();
                                }
                                Ok(Err(refusal)) => answer.refusal = Some(refusal),
                                Err(e) => answer
                                    .errors
                                    .push(format!("{node}: stream {name:?} did not answer: {e}")),
                            }
                        }
                        several => {
                            let mut names: Vec<&str> =
                                several.iter().map(|(n, _)| n.as_str()).collect();
                            names.sort();
                            answer.refusal = Some(format!(
                                "the tenant has several timeseries streams: name one with stream= ({})",
                                names.join(", ")
                            ));
                        }
                    }
                    let _ = reply.send(answer);
                });
            }
            MediatorMsg::Tree(reply) => {
                let states = state.states();
                let _ = reply.send(
                    states
                        .into_iter()
                        .filter_map(|s| {
                            let key = match &s.tenant {
                                Some(t) => crate::store::streams::key(t, &s.name),
                                None => s.name.clone(),
                            };
                            let r = state.running.get(&key)?;
                            Some((r.actor.get_id().to_string(), s, r.last_failure.clone()))
                        })
                        .collect(),
                );
            }
            MediatorMsg::Reload => {
                if state.draining {
                    return Ok(());
                }
                // A store that is away leaves the running streams as they are.
                match state.args.store.all().await {
                    Ok(stored) => state.reconcile(&myself, stored).await,
                    Err(e) => tracing::debug!(error = %e, "tenants' streams not reloaded"),
                }
            }
            MediatorMsg::Drain(within, reply) => {
                state.draining = true;
                // Sessions are done: nothing new arrives. Each stream finishes what its
                // mailbox holds (the Finish comes after it), all at once, within the time.
                let asks = state.running.iter().map(|(key, r)| {
                    let (key, actor, stats) = (key.clone(), r.actor.clone(), r.route.stats.clone());
                    async move {
                        let ms = within.as_millis() as u64;
                        match ractor::call_t!(actor, StreamMsg::Finish, ms.max(1)) {
                            Ok(Ok(())) => {
                                let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
                                tracing::info!(
                                    stream = key,
                                    records_in = n(&stats.records_in),
                                    records_out = n(&stats.records_out),
                                    filtered = n(&stats.filtered),
                                    dropped = n(&stats.dropped),
                                    sink_errors = n(&stats.sink_errors),
                                    "stream finished"
                                );
                                None
                            }
                            Ok(Err(e)) => Some(format!("stream {key:?}: {e}")),
                            Err(_) => Some(format!("stream {key:?} did not finish in time")),
                        }
                    }
                });
                let failed: Vec<String> = futures_util::future::join_all(asks)
                    .await
                    .into_iter()
                    .flatten()
                    .collect();
                state.args.streams.set(Vec::new());
                let _ = reply.send(failed);
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<MediatorMsg>,
        evt: SupervisionEvent,
        state: &mut MediatorState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, err) = match evt {
            SupervisionEvent::ActorFailed(cell, err) => (cell, err),
            _ => return Ok(()),
        };
        let Some(key) = cell
            .get_name()
            .and_then(|n| n.strip_prefix("stream/").map(str::to_string))
        else {
            return Ok(());
        };
        // Only the actor running now: one that was removed may fail on its way out.
        if state
            .running
            .get(&key)
            .is_none_or(|r| r.actor.get_id() != cell.get_id())
        {
            return Ok(());
        }
        let Some(r) = state.running.remove(&key) else {
            return Ok(());
        };
        state.publish();
        if state.draining {
            return Ok(());
        }
        if let Some(f) = err.downcast_ref::<SinkFailed>() {
            match r.origin {
                Origin::Config => {
                    // A local output that cannot write: stop the node, so the orchestrator
                    // restarts the pod, instead of running on while losing records.
                    tracing::error!(stream = key, error = %f, "the record output failed: stopping the node");
                    myself.stop(Some(format!(
                        "the record output failed: stream {key:?}: {f}"
                    )));
                }
                Origin::Tenant(tenant) => {
                    // A tenant's sink stops that stream only, until it is replaced.
                    tracing::warn!(stream = key, error = %f, "a tenant's stream failed: stopped until it is replaced");
                    state.failed.insert(
                        key,
                        Failed {
                            spec: r.spec,
                            tenant,
                            why: f.to_string(),
                            stats: r.route.stats.clone(),
                        },
                    );
                }
            }
            return Ok(());
        }
        r.route.stats.restarts.fetch_add(1, Ordering::Relaxed);
        tracing::error!(stream = key, error = %err, "export stream failed: restarting it with its configuration");
        state
            .start(
                &myself,
                key.clone(),
                r.spec,
                r.origin,
                r.route.stats.clone(),
            )
            .await?;
        if let Some(now) = state.running.get_mut(&key) {
            now.last_failure = Some(format!("failed: {err}"));
        }
        Ok(())
    }
}
