//! Conversion jobs over HTTP: a capture uploaded as the request body (streamed to
//! `<storage.dir>/uploads/{tenant}/`, never held in memory) becomes a job of the JobSupervisor;
//! its record, list, cancel and result. Job inputs come only from the tenant's upload folder.
//!
//! The result is served by warp's file server from `<storage.dir>/jobs/{id}/result` (a hard
//! link the job makes to `result.ipfix`), so it streams with `Range` support, after the job is
//! found to be this tenant's and to have succeeded.

use super::problem::{self, Problem};
use super::routes::Ctx;
use crate::actors::jobs::{CancelError, Cancelled, JOB_SUPERVISOR, JobMsg, SubmitError};
use crate::store::jobs::{JobOptions, JobSpec};
use crate::store::{JobId, JobRecord, JobState};
use bytes::Buf;
use futures_util::{Stream, StreamExt};
use ractor::ActorRef;
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

/// The conversion's options, as query parameters (the defaults are `ipfixsvc convert`'s).
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// One record per direction instead of RFC 5103 biflows (default false).
    uniflow: Option<bool>,
    /// Seconds without a packet after which a flow ends (default 300).
    idle_timeout: Option<u64>,
    /// Seconds after which a long flow is exported and goes on (default 1800).
    active_timeout: Option<u64>,
    /// Flows held at once; past it the oldest are exported (default 1,000,000).
    max_flows: Option<u64>,
    /// The Observation Domain id of the result (default 0).
    domain: Option<u32>,
}

#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only jobs in this state.
    state: Option<JobState>,
    /// At most this many (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u16>,
    /// Jobs submitted before this one (the previous page's `next_before`).
    before: Option<JobId>,
}

/// A page of a tenant's jobs, newest first.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct JobList {
    pub jobs: Vec<JobRecord>,
    /// Give it as `before` for the next page; null on the last.
    pub next_before: Option<JobId>,
}

fn jobs() -> Result<ActorRef<JobMsg>, Rejection> {
    ractor::registry::where_is(JOB_SUPERVISOR)
        .map(ActorRef::from)
        .ok_or_else(|| {
            problem::reject(Problem::unavailable(
                "this node runs no jobs (role jobs)".into(),
            ))
        })
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> Rejection {
    problem::reject(Problem::unavailable(format!("{what}: {e}")))
}

fn json_status(v: &impl serde::Serialize, status: StatusCode) -> warp::reply::Response {
    warp::reply::with_status(warp::reply::json(v), status).into_response()
}

/// Every job route.
pub fn routes(
    ctx: Ctx,
    storage: PathBuf,
    max_upload: u64,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    let jobs = || warp::path!("api" / "v1" / "tenants" / String / "jobs" / ..);
    let auth = move || super::tenants::authorized(ctx.clone());
    let upload_dir = storage.join("uploads");
    let submit = jobs()
        .and(warp::path!("pcap-conversion"))
        .and(warp::post())
        .and(auth())
        .and(warp::query::<UploadQuery>())
        .and(warp::body::stream())
        .and_then(move |tenant: String, ctx: Ctx, q: UploadQuery, body| {
            let dir = upload_dir.join(&tenant);
            async move { submit(ctx, tenant, q, body, dir, max_upload).await }
        });
    let list = jobs()
        .and(warp::path::end())
        .and(warp::get())
        .and(auth())
        .and(warp::query::<ListQuery>())
        .and_then(list);
    // The id is taken as text and parsed here: one that is not a job id is a job that does not
    // exist (404), not a route that does not (which warp would answer with another route's 405).
    let get = jobs()
        .and(warp::path!(String))
        .and(warp::get())
        .and(job_path())
        .and(auth())
        .and_then(|tenant: String, id: String, ctx: Ctx| async move {
            let r = record(&ctx, &tenant, job_id(&tenant, &id)?).await?;
            Ok::<_, Rejection>(warp::reply::json(&r).into_response())
        });
    let cancel = jobs()
        .and(warp::path!(String))
        .and(warp::delete())
        .and(job_path())
        .and(auth())
        .and_then(|tenant: String, id: String, ctx: Ctx| async move {
            cancel(tenant.clone(), job_id(&tenant, &id)?, ctx).await
        });
    let jobs_dir = storage.join("jobs");
    let result = jobs()
        .and(warp::get())
        .and(warp::path::peek())
        .and_then(|tenant: String, tail: warp::path::Peek| async move {
            // `{id}/result` only: anything else under the folder is not served.
            match tail.as_str().split_once('/') {
                Some((id, "result")) => Ok((tenant, id.to_string())),
                _ => Err(warp::reject::not_found()),
            }
        })
        .untuple_one()
        .and(auth())
        .and_then(|tenant: String, id: String, ctx: Ctx| async move {
            let id = job_id(&tenant, &id)?;
            let r = record(&ctx, &tenant, id).await?;
            if r.state != JobState::Succeeded || r.artifact.is_none() {
                return Err(problem::reject(Problem::not_found(format!(
                    "job {id} has no result (it is {:?})",
                    r.state
                ))));
            }
            Ok(())
        })
        .untuple_one()
        .and(warp::fs::dir(jobs_dir))
        .map(|f: warp::fs::File| {
            let mut r = f.into_response();
            r.headers_mut().insert(
                warp::http::header::CONTENT_TYPE,
                warp::http::HeaderValue::from_static("application/octet-stream"),
            );
            r
        });
    submit
        .or(list)
        .unify()
        .or(get)
        .unify()
        .or(cancel)
        .unify()
        .or(result)
        .unify()
}

/// `pcap-conversion` is not a job id but the submit route's own path, which, as a concrete
/// path, wins over the `{job_id}` template (OpenAPI's rule): other methods on it fall through to
/// that route's 405. Checked before the token, with the rest of the path.
fn job_path() -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::path::full()
        .and_then(|p: warp::path::FullPath| async move {
            if p.as_str().ends_with("/jobs/pcap-conversion") {
                Err(warp::reject::not_found())
            } else {
                Ok(())
            }
        })
        .untuple_one()
}

