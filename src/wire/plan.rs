//! A template compiled once into a decode plan: each field's column type (from the information
//! model, with reduced-size encoding resolved), and where it sits inside a record.
//!
//! Records are cut into segments at variable-length fields: a fixed field's offset inside its
//! segment is known at compile time, so only one offset per segment and record is computed at
//! decode time.

use super::model::{DataType, InfoElement, Semantics};
use super::registry::Registry;
use super::template::{Dialect, FieldSpec, Template};
use std::borrow::Cow;
use std::sync::Arc;

/// How one field's bytes become a typed value; also the type of its column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    U8,
    U16,
    U32,
    U64,
    I8,
    I16,
    I32,
    I64,
    F32,
    F64,
    Bool,
    Mac,
    Ipv4,
    Ipv6,
    DateTimeSeconds,
    DateTimeMilliseconds,
    DateTimeMicroseconds,
    DateTimeNanoseconds,
    String,
    Bytes,
    BasicList,
    SubTemplateList,
    SubTemplateMultiList,
}

impl ColumnType {
    /// Size and alignment of one decoded value in a batch's column storage.
    pub fn size_align(self) -> (usize, usize) {
        match self {
            ColumnType::U8 | ColumnType::I8 | ColumnType::Bool => (1, 1),
            ColumnType::U16 | ColumnType::I16 => (2, 2),
            ColumnType::U32 | ColumnType::I32 | ColumnType::F32 | ColumnType::DateTimeSeconds => {
                (4, 4)
            }
            ColumnType::U64
            | ColumnType::I64
            | ColumnType::F64
            | ColumnType::DateTimeMilliseconds
            | ColumnType::DateTimeMicroseconds
            | ColumnType::DateTimeNanoseconds => (8, 8),
            ColumnType::Mac => (6, 1),
            ColumnType::Ipv4 => (4, 1),
            ColumnType::Ipv6 => (16, 1),
            ColumnType::String
            | ColumnType::Bytes
            | ColumnType::BasicList
            | ColumnType::SubTemplateList
            | ColumnType::SubTemplateMultiList => (8, 4),
        }
    }

    /// The column type for an element of `data_type` sent in `length` bytes. Lengths the type
    /// cannot take (a 5-byte IPv4 address, a variable-length integer) fall back to octetArray:
    /// the bytes are kept, nothing is invented.
    pub fn for_field(data_type: DataType, length: u16) -> ColumnType {
        let varlen = length == super::template::VARLEN;
        let fits = |max: u16| !varlen && (1..=max).contains(&length);
        let exact = |n: u16| !varlen && length == n;
        match data_type {
            // Reduced-size encoding (RFC 7011 6.2) shortens integers. Exporters in the field
            // also send them longer than their type (samplerId, an unsigned8, in 2 bytes from
            // Cisco NetFlow v9): decoded as the wider integer, as tshark and nfdump do.
            DataType::Unsigned8
            | DataType::Unsigned16
            | DataType::Unsigned32
            | DataType::Unsigned64
                if fits(8) =>
            {
                match data_type.size().max(length) {
                    1 => ColumnType::U8,
                    2 => ColumnType::U16,
                    3 | 4 => ColumnType::U32,
                    _ => ColumnType::U64,
                }
            }
            DataType::Signed8 | DataType::Signed16 | DataType::Signed32 | DataType::Signed64
                if fits(8) =>
            {
                match data_type.size().max(length) {
                    1 => ColumnType::I8,
                    2 => ColumnType::I16,
                    3 | 4 => ColumnType::I32,
                    _ => ColumnType::I64,
                }
            }
            DataType::Float32 if exact(4) => ColumnType::F32,
            DataType::Float64 if exact(8) || exact(4) => ColumnType::F64,
            DataType::Boolean if exact(1) => ColumnType::Bool,
            DataType::MacAddress if exact(6) => ColumnType::Mac,
            DataType::Ipv4Address if exact(4) => ColumnType::Ipv4,
            DataType::Ipv6Address if exact(16) => ColumnType::Ipv6,
            DataType::DateTimeSeconds if exact(4) => ColumnType::DateTimeSeconds,
            DataType::DateTimeMilliseconds if exact(8) => ColumnType::DateTimeMilliseconds,
            DataType::DateTimeMicroseconds if exact(8) => ColumnType::DateTimeMicroseconds,
            DataType::DateTimeNanoseconds if exact(8) => ColumnType::DateTimeNanoseconds,
            DataType::String => ColumnType::String,
            DataType::BasicList => ColumnType::BasicList,
            DataType::SubTemplateList => ColumnType::SubTemplateList,
            DataType::SubTemplateMultiList => ColumnType::SubTemplateMultiList,
            _ => ColumnType::Bytes,
        }
    }
}

