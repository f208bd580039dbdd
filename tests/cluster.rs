//! The ractor cluster with real processes on loopback: node B, joined to A through its seed,
//! lists A's exporter sessions; A killed with SIGKILL leaves B's view within seconds; a node with
//! the wrong cookie is refused with a clear line.

mod common;

use common::{BIN, Server, eventually, free_port};
use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

const COOKIE: &str = "a-long-random-test-cookie";

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
        // Among the peers: the seed's entry keeps the name of the node it reached.
        let view: serde_json::Value = serde_json::from_str(view.trim()).unwrap_or_default();
        view["peers"].as_array().is_some_and(|peers| {
            !peers
                .iter()
                .any(|p| p["name"].as_str().is_some_and(|n| n.starts_with("node-a@")))
        })
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

#[test]
fn nodes_speak_mutual_tls_and_refuse_plain_peers() {
    let dir = std::env::temp_dir().join(format!("ipfixsvc-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (cert, key, ca) = common::certificates(&dir);
    let (pa, pb, pc) = (free_port(), free_port(), free_port());
    let la = format!("127.0.0.1:{pa}");
    let tls = |name: &'static str, listen: String, seeds: Option<&str>| {
        let mut env = vec![
            ("IPFIXSVC__NODE__NAME", name.to_string()),
            ("IPFIXSVC__CLUSTER__COOKIE", COOKIE.to_string()),
            ("IPFIXSVC__CLUSTER__LISTEN", listen),
            ("IPFIXSVC__CLUSTER__TLS_CERT", cert.clone()),
            ("IPFIXSVC__CLUSTER__TLS_KEY", key.clone()),
            ("IPFIXSVC__CLUSTER__TLS_CA", ca.clone()),
        ];
        if let Some(s) = seeds {
            env.push(("IPFIXSVC__CLUSTER__SEEDS", s.to_string()));
        }
        env
    };
    let as_refs = |v: &Vec<(&'static str, String)>| {
        v.iter().map(|(k, x)| (*k, x.clone())).collect::<Vec<_>>()
    };
    let env_a = as_refs(&tls("tls-a", la.clone(), None));
    let env_b = as_refs(&tls("tls-b", format!("127.0.0.1:{pb}"), Some(&la)));
    let a = Server::start(
        "tls-a",
        &env_a
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .collect::<Vec<_>>(),
    );
    let b = Server::start(
        "tls-b",
        &env_b
            .iter()
            .map(|(k, v)| (*k, v.as_str()))
            .collect::<Vec<_>>(),
    );
    assert_eq!(
        b.wait_log("cluster peer ready", 1, Duration::from_secs(20))
            .len(),
        1,
        "B joined A over TLS"
    );
    assert!(a.log_lines("tls=true").len() == 1);

    // The query tool speaks TLS too.
    let tls_view = || {
        let out = Command::new(BIN)
            .args(["cluster", "view", "--seed", &la, "--cookie", COOKIE])
            .args(["--tls-cert", &cert, "--tls-key", &key, "--tls-ca", &ca])
            .output()
            .expect("cluster view");
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let view = tls_view();
    assert!(view.contains("tls-b@"), "{view}");

    // A plain node with the right cookie is not let in.
    let c = Server::start(
        "plain-c",
        &[
            ("IPFIXSVC__NODE__NAME", "plain-c"),
            ("IPFIXSVC__CLUSTER__COOKIE", COOKIE),
            ("IPFIXSVC__CLUSTER__LISTEN", &format!("127.0.0.1:{pc}")),
            ("IPFIXSVC__CLUSTER__SEEDS", &la),
        ],
    );
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        c.log_lines("cluster peer ready").is_empty(),
        "a plain node must not join a TLS cluster"
    );
    let view = tls_view();
    assert!(!view.contains("plain-c@"), "{view}");
    drop(a);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `ipfixsvc cluster view` against `seed`, the cookie given by `how`; stdout, stderr, success.
fn view_with(seed: &str, how: &[&str], env_cookie: Option<&str>) -> (String, String, bool) {
    let mut cmd = Command::new(BIN);
    cmd.args(["cluster", "view", "--seed", seed])
        .args(how)
        .env_remove("IPFIXSVC__CLUSTER__COOKIE");
    if let Some(c) = env_cookie {
        cmd.env("IPFIXSVC__CLUSTER__COOKIE", c);
    }
    let out = cmd.output().expect("run ipfixsvc cluster view");
    (
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
        out.status.success(),
    )
}

#[test]
fn an_all_digit_cookie_reaches_node_and_client_alike_from_environment_or_file() {
    // Through config's number parsing this became 1.2345678901234568e20 in the node, while the
    // client used the digits: the handshake failed.
    const DIGITS: &str = "000123456789012345678901";
    let listen = format!("127.0.0.1:{}", free_port());
    let _node = Server::start(
        "cookie-digits",
        &[
            ("IPFIXSVC__NODE__NAME", "node-digits"),
            ("IPFIXSVC__CLUSTER__COOKIE", DIGITS),
            ("IPFIXSVC__CLUSTER__LISTEN", &listen),
        ],
    );
    let dir = std::env::temp_dir().join(format!("ipfixsvc-cookie-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("cookie");
    std::fs::write(&file, format!("{DIGITS}\n")).expect("write");
    let file = file.to_string_lossy().to_string();

    let (out, err, ok) = view_with(&listen, &[], Some(DIGITS));
    assert!(
        ok && out.contains("node-digits"),
        "from the environment: {err}"
    );
    let (out, err, ok) = view_with(&listen, &["--cookie-file", &file], None);
    assert!(ok && out.contains("node-digits"), "from a file: {err}");
    let (out, err, ok) = view_with(&listen, &["--cookie", DIGITS], None);
    assert!(
        ok && out.contains("node-digits"),
        "on the command line: {err}"
    );
    // A file given on purpose wins over an environment left set.
    let (_, err, ok) = view_with(&listen, &["--cookie-file", &file], Some("stale"));
    assert!(ok, "{err}");

    let (_, err, ok) = view_with(&listen, &[], None);
    assert!(!ok && err.contains("IPFIXSVC__CLUSTER__COOKIE"), "{err}");
    let (_, err, ok) = view_with(&listen, &["--cookie", "x", "--cookie-file", &file], None);
    assert!(!ok && err.contains("cannot be used with"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_reader_that_leaves_ends_the_cluster_queries_quietly() {
    // `ipfixsvc cluster sessions | head -2`: println! panicked on the closed pipe.
    let listen = format!("127.0.0.1:{}", free_port());
    let node = Server::start(
        "cluster-pipe",
        &[
            ("IPFIXSVC__NODE__NAME", "node-pipe"),
            ("IPFIXSVC__CLUSTER__COOKIE", COOKIE),
            ("IPFIXSVC__CLUSTER__LISTEN", &listen),
            ("IPFIXSVC__OUTPUT__FORMAT", "count"),
        ],
    );
    // Two exporters, so `sessions` has more than one line to write.
    let file = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/testdata/ipfix/example_flows.ipfix"
    ))
    .expect("file");
    let mut exporters = Vec::new();
    for _ in 0..2 {
        let mut e = TcpStream::connect(node.tcp).expect("connect");
        e.write_all(&file).expect("send");
        exporters.push(e);
    }
    let port: u16 = listen
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    eventually(
        "the node lists both sessions",
        Duration::from_secs(20),
        || cluster("sessions", port).0.lines().count() == 2,
    );
    for what in [&["sessions"][..], &["view"], &["ping", "--count", "5"]] {
        let mut child = Command::new(BIN)
            .arg("cluster")
            .args(what)
            .args(["--seed", &listen])
            .env("IPFIXSVC__CLUSTER__COOKIE", COOKIE)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run ipfixsvc cluster");
        // The reader leaves before the first line: every write meets a closed pipe.
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("ends");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{what:?}: {:?} {err}", out.status);
        assert!(!err.contains("panicked"), "{what:?}: {err}");
    }
    drop(exporters);
}

/// `ipfixsvc cluster WHAT` over mutual TLS against `seed`; stdout.
fn tls_query(what: &str, seed: &str, (cert, key, ca): &(String, String, String)) -> String {
    let out = Command::new(BIN)
        .args(["cluster", what, "--seed", seed, "--cookie", COOKIE])
        .args(["--tls-cert", cert, "--tls-key", key, "--tls-ca", ca])
        .output()
        .expect("ipfixsvc cluster");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A TLS node on `listen`, dialing `seeds`, with `extra` settings.
fn tls_node(
    name: &str,
    listen: &str,
    seeds: &str,
    (cert, key, ca): &(String, String, String),
    extra: &[(&str, &str)],
) -> Server {
    let mut env = vec![
        ("IPFIXSVC__NODE__NAME", name),
        ("IPFIXSVC__CLUSTER__COOKIE", COOKIE),
        ("IPFIXSVC__CLUSTER__LISTEN", listen),
        ("IPFIXSVC__CLUSTER__SEEDS", seeds),
        ("IPFIXSVC__CLUSTER__TLS_CERT", cert),
        ("IPFIXSVC__CLUSTER__TLS_KEY", key),
        ("IPFIXSVC__CLUSTER__TLS_CA", ca),
        ("IPFIXSVC__OUTPUT__FORMAT", "count"),
    ];
    env.extend_from_slice(extra);
    Server::start(name, &env)
}

#[test]
fn tls_nodes_that_know_one_seed_each_still_see_each_other() {
    // ractor_cluster's transitive discovery dialed the peers it learned of in plain TCP, which a
    // TLS node refuses: B and C, each seeding only A, never met, and B did not list C's sessions.
    let dir = std::env::temp_dir().join(format!("ipfixsvc-mesh-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let tls = common::certificates(&dir);
    let (pa, pb, pc) = (free_port(), free_port(), free_port());
    let (la, lb, lc) = (
        format!("127.0.0.1:{pa}"),
        format!("127.0.0.1:{pb}"),
        format!("127.0.0.1:{pc}"),
    );
    let _a = tls_node("mesh-a", &la, "", &tls, &[]);
    // B is dialed by the name it advertises (its certificate covers it), not by its listen IP.
    let advertise_b = format!("localhost:{pb}");
    let b = tls_node(
        "mesh-b",
        &lb,
        &la,
        &tls,
        &[("IPFIXSVC__CLUSTER__ADVERTISE", &advertise_b)],
    );
    assert_eq!(
        b.wait_log("cluster peer ready", 1, Duration::from_secs(20))
            .len(),
        1,
        "B joined A"
    );
    let c = tls_node("mesh-c", &lc, &la, &tls, &[]);

    let file = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/testdata/ipfix/example_flows.ipfix"
    ))
    .expect("file");
    let mut exporter = TcpStream::connect(c.tcp).expect("connect to C");
    exporter.write_all(&file).expect("send");

    eventually("B lists C's session", Duration::from_secs(30), || {
        tls_query("sessions", &lb, &tls).lines().any(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
            v["node"] == "mesh-c" && v["stats"]["data_records"] == 3979
        })
    });
    let view = tls_query("view", &lb, &tls);
    assert!(view.contains("mesh-c@127.0.0.1"), "B's peers: {view}");
    // C heard of B from A and dialed B where B said to, over TLS, as it dials a seed.
    let view: serde_json::Value =
        serde_json::from_str(tls_query("view", &lc, &tls).trim()).expect("C's view");
    let heard = view["seeds"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["seed"] == advertise_b.as_str()))
        .unwrap_or_else(|| panic!("C dialed B by its advertised address: {view}"));
    assert_eq!(heard["connected"], true, "{view}");
    assert_eq!(heard["via"], "mesh-a", "{view}");
    assert_eq!(heard["peer"], "mesh-b@localhost", "{view}");
    assert!(
        c.log_lines("cluster peer heard of").len() == 1,
        "{:?}",
        c.log_lines("heard")
    );
    drop(exporter);
    let _ = std::fs::remove_dir_all(&dir);
}