fn job_id(tenant: &str, id: &str) -> Result<JobId, Rejection> {
    id.parse().map_err(|_| {
        problem::reject(Problem::not_found(format!(
            "no job {id:?} for tenant {tenant}"
        )))
    })
}

/// A job of `tenant`, or 404 (also for another tenant's job: ids are not confirmed across
/// tenants).
async fn record(ctx: &Ctx, tenant: &str, id: JobId) -> Result<JobRecord, Rejection> {
    let j = jobs()?;
    match ractor::call_t!(
        j,
        JobMsg::Get,
        ctx.timeout.as_millis() as u64,
        tenant.to_string(),
        id
    ) {
        Ok(Ok(Some(r))) => Ok(r),
        Ok(Ok(None)) => Err(problem::reject(Problem::not_found(format!(
            "no job {id} for tenant {tenant}"
        )))),
        Ok(Err(e)) => Err(unavailable("reading the job record", e)),
        Err(e) => Err(unavailable("asking the job supervisor", e)),
    }
}

async fn list(tenant: String, ctx: Ctx, q: ListQuery) -> Result<warp::reply::Response, Rejection> {
    let limit = problem::page_limit(q.limit)?;
    let j = jobs()?;
    let ms = ctx.timeout.as_millis() as u64;
    let mut all = match ractor::call_t!(j, JobMsg::List, ms, tenant) {
        Ok(Ok(all)) => all,
        Ok(Err(e)) => return Err(unavailable("listing jobs", e)),
        Err(e) => return Err(unavailable("asking the job supervisor", e)),
    };
    // Newest first; a page after `before`.
    all.sort_by(|a, b| b.submitted_ms.cmp(&a.submitted_ms).then(b.id.cmp(&a.id)));
    if let Some(before) = q.before {
        match all.iter().position(|r| r.id == before) {
            Some(i) => {
                all.drain(..=i);
            }
            None => all.clear(),
        }
    }
    let jobs: Vec<JobRecord> = all
        .into_iter()
        .filter(|r| q.state.is_none_or(|s| r.state == s))
        .take(limit + 1)
        .collect();
    let more = jobs.len() > limit;
    let jobs: Vec<JobRecord> = jobs.into_iter().take(limit).collect();
    let next = if more {
        jobs.last().map(|r| r.id)
    } else {
        None
    };
    Ok(warp::reply::json(&JobList {
        jobs,
        next_before: next,
    })
    .into_response())
}

