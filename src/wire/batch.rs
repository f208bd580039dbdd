//! Data Set decoding into a columnar batch (one typed column per template field) and the row view
//! over it. Variable-length values are spans into the message buffer; structured data
//! (RFC 6313) is decoded on demand by [`super::structured`].

use super::error::WireError;
use super::plan::{ColumnType, Plan};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

/// A byte range in the message buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub start: u32,
    pub len: u32,
}

impl Span {
    pub fn range(self) -> std::ops::Range<usize> {
        self.start as usize..(self.start + self.len) as usize
    }
}

/// One typed column. Integers are widened to their element's type (reduced-size encoding);
/// NTP timestamps (micro/nanoseconds) are kept as the raw 64-bit NTP value.
#[derive(Debug, Clone, PartialEq)]
pub enum Column {
    U8(Vec<u8>),
    U16(Vec<u16>),
    U32(Vec<u32>),
    U64(Vec<u64>),
    I8(Vec<i8>),
    I16(Vec<i16>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
    /// Raw octet: 1 is true, 2 is false (RFC 7011 section 6.1.5); others are kept as they came.
    Bool(Vec<u8>),
    Mac(Vec<[u8; 6]>),
    Ipv4(Vec<[u8; 4]>),
    Ipv6(Vec<[u8; 16]>),
    DateTimeSeconds(Vec<u32>),
    DateTimeMilliseconds(Vec<u64>),
    DateTimeMicroseconds(Vec<u64>),
    DateTimeNanoseconds(Vec<u64>),
    /// Spans of: strings, octet arrays, and undecoded lists.
    Spans(Vec<Span>),
}

impl Column {
    pub fn len(&self) -> usize {
        match self {
            Column::U8(v) => v.len(),
            Column::U16(v) => v.len(),
            Column::U32(v) => v.len(),
            Column::U64(v) => v.len(),
            Column::I8(v) => v.len(),
            Column::I16(v) => v.len(),
            Column::I32(v) => v.len(),
            Column::I64(v) => v.len(),
            Column::F32(v) => v.len(),
            Column::F64(v) => v.len(),
            Column::Bool(v) => v.len(),
            Column::Mac(v) => v.len(),
            Column::Ipv4(v) => v.len(),
            Column::Ipv6(v) => v.len(),
            Column::DateTimeSeconds(v) => v.len(),
            Column::DateTimeMilliseconds(v) => v.len(),
            Column::DateTimeMicroseconds(v) => v.len(),
            Column::DateTimeNanoseconds(v) => v.len(),
            Column::Spans(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A typed value of one field of one record, borrowing variable data from the message.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    Unsigned(u64),
    Signed(i64),
    Float(f64),
    Bool(bool),
    /// A boolean octet that is neither 1 nor 2.
    InvalidBool(u8),
    Mac([u8; 6]),
    Ipv4(Ipv4Addr),
    Ipv6(Ipv6Addr),
    DateTimeSeconds(u32),
    DateTimeMilliseconds(u64),
    /// Raw NTP timestamp; the low 11 bits of the fraction are not significant (RFC 7011 6.1.9).
    DateTimeMicroseconds(u64),
    DateTimeNanoseconds(u64),
    String(&'a [u8]),
    Bytes(&'a [u8]),
    BasicList(&'a [u8]),
    SubTemplateList(&'a [u8]),
    SubTemplateMultiList(&'a [u8]),
}

/// The records of one Data Set, decoded column by column.
#[derive(Debug, Clone)]
pub struct Batch {
    pub plan: Arc<Plan>,
    /// Offset of the Set header in the message (0 for lists inside a record).
    pub set_offset: usize,
    /// Where each record begins and ends in the message.
    pub records: Vec<Span>,
    pub columns: Vec<Column>,
    /// For templates with variable-length fields: per record, one base offset per segment
    /// (`segments` entries) and one span per variable-length field.
    bases: Vec<u32>,
    varlen: Vec<Span>,
}

/// Reads an unsigned big-endian integer of 1 to 8 bytes.
#[inline(always)]
pub(crate) fn read_uint(b: &[u8]) -> u64 {
    match b.len() {
        1 => b[0] as u64,
        2 => u16::from_be_bytes([b[0], b[1]]) as u64,
        4 => u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as u64,
        8 => u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
        _ => b.iter().fold(0u64, |acc, &x| (acc << 8) | x as u64),
    }
}

/// Reads a signed big-endian integer of 1 to 8 bytes, sign-extending reduced-size values.
#[inline(always)]
pub(crate) fn read_int(b: &[u8]) -> i64 {
    let n = b.len();
    let u = read_uint(b);
    let shift = 64 - 8 * n as u32;
    ((u << shift) as i64) >> shift
}

#[inline(always)]
fn read_f64(b: &[u8]) -> f64 {
    if b.len() == 4 {
        f32::from_be_bytes([b[0], b[1], b[2], b[3]]) as f64
    } else {
        f64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
    }
}

impl Batch {
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Where field `f` of record `r` lies in the message (the value, after any length prefix).
    pub fn field_span(&self, r: usize, f: usize) -> Span {
        let pf = &self.plan.fields[f];
        if let Some(v) = pf.varlen_index {
            return self.varlen[r * self.plan.varlen_count() + v];
        }
        let base = if self.plan.fixed_len.is_some() {
            self.records[r].start
        } else {
            self.bases[r * (self.plan.varlen_count() + 1) + pf.segment]
        };
        Span {
            start: base + pf.offset as u32,
            len: pf.spec.length as u32,
        }
    }

    /// The typed value of field `f` of record `r`; `msg` is the message buffer the batch was
    /// decoded from.
    pub fn value<'m>(&self, msg: &'m [u8], r: usize, f: usize) -> Value<'m> {
        let span = |c: &Vec<Span>| &msg[c[r].range()];
        match &self.columns[f] {
            Column::U8(c) => Value::Unsigned(c[r] as u64),
            Column::U16(c) => Value::Unsigned(c[r] as u64),
            Column::U32(c) => Value::Unsigned(c[r] as u64),
            Column::U64(c) => Value::Unsigned(c[r]),
            Column::I8(c) => Value::Signed(c[r] as i64),
            Column::I16(c) => Value::Signed(c[r] as i64),
            Column::I32(c) => Value::Signed(c[r] as i64),
            Column::I64(c) => Value::Signed(c[r]),
            Column::F32(c) => Value::Float(c[r] as f64),
            Column::F64(c) => Value::Float(c[r]),
            Column::Bool(c) => match c[r] {
                1 => Value::Bool(true),
                2 => Value::Bool(false),
                x => Value::InvalidBool(x),
            },
            Column::Mac(c) => Value::Mac(c[r]),
            Column::Ipv4(c) => Value::Ipv4(Ipv4Addr::from(c[r])),
            Column::Ipv6(c) => Value::Ipv6(Ipv6Addr::from(c[r])),
            Column::DateTimeSeconds(c) => Value::DateTimeSeconds(c[r]),
            Column::DateTimeMilliseconds(c) => Value::DateTimeMilliseconds(c[r]),
            Column::DateTimeMicroseconds(c) => Value::DateTimeMicroseconds(c[r]),
            Column::DateTimeNanoseconds(c) => Value::DateTimeNanoseconds(c[r]),
            Column::Spans(c) => match self.plan.fields[f].column {
                ColumnType::String => Value::String(span(c)),
                ColumnType::BasicList => Value::BasicList(span(c)),
                ColumnType::SubTemplateList => Value::SubTemplateList(span(c)),
                ColumnType::SubTemplateMultiList => Value::SubTemplateMultiList(span(c)),
                _ => Value::Bytes(span(c)),
            },
        }
    }
}

/// Decodes the Data Records in `msg[start..end]` (a Data Set body, or the content of a
/// subTemplateList) with `plan`. Trailing bytes too few for one more record are padding.
pub fn decode_records(
    plan: &Arc<Plan>,
    msg: &[u8],
    start: usize,
    end: usize,
    set_offset: usize,
) -> Result<Batch, WireError> {
    if plan.min_len == 0 {
        return Err(WireError::Data {
            offset: set_offset,
            template_id: plan.template.id,
            reason: "the template describes zero-length records".into(),
        });
    }
    let body = &msg[start..end];
    let mut batch = Batch {
        plan: plan.clone(),
        set_offset,
        records: Vec::new(),
        columns: Vec::with_capacity(plan.fields.len()),
        bases: Vec::new(),
        varlen: Vec::new(),
    };
    if let Some(rec_len) = plan.fixed_len {
        let n = body.len() / rec_len;
        batch.records.reserve_exact(n);
        batch.records.extend((0..n).map(|r| Span {
            start: (start + r * rec_len) as u32,
            len: rec_len as u32,
        }));
        for pf in &plan.fields {
            let off = start + pf.offset;
            let offsets = (0..n).map(|r| off + r * rec_len);
            batch
                .columns
                .push(fill(pf.column, msg, offsets, pf.spec.length as usize, n));
        }
        return Ok(batch);
    }
    walk_varlen(plan, msg, start, end, set_offset, &mut batch)?;
    let segs = plan.varlen_count() + 1;
    let vars = plan.varlen_count();
    let n = batch.records.len();
    for pf in &plan.fields {
        let col = match pf.varlen_index {
            Some(v) => Column::Spans((0..n).map(|r| batch.varlen[r * vars + v]).collect()),
            None => {
                let bases = &batch.bases;
                let (seg, off) = (pf.segment, pf.offset);
                let offsets = (0..n).map(|r| bases[r * segs + seg] as usize + off);
                fill(pf.column, msg, offsets, pf.spec.length as usize, n)
            }
        };
        batch.columns.push(col);
    }
    Ok(batch)
}

/// First pass over records with variable-length fields: record bounds, segment bases, and
/// the value span of each variable-length field, all checked against the set's end.
fn walk_varlen(
    plan: &Plan,
    msg: &[u8],
    start: usize,
    end: usize,
    set_offset: usize,
    batch: &mut Batch,
) -> Result<(), WireError> {
    let segs = plan.segment_fixed_len.len();
    let mut pos = start;
    while end - pos >= plan.min_len {
        let rec_start = pos;
        let mut base = pos;
        for (k, &fixed) in plan.segment_fixed_len.iter().enumerate() {
            batch.bases.push(base as u32);
            let prefix_at = base + fixed;
            if k + 1 == segs {
                if prefix_at > end {
                    return Err(truncated(plan, set_offset, batch.records.len(), rec_start));
                }
                pos = prefix_at;
                break;
            }
            if prefix_at >= end {
                return Err(truncated(plan, set_offset, batch.records.len(), rec_start));
            }
            let (value_at, len) = match msg[prefix_at] {
                255 => {
                    if prefix_at + 3 > end {
                        return Err(truncated(plan, set_offset, batch.records.len(), rec_start));
                    }
                    (
                        prefix_at + 3,
                        u16::from_be_bytes([msg[prefix_at + 1], msg[prefix_at + 2]]) as usize,
                    )
                }
                l => (prefix_at + 1, l as usize),
            };
            if value_at + len > end {
                return Err(truncated(plan, set_offset, batch.records.len(), rec_start));
            }
            batch.varlen.push(Span {
                start: value_at as u32,
                len: len as u32,
            });
            base = value_at + len;
        }
        batch.records.push(Span {
            start: rec_start as u32,
            len: (pos - rec_start) as u32,
        });
    }
    Ok(())
}

fn truncated(plan: &Plan, set_offset: usize, index: usize, at: usize) -> WireError {
    WireError::Data {
        offset: set_offset,
        template_id: plan.template.id,
        reason: format!("record {index} at offset {at} runs past the end of the set"),
    }
}

/// Second pass: one typed column from the field at `offsets` (one per record, each with `len`
/// bytes, all checked to lie inside the set by the caller). The match on the column type and
/// length sits outside the record loop, and the common full-size encodings read a fixed-size
/// array, so the loop body is a load and a byte swap.
fn fill<I>(ty: ColumnType, msg: &[u8], offsets: I, len: usize, n: usize) -> Column
where
    I: Iterator<Item = usize>,
{
    #[inline(always)]
    fn fixed<T, const N: usize>(
        msg: &[u8],
        offsets: impl Iterator<Item = usize>,
        n: usize,
        f: impl Fn([u8; N]) -> T,
    ) -> Vec<T> {
        let mut v = Vec::with_capacity(n);
        v.extend(offsets.map(|p| {
            let mut a = [0u8; N];
            a.copy_from_slice(&msg[p..p + N]);
            f(a)
        }));
        v
    }
    #[inline(always)]
    fn reduced<T>(
        msg: &[u8],
        offsets: impl Iterator<Item = usize>,
        n: usize,
        len: usize,
        f: impl Fn(&[u8]) -> T,
    ) -> Vec<T> {
        let mut v = Vec::with_capacity(n);
        v.extend(offsets.map(|p| f(&msg[p..p + len])));
        v
    }
    match (ty, len) {
        (ColumnType::U8, _) => Column::U8(fixed(msg, offsets, n, |a: [u8; 1]| a[0])),
        (ColumnType::U16, 2) => Column::U16(fixed(msg, offsets, n, u16::from_be_bytes)),
        (ColumnType::U16, _) => Column::U16(reduced(msg, offsets, n, len, |b| read_uint(b) as u16)),
        (ColumnType::U32, 4) => Column::U32(fixed(msg, offsets, n, u32::from_be_bytes)),
        (ColumnType::U32, _) => Column::U32(reduced(msg, offsets, n, len, |b| read_uint(b) as u32)),
        (ColumnType::U64, 8) => Column::U64(fixed(msg, offsets, n, u64::from_be_bytes)),
        (ColumnType::U64, 4) => {
            Column::U64(fixed(msg, offsets, n, |a| u32::from_be_bytes(a) as u64))
        }
        (ColumnType::U64, _) => Column::U64(reduced(msg, offsets, n, len, read_uint)),
        (ColumnType::I8, _) => Column::I8(fixed(msg, offsets, n, |a: [u8; 1]| a[0] as i8)),
        (ColumnType::I16, _) => Column::I16(reduced(msg, offsets, n, len, |b| read_int(b) as i16)),
        (ColumnType::I32, _) => Column::I32(reduced(msg, offsets, n, len, |b| read_int(b) as i32)),
        (ColumnType::I64, _) => Column::I64(reduced(msg, offsets, n, len, read_int)),
        (ColumnType::F32, _) => Column::F32(fixed(msg, offsets, n, f32::from_be_bytes)),
        (ColumnType::F64, _) => Column::F64(reduced(msg, offsets, n, len, read_f64)),
        (ColumnType::Bool, _) => Column::Bool(fixed(msg, offsets, n, |a: [u8; 1]| a[0])),
        (ColumnType::Mac, _) => Column::Mac(fixed(msg, offsets, n, |a| a)),
        (ColumnType::Ipv4, _) => Column::Ipv4(fixed(msg, offsets, n, |a| a)),
        (ColumnType::Ipv6, _) => Column::Ipv6(fixed(msg, offsets, n, |a| a)),
        (ColumnType::DateTimeSeconds, _) => {
            Column::DateTimeSeconds(fixed(msg, offsets, n, u32::from_be_bytes))
        }
        (ColumnType::DateTimeMilliseconds, _) => {
            Column::DateTimeMilliseconds(fixed(msg, offsets, n, u64::from_be_bytes))
        }
        (ColumnType::DateTimeMicroseconds, _) => {
            Column::DateTimeMicroseconds(fixed(msg, offsets, n, u64::from_be_bytes))
        }
        (ColumnType::DateTimeNanoseconds, _) => {
            Column::DateTimeNanoseconds(fixed(msg, offsets, n, u64::from_be_bytes))
        }
        (
            ColumnType::String
            | ColumnType::Bytes
            | ColumnType::BasicList
            | ColumnType::SubTemplateList
            | ColumnType::SubTemplateMultiList,
            _,
        ) => {
            let _ = msg;
            Column::Spans(
                offsets
                    .map(|p| Span {
                        start: p as u32,
                        len: len as u32,
                    })
                    .collect(),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::registry::Registry;
    use crate::wire::template::{FieldSpec, Template, VARLEN};

    #[test]
    fn integers_reduced_and_signed() {
        assert_eq!(read_uint(&[1, 2, 3]), 0x010203);
        assert_eq!(read_int(&[0xff, 0xfe]), -2);
        assert_eq!(read_int(&[0x7f]), 127);
        assert_eq!(read_int(&[0xff; 8]), -1);
    }

    #[test]
    fn varlen_records_including_empty_values() {
        // sourceIPv4Address, applicationName (varlen), protocolIdentifier
        let t = Template::data(
            256,
            vec![
                FieldSpec::new(8, 0, 4),
                FieldSpec::new(96, 0, VARLEN),
                FieldSpec::new(4, 0, 1),
            ],
        );
        let plan = Arc::new(Plan::compile(t, &Registry::builtin()));
        let mut body = vec![10, 0, 0, 1, 3, b'd', b'n', b's', 17];
        body.extend_from_slice(&[10, 0, 0, 2, 0, 6]); // empty value must not end the set
        body.extend_from_slice(&[10, 0, 0, 3, 255, 0, 2, b'h', b'i', 1]); // 3-byte length form
        body.extend_from_slice(&[0, 0]); // padding
        let b = decode_records(&plan, &body, 0, body.len(), 0).expect("decodes");
        assert_eq!(b.len(), 3);
        assert_eq!(
            b.value(&body, 1, 0),
            Value::Ipv4(Ipv4Addr::new(10, 0, 0, 2))
        );
        assert_eq!(b.value(&body, 0, 1), Value::String(b"dns"));
        assert_eq!(b.value(&body, 1, 1), Value::String(b""));
        assert_eq!(b.value(&body, 1, 2), Value::Unsigned(6));
        assert_eq!(b.value(&body, 2, 1), Value::String(b"hi"));
        assert_eq!(b.value(&body, 2, 2), Value::Unsigned(1));
        assert_eq!(b.field_span(2, 2), Span { start: 24, len: 1 });
    }

    #[test]
    fn truncated_varlen_record_is_an_error() {
        let t = Template::data(
            256,
            vec![FieldSpec::new(96, 0, VARLEN), FieldSpec::new(4, 0, 1)],
        );
        let plan = Arc::new(Plan::compile(t, &Registry::builtin()));
        let body = [9, b'a', b'b', 1];
        assert!(decode_records(&plan, &body, 0, body.len(), 0).is_err());
    }
}
