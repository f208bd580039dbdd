//! Flows out as IPFIX through the wire encoder: an RFC 5655 file, templates first, messages of at
//! most 64 KiB. Biflows carry the reverse direction as RFC 5103 reverse elements (PEN 29305).
//!
//! Elements (IANA): source/destination IPv4 or IPv6 address, ports, protocolIdentifier, vlanId,
//! flowStart/EndMilliseconds, packetDeltaCount, octetDeltaCount (IP bytes),
//! layer2OctetDeltaCount (frame bytes), tcpControlBits (union), icmpTypeCodeIPv4/IPv6,
//! flowEndReason; CERT initialTCPFlags (as YAF exports it: IANA has no such element); and for
//! biflows reversePacketDeltaCount, reverseOctetDeltaCount, reverseLayer2OctetDeltaCount,
//! reverseTcpControlBits, CERT reverseInitialTCPFlags.

use super::flow::{Counters, Flow};
use crate::wire::registry::{CERT_PEN, CERT_REVERSE_BIT, REVERSE_PEN};
use crate::wire::{FieldSpec, FileWriter, Plan, Registry, Template, WireError};
use std::io::Write;
use std::net::IpAddr;

const V4: u16 = 256;
/// CERT initialTCPFlags: the flags of the flow's first packet (YAF's element).
const INITIAL_TCP_FLAGS: u16 = 14;
const V6: u16 = 257;

fn template(id: u16, v6: bool, biflow: bool) -> Template {
    let (src, dst, icmp, addr_len) = if v6 {
        (27, 28, 139, 16)
    } else {
        (8, 12, 32, 4)
    };
    let mut f = vec![
        FieldSpec::new(src, 0, addr_len),
        FieldSpec::new(dst, 0, addr_len),
        FieldSpec::new(7, 0, 2),
        FieldSpec::new(11, 0, 2),
        FieldSpec::new(4, 0, 1),
        FieldSpec::new(58, 0, 2),
        FieldSpec::new(152, 0, 8),
        FieldSpec::new(153, 0, 8),
        FieldSpec::new(2, 0, 8),
        FieldSpec::new(1, 0, 8),
        FieldSpec::new(352, 0, 8),
        FieldSpec::new(6, 0, 2),
        FieldSpec::new(INITIAL_TCP_FLAGS, CERT_PEN, 1),
        FieldSpec::new(icmp, 0, 2),
        FieldSpec::new(136, 0, 1),
    ];
    if biflow {
        f.extend([
            FieldSpec::new(2, REVERSE_PEN, 8),
            FieldSpec::new(1, REVERSE_PEN, 8),
            FieldSpec::new(352, REVERSE_PEN, 8),
            FieldSpec::new(6, REVERSE_PEN, 2),
            FieldSpec::new(INITIAL_TCP_FLAGS | CERT_REVERSE_BIT, CERT_PEN, 1),
        ]);
    }
    Template::data(id, f)
}

/// Writes flows to an IPFIX file.
pub struct FlowWriter<W: Write> {
    out: FileWriter<W>,
    plans: [Plan; 2],
    biflow: bool,
    record: Vec<u8>,
    pub flows: u64,
}

