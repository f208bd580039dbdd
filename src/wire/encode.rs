//! The Exporting Process side of the codec: typed values -> Data Records -> Sets -> messages,
//! split at a maximum message size, with RFC 7011 sequence numbers (the count of Data Records
//! sent before the message, per Observation Domain). An RFC 5655 file is these messages back to
//! back: [`FileWriter`].

use super::error::WireError;
use super::header::IPFIX_HEADER_LEN;
use super::plan::{ColumnType, Plan};
use super::template::Template;
use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr};

/// An owned value to encode into a field.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    Unsigned(u64),
    Signed(i64),
    Float(f64),
    Bool(bool),
    Mac([u8; 6]),
    Ipv4(Ipv4Addr),
    Ipv6(Ipv6Addr),
    DateTimeSeconds(u32),
    DateTimeMilliseconds(u64),
    /// dateTimeMicroseconds / dateTimeNanoseconds as a raw NTP timestamp.
    DateTimeNtp(u64),
    /// Strings, octet arrays, and pre-encoded lists.
    Bytes(Vec<u8>),
}

fn enc_err(field: &str, reason: impl std::fmt::Display) -> WireError {
    WireError::Encode(format!("{field}: {reason}"))
}

/// Appends `value` as field `f` of `plan` in Data Record encoding.
pub fn encode_field(
    out: &mut Vec<u8>,
    plan: &Plan,
    f: usize,
    value: &FieldValue,
) -> Result<(), WireError> {
    let pf = &plan.fields[f];
    let name = &pf.element.name;
    let len = pf.spec.length as usize;
    let unsigned = |out: &mut Vec<u8>, v: u64| {
        if len < 8 && v >> (8 * len) != 0 {
            return Err(enc_err(name, format!("{v} does not fit in {len} bytes")));
        }
        out.extend_from_slice(&v.to_be_bytes()[8 - len..]);
        Ok(())
    };
    match (pf.column, value) {
        (
            ColumnType::U8 | ColumnType::U16 | ColumnType::U32 | ColumnType::U64,
            FieldValue::Unsigned(v),
        ) => unsigned(out, *v),
        (
            ColumnType::I8 | ColumnType::I16 | ColumnType::I32 | ColumnType::I64,
            FieldValue::Signed(v),
        ) => {
            let bits = 8 * len as u32;
            if bits < 64 && (*v < -(1i64 << (bits - 1)) || *v >= 1i64 << (bits - 1)) {
                return Err(enc_err(name, format!("{v} does not fit in {len} bytes")));
            }
            out.extend_from_slice(&v.to_be_bytes()[8 - len..]);
            Ok(())
        }
        (ColumnType::F32, FieldValue::Float(v)) => {
            out.extend_from_slice(&(*v as f32).to_be_bytes());
            Ok(())
        }
        (ColumnType::F64, FieldValue::Float(v)) => {
            if len == 4 {
                out.extend_from_slice(&(*v as f32).to_be_bytes());
            } else {
                out.extend_from_slice(&v.to_be_bytes());
            }
            Ok(())
        }
        (ColumnType::Bool, FieldValue::Bool(b)) => {
            out.push(if *b { 1 } else { 2 });
            Ok(())
        }
        (ColumnType::Mac, FieldValue::Mac(m)) => {
            out.extend_from_slice(m);
            Ok(())
        }
        (ColumnType::Ipv4, FieldValue::Ipv4(a)) => {
            out.extend_from_slice(&a.octets());
            Ok(())
        }
        (ColumnType::Ipv6, FieldValue::Ipv6(a)) => {
            out.extend_from_slice(&a.octets());
            Ok(())
        }
        (ColumnType::DateTimeSeconds, FieldValue::DateTimeSeconds(s)) => {
            out.extend_from_slice(&s.to_be_bytes());
            Ok(())
        }
        (ColumnType::DateTimeMilliseconds, FieldValue::DateTimeMilliseconds(ms)) => {
            out.extend_from_slice(&ms.to_be_bytes());
            Ok(())
        }
        (
            ColumnType::DateTimeMicroseconds | ColumnType::DateTimeNanoseconds,
            FieldValue::DateTimeNtp(t),
        ) => {
            out.extend_from_slice(&t.to_be_bytes());
            Ok(())
        }
        (_, FieldValue::Bytes(b)) if pf.spec.is_varlen() => {
            if b.len() < 255 {
                out.push(b.len() as u8);
            } else if b.len() <= 65535 {
                out.push(255);
                out.extend_from_slice(&(b.len() as u16).to_be_bytes());
            } else {
                return Err(enc_err(
                    name,
                    format!("{} bytes exceed a variable-length field", b.len()),
                ));
            }
            out.extend_from_slice(b);
            Ok(())
        }
        (ColumnType::String | ColumnType::Bytes, FieldValue::Bytes(b))
        | (
            ColumnType::BasicList | ColumnType::SubTemplateList | ColumnType::SubTemplateMultiList,
            FieldValue::Bytes(b),
        ) => {
            if b.len() != len {
                return Err(enc_err(
                    name,
                    format!("{} bytes given for a {len}-byte field", b.len()),
                ));
            }
            out.extend_from_slice(b);
            Ok(())
        }
        (ty, v) => Err(enc_err(
            name,
            format!("a {v:?} cannot be encoded as {ty:?}"),
        )),
    }
}

