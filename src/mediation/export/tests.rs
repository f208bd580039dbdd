use super::*;
use crate::mediation::Source;
use crate::mediation::filter::Mask;
use crate::wire::decoder::{DecodedMessage, Decoder, DecoderOptions};
use crate::wire::encode::FieldValue;
use crate::wire::ndjson::{Origin, write_record};
use crate::wire::registry::Registry;
use crate::wire::template::VARLEN;
use bytes::Bytes;
use std::sync::Arc;

fn source() -> Arc<Source> {
    Arc::new(Source {
        exporter: "192.0.2.1:4739".into(),
        addr: [192, 0, 2, 1].into(),
        tenant: "default".into(),
    })
}

/// A message of `n` records of template `id` (sourceIPv4Address, applicationName variable
/// length, octetDeltaCount) in `domain`.
fn message(id: u16, domain: u32, n: u8) -> Arc<DecodedMessage> {
    let reg = Registry::builtin();
    let t = Template::data(
        id,
        vec![
            FieldSpec::new(8, 0, 4),
            FieldSpec::new(96, 0, VARLEN),
            FieldSpec::new(1, 0, 8),
        ],
    );
    let p = Plan::compile(t.clone(), &reg);
    let mut mb = MessageBuilder::new(domain, 65535);
    mb.add_template(&t).expect("t");
    for k in 0..n {
        mb.add_record(
            &p,
            &[
                FieldValue::Ipv4([10, 0, id as u8, k].into()),
                FieldValue::Bytes(format!("app{k}").into_bytes()),
                FieldValue::Unsigned(k as u64 * 10),
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

/// Each record's fields (NDJSON without the metadata that legitimately differs).
fn rendered(msgs: &[DecodedMessage], rows: Option<&[usize]>) -> Vec<String> {
    let reg = Registry::builtin();
    let mut out = Vec::new();
    for m in msgs {
        for b in &m.batches {
            for r in 0..b.len() {
                if rows.is_some_and(|rs| !rs.contains(&r)) {
                    continue;
                }
                let mut line = Vec::new();
                let o = Origin {
                    exporter: "x",
                    tenant: None,
                    domain: None,
                };
                write_record(&mut line, o, m, b, r, &reg);
                let v: serde_json::Value = serde_json::from_slice(&line).expect("json");
                let mut v = v.as_object().expect("object").clone();
                v.retain(|k, _| !k.starts_with('@') || k == "@domain");
                out.push(serde_json::to_string(&v).expect("json"));
            }
        }
    }
    out
}

fn decode_all(msgs: &[Vec<u8>]) -> Vec<DecodedMessage> {
    let mut d = Decoder::new(Registry::builtin(), DecoderOptions::default());
    msgs.iter()
        .map(|m| {
            d.decode(Bytes::from(m.clone()))
                .expect("our output decodes")
        })
        .collect()
}

#[test]
fn same_fields_share_one_template_and_records_come_out_as_they_went_in() {
    let (a, b) = (message(256, 7, 5), message(300, 7, 3));
    let mut x = Reexporter::new(65535);
    assert_eq!(
        x.add(&Records::all(a.clone(), source()), 1000),
        Skipped::default()
    );
    assert_eq!(
        x.add(&Records::all(b.clone(), source()), 1000),
        Skipped::default()
    );
    x.flush();
    let out = x.take_ready();
    assert_eq!(out.len(), 1);
    let decoded = decode_all(&out);
    // One output template for one shape: the two inputs' records even share one Data Set.
    let ids: Vec<(u16, usize)> = decoded[0]
        .batches
        .iter()
        .map(|b| (b.plan.template.id, b.len()))
        .collect();
    assert_eq!(ids, [(256, 8)]);
    assert_eq!(decoded[0].header.observation_domain, 7);
    assert_eq!(decoded[0].header.export_time, 1000);
    let mut want = rendered(&[(*a).clone()], None);
    want.extend(rendered(&[(*b).clone()], None));
    assert_eq!(rendered(&decoded, None), want);
}

#[test]
fn sequence_numbers_count_records_per_session_and_templates_come_again() {
    let mut x = Reexporter::new(200); // a few records per message
    x.add(&Records::all(message(256, 1, 20), source()), 5);
    x.flush();
    let first = x.take_ready();
    assert!(first.len() > 2, "split into messages of at most 200 bytes");
    let mut expect_seq = 0u32;
    for m in &first {
        assert!(m.len() <= 200);
        let seq = u32::from_be_bytes([m[8], m[9], m[10], m[11]]);
        assert_eq!(seq, expect_seq);
        expect_seq += count_records(&first, m);
    }
    assert_eq!(expect_seq, 20);
    // A new Transport Session: sequence from 0, the template before the first record.
    x.new_session();
    x.add(&Records::all(message(256, 1, 2), source()), 6);
    x.flush();
    let again = x.take_ready();
    assert_eq!(
        u32::from_be_bytes([again[0][8], again[0][9], again[0][10], again[0][11]]),
        0
    );
    let alone = decode_all(&again[..1]);
    assert_eq!(alone[0].batches.iter().map(|b| b.len()).sum::<usize>(), 2);
}

/// Data records in message `m`, decoded in the context of all of `msgs` (for templates).
fn count_records(msgs: &[Vec<u8>], m: &[u8]) -> u32 {
    let mut d = Decoder::new(Registry::builtin(), DecoderOptions::default());
    for x in msgs {
        let dm = d.decode(Bytes::from(x.clone())).expect("decodes");
        if x.as_slice() == m {
            return dm.data_records() as u32;
        }
    }
    0
}

#[test]
fn the_selection_is_respected_and_oversized_records_are_skipped() {
    let a = message(256, 2, 6);
    let mut recs = Records::all(a.clone(), source());
    let mut mask = Mask::new(6, false);
    mask.set(1, true);
    mask.set(4, true);
    recs.selected[0] = Some(mask);
    let mut x = Reexporter::new(65535);
    x.add(&recs, 1);
    x.flush();
    let decoded = decode_all(&x.take_ready());
    assert_eq!(
        rendered(&decoded, None),
        rendered(&[(*a).clone()], Some(&[1, 4]))
    );
    // Messages too small for one record: every record skipped, none lost silently.
    let mut tiny = Reexporter::new(16 + 4 + 10);
    let s = tiny.add(&Records::all(message(256, 2, 3), source()), 1);
    assert_eq!(s.over_bounds, 3);
}

#[test]
fn a_refresh_sends_every_template_again() {
    let mut x = Reexporter::new(65535);
    x.add(&Records::all(message(256, 3, 1), source()), 1);
    x.flush();
    let _ = x.take_ready();
    x.refresh_templates().expect("fits");
    x.flush();
    let out = x.take_ready();
    assert_eq!(out.len(), 1);
    let d = decode_all(&out);
    assert_eq!(d[0].events.len(), 1, "the template again, with no record");
}
