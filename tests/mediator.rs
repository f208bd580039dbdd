//! Export streams from the configuration, end to end: a real `serve` with two streams, a real
//! exporter's file sent over TCP, and the streams' files read back after SIGTERM. One stream
//! writes every record; the other filters, truncates and keeps fields; what it wrote must be
//! exactly what the first one's records say it should be.

mod common;

use common::Server;
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// example_flows.ipfix: 3979 records (dump's count; tests/tshark_oracle.rs holds dump to tshark).
fn example() -> Vec<u8> {
    std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/testdata/ipfix/example_flows.ipfix"
    ))
    .expect("example_flows.ipfix")
}

/// Sends `file` on a new TCP connection to `server` and waits until `n` sessions have ended.
fn send(server: &Server, file: &[u8], n: usize) {
    let mut s = std::net::TcpStream::connect(server.tcp).expect("connect");
    s.write_all(file).expect("send");
    drop(s);
    server.wait_log("exporter session ended", n, Duration::from_secs(20));
}

/// The complete lines of an NDJSON file a stream may be writing: a last line without its
/// newline is still being written, and is not read yet.
fn lines(path: &std::path::Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |end| &text[..end]);
    complete
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

#[test]
fn configured_streams_filter_truncate_and_keep_what_the_full_stream_says() {
    let dir = common::config_dir("streams");
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
    let file = example();
    send(&server, &file, 1);
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
    let dir = common::config_dir("streams-panic");
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
    let file = example();
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

/// The chain: exporter -> node A (a stream re-exporting IPFIX over TCP) -> node B. B's records
/// equal A's, field by field (only the exporter, the template id and the export time are A's
/// own); and A's output, taken off a second stream, decodes without error in tshark and in
/// ipfixDump (libfixbuf), with every record.
#[test]
fn a_stream_re_exports_ipfix_that_another_node_tshark_and_ipfixdump_read_in_full() {
    common::need("tshark");
    common::need("ipfixDump");
    let b = Server::start("chain-b", &[]);
    // A plain TCP listener keeps what A sends it: an RFC 5655 file, as the peers read one.
    let capture = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let capture_at = capture.local_addr().expect("addr");
    let kept = std::thread::spawn(move || {
        let (mut s, _) = capture.accept().expect("A connects");
        let mut all = Vec::new();
        let _ = std::io::Read::read_to_end(&mut s, &mut all);
        all
    });
    let dir =
        std::env::temp_dir().join(format!("ipfixsvc-test-{}-chain-config", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let a_all = dir.join("a-all.ndjson");
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[[mediator.streams]]
name = "all"
sink = {{ kind = "ndjson", path = "{}" }}

[[mediator.streams]]
name = "to-b"
sink = {{ kind = "ipfix", transport = "tcp", to = "{}" }}

[[mediator.streams]]
name = "to-file"
sink = {{ kind = "ipfix", transport = "tcp", to = "{}" }}
"#,
            a_all.display(),
            b.tcp,
            capture_at
        ),
    )
    .expect("config");
    let a = Server::start(
        "chain-a",
        &[("IPFIXSVC_CONFIG", config.to_str().expect("utf-8"))],
    );
    let file = example();
    send(&a, &file, 1);
    common::eventually("B has every record", Duration::from_secs(20), || {
        b.output().len() >= 3979
    });
    assert!(a.terminate().success());
    let strip = |v: &Value| {
        let mut o = v.as_object().expect("object").clone();
        for k in ["@exporter", "@template", "@exportTime"] {
            o.remove(k);
        }
        Value::Object(o)
    };
    let on_a: Vec<Value> = lines(&a_all).iter().map(strip).collect();
    let on_b: Vec<Value> = b
        .output()
        .iter()
        .map(|l| strip(&serde_json::from_str(l).expect("JSON")))
        .collect();
    assert_eq!(on_a.len(), 3979);
    assert_eq!(on_b.len(), on_a.len());
    for (x, y) in on_a.iter().zip(&on_b) {
        assert_eq!(x, y);
    }
    // A's output as a file, read by the two reference decoders.
    let bytes = kept.join().expect("listener");
    let out = dir.join("a-output.ipfix");
    std::fs::write(&out, &bytes).expect("write");
    let t = std::process::Command::new("tshark")
        .args(["-r"])
        .arg(&out)
        .args(["-T", "fields", "-e", "cflow.octets"])
        .output()
        .expect("tshark");
    let text = String::from_utf8_lossy(&t.stdout);
    let flows: usize = text
        .lines()
        .map(|l| l.split(',').filter(|x| !x.is_empty()).count())
        .sum();
    assert!(t.status.success(), "{}", String::from_utf8_lossy(&t.stderr));
    assert_eq!(flows, 3979, "tshark reads every record's octets");
    let v = std::process::Command::new("tshark")
        .args(["-r"])
        .arg(&out)
        .args(["-V"])
        .output()
        .expect("tshark -V");
    let verbose = String::from_utf8_lossy(&v.stdout);
    assert!(!verbose.contains("Malformed"), "tshark: malformed");
    assert!(!verbose.contains("[Expert Info (Error"), "tshark: an error");
    let d = std::process::Command::new("ipfixDump")
        .args(["--in"])
        .arg(&out)
        .output()
        .expect("ipfixDump");
    let dumped = String::from_utf8_lossy(&d.stdout);
    let err = String::from_utf8_lossy(&d.stderr);
    assert!(d.status.success(), "ipfixDump: {err}");
    assert!(!err.to_lowercase().contains("error"), "ipfixDump: {err}");
    let records = dumped.matches("--- data record ").count();
    assert_eq!(records, 3979, "ipfixDump reads every record");
    assert!(
        dumped.contains("3979 Data Records"),
        "ipfixDump's own count: {}",
        &dumped[dumped.len().saturating_sub(300)..]
    );
}

/// Records in a stream of IPFIX messages (decoded by the library, templates carried along).
fn ipfix_records(bytes: &[u8]) -> usize {
    let mut d = ipfixsvc::wire::Decoder::new(
        ipfixsvc::wire::Registry::builtin(),
        ipfixsvc::wire::DecoderOptions::default(),
    );
    let mut n = 0;
    let mut at = 0;
    while at + 16 <= bytes.len() {
        let len = u16::from_be_bytes([bytes[at + 2], bytes[at + 3]]) as usize;
        if len < 16 || at + len > bytes.len() {
            break;
        }
        let m = d
            .decode(bytes::Bytes::copy_from_slice(&bytes[at..at + len]))
            .expect("a message A sent");
        n += m.data_records();
        at += len;
    }
    n
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

/// A peer that stops reading: with `block`, the node's memory stays bounded and the exporter
/// is slowed (TCP pushes back), and when the peer reads again every record arrives; with
/// `drop`, the exporter is never slowed and what the peer gets plus what was counted as
/// dropped is everything sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_peer_slows_the_exporter_with_block_and_is_counted_with_drop() {
    const COPIES: usize = 60;
    let file = example();
    for policy in ["block", "drop"] {
        let peer = std::net::TcpListener::bind("127.0.0.1:0").expect("peer");
        let peer_at = peer.local_addr().expect("addr");
        let dir = std::env::temp_dir().join(format!(
            "ipfixsvc-test-{}-stall-{policy}-config",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "[[mediator.streams]]\nname = \"peer\"\non_full = \"{policy}\"\nqueue_bytes = 1048576\nsink = {{ kind = \"ipfix\", transport = \"tcp\", to = \"{peer_at}\" }}\n"
            ),
        )
        .expect("config");
        let storage = dir.join("storage");
        let a = Server::start(
            &format!("stall-{policy}"),
            &[
                ("IPFIXSVC_CONFIG", config.to_str().expect("utf-8")),
                ("IPFIXSVC__NODE__ROLES", "collector,api"),
                ("IPFIXSVC__API__LISTEN", "127.0.0.1:0"),
                ("IPFIXSVC__STORAGE__DIR", storage.to_str().expect("utf-8")),
            ],
        );
        let api = common::api_addr(&a);
        let (to, bytes) = (a.tcp, file.clone());
        let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let progress = sent.clone();
        let exporter = std::thread::spawn(move || {
            let mut s = std::net::TcpStream::connect(to).expect("connect");
            for _ in 0..COPIES {
                s.write_all(&bytes).expect("send");
                progress.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        });
        // The peer has not read a byte yet.
        std::thread::sleep(Duration::from_secs(3));
        let stalled_at = sent.load(std::sync::atomic::Ordering::Relaxed);
        let rss = rss_kib(a.child.id());
        if policy == "block" {
            assert!(
                stalled_at < COPIES,
                "the exporter was slowed: {stalled_at} of {COPIES} copies sent"
            );
            assert!(rss < 300 * 1024, "memory stays bounded: {rss} KiB");
        }
        // The peer reads again, to the end.
        let reader = std::thread::spawn(move || {
            let (mut s, _) = peer.accept().expect("A connects");
            let mut all = Vec::new();
            let _ = std::io::Read::read_to_end(&mut s, &mut all);
            all
        });
        exporter.join().expect("exporter");
        a.wait_log("exporter session ended", 1, Duration::from_secs(60));
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
        let text = tree.to_string();
        let dropped: u64 = text
            .split("\"dropped\":")
            .nth(1)
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no dropped figure in {text}"));
        assert!(a.terminate().success(), "{policy}: a clean drain");
        let got = ipfix_records(&reader.join().expect("reader"));
        let total = COPIES * 3979;
        match policy {
            "block" => {
                assert_eq!(dropped, 0);
                assert_eq!(got, total, "block: every record arrives");
            }
            _ => {
                assert!(dropped > 0, "the peer stalled long enough to drop some");
                assert_eq!(
                    got as u64 + dropped,
                    total as u64,
                    "drop: delivered + dropped = sent"
                );
            }
        }
    }
}

/// The stream's figures in `/debug/actors` (the first stream found).
async fn stream_figures(api: std::net::SocketAddr, token: &str) -> Value {
    let tree: Value = reqwest::Client::new()
        .get(format!("http://{api}/debug/actors"))
        .bearer_auth(token)
        .header("accept", "application/json")
        .send()
        .await
        .expect("GET /debug/actors")
        .json()
        .await
        .expect("JSON");
    fn find(v: &Value) -> Option<Value> {
        if v["kind"] == "ExportStream" {
            return Some(v["figures"].clone());
        }
        let nodes = v["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|n| &n["tree"]);
        let children = v["children"].as_array().into_iter().flatten();
        std::iter::once(&v["tree"])
            .chain(nodes)
            .chain(children)
            .filter(|c| c.is_object())
            .find_map(find)
    }
    find(&tree).unwrap_or_else(|| panic!("no stream in {tree}"))
}

/// A peer that is down: the breaker opens after repeated failures (a `drop` stream then drops
/// and counts), a probe finds the peer back, the breaker closes, and records flow again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_is_down_opens_the_breaker_and_a_probe_closes_it() {
    let port = common::free_port();
    let dir = common::config_dir("breaker");
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[[mediator.streams]]\nname = \"peer\"\non_full = \"drop\"\nsink = {{ kind = \"ipfix\", transport = \"tcp\", to = \"127.0.0.1:{port}\" }}\n"
        ),
    )
    .expect("config");
    let storage = dir.join("storage");
    let a = Server::start(
        "breaker",
        &[
            ("IPFIXSVC_CONFIG", config.to_str().expect("utf-8")),
            ("IPFIXSVC__NODE__ROLES", "collector,api"),
            ("IPFIXSVC__API__LISTEN", "127.0.0.1:0"),
            ("IPFIXSVC__STORAGE__DIR", storage.to_str().expect("utf-8")),
        ],
    );
    let api = common::api_addr(&a);
    let token = common::admin_token(&storage);
    let file = example();
    let send = |n: usize| {
        let mut s = std::net::TcpStream::connect(a.tcp).expect("connect");
        s.write_all(&file).expect("send");
        drop(s);
        a.wait_log("exporter session ended", n, Duration::from_secs(20));
    };
    send(1);
    let mut f = Value::Null;
    for _ in 0..100 {
        f = stream_figures(api, &token).await;
        if f["breaker"] == "open" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(f["breaker"], "open", "{f}");
    assert!(f["sink_errors"].as_u64().unwrap_or(0) >= 5, "{f}");
    // The peer comes back; the next records probe it.
    let peer = std::net::TcpListener::bind(("127.0.0.1", port)).expect("peer");
    let reader = std::thread::spawn(move || {
        let (mut s, _) = peer.accept().expect("A connects");
        let mut all = Vec::new();
        let _ = std::io::Read::read_to_end(&mut s, &mut all);
        all
    });
    let mut sent = 1;
    for _ in 0..20 {
        sent += 1;
        send(sent);
        f = stream_figures(api, &token).await;
        if f["breaker"] == "closed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(f["breaker"], "closed", "{f}");
    assert!(a.terminate().success());
    let got = ipfix_records(&reader.join().expect("reader")) as u64;
    let dropped = f["dropped"].as_u64().expect("dropped");
    assert!(got > 0, "records flow again");
    assert_eq!(
        got + dropped,
        sent as u64 * 3979,
        "delivered + dropped = sent ({f})"
    );
}

/// `ipfix_file` and a rotating `ndjson` sink: files finished by size are renamed whole, the
/// last one when the node stops; each IPFIX file decodes alone (its templates first) in
/// `ipfixsvc dump` and tshark, and the files hold every record once.
#[test]
fn rotated_files_are_whole_and_each_ipfix_file_reads_alone() {
    common::need("tshark");
    let dir = common::config_dir("rotate");
    let (store, ndjson) = (dir.join("store"), dir.join("ndjson"));
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[[mediator.streams]]\nname = \"store\"\nsink = {{ kind = \"ipfix_file\", dir = \"{}\", rotate_bytes = 65536 }}\n\n[[mediator.streams]]\nname = \"lines\"\nsink = {{ kind = \"ndjson\", path = \"{}/flows.ndjson\", rotate_bytes = 262144 }}\n",
            store.display(),
            ndjson.display()
        ),
    )
    .expect("config");
    let a = Server::start(
        "rotate",
        &[("IPFIXSVC_CONFIG", config.to_str().expect("utf-8"))],
    );
    let file = example();
    for n in 1..=2 {
        let mut s = std::net::TcpStream::connect(a.tcp).expect("connect");
        s.write_all(&file).expect("send");
        drop(s);
        a.wait_log("exporter session ended", n, Duration::from_secs(20));
    }
    assert!(a.terminate().success());
    let listing = |d: &Path| -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(d)
            .expect("dir")
            .map(|e| e.expect("entry").path())
            .collect();
        v.sort();
        v
    };
    let ipfix = listing(&store);
    assert!(ipfix.len() >= 3, "finished by size: {ipfix:?}");
    let mut total = 0;
    for f in &ipfix {
        let name = f.file_name().expect("name").to_string_lossy().into_owned();
        assert!(
            name.starts_with("store-") && name.ends_with(".ipfix"),
            "whole files only, no .part left: {name}"
        );
        let out = std::process::Command::new(common::BIN)
            .args(["dump", "--count"])
            .arg(f)
            .output()
            .expect("dump");
        assert!(
            out.status.success(),
            "{name} decodes alone: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let counts: Value = serde_json::from_slice(&out.stdout).expect("dump's counts");
        assert_eq!(counts["errors"], 0, "{name}: {counts}");
        total += counts["dataRecords"].as_u64().expect("dataRecords");
        let t = std::process::Command::new("tshark")
            .arg("-r")
            .arg(f)
            .arg("-V")
            .output()
            .expect("tshark");
        let v = String::from_utf8_lossy(&t.stdout);
        assert!(
            t.status.success() && !v.contains("Malformed") && !v.contains("no template found"),
            "{name}: tshark"
        );
    }
    assert_eq!(total, 2 * 3979, "every record once");
    let nd = listing(&ndjson);
    assert!(nd.len() >= 2, "{nd:?}");
    let mut lines_total = 0;
    for f in &nd {
        let name = f.file_name().expect("name").to_string_lossy().into_owned();
        assert!(
            name.starts_with("flows-") && name.ends_with(".ndjson"),
            "{name}"
        );
        let text = std::fs::read_to_string(f).expect("read");
        assert!(text.ends_with('\n'), "{name} ends with a whole line");
        lines_total += lines(f).len();
    }
    assert_eq!(lines_total, 2 * 3979);
}

