//! UdpListener: receives datagrams and routes each to the ExporterSession of its (exporter
//! address, Observation Domain), starting one on first contact. A session whose queue is full
//! loses the datagram (counted); one that retired (idle) is started again on its next datagram,
//! and what it had been handed but not read when it ended is counted lost (`lost_datagrams`).
//!
//! Lifecycle: binds in `pre_start`; the receive task owns the routing table and ends with the
//! actor. The actor itself only holds the task.

use super::session::{ExporterSession, SessionInput, SessionMsg, UdpQueue};
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
        let socket = bind(&args.listen, args.env.settings.udp_receive_buffer_bytes)
            .await
            .map_err(|e| format!("cannot listen for IPFIX over UDP on {}: {e}", args.listen))?;
        let local = socket.local_addr()?;
        let granted = socket2::SockRef::from(&socket)
            .recv_buffer_size()
            .unwrap_or(0);
        tracing::info!(udp = %local, receive_buffer = granted, "collector UDP listener ready");
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

/// Binds with a receive buffer large enough for exporters' bursts.
async fn bind(listen: &str, receive_buffer: usize) -> std::io::Result<UdpSocket> {
    let addr = tokio::net::lookup_host(listen)
        .await?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address"))?;
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    // Best effort: the kernel caps the size at net.core.rmem_max.
    let _ = socket.set_recv_buffer_size(receive_buffer);
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// The Observation Domain of an IPFIX message or NetFlow v9/v5 packet, if the header is there.
fn domain_of(d: &[u8]) -> Option<u32> {
    crate::wire::header::peek_observation_domain(d)
}

struct Route {
    session: ActorRef<SessionMsg>,
    queue: Arc<UdpQueue>,
}

/// Datagrams taken off the socket per wakeup, at most: one actor message per session per
/// wakeup instead of one per datagram.
const BURST: usize = 64;
const ROUTE_SWEEP: std::time::Duration = std::time::Duration::from_secs(10);

async fn receive(socket: UdpSocket, env: SessionEnv, supervisor: ActorCell) {
    let mut routes: HashMap<(SocketAddr, u32), Route> = HashMap::new();
    let mut buf = vec![0u8; 65_536];
    let mut unroutable: u64 = 0;
    let mut burst: HashMap<(SocketAddr, u32), Vec<Bytes>> = HashMap::new();
    let mut last_sweep = std::time::Instant::now();
    loop {
        if let Err(e) = socket.readable().await {
            tracing::warn!(error = %e, "UDP socket failed");
            continue;
        }
        for _ in 0..BURST {
            let (n, peer) = match socket.try_recv_from(&mut buf) {
                Ok(x) => x,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    tracing::warn!(error = %e, "UDP receive failed");
                    break;
                }
            };
            let datagram = &buf[..n];
            let Some(domain) = domain_of(datagram) else {
                unroutable += 1;
                if unroutable.is_power_of_two() {
                    tracing::warn!(%peer, dropped = unroutable, "datagram that is neither IPFIX nor NetFlow v9/v5 dropped");
                }
                continue;
            };
            burst
                .entry((peer, domain))
                .or_default()
                .push(Bytes::copy_from_slice(datagram));
        }
        // Routes of sessions that retired and whose exporter went quiet: forget them now and
        // then (counting what they never read), so spoofed or short-lived sources do not
        // accumulate. Every ROUTE_SWEEP while datagrams arrive, however few routes there are.
        if last_sweep.elapsed() >= ROUTE_SWEEP {
            last_sweep = std::time::Instant::now();
            routes.retain(|&(peer, domain), r| {
                let alive = alive(&r.session);
                if !alive {
                    count_lost(r, &env, peer, domain);
                }
                alive
            });
        }
        for (key, datagrams) in burst.drain() {
            if let Some(route) = routes.get(&key) {
                match deliver(route, datagrams.clone(), env.settings.udp_queue_datagrams) {
                    Delivery::Queued | Delivery::Dropped => continue,
                    // The session retired (idle) or failed: start a new one below.
                    Delivery::Gone => {
                        if let Some(route) = routes.remove(&key) {
                            count_lost(&route, &env, key.0, key.1);
                        }
                    }
                }
            }
            if let Some(route) = start_session(key, &env, &supervisor).await {
                let _ = deliver(&route, datagrams, env.settings.udp_queue_datagrams);
                routes.insert(key, route);
            }
        }
    }
}

