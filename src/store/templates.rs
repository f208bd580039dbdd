//! Templates shared across nodes, so that an exporter that reconnects to another pod is decoded
//! at once instead of after the minutes it takes to re-send its templates.
//!
//! Key: tenant, transport, exporter address, Observation Domain, template id. The exporter's
//! source port is not part of it: a TCP exporter reconnects from a new port (and a restarted UDP
//! exporter may too), and its templates are still its own. The transport is: a UDP source address
//! is forged with one datagram, so what UDP taught must never reach a TCP session (and the two
//! follow different rules anyway: UDP templates live `udp_template_lifetime_secs`, RFC 7011 8.4). Value: the template (bincode 2, with its kind),
//! when it was first seen and which node learned it. Entries expire after a TTL that every
//! (re)definition refreshes.
//!
//! Redis layout: one string per template at `ipfix:tpl:{tenant}:{transport}:{exporter}:{domain}:{id}`,
//! and a set of the template ids of each (tenant, transport, exporter, domain) at
//! `ipfix:tplids:...` so that a withdrawal of all templates does not need a key scan. Every
//! command has a timeout.
//!
//! The memory store keeps at most `max_bytes` of templates (the ones closest to expiry go
//! first) and is swept of expired entries and stale versions on a timer, not only on read.
//!
//! Each key also has a version, `ipfix:tplver:...`: the Unix time in milliseconds of its last
//! definition or withdrawal (a withdrawal leaves it as a tombstone until the TTL). A node that
//! was cut off from Redis writes what it learned meanwhile with `put_if_newer` /
//! `remove_if_newer`, which lose against a later change another node made (a Lua script compares
//! and writes atomically), so a late re-sync never undoes a newer definition.

