//! PcapConversionJob: one actor per conversion job, a linked child of the JobSupervisor.
//!
//! Role: runs the metering run (the same one `ipfixsvc convert` runs) on tokio's blocking pool,
//! so the runtime that serves the API and the collector never waits on it; passes progress to
//! the supervisor; reports the outcome.
//!
//! Messages: `Progress` and `Done` (from its own metering task), `Cancel` (from the supervisor).
//!
//! Lifecycle: `pre_start` hands the run to the blocking pool and returns at once. The run writes
//! `<dir>/result.ipfix.part` and renames it to `result.ipfix` on success; on failure or cancel it
//! removes the part file. On `Done` the actor tells the supervisor `Finished`, and the
//! supervisor stops it. If the actor panics, the supervisor sees `ActorFailed`, raises the
//! cancel flag (the metering thread stops at its next progress tick) and removes the files.

use super::JobMsg;
use crate::meter::convert::{Control, Conversion, ConvertError, ConvertSummary};
use crate::store::files::{Access, open_capture};
use crate::store::jobs::{JobId, JobOptions, JobProgress};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use ractor_cluster::RactorMessage;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The result file of a job, inside its own folder.
pub const RESULT_FILE: &str = "result.ipfix";
/// A hard link to the result under the name the API serves it by (`.../jobs/{id}/result`), so
/// the HTTP file server streams it (with Range) straight from `storage.dir`.
pub const RESULT_LINK: &str = "result";
pub const PART_FILE: &str = "result.ipfix.part";

/// A record in the store is rewritten at most this often while a job runs.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// How a run ended, as the supervisor records it.
#[derive(Debug, Clone)]
pub enum Outcome {
    Succeeded {
        summary: ConvertSummary,
        progress: JobProgress,
        artifact: PathBuf,
    },
    Cancelled,
    Failed(String),
}

#[derive(RactorMessage)]
pub enum ConversionMsg {
    Progress(JobProgress),
    Done(Outcome),
    Cancel,
}

pub struct ConversionArgs {
    /// The run's span (`job run`): the metering runs in it, one child span per input.
    pub span: tracing::Span,
    pub id: JobId,
    /// Whose job it is: the thread's CPU time is this tenant's.
    pub tenant: String,
    pub inputs: Vec<String>,
    pub options: JobOptions,
    /// This job's folder: `<storage.dir>/jobs/<id>`.
    pub dir: PathBuf,
    pub supervisor: ActorRef<JobMsg>,
    /// Shared with the supervisor, which raises it if this actor dies.
    pub cancel: Arc<AtomicBool>,
}

pub struct ConversionState {
    id: JobId,
    supervisor: ActorRef<JobMsg>,
    cancel: Arc<AtomicBool>,
    #[cfg(feature = "fault-injection")]
    fail_after_packets: Option<u64>,
}

impl ConversionState {
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

pub struct PcapConversionJob;

impl Actor for PcapConversionJob {
    type Msg = ConversionMsg;
    type State = ConversionState;
    type Arguments = ConversionArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<ConversionMsg>,
        args: ConversionArgs,
    ) -> Result<ConversionState, ActorProcessingErr> {
        let state = ConversionState {
            id: args.id,
            supervisor: args.supervisor,
            cancel: args.cancel.clone(),
            #[cfg(feature = "fault-injection")]
            fail_after_packets: args.options.fail_after_packets,
        };
        let me = myself.clone();
        let run = tokio::task::spawn_blocking(move || {
            let _span = args.span.enter();
            let mut thread = crate::telemetry::process::JobThread::enter(&args.tenant);
            let outcome = run(
                &args.inputs,
                &args.options,
                &args.dir,
                &args.cancel,
                &mut |p| {
                    thread.account();
                    // The actor may be gone (panicked): the run stops on the cancel flag.
                    let _ = me.cast(ConversionMsg::Progress(p));
                },
            );
            if let Outcome::Failed(_) = &outcome {
                args.span.record("otel.status_code", "ERROR");
            }
            outcome
        });
        tokio::spawn(async move {
            let outcome = match run.await {
                Ok(o) => o,
                Err(e) => Outcome::Failed(format!("metering panicked: {}", join_error_text(e))),
            };
            let _ = myself.cast(ConversionMsg::Done(outcome));
        });
        Ok(state)
    }

