//! NetFlow v5 records as IPFIX Information Elements. v5 has no templates: every record is the
//! same 48 bytes (Cisco's format, which tshark, nfdump and GoFlow2 decode alike). Expressing that
//! layout as one built-in template lets v5 records go through the same columnar decoding, and
//! come out under the same element names, as IPFIX and NetFlow v9 records.

use super::template::{FieldSpec, Template};

/// The `@template` of v5 records: exporters' templates are numbered from 256, so an id below
/// that can never be confused with one (and 5 says where the records came from).
pub const V5_TEMPLATE_ID: u16 = 5;

/// paddingOctets: v5 records have two pads, kept as fields so every byte of the record is
/// accounted for (tshark shows them too).
const PADDING: u16 = 210;

/// The v5 record, field by field in wire order: (Information Element, length in bytes).
/// Lengths are v5's, which are reduced-size encodings for some elements (interfaces and AS
/// numbers are 4-byte elements sent in 2 bytes).
const FIELDS: [(u16, u16); 20] = [
    (8, 4),       // srcaddr: sourceIPv4Address
    (12, 4),      // dstaddr: destinationIPv4Address
    (15, 4),      // nexthop: ipNextHopIPv4Address
    (10, 2),      // input: ingressInterface
    (14, 2),      // output: egressInterface
    (2, 4),       // dPkts: packetDeltaCount
    (1, 4),       // dOctets: octetDeltaCount
    (22, 4),      // first: flowStartSysUpTime (ms of the exporter's uptime)
    (21, 4),      // last: flowEndSysUpTime
    (7, 2),       // srcport: sourceTransportPort
    (11, 2),      // dstport: destinationTransportPort
    (PADDING, 1), // pad1
    (6, 1),       // tcp_flags: tcpControlBits
    (4, 1),       // prot: protocolIdentifier
    (5, 1),       // tos: ipClassOfService
    (16, 2),      // src_as: bgpSourceAsNumber
    (17, 2),      // dst_as: bgpDestinationAsNumber
    (9, 1),       // src_mask: sourceIPv4PrefixLength
    (13, 1),      // dst_mask: destinationIPv4PrefixLength
    (PADDING, 2), // pad2
];

/// The built-in template that describes a NetFlow v5 record.
pub fn template() -> Template {
    Template::data(
        V5_TEMPLATE_ID,
        FIELDS
            .iter()
            .map(|&(id, length)| FieldSpec::new(id, 0, length))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::header::NETFLOW_V5_RECORD_LEN;
    use crate::wire::{Decoder, Registry, Value, WireError};
    use std::net::Ipv4Addr;

    #[test]
    fn the_template_is_exactly_one_record() {
        assert_eq!(template().min_record_len(), NETFLOW_V5_RECORD_LEN);
    }

    /// One record with every field set to something distinct.
    fn record(n: u8) -> Vec<u8> {
        let mut r = vec![10, 0, 0, n, 192, 168, 0, n, 172, 16, 0, 1];
        r.extend_from_slice(&[0, 3, 0, 4]); // input, output
        r.extend_from_slice(&[0, 0, 0, 5, 0, 0, 1, 0]); // dPkts 5, dOctets 256
        r.extend_from_slice(&[0, 0, 0x03, 0xe8, 0, 0, 0x07, 0xd0]); // first 1000, last 2000
        r.extend_from_slice(&[0x1f, 0x90, 0, 53]); // ports 8080, 53
        r.extend_from_slice(&[0, 0x12, 6, 0xb8]); // pad, flags SYN|ACK, TCP, tos
        r.extend_from_slice(&[0xfd, 0xe8, 0, 0x0d, 24, 16, 0, 0]); // AS 65000, 13, masks
        r
    }

    #[test]
    fn records_decode_as_information_elements() {
        let mut m = vec![
            0, 5, 0, 2, 0, 0, 0x27, 0x10, 0x64, 0x2c, 0x53, 0xf7, 0, 0, 0, 0,
        ];
        m.extend_from_slice(&[0, 0, 0, 42, 1, 7, 0, 0]); // flow_sequence 42, engine 1/7
        m.extend(record(1));
        m.extend(record(2));
        let mut d = Decoder::new(Registry::builtin(), Default::default());
        let out = d.decode(bytes::Bytes::from(m)).expect("decodes");
        assert_eq!(out.header.observation_domain, 0x0107);
        assert_eq!(out.header.sequence, 42);
        assert_eq!(out.header.sys_uptime_ms, Some(10_000));
        assert!(out.events.is_empty() && out.missing.is_empty());
        assert_eq!(
            d.template_count(),
            0,
            "the built-in layout is no exporter's template"
        );
        assert_eq!(out.batches.len(), 1);
        let b = &out.batches[0];
        assert_eq!((b.len(), b.plan.template.id), (2, V5_TEMPLATE_ID));
        let value = |r: usize, name: &str| {
            let f = b.plan.fields.iter().position(|f| f.element.name == name);
            f.map(|f| b.value(&out.buf, r, f))
        };
        let u = |x: u64| Some(Value::Unsigned(x));
        assert_eq!(
            value(1, "sourceIPv4Address"),
            Some(Value::Ipv4(Ipv4Addr::new(10, 0, 0, 2)))
        );
        assert_eq!(
            value(1, "ipNextHopIPv4Address"),
            Some(Value::Ipv4(Ipv4Addr::new(172, 16, 0, 1)))
        );
        assert_eq!(value(0, "ingressInterface"), u(3));
        assert_eq!(value(0, "egressInterface"), u(4));
        assert_eq!(value(0, "packetDeltaCount"), u(5));
        assert_eq!(value(0, "octetDeltaCount"), u(256));
        assert_eq!(value(0, "flowStartSysUpTime"), u(1000));
        assert_eq!(value(0, "flowEndSysUpTime"), u(2000));
        assert_eq!(value(0, "sourceTransportPort"), u(8080));
        assert_eq!(value(0, "destinationTransportPort"), u(53));
        assert_eq!(value(0, "tcpControlBits"), u(0x12));
        assert_eq!(value(0, "protocolIdentifier"), u(6));
        assert_eq!(value(0, "ipClassOfService"), u(0xb8));
        assert_eq!(value(0, "bgpSourceAsNumber"), u(65000));
        assert_eq!(value(0, "bgpDestinationAsNumber"), u(13));
        assert_eq!(value(0, "sourceIPv4PrefixLength"), u(24));
        assert_eq!(value(0, "destinationIPv4PrefixLength"), u(16));
    }

    #[test]
    fn a_packet_that_is_not_exactly_its_records_is_an_error() {
        let mut m = vec![0, 5, 0, 2];
        m.resize(24, 0);
        m.extend(record(1)); // count says 2
        let mut d = Decoder::new(Registry::builtin(), Default::default());
        assert!(matches!(
            d.decode(bytes::Bytes::from(m)),
            Err(WireError::V5Length { len: 72, count: 2 })
        ));
    }
}
