//! SessionDirectory: one per node, in the `ractor::pg` group `session-directories`, so that any
//! node (or an operator's `ipfixsvc cluster sessions`) can list every exporter session of the
//! cluster. Its messages cross nodes: their payloads are bincode with a format byte, and bytes
//! from another version decode to an error value, never a panic.
//!
//! Messages: `List` (this node's sessions), `ListCluster` (every directory's, asked in turn;
//! unreachable ones are named in the answer).

use super::cluster::{CLUSTER_MEMBER, ClusterMsg};
use super::collector::session::SessionMsg;
use super::collector::session_logic::SessionStats;
use super::collector::{COLLECTOR_NAME, CollectorMsg};
use super::mediator::{MEDIATOR_NAME, MediatorMsg, SeriesAnswer, SeriesAsk, StreamState};
use crate::store::codec;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::{BytesConvertable, RactorClusterMessage};
use tracing::Instrument;

pub const DIRECTORY_GROUP: &str = "session-directories";
pub const DIRECTORY_NAME: &str = "session-directory";

#[derive(
    Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub struct SessionInfo {
    pub node: String,
    pub session: String,
    pub stats: SessionStats,
}

/// A directory's answer. `errors` names what could not be listed (or read).
#[derive(
    Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub struct SessionList {
    pub sessions: Vec<SessionInfo>,
    pub errors: Vec<String>,
}

impl BytesConvertable for SessionList {
    fn into_bytes(self) -> Vec<u8> {
        codec::encode(&self)
    }

    fn from_bytes(bytes: Vec<u8>) -> Self {
        codec::decode::<_, { 64 << 20 }>(&bytes).unwrap_or_else(|e| SessionList {
            errors: vec![format!("unreadable answer from a peer: {e}")],
            ..SessionList::default()
        })
    }
}

/// Export streams' states, from one node or all (`errors`: nodes that did not answer).
#[derive(
    Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub struct StreamStateList {
    pub streams: Vec<StreamState>,
    pub errors: Vec<String>,
}

impl BytesConvertable for StreamStateList {
    fn into_bytes(self) -> Vec<u8> {
        codec::encode(&self)
    }

    fn from_bytes(bytes: Vec<u8>) -> Self {
        codec::decode::<_, { 16 << 20 }>(&bytes).unwrap_or_else(|e| StreamStateList {
            errors: vec![format!("unreadable answer from a peer: {e}")],
            ..StreamStateList::default()
        })
    }
}

impl BytesConvertable for SeriesAsk {
    fn into_bytes(self) -> Vec<u8> {
        codec::encode(&self)
    }

    fn from_bytes(bytes: Vec<u8>) -> Self {
        // An ask that cannot be read names no tenant: no stream matches it.
        codec::decode::<_, 4096>(&bytes).unwrap_or_default()
    }
}

impl BytesConvertable for SeriesAnswer {
    fn into_bytes(self) -> Vec<u8> {
        codec::encode(&self)
    }

    fn from_bytes(bytes: Vec<u8>) -> Self {
        codec::decode::<_, { 64 << 20 }>(&bytes).unwrap_or_else(|e| SeriesAnswer {
            errors: vec![format!("unreadable answer from a peer: {e}")],
            ..SeriesAnswer::default()
        })
    }
}

/// A JSON document between nodes (the cluster view), for display.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Json(pub String);

impl BytesConvertable for Json {
    fn into_bytes(self) -> Vec<u8> {
        self.0.into_bytes()
    }

    fn from_bytes(bytes: Vec<u8>) -> Self {
        Json(String::from_utf8_lossy(&bytes).into_owned())
    }
}

/// The W3C `traceparent` of the span that asks (empty: not traced), so that the answering
/// node's work joins the asker's trace: one trace for a request that crosses nodes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TraceParent(pub String);

impl BytesConvertable for TraceParent {
    fn into_bytes(self) -> Vec<u8> {
        self.0.into_bytes()
    }

    fn from_bytes(bytes: Vec<u8>) -> Self {
        // A traceparent is 55 characters; anything else long is not one.
        TraceParent(
            String::from_utf8(bytes)
                .ok()
                .filter(|s| s.len() <= 128)
                .unwrap_or_default(),
        )
    }
}

