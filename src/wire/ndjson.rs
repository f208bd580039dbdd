//! Records as JSON objects, one per line (NDJSON): IANA element names as keys, typed values
//! (addresses as strings, timestamps as RFC 3339), and `@`-prefixed metadata keys that no
//! Information Element name can collide with.

use super::batch::{Batch, Value};
use super::decoder::{DecodedMessage, TemplateMap};
use super::plan::ColumnType;
use super::registry::Registry;
use super::structured::{
    self, MAX_LIST_DEPTH, SubTemplateList, decode_basic_list, decode_sub_template_list,
    decode_sub_template_multi_list,
};
use super::template::TemplateKind;
use chrono::{DateTime, SecondsFormat};
use std::io::Write;

/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
const NTP_UNIX_OFFSET: i64 = 2_208_988_800;

/// What the NDJSON line says about where a record came from.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    /// The exporter: an address, or a file name when there is none.
    pub exporter: &'a str,
    /// The tenant that owns the exporter (the collector's records); `None` writes no field.
    pub tenant: Option<&'a str>,
    /// The Observation Domain to show instead of the header's (a mediator's `domain` transform).
    pub domain: Option<u32>,
}

/// Appends one JSON object (and a newline) for record `r` of `batch`.
pub fn write_record(
    out: &mut Vec<u8>,
    origin: Origin<'_>,
    msg: &DecodedMessage,
    batch: &Batch,
    r: usize,
    registry: &Registry,
) {
    write_meta(out, origin, msg, batch);
    let ctx = Ctx {
        msg: &msg.buf,
        templates: &msg.templates,
        registry,
    };
    write_fields(out, &ctx, batch, r, 0, true);
    out.extend_from_slice(b"}\n");
}

/// The `@` keys a line starts with (`{"@exporter":...`, no closing brace): the same for every
/// record of a batch.
pub(crate) fn write_meta(
    out: &mut Vec<u8>,
    origin: Origin<'_>,
    msg: &DecodedMessage,
    batch: &Batch,
) {
    out.extend_from_slice(b"{\"@exporter\":");
    write_str(out, origin.exporter.as_bytes());
    if let Some(t) = origin.tenant {
        out.extend_from_slice(b",\"@tenant\":");
        write_str(out, t.as_bytes());
    }
    out.extend_from_slice(b",\"@domain\":");
    write_u64(
        out,
        origin.domain.unwrap_or(msg.header.observation_domain) as u64,
    );
    out.extend_from_slice(b",\"@template\":");
    write_u64(out, batch.plan.template.id as u64);
    if batch.plan.template.kind == TemplateKind::Options {
        out.extend_from_slice(b",\"@options\":true");
    }
    out.extend_from_slice(b",\"@exportTime\":");
    write_time(out, msg.header.export_time as i64, 0, SecondsFormat::Secs);
    // NetFlow's FIRST_SWITCHED/LAST_SWITCHED (flowStartSysUpTime/flowEndSysUpTime) count
    // milliseconds since the exporter booted: without the header's sysUptime next to the export
    // time, a reader cannot turn them into absolute times.
    if let Some(up) = msg.header.sys_uptime_ms {
        out.extend_from_slice(b",\"@sysUptime\":");
        write_u64(out, up as u64);
    }
}

struct Ctx<'a> {
    msg: &'a [u8],
    templates: &'a TemplateMap,
    registry: &'a Registry,
}

/// Writes `"name":value` pairs of record `r`; repeated elements become one array.
fn write_fields(
    out: &mut Vec<u8>,
    ctx: &Ctx<'_>,
    batch: &Batch,
    r: usize,
    depth: usize,
    mut comma: bool,
) {
    let fields = &batch.plan.fields;
    for (f, pf) in fields.iter().enumerate() {
        if pf.repeated && pf.occurrence > 0 {
            continue;
        }
        if comma {
            out.push(b',');
        }
        comma = true;
        write_str(out, pf.element.name.as_bytes());
        out.push(b':');
        if pf.repeated {
            out.push(b'[');
            for (k, &g) in pf.occurrences.iter().enumerate() {
                if k > 0 {
                    out.push(b',');
                }
                write_value(out, ctx, batch.value(ctx.msg, r, g), batch, r, g, depth);
            }
            out.push(b']');
        } else {
            write_value(out, ctx, batch.value(ctx.msg, r, f), batch, r, f, depth);
        }
    }
}

