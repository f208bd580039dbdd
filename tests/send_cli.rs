//! `ipfixsvc send` against collectors that misbehave, on real loopback sockets: one that hangs
//! up mid-stream makes send fail and say so; one that reads everything lets it succeed. With
//! `--reconnect`, a collector that hands the exporter off (FIN, then reads until the exporter
//! closes) gets every byte once, and one that resets the connection gets the stream again from
//! the first message its TCP had not acknowledged.

use std::io::Read;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ipfixsvc");

fn example() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/testdata/ipfix/example_flows.ipfix"
    ))
}

/// A collector on 127.0.0.1 that accepts one connection, reads up to `limit` bytes (or to the
/// end) and closes it; returns its address and the bytes it read.
fn collector(limit: Option<usize>) -> (String, std::thread::JoinHandle<usize>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    let addr = listener.local_addr().expect("address").to_string();
    let reader = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        let mut buf = vec![0u8; 8192];
        let mut read = 0;
        loop {
            let want = limit.map_or(buf.len(), |l| (l - read).min(buf.len()));
            match conn.read(&mut buf[..want]) {
                Ok(0) | Err(_) => break,
                Ok(n) => read += n,
            }
            if limit.is_some_and(|l| read >= l) {
                break;
            }
        }
        // Dropped with data unread: the kernel answers further data with a reset.
        read
    });
    (addr, reader)
}

fn send(to: &str, extra: &[&str]) -> Output {
    Command::new(BIN)
        .arg("send")
        .arg(example())
        .args(["--to", to])
        .args(extra)
        .output()
        .expect("run ipfixsvc send")
}

#[test]
fn a_collector_that_hangs_up_mid_stream_fails_the_send() {
    // 50 passes of a 200 KB file: far more than the loopback socket buffers hold.
    let (addr, reader) = collector(Some(50_000));
    let started = Instant::now();
    let out = send(&addr, &["--loop", "50"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!(
            "the collector at {addr} closed the connection after "
        )),
        "{err}"
    );
    assert!(reader.join().expect("collector") >= 50_000);
}

#[test]
fn a_hangup_is_noticed_even_when_the_rest_fits_in_the_socket_buffers() {
    // One pass (200 KB) can sit in the buffers whole: every write succeeds, and only the
    // watch on the socket sees the collector leave.
    let (addr, reader) = collector(Some(1_000));
    let out = send(&addr, &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("closed the connection after"), "{err}");
    reader.join().expect("collector");
}

#[test]
fn a_collector_that_reads_to_the_end_gets_a_clean_send() {
    let (addr, reader) = collector(None);
    let out = send(&addr, &["--loop", "3"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let summary: serde_json::Value = serde_json::from_str(err.trim()).expect("summary JSON");
    let size = std::fs::metadata(example()).expect("file").len();
    assert_eq!(summary["bytes"], 3 * size);
    assert_eq!(reader.join().expect("collector") as u64, 3 * size);
}

/// How the first connection of `collector_twice` ends.
#[derive(Clone, Copy)]
enum Ending {
    /// The node's drain: FIN, then read until the exporter closes in turn.
    HandOff,
    /// A killed node: the connection is reset with what the socket holds unread.
    Reset,
}

/// The bytes of each of two connections, as a thread reads them.
type TwoConnections = std::thread::JoinHandle<(Vec<u8>, Vec<u8>)>;

/// A collector that reads `limit` bytes of a first connection, ends it as `ending` says, then
/// reads a second connection to the end; returns the bytes of each.
fn collector_twice(limit: usize, ending: Ending) -> (String, TwoConnections) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    let addr = listener.local_addr().expect("address").to_string();
    let reader = std::thread::spawn(move || {
        let (mut first, _) = listener.accept().expect("accept");
        let mut one = vec![0u8; limit];
        first.read_exact(&mut one).expect("the first bytes");
        match ending {
            Ending::HandOff => {
                first.shutdown(std::net::Shutdown::Write).expect("FIN");
                first
                    .read_to_end(&mut one)
                    .expect("the rest, until the exporter's FIN");
            }
            Ending::Reset => {
                // SO_LINGER 0: a reset whatever the socket holds, as a killed process's with
                // unread data.
                socket2::SockRef::from(&first)
                    .set_linger(Some(Duration::ZERO))
                    .expect("linger");
            }
        }
        drop(first);
        let (mut second, _) = listener.accept().expect("accept again");
        let mut two = Vec::new();
        second.read_to_end(&mut two).expect("the second connection");
        (one, two)
    });
    (addr, reader)
}

/// The byte stream of `send --loop N` (sequence numbers renumbered), as a collector that reads
/// everything receives it.
fn stream(loops: &str) -> Vec<u8> {
    let listener = TcpListener::bind("127.0.0.1:0").expect("listen");
    let addr = listener.local_addr().expect("address").to_string();
    let reader = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        let mut all = Vec::new();
        conn.read_to_end(&mut all).expect("read");
        all
    });
    let out = send(&addr, &["--loop", loops]);
    assert!(out.status.success());
    reader.join().expect("reader")
}

