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
type Keys = Option<Arc<Vec<Box<[u8]>>>>;

#[derive(Default)]
pub struct RecordWriter {
    plans: FxHashMap<usize, (Arc<Plan>, Keys)>,
    /// The last second written, as `"YYYY-MM-DDTHH:MM:SS` (no closing).
    second: Option<(i64, [u8; 20])>,
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
                    k.into_boxed_slice()
                })
                .collect(),
        )
    })
}

/// "000".."255" as written in an address, by value.
fn octet(out: &mut Vec<u8>, b: u8) {
    if b >= 100 {
        out.push(b'0' + b / 100);
        out.push(b'0' + b / 10 % 10);
    } else if b >= 10 {
        out.push(b'0' + b / 10);
    }
    out.push(b'0' + b % 10);
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

fn digits(out: &mut Vec<u8>, mut v: u64, width: usize) {
    let mut buf = [b'0'; 20];
    for i in (0..width).rev() {
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
    out.extend_from_slice(&buf[..width]);
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

    /// `"<date>T<time>` of `secs` (no fraction, no closing): from the cache when it is the
    /// last second written; `false` for a second chrono does not write in 20 bytes.
    fn second(&mut self, out: &mut Vec<u8>, secs: i64) -> bool {
        if let Some((s, text)) = &self.second
            && *s == secs
        {
            out.extend_from_slice(text);
            return true;
        }
        let Some(t) = DateTime::from_timestamp(secs, 0) else {
            return false;
        };
        let s = t.to_rfc3339_opts(SecondsFormat::Secs, true);
        // "YYYY-MM-DDTHH:MM:SSZ": 20 bytes; other years are left to the general path.
        if s.len() != 20 {
            return false;
        }
        let mut text = [0u8; 20];
        text[0] = b'"';
        text[1..].copy_from_slice(&s.as_bytes()[..19]);
        out.extend_from_slice(&text);
        self.second = Some((secs, text));
        true
    }

    /// A date-time as the general path writes it: RFC 3339, UTC, `frac` digits of fraction.
    fn time(&mut self, out: &mut Vec<u8>, secs: i64, nanos: u32, frac: usize) {
        if self.second(out, secs) {
            if frac > 0 {
                out.push(b'.');
                digits(out, nanos as u64 / 10u64.pow(9 - frac as u32), frac);
            }
            out.extend_from_slice(b"Z\"");
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
        for r in rows {
            out.extend_from_slice(&prefix);
            for (f, col) in cols.iter().enumerate() {
                out.extend_from_slice(&keys[f]);
                self.value(out, col, r, buf, batch.plan.fields[f].column);
            }
            out.extend_from_slice(b"}\n");
        }
        self.prefix = prefix;
    }

    fn value(&mut self, out: &mut Vec<u8>, col: &Column<'_>, r: usize, buf: &[u8], ty: ColumnType) {
        let mut ib = itoa::Buffer::new();
        match col {
            Column::U8(c) => out.extend_from_slice(ib.format(c[r]).as_bytes()),
            Column::U16(c) => out.extend_from_slice(ib.format(c[r]).as_bytes()),
            Column::U32(c) => out.extend_from_slice(ib.format(c[r]).as_bytes()),
            Column::U64(c) => out.extend_from_slice(ib.format(c[r]).as_bytes()),
            Column::I8(c) => out.extend_from_slice(ib.format(c[r] as i64).as_bytes()),
            Column::I16(c) => out.extend_from_slice(ib.format(c[r] as i64).as_bytes()),
            Column::I32(c) => out.extend_from_slice(ib.format(c[r] as i64).as_bytes()),
            Column::I64(c) => out.extend_from_slice(ib.format(c[r]).as_bytes()),
            Column::F32(c) => float(out, c[r] as f64),
            Column::F64(c) => float(out, c[r]),
            Column::Bool(c) => match c[r] {
                1 => out.extend_from_slice(b"true"),
                2 => out.extend_from_slice(b"false"),
                x => out.extend_from_slice(ib.format(x).as_bytes()),
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
            Column::Ipv4(c) => {
                out.push(b'"');
                for (i, &b) in c[r].iter().enumerate() {
                    if i > 0 {
                        out.push(b'.');
                    }
                    octet(out, b);
                }
                out.push(b'"');
            }
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
