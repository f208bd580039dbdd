//! Jobs over HTTP. A conversion: a capture uploaded as the request body (streamed to
//! `<storage.dir>/uploads/{tenant}/`, never held in memory). A time series: an uploaded IPFIX
//! file or capture of export traffic, or (a JSON body) an earlier conversion's result, now or
//! `after` it ends. Each becomes a job of the JobSupervisor; then its record, list, cancel and
//! result. Job inputs come only from the tenant's upload folder and its own jobs' results.
//!
//! The result is served by warp's file server from `<storage.dir>/jobs/{id}/result` (a hard
//! link the job makes to `result.ipfix` or `series.json`), so it streams with `Range` support,
//! after the job is found to be this tenant's and to have succeeded; a time series' other files
//! (`series.csv`, `.svg`, `.png`) likewise at `.../jobs/{id}/{file}`.

use super::problem::{self, Problem};
use super::routes::Ctx;
use crate::actors::jobs::{CancelError, Cancelled, JOB_SUPERVISOR, JobMsg, SubmitError};
use crate::store::jobs::{
    AnalysisOptions, JobOptions, JobSpec, KIND_PCAP_CONVERSION, TimeSeriesOptions,
};
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

/// A time-series job over an earlier conversion's result (`POST .../jobs/time-series` with
/// `Content-Type: application/json`): `input` or `after`, one of them.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TimeSeriesRequest {
    /// A conversion job of this tenant that has succeeded: its result is the input.
    input: Option<JobId>,
    /// A conversion job of this tenant: this job waits (queued) until it ends, then takes its
    /// result, or fails if it did not succeed.
    after: Option<JobId>,
    /// The series' options (the defaults are `ipfixsvc timeseries`'s).
    #[serde(default)]
    options: TimeSeriesOptions,
}

/// An analysis of an earlier conversion's result (`POST .../jobs/analysis` with
/// `Content-Type: application/json`): `input` or `after`, one of them.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AnalysisRequest {
    /// A conversion job of this tenant that has succeeded: its result is the input.
    input: Option<JobId>,
    /// A conversion job of this tenant: this job waits (queued) until it ends.
    after: Option<JobId>,
    /// The analysis and its options.
    #[serde(default)]
    options: AnalysisOptions,
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
    let uploads = storage.join("uploads");
    let series =
        flow_route::<TimeSeriesOptions>("time-series", ctx.clone(), uploads.clone(), max_upload);
    let analysis = flow_route::<AnalysisOptions>("analysis", ctx.clone(), uploads, max_upload);
    let auth = move || super::tenants::authorized(ctx.clone());
    let upload_dir = storage.join("uploads");
    let submit = jobs()
        .and(warp::path!("pcap-conversion"))
        .and(warp::post())
        .and(auth())
        .and(problem::query::<UploadQuery>())
        .and(warp::body::stream())
        .and_then(move |tenant: String, ctx: Ctx, q: UploadQuery, body| {
            let dir = upload_dir.join(&tenant);
            async move { submit(ctx, tenant, q, body, dir, max_upload).await }
        });
    let list = jobs()
        .and(warp::path::end())
        .and(warp::get())
        .and(auth())
        .and(problem::query::<ListQuery>())
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
            // `{id}/result` and `{id}/{file}`, a file the job's record names: nothing else
            // under the folder is served.
            match tail.as_str().split_once('/') {
                Some((id, file)) if !file.is_empty() && !file.contains('/') => {
                    Ok((tenant, id.to_string(), file.to_string()))
                }
                _ => Err(warp::reject::not_found()),
            }
        })
        .untuple_one()
        .and(auth())
        .and_then(
            |tenant: String, id: String, file: String, ctx: Ctx| async move {
                let id = job_id(&tenant, &id)?;
                let r = record(&ctx, &tenant, id).await?;
                if r.state != JobState::Succeeded || r.artifact.is_none() {
                    return Err(problem::reject(Problem::not_found(format!(
                        "job {id} has no result (it is {:?})",
                        r.state
                    ))));
                }
                if file != "result" && !r.files.contains(&file) {
                    return Err(problem::reject(Problem::not_found(format!(
                        "job {id} has no file {file:?} (it has result{})",
                        r.files.iter().map(|f| format!(", {f}")).collect::<String>()
                    ))));
                }
                Ok(content_type(&r.kind, &file))
            },
        )
        .and(warp::fs::dir(jobs_dir))
        .map(|ct: &'static str, f: warp::fs::File| {
            let mut r = f.into_response();
            r.headers_mut().insert(
                warp::http::header::CONTENT_TYPE,
                warp::http::HeaderValue::from_static(ct),
            );
            r
        });
    submit
        .or(series)
        .unify()
        .or(analysis)
        .unify()
        .or(list)
        .unify()
        .or(get)
        .unify()
        .or(cancel)
        .unify()
        .or(result)
        .unify()
}

