//! TenantDirectory: the node's way to the tenants and their tokens in the store (memory, or Redis
//! shared by every node). The API asks it by message. Each request runs in a task of its own, so
//! one slow store answer does not hold up the authentication of other requests.
//!
//! Messages: `Create`, `Update`, `Get`, `List`, `Delete`, `AddToken`, `Tokens`, `Revoke`,
//! `Authenticate` (a bearer token -> its tenant).

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
}

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

impl Actor for TenantDirectory {
    type Msg = TenantMsg;
    type State = Arc<TenantStore>;
    type Arguments = Arc<TenantStore>;

    async fn pre_start(
        &self,
        _myself: ActorRef<TenantMsg>,
        store: Arc<TenantStore>,
    ) -> Result<Arc<TenantStore>, ActorProcessingErr> {
        Ok(store)
    }

    async fn handle(
        &self,
        _myself: ActorRef<TenantMsg>,
        msg: TenantMsg,
        store: &mut Arc<TenantStore>,
    ) -> Result<(), ActorProcessingErr> {
        let s = store.clone();
        match msg {
            TenantMsg::Create(t, r) => answer(r, async move { s.create(&t).await }),
            TenantMsg::Update(t, r) => answer(r, async move { s.update(&t).await }),
            TenantMsg::Get(id, r) => answer(r, async move { s.get(&id).await }),
            TenantMsg::List(r) => answer(r, async move { s.list().await }),
            TenantMsg::Delete(id, r) => answer(r, async move { s.delete(&id).await }),
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
