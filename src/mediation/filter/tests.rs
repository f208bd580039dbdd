use super::*;
use crate::wire::batch::decode_records;
use crate::wire::template::{FieldSpec, Template, VARLEN};
use proptest::prelude::*;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

fn registry() -> Arc<Registry> {
    Registry::builtin()
}

fn err(src: &str) -> String {
    Filter::parse(src, &registry())
        .expect_err("must be refused")
        .to_string()
}

#[test]
fn syntax_errors_say_where_and_why() {
    let src = "protocolIdentifier == 6 and destinationTransportPort in";
    assert_eq!(err(src), "column 56: expected a value after 'in'");
    // Syntax is checked before names: the missing value is reported, not the unknown `x`.
    assert_eq!(
        err("protocolIdentifier == 6 and (x in"),
        "column 34: expected a value after 'in'"
    );
    assert_eq!(
        err("protocolIdentifier == "),
        "column 23: expected a value after the operator"
    );
    assert_eq!(
        err("protocolIdentifier 6"),
        "column 20: expected an operator (==, !=, <, <=, >, >=, in) after the element name"
    );
    assert_eq!(err("(protocolIdentifier == 6"), "column 25: expected ')'");
    assert_eq!(
        err("protocolIdentifier == 6 and"),
        "column 28: expected an element name, @exporter, @domain or @template"
    );
    assert_eq!(
        err("protocolIdentifier == 6 6"),
        "column 25: unexpected '6': expected 'and', 'or' or the end of the filter"
    );
    assert_eq!(
        err("destinationTransportPort in (80, 443"),
        "column 37: expected ',' or ')' in the list"
    );
    assert_eq!(
        err("applicationName == \"abc"),
        "column 24: expected a closing '\"'"
    );
    assert_eq!(
        err(""),
        "column 1: expected an element name, @exporter, @domain or @template"
    );
}

#[test]
fn meaning_errors_say_where_and_why() {
    assert_eq!(
        err("protocolIdentifer == 6"),
        "column 1: 'protocolIdentifer' is not an Information Element name"
    );
    assert_eq!(
        err("protocolIdentifier == 6 and sourceIPv4Address == 10.0.0"),
        "column 50: sourceIPv4Address (an ipv4Address) takes an IPv4 address or prefix: '10.0.0' is not one"
    );
    assert_eq!(
        err("sourceIPv4Address == 10.0.0.0/8"),
        "column 22: a prefix is matched with 'in', not '=='"
    );
    assert_eq!(
        err("sourceIPv4Address in 10.0.0.1/8"),
        "column 22: sourceIPv4Address (an ipv4Address) takes an IPv4 address or prefix: '10.0.0.1/8' has bits set past its length; did you mean 10.0.0.0/8?"
    );
    assert!(err("sourceIPv6Address == 10.0.0.1").contains("is an IPv4 value"));
    assert!(err("sourceIPv4Address in 10.0.0.1").contains("'in' takes a prefix"));
    assert!(err("applicationName < \"x\"").contains("compared only with == and !="));
    assert!(err("applicationName == x").contains("'x' is not quoted"));
    assert!(err("octetDeltaCount == 18446744073709551616").contains("outside the 64-bit range"));
    assert!(err("@port == 1").contains("@exporter, @domain and @template"));
    assert!(err("subTemplateList == 1").contains("cannot be compared"));
    let deep = format!(
        "{}protocolIdentifier == 6{}",
        "(".repeat(40),
        ")".repeat(40)
    );
    assert!(err(&deep).contains("nest more than 32"));
    assert!(err(&"x".repeat(5000)).contains("at most 4096"));
}

#[test]
fn many_nots_cost_no_stack() {
    let src = format!("{}protocolIdentifier == 6", "not ".repeat(1000));
    let f = Filter::parse(&src, &registry()).expect("parses");
    assert_eq!(f.source(), src);
}

#[test]
fn values_of_every_kind_parse() {
    for src in [
        "octetDeltaCount >= 0x10 and octetDeltaCount < 1e3",
        "flowStartMilliseconds >= \"2024-01-01T00:00:00Z\" and flowStartMilliseconds < 1704067260000",
        "flowStartSeconds > 2024-01-01T00:00:00.5+01:00",
        "sourceMacAddress == 00:11:22:aa:bb:cc or sourceMacAddress == 00-11-22-AA-BB-CD",
        "sourceIPv6Address in (2001:db8::/32, ::1, ::ffff:10.0.0.1)",
        "@exporter in (192.0.2.0/24, 2001:db8::/32) and @domain == 5 and @template != 256",
        "dataRecordsReliability == true",
        "applicationName in (\"dns\", \"say \\\"hi\\\"\")",
        "NOT_A_KEYWORD_ORDER == 1 or protocolIdentifier == 1",
    ] {
        let r = Filter::parse(src, &registry());
        if src.starts_with("NOT_A") {
            assert!(r.is_err(), "{src}");
        } else {
            r.unwrap_or_else(|e| panic!("{src}: {e}"));
        }
    }
}

