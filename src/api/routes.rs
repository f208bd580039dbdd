//! The routes. Each handler asks actors by message (by registered name, or through a
//! `ractor::pg` group for the whole cluster), with the request timeout, and never reaches into
//! their state.

use super::auth::AdminToken;
use super::problem::{self, Problem};
use crate::actors::cluster::{CLUSTER_MEMBER, ClusterMsg};
use crate::actors::collector::{COLLECTOR_NAME, CollectorMsg};
use crate::actors::directory::{self, DIRECTORY_GROUP, DirectoryMsg};
use crate::actors::telemetry_sampler::{SamplerMsg, TELEMETRY_SAMPLER};
use crate::actors::template_cache::{CacheMsg, TEMPLATE_CACHE};
use ractor::ActorRef;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

/// What every handler may use.
#[derive(Clone)]
pub struct Ctx {
    pub node: String,
    pub admin: AdminToken,
    pub timeout: Duration,
    /// Set when the node starts draining: `/readyz` says so, so traffic goes elsewhere.
    pub draining: Arc<AtomicBool>,
    /// Whether this node runs a collector and a cluster member (what readiness waits for).
    pub collector: bool,
    pub cluster: bool,
    /// The last listing of the cluster's sessions, shared by requests close together.
    pub sessions: Arc<super::sessions::Snapshots>,
    /// Uploads in progress per tenant on this node (counted by the job quota).
    pub uploading: Arc<super::jobs::UploadsInProgress>,
    /// Connections closed at `api.max_connections`.
    pub refused: Arc<super::server::Refused>,
    /// `storage.dir`: uploads and job results.
    pub storage: std::path::PathBuf,
    pub max_upload: u64,
    /// Names the fields of templates.
    pub registry: Arc<crate::wire::registry::Registry>,
    /// `mediator.tenant_network_sinks`: whether tenants' streams may send over the network.
    pub tenant_network_sinks: bool,
    /// Whether the node has `redis.url` (a `timeseries` sink may keep its series there).
    pub series_redis: bool,
}

/// `GET /healthz`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Health {
    /// Always `ok`: the process answers.
    #[schema(value_type = String)]
    pub status: &'static str,
    pub node: String,
}

/// `GET /readyz` (200 when ready, 503 when not).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Readiness {
    pub ready: bool,
    pub node: String,
    /// Each check and what it found (`draining`, `collector`, `template_store`, `cluster`).
    #[schema(value_type = Object)]
    pub checks: serde_json::Map<String, serde_json::Value>,
}

/// Every node's answer (`GET /api/v1/cluster`, `GET /debug/actors`): a node that did not
/// answer in time has an `error` instead.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct NodeViews {
    /// The node that answered the request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[schema(value_type = Vec<Object>)]
    pub nodes: Vec<serde_json::Value>,
}

fn with(ctx: Ctx) -> impl Filter<Extract = (Ctx,), Error = std::convert::Infallible> + Clone {
    warp::any().map(move || ctx.clone())
}

/// Passes with the context when the request carries the admin token.
pub(crate) fn admin(ctx: Ctx) -> impl Filter<Extract = (Ctx,), Error = Rejection> + Clone {
    with(ctx)
        .and(warp::header::optional::<String>("authorization"))
        .and_then(|ctx: Ctx, auth: Option<String>| async move {
            if ctx.admin.admits(auth.as_deref()) {
                Ok(ctx)
            } else if auth.is_none() {
                Err(problem::reject(Problem::unauthorized(
                    "send Authorization: Bearer <token>",
                )))
            } else {
                Err(problem::reject(Problem::unauthorized(
                    "the token is not valid",
                )))
            }
        })
}

