//! The supervision tree (see ARCHITECTURE.md): every long-lived unit of work is a named ractor
//! actor. Actors own I/O and state; decoding logic stays in `wire`.

pub mod cluster;
pub mod cluster_tls;
pub mod collector;
pub mod directory;
pub mod jobs;
pub mod node;
pub mod output;
pub mod template_cache;
