//! The OpenAPI 3.1 document (`GET /openapi.json`), made by utoipa from the types the handlers
//! serve. warp has no route table to read, so each operation is declared here once, next to the
//! others; `tests/openapi.rs` holds this list and the routes to each other both ways (every
//! documented operation is routed, every route is documented) and runs schemathesis against a
//! live node, so the two cannot drift apart unnoticed.

use super::jobs::{AnalysisRequest, JobList, ListQuery, TimeSeriesRequest, UploadQuery};
use super::problem::Problem;
use super::routes::{Health, NodeViews, Readiness};
use super::sessions::{SessionPage, SessionQuery};
use super::streams::{StreamList, StreamTotals, StreamView};
use super::templates::{DomainTemplates, ExporterTemplates, FieldView, TemplateList, TemplateView};
use super::tenants::{
    NewTenant, QuotasPatch, TenantList, TenantPatch, TokenInfo, TokenList, TokenMade,
};
use super::timeseries::{LiveSeries, SeriesQuery};
use crate::actors::collector::session_logic::SessionStats;
use crate::actors::directory::SessionInfo;
use crate::actors::mediator::StreamState;
use crate::analysis::report::Rank;
use crate::mediation::spec::{
    AggregateSpec, AnonMethod, AnonymiseSpec, OnFull, SeriesKeeping, SinkSpec, StreamSpec,
    TransformSpec,
};
use crate::store::jobs::{
    AnalysisKind, AnalysisOptions, AnalysisSummary, ChartMeasure, JobOptions, JobProgress,
    JobTelemetry, SeriesSummary, TimeSeriesOptions,
};
use crate::store::tenants::Quotas;
use crate::store::{JobId, JobRecord, JobState, Tenant, Transport};
use std::sync::OnceLock;
use utoipa::OpenApi;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};

const PROBLEM: &str = "application/problem+json";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "ipfixsvc",
        description = "IPFIX collection, conversion jobs and their tenants. Every route but health, readiness, metrics and this document needs `Authorization: Bearer <token>`: the admin token, or a tenant's own for that tenant's routes (another tenant's resources answer 404). Errors are RFC 9457 problems.",
        license(name = "Apache-2.0")
    ),
    paths(
        ops::healthz, ops::readyz, ops::metrics, ops::openapi_json, ops::sessions, ops::cluster,
        ops::actors, ops::create_tenant, ops::list_tenants, ops::get_tenant, ops::patch_tenant,
        ops::delete_tenant, ops::create_token, ops::list_tokens, ops::revoke_token,
        ops::tenant_sessions, ops::tenant_templates, ops::submit_job, ops::submit_time_series, ops::submit_analysis,
        ops::list_jobs, ops::get_job, ops::cancel_job, ops::job_result, ops::job_file,
        ops::create_stream, ops::live_series, ops::console, ops::console_file, ops::list_streams,
        ops::get_stream, ops::put_stream, ops::delete_stream,
    ),
    components(schemas(
        Problem, Health, Readiness, NodeViews, SessionPage, SessionInfo, SessionStats,
        Tenant, Quotas, QuotasPatch, NewTenant, TenantPatch, TenantList, TokenMade, TokenInfo, TokenList,
        TemplateList, ExporterTemplates, DomainTemplates, TemplateView, FieldView, Transport,
        JobRecord, JobId, JobState, JobOptions, JobProgress, JobTelemetry, JobList,
        TimeSeriesRequest, TimeSeriesOptions, ChartMeasure, SeriesSummary, LiveSeries,
        AnalysisRequest, AnalysisOptions, AnalysisKind, AnalysisSummary, Rank,
        StreamSpec, TransformSpec, AnonymiseSpec, AnonMethod, AggregateSpec, SinkSpec, OnFull, SeriesKeeping,
        StreamView, StreamTotals, StreamList, StreamState,
    )),
    modifiers(&Bearer),
    tags(
        (name = "health", description = "For probes and scrapers: no token."),
        (name = "operators", description = "The admin token."),
        (name = "tenants", description = "Tenants and their tokens: the admin token."),
        (name = "collector", description = "A tenant's exporter sessions and templates."),
        (name = "jobs", description = "Jobs: conversions (a capture in, an IPFIX file out) and time series (IPFIX in, series as JSON, CSV, SVG and PNG out)."),
        (name = "console", description = "The web console: a page and its two static files, no token (the page asks for one)."),
        (name = "streams", description = "A tenant's export streams (the mediator): which records, filter, transforms, sink."),
    )
)]
struct ApiDoc;

