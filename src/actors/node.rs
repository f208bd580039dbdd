//! NodeSupervisor: the root of one process's tree. Starts a supervisor per configured role and
//! drains them on shutdown. Roles not built yet are reported once at start.
//!
//! Messages: `Drain` (listeners stop, sessions finish what they read; running jobs are
//! cancelled and their records marked), `Restart` (own backoff timer).
//!
//! Supervision: the TemplateCache, the SessionDirectory and the ClusterMember hold no state that
//! cannot be rebuilt (templates are in the store, the directory asks the collector, the cluster
//! member dials again), so when one fails or stops it is started again under the same name with
//! backoff (100 ms doubling to 30 s, back to 100 ms after a minute without a restart); others find
//! them by name. A role supervisor (collector, jobs) that fails or stops takes the node down
//! instead, so that Kubernetes restarts the pod: a node that runs without its role only looks
//! healthy.

use super::collector::{
    COLLECTOR_NAME, CollectorArgs, CollectorMsg, CollectorSupervisor, DrainReport, SessionEnv,
};
use crate::actors::cluster::{CLUSTER_MEMBER, ClusterArgs, ClusterMember};
use crate::actors::cluster_tls::ClusterTls;
use crate::actors::directory::{DIRECTORY_NAME, DirectoryArgs, SessionDirectory};
use crate::actors::jobs::{JOB_SUPERVISOR, JobArgs, JobMsg, JobSupervisor};
use crate::actors::mediator::{
    MEDIATOR_NAME, MediatorArgs, MediatorMsg, MediatorSupervisor, Streams, configured_streams,
};
use crate::actors::telemetry_sampler::{SamplerArgs, TELEMETRY_SAMPLER, TelemetrySampler};
use crate::actors::template_cache::{CacheArgs, CacheHandle, TEMPLATE_CACHE, TemplateCache};
use crate::actors::tenants::{TENANT_DIRECTORY, TenantArgs, TenantDirectory};
use crate::api::auth::AdminToken;
use crate::api::routes::Ctx;
use crate::api::{API_SERVER, ApiArgs, ApiServer};
use crate::config::{Role, Settings};
use crate::store::series::SeriesStore;
use crate::store::streams::StreamStore;
use crate::store::tenants::ExporterTenants;
use crate::store::{JobStore, TemplateStore, TenantStore};
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
    /// Start this restartable child again (its registered name).
    Restart(String),
    /// The restarts of each child so far (for the actor tree).
    Restarts(RpcReplyPort<Vec<RestartInfo>>),
}

/// A restartable child's record.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RestartInfo {
    pub name: String,
    pub restarts: u32,
    pub last_failure: Option<String>,
}

/// Children started again when they end, with what they need to start.
#[derive(Clone)]
enum Restartable {
    Cache(CacheArgs),
    Directory(String),
    Cluster(ClusterArgs),
    Api(ApiArgs),
    Tenants(TenantArgs),
    Sampler(SamplerArgs),
}

impl Restartable {
    fn name(&self) -> &'static str {
        match self {
            Restartable::Cache(_) => TEMPLATE_CACHE,
            Restartable::Directory(_) => DIRECTORY_NAME,
            Restartable::Cluster(_) => CLUSTER_MEMBER,
            Restartable::Api(_) => API_SERVER,
            Restartable::Tenants(_) => TENANT_DIRECTORY,
            Restartable::Sampler(_) => TELEMETRY_SAMPLER,
        }
    }

    async fn spawn(&self, supervisor: ractor::ActorCell) -> Result<(), ActorProcessingErr> {
        let name = Some(self.name().to_string());
        match self {
            Restartable::Cache(a) => {
                Actor::spawn_linked(name, TemplateCache, a.clone(), supervisor).await?;
            }
            Restartable::Directory(node) => {
                let args = DirectoryArgs { node: node.clone() };
                Actor::spawn_linked(name, SessionDirectory, args, supervisor).await?;
            }
            Restartable::Cluster(a) => {
                Actor::spawn_linked(name, ClusterMember, a.clone(), supervisor).await?;
            }
            Restartable::Api(a) => {
                Actor::spawn_linked(name, ApiServer, a.clone(), supervisor).await?;
            }
            Restartable::Tenants(a) => {
                Actor::spawn_linked(name, TenantDirectory, a.clone(), supervisor).await?;
            }
            Restartable::Sampler(a) => {
                Actor::spawn_linked(name, TelemetrySampler, a.clone(), supervisor).await?;
            }
        }
        Ok(())
    }
}

/// Restarts of one child: how many in a row, and when the last was.
#[derive(Default)]
struct Restarts {
    count: u32,
    last: Option<std::time::Instant>,
    /// Since the node started, and why the last one was needed.
    total: u32,
    last_failure: Option<String>,
}

impl Restarts {
    /// The wait before the next restart; a child that ran a minute since its last restart
    /// starts over at 100 ms.
    fn next_delay(&mut self) -> Duration {
        if self
            .last
            .is_some_and(|t| t.elapsed() >= Duration::from_secs(60))
        {
            self.count = 0;
        }
        let delay = Duration::from_millis(100u64 << self.count.min(9)).min(Duration::from_secs(30));
        self.count += 1;
        self.last = Some(std::time::Instant::now());
        delay
    }
}

