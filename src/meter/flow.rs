//! The flow table of the Metering Process: packets -> biflows (RFC 5103; or uniflows), ended by
//! idle timeout, active timeout, TCP FIN/RST (with a short linger for the last ACKs), end of
//! input, or eviction when the table is full. Time is the packets' own (capture time), so a
//! capture meters the same way however fast it is read.

use super::packet::PacketInfo;
use hashbrown::HashTable;
use rustc_hash::FxBuildHasher;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hash::BuildHasher;
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

impl Counters {
    fn add(&mut self, p: &PacketInfo) {
        if self.packets == 0 {
            self.initial_tcp_flags = p.tcp_flags;
        }
        self.packets += 1;
        self.octets += p.ip_len as u64;
        self.layer2_octets += p.frame_len as u64;
        self.tcp_flags |= p.tcp_flags;
    }
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
    closing_since: Option<u64>,
}

type Key = (u16, u8, IpAddr, u16, IpAddr, u16);

/// One flow in the table, with its key's hash and the expiry deadline its live queue entry
/// carries.
struct Entry {
    key: Key,
    hash: u64,
    flow: Flow,
    queued: u64,
}

/// A table slot; `generation` tells a queue entry for a flow that has left the slot from one
/// for the flow now in it.
struct Slot {
    generation: u32,
    entry: Option<Entry>,
}

/// Flows stored in slots, found by key through a table of slot numbers (one hash lookup per
/// packet, two for a biflow's reverse direction; the table is 4 bytes per flow, so it stays in
/// cache and the only miss is the flow itself), with an expiry queue ordered by deadline: a packet only looks at the queue's head, so
/// timeouts cost nothing per packet until one is due. Queue entries are lazy: a flow that got
/// packets since it was queued is put back with its new deadline when its old one comes up.
pub struct FlowTable {
    cfg: MeterConfig,
    /// FxHash: a capture's 5-tuples are not chosen to collide, and this is the per-packet path.
    index: HashTable<u32>,
    hasher: FxBuildHasher,
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
            cfg,
            index: HashTable::new(),
            hasher: FxBuildHasher,
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
    fn deadline(&self, f: &Flow) -> (u64, EndReason) {
        let (idle, active) = (self.cfg.idle_ms, self.cfg.active_ms);
        let mut due = (f.start_ms.saturating_add(active), EndReason::ActiveTimeout);
        for (at, reason) in [
            (f.end_ms.saturating_add(idle), EndReason::IdleTimeout),
            f.closing_since
                .map_or((u64::MAX, EndReason::EndOfFlow), |c| {
                    (c.saturating_add(LINGER_MS.min(idle)), EndReason::EndOfFlow)
                }),
        ] {
            if at <= due.0 {
                due = (at, reason);
            }
        }
        due
    }

    fn queue(&mut self, slot: u32) {
        let generation = self.slots[slot as usize].generation;
        let Some(e) = &self.slots[slot as usize].entry else {
            return;
        };
        let (due, _) = self.deadline(&e.flow);
        self.expiry.push(Reverse((due, slot, generation)));
        if let Some(e) = &mut self.slots[slot as usize].entry {
            e.queued = due;
        }
        // Stale entries (flows re-queued by a FIN, or ended early) wait for their old deadline:
        // with many short connections they would outnumber the flows. Bounded here.
        if self.expiry.len() > 2 * self.index.len() + 4096 {
            let slots = &self.slots;
            self.expiry.retain(|&Reverse((due, slot, generation))| {
                let s = &slots[slot as usize];
                s.generation == generation && s.entry.as_ref().is_some_and(|e| e.queued == due)
            });
        }
    }

    fn remove(&mut self, slot: u32, reason: EndReason, done: &mut Vec<Flow>) {
        let s = &mut self.slots[slot as usize];
        if let Some(e) = s.entry.take() {
            s.generation = s.generation.wrapping_add(1);
            if let Ok(found) = self.index.find_entry(e.hash, |&s| s == slot) {
                found.remove();
            }
            self.free.push(slot);
            let mut f = e.flow;
            f.end_reason = reason;
            done.push(f);
        }
    }

