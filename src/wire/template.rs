//! Template Sets and Options Template Sets (RFC 7011 section 3.4), NetFlow v9 templates
//! (RFC 3954 section 5.2-5.3), and template management as data (RFC 7011 section 8.1).
//!
//! Parsing yields [`TemplateEvent`]s; the caller decides the scope (transport session,
//! observation domain, cluster store) they apply to.

use super::error::WireError;
use super::header::{
    MIN_DATA_SET_ID, OPTIONS_TEMPLATE_SET_ID, SetRef, TEMPLATE_SET_ID, V9_OPTIONS_TEMPLATE_SET_ID,
    be16, be32,
};

/// A field length of 65535 marks a variable-length field (RFC 7011 section 7).
pub const VARLEN: u16 = 65535;
const ENTERPRISE_BIT: u16 = 0x8000;

/// One Field Specifier: which Information Element, and how many bytes it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct FieldSpec {
    /// Element id without the enterprise bit.
    pub id: u16,
    /// Private Enterprise Number; 0 for IANA elements.
    pub pen: u32,
    /// Length in bytes, or [`VARLEN`].
    pub length: u16,
}

impl FieldSpec {
    pub fn new(id: u16, pen: u32, length: u16) -> FieldSpec {
        FieldSpec { id, pen, length }
    }

    pub fn is_varlen(&self) -> bool {
        self.length == VARLEN
    }

    /// Bytes this specifier takes in a Template Record.
    pub fn wire_len(&self) -> usize {
        if self.pen != 0 { 8 } else { 4 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum TemplateKind {
    Data,
    Options,
}

impl TemplateKind {
    pub fn set_id(self) -> u16 {
        match self {
            TemplateKind::Data => TEMPLATE_SET_ID,
            TemplateKind::Options => OPTIONS_TEMPLATE_SET_ID,
        }
    }
}

/// Which protocol a template came from: NetFlow v9 scope fields are not Information Elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Dialect {
    Ipfix,
    NetflowV9,
}

/// A Template Record or Options Template Record.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Template {
    pub id: u16,
    pub kind: TemplateKind,
    /// Number of leading scope fields; 0 for data templates.
    pub scope_field_count: u16,
    pub fields: Vec<FieldSpec>,
    pub dialect: Dialect,
}

impl Template {
    pub fn data(id: u16, fields: Vec<FieldSpec>) -> Template {
        Template {
            id,
            kind: TemplateKind::Data,
            scope_field_count: 0,
            fields,
            dialect: Dialect::Ipfix,
        }
    }

    pub fn options(id: u16, scope_field_count: u16, fields: Vec<FieldSpec>) -> Template {
        Template {
            id,
            kind: TemplateKind::Options,
            scope_field_count,
            fields,
            dialect: Dialect::Ipfix,
        }
    }

    /// The smallest Data Record this template can describe: fixed lengths plus one length byte
    /// per variable-length field.
    pub fn min_record_len(&self) -> usize {
        self.fields
            .iter()
            .map(|f| if f.is_varlen() { 1 } else { f.length as usize })
            .sum()
    }

    /// Bytes of this Template Record on the wire (IPFIX encoding).
    pub fn wire_len(&self) -> usize {
        let head = if self.kind == TemplateKind::Options {
            6
        } else {
            4
        };
        head + self.fields.iter().map(FieldSpec::wire_len).sum::<usize>()
    }

    /// Appends the IPFIX Template Record (without a Set header).
    pub fn write_record(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.id.to_be_bytes());
        out.extend_from_slice(&(self.fields.len() as u16).to_be_bytes());
        if self.kind == TemplateKind::Options {
            out.extend_from_slice(&self.scope_field_count.to_be_bytes());
        }
        for f in &self.fields {
            if f.pen != 0 {
                out.extend_from_slice(&(f.id | ENTERPRISE_BIT).to_be_bytes());
                out.extend_from_slice(&f.length.to_be_bytes());
                out.extend_from_slice(&f.pen.to_be_bytes());
            } else {
                out.extend_from_slice(&f.id.to_be_bytes());
                out.extend_from_slice(&f.length.to_be_bytes());
            }
        }
    }

    fn check(&self, offset: usize) -> Result<(), WireError> {
        if self.min_record_len() == 0 {
            return Err(WireError::Template {
                offset,
                reason: format!(
                    "template {} describes zero-length records, which no Data Set can carry",
                    self.id
                ),
            });
        }
        Ok(())
    }
}

/// What one record of a (Options) Template Set asks of the receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateEvent {
    /// A new template or a redefinition of an existing id.
    Define(Template),
    /// Template Withdrawal of one id (field count 0).
    Withdraw { kind: TemplateKind, id: u16 },
    /// All Templates Withdrawal: the template id equals the set id (RFC 7011 section 8.1).
    WithdrawAll { kind: TemplateKind },
}

