//! The change feed over TLS, as production parents serve it: HTTPS offers HTTP/2 by ALPN, and
//! an HTTP/2 request cannot switch protocols, so a child asks for the stream over HTTP/1.1 (and
//! the parent answers an HTTP/2 stream request as a long-poll).

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::{self, peers::*};

const FEED: &str = "/acr/connected-registry/v1/changes";
const PROTOCOL: &str = "cr-changes/1";
/// What a child logs when a stream request came back as a long-poll.
const FELL_BACK: &str = "answered a change-feed stream request as a long-poll";
const STREAMING: &str = "following the parent's change feed over a stream";

/// Over TLS a stream is served on HTTP/1.1 (the socket under TLS is taken back the same way),
/// and a client whose connection negotiated HTTP/2 (as a plain client's does) gets the same
/// request, headers and all, answered as a long-poll.
#[test]
fn over_tls_http1_streams_and_http2_long_polls() {
    use tokio::io::AsyncBufReadExt;
    let tls = common::TlsRegistry::start();
    let root = reqwest::Certificate::from_pem(tls.cert_pem.as_bytes()).unwrap();
    let client = |http1_only: bool| {
        let builder = reqwest::Client::builder()
            .add_root_certificate(root.clone())
            .use_rustls_tls();
        let builder = if http1_only {
            builder.http1_only()
        } else {
            builder
        };
        builder.build().unwrap()
    };
    let url = tls.url(&format!("{FEED}?since=0&wait=0&heartbeat=1"));
    let ask = |c: reqwest::Client| {
        c.get(&url)
            .header("Connection", "upgrade")
            .header("Upgrade", PROTOCOL)
            .send()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let r = ask(client(true)).await.unwrap();
        assert_eq!(r.version(), reqwest::Version::HTTP_11);
        assert_eq!(r.status(), 101);
        let mut lines = tokio::io::BufReader::new(r.upgrade().await.unwrap());
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(5), lines.read_line(&mut line))
            .await
            .expect("a heartbeat within 5 s")
            .unwrap();
        let beat: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(beat, json!({"events": [], "next": 0}));

        let r = ask(client(false)).await.unwrap();
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        assert_eq!(r.status(), 200);
        let page: Value = r.json().await.unwrap();
        assert_eq!(page, json!({"events": [], "next": 0}));
    });
}

/// A child of a TLS parent (its CA given as `caCertificate`) follows the feed over a stream,
/// not by long-polls, and an image pushed at the parent while it follows reaches it.
#[test]
fn a_child_of_a_tls_parent_follows_a_stream() {
    let root = common::TlsRegistry::start();
    let work = tempfile::tempdir().unwrap();
    let host = format!("localhost:{}", root.reg.port);
    let one = Image::new("linux/amd64", &[random_bytes(71, 4 * KIB)]);
    skopeo_seed_as(work.path(), &host, "apps/tls", &[("v1", &one)], None);
    let child = Node::with_config(json!({"parent": {
        "endpoint": root.url(""),
        "caCertificate": root.cert_pem,
        "sync": {"repositories": ["apps/*"]}
    }}));
    wait_for_tag(
        &child,
        "apps/tls",
        "v1",
        &one.digest,
        Duration::from_secs(30),
    );
    assert!(
        wait_until(Duration::from_secs(30), || child
            .log_text()
            .contains(STREAMING)),
        "the child never followed a stream:\n{}",
        child.log_text()
    );
    assert!(
        !child.log_text().contains(FELL_BACK),
        "the child fell back to long-polls:\n{}",
        child.log_text()
    );

    let two = Image::new("linux/amd64", &[random_bytes(72, 4 * KIB)]);
    skopeo_seed_as(work.path(), &host, "apps/tls", &[("v2", &two)], None);
    wait_for_tag(
        &child,
        "apps/tls",
        "v2",
        &two.digest,
        Duration::from_secs(30),
    );
    assert!(!child.log_text().contains(FELL_BACK));
}