/// Re-export over UDP: messages within 1472 bytes, templates first, and node B decodes every
/// record A received.
#[test]
fn a_stream_re_exports_over_udp_within_the_path_size() {
    let b = Server::start("udp-b", &[]);
    let dir = common::config_dir("udp");
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[[mediator.streams]]\nname = \"to-b\"\nsink = {{ kind = \"ipfix\", transport = \"udp\", to = \"{}\" }}\n",
            b.udp
        ),
    )
    .expect("config");
    let a = Server::start(
        "udp-a",
        &[("IPFIXSVC_CONFIG", config.to_str().expect("utf-8"))],
    );
    let file = example();
    send(&a, &file, 1);
    common::eventually("B has every record", Duration::from_secs(20), || {
        b.output().len() >= 3979
    });
    assert_eq!(b.output().len(), 3979);
    assert!(a.terminate().success());
    let log = b.log.clone();
    assert!(b.terminate().success());
    // B's session (A's UDP socket): no sequence loss, no error, every record.
    let ended: Vec<String> = log
        .lock()
        .expect("log")
        .iter()
        .filter(|l| l.contains("exporter session ended"))
        .cloned()
        .collect();
    assert_eq!(ended.len(), 1, "{ended:?}");
    for k in ["lost=0 ", "errors=0 ", "records=3979 "] {
        assert!(ended[0].contains(k), "{k}: {}", ended[0]);
    }
}

