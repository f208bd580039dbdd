//! One captured frame as the Metering Process sees it: flow key fields, sizes, TCP flags, ICMP
//! type and code. IP fragments are counted to their flow: the first fragment carries the ports,
//! later ones are matched to it by (source, destination, protocol, identification).

use super::capture::Packet;
use etherparse::{Ipv4HeaderSlice, Ipv6ExtensionSlice, Ipv6ExtensionsSlice, Ipv6HeaderSlice};
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

/// The fragment key: (source, destination, protocol, identification) for IPv4; for IPv6 the
/// protocol is 0, since only the first fragment's chain of headers names it (RFC 8200 4.5:
/// fragments are matched by addresses and identification).
type FragmentKey = (IpAddr, IpAddr, u8, u32);

/// Protocol and ports of fragmented datagrams, from their first fragment.
#[derive(Debug, Default)]
pub struct Fragments {
    ports: HashMap<FragmentKey, (u8, u16, u16)>,
}

impl Fragments {
    fn remember(&mut self, key: FragmentKey, ports: (u8, u16, u16)) {
        if self.ports.len() >= MAX_FRAGMENTS {
            self.ports.clear(); // rare; later fragments of old datagrams become orphans
        }
        self.ports.insert(key, ports);
    }
}

/// Ether types the link walk knows.
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_MPLS: u16 = 0x8847;
const ETHERTYPE_MPLS_MULTICAST: u16 = 0x8848;
/// 802.1Q, 802.1ad (QinQ) and the pre-standard QinQ tags.
const VLAN_TAGS: [u16; 4] = [0x8100, 0x88a8, 0x9100, 0x9200];
/// Tags and labels followed at most: real stacks are 1-3 deep; crafted ones end here.
const MAX_LINK_HEADERS: usize = 16;

const PROTO_SCTP: u8 = 132;
const PROTO_UDPLITE: u8 = 136;
const PROTO_ICMP: u8 = 1;
const PROTO_ICMPV6: u8 = 58;

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Follows VLAN tags (802.1Q, QinQ) and MPLS labels from an ether type to the IP packet. The
/// flow's VLAN is the outer tag. Under MPLS the payload is IPv4 or IPv6 by its version nibble,
/// as tshark guesses it.
fn link_walk(mut ether_type: u16, mut rest: &[u8]) -> Result<(u16, &[u8]), Skip> {
    let mut vlan = None;
    for _ in 0..MAX_LINK_HEADERS {
        match ether_type {
            ETHERTYPE_IPV4 | ETHERTYPE_IPV6 => return Ok((vlan.unwrap_or(0), rest)),
            t if VLAN_TAGS.contains(&t) => {
                let tci = be16(rest, 0).ok_or_else(|| cut("VLAN tag"))?;
                ether_type = be16(rest, 2).ok_or_else(|| cut("VLAN tag"))?;
                vlan.get_or_insert(tci & 0x0fff);
                rest = &rest[4..];
            }
            ETHERTYPE_MPLS | ETHERTYPE_MPLS_MULTICAST => {
                for _ in 0..MAX_LINK_HEADERS {
                    let bottom = rest.get(2).ok_or_else(|| cut("MPLS label"))? & 1 == 1;
                    rest = rest.get(4..).ok_or_else(|| cut("MPLS label"))?;
                    if bottom {
                        return match rest.first().map(|b| b >> 4) {
                            Some(4) | Some(6) => Ok((vlan.unwrap_or(0), rest)),
                            _ => Err(Skip::NotIp),
                        };
                    }
                }
                return Err(Skip::Malformed("MPLS label stack too deep".into()));
            }
            _ => return Err(Skip::NotIp),
        }
    }
    Err(Skip::Malformed("too many VLAN tags".into()))
}

fn has_ports(proto: u8) -> bool {
    matches!(proto, PROTO_TCP | PROTO_UDP | PROTO_SCTP | PROTO_UDPLITE)
}

fn cut(what: &str) -> Skip {
    Skip::Malformed(format!("frame ends inside a {what}"))
}