#[derive(RactorClusterMessage)]
pub enum DirectoryMsg {
    #[rpc]
    List(RpcReplyPort<SessionList>),
    #[rpc]
    ListCluster(RpcReplyPort<SessionList>),
    /// This node's cluster view (peers, seeds, errors) as JSON.
    #[rpc]
    ClusterView(RpcReplyPort<Json>),
    /// Answers at once: the cluster round trip, measured by `ipfixsvc cluster ping`.
    #[rpc]
    Ping(RpcReplyPort<Json>),
    /// This node's supervision tree (names, ids, states, children) as JSON.
    #[rpc]
    ActorTree(RpcReplyPort<Json>),
    /// This node's export streams.
    #[rpc]
    Streams(RpcReplyPort<StreamStateList>),
    /// Every node's export streams.
    #[rpc]
    StreamsCluster(RpcReplyPort<StreamStateList>),
    // The same asks with the asker's trace. New variants, not a field added to the old ones:
    // variants travel by name, so a node of the version before keeps answering the old ones
    // during a rolling upgrade (it does not know these: a traced ask of it goes unanswered).
    #[rpc]
    ListTraced(TraceParent, RpcReplyPort<SessionList>),
    #[rpc]
    ListClusterTraced(TraceParent, RpcReplyPort<SessionList>),
    #[rpc]
    ClusterViewTraced(TraceParent, RpcReplyPort<Json>),
    #[rpc]
    ActorTreeTraced(TraceParent, RpcReplyPort<Json>),
    #[rpc]
    StreamsTraced(TraceParent, RpcReplyPort<StreamStateList>),
    #[rpc]
    StreamsClusterTraced(TraceParent, RpcReplyPort<StreamStateList>),
    /// This node's part of a tenant's live series (the trace may be empty).
    #[rpc]
    SeriesTraced(TraceParent, SeriesAsk, RpcReplyPort<SeriesAnswer>),
    /// Every node's parts, merged.
    #[rpc]
    SeriesClusterTraced(TraceParent, SeriesAsk, RpcReplyPort<SeriesAnswer>),
}

impl DirectoryMsg {
    /// The ask without its trace, and the trace (empty for an untraced ask).
    fn untraced(self) -> (TraceParent, DirectoryMsg) {
        use DirectoryMsg::*;
        match self {
            ListTraced(p, r) => (p, List(r)),
            ListClusterTraced(p, r) => (p, ListCluster(r)),
            ClusterViewTraced(p, r) => (p, ClusterView(r)),
            ActorTreeTraced(p, r) => (p, ActorTree(r)),
            StreamsTraced(p, r) => (p, Streams(r)),
            StreamsClusterTraced(p, r) => (p, StreamsCluster(r)),
            other => (TraceParent::default(), other),
        }
    }
}

/// One kind of ask of a directory, plain and traced.
pub struct Ask<T: 'static> {
    pub method: &'static str,
    plain: fn(RpcReplyPort<T>) -> DirectoryMsg,
    traced: fn(TraceParent, RpcReplyPort<T>) -> DirectoryMsg,
}

pub const LIST: Ask<SessionList> = Ask {
    method: "List",
    plain: DirectoryMsg::List,
    traced: DirectoryMsg::ListTraced,
};
pub const LIST_CLUSTER: Ask<SessionList> = Ask {
    method: "ListCluster",
    plain: DirectoryMsg::ListCluster,
    traced: DirectoryMsg::ListClusterTraced,
};
pub const CLUSTER_VIEW: Ask<Json> = Ask {
    method: "ClusterView",
    plain: DirectoryMsg::ClusterView,
    traced: DirectoryMsg::ClusterViewTraced,
};
pub const ACTOR_TREE: Ask<Json> = Ask {
    method: "ActorTree",
    plain: DirectoryMsg::ActorTree,
    traced: DirectoryMsg::ActorTreeTraced,
};
pub const STREAMS: Ask<StreamStateList> = Ask {
    method: "Streams",
    plain: DirectoryMsg::Streams,
    traced: DirectoryMsg::StreamsTraced,
};
pub const STREAMS_CLUSTER: Ask<StreamStateList> = Ask {
    method: "StreamsCluster",
    plain: DirectoryMsg::StreamsCluster,
    traced: DirectoryMsg::StreamsClusterTraced,
};

/// `rpc.client.call.duration` (OpenTelemetry's RPC semantic conventions), made on first use.
static RPC_DURATION: std::sync::LazyLock<opentelemetry::metrics::Histogram<f64>> =
    std::sync::LazyLock::new(|| {
        crate::telemetry::metrics::meter()
            .f64_histogram("rpc.client.call.duration")
            .with_unit("s")
            .with_description(
                "calls to a node's SessionDirectory (heartbeats, listings), by rpc.method and \
                 error.type on failure",
            )
            .with_boundaries(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
                2.0, 5.0,
            ])
            .build()
    });

