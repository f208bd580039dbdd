//! Message and Set headers (RFC 7011 sections 3.1 and 3.3.2) and NetFlow v9 packet headers
//! (RFC 3954 section 5.1), and the walk over the Sets of one message.

use super::error::WireError;

pub const IPFIX_VERSION: u16 = 10;
pub const NETFLOW_V9_VERSION: u16 = 9;
pub const IPFIX_HEADER_LEN: usize = 16;
pub const NETFLOW_V9_HEADER_LEN: usize = 20;
pub const SET_HEADER_LEN: usize = 4;
/// Set ids of RFC 7011 section 3.3.2.
pub const TEMPLATE_SET_ID: u16 = 2;
pub const OPTIONS_TEMPLATE_SET_ID: u16 = 3;
/// Set (FlowSet) ids of RFC 3954 section 5.
pub const V9_TEMPLATE_SET_ID: u16 = 0;
pub const V9_OPTIONS_TEMPLATE_SET_ID: u16 = 1;
/// Data Sets and templates use ids from here on.
pub const MIN_DATA_SET_ID: u16 = 256;

/// The header fields common to IPFIX messages and NetFlow v9 packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct MessageHeader {
    pub version: u16,
    /// Whole message length in bytes (for NetFlow v9: the datagram length).
    pub length: u16,
    /// Seconds since the Unix epoch.
    pub export_time: u32,
    pub sequence: u32,
    pub observation_domain: u32,
    /// NetFlow v9 only: milliseconds since the exporter booted, the base of its relative times.
    pub sys_uptime_ms: Option<u32>,
    /// NetFlow v9 only: the record count the exporter claims.
    pub v9_count: Option<u16>,
}

impl MessageHeader {
    pub fn header_len(&self) -> usize {
        if self.version == NETFLOW_V9_VERSION {
            NETFLOW_V9_HEADER_LEN
        } else {
            IPFIX_HEADER_LEN
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

/// Parses the header of an IPFIX message or NetFlow v9 packet at the start of `buf`, and checks the
/// declared length against the bytes present. For IPFIX, `buf` may hold more than one message;
/// the message is `buf[..header.length]`. For NetFlow v9 the whole of `buf` is the packet.
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
        v => Err(WireError::Version(v)),
    }
}

/// The Observation Domain of a message (NetFlow v9: its Source ID) read from the header alone,
/// without decoding: for routing datagrams to sessions and for naming the domain of a message
/// that fails to decode. `None` for an unknown version or a header cut short.
pub fn peek_observation_domain(msg: &[u8]) -> Option<u32> {
    let at = match u16::from_be_bytes([*msg.first()?, *msg.get(1)?]) {
        IPFIX_VERSION => 12,
        // After count, sysUptime, unix secs and the sequence number (RFC 3954 section 5.1).
        NETFLOW_V9_VERSION => 16,
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
pub fn sets<'a>(msg: &'a [u8], header: &MessageHeader) -> SetIter<'a> {
    let end = if header.version == IPFIX_VERSION {
        (header.length as usize).min(msg.len())
    } else {
        msg.len()
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
            parse_header(&[0, 5, 0, 0]),
            Err(WireError::Version(5))
        ));
        assert!(matches!(
            parse_header(&[0, 10, 0]),
            Err(WireError::ShortHeader { .. })
        ));
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
