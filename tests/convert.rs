//! `ipfixsvc convert` end to end: every traffic capture metered and written as IPFIX; `dump` reads
//! the file back, and the records add up to what the meter counted (every IP packet in exactly
//! one flow, both directions of a biflow; uniflows twice as many where both directions exist).

mod common;

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_ipfixsvc");

fn convert(input: &Path, out: &Path, extra: &[&str]) -> serde_json::Value {
    let o = Command::new(BIN)
        .arg("convert")
        .arg(input)
        .arg("-o")
        .arg(out)
        .args(["--idle-timeout", "100000", "--active-timeout", "100000"])
        .args(extra)
        .output()
        .expect("convert");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = String::from_utf8_lossy(&o.stderr);
    serde_json::from_str(err.lines().last().unwrap_or("{}")).expect("summary JSON")
}

fn records(file: &Path) -> Vec<serde_json::Value> {
    let o = Command::new(BIN)
        .arg("dump")
        .arg(file)
        .output()
        .expect("dump");
    assert!(o.status.success());
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect()
}

fn sum(rs: &[serde_json::Value], k: &str) -> u64 {
    rs.iter().map(|r| r[k].as_u64().unwrap_or(0)).sum()
}

#[test]
fn converted_captures_read_back_and_add_up() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/testdata/traffic");
    let tmp = std::env::temp_dir().join(format!("ipfixsvc-convert-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("tmp");
    let files = common::traffic_captures();
    let mut total_flows = 0;
    let mut total_syn_first = 0;
    for f in &files {
        let out = tmp.join("out.ipfix");
        let s = convert(f, &out, &[]);
        let rs = records(&out);
        assert_eq!(
            rs.len() as u64,
            s["flows"].as_u64().unwrap_or(0),
            "{}",
            f.display()
        );
        let packets = sum(&rs, "packetDeltaCount") + sum(&rs, "reversePacketDeltaCount");
        assert_eq!(
            packets,
            s["metered_packets"].as_u64().unwrap_or(0),
            "{}: every packet in one flow",
            f.display()
        );
        let octets = sum(&rs, "octetDeltaCount") + sum(&rs, "reverseOctetDeltaCount");
        assert_eq!(octets, s["octets"].as_u64().unwrap_or(0), "{}", f.display());
        assert!(rs.iter().all(|r| {
            r["flowEndReason"]
                .as_u64()
                .is_some_and(|e| (1..=5).contains(&e))
        }));
        // A flow's first flags are among the flags of all its packets, in each direction.
        for (initial, union) in [
            ("initialTCPFlags", "tcpControlBits"),
            ("reverseInitialTCPFlags", "reverseTcpControlBits"),
        ] {
            assert!(rs.iter().all(|r| {
                let (i, u) = (r[initial].as_u64(), r[union].as_u64());
                i.is_some() && i.zip(u).is_some_and(|(i, u)| i & u == i)
            }));
        }
        // Most TCP conversations in these captures start with the client's SYN.
        let syn_first = rs
            .iter()
            .filter(|r| r["protocolIdentifier"] == 6 && r["initialTCPFlags"] == 2)
            .count();
        total_syn_first += syn_first;

        // Read instead of mapped: the same file, record for record.
        let read = tmp.join("read.ipfix");
        let r = convert(f, &read, &["--no-mmap"]);
        assert_eq!(
            (r["flows"].clone(), r["octets"].clone()),
            (s["flows"].clone(), s["octets"].clone())
        );
        assert_eq!(records(&read).len(), rs.len());

        // Uniflows: no reverse fields, the same packets, at least as many flows.
        let uni = convert(f, &out, &["--uniflow"]);
        let urs = records(&out);
        assert!(
            urs.iter()
                .all(|r| r.get("reversePacketDeltaCount").is_none())
        );
        assert_eq!(
            sum(&urs, "packetDeltaCount"),
            s["metered_packets"].as_u64().unwrap_or(0)
        );
        assert!(uni["flows"].as_u64() >= s["flows"].as_u64());
        total_flows += rs.len();
    }
    assert!(total_flows > 100, "{total_flows}");
    assert!(total_syn_first > 10, "{total_syn_first}");

    // A capture cut short: what was read is converted, with a warning.
    let whole = std::fs::read(dir.join("http.pcap")).expect("read");
    let cut = tmp.join("cut.pcap");
    std::fs::write(&cut, &whole[..whole.len() - 7]).expect("write");
    let s = convert(&cut, &tmp.join("cut.ipfix"), &[]);
    assert!(
        s["warnings"].as_array().is_some_and(|w| !w.is_empty()),
        "{s}"
    );
    assert!(s["flows"].as_u64().unwrap_or(0) > 0);
    let _ = std::fs::remove_dir_all(&tmp);
}
