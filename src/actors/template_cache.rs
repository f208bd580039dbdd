//! TemplateCache: this node's template map, shared by its sessions, written through to the store
//! (Redis when configured) and read through when a session meets a Data Set whose template it
//! does not hold. Sessions never wait on it: they tell it what changed, and ask for a template
//! with their own address as the reply-to; the answer comes as a session message while the Data
//! Sets wait in the session's bounded pending buffer.
//!
//! Messages: `Learned`, `Withdrawn`, `WithdrawnAll`, `Lookup` (from sessions, through a
//! `CacheHandle` that bounds how many may wait and finds the cache by its registered name, so a
//! restarted cache is found again), `Invalidate` (from other nodes, over Redis pub/sub), `Probe`
//! (own timer: health, re-sync, sweeps), `Status`.
//!
//! Keys carry the transport: what a UDP datagram (whose source is trivially forged) defines is
//! never used by a TCP session. Two live sessions of this node that define one key differently
//! (exporters behind one NAT address, or a forged datagram) are a conflict: logged, counted, the
//! key is withdrawn from the store and not shared until one of the two sessions has ended. Each
//! session keeps decoding with its own definition meanwhile.
//!
//! Bounds: the local map in bytes (`store.cache_bytes`), recent misses (answered without a store
//! round trip for `MISS_TTL`), the changes remembered while the store is away, and the messages
//! waiting for the cache (`MAX_WAITING`; beyond, sessions drop and count).
//!
//! Redis down: one log line, `healthy` goes false, the store is left alone (no waits on the hot
//! path) and what is learned or withdrawn meanwhile is remembered; when a probe succeeds the
//! cache writes it all and says so. A probe every 2 s also reads Redis's `run_id`: a new
//! instance (a restart without persistence, a failover) gets every template this node's
//! sessions defined written again.

use super::collector::session::SessionMsg;
use crate::store::templates::stored_cost;
use crate::store::unix_ms;
use crate::store::{Invalidation, StoredTemplate, TemplateKey, TemplateStore, Transport};
use crate::wire::{Template, TemplateKind};
use futures_util::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorMessage;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

pub const TEMPLATE_CACHE: &str = "template-cache";

/// Messages from sessions that may wait for the cache at once; past this they are dropped and
/// counted (a lookup is asked again later, a definition is re-sent by its exporter).
pub const MAX_WAITING: usize = 20_000;

/// How long a miss is remembered: sessions asking for the same missing template meanwhile are
/// answered (with nothing) without a store round trip.
const MISS_TTL: Duration = Duration::from_secs(2);
const MAX_MISSES: usize = 100_000;

/// Changes remembered while the store is away, at most; past this they are dropped (counted,
/// logged once): the exporters send them again.
const MAX_UNSYNCED: usize = 100_000;

/// While the store is away, a lookup probes it first, at most this often.
const LOOKUP_PROBE: Duration = Duration::from_millis(250);

/// Lookups that missed are answered when the template is defined within this time...
const WAITER_TTL: Duration = Duration::from_secs(30);
/// ...for at most this many keys and sessions per key.
const MAX_WAITED_KEYS: usize = 10_000;
const MAX_WAITERS_PER_KEY: usize = 64;

/// Definitions are written to the store in batches: within this long of the first...
const FLUSH_EVERY: Duration = Duration::from_millis(20);
/// ...or at once when this many wait.
const FLUSH_AT: usize = 256;

/// Conflicts tracked at most (each holds two session references).
const MAX_CONFLICTS: usize = 10_000;

/// How often the memory store is swept of expired templates and stale versions.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

