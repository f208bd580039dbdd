//! The series as JSON and CSV. JSON: `{"interval_secs", "by", "times": [interval starts, RFC
//! 3339 UTC], "series": [{"key", "octets", "packets", "flows"}, ...], "totals": {"octets",
//! "packets", "flows", "untimed"}}`, `other` last. CSV: one row per interval and series
//! (`time,key,octets,packets,flows`), the long form spreadsheet and plotting tools read.

use super::series::{SeriesSet, Totals};
use std::io::{self, Write};

/// An interval start as RFC 3339 UTC (`2026-11-30T10:00:00Z`).
pub fn rfc3339(unix_secs: i64) -> String {
    chrono::DateTime::from_timestamp(unix_secs, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| unix_secs.to_string())
}

#[derive(serde::Serialize)]
struct Json<'a> {
    interval_secs: u64,
    by: Option<&'a str>,
    times: Vec<String>,
    series: &'a [super::series::Series],
    totals: Totals,
}

pub fn write_json(set: &SeriesSet, out: &mut dyn Write) -> io::Result<()> {
    let doc = Json {
        interval_secs: set.interval_secs,
        by: set.by.as_deref(),
        times: set.starts().map(rfc3339).collect(),
        series: &set.series,
        totals: set.totals,
    };
    serde_json::to_writer(&mut *out, &doc)?;
    out.write_all(b"\n")
}

pub fn write_csv(set: &SeriesSet, out: &mut dyn Write) -> io::Result<()> {
    out.write_all(b"time,key,octets,packets,flows\n")?;
    for (n, t) in set.starts().enumerate() {
        let t = rfc3339(t);
        for s in &set.series {
            writeln!(
                out,
                "{t},{},{},{},{}",
                csv_field(&s.key),
                s.octets[n],
                s.packets[n],
                s.flows[n]
            )?;
        }
    }
    Ok(())
}

/// A CSV field (RFC 4180): quoted when it holds a comma, a quote or a line break.
fn csv_field(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\"")).into()
    } else {
        s.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc_and_csv_fields_are_quoted() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_764_496_800), "2025-11-30T10:00:00Z");
        assert_eq!(csv_field("443"), "443");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }
}

/// The output formats, by extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Csv,
    Svg,
    Png,
}

pub fn format_of(path: &std::path::Path) -> Result<Format, String> {
    match path.extension().and_then(|e| e.to_str()) {
        Some("json") => Ok(Format::Json),
        Some("csv") => Ok(Format::Csv),
        Some("svg") => Ok(Format::Svg),
        Some("png") => Ok(Format::Png),
        _ => Err(format!(
            "{}: the extension says the format: .json, .csv, .svg or .png",
            path.display()
        )),
    }
}

/// Written beside the target and renamed: a reader never sees half a file.
pub fn write_file(
    set: &SeriesSet,
    path: &std::path::Path,
    format: Format,
    measure: super::chart::Measure,
    size: (u32, u32),
) -> std::io::Result<()> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    // The PNG encoder picks its format by the file's extension: `.part.png`.
    let part = path.with_extension(format!("part.{ext}"));
    let chart_error = |e: super::chart::ChartError| std::io::Error::other(e.to_string());
    match format {
        Format::Png => super::chart::png(set, measure, size, &part).map_err(chart_error)?,
        _ => {
            let mut out = std::io::BufWriter::new(std::fs::File::create(&part)?);
            match format {
                Format::Json => write_json(set, &mut out)?,
                Format::Csv => write_csv(set, &mut out)?,
                Format::Svg => out.write_all(
                    super::chart::svg(set, measure, size)
                        .map_err(chart_error)?
                        .as_bytes(),
                )?,
                Format::Png => {}
            }
            out.flush()?;
        }
    }
    std::fs::rename(&part, path)
}
