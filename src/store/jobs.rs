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

/// A time-series job's options: those of `ipfixsvc timeseries` (the defaults are its own).
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
    utoipa::IntoParams,
)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TimeSeriesOptions {
    /// Interval length in seconds (1 to 86400); intervals start at multiples of it since the
    /// Unix epoch (UTC).
    #[schema(minimum = 1, maximum = 86400)]
    pub interval_secs: u64,
    /// The key: an Information Element (`destinationTransportPort`), an address element cut to
    /// a prefix (`sourceIPv4Address/24`) or `@exporter`; none: one series of everything.
    #[param(nullable = false)]
    pub by: Option<String>,
    /// Keys with a series of their own (the most octets); the rest are added up in `other`.
    #[schema(maximum = 1000)]
    pub top: u32,
    /// Biflows: the forward direction only (by default the reverse counters are added).
    pub forward_only: bool,
    /// What the charts show.
    #[param(inline)]
    pub chart: ChartMeasure,
    /// Chart size in pixels (100 to 4000 each).
    #[schema(minimum = 100, maximum = 4000)]
    pub width: u32,
    #[schema(minimum = 100, maximum = 4000)]
    pub height: u32,
}

impl Default for TimeSeriesOptions {
    fn default() -> Self {
        TimeSeriesOptions {
            interval_secs: 60,
            by: None,
            top: 10,
            forward_only: false,
            chart: ChartMeasure::Bits,
            width: 1200,
            height: 600,
        }
    }
}

/// Most keys a job keeps series of (the rest is `other`).
pub const MAX_TOP: u32 = 1000;

impl TimeSeriesOptions {
    /// Why these options cannot make a series (the API answers 400 with it).
    pub fn check(&self) -> Result<(), String> {
        if !(1..=86_400).contains(&self.interval_secs) {
            return Err(format!(
                "interval_secs {}: 1 to 86400 seconds",
                self.interval_secs
            ));
        }
        if self.top > MAX_TOP {
            return Err(format!("top {}: at most {MAX_TOP} keys", self.top));
        }
        for (side, v) in [("width", self.width), ("height", self.height)] {
            if !(100..=4000).contains(&v) {
                return Err(format!("{side} {v}: 100 to 4000 pixels"));
            }
        }
        if let Some(by) = &self.by {
            crate::analysis::key::KeySpec::parse(by, &crate::wire::Registry::builtin())
                .map_err(|e| format!("by {e}"))?;
        }
        Ok(())
    }
}

/// What a time-series job's charts show.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ChartMeasure {
    /// Bits per second.
    Bits,
    /// Packets per second.
    Packets,
}

impl From<ChartMeasure> for crate::analysis::chart::Measure {
    fn from(m: ChartMeasure) -> Self {
        match m {
            ChartMeasure::Bits => crate::analysis::chart::Measure::Bits,
            ChartMeasure::Packets => crate::analysis::chart::Measure::Packets,
        }
    }
}

/// What a time-series job found (its record's `series`).
#[derive(
    Debug, Default, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub struct SeriesSummary {
    /// Data records read.
    pub records: u64,
    /// Totals of every series together (all keys and `other`).
    pub octets: u64,
    pub packets: u64,
    pub flows: u64,
    /// Records with no time: in no interval, and not in the totals above.
    pub untimed: u64,
    /// Records with uptime times and no system init time, placed to end at their message's
    /// export time.
    pub placed_by_export_time: u64,
    /// The series' keys, in the result's order (`other` last when there is one).
    pub keys: Vec<String>,
    pub intervals: u64,
    /// The first and last interval starts (RFC 3339 UTC); none without timed records.
    pub first: Option<String>,
    pub last: Option<String>,
    /// Malformed messages and unreadable parts of the inputs, and the first few of them.
    pub errors: u64,
    pub problems: Vec<String>,
    pub seconds: f64,
    pub records_per_second: f64,
}

/// Which analysis a job makes.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum AnalysisKind {
    /// Sources and destinations by octets and by flows.
    TopTalkers,
    /// Protocols and destination ports by octets.
    Mix,
    /// Intervals that depart from the rolling median, with their top contributors.
    Anomalies,
}

