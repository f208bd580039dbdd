//! A tenant's live series (`GET /api/v1/tenants/{tenant}/timeseries`): what its `timeseries`
//! stream keeps, merged over the nodes that collect for it (through this node's
//! SessionDirectory), as JSON or, with `Accept: image/svg+xml`, as a chart.

use super::problem::{self, Problem};
use super::routes::Ctx;
use crate::actors::directory;
use crate::actors::mediator::SeriesAsk;
use crate::analysis::chart::{self, Measure};
use crate::analysis::output;
use crate::store::jobs::ChartMeasure;
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

/// The window and the shape of the answer.
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SeriesQuery {
    /// The tenant's `timeseries` stream to read; needed only when it has several. An empty
    /// parameter (here and below) counts as not given.
    stream: Option<String>,
    /// A key the stream keeps (one of its sink's `by`); none: the total.
    by: Option<String>,
    /// The window's start: RFC 3339 or Unix seconds (default: an hour before `to`).
    from: Option<String>,
    /// The window's end: RFC 3339 or Unix seconds (default: now).
    to: Option<String>,
    /// Keys with their own series, the most octets in the window first; the rest are `other`
    /// (default 10, at most 1000).
    #[param(maximum = 1000)]
    top: Option<u32>,
    /// A chart's measure (default bits).
    #[param(inline)]
    chart: Option<ChartMeasure>,
    /// A chart's size in pixels (default 1200 x 600; 100 to 4000 each).
    #[param(minimum = 100, maximum = 4000)]
    width: Option<u32>,
    #[param(minimum = 100, maximum = 4000)]
    height: Option<u32>,
}

/// The series as `ipfixsvc timeseries` writes them, with where they came from.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct LiveSeries {
    pub stream: String,
    /// Nodes whose stream answered (their cells are added up); with `stored`, the writers
    /// whose cells the series store held (a node restarted counts again).
    pub nodes: u32,
    /// Read from the series store (a stream with `store = "redis"`): every node's cells as of
    /// its last write (each second), this node's as of now.
    pub stored: bool,
    /// Nodes that did not answer: the series lack their records.
    pub errors: Vec<String>,
    pub interval_secs: u64,
    pub by: Option<String>,
    /// Interval starts, RFC 3339 UTC.
    pub times: Vec<String>,
    /// `{"key", "octets": [...], "packets": [...], "flows": [...]}`, `other` last.
    #[schema(value_type = Vec<Object>)]
    pub series: Vec<crate::analysis::series::Series>,
    /// `{"octets", "packets", "flows", "untimed"}` over the window.
    #[schema(value_type = Object)]
    pub totals: crate::analysis::series::Totals,
}

/// Intervals one answer holds at most (a window of a day at 10 s is 8,640).
pub const MAX_WINDOW: i64 = 20_000;
/// Series x intervals one answer holds at most.
pub const MAX_ANSWER_CELLS: i64 = 400_000;

fn bad(detail: String) -> Rejection {
    problem::reject(Problem::new(
        StatusCode::BAD_REQUEST,
        "invalid-query",
        "Invalid query",
        detail,
    ))
}

/// RFC 3339 or Unix seconds, in Unix milliseconds.
fn instant(name: &str, text: &str) -> Result<i64, Rejection> {
    if let Ok(secs) = text.parse::<i64>() {
        return secs
            .checked_mul(1000)
            .ok_or_else(|| bad(format!("{name}: {text} is out of range")));
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis())
        .map_err(|e| {
            bad(format!(
                "{name}: {text:?} is neither RFC 3339 nor Unix seconds: {e}"
            ))
        })
}

pub fn routes(
    ctx: Ctx,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    warp::path!("api" / "v1" / "tenants" / String / "timeseries")
        .and(warp::get())
        .and(super::tenants::authorized(ctx))
        .and(super::problem::query::<SeriesQuery>())
        .and(warp::header::optional::<String>("accept"))
        .and_then(series)
}

