//! TLS toward edgeHub (and, nested, toward the parent device): trust exactly the CA
//! certificates the IoT Edge runtime hands out in its trust bundle.

use std::sync::Arc;

use super::EdgeError;

/// A rustls client configuration (ring provider) that trusts the certificates in `pem`.
pub fn client_config(pem: &str) -> Result<rustls::ClientConfig, EdgeError> {
    let mut roots = rustls::RootCertStore::empty();
    let mut reader = std::io::BufReader::new(pem.as_bytes());
    for cert in rustls_pemfile::certs(&mut reader) {
        let cert = cert.map_err(|e| EdgeError::Tls(format!("reading the trust bundle: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| EdgeError::Tls(format!("a trust bundle certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(EdgeError::Tls(
            "the trust bundle holds no certificate".into(),
        ));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| EdgeError::Tls(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(config)
}
