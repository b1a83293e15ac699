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

#[test]
fn base_endpoint() {
    let reg = Registry::start();
    let r = client().get(reg.url("/v2/")).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "docker-distribution-api-version"),
        "registry/2.0"
    );
    assert_eq!(r.text().unwrap(), "{}");
}

#[test]
fn blob_get_head_range_delete() {
    let reg = Registry::start();
    let c = client();
    let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let digest = push_blob(&c, &reg, "a/b", &data);

    let r = c
        .head(reg.url(&format!("/v2/a/b/blobs/{digest}")))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-length"), "10000");
    assert_eq!(header(&r, "docker-content-digest"), digest);

    let r = c
        .get(reg.url(&format!("/v2/a/b/blobs/{digest}")))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().unwrap().as_ref(), &data[..]);

    let r = c
        .get(reg.url(&format!("/v2/a/b/blobs/{digest}")))
        .header("Range", "bytes=100-199")
        .send()
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(header(&r, "content-range"), "bytes 100-199/10000");
    assert_eq!(r.bytes().unwrap().as_ref(), &data[100..200]);

    let r = c
        .get(reg.url(&format!("/v2/a/b/blobs/{digest}")))
        .header("Range", "bytes=-10")
        .send()
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().unwrap().as_ref(), &data[9990..]);

    let r = c
        .get(reg.url(&format!("/v2/a/b/blobs/{digest}")))
        .header("Range", "bytes=9990-")
        .send()
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().unwrap().as_ref(), &data[9990..]);

    let r = c
        .get(reg.url(&format!("/v2/a/b/blobs/{digest}")))
        .header("Range", "bytes=10000-")
        .send()
        .unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(header(&r, "content-range"), "bytes */10000");

    // The blob is linked to a/b only.
    assert_error(
        c.get(reg.url(&format!("/v2/other/blobs/{digest}")))
            .send()
            .unwrap(),
        StatusCode::NOT_FOUND,
        "BLOB_UNKNOWN",
    );
    let r = c
        .head(reg.url(&format!("/v2/other/blobs/{digest}")))
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);

    let r = c
        .delete(reg.url(&format!("/v2/a/b/blobs/{digest}")))
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_error(
        c.get(reg.url(&format!("/v2/a/b/blobs/{digest}")))
            .send()
            .unwrap(),
        StatusCode::NOT_FOUND,
        "BLOB_UNKNOWN",
    );
    assert_error(
        c.delete(reg.url(&format!("/v2/a/b/blobs/{digest}")))
            .send()
            .unwrap(),
        StatusCode::NOT_FOUND,
        "BLOB_UNKNOWN",
    );
}

