//! Listing and manifests: ping, catalog, tags, and manifests by tag and by digest, each verified
//! against its digest.

use super::*;

#[tokio::test]
async fn ping_catalog_and_tags() {
    let reg = distribution(Distribution::start).await;
    let push = Pusher::new(&reg.url());
    push.image("demo/app", &["v1", "v2", "v3", "v4", "v5"], b"layer a")
        .await;
    push.image("other", &["latest"], b"layer b").await;

    let client = client_for(&reg.url(), None);
    client.ping().await.unwrap();

    let mut repos = client.catalog().await.unwrap();
    repos.sort();
    assert_eq!(repos, vec!["demo/app", "other"]);

    let mut tags = client.list_tags("demo/app").await.unwrap().unwrap();
    tags.sort();
    assert_eq!(tags, vec!["v1", "v2", "v3", "v4", "v5"]);
    assert_eq!(
        client.list_tags("other").await.unwrap(),
        Some(vec!["latest".to_owned()])
    );
    assert_eq!(client.list_tags("no/such/repo").await.unwrap(), None);
    // Names a parent could never have are refused before any request.
    assert_eq!(
        client.list_tags("../etc").await.unwrap_err().code(),
        "ProtocolError"
    );

    // ping + catalog + 3 tag lists: one request each, nothing retried.
    assert_eq!(client.requests_made(), 5);
}

#[tokio::test]
async fn manifests_by_tag_and_digest_are_verified() {
    let reg = distribution(Distribution::start).await;
    let push = Pusher::new(&reg.url());
    let (manifest, _) = push.image("demo/app", &["v1"], b"layer").await;
    let digest = Digest::sha256_of(&manifest);

    // A Docker schema 2 manifest and an OCI index that points at the OCI manifest.
    let docker = String::from_utf8(manifest.clone())
        .unwrap()
        .replace(OCI_MANIFEST, DOCKER_MANIFEST)
        .replace(
            "application/vnd.oci.image.config.v1+json",
            "application/vnd.docker.container.image.v1+json",
        )
        .replace(
            "application/vnd.oci.image.layer.v1.tar",
            "application/vnd.docker.image.rootfs.diff.tar",
        )
        .into_bytes();
    push.manifest("demo/app", "docker", DOCKER_MANIFEST, &docker)
        .await;
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{digest}","size":{},"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#,
        manifest.len()
    )
    .into_bytes();
    push.manifest("demo/app", "multi", OCI_INDEX, &index).await;

    let client = client_for(&reg.url(), None);
    assert_eq!(
        client.head_manifest("demo/app", "v1").await.unwrap(),
        Some(digest.clone())
    );
    assert_eq!(
        client
            .head_manifest("demo/app", &digest.to_string())
            .await
            .unwrap(),
        Some(digest.clone())
    );
    assert_eq!(
        client.head_manifest("demo/app", "nope").await.unwrap(),
        None
    );
    assert_eq!(client.head_manifest("no/repo", "v1").await.unwrap(), None);

    let m = client
        .get_manifest("demo/app", "v1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.bytes.as_ref(), manifest.as_slice(), "exact bytes");
    assert_eq!(m.digest, digest);
    assert_eq!(m.media_type, OCI_MANIFEST);

    let m = client
        .get_manifest("demo/app", &digest.to_string())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.bytes.as_ref(), manifest.as_slice());
    assert_eq!(m.digest, digest);

    let m = client
        .get_manifest("demo/app", "docker")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.media_type, DOCKER_MANIFEST);
    assert_eq!(m.digest, Digest::sha256_of(&docker));
    assert_eq!(m.bytes.as_ref(), docker.as_slice());

    let m = client
        .get_manifest("demo/app", "multi")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.media_type, OCI_INDEX);
    assert_eq!(m.digest, Digest::sha256_of(&index));

    assert!(client
        .get_manifest("demo/app", "nope")
        .await
        .unwrap()
        .is_none());
    let absent = Digest::sha256_of(b"not a manifest here");
    assert!(client
        .get_manifest("demo/app", &absent.to_string())
        .await
        .unwrap()
        .is_none());

    // distribution 2.8 has no referrers API and no change feed.
    assert_eq!(client.referrers("demo/app", &digest).await.unwrap(), None);
    match client.changes(0, 0).await {
        Err(SyncError::Protocol(msg)) => assert!(msg.contains("no change feed"), "{msg}"),
        other => panic!("expected Protocol, got {other:?}"),
    }
}
