//! TelemetrySampler: every `telemetry.sample_secs` (and when `/metrics` asks) it reads the
//! process (sysinfo: memory, open files; `/proc/self`: CPU by mode and by thread), asks the
//! actors that hold figures in their state (collector, template cache, mediator, job
//! supervisor) and publishes the lot as the sampled instruments' snapshot. It also attributes
//! the process's CPU to tenants: each interval's CPU goes to the tenants in proportion to the
//! busy time their sessions, streams and jobs had in it, never more than that busy time; the
//! rest is the node's own (runtime, API, cluster, telemetry).
//!
//! An actor that does not answer within a second leaves its families out of that sample; the
//! sampler never waits longer, so a stuck collector cannot stop the process figures.

use super::collector::{COLLECTOR_NAME, CollectorCounters, CollectorMsg};
use super::directory::DIRECTORY_GROUP;
use super::jobs::{JOB_SUPERVISOR, JobMsg, JobSupervisorStatus};
use super::mediator::{MEDIATOR_NAME, MediatorMsg, StreamState};
use super::template_cache::{CacheMsg, CacheStatus, TEMPLATE_CACHE};
use crate::telemetry::metrics::{self, ActorKind, Point, Sample, Work};
use crate::telemetry::process::{self, ThreadTotals};
use opentelemetry::KeyValue;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorMessage;
use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

pub const TELEMETRY_SAMPLER: &str = "telemetry-sampler";

/// How long the sampler waits for an actor's figures.
const ASK_WITHIN_MS: u64 = 1000;

#[derive(RactorMessage)]
pub enum SamplerMsg {
    /// Own timer.
    Tick,
    /// Sample now, and answer when the snapshot is published (`/metrics`).
    Sample(RpcReplyPort<()>),
}

#[derive(Clone)]
pub struct SamplerArgs {
    pub every: Duration,
    /// A hash of the node's effective configuration (`config_version`).
    pub config_version: String,
}

pub struct SamplerState {
    args: SamplerArgs,
    system: Option<sysinfo::System>,
    pid: Option<sysinfo::Pid>,
    last_sample: Option<Instant>,
}

/// The sampler's running totals. They are the process's, not the actor's: a sampler restarted
/// after a panic goes on from them, so its counters never go back.
#[derive(Default)]
struct Accounts {
    threads: ThreadTotals,
    /// Process CPU seconds and tenants' busy seconds at the last sample (`None`: no baseline
    /// yet).
    last_cpu: Option<f64>,
    last_busy: HashMap<(String, Work), f64>,
    /// CPU seconds attributed so far, per tenant and work, and not attributed.
    attributed: HashMap<(String, Work), f64>,
    unattributed: f64,
}

static ACCOUNTS: std::sync::Mutex<Option<Accounts>> = std::sync::Mutex::new(None);

/// When the first sampler of the process started: the clock series are marked with.
static STARTED: LazyLock<Instant> = LazyLock::new(Instant::now);

/// A series of an exporter gone this long is removed (its label value freed).
const EXPORTER_IDLE: Duration = Duration::from_secs(3600);

fn accounts() -> std::sync::MutexGuard<'static, Option<Accounts>> {
    ACCOUNTS.lock().unwrap_or_else(|p| p.into_inner())
}

pub struct TelemetrySampler;

