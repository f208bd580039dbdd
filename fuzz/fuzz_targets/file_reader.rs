//! An RFC 5655 file, read both ways dump reads one: MessageReader over the input (read in 64 KiB
//! chunks) and MessageSlices over it in memory (a mapped file). Invariant: both hand out the
//! same messages and the same error; every message is decoded with one Decoder.
#![no_main]

use bytes::Bytes;
use ipfixsvc::wire::{Decoder, DecoderOptions, MessageReader, MessageSlices, Registry};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut decoder = Decoder::new(Registry::builtin(), DecoderOptions::default());
    let mut sliced = MessageSlices::new(Bytes::copy_from_slice(data), 65535);
    for item in MessageReader::new(data, 65535) {
        let other = sliced.next().expect("slices end with the reader");
        match (item, other) {
            (Ok((offset, msg)), Ok((offset2, msg2))) => {
                assert_eq!((offset, &msg), (offset2, &msg2));
                let _ = decoder.decode(msg);
            }
            (Err(a), Err(b)) => {
                assert_eq!(a.to_string(), b.to_string());
                break;
            }
            (a, b) => panic!("reader {a:?} vs slices {b:?}"),
        }
    }
    assert!(sliced.next().is_none(), "slices go on after the reader ended");
});
