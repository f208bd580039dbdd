//! Time series of flows. Per interval (aligned to multiples of the interval since the Unix
//! epoch, UTC, as rrdtool and nfdump align them, so series from different runs and nodes line
//! up): the octets, packets and flows in total and per key of one element.
//!
//! A flow's octets and packets are spread over `[start, end]` in proportion to its overlap with
//! each interval, in whole units by the largest-remainder method, so that each flow's parts add
//! up to its counters exactly; a flow whose start equals its end falls wholly in its interval.
//! It counts as one flow (or its `deltaFlowCount`) in the interval where it starts. Biflows
//! (RFC 5103) count both directions unless `forward_only`. Records with no time at all are
//! counted in `untimed`, not in any interval.
//!
//! Memory is bounded: the cells (key x interval) held at once are capped (`max_cells`), and the
//! span of intervals too (`max_intervals`); past either the build fails with an error that says
//! which, never a runaway allocation from a record's bogus timestamp.

use super::key::{Key, KeySpec};
use super::time::{FlowTimes, TimeFields};
use crate::wire::batch::{Batch, Column};
use crate::wire::decoder::DecodedMessage;
use crate::wire::template::TemplateKind;
use rustc_hash::FxHashMap;

/// RFC 5103's reverse-direction Private Enterprise Number.
const REVERSE_PEN: u32 = 29305;

#[derive(Debug, Clone)]
pub struct Options {
    pub interval_secs: u64,
    pub by: Option<KeySpec>,
    /// Keys with their own series (the most octets over the whole range); the rest are `other`.
    pub top: usize,
    pub forward_only: bool,
    /// Cells (key x interval) held at most.
    pub max_cells: usize,
    /// Intervals from the first to the last at most.
    pub max_intervals: u64,
    /// Distinct keys held at most; records of further keys count under `other` (a live series,
    /// which runs for ever, bounds its keys this way; a file's run is bounded by `max_cells`).
    pub max_keys: usize,
    /// Totals per key, not series: every record, timed or not, goes to one interval (0), so the
    /// times are not read (top talkers, protocol and port mixes).
    pub whole: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            interval_secs: 60,
            by: None,
            top: 10,
            forward_only: false,
            max_cells: 8_000_000,
            max_intervals: 1_000_000,
            max_keys: usize::MAX,
            whole: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SeriesError {
    #[error("the interval must be between 1 second and 1 day, not {0} s")]
    Interval(u64),
    #[error(
        "more than {0} intervals from the first flow to the last (a record with a far-off time?): use a larger interval"
    )]
    TooManyIntervals(u64),
    #[error("more than {0} key x interval cells: use a larger interval or a key with fewer values")]
    TooManyCells(usize),
    #[error(
        "a flow spans more than {0} intervals (a record with a far-off end?): use a larger interval"
    )]
    FlowTooLong(u64),
}

/// Templates whose roles are remembered at once.
const MAX_ROLES: usize = 4096;

/// The milliseconds since the epoch that chrono can show as a date and time.
const SHOWN_MS: std::ops::RangeInclusive<i64> = chrono::DateTime::<chrono::Utc>::MIN_UTC
    .timestamp_millis()
    ..=chrono::DateTime::<chrono::Utc>::MAX_UTC.timestamp_millis();

/// Intervals one flow may span: its parts are worked out one by one.
pub const MAX_FLOW_INTERVALS: u64 = 100_000;

/// Octets, packets and flows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Counts {
    pub octets: u64,
    pub packets: u64,
    pub flows: u64,
}

impl Counts {
    pub fn add(&mut self, o: u64, p: u64, f: u64) {
        self.octets = self.octets.saturating_add(o);
        self.packets = self.packets.saturating_add(p);
        self.flows = self.flows.saturating_add(f);
    }
}

/// The input's totals: what every series adds up to, and what had no time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Totals {
    pub octets: u64,
    pub packets: u64,
    pub flows: u64,
    /// Records with no time, counted nowhere else (their octets and packets are not in the
    /// series either).
    pub untimed: u64,
}

/// What was placed by approximation (see `FlowTimes::approximate`), or left out of a live
/// series' range, for the summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Placement {
    pub by_export_time: u64,
    /// Records outside the range a live series takes (`Builder::set_range`): left out.
    pub out_of_range: u64,
}

/// What each field of a template is to the series: found once per template.
#[derive(Debug, Clone, Default)]
struct Roles {
    octets: Vec<usize>,
    packets: Vec<usize>,
    flows: Option<usize>,
    key: Option<usize>,
    times: TimeFields,
}

/// Builds the series from decoded messages.
pub struct Builder {
    opts: Options,
    interval_ms: u64,
    keys: FxHashMap<Key, u32>,
    names: Vec<Key>,
    /// Octets of each key over the whole range (the top keys are chosen by them).
    key_octets: Vec<u64>,
    cells: FxHashMap<(u32, i64), Counts>,
    /// The cells added to lately, in front of `cells`.
    recent: Recent,
    first: Option<i64>,
    last: Option<i64>,
    totals: Totals,
    placement: Placement,
    /// Each template's roles, by its plan's address; the plan is held so that the address
    /// cannot be reused by another template's plan.
    roles: FxHashMap<
        usize,
        (
            std::sync::Arc<crate::wire::plan::Plan>,
            std::sync::Arc<Roles>,
        ),
    >,
    /// systemInitTimeMilliseconds an options record gave, per exporter and domain.
    init_times: std::collections::HashMap<String, FxHashMap<u32, u64>>,
    error: Option<SeriesError>,
    /// Key numbers of 16-bit keys by value (`u32::MAX`: not seen yet).
    small: Vec<u32>,
    /// `@exporter`: the key number of the message being read, once a record needed it.
    exporter_key: Option<u32>,
    /// The intervals records may fall in (a live series: its retention and a little ahead).
    range: Option<(i64, i64)>,
    /// The key number of `other` once `max_keys` is reached.
    overflow: Option<u32>,
    /// The intervals added to since `take_touched` (a live series writes them to the store).
    touched: Option<(i64, i64)>,
}

/// Slots of [`Recent`] (a power of two): 40 KiB, in the CPU's second-level cache.
const RECENT_SLOTS: usize = 1024;

/// The cells added to lately, direct-mapped in front of the cell map and written back to it
/// when another cell takes their slot. A flow adds to a few consecutive intervals of one key,
/// and the next flows mostly to the same ones: most additions end here, not in the map.
/// A key's consecutive intervals take consecutive slots.
#[derive(Default)]
struct Recent {
    /// (key, interval, counts); key `u32::MAX`: empty. Made on first use.
    slots: Vec<(u32, i64, Counts)>,
    held: usize,
}

