use super::*;
use crate::wire::batch::Value;
use crate::wire::decoder::{Decoder, DecoderOptions};
use crate::wire::encode::{FieldValue, MessageBuilder};
use std::net::{Ipv4Addr, Ipv6Addr};

const SRC4: ElementId = (0, 8);
const PROTO: ElementId = (0, 4);

fn source(addr: [u8; 4]) -> Arc<Source> {
    Arc::new(Source {
        exporter: format!("{}:4739", Ipv4Addr::from(addr)),
        addr: addr.into(),
        tenant: "default".into(),
    })
}

/// (source, protocol, octets, packets, start ms, end ms)
type Flow4 = ([u8; 4], u8, u32, u64, u64, u64);

/// IPv4 flows: (source, protocol, octets, packets, start ms, end ms); IPv6 flows: (protocol,
/// octets, deltaFlowCount) with no times.
fn message(domain: u32, v4: &[Flow4], v6: &[(u8, u64, u64)]) -> Arc<DecodedMessage> {
    let reg = Registry::builtin();
    let t4 = Template::data(
        256,
        vec![
            FieldSpec::new(8, 0, 4),
            FieldSpec::new(4, 0, 1),
            FieldSpec::new(1, 0, 4), // octetDeltaCount, reduced to 4 bytes
            FieldSpec::new(2, 0, 8),
            FieldSpec::new(152, 0, 8),
            FieldSpec::new(153, 0, 8),
            FieldSpec::new(7, 0, 2), // sourceTransportPort: neither key nor counter
        ],
    );
    let t6 = Template::data(
        257,
        vec![
            FieldSpec::new(27, 0, 16),
            FieldSpec::new(4, 0, 1),
            FieldSpec::new(1, 0, 8),
            FieldSpec::new(3, 0, 8),
        ],
    );
    let (p4, p6) = (
        Plan::compile(t4.clone(), &reg),
        Plan::compile(t6.clone(), &reg),
    );
    let mut mb = MessageBuilder::new(domain, 65535);
    mb.add_template(&t4).expect("t");
    mb.add_template(&t6).expect("t");
    for &(src, proto, oct, pkt, s, e) in v4 {
        mb.add_record(
            &p4,
            &[
                FieldValue::Ipv4(src.into()),
                FieldValue::Unsigned(proto as u64),
                FieldValue::Unsigned(oct as u64),
                FieldValue::Unsigned(pkt),
                FieldValue::DateTimeMilliseconds(s),
                FieldValue::DateTimeMilliseconds(e),
                FieldValue::Unsigned(1234),
            ],
        )
        .expect("r");
    }
    for &(proto, oct, flows) in v6 {
        mb.add_record(
            &p6,
            &[
                FieldValue::Ipv6(Ipv6Addr::LOCALHOST),
                FieldValue::Unsigned(proto as u64),
                FieldValue::Unsigned(oct),
                FieldValue::Unsigned(flows),
            ],
        )
        .expect("r");
    }
    mb.flush();
    let mut d = Decoder::new(reg, DecoderOptions::default());
    Arc::new(
        d.decode(Bytes::from(mb.take_ready().remove(0)))
            .expect("decodes"),
    )
}