/// sourceIPv4Address, destinationTransportPort, protocolIdentifier, octetDeltaCount (4 bytes,
/// reduced size), sourceIPv6Address, flowStartMilliseconds, applicationName (variable length),
/// and sourceIPv4Address again (a repeated element).
fn plan() -> Arc<Plan> {
    let t = Template::data(
        300,
        vec![
            FieldSpec::new(8, 0, 4),
            FieldSpec::new(11, 0, 2),
            FieldSpec::new(4, 0, 1),
            FieldSpec::new(1, 0, 4),
            FieldSpec::new(27, 0, 16),
            FieldSpec::new(152, 0, 8),
            FieldSpec::new(96, 0, VARLEN),
            FieldSpec::new(8, 0, 4),
        ],
    );
    Arc::new(Plan::compile(t, &registry()))
}

#[derive(Debug, Clone)]
struct Rec {
    src: [u8; 4],
    port: u16,
    proto: u8,
    octets: u32,
    src6: [u8; 16],
    start_ms: u64,
    app: String,
    src2: [u8; 4],
}

fn encode(recs: &[Rec]) -> Vec<u8> {
    let mut b = Vec::new();
    for r in recs {
        b.extend_from_slice(&r.src);
        b.extend_from_slice(&r.port.to_be_bytes());
        b.push(r.proto);
        b.extend_from_slice(&r.octets.to_be_bytes());
        b.extend_from_slice(&r.src6);
        b.extend_from_slice(&r.start_ms.to_be_bytes());
        b.push(r.app.len() as u8);
        b.extend_from_slice(r.app.as_bytes());
        b.extend_from_slice(&r.src2);
    }
    b
}

const META: Meta = Meta {
    exporter: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
    domain: 7,
    template: 300,
};

fn rec(src: [u8; 4], port: u16, proto: u8, octets: u32, app: &str) -> Rec {
    Rec {
        src,
        port,
        proto,
        octets,
        src6: Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, port).octets(),
        start_ms: 1_704_067_200_000 + octets as u64,
        app: app.to_string(),
        src2: [198, 51, 100, proto],
    }
}

fn passing(src: &str, recs: &[Rec]) -> Vec<usize> {
    let f = Filter::parse(src, &registry()).unwrap_or_else(|e| panic!("{src}: {e}"));
    let p = plan();
    let msg = encode(recs);
    let b = decode_records(&p, &msg, 0, msg.len(), 0).expect("decodes");
    let m = f.compile(&p).eval(&b, &msg, &META);
    let ones: Vec<usize> = m.ones().collect();
    let by_row: Vec<usize> = (0..b.len())
        .filter(|&r| reference(&f, &b, &msg, &META, r))
        .collect();
    assert_eq!(ones, by_row, "{src}: columns and rows disagree");
    ones
}

#[test]
fn the_issues_example_by_hand() {
    let recs = [
        rec([192, 0, 2, 10], 443, 6, 100, "https"), // kept
        rec([10, 1, 2, 3], 443, 6, 200, "https"),   // inside 10/8
        rec([192, 0, 2, 11], 80, 6, 300, "http"),   // kept
        rec([192, 0, 2, 12], 80, 17, 400, "quic"),  // UDP
        rec([192, 0, 2, 13], 22, 6, 500, "ssh"),    // port
        rec([11, 0, 0, 1], 80, 6, 600, "http"),     // 11/8 is not 10/8: kept
    ];
    let src = "protocolIdentifier == 6 and destinationTransportPort in (80, 443) and not sourceIPv4Address in 10.0.0.0/8";
    assert_eq!(passing(src, &recs), vec![0, 2, 5]);
    // Precedence: and binds tighter than or; not tighter than and.
    assert_eq!(
        passing(
            "protocolIdentifier == 17 or destinationTransportPort == 22 and octetDeltaCount > 450",
            &recs
        ),
        vec![3, 4]
    );
    assert_eq!(
        passing(
            "(protocolIdentifier == 17 or destinationTransportPort == 22) and octetDeltaCount > 450",
            &recs
        ),
        vec![4]
    );
    assert_eq!(passing("not not protocolIdentifier == 17", &recs), vec![3]);
    // Strings, times, IPv6 prefixes, the repeated element (either occurrence), meta fields.
    assert_eq!(
        passing("applicationName in (\"ssh\", \"quic\")", &recs),
        vec![3, 4]
    );
    assert_eq!(
        passing(
            "flowStartMilliseconds >= \"2024-01-01T00:00:00.300Z\"",
            &recs
        ),
        vec![2, 3, 4, 5]
    );
    assert_eq!(
        passing(
            "sourceIPv6Address in 2001:db8::/112 and sourceIPv6Address != 2001:db8::50",
            &recs
        ),
        vec![0, 1, 4]
    );
    assert_eq!(
        passing("sourceIPv4Address == 198.51.100.17", &recs),
        vec![3]
    );
    assert_eq!(
        passing(
            "@domain == 7 and @template == 300 and @exporter in 192.0.2.0/24",
            &recs
        )
        .len(),
        6
    );
    assert!(passing("@exporter == 192.0.2.2", &recs).is_empty());
    // An element the template lacks: the comparison is false, its negation true.
    assert!(passing("destinationIPv4Address == 10.0.0.1", &recs).is_empty());
    assert_eq!(
        passing("not destinationIPv4Address in 10.0.0.0/8", &recs).len(),
        6
    );
    assert!(
        Filter::parse("destinationIPv4Address == 10.0.0.1", &registry())
            .expect("parses")
            .compile(&plan())
            .never()
    );
    // Numbers against floats, hex, and a long list (binary search).
    assert_eq!(passing("octetDeltaCount < 250.5", &recs), vec![0, 1]);
    assert_eq!(
        passing("destinationTransportPort == 0x50", &recs),
        vec![2, 3, 5]
    );
    let long: Vec<String> = (1000..1020).chain([22]).map(|p| p.to_string()).collect();
    assert_eq!(
        passing(
            &format!("destinationTransportPort in ({})", long.join(", ")),
            &recs
        ),
        vec![4]
    );
}

