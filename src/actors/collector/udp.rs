//! UdpListener: receives datagrams and routes each to the ExporterSession of its (exporter
//! address, Observation Domain), starting one on first contact. A session whose queue is full
//! loses the datagram (counted); one that retired (idle) is started again on its next datagram,
//! and what it had been handed but not read when it ended is counted lost (`lost_datagrams`).
//!
//! Lifecycle: binds in `pre_start`; the receive task owns the routing table and ends with the
//! actor. The actor itself only holds the task.

use super::admission::{Refusal, Slot};
use super::session::{ExporterSession, SessionInput, SessionMsg, UdpQueue};
use super::session_logic::Transport;
use super::{SessionEnv, session_name};
use bytes::Bytes;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorMessage;
use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

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
    receive: super::Watched,
    local: SocketAddr,
}

pub struct UdpListenerActor;

impl Actor for UdpListenerActor {
    type Msg = UdpListenerMsg;
    type State = UdpListenerState;
    type Arguments = UdpListenerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<UdpListenerMsg>,
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
        let receive = super::watched(
            myself.get_cell(),
            "UDP receive loop",
            receive(socket, args.env, args.supervisor),
        );
        Ok(UdpListenerState { receive, local })
    }

    async fn handle(
        &self,
        _myself: ActorRef<UdpListenerMsg>,
        msg: UdpListenerMsg,
        state: &mut UdpListenerState,
    ) -> Result<(), ActorProcessingErr> {
        let _busy = crate::telemetry::metrics::ActorKind::UdpListener.busy();
        let UdpListenerMsg::LocalAddr(reply) = msg;
        let _ = reply.send(state.local);
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<UdpListenerMsg>,
        state: &mut UdpListenerState,
    ) -> Result<(), ActorProcessingErr> {
        state.receive.stop().await;
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
    /// The session's place, also held here so that an eviction gives it back at once.
    slot: Slot,
    last_seen: Instant,
}

type Key = (SocketAddr, u32);

/// The receive task's sessions, ordered by when each last got a datagram (overall and per
/// source address), so the idlest is found in O(log n) when a table is full.
#[derive(Default)]
struct Routes {
    map: HashMap<Key, Route>,
    idle: BTreeSet<(Instant, Key)>,
    idle_by_ip: HashMap<IpAddr, BTreeSet<(Instant, Key)>>,
}

impl Routes {
    fn insert(&mut self, key: Key, route: Route) {
        self.idle.insert((route.last_seen, key));
        self.idle_by_ip
            .entry(key.0.ip())
            .or_default()
            .insert((route.last_seen, key));
        if let Some(old) = self.map.insert(key, route) {
            self.unorder(key, old.last_seen);
        }
    }

    fn unorder(&mut self, key: Key, at: Instant) {
        self.idle.remove(&(at, key));
        if let Some(set) = self.idle_by_ip.get_mut(&key.0.ip()) {
            set.remove(&(at, key));
            if set.is_empty() {
                self.idle_by_ip.remove(&key.0.ip());
            }
        }
    }

    fn remove(&mut self, key: &Key) -> Option<Route> {
        let route = self.map.remove(key)?;
        self.unorder(*key, route.last_seen);
        Some(route)
    }

    fn touch(&mut self, key: Key, now: Instant) {
        let Some(route) = self.map.get_mut(&key) else {
            return;
        };
        let before = std::mem::replace(&mut route.last_seen, now);
        if before != now {
            self.unorder(key, before);
            self.idle.insert((now, key));
            self.idle_by_ip
                .entry(key.0.ip())
                .or_default()
                .insert((now, key));
        }
    }

    /// The idlest session that frees a place of the kind `refusal` names.
    fn idlest(&self, ip: IpAddr, refusal: Refusal) -> Option<Key> {
        let set = match refusal {
            Refusal::Transport => Some(&self.idle),
            Refusal::Exporter => self.idle_by_ip.get(&ip),
        };
        set.and_then(|s| s.first()).map(|(_, k)| *k)
    }
}

/// Datagrams taken off the socket per wakeup, at most: one actor message per session per
/// wakeup instead of one per datagram.
const BURST: usize = 64;
const ROUTE_SWEEP: Duration = Duration::from_secs(10);