struct Bearer;

impl utoipa::Modify for Bearer {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        if let Some(c) = doc.components.as_mut() {
            c.add_security_scheme(
                "bearer",
                SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
            );
        }
    }
}

/// The document, made once: utoipa's output with the bodies it cannot describe from a type
/// (a binary upload and download, Prometheus text, an HTML page) set by hand.
pub fn document() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
        let binary = serde_json::json!({"type": "string", "contentMediaType": "application/octet-stream"});
        let text = serde_json::json!({"type": "string"});
        let paths = &mut doc["paths"];
        paths["/api/v1/tenants/{tenant}/jobs/pcap-conversion"]["post"]["requestBody"]["content"] =
            serde_json::json!({"application/octet-stream": {"schema": binary}});
        paths["/api/v1/tenants/{tenant}/jobs/time-series"]["post"]["requestBody"]["content"] = serde_json::json!({
            "application/json": {"schema": {"$ref": "#/components/schemas/TimeSeriesRequest"}},
            "application/octet-stream": {"schema": binary},
        });
        paths["/api/v1/tenants/{tenant}/jobs/analysis"]["post"]["requestBody"]["content"] = serde_json::json!({
            "application/json": {"schema": {"$ref": "#/components/schemas/AnalysisRequest"}},
            "application/octet-stream": {"schema": binary},
        });
        for status in ["200", "206"] {
            paths["/api/v1/tenants/{tenant}/jobs/{job_id}/{file}"]["get"]["responses"][status]
                ["content"] = serde_json::json!({
                    "application/json": {"schema": text},
                    "text/csv": {"schema": text},
                    "image/svg+xml": {"schema": text},
                    "image/png": {"schema": binary},
                });
            paths["/api/v1/tenants/{tenant}/jobs/{job_id}/result"]["get"]["responses"][status]
                ["content"] = serde_json::json!({"application/octet-stream": {"schema": binary}});
        }
        paths["/api/v1/tenants/{tenant}/timeseries"]["get"]["responses"]["200"]["content"]
            ["image/svg+xml"] = serde_json::json!({"schema": text});
        paths["/"]["get"]["responses"]["200"]["content"] =
            serde_json::json!({"text/html": {"schema": text}});
        paths["/console/{file}"]["get"]["responses"]["200"]["content"] = serde_json::json!({
            "text/javascript": {"schema": text}, "text/css": {"schema": text},
        });
        paths["/metrics"]["get"]["responses"]["200"]["content"] =
            serde_json::json!({"text/plain": {"schema": text}});
        paths["/debug/actors"]["get"]["responses"]["200"]["content"]["text/html"] =
            serde_json::json!({"schema": text});
        paths["/openapi.json"]["get"]["responses"]["200"]["content"] =
            serde_json::json!({"application/json": {"schema": {"type": "object"}}});
        serde_json::to_string(&doc).unwrap_or_default()
    })
}

/// The methods the document gives for a request path (its templates' `{..}` match any one
/// segment), for the `Allow` header of a 405 (RFC 9110 section 15.5.6); none for a path it
/// does not have.
pub fn allowed(path: &str) -> Option<String> {
    find(path).map(|(_, _, methods)| methods.clone())
}

/// The document's path template a request path matches (`/api/v1/tenants/{tenant}`), for
/// telemetry: a route names a few dozen series, where paths would name one per tenant and job.
pub fn route(path: &str) -> Option<&'static str> {
    find(path).map(|(template, _, _)| template.as_str())
}

type PathEntry = (String, Vec<String>, String);