/// `redis_stream` with a real redis-server: one entry per record whose fields are the record's
/// (the same values as the NDJSON stream's), or one per Data Set holding its lines; both hold
/// every record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stream_entries_hold_every_record() {
    let redis = common::redis_server::RedisServer::start();
    let url = redis.url();
    let dir =
        std::env::temp_dir().join(format!("ipfixsvc-test-{}-xadd-config", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let all = dir.join("all.ndjson");
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[[mediator.streams]]\nname = \"all\"\nsink = {{ kind = \"ndjson\", path = \"{}\" }}\n\n[[mediator.streams]]\nname = \"records\"\nsink = {{ kind = \"redis_stream\", url = \"{url}\", key = \"flows:records\" }}\n\n[[mediator.streams]]\nname = \"batches\"\nsink = {{ kind = \"redis_stream\", url = \"{url}\", key = \"flows:batches\", entry = \"batch\" }}\n",
            all.display()
        ),
    )
    .expect("config");
    let a = Server::start(
        "xadd",
        &[("IPFIXSVC_CONFIG", config.to_str().expect("utf-8"))],
    );
    let file = example();
    send(&a, &file, 1);
    assert!(a.terminate().success(), "a clean drain");
    let client = redis::Client::open(url.as_str()).expect("client");
    let mut c = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let n: u64 = redis::cmd("XLEN")
        .arg("flows:records")
        .query_async(&mut c)
        .await
        .expect("XLEN");
    assert_eq!(n, 3979);
    // The first entry against the NDJSON stream's first line, field by field.
    let first: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg("flows:records")
        .arg("-")
        .arg("+")
        .arg("COUNT")
        .arg(1)
        .query_async(&mut c)
        .await
        .expect("XRANGE");
    let line = lines(&all).remove(0);
    let entry = &first.ids[0].map;
    for (k, v) in line.as_object().expect("object") {
        let want = match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let got: String =
            redis::from_redis_value(entry.get(k).unwrap_or_else(|| panic!("{k}")).clone())
                .expect("a string");
        assert_eq!(got, want, "{k}");
    }
    let batches: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg("flows:batches")
        .arg("-")
        .arg("+")
        .query_async(&mut c)
        .await
        .expect("XRANGE");
    let in_batches: usize = batches
        .ids
        .iter()
        .map(|e| {
            let text: String = e.get("records").expect("records");
            text.lines().count()
        })
        .sum();
    assert_eq!(in_batches, 3979);
}

