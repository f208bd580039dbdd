//! SIGTERM as Kubernetes sends it: under load every record the collector read is written before
//! it exits 0; exporters that close when the collector does (the drain's hand-off) lose nothing; and with an output that takes nothing (`ipfixsvc serve | sleep 60`) it still exits
//! within the grace period, non-zero, saying what was lost.

mod common;

use common::{BIN, Server, eventually};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn example() -> Vec<u8> {
    std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/testdata/ipfix/example_flows.ipfix"
    ))
    .expect("example_flows.ipfix")
}

/// Sends `bytes` over and over on a new connection until `stop` (or the collector hangs up).
fn exporter(to: std::net::SocketAddr, bytes: Arc<Vec<u8>>, stop: Arc<AtomicBool>) {
    let Ok(mut s) = std::net::TcpStream::connect(to) else {
        return;
    };
    while !stop.load(Ordering::Relaxed) {
        if s.write_all(&bytes).is_err() {
            return;
        }
    }
}

/// `records=N` summed over the "exporter session ended" lines: what the sessions decoded.
fn decoded_records(log: &[String]) -> u64 {
    log.iter()
        .filter(|l| l.contains("exporter session ended"))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("records="))
                .and_then(|n| n.parse::<u64>().ok())
        })
        .sum()
}

#[test]
fn a_drain_under_load_writes_every_record_the_collector_read() {
    let server = Server::start("drain-load", &[("IPFIXSVC__SHUTDOWN__GRACE_SECS", "10")]);
    let bytes = Arc::new(example());
    let stop = Arc::new(AtomicBool::new(false));
    let exporters: Vec<_> = (0..8)
        .map(|_| {
            let (b, s, to) = (bytes.clone(), stop.clone(), server.tcp);
            std::thread::spawn(move || exporter(to, b, s))
        })
        .collect();
    eventually("records flowing", Duration::from_secs(20), || {
        server.output().len() > 20_000
    });
    let log = server.log.clone();
    let out = server.out.clone();
    let status = server.terminate();
    stop.store(true, Ordering::Relaxed);
    for e in exporters {
        let _ = e.join();
    }
    let log = log.lock().expect("log").clone();
    assert!(
        status.success(),
        "a drain that loses nothing exits 0: {status:?}; the log ends: {:?}",
        &log[log.len().saturating_sub(6)..]
    );
    let written = std::fs::read_to_string(&out)
        .expect("records")
        .lines()
        .count() as u64;
    let decoded = decoded_records(&log);
    // Each session decoded every message its reader took off the socket.
    let field = |l: &str, k: &str| {
        l.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .and_then(|n| n.parse::<u64>().ok())
    };
    let ended: Vec<&String> = log
        .iter()
        .filter(|l| l.contains("exporter session ended"))
        .collect();
    assert_eq!(ended.len(), 8, "{ended:?}");
    for l in ended {
        assert_eq!(
            field(l, "read_messages="),
            field(l, "messages="),
            "read but not decoded: {l}"
        );
    }
    assert!(decoded > 20_000, "{decoded} records decoded");
    assert_eq!(
        written, decoded,
        "every record the sessions decoded was written"
    );
    assert!(
        log.iter()
            .any(|l| l.contains("every record read was written")),
        "{log:?}"
    );
}

/// An exporter that honours a hand-off, as `ipfixsvc send --reconnect` does: it sends `bytes`
/// whole, over and over, until the collector's FIN, then stops and closes in turn. Returns how
/// many times it sent `bytes`, and whether the connection broke (a reset) rather than ended.
fn polite_exporter(to: std::net::SocketAddr, bytes: Arc<Vec<u8>>) -> (u64, bool) {
    let mut s = std::net::TcpStream::connect(to).expect("connect");
    let mut watch = s.try_clone().expect("clone");
    let fin = Arc::new(AtomicBool::new(false));
    let seen = fin.clone();
    let watcher = std::thread::spawn(move || {
        let mut b = [0u8; 64];
        // An IPFIX collector writes nothing: a read returns at its FIN (or an error).
        let end = std::io::Read::read(&mut watch, &mut b);
        seen.store(true, Ordering::Relaxed);
        matches!(end, Ok(0))
    });
    let mut sent = 0;
    while !fin.load(Ordering::Relaxed) {
        if s.write_all(&bytes).is_err() {
            return (sent, true);
        }
        sent += 1;
    }
    let clean = watcher.join().expect("watcher");
    let _ = s.shutdown(std::net::Shutdown::Write);
    (sent, !clean)
}

