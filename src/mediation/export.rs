//! The mediator's Exporting Process (RFC 7011 as RFC 6183's Mediator uses it): records of many
//! exporters and templates become one IPFIX stream with templates of its own. Each distinct
//! template (its kind, scope count and fields) gets one id per Observation Domain, so exporters
//! that send the same fields share it; records are copied as they were decoded (their bytes,
//! variable-length prefixes included), never re-encoded.
//!
//! Sequence numbers count the Data Records sent in the current Transport Session per domain
//! (RFC 7011 section 3.1): a new session (a reconnect) starts them at 0 and sends every
//! template again before the first record that uses it.

use super::Records;
use crate::wire::encode::MessageBuilder;
use crate::wire::error::WireError;
use crate::wire::plan::{ColumnType, Plan};
use crate::wire::template::{Dialect, FieldSpec, Template, TemplateKind};
use rustc_hash::FxHashMap;

/// Templates one output domain holds at most; records of further shapes are skipped (counted).
pub const MAX_TEMPLATES_PER_DOMAIN: usize = 4096;
/// Output domains at most (each holds a message builder and its templates).
pub const MAX_DOMAINS: usize = 1024;

/// A template's shape: what makes two templates the same for the output.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Shape {
    kind: TemplateKind,
    scope: u16,
    fields: Vec<FieldSpec>,
}

#[derive(Debug)]
struct OutTemplate {
    template: Template,
    /// Sent in the current Transport Session.
    sent: bool,
}

#[derive(Debug)]
struct DomainOut {
    domain: u32,
    builder: MessageBuilder,
    ids: FxHashMap<Shape, usize>,
    templates: Vec<OutTemplate>,
}

/// What one call skipped, and why (the stream counts them as filtered).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Skipped {
    /// NetFlow v9 options records: their scope fields are not Information Elements.
    pub v9_options: u64,
    /// Records with subTemplateLists, whose inner templates belong to the exporter.
    pub sub_templates: u64,
    /// Past the template or domain bounds, or larger than a message.
    pub over_bounds: u64,
}

impl Skipped {
    pub fn total(&self) -> u64 {
        self.v9_options + self.sub_templates + self.over_bounds
    }
}

#[derive(Debug)]
pub struct Reexporter {
    max_len: usize,
    domains: FxHashMap<u32, DomainOut>,
}

impl Reexporter {
    /// `max_len`: the largest message (65535 for TCP; the path MTU less headers for UDP).
    pub fn new(max_len: usize) -> Reexporter {
        Reexporter {
            max_len,
            domains: FxHashMap::default(),
        }
    }

    /// A new Transport Session: sequence numbers from 0, every template sent again.
    pub fn new_session(&mut self) {
        for d in self.domains.values_mut() {
            d.builder = MessageBuilder::new(d.domain, self.max_len);
            d.templates.iter_mut().for_each(|t| t.sent = false);
        }
    }

    /// Sends every template again in the current session (UDP's periodic refresh).
    pub fn refresh_templates(&mut self) -> Result<(), WireError> {
        for d in self.domains.values_mut() {
            for t in &mut d.templates {
                d.builder.add_template(&t.template)?;
                t.sent = true;
            }
        }
        Ok(())
    }

    /// Adds the records of `recs` (export time `now_secs`); returns what was skipped.
    pub fn add(&mut self, recs: &Records, now_secs: u32) -> Skipped {
        let mut skipped = Skipped::default();
        let msg = &recs.msg;
        if !self.domains.contains_key(&recs.domain) && self.domains.len() >= MAX_DOMAINS {
            skipped.over_bounds += recs.count() as u64;
            return skipped;
        }
        let max_len = self.max_len;
        let d = self
            .domains
            .entry(recs.domain)
            .or_insert_with(|| DomainOut {
                domain: recs.domain,
                builder: MessageBuilder::new(recs.domain, max_len),
                ids: FxHashMap::default(),
                templates: Vec::new(),
            });
        d.builder.set_export_time(now_secs);
        for (k, b) in msg.batches.iter().enumerate() {
            let n = recs.rows(k).count() as u64;
            if n == 0 {
                continue;
            }
            let t = &b.plan.template;
            if t.dialect == Dialect::NetflowV9 && t.kind == TemplateKind::Options {
                skipped.v9_options += n;
                continue;
            }
            if has_sub_templates(&b.plan) {
                skipped.sub_templates += n;
                continue;
            }
            let Some(slot) = d.template_for(t) else {
                skipped.over_bounds += n;
                continue;
            };
            let out = &mut d.templates[slot];
            if !out.sent {
                if d.builder.add_template(&out.template).is_err() {
                    skipped.over_bounds += n;
                    continue;
                }
                out.sent = true;
            }
            let id = out.template.id;
            for r in recs.rows(k) {
                let rec = &msg.buf[b.record_span(r).range()];
                if d.builder.add_raw_record(id, rec).is_err() {
                    skipped.over_bounds += 1;
                }
            }
        }
        skipped
    }

    /// Adds every record of `recs` and appends the whole messages they make (all of them: the
    /// messages being built are finished) to `out`; returns the records skipped.
    pub fn encode_into(&mut self, recs: &[Records], now_secs: u32, out: &mut Vec<u8>) -> u64 {
        let skipped = recs.iter().map(|r| self.add(r, now_secs).total()).sum();
        self.flush();
        for m in self.take_ready() {
            out.extend_from_slice(&m);
        }
        skipped
    }

    /// Finishes the messages being built.
    pub fn flush(&mut self) {
        for d in self.domains.values_mut() {
            d.builder.flush();
        }
    }

    /// Finished messages, domain by domain, oldest first.
    pub fn take_ready(&mut self) -> Vec<Vec<u8>> {
        let mut keys: Vec<u32> = self.domains.keys().copied().collect();
        keys.sort_unstable();
        keys.iter()
            .flat_map(|k| {
                self.domains
                    .get_mut(k)
                    .map(|d| d.builder.take_ready())
                    .unwrap_or_default()
            })
            .collect()
    }
}

impl DomainOut {
    /// This template's place among the domain's output templates, made on first sight.
    fn template_for(&mut self, t: &Template) -> Option<usize> {
        let shape = Shape {
            kind: t.kind,
            scope: t.scope_field_count,
            fields: t.fields.clone(),
        };
        if let Some(&slot) = self.ids.get(&shape) {
            return Some(slot);
        }
        if self.templates.len() >= MAX_TEMPLATES_PER_DOMAIN {
            return None;
        }
        let id = 256 + self.templates.len() as u16;
        let template = Template {
            id,
            kind: t.kind,
            scope_field_count: t.scope_field_count,
            fields: t.fields.clone(),
            dialect: Dialect::Ipfix,
        };
        self.templates.push(OutTemplate {
            template,
            sent: false,
        });
        self.ids.insert(shape, self.templates.len() - 1);
        Some(self.templates.len() - 1)
    }
}

fn has_sub_templates(plan: &Plan) -> bool {
    plan.fields.iter().any(|f| {
        matches!(
            f.column,
            ColumnType::SubTemplateList | ColumnType::SubTemplateMultiList
        )
    })
}

#[cfg(test)]
mod tests;
