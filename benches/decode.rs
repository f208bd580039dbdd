//! Decoder throughput on the shared generator's files (`../shared/bench/gen_ipfix.py`):
//! `fixed` (13 fields, 56-byte records) and `varlen` (plus applicationName and an enterprise
//! field). Every record is decoded into typed columns; criterion reports records/s.

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ipfixsvc::wire::{Decoder, DecoderOptions, MessageReader, Registry};
use std::path::{Path, PathBuf};
use std::process::Command;

const MESSAGES: &str = "20000";

/// Generates (once) and loads the benchmark file of `kind`, split into messages.
fn messages(kind: &str) -> Vec<Bytes> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-data");
    std::fs::create_dir_all(&dir).expect("create target/bench-data");
    let path: PathBuf = dir.join(format!("{kind}-{MESSAGES}.ipfix"));
    if !path.exists() {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/bench/gen_ipfix.py");
        let status = Command::new("python3")
            .arg(&script)
            .args([
                "--kind",
                kind,
                "--messages",
                MESSAGES,
                "--records-per-message",
            ])
            .arg(if kind == "fixed" { "23" } else { "12" })
            .arg("--out")
            .arg(&path)
            .status()
            .expect("run gen_ipfix.py");
        assert!(status.success(), "gen_ipfix.py failed");
    }
    let file = std::fs::File::open(&path).expect("open bench file");
    MessageReader::new(file, 65535)
        .map(|m| m.expect("bench file frames").1)
        .collect()
}

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
