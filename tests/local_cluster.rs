//! `cluster/`: the Kubernetes shape on one machine, run as a newcomer would. `cluster/up`
//! starts Redis, three collectors and an API node on 127.0.0.11-15 and the nftables front on
//! 127.0.0.10:4739; two exporters with their own addresses send through the front; every
//! record lands, and the collectors saw each exporter's own address (the front keeps it, as
//! kube-proxy's DNAT does); `cluster/status` shows four healthy nodes; `cluster/down` stops
//! everything and removes the front.

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

#[test]
fn cluster_up_fronts_exporters_with_their_own_addresses_and_down_cleans_up() {
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
