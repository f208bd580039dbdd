//! JobSupervisor: runs jobs, each as its own linked job actor (a PcapConversionJob or a
//! TimeSeriesJob, see `runner.rs`), within a worker budget, with a bounded FIFO queue in front.
//! The API talks to it only by messages.
//!
//! A job submitted `after` another waits (queued, outside the FIFO) until that one ends: then it
//! takes its result as input and joins the queue, or fails if it did not succeed. A job it
//! follows on another node is looked up in the store every second (`CheckWaiting`).
//!
//! Messages: `Submit` (refused with `QueueFull` and a retry hint when the queue is full), `Get`,
//! `List`, `Cancel`, `Drain` (from the API and the node); `CancelHere` (from its JobDirectory:
//! a cancel another node could not serve, see `directory.rs`); `Progress` and `Finished` (from
//! job actors).
//!
//! Lifecycle: a job is queued, started when a worker is free, and ends succeeded, failed or
//! cancelled. A job actor that panics or stops without an outcome ends its job as failed with
//! the reason; its worker goes to the next queued job and its siblings never notice. Every
//! change of a record is written to the job store by a writer task in order, so this actor never
//! waits on Redis. `Drain` cancels what is queued and running and answers once the running jobs
//! have stopped and their records are written.

pub mod analysis;
pub mod conversion;
pub mod directory;
pub mod logic;
pub mod runner;
pub mod sweep;
pub mod time_series;

use crate::store::StoreError;
use crate::store::jobs::{JobId, JobProgress, JobRecord, JobSpec, JobState, JobStore};
use logic::{Admission, admit, retry_after, transition, update_mean};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use ractor_cluster::RactorMessage;
use runner::{Found, JobRunner, Outcome, RunArgs, RunMsg, Work};
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

pub const JOB_SUPERVISOR: &str = "job-supervisor";

/// A running job of another node whose progress has not moved this long is taken to be lost
/// (its node gone) by the jobs that wait for it.
pub const STALLED_AFTER: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    /// Every worker is busy and the queue is full (HTTP 429 with `Retry-After`).
    #[error("the job queue is full: retry in {} s", retry_after.as_secs())]
    QueueFull { retry_after: Duration },
    #[error("this node is shutting down")]
    Draining,
    #[error("invalid job: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum CancelError {
    #[error("no such job queued or running in the cluster")]
    NotFound,
    #[error("the job has already ended ({0:?})")]
    AlreadyEnded(JobState),
    #[error("the node running the job gave an answer that cannot be read: {0}")]
    Peer(String),
}

/// What a cancel request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Cancelled {
    /// It was waiting: it is cancelled now.
    Cancelled,
    /// It is running: it stops at its next progress tick (milliseconds).
    Cancelling,
}

#[derive(RactorMessage)]
pub enum JobMsg {
    /// A job, with the W3C `traceparent` of the request that submits it (empty: not traced):
    /// its queued and running spans join that request's trace.
    Submit(JobSpec, String, RpcReplyPort<Result<JobId, SubmitError>>),
    /// A tenant's job, from this node's memory or the store (any node's job).
    Get(
        String,
        JobId,
        RpcReplyPort<Result<Option<JobRecord>, StoreError>>,
    ),
    /// A tenant's jobs in submit order.
    List(String, RpcReplyPort<Result<Vec<JobRecord>, StoreError>>),
    /// Cancels a job, on whichever node of the cluster runs it or holds it in its queue.
    Cancel(String, JobId, RpcReplyPort<Result<Cancelled, CancelError>>),
    /// Cancels a job of this node only (what other nodes' requests arrive as).
    CancelHere(String, JobId, RpcReplyPort<Result<Cancelled, CancelError>>),
    Drain(RpcReplyPort<()>),
    Progress(JobId, JobProgress),
    Finished(JobId, Outcome),
    /// Own timer: looks for the ends of the jobs that waiting jobs follow.
    CheckWaiting,
    /// From the store: the records of jobs that waiting jobs follow (waiting job, its
    /// predecessor's record; an error keeps it waiting).
    AfterEnded(Vec<(JobId, Result<Option<JobRecord>, String>)>),
    /// Own timer: remove uploads and results whose records expired (see `sweep`).
    Sweep,
    /// The queue and the running jobs (for the actor tree).
    Status(RpcReplyPort<JobSupervisorStatus>),
}

