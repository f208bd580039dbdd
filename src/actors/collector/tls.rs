//! IPFIX over TLS (RFC 7011 section 11): the TLS listener's server side, built once from the
//! collector's PEM files. With `tls_ca`, exporters must present a certificate signed by it
//! (mutual TLS); without, the channel is encrypted and the exporter is known by its address, as
//! over plain TCP. With `tls_tenant_from_cert` too, the certificate's subject common name names
//! the exporter's tenant.

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

/// The subject common name (CN) of a DER certificate: the exporter's tenant with
/// `tls_tenant_from_cert`. Only string types a CN may have are read (UTF8String,
/// PrintableString, IA5String); the certificate was verified already, this only reads it.
pub fn subject_common_name(der: &[u8]) -> Result<String, String> {
    use x509_cert::der::{Decode, Tag, Tagged};
    const CN: x509_cert::der::oid::ObjectIdentifier =
        x509_cert::der::oid::ObjectIdentifier::new_unwrap("2.5.4.3");
    let cert = x509_cert::Certificate::from_der(der).map_err(|e| format!("certificate: {e}"))?;
    let atv = cert
        .tbs_certificate
        .subject
        .0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .find(|atv| atv.oid == CN)
        .ok_or("the certificate's subject has no common name (CN)")?;
    match atv.value.tag() {
        Tag::Utf8String | Tag::PrintableString | Tag::Ia5String => {
            std::str::from_utf8(atv.value.value())
                .map(str::to_string)
                .map_err(|_| "the certificate's common name is not UTF-8".into())
        }
        t => Err(format!(
            "the certificate's common name is a {t}, not a string"
        )),
    }
}

/// Who may be named by an exporter's certificate (`tls_tenant_from_cert`): the tenants, and the
/// node's default tenant (`store.tenant`).
#[derive(Clone)]
pub struct CertTenants {
    pub tenants: Option<Arc<crate::store::tenants::ExporterTenants>>,
    pub default: String,
}

impl CertTenants {
    /// The tenant a verified client certificate (its chain's first, DER) names, or why none.
    pub fn of(
        &self,
        chain: Option<&[rustls::pki_types::CertificateDer<'_>]>,
    ) -> Result<String, String> {
        let leaf = chain
            .and_then(|c| c.first())
            .ok_or("no client certificate")?;
        let cn = subject_common_name(leaf)?;
        let known = cn == self.default || self.tenants.as_ref().is_some_and(|t| t.exists(&cn));
        if known {
            Ok(cn)
        } else {
            Err(format!(
                "its certificate names tenant {cn:?}, which does not exist"
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_not_a_certificate_is_an_error() {
        for bytes in [
            &b""[..],
            b"\x30\x03\x02\x01\x05",
            b"not a certificate at all",
            &[0x30; 64],
        ] {
            assert!(subject_common_name(bytes).is_err());
        }
    }
}
