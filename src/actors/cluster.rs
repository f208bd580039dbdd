//! ClusterMember: joins this node to the ractor cluster. It runs the ractor_cluster NodeServer,
//! dials the configured seeds and dials them again, with backoff, after a disconnect
//! (ractor_cluster does not), and keeps the node's view of the cluster: peers, their state, and
//! the last error per seed. A wrong cookie, an unreachable seed and a lost peer each give one log
//! line and show in the view. Peers are told to dial this node at `cluster.advertise` (see
//! [`advertised`]): ractor_cluster sends it in its handshake as the node's connection string.
//!
//! Messages: `Event` (from the NodeServer's event subscription), `Dial` (own backoff timer),
//! `View`.

use super::cluster_tls::ClusterTls;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::{
    IncomingEncryptionMode, NodeEventSubscription, NodeServer, NodeServerMessage, RactorMessage,
};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime};

pub const NODE_SERVER: &str = "cluster/node-server";
pub const CLUSTER_MEMBER: &str = "cluster";
/// Node names of `ipfixsvc cluster` queries start with this.
pub const CLI_NODE_PREFIX: &str = "ipfixsvc-cli-";

#[derive(Debug, Clone)]
pub enum PeerEvent {
    Opened {
        node_id: u64,
        addr: String,
        outgoing: bool,
    },
    Authenticated {
        node_id: u64,
        name: String,
    },
    Ready {
        node_id: u64,
        name: String,
    },
    Disconnected {
        node_id: u64,
        addr: String,
        outgoing: bool,
        name: Option<String>,
    },
}