#[derive(Debug, Clone)]
pub struct JobSupervisorStatus {
    pub queued: usize,
    /// Jobs waiting for the job they follow to end.
    pub waiting: usize,
    pub workers: usize,
    /// Queue capacity.
    pub queue: usize,
    /// Each running job: its actor's id, the job, its progress.
    pub running: Vec<(String, JobId, JobProgress)>,
}

/// Clears a flag when dropped.
struct Cleared(Arc<AtomicBool>);

impl Drop for Cleared {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// How often `storage.dir` is swept: a quarter of the retention, within 1 s and 10 min.
pub fn sweep_every(retention: Duration) -> Duration {
    (retention / 4).clamp(Duration::from_secs(1), Duration::from_secs(600))
}

pub struct JobArgs {
    pub store: Arc<JobStore>,
    /// `storage.dir`: results go to `<dir>/jobs/<id>/result.ipfix`.
    pub storage_dir: PathBuf,
    pub workers: usize,
    pub queue: usize,
    /// Finished records stay in this actor's memory this long (the store keeps its own copy).
    pub retention: Duration,
    pub node: String,
    /// The node's configuration version: its job figures are labelled with it.
    pub config_version: String,
    /// `jobs.max_series_cells`: key x interval cells a time-series job may hold.
    pub max_series_cells: usize,
    /// How long another node's running job may show no progress before the jobs waiting for
    /// it give up ([`STALLED_AFTER`]; tests shorten it).
    pub stalled_after: Duration,
}

/// The job figures: wait and run time histograms and outcomes, labelled with the job kind and
/// the node's configuration version (a pool that got slower after a change shows by version).
struct JobMetrics {
    wait: opentelemetry::metrics::Histogram<f64>,
    run: opentelemetry::metrics::Histogram<f64>,
    outcomes: opentelemetry::metrics::Counter<u64>,
    config_version: String,
}

impl JobMetrics {
    fn new(config_version: &str) -> JobMetrics {
        let m = crate::telemetry::metrics::meter();
        // From milliseconds (a small capture) to hours (a day of traffic).
        let bounds = vec![
            0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
        ];
        JobMetrics {
            wait: m
                .f64_histogram("ipfixsvc.job.wait.duration")
                .with_unit("s")
                .with_description("time jobs waited in the queue for a worker")
                .with_boundaries(bounds.clone())
                .build(),
            run: m
                .f64_histogram("ipfixsvc.job.run.duration")
                .with_unit("s")
                .with_description("time jobs ran, by outcome")
                .with_boundaries(bounds)
                .build(),
            outcomes: m
                .u64_counter("ipfixsvc.job.outcomes")
                .with_unit("{job}")
                .with_description("jobs ended, by outcome (succeeded, failed, cancelled)")
                .build(),
            config_version: config_version.to_string(),
        }
    }

    fn attrs(&self, kind: &str) -> Vec<opentelemetry::KeyValue> {
        vec![
            opentelemetry::KeyValue::new("job.kind", kind.to_string()),
            opentelemetry::KeyValue::new("config.version", self.config_version.clone()),
        ]
    }

