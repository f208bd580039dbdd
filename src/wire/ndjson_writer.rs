//! NDJSON at the speed of the bytes: the same lines as [`super::ndjson::write_record`] (tested
//! byte for byte against it on every test file), made with what per-record rendering repeats
//! paid once: the metadata of a batch once, each template's `,"name":` keys once, the columns
//! sliced once per batch, one date string per distinct second, addresses and numbers written
//! digit by digit, and strings copied as they are when no byte needs escaping.
//!
//! Templates with lists (RFC 6313) or a repeated element go through `write_record`: rare,
//! and their shape is the slow path's to get right.

use super::batch::{Batch, Column, Span};
use super::decoder::DecodedMessage;
use super::ndjson::{Origin, ntp_to_unix, write_meta, write_record, write_str};
use super::plan::{ColumnType, Plan};
use super::registry::Registry;
use chrono::{DateTime, SecondsFormat};
use rustc_hash::FxHashMap;
use std::io::Write;
use std::sync::Arc;

/// Templates whose keys are kept at most (then the table is emptied and made again).
const MAX_PLANS: usize = 4096;

/// Each field's `,"name":`, or `None` when the template needs the general path.
type Keys = Option<Arc<Vec<Key>>>;

/// Bytes of a batch's metadata copied whole (see [`put_block`]).
const PREFIX_BLOCK: usize = 160;

/// Bytes of a key copied whole (see [`put_block`]).
const KEY_BLOCK: usize = 40;

/// `,"name":` padded to [`KEY_BLOCK`] (the padding is cut off after the copy), or as it is
/// when longer.
enum Key {
    Block([u8; KEY_BLOCK], usize),
    Long(Box<[u8]>),
}

impl Key {
    fn new(k: Vec<u8>) -> Key {
        if k.len() <= KEY_BLOCK {
            let mut b = [0u8; KEY_BLOCK];
            b[..k.len()].copy_from_slice(&k);
            Key::Block(b, k.len())
        } else {
            Key::Long(k.into_boxed_slice())
        }
    }

    #[inline]
    fn put(&self, out: &mut Vec<u8>) {
        match self {
            Key::Block(b, len) => put_block(out, b, *len),
            Key::Long(k) => out.extend_from_slice(k),
        }
    }
}

#[derive(Default)]
pub struct RecordWriter {
    plans: FxHashMap<usize, (Arc<Plan>, Keys)>,
    /// The last day written (days since the epoch), as `"YYYY-MM-DDT`.
    day: Option<(i64, [u8; 12])>,
    prefix: Vec<u8>,
}

impl std::fmt::Debug for RecordWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordWriter")
            .field("plans", &self.plans.len())
            .finish()
    }
}

fn keys_of(plan: &Plan) -> Keys {
    let simple = plan.fields.iter().all(|f| {
        !f.repeated
            && !matches!(
                f.column,
                ColumnType::BasicList
                    | ColumnType::SubTemplateList
                    | ColumnType::SubTemplateMultiList
            )
    });
    simple.then(|| {
        Arc::new(
            plan.fields
                .iter()
                .map(|f| {
                    let mut k = vec![b','];
                    write_str(&mut k, f.element.name.as_bytes());
                    k.push(b':');
                    Key::new(k)
                })
                .collect(),
        )
    })
}

/// Appends `bytes[..len]` of a block of known size: one copy of fixed size and a cut, where a
/// copy of any size is a call to memmove (a fifth of the rendering's time when it was one).
/// For blocks made before, not just now (see [`put_word`]).
#[inline]
fn put_block<const N: usize>(out: &mut Vec<u8>, bytes: &[u8; N], len: usize) {
    out.extend_from_slice(bytes);
    out.truncate(out.len() - (N - len));
}

/// Appends the first `len` bytes of `w` (little-endian, so its low byte first). The digits of
/// a number or an address are put together in a register and stored once: written byte by
/// byte into a stack buffer and copied from there, they stalled on store forwarding.
#[inline]
fn put_word(out: &mut Vec<u8>, w: u128, len: usize) {
    out.extend_from_slice(&w.to_le_bytes());
    out.truncate(out.len() - (16 - len));
}

/// A byte pair of [`PAIRS`] (`v` < 100) as a little-endian `u16`.
#[inline]
fn pair(v: usize) -> u128 {
    u128::from(u16::from_le_bytes([PAIRS[2 * v], PAIRS[2 * v + 1]]))
}