impl Recent {
    /// Adds to cell `(k, i)`; the cell it displaced, if any, to be written back.
    #[inline(always)]
    fn add(&mut self, k: u32, i: i64, o: u64, p: u64, f: u64) -> Option<(u32, i64, Counts)> {
        if self.slots.is_empty() {
            self.slots = vec![(u32::MAX, 0, Counts::default()); RECENT_SLOTS];
        }
        let h = (u64::from(k).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize;
        let at = h.wrapping_add(i as usize) & (RECENT_SLOTS - 1);
        let slot = &mut self.slots[at];
        if slot.0 == k && slot.1 == i {
            slot.2.add(o, p, f);
            return None;
        }
        let fresh = Counts {
            octets: o,
            packets: p,
            flows: f,
        };
        let old = std::mem::replace(slot, (k, i, fresh));
        if old.0 == u32::MAX {
            self.held += 1;
            None
        } else {
            Some(old)
        }
    }

    fn is_empty(&self) -> bool {
        self.held == 0
    }

    fn iter(&self) -> impl Iterator<Item = (&u32, &i64, &Counts)> {
        self.slots
            .iter()
            .filter(|s| s.0 != u32::MAX)
            .map(|(k, i, c)| (k, i, c))
    }

    /// The cells held, emptied.
    fn drain(&mut self) -> Vec<(u32, i64, Counts)> {
        self.held = 0;
        self.slots
            .iter_mut()
            .filter(|s| s.0 != u32::MAX)
            .map(|s| std::mem::replace(s, (u32::MAX, 0, Counts::default())))
            .collect()
    }
}

/// One batch's columns of the roles (found once per batch).
struct Cols<'b> {
    octets: Vec<Column<'b>>,
    packets: Vec<Column<'b>>,
    flows: Option<Column<'b>>,
    key: Option<(usize, Column<'b>)>,
    times: super::time::TimeCols<'b>,
}

impl Builder {
    pub fn new(opts: Options) -> Result<Builder, SeriesError> {
        if !(1..=86_400).contains(&opts.interval_secs) {
            return Err(SeriesError::Interval(opts.interval_secs));
        }
        Ok(Builder {
            interval_ms: opts.interval_secs * 1000,
            opts,
            keys: FxHashMap::default(),
            names: Vec::new(),
            key_octets: Vec::new(),
            cells: FxHashMap::default(),
            recent: Recent::default(),
            first: None,
            last: None,
            totals: Totals::default(),
            placement: Placement::default(),
            roles: FxHashMap::default(),
            init_times: Default::default(),
            error: None,
            small: Vec::new(),
            exporter_key: None,
            range: None,
            overflow: None,
            touched: None,
        })
    }

    /// Adds one decoded message of `exporter`.
    pub fn message(&mut self, exporter: &str, msg: &DecodedMessage) {
        self.message_rows(exporter, msg, |_, n| 0..n);
    }

    /// Adds the records `rows(batch index, batch length)` of each batch of a message (those a
    /// stream's filter let through).
    pub fn message_rows<R, I>(&mut self, exporter: &str, msg: &DecodedMessage, rows: R)
    where
        R: Fn(usize, usize) -> I,
        I: Iterator<Item = usize>,
    {
        if self.error.is_some() {
            return;
        }
        let domain = msg.header.observation_domain;
        self.exporter_key = None;
        for (k, b) in msg.batches.iter().enumerate() {
            if b.plan.template.kind == TemplateKind::Options {
                self.learn_init_time(exporter, domain, b);
                continue;
            }
            // Plans are shared (Arc) per template: their address names the template.
            let id = std::sync::Arc::as_ptr(&b.plan) as usize;
            let roles = match self.roles.get(&id) {
                Some((_, r)) => r.clone(),
                None => {
                    // An input that redefines its templates all the time must not keep every
                    // plan alive: past a bound, the roles are worked out again.
                    if self.roles.len() >= MAX_ROLES {
                        self.roles.clear();
                    }
                    let r = std::sync::Arc::new(self.roles_of(b));
                    self.roles.insert(id, (b.plan.clone(), r.clone()));
                    r
                }
            };
            let init = self
                .init_times
                .get(exporter)
                .and_then(|d| d.get(&domain))
                .copied();
            let cols = Cols {
                octets: roles.octets.iter().map(|f| b.column(*f)).collect(),
                packets: roles.packets.iter().map(|f| b.column(*f)).collect(),
                flows: roles.flows.map(|f| b.column(f)),
                key: roles.key.map(|f| (f, b.column(f))),
                times: roles.times.columns(b),
            };
            for r in rows(k, b.len()) {
                self.record(exporter, msg, b, &cols, r, init);
                if self.error.is_some() {
                    return;
                }
            }
        }
    }

    /// An options record's systemInitTimeMilliseconds: what the exporter's flowStartSysUpTime
    /// and flowEndSysUpTime count from (RFC 7011 has no header uptime, unlike NetFlow v9).
    fn learn_init_time(&mut self, exporter: &str, domain: u32, b: &Batch) {
        if let Some(f) = b
            .plan
            .fields
            .iter()
            .position(|f| (f.spec.pen, f.spec.id) == (0, 160))
            && let Some(r) = b.len().checked_sub(1)
            && let Column::DateTimeMilliseconds(c) = b.column(f)
        {
            // Exporters (address:port) come and go in a live series: past a bound the init
            // times are learnt again.
            if self.init_times.len() >= MAX_ROLES && !self.init_times.contains_key(exporter) {
                self.init_times.clear();
            }
            self.init_times
                .entry(exporter.to_string())
                .or_default()
                .insert(domain, c[r]);
        }
    }

    fn roles_of(&self, b: &Batch) -> Roles {
        let mut roles = Roles::default();
        let key_ids: &[(u32, u16)] = match &self.opts.by {
            Some(KeySpec::Element { id, .. }) => std::slice::from_ref(id),
            Some(spec) => spec.elements(),
            None => &[],
        };
        for (f, pf) in b.plan.fields.iter().enumerate() {
            let id = (pf.spec.pen, pf.spec.id);
            if key_ids.contains(&id) && roles.key.is_none() {
                roles.key = Some(f);
            }
            match id {
                (0, 1) => roles.octets.push(f),
                (0, 2) => roles.packets.push(f),
                (REVERSE_PEN, 1) if !self.opts.forward_only => roles.octets.push(f),
                (REVERSE_PEN, 2) if !self.opts.forward_only => roles.packets.push(f),
                (0, 3) => roles.flows = Some(f),
                _ => roles.times.note(id, f),
            }
        }
        roles
    }

