//! Template management (RFC 7011 section 8) and structured data (RFC 6313) through the public
//! API: messages built with the encoder, decoded, rendered as NDJSON.

use bytes::Bytes;
use ipfixsvc::wire::ndjson::{Origin, write_record};
use ipfixsvc::wire::{
    DecodedMessage, Decoder, DecoderOptions, FieldSpec, FieldValue, MessageBuilder, Plan, Registry,
    Template, TemplateKind, VARLEN,
};
use std::sync::Arc;

fn decoder(withdrawals: bool) -> Decoder {
    Decoder::new(
        Registry::builtin(),
        DecoderOptions {
            honour_withdrawals: withdrawals,
            ..DecoderOptions::default()
        },
    )
}

fn one_message(build: impl FnOnce(&mut MessageBuilder)) -> Bytes {
    let mut b = MessageBuilder::new(7, 65535);
    build(&mut b);
    b.flush();
    let mut msgs = b.take_ready();
    assert_eq!(msgs.len(), 1);
    Bytes::from(msgs.remove(0))
}

fn json_lines(d: &DecodedMessage) -> Vec<serde_json::Value> {
    let reg = Registry::builtin();
    let mut out = Vec::new();
    for b in &d.batches {
        for r in 0..b.len() {
            let mut line = Vec::new();
            write_record(
                &mut line,
                Origin {
                    exporter: "test",
                    tenant: None,
                    domain: None,
                },
                d,
                b,
                r,
                &reg,
            );
            out.push(serde_json::from_slice(&line).expect("valid JSON"));
        }
    }
    out
}

fn ports_template(id: u16) -> Template {
    Template::data(id, vec![FieldSpec::new(7, 0, 2), FieldSpec::new(11, 0, 2)])
}

fn ports_record(id: u16) -> Bytes {
    let plan = Plan::compile(ports_template(id), &Registry::builtin());
    one_message(|b| {
        b.add_record(
            &plan,
            &[FieldValue::Unsigned(1234), FieldValue::Unsigned(80)],
        )
        .expect("encodes")
    })
}

#[test]
fn withdrawal_stops_decoding_on_tcp_but_not_on_udp() {
    for (tcp, decoded_after) in [(true, 0), (false, 1)] {
        let mut d = decoder(tcp);
        let t = one_message(|b| b.add_template(&ports_template(300)).expect("fits"));
        d.decode(t).expect("template");
        let data = ports_record(300);
        assert_eq!(d.decode(data.clone()).expect("data").data_records(), 1);
        let w = one_message(|b| b.add_withdrawal(TemplateKind::Data, 300).expect("fits"));
        d.decode(w).expect("withdrawal");
        let after = d.decode(data).expect("data after withdrawal");
        assert_eq!(after.data_records(), decoded_after, "tcp={tcp}");
        assert_eq!(after.missing.len(), 1 - decoded_after);
    }
}

#[test]
fn withdraw_all_removes_only_its_kind() {
    let mut d = decoder(true);
    let opts = Template::options(
        301,
        1,
        vec![FieldSpec::new(149, 0, 4), FieldSpec::new(34, 0, 4)],
    );
    d.decode(one_message(|b| {
        b.add_template(&ports_template(300)).expect("fits");
        b.add_template(&opts).expect("fits");
    }))
    .expect("templates");
    assert_eq!(d.template_count(), 2);
    d.decode(one_message(|b| {
        b.add_withdrawal(TemplateKind::Data, 2).expect("fits")
    }))
    .expect("withdraw all data templates");
    assert_eq!(d.template_count(), 1);
    let left = d.templates(7).expect("domain 7");
    assert!(left.contains_key(&301) && !left.contains_key(&300));
}

