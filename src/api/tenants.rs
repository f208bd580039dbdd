//! Tenants and their tokens (admin), and who may touch a tenant's resources: the admin token, or
//! a token of that very tenant. Another tenant's token, like a tenant that does not exist,
//! gets 404: nothing confirms what exists elsewhere.

use super::problem::{self, Problem};
use super::routes::{Ctx, admin};
use crate::actors::tenants::{TENANT_DIRECTORY, TenantMsg};
use crate::store::tenants::{Quotas, normalise_prefixes, valid_tenant_id};
use crate::store::{StoreError, Tenant};
use ractor::ActorRef;
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

/// JSON bodies are small: past this, 413.
const MAX_JSON: u64 = 64 * 1024;

pub(super) fn directory() -> Result<ActorRef<TenantMsg>, Rejection> {
    ractor::registry::where_is(TENANT_DIRECTORY)
        .map(ActorRef::from)
        .ok_or_else(|| {
            problem::reject(Problem::unavailable(
                "the tenant directory is restarting".into(),
            ))
        })
}

/// Asks the TenantDirectory; a store or actor failure is 503.
macro_rules! ask {
    ($ctx:expr, $variant:path $(, $arg:expr)*) => {{
        let d = $crate::api::tenants::directory()?;
        match ractor::call_t!(d, $variant, $ctx.timeout.as_millis() as u64 $(, $arg)*) {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => return Err($crate::api::tenants::store_down(e)),
            Err(e) => {
                return Err(problem::reject(Problem::unavailable(format!(
                    "asking the tenant directory: {e}"
                ))))
            }
        }
    }};
}

pub(super) use ask;

pub(super) fn store_down(e: StoreError) -> Rejection {
    problem::reject(Problem::unavailable(format!("the tenant store: {e}")))
}

fn no_tenant(t: &str) -> Rejection {
    problem::reject(Problem::not_found(format!("no tenant {t:?}")))
}

fn bad(detail: String) -> Rejection {
    problem::reject(Problem::new(
        StatusCode::BAD_REQUEST,
        "invalid-tenant",
        "Invalid tenant",
        detail,
    ))
}

/// Passes the context when the request may act for the tenant its path names
/// (`/api/v1/tenants/{tenant}/..`): the admin token (and the tenant exists), or one of that
/// tenant's tokens. Put it after a route's path and method, so that the store is asked once, for
/// the route that matched.
pub fn authorized(ctx: Ctx) -> impl Filter<Extract = (Ctx,), Error = Rejection> + Clone {
    warp::path::full()
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::any().map(move || ctx.clone()))
        .and_then(
            |path: warp::path::FullPath, auth: Option<String>, ctx: Ctx| async move {
                let tenant = path
                    .as_str()
                    .strip_prefix("/api/v1/tenants/")
                    .and_then(|rest| rest.split('/').next())
                    .unwrap_or_default()
                    .to_string();
                if !valid_tenant_id(&tenant) {
                    return Err(no_tenant(&tenant));
                }
                if ctx.admin.admits(auth.as_deref()) {
                    let found: Option<Tenant> = ask!(ctx, TenantMsg::Get, tenant.clone());
                    return match found {
                        Some(_) => Ok(ctx),
                        None => Err(no_tenant(&tenant)),
                    };
                }
                let Some(token) = auth.as_deref().and_then(|a| a.strip_prefix("Bearer ")) else {
                    return Err(problem::reject(Problem::unauthorized(
                        "send Authorization: Bearer <token>",
                    )));
                };
                let owner: Option<String> =
                    ask!(ctx, TenantMsg::Authenticate, token.trim().to_string());
                match owner {
                    Some(o) if o == tenant => Ok(ctx),
                    Some(_) => Err(no_tenant(&tenant)),
                    None => Err(problem::reject(Problem::unauthorized(
                        "the token is not valid (or was revoked)",
                    ))),
                }
            },
        )
}

/// An id whose earlier tenant (deleted) still has job records is not given out again until they
/// expire: its new owner would see them, and their results. Asked of this node's JobSupervisor
/// (the job store is shared); a node without one cannot tell, and allows it.
async fn earlier_jobs(ctx: &Ctx, id: &str) -> Result<(), Rejection> {
    use crate::actors::jobs::{JOB_SUPERVISOR, JobMsg};
    let Some(j) = super::routes::local::<JobMsg>(JOB_SUPERVISOR) else {
        return Ok(());
    };
    let left = match ractor::call_t!(
        j,
        JobMsg::List,
        ctx.timeout.as_millis() as u64,
        id.to_string()
    ) {
        Ok(Ok(all)) => all.len(),
        Ok(Err(e)) => return Err(store_down(e)),
        Err(e) => {
            return Err(problem::reject(Problem::unavailable(format!(
                "asking the job supervisor: {e}"
            ))));
        }
    };
    if left > 0 {
        return Err(problem::reject(Problem::new(
            StatusCode::CONFLICT,
            "tenant-id-in-use",
            "The id still has job records",
            format!(
                "a deleted tenant {id:?} left {left} job records, kept until they expire (jobs.retention_secs): choose another id or wait"
            ),
        )));
    }
    Ok(())
}