#[derive(RactorMessage)]
pub enum CacheMsg {
    /// A session saw this template defined (new, changed, or its refresh is due).
    Learned(TemplateKey, Template, ActorRef<SessionMsg>),
    /// A session saw this template withdrawn.
    Withdrawn(TemplateKey, TemplateKind),
    /// A session saw all templates of `kind` withdrawn for the key's exporter and domain (the
    /// key's template id is not used).
    WithdrawnAll(TemplateKey, TemplateKind),
    /// A session needs this template; the answer goes to `reply` as `SessionMsg::SharedTemplate`.
    Lookup(TemplateKey, ActorRef<SessionMsg>),
    /// Another node withdrew or redefined it.
    Invalidate(Invalidation),
    /// Invalidations came faster than the cache took them: drop every local copy (lookups go
    /// to the store again) instead of queueing without bound.
    InvalidationsOverflowed,
    Probe,
    /// Own timer: write the definitions that waited.
    Flush,
    Status(RpcReplyPort<CacheStatus>),
    /// A tenant's templates as the store holds them (for the API), at most `TENANT_TEMPLATES`.
    Tenant(String, RpcReplyPort<Result<TenantTemplates, String>>),
}

/// Template listings (`Tenant`) under way at once.
const MAX_LISTINGS: usize = 4;

/// Templates one answer lists at most: a bound on what a tenant with many exporters costs a
/// request.
pub const TENANT_TEMPLATES: usize = 10_000;