    fn record(
        &mut self,
        exporter: &str,
        msg: &DecodedMessage,
        b: &Batch,
        cols: &Cols<'_>,
        r: usize,
        init: Option<u64>,
    ) {
        let octets = sum(&cols.octets, r);
        let packets = sum(&cols.packets, r);
        let flows = cols.flows.map_or(1, |c| unsigned(c, r));
        let times = if self.opts.whole {
            Some(FlowTimes {
                start: 0,
                end: 0,
                approximate: false,
            })
        } else {
            cols.times.read(r, &msg.header, init)
        };
        let Some(FlowTimes {
            start,
            end,
            approximate,
        }) = times
        else {
            self.totals.untimed += 1;
            return;
        };
        // Times chrono cannot show (beyond year 262,000 or so) cannot be an interval's start.
        if !(SHOWN_MS.contains(&start) && SHOWN_MS.contains(&end)) {
            self.totals.untimed += 1;
            return;
        }
        let end = end.max(start);
        // An end exactly on a boundary is the end of the interval before it: nothing of the
        // flow is in the next one.
        let i0 = self.index(start);
        // The intervals after the first, in unsigned arithmetic (cheaper than a second
        // Euclidean division): `end - 1` is past the first interval's start.
        let i1 = if end > start {
            i0 + ((end - 1 - i0 * self.interval_ms as i64) as u64 / self.interval_ms) as i64
        } else {
            i0
        };
        if let Some((lo, hi)) = self.range
            && (i0 < lo || i1 > hi)
        {
            self.placement.out_of_range += 1;
            return;
        }
        self.placement.by_export_time += u64::from(approximate);
        let k = match &self.opts.by {
            None => self.intern(Key::All),
            // One exporter per message: its key is worked out once.
            Some(KeySpec::Exporter) => match self.exporter_key {
                Some(k) => k,
                None => {
                    let k = self.intern(Key::exporter(exporter));
                    self.exporter_key = Some(k);
                    k
                }
            },
            Some(spec) => match cols.key {
                // Integers, the common keys (ports, protocols), straight from their column,
                // and the small ones through a table instead of the map.
                Some((_, Column::U8(c))) => self.small_key(c[r].into()),
                Some((_, Column::U16(c))) => self.small_key(c[r]),
                Some((_, Column::U32(c))) => self.intern(Key::Unsigned(c[r].into())),
                Some((_, Column::U64(c))) => self.intern(Key::Unsigned(c[r])),
                Some((f, _)) => self.intern(Key::of(spec, b, &msg.buf, r, f)),
                None => self.intern(Key::Absent),
            },
        };
        self.totals.octets = self.totals.octets.saturating_add(octets);
        self.totals.packets = self.totals.packets.saturating_add(packets);
        self.totals.flows = self.totals.flows.saturating_add(flows);
        self.key_octets[k as usize] = self.key_octets[k as usize].saturating_add(octets);
        if (i1 - i0) as u64 >= MAX_FLOW_INTERVALS {
            self.error = Some(SeriesError::FlowTooLong(MAX_FLOW_INTERVALS));
            return;
        }
        if !self.widen(i0, i1) {
            return;
        }
        if i0 == i1 {
            self.add(k, i0, octets, packets, flows);
            return;
        }
        // The flow's overlap with its first and last intervals, in milliseconds; those between
        // are whole.
        let step = self.interval_ms;
        let w_first = ((i0 + 1) * step as i64 - start) as u64;
        let w_last = (end - i1 * step as i64) as u64;
        let mid = (i1 - i0 - 1) as u64;
        let o = Spread::new(octets, w_first, mid, step, w_last);
        let p = Spread::new(packets, w_first, mid, step, w_last);
        for n in 0..=(i1 - i0) as u64 {
            let f = if n == 0 { flows } else { 0 };
            self.add(k, i0 + n as i64, o.part(n), p.part(n), f);
        }
    }

    /// The key's number (a new one for a key not seen before; `other` past `max_keys`).
    fn intern(&mut self, key: Key) -> u32 {
        if let Some(k) = self.keys.get(&key) {
            return *k;
        }
        if self.names.len() >= self.opts.max_keys {
            if let Some(o) = self.overflow {
                return o;
            }
            let o = self.new_key(Key::Other);
            self.overflow = Some(o);
            return o;
        }
        self.new_key(key)
    }

    fn new_key(&mut self, key: Key) -> u32 {
        let k = self.names.len() as u32;
        self.keys.insert(key.clone(), k);
        self.names.push(key);
        self.key_octets.push(0);
        k
    }

    /// A 16-bit key's number, through a table (256 KiB, made on first use).
    fn small_key(&mut self, v: u16) -> u32 {
        if self.small.is_empty() {
            self.small = vec![u32::MAX; 1 << 16];
        }
        match self.small[v as usize] {
            u32::MAX => {
                let k = self.intern(Key::Unsigned(v.into()));
                self.small[v as usize] = k;
                k
            }
            k => k,
        }
    }

    fn index(&self, t_ms: i64) -> i64 {
        t_ms.div_euclid(self.interval_ms as i64)
    }

    /// Takes `[i0, i1]` into the range; false (and the build failed) past `max_intervals`.
    fn widen(&mut self, i0: i64, i1: i64) -> bool {
        let first = self.first.map_or(i0, |f| f.min(i0));
        let last = self.last.map_or(i1, |l| l.max(i1));
        if (last - first) as u64 >= self.opts.max_intervals {
            self.error = Some(SeriesError::TooManyIntervals(self.opts.max_intervals));
            return false;
        }
        self.first = Some(first);
        self.last = Some(last);
        self.touched = Some(
            self.touched
                .map_or((i0, i1), |(lo, hi)| (lo.min(i0), hi.max(i1))),
        );
        true
    }

    /// The intervals added to since the last call (first and last), forgotten.
    pub fn take_touched(&mut self) -> Option<(i64, i64)> {
        self.touched.take()
    }

    #[inline]
    fn add(&mut self, k: u32, i: i64, o: u64, p: u64, f: u64) {
        if let Some((k0, i0, c0)) = self.recent.add(k, i, o, p, f) {
            self.spill(k0, i0, c0);
        }
    }

    /// A cell's counts into the map (a new cell past `max_cells` fails the build).
    fn spill(&mut self, k: u32, i: i64, c: Counts) {
        if let Some(held) = self.cells.get_mut(&(k, i)) {
            held.add(c.octets, c.packets, c.flows);
            return;
        }
        if self.cells.len() >= self.opts.max_cells {
            self.error = Some(SeriesError::TooManyCells(self.opts.max_cells));
            return;
        }
        self.cells.insert((k, i), c);
    }

    /// Every recent cell into the map, before the map is read.
    fn settle(&mut self) {
        for (k, i, c) in self.recent.drain() {
            self.spill(k, i, c);
        }
    }

    /// What was approximated or left out so far.
    pub fn placement(&self) -> Placement {
        self.placement
    }

    /// No cell held.
    pub fn is_empty(&self) -> bool {
        self.cells.is_empty() && self.recent.is_empty()
    }

