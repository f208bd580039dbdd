//! A stream as an operator writes it (the `[[mediator.streams]]` tables of the configuration,
//! and the bodies of the streams API): which records, filter, transforms, sink, and the policy
//! when its queue is full. [`Pipeline::build`] checks it all against the information model, so
//! a wrong name is refused when the stream is made, not when the first record arrives.

use super::aggregate::{Aggregator, MAX_KEYS};
use super::cryptopan::CryptoPan;
use super::filter::{Compiled, Filter, Meta};
use super::shape::{ElementId, FieldStep, Method, Shaper};
use super::{Records, Source};
use crate::wire::plan::Plan;
use crate::wire::registry::Registry;
use ipnet::IpNet;
use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamSpec {
    /// Unique per tenant set; letters, digits, `-`, `_`, `.`.
    pub name: String,
    /// Tenants whose records the stream takes (the API sets it to the path's tenant).
    #[serde(default)]
    pub tenants: Vec<String>,
    /// Exporter addresses or prefixes; empty: all.
    #[serde(default)]
    pub exporters: Vec<String>,
    /// Observation Domain ids; empty: all.
    #[serde(default)]
    pub domains: Vec<u32>,
    /// Template ids; empty: all.
    #[serde(default)]
    pub templates: Vec<u16>,
    #[serde(default)]
    pub filter: Option<String>,
    #[serde(default)]
    pub transforms: Vec<TransformSpec>,
    pub sink: SinkSpec,
    /// `block` or `drop`; the default depends on the sink (block for files and TCP).
    #[serde(default)]
    pub on_full: Option<OnFull>,
    /// The queue's bound in bytes of decoded messages (default 8 MiB).
    #[serde(default)]
    pub queue_bytes: Option<u64>,
    /// Tests only (feature `fault-injection`): the stream's actor panics when its count of
    /// records taken in crosses this number (once: the count outlives the restart).
    #[cfg(feature = "fault-injection")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault_panic_at_records: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnFull {
    /// Sessions wait (TCP pushes back on the exporter); nothing is lost.
    Block,
    /// Sessions never wait; what does not fit is dropped and counted.
    Drop,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TransformSpec {
    Keep(Vec<String>),
    Drop(Vec<String>),
    Anonymise(AnonymiseSpec),
    Aggregate(AggregateSpec),
    /// Every record leaves under this Observation Domain id.
    Domain(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AnonMethod {
    Truncate,
    Cryptopan,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AnonymiseSpec {
    pub method: AnonMethod,
    /// Crypto-PAn: 64 hex digits (or `key_file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Crypto-PAn: a file holding the 64 hex digits (a mounted Secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
    /// Truncate: bits of IPv4 addresses kept (default 24).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v4_prefix: Option<u8>,
    /// Truncate: bits of IPv6 addresses kept (default 48).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub v6_prefix: Option<u8>,
    /// Default: source and destination IPv4 and IPv6 addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AggregateSpec {
    pub window_secs: u32,
    pub key: Vec<String>,
    /// The table's bound (default 64 MiB); past it the window is flushed early.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum SinkSpec {
    /// NDJSON on standard output (no `path`) or appended to a file; with `rotate_bytes` or
    /// `rotate_secs`, written to `.<stem>.part` beside `path` and renamed
    /// `<stem>-<UTC start>.<ext>` when complete.
    Ndjson {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rotate_bytes: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rotate_secs: Option<u64>,
    },
    /// RFC 5655 IPFIX files in `dir`, each readable alone (its templates first), finished by
    /// size and age (defaults 256 MiB, 300 s) and renamed `<stream>-<UTC start>.ipfix`.
    IpfixFile {
        dir: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rotate_bytes: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rotate_secs: Option<u64>,
    },
    /// Records are counted and not written (measurements; the `output.format = count` mode).
    Discard {},
    /// IPFIX to another collector (IPFIXcol2, nfacctd, another ipfixsvc, a SIEM): the stream's
    /// own templates, re-sent after every reconnect and (UDP) every `template_refresh_secs`.
    Ipfix {
        transport: SinkTransport,
        /// `host:port`.
        to: String,
        /// UDP: seconds between template refreshes (default 60).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        template_refresh_secs: Option<u32>,
        /// The largest message: default 65535 over TCP, 1472 over UDP (a 1500-byte path).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_message_bytes: Option<u32>,
    },
    /// Batches of records POSTed as a JSON array (a flow store's ingest endpoint), retried.
    Http {
        /// `http://host:port/path`.
        url: String,
        /// Records per request at most (default 1000).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        batch_records: Option<u32>,
        /// Seconds a request may take (default 10).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_secs: Option<u32>,
        /// For an `https://` URL: a PEM file of CA certificates to trust besides the system's
        /// (a private CA). The node's configuration only.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ca_file: Option<String>,
    },
    /// `XADD` to a Redis stream, capped with `MAXLEN ~`: other consumers read flows from Redis.
    RedisStream {
        /// `redis://host:port` (or `rediss://`, `unix://`).
        url: String,
        /// The stream's key (not under `ipfix:`, the service's own keys).
        key: String,
        /// `MAXLEN ~` (default 1,000,000 entries).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        maxlen: Option<u64>,
        /// `record` (default) or `batch`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        entry: Option<StreamEntry>,
    },
    /// Live time series of the records, per tenant, in memory (`GET
    /// /api/v1/tenants/{tenant}/timeseries`): per interval the octets, packets and flows in
    /// total and per key of each `by`, spread over the intervals a flow spans as `ipfixsvc
    /// timeseries` spreads them; each node keeps its own records' and a query merges the nodes'.
    Timeseries {
        /// Seconds per interval (default 10; 1 to 3600).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        interval_secs: Option<u32>,
        /// Keys kept besides the total (at most 8): elements (`destinationTransportPort`),
        /// address prefixes (`sourceIPv4Address/24`) or `@exporter`.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        by: Vec<String>,
        /// Seconds of intervals kept (default 3600; at most 7 days and 10,000 intervals).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retention_secs: Option<u32>,
        /// Keys held per `by` and tenant (default 1000; 1 to 100,000); further keys add up in
        /// `other` until old intervals are forgotten.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_keys: Option<u32>,
        /// Biflows: the forward direction only (default: both).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        forward_only: Option<bool>,
        /// Where the series are kept: `memory` (default: each node its own, merged when asked,
        /// empty after a restart) or `redis` (the node's `redis.url`: every node writes its
        /// cells each second, any node answers from all of them, and they outlive restarts).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        store: Option<SeriesKeeping>,
    },
}

/// Where a `timeseries` sink keeps its series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SeriesKeeping {
    #[default]
    Memory,
    Redis,
}

/// A `timeseries` sink's defaults and bounds.
pub const SERIES_INTERVAL_SECS: u32 = 10;
pub const SERIES_RETENTION_SECS: u32 = 3600;
pub const SERIES_MAX_KEYS: u32 = 1000;
pub const SERIES_MAX_BY: usize = 8;
pub const SERIES_MAX_INTERVALS: u32 = 10_000;
/// Cells one tenant's series of a stream may hold at most, all its keys together: (1 + by) x
/// (max_keys + 1) x the intervals of the range (about 64 bytes each: 256 MB).
pub const SERIES_MAX_CELLS: u64 = 4_000_000;

impl SinkSpec {
    /// Where a `timeseries` sink keeps its series (none for other sinks).
    pub fn series_keeping(&self) -> Option<SeriesKeeping> {
        match self {
            SinkSpec::Timeseries { store, .. } => Some(store.unwrap_or_default()),
            _ => None,
        }
    }

    /// A `timeseries` sink's options with their defaults (none for other sinks).
    pub fn live_options(&self) -> Option<crate::analysis::live::LiveOptions> {
        match self {
            SinkSpec::Timeseries {
                interval_secs,
                by,
                retention_secs,
                max_keys,
                forward_only,
                ..
            } => Some(crate::analysis::live::LiveOptions {
                interval_secs: interval_secs.unwrap_or(SERIES_INTERVAL_SECS).into(),
                by: by.clone(),
                retention_secs: retention_secs.unwrap_or(SERIES_RETENTION_SECS).into(),
                max_keys: max_keys.unwrap_or(SERIES_MAX_KEYS) as usize,
                forward_only: forward_only.unwrap_or(false),
            }),
            _ => None,
        }
    }
}

/// What one `redis_stream` entry holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StreamEntry {
    /// One entry per record: fields are element names (and `@` metadata), values as NDJSON
    /// writes them (strings without their quotes).
    Record,
    /// One entry per IPFIX message: field `records`, the NDJSON lines of its records.
    Batch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SinkTransport {
    Tcp,
    Udp,
}

impl SinkSpec {
    /// The sink's `kind`, as the configuration names it.
    pub fn kind(&self) -> &'static str {
        match self {
            SinkSpec::Ndjson { .. } => "ndjson",
            SinkSpec::IpfixFile { .. } => "ipfix_file",
            SinkSpec::Discard {} => "discard",
            SinkSpec::Ipfix { .. } => "ipfix",
            SinkSpec::RedisStream { .. } => "redis_stream",
            SinkSpec::Http { .. } => "http",
            SinkSpec::Timeseries { .. } => "timeseries",
        }
    }

    /// The policy a sink gets when the stream names none: block where losing records is never
    /// wanted (files, standard output).
    pub fn default_on_full(&self) -> OnFull {
        match self {
            SinkSpec::Ndjson { .. }
            | SinkSpec::IpfixFile { .. }
            | SinkSpec::Discard {}
            | SinkSpec::Timeseries { .. } => OnFull::Block,
            SinkSpec::Ipfix { transport, .. } => match transport {
                SinkTransport::Tcp => OnFull::Block,
                SinkTransport::Udp => OnFull::Drop,
            },
            SinkSpec::RedisStream { .. } | SinkSpec::Http { .. } => OnFull::Drop,
        }
    }
}

/// A queue holds decoded messages still to be transformed and written: what it holds at SIGTERM
/// must go out within the grace period, so it is small.
pub const DEFAULT_QUEUE_BYTES: u64 = 8 << 20;
pub const DEFAULT_AGGREGATE_BYTES: u64 = 64 << 20;
pub const MAX_NAME_LEN: usize = 64;

/// Why a stream was refused: the field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stream {stream:?}: {field}: {message}")]
pub struct SpecError {
    pub stream: String,
    pub field: String,
    pub message: String,
}

/// The addresses `anonymise` changes when it names no fields.
const DEFAULT_ADDRESS_FIELDS: [&str; 4] = [
    "sourceIPv4Address",
    "destinationIPv4Address",
    "sourceIPv6Address",
    "destinationIPv6Address",
];

/// Figures a pipeline keeps (the stream adds its queue's and sink's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PipelineStats {
    /// Records offered to the stream (after its tenant/exporter/domain match).
    pub records_in: u64,
    /// Left out by the template match, the filter, or a transform that left no field.
    pub filtered: u64,
    pub aggregate_groups: u64,
    pub aggregate_early_flushes: u64,
}

enum Stage {
    Shape(Shaper),
    Aggregate(Aggregator),
    Domain(u32),
}

/// A stream's logic, ready to run: match, filter, then the transforms in order.
pub struct Pipeline {
    exporters: Vec<IpNet>,
    domains: Vec<u32>,
    templates: Vec<u16>,
    filter: Option<Filter>,
    compiled: FxHashMap<usize, (Arc<Plan>, Compiled)>,
    stages: Vec<Stage>,
    stats: PipelineStats,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("filter", &self.filter.as_ref().map(Filter::source))
            .field("stages", &self.stages.len())
            .finish()
    }
}