    /// The head of the expiry queue if it is the live entry of its flow.
    fn live_head(&mut self) -> Option<(u64, u32)> {
        while let Some(&Reverse((due, slot, generation))) = self.expiry.peek() {
            let s = &self.slots[slot as usize];
            match &s.entry {
                Some(e) if s.generation == generation && e.queued == due => {
                    return Some((due, slot));
                }
                _ => {
                    self.expiry.pop();
                }
            }
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
            let Some(e) = &self.slots[slot as usize].entry else {
                continue;
            };
            match self.deadline(&e.flow) {
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
            let Some(e) = &self.slots[slot as usize].entry else {
                continue;
            };
            if self.deadline(&e.flow).0 > due {
                self.queue(slot); // it has had packets since: not the oldest after all
                continue;
            }
            self.evicted += 1;
            self.remove(slot, EndReason::LackOfResources, done);
            return;
        }
    }

    /// The slot of a packet's flow, and whether the packet goes in the flow's reverse direction.
    fn find(&self, p: &PacketInfo) -> Option<(u32, bool)> {
        let fwd = (p.vlan, p.proto, p.src, p.sport, p.dst, p.dport);
        if let Some(slot) = self.lookup(&fwd) {
            return Some((slot, false));
        }
        if !self.cfg.biflow {
            return None;
        }
        let rev = (p.vlan, p.proto, p.dst, p.dport, p.src, p.sport);
        self.lookup(&rev).map(|slot| (slot, true))
    }

    fn lookup(&self, key: &Key) -> Option<u32> {
        let slots = &self.slots;
        self.index
            .find(self.hasher.hash_one(key), |&s| {
                slots[s as usize]
                    .entry
                    .as_ref()
                    .is_some_and(|e| e.key == *key)
            })
            .copied()
    }

    fn insert(&mut self, p: &PacketInfo) -> u32 {
        let key = (p.vlan, p.proto, p.src, p.sport, p.dst, p.dport);
        let flow = Flow {
            vlan: p.vlan,
            proto: p.proto,
            src: p.src,
            sport: p.sport,
            dst: p.dst,
            dport: p.dport,
            start_ms: p.ts_ms,
            end_ms: p.ts_ms,
            forward: Counters::default(),
            reverse: Counters::default(),
            icmp: p.icmp,
            end_reason: EndReason::ForcedEnd,
            closing_since: None,
        };
        let hash = self.hasher.hash_one(key);
        let entry = Some(Entry {
            key,
            hash,
            flow,
            queued: 0,
        });
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize].entry = entry;
                slot
            }
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    entry,
                });
                (self.slots.len() - 1) as u32
            }
        };
        let slots = &self.slots;
        self.index.insert_unique(hash, slot, |&s| {
            slots[s as usize].entry.as_ref().map_or(0, |e| e.hash)
        });
        self.queue(slot);
        slot
    }

    /// Counts one packet; flows that ended are appended to `done`.
    pub fn observe(&mut self, p: &PacketInfo, done: &mut Vec<Flow>) {
        self.expire(p.ts_ms, done);
        let mut found = self.find(p);
        if let Some((slot, _)) = found
            && let Some(e) = &self.slots[slot as usize].entry
        {
            let f = &e.flow;
            let new_connection = f.closing_since.is_some() && p.tcp_flags & (SYN | ACK) == SYN;
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
        let (slot, reverse) = match found {
            Some(found) => found,
            None => {
                if self.index.len() >= self.cfg.max_flows {
                    self.evict(done);
                }
                (self.insert(p), false)
            }
        };
        let Some(e) = &mut self.slots[slot as usize].entry else {
            return;
        };
        let f = &mut e.flow;
        f.end_ms = f.end_ms.max(p.ts_ms);
        if reverse {
            f.reverse.add(p)
        } else {
            f.forward.add(p)
        }
        if p.tcp_flags & (FIN | RST) != 0 && f.closing_since.is_none() {
            f.closing_since = Some(p.ts_ms);
            // Closing brings the deadline forward: queue it again (the old entry goes stale).
            self.queue(slot);
        }
    }

    /// End of input: every flow ends (FIN/RST ones as ended, the rest forced).
    pub fn finish(self, done: &mut Vec<Flow>) {
        let mut rest: Vec<Flow> = self
            .slots
            .into_iter()
            .filter_map(|s| s.entry.map(|e| e.flow))
            .collect();
        rest.sort_by_key(|f| f.start_ms);
        for mut f in rest {
            f.end_reason = if f.closing_since.is_some() {
                EndReason::EndOfFlow
            } else {
                EndReason::ForcedEnd
            };
            done.push(f);
        }
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
}