#[test]
fn uploads_post_put_patch_chunked_status_cancel() {
    let reg = Registry::start();
    let c = client();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let digest = sha256(&data);

    // POST then PUT with the whole body.
    let r = c.post(reg.url("/v2/up/blobs/uploads/")).send().unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(header(&r, "range"), "0-0");
    assert!(!header(&r, "docker-upload-uuid").is_empty());
    let loc = header(&r, "location");
    assert!(loc.starts_with("/v2/up/blobs/uploads/"), "{loc}");
    let r = c
        .put(reg.url(&format!("{loc}?digest={digest}")))
        .body(data.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(header(&r, "location"), format!("/v2/up/blobs/{digest}"));
    assert_eq!(header(&r, "docker-content-digest"), digest);

    // Streamed PATCH (no Content-Range), then PUT with no body.
    let loc = header(
        &c.post(reg.url("/v2/up2/blobs/uploads/")).send().unwrap(),
        "location",
    );
    let r = c.patch(reg.url(&loc)).body(data.clone()).send().unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(header(&r, "range"), format!("0-{}", data.len() - 1));
    let loc = header(&r, "location");
    let r = c
        .put(reg.url(&format!("{loc}?digest={digest}")))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let got = c
        .get(reg.url(&format!("/v2/up2/blobs/{digest}")))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    assert_eq!(got.as_ref(), &data[..]);

    // Chunked PATCH with Content-Range; status; out-of-order chunk; final chunk on PUT.
    let loc = header(
        &c.post(reg.url("/v2/up3/blobs/uploads/")).send().unwrap(),
        "location",
    );
    let mut offset = 0;
    for chunk in data[..200_000].chunks(65_536) {
        let r = c
            .patch(reg.url(&loc))
            .header(
                "Content-Range",
                format!("{}-{}", offset, offset + chunk.len() - 1),
            )
            .header("Content-Type", "application/octet-stream")
            .body(chunk.to_vec())
            .send()
            .unwrap();
        assert_eq!(r.status(), 202);
        offset += chunk.len();
        assert_eq!(header(&r, "range"), format!("0-{}", offset - 1));
    }
    let r = c.get(reg.url(&loc)).send().unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(header(&r, "range"), "0-199999");
    assert_eq!(header(&r, "location"), loc);
    // A chunk that does not start where the upload ends.
    let r = c
        .patch(reg.url(&loc))
        .header("Content-Range", "100-199")
        .body(vec![0u8; 100])
        .send()
        .unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(header(&r, "range"), "0-199999");
    // A Content-Range that disagrees with Content-Length.
    let r = c
        .patch(reg.url(&loc))
        .header("Content-Range", "200000-200009")
        .body(vec![0u8; 5])
        .send()
        .unwrap();
    assert_error(r, StatusCode::BAD_REQUEST, "SIZE_INVALID");
    let r = c
        .put(reg.url(&format!("{loc}?digest={digest}")))
        .header("Content-Range", format!("200000-{}", data.len() - 1))
        .body(data[200_000..].to_vec())
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let got = c
        .get(reg.url(&format!("/v2/up3/blobs/{digest}")))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    assert_eq!(sha256(&got), digest);

    // Digest mismatch, missing digest, cancel, unknown session.
    let loc = header(
        &c.post(reg.url("/v2/up4/blobs/uploads/")).send().unwrap(),
        "location",
    );
    assert_error(
        c.put(reg.url(&loc)).body("abc").send().unwrap(),
        StatusCode::BAD_REQUEST,
        "DIGEST_INVALID",
    );
    let wrong = sha256(b"something else");
    assert_error(
        c.put(reg.url(&format!("{loc}?digest={wrong}")))
            .body("abc")
            .send()
            .unwrap(),
        StatusCode::BAD_REQUEST,
        "DIGEST_INVALID",
    );
    assert_eq!(
        c.head(reg.url(&format!("/v2/up4/blobs/{wrong}")))
            .send()
            .unwrap()
            .status(),
        404
    );
    assert_error(
        c.get(reg.url(&format!("/v2/up4/blobs/{wrong}")))
            .send()
            .unwrap(),
        StatusCode::NOT_FOUND,
        "BLOB_UNKNOWN",
    );
    let loc = header(
        &c.post(reg.url("/v2/up4/blobs/uploads/")).send().unwrap(),
        "location",
    );
    assert_eq!(c.delete(reg.url(&loc)).send().unwrap().status(), 204);
    assert_error(
        c.get(reg.url(&loc)).send().unwrap(),
        StatusCode::NOT_FOUND,
        "BLOB_UPLOAD_UNKNOWN",
    );
    assert_error(
        c.patch(reg.url(&loc)).body("x").send().unwrap(),
        StatusCode::NOT_FOUND,
        "BLOB_UPLOAD_UNKNOWN",
    );
    assert_error(
        c.get(reg.url("/v2/up4/blobs/uploads/not-a-uuid"))
            .send()
            .unwrap(),
        StatusCode::NOT_FOUND,
        "BLOB_UPLOAD_UNKNOWN",
    );
    // A session belongs to its repository.
    let loc = header(
        &c.post(reg.url("/v2/up4/blobs/uploads/")).send().unwrap(),
        "location",
    );
    let id = loc.rsplit('/').next().unwrap();
    assert_error(
        c.get(reg.url(&format!("/v2/up5/blobs/uploads/{id}")))
            .send()
            .unwrap(),
        StatusCode::NOT_FOUND,
        "BLOB_UPLOAD_UNKNOWN",
    );
}

#[test]
fn sha512_blobs_are_accepted() {
    use sha2::Digest;
    let reg = Registry::start();
    let c = client();
    let data = b"sha512 content".to_vec();
    let digest = format!("sha512:{}", hex::encode(sha2::Sha512::digest(&data)));
    let r = c
        .post(reg.url(&format!("/v2/s/blobs/uploads/?digest={digest}")))
        .body(data.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = c
        .get(reg.url(&format!("/v2/s/blobs/{digest}")))
        .send()
        .unwrap();
    assert_eq!(header(&r, "docker-content-digest"), digest);
    assert_eq!(r.bytes().unwrap().as_ref(), &data[..]);
    // Chunked too (the running sha256 hash cannot be used; the file is hashed again).
    let loc = header(
        &c.post(reg.url("/v2/s/blobs/uploads/")).send().unwrap(),
        "location",
    );
    let loc = header(
        &c.patch(reg.url(&loc)).body(data.clone()).send().unwrap(),
        "location",
    );
    assert_eq!(
        c.put(reg.url(&format!("{loc}?digest={digest}")))
            .send()
            .unwrap()
            .status(),
        201
    );
}

/// A manifest pushed by a sha512 reference (the OCI spec allows any registered algorithm) is
/// verified against it and answers to it and to its sha256.
#[test]
fn sha512_manifest_references_are_accepted() {
    use sha2::Digest;
    let reg = Registry::start();
    let c = client();
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let cd = push_blob(&c, &reg, "s", config);
    let manifest = image_manifest((&cd, config.len()), &[]);
    let by_sha512 = format!("sha512:{}", hex::encode(sha2::Sha512::digest(&manifest)));
    let by_sha256 = sha256(&manifest);
    let wrong = format!("sha512:{}", "0".repeat(128));
    assert_error(
        put_manifest(&c, &reg, "s", &wrong, OCI_MANIFEST, &manifest),
        StatusCode::BAD_REQUEST,
        "DIGEST_INVALID",
    );
    let r = put_manifest(&c, &reg, "s", &by_sha512, OCI_MANIFEST, &manifest);
    assert_eq!(r.status(), 201);
    assert_eq!(header(&r, "docker-content-digest"), by_sha512);
    assert_eq!(
        header(&r, "location"),
        format!("/v2/s/manifests/{by_sha512}")
    );
    for digest in [&by_sha512, &by_sha256] {
        for head in [false, true] {
            let url = reg.url(&format!("/v2/s/manifests/{digest}"));
            let r = if head { c.head(url) } else { c.get(url) }.send().unwrap();
            assert_eq!(r.status(), 200, "{digest}");
            assert_eq!(header(&r, "docker-content-digest"), *digest);
            assert_eq!(header(&r, "content-type"), OCI_MANIFEST);
            if !head {
                assert_eq!(r.bytes().unwrap().as_ref(), &manifest[..]);
            }
        }
    }
    assert_eq!(
        c.get(reg.url(&format!("/v2/s/manifests/{wrong}")))
            .send()
            .unwrap()
            .status(),
        404
    );
    // Deleted by either name, it is gone by both.
    let r = c
        .delete(reg.url(&format!("/v2/s/manifests/{by_sha512}")))
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    for digest in [&by_sha512, &by_sha256] {
        assert_error(
            c.get(reg.url(&format!("/v2/s/manifests/{digest}")))
                .send()
                .unwrap(),
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
        );
    }
}

#[test]
fn cross_repository_mount() {
    let reg = Registry::start();
    let c = client();
    let digest = push_blob(&c, &reg, "src/repo", b"shared layer");
    let r = c
        .post(reg.url(&format!(
            "/v2/dst/repo/blobs/uploads/?mount={digest}&from=src/repo"
        )))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(
        header(&r, "location"),
        format!("/v2/dst/repo/blobs/{digest}")
    );
    assert_eq!(header(&r, "docker-content-digest"), digest);
    let got = c
        .get(reg.url(&format!("/v2/dst/repo/blobs/{digest}")))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    assert_eq!(got.as_ref(), b"shared layer");
    // Not mountable (unknown in `from`): a regular session instead.
    let other = sha256(b"never pushed");
    let r = c
        .post(reg.url(&format!(
            "/v2/dst/repo/blobs/uploads/?mount={other}&from=src/repo"
        )))
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    assert!(header(&r, "location").starts_with("/v2/dst/repo/blobs/uploads/"));
    // One copy on disk however many repositories link it.
    let hex = digest.trim_start_matches("sha256:");
    let copies = common::files_under(&reg.data_dir)
        .into_iter()
        .filter(|p| p.file_name().unwrap() == hex)
        .count();
    assert_eq!(copies, 1);
}

#[test]
fn manifests_oci_and_docker_by_tag_and_digest() {
    let reg = Registry::start();
    let c = client();
    let (digest, manifest) = push_image(&c, &reg, "lib/app", "v1", b"layer one");

    for reference in ["v1", digest.as_str()] {
        let r = c
            .get(reg.url(&format!("/v2/lib/app/manifests/{reference}")))
            .header("Accept", OCI_MANIFEST)
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "content-type"), OCI_MANIFEST);
        assert_eq!(header(&r, "docker-content-digest"), digest);
        assert_eq!(r.bytes().unwrap().as_ref(), &manifest[..]);
        let r = c
            .head(reg.url(&format!("/v2/lib/app/manifests/{reference}")))
            .send()
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(header(&r, "content-length"), manifest.len().to_string());
        assert_eq!(header(&r, "docker-content-digest"), digest);
    }

    // Bytes are kept exactly as pushed (whitespace and key order included), digest of raw bytes.
    let config = push_blob(&c, &reg, "lib/app", b"{}");
    let odd = format!("{{\n  \"schemaVersion\" : 2,\n  \"mediaType\": \"{DOCKER_MANIFEST}\",\n  \"layers\": [],\n  \"config\": {{\"size\": 2, \"mediaType\": \"application/vnd.docker.container.image.v1+json\", \"digest\": \"{config}\"}}\n}}\n");
    let r = put_manifest(
        &c,
        &reg,
        "lib/app",
        "docker",
        DOCKER_MANIFEST,
        odd.as_bytes(),
    );
    assert_eq!(r.status(), 201);
    let odd_digest = sha256(odd.as_bytes());
    assert_eq!(header(&r, "docker-content-digest"), odd_digest);
    assert_eq!(
        header(&r, "location"),
        format!("/v2/lib/app/manifests/{odd_digest}")
    );
    let r = c
        .get(reg.url("/v2/lib/app/manifests/docker"))
        .send()
        .unwrap();
    assert_eq!(header(&r, "content-type"), DOCKER_MANIFEST);
    assert_eq!(r.bytes().unwrap().as_ref(), odd.as_bytes());

    // Docker manifest list and OCI index over both.
    for (ct, tag) in [(DOCKER_LIST, "list"), (OCI_INDEX, "index")] {
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": ct,
            "manifests": [
                {"mediaType": OCI_MANIFEST, "digest": digest, "size": manifest.len(), "platform": {"architecture": "amd64", "os": "linux"}},
                {"mediaType": DOCKER_MANIFEST, "digest": odd_digest, "size": odd.len(), "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
            ]
        })).unwrap();
        let r = put_manifest(&c, &reg, "lib/app", tag, ct, &index);
        assert_eq!(r.status(), 201, "{ct}");
        let r = c
            .get(reg.url(&format!("/v2/lib/app/manifests/{tag}")))
            .send()
            .unwrap();
        assert_eq!(header(&r, "content-type"), ct);
        assert_eq!(r.bytes().unwrap().as_ref(), &index[..]);
    }

    // Push by digest: the digest must match the bytes.
    let (_, m2) = (0, image_manifest((&config, 2), &[]));
    let d2 = sha256(&m2);
    assert_eq!(
        put_manifest(&c, &reg, "lib/app", &d2, OCI_MANIFEST, &m2).status(),
        201
    );
    assert_error(
        put_manifest(&c, &reg, "lib/app", &digest, OCI_MANIFEST, &m2),
        StatusCode::BAD_REQUEST,
        "DIGEST_INVALID",
    );
}