#[test]
fn a_drain_hands_off_exporters_that_close_in_turn_without_losing_a_record() {
    let server = Server::start(
        "drain-hand-off",
        &[("IPFIXSVC__SHUTDOWN__GRACE_SECS", "10")],
    );
    let bytes = Arc::new(example());
    let per_pass = {
        let mut d = ipfixsvc::wire::Decoder::new(
            ipfixsvc::wire::Registry::builtin(),
            ipfixsvc::wire::DecoderOptions::default(),
        );
        ipfixsvc::wire::MessageReader::new(&bytes[..], 65535)
            .map(|m| {
                d.decode(m.expect("frames").1)
                    .expect("decodes")
                    .data_records() as u64
            })
            .sum::<u64>()
    };
    let exporters: Vec<_> = (0..4)
        .map(|_| {
            let (b, to) = (bytes.clone(), server.tcp);
            std::thread::spawn(move || polite_exporter(to, b))
        })
        .collect();
    eventually("records flowing", Duration::from_secs(20), || {
        server.output().len() > 20_000
    });
    let out = server.out.clone();
    let asked = Instant::now();
    let (status, log) = server.terminate_with_log();
    let took = asked.elapsed();
    let mut sent = 0;
    for e in exporters {
        let (passes, broken) = e.join().expect("exporter");
        assert!(
            !broken,
            "the collector reset a connection instead of handing it off"
        );
        sent += passes * per_pass;
    }
    assert!(
        status.success(),
        "{status:?}: {:?}",
        &log[log.len().saturating_sub(6)..]
    );
    let written = std::fs::read_to_string(&out)
        .expect("records")
        .lines()
        .count() as u64;
    assert_eq!(
        written, sent,
        "every record the exporters sent was written, once"
    );
    assert_eq!(
        log.iter()
            .filter(|l| l.contains("the exporter closed in turn"))
            .count(),
        4,
        "{log:?}"
    );
    // The exporters closed at once: the drain did not wait out its read time (4 s here).
    assert!(took < Duration::from_secs(4), "took {took:?}");
}

#[test]
fn sigterm_with_a_blocked_output_exits_within_the_grace_period_and_says_so() {
    // `ipfixsvc serve | sleep 60`: standard output is a pipe nobody reads.
    let mut child = Command::new(BIN)
        .arg("serve")
        .env("IPFIXSVC__NODE__ROLES", "collector")
        .env("IPFIXSVC__COLLECTOR__TCP_LISTEN", "127.0.0.1:0")
        .env("IPFIXSVC__COLLECTOR__UDP_LISTEN", "")
        .env("IPFIXSVC__OUTPUT__QUEUE_CHUNKS", "1")
        .env("IPFIXSVC__SHUTDOWN__GRACE_SECS", "2")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("serve");
    let _unread = child.stdout.take();
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let stderr = child.stderr.take().expect("stderr");
    let sink = log.clone();
    std::thread::spawn(move || {
        for l in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().expect("log").push(l);
        }
    });
    let tcp = {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let found = log.lock().expect("log").iter().find_map(|l| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix("tcp="))
                    .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
            });
            if let Some(a) = found {
                break a;
            }
            assert!(Instant::now() < deadline, "no listener");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let bytes = Arc::new(example());
    let stop = Arc::new(AtomicBool::new(false));
    let exporters: Vec<_> = (0..2)
        .map(|_| {
            let (b, s) = (bytes.clone(), stop.clone());
            std::thread::spawn(move || exporter(tcp, b, s))
        })
        .collect();
    // Long enough for the pipe (64 KiB) and the output queue to fill and the sessions to wait.
    std::thread::sleep(Duration::from_secs(2));
    let asked = Instant::now();
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let status = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break s;
        }
        assert!(
            asked.elapsed() < Duration::from_secs(10),
            "still running 10 s after SIGTERM with a 2 s grace period"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = asked.elapsed();
    stop.store(true, Ordering::Relaxed);
    for e in exporters {
        let _ = e.join();
    }
    assert!(!status.success(), "records were lost: not a clean exit");
    assert!(
        took < Duration::from_millis(3500),
        "exited {took:?} after SIGTERM (grace 2 s)"
    );
    std::thread::sleep(Duration::from_millis(100));
    let log = log.lock().expect("log").clone();
    assert!(
        log.iter().any(|l| l.contains("within shutdown.grace_secs")),
        "says why: {log:?}"
    );
}

#[test]
fn a_record_output_that_fails_ends_the_node_with_status_1() {
    // A full disk: every write fails.
    let server = Server::start("output-full", &[("IPFIXSVC__OUTPUT__PATH", "/dev/full")]);
    let mut s = std::net::TcpStream::connect(server.tcp).expect("connect");
    let _ = s.write_all(&example());
    let mut server = server;
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Ok(Some(st)) = server.child.try_wait() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "the node kept running without an output"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success());
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        !server.log_lines("the record output failed").is_empty(),
        "{:?}",
        server.log_lines("")
    );
}
