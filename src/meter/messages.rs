//! IPFIX and NetFlow v9/v5 messages carried in a capture: UDP datagrams split into messages, TCP
//! streams reassembled and framed. Shared by `dump` (decode a capture) and `send` (replay one).

use super::capture::Packet;
use super::tcp_stream::{Pushed, TcpStreams};
use super::transport::{Protocol, segment};
use crate::wire::Framer;
use crate::wire::header::{IPFIX_HEADER_LEN, IPFIX_VERSION};
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::net::SocketAddr;

/// One message found in a capture.
#[derive(Debug, Clone)]
pub struct CapturedMessage {
    /// The frame that carried (for TCP: completed) the message.
    pub frame: u64,
    /// Offset of the message in its frame (UDP); for TCP, its offset in the stream.
    pub offset: u64,
    pub protocol: Protocol,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub bytes: Bytes,
}

/// What a frame yielded.
#[derive(Debug)]
pub enum Found {
    Message(CapturedMessage),
    /// Something in the frame could not be used; the reason says what and what was skipped.
    Problem {
        frame: u64,
        reason: String,
    },
}

/// Finds messages on the given ports (source or destination) frame by frame.
pub struct MessageFinder {
    ports: Vec<u16>,
    max_message: usize,
    streams: TcpStreams,
    framers: HashMap<(SocketAddr, SocketAddr), (BytesMut, Framer)>,
}

impl MessageFinder {
    pub fn new(ports: Vec<u16>, max_message: usize) -> Self {
        MessageFinder {
            ports,
            max_message,
            streams: TcpStreams::new(),
            framers: HashMap::new(),
        }
    }

    /// Appends what `packet` carries to `out`.
    pub fn feed(&mut self, packet: &Packet<'_>, out: &mut Vec<Found>) {
        let frame = packet.frame;
        let Some(seg) = segment(packet) else { return };
        if !self.ports.contains(&seg.dst.port()) && !self.ports.contains(&seg.src.port()) {
            return;
        }
        let message = |offset: u64, bytes: Bytes| {
            Found::Message(CapturedMessage {
                frame,
                offset,
                protocol: seg.protocol,
                src: seg.src,
                dst: seg.dst,
                bytes,
            })
        };
        match seg.protocol {
            Protocol::Udp => {
                if seg.fragmented {
                    out.push(Found::Problem {
                        frame,
                        reason: "IP fragment skipped (fragments are not reassembled)".into(),
                    });
                    return;
                }
                for (at, bytes) in split_datagram(Bytes::copy_from_slice(seg.payload)) {
                    out.push(message((seg.payload_offset + at) as u64, bytes));
                }
            }
            Protocol::Tcp => {
                let key = (seg.src, seg.dst);
                let pushed = self
                    .streams
                    .push(seg.src, seg.dst, seg.seq, seg.syn, seg.payload);
                let max = self.max_message;
                let (buf, framer) = self
                    .framers
                    .entry(key)
                    .or_insert_with(|| (BytesMut::new(), Framer::new(max)));
                match pushed {
                    Pushed::Data(d) => buf.extend_from_slice(&d),
                    Pushed::Broken => {
                        buf.clear();
                        return;
                    }
                }
                loop {
                    let at = framer.offset();
                    match framer.next_message(buf) {
                        Ok(Some(bytes)) => out.push(message(at, bytes)),
                        Ok(None) => break,
                        Err(e) => {
                            out.push(Found::Problem {
                                frame,
                                reason: format!(
                                    "TCP stream {} -> {}: {e}; rest of the stream skipped",
                                    seg.src, seg.dst
                                ),
                            });
                            self.framers.remove(&key);
                            self.streams.close(seg.src, seg.dst);
                            return;
                        }
                    }
                }
                if seg.fin_or_rst {
                    self.framers.remove(&key);
                    self.streams.close(seg.src, seg.dst);
                }
            }
        }
    }
}

/// One datagram normally holds one message; several IPFIX messages back to back are split by
/// their length fields. The last piece (and any NetFlow packet) runs to the datagram's end and
/// the decoder judges its header. Returns (offset in the datagram, message).
pub fn split_datagram(payload: Bytes) -> Vec<(usize, Bytes)> {
    let mut out = Vec::new();
    let mut at = 0;
    while payload.len() - at > IPFIX_HEADER_LEN {
        let version = u16::from_be_bytes([payload[at], payload[at + 1]]);
        let len = u16::from_be_bytes([payload[at + 2], payload[at + 3]]) as usize;
        if version != IPFIX_VERSION || len < IPFIX_HEADER_LEN || at + len >= payload.len() {
            break;
        }
        out.push((at, payload.slice(at..at + len)));
        at += len;
    }
    if at < payload.len() {
        out.push((at, payload.slice(at..)));
    }
    out
}