fn write_value(
    out: &mut Vec<u8>,
    ctx: &Ctx<'_>,
    v: Value<'_>,
    batch: &Batch,
    r: usize,
    f: usize,
    depth: usize,
) {
    match v {
        Value::Unsigned(x) => write_u64(out, x),
        Value::Signed(x) => {
            let mut b = itoa::Buffer::new();
            out.extend_from_slice(b.format(x).as_bytes());
        }
        Value::Float(x) => {
            if x.is_finite() {
                let mut b = ryu::Buffer::new();
                out.extend_from_slice(b.format(x).as_bytes());
            } else {
                write_str(out, x.to_string().as_bytes());
            }
        }
        Value::Bool(b) => out.extend_from_slice(if b { b"true" } else { b"false" }),
        Value::InvalidBool(x) => write_u64(out, x as u64),
        Value::Mac(m) => {
            let s = format!(
                "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                m[0], m[1], m[2], m[3], m[4], m[5]
            );
            write_str(out, s.as_bytes());
        }
        Value::Ipv4(a) => {
            let _ = write!(out, "\"{a}\"");
        }
        Value::Ipv6(a) => {
            let _ = write!(out, "\"{a}\"");
        }
        Value::DateTimeSeconds(s) => write_time(out, s as i64, 0, SecondsFormat::Secs),
        Value::DateTimeMilliseconds(ms) => {
            let ms = ms as i64;
            write_time(
                out,
                ms.div_euclid(1000),
                (ms.rem_euclid(1000) * 1_000_000) as u32,
                SecondsFormat::Millis,
            )
        }
        Value::DateTimeMicroseconds(ntp) => {
            let (s, ns) = ntp_to_unix(ntp & !0x7ff);
            write_time(out, s, ns, SecondsFormat::Micros)
        }
        Value::DateTimeNanoseconds(ntp) => {
            let (s, ns) = ntp_to_unix(ntp);
            write_time(out, s, ns, SecondsFormat::Nanos)
        }
        // Fixed-length strings arrive NUL-padded; the padding is not part of the text.
        Value::String(b) => write_str(out, trim_nul(b)),
        Value::Bytes(b) => write_hex(out, b),
        Value::BasicList(b) | Value::SubTemplateList(b) | Value::SubTemplateMultiList(b) => {
            if depth >= MAX_LIST_DEPTH {
                write_hex(out, b);
                return;
            }
            write_list(out, ctx, batch, r, f, depth + 1);
        }
    }
}

fn trim_nul(b: &[u8]) -> &[u8] {
    let end = b.iter().rposition(|&c| c != 0).map_or(0, |i| i + 1);
    &b[..end]
}

/// Converts a 64-bit NTP timestamp to Unix seconds and nanoseconds.
///
/// The 32-bit seconds wrap on 2036-02-07T06:28:16Z. RFC 4330 section 3 (and RFC 5905's era
/// rule): when the most significant bit of the seconds is 0, the time is in era 1, after the
/// wrap. This reads 1968-2036 and 2036-2104 correctly; times before 1968 cannot be expressed,
/// which costs nothing for flow times.
pub fn ntp_to_unix(ntp: u64) -> (i64, u32) {
    let ntp_secs = (ntp >> 32) as i64;
    let era_base = if ntp_secs & 0x8000_0000 == 0 {
        1 << 32
    } else {
        0
    };
    let secs = ntp_secs + era_base - NTP_UNIX_OFFSET;
    let nanos = (((ntp & 0xffff_ffff) * 1_000_000_000) >> 32) as u32;
    (secs, nanos)
}

