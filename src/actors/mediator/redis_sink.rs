//! The `redis_stream` sink: `XADD key MAXLEN ~ N * field value ...`, one entry per record (its
//! NDJSON object's keys and values, strings without their quotes) or per message (field
//! `records`: the NDJSON lines of its records), gathered into one pipeline of up to
//! `PIPELINE_RECORDS` records or `PIPELINE_BYTES` (a round trip per message held a stream to
//! a quarter of a million records/s), sent whole when full and when the stream flushes. A failed write is retried whole after a
//! reconnect (at least once); the backoff and breaker are `breaker.rs`'s.

use super::StreamStats;
use super::breaker::{Breaker, Gate};
use super::ndjson_sink::render;
use crate::mediation::Records;
use crate::mediation::spec::{OnFull, StreamEntry};
use crate::wire::Registry;
use crate::wire::ndjson_writer::RecordWriter;
use redis::aio::MultiplexedConnection;
use std::sync::Arc;
use std::time::Duration;

const ANSWER_WITHIN: Duration = Duration::from_secs(5);
pub const DEFAULT_MAXLEN: u64 = 1_000_000;
const PIPELINE_RECORDS: u64 = 4096;
const PIPELINE_BYTES: usize = 1 << 20;

pub struct RedisSink {
    client: Option<redis::Client>,
    conn: Option<MultiplexedConnection>,
    key: String,
    maxlen: u64,
    entry: StreamEntry,
    breaker: Breaker,
    writer: RecordWriter,
    registry: Arc<Registry>,
    lines: Vec<u8>,
    /// The commands not sent yet, for `pending_records` records of about `pending_bytes`.
    pending: redis::Pipeline,
    pending_records: u64,
    pending_bytes: usize,
}

fn io(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

impl RedisSink {
    pub fn new(
        url: &str,
        key: String,
        maxlen: Option<u64>,
        entry: Option<StreamEntry>,
        policy: OnFull,
        stats: Arc<StreamStats>,
        registry: Arc<Registry>,
    ) -> RedisSink {
        RedisSink {
            // A URL the client refuses fails every write (counted), as a peer that is down.
            client: redis::Client::open(url).ok(),
            conn: None,
            key,
            maxlen: maxlen.unwrap_or(DEFAULT_MAXLEN),
            entry: entry.unwrap_or(StreamEntry::Record),
            breaker: Breaker::new(url.to_string(), policy, stats),
            writer: RecordWriter::new(),
            registry,
            lines: Vec::new(),
            pending: redis::pipe(),
            pending_records: 0,
            pending_bytes: 0,
        }
    }

    fn xadd(&self) -> redis::Cmd {
        let mut c = redis::cmd("XADD");
        c.arg(&self.key)
            .arg("MAXLEN")
            .arg("~")
            .arg(self.maxlen)
            .arg("*");
        c
    }

    /// Adds the `XADD`s for `recs` to the pending pipeline.
    fn commands(&mut self, recs: &[Records]) {
        let mut pipe = std::mem::replace(&mut self.pending, redis::pipe());
        for r in recs {
            let mut lines = std::mem::take(&mut self.lines);
            lines.clear();
            render(&mut lines, &mut self.writer, r, &self.registry);
            if lines.is_empty() {
                self.lines = lines;
                continue;
            }
            self.pending_bytes += lines.len();
            match self.entry {
                StreamEntry::Batch => {
                    let mut c = self.xadd();
                    c.arg("records").arg(&lines[..]);
                    pipe.add_command(c).ignore();
                }
                StreamEntry::Record => {
                    for line in lines.split(|&c| c == b'\n').filter(|l| !l.is_empty()) {
                        let Ok(serde_json::Value::Object(o)) = serde_json::from_slice(line) else {
                            continue;
                        };
                        let mut c = self.xadd();
                        for (name, v) in o {
                            let text = match v {
                                serde_json::Value::String(s) => s,
                                other => other.to_string(),
                            };
                            c.arg(name).arg(text);
                        }
                        pipe.add_command(c).ignore();
                    }
                }
            }
            self.lines = lines;
        }
        self.pending = pipe;
    }

    /// Records held and not yet sent.
    pub fn buffered(&self) -> u64 {
        self.pending_records
    }

    /// Adds `recs` to the pending pipeline, sent when full; returns how many records went out.
    pub async fn write(&mut self, recs: &[Records]) -> std::io::Result<u64> {
        let n: u64 = recs.iter().map(|r| r.count() as u64).sum();
        if n == 0 {
            return Ok(0);
        }
        self.commands(recs);
        self.pending_records += n;
        if self.pending_records >= PIPELINE_RECORDS || self.pending_bytes >= PIPELINE_BYTES {
            return self.flush().await;
        }
        Ok(0)
    }

    /// Sends the pending pipeline; returns how many records went out.
    pub async fn flush(&mut self) -> std::io::Result<u64> {
        let n = std::mem::take(&mut self.pending_records);
        self.pending_bytes = 0;
        let pipe = std::mem::replace(&mut self.pending, redis::pipe());
        if n == 0 {
            return Ok(0);
        }
        loop {
            if self.conn.is_none() {
                if let Gate::Drop = self.breaker.gate().await {
                    self.breaker.drop_records(n);
                    return Ok(0);
                }
                let connected = match &self.client {
                    Some(c) => {
                        tokio::time::timeout(ANSWER_WITHIN, c.get_multiplexed_async_connection())
                            .await
                            .map_err(io)
                            .and_then(|r| r.map_err(io))
                    }
                    None => Err(io("the URL cannot be used")),
                };
                match connected {
                    Ok(c) => self.conn = Some(c),
                    Err(e) => {
                        self.breaker.failed(&e);
                        continue;
                    }
                }
            }
            let Some(conn) = self.conn.as_mut() else {
                continue;
            };
            let sent: Result<(), std::io::Error> =
                tokio::time::timeout(ANSWER_WITHIN, pipe.query_async::<()>(conn))
                    .await
                    .map_err(io)
                    .and_then(|r| r.map_err(io));
            match sent {
                Ok(()) => {
                    self.breaker.succeeded();
                    return Ok(n);
                }
                Err(e) => {
                    self.conn = None;
                    self.breaker.failed(&e);
                }
            }
        }
    }
}