/// A result file's media type: the JSON, CSV and charts of a time series by their extension,
/// a conversion's IPFIX as bytes.
fn content_type(kind: &str, file: &str) -> &'static str {
    match file.rsplit_once('.').map(|(_, ext)| ext) {
        Some("json") => "application/json",
        Some("csv") => "text/csv; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        _ if kind == KIND_PCAP_CONVERSION => "application/octet-stream",
        _ => "application/json",
    }
}

/// The options of a job made of flows (a time series, an analysis): in the query with an
/// upload, or in a JSON request that names a conversion.
trait FlowTask: serde::de::DeserializeOwned + Default + PartialEq + Send + 'static {
    type Request: serde::de::DeserializeOwned;
    fn task(self) -> Task;
    /// The request's `input`, `after` and task.
    fn request(r: Self::Request) -> (Option<JobId>, Option<JobId>, Task);
}

impl FlowTask for TimeSeriesOptions {
    type Request = TimeSeriesRequest;
    fn task(self) -> Task {
        Task::Series(self)
    }
    fn request(r: TimeSeriesRequest) -> (Option<JobId>, Option<JobId>, Task) {
        (r.input, r.after, Task::Series(r.options))
    }
}

impl FlowTask for AnalysisOptions {
    type Request = AnalysisRequest;
    fn task(self) -> Task {
        Task::Analysis(self)
    }
    fn request(r: AnalysisRequest) -> (Option<JobId>, Option<JobId>, Task) {
        (r.input, r.after, Task::Analysis(r.options))
    }
}

/// `POST .../jobs/{name}` for a job made of flows: a JSON body names a conversion, any other
/// body is an upload.
fn flow_route<T: FlowTask>(
    name: &'static str,
    ctx: Ctx,
    uploads: PathBuf,
    max_upload: u64,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    warp::path!("api" / "v1" / "tenants" / String / "jobs" / ..)
        .and(warp::path(name))
        .and(warp::path::end())
        .and(warp::post())
        .and(super::tenants::authorized(ctx))
        .and(problem::query::<T>())
        .and(warp::header::optional::<String>("content-type"))
        .and(warp::body::stream())
        .and_then(
            move |tenant: String, ctx: Ctx, q: T, ct: Option<String>, body| {
                let dir = uploads.join(&tenant);
                async move {
                    if is_json(ct.as_deref()) {
                        let given = q != T::default();
                        submit_after(ctx, tenant, given, body, |b| {
                            serde_json::from_slice::<T::Request>(b).map(T::request)
                        })
                        .await
                    } else {
                        submit_upload(ctx, tenant, q.task(), body, dir, max_upload).await
                    }
                }
            },
        )
}

