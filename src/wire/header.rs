//! Message and Set headers (RFC 7011 sections 3.1 and 3.3.2), NetFlow v9 packet headers
//! (RFC 3954 section 5.1) and NetFlow v5 packet headers (Cisco's fixed format, no RFC), and the
//! walk over the Sets of one message.

use super::error::WireError;

pub const IPFIX_VERSION: u16 = 10;
pub const NETFLOW_V9_VERSION: u16 = 9;
pub const NETFLOW_V5_VERSION: u16 = 5;
pub const IPFIX_HEADER_LEN: usize = 16;
pub const NETFLOW_V9_HEADER_LEN: usize = 20;
pub const NETFLOW_V5_HEADER_LEN: usize = 24;
/// Every NetFlow v5 record takes 48 bytes; a packet holds 1 to 30 of them.
pub const NETFLOW_V5_RECORD_LEN: usize = 48;
pub const NETFLOW_V5_MAX_COUNT: u16 = 30;
pub const SET_HEADER_LEN: usize = 4;
/// Set ids of RFC 7011 section 3.3.2.
pub const TEMPLATE_SET_ID: u16 = 2;
pub const OPTIONS_TEMPLATE_SET_ID: u16 = 3;
/// Set (FlowSet) ids of RFC 3954 section 5.
pub const V9_TEMPLATE_SET_ID: u16 = 0;
pub const V9_OPTIONS_TEMPLATE_SET_ID: u16 = 1;
/// Data Sets and templates use ids from here on.
pub const MIN_DATA_SET_ID: u16 = 256;

/// The header fields common to IPFIX messages and NetFlow v9 and v5 packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct MessageHeader {
    pub version: u16,
    /// Whole message length in bytes (for NetFlow: the datagram length).
    pub length: u16,
    /// Seconds since the Unix epoch.
    pub export_time: u32,
    /// IPFIX and NetFlow v5: data records (flows) sent before this message; NetFlow v9: packets.
    pub sequence: u32,
    /// NetFlow v9: the Source ID; NetFlow v5: engine type << 8 | engine id.
    pub observation_domain: u32,
    /// NetFlow only: milliseconds since the exporter booted, the base of its relative times.
    pub sys_uptime_ms: Option<u32>,
    /// NetFlow only: the header's record count (v9: what the exporter claims; v5: checked
    /// against the length).
    pub v9_count: Option<u16>,
}

impl MessageHeader {
    pub fn header_len(&self) -> usize {
        match self.version {
            NETFLOW_V9_VERSION => NETFLOW_V9_HEADER_LEN,
            NETFLOW_V5_VERSION => NETFLOW_V5_HEADER_LEN,
            _ => IPFIX_HEADER_LEN,
        }
    }

    /// How far the sequence number of the next message in this domain should be from this
    /// one's, given the data records this message held: IPFIX (RFC 7011 section 3.1) and
    /// NetFlow v5 count records (flows), NetFlow v9 (RFC 3954 section 5.1) counts packets.
    pub fn sequence_step(&self, data_records: usize) -> u32 {
        if self.version == NETFLOW_V9_VERSION {
            1
        } else {
            data_records as u32
        }
    }
}

#[inline]
pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

