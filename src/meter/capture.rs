//! Streaming pcap and pcapng reading (never the whole file in memory), behind one reader that
//! detects the format from the file's magic number. The reader takes either a `Read` (pipes,
//! sockets) or the file's bytes as one buffer (a mapped file: the kernel pages it in as it is
//! read, and no frame is copied).

use bytes::Bytes;
use pcap_file::DataLink;
use pcap_file::pcap::{PcapParser, PcapReader};
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::{Block, PcapNgParser, PcapNgReader};
use std::io::{BufRead, BufReader, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("not a pcap or pcapng file (magic {0:02x?})")]
    NotACapture([u8; 4]),
    #[error("capture: {0}")]
    Format(#[from] pcap_file::PcapError),
    #[error("read error: {0}")]
    Io(#[from] std::io::Error),
}

/// What the first bytes of a file say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Pcap,
    PcapNg,
    /// Starts like an IPFIX message: an RFC 5655 file.
    Ipfix,
    Unknown([u8; 4]),
}

pub fn sniff(head: &[u8]) -> FileKind {
    let mut m = [0u8; 4];
    let n = head.len().min(4);
    m[..n].copy_from_slice(&head[..n]);
    match m {
        [0xa1, 0xb2, 0xc3, 0xd4]
        | [0xd4, 0xc3, 0xb2, 0xa1]
        | [0xa1, 0xb2, 0x3c, 0x4d]
        | [0x4d, 0x3c, 0xb2, 0xa1] => FileKind::Pcap,
        [0x0a, 0x0d, 0x0d, 0x0a] => FileKind::PcapNg,
        [0x00, 0x0a, _, _] => FileKind::Ipfix,
        other => FileKind::Unknown(other),
    }
}

/// Peeks at the start of a buffered reader without consuming it.
pub fn sniff_reader<R: Read>(r: &mut BufReader<R>) -> std::io::Result<FileKind> {
    Ok(sniff(r.fill_buf()?))
}

/// One captured frame.
#[derive(Debug)]
pub struct Packet<'a> {
    /// 1-based frame number, as tshark counts.
    pub frame: u64,
    pub timestamp: Duration,
    pub link: DataLink,
    /// The frame's length on the wire (the capture may hold fewer bytes: `data`).
    pub orig_len: u32,
    pub data: &'a [u8],
}

/// A reader that counts the bytes taken from it: a streamed capture's position.
struct Counted<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

enum Inner<R: Read> {
    Pcap(PcapReader<Counted<R>>),
    PcapNg(PcapNgReader<Counted<R>>),
    MappedPcap(PcapParser),
    MappedPcapNg(PcapNgParser),
}

pub struct CaptureReader<R: Read> {
    inner: Inner<R>,
    frame: u64,
    /// The current frame, for readers (a mapped file's frames are read in place).
    data: Vec<u8>,
    /// A mapped file, and where the next record starts in it.
    all: Bytes,
    at: usize,
    /// Bytes taken from a streamed capture (read ahead of the frames by pcap-file's buffer).
    streamed: Arc<AtomicU64>,
}

/// The reader type for captures that are all in memory; `Read` is not used.
pub type MappedCapture = CaptureReader<std::io::Empty>;

impl<R: Read> CaptureReader<R> {
    /// A capture whose bytes are all here (a mapped or read file); `R` is never read.
    pub fn from_bytes(all: Bytes) -> Result<CaptureReader<R>, CaptureError> {
        let (inner, rest) = match sniff(&all) {
            FileKind::Pcap => {
                let (rest, p) = PcapParser::new(&all)?;
                (Inner::MappedPcap(p), rest.len())
            }
            FileKind::PcapNg => {
                let (rest, p) = PcapNgParser::new(&all)?;
                (Inner::MappedPcapNg(p), rest.len())
            }
            FileKind::Ipfix => return Err(CaptureError::NotACapture([0, 10, 0, 0])),
            FileKind::Unknown(m) => return Err(CaptureError::NotACapture(m)),
        };
        Ok(CaptureReader {
            inner,
            frame: 0,
            data: Vec::new(),
            at: all.len() - rest,
            all,
            streamed: Arc::default(),
        })
    }
}

