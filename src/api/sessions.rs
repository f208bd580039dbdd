//! Exporter sessions of the whole cluster (`GET /api/v1/sessions`, admin) and of one tenant
//! (`GET /api/v1/tenants/{tenant}/sessions`), a page at a time.
//!
//! A listing asks every session of every node for its statistics (SessionDirectory's
//! `ListCluster`): with a thousand sessions that is milliseconds of work. Requests within
//! `SNAPSHOT_FOR` of each other therefore share one listing, made once however many ask at the
//! same moment; each answer says how old its figures are (`as_of_ms`).

use super::problem::{self, Problem};
use super::routes::{Ctx, admin};
use crate::actors::directory::{DIRECTORY_NAME, DirectoryMsg, SessionInfo, SessionList};
use ractor::ActorRef;
use std::sync::Arc;
use std::time::{Duration, Instant};
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

/// How long one listing of the cluster's sessions answers requests.
pub const SNAPSHOT_FOR: Duration = Duration::from_millis(500);

/// The last listing, sorted by its cursor key.
struct Snapshot {
    at: Instant,
    as_of_ms: u64,
    sessions: Arc<Vec<(String, SessionInfo)>>,
    errors: Arc<Vec<String>>,
}

#[derive(Default)]
pub struct Snapshots(tokio::sync::Mutex<Option<Snapshot>>);

#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SessionQuery {
    /// At most this many (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u16>,
    /// Sessions after this one (the previous page's `next_after`).
    after: Option<String>,
}

/// A page of sessions, ordered by node and session name.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct SessionPage {
    pub sessions: Vec<SessionInfo>,
    /// Nodes or sessions that could not be asked.
    pub errors: Vec<String>,
    /// Give it as `after` for the next page; null on the last.
    pub next_after: Option<String>,
    /// When the figures were gathered (unix ms): at most half a second before the answer.
    pub as_of_ms: u64,
}

pub fn routes(
    ctx: Ctx,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    let all = warp::path!("api" / "v1" / "sessions")
        .and(warp::get())
        .and(admin(ctx.clone()))
        .and(warp::query::<SessionQuery>())
        .and_then(|ctx: Ctx, q: SessionQuery| page(ctx, None, q));
    let tenant = warp::path!("api" / "v1" / "tenants" / String / "sessions")
        .and(warp::get())
        .and(super::tenants::authorized(ctx))
        .and(warp::query::<SessionQuery>())
        .and_then(|tenant: String, ctx: Ctx, q: SessionQuery| page(ctx, Some(tenant), q));
    all.or(tenant).unify()
}

async fn page(
    ctx: Ctx,
    tenant: Option<String>,
    q: SessionQuery,
) -> Result<warp::reply::Response, Rejection> {
    let limit = usize::from(q.limit.unwrap_or(100));
    if !(1..=1000).contains(&limit) {
        return Err(problem::reject(Problem::new(
            StatusCode::BAD_REQUEST,
            "bad-query",
            "Bad query string",
            format!("limit must be 1 to 1000, not {limit}"),
        )));
    }
    let (sessions, errors, as_of_ms) = snapshot(&ctx).await?;
    let start = match &q.after {
        Some(after) => sessions.partition_point(|(key, _)| key.as_str() <= after.as_str()),
        None => 0,
    };
    let mut taken: Vec<&(String, SessionInfo)> = sessions[start..]
        .iter()
        .filter(|(_, s)| tenant.as_ref().is_none_or(|t| &s.stats.tenant == t))
        .take(limit + 1)
        .collect();
    let more = taken.len() > limit;
    taken.truncate(limit);
    let body = SessionPage {
        next_after: if more {
            taken.last().map(|(key, _)| key.clone())
        } else {
            None
        },
        sessions: taken.into_iter().map(|(_, s)| s.clone()).collect(),
        errors: errors.to_vec(),
        as_of_ms,
    };
    Ok(warp::reply::json(&body).into_response())
}

type Listed = (Arc<Vec<(String, SessionInfo)>>, Arc<Vec<String>>, u64);

/// The cluster's sessions, listed again when the last listing is older than `SNAPSHOT_FOR`.
/// The lock is held while listing: requests that arrive meanwhile wait for that one listing.
async fn snapshot(ctx: &Ctx) -> Result<Listed, Rejection> {
    let mut held = ctx.sessions.0.lock().await;
    if let Some(s) = held.as_ref()
        && s.at.elapsed() < SNAPSHOT_FOR
    {
        return Ok((s.sessions.clone(), s.errors.clone(), s.as_of_ms));
    }
    let Some(d) = ractor::registry::where_is(DIRECTORY_NAME).map(ActorRef::<DirectoryMsg>::from)
    else {
        return Err(problem::reject(Problem::unavailable(
            "the session directory is restarting".into(),
        )));
    };
    let list: SessionList =
        ractor::call_t!(d, DirectoryMsg::ListCluster, ctx.timeout.as_millis() as u64).map_err(
            |e| {
                problem::reject(Problem::unavailable(format!(
                    "listing the cluster's sessions: {e}"
                )))
            },
        )?;
    let mut sessions: Vec<(String, SessionInfo)> = list
        .sessions
        .into_iter()
        .map(|s| (format!("{}/{}", s.node, s.session), s))
        .collect();
    sessions.sort_by(|a, b| a.0.cmp(&b.0));
    let s = Snapshot {
        at: Instant::now(),
        as_of_ms: crate::store::unix_ms(),
        sessions: Arc::new(sessions),
        errors: Arc::new(list.errors),
    };
    let out = (s.sessions.clone(), s.errors.clone(), s.as_of_ms);
    *held = Some(s);
    Ok(out)
}
