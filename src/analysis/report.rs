//! Analyses of flows, each a JSON document and a chart: the top talkers (sources and
//! destinations, by octets and by flows, per address or per prefix), the protocol and port mix,
//! and anomalies (intervals whose volume departs from the rolling median of the intervals before
//! them by more than `k` median absolute deviations, with their top contributors).
//!
//! Built from the series builder: a talker or mix table is a key's totals (`Options::whole`),
//! an anomaly pass one series of the total and one by the contributors' key. Pure.

use super::key::KeySpec;
use super::output::rfc3339;
use super::series::{Builder, Counts, Options, SeriesError, SeriesSet};
use crate::wire::{DecodedMessage, Registry};

/// Anomalies listed at most (all are counted).
pub const MAX_LISTED: usize = 1000;
/// Contributors listed per anomaly.
pub const CONTRIBUTORS: usize = 5;

/// What an analysis ranks or measures by.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Rank {
    Octets,
    Packets,
    Flows,
}

impl Rank {
    /// What it counts, for axes and titles.
    pub fn unit(self) -> &'static str {
        match self {
            Rank::Octets => "octets",
            Rank::Packets => "packets",
            Rank::Flows => "flows",
        }
    }

    pub fn of(self, c: &Counts) -> u64 {
        match self {
            Rank::Octets => c.octets,
            Rank::Packets => c.packets,
            Rank::Flows => c.flows,
        }
    }
}

/// One key's totals.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Row {
    pub key: String,
    pub octets: u64,
    pub packets: u64,
    pub flows: u64,
    /// Its share of the table's total of the ranking measure, in percent.
    pub share: f64,
}

impl Row {
    pub fn counts(&self) -> Counts {
        Counts {
            octets: self.octets,
            packets: self.packets,
            flows: self.flows,
        }
    }
}

/// The top keys by one measure, the rest added up, and the total.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Table {
    pub title: String,
    pub by: String,
    pub rank: Rank,
    pub rows: Vec<Row>,
    /// Every key past the top ones, added up (key `other`); none when there are none.
    pub other: Option<Row>,
    pub total: Counts,
    /// Distinct keys seen.
    pub keys: usize,
}

/// A table from a key's totals (a finished `whole` builder with every key).
pub fn table(set: &SeriesSet, rank: Rank, top: usize, title: &str) -> Table {
    let counts = |s: &super::series::Series| Counts {
        octets: s.octets.first().copied().unwrap_or(0),
        packets: s.packets.first().copied().unwrap_or(0),
        flows: s.flows.first().copied().unwrap_or(0),
    };
    let mut all: Vec<(String, Counts)> = set
        .series
        .iter()
        .map(|s| (s.key.clone(), counts(s)))
        .collect();
    all.sort_by(|a, b| rank.of(&b.1).cmp(&rank.of(&a.1)).then(a.0.cmp(&b.0)));
    let mut total = Counts::default();
    for (_, c) in &all {
        total.add(c.octets, c.packets, c.flows);
    }
    let whole = rank.of(&total).max(1) as f64;
    let row = |key: String, c: &Counts| Row {
        key,
        octets: c.octets,
        packets: c.packets,
        flows: c.flows,
        share: (rank.of(c) as f64 * 100.0 / whole * 100.0).round() / 100.0,
    };
    let keys = all.len();
    let rest = all.split_off(top.min(all.len()));
    let other = (!rest.is_empty()).then(|| {
        let mut c = Counts::default();
        for (_, r) in &rest {
            c.add(r.octets, r.packets, r.flows);
        }
        row("other".into(), &c)
    });
    Table {
        title: title.to_string(),
        by: set.by.clone().unwrap_or_default(),
        rank,
        rows: all.iter().map(|(k, c)| row(k.clone(), c)).collect(),
        other,
        total,
        keys,
    }
}

/// Builds several key totals in one reading of the inputs.
pub struct Totals {
    builders: Vec<Builder>,
}

impl Totals {
    /// One builder per key (`@source/24/64`, `protocolIdentifier`...), with at most `max_cells`
    /// keys each.
    pub fn new(keys: &[&str], forward_only: bool, max_cells: usize) -> Result<Totals, String> {
        let registry = Registry::builtin();
        let builders = keys
            .iter()
            .map(|k| {
                let by = KeySpec::parse(k, &registry)?;
                Builder::new(Options {
                    by: Some(by),
                    top: usize::MAX,
                    forward_only,
                    max_cells,
                    whole: true,
                    ..Options::default()
                })
                .map_err(|e| e.to_string())
            })
            .collect::<Result<_, _>>()?;
        Ok(Totals { builders })
    }

