//! A mediator stream's filter: byte 0 says how many of the next bytes are the filter text (what a
//! tenant types into the API); the rest is the body of a Data Set for a fixed template with
//! integers, IPv4 and IPv6 addresses, a time and a variable-length string. A filter that parses
//! is compiled for the template and evaluated over the batch; the mask must have one bit per
//! record.
#![no_main]

use ipfixsvc::mediation::filter::{Filter, Meta};
use ipfixsvc::wire::Registry;
use ipfixsvc::wire::batch::decode_records;
use ipfixsvc::wire::plan::Plan;
use ipfixsvc::wire::template::{FieldSpec, Template, VARLEN};
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};

fn plan() -> &'static Arc<Plan> {
    static PLAN: OnceLock<Arc<Plan>> = OnceLock::new();
    PLAN.get_or_init(|| {
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
        Arc::new(Plan::compile(t, &Registry::builtin()))
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let (text, body) = rest.split_at((n as usize).min(rest.len()));
    let text = String::from_utf8_lossy(text);
    let Ok(filter) = Filter::parse(&text, &Registry::builtin()) else {
        return;
    };
    let Ok(batch) = decode_records(plan(), body, 0, body.len(), 0) else {
        return;
    };
    let meta = Meta {
        exporter: std::net::IpAddr::from([192, 0, 2, 1]),
        domain: 1,
        template: 300,
    };
    let mask = filter.compile(plan()).eval(&batch, body, &meta);
    assert_eq!(mask.len(), batch.len());
    assert!(mask.ones().all(|r| r < batch.len()));
});
