//! The `timeseries` sink: the stream's records become live series, one per tenant (a stream of
//! the configuration may take several tenants' records), answered by `GET
//! /api/v1/tenants/{tenant}/timeseries` through the mediator. In memory: each node keeps what its
//! own sessions collected, and a query merges the nodes' cells (`SessionDirectory`).

use super::StreamStats;
use crate::analysis::live::{LiveOptions, LiveSeries};
use crate::analysis::series::Cells;
use crate::mediation::Records;
use crate::wire::Registry;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

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
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl SeriesSink {
    /// Checks the keys now, so a stream with a wrong one is refused when it is made.
    pub fn new(
        opts: LiveOptions,
        registry: Arc<Registry>,
        stats: Arc<StreamStats>,
    ) -> std::io::Result<SeriesSink> {
        LiveSeries::new(&opts, &registry, now_ms()).map_err(std::io::Error::other)?;
        Ok(SeriesSink {
            opts,
            registry,
            tenants: HashMap::new(),
            stats,
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
    pub fn tick(&mut self) {
        let now = now_ms();
        for s in self.tenants.values_mut() {
            s.tick(now);
        }
        self.tenants.retain(|_, s| !s.is_empty());
    }

    /// A tenant's cells of `by` between two times; an error names the keys this sink keeps.
    pub fn window(
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
