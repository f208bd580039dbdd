//! Analysis of decoded flows (issue 15): time series per interval and key, and their charts.
//! Pure like `wire` and `meter`: no tokio, no actors, no I/O beyond writing what the caller
//! asks for. A departure from
//! the shared layout, which has no home for it (it is neither the wire format, metering nor
//! mediation).

pub mod chart;
pub mod key;
pub mod live;
pub mod output;
pub mod report;
pub mod series;
pub mod time;
