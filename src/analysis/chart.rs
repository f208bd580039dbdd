//! The series as a chart: stacked areas of the keys' rates over time (the biggest at the bottom,
//! `other` on top), bits/s or packets/s against UTC time, a legend and a title; SVG or PNG,
//! 1200 x 600 by default. Text is drawn with an embedded font (DejaVu Sans, its licence beside
//! it in `assets/fonts`): the image has no fontconfig, and plotters draws no text without a
//! registered font.

use super::series::SeriesSet;
use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use std::sync::Once;

static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
static REGISTER: Once = Once::new();

/// What the chart shows per interval (`ipfixsvc timeseries --chart bits|packets`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Measure {
    /// Bits per second.
    Bits,
    /// Packets per second.
    Packets,
}

impl Measure {
    fn unit(self) -> &'static str {
        match self {
            Measure::Bits => "bits/s",
            Measure::Packets => "packets/s",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("chart: {0}")]
pub struct ChartError(String);

/// Distinct colours for the keys (Tableau 10, then more), grey for `other`.
const PALETTE: [(u8, u8, u8); 12] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (188, 189, 34),
    (23, 190, 207),
    (174, 199, 232),
    (255, 187, 120),
    (152, 223, 138),
];
const OTHER: RGBColor = RGBColor(170, 170, 170);

fn register_font() -> Result<(), ChartError> {
    let mut ok = true;
    REGISTER.call_once(|| {
        ok = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_ok();
    });
    if ok {
        Ok(())
    } else {
        Err(ChartError("the embedded font cannot be read".into()))
    }
}

/// The chart as an SVG document.
pub fn svg(set: &SeriesSet, measure: Measure, size: (u32, u32)) -> Result<String, ChartError> {
    register_font()?;
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, size).into_drawing_area();
        draw(&root, set, measure)?;
        root.present().map_err(|e| ChartError(e.to_string()))?;
    }
    Ok(out)
}

/// The chart as a PNG file.
pub fn png(
    set: &SeriesSet,
    measure: Measure,
    size: (u32, u32),
    path: &std::path::Path,
) -> Result<(), ChartError> {
    register_font()?;
    let root = BitMapBackend::new(path, size).into_drawing_area();
    draw(&root, set, measure)?;
    root.present().map_err(|e| ChartError(e.to_string()))
}

/// 1234567 -> "1.23M".
fn si(v: f64) -> String {
    let (scaled, prefix) = match v.abs() {
        a if a >= 1e12 => (v / 1e12, "T"),
        a if a >= 1e9 => (v / 1e9, "G"),
        a if a >= 1e6 => (v / 1e6, "M"),
        a if a >= 1e3 => (v / 1e3, "k"),
        _ => (v, ""),
    };
    let s = format!("{scaled:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s}{prefix}")
}

fn time_label(unix: f64, span_secs: f64) -> String {
    let Some(t) = chrono::DateTime::from_timestamp(unix as i64, 0) else {
        return String::new();
    };
    let format = if span_secs <= 3_600.0 {
        "%H:%M:%S"
    } else if span_secs <= 86_400.0 {
        "%H:%M"
    } else if span_secs <= 86_400.0 * 60.0 {
        "%m-%d %H:%M"
    } else {
        "%Y-%m-%d"
    };
    t.format(format).to_string()
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    set: &SeriesSet,
    measure: Measure,
) -> Result<(), ChartError> {
    let err = |e: &dyn std::fmt::Display| ChartError(e.to_string());
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let secs = set.interval_secs as f64;
    let starts: Vec<f64> = set.starts().map(|s| s as f64).collect();
    // Each series' rate per interval.
    let rates: Vec<Vec<f64>> = set
        .series
        .iter()
        .map(|s| match measure {
            Measure::Bits => s.octets.iter().map(|o| *o as f64 * 8.0 / secs).collect(),
            Measure::Packets => s.packets.iter().map(|p| *p as f64 / secs).collect(),
        })
        .collect();
    // The stack: cumulative sums, bottom to top.
    let mut stacked: Vec<Vec<f64>> = Vec::with_capacity(rates.len());
    for r in &rates {
        let below = stacked
            .last()
            .cloned()
            .unwrap_or_else(|| vec![0.0; r.len()]);
        stacked.push(r.iter().zip(&below).map(|(a, b)| a + b).collect());
    }
    let top = stacked
        .last()
        .and_then(|t| t.iter().cloned().reduce(f64::max))
        .unwrap_or(0.0)
        .max(1.0);
    let (x0, x1) = match (starts.first(), starts.last()) {
        (Some(a), Some(b)) => (*a, *b + secs),
        _ => (0.0, secs),
    };
    let by = set.by.as_deref().unwrap_or("all flows");
    let title = format!(
        "{} by {by}, {} s intervals (UTC)",
        measure.unit(),
        set.interval_secs
    );
    let mut chart = time_axes(root, &title, 22, x0..x1, top, measure.unit())?;
    if starts.is_empty() {
        root.draw(&Text::new(
            "no flows",
            (560, 290),
            ("sans-serif", 20).into_font(),
        ))
        .map_err(|e| err(&e))?;
    }
    for (n, s) in set.series.iter().enumerate() {
        let color = if s.key == "other" && n + 1 == set.series.len() {
            OTHER
        } else {
            let (r, g, b) = PALETTE[n % PALETTE.len()];
            RGBColor(r, g, b)
        };
        // A band: the top edge left to right as steps (a rate holds over its interval), then
        // the bottom edge back.
        let upper = &stacked[n];
        let lower = if n == 0 {
            vec![0.0; upper.len()]
        } else {
            stacked[n - 1].clone()
        };
        let mut points: Vec<(f64, f64)> = Vec::with_capacity(upper.len() * 4);
        for (i, t) in starts.iter().enumerate() {
            points.push((*t, upper[i]));
            points.push((*t + secs, upper[i]));
        }
        for (i, t) in starts.iter().enumerate().rev() {
            points.push((*t + secs, lower[i]));
            points.push((*t, lower[i]));
        }
        let label = s.key.clone();
        chart
            .draw_series(std::iter::once(Polygon::new(points, color.filled())))
            .map_err(|e| err(&e))?
            .label(label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled()));
    }
    legend(&mut chart, SeriesLabelPosition::UpperRight)
}