#[test]
fn manifest_errors() {
    let reg = Registry::start();
    let c = client();
    let config = push_blob(&c, &reg, "e", b"{}");
    let missing = sha256(b"missing layer");
    let m = image_manifest((&config, 2), &[(&missing, 13)]);
    let r = put_manifest(&c, &reg, "e", "v1", OCI_MANIFEST, &m);
    assert_eq!(r.status(), 400);
    let body: Value = r.json().unwrap();
    assert_eq!(body["errors"][0]["code"], "MANIFEST_BLOB_UNKNOWN");
    assert_eq!(body["errors"][0]["detail"]["digest"], missing);
    // Nothing half-visible after a refused push.
    assert_error(
        c.get(reg.url("/v2/e/manifests/v1")).send().unwrap(),
        StatusCode::NOT_FOUND,
        "MANIFEST_UNKNOWN",
    );

    let index = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": missing, "size": 10}]}))
    .unwrap();
    assert_error(
        put_manifest(&c, &reg, "e", "idx", OCI_INDEX, &index),
        StatusCode::BAD_REQUEST,
        "MANIFEST_UNKNOWN",
    );

    assert_error(
        put_manifest(&c, &reg, "e", "bad", OCI_MANIFEST, b"{not json"),
        StatusCode::BAD_REQUEST,
        "MANIFEST_INVALID",
    );
    assert_error(
        put_manifest(
            &c,
            &reg,
            "e",
            "bad",
            OCI_MANIFEST,
            br#"{"schemaVersion":1,"name":"x"}"#,
        ),
        StatusCode::BAD_REQUEST,
        "MANIFEST_INVALID",
    );
    assert_error(
        put_manifest(
            &c,
            &reg,
            "e",
            "bad",
            "application/vnd.oci.image.config.v1+json",
            &m,
        ),
        StatusCode::BAD_REQUEST,
        "MANIFEST_INVALID",
    );
    // Declared mediaType contradicts Content-Type.
    assert_error(
        put_manifest(&c, &reg, "e", "bad", DOCKER_MANIFEST, &m),
        StatusCode::BAD_REQUEST,
        "MANIFEST_INVALID",
    );
    assert_error(
        put_manifest(&c, &reg, "e", "-bad-tag", OCI_MANIFEST, &m),
        StatusCode::BAD_REQUEST,
        "MANIFEST_INVALID",
    );
    assert_error(
        put_manifest(&c, &reg, "e", "sha256:123", OCI_MANIFEST, &m),
        StatusCode::BAD_REQUEST,
        "DIGEST_INVALID",
    );

    // Over 4 MiB: 413, with or without Content-Length.
    let big = vec![b' '; 4 * 1024 * 1024 + 1];
    assert_error(
        put_manifest(&c, &reg, "e", "big", OCI_MANIFEST, &big),
        StatusCode::PAYLOAD_TOO_LARGE,
        "SIZE_INVALID",
    );
    // Chunked encoding (no Content-Length): refused once the limit is crossed.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", reg.port)).unwrap();
    let head = format!("PUT /v2/e/manifests/big HTTP/1.1\r\nHost: x\r\nContent-Type: {OCI_MANIFEST}\r\nTransfer-Encoding: chunked\r\n\r\n");
    s.write_all(head.as_bytes()).unwrap();
    let chunk = format!("100000\r\n{}\r\n", " ".repeat(0x100000));
    for _ in 0..5 {
        if s.write_all(chunk.as_bytes()).is_err() {
            break;
        }
    }
    let _ = s.write_all(b"0\r\n\r\n");
    let mut resp = [0u8; 12];
    s.read_exact(&mut resp).unwrap();
    assert_eq!(&resp, b"HTTP/1.1 413");
    assert_eq!(
        c.get(reg.url("/v2/e/manifests/big"))
            .send()
            .unwrap()
            .status(),
        404
    );

    assert_error(
        c.get(reg.url("/v2/e/manifests/nope")).send().unwrap(),
        StatusCode::NOT_FOUND,
        "MANIFEST_UNKNOWN",
    );
    assert_error(
        c.get(reg.url(&format!("/v2/e/manifests/{missing}")))
            .send()
            .unwrap(),
        StatusCode::NOT_FOUND,
        "MANIFEST_UNKNOWN",
    );
    assert_error(
        c.delete(reg.url("/v2/e/manifests/nope")).send().unwrap(),
        StatusCode::NOT_FOUND,
        "MANIFEST_UNKNOWN",
    );
}

