//! TenantDirectory: the node's way to the tenants and their tokens in the store (memory, or Redis
//! shared by every node). The API asks it by message. Each request runs in a task of its own, so
//! one slow store answer does not hold up the authentication of other requests.
//!
//! Messages: `Create`, `Update`, `Get`, `List`, `Delete`, `AddToken`, `Tokens`, `Revoke`,
//! `Authenticate` (a bearer token -> its tenant).

use crate::store::tenants::{ExporterTenants, PrefixTable};
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
    /// Reload the exporter prefix table from the store (own timer, and after a change here).
    Reload,
}

/// What the directory needs: the store, and the table the collector reads.
#[derive(Clone)]
pub struct TenantArgs {
    pub store: Arc<TenantStore>,
    pub exporters: Arc<ExporterTenants>,
}

/// How often the prefix table is read again from the store (other nodes' changes).
const RELOAD_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

pub struct TenantDirectory;

fn answer<T, F>(reply: Reply<T>, work: F)
where
    T: Send + 'static,
    F: Future<Output = Result<T, StoreError>> + Send + 'static,
{
    tokio::spawn(async move {
        let _ = reply.send(work.await);
    });
}

/// Runs `work`, then has the prefix table reloaded (a tenant's exporters may have changed).
fn answer_and_reload<T, F>(me: ActorRef<TenantMsg>, reply: Reply<T>, work: F)
where
    T: Send + 'static,
    F: Future<Output = Result<T, StoreError>> + Send + 'static,
{
    tokio::spawn(async move {
        let r = work.await;
        let _ = me.cast(TenantMsg::Reload);
        let _ = reply.send(r);
    });
}

impl Actor for TenantDirectory {
    type Msg = TenantMsg;
    type State = TenantArgs;
    type Arguments = TenantArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<TenantMsg>,
        args: TenantArgs,
    ) -> Result<TenantArgs, ActorProcessingErr> {
        myself.send_interval(RELOAD_EVERY, || TenantMsg::Reload);
        let _ = myself.cast(TenantMsg::Reload);
        Ok(args)
    }

    async fn handle(
        &self,
        myself: ActorRef<TenantMsg>,
        msg: TenantMsg,
        state: &mut TenantArgs,
    ) -> Result<(), ActorProcessingErr> {
        let s = state.store.clone();
        match msg {
            TenantMsg::Reload => {
                // In this handler, so reloads never race each other; a store that is away
                // leaves the last table in place.
                match s.list().await {
                    Ok(all) => state.exporters.replace(PrefixTable::new(&all)),
                    Err(e) => tracing::debug!(error = %e, "tenant prefixes not reloaded"),
                }
            }
            TenantMsg::Create(t, r) => {
                answer_and_reload(myself, r, async move { s.create(&t).await })
            }
            TenantMsg::Update(t, r) => {
                answer_and_reload(myself, r, async move { s.update(&t).await })
            }
            TenantMsg::Get(id, r) => answer(r, async move { s.get(&id).await }),
            TenantMsg::List(r) => answer(r, async move { s.list().await }),
            TenantMsg::Delete(id, r) => {
                answer_and_reload(myself, r, async move { s.delete(&id).await })
            }
            TenantMsg::AddToken(id, r) => answer(r, async move { s.add_token(&id).await }),
            TenantMsg::Tokens(id, r) => answer(r, async move { s.tokens(&id).await }),
            TenantMsg::Revoke(t, id, r) => answer(r, async move { s.revoke(&t, &id).await }),
            TenantMsg::Authenticate(token, r) => {
                answer(r, async move { s.authenticate(&token).await })
            }
        }
        Ok(())
    }
}
