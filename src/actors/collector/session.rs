//! ExporterSession: one actor per TCP connection, or per (exporter address, Observation Domain)
//! for UDP. It owns the session's templates and statistics and decodes each message in its own
//! task (the hot path: one actor message per read, never per record), then hands the records to
//! the output.
//!
//! Messages: `Messages` (complete IPFIX messages framed by the TCP reader task, with a permit
//! that bounds how far the reader may run ahead), `Datagrams` (UDP), `ReaderClosed`, `Tick`
//! (UDP idle retirement and expiry), `GetStats`.
//!
//! Lifecycle: a TCP session spawns its reader task in `pre_start` and stops when the peer
//! closes, goes idle, breaks framing or sends a malformed message (RFC 7011 section 10.3: close
//! the connection); a UDP session stops after the idle timeout. Either way only this session
//! ends: its supervisor logs the reason.

use super::admission::Slot;
use super::session_logic::{SessionCore, SessionLimits, SessionStats, Transport};
use crate::actors::mediator::Streams;
use crate::actors::template_cache::{CacheHandle, CacheMsg};
use crate::config::CollectorSettings;
use crate::mediation::Source;
use crate::store::TemplateKey;
use crate::telemetry::metrics::{self, ActorKind, Work};
use crate::wire::{ByteBudget, Framer, Registry};
use crate::wire::{DecodedMessage, Template, TemplateEvent, TemplateKind};
use bytes::{Bytes, BytesMut};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorMessage;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

#[derive(RactorMessage)]
pub enum SessionMsg {
    /// Complete messages from the TCP reader; the permit goes back when they are decoded.
    Messages(Vec<Bytes>, OwnedSemaphorePermit),
    /// UDP datagrams from one receive burst, oldest first.
    Datagrams(Vec<Bytes>),
    /// The TCP reader stopped.
    ReaderClosed(ReaderEnd),
    /// The node is shutting down: finish what was read (everything queued before this), then
    /// stop. A TCP session's reader first hands the exporter off: it closes its own sending side
    /// (FIN, or TLS close_notify), reads on until the exporter closes in turn or until the
    /// instant given, then hands over what it framed.
    Drain(tokio::time::Instant),
    Tick,
    /// `first_message_secs` after the start: a session with no valid message yet is closed, so
    /// a silent or garbage-sending peer does not keep its place for the whole idle timeout.
    FirstDeadline,
    GetStats(RpcReplyPort<SessionStats>),
    /// A template this session asked the TemplateCache for (Observation Domain, template).
    SharedTemplate(u32, Template),
    /// The cache lost this session's definition (a conflict with another session ended): tell
    /// it again.
    ShareAgain(u32, u16),
    /// The tenant the exporter's TLS certificate names (`tls_tenant_from_cert`), from the
    /// reader before any message.
    Tenant(String),
    /// Own timer: batches held while a template lookup was out are decoded now, template or
    /// not (the number tells which hold it ends).
    ReleaseHeld(u64),
}

/// A task that ends with the session, however the session ends.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Why a TCP reader stopped.
#[derive(Debug)]
pub enum ReaderEnd {
    /// The exporter closed the connection at a message boundary.
    Eof,
    /// No complete message within the idle timeout.
    Idle,
    /// Framing lost (an impossible header, a message cut short) or a read error.
    Failed(String),
    /// Told to stop reading (shutdown). `closed`: the exporter closed in turn after the
    /// node's FIN, so everything it sent was read; otherwise the drain's read time ran out and
    /// `partial` bytes of a message begun were not framed (and what the socket held after is
    /// lost with the connection).
    Drained { partial: usize, closed: bool },
}

/// How the session gets its bytes.
pub enum SessionInput {
    Tcp(TcpStream),
    /// IPFIX over TLS: the reader does the handshake first (within the idle timeout);
    /// `failures` counts the ones that fail.
    Tls {
        stream: TcpStream,
        acceptor: tokio_rustls::TlsAcceptor,
        failures: Arc<AtomicU64>,
        /// `tls_tenant_from_cert`: the certificate names the tenant.
        cert_tenants: Option<super::tls::CertTenants>,
    },
    /// UDP: datagrams arrive as messages from the listener.
    Udp(Arc<UdpQueue>),
}

/// Shared between the UDP listener and one session: what is queued (datagrams, and bytes
/// charged to the session's queue budget and the node's), and what was dropped because too
/// much was.
#[derive(Debug)]
pub struct UdpQueue {
    pub queued: AtomicUsize,
    pub bytes: ByteBudget,
    pub dropped: AtomicU64,
}

impl UdpQueue {
    pub fn new(limit: usize, total: Arc<ByteBudget>) -> UdpQueue {
        UdpQueue {
            queued: AtomicUsize::new(0),
            bytes: ByteBudget::new("UDP session queue", limit, Some(total)),
            dropped: AtomicU64::new(0),
        }
    }

