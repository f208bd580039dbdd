//! The flow table of the Metering Process: packets -> biflows (RFC 5103; or uniflows), ended by
//! idle timeout, active timeout, TCP FIN/RST (with a short linger for the last ACKs), end of
//! input, or eviction when the table is full. Time is the packets' own (capture time), so a
//! capture meters the same way however fast it is read.

use super::flow_index::FlowIndex;
use super::packet::PacketInfo;
use super::prefetch::prefetch;
use foldhash::fast::RandomState;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::IpAddr;

/// flowEndReason (IANA IE 136).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum EndReason {
    IdleTimeout = 1,
    ActiveTimeout = 2,
    EndOfFlow = 3,
    ForcedEnd = 4,
    LackOfResources = 5,
}

#[derive(Debug, Clone, Copy)]
pub struct MeterConfig {
    pub idle_ms: u64,
    pub active_ms: u64,
    /// Count both directions in one flow (RFC 5103) instead of one flow per direction.
    pub biflow: bool,
    /// Flows open at once, at most (the table clamps it to 1..=[`MAX_FLOWS`]).
    pub max_flows: usize,
}

impl Default for MeterConfig {
    fn default() -> Self {
        MeterConfig {
            idle_ms: 300_000,
            active_ms: 1_800_000,
            biflow: true,
            max_flows: 1_000_000,
        }
    }
}

/// The largest flow table: slots are numbered with 32 bits (and 2^31 flows would already take
/// 256 GiB).
pub const MAX_FLOWS: usize = 1 << 31;

/// After a FIN or RST, packets within this time still belong to the flow (the final ACKs).
const LINGER_MS: u64 = 2_000;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub packets: u64,
    pub octets: u64,
    pub layer2_octets: u64,
    pub initial_tcp_flags: u8,
    pub tcp_flags: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    pub vlan: u16,
    pub proto: u8,
    /// The initiator (source of the first packet) and the responder.
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
    pub start_ms: u64,
    pub end_ms: u64,
    pub forward: Counters,
    pub reverse: Counters,
    /// ICMP type << 8 | code of the first ICMP packet.
    pub icmp: u16,
    pub end_reason: EndReason,
}

/// A flow's key as the table compares it: both endpoints as 16 bytes (an IPv4 address in the
/// first 4, with `v6` false). For biflows the lower endpoint comes first, so both directions of
/// a conversation have one key and a packet needs one lookup whichever way it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key {
    a: [u8; 16],
    b: [u8; 16],
    a_port: u16,
    b_port: u16,
    vlan: u16,
    proto: u8,
    v6: bool,
}

fn octets(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => {
            let mut b = [0; 16];
            b[..4].copy_from_slice(&v4.octets());
            b
        }
        IpAddr::V6(v6) => v6.octets(),
    }
}

impl Hash for Key {
    /// Four words rather than field by field (the derived way hashes each array's length too).
    fn hash<H: Hasher>(&self, h: &mut H) {
        h.write_u128(u128::from_ne_bytes(self.a));
        h.write_u128(u128::from_ne_bytes(self.b));
        h.write_u64(
            u64::from(self.a_port)
                | u64::from(self.b_port) << 16
                | u64::from(self.vlan) << 32
                | u64::from(self.proto) << 48
                | u64::from(self.v6) << 56,
        );
    }
}

impl Key {
    fn address(&self, bytes: [u8; 16]) -> IpAddr {
        if self.v6 {
            IpAddr::from(bytes)
        } else {
            IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]])
        }
    }
}

/// A packet's flow key, its hash, and whether the packet goes from the key's `b` endpoint to
/// its `a` endpoint: all the table needs to find the packet's flow.
#[derive(Debug, Clone, Copy)]
pub struct Prepared {
    key: Key,
    hash: u64,
    from_b: bool,
}

/// Packets, octets and layer-2 octets of one direction.
#[derive(Debug, Clone, Copy, Default)]
struct Tally {
    packets: u64,
    octets: u64,
    layer2_octets: u64,
}

