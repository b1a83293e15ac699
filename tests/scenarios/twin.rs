//! 6. Twin-driven change: a desired-properties patch swaps one of the lower node's
//!    repositories for another. The new one syncs, the old one is pruned, and the reported
//!    properties and the telemetry say so; a malformed patch is refused whole, reported, and the
//!    node keeps working.

use std::time::Instant;

use serde_json::{json, Value};

use crate::scenarios::field::{Field, LowerOptions};
use crate::scenarios::report::Figures;
use crate::scenarios::steps::{expect_digest, push, small_image, wait_digest, CONVERGE};

fn is_event(kind: &'static str) -> impl Fn(&Value) -> bool {
    move |m: &Value| m["properties"]["eventType"] == kind
}

pub fn twin_driven_change(f: &mut Figures) {
    let field = Field::start(LowerOptions {
        sync: json!({"repositories": ["apps/kept", "apps/old"]}),
        ..LowerOptions::default()
    });
    let logs = || field.logs();
    let (root, lower) = (&field.root.admin, &field.lower.node.admin);
    let standin = &field.lower.standin;
    let images: Vec<_> = (0..3).map(|i| small_image(6_000 + i)).collect();
    for (repo, image) in ["apps/kept", "apps/old", "apps/new"].iter().zip(&images) {
        push(root, repo, "v1", image);
    }
    expect_digest(lower, "apps/kept", "v1", &images[0].digest, CONVERGE, logs);
    expect_digest(lower, "apps/old", "v1", &images[1].digest, CONVERGE, logs);
    let version_before = standin.twin()["reported"]["config"]["version"]
        .as_u64()
        .unwrap_or(0);
    standin.clear_telemetry();

    standin.patch_desired(json!({"parent": {"sync": {"repositories": ["apps/kept", "apps/new"]}}}));
    let patched = Instant::now();
    expect_digest(lower, "apps/new", "v1", &images[2].digest, CONVERGE, logs);
    f.seconds("patch → new repository synced", patched.elapsed());
    let pruned =
        crate::common::peers::wait_until(CONVERGE, || lower.tag_digest("apps/old", "v1").is_none());
    assert!(
        pruned,
        "apps/old is still served after it left the selection\n{}",
        logs()
    );
    f.seconds("patch → old repository pruned", patched.elapsed());
    assert_eq!(
        lower.tag_digest("apps/kept", "v1"),
        Some(images[0].digest.clone())
    );
    let reported = standin.wait_for_reported(CONVERGE, |r| {
        r["config"]["version"].as_u64() > Some(version_before) && r["sync"]["state"] == "Succeeded"
    });
    assert_eq!(reported["config"]["source"], "twin", "{reported:#}");
    f.note(
        "reported config version",
        reported["config"]["version"].clone(),
    );
    f.note("reported sync trigger", reported["sync"]["trigger"].clone());
    let applied = standin.wait_for_telemetry(CONVERGE, is_event("configApplied"));
    f.note("telemetry", applied["properties"]["eventType"].clone());

    // A malformed patch: refused whole and reported; the node keeps serving and syncing.
    standin.patch_desired(json!({"parent": {"sync": {"concurrency": "many"}}}));
    let refused = standin.wait_for_reported(CONVERGE, |r| r["config"]["error"].is_string());
    let error = refused["config"]["error"].as_str().unwrap().to_owned();
    assert!(
        error.contains("concurrency"),
        "the error names the field: {error}"
    );
    standin.wait_for_telemetry(CONVERGE, is_event("configRejected"));
    f.note(
        "malformed patch refused",
        error.chars().take(100).collect::<String>(),
    );
    let later = small_image(6_100);
    push(root, "apps/new", "v2", &later);
    assert!(
        wait_digest(lower, "apps/new", "v2", &later.digest, CONVERGE).is_some(),
        "the node stopped syncing after a refused patch\n{}",
        logs()
    );
    assert_eq!(
        lower.tag_digest("apps/kept", "v1"),
        Some(images[0].digest.clone())
    );
    standin.patch_desired(json!({"parent": {"sync": {"concurrency": null}}}));
    standin.wait_for_reported(CONVERGE, |r| r["config"]["error"].is_null());
    standin.assert_no_violations();
}
