//! One typed configuration: defaults < file given by `--config` (TOML or YAML) < environment
//! (`IPFIXSVC__SECTION__KEY`, e.g. `IPFIXSVC__COLLECTOR__TCP_LISTEN=127.0.0.1:4739`).

use serde::{Deserialize, Serialize};
use std::path::Path;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Shows config's message itself, so it is not also this error's `source()`: printed as a
    /// chain (anyhow's `{:#}`), the message would appear twice.
    #[error("configuration: {0}")]
    Load(config::ConfigError),
    #[error("configuration: {0}")]
    Invalid(String),
}

impl From<config::ConfigError> for ConfigError {
    fn from(e: config::ConfigError) -> Self {
        ConfigError::Load(e)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub node: NodeSettings,
    pub api: ApiSettings,
    pub collector: CollectorSettings,
    pub output: OutputSettings,
    pub mediator: MediatorSettings,
    pub log: LogSettings,
    pub shutdown: ShutdownSettings,
    pub redis: RedisSettings,
    pub store: StoreSettings,
    pub cluster: ClusterSettings,
    pub jobs: JobsSettings,
    pub storage: StorageSettings,
    pub telemetry: TelemetrySettings,
}

/// OpenTelemetry: traces and metrics over OTLP/HTTP (off by default); metrics are at `/metrics`
/// whatever this says.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetrySettings {
    /// The OTLP/HTTP receiver's base URL (`http://collector:4318`); traces go to
    /// `<endpoint>/v1/traces`, metrics to `<endpoint>/v1/metrics`. Empty: no OTLP export.
    pub otlp_endpoint: String,
    /// The share of traces kept (0.0 to 1.0), decided where a trace starts.
    pub sampling_ratio: f64,
    /// How often metrics are pushed over OTLP.
    pub metrics_interval_secs: u64,
    /// How often the TelemetrySampler reads the process (CPU, memory, threads, open files),
    /// the actors' figures and the tenants' CPU shares. `/metrics` also samples when scraped.
    pub sample_secs: u64,
    /// Distinct values a per-tenant or per-exporter label may take (each dimension on its own);
    /// values past it are folded into `other`, and the folds counted.
    pub max_label_values: usize,
}

impl Default for TelemetrySettings {
    fn default() -> Self {
        TelemetrySettings {
            otlp_endpoint: String::new(),
            sampling_ratio: 1.0,
            metrics_interval_secs: 10,
            sample_secs: 5,
            max_label_values: 200,
        }
    }
}

/// The `api` role: the REST API, health, readiness and metrics over HTTP.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ApiSettings {
    /// Where the HTTP server listens; empty disables it.
    pub listen: String,
    /// The operators' bearer token. Empty: the one in `<storage.dir>/admin-token`, made (random,
    /// mode 0600, printed once on standard error) when the file does not exist.
    pub admin_token: String,
    /// Largest request body (uploads) accepted.
    pub max_upload_bytes: u64,
    /// A request that waits this long for the actors behind it gets 503; an upload that sends
    /// nothing for this long gets 408.
    pub request_timeout_secs: u64,
    /// Connections open at once; past it new ones are closed at once.
    pub max_connections: usize,
    /// Time a client has to send a request's headers (also how long a keep-alive connection
    /// may sit idle).
    pub header_timeout_secs: u64,
}

impl Default for ApiSettings {
    fn default() -> Self {
        ApiSettings {
            listen: "0.0.0.0:8080".into(),
            admin_token: String::new(),
            max_upload_bytes: 4 << 30,
            request_timeout_secs: 30,
            max_connections: 1024,
            header_timeout_secs: 10,
        }
    }
}

/// The `jobs` role: conversion jobs run as supervised actors.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct JobsSettings {
    /// Jobs running at once (each meters on one blocking thread). Default: the cores available.
    pub workers: usize,
    /// Jobs waiting for a worker; beyond this, submissions are refused (HTTP 429).
    pub queue: usize,
    /// Job records are kept this long after their last change.
    pub retention_secs: u64,
    /// Key x interval cells one time-series job may hold (about 64 bytes each); a job that
    /// would need more fails and says so.
    pub max_series_cells: usize,
}

impl Default for JobsSettings {
    fn default() -> Self {
        JobsSettings {
            workers: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            queue: 64,
            retention_secs: 7 * 86_400,
            max_series_cells: 2_000_000,
        }
    }
}

/// Files the node keeps: job uploads and results.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StorageSettings {
    /// A local folder, or a shared volume (PVC) in Kubernetes so any node serves any result.
    pub dir: String,
}

impl Default for StorageSettings {
    fn default() -> Self {
        StorageSettings {
            dir: "./data".into(),
        }
    }
}

