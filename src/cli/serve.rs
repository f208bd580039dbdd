//! `ipfixsvc serve`: run a node (single node, in-memory state by default) until SIGTERM or
//! Ctrl-C, then drain: listeners stop, sessions finish the message they hold, output flushes,
//! all within `shutdown.grace_secs`.

use crate::actors::mediator::Streams;
use crate::actors::node::{NodeArgs, NodeMsg, NodeSupervisor};
use crate::config::Settings;
use crate::wire::Registry;
use anyhow::Context;
use ractor::Actor;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Configuration file (TOML or YAML); the environment (IPFIXSVC__SECTION__KEY) overrides it.
    #[arg(long, value_name = "FILE", env = "IPFIXSVC_CONFIG")]
    pub config: Option<PathBuf>,
    /// Extra Information Elements (TOML), as for `dump --elements`.
    #[arg(long, value_name = "FILE")]
    pub elements: Option<PathBuf>,
    /// Check the configuration (file, environment, the TLS files it names, --elements), print
    /// the effective configuration as TOML and exit, starting nothing: for a deployment's
    /// pre-flight, and for tests that a manifest's keys are ones the binary has.
    #[arg(long)]
    pub check: bool,
}

pub fn run(args: &ServeArgs) -> anyhow::Result<()> {
    let settings = Settings::load(args.config.as_deref())?;
    if args.check {
        return check(&settings, args);
    }
    crate::telemetry::init_node(&settings.log, &settings.telemetry, &settings.node.name)
        .map_err(anyhow::Error::msg)?;
    let registry = match &args.elements {
        Some(p) => Arc::new(Registry::with_extra_file(p)?),
        None => Registry::builtin(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(serve(settings, registry));
    // A write to a blocked output sits in a blocking thread that no deadline can cancel: do not
    // wait for it, or the process would outlive its grace period (and need SIGKILL). The last
    // spans and metrics get the other half of the margin.
    runtime.shutdown_timeout(EXIT_MARGIN / 2);
    crate::telemetry::shutdown(EXIT_MARGIN / 2);
    result
}

/// Past the grace period, the most the process takes to exit.
const EXIT_MARGIN: Duration = Duration::from_millis(500);

async fn serve(settings: Settings, registry: Arc<Registry>) -> anyhow::Result<()> {
    let grace = Duration::from_secs(settings.shutdown.grace_secs);
    // The routing table the mediator fills and the sessions read.
    let streams = Streams::default();
    let args = NodeArgs {
        settings,
        registry,
        streams,
    };
    let (node, node_done) = Actor::spawn(Some("node".into()), NodeSupervisor, args)
        .await
        .map_err(|e| {
            anyhow::anyhow!("node did not start: {}", crate::actors::startup_failure(&e))
        })?;
    let failed = tokio::select! {
        _ = shutdown_signal() => {
            tracing::info!("shutting down");
            None
        }
        _ = wait_stopped(&node) => Some(anyhow::anyhow!("the node stopped on its own (see the errors above)")),
    };
    if let Some(e) = failed {
        tracing::error!(error = %e, "stopping");
        node.stop(Some(e.to_string()));
        let _ = tokio::time::timeout(grace, node_done).await;
        return Err(e);
    }
    // Sessions get most of the grace period, the output's last flush the rest.
    let started = tokio::time::Instant::now();
    let deadline = started + grace;
    let sessions_within = grace.mul_f64(0.8);
    let answered = tokio::time::timeout_at(deadline, async {
        ractor::call!(node, NodeMsg::Drain, sessions_within)
    })
    .await;
    let report = match answered {
        Ok(Ok(r)) => r,
        // The node did not answer in time (or at all): nothing says what was lost.
        _ => anyhow::bail!(
            "shutdown: the drain did not finish within shutdown.grace_secs ({} s): records still held by sessions or export streams are lost",
            grace.as_secs()
        ),
    };
    node.stop(None);
    let stopped = tokio::time::timeout_at(deadline, node_done).await.is_ok();
    let took = started.elapsed().as_millis() as u64;
    if !report.streams_unfinished.is_empty() {
        anyhow::bail!(
            "shutdown: the record output did not take the last records within shutdown.grace_secs ({} s): they are lost ({})",
            grace.as_secs(),
            report.streams_unfinished.join("; ")
        );
    }
    if report.unfinished > 0 || !stopped {
        anyhow::bail!(
            "shutdown: {} of {} sessions did not finish within shutdown.grace_secs ({} s): what they held is lost",
            report.unfinished,
            report.sessions,
            grace.as_secs()
        );
    }
    tracing::info!(
        sessions = report.sessions,
        took_ms = took,
        "stopped: every record read was written"
    );
    Ok(())
}

async fn wait_stopped(node: &ractor::ActorRef<NodeMsg>) {
    loop {
        if matches!(
            node.get_status(),
            ractor::ActorStatus::Stopped | ractor::ActorStatus::Stopping
        ) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// `serve --check`: what `serve` would refuse at start, refused now, without binding anything.
fn check(settings: &Settings, args: &ServeArgs) -> anyhow::Result<()> {
    if !settings.collector.tls_listen.is_empty() {
        crate::actors::collector::tls::acceptor(&settings.collector).map_err(anyhow::Error::msg)?;
    }
    let c = &settings.cluster;
    if !c.tls_cert.is_empty() {
        crate::actors::cluster_tls::ClusterTls::from_pem_files(&c.tls_cert, &c.tls_key, &c.tls_ca)
            .map_err(anyhow::Error::msg)?;
    }
    if let Some(p) = &args.elements {
        Registry::with_extra_file(p)?;
    }
    // Secrets are said to be set, not printed.
    let mut shown = settings.clone();
    for secret in [&mut shown.api.admin_token, &mut shown.cluster.cookie] {
        if !secret.is_empty() {
            *secret = "(set)".into();
        }
    }
    let text = toml::to_string(&shown).context("printing the configuration")?;
    let mut out = crate::cli::stdout_lines();
    out.line(text.trim_end())?;
    out.flush()
}
