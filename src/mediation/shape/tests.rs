use super::*;
use crate::mediation::filter::Mask;
use crate::wire::batch::Value;
use crate::wire::decoder::{Decoder, DecoderOptions};
use crate::wire::encode::{FieldValue, MessageBuilder};
use crate::wire::template::{FieldSpec, VARLEN};

const SRC4: ElementId = (0, 8);
const DST4: ElementId = (0, 12);
const SRC6: ElementId = (0, 27);
const PORT: ElementId = (0, 11);
const APP: ElementId = (0, 96);
const OCTETS: ElementId = (0, 1);

fn flows() -> Template {
    Template::data(
        256,
        [SRC4, DST4, SRC6, PORT, APP, OCTETS]
            .iter()
            .zip([4, 4, 16, 2, VARLEN, 8])
            .map(|(&(pen, id), len)| FieldSpec::new(id, pen, len))
            .collect(),
    )
}

/// exporterIPv4Address (scope), samplingInterval.
fn options() -> Template {
    Template::options(
        257,
        1,
        vec![FieldSpec::new(130, 0, 4), FieldSpec::new(34, 0, 4)],
    )
}

/// One message: 5 flows (record k from 10.0.0.k to 192.0.2.k, application "appK" with k
/// letters, k * 100 octets), then one options record.
fn message() -> Arc<DecodedMessage> {
    let reg = Registry::builtin();
    let (ft, ot) = (flows(), options());
    let (fp, op) = (
        Plan::compile(ft.clone(), &reg),
        Plan::compile(ot.clone(), &reg),
    );
    let mut mb = MessageBuilder::new(7, 65535);
    mb.add_template(&ft).expect("template");
    mb.add_template(&ot).expect("template");
    for k in 0..5u8 {
        mb.add_record(
            &fp,
            &[
                FieldValue::Ipv4([10, 0, 0, k].into()),
                FieldValue::Ipv4([192, 0, 2, k].into()),
                FieldValue::Ipv6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, k as u16)),
                FieldValue::Unsigned(443),
                FieldValue::Bytes("x".repeat(k as usize).into_bytes()),
                FieldValue::Unsigned(k as u64 * 100),
            ],
        )
        .expect("record");
    }
    mb.add_record(
        &op,
        &[
            FieldValue::Ipv4([192, 0, 2, 99].into()),
            FieldValue::Unsigned(1000),
        ],
    )
    .expect("record");
    mb.flush();
    let mut ready = mb.take_ready();
    assert_eq!(ready.len(), 1);
    let mut d = Decoder::new(reg, DecoderOptions::default());
    let m = d.decode(Bytes::from(ready.remove(0))).expect("decodes");
    assert_eq!(m.batches.len(), 2);
    Arc::new(m)
}

fn source() -> Arc<crate::mediation::Source> {
    Arc::new(crate::mediation::Source {
        exporter: "192.0.2.1:4739".into(),
        addr: [192, 0, 2, 1].into(),
        tenant: "default".into(),
    })
}

fn names(recs: &Records, k: usize) -> Vec<String> {
    let b = &recs.msg.batches[k];
    b.plan
        .fields
        .iter()
        .map(|f| f.element.name.to_string())
        .collect()
}

fn shaper(steps: Vec<FieldStep>) -> Shaper {
    Shaper::new(steps, Registry::builtin())
}

#[test]
fn nothing_to_change_passes_the_same_message_on() {
    let m = message();
    let mut s = shaper(vec![
        FieldStep::Drop(vec![(0, 82)]), // interfaceName: in neither template
        FieldStep::Anonymise {
            method: Method::Truncate { v4: 24, v6: 48 },
            fields: vec![(0, 225)], // postNATSourceIPv4Address: absent
        },
    ]);
    let out = s.apply(Records::all(m.clone(), source())).expect("records");
    assert!(Arc::ptr_eq(&out.msg, &m));
}

#[test]
fn keep_and_drop_copy_only_what_is_left_and_respect_the_selection() {
    let m = message();
    let mut sel = Records::all(m, source());
    let mut mask = Mask::new(5, false);
    mask.set(1, true);
    mask.set(4, true);
    sel.selected[0] = Some(mask);
    let mut s = shaper(vec![
        FieldStep::Keep(vec![SRC4, APP, OCTETS, (0, 130)]),
        FieldStep::Drop(vec![OCTETS]),
    ]);
    let out = s.apply(sel).expect("records");
    assert_eq!(names(&out, 0), ["sourceIPv4Address", "applicationName"]);
    assert_eq!(names(&out, 1), ["exporterIPv4Address"]);
    assert_eq!(out.count(), 3);
    let (b, buf) = (&out.msg.batches[0], &out.msg.buf[..]);
    assert_eq!(b.len(), 2);
    assert_eq!(b.value(buf, 0, 0), Value::Ipv4([10, 0, 0, 1].into()));
    assert_eq!(b.value(buf, 1, 1), Value::String(b"xxxx"));
    assert_eq!(b.plan.template.id, 256);
    // The options template kept its scope field, so it is still an options template.
    let o = &out.msg.batches[1].plan.template;
    assert_eq!((o.kind, o.scope_field_count), (TemplateKind::Options, 1));
    assert_eq!(
        out.msg.batches[1].value(buf, 0, 0),
        Value::Ipv4([192, 0, 2, 99].into())
    );
}

