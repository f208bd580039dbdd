//! The field transforms of a stream (`keep`, `drop`, `anonymise`), compiled once per template
//! into a Shape: which fields go out, in order, and which of them are anonymised. Records whose
//! template the shape leaves unchanged pass on without a copy; the others are copied out field by
//! field into a new message buffer and decoded again with the derived template, so the sinks see
//! one kind of input whatever the transforms did.

use super::Records;
use super::cryptopan::CryptoPan;
use crate::wire::batch::decode_records;
use crate::wire::decoder::DecodedMessage;
use crate::wire::plan::{ColumnType, Plan};
use crate::wire::registry::Registry;
use crate::wire::template::{Template, TemplateKind};
use bytes::Bytes;
use rustc_hash::{FxHashMap, FxHashSet};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

/// An element as (PEN, id).
pub type ElementId = (u32, u16);

/// How addresses are made anonymous.
#[derive(Debug, Clone)]
pub enum Method {
    /// Keep the first `v4` / `v6` bits, zero the rest.
    Truncate {
        v4: u8,
        v6: u8,
    },
    CryptoPan(Arc<CryptoPan>),
}

/// Addresses anonymised lately: flows repeat addresses, and Crypto-PAn costs 32 AES blocks per
/// IPv4 address (128 per IPv6 one). Cleared when full, so it stays within its bound.
const CACHE_ENTRIES: usize = 1 << 16;

#[derive(Debug)]
struct Anonymiser {
    method: Method,
    v4: FxHashMap<[u8; 4], [u8; 4]>,
    v6: FxHashMap<[u8; 16], [u8; 16]>,
}

impl Anonymiser {
    fn v4(&mut self, a: [u8; 4]) -> [u8; 4] {
        match &self.method {
            Method::Truncate { v4, .. } => {
                let mask = u32::MAX.checked_shl(32 - *v4 as u32).unwrap_or(0);
                (u32::from_be_bytes(a) & mask).to_be_bytes()
            }
            Method::CryptoPan(c) => {
                if let Some(x) = self.v4.get(&a) {
                    return *x;
                }
                if self.v4.len() >= CACHE_ENTRIES {
                    self.v4.clear();
                }
                let x = c.ipv4(Ipv4Addr::from(a)).octets();
                self.v4.insert(a, x);
                x
            }
        }
    }

    fn v6(&mut self, a: [u8; 16]) -> [u8; 16] {
        match &self.method {
            Method::Truncate { v6, .. } => {
                let mask = u128::MAX.checked_shl(128 - *v6 as u32).unwrap_or(0);
                (u128::from_be_bytes(a) & mask).to_be_bytes()
            }
            Method::CryptoPan(c) => {
                if let Some(x) = self.v6.get(&a) {
                    return *x;
                }
                if self.v6.len() >= CACHE_ENTRIES {
                    self.v6.clear();
                }
                let x = c.ipv6(Ipv6Addr::from(a)).octets();
                self.v6.insert(a, x);
                x
            }
        }
    }
}

/// One field transform, in the order the stream lists them.
#[derive(Debug, Clone)]
pub enum FieldStep {
    Keep(Vec<ElementId>),
    Drop(Vec<ElementId>),
    Anonymise {
        method: Method,
        fields: Vec<ElementId>,
    },
}

/// What a run of field steps makes of one template.
#[derive(Debug)]
struct Shape {
    /// The derived template's plan; `None` when no field is left.
    plan: Option<Arc<Plan>>,
    /// Per output field: the source field and the anonymiser applied to it (in step order).
    out: Vec<(usize, Vec<usize>)>,
    /// The template goes out as it came.
    identity: bool,
}

/// Templates shaped at most; past it the table is emptied (shapes are cheap to make again).
const MAX_SHAPES: usize = 4096;

/// `keep`, `drop` and `anonymise` steps in a row, applied together.
#[derive(Debug)]
pub struct Shaper {
    steps: Vec<(StepKind, FxHashSet<ElementId>)>,
    anonymisers: Vec<Anonymiser>,
    registry: Arc<Registry>,
    /// By the source plan's address (the `Arc` kept, so the address is not reused).
    shapes: FxHashMap<usize, (Arc<Plan>, Arc<Shape>)>,
    buf: Vec<u8>,
}

#[derive(Debug, Clone, Copy)]
enum StepKind {
    Keep,
    Drop,
    Anonymise(usize),
}

impl Shaper {
    pub fn new(steps: Vec<FieldStep>, registry: Arc<Registry>) -> Shaper {
        let mut anonymisers = Vec::new();
        let steps = steps
            .into_iter()
            .map(|s| match s {
                FieldStep::Keep(v) => (StepKind::Keep, v.into_iter().collect()),
                FieldStep::Drop(v) => (StepKind::Drop, v.into_iter().collect()),
                FieldStep::Anonymise { method, fields } => {
                    anonymisers.push(Anonymiser {
                        method,
                        v4: FxHashMap::default(),
                        v6: FxHashMap::default(),
                    });
                    (
                        StepKind::Anonymise(anonymisers.len() - 1),
                        fields.into_iter().collect(),
                    )
                }
            })
            .collect();
        Shaper {
            steps,
            anonymisers,
            registry,
            shapes: FxHashMap::default(),
            buf: Vec::new(),
        }
    }

