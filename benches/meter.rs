//! The flow table alone (no capture reading, no parsing): packets/s of counting a stream of
//! packets spread uniformly over 200,000 flows, the worst case for caches (a real capture has
//! more locality). Two ways: each packet counted as it comes (`observe`), and the metering run's
//! way, each packet prepared 8 packets before it is counted with its flow prefetched half way.
//! The ratio of the two is what prefetching buys on this machine.
//!
//! `cargo bench --bench meter`

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ipfixsvc::meter::flow::{FlowTable, MeterConfig};
use ipfixsvc::meter::packet::PacketInfo;
use std::collections::VecDeque;
use std::net::IpAddr;

const FLOWS: usize = 200_000;
const PACKETS: usize = 2_000_000;
const LOOKAHEAD: usize = 8;

/// A deterministic stream: xorshift picks each packet's flow; times advance 1 ms every 100
/// packets, so no flow times out.
fn packets() -> Vec<PacketInfo> {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let flows: Vec<(IpAddr, IpAddr, u16, u16, u8)> = (0..FLOWS)
        .map(|_| {
            let r = next();
            let src = IpAddr::from((0x0a00_0000 | (r as u32 & 0x00ff_ffff)).to_be_bytes());
            let dst = IpAddr::from((0xc612_0000 | ((r >> 24) as u32 & 0xffff)).to_be_bytes());
            let proto = if r >> 63 == 0 { 6 } else { 17 };
            (src, dst, (r >> 40) as u16 | 1024, 443, proto)
        })
        .collect();
    (0..PACKETS)
        .map(|i| {
            let (src, dst, sport, dport, proto) = flows[next() as usize % FLOWS];
            PacketInfo {
                ts_ms: 1_700_000_000_000 + (i / 100) as u64,
                vlan: 0,
                src,
                dst,
                proto,
                sport,
                dport,
                ip_len: 576,
                frame_len: 590,
                tcp_flags: if proto == 6 { 0x10 } else { 0 },
                icmp: 0,
            }
        })
        .collect()
}

fn cfg() -> MeterConfig {
    MeterConfig {
        biflow: false,
        ..MeterConfig::default()
    }
}

fn flow_table(c: &mut Criterion) {
    let packets = packets();
    let mut g = c.benchmark_group("flow_table");
    g.sample_size(10);
    g.throughput(Throughput::Elements(PACKETS as u64));
    g.bench_function("observe", |b| {
        b.iter(|| {
            let mut t = FlowTable::new(cfg());
            let mut done = Vec::new();
            for p in &packets {
                t.observe(p, &mut done);
            }
            t.len()
        })
    });
    g.bench_function("prepare_8_ahead", |b| {
        b.iter(|| {
            let mut t = FlowTable::new(cfg());
            let mut done = Vec::new();
            let mut pending = VecDeque::with_capacity(LOOKAHEAD);
            for p in &packets {
                let prepared = t.prepare(p);
                if let Some((_, prepared)) = pending.get(LOOKAHEAD / 2) {
                    t.prefetch(prepared);
                }
                if pending.len() == LOOKAHEAD
                    && let Some((p, prepared)) = pending.pop_front()
                {
                    t.count(p, &prepared, &mut done);
                }
                pending.push_back((p, prepared));
            }
            for (p, prepared) in pending {
                t.count(p, &prepared, &mut done);
            }
            t.len()
        })
    });
    g.finish();
}

criterion_group!(benches, flow_table);
criterion_main!(benches);
