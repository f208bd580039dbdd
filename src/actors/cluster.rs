//! ClusterMember: joins this node to the ractor cluster. It runs the ractor_cluster NodeServer,
//! dials the configured seeds and dials them again, with backoff, after a disconnect
//! (ractor_cluster does not), and keeps the node's view of the cluster: peers, their state, and
//! the last error per seed. A wrong cookie, an unreachable seed and a lost peer each give one log
//! line and show in the view.
//!
//! The full mesh is ours, not ractor_cluster's: its NodeServer runs in
//! `NodeConnectionMode::Isolated`. In `Transitive` mode ractor_cluster dials the peers a peer
//! tells it of itself, in plain TCP (it has no hook for TLS), once, without backoff and out of
//! the view: against TLS nodes every such dial failed, and nodes that did not list each other as
//! seeds never met. Instead, once a peer is ready (and every 10 s for all peers, so that nodes
//! that joined at the same moment still meet), the member asks the peer's SessionDirectory for
//! its cluster view (the `ClusterView` RPC the CLI already uses) and dials each ready peer of it
//! that it is not connected to: by the address that peer advertises (`cluster.advertise`, sent in
//! ractor_cluster's handshake as its connection string), with TLS when the cluster uses it, and
//! with the same backoff and view entry as a seed (`via` names who told of it). A discovered
//! peer that is not connected and that no peer lists any more (it left) is forgotten.
//!
//! The NodeServer's end (a crash, or a stop) ends the member with an error, so that its
//! supervisor sees a failure and restarts it; before it ends, the member waits (a bounded time)
//! for the listen port to be free again, and a restarted member retries its NodeServer's start
//! within that bound while its predecessor's name or port lingers.
//!
//! Messages: `Event` (from the NodeServer's event subscription), `Dial` (own backoff timer),
//! `Dialed` (a dial's outcome), `Heard` (peers of peers), `Refresh` (own timer), `View`.

use super::cluster_tls::ClusterTls;
use super::directory::{DIRECTORY_GROUP, DirectoryMsg, Json};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SpawnErr, SupervisionEvent};
use ractor_cluster::node::NodeConnectionMode;
use ractor_cluster::{
    IncomingEncryptionMode, NetworkStream, NodeEventSubscription, NodeServer, NodeServerMessage,
    RactorMessage,
};
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub const NODE_SERVER: &str = "cluster/node-server";
pub const CLUSTER_MEMBER: &str = "cluster";
/// Node names of `ipfixsvc cluster` queries start with this.
pub const CLI_NODE_PREFIX: &str = "ipfixsvc-cli-";
/// Every peer is asked for its peers this often: a peer that joined while another was joining
/// (each asked before the other was ready) is met within this.
const REFRESH_EVERY: Duration = Duration::from_secs(10);

/// Heartbeats: each ready peer is asked every HEARTBEAT_EVERY, within HEARTBEAT_TIMEOUT; after
/// UNREACHABLE_AFTER unanswered in a row its connection is closed and dialed again with the
/// seeds' backoff. A partition drops packets without closing anything, and TCP alone would
/// notice only after its retransmissions give up (about 15 minutes).
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
const HEARTBEAT_TIMEOUT_MS: u64 = 2_000;
const UNREACHABLE_AFTER: u32 = 3;
/// How long the member waits for its NodeServer's port and name to be free again, when it ends
/// and when it starts again.
const REBIND_WITHIN: Duration = Duration::from_secs(5);

/// Whether a ClusterMember started before in this process: only then is a busy port or name at
/// start its predecessor's, worth waiting for; at the first start it is another program's, said
/// at once.
static STARTED_BEFORE: AtomicBool = AtomicBool::new(false);

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster.listen {listen}: {why}")]
    Listen { listen: String, why: String },
    #[error("cannot listen for the cluster (cluster.listen) on {listen}: {why}")]
    Server { listen: SocketAddr, why: String },
    #[error("the cluster node server ended ({reason}): the cluster member ends with it")]
    ServerEnded { reason: String },
}

#[derive(Debug, Clone)]
pub enum PeerEvent {
    Opened {
        node_id: u64,
        addr: String,
        outgoing: bool,
        session: ActorRef<ractor_cluster::NodeSessionMessage>,
    },
    Authenticated {
        node_id: u64,
        name: String,
        advertise: String,
    },
    Ready {
        node_id: u64,
        name: String,
        advertise: String,
    },
    Disconnected {
        node_id: u64,
        addr: String,
        outgoing: bool,
        name: Option<String>,
    },
}

/// A peer of a peer: the address it advertises, its name, and who told of it.
#[derive(Debug, Clone)]
pub struct Heard {
    pub addr: String,
    pub name: String,
    pub via: String,
}

