//! What a series is keyed by: one Information Element (`destinationTransportPort`,
//! `protocolIdentifier`...), an address element cut to a prefix (`sourceIPv4Address/24`), or the
//! exporter (`@exporter`).

use crate::wire::batch::{Batch, Value};
use crate::wire::model::DataType;
use crate::wire::registry::Registry;
use std::fmt;

/// An element: (Private Enterprise Number, element id).
pub type ElementId = (u32, u16);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySpec {
    Element {
        id: ElementId,
        /// As given (`sourceIPv4Address/24`), for the output.
        text: String,
        /// Bits of an address kept.
        prefix: Option<u8>,
    },
    Exporter,
    /// `@source` or `@destination`: the record's IPv4 or IPv6 address of that end, whichever
    /// its template has, cut to `v4` or `v6` bits (`@source/24/64`; per address without them).
    Address {
        source: bool,
        v4: u8,
        v6: u8,
    },
}

impl KeySpec {
    /// `@exporter`, an element's name (a registered name, `reverse...`, `_ipfix_<id>`,
    /// `e<PEN>id<id>`), or an address element's name with `/bits`.
    pub fn parse(text: &str, registry: &Registry) -> Result<KeySpec, String> {
        let text = text.trim();
        if text == "@exporter" {
            return Ok(KeySpec::Exporter);
        }
        for (name, source) in [("@source", true), ("@destination", false)] {
            let Some(rest) = text.strip_prefix(name) else {
                continue;
            };
            let mut bits = rest.split('/').skip(1);
            let mut next = |max: u8, default: u8| -> Result<u8, String> {
                match bits.next() {
                    None => Ok(default),
                    Some(b) => b
                        .parse::<u8>()
                        .ok()
                        .filter(|b| *b <= max)
                        .ok_or_else(|| format!("{text}: a prefix length of 0 to {max} bits")),
                }
            };
            if !(rest.is_empty() || rest.starts_with('/')) {
                break;
            }
            let (v4, v6) = (next(32, 32)?, next(128, 128)?);
            if bits.next().is_some() {
                return Err(format!("{text}: {name}/V4BITS/V6BITS at most"));
            }
            return Ok(KeySpec::Address { source, v4, v6 });
        }
        let (name, prefix) = match text.split_once('/') {
            Some((n, bits)) => (
                n,
                Some(
                    bits.parse::<u8>()
                        .map_err(|_| format!("{text}: the prefix length is not a number"))?,
                ),
            ),
            None => (text, None),
        };
        let e = registry
            .find(name)
            .ok_or_else(|| format!("{name}: no such Information Element"))?;
        if let Some(bits) = prefix {
            let max = match e.data_type {
                DataType::Ipv4Address => 32,
                DataType::Ipv6Address => 128,
                _ => return Err(format!("{text}: only an address element takes a /prefix")),
            };
            if bits > max {
                return Err(format!("{text}: a prefix of at most {max} bits"));
            }
        }
        Ok(KeySpec::Element {
            id: (e.pen, e.id),
            text: text.to_string(),
            prefix,
        })
    }

    pub fn label(&self) -> String {
        match self {
            KeySpec::Element { text, .. } => text.clone(),
            KeySpec::Exporter => "@exporter".into(),
            KeySpec::Address { source, v4, v6 } => {
                let end = if *source { "@source" } else { "@destination" };
                match (v4, v6) {
                    (32, 128) => end.to_string(),
                    _ => format!("{end}/{v4}/{v6}"),
                }
            }
        }
    }

    /// The elements whose value is the key (an address key: either family's).
    pub fn elements(&self) -> &'static [(u32, u16)] {
        match self {
            KeySpec::Address { source: true, .. } => &[(0, 8), (0, 27)],
            KeySpec::Address { source: false, .. } => &[(0, 12), (0, 28)],
            _ => &[],
        }
    }
}

/// Bytes of a string or octet-array value kept in a key.
pub const MAX_KEY_BYTES: usize = 256;

/// One key's value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    /// No key: the one series of everything.
    All,
    /// The record has no such element.
    Absent,
    Unsigned(u64),
    Signed(i64),
    Ipv4([u8; 4], u8),
    Ipv6([u8; 16], u8),
    Mac([u8; 6]),
    Text(Box<str>),
    Bytes(Box<[u8]>),
    /// Every key past a live series' bound on keys (`Options::max_keys`).
    Other,
}

impl Key {
    /// The exporter's address (`192.0.2.1:4739` is `192.0.2.1`; a file's name stays).
    pub fn exporter(exporter: &str) -> Key {
        match exporter.parse::<std::net::SocketAddr>() {
            Ok(a) => Key::Text(a.ip().to_string().into()),
            Err(_) => Key::Text(exporter.into()),
        }
    }

