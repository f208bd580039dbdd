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
}

impl KeySpec {
    /// `@exporter`, an element's name (a registered name, `reverse...`, `_ipfix_<id>`,
    /// `e<PEN>id<id>`), or an address element's name with `/bits`.
    pub fn parse(text: &str, registry: &Registry) -> Result<KeySpec, String> {
        let text = text.trim();
        if text == "@exporter" {
            return Ok(KeySpec::Exporter);
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
        }
    }
}

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
        let prefix = match spec {
            KeySpec::Element { prefix, .. } => *prefix,
            KeySpec::Exporter => None,
        };
        match b.value(buf, r, f) {
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
            Value::String(s) => Key::Text(String::from_utf8_lossy(s).into()),
            Value::Bytes(s)
            | Value::BasicList(s)
            | Value::SubTemplateList(s)
            | Value::SubTemplateMultiList(s) => Key::Bytes(s.into()),
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