    fn shape(&mut self, plan: &Arc<Plan>) -> Arc<Shape> {
        let key = Arc::as_ptr(plan) as usize;
        if let Some((_, s)) = self.shapes.get(&key) {
            return s.clone();
        }
        if self.shapes.len() >= MAX_SHAPES {
            self.shapes.clear();
        }
        let mut out: Vec<(usize, Vec<usize>)> =
            (0..plan.fields.len()).map(|f| (f, vec![])).collect();
        for (kind, set) in &self.steps {
            let id = |f: usize| (plan.fields[f].spec.pen, plan.fields[f].spec.id);
            match kind {
                StepKind::Keep => out.retain(|(f, _)| set.contains(&id(*f))),
                StepKind::Drop => out.retain(|(f, _)| !set.contains(&id(*f))),
                StepKind::Anonymise(a) => {
                    for (f, anons) in &mut out {
                        // Only fields that decoded as addresses: a 16-byte "IPv4" stays as sent.
                        let is_addr =
                            matches!(plan.fields[*f].column, ColumnType::Ipv4 | ColumnType::Ipv6);
                        if is_addr && set.contains(&id(*f)) {
                            anons.push(*a);
                        }
                    }
                }
            }
        }
        let identity = out.len() == plan.fields.len() && out.iter().all(|(_, a)| a.is_empty());
        let derived = if identity {
            Some(plan.clone())
        } else if out.is_empty() {
            None
        } else {
            let t = &plan.template;
            let scope = out
                .iter()
                .filter(|(f, _)| *f < t.scope_field_count as usize)
                .count() as u16;
            // An options template that lost every scope field describes plain data now.
            let kind = if t.kind == TemplateKind::Options && scope > 0 {
                TemplateKind::Options
            } else {
                TemplateKind::Data
            };
            let template = Template {
                id: t.id,
                kind,
                scope_field_count: if kind == TemplateKind::Options {
                    scope
                } else {
                    0
                },
                fields: out.iter().map(|(f, _)| plan.fields[*f].spec).collect(),
                dialect: t.dialect,
            };
            (template.min_record_len() > 0)
                .then(|| Arc::new(Plan::compile(template, &self.registry)))
        };
        let shape = Arc::new(Shape {
            plan: derived,
            out,
            identity,
        });
        self.shapes.insert(key, (plan.clone(), shape.clone()));
        shape
    }

    /// The records as the steps leave them; `None` when no record keeps a field.
    pub fn apply(&mut self, recs: Records) -> Option<Records> {
        let shapes: Vec<Arc<Shape>> = recs
            .msg
            .batches
            .iter()
            .map(|b| self.shape(&b.plan))
            .collect();
        if shapes.iter().all(|s| s.identity) {
            return Some(recs);
        }
        let msg = &recs.msg;
        let src = &msg.buf[..];
        self.buf.clear();
        // (derived plan, start, end, records) per batch that has records left.
        let mut spans = Vec::new();
        for ((b, sel), shape) in msg.batches.iter().zip(&recs.selected).zip(&shapes) {
            let Some(plan) = &shape.plan else { continue };
            let start = self.buf.len();
            let rows: Box<dyn Iterator<Item = usize>> = match sel {
                Some(m) => Box::new(m.ones()),
                None => Box::new(0..b.len()),
            };
            let mut n = 0;
            for r in rows {
                n += 1;
                for (f, anons) in &shape.out {
                    let span = b.field_span(r, *f);
                    let value = &src[span.range()];
                    if b.plan.fields[*f].spec.is_varlen() {
                        if value.len() < 255 {
                            self.buf.push(value.len() as u8);
                        } else {
                            self.buf.push(255);
                            self.buf
                                .extend_from_slice(&(value.len() as u16).to_be_bytes());
                        }
                        self.buf.extend_from_slice(value);
                    } else if anons.is_empty() {
                        self.buf.extend_from_slice(value);
                    } else if let Ok(a) = <[u8; 4]>::try_from(value) {
                        let a = anons.iter().fold(a, |a, &k| self.anonymisers[k].v4(a));
                        self.buf.extend_from_slice(&a);
                    } else if let Ok(a) = <[u8; 16]>::try_from(value) {
                        let a = anons.iter().fold(a, |a, &k| self.anonymisers[k].v6(a));
                        self.buf.extend_from_slice(&a);
                    } else {
                        self.buf.extend_from_slice(value);
                    }
                }
            }
            if n > 0 {
                spans.push((plan.clone(), start, self.buf.len(), n));
            }
        }
        if spans.is_empty() {
            return None;
        }
        let buf = Bytes::copy_from_slice(&self.buf);
        let mut batches = Vec::with_capacity(spans.len());
        for (plan, start, end, n) in spans {
            // The bytes were laid out from a template this shaper made: they decode.
            match decode_records(&plan, &buf, start, end, start) {
                Ok(b) if b.len() == n => batches.push(b),
                _ => debug_assert!(false, "a shaped batch must decode as written"),
            }
        }
        let selected = vec![None; batches.len()];
        Some(Records {
            msg: Arc::new(DecodedMessage {
                header: msg.header,
                buf,
                templates: msg.templates.clone(),
                batches,
                events: Vec::new(),
                missing: Vec::new(),
            }),
            selected,
            ..recs
        })
    }
}

#[cfg(test)]
mod tests;