    /// The session took these datagrams off its queue.
    fn taken(&self, datagrams: &[Bytes]) {
        // Saturating: an eviction may have counted these lost (and zeroed the count) already.
        let n = datagrams.len();
        let _ = self
            .queued
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |q| {
                Some(q.saturating_sub(n))
            });
        self.bytes
            .give_back(datagrams.iter().map(Bytes::len).sum::<usize>());
    }
}

impl metrics::Held for UdpQueue {
    fn held(&self) -> usize {
        self.bytes.used()
    }
}

impl Drop for UdpQueue {
    /// Whatever was never read goes back to the node's total when the queue goes.
    fn drop(&mut self) {
        self.bytes.give_back(self.bytes.used());
    }
}

pub struct SessionArgs {
    pub peer: SocketAddr,
    pub input: SessionInput,
    pub settings: CollectorSettings,
    pub registry: Arc<Registry>,
    pub streams: Streams,
    /// This session's place; given back when the session stops.
    pub slot: Slot,
    /// Shared templates (template scope `exporter`); `None` for strict session scope.
    pub cache: Option<CacheHandle>,
    pub tenant: String,
}

pub struct SessionState {
    peer: SocketAddr,
    core: SessionCore,
    streams: Streams,
    /// Who this session's records come from, as the streams see it.
    source: Arc<Source>,
    reader: Option<AbortOnDrop>,
    ticker: Option<AbortOnDrop>,
    udp_queue: Option<Arc<UdpQueue>>,
    idle: Duration,
    last_message: Instant,
    /// Gives the session's place back when the state is dropped, also after a panic (when
    /// ractor does not run `post_stop`).
    _slot: Slot,
    cache: Option<CacheHandle>,
    tenant: String,
    transport: Transport,
    /// `tcp`, `udp` or `tls`, as the session listing says.
    transport_name: &'static str,
    /// RFC 3339 UTC.
    started: String,
    /// What this session last told the cache of each template (a fingerprint, and when):
    /// unchanged re-sends within `share_refresh` stay here instead of becoming messages.
    shared: HashMap<(u32, u16), (u64, Instant)>,
    share_refresh: Duration,
    max_templates: usize,
    /// What this session may ask of the TemplateCache: the cache is the node's, and one
    /// exporter's churn must not take it from the others.
    budget: CacheBudget,
    /// Templates asked of the cache, and when: asked again only after a while.
    asked: HashMap<(u32, u16), Instant>,
    /// This session, as the reply-to of its lookups.
    me: ActorRef<SessionMsg>,
    /// The exporter closed; the session waits for outstanding template lookups.
    closing: bool,
    /// Tells the TCP reader to hand the exporter off, reading until the instant given (drain).
    stop_reading: Option<tokio::sync::watch::Sender<Option<tokio::time::Instant>>>,
    /// Why the session ends, for its last log line.
    end_reason: Option<String>,
    /// Dropped Data Sets were logged once already.
    drops_noted: bool,
    /// Messages the TCP reader took off the socket and handed over: at the end, equal to the
    /// messages decoded (plus errors) unless something read was lost.
    read_messages: Arc<AtomicU64>,
    /// TCP: batches not decoded yet because a template lookup is out and the Data Sets parked
    /// for it fill half of `pending_bytes`. Their permits are held, so the reader stops at
    /// `tcp_inflight_batches` and TCP slows the exporter: a reconnecting exporter's catch-up
    /// burst waits for its template instead of overflowing the parking space.
    held: std::collections::VecDeque<(Vec<Bytes>, OwnedSemaphorePermit)>,
    hold_at: usize,
    holds: u64,
    /// This session in the node's telemetry: its exporter's series (counted live; joined at
    /// the first valid message, so that connections that never send one, a port scan, take no
    /// label value), what it last added there, and its tenant's busy time (decoding).
    telemetry: Option<metrics::LiveSession>,
    published: metrics::SessionCounts,
    busy: Arc<metrics::Busy>,
}

pub struct ExporterSession;

