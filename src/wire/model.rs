//! The IPFIX information model (RFC 7012): abstract data types, data type semantics and the
//! description of one Information Element. Kept apart from the registry so the generated table and
//! run-time loaded elements share one definition.

use std::borrow::Cow;

/// Abstract data types of RFC 7012 section 3.1, plus the RFC 6313 structured types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum DataType {
    OctetArray,
    Unsigned8,
    Unsigned16,
    Unsigned32,
    Unsigned64,
    /// Registered in IANA's table (e.g. ipv6ExtensionHeadersFull); carried as bytes.
    Unsigned256,
    Signed8,
    Signed16,
    Signed32,
    Signed64,
    Float32,
    Float64,
    Boolean,
    MacAddress,
    String,
    DateTimeSeconds,
    DateTimeMilliseconds,
    DateTimeMicroseconds,
    DateTimeNanoseconds,
    Ipv4Address,
    Ipv6Address,
    BasicList,
    SubTemplateList,
    SubTemplateMultiList,
}

impl DataType {
    /// Bytes of the full-size encoding of integer types (0 for the others).
    pub fn size(self) -> u16 {
        match self {
            DataType::Unsigned8 | DataType::Signed8 => 1,
            DataType::Unsigned16 | DataType::Signed16 => 2,
            DataType::Unsigned32 | DataType::Signed32 => 4,
            DataType::Unsigned64 | DataType::Signed64 => 8,
            _ => 0,
        }
    }

    /// The IANA spelling, as in the registry's `dataType` column.
    pub fn iana_name(self) -> &'static str {
        match self {
            DataType::OctetArray => "octetArray",
            DataType::Unsigned8 => "unsigned8",
            DataType::Unsigned16 => "unsigned16",
            DataType::Unsigned32 => "unsigned32",
            DataType::Unsigned64 => "unsigned64",
            DataType::Unsigned256 => "unsigned256",
            DataType::Signed8 => "signed8",
            DataType::Signed16 => "signed16",
            DataType::Signed32 => "signed32",
            DataType::Signed64 => "signed64",
            DataType::Float32 => "float32",
            DataType::Float64 => "float64",
            DataType::Boolean => "boolean",
            DataType::MacAddress => "macAddress",
            DataType::String => "string",
            DataType::DateTimeSeconds => "dateTimeSeconds",
            DataType::DateTimeMilliseconds => "dateTimeMilliseconds",
            DataType::DateTimeMicroseconds => "dateTimeMicroseconds",
            DataType::DateTimeNanoseconds => "dateTimeNanoseconds",
            DataType::Ipv4Address => "ipv4Address",
            DataType::Ipv6Address => "ipv6Address",
            DataType::BasicList => "basicList",
            DataType::SubTemplateList => "subTemplateList",
            DataType::SubTemplateMultiList => "subTemplateMultiList",
        }
    }

    pub fn from_iana_name(name: &str) -> Option<DataType> {
        const ALL: [DataType; 24] = [
            DataType::OctetArray,
            DataType::Unsigned8,
            DataType::Unsigned16,
            DataType::Unsigned32,
            DataType::Unsigned64,
            DataType::Unsigned256,
            DataType::Signed8,
            DataType::Signed16,
            DataType::Signed32,
            DataType::Signed64,
            DataType::Float32,
            DataType::Float64,
            DataType::Boolean,
            DataType::MacAddress,
            DataType::String,
            DataType::DateTimeSeconds,
            DataType::DateTimeMilliseconds,
            DataType::DateTimeMicroseconds,
            DataType::DateTimeNanoseconds,
            DataType::Ipv4Address,
            DataType::Ipv6Address,
            DataType::BasicList,
            DataType::SubTemplateList,
            DataType::SubTemplateMultiList,
        ];
        ALL.into_iter().find(|t| t.iana_name() == name)
    }
}

/// Data type semantics of RFC 7012 section 3.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Semantics {
    Default,
    Quantity,
    TotalCounter,
    DeltaCounter,
    Identifier,
    Flags,
    List,
    SnmpCounter,
    SnmpGauge,
}

impl Semantics {
    pub fn from_iana_name(name: &str) -> Option<Semantics> {
        Some(match name {
            "default" => Semantics::Default,
            "quantity" => Semantics::Quantity,
            "totalCounter" => Semantics::TotalCounter,
            "deltaCounter" => Semantics::DeltaCounter,
            "identifier" => Semantics::Identifier,
            "flags" => Semantics::Flags,
            "list" => Semantics::List,
            "snmpCounter" => Semantics::SnmpCounter,
            "snmpGauge" => Semantics::SnmpGauge,
            _ => return None,
        })
    }
}

/// One Information Element: (Private Enterprise Number, element id) names a type.
/// `pen == 0` is the IANA space.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoElement {
    pub pen: u32,
    pub id: u16,
    pub name: Cow<'static, str>,
    pub data_type: DataType,
    pub semantics: Semantics,
    pub units: Option<Cow<'static, str>>,
}
