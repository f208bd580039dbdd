//! TenantDirectory: the node's way to the tenants and their tokens in the store (memory, or Redis
//! shared by every node). The API asks it by message. Each request runs in a task of its own, so
//! one slow store answer does not hold up the authentication of other requests.
//!
//! Messages: `Create`, `Update`, `Get`, `List`, `Delete`, `AddToken`, `Tokens`, `Revoke`,
//! `Authenticate` (a bearer token -> its tenant).

use crate::store::streams::{Put, StoredStream, StreamStore};
use crate::store::tenants::{CHANGED_CHANNEL, ExporterTenants, PrefixTable};
use crate::store::{StoreError, Tenant, TenantStore, TokenRecord};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorMessage;
use std::future::Future;
use std::sync::Arc;

pub const TENANT_DIRECTORY: &str = "tenant-directory";

type Reply<T> = RpcReplyPort<Result<T, StoreError>>;

#[derive(RactorMessage)]
pub enum TenantMsg {
    Create(Tenant, Reply<bool>),
    Update(Tenant, Reply<bool>),
    Get(String, Reply<Option<Tenant>>),
    List(Reply<Vec<Tenant>>),
    Delete(String, Reply<bool>),
    /// The token (shown once) and its record.
    AddToken(String, Reply<(String, TokenRecord)>),
    Tokens(String, Reply<Vec<TokenRecord>>),
    Revoke(String, String, Reply<bool>),
    Authenticate(String, Reply<Option<String>>),
    /// When each of a tenant's tokens was last used (unix ms, within a minute), by id.
    LastUsed(String, Reply<std::collections::HashMap<String, u64>>),
    /// Reload the exporter prefix table from the store (own timer, and after a change here).
    Reload,
    /// Reload, and answer once the new table is in place (a change made here is answered only
    /// then, so an exporter that connects right after the API's answer is classified by it).
    Reloaded(ractor::RpcReplyPort<()>),
    /// A tenant's export stream: created (`true`: only if the name is free) or replaced.
    PutStream(Box<StoredStream>, bool, Reply<Put>),
    GetStream(String, String, Reply<Option<StoredStream>>),
    ListStreams(String, Reply<Vec<StoredStream>>),
    DeleteStream(String, String, Reply<bool>),
}

/// What the directory needs: the store, and the table the collector reads.
#[derive(Clone)]
pub struct TenantArgs {
    pub store: Arc<TenantStore>,
    pub exporters: Arc<ExporterTenants>,
    /// When this node last wrote each token's use (token id -> unix ms).
    pub marks: Arc<std::sync::Mutex<std::collections::HashMap<String, u64>>>,
    /// Tenants' export streams (the mediators read them from the same store).
    pub streams: Arc<StreamStore>,
}

/// Reads the prefix table again. In the actor's handler, so reloads never race each other; a
/// store that is away leaves the last table in place.
async fn reload(store: &TenantStore, args: &TenantArgs) {
    match store.list().await {
        Ok(all) => args.exporters.replace(PrefixTable::new(&all)),
        Err(e) => tracing::debug!(error = %e, "tenant prefixes not reloaded"),
    }
}

/// A token's use is written at most this often (ms) by a node: its last use is then right
/// within a minute, and a busy client costs no store write per request.
const MARK_EVERY_MS: u64 = 60_000;

/// Writes a token's use when this node has not in the last minute (and remembers at most
/// 100,000 tokens' marks, a bound on what many tokens cost).
async fn note_use(
    store: &TenantStore,
    marks: &std::sync::Mutex<std::collections::HashMap<String, u64>>,
    tenant: &str,
    id: &str,
) {
    let now = crate::store::unix_ms();
    {
        let mut m = marks.lock().unwrap_or_else(|p| p.into_inner());
        if m.get(id)
            .is_some_and(|t| now.saturating_sub(*t) < MARK_EVERY_MS)
        {
            return;
        }
        if m.len() >= 100_000 {
            m.retain(|_, t| now.saturating_sub(*t) < MARK_EVERY_MS);
        }
        m.insert(id.to_string(), now);
    }
    if let Err(e) = store.mark_used(tenant, id, now).await {
        tracing::debug!(error = %e, "token use not noted");
    }
}

/// How often the prefix table is read again from the store anyway (a change announced while a
/// node's subscription was down).
const RELOAD_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

pub struct TenantDirectory;

