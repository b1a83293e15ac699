//! TLS for the listener: a rustls acceptor offering HTTP/2 and HTTP/1.1 by ALPN, with its
//! certificate from PEM files or from a [`RenewableCert`] that another part (the IoT Edge
//! workload API client) replaces before it expires, without a restart. Kept apart so the accept
//! loop reads the same with or without TLS.

use std::path::Path;
use std::sync::{Arc, RwLock};

use anyhow::Context;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;

/// Build a rustls acceptor from PEM files, offering HTTP/2 and HTTP/1.1.
pub fn tls_acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    let cert_pem =
        std::fs::read(cert).with_context(|| format!("opening TLS certificate {cert:?}"))?;
    let key_pem = std::fs::read(key).with_context(|| format!("opening TLS key {key:?}"))?;
    let certified = certified_key(&cert_pem, &key_pem)
        .with_context(|| format!("TLS certificate {cert:?} with key {key:?}"))?;
    Ok(acceptor(Arc::new(RenewableCert::new(certified))))
}

/// A certificate chain and its private key, from PEM.
pub fn certified_key(cert_pem: &[u8], key_pem: &[u8]) -> anyhow::Result<Arc<CertifiedKey>> {
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(cert_pem))
        .collect::<Result<Vec<_>, _>>()
        .context("reading PEM certificates")?;
    anyhow::ensure!(!certs.is_empty(), "no certificate found");
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(key_pem))
        .context("reading the PEM private key")?
        .context("no private key found")?;
    let provider = rustls::crypto::ring::default_provider();
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .context("the private key is not usable")?;
    let certified = CertifiedKey::new(certs, signing_key);
    certified
        .keys_match()
        .context("the TLS certificate and key do not form a usable pair")?;
    Ok(Arc::new(certified))
}

/// The listener's certificate, replaceable while serving (new handshakes get the new one).
#[derive(Debug)]
pub struct RenewableCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl RenewableCert {
    pub fn new(certified: Arc<CertifiedKey>) -> RenewableCert {
        RenewableCert {
            current: RwLock::new(certified),
        }
    }

    pub fn replace(&self, certified: Arc<CertifiedKey>) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = certified;
    }
}

impl ResolvesServerCert for RenewableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

/// An acceptor serving whatever `cert` holds at each handshake.
pub fn acceptor(cert: Arc<RenewableCert>) -> TlsAcceptor {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default TLS versions")
    .with_no_client_auth()
    .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    TlsAcceptor::from(Arc::new(config))
}