#[derive(Debug, Clone)]
pub struct TenantTemplates {
    pub templates: Vec<(TemplateKey, StoredTemplate)>,
    /// There were more than `TENANT_TEMPLATES`.
    pub truncated: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CacheStatus {
    pub templates: usize,
    /// What the local map holds, by `stored_cost`.
    pub bytes: usize,
    pub store_healthy: bool,
    /// Changes made while the store was away, not written yet.
    pub unsynced: usize,
    /// Changes dropped because too many were waiting for the store.
    pub unsynced_dropped: u64,
    pub lookups: u64,
    pub lookups_from_store: u64,
    /// Lookups answered from the recent-miss memory, without a store round trip.
    pub misses_remembered: u64,
    pub invalidations_received: u64,
    /// Times invalidations came too fast and every local copy was dropped instead.
    pub invalidations_overflowed: u64,
    /// Keys defined differently by two live sessions, now (not shared) and ever.
    pub conflicts_live: usize,
    pub conflicts: u64,
    /// Session messages dropped because `MAX_WAITING` were already waiting.
    pub dropped_messages: u64,
}

/// How sessions reach the cache: by its registered name (a restarted cache is found again), with
/// a bound on how many of their messages may wait for it.
#[derive(Debug, Clone, Default)]
pub struct CacheHandle {
    waiting: Arc<AtomicUsize>,
    dropped: Arc<AtomicU64>,
}

impl CacheHandle {
    /// Sends a session's message; false when it was dropped (queue full, or no cache running).
    pub fn send(&self, msg: CacheMsg) -> bool {
        let sent = self.waiting.load(Ordering::Relaxed) < MAX_WAITING && self.force(msg);
        if !sent {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        sent
    }

    /// Sends past the bound (a message that stands for many); false when no cache runs.
    fn force(&self, msg: CacheMsg) -> bool {
        let Some(cell) = ractor::registry::where_is(TEMPLATE_CACHE) else {
            return false;
        };
        self.waiting.fetch_add(1, Ordering::Relaxed);
        if ActorRef::<CacheMsg>::from(cell).cast(msg).is_err() {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    fn taken(&self) {
        let _ = self
            .waiting
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| {
                Some(w.saturating_sub(1))
            });
    }
}

#[derive(Clone)]
pub struct CacheArgs {
    pub store: Arc<TemplateStore>,
    pub node: String,
    /// How often to re-send an unchanged template to the store (its TTL refresh).
    pub refresh_every: Duration,
    /// RFC 7011 8.4: templates learned over UDP are forgotten unless re-sent within this.
    pub udp_lifetime: Duration,
    /// Bytes of templates the local map holds at most.
    pub max_bytes: usize,
    pub handle: CacheHandle,
}

/// One template as this node knows it.
struct Entry {
    template: Template,
    /// When it was last written to the store.
    written: Instant,
    /// When a session last defined it (or it was read from the store).
    seen: Instant,
    /// The local session that defined it; `None` when it came from the store.
    from: Option<ActorRef<SessionMsg>>,
}

/// Two definitions of one key by live sessions.
struct Conflict {
    sessions: [ActorRef<SessionMsg>; 2],
}

impl Conflict {
    fn over(&self) -> bool {
        !self.sessions.iter().all(alive)
    }

    /// The conflict is over: the session still there shares its definition again (it will not
    /// on its own, having told the cache once already).
    fn end(&self, key: &TemplateKey) {
        tracing::info!(exporter = %key.exporter, domain = key.domain, template = key.template_id, "template conflict over: shared again");
        for s in self.sessions.iter().filter(|s| alive(s)) {
            let _ = s.cast(SessionMsg::ShareAgain(key.domain, key.template_id));
        }
    }
}

fn alive(s: &ActorRef<SessionMsg>) -> bool {
    matches!(
        s.get_status(),
        ractor::ActorStatus::Running | ractor::ActorStatus::Starting
    )
}

pub struct CacheState {
    store: Arc<TemplateStore>,
    /// Permits for template listings (`MAX_LISTINGS`).
    listings: Arc<tokio::sync::Semaphore>,
    node: String,
    refresh_every: Duration,
    udp_lifetime: Duration,
    max_bytes: usize,
    handle: CacheHandle,
    local: HashMap<TemplateKey, Entry>,
    bytes: usize,
    misses: HashMap<TemplateKey, Instant>,
    /// Sessions whose lookup missed, answered as soon as a session of this node defines the
    /// template (when it was first asked, and who asked).
    waiters: HashMap<TemplateKey, (Instant, Vec<ActorRef<SessionMsg>>)>,
    conflicts: HashMap<TemplateKey, Conflict>,
    healthy: bool,
    /// The store instance last seen (Redis's `run_id`): a new one is re-written.
    instance: Option<String>,
    last_probe: Instant,
    /// Changes the store has not seen, with when they happened (Unix ms): written at re-sync
    /// unless another node changed the key later.
    learned_while_down: HashMap<TemplateKey, u64>,
    withdrawn_while_down: HashMap<TemplateKey, u64>,
    unsynced_dropped: u64,
    lookups: u64,
    lookups_from_store: u64,
    misses_remembered: u64,
    invalidations: u64,
    invalidations_overflowed: u64,
    conflicts_total: u64,
    last_sweep: Instant,
    /// Definitions to write (when they changed, and whether to publish a redefinition).
    dirty: HashMap<TemplateKey, (u64, bool)>,
    flush_scheduled: bool,
    me: ActorRef<CacheMsg>,
    subscriber: Option<JoinHandle<()>>,
    prober: Option<JoinHandle<()>>,
}

pub struct TemplateCache;

impl Actor for TemplateCache {
    type Msg = CacheMsg;
    type State = CacheState;
    type Arguments = CacheArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<CacheMsg>,
        args: CacheArgs,
    ) -> Result<CacheState, ActorProcessingErr> {
        // A restart: what waited in the old mailbox is gone, and counted no more.
        args.handle.waiting.store(0, Ordering::Relaxed);
        let subscriber =
            args.store.redis_client().cloned().map(|client| {
                tokio::spawn(subscribe(client, args.handle.clone(), args.node.clone()))
            });
        let me = myself.clone();
        let prober = tokio::spawn(async move {
            let mut t = tokio::time::interval(Duration::from_secs(2));
            loop {
                t.tick().await;
                if me.cast(CacheMsg::Probe).is_err() {
                    break;
                }
            }
        });
        Ok(CacheState {
            listings: Arc::new(tokio::sync::Semaphore::new(MAX_LISTINGS)),
            store: args.store,
            node: args.node,
            refresh_every: args.refresh_every,
            udp_lifetime: args.udp_lifetime,
            max_bytes: args.max_bytes,
            handle: args.handle,
            local: HashMap::new(),
            bytes: 0,
            misses: HashMap::new(),
            waiters: HashMap::new(),
            conflicts: HashMap::new(),
            healthy: true,
            instance: None,
            last_probe: Instant::now(),
            learned_while_down: HashMap::new(),
            withdrawn_while_down: HashMap::new(),
            unsynced_dropped: 0,
            lookups: 0,
            lookups_from_store: 0,
            misses_remembered: 0,
            invalidations: 0,
            invalidations_overflowed: 0,
            conflicts_total: 0,
            last_sweep: Instant::now(),
            dirty: HashMap::new(),
            flush_scheduled: false,
            me: myself.clone(),
            subscriber,
            prober: Some(prober),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<CacheMsg>,
        msg: CacheMsg,
        state: &mut CacheState,
    ) -> Result<(), ActorProcessingErr> {
        crate::telemetry::metrics::ActorKind::TemplateCache
            .timed(async move {
        match msg {
            CacheMsg::Learned(key, template, from) => {
                state.handle.taken();
                state.learned(key, template, from).await;
            }
            CacheMsg::Withdrawn(key, kind) => {
                state.handle.taken();
                state.withdrawn(key, kind).await;
            }
            CacheMsg::WithdrawnAll(scope, kind) => {
                state.handle.taken();
                state.withdrawn_all(scope, kind).await;
            }
            CacheMsg::Lookup(key, reply) => {
                state.handle.taken();
                state.lookups += 1;
                match state.lookup(&key).await {
                    Some(t) => {
                        let _ = reply.cast(SessionMsg::SharedTemplate(key.domain, t));
                    }
                    None => state.wait_for(key, reply),
                }
            }
            CacheMsg::InvalidationsOverflowed => {
                state.handle.taken();
                state.invalidations_overflowed += 1;
                tracing::warn!(
                    "template invalidations arrive faster than they are applied: local copies dropped"
                );
                state.forget_what_others_may_have_changed();
            }
            CacheMsg::Invalidate(inv) => {
                state.handle.taken();
                if inv.node != state.node {
                    state.invalidations += 1;
                    let key = inv.key();
                    state.misses.remove(&key);
                    state.forget(&key);
                }
            }
            CacheMsg::Tenant(tenant, reply) => {
                // The store may be slow or away: the cache goes on serving sessions meanwhile.
                // A listing scans the store (Redis: its whole keyspace), so only a few at once.
                let Ok(permit) = state.listings.clone().try_acquire_owned() else {
                    let _ = reply.send(Err(format!(
                        "{MAX_LISTINGS} template listings are under way: try again shortly"
                    )));
                    return Ok(());
                };
                let store = state.store.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    let listed = store
                        .tenant(&tenant, TENANT_TEMPLATES)
                        .await
                        .map(|(templates, truncated)| TenantTemplates {
                            templates,
                            truncated,
                        })
                        .map_err(|e| e.to_string());
                    let _ = reply.send(listed);
                });
            }
            CacheMsg::Probe => state.probe().await,
            CacheMsg::Flush => state.flush().await,
            CacheMsg::Status(reply) => {
                let _ = reply.send(CacheStatus {
                    templates: state.local.len(),
                    bytes: state.bytes,
                    store_healthy: state.healthy,
                    unsynced: state.learned_while_down.len() + state.withdrawn_while_down.len(),
                    unsynced_dropped: state.unsynced_dropped,
                    lookups: state.lookups,
                    lookups_from_store: state.lookups_from_store,
                    misses_remembered: state.misses_remembered,
                    invalidations_received: state.invalidations,
                    invalidations_overflowed: state.invalidations_overflowed,
                    conflicts_live: state.conflicts.len(),
                    conflicts: state.conflicts_total,
                    dropped_messages: state.handle.dropped.load(Ordering::Relaxed),
                });
            }
        }
        Ok(())
                })
            .await
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<CacheMsg>,
        state: &mut CacheState,
    ) -> Result<(), ActorProcessingErr> {
        // What waited to be written is written now (bounded by the store's timeout).
        state.flush().await;
        for t in [state.subscriber.take(), state.prober.take()]
            .into_iter()
            .flatten()
        {
            t.abort();
        }
        Ok(())
    }
}

impl CacheState {
    fn down(&mut self, e: &crate::store::StoreError) {
        if self.healthy {
            tracing::warn!(error = %e, "template store unavailable: collection goes on with local templates");
        }
        self.healthy = false;
    }

