//! `cluster/`: the Kubernetes shape on one machine, run as a newcomer would. `cluster/up`
//! starts Redis, three collectors and an API node on 127.0.0.11-15 and the nftables front on
//! 127.0.0.10:4739; two exporters with their own addresses send through the front; every
//! record lands, and the collectors saw each exporter's own address (the front keeps it, as
//! kube-proxy's DNAT does); `cluster/status` shows four healthy nodes; `cluster/down` stops
//! everything and removes the front. The failure drills (`cluster/drill`: node loss, rolling
//! restart, Redis restart, partition) meet the targets README states.
//!
//! Both tests use the same fixed addresses (127.0.0.10-15), so they take turns on a lock.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const EXAMPLE_RECORDS: usize = 3979;

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("cluster")
        .join(name)
}

fn run(name: &str, run_dir: &Path) -> std::process::Output {
    Command::new(script(name))
        .env("IPFIXSVC_BIN", common::BIN)
        .env("IPFIXSVC_CLUSTER_RUN", run_dir)
        .output()
        .unwrap_or_else(|e| panic!("cluster/{name}: {e}"))
}

fn env_file(run_dir: &Path) -> HashMap<String, String> {
    std::fs::read_to_string(run_dir.join("env"))
        .expect("cluster/run/env")
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Every record line the collectors wrote, as (node, exporter address).
fn records(run_dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for i in 0..3 {
        let node = format!("collector-{i}");
        let text =
            std::fs::read_to_string(run_dir.join(format!("{node}.ndjson"))).unwrap_or_default();
        for l in text.lines() {
            let v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
            let exporter = v["@exporter"].as_str().unwrap_or_default();
            let ip = exporter.rsplit_once(':').map_or(exporter, |(ip, _)| ip);
            out.push((node.clone(), ip.to_string()));
        }
    }
    out
}

/// One local cluster at a time on this machine (its addresses are fixed), whichever runner.
fn cluster_lock() -> std::fs::File {
    let f = std::fs::File::create(std::env::temp_dir().join("ipfixsvc-local-cluster.lock"))
        .expect("lock file");
    f.lock().expect("lock");
    f
}

#[test]
fn cluster_up_fronts_exporters_with_their_own_addresses_and_down_cleans_up() {
    let _lock = cluster_lock();
    let run_dir =
        std::env::temp_dir().join(format!("ipfixsvc-local-cluster-{}", std::process::id()));
    let up = run("up", &run_dir);
    let up_text = format!(
        "{}{}",
        String::from_utf8_lossy(&up.stdout),
        String::from_utf8_lossy(&up.stderr)
    );
    // Whatever happens next, the processes and the front go.
    struct Down<'a>(&'a Path);
    impl Drop for Down<'_> {
        fn drop(&mut self) {
            let _ = run("down", self.0);
        }
    }
    let _down = Down(&run_dir);
    assert!(up.status.success(), "cluster/up: {up_text}");
    let env = env_file(&run_dir);
    assert_eq!(env["API_URL"], "http://127.0.0.14:8080");
    assert!(
        up_text.contains(&env["ADMIN_TOKEN"]),
        "up prints the token: {up_text}"
    );
    for n in ["collector_0", "collector_1", "collector_2", "api"] {
        assert!(env.contains_key(&format!("NODE_{n}_PID")), "{env:?}");
    }

    let file =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/testdata/ipfix/example_flows.ipfix");
    for from in ["127.0.0.21", "127.0.0.22"] {
        let out = Command::new(common::BIN)
            .arg("send")
            .arg(&file)
            .args(["--to", "127.0.0.10:4739", "--from", from])
            .output()
            .expect("send");
        assert!(
            out.status.success(),
            "send from {from}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    common::eventually(
        "every record through the front",
        Duration::from_secs(20),
        || records(&run_dir).len() == 2 * EXAMPLE_RECORDS,
    );
    let recs = records(&run_dir);
    for from in ["127.0.0.21", "127.0.0.22"] {
        let nodes: std::collections::BTreeSet<&str> = recs
            .iter()
            .filter(|(_, ip)| ip == from)
            .map(|(n, _)| n.as_str())
            .collect();
        assert_eq!(
            recs.iter().filter(|(_, ip)| ip == from).count(),
            EXAMPLE_RECORDS,
            "the collectors saw {from} itself, not the front or 127.0.0.1"
        );
        assert_eq!(nodes.len(), 1, "one exporter, one collector: {nodes:?}");
    }

    let status = run("status", &run_dir);
    let text = String::from_utf8_lossy(&status.stdout);
    assert_eq!(text.matches("healthz=200 readyz=200").count(), 4, "{text}");
    assert!(text.contains("front:"), "{text}");

    let down = run("down", &run_dir);
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    let tables = Command::new("nft")
        .args(["list", "tables"])
        .output()
        .expect("nft");
    assert!(
        !String::from_utf8_lossy(&tables.stdout).contains("ipfixsvc_front"),
        "the front is removed"
    );
    let pids: Vec<String> = env
        .iter()
        .filter(|(k, _)| k.ends_with("_PID"))
        .map(|(_, v)| v.clone())
        .collect();
    for p in pids {
        assert!(
            !Path::new(&format!("/proc/{p}")).exists()
                || std::fs::read_to_string(format!("/proc/{p}/stat"))
                    .is_ok_and(|s| s.contains(") Z ")),
            "process {p} still runs after cluster/down"
        );
    }
}

