//! Framing across partial reads: the first byte picks a chunk size (1..=64), the rest is pushed
//! into a Framer that many bytes at a time. Invariant: the messages handed out, concatenated,
//! are a prefix of the input (nothing dropped, duplicated or reordered).
#![no_main]

use bytes::BytesMut;
use ipfixsvc::wire::Framer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, stream)) = data.split_first() else {
        return;
    };
    let chunk = (first as usize % 64) + 1;
    let mut framer = Framer::new(65535);
    let mut buf = BytesMut::new();
    let mut got: Vec<u8> = Vec::new();
    'feed: for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            let at = framer.offset();
            match framer.next_message(&mut buf) {
                Ok(Some(m)) => {
                    assert_eq!(at, got.len() as u64, "offset is not the stream position");
                    got.extend_from_slice(&m);
                }
                Ok(None) => break,
                Err(_) => break 'feed,
            }
        }
    }
    assert!(got.len() <= stream.len());
    assert!(stream.starts_with(&got), "framed messages are not a prefix of the stream");
    assert_eq!(framer.offset(), got.len() as u64);
});