/// The ractor cluster across pods. On when a cookie is set.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSettings {
    /// Where this node's cluster server listens (ractor_cluster NodeServer).
    pub listen: String,
    /// Other nodes, host:port (in Kubernetes: the StatefulSet's headless-service names).
    pub seeds: Vec<String>,
    /// What this node tells its peers to dial, `host:port` or `host` (the port is then
    /// cluster.listen's): the peers of its peers dial it by this. Empty: cluster.listen's IP when
    /// it is a specific one, else the host name. In Kubernetes, the pod's own FQDN
    /// (`$(POD_NAME).<headless-svc>.<ns>.svc`), which a manifest sets, since a bare pod name
    /// does not resolve from other pods.
    pub advertise: String,
    /// Shared secret (from a Kubernetes Secret); required for a cluster. Use a long random one.
    #[serde(deserialize_with = "string_only")]
    pub cookie: String,
    /// Mutual TLS between nodes: this node's certificate chain and key, and the CA that signs
    /// every node's certificate (PEM files). All three, or none (plain TCP).
    pub tls_cert: String,
    pub tls_key: String,
    pub tls_ca: String,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        ClusterSettings {
            listen: "0.0.0.0:4800".into(),
            seeds: Vec::new(),
            advertise: String::new(),
            cookie: String::new(),
            tls_cert: String::new(),
            tls_key: String::new(),
            tls_ca: String::new(),
        }
    }
}

/// The cookie is compared byte for byte with every other node's and with the one `ipfixsvc
/// cluster` is given. A file value that YAML or TOML reads as a number (`cookie: 000123`) would
/// come back as `123`: refused, so it gets quoted, rather than turned into a string.
fn string_only<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    struct Text;
    impl serde::de::Visitor<'_> for Text {
        type Value = String;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a string (in a file, quote it)")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_owned())
        }
        fn visit_string<E: serde::de::Error>(self, v: String) -> Result<String, E> {
            Ok(v)
        }
    }
    d.deserialize_any(Text)
}

impl ClusterSettings {
    pub fn enabled(&self) -> bool {
        !self.cookie.is_empty()
    }
}

/// Shared state. Without a URL, state is in memory (single node).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSettings {
    /// e.g. `redis://redis:6379/`; empty: in-memory state.
    pub url: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSettings {
    /// Shared templates expire this long after they were last (re)defined.
    pub template_ttl_secs: u64,
    /// Each store operation gives up after this long (the hot path never waits on it).
    pub timeout_ms: u64,
    /// Tenant of the records collected by this node (multi-tenancy comes with the API).
    pub tenant: String,
    /// Bytes of templates the node's TemplateCache keeps (least recently seen go first).
    pub cache_bytes: usize,
    /// Bytes of templates the in-memory store keeps (no Redis); closest to expiry go first.
    pub memory_bytes: usize,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            template_ttl_secs: 86_400,
            timeout_ms: 500,
            tenant: "default".into(),
            cache_bytes: 128 << 20,
            memory_bytes: 256 << 20,
        }
    }
}

/// What a node runs. Roles not yet built are accepted and reported at start.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Api,
    Collector,
    Mediator,
    Jobs,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NodeSettings {
    /// This node's name in logs (and in the cluster).
    pub name: String,
    pub roles: Vec<Role>,
}

impl Default for NodeSettings {
    fn default() -> Self {
        NodeSettings {
            name: host_name(),
            roles: vec![Role::Api, Role::Collector, Role::Mediator, Role::Jobs],
        }
    }
}

/// The host name: `HOSTNAME`, else /etc/hostname, else `ipfixsvc`.
pub fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "ipfixsvc".into())
}

