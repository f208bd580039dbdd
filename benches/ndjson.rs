//! NDJSON rendering, the mediator's `ndjson` sink and `dump` without the disk: messages of the
//! shared generator's files are decoded once, then every record is rendered into a buffer that
//! is handed on (and emptied) each MiB, as the sink's writes are. Criterion reports records/s
//! of one core; a figure with the disk in it measures the disk (README says which is which).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ipfixsvc::wire::ndjson::Origin;
use ipfixsvc::wire::ndjson_writer::RecordWriter;
use ipfixsvc::wire::{DecodedMessage, Decoder, DecoderOptions, Registry};
use std::io::Write;

mod common;
use common::messages;

fn decoded(kind: &str) -> Vec<DecodedMessage> {
    let mut d = Decoder::new(Registry::builtin(), DecoderOptions::default());
    messages(kind)
        .into_iter()
        .map(|m| d.decode(m).expect("bench file decodes"))
        .collect()
}

/// Renders every record of `msgs`; `sink` gets each full MiB. Returns the bytes rendered.
fn render(
    w: &mut RecordWriter,
    buf: &mut Vec<u8>,
    msgs: &[DecodedMessage],
    registry: &Registry,
    sink: &mut impl Write,
) -> usize {
    let origin = Origin {
        exporter: "192.0.2.1:4739",
        tenant: Some("default"),
        domain: None,
    };
    let mut total = 0;
    for m in msgs {
        for b in &m.batches {
            w.write_rows(buf, origin, m, b, 0..b.len(), registry);
        }
        if buf.len() >= 1 << 20 {
            total += buf.len();
            sink.write_all(buf).expect("sink takes the bytes");
            buf.clear();
        }
    }
    total + buf.len()
}

fn bench(c: &mut Criterion) {
    let registry = Registry::builtin();
    let mut g = c.benchmark_group("ndjson_render");
    for kind in ["fixed", "varlen"] {
        let msgs = decoded(kind);
        let records: usize = msgs.iter().map(|m| m.data_records()).sum();
        g.throughput(Throughput::Elements(records as u64));
        let mut w = RecordWriter::new();
        let mut buf = Vec::with_capacity(2 << 20);
        g.bench_function(format!("{kind}/memory"), |b| {
            b.iter(|| {
                buf.clear();
                render(&mut w, &mut buf, &msgs, &registry, &mut std::io::sink())
            })
        });
        let mut null = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .expect("open /dev/null");
        g.bench_function(format!("{kind}/dev-null"), |b| {
            b.iter(|| {
                buf.clear();
                render(&mut w, &mut buf, &msgs, &registry, &mut null)
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench
}
criterion_main!(benches);