#[inline]
pub(crate) fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parses the header of an IPFIX message or NetFlow v9 or v5 packet at the start of `buf`, and
/// checks the declared length against the bytes present. For IPFIX, `buf` may hold more than one
/// message; the message is `buf[..header.length]`. For NetFlow the whole of `buf` is the packet.
pub fn parse_header(buf: &[u8]) -> Result<MessageHeader, WireError> {
    if buf.len() < 2 {
        return Err(WireError::ShortHeader {
            len: buf.len(),
            need: IPFIX_HEADER_LEN,
        });
    }
    match be16(buf, 0) {
        IPFIX_VERSION => {
            if buf.len() < IPFIX_HEADER_LEN {
                return Err(WireError::ShortHeader {
                    len: buf.len(),
                    need: IPFIX_HEADER_LEN,
                });
            }
            let length = be16(buf, 2);
            check_ipfix_length(length as usize, buf.len())?;
            Ok(MessageHeader {
                version: IPFIX_VERSION,
                length,
                export_time: be32(buf, 4),
                sequence: be32(buf, 8),
                observation_domain: be32(buf, 12),
                sys_uptime_ms: None,
                v9_count: None,
            })
        }
        NETFLOW_V9_VERSION => {
            if buf.len() < NETFLOW_V9_HEADER_LEN {
                return Err(WireError::ShortHeader {
                    len: buf.len(),
                    need: NETFLOW_V9_HEADER_LEN,
                });
            }
            if buf.len() > u16::MAX as usize {
                return Err(WireError::MessageLength {
                    declared: buf.len(),
                    reason: "a NetFlow v9 packet cannot exceed 65535 bytes",
                });
            }
            Ok(MessageHeader {
                version: NETFLOW_V9_VERSION,
                length: buf.len() as u16,
                v9_count: Some(be16(buf, 2)),
                sys_uptime_ms: Some(be32(buf, 4)),
                export_time: be32(buf, 8),
                sequence: be32(buf, 12),
                observation_domain: be32(buf, 16),
            })
        }
        NETFLOW_V5_VERSION => {
            if buf.len() < NETFLOW_V5_HEADER_LEN {
                return Err(WireError::ShortHeader {
                    len: buf.len(),
                    need: NETFLOW_V5_HEADER_LEN,
                });
            }
            // v5 has no length field: the count is the only framing, so a packet that is not
            // exactly its records (or claims more than the 30 a packet may hold) is malformed
            // rather than guessed at.
            let count = be16(buf, 2);
            if !(1..=NETFLOW_V5_MAX_COUNT).contains(&count)
                || buf.len() != NETFLOW_V5_HEADER_LEN + NETFLOW_V5_RECORD_LEN * count as usize
            {
                return Err(WireError::V5Length {
                    len: buf.len(),
                    count,
                });
            }
            Ok(MessageHeader {
                version: NETFLOW_V5_VERSION,
                // At most 24 + 48 * 30 bytes.
                length: buf.len() as u16,
                v9_count: Some(count),
                sys_uptime_ms: Some(be32(buf, 4)),
                export_time: be32(buf, 8),
                // unix_nsecs (12..16) is left out: export times are whole seconds here.
                sequence: be32(buf, 16),
                observation_domain: v5_domain(buf),
            })
        }
        v => Err(WireError::Version(v)),
    }
}

/// NetFlow v5 has no Observation Domain; engine type and engine id name the flow cache that
/// sent the packet, and its flow sequence counts per engine, so together they are the domain.
/// `buf` holds at least the 24-byte header.
fn v5_domain(buf: &[u8]) -> u32 {
    (buf[20] as u32) << 8 | buf[21] as u32
}

/// The Observation Domain of a message (NetFlow v9: its Source ID) read from the header alone,
/// without decoding: for routing datagrams to sessions and for naming the domain of a message
/// that fails to decode. `None` for an unknown version or a header cut short.
pub fn peek_observation_domain(msg: &[u8]) -> Option<u32> {
    let at = match u16::from_be_bytes([*msg.first()?, *msg.get(1)?]) {
        IPFIX_VERSION => 12,
        // After count, sysUptime, unix secs and the sequence number (RFC 3954 section 5.1).
        NETFLOW_V9_VERSION => 16,
        NETFLOW_V5_VERSION if msg.len() >= NETFLOW_V5_HEADER_LEN => return Some(v5_domain(msg)),
        _ => return None,
    };
    msg.get(at..at + 4).map(|b| be32(b, 0))
}

pub(crate) fn check_ipfix_length(declared: usize, available: usize) -> Result<(), WireError> {
    if declared < IPFIX_HEADER_LEN {
        return Err(WireError::MessageLength {
            declared,
            reason: "shorter than the 16-byte message header",
        });
    }
    if declared > available {
        return Err(WireError::MessageLength {
            declared,
            reason: "longer than the bytes received",
        });
    }
    Ok(())
}

/// One Set inside a message: its id and where its body lies in the message buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetRef {
    pub id: u16,
    /// Offset of the Set header in the message.
    pub offset: usize,
    /// Body (after the 4-byte Set header): `body_start..body_end` in the message.
    pub body_start: usize,
    pub body_end: usize,
}

