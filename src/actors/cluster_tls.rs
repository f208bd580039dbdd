//! Mutual TLS for the cluster: every node presents a certificate signed by the cluster's CA and
//! accepts only peers that do. Built once from PEM files; used by the node server (incoming) and
//! when dialing seeds and by `ipfixsvc cluster` (outgoing).

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::sync::Arc;
use tokio_rustls::{TlsAcceptor, TlsConnector};

#[derive(Clone)]
pub struct ClusterTls {
    pub acceptor: TlsAcceptor,
    pub connector: TlsConnector,
}

impl std::fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterTls")
    }
}

impl ClusterTls {
    pub fn from_pem_files(cert: &str, key: &str, ca: &str) -> Result<ClusterTls, String> {
        let (certs, key) = chain_and_key(("cluster.tls_cert", cert), ("cluster.tls_key", key))?;
        let roots = roots("cluster.tls_ca", ca)?;
        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| format!("cluster TLS client verifier: {e}"))?;
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs.clone(), key.clone_key())
            .map_err(|e| format!("cluster TLS server: {e}"))?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .map_err(|e| format!("cluster TLS client: {e}"))?;
        Ok(ClusterTls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
        })
    }

    /// The name a peer's certificate must carry: the host of `seed` (`host:port`, `[v6]:port`;
    /// a DNS name or an IP address).
    pub fn server_name(seed: &str) -> Result<ServerName<'static>, String> {
        let host = seed
            .rsplit_once(':')
            .map_or(seed, |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']');
        ServerName::try_from(host.to_string()).map_err(|e| format!("{seed}: {e}"))
    }
}

/// A PEM certificate chain and its private key; errors name the configuration key and file.
pub fn chain_and_key(
    (cert_key, cert): (&str, &str),
    (key_key, key): (&str, &str),
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<_, _>>())
        .map_err(|e| format!("{cert_key} {cert}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{cert_key} {cert}: no certificate"));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{key_key} {key}: {e}"))?;
    Ok((certs, key))
}

/// The CA certificates of a PEM file, as trust roots (at least one).
pub fn roots(ca_key: &str, ca: &str) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).map_err(|e| format!("{ca_key} {ca}: {e}"))? {
        let c = c.map_err(|e| format!("{ca_key} {ca}: {e}"))?;
        roots.add(c).map_err(|e| format!("{ca_key} {ca}: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("{ca_key} {ca}: no certificate"));
    }
    Ok(roots)
}