#[test]
fn manifest_delete_by_tag_and_digest() {
    let reg = Registry::start();
    let c = client();
    let (digest, _) = push_image(&c, &reg, "d", "v1", b"l");
    let r = c
        .put(reg.url("/v2/d/manifests/v2"))
        .header("Content-Type", OCI_MANIFEST)
        .body(
            c.get(reg.url("/v2/d/manifests/v1"))
                .send()
                .unwrap()
                .bytes()
                .unwrap(),
        )
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    // Deleting a tag removes only the tag.
    assert_eq!(
        c.delete(reg.url("/v2/d/manifests/v1"))
            .send()
            .unwrap()
            .status(),
        202
    );
    assert_eq!(
        c.get(reg.url("/v2/d/manifests/v1"))
            .send()
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        c.get(reg.url(&format!("/v2/d/manifests/{digest}")))
            .send()
            .unwrap()
            .status(),
        200
    );
    let tags: Value = c
        .get(reg.url("/v2/d/tags/list"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(tags["tags"], json!(["v2"]));
    // Deleting the digest removes the manifest and every tag pointing at it.
    assert_eq!(
        c.delete(reg.url(&format!("/v2/d/manifests/{digest}")))
            .send()
            .unwrap()
            .status(),
        202
    );
    assert_error(
        c.get(reg.url(&format!("/v2/d/manifests/{digest}")))
            .send()
            .unwrap(),
        StatusCode::NOT_FOUND,
        "MANIFEST_UNKNOWN",
    );
    assert_eq!(
        c.get(reg.url("/v2/d/manifests/v2"))
            .send()
            .unwrap()
            .status(),
        404
    );
    let tags: Value = c
        .get(reg.url("/v2/d/tags/list"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(tags["tags"], json!([]));
}

#[test]
fn tags_and_catalog_pagination() {
    let reg = Registry::start();
    let c = client();
    let (_, manifest) = push_image(&c, &reg, "p/q", "t0", b"x");
    for tag in ["b", "a", "d", "c", "e"] {
        assert_eq!(
            put_manifest(&c, &reg, "p/q", tag, OCI_MANIFEST, &manifest).status(),
            201
        );
    }
    let r = c.get(reg.url("/v2/p/q/tags/list")).send().unwrap();
    assert!(r.headers().get("link").is_none());
    let all: Value = r.json().unwrap();
    assert_eq!(
        all,
        json!({"name": "p/q", "tags": ["a", "b", "c", "d", "e", "t0"]})
    );

    let r = c.get(reg.url("/v2/p/q/tags/list?n=2")).send().unwrap();
    assert_eq!(
        header(&r, "link"),
        "</v2/p/q/tags/list?n=2&last=b>; rel=\"next\""
    );
    assert_eq!(r.json::<Value>().unwrap()["tags"], json!(["a", "b"]));
    let r = c
        .get(reg.url("/v2/p/q/tags/list?n=2&last=b"))
        .send()
        .unwrap();
    assert_eq!(r.json::<Value>().unwrap()["tags"], json!(["c", "d"]));
    let r = c
        .get(reg.url("/v2/p/q/tags/list?n=10&last=d"))
        .send()
        .unwrap();
    assert!(r.headers().get("link").is_none());
    assert_eq!(r.json::<Value>().unwrap()["tags"], json!(["e", "t0"]));
    let r = c.get(reg.url("/v2/p/q/tags/list?n=0")).send().unwrap();
    assert_eq!(r.json::<Value>().unwrap()["tags"], json!([]));
    assert_error(
        c.get(reg.url("/v2/p/q/tags/list?n=x")).send().unwrap(),
        StatusCode::BAD_REQUEST,
        "BAD_REQUEST",
    );
    assert_error(
        c.get(reg.url("/v2/nothing/here/tags/list")).send().unwrap(),
        StatusCode::NOT_FOUND,
        "NAME_UNKNOWN",
    );

    // Listed once a repository holds a manifest; blobs alone (`blobs/only`) are not enough.
    for repo in ["z", "m/n", "a1"] {
        push_image(&c, &reg, repo, "v1", b"blob");
    }
    push_blob(&c, &reg, "blobs/only", b"blob");
    let all: Value = c
        .get(reg.url("/v2/_catalog"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(all["repositories"], json!(["a1", "m/n", "p/q", "z"]));
    let r = c.get(reg.url("/v2/_catalog?n=3")).send().unwrap();
    assert_eq!(
        header(&r, "link"),
        "</v2/_catalog?n=3&last=p%2Fq>; rel=\"next\""
    );
    let r = c.get(reg.url("/v2/_catalog?n=3&last=p/q")).send().unwrap();
    assert_eq!(r.json::<Value>().unwrap()["repositories"], json!(["z"]));
}

#[test]
fn referrers_api() {
    let reg = Registry::start();
    let c = client();
    let (subject, subject_bytes) = push_image(&c, &reg, "r", "v1", b"base");

    // An empty index for a subject with no referrers (or that does not exist).
    let r = c
        .get(reg.url(&format!("/v2/r/referrers/{subject}")))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), OCI_INDEX);
    let idx: Value = r.json().unwrap();
    assert_eq!(
        idx,
        json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []})
    );

    let empty = push_blob(&c, &reg, "r", b"{}");
    let sig_blob = push_blob(&c, &reg, "r", b"signature");
    let artifact = |artifact_type: &str, note: &str| {
        serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": artifact_type,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
            "layers": [{"mediaType": "application/octet-stream", "digest": sig_blob, "size": 9}],
            "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": subject_bytes.len()},
            "annotations": {"note": note},
        })).unwrap()
    };
    let sig = artifact("application/vnd.example.signature", "sig");
    let sbom = artifact("application/vnd.example.sbom", "sbom");
    for m in [&sig, &sbom] {
        let d = sha256(m);
        let r = put_manifest(&c, &reg, "r", &d, OCI_MANIFEST, m);
        assert_eq!(r.status(), 201);
        assert_eq!(header(&r, "oci-subject"), subject);
    }
    let idx: Value = c
        .get(reg.url(&format!("/v2/r/referrers/{subject}")))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let mut got: Vec<_> = idx["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["digest"].as_str().unwrap().to_owned())
        .collect();
    got.sort();
    let mut want = vec![sha256(&sig), sha256(&sbom)];
    want.sort();
    assert_eq!(got, want);

    let r = c
        .get(reg.url(&format!(
            "/v2/r/referrers/{subject}?artifactType=application/vnd.example.sbom"
        )))
        .send()
        .unwrap();
    assert_eq!(header(&r, "oci-filters-applied"), "artifactType");
    let idx: Value = r.json().unwrap();
    assert_eq!(
        idx["manifests"],
        json!([{
            "mediaType": OCI_MANIFEST, "digest": sha256(&sbom), "size": sbom.len(),
            "artifactType": "application/vnd.example.sbom", "annotations": {"note": "sbom"}
        }])
    );

    // A referrer pushed before its subject exists is accepted (OCI 1.1).
    let ghost = sha256(b"ghost subject");
    let m = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.example.config", "digest": empty, "size": 2},
        "layers": [], "subject": {"mediaType": OCI_MANIFEST, "digest": ghost, "size": 1}}))
    .unwrap();
    assert_eq!(
        put_manifest(&c, &reg, "r", "early", OCI_MANIFEST, &m).status(),
        201
    );
    let idx: Value = c
        .get(reg.url(&format!("/v2/r/referrers/{ghost}")))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        idx["manifests"][0]["artifactType"],
        "application/vnd.example.config"
    );

    // Deleting a referrer removes it from the list.
    assert_eq!(
        c.delete(reg.url(&format!("/v2/r/manifests/{}", sha256(&sig))))
            .send()
            .unwrap()
            .status(),
        202
    );
    let idx: Value = c
        .get(reg.url(&format!("/v2/r/referrers/{subject}")))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(idx["manifests"].as_array().unwrap().len(), 1);

    assert_error(
        c.get(reg.url("/v2/r/referrers/sha256:nothex"))
            .send()
            .unwrap(),
        StatusCode::BAD_REQUEST,
        "DIGEST_INVALID",
    );
}

