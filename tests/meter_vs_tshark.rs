//! The Metering Process against tshark's conversations: for every capture in
//! `../shared/testdata/traffic/`, with timeouts long enough that no flow is split, each TCP and
//! UDP biflow has the same endpoints, frames and bytes (on the wire) as one tshark conversation
//! (`tcp.stream` / `udp.stream`).
//!
//! Where the two count differently, by design, the test says so:
//! - tshark puts the UDP or TCP header quoted inside an ICMP error into the quoted conversation;
//!   a meter counts the ICMP packet to an ICMP flow. Those frames are left out of tshark's side.
//! - Our flow key has the VLAN; tshark's conversation does not. Where the same 5-tuple is seen on
//!   several VLANs (vlan.pcap), our flows of that 5-tuple are compared by their sum.

mod common;

use ipfixsvc::meter::capture::CaptureReader;
use ipfixsvc::meter::flow::{FlowTable, MeterConfig};
use ipfixsvc::meter::packet::{Fragments, classify};
use std::collections::BTreeMap;
use std::io::BufReader;
use std::path::Path;
use std::process::Command;

/// (protocol, lower endpoint, higher endpoint) -> list of (frames, bytes), one per conversation.
type Conversations = BTreeMap<(u8, String, String), Vec<(u64, u64)>>;

/// One tshark stream: its endpoints, frames and bytes.
type Stream = ((String, String), u64, u64);

/// The 5-tuples whose flows were told apart by VLAN alone.
type VlanSplit = std::collections::BTreeSet<(u8, String, String)>;

fn endpoints(a: String, b: String) -> (String, String) {
    if a <= b { (a, b) } else { (b, a) }
}

fn ours(pcap: &Path) -> (Conversations, VlanSplit) {
    let cfg = MeterConfig {
        idle_ms: u64::MAX / 4,
        active_ms: u64::MAX / 4,
        biflow: true,
        max_flows: 1_000_000,
    };
    let mut table = FlowTable::new(cfg);
    let mut frags = Fragments::default();
    let mut done = Vec::new();
    let mut cap = CaptureReader::new(BufReader::new(std::fs::File::open(pcap).expect("open")))
        .expect("capture");
    while let Some(p) = cap.next_packet() {
        let p = p.expect("frame");
        if let Ok(info) = classify(&p, &mut frags) {
            table.observe(&info, &mut done);
        }
    }
    table.finish(&mut done);
    let mut out = Conversations::new();
    let mut vlans: BTreeMap<(u8, String, String), std::collections::BTreeSet<u16>> =
        BTreeMap::new();
    for f in done.iter().filter(|f| f.proto == 6 || f.proto == 17) {
        let (a, b) = endpoints(
            format!("{}:{}", f.src, f.sport),
            format!("{}:{}", f.dst, f.dport),
        );
        vlans
            .entry((f.proto, a.clone(), b.clone()))
            .or_default()
            .insert(f.vlan);
        out.entry((f.proto, a, b)).or_default().push((
            f.forward.packets + f.reverse.packets,
            f.forward.layer2_octets + f.reverse.layer2_octets,
        ));
    }
    let split: VlanSplit = vlans
        .into_iter()
        .filter(|(_, v)| v.len() > 1)
        .map(|(k, _)| k)
        .collect();
    for (k, v) in out.iter_mut() {
        if split.contains(k) {
            let sum = v.iter().fold((0, 0), |acc, x| (acc.0 + x.0, acc.1 + x.1));
            *v = vec![sum];
        }
        v.sort();
    }
    (out, split)
}

fn tshark(pcap: &Path) -> Conversations {
    let out = Command::new("tshark")
        .arg("-r")
        .arg(pcap)
        .args([
            "-Y",
            "(tcp || udp) && !icmp && !icmpv6",
            "-T",
            "fields",
            "-E",
            "separator=|",
        ])
        .args([
            "-e",
            "frame.len",
            "-e",
            "ip.src",
            "-e",
            "ipv6.src",
            "-e",
            "ip.dst",
            "-e",
            "ipv6.dst",
        ])
        .args([
            "-e",
            "tcp.stream",
            "-e",
            "tcp.srcport",
            "-e",
            "tcp.dstport",
            "-e",
            "udp.stream",
            "-e",
            "udp.srcport",
            "-e",
            "udp.dstport",
        ])
        .output()
        .expect("tshark");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // stream -> (proto, endpoints, frames, bytes)
    let mut streams: BTreeMap<(u8, u64), Stream> = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let c: Vec<&str> = line.split('|').collect();
        if c.len() < 11 {
            continue;
        }
        // Tunnels repeat fields (comma-separated): the outermost is first.
        let first = |s: &str| s.split(',').next().unwrap_or("").to_string();
        let len: u64 = c[0].parse().unwrap_or(0);
        let src = if c[1].is_empty() {
            first(c[2])
        } else {
            first(c[1])
        };
        let dst = if c[3].is_empty() {
            first(c[4])
        } else {
            first(c[3])
        };
        let (proto, stream, sp, dp) = if !c[5].is_empty() {
            (6u8, first(c[5]), first(c[6]), first(c[7]))
        } else {
            (17u8, first(c[8]), first(c[9]), first(c[10]))
        };
        let Ok(stream) = stream.parse::<u64>() else {
            continue;
        };
        let e = streams.entry((proto, stream)).or_insert_with(|| {
            (
                endpoints(format!("{src}:{sp}"), format!("{dst}:{dp}")),
                0,
                0,
            )
        });
        e.1 += 1;
        e.2 += len;
    }
    let mut conv = Conversations::new();
    for ((proto, _), (ends, frames, bytes)) in streams {
        conv.entry((proto, ends.0, ends.1))
            .or_default()
            .push((frames, bytes));
    }
    for v in conv.values_mut() {
        v.sort();
    }
    conv
}

#[test]
fn flows_match_tshark_conversations() {
    let files = common::traffic_captures();
    let mut problems = Vec::new();
    let mut compared = 0;
    let mut vlan_split = 0;
    for f in &files {
        let ((a, split), b) = (ours(f), tshark(f));
        vlan_split += split.len();
        compared += b.values().map(Vec::len).sum::<usize>();
        for (k, v) in &b {
            if a.get(k) != Some(v) {
                problems.push(format!(
                    "{}: {k:?}: tshark {v:?}, ours {:?}",
                    f.display(),
                    a.get(k)
                ));
            }
        }
        for (k, v) in &a {
            if !b.contains_key(k) {
                problems.push(format!(
                    "{}: {k:?}: ours {v:?}, tshark has no such conversation",
                    f.display()
                ));
            }
        }
    }
    eprintln!(
        "{compared} tshark conversations compared ({vlan_split} 5-tuples seen on several VLANs)"
    );
    assert!(compared > 90, "too few conversations compared: {compared}");
    assert!(
        problems.is_empty(),
        "{} differences:\n{}",
        problems.len(),
        problems
            .iter()
            .take(30)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}