/// Builds IPFIX messages for one Observation Domain.
#[derive(Debug)]
pub struct MessageBuilder {
    domain: u32,
    max_len: usize,
    /// Data Records in messages already finished (the next message's sequence number).
    sequence: u32,
    export_time: u32,
    buf: Vec<u8>,
    /// Open set: (set id, offset of its header in `buf`).
    open_set: Option<(u16, usize)>,
    records_in_message: u32,
    ready: Vec<Vec<u8>>,
    scratch: Vec<u8>,
}

impl MessageBuilder {
    /// `max_len` is the largest message to produce (at most 65535; e.g. the path MTU for UDP).
    pub fn new(domain: u32, max_len: usize) -> MessageBuilder {
        let mut b = MessageBuilder {
            domain,
            max_len: max_len.clamp(IPFIX_HEADER_LEN + 8, u16::MAX as usize),
            sequence: 0,
            export_time: 0,
            buf: Vec::new(),
            open_set: None,
            records_in_message: 0,
            ready: Vec::new(),
            scratch: Vec::new(),
        };
        b.start_message();
        b
    }

    /// Export time (Unix seconds) written into messages finished from now on.
    pub fn set_export_time(&mut self, secs: u32) {
        self.export_time = secs;
    }

    /// The sequence number the next message will carry.
    pub fn sequence(&self) -> u32 {
        self.sequence
    }

    fn start_message(&mut self) {
        self.buf.clear();
        self.buf.extend_from_slice(&[0, 10, 0, 0]);
        self.buf.extend_from_slice(&[0; 8]);
        self.buf.extend_from_slice(&self.domain.to_be_bytes());
        self.open_set = None;
        self.records_in_message = 0;
    }

    fn close_set(&mut self) {
        if let Some((_, at)) = self.open_set.take() {
            let len = (self.buf.len() - at) as u16;
            self.buf[at + 2..at + 4].copy_from_slice(&len.to_be_bytes());
        }
    }

    /// Finishes the message being built, if it holds any set.
    pub fn flush(&mut self) {
        self.close_set();
        if self.buf.len() == IPFIX_HEADER_LEN {
            return;
        }
        let len = self.buf.len() as u16;
        self.buf[2..4].copy_from_slice(&len.to_be_bytes());
        self.buf[4..8].copy_from_slice(&self.export_time.to_be_bytes());
        self.buf[8..12].copy_from_slice(&self.sequence.to_be_bytes());
        self.sequence = self.sequence.wrapping_add(self.records_in_message);
        self.ready.push(std::mem::take(&mut self.buf));
        self.start_message();
    }

