//! Job submit-to-start latency with a free worker (the original design's headline: under 1 ms).
//! Submits small conversion jobs one after another, each once the previous one has ended, and
//! reports the supervisor's own measure (`telemetry.queue_wait_ms`: a monotonic clock from the
//! moment it takes `Submit` to the moment the job's actor is started and its state is running),
//! and the caller's view (Submit sent to a `Get` that answers running, which adds a round trip).
//!
//! `cargo bench --bench jobs` (optimised), or `cargo test --bench jobs` (debug build, same run).

use ipfixsvc::actors::jobs::{JobArgs, JobMsg, JobSupervisor};
use ipfixsvc::store::jobs::{JobOptions, JobSpec, JobState, JobStore};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const JOBS: usize = 300;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(run());
}

async fn run() {
    let dir = std::env::temp_dir().join(format!("ipfixsvc-bench-jobs-{}", std::process::id()));
    let retention = Duration::from_secs(3600);
    let args = JobArgs {
        store: Arc::new(JobStore::memory(retention)),
        storage_dir: dir.clone(),
        workers: 2,
        queue: 64,
        retention,
        node: "bench".into(),
        config_version: "bench".into(),
        max_series_cells: 2_000_000,
        stalled_after: ipfixsvc::actors::jobs::STALLED_AFTER,
    };
    let (sup, _) = ractor::Actor::spawn(None, JobSupervisor, args)
        .await
        .expect("job supervisor");
    let input = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/testdata/traffic/dns.pcap");
    let spec = JobSpec {
        tenant: "bench".into(),
        inputs: vec![input.display().to_string()],
        options: JobOptions::default(),
        ..JobSpec::default()
    };
    let mut inside = Vec::with_capacity(JOBS);
    let mut outside = Vec::with_capacity(JOBS);
    for _ in 0..JOBS {
        let sent = Instant::now();
        let id = ractor::call!(sup, JobMsg::Submit, spec.clone(), String::new())
            .expect("answers")
            .expect("a worker is free");
        let mut seen_running = None;
        loop {
            let r = ractor::call!(sup, JobMsg::Get, "bench".to_string(), id)
                .expect("answers")
                .expect("memory store")
                .expect("known");
            if seen_running.is_none() && r.state != JobState::Queued {
                seen_running = Some(sent.elapsed());
            }
            if r.state.is_final() {
                assert_eq!(r.state, JobState::Succeeded, "{:?}", r.error);
                inside.push(r.telemetry.queue_wait_ms.expect("telemetry"));
                break;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        if let Some(d) = seen_running {
            outside.push(d.as_secs_f64() * 1e3);
        }
    }
    report("submit -> running (supervisor telemetry)", &mut inside);
    report("submit -> Get answers running (caller)", &mut outside);
    let _ = std::fs::remove_dir_all(&dir);
}

fn report(what: &str, ms: &mut [f64]) {
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    println!(
        "{what}: n={} median {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        ms.len(),
        at(0.5),
        at(0.99),
        at(1.0)
    );
}