#[test]
fn masks_past_64_records() {
    let recs: Vec<Rec> = (0..150u32)
        .map(|k| rec([10, 0, 0, (k % 7) as u8], (k % 5) as u16, 6, k, "x"))
        .collect();
    let ones = passing(
        "destinationTransportPort == 3 or octetDeltaCount >= 140",
        &recs,
    );
    let want: Vec<usize> = (0..150).filter(|k| k % 5 == 3 || *k >= 140).collect();
    assert_eq!(ones, want);
    let m = Mask::new(130, true);
    assert_eq!((m.count(), m.all(), m.len()), (130, true, 130));
}

fn arb_rec() -> impl Strategy<Value = Rec> {
    (
        0u8..4,
        0u16..5,
        prop_oneof![Just(6u8), Just(17), Just(1)],
        0u32..8,
        0u16..4,
        0u64..6,
        prop_oneof![Just(""), Just("dns"), Just("http")],
        0u8..4,
    )
        .prop_map(|(a, port, proto, octets, v6, t, app, b)| Rec {
            src: [10, 0, 0, a],
            port,
            proto,
            octets,
            src6: Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, v6, 1).octets(),
            start_ms: 1_704_067_200_000 + t * 1000,
            app: app.to_string(),
            src2: [10, 0, 1, b],
        })
}

fn arb_op() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        Just("=="),
        Just("!="),
        Just("<"),
        Just("<="),
        Just(">"),
        Just(">=")
    ]
}

fn arb_leaf() -> impl Strategy<Value = String> {
    prop_oneof![
        (arb_op(), 0u8..5).prop_map(|(o, a)| format!("sourceIPv4Address {o} 10.0.0.{a}")),
        (24u8..33).prop_map(|l| format!(
            "sourceIPv4Address in 10.0.0.{}/{l}",
            if l == 32 { 1 } else { 0 }
        )),
        (arb_op(), 0u16..6).prop_map(|(o, p)| format!("destinationTransportPort {o} {p}")),
        proptest::collection::vec(0u8..20, 1..12).prop_map(|v| format!(
            "protocolIdentifier in ({})",
            v.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )),
        (arb_op(), 0u32..9).prop_map(|(o, n)| format!("octetDeltaCount {o} {n}")),
        (arb_op(), 0u32..9).prop_map(|(o, n)| format!("octetDeltaCount {o} {n}.5")),
        (112u8..129).prop_map(|l| format!("sourceIPv6Address in 2001:db8::/{l}")),
        (arb_op(), 0u16..4).prop_map(|(o, v)| format!("sourceIPv6Address {o} 2001:db8::{v}:1")),
        (arb_op(), 0u64..7)
            .prop_map(|(o, t)| format!("flowStartMilliseconds {o} \"2024-01-01T00:00:0{t}Z\"")),
        prop_oneof![Just("=="), Just("!=")].prop_flat_map(|o| prop_oneof![
            Just(""),
            Just("dns"),
            Just("x")
        ]
        .prop_map(move |s| format!("applicationName {o} \"{s}\""))),
        (arb_op(), 5u32..9).prop_map(|(o, d)| format!("@domain {o} {d}")),
        Just("destinationIPv4Address == 10.0.0.1".to_string()),
    ]
}

fn arb_filter() -> impl Strategy<Value = String> {
    arb_leaf().prop_recursive(4, 24, 3, |inner| {
        prop_oneof![
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} and {b}")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("{a} or {b}")),
            inner.clone().prop_map(|a| format!("not ({a})")),
            inner.prop_map(|a| format!("({a})")),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The column loops and the record-by-record reading agree on every record.
    #[test]
    fn columns_agree_with_records(
        src in arb_filter(),
        recs in proptest::collection::vec(arb_rec(), 0..140),
    ) {
        passing(&src, &recs);
    }

    /// Whatever a tenant types, parsing returns a value or an error, never a panic.
    #[test]
    fn any_text_parses_or_errs(src in "[ -~]{0,80}") {
        let _ = Filter::parse(&src, &registry());
    }
}
