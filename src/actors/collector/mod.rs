//! The Collecting Process: CollectorSupervisor, its TCP and UDP listeners, and one
//! ExporterSession per exporter. Sessions are linked to the supervisor, so a failing session is
//! reported here and costs only itself; a failing listener is restarted with backoff.
//!
//! Messages: `RestartListener` (from its own backoff timer), `Drain` (stop listening, let each
//! session finish the message it holds, stop them), `Sessions` (the live session actors).

pub mod admission;
pub mod session;
pub mod session_logic;
pub mod tcp;
pub mod tls;
pub mod udp;

use crate::actors::mediator::Streams;
use crate::actors::template_cache::CacheHandle;
use crate::config::CollectorSettings;
use crate::store::tenants::ExporterTenants;
use crate::wire::Registry;
use admission::{Admission, Refusal, Slot};
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use ractor_cluster::RactorMessage;
use session::SessionMsg;
use session_logic::Transport;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tcp::{TcpListenerActor, TcpListenerArgs};
use tokio::task::AbortHandle;
use udp::{UdpListenerActor, UdpListenerArgs};

/// What every session of this collector shares.
#[derive(Clone)]
pub struct SessionEnv {
    pub settings: CollectorSettings,
    pub registry: Arc<Registry>,
    pub streams: Streams,
    /// Session places and template budgets.
    pub admission: Arc<Admission>,
    /// Datagrams handed to a UDP session that ended (idle, or failed) before it read them.
    pub lost_datagrams: Arc<AtomicU64>,
    /// TLS handshakes that failed (see `CollectorCounters::tls_handshake_failures`).
    pub tls_failures: Arc<AtomicU64>,
    /// Shared templates, unless the template scope is `session`.
    pub cache: Option<CacheHandle>,
    /// The tenant of exporters no tenant owns (`store.tenant`).
    pub tenant: String,
    /// Which tenant owns which exporter prefixes (kept fresh by the TenantDirectory).
    pub owners: Option<Arc<ExporterTenants>>,
}

impl SessionEnv {
    pub fn new(
        settings: CollectorSettings,
        registry: Arc<Registry>,
        streams: Streams,
    ) -> SessionEnv {
        SessionEnv {
            admission: Admission::new(&settings),
            settings,
            registry,
            streams,
            lost_datagrams: Arc::new(AtomicU64::new(0)),
            tls_failures: Arc::new(AtomicU64::new(0)),
            cache: None,
            tenant: "default".into(),
            owners: None,
        }
    }

    /// Shares templates through `cache` for `tenant` (template scope `exporter`).
    pub fn with_cache(mut self, cache: CacheHandle, tenant: String) -> SessionEnv {
        if self.settings.template_scope == crate::config::TemplateScope::Exporter {
            self.cache = Some(cache);
        }
        self.tenant = tenant;
        self
    }

    /// Looks up exporters' tenants in `owners`.
    pub fn with_owners(mut self, owners: Arc<ExporterTenants>) -> SessionEnv {
        self.owners = Some(owners);
        self
    }

    /// The tenant of a new session's exporter: the longest owned prefix that holds its address,
    /// else `store.tenant`; `None` when such exporters are refused
    /// (`collector.unknown_exporters = refuse`), counted and logged at powers of two.
    pub fn tenant_of(&self, peer: SocketAddr) -> Option<String> {
        if let Some(t) = self.owners.as_ref().and_then(|o| o.owner(peer.ip())) {
            return Some(t);
        }
        if self.settings.unknown_exporters == crate::config::UnknownExporters::Accept {
            return Some(self.tenant.clone());
        }
        let n = self
            .admission
            .refused_unknown
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        if n.is_power_of_two() {
            tracing::warn!(%peer, refused = n, "exporter owned by no tenant: refused (collector.unknown_exporters = refuse)");
        }
        None
    }

