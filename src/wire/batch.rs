//! Data Set decoding into a columnar batch (one typed column per template field) and the row view
//! over it. Variable-length values are spans into the message buffer; structured data
//! (RFC 6313) is decoded on demand by [`super::structured`].

use super::error::WireError;
use super::plan::{ColumnType, Plan};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

/// A byte range in the message buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(C)]
pub struct Span {
    pub start: u32,
    pub len: u32,
}

impl Span {
    pub fn range(self) -> std::ops::Range<usize> {
        self.start as usize..(self.start + self.len) as usize
    }
}

/// A read-only view of one typed column. Integers are widened to their element's type
/// (reduced-size encoding); NTP timestamps (micro/nanoseconds) are the raw 64-bit NTP value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Column<'a> {
    U8(&'a [u8]),
    U16(&'a [u16]),
    U32(&'a [u32]),
    U64(&'a [u64]),
    I8(&'a [i8]),
    I16(&'a [i16]),
    I32(&'a [i32]),
    I64(&'a [i64]),
    F32(&'a [f32]),
    F64(&'a [f64]),
    /// Raw octet: 1 is true, 2 is false (RFC 7011 section 6.1.5); others are kept as they came.
    Bool(&'a [u8]),
    Mac(&'a [[u8; 6]]),
    Ipv4(&'a [[u8; 4]]),
    Ipv6(&'a [[u8; 16]]),
    DateTimeSeconds(&'a [u32]),
    DateTimeMilliseconds(&'a [u64]),
    DateTimeMicroseconds(&'a [u64]),
    DateTimeNanoseconds(&'a [u64]),
    /// Spans in the message of strings, octet arrays and (undecoded) lists.
    Spans(&'a [Span]),
}

impl Column<'_> {
    pub fn len(&self) -> usize {
        match self {
            Column::U8(v) | Column::Bool(v) => v.len(),
            Column::U16(v) => v.len(),
            Column::U32(v) | Column::DateTimeSeconds(v) => v.len(),
            Column::U64(v)
            | Column::DateTimeMilliseconds(v)
            | Column::DateTimeMicroseconds(v)
            | Column::DateTimeNanoseconds(v) => v.len(),
            Column::I8(v) => v.len(),
            Column::I16(v) => v.len(),
            Column::I32(v) => v.len(),
            Column::I64(v) => v.len(),
            Column::F32(v) => v.len(),
            Column::F64(v) => v.len(),
            Column::Mac(v) => v.len(),
            Column::Ipv4(v) => v.len(),
            Column::Ipv6(v) => v.len(),
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

/// The records of one Data Set, decoded column by column into one allocation.
#[derive(Debug, Clone)]
pub struct Batch {
    pub plan: Arc<Plan>,
    /// Offset of the Set header in the message (0 for lists inside a record).
    pub set_offset: usize,
    /// Offset of the first record in the message.
    start: usize,
    len: usize,
    /// Column stride: room for this many records per column (at least `len`).
    cap: usize,
    /// Every column, laid out as the plan's `arena_offset`s say; u64 keeps it 8-byte aligned.
    /// For templates with variable-length fields, it ends with where each segment of each
    /// record starts, segment by segment (`bases()[segment * cap + record]`), from byte
    /// `bases_at` on.
    arena: Vec<u64>,
    bases_at: usize,
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
    /// A batch of no records, without going through [`decode_records`]: that refuses plans of
    /// zero-length records, which is what a basicList of zero-length elements compiles to.
    pub(crate) fn empty(plan: Arc<Plan>, set_offset: usize) -> Batch {
        Batch {
            plan,
            set_offset,
            start: 0,
            len: 0,
            cap: 0,
            arena: Vec::new(),
            bases_at: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes of column storage this batch holds (what a queue of batches is bounded by).
    pub fn heap_bytes(&self) -> usize {
        self.arena.len() * 8
    }

    fn bases(&self) -> &[u32] {
        bytemuck::cast_slice(&bytemuck::cast_slice::<u64, u8>(&self.arena)[self.bases_at..])
    }

    /// Where record `r` lies in the message.
    pub fn record_span(&self, r: usize) -> Span {
        match self.plan.fixed_len {
            Some(l) => Span {
                start: (self.start + r * l) as u32,
                len: l as u32,
            },
            None => {
                let last = self.plan.segment_fixed_len.len() - 1;
                let bases = self.bases();
                let start = bases[r];
                let end = bases[last * self.cap + r] + self.plan.segment_fixed_len[last] as u32;
                Span {
                    start,
                    len: end - start,
                }
            }
        }
    }

    fn bytes(&self, f: usize) -> &[u8] {
        let (size, _) = self.plan.fields[f].column.size_align();
        let at = self.plan.fields[f].arena_offset * self.cap;
        &bytemuck::cast_slice::<u64, u8>(&self.arena)[at..at + size * self.len]
    }

    /// The typed column of field `f`.
    pub fn column(&self, f: usize) -> Column<'_> {
        let b = self.bytes(f);
        match self.plan.fields[f].column {
            ColumnType::U8 => Column::U8(b),
            ColumnType::U16 => Column::U16(bytemuck::cast_slice(b)),
            ColumnType::U32 => Column::U32(bytemuck::cast_slice(b)),
            ColumnType::U64 => Column::U64(bytemuck::cast_slice(b)),
            ColumnType::I8 => Column::I8(bytemuck::cast_slice(b)),
            ColumnType::I16 => Column::I16(bytemuck::cast_slice(b)),
            ColumnType::I32 => Column::I32(bytemuck::cast_slice(b)),
            ColumnType::I64 => Column::I64(bytemuck::cast_slice(b)),
            ColumnType::F32 => Column::F32(bytemuck::cast_slice(b)),
            ColumnType::F64 => Column::F64(bytemuck::cast_slice(b)),
            ColumnType::Bool => Column::Bool(b),
            ColumnType::Mac => Column::Mac(bytemuck::cast_slice(b)),
            ColumnType::Ipv4 => Column::Ipv4(bytemuck::cast_slice(b)),
            ColumnType::Ipv6 => Column::Ipv6(bytemuck::cast_slice(b)),
            ColumnType::DateTimeSeconds => Column::DateTimeSeconds(bytemuck::cast_slice(b)),
            ColumnType::DateTimeMilliseconds => {
                Column::DateTimeMilliseconds(bytemuck::cast_slice(b))
            }
            ColumnType::DateTimeMicroseconds => {
                Column::DateTimeMicroseconds(bytemuck::cast_slice(b))
            }
            ColumnType::DateTimeNanoseconds => Column::DateTimeNanoseconds(bytemuck::cast_slice(b)),
            ColumnType::String
            | ColumnType::Bytes
            | ColumnType::BasicList
            | ColumnType::SubTemplateList
            | ColumnType::SubTemplateMultiList => Column::Spans(bytemuck::cast_slice(b)),
        }
    }

    /// Where field `f` of record `r` lies in the message (the value, after any length prefix).
    pub fn field_span(&self, r: usize, f: usize) -> Span {
        let pf = &self.plan.fields[f];
        if pf.varlen_index.is_some()
            && let Column::Spans(spans) = self.column(f)
        {
            return spans[r];
        }
        let base = match self.plan.fixed_len {
            Some(l) => (self.start + r * l) as u32,
            None => self.bases()[pf.segment * self.cap + r],
        };
        Span {
            start: base + pf.offset as u32,
            len: pf.spec.length as u32,
        }
    }

    /// The typed value of field `f` of record `r`; `msg` is the message buffer the batch was
    /// decoded from.
    pub fn value<'m>(&self, msg: &'m [u8], r: usize, f: usize) -> Value<'m> {
        let span = |c: &[Span]| &msg[c[r].range()];
        match self.column(f) {
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
    // Decoded values take at most 8 bytes of storage per byte on the wire (a 1-byte octet array
    // becomes an 8-byte span), unless a template piles up zero-length fields: refuse those
    // rather than allocate from a length the exporter chose.
    let max_records = body.len() / plan.min_len;
    if max_records.saturating_mul(plan.arena_per_record) > 8 * body.len() + 4096 {
        return Err(WireError::Data {
            offset: set_offset,
            template_id: plan.template.id,
            reason: format!(
                "template {} has {} fields for records of {} bytes: too many empty fields to decode",
                plan.template.id,
                plan.fields.len(),
                plan.min_len
            ),
        });
    }
    let cap = max_records;
    let segs = plan.segment_fixed_len.len();
    let columns_len = (plan.arena_per_record * cap).next_multiple_of(8);
    let bases_len = if plan.fixed_len.is_some() {
        0
    } else {
        segs * cap * 4
    };
    let mut batch = Batch {
        plan: plan.clone(),
        set_offset,
        start,
        len: 0,
        cap,
        arena: vec![0u64; (columns_len + bases_len).div_ceil(8)],
        bases_at: columns_len,
    };
    let (arena, bases) =
        bytemuck::cast_slice_mut::<u64, u8>(&mut batch.arena).split_at_mut(columns_len);
    let n = match plan.fixed_len {
        Some(rec_len) => {
            for pf in &plan.fields {
                let off = pf.offset;
                let values = body.chunks_exact(rec_len).map(|rec| &rec[off..]);
                let (size, _) = pf.column.size_align();
                let at = pf.arena_offset * cap;
                fill(
                    pf.column,
                    msg,
                    values,
                    pf.spec.length as usize,
                    &mut arena[at..at + size * cap],
                );
            }
            cap
        }
        None => {
            let bases: &mut [u32] = bytemuck::cast_slice_mut(bases);
            let n = walk_varlen(plan, msg, start, end, set_offset, cap, bases, arena)?;
            for pf in plan.fields.iter().filter(|pf| pf.varlen_index.is_none()) {
                let (size, _) = pf.column.size_align();
                let at = pf.arena_offset * cap;
                let (seg, off) = (pf.segment, pf.offset);
                let values = bases[seg * cap..seg * cap + n]
                    .iter()
                    .map(|&b| &msg[b as usize + off..]);
                fill(
                    pf.column,
                    msg,
                    values,
                    pf.spec.length as usize,
                    &mut arena[at..at + size * n],
                );
            }
            n
        }
    };
    batch.len = n;
    Ok(batch)
}

/// First pass over records with variable-length fields: each record's segment bases (into
/// `bases`, segment-major with stride `cap`) and the span of each variable-length value
/// (straight into its column in `arena`), all checked against the set's end. `cap` is the most
/// records the set can hold. Returns the record count.
#[allow(clippy::too_many_arguments)]
fn walk_varlen(
    plan: &Plan,
    msg: &[u8],
    start: usize,
    end: usize,
    set_offset: usize,
    cap: usize,
    bases: &mut [u32],
    arena: &mut [u8],
) -> Result<usize, WireError> {
    let segs = plan.segment_fixed_len.len();
    let span_at: Vec<usize> = plan
        .fields
        .iter()
        .filter(|pf| pf.varlen_index.is_some())
        .map(|pf| pf.arena_offset * cap)
        .collect();
    let mut pos = start;
    let mut r = 0;
    while end - pos >= plan.min_len && r < cap {
        let rec_start = pos;
        let mut base = pos;
        for (k, &fixed) in plan.segment_fixed_len.iter().enumerate() {
            bases[k * cap + r] = base as u32;
            let prefix_at = base + fixed;
            if k + 1 == segs {
                if prefix_at > end {
                    return Err(truncated(plan, set_offset, r, rec_start));
                }
                pos = prefix_at;
                break;
            }
            if prefix_at >= end {
                return Err(truncated(plan, set_offset, r, rec_start));
            }
            let (value_at, len) = match msg[prefix_at] {
                255 => {
                    if prefix_at + 3 > end {
                        return Err(truncated(plan, set_offset, r, rec_start));
                    }
                    (
                        prefix_at + 3,
                        u16::from_be_bytes([msg[prefix_at + 1], msg[prefix_at + 2]]) as usize,
                    )
                }
                l => (prefix_at + 1, l as usize),
            };
            if value_at + len > end {
                return Err(truncated(plan, set_offset, r, rec_start));
            }
            let span = Span {
                start: value_at as u32,
                len: len as u32,
            };
            let at = span_at[k] + r * 8;
            arena[at..at + 8].copy_from_slice(bytemuck::bytes_of(&span));
            base = value_at + len;
        }
        r += 1;
    }
    Ok(r)
}

fn truncated(plan: &Plan, set_offset: usize, index: usize, at: usize) -> WireError {
    WireError::Data {
        offset: set_offset,
        template_id: plan.template.id,
        reason: format!("record {index} at offset {at} runs past the end of the set"),
    }
}

/// Second pass: one typed column from `values` (one slice per record, starting at the field,
/// with at least `len` bytes: checked against the set's end by the caller) into `dst`, the
/// column's storage.
/// The match on the column type and length sits outside the record loop, and full-size
/// encodings read a fixed-size array, so the loop body is a load and a byte swap.
fn fill<'m, I>(ty: ColumnType, msg: &'m [u8], values: I, len: usize, dst: &mut [u8])
where
    I: Iterator<Item = &'m [u8]>,
{
    #[inline(always)]
    fn fixed<'m, T: bytemuck::Pod, const N: usize>(
        values: impl Iterator<Item = &'m [u8]>,
        dst: &mut [u8],
        f: impl Fn([u8; N]) -> T,
    ) {
        let dst: &mut [T] = bytemuck::cast_slice_mut(dst);
        for (slot, v) in dst.iter_mut().zip(values) {
            let mut a = [0u8; N];
            a.copy_from_slice(&v[..N]);
            *slot = f(a);
        }
    }
    #[inline(always)]
    fn reduced<'m, T: bytemuck::Pod>(
        values: impl Iterator<Item = &'m [u8]>,
        len: usize,
        dst: &mut [u8],
        f: impl Fn(&[u8]) -> T,
    ) {
        let dst: &mut [T] = bytemuck::cast_slice_mut(dst);
        for (slot, v) in dst.iter_mut().zip(values) {
            *slot = f(&v[..len]);
        }
    }
    match (ty, len) {
        (ColumnType::U8 | ColumnType::Bool, _) => fixed(values, dst, |a: [u8; 1]| a[0]),
        (ColumnType::U16, 2) => fixed(values, dst, u16::from_be_bytes),
        (ColumnType::U16, _) => reduced(values, len, dst, |b| read_uint(b) as u16),
        (ColumnType::U32 | ColumnType::DateTimeSeconds, 4) => {
            fixed(values, dst, u32::from_be_bytes)
        }
        (ColumnType::U32, _) => reduced(values, len, dst, |b| read_uint(b) as u32),
        (
            ColumnType::U64
            | ColumnType::DateTimeMilliseconds
            | ColumnType::DateTimeMicroseconds
            | ColumnType::DateTimeNanoseconds,
            8,
        ) => fixed(values, dst, u64::from_be_bytes),
        (ColumnType::U64, 4) => fixed(values, dst, |a| u32::from_be_bytes(a) as u64),
        (ColumnType::U64, _) => reduced(values, len, dst, read_uint),
        (ColumnType::I8, _) => fixed(values, dst, |a: [u8; 1]| a[0] as i8),
        (ColumnType::I16, _) => reduced(values, len, dst, |b| read_int(b) as i16),
        (ColumnType::I32, _) => reduced(values, len, dst, |b| read_int(b) as i32),
        (ColumnType::I64, _) => reduced(values, len, dst, read_int),
        (ColumnType::F32, _) => fixed(values, dst, f32::from_be_bytes),
        (ColumnType::F64, _) => reduced(values, len, dst, read_f64),
        (ColumnType::Mac, _) => fixed(values, dst, |a: [u8; 6]| a),
        (ColumnType::Ipv4, _) => fixed(values, dst, |a: [u8; 4]| a),
        (ColumnType::Ipv6, _) => fixed(values, dst, |a: [u8; 16]| a),
        // The plan gives date-time columns only their exact lengths (others become bytes).
        (
            ColumnType::DateTimeSeconds
            | ColumnType::DateTimeMilliseconds
            | ColumnType::DateTimeMicroseconds
            | ColumnType::DateTimeNanoseconds,
            _,
        ) => {}
        (
            ColumnType::String
            | ColumnType::Bytes
            | ColumnType::BasicList
            | ColumnType::SubTemplateList
            | ColumnType::SubTemplateMultiList,
            _,
        ) => {
            let base = msg.as_ptr() as usize;
            let dst: &mut [Span] = bytemuck::cast_slice_mut(dst);
            for (slot, v) in dst.iter_mut().zip(values) {
                *slot = Span {
                    start: (v.as_ptr() as usize - base) as u32,
                    len: len as u32,
                };
            }
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
    fn zero_length_fields_cannot_inflate_memory() {
        // One 1-byte field and 2,000 zero-length octet arrays: 8 bytes of storage each per
        // record, for records of 1 byte.
        let mut fields = vec![FieldSpec::new(4, 0, 1)];
        fields.extend((0..2000).map(|_| FieldSpec::new(210, 0, 0)));
        let plan = Arc::new(Plan::compile(
            Template::data(256, fields),
            &Registry::builtin(),
        ));
        let body = vec![6u8; 60_000];
        assert!(decode_records(&plan, &body, 0, body.len(), 0).is_err());
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