#[test]
fn a_record_left_without_fields_is_not_sent() {
    let m = message();
    let mut s = shaper(vec![FieldStep::Keep(vec![(0, 130)])]);
    let out = s
        .apply(Records::all(m.clone(), source()))
        .expect("the options record is left");
    assert_eq!(out.msg.batches.len(), 1);
    assert_eq!(out.count(), 1);
    let mut s = shaper(vec![FieldStep::Keep(vec![(0, 82)])]);
    assert!(s.apply(Records::all(m.clone(), source())).is_none());
    // Options records without their scope are data records.
    let mut s = shaper(vec![FieldStep::Drop(vec![(0, 130)])]);
    let out = s.apply(Records::all(m, source())).expect("records");
    let o = &out.msg.batches[1].plan.template;
    assert_eq!((o.kind, o.scope_field_count), (TemplateKind::Data, 0));
}

#[test]
fn anonymise_truncates_and_cryptopans_named_address_fields_only() {
    let m = message();
    let cp = Arc::new(CryptoPan::new(&[7u8; 32]));
    let mut s = shaper(vec![
        FieldStep::Anonymise {
            method: Method::Truncate { v4: 8, v6: 32 },
            fields: vec![SRC4, SRC6],
        },
        FieldStep::Anonymise {
            method: Method::CryptoPan(cp.clone()),
            fields: vec![SRC4, DST4],
        },
    ]);
    let out = s.apply(Records::all(m.clone(), source())).expect("records");
    let (b, buf) = (&out.msg.batches[0], &out.msg.buf[..]);
    assert_eq!(b.len(), 5);
    for r in 0..5u8 {
        let r_ = r as usize;
        // Truncated to 10.0.0.0/8 first, then Crypto-PAn: in step order.
        let want_src = cp.ipv4(Ipv4Addr::new(10, 0, 0, 0));
        assert_eq!(b.value(buf, r_, 0), Value::Ipv4(want_src));
        assert_eq!(
            b.value(buf, r_, 1),
            Value::Ipv4(cp.ipv4(Ipv4Addr::new(192, 0, 2, r)))
        );
        assert_eq!(
            b.value(buf, r_, 2),
            Value::Ipv6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0))
        );
        // Untouched fields are copied as they were, the variable-length one included.
        assert_eq!(b.value(buf, r_, 3), Value::Unsigned(443));
        let app = "x".repeat(r_);
        assert_eq!(b.value(buf, r_, 4), Value::String(app.as_bytes()));
        assert_eq!(b.value(buf, r_, 5), Value::Unsigned(r as u64 * 100));
    }
    // The options record's exporterIPv4Address was not named: unchanged, no copy needed for
    // its template, but it shares the new message.
    assert_eq!(
        out.msg.batches[1].value(buf, 0, 0),
        Value::Ipv4([192, 0, 2, 99].into())
    );
    // The source message is untouched.
    assert_eq!(
        m.batches[0].value(&m.buf, 3, 0),
        Value::Ipv4([10, 0, 0, 3].into())
    );
}

#[test]
fn truncation_edges() {
    let mut a = Anonymiser {
        method: Method::Truncate { v4: 0, v6: 128 },
        v4: FxHashMap::default(),
        v6: FxHashMap::default(),
    };
    assert_eq!(a.v4([1, 2, 3, 4]), [0, 0, 0, 0]);
    assert_eq!(a.v6([0xff; 16]), [0xff; 16]);
    a.method = Method::Truncate { v4: 32, v6: 0 };
    assert_eq!(a.v4([1, 2, 3, 4]), [1, 2, 3, 4]);
    assert_eq!(a.v6([0xff; 16]), [0; 16]);
    a.method = Method::Truncate { v4: 20, v6: 1 };
    assert_eq!(a.v4([255, 255, 255, 255]), [255, 255, 240, 0]);
    assert_eq!(a.v6([0xff; 16])[0], 0x80);
}
