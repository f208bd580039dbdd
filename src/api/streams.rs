//! A tenant's export streams: made, replaced and deleted at run time, kept in the store (so
//! every node runs the same set, and a change reaches every node's mediator at once), each
//! shown with its state summed over the nodes that run it and per node.
//!
//! A tenant's stream takes that tenant's records only and cannot reach outside the node's
//! storage (`mediation::spec::for_tenant`): its NDJSON file is a relative path under
//! `<storage.dir>/streams/<tenant>/`, its Crypto-PAn key inline.

use super::problem::{self, Problem};
use super::routes::Ctx;
use super::tenants::{ask, json_body, reply};
use crate::actors::directory::{self, StreamStateList};
use crate::actors::mediator::StreamState;
use crate::actors::tenants::TenantMsg;
use crate::mediation::spec::{Pipeline, SeriesKeeping, StreamSpec, check_name, for_tenant};
use crate::store::streams::{MAX_STREAMS_PER_TENANT, Put, StoredStream};
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

/// One stream: its configuration as given, and how it runs.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct StreamView {
    pub name: String,
    pub tenant: String,
    pub spec: StreamSpec,
    pub created_ms: u64,
    pub updated_ms: u64,
    /// Summed over the nodes that run it.
    pub totals: StreamTotals,
    /// Each node's figures.
    pub nodes: Vec<StreamState>,
}

/// A stream's figures over the cluster.
#[derive(Debug, Default, serde::Serialize, utoipa::ToSchema)]
pub struct StreamTotals {
    /// `running` (on every node that reports it), `failed: <why>` (on some node),
    /// `starting` (no node reports it yet).
    pub state: String,
    pub queue_bytes: u64,
    pub records_in: u64,
    pub records_out: u64,
    pub filtered: u64,
    pub dropped: u64,
    pub sink_errors: u64,
    pub restarts: u64,
    /// A network sink's circuit breaker, the worst over the nodes: `closed`, `half-open`,
    /// `open`.
    pub breaker: String,
}

#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct StreamList {
    pub tenant: String,
    pub streams: Vec<StreamView>,
    /// Nodes that did not say how their streams run.
    pub errors: Vec<String>,
}

fn invalid(detail: String) -> Rejection {
    problem::reject(Problem::new(
        StatusCode::BAD_REQUEST,
        "invalid-stream",
        "Invalid stream",
        detail,
    ))
}

fn no_stream(tenant: &str, name: &str) -> Rejection {
    problem::reject(Problem::not_found(format!(
        "tenant {tenant:?} has no stream {name:?}"
    )))
}

/// The body as a stream, checked as the nodes will run it.
fn check(ctx: &Ctx, tenant: &str, body: serde_json::Value) -> Result<StreamSpec, Rejection> {
    if !body.is_object() {
        return Err(invalid("the body must be a JSON object".into()));
    }
    let spec: StreamSpec = serde_json::from_value(body).map_err(|e| invalid(e.to_string()))?;
    let run = for_tenant(&spec, tenant, &ctx.storage, ctx.tenant_network_sinks)
        .map_err(|e| invalid(e.to_string()))?;
    Pipeline::build(&run, &ctx.registry).map_err(|e| invalid(e.to_string()))?;
    if spec.sink.series_keeping() == Some(SeriesKeeping::Redis) && !ctx.series_redis {
        return Err(invalid(
            "sink.store: \"redis\" needs the node's redis.url, and this node has none (use \"memory\")"
                .into(),
        ));
    }
    Ok(spec)
}

/// Every node's states of the tenant's streams (through this node's SessionDirectory).
async fn states(ctx: &Ctx) -> StreamStateList {
    let Some(d) = directory::local() else {
        return StreamStateList {
            errors: vec!["the session directory is restarting".into()],
            ..StreamStateList::default()
        };
    };
    let ms = ctx.timeout.as_millis() as u64;
    let msg = if ctx.cluster {
        directory::call(&d, &directory::STREAMS_CLUSTER, ms).await
    } else {
        directory::call(&d, &directory::STREAMS, ms).await
    };
    msg.unwrap_or_else(|e| StreamStateList {
        errors: vec![format!("asking the session directory: {e}")],
        ..StreamStateList::default()
    })
}

fn view(s: StoredStream, all: &StreamStateList) -> StreamView {
    let nodes: Vec<StreamState> = all
        .streams
        .iter()
        .filter(|n| n.tenant.as_deref() == Some(s.tenant.as_str()) && n.name == s.spec.name)
        .cloned()
        .collect();
    let mut t = StreamTotals {
        state: if nodes.is_empty() {
            "starting".into()
        } else {
            nodes.iter().find(|n| n.state != "running").map_or_else(
                || "running".into(),
                |n| format!("{} (on {})", n.state, n.node),
            )
        },
        breaker: ["open", "half-open"]
            .into_iter()
            .find(|b| nodes.iter().any(|n| n.breaker == *b))
            .unwrap_or("closed")
            .to_string(),
        ..StreamTotals::default()
    };
    for n in &nodes {
        t.queue_bytes += n.queue_bytes;
        t.records_in += n.records_in;
        t.records_out += n.records_out;
        t.filtered += n.filtered;
        t.dropped += n.dropped;
        t.sink_errors += n.sink_errors;
        t.restarts += n.restarts;
    }
    StreamView {
        name: s.spec.name.clone(),
        tenant: s.tenant,
        spec: s.spec,
        created_ms: s.created_ms,
        updated_ms: s.updated_ms,
        totals: t,
        nodes,
    }
}