/// Calls a directory (this node's or another's). Inside a traced span (an API request), the
/// call is a CLIENT span and its context travels in the message; outside one (heartbeats), no
/// span is made. Either way its duration is recorded.
pub async fn call<T: Send + 'static>(
    directory: &ActorRef<DirectoryMsg>,
    ask: &Ask<T>,
    timeout_ms: u64,
) -> Result<T, ractor::RactorErr<DirectoryMsg>> {
    let (plain, traced) = (ask.plain, ask.traced);
    observed(directory, ask.method, |parent| async move {
        match parent {
            None => ractor::call_t!(directory, plain, timeout_ms),
            Some(p) => ractor::call_t!(directory, traced, timeout_ms, p),
        }
    })
    .await
}

/// Asks a directory for a tenant's live series: its node's part, or (`cluster`) every node's
/// merged.
pub async fn call_series(
    directory: &ActorRef<DirectoryMsg>,
    cluster: bool,
    ask: SeriesAsk,
    timeout_ms: u64,
) -> Result<SeriesAnswer, ractor::RactorErr<DirectoryMsg>> {
    let method = if cluster { "SeriesCluster" } else { "Series" };
    observed(directory, method, |parent| async move {
        let p = parent.unwrap_or_default();
        if cluster {
            ractor::call_t!(
                directory,
                DirectoryMsg::SeriesClusterTraced,
                timeout_ms,
                p,
                ask
            )
        } else {
            ractor::call_t!(directory, DirectoryMsg::SeriesTraced, timeout_ms, p, ask)
        }
    })
    .await
}

/// Runs a call (given the trace to send, if any) as a CLIENT span when inside a trace, and
/// records its duration.
async fn observed<T, F, Fut>(
    directory: &ActorRef<DirectoryMsg>,
    method: &'static str,
    call: F,
) -> Result<T, ractor::RactorErr<DirectoryMsg>>
where
    F: FnOnce(Option<TraceParent>) -> Fut,
    Fut: std::future::Future<Output = Result<T, ractor::RactorErr<DirectoryMsg>>>,
{
    use tracing::Instrument;
    let started = std::time::Instant::now();
    let result = if !crate::telemetry::in_trace() {
        call(None).await
    } else {
        let span = tracing::info_span!(
            "rpc call",
            otel.name = %format_args!("SessionDirectory/{method}"),
            otel.kind = "client",
            rpc.system.name = "ractor_cluster",
            rpc.method = method,
            server.address = %directory.get_id(),
        );
        async {
            let parent = TraceParent(crate::telemetry::current_traceparent());
            call(Some(parent)).await
        }
        .instrument(span)
        .await
    };
    let mut attrs = vec![
        opentelemetry::KeyValue::new("rpc.system.name", "ractor_cluster"),
        opentelemetry::KeyValue::new("rpc.method", method),
    ];
    if result.is_err() {
        attrs.push(opentelemetry::KeyValue::new("error.type", "no_answer"));
    }
    RPC_DURATION.record(started.elapsed().as_secs_f64(), &attrs);
    result
}

/// The SERVER span of a call that came with a trace (none for one that did not).
fn served(method: &'static str, parent: &TraceParent, node: &str) -> tracing::Span {
    if parent.0.is_empty() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        "rpc served",
        otel.name = %format_args!("SessionDirectory/{method}"),
        otel.kind = "server",
        rpc.system.name = "ractor_cluster",
        rpc.method = method,
        node = node,
    );
    crate::telemetry::follow(&span, &parent.0);
    span
}

pub struct DirectoryArgs {
    pub node: String,
}

pub struct SessionDirectory;

