//! IPFIX over TLS (RFC 7011 section 11): the TLS listener's server side, built once from the
//! collector's PEM files. With `tls_ca`, exporters must present a certificate signed by it
//! (mutual TLS); without, the channel is encrypted and the exporter is known by its address, as
//! over plain TCP.

use crate::actors::cluster_tls::{chain_and_key, roots};
use crate::config::CollectorSettings;
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

/// The acceptor for `collector.tls_*`; the error names the key and file at fault.
pub fn acceptor(s: &CollectorSettings) -> Result<TlsAcceptor, String> {
    let (cert, key, ca) = (&s.tls_cert, &s.tls_key, &s.tls_ca);
    let (certs, key) = chain_and_key(("collector.tls_cert", cert), ("collector.tls_key", key))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = if ca.is_empty() {
        builder.with_no_client_auth()
    } else {
        let roots = roots("collector.tls_ca", ca)?;
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| format!("collector.tls_ca {ca}: {e}"))?;
        builder.with_client_cert_verifier(verifier)
    };
    let config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("collector.tls_cert/tls_key: {e}"))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
