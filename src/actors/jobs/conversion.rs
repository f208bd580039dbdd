//! The work of a PcapConversionJob (see `runner.rs`): the metering run `ipfixsvc convert` runs,
//! into `<dir>/result.ipfix.part`, renamed to `result.ipfix` (with its `result` link) when it
//! is complete.

use super::runner::{Found, Outcome, PART_FILE, PROGRESS_EVERY, RESULT_FILE};
use crate::meter::convert::{Control, Conversion, ConvertError, ConvertSummary};
use crate::store::files::{Access, open_capture};
use crate::store::jobs::{JobOptions, JobProgress};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// The whole run, on a blocking thread: the result file appears only when it is complete.
pub fn run(
    inputs: &[String],
    options: &JobOptions,
    dir: &Path,
    cancel: &AtomicBool,
    report: &mut dyn FnMut(JobProgress),
) -> Outcome {
    let part = dir.join(PART_FILE);
    let artifact = dir.join(RESULT_FILE);
    let result = std::fs::create_dir_all(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))
        .and_then(|()| meter_into(inputs, options, &part, cancel, report))
        .and_then(|done| match done {
            Some(d) => std::fs::rename(&part, &artifact)
                .map(|()| Some(d))
                .map_err(|e| format!("{}: {e}", artifact.display())),
            None => Ok(None),
        });
    // The files list of a conversion's record stays empty: its one file is `result`.
    super::runner::ended(dir, &[RESULT_FILE], result, |summary, _| {
        Found::Conversion(summary)
    })
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
