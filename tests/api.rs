//! The REST API of a real `ipfixsvc serve` process on loopback: health, readiness and metrics
//! for anyone; everything else behind the admin bearer token; errors as RFC 9457 problems;
//! request ids; the admin token made once, private, and kept across restarts.

mod common;

use common::{Server, admin_token, api_addr, create_tenant};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// GET `url` with a bearer token; the JSON answer. Bounded: a hang fails naming the URL.
async fn get_json(
    http: &reqwest::Client,
    url: impl reqwest::IntoUrl + std::fmt::Display,
    token: &str,
) -> serde_json::Value {
    let what = url.to_string();
    let r = http
        .get(url)
        .bearer_auth(token)
        .timeout(Duration::from_secs(15))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {what}: {e}"));
    r.json()
        .await
        .unwrap_or_else(|e| panic!("GET {what}: not JSON: {e}"))
}

fn storage(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("ipfixsvc-api-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn start(name: &str, extra: &[(&str, &str)]) -> (Server, SocketAddr, std::path::PathBuf) {
    let dir = storage(name);
    let dir_s = dir.display().to_string();
    let mut env = vec![
        ("IPFIXSVC__NODE__ROLES", "collector,api"),
        ("IPFIXSVC__API__LISTEN", "127.0.0.1:0"),
        ("IPFIXSVC__STORAGE__DIR", dir_s.as_str()),
    ];
    env.extend_from_slice(extra);
    let server = Server::start(name, &env);
    let api = api_addr(&server);
    (server, api, dir)
}

/// GET `url` with a bearer token, which must answer the problem `status`.
async fn get_problem(
    http: &reqwest::Client,
    url: impl reqwest::IntoUrl,
    token: &str,
    status: u16,
) -> serde_json::Value {
    problem(
        http.get(url)
            .bearer_auth(token)
            .timeout(Duration::from_secs(15))
            .send()
            .await
            .expect("GET"),
        status,
    )
    .await
}

async fn problem(r: reqwest::Response, status: u16) -> serde_json::Value {
    assert_eq!(r.status().as_u16(), status);
    assert_eq!(
        r.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/problem+json")
    );
    let body: serde_json::Value = r.json().await.expect("problem JSON");
    assert_eq!(body["status"], status);
    assert!(
        body["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("https://")),
        "{body}"
    );
    assert!(body["detail"].as_str().is_some_and(|d| !d.is_empty()));
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_metrics_and_the_admin_routes() {
    let (server, api, dir) = start("routes", &[]);
    let base = format!("http://{api}");
    let http = reqwest::Client::new();
    // The admin token: made at the first start, readable by its owner only, said once.
    let token = std::fs::read_to_string(dir.join("admin-token")).expect("admin-token file");
    let token = token.trim().to_string();
    assert_eq!(token.len(), 64);
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("admin-token"))
            .expect("file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert_eq!(server.log_lines(&token).len(), 1, "printed once");

    let r = http
        .get(format!("{base}/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(r.status(), 200);
    let id = r.headers().get("x-request-id").cloned();
    assert!(id.is_some_and(|v| v.len() >= 16), "a request id is made");
    let r = http
        .get(format!("{base}/readyz"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .expect("readyz");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("abc-123"),
        "the client's id is kept"
    );
    let ready: serde_json::Value = r.json().await.expect("json");
    assert_eq!(ready["ready"], true, "{ready}");
    assert_eq!(ready["checks"]["template_store"], "ok");

    // Without a token, with a wrong one: 401 problems; with the admin token: the sessions of
    // the cluster, with the live one's statistics.
    let r = http
        .get(format!("{base}/api/v1/sessions"))
        .send()
        .await
        .expect("sessions");
    assert_eq!(
        r.headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok()),
        Some("Bearer")
    );
    problem(r, 401).await;
    let r = http
        .get(format!("{base}/api/v1/sessions"))
        .bearer_auth("not-the-token-at-all")
        .send()
        .await
        .expect("sessions");
    problem(r, 401).await;
    let file = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/testdata/ipfix/example_flows.ipfix"
    ))
    .expect("file");
    let mut exporter = tokio::net::TcpStream::connect(server.tcp)
        .await
        .expect("connect");
    exporter.write_all(&file).await.expect("send");
    let mut records = 0;
    for _ in 0..100 {
        let list: serde_json::Value =
            get_json(&http, format!("{base}/api/v1/sessions"), &token).await;
        records = list["sessions"]
            .as_array()
            .and_then(|s| s.first())
            .and_then(|s| s["stats"]["data_records"].as_u64())
            .unwrap_or(0);
        if records == 3979 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(records, 3979, "the live session and its records");
    // What the listing names per session (issue 13): node, exporter, transport, domains,
    // tenant, started, and the figures.
    let list: serde_json::Value = get_json(&http, format!("{base}/api/v1/sessions"), &token).await;
    let s = &list["sessions"][0];
    let local = exporter.local_addr().expect("local addr").to_string();
    assert_eq!(s["stats"]["exporter"], local.as_str(), "{s}");
    assert_eq!(s["stats"]["transport"], "tcp", "{s}");
    assert_eq!(s["stats"]["tenant"], "default", "{s}");
    assert!(
        s["stats"]["domains"]
            .as_array()
            .is_some_and(|d| !d.is_empty()),
        "{s}"
    );
    assert!(
        s["stats"]["started"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z') && t.len() == 24),
        "{s}"
    );
    assert!(s["node"].as_str().is_some_and(|n| !n.is_empty()), "{s}");
    let cluster: serde_json::Value =
        get_json(&http, format!("{base}/api/v1/cluster"), &token).await;
    assert_eq!(
        cluster["nodes"].as_array().map(Vec::len),
        Some(1),
        "{cluster}"
    );

    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    // The full list is held to README's table by tests/telemetry.rs.
    for family in [
        "ipfixsvc_collector_sessions_refused_total{",
        "ipfixsvc_template_store_healthy{",
        "http_server_request_duration_seconds_count{",
        "process_cpu_time_seconds_total{",
    ] {
        assert!(metrics.contains(family), "{family}: {metrics}");
    }

    // The actor tree: JSON by default, a folding page for a browser.
    let tree: serde_json::Value = get_json(&http, format!("{base}/debug/actors"), &token).await;
    let root = &tree["nodes"][0]["tree"];
    assert_eq!(root["name"], "node", "{tree}");
    let names: Vec<&str> = root["children"]
        .as_array()
        .expect("children")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    for want in ["collector", "template-cache", "session-directory", "api"] {
        assert!(names.contains(&want), "{want} in {names:?}");
    }
    // Each actor with its kind, node and restarts; the figures of the kinds that have them.
    let find = |kind: &str| -> Vec<serde_json::Value> {
        fn walk(v: &serde_json::Value, kind: &str, out: &mut Vec<serde_json::Value>) {
            if v["kind"] == kind {
                out.push(v.clone());
            }
            for c in v["children"].as_array().into_iter().flatten() {
                walk(c, kind, out);
            }
        }
        let mut out = Vec::new();
        walk(root, kind, &mut out);
        out
    };
    assert_eq!(root["kind"], "NodeSupervisor");
    assert_eq!(root["node"], tree["nodes"][0]["node"]);
    assert_eq!(find("TemplateCache")[0]["restarts"], 0);
    assert!(
        find("TemplateCache")[0]["figures"]["templates"].as_u64() >= Some(1),
        "{tree}"
    );
    assert_eq!(find("CollectorSupervisor")[0]["figures"]["tcp_sessions"], 1);
    let session = &find("ExporterSession")[0];
    assert_eq!(session["figures"]["records"], 3979, "{session}");
    assert_eq!(session["figures"]["errors"], 0);
    assert_eq!(find("TcpListener").len(), 1);
    assert_eq!(find("SessionDirectory").len(), 1, "each actor once: {tree}");
    let page = http
        .get(format!("{base}/debug/actors"))
        .bearer_auth(&token)
        .header("accept", "text/html")
        .send()
        .await
        .expect("page")
        .text()
        .await
        .expect("html");
    assert!(page.contains("<details") && page.contains("collector/tcp-listener"));
    problem(
        http.get(format!("{base}/debug/actors"))
            .send()
            .await
            .expect("anonymous"),
        401,
    )
    .await;

    // Routes and methods that do not exist: problems, never 5xx.
    problem(
        http.get(format!("{base}/no/such/route"))
            .send()
            .await
            .expect("404"),
        404,
    )
    .await;
    problem(
        http.post(format!("{base}/healthz"))
            .send()
            .await
            .expect("405"),
        405,
    )
    .await;
    drop(exporter);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_admin_token_is_used_and_no_file_is_made() {
    let (_server, api, dir) = start(
        "configured-token",
        &[(
            "IPFIXSVC__API__ADMIN_TOKEN",
            "operator-secret-from-a-k8s-secret",
        )],
    );
    let http = reqwest::Client::new();
    let r = http
        .get(format!("http://{api}/api/v1/cluster"))
        .bearer_auth("operator-secret-from-a-k8s-secret")
        .send()
        .await
        .expect("cluster");
    assert_eq!(r.status(), 200);
    assert!(!dir.join("admin-token").exists());
}

#[test]
fn a_taken_api_port_stops_the_node_with_one_clear_line() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let dir = storage("taken");
    let out = std::process::Command::new(common::BIN)
        .arg("serve")
        .env("IPFIXSVC__NODE__ROLES", "api,jobs")
        .env("IPFIXSVC__API__LISTEN", &addr)
        .env("IPFIXSVC__STORAGE__DIR", &dir)
        .output()
        .expect("serve");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot listen for the API on {addr}")),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capture_uploaded_becomes_a_job_whose_result_is_what_convert_makes() {
    let (server, api, dir) = start("jobs", &[("IPFIXSVC__NODE__ROLES", "collector,api,jobs")]);
    let base = format!("http://{api}/api/v1/tenants/acme/jobs");
    let token = admin_token(&dir);
    let http = reqwest::Client::new();
    create_tenant(api, &token, serde_json::json!({"id": "acme"})).await;
    let capture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/testdata/traffic/http.pcap"
    );
    let bytes = std::fs::read(capture).expect("capture");
    let r = http
        .post(format!(
            "{base}/pcap-conversion?uniflow=true&idle_timeout=60"
        ))
        .bearer_auth(&token)
        .body(bytes.clone())
        .send()
        .await
        .expect("upload");
    assert_eq!(r.status(), 202);
    let location = r
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .expect("Location")
        .to_string();
    let job: serde_json::Value = r.json().await.expect("record");
    let id = job["id"].as_str().expect("id").to_string();
    assert_eq!(location, format!("/api/v1/tenants/acme/jobs/{id}"));
    assert_eq!(job["options"]["uniflow"], true);
    // Poll until it ends.
    let mut state = String::new();
    for _ in 0..200 {
        let r: serde_json::Value = get_json(&http, format!("http://{api}{location}"), &token).await;
        state = r["state"].as_str().unwrap_or_default().to_string();
        if state == "succeeded" || state == "failed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(state, "succeeded");
    // The result is what `ipfixsvc convert` makes of the same capture with the same options.
    let got = http
        .get(format!("{base}/{id}/result"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("result");
    assert_eq!(got.status(), 200);
    let got = got.bytes().await.expect("bytes");
    let expected_file = dir.join("expected.ipfix");
    let ok = std::process::Command::new(common::BIN)
        .args([
            "convert",
            "--quiet",
            "--uniflow",
            "--idle-timeout",
            "60",
            "-o",
        ])
        .arg(&expected_file)
        .arg(capture)
        .output()
        .expect("convert");
    assert!(ok.status.success());
    let expected = std::fs::read(&expected_file).expect("expected");
    assert_eq!(got.len(), expected.len());
    // Byte for byte but the export time, the clock's second when each writer started (the two
    // runs may straddle a second).
    let timeless = |b: &[u8]| {
        let mut b = b.to_vec();
        let mut at = 0;
        while at + 16 <= b.len() {
            let len = u16::from_be_bytes([b[at + 2], b[at + 3]]) as usize;
            b[at + 4..at + 8].fill(0);
            at += len.max(16);
        }
        b
    };
    assert!(timeless(&got) == timeless(&expected), "byte for byte");
    // A range of it.
    let part = http
        .get(format!("{base}/{id}/result"))
        .bearer_auth(&token)
        .header("range", "bytes=0-15")
        .send()
        .await
        .expect("range");
    assert_eq!(part.status(), 206);
    // The same file's first bytes (the CLI's file differs in its export time when the two runs
    // straddle a second).
    assert_eq!(part.bytes().await.expect("bytes")[..], got[..16]);
    // Listed, newest first; cancelling an ended job is a conflict.
    let list: serde_json::Value = get_json(&http, &base, &token).await;
    assert_eq!(list["jobs"][0]["id"], id.as_str());
    problem(
        http.delete(format!("{base}/{id}"))
            .bearer_auth(&token)
            .send()
            .await
            .expect("cancel"),
        409,
    )
    .await;
    // Another tenant's own token, on its own path or on acme's: the job is not found either way.
    create_tenant(api, &token, serde_json::json!({"id": "globex"})).await;
    let globex = common::create_token(api, &token, "globex").await;
    let globex = globex["token"].as_str().expect("token").to_string();
    for path in [
        format!("/api/v1/tenants/globex/jobs/{id}"),
        format!("/api/v1/tenants/globex/jobs/{id}/result"),
        format!("/api/v1/tenants/acme/jobs/{id}"),
        format!("/api/v1/tenants/acme/jobs/{id}/result"),
    ] {
        get_problem(&http, format!("http://{api}{path}"), &globex, 404).await;
    }
    problem(
        http.delete(format!("http://{api}/api/v1/tenants/globex/jobs/{id}"))
            .bearer_auth(&globex)
            .send()
            .await
            .expect("other tenant's cancel"),
        404,
    )
    .await;
    // Another tenant, an unknown id, no token: 404 / 404 / 401.
    get_problem(
        &http,
        format!("http://{api}/api/v1/tenants/other/jobs/{id}"),
        &token,
        404,
    )
    .await;
    get_problem(
        &http,
        format!("{base}/00000000-0000-4000-8000-000000000000/result"),
        &token,
        404,
    )
    .await;
    problem(
        http.get(format!("{base}/{id}/result"))
            .send()
            .await
            .expect("anonymous"),
        401,
    )
    .await;
    // Not a capture: 415, nothing left behind; too large: 413, nothing left behind.
    problem(
        http.post(format!("{base}/pcap-conversion"))
            .bearer_auth(&token)
            .body("this is not a capture")
            .send()
            .await
            .expect("not a capture"),
        415,
    )
    .await;
    let uploads = dir.join("uploads").join("acme");
    let left = || {
        std::fs::read_dir(&uploads)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "part"))
                    .count()
            })
            .unwrap_or(0)
    };
    assert_eq!(left(), 0, "no part file left");
    // Deleted, acme's id is not given out again while its job records last.
    let r = http
        .delete(format!("http://{api}/api/v1/tenants/acme"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 204);
    let p = problem(
        http.post(format!("http://{api}/api/v1/tenants"))
            .bearer_auth(&token)
            .json(&serde_json::json!({"id": "acme"}))
            .send()
            .await
            .expect("again"),
        409,
    )
    .await;
    assert!(
        p["type"]
            .as_str()
            .is_some_and(|t| t.ends_with("/tenant-id-in-use")),
        "{p}"
    );
    drop(server);
    let (_small, api2, dir2) = start(
        "jobs-small",
        &[
            ("IPFIXSVC__NODE__ROLES", "collector,api,jobs"),
            ("IPFIXSVC__API__MAX_UPLOAD_BYTES", "1000"),
        ],
    );
    let token2 = admin_token(&dir2);
    create_tenant(api2, &token2, serde_json::json!({"id": "acme"})).await;
    problem(
        http.post(format!(
            "http://{api2}/api/v1/tenants/acme/jobs/pcap-conversion"
        ))
        .bearer_auth(&token2)
        // Past the limit, but small enough to be sent whole before the answer: a server that
        // answers 413 early may close the connection on a client still sending.
        .body(bytes[..4096].to_vec())
        .send()
        .await
        .expect("too large"),
        413,
    )
    .await;
    let uploads2 = dir2.join("uploads").join("acme");
    assert_eq!(
        std::fs::read_dir(&uploads2).map(|d| d.count()).unwrap_or(0),
        0,
        "nothing left on disk"
    );
}

#[test]
fn a_node_with_only_the_api_role_runs_until_told_to_stop() {
    let dir = storage("api-only");
    let mut child = std::process::Command::new(common::BIN)
        .arg("serve")
        .env("IPFIXSVC__NODE__ROLES", "api,jobs")
        .env("IPFIXSVC__API__LISTEN", "127.0.0.1:0")
        .env("IPFIXSVC__STORAGE__DIR", &dir)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("serve");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        child.try_wait().expect("status").is_none(),
        "no sessions is no output failure"
    );
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let status = child.wait().expect("exit");
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_and_their_tokens() {
    let (_server, api, dir) = start(
        "tenants",
        &[("IPFIXSVC__NODE__ROLES", "collector,api,jobs")],
    );
    let admin = admin_token(&dir);
    let http = reqwest::Client::new();
    let v1 = format!("http://{api}/api/v1");
    let post = |body: serde_json::Value| {
        http.post(format!("{v1}/tenants"))
            .bearer_auth(&admin)
            .json(&body)
            .send()
    };
    let r = post(serde_json::json!({"id": "acme", "name": "ACME", "exporters": ["10.1.2.3/16"]}))
        .await
        .expect("create");
    assert_eq!(r.status(), 201);
    assert_eq!(
        r.headers().get("location").and_then(|v| v.to_str().ok()),
        Some("/api/v1/tenants/acme")
    );
    let t: serde_json::Value = r.json().await.expect("json");
    assert_eq!(t["exporters"][0], "10.1.0.0/16", "normalised");
    problem(
        post(serde_json::json!({"id": "acme"}))
            .await
            .expect("again"),
        409,
    )
    .await;
    problem(
        post(serde_json::json!({"id": "Not Valid"}))
            .await
            .expect("bad id"),
        400,
    )
    .await;
    problem(
        post(serde_json::json!({"id": "x", "exporters": ["10.0.0.0/40"]}))
            .await
            .expect("bad prefix"),
        400,
    )
    .await;
    problem(
        post(serde_json::json!({"id": "y", "colour": "red"}))
            .await
            .expect("unknown field"),
        400,
    )
    .await;
    assert_eq!(
        post(serde_json::json!({"id": "globex"}))
            .await
            .expect("second")
            .status(),
        201
    );
    let r = http
        .patch(format!("{v1}/tenants/acme"))
        .bearer_auth(&admin)
        .json(&serde_json::json!({"name": "ACME Corp"}))
        .send()
        .await
        .expect("patch");
    assert_eq!(r.status(), 200);
    let list: serde_json::Value = get_json(&http, format!("{v1}/tenants"), &admin).await;
    assert_eq!(list["tenants"][0]["name"], "ACME Corp");
    assert_eq!(list["tenants"].as_array().map(Vec::len), Some(2));

    // A token, shown once; listed without its secret.
    let made = common::create_token(api, &admin, "acme").await;
    let token = made["token"].as_str().expect("token").to_string();
    let tid = made["id"].as_str().expect("id").to_string();
    let listed = http
        .get(format!("{v1}/tenants/acme/tokens"))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("tokens")
        .text()
        .await
        .expect("text");
    assert!(
        listed.contains(&tid) && !listed.contains(&token),
        "{listed}"
    );
    assert!(!listed.contains("hash"));
    assert!(
        listed.contains("\"last_used_ms\":null"),
        "never used: {listed}"
    );

    // The tenant's token: its own jobs, not another tenant's (404), not the admin routes (401).
    let r = http
        .get(format!("{v1}/tenants/acme/jobs"))
        .bearer_auth(&token)
        .send()
        .await
        .expect("own jobs");
    assert_eq!(r.status(), 200);
    let used = get_json(&http, format!("{v1}/tenants/acme/tokens"), &admin).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let last = used["tokens"][0]["last_used_ms"]
        .as_u64()
        .expect("used now");
    assert!(now.abs_diff(last) < 60_000, "{used}");
    get_problem(&http, format!("{v1}/tenants/globex/jobs"), &token, 404).await;
    get_problem(&http, format!("{v1}/tenants"), &token, 401).await;
    // Revoked: refused at once.
    let r = http
        .delete(format!("{v1}/tenants/acme/tokens/{tid}"))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("revoke");
    assert_eq!(r.status(), 204);
    get_problem(&http, format!("{v1}/tenants/acme/jobs"), &token, 401).await;
    // A deleted tenant is gone for the admin too.
    let r = http
        .delete(format!("{v1}/tenants/globex"))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), 204);
    get_problem(&http, format!("{v1}/tenants/globex/jobs"), &admin, 404).await;
}

/// A pcap of `packets` small UDP packets over 5,000 flows (in memory: nothing left on disk),
/// big enough that converting it keeps a debug build's worker busy for seconds (about 0.8M
/// packets/s).
fn big_capture(packets: u32) -> Vec<u8> {
    let mut f = Vec::with_capacity(24 + packets as usize * 58);
    f.extend_from_slice(&[
        0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 1, 0, 0, 0,
    ]);
    for i in 0..packets {
        let mut pkt = vec![0u8; 12];
        pkt.extend_from_slice(&[0x08, 0x00]);
        pkt.extend_from_slice(&[
            0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ]);
        let sport = 1024 + (i % 5000) as u16;
        pkt.extend_from_slice(&sport.to_be_bytes());
        pkt.extend_from_slice(&[0, 53, 0, 8, 0, 0]);
        let len = pkt.len() as u32;
        for v in [1_700_000_000 + i / 1000, (i % 1000) * 1000, len, len] {
            f.extend_from_slice(&v.to_le_bytes());
        }
        f.extend_from_slice(&pkt);
    }
    f
}

/// Files under `dir` (not folders), recursively.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            out.extend(files_under(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_and_a_full_queue_answer_429_and_expired_jobs_leave_no_files() {
    let (_server, api, dir) = start(
        "quotas",
        &[
            ("IPFIXSVC__NODE__ROLES", "collector,api,jobs"),
            ("IPFIXSVC__JOBS__WORKERS", "1"),
            ("IPFIXSVC__JOBS__QUEUE", "0"),
            ("IPFIXSVC__JOBS__RETENTION_SECS", "2"),
        ],
    );
    let admin = admin_token(&dir);
    let http = reqwest::Client::new();
    let v1 = format!("http://{api}/api/v1");
    for (id, quotas) in [
        ("acme", serde_json::json!({"max_jobs": 1})),
        ("globex", serde_json::json!({})),
        ("tiny", serde_json::json!({"upload_bytes": 1000})),
    ] {
        create_tenant(api, &admin, serde_json::json!({"id": id, "quotas": quotas})).await;
    }
    let small = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/testdata/traffic/http.pcap"
    ))
    .expect("capture");
    let submit = |tenant: &str, body: Vec<u8>| {
        http.post(format!("{v1}/tenants/{tenant}/jobs/pcap-conversion"))
            .bearer_auth(&admin)
            .body(body)
            .send()
    };
    // acme's big job takes the only worker.
    let r = submit("acme", big_capture(2_000_000))
        .await
        .expect("big upload");
    assert_eq!(r.status(), 202);
    let job: serde_json::Value = r.json().await.expect("record");
    let big_id = job["id"].as_str().expect("id").to_string();
    let state = get_json(&http, format!("{v1}/tenants/acme/jobs/{big_id}"), &admin).await;
    assert_eq!(state["state"], "running", "{state}");
    // acme is at its quota of one job; globex is not, but the queue is full.
    let r = submit("acme", small.clone()).await.expect("acme again");
    assert!(r.headers().get("retry-after").is_some());
    let p = problem(r, 429).await;
    assert!(
        p["type"]
            .as_str()
            .is_some_and(|t| t.ends_with("/quota-jobs")),
        "{p}"
    );
    let r = submit("globex", small.clone()).await.expect("globex");
    assert!(r.headers().get("retry-after").is_some());
    let p = problem(r, 429).await;
    assert!(
        p["type"]
            .as_str()
            .is_some_and(|t| t.ends_with("/queue-full")),
        "{p}"
    );
    // A PATCH of one quota leaves the other as it was.
    let r = http
        .patch(format!("{v1}/tenants/tiny"))
        .bearer_auth(&admin)
        .json(&serde_json::json!({"quotas": {"max_jobs": 3}}))
        .send()
        .await
        .expect("patch");
    let patched: serde_json::Value = r.json().await.expect("json");
    assert_eq!(
        patched["quotas"],
        serde_json::json!({"max_jobs": 3, "upload_bytes": 1000})
    );
    // tiny may keep 1,000 bytes of uploads: 413, naming the quota, nothing left on disk.
    let p = problem(
        submit("tiny", small[..4096].to_vec()).await.expect("tiny"),
        413,
    )
    .await;
    assert!(
        p["detail"]
            .as_str()
            .is_some_and(|d| d.contains("quotas.upload_bytes")),
        "{p}"
    );
    assert!(files_under(&dir.join("uploads").join("tiny")).is_empty());
    // Cancelled, the worker is free again.
    let r = http
        .delete(format!("{v1}/tenants/acme/jobs/{big_id}"))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("cancel");
    assert!([200, 202].contains(&r.status().as_u16()), "{}", r.status());
    let mut done = serde_json::Value::Null;
    for _ in 0..200 {
        done = get_json(&http, format!("{v1}/tenants/acme/jobs/{big_id}"), &admin).await;
        if done["state"] == "cancelled" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(done["state"], "cancelled");
    let r = submit("globex", small.clone()).await.expect("globex");
    assert_eq!(r.status(), 202);
    let job: serde_json::Value = r.json().await.expect("record");
    let small_id = job["id"].as_str().expect("id").to_string();
    common::eventually("globex's job succeeded", Duration::from_secs(20), || {
        dir.join("jobs").join(&small_id).join("result").exists()
    });
    assert!(!files_under(&dir.join("uploads")).is_empty());
    // Their records expire after jobs.retention_secs; then their uploads and results go.
    common::eventually(
        "uploads and results removed",
        Duration::from_secs(20),
        || {
            files_under(&dir.join("uploads")).is_empty()
                && files_under(&dir.join("jobs")).is_empty()
        },
    );
    get_problem(
        &http,
        format!("{v1}/tenants/globex/jobs/{small_id}"),
        &admin,
        404,
    )
    .await;
}