#[derive(RactorMessage)]
pub enum ClusterMsg {
    Event(PeerEvent),
    Dial(String),
    View(RpcReplyPort<ClusterView>),
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PeerView {
    pub name: Option<String>,
    pub addr: String,
    pub outgoing: bool,
    /// opened, authenticated, ready
    pub state: String,
    pub since: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SeedView {
    pub seed: String,
    pub connected: bool,
    pub attempts: u32,
    pub last_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ClusterView {
    pub node: String,
    pub listen: String,
    pub advertise: String,
    pub peers: Vec<PeerView>,
    pub seeds: Vec<SeedView>,
}

pub struct ClusterArgs {
    pub node: String,
    pub listen: String,
    pub seeds: Vec<String>,
    pub cookie: String,
    pub tls: Option<ClusterTls>,
    /// `cluster.advertise`; empty: see [`advertised`].
    pub advertise: String,
}

pub struct ClusterState {
    node: String,
    listen: String,
    advertise: String,
    server: ActorRef<NodeServerMessage>,
    peers: HashMap<u64, PeerView>,
    seeds: Vec<SeedView>,
    /// Resolved address of an outgoing connection -> the seed it came from.
    dialed: HashMap<String, String>,
    tls: Option<ClusterTls>,
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

impl NodeEventSubscription for Forward {
    fn node_session_opened(&self, ses: ractor_cluster::node::NodeServerSessionInformation) {
        self.send(PeerEvent::Opened {
            node_id: ses.node_id,
            addr: ses.peer_addr.clone(),
            outgoing: !ses.is_server,
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
        });
    }

    fn node_session_ready(&self, ses: ractor_cluster::node::NodeServerSessionInformation) {
        self.send(PeerEvent::Ready {
            node_id: ses.node_id,
            name: peer_name(&ses).unwrap_or_default(),
        });
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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
            .map_err(|e| format!("cluster.listen {}: {e}", args.listen))?
            .next()
            .ok_or_else(|| format!("cluster.listen {}: no address", args.listen))?;
        let (host, port) = advertised(&args.advertise, listen);
        let server = NodeServer::new(
            listen.port(),
            args.cookie,
            args.node.clone(),
            host.clone(),
            args.tls
                .as_ref()
                .map(|t| IncomingEncryptionMode::Tls(t.acceptor.clone())),
            Some(ractor_cluster::node::NodeConnectionMode::Transitive),
        )
        .with_listen_addr(listen.ip());
        let (server, _) =
            Actor::spawn_linked(Some(NODE_SERVER.into()), server, (), myself.get_cell())
                .await
                .map_err(|e| {
                    format!(
                        "cannot listen for the cluster (cluster.listen) on {listen}: {}",
                        super::startup_failure(&e)
                    )
                })?;
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
        for seed in &args.seeds {
            myself.cast(ClusterMsg::Dial(seed.clone()))?;
        }
        let advertise = format!("{host}:{port}");
        tracing::info!(cluster = %listen, %advertise, seeds = ?args.seeds, tls = args.tls.is_some(), "cluster member started");
        Ok(ClusterState {
            node: args.node,
            listen: listen.to_string(),
            advertise,
            server,
            peers: HashMap::new(),
            seeds: args
                .seeds
                .into_iter()
                .map(|seed| SeedView {
                    seed,
                    connected: false,
                    attempts: 0,
                    last_error: None,
                })
                .collect(),
            dialed: HashMap::new(),
            tls: args.tls,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<ClusterMsg>,
        msg: ClusterMsg,
        state: &mut ClusterState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ClusterMsg::Dial(seed) => state.dial(&myself, &seed).await,
            ClusterMsg::Event(e) => state.event(&myself, e),
            ClusterMsg::View(reply) => {
                let mut peers: Vec<_> = state.peers.values().cloned().collect();
                peers.sort_by(|a, b| a.addr.cmp(&b.addr));
                let _ = reply.send(ClusterView {
                    node: state.node.clone(),
                    listen: state.listen.clone(),
                    advertise: state.advertise.clone(),
                    peers,
                    seeds: state.seeds.clone(),
                });
            }
        }
        Ok(())
    }
}

impl ClusterState {
    fn seed_mut(&mut self, seed: &str) -> Option<&mut SeedView> {
        self.seeds.iter_mut().find(|s| s.seed == seed)
    }

    /// 1 s doubling to 30 s.
    fn redial(myself: &ActorRef<ClusterMsg>, seed: &str, attempts: u32) {
        let delay = Duration::from_secs(1u64 << attempts.min(5)).min(Duration::from_secs(30));
        let seed = seed.to_string();
        myself.send_after(delay, move || ClusterMsg::Dial(seed));
    }

    async fn dial(&mut self, myself: &ActorRef<ClusterMsg>, seed: &str) {
        let resolved = tokio::net::lookup_host(seed)
            .await
            .ok()
            .and_then(|mut a| a.next());
        let result = match resolved {
            Some(addr) => {
                self.dialed.insert(addr.to_string(), seed.to_string());
                let connect = async {
                    match &self.tls {
                        Some(tls) => {
                            let name = ClusterTls::server_name(seed)?;
                            ractor_cluster::client_connect_enc(
                                &self.server,
                                addr,
                                tls.connector.clone(),
                                name,
                            )
                            .await
                            .map_err(|e| format!("{e:?}"))
                        }
                        None => ractor_cluster::client_connect(&self.server, addr)
                            .await
                            .map_err(|e| format!("{e:?}")),
                    }
                };
                match tokio::time::timeout(Duration::from_secs(3), connect).await {
                    Ok(r) => r,
                    Err(_) => Err("no answer within 3 s".into()),
                }
            }
            None => Err("does not resolve".into()),
        };
        let Some(s) = self.seed_mut(seed) else { return };
        s.attempts += 1;
        let attempts = s.attempts;
        if let Err(e) = result {
            if s.last_error.as_deref() != Some(&e) {
                tracing::warn!(seed, error = %e, "cluster seed unreachable: will dial again");
            }
            s.last_error = Some(e);
            s.connected = false;
            Self::redial(myself, seed, attempts);
        }
    }

    fn event(&mut self, myself: &ActorRef<ClusterMsg>, e: PeerEvent) {
        match e {
            PeerEvent::Opened {
                node_id,
                addr,
                outgoing,
            } => {
                self.peers.insert(
                    node_id,
                    PeerView {
                        name: None,
                        addr,
                        outgoing,
                        state: "opened".into(),
                        since: unix_now(),
                    },
                );
            }
            PeerEvent::Authenticated { node_id, name } => {
                if let Some(p) = self.peers.get_mut(&node_id) {
                    p.state = "authenticated".into();
                    p.name = Some(name);
                }
            }
            PeerEvent::Ready { node_id, name } => {
                let addr = self
                    .peers
                    .get(&node_id)
                    .map(|p| p.addr.clone())
                    .unwrap_or_default();
                if let Some(p) = self.peers.get_mut(&node_id) {
                    p.state = "ready".into();
                    p.name = Some(name.clone());
                }
                if let Some(seed) = self.dialed.get(&addr).cloned()
                    && let Some(s) = self.seed_mut(&seed)
                {
                    s.connected = true;
                    s.attempts = 0;
                    s.last_error = None;
                }
                tracing::info!(peer = %name, %addr, "cluster peer ready");
            }
            PeerEvent::Disconnected {
                node_id,
                addr,
                outgoing,
                name,
            } => {
                let was = self.peers.remove(&node_id);
                let authenticated = was.as_ref().is_some_and(|p| p.state != "opened");
                let error = if authenticated {
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
                if outgoing && let Some(seed) = self.dialed.get(&addr).cloned() {
                    let attempts = self.seed_mut(&seed).map_or(0, |s| {
                        s.connected = false;
                        s.last_error = Some(error.clone());
                        s.attempts
                    });
                    Self::redial(myself, &seed, attempts);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