fn conflict(tenant: &str, name: &str, outcome: Put) -> Rejection {
    match outcome {
        Put::Exists => problem::reject(Problem::new(
            StatusCode::CONFLICT,
            "stream-exists",
            "The stream exists",
            format!("tenant {tenant:?} has a stream {name:?} already (PUT replaces it)"),
        )),
        _ => problem::reject(Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "quota-streams",
            "Too many streams",
            format!("a tenant has at most {MAX_STREAMS_PER_TENANT} streams"),
        )),
    }
}

async fn write(
    ctx: Ctx,
    tenant: String,
    spec: StreamSpec,
    create: bool,
) -> Result<warp::reply::Response, Rejection> {
    let now = crate::store::unix_ms();
    let stored = StoredStream {
        tenant: tenant.clone(),
        spec,
        created_ms: now,
        updated_ms: now,
    };
    let name = stored.spec.name.clone();
    let outcome: Put = ask!(ctx, TenantMsg::PutStream, Box::new(stored.clone()), create);
    let status = match outcome {
        Put::Created => StatusCode::CREATED,
        Put::Replaced => StatusCode::OK,
        other => return Err(conflict(&tenant, &name, other)),
    };
    let shown: Option<StoredStream> = ask!(ctx, TenantMsg::GetStream, tenant.clone(), name.clone());
    let shown = shown.unwrap_or(stored);
    let mut r = reply(&view(shown, &StreamStateList::default()), status);
    if status == StatusCode::CREATED
        && let Ok(v) =
            warp::http::HeaderValue::from_str(&format!("/api/v1/tenants/{tenant}/streams/{name}"))
    {
        r.headers_mut().insert(warp::http::header::LOCATION, v);
    }
    Ok(r)
}

pub fn routes(
    ctx: Ctx,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    let auth = super::tenants::authorized(ctx);
    let all = warp::path!("api" / "v1" / "tenants" / String / "streams");
    let one = warp::path!("api" / "v1" / "tenants" / String / "streams" / String);
    let create = all
        .and(warp::post())
        .and(auth.clone())
        .and(json_body::<serde_json::Value>())
        .and_then(|tenant: String, ctx: Ctx, body| async move {
            let spec = check(&ctx, &tenant, body)?;
            write(ctx, tenant, spec, true).await
        });
    let list =
        all.and(warp::get())
            .and(auth.clone())
            .and_then(|tenant: String, ctx: Ctx| async move {
                let stored: Vec<StoredStream> = ask!(ctx, TenantMsg::ListStreams, tenant.clone());
                let st = states(&ctx).await;
                let streams = stored.into_iter().map(|s| view(s, &st)).collect();
                Ok::<_, Rejection>(reply(
                    &StreamList {
                        tenant,
                        streams,
                        errors: st.errors,
                    },
                    StatusCode::OK,
                ))
            });
    let get = one.and(warp::get()).and(auth.clone()).and_then(
        |tenant: String, name: String, ctx: Ctx| async move {
            let s: Option<StoredStream> =
                ask!(ctx, TenantMsg::GetStream, tenant.clone(), name.clone());
            let s = s.ok_or_else(|| no_stream(&tenant, &name))?;
            let st = states(&ctx).await;
            Ok::<_, Rejection>(reply(&view(s, &st), StatusCode::OK))
        },
    );
    let put = one
        .and(warp::put())
        .and(auth.clone())
        .and(json_body::<serde_json::Value>())
        .and_then(|tenant: String, name: String, ctx: Ctx, body| async move {
            check_name(&name).map_err(|e| invalid(format!("name: {e}")))?;
            let spec = check(&ctx, &tenant, body)?;
            if spec.name != name {
                return Err(invalid(format!(
                    "the body names stream {:?}, the path {name:?}",
                    spec.name
                )));
            }
            write(ctx, tenant, spec, false).await
        });
    let delete = one.and(warp::delete()).and(auth).and_then(
        |tenant: String, name: String, ctx: Ctx| async move {
            let gone: bool = ask!(ctx, TenantMsg::DeleteStream, tenant.clone(), name.clone());
            if !gone {
                return Err(no_stream(&tenant, &name));
            }
            Ok(warp::reply::with_status(warp::reply(), StatusCode::NO_CONTENT).into_response())
        },
    );
    create
        .or(list)
        .unify()
        .or(get)
        .unify()
        .or(put)
        .unify()
        .or(delete)
        .unify()
}