    fn with_outcome(&self, kind: &str, outcome: &'static str) -> Vec<opentelemetry::KeyValue> {
        let mut a = self.attrs(kind);
        a.push(opentelemetry::KeyValue::new("outcome", outcome));
        a
    }
}

/// A span of a job's life (`job queued`, `job run`), in the trace of the request that
/// submitted it.
fn job_span(name: &'static str, parent: &str, record: &JobRecord) -> tracing::Span {
    let span = tracing::info_span!(
        "job",
        otel.name = name,
        job.id = %record.id,
        job.kind = %record.kind,
        tenant = %record.tenant,
        otel.status_code = tracing::field::Empty,
    );
    crate::telemetry::follow(&span, parent);
    span
}

/// A job this node knows: its record, and the monotonic times behind its telemetry.
struct Tracked {
    record: JobRecord,
    submitted: Instant,
    started: Option<Instant>,
    /// The submitting request's trace, and the span of the wait in the queue (ended when the
    /// job starts).
    parent: String,
    queued: tracing::Span,
}

struct Running {
    actor: ActorRef<RunMsg>,
    cancel: Arc<AtomicBool>,
}

enum Write {
    Put(Box<JobRecord>),
    Flush(oneshot::Sender<()>),
    /// Not sent: the writer's own wake-up to retry unwritten final records.
    Retry,
}

pub struct JobSupervisorState {
    args: JobArgs,
    jobs: HashMap<JobId, Tracked>,
    queue: VecDeque<JobId>,
    /// Jobs waiting for the job they follow (`after`) to end, in submit order.
    waiting: Vec<JobId>,
    /// A `CheckWaiting` timer is set; the store is being asked about predecessors.
    check_armed: bool,
    asking_store: bool,
    /// For a waiting job whose predecessor runs on another node: that job's progress when it
    /// last changed, and since when (a node that died leaves its record `running`).
    seen: HashMap<JobId, (JobProgress, Instant)>,
    running: HashMap<JobId, Running>,
    writer: mpsc::UnboundedSender<Write>,
    mean_exec: Option<Duration>,
    /// Set by `Drain`: who to answer once nothing runs.
    draining: Option<Vec<RpcReplyPort<()>>>,
    /// This supervisor's JobDirectory (cancels from other nodes); none if it failed to start.
    directory: Option<ActorRef<directory::JobDirectoryMsg>>,
    /// A sweep is running (one at a time).
    sweeping: Arc<AtomicBool>,
    metrics: JobMetrics,
}

pub struct JobSupervisor;

impl Actor for JobSupervisor {
    type Msg = JobMsg;
    type State = JobSupervisorState;
    type Arguments = JobArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<JobMsg>,
        args: JobArgs,
    ) -> Result<JobSupervisorState, ActorProcessingErr> {
        // Jobs still run and answer locally without it: a failure is logged, not fatal.
        let directory = match Actor::spawn_linked(
            None,
            directory::JobDirectory,
            myself.clone(),
            myself.get_cell(),
        )
        .await
        {
            Ok((d, _)) => Some(d),
            Err(e) => {
                tracing::warn!(error = %e, "job directory not started: cancels from other nodes will not reach this one");
                None
            }
        };
        // Unbounded on purpose: a job makes a handful of writes plus one per 250 ms of progress,
        // and dropping one would lose a final state.
        let (writer, rx) = mpsc::unbounded_channel();
        tokio::spawn(write_records(args.store.clone(), rx));
        myself.send_after(sweep_every(args.retention), || JobMsg::Sweep);
        tracing::info!(
            workers = args.workers,
            queue = args.queue,
            dir = %args.storage_dir.display(),
            "job supervisor started"
        );
        Ok(JobSupervisorState {
            metrics: JobMetrics::new(&args.config_version),
            args,
            jobs: HashMap::new(),
            queue: VecDeque::new(),
            waiting: Vec::new(),
            check_armed: false,
            asking_store: false,
            seen: HashMap::new(),
            running: HashMap::new(),
            writer,
            mean_exec: None,
            draining: None,
            directory,
            sweeping: Arc::new(AtomicBool::new(false)),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<JobMsg>,
        msg: JobMsg,
        state: &mut JobSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        crate::telemetry::metrics::ActorKind::JobSupervisor
            .timed(async move {
                match msg {
                    JobMsg::Submit(spec, parent, reply) => {
                        let submitted = Instant::now();
                        let admission = state.admit(&spec);
                        let id = admission.map(|a| (JobId::new(), a));
                        let _ = reply.send(id.as_ref().map(|(id, _)| *id).map_err(Clone::clone));
                        if let Ok((id, _)) = id {
                            let record = JobRecord::queued(id, &spec, &state.args.node);
                            state.save(&record);
                            let queued = job_span("job queued", &parent, &record);
                            state.jobs.insert(
                                id,
                                Tracked {
                                    record,
                                    submitted,
                                    started: None,
                                    parent,
                                    queued,
                                },
                            );
                            if state.jobs.get(&id).is_some_and(|t| t.record.after.is_some()) {
                                state.waiting.push(id);
                                state.check_waiting(&myself).await;
                            } else {
                                state.queue.push_back(id);
                                // Whether admitted to start or to wait: waiting jobs count in
                                // the queue, so a worker may be free either way.
                                state.start_next(&myself).await;
                            }
                        }
                    }
                    JobMsg::Get(tenant, id, reply) => match state.jobs.get(&id) {
                        Some(t) if t.record.tenant == tenant => {
                            let _ = reply.send(Ok(Some(t.record.clone())));
                        }
                        Some(_) => {
                            let _ = reply.send(Ok(None));
                        }
                        None => {
                            // Another node's job: the store answers, without holding up this actor.
                            let store = state.args.store.clone();
                            tokio::spawn(async move {
                                let _ = reply.send(store.get(&tenant, id).await);
                            });
                        }
                    },
                    JobMsg::List(tenant, reply) => {
                        let local: Vec<JobRecord> = state
                            .jobs
                            .values()
                            .filter(|t| t.record.tenant == tenant)
                            .map(|t| t.record.clone())
                            .collect();
                        let store = state.args.store.clone();
                        tokio::spawn(async move {
                            let _ = reply.send(store.list(&tenant).await.map(|s| merge(s, local)));
                        });
                    }
                    JobMsg::Cancel(tenant, id, reply) => match state.cancel_and_check(&myself, &tenant, id).await {
                        Err(CancelError::NotFound) => {
                            // Not here: maybe another node's (the record is shared, the job is not).
                            let own = state.directory.as_ref().map(|d| d.get_id());
                            tokio::spawn(async move {
                                let _ =
                                    reply.send(directory::cancel_elsewhere(own, tenant, id).await);
                            });
                        }
                        answer => {
                            let _ = reply.send(answer);
                        }
                    },
                    JobMsg::CancelHere(tenant, id, reply) => {
                        let _ = reply.send(state.cancel_and_check(&myself, &tenant, id).await);
                    }
                    JobMsg::Drain(reply) => {
                        state.draining.get_or_insert_with(Vec::new).push(reply);
                        let queued: Vec<JobId> = state.queue.iter().copied().collect();
                        let waiting = state.waiting.clone();
                        let running: Vec<JobId> = state.running.keys().copied().collect();
                        for id in queued.into_iter().chain(waiting).chain(running) {
                            let tenant = state.jobs.get(&id).map(|t| t.record.tenant.clone());
                            if let Some(tenant) = tenant {
                                let _ = state.cancel(&tenant, id);
                            }
                        }
                        state.answer_drain().await;
                    }
                    JobMsg::Progress(id, p) => {
                        if let Some(t) = state.jobs.get_mut(&id)
                            && t.record.state == JobState::Running
                        {
                            t.record.progress = p;
                            let record = t.record.clone();
                            state.save(&record);
                        }
                    }
                    JobMsg::Status(reply) => {
                        let running = state
                            .running
                            .iter()
                            .map(|(id, r)| {
                                let progress = state
                                    .jobs
                                    .get(id)
                                    .map(|t| t.record.progress)
                                    .unwrap_or_default();
                                (r.actor.get_id().to_string(), *id, progress)
                            })
                            .collect();
                        let _ = reply.send(JobSupervisorStatus {
                            queued: state.queue.len(),
                            waiting: state.waiting.len(),
                            workers: state.args.workers,
                            queue: state.args.queue,
                            running,
                        });
                    }
                    JobMsg::Sweep => {
                        myself.send_after(sweep_every(state.args.retention), || JobMsg::Sweep);
                        state.sweep();
                    }
                    JobMsg::Finished(id, outcome) => {
                        if let Some(r) = state.running.remove(&id) {
                            r.actor.stop(None);
                        }
                        state.finish(id, outcome);
                        state.check_waiting(&myself).await;
                        state.start_next(&myself).await;
                        state.answer_drain().await;
                    }
                    JobMsg::CheckWaiting => {
                        state.check_armed = false;
                        state.check_waiting(&myself).await;
                    }
                    JobMsg::AfterEnded(found) => {
                        state.asking_store = false;
                        for (id, predecessor) in found {
                            match predecessor {
                                Ok(Some(r)) if r.state.is_final() => state.resolve(id, Some(&r)),
                                Ok(Some(r)) => state.watch_predecessor(id, &r),
                                Ok(None) => state.resolve(id, None),
                                Err(e) => tracing::debug!(job = %id, error = %e, "the job it follows: no answer yet"),
                            }
                        }
                        state.start_next(&myself).await;
                    }
                }
                Ok(())
            })
            .await
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<JobMsg>,
        evt: SupervisionEvent,
        state: &mut JobSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, reason) = match evt {
            SupervisionEvent::ActorFailed(cell, err) => (cell, format!("job actor failed: {err}")),
            SupervisionEvent::ActorTerminated(cell, _, why) => (
                cell,
                format!(
                    "job actor stopped without an outcome{}",
                    why.map(|w| format!(": {w}")).unwrap_or_default()
                ),
            ),
            _ => return Ok(()),
        };
        // A child that ended after reporting its outcome is no longer in `running`.
        let Some(id) = state
            .running
            .iter()
            .find(|(_, r)| r.actor.get_id() == cell.get_id())
            .map(|(id, _)| *id)
        else {
            return Ok(());
        };
        if let Some(r) = state.running.remove(&id) {
            // Its metering thread may still run: stop it, and leave no file behind.
            r.cancel.store(true, Ordering::Relaxed);
        }
        tracing::warn!(job = %id, %reason, "job failed");
        let dir = state.job_dir(id);
        tokio::task::spawn_blocking(move || runner::discard(&dir));
        state.finish(id, Outcome::Failed(reason));
        state.check_waiting(&myself).await;
        state.start_next(&myself).await;
        state.answer_drain().await;
        Ok(())
    }
}

impl JobSupervisorState {
    fn admit(&self, spec: &JobSpec) -> Result<Admission, SubmitError> {
        if self.draining.is_some() {
            return Err(SubmitError::Draining);
        }
        if spec.inputs.is_empty() && spec.after.is_none() {
            return Err(SubmitError::Invalid("no inputs".into()));
        }
        if let Some(o) = &spec.time_series {
            o.check().map_err(SubmitError::Invalid)?;
        }
        if let Some(o) = &spec.analysis {
            o.check().map_err(SubmitError::Invalid)?;
        }
        if spec.tenant.is_empty() || spec.tenant.contains(':') {
            return Err(SubmitError::Invalid(
                "tenant must be non-empty and without ':'".into(),
            ));
        }
        let (workers, cap) = (self.args.workers, self.args.queue);
        // Waiting jobs hold places in the queue: they join it when they can run.
        let queued = self.queue.len() + self.waiting.len();
        match admit(self.running.len(), workers, queued, cap) {
            Admission::Refuse => Err(SubmitError::QueueFull {
                retry_after: retry_after(queued, workers, self.mean_exec),
            }),
            a => Ok(a),
        }
    }

