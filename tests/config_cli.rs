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

#[test]
fn an_unusable_listen_address_is_refused_at_load_naming_its_key() {
    for (key, var, value) in [
        (
            "collector.tcp_listen",
            "IPFIXSVC__COLLECTOR__TCP_LISTEN",
            "notanaddr",
        ),
        (
            "collector.udp_listen",
            "IPFIXSVC__COLLECTOR__UDP_LISTEN",
            "127.0.0.1:99999",
        ),
        ("cluster.listen", "IPFIXSVC__CLUSTER__LISTEN", "127.0.0.1"),
    ] {
        let o = serve(&[], &[(var, value), ("IPFIXSVC__CLUSTER__COOKIE", "c")]);
        let err = stderr(&o);
        assert!(!o.status.success());
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains(&format!(
                "configuration: {key} = \"{value}\": expected host:port"
            )),
            "{err}"
        );
    }
    let o = serve(
        &[],
        &[
            ("IPFIXSVC__CLUSTER__COOKIE", "c"),
            ("IPFIXSVC__CLUSTER__SEEDS", "node-0:4800,node-1"),
        ],
    );
    let err = stderr(&o);
    assert!(!o.status.success());
    assert!(
        err.contains(r#"cluster.seeds[1] = "node-1": expected host:port"#),
        "{err}"
    );
}

#[test]
fn a_port_already_taken_is_said_once_plainly() {
    for var in [
        "IPFIXSVC__COLLECTOR__TCP_LISTEN",
        "IPFIXSVC__CLUSTER__LISTEN",
    ] {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
        let addr = taken.local_addr().expect("its address").to_string();
        let started = std::time::Instant::now();
        let o = serve(&[], &[(var, &addr), ("IPFIXSVC__CLUSTER__COOKIE", "c")]);
        let err = stderr(&o);
        assert!(!o.status.success());
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "fails at once, not after retries"
        );
        let failure: Vec<&str> = err.lines().filter(|l| l.contains(&addr)).collect();
        assert_eq!(failure.len(), 1, "{err}");
        assert!(
            failure[0].starts_with("ipfixsvc: node did not start: cannot listen")
                && failure[0].contains("Address already in use"),
            "{err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}