async fn cancel(tenant: String, id: JobId, ctx: Ctx) -> Result<warp::reply::Response, Rejection> {
    let j = jobs()?;
    let ms = ctx.timeout.as_millis() as u64;
    let answer = ractor::call_t!(j, JobMsg::Cancel, ms, tenant.clone(), id)
        .map_err(|e| unavailable("asking the job supervisor", e))?;
    match answer {
        Ok(Cancelled::Cancelled) => {
            let r = record(&ctx, &tenant, id).await?;
            Ok(json_status(&r, StatusCode::OK))
        }
        Ok(Cancelled::Cancelling) => {
            let r = record(&ctx, &tenant, id).await?;
            Ok(json_status(&r, StatusCode::ACCEPTED))
        }
        Err(CancelError::AlreadyEnded(state)) => Err(problem::reject(ended(id, state))),
        Err(CancelError::NotFound) => {
            // Not queued or running anywhere: ended already, or no such job of this tenant.
            let r = record(&ctx, &tenant, id).await?;
            Err(problem::reject(ended(id, r.state)))
        }
        Err(CancelError::Peer(e)) => Err(unavailable("the node running the job", e)),
    }
}

fn ended(id: JobId, state: JobState) -> Problem {
    Problem::new(
        StatusCode::CONFLICT,
        "job-ended",
        "The job has already ended",
        format!("job {id} is {state:?}: nothing to cancel"),
    )
}

/// pcap (either byte order, micro- or nanoseconds) or pcapng, by the first four bytes.
fn is_capture(magic: &[u8]) -> bool {
    matches!(
        magic,
        [0xa1, 0xb2, 0xc3, 0xd4]
            | [0xd4, 0xc3, 0xb2, 0xa1]
            | [0xa1, 0xb2, 0x3c, 0x4d]
            | [0x4d, 0x3c, 0xb2, 0xa1]
            | [0x0a, 0x0d, 0x0d, 0x0a]
    )
}

/// Removes an upload when the request ends without a job taking it.
struct UploadGuard(Option<PathBuf>);

impl Drop for UploadGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