    pub fn session_args(
        &self,
        peer: SocketAddr,
        input: session::SessionInput,
        slot: Slot,
        tenant: String,
    ) -> session::SessionArgs {
        session::SessionArgs {
            peer,
            input,
            settings: self.settings.clone(),
            registry: self.registry.clone(),
            streams: self.streams.clone(),
            slot,
            cache: self.cache.clone(),
            tenant,
        }
    }

    /// Takes a session place, or counts a refusal (logged at powers of two, so a flood of
    /// refusals cannot flood the log).
    pub fn admit(&self, peer: SocketAddr, transport: Transport) -> Result<Slot, Refusal> {
        self.admission.admit(peer.ip(), transport).inspect_err(|r| {
            let counter = match transport {
                Transport::Tcp => &self.admission.refused_tcp,
                Transport::Udp => &self.admission.refused_udp,
            };
            let n = counter.load(Ordering::Relaxed);
            if n.is_power_of_two() {
                let s = &self.settings;
                let (limit, what) = match (r, transport) {
                    (Refusal::Exporter, _) => (s.max_sessions_per_exporter, "sessions of one address"),
                    (Refusal::Transport, Transport::Tcp) => (s.max_tcp_sessions, "TCP sessions"),
                    (Refusal::Transport, Transport::Udp) => (s.max_udp_sessions, "UDP sessions"),
                };
                tracing::warn!(%peer, ?transport, limit, refused = n, "session limit reached ({what}): refused");
            }
        })
    }
}

/// What the collector counts, for the API and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct CollectorCounters {
    pub live_sessions: usize,
    pub tcp_sessions: usize,
    pub udp_sessions: usize,
    /// Sessions refused at a limit (connections closed, datagram bursts dropped).
    pub refused_sessions: u64,
    pub refused_tcp_sessions: u64,
    pub refused_udp_sessions: u64,
    /// Idle UDP sessions retired early to make room for a new exporter.
    pub evicted_udp_sessions: u64,
    /// Sessions refused because no tenant owns their exporter (`unknown_exporters = refuse`).
    pub refused_unknown_exporters: u64,
    pub failed_sessions: u64,
    /// TLS connections closed before their handshake completed (a wrong or missing
    /// certificate, plain TCP on the TLS port, a handshake not done within
    /// `first_message_secs`).
    pub tls_handshake_failures: u64,
    /// Datagrams queued for a UDP session that ended before reading them (a session retiring
    /// while its exporter sends again).
    pub lost_datagrams: u64,
    /// Bytes of compiled templates all sessions hold.
    pub template_bytes: usize,
    /// Bytes of datagrams queued for UDP sessions.
    pub udp_queued_bytes: usize,
    /// Bytes of Data Sets held for a missing template, all sessions.
    pub pending_bytes: usize,
}

/// Runs a listener's loop as a task whose end, however it comes (a panic included), stops the
/// listener actor with the reason, so the CollectorSupervisor restarts it: a loop that died on
/// its own would leave a listener that looks alive and accepts nothing.
pub(crate) fn watched<F>(listener: ActorCell, what: &'static str, work: F) -> Watched
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let task = tokio::spawn(work);
    let abort = task.abort_handle();
    let (done_tx, done) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let end = task.await;
        let _ = done_tx.send(true);
        let why = match end {
            Ok(()) => format!("{what} ended"),
            // Stopped with its listener: nothing to report.
            Err(e) if e.is_cancelled() => return,
            Err(e) => format!("{what} failed: {e}"),
        };
        listener.stop(Some(why));
    });
    Watched { abort, done }
}

/// A listener's loop. Dropped (the listener killed, or panicking, when ractor skips
/// `post_stop`), it is aborted, so the socket is closed and a restart can bind it again.
pub(crate) struct Watched {
    abort: AbortHandle,
    done: tokio::sync::watch::Receiver<bool>,
}

