//! The process as Linux shows it: per-thread CPU time from `/proc/self/task` (sysinfo reads
//! the same files, but only with its costly task refresh: ../shared/docs/STACK.md), the calling
//! thread's own CPU clock, and the thread name jobs run under.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::metrics::{Busy, Work};

/// What a thread's name is while it runs a job: its CPU shows under this name.
pub const JOB_THREAD_NAME: &str = "ipfixsvc-job";

/// One thread: its name (`comm`, at most 15 bytes) and CPU time so far (user + system).
#[derive(Debug, Clone, PartialEq)]
pub struct ThreadCpu {
    pub tid: u32,
    pub name: String,
    pub cpu: Duration,
}

/// The kernel's clock ticks per second (the unit of `/proc/.../stat`'s times).
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions; it returns -1 for an unknown name.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// utime and stime (seconds) from a `stat` line. The name field is in parentheses and may hold
/// spaces and parentheses itself: the fields are counted after the last `)`.
pub fn stat_times(stat: &str) -> Option<(f64, f64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_ascii_whitespace();
    // After the name: state (3), ppid (4) ... utime is field 14, stime 15.
    let utime: f64 = fields.nth(11)?.parse().ok()?;
    let stime: f64 = fields.next()?.parse().ok()?;
    let hz = ticks_per_second();
    Some((utime / hz, stime / hz))
}

/// Every thread of this process now. Threads that end while being read are skipped.
pub fn threads() -> Vec<ThreadCpu> {
    threads_of(Path::new("/proc/self/task"))
}

fn threads_of(tasks: &Path) -> Vec<ThreadCpu> {
    let Ok(dir) = std::fs::read_dir(tasks) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in dir.flatten() {
        let Some(tid) = e.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let (Ok(stat), Ok(comm)) = (
            std::fs::read_to_string(e.path().join("stat")),
            std::fs::read_to_string(e.path().join("comm")),
        ) else {
            continue;
        };
        if let Some((u, s)) = stat_times(&stat) {
            out.push(ThreadCpu {
                tid,
                name: comm.trim_end().to_string(),
                cpu: Duration::from_secs_f64(u + s),
            });
        }
    }
    out
}

