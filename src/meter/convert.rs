//! One metering run: captures in, an RFC 5655 IPFIX file of flows out. The driver both
//! `ipfixsvc convert` and the conversion job use, so they meter identically. It reports progress
//! every [`TICK_PACKETS`] packets through a callback that can also cancel the run.

use super::capture::{CaptureError, CaptureReader};
use super::export::FlowWriter;
use super::flow::{Flow, FlowTable, MeterConfig, Prepared};
use super::packet::{Fragments, PacketInfo, Skip, classify};
use crate::wire::WireError;
use std::io::{Read, Write};

/// Packets between two progress callbacks: ~20 ms of work, so cancelling is prompt and the
/// callback costs nothing measurable.
pub const TICK_PACKETS: u64 = 1 << 16;

/// Packets between preparing a packet (which prefetches its index entry) and counting it; its
/// flow is prefetched half way. Enough for each to arrive from memory, few enough that they
/// are still in cache.
const LOOKAHEAD: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("{input}: {source}")]
    Capture { input: String, source: CaptureError },
    #[error("writing the IPFIX file: {0}")]
    Output(#[from] std::io::Error),
    #[error("encoding flows: {0}")]
    Encode(#[from] WireError),
}

/// What a run did; also what `convert` prints and a job records.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
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

/// Where a run stands, for progress bars and job records.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of the current capture read so far.
    pub position: u64,
    pub packets: u64,
    /// Flows written plus flows still open.
    pub flows: u64,
}

/// Whether a run goes on after a progress report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Continue,
    Cancel,
}

pub struct Conversion<W: Write> {
    table: FlowTable,
    frags: Fragments,
    writer: FlowWriter<W>,
    /// Packets prepared and not yet counted, a ring: the one prepared `LOOKAHEAD` packets ago
    /// is at `oldest`.
    pending: [Option<(PacketInfo, Prepared)>; LOOKAHEAD],
    oldest: usize,
    done: Vec<Flow>,
    summary: ConvertSummary,
}

impl<W: Write> Conversion<W> {
    pub fn new(out: W, cfg: MeterConfig, observation_domain: u32) -> Result<Self, ConvertError> {
        Ok(Conversion {
            table: FlowTable::new(cfg),
            frags: Fragments::default(),
            writer: FlowWriter::new(out, observation_domain, cfg.biflow)?,
            pending: [None; LOOKAHEAD],
            oldest: 0,
            done: Vec::new(),
            summary: ConvertSummary::default(),
        })
    }

    /// Where the run stands, `position` bytes into the current capture.
    fn progress(&self, position: u64) -> Progress {
        Progress {
            position,
            packets: self.summary.packets,
            flows: self.writer.flows + self.table.len() as u64,
        }
    }

    /// Meters every packet of one capture (flows go on across captures). A capture that ends
    /// early is a warning, not an error. Returns `Control::Cancel` if `tick` asked to stop.
    pub fn meter<R: Read>(
        &mut self,
        input: &str,
        capture: &mut CaptureReader<R>,
        tick: &mut dyn FnMut(&Progress) -> Control,
    ) -> Result<Control, ConvertError> {
        let mut next_tick = self.summary.packets + TICK_PACKETS;
        while let Some(p) = capture.next_packet() {
            let p = match p {
                Ok(p) => p,
                Err(e) => {
                    self.summary
                        .warnings
                        .push(format!("{input}: capture ends early: {e}"));
                    break;
                }
            };
            let s = &mut self.summary;
            s.packets += 1;
            match classify(&p, &mut self.frags) {
                Ok(info) => {
                    s.metered_packets += 1;
                    s.octets += info.ip_len as u64;
                    let prepared = self.table.prepare(&info);
                    // Half way: its index entry has arrived, its flow is asked for.
                    let half = (self.oldest + LOOKAHEAD / 2) % LOOKAHEAD;
                    if let Some((_, prepared)) = &self.pending[half] {
                        self.table.prefetch(prepared);
                    }
                    if let Some((p, prepared)) = self.pending[self.oldest].replace((info, prepared))
                    {
                        self.table.count(&p, &prepared, &mut self.done);
                    }
                    self.oldest = (self.oldest + 1) % LOOKAHEAD;
                }
                Err(Skip::NotIp) => s.skipped_not_ip += 1,
                Err(Skip::Malformed(_)) => s.skipped_malformed += 1,
                Err(Skip::OrphanFragment) => s.skipped_orphan_fragments += 1,
            }
            self.write_done()?;
            if self.summary.packets >= next_tick {
                next_tick += TICK_PACKETS;
                if tick(&self.progress(capture.position())) == Control::Cancel {
                    self.count_pending()?;
                    return Ok(Control::Cancel);
                }
            }
        }
        self.count_pending()?;
        Ok(tick(&self.progress(capture.position())))
    }

    fn count_pending(&mut self) -> Result<(), ConvertError> {
        for i in 0..LOOKAHEAD {
            let Some((p, prepared)) = self.pending[(self.oldest + i) % LOOKAHEAD].take() else {
                continue;
            };
            self.table.count(&p, &prepared, &mut self.done);
        }
        self.write_done()
    }

    /// Writes the flows that ended.
    fn write_done(&mut self) -> Result<(), ConvertError> {
        for f in self.done.drain(..) {
            self.writer.write(&f)?;
        }
        Ok(())
    }

    /// Ends every open flow, writes it, and flushes the file.
    pub fn finish(mut self) -> Result<(ConvertSummary, W), ConvertError> {
        self.summary.evicted_flows = self.table.evicted;
        self.table.finish(&mut self.done);
        for f in self.done.drain(..) {
            self.writer.write(&f)?;
        }
        self.summary.flows = self.writer.flows;
        let out = self.writer.finish()?;
        Ok((self.summary, out))
    }
}