/// An analysis job's options (each analysis reads those it needs).
#[derive(
    Debug,
    Clone,
    PartialEq,
    serde::Serialize,
    serde::Deserialize,
    utoipa::ToSchema,
    utoipa::IntoParams,
)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AnalysisOptions {
    /// `top_talkers`, `mix` or `anomalies`.
    #[param(inline)]
    pub analysis: AnalysisKind,
    /// Rows per table (default 10, at most 1000).
    #[schema(maximum = 1000)]
    pub top: u32,
    /// Top talkers: bits of an IPv4 address kept (default 24; 32: per address).
    #[schema(maximum = 32)]
    pub v4_prefix: u8,
    /// Top talkers: bits of an IPv6 address kept (default 64; 128: per address).
    #[schema(maximum = 128)]
    pub v6_prefix: u8,
    /// Anomalies: interval length in seconds (default 60; 1 to 86400).
    #[schema(minimum = 1, maximum = 86400)]
    pub interval_secs: u64,
    /// Anomalies: what is measured per interval (default octets).
    #[param(inline)]
    pub measure: crate::analysis::report::Rank,
    /// Anomalies: intervals before each one whose median and MAD it is held to (default 15;
    /// 1 to 1000).
    #[schema(minimum = 1, maximum = 1000)]
    pub window: u32,
    /// Anomalies: how many median absolute deviations from the median make an anomaly
    /// (default 3; more than 0, at most 1000).
    pub k: f64,
    /// Anomalies: the key the contributors are listed by (default `@source/24/64`).
    pub by: String,
    /// Biflows: the forward direction only (by default the reverse counters are added).
    pub forward_only: bool,
    /// Chart size in pixels (100 to 4000 each; default 1200 x 800).
    #[schema(minimum = 100, maximum = 4000)]
    pub width: u32,
    #[schema(minimum = 100, maximum = 4000)]
    pub height: u32,
}

impl Default for AnalysisOptions {
    fn default() -> Self {
        AnalysisOptions {
            analysis: AnalysisKind::TopTalkers,
            top: 10,
            v4_prefix: 24,
            v6_prefix: 64,
            interval_secs: 60,
            measure: crate::analysis::report::Rank::Octets,
            window: 15,
            k: 3.0,
            by: "@source/24/64".into(),
            forward_only: false,
            width: 1200,
            height: 800,
        }
    }
}

impl AnalysisOptions {
    /// Why these options cannot make the analysis (the API answers 400 with it).
    pub fn check(&self) -> Result<(), String> {
        if self.top == 0 || self.top > MAX_TOP {
            return Err(format!("top {}: 1 to {MAX_TOP}", self.top));
        }
        if self.v4_prefix > 32 || self.v6_prefix > 128 {
            return Err("v4_prefix: at most 32; v6_prefix: at most 128".into());
        }
        if !(1..=86_400).contains(&self.interval_secs) {
            return Err(format!(
                "interval_secs {}: 1 to 86400 seconds",
                self.interval_secs
            ));
        }
        if !(1..=1000).contains(&self.window) {
            return Err(format!("window {}: 1 to 1000 intervals", self.window));
        }
        if !(self.k.is_finite() && self.k > 0.0 && self.k <= 1000.0) {
            return Err(format!("k {}: more than 0, at most 1000", self.k));
        }
        for (side, v) in [("width", self.width), ("height", self.height)] {
            if !(100..=4000).contains(&v) {
                return Err(format!("{side} {v}: 100 to 4000 pixels"));
            }
        }
        crate::analysis::key::KeySpec::parse(&self.by, &crate::wire::Registry::builtin())
            .map_err(|e| format!("by {e}"))?;
        Ok(())
    }
}

/// What an analysis job found (its record's `report`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct AnalysisSummary {
    pub analysis: AnalysisKind,
    /// Data records read.
    pub records: u64,
    /// Rows of its tables, or anomalies found.
    pub found: u64,
    /// Malformed messages and unreadable parts of the inputs, and the first few of them.
    pub errors: u64,
    pub problems: Vec<String>,
    pub seconds: f64,
}

