//! The Metering Process on any capture: CaptureReader (mapped), packet classification (link
//! walk, IPv4/IPv6, fragments), a small flow table (so eviction and timeouts run) and the IPFIX
//! writer into memory. Invariant: the file written decodes, and its flows hold every metered
//! packet exactly once.
#![no_main]

use bytes::Bytes;
use ipfixsvc::meter::capture::MappedCapture;
use ipfixsvc::meter::convert::{Control, Conversion};
use ipfixsvc::meter::flow::MeterConfig;
use ipfixsvc::wire::batch::Value;
use ipfixsvc::wire::{Decoder, DecoderOptions, MessageSlices, Registry};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(mut capture) = MappedCapture::from_bytes(Bytes::copy_from_slice(data)) else {
        return;
    };
    let cfg = MeterConfig {
        idle_ms: 2_000,
        active_ms: 5_000,
        biflow: data.len() % 2 == 0,
        max_flows: 8,
    };
    let mut run = Conversion::new(Vec::new(), cfg, 1).expect("writer into memory");
    run.meter("fuzz", &mut capture, &mut |_| Control::Continue)
        .expect("metering into memory cannot fail");
    let (summary, file) = run.finish().expect("finish into memory");

    let mut decoder = Decoder::new(Registry::builtin(), DecoderOptions::default());
    let (mut flows, mut packets) = (0u64, 0u64);
    for m in MessageSlices::new(Bytes::from(file), 65535) {
        let (_, msg) = m.expect("our own file frames");
        let d = decoder.decode(msg).expect("our own file decodes");
        for b in &d.batches {
            for r in 0..b.len() {
                flows += 1;
                for (f, pf) in b.plan.fields.iter().enumerate() {
                    // packetDeltaCount, forward and reverse (RFC 5103 PEN 29305).
                    if pf.spec.id == 2
                        && (pf.spec.pen == 0 || pf.spec.pen == 29305)
                        && let Value::Unsigned(n) = b.value(&d.buf, r, f)
                    {
                        packets += n;
                    }
                }
            }
        }
    }
    assert_eq!(flows, summary.flows, "flows written vs counted");
    assert_eq!(packets, summary.metered_packets, "every metered packet in one flow");
});