#[test]
fn names_paths_and_malformed_input() {
    let reg = Registry::start();
    let c = client();
    // Any number of components, including ones named like API keywords.
    let deep = "a/b/c/d/e/f/g/blobs/manifests/tags";
    let (digest, _) = push_image(&c, &reg, deep, "v1", b"deep");
    let r = c
        .get(reg.url(&format!("/v2/{deep}/manifests/v1")))
        .send()
        .unwrap();
    assert_eq!(header(&r, "docker-content-digest"), digest);

    for bad in ["UPPER/case", "a//b", "-a", "a_", "a%2Fb"] {
        assert_error(
            c.get(reg.url(&format!("/v2/{bad}/tags/list")))
                .send()
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
        );
    }
    // Path tricks reqwest would normalise: sent raw.
    assert_eq!(
        raw_status(
            &reg,
            b"GET /v2/a/../../etc/passwd/blobs/sha256:00 HTTP/1.1\r\nHost: x\r\n\r\n"
        ),
        400
    );
    assert_eq!(
        raw_status(
            &reg,
            b"GET /v2/../blobs/uploads/ HTTP/1.1\r\nHost: x\r\n\r\n"
        ),
        400
    );
    let traversal = format!(
        "GET /v2/x/blobs/sha256:..%2F..%2F{} HTTP/1.1\r\nHost: x\r\n\r\n",
        "0".repeat(58)
    );
    assert_eq!(raw_status(&reg, traversal.as_bytes()), 400);

    assert_error(
        c.get(reg.url("/v2/x/blobs/sha256:abc")).send().unwrap(),
        StatusCode::BAD_REQUEST,
        "DIGEST_INVALID",
    );
    assert_error(
        c.get(reg.url("/v2/x/blobs/md5:d41d8cd98f00b204e9800998ecf8427e"))
            .send()
            .unwrap(),
        StatusCode::BAD_REQUEST,
        "DIGEST_INVALID",
    );
    assert_error(
        c.post(reg.url("/v2/x/blobs/uploads/?digest=sha256:zz"))
            .body("a")
            .send()
            .unwrap(),
        StatusCode::BAD_REQUEST,
        "DIGEST_INVALID",
    );
    // Monolithic upload whose bytes do not match: refused, nothing stored.
    let d = sha256(b"expected");
    assert_error(
        c.post(reg.url(&format!("/v2/x/blobs/uploads/?digest={d}")))
            .body("other")
            .send()
            .unwrap(),
        StatusCode::BAD_REQUEST,
        "DIGEST_INVALID",
    );
    assert_eq!(
        c.head(reg.url(&format!("/v2/x/blobs/{d}")))
            .send()
            .unwrap()
            .status(),
        404
    );
    assert!(common::files_under(&reg.data_path("tmp")).is_empty());

    assert_error(
        c.get(reg.url("/v2/x/nothing/here")).send().unwrap(),
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
    );
    assert_error(
        c.get(reg.url("/elsewhere")).send().unwrap(),
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
    );
    assert_error(
        c.post(reg.url(&format!("/v2/x/blobs/{d}"))).send().unwrap(),
        StatusCode::METHOD_NOT_ALLOWED,
        "UNSUPPORTED",
    );

    // Huge headers are refused by the HTTP layer, and the server keeps serving.
    let huge = format!(
        "GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let mut s = std::net::TcpStream::connect(("127.0.0.1", reg.port)).unwrap();
    let _ = s.write_all(huge.as_bytes());
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp);
    assert!(
        text.starts_with("HTTP/1.1 431") || text.is_empty(),
        "{text}"
    );
    // A Content-Length that lies (body shorter than promised, then the client hangs up).
    let mut s = std::net::TcpStream::connect(("127.0.0.1", reg.port)).unwrap();
    s.write_all(format!("POST /v2/x/blobs/uploads/?digest={d} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nshort").as_bytes()).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    assert_eq!(c.get(reg.url("/v2/")).send().unwrap().status(), 200);
    assert_eq!(
        c.head(reg.url(&format!("/v2/x/blobs/{d}")))
            .send()
            .unwrap()
            .status(),
        404
    );
    assert!(!reg.log_text().contains("panicked"));
}

