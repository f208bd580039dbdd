//! The `redis_stream` sink: `XADD key MAXLEN ~ N * field value ...`, one entry per record (its
//! NDJSON object's keys and values, strings without their quotes) or per message (field
//! `records`: the NDJSON lines of its records), pipelined per write. A failed write is retried whole after a
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

    /// The pipeline of `XADD`s for `recs`.
    fn commands(&mut self, recs: &[Records]) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        for r in recs {
            let mut lines = std::mem::take(&mut self.lines);
            lines.clear();
            render(&mut lines, &mut self.writer, r, &self.registry);
            if lines.is_empty() {
                self.lines = lines;
                continue;
            }
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
        pipe
    }

    /// Adds `recs` to the stream; returns how many records went out.
    pub async fn write(&mut self, recs: &[Records]) -> std::io::Result<u64> {
        let n: u64 = recs.iter().map(|r| r.count() as u64).sum();
        if n == 0 {
            return Ok(0);
        }
        let pipe = self.commands(recs);
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
