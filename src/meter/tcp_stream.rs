//! Simple TCP stream reassembly for captures: in-order bytes per direction, retransmissions
//! trimmed, segments that arrive early held (within a byte bound) until the gap fills.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

/// Bytes held out of order per direction before the stream is declared broken.
const MAX_PENDING_BYTES: usize = 4 << 20;

#[derive(Debug, Default)]
struct Direction {
    next_seq: Option<u32>,
    pending: BTreeMap<u32, Vec<u8>>,
    pending_bytes: usize,
    broken: bool,
}

/// What a pushed segment did to its stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Pushed {
    /// New in-order bytes (possibly empty).
    Data(Vec<u8>),
    /// The stream lost bytes (a gap never filled within the bound): its framing is unknown.
    Broken,
}

#[derive(Debug, Default)]
pub struct TcpStreams {
    dirs: HashMap<(SocketAddr, SocketAddr), Direction>,
}

fn seq_lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

impl TcpStreams {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one segment; returns the bytes that became contiguous.
    pub fn push(
        &mut self,
        src: SocketAddr,
        dst: SocketAddr,
        seq: u32,
        syn: bool,
        payload: &[u8],
    ) -> Pushed {
        let d = self.dirs.entry((src, dst)).or_default();
        if syn {
            d.next_seq = Some(seq.wrapping_add(1));
            d.pending.clear();
            d.pending_bytes = 0;
            d.broken = false;
            if payload.is_empty() {
                return Pushed::Data(Vec::new());
            }
        }
        if d.broken {
            return Pushed::Broken;
        }
        let seq = if syn { seq.wrapping_add(1) } else { seq };
        let next = *d.next_seq.get_or_insert(seq);
        if payload.is_empty() {
            return Pushed::Data(Vec::new());
        }
        if seq_lt(next, seq) {
            // Count only what is held: a retransmitted early segment is not stored twice.
            if let std::collections::btree_map::Entry::Vacant(v) = d.pending.entry(seq) {
                d.pending_bytes += payload.len();
                v.insert(payload.to_vec());
            }
            if d.pending_bytes > MAX_PENDING_BYTES {
                d.broken = true;
                d.pending.clear();
                return Pushed::Broken;
            }
            return Pushed::Data(Vec::new());
        }
        let mut out = Vec::new();
        append(&mut out, d, seq, payload);
        // Drain held segments that now connect. Sequence numbers wrap at 2^32, so "connects"
        // is judged relative to the expected number, not by the keys' order.
        loop {
            let cur = d.next_seq.unwrap_or(seq);
            let Some(&s) = d.pending.keys().find(|&&s| !seq_lt(cur, s)) else {
                break;
            };
            if let Some(p) = d.pending.remove(&s) {
                d.pending_bytes -= p.len();
                append(&mut out, d, s, &p);
            }
        }
        Pushed::Data(out)
    }

    /// Forgets a finished connection.
    pub fn close(&mut self, src: SocketAddr, dst: SocketAddr) {
        self.dirs.remove(&(src, dst));
    }
}

/// Appends the part of `payload` (starting at `seq`) that lies at or after the expected sequence.
fn append(out: &mut Vec<u8>, d: &mut Direction, seq: u32, payload: &[u8]) {
    let next = d.next_seq.unwrap_or(seq);
    let skip = next.wrapping_sub(seq) as usize;
    if skip < payload.len() {
        out.extend_from_slice(&payload[skip..]);
        d.next_seq = Some(seq.wrapping_add(payload.len() as u32));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reorders_and_trims_retransmissions() {
        let a: SocketAddr = "10.0.0.1:1000".parse().expect("addr");
        let b: SocketAddr = "10.0.0.2:4739".parse().expect("addr");
        let mut s = TcpStreams::new();
        assert_eq!(s.push(a, b, 99, true, b""), Pushed::Data(vec![]));
        assert_eq!(
            s.push(a, b, 100, false, b"abc"),
            Pushed::Data(b"abc".to_vec())
        );
        assert_eq!(s.push(a, b, 106, false, b"ghi"), Pushed::Data(vec![]));
        assert_eq!(
            s.push(a, b, 101, false, b"bcdef"),
            Pushed::Data(b"defghi".to_vec())
        );
        assert_eq!(s.push(a, b, 100, false, b"abc"), Pushed::Data(vec![]));
    }

    #[test]
    fn early_segments_across_the_sequence_wrap() {
        let a: SocketAddr = "10.0.0.1:1000".parse().expect("addr");
        let b: SocketAddr = "10.0.0.2:4739".parse().expect("addr");
        let mut s = TcpStreams::new();
        let start = u32::MAX - 2;
        assert_eq!(s.push(a, b, start - 1, true, b""), Pushed::Data(vec![]));
        // Held: one before the wrap and one after it, each sent twice.
        for _ in 0..2 {
            assert_eq!(s.push(a, b, start + 2, false, b"cd"), Pushed::Data(vec![]));
            assert_eq!(s.push(a, b, 1, false, b"ef"), Pushed::Data(vec![]));
        }
        assert_eq!(
            s.push(a, b, start, false, b"ab"),
            Pushed::Data(b"abcdef".to_vec())
        );
    }
}