/// What the API submits. A conversion: captures (paths readable by the node, e.g. on the
/// shared volume), read in order as one metering run. A time series (`time_series` set): IPFIX
/// files or captures of export traffic; with `after`, the result of that job once it succeeds.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct JobSpec {
    pub tenant: String,
    pub inputs: Vec<String>,
    pub options: JobOptions,
    pub time_series: Option<TimeSeriesOptions>,
    /// An analysis job's options (`analysis` set: kind `analysis`).
    pub analysis: Option<AnalysisOptions>,
    /// A job of the same tenant whose result is this one's input, when it has succeeded.
    pub after: Option<JobId>,
}

impl JobSpec {
    pub fn conversion(tenant: &str, inputs: Vec<String>, options: JobOptions) -> JobSpec {
        JobSpec {
            tenant: tenant.to_string(),
            inputs,
            options,
            ..JobSpec::default()
        }
    }

    pub fn kind(&self) -> &'static str {
        if self.time_series.is_some() {
            KIND_TIME_SERIES
        } else if self.analysis.is_some() {
            KIND_ANALYSIS
        } else {
            KIND_PCAP_CONVERSION
        }
    }
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
pub const KIND_TIME_SERIES: &str = "time_series";
pub const KIND_ANALYSIS: &str = "analysis";

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
    /// The job whose result is this one's input: this one waits (queued) until it ends.
    pub after: Option<JobId>,
    /// A time-series job's options (`kind` `time_series`).
    pub time_series: Option<TimeSeriesOptions>,
    /// What a time-series job found, once it succeeded.
    pub series: Option<SeriesSummary>,
    /// An analysis job's options (`kind` `analysis`).
    pub analysis: Option<AnalysisOptions>,
    /// What an analysis job found, once it succeeded.
    pub report: Option<AnalysisSummary>,
    /// The result's files besides `result`, each at `.../jobs/{id}/{file}`.
    pub files: Vec<String>,
}

/// Job records as versions before time-series jobs wrote them (format 1), read and turned into
/// today's records, so that a rolling upgrade keeps the jobs listed.
#[derive(serde::Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
struct JobRecordV1 {
    id: JobId,
    tenant: String,
    kind: String,
    state: JobState,
    inputs: Vec<String>,
    options: JobOptions,
    progress: JobProgress,
    summary: Option<ConvertSummary>,
    error: Option<String>,
    artifact: Option<String>,
    submitted_ms: u64,
    started_ms: Option<u64>,
    finished_ms: Option<u64>,
    telemetry: JobTelemetry,
    node: String,
}

impl From<JobRecordV1> for JobRecord {
    fn from(r: JobRecordV1) -> JobRecord {
        JobRecord {
            id: r.id,
            tenant: r.tenant,
            kind: r.kind,
            state: r.state,
            inputs: r.inputs,
            options: r.options,
            progress: r.progress,
            summary: r.summary,
            error: r.error,
            artifact: r.artifact,
            submitted_ms: r.submitted_ms,
            started_ms: r.started_ms,
            finished_ms: r.finished_ms,
            telemetry: r.telemetry,
            node: r.node,
            after: None,
            time_series: None,
            series: None,
            analysis: None,
            report: None,
            files: Vec::new(),
        }
    }
}

/// The format byte of job records since time-series jobs (see [`JobRecordV1`]).
const RECORD_FORMAT: u8 = 2;

impl JobRecord {
    pub fn queued(id: JobId, spec: &JobSpec, node: &str) -> JobRecord {
        JobRecord {
            id,
            tenant: spec.tenant.clone(),
            kind: spec.kind().into(),
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
            after: spec.after,
            time_series: spec.time_series.clone(),
            series: None,
            analysis: spec.analysis.clone(),
            report: None,
            files: Vec::new(),
        }
    }

    fn redis_key(&self) -> String {
        record_key(&self.tenant, self.id)
    }

    pub fn encode(&self) -> Vec<u8> {
        codec::encode_as(RECORD_FORMAT, self)
    }

