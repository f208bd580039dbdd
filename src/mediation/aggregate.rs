//! Intermediate flow aggregation in the manner of RFC 7015: records that agree on the key
//! elements within one time window become one record with the key, the sums of their delta
//! counters, the earliest start, the latest end, and how many flows were merged
//! (`deltaFlowCount`). Windows are aligned to multiples of their length since the Unix epoch
//! (the clock is the caller's), so nodes flush the same windows.
//!
//! Records are aggregated per exporter address and Observation Domain, as RFC 7015 section 5
//! keeps flows of different Observation Domains apart; a key element a record lacks is a key
//! of its own (absent), so IPv6 flows aggregate by the keys they have when IPv4 ones are keyed
//! by `sourceIPv4Address`. The table is bounded in bytes: when full it is flushed early, and
//! the early flushes are counted.

use super::{Records, Source};
use crate::wire::batch::{Batch, Column, decode_records};
use crate::wire::decoder::DecodedMessage;
use crate::wire::header::MessageHeader;
use crate::wire::model::{DataType, Semantics};
use crate::wire::ndjson::ntp_to_unix;
use crate::wire::plan::Plan;
use crate::wire::registry::Registry;
use crate::wire::template::{FieldSpec, Template, VARLEN};
use bytes::Bytes;
use rustc_hash::FxHashMap;
use std::net::IpAddr;
use std::sync::Arc;

use super::shape::ElementId;

/// Key elements at most (the presence of each is a bit of a u64).
pub const MAX_KEYS: usize = 32;

const DELTA_FLOW_COUNT: ElementId = (0, 3);
const FLOW_START_MS: ElementId = (0, 152);
const FLOW_END_MS: ElementId = (0, 153);

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct GroupKey {
    exporter: IpAddr,
    domain: u32,
    /// Bit k: key element k was in the record.
    present: u64,
    /// The present keys' values, each as a 2-byte length and the bytes.
    values: Box<[u8]>,
}

#[derive(Debug)]
struct Group {
    source: Arc<Source>,
    /// Output field specs of the present keys, in key order.
    key_specs: Vec<FieldSpec>,
    counters: Vec<(ElementId, u64)>,
    start_ms: Option<u64>,
    end_ms: Option<u64>,
    flows: u64,
}

/// Figures an aggregator keeps for the stream's state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AggregateStats {
    pub groups: usize,
    pub bytes: usize,
    pub early_flushes: u64,
}

#[derive(Debug)]
pub struct Aggregator {
    window_ms: u64,
    keys: Vec<ElementId>,
    max_bytes: usize,
    registry: Arc<Registry>,
    groups: FxHashMap<GroupKey, Group>,
    /// Start of the window the table holds.
    window: Option<u64>,
    bytes: usize,
    early_flushes: u64,
}

/// Bytes a group costs beyond its key's values: the map entry, the group, a few counters.
const GROUP_OVERHEAD: usize = 192;

impl Aggregator {
    pub fn new(
        window_secs: u32,
        keys: Vec<ElementId>,
        max_bytes: usize,
        registry: Arc<Registry>,
    ) -> Aggregator {
        Aggregator {
            window_ms: window_secs.max(1) as u64 * 1000,
            keys,
            max_bytes,
            registry,
            groups: FxHashMap::default(),
            window: None,
            bytes: 0,
            early_flushes: 0,
        }
    }

    pub fn stats(&self) -> AggregateStats {
        AggregateStats {
            groups: self.groups.len(),
            bytes: self.bytes,
            early_flushes: self.early_flushes,
        }
    }

    fn window_of(&self, now_ms: u64) -> u64 {
        now_ms - now_ms % self.window_ms
    }

    /// When the current window ends (the caller flushes then); `None` when nothing is held.
    pub fn due_ms(&self) -> Option<u64> {
        self.window
            .filter(|_| !self.groups.is_empty())
            .map(|w| w + self.window_ms)
    }

    /// Adds `recs` (arriving at `now_ms`); returns what a window that ended, or a full table,
    /// pushed out first.
    pub fn push(&mut self, recs: &Records, now_ms: u64) -> Vec<Records> {
        let mut out = self.flush_due(now_ms);
        if self.window.is_none() {
            self.window = Some(self.window_of(now_ms));
        }
        let msg = &recs.msg;
        for (k, b) in msg.batches.iter().enumerate() {
            let roles = self.roles(&b.plan);
            for r in recs.rows(k) {
                if self.bytes >= self.max_bytes {
                    self.early_flushes += 1;
                    let end = self.window.unwrap_or(0) + self.window_ms;
                    out.extend(self.drain(end));
                    self.window = Some(self.window_of(now_ms));
                }
                self.add(recs, b, &roles, r);
            }
        }
        out
    }

