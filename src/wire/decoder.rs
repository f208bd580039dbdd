//! Message decoding with template state: one [`Decoder`] per template scope the caller chooses
//! (a TCP transport session, a UDP exporter, a file). Within it, templates are kept per
//! Observation Domain as RFC 7011 requires.
//!
//! Each domain's template map sits behind an `Arc` that is copied on write, so a decoded message
//! carries a cheap snapshot of the templates it was decoded with (needed to decode
//! subTemplateLists later, after the decoder has moved on).

use super::batch::{Batch, decode_records};
use super::budget::ByteBudget;
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

/// Fields a template may have unless the caller says otherwise: far above what exporters send
/// (tens of fields), far below the ~16,000 a 64 KiB message can carry.
pub const MAX_TEMPLATE_FIELDS: usize = 512;

/// The templates of one Observation Domain, by template id.
pub type TemplateMap = FxHashMap<u16, Arc<Plan>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecoderOptions {
    /// Apply Template Withdrawals. RFC 7011 section 8.4: a UDP collector ignores them.
    pub honour_withdrawals: bool,
    /// Upper bound on templates held across all domains of this decoder.
    pub max_templates: usize,
    /// Fields one template may have: the format allows ~16,000, real exporters use tens.
    pub max_template_fields: usize,
}

