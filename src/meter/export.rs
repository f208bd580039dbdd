//! Flows out as IPFIX through the wire encoder: an RFC 5655 file, templates first, messages of at
//! most 64 KiB. Biflows carry the reverse direction as RFC 5103 reverse elements (PEN 29305).
//!
//! Elements (IANA): source/destination IPv4 or IPv6 address, ports, protocolIdentifier, vlanId,
//! flowStart/EndMilliseconds, packetDeltaCount, octetDeltaCount (IP bytes),
//! layer2OctetDeltaCount (frame bytes), tcpControlBits (union), icmpTypeCodeIPv4/IPv6,
//! flowEndReason; CERT initialTCPFlags (as YAF exports it: IANA has no such element); and for
//! biflows reversePacketDeltaCount, reverseOctetDeltaCount, reverseLayer2OctetDeltaCount,
//! reverseTcpControlBits, CERT reverseInitialTCPFlags.

use super::flow::Flow;
use crate::wire::registry::{CERT_PEN, CERT_REVERSE_BIT, REVERSE_PEN};
use crate::wire::{FieldSpec, FieldValue, FileWriter, Plan, Registry, Template, WireError};
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
    values: Vec<FieldValue>,
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
            values: Vec::with_capacity(20),
            flows: 0,
        })
    }

    pub fn write(&mut self, f: &Flow) -> std::io::Result<()> {
        let v = &mut self.values;
        v.clear();
        let (src, dst) = match (f.src, f.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => (FieldValue::Ipv4(s), FieldValue::Ipv4(d)),
            (IpAddr::V6(s), IpAddr::V6(d)) => (FieldValue::Ipv6(s), FieldValue::Ipv6(d)),
            _ => return Ok(()), // a flow never mixes families
        };
        let plan = if matches!(src, FieldValue::Ipv4(_)) {
            &self.plans[0]
        } else {
            &self.plans[1]
        };
        v.extend([
            src,
            dst,
            FieldValue::Unsigned(f.sport as u64),
            FieldValue::Unsigned(f.dport as u64),
            FieldValue::Unsigned(f.proto as u64),
            FieldValue::Unsigned(f.vlan as u64),
            FieldValue::DateTimeMilliseconds(f.start_ms),
            FieldValue::DateTimeMilliseconds(f.end_ms),
            FieldValue::Unsigned(f.forward.packets),
            FieldValue::Unsigned(f.forward.octets),
            FieldValue::Unsigned(f.forward.layer2_octets),
            FieldValue::Unsigned(f.forward.tcp_flags as u64),
            FieldValue::Unsigned(f.forward.initial_tcp_flags as u64),
            FieldValue::Unsigned(f.icmp as u64),
            FieldValue::Unsigned(f.end_reason as u64),
        ]);
        if self.biflow {
            v.extend([
                FieldValue::Unsigned(f.reverse.packets),
                FieldValue::Unsigned(f.reverse.octets),
                FieldValue::Unsigned(f.reverse.layer2_octets),
                FieldValue::Unsigned(f.reverse.tcp_flags as u64),
                FieldValue::Unsigned(f.reverse.initial_tcp_flags as u64),
            ]);
        }
        // Every value fits its field by construction; an error would be a bug here, reported.
        self.out
            .builder
            .add_record(plan, v)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        self.flows += 1;
        self.out.drain()
    }

    pub fn finish(self) -> std::io::Result<W> {
        self.out.finish()
    }
}