    /// Finished messages, oldest first.
    pub fn take_ready(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.ready)
    }

    /// Places `len` bytes of a record into set `set_id`, opening a set or a new message as needed.
    fn reserve(&mut self, set_id: u16, len: usize) -> Result<(), WireError> {
        let same_set = matches!(self.open_set, Some((id, _)) if id == set_id);
        let need = len + if same_set { 0 } else { 4 };
        if IPFIX_HEADER_LEN + 4 + len > self.max_len {
            return Err(WireError::Encode(format!(
                "a {len}-byte record cannot fit in a {}-byte message",
                self.max_len
            )));
        }
        if self.buf.len() + need > self.max_len {
            self.flush();
        }
        if !matches!(self.open_set, Some((id, _)) if id == set_id) {
            self.close_set();
            self.open_set = Some((set_id, self.buf.len()));
            self.buf.extend_from_slice(&set_id.to_be_bytes());
            self.buf.extend_from_slice(&[0, 0]);
        }
        Ok(())
    }

    /// Adds a Template Record (in a Template Set or Options Template Set).
    pub fn add_template(&mut self, t: &Template) -> Result<(), WireError> {
        self.reserve(t.kind.set_id(), t.wire_len())?;
        t.write_record(&mut self.buf);
        Ok(())
    }

    /// Adds a withdrawal of template `id` (RFC 7011 section 8.1).
    pub fn add_withdrawal(
        &mut self,
        kind: super::template::TemplateKind,
        id: u16,
    ) -> Result<(), WireError> {
        self.reserve(kind.set_id(), 4)?;
        self.buf.extend_from_slice(&id.to_be_bytes());
        self.buf.extend_from_slice(&[0, 0]);
        Ok(())
    }

    /// Adds one Data Record of `plan`'s template already encoded (its fields in template order,
    /// network byte order): for writers whose values fit their fields by construction, which
    /// spares them building a [`FieldValue`] per field. Only the length is checked.
    pub fn add_encoded_record(&mut self, plan: &Plan, rec: &[u8]) -> Result<(), WireError> {
        if plan.fixed_len != Some(rec.len()) {
            return Err(WireError::Encode(format!(
                "template {} takes {:?}-byte records, {} bytes given",
                plan.template.id,
                plan.fixed_len,
                rec.len()
            )));
        }
        self.reserve(plan.template.id, rec.len())?;
        self.buf.extend_from_slice(rec);
        self.records_in_message += 1;
        Ok(())
    }

    /// Adds one Data Record already encoded, under `template_id` (a re-exporter's own id for
    /// the template the record was decoded with): the bytes are copied as they are, variable-
    /// length fields with their length prefixes.
    pub fn add_raw_record(&mut self, template_id: u16, rec: &[u8]) -> Result<(), WireError> {
        self.reserve(template_id, rec.len())?;
        self.buf.extend_from_slice(rec);
        self.records_in_message += 1;
        Ok(())
    }

    /// Adds one Data Record of `plan`'s template with `values` in template order.
    pub fn add_record(&mut self, plan: &Plan, values: &[FieldValue]) -> Result<(), WireError> {
        if values.len() != plan.fields.len() {
            return Err(WireError::Encode(format!(
                "template {} has {} fields, {} values given",
                plan.template.id,
                plan.fields.len(),
                values.len()
            )));
        }
        let mut rec = std::mem::take(&mut self.scratch);
        rec.clear();
        let encoded = values
            .iter()
            .enumerate()
            .try_for_each(|(f, v)| encode_field(&mut rec, plan, f, v));
        let placed = encoded.and_then(|_| self.reserve(plan.template.id, rec.len()));
        if placed.is_ok() {
            self.buf.extend_from_slice(&rec);
            self.records_in_message += 1;
        }
        self.scratch = rec;
        placed
    }
}

/// Writes an RFC 5655 IPFIX file: the messages of a [`MessageBuilder`], back to back.
pub struct FileWriter<W: Write> {
    out: W,
    pub builder: MessageBuilder,
}

impl<W: Write> FileWriter<W> {
    pub fn new(out: W, domain: u32) -> Self {
        FileWriter {
            out,
            builder: MessageBuilder::new(domain, u16::MAX as usize),
        }
    }

    /// Writes the messages finished so far.
    pub fn drain(&mut self) -> std::io::Result<()> {
        for m in self.builder.take_ready() {
            self.out.write_all(&m)?;
        }
        Ok(())
    }

    /// Finishes the last message, writes everything and returns the writer.
    pub fn finish(mut self) -> std::io::Result<W> {
        self.builder.flush();
        self.drain()?;
        self.out.flush()?;
        Ok(self.out)
    }
}
