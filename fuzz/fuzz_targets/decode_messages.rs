//! The input is a stream of IPFIX messages (as on a TCP session or in an RFC 5655 file): frame it,
//! decode every message with one Decoder (templates carry over to later messages), and render
//! every record as NDJSON (typed values, RFC 6313 lists recursively). The raw input is also
//! decoded once as a single datagram, which is how NetFlow v9 packets (no length field) arrive.
#![no_main]

use bytes::{Bytes, BytesMut};
use ipfixsvc::wire::ndjson::{Origin, write_record};
use ipfixsvc::wire::{Decoder, DecoderOptions, Framer, Registry};
use libfuzzer_sys::fuzz_target;

fn render(decoder: &mut Decoder, msg: Bytes, out: &mut Vec<u8>) {
    let registry = decoder.registry().clone();
    let Ok(decoded) = decoder.decode(msg) else {
        return;
    };
    for batch in &decoded.batches {
        for r in 0..batch.len() {
            out.clear();
            write_record(
                out,
                Origin {
                    exporter: "fuzz",
                    tenant: None,
                    domain: None,
                },
                &decoded,
                batch,
                r,
                &registry,
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut decoder = Decoder::new(Registry::builtin(), DecoderOptions::default());
    let mut out = Vec::new();

    let mut buf = BytesMut::from(data);
    let mut framer = Framer::new(65535);
    while let Ok(Some(msg)) = framer.next_message(&mut buf) {
        render(&mut decoder, msg, &mut out);
    }
    let _ = framer.finish(&buf);

    // The whole input as one datagram (NetFlow v9, or IPFIX with trailing bytes), on the decoder
    // that has learned the stream's templates.
    render(&mut decoder, Bytes::copy_from_slice(data), &mut out);
});