/// Every output record as (field name, value) pairs, rendered as text.
fn rows(out: &[Records]) -> Vec<Vec<(String, String)>> {
    let mut v = Vec::new();
    for recs in out {
        for (k, b) in recs.msg.batches.iter().enumerate() {
            for r in recs.rows(k) {
                v.push(
                    (0..b.plan.fields.len())
                        .map(|f| {
                            let val = match b.value(&recs.msg.buf, r, f) {
                                Value::Unsigned(x) => x.to_string(),
                                Value::Ipv4(a) => a.to_string(),
                                Value::Ipv6(a) => a.to_string(),
                                Value::DateTimeMilliseconds(x) => x.to_string(),
                                other => format!("{other:?}"),
                            };
                            (b.plan.fields[f].element.name.to_string(), val)
                        })
                        .collect(),
                );
            }
        }
    }
    v
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

const T0: u64 = 1_704_067_200_000; // 2024-01-01T00:00:00Z, a multiple of 60 s

#[test]
fn sums_counters_spans_times_and_counts_flows_by_hand() {
    let mut a = Aggregator::new(60, vec![SRC4, PROTO], 1 << 20, Registry::builtin());
    let m = message(
        7,
        &[
            ([10, 0, 0, 1], 6, 100, 2, T0 + 5_000, T0 + 9_000),
            ([10, 0, 0, 1], 6, 300, 3, T0 + 1_000, T0 + 7_000),
            ([10, 0, 0, 2], 6, 50, 1, T0 + 2_000, T0 + 2_500),
            ([10, 0, 0, 1], 17, 70, 1, T0 + 3_000, T0 + 3_000),
        ],
        &[(6, 1000, 4), (6, 24, 1)],
    );
    assert!(
        a.push(
            &Records::all(m.clone(), source([192, 0, 2, 1])),
            T0 + 10_000
        )
        .is_empty()
    );
    // A second message in the same window from the same exporter and domain.
    let m2 = message(7, &[([10, 0, 0, 1], 6, 1, 1, T0 + 500, T0 + 30_000)], &[]);
    assert!(
        a.push(&Records::all(m2, source([192, 0, 2, 1])), T0 + 20_000)
            .is_empty()
    );
    assert_eq!(a.stats().groups, 4);
    assert_eq!(a.due_ms(), Some(T0 + 60_000));
    assert!(a.flush_due(T0 + 59_999).is_empty());
    let out = a.flush_due(T0 + 60_000);
    assert_eq!(out.len(), 1, "one exporter and domain: one message");
    assert_eq!(out[0].domain, 7);
    assert_eq!(out[0].msg.header.export_time as u64, (T0 + 60_000) / 1000);
    let got = rows(&out);
    let want = vec![
        // IPv4 groups (both keys present), in key order.
        pairs(&[
            ("sourceIPv4Address", "10.0.0.1"),
            ("protocolIdentifier", "6"),
            ("octetDeltaCount", "401"),
            ("packetDeltaCount", "6"),
            ("flowStartMilliseconds", &(T0 + 500).to_string()),
            ("flowEndMilliseconds", &(T0 + 30_000).to_string()),
            ("deltaFlowCount", "3"),
        ]),
        pairs(&[
            ("sourceIPv4Address", "10.0.0.1"),
            ("protocolIdentifier", "17"),
            ("octetDeltaCount", "70"),
            ("packetDeltaCount", "1"),
            ("flowStartMilliseconds", &(T0 + 3_000).to_string()),
            ("flowEndMilliseconds", &(T0 + 3_000).to_string()),
            ("deltaFlowCount", "1"),
        ]),
        pairs(&[
            ("sourceIPv4Address", "10.0.0.2"),
            ("protocolIdentifier", "6"),
            ("octetDeltaCount", "50"),
            ("packetDeltaCount", "1"),
            ("flowStartMilliseconds", &(T0 + 2_000).to_string()),
            ("flowEndMilliseconds", &(T0 + 2_500).to_string()),
            ("deltaFlowCount", "1"),
        ]),
        // IPv6 flows lack sourceIPv4Address: keyed by protocol alone; their deltaFlowCount
        // (already aggregated upstream) adds up instead of counting 1 each.
        pairs(&[
            ("protocolIdentifier", "6"),
            ("octetDeltaCount", "1024"),
            ("deltaFlowCount", "5"),
        ]),
    ];
    let mut got_sorted = got.clone();
    got_sorted.sort();
    let mut want_sorted = want.clone();
    want_sorted.sort();
    assert_eq!(got_sorted, want_sorted);
    assert_eq!(a.stats().groups, 0);
    assert!(a.flush_all().is_empty());
}

#[test]
fn exporters_and_domains_stay_apart() {
    let mut a = Aggregator::new(10, vec![PROTO], 1 << 20, Registry::builtin());
    let f = [([10, 0, 0, 1], 6, 10, 1, T0, T0)];
    for (exp, dom) in [
        ([192, 0, 2, 1], 1),
        ([192, 0, 2, 1], 2),
        ([192, 0, 2, 2], 1),
        ([192, 0, 2, 1], 1),
    ] {
        a.push(&Records::all(message(dom, &f, &[]), source(exp)), T0);
    }
    let out = a.flush_all();
    assert_eq!(out.len(), 3);
    let flows: Vec<String> = rows(&out)
        .iter()
        .map(|r| {
            r.iter()
                .find(|(n, _)| n == "deltaFlowCount")
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(flows.iter().filter(|f| *f == "2").count(), 1);
    assert_eq!(flows.len(), 3);
}

#[test]
fn the_selection_is_respected_and_a_later_window_flushes_the_earlier() {
    let mut a = Aggregator::new(60, vec![SRC4], 1 << 20, Registry::builtin());
    let m = message(
        1,
        &[
            ([10, 0, 0, 1], 6, 10, 1, T0, T0),
            ([10, 0, 0, 2], 6, 10, 1, T0, T0),
        ],
        &[],
    );
    let mut recs = Records::all(m, source([192, 0, 2, 1]));
    let mut mask = crate::mediation::filter::Mask::new(2, false);
    mask.set(1, true);
    recs.selected[0] = Some(mask);
    assert!(a.push(&recs, T0 + 1).is_empty());
    let out = a.push(&recs, T0 + 61_000);
    assert_eq!(rows(&out).len(), 1);
    assert!(rows(&out)[0].contains(&("sourceIPv4Address".to_string(), "10.0.0.2".to_string())));
    assert_eq!(
        a.stats().groups,
        1,
        "the later window holds the second push"
    );
}

#[test]
fn a_full_table_flushes_early_and_counts_it() {
    // Room for about two groups.
    let mut a = Aggregator::new(
        60,
        vec![SRC4],
        2 * (GROUP_OVERHEAD + 6 + 32),
        Registry::builtin(),
    );
    let flows: Vec<_> = (0..10u8)
        .map(|k| ([10, 0, 0, k], 6, 10, 1, T0, T0))
        .collect();
    let out = a.push(
        &Records::all(message(1, &flows, &[]), source([192, 0, 2, 1])),
        T0,
    );
    let rest = a.flush_all();
    assert!(a.stats().early_flushes >= 3, "{:?}", a.stats());
    assert_eq!(rows(&out).len() + rows(&rest).len(), 10, "nothing lost");
}
