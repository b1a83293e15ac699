//! Manifests: OCI and Docker by tag and digest, `sha512` references, every error path, deletes
//! by tag and digest, and references that are not valid at all.

use super::*;

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
