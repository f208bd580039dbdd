//! Export streams made through the API: in memory (one node) or in Redis (every node runs the
//! same set). One Redis hash, `ipfix:streams`, field `{tenant}/{name}`, value the stream as
//! JSON: a stream's sink and transforms are internally tagged enums, which bincode cannot
//! read back, and a stream is small and rarely written. A change is announced on
//! `ipfix:streams:changed` so every node's mediator reloads at once (and every 30 s anyway).

use super::StoreError;
use super::redis_conn::RedisConn;
use crate::mediation::spec::StreamSpec;
use std::collections::BTreeMap;
use std::sync::Mutex;
use tokio::sync::watch;

pub const STREAMS: &str = "ipfix:streams";
pub const STREAMS_CHANGED: &str = "ipfix:streams:changed";
/// Streams one tenant may have.
pub const MAX_STREAMS_PER_TENANT: usize = 32;

/// A stream as the API made it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StoredStream {
    pub tenant: String,
    pub spec: StreamSpec,
    pub created_ms: u64,
    pub updated_ms: u64,
}

impl StoredStream {
    /// The stream's key on every node: `{tenant}/{name}` (a name holds no `/`).
    pub fn key(&self) -> String {
        key(&self.tenant, &self.spec.name)
    }
}

pub fn key(tenant: &str, name: &str) -> String {
    format!("{tenant}/{name}")
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Put {
    Created,
    Replaced,
    /// `create` of a name that exists.
    Exists,
    /// The tenant has [`MAX_STREAMS_PER_TENANT`] streams already.
    TooMany,
}

pub enum StreamStore {
    Memory {
        streams: Mutex<BTreeMap<String, StoredStream>>,
        /// Bumped on every change: the node's mediator watches it.
        changed: watch::Sender<u64>,
    },
    Redis(RedisConn),
}

fn decode(key: &str, json: &str) -> Result<StoredStream, StoreError> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt {
        key: format!("{STREAMS} {key}"),
        reason: e.to_string(),
    })
}

impl StreamStore {
    pub fn memory() -> StreamStore {
        StreamStore::Memory {
            streams: Mutex::default(),
            changed: watch::channel(0).0,
        }
    }

    pub fn redis(url: &str, timeout: std::time::Duration) -> Result<StreamStore, StoreError> {
        Ok(StreamStore::Redis(RedisConn::new(url, timeout)?))
    }

    /// Where to subscribe to [`STREAMS_CHANGED`]; none for the memory store.
    pub fn subscription_client(&self) -> Option<redis::Client> {
        match self {
            StreamStore::Redis(r) => Some(r.client().clone()),
            StreamStore::Memory { .. } => None,
        }
    }

    /// The memory store's change counter; none for Redis.
    pub fn watch(&self) -> Option<watch::Receiver<u64>> {
        match self {
            StreamStore::Memory { changed, .. } => Some(changed.subscribe()),
            StreamStore::Redis(_) => None,
        }
    }

    /// Tells every node's mediator (this one's too) that `key` changed.
    pub async fn announce(&self, key: &str) -> Result<(), StoreError> {
        match self {
            StreamStore::Memory { changed, .. } => {
                changed.send_modify(|n| *n += 1);
                Ok(())
            }
            StreamStore::Redis(r) => {
                let mut cmd = redis::cmd("PUBLISH");
                cmd.arg(STREAMS_CHANGED).arg(key);
                r.query::<i64>("announce stream change", &cmd).await?;
                Ok(())
            }
        }
    }

    /// Every stored stream, by key.
    pub async fn all(&self) -> Result<Vec<StoredStream>, StoreError> {
        match self {
            StreamStore::Memory { streams, .. } => Ok(streams
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .cloned()
                .collect()),
            StreamStore::Redis(r) => {
                let mut cmd = redis::cmd("HGETALL");
                cmd.arg(STREAMS);
                let all: BTreeMap<String, String> = r.query("list streams", &cmd).await?;
                all.iter().map(|(k, v)| decode(k, v)).collect()
            }
        }
    }

    /// A tenant's streams, by name.
    pub async fn of_tenant(&self, tenant: &str) -> Result<Vec<StoredStream>, StoreError> {
        let mut v: Vec<StoredStream> = self
            .all()
            .await?
            .into_iter()
            .filter(|s| s.tenant == tenant)
            .collect();
        v.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        Ok(v)
    }

    pub async fn get(&self, tenant: &str, name: &str) -> Result<Option<StoredStream>, StoreError> {
        let k = key(tenant, name);
        match self {
            StreamStore::Memory { streams, .. } => Ok(streams
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&k)
                .cloned()),
            StreamStore::Redis(r) => {
                let mut cmd = redis::cmd("HGET");
                cmd.arg(STREAMS).arg(&k);
                let v: Option<String> = r.query("read stream", &cmd).await?;
                v.map(|v| decode(&k, &v)).transpose()
            }
        }
    }

    /// Writes `s` (`create`: only when the name is free), keeping its creation time when it
    /// replaces one.
    pub async fn put(&self, mut s: StoredStream, create: bool) -> Result<Put, StoreError> {
        let k = s.key();
        let existing = self.get(&s.tenant, &s.spec.name).await?;
        match (&existing, create) {
            (Some(_), true) => return Ok(Put::Exists),
            (Some(old), false) => s.created_ms = old.created_ms,
            (None, _) => {
                if self.of_tenant(&s.tenant).await?.len() >= MAX_STREAMS_PER_TENANT {
                    return Ok(Put::TooMany);
                }
            }
        }
        match self {
            StreamStore::Memory { streams, .. } => {
                streams
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(k.clone(), s);
            }
            StreamStore::Redis(r) => {
                let json = serde_json::to_string(&s).map_err(|e| StoreError::Corrupt {
                    key: k.clone(),
                    reason: e.to_string(),
                })?;
                let mut cmd = redis::cmd(if create { "HSETNX" } else { "HSET" });
                cmd.arg(STREAMS).arg(&k).arg(json);
                let n: i64 = r.query("write stream", &cmd).await?;
                if create && n == 0 {
                    return Ok(Put::Exists); // another node created it meanwhile
                }
            }
        }
        self.announce(&k).await?;
        Ok(if existing.is_some() {
            Put::Replaced
        } else {
            Put::Created
        })
    }

    /// Deletes a stream; false when there was none.
    pub async fn delete(&self, tenant: &str, name: &str) -> Result<bool, StoreError> {
        let k = key(tenant, name);
        let gone = match self {
            StreamStore::Memory { streams, .. } => streams
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&k)
                .is_some(),
            StreamStore::Redis(r) => {
                let mut cmd = redis::cmd("HDEL");
                cmd.arg(STREAMS).arg(&k);
                r.query::<i64>("delete stream", &cmd).await? > 0
            }
        };
        if gone {
            self.announce(&k).await?;
        }
        Ok(gone)
    }
}
