//! `ipfixsvc send`: replay an IPFIX file (RFC 5655) or the IPFIX/NetFlow v9/v5 messages in a
//! capture to a collector, over TCP (default), TLS or UDP, at an optional record rate, a number
//! of times: a real Exporting Process for demos, tests and load.

use crate::meter::capture::{CaptureReader, FileKind, sniff_reader};
use crate::meter::messages::{Found, MessageFinder};
use crate::wire::header::{
    IPFIX_VERSION, NETFLOW_V5_VERSION, NETFLOW_V9_VERSION, peek_observation_domain,
};
use crate::wire::{Decoder, DecoderOptions, MessageReader, Registry};
use anyhow::Context;
use bytes::Bytes;
use rustls::pki_types::ServerName;
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct SendArgs {
    /// An IPFIX file, or a capture whose IPFIX/NetFlow v9/v5 messages are replayed.
    pub file: PathBuf,
    /// The collector, HOST:PORT.
    #[arg(long)]
    pub to: String,
    /// Send over UDP, one message per datagram (default: one TCP connection).
    #[arg(long)]
    pub udp: bool,
    /// Data records per second (paced per message); unlimited when absent.
    #[arg(long, value_name = "RECORDS_PER_S")]
    pub rate: Option<f64>,
    /// Send the file this many times; sequence numbers keep counting across repeats.
    #[arg(long = "loop", default_value_t = 1, value_name = "N")]
    pub loops: u64,
    /// Capture ports holding IPFIX besides 4739, 2055, 9995 and 9996 (repeatable).
    #[arg(long = "port", value_name = "PORT")]
    pub ports: Vec<u16>,
    /// The local address to send from (an exporter's own address: `cluster/` fronts spread
    /// exporters by it); the system picks one when absent.
    #[arg(long, value_name = "ADDR")]
    pub from: Option<std::net::IpAddr>,
    /// IPFIX over TLS (RFC 7011 section 11) to the collector's `collector.tls_listen`.
    #[arg(long, conflicts_with = "udp", requires = "ca")]
    pub tls: bool,
    /// With --tls: PEM CA certificates the collector's certificate must be signed by.
    #[arg(long, value_name = "PEM")]
    pub ca: Option<PathBuf>,
    /// With --tls: this exporter's PEM certificate, for a collector that asks for one.
    #[arg(long, value_name = "PEM", requires = "key")]
    pub cert: Option<PathBuf>,
    /// With --tls: the private key of --cert.
    #[arg(long, value_name = "PEM", requires = "cert")]
    pub key: Option<PathBuf>,
    /// TCP/TLS: when the collector hangs up (a node drained or lost), connect again and resume
    /// with the first message its TCP had not acknowledged, without sending templates again
    /// (the cluster's collectors share them). Each reconnection is reported on standard error.
    #[arg(long, conflicts_with = "udp")]
    pub reconnect: bool,
    /// With --reconnect: how long to keep trying to connect again after a loss.
    #[arg(
        long,
        default_value_t = 60,
        value_name = "SECS",
        requires = "reconnect"
    )]
    pub reconnect_for: u64,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct SendSummary {
    pub messages: u64,
    pub records: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub records_per_second: f64,
    /// --reconnect: connections made again after the collector hung up.
    pub reconnects: u64,
    /// --reconnect: messages sent again because the lost connection had not acknowledged them
    /// (counted once in `messages` and `records`).
    pub resent_messages: u64,
    pub resent_records: u64,
}

/// The socket under TLS, counting the bytes written onto it: the TCP acknowledgements that
/// --reconnect resumes after count those, handshake and record framing included.
struct Counted {
    tcp: TcpStream,
    written: u64,
}

impl Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.tcp.read(buf)
    }
}

impl Write for Counted {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.tcp.write(buf)?;
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.tcp.flush()
    }
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, Counted>;