/// A chart of values against UTC time: `x` in Unix seconds, `0..top` (with room above) in
/// `unit`, its grid, axes and labels drawn.
fn time_axes<'a, DB: DrawingBackend + 'a>(
    area: &'a DrawingArea<DB, Shift>,
    title: &str,
    caption_px: u32,
    x: std::ops::Range<f64>,
    top: f64,
    unit: &str,
) -> Result<ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>, ChartError> {
    let err = |e: &dyn std::fmt::Display| ChartError(e.to_string());
    let span = x.end - x.start;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", caption_px))
        .margin(16)
        // Room for the last time label, centred on the right edge.
        .margin_right(44)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x, 0.0..top * 1.08)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_desc("time (UTC)")
        .y_desc(unit)
        .x_labels(8)
        .y_labels(8)
        .light_line_style(WHITE.mix(0.0))
        .bold_line_style(BLACK.mix(0.12))
        .x_label_formatter(&|x| time_label(*x, span))
        .y_label_formatter(&|y| si(*y))
        .label_style(("sans-serif", 13))
        .axis_desc_style(("sans-serif", 15))
        .draw()
        .map_err(|e| err(&e))?;
    Ok(chart)
}

/// The series' legend, in a corner.
fn legend<'a, DB: DrawingBackend + 'a>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    position: SeriesLabelPosition,
) -> Result<(), ChartError> {
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(|e| ChartError(e.to_string()))
}

/// An analysis' tables as bar charts (the biggest key on top, `other` grey), two to a row.
pub fn tables_svg(tables: &[super::report::Table], size: (u32, u32)) -> Result<String, ChartError> {
    register_font()?;
    let err = |e: &dyn std::fmt::Display| ChartError(e.to_string());
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let cols = if tables.len() > 1 { 2 } else { 1 };
        let rows = tables.len().div_ceil(cols).max(1);
        for (area, t) in root.split_evenly((rows, cols)).iter().zip(tables) {
            bars(area, t)?;
        }
        root.present().map_err(|e| err(&e))?;
    }
    Ok(out)
}

fn bars<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    t: &super::report::Table,
) -> Result<(), ChartError> {
    let err = |e: &dyn std::fmt::Display| ChartError(e.to_string());
    let rows: Vec<(String, f64)> = t
        .rows
        .iter()
        .chain(&t.other)
        .map(|r| (r.key.clone(), t.rank.of(&r.counts()) as f64))
        .collect();
    let n = rows.len().max(1);
    let max = rows.iter().map(|r| r.1).fold(1.0, f64::max);
    let unit = t.rank.unit();
    let mut chart = ChartBuilder::on(area)
        .caption(&t.title, ("sans-serif", 17))
        .margin(10)
        .margin_right(24)
        .x_label_area_size(34)
        .y_label_area_size(150)
        // `(0..m).into_segmented()` has m + 1 segments: one per row (and one empty above a
        // single row: `0..0` would show no label).
        .build_cartesian_2d(0.0..max * 1.08, (0..(n - 1).max(1)).into_segmented())
        .map_err(|e| err(&e))?;
    // The first row (the biggest) is drawn at the top.
    let at = |i: usize| n - 1 - i;
    let names: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
    chart
        .configure_mesh()
        .disable_y_mesh()
        .light_line_style(WHITE.mix(0.0))
        .bold_line_style(BLACK.mix(0.12))
        .x_labels(6)
        .y_labels(n)
        .x_desc(unit)
        .x_label_formatter(&|x| si(*x))
        .y_label_formatter(&|y| match y {
            SegmentValue::CenterOf(i) | SegmentValue::Exact(i) if *i < n => {
                names.get(n - 1 - *i).cloned().unwrap_or_default()
            }
            _ => String::new(),
        })
        .label_style(("sans-serif", 12))
        .axis_desc_style(("sans-serif", 13))
        .draw()
        .map_err(|e| err(&e))?;
    chart
        .draw_series(rows.iter().enumerate().map(|(i, (key, v))| {
            let color = if key == "other" && i + 1 == rows.len() && t.other.is_some() {
                OTHER
            } else {
                let (r, g, b) = PALETTE[i % PALETTE.len()];
                RGBColor(r, g, b)
            };
            let mut bar = Rectangle::new(
                [
                    (0.0, SegmentValue::Exact(at(i))),
                    (*v, SegmentValue::Exact(at(i) + 1)),
                ],
                color.filled(),
            );
            bar.set_margin(3, 3, 0, 0);
            bar
        }))
        .map_err(|e| err(&e))?;
    Ok(())
}

