//! Job records: what a job was asked to do, where it stands, and what it produced. The node that
//! runs a job writes its record here, so that any node can answer for it.
//!
//! Memory (the default, single node) or Redis (when `redis.url` is set). Redis layout: one string
//! per job at `ipfix:job:{tenant}:{id}` (bincode 2 behind a format byte, expiring after the
//! retention after its last write), and a sorted set `ipfix:jobs:{tenant}` of the tenant's job
//! ids scored by submit time (the listing's order). An id leaves the set when a listing finds its
//! record gone, or when more than [`INDEX_LIMIT`] newer ids are in it; never by its submit time,
//! since a record written last a day after its submission lives a day longer. Every command has
//! a timeout and is tried twice.

use super::StoreError;
use super::codec;
use super::redis_conn::RedisConn;
use crate::meter::convert::ConvertSummary;
use crate::meter::flow::MeterConfig;
use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A job's id: a random (v4) UUID, so ids are not guessable across tenants.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
#[serde(transparent)]
pub struct JobId(pub uuid::Uuid);

impl JobId {
    pub fn new() -> JobId {
        JobId(uuid::Uuid::new_v4())
    }
}

impl Default for JobId {
    fn default() -> Self {
        JobId::new()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for JobId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::parse_str(s).map(JobId)
    }
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }

    /// queued -> running -> succeeded | failed | cancelled, and queued -> cancelled (or failed,
    /// when its actor cannot even be started). Nothing leaves a final state.
    pub fn can_become(self, next: JobState) -> bool {
        use JobState::*;
        matches!(
            (self, next),
            (Queued, Running | Cancelled | Failed) | (Running, Succeeded | Failed | Cancelled)
        )
    }
}

/// The conversion's options; the defaults are `ipfixsvc convert`'s.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(default)]
pub struct JobOptions {
    pub idle_timeout_secs: u64,
    pub active_timeout_secs: u64,
    pub uniflow: bool,
    pub max_flows: u64,
    pub domain: u32,
    /// Tests only (feature `fault-injection`): the job's actor panics once it has metered this
    /// many packets, so that the supervision path (failed record, freed worker, siblings
    /// unharmed) can be exercised on a real job. Skipped by serde: no request can set it.
    #[cfg(feature = "fault-injection")]
    #[serde(skip)]
    pub fail_after_packets: Option<u64>,
}

impl Default for JobOptions {
    fn default() -> Self {
        JobOptions {
            idle_timeout_secs: 300,
            active_timeout_secs: 1800,
            uniflow: false,
            max_flows: 1_000_000,
            domain: 0,
            #[cfg(feature = "fault-injection")]
            fail_after_packets: None,
        }
    }
}

impl JobOptions {
    /// The metering settings, built exactly as `ipfixsvc convert` builds them.
    pub fn meter_config(&self) -> MeterConfig {
        MeterConfig {
            idle_ms: self.idle_timeout_secs.saturating_mul(1000),
            active_ms: self.active_timeout_secs.saturating_mul(1000),
            biflow: !self.uniflow,
            max_flows: usize::try_from(self.max_flows).unwrap_or(usize::MAX).max(1),
        }
    }
}

/// What the API submits: captures (paths readable by the node, e.g. on the shared volume), read
/// in order as one metering run.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JobSpec {
    pub tenant: String,
    pub inputs: Vec<String>,
    pub options: JobOptions,
}

#[derive(
    Debug,
    Default,
    Clone,
    Copy,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
)]
pub struct JobProgress {
    /// Bytes of all inputs read so far, of `bytes_total` (the inputs' sizes at start).
    pub bytes_read: u64,
    pub bytes_total: u64,
    pub packets: u64,
    pub flows: u64,
}

/// Per-job task telemetry, for the telemetry issue to export.
#[derive(
    Debug, Default, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub struct JobTelemetry {
    /// Submit to running (measured with a monotonic clock; sub-millisecond precision).
    pub queue_wait_ms: Option<f64>,
    /// Running to finished.
    pub exec_ms: Option<f64>,
}

pub const KIND_PCAP_CONVERSION: &str = "pcap_conversion";

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct JobRecord {
    pub id: JobId,
    pub tenant: String,
    pub kind: String,
    pub state: JobState,
    pub inputs: Vec<String>,
    pub options: JobOptions,
    pub progress: JobProgress,
    /// When the run finished (also when it was cut short by a truncated capture: see warnings).
    #[schema(value_type = Option<Object>)]
    pub summary: Option<ConvertSummary>,
    pub error: Option<String>,
    /// The result file, once the job succeeded.
    pub artifact: Option<String>,
    /// Unix milliseconds.
    pub submitted_ms: u64,
    pub started_ms: Option<u64>,
    pub finished_ms: Option<u64>,
    pub telemetry: JobTelemetry,
    /// The node that runs (or ran) it.
    pub node: String,
}

