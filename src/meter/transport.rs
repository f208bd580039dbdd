//! Slicing a captured frame down to its transport payload (UDP or TCP), by link type.

use super::capture::Packet;
use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use pcap_file::DataLink;
use std::net::{IpAddr, SocketAddr};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Udp,
    Tcp,
}

/// The transport-layer view of one frame.
#[derive(Debug)]
pub struct Segment<'a> {
    pub protocol: Protocol,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    /// Offset of the payload in the frame.
    pub payload_offset: usize,
    pub payload: &'a [u8],
    /// TCP only.
    pub seq: u32,
    pub syn: bool,
    pub fin_or_rst: bool,
    /// The IP packet is a fragment (its payload is not the whole datagram).
    pub fragmented: bool,
}

/// Slices `packet` to UDP or TCP; `None` for anything else or a malformed frame.
pub fn segment<'a>(packet: &Packet<'a>) -> Option<Segment<'a>> {
    let data = packet.data;
    let sliced = match packet.link {
        DataLink::ETHERNET => SlicedPacket::from_ethernet(data).ok()?,
        DataLink::RAW | DataLink::IPV4 | DataLink::IPV6 => SlicedPacket::from_ip(data).ok()?,
        DataLink::LINUX_SLL => SlicedPacket::from_linux_sll(data).ok()?,
        // BSD loopback: a 4-byte address family, then IP.
        DataLink::NULL | DataLink::LOOP => SlicedPacket::from_ip(data.get(4..)?).ok()?,
        // Linux cooked v2: a 20-byte header, then IP.
        DataLink::LINUX_SLL2 => SlicedPacket::from_ip(data.get(20..)?).ok()?,
        _ => return None,
    };
    let (src_ip, dst_ip, fragmented): (IpAddr, IpAddr, bool) = match &sliced.net {
        Some(NetSlice::Ipv4(ip)) => (
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
            ip.is_payload_fragmented(),
        ),
        Some(NetSlice::Ipv6(ip)) => (
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
            ip.is_payload_fragmented(),
        ),
        _ => return None,
    };
    let base = data.as_ptr() as usize;
    match sliced.transport {
        Some(TransportSlice::Udp(u)) => Some(Segment {
            protocol: Protocol::Udp,
            src: SocketAddr::new(src_ip, u.source_port()),
            dst: SocketAddr::new(dst_ip, u.destination_port()),
            payload_offset: u.payload().as_ptr() as usize - base,
            payload: u.payload(),
            seq: 0,
            syn: false,
            fin_or_rst: false,
            fragmented,
        }),
        Some(TransportSlice::Tcp(t)) => Some(Segment {
            protocol: Protocol::Tcp,
            src: SocketAddr::new(src_ip, t.source_port()),
            dst: SocketAddr::new(dst_ip, t.destination_port()),
            payload_offset: t.payload().as_ptr() as usize - base,
            payload: t.payload(),
            seq: t.sequence_number(),
            syn: t.syn(),
            fin_or_rst: t.fin() || t.rst(),
            fragmented,
        }),
        _ => None,
    }
}
