//! The supervision tree (see ARCHITECTURE.md): every long-lived unit of work is a named ractor
//! actor. Actors own I/O and state; decoding logic stays in `wire`.

pub mod actor_tree;
pub mod cluster;
pub mod cluster_tls;
pub mod collector;
pub mod directory;
pub mod jobs;
pub mod mediator;
pub mod node;
pub mod telemetry_sampler;
pub mod template_cache;
pub mod tenants;

/// Why an actor did not start, said once. Each supervisor that starts a child wraps the child's
/// failure in its own `SpawnErr::StartupFailed` ("Actor panicked during startup '...'"), so a
/// listener's bind error reaches the top quoted once per level: the reason is the first error
/// in the chain that is not one of ractor's wrappers.
pub fn startup_failure(e: &ractor::SpawnErr) -> String {
    use ractor::{ActorErr, SpawnErr};
    let mut cur: &(dyn std::error::Error + 'static) = e;
    loop {
        let wrapper = matches!(
            cur.downcast_ref::<SpawnErr>(),
            Some(SpawnErr::StartupFailed(_))
        ) || matches!(cur.downcast_ref::<ActorErr>(), Some(ActorErr::Failed(_)));
        match cur.source() {
            Some(inner) if wrapper => cur = inner,
            _ => return cur.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nested_startup_failure_is_said_once() {
        use ractor::SpawnErr;
        let inner: ractor::ActorProcessingErr =
            "cannot listen for IPFIX over TCP on 127.0.0.1:1: Address already in use".into();
        let nested = SpawnErr::StartupFailed(Box::new(SpawnErr::StartupFailed(Box::new(
            SpawnErr::StartupFailed(inner),
        ))));
        assert_eq!(
            startup_failure(&nested),
            "cannot listen for IPFIX over TCP on 127.0.0.1:1: Address already in use"
        );
        let named = SpawnErr::ActorAlreadyRegistered("node".into());
        assert_eq!(startup_failure(&named), named.to_string());
    }
}
