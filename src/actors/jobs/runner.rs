//! The job actors: one per running job, a linked child of the JobSupervisor. A
//! PcapConversionJob (actor name `job-<id>`), a TimeSeriesJob (`time-series-<id>`) and an
//! AnalysisJob (`analysis-<id>`) are this same actor with different work (`Work`): they differ in what runs on the blocking thread,
//! not in how they are supervised, cancelled or report.
//!
//! Role: runs the work on tokio's blocking pool, so the runtime that serves the API and the
//! collector never waits on it; passes progress to the supervisor; reports the outcome.
//!
//! Messages: `Progress` and `Done` (from its own work task), `Cancel` (from the supervisor).
//!
//! Lifecycle: `pre_start` hands the work to the blocking pool and returns at once. The work
//! writes `.part` files and renames them on success; on failure or cancel it removes them. On
//! `Done` the actor tells the supervisor `Finished`, and the supervisor stops it. If the actor
//! panics, the supervisor sees `ActorFailed`, raises the cancel flag (the work stops at its next
//! progress tick) and removes the files.

use super::JobMsg;
use crate::meter::convert::ConvertSummary;
use crate::store::jobs::{
    AnalysisOptions, AnalysisSummary, JobId, JobOptions, JobProgress, SeriesSummary,
    TimeSeriesOptions,
};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use ractor_cluster::RactorMessage;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The result file of a job, inside its own folder.
pub const RESULT_FILE: &str = "result.ipfix";
/// A hard link to the result under the name the API serves it by (`.../jobs/{id}/result`), so
/// the HTTP file server streams it (with Range) straight from `storage.dir`.
pub const RESULT_LINK: &str = "result";
pub const PART_FILE: &str = "result.ipfix.part";

/// A record in the store is rewritten at most this often while a job runs.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// What a job found, by kind.
#[derive(Debug, Clone)]
pub enum Found {
    Conversion(ConvertSummary),
    /// The summary, and the result's files besides `result`.
    TimeSeries(SeriesSummary, Vec<String>),
    Analysis(AnalysisSummary, Vec<String>),
}

/// How a run ended, as the supervisor records it.
#[derive(Debug, Clone)]
pub enum Outcome {
    Succeeded {
        /// Boxed: the summaries are large, and outcomes travel in messages.
        found: Box<Found>,
        progress: JobProgress,
        artifact: PathBuf,
    },
    Cancelled,
    Failed(String),
}

/// What a job does on its blocking thread.
pub enum Work {
    Conversion {
        inputs: Vec<String>,
        options: JobOptions,
    },
    TimeSeries {
        inputs: Vec<String>,
        options: TimeSeriesOptions,
        /// `jobs.max_series_cells`.
        max_cells: usize,
    },
    Analysis {
        inputs: Vec<String>,
        options: AnalysisOptions,
        /// `jobs.max_series_cells`: the keys or cells an analysis may hold.
        max_cells: usize,
    },
}

impl Work {
    /// The actor's kind, as the actor tree and the telemetry name it.
    pub fn kind(&self) -> crate::telemetry::metrics::ActorKind {
        use crate::telemetry::metrics::ActorKind;
        match self {
            Work::Conversion { .. } => ActorKind::ConversionJob,
            Work::TimeSeries { .. } => ActorKind::TimeSeriesJob,
            Work::Analysis { .. } => ActorKind::AnalysisJob,
        }
    }

    /// The actor's name prefix (`job-<id>`, `time-series-<id>`): the actor tree tells the
    /// kinds apart by it.
    pub fn actor_prefix(&self) -> &'static str {
        match self {
            Work::Conversion { .. } => CONVERSION_PREFIX,
            Work::TimeSeries { .. } => TIME_SERIES_PREFIX,
            Work::Analysis { .. } => ANALYSIS_PREFIX,
        }
    }

    fn run(self, dir: &Path, cancel: &AtomicBool, report: &mut dyn FnMut(JobProgress)) -> Outcome {
        match self {
            Work::Conversion { inputs, options } => {
                super::conversion::run(&inputs, &options, dir, cancel, report)
            }
            Work::TimeSeries {
                inputs,
                options,
                max_cells,
            } => super::time_series::run(&inputs, &options, max_cells, dir, cancel, report),
            Work::Analysis {
                inputs,
                options,
                max_cells,
            } => super::analysis::run(&inputs, &options, max_cells, dir, cancel, report),
        }
    }
}

pub const CONVERSION_PREFIX: &str = "job-";
pub const TIME_SERIES_PREFIX: &str = "time-series-";
pub const ANALYSIS_PREFIX: &str = "analysis-";

#[derive(RactorMessage)]
pub enum RunMsg {
    Progress(JobProgress),
    Done(Outcome),
    Cancel,
}

