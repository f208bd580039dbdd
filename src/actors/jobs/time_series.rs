//! The work of a TimeSeriesJob (see `runner.rs`): `ipfixsvc timeseries` over the job's inputs
//! (IPFIX files, a conversion's result, captures of export traffic), written as
//! `series.json`, `series.csv`, `series.svg` and `series.png` in the job's folder, with
//! `result` a link to the JSON. Each file is written as a `.part` and renamed.

use super::runner::{Found, Outcome, PROGRESS_EVERY};
use crate::analysis::chart::Measure;
use crate::analysis::key::KeySpec;
use crate::analysis::output::{format_of, rfc3339, write_file};
use crate::analysis::series::{Builder, Options};
use crate::cli::dump::{Visit, each_message};
use crate::store::jobs::{JobProgress, SeriesSummary, TimeSeriesOptions};
use crate::wire::{DecodedMessage, Registry, TemplateKind};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// The result's files, in the order they are written (`result` links to the first).
pub const FILES: [&str; 4] = ["series.json", "series.csv", "series.svg", "series.png"];

/// Problems kept in the record (all are counted): enough to see what is wrong with an input
/// without letting a broken one fill the record.
const MAX_PROBLEMS: usize = 20;

/// The whole run, on a blocking thread: the files appear only when each is complete, and all of
/// them before `result`.
pub fn run(
    inputs: &[String],
    options: &TimeSeriesOptions,
    max_cells: usize,
    dir: &Path,
    cancel: &AtomicBool,
    report: &mut dyn FnMut(JobProgress),
) -> Outcome {
    let result = series_into(inputs, options, max_cells, dir, cancel, report);
    super::runner::ended(dir, &FILES, result, Found::TimeSeries)
}

/// Removes what a time-series job writes (its files and their `.part`s), nothing else.
pub fn discard(dir: &Path) {
    for f in FILES {
        let path = dir.join(f);
        let _ = std::fs::remove_file(part_of(&path));
        let _ = std::fs::remove_file(path);
    }
}

/// The name `write_file` writes before renaming (`series.part.json`).
fn part_of(path: &Path) -> PathBuf {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    path.with_extension(format!("part.{ext}"))
}

/// Reads the inputs into a sink, reporting progress and watching the cancel flag.
/// Positions (messages, packets) between two looks at the clock for progress reports.
const CLOCK_EVERY: u32 = 64;

struct Reading<'a> {
    sink: &'a mut dyn FnMut(&str, &DecodedMessage),
    cancel: &'a AtomicBool,
    report: &'a mut dyn FnMut(JobProgress),
    /// Bytes of the inputs before each one.
    before: Vec<u64>,
    sizes: Vec<u64>,
    total: u64,
    read: u64,
    records: u64,
    last_report: Option<Instant>,
    /// Positions seen: the clock is read every `CLOCK_EVERY` of them, not after each packet.
    positions: u32,
    problems: Vec<String>,
    cancelled: bool,
}

impl Visit for Reading<'_> {
    fn message(&mut self, exporter: &str, msg: &DecodedMessage) -> ControlFlow<()> {
        (self.sink)(exporter, msg);
        self.records += msg
            .batches
            .iter()
            .filter(|b| b.plan.template.kind == TemplateKind::Data)
            .map(|b| b.len() as u64)
            .sum::<u64>();
        ControlFlow::Continue(())
    }

    fn problem(&mut self, text: String) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(text);
        }
    }

    /// After every message or packet, decoded or not: the cancel flag and progress are
    /// looked at here, so a capture with nothing to decode is cancellable too.
    fn position(&mut self, file: usize, bytes: u64) -> ControlFlow<()> {
        let (before, size) = (
            self.before.get(file).copied().unwrap_or(0),
            self.sizes.get(file).copied().unwrap_or(0),
        );
        self.read = before + bytes.min(size);
        if self.cancel.load(Ordering::Relaxed) {
            self.cancelled = true;
            return ControlFlow::Break(());
        }
        self.positions = self.positions.wrapping_add(1);
        if self.positions % CLOCK_EVERY == 1
            && self
                .last_report
                .is_none_or(|t| t.elapsed() >= PROGRESS_EVERY)
        {
            self.last_report = Some(Instant::now());
            let p = self.progress();
            (self.report)(p);
        }
        ControlFlow::Continue(())
    }
}

impl Reading<'_> {
    fn progress(&self) -> JobProgress {
        JobProgress {
            bytes_read: self.read,
            bytes_total: self.total,
            packets: 0,
            flows: self.records,
        }
    }
}

/// What reading the inputs gave besides what the sink took.
pub(super) struct Read {
    pub counts: crate::cli::dump::Counts,
    pub problems: Vec<String>,
    pub progress: JobProgress,
}