/// Walks the Sets of one message, checking every Set length against the message length.
/// `msg` is exactly one message (IPFIX: `header.length` bytes; NetFlow v9: the datagram).
/// NetFlow v5 has no Sets (its records follow the header): nothing.
pub fn sets<'a>(msg: &'a [u8], header: &MessageHeader) -> SetIter<'a> {
    let end = match header.version {
        IPFIX_VERSION => (header.length as usize).min(msg.len()),
        NETFLOW_V5_VERSION => header.header_len(),
        _ => msg.len(),
    };
    SetIter {
        msg,
        pos: header.header_len(),
        end,
        v9: header.version == NETFLOW_V9_VERSION,
    }
}

pub struct SetIter<'a> {
    msg: &'a [u8],
    pos: usize,
    end: usize,
    v9: bool,
}

impl Iterator for SetIter<'_> {
    type Item = Result<SetRef, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        let remaining = self.end.saturating_sub(self.pos);
        if remaining == 0 {
            return None;
        }
        let offset = self.pos;
        if remaining < SET_HEADER_LEN {
            // NetFlow v9 exporters pad whole packets; IPFIX messages must end on a Set boundary.
            if self.v9 && self.msg[offset..self.end].iter().all(|&b| b == 0) {
                self.pos = self.end;
                return None;
            }
            self.pos = self.end;
            return Some(Err(WireError::SetLength {
                offset,
                length: remaining,
                reason: "bytes left at the end of the message, too few for a Set header",
            }));
        }
        let id = be16(self.msg, offset);
        let length = be16(self.msg, offset + 2) as usize;
        let err = |reason| {
            Some(Err(WireError::SetLength {
                offset,
                length,
                reason,
            }))
        };
        if length < SET_HEADER_LEN {
            self.pos = self.end;
            if self.v9 && length == 0 && self.msg[offset..self.end].iter().all(|&b| b == 0) {
                return None;
            }
            return err("is shorter than the 4-byte Set header");
        }
        if length > remaining {
            self.pos = self.end;
            return err("runs past the end of the message");
        }
        if !self.v9
            && (id < MIN_DATA_SET_ID && id != TEMPLATE_SET_ID && id != OPTIONS_TEMPLATE_SET_ID)
        {
            self.pos = self.end;
            return Some(Err(WireError::ReservedSetId { offset, set_id: id }));
        }
        if self.v9 && (2..MIN_DATA_SET_ID).contains(&id) {
            self.pos = self.end;
            return Some(Err(WireError::ReservedSetId { offset, set_id: id }));
        }
        self.pos = offset + length;
        Some(Ok(SetRef {
            id,
            offset,
            body_start: offset + SET_HEADER_LEN,
            body_end: offset + length,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(sets: &[u8]) -> Vec<u8> {
        let mut m = vec![0, 10, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3];
        m.extend_from_slice(sets);
        let len = m.len() as u16;
        m[2..4].copy_from_slice(&len.to_be_bytes());
        m
    }

    #[test]
    fn header_fields() {
        let m = msg(&[]);
        let h = parse_header(&m).expect("valid");
        assert_eq!(
            (
                h.version,
                h.length,
                h.export_time,
                h.sequence,
                h.observation_domain
            ),
            (10, 16, 1, 2, 3)
        );
        assert_eq!(sets(&m, &h).count(), 0);
    }

    #[test]
    fn impossible_lengths() {
        let mut m = msg(&[]);
        m[3] = 10;
        assert!(matches!(
            parse_header(&m),
            Err(WireError::MessageLength { .. })
        ));
        m[3] = 200;
        assert!(matches!(
            parse_header(&m),
            Err(WireError::MessageLength { .. })
        ));
        assert!(matches!(
            parse_header(&[0, 7, 0, 0]),
            Err(WireError::Version(7))
        ));
        assert!(matches!(
            parse_header(&[0, 10, 0]),
            Err(WireError::ShortHeader { .. })
        ));
    }

    /// A NetFlow v5 packet: `count` in the header, `records` 48-byte records after it.
    fn v5(count: u16, records: usize) -> Vec<u8> {
        let mut m = vec![0, 5];
        m.extend_from_slice(&count.to_be_bytes());
        m.extend_from_slice(&[0, 0, 0x30, 0x39]); // sysUptime 12345 ms
        m.extend_from_slice(&[0x64, 0x2c, 0x53, 0xf7]); // unix_secs
        m.extend_from_slice(&[0, 0, 0, 9]); // unix_nsecs
        m.extend_from_slice(&[0, 0, 1, 0]); // flow_sequence 256
        m.extend_from_slice(&[2, 3, 0x40, 0x10]); // engine type 2, id 3, sampling
        m.resize(NETFLOW_V5_HEADER_LEN + NETFLOW_V5_RECORD_LEN * records, 0);
        m
    }

    #[test]
    fn netflow_v5_header() {
        let h = parse_header(&v5(2, 2)).expect("valid");
        assert_eq!(
            (h.version, h.length, h.export_time, h.sequence),
            (5, 120, 0x642c_53f7, 256)
        );
        assert_eq!(h.observation_domain, 2 << 8 | 3);
        assert_eq!((h.sys_uptime_ms, h.v9_count), (Some(12345), Some(2)));
        assert_eq!(h.header_len(), 24);
        assert_eq!(sets(&v5(2, 2), &h).count(), 0, "v5 has no sets");
        assert_eq!(peek_observation_domain(&v5(2, 2)), Some(0x0203));
        assert_eq!(peek_observation_domain(&v5(2, 2)[..23]), None);
    }

    #[test]
    fn netflow_v5_length_must_be_exactly_its_records() {
        let bad = |m: Vec<u8>| matches!(parse_header(&m), Err(WireError::V5Length { .. }));
        assert!(bad(v5(2, 1)), "fewer records than counted");
        assert!(bad(v5(1, 2)), "more records than counted");
        let mut trailing = v5(1, 1);
        trailing.push(0);
        assert!(bad(trailing), "a byte past the last record");
        assert!(bad(v5(0, 0)), "count 0");
        assert!(bad(v5(31, 31)), "more than 30 records");
        assert!(parse_header(&v5(30, 30)).is_ok());
        assert!(matches!(
            parse_header(&v5(1, 1)[..23]),
            Err(WireError::ShortHeader { need: 24, .. })
        ));
    }

    #[test]
    fn what_the_sequence_number_counts() {
        let ipfix = parse_header(&msg(&[])).expect("valid");
        assert_eq!(ipfix.sequence_step(7), 7);
        let v5 = parse_header(&v5(2, 2)).expect("valid");
        assert_eq!(v5.sequence_step(2), 2, "v5 counts flows");
        let mut v9 = vec![0, 9, 0, 1];
        v9.resize(NETFLOW_V9_HEADER_LEN, 0);
        let v9 = parse_header(&v9).expect("valid");
        assert_eq!(v9.sequence_step(7), 1, "v9 counts packets");
    }

    #[test]
    fn observation_domain_by_version() {
        assert_eq!(peek_observation_domain(&msg(&[])), Some(3));
        // NetFlow v9: bytes 12..16 are the sequence number, the source id follows.
        let v9 = [0, 9, 0, 1, 0, 0, 0, 5, 0, 0, 0, 6, 0, 0, 0, 7, 0, 0, 0, 8];
        assert_eq!(peek_observation_domain(&v9), Some(8));
        assert_eq!(peek_observation_domain(&v9[..19]), None);
        assert_eq!(peek_observation_domain(&[0, 10, 0]), None);
        assert_eq!(peek_observation_domain(&[0]), None);
        let mut v8 = [0u8; 24];
        v8[1] = 8;
        assert_eq!(peek_observation_domain(&v8), None);
    }

    #[test]
    fn set_walk_checks_lengths() {
        let m = msg(&[1, 0, 0, 8, 1, 2, 3, 4, 1, 1, 0, 4]);
        let h = parse_header(&m).expect("valid");
        let s: Vec<_> = sets(&m, &h).collect();
        assert_eq!(s.len(), 2);
        assert_eq!(
            s[0].as_ref().ok().map(|s| (s.id, s.body_start, s.body_end)),
            Some((256, 20, 24))
        );
        let bad = msg(&[1, 0, 0, 9, 1, 2, 3, 4]);
        let h = parse_header(&bad).expect("valid header");
        assert!(sets(&bad, &h).any(|s| s.is_err()));
        let reserved = msg(&[0, 5, 0, 4]);
        let h = parse_header(&reserved).expect("valid header");
        assert!(matches!(
            sets(&reserved, &h).next(),
            Some(Err(WireError::ReservedSetId { .. }))
        ));
    }
}