use super::StoreError;
use super::codec;
use super::redis_conn::RedisConn;
use super::unix_ms;
use crate::wire::{Template, TemplateKind};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The transport a template was learned over (RFC 7011 section 10: the Collecting Process's
/// rules differ, and so does how far a source address can be trusted).
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
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Tcp,
    Udp,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TemplateKey {
    pub tenant: String,
    pub transport: Transport,
    pub exporter: IpAddr,
    /// UDP: the exporter's source port (RFC 7011 section 10.3: a UDP Transport Session is the
    /// exporter's address and port, and its templates are its own; a forger must also guess
    /// the port). TCP: 0, since an exporter reconnects from a new port.
    pub port: u16,
    pub domain: u32,
    pub template_id: u16,
}

impl TemplateKey {
    /// `{prefix}:{tenant}:{transport}:{exporter}:{port}:{domain}`, the scope's part of every
    /// Redis name of this key.
    fn redis_scope(&self, prefix: &str) -> String {
        format!(
            "{prefix}:{}:{}:{}:{}:{}",
            self.tenant,
            self.transport.as_str(),
            self.exporter,
            self.port,
            self.domain
        )
    }

    fn redis_key(&self) -> String {
        format!("{}:{}", self.redis_scope("ipfix:tpl"), self.template_id)
    }

    fn redis_index(&self) -> String {
        self.redis_scope("ipfix:tplids")
    }

    /// The scope (template id 0) named by an index set's name: the inverse of `redis_index`.
    /// The exporter is split off from the right, since an IPv6 address holds colons.
    fn from_redis_index(name: &str) -> Option<TemplateKey> {
        let rest = name.strip_prefix("ipfix:tplids:")?;
        let (tenant, rest) = rest.split_once(':')?;
        let (transport, rest) = rest.split_once(':')?;
        let (rest, domain) = rest.rsplit_once(':')?;
        let (exporter, port) = rest.rsplit_once(':')?;
        Some(TemplateKey {
            tenant: tenant.to_string(),
            transport: match transport {
                "tcp" => Transport::Tcp,
                "udp" => Transport::Udp,
                _ => return None,
            },
            exporter: exporter.parse().ok()?,
            port: port.parse().ok()?,
            domain: domain.parse().ok()?,
            template_id: 0,
        })
    }

    fn redis_version(&self) -> String {
        format!("{}:{}", self.redis_scope("ipfix:tplver"), self.template_id)
    }

    /// Same tenant, transport, exporter and domain (the scope of an All Templates Withdrawal).
    pub fn same_scope(&self, other: &TemplateKey) -> bool {
        self.tenant == other.tenant
            && self.transport == other.transport
            && self.exporter == other.exporter
            && self.port == other.port
            && self.domain == other.domain
    }
}

/// What a stored template costs the memory store or a cache: its fields, the key and the
/// bookkeeping around them.
pub fn stored_cost(t: &Template) -> usize {
    256 + t.fields.len() * std::mem::size_of::<crate::wire::FieldSpec>()
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StoredTemplate {
    pub template: Template,
    /// Unix seconds when a node first learned it.
    pub first_seen: u64,
    pub node: String,
}

impl StoredTemplate {
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// Never panics: bytes from another version or damaged ones are an error value.
    pub fn decode(key: &str, bytes: &[u8]) -> Result<StoredTemplate, StoreError> {
        codec::decode::<_, { 1 << 20 }>(bytes).map_err(|reason| StoreError::Corrupt {
            key: key.to_string(),
            reason,
        })
    }
}

/// Redis pub/sub channel on which nodes announce withdrawn and redefined templates.
pub const INVALIDATION_CHANNEL: &str = "ipfix:tpl:invalidate";

/// "Drop your copy of this template": sent by the node that saw it withdrawn or redefined.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Invalidation {
    pub node: String,
    pub tenant: String,
    pub transport: Transport,
    pub exporter: IpAddr,
    pub port: u16,
    pub domain: u32,
    pub template_id: u16,
}

impl Invalidation {
    /// `node`'s news that `key` was withdrawn or redefined.
    pub fn of(node: &str, key: &TemplateKey) -> Invalidation {
        Invalidation {
            node: node.to_string(),
            tenant: key.tenant.clone(),
            transport: key.transport,
            exporter: key.exporter,
            port: key.port,
            domain: key.domain,
            template_id: key.template_id,
        }
    }

    pub fn key(&self) -> TemplateKey {
        TemplateKey {
            tenant: self.tenant.clone(),
            transport: self.transport,
            exporter: self.exporter,
            port: self.port,
            domain: self.domain,
            template_id: self.template_id,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        bincode::serde::encode_to_vec(self, bincode::config::standard()).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Option<Invalidation> {
        let config = bincode::config::standard().with_limit::<{ 64 * 1024 }>();
        bincode::serde::decode_from_slice(bytes, config)
            .ok()
            .map(|(v, _)| v)
    }
}

/// The template store: in memory or in Redis.
pub enum TemplateStore {
    Memory(MemoryTemplates),
    Redis(RedisTemplates),
}

impl TemplateStore {
    pub fn memory(ttl: Duration) -> TemplateStore {
        TemplateStore::Memory(MemoryTemplates {
            ttl,
            udp_ttl: ttl,
            max_bytes: DEFAULT_MEMORY_BYTES,
            map: Mutex::new(MemoryMap::default()),
            versions: Mutex::new(HashMap::new()),
        })
    }

    /// Templates learned over UDP expire after `lifetime` (RFC 7011 section 8.4's template
    /// lifetime) when that is shorter than the store's TTL.
    pub fn with_udp_lifetime(mut self, lifetime: Duration) -> TemplateStore {
        match &mut self {
            TemplateStore::Memory(m) => m.udp_ttl = lifetime.min(m.ttl),
            TemplateStore::Redis(r) => r.udp_ttl = lifetime.min(r.ttl),
        }
        self
    }

    /// The memory store keeps at most `max_bytes` of templates (no-op for Redis, whose memory
    /// is Redis's to bound).
    pub fn with_max_bytes(mut self, max_bytes: usize) -> TemplateStore {
        if let TemplateStore::Memory(m) = &mut self {
            m.max_bytes = max_bytes;
        }
        self
    }

    /// Forgets expired templates and versions older than the TTL (memory; Redis expires its
    /// own keys). Called on a timer.
    pub fn sweep(&self) {
        if let TemplateStore::Memory(m) = self {
            m.sweep(Instant::now(), unix_ms());
        }
    }

    /// Bytes the memory store holds (0 for Redis).
    pub fn held_bytes(&self) -> usize {
        match self {
            TemplateStore::Memory(m) => m.lock().bytes,
            TemplateStore::Redis(_) => 0,
        }
    }

    /// Connects lazily: a node starts while Redis is down and the store reconnects with backoff.
    pub fn redis(url: &str, ttl: Duration, timeout: Duration) -> Result<TemplateStore, StoreError> {
        Ok(TemplateStore::Redis(RedisTemplates {
            conn: RedisConn::new(url, timeout)?,
            ttl,
            udp_ttl: ttl,
            put_if_newer: redis::Script::new(PUT_IF_NEWER),
            remove_if_newer: redis::Script::new(REMOVE_IF_NEWER),
        }))
    }

    /// The Redis client, for a pub/sub subscription; `None` in memory.
    pub fn redis_client(&self) -> Option<&redis::Client> {
        match self {
            TemplateStore::Memory(_) => None,
            TemplateStore::Redis(r) => Some(r.conn.client()),
        }
    }

    /// Tells the other nodes to drop their copy (no-op in memory: there are no other nodes).
    pub async fn publish(&self, inv: &Invalidation) -> Result<(), StoreError> {
        match self {
            TemplateStore::Memory(_) => Ok(()),
            TemplateStore::Redis(r) => {
                let mut cmd = redis::cmd("PUBLISH");
                cmd.arg(INVALIDATION_CHANNEL).arg(inv.encode());
                r.query::<i64>("publish invalidation", &cmd)
                    .await
                    .map(|_| ())
            }
        }
    }

    /// Which store instance answers: Redis's `run_id`, new at each start of the server (and
    /// on a failover to a replica); `None` in memory. A new instance may have lost what was
    /// written to the one before (no persistence, or writes the replica had not received).
    pub async fn instance(&self) -> Result<Option<String>, StoreError> {
        match self {
            TemplateStore::Memory(_) => Ok(None),
            TemplateStore::Redis(r) => {
                let mut cmd = redis::cmd("INFO");
                cmd.arg("server");
                let info: String = r.query("info server", &cmd).await?;
                Ok(info
                    .lines()
                    .find_map(|l| l.strip_prefix("run_id:"))
                    .map(|id| id.trim().to_string()))
            }
        }
    }

    /// Answers when the store is reachable.
    pub async fn ping(&self) -> Result<(), StoreError> {
        match self {
            TemplateStore::Memory(_) => Ok(()),
            TemplateStore::Redis(r) => r
                .query::<String>("ping", &redis::cmd("PING"))
                .await
                .map(|_| ()),
        }
    }

    /// Stores (or refreshes) a template and its TTL: a change made now.
    pub async fn put(&self, key: &TemplateKey, value: &StoredTemplate) -> Result<(), StoreError> {
        self.put_if_newer(key, value, unix_ms()).await.map(|_| ())
    }

    /// Stores a template defined at `changed_ms` (Unix ms) unless the key has changed since
    /// (another node's later definition or withdrawal). Whether it was written.
    pub async fn put_if_newer(
        &self,
        key: &TemplateKey,
        value: &StoredTemplate,
        changed_ms: u64,
    ) -> Result<bool, StoreError> {
        match self {
            TemplateStore::Memory(m) => {
                if !m.newer(key, changed_ms) {
                    return Ok(false);
                }
                m.insert(key, value);
                Ok(true)
            }
            TemplateStore::Redis(r) => r.put_if_newer(key, value, changed_ms).await,
        }
    }

    /// Many `put_if_newer` in one round trip (a Redis pipeline of the same script; each write is
    /// still atomic on its own), and a `PUBLISH` of an invalidation for each written one that is
    /// marked as changed. Whether each was written, in order.
    pub async fn put_many_if_newer(
        &self,
        writes: &[(TemplateKey, StoredTemplate, u64, bool)],
        node: &str,
    ) -> Result<Vec<bool>, StoreError> {
        match self {
            TemplateStore::Memory(m) => Ok(writes
                .iter()
                .map(|(k, v, at, _)| {
                    let newer = m.newer(k, *at);
                    if newer {
                        m.insert(k, v);
                    }
                    newer
                })
                .collect()),
            TemplateStore::Redis(r) => r.put_many_if_newer(writes, node).await,
        }
    }

    /// Withdraws a template withdrawn at `changed_ms` unless the key has changed since.
    pub async fn remove_if_newer(
        &self,
        key: &TemplateKey,
        changed_ms: u64,
    ) -> Result<bool, StoreError> {
        match self {
            TemplateStore::Memory(m) => {
                if !m.newer(key, changed_ms) {
                    return Ok(false);
                }
                m.lock().remove(key);
                Ok(true)
            }
            TemplateStore::Redis(r) => r.remove_if_newer(key, changed_ms).await,
        }
    }

    pub async fn get(&self, key: &TemplateKey) -> Result<Option<StoredTemplate>, StoreError> {
        match self {
            TemplateStore::Memory(m) => {
                let mut map = m.lock();
                match map.entries.get(key) {
                    Some((_, expiry)) if *expiry <= Instant::now() => {
                        map.remove(key);
                        Ok(None)
                    }
                    Some((v, _)) => Ok(Some(v.clone())),
                    None => Ok(None),
                }
            }
            TemplateStore::Redis(r) => r.get(key).await,
        }
    }

    /// Template Withdrawal of one template.
    pub async fn remove(&self, key: &TemplateKey) -> Result<(), StoreError> {
        self.remove_if_newer(key, unix_ms()).await.map(|_| ())
    }

    /// All Templates Withdrawal (of one kind) for an exporter's Observation Domain.
    pub async fn remove_all(
        &self,
        scope: &TemplateKey,
        kind: TemplateKind,
    ) -> Result<usize, StoreError> {
        let keys: Vec<TemplateKey> = self
            .list(scope)
            .await?
            .into_iter()
            .filter(|(_, v)| v.template.kind == kind)
            .map(|(k, _)| k)
            .collect();
        for k in &keys {
            self.remove(k).await?;
        }
        Ok(keys.len())
    }

    /// The templates of one exporter's Observation Domain over one transport: the scope of
    /// `scope` (its template id is not used).
    pub async fn list(
        &self,
        scope: &TemplateKey,
    ) -> Result<Vec<(TemplateKey, StoredTemplate)>, StoreError> {
        match self {
            TemplateStore::Memory(m) => {
                let now = Instant::now();
                let map = m.lock();
                let mut v: Vec<_> = map
                    .entries
                    .iter()
                    .filter(|(k, (_, expiry))| k.same_scope(scope) && *expiry > now)
                    .map(|(k, (t, _))| (k.clone(), t.clone()))
                    .collect();
                v.sort_by_key(|(k, _)| k.template_id);
                Ok(v)
            }
            TemplateStore::Redis(r) => r.list(scope).await,
        }
    }

    /// A tenant's templates, of every exporter, transport and Observation Domain, sorted by
    /// scope and id; at most `max` of them, and whether there were more.
    pub async fn tenant(
        &self,
        tenant: &str,
        max: usize,
    ) -> Result<(Vec<(TemplateKey, StoredTemplate)>, bool), StoreError> {
        let mut all = match self {
            TemplateStore::Memory(m) => {
                let now = Instant::now();
                let map = m.lock();
                map.entries
                    .iter()
                    .filter(|(k, (_, expiry))| k.tenant == tenant && *expiry > now)
                    .take(max + 1)
                    .map(|(k, (t, _))| (k.clone(), t.clone()))
                    .collect::<Vec<_>>()
            }
            TemplateStore::Redis(r) => r.tenant(tenant, max + 1).await?,
        };
        all.sort_by(|a, b| a.0.cmp(&b.0));
        let more = all.len() > max;
        all.truncate(max);
        Ok((all, more))
    }
}

/// Versions (last-change times) the memory store keeps at most.
const MAX_VERSIONS: usize = 200_000;

/// Templates the memory store keeps unless told otherwise.
pub const DEFAULT_MEMORY_BYTES: usize = 256 << 20;

#[derive(Default)]
pub struct MemoryMap {
    entries: HashMap<TemplateKey, (StoredTemplate, Instant)>,
    /// What `entries` cost, by `stored_cost`.
    bytes: usize,
}

impl MemoryMap {
    fn remove(&mut self, key: &TemplateKey) -> Option<StoredTemplate> {
        let (v, _) = self.entries.remove(key)?;
        self.bytes = self.bytes.saturating_sub(stored_cost(&v.template));
        Some(v)
    }
}

pub struct MemoryTemplates {
    ttl: Duration,
    udp_ttl: Duration,
    max_bytes: usize,
    map: Mutex<MemoryMap>,
    /// Unix milliseconds of each key's last change (as Redis's version keys).
    versions: Mutex<HashMap<TemplateKey, u64>>,
}

impl MemoryTemplates {
    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryMap> {
        // A panic while holding this lock cannot leave the map half-changed (single calls).
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn ttl_of(&self, key: &TemplateKey) -> Duration {
        match key.transport {
            Transport::Tcp => self.ttl,
            Transport::Udp => self.udp_ttl,
        }
    }

    /// Stores `value`, making room within `max_bytes` by dropping the templates closest to
    /// expiry (a bounded cache of what exporters send again anyway).
    fn insert(&self, key: &TemplateKey, value: &StoredTemplate) {
        let cost = stored_cost(&value.template);
        let expiry = Instant::now() + self.ttl_of(key);
        let mut map = self.lock();
        map.remove(key);
        if map.bytes + cost > self.max_bytes {
            let mut by_expiry: Vec<(Instant, TemplateKey)> = map
                .entries
                .iter()
                .map(|(k, (_, e))| (*e, k.clone()))
                .collect();
            by_expiry.sort();
            // A tenth at a time, so a full store does not sort on every insert.
            let target = (self.max_bytes - self.max_bytes / 10).saturating_sub(cost);
            for (_, k) in by_expiry {
                if map.bytes <= target {
                    break;
                }
                map.remove(&k);
            }
        }
        if cost <= self.max_bytes {
            map.bytes += cost;
            map.entries.insert(key.clone(), (value.clone(), expiry));
        }
    }

    fn sweep(&self, now: Instant, now_ms: u64) {
        {
            let mut map = self.lock();
            let expired: Vec<TemplateKey> = map
                .entries
                .iter()
                .filter(|(_, (_, e))| *e <= now)
                .map(|(k, _)| k.clone())
                .collect();
            for k in expired {
                map.remove(&k);
            }
        }
        // A version only has to outlive the longest a late re-sync can be compared with it.
        let (tcp_ms, udp_ms) = (self.ttl.as_millis() as u64, self.udp_ttl.as_millis() as u64);
        let mut v = self.versions.lock().unwrap_or_else(|e| e.into_inner());
        v.retain(|k, at| {
            let keep = match k.transport {
                Transport::Tcp => tcp_ms,
                Transport::Udp => udp_ms,
            };
            now_ms.saturating_sub(*at) < keep
        });
    }

    pub fn versions_held(&self) -> usize {
        self.versions.lock().map_or(0, |v| v.len())
    }

    /// Records a change at `at` unless a later one is recorded: whether it may be applied.
    fn newer(&self, key: &TemplateKey, at: u64) -> bool {
        let mut v = self.versions.lock().unwrap_or_else(|e| e.into_inner());
        if v.len() >= MAX_VERSIONS && !v.contains_key(key) {
            // Versions only guard a re-sync after an outage, which a memory store (one node's,
            // never away) does not have: when too many pile up (withdrawals of made-up ids),
            // the oldest half goes.
            let mut ats: Vec<u64> = v.values().copied().collect();
            ats.sort_unstable();
            let cut = ats[ats.len() / 2];
            v.retain(|_, a| *a > cut);
        }
        match v.get(key) {
            Some(&stored) if stored > at => false,
            _ => {
                v.insert(key.clone(), at);
                true
            }
        }
    }
}

/// Both scripts take KEYS: value, version, index; ARGV: ttl (s), version (ms), template id, and
/// for a write the value. Each writes unless the stored version is later.
const PUT_IF_NEWER: &str = r"
local v = tonumber(redis.call('GET', KEYS[2]))
if v and v > tonumber(ARGV[2]) then return 0 end
redis.call('SET', KEYS[1], ARGV[4], 'EX', ARGV[1])
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[1])
redis.call('SADD', KEYS[3], ARGV[3])
redis.call('EXPIRE', KEYS[3], ARGV[1])
return 1
";

const REMOVE_IF_NEWER: &str = r"
local v = tonumber(redis.call('GET', KEYS[2]))
if v and v > tonumber(ARGV[2]) then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[1])
redis.call('SREM', KEYS[3], ARGV[3])
return 1
";

pub struct RedisTemplates {
    /// Also gives the client for pub/sub subscriptions (a connection of their own).
    conn: RedisConn,
    ttl: Duration,
    udp_ttl: Duration,
    /// Made once: a script is known to Redis by its SHA-1, computed when it is made.
    put_if_newer: redis::Script,
    remove_if_newer: redis::Script,
}

impl RedisTemplates {
    async fn query<T: redis::FromRedisValue>(
        &self,
        what: &str,
        cmd: &redis::Cmd,
    ) -> Result<T, StoreError> {
        self.conn.query(what, cmd).await
    }

    async fn put_if_newer(
        &self,
        key: &TemplateKey,
        value: &StoredTemplate,
        changed_ms: u64,
    ) -> Result<bool, StoreError> {
        let script = &self.put_if_newer;
        self.if_newer(
            "store template",
            script,
            key,
            changed_ms,
            Some(value.encode()),
        )
        .await
    }

    async fn put_many_if_newer(
        &self,
        writes: &[(TemplateKey, StoredTemplate, u64, bool)],
        node: &str,
    ) -> Result<Vec<bool>, StoreError> {
        let mut pipe = redis::pipe();
        for (key, value, at, _) in writes {
            let (keys, args) = self.script_call(key, *at, Some(value.encode()));
            let cmd = pipe.cmd("EVAL").arg(PUT_IF_NEWER).arg(keys.len());
            for k in &keys {
                cmd.arg(k);
            }
            for a in &args {
                cmd.arg(a.as_slice());
            }
        }
        let wrote: Vec<i64> = self.conn.query_pipe_as("store templates", &pipe).await?;
        let wrote: Vec<bool> = wrote.into_iter().map(|w| w == 1).collect();
        // Redefinitions that were written: other nodes drop their copies, in one more trip.
        let mut publish = redis::pipe();
        let mut any = false;
        for ((key, _, _, changed), w) in writes.iter().zip(&wrote) {
            if *changed && *w {
                let inv = Invalidation::of(node, key);
                publish
                    .cmd("PUBLISH")
                    .arg(INVALIDATION_CHANNEL)
                    .arg(inv.encode())
                    .ignore();
                any = true;
            }
        }
        if any {
            self.conn
                .query_pipe("publish invalidations", &publish)
                .await?;
        }
        Ok(wrote)
    }

    async fn get(&self, key: &TemplateKey) -> Result<Option<StoredTemplate>, StoreError> {
        let k = key.redis_key();
        let mut cmd = redis::cmd("GET");
        cmd.arg(&k);
        let bytes: Option<Vec<u8>> = self.query("read template", &cmd).await?;
        bytes.map(|b| StoredTemplate::decode(&k, &b)).transpose()
    }

    async fn remove_if_newer(
        &self,
        key: &TemplateKey,
        changed_ms: u64,
    ) -> Result<bool, StoreError> {
        let script = &self.remove_if_newer;
        self.if_newer("withdraw template", script, key, changed_ms, None)
            .await
    }

    /// Runs one of the compare-and-write scripts; whether it wrote.
    async fn if_newer(
        &self,
        what: &str,
        script: &redis::Script,
        key: &TemplateKey,
        changed_ms: u64,
        value: Option<Vec<u8>>,
    ) -> Result<bool, StoreError> {
        let (keys, args) = self.script_call(key, changed_ms, value);
        let wrote: i64 = self.conn.eval(what, script, &keys, &args).await?;
        Ok(wrote == 1)
    }

    /// The KEYS and ARGV of the compare-and-write scripts (see `PUT_IF_NEWER`).
    fn script_call(
        &self,
        key: &TemplateKey,
        changed_ms: u64,
        value: Option<Vec<u8>>,
    ) -> ([String; 3], Vec<Vec<u8>>) {
        let keys = [key.redis_key(), key.redis_version(), key.redis_index()];
        let ttl = match key.transport {
            Transport::Tcp => self.ttl,
            Transport::Udp => self.udp_ttl,
        };
        let mut args = vec![
            ttl.as_secs().max(1).to_string().into_bytes(),
            changed_ms.to_string().into_bytes(),
            key.template_id.to_string().into_bytes(),
        ];
        args.extend(value);
        (keys, args)
    }

    async fn list(
        &self,
        scope: &TemplateKey,
    ) -> Result<Vec<(TemplateKey, StoredTemplate)>, StoreError> {
        let mut cmd = redis::cmd("SMEMBERS");
        cmd.arg(scope.redis_index());
        let ids: Vec<u16> = self.query("list templates", &cmd).await?;
        let mut out = Vec::with_capacity(ids.len());
        for template_id in ids {
            let key = TemplateKey {
                template_id,
                ..scope.clone()
            };
            // An id whose template expired stays in the set until its own TTL: skip it.
            if let Some(v) = self.get(&key).await? {
                out.push((key, v));
            }
        }
        out.sort_by_key(|(k, _)| k.template_id);
        Ok(out)
    }

    /// Finds the tenant's scopes by their index sets (SCAN, so Redis is never blocked by one
    /// long KEYS), then lists each, stopping at `max` templates.
    async fn tenant(
        &self,
        tenant: &str,
        max: usize,
    ) -> Result<Vec<(TemplateKey, StoredTemplate)>, StoreError> {
        let pattern = format!("ipfix:tplids:{}:*", glob_escape(tenant));
        let mut cursor: u64 = 0;
        let mut out = Vec::new();
        // SCAN may return a name twice.
        let mut seen = std::collections::HashSet::new();
        loop {
            let mut cmd = redis::cmd("SCAN");
            cmd.arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000);
            let (next, names): (u64, Vec<String>) = self.query("find templates", &cmd).await?;
            for name in names {
                // A name this version did not write is skipped, not an error.
                let Some(scope) = TemplateKey::from_redis_index(&name) else {
                    continue;
                };
                if scope.tenant != tenant || !seen.insert(scope.clone()) {
                    continue;
                }
                out.extend(self.list(&scope).await?);
                if out.len() >= max {
                    out.truncate(max);
                    return Ok(out);
                }
            }
            if next == 0 {
                return Ok(out);
            }
            cursor = next;
        }
    }
}

/// `s` matched literally by a Redis glob pattern.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::FieldSpec;
    use proptest::prelude::*;

    #[test]
    fn the_memory_store_is_swept_of_expired_templates_and_old_versions() {
        let store = TemplateStore::memory(Duration::from_millis(50))
            .with_udp_lifetime(Duration::from_millis(20));
        let TemplateStore::Memory(m) = &store else {
            unreachable!()
        };
        let key = |transport, id| TemplateKey {
            tenant: "t".into(),
            transport,
            exporter: "192.0.2.1".parse().expect("ip"),
            port: 0,
            domain: 1,
            template_id: id,
        };
        let v = StoredTemplate {
            template: Template::data(256, vec![FieldSpec::new(8, 0, 4)]),
            first_seen: 0,
            node: String::new(),
        };
        let now = unix_ms();
        assert!(m.newer(&key(Transport::Tcp, 256), now));
        m.insert(&key(Transport::Tcp, 256), &v);
        m.insert(&key(Transport::Udp, 256), &v);
        let t0 = Instant::now();
        // UDP keys live the template lifetime, TCP ones the TTL; nobody reads them meanwhile.
        m.sweep(t0 + Duration::from_millis(30), now + 30);
        assert_eq!(m.lock().entries.len(), 1);
        assert_eq!(m.versions_held(), 1);
        m.sweep(t0 + Duration::from_millis(60), now + 60);
        assert_eq!(m.lock().entries.len(), 0);
        assert_eq!(m.lock().bytes, 0);
        assert_eq!(
            m.versions_held(),
            0,
            "versions older than the TTL are pruned"
        );
    }

    proptest! {
        #[test]
        fn stored_templates_round_trip(id in 256u16.., fields in proptest::collection::vec((0u16..0x7fff, any::<u32>(), any::<u16>()), 1..40), node in "[a-z0-9-]{0,20}") {
            let v = StoredTemplate {
                template: Template::data(id, fields.into_iter().map(|(i, p, l)| FieldSpec::new(i, p, l)).collect()),
                first_seen: 1,
                node,
            };
            prop_assert_eq!(StoredTemplate::decode("k", &v.encode()).ok(), Some(v));
        }

        #[test]
        fn the_memory_store_stays_within_its_bytes(ids in proptest::collection::vec(256u16..2000, 1..300), fields in 1usize..60) {
            let store = TemplateStore::memory(Duration::from_secs(60)).with_max_bytes(20_000);
            let TemplateStore::Memory(m) = &store else { unreachable!() };
            for id in ids {
                let k = TemplateKey {
                    tenant: "t".into(),
                    transport: Transport::Tcp,
                    exporter: "192.0.2.1".parse().expect("ip"),
                    port: 0,
                    domain: 1,
                    template_id: id,
                };
                let t = Template::data(id, (0..fields).map(|f| FieldSpec::new(f as u16 + 1, 0, 4)).collect());
                m.insert(&k, &StoredTemplate { template: t, first_seen: 0, node: String::new() });
                let map = m.lock();
                let counted: usize = map.entries.values().map(|(v, _)| stored_cost(&v.template)).sum();
                prop_assert_eq!(map.bytes, counted);
                prop_assert!(map.bytes <= 20_000);
            }
        }

        #[test]
        fn index_names_give_back_their_scope(tenant in "[a-z0-9-]{1,63}", udp in any::<bool>(), v6 in any::<bool>(), a in any::<u128>(), port in any::<u16>(), domain in any::<u32>()) {
            let exporter: IpAddr = if v6 { std::net::Ipv6Addr::from(a).into() } else { std::net::Ipv4Addr::from(a as u32).into() };
            let scope = TemplateKey {
                tenant,
                transport: if udp { Transport::Udp } else { Transport::Tcp },
                exporter,
                port,
                domain,
                template_id: 0,
            };
            let with_id = TemplateKey { template_id: 300, ..scope.clone() };
            prop_assert_eq!(TemplateKey::from_redis_index(&with_id.redis_index()), Some(scope));
        }

        #[test]
        fn any_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = StoredTemplate::decode("k", &bytes);
        }
    }
}
