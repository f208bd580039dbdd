//! Tenants and their API tokens, in memory or in Redis, so every node knows every tenant and a
//! revoked token fails on every node at once (nodes read the store on each check; nothing is
//! cached that a revocation would have to reach).
//!
//! Only a token's SHA-256 is stored: the token itself is answered once, when it is made.
//!
//! Redis layout: `ipfix:tenant:{id}` (the tenant, bincode behind a format byte), the set
//! `ipfix:tenants` of ids, the hash `ipfix:tenant-tokens:{id}` (token id -> record), and the hash
//! `ipfix:token-hashes` (SHA-256 hex -> `{tenant}/{token id}`) by which a request is
//! authenticated in one round trip.

use super::StoreError;
use super::codec;
use super::redis_conn::RedisConn;
use super::unix_ms;
use sha2::Digest;
use std::collections::HashMap;
use std::sync::Mutex;

/// A tenant's limits; a request may give some and leave the others at their defaults.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Quotas {
    /// Jobs of the tenant queued or running at once.
    pub max_jobs: u32,
    /// Bytes of uploads the tenant may keep stored.
    pub upload_bytes: u64,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            max_jobs: 8,
            upload_bytes: 16 << 30,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Tenant {
    pub id: String,
    pub name: String,
    /// Source prefixes of the exporters it owns (`10.1.0.0/16`, `2001:db8::/32`), normalised.
    pub exporters: Vec<String>,
    pub quotas: Quotas,
    pub created_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub tenant: String,
    /// Never shown (see `public`): the SHA-256 of the token, hex.
    pub hash: String,
    pub created_ms: u64,
}