impl JobRecord {
    pub fn queued(id: JobId, spec: &JobSpec, node: &str) -> JobRecord {
        JobRecord {
            id,
            tenant: spec.tenant.clone(),
            kind: KIND_PCAP_CONVERSION.into(),
            state: JobState::Queued,
            inputs: spec.inputs.clone(),
            options: spec.options.clone(),
            progress: JobProgress::default(),
            summary: None,
            error: None,
            artifact: None,
            submitted_ms: unix_ms(),
            started_ms: None,
            finished_ms: None,
            telemetry: JobTelemetry::default(),
            node: node.to_string(),
        }
    }

    fn redis_key(&self) -> String {
        record_key(&self.tenant, self.id)
    }

    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// Never panics: bytes from another version or damaged ones are an error value.
    pub fn decode(key: &str, bytes: &[u8]) -> Result<JobRecord, StoreError> {
        // Bound what a damaged length inside the value may make bincode allocate.
        codec::decode::<_, { 4 << 20 }>(bytes).map_err(|reason| StoreError::Corrupt {
            key: key.to_string(),
            reason,
        })
    }
}

pub use super::unix_ms;

fn record_key(tenant: &str, id: impl std::fmt::Display) -> String {
    format!("ipfix:job:{tenant}:{id}")
}

fn index_key(tenant: &str) -> String {
    format!("ipfix:jobs:{tenant}")
}

/// A listing answers with at most this many jobs (the newest).
pub const LIST_LIMIT: usize = 1000;

/// Ids kept in a tenant's Redis index, at most: the listing reads the newest [`LIST_LIMIT`];
/// the rest stand in for ids of that many that expire.
const INDEX_LIMIT: usize = 4 * LIST_LIMIT;

pub enum JobStore {
    Memory(MemoryJobs),
    Redis(RedisJobs),
}

type MemoryMap = HashMap<(String, JobId), (JobRecord, Instant)>;

pub struct MemoryJobs {
    retention: Duration,
    map: Mutex<MemoryMap>,
}

pub struct RedisJobs {
    conn: RedisConn,
    retention: Duration,
    forget: redis::Script,
}

/// KEYS[1] the tenant's index, KEYS[2..] job records, ARGV their ids: takes each id whose record
/// does not exist out of the index.
const FORGET_EXPIRED: &str = r#"
local n = 0
for i = 2, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then
    n = n + redis.call('ZREM', KEYS[1], ARGV[i - 1])
  end
end
return n
"#;

impl JobStore {
    pub fn memory(retention: Duration) -> JobStore {
        JobStore::Memory(MemoryJobs {
            retention,
            map: Mutex::new(HashMap::new()),
        })
    }

    /// Connects lazily: a node starts while Redis is down and the store reconnects with backoff.
    pub fn redis(
        url: &str,
        retention: Duration,
        timeout: Duration,
    ) -> Result<JobStore, StoreError> {
        Ok(JobStore::Redis(RedisJobs {
            conn: RedisConn::new(url, timeout)?,
            retention,
            forget: redis::Script::new(FORGET_EXPIRED),
        }))
    }

    /// Stores (or updates) a record; it expires `retention` after this write.
    pub async fn put(&self, rec: &JobRecord) -> Result<(), StoreError> {
        match self {
            JobStore::Memory(m) => {
                let expiry = Instant::now() + m.retention;
                m.lock()
                    .insert((rec.tenant.clone(), rec.id), (rec.clone(), expiry));
                Ok(())
            }
            JobStore::Redis(r) => {
                let ttl = r.retention.as_secs().max(1);
                let index = index_key(&rec.tenant);
                let mut pipe = redis::pipe();
                pipe.atomic()
                    .cmd("SET")
                    .arg(rec.redis_key())
                    .arg(rec.encode())
                    .arg("EX")
                    .arg(ttl)
                    .ignore()
                    .cmd("ZADD")
                    .arg(&index)
                    .arg(rec.submitted_ms)
                    .arg(rec.id.to_string())
                    .ignore()
                    .cmd("ZREMRANGEBYRANK")
                    .arg(&index)
                    .arg(0)
                    .arg(-(INDEX_LIMIT as i64) - 1)
                    .ignore()
                    .cmd("EXPIRE")
                    .arg(&index)
                    .arg(ttl)
                    .ignore();
                r.conn.query_pipe("store job record", &pipe).await
            }
        }
    }

    pub async fn get(&self, tenant: &str, id: JobId) -> Result<Option<JobRecord>, StoreError> {
        match self {
            JobStore::Memory(m) => {
                let mut map = m.lock();
                let key = (tenant.to_string(), id);
                match map.get(&key) {
                    Some((_, expiry)) if *expiry <= Instant::now() => {
                        map.remove(&key);
                        Ok(None)
                    }
                    Some((v, _)) => Ok(Some(v.clone())),
                    None => Ok(None),
                }
            }
            JobStore::Redis(r) => {
                let key = record_key(tenant, id);
                let mut cmd = redis::cmd("GET");
                cmd.arg(&key);
                let bytes: Option<Vec<u8>> = r.conn.query("read job record", &cmd).await?;
                bytes.map(|b| JobRecord::decode(&key, &b)).transpose()
            }
        }
    }