#[test]
fn upload_session_survives_restart() {
    let mut reg = Registry::start();
    let c = client();
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 241) as u8).collect();
    let digest = sha256(&data);
    let loc = header(
        &c.post(reg.url("/v2/keep/blobs/uploads/")).send().unwrap(),
        "location",
    );
    let r = c
        .patch(reg.url(&loc))
        .header("Content-Range", "0-599999")
        .body(data[..600_000].to_vec())
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(reg.terminate().code(), Some(0));
    reg.restart();
    let r = c.get(reg.url(&loc)).send().unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(header(&r, "range"), "0-599999");
    let r = c
        .put(reg.url(&format!("{loc}?digest={digest}")))
        .header("Content-Range", "600000-999999")
        .body(data[600_000..].to_vec())
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let got = c
        .get(reg.url(&format!("/v2/keep/blobs/{digest}")))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    assert_eq!(got.as_ref(), &data[..]);
}

#[test]
fn tls_serves_http2_and_http11() {
    let tls = common::TlsRegistry::start();
    let reg = &tls.reg;
    let root = reqwest::Certificate::from_pem(tls.cert_pem.as_bytes()).unwrap();
    let url = tls.url("/v2/");

    let h2 = Client::builder()
        .add_root_certificate(root.clone())
        .use_rustls_tls()
        .build()
        .unwrap();
    let r = h2.get(&url).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_2);

    let h1 = Client::builder()
        .add_root_certificate(root)
        .use_rustls_tls()
        .http1_only()
        .build()
        .unwrap();
    let r = h1.get(&url).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_11);

    // A blob round trip over HTTP/2.
    let data = vec![7u8; 3 * 1024 * 1024 + 17];
    let digest = sha256(&data);
    let r = h2
        .post(format!(
            "https://localhost:{}/v2/t/blobs/uploads/?digest={digest}",
            reg.port
        ))
        .body(data.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let got = h2
        .get(format!(
            "https://localhost:{}/v2/t/blobs/{digest}",
            reg.port
        ))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    assert_eq!(sha256(&got), digest);

    // Plain HTTP on the TLS port is not served.
    assert!(client().get(reg.url("/v2/")).send().is_err());
}