impl<R: Read> CaptureReader<R> {
    pub fn new(mut reader: BufReader<R>) -> Result<CaptureReader<BufReader<R>>, CaptureError> {
        let kind = sniff_reader(&mut reader)?;
        let streamed = Arc::new(AtomicU64::new(0));
        let reader = Counted {
            inner: reader,
            count: streamed.clone(),
        };
        let inner = match kind {
            FileKind::Pcap => Inner::Pcap(PcapReader::new(reader)?),
            FileKind::PcapNg => Inner::PcapNg(PcapNgReader::new(reader)?),
            FileKind::Ipfix => return Err(CaptureError::NotACapture([0, 10, 0, 0])),
            FileKind::Unknown(m) => return Err(CaptureError::NotACapture(m)),
        };
        Ok(CaptureReader {
            inner,
            frame: 0,
            data: Vec::new(),
            all: Bytes::new(),
            at: 0,
            streamed,
        })
    }
}

impl<R: Read> CaptureReader<R> {
    /// Bytes of the file read so far (for a stream, what was taken from it: a little ahead).
    pub fn position(&self) -> u64 {
        match self.inner {
            Inner::MappedPcap(_) | Inner::MappedPcapNg(_) => self.at as u64,
            Inner::Pcap(_) | Inner::PcapNg(_) => self.streamed.load(Ordering::Relaxed),
        }
    }

    /// Total bytes of the capture, when known (mapped captures).
    pub fn total(&self) -> Option<u64> {
        match self.inner {
            Inner::MappedPcap(_) | Inner::MappedPcapNg(_) => Some(self.all.len() as u64),
            _ => None,
        }
    }

    /// The next frame, or `None` at the end. A format error ends the capture (what was read
    /// before it stays valid).
    pub fn next_packet(&mut self) -> Option<Result<Packet<'_>, CaptureError>> {
        // Where this frame's bytes are: `None` for `self.data`, else a slice of the map.
        let mut mapped: Option<&[u8]> = None;
        let (link, timestamp, orig_len) = match &mut self.inner {
            Inner::MappedPcap(parser) => {
                let rest = &self.all[self.at..];
                if rest.is_empty() {
                    return None;
                }
                match parser.next_raw_packet(rest) {
                    Ok((after, p)) => {
                        let before = self.at;
                        self.at = self.all.len() - after.len();
                        stream_ahead(&self.all, before, self.at);
                        let header = parser.header();
                        mapped = in_place(p.data, &mut self.data);
                        (
                            header.datalink,
                            pcap_time(p.ts_sec, p.ts_frac, header.ts_resolution),
                            p.orig_len,
                        )
                    }
                    Err(e) => {
                        self.at = self.all.len(); // the rest cannot be framed: stop here
                        return Some(Err(e.into()));
                    }
                }
            }
            Inner::MappedPcapNg(parser) => loop {
                let rest = &self.all[self.at..];
                if rest.is_empty() {
                    return None;
                }
                let (after, block) = match parser.next_block(rest) {
                    Ok(b) => b,
                    Err(e) => {
                        self.at = self.all.len();
                        return Some(Err(e.into()));
                    }
                };
                let before = self.at;
                self.at = self.all.len() - after.len();
                stream_ahead(&self.all, before, self.at);
                let (iface, timestamp, orig_len) = match block {
                    Block::EnhancedPacket(p) => {
                        mapped = in_place(p.data, &mut self.data);
                        (p.interface_id as usize, p.timestamp, p.original_len)
                    }
                    Block::SimplePacket(p) => {
                        mapped = in_place(p.data, &mut self.data);
                        (0, Duration::ZERO, p.original_len)
                    }
                    _ => continue,
                };
                let (link, timestamp) = on_interface(parser.interfaces(), iface, timestamp);
                break (link, timestamp, orig_len);
            },
            Inner::Pcap(r) => {
                let header = r.header();
                // The raw record: pcap-file's checked one refuses an original length above the
                // snap length, which is just what a capture with a short snap length records.
                match r.next_raw_packet()? {
                    Ok(p) => {
                        self.data.clear();
                        self.data.extend_from_slice(&p.data);
                        (
                            header.datalink,
                            pcap_time(p.ts_sec, p.ts_frac, header.ts_resolution),
                            p.orig_len,
                        )
                    }
                    Err(e) => return Some(Err(e.into())),
                }
            }
            Inner::PcapNg(r) => loop {
                let block = match r.next_block()? {
                    Ok(b) => b,
                    Err(e) => return Some(Err(e.into())),
                };
                let (iface, timestamp, orig_len) = match block {
                    Block::EnhancedPacket(p) => {
                        self.data.clear();
                        self.data.extend_from_slice(&p.data);
                        (p.interface_id as usize, p.timestamp, p.original_len)
                    }
                    Block::SimplePacket(p) => {
                        self.data.clear();
                        self.data.extend_from_slice(&p.data);
                        (0, Duration::ZERO, p.original_len)
                    }
                    _ => continue,
                };
                let (link, timestamp) = on_interface(r.interfaces(), iface, timestamp);
                break (link, timestamp, orig_len);
            },
        };
        self.frame += 1;
        Some(Ok(Packet {
            frame: self.frame,
            timestamp,
            link,
            orig_len,
            data: mapped.unwrap_or(&self.data),
        }))
    }
}

