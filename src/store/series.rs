//! Live series kept in Redis (a `timeseries` sink with `store = "redis"`): every node writes its
//! own cells, and any node answers a query from all of them, so the series survive a node's
//! restart and need no node to be up but the one asked.
//!
//! One Redis hash per tenant, stream, interval length, key and interval:
//! `ipfix:series:{tenant}:{stream}:{interval_secs}:{by}:{interval}` (`by` is `-` for the total,
//! `stream` the stream's name, `{owner}/{name}` for a tenant's own stream). Its fields are the
//! writers (one per sink a node ran: a restarted node writes under a new one, so what it held
//! before stays and adds up), its values the writer's cells of that interval as bincode. A
//! writer rewrites whole cells (not increments), so a write that failed is simply written again.
//! Each hash expires `ttl_secs` after its last write.
//!
//! Beside them, `ipfix:series-writers:{stream}` holds each writer's state, written with its
//! cells (and alone each second when nothing changed): the Unix milliseconds of its last write,
//! or `closed:` and them once its sink stopped cleanly. A reader names the writers whose cells it
//! added while they are neither closed nor written lately: records they collected since may be
//! missing (a node cut off from Redis, or gone without stopping).

use super::StoreError;
use super::codec;
use super::redis_conn::RedisConn;
use crate::analysis::series::Cells;

/// A writer not closed and not written for this long is named in a reader's errors.
pub const WRITER_STALE_MS: u64 = 5_000;

/// One writer's cells of one interval and key are bounded by the sink's `max_keys` (100,000 at
/// most, keys up to 256 bytes): a value read back may not claim more.
const MAX_CELLS_BYTES: usize = 64 << 20;

pub struct SeriesStore {
    conn: RedisConn,
}

/// Where one interval of one key of a tenant's series lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesKey<'a> {
    pub tenant: &'a str,
    pub stream: &'a str,
    pub interval_secs: u64,
    /// None: the total.
    pub by: Option<&'a str>,
}

impl SeriesKey<'_> {
    pub fn at(&self, interval: i64) -> String {
        format!(
            "ipfix:series:{}:{}:{}:{}:{interval}",
            self.tenant,
            self.stream,
            self.interval_secs,
            self.by.unwrap_or("-")
        )
    }
}

impl SeriesStore {
    pub fn redis(url: &str, timeout: std::time::Duration) -> Result<SeriesStore, StoreError> {
        Ok(SeriesStore {
            conn: RedisConn::new(url, timeout)?,
        })
    }

    /// Writes `writer`'s cells of some intervals of `stream` (Redis key, cells) and its state
    /// (written up to now, or `closed`), at once (MULTI/EXEC): a reader never sees cells of a
    /// writer without its state.
    pub async fn put(
        &self,
        stream: &str,
        writer: &str,
        cells: &[(String, Cells)],
        closed: bool,
        ttl_secs: u64,
    ) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (key, c) in cells {
            pipe.hset(key, writer, codec::encode(c)).ignore();
            pipe.expire(key, ttl_secs as i64).ignore();
        }
        let now = super::unix_ms();
        let state = if closed {
            format!("closed:{now}")
        } else {
            now.to_string()
        };
        let key = writers_key(stream);
        pipe.hset(&key, writer, state).ignore();
        pipe.expire(&key, ttl_secs as i64).ignore();
        self.conn.query_pipe("series put", &pipe).await
    }

    /// Every writer's cells of the keys but `except`'s (the asking sink holds its own), with
    /// the writers seen. A value this version cannot read is left out and named in the errors,
    /// and so are writers that may lack records (see the module's text).
    pub async fn get(
        &self,
        stream: &str,
        keys: &[String],
        except: &str,
    ) -> Result<(Vec<Cells>, Vec<String>, Vec<String>), StoreError> {
        let mut pipe = redis::pipe();
        pipe.hgetall(writers_key(stream));
        for k in keys {
            pipe.hgetall(k);
        }
        let answers: Vec<Vec<(String, Vec<u8>)>> =
            self.conn.query_pipe_as("series get", &pipe).await?;
        let mut answers = answers.into_iter();
        let states = answers.next().unwrap_or_default();
        let (mut out, mut writers, mut errors) = (Vec::new(), Vec::new(), Vec::new());
        for (key, fields) in keys.iter().zip(answers) {
            for (writer, bytes) in fields {
                if writer == except {
                    continue;
                }
                match codec::decode::<Cells, MAX_CELLS_BYTES>(&bytes) {
                    Ok(c) => out.push(c),
                    Err(e) => errors.push(format!("{key} {writer}: {e}")),
                }
                if !writers.contains(&writer) {
                    writers.push(writer);
                }
            }
        }
        let now = super::unix_ms();
        for w in &writers {
            let state = states
                .iter()
                .find(|(s, _)| s == w)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned());
            let last = match state.as_deref() {
                Some(s) if s.starts_with("closed:") => continue,
                Some(s) => s.parse::<u64>().ok(),
                None => None,
            };
            match last {
                Some(ms) if now.saturating_sub(ms) <= WRITER_STALE_MS => {}
                Some(ms) => errors.push(format!(
                    "series writer {w} last wrote {} s ago: records it collected since may be missing",
                    now.saturating_sub(ms) / 1000
                )),
                None => errors.push(format!(
                    "series writer {w} has no state in the store: records it collected lately may be missing"
                )),
            }
        }
        Ok((out, writers, errors))
    }
}

fn writers_key(stream: &str) -> String {
    format!("ipfix:series-writers:{stream}")
}
