//! Taking IPFIX messages off a byte stream (TCP, RFC 7011 section 10.4; files, RFC 5655) by the
//! header's length field, across partial reads.
//!
//! [`Framer`] is push-based (feed it whatever bytes arrived, take whole messages out) so an async
//! session can drive it; [`MessageReader`] drives the same framer from any `Read`.

use super::error::WireError;
use super::header::{IPFIX_HEADER_LEN, IPFIX_VERSION, be16};
use bytes::{Bytes, BytesMut};
use std::io::Read;

/// Why a stream cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum FramingError {
    #[error("at stream offset {offset}: {source}")]
    Message { offset: u64, source: WireError },
    #[error(
        "at stream offset {offset}: the stream ended inside a message ({have} of {need} bytes)"
    )]
    Truncated {
        offset: u64,
        have: usize,
        need: usize,
    },
    #[error("read error: {0}")]
    Io(#[from] std::io::Error),
}

/// Cuts a byte stream into IPFIX messages.
#[derive(Debug)]
pub struct Framer {
    max_message: usize,
    /// Stream offset of the first byte in the buffer.
    offset: u64,
}

impl Framer {
    /// `max_message` bounds what a header may declare (at most 65535 by the format); anything
    /// above it is refused before a byte of the body is buffered.
    pub fn new(max_message: usize) -> Framer {
        Framer {
            max_message: max_message.min(u16::MAX as usize),
            offset: 0,
        }
    }

    /// Stream offset of the next message to be returned.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// How many more bytes the buffer needs before `next_message` can make progress.
    pub fn wanted(&self, buf: &BytesMut) -> usize {
        if buf.len() < IPFIX_HEADER_LEN {
            return IPFIX_HEADER_LEN - buf.len();
        }
        (be16(buf, 2) as usize).saturating_sub(buf.len())
    }

    /// Takes one whole message off the front of `buf`, if one is there. A header that cannot
    /// start a valid message is an error: the stream has lost its framing and must be closed.
    pub fn next_message(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, FramingError> {
        Ok(self
            .complete_len(buf)?
            .map(|len| buf.split_to(len).freeze()))
    }

    /// The same for a buffer that already holds the whole stream (a mapped file): messages are
    /// slices of it, nothing is copied.
    pub fn next_in(&mut self, buf: &mut Bytes) -> Result<Option<Bytes>, FramingError> {
        Ok(self.complete_len(buf)?.map(|len| buf.split_to(len)))
    }

    /// The length of the message at the front of `buf` once all of it is there; counts it as
    /// taken.
    fn complete_len(&mut self, buf: &[u8]) -> Result<Option<usize>, FramingError> {
        if buf.len() < 4 {
            return Ok(None);
        }
        let err = |source| FramingError::Message {
            offset: self.offset,
            source,
        };
        let version = be16(buf, 0);
        if version != IPFIX_VERSION {
            return Err(err(WireError::Version(version)));
        }
        let len = be16(buf, 2) as usize;
        if len < IPFIX_HEADER_LEN {
            return Err(err(WireError::MessageLength {
                declared: len,
                reason: "shorter than the 16-byte message header",
            }));
        }
        if len > self.max_message {
            return Err(err(WireError::MessageLength {
                declared: len,
                reason: "longer than the configured maximum message size",
            }));
        }
        if buf.len() < len {
            return Ok(None);
        }
        self.offset += len as u64;
        Ok(Some(len))
    }

    /// Called at end of stream: bytes left over mean the last message was cut short.
    pub fn finish(&self, buf: &[u8]) -> Result<(), FramingError> {
        if buf.is_empty() {
            return Ok(());
        }
        let need = if buf.len() >= 4 {
            be16(buf, 2) as usize
        } else {
            IPFIX_HEADER_LEN
        };
        Err(FramingError::Truncated {
            offset: self.offset,
            have: buf.len(),
            need,
        })
    }
}

/// Reads IPFIX messages one at a time from a `Read` (a file or a blocking socket).
pub struct MessageReader<R> {
    inner: R,
    framer: Framer,
    buf: BytesMut,
    eof: bool,
}

impl<R: Read> MessageReader<R> {
    pub fn new(inner: R, max_message: usize) -> Self {
        MessageReader {
            inner,
            framer: Framer::new(max_message),
            buf: BytesMut::with_capacity(64 * 1024),
            eof: false,
        }
    }

    /// Stream offset of the next message.
    pub fn offset(&self) -> u64 {
        self.framer.offset()
    }