#[test]
fn refuses_anonymous_on_a_non_loopback_address_and_bad_config() {
    let out = std::process::Command::new(common::BIN)
        .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(tempfile::tempdir().unwrap().path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a loopback address"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.json");
    std::fs::write(&cfg, r#"{"lisen": "127.0.0.1:1"}"#).unwrap();
    let out = std::process::Command::new(common::BIN)
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("lisen"));
}

#[test]
fn a_child_node_is_a_read_only_mirror() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("child.json");
    // The parent is never reached in this test; only the local API is exercised.
    let unused = common::free_port();
    std::fs::write(
        &cfg,
        format!(r#"{{"parent": {{"endpoint": "http://127.0.0.1:{unused}", "sync": {{"repositories": ["x"]}}}}}}"#),
    )
    .unwrap();
    let reg = Registry::start_with(&["--config", cfg.to_str().unwrap()]);
    let c = client();
    let d = sha256(b"pushed to a child");
    assert_error(
        c.post(reg.url(&format!("/v2/x/blobs/uploads/?digest={d}")))
            .body("pushed to a child")
            .send()
            .unwrap(),
        StatusCode::FORBIDDEN,
        "DENIED",
    );
    assert_error(
        c.put(reg.url("/v2/x/manifests/v1"))
            .header("Content-Type", OCI_MANIFEST)
            .body("{}")
            .send()
            .unwrap(),
        StatusCode::FORBIDDEN,
        "DENIED",
    );
    assert_error(
        c.delete(reg.url(&format!("/v2/x/blobs/{d}")))
            .send()
            .unwrap(),
        StatusCode::FORBIDDEN,
        "DENIED",
    );
    assert_eq!(c.get(reg.url("/v2/")).send().unwrap().status(), 200);
    assert_error(
        c.get(reg.url("/v2/x/manifests/v1")).send().unwrap(),
        StatusCode::NOT_FOUND,
        "MANIFEST_UNKNOWN",
    );

    // A mode that does not exist is refused by name before anything starts.
    std::fs::write(
        &cfg,
        format!(r#"{{"mode": "ReadWriteX", "parent": {{"endpoint": "http://127.0.0.1:{unused}", "sync": {{"repositories": ["x"]}}}}}}"#),
    )
    .unwrap();
    let out = std::process::Command::new(common::BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("ReadWriteX") && stderr.contains("ReadOnly"),
        "{stderr}"
    );
}

/// A reference that is neither a tag nor a digest names no manifest: 404 `MANIFEST_UNKNOWN`
/// (as distribution answers and the OCI conformance tests expect), for GET and HEAD.
#[test]
fn an_invalid_manifest_reference_is_unknown_not_bad() {
    let reg = Registry::start();
    let c = client();
    for reference in [
        ".INVALID_MANIFEST_NAME",
        "sha256:short",
        "-dash-first",
        &"t".repeat(200),
    ] {
        let url = reg.url(&format!("/v2/x/manifests/{reference}"));
        assert_error(
            c.get(&url).send().unwrap(),
            StatusCode::NOT_FOUND,
            "MANIFEST_UNKNOWN",
        );
        assert_eq!(c.head(&url).send().unwrap().status(), StatusCode::NOT_FOUND);
    }
}
