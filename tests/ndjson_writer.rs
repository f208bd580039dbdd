//! The fast NDJSON writer against the general one, byte for byte: every record of every test
//! file and capture (Cisco, Huawei, IOS XR, ipfixprobe, akvorado, NetFlow v9, RFC 5655), and
//! records made for the edges (times outside the cache's years, NaN, strings that need
//! escaping, NUL padding, MAC and IPv6 addresses, booleans that are neither true nor false).

use ipfixsvc::meter::capture::CaptureReader;
use ipfixsvc::meter::messages::{Found, MessageFinder};
use ipfixsvc::wire::encode::{FieldValue, MessageBuilder};
use ipfixsvc::wire::ndjson::{Origin, write_record};
use ipfixsvc::wire::ndjson_writer::RecordWriter;
use ipfixsvc::wire::{
    DecodedMessage, Decoder, DecoderOptions, FieldSpec, MessageSlices, Plan, Registry, Template,
    VARLEN,
};
use std::collections::HashMap;
use std::io::BufReader;
use std::path::PathBuf;

fn testdata() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/testdata/ipfix"
    ))
}

const ORIGIN: Origin<'static> = Origin {
    exporter: "192.0.2.1:4739",
    tenant: Some("acme"),
    domain: None,
};

/// Renders `m` both ways; returns the records compared.
fn compare(m: &DecodedMessage, w: &mut RecordWriter, registry: &Registry, what: &str) -> usize {
    let mut n = 0;
    for b in &m.batches {
        let mut slow = Vec::new();
        for r in 0..b.len() {
            write_record(&mut slow, ORIGIN, m, b, r, registry);
        }
        let mut fast = Vec::new();
        w.write_rows(&mut fast, ORIGIN, m, b, 0..b.len(), registry);
        if fast != slow {
            let (f, s) = (
                String::from_utf8_lossy(&fast),
                String::from_utf8_lossy(&slow),
            );
            let at = f
                .lines()
                .zip(s.lines())
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            panic!(
                "{what}: template {}: line {at} differs:\n fast {}\n slow {}",
                b.plan.template.id,
                f.lines().nth(at).unwrap_or(""),
                s.lines().nth(at).unwrap_or("")
            );
        }
        n += b.len();
    }
    n
}

#[test]
fn every_test_file_renders_the_same_both_ways() {
    let registry = Registry::builtin();
    let mut w = RecordWriter::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(testdata())
        .expect("testdata")
        .chain(std::fs::read_dir(testdata().join("akvorado")).expect("akvorado"))
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_file())
        .collect();
    // Template captures before data captures (akvorado keeps them apart), one decoder per
    // (source, destination) across them all.
    files.sort_by_key(|p| {
        let n = p.display().to_string();
        (!n.contains("template"), n)
    });
    let mut total = 0;
    let mut finder = MessageFinder::new(
        vec![4739, 2055, 9995, 9996, 2100, 8096, 9990, 9991, 9992],
        65535,
    );
    let mut decoders = HashMap::new();
    for f in &files {
        let name = f.display().to_string();
        let bytes = std::fs::read(f).expect("read");
        if name.ends_with(".ipfix") {
            let mut d = Decoder::new(registry.clone(), DecoderOptions::default());
            for m in MessageSlices::new(bytes::Bytes::from(bytes.clone()), 65535) {
                let Ok((_, m)) = m else { break };
                if let Ok(dm) = d.decode(m) {
                    total += compare(&dm, &mut w, &registry, &name);
                }
            }
            continue;
        }
        let Ok(mut reader) = CaptureReader::new(BufReader::new(&bytes[..])) else {
            panic!("{name}: not a capture");
        };
        let mut found = Vec::new();
        while let Some(Ok(packet)) = reader.next_packet() {
            found.clear();
            finder.feed(&packet, &mut found);
            for fm in found.drain(..) {
                if let Found::Message(m) = fm {
                    let d = decoders.entry((m.src, m.dst)).or_insert_with(|| {
                        Decoder::new(registry.clone(), DecoderOptions::default())
                    });
                    if let Ok(dm) = d.decode(m.bytes) {
                        total += compare(&dm, &mut w, &registry, &name);
                    }
                }
            }
        }
    }
    // example_flows.ipfix has 3979; the captures about 900 more, over some 60 templates.
    assert!(total > 4_800, "{total} records compared");
}

/// Seconds, milliseconds, microseconds (NTP), nanoseconds (NTP), an application name, an
/// interface name, a probability, a boolean octet.
type Case = (u32, u64, u64, u64, &'static [u8], &'static [u8], f64, u8);

