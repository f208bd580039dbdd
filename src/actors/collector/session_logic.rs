//! What an exporter session does with each message, without any I/O: decode with the session's
//! templates, account sequence numbers (loss and reordering per Observation Domain), hold Data
//! Sets that arrive before their template (bounded in bytes and time) and decode them when it
//! comes, and expire UDP templates that were not refreshed. Unit-tested without a runtime.

use crate::wire::header::{IPFIX_HEADER_LEN, IPFIX_VERSION, NETFLOW_V9_HEADER_LEN};
use crate::wire::{
    DecodedMessage, Decoder, DecoderOptions, Registry, TemplateEvent, TemplateKind, TemplateMap,
    WireError,
};
use bytes::{BufMut, Bytes, BytesMut};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use crate::store::Transport;

#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    pub max_templates: usize,
    pub max_template_fields: usize,
    pub pending_bytes: usize,
    pub pending_age: Duration,
    /// UDP only: templates not refreshed within this time are forgotten.
    pub template_lifetime: Option<Duration>,
}

/// What a session has seen; the API shows it.
#[derive(
    Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub struct SessionStats {
    /// The tenant that owns the session's exporter (filled in when the stats are asked for).
    pub tenant: String,
    /// The exporter, `address:port` (filled in when the stats are asked for, as are the next
    /// three).
    pub exporter: String,
    /// `tcp`, `udp` or `tls`.
    pub transport: String,
    /// The Observation Domains the session has had messages for, in order.
    pub domains: Vec<u32>,
    /// When the session started, RFC 3339 UTC.
    pub started: String,
    pub messages: u64,
    pub bytes: u64,
    pub data_records: u64,
    pub options_records: u64,
    pub templates: u64,
    pub options_templates: u64,
    pub withdrawals: u64,
    /// Messages that could not be decoded.
    pub errors: u64,
    /// Templates refused at a limit (fields, templates or bytes); each also ends the TCP
    /// session or drops the UDP datagram that carried it.
    pub templates_refused: u64,
    /// IPFIX: data records missing per the sequence numbers. NetFlow v9: packets.
    pub lost: u64,
    /// Messages whose sequence number went backwards (reordered or an exporter restart).
    pub out_of_order: u64,
    /// Data Sets decoded after waiting for their template.
    pub pending_decoded_sets: u64,
    /// Data Sets dropped undecoded, by reason.
    pub dropped_sets_no_template: u64,
    pub dropped_sets_buffer_full: u64,
    /// UDP datagrams dropped because the session's queue was full.
    pub dropped_datagrams: u64,
    pub templates_expired: u64,
    /// TCP: templates redefined differently without a withdrawal (RFC 7011 8.1: a malfunction
    /// of the exporter; applied, logged, counted).
    pub template_redefinitions: u64,
    /// Messages to the TemplateCache this session was not allowed (its share of the cache).
    pub cache_messages_dropped: u64,
    /// Templates this session took from the shared store instead of the exporter.
    pub templates_from_store: u64,
    /// Unix seconds.
    pub first_seen: Option<u64>,
    pub last_seen: Option<u64>,
    pub last_error: Option<String>,
}

/// What one held set costs besides its bytes (its bookkeeping), so that many tiny sets cannot
/// hold far more memory than `pending_bytes` says.
const PENDING_ENTRY_COST: usize = 64;

/// Observation Domains one session may use: each costs state, and an exporter has a few.
pub const MAX_DOMAINS_PER_SESSION: usize = 1024;

struct Pending {
    version: u16,
    domain: u32,
    template_id: u16,
    export_time: u32,
    /// NetFlow only: the exporter's uptime when it sent the set. Its records' sysUptime-based
    /// times (flowStartSysUpTime...) mean nothing without it.
    sys_uptime_ms: Option<u32>,
    set: Bytes,
    since: Instant,
}

impl SessionCore {
    /// The Observation Domains this session has had messages for, in order.
    pub fn domains(&self) -> Vec<u32> {
        let mut d: Vec<u32> = self.expected.keys().copied().collect();
        d.sort_unstable();
        d
    }
}