/// Every route of the API, unanswered rejections included.
pub fn all(ctx: Ctx) -> impl Filter<Extract = (impl Reply,), Error = Rejection> + Clone {
    let healthz = warp::path!("healthz")
        .and(warp::get())
        .and(with(ctx.clone()))
        .map(|ctx: Ctx| {
            warp::reply::json(&Health {
                status: "ok",
                node: ctx.node,
            })
        });
    let readyz = warp::path!("readyz")
        .and(warp::get())
        .and(with(ctx.clone()))
        .then(ready);
    let openapi = warp::path!("openapi.json").and(warp::get()).map(|| {
        let mut r = warp::reply::Response::new(super::openapi::document().into());
        r.headers_mut().insert(
            warp::http::header::CONTENT_TYPE,
            warp::http::HeaderValue::from_static("application/json"),
        );
        r
    });
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(with(ctx.clone()))
        .then(metrics);
    let cluster = warp::path!("api" / "v1" / "cluster")
        .and(warp::get())
        .and(admin(ctx.clone()))
        .and_then(cluster);
    let sessions = super::sessions::routes(ctx.clone());
    let actors = warp::path!("debug" / "actors")
        .and(warp::get())
        .and(admin(ctx.clone()))
        .and(warp::header::optional::<String>("accept"))
        .and_then(actors);
    let jobs = super::jobs::routes(ctx.clone(), ctx.storage.clone(), ctx.max_upload);
    let tenants = super::tenants::routes(ctx.clone());
    let templates = super::templates::routes(ctx.clone());
    let streams = super::streams::routes(ctx.clone());
    let timeseries = super::timeseries::routes(ctx.clone());
    let console = super::console::routes();
    healthz
        .map(Reply::into_response)
        .or(readyz.map(Reply::into_response))
        .unify()
        .or(metrics.map(Reply::into_response))
        .unify()
        .or(openapi)
        .unify()
        .or(sessions)
        .unify()
        .or(cluster.map(Reply::into_response))
        .unify()
        .or(actors)
        .unify()
        .or(tenants)
        .unify()
        .or(jobs)
        .unify()
        .or(templates)
        .unify()
        .or(streams)
        .unify()
        .or(timeseries)
        .unify()
        .or(console)
        .unify()
}

fn timeout_ms(ctx: &Ctx) -> u64 {
    ctx.timeout.as_millis() as u64
}

pub(crate) fn local<M: ractor::Message>(name: &str) -> Option<ActorRef<M>> {
    ractor::registry::where_is(name).map(ActorRef::from)
}

/// Ready: not draining; the collector's listeners bound (when it runs); the template store
/// reachable or knowingly degraded (collection goes on with local templates); the cluster
/// member running (when configured). 503 with the failing checks otherwise.
async fn ready(ctx: Ctx) -> warp::reply::Response {
    let mut checks = serde_json::Map::new();
    let mut ok = true;
    if ctx.draining.load(Ordering::Relaxed) {
        ok = false;
        checks.insert("draining".into(), true.into());
    }
    if ctx.collector {
        let bound = match local::<CollectorMsg>(COLLECTOR_NAME) {
            Some(c) => ractor::call_t!(c, CollectorMsg::ListenAddrs, timeout_ms(&ctx))
                .map(|(t, u)| serde_json::json!({"tcp": t, "udp": u}))
                .ok(),
            None => None,
        };
        ok &= bound.is_some();
        checks.insert(
            "collector".into(),
            bound.unwrap_or_else(|| "not answering".into()),
        );
    }
    match local::<CacheMsg>(TEMPLATE_CACHE) {
        Some(c) => match ractor::call_t!(c, CacheMsg::Status, timeout_ms(&ctx)) {
            Ok(s) => {
                checks.insert(
                    "template_store".into(),
                    if s.store_healthy { "ok" } else { "degraded" }.into(),
                );
            }
            Err(_) => {
                ok = false;
                checks.insert("template_store".into(), "cache not answering".into());
            }
        },
        None => {
            ok = false;
            checks.insert("template_store".into(), "cache restarting".into());
        }
    }
    if ctx.cluster {
        let member = local::<ClusterMsg>(CLUSTER_MEMBER).is_some();
        ok &= member;
        checks.insert(
            "cluster".into(),
            if member {
                "member running"
            } else {
                "no member"
            }
            .into(),
        );
    }
    let body = Readiness {
        ready: ok,
        node: ctx.node,
        checks,
    };
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    warp::reply::with_status(warp::reply::json(&body), status).into_response()
}

