//! One exporter session of the Collecting Process (`SessionCore`, no I/O) with small limits, fed a
//! sequence of operations taken from the input, with a fake clock so that held Data Sets time out
//! and UDP templates expire. After every step the accounting must add up: the node's pending
//! budget holds what the session holds, the template budgets (session -> exporter -> node) hold
//! what the decoder holds, nothing passes a limit, expiry forgets what it must, and dropping the
//! session gives everything back.
//!
//! Input: 4 config bytes, then operations until the input ends.
//! - byte 0: bit 0 UDP (else TCP), bits 1-2 pending age, bits 3-4 UDP template lifetime;
//! - byte 1: what another session of the same exporter holds of the exporter's template budget
//!   (x 64 bytes); byte 2: another exporter's share of the node's template budget (x 64 bytes);
//!   byte 3: what other sessions hold of the node's pending budget (x 32 bytes);
//! - an operation: one byte `op` (the clock first advances by `(op >> 3)^2 * 100 ms`, 0 to 96 s),
//!   then for `op & 7`:
//!   - 0 to 5: a message (IPFIX, NetFlow v9 or v5): 2-byte big-endian length, then that many
//!     bytes (fewer if the input ends first), to `on_message`;
//!   - 6: a template from the shared store: 2-byte length, then a message decoded by a scratch
//!     decoder; each template it defines goes to `learn_shared` under the message's domain;
//!   - 7: `expire`.
#![no_main]

use bytes::Bytes;
use ipfixsvc::actors::collector::session_logic::{SessionCore, SessionLimits, Transport};
use ipfixsvc::wire::ndjson::{Origin, write_record};
use ipfixsvc::wire::{
    ByteBudget, DecodedMessage, Decoder, DecoderOptions, Registry, TemplateEvent,
};
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use std::time::{Duration, Instant};

const PENDING_BYTES: usize = 4096;
const NODE_PENDING_BYTES: usize = 6144;
const SESSION_TEMPLATE_BYTES: usize = 12_288;
const EXPORTER_TEMPLATE_BYTES: usize = 16_384;
const NODE_TEMPLATE_BYTES: usize = 20_480;
const PENDING_AGE_SECS: [u64; 4] = [1, 5, 30, 120];
const LIFETIME_SECS: [u64; 4] = [2, 10, 60, 300];

struct Budgets {
    session: Arc<ByteBudget>,
    exporter: Arc<ByteBudget>,
    node: Arc<ByteBudget>,
    pending: Arc<ByteBudget>,
    /// What other parties hold: of the exporter's (and so the node's) template budget, of the
    /// node's template budget only, of the node's pending budget.
    other_session: usize,
    other_exporter: usize,
    other_pending: usize,
}

impl Budgets {
    fn new(config: &[u8]) -> Budgets {
        let node = Arc::new(ByteBudget::new("collector", NODE_TEMPLATE_BYTES, None));
        let exporter = Arc::new(ByteBudget::new(
            "exporter",
            EXPORTER_TEMPLATE_BYTES,
            Some(node.clone()),
        ));
        let session = Arc::new(ByteBudget::new(
            "session",
            SESSION_TEMPLATE_BYTES,
            Some(exporter.clone()),
        ));
        let pending = Arc::new(ByteBudget::new("node pending", NODE_PENDING_BYTES, None));
        let take = |b: &ByteBudget, n: usize| if b.try_take(n).is_ok() { n } else { 0 };
        let other_session = take(&exporter, config[1] as usize * 64);
        let other_exporter = take(&node, config[2] as usize * 64);
        let other_pending = take(&pending, config[3] as usize * 32);
        Budgets {
            session,
            exporter,
            node,
            pending,
            other_session,
            other_exporter,
            other_pending,
        }
    }

    fn check(&self, core: &SessionCore) {
        let (held, templates) = (core.pending_bytes(), core.template_bytes());
        assert!(
            held <= PENDING_BYTES,
            "session holds {held} > {PENDING_BYTES}"
        );
        assert!(
            held >= 64 * core.pending_sets(),
            "each held set costs 64 bytes at least"
        );
        assert_eq!(
            self.pending.used(),
            self.other_pending + held,
            "node pending budget"
        );
        assert!(self.pending.used() <= NODE_PENDING_BYTES);
        assert_eq!(self.session.used(), templates, "session template budget");
        assert_eq!(self.exporter.used(), self.other_session + templates);
        assert_eq!(
            self.node.used(),
            self.other_exporter + self.other_session + templates
        );
        assert!(self.session.used() <= SESSION_TEMPLATE_BYTES);
        assert!(self.exporter.used() <= EXPORTER_TEMPLATE_BYTES);
        assert!(self.node.used() <= NODE_TEMPLATE_BYTES);
    }

    /// After the session is gone: only the other parties' bytes are left, then none.
    fn check_dropped(self) {
        assert_eq!(
            self.session.used(),
            0,
            "a dropped session holds no templates"
        );
        assert_eq!(self.exporter.used(), self.other_session);
        assert_eq!(self.node.used(), self.other_session + self.other_exporter);
        assert_eq!(
            self.pending.used(),
            self.other_pending,
            "a dropped session holds no sets"
        );
        self.exporter.give_back(self.other_session);
        self.node.give_back(self.other_exporter);
        self.pending.give_back(self.other_pending);
        assert_eq!(
            (
                self.session.used(),
                self.exporter.used(),
                self.node.used(),
                self.pending.used()
            ),
            (0, 0, 0, 0)
        );
    }
}

