//! 7. Credentials: a client token scoped to one repository pulls it from the lower node with
//!    `docker login` + `docker pull` and is denied another; the lower node's sync token cannot
//!    read outside its scope at the top; a second instance of the lower node is refused
//!    activation (and serves on, saying why) while the first stays active.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::common::credentials::basic;
use crate::common::images::Volume;
use crate::common::peers::{detail_codes, wait_until};
use crate::scenarios::field::{start_node, Field, LowerOptions, LOWER};
use crate::scenarios::report::Figures;
use crate::scenarios::steps::{
    docker_pull_as, expect_digest, push, seed_busybox, small_image, CONVERGE,
};

pub fn credentials(f: &mut Figures) {
    let one_password = format!("one-{}", crate::common::images::unique_name("pw"));
    let hash = connected_registry::auth::password::hash(&one_password).unwrap();
    let field = Field::start(LowerOptions {
        client_tokens: vec![json!({"name": "one", "passwordHash": hash,
            "actions": ["repositories/apps/one/content/read", "repositories/apps/one/metadata/read"]})],
        ..LowerOptions::default()
    });
    let logs = || field.logs();
    let (root, top, lower) = (&field.root.admin, &field.top.admin, &field.lower.node.admin);
    let work = tempfile::tempdir().unwrap();
    let digest = seed_busybox(work.path(), root, "apps/one", "v1");
    seed_busybox(work.path(), root, "apps/two", "v1");
    expect_digest(lower, "apps/one", "v1", &digest, CONVERGE, logs);
    expect_digest(lower, "apps/two", "v1", &digest, CONVERGE, logs);

    // The scoped client token: its repository, and not another.
    let host = &lower.host;
    let pulled = docker_pull_as(
        work.path(),
        host,
        "one",
        &one_password,
        &format!("{host}/apps/one:v1"),
    )
    .unwrap_or_else(|e| panic!("docker pull apps/one with its token: {e}"));
    assert_eq!(pulled, digest);
    let denied = docker_pull_as(
        work.path(),
        host,
        "one",
        &one_password,
        &format!("{host}/apps/two:v1"),
    )
    .expect_err("the token scoped to apps/one pulled apps/two");
    let lowered = denied.to_lowercase();
    assert!(
        lowered.contains("denied") || lowered.contains("unauthorized"),
        "docker names the refusal: {denied}"
    );
    f.note(
        "docker pull with a one-repository token",
        "its repository pulled, another denied",
    );

    // The lower node's sync token at the top: its scope (apps/*) and nothing else.
    let outside = small_image(7_000);
    push(top, "secret/plans", "v1", &outside);
    let as_lower =
        |path: &str| top.send_with(Method::GET, path, &basic(LOWER, &field.lower.sync_password));
    let inside = as_lower("/v2/apps/one/manifests/v1");
    assert_eq!(
        inside.status,
        200,
        "the sync token reads its scope: {}",
        inside.text()
    );
    for path in [
        "/v2/secret/plans/manifests/v1",
        "/v2/secret/plans/tags/list",
    ] {
        let r = as_lower(path);
        assert!(
            r.status == 401 || r.status == 403,
            "the lower's sync token read {path} at the top: {} {}",
            r.status,
            r.text()
        );
    }
    let blob = &outside.blobs[0].digest;
    let r = as_lower(&format!("/v2/secret/plans/blobs/{blob}"));
    assert!(
        r.status == 401 || r.status == 403,
        "blob outside the scope: {}",
        r.status
    );
    f.note(
        "lower's sync token at the top outside apps/*",
        "refused (manifest, tags, blob)",
    );

    // A second instance of the lower node: refused, serving, saying why.
    let data = Volume::create("field-lower2");
    let second = start_node(
        json!({
            "name": LOWER,
            "parent": {
                "endpoint": "http://top:8080",
                "syncToken": {"name": LOWER, "password": field.lower.sync_password},
                "sync": {"repositories": ["apps/*"]}
            }
        }),
        &field.layers.it,
        "lower2",
        &data,
        |_| {},
    );
    let mut status = json!(null);
    let refused = wait_until(Duration::from_secs(60), || {
        status = second.admin.status();
        status["sync"]["state"] == "NotActivated"
            && detail_codes(&status)
                .iter()
                .any(|c| c == "ALREADY_ACTIVATED")
    });
    assert!(
        refused,
        "the second instance was not refused: {status:#}\n{}",
        second.logs()
    );
    assert_eq!(status["activation"]["status"], "Inactive");
    assert_eq!(
        second.admin.get("/v2/").status,
        200,
        "a refused instance still serves"
    );
    assert_eq!(
        lower.status()["activation"]["status"],
        "Active",
        "the first stays active"
    );
    f.note(
        "second instance of the lower node",
        "refused: ALREADY_ACTIVATED",
    );
    drop(second);
}