    fn stored(&self, template: &Template) -> StoredTemplate {
        StoredTemplate {
            template: template.clone(),
            first_seen: crate::store::unix_secs(),
            node: self.node.clone(),
        }
    }

    /// How often an unchanged template is written again: within the store's TTL, and for UDP
    /// within the template lifetime (the store's UDP keys expire with it).
    fn refresh_of(&self, key: &TemplateKey) -> Duration {
        match key.transport {
            Transport::Tcp => self.refresh_every,
            Transport::Udp => self.refresh_every.min(self.udp_lifetime / 4),
        }
    }

    fn insert(&mut self, key: TemplateKey, entry: Entry) {
        self.bytes += stored_cost(&entry.template);
        if let Some(old) = self.local.insert(key, entry) {
            self.bytes = self.bytes.saturating_sub(stored_cost(&old.template));
        }
        self.bound();
    }

    /// Drops every local copy but the changes not yet written, and every remembered miss:
    /// lookups go to the store again (after missed invalidations).
    fn forget_what_others_may_have_changed(&mut self) {
        let stale: Vec<TemplateKey> = self
            .local
            .keys()
            .filter(|k| !self.learned_while_down.contains_key(k))
            .cloned()
            .collect();
        for k in stale {
            self.forget(&k);
        }
        self.misses.clear();
    }