/// The TLS client's configuration and the name the collector's certificate must carry.
type TlsClient = (std::sync::Arc<rustls::ClientConfig>, ServerName<'static>);

/// A TCP connection to `to`, from `from` when given (bound before connecting).
fn connect(to: SocketAddr, from: Option<std::net::IpAddr>) -> std::io::Result<TcpStream> {
    let Some(ip) = from else {
        return TcpStream::connect_timeout(&to, Duration::from_secs(5));
    };
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(to),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.bind(&SocketAddr::new(ip, 0).into())?;
    socket.connect_timeout(&to.into(), Duration::from_secs(5))?;
    Ok(socket.into())
}

/// The TLS client for --tls: trusts --ca, presents --cert when given; the collector's name is
/// --to's host (an address or a DNS name its certificate must carry).
fn tls_client(args: &SendArgs) -> anyhow::Result<TlsClient> {
    use crate::actors::cluster_tls::{ClusterTls, chain_and_key, roots};
    let path = |p: &PathBuf| p.to_string_lossy().into_owned();
    let ca = args.ca.as_ref().context("--tls needs --ca")?;
    let roots = roots("--ca", &path(ca)).map_err(anyhow::Error::msg)?;
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => {
            let (chain, key) = chain_and_key(("--cert", &path(cert)), ("--key", &path(key)))
                .map_err(anyhow::Error::msg)?;
            builder.with_client_auth_cert(chain, key)?
        }
        _ => builder.with_no_client_auth(),
    };
    let name = ClusterTls::server_name(&args.to).map_err(|e| anyhow::anyhow!("--to {e}"))?;
    Ok((std::sync::Arc::new(config), name))
}

/// After our FIN, how long send waits for the collector to read the rest and close in turn.
const LINGER: Duration = Duration::from_secs(5);

/// After a hangup, how long --reconnect waits for the collector's TCP to acknowledge what is in
/// flight (a collector handing us off reads on until we close) before it decides what to resend.
const SETTLE: Duration = Duration::from_secs(2);

/// How the collector's side of a TCP connection ended.
#[derive(Debug)]
enum Hangup {
    /// FIN: it closed the connection.
    Closed,
    /// RST or another error: it closed with our data unread, or the connection broke.
    Broken(std::io::Error),
}

/// Watches the read side of the TCP connection. An IPFIX collector never writes (RFC 7011: the
/// Collecting Process only receives), so a read that returns means the collector closed the
/// connection (0 bytes) or reset it (an error). Without the watch, a collector that hangs up
/// mid-stream goes unnoticed until a write fails, or never, when the rest of the file fits in
/// the socket buffers.
struct Watcher {
    hangup: std::sync::mpsc::Receiver<Hangup>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watcher {
    fn start(stream: &TcpStream) -> std::io::Result<Watcher> {
        let mut reader = stream.try_clone()?;
        let (tx, hangup) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let end = loop {
                match reader.read(&mut buf) {
                    Ok(0) => break Hangup::Closed,
                    // Bytes from a collector mean nothing in IPFIX (TLS's own records aside):
                    // ignored.
                    Ok(_) => continue,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => break Hangup::Broken(e),
                }
            };
            // No receiver any more is fine: send has finished or failed already.
            let _ = tx.send(end);
        });
        Ok(Watcher {
            hangup,
            thread: Some(thread),
        })
    }
}

/// One TCP (or TLS) connection to the collector.
struct Connection {
    tcp: TcpStream,
    tls: Option<Box<Tls>>,
    watcher: Watcher,
    /// Bytes written on plain TCP (TLS counts its own in `Counted`).
    written: u64,
}

impl Connection {
    fn open(
        to: SocketAddr,
        from: Option<std::net::IpAddr>,
        tls: Option<&TlsClient>,
    ) -> anyhow::Result<Connection> {
        let tcp = connect(to, from).with_context(|| format!("connecting to {to}"))?;
        tcp.set_nodelay(true)?;
        let tls = match tls {
            Some((config, name)) => {
                let mut conn = rustls::ClientConnection::new(config.clone(), name.clone())?;
                let mut sock = Counted {
                    tcp: tcp.try_clone()?,
                    written: 0,
                };
                // The handshake now, so a refused certificate is an error here, not a write
                // failure later.
                while conn.is_handshaking() {
                    conn.complete_io(&mut sock).context("TLS handshake")?;
                }
                Some(Box::new(rustls::StreamOwned::new(conn, sock)))
            }
            None => None,
        };
        let watcher = Watcher::start(&tcp)?;
        Ok(Connection {
            tcp,
            tls,
            watcher,
            written: 0,
        })
    }

    fn write(&mut self, m: &[u8]) -> std::io::Result<()> {
        match &mut self.tls {
            // Flushed: the message's TLS records are on the wire, where `wire` counts them.
            Some(t) => t.write_all(m).and_then(|()| t.flush()),
            None => {
                self.tcp.write_all(m)?;
                self.written += m.len() as u64;
                Ok(())
            }
        }
    }

