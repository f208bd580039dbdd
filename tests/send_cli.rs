//! `ipfixsvc send` against collectors that misbehave, on real loopback sockets: one that hangs
//! up mid-stream makes send fail and say so; one that reads everything lets it succeed.

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
