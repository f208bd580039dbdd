//! A real exporter: softflowd (Debian package) meters each capture in
//! `../shared/testdata/traffic/` and exports IPFIX over TCP to a running `ipfixsvc serve`.
//! tcpdump records what softflowd sent; tshark decodes that recording; the collected flows must
//! equal tshark's, flow by flow (addresses, ports, protocol, octets, packets, times).
//! Then softflowd is the oracle for our Metering Process: `ipfixsvc convert --uniflow` of the same
//! capture has the same 5-tuples with the same packets; octets differ only by the Ethernet padding
//! softflowd counts and RFC 7012's octetDeltaCount does not.

mod common;

use common::Server;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// One flow as a comparable line.
type Flow = String;

fn flow(
    src: &str,
    dst: &str,
    sp: &str,
    dp: &str,
    proto: &str,
    octets: &str,
    packets: &str,
) -> Flow {
    format!("{src} {dst} {sp} {dp} {proto} {octets} {packets}")
}

/// The flows tshark decodes from the recording of the exporter's TCP stream: every "Flow N"
/// object of its JSON (duplicate keys merged into arrays, so no message is lost).
fn tshark_flows(capture: &Path, port: u16) -> Vec<Flow> {
    let out = Command::new("tshark")
        .env("TZ", "UTC")
        .arg("-r")
        .arg(capture)
        .args([
            "-d",
            &format!("tcp.port=={port},cflow"),
            "-Y",
            "cflow",
            "-T",
            "json",
            "--no-duplicate-keys",
            "-J",
            "cflow",
        ])
        .output()
        .expect("run tshark");
    assert!(
        out.status.success(),
        "tshark: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("tshark JSON");
    let mut flows = Vec::new();
    collect_flows(&json, &mut flows);
    flows.sort();
    flows
}

fn collect_flows(v: &serde_json::Value, out: &mut Vec<Flow>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                let items: Vec<&serde_json::Value> = match v {
                    serde_json::Value::Array(a) => a.iter().collect(),
                    v => vec![v],
                };
                for item in items {
                    if k.starts_with("Flow ") {
                        let f = |name: &str| {
                            item.get(name)
                                .and_then(|x| x.as_str())
                                .unwrap_or("-")
                                .to_string()
                        };
                        let addr =
                            |v4: &str, v6: &str| if item.get(v4).is_some() { f(v4) } else { f(v6) };
                        out.push(flow(
                            &addr("cflow.srcaddr", "cflow.srcaddrv6"),
                            &addr("cflow.dstaddr", "cflow.dstaddrv6"),
                            &f("cflow.srcport"),
                            &f("cflow.dstport"),
                            &f("cflow.protocol"),
                            &f("cflow.octets"),
                            &f("cflow.packets"),
                        ));
                    } else {
                        collect_flows(item, out);
                    }
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_flows(x, out)),
        _ => {}
    }
}