impl Actor for SessionDirectory {
    type Msg = DirectoryMsg;
    type State = DirectoryArgs;
    type Arguments = DirectoryArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<DirectoryMsg>,
        args: DirectoryArgs,
    ) -> Result<DirectoryArgs, ActorProcessingErr> {
        ractor::pg::join(DIRECTORY_GROUP.to_string(), vec![myself.get_cell()]);
        Ok(args)
    }

    async fn handle(
        &self,
        myself: ActorRef<DirectoryMsg>,
        msg: DirectoryMsg,
        state: &mut DirectoryArgs,
    ) -> Result<(), ActorProcessingErr> {
        crate::telemetry::metrics::ActorKind::SessionDirectory
            .timed(async move {
                let (parent, msg) = msg.untraced();
                match msg {
                    DirectoryMsg::List(reply) => {
                        let span = served("List", &parent, &state.node);
                        let _ = reply.send(local_sessions(&state.node).instrument(span).await);
                    }
                    DirectoryMsg::Streams(reply) => {
                        let span = served("Streams", &parent, &state.node);
                        let node = state.node.clone();
                        tokio::spawn(
                            async move {
                                let _ = reply.send(local_streams(&node).await);
                            }
                            .instrument(span),
                        );
                    }
                    DirectoryMsg::StreamsCluster(reply) => {
                        let span = served("StreamsCluster", &parent, &state.node);
                        let peers = other_directories(&myself);
                        let node = state.node.clone();
                        tokio::spawn(
                            async move {
                                let mine = local_streams(&node).await;
                                let all = with_peers(mine, peers, |peer| async move {
                                    call(&peer, &STREAMS, 5_000).await
                                })
                                .await;
                                let _ = reply.send(all);
                            }
                            .instrument(span),
                        );
                    }
                    DirectoryMsg::SeriesTraced(p, ask, reply) => {
                        let span = served("Series", &p, &state.node);
                        let node = state.node.clone();
                        tokio::spawn(
                            async move {
                                let _ = reply.send(local_series(&node, ask).await);
                            }
                            .instrument(span),
                        );
                    }
                    DirectoryMsg::SeriesClusterTraced(p, ask, reply) => {
                        let span = served("SeriesCluster", &p, &state.node);
                        let peers = other_directories(&myself);
                        let node = state.node.clone();
                        tokio::spawn(
                            async move {
                                let mine = local_series(&node, ask.clone()).await;
                                // The store held every node's cells: nobody else to ask.
                                if mine.stored {
                                    let _ = reply.send(mine);
                                    return;
                                }
                                let all = with_peers(mine, peers, |peer| {
                                    let ask = ask.clone();
                                    async move { call_series(&peer, false, ask, 5_000).await }
                                })
                                .await;
                                let _ = reply.send(all);
                            }
                            .instrument(span),
                        );
                    }
                    // `untraced` made them plain.
                    DirectoryMsg::ListTraced(..)
                    | DirectoryMsg::ListClusterTraced(..)
                    | DirectoryMsg::ClusterViewTraced(..)
                    | DirectoryMsg::ActorTreeTraced(..)
                    | DirectoryMsg::StreamsTraced(..)
                    | DirectoryMsg::StreamsClusterTraced(..) => {}
                    DirectoryMsg::Ping(reply) => {
                        let _ = reply.send(Json(String::new()));
                    }
                    DirectoryMsg::ActorTree(reply) => {
                        // From a task: the figures are asked of many actors, and this directory keeps
                        // answering meanwhile.
                        let span = served("ActorTree", &parent, &state.node);
                        let node = state.node.clone();
                        tokio::spawn(
                            async move {
                                let v = super::actor_tree::tree(&node).await;
                                let _ = reply.send(Json(v.to_string()));
                            }
                            .instrument(span),
                        );
                    }
                    DirectoryMsg::ClusterView(reply) => {
                        let span = served("ClusterView", &parent, &state.node);
                        let view = async {
                            match ractor::registry::where_is(CLUSTER_MEMBER) {
                                Some(c) => {
                                    let c: ActorRef<ClusterMsg> = c.into();
                                    match ractor::call_t!(c, ClusterMsg::View, 2_000) {
                                Ok(v) => serde_json::to_string(&v).unwrap_or_default(),
                                Err(e) => {
                                    serde_json::json!({"node": state.node, "error": e.to_string()})
                                        .to_string()
                                }
                            }
                                }
                                None => serde_json::json!({"node": state.node, "cluster": "off"})
                                    .to_string(),
                            }
                        }
                        .instrument(span)
                        .await;
                        let _ = reply.send(Json(view));
                    }
                    DirectoryMsg::ListCluster(reply) => {
                        // Asked from a task: this directory keeps answering `List` meanwhile, so two
                        // nodes listing the cluster at once do not wait on each other.
                        let span = served("ListCluster", &parent, &state.node);
                        let peers = other_directories(&myself);
                        let node = state.node.clone();
                        tokio::spawn(
                            async move {
                                let mine = local_sessions(&node).await;
                                let all = with_peers(mine, peers, |peer| async move {
                                    call(&peer, &LIST, 5_000).await
                                })
                                .await;
                                let _ = reply.send(all);
                            }
                            .instrument(span),
                        );
                    }
                }
                Ok(())
            })
            .await
    }
}

/// An answer that gathers over the cluster: another node's part joins it, a node that does
/// not answer is named in it.
trait Gathered {
    fn join(&mut self, other: Self);
    fn missing(&mut self, why: String);
}

impl Gathered for SessionList {
    fn join(&mut self, other: Self) {
        self.sessions.extend(other.sessions);
        self.errors.extend(other.errors);
    }

    fn missing(&mut self, why: String) {
        self.errors.push(why);
    }
}