/// Compiled filters kept at most (one per template seen); past it they are compiled again.
const MAX_COMPILED: usize = 4096;

impl Pipeline {
    pub fn build(spec: &StreamSpec, registry: &Arc<Registry>) -> Result<Pipeline, SpecError> {
        let err = |field: &str, message: String| SpecError {
            stream: spec.name.clone(),
            field: field.to_string(),
            message,
        };
        check_name(&spec.name).map_err(|m| err("name", m))?;
        let exporters = spec
            .exporters
            .iter()
            .map(|e| {
                e.parse::<IpNet>()
                    .or_else(|_| e.parse::<std::net::IpAddr>().map(IpNet::from))
                    .map_err(|_| err("exporters", format!("{e:?} is not an address or prefix")))
            })
            .collect::<Result<_, _>>()?;
        let filter = match &spec.filter {
            Some(f) if !f.trim().is_empty() => {
                Some(Filter::parse(f, registry).map_err(|e| err("filter", e.to_string()))?)
            }
            _ => None,
        };
        let element = |field: &str, name: &str| -> Result<ElementId, SpecError> {
            registry.find(name).map(|e| (e.pen, e.id)).ok_or_else(|| {
                err(
                    field,
                    format!("{name:?} is not an Information Element name"),
                )
            })
        };
        let mut stages = Vec::new();
        let mut steps: Vec<FieldStep> = Vec::new();
        let flush_steps = |steps: &mut Vec<FieldStep>, stages: &mut Vec<Stage>| {
            if !steps.is_empty() {
                stages.push(Stage::Shape(Shaper::new(
                    std::mem::take(steps),
                    registry.clone(),
                )));
            }
        };
        for (n, t) in spec.transforms.iter().enumerate() {
            let at = format!("transforms[{n}]");
            match t {
                TransformSpec::Keep(v) => steps.push(FieldStep::Keep(
                    v.iter()
                        .map(|x| element(&format!("{at}.keep"), x))
                        .collect::<Result<_, _>>()?,
                )),
                TransformSpec::Drop(v) => steps.push(FieldStep::Drop(
                    v.iter()
                        .map(|x| element(&format!("{at}.drop"), x))
                        .collect::<Result<_, _>>()?,
                )),
                TransformSpec::Anonymise(a) => {
                    let method = anon_method(a).map_err(|m| err(&format!("{at}.anonymise"), m))?;
                    let names: Vec<String> = match &a.fields {
                        Some(f) => f.clone(),
                        None => DEFAULT_ADDRESS_FIELDS
                            .iter()
                            .map(|s| s.to_string())
                            .collect(),
                    };
                    let mut fields = Vec::new();
                    for name in &names {
                        let e = registry.find(name).ok_or_else(|| {
                            err(
                                &format!("{at}.anonymise.fields"),
                                format!("{name:?} is not an Information Element name"),
                            )
                        })?;
                        use crate::wire::model::DataType;
                        if !matches!(e.data_type, DataType::Ipv4Address | DataType::Ipv6Address) {
                            return Err(err(
                                &format!("{at}.anonymise.fields"),
                                format!("{name} is an {}, not an address", e.data_type.iana_name()),
                            ));
                        }
                        fields.push((e.pen, e.id));
                    }
                    steps.push(FieldStep::Anonymise { method, fields });
                }
                TransformSpec::Aggregate(a) => {
                    flush_steps(&mut steps, &mut stages);
                    let field = format!("{at}.aggregate");
                    if a.window_secs == 0 || a.window_secs > 86_400 {
                        return Err(err(
                            &format!("{field}.window_secs"),
                            format!("{} is outside 1 to 86400", a.window_secs),
                        ));
                    }
                    if a.key.is_empty() || a.key.len() > MAX_KEYS {
                        return Err(err(
                            &format!("{field}.key"),
                            format!("names 1 to {MAX_KEYS} elements, not {}", a.key.len()),
                        ));
                    }
                    let keys = a
                        .key
                        .iter()
                        .map(|k| element(&format!("{field}.key"), k))
                        .collect::<Result<Vec<_>, _>>()?;
                    let max = a.max_bytes.unwrap_or(DEFAULT_AGGREGATE_BYTES);
                    if max < 4096 {
                        return Err(err(
                            &format!("{field}.max_bytes"),
                            "must be at least 4096".into(),
                        ));
                    }
                    stages.push(Stage::Aggregate(Aggregator::new(
                        a.window_secs,
                        keys,
                        usize::try_from(max).unwrap_or(usize::MAX),
                        registry.clone(),
                    )));
                }
                TransformSpec::Domain(d) => {
                    flush_steps(&mut steps, &mut stages);
                    stages.push(Stage::Domain(*d));
                }
            }
        }
        flush_steps(&mut steps, &mut stages);
        if let Some(q) = spec.queue_bytes
            && q < 65_536
        {
            return Err(err("queue_bytes", format!("{q} is below 65536")));
        }
        let rotation = match &spec.sink {
            SinkSpec::Ndjson {
                rotate_bytes,
                rotate_secs,
                path,
            } => {
                if path.is_none() && (rotate_bytes.is_some() || rotate_secs.is_some()) {
                    return Err(err(
                        "sink.path",
                        "is needed to rotate (standard output is not rotated)".into(),
                    ));
                }
                Some((rotate_bytes, rotate_secs))
            }
            SinkSpec::IpfixFile {
                dir,
                rotate_bytes,
                rotate_secs,
            } => {
                if dir.trim().is_empty() {
                    return Err(err("sink.dir", "is empty".into()));
                }
                Some((rotate_bytes, rotate_secs))
            }
            _ => None,
        };
        if let Some((bytes, secs)) = rotation {
            if bytes.is_some_and(|b| b < 65_536) {
                return Err(err("sink.rotate_bytes", "must be at least 65536".into()));
            }
            if secs.is_some_and(|s| s == 0) {
                return Err(err("sink.rotate_secs", "must be at least 1".into()));
            }
        }
        if let SinkSpec::Ndjson { path: Some(p), .. } = &spec.sink
            && p.trim().is_empty()
        {
            return Err(err(
                "sink.path",
                "is empty (leave it out for standard output)".into(),
            ));
        }
        if let SinkSpec::Http {
            url,
            batch_records,
            timeout_secs,
            ca_file,
        } = &spec.sink
        {
            let https = url.starts_with("https://") && url.len() > "https://".len();
            if !https && (!url.starts_with("http://") || url.len() <= "http://".len()) {
                return Err(err(
                    "sink.url",
                    format!("{url:?} is not an http:// or https:// URL"),
                ));
            }
            if ca_file.is_some() && !https {
                return Err(err("sink.ca_file", "is for an https:// URL".into()));
            }
            if batch_records.is_some_and(|b| b == 0 || b > 100_000) {
                return Err(err("sink.batch_records", "must be 1 to 100000".into()));
            }
            if timeout_secs.is_some_and(|t| t == 0) {
                return Err(err("sink.timeout_secs", "must be at least 1".into()));
            }
        }
        if let SinkSpec::RedisStream {
            url, key, maxlen, ..
        } = &spec.sink
        {
            if !["redis://", "rediss://", "unix://"]
                .iter()
                .any(|p| url.starts_with(p))
            {
                return Err(err(
                    "sink.url",
                    format!("{url:?} is not a redis://, rediss:// or unix:// URL"),
                ));
            }
            if key.is_empty() || key.starts_with("ipfix:") || key.len() > 256 {
                return Err(err(
                    "sink.key",
                    format!(
                        "{key:?} must be 1 to 256 bytes and not under ipfix: (the service's own keys)"
                    ),
                ));
            }
            if maxlen.is_some_and(|m| m == 0) {
                return Err(err("sink.maxlen", "must be at least 1".into()));
            }
        }
        if let SinkSpec::Timeseries {
            interval_secs,
            by,
            retention_secs,
            max_keys,
            ..
        } = &spec.sink
        {
            let interval = interval_secs.unwrap_or(SERIES_INTERVAL_SECS);
            if !(1..=3600).contains(&interval) {
                return Err(err(
                    "sink.interval_secs",
                    format!("{interval} is outside 1 to 3600"),
                ));
            }
            let retention = retention_secs.unwrap_or(SERIES_RETENTION_SECS);
            if retention < interval
                || retention > 7 * 86_400
                || retention / interval > SERIES_MAX_INTERVALS
            {
                return Err(err(
                    "sink.retention_secs",
                    format!(
                        "{retention} must be at least one interval, at most 7 days and {SERIES_MAX_INTERVALS} intervals"
                    ),
                ));
            }
            if max_keys.is_some_and(|k| !(1..=100_000).contains(&k)) {
                return Err(err("sink.max_keys", "must be 1 to 100000".into()));
            }
            let keys = u64::from(max_keys.unwrap_or(SERIES_MAX_KEYS)) + 1;
            // The range: the retention and the 5 minutes ahead a record may reach, and a flow's
            // spread past its ends.
            let intervals = u64::from(retention / interval) + 300 / u64::from(interval) + 2;
            let cells = (1 + by.len() as u64) * keys * intervals;
            if cells > SERIES_MAX_CELLS {
                return Err(err(
                    "sink",
                    format!(
                        "(1 + {} by) x {keys} keys x {intervals} intervals is {cells} cells per tenant, past {SERIES_MAX_CELLS}: fewer keys (max_keys), fewer by, a shorter retention or longer intervals",
                        by.len()
                    ),
                ));
            }
            if by.len() > SERIES_MAX_BY {
                return Err(err(
                    "sink.by",
                    format!("{} keys: at most {SERIES_MAX_BY}", by.len()),
                ));
            }
            for (n, b) in by.iter().enumerate() {
                crate::analysis::key::KeySpec::parse(b, registry)
                    .map_err(|e| err(&format!("sink.by[{n}]"), e))?;
                if by[..n].contains(b) {
                    return Err(err(
                        &format!("sink.by[{n}]"),
                        format!("{b:?} is given twice"),
                    ));
                }
            }
        }
        if let SinkSpec::Ipfix {
            to,
            template_refresh_secs,
            max_message_bytes,
            ..
        } = &spec.sink
        {
            let port_ok = to
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !port_ok {
                return Err(err("sink.to", format!("{to:?} is not host:port")));
            }
            if template_refresh_secs.is_some_and(|s| s == 0) {
                return Err(err(
                    "sink.template_refresh_secs",
                    "must be at least 1".into(),
                ));
            }
            if let Some(m) = max_message_bytes
                && !(256..=65535).contains(m)
            {
                return Err(err(
                    "sink.max_message_bytes",
                    format!("{m} is outside 256 to 65535"),
                ));
            }
        }
        Ok(Pipeline {
            exporters,
            domains: spec.domains.clone(),
            templates: spec.templates.clone(),
            filter,
            compiled: FxHashMap::default(),
            stages,
            stats: PipelineStats::default(),
        })
    }