    /// Bytes written onto the TCP connection.
    fn wire(&self) -> u64 {
        self.tls.as_ref().map_or(self.written, |t| t.sock.written)
    }

    /// A hangup the watcher saw, if any.
    fn hangup(&self) -> Option<Hangup> {
        self.watcher
            .hangup
            .try_recv()
            .ok()
            .map(|h| self.reset_or(h))
    }

    /// The hangup behind a failed write: the watcher has the first cause, or is about to.
    /// (EPIPE or ECONNRESET on the socket is the collector hanging up, never the quiet
    /// `| head` case, which is about standard output.)
    fn hangup_after(&self, e: std::io::Error) -> Hangup {
        self.watcher
            .hangup
            .recv_timeout(Duration::from_millis(200))
            .map_or(Hangup::Broken(e), |h| self.reset_or(h))
    }

    /// A reset's error goes to whichever call sees it first: when a write took it, the
    /// watcher's read returns 0 as for a FIN. A FIN leaves the connection half open, a reset
    /// closed.
    fn reset_or(&self, h: Hangup) -> Hangup {
        match h {
            Hangup::Closed if tcp_acked(&self.tcp).is_some_and(|(_, closed)| closed) => {
                Hangup::Broken(std::io::ErrorKind::ConnectionReset.into())
            }
            h => h,
        }
    }

    /// Our end of the stream: TLS's close_notify (so the collector knows the stream was not cut
    /// short), then FIN.
    fn shut_write(&mut self) -> std::io::Result<()> {
        if let Some(t) = &mut self.tls {
            t.conn.send_close_notify();
            t.flush()?;
        }
        self.tcp.shutdown(std::net::Shutdown::Write)
    }

