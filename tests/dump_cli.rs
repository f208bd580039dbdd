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
    let (_, err, ok) = dump(&[], &[&junk]);
    assert!(err.contains("neither an IPFIX file nor a capture"), "{err}");
    assert!(!ok, "nothing of the input could be read");
}

#[test]
fn inputs_that_cannot_be_read_fail_the_run_with_one_line_each() {
    let junk = temp("hostname");
    std::fs::write(&junk, b"myhost\n").expect("write");
    let empty = temp("empty.ipfix");
    std::fs::write(&empty, b"").expect("write");
    // Starts like IPFIX (version 10), but its first message cannot be framed.
    let fake = temp("fake.ipfix");
    std::fs::write(&fake, b"\x00\x0a\x00\x05abcdefghijklmnop").expect("write");
    let bad_capture = temp("bad.pcap");
    std::fs::write(&bad_capture, b"\xd4\xc3\xb2\xa1xx").expect("write");
    let missing = temp("missing.ipfix");
    for (input, reason) in [
        (&missing, "cannot open"),
        (&junk, "neither an IPFIX file nor a capture"),
        (&empty, "empty"),
        (&fake, "not IPFIX"),
        (&bad_capture, "not a readable capture"),
        (&std::env::temp_dir(), "cannot read"),
    ] {
        let (out, err, ok) = dump(&[], &[input]);
        assert!(!ok, "{}: exits non-zero", input.display());
        assert!(out.is_empty(), "{out}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "one line: {err}");
        assert!(
            lines[0].starts_with(&format!("{}: ", input.display())) && lines[0].contains(reason),
            "names the file and the reason: {err}"
        );
    }

    // A good file before a missing one is still decoded and counted; the run fails.
    let good = testdata("example_flows.ipfix");
    let (out, err, ok) = dump(&["--count"], &[&good, &missing]);
    assert!(!ok);
    let counts: serde_json::Value = serde_json::from_str(out.trim()).expect("counts JSON");
    assert_eq!(counts["dataRecords"], 3979);
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn a_reader_that_leaves_ends_dump_quietly() {
    // `dump FILE | head -1`: the reader closes the pipe after one line.
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(BIN)
        .arg("dump")
        .arg(testdata("example_flows.ipfix"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run dump");
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("one line");
    assert!(first.starts_with('{'), "{first}");
    // The reader is dropped here: dump's next write meets a closed pipe.
    let out = child.wait_with_output().expect("dump ends");
    assert!(out.status.success(), "{:?}", out.status);
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
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
