//! `ipfixsvc serve` refusing bad configuration as a user meets it: one line on stderr that
//! names the key and says what is wrong, once, and a non-zero exit before anything starts.

use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_ipfixsvc");

/// `ipfixsvc serve` with `env` on top of a test environment (loopback, collector only).
fn serve(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .args(args)
        .env("IPFIXSVC__NODE__ROLES", "collector")
        .env("IPFIXSVC__COLLECTOR__TCP_LISTEN", "127.0.0.1:0")
        .env("IPFIXSVC__COLLECTOR__UDP_LISTEN", "127.0.0.1:0")
        .env("IPFIXSVC__OUTPUT__FORMAT", "count");
    for (k, v) in env {
        cmd.env(k, v);
    }
    // Each case here fails while loading: no node is ever started.
    cmd.output().expect("run ipfixsvc serve")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into()
}

#[test]
fn a_configuration_error_is_said_once() {
    let o = serve(&[], &[("IPFIXSVC__COLLECTOR__MAX_MESAGE_SIZE", "5")]);
    let err = stderr(&o);
    assert!(!o.status.success());
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(
        err.matches("unknown field `max_mesage_size`").count(),
        1,
        "{err}"
    );

    let missing = std::env::temp_dir().join("ipfixsvc-no-such-config.toml");
    let o = serve(&["--config", &missing.to_string_lossy()], &[]);
    let err = stderr(&o);
    assert!(!o.status.success());
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(err.matches("not found").count(), 1, "{err}");

    let dir = std::env::temp_dir().join(format!("ipfixsvc-config-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("bad.toml");
    std::fs::write(&file, "[collector]\nmax_mesage_size = 5\n").expect("write");
    let o = serve(&["--config", &file.to_string_lossy()], &[]);
    let err = stderr(&o);
    assert!(!o.status.success());
    assert_eq!(
        err.matches("unknown field `max_mesage_size`").count(),
        1,
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