    /// Takes every record as it is: no template match, no filter, no transform.
    pub fn is_trivial(&self) -> bool {
        self.templates.is_empty() && self.filter.is_none() && self.stages.is_empty()
    }

    pub fn stats(&self) -> PipelineStats {
        let mut s = self.stats;
        for st in &self.stages {
            if let Stage::Aggregate(a) = st {
                let a = a.stats();
                s.aggregate_groups += a.groups as u64;
                s.aggregate_early_flushes += a.early_flushes;
            }
        }
        s
    }

    /// Whether records of `source` under `domain` are the stream's at all (before any count).
    pub fn takes(&self, source: &Source, domain: u32) -> bool {
        (self.exporters.is_empty() || self.exporters.iter().any(|n| n.contains(&source.addr)))
            && (self.domains.is_empty() || self.domains.contains(&domain))
    }

    /// Runs `recs` through the stream; returns what is ready for the sink (an aggregate holds
    /// records back until its window ends).
    pub fn push(&mut self, mut recs: Records, now_ms: u64) -> Vec<Records> {
        let offered = recs.count() as u64;
        self.stats.records_in += offered;
        for (k, b) in recs.msg.batches.iter().enumerate() {
            let id = b.plan.template.id;
            if !self.templates.is_empty() && !self.templates.contains(&id) {
                recs.selected[k] = Some(super::filter::Mask::new(b.len(), false));
                continue;
            }
            if let Some(f) = &self.filter {
                let key = Arc::as_ptr(&b.plan) as usize;
                if !self.compiled.contains_key(&key) && self.compiled.len() >= MAX_COMPILED {
                    self.compiled.clear();
                }
                let (_, c) = self
                    .compiled
                    .entry(key)
                    .or_insert_with(|| (b.plan.clone(), f.compile(&b.plan)));
                let meta = Meta {
                    exporter: recs.source.addr,
                    domain: recs.msg.header.observation_domain,
                    template: id,
                };
                let mut m = c.eval(b, &recs.msg.buf, &meta);
                if let Some(prev) = &recs.selected[k] {
                    for r in 0..m.len() {
                        if m.get(r) && !prev.get(r) {
                            m.set(r, false);
                        }
                    }
                }
                recs.selected[k] = Some(m);
            }
        }
        let passed = recs.count() as u64;
        if passed == 0 {
            self.stats.filtered += offered;
            return Vec::new();
        }
        self.stats.filtered += offered - passed;
        self.run_from(0, vec![recs], now_ms)
    }