    pub fn message(&mut self, exporter: &str, msg: &DecodedMessage) {
        for b in &mut self.builders {
            b.message(exporter, msg);
        }
    }

    pub fn finish(self) -> Result<Vec<SeriesSet>, SeriesError> {
        self.builders.into_iter().map(Builder::finish).collect()
    }
}

/// One anomalous interval.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Anomaly {
    /// The interval's start, RFC 3339 UTC.
    pub time: String,
    pub value: u64,
    /// The median and the median absolute deviation of the window before it.
    pub median: f64,
    pub mad: f64,
    /// How many MADs it departs by (infinite when the MAD is 0: shown as null).
    pub score: Option<f64>,
    /// `above` or `below` the median.
    pub direction: &'static str,
    /// The keys that brought the most of the measure to the interval.
    pub contributors: Vec<Row>,
}

/// The anomaly pass over one series of values (one per interval).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Anomalies {
    pub interval_secs: u64,
    pub measure: Rank,
    pub window: usize,
    pub k: f64,
    pub by: String,
    pub times: Vec<String>,
    pub values: Vec<u64>,
    /// The rolling median each interval was held to (none for the first `window` intervals).
    pub medians: Vec<Option<f64>>,
    /// Anomalous intervals found, and the first `MAX_LISTED` of them.
    pub found: usize,
    pub anomalies: Vec<Anomaly>,
}

fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n == 0 {
        return 0.0;
    }
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// For each interval from `window` on: the median of the `window` values before it, their
/// median absolute deviation, and whether the interval departs from the median by more than
/// `k` of them (with a MAD of 0, the window all alike, any departure does).
pub fn detect(values: &[u64], window: usize, k: f64) -> Vec<(Option<(f64, f64)>, bool)> {
    let mut out = Vec::with_capacity(values.len());
    let mut buf: Vec<f64> = Vec::with_capacity(window);
    for (i, v) in values.iter().enumerate() {
        if window == 0 || i < window {
            out.push((None, false));
            continue;
        }
        buf.clear();
        buf.extend(values[i - window..i].iter().map(|x| *x as f64));
        buf.sort_by(f64::total_cmp);
        let med = median(&buf);
        for x in buf.iter_mut() {
            *x = (*x - med).abs();
        }
        buf.sort_by(f64::total_cmp);
        let mad = median(&buf);
        let off = (*v as f64 - med).abs();
        out.push((Some((med, mad)), off > k * mad));
    }
    out
}

