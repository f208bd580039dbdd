//! The Information Element registry: IANA's table and known vendor tables (generated from
//! `../shared/iana` by `scripts/gen_registry.py`), RFC 5103 reverse elements, and extra elements
//! an operator loads at run time from a TOML file.

mod generated;

use super::model::{DataType, InfoElement, Semantics};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

/// RFC 5103: reverse Information Elements live under this PEN with the forward element's id.
pub const REVERSE_PEN: u32 = 29305;

/// CERT (YAF's enterprise number). IANA has no element for a flow's first TCP flags; YAF exports
/// them as these, and so does our Metering Process. Reverse elements of an enterprise follow
/// RFC 5103 section 6.2: the same PEN with bit 14 of the id set.
pub const CERT_PEN: u32 = 6871;
pub const CERT_REVERSE_BIT: u16 = 0x4000;

const fn cert(id: u16, name: &'static str) -> InfoElement {
    InfoElement {
        pen: CERT_PEN,
        id,
        name: Cow::Borrowed(name),
        data_type: DataType::Unsigned8,
        semantics: Semantics::Flags,
        units: None,
    }
}

/// The CERT elements YAF's default export uses for TCP flags (IDs from YAF's documentation).
const CERT_ELEMENTS: [InfoElement; 4] = [
    cert(14, "initialTCPFlags"),
    cert(15, "unionTCPFlags"),
    cert(14 | CERT_REVERSE_BIT, "reverseInitialTCPFlags"),
    cert(15 | CERT_REVERSE_BIT, "reverseUnionTCPFlags"),
];

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot read information element file {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("information element file {path}: {reason}")]
    Invalid { path: String, reason: String },
}

type ElementMap = HashMap<(u32, u16), Arc<InfoElement>>;

/// Lookup table from (PEN, element id) to the element's description.
#[derive(Debug, Clone)]
pub struct Registry {
    elements: HashMap<(u32, u16), Arc<InfoElement>>,
    /// Elements made up on the way (unknown ones, RFC 5103 reverse ones), made once and shared
    /// by every template that uses them: a template of thousands of unknown fields must not
    /// allocate a name per field per session.
    made: Arc<Mutex<ElementMap>>,
}

/// Made-up elements kept at most; past this each template gets its own (a bounded cost anyway:
/// templates are charged to a byte budget).
const MAX_MADE_ELEMENTS: usize = 1 << 16;

#[derive(serde::Deserialize)]
struct ExtraFile {
    #[serde(default)]
    element: Vec<ExtraElement>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ExtraElement {
    pen: u32,
    id: u16,
    name: String,
    #[serde(rename = "type")]
    data_type: String,
    #[serde(default)]
    semantics: Option<String>,
    #[serde(default)]
    units: Option<String>,
}

impl Registry {
    /// The built-in registry (IANA and vendor elements), built once per process.
    pub fn builtin() -> Arc<Registry> {
        static BUILTIN: OnceLock<Arc<Registry>> = OnceLock::new();
        BUILTIN
            .get_or_init(|| {
                let elements = generated::ELEMENTS
                    .iter()
                    .chain(&CERT_ELEMENTS)
                    .map(|e| ((e.pen, e.id), Arc::new(e.clone())))
                    .collect();
                Arc::new(Registry {
                    elements,
                    made: Arc::default(),
                })
            })
            .clone()
    }