/// One flow in the table, laid out for the packet path: two cache lines, aligned, so prefetching
/// a flow is two hints and counting a packet touches nothing else. The first line holds the key,
/// times and flags, the second the counters and the closing time.
#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Slot {
    key: Key,
    occupied: bool,
    /// The initiator is the key's `b` endpoint.
    initiator_b: bool,
    icmp: u16,
    /// initialTCPFlags and tcpControlBits, forward then reverse.
    flags: [u8; 4],
    start_ms: u64,
    end_ms: u64,
    forward: Tally,
    reverse: Tally,
    /// When the first FIN or RST was seen; `OPEN` (`u64::MAX`) while the connection is open.
    closing_since: u64,
    /// Bumped whenever the flow is queued again or leaves the slot: only the expiry queue entry
    /// carrying the slot's current generation is live.
    generation: u32,
}

const OPEN: u64 = u64::MAX;

// The packet path's layout: two cache lines, no more.
const _: () = assert!(std::mem::size_of::<Slot>() == 128);

impl Slot {
    const EMPTY: Slot = Slot {
        key: Key {
            a: [0; 16],
            b: [0; 16],
            a_port: 0,
            b_port: 0,
            vlan: 0,
            proto: 0,
            v6: false,
        },
        occupied: false,
        initiator_b: false,
        icmp: 0,
        flags: [0; 4],
        start_ms: 0,
        end_ms: 0,
        forward: Tally {
            packets: 0,
            octets: 0,
            layer2_octets: 0,
        },
        reverse: Tally {
            packets: 0,
            octets: 0,
            layer2_octets: 0,
        },
        closing_since: OPEN,
        generation: 0,
    };

    fn count(&mut self, p: &PacketInfo, reverse: bool) {
        let (tally, flags) = if reverse {
            (&mut self.reverse, &mut self.flags[2..])
        } else {
            (&mut self.forward, &mut self.flags[..2])
        };
        if tally.packets == 0 {
            flags[0] = p.tcp_flags;
        }
        flags[1] |= p.tcp_flags;
        tally.packets += 1;
        tally.octets += p.ip_len as u64;
        tally.layer2_octets += p.frame_len as u64;
        self.end_ms = self.end_ms.max(p.ts_ms);
    }

    fn flow(&self, end_reason: EndReason) -> Flow {
        let k = &self.key;
        let (a, b) = ((k.address(k.a), k.a_port), (k.address(k.b), k.b_port));
        let ((src, sport), (dst, dport)) = if self.initiator_b { (b, a) } else { (a, b) };
        let counters = |t: &Tally, flags: &[u8]| Counters {
            packets: t.packets,
            octets: t.octets,
            layer2_octets: t.layer2_octets,
            initial_tcp_flags: flags[0],
            tcp_flags: flags[1],
        };
        Flow {
            vlan: k.vlan,
            proto: k.proto,
            src,
            sport,
            dst,
            dport,
            start_ms: self.start_ms,
            end_ms: self.end_ms,
            forward: counters(&self.forward, &self.flags[..2]),
            reverse: counters(&self.reverse, &self.flags[2..]),
            icmp: self.icmp,
            end_reason,
        }
    }
}

/// Flows stored in slots, found by key through an index of slot numbers (one hash lookup per
/// packet), with an expiry queue
/// ordered by deadline: a packet only looks at the queue's head, so timeouts cost nothing per
/// packet until one is due. Queue entries are lazy: a flow that got packets since it was queued
/// is put back with its new deadline when its old one comes up.
///
/// The index and the slots are far larger than the caches, so finding a packet's flow is two
/// cache misses. A caller that knows the next packets [`prepare`](FlowTable::prepare)s each a
/// few packets before it [`count`](FlowTable::count)s it (which prefetches its index entry),
/// and calls [`prefetch`](FlowTable::prefetch) for it in between (which prefetches its flow):
/// the misses of several packets then overlap.
pub struct FlowTable {
    cfg: MeterConfig,
    /// Slot numbers by key hash.
    index: FlowIndex,
    /// foldhash, seeded at random for each table: as fast as FxHash on these keys, but a
    /// capture crafted so that its flows collide (FxHash has no seed) cannot make every
    /// lookup walk one long cluster of the index.
    hasher: RandomState,
    slots: Vec<Slot>,
    free: Vec<u32>,
    expiry: BinaryHeap<Reverse<(u64, u32, u32)>>,
    pub evicted: u64,
}

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