    /// A tenant's jobs in submit order (the newest [`LIST_LIMIT`]). A record this version
    /// cannot read is left out with a warning rather than failing the whole listing.
    pub async fn list(&self, tenant: &str) -> Result<Vec<JobRecord>, StoreError> {
        let mut out = match self {
            JobStore::Memory(m) => {
                let now = Instant::now();
                let mut map = m.lock();
                map.retain(|_, (_, expiry)| *expiry > now);
                map.values()
                    .filter(|(r, _)| r.tenant == tenant)
                    .map(|(r, _)| r.clone())
                    .collect()
            }
            JobStore::Redis(r) => r.list(tenant).await?,
        };
        out.sort_by_key(|r| (r.submitted_ms, r.id));
        let skip = out.len().saturating_sub(LIST_LIMIT);
        Ok(out.split_off(skip))
    }
}

impl MemoryJobs {
    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryMap> {
        // A panic while holding this lock cannot leave the map half-changed (single calls).
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl RedisJobs {
    async fn list(&self, tenant: &str) -> Result<Vec<JobRecord>, StoreError> {
        let index = index_key(tenant);
        let mut range = redis::cmd("ZRANGE");
        range.arg(&index).arg(-(LIST_LIMIT as i64)).arg(-1);
        let ids: Vec<String> = self.conn.query("list jobs", &range).await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| record_key(tenant, id)).collect();
        let mut mget = redis::cmd("MGET");
        mget.arg(&keys);
        let values: Vec<Option<Vec<u8>>> = self.conn.query("read job records", &mget).await?;
        let mut out = Vec::with_capacity(values.len());
        let mut expired = Vec::new();
        for ((id, key), bytes) in ids.iter().zip(&keys).zip(values) {
            let Some(bytes) = bytes else {
                expired.push((id, key));
                continue;
            };
            match JobRecord::decode(key, &bytes) {
                Ok(r) => out.push(r),
                Err(e) => tracing::warn!(error = %e, "job record left out of the listing"),
            }
        }
        if !expired.is_empty() {
            // Their records expired: the index forgets them, unless a node wrote one again since
            // the MGET (checked in the script, atomically). Best effort: the listing is right
            // either way, and the next one tries again.
            let (mut gone, mut args) = (vec![index.clone()], Vec::new());
            for (id, key) in expired {
                gone.push(key.clone());
                args.push(id.clone().into_bytes());
            }
            let forgot = self
                .conn
                .eval::<i64>("forget expired jobs", &self.forget, &gone, &args)
                .await;
            if let Err(e) = forgot {
                tracing::warn!(error = %e, "expired job ids left in the index");
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> JobRecord {
        let spec = JobSpec {
            tenant: "t".into(),
            inputs: vec!["a.pcap".into(), "b.pcapng".into()],
            options: JobOptions::default(),
        };
        let mut r = JobRecord::queued(JobId::new(), &spec, "node-a");
        r.summary = Some(ConvertSummary {
            packets: 3,
            warnings: vec!["cut".into()],
            ..ConvertSummary::default()
        });
        r.telemetry.queue_wait_ms = Some(0.25);
        r
    }

    #[test]
    fn records_round_trip_and_damage_is_an_error() {
        let r = record();
        let bytes = r.encode();
        assert_eq!(JobRecord::decode("k", &bytes).ok(), Some(r));
        assert!(JobRecord::decode("k", &[]).is_err());
        assert!(JobRecord::decode("k", &[2, 0, 0]).is_err());
        for cut in 0..bytes.len() {
            assert!(JobRecord::decode("k", &bytes[..cut]).is_err());
        }
    }

    #[test]
    fn transitions() {
        use JobState::*;
        assert!(Queued.can_become(Running));
        assert!(Queued.can_become(Cancelled));
        assert!(Running.can_become(Succeeded));
        assert!(Running.can_become(Failed));
        assert!(Running.can_become(Cancelled));
        assert!(!Queued.can_become(Succeeded));
        assert!(!Running.can_become(Queued));
        for end in [Succeeded, Failed, Cancelled] {
            assert!(end.is_final());
            for next in [Queued, Running, Succeeded, Failed, Cancelled] {
                assert!(!end.can_become(next), "{end:?} -> {next:?}");
            }
        }
    }

    #[tokio::test]
    async fn memory_store_keeps_tenants_apart_and_expires() {
        let s = JobStore::memory(Duration::from_millis(50));
        let r = record();
        s.put(&r).await.expect("put");
        assert_eq!(s.get("t", r.id).await.expect("get"), Some(r.clone()));
        assert_eq!(s.get("other", r.id).await.expect("get"), None);
        assert_eq!(s.list("t").await.expect("list").len(), 1);
        assert!(s.list("other").await.expect("list").is_empty());
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(s.get("t", r.id).await.expect("get"), None);
    }
}
