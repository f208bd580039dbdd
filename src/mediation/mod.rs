//! The Mediation Process's logic (RFC 6183): what export streams do to records on their way out.
//! Pure and synchronous like `wire` and `meter` (no tokio, no actors, no I/O): the mediator's
//! actors own the streams, their queues and sinks, and call in here.

pub mod cryptopan;
pub mod filter;
