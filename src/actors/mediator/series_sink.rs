//! The `timeseries` sink: the stream's records become live series, one per tenant (a stream of
//! the configuration may take several tenants' records), answered by `GET
//! /api/v1/tenants/{tenant}/timeseries` through the mediator. Each node keeps what its own
//! sessions collected. In memory (the default), a query merges the nodes' cells
//! (`SessionDirectory`). With `store = "redis"`, the sink also writes the cells it changed to
//! the store every second (`crate::store::series`), and a query reads every other writer's
//! cells from there: the series outlive a node's restart and need no other node to answer.

use super::StreamStats;
use crate::analysis::live::{AHEAD_MS, LiveOptions, LiveSeries};
use crate::analysis::series::Cells;
use crate::mediation::Records;
use crate::store::StoreError;
use crate::store::series::{SeriesKey, SeriesStore};
use crate::wire::Registry;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often a sink writes the cells it changed to the store.
pub const WRITE_EVERY: Duration = Duration::from_secs(1);

/// A store write that failed is warned about at most this often (the next writes carry on).
const WARN_EVERY: Duration = Duration::from_secs(30);

/// Beyond the retention, how long the store keeps an interval after its last write: the five
/// minutes ahead a record may reach, and a little more.
const STORE_MARGIN_SECS: u64 = 360;

/// Tenants one sink keeps series of at most (a configuration stream with no tenant list takes
/// every tenant's records): each is bounded in keys and intervals, this bounds their number.
pub const MAX_TENANTS: usize = 1000;

pub struct SeriesSink {
    opts: LiveOptions,
    registry: Arc<Registry>,
    tenants: HashMap<String, LiveSeries>,
    /// Records left out (a tenant past `MAX_TENANTS`, a time outside the range, a bound
    /// reached) are the stream's `dropped`: not written anywhere.
    stats: Arc<StreamStats>,
    /// With `store = "redis"`.
    keeper: Option<Keeper>,
}

/// Per tenant, a range of intervals changed (first and last).
type Changed = HashMap<String, (i64, i64)>;

/// The cells to write, by Redis key, and where.
struct Writes {
    store: Arc<SeriesStore>,
    stream: String,
    writer: String,
    puts: Vec<(String, Cells)>,
    ttl: u64,
}

impl Writes {
    /// The cells in parts of [`KEYS_PER_WRITE`] hashes, each with the writer's state (written
    /// up to now, or closed; nothing changed: the state alone).
    async fn run(self, closed: bool) -> Result<(), StoreError> {
        let parts: Vec<&[(String, Cells)]> = if self.puts.is_empty() {
            vec![&[]]
        } else {
            self.puts.chunks(KEYS_PER_WRITE).collect()
        };
        for part in parts {
            self.store
                .put(&self.stream, &self.writer, part, closed, self.ttl)
                .await?;
        }
        Ok(())
    }
}

/// What a sink with `store = "redis"` writes, and where.
struct Keeper {
    store: Arc<SeriesStore>,
    /// The stream's name in the store's keys.
    stream: String,
    /// This sink's field in the store's hashes: a new one each time a sink is made, so that
    /// what an earlier sink (before a restart) wrote stays and adds up.
    writer: String,
    /// The intervals changed and not yet written.
    dirty: Changed,
    /// The write under way (in a task: the stream goes on with its records meanwhile), with
    /// the intervals it writes, put back in `dirty` if it fails.
    in_flight: Option<(tokio::task::JoinHandle<Result<(), StoreError>>, Changed)>,
    written: Instant,
    /// Writes that failed in a row, and when the next may start (backing off to 30 s).
    failures: u32,
    next_try: Instant,
    warned: Option<Instant>,
}

/// Hashes one pipeline writes at most: a large write (after Redis was away) goes in parts, each
/// well within the store's timeout.
const KEYS_PER_WRITE: usize = 512;

impl Keeper {
    /// How the write under way ended: on a failure, what it wrote goes back to be written
    /// again, and the failure is returned.
    async fn outcome(
        &mut self,
        write: tokio::task::JoinHandle<Result<(), StoreError>>,
        taken: Changed,
    ) -> Option<String> {
        let failure = match write.await {
            Ok(Ok(())) => return None,
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        for (t, r) in taken {
            mark(&mut self.dirty, &t, r);
        }
        Some(failure)
    }
}

/// Merges intervals into a tenant's changed range.
fn mark(dirty: &mut Changed, tenant: &str, (lo, hi): (i64, i64)) {
    let d = dirty.entry(tenant.to_string()).or_insert((lo, hi));
    *d = (d.0.min(lo), d.1.max(hi));
}

/// A node's answer for a tenant's series: its own cells, and with the store every other
/// writer's (`writers`: how many wrote, this one counted; none for a sink in memory).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LocalSeries {
    pub cells: Cells,
    pub writers: Option<u32>,
    /// The store could not be read (the answer holds this node's cells only).
    pub errors: Vec<String>,
}