    /// The error that stopped the build, taken: a live series drops the record that caused it
    /// and goes on, where a file's run stops.
    pub fn take_error(&mut self) -> Option<SeriesError> {
        self.error.take()
    }

    /// A live series: records must fall in intervals `lo..=hi` (by their start and end), else
    /// they are counted in `placement.out_of_range` and left out.
    pub fn set_range(&mut self, lo: i64, hi: i64) {
        self.range = Some((lo, hi));
    }

    /// A live series forgets the intervals before `i`, and the keys that no longer have a cell
    /// (so that `max_keys` counts the keys of the intervals held, not of all time).
    pub fn evict_before(&mut self, i: i64) {
        self.settle();
        self.cells.retain(|(_, ci), _| *ci >= i);
        match self.last {
            Some(l) if l >= i => self.first = self.first.map(|f| f.max(i)),
            _ => (self.first, self.last) = (None, None),
        }
        let mut used = vec![false; self.names.len()];
        for (k, _) in self.cells.keys() {
            used[*k as usize] = true;
        }
        if used.iter().all(|u| *u) {
            return;
        }
        let mut renumber = vec![u32::MAX; self.names.len()];
        let (names, octets) = (
            std::mem::take(&mut self.names),
            std::mem::take(&mut self.key_octets),
        );
        self.keys.clear();
        for (old, (name, o)) in names.into_iter().zip(octets).enumerate() {
            if used[old] {
                renumber[old] = self.names.len() as u32;
                self.keys.insert(name.clone(), self.names.len() as u32);
                self.names.push(name);
                self.key_octets.push(o);
            }
        }
        self.cells = std::mem::take(&mut self.cells)
            .into_iter()
            .map(|((k, ci), c)| ((renumber[k as usize], ci), c))
            .collect();
        self.small.clear();
        self.exporter_key = None;
        self.overflow = self.keys.get(&Key::Other).copied();
    }

    /// The cells of intervals `from..=to`, by key name (what nodes send each other to merge).
    pub fn window(&self, from: i64, to: i64) -> Cells {
        let mut out = Cells {
            interval_secs: self.opts.interval_secs,
            by: self.opts.by.as_ref().map(KeySpec::label),
            ..Cells::default()
        };
        let mut slot = vec![u32::MAX; self.names.len()];
        // A recent cell may repeat one of the map: the parts of a cell add up wherever cells
        // are read (`Cells::assemble`).
        for (k, i, c) in self
            .cells
            .iter()
            .map(|((k, i), c)| (k, i, c))
            .chain(self.recent.iter())
        {
            if !(from..=to).contains(i) {
                continue;
            }
            let s = &mut slot[*k as usize];
            if *s == u32::MAX {
                *s = out.keys.len() as u32;
                out.keys.push(self.names[*k as usize].to_string());
            }
            out.cells.push((*s, *i, *c));
        }
        out.placement = self.placement;
        out
    }

    /// The series: the top keys by octets (ties by key), then `other` when there are more.
    pub fn finish(mut self) -> Result<SeriesSet, SeriesError> {
        self.settle();
        if let Some(e) = self.error {
            return Err(e);
        }
        let (first, last) = match (self.first, self.last) {
            (Some(f), Some(l)) => (f, l),
            _ => (0, -1),
        };
        let n = (last - first + 1).max(0) as usize;
        // The dense series are intervals x series cells: bounded as the sparse ones are.
        let wanted = if self.opts.by.is_none() {
            1
        } else {
            self.opts.top.min(self.names.len()) + 1
        };
        if n.saturating_mul(wanted) > self.opts.max_cells {
            return Err(SeriesError::TooManyCells(self.opts.max_cells));
        }
        let mut order: Vec<u32> = (0..self.names.len() as u32).collect();
        order.sort_by(|a, b| {
            self.key_octets[*b as usize]
                .cmp(&self.key_octets[*a as usize])
                .then_with(|| self.names[*a as usize].cmp(&self.names[*b as usize]))
        });
        let top = if self.opts.by.is_none() {
            order.len()
        } else {
            self.opts.top.min(order.len())
        };
        let mut slot = vec![top; self.names.len()];
        for (s, k) in order.iter().take(top).enumerate() {
            slot[*k as usize] = s;
        }
        let others = order.len() > top;
        let mut series: Vec<Series> = order
            .iter()
            .take(top)
            .map(|k| Series::new(self.names[*k as usize].to_string(), n))
            .collect();
        if others {
            series.push(Series::new("other".into(), n));
        }
        for ((k, i), c) in self.cells {
            let s = &mut series[slot[k as usize]];
            let at = (i - first) as usize;
            s.octets[at] = s.octets[at].saturating_add(c.octets);
            s.packets[at] = s.packets[at].saturating_add(c.packets);
            s.flows[at] = s.flows[at].saturating_add(c.flows);
        }
        Ok(SeriesSet {
            interval_secs: self.opts.interval_secs,
            by: self.opts.by.as_ref().map(KeySpec::label),
            first_interval: first,
            intervals: n,
            series,
            totals: self.totals,
            placement: self.placement,
        })
    }
}

#[inline]
fn sum(cols: &[Column<'_>], r: usize) -> u64 {
    cols.iter()
        .fold(0u64, |s, c| s.saturating_add(unsigned(*c, r)))
}

#[inline]
fn unsigned(c: Column<'_>, r: usize) -> u64 {
    match c {
        Column::U8(c) => c[r] as u64,
        Column::U16(c) => c[r] as u64,
        Column::U32(c) => c[r] as u64,
        Column::U64(c) => c[r],
        _ => 0,
    }
}

/// A counter spread over the intervals a flow spans, in whole units by the largest-remainder
/// method: each part gets the floor of its share of the flow's duration, and the units left
/// over go to the largest remainders (the earliest part on a tie), so the parts add up to the
/// counter exactly.
///
/// The parts between the first and the last are whole intervals of one weight, so they share
/// one quotient and one remainder: the spread is worked out in three divisions, however many
/// intervals the flow spans, and each part is read back in constant time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spread {
    first: u64,
    mid: u64,
    /// The whole intervals (parts `1..=mid_units`) that got a unit more than the others.
    mid_units: u64,
    mid_count: u64,
    last: u64,
}

impl Spread {
    /// `value` over a first part of weight `w_first`, `mid_count` parts of weight `step`, and
    /// a last part of weight `w_last` (all weights in the same unit, the first and last above
    /// zero: a flow's overlaps in milliseconds).
    #[inline]
    pub fn new(value: u64, w_first: u64, mid_count: u64, step: u64, w_last: u64) -> Spread {
        // A flow's duration in milliseconds: it fits in 64 bits, and so does every remainder.
        let total = w_first
            .saturating_add(mid_count.saturating_mul(step))
            .saturating_add(w_last)
            .max(1);
        let share = |w: u64| -> (u64, u64) {
            match value.checked_mul(w) {
                Some(x) => (x / total, x % total),
                // Counters past 2^64 / the weight (213 GB a flow at a day's interval): 128-bit,
                // several times slower.
                None => {
                    let x = value as u128 * w as u128;
                    ((x / total as u128) as u64, (x % total as u128) as u64)
                }
            }
        };
        let (first, r_first) = share(w_first);
        let (mid, r_mid) = if mid_count > 0 { share(step) } else { (0, 0) };
        // The last part's share without its division: value x w_last is value x total less
        // the other parts' products, (value - first - mid_count x mid) x total less the sum of
        // their remainders.
        let (last, r_last) = match mid_count
            .checked_mul(r_mid)
            .and_then(|r| r.checked_add(r_first))
        {
            Some(r) => {
                let (borrow, r_last) = match (r / total, r % total) {
                    (d, 0) => (d, 0),
                    (d, rem) => (d + 1, total - rem),
                };
                let whole = value
                    .saturating_sub(first)
                    .saturating_sub(mid.saturating_mul(mid_count));
                (whole.saturating_sub(borrow), r_last)
            }
            None => share(w_last),
        };
        // The floors add up to at most `value`: what is left is below the number of parts.
        let left = value
            .saturating_sub(first)
            .saturating_sub(mid.saturating_mul(mid_count))
            .saturating_sub(last);
        // The units go to the larger remainders first; on a tie to the earlier group (first,
        // whole ones, last), and within the whole ones to the earlier part. A group gets what
        // the groups served before it leave.
        let before_first = mid_count * u64::from(r_mid > r_first) + u64::from(r_last > r_first);
        let before_mid = u64::from(r_first >= r_mid) + u64::from(r_last > r_mid);
        let before_last = u64::from(r_first >= r_last) + mid_count * u64::from(r_mid >= r_last);
        Spread {
            first: first + u64::from(before_first < left),
            mid,
            mid_units: left.saturating_sub(before_mid).min(mid_count),
            mid_count,
            last: last + u64::from(before_last < left),
        }
    }