/// `pcap-conversion` and `time-series` are not job ids but the submit routes' own paths, which,
/// as concrete paths, win over the `{job_id}` template (OpenAPI's rule): other methods on them
/// fall through to those routes' 405. Checked before the token, with the rest of the path.
fn job_path() -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::path::full()
        .and_then(|p: warp::path::FullPath| async move {
            if p.as_str().ends_with("/jobs/pcap-conversion")
                || p.as_str().ends_with("/jobs/time-series")
                || p.as_str().ends_with("/jobs/analysis")
            {
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

impl UploadGuard {
    fn path(&self) -> String {
        self.0
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    }
}

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
    let uploading = Uploading::start(&ctx.uploading, &tenant);
    let quotas = match quota_check(&ctx, &tenant, &uploading).await? {
        Ok(q) => q,
        Err(refused) => return Ok(refused),
    };
    let mut options = JobOptions::default();
    options.uniflow = q.uniflow.unwrap_or(options.uniflow);
    options.idle_timeout_secs = q.idle_timeout.unwrap_or(options.idle_timeout_secs);
    options.active_timeout_secs = q.active_timeout.unwrap_or(options.active_timeout_secs);
    options.max_flows = q.max_flows.unwrap_or(options.max_flows);
    options.domain = q.domain.unwrap_or(options.domain);
    let (mut guard, written) = store_upload(
        &ctx,
        &tenant,
        body,
        &dir,
        max_upload,
        &quotas,
        Accept::Capture,
    )
    .await?;
    let spec = JobSpec::conversion(&tenant, vec![guard.path()], options);
    let answer = submit_spec(&ctx, &tenant, spec, Some(&mut guard)).await;
    if answer.is_ok() {
        tracing::info!(%tenant, bytes = written, "capture uploaded: job submitted");
    }
    answer
}

/// What a job of an earlier job's result or of an upload makes: a time series or an analysis.
pub enum Task {
    Series(TimeSeriesOptions),
    Analysis(AnalysisOptions),
}

impl Task {
    fn check(&self) -> Result<(), String> {
        match self {
            Task::Series(o) => o.check(),
            Task::Analysis(o) => o.check(),
        }
    }

    fn spec(self, tenant: &str, inputs: Vec<String>, after: Option<JobId>) -> JobSpec {
        let mut spec = JobSpec {
            tenant: tenant.to_string(),
            inputs,
            after,
            ..JobSpec::default()
        };
        match self {
            Task::Series(o) => spec.time_series = Some(o),
            Task::Analysis(o) => spec.analysis = Some(o),
        }
        spec
    }
}

/// A job of an upload: an IPFIX file or a capture of export traffic, its options in the query.
async fn submit_upload(
    ctx: Ctx,
    tenant: String,
    task: Task,
    body: impl Stream<Item = Result<impl Buf, warp::Error>> + Unpin,
    dir: PathBuf,
    max_upload: u64,
) -> Result<warp::reply::Response, Rejection> {
    task.check().map_err(|e| problem::reject(invalid_job(e)))?;
    let uploading = Uploading::start(&ctx.uploading, &tenant);
    let quotas = match quota_check(&ctx, &tenant, &uploading).await? {
        Ok(q) => q,
        Err(refused) => return Ok(refused),
    };
    let (mut guard, written) = store_upload(
        &ctx,
        &tenant,
        body,
        &dir,
        max_upload,
        &quotas,
        Accept::IpfixOrCapture,
    )
    .await?;
    let spec = task.spec(&tenant, vec![guard.path()], None);
    let answer = submit_spec(&ctx, &tenant, spec, Some(&mut guard)).await;
    if answer.is_ok() {
        tracing::info!(%tenant, bytes = written, "flows uploaded: job submitted");
    }
    answer
}

/// A job of an earlier conversion's result: a JSON body with `input` or `after` and the
/// options, read by `parse`.
async fn submit_after(
    ctx: Ctx,
    tenant: String,
    query_given: bool,
    body: impl Stream<Item = Result<impl Buf, warp::Error>> + Unpin,
    parse: impl FnOnce(&[u8]) -> Result<(Option<JobId>, Option<JobId>, Task), serde_json::Error>,
) -> Result<warp::reply::Response, Rejection> {
    // The tenant first: another tenant's or no tenant is 404, whatever the body.
    super::tenants::tenant(&ctx, &tenant).await?;
    if query_given {
        return Err(problem::reject(invalid_job(
            "with a JSON body the options go in its `options`, not in the query".into(),
        )));
    }
    let bytes = small_body(body, MAX_REQUEST, ctx.timeout).await?;
    let (input, after, task) = parse(&bytes).map_err(|e| {
        problem::reject(Problem::new(
            StatusCode::BAD_REQUEST,
            "bad-body",
            "The body is not a job request",
            e.to_string(),
        ))
    })?;
    task.check().map_err(|e| problem::reject(invalid_job(e)))?;
    let (inputs, after) = match (input, after) {
        (Some(id), None) => {
            let r = ipfix_job(&ctx, &tenant, id).await?;
            match (r.state, r.artifact) {
                (JobState::Succeeded, Some(a)) => (vec![a], None),
                (state, _) => {
                    return Err(problem::reject(not_done(
                        id,
                        state,
                        "give it as `after` to wait for it",
                    )));
                }
            }
        }
        (None, Some(id)) => {
            let r = ipfix_job(&ctx, &tenant, id).await?;
            match (r.state, r.artifact) {
                (JobState::Succeeded, Some(a)) => (vec![a], None),
                (state, _) if state.is_final() => {
                    return Err(problem::reject(not_done(id, state, "it has no result")));
                }
                _ => (Vec::new(), Some(id)),
            }
        }
        _ => {
            return Err(problem::reject(invalid_job(
                "give `input` (a conversion job that has succeeded) or `after` (one to wait for), one of them".into(),
            )));
        }
    };
    let uploading = Uploading::start(&ctx.uploading, &tenant);
    if let Err(refused) = quota_check(&ctx, &tenant, &uploading).await? {
        return Ok(refused);
    }
    submit_spec(&ctx, &tenant, task.spec(&tenant, inputs, after), None).await
}

/// JSON request bodies are small; more is refused (413).
const MAX_REQUEST: usize = 64 * 1024;

fn is_json(content_type: Option<&str>) -> bool {
    content_type
        .and_then(|c| c.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
}

fn invalid_job(detail: String) -> Problem {
    Problem::new(
        StatusCode::BAD_REQUEST,
        "invalid-job",
        "Invalid job",
        detail,
    )
}

fn not_done(id: JobId, state: JobState, hint: &str) -> Problem {
    Problem::new(
        StatusCode::CONFLICT,
        "job-not-done",
        "The job has no result",
        format!(
            "job {id} is {}: {hint}",
            format!("{state:?}").to_lowercase()
        ),
    )
}

/// A job of this tenant whose result is IPFIX (a conversion), or 404 / 400.
async fn ipfix_job(ctx: &Ctx, tenant: &str, id: JobId) -> Result<JobRecord, Rejection> {
    let r = record(ctx, tenant, id).await?;
    if r.kind != KIND_PCAP_CONVERSION {
        return Err(problem::reject(invalid_job(format!(
            "job {id} is a {} job: its result is not IPFIX",
            r.kind
        ))));
    }
    Ok(r)
}

/// A body of at most `max` bytes, in memory.
async fn small_body(
    mut body: impl Stream<Item = Result<impl Buf, warp::Error>> + Unpin,
    max: usize,
    idle: std::time::Duration,
) -> Result<Vec<u8>, Rejection> {
    let mut out = Vec::new();
    loop {
        let next = tokio::time::timeout(idle, body.next()).await.map_err(|_| {
            problem::reject(Problem::new(
                StatusCode::REQUEST_TIMEOUT,
                "body-stalled",
                "The body stalled",
                format!("nothing arrived for {} s", idle.as_secs()),
            ))
        })?;
        let Some(chunk) = next else {
            return Ok(out);
        };
        let mut chunk = chunk.map_err(|e| {
            problem::reject(Problem::new(
                StatusCode::BAD_REQUEST,
                "bad-body",
                "The body broke off",
                e.to_string(),
            ))
        })?;
        while chunk.has_remaining() {
            let bytes = chunk.chunk();
            if out.len() + bytes.len() > max {
                return Err(problem::reject(Problem::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too-large",
                    "Body too large",
                    format!("a JSON request is at most {max} bytes"),
                )));
            }
            out.extend_from_slice(bytes);
            let n = bytes.len();
            chunk.advance(n);
        }
    }
}

/// The tenant's quotas, if one more job fits in its `max_jobs` (this upload counts as a job
/// from its start, so parallel uploads cannot all pass); else the 429 to answer.
async fn quota_check(
    ctx: &Ctx,
    tenant: &str,
    uploading: &Uploading<'_>,
) -> Result<Result<crate::store::tenants::Quotas, warp::reply::Response>, Rejection> {
    let quotas = super::tenants::tenant(ctx, tenant).await?.quotas;
    let j = jobs()?;
    let ms = ctx.timeout.as_millis() as u64;
    let active = match ractor::call_t!(j, JobMsg::List, ms, tenant.to_string()) {
        Ok(Ok(all)) => all.iter().filter(|r| !r.state.is_final()).count(),
        Ok(Err(e)) => return Err(unavailable("listing jobs", e)),
        Err(e) => return Err(unavailable("asking the job supervisor", e)),
    };
    let active = active + uploading.others();
    if active >= quotas.max_jobs as usize {
        return Ok(Err(too_many(
            "quota-jobs",
            "The tenant's job quota is used up",
            format!(
                "{active} jobs of tenant {tenant} are queued, running or being uploaded; its quota is {} (quotas.max_jobs)",
                quotas.max_jobs
            ),
            RETRY_QUOTA,
        )));
    }
    Ok(Ok(quotas))
}

/// What an upload must start like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Accept {
    /// pcap or pcapng (a conversion).
    Capture,
    /// An IPFIX file, or a capture of export traffic (a time series).
    IpfixOrCapture,
}

impl Accept {
    fn accepts(self, magic: &[u8]) -> bool {
        is_capture(magic) || (self == Accept::IpfixOrCapture && magic.starts_with(&[0, 10]))
    }

    fn extension(self, magic: &[u8]) -> &'static str {
        if is_capture(magic) { "pcap" } else { "ipfix" }
    }

    fn refusal(self) -> Rejection {
        let detail = match self {
            Accept::Capture => "the body must be a pcap or pcapng file",
            Accept::IpfixOrCapture => {
                "the body must be an IPFIX file (RFC 5655) or a pcap or pcapng capture"
            }
        };
        problem::reject(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "not-a-capture",
            "Not a packet capture or IPFIX file",
            detail.into(),
        ))
    }
}

