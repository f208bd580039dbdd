//! TcpListener: accepts exporter connections and starts one ExporterSession per connection,
//! linked to the CollectorSupervisor, within the session limit. The TLS listener is the same
//! actor with an acceptor: the handshake happens in the session's reader, within the idle
//! timeout, so a slow or silent client holds up no other connection.
//!
//! Messages: `Accepted` (from its accept task). Lifecycle: binds in `pre_start` (a bind error
//! fails the start, with the address in the error); the accept task ends with the actor.

use super::session::{ExporterSession, SessionInput};
use super::session_logic::Transport;
use super::{SessionEnv, session_name};
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort};
use ractor_cluster::RactorMessage;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_rustls::TlsAcceptor;

#[derive(RactorMessage)]
pub enum TcpListenerMsg {
    Accepted(TcpStream, SocketAddr),
    LocalAddr(RpcReplyPort<SocketAddr>),
}

pub struct TcpListenerArgs {
    pub listen: String,
    pub env: SessionEnv,
    /// Sessions are linked here, not to the listener: a listener restart keeps them.
    pub supervisor: ActorCell,
    /// IPFIX over TLS: the sessions' handshakes use it.
    pub tls: Option<TlsAcceptor>,
}

pub struct TcpListenerState {
    env: SessionEnv,
    supervisor: ActorCell,
    accept: super::Watched,
    pub local: SocketAddr,
    tls: Option<TlsAcceptor>,
}

pub struct TcpListenerActor;

impl Actor for TcpListenerActor {
    type Msg = TcpListenerMsg;
    type State = TcpListenerState;
    type Arguments = TcpListenerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<TcpListenerMsg>,
        args: TcpListenerArgs,
    ) -> Result<TcpListenerState, ActorProcessingErr> {
        let what = if args.tls.is_some() { "TLS" } else { "TCP" };
        let listener = bind(&args.listen, args.env.settings.tcp_backlog)
            .await
            .map_err(|e| {
                format!(
                    "cannot listen for IPFIX over {what} on {}: {e}",
                    args.listen
                )
            })?;
        let local = listener.local_addr()?;
        if args.tls.is_some() {
            tracing::info!(tls = %local, "collector TLS listener ready");
        } else {
            tracing::info!(tcp = %local, "collector TCP listener ready");
        }
        let me = myself.clone();
        let accept = super::watched(myself.get_cell(), "TCP accept loop", async move {
            loop {
                match listener.accept().await {
                    Ok((stream, peer)) => {
                        if me.cast(TcpListenerMsg::Accepted(stream, peer)).is_err() {
                            break;
                        }
                    }
                    // Out of file descriptors and the like: pass, and try again shortly.
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Ok(TcpListenerState {
            env: args.env,
            supervisor: args.supervisor,
            accept,
            local,
            tls: args.tls,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<TcpListenerMsg>,
        msg: TcpListenerMsg,
        state: &mut TcpListenerState,
    ) -> Result<(), ActorProcessingErr> {
        crate::telemetry::metrics::ActorKind::TcpListener
            .timed(async move {
                let (stream, peer) = match msg {
                    TcpListenerMsg::Accepted(stream, peer) => (stream, peer),
                    TcpListenerMsg::LocalAddr(reply) => {
                        let _ = reply.send(state.local);
                        return Ok(());
                    }
                };
                let env = &state.env;
                let from_cert = state.tls.is_some() && env.settings.tls_tenant_from_cert;
                // Dropping the stream closes the connection. An exporter whose certificate names its
                // tenant is not judged by its address (the certificate decides, after the handshake).
                let tenant = if from_cert {
                    env.tenant.clone()
                } else {
                    match env.tenant_of(peer) {
                        Some(t) => t,
                        None => return Ok(()),
                    }
                };
                let Ok(slot) = env.admit(peer, Transport::Tcp) else {
                    return Ok(());
                };
                let _ = stream.set_nodelay(true);
                let (input, kind) = match &state.tls {
                    Some(acceptor) => (
                        SessionInput::Tls {
                            stream,
                            acceptor: acceptor.clone(),
                            failures: env.tls_failures.clone(),
                            cert_tenants: from_cert.then(|| super::tls::CertTenants {
                                tenants: env.owners.clone(),
                                default: env.tenant.clone(),
                            }),
                        },
                        "tls",
                    ),
                    None => (SessionInput::Tcp(stream), "tcp"),
                };
                let args = env.session_args(peer, input, slot, tenant);
                let name = session_name(kind, peer, None);
                // A failed start drops its arguments, and with them the slot.
                if let Err(e) =
                    Actor::spawn_linked(Some(name), ExporterSession, args, state.supervisor.clone())
                        .await
                {
                    tracing::error!(%peer, error = %e, "could not start a session");
                }
                Ok(())
            })
            .await
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<TcpListenerMsg>,
        state: &mut TcpListenerState,
    ) -> Result<(), ActorProcessingErr> {
        state.accept.stop().await;
        Ok(())
    }
}

/// Binds with a listen backlog sized for a fleet that reconnects at once (the kernel caps it at
/// net.core.somaxconn). SO_REUSEADDR lets a restarted listener bind while old connections of
/// the previous one linger in TIME_WAIT.
async fn bind(listen: &str, backlog: u32) -> std::io::Result<TcpListener> {
    let addr = tokio::net::lookup_host(listen)
        .await?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address"))?;
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}