fn write_list(out: &mut Vec<u8>, ctx: &Ctx<'_>, batch: &Batch, r: usize, f: usize, depth: usize) {
    let span = batch.field_span(r, f);
    let err = |out: &mut Vec<u8>, e: super::error::WireError| {
        out.extend_from_slice(b"{\"@error\":");
        write_str(out, e.to_string().as_bytes());
        out.push(b'}');
    };
    match batch.plan.fields[f].column {
        ColumnType::BasicList => match decode_basic_list(ctx.msg, span, ctx.registry) {
            Ok(list) => {
                out.extend_from_slice(b"{\"semantic\":");
                write_str(out, structured::semantic_name(list.semantic).as_bytes());
                out.extend_from_slice(b",\"element\":");
                write_str(out, list.element.name.as_bytes());
                out.extend_from_slice(b",\"values\":[");
                for i in 0..list.batch.len() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write_value(
                        out,
                        ctx,
                        list.batch.value(ctx.msg, i, 0),
                        &list.batch,
                        i,
                        0,
                        depth,
                    );
                }
                out.extend_from_slice(b"]}");
            }
            Err(e) => err(out, e),
        },
        ColumnType::SubTemplateList => match decode_sub_template_list(ctx.msg, span, ctx.templates)
        {
            Ok(list) => write_sub_template_list(out, ctx, &list, depth),
            Err(e) => err(out, e),
        },
        _ => match decode_sub_template_multi_list(ctx.msg, span, ctx.templates) {
            Ok((semantic, entries)) => {
                out.extend_from_slice(b"{\"semantic\":");
                write_str(out, structured::semantic_name(semantic).as_bytes());
                out.extend_from_slice(b",\"lists\":[");
                for (i, e) in entries.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write_sub_template_list(out, ctx, e, depth);
                }
                out.extend_from_slice(b"]}");
            }
            Err(e) => err(out, e),
        },
    }
}

fn write_sub_template_list(out: &mut Vec<u8>, ctx: &Ctx<'_>, list: &SubTemplateList, depth: usize) {
    out.extend_from_slice(b"{\"semantic\":");
    write_str(out, structured::semantic_name(list.semantic).as_bytes());
    out.extend_from_slice(b",\"templateId\":");
    write_u64(out, list.template_id as u64);
    match &list.batch {
        Some(b) => {
            out.extend_from_slice(b",\"records\":[");
            for i in 0..b.len() {
                if i > 0 {
                    out.push(b',');
                }
                out.push(b'{');
                write_fields(out, ctx, b, i, depth, false);
                out.push(b'}');
            }
            out.extend_from_slice(b"]}");
        }
        None => {
            out.extend_from_slice(b",\"undecoded\":");
            write_hex(out, &ctx.msg[list.content.range()]);
            out.push(b'}');
        }
    }
}

fn write_u64(out: &mut Vec<u8>, x: u64) {
    let mut b = itoa::Buffer::new();
    out.extend_from_slice(b.format(x).as_bytes());
}

fn write_time(out: &mut Vec<u8>, secs: i64, nanos: u32, format: SecondsFormat) {
    match DateTime::from_timestamp(secs, nanos) {
        Some(t) => {
            out.push(b'"');
            out.extend_from_slice(t.to_rfc3339_opts(format, true).as_bytes());
            out.push(b'"');
        }
        None => write_u64(out, secs.max(0) as u64),
    }
}

fn write_hex(out: &mut Vec<u8>, b: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    for &x in b {
        out.push(HEX[(x >> 4) as usize]);
        out.push(HEX[(x & 15) as usize]);
    }
    out.push(b'"');
}