pub struct TenantState {
    args: TenantArgs,
    follower: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for TenantState {
    fn drop(&mut self) {
        if let Some(f) = self.follower.take() {
            f.abort();
        }
    }
}

fn answer<T, F>(reply: Reply<T>, work: F)
where
    T: Send + 'static,
    F: Future<Output = Result<T, StoreError>> + Send + 'static,
{
    tokio::spawn(async move {
        let _ = reply.send(work.await);
    });
}

/// Runs `work`, then has the prefix table reloaded here and tells the other nodes to reload
/// theirs (a tenant's exporters may have changed).
fn answer_and_reload<T, F>(
    me: ActorRef<TenantMsg>,
    store: Arc<TenantStore>,
    id: String,
    reply: Reply<T>,
    work: F,
) where
    T: Send + 'static,
    F: Future<Output = Result<T, StoreError>> + Send + 'static,
{
    tokio::spawn(async move {
        let r = work.await;
        // Before the answer: the caller may point an exporter at the node right after it.
        if ractor::call_t!(me, TenantMsg::Reloaded, 5_000).is_err() {
            tracing::warn!(
                tenant = id,
                "the prefix table was not reloaded in time: the change applies at the next reload"
            );
        }
        if r.is_ok()
            && let Err(e) = store.announce_change(&id).await
        {
            tracing::warn!(tenant = id, error = %e, "other nodes will see the tenant change at their next reload");
        }
        let _ = reply.send(r);
    });
}

/// Reloads the prefix table whenever another node announces a tenant change; resubscribes
/// after a lost connection.
async fn follow_changes(client: redis::Client, me: ActorRef<TenantMsg>) {
    use futures_util::StreamExt;
    loop {
        match client.get_async_pubsub().await {
            Ok(mut pubsub) => {
                if pubsub.subscribe(CHANGED_CHANNEL).await.is_ok() {
                    // Changes made while this node was not listening.
                    let _ = me.cast(TenantMsg::Reload);
                    let mut messages = pubsub.on_message();
                    while messages.next().await.is_some() {
                        if me.cast(TenantMsg::Reload).is_err() {
                            return;
                        }
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "tenant changes: no subscription yet"),
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

impl Actor for TenantDirectory {
    type Msg = TenantMsg;
    type State = TenantState;
    type Arguments = TenantArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<TenantMsg>,
        args: TenantArgs,
    ) -> Result<TenantState, ActorProcessingErr> {
        myself.send_interval(RELOAD_EVERY, || TenantMsg::Reload);
        let _ = myself.cast(TenantMsg::Reload);
        let follower = args
            .store
            .subscription_client()
            .map(|c| tokio::spawn(follow_changes(c, myself.clone())));
        Ok(TenantState { args, follower })
    }

    async fn handle(
        &self,
        myself: ActorRef<TenantMsg>,
        msg: TenantMsg,
        state: &mut TenantState,
    ) -> Result<(), ActorProcessingErr> {
        let state = &mut state.args;
        let s = state.store.clone();
        match msg {
            TenantMsg::Reload => reload(&s, state).await,
            TenantMsg::Reloaded(done) => {
                reload(&s, state).await;
                let _ = done.send(());
            }
            TenantMsg::Create(t, r) => {
                let (id, store) = (t.id.clone(), s.clone());
                answer_and_reload(myself, store, id, r, async move { s.create(&t).await })
            }
            TenantMsg::Update(t, r) => {
                let (id, store) = (t.id.clone(), s.clone());
                answer_and_reload(myself, store, id, r, async move { s.update(&t).await })
            }
            TenantMsg::Get(id, r) => answer(r, async move { s.get(&id).await }),
            TenantMsg::List(r) => answer(r, async move { s.list().await }),
            TenantMsg::Delete(id, r) => {
                let store = s.clone();
                let streams = state.streams.clone();
                answer_and_reload(myself, store, id.clone(), r, async move {
                    let gone = s.delete(&id).await?;
                    // A deleted tenant's streams stop on every node.
                    for st in streams.of_tenant(&id).await? {
                        streams.delete(&id, &st.spec.name).await?;
                    }
                    Ok(gone)
                })
            }
            TenantMsg::PutStream(st, create, r) => {
                let streams = state.streams.clone();
                answer(r, async move { streams.put(*st, create).await })
            }
            TenantMsg::GetStream(t, name, r) => {
                let streams = state.streams.clone();
                answer(r, async move { streams.get(&t, &name).await })
            }
            TenantMsg::ListStreams(t, r) => {
                let streams = state.streams.clone();
                answer(r, async move { streams.of_tenant(&t).await })
            }
            TenantMsg::DeleteStream(t, name, r) => {
                let streams = state.streams.clone();
                answer(r, async move { streams.delete(&t, &name).await })
            }
            TenantMsg::AddToken(id, r) => answer(r, async move { s.add_token(&id).await }),
            TenantMsg::Tokens(id, r) => answer(r, async move { s.tokens(&id).await }),
            TenantMsg::Revoke(t, id, r) => answer(r, async move { s.revoke(&t, &id).await }),
            TenantMsg::Authenticate(token, r) => {
                let marks = state.marks.clone();
                answer(r, async move {
                    let found = s.authenticate(&token).await?;
                    if let Some((tenant, id)) = &found {
                        note_use(&s, &marks, tenant, id).await;
                    }
                    Ok(found.map(|(tenant, _)| tenant))
                })
            }
            TenantMsg::LastUsed(tenant, r) => answer(r, async move { s.last_used(&tenant).await }),
        }
        Ok(())
    }
}