    /// What aggregates whose window ended by `now_ms` release.
    pub fn tick(&mut self, now_ms: u64) -> Vec<Records> {
        let mut out = Vec::new();
        for k in 0..self.stages.len() {
            if let Stage::Aggregate(a) = &mut self.stages[k] {
                let due = a.flush_due(now_ms);
                if !due.is_empty() {
                    out.extend(self.run_from(k + 1, due, now_ms));
                }
            }
        }
        out
    }

    /// Everything held (shutdown, or the stream replaced).
    pub fn finish(&mut self, now_ms: u64) -> Vec<Records> {
        let mut out = Vec::new();
        for k in 0..self.stages.len() {
            if let Stage::Aggregate(a) = &mut self.stages[k] {
                let held = a.flush_all();
                if !held.is_empty() {
                    out.extend(self.run_from(k + 1, held, now_ms));
                }
            }
        }
        out
    }

    /// When the next aggregate window ends, if any holds records.
    pub fn next_due_ms(&self) -> Option<u64> {
        self.stages
            .iter()
            .filter_map(|s| match s {
                Stage::Aggregate(a) => a.due_ms(),
                _ => None,
            })
            .min()
    }

    fn run_from(&mut self, first: usize, mut batch: Vec<Records>, now_ms: u64) -> Vec<Records> {
        for stage in &mut self.stages[first..] {
            let mut next = Vec::with_capacity(batch.len());
            for recs in batch {
                match stage {
                    Stage::Shape(s) => {
                        let n = recs.count() as u64;
                        match s.apply(recs) {
                            Some(r) => {
                                self.stats.filtered += n - r.count() as u64;
                                next.push(r);
                            }
                            None => self.stats.filtered += n,
                        }
                    }
                    Stage::Aggregate(a) => next.extend(a.push(&recs, now_ms)),
                    Stage::Domain(d) => next.push(Records { domain: *d, ..recs }),
                }
            }
            batch = next;
        }
        batch
    }
}