impl Actor for ExporterSession {
    type Msg = SessionMsg;
    type State = SessionState;
    type Arguments = SessionArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SessionMsg>,
        args: SessionArgs,
    ) -> Result<SessionState, ActorProcessingErr> {
        let s = &args.settings;
        let transport_name = match args.input {
            SessionInput::Tcp(_) => "tcp",
            SessionInput::Tls { .. } => "tls",
            SessionInput::Udp(_) => "udp",
        };
        let transport = match args.input {
            SessionInput::Tcp(_) | SessionInput::Tls { .. } => Transport::Tcp,
            SessionInput::Udp(_) => Transport::Udp,
        };
        let limits = SessionLimits {
            max_templates: s.max_templates_per_session,
            max_template_fields: s.max_template_fields,
            pending_bytes: s.pending_bytes,
            pending_age: Duration::from_secs(s.pending_secs),
            template_lifetime: (transport == Transport::Udp)
                .then(|| Duration::from_secs(s.udp_template_lifetime_secs)),
        };
        let busy = metrics::busy(&args.tenant, Work::Session);
        let mut state = SessionState {
            peer: args.peer,
            core: SessionCore::new(args.registry, transport, limits)
                .with_budget(args.slot.template_budget())
                .with_pending_budget(args.slot.pending_budget()),
            source: Arc::new(Source {
                exporter: args.peer.to_string(),
                addr: args.peer.ip(),
                tenant: args.tenant.clone(),
            }),
            streams: args.streams,
            reader: None,
            ticker: None,
            udp_queue: None,
            idle: s.idle_timeout(),
            last_message: Instant::now(),
            _slot: args.slot,
            cache: args.cache,
            tenant: args.tenant,
            transport,
            transport_name,
            started: rfc3339_now(),
            shared: HashMap::new(),
            // Often enough to keep a UDP template alive in the cache (its lifetime) and the
            // store's TTL fresh; rare enough to cost nothing.
            share_refresh: Duration::from_secs(60)
                .min(Duration::from_secs(s.udp_template_lifetime_secs) / 4)
                .max(Duration::from_secs(1)),
            max_templates: s.max_templates_per_session,
            budget: CacheBudget::new(),
            asked: HashMap::new(),
            me: myself.clone(),
            closing: false,
            stop_reading: None,
            end_reason: None,
            drops_noted: false,
            read_messages: Arc::new(AtomicU64::new(0)),
            held: std::collections::VecDeque::new(),
            hold_at: s.pending_bytes / 2,
            holds: 0,
            telemetry: None,
            published: Default::default(),
            busy,
        };
        match args.input {
            SessionInput::Tcp(stream) => {
                let permits = Arc::new(Semaphore::new(s.tcp_inflight_batches));
                let (stop_tx, stop_rx) = tokio::sync::watch::channel(None);
                state.stop_reading = Some(stop_tx);
                state.reader = Some(AbortOnDrop(tokio::spawn(read_tcp(
                    stream,
                    myself.clone(),
                    permits,
                    s.max_message_size,
                    s.idle_timeout(),
                    stop_rx,
                    state.read_messages.clone(),
                ))));
            }
            SessionInput::Tls {
                stream,
                acceptor,
                failures,
                cert_tenants,
            } => {
                let permits = Arc::new(Semaphore::new(s.tcp_inflight_batches));
                let (stop_tx, stop_rx) = tokio::sync::watch::channel(None);
                state.stop_reading = Some(stop_tx);
                let (me, idle, max) = (myself.clone(), s.idle_timeout(), s.max_message_size);
                let (read, peer) = (state.read_messages.clone(), state.peer);
                // A handshake is a first message of sorts: it gets the first message's time (less
                // a margin, so the reader, not the session's deadline, ends it and counts it).
                let within = Duration::from_secs(s.first_message_secs)
                    .min(idle)
                    .saturating_sub(Duration::from_millis(250))
                    .max(Duration::from_millis(500));
                state.reader = Some(AbortOnDrop(tokio::spawn(async move {
                    let shaken = tokio::time::timeout(within, acceptor.accept(stream)).await;
                    let why = match shaken {
                        Ok(Ok(tls)) => {
                            if let Some(ct) = cert_tenants {
                                match ct.of(tls.get_ref().1.peer_certificates()) {
                                    Ok(tenant) => {
                                        let _ = me.cast(SessionMsg::Tenant(tenant));
                                    }
                                    Err(why) => {
                                        tracing::warn!(%peer, why, "TLS exporter refused: no tenant");
                                        let _ =
                                            me.cast(SessionMsg::ReaderClosed(ReaderEnd::Failed(
                                                format!("TLS exporter refused: {why}"),
                                            )));
                                        return;
                                    }
                                }
                            }
                            return read_tcp(tls, me, permits, max, idle, stop_rx, read).await;
                        }
                        Ok(Err(e)) => e.to_string(),
                        Err(_) => format!("not done within {within:?}"),
                    };
                    failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%peer, why, "TLS handshake failed: connection closed");
                    let _ = me.cast(SessionMsg::ReaderClosed(ReaderEnd::Failed(format!(
                        "TLS handshake: {why}"
                    ))));
                })));
            }
            SessionInput::Udp(queue) => {
                state.udp_queue = Some(queue);
                let me = myself.clone();
                let every = (s.idle_timeout() / 4)
                    .clamp(Duration::from_millis(100), Duration::from_secs(5));
                state.ticker = Some(AbortOnDrop(tokio::spawn(async move {
                    let mut t = tokio::time::interval(every);
                    loop {
                        t.tick().await;
                        if me.cast(SessionMsg::Tick).is_err() {
                            break;
                        }
                    }
                })));
            }
        }
        myself.send_after(Duration::from_secs(s.first_message_secs), || {
            SessionMsg::FirstDeadline
        });
        tracing::debug!(peer = %state.peer, ?transport, "exporter session started");
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<SessionMsg>,
        msg: SessionMsg,
        state: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        // The time spent running the handler (decoding, handing records on), not the time it
        // waited for a stream's room: the tenant's busy time.
        let (_, busy) = metrics::Polled::new(state.handle(&myself, msg)).await;
        state.busy.add(busy);
        state.publish();
        ActorKind::ExporterSession.handled_in(busy);
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<SessionMsg>,
        state: &mut SessionState,
    ) -> Result<(), ActorProcessingErr> {
        state.publish();
        state.log_end();
        Ok(())
    }
}

