//! Steps the scenarios share: pushing images (small ones whole, a big layer streamed from a
//! generator), waiting for a tag to arrive with a given digest, pulling a tag and verifying
//! every digest, comparing what the layers hold, and the Docker engine as a client.

use std::path::Path;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;

use crate::common::credentials::push_image_as;
use crate::common::images::{docker_cli, run_bounded};
use crate::common::peers::{random_bytes, Blob, Image};
use crate::common::support::{hash_reader, Gen};
use crate::scenarios::field::Endpoint;

pub const LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
/// How long anything in a scenario may take to converge before it fails.
pub const CONVERGE: Duration = Duration::from_secs(120);

/// A small single-platform image unique to `seed`.
pub fn small_image(seed: u64) -> Image {
    Image::new(
        "linux/amd64",
        &[
            random_bytes(seed, 64 * 1024),
            random_bytes(seed + 7_000, 8 * 1024),
        ],
    )
}

/// Push `image` as `repo:tag` with the endpoint's credentials.
pub fn push(at: &Endpoint, repo: &str, tag: &str, image: &Image) {
    if let Err(refused) = push_image_as(&at.base, Some(&at.authorization()), repo, tag, image) {
        panic!("push {repo}:{tag} to {}: {refused:?}", at.base);
    }
}

/// Push an image whose one layer is `mib` MiB streamed from a generator (never whole in
/// memory); returns the manifest digest and the layer's digest.
pub fn push_big(at: &Endpoint, repo: &str, tag: &str, seed: u64, mib: u64) -> (String, String) {
    let layer = Gen::new(seed, mib * 1024 * 1024);
    let layer_digest = layer.digest();
    let r = crate::scenarios::field::http()
        .post(format!(
            "{}/v2/{repo}/blobs/uploads/?digest={layer_digest}",
            at.base
        ))
        .header("Authorization", at.authorization())
        .header("Content-Type", "application/octet-stream")
        .timeout(Duration::from_secs(600))
        .body(layer.body_from(0))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "big layer: {:?}", r.text());
    let config = Blob::new(
        "application/vnd.oci.image.config.v1+json",
        format!(r#"{{"architecture":"amd64","os":"linux","seed":{seed}}}"#).into_bytes(),
    );
    let r = at.send(
        Method::POST,
        &format!("/v2/{repo}/blobs/uploads/?digest={}", config.digest),
        Some(config.bytes.clone()),
    );
    assert_eq!(r.status, 201, "config: {}", r.text());
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config.descriptor(),
        "layers": [{"mediaType": LAYER, "digest": layer_digest, "size": layer.len}],
    }))
    .unwrap();
    let digest = crate::common::sha256(&manifest);
    let r = crate::scenarios::field::http()
        .put(format!("{}/v2/{repo}/manifests/{tag}", at.base))
        .header("Authorization", at.authorization())
        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "manifest: {:?}", r.text());
    (digest, layer_digest)
}