pub struct SessionCore {
    decoder: Decoder,
    limits: SessionLimits,
    /// Next expected sequence number per domain.
    expected: HashMap<u32, u32>,
    pending: VecDeque<Pending>,
    pending_bytes: usize,
    template_refreshed: HashMap<(u32, u16), (TemplateKind, Instant)>,
    last_expiry: Option<Instant>,
    /// The node's budget for held Data Sets (all sessions together), charged with
    /// `pending_bytes` as it changes.
    pending_budget: Option<Arc<crate::wire::ByteBudget>>,
    pub stats: SessionStats,
}

impl Drop for SessionCore {
    fn drop(&mut self) {
        if let Some(b) = &self.pending_budget {
            b.give_back(self.pending_bytes);
        }
    }
}

impl SessionCore {
    pub fn new(
        registry: Arc<Registry>,
        transport: Transport,
        limits: SessionLimits,
    ) -> SessionCore {
        let options = DecoderOptions {
            honour_withdrawals: transport == Transport::Tcp,
            max_templates: limits.max_templates,
            max_template_fields: limits.max_template_fields,
        };
        SessionCore {
            decoder: Decoder::new(registry, options),
            limits,
            expected: HashMap::new(),
            pending: VecDeque::new(),
            pending_bytes: 0,
            template_refreshed: HashMap::new(),
            last_expiry: None,
            pending_budget: None,
            stats: SessionStats::default(),
        }
    }

    /// Charges the session's compiled templates to `budget` (its own, a child of its
    /// exporter's and the node's).
    pub fn with_budget(mut self, budget: Arc<crate::wire::ByteBudget>) -> SessionCore {
        self.decoder.set_budget(budget);
        self
    }

    /// Charges held Data Sets to the node's budget too (`collector.pending_bytes_total`).
    pub fn with_pending_budget(mut self, budget: Arc<crate::wire::ByteBudget>) -> SessionCore {
        self.pending_budget = Some(budget);
        self
    }

    /// Held bytes go down by `n` (a set released, dropped or expired).
    fn unhold(&mut self, n: usize) {
        self.pending_bytes -= n;
        if let Some(b) = &self.pending_budget {
            b.give_back(n);
        }
    }

    /// Bytes of compiled templates this session holds.
    pub fn template_bytes(&self) -> usize {
        self.decoder.held_bytes()
    }

    /// The compiled template `id` of `domain`, if this session holds it.
    pub fn template(&self, domain: u32, id: u16) -> Option<&Arc<crate::wire::Plan>> {
        self.decoder.templates(domain).and_then(|m| m.get(&id))
    }

    pub fn registry(&self) -> &Arc<Registry> {
        self.decoder.registry()
    }

