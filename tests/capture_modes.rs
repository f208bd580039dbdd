//! A capture read through `Read` and the same capture mapped into memory hand out the same
//! frames, and a capture cut short ends the same way in both: every whole frame, then an error.

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