    fn forget(&mut self, key: &TemplateKey) -> Option<Entry> {
        let e = self.local.remove(key)?;
        self.bytes = self.bytes.saturating_sub(stored_cost(&e.template));
        Some(e)
    }

    /// Remembers a change for the re-sync, within `MAX_UNSYNCED`.
    fn unsynced(&mut self, key: TemplateKey, at: u64, withdrawn: bool) {
        let full = self.learned_while_down.len() + self.withdrawn_while_down.len() >= MAX_UNSYNCED;
        let (map, other) = if withdrawn {
            (&mut self.withdrawn_while_down, &mut self.learned_while_down)
        } else {
            (&mut self.learned_while_down, &mut self.withdrawn_while_down)
        };
        other.remove(&key);
        if full && !map.contains_key(&key) {
            self.unsynced_dropped += 1;
            if self.unsynced_dropped.is_power_of_two() {
                tracing::warn!(
                    dropped = self.unsynced_dropped,
                    limit = MAX_UNSYNCED,
                    "template store still away: changes past the limit are not kept for the re-sync"
                );
            }
            return;
        }
        map.insert(key, at);
    }

    async fn learned(&mut self, key: TemplateKey, template: Template, from: ActorRef<SessionMsg>) {
        let now = Instant::now();
        self.misses.remove(&key);
        if let Some(c) = self.conflicts.get(&key) {
            if !c.over() {
                return; // still two live definitions: not shared
            }
            c.end(&key);
            self.conflicts.remove(&key);
        }
        let (changed, due) = match self.local.get(&key) {
            Some(e) => (
                e.template != template,
                now.duration_since(e.written) >= self.refresh_of(&key),
            ),
            None => (true, true),
        };
        if changed
            && let Some(e) = self.local.get(&key)
            && let Some(other) = &e.from
            && other.get_id() != from.get_id()
            && alive(other)
        {
            let other = other.clone();
            self.conflict(key, other, from).await;
            return;
        }
        if !changed && !due {
            if let Some(e) = self.local.get_mut(&key) {
                e.seen = now;
                e.from = Some(from);
            }
            return;
        }
        let entry = Entry {
            template: template.clone(),
            written: now,
            seen: now,
            from: Some(from),
        };
        self.insert(key.clone(), entry);
        if let Some((_, waiting)) = self.waiters.remove(&key) {
            for s in waiting {
                let _ = s.cast(SessionMsg::SharedTemplate(key.domain, template.clone()));
            }
        }
        let at = unix_ms();
        if !self.healthy {
            self.unsynced(key, at, false);
            return;
        }
        // Written with others in one round trip, within FLUSH_EVERY; a redefinition is published
        // with it (other nodes must not keep decoding with the old one).
        let was_changed = self.dirty.get(&key).is_some_and(|(_, c)| *c);
        self.dirty.insert(key, (at, changed || was_changed));
        if self.dirty.len() >= FLUSH_AT {
            self.flush().await;
        } else if !self.flush_scheduled {
            self.flush_scheduled = true;
            self.me.send_after(FLUSH_EVERY, || CacheMsg::Flush);
        }
    }