    /// Decodes one message. Returns what became decodable: Data Sets that waited for a template
    /// defined here come first, then the message itself.
    pub fn on_message(
        &mut self,
        msg: Bytes,
        now: Instant,
    ) -> Result<Vec<DecodedMessage>, WireError> {
        self.expire(now);
        // Domains cost state twice (sequence tracking, templates): both are bounded.
        if let Some(domain) = peek_domain(&msg)
            && !self.expected.contains_key(&domain)
            && !self.decoder.has_domain(domain)
            && self.expected.len().max(self.decoder.domain_count()) >= MAX_DOMAINS_PER_SESSION
        {
            self.stats.errors += 1;
            let e = WireError::Template {
                offset: 12,
                reason: format!(
                    "more than {MAX_DOMAINS_PER_SESSION} observation domains in one session"
                ),
            };
            self.stats.last_error = Some(e.to_string());
            return Err(e);
        }
        let len = msg.len() as u64;
        let redefinitions = self.decoder.redefinitions();
        // The domain's templates before: a message that fails part-way keeps what its earlier
        // Sets defined or withdrew, and that is read off the difference (a cheap `Arc` copy; the
        // decoder copies the map on write).
        let domain = peek_domain(&msg);
        let before = domain.and_then(|d| self.decoder.templates(d).cloned());
        let decoded = match self.decoder.decode(msg) {
            Ok(d) => d,
            Err(e) => {
                self.stats.template_redefinitions += self.decoder.redefinitions() - redefinitions;
                if let Some(domain) = domain {
                    self.track_applied(domain, before, now);
                }
                if matches!(e, WireError::TemplateRefused { .. }) {
                    self.stats.templates_refused += 1;
                }
                self.stats.errors += 1;
                self.stats.last_error = Some(e.to_string());
                return Err(e);
            }
        };
        self.stats.template_redefinitions += self.decoder.redefinitions() - redefinitions;
        let wall = crate::store::unix_secs();
        self.stats.first_seen.get_or_insert(wall);
        self.stats.last_seen = Some(wall);
        self.stats.messages += 1;
        self.stats.bytes += len;
        self.account_sequence(&decoded);
        let mut out = Vec::new();
        let domain = decoded.header.observation_domain;
        let mut defined = Vec::new();
        for ev in &decoded.events {
            match ev {
                TemplateEvent::Define(t) => {
                    if t.kind == TemplateKind::Data {
                        self.stats.templates += 1;
                    } else {
                        self.stats.options_templates += 1;
                    }
                    self.template_refreshed
                        .insert((domain, t.id), (t.kind, now));
                    defined.push(t.id);
                }
                TemplateEvent::Withdraw { id, .. } => {
                    self.stats.withdrawals += 1;
                    // Only if it went: UDP ignores withdrawals (RFC 7011 section 8.4), and the
                    // template it keeps must still expire.
                    if !decoded.templates.contains_key(id) {
                        self.template_refreshed.remove(&(domain, *id));
                    }
                }
                TemplateEvent::WithdrawAll { .. } => {
                    self.stats.withdrawals += 1;
                    let held = &decoded.templates;
                    self.template_refreshed
                        .retain(|(d, id), _| *d != domain || held.contains_key(id));
                }
            }
        }
        if !defined.is_empty() && !self.pending.is_empty() {
            self.release_pending(domain, &defined, &mut out);
        }
        for m in &decoded.missing {
            self.hold(&decoded, m.template_id, m.set_offset, m.set_len, now);
        }
        self.count_records(&decoded);
        out.push(decoded);
        Ok(out)
    }

    /// What a message that failed did to `domain`'s templates before it failed (the decoder
    /// applies Template Sets as it meets them, and the events went with the error): templates it
    /// defined or changed are tracked as defined `now` (else a UDP one would never expire), and
    /// those it withdrew are no longer tracked. `before`: the domain's templates before it.
    fn track_applied(&mut self, domain: u32, before: Option<Arc<TemplateMap>>, now: Instant) {
        let after = self.decoder.templates(domain).cloned();
        match (&before, &after) {
            (Some(b), Some(a)) if Arc::ptr_eq(b, a) => return,
            (None, None) => return,
            _ => {}
        }
        for (id, plan) in after.iter().flat_map(|m| m.iter()) {
            let old = before.as_ref().and_then(|m| m.get(id));
            if old.is_none_or(|p| !Arc::ptr_eq(p, plan)) {
                let kind = plan.template.kind;
                if kind == TemplateKind::Data {
                    self.stats.templates += 1;
                } else {
                    self.stats.options_templates += 1;
                }
                self.template_refreshed.insert((domain, *id), (kind, now));
            }
        }
        for id in before.iter().flat_map(|m| m.keys()) {
            if after.as_ref().is_none_or(|m| !m.contains_key(id)) {
                self.template_refreshed.remove(&(domain, *id));
            }
        }
    }

    /// A template from the shared store (another session or node learned it): defined here as if
    /// the exporter had sent it, and the Data Sets waiting for it are decoded.
    pub fn learn_shared(
        &mut self,
        domain: u32,
        template: crate::wire::Template,
        now: Instant,
    ) -> Result<Vec<DecodedMessage>, WireError> {
        let id = template.id;
        let kind = template.kind;
        self.decoder
            .apply(domain, &TemplateEvent::Define(template))?;
        self.template_refreshed.insert((domain, id), (kind, now));
        self.stats.templates_from_store += 1;
        // The exporter's sequence counted the records of sets we could not decode before.
        self.expected.remove(&domain);
        let mut out = Vec::new();
        self.release_pending(domain, &[id], &mut out);
        Ok(out)
    }

    fn count_records(&mut self, d: &DecodedMessage) {
        for b in &d.batches {
            if b.plan.template.kind == TemplateKind::Options {
                self.stats.options_records += b.len() as u64;
            } else {
                self.stats.data_records += b.len() as u64;
            }
        }
    }