/// The Collecting Process: listeners, limits and timeouts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CollectorSettings {
    /// IPFIX over TCP; empty to disable.
    pub tcp_listen: String,
    /// IPFIX and NetFlow v9 over UDP; empty to disable.
    pub udp_listen: String,
    /// IPFIX over TLS (RFC 7011 section 11); empty (the default) to disable. Needs `tls_cert`
    /// and `tls_key`.
    pub tls_listen: String,
    /// PEM certificate chain the TLS listener presents.
    pub tls_cert: String,
    /// PEM private key of `tls_cert`.
    pub tls_key: String,
    /// PEM CA certificates: when set, exporters must present a certificate signed by one of
    /// them (mutual TLS); when empty, any exporter may connect, as over plain TCP.
    pub tls_ca: String,
    /// With `tls_ca`: the exporter's certificate names its tenant (the subject's common name,
    /// which must be a tenant's id), instead of its address.
    pub tls_tenant_from_cert: bool,
    /// Concurrent TCP sessions (connections); beyond this new connections are closed.
    pub max_tcp_sessions: usize,
    /// Concurrent UDP sessions (exporter address:port and Observation Domain); when full, the
    /// idlest UDP session is retired to make room, so forged sources cannot lock exporters out.
    pub max_udp_sessions: usize,
    /// Sessions one source address may hold, per transport (a NAT or a router with many line
    /// cards needs several; a forged flood from one address gets no more).
    pub max_sessions_per_exporter: usize,
    /// A session that has not sent one valid message this long after it started is closed.
    pub first_message_secs: u64,
    /// Pending connections the kernel queues for the TCP listener (capped by
    /// net.core.somaxconn): a fleet reconnecting after a pod restart arrives at once.
    pub tcp_backlog: u32,
    /// Largest IPFIX message accepted on TCP (the format allows 65535).
    pub max_message_size: usize,
    /// A session with no complete message for this long is closed (TCP) or retired (UDP).
    pub idle_timeout_secs: u64,
    /// Templates one session may hold across its observation domains.
    pub max_templates_per_session: usize,
    /// Fields one template may have; a template with more is refused (and its session closed
    /// on TCP, its datagram dropped on UDP).
    pub max_template_fields: usize,
    /// Bytes of compiled templates one session may hold...
    pub template_bytes_per_session: usize,
    /// ...all sessions of one exporter address together...
    pub template_bytes_per_exporter: usize,
    /// ...and all sessions of this node together. Past any of the three the template is refused.
    pub template_bytes_total: usize,
    /// UDP templates expire unless re-sent within this time (RFC 7011 section 8.4).
    pub udp_template_lifetime_secs: u64,
    /// Data Sets that arrive before their template are held up to this many bytes per session...
    pub pending_bytes: usize,
    /// ...for at most this long, then dropped and counted...
    pub pending_secs: u64,
    /// ...and at most this many bytes for all sessions together.
    pub pending_bytes_total: usize,
    /// Bytes of datagrams queued for one UDP session before new ones are dropped and counted...
    pub udp_queue_bytes: usize,
    /// ...and for all UDP sessions together.
    pub udp_queue_bytes_total: usize,
    /// Kernel receive buffer of the UDP socket (SO_RCVBUF), for bursts; the kernel may cap it
    /// (net.core.rmem_max), and the size it granted is logged.
    pub udp_receive_buffer_bytes: usize,
    /// `exporter`: templates are shared (through the store) by every session of the same
    /// exporter address and Observation Domain, on any node, so a reconnecting exporter is
    /// decoded at once. `session`: strict RFC 7011 scoping, templates die with their session.
    pub template_scope: TemplateScope,
    /// Complete messages in flight between a TCP reader and its session: beyond this the
    /// reader stops reading, and TCP flow control slows the exporter.
    pub tcp_inflight_batches: usize,
    /// Exporters whose address no tenant owns: `accept` (tenant `store.tenant`) or `refuse`.
    pub unknown_exporters: UnknownExporters,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum UnknownExporters {
    Accept,
    Refuse,
}