    async fn handle(
        &self,
        _myself: ActorRef<ConversionMsg>,
        msg: ConversionMsg,
        state: &mut ConversionState,
    ) -> Result<(), ActorProcessingErr> {
        crate::telemetry::metrics::ActorKind::ConversionJob
            .timed(async move {
                match msg {
                    ConversionMsg::Progress(p) => {
                        state.maybe_fail(p.packets);
                        let _ = state.supervisor.cast(JobMsg::Progress(state.id, p));
                    }
                    ConversionMsg::Done(outcome) => {
                        if let Outcome::Succeeded { summary, .. } = &outcome {
                            state.maybe_fail(summary.packets);
                        }
                        let _ = state.supervisor.cast(JobMsg::Finished(state.id, outcome));
                    }
                    ConversionMsg::Cancel => state.cancel.store(true, Ordering::Relaxed),
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

/// The whole run, on a blocking thread: the result file appears only when it is complete.
pub fn run(
    inputs: &[String],
    options: &JobOptions,
    dir: &Path,
    cancel: &AtomicBool,
    report: &mut dyn FnMut(JobProgress),
) -> Outcome {
    let part = dir.join(PART_FILE);
    let result = std::fs::create_dir_all(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))
        .and_then(|()| meter_into(inputs, options, &part, cancel, report));
    match result {
        Ok(Some((summary, progress))) => {
            let artifact = dir.join(RESULT_FILE);
            match std::fs::rename(&part, &artifact)
                .and_then(|()| std::fs::hard_link(&artifact, dir.join(RESULT_LINK)))
            {
                Ok(()) => Outcome::Succeeded {
                    summary,
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

/// A job that did not succeed leaves nothing behind: its part file, and its folder if empty.
pub fn discard(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(PART_FILE));
    let _ = std::fs::remove_file(dir.join(RESULT_FILE));
    let _ = std::fs::remove_file(dir.join(RESULT_LINK));
    let _ = std::fs::remove_dir(dir); // only if empty: never someone else's files
}

/// Meters every input into `part`, exactly as `ipfixsvc convert` does. `None` when cancelled.
fn meter_into(
    inputs: &[String],
    options: &JobOptions,
    part: &Path,
    cancel: &AtomicBool,
    report: &mut dyn FnMut(JobProgress),
) -> Result<Option<(ConvertSummary, JobProgress)>, String> {
    let start = Instant::now();
    let mut sizes = Vec::with_capacity(inputs.len());
    for input in inputs {
        let meta = std::fs::metadata(input).map_err(|e| format!("{input}: {e}"))?;
        // A FIFO or device would block the worker in open() or read() with no way to cancel.
        if !meta.is_file() {
            return Err(format!("{input}: not a regular file"));
        }
        sizes.push(meta.len());
    }
    let bytes_total = sizes.iter().sum();
    let text = |e: ConvertError| e.to_string();
    let out = File::create(part).map_err(|e| format!("{}: {e}", part.display()))?;
    let mut conv = Conversion::new(
        BufWriter::with_capacity(1 << 20, out),
        options.meter_config(),
        options.domain,
    )
    .map_err(text)?;
    let mut done_bytes = 0;
    let mut last_report: Option<Instant> = None;
    for (input, size) in inputs.iter().zip(&sizes) {
        let _span = tracing::info_span!(
            "job input",
            file = %Path::new(input).file_name().unwrap_or_default().to_string_lossy(),
            bytes = size,
        )
        .entered();
        // Read, not mapped: a file cut short under a mapped reader raises SIGBUS, which would
        // take the whole node down (collector sessions, other jobs) for one tenant's upload.
        let mut capture =
            open_capture(Path::new(input), Access::Read).map_err(|e| format!("{input}: {e}"))?;
        let control = conv
            .meter(input, &mut capture, &mut |p| {
                if cancel.load(Ordering::Relaxed) {
                    return Control::Cancel;
                }
                if last_report.is_none_or(|t| t.elapsed() >= PROGRESS_EVERY) {
                    last_report = Some(Instant::now());
                    report(JobProgress {
                        bytes_read: done_bytes + p.position.min(*size),
                        bytes_total,
                        packets: p.packets,
                        flows: p.flows,
                    });
                }
                Control::Continue
            })
            .map_err(text)?;
        if control == Control::Cancel {
            return Ok(None);
        }
        done_bytes += size;
    }
    let (mut summary, mut out) = conv.finish().map_err(text)?;
    out.flush()
        .map_err(|e| format!("{}: {e}", part.display()))?;
    summary.seconds = start.elapsed().as_secs_f64();
    summary.packets_per_second = summary.packets as f64 / summary.seconds.max(1e-9);
    let progress = JobProgress {
        bytes_read: bytes_total,
        bytes_total,
        packets: summary.packets,
        flows: summary.flows,
    };
    Ok(Some((summary, progress)))
}