#[test]
fn the_edges_render_the_same_both_ways() {
    let registry = Registry::builtin();
    // flowStartSeconds, flowStartMilliseconds, flowStartMicroseconds, flowStartNanoseconds,
    // applicationName (variable), interfaceName (fixed 8: NUL padded), sourceMacAddress,
    // sourceIPv6Address, samplingProbability (float64), dataRecordsReliability (boolean),
    // mplsTopLabelTTL... as a signed stand-in: an element of type signed32 (e.g. 434's? use
    // the registry by name below).
    let by = |n: &str| {
        let e = registry.find(n).unwrap_or_else(|| panic!("{n}"));
        (e.id, e.pen)
    };
    let names = [
        ("flowStartSeconds", 4),
        ("flowStartMilliseconds", 8),
        ("flowStartMicroseconds", 8),
        ("flowStartNanoseconds", 8),
        ("applicationName", VARLEN),
        ("interfaceName", 8),
        ("sourceMacAddress", 6),
        ("sourceIPv6Address", 16),
        ("samplingProbability", 8),
        ("dataRecordsReliability", 1),
        ("octetDeltaCount", 3),
    ];
    let fields: Vec<FieldSpec> = names
        .iter()
        .map(|(n, len)| {
            let (id, pen) = by(n);
            FieldSpec::new(id, pen, *len)
        })
        .collect();
    let t = Template::data(256, fields);
    let plan = Plan::compile(t.clone(), &registry);
    let mut mb = MessageBuilder::new(1, 65535);
    mb.set_export_time(1_700_000_000);
    mb.add_template(&t).expect("t");
    let ntp = |secs: i64, frac: u32| (((secs + 2_208_988_800) as u64) << 32) | frac as u64;
    let cases: Vec<Case> = vec![
        (0, 0, ntp(0, 0), ntp(0, 1), b"dns", b"eth0\0\0\0\0", 0.5, 1),
        (
            1_700_000_000,
            1_700_000_000_123,
            ntp(1_700_000_000, 0x8000_0000),
            ntp(1_700_000_000, 7),
            "caf\u{e9}".as_bytes(),
            b"a\"b\\c\0\0\0",
            f64::NAN,
            2,
        ),
        (
            u32::MAX,
            253_402_300_799_999,
            ntp(-100, 5),
            ntp(2_000_000_000, 0xffff_ffff),
            b"\x01ctl",
            b"\xff\xfe\0\0\0\0\0\0",
            f64::INFINITY,
            3,
        ),
        (
            1,
            300_000_000_000_000,
            ntp(1_700_000_000, 0x7ff),
            ntp(1_700_000_001, 0),
            b"",
            b"\0\0\0\0\0\0\0\0",
            -1.25e-300,
            0,
        ),
    ];
    for (secs, ms, us, ns, app, ifname, p, reliable) in cases {
        mb.add_record(
            &plan,
            &[
                FieldValue::DateTimeSeconds(secs),
                FieldValue::DateTimeMilliseconds(ms),
                FieldValue::DateTimeNtp(us),
                FieldValue::DateTimeNtp(ns),
                FieldValue::Bytes(app.to_vec()),
                FieldValue::Bytes(ifname.to_vec()),
                FieldValue::Mac([0, 0x1b, 0xa2, 0xff, 0x0f, 0x10]),
                FieldValue::Ipv6("::ffff:192.0.2.1".parse().expect("v6")),
                FieldValue::Float(p),
                FieldValue::Bool(reliable == 1),
                FieldValue::Unsigned(0xabcdef),
            ],
        )
        .expect("record");
    }
    mb.flush();
    let mut msgs = mb.take_ready();
    // Make the last record's boolean neither 1 nor 2 (an exporter's error, rendered as a
    // number): it is the byte before the record's last field, 0xabcdef.
    let mut m = msgs.remove(0);
    let at = m
        .windows(3)
        .rposition(|w| w == [0xab, 0xcd, 0xef])
        .expect("the last octetDeltaCount");
    m[at - 1] = 7;
    let mut d = Decoder::new(registry.clone(), DecoderOptions::default());
    let dm = d.decode(bytes::Bytes::from(m)).expect("decodes");
    let mut w = RecordWriter::new();
    assert_eq!(compare(&dm, &mut w, &registry, "edges"), 4);
    // Twice: the second time from the caches.
    assert_eq!(compare(&dm, &mut w, &registry, "edges again"), 4);
}