    /// RFC 7011 section 3.1: the sequence number counts Data Records sent before this message
    /// in this domain, as NetFlow v5's counts flows. RFC 3954: NetFlow v9 counts packets.
    fn account_sequence(&mut self, d: &DecodedMessage) {
        let h = &d.header;
        let next = h.sequence.wrapping_add(h.sequence_step(d.data_records()));
        if let Some(&expected) = self.expected.get(&h.observation_domain)
            && h.sequence != expected
        {
            let ahead = h.sequence.wrapping_sub(expected);
            if ahead < 1 << 31 {
                self.stats.lost += ahead as u64;
            } else {
                self.stats.out_of_order += 1;
                // A late message that ends at or before what we expect is reordering: the
                // expectation stays (moving it back would count the records after it as lost
                // again). One that reaches past it means the exporter started counting again
                // (a restart): follow it.
                let reaches = next.wrapping_sub(expected);
                if reaches == 0 || reaches >= 1 << 31 {
                    return;
                }
            }
        }
        if d.missing.is_empty() {
            self.expected.insert(h.observation_domain, next);
        } else {
            // Records we could not decode were counted by the exporter: judge the next message
            // by its own number instead of calling them lost.
            self.expected.remove(&h.observation_domain);
        }
    }

    fn hold(
        &mut self,
        d: &DecodedMessage,
        template_id: u16,
        offset: usize,
        len: usize,
        now: Instant,
    ) {
        let cost = len + PENDING_ENTRY_COST;
        if cost > self.limits.pending_bytes {
            self.stats.dropped_sets_buffer_full += 1;
            return;
        }
        while self.pending_bytes + cost > self.limits.pending_bytes {
            match self.pending.pop_front() {
                Some(p) => {
                    self.unhold(p.set.len() + PENDING_ENTRY_COST);
                    self.stats.dropped_sets_buffer_full += 1;
                }
                None => break,
            }
        }
        // The node's total: when every session holds sets, the newest is the one that waits
        // least for nothing.
        if let Some(b) = &self.pending_budget
            && b.try_take(cost).is_err()
        {
            self.stats.dropped_sets_buffer_full += 1;
            return;
        }
        self.pending_bytes += cost;
        self.pending.push_back(Pending {
            version: d.header.version,
            domain: d.header.observation_domain,
            template_id,
            export_time: d.header.export_time,
            sys_uptime_ms: d.header.sys_uptime_ms,
            // A copy: holding a slice would pin the whole message buffer.
            set: Bytes::copy_from_slice(&d.buf[offset..offset + len]),
            since: now,
        });
    }

    /// Decodes held Data Sets whose template was just defined, as one-set messages.
    fn release_pending(&mut self, domain: u32, defined: &[u16], out: &mut Vec<DecodedMessage>) {
        let mut keep = VecDeque::with_capacity(self.pending.len());
        while let Some(p) = self.pending.pop_front() {
            if p.domain != domain || !defined.contains(&p.template_id) {
                keep.push_back(p);
                continue;
            }
            self.unhold(p.set.len() + PENDING_ENTRY_COST);
            match self.decoder.decode(wrap_set(&p)) {
                Ok(d) if d.missing.is_empty() => {
                    self.stats.pending_decoded_sets += 1;
                    self.count_records(&d);
                    out.push(d);
                }
                Ok(_) => self.stats.dropped_sets_no_template += 1,
                Err(e) => {
                    self.stats.errors += 1;
                    self.stats.last_error = Some(format!("held data set: {e}"));
                }
            }
        }
        self.pending = keep;
    }

