//! A file written under a temporary name and renamed when it is complete: by size, by age, or
//! when the stream stops. A reader that lists the directory sees only whole files (as nfcapd's
//! `nfcapd.current` becomes `nfcapd.<time>`).
//!
//! The file being written is `<dir>/.<stem>.part`; a finished one is
//! `<dir>/<stem>-<UTC start, YYYYMMDDTHHMMSS.mmmZ>[-n].<ext>` (`-n` when that name exists).

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};
use tokio::io::AsyncWriteExt;

pub struct Rotating {
    dir: PathBuf,
    stem: String,
    ext: String,
    rotate_bytes: Option<u64>,
    rotate_after: Option<Duration>,
    current: Option<Current>,
}

struct Current {
    file: tokio::fs::File,
    part: PathBuf,
    started: SystemTime,
    opened: Instant,
    bytes: u64,
}

/// Milliseconds too: files finished within one second still sort by name in time order.
fn utc_stamp(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    chrono::DateTime::from_timestamp(d.as_secs() as i64, d.subsec_nanos())
        .map(|d| d.format("%Y%m%dT%H%M%S%.3fZ").to_string())
        .unwrap_or_else(|| d.as_secs().to_string())
}

impl Rotating {
    pub fn new(
        dir: PathBuf,
        stem: String,
        ext: String,
        rotate_bytes: Option<u64>,
        rotate_secs: Option<u64>,
    ) -> Rotating {
        Rotating {
            dir,
            stem,
            ext,
            rotate_bytes,
            rotate_after: rotate_secs.map(Duration::from_secs),
            current: None,
        }
    }

    /// The file being written is full or old enough to finish.
    pub fn due(&self) -> bool {
        self.current.as_ref().is_some_and(|c| {
            self.rotate_bytes.is_some_and(|b| c.bytes >= b)
                || self.rotate_after.is_some_and(|a| c.opened.elapsed() >= a)
        })
    }

    pub async fn write(&mut self, buf: &[u8]) -> std::io::Result<()> {
        if self.current.is_none() {
            tokio::fs::create_dir_all(&self.dir).await.map_err(|e| {
                std::io::Error::new(e.kind(), format!("{}: {e}", self.dir.display()))
            })?;
            let part = self.dir.join(format!(".{}.part", self.stem));
            let file = tokio::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .open(&part)
                .await
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", part.display())))?;
            self.current = Some(Current {
                file,
                part,
                started: SystemTime::now(),
                opened: Instant::now(),
                bytes: 0,
            });
        }
        if let Some(c) = &mut self.current {
            c.file.write_all(buf).await?;
            c.bytes += buf.len() as u64;
        }
        Ok(())
    }

    pub async fn flush(&mut self) -> std::io::Result<()> {
        if let Some(c) = &mut self.current {
            c.file.flush().await?;
        }
        Ok(())
    }

    /// Finishes the file being written: flushed, synced, renamed to its final name. Returns
    /// the name (none when no file was open).
    pub async fn finish(&mut self) -> std::io::Result<Option<PathBuf>> {
        let Some(mut c) = self.current.take() else {
            return Ok(None);
        };
        c.file.flush().await?;
        c.file.sync_data().await?;
        drop(c.file);
        let base = format!("{}-{}", self.stem, utc_stamp(c.started));
        let mut name = self.dir.join(format!("{base}.{}", self.ext));
        let mut n = 1;
        while tokio::fs::try_exists(&name).await.unwrap_or(false) {
            name = self.dir.join(format!("{base}-{n}.{}", self.ext));
            n += 1;
        }
        tokio::fs::rename(&c.part, &name).await?;
        Ok(Some(name))
    }
}