fn anon_method(a: &AnonymiseSpec) -> Result<Method, String> {
    match a.method {
        AnonMethod::Truncate => {
            if a.key.is_some() || a.key_file.is_some() {
                return Err("truncate takes no key".into());
            }
            let v4 = a.v4_prefix.unwrap_or(24);
            let v6 = a.v6_prefix.unwrap_or(48);
            if v4 > 32 || v6 > 128 {
                return Err(format!(
                    "prefix lengths are at most 32 (IPv4) and 128 (IPv6), not {v4} and {v6}"
                ));
            }
            Ok(Method::Truncate { v4, v6 })
        }
        AnonMethod::Cryptopan => {
            if a.v4_prefix.is_some() || a.v6_prefix.is_some() {
                return Err("cryptopan takes no prefix lengths (they are for truncate)".into());
            }
            let hex = match (&a.key, &a.key_file) {
                (Some(k), None) => k.clone(),
                (None, Some(f)) => {
                    std::fs::read_to_string(f).map_err(|e| format!("key_file {f}: {e}"))?
                }
                _ => return Err("cryptopan needs exactly one of key and key_file".into()),
            };
            CryptoPan::from_hex(&hex)
                .map(|c| Method::CryptoPan(Arc::new(c)))
                .map_err(|e| e.to_string())
        }
    }
}