fn find(path: &str) -> Option<&'static PathEntry> {
    static METHODS: OnceLock<Vec<PathEntry>> = OnceLock::new();
    let table = METHODS.get_or_init(|| {
        let doc: serde_json::Value = serde_json::from_str(document()).unwrap_or_default();
        doc["paths"]
            .as_object()
            .map(|paths| {
                paths
                    .iter()
                    .map(|(template, ops)| {
                        let segments = template.split('/').map(String::from).collect();
                        let mut methods: Vec<String> = ops
                            .as_object()
                            .map(|o| o.keys().map(|m| m.to_ascii_uppercase()).collect())
                            .unwrap_or_default();
                        methods.sort();
                        (template.clone(), segments, methods.join(", "))
                    })
                    .collect()
            })
            .unwrap_or_default()
    });
    let asked: Vec<&str> = path.split('/').collect();
    // A literal segment beats a parameter (`/jobs/pcap` before `/jobs/{job}`).
    table
        .iter()
        .filter(|(_, segments, _)| {
            segments.len() == asked.len()
                && segments.iter().zip(&asked).all(|(t, a)| {
                    t == a || (t.starts_with('{') && t.ends_with('}') && !a.is_empty())
                })
        })
        .min_by_key(|(_, segments, _)| segments.iter().filter(|t| t.starts_with('{')).count())
}

/// The operations, one declaration each. The functions exist for their attribute only: the
/// handlers are warp filters (routes.rs, tenants.rs, templates.rs, jobs.rs), which utoipa cannot
/// read.
#[allow(dead_code)]
mod ops {
    use super::*;