    /// Flushes the window if it ended by `now_ms`.
    pub fn flush_due(&mut self, now_ms: u64) -> Vec<Records> {
        match self.window {
            Some(w) if now_ms >= w + self.window_ms => {
                self.window = None;
                self.drain(w + self.window_ms)
            }
            _ => Vec::new(),
        }
    }

    /// Everything held, now (shutdown).
    pub fn flush_all(&mut self) -> Vec<Records> {
        let end = self.window.take().map_or(0, |w| w + self.window_ms);
        self.drain(end)
    }

    /// What each field of `plan` is to the aggregation.
    fn roles(&self, plan: &Plan) -> Vec<Role> {
        plan.fields
            .iter()
            .map(|f| {
                let id = (f.spec.pen, f.spec.id);
                if let Some(k) = self.keys.iter().position(|&x| x == id) {
                    return Role::Key(k);
                }
                if id == DELTA_FLOW_COUNT {
                    return Role::Flows;
                }
                match (f.spec.pen, f.spec.id) {
                    (0, 150 | 152 | 154 | 156) => return Role::Start,
                    (0, 151 | 153 | 155 | 157) => return Role::End,
                    (0, 22) => return Role::StartUptime,
                    (0, 21) => return Role::EndUptime,
                    _ => {}
                }
                let unsigned = matches!(
                    f.element.data_type,
                    DataType::Unsigned8
                        | DataType::Unsigned16
                        | DataType::Unsigned32
                        | DataType::Unsigned64
                );
                if unsigned && f.element.semantics == Semantics::DeltaCounter {
                    Role::Counter(id)
                } else {
                    Role::Other
                }
            })
            .collect()
    }

    fn add(&mut self, recs: &Records, b: &Batch, roles: &[Role], r: usize) {
        let buf = &recs.msg.buf[..];
        let mut present = 0u64;
        let mut values: Vec<(usize, Vec<u8>, FieldSpec)> = Vec::new();
        for (f, role) in roles.iter().enumerate() {
            if let Role::Key(k) = role
                && present & (1 << k) == 0
            {
                present |= 1 << k;
                values.push((*k, key_bytes(b, buf, r, f), key_spec(b, f)));
            }
        }
        values.sort_by_key(|(k, _, _)| *k);
        let mut packed = Vec::new();
        for (_, v, _) in &values {
            packed.extend_from_slice(&(v.len() as u16).to_be_bytes());
            packed.extend_from_slice(v);
        }
        let key = GroupKey {
            exporter: recs.source.addr,
            domain: recs.domain,
            present,
            values: packed.into_boxed_slice(),
        };
        let header = &recs.msg.header;
        let g = match self.groups.get_mut(&key) {
            Some(g) => g,
            None => {
                self.bytes += key.values.len() + GROUP_OVERHEAD;
                let g = Group {
                    source: recs.source.clone(),
                    key_specs: values.iter().map(|(_, _, s)| *s).collect(),
                    counters: Vec::new(),
                    start_ms: None,
                    end_ms: None,
                    flows: 0,
                };
                self.groups.entry(key).or_insert(g)
            }
        };
        let mut flows = None;
        for (f, role) in roles.iter().enumerate() {
            match role {
                Role::Counter(id) => {
                    let v = unsigned(b, r, f);
                    match g.counters.iter_mut().find(|(c, _)| c == id) {
                        Some((_, sum)) => *sum = sum.saturating_add(v),
                        None => {
                            self.bytes += 16;
                            g.counters.push((*id, v));
                        }
                    }
                }
                Role::Flows => flows = Some(unsigned(b, r, f)),
                Role::Start | Role::StartUptime => {
                    if let Some(t) = time_ms(b, r, f, header) {
                        g.start_ms = Some(g.start_ms.map_or(t, |s| s.min(t)));
                    }
                }
                Role::End | Role::EndUptime => {
                    if let Some(t) = time_ms(b, r, f, header) {
                        g.end_ms = Some(g.end_ms.map_or(t, |e| e.max(t)));
                    }
                }
                Role::Key(_) | Role::Other => {}
            }
        }
        g.flows = g.flows.saturating_add(flows.unwrap_or(1));
    }