impl Gathered for SeriesAnswer {
    fn join(&mut self, other: Self) {
        SeriesAnswer::join(self, other);
    }

    fn missing(&mut self, why: String) {
        self.errors.push(why);
    }
}

impl Gathered for StreamStateList {
    fn join(&mut self, other: Self) {
        self.streams.extend(other.streams);
        self.errors.extend(other.errors);
    }

    fn missing(&mut self, why: String) {
        self.errors.push(why);
    }
}

/// This node's SessionDirectory, by name or else as this node's member of its process group.
/// ractor 0.16 takes a name out of the registry when a *remote* actor of that name stops: when
/// a peer leaves, the proxy of its directory (named `DIRECTORY_NAME` too) stops and the local one
/// would no longer be found by name, though it runs (found by a test of a peer's restart).
pub fn local() -> Option<ActorRef<DirectoryMsg>> {
    ractor::registry::where_is(DIRECTORY_NAME)
        .or_else(|| {
            ractor::pg::get_local_members(&DIRECTORY_GROUP.to_string())
                .into_iter()
                .next()
        })
        .map(ActorRef::from)
}

/// The other nodes' directories (process group members other than this one).
fn other_directories(myself: &ActorRef<DirectoryMsg>) -> Vec<ractor::ActorCell> {
    ractor::pg::get_members(&DIRECTORY_GROUP.to_string())
        .into_iter()
        .filter(|m| m.get_id() != myself.get_id())
        .collect()
}

/// `mine` with every peer's answer to `ask`, asked all at once.
async fn with_peers<L, F, Fut>(mut mine: L, peers: Vec<ractor::ActorCell>, ask: F) -> L
where
    L: Gathered,
    F: Fn(ActorRef<DirectoryMsg>) -> Fut,
    Fut: std::future::Future<Output = Result<L, ractor::RactorErr<DirectoryMsg>>>,
{
    let answers = futures_util::future::join_all(peers.into_iter().map(|member| {
        let id = member.get_id();
        let answer = ask(member.into());
        async move { (id, answer.await) }
    }))
    .await;
    for (id, answer) in answers {
        match answer {
            Ok(list) => mine.join(list),
            Err(e) => mine.missing(format!("directory {id} did not answer: {e}")),
        }
    }
    mine
}

/// This node's export streams, from its MediatorSupervisor (none on a node without one).
async fn local_streams(node: &str) -> StreamStateList {
    let mut out = StreamStateList::default();
    let Some(m) = ractor::registry::where_is(MEDIATOR_NAME) else {
        return out;
    };
    let m: ActorRef<MediatorMsg> = m.into();
    match ractor::call_t!(m, MediatorMsg::States, 2_000) {
        Ok(s) => out.streams = s,
        Err(e) => out
            .errors
            .push(format!("{node}: the mediator did not answer: {e}")),
    }
    out
}

/// This node's part of a tenant's live series, from its MediatorSupervisor (nothing on a node
/// without one).
async fn local_series(node: &str, ask: SeriesAsk) -> SeriesAnswer {
    let Some(m) = ractor::registry::where_is(MEDIATOR_NAME) else {
        return SeriesAnswer::default();
    };
    let m: ActorRef<MediatorMsg> = m.into();
    match ractor::call_t!(m, MediatorMsg::Series, 3_000, ask) {
        Ok(a) => a,
        Err(e) => SeriesAnswer {
            errors: vec![format!("{node}: the mediator did not answer: {e}")],
            ..SeriesAnswer::default()
        },
    }
}

/// This node's sessions, each asked for its statistics.
async fn local_sessions(node: &str) -> SessionList {
    let mut out = SessionList::default();
    let Some(collector) = ractor::registry::where_is(COLLECTOR_NAME) else {
        return out; // not a collector node
    };
    let collector: ActorRef<CollectorMsg> = collector.into();
    let sessions = match ractor::call_t!(collector, CollectorMsg::Sessions, 2_000) {
        Ok(s) => s,
        Err(e) => {
            out.errors
                .push(format!("{node}: collector did not answer: {e}"));
            return out;
        }
    };
    // All at once, each with its own deadline: a busy session costs its own answer only.
    let answers = futures_util::future::join_all(sessions.into_iter().map(|s| async move {
        let name = s.get_name().unwrap_or_default();
        (name, ractor::call_t!(s, SessionMsg::GetStats, 1_000))
    }))
    .await;
    for (name, answer) in answers {
        // A session that ended meanwhile (or is stuck) is left out.
        if let Ok(stats) = answer {
            out.sessions.push(SessionInfo {
                node: node.to_string(),
                session: name,
                stats,
            });
        }
    }
    out
}