    /// Writes the definitions waiting in `dirty` to the store in one round trip.
    async fn flush(&mut self) {
        self.flush_scheduled = false;
        if self.dirty.is_empty() {
            return;
        }
        let dirty = std::mem::take(&mut self.dirty);
        let writes: Vec<(TemplateKey, StoredTemplate, u64, bool)> = dirty
            .into_iter()
            .filter_map(|(k, (at, changed))| {
                let v = self.stored(&self.local.get(&k)?.template);
                Some((k, v, at, changed))
            })
            .collect();
        if !self.healthy {
            for (k, _, at, _) in writes {
                self.unsynced(k, at, false);
            }
            return;
        }
        match self.store.put_many_if_newer(&writes, &self.node).await {
            Ok(wrote) => {
                for ((k, ..), w) in writes.iter().zip(wrote) {
                    if !w {
                        // Another node changed it later: read theirs from the store.
                        self.forget(k);
                    }
                }
            }
            Err(e) => {
                self.down(&e);
                for (k, _, at, _) in writes {
                    self.unsynced(k, at, false);
                }
            }
        }
    }

    /// Remembers who asked for a template nobody had, within bounds.
    fn wait_for(&mut self, key: TemplateKey, session: ActorRef<SessionMsg>) {
        if !self.waiters.contains_key(&key) && self.waiters.len() >= MAX_WAITED_KEYS {
            return;
        }
        let (_, list) = self
            .waiters
            .entry(key)
            .or_insert_with(|| (Instant::now(), Vec::new()));
        if list.len() < MAX_WAITERS_PER_KEY && !list.iter().any(|s| s.get_id() == session.get_id())
        {
            list.push(session);
        }
    }

    /// Two live sessions define `key` differently: nobody gets either definition from here
    /// until one of them ends.
    async fn conflict(
        &mut self,
        key: TemplateKey,
        first: ActorRef<SessionMsg>,
        second: ActorRef<SessionMsg>,
    ) {
        self.conflicts_total += 1;
        self.forget(&key);
        if self.conflicts.len() >= MAX_CONFLICTS {
            // Too many to track: the key is dropped from the store all the same, and the next
            // definition shares it again.
            self.drop_from_store(key).await;
            return;
        }
        let n = self.conflicts_total;
        if n.is_power_of_two() || n <= 8 {
            tracing::warn!(
            exporter = %key.exporter, transport = key.transport.as_str(), domain = key.domain,
            template = key.template_id,
            first = first.get_name().unwrap_or_default(), second = second.get_name().unwrap_or_default(),
            conflicts = self.conflicts_total,
            "two live sessions define one shared template differently (a NAT, or a forged source): not shared until one ends"
            );
        }
        self.conflicts.insert(
            key.clone(),
            Conflict {
                sessions: [first, second],
            },
        );
        self.drop_from_store(key).await;
    }

    async fn drop_from_store(&mut self, key: TemplateKey) {
        let at = unix_ms();
        if !self.healthy {
            self.unsynced(key, at, true);
            return;
        }
        if let Err(e) = self.store.remove_if_newer(&key, at).await {
            self.down(&e);
            self.unsynced(key, at, true);
            return;
        }
        self.publish(&key).await;
    }

    async fn withdrawn(&mut self, key: TemplateKey, kind: TemplateKind) {
        if self
            .local
            .get(&key)
            .is_some_and(|e| e.template.kind != kind)
        {
            return;
        }
        self.forget(&key);
        self.drop_from_store(key).await;
    }

    async fn withdrawn_all(&mut self, scope: TemplateKey, kind: TemplateKind) {
        let mut keys: Vec<TemplateKey> = self
            .local
            .iter()
            .filter(|(k, e)| k.same_scope(&scope) && e.template.kind == kind)
            .map(|(k, _)| k.clone())
            .collect();
        if self.healthy {
            match self.store.list(&scope).await {
                Ok(stored) => keys.extend(
                    stored
                        .into_iter()
                        .filter(|(_, v)| v.template.kind == kind)
                        .map(|(k, _)| k),
                ),
                Err(e) => self.down(&e),
            }
        }
        keys.sort();
        keys.dedup();
        for key in keys {
            self.withdrawn(key, kind).await;
        }
    }

