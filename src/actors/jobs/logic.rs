//! The JobSupervisor's decisions, without a runtime: whether a new job starts, waits or is
//! refused; how long a refused client should wait; how a record moves between states.

use crate::store::jobs::{JobRecord, JobState, unix_ms};
use std::time::Duration;

/// What becomes of a submitted job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Start,
    Queue,
    Refuse,
}

/// FIFO: a job starts at once only when a worker is free and nobody waits before it.
pub fn admit(running: usize, workers: usize, queued: usize, queue_cap: usize) -> Admission {
    if running < workers && queued == 0 {
        Admission::Start
    } else if queued < queue_cap {
        Admission::Queue
    } else {
        Admission::Refuse
    }
}

/// When a refused client may expect room: the queue ahead of it drains at `workers` jobs per
/// typical run time. Whole seconds (an HTTP Retry-After), at least 1, at most 5 minutes.
pub fn retry_after(queued: usize, workers: usize, mean_exec: Option<Duration>) -> Duration {
    let per_job = mean_exec.unwrap_or(Duration::from_secs(1));
    let rounds = (queued / workers.max(1)).max(1) as u32;
    let secs = per_job.saturating_mul(rounds).as_secs_f64().ceil() as u64;
    Duration::from_secs(secs.clamp(1, 300))
}

/// A running mean that follows recent jobs (weight 1/8 for the newest).
pub fn update_mean(mean: Option<Duration>, sample: Duration) -> Duration {
    match mean {
        None => sample,
        Some(m) => (m * 7 + sample) / 8,
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("job {id}: {from:?} cannot become {to:?}")]
pub struct BadTransition {
    pub id: String,
    pub from: JobState,
    pub to: JobState,
}

/// Moves a record to `to`, stamping the start or finish time; refuses what the state machine
/// does not allow, so a late message (progress after cancel, a second outcome) changes nothing.
pub fn transition(rec: &mut JobRecord, to: JobState) -> Result<(), BadTransition> {
    if !rec.state.can_become(to) {
        return Err(BadTransition {
            id: rec.id.to_string(),
            from: rec.state,
            to,
        });
    }
    let now = unix_ms();
    if to == JobState::Running {
        rec.started_ms = Some(now);
    }
    if to.is_final() {
        rec.finished_ms = Some(now);
    }
    rec.state = to;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::jobs::{JobId, JobOptions, JobSpec};

    #[test]
    fn admission_is_fifo_and_bounded() {
        assert_eq!(admit(0, 1, 0, 1), Admission::Start);
        assert_eq!(admit(1, 1, 0, 1), Admission::Queue);
        assert_eq!(admit(1, 1, 1, 1), Admission::Refuse);
        // A free worker does not let a newcomer overtake those already waiting.
        assert_eq!(admit(1, 2, 1, 4), Admission::Queue);
        assert_eq!(admit(2, 2, 0, 0), Admission::Refuse);
    }

    #[test]
    fn retry_after_is_whole_positive_seconds() {
        assert_eq!(retry_after(0, 4, None), Duration::from_secs(1));
        assert_eq!(
            retry_after(8, 2, Some(Duration::from_millis(2500))),
            Duration::from_secs(10)
        );
        assert_eq!(
            retry_after(1000, 1, Some(Duration::from_secs(60))),
            Duration::from_secs(300)
        );
        assert_eq!(
            retry_after(1, 1, Some(Duration::from_millis(3))),
            Duration::from_secs(1)
        );
    }

    #[test]
    fn records_follow_the_state_machine() {
        let spec = JobSpec {
            tenant: "t".into(),
            inputs: vec!["x.pcap".into()],
            options: JobOptions::default(),
            ..JobSpec::default()
        };
        let mut r = JobRecord::queued(JobId::new(), &spec, "n");
        assert!(transition(&mut r, JobState::Succeeded).is_err());
        transition(&mut r, JobState::Running).expect("queued -> running");
        assert!(r.started_ms.is_some() && r.finished_ms.is_none());
        transition(&mut r, JobState::Cancelled).expect("running -> cancelled");
        assert!(r.finished_ms.is_some());
        let e = transition(&mut r, JobState::Failed).expect_err("final");
        assert_eq!(e.from, JobState::Cancelled);
        assert_eq!(r.state, JobState::Cancelled);
    }

    #[test]
    fn mean_follows_recent_jobs() {
        let m = update_mean(None, Duration::from_millis(800));
        assert_eq!(m, Duration::from_millis(800));
        let m = update_mean(Some(m), Duration::from_millis(0));
        assert_eq!(m, Duration::from_millis(700));
    }
}
