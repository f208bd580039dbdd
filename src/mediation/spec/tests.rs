use super::*;
use crate::wire::batch::Value;
use crate::wire::decoder::{Decoder, DecoderOptions};
use crate::wire::encode::{FieldValue, MessageBuilder};
use crate::wire::template::{FieldSpec, Template};
use std::net::Ipv4Addr;

const KEY: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

fn issue_example() -> String {
    format!(
        r#"
name = "soc-web"
tenants = ["default"]
filter = "protocolIdentifier == 6 and destinationTransportPort in (80, 443) and not sourceIPv4Address in 10.0.0.0/8"
transforms = [
  {{ anonymise = {{ method = "cryptopan", key = "{KEY}", fields = ["sourceIPv4Address", "destinationIPv4Address", "sourceIPv6Address", "destinationIPv6Address"] }} }},
  {{ keep = ["sourceIPv4Address", "destinationIPv4Address", "sourceTransportPort", "destinationTransportPort", "protocolIdentifier", "octetDeltaCount", "packetDeltaCount", "flowStartMilliseconds", "flowEndMilliseconds"] }},
]
sink = {{ kind = "ndjson" }}
on_full = "block"
"#
    )
}

fn spec(toml_text: &str) -> StreamSpec {
    toml::from_str(toml_text).unwrap_or_else(|e| panic!("{e}"))
}

fn refused(s: &StreamSpec) -> String {
    Pipeline::build(s, &Registry::builtin())
        .expect_err("must be refused")
        .to_string()
}

#[test]
fn the_issues_example_reads_and_builds() {
    let s = spec(&issue_example());
    assert_eq!(s.name, "soc-web");
    assert_eq!(s.on_full, Some(OnFull::Block));
    assert_eq!(s.transforms.len(), 2);
    Pipeline::build(&s, &Registry::builtin()).expect("builds");
    // The same object as JSON (the API's body) reads back equal.
    let json = serde_json::to_string(&s).expect("json");
    let back: StreamSpec = serde_json::from_str(&json).expect("reads");
    assert_eq!(back, s);
}

#[test]
fn refusals_name_the_field() {
    let mut s = spec(&issue_example());
    s.transforms[1] = TransformSpec::Keep(vec!["sourceIPv4Addres".into()]);
    assert_eq!(
        refused(&s),
        "stream \"soc-web\": transforms[1].keep: \"sourceIPv4Addres\" is not an Information Element name"
    );
    let mut s = spec(&issue_example());
    s.filter = Some("protocolIdentifier == 6 and destinationTransportPort in".into());
    assert_eq!(
        refused(&s),
        "stream \"soc-web\": filter: column 56: expected a value after 'in'"
    );
    let mut s = spec(&issue_example());
    s.name = "soc web".into();
    assert!(refused(&s).contains("name: \"soc web\" may hold only"));
    let mut s = spec(&issue_example());
    if let TransformSpec::Anonymise(a) = &mut s.transforms[0] {
        a.key = Some("abc".into());
    }
    assert!(refused(&s).contains("transforms[0].anonymise: a Crypto-PAn key is 32 bytes"));
    let mut s = spec(&issue_example());
    if let TransformSpec::Anonymise(a) = &mut s.transforms[0] {
        a.fields = Some(vec!["protocolIdentifier".into()]);
    }
    assert!(refused(&s).contains("protocolIdentifier is an unsigned8, not an address"));
    let s = spec(
        "name = \"a\"\ntransforms = [{ aggregate = { window_secs = 0, key = [\"protocolIdentifier\"] } }]\nsink = { kind = \"discard\" }",
    );
    assert!(refused(&s).contains("transforms[0].aggregate.window_secs: 0 is outside 1 to 86400"));
    let s = spec("name = \"a\"\nexporters = [\"192.0.2.0/33\"]\nsink = { kind = \"discard\" }");
    assert!(refused(&s).contains("exporters: \"192.0.2.0/33\" is not an address or prefix"));
    let s = spec("name = \"a\"\nsink = { kind = \"http\", url = \"ftp://x/\" }");
    assert!(refused(&s).contains("sink.url: \"ftp://x/\" is not an http:// or https:// URL"));
    let s = spec(
        "name = \"a\"\nsink = { kind = \"http\", url = \"http://x/\", ca_file = \"/ca.pem\" }",
    );
    assert!(refused(&s).contains("sink.ca_file: is for an https:// URL"));
    let s = spec(
        "name = \"a\"\nsink = { kind = \"http\", url = \"https://x/\", ca_file = \"/ca.pem\" }",
    );
    Pipeline::build(&s, &Registry::builtin()).expect("https with a CA file builds");
    let e = for_tenant(&s, "t", std::path::Path::new("/var/lib/x"), true).expect_err("tenant");
    assert!(
        e.to_string()
            .contains("sink.ca_file: is for the node's configuration"),
        "{e}"
    );
    // Unknown keys and sink kinds are refused by the reader, with serde's words.
    let e =
        toml::from_str::<StreamSpec>("name = \"a\"\nsink = { kind = \"ipfx\" }").expect_err("kind");
    assert!(e.to_string().contains("unknown variant `ipfx`"), "{e}");
    let e =
        toml::from_str::<StreamSpec>("name = \"a\"\nfiltre = \"x\"\nsink = { kind = \"discard\" }")
            .expect_err("key");
    assert!(e.to_string().contains("unknown field `filtre`"), "{e}");
}

