//! The `ndjson` sink: one JSON object per record (as `ipfixsvc dump` prints them), on standard
//! output, appended to a file, or into files finished by size and age (`rotating.rs`), written
//! in large chunks.

use super::rotating::Rotating;
use crate::mediation::Records;
use crate::wire::Registry;
use crate::wire::ndjson::Origin;
use crate::wire::ndjson_writer::RecordWriter;
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Appends the NDJSON lines of every record of `recs` that is in (their metadata as each
/// one's source and domain say) to `out`.
pub fn render(out: &mut Vec<u8>, writer: &mut RecordWriter, recs: &Records, registry: &Registry) {
    let msg = &recs.msg;
    for (k, b) in msg.batches.iter().enumerate() {
        writer.write_rows(out, origin(recs), msg, b, recs.rows(k), registry);
    }
}

/// The metadata of `recs`'s lines: its source, and its domain when a transform changed it.
fn origin(recs: &Records) -> Origin<'_> {
    Origin {
        exporter: &recs.source.exporter,
        tenant: Some(&recs.source.tenant),
        domain: (recs.domain != recs.msg.header.observation_domain).then_some(recs.domain),
    }
}

/// Rendered bytes gathered before a write.
const CHUNK: usize = 1 << 20;

enum Out {
    Plain(Box<dyn AsyncWrite + Send + Unpin>),
    Rotating(Box<Rotating>),
}

pub struct NdjsonSink {
    out: Out,
    buf: Vec<u8>,
    /// Bytes rendered before they are written: `CHUNK`, or a quarter of `rotate_bytes` so a
    /// rotated file passes its size by little.
    chunk: usize,
    /// Records rendered into `buf`, not yet handed to the OS.
    buffered: u64,
    registry: Arc<Registry>,
    writer: RecordWriter,
}

impl NdjsonSink {
    pub async fn open(
        path: Option<&str>,
        rotate: (Option<u64>, Option<u64>),
        registry: Arc<Registry>,
    ) -> std::io::Result<NdjsonSink> {
        let out = match path {
            None => Out::Plain(Box::new(tokio::io::stdout())),
            Some(p) if rotate.0.is_some() || rotate.1.is_some() => {
                let p = Path::new(p);
                let dir = p.parent().map(Path::to_path_buf).unwrap_or_default();
                let stem = p
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "records".into());
                let ext = p
                    .extension()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| "ndjson".into());
                Out::Rotating(Box::new(Rotating::new(dir, stem, ext, rotate.0, rotate.1)))
            }
            Some(p) => Out::Plain(Box::new({
                if let Some(dir) = Path::new(p).parent()
                    && !dir.as_os_str().is_empty()
                {
                    tokio::fs::create_dir_all(dir).await.map_err(|e| {
                        std::io::Error::new(e.kind(), format!("{}: {e}", dir.display()))
                    })?;
                }
                tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .await
                    .map_err(|e| std::io::Error::new(e.kind(), format!("{p}: {e}")))?
            })),
        };
        let chunk = rotate
            .0
            .map_or(CHUNK, |b| (b / 4).clamp(4096, CHUNK as u64) as usize);
        Ok(NdjsonSink {
            out,
            chunk,
            buf: Vec::with_capacity(chunk + 64 * 1024),
            buffered: 0,
            registry,
            writer: RecordWriter::new(),
        })
    }

    /// Records rendered but not yet handed to the OS (lost if the stream dies).
    pub fn buffered(&self) -> u64 {
        self.buffered
    }

    /// Renders `batch`; returns how many records went to the OS (whole chunks).
    pub async fn write(&mut self, batch: &[Records]) -> std::io::Result<u64> {
        let mut written = 0;
        for recs in batch {
            let (msg, origin) = (&recs.msg, origin(recs));
            for (k, b) in msg.batches.iter().enumerate() {
                let rows = recs.selected[k].as_ref().map_or(b.len(), |m| m.count());
                self.writer
                    .write_rows(&mut self.buf, origin, msg, b, recs.rows(k), &self.registry);
                self.buffered += rows as u64;
                // One Data Set renders to well under a megabyte: checked per batch.
                if self.buf.len() >= self.chunk {
                    written += self.flush().await?;
                }
            }
        }
        Ok(written)
    }

    /// Hands everything rendered to the OS; returns how many records that was. A rotating
    /// file past its size or age is finished first (records never straddle two files).
    pub async fn flush(&mut self) -> std::io::Result<u64> {
        match &mut self.out {
            Out::Plain(o) => {
                if !self.buf.is_empty() {
                    o.write_all(&self.buf).await?;
                }
                o.flush().await?;
            }
            Out::Rotating(r) => {
                if r.due() {
                    r.finish().await?;
                }
                if !self.buf.is_empty() {
                    r.write(&self.buf).await?;
                }
                r.flush().await?;
            }
        }
        self.buf.clear();
        Ok(std::mem::take(&mut self.buffered))
    }

    /// A rotating file old enough is finished even when no record comes.
    pub async fn tick(&mut self) -> std::io::Result<()> {
        if let Out::Rotating(r) = &mut self.out
            && r.due()
        {
            r.finish().await?;
        }
        Ok(())
    }

    /// The stream stops: the file being written is finished.
    pub async fn close(&mut self) -> std::io::Result<()> {
        if let Out::Rotating(r) = &mut self.out {
            r.finish().await?;
        }
        Ok(())
    }
}
