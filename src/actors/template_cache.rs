//! TemplateCache: this node's template map, shared by its sessions, written through to the store
//! (Redis when configured) and read through when a session meets a Data Set whose template it
//! does not hold. Sessions never wait on it: they tell it what they learned, and ask for a
//! template with their own address as the reply-to; the answer comes as a session message while
//! the Data Sets wait in the session's bounded pending buffer.
//!
//! Messages: `Learned`, `Withdrawn` (from sessions), `Lookup` (from sessions), `Invalidate` (from
//! other nodes, over Redis pub/sub), `Probe` (own timer: health and re-sync), `Status`.
//!
//! Redis down: one log line, `healthy` goes false, the store is left alone (no waits on the hot
//! path) and what is learned or withdrawn meanwhile is remembered; when a probe succeeds the
//! cache writes it all and says so.

use super::collector::session::SessionMsg;
use crate::store::unix_ms;
use crate::store::{Invalidation, StoredTemplate, TemplateKey, TemplateStore};
use crate::wire::{Template, TemplateKind};
use futures_util::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorMessage;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::task::JoinHandle;

pub const TEMPLATE_CACHE: &str = "template-cache";

#[derive(RactorMessage)]
pub enum CacheMsg {
    /// A session saw this template defined (or re-sent).
    Learned(TemplateKey, Template),
    /// A session saw this template withdrawn.
    Withdrawn(TemplateKey, TemplateKind),
    /// A session saw all templates of `kind` withdrawn for the key's exporter and domain (the
    /// key's template id is not used).
    WithdrawnAll(TemplateKey, TemplateKind),
    /// A session needs this template; the answer goes to `reply` as `SessionMsg::SharedTemplate`.
    Lookup(TemplateKey, ActorRef<SessionMsg>),
    /// Another node withdrew or redefined it.
    Invalidate(Invalidation),
    Probe,
    Status(RpcReplyPort<CacheStatus>),
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CacheStatus {
    pub templates: usize,
    pub store_healthy: bool,
    /// Changes made while the store was away, not written yet.
    pub unsynced: usize,
    pub lookups: u64,
    pub lookups_from_store: u64,
    pub invalidations_received: u64,
}

pub struct CacheArgs {
    pub store: Arc<TemplateStore>,
    pub node: String,
    /// How often to re-send an unchanged template to the store (its TTL refresh).
    pub refresh_every: Duration,
}

pub struct CacheState {
    store: Arc<TemplateStore>,
    node: String,
    refresh_every: Duration,
    local: HashMap<TemplateKey, (Template, Instant)>,
    healthy: bool,
    /// Changes the store has not seen, with when they happened (Unix ms): written at re-sync
    /// unless another node changed the key later.
    learned_while_down: HashMap<TemplateKey, u64>,
    withdrawn_while_down: HashMap<TemplateKey, u64>,
    lookups: u64,
    lookups_from_store: u64,
    invalidations: u64,
    subscriber: Option<JoinHandle<()>>,
    prober: Option<JoinHandle<()>>,
}

pub struct TemplateCache;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Actor for TemplateCache {
    type Msg = CacheMsg;
    type State = CacheState;
    type Arguments = CacheArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<CacheMsg>,
        args: CacheArgs,
    ) -> Result<CacheState, ActorProcessingErr> {
        let subscriber = args
            .store
            .redis_client()
            .cloned()
            .map(|client| tokio::spawn(subscribe(client, myself.clone(), args.node.clone())));
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
            store: args.store,
            node: args.node,
            refresh_every: args.refresh_every,
            local: HashMap::new(),
            healthy: true,
            learned_while_down: HashMap::new(),
            withdrawn_while_down: HashMap::new(),
            lookups: 0,
            lookups_from_store: 0,
            invalidations: 0,
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
        match msg {
            CacheMsg::Learned(key, template) => state.learned(key, template).await,
            CacheMsg::Withdrawn(key, kind) => state.withdrawn(key, kind).await,
            CacheMsg::WithdrawnAll(scope, kind) => state.withdrawn_all(scope, kind).await,
            CacheMsg::Lookup(key, reply) => {
                state.lookups += 1;
                if let Some(t) = state.lookup(&key).await {
                    let _ = reply.cast(SessionMsg::SharedTemplate(key.domain, t));
                }
            }
            CacheMsg::Invalidate(inv) => {
                if inv.node != state.node {
                    state.invalidations += 1;
                    state.local.remove(&inv.key());
                }
            }
            CacheMsg::Probe => state.probe().await,
            CacheMsg::Status(reply) => {
                let _ = reply.send(CacheStatus {
                    templates: state.local.len(),
                    store_healthy: state.healthy,
                    unsynced: state.learned_while_down.len() + state.withdrawn_while_down.len(),
                    lookups: state.lookups,
                    lookups_from_store: state.lookups_from_store,
                    invalidations_received: state.invalidations,
                });
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<CacheMsg>,
        state: &mut CacheState,
    ) -> Result<(), ActorProcessingErr> {
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
            first_seen: unix_now(),
            node: self.node.clone(),
        }
    }

    async fn learned(&mut self, key: TemplateKey, template: Template) {
        let now = Instant::now();
        let (changed, due) = match self.local.get(&key) {
            Some((t, written)) => (
                *t != template,
                now.duration_since(*written) >= self.refresh_every,
            ),
            None => (true, true),
        };
        if !changed && !due {
            return;
        }
        self.bound();
        self.local.insert(key.clone(), (template.clone(), now));
        self.withdrawn_while_down.remove(&key);
        let at = unix_ms();
        if !self.healthy {
            self.learned_while_down.insert(key, at);
            return;
        }
        let value = self.stored(&template);
        if let Err(e) = self.store.put_if_newer(&key, &value, at).await {
            self.down(&e);
            self.learned_while_down.insert(key, at);
            return;
        }
        if changed {
            // A redefinition: other nodes must not keep decoding with the old one.
            self.publish(&key).await;
        }
    }

    async fn withdrawn(&mut self, key: TemplateKey, kind: TemplateKind) {
        if self.local.get(&key).is_some_and(|(t, _)| t.kind != kind) {
            return;
        }
        self.local.remove(&key);
        self.learned_while_down.remove(&key);
        let at = unix_ms();
        if !self.healthy {
            self.withdrawn_while_down.insert(key, at);
            return;
        }
        if let Err(e) = self.store.remove_if_newer(&key, at).await {
            self.down(&e);
            self.withdrawn_while_down.insert(key, at);
            return;
        }
        self.publish(&key).await;
    }

    async fn withdrawn_all(&mut self, scope: TemplateKey, kind: TemplateKind) {
        let same = |k: &TemplateKey| {
            k.tenant == scope.tenant && k.exporter == scope.exporter && k.domain == scope.domain
        };
        let mut keys: Vec<TemplateKey> = self
            .local
            .iter()
            .filter(|(k, (t, _))| same(k) && t.kind == kind)
            .map(|(k, _)| k.clone())
            .collect();
        if self.healthy {
            match self
                .store
                .list(&scope.tenant, scope.exporter, scope.domain)
                .await
            {
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
        let inv = Invalidation {
            node: self.node.clone(),
            tenant: key.tenant.clone(),
            exporter: key.exporter,
            domain: key.domain,
            template_id: key.template_id,
        };
        if let Err(e) = self.store.publish(&inv).await {
            self.down(&e);
        }
    }

    async fn lookup(&mut self, key: &TemplateKey) -> Option<Template> {
        if let Some((t, _)) = self.local.get(key) {
            return Some(t.clone());
        }
        if !self.healthy {
            return None;
        }
        match self.store.get(key).await {
            Ok(Some(v)) => {
                self.lookups_from_store += 1;
                self.local
                    .insert(key.clone(), (v.template.clone(), Instant::now()));
                Some(v.template)
            }
            Ok(None) => None,
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

    /// While the store is away: is it back? Then write what changed meanwhile.
    async fn probe(&mut self) {
        if self.healthy {
            return;
        }
        if self.store.ping().await.is_err() {
            return;
        }
        self.healthy = true;
        // What other nodes published while we were cut off was lost with the subscription:
        // forget local copies we did not learn ourselves, so lookups go to the store again.
        let learned = &self.learned_while_down;
        self.local.retain(|k, _| learned.contains_key(k));
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
            if let Some((t, _)) = self.local.get(&key) {
                let v = self.stored(t);
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
                        self.local.remove(&key);
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

    /// Keeps the local map within `MAX_LOCAL` entries by dropping the least recently written
    /// (they are in the store, or re-sent by their exporters).
    fn bound(&mut self) {
        if self.local.len() < MAX_LOCAL {
            return;
        }
        let mut by_age: Vec<(Instant, TemplateKey)> = self
            .local
            .iter()
            .map(|(k, (_, at))| (*at, k.clone()))
            .collect();
        by_age.sort();
        for (_, k) in by_age.into_iter().take(MAX_LOCAL / 10) {
            if !self.learned_while_down.contains_key(&k) {
                self.local.remove(&k);
            }
        }
    }
}

/// Templates a node keeps in its cache at most.
const MAX_LOCAL: usize = 100_000;

/// Listens for other nodes' invalidations, reconnecting (with a pause) when Redis goes away.
async fn subscribe(client: redis::Client, cache: ActorRef<CacheMsg>, node: String) {
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
                        if let Some(inv) = Invalidation::decode(&payload)
                            && inv.node != node
                            && cache.cast(CacheMsg::Invalidate(inv)).is_err()
                        {
                            return;
                        }
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "template invalidations: no subscription yet"),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