#[test]
fn failure_drills_meet_their_targets() {
    let _lock = cluster_lock();
    let run_dir = std::env::temp_dir().join(format!("ipfixsvc-drills-{}", std::process::id()));
    let json = run_dir.with_extension("json");
    // cluster/drill brings the cluster up and down itself.
    let out = Command::new(script("drill"))
        .args(["--json", json.to_str().expect("path")])
        .env("IPFIXSVC_BIN", common::BIN)
        .env("IPFIXSVC_CLUSTER_RUN", &run_dir)
        .output()
        .expect("cluster/drill");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "cluster/drill: {text}");
    let d: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("figures")).expect("JSON");
    let u = |v: &serde_json::Value| v.as_u64().unwrap_or(u64::MAX);
    let f = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::INFINITY);

    // Node loss: the moved exporters' records are written by another node within 2 s of the
    // kill; what is lost is at most what the dead node held (half a second of its traffic
    // here), and a record is written twice only if it was sent again.
    let loss = &d["node-loss"];
    let moved = loss["moved_exporters"].as_array().expect("moved");
    assert!(!moved.is_empty(), "{loss}");
    for ip in moved {
        let ip = ip.as_str().expect("ip");
        let t = f(&loss["kill_to_first_record_s"][ip]);
        assert!(t < 2.0, "{ip}: first record {t} s after the kill: {loss}");
        let e = &loss["exporters"][ip];
        assert!(u(&e["reconnects"]) >= 1, "{e}");
        assert!(u(&e["lost"]) <= 10_000, "{ip}: {e}");
        assert!(u(&e["duplicated"]) <= u(&e["resent_records"]), "{ip}: {e}");
    }
    for (ip, e) in loss["exporters"].as_object().expect("exporters") {
        if !moved.iter().any(|m| m == ip) {
            assert_eq!((u(&e["lost"]), u(&e["duplicated"])), (0, 0), "{ip}: {e}");
        }
    }

    // Rolling restart: the drain hands every exporter off; nothing lost, nothing twice.
    let rolling = &d["rolling"];
    for (ip, e) in rolling["exporters"].as_object().expect("exporters") {
        assert_eq!(
            (u(&e["lost"]), u(&e["duplicated"])),
            (0, 0),
            "{ip}: {rolling}"
        );
    }
    assert_eq!(rolling["restarts"].as_array().map(Vec::len), Some(3));

    // Redis restart: decoding never stopped; what was learned meanwhile reached Redis, and
    // another node decodes with it.
    let redis = &d["redis"];
    assert!(
        u(&redis["a_records_written_while_redis_down"]) > 0,
        "{redis}"
    );
    assert_eq!(u(&redis["a"]["lost"]), 0, "{redis}");
    assert_eq!(u(&redis["a"]["duplicated"]), 0, "{redis}");
    assert_eq!(u(&redis["b_during_outage"]["lost"]), 0, "{redis}");
    assert!(f(&redis["b_template_in_redis_after_s"]) < 5.0, "{redis}");
    assert_eq!(
        u(&redis["b_data_alone_on_another_node"]["lost"]),
        0,
        "{redis}"
    );

    // Partition: both sides say so, and the cluster heals.
    let p = &d["partition"];
    assert!(f(&p["victim_saw_the_partition_s"]) < 15.0, "{p}");
    assert!(f(&p["others_saw_the_partition_s"]) < 15.0, "{p}");
    assert!(
        p["other_view_of_victim"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("unreachable")),
        "{p}"
    );
    assert!(f(&p["healed_after_s"]) < 60.0, "{p}");
    let _ = std::fs::remove_dir_all(&run_dir);
    let _ = std::fs::remove_file(&json);
}