impl SessionState {
    async fn handle(&mut self, myself: &ActorRef<SessionMsg>, msg: SessionMsg) {
        let state = self;
        match msg {
            SessionMsg::Messages(msgs, permit) => {
                if !state.held.is_empty() || state.should_hold() {
                    if state.held.is_empty() {
                        state.holds += 1;
                        let n = state.holds;
                        myself.send_after(HOLD_MAX, move || SessionMsg::ReleaseHeld(n));
                    }
                    state.held.push_back((msgs, permit));
                    return;
                }
                state.decode_batch(myself, msgs, permit).await;
            }
            SessionMsg::ReleaseHeld(n) => {
                if n == state.holds {
                    state.release_held(myself, true).await;
                }
            }
            SessionMsg::Datagrams(ds) => {
                if let Some(q) = &state.udp_queue {
                    q.taken(&ds);
                }
                for d in ds {
                    // A bad datagram is dropped and counted; the session goes on.
                    let _ = state.decode(d).await;
                }
            }
            SessionMsg::ReaderClosed(end) => {
                // Everything read is decoded before the end is handled.
                state.release_held(myself, true).await;
                match end {
                    // Data Sets waiting for a template the cache is fetching: give it the store's
                    // time before ending, so what can be decoded is.
                    ReaderEnd::Eof
                        if state.core.pending_sets() > 0
                            && !state.asked.is_empty()
                            && !state.closing =>
                    {
                        state.closing = true;
                        myself
                            .send_after(LOOKUP_GRACE, || SessionMsg::ReaderClosed(ReaderEnd::Eof));
                    }
                    ReaderEnd::Eof => state.end(myself, "the exporter closed".into()),
                    ReaderEnd::Idle => state.end(myself, "idle timeout".into()),
                    ReaderEnd::Drained { partial, closed } => {
                        if closed {
                            tracing::info!(peer = %state.peer, "shutting down: the exporter closed in turn; everything it sent was read");
                        } else {
                            tracing::warn!(peer = %state.peer, partial_bytes = partial, "shutting down: the exporter did not close within the drain's read time; what it sent after is lost");
                        }
                        state.end(myself, "node shutting down".into());
                    }
                    ReaderEnd::Failed(reason) => {
                        state.core.stats.errors += 1;
                        state.core.stats.last_error = Some(reason.clone());
                        tracing::warn!(peer = %state.peer, error = %reason, "malformed stream: connection closed");
                        state.end(myself, reason);
                    }
                }
            }
            SessionMsg::Tick => {
                let now = Instant::now();
                state.core.expire(now);
                state.note_drops();
                if now.duration_since(state.last_message) >= state.idle {
                    state.end(myself, "idle timeout".into());
                }
            }
            SessionMsg::Drain(read_until) => match &state.stop_reading {
                // The reader's last message, after everything it framed, ends the session.
                Some(tx) => {
                    let _ = tx.send(Some(read_until));
                }
                // UDP: every datagram handed over before this has been decoded.
                None => state.end(myself, "node shutting down".into()),
            },
            SessionMsg::FirstDeadline => {
                if state.core.stats.messages == 0 {
                    state.end(myself, "no valid message in time".into());
                }
            }
            SessionMsg::SharedTemplate(domain, template) => {
                self_learn(state, domain, template).await;
                state.release_held(myself, false).await;
                if state.closing && state.core.pending_sets() == 0 {
                    state.end(myself, "the exporter closed".into());
                }
            }
            SessionMsg::ShareAgain(domain, id) => {
                state.shared.remove(&(domain, id));
                if let Some(plan) = state.core.template(domain, id) {
                    let t = plan.template.clone();
                    if let Some(cache) = &state.cache {
                        state
                            .shared
                            .insert((domain, id), (fingerprint(&t), Instant::now()));
                        cache.send(CacheMsg::Learned(
                            state.key(domain, id),
                            t,
                            state.me.clone(),
                        ));
                    }
                }
            }
            SessionMsg::Tenant(tenant) => {
                tracing::debug!(peer = %state.peer, %tenant, "tenant named by the exporter's certificate");
                state.source = Arc::new(Source {
                    exporter: state.source.exporter.clone(),
                    addr: state.source.addr,
                    tenant: tenant.clone(),
                });
                // What came before was counted for the address's tenant; what comes after is
                // the certificate's (it comes before the first message: nothing was counted).
                state.publish();
                state.telemetry = None;
                state.busy = metrics::busy(&tenant, Work::Session);
                state.tenant = tenant;
            }
            SessionMsg::GetStats(reply) => {
                let mut stats = state.core.stats.clone();
                stats.tenant = state.tenant.clone();
                stats.exporter = state.peer.to_string();
                stats.transport = state.transport_name.to_string();
                stats.domains = state.core.domains();
                stats.started = state.started.clone();
                if let Some(q) = &state.udp_queue {
                    stats.dropped_datagrams = q.dropped.load(Ordering::Relaxed);
                }
                let _ = reply.send(stats);
            }
        }
    }