    /// Part `n` (0 the first, `mid_count + 1` the last).
    pub fn part(&self, n: u64) -> u64 {
        if n == 0 {
            self.first
        } else if n <= self.mid_count {
            self.mid + u64::from(n <= self.mid_units)
        } else {
            self.last
        }
    }
}

/// Cells of some intervals by key name: a live series' window, from one node or merged from
/// several (bincode between nodes: keys as text, so that nodes' key numbers need not agree).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Cells {
    pub interval_secs: u64,
    pub by: Option<String>,
    pub keys: Vec<String>,
    /// (index into `keys`, interval, counts).
    pub cells: Vec<(u32, i64, Counts)>,
    #[serde(skip)]
    pub placement: Placement,
}

impl Cells {
    /// The cells of each interval apart (keys numbered afresh in each), by interval.
    pub fn by_interval(&self) -> std::collections::BTreeMap<i64, Cells> {
        let mut out: std::collections::BTreeMap<i64, (Cells, Vec<u32>)> = Default::default();
        for (k, i, c) in &self.cells {
            let (part, slot) = out.entry(*i).or_insert_with(|| {
                (
                    Cells {
                        interval_secs: self.interval_secs,
                        by: self.by.clone(),
                        ..Cells::default()
                    },
                    vec![u32::MAX; self.keys.len()],
                )
            });
            let Some(s) = slot.get_mut(*k as usize) else {
                continue;
            };
            if *s == u32::MAX {
                *s = part.keys.len() as u32;
                part.keys.push(self.keys[*k as usize].clone());
            }
            part.cells.push((*s, *i, *c));
        }
        out.into_iter().map(|(i, (c, _))| (i, c)).collect()
    }

    /// Adds another node's cells (the same interval and key).
    pub fn merge(&mut self, other: Cells) {
        let mut index: FxHashMap<String, u32> = self
            .keys
            .iter()
            .enumerate()
            .map(|(n, k)| (k.clone(), n as u32))
            .collect();
        let renumber: Vec<u32> = other
            .keys
            .into_iter()
            .map(|k| {
                let next = index.len() as u32;
                *index.entry(k.clone()).or_insert_with(|| {
                    self.keys.push(k);
                    next
                })
            })
            .collect();
        for (k, i, c) in other.cells {
            if let Some(k) = renumber.get(k as usize) {
                self.cells.push((*k, i, c));
            }
        }
    }

    /// The series of intervals `from..=to` (every one, empty ones as zeros): the `top` keys by
    /// octets over them (ties by name), then `other` (with the keys past a node's bound).
    pub fn assemble(&self, from: i64, to: i64, top: usize) -> SeriesSet {
        let n = (to - from + 1).max(0) as usize;
        let mut octets = vec![0u64; self.keys.len()];
        let mut seen = vec![false; self.keys.len()];
        for (k, i, c) in &self.cells {
            if (from..=to).contains(i) {
                octets[*k as usize] = octets[*k as usize].saturating_add(c.octets);
                seen[*k as usize] = true;
            }
        }
        // A node's `other` (keys past its bound) goes into the merged `other`.
        let other = self.keys.iter().position(|k| k == "other");
        let mut order: Vec<usize> = (0..self.keys.len())
            .filter(|k| seen[*k] && Some(*k) != other)
            .collect();
        order.sort_by(|a, b| {
            octets[*b]
                .cmp(&octets[*a])
                .then_with(|| self.keys[*a].cmp(&self.keys[*b]))
        });
        let top = if self.by.is_none() {
            order.len()
        } else {
            top.min(order.len())
        };
        let mut slot = vec![top; self.keys.len()];
        for (s, k) in order.iter().take(top).enumerate() {
            slot[*k] = s;
        }
        let mut series: Vec<Series> = order
            .iter()
            .take(top)
            .map(|k| Series::new(self.keys[*k].clone(), n))
            .collect();
        if order.len() > top || other.is_some_and(|o| seen[o]) {
            series.push(Series::new("other".into(), n));
        }
        let mut totals = Totals::default();
        for (k, i, c) in &self.cells {
            if !(from..=to).contains(i) {
                continue;
            }
            let Some(s) = series.get_mut(slot[*k as usize]) else {
                continue;
            };
            let at = (i - from) as usize;
            s.octets[at] = s.octets[at].saturating_add(c.octets);
            s.packets[at] = s.packets[at].saturating_add(c.packets);
            s.flows[at] = s.flows[at].saturating_add(c.flows);
            totals.octets = totals.octets.saturating_add(c.octets);
            totals.packets = totals.packets.saturating_add(c.packets);
            totals.flows = totals.flows.saturating_add(c.flows);
        }
        SeriesSet {
            interval_secs: self.interval_secs,
            by: self.by.clone(),
            first_interval: from,
            intervals: n,
            series,
            totals,
            placement: self.placement,
        }
    }
}

