//! The HTTP server loop, with the bounds a public port needs and warp's own `serve` lacks (it
//! runs hyper without a timer and takes any number of connections, so clients that connect and
//! say nothing, or trickle their headers, hold connections for ever):
//! - at most `api.max_connections` at once: past it a new connection is closed at once (counted
//!   and logged at powers of two) rather than queued behind stalled ones;
//! - a connection with no traffic for `api.header_timeout_secs` is shut down gracefully (a
//!   request in flight is answered first): hyper has no idle timeout of its own, and its header
//!   timeout only starts with the first byte of a request;
//! - `api.header_timeout_secs` to send a request's headers once begun (hyper's);
//! - (in jobs.rs) an upload that sends nothing for `api.request_timeout_secs` is cut with 408.
//!
//! Connections are tasks of one `JoinSet` owned by this loop: when the loop ends (or is
//! aborted at the end of the grace period), every connection ends with it.

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use warp::Filter;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    /// How long a request may wait on the actors behind it (`api.request_timeout_secs`).
    pub request_timeout: Duration,
}

/// Connections closed at `max_connections` since the start (for `/metrics`).
#[derive(Debug, Default)]
pub struct Refused(AtomicU64);

impl Refused {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A connection's stream, stamping the time of its last traffic.
struct Watched {
    stream: TcpStream,
    start: Instant,
    /// Milliseconds after `start` of the last read or write that moved bytes.
    last: Arc<AtomicU64>,
}

impl Watched {
    fn stamp(&self) {
        self.last
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.stamp();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.stream).poll_write(cx, data);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.stamp();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Starts each request's span (and its `Request`, which the routes find in the request's
/// extensions) before warp sees it, and runs warp's work for it inside the span.
#[derive(Clone)]
struct Traced<S>(S);

impl<S, B> tower_service::Service<warp::http::Request<B>> for Traced<S>
where
    S: tower_service::Service<warp::http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = tracing::instrument::Instrumented<S::Future>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, mut req: warp::http::Request<B>) -> Self::Future {
        use tracing::Instrument;
        let start = super::Request::start(&req);
        let span = start.span().clone();
        req.extensions_mut().insert(start);
        self.0.call(req).instrument(span)
    }
}

/// `ipfixsvc.http.refused_connections`: made on first use, after the meter provider is set.
static REFUSED_CONNECTIONS: std::sync::LazyLock<opentelemetry::metrics::Counter<u64>> =
    std::sync::LazyLock::new(|| {
        crate::telemetry::metrics::meter()
            .u64_counter("ipfixsvc.http.refused_connections")
            .with_unit("{connection}")
            .with_description("connections closed at once at api.max_connections")
            .build()
    });

/// Serves `filter` on `listener` until `shutdown` resolves; then stops accepting and lets the
/// connections finish their requests (the caller bounds how long).
pub async fn serve<F>(
    listener: TcpListener,
    filter: F,
    limits: Limits,
    refused: Arc<Refused>,
    shutdown: impl std::future::Future<Output = ()>,
) where
    F: Filter + Clone + Send + Sync + 'static,
    F::Extract: warp::Reply,
{
    let service = Traced(warp::service(filter));
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    // Tells every connection to finish its request and close.
    let (stop_tx, stop_rx) = watch::channel(());
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    // No HTTP/2 keep-alive pings: their traffic would keep an idle connection from ever
    // looking idle.
    builder.http2().timer(TokioTimer::new());
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: wait a little rather than spin.
                tracing::warn!(error = %e, "API accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            let n = refused.0.fetch_add(1, Ordering::Relaxed) + 1;
            REFUSED_CONNECTIONS.add(1, &[]);
            if n.is_power_of_two() {
                tracing::warn!(
                    %peer, refused = n, max = limits.max_connections,
                    "API connection refused: api.max_connections are open"
                );
            }
            drop(stream);
            continue;
        };
        let start = Instant::now();
        let last = Arc::new(AtomicU64::new(0));
        let io = TokioIo::new(Watched {
            stream,
            start,
            last: last.clone(),
        });
        let conn = builder
            .serve_connection(io, TowerToHyperService::new(service.clone()))
            .into_owned();
        let mut stop = stop_rx.clone();
        let idle = limits.header_timeout;
        let request_timeout = limits.request_timeout;
        connections.spawn(async move {
            let mut conn = std::pin::pin!(conn);
            let mut tick = tokio::time::interval(idle / 4);
            let mut closing = false;
            loop {
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(%peer, error = %e, "API connection ended with an error");
                        }
                        break;
                    }
                    _ = stop.changed(), if !closing => {
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                    _ = tick.tick() => {
                        let quiet = start.elapsed().saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
                        if !closing && quiet >= idle {
                            // Idle, or a request whose client went quiet: answered first, then closed.
                            conn.as_mut().graceful_shutdown();
                            closing = true;
                        } else if closing && quiet >= idle + request_timeout {
                            // Still nothing moves (a peer that stopped reading): dropped, and its
                            // place with it.
                            break;
                        }
                    }
                }
            }
            drop(permit);
        });
    }
    drop(listener);
    // In-flight requests finish; idle connections close. Connections stay owned here, so an
    // abort of this task (grace over) ends them too.
    let _ = stop_tx.send(());
    while connections.join_next().await.is_some() {}
}