    /// The session's last log line.
    fn log_end(&mut self) {
        let state = self;
        // Stop reading now rather than when the state is dropped.
        state.reader.take();
        state.ticker.take();
        let s = &state.core.stats;
        let dropped = state
            .udp_queue
            .as_ref()
            .map_or(0, |q| q.dropped.load(Ordering::Relaxed));
        let reason = state.end_reason.as_deref().unwrap_or("stopped");
        if state.transport == Transport::Udp && s.data_records == 0 {
            // Forged or stray sources end by the thousand: a line now and then says how many.
            let n = UDP_QUIET_ENDS.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::info!(peer = %state.peer, reason, ended_without_records = n, "UDP sessions ended without a data record (this one among them)");
            }
            return;
        }
        let read = match state.udp_queue {
            Some(_) => s.messages + s.errors,
            None => state.read_messages.load(Ordering::Relaxed),
        };
        tracing::info!(
            peer = %state.peer, reason, read_messages = read, messages = s.messages, records = s.data_records,
            options_records = s.options_records, errors = s.errors, lost = s.lost,
            dropped_datagrams = dropped, dropped_sets_no_template = s.dropped_sets_no_template,
            dropped_sets_buffer_full = s.dropped_sets_buffer_full,
            templates_refused = s.templates_refused, "exporter session ended"
        );
    }

    /// Adds what the session counted since the last time to its exporter's series.
    fn publish(&mut self) {
        let st = &self.core.stats;
        let dropped_datagrams = self
            .udp_queue
            .as_ref()
            .map_or(0, |q| q.dropped.load(Ordering::Relaxed));
        let now: metrics::SessionCounts = [
            st.messages,
            st.bytes,
            st.data_records,
            st.options_records,
            st.errors,
            st.lost,
            st.dropped_sets_no_template,
            st.dropped_sets_buffer_full,
            dropped_datagrams,
            st.templates + st.options_templates,
        ];
        // No valid message yet: nothing to show (a scan or garbage takes no label value; its
        // errors are in the session's last log line).
        if self.telemetry.is_none() && st.messages == 0 {
            return;
        }
        let telemetry = self.telemetry.get_or_insert_with(|| {
            let t = metrics::exporter_session(&self.tenant, self.peer.ip(), self.transport_name);
            if let Some(q) = &self.udp_queue {
                let q: Arc<dyn metrics::Held> = q.clone();
                t.watch(Arc::downgrade(&q));
            }
            t
        });
        if now != self.published {
            telemetry.series().publish(&mut self.published, &now);
        }
        telemetry.set_held(self.core.pending_bytes());
    }
}

impl SessionState {
    /// A lookup is out and the Data Sets parked for it fill half their space.
    fn should_hold(&self) -> bool {
        !self.asked.is_empty() && self.core.pending_bytes() >= self.hold_at
    }

    /// Decodes one batch of the TCP reader; a malformed message ends the session.
    async fn decode_batch(
        &mut self,
        myself: &ActorRef<SessionMsg>,
        msgs: Vec<Bytes>,
        permit: OwnedSemaphorePermit,
    ) {
        for m in msgs {
            if let Err(reason) = self.decode(m).await {
                // RFC 7011 section 10.3: a malformed message ends the TCP connection.
                drop(permit);
                self.held.clear();
                self.end(myself, reason);
                return;
            }
        }
        drop(permit);
    }