impl FlowTable {
    pub fn new(cfg: MeterConfig) -> FlowTable {
        FlowTable {
            cfg: MeterConfig {
                max_flows: cfg.max_flows.clamp(1, MAX_FLOWS),
                ..cfg
            },
            index: FlowIndex::default(),
            hasher: RandomState::default(),
            slots: Vec::new(),
            free: Vec::new(),
            expiry: BinaryHeap::new(),
            evicted: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// When a flow ends if nothing else happens, and why. On a tie, a closed connection is
    /// reported as ended rather than timed out.
    fn deadline(&self, f: &Slot) -> (u64, EndReason) {
        let (idle, active) = (self.cfg.idle_ms, self.cfg.active_ms);
        let mut due = (f.start_ms.saturating_add(active), EndReason::ActiveTimeout);
        let closed = if f.closing_since == OPEN {
            u64::MAX
        } else {
            f.closing_since.saturating_add(LINGER_MS.min(idle))
        };
        for (at, reason) in [
            (f.end_ms.saturating_add(idle), EndReason::IdleTimeout),
            (closed, EndReason::EndOfFlow),
        ] {
            if at <= due.0 {
                due = (at, reason);
            }
        }
        due
    }

    fn queue(&mut self, slot: u32) {
        let s = &self.slots[slot as usize];
        let (due, _) = self.deadline(s);
        let generation = s.generation.wrapping_add(1);
        self.slots[slot as usize].generation = generation;
        self.expiry.push(Reverse((due, slot, generation)));
        // Stale entries (flows re-queued by a FIN, or ended early) wait for their old deadline:
        // with many short connections they would outnumber the flows. Bounded here.
        if self.expiry.len() > 2 * self.index.len() + 4096 {
            let slots = &self.slots;
            self.expiry.retain(|&Reverse((_, slot, generation))| {
                let s = &slots[slot as usize];
                s.occupied && s.generation == generation
            });
        }
    }

    fn hash(&self, key: &Key) -> u64 {
        self.hasher.hash_one(key)
    }

    fn remove(&mut self, slot: u32, reason: EndReason, done: &mut Vec<Flow>) {
        let s = &mut self.slots[slot as usize];
        if !s.occupied {
            return;
        }
        s.occupied = false;
        s.generation = s.generation.wrapping_add(1);
        done.push(s.flow(reason));
        let hash = self.hash(&self.slots[slot as usize].key);
        self.index.remove(hash, slot);
        self.free.push(slot);
    }

    /// The head of the expiry queue if it is the live entry of its flow.
    fn live_head(&mut self) -> Option<(u64, u32)> {
        while let Some(&Reverse((due, slot, generation))) = self.expiry.peek() {
            let s = &self.slots[slot as usize];
            if s.occupied && s.generation == generation {
                return Some((due, slot));
            }
            self.expiry.pop();
        }
        None
    }

    /// Ends the flows whose deadline has passed at `now`.
    fn expire(&mut self, now: u64, done: &mut Vec<Flow>) {
        while let Some((due, slot)) = self.live_head() {
            if due > now {
                return;
            }
            self.expiry.pop();
            match self.deadline(&self.slots[slot as usize]) {
                (actual, reason) if actual <= now => self.remove(slot, reason, done),
                _ => self.queue(slot),
            }
        }
    }

    /// The table is full: the flow that would end first goes (the one idle the longest,
    /// unless one is about to time out or close anyway).
    fn evict(&mut self, done: &mut Vec<Flow>) {
        while let Some((due, slot)) = self.live_head() {
            self.expiry.pop();
            if self.deadline(&self.slots[slot as usize]).0 > due {
                self.queue(slot); // it has had packets since: not the oldest after all
                continue;
            }
            self.evicted += 1;
            self.remove(slot, EndReason::LackOfResources, done);
            return;
        }
    }

    /// A packet's key and hash, and a prefetch of its flow if it has one: call it a few packets
    /// before [`count`](FlowTable::count)ing the packet. Flows that start or end in between
    /// are no matter: the prefetch is only a hint, and `count` looks the flow up again.
    pub fn prepare(&self, p: &PacketInfo) -> Prepared {
        let (src, dst) = (octets(p.src), octets(p.dst));
        let from_b = self.cfg.biflow && (dst, p.dport) < (src, p.sport);
        let ((a, a_port), (b, b_port)) = if from_b {
            ((dst, p.dport), (src, p.sport))
        } else {
            ((src, p.sport), (dst, p.dport))
        };
        let key = Key {
            a,
            b,
            a_port,
            b_port,
            vlan: p.vlan,
            proto: p.proto,
            v6: p.src.is_ipv6(),
        };
        let hash = self.hash(&key);
        self.index.prefetch(hash);
        Prepared { key, hash, from_b }
    }

    /// The second step between [`prepare`](FlowTable::prepare) and
    /// [`count`](FlowTable::count): reads the packet's index entry (prefetched by `prepare`)
    /// and prefetches its flow.
    pub fn prefetch(&self, prepared: &Prepared) {
        if let Some(slot) = self.index.candidate(prepared.hash)
            && let Some(s) = self.slots.get(slot as usize)
        {
            let at: *const Slot = s;
            prefetch(at);
            prefetch(at.cast::<u8>().wrapping_add(64));
        }
    }

    fn lookup(&self, prepared: &Prepared) -> Option<u32> {
        let slots = &self.slots;
        self.index
            .find(prepared.hash, |s| slots[s as usize].key == prepared.key)
    }

    fn insert(&mut self, p: &PacketInfo, prepared: &Prepared) -> u32 {
        let slot = Slot {
            key: prepared.key,
            occupied: true,
            initiator_b: prepared.from_b,
            icmp: p.icmp,
            start_ms: p.ts_ms,
            end_ms: p.ts_ms,
            ..Slot::EMPTY
        };
        let slot = match self.free.pop() {
            Some(free) => {
                let s = &mut self.slots[free as usize];
                *s = Slot {
                    generation: s.generation,
                    ..slot
                };
                free
            }
            None => {
                self.slots.push(slot);
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert(prepared.hash, slot);
        self.queue(slot);
        slot
    }

    /// Counts one packet; flows that ended are appended to `done`.
    pub fn observe(&mut self, p: &PacketInfo, done: &mut Vec<Flow>) {
        let prepared = self.prepare(p);
        self.prefetch(&prepared);
        self.count(p, &prepared, done);
    }

    /// Counts one packet [`prepare`](FlowTable::prepare)d earlier; flows that ended are
    /// appended to `done`.
    pub fn count(&mut self, p: &PacketInfo, prepared: &Prepared, done: &mut Vec<Flow>) {
        self.expire(p.ts_ms, done);
        let mut found = self.lookup(prepared);
        if let Some(slot) = found {
            let f = &self.slots[slot as usize];
            let new_connection = f.closing_since != OPEN && p.tcp_flags & (SYN | ACK) == SYN;
            let too_long = p.ts_ms.saturating_sub(f.start_ms) >= self.cfg.active_ms;
            if new_connection || too_long {
                let reason = if too_long {
                    EndReason::ActiveTimeout
                } else {
                    EndReason::EndOfFlow
                };
                self.remove(slot, reason, done);
                found = None;
            }
        }
        let slot = match found {
            Some(slot) => slot,
            None => {
                if self.index.len() >= self.cfg.max_flows {
                    self.evict(done);
                }
                self.insert(p, prepared)
            }
        };
        let f = &mut self.slots[slot as usize];
        f.count(p, prepared.from_b != f.initiator_b);
        if p.tcp_flags & (FIN | RST) != 0 && f.closing_since == OPEN {
            // A crafted capture's time can saturate at u64::MAX ms: still closed, not open.
            f.closing_since = p.ts_ms.min(OPEN - 1);
            // Closing brings the deadline forward: queue it again (the old entry goes stale).
            self.queue(slot);
        }
    }

    /// End of input: every flow ends (FIN/RST ones as ended, the rest forced).
    pub fn finish(self, done: &mut Vec<Flow>) {
        let mut rest: Vec<&Slot> = self.slots.iter().filter(|s| s.occupied).collect();
        rest.sort_by_key(|s| s.start_ms);
        done.extend(rest.into_iter().map(|s| {
            s.flow(if s.closing_since != OPEN {
                EndReason::EndOfFlow
            } else {
                EndReason::ForcedEnd
            })
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(ts: u64, src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, flags: u8) -> PacketInfo {
        PacketInfo {
            ts_ms: ts,
            vlan: 0,
            src: src.into(),
            dst: dst.into(),
            proto: 6,
            sport,
            dport,
            ip_len: 100,
            frame_len: 114,
            tcp_flags: flags,
            icmp: 0,
        }
    }

    #[test]
    fn biflow_counts_both_directions_and_ends_on_fin_after_linger() {
        let mut t = FlowTable::new(MeterConfig::default());
        let mut done = Vec::new();
        let (a, b) = ([10, 0, 0, 1], [10, 0, 0, 2]);
        t.observe(&pkt(1_000, a, 1234, b, 80, SYN), &mut done);
        t.observe(&pkt(1_001, b, 80, a, 1234, SYN | ACK), &mut done);
        t.observe(&pkt(1_002, a, 1234, b, 80, ACK), &mut done);
        t.observe(&pkt(1_500, a, 1234, b, 80, FIN | ACK), &mut done);
        t.observe(&pkt(1_501, b, 80, a, 1234, FIN | ACK), &mut done);
        t.observe(&pkt(1_502, a, 1234, b, 80, ACK), &mut done);
        assert!(done.is_empty());
        assert_eq!(t.len(), 1);
        // Another conversation, later: the sweep ends the first one.
        t.observe(&pkt(5_000, a, 5555, b, 443, SYN), &mut done);
        assert_eq!(done.len(), 1);
        let f = &done[0];
        assert_eq!((f.forward.packets, f.reverse.packets), (4, 2));
        assert_eq!((f.forward.layer2_octets, f.reverse.octets), (456, 200));
        assert_eq!(f.forward.initial_tcp_flags, SYN);
        assert_eq!(f.reverse.tcp_flags, SYN | ACK | FIN);
        assert_eq!(f.end_reason, EndReason::EndOfFlow);
        assert_eq!((f.src, f.sport), (a.into(), 1234));
    }

    #[test]
    fn the_expiry_queue_stays_bounded_by_the_flows() {
        // 100k short connections, one per millisecond: each is queued at its idle deadline
        // (300 s), then again at its FIN (2 s linger). Only ~2k are open at a time.
        let mut t = FlowTable::new(MeterConfig::default());
        let mut done = Vec::new();
        let (a, b) = ([10, 0, 0, 1], [10, 0, 0, 2]);
        for i in 0..100_000u64 {
            let port = (i % 60_000) as u16 + 1024;
            t.observe(&pkt(i, a, port, b, 80, SYN), &mut done);
            t.observe(&pkt(i, a, port, b, 80, FIN | ACK), &mut done);
        }
        assert!(t.len() < 3_000, "{}", t.len());
        assert!(t.expiry.len() <= 2 * t.len() + 4096, "{}", t.expiry.len());
        assert_eq!(done.len() + t.len(), 100_000);
        assert!(done.iter().all(|f| f.end_reason == EndReason::EndOfFlow));
    }

    #[test]
    fn timeouts_eviction_and_end_of_input() {
        let cfg = MeterConfig {
            idle_ms: 10_000,
            active_ms: 20_000,
            biflow: false,
            max_flows: 2,
        };
        let mut t = FlowTable::new(cfg);
        let mut done = Vec::new();
        let (a, b) = ([10, 0, 0, 1], [10, 0, 0, 2]);
        // Uniflow: each direction its own flow.
        t.observe(&pkt(0, a, 1, b, 2, ACK), &mut done);
        t.observe(&pkt(1, b, 2, a, 1, ACK), &mut done);
        assert_eq!(t.len(), 2);
        // Full: a third flow evicts the one idle the longest.
        t.observe(&pkt(2, a, 3, b, 4, ACK), &mut done);
        assert_eq!(
            done.last().map(|f| f.end_reason),
            Some(EndReason::LackOfResources)
        );
        // Keep one flow busy past the active timeout; the other goes idle.
        for ts in (1_000..=25_000).step_by(1_000) {
            t.observe(&pkt(ts, a, 3, b, 4, ACK), &mut done);
        }
        let reasons: Vec<_> = done.iter().map(|f| f.end_reason).collect();
        assert!(reasons.contains(&EndReason::IdleTimeout), "{reasons:?}");
        assert!(reasons.contains(&EndReason::ActiveTimeout), "{reasons:?}");
        let before = done.len();
        t.finish(&mut done);
        assert_eq!(done.len(), before + 1);
        assert_eq!(
            done.last().map(|f| f.end_reason),
            Some(EndReason::ForcedEnd)
        );
    }

    #[test]
    fn a_biflow_started_by_the_higher_endpoint_keeps_it_as_source() {
        let mut t = FlowTable::new(MeterConfig::default());
        let mut done = Vec::new();
        let (lo, hi) = ([10, 0, 0, 1], [10, 0, 0, 9]);
        t.observe(&pkt(1_000, hi, 40_000, lo, 53, 0), &mut done);
        t.observe(&pkt(1_001, lo, 53, hi, 40_000, 0), &mut done);
        t.observe(&pkt(1_002, hi, 40_000, lo, 53, 0), &mut done);
        // Same bytes as IPv6 (0a00:0009::): another flow, whatever the ports.
        let mut v6 = pkt(1_003, hi, 40_000, lo, 53, 0);
        v6.src = IpAddr::from([10, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        v6.dst = IpAddr::from([10, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        t.observe(&v6, &mut done);
        t.finish(&mut done);
        assert_eq!(done.len(), 2);
        let f = &done[0];
        assert_eq!(
            (f.src, f.sport, f.dst, f.dport),
            (hi.into(), 40_000, lo.into(), 53)
        );
        assert_eq!((f.forward.packets, f.reverse.packets), (2, 1));
        assert_eq!((done[1].src, done[1].forward.packets), (v6.src, 1));
    }

    #[test]
    fn a_packet_to_itself_is_forward() {
        let mut t = FlowTable::new(MeterConfig::default());
        let mut done = Vec::new();
        let a = [127, 0, 0, 1];
        t.observe(&pkt(0, a, 7, a, 7, 0), &mut done);
        t.observe(&pkt(1, a, 7, a, 7, 0), &mut done);
        t.finish(&mut done);
        assert_eq!(done.len(), 1);
        assert_eq!((done[0].forward.packets, done[0].reverse.packets), (2, 0));
    }

    /// Counts `packets` preparing each `ahead` packets before counting it, as a metering run
    /// does, and returns every flow.
    fn run(cfg: MeterConfig, packets: &[PacketInfo], ahead: usize) -> Vec<Flow> {
        let mut t = FlowTable::new(cfg);
        let mut done = Vec::new();
        let mut pending = std::collections::VecDeque::new();
        for p in packets {
            pending.push_back((*p, t.prepare(p)));
            if let Some((_, prepared)) = pending.get(pending.len() / 2) {
                t.prefetch(prepared);
            }
            if pending.len() > ahead
                && let Some((p, prepared)) = pending.pop_front()
            {
                t.count(&p, &prepared, &mut done);
            }
        }
        for (p, prepared) in pending {
            t.count(&p, &prepared, &mut done);
        }
        t.finish(&mut done);
        done
    }

    #[test]
    fn a_fin_at_the_end_of_time_still_closes() {
        let mut t = FlowTable::new(MeterConfig::default());
        let mut done = Vec::new();
        let (a, b) = ([10, 0, 0, 1], [10, 0, 0, 2]);
        // (Every deadline saturates there too: a flow from before would end on this packet.)
        t.observe(&pkt(u64::MAX, a, 1, b, 2, FIN | ACK), &mut done);
        t.finish(&mut done);
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].end_reason, EndReason::EndOfFlow);
    }

    proptest::proptest! {
        /// Preparing packets ahead (while earlier ones start, end and evict flows) meters exactly
        /// as counting each as it comes; and no packet is lost or counted twice.
        #[test]
        fn preparing_ahead_changes_nothing(
            steps in proptest::collection::vec(
                (0u64..4_000, 0u8..4, 0u8..4, 0u16..3, 0u16..3, 0u8..32, proptest::bool::ANY),
                1..400,
            ),
            biflow in proptest::bool::ANY,
            max_flows in 1usize..12,
            ahead in 1usize..12,
        ) {
            let cfg = MeterConfig { idle_ms: 5_000, active_ms: 20_000, biflow, max_flows };
            let mut ts = 0;
            let packets: Vec<PacketInfo> = steps
                .iter()
                .map(|&(gap, s, d, sp, dp, flags, v6)| {
                    ts += gap;
                    let mut p = pkt(ts, [10, 0, 0, s], sp, [10, 0, 0, d], dp, flags);
                    if v6 {
                        p.src = IpAddr::from([0xfe80, 0, 0, 0, 0, 0, 0, s as u16]);
                        p.dst = IpAddr::from([0xfe80, 0, 0, 0, 0, 0, 0, d as u16]);
                    }
                    p
                })
                .collect();
            let direct = run(cfg, &packets, 0);
            proptest::prop_assert_eq!(&direct, &run(cfg, &packets, ahead));
            let counted: u64 = direct.iter().map(|f| f.forward.packets + f.reverse.packets).sum();
            proptest::prop_assert_eq!(counted, packets.len() as u64);
        }
    }
}