    async fn publish(&mut self, key: &TemplateKey) {
        let inv = Invalidation::of(&self.node, key);
        if let Err(e) = self.store.publish(&inv).await {
            self.down(&e);
        }
    }

    async fn lookup(&mut self, key: &TemplateKey) -> Option<Template> {
        let now = Instant::now();
        if let Some(c) = self.conflicts.get(key) {
            if !c.over() {
                return None;
            }
            c.end(key);
            self.conflicts.remove(key);
        }
        if let Some(e) = self.local.get(key) {
            // RFC 7011 8.4: a UDP template not re-sent within its lifetime is gone.
            if key.transport == Transport::Udp && now.duration_since(e.seen) >= self.udp_lifetime {
                self.forget(key);
                return None;
            }
            return Some(e.template.clone());
        }
        if self
            .misses
            .get(key)
            .is_some_and(|at| now.duration_since(*at) < MISS_TTL)
        {
            self.misses_remembered += 1;
            return None;
        }
        // A store that came back is found by the next probe (every 2 s); a lookup meanwhile
        // probes first (at most every LOOKUP_PROBE), so an exporter that moved to this node as
        // Redis came back is decoded at once, not 2 s later.
        if !self.healthy && now.duration_since(self.last_probe) >= LOOKUP_PROBE {
            self.probe().await;
        }
        if !self.healthy {
            return None;
        }
        match self.store.get(key).await {
            Ok(Some(v)) => {
                self.lookups_from_store += 1;
                let entry = Entry {
                    template: v.template.clone(),
                    written: now,
                    seen: now,
                    from: None,
                };
                self.insert(key.clone(), entry);
                Some(v.template)
            }
            Ok(None) => {
                if self.misses.len() >= MAX_MISSES {
                    self.misses.clear();
                }
                self.misses.insert(key.clone(), now);
                None
            }
            Err(crate::store::StoreError::Corrupt { key, reason }) => {
                tracing::warn!(%key, %reason, "unreadable template in the store: ignored");
                None
            }
            Err(e) => {
                self.down(&e);
                None
            }
        }
    }

