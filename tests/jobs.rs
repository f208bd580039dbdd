//! Conversion jobs as supervised actors, in process: a JobSupervisor over a temporary storage
//! folder, real captures, real files, a real redis-server for the shared records.

mod common;

use common::redis_server::RedisServer;
use ipfixsvc::actors::jobs::{CancelError, Cancelled, JobArgs, JobMsg, JobSupervisor, SubmitError};
use ipfixsvc::store::jobs::{
    JobId, JobOptions, JobRecord, JobSpec, JobState, JobStore, TimeSeriesOptions,
};
use ractor::ActorRef;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ipfixsvc");
const TENANT: &str = "acme";
const RETENTION: Duration = Duration::from_secs(7 * 86_400);

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ipfixsvc-jobs-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn capture(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/testdata/traffic")
        .join(name);
    p.display().to_string()
}

fn spec(inputs: Vec<String>) -> JobSpec {
    JobSpec {
        tenant: TENANT.into(),
        inputs,
        options: JobOptions::default(),
        ..JobSpec::default()
    }
}

/// A job that runs until cancelled (one capture read many times: the run checks for a cancel
/// after every capture, so it stops within milliseconds).
fn long_spec() -> JobSpec {
    spec(vec![capture("wg.pcap"); 20_000])
}

async fn supervisor(
    store: JobStore,
    dir: &Path,
    workers: usize,
    queue: usize,
    node: &str,
) -> ActorRef<JobMsg> {
    let args = JobArgs {
        store: Arc::new(store),
        storage_dir: dir.to_path_buf(),
        workers,
        queue,
        retention: RETENTION,
        node: node.into(),
        config_version: "test".into(),
        max_series_cells: 2_000_000,
        stalled_after: ipfixsvc::actors::jobs::STALLED_AFTER,
    };
    // Unnamed: names are process-wide, and a test may run several "nodes".
    let (sup, _) = ractor::Actor::spawn(None, JobSupervisor, args)
        .await
        .expect("job supervisor starts");
    sup
}

async fn submit(sup: &ActorRef<JobMsg>, spec: JobSpec) -> Result<JobId, SubmitError> {
    ractor::call!(sup, JobMsg::Submit, spec, String::new()).expect("supervisor answers")
}

async fn get(sup: &ActorRef<JobMsg>, id: JobId) -> Option<JobRecord> {
    ractor::call!(sup, JobMsg::Get, TENANT.to_string(), id)
        .expect("supervisor answers")
        .expect("store answers")
}