impl Default for CollectorSettings {
    fn default() -> Self {
        CollectorSettings {
            tcp_listen: "0.0.0.0:4739".into(),
            udp_listen: "0.0.0.0:4739".into(),
            tls_listen: String::new(),
            tls_cert: String::new(),
            tls_key: String::new(),
            tls_ca: String::new(),
            tls_tenant_from_cert: false,
            max_tcp_sessions: 10_000,
            max_udp_sessions: 10_000,
            max_sessions_per_exporter: 256,
            first_message_secs: 10,
            tcp_backlog: 4_096,
            max_message_size: 65_535,
            idle_timeout_secs: 600,
            max_templates_per_session: 4_096,
            max_template_fields: 512,
            template_bytes_per_session: 4 << 20,
            template_bytes_per_exporter: 16 << 20,
            template_bytes_total: 512 << 20,
            udp_template_lifetime_secs: 1_800,
            pending_bytes: 256 * 1024,
            pending_secs: 30,
            pending_bytes_total: 256 << 20,
            udp_queue_bytes: 4 << 20,
            udp_queue_bytes_total: 256 << 20,
            udp_receive_buffer_bytes: 8 << 20,
            tcp_inflight_batches: 8,
            unknown_exporters: UnknownExporters::Accept,
            template_scope: TemplateScope::Exporter,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TemplateScope {
    Exporter,
    Session,
}

impl CollectorSettings {
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }
}

/// The `mediator` role's export streams (README "Streams" lists every key of a stream).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MediatorSettings {
    /// Export streams; none: one stream `default` that writes NDJSON as `output.*` says.
    pub streams: Vec<crate::mediation::spec::StreamSpec>,
    /// Tenants' streams (made through the API) may use network sinks (`ipfix`): off by
    /// default, since they make the node connect where a tenant says.
    pub tenant_network_sinks: bool,
}

/// Where decoded records go while no mediator stream is configured.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// One JSON object per record, as `ipfixsvc dump` prints.
    Ndjson,
    /// Decode everything, print nothing (benchmarks; counts are in the session statistics).
    Count,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct OutputSettings {
    pub format: OutputFormat,
    /// A file to append NDJSON to; empty for standard output.
    pub path: String,
    /// The `default` stream's queue, in MiB of decoded messages, before sessions wait. Small:
    /// what it holds at SIGTERM must be rendered and written within the grace period.
    pub queue_chunks: usize,
}

impl Default for OutputSettings {
    fn default() -> Self {
        OutputSettings {
            format: OutputFormat::Ndjson,
            path: String::new(),
            queue_chunks: 8,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// `tracing` filter directives, e.g. "info" or "ipfixsvc=debug"; RUST_LOG overrides.
    pub filter: String,
    pub format: LogFormat,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings {
            filter: "info".into(),
            format: LogFormat::Text,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownSettings {
    /// On SIGTERM/Ctrl-C: time for sessions to finish and outputs to flush.
    pub grace_secs: u64,
}

impl Default for ShutdownSettings {
    fn default() -> Self {
        ShutdownSettings { grace_secs: 10 }
    }
}

/// Environment variables are `IPFIXSVC__SECTION__KEY`.
const ENV_PREFIX: &str = "IPFIXSVC";

/// Keys whose environment value is a comma-separated list.
const ENV_LIST_KEYS: [&str; 2] = ["node.roles", "cluster.seeds"];

/// The process's `IPFIXSVC__*` variables. A value that is not UTF-8 is an error naming the
/// variable (others are not ours to judge).
fn environment() -> Result<config::Map<String, String>, ConfigError> {
    let prefix = format!("{ENV_PREFIX}__");
    let mut env = config::Map::new();
    for (name, value) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        if !name
            .get(..prefix.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(&prefix))
        {
            continue;
        }
        let value = value
            .into_string()
            .map_err(|_| ConfigError::Invalid(format!("{name}: not valid UTF-8")))?;
        env.insert(name.to_string(), value);
    }
    Ok(env)
}

impl Settings {
    /// Defaults, then `file` if given, then the environment.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        Self::load_from(file, environment()?)
    }

    /// [`Settings::load`] with the `IPFIXSVC__*` variables given: tests pass their own instead
    /// of changing the process's environment, which every thread shares.
    fn load_from(
        file: Option<&Path>,
        env: config::Map<String, String>,
    ) -> Result<Settings, ConfigError> {
        let mut b =
            config::Config::builder().add_source(config::Config::try_from(&Settings::default())?);
        if let Some(f) = file {
            b = b.add_source(config::File::from(f).required(true));
        }
        // try_parsing stays off: every value from the environment is a string, and serde parses
        // numbers for the keys typed so. With it on, config made an all-digit value a number
        // before any key's type was known, so a string key lost what it was set to: the cookie
        // 000123456789012345678901 became 1.2345678901234568e20 (leading zeros gone, the rest
        // rounded through f64) and no longer matched the one `ipfixsvc cluster` reads.
        let source = config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__")
            .source(Some(env.clone()));
        b = b.add_source(source);
        // config splits lists only with try_parsing on, so the list keys are split here and set
        // as overrides, which rank where the environment does: above defaults and the file.
        for key in ENV_LIST_KEYS {
            let var = format!("{ENV_PREFIX}__{}", key.replace('.', "__"));
            // config matches names without regard to case; so does this.
            if let Some((_, value)) = env.iter().find(|(k, _)| k.eq_ignore_ascii_case(&var)) {
                let items: Vec<String> = value
                    .split(',')
                    .map(str::trim)
                    // `IPFIXSVC__CLUSTER__SEEDS=` is no seeds, not one empty seed.
                    .filter(|item| !item.is_empty())
                    .map(String::from)
                    .collect();
                b = b.set_override(key, items)?;
            }
        }
        let s: Settings = b.build()?.try_deserialize()?;
        s.validate()?;
        Ok(s)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let c = &self.collector;
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.redis.url.is_empty()
            && let Some(s) = self.mediator.streams.iter().find(|s| {
                s.sink.series_keeping() == Some(crate::mediation::spec::SeriesKeeping::Redis)
            })
        {
            return Err(ConfigError::Invalid(format!(
                "mediator.streams {:?}: sink.store = \"redis\" needs redis.url",
                s.name
            )));
        }
        if !(16..=65_535).contains(&c.max_message_size) {
            return bad("collector.max_message_size must be between 16 and 65535");
        }
        let positive = [
            ("max_tcp_sessions", c.max_tcp_sessions),
            ("max_udp_sessions", c.max_udp_sessions),
            ("max_sessions_per_exporter", c.max_sessions_per_exporter),
            ("tcp_inflight_batches", c.tcp_inflight_batches),
            ("tcp_backlog", c.tcp_backlog as usize),
            ("first_message_secs", c.first_message_secs as usize),
            ("max_template_fields", c.max_template_fields),
            ("template_bytes_per_session", c.template_bytes_per_session),
            ("template_bytes_per_exporter", c.template_bytes_per_exporter),
            ("template_bytes_total", c.template_bytes_total),
            ("udp_queue_bytes", c.udp_queue_bytes),
            ("udp_queue_bytes_total", c.udp_queue_bytes_total),
            ("pending_bytes_total", c.pending_bytes_total),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(ConfigError::Invalid(format!(
                "collector.{key} must be positive"
            )));
        }
        if c.udp_queue_bytes < 65_535 {
            return bad("collector.udp_queue_bytes must hold at least one datagram (65535)");
        }
        if c.idle_timeout_secs == 0 {
            return bad("collector.idle_timeout_secs must be positive");
        }
        if self.store.tenant.is_empty() || self.store.tenant.contains(':') {
            return bad("store.tenant must be non-empty and without ':'");
        }
        if self.store.timeout_ms == 0 || self.store.template_ttl_secs == 0 {
            return bad("store.timeout_ms and store.template_ttl_secs must be positive");
        }
        if self.store.cache_bytes == 0 || self.store.memory_bytes == 0 {
            return bad("store.cache_bytes and store.memory_bytes must be positive");
        }
        let c = &self.cluster;
        let tls = [&c.tls_cert, &c.tls_key, &c.tls_ca]
            .iter()
            .filter(|p| !p.is_empty())
            .count();
        if tls != 0 && tls != 3 {
            return bad("cluster.tls_cert, tls_key and tls_ca go together: all three, or none");
        }
        if self.api.request_timeout_secs == 0
            || self.api.max_upload_bytes == 0
            || self.api.max_connections == 0
            || self.api.header_timeout_secs == 0
        {
            return bad(
                "api.request_timeout_secs, max_upload_bytes, max_connections and header_timeout_secs must be positive",
            );
        }
        let t = &self.api.admin_token;
        if !t.is_empty() && (t.len() < 16 || t.chars().any(|c| c.is_whitespace())) {
            return bad("api.admin_token must be at least 16 characters, without spaces");
        }
        let c = &self.collector;
        if !c.tls_listen.is_empty() && (c.tls_cert.is_empty() || c.tls_key.is_empty()) {
            return bad("collector.tls_listen needs collector.tls_cert and collector.tls_key");
        }
        if c.tls_listen.is_empty()
            && (!c.tls_cert.is_empty() || !c.tls_key.is_empty() || !c.tls_ca.is_empty())
        {
            return bad(
                "collector.tls_cert, tls_key and tls_ca are for collector.tls_listen, which is empty",
            );
        }
        let t = &self.telemetry;
        if !(0.0..=1.0).contains(&t.sampling_ratio) {
            return bad("telemetry.sampling_ratio must be between 0.0 and 1.0");
        }
        if t.metrics_interval_secs == 0 {
            return bad("telemetry.metrics_interval_secs must be at least 1");
        }
        if t.sample_secs == 0 {
            return bad("telemetry.sample_secs must be at least 1");
        }
        if t.max_label_values == 0 {
            return bad("telemetry.max_label_values must be at least 1");
        }
        let url = &t.otlp_endpoint;
        if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
            return bad("telemetry.otlp_endpoint must be an http:// or https:// URL");
        }
        if c.tls_tenant_from_cert && c.tls_ca.is_empty() {
            return bad(
                "collector.tls_tenant_from_cert needs collector.tls_ca: only a certificate signed by a CA the collector trusts may name a tenant",
            );
        }
        if !self.cluster.seeds.is_empty() && self.cluster.cookie.is_empty() {
            return bad("cluster.seeds needs cluster.cookie (a shared secret)");
        }
        // Addresses are checked here, not when the listener or the cluster member starts:
        // there a bad one surfaces late, wrapped in one actor startup failure per supervisor.
        for (key, value) in [
            ("collector.tcp_listen", &self.collector.tcp_listen),
            ("collector.udp_listen", &self.collector.udp_listen),
            ("collector.tls_listen", &self.collector.tls_listen),
            ("api.listen", &self.api.listen),
        ] {
            // Empty disables that listener.
            if !value.is_empty() {
                check_listen(key, value)?;
            }
        }
        if self.cluster.enabled() || !self.cluster.listen.is_empty() {
            check_listen("cluster.listen", &self.cluster.listen)?;
        }
        for (i, seed) in self.cluster.seeds.iter().enumerate() {
            check_seed(&format!("cluster.seeds[{i}]"), seed)?;
        }
        if !self.cluster.advertise.is_empty() {
            check_advertise("cluster.advertise", &self.cluster.advertise)?;
        }
        if self.jobs.workers == 0
            || self.jobs.retention_secs == 0
            || self.jobs.max_series_cells == 0
        {
            return bad(
                "jobs.workers, jobs.retention_secs and jobs.max_series_cells must be positive",
            );
        }
        if self.storage.dir.is_empty() {
            return bad("storage.dir must be set");
        }
        if self.output.queue_chunks == 0 {
            return bad("output.queue_chunks must be positive");
        }
        Ok(())
    }
}

/// `key = "value": why`, the shape of every address error.
fn bad_address(key: &str, value: &str, why: impl std::fmt::Display) -> ConfigError {
    ConfigError::Invalid(format!("{key} = {value:?}: {why}"))
}

/// Splits `host:port` (`[v6]:port` for an IPv6 address), or says what is wrong with it.
fn host_port<'a>(key: &str, value: &'a str) -> Result<(&'a str, u16), ConfigError> {
    let Some((host, port)) = value.rsplit_once(':') else {
        return Err(bad_address(key, value, "expected host:port"));
    };
    let port: u16 = port.parse().map_err(|_| {
        bad_address(
            key,
            value,
            "expected host:port, the port a number up to 65535",
        )
    })?;
    if host.is_empty() {
        return Err(bad_address(key, value, "expected host:port"));
    }
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return match v6.parse::<std::net::Ipv6Addr>() {
            Ok(_) => Ok((host, port)),
            Err(_) => Err(bad_address(
                key,
                value,
                "not an IPv6 address in the brackets",
            )),
        };
    }
    if host.contains(':') {
        return Err(bad_address(
            key,
            value,
            "expected host:port; an IPv6 address goes in brackets, [addr]:port",
        ));
    }
    // A DNS name (RFC 1123 letters, digits, hyphens, dots; `_` as some service names have) or
    // an IPv4 address: anything else (spaces, slashes, a URL) is a typo to catch now.
    if !host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
    {
        return Err(bad_address(
            key,
            value,
            "expected host:port, the host a name or an IP address",
        ));
    }
    Ok((host, port))
}