    /// Health and re-sync while the store is away; sweeps of the memory store, the miss memory
    /// and ended conflicts.
    async fn probe(&mut self) {
        let now = Instant::now();
        self.last_probe = now;
        if now.duration_since(self.last_sweep) >= SWEEP_EVERY {
            self.last_sweep = now;
            self.store.sweep();
            self.misses
                .retain(|_, at| now.duration_since(*at) < MISS_TTL);
            self.conflicts.retain(|k, c| {
                let over = c.over();
                if over {
                    c.end(k);
                }
                !over
            });
            self.waiters
                .retain(|_, (at, _)| now.duration_since(*at) < WAITER_TTL);
            let lifetime = self.udp_lifetime;
            let expired: Vec<TemplateKey> = self
                .local
                .iter()
                .filter(|(k, e)| {
                    k.transport == Transport::Udp && now.duration_since(e.seen) >= lifetime
                })
                .map(|(k, _)| k.clone())
                .collect();
            for k in expired {
                self.forget(&k);
            }
        }
        // Also the health check while healthy: a store that stops answering is noticed
        // without traffic.
        let restarted = match self.store.instance().await {
            Ok(Some(id)) => {
                let new = self.instance.as_ref().is_some_and(|old| *old != id);
                self.instance = Some(id);
                new
            }
            Ok(None) => false,
            Err(e) => {
                self.down(&e);
                return;
            }
        };
        if self.healthy && !restarted {
            return;
        }
        if restarted {
            // A Redis that restarted without its data (or a replica that took over without our
            // last writes) no longer holds what this node's sessions defined, and a TCP
            // exporter does not send its templates again: written again, as changes made now
            // (a later change of another node still wins).
            let now = unix_ms();
            let ours: Vec<TemplateKey> = self
                .local
                .iter()
                .filter(|(_, e)| e.from.is_some())
                .map(|(k, _)| k.clone())
                .collect();
            tracing::warn!(
                templates = ours.len(),
                "template store restarted (a new Redis instance): writing again the templates this node's sessions defined"
            );
            for k in ours {
                if !self.withdrawn_while_down.contains_key(&k) {
                    self.unsynced(k, now, false);
                }
            }
        }
        self.healthy = true;
        // What other nodes published while we were cut off was lost with the subscription:
        // forget local copies we did not learn ourselves, so lookups go to the store again.
        self.forget_what_others_may_have_changed();
        let (mut wrote, mut removed, mut superseded) = (0, 0, 0);
        // Stop at the first failure: the rest waits for the next probe instead of each key
        // waiting for its own timeout. A change another node made later wins: ours is dropped
        // (and our local copy, so lookups read the newer one from the store).
        while let Some((key, at)) = self
            .learned_while_down
            .iter()
            .next()
            .map(|(k, a)| (k.clone(), *a))
        {
            if let Some(e) = self.local.get(&key) {
                let v = self.stored(&e.template);
                match self.store.put_if_newer(&key, &v, at).await {
                    Err(e) => {
                        self.down(&e);
                        return;
                    }
                    Ok(true) => {
                        self.publish(&key).await;
                        wrote += 1;
                    }
                    Ok(false) => {
                        self.forget(&key);
                        superseded += 1;
                    }
                }
            }
            self.learned_while_down.remove(&key);
        }
        while let Some((key, at)) = self
            .withdrawn_while_down
            .iter()
            .next()
            .map(|(k, a)| (k.clone(), *a))
        {
            match self.store.remove_if_newer(&key, at).await {
                Err(e) => {
                    self.down(&e);
                    return;
                }
                Ok(true) => {
                    self.publish(&key).await;
                    removed += 1;
                }
                Ok(false) => superseded += 1,
            }
            self.withdrawn_while_down.remove(&key);
        }
        if self.healthy {
            tracing::info!(
                written = wrote,
                withdrawn = removed,
                superseded,
                "template store back: re-synced"
            );
        }
    }

    /// Keeps the local map within `max_bytes` by dropping the least recently seen tenth (they
    /// are in the store, or re-sent by their exporters); changes not yet re-synced stay.
    fn bound(&mut self) {
        if self.bytes <= self.max_bytes {
            return;
        }
        let mut by_age: Vec<(Instant, TemplateKey)> = self
            .local
            .iter()
            .filter(|(k, _)| !self.learned_while_down.contains_key(k))
            .map(|(k, e)| (e.seen, k.clone()))
            .collect();
        by_age.sort();
        let target = self.max_bytes - self.max_bytes / 10;
        for (_, k) in by_age {
            if self.bytes <= target {
                break;
            }
            self.forget(&k);
        }
    }
}

/// Listens for other nodes' invalidations, reconnecting (with a pause) when Redis goes away.
/// They count among the messages waiting for the cache; past the bound, one
/// `InvalidationsOverflowed` stands for all of them.
async fn subscribe(client: redis::Client, handle: CacheHandle, node: String) {
    let mut overflowed = false;
    loop {
        match client.get_async_pubsub().await {
            Ok(mut pubsub) => {
                if pubsub
                    .subscribe(crate::store::templates::INVALIDATION_CHANNEL)
                    .await
                    .is_ok()
                {
                    let mut messages = pubsub.on_message();
                    while let Some(m) = messages.next().await {
                        let payload: Vec<u8> = m.get_payload().unwrap_or_default();
                        let Some(inv) = Invalidation::decode(&payload) else {
                            continue;
                        };
                        if inv.node == node {
                            continue;
                        }
                        let waiting = handle.waiting.load(Ordering::Relaxed);
                        if waiting < MAX_WAITING / 2 {
                            overflowed = false;
                        }
                        if overflowed {
                            continue;
                        }
                        if waiting >= MAX_WAITING {
                            overflowed = handle.force(CacheMsg::InvalidationsOverflowed);
                            continue;
                        }
                        handle.send(CacheMsg::Invalidate(inv));
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "template invalidations: no subscription yet"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
