//! The series as a chart: stacked areas of the keys' rates over time (the biggest at the bottom,
//! `other` on top), bits/s or packets/s against UTC time, a legend and a title; SVG or PNG,
//! 1200 x 600 by default. Text is drawn with an embedded font (DejaVu Sans, its licence beside
//! it in `assets/fonts`): the image has no fontconfig, and plotters draws no text without a
//! registered font.

use super::series::SeriesSet;
use plotters::coord::Shift;
use plotters::prelude::*;
use std::sync::Once;

static FONT: &[u8] = include_bytes!("../../assets/fonts/DejaVuSans.ttf");
static REGISTER: Once = Once::new();

/// What the chart shows per interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measure {
    Bits,
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
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        // Room for the last time label, centred on the right edge.
        .margin_right(44)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, 0.0..top * 1.08)
        .map_err(|e| err(&e))?;
    let span = x1 - x0;
    chart
        .configure_mesh()
        .x_desc("time (UTC)")
        .y_desc(measure.unit())
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
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn si_prefixes_read_as_an_operator_expects() {
        assert_eq!(si(0.0), "0");
        assert_eq!(si(950.0), "950");
        assert_eq!(si(1500.0), "1.5k");
        assert_eq!(si(2_340_000.0), "2.34M");
        assert_eq!(si(1e10), "10G");
    }
}