/// Packets and octets per 5-tuple (options records left out).
fn per_five_tuple(flows: &[Flow]) -> BTreeMap<String, (u64, u64)> {
    let mut m = BTreeMap::new();
    for f in flows.iter().filter(|f| f.as_str() != OPTIONS_RECORD) {
        let parts: Vec<&str> = f.split(' ').collect();
        let n = |i: usize| {
            parts
                .get(i)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        // softflowd sends ICMP flows without port fields; ours carry ports 0.
        let key: Vec<&str> = parts
            .iter()
            .take(5)
            .enumerate()
            .map(|(i, p)| {
                if (i == 2 || i == 3) && *p == "-" {
                    "0"
                } else {
                    p
                }
            })
            .collect();
        let e = m.entry(key.join(" ")).or_insert((0, 0));
        e.0 += n(5);
        e.1 += n(6);
    }
    m
}

/// softflowd's options records (metering process, sampling) carry none of the flow fields: in
/// tshark's output they are the all-"-" lines, in ours the `@options` objects.
const OPTIONS_RECORD: &str = "- - - - - - -";

fn our_flows(records: &[String]) -> Vec<Flow> {
    let mut flows = Vec::new();
    for l in records {
        let j: serde_json::Value = serde_json::from_str(l).expect("NDJSON");
        if j.get("@options").is_some() {
            flows.push(OPTIONS_RECORD.to_string());
            continue;
        }
        let s = |k: &str| match &j[k] {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Null => "-".into(),
            v => v.to_string(),
        };
        let addr = |v4: &str, v6: &str| if j.get(v4).is_some() { s(v4) } else { s(v6) };
        flows.push(flow(
            &addr("sourceIPv4Address", "sourceIPv6Address"),
            &addr("destinationIPv4Address", "destinationIPv6Address"),
            &s("sourceTransportPort"),
            &s("destinationTransportPort"),
            &s("protocolIdentifier"),
            &s("octetDeltaCount"),
            &s("packetDeltaCount"),
        ));
    }
    flows.sort();
    flows
}

#[test]
fn softflowd_exports_match_tshark() {
    for tool in ["softflowd", "tcpdump", "tshark"] {
        common::need(tool);
    }
    let files = common::traffic_captures();
    let server = Server::start("softflowd", &[]);
    let port = server.tcp.port();
    let dir = server.out.parent().expect("dir").to_path_buf();
    let mut total = BTreeMap::new();
    let mut seen = 0;
    let mut padding = 0;
    for (n, pcap) in files.iter().enumerate() {
        let capture = dir.join(format!("sent-{n}.pcap"));
        let mut tcpdump = common::tcpdump(&capture, &format!("tcp port {port}"));
        // softflowd can hang after end of file with some control socket paths: a short one, and
        // always a timeout (TOOLS.md).
        let status = Command::new("timeout")
            .arg("20")
            .arg("softflowd")
            .args(["-d", "-r"])
            .arg(pcap)
            .args([
                "-v",
                "10",
                "-P",
                "tcp",
                "-A",
                "milli",
                "-n",
                &format!("127.0.0.1:{port}"),
                "-c",
                "/tmp/sf.ctl",
                "-p",
            ])
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
        server.wait_log("exporter session ended", n + 1, Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(300));
        let _ = Command::new("kill")
            .arg("-INT")
            .arg(tcpdump.id().to_string())
            .status();
        let _ = tcpdump.wait();
        let records = server.output();
        let ours = our_flows(&records[seen..]);
        seen = records.len();
        let theirs = tshark_flows(&capture, port);
        assert!(
            !theirs.is_empty(),
            "{}: tshark saw no flows in what softflowd sent",
            pcap.display()
        );
        assert_eq!(
            ours,
            theirs,
            "{}: collected flows differ from tshark's decoding",
            pcap.display()
        );
        // The same capture through our Metering Process, uniflows like softflowd's: the same
        // 5-tuples with the same packets and octets. Compared summed per 5-tuple, because the two
        // meters split a 5-tuple into flows at different moments (softflowd's TCP timeouts
        // against our 2 s FIN linger and new-SYN rule).
        let converted = dir.join(format!("converted-{n}.ipfix"));
        let ok = Command::new(common::BIN)
            .arg("convert")
            .arg(pcap)
            .arg("-o")
            .arg(&converted)
            .args(["--uniflow", "--quiet"])
            .stderr(Stdio::null())
            .status()
            .expect("convert");
        assert!(ok.success());
        let dumped = Command::new(common::BIN)
            .arg("dump")
            .arg(&converted)
            .output()
            .expect("dump");
        let lines: Vec<String> = String::from_utf8_lossy(&dumped.stdout)
            .lines()
            .map(String::from)
            .collect();
        let (metered, exported) = (per_five_tuple(&our_flows(&lines)), per_five_tuple(&ours));
        assert_eq!(
            metered.keys().collect::<Vec<_>>(),
            exported.keys().collect::<Vec<_>>(),
            "{}: our 5-tuples differ from softflowd's",
            pcap.display()
        );
        for (key, &(octets, packets)) in &metered {
            let (their_octets, their_packets) = exported[key];
            // octetDeltaCount is the IP packets' total length (RFC 7012). softflowd counts the
            // frame after its link header, so Ethernet padding of short packets (up to 26 bytes
            // under a 46-byte minimum payload) is in its count, never in ours.
            assert!(
                packets == their_packets
                    && octets <= their_octets
                    && their_octets <= octets + 26 * packets,
                "{}: {key}: ours {packets} packets {octets} octets, softflowd {their_packets} \
                 packets {their_octets} octets",
                pcap.display()
            );
            padding += their_octets - octets;
        }
        total.insert(
            pcap.file_name()
                .map(|f| f.to_string_lossy().to_string())
                .unwrap_or_default(),
            ours.len(),
        );
    }
    eprintln!(
        "flows compared with tshark: {total:?}; Ethernet padding in softflowd's octets: {padding}"
    );
    assert!(total.values().sum::<usize>() > 100);
}