impl Watched {
    /// Ends the loop and waits until it has: nothing it does (a datagram handed over, a session
    /// started) comes after this.
    pub(crate) async fn stop(&mut self) {
        self.abort.abort();
        let _ = self.done.wait_for(|d| *d).await;
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.abort.abort();
    }
}

/// How a drain went.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct DrainReport {
    pub sessions: usize,
    /// Sessions still busy when the time was up (stopped anyway: what they held is lost).
    pub unfinished: usize,
    /// Export streams that did not write everything they held (the mediator's drain).
    pub streams_unfinished: Vec<String>,
}

/// The CollectorSupervisor's registered name.
pub const COLLECTOR_NAME: &str = "collector";
pub const TCP_LISTENER: &str = "collector/tcp-listener";
pub const UDP_LISTENER: &str = "collector/udp-listener";
pub const TLS_LISTENER: &str = "collector/tls-listener";

/// Actor names: unique per connection (TCP) or exporter and domain (UDP).
pub fn session_name(transport: &str, peer: SocketAddr, domain: Option<u32>) -> String {
    match domain {
        Some(d) => format!("session/{transport}/{peer}/{d}"),
        None => format!("session/{transport}/{peer}"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerKind {
    Tcp,
    Udp,
    Tls,
}

#[derive(RactorMessage)]
pub enum CollectorMsg {
    RestartListener(ListenerKind),
    /// Stop listening, let every session finish what it has read (in parallel) within the
    /// time given, and report.
    Drain(Duration, RpcReplyPort<DrainReport>),
    Sessions(RpcReplyPort<Vec<ActorRef<SessionMsg>>>),
    /// Where the listeners are bound (TCP, UDP); `None` for a disabled or restarting one.
    ListenAddrs(RpcReplyPort<(Option<SocketAddr>, Option<SocketAddr>)>),
    Counters(RpcReplyPort<CollectorCounters>),
}

pub struct CollectorState {
    env: SessionEnv,
    /// Consecutive restarts per listener, for the backoff, and when the last one was.
    restarts: [(u32, Option<std::time::Instant>); 3],
    draining: bool,
    pub session_failures: u64,
}

pub struct CollectorSupervisor;

impl CollectorSupervisor {
    async fn start_listener(
        kind: ListenerKind,
        myself: &ActorRef<CollectorMsg>,
        env: &SessionEnv,
    ) -> Result<(), ActorProcessingErr> {
        let s = &env.settings;
        match kind {
            // TCP and TLS: the same listener actor, the second with an acceptor.
            ListenerKind::Tcp | ListenerKind::Tls => {
                let (listen, name) = match kind {
                    ListenerKind::Tls => (&s.tls_listen, TLS_LISTENER),
                    _ => (&s.tcp_listen, TCP_LISTENER),
                };
                if listen.is_empty() {
                    return Ok(());
                }
                let tls = match kind {
                    ListenerKind::Tls => Some(tls::acceptor(s)?),
                    _ => None,
                };
                let args = TcpListenerArgs {
                    listen: listen.clone(),
                    env: env.clone(),
                    supervisor: myself.get_cell(),
                    tls,
                };
                Actor::spawn_linked(Some(name.into()), TcpListenerActor, args, myself.get_cell())
                    .await?;
            }
            ListenerKind::Udp if !s.udp_listen.is_empty() => {
                let args = UdpListenerArgs {
                    listen: s.udp_listen.clone(),
                    env: env.clone(),
                    supervisor: myself.get_cell(),
                };
                Actor::spawn_linked(
                    Some(UDP_LISTENER.into()),
                    UdpListenerActor,
                    args,
                    myself.get_cell(),
                )
                .await?;
            }
            _ => {}
        }
        Ok(())
    }

    fn listener_kind(cell: &ActorCell) -> Option<ListenerKind> {
        match cell.get_name().as_deref() {
            Some(TCP_LISTENER) => Some(ListenerKind::Tcp),
            Some(UDP_LISTENER) => Some(ListenerKind::Udp),
            Some(TLS_LISTENER) => Some(ListenerKind::Tls),
            _ => None,
        }
    }

    fn sessions(myself: &ActorRef<CollectorMsg>) -> Vec<ActorCell> {
        myself
            .get_children()
            .into_iter()
            .filter(|c| Self::listener_kind(c).is_none())
            .collect()
    }
}

pub struct CollectorArgs {
    pub env: SessionEnv,
}

impl Actor for CollectorSupervisor {
    type Msg = CollectorMsg;
    type State = CollectorState;
    type Arguments = CollectorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<CollectorMsg>,
        args: CollectorArgs,
    ) -> Result<CollectorState, ActorProcessingErr> {
        // A listener that cannot bind at start is a configuration error: fail loudly.
        Self::start_listener(ListenerKind::Tcp, &myself, &args.env).await?;
        Self::start_listener(ListenerKind::Udp, &myself, &args.env).await?;
        Self::start_listener(ListenerKind::Tls, &myself, &args.env).await?;
        Ok(CollectorState {
            env: args.env,
            restarts: [(0, None); 3],
            draining: false,
            session_failures: 0,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<CollectorMsg>,
        msg: CollectorMsg,
        state: &mut CollectorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            CollectorMsg::RestartListener(kind) => {
                if state.draining {
                    return Ok(());
                }
                if let Err(e) = Self::start_listener(kind, &myself, &state.env).await {
                    tracing::error!(?kind, error = %e, "listener restart failed");
                    Self::schedule_restart(&myself, kind, state);
                } else {
                    tracing::info!(?kind, "listener restarted");
                }
            }
            CollectorMsg::Drain(within, reply) => {
                let deadline = tokio::time::Instant::now() + within;
                state.draining = true;
                for name in [TCP_LISTENER, UDP_LISTENER, TLS_LISTENER] {
                    if let Some(l) = myself
                        .get_children()
                        .into_iter()
                        .find(|c| c.get_name().as_deref() == Some(name))
                    {
                        let _ = l
                            .stop_and_wait(Some("shutting down".into()), Some(within / 4))
                            .await;
                    }
                }
                // A message, not `stop`: ractor handles a stop before queued messages, and those
                // are batches already read from TCP (acknowledged) or datagrams received.
                let sessions = Self::sessions(&myself);
                // TCP exporters are handed off (FIN, then read until they close) within half of
                // what is left; the other half decodes and delivers what they sent.
                let read_until = tokio::time::Instant::now()
                    + deadline.saturating_duration_since(tokio::time::Instant::now()) / 2;
                for s in &sessions {
                    let _ =
                        ActorRef::<SessionMsg>::from(s.clone()).cast(SessionMsg::Drain(read_until));
                }
                let all = futures_util::future::join_all(sessions.iter().map(|s| s.wait(None)));
                let _ = tokio::time::timeout_at(deadline, all).await;
                let unfinished: Vec<&ActorCell> = sessions
                    .iter()
                    .filter(|s| !matches!(s.get_status(), ractor::ActorStatus::Stopped))
                    .collect();
                for s in &unfinished {
                    tracing::warn!(
                        session = s.get_name().unwrap_or_default(),
                        "shutting down: session did not finish in time"
                    );
                    s.kill();
                }
                let _ = reply.send(DrainReport {
                    sessions: sessions.len(),
                    unfinished: unfinished.len(),
                    streams_unfinished: Vec::new(),
                });
            }
            CollectorMsg::Sessions(reply) => {
                let refs = Self::sessions(&myself)
                    .into_iter()
                    .map(ActorRef::from)
                    .collect();
                let _ = reply.send(refs);
            }
            CollectorMsg::ListenAddrs(reply) => {
                let find = |name: &str| {
                    myself
                        .get_children()
                        .into_iter()
                        .find(|c| c.get_name().as_deref() == Some(name))
                };
                let tcp = match find(TCP_LISTENER) {
                    Some(c) => ractor::call!(
                        ActorRef::<tcp::TcpListenerMsg>::from(c),
                        tcp::TcpListenerMsg::LocalAddr
                    )
                    .ok(),
                    None => None,
                };
                let udp = match find(UDP_LISTENER) {
                    Some(c) => ractor::call!(
                        ActorRef::<udp::UdpListenerMsg>::from(c),
                        udp::UdpListenerMsg::LocalAddr
                    )
                    .ok(),
                    None => None,
                };
                let _ = reply.send((tcp, udp));
            }
            CollectorMsg::Counters(reply) => {
                let a = &state.env.admission;
                let (tcp, udp) = a.live_sessions();
                let (refused_tcp, refused_udp) = (
                    a.refused_tcp.load(Ordering::Relaxed),
                    a.refused_udp.load(Ordering::Relaxed),
                );
                let _ = reply.send(CollectorCounters {
                    live_sessions: tcp + udp,
                    tcp_sessions: tcp,
                    udp_sessions: udp,
                    refused_sessions: refused_tcp + refused_udp,
                    refused_tcp_sessions: refused_tcp,
                    refused_udp_sessions: refused_udp,
                    evicted_udp_sessions: a.evicted_udp.load(Ordering::Relaxed),
                    refused_unknown_exporters: a.refused_unknown.load(Ordering::Relaxed),
                    failed_sessions: state.session_failures,
                    lost_datagrams: state.env.lost_datagrams.load(Ordering::Relaxed),
                    tls_handshake_failures: state.env.tls_failures.load(Ordering::Relaxed),
                    template_bytes: a.template_bytes(),
                    udp_queued_bytes: a.udp_queue_total.used(),
                    pending_bytes: a.pending_total.used(),
                });
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<CollectorMsg>,
        evt: SupervisionEvent,
        state: &mut CollectorState,
    ) -> Result<(), ActorProcessingErr> {
        match evt {
            SupervisionEvent::ActorFailed(cell, err) => match Self::listener_kind(&cell) {
                Some(kind) => {
                    tracing::error!(?kind, error = %err, "listener failed");
                    Self::schedule_restart(&myself, kind, state);
                }
                None => {
                    // A panicking session: reported, counted, and nobody else is touched.
                    state.session_failures += 1;
                    tracing::error!(session = cell.get_name().unwrap_or_default(), error = %err, "exporter session failed");
                }
            },
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                if let Some(kind) = Self::listener_kind(&cell)
                    && !state.draining
                {
                    tracing::warn!(?kind, ?reason, "listener stopped");
                    Self::schedule_restart(&myself, kind, state);
                } else if let Some(r) = reason {
                    tracing::debug!(
                        session = cell.get_name().unwrap_or_default(),
                        reason = r,
                        "session stopped"
                    );
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl CollectorSupervisor {
    /// 100 ms doubling to 30 s; back to 100 ms once a listener ran a minute without a restart.
    fn schedule_restart(
        myself: &ActorRef<CollectorMsg>,
        kind: ListenerKind,
        state: &mut CollectorState,
    ) {
        let (n, last) = &mut state.restarts[kind as usize];
        if last.is_some_and(|t| t.elapsed() >= Duration::from_secs(60)) {
            *n = 0;
        }
        let delay = Duration::from_millis(100u64 << (*n).min(9)).min(Duration::from_secs(30));
        *n += 1;
        *last = Some(std::time::Instant::now());
        if kind == ListenerKind::Udp {
            // The UDP sessions were routed by the listener's receive task, gone with it: retire
            // them (their templates are in the cache) rather than leave them unreachable.
            for s in Self::sessions(myself) {
                if s.get_name().is_some_and(|n| n.starts_with("session/udp/")) {
                    s.stop(Some("UDP listener restarting".into()));
                }
            }
        }
        myself.send_after(delay, move || CollectorMsg::RestartListener(kind));
    }
}