/// The node's metrics in the Prometheus text format: the TelemetrySampler is asked to sample
/// first (so the actors' figures are those of now), then every instrument is rendered. A
/// sampler that does not answer in time leaves its figures as last sampled.
async fn metrics(ctx: Ctx) -> warp::reply::Response {
    if let Some(s) = local::<SamplerMsg>(TELEMETRY_SAMPLER) {
        let _ = ractor::call_t!(s, SamplerMsg::Sample, timeout_ms(&ctx));
    }
    let mut r = warp::reply::Response::new(crate::telemetry::prometheus_text().into());
    r.headers_mut().insert(
        warp::http::header::CONTENT_TYPE,
        warp::http::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}

/// Every node's view of the cluster (its peers, seeds and last errors), asked through the
/// directories' process group; a node that does not answer in time is named as such.
async fn cluster(ctx: Ctx) -> Result<warp::reply::Response, Rejection> {
    let views = every_node(&ctx, &directory::CLUSTER_VIEW).await;
    Ok(warp::reply::json(&NodeViews {
        node: Some(ctx.node),
        nodes: views,
    })
    .into_response())
}

/// One JSON answer of every node, asked of each directory in the process group at once; a node
/// that does not answer in time is named as such instead of holding up the others.
async fn every_node(
    ctx: &Ctx,
    ask: &'static directory::Ask<directory::Json>,
) -> Vec<serde_json::Value> {
    let members = ractor::pg::get_members(&DIRECTORY_GROUP.to_string());
    let ms = timeout_ms(ctx);
    futures_util::future::join_all(members.into_iter().map(|m| async move {
        let d: ActorRef<DirectoryMsg> = m.clone().into();
        match directory::call(&d, ask, ms).await {
            Ok(json) => serde_json::from_str::<serde_json::Value>(&json.0)
                .unwrap_or_else(|e| serde_json::json!({"error": e.to_string()})),
            Err(e) => serde_json::json!({
                "directory": m.get_id().to_string(),
                "error": format!("no answer: {e}"),
            }),
        }
    }))
    .await
}

/// Every node's supervision tree, asked through the directories' process group; a node that
/// does not answer in time is named as such. JSON, or with `Accept: text/html` a page whose
/// subtrees fold and which refreshes itself.
async fn actors(ctx: Ctx, accept: Option<String>) -> Result<warp::reply::Response, Rejection> {
    let mut nodes = every_node(&ctx, &directory::ACTOR_TREE).await;
    nodes.sort_by_key(|n| n["node"].as_str().unwrap_or_default().to_string());
    if accept.is_some_and(|a| a.contains("text/html")) {
        let mut page = String::from(
            "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"5\">\
             <title>ipfixsvc actors</title><style>body{font-family:sans-serif}details{margin-left:1.2em}\
             .s{color:#666;font-size:90%}</style></head><body><h1>Actors</h1>",
        );
        for n in &nodes {
            page.push_str(&format!(
                "<h2>{}</h2>",
                html(n["node"].as_str().unwrap_or("?"))
            ));
            match n.get("tree") {
                Some(t) => tree_html(t, &mut page),
                None => page.push_str(&format!("<p>{}</p>", html(&n["error"].to_string()))),
            }
        }
        page.push_str("</body></html>");
        return Ok(warp::reply::html(page).into_response());
    }
    Ok(warp::reply::json(&NodeViews { node: None, nodes }).into_response())
}

fn html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn tree_html(t: &serde_json::Value, out: &mut String) {
    let name = t["name"].as_str().unwrap_or("(unnamed)");
    let children = t["children"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let mut facts = format!(
        "{} · {} {} · {} children",
        t["kind"].as_str().unwrap_or(""),
        t["id"].as_str().unwrap_or(""),
        t["status"].as_str().unwrap_or(""),
        children.len()
    );
    if let Some(n) = t["restarts"].as_u64().filter(|n| *n > 0) {
        facts.push_str(&format!(" · {n} restarts"));
        if let Some(why) = t["last_failure"].as_str() {
            facts.push_str(&format!(" (last: {why})"));
        }
    }
    match &t["figures"] {
        serde_json::Value::Object(f) => {
            for (k, v) in f {
                facts.push_str(&format!(" · {k} {v}"));
            }
        }
        serde_json::Value::String(s) => facts.push_str(&format!(" · {s}")),
        _ => {}
    }
    out.push_str(&format!(
        "<details open><summary>{} <span class=\"s\">{}</span></summary>",
        html(name),
        html(&facts)
    ));
    for c in children {
        tree_html(c, out);
    }
    if let Some(n) = t.get("children_not_shown") {
        out.push_str(&format!("<p class=\"s\">{n} more not shown</p>"));
    }
    out.push_str("</details>");
}