#[derive(RactorMessage)]
pub enum ClusterMsg {
    Event(PeerEvent),
    /// Dial this seed or discovered peer, unless a later `Dial` replaced this one (`round`).
    Dial {
        seed: String,
        round: u64,
    },
    /// How a dial went (the connection only: the handshake's outcome comes as an `Event`).
    Dialed {
        seed: String,
        round: u64,
        result: Result<(), String>,
    },
    /// Peers of peers; `complete` when every peer answered.
    Heard {
        heard: Vec<Heard>,
        complete: bool,
    },
    /// Ask every peer for its peers again.
    Refresh,
    /// Ask every ready peer whether it answers (own timer).
    Heartbeat,
    /// A peer's answer to a heartbeat, or its absence.
    Beat {
        node_id: u64,
        answered: bool,
    },
    View(RpcReplyPort<ClusterView>),
}

/// The view types are read back from peers (discovery), so every field has a default: a view
/// from another version still parses.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct PeerView {
    pub name: Option<String>,
    pub addr: String,
    pub outgoing: bool,
    /// opened, authenticated, ready
    pub state: String,
    pub since: u64,
    /// Where the peer says it can be dialed (its `cluster.advertise`), once authenticated.
    pub advertise: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct SeedView {
    pub seed: String,
    pub connected: bool,
    pub attempts: u32,
    pub last_error: Option<String>,
    /// The peer that told of this one; none for a configured seed.
    pub via: Option<String>,
    /// The node's name (`node@host`), once known.
    pub peer: Option<String>,
    /// The seed is this node itself: not dialed.
    pub this_node: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ClusterView {
    pub node: String,
    pub listen: String,
    pub advertise: String,
    pub peers: Vec<PeerView>,
    pub seeds: Vec<SeedView>,
}

#[derive(Clone)]
pub struct ClusterArgs {
    pub node: String,
    pub listen: String,
    pub seeds: Vec<String>,
    pub cookie: String,
    pub tls: Option<ClusterTls>,
    /// `cluster.advertise`; empty: see [`advertised`].
    pub advertise: String,
}

/// A seed or a discovered peer, dialed until connected.
struct Target {
    view: SeedView,
    /// Bumped by each scheduled dial: an older timer or dial outcome is stale and ignored, so
    /// that one target never has two backoff chains.
    round: u64,
}

pub struct ClusterState {
    node: String,
    /// This node's name in the cluster, `node@host`.
    me: String,
    listen: SocketAddr,
    advertise: String,
    server: ActorRef<NodeServerMessage>,
    peers: HashMap<u64, PeerView>,
    targets: Vec<Target>,
    /// Resolved address of an outgoing connection -> the seed it came from.
    dialed: HashMap<String, String>,
    tls: Option<ClusterTls>,
    /// Each peer's NodeSession, closed when the peer stops answering heartbeats.
    sessions: HashMap<u64, ActorRef<ractor_cluster::NodeSessionMessage>>,
    /// Heartbeats unanswered in a row, per peer.
    missed: HashMap<u64, u32>,
    /// Peers whose connection was closed for not answering: their disconnection says so.
    unreachable: HashSet<u64>,
}

/// Forwards the NodeServer's session events to the ClusterMember.
struct Forward(ActorRef<ClusterMsg>);

impl Forward {
    fn send(&self, e: PeerEvent) {
        let _ = self.0.cast(ClusterMsg::Event(e));
    }
}

/// The peer's `name@host`, once the handshake told it.
fn peer_name(ses: &ractor_cluster::node::NodeServerSessionInformation) -> Option<String> {
    ses.peer_name.as_ref().map(|n| n.name.clone())
}

/// Where the peer says it can be dialed: its connection string, `host:port`.
fn peer_advertise(ses: &ractor_cluster::node::NodeServerSessionInformation) -> String {
    ses.peer_name
        .as_ref()
        .map(|n| n.connection_string.clone())
        .unwrap_or_default()
}

impl NodeEventSubscription for Forward {
    fn node_session_opened(&self, ses: ractor_cluster::node::NodeServerSessionInformation) {
        self.send(PeerEvent::Opened {
            node_id: ses.node_id,
            addr: ses.peer_addr.clone(),
            outgoing: !ses.is_server,
            session: ses.actor.clone(),
        });
    }

    fn node_session_disconnected(&self, ses: ractor_cluster::node::NodeServerSessionInformation) {
        self.send(PeerEvent::Disconnected {
            node_id: ses.node_id,
            addr: ses.peer_addr.clone(),
            outgoing: !ses.is_server,
            name: peer_name(&ses),
        });
    }

    fn node_session_authenticated(&self, ses: ractor_cluster::node::NodeServerSessionInformation) {
        self.send(PeerEvent::Authenticated {
            node_id: ses.node_id,
            name: peer_name(&ses).unwrap_or_default(),
            advertise: peer_advertise(&ses),
        });
    }

    fn node_session_ready(&self, ses: ractor_cluster::node::NodeServerSessionInformation) {
        self.send(PeerEvent::Ready {
            node_id: ses.node_id,
            name: peer_name(&ses).unwrap_or_default(),
            advertise: peer_advertise(&ses),
        });
    }
}

/// The host and port this node tells its peers to dial. `cluster.advertise` when set (its port,
/// else the listen port); else the listen IP when it is a specific one (peers reach it there);
/// else the host name (`HOSTNAME`: in Kubernetes the pod's name, which resolves from other pods
/// only through a headless service's FQDN: set cluster.advertise there).
pub fn advertised(advertise: &str, listen: SocketAddr) -> (String, u16) {
    if !advertise.is_empty() {
        if !advertise.ends_with(']')
            && let Some((host, port)) = advertise.rsplit_once(':')
            && let Ok(port) = port.parse()
        {
            return (host.to_string(), port);
        }
        return (advertise.to_string(), listen.port());
    }
    let host = match listen.ip() {
        ip if ip.is_unspecified() => crate::config::host_name(),
        IpAddr::V4(ip) => ip.to_string(),
        // ractor_cluster writes `host:port`: an IPv6 host goes in brackets.
        IpAddr::V6(ip) => format!("[{ip}]"),
    };
    (host, listen.port())
}

/// Whether a NodeServer start failed only because a predecessor's name or port is still taken.
fn predecessor_lingers(e: &SpawnErr) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if matches!(
            err.downcast_ref::<SpawnErr>(),
            Some(SpawnErr::ActorAlreadyRegistered(_))
        ) || err
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::AddrInUse)
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// Waits, up to `within`, until `addr` can be bound again: an ended NodeServer's listener is
/// killed with it, but asynchronously, so its socket may outlive it for a moment.
async fn wait_until_free(addr: SocketAddr, within: Duration) {
    if addr.port() == 0 {
        return; // any free port will do
    }
    let deadline = Instant::now() + within;
    while tokio::net::TcpListener::bind(addr).await.is_err() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Connects to the first of `addrs` that answers, with TLS when the cluster uses it. Ok once the
/// connection is up: the handshake's outcome comes as an event. From `local` (the listen
/// address) when the node listens on one address: its peers and the network policies see the
/// node's own address, and a partition of that address cuts both directions.
async fn connect(
    server: &ActorRef<NodeServerMessage>,
    tls: Option<&ClusterTls>,
    seed: &str,
    addrs: &[SocketAddr],
    local: IpAddr,
) -> Result<(), String> {
    let mut last = "does not resolve".to_string();
    for &addr in addrs {
        let attempt = async {
            let stream = open_from(local, addr).await.map_err(|e| e.to_string())?;
            stream.set_nodelay(true).map_err(|e| e.to_string())?;
            let (peer_addr, local_addr) = (
                stream.peer_addr().map_err(|e| e.to_string())?,
                stream.local_addr().map_err(|e| e.to_string())?,
            );
            let stream = match tls {
                Some(tls) => {
                    let name = ClusterTls::server_name(seed).map_err(|e| format!("seed {e}"))?;
                    let stream = tls
                        .connector
                        .connect(name, stream)
                        .await
                        .map_err(|e| format!("TLS: {e}"))?;
                    NetworkStream::TlsClient {
                        peer_addr,
                        local_addr,
                        stream,
                    }
                }
                None => NetworkStream::Raw {
                    peer_addr,
                    local_addr,
                    stream,
                },
            };
            server
                .cast(NodeServerMessage::ConnectionOpened {
                    stream: Box::new(stream),
                    is_server: false,
                })
                .map_err(|e| e.to_string())
        };
        match tokio::time::timeout(Duration::from_secs(3), attempt).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => last = e,
            Err(_) => last = "no answer within 3 s".into(),
        }
    }
    Err(last)
}

