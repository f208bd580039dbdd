//! `ipfixsvc convert`: packet captures (pcap, pcapng; mapped, so never read whole into memory) ->
//! an RFC 5655 IPFIX file of biflows (or uniflows), through the same metering run the conversion
//! jobs use. A progress bar on a terminal; a summary to standard error as JSON.

pub use crate::meter::convert::ConvertSummary;
use crate::meter::convert::{Control, Conversion};
use crate::meter::flow::MeterConfig;
use crate::store::files::{Access, open_capture};
use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use std::fs::File;
use std::io::{BufWriter, IsTerminal};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Debug, clap::Args)]
pub struct ConvertArgs {
    /// Captures, read in order (one metering run across all of them).
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// The IPFIX file to write.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Seconds without a packet before a flow ends.
    #[arg(long, default_value_t = 300)]
    pub idle_timeout: u64,
    /// Seconds after which a long flow is exported and counted anew.
    #[arg(long, default_value_t = 1800)]
    pub active_timeout: u64,
    /// One flow per direction instead of RFC 5103 biflows.
    #[arg(long)]
    pub uniflow: bool,
    /// Flows held at once; the one idle the longest is ended when the table is full.
    #[arg(long, default_value_t = 1_000_000)]
    pub max_flows: usize,
    /// Observation Domain of the exported messages.
    #[arg(long, default_value_t = 0)]
    pub domain: u32,
    /// No progress bar (there is none anyway when standard error is not a terminal).
    #[arg(short, long)]
    pub quiet: bool,
    /// Read captures with read(2) instead of mapping them (slower; for captures another process
    /// may still write or truncate: a mapped file cut short ends the process with SIGBUS).
    #[arg(long)]
    pub no_mmap: bool,
}

pub fn run(args: &ConvertArgs) -> anyhow::Result<ConvertSummary> {
    let start = Instant::now();
    let cfg = MeterConfig {
        idle_ms: args.idle_timeout.saturating_mul(1000),
        active_ms: args.active_timeout.saturating_mul(1000),
        biflow: !args.uniflow,
        max_flows: args.max_flows.max(1),
    };
    let out = File::create(&args.output).with_context(|| format!("{}", args.output.display()))?;
    let mut run = Conversion::new(BufWriter::with_capacity(1 << 20, out), cfg, args.domain)?;
    // A bar only for people: on a terminal, and not when asked to be quiet.
    let show = !args.quiet && std::io::stderr().is_terminal();
    let access = if args.no_mmap {
        Access::Read
    } else {
        Access::Map { populate: false }
    };
    for (n, input) in args.inputs.iter().enumerate() {
        let shown = input.display().to_string();
        let mut capture = open_capture(input, access).with_context(|| shown.clone())?;
        let bar = match (show, capture.total()) {
            (false, _) => ProgressBar::hidden(),
            (true, Some(total)) => ProgressBar::new(total).with_style(bar_style(
                "{prefix} [{bar:30}] {bytes}/{total_bytes} {msg} ({eta})",
            )),
            (true, None) => {
                ProgressBar::new_spinner().with_style(bar_style("{prefix} {spinner} {msg}"))
            }
        };
        bar.set_prefix(format!("[{}/{}] {shown}", n + 1, args.inputs.len()));
        run.meter(&shown, &mut capture, &mut |p| {
            bar.set_position(p.position);
            bar.set_message(format!("{} packets, {} flows", p.packets, p.flows));
            Control::Continue
        })?;
        bar.finish_and_clear();
    }
    let (mut s, _) = run.finish()?;
    s.seconds = start.elapsed().as_secs_f64();
    s.packets_per_second = s.packets as f64 / s.seconds.max(1e-9);
    Ok(s)
}

fn bar_style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}
