//! `ipfixsvc serve`: run a node (single node, in-memory state by default) until SIGTERM or
//! Ctrl-C, then drain: listeners stop, sessions finish the message they hold, output flushes,
//! all within `shutdown.grace_secs`.

use crate::actors::node::{NodeArgs, NodeMsg, NodeSupervisor};
use crate::actors::output::RecordSink;
use crate::config::Settings;
use crate::wire::Registry;
use ractor::Actor;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Configuration file (TOML or YAML); the environment (IPFIXSVC__SECTION__KEY) overrides it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Extra Information Elements (TOML), as for `dump --elements`.
    #[arg(long, value_name = "FILE")]
    pub elements: Option<PathBuf>,
}

pub fn run(args: &ServeArgs) -> anyhow::Result<()> {
    let settings = Settings::load(args.config.as_deref())?;
    crate::telemetry::init(&settings.log);
    let registry = match &args.elements {
        Some(p) => Arc::new(Registry::with_extra_file(p)?),
        None => Registry::builtin(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(serve(settings, registry))
}

async fn serve(settings: Settings, registry: Arc<Registry>) -> anyhow::Result<()> {
    let grace = Duration::from_secs(settings.shutdown.grace_secs);
    let (sink, writer) = RecordSink::start(&settings.output).await?;
    let args = NodeArgs {
        settings,
        registry,
        sink,
    };
    let (node, node_done) = Actor::spawn(Some("node".into()), NodeSupervisor, args)
        .await
        .map_err(|e| {
            anyhow::anyhow!("node did not start: {}", crate::actors::startup_failure(&e))
        })?;
    tokio::select! {
        _ = shutdown_signal() => tracing::info!("shutting down"),
        _ = wait_stopped(&node) => anyhow::bail!("the node stopped on its own (see the errors above)"),
    }
    let drained = tokio::time::timeout(grace, async {
        let _ = ractor::call!(node, NodeMsg::Drain);
        node.stop(None);
        let _ = node_done.await;
        // Every session's output handle is gone now: the writer drains and ends.
        writer.await
    })
    .await;
    match drained {
        Ok(Ok(Ok(()))) => {
            tracing::info!("stopped");
            Ok(())
        }
        Ok(Ok(Err(e))) => Err(anyhow::anyhow!("writing records: {e}")),
        Ok(Err(e)) => Err(anyhow::anyhow!("output writer: {e}")),
        Err(_) => {
            tracing::warn!(
                grace_secs = grace.as_secs(),
                "grace period over: exiting with work in flight"
            );
            Ok(())
        }
    }
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
