//! Property: random templates and records, encoded by the Exporting Process side of the codec
//! (split into messages of a random maximum size), decode to the same typed values.

use bytes::Bytes;
use ipfixsvc::wire::{
    Decoder, DecoderOptions, FieldSpec, FieldValue, MessageBuilder, Plan, Registry, Template,
    VARLEN, Value,
};
use proptest::prelude::*;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

/// A field kind to draw: an element of a known type, with the lengths it may take.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Unsigned64,
    Unsigned16,
    Signed32,
    Float64,
    Boolean,
    Mac,
    Ipv4,
    Ipv6,
    Seconds,
    Millis,
    Micros,
    Nanos,
    Text,
    Unknown,
}

fn field(kind: Kind) -> impl Strategy<Value = FieldSpec> {
    let fixed = |id: u16, lens: Vec<u16>| {
        proptest::sample::select(lens).prop_map(move |l| FieldSpec::new(id, 0, l))
    };
    match kind {
        Kind::Unsigned64 => fixed(1, vec![1, 2, 3, 4, 8]).boxed(),
        Kind::Unsigned16 => fixed(7, vec![1, 2]).boxed(),
        Kind::Signed32 => fixed(434, vec![1, 2, 4]).boxed(),
        Kind::Float64 => fixed(320, vec![4, 8]).boxed(),
        Kind::Boolean => fixed(276, vec![1]).boxed(),
        Kind::Mac => fixed(56, vec![6]).boxed(),
        Kind::Ipv4 => fixed(8, vec![4]).boxed(),
        Kind::Ipv6 => fixed(27, vec![16]).boxed(),
        Kind::Seconds => fixed(150, vec![4]).boxed(),
        Kind::Millis => fixed(152, vec![8]).boxed(),
        Kind::Micros => fixed(154, vec![8]).boxed(),
        Kind::Nanos => fixed(156, vec![8]).boxed(),
        Kind::Text => fixed(96, vec![VARLEN, VARLEN, 1, 7]).boxed(),
        Kind::Unknown => (1u16..100, prop_oneof![Just(VARLEN), 1u16..20])
            .prop_map(|(id, l)| FieldSpec::new(id, 9999, l))
            .boxed(),
    }
}

fn value(kind: Kind, spec: FieldSpec) -> BoxedStrategy<FieldValue> {
    let len = spec.length;
    let bytes = move |max: usize| {
        if len == VARLEN {
            // Include empties and the 3-byte length form (>= 255).
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..20),
                proptest::collection::vec(any::<u8>(), 255..400)
            ]
            .prop_map(FieldValue::Bytes)
            .boxed()
        } else {
            proptest::collection::vec(any::<u8>(), len as usize..=len as usize)
                .prop_map(move |mut v| {
                    v.truncate(max.max(len as usize));
                    FieldValue::Bytes(v)
                })
                .boxed()
        }
    };
    match kind {
        Kind::Unsigned64 | Kind::Unsigned16 => {
            let max = if len >= 8 {
                u64::MAX
            } else {
                (1u64 << (8 * len)) - 1
            };
            (0..=max).prop_map(FieldValue::Unsigned).boxed()
        }
        Kind::Signed32 => {
            let bits = 8 * len as u32;
            let (lo, hi) = (-(1i64 << (bits - 1)), (1i64 << (bits - 1)) - 1);
            (lo..=hi).prop_map(FieldValue::Signed).boxed()
        }
        Kind::Float64 => any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(FieldValue::Float)
            .boxed(),
        Kind::Boolean => any::<bool>().prop_map(FieldValue::Bool).boxed(),
        Kind::Mac => any::<[u8; 6]>().prop_map(FieldValue::Mac).boxed(),
        Kind::Ipv4 => any::<[u8; 4]>()
            .prop_map(|a| FieldValue::Ipv4(Ipv4Addr::from(a)))
            .boxed(),
        Kind::Ipv6 => any::<[u8; 16]>()
            .prop_map(|a| FieldValue::Ipv6(Ipv6Addr::from(a)))
            .boxed(),
        Kind::Seconds => any::<u32>().prop_map(FieldValue::DateTimeSeconds).boxed(),
        Kind::Millis => any::<u64>()
            .prop_map(FieldValue::DateTimeMilliseconds)
            .boxed(),
        Kind::Micros | Kind::Nanos => any::<u64>().prop_map(FieldValue::DateTimeNtp).boxed(),
        Kind::Text | Kind::Unknown => bytes(usize::MAX),
    }
}

fn kind() -> impl Strategy<Value = Kind> {
    proptest::sample::select(vec![
        Kind::Unsigned64,
        Kind::Unsigned16,
        Kind::Signed32,
        Kind::Float64,
        Kind::Boolean,
        Kind::Mac,
        Kind::Ipv4,
        Kind::Ipv6,
        Kind::Seconds,
        Kind::Millis,
        Kind::Micros,
        Kind::Nanos,
        Kind::Text,
        Kind::Unknown,
    ])
}

/// A template (id 256..) and 1..40 records for it.
fn template_and_records() -> impl Strategy<Value = (Template, Vec<Vec<FieldValue>>)> {
    (256u16..1000, proptest::collection::vec(kind(), 1..12))
        .prop_flat_map(|(id, kinds)| {
            let specs: Vec<_> = kinds.iter().map(|k| field(*k)).collect();
            (Just(id), Just(kinds), specs)
        })
        .prop_flat_map(|(id, kinds, specs)| {
            let row: Vec<_> = kinds
                .iter()
                .zip(&specs)
                .map(|(k, s)| value(*k, *s))
                .collect();
            (
                Just(Template::data(id, specs)),
                proptest::collection::vec(row, 1..40),
            )
        })
}

