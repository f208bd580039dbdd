//! `ipfixsvc cluster sessions|view --seed HOST:PORT`, the cookie from IPFIXSVC__CLUSTER__COOKIE
//! or `--cookie-file`: ask a running node, over the
//! ractor cluster, for every exporter session in the cluster, or for its view of the cluster.
//! The command joins as a short-lived node of its own (isolated: it talks to the seed only).

use crate::actors::directory::{DIRECTORY_GROUP, DirectoryMsg};
use anyhow::Context;
use ractor::{Actor, ActorRef};
use ractor_cluster::NodeServer;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct ClusterArgs {
    #[command(subcommand)]
    pub what: ClusterQuery,
    /// A node of the cluster, HOST:PORT of its cluster.listen.
    #[arg(long, global = true, default_value = "127.0.0.1:4800")]
    pub seed: String,
    /// The cluster's shared secret. Discouraged: a command line is visible to every user of
    /// the host (ps, /proc/PID/cmdline). Without it and --cookie-file, the secret comes from
    /// IPFIXSVC__CLUSTER__COOKIE.
    #[arg(long, global = true, conflicts_with = "cookie_file")]
    pub cookie: Option<String>,
    /// A file holding the cluster's shared secret (a mounted Kubernetes Secret, say); a
    /// trailing newline is not part of it.
    #[arg(long, global = true, value_name = "PATH")]
    pub cookie_file: Option<PathBuf>,
    #[command(flatten)]
    pub tls: TlsArgs,
}

/// Mutual TLS, when the cluster uses it (`cluster.tls_*`).
#[derive(Debug, clap::Args)]
pub struct TlsArgs {
    #[arg(
        long,
        global = true,
        env = "IPFIXSVC__CLUSTER__TLS_CERT",
        default_value = ""
    )]
    pub tls_cert: String,
    #[arg(
        long,
        global = true,
        env = "IPFIXSVC__CLUSTER__TLS_KEY",
        default_value = ""
    )]
    pub tls_key: String,
    #[arg(
        long,
        global = true,
        env = "IPFIXSVC__CLUSTER__TLS_CA",
        default_value = ""
    )]
    pub tls_ca: String,
}

#[derive(Debug, clap::Subcommand)]
pub enum ClusterQuery {
    /// Every exporter session of every node, one JSON object per line.
    Sessions,
    /// The seed node's view of the cluster: peers, seeds, last errors.
    View,
    /// Cluster RPC round trips to the seed node: median and 99th percentile.
    Ping {
        #[arg(long, default_value_t = 1000)]
        count: usize,
    },
}

pub fn run(args: &ClusterArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(query(args))
}

/// The shared secret, byte for byte as `serve` takes it: --cookie-file, else --cookie, else
/// IPFIXSVC__CLUSTER__COOKIE (flags given on purpose win over an environment left set).
fn cookie(args: &ClusterArgs) -> anyhow::Result<String> {
    const VAR: &str = "IPFIXSVC__CLUSTER__COOKIE";
    let cookie = if let Some(path) = &args.cookie_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("--cookie-file {}", path.display()))?;
        // `echo "$COOKIE" > file` and most editors end the file with a newline.
        let cookie = text.trim_end_matches(['\n', '\r']).to_string();
        if cookie.is_empty() {
            anyhow::bail!("--cookie-file {}: the file is empty", path.display());
        }
        cookie
    } else if let Some(c) = &args.cookie {
        c.clone()
    } else {
        match std::env::var(VAR) {
            Ok(c) => c,
            Err(std::env::VarError::NotPresent) => String::new(),
            Err(std::env::VarError::NotUnicode(_)) => anyhow::bail!("{VAR}: not valid UTF-8"),
        }
    };
    if cookie.is_empty() {
        anyhow::bail!(
            "the cluster's shared secret is required: set {VAR}, or give --cookie-file PATH"
        );
    }
    Ok(cookie)
}

async fn query(args: &ClusterArgs) -> anyhow::Result<()> {
    let cookie = cookie(args)?;
    let name = format!(
        "{}{}",
        crate::actors::cluster::CLI_NODE_PREFIX,
        std::process::id()
    );
    let server = NodeServer::new(0, cookie, name, "localhost".into(), None, None)
        .with_listen_addr([127, 0, 0, 1].into());
    let (server, _) = Actor::spawn(None, server, ())
        .await
        .map_err(|e| anyhow::anyhow!("cluster client: {}", crate::actors::startup_failure(&e)))?;
    if args.tls.tls_cert.is_empty() {
        ractor_cluster::client_connect(&server, args.seed.as_str())
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach {}: {e:?}", args.seed))?;
    } else {
        let t = &args.tls;
        let tls = crate::actors::cluster_tls::ClusterTls::from_pem_files(
            &t.tls_cert,
            &t.tls_key,
            &t.tls_ca,
        )
        .map_err(|e| anyhow::anyhow!(e))?;
        let name = crate::actors::cluster_tls::ClusterTls::server_name(&args.seed)
            .map_err(|e| anyhow::anyhow!(e))?;
        ractor_cluster::client_connect_enc(&server, args.seed.as_str(), tls.connector, name)
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach {}: {e:?}", args.seed))?;
    }
    // Connected is not authenticated: wait for the seed's directory to show up.
    let deadline = Instant::now() + Duration::from_secs(5);
    let directory = loop {
        let remote = ractor::pg::get_members(&DIRECTORY_GROUP.to_string())
            .into_iter()
            .find(|m| !m.get_id().is_local());
        if let Some(d) = remote {
            break ActorRef::<DirectoryMsg>::from(d);
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "{}: no answer from the cluster (wrong cookie, or not a cluster node)",
                args.seed
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let answered = answer(&args.what, directory).await;
    server.stop(None);
    answered
}

/// Asks the seed's directory and prints the answer. Lines go through [`super::Lines`]:
/// `ipfixsvc cluster sessions | head -2` ends quietly when head leaves.
async fn answer(what: &ClusterQuery, directory: ActorRef<DirectoryMsg>) -> anyhow::Result<()> {
    let mut out = super::stdout_lines();
    match what {
        ClusterQuery::Sessions => {
            let list = ractor::call_t!(directory, DirectoryMsg::ListCluster, 10_000)
                .map_err(|e| anyhow::anyhow!("listing sessions: {e}"))?;
            // Errors first: a reader that leaves after a few lines must not hide them.
            for e in &list.errors {
                eprintln!("ipfixsvc cluster: {e}");
            }
            for s in &list.sessions {
                out.line(serde_json::to_string(s)?)?;
            }
        }
        &ClusterQuery::Ping { count } => {
            let mut rtts = Vec::with_capacity(count);
            for _ in 0..count.max(1) {
                let t = Instant::now();
                ractor::call_t!(directory, DirectoryMsg::Ping, 5_000)
                    .map_err(|e| anyhow::anyhow!("ping: {e}"))?;
                rtts.push(t.elapsed().as_nanos() as u64);
            }
            rtts.sort_unstable();
            let pick = |q: f64| rtts[((rtts.len() - 1) as f64 * q) as usize] as f64 / 1000.0;
            out.line(serde_json::json!({"count": rtts.len(), "median_us": pick(0.5), "p99_us": pick(0.99), "max_us": pick(1.0)}))?;
        }
        ClusterQuery::View => {
            let view = ractor::call_t!(directory, DirectoryMsg::ClusterView, 5_000)
                .map_err(|e| anyhow::anyhow!("cluster view: {e}"))?;
            out.line(&view.0)?;
        }
    }
    out.flush()
}