    /// Decodes held batches: all of them when `force`, else until a lookup makes the session
    /// hold again.
    async fn release_held(&mut self, myself: &ActorRef<SessionMsg>, force: bool) {
        while let Some((msgs, permit)) = self.held.pop_front() {
            if !force && self.should_hold() {
                self.held.push_front((msgs, permit));
                return;
            }
            self.decode_batch(myself, msgs, permit).await;
        }
    }

    /// Stops the session, remembering why for its last log line.
    fn end(&mut self, myself: &ActorRef<SessionMsg>, reason: String) {
        myself.stop(Some(reason.clone()));
        self.end_reason.get_or_insert(reason);
    }

    /// Decodes one message and sends its records on. Err carries the line to log and the
    /// reason to stop with (TCP).
    async fn decode(&mut self, msg: Bytes) -> Result<(), String> {
        self.last_message = Instant::now();
        let domain = crate::wire::header::peek_observation_domain(&msg).unwrap_or(0);
        let redefinitions = self.core.stats.template_redefinitions;
        let decoded = match self.core.on_message(msg, self.last_message) {
            Ok(d) => d,
            Err(e) => {
                if self.transport == Transport::Tcp {
                    tracing::warn!(peer = %self.peer, domain, error = %e, "malformed message");
                } else {
                    // One line per datagram would let a flood of forged garbage flood the log:
                    // the first of each session, then at powers of two across the node.
                    let n = UDP_MALFORMED.fetch_add(1, Ordering::Relaxed) + 1;
                    if self.core.stats.errors == 1 && n < 64 || n.is_power_of_two() {
                        tracing::warn!(peer = %self.peer, domain, error = %e, malformed_datagrams = n, "malformed datagram dropped");
                    }
                }
                return Err(format!("malformed message: {e}"));
            }
        };
        if redefinitions == 0 && self.core.stats.template_redefinitions > 0 {
            tracing::warn!(peer = %self.peer, domain, "template redefined without a withdrawal (RFC 7011 8.1: an exporter malfunction): applied, counted in template_redefinitions");
        }
        self.note_drops();
        self.share(&decoded);
        self.emit(decoded).await
    }

    /// Says once per session that Data Sets are being dropped for want of a template (the count
    /// goes on in the statistics and the session's last line).
    fn note_drops(&mut self) {
        let s = &self.core.stats;
        if !self.drops_noted && s.dropped_sets_no_template + s.dropped_sets_buffer_full > 0 {
            self.drops_noted = true;
            tracing::warn!(
                peer = %self.peer,
                no_template = s.dropped_sets_no_template,
                buffer_full = s.dropped_sets_buffer_full,
                "data sets dropped undecoded: their template never came (or too many waited)"
            );
        }
    }

    /// The source port in this session's keys: UDP's transport session has one, TCP's shared
    /// templates outlive the connection's.
    fn shared_port(&self) -> u16 {
        match self.transport {
            Transport::Udp => self.peer.port(),
            Transport::Tcp => 0,
        }
    }

    /// This session's shared-template key for `template_id` of `domain`.
    fn key(&self, domain: u32, template_id: u16) -> TemplateKey {
        TemplateKey {
            tenant: self.tenant.clone(),
            transport: self.transport,
            exporter: self.peer.ip(),
            port: self.shared_port(),
            domain,
            template_id,
        }
    }