impl Actor for TelemetrySampler {
    type Msg = SamplerMsg;
    type State = SamplerState;
    type Arguments = SamplerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SamplerMsg>,
        args: SamplerArgs,
    ) -> Result<SamplerState, ActorProcessingErr> {
        metrics::register();
        myself.send_interval(args.every, || SamplerMsg::Tick);
        let system = sysinfo::System::new()
            .inspect_err(|e| tracing::warn!(error = %e, "sysinfo unavailable: no memory or open-file figures"))
            .ok();
        // The baseline: CPU and busy time before it are not shared out (a first sample taken
        // later would give a tenant all its busy time so far, unchecked against CPU).
        {
            let mut a = accounts();
            let a = a.get_or_insert_with(Accounts::default);
            if a.last_cpu.is_none() {
                a.last_cpu = process::process_times().map(|(u, s)| u + s);
                a.last_busy = metrics::busy_totals().into_iter().collect();
            }
        }
        LazyLock::force(&STARTED);
        Ok(SamplerState {
            args,
            system,
            pid: sysinfo::get_current_pid().ok(),
            last_sample: None,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<SamplerMsg>,
        msg: SamplerMsg,
        state: &mut SamplerState,
    ) -> Result<(), ActorProcessingErr> {
        // Busy time as every actor's: its polls, not its waits for the actors it asks.
        ActorKind::TelemetrySampler
            .timed(async move {
                match msg {
                    SamplerMsg::Tick => state.sample().await,
                    SamplerMsg::Sample(reply) => {
                        // Scrapes in a burst share one sample.
                        if state
                            .last_sample
                            .is_none_or(|t| t.elapsed() >= Duration::from_millis(200))
                        {
                            state.sample().await;
                        }
                        let _ = reply.send(());
                    }
                }
            })
            .await;
        Ok(())
    }
}

fn point(value: f64, attrs: &[(&'static str, String)]) -> Point {
    Point {
        attrs: attrs
            .iter()
            .map(|(k, v)| KeyValue::new(*k, v.clone()))
            .collect(),
        value,
    }
}

async fn ask<T: Send + 'static, M: ractor::Message>(
    name: &str,
    msg: impl FnOnce(RpcReplyPort<T>) -> M,
) -> Option<T> {
    let actor: ActorRef<M> = ractor::registry::where_is(name)?.into();
    ractor::call_t!(actor, msg, ASK_WITHIN_MS).ok()
}

impl SamplerState {
    async fn sample(&mut self) {
        self.last_sample = Some(Instant::now());
        metrics::sweep(STARTED.elapsed().as_secs(), EXPORTER_IDLE);
        let mut s = Sample::new();
        self.process(&mut s);
        if let Some(c) = ask(COLLECTOR_NAME, CollectorMsg::Counters).await {
            collector(&mut s, &c);
        }
        if let Some(c) = ask(TEMPLATE_CACHE, CacheMsg::Status).await {
            cache(&mut s, &c);
        }
        let streams: Vec<StreamState> = ask(MEDIATOR_NAME, MediatorMsg::States)
            .await
            .unwrap_or_default();
        self.streams(&mut s, &streams);
        if let Some(j) = ask(JOB_SUPERVISOR, JobMsg::Status).await {
            jobs(&mut s, &j, &self.args.config_version);
        }
        let members = ractor::pg::get_members(&DIRECTORY_GROUP.to_string()).len();
        s.insert("ipfixsvc.cluster.members", vec![point(members as f64, &[])]);
        s.insert(
            "ipfixsvc.node.info",
            vec![point(
                1.0,
                &[
                    ("config.version", self.args.config_version.clone()),
                    ("service.version", env!("CARGO_PKG_VERSION").to_string()),
                ],
            )],
        );
        debug_assert!(s.keys().all(|k| metrics::is_sampled(k)));
        metrics::publish(s);
    }

    fn process(&mut self, s: &mut Sample) {
        if let (Some(sys), Some(pid)) = (&mut self.system, self.pid) {
            sys.refresh_processes_specifics(
                sysinfo::ProcessesToUpdate::Some(&[pid]),
                false,
                sysinfo::ProcessRefreshKind::nothing().with_memory(),
            );
            if let Some(p) = sys.process(pid) {
                s.insert("process.memory.usage", vec![point(p.memory() as f64, &[])]);
                s.insert(
                    "process.memory.virtual",
                    vec![point(p.virtual_memory() as f64, &[])],
                );
                if let Some(n) = p.open_files() {
                    s.insert(
                        "process.unix.file_descriptor.count",
                        vec![point(n as f64, &[])],
                    );
                }
            }
        }
        let threads = process::threads();
        s.insert(
            "process.thread.count",
            vec![point(threads.len() as f64, &[])],
        );
        let mut guard = accounts();
        let a = guard.get_or_insert_with(Accounts::default);
        a.threads.update(&threads, metrics::thread_label);
        s.insert(
            "ipfixsvc.thread.cpu.time",
            a.threads
                .by_name()
                .map(|(name, cpu)| point(cpu.as_secs_f64(), &[("thread.name", name.clone())]))
                .collect(),
        );
        let Some((user, system)) = process::process_times() else {
            return;
        };
        s.insert(
            "process.cpu.time",
            vec![
                point(user, &[("cpu.mode", "user".into())]),
                point(system, &[("cpu.mode", "system".into())]),
            ],
        );
        a.attribute(user + system);
        s.insert(
            "ipfixsvc.tenant.cpu.time",
            a.attributed
                .iter()
                .map(|((tenant, work), secs)| {
                    point(
                        *secs,
                        &[("tenant", tenant.clone()), ("work", work.name().into())],
                    )
                })
                .collect(),
        );
        s.insert(
            "ipfixsvc.cpu.unattributed.time",
            vec![point(a.unattributed, &[])],
        );
    }

    fn streams(&self, s: &mut Sample, streams: &[StreamState]) {
        let mut usage = Vec::new();
        let mut limit = Vec::new();
        let mut records = Vec::new();
        let mut errors = Vec::new();
        let mut restarts = Vec::new();
        let mut breaker = Vec::new();
        let mut memory: HashMap<String, f64> = HashMap::new();
        for st in streams {
            let tenant = st.tenant.as_deref().map(metrics::tenant_label);
            let a = vec![
                ("stream", st.name.clone()),
                ("tenant", tenant.clone().unwrap_or_default()),
            ];
            usage.push(point(st.queue_bytes as f64, &a));
            limit.push(point(st.queue_capacity as f64, &a));
            for (dir, n) in [
                ("in", st.records_in),
                ("out", st.records_out),
                ("filtered", st.filtered),
                ("dropped", st.dropped),
            ] {
                let mut a = a.clone();
                a.push(("direction", dir.into()));
                records.push(point(n as f64, &a));
            }
            errors.push(point(st.sink_errors as f64, &a));
            restarts.push(point(st.restarts as f64, &a));
            for state in ["closed", "open", "half-open"] {
                let mut a = a.clone();
                a.push(("state", state.into()));
                breaker.push(point(f64::from(u8::from(st.breaker == state)), &a));
            }
            if let Some(t) = tenant {
                *memory.entry(t).or_default() += st.queue_bytes as f64;
            }
        }
        for (tenant, held) in metrics::held_by_tenant() {
            *memory.entry(tenant).or_default() += held as f64;
        }
        s.insert("ipfixsvc.stream.queue.usage", usage);
        s.insert("ipfixsvc.stream.queue.limit", limit);
        s.insert("ipfixsvc.stream.records", records);
        s.insert("ipfixsvc.stream.sink.errors", errors);
        s.insert("ipfixsvc.stream.restarts", restarts);
        s.insert("ipfixsvc.stream.breaker.state", breaker);
        s.insert(
            "ipfixsvc.tenant.memory.usage",
            memory
                .into_iter()
                .map(|(t, b)| point(b, &[("tenant", t)]))
                .collect(),
        );
    }
}

impl Accounts {
    /// Shares the CPU time since the last sample among the tenants by their busy time in it.
    fn attribute(&mut self, cpu: f64) {
        let busy = metrics::busy_totals();
        let Some(last_cpu) = self.last_cpu.replace(cpu) else {
            self.last_busy = busy.into_iter().collect();
            return;
        };
        let spent = (cpu - last_cpu).max(0.0);
        let grew: Vec<((String, Work), f64)> = busy
            .into_iter()
            .map(|(k, secs)| {
                let before = self.last_busy.insert(k.clone(), secs).unwrap_or_default();
                (k, (secs - before).max(0.0))
            })
            .collect();
        let total: f64 = grew.iter().map(|g| g.1).sum();
        attribute_share(
            spent,
            total,
            grew,
            &mut self.attributed,
            &mut self.unattributed,
        );
    }
}

/// Adds `spent` CPU seconds to the tenants in proportion to how much each was busy (`grew`,
/// `total` their sum), never more than a tenant's busy time; the rest is unattributed.
fn attribute_share(
    spent: f64,
    total: f64,
    grew: Vec<((String, Work), f64)>,
    attributed: &mut HashMap<(String, Work), f64>,
    unattributed: &mut f64,
) {
    // Busy time is wall time of work that computes: on a loaded machine it exceeds the CPU
    // the process got (threads wait for a core), and then everything is scaled down.
    let scale = if total > spent && total > 0.0 {
        spent / total
    } else {
        1.0
    };
    let mut given = 0.0;
    for (k, d) in grew {
        let share = d * scale;
        given += share;
        *attributed.entry(k).or_default() += share;
    }
    *unattributed += (spent - given).max(0.0);
}

fn collector(s: &mut Sample, c: &CollectorCounters) {
    s.insert(
        "ipfixsvc.collector.sessions.refused",
        vec![
            point(
                c.refused_tcp_sessions as f64,
                &[("reason", "limit_tcp".into())],
            ),
            point(
                c.refused_udp_sessions as f64,
                &[("reason", "limit_udp".into())],
            ),
            point(
                c.refused_unknown_exporters as f64,
                &[("reason", "unknown_exporter".into())],
            ),
            point(
                c.tls_handshake_failures as f64,
                &[("reason", "tls_handshake".into())],
            ),
        ],
    );
    s.insert(
        "ipfixsvc.collector.sessions.failed",
        vec![point(c.failed_sessions as f64, &[])],
    );
    s.insert(
        "ipfixsvc.collector.sessions.evicted",
        vec![point(c.evicted_udp_sessions as f64, &[])],
    );
    s.insert(
        "ipfixsvc.collector.lost_datagrams",
        vec![point(c.lost_datagrams as f64, &[])],
    );
    s.insert(
        "ipfixsvc.collector.memory.usage",
        vec![
            point(c.template_bytes as f64, &[("use", "templates".into())]),
            point(c.udp_queued_bytes as f64, &[("use", "udp_queue".into())]),
            point(c.pending_bytes as f64, &[("use", "pending_sets".into())]),
        ],
    );
}

fn cache(s: &mut Sample, c: &CacheStatus) {
    s.insert(
        "ipfixsvc.template_cache.templates",
        vec![point(c.templates as f64, &[])],
    );
    s.insert(
        "ipfixsvc.template_cache.memory.usage",
        vec![point(c.bytes as f64, &[])],
    );
    s.insert(
        "ipfixsvc.template_store.healthy",
        vec![point(f64::from(u8::from(c.store_healthy)), &[])],
    );
    s.insert(
        "ipfixsvc.template_cache.lookups",
        vec![
            point(
                c.lookups.saturating_sub(c.lookups_from_store) as f64,
                &[("answered_by", "cache".into())],
            ),
            point(
                c.lookups_from_store as f64,
                &[("answered_by", "store".into())],
            ),
        ],
    );
    s.insert(
        "ipfixsvc.template_cache.conflicts",
        vec![point(c.conflicts as f64, &[])],
    );
    s.insert(
        "ipfixsvc.template_cache.dropped_messages",
        vec![point(c.dropped_messages as f64, &[])],
    );
}

fn jobs(s: &mut Sample, j: &JobSupervisorStatus, config_version: &str) {
    let v = [("config.version", config_version.to_string())];
    s.insert(
        "ipfixsvc.jobs.queue.depth",
        vec![point(j.queued as f64, &v)],
    );
    s.insert(
        "ipfixsvc.jobs.running",
        vec![point(j.running.len() as f64, &v)],
    );
    s.insert("ipfixsvc.jobs.workers", vec![point(j.workers as f64, &v)]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(t: &str) -> (String, Work) {
        (t.to_string(), Work::Session)
    }

    #[test]
    fn cpu_is_shared_by_busy_time_and_never_beyond_it() {
        let mut attributed = HashMap::new();
        let mut unattributed = 0.0;
        // 2 s of CPU, tenants busy 0.9 s and 0.1 s: each gets its busy time, 1 s is the node's.
        attribute_share(
            2.0,
            1.0,
            vec![(k("a"), 0.9), (k("b"), 0.1)],
            &mut attributed,
            &mut unattributed,
        );
        assert!((attributed[&k("a")] - 0.9).abs() < 1e-9);
        assert!((attributed[&k("b")] - 0.1).abs() < 1e-9);
        assert!((unattributed - 1.0).abs() < 1e-9);
        // Busy 4 s (waiting for cores) on 2 s of CPU: scaled to the CPU, nothing left over.
        attribute_share(
            2.0,
            4.0,
            vec![(k("a"), 3.0), (k("b"), 1.0)],
            &mut attributed,
            &mut unattributed,
        );
        assert!((attributed[&k("a")] - 2.4).abs() < 1e-9);
        assert!((attributed[&k("b")] - 0.6).abs() < 1e-9);
        assert!((unattributed - 1.0).abs() < 1e-9);
    }
}