    #[utoipa::path(get, path = "/healthz", tag = "health",
        responses((status = 200, description = "The process answers", body = Health)))]
    fn healthz() {}

    #[utoipa::path(get, path = "/readyz", tag = "health",
        responses(
            (status = 200, description = "Ready for traffic", body = Readiness),
            (status = 503, description = "Not ready: draining, a listener down, the cache away, no cluster member", body = Readiness),
        ))]
    fn readyz() {}

    #[utoipa::path(get, path = "/metrics", tag = "health",
        responses((status = 200, description = "Prometheus text exposition")))]
    fn metrics() {}

    #[utoipa::path(get, path = "/openapi.json", tag = "health",
        responses((status = 200, description = "This document")))]
    fn openapi_json() {}

    #[utoipa::path(get, path = "/api/v1/sessions", tag = "operators", security(("bearer" = [])),
        params(SessionQuery),
        responses(
            (status = 200, description = "The exporter sessions of the cluster, a page at a time", body = SessionPage),
            (status = 400, description = "A bad query parameter", body = Problem, content_type = PROBLEM),
            (status = 401, description = "No token, or not the admin's", body = Problem, content_type = PROBLEM),
            (status = 503, description = "The session directory did not answer in time", body = Problem, content_type = PROBLEM),
        ))]
    fn sessions() {}

    #[utoipa::path(get, path = "/api/v1/cluster", tag = "operators", security(("bearer" = [])),
        responses(
            (status = 200, description = "Every node's peers, seeds, last errors", body = NodeViews),
            (status = 401, description = "No token, or not the admin's", body = Problem, content_type = PROBLEM),
        ))]
    fn cluster() {}

    #[utoipa::path(get, path = "/debug/actors", tag = "operators", security(("bearer" = [])),
        responses(
            (status = 200, description = "Every node's supervision tree; with `Accept: text/html` a page whose subtrees fold", body = NodeViews),
            (status = 401, description = "No token, or not the admin's", body = Problem, content_type = PROBLEM),
        ))]
    fn actors() {}

    #[utoipa::path(post, path = "/api/v1/tenants", tag = "tenants", security(("bearer" = [])),
        request_body(content = NewTenant, content_type = "application/json"),
        responses(
            (status = 201, description = "Made; `Location` names it", body = Tenant),
            (status = 400, description = "A bad id, prefix, field or JSON", body = Problem, content_type = PROBLEM),
            (status = 401, description = "No token, or not the admin's", body = Problem, content_type = PROBLEM),
            (status = 409, description = "The tenant exists, or a deleted one of that id left job records not yet expired", body = Problem, content_type = PROBLEM),
            (status = 413, description = "A body over 64 KiB", body = Problem, content_type = PROBLEM),
            (status = 415, description = "Not `application/json`", body = Problem, content_type = PROBLEM),
            (status = 503, description = "The tenant store did not answer", body = Problem, content_type = PROBLEM),
        ))]
    fn create_tenant() {}

    #[utoipa::path(get, path = "/api/v1/tenants", tag = "tenants", security(("bearer" = [])),
        responses(
            (status = 200, description = "Every tenant", body = TenantList),
            (status = 401, description = "No token, or not the admin's", body = Problem, content_type = PROBLEM),
            (status = 503, description = "The tenant store did not answer", body = Problem, content_type = PROBLEM),
        ))]
    fn list_tenants() {}

    #[utoipa::path(get, path = "/api/v1/tenants/{tenant}", tag = "tenants", security(("bearer" = [])),
        params(("tenant" = String, Path, description = "The tenant's id")),
        responses(
            (status = 200, description = "The tenant", body = Tenant),
            (status = 401, description = "No token, or not the admin's", body = Problem, content_type = PROBLEM),
            (status = 404, description = "No such tenant", body = Problem, content_type = PROBLEM),
            (status = 503, description = "The tenant store did not answer", body = Problem, content_type = PROBLEM),
        ))]
    fn get_tenant() {}

    #[utoipa::path(patch, path = "/api/v1/tenants/{tenant}", tag = "tenants", security(("bearer" = [])),
        params(("tenant" = String, Path, description = "The tenant's id")),
        request_body(content = TenantPatch, content_type = "application/json"),
        responses(
            (status = 200, description = "The tenant as it is now", body = Tenant),
            (status = 400, description = "A bad prefix, field or JSON", body = Problem, content_type = PROBLEM),
            (status = 401, description = "No token, or not the admin's", body = Problem, content_type = PROBLEM),
            (status = 404, description = "No such tenant", body = Problem, content_type = PROBLEM),
            (status = 413, description = "A body over 64 KiB", body = Problem, content_type = PROBLEM),
            (status = 415, description = "Not `application/json`", body = Problem, content_type = PROBLEM),
            (status = 503, description = "The tenant store did not answer", body = Problem, content_type = PROBLEM),
        ))]
    fn patch_tenant() {}

    #[utoipa::path(delete, path = "/api/v1/tenants/{tenant}", tag = "tenants", security(("bearer" = [])),
        params(("tenant" = String, Path, description = "The tenant's id")),
        responses(
            (status = 204, description = "Deleted, with its tokens"),
            (status = 401, description = "No token, or not the admin's", body = Problem, content_type = PROBLEM),
            (status = 404, description = "No such tenant", body = Problem, content_type = PROBLEM),
            (status = 503, description = "The tenant store did not answer", body = Problem, content_type = PROBLEM),
        ))]
    fn delete_tenant() {}

    #[utoipa::path(post, path = "/api/v1/tenants/{tenant}/tokens", tag = "tenants", security(("bearer" = [])),
        params(("tenant" = String, Path, description = "The tenant's id")),
        responses(
            (status = 201, description = "A new token, shown this once", body = TokenMade),
            (status = 401, description = "No token, or not the admin's", body = Problem, content_type = PROBLEM),
            (status = 404, description = "No such tenant", body = Problem, content_type = PROBLEM),
            (status = 503, description = "The tenant store did not answer", body = Problem, content_type = PROBLEM),
        ))]
    fn create_token() {}

    #[utoipa::path(get, path = "/api/v1/tenants/{tenant}/tokens", tag = "tenants", security(("bearer" = [])),
        params(("tenant" = String, Path, description = "The tenant's id")),
        responses(
            (status = 200, description = "The tenant's tokens (ids and times, never the tokens)", body = TokenList),
            (status = 401, description = "No token, or not the admin's", body = Problem, content_type = PROBLEM),
            (status = 404, description = "No such tenant", body = Problem, content_type = PROBLEM),
            (status = 503, description = "The tenant store did not answer", body = Problem, content_type = PROBLEM),
        ))]
    fn list_tokens() {}

    #[utoipa::path(delete, path = "/api/v1/tenants/{tenant}/tokens/{token_id}", tag = "tenants", security(("bearer" = [])),
        params(
            ("tenant" = String, Path, description = "The tenant's id"),
            ("token_id" = String, Path, description = "The token's id (not the token)"),
        ),
        responses(
            (status = 204, description = "Revoked on every node at once"),
            (status = 401, description = "No token, or not the admin's", body = Problem, content_type = PROBLEM),
            (status = 404, description = "No such tenant or token", body = Problem, content_type = PROBLEM),
            (status = 503, description = "The tenant store did not answer", body = Problem, content_type = PROBLEM),
        ))]
    fn revoke_token() {}

    #[utoipa::path(get, path = "/api/v1/tenants/{tenant}/sessions", tag = "collector", security(("bearer" = [])),
        params(("tenant" = String, Path, description = "The tenant's id"), SessionQuery),
        responses(
            (status = 200, description = "The tenant's exporter sessions, cluster-wide, a page at a time", body = SessionPage),
            (status = 400, description = "A bad query parameter", body = Problem, content_type = PROBLEM),
            (status = 401, description = "No token, or a token that is not valid", body = Problem, content_type = PROBLEM),
            (status = 404, description = "No such tenant (or another tenant's)", body = Problem, content_type = PROBLEM),
            (status = 503, description = "The session directory did not answer in time", body = Problem, content_type = PROBLEM),
        ))]
    fn tenant_sessions() {}

    #[utoipa::path(get, path = "/api/v1/tenants/{tenant}/templates", tag = "collector", security(("bearer" = [])),
        params(("tenant" = String, Path, description = "The tenant's id")),
        responses(
            (status = 200, description = "The tenant's templates per exporter and Observation Domain", body = TemplateList),
            (status = 401, description = "No token, or a token that is not valid", body = Problem, content_type = PROBLEM),
            (status = 404, description = "No such tenant (or another tenant's)", body = Problem, content_type = PROBLEM),
            (status = 503, description = "The template store did not answer", body = Problem, content_type = PROBLEM),
        ))]
    fn tenant_templates() {}

    #[utoipa::path(post, path = "/api/v1/tenants/{tenant}/streams", tag = "streams", security(("bearer" = [])),
        params(("tenant" = String, Path, description = "The tenant's id")),
        request_body(content = StreamSpec, description = "The stream; `tenants` may be left out (it is the path's tenant); an `ndjson` sink needs a relative `path`, placed under the node's storage"),
        responses(
            (status = 201, description = "Made; every node starts it; `Location` names it", body = StreamView),
            (status = 400, description = "A stream that does not check: the field and why (a filter: the column)", body = Problem, content_type = PROBLEM),
            (status = 401, description = "No token, or a token that is not valid", body = Problem, content_type = PROBLEM),
            (status = 404, description = "No such tenant (or another tenant's)", body = Problem, content_type = PROBLEM),
            (status = 409, description = "The tenant has a stream of that name (PUT replaces it)", body = Problem, content_type = PROBLEM),
            (status = 413, description = "A body over 64 KiB", body = Problem, content_type = PROBLEM),
            (status = 415, description = "Not JSON", body = Problem, content_type = PROBLEM),
            (status = 429, description = "The tenant has the most streams it may have", body = Problem, content_type = PROBLEM),
            (status = 503, description = "The store did not answer", body = Problem, content_type = PROBLEM),
        ))]
    fn create_stream() {}

    #[utoipa::path(get, path = "/api/v1/tenants/{tenant}/streams", tag = "streams", security(("bearer" = [])),
        params(("tenant" = String, Path, description = "The tenant's id")),
        responses(
            (status = 200, description = "The tenant's streams with their figures, summed and per node", body = StreamList),
            (status = 401, description = "No token, or a token that is not valid", body = Problem, content_type = PROBLEM),
            (status = 404, description = "No such tenant (or another tenant's)", body = Problem, content_type = PROBLEM),
            (status = 503, description = "The store did not answer", body = Problem, content_type = PROBLEM),
        ))]
    fn list_streams() {}

    #[utoipa::path(get, path = "/api/v1/tenants/{tenant}/streams/{name}", tag = "streams", security(("bearer" = [])),
        params(("tenant" = String, Path, description = "The tenant's id"), ("name" = String, Path, description = "The stream's name")),
        responses(
            (status = 200, description = "The stream and its figures", body = StreamView),
            (status = 401, description = "No token, or a token that is not valid", body = Problem, content_type = PROBLEM),
            (status = 404, description = "No such tenant or stream", body = Problem, content_type = PROBLEM),
            (status = 503, description = "The store did not answer", body = Problem, content_type = PROBLEM),
        ))]
    fn get_stream() {}

    #[utoipa::path(put, path = "/api/v1/tenants/{tenant}/streams/{name}", tag = "streams", security(("bearer" = [])),
        params(("tenant" = String, Path, description = "The tenant's id"), ("name" = String, Path, description = "The stream's name")),
        request_body(content = StreamSpec, description = "The whole stream; its `name` is the path's"),
        responses(
            (status = 200, description = "Replaced; every node switches to it without a gap", body = StreamView),
            (status = 201, description = "Made", body = StreamView),
            (status = 400, description = "A stream that does not check, or a name that is not the path's", body = Problem, content_type = PROBLEM),
            (status = 401, description = "No token, or a token that is not valid", body = Problem, content_type = PROBLEM),
            (status = 404, description = "No such tenant (or another tenant's)", body = Problem, content_type = PROBLEM),
            (status = 413, description = "A body over 64 KiB", body = Problem, content_type = PROBLEM),
            (status = 415, description = "Not JSON", body = Problem, content_type = PROBLEM),
            (status = 429, description = "The tenant has the most streams it may have", body = Problem, content_type = PROBLEM),
            (status = 503, description = "The store did not answer", body = Problem, content_type = PROBLEM),
        ))]
    fn put_stream() {}

    #[utoipa::path(delete, path = "/api/v1/tenants/{tenant}/streams/{name}", tag = "streams", security(("bearer" = [])),
        params(("tenant" = String, Path, description = "The tenant's id"), ("name" = String, Path, description = "The stream's name")),
        responses(
            (status = 204, description = "Deleted; every node's stream writes what it holds and stops"),
            (status = 401, description = "No token, or a token that is not valid", body = Problem, content_type = PROBLEM),
            (status = 404, description = "No such tenant or stream", body = Problem, content_type = PROBLEM),
            (status = 503, description = "The store did not answer", body = Problem, content_type = PROBLEM),
        ))]
    fn delete_stream() {}

    #[utoipa::path(post, path = "/api/v1/tenants/{tenant}/jobs/pcap-conversion", tag = "jobs", security(("bearer" = [])),
        params(("tenant" = String, Path, description = "The tenant's id"), UploadQuery),
        request_body(description = "The capture, pcap or pcapng, streamed to disk"),
        responses(
            (status = 202, description = "Queued or running; `Location` names the job", body = JobRecord),
            (status = 400, description = "A bad option, or the upload broke off", body = Problem, content_type = PROBLEM),
            (status = 401, description = "No token, or a token that is not valid", body = Problem, content_type = PROBLEM),
            (status = 404, description = "No such tenant (or another tenant's)", body = Problem, content_type = PROBLEM),
            (status = 408, description = "The upload sent nothing for `api.request_timeout_secs`: nothing kept", body = Problem, content_type = PROBLEM),
            (status = 413, description = "Past `api.max_upload_bytes` or the tenant's `upload_bytes` quota: nothing kept", body = Problem, content_type = PROBLEM),
            (status = 415, description = "Not a pcap or pcapng file: nothing kept", body = Problem, content_type = PROBLEM),
            (status = 429, description = "The queue is full, or the tenant's `max_jobs` are queued or running; see `Retry-After`", body = Problem, content_type = PROBLEM),
            (status = 503, description = "This node runs no jobs, or is shutting down", body = Problem, content_type = PROBLEM),
        ))]
    fn submit_job() {}

    #[utoipa::path(get, path = "/api/v1/tenants/{tenant}/jobs", tag = "jobs", security(("bearer" = [])),
        params(("tenant" = String, Path, description = "The tenant's id"), ListQuery),
        responses(
            (status = 200, description = "The tenant's jobs, newest first", body = JobList),
            (status = 400, description = "A bad query parameter", body = Problem, content_type = PROBLEM),
            (status = 401, description = "No token, or a token that is not valid", body = Problem, content_type = PROBLEM),
            (status = 404, description = "No such tenant (or another tenant's)", body = Problem, content_type = PROBLEM),
            (status = 503, description = "This node runs no jobs, or the job store did not answer", body = Problem, content_type = PROBLEM),
        ))]
    fn list_jobs() {}

    #[utoipa::path(get, path = "/api/v1/tenants/{tenant}/jobs/{job_id}", tag = "jobs", security(("bearer" = [])),
        params(
            ("tenant" = String, Path, description = "The tenant's id"),
            ("job_id" = JobId, Path, description = "The job's id"),
        ),
        responses(
            (status = 200, description = "The job: state, progress, summary, error, timings", body = JobRecord),
            (status = 401, description = "No token, or a token that is not valid", body = Problem, content_type = PROBLEM),
            (status = 404, description = "No such job of this tenant", body = Problem, content_type = PROBLEM),
            (status = 503, description = "This node runs no jobs, or the job store did not answer", body = Problem, content_type = PROBLEM),
        ))]
    fn get_job() {}

    #[utoipa::path(delete, path = "/api/v1/tenants/{tenant}/jobs/{job_id}", tag = "jobs", security(("bearer" = [])),
        params(
            ("tenant" = String, Path, description = "The tenant's id"),
            ("job_id" = JobId, Path, description = "The job's id"),
        ),
        responses(
            (status = 200, description = "Cancelled (it was queued)", body = JobRecord),
            (status = 202, description = "Cancelling (it was running)", body = JobRecord),
            (status = 401, description = "No token, or a token that is not valid", body = Problem, content_type = PROBLEM),
            (status = 404, description = "No such job of this tenant", body = Problem, content_type = PROBLEM),
            (status = 409, description = "The job has already ended", body = Problem, content_type = PROBLEM),
            (status = 503, description = "This node runs no jobs, or the node running it did not answer", body = Problem, content_type = PROBLEM),
        ))]
    fn cancel_job() {}

    #[utoipa::path(get, path = "/api/v1/tenants/{tenant}/jobs/{job_id}/result", tag = "jobs", security(("bearer" = [])),
        params(
            ("tenant" = String, Path, description = "The tenant's id"),
            ("job_id" = JobId, Path, description = "The job's id"),
        ),
        responses(
            (status = 200, description = "The IPFIX file"),
            (status = 206, description = "The part asked for with `Range`"),
            (status = 401, description = "No token, or a token that is not valid", body = Problem, content_type = PROBLEM),
            (status = 404, description = "No such job of this tenant, or no result (yet)", body = Problem, content_type = PROBLEM),
            (status = 416, description = "A range outside the file"),
            (status = 503, description = "This node runs no jobs, or the job store did not answer", body = Problem, content_type = PROBLEM),
        ))]
    fn job_result() {}

    #[utoipa::path(post, path = "/api/v1/tenants/{tenant}/jobs/time-series", tag = "jobs", security(("bearer" = [])),
        params(("tenant" = String, Path, description = "The tenant's id"), TimeSeriesOptions),
        request_body(description = "`application/json`: a `TimeSeriesRequest` naming a conversion job (`input` or `after`), the options in its `options` and none in the query. Anything else: an IPFIX file (RFC 5655) or a pcap or pcapng capture of export traffic, streamed to disk, the options in the query"),
        responses(
            (status = 202, description = "Queued, waiting for the job it follows, or running; `Location` names the job", body = JobRecord),
            (status = 400, description = "A bad option or body, or a job that is not a conversion", body = Problem, content_type = PROBLEM),
            (status = 401, description = "No token, or a token that is not valid", body = Problem, content_type = PROBLEM),
            (status = 404, description = "No such tenant (or another tenant's), or no such job of it", body = Problem, content_type = PROBLEM),
            (status = 408, description = "The body sent nothing for `api.request_timeout_secs`: nothing kept", body = Problem, content_type = PROBLEM),
            (status = 409, description = "The `input` job has not succeeded (yet), or the `after` job ended without a result", body = Problem, content_type = PROBLEM),
            (status = 413, description = "Past `api.max_upload_bytes`, the tenant's `upload_bytes` quota, or 64 KiB of JSON: nothing kept", body = Problem, content_type = PROBLEM),
            (status = 415, description = "Not an IPFIX file or capture: nothing kept", body = Problem, content_type = PROBLEM),
            (status = 429, description = "The queue is full, or the tenant's `max_jobs` are queued or running; see `Retry-After`", body = Problem, content_type = PROBLEM),
            (status = 503, description = "This node runs no jobs, or is shutting down", body = Problem, content_type = PROBLEM),
        ))]
    fn submit_time_series() {}

    #[utoipa::path(post, path = "/api/v1/tenants/{tenant}/jobs/analysis", tag = "jobs", security(("bearer" = [])),
        params(("tenant" = String, Path, description = "The tenant's id"), AnalysisOptions),
        request_body(description = "As for time series: `application/json`, an `AnalysisRequest` naming a conversion job (`input` or `after`) with the options in `options`; anything else, an IPFIX file or a capture of export traffic with the options in the query. Results: `analysis.json` (= result) and its chart `analysis.svg`"),
        responses(
            (status = 202, description = "Queued, waiting for the job it follows, or running; `Location` names the job", body = JobRecord),
            (status = 400, description = "A bad option or body, or a job that is not a conversion", body = Problem, content_type = PROBLEM),
            (status = 401, description = "No token, or a token that is not valid", body = Problem, content_type = PROBLEM),
            (status = 404, description = "No such tenant (or another tenant's), or no such job of it", body = Problem, content_type = PROBLEM),
            (status = 408, description = "The body sent nothing for `api.request_timeout_secs`: nothing kept", body = Problem, content_type = PROBLEM),
            (status = 409, description = "The `input` job has not succeeded (yet), or the `after` job ended without a result", body = Problem, content_type = PROBLEM),
            (status = 413, description = "Past `api.max_upload_bytes`, the tenant's `upload_bytes` quota, or 64 KiB of JSON: nothing kept", body = Problem, content_type = PROBLEM),
            (status = 415, description = "Not an IPFIX file or capture: nothing kept", body = Problem, content_type = PROBLEM),
            (status = 429, description = "The queue is full, or the tenant's `max_jobs` are queued or running; see `Retry-After`", body = Problem, content_type = PROBLEM),
            (status = 503, description = "This node runs no jobs, or is shutting down", body = Problem, content_type = PROBLEM),
        ))]
    fn submit_analysis() {}

    #[utoipa::path(get, path = "/api/v1/tenants/{tenant}/jobs/{job_id}/{file}", tag = "jobs", security(("bearer" = [])),
        params(
            ("tenant" = String, Path, description = "The tenant's id"),
            ("job_id" = JobId, Path, description = "The job's id"),
            ("file" = String, Path, description = "One of the record's `files` (a time series: `series.json`, `series.csv`, `series.svg`, `series.png`)"),
        ),
        responses(
            (status = 200, description = "The file"),
            (status = 206, description = "The part asked for with `Range`"),
            (status = 401, description = "No token, or a token that is not valid", body = Problem, content_type = PROBLEM),
            (status = 404, description = "No such job of this tenant, no result (yet), or no such file of it", body = Problem, content_type = PROBLEM),
            (status = 416, description = "A range outside the file"),
            (status = 503, description = "This node runs no jobs, or the job store did not answer", body = Problem, content_type = PROBLEM),
        ))]
    fn job_file() {}

    #[utoipa::path(get, path = "/api/v1/tenants/{tenant}/timeseries", tag = "streams", security(("bearer" = [])),
        params(("tenant" = String, Path, description = "The tenant's id"), SeriesQuery),
        responses(
            (status = 200, description = "The series of the window, merged over the nodes (JSON), or with `Accept: image/svg+xml` their chart", body = LiveSeries),
            (status = 400, description = "A bad query: a window past 20,000 intervals, a key the stream does not keep, several streams and none named", body = Problem, content_type = PROBLEM),
            (status = 401, description = "No token, or a token that is not valid", body = Problem, content_type = PROBLEM),
            (status = 404, description = "No such tenant (or another tenant's), or it has no timeseries stream", body = Problem, content_type = PROBLEM),
            (status = 503, description = "The nodes did not answer in time", body = Problem, content_type = PROBLEM),
        ))]
    fn live_series() {}

    #[utoipa::path(get, path = "/", tag = "console",
        responses((status = 200, description = "The web console's page")))]
    fn console() {}

    #[utoipa::path(get, path = "/console/{file}", tag = "console",
        params(("file" = String, Path, description = "`app.js` or `app.css`")),
        responses(
            (status = 200, description = "The console's script or style sheet"),
            (status = 404, description = "No such file", body = Problem, content_type = PROBLEM),
        ))]
    fn console_file() {}
}