    fn job_dir(&self, id: JobId) -> PathBuf {
        self.args.storage_dir.join("jobs").join(id.to_string())
    }

    fn save(&self, record: &JobRecord) {
        // The writer lives as long as this actor; a send fails only while it stops.
        let _ = self.writer.send(Write::Put(Box::new(record.clone())));
    }

    /// Starts queued jobs while workers are free.
    async fn start_next(&mut self, myself: &ActorRef<JobMsg>) {
        while self.running.len() < self.args.workers {
            let Some(id) = self.queue.pop_front() else {
                return;
            };
            let Some(t) = self.jobs.get(&id) else {
                continue;
            };
            let cancel = Arc::new(AtomicBool::new(false));
            let inputs = t.record.inputs.clone();
            let work = match (&t.record.time_series, &t.record.analysis) {
                (Some(options), _) => Work::TimeSeries {
                    inputs,
                    options: options.clone(),
                    max_cells: self.args.max_series_cells,
                },
                (None, Some(options)) => Work::Analysis {
                    inputs,
                    options: options.clone(),
                    max_cells: self.args.max_series_cells,
                },
                (None, None) => Work::Conversion {
                    inputs,
                    options: t.record.options.clone(),
                },
            };
            #[cfg(feature = "fault-injection")]
            let fail_after_packets = t.record.options.fail_after_packets;
            #[cfg(not(feature = "fault-injection"))]
            let fail_after_packets = None;
            let name = format!("{}{id}", work.actor_prefix());
            let args = RunArgs {
                span: job_span("job run", &t.parent, &t.record),
                id,
                tenant: t.record.tenant.clone(),
                work,
                dir: self.job_dir(id),
                supervisor: myself.clone(),
                cancel: cancel.clone(),
                fail_after_packets,
            };
            let spawned = Actor::spawn_linked(Some(name), JobRunner, args, myself.get_cell()).await;
            match spawned {
                Ok((actor, _)) => {
                    self.running.insert(id, Running { actor, cancel });
                    if let Some(t) = self.jobs.get_mut(&id)
                        && transition(&mut t.record, JobState::Running).is_ok()
                    {
                        let now = Instant::now();
                        t.started = Some(now);
                        t.queued = tracing::Span::none();
                        t.record.telemetry.queue_wait_ms = Some(ms(now - t.submitted));
                        self.metrics.wait.record(
                            (now - t.submitted).as_secs_f64(),
                            &self.metrics.attrs(&t.record.kind),
                        );
                        let record = t.record.clone();
                        self.save(&record);
                    }
                }
                Err(e) => self.finish(id, Outcome::Failed(format!("job actor: {e}"))),
            }
        }
    }

