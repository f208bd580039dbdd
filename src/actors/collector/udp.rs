//! UdpListener: receives datagrams and routes each to the ExporterSession of its (exporter
//! address, Observation Domain), starting one on first contact. A session whose queue is full
//! loses the datagram (counted); one that retired (idle) is started again on its next datagram.
//!
//! Lifecycle: binds in `pre_start`; the receive task owns the routing table and ends with the
//! actor. The actor itself only holds the task.

use super::session::{ExporterSession, SessionArgs, SessionInput, SessionMsg, UdpQueue};
use super::{SessionEnv, session_name};
use bytes::Bytes;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorMessage;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

#[derive(RactorMessage)]
pub enum UdpListenerMsg {
    LocalAddr(RpcReplyPort<SocketAddr>),
}

pub struct UdpListenerArgs {
    pub listen: String,
    pub env: SessionEnv,
    pub supervisor: ActorCell,
}

pub struct UdpListenerState {
    receive: JoinHandle<()>,
    local: SocketAddr,
}

pub struct UdpListenerActor;

impl Actor for UdpListenerActor {
    type Msg = UdpListenerMsg;
    type State = UdpListenerState;
    type Arguments = UdpListenerArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<UdpListenerMsg>,
        args: UdpListenerArgs,
    ) -> Result<UdpListenerState, ActorProcessingErr> {
        let socket = UdpSocket::bind(&args.listen)
            .await
            .map_err(|e| format!("cannot listen for IPFIX over UDP on {}: {e}", args.listen))?;
        let local = socket.local_addr()?;
        tracing::info!(udp = %local, "collector UDP listener ready");
        let receive = tokio::spawn(receive(socket, args.env, args.supervisor));
        Ok(UdpListenerState { receive, local })
    }

    async fn handle(
        &self,
        _myself: ActorRef<UdpListenerMsg>,
        msg: UdpListenerMsg,
        state: &mut UdpListenerState,
    ) -> Result<(), ActorProcessingErr> {
        let UdpListenerMsg::LocalAddr(reply) = msg;
        let _ = reply.send(state.local);
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<UdpListenerMsg>,
        state: &mut UdpListenerState,
    ) -> Result<(), ActorProcessingErr> {
        state.receive.abort();
        Ok(())
    }
}

/// The Observation Domain of an IPFIX message or NetFlow v9 packet, if the header is there.
fn domain_of(d: &[u8]) -> Option<u32> {
    match d.get(..2)? {
        [0, 10] => d
            .get(12..16)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]])),
        [0, 9] => d
            .get(16..20)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]])),
        _ => None,
    }
}

struct Route {
    session: ActorRef<SessionMsg>,
    queue: Arc<UdpQueue>,
}

async fn receive(socket: UdpSocket, env: SessionEnv, supervisor: ActorCell) {
    let mut routes: HashMap<(SocketAddr, u32), Route> = HashMap::new();
    let mut buf = vec![0u8; 65_536];
    let mut unroutable: u64 = 0;
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "UDP receive failed");
                continue;
            }
        };
        let datagram = &buf[..n];
        let Some(domain) = domain_of(datagram) else {
            unroutable += 1;
            if unroutable.is_power_of_two() {
                tracing::warn!(%peer, dropped = unroutable, "datagram that is neither IPFIX nor NetFlow v9 dropped");
            }
            continue;
        };
        let key = (peer, domain);
        let datagram = Bytes::copy_from_slice(datagram);
        if let Some(route) = routes.get(&key) {
            match deliver(route, datagram.clone(), env.settings.udp_queue_datagrams) {
                Delivery::Queued | Delivery::Dropped => continue,
                // The session retired (idle) or failed: start a new one below.
                Delivery::Gone => {
                    routes.remove(&key);
                }
            }
        }
        if env.live.fetch_add(1, Ordering::Relaxed) >= env.settings.max_sessions {
            env.live.fetch_sub(1, Ordering::Relaxed);
            tracing::warn!(%peer, domain, "session limit reached: datagram dropped");
            continue;
        }
        let queue = Arc::new(UdpQueue::default());
        let args = SessionArgs {
            peer,
            input: SessionInput::Udp(queue.clone()),
            settings: env.settings.clone(),
            registry: env.registry.clone(),
            sink: env.sink.clone(),
            live: env.live.clone(),
        };
        let name = session_name("udp", peer, Some(domain));
        match Actor::spawn_linked(Some(name), ExporterSession, args, supervisor.clone()).await {
            Ok((session, _)) => {
                let route = Route { session, queue };
                let _ = deliver(&route, datagram, env.settings.udp_queue_datagrams);
                routes.insert(key, route);
            }
            Err(e) => {
                env.live.fetch_sub(1, Ordering::Relaxed);
                tracing::error!(%peer, domain, error = %e, "could not start a UDP session: datagram dropped");
            }
        }
    }
}

enum Delivery {
    Queued,
    Dropped,
    Gone,
}

fn deliver(route: &Route, datagram: Bytes, limit: usize) -> Delivery {
    if route.queue.queued.load(Ordering::Relaxed) >= limit {
        route.queue.dropped.fetch_add(1, Ordering::Relaxed);
        return Delivery::Dropped;
    }
    route.queue.queued.fetch_add(1, Ordering::Relaxed);
    match route.session.cast(SessionMsg::Datagram(datagram)) {
        Ok(()) => Delivery::Queued,
        Err(_) => {
            route.queue.queued.fetch_sub(1, Ordering::Relaxed);
            Delivery::Gone
        }
    }
}