async fn wait_for(sup: &ActorRef<JobMsg>, id: JobId, state: JobState) -> JobRecord {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = get(sup, id).await.expect("job known");
        if r.state == state {
            return r;
        }
        assert!(
            Instant::now() < deadline && !(r.state.is_final()),
            "job {id} is {:?}, waited for {state:?}: {:?}",
            r.state,
            r.error
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `ipfixsvc dump` of an IPFIX file: its records, without what names the file and the moment
/// it was written (its path and the messages' export time).
fn dump(file: &Path) -> Vec<serde_json::Value> {
    let o = Command::new(BIN)
        .arg("dump")
        .arg(file)
        .output()
        .expect("dump");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).expect("JSON");
            if let Some(m) = v.as_object_mut() {
                m.remove("@exporter");
                m.remove("@exportTime");
            }
            v
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_writes_what_convert_writes() {
    let dir = temp_dir("same");
    let sup = supervisor(JobStore::memory(RETENTION), &dir, 2, 4, "node-a").await;
    let inputs: Vec<String> = common::traffic_captures()
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    let id = submit(&sup, spec(inputs.clone())).await.expect("accepted");
    let r = wait_for(&sup, id, JobState::Succeeded).await;

    let artifact = PathBuf::from(r.artifact.as_deref().expect("artifact"));
    assert_eq!(
        artifact,
        dir.join("jobs").join(id.to_string()).join("result.ipfix")
    );
    assert!(!artifact.with_extension("ipfix.part").exists());
    let by_cli = dir.join("cli.ipfix");
    let o = Command::new(BIN)
        .arg("convert")
        .args(&inputs)
        .arg("-o")
        .arg(&by_cli)
        .output()
        .expect("convert");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (job_records, cli_records) = (dump(&artifact), dump(&by_cli));
    assert!(!job_records.is_empty());
    assert_eq!(job_records.len(), cli_records.len());
    for (n, (a, b)) in job_records.iter().zip(&cli_records).enumerate() {
        assert_eq!(a, b, "record {n}: the job meters as convert does");
    }

    let summary = r.summary.expect("summary");
    assert_eq!(summary.flows, job_records.len() as u64);
    let total: u64 = inputs
        .iter()
        .map(|i| std::fs::metadata(i).expect("size").len())
        .sum();
    assert_eq!(r.progress.bytes_total, total);
    assert_eq!(r.progress.bytes_read, total);
    assert_eq!(r.progress.packets, summary.packets);
    assert_eq!(r.progress.flows, summary.flows);
    assert!(r.telemetry.queue_wait_ms.is_some_and(|w| w >= 0.0));
    assert!(r.telemetry.exec_ms.is_some_and(|e| e > 0.0));
    assert!(r.started_ms.is_some() && r.finished_ms.is_some());
    assert_eq!(
        (r.kind.as_str(), r.node.as_str()),
        ("pcap_conversion", "node-a")
    );

    let all = ractor::call!(sup, JobMsg::List, TENANT.to_string())
        .expect("answers")
        .expect("store");
    assert_eq!(all.iter().map(|r| r.id).collect::<Vec<_>>(), vec![id]);
    let other = ractor::call!(sup, JobMsg::Get, "someone-else".to_string(), id).expect("answers");
    assert_eq!(
        other.ok().flatten(),
        None,
        "tenants do not see each other's jobs"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_and_cancel_frees_the_worker() {
    let dir = temp_dir("queue");
    let sup = supervisor(JobStore::memory(RETENTION), &dir, 1, 1, "node-a").await;
    let running = submit(&sup, long_spec()).await.expect("starts");
    wait_for(&sup, running, JobState::Running).await;
    let queued = submit(&sup, long_spec()).await.expect("queued");
    match submit(&sup, long_spec()).await {
        Err(SubmitError::QueueFull { retry_after }) => assert!(retry_after > Duration::ZERO),
        other => panic!("expected QueueFull, got {other:?}"),
    }
    // The metering runs off the runtime: the supervisor answers while the job meters.
    let r = get(&sup, running).await.expect("known");
    assert_eq!(r.state, JobState::Running);
    assert_eq!(
        get(&sup, queued).await.map(|r| r.state),
        Some(JobState::Queued)
    );

    let c = ractor::call!(sup, JobMsg::Cancel, TENANT.to_string(), queued).expect("answers");
    assert_eq!(c, Ok(Cancelled::Cancelled));
    assert_eq!(
        get(&sup, queued).await.map(|r| r.state),
        Some(JobState::Cancelled)
    );
    let again = ractor::call!(sup, JobMsg::Cancel, TENANT.to_string(), queued).expect("answers");
    assert_eq!(again, Err(CancelError::AlreadyEnded(JobState::Cancelled)));

    let next = submit(&sup, spec(vec![capture("dns.pcap")]))
        .await
        .expect("room again");
    let c = ractor::call!(sup, JobMsg::Cancel, TENANT.to_string(), running).expect("answers");
    assert_eq!(c, Ok(Cancelled::Cancelling));
    let r = wait_for(&sup, running, JobState::Cancelled).await;
    assert!(r.artifact.is_none());
    let job_dir = dir.join("jobs").join(running.to_string());
    assert!(!job_dir.join("result.ipfix").exists());
    assert!(
        !job_dir.join("result.ipfix.part").exists(),
        "no part file left"
    );
    assert!(!job_dir.exists(), "no empty folder left either");

    let r = wait_for(&sup, next, JobState::Succeeded).await;
    assert!(r.artifact.is_some_and(|a| Path::new(&a).exists()));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two nodes' supervisors (in one process: their directories meet in the same `pg` group, as
/// across a cluster): a cancel sent to B reaches the job running on A.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_reaches_the_node_running_the_job() {
    let (dir_a, dir_b) = (temp_dir("cancel-a"), temp_dir("cancel-b"));
    let a = supervisor(JobStore::memory(RETENTION), &dir_a, 1, 4, "node-a").await;
    let b = supervisor(JobStore::memory(RETENTION), &dir_b, 1, 4, "node-b").await;
    let id = submit(&a, long_spec()).await.expect("starts on A");
    wait_for(&a, id, JobState::Running).await;

    // Another tenant cannot cancel it from anywhere; an unknown job is not found anywhere.
    let other = ractor::call!(b, JobMsg::Cancel, "intruder".to_string(), id).expect("answers");
    assert_eq!(other, Err(CancelError::NotFound));
    let unknown = ractor::call!(b, JobMsg::Cancel, TENANT.to_string(), JobId::new());
    assert_eq!(unknown.expect("answers"), Err(CancelError::NotFound));
    assert_eq!(get(&a, id).await.map(|r| r.state), Some(JobState::Running));

    let c = ractor::call!(b, JobMsg::Cancel, TENANT.to_string(), id).expect("answers");
    assert_eq!(c, Ok(Cancelled::Cancelling));
    let r = wait_for(&a, id, JobState::Cancelled).await;
    assert!(r.artifact.is_none());
    for d in [dir_a, dir_b] {
        let _ = std::fs::remove_dir_all(&d);
    }
}

#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_job_fails_alone() {
    let dir = temp_dir("panic");
    let sup = supervisor(JobStore::memory(RETENTION), &dir, 2, 4, "node-a").await;
    let mut faulty = spec(vec![capture("http.pcap"), capture("tls.pcap")]);
    faulty.options.fail_after_packets = Some(1);
    let bad = submit(&sup, faulty).await.expect("accepted");
    let good = submit(&sup, spec(vec![capture("http.pcap"), capture("tls.pcap")]))
        .await
        .expect("accepted");
    let r = wait_for(&sup, bad, JobState::Failed).await;
    let error = r.error.unwrap_or_default();
    assert!(error.contains("injected fault"), "{error}");
    assert!(r.artifact.is_none());
    wait_for(&sup, good, JobState::Succeeded).await;
    let after = submit(&sup, spec(vec![capture("dns.pcap")]))
        .await
        .expect("the supervisor goes on");
    wait_for(&sup, after, JobState::Succeeded).await;
    let job_dir = dir.join("jobs").join(bad.to_string());
    common::eventually(
        "the failed job leaves no file",
        Duration::from_secs(5),
        || !job_dir.join("result.ipfix").exists() && !job_dir.join("result.ipfix.part").exists(),
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_fail_clearly_and_a_cut_capture_succeeds_with_a_warning() {
    let dir = temp_dir("bad");
    let sup = supervisor(JobStore::memory(RETENTION), &dir, 2, 4, "node-a").await;
    let missing = dir.join("nope.pcap").display().to_string();
    let id = submit(&sup, spec(vec![missing.clone()]))
        .await
        .expect("accepted");
    let r = wait_for(&sup, id, JobState::Failed).await;
    assert!(r.error.unwrap_or_default().contains(&missing));

    let text = dir.join("notes.pcap");
    std::fs::write(&text, "not a capture at all, just words").expect("write");
    let id = submit(&sup, spec(vec![text.display().to_string()]))
        .await
        .expect("accepted");
    let r = wait_for(&sup, id, JobState::Failed).await;
    assert!(r.error.unwrap_or_default().contains("notes.pcap"));
    assert!(
        !dir.join("jobs")
            .join(id.to_string())
            .join("result.ipfix.part")
            .exists()
    );

    // A FIFO would block its worker for ever in open(); a folder is no capture either.
    let fifo = dir.join("pipe.pcap");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    for input in [fifo, dir.clone()] {
        let id = submit(&sup, spec(vec![input.display().to_string()]))
            .await
            .expect("accepted");
        let r = wait_for(&sup, id, JobState::Failed).await;
        assert!(
            r.error
                .as_deref()
                .is_some_and(|e| e.contains("not a regular file")),
            "{:?}",
            r.error
        );
    }

    let whole = std::fs::read(capture("http.pcap")).expect("read");
    let cut = dir.join("cut.pcap");
    std::fs::write(&cut, &whole[..whole.len() * 2 / 3]).expect("write");
    let id = submit(&sup, spec(vec![cut.display().to_string()]))
        .await
        .expect("accepted");
    let r = wait_for(&sup, id, JobState::Succeeded).await;
    let warnings = r.summary.map(|s| s.warnings).unwrap_or_default();
    assert!(
        warnings.iter().any(|w| w.contains("ends early")),
        "{warnings:?}"
    );

    assert!(matches!(
        submit(&sup, spec(vec![])).await,
        Err(SubmitError::Invalid(_))
    ));
    let _ = std::fs::remove_dir_all(&dir);
}

/// What every store must do, in memory as in Redis.
async fn store_contract(store: &JobStore) {
    let mut r = JobRecord::queued(JobId::new(), &spec(vec![capture("dns.pcap")]), "n1");
    store.put(&r).await.expect("put");
    assert_eq!(store.get(TENANT, r.id).await.expect("get"), Some(r.clone()));
    assert_eq!(store.get("other", r.id).await.expect("get"), None);
    assert_eq!(store.get(TENANT, JobId::new()).await.expect("get"), None);
    r.state = JobState::Running;
    r.progress.packets = 7;
    store.put(&r).await.expect("update");
    let mut second = JobRecord::queued(JobId::new(), &spec(vec![capture("ntp.pcap")]), "n2");
    second.submitted_ms = r.submitted_ms + 1;
    store.put(&second).await.expect("put");
    let listed = store.list(TENANT).await.expect("list");
    assert_eq!(listed, vec![r.clone(), second.clone()]);
    assert!(store.list("other").await.expect("list").is_empty());
    // Submitted longer ago than the retention (it waited or ran that long) but written just now:
    // a record lives `retention` after its last write, and what Get finds, List shows.
    let mut long_running = JobRecord::queued(JobId::new(), &spec(vec![]), "n3");
    long_running.submitted_ms = r.submitted_ms - 2 * RETENTION.as_millis() as u64;
    long_running.state = JobState::Running;
    store.put(&long_running).await.expect("put");
    assert!(
        store
            .get(TENANT, long_running.id)
            .await
            .expect("get")
            .is_some()
    );
    let listed = store.list(TENANT).await.expect("list");
    assert_eq!(listed, vec![long_running, r.clone(), second.clone()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_in_redis_are_read_by_another_node() {
    let redis = RedisServer::start();
    let timeout = Duration::from_millis(500);
    let open = || JobStore::redis(&redis.url(), RETENTION, timeout).expect("redis store");
    store_contract(&JobStore::memory(RETENTION)).await;
    store_contract(&open()).await;

    let dir = temp_dir("redis");
    let node_a = supervisor(open(), &dir, 1, 4, "node-a").await;
    let id = submit(&node_a, spec(vec![capture("smtp.pcap")]))
        .await
        .expect("accepted");
    let done = wait_for(&node_a, id, JobState::Succeeded).await;

    // Another node: its own store instance, its own supervisor, neither of which ran the job.
    let other_store = open();
    let deadline = Instant::now() + Duration::from_secs(5);
    while other_store.get(TENANT, id).await.ok().flatten().as_ref() != Some(&done) {
        assert!(Instant::now() < deadline, "the final record reaches Redis");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let node_b = supervisor(open(), &dir, 1, 4, "node-b").await;
    let seen = get(&node_b, id)
        .await
        .expect("node b answers for node a's job");
    assert_eq!(seen.node, "node-a");
    assert_eq!(seen.state, JobState::Succeeded);
    let listed = ractor::call!(node_b, JobMsg::List, TENANT.to_string())
        .expect("answers")
        .expect("store");
    assert!(listed.iter().any(|r| r.id == id));
    let c = ractor::call!(node_b, JobMsg::Cancel, TENANT.to_string(), id).expect("answers");
    assert_eq!(
        c,
        Err(CancelError::AlreadyEnded(JobState::Succeeded)),
        "node a, which ran it, answers through the job directories"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A record that expired leaves the listing, and the listing takes its id out of the index.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_records_leave_the_listing_and_the_index() {
    let redis = RedisServer::start();
    let store = JobStore::redis(
        &redis.url(),
        Duration::from_secs(1),
        Duration::from_millis(500),
    )
    .expect("redis store");
    let gone = JobRecord::queued(JobId::new(), &spec(vec![]), "n1");
    store.put(&gone).await.expect("put");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let kept = JobRecord::queued(JobId::new(), &spec(vec![]), "n1");
    store.put(&kept).await.expect("put");
    assert_eq!(store.list(TENANT).await.expect("list"), vec![kept.clone()]);
    let mut conn = redis::Client::open(redis.url())
        .and_then(|c| c.get_connection())
        .expect("redis connection");
    let ids: Vec<String> = redis::cmd("ZRANGE")
        .arg(format!("ipfix:jobs:{TENANT}"))
        .arg(0)
        .arg(-1)
        .query(&mut conn)
        .expect("zrange");
    assert_eq!(ids, vec![kept.id.to_string()]);
}

/// Redis goes away while a job runs: the job still ends, and its final record reaches Redis once
/// it is back (other nodes would otherwise show the job running for the retention time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_record_written_while_redis_was_down_arrives_later() {
    let mut redis = RedisServer::start();
    let open =
        || JobStore::redis(&redis.url(), RETENTION, Duration::from_millis(300)).expect("store");
    let dir = temp_dir("redis-down");
    let sup = supervisor(open(), &dir, 1, 4, "node-a").await;
    let other = open();
    let id = submit(&sup, long_spec()).await.expect("starts");
    wait_for(&sup, id, JobState::Running).await;
    redis.kill();
    let c = ractor::call!(sup, JobMsg::Cancel, TENANT.to_string(), id).expect("answers");
    assert_eq!(c, Ok(Cancelled::Cancelling));
    wait_for(&sup, id, JobState::Cancelled).await;
    // Long enough for the writer to try (and fail) with Redis down.
    tokio::time::sleep(Duration::from_millis(800)).await;
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stored = other.get(TENANT, id).await.ok().flatten().map(|r| r.state);
        if stored == Some(JobState::Cancelled) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "final record never stored: {stored:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_cancels_queued_and_running_jobs_and_refuses_new_ones() {
    let dir = temp_dir("drain");
    let sup = supervisor(JobStore::memory(RETENTION), &dir, 1, 4, "node-a").await;
    let running = submit(&sup, long_spec()).await.expect("starts");
    let queued = submit(&sup, long_spec()).await.expect("queued");
    wait_for(&sup, running, JobState::Running).await;
    ractor::call!(sup, JobMsg::Drain).expect("drains");
    for id in [running, queued] {
        let r = get(&sup, id).await.expect("known");
        assert_eq!(r.state, JobState::Cancelled, "{id}");
        assert_eq!(r.error.as_deref(), Some("node shutting down"));
    }
    assert!(
        !dir.join("jobs")
            .join(running.to_string())
            .join("result.ipfix.part")
            .exists()
    );
    assert_eq!(
        submit(&sup, spec(vec![capture("dns.pcap")])).await,
        Err(SubmitError::Draining)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn series_spec(after: Option<JobId>, inputs: Vec<String>) -> JobSpec {
    JobSpec {
        tenant: TENANT.into(),
        inputs,
        time_series: Some(TimeSeriesOptions {
            by: Some("destinationTransportPort".into()),
            ..TimeSeriesOptions::default()
        }),
        after,
        ..JobSpec::default()
    }
}

/// `ipfixsvc timeseries` of the same input with the same options: the job's JSON must be it.
fn timeseries_cli(input: &Path, out: &Path) -> Vec<u8> {
    let o = Command::new(BIN)
        .arg("timeseries")
        .arg(input)
        .args(["--by", "destinationTransportPort", "-o"])
        .arg(out)
        .output()
        .expect("timeseries");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::read(out).expect("cli json")
}

/// One worker: a time series submitted after a conversion waits without holding the worker
/// (else the two would deadlock), then takes the conversion's result; its files are what the
/// CLI makes of that result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_time_series_after_a_conversion_takes_its_result() {
    let dir = temp_dir("after");
    let sup = supervisor(JobStore::memory(RETENTION), &dir, 1, 4, "node-a").await;
    let conv = submit(&sup, spec(vec![capture("http.pcap")]))
        .await
        .expect("conversion accepted");
    let ts = submit(&sup, series_spec(Some(conv), Vec::new()))
        .await
        .expect("time series accepted");
    let waiting = get(&sup, ts).await.expect("known");
    assert_eq!(waiting.kind, "time_series");
    assert_eq!(waiting.after, Some(conv));
    let c = wait_for(&sup, conv, JobState::Succeeded).await;
    let r = wait_for(&sup, ts, JobState::Succeeded).await;
    let artifact = c.artifact.clone().expect("conversion result");
    assert_eq!(r.inputs, vec![artifact.clone()]);
    let folder = dir.join("jobs").join(ts.to_string());
    assert_eq!(
        r.files,
        ["series.json", "series.csv", "series.svg", "series.png"]
    );
    for f in &r.files {
        assert!(folder.join(f).is_file(), "{f}");
    }
    let json = std::fs::read(folder.join("series.json")).expect("json");
    assert_eq!(std::fs::read(folder.join("result")).expect("result"), json);
    assert_eq!(
        json,
        timeseries_cli(Path::new(&artifact), &dir.join("cli.json"))
    );
    // The summary adds up to the conversion's totals (every key and `other`).
    let s = r.series.expect("summary");
    let summary = c.summary.expect("conversion summary");
    assert_eq!(
        (s.octets, s.packets, s.flows, s.untimed),
        (summary.octets, summary.metered_packets, summary.flows, 0)
    );
    assert_eq!(s.records, summary.flows);
    assert!(s.keys.len() <= 11 && !s.keys.is_empty(), "{:?}", s.keys);
    assert_eq!(r.progress.bytes_read, r.progress.bytes_total);
    assert_eq!(r.progress.flows, s.records);
}

/// A time series that follows a job that does not succeed fails, saying which and how; one
/// waiting is cancelled at once; a job it follows known only to the store (another node's) is
/// found there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_time_series_after_a_job_that_fails_fails_and_waits_are_cancellable() {
    let dir = temp_dir("after-fails");
    let store = Arc::new(JobStore::memory(RETENTION));
    let args = JobArgs {
        store: store.clone(),
        storage_dir: dir.clone(),
        workers: 1,
        queue: 8,
        retention: RETENTION,
        node: "node-a".into(),
        config_version: "test".into(),
        max_series_cells: 2_000_000,
        stalled_after: Duration::from_secs(4),
    };
    let (sup, _) = ractor::Actor::spawn(None, JobSupervisor, args)
        .await
        .expect("job supervisor starts");
    // The worker is held by a long job; B waits behind it in the queue.
    let long = submit(&sup, long_spec()).await.expect("long");
    wait_for(&sup, long, JobState::Running).await;
    let b = submit(&sup, spec(vec![capture("ntp.pcap")]))
        .await
        .expect("b");
    let after_b = submit(&sup, series_spec(Some(b), Vec::new()))
        .await
        .expect("after b");
    let after_b2 = submit(&sup, series_spec(Some(b), Vec::new()))
        .await
        .expect("after b, again");
    // A waiting job is cancelled at once, like a queued one.
    let c = ractor::call!(sup, JobMsg::Cancel, TENANT.to_string(), after_b2).expect("answer");
    assert_eq!(c, Ok(Cancelled::Cancelled));
    assert_eq!(
        get(&sup, after_b2).await.expect("known").state,
        JobState::Cancelled
    );
    // B is cancelled while queued: the job after it fails, naming it.
    let c = ractor::call!(sup, JobMsg::Cancel, TENANT.to_string(), b).expect("answer");
    assert_eq!(c, Ok(Cancelled::Cancelled));
    let failed = wait_for(&sup, after_b, JobState::Failed).await;
    let e = failed.error.expect("why");
    assert!(e.contains(&b.to_string()) && e.contains("cancelled"), "{e}");

    // Another node's conversion, known only by its record in the shared store: the job
    // after it finds it there once it ends.
    let theirs = JobId::new();
    let mut rec = JobRecord::queued(theirs, &spec(vec![capture("ntp.pcap")]), "node-b");
    rec.state = JobState::Running;
    store.put(&rec).await.expect("put");
    let after_theirs = submit(&sup, series_spec(Some(theirs), Vec::new()))
        .await
        .expect("after theirs");
    // Their result: an IPFIX file the CLI converts.
    let result = dir.join("theirs.ipfix");
    let o = Command::new(BIN)
        .args(["convert", "--quiet", "-o"])
        .arg(&result)
        .arg(capture("http.pcap"))
        .output()
        .expect("convert");
    assert!(o.status.success());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        get(&sup, after_theirs).await.expect("known").state,
        JobState::Queued,
        "it waits while theirs runs"
    );
    rec.state = JobState::Succeeded;
    rec.artifact = Some(result.display().to_string());
    store.put(&rec).await.expect("put");
    // Its worker is still held by the long job: it joins the queue, then runs once that ends.
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(&sup, after_theirs)
        .await
        .expect("known")
        .inputs
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "the store's answer was not taken"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let c = ractor::call!(sup, JobMsg::Cancel, TENANT.to_string(), long).expect("answer");
    assert_eq!(c, Ok(Cancelled::Cancelling));
    let r = wait_for(&sup, after_theirs, JobState::Succeeded).await;
    assert_eq!(r.inputs, vec![result.display().to_string()]);
    // A job that follows one whose record is gone fails.
    let gone = submit(&sup, series_spec(Some(JobId::new()), Vec::new()))
        .await
        .expect("after nothing");
    let failed = wait_for(&sup, gone, JobState::Failed).await;
    assert!(failed.error.expect("why").contains("is gone"));
    // Another node's conversion that stays `running` without progress (its node died): the
    // job after it gives up once `stalled_after` (4 s here) has passed without a change.
    let dead = JobId::new();
    let mut rec = JobRecord::queued(dead, &spec(vec![capture("ntp.pcap")]), "node-c");
    rec.state = JobState::Running;
    store.put(&rec).await.expect("put");
    let stuck = submit(&sup, series_spec(Some(dead), Vec::new()))
        .await
        .expect("after the dead node's job");
    let failed = wait_for(&sup, stuck, JobState::Failed).await;
    let e = failed.error.expect("why");
    assert!(e.contains("has not progressed on node node-c"), "{e}");
}

/// Options no series can be made with are refused at submit, with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_time_series_options_are_refused() {
    let dir = temp_dir("series-bad");
    let sup = supervisor(JobStore::memory(RETENTION), &dir, 1, 4, "node-a").await;
    let mut s = series_spec(None, vec![capture("http.pcap")]);
    s.time_series = Some(TimeSeriesOptions {
        by: Some("nonsense".into()),
        ..TimeSeriesOptions::default()
    });
    match submit(&sup, s).await {
        Err(SubmitError::Invalid(e)) => assert!(e.starts_with("by "), "{e}"),
        other => panic!("{other:?}"),
    }
    // An input that is not IPFIX or a capture fails the job, saying so.
    let text = dir.join("notes.txt");
    std::fs::write(&text, "not flows").expect("write");
    let id = submit(&sup, series_spec(None, vec![text.display().to_string()]))
        .await
        .expect("accepted");
    let r = wait_for(&sup, id, JobState::Failed).await;
    let e = r.error.expect("why");
    assert!(
        e.contains("none of the 1 inputs") && e.contains("neither an IPFIX file nor a capture"),
        "{e}"
    );
    assert!(!dir.join("jobs").join(id.to_string()).exists());
}

/// A time series over captures with no IPFIX in them decodes nothing, yet stops at a cancel
/// (the flag is looked at after every packet, not only after a decoded message) and reports
/// its progress by bytes meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_time_series_of_input_with_nothing_to_decode_still_cancels() {
    let dir = temp_dir("series-cancel");
    let sup = supervisor(JobStore::memory(RETENTION), &dir, 1, 4, "node-a").await;
    let id = submit(&sup, series_spec(None, vec![capture("wg.pcap"); 20_000]))
        .await
        .expect("accepted");
    wait_for(&sup, id, JobState::Running).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&sup, id).await.expect("known").progress.bytes_read == 0 {
        assert!(Instant::now() < deadline, "no progress reported");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let c = ractor::call!(sup, JobMsg::Cancel, TENANT.to_string(), id).expect("answer");
    assert_eq!(c, Ok(Cancelled::Cancelling));
    let r = wait_for(&sup, id, JobState::Cancelled).await;
    assert!(r.progress.bytes_read < r.progress.bytes_total);
    assert!(!dir.join("jobs").join(id.to_string()).exists());
}