async fn start_session(
    (peer, domain): (SocketAddr, u32),
    env: &SessionEnv,
    supervisor: &ActorCell,
) -> Option<Route> {
    if !env.admit(peer) {
        return None;
    }
    let queue = Arc::new(UdpQueue::default());
    let args = env.session_args(peer, SessionInput::Udp(queue.clone()));
    let name = session_name("udp", peer, Some(domain));
    match Actor::spawn_linked(Some(name), ExporterSession, args, supervisor.clone()).await {
        Ok((session, _)) => Some(Route { session, queue }),
        Err(e) => {
            env.live.fetch_sub(1, Ordering::Relaxed);
            tracing::error!(%peer, domain, error = %e, "could not start a UDP session: datagrams dropped");
            None
        }
    }
}

fn alive(session: &ActorRef<SessionMsg>) -> bool {
    matches!(
        session.get_status(),
        ractor::ActorStatus::Running
            | ractor::ActorStatus::Starting
            | ractor::ActorStatus::Upgrading
    )
}

/// A session that ended: what it had been handed and never read is lost, and counted. Its
/// queue is final once the actor has stopped (nothing decrements it any more).
fn count_lost(route: &Route, env: &SessionEnv, peer: SocketAddr, domain: u32) {
    let n = route.queue.queued.swap(0, Ordering::Relaxed) as u64;
    if n > 0 {
        let total = env.lost_datagrams.fetch_add(n, Ordering::Relaxed) + n;
        tracing::warn!(%peer, domain, lost = n, total, "datagrams queued for an ended session lost");
    }
}

enum Delivery {
    Queued,
    Dropped,
    Gone,
}

fn deliver(route: &Route, datagrams: Vec<Bytes>, limit: usize) -> Delivery {
    let n = datagrams.len();
    if route.queue.queued.load(Ordering::Relaxed) + n > limit {
        // A session that ended with a full queue would never empty it: replace it.
        if !alive(&route.session) {
            return Delivery::Gone;
        }
        route.queue.dropped.fetch_add(n as u64, Ordering::Relaxed);
        return Delivery::Dropped;
    }
    route.queue.queued.fetch_add(n, Ordering::Relaxed);
    match route.session.cast(SessionMsg::Datagrams(datagrams)) {
        Ok(()) => Delivery::Queued,
        Err(_) => {
            route.queue.queued.fetch_sub(n, Ordering::Relaxed);
            Delivery::Gone
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::output::RecordSink;
    use crate::config::{CollectorSettings, OutputFormat, OutputSettings};
    use crate::wire::Registry;

    /// Stands in for a session: it only has to stop.
    struct Ended;

    impl Actor for Ended {
        type Msg = SessionMsg;
        type State = ();
        type Arguments = ();

        async fn pre_start(
            &self,
            _myself: ActorRef<SessionMsg>,
            _args: (),
        ) -> Result<(), ActorProcessingErr> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn datagrams_an_ended_session_never_read_are_counted_lost() {
        let (sink, _writer) = RecordSink::start(&OutputSettings {
            format: OutputFormat::Count,
            ..OutputSettings::default()
        })
        .await
        .expect("sink");
        let env = SessionEnv::new(CollectorSettings::default(), Registry::builtin(), sink);
        let (session, handle) = Actor::spawn(None, Ended, ()).await.expect("spawn");
        let route = Route {
            session: session.clone(),
            queue: Arc::new(UdpQueue::default()),
        };
        // Handed over, not yet read; then the session retires.
        assert!(matches!(
            deliver(&route, vec![Bytes::new(); 3], 100),
            Delivery::Queued
        ));
        session.stop(None);
        handle.await.expect("stopped");
        assert!(matches!(
            deliver(&route, vec![Bytes::new(); 2], 100),
            Delivery::Gone
        ));
        let peer: SocketAddr = "127.0.0.1:4739".parse().expect("addr");
        count_lost(&route, &env, peer, 1);
        assert_eq!(env.lost_datagrams.load(Ordering::Relaxed), 3);
        count_lost(&route, &env, peer, 1);
        assert_eq!(
            env.lost_datagrams.load(Ordering::Relaxed),
            3,
            "counted once"
        );
        // An ended session whose queue is full is replaced, not blamed for every later datagram.
        route.queue.queued.store(100, Ordering::Relaxed);
        assert!(matches!(
            deliver(&route, vec![Bytes::new()], 100),
            Delivery::Gone
        ));
    }
}