/// Reads every input (IPFIX files, captures of export traffic) into `sink`, reporting progress
/// by bytes. `None` when cancelled; an error when no input could be read at all.
pub(super) fn read_inputs(
    inputs: &[String],
    cancel: &AtomicBool,
    report: &mut dyn FnMut(JobProgress),
    sink: &mut dyn FnMut(&str, &DecodedMessage),
) -> Result<Option<Read>, String> {
    let mut sizes = Vec::with_capacity(inputs.len());
    for input in inputs {
        let meta = std::fs::metadata(input).map_err(|e| format!("{input}: {e}"))?;
        // A FIFO or device would block the worker in open() or read() with no way to cancel.
        if !meta.is_file() {
            return Err(format!("{input}: not a regular file"));
        }
        sizes.push(meta.len());
    }
    let before = sizes
        .iter()
        .scan(0u64, |sum, s| {
            let b = *sum;
            *sum += s;
            Some(b)
        })
        .collect();
    let files: Vec<PathBuf> = inputs.iter().map(PathBuf::from).collect();
    let mut reading = Reading {
        sink,
        cancel,
        report,
        before,
        total: sizes.iter().sum(),
        sizes,
        read: 0,
        records: 0,
        last_report: None,
        positions: 0,
        problems: Vec::new(),
        cancelled: false,
    };
    let _span =
        tracing::info_span!("job input", files = inputs.len(), bytes = reading.total).entered();
    let (counts, unusable) = each_message(&files, Registry::builtin(), &[], &mut reading);
    if reading.cancelled || cancel.load(Ordering::Relaxed) {
        return Ok(None);
    }
    if unusable == inputs.len() {
        return Err(format!(
            "none of the {unusable} inputs could be read: {}",
            reading.problems.join("; ")
        ));
    }
    Ok(Some(Read {
        counts,
        progress: JobProgress {
            bytes_read: reading.total,
            ..reading.progress()
        },
        problems: std::mem::take(&mut reading.problems),
    }))
}

/// Writes `text` to `dir/name` through a `.part` file (`name.part.ext`) renamed when complete.
pub(super) fn write_text(dir: &Path, name: &str, text: &[u8]) -> Result<(), String> {
    let path = dir.join(name);
    let part = part_of(&path);
    std::fs::write(&part, text)
        .and_then(|()| std::fs::rename(&part, &path))
        .map_err(|e| format!("{name}: {e}"))
}

/// The series of every input, written out. `None` when cancelled.
fn series_into(
    inputs: &[String],
    options: &TimeSeriesOptions,
    max_cells: usize,
    dir: &Path,
    cancel: &AtomicBool,
    report: &mut dyn FnMut(JobProgress),
) -> Result<Option<(SeriesSummary, JobProgress)>, String> {
    let start = Instant::now();
    options.check()?;
    let registry = Registry::builtin();
    let by = options
        .by
        .as_deref()
        .map(|b| KeySpec::parse(b, &registry))
        .transpose()
        .map_err(|e| format!("by {e}"))?;
    let mut builder = Builder::new(Options {
        interval_secs: options.interval_secs,
        by,
        top: options.top as usize,
        forward_only: options.forward_only,
        max_cells,
        ..Options::default()
    })
    .map_err(|e| e.to_string())?;
    let Some(Read {
        counts,
        problems,
        progress,
    }) = read_inputs(inputs, cancel, report, &mut |e, m| builder.message(e, m))?
    else {
        return Ok(None);
    };
    let set = builder.finish().map_err(|e| e.to_string())?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let measure = Measure::from(options.chart);
    for name in FILES {
        let path = dir.join(name);
        let format = format_of(&path)?;
        write_file(
            &set,
            &path,
            format,
            measure,
            (options.width, options.height),
        )
        .map_err(|e| format!("{name}: {e}"))?;
    }
    let seconds = start.elapsed().as_secs_f64();
    let starts: Vec<i64> = set.starts().collect();
    let summary = SeriesSummary {
        records: counts.data_records,
        octets: set.totals.octets,
        packets: set.totals.packets,
        flows: set.totals.flows,
        untimed: set.totals.untimed,
        placed_by_export_time: set.placement.by_export_time,
        keys: set.series.iter().map(|s| s.key.clone()).collect(),
        intervals: set.intervals as u64,
        first: starts.first().map(|t| rfc3339(*t)),
        last: starts.last().map(|t| rfc3339(*t)),
        errors: counts.errors,
        problems,
        seconds,
        records_per_second: counts.data_records as f64 / seconds.max(1e-9),
    };
    Ok(Some((summary, progress)))
}