/// A listen address is `IP:port` (port 0: any free port), or `host:port` with a host name that
/// resolves now (`localhost`, the pod's own name): the listener binds the first address it gets.
fn check_listen(key: &str, value: &str) -> Result<(), ConfigError> {
    if value.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(());
    }
    host_port(key, value)?;
    use std::net::ToSocketAddrs;
    match value.to_socket_addrs().map(|mut addrs| addrs.next()) {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(bad_address(key, value, "the host name has no address")),
        Err(e) => Err(bad_address(
            key,
            value,
            format!("the host name does not resolve ({e})"),
        )),
    }
}

/// A seed is `host:port`. It is not resolved here: seeds are dialed, and resolved, again and
/// again, and in Kubernetes a StatefulSet's headless names resolve only once their pods run.
fn check_seed(key: &str, value: &str) -> Result<(), ConfigError> {
    let (_, port) = host_port(key, value)?;
    if port == 0 {
        return Err(bad_address(key, value, "port 0 cannot be dialed"));
    }
    Ok(())
}

/// What a node advertises is dialed by others: `host:port`, or `host` alone (`[v6]` for an IPv6
/// address). Not resolved here, for the same reason as a seed; but a wildcard address (0.0.0.0,
/// ::) is refused, since nobody can dial it.
fn check_advertise(key: &str, value: &str) -> Result<(), ConfigError> {
    let host = if value.starts_with('[') && value.ends_with(']') {
        // `[v6]` alone: checked as if it had a port.
        host_port(key, &format!("{value}:1"))
            .map_err(|_| bad_address(key, value, "not an IPv6 address in the brackets"))?
            .0
            .to_string()
    } else if value.contains(':') {
        let (host, port) = host_port(key, value)?;
        if port == 0 {
            return Err(bad_address(key, value, "port 0 cannot be dialed"));
        }
        host.to_string()
    } else {
        host_port(key, &format!("{value}:1"))
            .map_err(|_| bad_address(key, value, "expected host:port or host"))?
            .0
            .to_string()
    };
    let ip = host.trim_start_matches('[').trim_end_matches(']');
    if ip
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_unspecified())
    {
        return Err(bad_address(
            key,
            value,
            "a wildcard address cannot be dialed: give this node's name or address",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_then_file_then_environment() {
        let dir = std::env::temp_dir().join(format!("ipfixsvc-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let f = dir.join("c.toml");
        std::fs::write(&f, "[collector]\nidle_timeout_secs = 5\nmax_tcp_sessions = 7\n[node]\nroles = [\"collector\"]\n")
            .expect("write");
        // The environment is process-wide: one test sets and clears its own key.
        unsafe { std::env::set_var("IPFIXSVC__COLLECTOR__MAX_TCP_SESSIONS", "9") };
        let s = Settings::load(Some(&f));
        unsafe { std::env::remove_var("IPFIXSVC__COLLECTOR__MAX_TCP_SESSIONS") };
        let s = s.expect("loads");
        assert_eq!(s.collector.idle_timeout_secs, 5);
        assert_eq!(s.collector.max_tcp_sessions, 9);
        assert_eq!(s.node.roles, vec![Role::Collector]);
        assert_eq!(s.collector.tcp_listen, "0.0.0.0:4739");
        assert!(s.jobs.workers >= 1, "default: the cores available");
        assert_eq!(s.jobs.queue, 64);
        assert_eq!(s.jobs.retention_secs, 7 * 86_400);
        assert_eq!(s.storage.dir, "./data");
        std::fs::write(&f, "[collector]\nmax_mesage_size = 5\n").expect("write");
        assert!(
            Settings::load(Some(&f)).is_err(),
            "a misspelt key is an error, not ignored"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn addresses_are_checked_when_configuration_loads() {
        let refused = |f: &dyn Fn(&mut Settings)| {
            let mut s = Settings::default();
            f(&mut s);
            s.validate().expect_err("refused").to_string()
        };
        assert_eq!(
            refused(&|s| s.collector.tcp_listen = "notanaddr".into()),
            r#"configuration: collector.tcp_listen = "notanaddr": expected host:port"#
        );
        assert!(refused(&|s| s.collector.udp_listen = "0.0.0.0:99999".into())
            .starts_with(r#"configuration: collector.udp_listen = "0.0.0.0:99999": expected host:port, the port"#));
        assert!(refused(&|s| s.collector.tcp_listen = "::1:4739".into()).contains("brackets"));
        assert!(
            refused(&|s| s.collector.tcp_listen = "no-such-host.invalid:4739".into())
                .contains("does not resolve")
        );
        assert!(
            refused(&|s| s.collector.tcp_listen = "http://x:4739".into())
                .contains("expected host:port")
        );
        assert!(
            refused(&|s| s.cluster.listen = ":4800".into())
                .starts_with("configuration: cluster.listen")
        );
        assert_eq!(
            refused(&|s| {
                s.cluster.cookie = "secret".into();
                s.cluster.seeds = vec!["node-0.ipfix:4800".into(), "node-1".into()];
            }),
            r#"configuration: cluster.seeds[1] = "node-1": expected host:port"#
        );
        assert!(
            refused(&|s| {
                s.cluster.cookie = "secret".into();
                s.cluster.seeds = vec!["node-0:0".into()];
            })
            .contains("port 0 cannot be dialed")
        );
        assert!(
            refused(&|s| {
                s.cluster.cookie = "secret".into();
                s.cluster.listen = String::new();
            })
            .starts_with("configuration: cluster.listen")
        );

        for (advertise, why) in [
            ("0.0.0.0:4800", "a wildcard address cannot be dialed"),
            ("[::]", "a wildcard address cannot be dialed"),
            ("node 0.ipfix", "expected host:port or host"),
            ("fd00::7", "brackets"),
            ("[fd00::zz]", "not an IPv6 address"),
            ("ipfix-0.ipfix:0", "port 0 cannot be dialed"),
        ] {
            let err = refused(&|s| {
                s.cluster.cookie = "secret".into();
                s.cluster.advertise = advertise.into();
            });
            assert!(
                err.starts_with(&format!(
                    "configuration: cluster.advertise = {advertise:?}: "
                )) && err.contains(why),
                "{advertise}: {err}"
            );
        }
        for advertise in [
            "ipfix-0.ipfix.default.svc:4800",
            "ipfix-0.ipfix.default.svc",
            "10.0.0.7",
            "[fd00::7]",
            "[fd00::7]:14800",
        ] {
            let mut s = Settings::default();
            s.cluster.cookie = "secret".into();
            s.cluster.advertise = advertise.into();
            s.validate().expect(advertise);
        }

        // Accepted: IP:port (v4, v6, port 0), a name that resolves, empty to disable a
        // listener; seeds are names that need not resolve yet.
        let mut s = Settings::default();
        s.collector.tcp_listen = "[::1]:0".into();
        s.collector.udp_listen = String::new();
        s.cluster.listen = "localhost:4800".into();
        s.cluster.cookie = "secret".into();
        s.cluster.seeds = vec![
            "ipfix-0.ipfix.default.svc.cluster.local:4800".into(),
            "10.0.0.7:4800".into(),
            "[fd00::7]:4800".into(),
        ];
        s.validate().expect("valid addresses");
    }

    fn env(vars: &[(&str, &str)]) -> config::Map<String, String> {
        vars.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn environment_values_stay_strings_and_typed_keys_still_parse() {
        let s = Settings::load_from(
            None,
            env(&[
                ("IPFIXSVC__CLUSTER__COOKIE", "000123456789012345678901"),
                ("IPFIXSVC__COLLECTOR__MAX_TCP_SESSIONS", "9"),
                ("IPFIXSVC__STORE__TENANT", "0042"),
                ("IPFIXSVC__NODE__ROLES", "collector,jobs"),
                ("IPFIXSVC__CLUSTER__SEEDS", "node-0:4800, node-1:4800"),
            ]),
        )
        .expect("loads");
        assert_eq!(s.cluster.cookie, "000123456789012345678901");
        assert_eq!(s.collector.max_tcp_sessions, 9);
        assert_eq!(s.store.tenant, "0042");
        assert_eq!(s.node.roles, vec![Role::Collector, Role::Jobs]);
        assert_eq!(s.cluster.seeds, vec!["node-0:4800", "node-1:4800"]);

        let s = Settings::load_from(
            None,
            env(&[
                ("IPFIXSVC__CLUSTER__COOKIE", "1e3"),
                ("IPFIXSVC__CLUSTER__SEEDS", ""),
            ]),
        )
        .expect("loads");
        assert_eq!(s.cluster.cookie, "1e3");
        assert!(s.cluster.seeds.is_empty(), "empty is no seeds");

        let e = Settings::load_from(
            None,
            env(&[("IPFIXSVC__COLLECTOR__MAX_TCP_SESSIONS", "many")]),
        )
        .expect_err("not a number");
        assert!(e.to_string().contains("max_tcp_sessions"), "{e}");
    }

    #[test]
    fn a_series_kept_in_redis_needs_redis() {
        let dir = std::env::temp_dir().join(format!("ipfixsvc-series-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let toml = dir.join("c.toml");
        std::fs::write(
            &toml,
            "[[mediator.streams]]\nname = \"live\"\nsink = { kind = \"timeseries\", store = \"redis\" }\n",
        )
        .expect("write");
        let e = Settings::load_from(Some(&toml), env(&[])).expect_err("no redis.url");
        assert!(e.to_string().contains("needs redis.url"), "{e}");
        let s = Settings::load_from(
            Some(&toml),
            env(&[("IPFIXSVC__REDIS__URL", "redis://127.0.0.1:1/")]),
        )
        .expect("with redis.url");
        assert_eq!(s.mediator.streams.len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_cookie_a_file_reads_as_a_number_is_refused() {
        let dir = std::env::temp_dir().join(format!("ipfixsvc-cookie-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let toml = dir.join("c.toml");
        std::fs::write(&toml, "[cluster]\ncookie = 123\n").expect("write");
        let e = Settings::load_from(Some(&toml), env(&[])).expect_err("a number");
        assert!(e.to_string().contains("quote it"), "{e}");
        std::fs::write(&toml, "[cluster]\ncookie = \"000123\"\n").expect("write");
        let s = Settings::load_from(Some(&toml), env(&[])).expect("a string");
        assert_eq!(s.cluster.cookie, "000123");
        let yaml = dir.join("c.yaml");
        std::fs::write(&yaml, "cluster:\n  cookie: 000123\n").expect("write");
        let e = Settings::load_from(Some(&yaml), env(&[])).expect_err("YAML reads a number");
        assert!(e.to_string().contains("quote it"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[cfg(test)]
mod telemetry_tests {
    use super::*;

    #[test]
    fn telemetry_keys_are_checked() {
        let with = |f: fn(&mut TelemetrySettings)| {
            let mut s = Settings::default();
            f(&mut s.telemetry);
            s.validate().map_err(|e| e.to_string())
        };
        assert!(with(|_| {}).is_ok());
        assert!(with(|t| t.otlp_endpoint = "https://otel:4318".into()).is_ok());
        for (bad, key) in [
            (
                with(|t| t.otlp_endpoint = "otel:4318".into()),
                "telemetry.otlp_endpoint",
            ),
            (with(|t| t.sampling_ratio = 1.5), "telemetry.sampling_ratio"),
            (
                with(|t| t.sampling_ratio = -0.1),
                "telemetry.sampling_ratio",
            ),
            (
                with(|t| t.metrics_interval_secs = 0),
                "telemetry.metrics_interval_secs",
            ),
            (with(|t| t.sample_secs = 0), "telemetry.sample_secs"),
            (
                with(|t| t.max_label_values = 0),
                "telemetry.max_label_values",
            ),
        ] {
            assert!(bad.as_ref().is_err_and(|e| e.contains(key)), "{bad:?}");
        }
    }
}