/// The process's user and system CPU time, from `/proc/self/stat`.
pub fn process_times() -> Option<(f64, f64)> {
    stat_times(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

/// CPU time by thread name, monotonic across samples: each live thread's growth since the
/// last sample goes to the name it has now (a job thread's work shows as a job's, though the
/// thread goes back to the pool afterwards). What a thread did between its last sample and its
/// end is not seen.
#[derive(Default)]
pub struct ThreadTotals {
    last: HashMap<u32, Duration>,
    by_name: HashMap<String, Duration>,
}

impl ThreadTotals {
    pub fn update(&mut self, now: &[ThreadCpu], label: impl Fn(&str) -> String) {
        let mut seen = HashMap::with_capacity(now.len());
        for t in now {
            let before = self.last.get(&t.tid).copied().unwrap_or_default();
            let grew = t.cpu.saturating_sub(before);
            *self.by_name.entry(label(&t.name)).or_default() += grew;
            seen.insert(t.tid, t.cpu);
        }
        self.last = seen;
    }

    pub fn by_name(&self) -> impl Iterator<Item = (&String, &Duration)> {
        self.by_name.iter()
    }
}

/// The calling thread's CPU time (user + system).
pub fn thread_cpu_now() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to write.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if r != 0 {
        return Duration::ZERO;
    }
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// The calling thread's name (`comm`).
fn thread_name() -> Option<[u8; 16]> {
    let mut name = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes (NUL included) into the buffer.
    let r = unsafe { libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr()) };
    (r == 0).then_some(name)
}

fn set_thread_name(name: &[u8; 16]) {
    // SAFETY: the buffer is NUL-terminated (16 bytes, the last always 0 by construction).
    unsafe {
        libc::prctl(libc::PR_SET_NAME, name.as_ptr());
    }
}

/// A job running on a blocking-pool thread: while it lives the thread is named
/// `JOB_THREAD_NAME`, and the thread's CPU time goes to the tenant's job busy time (at each
/// `account` and at the end). The thread gets its name back when the job ends.
pub struct JobThread {
    busy: Arc<Busy>,
    from: Duration,
    old_name: Option<[u8; 16]>,
}

impl JobThread {
    pub fn enter(tenant: &str) -> JobThread {
        let old_name = thread_name();
        let mut name = [0u8; 16];
        name[..JOB_THREAD_NAME.len()].copy_from_slice(JOB_THREAD_NAME.as_bytes());
        set_thread_name(&name);
        JobThread {
            busy: super::metrics::busy(tenant, Work::Job),
            from: thread_cpu_now(),
            old_name,
        }
    }

    /// Adds the thread's CPU time since the last call.
    pub fn account(&mut self) {
        let now = thread_cpu_now();
        self.busy.add(now.saturating_sub(self.from));
        self.from = now;
    }
}

impl Drop for JobThread {
    fn drop(&mut self) {
        self.account();
        if let Some(mut n) = self.old_name {
            n[15] = 0;
            set_thread_name(&n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_times_count_fields_after_the_last_parenthesis() {
        // A name with spaces and a parenthesis, as a thread may be called.
        let hz = ticks_per_second();
        let line = "4242 (a (b) c) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0";
        let (u, s) = stat_times(line).expect("times");
        assert!((u - 250.0 / hz).abs() < 1e-9, "{u}");
        assert!((s - 50.0 / hz).abs() < 1e-9, "{s}");
        assert_eq!(stat_times("4242 (truncated"), None);
        assert_eq!(stat_times("4242 (x) S 1 2"), None);
    }

    #[test]
    fn this_process_has_threads_and_cpu_time() {
        let ts = threads();
        assert!(!ts.is_empty());
        assert!(process_times().is_some());
    }

    #[test]
    fn thread_totals_only_grow_and_follow_a_renamed_thread() {
        let t = |tid, name: &str, ms| ThreadCpu {
            tid,
            name: name.into(),
            cpu: Duration::from_millis(ms),
        };
        let mut tt = ThreadTotals::default();
        tt.update(&[t(1, "worker", 100), t(2, "worker", 50)], |n| n.into());
        tt.update(&[t(1, JOB_THREAD_NAME, 300)], |n| n.into());
        let totals: HashMap<_, _> = tt.by_name().map(|(k, v)| (k.clone(), *v)).collect();
        assert_eq!(totals["worker"], Duration::from_millis(150));
        assert_eq!(totals[JOB_THREAD_NAME], Duration::from_millis(200));
        // Thread 2 ended: what it did stays counted.
        tt.update(&[t(1, "worker", 310)], |n| n.into());
        let totals: HashMap<_, _> = tt.by_name().map(|(k, v)| (k.clone(), *v)).collect();
        assert_eq!(totals["worker"], Duration::from_millis(160));
    }

    #[test]
    fn a_job_thread_is_named_while_it_runs_and_counts_its_cpu() {
        std::thread::spawn(|| {
            let before = thread_name();
            {
                let mut job = JobThread::enter("tenant-x-process-test");
                assert_eq!(
                    &thread_name().expect("name")[..12],
                    JOB_THREAD_NAME.as_bytes()
                );
                // Spin until the thread's own clock says 30 ms (wall time would count the
                // time it was preempted on a busy machine).
                let t = thread_cpu_now();
                while thread_cpu_now() < t + Duration::from_millis(30) {
                    std::hint::black_box(t);
                }
                job.account();
            }
            assert_eq!(thread_name(), before);
            let secs = super::super::metrics::busy_totals()
                .into_iter()
                .find(|((t, w), _)| t == "tenant-x-process-test" && *w == Work::Job)
                .map(|(_, s)| s)
                .unwrap_or_default();
            assert!(secs >= 0.03, "{secs}");
        })
        .join()
        .expect("thread");
    }
}
