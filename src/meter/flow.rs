//! The flow table of the Metering Process: packets -> biflows (RFC 5103; or uniflows), ended by
//! idle timeout, active timeout, TCP FIN/RST (with a short linger for the last ACKs), end of
//! input, or eviction when the table is full. Time is the packets' own (capture time), so a
//! capture meters the same way however fast it is read.

use super::packet::PacketInfo;
use rustc_hash::FxHashMap;
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

pub struct FlowTable {
    cfg: MeterConfig,
    /// FxHash: a capture's 5-tuples are not chosen to collide, and this is the per-packet path.
    flows: FxHashMap<Key, Flow>,
    last_sweep_ms: u64,
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
            flows: FxHashMap::default(),
            last_sweep_ms: 0,
            evicted: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// The table key of a packet, and whether the packet goes in the flow's reverse direction.
    fn key(&self, p: &PacketInfo) -> (Key, bool) {
        let fwd = (p.vlan, p.proto, p.src, p.sport, p.dst, p.dport);
        if !self.cfg.biflow {
            return (fwd, false);
        }
        if self.flows.contains_key(&fwd) {
            return (fwd, false);
        }
        let rev = (p.vlan, p.proto, p.dst, p.dport, p.src, p.sport);
        if self.flows.contains_key(&rev) {
            (rev, true)
        } else {
            (fwd, false)
        }
    }

    /// Counts one packet; flows that ended are appended to `done`.
    pub fn observe(&mut self, p: &PacketInfo, done: &mut Vec<Flow>) {
        if p.ts_ms >= self.last_sweep_ms + 1_000 {
            self.sweep(p.ts_ms, done);
            self.last_sweep_ms = p.ts_ms;
        }
        let (key, reverse) = self.key(p);
        if let Some(f) = self.flows.get(&key) {
            let new_connection = f.closing_since.is_some() && p.tcp_flags & (SYN | ACK) == SYN;
            let too_long = p.ts_ms.saturating_sub(f.start_ms) >= self.cfg.active_ms;
            if (new_connection || too_long)
                && let Some(mut old) = self.flows.remove(&key)
            {
                old.end_reason = if too_long {
                    EndReason::ActiveTimeout
                } else {
                    EndReason::EndOfFlow
                };
                done.push(old);
            }
        }
        if !self.flows.contains_key(&key) && self.flows.len() >= self.cfg.max_flows {
            self.evict(done);
        }
        let f = self.flows.entry(key).or_insert_with(|| Flow {
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
        });
        f.end_ms = f.end_ms.max(p.ts_ms);
        if reverse {
            f.reverse.add(p)
        } else {
            f.forward.add(p)
        }
        if p.tcp_flags & (FIN | RST) != 0 && f.closing_since.is_none() {
            f.closing_since = Some(p.ts_ms);
        }
    }

    fn sweep(&mut self, now: u64, done: &mut Vec<Flow>) {
        let (idle, active) = (self.cfg.idle_ms, self.cfg.active_ms);
        let ended: Vec<(Key, EndReason)> = self
            .flows
            .iter()
            .filter_map(|(k, f)| {
                let reason = if f
                    .closing_since
                    .is_some_and(|c| now.saturating_sub(c) >= LINGER_MS.min(idle))
                {
                    EndReason::EndOfFlow
                } else if now.saturating_sub(f.end_ms) >= idle {
                    EndReason::IdleTimeout
                } else if now.saturating_sub(f.start_ms) >= active {
                    EndReason::ActiveTimeout
                } else {
                    return None;
                };
                Some((*k, reason))
            })
            .collect();
        for (k, reason) in ended {
            if let Some(mut f) = self.flows.remove(&k) {
                f.end_reason = reason;
                done.push(f);
            }
        }
    }

    /// The table is full: the flow idle the longest goes.
    fn evict(&mut self, done: &mut Vec<Flow>) {
        let oldest = self
            .flows
            .iter()
            .min_by_key(|(_, f)| f.end_ms)
            .map(|(k, _)| *k);
        if let Some(k) = oldest
            && let Some(mut f) = self.flows.remove(&k)
        {
            f.end_reason = EndReason::LackOfResources;
            self.evicted += 1;
            done.push(f);
        }
    }

    /// End of input: every flow ends (FIN/RST ones as ended, the rest forced).
    pub fn finish(mut self, done: &mut Vec<Flow>) {
        let mut rest: Vec<Flow> = self.flows.drain().map(|(_, f)| f).collect();
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
