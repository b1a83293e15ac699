//! TLS for the listener: a rustls acceptor built from PEM files, offering HTTP/2 and HTTP/1.1 by
//! ALPN. Kept apart so the accept loop reads the same with or without TLS.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use tokio_rustls::TlsAcceptor;

/// Build a rustls acceptor from PEM files, offering HTTP/2 and HTTP/1.1.
pub fn tls_acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(cert).with_context(|| format!("opening TLS certificate {cert:?}"))?,
    ))
    .collect::<Result<Vec<_>, _>>()
    .with_context(|| format!("reading PEM certificates from {cert:?}"))?;
    anyhow::ensure!(!certs.is_empty(), "no certificate found in {cert:?}");
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(key).with_context(|| format!("opening TLS key {key:?}"))?,
    ))
    .with_context(|| format!("reading PEM private key from {key:?}"))?
    .with_context(|| format!("no private key found in {key:?}"))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("configuring TLS versions")?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .context("the TLS certificate and key do not form a usable pair")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
