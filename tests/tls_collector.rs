//! IPFIX over TLS (RFC 7011 section 11), against real peers: `ipfixsvc send --tls`, and
//! `openssl s_client` as an independent TLS exporter; a CA the collector does not trust, a
//! plain-TCP client on the TLS port and a client that never starts its handshake are each
//! closed, counted and logged, and cost the other sessions nothing.

mod common;

use common::{BIN, Server, eventually};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// example_flows.ipfix: 3979 records.
const EXAMPLE_RECORDS: usize = 3979;

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/testdata/ipfix/example_flows.ipfix")
}

fn tls_server(name: &str, cert: &str, key: &str, ca: Option<&str>) -> Server {
    tls_server_with(name, cert, key, ca, &[])
}

fn tls_server_with(
    name: &str,
    cert: &str,
    key: &str,
    ca: Option<&str>,
    extra: &[(&str, &str)],
) -> Server {
    let mut env = vec![
        ("IPFIXSVC__COLLECTOR__TLS_LISTEN", "127.0.0.1:0"),
        ("IPFIXSVC__COLLECTOR__TLS_CERT", cert),
        ("IPFIXSVC__COLLECTOR__TLS_KEY", key),
        ("IPFIXSVC__COLLECTOR__FIRST_MESSAGE_SECS", "2"),
    ];
    if let Some(ca) = ca {
        env.push(("IPFIXSVC__COLLECTOR__TLS_CA", ca));
    }
    env.extend_from_slice(extra);
    Server::start(name, &env)
}

fn send_tls(
    to: std::net::SocketAddr,
    ca: &str,
    client: Option<(&str, &str)>,
) -> std::process::Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("send")
        .arg(example())
        .args(["--to", &to.to_string(), "--tls", "--ca", ca]);
    if let Some((cert, key)) = client {
        cmd.args(["--cert", cert, "--key", key]);
    }
    cmd.output().expect("run send")
}