    /// The held groups as records: one message per exporter and domain, one template per set
    /// of fields, in a stable order. `export_ms` is the header's export time.
    fn drain(&mut self, export_ms: u64) -> Vec<Records> {
        let mut groups: Vec<(GroupKey, Group)> = self.groups.drain().collect();
        self.bytes = 0;
        groups.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out = Vec::new();
        let mut i = 0;
        while i < groups.len() {
            let (exp, dom) = (groups[i].0.exporter, groups[i].0.domain);
            let j = groups[i..]
                .iter()
                .position(|(k, _)| (k.exporter, k.domain) != (exp, dom))
                .map_or(groups.len(), |n| i + n);
            if let Some(r) = self.message(&groups[i..j], export_ms) {
                out.push(r);
            }
            i = j;
        }
        out
    }

    fn message(&self, groups: &[(GroupKey, Group)], export_ms: u64) -> Option<Records> {
        let (first_key, first) = groups.first()?;
        // One template per distinct field list, numbered from 256 in order of appearance.
        let mut templates: Vec<(Vec<FieldSpec>, Vec<usize>)> = Vec::new();
        for (n, (_, g)) in groups.iter().enumerate() {
            let specs = output_specs(g);
            match templates.iter_mut().find(|(s, _)| *s == specs) {
                Some((_, members)) => members.push(n),
                None => templates.push((specs, vec![n])),
            }
        }
        let mut buf = Vec::new();
        let mut laid = Vec::new();
        for (t, (specs, members)) in templates.iter().enumerate() {
            let template = Template::data(256 + t as u16, specs.clone());
            let plan = Arc::new(Plan::compile(template, &self.registry));
            let start = buf.len();
            for &n in members {
                let (key, g) = &groups[n];
                write_group(&mut buf, key, g);
            }
            laid.push((plan, start, buf.len(), members.len()));
        }
        let buf = Bytes::from(buf);
        let batches: Vec<Batch> = laid
            .into_iter()
            .filter_map(|(plan, start, end, n)| {
                let b = decode_records(&plan, &buf, start, end, start).ok()?;
                debug_assert_eq!(b.len(), n, "an aggregate batch must decode as written");
                Some(b)
            })
            .collect();
        let header = MessageHeader {
            version: 10,
            length: 0,
            export_time: (export_ms / 1000) as u32,
            sequence: 0,
            observation_domain: first_key.domain,
            sys_uptime_ms: None,
            v9_count: None,
        };
        let msg = DecodedMessage {
            header,
            buf,
            templates: Arc::default(),
            batches,
            events: Vec::new(),
            missing: Vec::new(),
        };
        let mut r = Records::all(Arc::new(msg), first.source.clone());
        r.domain = first_key.domain;
        Some(r)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Role {
    Key(usize),
    Counter(ElementId),
    Flows,
    Start,
    End,
    StartUptime,
    EndUptime,
    Other,
}

/// The fields an aggregate record carries: its keys, its counters (as unsigned64), then
/// flowStartMilliseconds and flowEndMilliseconds when known, and deltaFlowCount.
fn output_specs(g: &Group) -> Vec<FieldSpec> {
    let mut specs = g.key_specs.clone();
    let mut counters: Vec<ElementId> = g.counters.iter().map(|(id, _)| *id).collect();
    counters.sort_unstable();
    specs.extend(counters.iter().map(|&(pen, id)| FieldSpec::new(id, pen, 8)));
    if g.start_ms.is_some() {
        specs.push(FieldSpec::new(FLOW_START_MS.1, 0, 8));
    }
    if g.end_ms.is_some() {
        specs.push(FieldSpec::new(FLOW_END_MS.1, 0, 8));
    }
    specs.push(FieldSpec::new(DELTA_FLOW_COUNT.1, 0, 8));
    specs
}

fn write_group(buf: &mut Vec<u8>, key: &GroupKey, g: &Group) {
    let mut v = &key.values[..];
    for spec in &g.key_specs {
        let n = u16::from_be_bytes([v[0], v[1]]) as usize;
        let bytes = &v[2..2 + n];
        v = &v[2 + n..];
        if spec.is_varlen() {
            if n < 255 {
                buf.push(n as u8);
            } else {
                buf.push(255);
                buf.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        buf.extend_from_slice(bytes);
    }
    let mut counters = g.counters.clone();
    counters.sort_unstable_by_key(|(id, _)| *id);
    for (_, sum) in counters {
        buf.extend_from_slice(&sum.to_be_bytes());
    }
    for t in [g.start_ms, g.end_ms].into_iter().flatten() {
        buf.extend_from_slice(&t.to_be_bytes());
    }
    buf.extend_from_slice(&g.flows.to_be_bytes());
}

/// A key field's value in a canonical form: integers at their type's full size (exporters send
/// reduced sizes), variable data as it came, capped so one value cannot take the length field
/// past its 16 bits.
fn key_bytes(b: &Batch, buf: &[u8], r: usize, f: usize) -> Vec<u8> {
    let size = b.plan.fields[f].element.data_type.size() as usize;
    match b.column(f) {
        Column::U8(c) => c[r].to_be_bytes().to_vec(),
        Column::U16(c) => (c[r] as u64).to_be_bytes()[8 - size.max(2)..].to_vec(),
        Column::U32(c) => (c[r] as u64).to_be_bytes()[8 - size.max(4)..].to_vec(),
        Column::U64(c) => c[r].to_be_bytes().to_vec(),
        Column::I8(c) => c[r].to_be_bytes().to_vec(),
        Column::I16(c) => (c[r] as i64).to_be_bytes()[8 - size.max(2)..].to_vec(),
        Column::I32(c) => (c[r] as i64).to_be_bytes()[8 - size.max(4)..].to_vec(),
        Column::I64(c) => c[r].to_be_bytes().to_vec(),
        Column::F32(c) => c[r].to_be_bytes().to_vec(),
        Column::F64(c) => c[r].to_be_bytes().to_vec(),
        Column::Bool(c) => vec![c[r]],
        Column::Mac(c) => c[r].to_vec(),
        Column::Ipv4(c) => c[r].to_vec(),
        Column::Ipv6(c) => c[r].to_vec(),
        Column::DateTimeSeconds(c) => c[r].to_be_bytes().to_vec(),
        Column::DateTimeMilliseconds(c)
        | Column::DateTimeMicroseconds(c)
        | Column::DateTimeNanoseconds(c) => c[r].to_be_bytes().to_vec(),
        Column::Spans(c) => {
            let s = &buf[c[r].range()];
            s[..s.len().min(u16::MAX as usize)].to_vec()
        }
    }
}

/// The output spec matching [`key_bytes`].
fn key_spec(b: &Batch, f: usize) -> FieldSpec {
    let pf = &b.plan.fields[f];
    let size = pf.element.data_type.size();
    let len = match b.column(f) {
        Column::U8(_) | Column::I8(_) | Column::Bool(_) => 1,
        Column::U16(_) | Column::I16(_) => size.max(2),
        Column::U32(_) | Column::I32(_) => size.max(4),
        Column::U64(_) | Column::I64(_) | Column::F64(_) => 8,
        Column::F32(_) | Column::DateTimeSeconds(_) | Column::Ipv4(_) => 4,
        Column::Mac(_) => 6,
        Column::Ipv6(_) => 16,
        Column::DateTimeMilliseconds(_)
        | Column::DateTimeMicroseconds(_)
        | Column::DateTimeNanoseconds(_) => 8,
        Column::Spans(_) => VARLEN,
    };
    FieldSpec::new(pf.spec.id, pf.spec.pen, len)
}

fn unsigned(b: &Batch, r: usize, f: usize) -> u64 {
    match b.column(f) {
        Column::U8(c) => c[r] as u64,
        Column::U16(c) => c[r] as u64,
        Column::U32(c) => c[r] as u64,
        Column::U64(c) => c[r],
        _ => 0,
    }
}

/// A flow time in Unix milliseconds. System-uptime times need the header's sysUptime and
/// export time (NetFlow v9), as RFC 3954 defines them.
fn time_ms(b: &Batch, r: usize, f: usize, h: &MessageHeader) -> Option<u64> {
    match b.column(f) {
        Column::DateTimeSeconds(c) => Some(c[r] as u64 * 1000),
        Column::DateTimeMilliseconds(c) => Some(c[r]),
        Column::DateTimeMicroseconds(c) | Column::DateTimeNanoseconds(c) => {
            let (s, n) = ntp_to_unix(c[r]);
            u64::try_from(s)
                .ok()
                .map(|s| s * 1000 + n as u64 / 1_000_000)
        }
        Column::U32(c) => {
            let up = h.sys_uptime_ms? as i64;
            let at = h.export_time as i64 * 1000 - (up - c[r] as i64);
            u64::try_from(at).ok()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests;