    /// Tells the TemplateCache what this message defined or withdrew, and asks it for templates
    /// this session lacks (the answer arrives as `SharedTemplate`).
    fn share(&mut self, decoded: &[DecodedMessage]) {
        // Most messages carry data only: nothing to tell, nothing to ask (and no clock to read).
        if decoded
            .iter()
            .all(|d| d.events.is_empty() && d.missing.is_empty())
        {
            return;
        }
        let Some(cache) = &self.cache else { return };
        let now = Instant::now();
        let mut withdrawn_all: Vec<(u32, TemplateKind)> = Vec::new();
        for d in decoded {
            let domain = d.header.observation_domain;
            for ev in &d.events {
                match ev {
                    TemplateEvent::Define(t) => {
                        // The exporter's own definition wins over any lookup still under way.
                        self.asked.remove(&(domain, t.id));
                        let fp = fingerprint(t);
                        if self.shared.get(&(domain, t.id)).is_some_and(|(f, at)| {
                            *f == fp && now.duration_since(*at) < self.share_refresh
                        }) {
                            continue;
                        }
                        if self.shared.len() >= 2 * self.max_templates {
                            self.shared.clear();
                        }
                        self.shared.insert((domain, t.id), (fp, now));
                        if !self.budget.allow(now, &mut self.core.stats) {
                            continue;
                        }
                        cache.send(CacheMsg::Learned(
                            self.key(domain, t.id),
                            t.clone(),
                            self.me.clone(),
                        ));
                    }
                    // RFC 7011 section 8.4: UDP withdrawals are not applied, so not shared either
                    // (a spoofed datagram must not withdraw an exporter's templates cluster-wide).
                    _ if self.udp_queue.is_some() => {}
                    // Only what this session shared or took from the cache: withdrawals of ids
                    // it never held cost 4 bytes each on the wire and a store write each here.
                    TemplateEvent::Withdraw { kind, id } => {
                        if self.shared.remove(&(domain, *id)).is_some()
                            && self.budget.allow(now, &mut self.core.stats)
                        {
                            cache.send(CacheMsg::Withdrawn(self.key(domain, *id), *kind));
                        }
                    }
                    // The cache (and the store) know which of the exporter's templates are of that
                    // kind, including those this session never saw. Once per domain and kind
                    // per message.
                    TemplateEvent::WithdrawAll { kind } => {
                        if withdrawn_all.contains(&(domain, *kind)) {
                            continue;
                        }
                        withdrawn_all.push((domain, *kind));
                        self.shared.retain(|(d, _), _| *d != domain);
                        if self.budget.allow(now, &mut self.core.stats) {
                            cache.send(CacheMsg::WithdrawnAll(self.key(domain, 0), *kind));
                        }
                    }
                }
            }
            // Ask for missing templates, a bounded number of them: a peer sending data sets for
            // thousands of made-up template ids must not flood the cache.
            let mut asked_now = 0;
            for m in &d.missing {
                if asked_now >= MAX_LOOKUPS_PER_MESSAGE {
                    break;
                }
                let k = (domain, m.template_id);
                if self
                    .asked
                    .get(&k)
                    .is_some_and(|at| now.duration_since(*at) < ASK_AGAIN)
                {
                    continue;
                }
                if !self.asked.contains_key(&k) && self.asked.len() >= MAX_OPEN_LOOKUPS {
                    self.asked
                        .retain(|_, at| now.duration_since(*at) < ASK_AGAIN);
                    if self.asked.len() >= MAX_OPEN_LOOKUPS {
                        break;
                    }
                }
                if !self.budget.allow(now, &mut self.core.stats) {
                    break;
                }
                self.asked.insert(k, now);
                asked_now += 1;
                cache.send(CacheMsg::Lookup(
                    self.key(domain, m.template_id),
                    self.me.clone(),
                ));
            }
        }
    }

    /// Hands the decoded messages to the export streams that take them (waiting on a full
    /// stream whose policy is `block`).
    async fn emit(&mut self, decoded: Vec<DecodedMessage>) -> Result<(), String> {
        self.streams.deliver(&self.source, decoded).await;
        Ok(())
    }
}

/// A token bucket for one session's messages to the TemplateCache: bursts of `BURST` (an
/// exporter's templates at connect), then `PER_SECOND`. Past it, dropped and counted: a lookup
/// is asked again later, a definition is re-sent by the exporter.
struct CacheBudget {
    tokens: f64,
    at: Instant,
}

impl CacheBudget {
    const BURST: f64 = 512.0;
    const PER_SECOND: f64 = 64.0;

    fn new() -> CacheBudget {
        CacheBudget {
            tokens: Self::BURST,
            at: Instant::now(),
        }
    }

    fn allow(&mut self, now: Instant, stats: &mut SessionStats) -> bool {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + dt * Self::PER_SECOND).min(Self::BURST);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return true;
        }
        stats.cache_messages_dropped += 1;
        false
    }
}

/// Node-wide counts behind the rate-limited UDP log lines.
static UDP_MALFORMED: AtomicU64 = AtomicU64::new(0);
static UDP_QUIET_ENDS: AtomicU64 = AtomicU64::new(0);

/// A template's fingerprint: equal templates, equal fingerprints (a collision only delays a
/// change by one refresh period).
fn fingerprint(t: &Template) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    t.hash(&mut h);
    h.finish()
}

/// A lookup's answer: the template goes into the session's decoder and the Data Sets that were
/// waiting for it are decoded.
async fn self_learn(state: &mut SessionState, domain: u32, template: Template) {
    // An answer nobody is waiting for any more (the exporter defined the template meanwhile, or
    // asked long ago) must not replace what the session holds.
    if state.asked.remove(&(domain, template.id)).is_none() {
        return;
    }
    let fp = fingerprint(&template);
    let id = template.id;
    match state.core.learn_shared(domain, template, Instant::now()) {
        Ok(released) => {
            state.shared.insert((domain, id), (fp, Instant::now()));
            let _ = state.emit(released).await;
        }
        Err(e) => tracing::warn!(peer = %state.peer, domain, error = %e, "shared template refused"),
    }
}