    fn cancel(&mut self, tenant: &str, id: JobId) -> Result<Cancelled, CancelError> {
        let state = match self.jobs.get_mut(&id) {
            Some(t) if t.record.tenant == tenant => t.record.state,
            _ => return Err(CancelError::NotFound),
        };
        match state {
            JobState::Queued => {
                self.queue.retain(|q| *q != id);
                self.waiting.retain(|q| *q != id);
                self.seen.remove(&id);
                self.finish(id, Outcome::Cancelled);
                Ok(Cancelled::Cancelled)
            }
            JobState::Running => {
                if let Some(r) = self.running.get(&id) {
                    let _ = r.actor.cast(RunMsg::Cancel);
                }
                Ok(Cancelled::Cancelling)
            }
            s => Err(CancelError::AlreadyEnded(s)),
        }
    }

    /// Records how a job ended (once: later outcomes are ignored by the state machine).
    fn finish(&mut self, id: JobId, outcome: Outcome) {
        let draining = self.draining.is_some();
        let Some(t) = self.jobs.get_mut(&id) else {
            return;
        };
        let to = match &outcome {
            Outcome::Succeeded { .. } => JobState::Succeeded,
            Outcome::Cancelled => JobState::Cancelled,
            Outcome::Failed(_) => JobState::Failed,
        };
        if let Err(e) = transition(&mut t.record, to) {
            tracing::debug!(error = %e, "late job outcome ignored");
            return;
        }
        // A job cancelled while queued (or whose actor did not start) ends its queued span
        // here, not when its record is forgotten.
        t.queued = tracing::Span::none();
        let r = &mut t.record;
        let name = match to {
            JobState::Succeeded => "succeeded",
            JobState::Cancelled => "cancelled",
            _ => "failed",
        };
        let attrs = self.metrics.with_outcome(&r.kind, name);
        self.metrics.outcomes.add(1, &attrs);
        match outcome {
            Outcome::Succeeded {
                found,
                progress,
                artifact,
            } => {
                match *found {
                    Found::Conversion(summary) => r.summary = Some(summary),
                    Found::TimeSeries(series, files) => {
                        r.series = Some(series);
                        r.files = files;
                    }
                    Found::Analysis(summary, files) => {
                        r.report = Some(summary);
                        r.files = files;
                    }
                }
                r.progress = progress;
                r.artifact = Some(artifact.display().to_string());
            }
            Outcome::Cancelled if draining => r.error = Some("node shutting down".into()),
            Outcome::Cancelled => {}
            Outcome::Failed(e) => r.error = Some(e),
        }
        if let Some(started) = t.started {
            let exec = started.elapsed();
            r.telemetry.exec_ms = Some(ms(exec));
            self.metrics.run.record(exec.as_secs_f64(), &attrs);
            self.mean_exec = Some(update_mean(self.mean_exec, exec));
        }
        tracing::info!(job = %id, state = ?r.state, error = r.error.as_deref().unwrap_or(""), "job ended");
        let record = r.clone();
        self.save(&record);
        self.forget_old();
    }

