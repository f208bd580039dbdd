//! NodeSupervisor: the root of one process's tree. Starts a supervisor per configured role and
//! drains them on shutdown. Roles not built yet are reported once at start.
//!
//! Messages: `Drain` (listeners stop, sessions finish their message; running jobs are
//! cancelled and their records marked). A failing role
//! supervisor is logged and the node stops, so that Kubernetes restarts the pod.

use super::collector::{
    COLLECTOR_NAME, CollectorArgs, CollectorMsg, CollectorSupervisor, DrainReport, SessionEnv,
};
use crate::actors::cluster::{CLUSTER_MEMBER, ClusterArgs, ClusterMember};
use crate::actors::cluster_tls::ClusterTls;
use crate::actors::directory::{DIRECTORY_NAME, DirectoryArgs, SessionDirectory};
use crate::actors::jobs::{JOB_SUPERVISOR, JobArgs, JobMsg, JobSupervisor};
use crate::actors::output::RecordSink;
use crate::actors::template_cache::{CacheArgs, CacheHandle, TEMPLATE_CACHE, TemplateCache};
use crate::config::{Role, Settings};
use crate::store::{JobStore, TemplateStore};
use crate::wire::Registry;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use ractor_cluster::RactorMessage;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(RactorMessage)]
pub enum NodeMsg {
    /// Drain every role within the time given; the collector's report comes back.
    Drain(Duration, RpcReplyPort<DrainReport>),
}

pub struct NodeArgs {
    pub settings: Settings,
    pub registry: Arc<Registry>,
    pub sink: RecordSink,
}

pub struct NodeState {
    collector: Option<ActorRef<CollectorMsg>>,
    jobs: Option<ActorRef<JobMsg>>,
}

pub struct NodeSupervisor;

impl Actor for NodeSupervisor {
    type Msg = NodeMsg;
    type State = NodeState;
    type Arguments = NodeArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<NodeMsg>,
        args: NodeArgs,
    ) -> Result<NodeState, ActorProcessingErr> {
        let roles = &args.settings.node.roles;
        let st = &args.settings.store;
        let ttl = Duration::from_secs(st.template_ttl_secs);
        let store = if args.settings.redis.url.is_empty() {
            tracing::info!("templates kept in memory (single node): set redis.url to share them");
            TemplateStore::memory(ttl).with_max_bytes(st.memory_bytes)
        } else {
            tracing::info!(url = %args.settings.redis.url, "templates shared through Redis");
            TemplateStore::redis(
                &args.settings.redis.url,
                ttl,
                Duration::from_millis(st.timeout_ms),
            )?
        };
        let udp_lifetime = Duration::from_secs(args.settings.collector.udp_template_lifetime_secs);
        let store = store.with_udp_lifetime(udp_lifetime);
        let cache_handle = CacheHandle::default();
        let cache_args = CacheArgs {
            store: Arc::new(store),
            node: args.settings.node.name.clone(),
            refresh_every: ttl / 4,
            udp_lifetime,
            max_bytes: st.cache_bytes,
            handle: cache_handle.clone(),
        };
        Actor::spawn_linked(
            Some(TEMPLATE_CACHE.into()),
            TemplateCache,
            cache_args,
            myself.get_cell(),
        )
        .await?;
        let mut collector = None;
        if roles.contains(&Role::Collector) {
            let env = SessionEnv::new(
                args.settings.collector.clone(),
                args.registry.clone(),
                args.sink.clone(),
            )
            .with_cache(cache_handle.clone(), st.tenant.clone());
            let (c, _) = Actor::spawn_linked(
                Some(COLLECTOR_NAME.into()),
                CollectorSupervisor,
                CollectorArgs { env },
                myself.get_cell(),
            )
            .await?;
            collector = Some(c);
        }
        let mut jobs = None;
        if roles.contains(&Role::Jobs) {
            let js = &args.settings.jobs;
            let retention = Duration::from_secs(js.retention_secs);
            let store = if args.settings.redis.url.is_empty() {
                JobStore::memory(retention)
            } else {
                JobStore::redis(
                    &args.settings.redis.url,
                    retention,
                    Duration::from_millis(st.timeout_ms),
                )?
            };
            let job_args = JobArgs {
                store: Arc::new(store),
                storage_dir: PathBuf::from(&args.settings.storage.dir),
                workers: js.workers,
                queue: js.queue,
                retention,
                node: args.settings.node.name.clone(),
            };
            let (j, _) = Actor::spawn_linked(
                Some(JOB_SUPERVISOR.into()),
                JobSupervisor,
                job_args,
                myself.get_cell(),
            )
            .await?;
            jobs = Some(j);
        }
        let dir_args = DirectoryArgs {
            node: args.settings.node.name.clone(),
        };
        Actor::spawn_linked(
            Some(DIRECTORY_NAME.into()),
            SessionDirectory,
            dir_args,
            myself.get_cell(),
        )
        .await?;
        let cl = &args.settings.cluster;
        if cl.enabled() {
            let tls = if cl.tls_cert.is_empty() {
                None
            } else {
                Some(ClusterTls::from_pem_files(
                    &cl.tls_cert,
                    &cl.tls_key,
                    &cl.tls_ca,
                )?)
            };
            let cluster_args = ClusterArgs {
                node: args.settings.node.name.clone(),
                listen: cl.listen.clone(),
                seeds: cl.seeds.clone(),
                cookie: cl.cookie.clone(),
                tls,
                advertise: cl.advertise.clone(),
            };
            Actor::spawn_linked(
                Some(CLUSTER_MEMBER.into()),
                ClusterMember,
                cluster_args,
                myself.get_cell(),
            )
            .await?;
        }
        let later: Vec<_> = roles
            .iter()
            .filter(|r| !matches!(r, Role::Collector | Role::Jobs))
            .collect();
        if !later.is_empty() {
            tracing::info!(roles = ?later, "roles not in this build yet: not started");
        }
        tracing::info!(node = %args.settings.node.name, "node started");
        Ok(NodeState { collector, jobs })
    }

    async fn handle(
        &self,
        _myself: ActorRef<NodeMsg>,
        msg: NodeMsg,
        state: &mut NodeState,
    ) -> Result<(), ActorProcessingErr> {
        let NodeMsg::Drain(within, reply) = msg;
        let mut report = DrainReport::default();
        if let Some(c) = &state.collector {
            match ractor::call!(c, CollectorMsg::Drain, within) {
                Ok(r) => report = r,
                Err(e) => tracing::warn!(error = %e, "collector did not drain"),
            }
        }
        if let Some(j) = &state.jobs {
            let _ = ractor::call!(j, JobMsg::Drain);
        }
        let _ = reply.send(report);
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<NodeMsg>,
        evt: SupervisionEvent,
        _state: &mut NodeState,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(cell, err) = evt {
            tracing::error!(role = cell.get_name().unwrap_or_default(), error = %err, "role supervisor failed: stopping the node");
            myself.stop(Some(format!("role supervisor failed: {err}")));
        }
        Ok(())
    }
}
