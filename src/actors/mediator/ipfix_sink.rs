//! The `ipfix` sink: the stream's records re-exported over TCP or UDP (the Exporting Process
//! is `mediation::export::Reexporter`; this owns the socket).
//!
//! TCP: a broken connection is made again with exponential backoff (100 ms doubling to 30 s);
//! each new connection is a new Transport Session (sequence numbers from 0, every template
//! before its first record), and the records of the write that failed are sent again on it (at
//! least once). After 5 failures in a row the circuit breaker opens: a `block` stream waits
//! for the next probe (its sessions wait in turn, and TCP pushes back on the exporters); a
//! `drop` stream drops and counts what comes until a probe (half-open) connects.
//! UDP: no connection; templates again every `template_refresh_secs`.

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
    pub async fn write(&mut self, recs: &[Records]) -> std::io::Result<u64> {
        let n: u64 = recs.iter().map(|r| r.count() as u64).sum();
        if n == 0 {
            return Ok(0);
        }
        loop {
            if !self.connected() {
                if let Gate::Drop = self.breaker.gate().await {
                    self.breaker.drop_records(n);
                    return Ok(0);
                }
                if let Err(e) = self.connect().await {
                    self.failed(&e);
                    continue;
                }
            }
            if matches!(self.socket, Socket::Udp(_)) && self.last_refresh.elapsed() >= self.refresh
            {
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

    /// Messages are sent as each write finishes them: nothing is held.
    pub async fn flush(&mut self) -> std::io::Result<u64> {
        if let Socket::Tcp(Some(s)) = &mut self.socket
            && let Err(e) = s.flush().await
        {
            self.failed(&e);
        }
        Ok(0)
    }
}