    /// Never panics: bytes from another version or damaged ones are an error value. Records of
    /// the version before (format 1) are read too.
    pub fn decode(key: &str, bytes: &[u8]) -> Result<JobRecord, StoreError> {
        // Bound what a damaged length inside the value may make bincode allocate.
        const LIMIT: usize = 4 << 20;
        let decoded = match bytes.first() {
            Some(&codec::FORMAT) => {
                codec::decode_as::<JobRecordV1, LIMIT>(codec::FORMAT, bytes).map(JobRecord::from)
            }
            _ => codec::decode_as::<JobRecord, LIMIT>(RECORD_FORMAT, bytes),
        };
        decoded.map_err(|reason| StoreError::Corrupt {
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
        let spec = JobSpec::conversion(
            "t",
            vec!["a.pcap".into(), "b.pcapng".into()],
            JobOptions::default(),
        );
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
        assert!(JobRecord::decode("k", &[3, 0, 0]).is_err());
        for cut in 0..bytes.len() {
            assert!(JobRecord::decode("k", &bytes[..cut]).is_err());
        }
    }

    #[test]
    fn time_series_records_round_trip() {
        let spec = JobSpec {
            tenant: "t".into(),
            inputs: vec!["x.ipfix".into()],
            time_series: Some(TimeSeriesOptions {
                by: Some("destinationTransportPort".into()),
                ..TimeSeriesOptions::default()
            }),
            after: Some(JobId::new()),
            ..JobSpec::default()
        };
        let mut r = JobRecord::queued(JobId::new(), &spec, "n");
        assert_eq!(r.kind, KIND_TIME_SERIES);
        r.series = Some(SeriesSummary {
            keys: vec!["443".into(), "other".into()],
            first: Some("2026-11-30T10:00:00Z".into()),
            ..SeriesSummary::default()
        });
        r.files = vec!["series.csv".into()];
        let bytes = r.encode();
        assert_eq!(bytes[0], RECORD_FORMAT);
        assert_eq!(JobRecord::decode("k", &bytes).ok(), Some(r));
    }

    /// A record the version before wrote (format 1) is read, with nothing of the new fields.
    #[test]
    fn records_of_the_version_before_are_read() {
        let r = record();
        let old = JobRecordV1 {
            id: r.id,
            tenant: r.tenant.clone(),
            kind: r.kind.clone(),
            state: r.state,
            inputs: r.inputs.clone(),
            options: r.options.clone(),
            progress: r.progress,
            summary: r.summary.clone(),
            error: Some("e".into()),
            artifact: r.artifact.clone(),
            submitted_ms: r.submitted_ms,
            started_ms: r.started_ms,
            finished_ms: r.finished_ms,
            telemetry: r.telemetry,
            node: r.node.clone(),
        };
        let bytes = codec::encode(&old);
        assert_eq!(bytes[0], 1);
        let read = JobRecord::decode("k", &bytes).expect("format 1");
        assert_eq!(
            read,
            JobRecord {
                error: Some("e".into()),
                ..r
            }
        );
        // A format-2 body behind a format-1 byte is an error, not a misreading.
        let mut wrong = record().encode();
        wrong[0] = 1;
        assert!(JobRecord::decode("k", &wrong).is_err());
    }

    #[test]
    fn time_series_options_are_checked() {
        let ok = TimeSeriesOptions::default();
        assert_eq!(ok.check(), Ok(()));
        let bad = |o: TimeSeriesOptions| o.check().expect_err("refused");
        assert!(
            bad(TimeSeriesOptions {
                interval_secs: 0,
                ..ok.clone()
            })
            .contains("interval_secs")
        );
        assert!(
            bad(TimeSeriesOptions {
                interval_secs: 86_401,
                ..ok.clone()
            })
            .contains("interval_secs")
        );
        assert!(
            bad(TimeSeriesOptions {
                top: 1001,
                ..ok.clone()
            })
            .contains("top")
        );
        assert!(
            bad(TimeSeriesOptions {
                width: 99,
                ..ok.clone()
            })
            .contains("width")
        );
        assert!(
            bad(TimeSeriesOptions {
                height: 4001,
                ..ok.clone()
            })
            .contains("height")
        );
        assert!(
            bad(TimeSeriesOptions {
                by: Some("noSuchElement".into()),
                ..ok.clone()
            })
            .starts_with("by ")
        );
        let by = |b: &str| {
            TimeSeriesOptions {
                by: Some(b.into()),
                ..ok.clone()
            }
            .check()
        };
        assert_eq!(by("sourceIPv4Address/24"), Ok(()));
        assert_eq!(by("@exporter"), Ok(()));
        // Unknown fields in a request are refused, not ignored.
        let json = r#"{"interval_secs": 10, "intervall": 5}"#;
        assert!(serde_json::from_str::<TimeSeriesOptions>(json).is_err());
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
