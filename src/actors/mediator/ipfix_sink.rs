//! The `ipfix` sink: the stream's records re-exported over TCP or UDP (the Exporting Process
//! is `mediation::export::Reexporter`; this owns the socket).
//!
//! TCP: a broken connection is made again with exponential backoff (100 ms doubling to 30 s);
//! each new connection is a new Transport Session (sequence numbers from 0, every template
//! before its first record), and the records of the write that failed are sent again on it (at
//! least once). After 5 failures in a row the circuit breaker opens: a `block` stream waits
//! for the next probe (its sessions wait in turn, and TCP pushes back on the exporters); a
//! `drop` stream drops and counts what comes until a probe (half-open) connects.
//! TCP writes gather messages up to `TCP_CHUNK` bytes (and go out when the stream flushes:
//! when it runs idle, and at least each tick): a write per message cost a tenth of the
//! collector's rate. The records behind them are held until written, so a failed write sends
//! them again on the next connection.
//! UDP: no connection; templates again every `template_refresh_secs`; a datagram per message.

use super::StreamStats;
use super::breaker::{Breaker, Gate};
use crate::mediation::Records;
use crate::mediation::export::Reexporter;
use crate::mediation::spec::{OnFull, SinkTransport};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};

const CONNECT_WITHIN: Duration = Duration::from_secs(5);
const TCP_CHUNK: usize = 64 << 10;

enum Socket {
    Tcp(Option<TcpStream>),
    Udp(Option<UdpSocket>),
}

pub struct IpfixSink {
    to: String,
    socket: Socket,
    reexporter: Reexporter,
    stats: Arc<StreamStats>,
    breaker: Breaker,
    refresh: Duration,
    last_refresh: Instant,
    /// TCP: finished messages not yet written, and the records in them.
    out: Vec<u8>,
    held: Vec<Records>,
    held_records: u64,
}

fn now_secs() -> u32 {
    crate::store::unix_secs() as u32
}

impl IpfixSink {
    pub fn new(
        transport: SinkTransport,
        to: String,
        refresh_secs: Option<u32>,
        max_message: Option<u32>,
        policy: OnFull,
        stats: Arc<StreamStats>,
    ) -> IpfixSink {
        let (socket, default_max) = match transport {
            SinkTransport::Tcp => (Socket::Tcp(None), 65535),
            SinkTransport::Udp => (Socket::Udp(None), 1472),
        };
        IpfixSink {
            breaker: Breaker::new(to.clone(), policy, stats.clone()),
            to,
            socket,
            reexporter: Reexporter::new(max_message.map_or(default_max, |m| m as usize)),
            stats,
            refresh: Duration::from_secs(refresh_secs.unwrap_or(60) as u64),
            last_refresh: Instant::now(),
            out: Vec::new(),
            held: Vec::new(),
            held_records: 0,
        }
    }

    fn connected(&self) -> bool {
        match &self.socket {
            Socket::Tcp(s) => s.is_some(),
            Socket::Udp(s) => s.is_some(),
        }
    }

    /// One attempt to (re)connect; a new Transport Session when it works.
    async fn connect(&mut self) -> std::io::Result<()> {
        match &mut self.socket {
            Socket::Tcp(s) => {
                let c = tokio::time::timeout(CONNECT_WITHIN, TcpStream::connect(&self.to))
                    .await
                    .map_err(|_| {
                        std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
                    })??;
                let _ = c.set_nodelay(true);
                *s = Some(c);
            }
            Socket::Udp(s) => {
                let peer = tokio::net::lookup_host(&self.to)
                    .await?
                    .next()
                    .ok_or_else(|| {
                        std::io::Error::new(std::io::ErrorKind::NotFound, "no address")
                    })?;
                let bind = if peer.is_ipv4() {
                    "0.0.0.0:0"
                } else {
                    "[::]:0"
                };
                let u = UdpSocket::bind(bind).await?;
                u.connect(peer).await?;
                *s = Some(u);
                self.last_refresh = Instant::now();
            }
        }
        self.reexporter.new_session();
        Ok(())
    }

    fn failed(&mut self, e: &std::io::Error) {
        match &mut self.socket {
            Socket::Tcp(s) => *s = None,
            Socket::Udp(s) => *s = None,
        }
        self.breaker.failed(e);
    }