/// `http` against a local server that answers 503 to its first requests: the batches are sent
/// again until taken, and the server gets every record once, as JSON arrays of at most
/// `batch_records` objects.
/// A flow store's ingest endpoint on loopback (https with `tls`): answers 503 to the first
/// `refuse` requests, then 200, keeping the size of each JSON array it took.
fn ingest_server(
    refuse: usize,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<usize>>>,
) {
    use std::io::{BufRead, BufReader, Read};
    let server = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let at = server.local_addr().expect("addr");
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::<usize>::new()));
    let seen = got.clone();
    std::thread::spawn(move || {
        let mut requests = 0;
        for c in server.incoming() {
            let Ok(c) = c else { return };
            let stream: Box<dyn ReadWrite> = match &tls {
                Some(cfg) => Box::new(rustls::StreamOwned::new(
                    rustls::ServerConnection::new(cfg.clone()).expect("TLS session"),
                    c,
                )),
                None => Box::new(c),
            };
            let mut r = BufReader::new(stream);
            let mut len = 0;
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                if line == "\r\n" {
                    break;
                }
            }
            if len == 0 {
                continue;
            }
            let mut body = vec![0; len];
            let _ = r.read_exact(&mut body);
            requests += 1;
            let status = if requests <= refuse {
                "503 Service Unavailable"
            } else {
                let v: Value = serde_json::from_slice(&body).expect("a JSON array");
                seen.lock()
                    .expect("seen")
                    .push(v.as_array().map_or(0, Vec::len));
                "200 OK"
            };
            let _ = r.get_mut().write_all(
                format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            );
            let _ = r.get_mut().flush();
        }
    });
    (at, got)
}