    /// The next message with its stream offset, or `None` at a clean end of stream.
    pub fn next_message(&mut self) -> Result<Option<(u64, Bytes)>, FramingError> {
        loop {
            let at = self.framer.offset();
            if let Some(m) = self.framer.next_message(&mut self.buf)? {
                return Ok(Some((at, m)));
            }
            if self.eof {
                self.framer.finish(&self.buf)?;
                return Ok(None);
            }
            let want = self.framer.wanted(&self.buf).max(1);
            // Read in large chunks (many messages per call), never less than what is missing.
            let chunk = want.max(64 * 1024);
            let start = self.buf.len();
            self.buf.resize(start + chunk, 0);
            let n = loop {
                match self.inner.read(&mut self.buf[start..]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        self.buf.truncate(start);
                        return Err(e.into());
                    }
                }
            };
            self.buf.truncate(start + n);
            if n == 0 {
                self.eof = true;
            }
        }
    }
}

impl<R: Read> Iterator for MessageReader<R> {
    type Item = Result<(u64, Bytes), FramingError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.next_message() {
            Ok(Some(m)) => Some(Ok(m)),
            Ok(None) => None,
            Err(e) => {
                // After a framing error the stream position is unknown: stop.
                self.eof = true;
                self.buf.clear();
                Some(Err(e))
            }
        }
    }
}

/// The messages of a stream that is all in memory (a mapped or read file), as slices of it.
pub struct MessageSlices {
    framer: Framer,
    rest: Bytes,
    done: bool,
}

impl MessageSlices {
    pub fn new(all: Bytes, max_message: usize) -> Self {
        MessageSlices {
            framer: Framer::new(max_message),
            rest: all,
            done: false,
        }
    }
}

impl Iterator for MessageSlices {
    type Item = Result<(u64, Bytes), FramingError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let at = self.framer.offset();
        let step = match self.framer.next_in(&mut self.rest) {
            Ok(Some(m)) => return Some(Ok((at, m))),
            Ok(None) => self.framer.finish(&self.rest),
            Err(e) => Err(e),
        };
        // At the end, or lost framing: nothing more can be read either way.
        self.done = true;
        step.err().map(Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(domain: u8, len: u16) -> Vec<u8> {
        let mut m = vec![0u8; len as usize];
        m[1] = 10;
        m[2..4].copy_from_slice(&len.to_be_bytes());
        if m.len() > 15 {
            m[15] = domain;
        }
        m
    }

    /// A reader that hands out one byte per call: the worst partial reads.
    struct Trickle(Vec<u8>, usize);
    impl Read for Trickle {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            if self.1 >= self.0.len() || out.is_empty() {
                return Ok(0);
            }
            out[0] = self.0[self.1];
            self.1 += 1;
            Ok(1)
        }
    }

    #[test]
    fn frames_across_partial_reads() {
        let mut stream = message(1, 16);
        stream.extend(message(2, 40));
        let got: Vec<_> = MessageReader::new(Trickle(stream, 0), 65535)
            .map(|m| {
                m.map(|(off, b)| (off, b.len(), b[15]))
                    .map_err(|e| e.to_string())
            })
            .collect();
        assert_eq!(got, vec![Ok((0, 16, 1)), Ok((16, 40, 2))]);
    }

    #[test]
    fn rejects_impossible_lengths() {
        for bad in [message(1, 12), message(1, 2000)] {
            let mut r = MessageReader::new(&bad[..], 1500);
            assert!(matches!(r.next(), Some(Err(FramingError::Message { .. }))));
            assert!(r.next().is_none());
        }
        let mut cut = message(1, 40);
        cut.truncate(30);
        let mut r = MessageReader::new(&cut[..], 65535);
        assert!(matches!(
            r.next(),
            Some(Err(FramingError::Truncated {
                have: 30,
                need: 40,
                ..
            }))
        ));
    }

    #[test]
    fn slices_agree_with_the_reader() {
        let mut good = message(1, 16);
        good.extend(message(2, 40));
        let mut cut = good.clone();
        cut.extend(&message(3, 40)[..30]);
        let mut bad = good.clone();
        bad.extend(message(4, 12));
        for stream in [good, cut, bad, Vec::new()] {
            let show = |m: Result<(u64, Bytes), FramingError>| {
                m.map(|(off, b)| (off, b.to_vec()))
                    .map_err(|e| e.to_string())
            };
            let read: Vec<_> = MessageReader::new(&stream[..], 1500).map(show).collect();
            let sliced: Vec<_> = MessageSlices::new(Bytes::from(stream.clone()), 1500)
                .map(show)
                .collect();
            assert_eq!(read, sliced);
        }
    }
}