    /// Cancels a job; a waiting job that followed it can then fail at once.
    async fn cancel_and_check(
        &mut self,
        myself: &ActorRef<JobMsg>,
        tenant: &str,
        id: JobId,
    ) -> Result<Cancelled, CancelError> {
        let answer = self.cancel(tenant, id);
        if answer == Ok(Cancelled::Cancelled) {
            self.check_waiting(myself).await;
        }
        answer
    }

    /// Resolves the waiting jobs whose predecessor has ended here; asks the store about those
    /// this node does not hold (one question at a time), and looks again in a second while any
    /// wait.
    async fn check_waiting(&mut self, myself: &ActorRef<JobMsg>) {
        let mut remote = Vec::new();
        for id in self.waiting.clone() {
            let Some((tenant, after)) = self
                .jobs
                .get(&id)
                .and_then(|t| t.record.after.map(|a| (t.record.tenant.clone(), a)))
            else {
                self.waiting.retain(|w| *w != id);
                continue;
            };
            match self.jobs.get(&after) {
                Some(p) if p.record.tenant == tenant => {
                    if p.record.state.is_final() {
                        let p = p.record.clone();
                        self.resolve(id, Some(&p));
                    }
                }
                _ => remote.push((id, tenant, after)),
            }
        }
        if !remote.is_empty() && !self.asking_store {
            self.asking_store = true;
            let store = self.args.store.clone();
            let me = myself.clone();
            tokio::spawn(async move {
                let mut found = Vec::with_capacity(remote.len());
                for (id, tenant, after) in remote {
                    found.push((
                        id,
                        store.get(&tenant, after).await.map_err(|e| e.to_string()),
                    ));
                }
                let _ = me.cast(JobMsg::AfterEnded(found));
            });
        }
        if !self.waiting.is_empty() && !self.check_armed {
            self.check_armed = true;
            myself.send_after(Duration::from_secs(1), || JobMsg::CheckWaiting);
        }
        self.start_next(myself).await;
    }