/// A tenant as the store has it (for its quotas); 404 when it does not exist.
pub(crate) async fn tenant(ctx: &Ctx, id: &str) -> Result<Tenant, Rejection> {
    let found: Option<Tenant> = ask!(ctx, TenantMsg::Get, id.to_string());
    found.ok_or_else(|| no_tenant(id))
}

/// `POST /api/v1/tenants`.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTenant {
    /// A slug: `[a-z0-9-]{1,63}`.
    #[schema(pattern = "^[a-z0-9-]{1,63}$")]
    id: String,
    /// Shown to people; the id when not given.
    name: Option<String>,
    /// Source prefixes of the exporters it owns (`10.1.0.0/16`, `2001:db8::/32`).
    #[serde(default)]
    exporters: Vec<String>,
    /// Read as an object only (see `object`).
    #[schema(value_type = Option<Quotas>)]
    quotas: Option<serde_json::Value>,
}

/// `PATCH /api/v1/tenants/{tenant}`: what is given replaces what was (each quota alone).
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantPatch {
    name: Option<String>,
    exporters: Option<Vec<String>>,
    /// Read as an object only (see `object`).
    #[schema(value_type = Option<QuotasPatch>)]
    quotas: Option<serde_json::Value>,
}

#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuotasPatch {
    max_jobs: Option<u32>,
    upload_bytes: Option<u64>,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct TenantList {
    pub tenants: Vec<Tenant>,
}

/// A new token: the only time it is shown.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct TokenMade {
    pub id: String,
    pub tenant: String,
    pub created_ms: u64,
    pub token: String,
    pub note: String,
}

/// What is shown of a token: never the token, nor its hash.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct TokenInfo {
    pub id: String,
    pub tenant: String,
    /// Unix milliseconds.
    pub created_ms: u64,
    /// When it was last used (unix ms, right within a minute); null if never.
    pub last_used_ms: Option<u64>,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct TokenList {
    pub tokens: Vec<TokenInfo>,
}

/// A JSON object as `T`. serde would also take an array for a struct (`[1, 2]` as its fields
/// in order), which the document does not allow.
fn object<T: serde::de::DeserializeOwned>(
    v: serde_json::Value,
    what: &str,
) -> Result<T, Rejection> {
    if !v.is_object() {
        return Err(bad(format!("{what} must be a JSON object")));
    }
    serde_json::from_value(v).map_err(|e| bad(format!("{what}: {e}")))
}

/// Quotas within the integers the document gives them (int32 and int64), which clients in
/// other languages hold.
fn check_quotas(q: &Quotas) -> Result<(), Rejection> {
    if q.max_jobs > i32::MAX as u32 {
        return Err(bad(format!("quotas.max_jobs must be at most {}", i32::MAX)));
    }
    if q.upload_bytes > i64::MAX as u64 {
        return Err(bad(format!(
            "quotas.upload_bytes must be at most {}",
            i64::MAX
        )));
    }
    Ok(())
}

pub(super) fn json_body<T: serde::de::DeserializeOwned + Send>()
-> impl Filter<Extract = (T,), Error = Rejection> + Clone {
    warp::body::content_length_limit(MAX_JSON).and(warp::body::json())
}

pub(super) fn reply(v: &impl serde::Serialize, status: StatusCode) -> warp::reply::Response {
    warp::reply::with_status(warp::reply::json(v), status).into_response()
}