#[test]
fn redefinition_replaces_and_domains_are_separate() {
    let mut d = decoder(true);
    d.decode(one_message(|b| {
        b.add_template(&ports_template(300)).expect("fits")
    }))
    .expect("t1");
    let wider = Template::data(300, vec![FieldSpec::new(8, 0, 4)]);
    d.decode(one_message(|b| b.add_template(&wider).expect("fits")))
        .expect("t2");
    assert_eq!(
        d.templates(7)
            .and_then(|m| m.get(&300))
            .map(|p| p.template.clone()),
        Some(wider)
    );
    assert!(d.templates(8).is_none());
}

#[test]
fn template_limit_is_an_error_not_growth() {
    let mut d = Decoder::new(
        Registry::builtin(),
        DecoderOptions {
            max_templates: 3,
            ..DecoderOptions::default()
        },
    );
    let msg = one_message(|b| {
        for id in 300..304 {
            b.add_template(&ports_template(id)).expect("fits");
        }
    });
    let err = d.decode(msg).expect_err("fourth template refused");
    assert!(err.to_string().contains("limit"), "{err}");
    assert_eq!(d.template_count(), 3);
}

/// basicList (RFC 6313 section 4.5.1) of three interface ids, and an empty one.
fn basic_list(values: &[u32]) -> Vec<u8> {
    let mut v = vec![3u8]; // allOf
    v.extend_from_slice(&10u16.to_be_bytes()); // ingressInterface
    v.extend_from_slice(&4u16.to_be_bytes());
    for x in values {
        v.extend_from_slice(&x.to_be_bytes());
    }
    v
}

#[test]
fn basic_list_decodes_to_values() {
    let t = Template::data(
        400,
        vec![FieldSpec::new(4, 0, 1), FieldSpec::new(291, 0, VARLEN)],
    );
    let plan = Plan::compile(t.clone(), &Registry::builtin());
    let mut d = decoder(true);
    let msg = one_message(|b| {
        b.add_template(&t).expect("fits");
        b.add_record(
            &plan,
            &[
                FieldValue::Unsigned(6),
                FieldValue::Bytes(basic_list(&[1, 2, 3])),
            ],
        )
        .expect("encodes");
        b.add_record(
            &plan,
            &[FieldValue::Unsigned(17), FieldValue::Bytes(basic_list(&[]))],
        )
        .expect("encodes");
    });
    let lines = json_lines(&d.decode(msg).expect("decodes"));
    assert_eq!(
        lines[0]["basicList"],
        serde_json::json!({"semantic": "allOf", "element": "ingressInterface", "values": [1, 2, 3]})
    );
    assert_eq!(lines[1]["basicList"]["values"], serde_json::json!([]));
}