/// How long a closed TCP session waits for template lookups before it ends.
const LOOKUP_GRACE: Duration = Duration::from_secs(2);

/// How long a TCP session holds batches back for a template lookup (the store's time, as for
/// LOOKUP_GRACE); then they are decoded, and what still has no template is parked or dropped.
const HOLD_MAX: Duration = Duration::from_secs(2);

/// Lookups one message may start, and lookups one session may have open.
const MAX_LOOKUPS_PER_MESSAGE: usize = 16;
const MAX_OPEN_LOOKUPS: usize = 256;

/// How long a session waits before asking the cache again for a template it still lacks.
const ASK_AGAIN: Duration = Duration::from_secs(5);

/// The TCP reader: takes bytes off the socket, frames whole messages, and hands them to the
/// session in batches, at most `permits` batches ahead. Memory per connection: one read buffer
/// and at most one partial message. Closes after `idle` without a complete message, so a peer
/// that trickles bytes is closed as an idle one.
///
/// A drain (`stop` becomes `Some(until)`) hands the exporter off instead of dropping the
/// connection: closing a socket with unread bytes resets it, and the bytes the kernel had
/// acknowledged would be lost without the exporter knowing. So the reader closes its sending
/// side (the exporter sees the end of the stream, stops, and closes in turn, as
/// `ipfixsvc send --reconnect` does before it goes to another collector) and reads on until the
/// exporter's FIN or `until`.
async fn read_tcp<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    session: ActorRef<SessionMsg>,
    permits: Arc<Semaphore>,
    max_message: usize,
    idle: Duration,
    mut stop: tokio::sync::watch::Receiver<Option<tokio::time::Instant>>,
    read_messages: Arc<AtomicU64>,
) {
    let mut framer = Framer::new(max_message);
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut deadline = tokio::time::Instant::now() + idle;
    let mut draining = false;
    let end = loop {
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(16 * 1024);
        }
        let read = if draining {
            // tokio's timeout polls the read first: an exporter that floods would never time
            // out.
            if tokio::time::Instant::now() >= deadline {
                break cut_short(&buf);
            }
            tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await
        } else {
            tokio::select! {
                biased;
                _ = stop.changed() => {
                    let until = (*stop.borrow()).unwrap_or_else(tokio::time::Instant::now);
                    draining = true;
                    // Our FIN (a TLS close_notify first): bounded, though the collector never
                    // sends, so there is nothing queued for it to wait behind.
                    let _ = tokio::time::timeout_at(until, stream.shutdown()).await;
                    deadline = deadline.min(until);
                    continue;
                }
                r = tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)) => r,
            }
        };
        match read {
            Err(_) if draining => break cut_short(&buf),
            Err(_) => break ReaderEnd::Idle,
            Ok(Err(e)) if draining => {
                tracing::debug!(error = %e, "read error after the drain's FIN");
                break cut_short(&buf);
            }
            Ok(Err(e)) => break ReaderEnd::Failed(format!("read error: {e}")),
            Ok(Ok(0)) => {
                break match framer.finish(&buf) {
                    Ok(()) if draining => ReaderEnd::Drained {
                        partial: 0,
                        closed: true,
                    },
                    Ok(()) => ReaderEnd::Eof,
                    Err(e) => ReaderEnd::Failed(e.to_string()),
                };
            }
            Ok(Ok(_)) => {}
        }
        let mut msgs = Vec::new();
        let framing = loop {
            match framer.next_message(&mut buf) {
                Ok(Some(m)) => msgs.push(m),
                Ok(None) => break None,
                Err(e) => break Some(e.to_string()),
            }
        };
        if !msgs.is_empty() {
            if !draining {
                deadline = tokio::time::Instant::now() + idle;
            }
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break ReaderEnd::Eof;
            };
            let n = msgs.len() as u64;
            if session.cast(SessionMsg::Messages(msgs, permit)).is_err() {
                return;
            }
            read_messages.fetch_add(n, Ordering::Relaxed);
        }
        if let Some(e) = framing {
            break ReaderEnd::Failed(e);
        }
    };
    let _ = session.cast(SessionMsg::ReaderClosed(end));
}

/// A drain whose read time ran out (or whose connection broke) before the exporter closed:
/// `buf` holds the unframed start of a message, lost.
fn cut_short(buf: &BytesMut) -> ReaderEnd {
    ReaderEnd::Drained {
        partial: buf.len(),
        closed: false,
    }
}

/// Now, as RFC 3339 UTC with milliseconds (chrono here has no clock of its own).
fn rfc3339_now() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    chrono::DateTime::from_timestamp(d.as_secs() as i64, d.subsec_nanos())
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}
