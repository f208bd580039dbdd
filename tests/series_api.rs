//! Time-series jobs over HTTP, against a real node: chained after a conversion (a JSON body
//! with `after`), or of an uploaded IPFIX file (options in the query). Their files are
//! downloaded and checked (JSON equal to what `ipfixsvc timeseries` writes of the same input,
//! CSV, SVG with every key, PNG of the size asked); each way a request can be wrong answers its
//! problem.

mod common;

use common::{BIN, Server, admin_token, api_addr, create_tenant, export_from, flows_at};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn start(name: &str) -> (Server, SocketAddr, PathBuf) {
    let dir = std::env::temp_dir().join(format!("ipfixsvc-series-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let dir_s = dir.display().to_string();
    let server = Server::start(
        name,
        &[
            ("IPFIXSVC__NODE__ROLES", "collector,api,jobs"),
            ("IPFIXSVC__API__LISTEN", "127.0.0.1:0"),
            ("IPFIXSVC__STORAGE__DIR", dir_s.as_str()),
            // One worker: a job chained after another must not hold it while it waits.
            ("IPFIXSVC__JOBS__WORKERS", "1"),
        ],
    );
    let api = api_addr(&server);
    (server, api, dir)
}

fn testdata(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/testdata")
        .join(rel)
}

#[derive(Clone)]
struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    async fn send(&self, r: reqwest::RequestBuilder) -> (u16, String, Vec<u8>) {
        let r = r
            .bearer_auth(&self.token)
            .timeout(Duration::from_secs(15))
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        let ct = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        (status, ct, r.bytes().await.expect("body").to_vec())
    }

    async fn get(&self, path: &str) -> (u16, String, Vec<u8>) {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    async fn post_json(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let (s, _, b) = self
            .send(self.http.post(format!("{}{path}", self.base)).json(&body))
            .await;
        (s, serde_json::from_slice(&b).unwrap_or_default())
    }

    async fn upload(&self, path: &str, body: Vec<u8>) -> (u16, serde_json::Value) {
        let (s, _, b) = self
            .send(
                self.http
                    .post(format!("{}{path}", self.base))
                    .header("content-type", "application/octet-stream")
                    .body(body),
            )
            .await;
        (s, serde_json::from_slice(&b).unwrap_or_default())
    }

    /// Polls a job until it ends; its final record.
    async fn finished(&self, id: &str) -> serde_json::Value {
        for _ in 0..400 {
            let (s, _, b) = self.get(&format!("/{id}")).await;
            assert_eq!(s, 200);
            let r: serde_json::Value = serde_json::from_slice(&b).expect("record");
            if matches!(
                r["state"].as_str(),
                Some("succeeded" | "failed" | "cancelled")
            ) {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("job {id} did not end");
    }
}

/// `ipfixsvc timeseries` of `input`, as JSON bytes.
fn cli_json(input: &Path, args: &[&str], out: &Path) -> Vec<u8> {
    let o = std::process::Command::new(BIN)
        .arg("timeseries")
        .arg(input)
        .args(args)
        .arg("-o")
        .arg(out)
        .output()
        .expect("timeseries");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::read(out).expect("json")
}

/// A PNG's width and height, from its IHDR chunk.
fn png_size(b: &[u8]) -> (u32, u32) {
    assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    assert_eq!(&b[12..16], b"IHDR");
    let be = |o: usize| u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    (be(16), be(20))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_time_series_after_a_conversion_and_of_an_upload_over_http() {
    let (_server, api, dir) = start("chain");
    let token = admin_token(&dir);
    create_tenant(api, &token, serde_json::json!({"id": "acme"})).await;
    // A node without Redis cannot keep live series there.
    let streams = Api {
        http: reqwest::Client::new(),
        base: format!("http://{api}/api/v1/tenants/acme"),
        token: token.clone(),
    };
    let (s, v) = streams
        .post_json(
            "/streams",
            serde_json::json!({"name": "kept", "sink": {"kind": "timeseries", "store": "redis"}}),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["detail"]
            .as_str()
            .is_some_and(|d| d.contains("redis.url")),
        "{v}"
    );
    let a = Api {
        http: reqwest::Client::new(),
        base: format!("http://{api}/api/v1/tenants/acme/jobs"),
        token,
    };
    let capture = std::fs::read(testdata("traffic/http.pcap")).expect("capture");
    let (s, conv) = a.upload("/pcap-conversion", capture).await;
    assert_eq!(s, 202, "{conv}");
    let conv_id = conv["id"].as_str().expect("id").to_string();
    let options = serde_json::json!({
        "interval_secs": 60, "by": "destinationTransportPort", "top": 5,
        "chart": "packets", "width": 800, "height": 400,
    });
    let (s, ts) = a
        .post_json(
            "/time-series",
            serde_json::json!({"after": conv_id, "options": options}),
        )
        .await;
    assert_eq!(s, 202, "{ts}");
    assert_eq!(ts["kind"], "time_series");
    assert_eq!(ts["time_series"]["top"], 5);
    let ts_id = ts["id"].as_str().expect("id").to_string();
    let conv = a.finished(&conv_id).await;
    assert_eq!(conv["state"], "succeeded", "{conv}");
    let ts = a.finished(&ts_id).await;
    assert_eq!(ts["state"], "succeeded", "{ts}");
    assert_eq!(ts["inputs"][0], conv["artifact"]);
    let series = &ts["series"];
    for (ours, theirs) in [
        ("octets", "octets"),
        ("packets", "metered_packets"),
        ("flows", "flows"),
    ] {
        assert_eq!(series[ours], conv["summary"][theirs], "{ours}");
    }

    // Its files, with their media types; `result` is the JSON.
    let (s, ct, json) = a.get(&format!("/{ts_id}/series.json")).await;
    assert_eq!((s, ct.as_str()), (200, "application/json"));
    let (s, ct, result) = a.get(&format!("/{ts_id}/result")).await;
    assert_eq!((s, ct.as_str()), (200, "application/json"));
    assert_eq!(result, json);
    let doc: serde_json::Value = serde_json::from_slice(&json).expect("series JSON");
    let keys: Vec<&str> = doc["series"]
        .as_array()
        .expect("series")
        .iter()
        .filter_map(|s| s["key"].as_str())
        .collect();
    assert!(!keys.is_empty() && keys.len() <= 6, "{keys:?}");
    assert_eq!(series["keys"], serde_json::json!(keys));
    let result_file = PathBuf::from(conv["artifact"].as_str().expect("artifact"));
    let by_cli = cli_json(
        &result_file,
        &[
            "--interval",
            "60",
            "--by",
            "destinationTransportPort",
            "--top",
            "5",
        ],
        &dir.join("cli.json"),
    );
    assert_eq!(json, by_cli, "the job's JSON is the CLI's");
    let (s, ct, csv) = a.get(&format!("/{ts_id}/series.csv")).await;
    assert_eq!((s, ct.as_str()), (200, "text/csv; charset=utf-8"));
    let csv = String::from_utf8(csv).expect("UTF-8");
    assert!(csv.starts_with("time,key,octets,packets,flows\n"), "{csv}");
    let csv_octets: u64 = csv
        .lines()
        .skip(1)
        .filter_map(|l| l.split(',').nth(2)?.parse::<u64>().ok())
        .sum();
    assert_eq!(serde_json::json!(csv_octets), series["octets"]);
    let (s, ct, svg) = a.get(&format!("/{ts_id}/series.svg")).await;
    assert_eq!((s, ct.as_str()), (200, "image/svg+xml"));
    let svg = String::from_utf8(svg).expect("UTF-8");
    assert!(svg.contains("<svg"));
    // Each `<text ...>content</text>`, trimmed.
    let texts: Vec<&str> = svg
        .split("<text")
        .skip(1)
        .filter_map(|t| Some(t.split_once('>')?.1.split_once("</text>")?.0.trim()))
        .collect();
    for k in &keys {
        assert!(texts.contains(k), "{k} not in the legend: {texts:?}");
    }
    assert!(
        texts.iter().any(|t| t.contains("packets/s")),
        "the chart asked for shows packets: {texts:?}"
    );
    let (s, ct, png) = a.get(&format!("/{ts_id}/series.png")).await;
    assert_eq!((s, ct.as_str()), (200, "image/png"));
    assert_eq!(png_size(&png), (800, 400));
    // Nothing else is served: another name, or a conversion's (it has no such file).
    let (s, ct, _) = a.get(&format!("/{ts_id}/series.txt")).await;
    assert_eq!((s, ct.as_str()), (404, "application/problem+json"));
    let (s, _, _) = a.get(&format!("/{conv_id}/series.json")).await;
    assert_eq!(s, 404);

    // The same options on an uploaded IPFIX file, in the query.
    let ipfix = testdata("ipfix/example_flows.ipfix");
    let (s, up) = a
        .upload(
            "/time-series?interval_secs=300&by=protocolIdentifier&top=3",
            std::fs::read(&ipfix).expect("ipfix"),
        )
        .await;
    assert_eq!(s, 202, "{up}");
    let up_id = up["id"].as_str().expect("id").to_string();
    let up = a.finished(&up_id).await;
    assert_eq!(up["state"], "succeeded", "{up}");
    assert!(up["inputs"][0].as_str().expect("input").ends_with(".ipfix"));
    let (_, _, json) = a.get(&format!("/{up_id}/result")).await;
    let by_cli = cli_json(
        &ipfix,
        &[
            "--interval",
            "300",
            "--by",
            "protocolIdentifier",
            "--top",
            "3",
        ],
        &dir.join("cli-upload.json"),
    );
    assert_eq!(json, by_cli);

    // Refusals, each with its problem.
    let problem = |want: u16, got: (u16, serde_json::Value), needle: &str| {
        assert_eq!(got.0, want, "{}", got.1);
        let detail = got.1["detail"].as_str().unwrap_or_default().to_string();
        assert!(detail.contains(needle), "{needle:?} in {detail:?}");
    };
    let j = |v: serde_json::Value| a.post_json("/time-series", v);
    problem(400, j(serde_json::json!({})).await, "one of them");
    problem(
        400,
        j(serde_json::json!({"input": conv_id, "after": conv_id})).await,
        "one of them",
    );
    let nobody = uuid::Uuid::new_v4().to_string();
    problem(404, j(serde_json::json!({"input": nobody})).await, &nobody);
    problem(
        400,
        j(serde_json::json!({"input": ts_id})).await,
        "its result is not IPFIX",
    );
    problem(
        400,
        j(serde_json::json!({"after": conv_id, "options": {"interval_secs": 0}})).await,
        "interval_secs",
    );
    problem(
        400,
        j(serde_json::json!({"after": conv_id, "options": {"by": "noSuchElement"}})).await,
        "by ",
    );
    problem(
        400,
        j(serde_json::json!({"after": conv_id, "options": {"intervall": 5}})).await,
        "unknown field",
    );
    problem(
        400,
        a.post_json("/time-series?top=3", serde_json::json!({"input": conv_id}))
            .await,
        "not in the query",
    );
    problem(
        400,
        a.upload("/time-series?width=50", b"\x00\x0a\x00\x10".to_vec())
            .await,
        "width",
    );
    problem(
        415,
        a.upload("/time-series", b"hello, world".to_vec()).await,
        "IPFIX file",
    );
    // A failed conversion leaves nothing to chart: 409 at once.
    let (s, bad) = a
        .upload("/pcap-conversion", b"\xd4\xc3\xb2\xa1broken".to_vec())
        .await;
    assert_eq!(s, 202, "{bad}");
    let bad_id = bad["id"].as_str().expect("id").to_string();
    assert_eq!(a.finished(&bad_id).await["state"], "failed");
    problem(
        409,
        j(serde_json::json!({"after": bad_id})).await,
        "it has no result",
    );
    problem(
        409,
        j(serde_json::json!({"input": bad_id})).await,
        "give it as `after`",
    );
    // Another tenant's jobs are not found.
    create_tenant(api, &a.token, serde_json::json!({"id": "other"})).await;
    let (s, _, b) = a
        .send(
            a.http
                .post(format!(
                    "http://{api}/api/v1/tenants/other/jobs/time-series"
                ))
                .json(&serde_json::json!({"input": conv_id})),
        )
        .await;
    assert_eq!(s, 404, "{}", String::from_utf8_lossy(&b));
}

fn refs(e: &[(String, String)]) -> Vec<(&str, &str)> {
    e.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// Two nodes sharing Redis (tenants, streams) in one cluster, each collecting half of a
/// tenant's flows: the live series asked of A add up both nodes' cells, per interval and port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_series_adds_up_the_nodes_that_collect() {
    let redis = common::redis_server::RedisServer::start();
    let url = redis.url();
    let token = "an-operator-token-from-a-secret";
    let (ca, cb) = (
        format!("127.0.0.1:{}", common::free_port()),
        format!("127.0.0.1:{}", common::free_port()),
    );
    let dirs: Vec<String> = ["live-a", "live-b"]
        .iter()
        .map(|n| {
            let d =
                std::env::temp_dir().join(format!("ipfixsvc-series-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            d.display().to_string()
        })
        .collect();
    let env = |name: &'static str, dir: &str, listen: &str, seed: Option<&str>| {
        let mut e: Vec<(String, String)> = vec![
            ("IPFIXSVC__NODE__NAME".into(), name.into()),
            (
                "IPFIXSVC__NODE__ROLES".into(),
                "collector,api,mediator".into(),
            ),
            ("IPFIXSVC__API__LISTEN".into(), "127.0.0.1:0".into()),
            ("IPFIXSVC__API__ADMIN_TOKEN".into(), token.into()),
            ("IPFIXSVC__STORAGE__DIR".into(), dir.into()),
            ("IPFIXSVC__REDIS__URL".into(), url.clone()),
            (
                "IPFIXSVC__CLUSTER__COOKIE".into(),
                "a-long-random-test-cookie".into(),
            ),
            ("IPFIXSVC__CLUSTER__LISTEN".into(), listen.into()),
            ("IPFIXSVC__OUTPUT__FORMAT".into(), "count".into()),
        ];
        if let Some(s) = seed {
            e.push(("IPFIXSVC__CLUSTER__SEEDS".into(), s.into()));
        }
        e
    };
    let (ea, eb) = (
        env("node-a", &dirs[0], &ca, None),
        env("node-b", &dirs[1], &cb, Some(&ca)),
    );
    let a = Server::start("series-node-a", &refs(&ea));
    let node_b = Server::start("series-node-b", &refs(&eb));
    node_b.wait_log("cluster peer ready", 1, Duration::from_secs(20));
    let api_a = api_addr(&a);
    create_tenant(
        api_a,
        token,
        serde_json::json!({"id": "acme", "exporters": ["127.0.0.44/30"]}),
    )
    .await;
    let api = Api {
        http: reqwest::Client::new(),
        base: format!("http://{api_a}/api/v1/tenants/acme"),
        token: token.into(),
    };
    // Before any stream: 404, saying what to make.
    let (s, _, body) = api.get("/timeseries").await;
    assert_eq!(s, 404, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("timeseries sink"));
    let (s, v) = api
        .post_json(
            "/streams",
            serde_json::json!({"name": "live", "sink": {"kind": "timeseries", "interval_secs": 10, "by": ["destinationTransportPort"]}}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    // Running on both nodes.
    let mut running = serde_json::Value::Null;
    for _ in 0..100 {
        let (_, _, b) = api.get("/streams/live").await;
        running = serde_json::from_slice(&b).unwrap_or_default();
        if running["nodes"].as_array().map_or(0, Vec::len) == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        running["nodes"].as_array().map_or(0, Vec::len),
        2,
        "{running}"
    );

    // 120 flows over the last two minutes: ports 80, 443 and 53 by turns.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let base = now - 120_000;
    let ports = [80u16, 443, 53];
    let flows: Vec<(u64, u16, u64)> = (0..120u64)
        .map(|k| (base + k * 1000, ports[k as usize % 3], 100 + k))
        .collect();
    let (half_a, half_b) = flows.split_at(60);
    export_from("127.0.0.45", a.tcp, &flows_at(half_a)).await;
    export_from("127.0.0.46", node_b.tcp, &flows_at(half_b)).await;
    let total_octets: u64 = flows.iter().map(|f| f.2).sum();
    let window = format!("from={}&to={}", base / 1000 - 10, now / 1000 + 10);
    let mut doc = serde_json::Value::Null;
    for _ in 0..100 {
        let (s, _, b) = api
            .get(&format!("/timeseries?by=destinationTransportPort&{window}"))
            .await;
        assert_eq!(s, 200, "{}", String::from_utf8_lossy(&b));
        doc = serde_json::from_slice(&b).expect("JSON");
        if doc["totals"]["flows"] == 120 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(doc["totals"]["flows"], 120, "{doc}");
    assert_eq!(doc["nodes"], 2, "{doc}");
    assert_eq!(doc["stream"], "live");
    assert_eq!(doc["totals"]["octets"], total_octets);
    // Per port and interval, what the flows say.
    let times: Vec<String> = serde_json::from_value(doc["times"].clone()).expect("times");
    let first = chrono::DateTime::parse_from_rfc3339(&times[0])
        .expect("RFC 3339")
        .timestamp_millis() as u64;
    for port in ports {
        let s = doc["series"]
            .as_array()
            .expect("series")
            .iter()
            .find(|s| s["key"].as_str().and_then(|k| k.parse::<u16>().ok()) == Some(port))
            .unwrap_or_else(|| panic!("port {port} in {doc}"));
        let mut want = vec![0u64; times.len()];
        for f in flows.iter().filter(|f| f.1 == port) {
            want[((f.0 - first) / 10_000) as usize] += f.2;
        }
        assert_eq!(s["octets"], serde_json::json!(want), "port {port}");
    }
    // The total, top 1, and a chart.
    let (_, _, b) = api.get(&format!("/timeseries?{window}")).await;
    let total: serde_json::Value = serde_json::from_slice(&b).expect("JSON");
    assert_eq!(total["series"][0]["key"], "total");
    assert_eq!(total["totals"]["octets"], total_octets);
    let (_, _, b) = api
        .get(&format!(
            "/timeseries?by=destinationTransportPort&top=1&{window}"
        ))
        .await;
    let one: serde_json::Value = serde_json::from_slice(&b).expect("JSON");
    let keys: Vec<&str> = one["series"]
        .as_array()
        .expect("series")
        .iter()
        .filter_map(|s| s["key"].as_str())
        .collect();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[1], "other");
    let (s, ct, svg) = api
        .send(
            api.http
                .get(format!(
                    "{}/timeseries?by=destinationTransportPort&{window}",
                    api.base
                ))
                .header("accept", "image/svg+xml"),
        )
        .await;
    assert_eq!((s, ct.as_str()), (200, "image/svg+xml"));
    let svg = String::from_utf8(svg).expect("UTF-8");
    assert!(svg.contains("<svg") && svg.contains("443"));
    // Refusals.
    let (s, _, b) = api.get("/timeseries?by=sourceIPv4Address").await;
    assert_eq!(s, 400);
    assert!(String::from_utf8_lossy(&b).contains("keeps no series by"));
    let (s, _, b) = api.get("/timeseries?from=0&to=1700000000").await;
    assert_eq!(s, 400);
    assert!(String::from_utf8_lossy(&b).contains("at most 20000"));
    let (s, _, _) = api.get("/timeseries?stream=nope").await;
    assert_eq!(s, 404);
    let (s, _, _) = api.get("/timeseries?from=tomorrow").await;
    assert_eq!(s, 400);

    // The same kind of series kept in Redis: any node answers from every node's cells, and
    // they outlive a node's restart.
    let (s, v) = api
        .post_json(
            "/streams",
            serde_json::json!({"name": "kept", "sink": {"kind": "timeseries", "interval_secs": 10, "by": ["destinationTransportPort"], "store": "redis"}}),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let running_on = |api: &Api, n: usize| {
        let api = api.clone();
        async move {
            for _ in 0..100 {
                let (_, _, b) = api.get("/streams/kept").await;
                let v: serde_json::Value = serde_json::from_slice(&b).unwrap_or_default();
                if v["nodes"].as_array().map_or(0, Vec::len) == n {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("stream kept not running on {n} nodes");
        }
    };
    running_on(&api, 2).await;
    let flows: Vec<(u64, u16, u64)> = (0..120u64)
        .map(|k| (base + k * 1000, ports[k as usize % 3], 1000 + k))
        .collect();
    let (half_a, half_b) = flows.split_at(60);
    export_from("127.0.0.45", a.tcp, &flows_at(half_a)).await;
    export_from("127.0.0.46", node_b.tcp, &flows_at(half_b)).await;
    let kept_octets: u64 = flows.iter().map(|f| f.2).sum();
    let query = format!("/timeseries?stream=kept&by=destinationTransportPort&{window}");
    let until_all = |api: &Api, at_least_nodes: u64| {
        let api = api.clone();
        let query = query.clone();
        async move {
            let mut doc = serde_json::Value::Null;
            for _ in 0..100 {
                let (s, _, b) = api.get(&query).await;
                assert_eq!(s, 200, "{}", String::from_utf8_lossy(&b));
                doc = serde_json::from_slice(&b).expect("JSON");
                if doc["totals"]["flows"] == 120 && doc["nodes"].as_u64() >= Some(at_least_nodes) {
                    return doc;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("not every flow in {doc}");
        }
    };

    let doc = until_all(&api, 2).await;
    assert_eq!(doc["stored"], true, "{doc}");
    assert_eq!(doc["nodes"], 2, "{doc}");
    assert_eq!(doc["totals"]["octets"], kept_octets, "{doc}");
    let want_series = doc["series"].clone();
    // In Redis: one hash per key and interval, a field per node, expiring after the retention
    // (3600 s), an interval and 360 s.
    let mut conn = redis::Client::open(url.as_str())
        .expect("client")
        .get_connection()
        .expect("connection");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("ipfix:series:acme:acme/kept:10:*")
        .query(&mut conn)
        .expect("KEYS");
    assert!(
        keys.iter()
            .any(|k| k.contains(":destinationTransportPort:")),
        "{keys:?}"
    );
    assert!(keys.iter().any(|k| k.contains(":-:")), "{keys:?}");
    for k in &keys {
        let ttl: i64 = redis::cmd("TTL").arg(k).query(&mut conn).expect("TTL");
        assert!((3600..=3600 + 10 + 360).contains(&ttl), "{k}: {ttl}");
    }
    // Node B stops: A still answers with B's cells, from Redis.
    let _ = node_b.terminate();
    let doc = until_all(&api, 2).await;
    assert_eq!(doc["series"], want_series);
    // B comes back with an empty sink: what it held before its restart is still there, under
    // its old writer (three writers in all).
    let b = Server::start("series-node-b-again", &refs(&eb));
    b.wait_log("cluster peer ready", 1, Duration::from_secs(20));
    let api_b = Api {
        http: reqwest::Client::new(),
        base: format!("http://{}/api/v1/tenants/acme", api_addr(&b)),
        token: token.into(),
    };
    running_on(&api_b, 2).await;
    let doc = until_all(&api_b, 3).await;
    assert_eq!(doc["stored"], true, "{doc}");
    assert_eq!(doc["nodes"], 3, "{doc}");
    assert_eq!(doc["series"], want_series);
    drop(redis);
}

/// The median of a sorted slice (the mean of the middle two for an even length).
fn median_of(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Analysis jobs over HTTP: top talkers and the mix after a conversion (their tables add up to
/// the conversion's totals), anomalies of an uploaded IPFIX file (the intervals flagged are those
/// an independent pass over `ipfixsvc timeseries`' series flags), each with its chart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analyses_add_up_and_flag_what_an_independent_pass_flags() {
    let (_server, api, dir) = start("analysis");
    let token = admin_token(&dir);
    create_tenant(api, &token, serde_json::json!({"id": "acme"})).await;
    let a = Api {
        http: reqwest::Client::new(),
        base: format!("http://{api}/api/v1/tenants/acme/jobs"),
        token,
    };
    let capture = std::fs::read(testdata("traffic/mixed.pcap")).expect("capture");
    let (s, conv) = a.upload("/pcap-conversion", capture).await;
    assert_eq!(s, 202, "{conv}");
    let conv_id = conv["id"].as_str().expect("id").to_string();
    let mut ids = Vec::new();
    for (analysis, top) in [("top_talkers", 3), ("mix", 5)] {
        let (s, j) = a
            .post_json(
                "/analysis",
                serde_json::json!({"after": conv_id, "options": {"analysis": analysis, "top": top}}),
            )
            .await;
        assert_eq!(s, 202, "{j}");
        assert_eq!(j["kind"], "analysis");
        ids.push(j["id"].as_str().expect("id").to_string());
    }
    let conv = a.finished(&conv_id).await;
    let summary = &conv["summary"];
    for (id, titles) in ids.iter().zip([
        &[
            "sources by octets",
            "destinations by octets",
            "sources by flows",
            "destinations by flows",
        ][..],
        &["protocols by octets", "destination ports by octets"][..],
    ]) {
        let r = a.finished(id).await;
        assert_eq!(r["state"], "succeeded", "{r}");
        assert_eq!(
            r["files"],
            serde_json::json!(["analysis.json", "analysis.svg"])
        );
        let (s, ct, body) = a.get(&format!("/{id}/result")).await;
        assert_eq!((s, ct.as_str()), (200, "application/json"));
        let doc: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        let tables = doc["tables"].as_array().expect("tables");
        assert_eq!(tables.len(), titles.len());
        for (t, title) in tables.iter().zip(titles) {
            assert_eq!(t["title"], *title);
            // Every table adds up to the conversion's totals (biflows both ways).
            assert_eq!(t["total"]["octets"], summary["octets"], "{title}");
            assert_eq!(t["total"]["packets"], summary["metered_packets"], "{title}");
            assert_eq!(t["total"]["flows"], summary["flows"], "{title}");
            // The rows and `other` add up to the total, biggest first.
            let rank = t["rank"].as_str().expect("rank");
            let rows = t["rows"].as_array().expect("rows");
            let mut sum: u64 = rows.iter().map(|r| r[rank].as_u64().unwrap_or(0)).sum();
            sum += t["other"][rank].as_u64().unwrap_or(0);
            assert_eq!(serde_json::json!(sum), t["total"][rank], "{title}");
            let values: Vec<u64> = rows.iter().map(|r| r[rank].as_u64().unwrap_or(0)).collect();
            assert!(
                values.windows(2).all(|w| w[0] >= w[1]),
                "{title}: {values:?}"
            );
        }
        let (s, ct, svg) = a.get(&format!("/{id}/analysis.svg")).await;
        assert_eq!((s, ct.as_str()), (200, "image/svg+xml"));
        let svg = String::from_utf8(svg).expect("UTF-8");
        for title in titles {
            assert!(svg.contains(title), "{title} in the chart");
        }
    }

    // Anomalies of an upload, against an independent pass over the CLI's series.
    let ipfix = testdata("ipfix/example_flows.ipfix");
    let (s, up) = a
        .upload(
            "/analysis?analysis=anomalies&interval_secs=10&window=5&k=3&measure=packets&by=destinationTransportPort",
            std::fs::read(&ipfix).expect("ipfix"),
        )
        .await;
    assert_eq!(s, 202, "{up}");
    let up_id = up["id"].as_str().expect("id").to_string();
    let up = a.finished(&up_id).await;
    assert_eq!(up["state"], "succeeded", "{up}");
    let (_, _, body) = a.get(&format!("/{up_id}/result")).await;
    let doc: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    let an = &doc["anomalies"];
    let cli: serde_json::Value = serde_json::from_slice(&cli_json(
        &ipfix,
        &["--interval", "10"],
        &dir.join("cli-total.json"),
    ))
    .expect("CLI JSON");
    let packets: Vec<u64> =
        serde_json::from_value(cli["series"][0]["packets"].clone()).expect("packets");
    assert_eq!(an["values"], serde_json::json!(packets), "the same series");
    let mut want = Vec::new();
    for i in 5..packets.len() {
        let mut w: Vec<f64> = packets[i - 5..i].iter().map(|v| *v as f64).collect();
        let med = median_of(&mut w);
        let mut dev: Vec<f64> = w.iter().map(|v| (v - med).abs()).collect();
        let mad = median_of(&mut dev);
        if (packets[i] as f64 - med).abs() > 3.0 * mad {
            want.push(cli["times"][i].clone());
        }
    }
    let got: Vec<serde_json::Value> = an["anomalies"]
        .as_array()
        .expect("anomalies")
        .iter()
        .map(|x| x["time"].clone())
        .collect();
    assert_eq!(got, want);
    assert_eq!(an["found"], want.len());
    assert_eq!(up["report"]["found"], want.len());
    // Each anomaly's contributors are ports of that interval, biggest first.
    for x in an["anomalies"].as_array().expect("anomalies") {
        let c = x["contributors"].as_array().expect("contributors");
        assert!(!c.is_empty() && c.len() <= 5, "{x}");
        let sum: u64 = c.iter().map(|r| r["packets"].as_u64().unwrap_or(0)).sum();
        assert!(sum <= x["value"].as_u64().unwrap_or(0), "{x}");
    }
    let (s, _, svg) = a.get(&format!("/{up_id}/analysis.svg")).await;
    assert_eq!(s, 200);
    assert!(String::from_utf8_lossy(&svg).contains("anomalies"));
    // Refused options.
    for (q, says) in [
        ("analysis=nope", "unknown variant"),
        ("analysis=anomalies&k=0", "k 0"),
        ("analysis=anomalies&window=0", "window"),
        ("analysis=top_talkers&v4_prefix=33", "v4_prefix"),
        ("analysis=anomalies&by=nonsense", "by "),
    ] {
        let (s, _, b) = a
            .send(
                a.http
                    .post(format!("{}/analysis?{q}", a.base))
                    .header("content-type", "application/octet-stream")
                    .body(b"\x00\x0a\x00\x10".to_vec()),
            )
            .await;
        let b = String::from_utf8_lossy(&b);
        assert_eq!(s, 400, "{q}: {b}");
        assert!(b.contains(says), "{q}: {b}");
    }
}
