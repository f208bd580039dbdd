//! Decoder throughput on the shared generator's files (`../shared/bench/gen_ipfix.py`):
//! `fixed` (13 fields, 56-byte records) and `varlen` (plus applicationName and an enterprise
//! field). Every record is decoded into typed columns; criterion reports records/s.

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ipfixsvc::wire::{Decoder, DecoderOptions, Registry};

mod common;
use common::messages;

fn decode_all(msgs: &[Bytes]) -> usize {
    let mut d = Decoder::new(Registry::builtin(), DecoderOptions::default());
    msgs.iter()
        .map(|m| {
            d.decode(m.clone())
                .expect("bench file decodes")
                .data_records()
        })
        .sum()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode_columns");
    for kind in ["fixed", "varlen"] {
        let msgs = messages(kind);
        let records = decode_all(&msgs);
        g.throughput(Throughput::Elements(records as u64));
        g.bench_function(kind, |b| b.iter(|| decode_all(&msgs)));
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench
}
criterion_main!(benches);