/// One field of a compiled template.
#[derive(Debug, Clone)]
pub struct PlanField {
    pub spec: FieldSpec,
    pub element: Arc<InfoElement>,
    pub column: ColumnType,
    /// Segment of the record this field lies in (0 = before the first variable-length field).
    pub segment: usize,
    /// Offset inside the segment (fixed fields) or of the length prefix (variable-length ones).
    pub offset: usize,
    /// Index among the template's variable-length fields.
    pub varlen_index: Option<usize>,
    /// This element occurs more than once in the template; `occurrence` is which (0-based).
    pub repeated: bool,
    pub occurrence: usize,
    /// On the first occurrence of a repeated element: the indexes of all its occurrences.
    pub occurrences: Vec<usize>,
    /// Column storage: this column starts at `arena_offset * records` bytes into a batch's
    /// single allocation (columns ordered by alignment, so every start is aligned).
    pub arena_offset: usize,
}

/// A template ready for decoding.
#[derive(Debug, Clone)]
pub struct Plan {
    pub template: Template,
    pub fields: Vec<PlanField>,
    /// Record length when every field is fixed-length.
    pub fixed_len: Option<usize>,
    pub min_len: usize,
    /// Fixed bytes in each segment after its variable-length field (segment k > 0) or from the
    /// record start (segment 0), up to the next variable-length field's prefix.
    pub segment_fixed_len: Vec<usize>,
    /// Bytes of column storage per record, all columns together.
    pub arena_per_record: usize,
}

impl Plan {
    pub fn compile(template: Template, registry: &Registry) -> Plan {
        let mut fields = Vec::with_capacity(template.fields.len());
        let mut segment = 0;
        let mut offset = 0;
        let mut varlen_count = 0;
        let mut segment_fixed_len = Vec::new();
        // (total, seen so far) per element: linear, since templates may hold thousands of fields.
        let mut counts: rustc_hash::FxHashMap<(u32, u16), (usize, usize)> = Default::default();
        for f in &template.fields {
            counts.entry((f.pen, f.id)).or_insert((0, 0)).0 += 1;
        }
        for (i, spec) in template.fields.iter().enumerate() {
            let element = if template.dialect == Dialect::NetflowV9
                && i < template.scope_field_count as usize
            {
                v9_scope_element(spec)
            } else {
                registry.resolve(spec.pen, spec.id)
            };
            let column = ColumnType::for_field(element.data_type, spec.length);
            let seen = counts.entry((spec.pen, spec.id)).or_insert((0, 0));
            let occurrence = seen.1;
            seen.1 += 1;
            let repeated = seen.0 > 1;
            let (varlen_index, this_offset) = if spec.is_varlen() {
                let idx = varlen_count;
                varlen_count += 1;
                segment_fixed_len.push(offset);
                let o = offset;
                (Some(idx), o)
            } else {
                let o = offset;
                offset += spec.length as usize;
                (None, o)
            };
            fields.push(PlanField {
                spec: *spec,
                element,
                column,
                segment,
                offset: this_offset,
                varlen_index,
                repeated,
                occurrence,
                occurrences: Vec::new(),
                arena_offset: 0,
            });
            if spec.is_varlen() {
                segment += 1;
                offset = 0;
            }
        }
        segment_fixed_len.push(offset);
        let mut first: rustc_hash::FxHashMap<(u32, u16), usize> = Default::default();
        for i in 0..fields.len() {
            if fields[i].repeated {
                let key = (fields[i].spec.pen, fields[i].spec.id);
                let head = *first.entry(key).or_insert(i);
                fields[head].occurrences.push(i);
            }
        }
        let min_len = template.min_record_len();
        let fixed_len = (varlen_count == 0).then_some(min_len);
        // Widest alignment first: each column's start (a multiple of the bytes before it) is
        // then aligned for its type whatever the record count.
        let mut order: Vec<usize> = (0..fields.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(fields[i].column.size_align().1));
        let mut arena_per_record = 0;
        for i in order {
            fields[i].arena_offset = arena_per_record;
            arena_per_record += fields[i].column.size_align().0;
        }
        Plan {
            template,
            fields,
            fixed_len,
            min_len,
            segment_fixed_len,
            arena_per_record,
        }
    }