/// A TCP connection to `to`, bound to `local` when it is one address of the same family and
/// scope (loopback or not) as `to`.
async fn open_from(local: IpAddr, to: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let bind = !local.is_unspecified()
        && local.is_ipv4() == to.is_ipv4()
        && local.is_loopback() == to.ip().is_loopback();
    let socket = if to.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    if bind {
        socket.bind(SocketAddr::new(local, 0))?;
    }
    socket.connect(to).await
}

/// Asks the peers' directories (all, or the one on node `only`) for their cluster views, and
/// tells the member which ready peers they have. From a task: the member keeps answering
/// meanwhile (a peer's directory asks it for its own view).
fn ask_peers(myself: &ActorRef<ClusterMsg>, only: Option<u64>) {
    let directories: Vec<ActorRef<DirectoryMsg>> =
        ractor::pg::get_members(&DIRECTORY_GROUP.to_string())
            .into_iter()
            .filter(|m| {
                let id = m.get_id();
                !id.is_local() && only.is_none_or(|n| id.node() == n)
            })
            .map(Into::into)
            .collect();
    let member = myself.clone();
    tokio::spawn(async move {
        let answers = futures_util::future::join_all(directories.into_iter().map(|d| async move {
            crate::actors::directory::call(&d, &crate::actors::directory::CLUSTER_VIEW, 3_000).await
        }))
        .await;
        // Only an answer from every peer may make the member forget a peer nobody lists.
        let mut complete = only.is_none();
        let mut heard = Vec::new();
        for answer in answers {
            let view = answer.map_err(|e| e.to_string()).and_then(|Json(v)| {
                serde_json::from_str::<ClusterView>(&v).map_err(|e| e.to_string())
            });
            match view {
                Ok(view) => heard.extend(
                    view.peers
                        .into_iter()
                        .filter(|p| p.state == "ready" && !p.advertise.is_empty())
                        .filter_map(|p| {
                            let name = p.name?;
                            (!name.starts_with(CLI_NODE_PREFIX)).then(|| Heard {
                                addr: p.advertise,
                                name,
                                via: view.node.clone(),
                            })
                        }),
                ),
                Err(e) => {
                    tracing::debug!(error = %e, "a cluster peer did not tell its peers");
                    complete = false;
                }
            }
        }
        let _ = member.cast(ClusterMsg::Heard { heard, complete });
    });
}