/// Where each IPFIX message of `bytes` starts.
fn message_starts(bytes: &[u8]) -> Vec<usize> {
    let mut at = 0;
    let mut starts = Vec::new();
    while at + 4 <= bytes.len() {
        starts.push(at);
        at += u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]) as usize;
    }
    starts
}

fn summary(err: &str) -> serde_json::Value {
    serde_json::from_str(err.lines().last().expect("a summary line")).expect("summary JSON")
}

#[test]
fn reconnect_after_a_hand_off_sends_every_byte_once() {
    // 8 MB: far more than the loopback socket buffers hold, so the hand-off comes mid-stream.
    let file = stream("40");
    let (addr, reader) = collector_twice(50_000, Ending::HandOff);
    let out = send(
        &addr,
        &["--loop", "40", "--reconnect", "--reconnect-for", "5"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let (one, two) = reader.join().expect("collector");
    assert!(
        one.len() > 50_000 && !two.is_empty(),
        "{} + {}",
        one.len(),
        two.len()
    );
    let mut both = one.clone();
    both.extend_from_slice(&two);
    assert!(
        both == file,
        "the two connections carry the file once, in order"
    );
    let s = summary(&err);
    assert_eq!(s["reconnects"], 1, "{err}");
    assert_eq!(s["resent_messages"], 0, "{err}");
    assert!(err.contains("closed the connection (FIN)"), "{err}");
    assert!(
        message_starts(&file).contains(&one.len()),
        "handed off at a message boundary"
    );
}

#[test]
fn reconnect_after_a_reset_resumes_after_what_was_acknowledged() {
    let file = stream("40");
    let (addr, reader) = collector_twice(50_000, Ending::Reset);
    let out = send(
        &addr,
        &["--loop", "40", "--reconnect", "--reconnect-for", "5"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let (one, two) = reader.join().expect("collector");
    let resumed_at = file.len() - two.len();
    assert!(
        file.ends_with(&two),
        "the second connection carries the rest of the file"
    );
    assert!(
        message_starts(&file).contains(&resumed_at),
        "it resumes at a message boundary ({resumed_at})"
    );
    // TCP's acknowledgements trail what the peer received by a delayed ACK or two, so a reset
    // can cost some messages twice (sent again though received), never more than a window's
    // worth; and messages acknowledged but never read are lost with the reset (not sent again).
    assert!(file.starts_with(&one));
    assert!(
        resumed_at + 256 * 1024 >= one.len(),
        "{} read, resumed at {resumed_at}",
        one.len()
    );
    let s = summary(&err);
    assert_eq!(s["reconnects"], 1, "{err}");
    assert!(err.contains("broke the connection"), "{err}");
    let size = file.len() as u64;
    assert_eq!(s["bytes"], size, "counted once");
}

#[test]
fn reconnect_gives_up_after_reconnect_for() {
    let (addr, reader) = collector(Some(1_000));
    let started = Instant::now();
    // Nobody listens after the first connection.
    let out = send(&addr, &["--reconnect", "--reconnect-for", "1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("no new connection within --reconnect-for 1 s"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    reader.join().expect("collector");
}