async fn submit(
    ctx: Ctx,
    tenant: String,
    q: UploadQuery,
    body: impl Stream<Item = Result<impl Buf, warp::Error>> + Unpin,
    dir: PathBuf,
    max_upload: u64,
) -> Result<warp::reply::Response, Rejection> {
    // The tenant's quotas, checked before a byte is stored.
    let quotas = super::tenants::tenant(&ctx, &tenant).await?.quotas;
    // This upload counts as a job from now on: parallel uploads cannot all pass the check.
    let uploading = Uploading::start(&ctx.uploading, &tenant);
    let j = jobs()?;
    let ms = ctx.timeout.as_millis() as u64;
    let active = match ractor::call_t!(j, JobMsg::List, ms, tenant.clone()) {
        Ok(Ok(all)) => all.iter().filter(|r| !r.state.is_final()).count(),
        Ok(Err(e)) => return Err(unavailable("listing jobs", e)),
        Err(e) => return Err(unavailable("asking the job supervisor", e)),
    };
    let active = active + uploading.others();
    if active >= quotas.max_jobs as usize {
        return Ok(too_many(
            "quota-jobs",
            "The tenant's job quota is used up",
            format!(
                "{active} jobs of tenant {tenant} are queued, running or being uploaded; its quota is {} (quotas.max_jobs)",
                quotas.max_jobs
            ),
            RETRY_QUOTA,
        ));
    }
    let stored = crate::actors::jobs::sweep::upload_bytes(&dir).await;
    let left = quotas.upload_bytes.saturating_sub(stored);
    let limit = if left < max_upload {
        Limit {
            bytes: left,
            why: format!(
                "tenant {tenant} keeps {stored} bytes of uploads; its quota is {} (quotas.upload_bytes)",
                quotas.upload_bytes
            ),
            tenant_bytes: quotas.upload_bytes,
        }
    } else {
        Limit {
            bytes: max_upload,
            why: format!("uploads are limited to {max_upload} bytes (api.max_upload_bytes)"),
            tenant_bytes: quotas.upload_bytes,
        }
    };
    let name = uuid::Uuid::new_v4().simple().to_string();
    let part = dir.join(format!("{name}.part"));
    let mut guard = UploadGuard(Some(part.clone()));
    let written = receive(body, &dir, &part, &limit, ctx.timeout).await?;
    let capture = dir.join(format!("{name}.pcap"));
    tokio::fs::rename(&part, &capture)
        .await
        .map_err(|e| unavailable("storing the upload", e))?;
    guard.0 = Some(capture.clone());
    let mut options = JobOptions::default();
    options.uniflow = q.uniflow.unwrap_or(options.uniflow);
    options.idle_timeout_secs = q.idle_timeout.unwrap_or(options.idle_timeout_secs);
    options.active_timeout_secs = q.active_timeout.unwrap_or(options.active_timeout_secs);
    options.max_flows = q.max_flows.unwrap_or(options.max_flows);
    options.domain = q.domain.unwrap_or(options.domain);
    let spec = JobSpec {
        tenant: tenant.clone(),
        inputs: vec![capture.display().to_string()],
        options,
    };
    let id = match ractor::call_t!(
        j,
        JobMsg::Submit,
        ms,
        spec,
        crate::telemetry::current_traceparent()
    ) {
        Ok(Ok(id)) => id,
        Ok(Err(SubmitError::QueueFull { retry_after })) => {
            let secs = retry_after.as_secs().max(1);
            return Ok(too_many(
                "queue-full",
                "The job queue is full",
                format!("this node's job queue is full: retry in {secs} s"),
                secs,
            ));
        }
        Ok(Err(SubmitError::Draining)) => {
            return Err(unavailable("submitting", "this node is shutting down"));
        }
        Ok(Err(SubmitError::Invalid(e))) => {
            return Err(problem::reject(Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid-job",
                "Invalid job",
                e,
            )));
        }
        Err(e) => {
            // The supervisor may still take the job: the upload is left to the sweep.
            guard.0 = None;
            return Err(unavailable("asking the job supervisor", e));
        }
    };
    // The job owns the upload now.
    guard.0 = None;
    tracing::info!(%tenant, job = %id, bytes = written, "capture uploaded: job submitted");
    let r = record(&ctx, &tenant, id).await?;
    let mut resp = json_status(&r, StatusCode::ACCEPTED);
    if let Ok(v) = warp::http::HeaderValue::from_str(&format!("/api/v1/tenants/{tenant}/jobs/{id}"))
    {
        resp.headers_mut().insert(warp::http::header::LOCATION, v);
    }
    Ok(resp)
}

/// Seconds a tenant at its job quota is told to wait: about what a small conversion takes.
const RETRY_QUOTA: u64 = 10;

/// 429 with `Retry-After`.
fn too_many(kind: &str, title: &'static str, detail: String, secs: u64) -> warp::reply::Response {
    let mut r = Problem::new(StatusCode::TOO_MANY_REQUESTS, kind, title, detail).into_response();
    r.headers_mut().insert(
        warp::http::header::RETRY_AFTER,
        warp::http::HeaderValue::from(secs),
    );
    r
}

/// The most an upload may hold, and which bound that is (for the 413's detail).
struct Limit {
    bytes: u64,
    why: String,
    /// The tenant's quota for all its uploads together, checked again as this one grows (its
    /// other uploads in progress grow too).
    tenant_bytes: u64,
}

/// Bytes between two checks of a tenant's uploads in progress against its quota.
const RECHECK_EVERY: u64 = 64 << 20;

/// Uploads in progress per tenant on this node (what the job quota counts besides jobs).
pub type UploadsInProgress = std::sync::Mutex<std::collections::HashMap<String, usize>>;

