//! A capture read through `Read` and the same capture mapped into memory hand out the same
//! frames, and a capture cut short ends the same way in both: every whole frame, then an error.
//! Frame times agree with tshark's, pcapng included (its interface's time resolution applies).

mod common;

use bytes::Bytes;
use ipfixsvc::meter::capture::{CaptureReader, MappedCapture};
use std::io::{BufReader, Read};
use std::time::Duration;

type Frame = (u64, Duration, u32, u32, Vec<u8>);

fn frames<R: Read>(mut c: CaptureReader<R>) -> (Vec<Frame>, bool) {
    let mut out = Vec::new();
    while let Some(p) = c.next_packet() {
        match p {
            Ok(p) => out.push((
                p.frame,
                p.timestamp,
                u32::from(p.link),
                p.orig_len,
                p.data.to_vec(),
            )),
            Err(_) => return (out, true),
        }
    }
    (out, false)
}

#[test]
fn mapped_and_read_captures_agree() {
    let ipfix = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/testdata/ipfix");
    let mut files = common::traffic_captures();
    files.extend(
        std::fs::read_dir(ipfix)
            .expect("testdata/ipfix")
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "pcap" || e == "pcapng")),
    );
    assert!(files.len() >= 10);
    for path in files {
        let bytes = std::fs::read(&path).expect("capture");
        // Whole, and cut in the middle of a frame.
        for len in [bytes.len(), bytes.len() * 2 / 3 + 1] {
            let part = &bytes[..len];
            let read = CaptureReader::new(BufReader::new(part)).expect("reader");
            let mapped = MappedCapture::from_bytes(Bytes::copy_from_slice(part)).expect("mapped");
            let (a, a_err) = frames(read);
            let (b, b_err) = frames(mapped);
            assert!(!a.is_empty() || len < bytes.len(), "{}", path.display());
            assert_eq!(a, b, "{} cut at {len}", path.display());
            assert_eq!(a_err, b_err, "{} cut at {len}", path.display());
            assert_eq!(a_err, len < bytes.len(), "{}", path.display());
        }
    }
}

/// Every frame's time as tshark reads it (pcap and pcapng, whatever the interface's resolution).
#[test]
fn frame_times_match_tshark() {
    for path in common::traffic_captures() {
        let out = std::process::Command::new("tshark")
            .arg("-r")
            .arg(&path)
            .args(["-T", "fields", "-e", "frame.time_epoch"])
            .output()
            .expect("tshark (./scripts/test installs it)");
        assert!(out.status.success());
        // "946712870.501268000": whole microseconds are enough (the captures have no more).
        let theirs: Vec<u128> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| {
                let (s, f) = l.split_once('.').unwrap_or((l, "0"));
                let f = format!("{f:0<9}");
                s.parse::<u128>().expect("seconds") * 1_000_000
                    + f[..6].parse::<u128>().expect("fraction")
            })
            .collect();
        let bytes = std::fs::read(&path).expect("capture");
        let mut ours = Vec::new();
        let mut c = MappedCapture::from_bytes(Bytes::from(bytes)).expect("capture");
        while let Some(Ok(p)) = c.next_packet() {
            ours.push(p.timestamp.as_micros());
        }
        assert_eq!(ours, theirs, "{}", path.display());
    }
}