/// `openssl s_client` as an exporter over TLS: what its standard input gets, it sends, and it
/// closes the connection when its standard input closes.
fn s_client(at: std::net::SocketAddr, ca: &str) -> std::process::Child {
    Command::new("openssl")
        .args(["s_client", "-connect", &at.to_string(), "-CAfile", ca])
        .args(["-quiet", "-no_ign_eof"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl s_client")
}

fn records(server: &Server) -> usize {
    server.output().len()
}

#[test]
fn send_and_openssl_s_client_deliver_every_record_over_tls() {
    common::need("openssl");
    let d = common::config_dir("plain-auth");
    let (cert, key, ca) = common::certificates(&d);
    let server = tls_server("tls-server-auth", &cert, &key, None);
    let at = server.logged_addr("tls=");

    let out = send_tls(at, &ca, None);
    assert!(
        out.status.success(),
        "send --tls: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually("every record over TLS", Duration::from_secs(20), || {
        records(&server) == EXAMPLE_RECORDS
    });

    // openssl's own TLS stack as the exporter: the file's bytes on stdin, closed at its end.
    let mut s_client = s_client(at, &ca);
    let bytes = std::fs::read(example()).expect("example");
    s_client
        .stdin
        .take()
        .expect("stdin")
        .write_all(&bytes)
        .expect("to s_client");
    let status = s_client.wait().expect("s_client ends");
    assert!(status.success(), "openssl s_client: {status}");
    eventually(
        "every record from openssl s_client too",
        Duration::from_secs(20),
        || records(&server) == 2 * EXAMPLE_RECORDS,
    );
    assert!(server.log_lines("TLS handshake failed").is_empty());
}

#[test]
fn a_plain_client_and_a_silent_one_are_closed_and_counted_while_others_go_on() {
    use std::io::Read;
    let d = common::config_dir("hostile");
    let (cert, key, ca) = common::certificates(&d);
    let server = tls_server("tls-hostile", &cert, &key, None);
    let at = server.logged_addr("tls=");

    // Plain IPFIX on the TLS port: not a ClientHello, so the handshake fails and the
    // connection is closed.
    let mut plain = std::net::TcpStream::connect(at).expect("connect");
    let _ = plain.write_all(&std::fs::read(example()).expect("example"));
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut buf = [0u8; 256];
    // An alert, then the close; or the close at once.
    while matches!(plain.read(&mut buf), Ok(n) if n > 0) {}

    // One that connects and says nothing is closed within first_message_secs (2 s here),
    // while an exporter next to it is served.
    let started = Instant::now();
    let mut silent = std::net::TcpStream::connect(at).expect("connect");
    let out = send_tls(at, &ca, None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let end = silent.read(&mut buf);
    assert!(
        matches!(end, Ok(0)) || end.is_err(),
        "the silent client is closed: {end:?}"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(8),
        "closed after {waited:?}"
    );
    eventually(
        "the exporter beside them got everything",
        Duration::from_secs(20),
        || records(&server) == EXAMPLE_RECORDS,
    );
    eventually("both counted and logged", Duration::from_secs(5), || {
        server.log_lines("TLS handshake failed").len() >= 2
    });
}

#[test]
fn with_tls_ca_only_exporters_signed_by_it_are_let_in() {
    let d = common::config_dir("mutual");
    let (cert, key, ca) = common::certificates(&d);
    let other = common::config_dir("mutual-other");
    let (other_cert, other_key, _) = common::certificates(&other);
    let server = tls_server("tls-mutual", &cert, &key, Some(&ca));
    let at = server.logged_addr("tls=");

    // No certificate, and one from a CA the collector does not trust: refused, logged.
    let _ = send_tls(at, &ca, None);
    let _ = send_tls(at, &ca, Some((&other_cert, &other_key)));
    eventually("both refused and logged", Duration::from_secs(10), || {
        server.log_lines("TLS handshake failed").len() >= 2
    });
    assert_eq!(records(&server), 0, "nothing from the refused exporters");

    let out = send_tls(at, &ca, Some((&cert, &key)));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually(
        "the trusted exporter's records",
        Duration::from_secs(20),
        || records(&server) == EXAMPLE_RECORDS,
    );
}

#[test]
fn tls_keys_are_checked_when_the_node_starts() {
    let out = Command::new(BIN)
        .arg("serve")
        .env("IPFIXSVC__COLLECTOR__TLS_LISTEN", "127.0.0.1:0")
        .env("IPFIXSVC__COLLECTOR__TCP_LISTEN", "127.0.0.1:0")
        .env("IPFIXSVC__COLLECTOR__UDP_LISTEN", "")
        .output()
        .expect("serve");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("collector.tls_listen needs collector.tls_cert and collector.tls_key"),
        "{err}"
    );
    let out = Command::new(BIN)
        .arg("serve")
        .env("IPFIXSVC__NODE__ROLES", "collector")
        .env("IPFIXSVC__COLLECTOR__TLS_LISTEN", "127.0.0.1:0")
        .env("IPFIXSVC__COLLECTOR__TLS_CERT", "/nonexistent/cert.pem")
        .env("IPFIXSVC__COLLECTOR__TLS_KEY", "/nonexistent/key.pem")
        .env("IPFIXSVC__COLLECTOR__TCP_LISTEN", "127.0.0.1:0")
        .env("IPFIXSVC__COLLECTOR__UDP_LISTEN", "")
        .stdout(Stdio::null())
        .output()
        .expect("serve");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("collector.tls_cert /nonexistent/cert.pem"),
        "{err}"
    );
}

#[test]
fn a_tls_session_is_listed_with_transport_tls() {
    common::need("openssl");
    common::need("curl");
    let d = common::config_dir("tls-listed");
    let (cert, key, ca) = common::certificates(&d);
    let token = "tls-listing-admin-token-0123456789";
    let server = tls_server_with(
        "tls-listed",
        &cert,
        &key,
        None,
        &[
            ("IPFIXSVC__NODE__ROLES", "collector,api"),
            ("IPFIXSVC__API__LISTEN", "127.0.0.1:0"),
            ("IPFIXSVC__API__ADMIN_TOKEN", token),
            ("IPFIXSVC__STORAGE__DIR", d.to_str().expect("dir")),
        ],
    );
    let at = server.logged_addr("tls=");
    let api = common::api_addr(&server);
    // openssl s_client holds the session open until its standard input closes.
    let mut s_client = s_client(at, &ca);
    let mut stdin = s_client.stdin.take().expect("stdin");
    stdin
        .write_all(&std::fs::read(example()).expect("example"))
        .expect("to s_client");
    let session = || -> Option<serde_json::Value> {
        let out = Command::new("curl")
            .args([
                "-sf",
                "-m",
                "5",
                "-H",
                &format!("Authorization: Bearer {token}"),
            ])
            .arg(format!("http://{api}/api/v1/sessions"))
            .output()
            .ok()?;
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        list["sessions"]
            .as_array()?
            .iter()
            .find(|s| s["stats"]["data_records"] == EXAMPLE_RECORDS as u64)
            .cloned()
    };
    eventually("the TLS session listed", Duration::from_secs(20), || {
        session().is_some()
    });
    let s = session().expect("listed");
    assert_eq!(s["stats"]["transport"], "tls", "{s}");
    assert!(
        s["session"]
            .as_str()
            .is_some_and(|n| n.starts_with("session/tls/")),
        "{s}"
    );
    drop(stdin);
    let _ = s_client.kill();
    let _ = s_client.wait();
}

