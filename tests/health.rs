//! The probes against the real binary: `/healthz` and `/readyz` answer without credentials on a
//! node that asks every other caller for a token (Kubernetes probes carry none), refuse other
//! methods, and `/readyz` turns 503 naming the problem when the store's blob directory is gone,
//! then ready again once it is back.

use crate::common;

use std::time::Duration;

use common::credentials::{create_token, send_as, SecuredNode};
use common::peers::{poll_every, request};
use reqwest::Method;
use serde_json::json;

fn secured_node() -> SecuredNode {
    SecuredNode::start(json!({"name": "probednode"}), |config| {
        create_token(config, "reader", &["--repository", "*", "content/read"]);
    })
}

#[test]
fn probes_answer_without_credentials_where_everything_else_needs_them() {
    let node = secured_node();
    let base = node.base();
    assert_eq!(send_as(Method::GET, &base, "/v2/", None, None).status, 401);

    let health = send_as(Method::GET, &base, "/healthz", None, None);
    assert_eq!(health.status, 200);
    assert_eq!(health.text(), "ok");
    assert_eq!(
        health.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(
        send_as(Method::HEAD, &base, "/healthz", None, None).status,
        200
    );

    let ready = send_as(Method::GET, &base, "/readyz", None, None);
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert_eq!(
        ready.json(),
        json!({"ready": true, "checks": {"store": "ok", "dataDirectory": "ok", "configuration": "ok"}})
    );

    for path in ["/healthz", "/readyz", "/metrics"] {
        let r = send_as(Method::POST, &base, path, None, Some(b"x".to_vec()));
        assert_eq!(r.status, 405, "POST {path}: {}", r.text());
    }
    // Probes are logged per request at debug (the harness runs at debug), never above.
    let log = node.reg.log_text();
    let probe_lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("/healthz") || l.contains("/readyz"))
        .collect();
    assert!(!probe_lines.is_empty(), "{log}");
    assert!(
        probe_lines.iter().all(|l| l.contains("DEBUG")),
        "{probe_lines:#?}"
    );
    node.reg.assert_no_panic();
}

#[test]
fn readyz_is_503_while_the_blob_directory_is_gone() {
    let node = secured_node();
    let base = node.base();
    let blobs = node.reg.data_path("blobs");
    let away = node.reg.data_path("blobs.away");
    assert_eq!(
        request(Method::GET, &base, "/readyz", &[], None).status,
        200
    );

    std::fs::rename(&blobs, &away).unwrap();
    let r = request(Method::GET, &base, "/readyz", &[], None);
    // Alive all along: liveness does not touch the store.
    let alive = request(Method::GET, &base, "/healthz", &[], None).status;
    let restored = std::fs::rename(&away, &blobs);
    assert_eq!(alive, 200);
    assert_eq!(r.status, 503, "{}", r.text());
    let body = r.json();
    assert_eq!(body["ready"], false);
    assert_eq!(body["checks"]["store"], "ok");
    let problem = body["checks"]["dataDirectory"].as_str().unwrap();
    assert!(
        problem.contains("blob directory") && problem.contains("not reachable"),
        "{problem}"
    );

    restored.unwrap();
    assert!(poll_every(
        Duration::from_millis(100),
        Duration::from_secs(5),
        || request(Method::GET, &base, "/readyz", &[], None).status == 200
    ));
    node.reg.assert_no_panic();
}