/// The other writers' cells to read from the store, away from the stream's actor.
pub struct Fetch {
    store: Arc<SeriesStore>,
    stream: String,
    keys: Vec<String>,
    writer: String,
}

impl Fetch {
    pub async fn run(self, mut mine: Cells) -> LocalSeries {
        match self.store.get(&self.stream, &self.keys, &self.writer).await {
            Ok((theirs, writers, errors)) => {
                for c in theirs {
                    // Another interval length (a stream being replaced) is not added.
                    if c.interval_secs == mine.interval_secs {
                        mine.merge(c);
                    }
                }
                LocalSeries {
                    cells: mine,
                    writers: Some(writers.len() as u32 + 1),
                    errors,
                }
            }
            Err(e) => LocalSeries {
                cells: mine,
                writers: None,
                errors: vec![format!("the series store: {e}")],
            },
        }
    }
}

fn now_ms() -> i64 {
    crate::store::unix_ms() as i64
}

impl SeriesSink {
    /// Checks the keys now, so a stream with a wrong one is refused when it is made.
    pub fn new(
        opts: LiveOptions,
        registry: Arc<Registry>,
        stats: Arc<StreamStats>,
        keep: Option<(Arc<SeriesStore>, String)>,
    ) -> std::io::Result<SeriesSink> {
        LiveSeries::new(&opts, &registry, now_ms()).map_err(std::io::Error::other)?;
        Ok(SeriesSink {
            opts,
            registry,
            tenants: HashMap::new(),
            stats,
            keeper: keep.map(|(store, stream)| Keeper {
                store,
                stream,
                writer: uuid::Uuid::new_v4().to_string(),
                dirty: HashMap::new(),
                in_flight: None,
                written: Instant::now(),
                failures: 0,
                next_try: Instant::now(),
                warned: None,
            }),
        })
    }

    fn left_out(&self, n: u64) {
        self.stats
            .dropped
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    }

    /// The records taken into a series (the rest are counted as dropped).
    pub fn write(&mut self, recs: &[Records]) -> u64 {
        let now = now_ms();
        let mut n = 0;
        for r in recs {
            let count = r.count() as u64;
            let tenant = &r.source.tenant;
            if !self.tenants.contains_key(tenant) {
                if self.tenants.len() >= MAX_TENANTS {
                    self.left_out(count);
                    continue;
                }
                match LiveSeries::new(&self.opts, &self.registry, now) {
                    Ok(s) => {
                        self.tenants.insert(tenant.clone(), s);
                    }
                    // Checked in `new`: cannot fail now.
                    Err(_) => continue,
                }
            }
            if let Some(s) = self.tenants.get_mut(tenant) {
                let before = s.out_of_range() + s.refused();
                s.message(&r.source.exporter, &r.msg, |k, _| r.rows(k));
                let out = (s.out_of_range() + s.refused() - before).min(count);
                self.left_out(out);
                n += count - out;
            }
        }
        n
    }

    /// The range follows the clock; a tenant whose series hold nothing any more is forgotten
    /// (a tenant deleted and made again starts empty, and the tenant bound counts the living).
    pub async fn tick(&mut self) {
        let now = now_ms();
        for (tenant, s) in &mut self.tenants {
            s.tick(now);
            if let Some(k) = &mut self.keeper
                && let Some(range) = s.take_touched()
            {
                mark(&mut k.dirty, tenant, range);
            }
        }
        self.tenants.retain(|_, s| !s.is_empty());
        if self
            .keeper
            .as_ref()
            .is_some_and(|k| k.written.elapsed() >= WRITE_EVERY)
        {
            self.write_store().await;
        }
    }

    /// The stream stops or gets a new sink: what changed since the last write goes out (the
    /// write under way waited for, and one more).
    pub async fn close(&mut self) {
        if self.keeper.is_none() {
            return;
        }
        self.tick().await;
        if let Some(k) = &mut self.keeper
            && let Some((h, taken)) = k.in_flight.take()
        {
            k.outcome(h, taken).await;
        }
        if let Some((w, _)) = self.take_writes() {
            let _ = w.run(true).await;
        }
    }