/// The tenant and token routes.
pub fn routes(
    ctx: Ctx,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    let create = warp::path!("api" / "v1" / "tenants")
        .and(warp::post())
        .and(admin(ctx.clone()))
        .and(json_body::<NewTenant>())
        .and_then(|ctx: Ctx, n: NewTenant| async move {
            if !valid_tenant_id(&n.id) {
                return Err(bad(format!("id {:?} must match [a-z0-9-]{{1,63}}", n.id)));
            }
            let exporters = normalise_prefixes(&n.exporters).map_err(bad)?;
            let quotas: Quotas = match n.quotas {
                Some(q) => object(q, "quotas")?,
                None => Quotas::default(),
            };
            check_quotas(&quotas)?;
            earlier_jobs(&ctx, &n.id).await?;
            let t = Tenant {
                name: n.name.unwrap_or_else(|| n.id.clone()),
                id: n.id,
                exporters,
                quotas,
                created_ms: crate::store::unix_ms(),
            };
            let created: bool = ask!(ctx, TenantMsg::Create, t.clone());
            if !created {
                return Err(problem::reject(Problem::new(
                    StatusCode::CONFLICT,
                    "tenant-exists",
                    "The tenant exists",
                    format!("tenant {:?} exists already", t.id),
                )));
            }
            let mut r = reply(&t, StatusCode::CREATED);
            if let Ok(v) = warp::http::HeaderValue::from_str(&format!("/api/v1/tenants/{}", t.id)) {
                r.headers_mut().insert(warp::http::header::LOCATION, v);
            }
            Ok(r)
        });
    let list = warp::path!("api" / "v1" / "tenants")
        .and(warp::get())
        .and(admin(ctx.clone()))
        .and_then(|ctx: Ctx| async move {
            let all: Vec<Tenant> = ask!(ctx, TenantMsg::List);
            Ok::<_, Rejection>(reply(&TenantList { tenants: all }, StatusCode::OK))
        });
    let one = warp::path!("api" / "v1" / "tenants" / String);
    let get =
        one.and(warp::get())
            .and(admin(ctx.clone()))
            .and_then(|id: String, ctx: Ctx| async move {
                let t: Option<Tenant> = ask!(ctx, TenantMsg::Get, id.clone());
                t.map(|t| reply(&t, StatusCode::OK))
                    .ok_or_else(|| no_tenant(&id))
            });
    let patch = one
        .and(warp::patch())
        .and(admin(ctx.clone()))
        .and(json_body::<TenantPatch>())
        .and_then(|id: String, ctx: Ctx, p: TenantPatch| async move {
            let t: Option<Tenant> = ask!(ctx, TenantMsg::Get, id.clone());
            let mut t = t.ok_or_else(|| no_tenant(&id))?;
            if let Some(n) = p.name {
                t.name = n;
            }
            if let Some(e) = p.exporters {
                t.exporters = normalise_prefixes(&e).map_err(bad)?;
            }
            if let Some(q) = p.quotas {
                let q: QuotasPatch = object(q, "quotas")?;
                let mut merged = t.quotas.clone();
                merged.max_jobs = q.max_jobs.unwrap_or(merged.max_jobs);
                merged.upload_bytes = q.upload_bytes.unwrap_or(merged.upload_bytes);
                check_quotas(&merged)?;
                t.quotas = merged;
            }
            let updated: bool = ask!(ctx, TenantMsg::Update, t.clone());
            if !updated {
                return Err(no_tenant(&id));
            }
            Ok(reply(&t, StatusCode::OK))
        });
    let delete = one.and(warp::delete()).and(admin(ctx.clone())).and_then(
        |id: String, ctx: Ctx| async move {
            let gone: bool = ask!(ctx, TenantMsg::Delete, id.clone());
            if gone {
                Ok(StatusCode::NO_CONTENT.into_response())
            } else {
                Err(no_tenant(&id))
            }
        },
    );
    let tokens = warp::path!("api" / "v1" / "tenants" / String / "tokens");
    let add_token = tokens.and(warp::post()).and(admin(ctx.clone())).and_then(
        |id: String, ctx: Ctx| async move {
            let t: Option<Tenant> = ask!(ctx, TenantMsg::Get, id.clone());
            t.ok_or_else(|| no_tenant(&id))?;
            let (token, rec) = ask!(ctx, TenantMsg::AddToken, id.clone());
            let body = TokenMade {
                id: rec.id,
                tenant: rec.tenant,
                created_ms: rec.created_ms,
                token,
                note: "shown once: only its hash is kept".into(),
            };
            Ok(reply(&body, StatusCode::CREATED))
        },
    );
    let list_tokens = tokens.and(warp::get()).and(admin(ctx.clone())).and_then(
        |id: String, ctx: Ctx| async move {
            let t: Option<Tenant> = ask!(ctx, TenantMsg::Get, id.clone());
            t.ok_or_else(|| no_tenant(&id))?;
            let all: Vec<crate::store::TokenRecord> = ask!(ctx, TenantMsg::Tokens, id.clone());
            let used: std::collections::HashMap<String, u64> = ask!(ctx, TenantMsg::LastUsed, id);
            let tokens = all
                .into_iter()
                .map(|t| TokenInfo {
                    last_used_ms: used.get(&t.id).copied(),
                    id: t.id,
                    tenant: t.tenant,
                    created_ms: t.created_ms,
                })
                .collect();
            Ok(reply(&TokenList { tokens }, StatusCode::OK))
        },
    );
    let revoke = warp::path!("api" / "v1" / "tenants" / String / "tokens" / String)
        .and(warp::delete())
        .and(admin(ctx))
        .and_then(|id: String, token: String, ctx: Ctx| async move {
            let gone: bool = ask!(ctx, TenantMsg::Revoke, id.clone(), token.clone());
            if gone {
                Ok(StatusCode::NO_CONTENT.into_response())
            } else {
                Err(problem::reject(Problem::not_found(format!(
                    "no token {token:?} for tenant {id:?}"
                ))))
            }
        });
    create
        .or(list)
        .unify()
        .or(get)
        .unify()
        .or(patch)
        .unify()
        .or(delete)
        .unify()
        .or(add_token)
        .unify()
        .or(list_tokens)
        .unify()
        .or(revoke)
        .unify()
}
