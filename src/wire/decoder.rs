//! Message decoding with template state: one [`Decoder`] per template scope the caller chooses
//! (a TCP transport session, a UDP exporter, a file). Within it, templates are kept per
//! Observation Domain as RFC 7011 requires.
//!
//! Each domain's template map sits behind an `Arc` that is copied on write, so a decoded message
//! carries a cheap snapshot of the templates it was decoded with (needed to decode
//! subTemplateLists later, after the decoder has moved on).

use super::batch::{Batch, decode_records};
use super::error::WireError;
use super::header::{
    IPFIX_VERSION, MessageHeader, NETFLOW_V5_HEADER_LEN, NETFLOW_V5_VERSION,
    OPTIONS_TEMPLATE_SET_ID, SetRef, TEMPLATE_SET_ID, V9_OPTIONS_TEMPLATE_SET_ID,
    V9_TEMPLATE_SET_ID, parse_header, sets,
};
use super::plan::Plan;
use super::registry::Registry;
use super::template::{
    Template, TemplateEvent, TemplateKind, parse_template_set, parse_v9_template_set,
};
use bytes::Bytes;
use rustc_hash::FxHashMap;
use std::sync::Arc;

/// The templates of one Observation Domain, by template id.
pub type TemplateMap = FxHashMap<u16, Arc<Plan>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderOptions {
    /// Apply Template Withdrawals. RFC 7011 section 8.4: a UDP collector ignores them.
    pub honour_withdrawals: bool,
    /// Upper bound on templates held across all domains of this decoder.
    pub max_templates: usize,
}

impl Default for DecoderOptions {
    fn default() -> Self {
        DecoderOptions {
            honour_withdrawals: true,
            max_templates: 16_384,
        }
    }
}

/// A Data Set whose template this decoder does not hold (yet).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MissingTemplate {
    pub template_id: u16,
    pub set_offset: usize,
    pub set_len: usize,
}

/// Everything one message said.
#[derive(Debug, Clone)]
pub struct DecodedMessage {
    pub header: MessageHeader,
    /// The message bytes; batch spans point into it.
    pub buf: Bytes,
    /// The domain's templates as they stood after this message.
    pub templates: Arc<TemplateMap>,
    /// One batch per decoded Data Set, in message order.
    pub batches: Vec<Batch>,
    /// Template definitions and withdrawals, in message order.
    pub events: Vec<TemplateEvent>,
    /// Data Sets left undecoded for want of a template.
    pub missing: Vec<MissingTemplate>,
}

impl DecodedMessage {
    pub fn data_records(&self) -> usize {
        self.batches.iter().map(Batch::len).sum()
    }
}

#[derive(Debug, Clone)]
pub struct Decoder {
    registry: Arc<Registry>,
    options: DecoderOptions,
    domains: FxHashMap<u32, Arc<TemplateMap>>,
    template_count: usize,
    /// NetFlow v5's fixed record layout, compiled once. Not in any domain's template map: it is
    /// no exporter's template, so it is neither counted, shared nor expired.
    v5_plan: Arc<Plan>,
}