async fn receive(socket: UdpSocket, env: SessionEnv, supervisor: ActorCell) {
    let mut routes = Routes::default();
    let mut buf = vec![0u8; 65_536];
    let mut unroutable: u64 = 0;
    let mut burst: HashMap<Key, Vec<Bytes>> = HashMap::new();
    let mut last_sweep = Instant::now();
    loop {
        if let Err(e) = socket.readable().await {
            tracing::warn!(error = %e, "UDP socket failed");
            continue;
        }
        // A burst read and routed is the listener's work (it takes no actor message for it).
        let _busy = crate::telemetry::metrics::ActorKind::UdpListener.busy();
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
        let now = Instant::now();
        // Routes of sessions that retired and whose exporter went quiet: forget them now and
        // then (counting what they never read), so spoofed or short-lived sources do not
        // accumulate. Every ROUTE_SWEEP while datagrams arrive, however few routes there are.
        if now.duration_since(last_sweep) >= ROUTE_SWEEP {
            last_sweep = now;
            let ended: Vec<Key> = routes
                .map
                .iter()
                .filter(|(_, r)| !alive(&r.session))
                .map(|(k, _)| *k)
                .collect();
            for key in ended {
                if let Some(r) = routes.remove(&key) {
                    count_lost(&r, &env, key.0, key.1);
                }
            }
        }
        for (key, datagrams) in burst.drain() {
            if let Some(route) = routes.map.get(&key) {
                match deliver(route, datagrams.clone()) {
                    Delivery::Queued | Delivery::Dropped => {
                        routes.touch(key, now);
                        continue;
                    }
                    // The session retired (idle) or failed: start a new one below.
                    Delivery::Gone => {
                        if let Some(route) = routes.remove(&key) {
                            count_lost(&route, &env, key.0, key.1);
                        }
                    }
                }
            }
            if let Some(route) = start_session(key, &env, &supervisor, &mut routes, now).await {
                let _ = deliver(&route, datagrams);
                routes.insert(key, route);
            }
        }
    }
}

/// Starts the session of `key`. When its transport's table or its address's share is full, the
/// idlest session that holds such a place is retired first (its queue counted lost), so a flood
/// of forged sources cannot keep a real exporter out for the idle timeout.
async fn start_session(
    (peer, domain): Key,
    env: &SessionEnv,
    supervisor: &ActorCell,
    routes: &mut Routes,
    now: Instant,
) -> Option<Route> {
    let tenant = env.tenant_of(peer)?;
    let slot = match env.admit(peer, Transport::Udp) {
        Ok(slot) => slot,
        Err(refusal) => {
            let victim = routes.idlest(peer.ip(), refusal)?;
            let r = routes.remove(&victim)?;
            r.slot.release();
            r.session
                .stop(Some("evicted: the UDP session table was full".into()));
            count_lost(&r, env, victim.0, victim.1);
            let n = env.admission.evicted_udp.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::warn!(evicted = %victim.0, domain = victim.1, new = %peer, ?refusal, evictions = n, "UDP session table full: the idlest session retired");
            }
            env.admit(peer, Transport::Udp).ok()?
        }
    };
    let queue = Arc::new(UdpQueue::new(
        env.settings.udp_queue_bytes,
        env.admission.udp_queue_total.clone(),
    ));
    let args = env.session_args(peer, SessionInput::Udp(queue.clone()), slot.clone(), tenant);
    let name = session_name("udp", peer, Some(domain));
    match Actor::spawn_linked(Some(name), ExporterSession, args, supervisor.clone()).await {
        Ok((session, _)) => Some(Route {
            session,
            queue,
            slot,
            last_seen: now,
        }),
        Err(e) => {
            slot.release();
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
    route.queue.bytes.give_back(route.queue.bytes.used());
    if n > 0 {
        let total = env.lost_datagrams.fetch_add(n, Ordering::Relaxed) + n;
        if total.is_power_of_two() || total == n {
            tracing::warn!(%peer, domain, lost = n, total, "datagrams queued for an ended session lost");
        }
    }
}

enum Delivery {
    Queued,
    Dropped,
    Gone,
}

/// Hands datagrams to a session within its queue's byte budget (and the node's).
fn deliver(route: &Route, datagrams: Vec<Bytes>) -> Delivery {
    let n = datagrams.len();
    let bytes: usize = datagrams.iter().map(Bytes::len).sum();
    if route.queue.bytes.try_take(bytes).is_err() {
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
            route.queue.bytes.give_back(bytes);
            Delivery::Gone
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actors::mediator::Streams;
    use crate::config::CollectorSettings;
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
        let streams = Streams::default();
        let env = SessionEnv::new(CollectorSettings::default(), Registry::builtin(), streams);
        let (session, handle) = Actor::spawn(None, Ended, ()).await.expect("spawn");
        let peer: SocketAddr = "127.0.0.1:4739".parse().expect("addr");
        let total = env.admission.udp_queue_total.clone();
        let route = Route {
            session: session.clone(),
            queue: Arc::new(UdpQueue::new(100, total.clone())),
            slot: env.admit(peer, Transport::Udp).expect("place"),
            last_seen: Instant::now(),
        };
        let d = || Bytes::from(vec![0u8; 10]);
        // Handed over, not yet read; then the session retires.
        assert!(matches!(
            deliver(&route, vec![d(), d(), d()]),
            Delivery::Queued
        ));
        assert_eq!(total.used(), 30, "charged to the node's UDP queue bytes");
        session.stop(None);
        handle.await.expect("stopped");
        assert!(matches!(deliver(&route, vec![d(), d()]), Delivery::Gone));
        count_lost(&route, &env, peer, 1);
        assert_eq!(env.lost_datagrams.load(Ordering::Relaxed), 3);
        count_lost(&route, &env, peer, 1);
        assert_eq!(
            env.lost_datagrams.load(Ordering::Relaxed),
            3,
            "counted once"
        );
        assert_eq!(total.used(), 0, "the lost bytes went back to the node");
        // An ended session whose queue is full is replaced, not blamed for every later datagram.
        route.queue.bytes.try_take(100).expect("fill");
        assert!(matches!(deliver(&route, vec![d()]), Delivery::Gone));
    }
}
