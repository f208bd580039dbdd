//! A live series: what a `timeseries` sink keeps of a tenant's records as they arrive. One
//! series [`Builder`] for the total and one per key asked for, over a sliding range of
//! intervals: records outside `[now - retention, now + AHEAD]` are left out (counted), older
//! intervals are forgotten, and each key dimension holds at most `max_keys` keys (the rest add up
//! in `other`). Memory is therefore bounded by `(1 + by) x (max_keys + 1) x intervals` cells.

use super::key::KeySpec;
use super::series::{Builder, Cells, Options, SeriesError};
use crate::wire::DecodedMessage;
use crate::wire::Registry;

/// How far ahead of the node's clock a record may reach (exporters' clocks drift).
pub const AHEAD_MS: i64 = 300_000;

#[derive(Debug, Clone)]
pub struct LiveOptions {
    pub interval_secs: u64,
    /// Keys kept besides the total, as given (`destinationTransportPort`, `@exporter`...).
    pub by: Vec<String>,
    pub retention_secs: u64,
    pub max_keys: usize,
    pub forward_only: bool,
}

pub struct LiveSeries {
    interval_ms: i64,
    retention_ms: i64,
    /// The total (no key) first, then one per `by`, with its label.
    dims: Vec<(Option<String>, Builder)>,
    /// The first interval held (forgetting happens when it moves).
    floor: i64,
}

impl LiveSeries {
    /// Checks the keys against the information model; `now_ms` starts the range.
    pub fn new(opts: &LiveOptions, registry: &Registry, now_ms: i64) -> Result<LiveSeries, String> {
        let interval_ms = opts.interval_secs as i64 * 1000;
        let retention_ms = opts.retention_secs as i64 * 1000;
        // Every interval the range may hold, with room for a flow's spread past its ends.
        let intervals = ((retention_ms + AHEAD_MS) / interval_ms.max(1)) as usize + 2;
        let mut dims = Vec::with_capacity(1 + opts.by.len());
        for by in std::iter::once(None).chain(opts.by.iter().map(Some)) {
            let spec = by
                .map(|b| KeySpec::parse(b, registry))
                .transpose()
                .map_err(|e| format!("by {e}"))?;
            let b = Builder::new(Options {
                interval_secs: opts.interval_secs,
                by: spec,
                top: usize::MAX,
                forward_only: opts.forward_only,
                max_cells: (opts.max_keys + 1).saturating_mul(intervals),
                max_intervals: intervals as u64 + 1,
                max_keys: opts.max_keys,
            })
            .map_err(|e: SeriesError| e.to_string())?;
            dims.push((by.cloned(), b));
        }
        let mut live = LiveSeries {
            interval_ms,
            retention_ms,
            dims,
            floor: i64::MIN,
        };
        live.tick(now_ms);
        Ok(live)
    }

    /// The records `rows(batch, length)` of a message of `exporter`.
    pub fn message<R, I>(&mut self, exporter: &str, msg: &DecodedMessage, rows: R)
    where
        R: Fn(usize, usize) -> I,
        I: Iterator<Item = usize>,
    {
        for (_, b) in &mut self.dims {
            b.message_rows(exporter, msg, &rows);
        }
    }

    /// Moves the range to the clock: intervals before `now - retention` are forgotten.
    pub fn tick(&mut self, now_ms: i64) {
        let lo = (now_ms - self.retention_ms).div_euclid(self.interval_ms);
        let hi = (now_ms + AHEAD_MS).div_euclid(self.interval_ms);
        for (_, b) in &mut self.dims {
            b.set_range(lo, hi);
        }
        if lo != self.floor {
            self.floor = lo;
            for (_, b) in &mut self.dims {
                b.evict_before(lo);
            }
        }
    }

    /// The keys kept besides the total.
    pub fn keys(&self) -> Vec<String> {
        self.dims.iter().filter_map(|(l, _)| l.clone()).collect()
    }

    /// The cells of `by` (none: the total) between two times (Unix milliseconds), or `None`
    /// when this series does not keep that key.
    pub fn window(&self, by: Option<&str>, from_ms: i64, to_ms: i64) -> Option<Cells> {
        let (_, b) = self.dims.iter().find(|(l, _)| l.as_deref() == by)?;
        Some(b.window(
            from_ms.div_euclid(self.interval_ms),
            to_ms.div_euclid(self.interval_ms),
        ))
    }

    /// Records left out for falling outside the range (all dimensions see the same records:
    /// the total's count).
    pub fn out_of_range(&self) -> u64 {
        self.dims
            .first()
            .map_or(0, |(_, b)| b.placement().out_of_range)
    }
}
