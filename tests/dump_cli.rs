//! `ipfixsvc dump` as a user runs it: pcapng reads like pcap, bad input is reported with its
//! place and dump goes on, and the counts add up.

use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_ipfixsvc");

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/testdata/ipfix")
        .join(name)
}

fn dump(args: &[&str], files: &[&Path]) -> (String, String, bool) {
    let out = Command::new(BIN)
        .arg("dump")
        .args(args)
        .args(files)
        .output()
        .expect("run dump");
    (
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
        out.status.success(),
    )
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ipfixsvc-dump-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join(name)
}

#[test]
fn pcapng_decodes_like_pcap() {
    // editcap comes with tshark (wireshark-common), which ./scripts/test installs.
    let pcap = testdata("iosxr-srv6-bmp.pcap");
    let ng = temp("iosxr.pcapng");
    let ok = Command::new("editcap")
        .args(["-F", "pcapng"])
        .arg(&pcap)
        .arg(&ng)
        .status()
        .expect("editcap (tshark package)");
    assert!(ok.success());
    let (a, _, ok_a) = dump(&["--port", "9991"], &[&pcap]);
    let (b, _, ok_b) = dump(&["--port", "9991"], &[&ng]);
    assert!(ok_a && ok_b);
    assert!(a.lines().count() > 400);
    assert_eq!(a, b);
}

#[test]
fn malformed_messages_are_reported_with_their_place_and_dump_goes_on() {
    let good = std::fs::read(testdata("example_flows.ipfix")).expect("file");
    // Message 3 gets an impossible set length; the stream framing stays intact.
    let mut at = 0;
    for _ in 0..2 {
        at += u16::from_be_bytes([good[at + 2], good[at + 3]]) as usize;
    }
    let mut bad = good.clone();
    bad[at + 18] = 0xff;
    bad[at + 19] = 0xff;
    let path = temp("bad.ipfix");
    std::fs::write(&path, &bad).expect("write");
    let cut = temp("cut.ipfix");
    std::fs::write(&cut, &good[..good.len() - 10]).expect("write");
    // The same through a mapped file and through read(2).
    for mode in [&[][..], &["--no-mmap"][..]] {
        let count = [mode, &["--count"]].concat();
        let (out, err, ok) = dump(&count, &[&path]);
        assert!(ok, "a bad message is not a failed run");
        let counts: serde_json::Value = serde_json::from_str(out.trim()).expect("counts JSON");
        assert_eq!(counts["messages"], 68);
        assert_eq!(counts["errors"], 1);
        let (good_out, _, _) = dump(&count, &[&testdata("example_flows.ipfix")]);
        let good_counts: serde_json::Value =
            serde_json::from_str(good_out.trim()).expect("counts JSON");
        assert!(counts["dataRecords"].as_u64() < good_counts["dataRecords"].as_u64());
        assert!(
            err.contains(&format!("message at offset {at}")) && err.contains("runs past the end"),
            "{err}"
        );

        // A file cut inside a message: everything before it is decoded, the cut is reported.
        let (out, err, _) = dump(&count, &[&cut]);
        let counts: serde_json::Value = serde_json::from_str(out.trim()).expect("counts JSON");
        assert_eq!(counts["messages"], 67);
        assert!(err.contains("ended inside a message"), "{err}");
    }

    // Not IPFIX at all.
    let junk = temp("junk.bin");
    std::fs::write(&junk, b"hello world").expect("write");
    let (_, err, _) = dump(&[], &[&junk]);
    assert!(err.contains("neither an IPFIX file nor a capture"), "{err}");
}

#[test]
fn templates_mode_lists_templates_with_names() {
    let (out, _, ok) = dump(&["--templates"], &[&testdata("example_flows.ipfix")]);
    assert!(ok);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    assert_eq!(lines.len(), 8);
    assert!(
        lines
            .iter()
            .all(|t| t["kind"] == "Data" && t["fields"].as_array().is_some_and(|f| !f.is_empty()))
    );
    assert!(out.contains("\"name\":\"sourceIPv4Address\""));
}
