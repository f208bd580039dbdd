//! NetFlow v5 end to end, with tshark as the oracle: `ipfixsvc dump` of a v5 capture must give
//! tshark's decoding of the same file, record by record and field by field (header fields
//! included). Two captures: Akvorado's recording of a real router's export, and what softflowd (a
//! real exporter, `-v 5`) sends over UDP to a running `ipfixsvc serve`, recorded by tcpdump. The
//! collector's records must be dump's, and its loss accounting (v5 sequence numbers count flows)
//! must see no loss.

mod common;

use common::{BIN, Server};
use serde_json::{Value as J, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// One record as a map from our NDJSON keys to values, as both sides are compared.
type Record = BTreeMap<String, J>;

/// tshark's NetFlow v5 record fields and the element each one is in our output.
const FIELDS: [(&str, &str); 19] = [
    ("cflow.srcaddr", "sourceIPv4Address"),
    ("cflow.dstaddr", "destinationIPv4Address"),
    ("cflow.nexthop", "ipNextHopIPv4Address"),
    ("cflow.inputint", "ingressInterface"),
    ("cflow.outputint", "egressInterface"),
    ("cflow.packets", "packetDeltaCount"),
    ("cflow.octets", "octetDeltaCount"),
    ("cflow.timestart", "flowStartSysUpTime"),
    ("cflow.timeend", "flowEndSysUpTime"),
    ("cflow.srcport", "sourceTransportPort"),
    ("cflow.dstport", "destinationTransportPort"),
    ("cflow.padding", "paddingOctets"),
    ("cflow.tcpflags", "tcpControlBits"),
    ("cflow.protocol", "protocolIdentifier"),
    ("cflow.tos", "ipClassOfService"),
    ("cflow.srcas", "bgpSourceAsNumber"),
    ("cflow.dstas", "bgpDestinationAsNumber"),
    ("cflow.srcmask", "sourceIPv4PrefixLength"),
    ("cflow.dstmask", "destinationIPv4PrefixLength"),
];

/// tshark's display text as our JSON value: "0x18" and "24" are numbers, "2874324.000000000"
/// (seconds of uptime) is milliseconds, "00:00" is hex, addresses stay strings.
fn normalise(field: &str, v: &J) -> J {
    let s = v.as_str().unwrap_or_default();
    match field {
        "cflow.srcaddr" | "cflow.dstaddr" | "cflow.nexthop" => json!(s),
        "cflow.padding" => match v {
            J::Array(a) => J::Array(a.iter().map(|x| normalise(field, x)).collect()),
            _ => json!(s.replace(':', "")),
        },
        "cflow.timestart" | "cflow.timeend" | "cflow.sysuptime" => {
            let (secs, frac) = s.split_once('.').unwrap_or((s, "0"));
            let ms = secs.parse::<u64>().expect("seconds") * 1000
                + format!("{frac:0<3}")[..3].parse::<u64>().expect("fraction");
            json!(ms)
        }
        _ => match s.strip_prefix("0x") {
            Some(hex) => json!(u64::from_str_radix(hex, 16).expect("hex")),
            None => json!(s.parse::<u64>().expect("integer")),
        },
    }
}

/// The v5 records tshark decodes in `capture` (UDP `port`), with their header's fields, in order.
fn tshark_records(capture: &Path, port: u16) -> Vec<Record> {
    let out = Command::new("tshark")
        .env("TZ", "UTC")
        .arg("-r")
        .arg(capture)
        .args(["-d", &format!("udp.port=={port},cflow"), "-Y", "cflow"])
        .args(["-T", "json", "--no-duplicate-keys", "-J", "frame cflow"])
        .output()
        .expect("run tshark");
    assert!(
        out.status.success(),
        "tshark: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let packets: Vec<J> = serde_json::from_slice(&out.stdout).expect("tshark JSON");
    let mut records = Vec::new();
    for p in &packets {
        let c = &p["_source"]["layers"]["cflow"];
        assert_eq!(c["cflow.version"], "5", "only NetFlow v5 here: {c}");
        let n = |k: &str| c[k].as_str().and_then(|s| s.parse::<u64>().ok());
        let secs = c["cflow.timestamp_tree"]["cflow.unix_secs"]
            .as_str()
            .and_then(|s| s.parse::<i64>().ok())
            .expect("unix_secs");
        let export_time = chrono::DateTime::from_timestamp(secs, 0)
            .expect("time")
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let domain = n("cflow.engine_type").expect("engine type") << 8
            | n("cflow.engine_id").expect("engine id");
        let count = n("cflow.count").expect("count");
        for i in 1..=count {
            let pdu = &c[format!("pdu {i}/{count}")];
            let mut r = Record::new();
            r.insert("@domain".into(), json!(domain));
            r.insert("@template".into(), json!(5));
            r.insert("@exportTime".into(), json!(export_time));
            r.insert(
                "@sysUptime".into(),
                normalise("cflow.sysuptime", &c["cflow.sysuptime"]),
            );
            for (field, ours) in FIELDS {
                let v = match field {
                    "cflow.timestart" | "cflow.timeend" => &pdu["cflow.timedelta_tree"][field],
                    _ => &pdu[field],
                };
                assert!(!v.is_null(), "tshark left out {field}: {pdu}");
                r.insert(ours.into(), normalise(field, v));
            }
            records.push(r);
        }
    }
    records
}

/// `ipfixsvc dump` of `capture` with `port` decoded: the NDJSON lines.
fn dump(capture: &Path, port: u16) -> Vec<String> {
    let out = Command::new(BIN)
        .arg("dump")
        .args(["--port", &port.to_string()])
        .arg(capture)
        .output()
        .expect("run dump");
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// Our records, every key but the exporter's address and the collector's tenant (tshark has no
/// such fields).
fn our_records(lines: &[String]) -> Vec<Record> {
    lines
        .iter()
        .map(|l| {
            let mut r: Record = serde_json::from_str(l).expect("NDJSON");
            r.remove("@exporter");
            r.remove("@tenant");
            r
        })
        .collect()
}

/// Compares dump with tshark, record by record; returns the number of records.
fn dump_matches_tshark(capture: &Path, port: u16) -> usize {
    let theirs = tshark_records(capture, port);
    let ours = our_records(&dump(capture, port));
    assert_eq!(
        ours.len(),
        theirs.len(),
        "{}: record count",
        capture.display()
    );
    for (i, (o, t)) in ours.iter().zip(&theirs).enumerate() {
        assert_eq!(
            o,
            t,
            "{}: record {i} differs from tshark's",
            capture.display()
        );
    }
    ours.len()
}

#[test]
fn router_capture_dump_matches_tshark() {
    common::need("tshark");
    let capture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/testdata/ipfix/akvorado/nfv5.pcap");
    assert_eq!(dump_matches_tshark(&capture, 9990), 29);
}

#[test]
fn softflowd_v5_export_is_decoded_as_tshark_does_and_collected_without_loss() {
    for tool in ["softflowd", "tcpdump", "tshark"] {
        common::need(tool);
    }
    // A short idle timeout, so each exporter's session ends (and logs its loss) soon.
    let server = Server::start(
        "netflow-v5",
        &[("IPFIXSVC__COLLECTOR__IDLE_TIMEOUT_SECS", "2")],
    );
    let port = server.udp.port();
    let dir = server.out.parent().expect("dir").to_path_buf();
    let capture = dir.join("sent.pcap");
    let mut tcpdump = common::tcpdump(&capture, &format!("udp port {port}"));
    let inputs = common::traffic_captures();
    for pcap in &inputs {
        // softflowd can hang after end of file with some control socket paths: a short one, and
        // always a timeout (TOOLS.md).
        let status = Command::new("timeout")
            .arg("20")
            .arg("softflowd")
            .args(["-d", "-r"])
            .arg(pcap)
            .args(["-v", "5", "-n", &format!("127.0.0.1:{port}")])
            .args(["-c", "/tmp/sf5.ctl", "-p"])
            .arg(dir.join("sf.pid"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("softflowd");
        assert!(
            status.success(),
            "softflowd on {}: {status}",
            pcap.display()
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    let _ = Command::new("kill")
        .arg("-INT")
        .arg(tcpdump.id().to_string())
        .status();
    let _ = tcpdump.wait();

    let records = dump_matches_tshark(&capture, port);
    assert!(records > 100, "too few flows exported: {records}");
    let mut dumped = dump(&capture, port);
    // Each run exports from its own socket (a run whose capture holds only IPv6 exports nothing
    // in v5): one collector session each, ended by the idle timeout once all was decoded.
    let exporters: std::collections::BTreeSet<String> = dumped
        .iter()
        .filter_map(|l| {
            serde_json::from_str::<J>(l).ok()?["@exporter"]
                .as_str()
                .map(String::from)
        })
        .collect();
    let ended = server.wait_log(
        "exporter session ended",
        exporters.len(),
        Duration::from_secs(30),
    );
    // The collector tags each record with its exporter's tenant; dump has no tenant.
    let tag = ",\"@tenant\":\"default\"";
    let mut collected: Vec<String> = server
        .output()
        .iter()
        .map(|l| {
            assert!(
                l.contains(tag),
                "a collected record carries its tenant: {l}"
            );
            l.replacen(tag, "", 1)
        })
        .collect();
    collected.sort();
    dumped.sort();
    assert!(
        collected == dumped,
        "collected records differ from dump's ({} vs {})",
        collected.len(),
        dumped.len()
    );
    assert_eq!(ended.len(), exporters.len(), "sessions: {ended:?}");
    assert!(
        ended
            .iter()
            .all(|l| l.contains("lost=0") && l.contains("errors=0")),
        "v5 flow sequence numbers count flows, softflowd's are right: {ended:?}"
    );
    assert!(server.log_lines("malformed").is_empty());
}
