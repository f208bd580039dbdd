//! A tenant's export streams through the API, against real nodes: made, read, replaced and
//! deleted at run time; records from the tenant's exporter written by the stream under the
//! node's storage; the rules that keep a tenant inside its own records and files; and two
//! nodes sharing Redis, where a stream made on A runs on B.

mod common;

use common::{Server, admin_token, api_addr, create_tenant};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

fn storage(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ipfixsvc-streams-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn example() -> Vec<u8> {
    std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/testdata/ipfix/example_flows.ipfix"
    ))
    .expect("example_flows.ipfix")
}

/// example_flows.ipfix: 3979 records, 2067 of them TCP (`ipfixsvc dump`, held to tshark by
/// tests/tshark_oracle.rs).
const RECORDS: usize = 3979;
const TCP: usize = 2067;

async fn export_from(source: &str, to: SocketAddr, file: &[u8]) {
    let s = tokio::net::TcpSocket::new_v4().expect("socket");
    s.bind(format!("{source}:0").parse().expect("addr"))
        .expect("bind");
    let mut c = s.connect(to).await.expect("connect");
    c.write_all(file).await.expect("send");
}

fn refs(e: &[(String, String)]) -> Vec<(&str, &str)> {
    e.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = http.request(method, url).bearer_auth(token);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let r = r
        .timeout(Duration::from_secs(15))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    let status = r.status().as_u16();
    let v = r.json().await.unwrap_or(Value::Null);
    (status, v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_stream_is_made_runs_is_replaced_and_deleted_at_run_time() {
    let dir = storage("one");
    let dir_s = dir.display().to_string();
    let server = Server::start(
        "streams-one",
        &[
            ("IPFIXSVC__NODE__ROLES", "collector,api"),
            ("IPFIXSVC__API__LISTEN", "127.0.0.1:0"),
            ("IPFIXSVC__STORAGE__DIR", dir_s.as_str()),
        ],
    );
    let api = api_addr(&server);
    let admin = admin_token(&dir);
    create_tenant(
        api,
        &admin,
        json!({"id": "acme", "exporters": ["127.0.0.40/30"]}),
    )
    .await;
    let made = common::create_token(api, &admin, "acme").await;
    let token = made["token"].as_str().expect("token").to_string();
    let http = reqwest::Client::new();
    let v1 = format!("http://{api}/api/v1/tenants/acme/streams");
    use reqwest::Method;

    // Refused, each naming the field.
    for (body, says) in [
        (
            json!({"name": "x", "sink": {"kind": "ndjson"}}),
            "sink.path: is required",
        ),
        (
            json!({"name": "x", "sink": {"kind": "ndjson", "path": "../x"}}),
            "sink.path",
        ),
        (
            json!({"name": "x", "sink": {"kind": "ndjson", "path": "/etc/x"}}),
            "sink.path",
        ),
        (
            json!({"name": "x", "tenants": ["globex"], "sink": {"kind": "discard"}}),
            "tenants",
        ),
        (
            json!({"name": "x", "filter": "protocolIdentifier ==", "sink": {"kind": "discard"}}),
            "filter: column 22",
        ),
        (
            json!({"name": "x", "transforms": [{"keep": ["nope"]}], "sink": {"kind": "discard"}}),
            "transforms[0].keep",
        ),
        (
            json!({"name": "x", "transforms": [{"anonymise": {"method": "cryptopan", "key_file": "/etc/passwd"}}], "sink": {"kind": "discard"}}),
            "key_file",
        ),
        (json!({"name": "x y", "sink": {"kind": "discard"}}), "name"),
        (
            json!({"name": "x", "sink": {"kind": "ipfx"}}),
            "unknown variant",
        ),
        (json!(["not", "an", "object"]), "JSON object"),
    ] {
        let (status, p) = call(&http, Method::POST, &v1, &token, Some(body.clone())).await;
        assert_eq!(status, 400, "{body}: {p}");
        assert!(
            p["detail"].as_str().unwrap_or("").contains(says),
            "{body}: {p}"
        );
    }

    // Made: TCP records only, to a file under the node's storage.
    let web = json!({
        "name": "web",
        "filter": "protocolIdentifier == 6",
        "sink": {"kind": "ndjson", "path": "web.ndjson"},
    });
    let (status, v) = call(&http, Method::POST, &v1, &token, Some(web.clone())).await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["name"], "web");
    let (status, _) = call(&http, Method::POST, &v1, &token, Some(web.clone())).await;
    assert_eq!(status, 409);
    let file = dir.join("streams/acme/web.ndjson");
    // The node's mediator starts it when the store says so.
    common::eventually("the stream running", Duration::from_secs(10), || {
        std::fs::metadata(&file).is_ok()
    });
    export_from("127.0.0.41", server.tcp, &example()).await;
    common::eventually("acme's TCP records", Duration::from_secs(20), || {
        lines(&file).len() == TCP
    });
    assert!(
        lines(&file)
            .iter()
            .all(|r| r["protocolIdentifier"] == 6 && r["@tenant"] == "acme")
    );
    // Another tenant's exporter is not acme's stream's.
    export_from("127.0.0.50", server.tcp, &example()).await;
    server.wait_log("exporter session ended", 2, Duration::from_secs(20));
    let (status, v) = call(&http, Method::GET, &format!("{v1}/web"), &token, None).await;
    assert_eq!(status, 200, "{v}");
    let t = &v["totals"];
    assert_eq!(t["state"], "running", "{v}");
    assert_eq!(t["records_in"], RECORDS as u64, "{v}");
    assert_eq!(t["records_out"], TCP as u64, "{v}");
    assert_eq!(t["filtered"], (RECORDS - TCP) as u64, "{v}");
    assert_eq!(lines(&file).len(), TCP);
    let (status, list) = call(&http, Method::GET, &v1, &token, None).await;
    assert_eq!(status, 200);
    assert_eq!(list["streams"].as_array().map(Vec::len), Some(1), "{list}");

    // Replaced: from now on, only two fields; what came before stays as it was.
    let mut keep = web.clone();
    keep["transforms"] = json!([{"keep": ["sourceIPv4Address", "protocolIdentifier"]}]);
    let (status, v) = call(&http, Method::PUT, &format!("{v1}/web"), &token, Some(keep)).await;
    assert_eq!(status, 200, "{v}");
    let (status, _) = call(
        &http,
        Method::PUT,
        &format!("{v1}/other"),
        &token,
        Some(web.clone()),
    )
    .await;
    assert_eq!(status, 400, "the body's name is not the path's");
    // The replacement reaches the node through the store: wait for it, then send again.
    common::eventually("the replaced stream", Duration::from_secs(10), || {
        server.log_lines("stream replaced").len() == 1
    });
    export_from("127.0.0.42", server.tcp, &example()).await;
    common::eventually(
        "the second file's TCP records",
        Duration::from_secs(20),
        || lines(&file).len() == 2 * TCP,
    );
    let after = &lines(&file)[TCP..];
    let v4 = after
        .iter()
        .filter(|r| r.get("sourceIPv4Address").is_some())
        .count();
    assert!(
        after
            .iter()
            .all(|r| r.get("destinationTransportPort").is_none()),
        "kept fields only"
    );
    assert_eq!(v4, 2051, "the IPv4 TCP records keep their source address");

    // Another tenant's token sees none of it.
    create_tenant(api, &admin, json!({"id": "globex"})).await;
    let g = common::create_token(api, &admin, "globex").await;
    let globex = g["token"].as_str().expect("token");
    let (status, _) = call(&http, Method::GET, &format!("{v1}/web"), globex, None).await;
    assert_eq!(status, 404);
    let (status, _) = call(&http, Method::DELETE, &format!("{v1}/web"), globex, None).await;
    assert_eq!(status, 404);

    // Deleted: gone from the API, stopped on the node.
    let (status, _) = call(&http, Method::DELETE, &format!("{v1}/web"), &token, None).await;
    assert_eq!(status, 204);
    let (status, _) = call(&http, Method::GET, &format!("{v1}/web"), &token, None).await;
    assert_eq!(status, 404);
    common::eventually("the stream stopped", Duration::from_secs(10), || {
        server.log_lines("stream deleted").len() == 1
    });
    export_from("127.0.0.43", server.tcp, &example()).await;
    server.wait_log("exporter session ended", 4, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        lines(&file).len(),
        2 * TCP,
        "a deleted stream writes nothing more"
    );
}

/// Two nodes sharing Redis, in one cluster: a stream made through A's API runs on B (where
/// the exporter sends), and A's API shows B's figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_made_on_one_node_runs_on_another() {
    let redis = common::redis_server::RedisServer::start();
    let url = redis.url();
    let token = "an-operator-token-from-a-secret";
    let (ca, cb) = (
        format!("127.0.0.1:{}", common::free_port()),
        format!("127.0.0.1:{}", common::free_port()),
    );
    let (da, db) = (storage("node-a"), storage("node-b"));
    let (da_s, db_s) = (da.display().to_string(), db.display().to_string());
    let env = |name: &'static str, dir: &str, listen: &str, seed: Option<&str>| {
        let mut e: Vec<(String, String)> = vec![
            ("IPFIXSVC__NODE__NAME".into(), name.into()),
            ("IPFIXSVC__NODE__ROLES".into(), "collector,api".into()),
            ("IPFIXSVC__API__LISTEN".into(), "127.0.0.1:0".into()),
            ("IPFIXSVC__API__ADMIN_TOKEN".into(), token.into()),
            ("IPFIXSVC__STORAGE__DIR".into(), dir.into()),
            ("IPFIXSVC__REDIS__URL".into(), url.clone()),
            (
                "IPFIXSVC__CLUSTER__COOKIE".into(),
                "a-long-random-test-cookie".into(),
            ),
            ("IPFIXSVC__CLUSTER__LISTEN".into(), listen.into()),
        ];
        if let Some(s) = seed {
            e.push(("IPFIXSVC__CLUSTER__SEEDS".into(), s.into()));
        }
        e
    };
    let ea = env("node-a", &da_s, &ca, None);
    let eb = env("node-b", &db_s, &cb, Some(&ca));
    let a = Server::start("streams-node-a", &refs(&ea));
    let b = Server::start("streams-node-b", &refs(&eb));
    b.wait_log("cluster peer ready", 1, Duration::from_secs(20));
    let api_a = api_addr(&a);
    create_tenant(
        api_a,
        token,
        json!({"id": "acme", "exporters": ["127.0.0.44/30"]}),
    )
    .await;
    let http = reqwest::Client::new();
    let v1 = format!("http://{api_a}/api/v1/tenants/acme/streams");
    let (status, v) = call(
        &http,
        reqwest::Method::POST,
        &v1,
        token,
        Some(json!({"name": "all", "sink": {"kind": "ndjson", "path": "all.ndjson"}})),
    )
    .await;
    assert_eq!(status, 201, "{v}");
    let on_b = db.join("streams/acme/all.ndjson");
    common::eventually("the stream running on B", Duration::from_secs(10), || {
        std::fs::metadata(&on_b).is_ok()
    });
    export_from("127.0.0.45", b.tcp, &example()).await;
    common::eventually("B wrote acme's records", Duration::from_secs(20), || {
        lines(&on_b).len() == RECORDS
    });
    // A's API: B's figures (and A's own stream, which took nothing).
    let mut v = Value::Null;
    for _ in 0..50 {
        v = call(
            &http,
            reqwest::Method::GET,
            &format!("{v1}/all"),
            token,
            None,
        )
        .await
        .1;
        if v["totals"]["records_out"] == RECORDS as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(v["totals"]["records_out"], RECORDS as u64, "{v}");
    let nodes: Vec<&str> = v["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| n["node"].as_str())
        .collect();
    assert!(
        nodes.contains(&"node-a") && nodes.contains(&"node-b"),
        "{v}"
    );
}
