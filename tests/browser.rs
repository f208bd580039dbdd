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

/// The web console (`GET /`) in Chromium, as a user goes through it (`tests/browser/console.py`):
/// a wrong token refused, sign in, upload a capture, its conversion succeeds, "Chart" makes a
/// time-series job after it whose chart is drawn, and the live series of a `timeseries` stream
/// fed by an exporter sending now. Screenshots of both are kept (README shows them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_uploads_charts_and_shows_live_series_in_chromium() {
    for tool in ["chromium", "chromedriver", "python3"] {
        need(tool);
    }
    let dir = std::env::temp_dir().join(format!("ipfixsvc-console-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let dir_s = dir.display().to_string();
    let server = Server::start(
        "console",
        &[
            ("IPFIXSVC__NODE__ROLES", "collector,api,jobs,mediator"),
            ("IPFIXSVC__API__LISTEN", "127.0.0.1:0"),
            ("IPFIXSVC__API__ADMIN_TOKEN", TOKEN),
            ("IPFIXSVC__STORAGE__DIR", dir_s.as_str()),
            ("IPFIXSVC__OUTPUT__FORMAT", "count"),
        ],
    );
    let api = common::api_addr(&server);
    common::create_tenant(
        api,
        TOKEN,
        serde_json::json!({"id": "acme", "exporters": ["127.0.0.0/8"]}),
    )
    .await;
    let http = reqwest::Client::new();
    // The page needs no token, and says where its script may come from.
    let page = http
        .get(format!("http://{api}/"))
        .send()
        .await
        .expect("GET /");
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap_or_default()
        .to_string();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    // A live stream, and flows of the last minutes from an exporter of the tenant.
    let r = http
        .post(format!("http://{api}/api/v1/tenants/acme/streams"))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"name": "live", "sink": {"kind": "timeseries", "interval_secs": 10, "by": ["destinationTransportPort"]}}))
        .send()
        .await
        .expect("stream");
    assert_eq!(r.status(), 201);
    server.wait_log("stream started", 1, Duration::from_secs(10));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let ports = [443u16, 80, 53, 22, 8080];
    let flows: Vec<(u64, u16, u64)> = (0..1800u64)
        .map(|k| {
            let port = ports[(k * k % 7 % 5) as usize];
            (
                now - 1_800_000 + k * 1000,
                port,
                200 + (k % 60) * 40 * (1 + port as u64 % 3),
            )
        })
        .collect();
    common::export_from("127.0.0.1", server.tcp, &common::flows_at(&flows)).await;
    server.wait_log("exporter session ended", 1, Duration::from_secs(20));

    let shots = (dir.join("console-jobs.png"), dir.join("console-live.png"));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser/console.py");
    let capture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/testdata/traffic/mixed.pcap");
    let out = tokio::process::Command::new("python3")
        .arg(&script)
        .args([
            "--url",
            &format!("http://{api}"),
            "--token",
            TOKEN,
            "--tenant",
            "acme",
        ])
        .arg("--capture")
        .arg(&capture)
        .arg("--jobs-shot")
        .arg(&shots.0)
        .arg("--live-shot")
        .arg(&shots.1)
        .output()
        .await
        .expect("run the browser script");
    assert!(
        out.status.success(),
        "the console check failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for shot in [&shots.0, &shots.1] {
        let png = std::fs::read(shot).expect("screenshot");
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
        assert!(
            png.len() > 20_000,
            "a page, not a blank: {} bytes",
            png.len()
        );
    }
    // Kept for a person to look at (README's screenshots are such ones).
    if let Ok(keep) = std::env::var("IPFIXSVC_CONSOLE_SHOTS") {
        for shot in [&shots.0, &shots.1] {
            let _ = std::fs::copy(
                shot,
                Path::new(&keep).join(shot.file_name().unwrap_or_default()),
            );
        }
    }
}