/// One key's series.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Series {
    pub key: String,
    pub octets: Vec<u64>,
    pub packets: Vec<u64>,
    pub flows: Vec<u64>,
}

impl Series {
    fn new(key: String, n: usize) -> Series {
        Series {
            key,
            octets: vec![0; n],
            packets: vec![0; n],
            flows: vec![0; n],
        }
    }
}

/// The finished series, all over the same intervals.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesSet {
    pub interval_secs: u64,
    pub by: Option<String>,
    /// The first interval's index (its start is `index x interval` since the epoch).
    pub first_interval: i64,
    pub intervals: usize,
    pub series: Vec<Series>,
    pub totals: Totals,
    pub placement: Placement,
}

impl SeriesSet {
    /// Each interval's start, in Unix seconds.
    pub fn starts(&self) -> impl Iterator<Item = i64> + '_ {
        (0..self.intervals as i64)
            .map(move |n| (self.first_interval + n) * self.interval_secs as i64)
    }

    /// The sum of every series: equal to the totals (less what was untimed).
    pub fn sums(&self) -> Counts {
        let mut c = Counts::default();
        for s in &self.series {
            c.add(
                s.octets.iter().sum(),
                s.packets.iter().sum(),
                s.flows.iter().sum(),
            );
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Registry;
    use crate::wire::decoder::{Decoder, DecoderOptions};
    use crate::wire::encode::{FieldValue, MessageBuilder};
    use crate::wire::plan::Plan;
    use crate::wire::template::{FieldSpec, Template};

    /// (destination port, octets, packets, reverse octets, reverse packets, start, end ms);
    /// a start of `None` is a record with no time.
    type Flow = (u16, u64, u64, u64, u64, Option<(u64, u64)>);

    fn messages(flows: &[Flow]) -> Vec<DecodedMessage> {
        let reg = Registry::builtin();
        let timed = Template::data(
            256,
            vec![
                FieldSpec::new(11, 0, 2),
                FieldSpec::new(1, 0, 8),
                FieldSpec::new(2, 0, 4),
                FieldSpec::new(1, REVERSE_PEN, 8),
                FieldSpec::new(2, REVERSE_PEN, 8),
                FieldSpec::new(152, 0, 8),
                FieldSpec::new(153, 0, 8),
            ],
        );
        let untimed = Template::data(257, vec![FieldSpec::new(11, 0, 2), FieldSpec::new(1, 0, 8)]);
        let (pt, pu) = (
            Plan::compile(timed.clone(), &reg),
            Plan::compile(untimed.clone(), &reg),
        );
        let mut mb = MessageBuilder::new(1, 65535);
        mb.add_template(&timed).expect("template");
        mb.add_template(&untimed).expect("template");
        for &(port, o, p, ro, rp, times) in flows {
            let u = |v: u64| FieldValue::Unsigned(v);
            match times {
                Some((s, e)) => mb.add_record(
                    &pt,
                    &[
                        u(port.into()),
                        u(o),
                        u(p),
                        u(ro),
                        u(rp),
                        FieldValue::DateTimeMilliseconds(s),
                        FieldValue::DateTimeMilliseconds(e),
                    ],
                ),
                None => mb.add_record(&pu, &[u(port.into()), u(o)]),
            }
            .expect("record");
        }
        mb.flush();
        let mut d = Decoder::new(reg, DecoderOptions::default());
        mb.take_ready()
            .into_iter()
            .map(|m| d.decode(bytes::Bytes::from(m)).expect("decodes"))
            .collect()
    }

    fn build(flows: &[Flow], opts: Options) -> SeriesSet {
        let mut b = Builder::new(opts).expect("options");
        for m in messages(flows) {
            b.message("192.0.2.1:4739", &m);
        }
        b.finish().expect("series")
    }

    const CRAFTED: [Flow; 5] = [
        // 30 s to 150 s: 30, 60 and 30 s in intervals 0, 1, 2 of 60 s.
        (80, 1000, 10, 0, 0, Some((30_000, 150_000))),
        // An instant flow: wholly in interval 1.
        (443, 7, 1, 0, 0, Some((65_000, 65_000))),
        // A biflow: both directions count.
        (53, 100, 1, 50, 1, Some((125_000, 125_000))),
        // No time at all.
        (22, 10, 1, 0, 0, None),
        // Ends exactly on a boundary: nothing of it in the next interval.
        (8080, 3, 1, 0, 0, Some((0, 60_000))),
    ];

    fn port_key(reg: &Registry) -> Option<KeySpec> {
        Some(KeySpec::parse("destinationTransportPort", reg).expect("key"))
    }

    fn live(max_keys: usize) -> Builder {
        let reg = Registry::builtin();
        Builder::new(Options {
            by: port_key(&reg),
            max_keys,
            top: usize::MAX,
            ..Options::default()
        })
        .expect("options")
    }

    /// A live series: records outside its range are counted out, keys past the bound go to
    /// `other`, and forgetting intervals forgets the keys only they held.
    #[test]
    fn a_live_range_keeps_its_keys_bounded_and_forgets() {
        let mut b = live(2);
        b.set_range(1, 3);
        let flows = [
            (80, 1000, 10, 0, 0, Some((90_000, 210_000))),
            (443, 7, 1, 0, 0, Some((125_000, 125_000))),
            // A third key: past max_keys, into `other`.
            (53, 100, 1, 0, 0, Some((185_000, 185_000))),
            // After the range (interval 4): left out.
            (22, 5, 1, 0, 0, Some((240_000, 240_000))),
            // Before it (interval 0).
            (25, 5, 1, 0, 0, Some((30_000, 30_000))),
        ];
        for m in messages(&flows) {
            b.message("192.0.2.1:4739", &m);
        }
        assert_eq!(b.placement().out_of_range, 2);
        let set = b.window(1, 3).assemble(1, 3, 10);
        let keys: Vec<&str> = set.series.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(keys, ["80", "443", "other"]);
        assert_eq!(set.series[0].octets, [250, 500, 250]);
        assert_eq!(set.series[2].octets, [0, 0, 100]);
        assert_eq!(set.totals.octets, 1107);
        // `top` cuts to one key: the rest (443 and the node's `other`) add up in `other`.
        let one = b.window(1, 3).assemble(1, 3, 1);
        assert_eq!(one.series.len(), 2);
        assert_eq!(one.series[1].octets, [0, 7, 100]);
        // Forgetting interval 1: key 80 keeps its cells in 2 and 3.
        b.evict_before(2);
        let w = b.window(i64::MIN, i64::MAX);
        assert!(w.cells.iter().all(|(_, i, _)| *i >= 2), "{w:?}");
        // Forgetting interval 2 forgets 443, which only it held.
        b.evict_before(3);
        let mut keys = b.window(i64::MIN, i64::MAX).keys;
        keys.sort();
        assert_eq!(keys, ["80", "other"]);
        b.evict_before(4);
        assert!(b.window(i64::MIN, i64::MAX).cells.is_empty());
        // With every key forgotten, a new one has a place of its own again.
        b.set_range(4, 6);
        for m in messages(&[(9, 1, 1, 0, 0, Some((250_000, 250_000)))]) {
            b.message("192.0.2.1:4739", &m);
        }
        assert_eq!(b.window(4, 6).keys, ["9"]);
    }

    /// Nodes' cells merged add up to the cells of one builder that saw every record.
    #[test]
    fn merged_cells_equal_one_builder_of_everything() {
        let (a_flows, b_flows) = (&CRAFTED[..2], &CRAFTED[2..]);
        let (mut a, mut b, mut all) = (live(100), live(100), live(100));
        for (builder, flows) in [(&mut a, a_flows), (&mut b, b_flows)] {
            for m in messages(flows) {
                builder.message("192.0.2.1:4739", &m);
            }
        }
        for m in messages(&CRAFTED) {
            all.message("192.0.2.1:4739", &m);
        }
        let mut merged = a.window(0, 2);
        merged.merge(b.window(0, 2));
        assert_eq!(merged.assemble(0, 2, 3), all.window(0, 2).assemble(0, 2, 3));
        // And the live assembly of a whole run is what a run of the file gives.
        let reg = Registry::builtin();
        let file = build(
            &CRAFTED,
            Options {
                by: port_key(&reg),
                top: 3,
                ..Options::default()
            },
        );
        let live_set = all.window(0, 2).assemble(0, 2, 3);
        assert_eq!(live_set.series, file.series);
        assert_eq!(
            (
                live_set.totals.octets,
                live_set.totals.packets,
                live_set.totals.flows
            ),
            (file.totals.octets, file.totals.packets, file.totals.flows)
        );
    }

    #[test]
    fn flows_are_spread_over_intervals_with_parts_that_add_up() {
        let reg = Registry::builtin();
        let set = build(
            &CRAFTED,
            Options {
                by: port_key(&reg),
                top: 2,
                ..Options::default()
            },
        );
        assert_eq!(set.first_interval, 0);
        assert_eq!(set.intervals, 3);
        assert_eq!(set.starts().collect::<Vec<_>>(), vec![0, 60, 120]);
        type Row<'a> = (&'a str, &'a [u64], &'a [u64], &'a [u64]);
        let by_key: Vec<Row> = set
            .series
            .iter()
            .map(|s| (s.key.as_str(), &s.octets[..], &s.packets[..], &s.flows[..]))
            .collect();
        assert_eq!(
            by_key,
            vec![
                // 1000 x 30/120, 60/120, 30/120; 10 packets: 2.5, 5, 2.5, the unit left to
                // the earliest of the tied remainders.
                ("80", &[250, 500, 250][..], &[3, 5, 2][..], &[1, 0, 0][..]),
                ("53", &[0, 0, 150][..], &[0, 0, 2][..], &[0, 0, 1][..]),
                // 443 and 8080, past the top 2.
                ("other", &[3, 7, 0][..], &[1, 1, 0][..], &[1, 1, 0][..]),
            ]
        );
        assert_eq!(
            set.totals,
            Totals {
                octets: 1160,
                packets: 14,
                flows: 4,
                untimed: 1
            }
        );
        let sums = set.sums();
        assert_eq!(
            (sums.octets, sums.packets, sums.flows),
            (1160, 14, 4),
            "the series add up to the totals"
        );
    }

    #[test]
    fn forward_only_leaves_the_reverse_direction_out() {
        let set = build(
            &CRAFTED,
            Options {
                forward_only: true,
                ..Options::default()
            },
        );
        assert_eq!(set.series.len(), 1);
        assert_eq!(set.series[0].key, "total");
        assert_eq!(set.series[0].octets, vec![253, 507, 350]);
        assert_eq!(set.totals.octets, 1110);
        assert_eq!(set.totals.packets, 13);
    }

    #[test]
    fn intervals_align_to_the_epoch_and_far_off_times_are_refused() {
        // 90 s to 100 s with 60 s intervals: the interval starting at 60 s, whatever the first
        // record's time.
        let set = build(
            &[(1, 5, 1, 0, 0, Some((90_000, 100_000)))],
            Options::default(),
        );
        assert_eq!(set.starts().collect::<Vec<_>>(), vec![60]);
        let mut b = Builder::new(Options {
            max_intervals: 1000,
            ..Options::default()
        })
        .expect("options");
        // Two instant flows, 1970 and 2026, at 60 s: 29 million intervals apart.
        for m in messages(&[
            (1, 5, 1, 0, 0, Some((0, 0))),
            (1, 5, 1, 0, 0, Some((1_764_500_000_000, 1_764_500_000_000))),
        ]) {
            b.message("x", &m);
        }
        assert_eq!(b.finish(), Err(SeriesError::TooManyIntervals(1000)));
        // One flow from 1970 to 2026: refused before its parts are worked out one by one.
        let mut b = Builder::new(Options::default()).expect("options");
        for m in messages(&[(1, 5, 1, 0, 0, Some((0, 1_764_500_000_000)))]) {
            b.message("x", &m);
        }
        assert_eq!(
            b.finish(),
            Err(SeriesError::FlowTooLong(MAX_FLOW_INTERVALS))
        );
        assert_eq!(
            Builder::new(Options {
                interval_secs: 0,
                ..Options::default()
            })
            .err(),
            Some(SeriesError::Interval(0))
        );
    }

    #[test]
    fn a_flow_ending_on_a_boundary_takes_no_interval_after_it() {
        let set = build(
            &[(1, 9, 3, 0, 0, Some((30_000, 60_000)))],
            Options::default(),
        );
        assert_eq!(set.intervals, 1);
        assert_eq!(set.series[0].octets, vec![9]);
    }

    #[test]
    fn netflow_v9_uptimes_that_wrapped_are_placed_before_the_export() {
        let reg = Registry::builtin();
        let t = Template::data(
            256,
            vec![
                FieldSpec::new(1, 0, 8),
                FieldSpec::new(22, 0, 4),
                FieldSpec::new(21, 0, 4),
            ],
        );
        let plan = Plan::compile(t.clone(), &reg);
        let mut mb = MessageBuilder::new(1, 65535);
        mb.add_template(&t).expect("template");
        // Started 4,294,000,000 ms of uptime, ended at 500: the uptime wrapped in between.
        mb.add_record(
            &plan,
            &[
                FieldValue::Unsigned(10),
                FieldValue::Unsigned(4_294_000_000),
                FieldValue::Unsigned(500),
            ],
        )
        .expect("record");
        mb.flush();
        let mut d = Decoder::new(reg, DecoderOptions::default());
        let mut msg = d
            .decode(bytes::Bytes::from(mb.take_ready().remove(0)))
            .expect("decodes");
        // As NetFlow v9's header says: uptime 1,000 ms at export time 1,000,000 s.
        msg.header.export_time = 1_000_000;
        msg.header.sys_uptime_ms = Some(1_000);
        let mut b = Builder::new(Options {
            interval_secs: 3600,
            ..Options::default()
        })
        .expect("options");
        b.message("x", &msg);
        let set = b.finish().expect("series");
        // Ended 0.5 s before the export, started 967,796 ms before the end: within the hour
        // before the export, not 49.7 days after it.
        let export = 1_000_000i64;
        let starts: Vec<i64> = set.starts().collect();
        assert!(
            starts
                .iter()
                .all(|s| *s <= export && *s > export - 2 * 3600),
            "{starts:?}"
        );
        assert_eq!(set.sums().octets, 10);
    }

    #[test]
    fn the_dense_series_are_bounded_and_other_saturates() {
        let reg = Registry::builtin();
        // Two flows 10,000 minutes apart, 50 ports, top 40: 10,001 intervals x 41 series.
        let mut flows: Vec<Flow> = (0..50u16).map(|p| (p, 1, 1, 0, 0, Some((0, 0)))).collect();
        flows.push((1, 1, 1, 0, 0, Some((600_000_000, 600_000_000))));
        let mut b = Builder::new(Options {
            by: port_key(&reg),
            top: 40,
            max_cells: 100_000,
            ..Options::default()
        })
        .expect("options");
        for m in messages(&flows) {
            b.message("x", &m);
        }
        assert_eq!(b.finish(), Err(SeriesError::TooManyCells(100_000)));
        // Three ports of 2^63 octets each in one interval, two of them in `other`.
        let big = 1u64 << 63;
        let set = build(
            &[
                (1, big, 1, 0, 0, Some((0, 0))),
                (2, big, 1, 0, 0, Some((0, 0))),
                (3, big, 1, 0, 0, Some((0, 0))),
            ],
            Options {
                by: port_key(&reg),
                top: 1,
                ..Options::default()
            },
        );
        assert_eq!(set.series[1].key, "other");
        assert_eq!(set.series[1].octets, vec![u64::MAX]);
    }

    #[test]
    fn cells_past_the_bound_fail_the_build() {
        let flows: Vec<Flow> = (0..50u16).map(|p| (p, 1, 1, 0, 0, Some((0, 0)))).collect();
        let reg = Registry::builtin();
        let mut b = Builder::new(Options {
            by: port_key(&reg),
            max_cells: 10,
            ..Options::default()
        })
        .expect("options");
        for m in messages(&flows) {
            b.message("x", &m);
        }
        assert_eq!(b.finish(), Err(SeriesError::TooManyCells(10)));
    }

    /// The reference: exact division, a full sort of the remainders.
    fn apportion_exact(value: u64, parts: &[(i64, u64)], total: u64) -> Vec<u64> {
        if total == 0 {
            let mut out = vec![0; parts.len()];
            out[0] = value;
            return out;
        }
        let mut out = Vec::new();
        let mut rems = Vec::new();
        for (n, (_, w)) in parts.iter().enumerate() {
            let x = value as u128 * *w as u128;
            out.push((x / total as u128) as u64);
            rems.push(((x % total as u128) as u64, n));
        }
        let left = value - out.iter().sum::<u64>();
        rems.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        for (_, n) in rems.into_iter().take(left as usize) {
            out[n] += 1;
        }
        out
    }

    /// A spread's parts, as a list.
    fn parts_of(sp: &Spread, n: u64) -> Vec<u64> {
        (0..n).map(|i| sp.part(i)).collect()
    }

    proptest::proptest! {
        #[test]
        fn a_spread_is_exact_largest_remainder(
            value in proptest::prop_oneof![0u64..1_000_000, 0u64..=u64::MAX],
            // Small weights as well, for ties between remainders.
            w_first in proptest::prop_oneof![1u64..4, 1u64..200_000],
            mid in 0u64..40,
            step in proptest::prop_oneof![1u64..4, 1u64..200_000],
            w_last in proptest::prop_oneof![1u64..4, 1u64..200_000],
        ) {
            let w_first = w_first.min(step);
            let w_last = w_last.min(step);
            let mut parts = vec![(0, w_first)];
            parts.extend((1..=mid).map(|i| (i as i64, step)));
            parts.push((mid as i64 + 1, w_last));
            let total = w_first + mid * step + w_last;
            let got = parts_of(&Spread::new(value, w_first, mid, step, w_last), mid + 2);
            proptest::prop_assert_eq!(&got, &apportion_exact(value, &parts, total));
            proptest::prop_assert_eq!(got.iter().map(|p| *p as u128).sum::<u128>(), value as u128);
        }
    }

    #[test]
    fn the_times_shown_are_those_chrono_can_show() {
        for ms in [*SHOWN_MS.start(), *SHOWN_MS.end()] {
            assert!(chrono::DateTime::from_timestamp_millis(ms).is_some());
        }
        for ms in [SHOWN_MS.start() - 1, SHOWN_MS.end() + 1, i64::MIN, i64::MAX] {
            assert!(chrono::DateTime::from_timestamp_millis(ms).is_none());
        }
    }

    #[test]
    fn spread_parts_add_up_and_follow_the_largest_remainders() {
        // 10 over thirds: 3.33 each; the one unit left goes to the first.
        assert_eq!(parts_of(&Spread::new(10, 1, 1, 1, 1), 3), vec![4, 3, 3]);
        // 7 over 1:2:4 of 7 ms: exact (a whole interval of 2 between partial ones).
        assert_eq!(parts_of(&Spread::new(7, 1, 1, 2, 4), 3), vec![1, 2, 4]);
        // 5 over 3 and 7 of 10: 1.5 and 3.5; one unit left, a tie: the earliest.
        assert_eq!(parts_of(&Spread::new(5, 3, 0, 10, 7), 2), vec![2, 3]);
        // 12 over 1, four whole intervals of 2, and 1 (10 ms): 1.2, 2.4 x 4, 1.2; the two
        // units left go to the earliest whole intervals (remainder 0.4 beats 0.2).
        assert_eq!(
            parts_of(&Spread::new(12, 1, 4, 2, 1), 6),
            vec![1, 3, 3, 2, 2, 1]
        );
        // Large values do not overflow.
        let v = u64::MAX / 2;
        let p = parts_of(&Spread::new(v, 1, 0, 2, 2), 2);
        assert_eq!(p.iter().map(|p| *p as u128).sum::<u128>(), v as u128);
    }
}
