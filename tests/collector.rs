//! The Collecting Process, black box: a real `ipfixsvc serve` process on loopback ports, real
//! exporters (`ipfixsvc send`, raw sockets), and the records it prints compared with what
//! `ipfixsvc dump` decodes from the same files.

mod common;

use common::{BIN, Server};
use std::collections::BTreeMap;
use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
/// Capture ports of the test data that are not decoded by default.
const PORTS: [&str; 5] = ["9990", "9991", "9992", "2100", "8096"];

fn testdata() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/testdata/ipfix")
}

/// Records as `dump` prints them, without the exporter (the replay comes from another port) and
/// the collector's tenant (which `dump` has not).
fn without_exporter(lines: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut v: Vec<String> = lines
        .into_iter()
        .map(|l| {
            let mut j: serde_json::Value = serde_json::from_str(&l).expect("NDJSON line");
            if let Some(o) = j.as_object_mut() {
                o.remove("@exporter");
                o.remove("@tenant");
            }
            j.to_string()
        })
        .collect();
    v.sort();
    v
}

fn dump(file: &Path) -> Vec<String> {
    let mut cmd = Command::new(BIN);
    cmd.arg("dump");
    for p in PORTS {
        cmd.args(["--port", p]);
    }
    let out = cmd.arg(file).output().expect("run dump");
    without_exporter(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string),
    )
}

/// NetFlow (v9, v5) has no length field: it only travels over UDP.
fn is_netflow(file: &Path) -> bool {
    let f = std::fs::File::open(file).expect("open");
    let Ok(mut cap) = ipfixsvc::meter::capture::CaptureReader::new(BufReader::new(f)) else {
        return false;
    };
    let ports = PORTS
        .iter()
        .filter_map(|p| p.parse().ok())
        .chain([4739, 2055, 9996])
        .collect();
    let mut finder = ipfixsvc::meter::messages::MessageFinder::new(ports, 65535);
    let mut found = Vec::new();
    while let Some(Ok(p)) = cap.next_packet() {
        finder.feed(&p, &mut found);
        if let Some(ipfixsvc::meter::messages::Found::Message(m)) = found.first() {
            return !m.bytes.starts_with(&[0, 10]);
        }
    }
    false
}

fn send(file: &Path, to: SocketAddr, udp: bool) {
    let mut cmd = Command::new(BIN);
    cmd.arg("send").arg(file).arg("--to").arg(to.to_string());
    for p in PORTS {
        cmd.args(["--port", p]);
    }
    if udp {
        // Paced, so the loopback socket buffer never overflows.
        cmd.args(["--udp", "--rate", "50000"]);
    }
    let out = cmd.output().expect("run send");
    assert!(
        out.status.success(),
        "send {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn inputs() -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in [testdata(), testdata().join("akvorado")] {
        for e in std::fs::read_dir(&dir).expect("testdata").flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "pcap" || x == "ipfix") {
                files.push(p);
            }
        }
    }
    files.sort();
    files
}

#[test]
fn replayed_files_are_collected_as_dump_decodes_them_over_tcp_and_udp() {
    // Per-connection templates, as dump scopes them per file: the test files share exporter
    // address, domains and template ids, and must not lend each other templates.
    let server = Server::start(
        "replay",
        &[("IPFIXSVC__COLLECTOR__TEMPLATE_SCOPE", "session")],
    );
    let mut seen = 0;
    let mut sessions_ended = 0;
    let mut checked = BTreeMap::new();
    for file in inputs() {
        let want = dump(&file);
        let netflow = is_netflow(&file);
        for udp in [false, true] {
            if netflow && !udp {
                let mut cmd = Command::new(BIN);
                cmd.arg("send")
                    .arg(&file)
                    .arg("--to")
                    .arg(server.tcp.to_string());
                for p in PORTS {
                    cmd.args(["--port", p]);
                }
                let out = cmd.output().expect("send");
                assert!(
                    !out.status.success()
                        && String::from_utf8_lossy(&out.stderr).contains("NetFlow")
                );
                continue;
            }
            send(&file, if udp { server.udp } else { server.tcp }, udp);
            if !udp {
                // The TCP session ends when `send` closes: all its records are written by then.
                sessions_ended += 1;
                let ended = server.wait_log(
                    "exporter session ended",
                    sessions_ended,
                    Duration::from_secs(20),
                );
                assert_eq!(
                    ended.len(),
                    sessions_ended,
                    "{}: TCP session did not end",
                    file.display()
                );
            }
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut got = server.output();
            while got.len() < seen + want.len() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
                got = server.output();
            }
            if udp {
                std::thread::sleep(Duration::from_millis(100));
                got = server.output();
            }
            let new = without_exporter(got[seen.min(got.len())..].to_vec());
            seen = got.len();
            assert_eq!(
                new.len(),
                want.len(),
                "{} over {}: record count",
                file.display(),
                if udp { "UDP" } else { "TCP" }
            );
            assert!(
                new == want,
                "{} over {}: records differ from dump",
                file.display(),
                if udp { "UDP" } else { "TCP" }
            );
            checked.insert(
                file.file_name()
                    .map(|f| f.to_string_lossy().to_string())
                    .unwrap_or_default(),
                want.len(),
            );
        }
    }
    let total: usize = checked.values().sum();
    assert!(total > 4000, "too few records compared: {checked:?}");
    // Every test file decodes (NetFlow v5 included), so nothing is logged as malformed.
    let malformed = server.log_lines("malformed");
    assert!(malformed.is_empty(), "{malformed:?}");
    let status = server.terminate();
    assert!(
        status.success(),
        "SIGTERM must end serve with status 0, got {status}"
    );
}