async fn series(
    tenant: String,
    ctx: Ctx,
    q: SeriesQuery,
    accept: Option<String>,
) -> Result<warp::reply::Response, Rejection> {
    super::tenants::tenant(&ctx, &tenant).await?;
    // An empty parameter is one not given (as an HTML form sends an empty field).
    let given = |v: Option<String>| v.filter(|s| !s.trim().is_empty());
    let q = SeriesQuery {
        stream: given(q.stream),
        by: given(q.by),
        from: given(q.from),
        to: given(q.to),
        ..q
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let to =
        q.to.as_deref()
            .map(|t| instant("to", t))
            .transpose()?
            .unwrap_or(now);
    let from = match q.from.as_deref() {
        Some(f) => instant("from", f)?,
        None => to.saturating_sub(3_600_000),
    };
    if from > to {
        return Err(bad("from is after to".into()));
    }
    let top = q.top.unwrap_or(10);
    if top > 1000 {
        return Err(bad(format!("top {top}: at most 1000")));
    }
    let size = (q.width.unwrap_or(1200), q.height.unwrap_or(600));
    if ![size.0, size.1].iter().all(|v| (100..=4000).contains(v)) {
        return Err(bad("width and height: 100 to 4000 pixels".into()));
    }
    let Some(d) = directory::local() else {
        return Err(problem::reject(Problem::unavailable(
            "the session directory is restarting".into(),
        )));
    };
    let ask = SeriesAsk {
        tenant: tenant.clone(),
        stream: q.stream.clone(),
        by: q.by.clone(),
        from_ms: from,
        to_ms: to,
    };
    let answer = directory::call_series(&d, ctx.cluster, ask, ctx.timeout.as_millis() as u64)
        .await
        .map_err(|e| {
            problem::reject(Problem::unavailable(format!(
                "asking the session directory: {e}"
            )))
        })?;
    if let Some(why) = answer.refusal {
        return Err(bad(why));
    }
    let Some(stream) = answer.stream else {
        let detail = match &q.stream {
            Some(s) => format!("tenant {tenant:?} has no timeseries stream {s:?}"),
            None => format!(
                "tenant {tenant:?} has no stream with a timeseries sink (POST .../streams with sink kind \"timeseries\")"
            ),
        };
        let detail = if answer.errors.is_empty() {
            detail
        } else {
            format!(
                "{detail}; nodes that did not answer: {}",
                answer.errors.join("; ")
            )
        };
        return Err(problem::reject(Problem::not_found(detail)));
    };
    // A peer's interval is checked before it is used (1 s to an hour, as the sink takes).
    if !(1..=3600).contains(&answer.cells.interval_secs) {
        return Err(problem::reject(Problem::unavailable(format!(
            "a node answered with an interval of {} s",
            answer.cells.interval_secs
        ))));
    }
    let interval_ms = answer.cells.interval_secs as i64 * 1000;
    let (first, last) = (from.div_euclid(interval_ms), to.div_euclid(interval_ms));
    let n = last - first + 1;
    if n > MAX_WINDOW {
        return Err(bad(format!(
            "the window holds {n} intervals of {} s: at most {MAX_WINDOW} in one answer",
            interval_ms / 1000
        )));
    }
    // The answer is (top + 1) series of n intervals: bounded as a whole too.
    if (i64::from(top) + 1) * n > MAX_ANSWER_CELLS {
        return Err(bad(format!(
            "top {top} over {n} intervals is {} cells: at most {MAX_ANSWER_CELLS} in one answer (a smaller top or a shorter window)",
            (i64::from(top) + 1) * n
        )));
    }
    let set = answer.cells.assemble(first, last, top as usize);
    let svg = accept
        .as_deref()
        .is_some_and(|a| a.split(',').any(|m| m.trim().starts_with("image/svg+xml")));
    if svg {
        let measure = Measure::from(q.chart.unwrap_or(ChartMeasure::Bits));
        let body = chart::svg(&set, measure, size).map_err(|e| {
            problem::reject(Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "chart",
                "The chart could not be drawn",
                e.to_string(),
            ))
        })?;
        return Ok(warp::reply::with_header(body, "content-type", "image/svg+xml").into_response());
    }
    let doc = LiveSeries {
        stream,
        nodes: answer.nodes,
        stored: answer.stored,
        errors: answer.errors,
        interval_secs: set.interval_secs,
        by: set.by.clone(),
        times: set.starts().map(output::rfc3339).collect(),
        totals: set.totals,
        series: set.series,
    };
    Ok(warp::reply::json(&doc).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_are_rfc3339_or_unix_seconds() {
        assert_eq!(instant("to", "1700000000").ok(), Some(1_700_000_000_000));
        assert_eq!(
            instant("to", "2023-11-14T22:13:20Z").ok(),
            Some(1_700_000_000_000)
        );
        assert!(instant("to", "yesterday").is_err());
        assert!(instant("to", "99999999999999999").is_err());
    }
}