    /// A waiting job whose predecessor ended (`None`: its record is gone): it joins the queue
    /// with the predecessor's result as input, or fails saying why.
    /// Another node's job that a waiting job follows is still running: if its progress has
    /// not moved for `stalled_after` (a running job's record is rewritten every 250 ms), its
    /// node is taken to be gone and the waiting job fails, rather than wait out the record's
    /// retention.
    fn watch_predecessor(&mut self, id: JobId, r: &JobRecord) {
        let now = Instant::now();
        let (progress, since) = *self.seen.entry(id).or_insert((r.progress, now));
        if progress != r.progress || r.state != JobState::Running {
            self.seen.insert(id, (r.progress, now));
        } else if now - since >= self.args.stalled_after && self.waiting.contains(&id) {
            self.waiting.retain(|w| *w != id);
            self.seen.remove(&id);
            self.finish(
                id,
                Outcome::Failed(format!(
                    "job {}, which this one follows, has not progressed on node {} for {} s: that node may be gone",
                    r.id,
                    r.node,
                    self.args.stalled_after.as_secs()
                )),
            );
        }
    }

    fn resolve(&mut self, id: JobId, predecessor: Option<&JobRecord>) {
        if !self.waiting.contains(&id) {
            return;
        }
        self.waiting.retain(|w| *w != id);
        self.seen.remove(&id);
        let Some(t) = self.jobs.get_mut(&id) else {
            return;
        };
        let after = t.record.after.map(|a| a.to_string()).unwrap_or_default();
        let input = match predecessor {
            None => Err(format!(
                "job {after}, which this one follows, is gone (its record expired)"
            )),
            Some(p) if p.state != JobState::Succeeded => Err(format!(
                "job {after}, which this one follows, ended {}{}",
                format!("{:?}", p.state).to_lowercase(),
                p.error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            )),
            Some(p) if p.kind != crate::store::jobs::KIND_PCAP_CONVERSION => Err(format!(
                "job {after}, which this one follows, is a {} job: its result is not IPFIX",
                p.kind
            )),
            Some(p) => p
                .artifact
                .clone()
                .ok_or_else(|| format!("job {after}, which this one follows, has no result")),
        };
        match input {
            Ok(artifact) => {
                t.record.inputs = vec![artifact];
                let record = t.record.clone();
                self.save(&record);
                self.queue.push_back(id);
            }
            Err(e) => self.finish(id, Outcome::Failed(e)),
        }
    }

