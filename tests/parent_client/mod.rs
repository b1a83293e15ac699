//! The parent client against a real parent: Debian's `docker-registry` (CNCF distribution 2.8),
//! started per test on a free loopback port with its own root directory, seeded over HTTP.
//!
//! Covered: ping, catalog, tags, manifests (digest-verified, by tag and by digest), blob
//! downloads (whole, resumed with `Range`, resumed after a cut through a TCP proxy, a corrupted
//! partial file, the bandwidth limit), Basic auth with an htpasswd file, the docker token flow
//! with distribution's own JWT verification, and an unreachable parent. A missing tool fails
//! the test: `scripts/test.sh` installs `docker-registry` and `apache2-utils` (`htpasswd`).
//! Distribution is started by the harness (`common::peers::Distribution`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::free_port;
use crate::common::peers::Distribution;
use connected_registry::oci::Digest;
use connected_registry::sync::client::*;
use rand::{RngCore, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// Distribution from an async test, started by `start` (one of the harness's
/// `Distribution::start*`): they wait for it with blocking calls, which may not run on the
/// test's runtime thread.
async fn distribution(start: impl FnOnce() -> Distribution + Send + 'static) -> Distribution {
    tokio::task::spawn_blocking(start).await.unwrap()
}

fn client_for(endpoint: &str, credentials: Option<(&str, &str)>) -> ParentClient {
    ParentClient::new(ParentOptions {
        endpoint: endpoint.to_owned(),
        credentials: credentials.map(|(u, p)| (u.to_owned(), p.to_owned())),
        ca_pem: None,
        bandwidth_limit: None,
    })
    .unwrap()
}

/// Seeds a registry over plain HTTP (monolithic blob uploads, manifest PUTs).
struct Pusher {
    http: reqwest::Client,
    base: String,
    auth: Option<(String, String)>,
}

impl Pusher {
    fn new(base: &str) -> Pusher {
        Pusher {
            http: reqwest::Client::new(),
            base: base.to_owned(),
            auth: None,
        }
    }

    fn with_auth(base: &str, user: &str, password: &str) -> Pusher {
        Pusher {
            auth: Some((user.to_owned(), password.to_owned())),
            ..Pusher::new(base)
        }
    }

    fn req(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, url);
        match &self.auth {
            Some((u, p)) => r.basic_auth(u, Some(p)),
            None => r,
        }
    }

    async fn blob(&self, repo: &str, data: &[u8]) -> Digest {
        let digest = Digest::sha256_of(data);
        let resp = self
            .req(
                reqwest::Method::POST,
                &format!("{}/v2/{repo}/blobs/uploads/", self.base),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202, "start upload to {repo}");
        let location = resp.headers()["location"].to_str().unwrap().to_owned();
        let mut url = reqwest::Url::parse(&self.base)
            .unwrap()
            .join(&location)
            .unwrap();
        url.query_pairs_mut()
            .append_pair("digest", &digest.to_string());
        let resp = self
            .req(reqwest::Method::PUT, url.as_str())
            .header("content-type", "application/octet-stream")
            .body(data.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201, "finish upload to {repo}");
        digest
    }

    async fn manifest(&self, repo: &str, reference: &str, media_type: &str, bytes: &[u8]) {
        let resp = self
            .req(
                reqwest::Method::PUT,
                &format!("{}/v2/{repo}/manifests/{reference}", self.base),
            )
            .header("content-type", media_type)
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap();
        let status = resp.status();
        assert_eq!(
            status,
            201,
            "PUT manifest {repo}:{reference}: {}",
            resp.text().await.unwrap_or_default()
        );
    }

    /// An image with one layer, under `tags`; returns (manifest bytes, layer digest).
    async fn image(&self, repo: &str, tags: &[&str], layer: &[u8]) -> (Vec<u8>, Digest) {
        let config =
            br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
        let config_digest = self.blob(repo, config).await;
        let layer_digest = self.blob(repo, layer).await;
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer_digest}","size":{}}}]}}"#,
            config.len(),
            layer.len()
        )
        .into_bytes();
        for tag in tags {
            self.manifest(repo, tag, OCI_MANIFEST, &manifest).await;
        }
        (manifest, layer_digest)
    }
}

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut data);
    data
}

fn sha256_file(path: &Path) -> Digest {
    Digest::sha256_of(&std::fs::read(path).unwrap())
}

mod blobs;
mod failures;
mod listings;
mod token_flow;
