//! The ractor cluster with real processes on loopback: node B, joined to A through its seed,
//! lists A's exporter sessions; A killed with SIGKILL leaves B's view within seconds; a node with
//! the wrong cookie is refused with a clear line.

mod common;

use common::{BIN, Server};
use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

const COOKIE: &str = "a-long-random-test-cookie";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn cluster(what: &str, seed: u16) -> (String, String) {
    let out = Command::new(BIN)
        .args([
            "cluster",
            what,
            "--seed",
            &format!("127.0.0.1:{seed}"),
            "--cookie",
            COOKIE,
        ])
        .output()
        .expect("run ipfixsvc cluster");
    (
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn eventually(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_node_lists_another_nodes_sessions_and_sees_it_go() {
    let (pa, pb) = (free_port(), free_port());
    let la = format!("127.0.0.1:{pa}");
    let lb = format!("127.0.0.1:{pb}");
    let mut a = Server::start(
        "cluster-a",
        &[
            ("IPFIXSVC__NODE__NAME", "node-a"),
            ("IPFIXSVC__CLUSTER__COOKIE", COOKIE),
            ("IPFIXSVC__CLUSTER__LISTEN", &la),
            ("IPFIXSVC__OUTPUT__FORMAT", "count"),
        ],
    );
    let b = Server::start(
        "cluster-b",
        &[
            ("IPFIXSVC__NODE__NAME", "node-b"),
            ("IPFIXSVC__CLUSTER__COOKIE", COOKIE),
            ("IPFIXSVC__CLUSTER__LISTEN", &lb),
            ("IPFIXSVC__CLUSTER__SEEDS", &la),
            ("IPFIXSVC__OUTPUT__FORMAT", "count"),
        ],
    );
    assert_eq!(
        b.wait_log("cluster peer ready", 1, Duration::from_secs(20))
            .len(),
        1,
        "B joined A"
    );

    // An exporter on A, still connected.
    let file = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/testdata/ipfix/example_flows.ipfix"
    ))
    .expect("file");
    let mut exporter = TcpStream::connect(a.tcp).expect("connect to A");
    exporter.write_all(&file).expect("send");

    // Asked through B, the cluster lists A's session with its statistics.
    eventually("B lists A's session", Duration::from_secs(20), || {
        let (out, _) = cluster("sessions", pb);
        out.lines().any(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
            v["node"] == "node-a" && v["stats"]["data_records"] == 3979
        })
    });
    let (view, _) = cluster("view", pb);
    let view: serde_json::Value = serde_json::from_str(view.trim()).expect("view JSON");
    assert_eq!(view["seeds"][0]["connected"], true, "{view}");

    // A dies without a word: B's view drops it within seconds.
    a.child.kill().expect("SIGKILL A");
    let t = Instant::now();
    eventually("B's view drops A", Duration::from_secs(15), || {
        let (view, _) = cluster("view", pb);
        !view.contains("node-a@")
    });
    eprintln!("B noticed A's death in {:?}", t.elapsed());
    let (sessions, _) = cluster("sessions", pb);
    assert!(
        !sessions.contains("node-a"),
        "A's sessions are gone from the listing: {sessions}"
    );
    let (view, _) = cluster("view", pb);
    let view: serde_json::Value = serde_json::from_str(view.trim()).expect("view JSON");
    assert_eq!(view["seeds"][0]["connected"], false);
    assert!(view["seeds"][0]["last_error"].is_string(), "{view}");
    assert!(!b.log_lines("cluster peer disconnected").is_empty());
    drop(exporter);

    // A node with the wrong cookie is refused, and says so.
    let pc = free_port();
    let c = Server::start(
        "cluster-c",
        &[
            ("IPFIXSVC__NODE__NAME", "node-c"),
            ("IPFIXSVC__CLUSTER__COOKIE", "not-the-cookie"),
            ("IPFIXSVC__CLUSTER__LISTEN", &format!("127.0.0.1:{pc}")),
            ("IPFIXSVC__CLUSTER__SEEDS", &lb),
        ],
    );
    assert!(
        !c.wait_log("wrong cluster.cookie", 1, Duration::from_secs(20))
            .is_empty(),
        "C says why"
    );
    assert!(
        !b.wait_log("wrong cluster.cookie", 1, Duration::from_secs(20))
            .is_empty(),
        "B says why"
    );
}
