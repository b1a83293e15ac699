//! The OCI Distribution API over real HTTP against the running binary: every endpoint, its status
//! codes and headers, and the error paths (OCI error JSON with the right code, never a 500).

use crate::common;

use std::io::{Read, Write};

use common::{sha256, Registry};
use reqwest::blocking::{Client, Response};
use reqwest::StatusCode;
use serde_json::{json, Value};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

fn client() -> Client {
    Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

fn header(r: &Response, name: &str) -> String {
    r.headers()
        .get(name)
        .unwrap_or_else(|| panic!("missing header {name} in {:?}", r.headers()))
        .to_str()
        .unwrap()
        .to_owned()
}

/// Assert an OCI error response with `status` and `code`.
fn assert_error(r: Response, status: StatusCode, code: &str) {
    assert_eq!(r.status(), status, "expected {status} {code}");
    let body: Value = r.json().expect("error body is JSON");
    assert_eq!(body["errors"][0]["code"], code, "{body}");
    assert!(body["errors"][0]["message"].as_str().unwrap().len() > 3);
}

fn push_blob(c: &Client, reg: &Registry, repo: &str, bytes: &[u8]) -> String {
    let digest = sha256(bytes);
    let r = c
        .post(reg.url(&format!("/v2/{repo}/blobs/uploads/?digest={digest}")))
        .body(bytes.to_vec())
        .send()
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    digest
}

fn image_manifest(config: (&str, usize), layers: &[(&str, usize)]) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.0, "size": config.1},
        "layers": layers.iter().map(|(d, s)| json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": s})).collect::<Vec<_>>(),
    }))
    .unwrap()
}

/// Push a small image (config + one layer) and its manifest under `tag`; returns the manifest.
fn push_image(
    c: &Client,
    reg: &Registry,
    repo: &str,
    tag: &str,
    layer: &[u8],
) -> (String, Vec<u8>) {
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let cd = push_blob(c, reg, repo, config);
    let ld = push_blob(c, reg, repo, layer);
    let manifest = image_manifest((&cd, config.len()), &[(&ld, layer.len())]);
    let r = put_manifest(c, reg, repo, tag, OCI_MANIFEST, &manifest);
    assert_eq!(r.status(), StatusCode::CREATED);
    (sha256(&manifest), manifest)
}

fn put_manifest(
    c: &Client,
    reg: &Registry,
    repo: &str,
    reference: &str,
    ct: &str,
    body: &[u8],
) -> Response {
    c.put(reg.url(&format!("/v2/{repo}/manifests/{reference}")))
        .header("Content-Type", ct)
        .body(body.to_vec())
        .send()
        .unwrap()
}

/// Send raw bytes and return the status code (for requests reqwest would normalise).
fn raw_status(reg: &Registry, request: &[u8]) -> u16 {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", reg.port)).unwrap();
    s.write_all(request).unwrap();
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).unwrap();
    let line = String::from_utf8_lossy(&buf[..n]);
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

mod blobs;
mod listings;
mod manifests;
mod server;
