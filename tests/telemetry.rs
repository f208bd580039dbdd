//! Telemetry as an operator's tools see it. A real OTLP/HTTP receiver (Python, decoding with
//! PyPI's `opentelemetry-proto`) gets the node's spans and metrics with the names and attributes
//! of OpenTelemetry's HTTP semantic conventions; `/metrics` parses with `prometheus-client`'s
//! parser; and a receiver that is not there costs the service nothing.

mod common;

use common::{Server, eventually};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TOKEN: &str = "telemetry-admin-token-0123456789";

fn script(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/telemetry")
        .join(name)
}

/// A node with the API and the collector, exporting to `endpoint`.
fn node(name: &str, endpoint: &str) -> (Server, std::net::SocketAddr) {
    let dir = common::config_dir(name);
    let server = Server::start(
        name,
        &[
            ("IPFIXSVC__NODE__NAME", name),
            ("IPFIXSVC__NODE__ROLES", "collector,api"),
            ("IPFIXSVC__API__LISTEN", "127.0.0.1:0"),
            ("IPFIXSVC__API__ADMIN_TOKEN", TOKEN),
            ("IPFIXSVC__STORAGE__DIR", dir.to_str().expect("dir")),
            ("IPFIXSVC__TELEMETRY__OTLP_ENDPOINT", endpoint),
            ("IPFIXSVC__TELEMETRY__METRICS_INTERVAL_SECS", "1"),
        ],
    );
    let api = common::api_addr(&server);
    (server, api)
}

/// GET with the admin token; the status code and the body.
fn get(api: std::net::SocketAddr, path: &str) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-m", "5", "-w", "\n%{http_code}"])
        .args(["-H", &format!("Authorization: Bearer {TOKEN}")])
        .arg(format!("http://{api}{path}"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn spans_and_metrics_reach_an_otlp_receiver_and_metrics_parse_as_prometheus() {
    common::need("curl");
    let python = common::venv_tool("python3");
    let dir = common::config_dir("telemetry-receiver");
    let received = dir.join("otlp.jsonl");
    let _ = std::fs::remove_file(&received);
    let mut receiver = Command::new(&python)
        .arg(script("otlp_receiver.py"))
        .arg(&received)
        .stdout(Stdio::piped())
        .spawn()
        .expect("the OTLP receiver");
    let mut port = String::new();
    BufReader::new(receiver.stdout.take().expect("stdout"))
        .read_line(&mut port)
        .expect("its port");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _receiver = Kill(receiver);
    let (server, api) = node(
        "telemetry-node",
        &format!("http://127.0.0.1:{}", port.trim()),
    );

    assert_eq!(get(api, "/readyz").0, 200);
    assert_eq!(get(api, "/api/v1/sessions").0, 200);
    assert_eq!(get(api, "/api/v1/tenants/nobody").0, 404);

    // Spans: one per request, named by method and route, with the HTTP attributes; the
    // resource names the service and the node.
    eventually("the request spans", Duration::from_secs(20), || {
        lines(&received)
            .iter()
            .any(|l| l["name"] == "GET /api/v1/tenants/{tenant}")
    });
    let all = lines(&received);
    let span = all
        .iter()
        .find(|l| l["kind"] == "span" && l["name"] == "GET /api/v1/sessions")
        .unwrap_or_else(|| panic!("no span of GET /api/v1/sessions: {all:?}"));
    let a = &span["attributes"];
    assert_eq!(a["http.request.method"], "GET", "{span}");
    assert_eq!(a["http.route"], "/api/v1/sessions", "{span}");
    assert_eq!(a["url.path"], "/api/v1/sessions", "{span}");
    assert_eq!(a["http.response.status_code"], 200, "{span}");
    assert_eq!(span["span_kind"], 2, "SPAN_KIND_SERVER: {span}");
    assert_eq!(span["resource"]["service.name"], "ipfixsvc", "{span}");
    assert_eq!(span["resource"]["service.instance.id"], "telemetry-node");
    let missing = all
        .iter()
        .find(|l| l["name"] == "GET /api/v1/tenants/{tenant}")
        .expect("the 404's span");
    assert_eq!(missing["attributes"]["http.response.status_code"], 404);

    // Metrics over OTLP: the request duration histogram, by route.
    eventually(
        "the request duration metric",
        Duration::from_secs(20),
        || {
            lines(&received).iter().any(|l| {
                l["kind"] == "metric"
                    && l["name"] == "http.server.request.duration"
                    && l["type"] == "histogram"
                    && l["unit"] == "s"
                    && l["points"]
                        .as_array()
                        .is_some_and(|p| p.iter().any(|p| p["http.route"] == "/readyz"))
            })
        },
    );

    // /metrics, read by prometheus-client's parser: the same histogram, and the node's own
    // families.
    let (code, text) = get(api, "/metrics");
    assert_eq!(code, 200);
    let mut parse = Command::new(&python)
        .arg(script("prometheus_families.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("parser");
    std::io::Write::write_all(&mut parse.stdin.take().expect("stdin"), text.as_bytes())
        .expect("to the parser");
    let parsed = parse.wait_with_output().expect("parsed");
    assert!(
        parsed.status.success(),
        "prometheus-client refuses /metrics: {}\n{text}",
        String::from_utf8_lossy(&parsed.stderr)
    );
    let families: Vec<serde_json::Value> =
        serde_json::from_slice(&parsed.stdout).expect("families");
    let family = |name: &str| {
        families
            .iter()
            .find(|f| f["name"] == name)
            .unwrap_or_else(|| panic!("no family {name} in /metrics:\n{text}"))
    };
    let duration = family("http_server_request_duration_seconds");
    assert_eq!(duration["type"], "histogram");
    assert!(
        duration["samples"].as_array().is_some_and(|s| s
            .iter()
            .any(|s| s["labels"]["http_route"] == "/api/v1/sessions"
                && s["labels"]["http_response_status_code"] == "200")),
        "{duration}"
    );
    assert_eq!(family("ipfixsvc_collector_tcp_sessions")["type"], "gauge");
    assert_eq!(family("ipfixsvc_http_requests")["type"], "counter");
    drop(server);
}

#[test]
fn an_otlp_receiver_that_is_not_there_costs_nothing() {
    common::need("curl");
    // Nothing listens on port 9 of the loopback: every export is refused.
    let (server, api) = node("telemetry-nobody", "http://127.0.0.1:9");
    let started = Instant::now();
    for _ in 0..50 {
        assert_eq!(get(api, "/readyz").0, 200);
    }
    let took = started.elapsed();
    // 50 requests through curl processes: well under a second each on any machine.
    assert!(took < Duration::from_secs(15), "{took:?}");
    // Metrics are pushed every second and every one is refused: the SDK's complaint is one
    // line a minute, not one per export.
    std::thread::sleep(Duration::from_secs(4));
    let noise = server.log_lines("ExportError");
    assert_eq!(noise.len(), 1, "{noise:?}");
    assert!(server.terminate().success());
}