/// A tenant's stream as the node runs it: it takes the tenant's records only, and it may not
/// reach outside the node's storage: an `ndjson` file is a relative path under
/// `<storage_dir>/streams/<tenant>/`, and a Crypto-PAn key is given inline, not as a file of
/// the node's. Pure: the path is only joined, not touched.
pub fn for_tenant(
    spec: &StreamSpec,
    tenant: &str,
    storage_dir: &std::path::Path,
    network_sinks: bool,
) -> Result<StreamSpec, SpecError> {
    let err = |field: &str, message: String| SpecError {
        stream: spec.name.clone(),
        field: field.to_string(),
        message,
    };
    if !spec.tenants.is_empty() && spec.tenants != [tenant] {
        return Err(err(
            "tenants",
            format!(
                "a stream of tenant {tenant:?} takes that tenant's records only (leave it out)"
            ),
        ));
    }
    let mut out = spec.clone();
    out.tenants = vec![tenant.to_string()];
    for (n, t) in spec.transforms.iter().enumerate() {
        if let TransformSpec::Anonymise(a) = t
            && a.key_file.is_some()
        {
            return Err(err(
                &format!("transforms[{n}].anonymise.key_file"),
                "is for the node's own configuration; give the key inline".into(),
            ));
        }
    }
    let under_storage = |field: &str, p: &str| -> Result<String, SpecError> {
        let rel = std::path::Path::new(p);
        let plain = !p.is_empty()
            && rel
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
        if !plain {
            return Err(err(
                field,
                format!(
                    "{p:?} must be a relative path without '..' (it is placed under the node's storage)"
                ),
            ));
        }
        Ok(storage_dir
            .join("streams")
            .join(tenant)
            .join(rel)
            .to_string_lossy()
            .into_owned())
    };
    match &spec.sink {
        SinkSpec::IpfixFile {
            dir,
            rotate_bytes,
            rotate_secs,
        } => {
            out.sink = SinkSpec::IpfixFile {
                dir: under_storage("sink.dir", dir)?,
                rotate_bytes: *rotate_bytes,
                rotate_secs: *rotate_secs,
            };
        }
        SinkSpec::Ndjson {
            path,
            rotate_bytes,
            rotate_secs,
        } => {
            let Some(p) = path else {
                return Err(err(
                    "sink.path",
                    "is required: a tenant's NDJSON goes to a file under the node's storage".into(),
                ));
            };
            let full = under_storage("sink.path", p)?;
            out.sink = SinkSpec::Ndjson {
                path: Some(full),
                rotate_bytes: *rotate_bytes,
                rotate_secs: *rotate_secs,
            };
        }
        SinkSpec::Discard {} | SinkSpec::Timeseries { .. } => {}
        SinkSpec::Http {
            ca_file: Some(_), ..
        } => {
            return Err(err(
                "sink.ca_file",
                "is for the node's configuration: a tenant's https sink trusts the system's CAs"
                    .into(),
            ));
        }
        SinkSpec::Ipfix { .. } | SinkSpec::RedisStream { .. } | SinkSpec::Http { .. } => {
            if !network_sinks {
                return Err(err(
                    "sink.kind",
                    "tenants' streams may not send over the network on this node (mediator.tenant_network_sinks)".into(),
                ));
            }
        }
    }
    Ok(out)
}

/// Stream names appear in URLs, metric labels and actor names.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(format!("must be 1 to {MAX_NAME_LEN} characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(format!(
            "{name:?} may hold only letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
