//! State behind one interface with two implementations: in memory (the default, single node)
//! and Redis (when `redis.url` is set, shared by every node): templates and job records.

pub mod codec;
pub mod files;
pub mod jobs;
mod redis_conn;
pub mod series;
pub mod streams;
pub mod templates;
pub mod tenants;

pub use jobs::{JobId, JobRecord, JobState, JobStore};
pub use templates::{Invalidation, StoredTemplate, TemplateKey, TemplateStore, Transport};
pub use tenants::{Tenant, TenantStore, TokenRecord};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis did not answer in time or the connection is down: callers carry on with their
    /// local state and try again later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Bytes in the store that this version cannot read (another version wrote them, or they
    /// are damaged). Never a panic.
    #[error("store entry {key} cannot be read: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("store configuration: {0}")]
    Config(String),
}

/// Unix time in milliseconds: when a record or a template last changed.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Unix time in whole seconds.
pub fn unix_secs() -> u64 {
    unix_ms() / 1000
}
