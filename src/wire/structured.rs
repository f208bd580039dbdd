//! RFC 6313 structured data: basicList, subTemplateList and subTemplateMultiList, decoded on
//! demand from a field's bytes, recursively, with a depth bound.

use super::batch::{Batch, Span, decode_records};
use super::decoder::TemplateMap;
use super::error::WireError;
use super::header::be16;
use super::model::InfoElement;
use super::plan::Plan;
use super::registry::Registry;
use super::template::{FieldSpec, Template};
use std::sync::Arc;

/// Lists nest (a subTemplateList whose template has a basicList...): deeper than this is refused.
pub const MAX_LIST_DEPTH: usize = 8;

/// The list semantic of RFC 6313 section 4.4.
pub fn semantic_name(s: u8) -> &'static str {
    match s {
        0 => "noneOf",
        1 => "exactlyOneOf",
        2 => "oneOrMoreOf",
        3 => "allOf",
        4 => "ordered",
        255 => "undefined",
        _ => "unassigned",
    }
}

#[derive(Debug, Clone)]
pub struct BasicList {
    pub semantic: u8,
    pub element: Arc<InfoElement>,
    /// One column (the element), one row per list entry.
    pub batch: Batch,
}

#[derive(Debug, Clone)]
pub struct SubTemplateList {
    pub semantic: u8,
    pub template_id: u16,
    /// `None` when the template is not known in this domain.
    pub batch: Option<Batch>,
    /// The records' bytes, for display when the template is unknown.
    pub content: Span,
}

fn list_err(offset: usize, reason: impl Into<String>) -> WireError {
    WireError::List {
        offset,
        reason: reason.into(),
    }
}

/// Decodes a basicList whose bytes are `msg[span]`.
pub fn decode_basic_list(
    msg: &[u8],
    span: Span,
    registry: &Registry,
) -> Result<BasicList, WireError> {
    let (start, end) = (span.start as usize, (span.start + span.len) as usize);
    let b = &msg[start..end];
    if b.len() < 5 {
        return Err(list_err(start, "basicList shorter than its 5-byte header"));
    }
    let semantic = b[0];
    let raw_id = be16(b, 1);
    let length = be16(b, 3);
    let (pen, header) = if raw_id & 0x8000 != 0 {
        if b.len() < 9 {
            return Err(list_err(start, "basicList enterprise number cut short"));
        }
        (u32::from_be_bytes([b[5], b[6], b[7], b[8]]), 9)
    } else {
        (0, 5)
    };
    let spec = FieldSpec::new(raw_id & 0x7fff, pen, length);
    let content = start + header..end;
    // Zero-length elements: no content means no elements; any content cannot be made of them
    // (it would hold any number of elements and still leave the bytes over), so it is
    // malformed. Neither case reaches the record decoder, which refuses zero-length records.
    if length == 0 {
        if !content.is_empty() {
            return Err(list_err(
                start,
                format!(
                    "basicList of zero-length elements has {} bytes of content",
                    content.len()
                ),
            ));
        }
    } else if !spec.is_varlen() && content.len() % length as usize != 0 {
        return Err(list_err(
            start,
            format!(
                "basicList content of {} bytes is not a whole number of {length}-byte elements",
                content.len()
            ),
        ));
    }
    let plan = Arc::new(Plan::compile(Template::data(0, vec![spec]), registry));
    let element = plan.fields[0].element.clone();
    let batch = if length == 0 {
        Batch::empty(plan, start)
    } else {
        decode_records(&plan, msg, content.start, content.end, start)?
    };
    Ok(BasicList {
        semantic,
        element,
        batch,
    })
}

/// Decodes a subTemplateList whose bytes are `msg[span]` with the domain's templates.
pub fn decode_sub_template_list(
    msg: &[u8],
    span: Span,
    templates: &TemplateMap,
) -> Result<SubTemplateList, WireError> {
    let (start, end) = (span.start as usize, (span.start + span.len) as usize);
    if end - start < 3 {
        return Err(list_err(
            start,
            "subTemplateList shorter than its 3-byte header",
        ));
    }
    let semantic = msg[start];
    let template_id = be16(msg, start + 1);
    let content = Span {
        start: (start + 3) as u32,
        len: (end - start - 3) as u32,
    };
    let batch = match templates.get(&template_id) {
        Some(plan) => Some(decode_records(plan, msg, start + 3, end, start)?),
        None => None,
    };
    Ok(SubTemplateList {
        semantic,
        template_id,
        batch,
        content,
    })
}

/// Decodes a subTemplateMultiList: a semantic, then one or more (template id, length, records)
/// entries. Returns the semantic and one [`SubTemplateList`] per entry.
pub fn decode_sub_template_multi_list(
    msg: &[u8],
    span: Span,
    templates: &TemplateMap,
) -> Result<(u8, Vec<SubTemplateList>), WireError> {
    let (start, end) = (span.start as usize, (span.start + span.len) as usize);
    if end == start {
        return Err(list_err(
            start,
            "subTemplateMultiList without its semantic octet",
        ));
    }
    let semantic = msg[start];
    let mut pos = start + 1;
    let mut entries = Vec::new();
    while pos < end {
        if end - pos < 4 {
            return Err(list_err(pos, "subTemplateMultiList entry header cut short"));
        }
        let template_id = be16(msg, pos);
        let len = be16(msg, pos + 2) as usize;
        if len < 4 || pos + len > end {
            return Err(list_err(
                pos,
                format!("subTemplateMultiList entry length {len} is impossible"),
            ));
        }
        let content = Span {
            start: (pos + 4) as u32,
            len: (len - 4) as u32,
        };
        let batch = match templates.get(&template_id) {
            Some(plan) => Some(decode_records(plan, msg, pos + 4, pos + len, pos)?),
            None => None,
        };
        entries.push(SubTemplateList {
            semantic,
            template_id,
            batch,
            content,
        });
        pos += len;
    }
    Ok((semantic, entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic_list(bytes: &[u8]) -> Result<BasicList, WireError> {
        let span = Span {
            start: 0,
            len: bytes.len() as u32,
        };
        decode_basic_list(bytes, span, &Registry::builtin())
    }

    #[test]
    fn basic_list_of_zero_length_elements_is_empty() {
        // allOf, protocolIdentifier (4) in 0 bytes, no content.
        let list = basic_list(&[3, 0, 4, 0, 0]).expect("an empty list decodes");
        assert_eq!(list.batch.len(), 0);
        assert_eq!(list.element.name, "protocolIdentifier");
        assert!(list.batch.column(0).is_empty());
        // The same with an enterprise element.
        let list = basic_list(&[3, 0x80, 4, 0, 0, 0, 0, 0x1a, 0xd7]).expect("decodes");
        assert_eq!((list.batch.len(), list.element.pen), (0, 6871));
    }

    #[test]
    fn basic_list_of_zero_length_elements_with_content_is_malformed() {
        // Zero-length elements cannot account for content bytes: however many, never a loop.
        let mut b = vec![3, 0, 4, 0, 0];
        b.extend_from_slice(&[0; 1000]);
        assert!(matches!(basic_list(&b), Err(WireError::List { .. })));
    }
}
