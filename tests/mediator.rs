//! Export streams from the configuration, end to end: a real `serve` with two streams, a real
//! exporter's file sent over TCP, and the streams' files read back after SIGTERM. One stream
//! writes every record; the other filters, truncates and keeps fields; what it wrote must be
//! exactly what the first one's records say it should be.

mod common;

use common::Server;
use serde_json::Value;
use std::io::Write;
use std::time::Duration;

fn lines(path: &std::path::Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

#[test]
fn configured_streams_filter_truncate_and_keep_what_the_full_stream_says() {
    let dir = std::env::temp_dir().join(format!(
        "ipfixsvc-test-{}-streams-config",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let (all, web) = (dir.join("all.ndjson"), dir.join("web.ndjson"));
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[mediator.streams]]
name = "all"
sink = {{ kind = "ndjson", path = "{}" }}

[[mediator.streams]]
name = "tcp-only"
filter = "protocolIdentifier == 6 and not destinationTransportPort in (0)"
transforms = [
  {{ anonymise = {{ method = "truncate", v4_prefix = 16 }} }},
  {{ keep = ["sourceIPv4Address", "destinationIPv4Address", "protocolIdentifier", "octetDeltaCount"] }},
]
sink = {{ kind = "ndjson", path = "{}" }}
on_full = "block"
"#,
            all.display(),
            web.display()
        ),
    )
    .expect("config");
    let server = Server::start(
        "mediator",
        &[("IPFIXSVC_CONFIG", config.to_str().expect("utf-8"))],
    );
    let file = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/testdata/ipfix/example_flows.ipfix"
    ))
    .expect("example_flows.ipfix");
    let mut s = std::net::TcpStream::connect(server.tcp).expect("connect");
    s.write_all(&file).expect("send");
    drop(s);
    server.wait_log("exporter session ended", 1, Duration::from_secs(20));
    let status = server.terminate();
    assert!(status.success(), "serve exits 0 after its drain: {status}");

    let all = lines(&all);
    assert!(!all.is_empty(), "the full stream wrote records");
    // Truncation to /16 (IPv4) and /48 (IPv6, the default), of the four default fields; `keep`
    // then leaves the kept fields the record has (IPv6 flows have no IPv4 address).
    let truncate = |v: &Value| -> Value {
        let a: std::net::IpAddr = v.as_str().expect("address").parse().expect("an address");
        let t = match a {
            std::net::IpAddr::V4(a) => ipnet::Ipv4Net::new(a, 16)
                .expect("len")
                .trunc()
                .addr()
                .to_string(),
            std::net::IpAddr::V6(a) => ipnet::Ipv6Net::new(a, 48)
                .expect("len")
                .trunc()
                .addr()
                .to_string(),
        };
        Value::String(t)
    };
    let want: Vec<Value> = all
        .iter()
        .filter(|r| r["protocolIdentifier"] == 6 && r["destinationTransportPort"] != 0)
        .map(|r| {
            let mut o = serde_json::Map::new();
            for k in [
                "@exporter",
                "@tenant",
                "@domain",
                "@template",
                "@exportTime",
            ] {
                o.insert(k.into(), r[k].clone());
            }
            for k in ["sourceIPv4Address", "destinationIPv4Address"] {
                if let Some(v) = r.get(k) {
                    o.insert(k.into(), truncate(v));
                }
            }
            o.insert("protocolIdentifier".into(), r["protocolIdentifier"].clone());
            o.insert("octetDeltaCount".into(), r["octetDeltaCount"].clone());
            Value::Object(o)
        })
        .collect();
    let got = lines(&web);
    assert!(
        !want.is_empty() && want.len() < all.len(),
        "the filter keeps some records and not all: {} of {}",
        want.len(),
        all.len()
    );
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g, w);
    }
}