/// Parses the records of an IPFIX Template Set (id 2) or Options Template Set (id 3).
pub fn parse_template_set(msg: &[u8], set: &SetRef) -> Result<Vec<TemplateEvent>, WireError> {
    let kind = if set.id == TEMPLATE_SET_ID {
        TemplateKind::Data
    } else {
        TemplateKind::Options
    };
    let end = set.body_end;
    let mut pos = set.body_start;
    // Each record takes at least 4 bytes: the bound keeps the allocation tied to input length.
    let mut events = Vec::with_capacity((end - pos) / 8 + 1);
    while end - pos >= 4 {
        let offset = pos;
        let id = be16(msg, pos);
        let count = be16(msg, pos + 2);
        if id == 0 && count == 0 && msg[pos..end].iter().all(|&b| b == 0) {
            break; // padding
        }
        pos += 4;
        let err = |reason: String| WireError::Template { offset, reason };
        if count == 0 {
            if id == set.id {
                events.push(TemplateEvent::WithdrawAll { kind });
            } else if id >= MIN_DATA_SET_ID {
                events.push(TemplateEvent::Withdraw { kind, id });
            } else {
                return Err(err(format!("withdrawal of template id {id}, below 256")));
            }
            continue;
        }
        if id < MIN_DATA_SET_ID {
            return Err(err(format!("template id {id} is below 256")));
        }
        let scope_field_count = if kind == TemplateKind::Options {
            if end - pos < 2 {
                return Err(err("options template record cut short".into()));
            }
            let s = be16(msg, pos);
            pos += 2;
            if s == 0 || s > count {
                return Err(err(format!(
                    "options template {id}: scope field count {s} must be between 1 and the field count {count}"
                )));
            }
            s
        } else {
            0
        };
        let fields = parse_field_specs(msg, &mut pos, end, count as usize)
            .map_err(|r| err(format!("template {id}: {r}")))?;
        let t = Template {
            id,
            kind,
            scope_field_count,
            fields,
            dialect: super::template::Dialect::Ipfix,
        };
        t.check(offset)?;
        events.push(TemplateEvent::Define(t));
    }
    Ok(events)
}

fn parse_field_specs(
    msg: &[u8],
    pos: &mut usize,
    end: usize,
    count: usize,
) -> Result<Vec<FieldSpec>, String> {
    let mut fields = Vec::with_capacity(count.min((end - *pos) / 4));
    for i in 0..count {
        if end - *pos < 4 {
            return Err(format!(
                "field specifier {i} of {count} runs past the end of the set"
            ));
        }
        let raw_id = be16(msg, *pos);
        let length = be16(msg, *pos + 2);
        *pos += 4;
        let pen = if raw_id & ENTERPRISE_BIT != 0 {
            if end - *pos < 4 {
                return Err(format!(
                    "field specifier {i} of {count}: enterprise number runs past the end of the set"
                ));
            }
            let pen = be32(msg, *pos);
            *pos += 4;
            pen
        } else {
            0
        };
        fields.push(FieldSpec {
            id: raw_id & !ENTERPRISE_BIT,
            pen,
            length,
        });
    }
    Ok(fields)
}

