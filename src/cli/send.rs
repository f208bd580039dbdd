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
}

#[derive(Debug, Default, serde::Serialize)]
pub struct SendSummary {
    pub messages: u64,
    pub records: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub records_per_second: f64,
}

type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

enum Out {
    /// TCP, or TLS over it; the watcher reads the raw socket (a collector sends nothing).
    Tcp(TcpStream, Option<Box<Tls>>, Watcher),
    Udp(UdpSocket, SocketAddr),
}

impl Out {
    fn send(&mut self, m: &[u8]) -> std::io::Result<()> {
        match self {
            Out::Tcp(_, Some(t), _) => t.write_all(m),
            Out::Tcp(s, None, _) => s.write_all(m),
            Out::Udp(s, to) => s.send_to(m, *to).map(|_| ()),
        }
    }
}

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
fn tls_client(args: &SendArgs, tcp: &mut TcpStream) -> anyhow::Result<rustls::ClientConnection> {
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
    let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name)?;
    // The handshake now, so a refused certificate is an error here, not a write failure later.
    while conn.is_handshaking() {
        conn.complete_io(tcp).context("TLS handshake")?;
    }
    Ok(conn)
}

/// After our FIN, how long send waits for the collector to read the rest and close in turn.
const LINGER: Duration = Duration::from_secs(5);

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
    thread: std::thread::JoinHandle<()>,
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
                    // Bytes from a collector mean nothing in IPFIX: ignored.
                    Ok(_) => continue,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => break Hangup::Broken(e),
                }
            };
            // No receiver any more is fine: send has finished or failed already.
            let _ = tx.send(end);
        });
        Ok(Watcher { hangup, thread })
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
    let mut out = if args.udp {
        let local: SocketAddr = if to.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            ([0u16; 8], 0).into()
        };
        let local = args.from.map_or(local, |ip| SocketAddr::new(ip, 0));
        Out::Udp(
            UdpSocket::bind(local).with_context(|| format!("--from {local}"))?,
            to,
        )
    } else {
        let mut s = connect(to, args.from).with_context(|| format!("connecting to {to}"))?;
        s.set_nodelay(true)?;
        let tls = if args.tls {
            let conn = tls_client(args, &mut s)?;
            Some(Box::new(rustls::StreamOwned::new(conn, s.try_clone()?)))
        } else {
            None
        };
        let watcher = Watcher::start(&s)?;
        Out::Tcp(s, tls, watcher)
    };
    let mut summary = SendSummary::default();
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
            if let Err(e) = out.send(&m) {
                if let Out::Tcp(_, _, w) = &out {
                    // EPIPE or ECONNRESET on the socket is the collector hanging up (never the
                    // quiet `| head` case, which is about standard output); the watcher has
                    // the first cause, or is about to.
                    let why = w
                        .hangup
                        .recv_timeout(Duration::from_millis(200))
                        .unwrap_or(Hangup::Broken(e));
                    return Err(hung_up(to, &summary, &why));
                }
                return Err(anyhow::Error::new(e).context(format!(
                    "sending message {} (round {})",
                    summary.messages + 1,
                    round + 1
                )));
            }
            summary.messages += 1;
            summary.records += records;
            summary.bytes += m.len() as u64;
            if let Out::Tcp(_, _, w) = &out
                && let Ok(why) = w.hangup.try_recv()
            {
                return Err(hung_up(to, &summary, &why));
            }
        }
    }
    // The sending time: the wait for the collector's close below is not part of it.
    summary.seconds = start.elapsed().as_secs_f64();
    if let Out::Tcp(s, tls, w) = out {
        // A hangup before our FIN: the collector closed on its own, before the end.
        if let Ok(why) = w.hangup.try_recv() {
            return Err(hung_up(to, &summary, &why));
        }
        if let Some(mut t) = tls {
            // TLS's own end of data, so the collector knows the stream was not cut short.
            t.conn.send_close_notify();
            t.flush()
                .map_err(|e| hung_up(to, &summary, &Hangup::Broken(e)))?;
        }
        s.shutdown(std::net::Shutdown::Write)
            .map_err(|e| hung_up(to, &summary, &Hangup::Broken(e)))?;
        // After our FIN a collector reads what is left and closes in turn: a FIN back is the
        // clean end; a reset means it dropped data unread. One that keeps the connection open
        // is not waited for past LINGER.
        let end = w.hangup.recv_timeout(LINGER);
        // Wakes the watcher's read if the collector is still there, so its thread ends.
        let _ = s.shutdown(std::net::Shutdown::Both);
        let _ = w.thread.join();
        if let Ok(why @ Hangup::Broken(_)) = end {
            return Err(hung_up(to, &summary, &why));
        }
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