impl Decoder {
    pub fn new(registry: Arc<Registry>, options: DecoderOptions) -> Decoder {
        let v5_plan = Arc::new(Plan::compile(super::netflow_v5::template(), &registry));
        Decoder {
            registry,
            options,
            domains: FxHashMap::default(),
            template_count: 0,
            v5_plan,
        }
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The templates known for `domain`.
    pub fn templates(&self, domain: u32) -> Option<&Arc<TemplateMap>> {
        self.domains.get(&domain)
    }

    pub fn template_count(&self) -> usize {
        self.template_count
    }

    /// Decodes one IPFIX message or NetFlow v9 or v5 packet. For IPFIX, `buf` must start with
    /// the message; bytes past the header's length are ignored.
    ///
    /// Template Sets are applied as they are met, so Data Sets later in the same message can use
    /// them. On error, the template changes of the Sets before the bad one stay applied.
    pub fn decode(&mut self, mut buf: Bytes) -> Result<DecodedMessage, WireError> {
        let header = parse_header(&buf)?;
        if header.version == IPFIX_VERSION {
            // Shortened in place: slicing or cloning would touch the shared reference count,
            // which costs more per message than decoding a small Data Set.
            buf.truncate(header.length as usize);
        }
        let domain = header.observation_domain;
        let mut out = DecodedMessage {
            header,
            buf: Bytes::new(),
            templates: Arc::default(),
            batches: Vec::new(),
            events: Vec::new(),
            missing: Vec::new(),
        };
        let msg: &[u8] = &buf;
        if header.version == NETFLOW_V5_VERSION {
            // parse_header checked that the records fill the packet exactly.
            let batch = decode_records(
                &self.v5_plan,
                msg,
                NETFLOW_V5_HEADER_LEN,
                msg.len(),
                NETFLOW_V5_HEADER_LEN,
            )?;
            out.batches.push(batch);
        }
        for set in sets(msg, &header) {
            let set = set?;
            match set.id {
                TEMPLATE_SET_ID | OPTIONS_TEMPLATE_SET_ID if header.version == IPFIX_VERSION => {
                    for ev in parse_template_set(msg, &set)? {
                        self.apply(domain, &ev)?;
                        out.events.push(ev);
                    }
                }
                V9_TEMPLATE_SET_ID | V9_OPTIONS_TEMPLATE_SET_ID => {
                    for ev in parse_v9_template_set(msg, &set)? {
                        self.apply(domain, &ev)?;
                        out.events.push(ev);
                    }
                }
                id => self.decode_data_set(msg, domain, id, &set, &mut out)?,
            }
        }
        out.templates = self.domains.get(&domain).cloned().unwrap_or_default();
        out.buf = buf;
        Ok(out)
    }

    fn decode_data_set(
        &self,
        msg: &[u8],
        domain: u32,
        id: u16,
        set: &SetRef,
        out: &mut DecodedMessage,
    ) -> Result<(), WireError> {
        let plan = self.domains.get(&domain).and_then(|m| m.get(&id));
        match plan {
            Some(plan) => {
                let batch = decode_records(plan, msg, set.body_start, set.body_end, set.offset)?;
                out.batches.push(batch);
            }
            None => out.missing.push(MissingTemplate {
                template_id: id,
                set_offset: set.offset,
                set_len: set.body_end - set.offset,
            }),
        }
        Ok(())
    }

    /// Applies one template event to `domain`. Also the way in for templates learned elsewhere
    /// (a shared store), so they pass the same checks and limits.
    pub fn apply(&mut self, domain: u32, event: &TemplateEvent) -> Result<(), WireError> {
        match event {
            TemplateEvent::Define(t) => self.define(domain, t.clone()),
            TemplateEvent::Withdraw { kind, id } if self.options.honour_withdrawals => {
                if let Some(map) = self.domains.get_mut(&domain)
                    && map.get(id).is_some_and(|p| p.template.kind == *kind)
                {
                    Arc::make_mut(map).remove(id);
                    self.template_count -= 1;
                }
                Ok(())
            }
            TemplateEvent::WithdrawAll { kind } if self.options.honour_withdrawals => {
                if let Some(map) = self.domains.get_mut(&domain) {
                    let before = map.len();
                    Arc::make_mut(map).retain(|_, p| p.template.kind != *kind);
                    self.template_count -= before - map.len();
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn define(&mut self, domain: u32, template: Template) -> Result<(), WireError> {
        let map = self.domains.entry(domain).or_default();
        if let Some(existing) = map.get(&template.id) {
            if existing.template == template {
                return Ok(()); // a refresh: keep the compiled plan
            }
        } else if self.template_count >= self.options.max_templates {
            return Err(WireError::Template {
                offset: 0,
                reason: format!(
                    "template {} refused: this session already holds {} templates (the limit)",
                    template.id, self.options.max_templates
                ),
            });
        } else {
            self.template_count += 1;
        }
        let plan = Arc::new(Plan::compile(template, &self.registry));
        Arc::make_mut(map).insert(plan.template.id, plan);
        Ok(())
    }

    /// Removes one template whatever the withdrawal policy: for expiry (UDP template lifetime)
    /// and for invalidations from elsewhere.
    pub fn forget(&mut self, domain: u32, kind: TemplateKind, id: u16) {
        if let Some(map) = self.domains.get_mut(&domain)
            && map.get(&id).is_some_and(|p| p.template.kind == kind)
        {
            Arc::make_mut(map).remove(&id);
            self.template_count -= 1;
        }
    }

    /// Every template this decoder holds, as (domain, template), for sharing or display.
    pub fn all_templates(&self) -> impl Iterator<Item = (u32, &Template)> {
        self.domains
            .iter()
            .flat_map(|(d, m)| m.values().map(move |p| (*d, &p.template)))
    }

    /// Drops every template of `kind` in every domain.
    pub fn clear(&mut self, kind: Option<TemplateKind>) {
        for map in self.domains.values_mut() {
            Arc::make_mut(map).retain(|_, p| kind.is_some_and(|k| p.template.kind != k));
        }
        self.template_count = self.domains.values().map(|m| m.len()).sum();
    }
}