/// Reads until the server closes the connection (or `within` passes): what it sent, and when.
async fn until_closed(c: &mut tokio::net::TcpStream, within: Duration) -> (String, Duration) {
    use tokio::io::AsyncReadExt;
    let t = std::time::Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(within.saturating_sub(t.elapsed()), c.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "still open after {within:?}: {}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
    (String::from_utf8_lossy(&got).into_owned(), t.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_too_many_http_clients_are_bounded() {
    let (_server, api, dir) = start(
        "hostile-http",
        &[
            ("IPFIXSVC__NODE__ROLES", "collector,api,jobs"),
            ("IPFIXSVC__API__MAX_CONNECTIONS", "4"),
            ("IPFIXSVC__API__HEADER_TIMEOUT_SECS", "1"),
            ("IPFIXSVC__API__REQUEST_TIMEOUT_SECS", "1"),
        ],
    );
    let admin = admin_token(&dir);
    // Four connections that say nothing hold every place: a fifth is closed at once.
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(tokio::net::TcpStream::connect(api).await.expect("idle"));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut fifth = tokio::net::TcpStream::connect(api).await.expect("fifth");
    let (_, took) = until_closed(&mut fifth, Duration::from_millis(900)).await;
    assert!(took < Duration::from_millis(900));
    // The idle ones are closed after api.header_timeout_secs, and their places are free again.
    for c in &mut idle {
        let (_, took) = until_closed(c, Duration::from_secs(5)).await;
        assert!(took < Duration::from_secs(3), "{took:?}");
    }
    let http = reqwest::Client::new();
    let metrics = http
        .get(format!("http://{api}/metrics"))
        .send()
        .await
        .expect("metrics after")
        .text()
        .await
        .expect("text");
    let refused: u64 = metrics
        .lines()
        .find(|l| l.starts_with("ipfixsvc_http_refused_connections_total{"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no refused count: {metrics}"));
    assert!(refused >= 1, "{metrics}");
    // Headers sent a line at a time and never finished: closed after the header timeout.
    let mut slow = tokio::net::TcpStream::connect(api).await.expect("slow");
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("part");
    let (_, took) = until_closed(&mut slow, Duration::from_secs(5)).await;
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(3),
        "{took:?}"
    );
    // An upload that stalls: 408 after api.request_timeout_secs, nothing kept.
    create_tenant(api, &admin, serde_json::json!({"id": "acme"})).await;
    let mut upload = tokio::net::TcpStream::connect(api).await.expect("upload");
    let head = format!(
        "POST /api/v1/tenants/acme/jobs/pcap-conversion HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {admin}\r\nContent-Length: 1000000\r\n\r\n"
    );
    upload.write_all(head.as_bytes()).await.expect("head");
    upload
        .write_all(&[0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0])
        .await
        .expect("a start");
    let (answer, took) = until_closed(&mut upload, Duration::from_secs(5)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("upload-stalled"), "{answer}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    let kept = std::fs::read_dir(dir.join("uploads").join("acme"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(kept, 0, "nothing kept of a stalled upload");
    // And the node still answers.
    let r = http
        .get(format!("http://{api}/healthz"))
        .send()
        .await
        .expect("healthz");
    assert_eq!(r.status(), 200);
}

/// Sends `file` from `source` to the collector and closes.
async fn export_from(source: &str, to: SocketAddr, file: &[u8]) {
    let s = tokio::net::TcpSocket::new_v4().expect("socket");
    s.bind(format!("{source}:0").parse().expect("addr"))
        .expect("bind");
    let mut c = s.connect(to).await.expect("connect");
    let _ = c.write_all(file).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_belong_to_the_tenant_that_owns_their_exporter() {
    for refuse in [false, true] {
        let name = if refuse {
            "tenant-refuse"
        } else {
            "tenant-tag"
        };
        let policy = if refuse { "refuse" } else { "accept" };
        let (server, api, dir) = start(name, &[("IPFIXSVC__COLLECTOR__UNKNOWN_EXPORTERS", policy)]);
        let admin = admin_token(&dir);
        create_tenant(
            api,
            &admin,
            serde_json::json!({"id": "acme", "exporters": ["127.0.0.20/30"]}),
        )
        .await;
        let file = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/testdata/ipfix/example_flows.ipfix"
        ))
        .expect("file");
        export_from("127.0.0.21", server.tcp, &file).await;
        export_from("127.0.0.30", server.tcp, &file).await;
        common::eventually("acme's records", Duration::from_secs(20), || {
            server
                .output()
                .iter()
                .filter(|l| l.contains("\"@tenant\":\"acme\""))
                .count()
                == 3979
        });
        let others = |tenant: &str| {
            server
                .output()
                .iter()
                .filter(|l| l.contains(&format!("\"@tenant\":\"{tenant}\"")))
                .count()
        };
        if refuse {
            std::thread::sleep(Duration::from_millis(500));
            assert_eq!(
                others("default"),
                0,
                "an exporter no tenant owns is refused"
            );
            assert!(!server.log_lines("owned by no tenant").is_empty());
        } else {
            common::eventually("the default tenant's", Duration::from_secs(20), || {
                others("default") == 3979
            });
            // A tenant's token lists the tenant's live sessions only.
            let made = common::create_token(api, &admin, "acme").await;
            let token = made["token"].as_str().expect("token").to_string();
            let mut owned = {
                let s = tokio::net::TcpSocket::new_v4().expect("socket");
                s.bind("127.0.0.22:0".parse().expect("addr")).expect("bind");
                s.connect(server.tcp).await.expect("connect")
            };
            owned.write_all(&file).await.expect("owned");
            let mut stranger = tokio::net::TcpStream::connect(server.tcp)
                .await
                .expect("connect");
            stranger.write_all(&file).await.expect("stranger");
            let mut seen = Vec::new();
            for _ in 0..100 {
                let list: serde_json::Value = reqwest::Client::new()
                    .get(format!("http://{api}/api/v1/tenants/acme/sessions"))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .expect("sessions")
                    .json()
                    .await
                    .expect("json");
                seen = list["sessions"].as_array().cloned().unwrap_or_default();
                if seen.iter().any(|s| {
                    s["session"]
                        .as_str()
                        .is_some_and(|n| n.contains("127.0.0.22"))
                }) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert!(!seen.is_empty());
            assert!(
                seen.iter().all(|s| s["stats"]["tenant"] == "acme"),
                "only acme's sessions: {seen:?}"
            );
            // The cluster's sessions a page at a time: the owned and the stranger's, in two.
            let http = reqwest::Client::new();
            let v1 = format!("http://{api}/api/v1");
            let mut first = serde_json::Value::Null;
            for _ in 0..100 {
                first = get_json(&http, format!("{v1}/sessions?limit=1"), &admin).await;
                if first["next_after"].is_string() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert_eq!(
                first["sessions"].as_array().map(Vec::len),
                Some(1),
                "{first}"
            );
            let after = first["next_after"].as_str().expect("a next page");
            // The cursor holds only `/`, `:`, `.` and name characters: safe in a query.
            let second = get_json(
                &http,
                format!("{v1}/sessions?limit=1&after={after}"),
                &admin,
            )
            .await;
            assert_eq!(
                second["sessions"].as_array().map(Vec::len),
                Some(1),
                "{second}"
            );
            assert_ne!(second["sessions"][0], first["sessions"][0]);
            assert!(second["as_of_ms"].as_u64().is_some());
            get_problem(&http, format!("{v1}/sessions?limit=0"), &admin, 400).await;
            drop((owned, stranger));
            templates_are_the_tenants_own(&api, &admin, &token).await;
        }
    }
}

/// Template ids and their field counts as tshark reads them from the example file.
fn tshark_templates() -> Vec<(u64, usize)> {
    common::need("tshark");
    let out = std::process::Command::new("tshark")
        .args([
            "-r",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../shared/testdata/ipfix/example_flows.ipfix"
            ),
        ])
        .args([
            "-T",
            "fields",
            "-e",
            "cflow.template_id",
            "-e",
            "cflow.template_field_count",
        ])
        .output()
        .expect("tshark");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut seen = Vec::new();
    for line in text.lines() {
        let mut cols = line.split('\t');
        let (Some(ids), Some(counts)) = (cols.next(), cols.next()) else {
            continue;
        };
        for (id, n) in ids.split(',').zip(counts.split(',')) {
            if let (Ok(id), Ok(n)) = (id.parse(), n.parse()) {
                seen.push((id, n));
            }
        }
    }
    seen.sort();
    seen.dedup();
    seen
}

/// `GET /tenants/{t}/templates`: acme's exporters with their templates as tshark reads them,
/// nothing of the default tenant's; another tenant's token gets 404.
async fn templates_are_the_tenants_own(api: &SocketAddr, admin: &str, token: &str) {
    let http = reqwest::Client::new();
    let v1 = format!("http://{api}/api/v1");
    // The cache writes templates to the store as sessions share them, a little after the
    // session is listed: wait (bounded) for both exporters' templates.
    let mut list = serde_json::Value::Null;
    for _ in 0..100 {
        list = get_json(&http, format!("{v1}/tenants/acme/templates"), token).await;
        if list["exporters"].as_array().map_or(0, Vec::len) >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(list["tenant"], "acme");
    assert_eq!(list["truncated"], false);
    let exporters = list["exporters"].as_array().expect("exporters");
    let mut addrs: Vec<&str> = exporters
        .iter()
        .filter_map(|e| e["exporter"].as_str())
        .collect();
    addrs.sort();
    assert_eq!(addrs, ["127.0.0.21", "127.0.0.22"], "{list}");
    let expected = tshark_templates();
    assert!(!expected.is_empty());
    for e in exporters {
        assert_eq!(e["transport"], "tcp");
        assert_eq!(e["port"], 0);
        let domains = e["domains"].as_array().expect("domains");
        assert_eq!(domains.len(), 1);
        assert_eq!(domains[0]["domain"], 6);
        let got: Vec<(u64, usize)> = domains[0]["templates"]
            .as_array()
            .expect("templates")
            .iter()
            .map(|t| {
                (
                    t["id"].as_u64().unwrap_or(0),
                    t["fields"].as_array().map_or(0, Vec::len),
                )
            })
            .collect();
        assert_eq!(got, expected);
        let first = &domains[0]["templates"][0];
        assert_eq!(first["kind"], "data");
        assert!(
            first["fields"]
                .as_array()
                .expect("fields")
                .iter()
                .all(|f| f["name"].as_str().is_some_and(|n| !n.is_empty()))
        );
    }
    // Another tenant sees its own (none), and acme's are not found for it.
    create_tenant(*api, admin, serde_json::json!({"id": "globex"})).await;
    let made = common::create_token(*api, admin, "globex").await;
    let globex = made["token"].as_str().expect("token");
    let own = get_json(&http, format!("{v1}/tenants/globex/templates"), globex).await;
    assert_eq!(own["exporters"], serde_json::json!([]));
    get_problem(&http, format!("{v1}/tenants/acme/templates"), globex, 404).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_node_answers_for_a_job_submitted_on_another() {
    let redis = common::redis_server::RedisServer::start();
    let url = redis.url();
    // Two nodes sharing Redis and storage.dir (a shared volume in Kubernetes), one admin token.
    let shared = storage("two-nodes");
    let shared_s = shared.display().to_string();
    let token = "an-operator-token-from-a-secret";
    // And one cluster: a cancel on B reaches the job running on A.
    let (ca, cb) = (
        format!("127.0.0.1:{}", common::free_port()),
        format!("127.0.0.1:{}", common::free_port()),
    );
    let env = |name: &'static str, listen: &'static str, seed: Option<&'static str>| {
        let mut e = vec![
            ("IPFIXSVC__NODE__NAME", name),
            ("IPFIXSVC__NODE__ROLES", "collector,api,jobs"),
            ("IPFIXSVC__API__LISTEN", "127.0.0.1:0"),
            ("IPFIXSVC__API__ADMIN_TOKEN", token),
            ("IPFIXSVC__STORAGE__DIR", shared_s.as_str()),
            ("IPFIXSVC__REDIS__URL", url.as_str()),
            ("IPFIXSVC__CLUSTER__COOKIE", "a-long-random-test-cookie"),
            ("IPFIXSVC__CLUSTER__LISTEN", listen),
        ];
        if let Some(s) = seed {
            e.push(("IPFIXSVC__CLUSTER__SEEDS", s));
        }
        e
    };
    let (ca, cb): (&'static str, &'static str) = (ca.leak(), cb.leak());
    let a = Server::start("node-a", &env("node-a", ca, None));
    let b = Server::start("node-b", &env("node-b", cb, Some(ca)));
    b.wait_log("cluster peer ready", 1, Duration::from_secs(20));
    let (api_a, api_b) = (api_addr(&a), api_addr(&b));
    let http = reqwest::Client::new();
    // The tenant is made on A and known on B.
    create_tenant(api_a, token, serde_json::json!({"id": "acme"})).await;
    let capture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/testdata/traffic/dns.pcap"
    );
    let r = http
        .post(format!(
            "http://{api_a}/api/v1/tenants/acme/jobs/pcap-conversion"
        ))
        .bearer_auth(token)
        .body(std::fs::read(capture).expect("capture"))
        .send()
        .await
        .expect("upload");
    assert_eq!(r.status(), 202);
    let job: serde_json::Value = r.json().await.expect("json");
    let id = job["id"].as_str().expect("id").to_string();
    let on_b = format!("http://{api_b}/api/v1/tenants/acme/jobs/{id}");
    let mut state = String::new();
    for _ in 0..200 {
        let r: serde_json::Value = get_json(&http, &on_b, token).await;
        state = r["state"].as_str().unwrap_or_default().to_string();
        if state == "succeeded" {
            assert_eq!(r["node"], "node-a", "run by A, read through B");
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(state, "succeeded");
    let on_a = http
        .get(format!(
            "http://{api_a}/api/v1/tenants/acme/jobs/{id}/result"
        ))
        .bearer_auth(token)
        .send()
        .await
        .expect("result on A")
        .bytes()
        .await
        .expect("bytes");
    let via_b = http
        .get(format!("{on_b}/result"))
        .bearer_auth(token)
        .send()
        .await
        .expect("result on B");
    assert_eq!(via_b.status(), 200);
    assert!(via_b.bytes().await.expect("bytes") == on_a, "the same file");
    problem(
        http.delete(&on_b)
            .bearer_auth(token)
            .send()
            .await
            .expect("cancel on B"),
        409,
    )
    .await;
    // A job running on A is cancelled through B.

    let r = http
        .post(format!(
            "http://{api_a}/api/v1/tenants/acme/jobs/pcap-conversion"
        ))
        .bearer_auth(token)
        .body(big_capture(2_000_000))
        .send()
        .await
        .expect("big upload");
    assert_eq!(r.status(), 202);
    let job: serde_json::Value = r.json().await.expect("json");
    let on_b = format!(
        "http://{api_b}/api/v1/tenants/acme/jobs/{}",
        job["id"].as_str().expect("id")
    );
    let r = http
        .delete(&on_b)
        .bearer_auth(token)
        .send()
        .await
        .expect("cancel on B");
    assert!([200, 202].contains(&r.status().as_u16()), "{}", r.status());
    let mut state = String::new();
    for _ in 0..200 {
        let r: serde_json::Value = get_json(&http, &on_b, token).await;
        state = r["state"].as_str().unwrap_or_default().to_string();
        if state == "cancelled" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(state, "cancelled", "cancelled on A through B");
    // A tenant changed on A is known to B's collector at once (Redis pub/sub, not B's
    // 30-second reload).
    let r = http
        .patch(format!("http://{api_a}/api/v1/tenants/acme"))
        .bearer_auth(token)
        .json(&serde_json::json!({"exporters": ["127.0.0.40/30"]}))
        .send()
        .await
        .expect("patch");
    assert_eq!(r.status(), 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let file = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/testdata/ipfix/example_flows.ipfix"
    ))
    .expect("file");
    export_from("127.0.0.41", b.tcp, &file).await;
    common::eventually("B tags acme's exporter", Duration::from_secs(3), || {
        b.output()
            .iter()
            .any(|l| l.contains("\"@tenant\":\"acme\""))
    });
    drop((a, b));
    let _ = std::fs::remove_dir_all(&shared);
}