/// Records the session reported: must be what its counters went up by. Records of held sets that
/// were released are rendered (their message was rebuilt from the held set).
fn records(out: &[DecodedMessage], released: usize, registry: &Arc<Registry>) -> u64 {
    let mut json = Vec::new();
    for d in &out[..released] {
        for batch in &d.batches {
            for r in 0..batch.len() {
                json.clear();
                write_record(
                    &mut json,
                    Origin {
                        exporter: "fuzz",
                        tenant: None,
                        domain: None,
                    },
                    d,
                    batch,
                    r,
                    registry,
                );
            }
        }
    }
    out.iter().map(|d| d.data_records() as u64).sum()
}

fn counted(core: &SessionCore) -> u64 {
    core.stats.data_records + core.stats.options_records
}

/// `n` bytes (or what is left) after a 2-byte length.
fn take<'a>(data: &mut &'a [u8]) -> &'a [u8] {
    let n = match data {
        [a, b, ..] => u16::from_be_bytes([*a, *b]) as usize,
        _ => 0,
    };
    *data = data.get(2..).unwrap_or_default();
    let (m, rest) = data.split_at(n.min(data.len()));
    *data = rest;
    m
}

fuzz_target!(|data: &[u8]| {
    let Some((config, mut ops)) = data.split_first_chunk::<4>() else {
        return;
    };
    let udp = config[0] & 1 == 1;
    let limits = SessionLimits {
        max_templates: 64,
        max_template_fields: 64,
        pending_bytes: PENDING_BYTES,
        pending_age: Duration::from_secs(PENDING_AGE_SECS[(config[0] >> 1 & 3) as usize]),
        template_lifetime: udp
            .then(|| Duration::from_secs(LIFETIME_SECS[(config[0] >> 3 & 3) as usize])),
    };
    let registry = Registry::builtin();
    let budgets = Budgets::new(config);
    let transport = if udp { Transport::Udp } else { Transport::Tcp };
    let mut core = SessionCore::new(registry.clone(), transport, limits)
        .with_budget(budgets.session.clone())
        .with_pending_budget(budgets.pending.clone());
    budgets.check(&core);

    let mut now = Instant::now();
    // When the session last ran an expiry pass (it does so at most once a second), last took a
    // message (which may define templates and hold sets), and last took any template.
    let mut last_expiry: Option<Instant> = None;
    let mut last_message: Option<Instant> = None;
    let mut last_template: Option<Instant> = None;
    let mut expiry_runs = |now: Instant| {
        let runs = last_expiry.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1));
        if runs {
            last_expiry = Some(now);
        }
        runs
    };
    while let Some((&op, rest)) = ops.split_first() {
        ops = rest;
        let step = u64::from(op >> 3);
        now += Duration::from_millis(step * step * 100);
        let before = counted(&core);
        match op & 7 {
            0..=5 => {
                let msg = Bytes::copy_from_slice(take(&mut ops));
                expiry_runs(now);
                last_message = Some(now);
                last_template = Some(now);
                match core.on_message(msg, now) {
                    Ok(out) => {
                        assert!(!out.is_empty(), "the message itself comes last");
                        let n = records(&out, out.len() - 1, &registry);
                        assert_eq!(counted(&core) - before, n, "records counted as reported");
                    }
                    Err(_) => assert_eq!(counted(&core), before),
                }
            }
            6 => {
                let msg = Bytes::copy_from_slice(take(&mut ops));
                let mut scratch = Decoder::new(registry.clone(), DecoderOptions::default());
                let Ok(decoded) = scratch.decode(msg) else {
                    continue;
                };
                let domain = decoded.header.observation_domain;
                for ev in decoded.events {
                    let TemplateEvent::Define(t) = ev else {
                        continue;
                    };
                    last_template = Some(now);
                    let before = counted(&core);
                    match core.learn_shared(domain, t, now) {
                        Ok(out) => {
                            let n = records(&out, out.len(), &registry);
                            assert_eq!(counted(&core) - before, n);
                        }
                        Err(_) => assert_eq!(counted(&core), before),
                    }
                    budgets.check(&core);
                }
            }
            _ => {
                core.expire(now);
                if expiry_runs(now) {
                    // Everything held was held before `pending_age` ago.
                    if last_message.is_none_or(|t| now.duration_since(t) >= limits.pending_age) {
                        assert_eq!(core.pending_sets(), 0, "held sets past their age");
                        assert_eq!(core.pending_bytes(), 0);
                    }
                    // UDP: every template was last defined (or refreshed) before its lifetime.
                    if let Some(lifetime) = limits.template_lifetime
                        && last_template.is_none_or(|t| now.duration_since(t) >= lifetime)
                    {
                        assert_eq!(
                            core.template_bytes(),
                            0,
                            "UDP templates past their lifetime"
                        );
                    }
                }
            }
        }
        budgets.check(&core);
    }
    drop(core);
    budgets.check_dropped();
});
