//! Templates shared across nodes, so that an exporter that reconnects to another pod is decoded
//! at once instead of after the minutes it takes to re-send its templates.
//!
//! Key: tenant, exporter address, Observation Domain, template id. The exporter's source port is
//! not part of it: a TCP exporter reconnects from a new port (and a restarted UDP exporter may
//! too), and its templates are still its own. Value: the template (bincode 2, with its kind),
//! when it was first seen and which node learned it. Entries expire after a TTL that every
//! (re)definition refreshes.
//!
//! Redis layout: one string per template at `ipfix:tpl:{tenant}:{exporter}:{domain}:{id}`, and a
//! set of the template ids of each (tenant, exporter, domain) at `ipfix:tplids:...` so that a
//! withdrawal of all templates does not need a key scan. Every command has a timeout.
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

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TemplateKey {
    pub tenant: String,
    pub exporter: IpAddr,
    pub domain: u32,
    pub template_id: u16,
}

impl TemplateKey {
    fn redis_key(&self) -> String {
        format!(
            "ipfix:tpl:{}:{}:{}:{}",
            self.tenant, self.exporter, self.domain, self.template_id
        )
    }

    fn redis_index(&self) -> String {
        index_key(&self.tenant, self.exporter, self.domain)
    }

    fn redis_version(&self) -> String {
        format!(
            "ipfix:tplver:{}:{}:{}:{}",
            self.tenant, self.exporter, self.domain, self.template_id
        )
    }
}

fn index_key(tenant: &str, exporter: IpAddr, domain: u32) -> String {
    format!("ipfix:tplids:{tenant}:{exporter}:{domain}")
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
    pub exporter: IpAddr,
    pub domain: u32,
    pub template_id: u16,
}

impl Invalidation {
    pub fn key(&self) -> TemplateKey {
        TemplateKey {
            tenant: self.tenant.clone(),
            exporter: self.exporter,
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
            map: Mutex::new(HashMap::new()),
            versions: Mutex::new(HashMap::new()),
        })
    }

    /// Connects lazily: a node starts while Redis is down and the store reconnects with backoff.
    pub fn redis(url: &str, ttl: Duration, timeout: Duration) -> Result<TemplateStore, StoreError> {
        let client = redis::Client::open(url)
            .map_err(|e| StoreError::Config(format!("redis.url {url}: {e}")))?;
        Ok(TemplateStore::Redis(RedisTemplates {
            client,
            conn: RedisConn::new(url, timeout)?,
            ttl,
            put_if_newer: redis::Script::new(PUT_IF_NEWER),
            remove_if_newer: redis::Script::new(REMOVE_IF_NEWER),
        }))
    }

    /// The Redis client, for a pub/sub subscription; `None` in memory.
    pub fn redis_client(&self) -> Option<&redis::Client> {
        match self {
            TemplateStore::Memory(_) => None,
            TemplateStore::Redis(r) => Some(&r.client),
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
                m.lock()
                    .insert(key.clone(), (value.clone(), Instant::now() + m.ttl));
                Ok(true)
            }
            TemplateStore::Redis(r) => r.put_if_newer(key, value, changed_ms).await,
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
                match map.get(key) {
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
        tenant: &str,
        exporter: IpAddr,
        domain: u32,
        kind: TemplateKind,
    ) -> Result<usize, StoreError> {
        let keys: Vec<TemplateKey> = self
            .list(tenant, exporter, domain)
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

    /// The templates of one exporter's Observation Domain.
    pub async fn list(
        &self,
        tenant: &str,
        exporter: IpAddr,
        domain: u32,
    ) -> Result<Vec<(TemplateKey, StoredTemplate)>, StoreError> {
        match self {
            TemplateStore::Memory(m) => {
                let now = Instant::now();
                let mut map = m.lock();
                map.retain(|_, (_, expiry)| *expiry > now);
                let mut v: Vec<_> = map
                    .iter()
                    .filter(|(k, _)| {
                        k.tenant == tenant && k.exporter == exporter && k.domain == domain
                    })
                    .map(|(k, (t, _))| (k.clone(), t.clone()))
                    .collect();
                v.sort_by_key(|(k, _)| k.template_id);
                Ok(v)
            }
            TemplateStore::Redis(r) => r.list(tenant, exporter, domain).await,
        }
    }
}

pub struct MemoryTemplates {
    ttl: Duration,
    map: Mutex<HashMap<TemplateKey, (StoredTemplate, Instant)>>,
    /// Unix milliseconds of each key's last change (as Redis's version keys).
    versions: Mutex<HashMap<TemplateKey, u64>>,
}

impl MemoryTemplates {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TemplateKey, (StoredTemplate, Instant)>> {
        // A panic while holding this lock cannot leave the map half-changed (single calls).
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a change at `at` unless a later one is recorded: whether it may be applied.
    fn newer(&self, key: &TemplateKey, at: u64) -> bool {
        let mut v = self.versions.lock().unwrap_or_else(|e| e.into_inner());
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
    /// For pub/sub subscriptions (a connection of their own).
    client: redis::Client,
    conn: RedisConn,
    ttl: Duration,
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
        let keys = [key.redis_key(), key.redis_version(), key.redis_index()];
        let mut args = vec![
            self.ttl.as_secs().max(1).to_string().into_bytes(),
            changed_ms.to_string().into_bytes(),
            key.template_id.to_string().into_bytes(),
        ];
        args.extend(value);
        let wrote: i64 = self.conn.eval(what, script, &keys, &args).await?;
        Ok(wrote == 1)
    }

    async fn list(
        &self,
        tenant: &str,
        exporter: IpAddr,
        domain: u32,
    ) -> Result<Vec<(TemplateKey, StoredTemplate)>, StoreError> {
        let mut cmd = redis::cmd("SMEMBERS");
        cmd.arg(index_key(tenant, exporter, domain));
        let ids: Vec<u16> = self.query("list templates", &cmd).await?;
        let mut out = Vec::with_capacity(ids.len());
        for template_id in ids {
            let key = TemplateKey {
                tenant: tenant.to_string(),
                exporter,
                domain,
                template_id,
            };
            // An id whose template expired stays in the set until its own TTL: skip it.
            if let Some(v) = self.get(&key).await? {
                out.push((key, v));
            }
        }
        out.sort_by_key(|(k, _)| k.template_id);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::FieldSpec;
    use proptest::prelude::*;

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
        fn any_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = StoredTemplate::decode("k", &bytes);
        }
    }
}