fn source() -> Arc<Source> {
    Arc::new(Source {
        exporter: "192.0.2.1:4739".into(),
        addr: [192, 0, 2, 1].into(),
        tenant: "default".into(),
    })
}

/// Flows (source, destination port, protocol, octets), template 256, domain 3.
fn message(flows: &[([u8; 4], u16, u8, u64)]) -> Arc<crate::wire::DecodedMessage> {
    let reg = Registry::builtin();
    let t = Template::data(
        256,
        vec![
            FieldSpec::new(8, 0, 4),
            FieldSpec::new(11, 0, 2),
            FieldSpec::new(4, 0, 1),
            FieldSpec::new(1, 0, 8),
        ],
    );
    let p = Plan::compile(t.clone(), &reg);
    let mut mb = MessageBuilder::new(3, 65535);
    mb.add_template(&t).expect("t");
    for &(a, port, proto, oct) in flows {
        mb.add_record(
            &p,
            &[
                FieldValue::Ipv4(a.into()),
                FieldValue::Unsigned(port as u64),
                FieldValue::Unsigned(proto as u64),
                FieldValue::Unsigned(oct),
            ],
        )
        .expect("r");
    }
    mb.flush();
    let mut d = Decoder::new(reg, DecoderOptions::default());
    Arc::new(
        d.decode(bytes::Bytes::from(mb.take_ready().remove(0)))
            .expect("decodes"),
    )
}

#[test]
fn filter_anonymise_and_keep_run_in_order_and_are_counted() {
    let mut p = Pipeline::build(&spec(&issue_example()), &Registry::builtin()).expect("builds");
    let m = message(&[
        ([192, 0, 2, 10], 443, 6, 100),
        ([10, 0, 0, 1], 443, 6, 200),
        ([192, 0, 2, 11], 22, 6, 300),
    ]);
    let out = p.push(Records::all(m, source()), 0);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].count(), 1);
    let b = &out[0].msg.batches[0];
    let cp = CryptoPan::from_hex(KEY).expect("key");
    assert_eq!(
        b.value(&out[0].msg.buf, 0, 0),
        Value::Ipv4(cp.ipv4(Ipv4Addr::new(192, 0, 2, 10)))
    );
    assert_eq!(
        b.plan.fields.len(),
        4,
        "keep names fields the template has and lacks"
    );
    assert_eq!(p.stats().records_in, 3);
    assert_eq!(p.stats().filtered, 2);
}

#[test]
fn aggregate_then_domain_then_keep_release_at_the_window_end() {
    let s = spec(
        "name = \"agg\"\ntemplates = [256]\ntransforms = [\n { aggregate = { window_secs = 10, key = [\"protocolIdentifier\"] } },\n { domain = 42 },\n { drop = [\"deltaFlowCount\"] },\n]\nsink = { kind = \"discard\" }",
    );
    let mut p = Pipeline::build(&s, &Registry::builtin()).expect("builds");
    let m = message(&[
        ([1, 1, 1, 1], 1, 6, 5),
        ([2, 2, 2, 2], 2, 6, 7),
        ([3, 3, 3, 3], 3, 17, 1),
    ]);
    assert!(p.push(Records::all(m.clone(), source()), 1_000).is_empty());
    assert_eq!(p.next_due_ms(), Some(10_000));
    assert!(p.tick(9_999).is_empty());
    let out = p.tick(10_000);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].domain, 42);
    assert_eq!(out[0].count(), 2);
    let b = &out[0].msg.batches[0];
    let names: Vec<&str> = b
        .plan
        .fields
        .iter()
        .map(|f| f.element.name.as_ref())
        .collect();
    assert_eq!(names, ["protocolIdentifier", "octetDeltaCount"]);
    assert_eq!(b.value(&out[0].msg.buf, 0, 1), Value::Unsigned(12));
    // finish() releases what a window still holds.
    p.push(Records::all(m, source()), 11_000);
    assert_eq!(
        p.finish(11_000).iter().map(Records::count).sum::<usize>(),
        2
    );
    // A template the stream does not take is filtered.
    let s = spec("name = \"t\"\ntemplates = [999]\nsink = { kind = \"discard\" }");
    let mut p = Pipeline::build(&s, &Registry::builtin()).expect("builds");
    assert!(
        p.push(
            Records::all(message(&[([1, 1, 1, 1], 1, 6, 5)]), source()),
            0
        )
        .is_empty()
    );
    assert_eq!(p.stats().filtered, 1);
}

#[test]
fn exporters_and_domains_match() {
    let s = spec(
        "name = \"m\"\nexporters = [\"192.0.2.0/24\", \"2001:db8::1\"]\ndomains = [3]\nsink = { kind = \"discard\" }",
    );
    let p = Pipeline::build(&s, &Registry::builtin()).expect("builds");
    assert!(p.takes(&source(), 3));
    assert!(!p.takes(&source(), 4));
    let other = Source {
        addr: [198, 51, 100, 1].into(),
        ..(*source()).clone()
    };
    assert!(!p.takes(&other, 3));
}
