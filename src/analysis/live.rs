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
    refused: u64,
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
                whole: false,
            })
            .map_err(|e: SeriesError| e.to_string())?;
            dims.push((by.cloned(), b));
        }
        let mut live = LiveSeries {
            interval_ms,
            retention_ms,
            dims,
            floor: i64::MIN,
            refused: 0,
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
            if b.take_error().is_some() {
                self.refused += 1;
            }
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
                // Cells written back from the cache on the way may meet a bound: counted, not
                // left to stop the next message.
                if b.take_error().is_some() {
                    self.refused += 1;
                }
            }
        }
    }

    /// Records a dimension could not place (a bound reached: counted and left out, never a
    /// dimension stopped for good).
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// Nothing held: no cell in any dimension.
    pub fn is_empty(&self) -> bool {
        self.dims.iter().all(|(_, b)| b.is_empty())
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

    /// The intervals added to since the last call (of any dimension), within the range held,
    /// forgotten.
    pub fn take_touched(&mut self) -> Option<(i64, i64)> {
        let mut touched: Option<(i64, i64)> = None;
        for (_, b) in &mut self.dims {
            if let Some((lo, hi)) = b.take_touched() {
                touched = Some(touched.map_or((lo, hi), |(l, h)| (l.min(lo), h.max(hi))));
            }
        }
        let (lo, hi) = touched?;
        (hi >= self.floor).then_some((lo.max(self.floor), hi))
    }

    /// Every dimension's cells of intervals `lo..=hi` (interval numbers), by its `by`.
    pub fn cells(&self, lo: i64, hi: i64) -> Vec<(Option<String>, Cells)> {
        self.dims
            .iter()
            .map(|(by, b)| (by.clone(), b.window(lo, hi)))
            .collect()
    }

    /// Records left out for falling outside the range (all dimensions see the same records:
    /// the total's count).
    pub fn out_of_range(&self) -> u64 {
        self.dims
            .first()
            .map_or(0, |(_, b)| b.placement().out_of_range)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::decoder::{Decoder, DecoderOptions};
    use crate::wire::encode::{FieldValue, MessageBuilder};
    use crate::wire::plan::Plan;
    use crate::wire::template::{FieldSpec, Template};

    /// One message of instant flows at the given Unix ms, 100 octets each.
    fn at(times: &[u64]) -> DecodedMessage {
        let reg = Registry::builtin();
        let t = Template::data(
            256,
            vec![
                FieldSpec::new(1, 0, 8),
                FieldSpec::new(152, 0, 8),
                FieldSpec::new(153, 0, 8),
            ],
        );
        let plan = Plan::compile(t.clone(), &reg);
        let mut mb = MessageBuilder::new(1, 65535);
        mb.add_template(&t).expect("template");
        for ms in times {
            mb.add_record(
                &plan,
                &[
                    FieldValue::Unsigned(100),
                    FieldValue::DateTimeMilliseconds(*ms),
                    FieldValue::DateTimeMilliseconds(*ms),
                ],
            )
            .expect("record");
        }
        mb.flush();
        let mut d = Decoder::new(reg, DecoderOptions::default());
        let m = mb.take_ready().into_iter().next().expect("message");
        d.decode(bytes::Bytes::from(m)).expect("decodes")
    }

    fn total(s: &LiveSeries) -> u64 {
        s.window(None, i64::MIN / 2, i64::MAX / 2)
            .map_or(0, |c| c.cells.iter().map(|(_, _, c)| c.octets).sum())
    }

    /// The node's clock stepping back while an exporter's runs ahead: the record that would
    /// stretch the range too far is counted and left out, and the series goes on (a build
    /// error does not stop a live series for good).
    #[test]
    fn a_clock_step_back_costs_a_record_not_the_series() {
        let opts = LiveOptions {
            interval_secs: 10,
            by: vec!["destinationTransportPort".into()],
            retention_secs: 60,
            max_keys: 10,
            forward_only: false,
        };
        let now: i64 = 1_700_000_000_000;
        let mut s = LiveSeries::new(&opts, &Registry::builtin(), now).expect("options");
        let all = |_: usize, n: usize| 0..n;
        s.message("192.0.2.1:4739", &at(&[now as u64 + 290_000]), all);
        assert_eq!(total(&s), 100);
        // The clock steps back 100 s: the range moves back; a record at its start is more
        // intervals from the one ahead than the range may span.
        s.tick(now - 100_000);
        s.message("192.0.2.1:4739", &at(&[(now - 160_000) as u64]), all);
        assert!(s.refused() >= 1, "counted");
        s.message("192.0.2.1:4739", &at(&[(now - 50_000) as u64]), all);
        assert_eq!(total(&s), 200, "the next record is taken");
        assert_eq!(s.out_of_range(), 0);
        // Once the clock moves on past the retention, everything is forgotten and the series
        // is empty (the sink then forgets the tenant).
        s.tick(now + 1_000_000);
        assert!(s.is_empty());
    }
}