#[test]
fn sub_template_lists_decode_recursively_and_stop_at_the_depth_bound() {
    // Template 500: an address and a subTemplateList; the list holds records of 501 (a port).
    let inner = Template::data(501, vec![FieldSpec::new(7, 0, 2)]);
    let outer = Template::data(
        500,
        vec![FieldSpec::new(8, 0, 4), FieldSpec::new(292, 0, VARLEN)],
    );
    let plan = Plan::compile(outer.clone(), &Registry::builtin());
    let mut stl = vec![4u8]; // ordered
    stl.extend_from_slice(&501u16.to_be_bytes());
    stl.extend_from_slice(&[0, 53, 1, 187]);
    // A subTemplateMultiList with one entry of template 501 and one of an unknown template.
    let mut stml = vec![2u8];
    stml.extend_from_slice(&501u16.to_be_bytes());
    stml.extend_from_slice(&6u16.to_be_bytes());
    stml.extend_from_slice(&[0, 22]);
    stml.extend_from_slice(&999u16.to_be_bytes());
    stml.extend_from_slice(&5u16.to_be_bytes());
    stml.push(0xab);
    let multi = Template::data(502, vec![FieldSpec::new(293, 0, VARLEN)]);
    let multi_plan = Plan::compile(multi.clone(), &Registry::builtin());
    let mut d = decoder(true);
    let msg = one_message(|b| {
        b.add_template(&inner).expect("fits");
        b.add_template(&outer).expect("fits");
        b.add_template(&multi).expect("fits");
        b.add_record(
            &plan,
            &[
                FieldValue::Ipv4([192, 0, 2, 1].into()),
                FieldValue::Bytes(stl),
            ],
        )
        .expect("encodes");
        b.add_record(&multi_plan, &[FieldValue::Bytes(stml)])
            .expect("encodes");
    });
    let lines = json_lines(&d.decode(msg).expect("decodes"));
    assert_eq!(
        lines[0]["subTemplateList"],
        serde_json::json!({"semantic": "ordered", "templateId": 501,
            "records": [{"sourceTransportPort": 53}, {"sourceTransportPort": 443}]})
    );
    assert_eq!(
        lines[1]["subTemplateMultiList"]["lists"],
        serde_json::json!([
            {"semantic": "oneOrMoreOf", "templateId": 501, "records": [{"sourceTransportPort": 22}]},
            {"semantic": "oneOrMoreOf", "templateId": 999, "undecoded": "ab"}
        ])
    );

    // A template whose list refers to itself, nested 20 deep: rendering stops at the bound.
    let selfref = Template::data(600, vec![FieldSpec::new(292, 0, VARLEN)]);
    let self_plan = Arc::new(Plan::compile(selfref.clone(), &Registry::builtin()));
    let mut v: Vec<u8> = vec![3, 2, 88, 0]; // innermost: a list of template 600 holding an empty varlen
    for _ in 0..20 {
        let mut outer = vec![3u8];
        outer.extend_from_slice(&600u16.to_be_bytes());
        if v.len() < 255 {
            outer.push(v.len() as u8);
        } else {
            outer.push(255);
            outer.extend_from_slice(&(v.len() as u16).to_be_bytes());
        }
        outer.extend_from_slice(&v);
        v = outer;
    }
    let msg = one_message(|b| {
        b.add_template(&selfref).expect("fits");
        b.add_record(&self_plan, &[FieldValue::Bytes(v)])
            .expect("encodes");
    });
    let lines = json_lines(&d.decode(msg).expect("decodes"));
    let mut depth = 0;
    let mut node = &lines[0]["subTemplateList"];
    while let Some(next) = node
        .get("records")
        .and_then(|r| r.get(0))
        .and_then(|r| r.get("subTemplateList"))
    {
        depth += 1;
        node = next;
    }
    assert!((6..=8).contains(&depth), "depth {depth}");
    assert!(
        node.is_string(),
        "beyond the bound the list stays hex: {node}"
    );
}

/// RFC 5655: an IPFIX file is messages back to back; what `FileWriter` writes, `MessageReader`
/// reads back message for message.
#[test]
fn ipfix_file_written_then_read() {
    use ipfixsvc::wire::{FileWriter, MessageReader};
    let t = ports_template(300);
    let plan = Plan::compile(t.clone(), &Registry::builtin());
    let mut w = FileWriter::new(Vec::new(), 42);
    w.builder.add_template(&t).expect("fits");
    for i in 0..20_000u64 {
        w.builder
            .add_record(
                &plan,
                &[FieldValue::Unsigned(i % 65536), FieldValue::Unsigned(443)],
            )
            .expect("encodes");
        if i % 1000 == 0 {
            w.drain().expect("write");
        }
    }
    let bytes = w.finish().expect("finish");
    let mut d = decoder(true);
    let mut records = 0;
    let mut messages = 0;
    for m in MessageReader::new(&bytes[..], 65535) {
        let (_, m) = m.expect("frames");
        assert!(m.len() <= 65535);
        let decoded = d.decode(m).expect("decodes");
        assert_eq!(decoded.header.observation_domain, 42);
        assert_eq!(
            decoded.header.sequence as usize, records,
            "sequence counts records before"
        );
        records += decoded.data_records();
        messages += 1;
    }
    assert_eq!(records, 20_000);
    assert!(
        messages > 1,
        "80,000 bytes of records need more than one 64 KiB message"
    );
}
