//! The work of an AnalysisJob (see `runner.rs`): one analysis (`analysis::report`) of the
//! job's inputs, written as `analysis.json` and its chart `analysis.svg`, with `result` a link
//! to the JSON. Inputs are read as a time-series job reads them.

use super::runner::{Found, Outcome};
use super::time_series::{Read, read_inputs, write_text};
use crate::analysis::chart;
use crate::analysis::key::KeySpec;
use crate::analysis::report::{self, Rank, Table, Totals};
use crate::analysis::series::{Builder, Options};
use crate::store::jobs::{AnalysisKind, AnalysisOptions, AnalysisSummary, JobProgress};
use crate::wire::Registry;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

/// The result's files (`result` links to the first).
pub const FILES: [&str; 2] = ["analysis.json", "analysis.svg"];

pub fn run(
    inputs: &[String],
    options: &AnalysisOptions,
    max_cells: usize,
    dir: &Path,
    cancel: &AtomicBool,
    report: &mut dyn FnMut(JobProgress),
) -> Outcome {
    let outcome = std::fs::create_dir_all(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))
        .and_then(|()| analyse(inputs, options, max_cells, dir, cancel, report));
    super::runner::ended(dir, &FILES, outcome, Found::Analysis)
}

/// Removes what an analysis job writes, nothing else.
pub fn discard(dir: &Path) {
    for f in FILES {
        let _ = std::fs::remove_file(dir.join(f));
        let (stem, ext) = f.split_once('.').unwrap_or((f, ""));
        let _ = std::fs::remove_file(dir.join(format!("{stem}.part.{ext}")));
    }
}

/// The JSON document, by analysis.
#[derive(serde::Serialize)]
struct Doc<'a> {
    analysis: AnalysisKind,
    records: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    tables: Option<&'a [Table]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    anomalies: Option<&'a report::Anomalies>,
}

fn analyse(
    inputs: &[String],
    o: &AnalysisOptions,
    max_cells: usize,
    dir: &Path,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(JobProgress),
) -> Result<Option<(AnalysisSummary, JobProgress)>, String> {
    let start = Instant::now();
    o.check()?;
    let size = (o.width, o.height);
    let (doc, svg, counts, problems, read_progress, found) = match o.analysis {
        AnalysisKind::TopTalkers | AnalysisKind::Mix => {
            let keys: Vec<String> = match o.analysis {
                AnalysisKind::TopTalkers => vec![
                    format!("@source/{}/{}", o.v4_prefix, o.v6_prefix),
                    format!("@destination/{}/{}", o.v4_prefix, o.v6_prefix),
                ],
                _ => vec![
                    "protocolIdentifier".into(),
                    "destinationTransportPort".into(),
                ],
            };
            let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
            let mut totals = Totals::new(&refs, o.forward_only, max_cells)?;
            let Some(Read {
                counts,
                problems,
                progress: p,
            }) = read_inputs(inputs, cancel, progress, &mut |e, m| totals.message(e, m))?
            else {
                return Ok(None);
            };
            let sets = totals.finish().map_err(|e| e.to_string())?;
            let top = o.top as usize;
            let tables: Vec<Table> = match o.analysis {
                AnalysisKind::TopTalkers => vec![
                    report::table(&sets[0], Rank::Octets, top, "sources by octets"),
                    report::table(&sets[1], Rank::Octets, top, "destinations by octets"),
                    report::table(&sets[0], Rank::Flows, top, "sources by flows"),
                    report::table(&sets[1], Rank::Flows, top, "destinations by flows"),
                ],
                _ => vec![
                    report::table(&sets[0], Rank::Octets, top, "protocols by octets"),
                    report::table(&sets[1], Rank::Octets, top, "destination ports by octets"),
                ],
            };
            let svg = chart::tables_svg(&tables, size).map_err(|e| e.to_string())?;
            let found = tables.iter().map(|t| t.rows.len() as u64).sum();
            let doc = serde_json::to_vec_pretty(&Doc {
                analysis: o.analysis,
                records: counts.data_records,
                tables: Some(&tables),
                anomalies: None,
            })
            .map_err(|e| e.to_string())?;
            (doc, svg, counts, problems, p, found)
        }
        AnalysisKind::Anomalies => {
            let registry = Registry::builtin();
            let by = KeySpec::parse(&o.by, &registry).map_err(|e| format!("by {e}"))?;
            let series = |by: Option<KeySpec>| {
                Builder::new(Options {
                    interval_secs: o.interval_secs,
                    by,
                    top: usize::MAX,
                    forward_only: o.forward_only,
                    max_cells,
                    ..Options::default()
                })
                .map_err(|e| e.to_string())
            };
            let (mut total, mut keyed) = (series(None)?, series(Some(by))?);
            let Some(Read {
                counts,
                problems,
                progress: p,
            }) = read_inputs(inputs, cancel, progress, &mut |e, m| {
                total.message(e, m);
                keyed.message(e, m);
            })?
            else {
                return Ok(None);
            };
            let keyed = keyed.window(i64::MIN, i64::MAX);
            let total = total.finish().map_err(|e| e.to_string())?;
            let a = report::anomalies(&total, &keyed, o.measure, o.window as usize, o.k);
            let starts: Vec<i64> = total.starts().collect();
            let svg = chart::anomalies_svg(&a, &starts, size).map_err(|e| e.to_string())?;
            let doc = serde_json::to_vec_pretty(&Doc {
                analysis: o.analysis,
                records: counts.data_records,
                tables: None,
                anomalies: Some(&a),
            })
            .map_err(|e| e.to_string())?;
            (doc, svg, counts, problems, p, a.found as u64)
        }
    };
    write_text(dir, FILES[1], svg.as_bytes())?;
    write_text(dir, FILES[0], &doc)?;
    let summary = AnalysisSummary {
        analysis: o.analysis,
        records: counts.data_records,
        found,
        errors: counts.errors,
        problems,
        seconds: start.elapsed().as_secs_f64(),
    };
    Ok(Some((summary, read_progress)))
}