/// Streams the body to the tenant's upload folder within its limits; the guard removes it
/// unless a job takes it.
async fn store_upload(
    ctx: &Ctx,
    tenant: &str,
    body: impl Stream<Item = Result<impl Buf, warp::Error>> + Unpin,
    dir: &Path,
    max_upload: u64,
    quotas: &crate::store::tenants::Quotas,
    accept: Accept,
) -> Result<(UploadGuard, u64), Rejection> {
    let stored = crate::actors::jobs::sweep::upload_bytes(dir).await;
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
    let (written, magic) = receive(body, dir, &part, &limit, ctx.timeout, accept).await?;
    let stored = dir.join(format!("{name}.{}", accept.extension(&magic)));
    tokio::fs::rename(&part, &stored)
        .await
        .map_err(|e| unavailable("storing the upload", e))?;
    guard.0 = Some(stored);
    Ok((guard, written))
}

/// Hands the job to the supervisor: 202 with its record and `Location`, or the refusal. An
/// upload's guard is let go once the job owns the file.
async fn submit_spec(
    ctx: &Ctx,
    tenant: &str,
    spec: JobSpec,
    mut guard: Option<&mut UploadGuard>,
) -> Result<warp::reply::Response, Rejection> {
    let j = jobs()?;
    let ms = ctx.timeout.as_millis() as u64;
    let kind = spec.kind();
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
        Ok(Err(SubmitError::Invalid(e))) => return Err(problem::reject(invalid_job(e))),
        Err(e) => {
            // The supervisor may still take the job: the upload is left to the sweep.
            if let Some(g) = guard.as_deref_mut() {
                g.0 = None;
            }
            return Err(unavailable("asking the job supervisor", e));
        }
    };
    // The job owns the upload now.
    if let Some(g) = guard {
        g.0 = None;
    }
    tracing::info!(%tenant, job = %id, kind, "job submitted");
    let r = record(ctx, tenant, id).await?;
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
    accept: Accept,
) -> Result<(u64, Vec<u8>), Rejection> {
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
                if magic.len() == 4 && !accept.accepts(&magic) {
                    return Err(accept.refusal());
                }
            }
            file.write_all(bytes)
                .await
                .map_err(|e| unavailable("storing the upload", e))?;
            chunk.advance(n);
        }
    }
    if magic.len() < 4 {
        return Err(accept.refusal());
    }
    file.flush()
        .await
        .map_err(|e| unavailable("storing the upload", e))?;
    Ok((written, magic))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_are_recognised() {
        assert!(is_capture(&[0xd4, 0xc3, 0xb2, 0xa1]));
        assert!(is_capture(&[0x0a, 0x0d, 0x0d, 0x0a]));
        assert!(!is_capture(&[0, 10, 0, 16]));
        assert!(!Accept::Capture.accepts(&[0, 10, 0, 16]));
        assert!(Accept::IpfixOrCapture.accepts(&[0, 10, 0, 16]));
        assert!(Accept::IpfixOrCapture.accepts(&[0xd4, 0xc3, 0xb2, 0xa1]));
        assert!(!Accept::IpfixOrCapture.accepts(&[0, 9, 0, 16]));
        assert_eq!(Accept::IpfixOrCapture.extension(&[0, 10, 0, 16]), "ipfix");
    }

    #[test]
    fn result_media_types() {
        assert_eq!(content_type("time_series", "result"), "application/json");
        assert_eq!(content_type("time_series", "series.png"), "image/png");
        assert_eq!(content_type("time_series", "series.svg"), "image/svg+xml");
        assert_eq!(
            content_type(KIND_PCAP_CONVERSION, "result"),
            "application/octet-stream"
        );
        assert!(is_json(Some("application/json; charset=utf-8")));
        assert!(!is_json(Some("application/octet-stream")));
        assert!(!is_json(None));
    }
}