/// Parses a NetFlow v9 Template FlowSet (id 0) or Options Template FlowSet (id 1).
/// v9 has no withdrawal and no enterprise bit; its option scopes are counted in bytes.
pub fn parse_v9_template_set(msg: &[u8], set: &SetRef) -> Result<Vec<TemplateEvent>, WireError> {
    let end = set.body_end;
    let mut pos = set.body_start;
    let mut events = Vec::new();
    let options = set.id == V9_OPTIONS_TEMPLATE_SET_ID;
    let min_head = if options { 6 } else { 4 };
    while end - pos >= min_head {
        let offset = pos;
        let id = be16(msg, pos);
        let err = |reason: String| WireError::Template { offset, reason };
        if id == 0 && msg[pos..end].iter().all(|&b| b == 0) {
            break; // padding
        }
        if id < MIN_DATA_SET_ID {
            return Err(err(format!("template id {id} is below 256")));
        }
        let (scope_bytes, field_count, kind) = if options {
            let scope_len = be16(msg, pos + 2) as usize;
            let opt_len = be16(msg, pos + 4) as usize;
            pos += 6;
            if !scope_len.is_multiple_of(4) || !opt_len.is_multiple_of(4) {
                return Err(err(format!(
                    "options template {id}: scope length {scope_len} and option length {opt_len} must be multiples of 4"
                )));
            }
            (scope_len, (scope_len + opt_len) / 4, TemplateKind::Options)
        } else {
            let count = be16(msg, pos + 2) as usize;
            pos += 4;
            (0, count, TemplateKind::Data)
        };
        if field_count * 4 > end - pos {
            return Err(err(format!(
                "template {id}: its {field_count} fields run past the end of the set"
            )));
        }
        let mut fields = Vec::with_capacity(field_count);
        for i in 0..field_count {
            let (field_type, length) = (be16(msg, pos), be16(msg, pos + 2));
            // RFC 3954 has no variable-length encoding: 65535 is IPFIX's marker (RFC 7011
            // section 7), not v9's. Read as a fixed length it is impossible (no UDP datagram
            // holds a 65535-byte field after the headers), so every Data Set would decode to
            // nothing, silently. tshark 4.0 reads it as IPFIX variable length; decoding v9 by
            // IPFIX rules would guess at what the exporter meant, so the template is refused
            // and the error says which one, for the operator to take up with the exporter.
            if length == VARLEN {
                return Err(err(format!(
                    "template {id}: field {} of {field_count} (type {field_type}) has length 65535, \
                     which NetFlow v9 does not define (no variable-length fields in RFC 3954)",
                    i + 1
                )));
            }
            fields.push(FieldSpec {
                id: field_type,
                pen: 0,
                length,
            });
            pos += 4;
        }
        let t = Template {
            id,
            kind,
            scope_field_count: (scope_bytes / 4) as u16,
            fields,
            dialect: Dialect::NetflowV9,
        };
        if t.fields.is_empty() {
            return Err(err(format!("template {id} has no fields")));
        }
        t.check(offset)?;
        events.push(TemplateEvent::Define(t));
        if options {
            // RFC 3954 pads each options template record to 4 bytes; skip zero padding.
            while pos < end && !(pos - set.body_start).is_multiple_of(4) && msg[pos] == 0 {
                pos += 1;
            }
        }
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_of(id: u16, body: &[u8]) -> (Vec<u8>, SetRef) {
        let mut m = id.to_be_bytes().to_vec();
        m.extend_from_slice(&((body.len() + 4) as u16).to_be_bytes());
        m.extend_from_slice(body);
        let s = SetRef {
            id,
            offset: 0,
            body_start: 4,
            body_end: m.len(),
        };
        (m, s)
    }

    #[test]
    fn round_trip_with_enterprise_field() {
        let t = Template::options(
            300,
            1,
            vec![FieldSpec::new(149, 0, 4), FieldSpec::new(14, 6871, VARLEN)],
        );
        let mut body = Vec::new();
        t.write_record(&mut body);
        assert_eq!(body.len(), t.wire_len());
        body.extend_from_slice(&[0, 0]); // padding
        let (m, s) = set_of(3, &body);
        assert_eq!(
            parse_template_set(&m, &s),
            Ok(vec![TemplateEvent::Define(t)])
        );
    }

    #[test]
    fn withdrawals() {
        let (m, s) = set_of(2, &[1, 44, 0, 0, 0, 2, 0, 0]);
        assert_eq!(
            parse_template_set(&m, &s),
            Ok(vec![
                TemplateEvent::Withdraw {
                    kind: TemplateKind::Data,
                    id: 300
                },
                TemplateEvent::WithdrawAll {
                    kind: TemplateKind::Data
                },
            ])
        );
    }

    #[test]
    fn v9_field_length_65535_is_refused_not_read_as_varlen() {
        // Template 256: IP_SRC_ADDR (8) in 4 bytes, IF_NAME (82) in 65535.
        let (m, s) = set_of(0, &[1, 0, 0, 2, 0, 8, 0, 4, 0, 82, 0xff, 0xff]);
        match parse_v9_template_set(&m, &s) {
            Err(WireError::Template { reason, .. }) => {
                assert!(
                    reason.contains("template 256") && reason.contains("type 82"),
                    "{reason}"
                );
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        // The same in an options template (scope System, 4 bytes; option 82 in 65535).
        let (m, s) = set_of(1, &[1, 1, 0, 4, 0, 4, 0, 1, 0, 4, 0, 82, 0xff, 0xff]);
        assert!(parse_v9_template_set(&m, &s).is_err());
        // IPFIX keeps its variable length.
        let (m, s) = set_of(2, &[1, 0, 0, 1, 0, 82, 0xff, 0xff]);
        assert!(parse_template_set(&m, &s).is_ok());
    }

    #[test]
    fn rejects_bad_records() {
        // template id below 256
        let (m, s) = set_of(2, &[0, 5, 0, 1, 0, 8, 0, 4]);
        assert!(parse_template_set(&m, &s).is_err());
        // field count larger than the set
        let (m, s) = set_of(2, &[1, 0, 0, 9, 0, 8, 0, 4]);
        assert!(parse_template_set(&m, &s).is_err());
        // scope count above field count
        let (m, s) = set_of(3, &[1, 0, 0, 1, 0, 2, 0, 8, 0, 4]);
        assert!(parse_template_set(&m, &s).is_err());
        // only zero-length fields
        let (m, s) = set_of(2, &[1, 0, 0, 1, 0, 8, 0, 0]);
        assert!(parse_template_set(&m, &s).is_err());
    }
}