fn expected(v: &FieldValue, spec: &FieldSpec) -> String {
    match v {
        FieldValue::Float(f) if spec.length == 4 => format!("{:?}", Value::Float(*f as f32 as f64)),
        FieldValue::Unsigned(x) => format!("{:?}", Value::Unsigned(*x)),
        FieldValue::Signed(x) => format!("{:?}", Value::Signed(*x)),
        FieldValue::Float(x) => format!("{:?}", Value::Float(*x)),
        FieldValue::Bool(b) => format!("{:?}", Value::Bool(*b)),
        FieldValue::Mac(m) => format!("{:?}", Value::Mac(*m)),
        FieldValue::Ipv4(a) => format!("{:?}", Value::Ipv4(*a)),
        FieldValue::Ipv6(a) => format!("{:?}", Value::Ipv6(*a)),
        FieldValue::DateTimeSeconds(s) => format!("{:?}", Value::DateTimeSeconds(*s)),
        FieldValue::DateTimeMilliseconds(s) => format!("{:?}", Value::DateTimeMilliseconds(*s)),
        FieldValue::DateTimeNtp(t) if spec.id == 154 => {
            format!("{:?}", Value::DateTimeMicroseconds(*t))
        }
        FieldValue::DateTimeNtp(t) => format!("{:?}", Value::DateTimeNanoseconds(*t)),
        FieldValue::Bytes(b) if spec.id == 96 && spec.pen == 0 => format!("{:?}", Value::String(b)),
        FieldValue::Bytes(b) => format!("{:?}", Value::Bytes(b)),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn encode_then_decode_gives_the_same_values(
        (template, records) in template_and_records(),
        max_len in 600usize..65535,
        domain in any::<u32>(),
    ) {
        let registry = Registry::builtin();
        let plan = Arc::new(Plan::compile(template.clone(), &registry));
        let mut b = MessageBuilder::new(domain, max_len);
        b.add_template(&template).expect("template fits");
        let mut sent = 0;
        for r in &records {
            match b.add_record(&plan, r) {
                Ok(()) => sent += 1,
                // A record larger than the message size is refused, never split or truncated.
                Err(e) => prop_assert!(e.to_string().contains("cannot fit"), "{e}"),
            }
        }
        b.flush();
        let msgs = b.take_ready();
        let mut d = Decoder::new(registry, DecoderOptions::default());
        let mut got = Vec::new();
        let mut expect_seq = 0u32;
        for m in msgs {
            prop_assert!(m.len() <= max_len);
            let decoded = d.decode(Bytes::from(m)).expect("our own message decodes");
            prop_assert_eq!(decoded.header.sequence, expect_seq);
            prop_assert_eq!(decoded.header.observation_domain, domain);
            expect_seq = expect_seq.wrapping_add(decoded.data_records() as u32);
            for batch in &decoded.batches {
                for r in 0..batch.len() {
                    let row: Vec<String> = (0..batch.plan.fields.len())
                        .map(|f| format!("{:?}", batch.value(&decoded.buf, r, f)))
                        .collect();
                    got.push(row);
                }
            }
        }
        prop_assert_eq!(got.len(), sent);
        let want: Vec<Vec<String>> = records
            .iter()
            // What the builder accepts: the record plus a message header (16) and a set header (4).
            .filter(|r| {
                let mut tmp = Vec::new();
                r.iter().enumerate().all(|(f, v)| ipfixsvc::wire::encode::encode_field(&mut tmp, &plan, f, v).is_ok())
                    && tmp.len() + 20 <= max_len
            })
            .map(|r| r.iter().zip(&template.fields).map(|(v, s)| expected(v, s)).collect())
            .collect();
        prop_assert_eq!(got, want);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Valid messages with bytes overwritten decode or fail with an error value, and every record
    /// that does decode renders as JSON: never a panic.
    #[test]
    fn corrupted_messages_fail_cleanly(
        (template, records) in template_and_records(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let registry = Registry::builtin();
        let plan = Arc::new(Plan::compile(template.clone(), &registry));
        let mut b = MessageBuilder::new(1, 65535);
        b.add_template(&template).expect("template fits");
        for r in &records {
            let _ = b.add_record(&plan, r);
        }
        b.flush();
        let mut d = Decoder::new(registry.clone(), DecoderOptions::default());
        for mut m in b.take_ready() {
            for (at, byte) in &edits {
                let i = at.index(m.len());
                m[i] = *byte;
            }
            if let Ok(decoded) = d.decode(Bytes::from(m)) {
                let mut line = Vec::new();
                for batch in &decoded.batches {
                    for r in 0..batch.len() {
                        line.clear();
                        ipfixsvc::wire::ndjson::write_record(
                            &mut line,
                            ipfixsvc::wire::ndjson::Origin {
                    exporter: "test",
                    tenant: None, domain: None,
                },
                            &decoded,
                            batch,
                            r,
                            &registry,
                        );
                        prop_assert!(serde_json::from_slice::<serde_json::Value>(&line).is_ok());
                    }
                }
            }
        }
    }
}