/// The IP packet inside a frame of the capture's link type, with its outer VLAN.
fn ip_of<'a>(p: &Packet<'a>) -> Result<(u16, &'a [u8]), Skip> {
    let data = p.data;
    match p.link {
        DataLink::ETHERNET => link_walk(
            be16(data, 12).ok_or(Skip::NotIp)?,
            data.get(14..).unwrap_or(&[]),
        ),
        DataLink::RAW | DataLink::IPV4 | DataLink::IPV6 => Ok((0, data)),
        // Linux cooked v1: protocol at 14, header 16 bytes; v2: protocol first, 20 bytes.
        DataLink::LINUX_SLL => link_walk(
            be16(data, 14).ok_or(Skip::NotIp)?,
            data.get(16..).unwrap_or(&[]),
        ),
        DataLink::LINUX_SLL2 => link_walk(
            be16(data, 0).ok_or(Skip::NotIp)?,
            data.get(20..).unwrap_or(&[]),
        ),
        // BSD loopback: a 4-byte address family, then IP.
        DataLink::NULL | DataLink::LOOP => Ok((0, data.get(4..).ok_or(Skip::NotIp)?)),
        _ => Err(Skip::NotIp),
    }
}

/// The network layer's part of a packet.
struct NetPart<'a> {
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    ip_len: u32,
    /// (identification, is the first fragment, protocol in the fragment key) for fragments.
    frag: Option<(u32, bool, u8)>,
    /// The transport header and what follows, as far as the frame holds it.
    payload: &'a [u8],
}

fn ipv4(ip: &[u8]) -> Result<NetPart<'_>, Skip> {
    let h = Ipv4HeaderSlice::from_slice(ip).map_err(|e| Skip::Malformed(e.to_string()))?;
    let header_len = h.slice().len();
    // A total length shorter than the header: segmentation offload (TSO/GSO) captures write 0
    // there; the frame holds the whole packet, as tshark takes it.
    let total = match h.total_len() as usize {
        t if t < header_len => ip.len(),
        t => t,
    };
    // Lax: a frame cut by the snap length still counts with its declared length (as tshark
    // counts it); padding after the declared length is not payload.
    let payload = ip
        .get(header_len..total.clamp(header_len, ip.len()))
        .unwrap_or(&[]);
    let frag = h.is_fragmenting_payload().then(|| {
        (
            h.identification() as u32,
            h.fragments_offset().value() == 0,
            h.protocol().0,
        )
    });
    Ok(NetPart {
        src: IpAddr::V4(h.source_addr()),
        dst: IpAddr::V4(h.destination_addr()),
        proto: h.protocol().0,
        ip_len: total as u32,
        frag,
        payload,
    })
}

fn ipv6(ip: &[u8]) -> Result<NetPart<'_>, Skip> {
    let h = Ipv6HeaderSlice::from_slice(ip).map_err(|e| Skip::Malformed(e.to_string()))?;
    // Payload length 0: a jumbogram or BIG TCP (the real length is elsewhere, or only the frame
    // knows it): the frame holds the packet.
    let length = match h.payload_length() as usize {
        0 => ip.len().saturating_sub(40),
        l => l,
    };
    let end = (40 + length).min(ip.len());
    let (exts, next, payload, _) =
        Ipv6ExtensionsSlice::from_slice_lax(h.next_header(), ip.get(40..end).unwrap_or(&[]));
    let frag = if exts.is_fragmenting_payload() {
        exts.clone().into_iter().find_map(|e| match e {
            Ipv6ExtensionSlice::Fragment(f) => {
                Some((f.identification(), f.fragment_offset().value() == 0, 0))
            }
            _ => None,
        })
    } else {
        None
    };
    Ok(NetPart {
        src: IpAddr::V6(h.source_addr()),
        dst: IpAddr::V6(h.destination_addr()),
        proto: next.0,
        ip_len: length as u32 + 40,
        frag,
        payload,
    })
}