/// A classic pcap record's time.
fn pcap_time(sec: u32, frac: u32, resolution: pcap_file::TsResolution) -> Duration {
    let nanos = match resolution {
        pcap_file::TsResolution::MicroSecond => frac.min(999_999) * 1_000,
        pcap_file::TsResolution::NanoSecond => frac.min(999_999_999),
    };
    Duration::new(sec as u64, nanos)
}

/// A pcapng packet's link type and time, from its interface's description. pcap-file reads an
/// Enhanced Packet Block's 64-bit timestamp as nanoseconds whatever the interface's `if_tsresol`
/// says (by default microseconds, so times came out 1000 times too small): the raw count is
/// taken back and scaled here, and `if_tsoffset` (seconds) added.
fn on_interface(
    interfaces: &[InterfaceDescriptionBlock<'_>],
    id: usize,
    read_as_nanos: Duration,
) -> (DataLink, Duration) {
    let Some(iface) = interfaces.get(id) else {
        return (DataLink::ETHERNET, read_as_nanos);
    };
    // if_tsoffset is signed (seconds); pcap-file hands it over as u64.
    let (mut resolution, mut offset) = (6u8, 0i64);
    for option in &iface.options {
        match option {
            InterfaceDescriptionOption::IfTsResol(r) => resolution = *r,
            InterfaceDescriptionOption::IfTsOffset(o) => offset = *o as i64,
            _ => {}
        }
    }
    // Exact: pcap-file made the Duration with from_nanos of the raw u64.
    let raw = read_as_nanos.as_nanos();
    // Units per second: 10^r, or 2^(r & 0x7f) when the high bit is set (bounded: u128).
    let per_second: u128 = if resolution & 0x80 == 0 {
        10u128.pow(u32::from(resolution.min(38)))
    } else {
        1u128 << u32::from((resolution & 0x7f).min(127))
    };
    let secs = u64::try_from(raw / per_second).unwrap_or(u64::MAX);
    // Saturates only for absurd resolutions (above 2^96 units a second), and stays a fraction.
    let nanos = ((raw % per_second).saturating_mul(1_000_000_000) / per_second).min(999_999_999);
    let nanos = nanos as u32;
    let time = Duration::new(secs, nanos);
    (
        iface.linktype,
        if offset >= 0 {
            time.checked_add(Duration::from_secs(offset.unsigned_abs()))
        } else {
            time.checked_sub(Duration::from_secs(offset.unsigned_abs()))
        }
        .unwrap_or(time),
    )
}

/// How far ahead of the record being read the map is prefetched. Measured on the 3M-packet
/// benchmark capture: 2-4 KiB is enough to hide the misses; 16 KiB was 5% slower (the stream
/// then pushes more of the flow table out of the caches).
const AHEAD: usize = 4 << 10;

/// Prefetches every cache line of the map once, `AHEAD` bytes in front of the reader, as it
/// moves from `from` to `to`. Records are chained by their lengths, so reading a capture would be
/// a walk from one cache miss to the next; these hints do not depend on each other (nor wait for
/// their data, as loads would), so the lines arrive in parallel and the records are in cache
/// when the reader gets there.
#[inline(always)]
fn stream_ahead(all: &[u8], from: usize, to: usize) {
    let (start, end) = ((from + AHEAD) & !63, (to + AHEAD).min(all.len()));
    for at in (start..end).step_by(64) {
        super::prefetch::prefetch(all.as_ptr().wrapping_add(at));
    }
}

/// A frame's bytes as a slice of the map. pcap-file copies them only when it has to (never from
/// a slice today); a copy is kept in `buf`.
fn in_place<'a>(data: std::borrow::Cow<'a, [u8]>, buf: &mut Vec<u8>) -> Option<&'a [u8]> {
    match data {
        std::borrow::Cow::Borrowed(b) => Some(b),
        std::borrow::Cow::Owned(v) => {
            *buf = v;
            None
        }
    }
}
