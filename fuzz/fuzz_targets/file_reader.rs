//! An RFC 5655 file: MessageReader over the input (read in 64 KiB chunks), every message decoded
//! with one Decoder, to the end or the first framing error.
#![no_main]

use ipfixsvc::wire::{Decoder, DecoderOptions, MessageReader, Registry};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut decoder = Decoder::new(Registry::builtin(), DecoderOptions::default());
    for item in MessageReader::new(data, 65535) {
        match item {
            Ok((_offset, msg)) => {
                let _ = decoder.decode(msg);
            }
            Err(_) => break,
        }
    }
});
