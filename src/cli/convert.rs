//! `ipfixsvc convert`: packet captures (pcap, pcapng; read as streams) -> an RFC 5655 IPFIX file
//! of biflows (or uniflows), through the same metering code the jobs will use. A summary goes to
//! standard error as JSON.

use crate::meter::capture::CaptureReader;
use crate::meter::export::FlowWriter;
use crate::meter::flow::{FlowTable, MeterConfig};
use crate::meter::packet::{Fragments, Skip, classify};
use anyhow::Context;
use std::fs::File;
use std::io::{BufReader, BufWriter};
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
}

#[derive(Debug, Default, serde::Serialize)]
pub struct ConvertSummary {
    pub packets: u64,
    pub metered_packets: u64,
    pub skipped_not_ip: u64,
    pub skipped_malformed: u64,
    pub skipped_orphan_fragments: u64,
    pub flows: u64,
    pub evicted_flows: u64,
    pub octets: u64,
    pub seconds: f64,
    pub packets_per_second: f64,
    /// A capture that ended early (truncated file): what was read is converted.
    pub warnings: Vec<String>,
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
    let mut writer = FlowWriter::new(
        BufWriter::with_capacity(1 << 20, out),
        args.domain,
        cfg.biflow,
    )?;
    let mut table = FlowTable::new(cfg);
    let mut frags = Fragments::default();
    let mut done = Vec::new();
    let mut s = ConvertSummary::default();
    for input in &args.inputs {
        let file = File::open(input).with_context(|| format!("{}", input.display()))?;
        let mut cap = CaptureReader::new(BufReader::with_capacity(1 << 20, file))
            .with_context(|| format!("{}", input.display()))?;
        while let Some(p) = cap.next_packet() {
            let p = match p {
                Ok(p) => p,
                Err(e) => {
                    s.warnings
                        .push(format!("{}: capture ends early: {e}", input.display()));
                    break;
                }
            };
            s.packets += 1;
            match classify(&p, &mut frags) {
                Ok(info) => {
                    s.metered_packets += 1;
                    s.octets += info.ip_len as u64;
                    table.observe(&info, &mut done);
                }
                Err(Skip::NotIp) => s.skipped_not_ip += 1,
                Err(Skip::Malformed(_)) => s.skipped_malformed += 1,
                Err(Skip::OrphanFragment) => s.skipped_orphan_fragments += 1,
            }
            for f in done.drain(..) {
                writer.write(&f)?;
            }
        }
    }
    s.evicted_flows = table.evicted;
    table.finish(&mut done);
    for f in done.drain(..) {
        writer.write(&f)?;
    }
    s.flows = writer.flows;
    writer.finish()?;
    s.seconds = start.elapsed().as_secs_f64();
    s.packets_per_second = s.packets as f64 / s.seconds.max(1e-9);
    Ok(s)
}