trait ReadWrite: std::io::Read + std::io::Write + Send {}
impl<T: std::io::Read + std::io::Write + Send> ReadWrite for T {}

/// Runs a node whose one stream is `sink`, sends example_flows.ipfix, and returns the sizes
/// of the batches the ingest server took once it holds every record.
fn through_http_sink(
    name: &str,
    sink: &str,
    got: &std::sync::Arc<std::sync::Mutex<Vec<usize>>>,
) -> Vec<usize> {
    let dir = common::config_dir(name);
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!("[[mediator.streams]]\nname = \"store\"\non_full = \"block\"\nsink = {sink}\n"),
    )
    .expect("config");
    let a = Server::start(
        name,
        &[("IPFIXSVC_CONFIG", config.to_str().expect("utf-8"))],
    );
    let file = example();
    send(&a, &file, 1);
    common::eventually(
        "the server took every record",
        Duration::from_secs(20),
        || got.lock().expect("got").iter().sum::<usize>() >= 3979,
    );
    assert!(a.terminate().success());
    got.lock().expect("got").clone()
}

#[test]
fn an_http_sink_retries_until_the_server_takes_every_record() {
    let (at, got) = ingest_server(2, None);
    let sizes = through_http_sink(
        "http",
        &format!("{{ kind = \"http\", url = \"http://{at}/ingest\", batch_records = 500 }}"),
        &got,
    );
    assert_eq!(
        sizes.iter().sum::<usize>(),
        3979,
        "every record once: {sizes:?}"
    );
    assert!(sizes.iter().all(|n| *n <= 500), "{sizes:?}");
}