impl<W: Write> FlowWriter<W> {
    pub fn new(out: W, observation_domain: u32, biflow: bool) -> Result<FlowWriter<W>, WireError> {
        let reg = Registry::builtin();
        let t = [template(V4, false, biflow), template(V6, true, biflow)];
        let mut out = FileWriter::new(out, observation_domain);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as u32);
        out.builder.set_export_time(now);
        for t in &t {
            out.builder.add_template(t)?;
        }
        let [a, b] = t;
        Ok(FlowWriter {
            out,
            plans: [Plan::compile(a, &reg), Plan::compile(b, &reg)],
            biflow,
            record: Vec::with_capacity(128),
            flows: 0,
        })
    }

    pub fn write(&mut self, f: &Flow) -> std::io::Result<()> {
        // The record's bytes in template order, written directly: the fields are fixed and
        // every value fits its field by construction (this is per flow: the generic
        // `add_record` with a FieldValue per field cost ~4x as much).
        let r = &mut self.record;
        r.clear();
        let plan = match (f.src, f.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                r.extend_from_slice(&s.octets());
                r.extend_from_slice(&d.octets());
                &self.plans[0]
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                r.extend_from_slice(&s.octets());
                r.extend_from_slice(&d.octets());
                &self.plans[1]
            }
            _ => return Ok(()), // a flow never mixes families
        };
        r.extend_from_slice(&f.sport.to_be_bytes());
        r.extend_from_slice(&f.dport.to_be_bytes());
        r.push(f.proto);
        r.extend_from_slice(&f.vlan.to_be_bytes());
        r.extend_from_slice(&f.start_ms.to_be_bytes());
        r.extend_from_slice(&f.end_ms.to_be_bytes());
        let counters = |r: &mut Vec<u8>, c: &Counters| {
            r.extend_from_slice(&c.packets.to_be_bytes());
            r.extend_from_slice(&c.octets.to_be_bytes());
            r.extend_from_slice(&c.layer2_octets.to_be_bytes());
            r.extend_from_slice(&u16::from(c.tcp_flags).to_be_bytes());
            r.push(c.initial_tcp_flags);
        };
        counters(r, &f.forward);
        r.extend_from_slice(&f.icmp.to_be_bytes());
        r.push(f.end_reason as u8);
        if self.biflow {
            counters(r, &f.reverse);
        }
        // A length that does not match the template would be a bug here, reported.
        self.out
            .builder
            .add_encoded_record(plan, r)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        self.flows += 1;
        self.out.drain()
    }

    pub fn finish(self) -> std::io::Result<W> {
        self.out.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meter::flow::EndReason;
    use crate::wire::FieldValue;

    fn flow(src: IpAddr, dst: IpAddr) -> Flow {
        let c = |n: u64| Counters {
            packets: n,
            octets: n * 1000 + 1,
            layer2_octets: u64::MAX - n,
            initial_tcp_flags: 0x02,
            tcp_flags: 0x1b,
        };
        Flow {
            vlan: 4094,
            proto: 6,
            src,
            sport: 65535,
            dst,
            dport: 443,
            start_ms: 1_700_000_000_123,
            end_ms: 1_700_000_009_999,
            forward: c(3),
            reverse: c(5),
            icmp: 0x0303,
            end_reason: EndReason::EndOfFlow,
        }
    }

    /// The direct encoding gives the same bytes as the generic encoder fed a FieldValue per
    /// template field.
    #[test]
    fn records_match_the_generic_encoder() {
        let flows = [
            flow([10, 0, 0, 1].into(), [192, 0, 2, 9].into()),
            flow(
                "2001:db8::1".parse().expect("v6"),
                "2001:db8::2".parse().expect("v6"),
            ),
        ];
        for biflow in [false, true] {
            let mut w = FlowWriter::new(Vec::new(), 7, biflow).expect("writer");
            w.out.builder.set_export_time(1);
            for f in &flows {
                w.write(f).expect("write");
            }
            let ours = w.finish().expect("finish");

            let reg = Registry::builtin();
            let t = [template(V4, false, biflow), template(V6, true, biflow)];
            let mut reference = FileWriter::new(Vec::new(), 7);
            reference.builder.set_export_time(1);
            for t in &t {
                reference.builder.add_template(t).expect("template");
            }
            let plans = t.map(|t| Plan::compile(t, &reg));
            for f in &flows {
                let (plan, src, dst) = match (f.src, f.dst) {
                    (IpAddr::V4(s), IpAddr::V4(d)) => {
                        (&plans[0], FieldValue::Ipv4(s), FieldValue::Ipv4(d))
                    }
                    (IpAddr::V6(s), IpAddr::V6(d)) => {
                        (&plans[1], FieldValue::Ipv6(s), FieldValue::Ipv6(d))
                    }
                    _ => unreachable!("one family per flow"),
                };
                let direction = |c: &Counters| {
                    [
                        FieldValue::Unsigned(c.packets),
                        FieldValue::Unsigned(c.octets),
                        FieldValue::Unsigned(c.layer2_octets),
                        FieldValue::Unsigned(c.tcp_flags as u64),
                        FieldValue::Unsigned(c.initial_tcp_flags as u64),
                    ]
                };
                let mut v = vec![
                    src,
                    dst,
                    FieldValue::Unsigned(f.sport as u64),
                    FieldValue::Unsigned(f.dport as u64),
                    FieldValue::Unsigned(f.proto as u64),
                    FieldValue::Unsigned(f.vlan as u64),
                    FieldValue::DateTimeMilliseconds(f.start_ms),
                    FieldValue::DateTimeMilliseconds(f.end_ms),
                ];
                v.extend(direction(&f.forward));
                v.push(FieldValue::Unsigned(f.icmp as u64));
                v.push(FieldValue::Unsigned(f.end_reason as u64));
                if biflow {
                    v.extend(direction(&f.reverse));
                }
                reference.builder.add_record(plan, &v).expect("record");
            }
            assert_eq!(ours, reference.finish().expect("finish"), "biflow {biflow}");
        }
    }

    #[test]
    fn a_record_of_the_wrong_length_is_refused() {
        let reg = Registry::builtin();
        let plan = Plan::compile(template(V4, false, false), &reg);
        let mut w = FileWriter::new(Vec::new(), 7);
        assert!(w.builder.add_encoded_record(&plan, &[0; 3]).is_err());
    }
}