pub struct ClusterMember;

impl Actor for ClusterMember {
    type Msg = ClusterMsg;
    type State = ClusterState;
    type Arguments = ClusterArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ClusterMsg>,
        args: ClusterArgs,
    ) -> Result<ClusterState, ActorProcessingErr> {
        let listen: SocketAddr = tokio::net::lookup_host(&args.listen)
            .await
            .map_err(|e| ClusterError::Listen {
                listen: args.listen.clone(),
                why: e.to_string(),
            })?
            .next()
            .ok_or_else(|| ClusterError::Listen {
                listen: args.listen.clone(),
                why: "no address".into(),
            })?;
        let (host, port) = advertised(&args.advertise, listen);
        let deadline = Instant::now() + REBIND_WITHIN;
        let server = loop {
            let server = NodeServer::new(
                listen.port(),
                args.cookie.clone(),
                args.node.clone(),
                host.clone(),
                args.tls
                    .as_ref()
                    .map(|t| IncomingEncryptionMode::Tls(t.acceptor.clone())),
                // The mesh is ours (see the module doc): ractor_cluster's transitive dials are
                // plain TCP.
                Some(NodeConnectionMode::Isolated),
            )
            .with_listen_addr(listen.ip());
            match Actor::spawn_linked(Some(NODE_SERVER.into()), server, (), myself.get_cell()).await
            {
                Ok((server, _)) => break server,
                Err(e)
                    if STARTED_BEFORE.load(Ordering::Relaxed)
                        && Instant::now() < deadline
                        && predecessor_lingers(&e) =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => {
                    return Err(ClusterError::Server {
                        listen,
                        why: super::startup_failure(&e),
                    }
                    .into());
                }
            }
        };
        STARTED_BEFORE.store(true, Ordering::Relaxed);
        if port != listen.port() {
            // The NodeServer advertises its listen port; cluster.advertise gave another (a
            // mapped port). Sent before any session can have been opened with the old one, but
            // for one accepted in the instant between the listener's start and this message.
            server.cast(NodeServerMessage::PortChanged { port })?;
        }
        server.cast(NodeServerMessage::SubscribeToEvents {
            id: "cluster-member".into(),
            subscription: Box::new(Forward(myself.clone())),
        })?;
        // A seed listed twice is one target (each is found by its address).
        let mut seen = HashSet::new();
        let seeds: Vec<String> = args
            .seeds
            .iter()
            .filter(|s| seen.insert(s.as_str()))
            .cloned()
            .collect();
        for seed in &seeds {
            myself.cast(ClusterMsg::Dial {
                seed: seed.clone(),
                round: 0,
            })?;
        }
        myself.send_after(REFRESH_EVERY, || ClusterMsg::Refresh);
        myself.send_after(HEARTBEAT_EVERY, || ClusterMsg::Heartbeat);
        let advertise = format!("{host}:{port}");
        tracing::info!(cluster = %listen, %advertise, seeds = ?args.seeds, tls = args.tls.is_some(), "cluster member started");
        Ok(ClusterState {
            me: format!("{}@{host}", args.node),
            node: args.node,
            listen,
            advertise,
            server,
            peers: HashMap::new(),
            targets: seeds
                .into_iter()
                .map(|seed| Target {
                    view: SeedView {
                        seed,
                        ..SeedView::default()
                    },
                    round: 0,
                })
                .collect(),
            dialed: HashMap::new(),
            tls: args.tls,
            sessions: HashMap::new(),
            missed: HashMap::new(),
            unreachable: HashSet::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<ClusterMsg>,
        msg: ClusterMsg,
        state: &mut ClusterState,
    ) -> Result<(), ActorProcessingErr> {
        crate::telemetry::metrics::ActorKind::ClusterMember
            .timed(async move {
                match msg {
                    ClusterMsg::Dial { seed, round } => state.dial(&myself, &seed, round).await,
                    ClusterMsg::Dialed {
                        seed,
                        round,
                        result,
                    } => {
                        state.dialed(&myself, &seed, round, result);
                    }
                    ClusterMsg::Event(e) => state.event(&myself, e),
                    ClusterMsg::Heard { heard, complete } => state.heard(&myself, heard, complete),
                    ClusterMsg::Refresh => {
                        ask_peers(&myself, None);
                        myself.send_after(REFRESH_EVERY, || ClusterMsg::Refresh);
                    }
                    ClusterMsg::Heartbeat => {
                        state.heartbeat(&myself);
                        myself.send_after(HEARTBEAT_EVERY, || ClusterMsg::Heartbeat);
                    }
                    ClusterMsg::Beat { node_id, answered } => state.beat(node_id, answered),
                    ClusterMsg::View(reply) => {
                        let mut peers: Vec<_> = state.peers.values().cloned().collect();
                        peers.sort_by(|a, b| a.addr.cmp(&b.addr));
                        let _ = reply.send(ClusterView {
                            node: state.node.clone(),
                            listen: state.listen.to_string(),
                            advertise: state.advertise.clone(),
                            peers,
                            seeds: state.targets.iter().map(|t| t.view.clone()).collect(),
                        });
                    }
                }
                Ok(())
            })
            .await
    }

    /// ractor's default stops the member quietly when its NodeServer ends, and its supervisor
    /// then saw a normal stop: the node was left out of the cluster for good. The NodeServer's
    /// end is a failure of the member instead, which its supervisor restarts.
    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<ClusterMsg>,
        evt: SupervisionEvent,
        state: &mut ClusterState,
    ) -> Result<(), ActorProcessingErr> {
        let server = state.server.get_id();
        let reason = match evt {
            SupervisionEvent::ActorFailed(cell, err) if cell.get_id() == server => err.to_string(),
            SupervisionEvent::ActorTerminated(cell, _, reason) if cell.get_id() == server => {
                reason.unwrap_or_else(|| "stopped".into())
            }
            _ => return Ok(()),
        };
        tracing::error!(%reason, "cluster node server ended: the cluster member fails with it, for its supervisor to restart");
        // So that a member restarted at once can listen on the same port.
        wait_until_free(state.listen, REBIND_WITHIN).await;
        Err(ClusterError::ServerEnded { reason }.into())
    }
}