#[test]
fn an_https_sink_trusts_its_ca_file_and_delivers_every_record() {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let dir = common::config_dir("https-certs");
    let (cert, key, ca) = common::certificates(&dir);
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let tls = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            CertificateDer::pem_file_iter(&cert)
                .expect("cert")
                .collect::<Result<Vec<_>, _>>()
                .expect("certs"),
            PrivateKeyDer::from_pem_file(&key).expect("key"),
        )
        .expect("server config");
    let (at, got) = ingest_server(0, Some(std::sync::Arc::new(tls)));
    let sizes = through_http_sink(
        "https",
        &format!(
            "{{ kind = \"http\", url = \"https://127.0.0.1:{}/ingest\", batch_records = 1000, ca_file = \"{ca}\" }}",
            at.port()
        ),
        &got,
    );
    assert_eq!(sizes.iter().sum::<usize>(), 3979, "{sizes:?}");
}

/// Records of `bytes` (IPFIX messages), and whether every Data Set found its template.
fn decode_stream(bytes: &[u8]) -> (usize, bool) {
    use ipfixsvc::wire::{Decoder, DecoderOptions, MessageReader, Registry};
    let mut d = Decoder::new(Registry::builtin(), DecoderOptions::default());
    let (mut records, mut whole) = (0, true);
    for m in MessageReader::new(bytes, 65535) {
        let Ok((_, m)) = m else { break };
        let Ok(m) = d.decode(m) else {
            return (records, false);
        };
        records += m.data_records();
        whole &= m.missing.is_empty();
    }
    (records, whole)
}