impl Default for DecoderOptions {
    fn default() -> Self {
        DecoderOptions {
            honour_withdrawals: true,
            max_templates: 16_384,
            max_template_fields: MAX_TEMPLATE_FIELDS,
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

/// Not `Clone`: the bytes it holds are charged to its budget, and given back when it is dropped.
#[derive(Debug)]
pub struct Decoder {
    registry: Arc<Registry>,
    options: DecoderOptions,
    domains: FxHashMap<u32, Arc<TemplateMap>>,
    template_count: usize,
    /// Where compiled templates are charged (session, exporter, collector); `None`: unbounded
    /// but for `max_templates` and `max_template_fields` (files, trusted input).
    budget: Option<Arc<ByteBudget>>,
    /// Bytes charged to `budget` for the templates held now.
    held_bytes: usize,
    /// Templates redefined differently without a withdrawal where withdrawals apply (TCP):
    /// RFC 7011 section 8.1 calls that a malfunction of the exporter.
    redefinitions: u64,
    /// NetFlow v5's fixed record layout, compiled on the first v5 packet (most sessions never
    /// see one, and each idle session should cost little). Not in any domain's template map: it
    /// is no exporter's template, so it is neither counted, shared nor expired.
    v5_plan: Option<Arc<Plan>>,
}

impl Drop for Decoder {
    fn drop(&mut self) {
        if let Some(b) = &self.budget {
            b.give_back(self.held_bytes);
        }
    }
}

impl Decoder {
    pub fn new(registry: Arc<Registry>, options: DecoderOptions) -> Decoder {
        Decoder {
            registry,
            options,
            domains: FxHashMap::default(),
            template_count: 0,
            budget: None,
            held_bytes: 0,
            redefinitions: 0,
            v5_plan: None,
        }
    }

    /// Charges every compiled template to `budget`: a template that does not fit is refused.
    pub fn with_budget(mut self, budget: Arc<ByteBudget>) -> Decoder {
        self.set_budget(budget);
        self
    }

    /// As `with_budget`. What is held already moves to the new budget whatever its limit (it is
    /// held; the budget must count it, or giving it back later would free others' bytes).
    pub fn set_budget(&mut self, budget: Arc<ByteBudget>) {
        if let Some(old) = self.budget.take() {
            old.give_back(self.held_bytes);
        }
        budget.take_anyway(self.held_bytes);
        self.budget = Some(budget);
    }

    /// Differing redefinitions seen where withdrawals apply (RFC 7011 8.1); they are applied.
    pub fn redefinitions(&self) -> u64 {
        self.redefinitions
    }

    /// Bytes the templates held now are charged (whether or not there is a budget).
    pub fn held_bytes(&self) -> usize {
        self.held_bytes
    }

    fn release(&mut self, plan: &Plan) {
        let n = Plan::cost(&plan.template);
        self.held_bytes = self.held_bytes.saturating_sub(n);
        if let Some(b) = &self.budget {
            b.give_back(n);
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
            let registry = &self.registry;
            let plan = self.v5_plan.get_or_insert_with(|| {
                Arc::new(Plan::compile(super::netflow_v5::template(), registry))
            });
            // parse_header checked that the records fill the packet exactly.
            let batch = decode_records(
                plan,
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
                self.forget(domain, *kind, *id);
                Ok(())
            }
            TemplateEvent::WithdrawAll { kind } if self.options.honour_withdrawals => {
                let gone: Vec<u16> = self.domains.get(&domain).map_or_else(Vec::new, |m| {
                    m.iter()
                        .filter(|(_, p)| p.template.kind == *kind)
                        .map(|(id, _)| *id)
                        .collect()
                });
                for id in gone {
                    self.forget(domain, *kind, id);
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn define(&mut self, domain: u32, template: Template) -> Result<(), WireError> {
        let refused = |reason: String| WireError::TemplateRefused {
            template_id: template.id,
            reason,
        };
        if template.fields.len() > self.options.max_template_fields {
            return Err(refused(format!(
                "{} fields, more than the {} allowed",
                template.fields.len(),
                self.options.max_template_fields
            )));
        }
        let existing = self
            .domains
            .get(&domain)
            .and_then(|m| m.get(&template.id))
            .cloned();
        match &existing {
            Some(p) if p.template == template => return Ok(()), // a refresh: keep the plan
            Some(_) => {}
            None if self.template_count >= self.options.max_templates => {
                return Err(refused(format!(
                    "this session already holds {} templates (the limit)",
                    self.options.max_templates
                )));
            }
            None => {}
        }
        // Charge the new plan before giving back the old one: a redefinition that does not fit
        // leaves the old template in place, as a refused definition would.
        let cost = Plan::cost(&template);
        if let Some(b) = &self.budget {
            b.try_take(cost).map_err(|e| refused(e.to_string()))?;
        }
        self.held_bytes += cost;
        match &existing {
            Some(old) => {
                if self.options.honour_withdrawals {
                    self.redefinitions += 1;
                }
                self.release(old)
            }
            None => self.template_count += 1,
        }
        let plan = Arc::new(Plan::compile(template, &self.registry));
        let map = self.domains.entry(domain).or_default();
        Arc::make_mut(map).insert(plan.template.id, plan);
        Ok(())
    }

    /// Removes one template whatever the withdrawal policy: for expiry (UDP template lifetime)
    /// and for invalidations from elsewhere.
    pub fn forget(&mut self, domain: u32, kind: TemplateKind, id: u16) {
        if let Some(map) = self.domains.get_mut(&domain)
            && map.get(&id).is_some_and(|p| p.template.kind == kind)
            && let Some(p) = Arc::make_mut(map).remove(&id)
        {
            // An empty domain goes too: define-then-withdraw across many domains must not
            // leave a map per domain behind that no budget pays for.
            if map.is_empty() {
                self.domains.remove(&domain);
            }
            self.template_count -= 1;
            self.release(&p);
        }
    }

    /// Observation Domains that hold at least one template.
    pub fn domain_count(&self) -> usize {
        self.domains.len()
    }

    pub fn has_domain(&self, domain: u32) -> bool {
        self.domains.contains_key(&domain)
    }

    /// Every template this decoder holds, as (domain, template), for sharing or display.
    pub fn all_templates(&self) -> impl Iterator<Item = (u32, &Template)> {
        self.domains
            .iter()
            .flat_map(|(d, m)| m.values().map(move |p| (*d, &p.template)))
    }

    /// Drops every template of `kind` in every domain.
    pub fn clear(&mut self, kind: Option<TemplateKind>) {
        let gone: Vec<(u32, TemplateKind, u16)> = self
            .domains
            .iter()
            .flat_map(|(d, m)| {
                m.values()
                    .map(move |p| (*d, p.template.kind, p.template.id))
            })
            .filter(|(_, k, _)| kind.is_none_or(|want| *k == want))
            .collect();
        for (d, k, id) in gone {
            self.forget(d, k, id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::FieldSpec;

    #[test]
    fn budgets_are_charged_and_given_back_and_empty_domains_go() {
        let budget = Arc::new(ByteBudget::new("session", 10_000, None));
        let mut d = Decoder::new(Registry::builtin(), DecoderOptions::default())
            .with_budget(budget.clone());
        let t = |id, n: usize| {
            Template::data(
                id,
                (0..n).map(|k| FieldSpec::new(k as u16 + 1, 0, 1)).collect(),
            )
        };
        for domain in 0..3 {
            d.apply(domain, &TemplateEvent::Define(t(256, 4)))
                .expect("fits");
        }
        assert_eq!(budget.used(), 3 * Plan::cost(&t(256, 4)));
        // A redefinition that does not fit leaves the old one, charged as before.
        let big = t(256, 200);
        assert!(matches!(
            d.apply(0, &TemplateEvent::Define(big)),
            Err(WireError::TemplateRefused { .. })
        ));
        assert_eq!(budget.used(), 3 * Plan::cost(&t(256, 4)));
        let options = DecoderOptions {
            max_template_fields: 10,
            ..DecoderOptions::default()
        };
        let mut narrow = Decoder::new(Registry::builtin(), options);
        assert!(narrow.apply(0, &TemplateEvent::Define(t(300, 11))).is_err());
        for domain in 0..3 {
            d.apply(
                domain,
                &TemplateEvent::Withdraw {
                    kind: TemplateKind::Data,
                    id: 256,
                },
            )
            .expect("withdrawn");
        }
        assert_eq!(d.domain_count(), 0, "no empty domain maps left behind");
        assert_eq!(budget.used(), 0);
        d.apply(7, &TemplateEvent::Define(t(256, 4))).expect("fits");
        drop(d);
        assert_eq!(budget.used(), 0, "a dropped decoder gives its bytes back");
    }
}
