//! Exporter sessions of the whole cluster (`GET /api/v1/sessions`, admin) and of one tenant
//! (`GET /api/v1/tenants/{tenant}/sessions`), a page at a time.
//!
//! A listing asks every session of every node for its statistics (SessionDirectory's
//! `ListCluster`): with a thousand sessions that is milliseconds of work. So requests share
//! listings: one younger than `SNAPSHOT_FOR` answers as it is; an older one (up to `STALE_FOR`)
//! still answers at once while one request's task lists again in the background; only with no
//! listing, or one older than that, does a request wait, for a listing made once however many
//! wait. Each answer says how old its figures are (`as_of_ms`). Pages rendered from a listing
//! are kept with it, so clients polling the same page cost a copy, not a rendering.

use super::problem::{self, Problem};
use super::routes::{Ctx, admin};
use crate::actors::directory::{self, SessionInfo, SessionList};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use warp::{Filter, Rejection};

/// A listing this young answers without a new one being made.
pub const SNAPSHOT_FOR: Duration = Duration::from_millis(500);
/// A listing this young still answers at once while a new one is made.
pub const STALE_FOR: Duration = Duration::from_secs(5);
/// A cursor is a node name and a session name: longer is not one.
const MAX_CURSOR: usize = 512;
/// Bytes of rendered pages kept per listing (a client asking for many different pages costs
/// renderings, not memory).
const PAGES_KEPT_BYTES: usize = 8 << 20;

/// A listing, sorted by its cursor key, with the pages rendered from it.
struct Snapshot {
    at: Instant,
    as_of_ms: u64,
    sessions: Vec<(String, SessionInfo)>,
    errors: Vec<String>,
    pages: std::sync::Mutex<(HashMap<PageKey, bytes::Bytes>, usize)>,
}

/// (tenant, after, limit)
type PageKey = (Option<String>, Option<String>, usize);

#[derive(Default)]
pub struct Snapshots {
    last: std::sync::Mutex<Option<Arc<Snapshot>>>,
    /// A background listing is under way.
    refreshing: AtomicBool,
    /// Held by the request that lists while others wait for it.
    listing: tokio::sync::Mutex<()>,
}

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
    /// When the figures were gathered (unix ms): usually within half a second of the answer,
    /// at most 5 s (a listing that old answers while a new one is made).
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
    let limit = problem::page_limit(q.limit)?;
    if q.after.as_ref().is_some_and(|a| a.len() > MAX_CURSOR) {
        return Err(problem::bad_query(format!(
            "after is a cursor of at most {MAX_CURSOR} bytes (a page's next_after)"
        )));
    }
    let snap = snapshot(&ctx).await?;
    let key: PageKey = (tenant, q.after, limit);
    let cached = snap
        .pages
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .0
        .get(&key)
        .cloned();
    let body = match cached {
        Some(b) => b,
        None => {
            let b = render(&snap, &key);
            let mut pages = snap.pages.lock().unwrap_or_else(|p| p.into_inner());
            let cost = b.len() + key.1.as_ref().map_or(0, String::len) + 64;
            if pages.1 + cost <= PAGES_KEPT_BYTES {
                pages.1 += cost;
                pages.0.insert(key, b.clone());
            }
            b
        }
    };
    let mut r = warp::reply::Response::new(body.into());
    r.headers_mut().insert(
        warp::http::header::CONTENT_TYPE,
        warp::http::HeaderValue::from_static("application/json"),
    );
    Ok(r)
}

fn render(snap: &Snapshot, (tenant, after, limit): &PageKey) -> bytes::Bytes {
    let sessions = &snap.sessions;
    let start = match after {
        Some(after) => sessions.partition_point(|(key, _)| key.as_str() <= after.as_str()),
        None => 0,
    };
    let mut taken: Vec<&(String, SessionInfo)> = sessions[start..]
        .iter()
        .filter(|(_, s)| tenant.as_ref().is_none_or(|t| &s.stats.tenant == t))
        .take(limit + 1)
        .collect();
    let more = taken.len() > *limit;
    taken.truncate(*limit);
    let page = SessionPage {
        next_after: if more {
            taken.last().map(|(key, _)| key.clone())
        } else {
            None
        },
        sessions: taken.into_iter().map(|(_, s)| s.clone()).collect(),
        errors: snap.errors.clone(),
        as_of_ms: snap.as_of_ms,
    };
    serde_json::to_vec(&page).unwrap_or_default().into()
}

struct Refreshed(Arc<Snapshots>);

impl Drop for Refreshed {
    fn drop(&mut self) {
        self.0.refreshing.store(false, Ordering::Release);
    }
}

/// A listing to answer from (see the module's comment for which).
async fn snapshot(ctx: &Ctx) -> Result<Arc<Snapshot>, Rejection> {
    let snaps = &ctx.sessions;
    let last = snaps.last.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if let Some(s) = last {
        let age = s.at.elapsed();
        if age < SNAPSHOT_FOR {
            return Ok(s);
        }
        if age < STALE_FOR {
            if !snaps.refreshing.swap(true, Ordering::AcqRel) {
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    // Cleared however the task ends (a panic included).
                    let _done = Refreshed(ctx.sessions.clone());
                    if let Err(e) = list(&ctx).await {
                        tracing::debug!(error = ?e, "sessions not listed again");
                    }
                });
            }
            return Ok(s);
        }
    }
    let _one = snaps.listing.lock().await;
    // Made by the request that held the lock before this one?
    let last = snaps.last.lock().unwrap_or_else(|p| p.into_inner()).clone();
    match last {
        Some(s) if s.at.elapsed() < SNAPSHOT_FOR => Ok(s),
        _ => list(ctx).await,
    }
}

/// Lists the cluster's sessions and keeps the listing.
async fn list(ctx: &Ctx) -> Result<Arc<Snapshot>, Rejection> {
    let Some(d) = directory::local() else {
        return Err(problem::reject(Problem::unavailable(
            "the session directory is restarting".into(),
        )));
    };
    let list: SessionList =
        directory::call(&d, &directory::LIST_CLUSTER, ctx.timeout.as_millis() as u64)
            .await
            .map_err(|e| {
                problem::reject(Problem::unavailable(format!(
                    "listing the cluster's sessions: {e}"
                )))
            })?;
    let mut sessions: Vec<(String, SessionInfo)> = list
        .sessions
        .into_iter()
        .map(|s| (format!("{}/{}", s.node, s.session), s))
        .collect();
    sessions.sort_by(|a, b| a.0.cmp(&b.0));
    let s = Arc::new(Snapshot {
        at: Instant::now(),
        as_of_ms: crate::store::unix_ms(),
        sessions,
        errors: list.errors,
        pages: Default::default(),
    });
    *ctx.sessions.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(s.clone());
    Ok(s)
}