    /// Starts writing the changed intervals' cells of every tenant to the store, in a task,
    /// once the write before it is done (whole cells: a write that failed is simply made again,
    /// after a pause that grows with the failures).
    async fn write_store(&mut self) {
        let Some(k) = &mut self.keeper else {
            return;
        };
        k.written = Instant::now();
        if k.in_flight.as_ref().is_some_and(|(h, _)| !h.is_finished()) {
            return;
        }
        if let Some((h, taken)) = k.in_flight.take() {
            match k.outcome(h, taken).await {
                None => k.failures = 0,
                Some(e) => {
                    k.failures = k.failures.saturating_add(1);
                    k.next_try = Instant::now()
                        + WRITE_EVERY * 2u32.saturating_pow(k.failures.min(5)).min(30);
                    self.stats
                        .sink_errors
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if k.warned.is_none_or(|w| w.elapsed() >= WARN_EVERY) {
                        k.warned = Some(Instant::now());
                        tracing::warn!(
                            stream = %k.stream,
                            error = %e,
                            failures = k.failures,
                            "live series not written to the store; written again later"
                        );
                    }
                }
            }
        }
        if Instant::now() < k.next_try {
            return;
        }
        if let Some((w, taken)) = self.take_writes()
            && let Some(k) = &mut self.keeper
        {
            k.in_flight = Some((tokio::spawn(w.run(false)), taken));
        }
    }

    /// The cells of every changed interval, by Redis key, with where to write them (none
    /// changed: the writer's state only), and the changed ranges they came from (forgotten
    /// here, given back if the write fails).
    fn take_writes(&mut self) -> Option<(Writes, Changed)> {
        let k = self.keeper.as_mut()?;
        let dirty = std::mem::take(&mut k.dirty);
        let mut puts = Vec::new();
        for (tenant, (lo, hi)) in &dirty {
            let Some(s) = self.tenants.get(tenant) else {
                continue;
            };
            for (by, cells) in s.cells(*lo, *hi) {
                let key = SeriesKey {
                    tenant,
                    stream: &k.stream,
                    interval_secs: self.opts.interval_secs,
                    by: by.as_deref(),
                };
                puts.extend(cells.by_interval().into_iter().map(|(i, c)| (key.at(i), c)));
            }
        }
        let ttl = self.opts.retention_secs + self.opts.interval_secs + STORE_MARGIN_SECS;
        let writes = Writes {
            store: k.store.clone(),
            stream: k.stream.clone(),
            writer: k.writer.clone(),
            puts,
            ttl,
        };
        Some((writes, dirty))
    }

    /// A tenant's cells of `by` between two times held here, and with the store, what to read
    /// of the other writers'; an error names the keys this sink keeps.
    pub fn window(
        &self,
        tenant: &str,
        by: Option<&str>,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<(Cells, Option<Fetch>), String> {
        let mine = self.own_window(tenant, by, from_ms, to_ms)?;
        let fetch = self.keeper.as_ref().map(|k| {
            let interval_ms = self.opts.interval_secs as i64 * 1000;
            let key = SeriesKey {
                tenant,
                stream: &k.stream,
                interval_secs: self.opts.interval_secs,
                by,
            };
            // Only the intervals a sink holds (the retention, and the 5 minutes ahead): the
            // asked window may be any size, and this node's own cells of older intervals are
            // gone from its memory, so other writers' must not be added alone.
            let now = now_ms();
            let lo = (now - self.opts.retention_secs as i64 * 1000)
                .div_euclid(interval_ms)
                .max(from_ms.div_euclid(interval_ms));
            let hi = (now + AHEAD_MS)
                .div_euclid(interval_ms)
                .min(to_ms.div_euclid(interval_ms));
            Fetch {
                store: k.store.clone(),
                stream: k.stream.clone(),
                keys: (lo..=hi).map(|i| key.at(i)).collect(),
                writer: k.writer.clone(),
            }
        });
        Ok((mine, fetch))
    }

    fn own_window(
        &self,
        tenant: &str,
        by: Option<&str>,
        from_ms: i64,
        to_ms: i64,
    ) -> Result<Cells, String> {
        if let Some(b) = by
            && !self.opts.by.iter().any(|k| k == b)
        {
            return Err(format!(
                "this stream keeps no series by {b:?}; it keeps {}",
                if self.opts.by.is_empty() {
                    "only the total".to_string()
                } else {
                    format!("the total and by {}", self.opts.by.join(", "))
                }
            ));
        }
        match self.tenants.get(tenant) {
            Some(s) => Ok(s.window(by, from_ms, to_ms).unwrap_or_default()),
            // Nothing arrived for the tenant on this node: no cells, the right shape.
            None => Ok(Cells {
                interval_secs: self.opts.interval_secs,
                by: by.map(String::from),
                ..Cells::default()
            }),
        }
    }

    pub fn interval_secs(&self) -> u64 {
        self.opts.interval_secs
    }
}
