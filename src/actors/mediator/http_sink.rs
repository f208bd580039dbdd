//! The `http` sink: records POSTed as JSON arrays (`[{...},{...}]`, each object the NDJSON
//! line's) of `batch_records` (fewer when the stream flushes: when it runs idle, and at
//! least each tick), to a flow store's ingest URL, `http://` or `https://` (rustls; the
//! system's CAs, and those of `ca_file` for a private CA). A request that fails
//! (no connection, a timeout, 5xx, 429) is sent again after the backoff (at least once); one
//! the server refuses for good (another 4xx) is dropped and counted, since sending it again
//! cannot help. The backoff and breaker are `breaker.rs`'s.

use super::StreamStats;
use super::breaker::{Breaker, Gate};
use super::ndjson_sink::render;
use crate::mediation::Records;
use crate::mediation::spec::OnFull;
use crate::wire::Registry;
use crate::wire::ndjson_writer::RecordWriter;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

pub struct HttpSink {
    client: reqwest::Client,
    url: String,
    batch: usize,
    breaker: Breaker,
    stats: Arc<StreamStats>,
    writer: RecordWriter,
    registry: Arc<Registry>,
    lines: Vec<u8>,
    /// The body being gathered (`[` and the objects so far) and its records.
    body: Vec<u8>,
    held: u64,
}

enum Sent {
    Ok,
    /// Worth sending again.
    Retry(String),
    /// Refused for good.
    Refused(String),
}

impl HttpSink {
    /// `ca_file`: PEM certificates trusted besides the system's (an unreadable or empty one
    /// refuses the stream at start, naming the file).
    pub fn new(
        url: String,
        batch_records: Option<u32>,
        timeout_secs: Option<u32>,
        ca_file: Option<&str>,
        policy: OnFull,
        stats: Arc<StreamStats>,
        registry: Arc<Registry>,
    ) -> std::io::Result<HttpSink> {
        let timeout = Duration::from_secs(timeout_secs.unwrap_or(10) as u64);
        let mut client = reqwest::Client::builder().timeout(timeout);
        if let Some(f) = ca_file {
            let bad = |e: &dyn std::fmt::Display| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("ca_file {f}: {e}"),
                )
            };
            let pem = std::fs::read(f).map_err(|e| bad(&e))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| bad(&e))?;
            if certs.is_empty() {
                return Err(bad(&"no PEM certificate in it"));
            }
            for c in certs {
                client = client.add_root_certificate(c);
            }
        }
        let client = client
            .build()
            .map_err(|e| std::io::Error::other(format!("http client: {e}")))?;
        Ok(HttpSink {
            client,
            breaker: Breaker::new(url.clone(), policy, stats.clone()),
            url,
            batch: batch_records.unwrap_or(1000) as usize,
            stats,
            writer: RecordWriter::new(),
            registry,
            lines: Vec::new(),
            body: vec![b'['],
            held: 0,
        })
    }

    /// Records held and not yet sent.
    pub fn buffered(&self) -> u64 {
        self.held
    }

    async fn post(&self, body: &bytes::Bytes) -> Sent {
        let r = self
            .client
            .post(&self.url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await;
        match r {
            Ok(resp) if resp.status().is_success() => Sent::Ok,
            Ok(resp) if resp.status().is_server_error() || resp.status().as_u16() == 429 => {
                Sent::Retry(format!("HTTP {}", resp.status()))
            }
            Ok(resp) => Sent::Refused(format!("HTTP {}", resp.status())),
            Err(e) => Sent::Retry(e.to_string()),
        }
    }

    /// Adds `recs` to the body, POSTed each time it holds `batch_records`; returns how many
    /// records the server took.
    pub async fn write(&mut self, recs: &[Records]) -> std::io::Result<u64> {
        let mut lines = std::mem::take(&mut self.lines);
        lines.clear();
        for r in recs {
            render(&mut lines, &mut self.writer, r, &self.registry);
        }
        let mut taken = 0;
        for line in lines.split(|&c| c == b'\n').filter(|l| !l.is_empty()) {
            if self.held > 0 {
                self.body.push(b',');
            }
            self.body.extend_from_slice(line);
            self.held += 1;
            if self.held as usize >= self.batch {
                taken += self.flush().await?;
            }
        }
        self.lines = lines;
        Ok(taken)
    }

    /// POSTs the body gathered so far; returns how many records the server took.
    pub async fn flush(&mut self) -> std::io::Result<u64> {
        let n = std::mem::take(&mut self.held);
        if n == 0 {
            return Ok(0);
        }
        let mut body = std::mem::replace(&mut self.body, vec![b'[']);
        body.push(b']');
        let body = bytes::Bytes::from(body);
        loop {
            if let Gate::Drop = self.breaker.gate().await {
                self.breaker.drop_records(n);
                return Ok(0);
            }
            match self.post(&body).await {
                Sent::Ok => {
                    self.breaker.succeeded();
                    return Ok(n);
                }
                Sent::Retry(why) => self.breaker.failed(&why),
                Sent::Refused(why) => {
                    tracing::warn!(url = %self.url, why, records = n, "http sink: refused, dropped");
                    self.stats.sink_errors.fetch_add(1, Ordering::Relaxed);
                    self.stats.dropped.fetch_add(n, Ordering::Relaxed);
                    return Ok(0);
                }
            }
        }
    }
}