    /// Bytes a compiled `template` holds (the plan, its fields, the template kept inside it, the
    /// map entry), as charged to a decoder's budget. An estimate from the shape alone, so it can
    /// be checked before compiling; Information Elements are shared and not counted.
    pub fn cost(template: &Template) -> usize {
        const PER_PLAN: usize = std::mem::size_of::<Plan>() + 128; // Arc, map entry, allocator
        const PER_FIELD: usize = std::mem::size_of::<PlanField>()
            + std::mem::size_of::<FieldSpec>()
            + 2 * std::mem::size_of::<usize>(); // segment lengths, occurrence lists
        PER_PLAN + template.fields.len() * PER_FIELD
    }

    pub fn varlen_count(&self) -> usize {
        self.segment_fixed_len.len() - 1
    }
}

/// NetFlow v9 option scopes (RFC 3954 section 6.1) are not Information Elements.
fn v9_scope_element(spec: &FieldSpec) -> Arc<InfoElement> {
    let name = match spec.id {
        1 => "scopeSystem",
        2 => "scopeInterface",
        3 => "scopeLineCard",
        4 => "scopeCache",
        5 => "scopeTemplate",
        _ => "scopeUnknown",
    };
    let data_type = if (1..=8).contains(&spec.length) {
        DataType::Unsigned64
    } else {
        DataType::OctetArray
    };
    Arc::new(InfoElement {
        pen: 0,
        id: spec.id,
        name: Cow::Borrowed(name),
        data_type,
        semantics: Semantics::Identifier,
        units: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::template::VARLEN;

    #[test]
    fn reduced_size_and_fallbacks() {
        assert_eq!(
            ColumnType::for_field(DataType::Unsigned64, 4),
            ColumnType::U64
        );
        assert_eq!(
            ColumnType::for_field(DataType::Unsigned64, 9),
            ColumnType::Bytes
        );
        assert_eq!(
            ColumnType::for_field(DataType::Unsigned32, VARLEN),
            ColumnType::Bytes
        );
        assert_eq!(ColumnType::for_field(DataType::Float64, 4), ColumnType::F64);
        assert_eq!(
            ColumnType::for_field(DataType::Ipv4Address, 16),
            ColumnType::Bytes
        );
        assert_eq!(
            ColumnType::for_field(DataType::String, VARLEN),
            ColumnType::String
        );
    }

    #[test]
    fn segments() {
        let t = Template::data(
            256,
            vec![
                FieldSpec::new(8, 0, 4),
                FieldSpec::new(96, 0, VARLEN),
                FieldSpec::new(12, 0, 4),
                FieldSpec::new(7, 0, 2),
                FieldSpec::new(8, 0, 4),
            ],
        );
        let p = Plan::compile(t, &Registry::builtin());
        assert_eq!(p.fixed_len, None);
        assert_eq!(p.min_len, 15);
        assert_eq!(p.segment_fixed_len, vec![4, 10]);
        let where_: Vec<_> = p.fields.iter().map(|f| (f.segment, f.offset)).collect();
        assert_eq!(where_, vec![(0, 0), (0, 4), (1, 0), (1, 4), (1, 6)]);
        assert!(p.fields[0].repeated && p.fields[4].repeated && p.fields[4].occurrence == 1);
        assert_eq!(p.fields[0].occurrences, vec![0, 4]);
    }
}