    /// Drops held sets past their time and (UDP) templates past their lifetime.
    pub fn expire(&mut self, now: Instant) {
        if self
            .last_expiry
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            return;
        }
        self.last_expiry = Some(now);
        while let Some(p) = self.pending.front() {
            if now.duration_since(p.since) < self.limits.pending_age {
                break;
            }
            let n = p.set.len() + PENDING_ENTRY_COST;
            self.unhold(n);
            self.pending.pop_front();
            self.stats.dropped_sets_no_template += 1;
        }
        if let Some(lifetime) = self.limits.template_lifetime {
            let old: Vec<_> = self
                .template_refreshed
                .iter()
                .filter(|(_, (_, at))| now.duration_since(*at) >= lifetime)
                .map(|(k, (kind, _))| (*k, *kind))
                .collect();
            for ((domain, id), kind) in old {
                self.template_refreshed.remove(&(domain, id));
                self.decoder.forget(domain, kind, id);
                self.stats.templates_expired += 1;
            }
        }
    }

    pub fn pending_sets(&self) -> usize {
        self.pending.len()
    }

    /// What the held sets cost (their bytes and bookkeeping): what this session has taken from
    /// the node's pending budget.
    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }
}

/// The Observation Domain in an IPFIX or NetFlow v9 header, if there is one.
fn peek_domain(m: &[u8]) -> Option<u32> {
    crate::wire::header::peek_observation_domain(m)
}