/// Classifies one frame. Inlined: its result is large (addresses, an error with a message) and
/// returning it by value cost ~60 instructions a packet.
#[inline]
pub fn classify(p: &Packet<'_>, frags: &mut Fragments) -> Result<PacketInfo, Skip> {
    let (vlan, ip) = ip_of(p)?;
    let net = match ip.first().map(|b| b >> 4) {
        Some(4) => ipv4(ip)?,
        Some(6) => ipv6(ip)?,
        _ => return Err(Skip::Malformed("not an IPv4 or IPv6 header".into())),
    };
    let NetPart {
        src,
        dst,
        proto,
        ip_len,
        frag,
        payload,
    } = net;
    // Whole seconds and milliseconds apart: `as_millis` divides a u128, on every packet.
    let ts_ms = p
        .timestamp
        .as_secs()
        .saturating_mul(1000)
        .saturating_add(u64::from(p.timestamp.subsec_millis()));
    let mut info = PacketInfo {
        ts_ms,
        vlan,
        src,
        dst,
        proto,
        sport: 0,
        dport: 0,
        ip_len,
        frame_len: p.orig_len.max(p.data.len() as u32),
        tcp_flags: 0,
        icmp: 0,
    };
    // Later fragments carry no transport header: their ports come from the first fragment.
    let later_fragment = frag.is_some_and(|(_, first, _)| !first);
    if !later_fragment {
        // Ports and flags sit at fixed offsets: read as far as the frame holds them.
        match proto {
            p if has_ports(p) => {
                info.sport = be16(payload, 0).unwrap_or(0);
                info.dport = be16(payload, 2).unwrap_or(0);
                if proto == PROTO_TCP {
                    info.tcp_flags = payload.get(13).copied().unwrap_or(0);
                }
            }
            PROTO_ICMP | PROTO_ICMPV6 => info.icmp = be16(payload, 0).unwrap_or(0),
            _ => {}
        }
    }
    if let Some((id, first, key_proto)) = frag {
        let key = (src, dst, key_proto, id);
        if first {
            frags.remember(key, (proto, info.sport, info.dport));
        } else if let Some(&(p, sp, dp)) = frags.ports.get(&key) {
            // An IPv6 later fragment's own headers cannot name the protocol: the first's does.
            (info.proto, info.sport, info.dport) = (p, sp, dp);
        } else if has_ports(proto) {
            return Err(Skip::OrphanFragment);
        }
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;
    use std::time::Duration;

    fn classify_frame(link: DataLink, data: &[u8]) -> Result<PacketInfo, Skip> {
        let p = Packet {
            frame: 1,
            timestamp: Duration::from_millis(1_500),
            link,
            orig_len: data.len() as u32,
            data,
        };
        classify(&p, &mut Fragments::default())
    }

    /// An IPv4/UDP packet 10.0.0.1:1000 -> 10.0.0.2:53 with a 4-byte payload.
    fn udp4() -> Vec<u8> {
        let mut ip = Vec::new();
        PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(1000, 53)
            .write(&mut ip, &[1, 2, 3, 4])
            .expect("build");
        ip
    }

    fn ethernet(ether_type: u16, rest: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend(ether_type.to_be_bytes());
        f.extend(rest);
        f
    }

    #[test]
    fn qinq_takes_the_outer_vlan() {
        let mut tags = vec![0x00, 0x64, 0x81, 0x00]; // 802.1ad tag: VLAN 100, then 802.1Q
        tags.extend([0x00, 0xc8, 0x08, 0x00]); // inner VLAN 200, then IPv4
        tags.extend(udp4());
        let info = classify_frame(DataLink::ETHERNET, &ethernet(0x88a8, &tags)).expect("ip");
        assert_eq!(
            (info.vlan, info.sport, info.dport, info.ip_len),
            (100, 1000, 53, 32)
        );
    }

    #[test]
    fn mpls_labels_are_skipped_to_the_ip_packet() {
        // Two labels; the second has the bottom-of-stack bit.
        let mut labels = vec![0x00, 0x01, 0x00, 0x40, 0x00, 0x02, 0x01, 0x40];
        labels.extend(udp4());
        let info = classify_frame(DataLink::ETHERNET, &ethernet(0x8847, &labels)).expect("ip");
        assert_eq!((info.proto, info.sport, info.dport), (17, 1000, 53));
        // A stack that never ends, and one over something that is not IP.
        let endless = ethernet(0x8847, &[0x00, 0x01, 0x00, 0x40].repeat(40));
        assert!(matches!(
            classify_frame(DataLink::ETHERNET, &endless),
            Err(Skip::Malformed(_))
        ));
        let not_ip = ethernet(0x8847, &[0x00, 0x01, 0x01, 0x40, 0x00, 0x00]);
        assert_eq!(
            classify_frame(DataLink::ETHERNET, &not_ip),
            Err(Skip::NotIp)
        );
    }

    #[test]
    fn sctp_ports_and_cut_headers() {
        let mut ip = udp4();
        ip[9] = PROTO_SCTP; // same layout for the ports
        let info = classify_frame(DataLink::RAW, &ip).expect("ip");
        assert_eq!((info.proto, info.sport, info.dport), (132, 1000, 53));
        // A VLAN tag cut short, and an IPv4 header cut short.
        let cut_tag = ethernet(0x8100, &[0x00]);
        assert!(matches!(
            classify_frame(DataLink::ETHERNET, &cut_tag),
            Err(Skip::Malformed(_))
        ));
        assert!(matches!(
            classify_frame(DataLink::RAW, &udp4()[..12]),
            Err(Skip::Malformed(_))
        ));
    }

    #[test]
    fn offloaded_packets_without_a_length_count_as_the_frame() {
        // TSO/GSO captures: IPv4 total length 0; the frame holds the whole segment.
        let mut ip = udp4();
        ip[2..4].copy_from_slice(&[0, 0]);
        let info = classify_frame(DataLink::RAW, &ip).expect("ip");
        assert_eq!((info.sport, info.dport, info.ip_len), (1000, 53, 32));
    }

    #[test]
    fn ipv6_fragments_count_to_their_flow() {
        // First fragment (offset 0, more fragments) with the UDP header, then a later one.
        // `next`: the Fragment header's next header (17, or 60 when Destination Options sit in
        // the fragmentable part: then only the first fragment can tell UDP follows).
        let frag = |offset: u16, more: bool, next: u8, body: &[u8]| {
            let mut ip = vec![0x60, 0, 0, 0];
            ip.extend(((8 + body.len()) as u16).to_be_bytes());
            ip.extend([44, 64]); // next header: Fragment
            ip.extend(
                [0x20, 0x01, 0x0d, 0xb8]
                    .iter()
                    .chain(&[0u8; 11])
                    .chain(&[1]),
            );
            ip.extend(
                [0x20, 0x01, 0x0d, 0xb8]
                    .iter()
                    .chain(&[0u8; 11])
                    .chain(&[2]),
            );
            ip.extend([next, 0]);
            ip.extend((offset << 3 | more as u16).to_be_bytes());
            ip.extend(7u32.to_be_bytes());
            ip.extend(body);
            ip
        };
        let mut udp = vec![0x04, 0xd2, 0x00, 0x35, 0, 16, 0, 0];
        udp.extend([0u8; 8]);
        let mut frags = Fragments::default();
        let mut one = |data: &[u8]| {
            let p = Packet {
                frame: 1,
                timestamp: Duration::ZERO,
                link: DataLink::RAW,
                orig_len: data.len() as u32,
                data,
            };
            classify(&p, &mut frags)
        };
        let first = one(&frag(0, true, 17, &udp)).expect("first");
        let later = one(&frag(2, false, 17, &[0u8; 8])).expect("later");
        assert_eq!((first.sport, first.dport), (1234, 53));
        assert_eq!((later.sport, later.dport, later.proto), (1234, 53, 17));
        assert_eq!(
            one(&frag(2, false, 17, &[0u8; 8])[..48]).map(|i| i.sport),
            Ok(1234)
        );

        // Destination Options in the fragmentable part; the later fragment's data happens to
        // look like another such header. Both count to the UDP flow.
        let mut opts_udp = vec![17, 0, 1, 4, 0, 0, 0, 0]; // next: UDP; PadN
        opts_udp.extend(&udp);
        let first = one(&frag(0, true, 60, &opts_udp)).expect("first");
        let later = one(&frag(3, false, 60, &[60, 0, 1, 4, 0, 0, 0, 0])).expect("later");
        assert_eq!((first.proto, first.sport, first.dport), (17, 1234, 53));
        assert_eq!((later.proto, later.sport, later.dport), (17, 1234, 53));
    }
}
