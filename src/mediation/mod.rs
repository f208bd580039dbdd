//! The Mediation Process's logic (RFC 6183): what export streams do to records on their way out.
//! Pure and synchronous like `wire` and `meter` (no tokio, no actors, no I/O): the mediator's
//! actors own the streams, their queues and sinks, and call in here.

pub mod aggregate;
pub mod cryptopan;
pub mod export;
pub mod filter;
pub mod shape;
pub mod spec;

use crate::wire::decoder::DecodedMessage;
use filter::Mask;
use std::net::IpAddr;
use std::sync::Arc;

/// Where records came from: the session that decoded them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// As NDJSON's `@exporter` shows it: `address:port`, or a file name.
    pub exporter: String,
    pub addr: IpAddr,
    pub tenant: String,
}

/// Records on their way through a stream: one decoded message (shared with the session and the
/// other streams, never copied unless a transform changes it) and which records of each of its
/// batches are still in.
#[derive(Debug, Clone)]
pub struct Records {
    pub msg: Arc<DecodedMessage>,
    pub source: Arc<Source>,
    /// Per batch: `None` when every record is in.
    pub selected: Vec<Option<Mask>>,
    /// The Observation Domain the records leave under (the `domain` transform changes it).
    pub domain: u32,
}

impl Records {
    /// All the records of `msg`.
    pub fn all(msg: Arc<DecodedMessage>, source: Arc<Source>) -> Records {
        Records {
            source,
            selected: vec![None; msg.batches.len()],
            domain: msg.header.observation_domain,
            msg,
        }
    }

    pub fn count(&self) -> usize {
        self.msg
            .batches
            .iter()
            .zip(&self.selected)
            .map(|(b, s)| s.as_ref().map_or(b.len(), Mask::count))
            .sum()
    }

    /// The records of batch `k` that are in, in order.
    pub fn rows(&self, k: usize) -> Box<dyn Iterator<Item = usize> + Send + '_> {
        match &self.selected[k] {
            Some(m) => Box::new(m.ones()),
            None => Box::new(0..self.msg.batches[k].len()),
        }
    }
}