#[test]
fn a_stream_that_does_not_check_is_refused_at_start_naming_the_field() {
    let dir =
        std::env::temp_dir().join(format!("ipfixsvc-test-{}-mediator-bad", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        "[[mediator.streams]]\nname = \"x\"\nfilter = \"protocolIdentifier == 6 and destinationTransportPort in\"\nsink = { kind = \"discard\" }\n",
    )
    .expect("config");
    let out = std::process::Command::new(common::BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .env("IPFIXSVC__NODE__ROLES", "collector")
        .env("IPFIXSVC__COLLECTOR__TCP_LISTEN", "127.0.0.1:0")
        .env("IPFIXSVC__COLLECTOR__UDP_LISTEN", "")
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("stream \"x\": filter: column 56: expected a value after 'in'"),
        "{err}"
    );
}

/// A stream whose actor panics is restarted with its configuration: the restart and the
/// failure are in `/debug/actors`, records lost with the dead actor's mailbox are counted as
/// dropped, and records sent after the restart are all written.
#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_stream_is_restarted_with_its_configuration_and_counted() {
    let dir = std::env::temp_dir().join(format!(
        "ipfixsvc-test-{}-streams-panic-config",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let out = dir.join("flaky.ndjson");
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[[mediator.streams]]\nname = \"flaky\"\nfault_panic_at_records = 1000\nsink = {{ kind = \"ndjson\", path = \"{}\" }}\n",
            out.display()
        ),
    )
    .expect("config");
    let storage = dir.join("storage");
    let server = Server::start(
        "streams-panic",
        &[
            ("IPFIXSVC_CONFIG", config.to_str().expect("utf-8")),
            ("IPFIXSVC__NODE__ROLES", "collector,api"),
            ("IPFIXSVC__API__LISTEN", "127.0.0.1:0"),
            ("IPFIXSVC__STORAGE__DIR", storage.to_str().expect("utf-8")),
        ],
    );
    let api = common::api_addr(&server);
    let file = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/testdata/ipfix/example_flows.ipfix"
    ))
    .expect("example_flows.ipfix");
    let send = |n: usize| {
        let mut s = std::net::TcpStream::connect(server.tcp).expect("connect");
        s.write_all(&file).expect("send");
        drop(s);
        server.wait_log("exporter session ended", n, Duration::from_secs(20));
    };
    send(1);
    server.wait_log(
        "export stream failed: restarting it",
        1,
        Duration::from_secs(10),
    );
    let before = lines(&out).len();
    send(2);
    let per_file = 3979; // example_flows.ipfix's data records (dump's count; tests/tshark_oracle.rs holds dump to tshark)
    common::eventually(
        "the second file written in full",
        Duration::from_secs(10),
        || lines(&out).len() == before + per_file,
    );
    let token = common::admin_token(&storage);
    let tree: Value = reqwest::Client::new()
        .get(format!("http://{api}/debug/actors"))
        .bearer_auth(&token)
        .header("accept", "application/json")
        .send()
        .await
        .expect("GET /debug/actors")
        .json()
        .await
        .expect("JSON");
    fn find<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
        if v["name"] == name {
            return Some(v);
        }
        v["children"].as_array()?.iter().find_map(|c| find(c, name))
    }
    let root = tree
        .get("tree")
        .or_else(|| tree["nodes"][0].get("tree"))
        .unwrap_or(&tree);
    let s = find(root, "stream/flaky").unwrap_or_else(|| panic!("no stream/flaky in {tree}"));
    assert_eq!(s["kind"], "ExportStream");
    assert_eq!(s["restarts"], 1, "{s}");
    assert!(
        s["last_failure"]
            .as_str()
            .unwrap_or("")
            .contains("fault injection"),
        "{s}"
    );
    let f = &s["figures"];
    let n = |k: &str| f[k].as_u64().unwrap_or_else(|| panic!("{k} in {f}"));
    assert_eq!(n("records_in"), 2 * per_file as u64, "{f}");
    assert_eq!(
        n("records_out") + n("dropped") + n("filtered"),
        n("records_in"),
        "{f}"
    );
    assert_eq!(n("records_out"), lines(&out).len() as u64, "{f}");
    assert!(
        n("dropped") > 0,
        "the panicking message was lost and counted: {f}"
    );
}