/// A held Data Set as a message of its own, with the original header's domain and times.
fn wrap_set(p: &Pending) -> Bytes {
    let mut m = BytesMut::with_capacity(NETFLOW_V9_HEADER_LEN + p.set.len());
    if p.version == IPFIX_VERSION {
        m.put_u16(IPFIX_VERSION);
        m.put_u16((IPFIX_HEADER_LEN + p.set.len()) as u16);
        m.put_u32(p.export_time);
        m.put_u32(0);
        m.put_u32(p.domain);
    } else {
        m.put_u16(p.version);
        m.put_u16(1);
        m.put_u32(p.sys_uptime_ms.unwrap_or(0));
        m.put_u32(p.export_time);
        m.put_u32(0);
        m.put_u32(p.domain);
    }
    m.put_slice(&p.set);
    m.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{FieldSpec, FieldValue, MessageBuilder, Plan, Template};

    fn limits(lifetime: Option<Duration>) -> SessionLimits {
        SessionLimits {
            max_templates: 100,
            max_template_fields: 512,
            pending_bytes: 10_000,
            pending_age: Duration::from_secs(30),
            template_lifetime: lifetime,
        }
    }

    fn template() -> Template {
        Template::data(300, vec![FieldSpec::new(7, 0, 2)])
    }

    /// Messages from one exporter: [template], then `n` messages of 2 records each.
    fn messages(n: usize) -> (Bytes, Vec<Bytes>) {
        let plan = Plan::compile(template(), &Registry::builtin());
        let mut b = MessageBuilder::new(1, 65535);
        b.add_template(&template()).expect("fits");
        b.flush();
        let t = Bytes::from(b.take_ready().remove(0));
        let mut data = Vec::new();
        for i in 0..n {
            b.add_record(&plan, &[FieldValue::Unsigned(i as u64)])
                .expect("encodes");
            b.add_record(&plan, &[FieldValue::Unsigned(i as u64 + 1000)])
                .expect("encodes");
            b.flush();
            data.push(Bytes::from(b.take_ready().remove(0)));
        }
        (t, data)
    }

    #[test]
    fn sequence_gaps_and_reordering_are_counted() {
        let (t, data) = messages(4);
        let mut s = SessionCore::new(Registry::builtin(), Transport::Udp, limits(None));
        let now = Instant::now();
        s.on_message(t, now).expect("template");
        s.on_message(data[0].clone(), now).expect("data");
        s.on_message(data[2].clone(), now).expect("data"); // data[1] lost: 2 records
        s.on_message(data[1].clone(), now).expect("data"); // late
        assert_eq!(s.stats.lost, 2);
        assert_eq!(s.stats.out_of_order, 1);
        assert_eq!(s.stats.data_records, 6);
        // The late message does not move the expectation back: data[3] follows data[2].
        s.on_message(data[3].clone(), now).expect("data");
        assert_eq!(s.stats.lost, 2, "reordering is not loss twice");
    }

    #[test]
    fn data_before_template_is_held_then_decoded() {
        let (t, data) = messages(2);
        let mut s = SessionCore::new(Registry::builtin(), Transport::Udp, limits(None));
        let now = Instant::now();
        let early = s
            .on_message(data[0].clone(), now)
            .expect("undecodable yet, not an error");
        assert_eq!(early[0].data_records(), 0);
        assert_eq!(s.pending_sets(), 1);
        let out = s.on_message(t, now).expect("template");
        assert_eq!(
            out.len(),
            2,
            "the held set first, then the template message"
        );
        assert_eq!(out[0].data_records(), 2);
        assert_eq!(s.stats.pending_decoded_sets, 1);
        assert_eq!(s.pending_sets(), 0);
    }

    #[test]
    fn held_netflow_v9_sets_keep_their_sys_uptime() {
        // v9 header: count, sysUptime 123456 ms, unix secs, sequence, source id 7.
        let v9 = |seq: u8, set: &[u8]| {
            let mut m = vec![0, 9, 0, 1, 0, 1, 0xe2, 0x40, 0x65, 0x53, 0xf1, 0x00];
            m.extend_from_slice(&[0, 0, 0, seq, 0, 0, 0, 7]);
            m.extend_from_slice(set);
            Bytes::from(m)
        };
        let data = v9(0, &[1, 0, 0, 6, 0x1f, 0x90]);
        let template = v9(1, &[0, 0, 0, 12, 1, 0, 0, 1, 0, 7, 0, 2]);
        let mut s = SessionCore::new(Registry::builtin(), Transport::Udp, limits(None));
        let now = Instant::now();
        s.on_message(data, now).expect("held");
        let out = s.on_message(template, now).expect("template");
        assert_eq!(out[0].data_records(), 1, "the held set, decoded");
        assert_eq!(out[0].header.sys_uptime_ms, Some(123_456));
        assert_eq!(out[0].header.export_time, 0x6553_f100);
    }

    #[test]
    fn netflow_v5_sequence_numbers_count_flows() {
        // A v5 packet of `n` zeroed records from engine 1/2 with flow_sequence `seq`.
        let v5 = |seq: u32, n: u16| {
            let mut m = vec![0, 5];
            m.extend_from_slice(&n.to_be_bytes());
            m.resize(16, 0);
            m.extend_from_slice(&seq.to_be_bytes());
            m.extend_from_slice(&[1, 2, 0, 0]);
            m.resize(24 + 48 * n as usize, 0);
            Bytes::from(m)
        };
        let mut s = SessionCore::new(Registry::builtin(), Transport::Udp, limits(None));
        let now = Instant::now();
        for (seq, n) in [(0, 2), (2, 3), (5, 1)] {
            s.on_message(v5(seq, n), now).expect("decodes");
        }
        assert_eq!((s.stats.lost, s.stats.data_records), (0, 6));
        s.on_message(v5(10, 1), now).expect("decodes"); // flows 6 to 9 never came
        assert_eq!(s.stats.lost, 4);
        assert_eq!(s.stats.out_of_order, 0);
    }

    #[test]
    fn held_sets_are_bounded_and_time_out() {
        let (_, data) = messages(40);
        let mut l = limits(None);
        l.pending_bytes = 100;
        let mut s = SessionCore::new(Registry::builtin(), Transport::Udp, l);
        let now = Instant::now();
        for d in &data {
            s.on_message(d.clone(), now).expect("held");
        }
        assert!(s.pending_sets() * 8 <= 100, "each held set is 8 bytes");
        assert!(s.stats.dropped_sets_buffer_full > 0);
        s.expire(now + Duration::from_secs(31));
        assert_eq!(s.pending_sets(), 0);
        assert!(
            s.stats.dropped_sets_no_template > 0,
            "{:?} {}",
            s.stats,
            s.pending_sets()
        );
    }

    #[test]
    fn held_sets_are_charged_to_the_node_and_given_back() {
        let (t, data) = messages(40);
        let node = Arc::new(crate::wire::ByteBudget::new("node", 300, None));
        let mut a = SessionCore::new(Registry::builtin(), Transport::Udp, limits(None))
            .with_pending_budget(node.clone());
        let mut b = SessionCore::new(Registry::builtin(), Transport::Udp, limits(None))
            .with_pending_budget(node.clone());
        let now = Instant::now();
        for d in &data[..20] {
            a.on_message(d.clone(), now).expect("held");
            b.on_message(d.clone(), now).expect("held");
        }
        assert!(node.used() <= 300, "the node's bound holds across sessions");
        assert!(a.stats.dropped_sets_buffer_full + b.stats.dropped_sets_buffer_full > 0);
        assert_eq!(node.used(), a.pending_bytes + b.pending_bytes);
        a.on_message(t, now).expect("template releases what a held");
        assert_eq!(node.used(), b.pending_bytes);
        b.expire(now + Duration::from_secs(31));
        assert_eq!(node.used(), 0);
        drop(a);
        drop(b);
        assert_eq!(node.used(), 0);
    }

    /// An IPFIX message of domain 1 with these Template Sets (id 2), each holding one record.
    fn template_message(records: &[&[u8]]) -> Bytes {
        let mut m = vec![0, 10, 0, 0, 0x65, 0x53, 0xf1, 0x00, 0, 0, 0, 0, 0, 0, 0, 1];
        for r in records {
            m.extend_from_slice(&[0, 2]);
            m.extend_from_slice(&(4 + r.len() as u16).to_be_bytes());
            m.extend_from_slice(r);
        }
        let len = (m.len() as u16).to_be_bytes();
        m[2..4].copy_from_slice(&len);
        Bytes::from(m)
    }

    #[test]
    fn templates_of_a_message_that_failed_later_still_expire() {
        // Found by fuzz/fuzz_targets/session.rs: template 300 is applied (the decoder applies
        // Template Sets as it meets them), then template 301's 3 fields are refused; the message
        // is an error and its events were lost, so 300 was never tracked and never expired.
        let mut l = limits(Some(Duration::from_secs(60)));
        l.max_template_fields = 2;
        let budget = Arc::new(crate::wire::ByteBudget::new("session", 100_000, None));
        let mut s =
            SessionCore::new(Registry::builtin(), Transport::Udp, l).with_budget(budget.clone());
        let now = Instant::now();
        let msg = template_message(&[
            &[1, 44, 0, 1, 0, 7, 0, 2],
            &[1, 45, 0, 3, 0, 7, 0, 2, 0, 11, 0, 2, 0, 4, 0, 1],
        ]);
        assert!(matches!(
            s.on_message(msg, now),
            Err(WireError::TemplateRefused {
                template_id: 301,
                ..
            })
        ));
        assert!(
            s.template(1, 300).is_some(),
            "the Sets before the refused one stay applied"
        );
        assert_eq!(s.stats.templates, 1);
        s.expire(now + Duration::from_secs(61));
        assert!(s.template(1, 300).is_none(), "expired like any other");
        assert_eq!(
            (s.stats.templates_expired, s.template_bytes(), budget.used()),
            (1, 0, 0)
        );
    }

    #[test]
    fn udp_withdrawals_are_ignored_and_do_not_stop_expiry() {
        // Found looking into the one above: a UDP collector ignores Template Withdrawals
        // (RFC 7011 section 8.4), so the template stays; its expiry must stay too.
        let mut s = SessionCore::new(
            Registry::builtin(),
            Transport::Udp,
            limits(Some(Duration::from_secs(60))),
        );
        let now = Instant::now();
        s.on_message(template_message(&[&[1, 44, 0, 1, 0, 7, 0, 2]]), now)
            .expect("template");
        s.on_message(template_message(&[&[1, 44, 0, 0]]), now)
            .expect("withdrawal");
        assert!(s.template(1, 300).is_some(), "UDP: withdrawals are ignored");
        s.expire(now + Duration::from_secs(61));
        assert!(
            s.template(1, 300).is_none(),
            "but the template still expires"
        );
        assert_eq!((s.stats.templates_expired, s.template_bytes()), (1, 0));
    }

    #[test]
    fn udp_templates_expire_unless_refreshed() {
        let (t, data) = messages(1);
        let mut s = SessionCore::new(
            Registry::builtin(),
            Transport::Udp,
            limits(Some(Duration::from_secs(60))),
        );
        let now = Instant::now();
        s.on_message(t, now).expect("template");
        s.on_message(data[0].clone(), now + Duration::from_secs(59))
            .expect("decodes");
        assert_eq!(s.stats.data_records, 2);
        let late = s
            .on_message(data[0].clone(), now + Duration::from_secs(61))
            .expect("held");
        assert_eq!(late[0].data_records(), 0);
        assert_eq!(s.stats.templates_expired, 1);
    }
}