    /// The built-in registry plus (and overridden by) the elements in `path`.
    ///
    /// The file is TOML: `[[element]]` tables with `pen`, `id`, `name`, `type` (IANA spelling,
    /// e.g. "unsigned32"), and optional `semantics` and `units`.
    pub fn with_extra_file(path: &Path) -> Result<Registry, RegistryError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| RegistryError::Io {
            path: shown.clone(),
            source,
        })?;
        let mut reg = (*Registry::builtin()).clone();
        reg.add_toml(&text)
            .map_err(|reason| RegistryError::Invalid {
                path: shown,
                reason,
            })?;
        Ok(reg)
    }

    fn add_toml(&mut self, text: &str) -> Result<(), String> {
        let file: ExtraFile = toml::from_str(text).map_err(|e| e.to_string())?;
        // Made-up elements (reverse ones) may derive from what this file overrides.
        self.made = Arc::default();
        for e in file.element {
            if e.id > 0x7fff {
                return Err(format!(
                    "element {}: id {} is above 32767 (the top bit is the enterprise bit)",
                    e.name, e.id
                ));
            }
            let data_type = DataType::from_iana_name(&e.data_type)
                .ok_or_else(|| format!("element {}: unknown type {:?}", e.name, e.data_type))?;
            let semantics = match e.semantics.as_deref() {
                None => Semantics::Default,
                Some(s) => Semantics::from_iana_name(s)
                    .ok_or_else(|| format!("element {}: unknown semantics {s:?}", e.name))?,
            };
            let ie = InfoElement {
                pen: e.pen,
                id: e.id,
                name: Cow::Owned(e.name),
                data_type,
                semantics,
                units: e.units.map(Cow::Owned),
            };
            self.elements.insert((e.pen, e.id), Arc::new(ie));
        }
        Ok(())
    }

    /// The element for (PEN, id), including RFC 5103 reverse elements derived from IANA's.
    pub fn lookup(&self, pen: u32, id: u16) -> Option<Arc<InfoElement>> {
        if let Some(e) = self.elements.get(&(pen, id)) {
            return Some(e.clone());
        }
        if pen == REVERSE_PEN {
            let fwd = self.elements.get(&(0, id))?;
            return Some(Arc::new(InfoElement {
                pen,
                id,
                name: Cow::Owned(reverse_name(&fwd.name)),
                data_type: fwd.data_type,
                semantics: fwd.semantics,
                units: fwd.units.clone(),
            }));
        }
        None
    }

    /// The element for (PEN, id), or an octetArray element with the conventional unknown name:
    /// `_ipfix_<id>` for IANA ids, `e<PEN>id<id>` for enterprise ones.
    pub fn resolve(&self, pen: u32, id: u16) -> Arc<InfoElement> {
        if let Some(e) = self.elements.get(&(pen, id)) {
            return e.clone();
        }
        let mut made = self.made.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = made.get(&(pen, id)) {
            return e.clone();
        }
        let e = self.lookup(pen, id).unwrap_or_else(|| {
            Arc::new(InfoElement {
                pen,
                id,
                name: Cow::Owned(unknown_name(pen, id)),
                data_type: DataType::OctetArray,
                semantics: Semantics::Default,
                units: None,
            })
        });
        if made.len() < MAX_MADE_ELEMENTS {
            made.insert((pen, id), e.clone());
        }
        e
    }

    /// The element an operator names (filters, `keep` lists): a registered name, an RFC 5103
    /// reverse name (`reverseOctetDeltaCount`), or the unknown-element spelling `_ipfix_<id>` /
    /// `e<PEN>id<id>`. A linear scan: names are looked up when a stream is configured, never per
    /// record.
    pub fn find(&self, name: &str) -> Option<Arc<InfoElement>> {
        let best = self
            .elements
            .values()
            .filter(|e| e.name == name)
            .min_by_key(|e| (e.pen, e.id));
        if let Some(e) = best {
            return Some(e.clone());
        }
        if let Some(rest) = name.strip_prefix("reverse") {
            let mut chars = rest.chars();
            let first = chars.next()?;
            let forward: String = first.to_lowercase().chain(chars).collect();
            if let Some(f) = self
                .elements
                .values()
                .find(|e| e.pen == 0 && e.name == forward)
            {
                return self.lookup(REVERSE_PEN, f.id);
            }
        }
        if let Some(id) = name.strip_prefix("_ipfix_") {
            let id: u16 = id.parse().ok().filter(|id| *id <= 0x7fff)?;
            return Some(self.resolve(0, id));
        }
        let (pen, id) = name.strip_prefix('e')?.split_once("id")?;
        let (pen, id): (u32, u16) = (pen.parse().ok()?, id.parse().ok()?);
        (pen != 0 && id <= 0x7fff).then(|| self.resolve(pen, id))
    }

    pub fn len(&self) -> usize {
        self.elements.len()
    }

    pub fn is_empty(&self) -> bool {
        self.elements.is_empty()
    }
}

