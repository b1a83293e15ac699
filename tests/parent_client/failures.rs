//! Authentication and failures: Basic auth with an htpasswd file, an unreachable parent, and
//! options the client refuses.

use super::*;

#[tokio::test]
async fn basic_auth_with_htpasswd() {
    let reg =
        distribution(|| Distribution::start_with_auth(Some(("factorya-sync", "s3cret pass"))))
            .await;
    let push = Pusher::with_auth(&reg.url(), "factorya-sync", "s3cret pass");
    let layer = random_bytes(100_000, 6);
    let (manifest, digest) = push.image("secure/app", &["v1"], &layer).await;

    let good = client_for(&reg.url(), Some(("factorya-sync", "s3cret pass")));
    good.ping().await.unwrap();
    assert_eq!(good.catalog().await.unwrap(), vec!["secure/app"]);
    assert_eq!(
        good.list_tags("secure/app").await.unwrap(),
        Some(vec!["v1".to_owned()])
    );
    let m = good
        .get_manifest("secure/app", "v1")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.bytes.as_ref(), manifest.as_slice());
    let tmp = tempfile::tempdir().unwrap();
    let n = good
        .download_blob("secure/app", &digest, &tmp.path().join("blob"))
        .await
        .unwrap();
    assert_eq!(n, layer.len() as u64);
    // Basic credentials go with every request: no challenge round trips.
    assert_eq!(good.requests_made(), 5);

    let wrong = client_for(&reg.url(), Some(("factorya-sync", "wrong")));
    let err = wrong.ping().await.unwrap_err();
    assert!(
        matches!(err, SyncError::AuthenticationFailed(_)),
        "expected AuthenticationFailed, got {err:?}"
    );
    assert_eq!(err.code(), "AuthenticationFailed");
    let err = wrong.list_tags("secure/app").await.unwrap_err();
    assert_eq!(err.code(), "AuthenticationFailed", "{err}");
    let err = wrong
        .download_blob("secure/app", &digest, &tmp.path().join("blob2"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "AuthenticationFailed", "{err}");

    let anonymous = client_for(&reg.url(), None);
    let err = anonymous.catalog().await.unwrap_err();
    assert_eq!(err.code(), "AuthenticationFailed", "{err}");
}

#[tokio::test]
async fn unreachable_parent() {
    let port = free_port(); // nothing listens there
    let client = client_for(&format!("http://127.0.0.1:{port}"), None);
    let start = Instant::now();
    let err = client.ping().await.unwrap_err();
    assert!(
        matches!(err, SyncError::ParentUnreachable(_)),
        "expected ParentUnreachable, got {err:?}"
    );
    assert_eq!(err.code(), "ParentUnreachable");
    // Retried with backoff: 4 attempts, 200 ms base, so ~0.7–1.4 s of waiting.
    assert_eq!(client.requests_made(), 4);
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(600) && took < Duration::from_secs(10),
        "{took:?}"
    );
    let tmp = tempfile::tempdir().unwrap();
    let err = client
        .download_blob("a/b", &Digest::sha256_of(b"x"), &tmp.path().join("x"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), "ParentUnreachable");
    let err = client.changes(0, 5).await.unwrap_err();
    assert_eq!(err.code(), "ParentUnreachable");
}

#[test]
fn bad_options_are_refused() {
    for endpoint in ["", "not a url", "ftp://host", "http://"] {
        let err = ParentClient::new(ParentOptions {
            endpoint: endpoint.into(),
            credentials: None,
            ca_pem: None,
            bandwidth_limit: None,
        })
        .unwrap_err();
        assert_eq!(err.code(), "ProtocolError", "{endpoint}");
    }
    let err = ParentClient::new(ParentOptions {
        endpoint: "https://parent.example".into(),
        credentials: None,
        ca_pem: Some(
            "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n".into(),
        ),
        bandwidth_limit: None,
    })
    .unwrap_err();
    assert_eq!(err.code(), "ProtocolError");

    // Several certificates in one PEM text are all accepted.
    let pem: String = (0..2)
        .map(|i| {
            rcgen::generate_simple_self_signed(vec![format!("ca{i}.example")])
                .unwrap()
                .cert
                .pem()
        })
        .collect();
    ParentClient::new(ParentOptions {
        endpoint: "https://parent.example:8443/".into(),
        credentials: None,
        ca_pem: Some(pem),
        bandwidth_limit: Some(1 << 20),
    })
    .unwrap();
}