/// An IPv4 address in quotes, its octets by value.
fn ipv4(out: &mut Vec<u8>, a: [u8; 4]) {
    out.push(b'"');
    let mut w = 0u128;
    let mut n = 0;
    for (i, &o) in a.iter().enumerate() {
        if i > 0 {
            w |= u128::from(b'.') << (8 * n);
            n += 1;
        }
        let o = o as usize;
        if o >= 100 {
            w |= (u128::from(b'0' + (o / 100) as u8) | pair(o % 100) << 8) << (8 * n);
            n += 3;
        } else if o >= 10 {
            w |= pair(o) << (8 * n);
            n += 2;
        } else {
            w |= u128::from(b'0' + o as u8) << (8 * n);
            n += 1;
        }
    }
    put_word(out, w, n);
    out.push(b'"');
}

/// An unsigned integer in decimal, two digits at a time.
#[inline]
fn uint(out: &mut Vec<u8>, mut v: u64) {
    if v >= 10_000_000_000_000_000 {
        // 17 digits or more: rare enough for the library's way.
        out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
        return;
    }
    let len = v.checked_ilog10().map_or(1, |l| l as usize + 1);
    // Pairs from the lowest; each shifts the ones before it up, so the first digit ends lowest.
    let mut w = 0u128;
    while v >= 100 {
        w = w << 16 | pair((v % 100) as usize);
        v /= 100;
    }
    w = if v >= 10 {
        w << 16 | pair(v as usize)
    } else {
        w << 8 | u128::from(b'0' + v as u8)
    };
    put_word(out, w, len);
}

