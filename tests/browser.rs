//! The operator page `/debug/actors` in a real browser: a two-node cluster on loopback, and
//! `tests/browser/actors_page.py` driving headless Chromium through chromedriver (Debian
//! packages `chromium` and `chromium-driver`, installed by `scripts/test`). The page must show
//! both nodes' trees, reload itself, and fold and unfold a subtree; a screenshot is kept.

mod common;

use common::{Server, free_port, need};
use std::path::Path;
use std::time::Duration;

const COOKIE: &str = "a-long-random-test-cookie";
const TOKEN: &str = "an-operator-token-for-the-browser";

fn node(name: &str, cluster: &str, seed: Option<&str>) -> (Server, String) {
    let dir = std::env::temp_dir().join(format!("ipfixsvc-browser-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let dir_s = dir.display().to_string();
    let mut env = vec![
        ("IPFIXSVC__NODE__NAME", name),
        ("IPFIXSVC__NODE__ROLES", "collector,api"),
        ("IPFIXSVC__API__LISTEN", "127.0.0.1:0"),
        ("IPFIXSVC__API__ADMIN_TOKEN", TOKEN),
        ("IPFIXSVC__STORAGE__DIR", dir_s.as_str()),
        ("IPFIXSVC__CLUSTER__COOKIE", COOKIE),
        ("IPFIXSVC__CLUSTER__LISTEN", cluster),
        ("IPFIXSVC__OUTPUT__FORMAT", "count"),
    ];
    if let Some(s) = seed {
        env.push(("IPFIXSVC__CLUSTER__SEEDS", s));
    }
    let server = Server::start(name, &env);
    let api = common::api_addr(&server).to_string();
    (server, api)
}

#[test]
fn the_actor_page_shows_both_nodes_and_folds_in_chromium() {
    for tool in ["chromium", "chromedriver", "python3"] {
        need(tool);
    }
    let (ca, cb) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let (_a, api_a) = node("node-a", &ca, None);
    let (b, _api_b) = node("node-b", &cb, Some(&ca));
    b.wait_log("cluster peer ready", 1, Duration::from_secs(20));
    let shot = std::env::temp_dir().join(format!("ipfixsvc-actors-{}.png", std::process::id()));
    let _ = std::fs::remove_file(&shot);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/actors_page.py");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .args(["--url", &format!("http://{api_a}/debug/actors")])
        .args(["--token", TOKEN, "--nodes", "node-a,node-b"])
        .arg("--screenshot")
        .arg(&shot)
        .output()
        .expect("run the browser script");
    assert!(
        out.status.success(),
        "the browser check failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(&shot).expect("screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    assert!(
        png.len() > 10_000,
        "a page, not a blank: {} bytes",
        png.len()
    );
}
