//! The `ipfix_file` sink: RFC 5655 files, each readable alone (every template before the first
//! record that uses it, sequence numbers from 0), finished by size and age and renamed when
//! complete: the compact store of flows, as nfcapd's files are for nfdump.

use super::StreamStats;
use super::rotating::Rotating;
use crate::mediation::Records;
use crate::mediation::export::Reexporter;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

pub const DEFAULT_ROTATE_BYTES: u64 = 256 << 20;
pub const DEFAULT_ROTATE_SECS: u64 = 300;

pub struct IpfixFileSink {
    file: Rotating,
    reexporter: Reexporter,
    stats: Arc<StreamStats>,
}

impl IpfixFileSink {
    pub fn new(
        dir: &str,
        stream: &str,
        rotate_bytes: Option<u64>,
        rotate_secs: Option<u64>,
        stats: Arc<StreamStats>,
    ) -> Self {
        IpfixFileSink {
            file: Rotating::new(
                PathBuf::from(dir),
                stream.to_string(),
                "ipfix".into(),
                Some(rotate_bytes.unwrap_or(DEFAULT_ROTATE_BYTES)),
                Some(rotate_secs.unwrap_or(DEFAULT_ROTATE_SECS)),
            ),
            reexporter: Reexporter::new(u16::MAX as usize),
            stats,
        }
    }

    /// Writes `recs` as whole messages; returns how many records went to the OS.
    pub async fn write(&mut self, recs: &[Records]) -> std::io::Result<u64> {
        if self.file.due() {
            self.file.finish().await?;
        }
        if self.file.is_new() {
            // A new file is a new session: its templates come first, its numbers from 0.
            self.reexporter.new_session();
        }
        let now = crate::store::unix_secs() as u32;
        let (mut n, mut skipped) = (0, 0);
        for r in recs {
            n += r.count() as u64;
            skipped += self.reexporter.add(r, now).total();
        }
        self.reexporter.flush();
        for m in self.reexporter.take_ready() {
            self.file.write(&m).await?;
        }
        self.stats.filtered.fetch_add(skipped, Ordering::Relaxed);
        Ok(n - skipped)
    }

    pub async fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush().await
    }

    pub async fn tick(&mut self) -> std::io::Result<()> {
        if self.file.due() {
            self.file.finish().await?;
        }
        Ok(())
    }

    pub async fn close(&mut self) -> std::io::Result<()> {
        self.file.finish().await.map(|_| ())
    }
}
