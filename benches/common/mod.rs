//! What the benches share: the shared generator's files, made once under `target/bench-data`.

use bytes::Bytes;
use ipfixsvc::wire::MessageReader;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const MESSAGES: &str = "20000";

/// Generates (once) and loads the benchmark file of `kind`, split into messages.
pub fn messages(kind: &str) -> Vec<Bytes> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-data");
    std::fs::create_dir_all(&dir).expect("create target/bench-data");
    let path: PathBuf = dir.join(format!("{kind}-{MESSAGES}.ipfix"));
    if !path.exists() {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/bench/gen_ipfix.py");
        let status = Command::new("python3")
            .arg(&script)
            .args([
                "--kind",
                kind,
                "--messages",
                MESSAGES,
                "--records-per-message",
            ])
            .arg(if kind == "fixed" { "23" } else { "12" })
            .arg("--out")
            .arg(&path)
            .status()
            .expect("run gen_ipfix.py");
        assert!(status.success(), "gen_ipfix.py failed");
    }
    let file = std::fs::File::open(&path).expect("open bench file");
    MessageReader::new(file, 65535)
        .map(|m| m.expect("bench file frames").1)
        .collect()
}