impl ClusterState {
    fn target_mut(&mut self, seed: &str) -> Option<&mut Target> {
        self.targets.iter_mut().find(|t| t.view.seed == seed)
    }

    /// Whether an authenticated session with the node named `name` is up.
    fn connected_to(&self, name: &str) -> bool {
        self.peers
            .values()
            .any(|p| p.state != "opened" && p.name.as_deref() == Some(name))
    }

    /// Asks each ready peer's SessionDirectory for its view (a round trip through both
    /// nodes' actors), from tasks: the answers come back as `Beat`s.
    fn heartbeat(&self, myself: &ActorRef<ClusterMsg>) {
        let ready: HashSet<u64> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                p.state == "ready"
                    && !p
                        .name
                        .as_deref()
                        .is_some_and(|n| n.starts_with(CLI_NODE_PREFIX))
            })
            .map(|(id, _)| *id)
            .collect();
        for d in ractor::pg::get_members(&DIRECTORY_GROUP.to_string()) {
            let node_id = d.get_id().node();
            if d.get_id().is_local() || !ready.contains(&node_id) {
                continue;
            }
            let (d, me): (ActorRef<DirectoryMsg>, _) = (d.into(), myself.clone());
            tokio::spawn(async move {
                let answered = crate::actors::directory::call(
                    &d,
                    &crate::actors::directory::CLUSTER_VIEW,
                    HEARTBEAT_TIMEOUT_MS,
                )
                .await
                .is_ok();
                let _ = me.cast(ClusterMsg::Beat { node_id, answered });
            });
        }
    }

    fn beat(&mut self, node_id: u64, answered: bool) {
        if answered {
            self.missed.remove(&node_id);
            return;
        }
        let Some(peer) = self.peers.get_mut(&node_id) else {
            return;
        };
        let missed = self.missed.entry(node_id).or_default();
        *missed += 1;
        if *missed < UNREACHABLE_AFTER || self.unreachable.contains(&node_id) {
            return;
        }
        tracing::warn!(peer = ?peer.name, addr = %peer.addr, missed = *missed, "cluster peer unreachable: closing the connection to dial it again");
        peer.state = "unreachable".into();
        self.unreachable.insert(node_id);
        if let Some(session) = self.sessions.get(&node_id) {
            session.stop(Some("unreachable: no answer to heartbeats".into()));
        }
    }

    /// 1 s doubling to 30 s.
    fn backoff(attempts: u32) -> Duration {
        Duration::from_secs(1u64 << attempts.min(5)).min(Duration::from_secs(30))
    }

    /// Dials `t` after `delay`; any dial of it scheduled before is dropped.
    fn schedule(myself: &ActorRef<ClusterMsg>, t: &mut Target, delay: Duration) {
        t.round += 1;
        let (seed, round) = (t.view.seed.clone(), t.round);
        myself.send_after(delay, move || ClusterMsg::Dial { seed, round });
    }

    /// Resolves here (each dial anew: a headless name resolves once its pod runs) and connects
    /// from a task, so that a peer that does not answer does not hold up the member.
    async fn dial(&mut self, myself: &ActorRef<ClusterMsg>, seed: &str, round: u64) {
        let Some(t) = self.targets.iter().find(|t| t.view.seed == seed) else {
            return; // a discovered peer forgotten meanwhile
        };
        if t.round != round {
            return;
        }
        // Connected already, through the peer's own dial: a second session would only be closed
        // by ractor_cluster as a duplicate.
        if t.view
            .peer
            .as_deref()
            .is_some_and(|name| self.connected_to(name))
        {
            if let Some(t) = self.target_mut(seed) {
                t.view.connected = true;
                t.view.attempts = 0;
                t.view.last_error = None;
            }
            return;
        }
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(seed)
            .await
            .map(|a| a.collect())
            .unwrap_or_default();
        // The seeds usually name every node, this one too (a StatefulSet's headless names):
        // dialing itself would only be refused as a duplicate name, again and again.
        let mut own: Vec<SocketAddr> = tokio::net::lookup_host(self.advertise.as_str())
            .await
            .map(|a| a.collect())
            .unwrap_or_default();
        if !self.listen.ip().is_unspecified() {
            own.push(self.listen);
        }
        if addrs.iter().any(|a| own.contains(a)) {
            let me = self.me.clone();
            if let Some(t) = self.target_mut(seed) {
                t.view.this_node = true;
                t.view.connected = true;
                t.view.attempts = 0;
                t.view.last_error = None;
                t.view.peer = Some(me);
            }
            return;
        }
        for a in &addrs {
            self.dialed.insert(a.to_string(), seed.to_string());
        }
        if let Some(t) = self.target_mut(seed) {
            t.view.attempts += 1;
        }
        let (server, tls, member) = (self.server.clone(), self.tls.clone(), myself.clone());
        let (seed, local) = (seed.to_string(), self.listen.ip());
        tokio::spawn(async move {
            let result = connect(&server, tls.as_ref(), &seed, &addrs, local).await;
            let _ = member.cast(ClusterMsg::Dialed {
                seed,
                round,
                result,
            });
        });
    }

    fn dialed(
        &mut self,
        myself: &ActorRef<ClusterMsg>,
        seed: &str,
        round: u64,
        result: Result<(), String>,
    ) {
        let Some(t) = self.target_mut(seed) else {
            return;
        };
        if t.round != round {
            return;
        }
        if let Err(e) = result {
            if t.view.last_error.as_deref() != Some(&e) {
                tracing::warn!(seed, via = ?t.view.via, error = %e, "cluster seed unreachable: will dial again");
            }
            t.view.last_error = Some(e);
            t.view.connected = false;
            let delay = Self::backoff(t.view.attempts);
            Self::schedule(myself, t, delay);
        }
    }

    /// Peers of peers: each one not connected, not this node and not known yet is dialed like a
    /// seed. After a complete round, a discovered peer that is not connected and that no peer
    /// lists any more is forgotten (it left the cluster).
    fn heard(&mut self, myself: &ActorRef<ClusterMsg>, heard: Vec<Heard>, complete: bool) {
        for h in &heard {
            if h.name == self.me
                || h.addr == self.advertise
                || self.connected_to(&h.name)
                || self
                    .targets
                    .iter()
                    .any(|t| t.view.seed == h.addr || t.view.peer.as_deref() == Some(&h.name))
            {
                continue;
            }
            tracing::info!(peer = %h.name, addr = %h.addr, via = %h.via, "cluster peer heard of: dialing it");
            let mut t = Target {
                view: SeedView {
                    seed: h.addr.clone(),
                    via: Some(h.via.clone()),
                    peer: Some(h.name.clone()),
                    ..SeedView::default()
                },
                round: 0,
            };
            Self::schedule(myself, &mut t, Duration::ZERO);
            self.targets.push(t);
        }
        if complete {
            let listed: HashSet<&str> = heard.iter().map(|h| h.addr.as_str()).collect();
            self.targets.retain(|t| {
                let keep =
                    t.view.via.is_none() || t.view.connected || listed.contains(t.view.seed.as_str());
                if !keep {
                    tracing::info!(peer = ?t.view.peer, addr = %t.view.seed, "cluster peer left: no longer dialed");
                }
                keep
            });
        }
    }

    fn event(&mut self, myself: &ActorRef<ClusterMsg>, e: PeerEvent) {
        match e {
            PeerEvent::Opened {
                node_id,
                addr,
                outgoing,
                session,
            } => {
                self.sessions.insert(node_id, session);
                self.missed.remove(&node_id);
                self.peers.insert(
                    node_id,
                    PeerView {
                        name: None,
                        addr,
                        outgoing,
                        state: "opened".into(),
                        since: crate::store::unix_secs(),
                        advertise: String::new(),
                    },
                );
            }
            PeerEvent::Authenticated {
                node_id,
                name,
                advertise,
            } => {
                if let Some(p) = self.peers.get_mut(&node_id) {
                    p.state = "authenticated".into();
                    p.name = Some(name);
                    p.advertise = advertise;
                }
            }
            PeerEvent::Ready {
                node_id,
                name,
                advertise,
            } => {
                let addr = self
                    .peers
                    .get(&node_id)
                    .map(|p| p.addr.clone())
                    .unwrap_or_default();
                if let Some(p) = self.peers.get_mut(&node_id) {
                    p.state = "ready".into();
                    p.name = Some(name.clone());
                    p.advertise = advertise.clone();
                }
                let by_addr = self.dialed.get(&addr).cloned();
                for t in &mut self.targets {
                    if by_addr.as_deref() == Some(t.view.seed.as_str())
                        || t.view.peer.as_deref() == Some(name.as_str())
                        || t.view.seed == advertise
                    {
                        t.view.connected = true;
                        t.view.attempts = 0;
                        t.view.last_error = None;
                        t.view.peer = Some(name.clone());
                    }
                }
                tracing::info!(peer = %name, %addr, "cluster peer ready");
                if !name.starts_with(CLI_NODE_PREFIX) {
                    ask_peers(myself, Some(node_id));
                }
            }
            PeerEvent::Disconnected {
                node_id,
                addr,
                outgoing,
                name,
            } => {
                let was = self.peers.remove(&node_id);
                self.sessions.remove(&node_id);
                self.missed.remove(&node_id);
                let unreachable = self.unreachable.remove(&node_id);
                let by_addr = if outgoing {
                    self.dialed.get(&addr).cloned()
                } else {
                    None
                };
                let bound = |t: &Target| {
                    by_addr.as_deref() == Some(t.view.seed.as_str())
                        || (name.is_some() && t.view.peer == name)
                };
                if let Some(n) = name.as_deref()
                    && self.connected_to(n)
                {
                    // Two sessions with one peer (both dialed at once): ractor_cluster closes
                    // one, and the peer is still connected through the other.
                    tracing::debug!(peer = n, %addr, "duplicate cluster session closed: the other one stays");
                    for t in self.targets.iter_mut().filter(|t| bound(t)) {
                        t.view.connected = true;
                        t.view.last_error = None;
                        t.view.peer = Some(n.to_string());
                    }
                    return;
                }
                let authenticated = was.as_ref().is_some_and(|p| p.state != "opened");
                let error = if unreachable {
                    format!(
                        "unreachable: no answer to {UNREACHABLE_AFTER} heartbeats in a row; connection closed"
                    )
                } else if authenticated {
                    "connection lost".to_string()
                } else {
                    "closed before authentication: wrong cluster.cookie, a TLS mismatch, or a node name already in the cluster".to_string()
                };
                // `ipfixsvc cluster ...` queries join and leave: not worth a warning.
                if name
                    .as_deref()
                    .is_some_and(|n| n.starts_with(CLI_NODE_PREFIX))
                {
                    tracing::debug!(peer = ?name, %addr, "cluster client left");
                } else {
                    tracing::warn!(peer = ?name, %addr, error, "cluster peer disconnected");
                }
                for t in self.targets.iter_mut().filter(|t| bound(t)) {
                    t.view.connected = false;
                    t.view.last_error = Some(error.clone());
                    let delay = Self::backoff(t.view.attempts);
                    Self::schedule(myself, t, delay);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    #[derive(RactorMessage)]
    enum WatchMsg {}

    /// Stands in for NodeSupervisor: tells the test how each of its children ended.
    struct Watch;

    impl Actor for Watch {
        type Msg = WatchMsg;
        type State = mpsc::UnboundedSender<String>;
        type Arguments = mpsc::UnboundedSender<String>;

        async fn pre_start(
            &self,
            _myself: ActorRef<WatchMsg>,
            tx: mpsc::UnboundedSender<String>,
        ) -> Result<mpsc::UnboundedSender<String>, ActorProcessingErr> {
            Ok(tx)
        }

        async fn handle(
            &self,
            _myself: ActorRef<WatchMsg>,
            msg: WatchMsg,
            _tx: &mut mpsc::UnboundedSender<String>,
        ) -> Result<(), ActorProcessingErr> {
            match msg {}
        }

        async fn handle_supervisor_evt(
            &self,
            _myself: ActorRef<WatchMsg>,
            evt: SupervisionEvent,
            tx: &mut mpsc::UnboundedSender<String>,
        ) -> Result<(), ActorProcessingErr> {
            let line = match evt {
                SupervisionEvent::ActorFailed(cell, err) => {
                    format!("failed {}: {err}", cell.get_name().unwrap_or_default())
                }
                SupervisionEvent::ActorTerminated(cell, _, reason) => format!(
                    "terminated {}: {reason:?}",
                    cell.get_name().unwrap_or_default()
                ),
                _ => return Ok(()),
            };
            let _ = tx.send(line);
            Ok(())
        }
    }

    fn member_args(port: u16) -> ClusterArgs {
        ClusterArgs {
            node: "unit".into(),
            listen: format!("127.0.0.1:{port}"),
            seeds: Vec::new(),
            cookie: "a-unit-test-cookie".into(),
            tls: None,
            advertise: String::new(),
        }
    }

    async fn next_end(rx: &mut mpsc::UnboundedReceiver<String>) -> String {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("the member ends within 10 s")
            .expect("an event")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_member_whose_node_server_ends_fails_and_starts_again_on_its_port() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (watch, _) = Actor::spawn(None, Watch, tx).await.expect("watch");
        let spawn = || {
            Actor::spawn_linked(
                Some(CLUSTER_MEMBER.into()),
                ClusterMember,
                member_args(port),
                watch.get_cell(),
            )
        };
        spawn().await.expect("member starts");

        // ractor's default stopped the member quietly: its supervisor saw a normal stop.
        let server = ractor::registry::where_is(NODE_SERVER).expect("node server");
        server.stop(Some("stopped by the test".into()));
        let ended = next_end(&mut rx).await;
        assert!(
            ended.starts_with("failed cluster: ")
                && ended.contains("node server ended")
                && ended.contains("stopped by the test"),
            "{ended}"
        );

        // Restarted at once, as a supervisor does: the name and the port are free.
        let (member, _) = spawn().await.expect("the member starts again");
        assert!(ractor::registry::where_is(NODE_SERVER).is_some());
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("listening again on the same port");

        // Killed, its NodeServer goes down with it, but asynchronously: a member started right
        // away (here even before the supervisor hears of the kill) waits for its predecessor's
        // name and port.
        member.kill();
        Actor::spawn_linked(None, ClusterMember, member_args(port), watch.get_cell())
            .await
            .expect("a member starts again after a kill");
        let ended = next_end(&mut rx).await;
        assert!(ended.starts_with("terminated cluster"), "{ended}");
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("listening again on the same port");
    }

    #[test]
    fn a_node_advertises_its_setting_else_its_listen_ip_else_its_host_name() {
        let listen: SocketAddr = "127.0.0.1:4800".parse().expect("addr");
        let a = |advertise: &str, listen: SocketAddr| {
            let (host, port) = advertised(advertise, listen);
            format!("{host} {port}")
        };
        assert_eq!(a("", listen), "127.0.0.1 4800");
        let v6: SocketAddr = "[::1]:4800".parse().expect("addr");
        assert_eq!(a("", v6), "[::1] 4800");
        assert_eq!(
            a("ipfix-0.ipfix.ns.svc", listen),
            "ipfix-0.ipfix.ns.svc 4800"
        );
        assert_eq!(
            a("ipfix-0.ipfix.ns.svc:14800", listen),
            "ipfix-0.ipfix.ns.svc 14800"
        );
        assert_eq!(a("[fd00::7]", listen), "[fd00::7] 4800");
        assert_eq!(a("[fd00::7]:14800", listen), "[fd00::7] 14800");
        let any: SocketAddr = "0.0.0.0:4800".parse().expect("addr");
        assert_eq!(a("", any), format!("{} 4800", crate::config::host_name()));
    }
}