/// A JSON string from bytes that should be UTF-8 (RFC 7011 section 6.1.6); invalid sequences are
/// replaced, never passed through.
pub fn write_str(out: &mut Vec<u8>, b: &[u8]) {
    let s = String::from_utf8_lossy(b);
    // serde_json's escaping cannot fail when writing into a Vec.
    let _ = serde_json::to_writer(&mut *out, s.as_ref());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ntp_conversion() {
        // 2023-01-01T00:00:00.5Z
        let ntp = ((1_672_531_200i64 + NTP_UNIX_OFFSET) as u64) << 32 | 0x8000_0000;
        assert_eq!(ntp_to_unix(ntp), (1_672_531_200, 500_000_000));
    }

    fn rendered(ntp: u64) -> String {
        let (s, ns) = ntp_to_unix(ntp);
        let mut out = Vec::new();
        write_time(&mut out, s, ns, SecondsFormat::Nanos);
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn ntp_eras_around_2036() {
        // 2035-01-01: still era 0 (seconds 4,260,211,200, most significant bit set).
        let ntp_2035 = ((2_051_222_400i64 + NTP_UNIX_OFFSET) as u64) << 32;
        assert_eq!(ntp_to_unix(ntp_2035), (2_051_222_400, 0));
        assert_eq!(rendered(ntp_2035), "\"2035-01-01T00:00:00.000000000Z\"");
        // 2037-01-01: the seconds wrapped to 28,402,304 (most significant bit clear): era 1.
        let ntp_2037 = ((2_114_380_800i64 + NTP_UNIX_OFFSET - (1 << 32)) as u64) << 32 | 1 << 31;
        assert_eq!(ntp_to_unix(ntp_2037), (2_114_380_800, 500_000_000));
        assert_eq!(rendered(ntp_2037), "\"2037-01-01T00:00:00.500000000Z\"");
        // The last second of era 0 and the first of era 1 are one second apart.
        assert_eq!(ntp_to_unix(0xffff_ffff_0000_0000).0 + 1, ntp_to_unix(0).0);
        assert_eq!(rendered(0), "\"2036-02-07T06:28:16.000000000Z\"");
    }

    fn one_line(msg: &[u8]) -> String {
        let registry = Registry::builtin();
        let mut d = crate::wire::Decoder::new(registry.clone(), Default::default());
        let m = d
            .decode(bytes::Bytes::copy_from_slice(msg))
            .expect("decodes");
        let mut out = Vec::new();
        let origin = Origin {
            exporter: "x",
            tenant: None,
            domain: None,
        };
        write_record(&mut out, origin, &m, &m.batches[0], 0, &registry);
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn netflow_v9_records_carry_the_sys_uptime() {
        // v9 header (count 2, sysUptime 123456 ms, 2023-11-14T22:13:20Z, sequence 1, source 7),
        // template 256 = L4_SRC_PORT in 2 bytes, then one record.
        let mut m = vec![
            0, 9, 0, 2, 0, 1, 0xe2, 0x40, 0x65, 0x53, 0xf1, 0x00, 0, 0, 0, 1, 0, 0, 0, 7,
        ];
        m.extend_from_slice(&[0, 0, 0, 12, 1, 0, 0, 1, 0, 7, 0, 2]);
        m.extend_from_slice(&[1, 0, 0, 6, 0x1f, 0x90]);
        let line = one_line(&m);
        assert!(
            line.contains(r#""@exportTime":"2023-11-14T22:13:20Z","@sysUptime":123456,"#),
            "{line}"
        );
        // IPFIX has no sysUptime: no key.
        let mut m = vec![0, 10, 0, 0, 0x65, 0x53, 0xf1, 0x00, 0, 0, 0, 0, 0, 0, 0, 7];
        m.extend_from_slice(&[0, 2, 0, 12, 1, 0, 0, 1, 0, 7, 0, 2]);
        m.extend_from_slice(&[1, 0, 0, 6, 0x1f, 0x90]);
        let len = m.len() as u16;
        m[2..4].copy_from_slice(&len.to_be_bytes());
        assert!(!one_line(&m).contains("@sysUptime"));
    }

    #[test]
    fn strings_are_escaped() {
        let mut out = Vec::new();
        write_str(&mut out, b"a\"b\n\xff");
        assert_eq!(String::from_utf8_lossy(&out), "\"a\\\"b\\n\u{fffd}\"");
    }
}