pub struct RunArgs {
    /// The run's span (`job run`): the work runs in it, one child span per input.
    pub span: tracing::Span,
    pub id: JobId,
    /// Whose job it is: the thread's CPU time is this tenant's.
    pub tenant: String,
    pub work: Work,
    /// This job's folder: `<storage.dir>/jobs/<id>`.
    pub dir: PathBuf,
    pub supervisor: ActorRef<JobMsg>,
    /// Shared with the supervisor, which raises it if this actor dies.
    pub cancel: Arc<AtomicBool>,
    /// Tests only (feature `fault-injection`): see `JobOptions::fail_after_packets`.
    pub fail_after_packets: Option<u64>,
}

pub struct RunState {
    id: JobId,
    supervisor: ActorRef<JobMsg>,
    cancel: Arc<AtomicBool>,
    kind: crate::telemetry::metrics::ActorKind,
    #[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
    fail_after_packets: Option<u64>,
}

impl RunState {
    /// Test builds: the injected fault (see `JobOptions::fail_after_packets`), a panic in this
    /// handler. Release builds: nothing.
    fn maybe_fail(&self, _packets: u64) {
        #[cfg(feature = "fault-injection")]
        if let Some(limit) = self.fail_after_packets
            && _packets >= limit
        {
            panic!("injected fault (fail_after_packets = {limit}) at {_packets} packets");
        }
    }
}

pub struct JobRunner;

impl Actor for JobRunner {
    type Msg = RunMsg;
    type State = RunState;
    type Arguments = RunArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<RunMsg>,
        args: RunArgs,
    ) -> Result<RunState, ActorProcessingErr> {
        let state = RunState {
            id: args.id,
            supervisor: args.supervisor,
            cancel: args.cancel.clone(),
            kind: args.work.kind(),
            fail_after_packets: args.fail_after_packets,
        };
        let me = myself.clone();
        let (span, tenant, work, dir, cancel) =
            (args.span, args.tenant, args.work, args.dir, args.cancel);
        let run = tokio::task::spawn_blocking(move || {
            let _span = span.enter();
            let mut thread = crate::telemetry::process::JobThread::enter(&tenant);
            let outcome = work.run(&dir, &cancel, &mut |p| {
                thread.account();
                // The actor may be gone (panicked): the work stops on the cancel flag.
                let _ = me.cast(RunMsg::Progress(p));
            });
            if let Outcome::Failed(_) = &outcome {
                span.record("otel.status_code", "ERROR");
            }
            outcome
        });
        tokio::spawn(async move {
            let outcome = match run.await {
                Ok(o) => o,
                Err(e) => Outcome::Failed(format!("the job panicked: {}", join_error_text(e))),
            };
            let _ = myself.cast(RunMsg::Done(outcome));
        });
        Ok(state)
    }

    async fn handle(
        &self,
        _myself: ActorRef<RunMsg>,
        msg: RunMsg,
        state: &mut RunState,
    ) -> Result<(), ActorProcessingErr> {
        state
            .kind
            .timed(async move {
                match msg {
                    RunMsg::Progress(p) => {
                        state.maybe_fail(p.packets);
                        let _ = state.supervisor.cast(JobMsg::Progress(state.id, p));
                    }
                    RunMsg::Done(outcome) => {
                        if let Outcome::Succeeded { found, .. } = &outcome
                            && let Found::Conversion(summary) = found.as_ref()
                        {
                            state.maybe_fail(summary.packets);
                        }
                        let _ = state.supervisor.cast(JobMsg::Finished(state.id, outcome));
                    }
                    RunMsg::Cancel => state.cancel.store(true, Ordering::Relaxed),
                }
                Ok(())
            })
            .await
    }
}

fn join_error_text(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(p) => p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into()),
        Err(e) => e.to_string(),
    }
}

/// How a job that writes files ends: succeeded with `result` linked to its first file, or
/// cancelled or failed with what it wrote removed.
pub(super) fn ended<S>(
    dir: &Path,
    files: &[&str],
    result: Result<Option<(S, JobProgress)>, String>,
    found: impl FnOnce(S, Vec<String>) -> Found,
) -> Outcome {
    match result {
        Ok(Some((summary, progress))) => {
            let artifact = dir.join(files[0]);
            match std::fs::hard_link(&artifact, dir.join(RESULT_LINK)) {
                Ok(()) => Outcome::Succeeded {
                    found: Box::new(found(
                        summary,
                        files.iter().map(|f| f.to_string()).collect(),
                    )),
                    progress,
                    artifact,
                },
                Err(e) => {
                    discard(dir);
                    Outcome::Failed(format!("{}: {e}", artifact.display()))
                }
            }
        }
        Ok(None) => {
            discard(dir);
            Outcome::Cancelled
        }
        Err(e) => {
            discard(dir);
            Outcome::Failed(e)
        }
    }
}

/// A job that did not succeed leaves nothing behind: the files jobs write (results and their
/// `.part` files), and its folder if that is then empty.
pub fn discard(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(PART_FILE));
    let _ = std::fs::remove_file(dir.join(RESULT_FILE));
    let _ = std::fs::remove_file(dir.join(RESULT_LINK));
    super::time_series::discard(dir);
    super::analysis::discard(dir);
    let _ = std::fs::remove_dir(dir); // only if empty: never someone else's files
}