    /// How many of the bytes written the collector's TCP acknowledged, once what was in flight
    /// has settled: everything (a collector handing us off reads on until we close), or what
    /// the connection had acknowledged when it broke. At most SETTLE.
    fn settle(&self) -> u64 {
        let until = Instant::now() + SETTLE;
        loop {
            let Some((acked, closed)) = tcp_acked(&self.tcp) else {
                return 0;
            };
            if acked >= self.wire() || closed || Instant::now() >= until {
                return acked;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // Wakes the watcher's read if the collector is still there, so its thread ends.
        let _ = self.tcp.shutdown(std::net::Shutdown::Both);
        if let Some(t) = self.watcher.thread.take() {
            let _ = t.join();
        }
    }
}

/// The bytes of this connection the peer's TCP acknowledged (TCP_INFO's `tcpi_bytes_acked`,
/// RFC 4898's ThruOctetsAcked), and whether the connection is closed. It stays readable after a
/// reset, as long as the socket is open.
fn tcp_acked(tcp: &TcpStream) -> Option<(u64, bool)> {
    use std::os::fd::AsRawFd;
    // SAFETY: `tcp_info` is plain data, for which all zeroes is a valid value.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: the descriptor is open for the borrow's length, and the kernel writes at most
    // `len` bytes into `info`, which has that many.
    let rc = unsafe {
        libc::getsockopt(
            tcp.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some((info.tcpi_bytes_acked, info.tcpi_state == TCP_CLOSE))
}

/// Linux's TCP_CLOSE state (include/net/tcp_states.h), which libc does not name.
const TCP_CLOSE: u8 = 7;

/// A message sent on the current connection and not yet acknowledged by the collector's TCP.
struct Unacked {
    /// Where the message ends on the connection's wire (`u64::MAX`: not written yet).
    end: u64,
    bytes: Vec<u8>,
    records: u64,
}

/// Checks acknowledgements every this many bytes written: a TCP_INFO per 64 KiB, not per
/// message.
const ACK_CHECK_BYTES: u64 = 64 * 1024;

/// The TCP or TLS Exporting Process. With --reconnect, a collector that hangs up (a node
/// drained or killed) is dialled again (a Kubernetes Service sends the new connection to a live
/// pod), and the stream resumes with the first message its TCP had not acknowledged: bytes the
/// peer acknowledged reached its socket, so sending them again would duplicate records. No
/// template is sent again: the collectors share them (Redis), and the stream goes on as if the
/// connection had not changed.
struct TcpExporter<'a> {
    args: &'a SendArgs,
    to: SocketAddr,
    tls: Option<TlsClient>,
    conn: Connection,
    /// --reconnect only: the messages the current connection has not acknowledged, oldest first.
    unacked: std::collections::VecDeque<Unacked>,
    checked_at: u64,
}

impl TcpExporter<'_> {
    fn send(&mut self, m: Vec<u8>, records: u64, summary: &mut SendSummary) -> anyhow::Result<()> {
        let written = self.conn.write(&m).map_err(|e| self.conn.hangup_after(e));
        let why = match written {
            Ok(()) => {
                if self.args.reconnect {
                    self.unacked.push_back(Unacked {
                        end: self.conn.wire(),
                        bytes: m,
                        records,
                    });
                    if self.conn.wire() - self.checked_at >= ACK_CHECK_BYTES {
                        self.checked_at = self.conn.wire();
                        if let Some((acked, _)) = tcp_acked(&self.conn.tcp) {
                            self.acknowledged(acked);
                        }
                    }
                }
                match self.conn.hangup() {
                    None => return Ok(()),
                    Some(why) => why,
                }
            }
            Err(why) if self.args.reconnect => {
                // Not written whole: sent again after the ones before it.
                self.unacked.push_back(Unacked {
                    end: u64::MAX,
                    bytes: m,
                    records,
                });
                why
            }
            Err(why) => return Err(hung_up(self.to, summary, &why)),
        };
        if !self.args.reconnect {
            return Err(hung_up(self.to, summary, &why));
        }
        self.resume(why, summary)
    }

    /// Forgets the messages the collector's TCP acknowledged.
    fn acknowledged(&mut self, acked: u64) {
        while self.unacked.front().is_some_and(|u| u.end <= acked) {
            self.unacked.pop_front();
        }
    }

    /// --reconnect after `why`: settles what the old connection acknowledged, connects again
    /// (with backoff, for at most --reconnect-for), and sends again what was not acknowledged.
    fn resume(&mut self, mut why: Hangup, summary: &mut SendSummary) -> anyhow::Result<()> {
        loop {
            if matches!(why, Hangup::Closed) {
                // A collector handing us off reads until we close too.
                let _ = self.conn.shut_write();
            }
            let acked = self.conn.settle();
            self.acknowledged(acked);
            let lost_at = Instant::now();
            let (conn, attempts) = self.connect_again(&why, summary)?;
            self.conn = conn;
            self.checked_at = 0;
            summary.reconnects += 1;
            let pending = std::mem::take(&mut self.unacked);
            let (n, r) = (
                pending.len(),
                pending.iter().map(|u| u.records).sum::<u64>(),
            );
            eprintln!(
                "ipfixsvc send: the collector at {} {}; connected again after {:.3} s ({attempts} attempts); sending again {n} messages ({r} records) it had not acknowledged",
                self.to,
                match &why {
                    Hangup::Closed => "closed the connection (FIN)".to_string(),
                    Hangup::Broken(e) => format!("broke the connection ({e})"),
                },
                lost_at.elapsed().as_secs_f64(),
            );
            summary.resent_messages += n as u64;
            summary.resent_records += r;
            let mut failed = None;
            for mut u in pending {
                if failed.is_none() {
                    match self.conn.write(&u.bytes) {
                        Ok(()) => u.end = self.conn.wire(),
                        Err(e) => failed = Some(e),
                    }
                }
                if failed.is_some() {
                    u.end = u64::MAX;
                }
                self.unacked.push_back(u);
            }
            match failed {
                None => return Ok(()),
                Some(e) => why = self.conn.hangup_after(e),
            }
        }
    }

    /// A new connection within --reconnect-for: the first attempt at once, then backing off from
    /// 50 ms to 1 s.
    fn connect_again(
        &self,
        why: &Hangup,
        summary: &SendSummary,
    ) -> anyhow::Result<(Connection, u32)> {
        let start = Instant::now();
        let mut wait = Duration::from_millis(50);
        let mut attempts = 0;
        loop {
            attempts += 1;
            match Connection::open(self.to, self.args.from, self.tls.as_ref()) {
                Ok(c) => return Ok((c, attempts)),
                Err(e) if start.elapsed() >= Duration::from_secs(self.args.reconnect_for) => {
                    return Err(hung_up(self.to, summary, why).context(format!(
                        "no new connection within --reconnect-for {} s ({attempts} attempts; the last: {e:#})",
                        self.args.reconnect_for
                    )));
                }
                Err(_) => {
                    std::thread::sleep(wait);
                    wait = (wait * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// The end of the file: our FIN, and the collector's close in turn. With --reconnect, a
    /// collector lost before it acknowledged everything gets the rest on a new connection.
    fn finish(&mut self, summary: &mut SendSummary) -> anyhow::Result<()> {
        loop {
            // A hangup before our FIN: the collector closed on its own, before the end.
            let early = self.conn.hangup();
            if let Some(why) = &early
                && !self.args.reconnect
            {
                return Err(hung_up(self.to, summary, why));
            }
            let end = match self.conn.shut_write() {
                Err(e) => Some(Hangup::Broken(e)),
                // After our FIN a collector reads what is left and closes in turn: a FIN back
                // is the clean end; a reset means it dropped data unread. One that keeps the
                // connection open is not waited for past LINGER.
                Ok(()) => early.or_else(|| self.conn.watcher.hangup.recv_timeout(LINGER).ok()),
            };
            let Some(why @ Hangup::Broken(_)) = end else {
                return Ok(());
            };
            if !self.args.reconnect {
                return Err(hung_up(self.to, summary, &why));
            }
            let acked = self.conn.settle();
            self.acknowledged(acked);
            if self.unacked.is_empty() {
                return Ok(());
            }
            self.resume(why, summary)?;
        }
    }
}

/// The error for a collector that hung up before send was done.
fn hung_up(to: SocketAddr, summary: &SendSummary, why: &Hangup) -> anyhow::Error {
    let reason = match why {
        Hangup::Broken(e) => format!(": {e}"),
        Hangup::Closed => String::new(),
    };
    anyhow::anyhow!(
        "the collector at {to} closed the connection after {} bytes ({} messages) had been sent{reason}",
        summary.bytes,
        summary.messages
    )
}

/// The messages of `path` in order, with their data record counts (for pacing and summary).
fn messages(path: &Path, ports: &[u16]) -> anyhow::Result<Vec<(Bytes, u64)>> {
    let mut reader = BufReader::with_capacity(
        64 * 1024,
        File::open(path).with_context(|| format!("{}", path.display()))?,
    );
    let mut out = Vec::new();
    let mut decoders: HashMap<(SocketAddr, SocketAddr), Decoder> = HashMap::new();
    let mut count = |key, m: &Bytes| {
        let d = decoders
            .entry(key)
            .or_insert_with(|| Decoder::new(Registry::builtin(), DecoderOptions::default()));
        d.decode(m.clone()).map_or(0, |d| d.data_records() as u64)
    };
    let none: SocketAddr = ([0, 0, 0, 0], 0).into();
    match sniff_reader(&mut reader)? {
        FileKind::Ipfix => {
            for m in MessageReader::new(reader, 65_535) {
                let (_, m) = m?;
                let n = count((none, none), &m);
                out.push((m, n));
            }
        }
        FileKind::Pcap | FileKind::PcapNg => {
            let mut all_ports = crate::cli::dump::DEFAULT_PORTS.to_vec();
            all_ports.extend(ports);
            let mut finder = MessageFinder::new(all_ports, 65_535);
            let mut cap = CaptureReader::new(reader)?;
            let mut found = Vec::new();
            while let Some(p) = cap.next_packet() {
                finder.feed(&p?, &mut found);
                for f in found.drain(..) {
                    if let Found::Message(m) = f {
                        let n = count((m.src, m.dst), &m.bytes);
                        out.push((m.bytes, n));
                    }
                }
            }
        }
        FileKind::Unknown(m) => anyhow::bail!(
            "{}: neither an IPFIX file nor a capture (starts with {m:02x?})",
            path.display()
        ),
    }
    Ok(out)
}

pub fn run(args: &SendArgs) -> anyhow::Result<SendSummary> {
    let msgs = messages(&args.file, &args.ports)?;
    if msgs.is_empty() {
        anyhow::bail!(
            "{}: no IPFIX or NetFlow v9/v5 messages found (a capture's ports other than 4739, 2055, 9995, 9996 need --port)",
            args.file.display()
        );
    }
    if !args.udp
        && msgs
            .iter()
            .any(|(m, _)| !m.starts_with(&IPFIX_VERSION.to_be_bytes()))
    {
        anyhow::bail!(
            "{}: holds NetFlow (v9 or older), which has no message length and cannot be framed on a TCP stream: use --udp",
            args.file.display()
        );
    }
    let to = args
        .to
        .to_socket_addrs()
        .with_context(|| format!("--to {}", args.to))?
        .next()
        .with_context(|| format!("--to {}: no address", args.to))?;
    let mut summary = SendSummary::default();
    let mut udp = None;
    let mut tcp = None;
    if args.udp {
        let local: SocketAddr = if to.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            ([0u16; 8], 0).into()
        };
        let local = args.from.map_or(local, |ip| SocketAddr::new(ip, 0));
        udp = Some(UdpSocket::bind(local).with_context(|| format!("--from {local}"))?);
    } else {
        let tls = args.tls.then(|| tls_client(args)).transpose()?;
        let conn = Connection::open(to, args.from, tls.as_ref())?;
        tcp = Some(TcpExporter {
            args,
            to,
            tls,
            conn,
            unacked: Default::default(),
            checked_at: 0,
        });
    }
    let start = Instant::now();
    // Per-domain sequence numbers, rewritten only when repeating (a single pass is byte-exact).
    let mut seq: HashMap<(u16, u32), u32> = HashMap::new();
    for round in 0..args.loops {
        for (m, records) in &msgs {
            let mut m = m.to_vec();
            if args.loops > 1 {
                renumber(&mut m, *records, &mut seq);
            }
            if let Some(rate) = args.rate.filter(|r| *r > 0.0) {
                let due = start + Duration::from_secs_f64(summary.records as f64 / rate);
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
            }
            let len = m.len() as u64;
            if let Some(t) = &mut tcp {
                t.send(m, *records, &mut summary)?;
            } else if let Some(u) = &udp {
                u.send_to(&m, to).map_err(|e| {
                    anyhow::Error::new(e).context(format!(
                        "sending message {} (round {})",
                        summary.messages + 1,
                        round + 1
                    ))
                })?;
            }
            summary.messages += 1;
            summary.records += records;
            summary.bytes += len;
        }
    }
    // The sending time: the wait for the collector's close below is not part of it.
    summary.seconds = start.elapsed().as_secs_f64();
    if let Some(t) = &mut tcp {
        t.finish(&mut summary)?;
    }
    summary.records_per_second = summary.records as f64 / summary.seconds.max(1e-9);
    Ok(summary)
}

/// RFC 7011 section 3.1: IPFIX counts data records before the message per domain, and NetFlow
/// v5 flows per engine; RFC 3954: NetFlow v9 counts packets per source id.
fn renumber(m: &mut [u8], records: u64, seq: &mut HashMap<(u16, u32), u32>) {
    let version = m.get(..2).map_or(0, |v| u16::from_be_bytes([v[0], v[1]]));
    let (seq_at, step) = match version {
        IPFIX_VERSION => (8, records as u32),
        NETFLOW_V9_VERSION => (12, 1),
        NETFLOW_V5_VERSION => (16, records as u32),
        _ => return,
    };
    // The domain lies after the sequence number in each header: a header it can be read from
    // holds the sequence number too.
    let Some(domain) = peek_observation_domain(m) else {
        return;
    };
    let next = seq.entry((version, domain)).or_insert(0);
    m[seq_at..seq_at + 4].copy_from_slice(&next.to_be_bytes());
    *next = next.wrapping_add(step);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_renumber_netflow_v5_by_flows_per_engine() {
        // Two v5 packets of engine 1/2 with 3 and 1 flows, a third from engine 1/3.
        let v5 = |count: u16, engine_id: u8| {
            let mut m = vec![0, 5];
            m.extend_from_slice(&count.to_be_bytes());
            m.resize(16, 0);
            m.extend_from_slice(&[0xff; 4]); // the recorded sequence, replaced
            m.extend_from_slice(&[1, engine_id, 0, 0]);
            m.resize(24 + 48 * count as usize, 0);
            m
        };
        let mut seq = HashMap::new();
        let mut sent = Vec::new();
        for _ in 0..2 {
            for (count, engine) in [(3, 2), (1, 2), (2, 3)] {
                let mut m = v5(count, engine);
                renumber(&mut m, count as u64, &mut seq);
                sent.push(be32_at(&m, 16));
            }
        }
        assert_eq!(sent, vec![0, 3, 0, 4, 7, 2]);
    }

    fn be32_at(m: &[u8], at: usize) -> u32 {
        u32::from_be_bytes([m[at], m[at + 1], m[at + 2], m[at + 3]])
    }
}