/// The anomaly pass as a chart: the measure per interval, the rolling median it was held to,
/// and the anomalies as red points.
pub fn anomalies_svg(
    a: &super::report::Anomalies,
    starts: &[i64],
    size: (u32, u32),
) -> Result<String, ChartError> {
    register_font()?;
    let err = |e: &dyn std::fmt::Display| ChartError(e.to_string());
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let secs = a.interval_secs as f64;
        let xs: Vec<f64> = starts.iter().map(|s| *s as f64).collect();
        let (x0, x1) = match (xs.first(), xs.last()) {
            (Some(f), Some(l)) => (*f, *l + secs),
            _ => (0.0, secs),
        };
        let top = a.values.iter().map(|v| *v as f64).fold(1.0, f64::max);
        let unit = a.measure.unit();
        let title = format!(
            "{unit} per {} s interval: {} anomalies (over {} x MAD of the {} intervals before)",
            a.interval_secs, a.found, a.k, a.window
        );
        let mut chart = time_axes(&root, &title, 19, x0..x1, top, unit)?;
        let (r, g, b) = PALETTE[0];
        let mid = secs / 2.0;
        chart
            .draw_series(LineSeries::new(
                xs.iter().zip(&a.values).map(|(x, v)| (*x + mid, *v as f64)),
                RGBColor(r, g, b).stroke_width(2),
            ))
            .map_err(|e| err(&e))?
            .label(unit)
            .legend(move |(x, y)| {
                PathElement::new([(x, y), (x + 16, y)], RGBColor(r, g, b).stroke_width(2))
            });
        chart
            .draw_series(LineSeries::new(
                xs.iter()
                    .zip(&a.medians)
                    .filter_map(|(x, m)| m.map(|m| (*x + mid, m))),
                BLACK.mix(0.45).stroke_width(1),
            ))
            .map_err(|e| err(&e))?
            .label("rolling median")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], BLACK.mix(0.45)));
        let flagged: std::collections::HashSet<&str> =
            a.anomalies.iter().map(|x| x.time.as_str()).collect();
        chart
            .draw_series(
                xs.iter()
                    .zip(&a.values)
                    .zip(&a.times)
                    .filter(|(_, t)| flagged.contains(t.as_str()))
                    .map(|((x, v), _)| Circle::new((*x + mid, *v as f64), 5, RED.filled())),
            )
            .map_err(|e| err(&e))?
            .label("anomaly")
            .legend(|(x, y)| Circle::new((x + 8, y), 5, RED.filled()));
        legend(&mut chart, SeriesLabelPosition::UpperLeft)?;
        root.present().map_err(|e| err(&e))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tables of one row, of none (no flows) and an anomaly pass of nothing still draw.
    #[test]
    fn small_and_empty_analyses_draw() {
        use super::super::report::{Anomalies, Rank, Row, Table};
        let t = |rows: Vec<Row>| Table {
            title: "sources by octets".into(),
            by: "@source".into(),
            rank: Rank::Octets,
            rows,
            other: None,
            total: Default::default(),
            keys: 0,
        };
        let one = Row {
            key: "192.0.2.1".into(),
            octets: 10,
            ..Row::default()
        };
        let svg = tables_svg(&[t(vec![one]), t(Vec::new())], (800, 400)).expect("draws");
        assert!(svg.contains("192.0.2.1") && svg.contains("sources by octets"));
        let a = Anomalies {
            interval_secs: 60,
            measure: Rank::Packets,
            window: 5,
            k: 3.0,
            by: "@source".into(),
            times: Vec::new(),
            values: Vec::new(),
            medians: Vec::new(),
            found: 0,
            anomalies: Vec::new(),
        };
        assert!(
            anomalies_svg(&a, &[], (800, 400))
                .expect("draws")
                .contains("0 anomalies")
        );
    }

    #[test]
    fn si_prefixes_read_as_an_operator_expects() {
        assert_eq!(si(0.0), "0");
        assert_eq!(si(950.0), "950");
        assert_eq!(si(1500.0), "1.5k");
        assert_eq!(si(2_340_000.0), "2.34M");
        assert_eq!(si(1e10), "10G");
    }
}
