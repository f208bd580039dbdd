//! The REST API (role `api`): warp routes that talk to actors only by message. `ApiServer` is the
//! actor that owns the HTTP listener: it binds in `pre_start` (a bad or taken `api.listen` fails
//! the start, naming it), serves from a watched task (its end stops the actor, which the
//! NodeSupervisor restarts), and on stop stops accepting and lets requests in flight finish
//! within the grace it was given.
//!
//! Every response carries an `x-request-id` (the client's, when it sent a sane one, else made
//! here), and every request is one log line with it. Errors are RFC 9457 problems.

pub mod auth;
pub mod console;
pub mod jobs;
pub mod openapi;
pub mod problem;
pub mod routes;
pub mod server;
pub mod sessions;
pub mod streams;
pub mod templates;
pub mod tenants;
pub mod timeseries;

use opentelemetry::KeyValue;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorMessage;
use routes::Ctx;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use warp::Filter;

pub const API_SERVER: &str = "api";

#[derive(RactorMessage)]
pub enum ApiMsg {
    LocalAddr(RpcReplyPort<SocketAddr>),
}

#[derive(Clone)]
pub struct ApiArgs {
    pub listen: String,
    pub ctx: Ctx,
    /// How long requests in flight may take to finish when the server stops.
    pub grace: Duration,
    pub limits: server::Limits,
}

pub struct ApiState {
    local: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
    grace: Duration,
}

pub struct ApiServer;

/// A request id: the client's when it is short and plain, else a new one.
fn request_id<B>(req: &warp::http::Request<B>) -> String {
    req.headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|g| {
            !g.is_empty()
                && g.len() <= 128
                && g.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string())
}

/// A request as it starts: its span (ended when the answer is made) and its route template.
/// Made before warp sees the request (`server::serve`), so that everything the routes do runs
/// in the span: the calls to other nodes it makes carry its trace.
#[derive(Clone)]
pub struct Request {
    id: String,
    method: warp::http::Method,
    path: String,
    route: &'static str,
    started: Instant,
    span: tracing::Span,
}

impl Request {
    pub fn start<B>(req: &warp::http::Request<B>) -> Request {
        let id = request_id(req);
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        // A path the document does not have is one route, not one series per path.
        let route = openapi::route(&path).unwrap_or("other");
        let span = tracing::info_span!(
            "http request",
            otel.name = %format_args!("{method} {route}"),
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            http.request.method = %method,
            http.route = route,
            url.path = path.as_str(),
            request_id = %id,
            http.response.status_code = tracing::field::Empty,
        );
        // A client that traces (W3C Trace Context) gets this request inside its trace.
        if let Some(parent) = req
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(crate::telemetry::client_traceparent)
        {
            crate::telemetry::follow(&span, &parent);
        }
        Request {
            id,
            method,
            path,
            route,
            started: Instant::now(),
            span,
        }
    }

    pub fn span(&self) -> &tracing::Span {
        &self.span
    }
}

/// `http.server.request.duration` (OpenTelemetry's HTTP semantic conventions): seconds, by
/// method, route and status.
fn request_duration() -> opentelemetry::metrics::Histogram<f64> {
    opentelemetry::global::meter("ipfixsvc")
        .f64_histogram("http.server.request.duration")
        .with_unit("s")
        .with_description("Duration of HTTP server requests")
        .with_boundaries(vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ])
        .build()
}

impl Actor for ApiServer {
    type Msg = ApiMsg;
    type State = ApiState;
    type Arguments = ApiArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ApiMsg>,
        args: ApiArgs,
    ) -> Result<ApiState, ActorProcessingErr> {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .map_err(|e| format!("cannot listen for the API on {}: {e}", args.listen))?;
        let local = listener.local_addr()?;
        let ctx = args.ctx.clone();
        let duration = request_duration();
        let routes = warp::ext::get::<Request>()
            .and(routes::all(ctx).recover(problem::never))
            .map(move |req: Request, reply| {
                let Request {
                    id,
                    method,
                    path,
                    route,
                    started,
                    span,
                } = req;
                let mut r = warp::Reply::into_response(reply);
                if let Ok(v) = warp::http::HeaderValue::from_str(&id) {
                    r.headers_mut().insert("x-request-id", v);
                }
                if r.status() == warp::http::StatusCode::METHOD_NOT_ALLOWED
                    && let Some(v) = openapi::allowed(&path)
                        .and_then(|m| warp::http::HeaderValue::from_str(&m).ok())
                {
                    r.headers_mut().insert(warp::http::header::ALLOW, v);
                }
                let status = r.status().as_u16();
                span.record("http.response.status_code", i64::from(status));
                if r.status().is_server_error() {
                    span.record("otel.status_code", "ERROR");
                }
                duration.record(
                    started.elapsed().as_secs_f64(),
                    &[
                        KeyValue::new("http.request.method", method.to_string()),
                        KeyValue::new("http.route", route),
                        KeyValue::new("http.response.status_code", i64::from(status)),
                    ],
                );
                tracing::info!(
                    parent: &span,
                    request_id = %id, %method, path = path.as_str(),
                    status,
                    took_us = started.elapsed().as_micros() as u64,
                    "http request"
                );
                r
            });
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let me = myself.get_cell();
        let limits = args.limits;
        let refused = args.ctx.refused.clone();
        let server = tokio::spawn(async move {
            server::serve(listener, routes, limits, refused, async move {
                let _ = rx.await;
            })
            .await;
            // Ended without being told to (the runtime going away aside): restart it.
            me.stop(Some("API server ended".into()));
        });
        tracing::info!(api = %local, admin_token = %args.ctx.admin.source, "API listening");
        Ok(ApiState {
            local,
            shutdown: Some(tx),
            server: Some(server),
            grace: args.grace,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<ApiMsg>,
        msg: ApiMsg,
        state: &mut ApiState,
    ) -> Result<(), ActorProcessingErr> {
        let ApiMsg::LocalAddr(reply) = msg;
        let _ = reply.send(state.local);
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<ApiMsg>,
        state: &mut ApiState,
    ) -> Result<(), ActorProcessingErr> {
        // Stop accepting; requests in flight get the grace period, then are cut.
        if let Some(tx) = state.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(mut server) = state.server.take()
            && tokio::time::timeout(state.grace, &mut server)
                .await
                .is_err()
        {
            server.abort();
            tracing::warn!("API requests still in flight at the end of the grace period: cut");
        }
        Ok(())
    }
}

impl Drop for ApiState {
    /// Killed (no `post_stop`): the listener must not outlive the actor.
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.abort();
        }
    }
}