    /// Sends every finished message.
    async fn send_ready(&mut self) -> std::io::Result<()> {
        let msgs = self.reexporter.take_ready();
        match &mut self.socket {
            Socket::Tcp(Some(s)) => {
                for m in msgs {
                    s.write_all(&m).await?;
                }
            }
            Socket::Udp(Some(u)) => {
                for m in msgs {
                    u.send(&m).await?;
                }
            }
            _ => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotConnected,
                    "not connected",
                ));
            }
        }
        Ok(())
    }

    /// Re-exports `recs`; returns how many records went to the socket. Never fails: a broken
    /// peer is the breaker's business.
    /// Connected, or `false` when the breaker says to drop.
    async fn ready(&mut self) -> bool {
        while !self.connected() {
            if let Gate::Drop = self.breaker.gate().await {
                return false;
            }
            if let Err(e) = self.connect().await {
                self.failed(&e);
            }
        }
        true
    }

    /// Records held and not yet written.
    pub fn buffered(&self) -> u64 {
        self.held_records
    }

    pub async fn write(&mut self, recs: &[Records]) -> std::io::Result<u64> {
        let n: u64 = recs.iter().map(|r| r.count() as u64).sum();
        if n == 0 {
            return Ok(0);
        }
        if matches!(self.socket, Socket::Tcp(_)) {
            return self.write_tcp(recs, n).await;
        }
        loop {
            if !self.ready().await {
                self.breaker.drop_records(n);
                return Ok(0);
            }
            if self.last_refresh.elapsed() >= self.refresh {
                let _ = self.reexporter.refresh_templates();
                self.last_refresh = Instant::now();
            }
            let mut skipped = 0;
            for r in recs {
                skipped += self.reexporter.add(r, now_secs()).total();
            }
            self.reexporter.flush();
            match self.send_ready().await {
                Ok(()) => {
                    self.breaker.succeeded();
                    self.stats.filtered.fetch_add(skipped, Ordering::Relaxed);
                    return Ok(n - skipped);
                }
                Err(e) => {
                    // The records go again, whole, on the next connection.
                    self.failed(&e);
                }
            }
        }
    }

    /// Makes `recs` into messages held for one write of `TCP_CHUNK`; returns the records
    /// written (the held ones, when this filled the chunk).
    async fn write_tcp(&mut self, recs: &[Records], n: u64) -> std::io::Result<u64> {
        if !self.ready().await {
            self.breaker.drop_records(n);
            return Ok(0);
        }
        let skipped = self.reexporter.encode_into(recs, now_secs(), &mut self.out);
        self.stats.filtered.fetch_add(skipped, Ordering::Relaxed);
        self.held.extend(recs.iter().cloned());
        self.held_records += n - skipped;
        if self.out.len() >= TCP_CHUNK {
            return self.send_held().await;
        }
        Ok(0)
    }

    /// Writes the held messages; on a failure, makes them again on the next connection (a new
    /// Transport Session) and writes them there. Returns the records written.
    async fn send_held(&mut self) -> std::io::Result<u64> {
        loop {
            if self.out.is_empty() {
                self.held.clear();
                return Ok(std::mem::take(&mut self.held_records));
            }
            let fresh = !self.connected();
            if !self.ready().await {
                self.breaker.drop_records(self.held_records);
                self.held_records = 0;
                self.held.clear();
                self.out.clear();
                return Ok(0);
            }
            if fresh {
                // The messages held were made for the broken session.
                self.out.clear();
                let _ = self
                    .reexporter
                    .encode_into(&self.held, now_secs(), &mut self.out);
            }
            let sent = match &mut self.socket {
                Socket::Tcp(Some(s)) => s.write_all(&self.out).await,
                _ => Ok(()),
            };
            match sent {
                Ok(()) => {
                    self.breaker.succeeded();
                    self.out.clear();
                }
                Err(e) => self.failed(&e),
            }
        }
    }

    /// Writes what is held (TCP) and flushes the socket; returns the records written.
    pub async fn flush(&mut self) -> std::io::Result<u64> {
        let written = if matches!(self.socket, Socket::Tcp(_)) {
            self.send_held().await?
        } else {
            0
        };
        if let Socket::Tcp(Some(s)) = &mut self.socket
            && let Err(e) = s.flush().await
        {
            self.failed(&e);
        }
        Ok(written)
    }
}