/// A client certificate whose subject is `CN=<cn>`, signed by the CA `common::certificates`
/// made in `dir`; returns its certificate and key files.
fn client_certificate(dir: &Path, cn: &str) -> (String, String) {
    common::issue(
        dir,
        cn,
        &format!("/O=exporters/CN={cn}"),
        "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n",
    )
}

#[test]
fn with_tls_tenant_from_cert_the_certificate_names_the_tenant() {
    common::need("openssl");
    common::need("curl");
    let d = common::config_dir("tls-tenant");
    let (cert, key, ca) = common::certificates(&d);
    let (acme_cert, acme_key) = client_certificate(&d, "acme");
    let (ghost_cert, ghost_key) = client_certificate(&d, "ghost");
    let token = "tls-tenant-admin-token-0123456789";
    let storage = d.join("storage");
    let server = tls_server_with(
        "tls-tenant",
        &cert,
        &key,
        Some(&ca),
        &[
            ("IPFIXSVC__COLLECTOR__TLS_TENANT_FROM_CERT", "true"),
            // Addresses decide nothing here: no tenant owns 127.0.0.1, and such exporters
            // would be refused.
            ("IPFIXSVC__COLLECTOR__UNKNOWN_EXPORTERS", "refuse"),
            ("IPFIXSVC__NODE__ROLES", "collector,api"),
            ("IPFIXSVC__API__LISTEN", "127.0.0.1:0"),
            ("IPFIXSVC__API__ADMIN_TOKEN", token),
            ("IPFIXSVC__STORAGE__DIR", storage.to_str().expect("dir")),
        ],
    );
    let at = server.logged_addr("tls=");
    let api = common::api_addr(&server);
    let made = Command::new("curl")
        .args([
            "-sf",
            "-m",
            "5",
            "-H",
            &format!("Authorization: Bearer {token}"),
        ])
        .args([
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"id":"acme"}"#,
        ])
        .arg(format!("http://{api}/api/v1/tenants"))
        .output()
        .expect("curl");
    assert!(made.status.success(), "tenant acme: {made:?}");

    // A certificate naming a tenant that does not exist: refused, and said why.
    let _ = send_tls(at, &ca, Some((&ghost_cert, &ghost_key)));
    eventually("the ghost refused", Duration::from_secs(10), || {
        server
            .log_lines("TLS exporter refused")
            .iter()
            .any(|l| l.contains("ghost"))
    });
    assert_eq!(records(&server), 0);

    // acme's certificate: its records are acme's, though no tenant owns the address.
    let out = send_tls(at, &ca, Some((&acme_cert, &acme_key)));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eventually("acme's records", Duration::from_secs(20), || {
        records(&server) == EXAMPLE_RECORDS
    });
    assert!(
        server
            .output()
            .iter()
            .all(|l| l.contains(r#""@tenant":"acme""#)),
        "{:?}",
        server.output().first()
    );
}

#[test]
fn tls_tenant_from_cert_without_tls_ca_is_refused_at_start() {
    let out = Command::new(BIN)
        .args(["serve", "--check"])
        .env("IPFIXSVC__COLLECTOR__TLS_LISTEN", "127.0.0.1:0")
        .env("IPFIXSVC__COLLECTOR__TLS_CERT", "/nonexistent.pem")
        .env("IPFIXSVC__COLLECTOR__TLS_KEY", "/nonexistent.key")
        .env("IPFIXSVC__COLLECTOR__TLS_TENANT_FROM_CERT", "true")
        .output()
        .expect("serve --check");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("collector.tls_tenant_from_cert needs collector.tls_ca"),
        "{err}"
    );
}
