//! A network sink's reconnect backoff and circuit breaker: failures back off from 100 ms
//! doubling to 30 s; after 5 in a row the breaker opens (a `drop` stream then drops and counts
//! until the next probe is due; a `block` stream waits for it); the probe (half-open) that
//! works closes it. The state is an atomic the API and the actor tree read.

use super::StreamStats;
use crate::mediation::spec::OnFull;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

pub const CLOSED: u8 = 0;
pub const OPEN: u8 = 1;
pub const HALF_OPEN: u8 = 2;

pub fn breaker_name(b: u8) -> &'static str {
    match b {
        OPEN => "open",
        HALF_OPEN => "half-open",
        _ => "closed",
    }
}

/// Failures in a row that open the breaker.
const TRIP_AFTER: u32 = 5;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

pub struct Breaker {
    /// What the sink talks to, for the log.
    peer: String,
    policy: OnFull,
    state: Arc<AtomicU8>,
    stats: Arc<StreamStats>,
    failures: u32,
    backoff: Duration,
    next_try: Instant,
}

/// What a write should do now.
pub enum Gate {
    /// Try (connect if need be).
    Try,
    /// The breaker is open and the stream drops: drop and count.
    Drop,
}

impl Breaker {
    pub fn new(peer: String, policy: OnFull, stats: Arc<StreamStats>) -> Breaker {
        stats.breaker.store(CLOSED, Ordering::Relaxed);
        Breaker {
            peer,
            policy,
            state: stats.breaker.clone(),
            stats,
            failures: 0,
            backoff: FIRST_BACKOFF,
            next_try: Instant::now(),
        }
    }

    /// Before an attempt while not connected: drop (open, `drop` policy, probe not due), or
    /// wait until the next attempt is due and try (half-open when the breaker was open).
    pub async fn gate(&self) -> Gate {
        if Instant::now() < self.next_try {
            if self.policy == OnFull::Drop && self.state.load(Ordering::Relaxed) == OPEN {
                return Gate::Drop;
            }
            tokio::time::sleep_until(self.next_try.into()).await;
        }
        if self.state.load(Ordering::Relaxed) == OPEN {
            self.state.store(HALF_OPEN, Ordering::Relaxed);
        }
        Gate::Try
    }

    pub fn failed(&mut self, e: &dyn std::fmt::Display) {
        self.stats.sink_errors.fetch_add(1, Ordering::Relaxed);
        self.failures += 1;
        self.next_try = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        if self.failures >= TRIP_AFTER {
            if self.state.swap(OPEN, Ordering::Relaxed) != OPEN {
                tracing::warn!(to = %self.peer, error = %e, failures = self.failures, "sink: circuit breaker open");
            }
        } else {
            tracing::debug!(to = %self.peer, error = %e, "sink: failed, will try again");
        }
    }

    pub fn succeeded(&mut self) {
        if self.state.swap(CLOSED, Ordering::Relaxed) != CLOSED {
            tracing::info!(to = %self.peer, "sink: working again, circuit breaker closed");
        }
        self.failures = 0;
        self.backoff = FIRST_BACKOFF;
    }

    /// Records dropped while the breaker is open.
    pub fn drop_records(&self, n: u64) {
        self.stats.dropped.fetch_add(n, Ordering::Relaxed);
    }
}