#[test]
fn two_hundred_exporters_and_one_sends_garbage() {
    let server = Server::start("many", &[("IPFIXSVC__OUTPUT__FORMAT", "count")]);
    let file = std::fs::read(testdata().join("example_flows.ipfix")).expect("example_flows.ipfix");
    // Message boundaries, to cut in the middle of the stream at one.
    let mut bounds = vec![0];
    while let Some(&at) = bounds.last() {
        if at >= file.len() {
            break;
        }
        bounds.push(at + u16::from_be_bytes([file[at + 2], file[at + 3]]) as usize);
    }
    let file = Arc::new(file);
    let tcp = server.tcp;
    let threads: Vec<_> = (0..200)
        .map(|i| {
            let file = file.clone();
            let cut = bounds[bounds.len() / 2];
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(tcp).expect("connect");
                if i == 100 {
                    s.write_all(&file[..cut]).expect("first half");
                    s.write_all(&[0xff; 64]).expect("garbage");
                    // The collector closes this connection: further writes may fail.
                    let _ = s.write_all(&file[cut..]);
                } else {
                    for chunk in file.chunks(1000) {
                        s.write_all(chunk).expect("send");
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("exporter thread");
    }
    let ended = server.wait_log("exporter session ended", 200, Duration::from_secs(60));
    assert_eq!(ended.len(), 200, "sessions ended: {}", ended.len());
    let complete = ended
        .iter()
        .filter(|l| {
            l.contains(" records=3979 ") && l.contains(" errors=0 ") && l.contains(" lost=0 ")
        })
        .count();
    assert_eq!(complete, 199, "199 exporters must lose nothing");
    let bad = server.log_lines("malformed stream");
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert!(bad[0].contains("unsupported version 65535"), "{}", bad[0]);
    // The listener is unharmed.
    send(&testdata().join("cisco-ipfix.pcap"), server.tcp, false);
    assert_eq!(
        server
            .wait_log("exporter session ended", 201, Duration::from_secs(20))
            .len(),
        201
    );
}

#[test]
fn idle_and_trickling_peers_are_closed_at_the_idle_timeout() {
    let server = Server::start("idle", &[("IPFIXSVC__COLLECTOR__IDLE_TIMEOUT_SECS", "1")]);
    let mut silent = TcpStream::connect(server.tcp).expect("connect");
    let mut trickle = TcpStream::connect(server.tcp).expect("connect");
    let start = Instant::now();
    // One byte every 100 ms never completes a message.
    let mut closed = false;
    while start.elapsed() < Duration::from_secs(5) {
        if trickle.write_all(&[0]).is_err() {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(closed, "the trickling peer was not closed");
    assert!(start.elapsed() < Duration::from_secs(4));
    silent
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let mut b = [0u8; 1];
    assert_eq!(
        silent.read(&mut b).map_err(|e| e.kind()),
        Ok(0),
        "the silent peer is closed too"
    );
    assert_eq!(
        server
            .log_lines("idle timeout")
            .iter()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .count(),
        0,
        "idle closes are not errors"
    );
}