fn int(out: &mut Vec<u8>, v: i64) {
    if v < 0 {
        out.push(b'-');
    }
    uint(out, v.unsigned_abs());
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Strings that need no escape are copied; the rest go through serde_json as before.
fn string(out: &mut Vec<u8>, b: &[u8]) {
    let end = b.iter().rposition(|&c| c != 0).map_or(0, |i| i + 1);
    let b = &b[..end];
    if b.iter()
        .all(|&c| (0x20..0x7f).contains(&c) && c != b'"' && c != b'\\')
    {
        out.push(b'"');
        out.extend_from_slice(b);
        out.push(b'"');
    } else {
        write_str(out, b);
    }
}

/// 0000-01-01T00:00:00Z up to (not including) 10000-01-01T00:00:00Z, as Unix seconds.
const MAX_FAST_SECS: i64 = 253_402_300_800;

/// "00" to "99", two bytes each.
const PAIRS: [u8; 200] = {
    let mut t = [0u8; 200];
    let mut i = 0;
    while i < 100 {
        t[2 * i] = b'0' + (i / 10) as u8;
        t[2 * i + 1] = b'0' + (i % 10) as u8;
        i += 1;
    }
    t
};

/// `"YYYY-MM-DDT` of a day since the epoch (0 <= day, year below 10000): the proleptic
/// Gregorian calendar by H. Hinnant's civil_from_days, as chrono counts it.
fn date_text(day: i64) -> [u8; 12] {
    let z = day + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as usize;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as usize;
    let y = (yoe + era * 400 + i64::from(m <= 2)) as usize;
    let (hi, lo) = (y / 100, y % 100);
    [
        b'"',
        PAIRS[2 * hi],
        PAIRS[2 * hi + 1],
        PAIRS[2 * lo],
        PAIRS[2 * lo + 1],
        b'-',
        PAIRS[2 * m],
        PAIRS[2 * m + 1],
        b'-',
        PAIRS[2 * d],
        PAIRS[2 * d + 1],
        b'T',
    ]
}

/// `.` and the first `frac` (at most 9) digits of `nanos`, then `Z"`.
fn fraction(out: &mut Vec<u8>, nanos: u32, frac: usize) {
    let mut v = nanos / 10u32.pow(9 - frac as u32);
    let mut w = u128::from(b'"') << 8 | u128::from(b'Z');
    for _ in 0..frac {
        w = w << 8 | u128::from(b'0' + (v % 10) as u8);
        v /= 10;
    }
    put_word(out, w << 8 | u128::from(b'.'), frac + 3);
}

impl RecordWriter {
    pub fn new() -> RecordWriter {
        RecordWriter::default()
    }

    fn keys(&mut self, plan: &Arc<Plan>) -> Keys {
        let k = Arc::as_ptr(plan) as usize;
        if let Some((_, keys)) = self.plans.get(&k) {
            return keys.clone();
        }
        if self.plans.len() >= MAX_PLANS {
            self.plans.clear();
        }
        let keys = keys_of(plan);
        self.plans.insert(k, (plan.clone(), keys.clone()));
        keys
    }

    /// `"YYYY-MM-DDTHH:MM:SS` of `secs` (no fraction, no closing): the date from the cache when
    /// it is the last day written, the time of day from digit pairs; `false` outside years
    /// 0000-9999, which chrono writes with a sign or more digits (the general path does).
    fn second(&mut self, out: &mut Vec<u8>, secs: i64) -> bool {
        if !(0..MAX_FAST_SECS).contains(&secs) {
            return false;
        }
        let (day, tod) = (secs / 86_400, (secs % 86_400) as usize);
        let date = match &self.day {
            Some((d, text)) if *d == day => text,
            _ => &self.day.insert((day, date_text(day))).1,
        };
        out.extend_from_slice(date);
        let (h, m, s) = (tod / 3600, tod / 60 % 60, tod % 60);
        let colon = u128::from(b':');
        put_word(
            out,
            pair(h) | colon << 16 | pair(m) << 24 | colon << 40 | pair(s) << 48,
            8,
        );
        true
    }

    /// A date-time as the general path writes it: RFC 3339, UTC, `frac` digits of fraction.
    fn time(&mut self, out: &mut Vec<u8>, secs: i64, nanos: u32, frac: usize) {
        if self.second(out, secs) {
            if frac > 0 {
                fraction(out, nanos, frac);
            } else {
                out.extend_from_slice(b"Z\"");
            }
            return;
        }
        let format = match frac {
            0 => SecondsFormat::Secs,
            3 => SecondsFormat::Millis,
            6 => SecondsFormat::Micros,
            _ => SecondsFormat::Nanos,
        };
        match DateTime::from_timestamp(secs, nanos) {
            Some(t) => {
                out.push(b'"');
                out.extend_from_slice(t.to_rfc3339_opts(format, true).as_bytes());
                out.push(b'"');
            }
            None => {
                let mut b = itoa::Buffer::new();
                out.extend_from_slice(b.format(secs.max(0) as u64).as_bytes());
            }
        }
    }

    /// Appends one line per record of `rows` of `batch` (of message `msg`).
    pub fn write_rows(
        &mut self,
        out: &mut Vec<u8>,
        origin: Origin<'_>,
        msg: &DecodedMessage,
        batch: &Batch,
        rows: impl Iterator<Item = usize>,
        registry: &Registry,
    ) {
        let Some(keys) = self.keys(&batch.plan) else {
            for r in rows {
                write_record(out, origin, msg, batch, r, registry);
            }
            return;
        };
        // The metadata, once per batch.
        let mut prefix = std::mem::take(&mut self.prefix);
        prefix.clear();
        write_meta(&mut prefix, origin, msg, batch);
        let cols: Vec<Column<'_>> = (0..batch.plan.fields.len())
            .map(|f| batch.column(f))
            .collect();
        let buf = &msg.buf[..];
        let mut block = [0u8; PREFIX_BLOCK];
        let short = prefix.len() <= PREFIX_BLOCK;
        if short {
            block[..prefix.len()].copy_from_slice(&prefix);
        }
        for r in rows {
            if short {
                put_block(out, &block, prefix.len());
            } else {
                out.extend_from_slice(&prefix);
            }
            for (f, col) in cols.iter().enumerate() {
                keys[f].put(out);
                self.value(out, col, r, buf, batch.plan.fields[f].column);
            }
            out.extend_from_slice(b"}\n");
        }
        self.prefix = prefix;
    }

    fn value(&mut self, out: &mut Vec<u8>, col: &Column<'_>, r: usize, buf: &[u8], ty: ColumnType) {
        match col {
            Column::U8(c) => uint(out, c[r].into()),
            Column::U16(c) => uint(out, c[r].into()),
            Column::U32(c) => uint(out, c[r].into()),
            Column::U64(c) => uint(out, c[r]),
            Column::I8(c) => int(out, c[r].into()),
            Column::I16(c) => int(out, c[r].into()),
            Column::I32(c) => int(out, c[r].into()),
            Column::I64(c) => int(out, c[r]),
            Column::F32(c) => float(out, c[r] as f64),
            Column::F64(c) => float(out, c[r]),
            Column::Bool(c) => match c[r] {
                1 => out.extend_from_slice(b"true"),
                2 => out.extend_from_slice(b"false"),
                x => uint(out, x.into()),
            },
            Column::Mac(c) => {
                out.push(b'"');
                for (i, &b) in c[r].iter().enumerate() {
                    if i > 0 {
                        out.push(b':');
                    }
                    out.push(HEX[(b >> 4) as usize]);
                    out.push(HEX[(b & 15) as usize]);
                }
                out.push(b'"');
            }
            Column::Ipv4(c) => ipv4(out, c[r]),
            Column::Ipv6(c) => {
                let _ = write!(out, "\"{}\"", std::net::Ipv6Addr::from(c[r]));
            }
            Column::DateTimeSeconds(c) => self.time(out, c[r] as i64, 0, 0),
            Column::DateTimeMilliseconds(c) => {
                let ms = c[r] as i64;
                self.time(
                    out,
                    ms.div_euclid(1000),
                    (ms.rem_euclid(1000) * 1_000_000) as u32,
                    3,
                )
            }
            Column::DateTimeMicroseconds(c) => {
                let (s, ns) = ntp_to_unix(c[r] & !0x7ff);
                self.time(out, s, ns, 6)
            }
            Column::DateTimeNanoseconds(c) => {
                let (s, ns) = ntp_to_unix(c[r]);
                self.time(out, s, ns, 9)
            }
            Column::Spans(c) => {
                let v = &buf[Span::range(c[r])];
                if ty == ColumnType::String {
                    string(out, v);
                } else {
                    out.push(b'"');
                    for &x in v {
                        out.push(HEX[(x >> 4) as usize]);
                        out.push(HEX[(x & 15) as usize]);
                    }
                    out.push(b'"');
                }
            }
        }
    }
}

fn float(out: &mut Vec<u8>, x: f64) {
    if x.is_finite() {
        let mut b = ryu::Buffer::new();
        out.extend_from_slice(b.format(x).as_bytes());
    } else {
        write_str(out, x.to_string().as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn chrono_second(secs: i64) -> String {
        let t = DateTime::from_timestamp(secs, 0).expect("in chrono's range");
        format!("\"{}", &t.to_rfc3339_opts(SecondsFormat::Secs, true)[..19])
    }

    fn ours(w: &mut RecordWriter, secs: i64) -> String {
        let mut out = Vec::new();
        assert!(w.second(&mut out, secs));
        String::from_utf8(out).expect("ASCII")
    }

    #[test]
    fn calendar_edges_match_chrono() {
        let mut w = RecordWriter::new();
        // The epoch, leap days of 2000 (leap) and 2100 (not), the last second of year 9999.
        for secs in [
            0,
            951_782_400,
            951_868_799,
            4_107_542_400,
            4_107_628_800,
            MAX_FAST_SECS - 1,
        ] {
            assert_eq!(ours(&mut w, secs), chrono_second(secs), "secs {secs}");
        }
        assert!(!w.second(&mut Vec::new(), MAX_FAST_SECS));
        assert!(!w.second(&mut Vec::new(), -1));
    }

    #[test]
    fn number_edges() {
        let mut out = Vec::new();
        for u in [
            0,
            9,
            10,
            99,
            100,
            101,
            9_999_999_999_999_999,
            10_000_000_000_000_000,
            u64::MAX,
        ] {
            uint(&mut out, u);
            out.push(b' ');
        }
        for i in [i64::MIN, -1, 0] {
            int(&mut out, i);
            out.push(b' ');
        }
        ipv4(&mut out, [0, 9, 100, 255]);
        let want = format!(
            "0 9 10 99 100 101 9999999999999999 10000000000000000 {} {} -1 0 \"0.9.100.255\"",
            u64::MAX,
            i64::MIN
        );
        assert_eq!(String::from_utf8(out).expect("ASCII"), want);
    }

    proptest! {
        #[test]
        fn numbers_and_addresses_match_std(u in any::<u64>(), i in any::<i64>(), a in any::<[u8; 4]>(),
                                           nanos in 0u32..1_000_000_000) {
            let mut out = Vec::new();
            uint(&mut out, u);
            out.push(b' ');
            int(&mut out, i);
            out.push(b' ');
            ipv4(&mut out, a);
            for frac in [3, 6, 9] {
                fraction(&mut out, nanos, frac);
            }
            let want = format!(
                "{u} {i} \"{}\".{:03}Z\".{:06}Z\".{:09}Z\"",
                std::net::Ipv4Addr::from(a),
                nanos / 1_000_000,
                nanos / 1000,
                nanos
            );
            prop_assert_eq!(String::from_utf8(out).expect("ASCII"), want);
        }

        #[test]
        fn any_second_matches_chrono(secs in 0..MAX_FAST_SECS, near in 0i64..200_000) {
            let mut w = RecordWriter::new();
            prop_assert_eq!(ours(&mut w, secs), chrono_second(secs));
            // The next one from the day cache.
            let next = (secs + near).min(MAX_FAST_SECS - 1);
            prop_assert_eq!(ours(&mut w, next), chrono_second(next));
        }
    }
}