    /// Starts a sweep of `storage.dir` in a task of its own, unless one still runs.
    fn sweep(&mut self) {
        if self.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        self.forget_old();
        let local: Vec<JobRecord> = self.jobs.values().map(|t| t.record.clone()).collect();
        let tenants: Vec<String> = local.iter().map(|r| r.tenant.clone()).collect();
        let store = self.args.store.clone();
        let dir = self.args.storage_dir.clone();
        let retention = self.args.retention;
        let flag = self.sweeping.clone();
        tokio::spawn(async move {
            // Cleared however the task ends (a panic included).
            let _done = Cleared(flag);
            match sweep::sweep(&store, &dir, retention, tenants, local).await {
                Ok(s) if s != sweep::Swept::default() => tracing::info!(
                    uploads = s.uploads,
                    results = s.results,
                    bytes = s.bytes,
                    "removed the files of expired jobs"
                ),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "storage sweep skipped: the job store did not answer")
                }
            }
        });
    }

    /// Ended jobs leave this actor's memory after the retention (they stay in the store).
    fn forget_old(&mut self) {
        let oldest =
            crate::store::jobs::unix_ms().saturating_sub(self.args.retention.as_millis() as u64);
        self.jobs
            .retain(|_, t| t.record.finished_ms.is_none_or(|f| f >= oldest));
    }

    /// Answers `Drain` once nothing runs and every record is written.
    async fn answer_drain(&mut self) {
        if !self.running.is_empty() || self.draining.is_none() {
            return;
        }
        let (tx, rx) = oneshot::channel();
        if self.writer.send(Write::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
        for reply in self.draining.iter_mut().flat_map(std::mem::take) {
            let _ = reply.send(());
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_nanos() as f64 / 1e6
}

/// The store's records, with this node's (fresher) copies in their place.
fn merge(stored: Vec<JobRecord>, local: Vec<JobRecord>) -> Vec<JobRecord> {
    let mut by_id: HashMap<JobId, JobRecord> = stored.into_iter().map(|r| (r.id, r)).collect();
    for r in local {
        by_id.insert(r.id, r);
    }
    let mut all: Vec<JobRecord> = by_id.into_values().collect();
    all.sort_by_key(|r| (r.submitted_ms, r.id));
    all
}

/// Writes records in the order they changed, so a late write never undoes a newer one. What
/// queued up meanwhile is written once per job (the latest record), so a slow or absent Redis
/// costs one write per job, not one per progress report; a final record that could not be
/// written is tried again every second until it is (other nodes would show it running).
async fn write_records(store: Arc<JobStore>, mut rx: mpsc::UnboundedReceiver<Write>) {
    let mut unwritten: HashMap<JobId, JobRecord> = HashMap::new();
    loop {
        let first = if unwritten.is_empty() {
            rx.recv().await
        } else {
            match tokio::time::timeout(Duration::from_secs(1), rx.recv()).await {
                Ok(w) => w,
                Err(_) => Some(Write::Retry),
            }
        };
        let Some(first) = first else {
            return;
        };
        let mut flushes = Vec::new();
        let mut order: Vec<JobId> = Vec::new();
        let mut take = |w: Write, unwritten: &mut HashMap<JobId, JobRecord>| match w {
            Write::Put(record) => {
                order.retain(|id| *id != record.id);
                order.push(record.id);
                unwritten.insert(record.id, *record);
            }
            Write::Flush(done) => flushes.push(done),
            Write::Retry => {}
        };
        take(first, &mut unwritten);
        while let Ok(w) = rx.try_recv() {
            take(w, &mut unwritten);
        }
        // Earlier failures first, then this batch in the order its jobs last changed.
        let mut ids: Vec<JobId> = unwritten
            .keys()
            .filter(|id| !order.contains(id))
            .copied()
            .collect();
        ids.extend(order);
        for id in ids {
            let Some(record) = unwritten.remove(&id) else {
                continue;
            };
            if let Err(e) = store.put(&record).await {
                tracing::warn!(job = %record.id, error = %e, "job record not stored");
                if record.state.is_final() {
                    unwritten.insert(id, record);
                }
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}
