//! `ipfixsvc timeseries`: IPFIX files (and captures carrying IPFIX or NetFlow) -> time series
//! per interval and key, as JSON, CSV, SVG or PNG (by the output's extension).

use crate::analysis::chart::Measure;
use crate::analysis::key::KeySpec;
use crate::analysis::output::{self, format_of, write_file};
use crate::analysis::series::{Builder, Options};
use crate::wire::Registry;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, clap::Args)]
pub struct TimeseriesArgs {
    /// IPFIX files (a conversion result, an upload, any RFC 5655 file) or captures carrying
    /// IPFIX, NetFlow v9 or v5.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Interval length in seconds (1 to 86400). Intervals start at multiples of it since the
    /// Unix epoch (UTC), so series of different runs line up.
    #[arg(long, default_value_t = 60)]
    pub interval: u64,
    /// Key: an Information Element (`destinationTransportPort`, `protocolIdentifier`), an
    /// address element cut to a prefix (`sourceIPv4Address/24`), or `@exporter`. Without it,
    /// one series of everything.
    #[arg(long)]
    pub by: Option<String>,
    /// Keys with a series of their own (the most octets over the whole range); the rest are
    /// added up in `other`.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
    /// Biflows: count the forward direction only (by default the reverse counters are added).
    #[arg(long)]
    pub forward_only: bool,
    /// Where to write, by extension: `.json`, `.csv`, `.svg`, `.png` (repeatable). None: JSON
    /// on standard output.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub outputs: Vec<PathBuf>,
    /// Also decode this UDP/TCP port in captures (repeatable).
    #[arg(long = "port", value_name = "PORT")]
    pub ports: Vec<u16>,
    /// Extra Information Elements (TOML, as `dump --elements`).
    #[arg(long, value_name = "FILE")]
    pub elements: Option<PathBuf>,
    /// What charts show.
    #[arg(long, value_enum, default_value = "bits")]
    pub chart: Measure,
    /// Chart size in pixels, WIDTHxHEIGHT.
    #[arg(long, default_value = "1200x600", value_parser = parse_size)]
    pub size: (u32, u32),
    /// Key x interval cells held at most (memory: about 64 bytes each).
    #[arg(long, default_value_t = 8_000_000)]
    pub max_cells: usize,
}

/// What a run did (standard error, one JSON line).
#[derive(Debug, serde::Serialize)]
pub struct Summary {
    pub records: u64,
    /// Records with no time: not in any interval.
    pub untimed: u64,
    /// Records with uptime-based times and no system init time: placed to end at their
    /// message's export time.
    pub placed_by_export_time: u64,
    pub series: usize,
    pub intervals: usize,
    pub errors: u64,
    pub seconds: f64,
    pub records_per_second: f64,
}

/// `1200x600` -> (1200, 600), each side 100 to 8000 pixels.
fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let (w, h) = s
        .split_once('x')
        .ok_or_else(|| format!("{s}: WIDTHxHEIGHT, e.g. 1200x600"))?;
    let side = |v: &str| {
        v.parse::<u32>()
            .ok()
            .filter(|v| (100..=8000).contains(v))
            .ok_or_else(|| format!("{s}: each side 100 to 8000 pixels"))
    };
    Ok((side(w)?, side(h)?))
}

pub fn run(args: &TimeseriesArgs) -> anyhow::Result<Summary> {
    let started = std::time::Instant::now();
    let registry = match &args.elements {
        Some(p) => Arc::new(Registry::with_extra_file(p)?),
        None => Registry::builtin(),
    };
    let formats = args
        .outputs
        .iter()
        .map(|p| format_of(p))
        .collect::<Result<Vec<_>, _>>()
        .map_err(anyhow::Error::msg)?;
    let by = args
        .by
        .as_deref()
        .map(|b| KeySpec::parse(b, &registry))
        .transpose()
        .map_err(|e| anyhow::anyhow!("--by {e}"))?;
    let mut builder = Builder::new(Options {
        interval_secs: args.interval,
        by,
        top: args.top,
        forward_only: args.forward_only,
        max_cells: args.max_cells,
        ..Options::default()
    })?;
    let (counts, unusable) = crate::cli::dump::each_message(
        &args.files,
        registry,
        &args.ports,
        &mut crate::cli::dump::Each(|exporter: &str, msg: &_| builder.message(exporter, msg)),
    );
    if unusable == args.files.len() {
        return Err(super::Reported(format!("none of the {unusable} inputs could be read")).into());
    }
    let set = builder.finish()?;
    if args.outputs.is_empty() {
        let mut out = std::io::stdout().lock();
        output::write_json(&set, &mut out).map_err(super::stdout_error)?;
        out.flush().map_err(super::stdout_error)?;
    }
    let measure = args.chart;
    for (path, format) in args.outputs.iter().zip(formats) {
        write_file(&set, path, format, measure, args.size)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(Summary {
        records: counts.data_records,
        untimed: set.totals.untimed,
        placed_by_export_time: set.placement.by_export_time,
        series: set.series.len(),
        intervals: set.intervals,
        errors: counts.errors,
        seconds,
        records_per_second: counts.data_records as f64 / seconds.max(1e-9),
    })
}
