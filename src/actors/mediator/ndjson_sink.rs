//! The `ndjson` sink: one JSON object per record (as `ipfixsvc dump` prints them), on standard
//! output or appended to a file, written in large chunks.

use crate::mediation::Records;
use crate::wire::Registry;
use crate::wire::ndjson::{Origin, write_record};
use std::sync::Arc;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Rendered bytes gathered before a write.
const CHUNK: usize = 1 << 20;

pub struct NdjsonSink {
    out: Box<dyn AsyncWrite + Send + Unpin>,
    buf: Vec<u8>,
    /// Records rendered into `buf`, not yet handed to the OS.
    buffered: u64,
    registry: Arc<Registry>,
}

impl NdjsonSink {
    pub async fn open(path: Option<&str>, registry: Arc<Registry>) -> std::io::Result<NdjsonSink> {
        let out: Box<dyn AsyncWrite + Send + Unpin> = match path {
            None => Box::new(tokio::io::stdout()),
            Some(p) => Box::new({
                if let Some(dir) = std::path::Path::new(p).parent()
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
            }),
        };
        Ok(NdjsonSink {
            out,
            buf: Vec::with_capacity(CHUNK + 64 * 1024),
            buffered: 0,
            registry,
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
            let msg = &recs.msg;
            let origin = Origin {
                exporter: &recs.source.exporter,
                tenant: Some(&recs.source.tenant),
                domain: (recs.domain != msg.header.observation_domain).then_some(recs.domain),
            };
            for (k, b) in msg.batches.iter().enumerate() {
                for r in recs.rows(k) {
                    write_record(&mut self.buf, origin, msg, b, r, &self.registry);
                    self.buffered += 1;
                    if self.buf.len() >= CHUNK {
                        written += self.flush().await?;
                    }
                }
            }
        }
        Ok(written)
    }

    /// Hands everything rendered to the OS; returns how many records that was.
    pub async fn flush(&mut self) -> std::io::Result<u64> {
        if !self.buf.is_empty() {
            self.out.write_all(&self.buf).await?;
            self.buf.clear();
        }
        self.out.flush().await?;
        Ok(std::mem::take(&mut self.buffered))
    }
}
