//! The `http` sink: records POSTed as JSON arrays (`[{...},{...}]`, each object the NDJSON
//! line's) of at most `batch_records`, to a flow store's ingest URL. A request that fails
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
}

enum Sent {
    Ok,
    /// Worth sending again.
    Retry(String),
    /// Refused for good.
    Refused(String),
}

impl HttpSink {
    pub fn new(
        url: String,
        batch_records: Option<u32>,
        timeout_secs: Option<u32>,
        policy: OnFull,
        stats: Arc<StreamStats>,
        registry: Arc<Registry>,
    ) -> HttpSink {
        let timeout = Duration::from_secs(timeout_secs.unwrap_or(10) as u64);
        HttpSink {
            client: reqwest::Client::builder()
                .timeout(timeout)
                .build()
                .unwrap_or_default(),
            breaker: Breaker::new(url.clone(), policy, stats.clone()),
            url,
            batch: batch_records.unwrap_or(1000) as usize,
            stats,
            writer: RecordWriter::new(),
            registry,
        }
    }

    /// The records of `recs` as JSON arrays of at most `batch` objects, with their counts.
    fn bodies(&mut self, recs: &[Records]) -> Vec<(Vec<u8>, u64)> {
        let mut lines = Vec::new();
        for r in recs {
            render(&mut lines, &mut self.writer, r, &self.registry);
        }
        let mut out = Vec::new();
        let mut body = vec![b'['];
        let mut n = 0u64;
        for line in lines.split(|&c| c == b'\n').filter(|l| !l.is_empty()) {
            if n > 0 {
                body.push(b',');
            }
            body.extend_from_slice(line);
            n += 1;
            if n as usize >= self.batch {
                body.push(b']');
                out.push((std::mem::replace(&mut body, vec![b'[']), n));
                n = 0;
            }
        }
        if n > 0 {
            body.push(b']');
            out.push((body, n));
        }
        out
    }

    async fn post(&self, body: &[u8]) -> Sent {
        let r = self
            .client
            .post(&self.url)
            .header("content-type", "application/json")
            .body(body.to_vec())
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

    /// POSTs `recs`; returns how many records the server took.
    pub async fn write(&mut self, recs: &[Records]) -> std::io::Result<u64> {
        let mut taken = 0;
        for (body, n) in self.bodies(recs) {
            loop {
                if let Gate::Drop = self.breaker.gate().await {
                    self.breaker.drop_records(n);
                    break;
                }
                match self.post(&body).await {
                    Sent::Ok => {
                        self.breaker.succeeded();
                        taken += n;
                        break;
                    }
                    Sent::Retry(why) => self.breaker.failed(&why),
                    Sent::Refused(why) => {
                        tracing::warn!(url = %self.url, why, records = n, "http sink: refused, dropped");
                        self.stats.sink_errors.fetch_add(1, Ordering::Relaxed);
                        self.stats.dropped.fetch_add(n, Ordering::Relaxed);
                        break;
                    }
                }
            }
        }
        Ok(taken)
    }
}
