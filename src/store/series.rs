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

use super::StoreError;
use super::codec;
use super::redis_conn::RedisConn;
use crate::analysis::series::Cells;

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

    /// Writes `writer`'s cells of some intervals (Redis key, cells), in one pipeline.
    pub async fn put(
        &self,
        writer: &str,
        cells: &[(String, Cells)],
        ttl_secs: u64,
    ) -> Result<(), StoreError> {
        if cells.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (key, c) in cells {
            pipe.hset(key, writer, codec::encode(c)).ignore();
            pipe.expire(key, ttl_secs as i64).ignore();
        }
        self.conn.query_pipe("series put", &pipe).await
    }

    /// Every writer's cells of the keys but `except`'s (the asking sink holds its own), with
    /// the writers seen. A value this version cannot read is left out and named in the errors.
    pub async fn get(
        &self,
        keys: &[String],
        except: &str,
    ) -> Result<(Vec<Cells>, Vec<String>, Vec<String>), StoreError> {
        let mut pipe = redis::pipe();
        for k in keys {
            pipe.hgetall(k);
        }
        let all: Vec<Vec<(String, Vec<u8>)>> = if keys.is_empty() {
            Vec::new()
        } else {
            self.conn.query_pipe_as("series get", &pipe).await?
        };
        let (mut out, mut writers, mut errors) = (Vec::new(), Vec::new(), Vec::new());
        for (key, fields) in keys.iter().zip(all) {
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
        Ok((out, writers, errors))
    }
}