/// Poll (every 20 ms) until `repo:tag` resolves to `digest` at `at`; how long it took.
pub fn wait_digest(
    at: &Endpoint,
    repo: &str,
    tag: &str,
    digest: &str,
    timeout: Duration,
) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if at.tag_digest(repo, tag).as_deref() == Some(digest) {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// Like [`wait_digest`], panicking with `context()` (e.g. the nodes' logs) on timeout.
pub fn expect_digest(
    at: &Endpoint,
    repo: &str,
    tag: &str,
    digest: &str,
    timeout: Duration,
    context: impl FnOnce() -> String,
) -> Duration {
    wait_digest(at, repo, tag, digest, timeout).unwrap_or_else(|| {
        panic!(
            "{repo}:{tag} did not reach {} as {digest} within {timeout:?} (it serves {:?})\n{}",
            at.base,
            at.tag_digest(repo, tag),
            context()
        )
    })
}

/// Pull `repo:tag` and verify every digest: the manifest's bytes hash to the digest the tag
/// resolves to, and every blob it names streams back with its digest and size. Returns the
/// manifest digest, or `Err` when the node could not be reached (a wrong byte panics).
pub fn pull_verified(at: &Endpoint, repo: &str, tag: &str) -> Result<Option<String>, String> {
    let r = at.try_send(Method::GET, &format!("/v2/{repo}/manifests/{tag}"), None)?;
    if r.status == 404 {
        return Ok(None);
    }
    assert_eq!(r.status, 200, "GET {repo}:{tag}: {}", r.text());
    let digest = crate::common::sha256(&r.body);
    assert_eq!(
        r.header("Docker-Content-Digest"),
        Some(digest.as_str()),
        "{repo}:{tag}: the manifest's bytes do not hash to the digest served with them"
    );
    let manifest = r.json();
    let mut blobs = vec![manifest["config"].clone()];
    blobs.extend(manifest["layers"].as_array().cloned().unwrap_or_default());
    for blob in blobs.iter().filter(|b| b.is_object()) {
        let want = blob["digest"].as_str().unwrap();
        let size = blob["size"].as_u64().unwrap();
        let resp = crate::scenarios::field::http()
            .get(format!("{}/v2/{repo}/blobs/{want}", at.base))
            .header("Authorization", at.authorization())
            .timeout(Duration::from_secs(600))
            .send()
            .map_err(|e| format!("GET blob {want}: {e}"))?;
        assert_eq!(
            resp.status().as_u16(),
            200,
            "{repo}:{tag} is served but its blob {want} is not: a half-synced tag"
        );
        let (got, len) = hash_reader(resp).map_err(|e| format!("reading blob {want}: {e}"))?;
        assert_eq!(
            (got.as_str(), len),
            (want, size),
            "{repo}:{tag}: blob {want} corrupt"
        );
    }
    Ok(Some(digest))
}

/// The repositories of `at` under `prefix` with their tags and digests, sorted.
pub fn holdings(at: &Endpoint, prefix: &str) -> Vec<(String, String, String)> {
    let r = at.get("/v2/_catalog?n=1000");
    assert_eq!(r.status, 200, "catalog: {}", r.text());
    let mut out = vec![];
    for repo in r.json()["repositories"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        let repo = repo.as_str().unwrap().to_owned();
        if !repo.starts_with(prefix) {
            continue;
        }
        for tag in at.tags(&repo) {
            let digest = at.tag_digest(&repo, &tag).unwrap_or_default();
            out.push((repo.clone(), tag, digest));
        }
    }
    out.sort();
    out
}

/// `docker login` then `docker pull` of `reference` with a private client configuration;
/// returns the digest pulled, or the engine's error output.
pub fn docker_pull_as(
    work: &Path,
    host: &str,
    user: &str,
    password: &str,
    reference: &str,
) -> Result<String, String> {
    let config = work.join(format!("docker-{user}"));
    std::fs::create_dir_all(&config).unwrap();
    crate::common::images::docker_login(&config, host, user, password);
    let out = run_bounded(
        docker_cli(&config).args(["pull", reference]),
        Duration::from_secs(180),
    );
    let _ = docker_cli(&config).args(["rmi", "-f", reference]).output();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        return Err(text);
    }
    text.lines()
        .find_map(|l| l.strip_prefix("Digest: "))
        .map(|d| d.trim().to_owned())
        .ok_or(text)
}

/// Seed `repo:tag` at `at` with a real runnable (busybox) image through skopeo; returns its
/// manifest digest.
pub fn seed_busybox(work: &Path, at: &Endpoint, repo: &str, tag: &str) -> String {
    let (layout, digest) = crate::common::clients::busybox_layout(work, tag);
    let skopeo = crate::common::require("skopeo");
    crate::common::run(
        std::process::Command::new(skopeo)
            .args([
                "copy",
                "--quiet",
                "--preserve-digests",
                "--dest-tls-verify=false",
            ])
            .arg(format!("--dest-creds={}:{}", at.user, at.password))
            .arg(layout.reference(tag))
            .arg(format!("docker://{}/{repo}:{tag}", at.host)),
    );
    digest
}

/// Median and maximum of some durations.
pub fn median_max(mut times: Vec<Duration>) -> (Duration, Duration) {
    times.sort();
    (times[times.len() / 2], *times.last().unwrap())
}