/// The SHA-256 of a token, hex: what the store keeps and looks up.
pub fn token_hash(token: &str) -> String {
    let d = sha2::Sha256::digest(token.as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// A tenant id is a slug, `[a-z0-9-]{1,63}`: it names folders and store keys.
pub fn valid_tenant_id(t: &str) -> bool {
    (1..=63).contains(&t.len())
        && t.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Checks and normalises exporter prefixes (`10.1.2.3/16` becomes `10.1.0.0/16`; a bare address
/// is a host prefix).
pub fn normalise_prefixes(prefixes: &[String]) -> Result<Vec<String>, String> {
    prefixes
        .iter()
        .map(|p| {
            let net: ipnet::IpNet = match p.parse() {
                Ok(n) => n,
                Err(_) => p
                    .parse::<std::net::IpAddr>()
                    .map(ipnet::IpNet::from)
                    .map_err(|_| format!("{p:?} is not an address prefix like 10.1.0.0/16"))?,
            };
            Ok(net.trunc().to_string())
        })
        .collect()
}

/// Which tenant owns an exporter address: the longest prefix of any tenant that contains it.
#[derive(Debug, Default)]
pub struct PrefixTable {
    /// Longest first, so the first match is the longest.
    prefixes: Vec<(ipnet::IpNet, String)>,
    /// Every tenant, also those without exporter prefixes (a TLS exporter's certificate may
    /// name one).
    ids: std::collections::HashSet<String>,
}

impl PrefixTable {
    pub fn new(tenants: &[Tenant]) -> PrefixTable {
        let mut prefixes: Vec<(ipnet::IpNet, String)> = tenants
            .iter()
            .flat_map(|t| {
                t.exporters
                    .iter()
                    .filter_map(|p| p.parse().ok())
                    .map(|n| (n, t.id.clone()))
            })
            .collect();
        prefixes.sort_by(|a, b| b.0.prefix_len().cmp(&a.0.prefix_len()).then(a.1.cmp(&b.1)));
        let ids = tenants.iter().map(|t| t.id.clone()).collect();
        PrefixTable { prefixes, ids }
    }

    pub fn owner(&self, ip: std::net::IpAddr) -> Option<&str> {
        // An IPv4 exporter reaching a dual-stack socket arrives as ::ffff:a.b.c.d.
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
            v4 => v4,
        };
        self.prefixes
            .iter()
            .find(|(n, _)| n.contains(&ip))
            .map(|(_, t)| t.as_str())
    }
}

/// The node's current prefix table, shared by the TenantDirectory (which replaces it when
/// tenants change) and the collector (which reads it when a session starts).
#[derive(Debug, Default)]
pub struct ExporterTenants(std::sync::RwLock<std::sync::Arc<PrefixTable>>);

impl ExporterTenants {
    pub fn replace(&self, table: PrefixTable) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = std::sync::Arc::new(table);
    }

    pub fn owner(&self, ip: std::net::IpAddr) -> Option<String> {
        let t = self.0.read().unwrap_or_else(|p| p.into_inner()).clone();
        t.owner(ip).map(str::to_string)
    }

    /// Whether a tenant with this id exists.
    pub fn exists(&self, id: &str) -> bool {
        self.0
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .ids
            .contains(id)
    }
}

pub enum TenantStore {
    Memory(Mutex<MemoryTenants>),
    Redis(RedisConn),
}

/// Redis pub/sub channel on which a node says that a tenant changed (created, updated,
/// deleted), so every node reloads its exporter prefix table at once.
pub const CHANGED_CHANNEL: &str = "ipfix:tenants:changed";

#[derive(Default)]
pub struct MemoryTenants {
    tenants: HashMap<String, Tenant>,
    tokens: HashMap<String, TokenRecord>,
    /// (tenant, token id) -> when it was last used, unix ms.
    used: HashMap<(String, String), u64>,
}

/// When a tenant's tokens were last used: `ipfix:token-used:{tenant}`, field token id.
fn used_key(tenant: &str) -> String {
    format!("ipfix:token-used:{tenant}")
}

fn tenant_key(id: &str) -> String {
    format!("ipfix:tenant:{id}")
}

fn tokens_key(id: &str) -> String {
    format!("ipfix:tenant-tokens:{id}")
}

const TENANTS: &str = "ipfix:tenants";
const HASHES: &str = "ipfix:token-hashes";

fn decode<T: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    codec::decode::<_, { 1 << 20 }>(bytes).map_err(|reason| StoreError::Corrupt {
        key: key.to_string(),
        reason,
    })
}

impl TenantStore {
    pub fn memory() -> TenantStore {
        TenantStore::Memory(Mutex::new(MemoryTenants::default()))
    }

    pub fn redis(url: &str, timeout: std::time::Duration) -> Result<TenantStore, StoreError> {
        Ok(TenantStore::Redis(RedisConn::new(url, timeout)?))
    }

    fn mem(m: &Mutex<MemoryTenants>) -> std::sync::MutexGuard<'_, MemoryTenants> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tells the other nodes that tenant `id` changed (Redis only; a lost message is made up
    /// for by their periodic reload).
    pub async fn announce_change(&self, id: &str) -> Result<(), StoreError> {
        if let TenantStore::Redis(r) = self {
            let mut cmd = redis::cmd("PUBLISH");
            cmd.arg(CHANGED_CHANNEL).arg(id);
            r.query::<i64>("announce tenant change", &cmd).await?;
        }
        Ok(())
    }

    /// Where to subscribe to `CHANGED_CHANNEL`; none for the memory store.
    pub fn subscription_client(&self) -> Option<redis::Client> {
        match self {
            TenantStore::Redis(r) => Some(r.client().clone()),
            TenantStore::Memory(_) => None,
        }
    }

    /// Creates `t`; false when the id is taken.
    pub async fn create(&self, t: &Tenant) -> Result<bool, StoreError> {
        match self {
            TenantStore::Memory(m) => {
                let mut m = Self::mem(m);
                if m.tenants.contains_key(&t.id) {
                    return Ok(false);
                }
                m.tenants.insert(t.id.clone(), t.clone());
                Ok(true)
            }
            TenantStore::Redis(r) => {
                let mut cmd = redis::cmd("SET");
                cmd.arg(tenant_key(&t.id)).arg(codec::encode(t)).arg("NX");
                let set: Option<String> = r.query("create tenant", &cmd).await?;
                if set.is_none() {
                    return Ok(false);
                }
                let mut add = redis::cmd("SADD");
                add.arg(TENANTS).arg(&t.id);
                r.query::<i64>("index tenant", &add).await?;
                Ok(true)
            }
        }
    }

    /// Replaces an existing tenant; false when there is none.
    pub async fn update(&self, t: &Tenant) -> Result<bool, StoreError> {
        match self {
            TenantStore::Memory(m) => {
                let mut m = Self::mem(m);
                match m.tenants.get_mut(&t.id) {
                    Some(old) => {
                        *old = t.clone();
                        Ok(true)
                    }
                    None => Ok(false),
                }
            }
            TenantStore::Redis(r) => {
                let mut cmd = redis::cmd("SET");
                cmd.arg(tenant_key(&t.id)).arg(codec::encode(t)).arg("XX");
                let set: Option<String> = r.query("update tenant", &cmd).await?;
                Ok(set.is_some())
            }
        }
    }

    pub async fn get(&self, id: &str) -> Result<Option<Tenant>, StoreError> {
        match self {
            TenantStore::Memory(m) => Ok(Self::mem(m).tenants.get(id).cloned()),
            TenantStore::Redis(r) => {
                let key = tenant_key(id);
                let mut cmd = redis::cmd("GET");
                cmd.arg(&key);
                let bytes: Option<Vec<u8>> = r.query("read tenant", &cmd).await?;
                bytes.map(|b| decode(&key, &b)).transpose()
            }
        }
    }

    /// Every tenant, by id.
    pub async fn list(&self) -> Result<Vec<Tenant>, StoreError> {
        let mut out = match self {
            TenantStore::Memory(m) => Self::mem(m).tenants.values().cloned().collect(),
            TenantStore::Redis(r) => {
                let mut cmd = redis::cmd("SMEMBERS");
                cmd.arg(TENANTS);
                let ids: Vec<String> = r.query("list tenants", &cmd).await?;
                let mut out = Vec::with_capacity(ids.len());
                for id in ids {
                    if let Some(t) = self.get(&id).await? {
                        out.push(t);
                    }
                }
                out
            }
        };
        out.sort_by(|a: &Tenant, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Deletes a tenant and every token of it; false when there was none.
    pub async fn delete(&self, id: &str) -> Result<bool, StoreError> {
        for t in self.tokens(id).await? {
            self.revoke(id, &t.id).await?;
        }
        match self {
            TenantStore::Memory(m) => Ok(Self::mem(m).tenants.remove(id).is_some()),
            TenantStore::Redis(r) => {
                let mut pipe = redis::pipe();
                pipe.atomic()
                    .cmd("DEL")
                    .arg(tenant_key(id))
                    .cmd("SREM")
                    .arg(TENANTS)
                    .arg(id)
                    .cmd("DEL")
                    .arg(tokens_key(id))
                    .cmd("DEL")
                    .arg(used_key(id));
                let (deleted, _, _, _): (i64, i64, i64, i64) =
                    r.query_pipe_as("delete tenant", &pipe).await?;
                Ok(deleted == 1)
            }
        }
    }

    /// Makes a token for `tenant`: the token (shown once) and its record.
    pub async fn add_token(&self, tenant: &str) -> Result<(String, TokenRecord), StoreError> {
        let token = format!("ipfx_{}", crate::api::auth::new_secret());
        let rec = TokenRecord {
            id: uuid::Uuid::new_v4().simple().to_string()[..12].to_string(),
            tenant: tenant.to_string(),
            hash: token_hash(&token),
            created_ms: unix_ms(),
        };
        match self {
            TenantStore::Memory(m) => {
                Self::mem(m).tokens.insert(rec.hash.clone(), rec.clone());
            }
            TenantStore::Redis(r) => {
                let mut pipe = redis::pipe();
                pipe.atomic()
                    .cmd("HSET")
                    .arg(tokens_key(tenant))
                    .arg(&rec.id)
                    .arg(codec::encode(&rec))
                    .ignore()
                    .cmd("HSET")
                    .arg(HASHES)
                    .arg(&rec.hash)
                    .arg(format!("{tenant}/{}", rec.id))
                    .ignore();
                r.query_pipe("store token", &pipe).await?;
            }
        }
        Ok((token, rec))
    }

    /// A tenant's tokens (without their secrets), oldest first.
    pub async fn tokens(&self, tenant: &str) -> Result<Vec<TokenRecord>, StoreError> {
        let mut out: Vec<TokenRecord> = match self {
            TenantStore::Memory(m) => Self::mem(m)
                .tokens
                .values()
                .filter(|t| t.tenant == tenant)
                .cloned()
                .collect(),
            TenantStore::Redis(r) => {
                let key = tokens_key(tenant);
                let mut cmd = redis::cmd("HVALS");
                cmd.arg(&key);
                let all: Vec<Vec<u8>> = r.query("list tokens", &cmd).await?;
                all.iter()
                    .map(|b| decode(&key, b))
                    .collect::<Result<_, _>>()?
            }
        };
        out.sort_by(|a, b| a.created_ms.cmp(&b.created_ms).then(a.id.cmp(&b.id)));
        Ok(out)
    }

    /// Revokes a token; false when the tenant has no such token.
    pub async fn revoke(&self, tenant: &str, id: &str) -> Result<bool, StoreError> {
        let Some(rec) = self.tokens(tenant).await?.into_iter().find(|t| t.id == id) else {
            return Ok(false);
        };
        match self {
            TenantStore::Memory(m) => {
                let mut m = Self::mem(m);
                m.tokens.remove(&rec.hash);
                m.used.remove(&(tenant.to_string(), id.to_string()));
            }
            TenantStore::Redis(r) => {
                let mut pipe = redis::pipe();
                pipe.atomic()
                    .cmd("HDEL")
                    .arg(HASHES)
                    .arg(&rec.hash)
                    .ignore()
                    .cmd("HDEL")
                    .arg(tokens_key(tenant))
                    .arg(id)
                    .ignore()
                    .cmd("HDEL")
                    .arg(used_key(tenant))
                    .arg(id)
                    .ignore();
                r.query_pipe("revoke token", &pipe).await?;
            }
        }
        Ok(true)
    }

    /// The tenant and id of a live token.
    pub async fn authenticate(&self, token: &str) -> Result<Option<(String, String)>, StoreError> {
        let hash = token_hash(token);
        match self {
            TenantStore::Memory(m) => Ok(Self::mem(m)
                .tokens
                .get(&hash)
                .map(|t| (t.tenant.clone(), t.id.clone()))),
            TenantStore::Redis(r) => {
                let mut cmd = redis::cmd("HGET");
                cmd.arg(HASHES).arg(&hash);
                let owner: Option<String> = r.query("check token", &cmd).await?;
                Ok(owner.and_then(|o| {
                    o.split_once('/')
                        .map(|(t, id)| (t.to_string(), id.to_string()))
                }))
            }
        }
    }

    /// Notes that a token was used at `ms`.
    pub async fn mark_used(&self, tenant: &str, id: &str, ms: u64) -> Result<(), StoreError> {
        match self {
            TenantStore::Memory(m) => {
                Self::mem(m)
                    .used
                    .insert((tenant.to_string(), id.to_string()), ms);
            }
            TenantStore::Redis(r) => {
                let mut cmd = redis::cmd("HSET");
                cmd.arg(used_key(tenant)).arg(id).arg(ms);
                r.query::<i64>("note token use", &cmd).await?;
            }
        }
        Ok(())
    }

    /// When each of a tenant's tokens was last used (unix ms), by token id.
    pub async fn last_used(&self, tenant: &str) -> Result<HashMap<String, u64>, StoreError> {
        match self {
            TenantStore::Memory(m) => Ok(Self::mem(m)
                .used
                .iter()
                .filter(|((t, _), _)| t == tenant)
                .map(|((_, id), ms)| (id.clone(), *ms))
                .collect()),
            TenantStore::Redis(r) => {
                let mut cmd = redis::cmd("HGETALL");
                cmd.arg(used_key(tenant));
                r.query("read token use", &cmd).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_owned_prefix_wins() {
        let t = |id: &str, p: &[&str]| Tenant {
            id: id.into(),
            name: id.into(),
            exporters: p.iter().map(|s| s.to_string()).collect(),
            quotas: Quotas::default(),
            created_ms: 0,
        };
        let table = PrefixTable::new(&[
            t("wide", &["10.0.0.0/8"]),
            t("narrow", &["10.1.0.0/16", "2001:db8::/32"]),
        ]);
        let ip = |s: &str| s.parse::<std::net::IpAddr>().expect("ip");
        assert_eq!(table.owner(ip("10.1.2.3")), Some("narrow"));
        assert_eq!(table.owner(ip("10.2.2.3")), Some("wide"));
        assert_eq!(
            table.owner(ip("::ffff:10.1.0.9")),
            Some("narrow"),
            "v4-mapped"
        );
        assert_eq!(table.owner(ip("2001:db8::7")), Some("narrow"));
        assert_eq!(table.owner(ip("192.0.2.1")), None);
    }

    #[test]
    fn prefixes_are_checked_and_normalised() {
        assert_eq!(
            normalise_prefixes(&[
                "10.1.2.3/16".into(),
                "2001:db8::1/32".into(),
                "192.0.2.9".into()
            ]),
            Ok(vec![
                "10.1.0.0/16".to_string(),
                "2001:db8::/32".to_string(),
                "192.0.2.9/32".to_string()
            ])
        );
        assert!(normalise_prefixes(&["10.1.0.0/33".into()]).is_err());
        assert!(normalise_prefixes(&["acme".into()]).is_err());
        assert!(valid_tenant_id("acme-2"));
        assert!(!valid_tenant_id("ACME"));
        assert_eq!(token_hash("x").len(), 64);
    }
}
