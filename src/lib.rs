//! IPFIXServices: a Kubernetes-native, highly available IPFIX service.
//! See `ARCHITECTURE.md` (in the team's shared docs) for the layout; each folder is one idea.

pub mod actors;
pub mod analysis;
pub mod api;
pub mod cli;
pub mod config;
pub mod mediation;
pub mod meter;
pub mod store;
pub mod telemetry;
pub mod wire;