pub fn unknown_name(pen: u32, id: u16) -> String {
    if pen == 0 {
        format!("_ipfix_{id}")
    } else {
        format!("e{pen}id{id}")
    }
}

/// RFC 5103 section 6.1: "reverse" followed by the forward name with its first letter capitalised.
fn reverse_name(forward: &str) -> String {
    let mut out = String::with_capacity(forward.len() + 7);
    out.push_str("reverse");
    let mut chars = forward.chars();
    if let Some(first) = chars.next() {
        out.extend(first.to_uppercase());
    }
    out.push_str(chars.as_str());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_knows_core_elements() {
        let r = Registry::builtin();
        let e = r.lookup(0, 1).expect("octetDeltaCount");
        assert_eq!(e.name, "octetDeltaCount");
        assert_eq!(e.data_type, DataType::Unsigned64);
        assert_eq!(e.semantics, Semantics::DeltaCounter);
        assert_eq!(
            r.lookup(0, 8).map(|e| e.data_type),
            Some(DataType::Ipv4Address)
        );
        assert_eq!(
            r.lookup(0, 292).map(|e| e.data_type),
            Some(DataType::SubTemplateList)
        );
        assert_eq!(
            r.lookup(2011, 1).map(|e| e.name.to_string()),
            Some("ingressGponGemPortId".into())
        );
    }

    #[test]
    fn reverse_and_unknown_names() {
        let r = Registry::builtin();
        assert_eq!(r.resolve(REVERSE_PEN, 1).name, "reverseOctetDeltaCount");
        assert_eq!(r.resolve(0, 32000).name, "_ipfix_32000");
        assert_eq!(r.resolve(9, 12345).name, "e9id12345");
        assert_eq!(r.resolve(9, 12345).data_type, DataType::OctetArray);
    }

    #[test]
    fn find_by_name() {
        let r = Registry::builtin();
        assert_eq!(
            r.find("octetDeltaCount").map(|e| (e.pen, e.id)),
            Some((0, 1))
        );
        let rev = r.find("reverseOctetDeltaCount").expect("reverse");
        assert_eq!((rev.pen, rev.id), (REVERSE_PEN, 1));
        assert_eq!(r.find("_ipfix_32000").map(|e| e.id), Some(32000));
        assert_eq!(r.find("e9id12345").map(|e| (e.pen, e.id)), Some((9, 12345)));
        assert!(r.find("octetDeltaCounts").is_none());
        assert!(r.find("e0id5").is_none());
        assert!(r.find("reverse").is_none());
    }

    #[test]
    fn extra_elements_from_toml() {
        let mut r = (*Registry::builtin()).clone();
        r.add_toml(
            "[[element]]\npen = 6871\nid = 14\nname = \"yafFlowKeyHash\"\ntype = \"unsigned32\"\nsemantics = \"identifier\"\n",
        )
        .expect("valid file");
        assert_eq!(r.resolve(6871, 14).name, "yafFlowKeyHash");
        assert!(
            r.add_toml("[[element]]\npen = 1\nid = 1\nname = \"x\"\ntype = \"int\"\n")
                .is_err()
        );
        assert!(
            r.add_toml("[[element]]\npen = 1\nid = 40000\nname = \"x\"\ntype = \"unsigned8\"\n")
                .is_err()
        );
    }
}