    /// Field `f` of record `r`, as `spec` keys it.
    pub fn of(spec: &KeySpec, b: &Batch, buf: &[u8], r: usize, f: usize) -> Key {
        let value = b.value(buf, r, f);
        let prefix = match spec {
            KeySpec::Element { prefix, .. } => *prefix,
            KeySpec::Exporter => None,
            KeySpec::Address { v4, v6, .. } => match value {
                Value::Ipv6(_) => Some(*v6),
                _ => Some(*v4),
            },
        };
        match value {
            Value::Unsigned(v) => Key::Unsigned(v),
            Value::Signed(v) => Key::Signed(v),
            Value::Float(v) => Key::Text(v.to_string().into()),
            Value::Bool(v) => Key::Unsigned(u64::from(v)),
            Value::InvalidBool(v) => Key::Unsigned(v.into()),
            Value::Mac(m) => Key::Mac(m),
            Value::Ipv4(a) => {
                let bits = prefix.unwrap_or(32).min(32);
                let mask = if bits == 0 {
                    0
                } else {
                    u32::MAX << (32 - bits)
                };
                Key::Ipv4((u32::from(a) & mask).to_be_bytes(), bits)
            }
            Value::Ipv6(a) => {
                let bits = prefix.unwrap_or(128).min(128);
                let mask = if bits == 0 {
                    0
                } else {
                    u128::MAX << (128 - bits)
                };
                Key::Ipv6((u128::from(a) & mask).to_be_bytes(), bits)
            }
            Value::DateTimeSeconds(v) => Key::Unsigned(v.into()),
            Value::DateTimeMilliseconds(v)
            | Value::DateTimeMicroseconds(v)
            | Value::DateTimeNanoseconds(v) => Key::Unsigned(v),
            // Keys are held per interval and go into job records and answers: a variable-length
            // value is cut to MAX_KEY_BYTES.
            Value::String(s) => {
                Key::Text(String::from_utf8_lossy(&s[..s.len().min(MAX_KEY_BYTES)]).into())
            }
            Value::Bytes(s)
            | Value::BasicList(s)
            | Value::SubTemplateList(s)
            | Value::SubTemplateMultiList(s) => Key::Bytes(s[..s.len().min(MAX_KEY_BYTES)].into()),
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::All => f.write_str("total"),
            Key::Other => f.write_str("other"),
            Key::Absent => f.write_str("(absent)"),
            Key::Unsigned(v) => write!(f, "{v}"),
            Key::Signed(v) => write!(f, "{v}"),
            Key::Ipv4(a, 32) => write!(f, "{}", std::net::Ipv4Addr::from(*a)),
            Key::Ipv4(a, bits) => write!(f, "{}/{bits}", std::net::Ipv4Addr::from(*a)),
            Key::Ipv6(a, 128) => write!(f, "{}", std::net::Ipv6Addr::from(*a)),
            Key::Ipv6(a, bits) => write!(f, "{}/{bits}", std::net::Ipv6Addr::from(*a)),
            Key::Mac(m) => write!(
                f,
                "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                m[0], m[1], m[2], m[3], m[4], m[5]
            ),
            Key::Text(s) => f.write_str(s),
            Key::Bytes(b) => {
                for x in b.iter() {
                    write!(f, "{x:02x}")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_with_names_prefixes_and_the_exporter() {
        let reg = Registry::builtin();
        assert_eq!(
            KeySpec::parse("destinationTransportPort", &reg),
            Ok(KeySpec::Element {
                id: (0, 11),
                text: "destinationTransportPort".into(),
                prefix: None
            })
        );
        assert!(matches!(
            KeySpec::parse("sourceIPv4Address/24", &reg),
            Ok(KeySpec::Element {
                id: (0, 8),
                prefix: Some(24),
                ..
            })
        ));
        assert_eq!(KeySpec::parse("@exporter", &reg), Ok(KeySpec::Exporter));
        for bad in [
            "noSuchElement",
            "sourceIPv4Address/33",
            "sourceIPv4Address/x",
            "protocolIdentifier/8",
        ] {
            assert!(KeySpec::parse(bad, &reg).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_show_as_operators_write_them() {
        assert_eq!(Key::Ipv4([10, 1, 2, 0], 24).to_string(), "10.1.2.0/24");
        assert_eq!(Key::Ipv4([10, 1, 2, 3], 32).to_string(), "10.1.2.3");
        assert_eq!(Key::Unsigned(443).to_string(), "443");
        assert_eq!(Key::exporter("192.0.2.1:4739").to_string(), "192.0.2.1");
        assert_eq!(Key::exporter("flows.ipfix").to_string(), "flows.ipfix");
    }
}

#[cfg(test)]
mod address_tests {
    use super::*;

    #[test]
    fn source_and_destination_keys_parse_with_their_prefixes() {
        let reg = Registry::builtin();
        let p = |t: &str| KeySpec::parse(t, &reg);
        assert_eq!(
            p("@source"),
            Ok(KeySpec::Address {
                source: true,
                v4: 32,
                v6: 128
            })
        );
        assert_eq!(
            p("@destination/24/64"),
            Ok(KeySpec::Address {
                source: false,
                v4: 24,
                v6: 64
            })
        );
        assert_eq!(
            p("@source/16").map(|k| k.label()),
            Ok("@source/16/128".into())
        );
        assert_eq!(p("@source").map(|k| k.label()), Ok("@source".into()));
        assert!(p("@source/33").is_err());
        assert!(p("@source/24/129").is_err());
        assert!(p("@source/24/64/8").is_err());
        assert!(p("@sources").is_err());
    }
}
