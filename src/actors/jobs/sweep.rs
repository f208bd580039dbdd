//! Removes what jobs leave in `storage.dir` once their records have expired: uploaded captures
//! (`uploads/<tenant>/*.pcap`), their result folders (`jobs/<id>/`), and `.part` uploads a
//! crash left behind.
//!
//! A file goes only when no record names it (the store's, or this node's own, which may not be
//! written yet) and it is older than the retention: a record lives the retention after its last
//! write, so a file that young may still belong to a record being written. With a shared
//! `storage.dir` every node sweeps; removing twice is harmless.

use crate::store::jobs::JobStore;
use crate::store::{JobId, JobRecord};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// A `.part` upload untouched this long is a leftover (an upload in progress writes it
/// continually; a broken one is removed by its request).
pub const STALE_PART: Duration = Duration::from_secs(3600);

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Swept {
    pub uploads: usize,
    pub results: usize,
    pub bytes: u64,
}

/// What still has a record: job ids and input files.
#[derive(Debug, Default)]
struct Live {
    ids: HashSet<JobId>,
    inputs: HashSet<PathBuf>,
}

impl Live {
    fn add(&mut self, r: &JobRecord) {
        self.ids.insert(r.id);
        self.inputs.extend(r.inputs.iter().map(PathBuf::from));
    }
}

/// One sweep. `tenants` are those whose records are asked for besides the ones that have an
/// upload folder (the default tenant, those of this node's jobs); `local` are this node's own
/// records. A store that does not answer stops the sweep: nothing is removed on a guess.
pub async fn sweep(
    store: &JobStore,
    storage: &Path,
    retention: Duration,
    tenants: Vec<String>,
    local: Vec<JobRecord>,
) -> Result<Swept, crate::store::StoreError> {
    let uploads = storage.join("uploads");
    let mut tenants: HashSet<String> = tenants.into_iter().collect();
    tenants.extend(dir_names(&uploads).await);
    let mut live = Live::default();
    for r in &local {
        live.add(r);
    }
    for t in &tenants {
        for r in store.list(t).await? {
            live.add(&r);
        }
    }
    let now = SystemTime::now();
    let old =
        |modified: SystemTime, age: Duration| now.duration_since(modified).is_ok_and(|a| a > age);
    let mut swept = Swept::default();
    for t in &tenants {
        let dir = uploads.join(t);
        for (path, meta) in entries(&dir).await {
            let Ok(modified) = meta.modified() else {
                continue;
            };
            let stale = if path.extension().is_some_and(|e| e == "part") {
                old(modified, STALE_PART)
            } else {
                !live.inputs.contains(&path) && old(modified, retention)
            };
            if meta.is_file() && stale && tokio::fs::remove_file(&path).await.is_ok() {
                swept.uploads += 1;
                swept.bytes += meta.len();
            }
        }
    }
    for (path, meta) in entries(&storage.join("jobs")).await {
        let Some(id) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<JobId>().ok())
        else {
            continue;
        };
        // A live record's input inside the folder (a job chained on this one's result) keeps it.
        if !meta.is_dir()
            || live.ids.contains(&id)
            || live.inputs.iter().any(|i| i.starts_with(&path))
        {
            continue;
        }
        let files = entries(&path).await;
        // The newest file says when the job last wrote (its end).
        let newest = files
            .iter()
            .filter_map(|(_, m)| m.modified().ok())
            .chain(meta.modified().ok())
            .max();
        if !newest.is_some_and(|n| old(n, retention)) {
            continue;
        }
        // The result and its hard link are one file: count its bytes once.
        let bytes = files
            .iter()
            .filter(|(p, _)| p.file_name().is_some_and(|n| n != "result"))
            .map(|(_, m)| m.len())
            .sum::<u64>();
        if tokio::fs::remove_dir_all(&path).await.is_ok() {
            swept.results += 1;
            swept.bytes += bytes;
        }
    }
    Ok(swept)
}

/// The bytes of a tenant's uploads, finished and in progress (what its quota counts).
pub async fn upload_bytes(dir: &Path) -> u64 {
    entries(dir)
        .await
        .iter()
        .filter(|(_, m)| m.is_file())
        .map(|(_, m)| m.len())
        .sum()
}

async fn dir_names(dir: &Path) -> Vec<String> {
    entries(dir)
        .await
        .into_iter()
        .filter(|(_, m)| m.is_dir())
        .filter_map(|(p, _)| p.file_name().and_then(|n| n.to_str()).map(String::from))
        .collect()
}

/// A folder's entries with their metadata (not following links); none when it cannot be read.
async fn entries(dir: &Path) -> Vec<(PathBuf, std::fs::Metadata)> {
    let mut out = Vec::new();
    let Ok(mut rd) = tokio::fs::read_dir(dir).await else {
        return out;
    };
    while let Ok(Some(e)) = rd.next_entry().await {
        if let Ok(m) = tokio::fs::symlink_metadata(e.path()).await {
            out.push((e.path(), m));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::jobs::JobSpec;

    #[tokio::test]
    async fn only_files_no_record_names_and_older_than_the_retention_go() {
        let dir = std::env::temp_dir().join(format!("ipfixsvc-sweep-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let uploads = dir.join("uploads").join("acme");
        std::fs::create_dir_all(&uploads).expect("uploads");
        let kept = uploads.join("kept.pcap");
        let orphan = uploads.join("orphan.pcap");
        let part = uploads.join("in-progress.part");
        for f in [&kept, &orphan, &part] {
            std::fs::write(f, b"0123456789").expect("write");
        }
        let live = JobId::new();
        let gone = JobId::new();
        // Its record expired, but a live job's input is its result: it stays.
        let followed = JobId::new();
        for id in [live, gone, followed] {
            let d = dir.join("jobs").join(id.to_string());
            std::fs::create_dir_all(&d).expect("job dir");
            std::fs::write(d.join("result.ipfix"), b"abcd").expect("result");
            std::fs::hard_link(d.join("result.ipfix"), d.join("result")).expect("link");
        }
        let store = JobStore::memory(Duration::from_secs(60));
        let spec = JobSpec {
            tenant: "acme".into(),
            inputs: vec![kept.display().to_string()],
            options: Default::default(),
            ..JobSpec::default()
        };
        store
            .put(&JobRecord::queued(live, &spec, "n"))
            .await
            .expect("put");
        let chained = JobSpec {
            tenant: "acme".into(),
            inputs: vec![
                dir.join("jobs")
                    .join(followed.to_string())
                    .join("result.ipfix")
                    .display()
                    .to_string(),
            ],
            ..JobSpec::default()
        };
        store
            .put(&JobRecord::queued(JobId::new(), &chained, "n"))
            .await
            .expect("put");
        // Young files stay, record or not.
        let s = sweep(&store, &dir, Duration::from_secs(3600), vec![], vec![])
            .await
            .expect("sweep");
        assert_eq!(s, Swept::default());
        // Old enough: what no record names goes; a fresh `.part` stays.
        std::thread::sleep(Duration::from_millis(20));
        let s = sweep(&store, &dir, Duration::from_millis(10), vec![], vec![])
            .await
            .expect("sweep");
        assert_eq!(
            s,
            Swept {
                uploads: 1,
                results: 1,
                bytes: 14
            }
        );
        assert!(kept.exists() && part.exists() && !orphan.exists());
        assert!(dir.join("jobs").join(live.to_string()).exists());
        assert!(!dir.join("jobs").join(gone.to_string()).exists());
        assert!(dir.join("jobs").join(followed.to_string()).exists());
        assert_eq!(upload_bytes(&uploads).await, 20);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
