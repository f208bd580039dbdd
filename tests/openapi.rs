//! The OpenAPI document against the routes of a real `ipfixsvc serve`, both ways: every
//! documented operation is routed and answers one of its documented statuses; every other method
//! on a documented path is 405 with an `Allow` that names the documented ones; every path literal
//! in the route code is in the document. Then schemathesis (from the virtual environment
//! `scripts/test` makes) runs against the node with the admin token.

mod common;

use common::Server;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

fn start(name: &str) -> (Server, SocketAddr, String) {
    let dir = std::env::temp_dir().join(format!("ipfixsvc-openapi-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let dir_s = dir.display().to_string();
    let server = Server::start(
        name,
        &[
            ("IPFIXSVC__NODE__ROLES", "collector,api,jobs"),
            ("IPFIXSVC__API__LISTEN", "127.0.0.1:0"),
            ("IPFIXSVC__STORAGE__DIR", dir_s.as_str()),
        ],
    );
    let api = common::api_addr(&server);
    let token = common::admin_token(&dir);
    (server, api, token)
}

/// A request path for a documented template: ids that match the route; the tenant's exists or
/// not (a tenant's routes look it up before they look at the method).
fn concrete(template: &str, tenant: &str) -> String {
    template
        .replace("{tenant}", tenant)
        .replace("{job_id}", "00000000-0000-4000-8000-000000000000")
        .replace("{token_id}", "no-such-token")
        .replace("{name}", "no-such-stream")
}

async fn document(http: &reqwest::Client, api: SocketAddr) -> serde_json::Value {
    let r = http
        .get(format!("http://{api}/openapi.json"))
        .send()
        .await
        .expect("document");
    assert_eq!(r.status(), 200, "the document needs no token");
    r.json().await.expect("JSON")
}

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_and_the_routes_match_both_ways() {
    let (_server, api, token) = start("walk");
    let http = reqwest::Client::new();
    let doc = document(&http, api).await;
    assert_eq!(doc["openapi"], "3.1.0");
    common::create_tenant(api, &token, serde_json::json!({"id": "acme"})).await;
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.len() >= 17, "{:?}", paths.keys());
    for (template, ops) in paths {
        let ops = ops.as_object().expect("operations");
        for method in METHODS {
            let documented = ops.get(&method.to_ascii_lowercase());
            // Documented reads on a tenant that exists (so their handlers answer), documented
            // changes on one that does not (none may delete it); the rest on one that does.
            let tenant = if documented.is_some() && method != "GET" {
                "no-such-tenant"
            } else {
                "acme"
            };
            let url = format!("http://{api}{}", concrete(template, tenant));
            let mut req = http
                .request(method.parse().expect("method"), &url)
                .bearer_auth(&token);
            if matches!(method, "POST" | "PATCH") && !template.ends_with("pcap-conversion") {
                req = req.json(&serde_json::json!({}));
            }
            let r = req.send().await.expect("request");
            let status = r.status().as_u16();
            let allow = r
                .headers()
                .get("allow")
                .and_then(|v| v.to_str().ok())
                .map(String::from);
            let body = r.text().await.unwrap_or_default();
            match documented {
                Some(op) => {
                    assert!(
                        !(status == 404 && body.contains("no such route")) && status != 405,
                        "{method} {template} is documented but not routed: {status} {body}"
                    );
                    assert!(
                        op["responses"].get(status.to_string()).is_some(),
                        "{method} {template} answered {status}, which the document does not list: {body}"
                    );
                }
                None => {
                    assert_eq!(
                        status, 405,
                        "{method} {template} is not documented, yet answers {status}: {body}"
                    );
                    let mut expected: Vec<String> =
                        ops.keys().map(|m| m.to_ascii_uppercase()).collect();
                    expected.sort();
                    assert_eq!(allow, Some(expected.join(", ")), "{method} {template}");
                }
            }
        }
    }
    // The other way: every path literal the route code matches is in some documented path.
    let segments: std::collections::HashSet<&str> = paths
        .keys()
        .flat_map(|p| p.split('/'))
        .filter(|s| !s.is_empty())
        .collect();
    let literals = route_literals(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api"));
    assert!(literals.len() >= 10, "{literals:?}");
    for (file, lit) in &literals {
        assert!(
            segments.contains(lit.as_str()),
            "{file}: the route segment {lit:?} is in no documented path: document it in src/api/openapi.rs"
        );
    }
}

/// The string literals of every `warp::path!(..)` and `warp::path("..")` in the route code, with
/// the file they are in.
fn route_literals(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("src/api")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs") && !p.ends_with("openapi.rs"))
        .collect();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("source");
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().to_string())
            .unwrap_or_default();
        for opener in ["warp::path!(", "warp::path("] {
            let mut rest = text.as_str();
            while let Some(i) = rest.find(opener) {
                let start = i + opener.len();
                let call = &rest[start..];
                let end = call.find(')').unwrap_or(call.len());
                for (k, part) in call[..end].split('"').enumerate() {
                    if k % 2 == 1 && !part.is_empty() {
                        out.push((name.clone(), part.to_string()));
                    }
                }
                rest = &rest[i + opener.len()..];
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_answer_outside_the_document() {
    let schemathesis = common::venv_tool("schemathesis");
    let (server, api, token) = start("schemathesis");
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openapi/schemathesis.toml");
    let out = tokio::process::Command::new(&schemathesis)
        // Its cache folder goes there, not into the checkout.
        .current_dir(std::env::temp_dir())
        .arg("--config-file")
        .arg(&config)
        .arg("--no-color")
        .arg("run")
        .arg(format!("http://{api}/openapi.json"))
        .args(["-H", &format!("Authorization: Bearer {token}")])
        // One worker: CPython 3.11's parser is not thread-safe under schemathesis' workers.
        .args([
            "--workers",
            "1",
            "--max-time",
            "60",
            "--seed",
            "1",
            "--warnings",
            "off",
        ])
        .output()
        .await
        .expect("schemathesis runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("passed"), "{text}");
    // And the node logged no 5xx of its own.
    assert!(
        server.log_lines("status=5").is_empty(),
        "{:?}",
        server.log_lines("status=5")
    );
}
