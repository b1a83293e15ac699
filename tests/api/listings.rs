//! Listings: `tags/list` and `_catalog` with `n`/`last` pagination, and the referrers API.

use super::*;

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
