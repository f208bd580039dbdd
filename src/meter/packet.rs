//! One captured frame as the Metering Process sees it: flow key fields, sizes, TCP flags, ICMP
//! type and code. IP fragments are counted to their flow: the first fragment carries the ports,
//! later ones are matched to it by (source, destination, protocol, identification).

use super::capture::Packet;
use etherparse::{EtherType, LaxLinkExtSlice, LaxNetSlice, LaxSlicedPacket, TransportSlice};
use pcap_file::DataLink;
use std::collections::HashMap;
use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketInfo {
    /// Milliseconds since the Unix epoch.
    pub ts_ms: u64,
    /// Outer 802.1Q VLAN id; 0 without a tag.
    pub vlan: u16,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub proto: u8,
    pub sport: u16,
    pub dport: u16,
    /// IP total length (header and payload): what octetDeltaCount counts.
    pub ip_len: u32,
    /// Frame length on the wire: what layer2OctetDeltaCount counts.
    pub frame_len: u32,
    pub tcp_flags: u8,
    /// ICMP type << 8 | code (icmpTypeCodeIPv4/IPv6).
    pub icmp: u16,
}

/// Why a frame does not count to any flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    NotIp,
    /// A later fragment whose first fragment was not seen.
    OrphanFragment,
    Malformed(String),
}

const PROTO_TCP: u8 = 6;
const PROTO_UDP: u8 = 17;
/// First fragments remembered for their followers, at most.
const MAX_FRAGMENTS: usize = 65_536;

/// Ports of fragmented datagrams, by (source, destination, protocol, identification).
#[derive(Debug, Default)]
pub struct Fragments {
    ports: HashMap<(IpAddr, IpAddr, u8, u32), (u16, u16)>,
}

impl Fragments {
    fn remember(&mut self, key: (IpAddr, IpAddr, u8, u32), ports: (u16, u16)) {
        if self.ports.len() >= MAX_FRAGMENTS {
            self.ports.clear(); // rare; later fragments of old datagrams become orphans
        }
        self.ports.insert(key, ports);
    }
}

fn tcp_flags(t: &etherparse::TcpSlice<'_>) -> u8 {
    [
        t.fin(),
        t.syn(),
        t.rst(),
        t.psh(),
        t.ack(),
        t.urg(),
        t.ece(),
        t.cwr(),
    ]
    .iter()
    .enumerate()
    .fold(0u8, |acc, (i, &on)| acc | ((on as u8) << i))
}

/// The network layer's part of a packet.
struct NetPart<'a> {
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    ip_len: u32,
    /// (identification, is the first fragment) for fragments.
    frag: Option<(u32, bool)>,
    /// IPv4 payload (for a first fragment's ports).
    first_payload: &'a [u8],
}

/// Classifies one frame.
pub fn classify(p: &Packet<'_>, frags: &mut Fragments) -> Result<PacketInfo, Skip> {
    let data = p.data;
    // Lax slicing: a frame cut short by the capture's snap length still has its headers, and
    // counts with its declared lengths (as tshark counts it).
    let sliced = match p.link {
        DataLink::ETHERNET => {
            LaxSlicedPacket::from_ethernet(data).map_err(|e| Skip::Malformed(e.to_string()))?
        }
        DataLink::RAW | DataLink::IPV4 | DataLink::IPV6 => {
            LaxSlicedPacket::from_ip(data).map_err(|e| Skip::Malformed(e.to_string()))?
        }
        DataLink::LINUX_SLL => {
            let proto = data.get(14..16).ok_or(Skip::NotIp)?;
            LaxSlicedPacket::from_ether_type(
                EtherType(u16::from_be_bytes([proto[0], proto[1]])),
                data.get(16..).ok_or(Skip::NotIp)?,
            )
        }
        DataLink::NULL | DataLink::LOOP => {
            LaxSlicedPacket::from_ip(data.get(4..).ok_or(Skip::NotIp)?)
                .map_err(|e| Skip::Malformed(e.to_string()))?
        }
        DataLink::LINUX_SLL2 => LaxSlicedPacket::from_ip(data.get(20..).ok_or(Skip::NotIp)?)
            .map_err(|e| Skip::Malformed(e.to_string()))?,
        _ => return Err(Skip::NotIp),
    };
    let vlan = sliced
        .link_exts
        .iter()
        .find_map(|e| match e {
            LaxLinkExtSlice::Vlan(v) => Some(v.vlan_identifier().value()),
            _ => None,
        })
        .unwrap_or(0);
    let net: NetPart<'_> = match &sliced.net {
        Some(LaxNetSlice::Ipv4(ip)) => {
            let h = ip.header();
            let first = h.fragments_offset().value() == 0;
            let frag = ip
                .is_payload_fragmented()
                .then_some((h.identification() as u32, first));
            let payload = ip.payload().payload;
            NetPart {
                src: h.source_addr().into(),
                dst: h.destination_addr().into(),
                proto: h.protocol().0,
                ip_len: h.total_len() as u32,
                frag,
                first_payload: payload,
            }
        }
        Some(LaxNetSlice::Ipv6(ip)) => {
            let h = ip.header();
            let frag = ip.is_payload_fragmented().then_some((0, false));
            let proto = ip.payload().ip_number.0;
            NetPart {
                src: h.source_addr().into(),
                dst: h.destination_addr().into(),
                proto,
                ip_len: h.payload_length() as u32 + 40,
                frag,
                first_payload: &[],
            }
        }
        _ => return Err(Skip::NotIp),
    };
    let NetPart {
        src,
        dst,
        proto,
        ip_len,
        frag,
        first_payload,
    } = net;
    let ts_ms = p.timestamp.as_millis() as u64;
    let mut info = PacketInfo {
        ts_ms,
        vlan,
        src,
        dst,
        proto,
        sport: 0,
        dport: 0,
        ip_len,
        frame_len: p.orig_len.max(data.len() as u32),
        tcp_flags: 0,
        icmp: 0,
    };
    match &sliced.transport {
        Some(TransportSlice::Tcp(t)) => {
            info.sport = t.source_port();
            info.dport = t.destination_port();
            info.tcp_flags = tcp_flags(t);
        }
        Some(TransportSlice::Udp(u)) => {
            info.sport = u.source_port();
            info.dport = u.destination_port();
        }
        Some(TransportSlice::Icmpv4(i)) => {
            info.icmp = (i.type_u8() as u16) << 8 | i.code_u8() as u16
        }
        Some(TransportSlice::Icmpv6(i)) => {
            info.icmp = (i.type_u8() as u16) << 8 | i.code_u8() as u16
        }
        _ => {}
    }
    if let Some((id, first)) = frag
        && (proto == PROTO_TCP || proto == PROTO_UDP)
    {
        let key = (src, dst, proto, id);
        if first {
            // The transport header sits at the start of the first fragment's payload.
            let payload = first_payload;
            if payload.len() >= 4 {
                info.sport = u16::from_be_bytes([payload[0], payload[1]]);
                info.dport = u16::from_be_bytes([payload[2], payload[3]]);
                if proto == PROTO_TCP && payload.len() >= 14 {
                    info.tcp_flags = payload[13];
                }
            }
            frags.remember(key, (info.sport, info.dport));
        } else {
            let (sp, dp) = frags.ports.get(&key).copied().ok_or(Skip::OrphanFragment)?;
            info.sport = sp;
            info.dport = dp;
        }
    }
    Ok(info)
}