/// One upload in progress, counted until it ends.
struct Uploading<'a> {
    all: &'a UploadsInProgress,
    tenant: String,
}

impl<'a> Uploading<'a> {
    fn start(all: &'a UploadsInProgress, tenant: &str) -> Uploading<'a> {
        *all.lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(tenant.to_string())
            .or_default() += 1;
        Uploading {
            all,
            tenant: tenant.to_string(),
        }
    }

    /// The tenant's other uploads in progress.
    fn others(&self) -> usize {
        self.all
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&self.tenant)
            .map_or(0, |n| n.saturating_sub(1))
    }
}

impl Drop for Uploading<'_> {
    fn drop(&mut self) {
        let mut all = self.all.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = all.get_mut(&self.tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                all.remove(&self.tenant);
            }
        }
    }
}

/// Streams the body into `part`, counting bytes: past the limit it stops with 413 (chunked
/// bodies have no length to check first). A body that does not start like a capture is refused;
/// one that sends nothing for `idle` is cut with 408 (a stalled client holds no upload open).
async fn receive(
    mut body: impl Stream<Item = Result<impl Buf, warp::Error>> + Unpin,
    dir: &Path,
    part: &Path,
    limit: &Limit,
    idle: std::time::Duration,
) -> Result<u64, Rejection> {
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| unavailable("the upload folder", e))?;
    let mut file = tokio::fs::File::create(part)
        .await
        .map_err(|e| unavailable("storing the upload", e))?;
    let mut written: u64 = 0;
    let mut magic: Vec<u8> = Vec::with_capacity(4);
    loop {
        let Ok(next) = tokio::time::timeout(idle, body.next()).await else {
            return Err(problem::reject(Problem::new(
                StatusCode::REQUEST_TIMEOUT,
                "upload-stalled",
                "The upload stalled",
                format!(
                    "nothing arrived for {} s (api.request_timeout_secs)",
                    idle.as_secs()
                ),
            )));
        };
        let Some(chunk) = next else { break };
        let mut chunk = chunk.map_err(|e| {
            problem::reject(Problem::new(
                StatusCode::BAD_REQUEST,
                "bad-body",
                "The upload broke off",
                e.to_string(),
            ))
        })?;
        while chunk.has_remaining() {
            let bytes = chunk.chunk();
            let n = bytes.len();
            written += n as u64;
            if written > limit.bytes {
                return Err(problem::reject(Problem::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too-large",
                    "Upload too large",
                    limit.why.clone(),
                )));
            }
            if written / RECHECK_EVERY != (written - n as u64) / RECHECK_EVERY {
                let all = crate::actors::jobs::sweep::upload_bytes(dir).await;
                if all > limit.tenant_bytes {
                    return Err(problem::reject(Problem::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "too-large",
                        "Upload too large",
                        format!(
                            "the tenant's uploads, this one and others in progress, reached {all} bytes; its quota is {} (quotas.upload_bytes)",
                            limit.tenant_bytes
                        ),
                    )));
                }
            }
            if magic.len() < 4 {
                let take = (4 - magic.len()).min(n);
                magic.extend_from_slice(&bytes[..take]);
                if magic.len() == 4 && !is_capture(&magic) {
                    return Err(not_a_capture());
                }
            }
            file.write_all(bytes)
                .await
                .map_err(|e| unavailable("storing the upload", e))?;
            chunk.advance(n);
        }
    }
    if magic.len() < 4 {
        return Err(not_a_capture());
    }
    file.flush()
        .await
        .map_err(|e| unavailable("storing the upload", e))?;
    Ok(written)
}

fn not_a_capture() -> Rejection {
    problem::reject(Problem::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "not-a-capture",
        "Not a packet capture",
        "the body must be a pcap or pcapng file".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_are_recognised() {
        assert!(is_capture(&[0xd4, 0xc3, 0xb2, 0xa1]));
        assert!(is_capture(&[0x0a, 0x0d, 0x0d, 0x0a]));
        assert!(!is_capture(&[0, 10, 0, 16]));
    }
}
