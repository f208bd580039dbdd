//! Errors of the wire codec. Offsets are relative to the start of the message, so a caller that
//! knows where the message sits (file offset, TCP stream position) can report the exact place.

/// Why a message (or part of one) could not be decoded or encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("message of {len} bytes is shorter than its {need}-byte header")]
    ShortHeader { len: usize, need: usize },
    #[error("unsupported version {0} (10 is IPFIX, 9 and 5 are NetFlow v9 and v5)")]
    Version(u16),
    #[error(
        "NetFlow v5 packet of {len} bytes with count {count}: a packet is the 24-byte header \
         and exactly count (1 to 30) 48-byte records"
    )]
    V5Length { len: usize, count: u16 },
    #[error("message length {declared} is impossible: {reason}")]
    MessageLength {
        declared: usize,
        reason: &'static str,
    },
    #[error("set at offset {offset}: length {length} {reason}")]
    SetLength {
        offset: usize,
        length: usize,
        reason: &'static str,
    },
    #[error("set at offset {offset}: set id {set_id} is reserved")]
    ReservedSetId { offset: usize, set_id: u16 },
    #[error("template record at offset {offset}: {reason}")]
    Template { offset: usize, reason: String },
    /// A well-formed template this decoder will not hold: past a limit (fields, templates,
    /// bytes). The sender is not malformed, but what it asks would cost too much.
    #[error("template {template_id} refused: {reason}")]
    TemplateRefused { template_id: u16, reason: String },
    #[error("data set at offset {offset} (template {template_id}): {reason}")]
    Data {
        offset: usize,
        template_id: u16,
        reason: String,
    },
    #[error("structured data (RFC 6313) at offset {offset}: {reason}")]
    List { offset: usize, reason: String },
    #[error("cannot encode: {0}")]
    Encode(String),
}
