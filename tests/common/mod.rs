//! A real `ipfixsvc serve` process for black-box tests: loopback ports chosen by the kernel and
//! read back from its log, records written to a file, log lines kept for assertions.
#![allow(dead_code)] // each test binary uses its own part

pub mod redis_server;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_ipfixsvc");

pub struct Server {
    pub child: Child,
    pub tcp: SocketAddr,
    pub udp: SocketAddr,
    pub out: PathBuf,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    pub fn start(name: &str, env: &[(&str, &str)]) -> Server {
        let dir = std::env::temp_dir().join(format!("ipfixsvc-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        remove_stale(name);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let out = dir.join("records.ndjson");
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .env("IPFIXSVC__NODE__ROLES", "collector")
            .env("IPFIXSVC__COLLECTOR__TCP_LISTEN", "127.0.0.1:0")
            .env("IPFIXSVC__COLLECTOR__UDP_LISTEN", "127.0.0.1:0")
            .env("IPFIXSVC__OUTPUT__PATH", &out)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start ipfixsvc serve");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().expect("log lock").push(line);
            }
        });
        let mut server = Server {
            child,
            tcp: ([0, 0, 0, 0], 0).into(),
            udp: ([0, 0, 0, 0], 0).into(),
            out,
            log,
        };
        server.tcp = server.logged_addr("tcp=");
        server.udp = server.logged_addr("udp=");
        server
    }

    /// An address the server logged as `key=ADDR` (e.g. `tls=`), waited for up to 20 s.
    pub fn logged_addr(&self, key: &str) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let found = self
                .log
                .lock()
                .expect("log lock")
                .iter()
                .find_map(|l| logged(l, key));
            if let Some(a) = found {
                return a;
            }
            assert!(
                Instant::now() < deadline,
                "server did not report its {key} address: {:?}",
                self.log_lines("")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        self.log
            .lock()
            .expect("log lock")
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }

    pub fn wait_log(&self, needle: &str, count: usize, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        loop {
            let lines = self.log_lines(needle);
            if lines.len() >= count || Instant::now() > deadline {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The complete lines of the node's record output: a last line without its newline is
    /// still being written, and is not read yet.
    pub fn output(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete.lines().map(str::to_string).collect()
    }

    /// SIGTERM; the exit status and every log line.
    #[allow(dead_code)]
    pub fn terminate_with_log(self) -> (std::process::ExitStatus, Vec<String>) {
        let log = self.log.clone();
        let status = self.terminate();
        // The reader thread's last lines.
        std::thread::sleep(Duration::from_millis(100));
        let lines = log.lock().expect("log lock").clone();
        (status, lines)
    }

    /// SIGTERM, and the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "server did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Removes what earlier runs of the test `name` left in the temp dir (tests read a server's
/// files after it stops, so none is removed on drop): a run's folder goes once its process is
/// gone. Some hold hundreds of megabytes of records.
fn remove_stale(name: &str) {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    let suffix = format!("-{name}");
    for e in entries.flatten() {
        let file = e.file_name();
        let Some(pid) = file
            .to_str()
            .and_then(|f| f.strip_prefix("ipfixsvc-test-"))
            .and_then(|f| f.strip_suffix(suffix.as_str()))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` until it holds, failing the test with `what` after `within`.
pub fn eventually(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The raw traffic captures of `../shared/testdata/traffic`, in name order.
pub fn traffic_captures() -> Vec<PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/testdata/traffic");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("../shared/testdata/traffic")
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    files
}

/// The address a log line gives as `key=ADDR` (text) or `"key":"ADDR"` (JSON).
fn logged(line: &str, key: &str) -> Option<SocketAddr> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .and_then(|a| a.parse().ok())
        .or_else(|| {
            let json: serde_json::Value = serde_json::from_str(line).ok()?;
            json["fields"][key.trim_end_matches('=')]
                .as_str()?
                .parse()
                .ok()
        })
}

/// The API address a `serve` logs (`API listening api=ADDR`).
pub fn api_addr(server: &Server) -> SocketAddr {
    let lines = server.wait_log("API listening", 1, Duration::from_secs(20));
    lines
        .iter()
        .find_map(|l| logged(l, "api="))
        .unwrap_or_else(|| panic!("no API address in the log: {:?}", server.log_lines("")))
}

/// The admin token a node made in its `storage.dir`.
pub fn admin_token(storage: &std::path::Path) -> String {
    std::fs::read_to_string(storage.join("admin-token"))
        .expect("admin token")
        .trim()
        .to_string()
}

/// Creates a tenant through the API with the admin token; it must answer 201.
pub async fn create_tenant(api: SocketAddr, admin: &str, tenant: serde_json::Value) {
    let r = reqwest::Client::new()
        .post(format!("http://{api}/api/v1/tenants"))
        .bearer_auth(admin)
        .json(&tenant)
        .send()
        .await
        .expect("create tenant");
    assert_eq!(r.status(), 201, "{tenant}");
}

/// Makes a token of `tenant` through the API with the admin token: the answer (`id`, `token`).
pub async fn create_token(api: SocketAddr, admin: &str, tenant: &str) -> serde_json::Value {
    let r = reqwest::Client::new()
        .post(format!("http://{api}/api/v1/tenants/{tenant}/tokens"))
        .bearer_auth(admin)
        .send()
        .await
        .expect("create token");
    assert_eq!(r.status(), 201, "a token of {tenant}");
    r.json().await.expect("token JSON")
}

/// A loopback port free now (for listeners that must be named before they start).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Fails the test with a clear line when a tool the test drives is not installed.
pub fn need(tool: &str) {
    let ok = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{tool} is not installed: ./scripts/test installs it (Debian package)"
    );
}

/// tcpdump recording loopback traffic that matches `filter` into `capture`, once it listens.
pub fn tcpdump(capture: &std::path::Path, filter: &str) -> Child {
    let mut tcpdump = Command::new("tcpdump")
        // Immediate mode: packets reach the file as they come, not when a buffer block fills.
        .args(["-i", "lo", "--immediate-mode", "-U", "-Z", "root", "-w"])
        .arg(capture)
        .arg(filter)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tcpdump");
    // tcpdump says "listening on lo" once it captures.
    let mut err = tcpdump.stderr.take().expect("stderr");
    let mut buf = [0u8; 256];
    let _ = std::io::Read::read(&mut err, &mut buf);
    std::thread::sleep(Duration::from_millis(1000));
    tcpdump
}

/// A CA and one node certificate (SANs 127.0.0.1 and localhost, server and client use), made
/// with the openssl command line.
#[allow(dead_code)]
pub fn certificates(dir: &std::path::Path) -> (String, String, String) {
    let run = |args: &[&str]| openssl(dir, args);
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "1",
        "-subj",
        "/CN=ipfixsvc-test-ca",
    ]);
    issue(
        dir,
        "node",
        "/CN=node",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n",
    );
    let p = |f: &str| dir.join(f).to_string_lossy().to_string();
    (p("node.pem"), p("node.key"), p("ca.pem"))
}

/// A key and certificate `<name>.key` and `<name>.pem` in `dir` for `subject`, with the
/// extensions `ext` (openssl's extfile lines), signed by the test CA `certificates` made there.
pub fn issue(dir: &std::path::Path, name: &str, subject: &str, ext: &str) -> (String, String) {
    let run = |args: &[&str]| openssl(dir, args);
    let (key, csr, pem, cnf) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
        format!("{name}.cnf"),
    );
    run(&[
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj", subject,
    ]);
    std::fs::write(dir.join(&cnf), ext).expect("ext");
    run(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        &pem,
        "-days",
        "1",
        "-extfile",
        &cnf,
    ]);
    let p = |f: &str| dir.join(f).to_string_lossy().to_string();
    (p(&pem), p(&key))
}

/// Runs `openssl ARGS` in `dir`; it must succeed.
pub fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Where `scripts/test` puts its Python tools.
pub fn venv_tool(tool: &str) -> std::path::PathBuf {
    let venv = std::env::var_os("IPFIXSVC_TEST_VENV")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv-test"));
    let bin = venv.join("bin").join(tool);
    assert!(
        bin.exists(),
        "{} is missing: ./scripts/test makes the virtual environment (python3 -m venv, pip install {tool})",
        bin.display()
    );
    bin
}

/// A fresh folder for a test's configuration (not the Server's own, which it empties).
pub fn config_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "ipfixsvc-test-{}-{name}-config",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    dir
}

/// An IPFIX stream of instant flows at `(Unix ms, destination port, octets)`, one packet each,
/// as an exporter would send it (for live series, which take recent times only).
pub fn flows_at(flows: &[(u64, u16, u64)]) -> Vec<u8> {
    use ipfixsvc::wire::Registry;
    use ipfixsvc::wire::encode::{FieldValue, MessageBuilder};
    use ipfixsvc::wire::plan::Plan;
    use ipfixsvc::wire::template::{FieldSpec, Template};
    let reg = Registry::builtin();
    let t = Template::data(
        256,
        vec![
            FieldSpec::new(11, 0, 2),
            FieldSpec::new(1, 0, 8),
            FieldSpec::new(2, 0, 8),
            FieldSpec::new(152, 0, 8),
            FieldSpec::new(153, 0, 8),
        ],
    );
    let plan = Plan::compile(t.clone(), &reg);
    let mut mb = MessageBuilder::new(7, 1400);
    mb.add_template(&t).expect("template");
    for &(ms, port, octets) in flows {
        let u = FieldValue::Unsigned;
        mb.add_record(
            &plan,
            &[
                u(port.into()),
                u(octets),
                u(1),
                FieldValue::DateTimeMilliseconds(ms),
                FieldValue::DateTimeMilliseconds(ms),
            ],
        )
        .expect("record");
    }
    mb.flush();
    mb.take_ready().concat()
}

/// Sends `bytes` over one TCP connection from `source` (an address of 127.0.0.0/8).
pub async fn export_from(source: &str, to: SocketAddr, bytes: &[u8]) {
    use tokio::io::AsyncWriteExt;
    let s = tokio::net::TcpSocket::new_v4().expect("socket");
    s.bind(format!("{source}:0").parse().expect("addr"))
        .expect("bind");
    let mut c = s.connect(to).await.expect("connect");
    c.write_all(bytes).await.expect("send");
}