#[test]
fn a_peer_that_drops_the_connection_gets_a_new_session_with_its_templates_and_the_held_records() {
    // The peer reads a little of the first connection and closes it; the second it reads in
    // full. The second is a Transport Session of its own: templates first, every record after
    // the break in it, and the stream's figures add up.
    let peer = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let peer_at = peer.local_addr().expect("addr");
    let got = std::thread::spawn(move || {
        let (mut s, _) = peer.accept().expect("first connection");
        let mut first = vec![0u8; 4096];
        let _ = std::io::Read::read_exact(&mut s, &mut first);
        drop(s);
        let (mut s, _) = peer.accept().expect("second connection");
        let mut second = Vec::new();
        let _ = std::io::Read::read_to_end(&mut s, &mut second);
        second
    });
    let dir = common::config_dir("reconnect");
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[[mediator.streams]]\nname = \"to-peer\"\nsink = {{ kind = \"ipfix\", transport = \"tcp\", to = \"{peer_at}\" }}\n"
        ),
    )
    .expect("config");
    let server = Server::start(
        "reconnect",
        &[("IPFIXSVC_CONFIG", config.to_str().expect("utf-8"))],
    );
    // Twice: the first send's chunk may all fit in the closed socket's buffer; the second
    // then finds the connection broken.
    let file = example();
    send(&server, &file, 1);
    std::thread::sleep(Duration::from_millis(300));
    send(&server, &file, 2);
    let (status, log) = server.terminate_with_log();
    assert!(status.success());
    let second = got.join().expect("peer");
    let (records, whole) = decode_stream(&second);
    assert!(
        whole,
        "the new session has every template before its records"
    );
    assert!(
        (3979..=2 * 3979).contains(&records),
        "the second session holds the second send at least: {records}"
    );
    let line = log
        .iter()
        .find(|l| l.contains("stream finished"))
        .expect("the stream's final figures");
    assert!(
        !line.contains("sink_errors=0"),
        "the break was counted: {line}"
    );
    assert!(
        line.contains("dropped=0"),
        "nothing dropped with block: {line}"
    );
}
