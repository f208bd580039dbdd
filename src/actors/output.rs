//! Where decoded records go while no mediator stream is configured: NDJSON on standard output
//! (or appended to a file), written by one task behind a bounded queue, so sessions render in
//! parallel and wait (TCP backpressure) when the writer falls behind. In `count` mode nothing is
//! written.

use crate::config::{OutputFormat, OutputSettings};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

#[derive(Debug, Clone)]
pub struct RecordSink {
    /// Held by every session even in `count` mode: the writer ends when the last one goes, so
    /// its end means "drained" (or, before shutdown, "failed") in both modes.
    tx: mpsc::Sender<Vec<u8>>,
    renders: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("the record output is closed")]
pub struct SinkClosed;

impl RecordSink {
    /// Starts the writer; its handle ends (with the first write error, if any) once every
    /// `RecordSink` clone is dropped and the queue is drained.
    pub async fn start(
        settings: &OutputSettings,
    ) -> std::io::Result<(RecordSink, JoinHandle<std::io::Result<()>>)> {
        if settings.format == OutputFormat::Count {
            let (tx, mut rx) = mpsc::channel::<Vec<u8>>(1);
            let sink = RecordSink { tx, renders: false };
            let writer = tokio::spawn(async move {
                while rx.recv().await.is_some() {}
                Ok(())
            });
            return Ok((sink, writer));
        }
        let mut out: Box<dyn tokio::io::AsyncWrite + Send + Unpin> = if settings.path.is_empty() {
            Box::new(tokio::io::stdout())
        } else {
            Box::new(
                tokio::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&settings.path)
                    .await?,
            )
        };
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(settings.queue_chunks);
        let writer = tokio::spawn(async move {
            while let Some(chunk) = rx.recv().await {
                out.write_all(&chunk).await?;
                // Flush when the queue is empty: low latency when idle, large writes when busy.
                if rx.is_empty() {
                    out.flush().await?;
                }
            }
            out.flush().await
        });
        Ok((RecordSink { tx, renders: true }, writer))
    }

    pub fn renders(&self) -> bool {
        self.renders
    }

    /// Queues one rendered chunk, waiting while the queue is full.
    pub async fn write(&self, chunk: Vec<u8>) -> Result<(), SinkClosed> {
        if !self.renders {
            return Ok(());
        }
        self.tx.send(chunk).await.map_err(|_| SinkClosed)
    }
}