/// The anomaly pass: `total` is the series of everything (no key), `keyed` the series by the
/// contributors' key over the same intervals.
pub fn anomalies(
    total: &SeriesSet,
    keyed: &super::series::Cells,
    measure: Rank,
    window: usize,
    k: f64,
) -> Anomalies {
    let n = total.intervals;
    let mut values = vec![0u64; n];
    for s in &total.series {
        for (i, v) in values.iter_mut().enumerate() {
            let c = Counts {
                octets: s.octets[i],
                packets: s.packets[i],
                flows: s.flows[i],
            };
            *v = v.saturating_add(measure.of(&c));
        }
    }
    let times: Vec<String> = total.starts().map(rfc3339).collect();
    let flags = detect(&values, window, k);
    // The contributors of each flagged interval, from the keyed cells.
    let flagged: std::collections::HashSet<i64> = flags
        .iter()
        .enumerate()
        .filter(|(_, (_, f))| *f)
        .map(|(i, _)| total.first_interval + i as i64)
        .collect();
    let mut by_interval: std::collections::HashMap<i64, Vec<Row>> = Default::default();
    for (key, i, c) in &keyed.cells {
        if flagged.contains(i) {
            by_interval.entry(*i).or_default().push(Row {
                key: keyed.keys.get(*key as usize).cloned().unwrap_or_default(),
                octets: c.octets,
                packets: c.packets,
                flows: c.flows,
                share: 0.0,
            });
        }
    }
    let mut anomalies = Vec::new();
    let mut found = 0;
    for (i, (stats, flag)) in flags.iter().enumerate() {
        let (Some((med, mad)), true) = (stats, flag) else {
            continue;
        };
        found += 1;
        if anomalies.len() >= MAX_LISTED {
            continue;
        }
        let value = values[i];
        let mut rows = by_interval
            .remove(&(total.first_interval + i as i64))
            .unwrap_or_default();
        rows.sort_by(|a, b| {
            measure
                .of(&b.counts())
                .cmp(&measure.of(&a.counts()))
                .then(a.key.cmp(&b.key))
        });
        rows.truncate(CONTRIBUTORS);
        for r in &mut rows {
            let v = measure.of(&r.counts());
            r.share = (v as f64 * 100.0 / value.max(1) as f64 * 100.0).round() / 100.0;
        }
        let off = value as f64 - med;
        anomalies.push(Anomaly {
            time: times[i].clone(),
            value,
            median: *med,
            mad: *mad,
            score: (*mad > 0.0).then(|| (off.abs() / mad * 100.0).round() / 100.0),
            direction: if off > 0.0 { "above" } else { "below" },
            contributors: rows,
        });
    }
    Anomalies {
        interval_secs: total.interval_secs,
        measure,
        window,
        k,
        by: keyed.by.clone().unwrap_or_default(),
        medians: flags.iter().map(|(s, _)| s.map(|(m, _)| m)).collect(),
        times,
        values,
        found,
        anomalies,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hand-computed: windows of 3, k = 2.
    #[test]
    fn rolling_median_and_mad_flag_departures() {
        let v = [10, 12, 11, 11, 40, 12, 0, 11];
        let d = detect(&v, 3, 2.0);
        // Interval 3: window 10,12,11 -> median 11, deviations 1,1,0 -> MAD 1; |11-11| = 0.
        assert_eq!(d[3], (Some((11.0, 1.0)), false));
        // Interval 4: window 12,11,11 -> median 11, deviations 1,0,0 -> MAD 0... any departure.
        assert_eq!(d[4], (Some((11.0, 0.0)), true));
        // Interval 5: window 11,11,40 -> median 11, deviations 0,0,29 -> MAD 0; 12 != 11.
        assert_eq!(d[5], (Some((11.0, 0.0)), true));
        // Interval 6: window 11,40,12 -> median 12, deviations 1,28,0 -> MAD 1; |0-12| > 2.
        assert_eq!(d[6], (Some((12.0, 1.0)), true));
        // Interval 7: window 40,12,0 -> median 12, deviations 28,0,12 -> MAD 12; |11-12| < 24.
        assert_eq!(d[7], (Some((12.0, 12.0)), false));
        assert!(d[..3].iter().all(|x| *x == (None, false)));
        // An even window takes the mean of the middle two.
        let d = detect(&[1, 3, 5, 7, 100], 4, 3.0);
        // window 1,3,5,7 -> median 4, deviations 3,1,1,3 -> MAD 2; |100-4| = 96 > 6.
        assert_eq!(d[4], (Some((4.0, 2.0)), true));
    }

    #[test]
    fn a_table_ranks_cuts_and_adds_up_the_rest() {
        use super::super::series::Series;
        let s = |key: &str, o: u64, p: u64, f: u64| Series {
            key: key.into(),
            octets: vec![o],
            packets: vec![p],
            flows: vec![f],
        };
        let set = SeriesSet {
            interval_secs: 60,
            by: Some("@source/24/64".into()),
            first_interval: 0,
            intervals: 1,
            series: vec![
                s("10.0.0.0/24", 700, 7, 1),
                s("10.0.1.0/24", 200, 2, 5),
                s("10.0.2.0/24", 100, 1, 4),
            ],
            totals: Default::default(),
            placement: Default::default(),
        };
        let t = table(&set, Rank::Octets, 2, "sources by octets");
        assert_eq!(t.rows.len(), 2);
        assert_eq!(
            (t.rows[0].key.as_str(), t.rows[0].share),
            ("10.0.0.0/24", 70.0)
        );
        let other = t.other.expect("the rest");
        assert_eq!((other.octets, other.share), (100, 10.0));
        assert_eq!(t.total.octets, 1000);
        assert_eq!(t.keys, 3);
        let f = table(&set, Rank::Flows, 1, "sources by flows");
        assert_eq!(f.rows[0].key, "10.0.1.0/24");
        assert_eq!(f.other.expect("rest").flows, 5);
    }
}