pub struct NodeArgs {
    pub settings: Settings,
    pub registry: Arc<Registry>,
    pub streams: Streams,
}

pub struct NodeState {
    collector: Option<ActorRef<CollectorMsg>>,
    mediator: Option<ActorRef<MediatorMsg>>,
    jobs: Option<ActorRef<JobMsg>>,
    restartable: Vec<Restartable>,
    restarts: std::collections::HashMap<&'static str, Restarts>,
    draining: bool,
    /// The API's readiness flag: set when the drain starts.
    api_draining: Option<Arc<std::sync::atomic::AtomicBool>>,
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
        let config_version = crate::telemetry::config_version(&args.settings);
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
        let mut restartable = vec![
            Restartable::Cache(cache_args),
            Restartable::Directory(args.settings.node.name.clone()),
        ];
        restartable[0].spawn(myself.get_cell()).await?;
        // Tenants: the API manages them, the collector tags its sessions with them.
        let owners = Arc::new(ExporterTenants::default());
        // Tenants' export streams: the API writes them, every node's mediator runs them.
        let stream_store = Arc::new(if args.settings.redis.url.is_empty() {
            StreamStore::memory()
        } else {
            StreamStore::redis(
                &args.settings.redis.url,
                Duration::from_millis(st.timeout_ms),
            )?
        });
        if roles.contains(&Role::Api) || roles.contains(&Role::Collector) {
            let store = if args.settings.redis.url.is_empty() {
                TenantStore::memory()
            } else {
                TenantStore::redis(
                    &args.settings.redis.url,
                    Duration::from_millis(st.timeout_ms),
                )?
            };
            let tenants = Restartable::Tenants(TenantArgs {
                store: Arc::new(store),
                exporters: owners.clone(),
                marks: Default::default(),
                streams: stream_store.clone(),
            });
            tenants.spawn(myself.get_cell()).await?;
            restartable.push(tenants);
        }
        // The mediator runs where records are decoded: on every collector (and on a node that
        // names the role, for its streams' figures).
        let mut mediator = None;
        if roles.contains(&Role::Collector) || roles.contains(&Role::Mediator) {
            let (m, _) = Actor::spawn_linked(
                Some(MEDIATOR_NAME.into()),
                MediatorSupervisor,
                MediatorArgs {
                    specs: configured_streams(&args.settings),
                    registry: args.registry.clone(),
                    streams: args.streams.clone(),
                    node: args.settings.node.name.clone(),
                    store: stream_store.clone(),
                    storage_dir: PathBuf::from(&args.settings.storage.dir),
                    tenant_network_sinks: args.settings.mediator.tenant_network_sinks,
                    series_store: if args.settings.redis.url.is_empty() {
                        None
                    } else {
                        Some(Arc::new(SeriesStore::redis(
                            &args.settings.redis.url,
                            Duration::from_millis(st.timeout_ms),
                        )?))
                    },
                },
                myself.get_cell(),
            )
            .await?;
            mediator = Some(m);
        }
        let mut collector = None;
        if roles.contains(&Role::Collector) {
            let env = SessionEnv::new(
                args.settings.collector.clone(),
                args.registry.clone(),
                args.streams.clone(),
            )
            .with_cache(cache_handle.clone(), st.tenant.clone())
            .with_owners(owners.clone());
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
                config_version: config_version.clone(),
                max_series_cells: js.max_series_cells,
                stalled_after: crate::actors::jobs::STALLED_AFTER,
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
        restartable[1].spawn(myself.get_cell()).await?;
        let sampler = Restartable::Sampler(SamplerArgs {
            every: Duration::from_secs(args.settings.telemetry.sample_secs),
            config_version: config_version.clone(),
        });
        sampler.spawn(myself.get_cell()).await?;
        restartable.push(sampler);
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
            let member = Restartable::Cluster(cluster_args);
            member.spawn(myself.get_cell()).await?;
            restartable.push(member);
        }
        let mut draining = None;
        if roles.contains(&Role::Api) && !args.settings.api.listen.is_empty() {
            let a = &args.settings.api;

            let admin = AdminToken::load(
                &a.admin_token,
                std::path::Path::new(&args.settings.storage.dir),
            )?;
            let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let ctx = Ctx {
                node: args.settings.node.name.clone(),
                admin,
                timeout: Duration::from_secs(a.request_timeout_secs),
                draining: flag.clone(),
                collector: roles.contains(&Role::Collector),
                cluster: cl.enabled(),
                refused: Default::default(),
                sessions: Default::default(),
                uploading: Default::default(),
                storage: PathBuf::from(&args.settings.storage.dir),
                max_upload: a.max_upload_bytes,
                registry: args.registry.clone(),
                tenant_network_sinks: args.settings.mediator.tenant_network_sinks,
                series_redis: !args.settings.redis.url.is_empty(),
            };
            let api = Restartable::Api(ApiArgs {
                listen: a.listen.clone(),
                ctx,
                grace: Duration::from_secs(args.settings.shutdown.grace_secs) / 5,
                limits: crate::api::server::Limits {
                    max_connections: a.max_connections,
                    header_timeout: Duration::from_secs(a.header_timeout_secs),
                    request_timeout: Duration::from_secs(a.request_timeout_secs),
                },
            });
            api.spawn(myself.get_cell()).await?;
            restartable.push(api);
            draining = Some(flag);
        }
        let later: Vec<_> = roles
            .iter()
            .filter(|r| !matches!(r, Role::Collector | Role::Jobs | Role::Api | Role::Mediator))
            .collect();
        if !later.is_empty() {
            tracing::info!(roles = ?later, "roles not in this build yet: not started");
        }
        tracing::info!(node = %args.settings.node.name, "node started");
        Ok(NodeState {
            collector,
            mediator,
            jobs,
            restartable,
            restarts: Default::default(),
            draining: false,
            api_draining: draining,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<NodeMsg>,
        msg: NodeMsg,
        state: &mut NodeState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            NodeMsg::Drain(within, reply) => {
                let started = std::time::Instant::now();
                state.draining = true;
                if let Some(f) = &state.api_draining {
                    f.store(true, std::sync::atomic::Ordering::Relaxed);
                }
                let mut report = DrainReport::default();
                if let Some(c) = &state.collector {
                    match ractor::call!(c, CollectorMsg::Drain, within) {
                        Ok(r) => report = r,
                        Err(e) => tracing::warn!(error = %e, "collector did not drain"),
                    }
                }
                // After the sessions: the streams take what they handed over, then flush, in
                // what is left of the grace period (`within` is the sessions' 80% of it),
                // less a margin for the jobs and the API.
                if let Some(m) = &state.mediator {
                    let left = (within * 5 / 4)
                        .saturating_sub(started.elapsed())
                        .saturating_sub(within / 8)
                        .max(Duration::from_millis(100));
                    match ractor::call!(m, MediatorMsg::Drain, left) {
                        Ok(failed) => report.streams_unfinished = failed,
                        Err(e) => {
                            report.streams_unfinished =
                                vec![format!("the mediator did not answer: {e}")]
                        }
                    }
                }
                if let Some(j) = &state.jobs {
                    // Bounded: the process must exit within its grace period whatever a job does.
                    let ms = (within.as_millis() as u64 / 4).max(100);
                    let _ = ractor::call_t!(j, JobMsg::Drain, ms);
                }
                // Last: the API answered readiness (draining) until now; requests in flight
                // finish within its own grace.
                if let Some(api) = ractor::registry::where_is(API_SERVER) {
                    let _ = api
                        .stop_and_wait(Some("shutting down".into()), Some(within / 4))
                        .await;
                }
                let _ = reply.send(report);
            }
            NodeMsg::Restarts(reply) => {
                let _ = reply.send(
                    state
                        .restarts
                        .iter()
                        .map(|(name, r)| RestartInfo {
                            name: name.to_string(),
                            restarts: r.total,
                            last_failure: r.last_failure.clone(),
                        })
                        .collect(),
                );
            }
            NodeMsg::Restart(name) => {
                if state.draining {
                    return Ok(());
                }
                let Some(child) = state.restartable.iter().find(|r| r.name() == name).cloned()
                else {
                    return Ok(());
                };
                match child.spawn(myself.get_cell()).await {
                    Ok(()) => tracing::info!(actor = name, "restarted"),
                    Err(e) => {
                        tracing::error!(actor = name, error = %e, "restart failed: will try again");
                        state.schedule_restart(
                            &myself,
                            child.name(),
                            format!("restart failed: {e}"),
                        );
                    }
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<NodeMsg>,
        evt: SupervisionEvent,
        state: &mut NodeState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, why) = match evt {
            SupervisionEvent::ActorFailed(cell, err) => (cell, format!("failed: {err}")),
            SupervisionEvent::ActorTerminated(cell, _, reason) => (
                cell,
                format!(
                    "stopped: {}",
                    reason.unwrap_or_else(|| "no reason given".into())
                ),
            ),
            _ => return Ok(()),
        };
        if state.draining {
            return Ok(());
        }
        let name = cell.get_name().unwrap_or_default();
        if let Some(child) = state.restartable.iter().find(|r| r.name() == name) {
            let child = child.name();
            tracing::error!(actor = child, why, "node actor ended: restarting it");
            state.schedule_restart(&myself, child, why);
        } else {
            tracing::error!(role = name, why, "role supervisor ended: stopping the node");
            myself.stop(Some(format!("role supervisor {name} {why}")));
        }
        Ok(())
    }
}

impl NodeState {
    fn schedule_restart(&mut self, myself: &ActorRef<NodeMsg>, name: &'static str, why: String) {
        let r = self.restarts.entry(name).or_default();
        r.total += 1;
        r.last_failure = Some(why);
        let delay = r.next_delay();
        myself.send_after(delay, move || NodeMsg::Restart(name.to_string()));
    }
}
