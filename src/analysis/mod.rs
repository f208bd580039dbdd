//! Analysis of decoded flows (issue 15): time series per interval and key. Pure like `wire`
//! and `meter`: no tokio, no actors, no I/O beyond what the caller hands in. A departure from
//! the shared layout, which has no home for it (it is neither the wire format, metering nor
//! mediation).

pub mod key;
pub mod output;
pub mod series;
pub mod time;
