//! Issue 7, defect 12 ("smaller"), against the hostile parent (tests/common/hostile_parent.rs)
//! with the real node as its child, one case per test: what the child lists, which digests it
//! answers to, and what `statusDetails` says (once, naming the right thing). The per-defect
//! tests of the larger defects are in tests/hostile_parent.rs.

use crate::common;

use common::hostile_child::*;
use common::hostile_parent::{Behavior, HostileParent};
use common::peers::*;
use reqwest::Method;
use serde_json::{json, Value};
use sha2::Digest as _;

fn catalog(node: &common::Registry, query: &str) -> Http {
    let r = get(&node.url(""), &format!("/v2/_catalog{query}"));
    assert_eq!(r.status, 200, "{}", r.text());
    r
}

/// A repository whose manifest failed to sync after its config blob was linked (the layer's
/// descriptor gives the wrong size) was listed, empty, in `_catalog`. Now the catalog (paged or
/// not) lists only repositories that hold a manifest, and lists this one once its image syncs.
#[test]
fn a_repository_whose_manifest_failed_is_not_listed() {
    let parent = HostileParent::start();
    let real = image(1201, 10_000);
    parent.add_untagged("abad", &real);
    let mut doc: Value = serde_json::from_slice(&real.bytes).unwrap();
    let size = doc["layers"][0]["size"].as_i64().unwrap();
    doc["layers"][0]["size"] = json!(size + 3);
    let lie = parent.add_manifest(OCI_MANIFEST, serde_json::to_vec_pretty(&doc).unwrap());
    parent.tag("abad", "v1", &lie);
    let good = image(1202, 3000);
    parent.add_image("good", "v1", &good);

    let child = child_of(&parent, &["abad", "good"]);
    wait_serves(&child, "good", "v1", &good, MINUTE);
    wait_detail(&child, "SizeMismatch", "abad", MINUTE);
    not_served(&child, "abad", "v1");
    // The case at hand: the config blob is linked in the repository, the manifest is not.
    let config = &real.blobs[0];
    let r = get(&child.url(""), &format!("/v2/abad/blobs/{}", config.digest));
    assert_eq!(r.status, 200, "the config blob is linked: {}", r.text());
    assert!(r.body == config.bytes);

    assert_eq!(catalog(&child, "").json()["repositories"], json!(["good"]));
    let page = catalog(&child, "?n=1");
    assert_eq!(page.json()["repositories"], json!(["good"]));
    assert_eq!(page.header("link"), None, "nothing listable follows");

    parent.tag("abad", "v1", &real.digest);
    wait_serves(&child, "abad", "v1", &real, MINUTE);
    assert_eq!(
        catalog(&child, "").json()["repositories"],
        json!(["abad", "good"])
    );
}

fn sha512_of(bytes: &[u8]) -> String {
    format!("sha512:{}", hex::encode(sha2::Sha512::digest(bytes)))
}

/// A parent announcing `Docker-Content-Digest: sha512:…` had its manifest stored under sha256
/// only: the parent's digest answered 404 at the child, and the manifest was fetched again on
/// every poll. Now the child answers `GET`/`HEAD` by the sha512 (verified over the bytes; a
/// lying one is refused) and later passes fetch nothing.
#[test]
fn a_parents_sha512_digest_answers_at_the_child() {
    let parent = HostileParent::start();
    let app = image(1211, 3000);
    parent.add_image("app", "v1", &app);
    let sha512 = sha512_of(&app.bytes);
    parent.name_manifest(&app.digest, &sha512);
    // Announces (and serves its manifest under) a sha512 that is not its bytes'.
    let liar = image(1212, 3000);
    parent.add_image("liar", "v1", &liar);
    let bogus = format!("sha512:{}", "0".repeat(128));
    parent.name_manifest(&liar.digest, &bogus);

    let child = child_of(&parent, &["app", "liar"]);
    wait_serves(&child, "app", "v1", &app, MINUTE);
    let base = child.url("");
    for method in [Method::GET, Method::HEAD] {
        let path = format!("/v2/app/manifests/{sha512}");
        let r = request(method.clone(), &base, &path, &[], None);
        assert_eq!(r.status, 200, "{method} {path}: {}", r.text());
        assert_eq!(r.header("docker-content-digest"), Some(sha512.as_str()));
        assert_eq!(r.header("content-type"), Some(OCI_MANIFEST));
        if method == Method::GET {
            assert!(r.body == app.bytes, "the exact bytes");
        } else {
            let len = app.bytes.len().to_string();
            assert_eq!(r.header("content-length"), Some(len.as_str()));
        }
    }
    wait_detail(&child, "DigestMismatch", "liar", MINUTE);
    not_served(&child, "liar", "v1");
    assert_eq!(
        get(&base, &format!("/v2/liar/manifests/{bogus}")).status,
        404
    );

    // Later passes compare the announced sha512 with what the child recorded: no GET again.
    let fetched = parent.count("GET /v2/app/manifests/");
    let listed = parent.count("/v2/app/tags/list");
    assert!(wait_until(2 * MINUTE, || parent.count("/v2/app/tags/list")
        >= listed + 2));
    assert_eq!(
        parent.count("GET /v2/app/manifests/"),
        fetched,
        "{:#?}",
        parent.requests()
    );
}

/// A failure that ended a pass appeared twice in `statusDetails` (recorded by the pass and
/// again by the loop that ran it). Now it is recorded once, and cleared by the next pass that
/// succeeds.
#[test]
fn a_pass_ending_failure_is_reported_once() {
    let parent = HostileParent::start();
    let app = image(1221, 2000);
    parent.add_image("app", "v1", &app);
    // Every attempt of the first pass's catalog request fails, which ends that pass.
    parent.on_times("/v2/_catalog", Behavior::Status(500), 4);

    let child = child_of(&parent, &["*"]);
    wait_serves(&child, "app", "v1", &app, MINUTE);
    assert!(wait_until(MINUTE, || sync_state(&child).0 == "Succeeded"));
    // Every recording is logged ("sync failed"); the status keeps it only until a pass
    // succeeds, so the log is where "once" shows.
    let log = child.log_text();
    let recorded: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("sync failed") && l.contains("/v2/_catalog"))
        .collect();
    assert_eq!(recorded.len(), 1, "{recorded:#?}");
    assert!(recorded[0].contains("ParentError"), "{recorded:#?}");
    // And the pass that succeeded after it refreshed the sync's details.
    let s = status(&child.url(""));
    assert!(
        !s["statusDetails"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["description"].as_str().unwrap().contains("/v2/_catalog")),
        "{s}"
    );
}

/// Invalid repository names in the parent's catalog were skipped silently. Now each is
/// reported in `statusDetails`, nothing is asked about it, and the rest syncs.
#[test]
fn invalid_names_in_the_catalog_are_reported() {
    let parent = HostileParent::start();
    let app = image(1231, 2000);
    parent.add_image("app", "v1", &app);
    parent.add_untagged("Bad_Name", &image(1232, 100));

    let child = child_of(&parent, &["*"]);
    wait_serves(&child, "app", "v1", &app, MINUTE);
    let detail = wait_detail(&child, "InvalidName", "\"Bad_Name\"", MINUTE);
    assert_eq!(detail["type"], "Sync");
    assert!(wait_until(MINUTE, || sync_state(&child).0 == "Succeeded"));
    assert_eq!(catalog(&child, "").json()["repositories"], json!(["app"]));
    assert_eq!(parent.count("Bad_Name"), 0, "{:#?}", parent.requests());
}

/// A blob redirected to another scheme, to another host that redirects in a loop, or to a host
/// that refuses connections was reported with the parent's path (`GET /v2/<repo>/blobs/…`) instead of where it failed (and
/// with the target's query, which may carry a signature). Now each is reported with the
/// target's URL and no query, and only its tag fails.
#[test]
fn redirects_elsewhere_are_reported_with_their_target() {
    let parent = HostileParent::start();
    let other = HostileParent::start();
    let looping = format!("{}/storage/loop", other.endpoint());
    let closed = common::free_port();
    other.on("/storage/loop", Behavior::Redirect(looping.clone()));
    let cases = [
        (
            "ascheme",
            "ftp://storage.invalid/bucket/layer?sig=s3cret".to_owned(),
            "GET ftp://storage.invalid/bucket/layer".to_owned(),
            "ProtocolError",
        ),
        (
            "bloop",
            format!("{looping}?sig=s3cret"),
            format!("GET {looping}"),
            "ProtocolError",
        ),
        (
            // A storage host that refuses connections: the transfer fails (not the parent).
            "crefused",
            format!("http://127.0.0.1:{closed}/bucket/layer?sig=s3cret"),
            format!("GET http://127.0.0.1:{closed}/bucket/layer"),
            "TransferFailed",
        ),
    ];
    for (i, (repo, to, _, _)) in cases.iter().enumerate() {
        let img = image(1241 + i as u64, 2000);
        parent.add_image(repo, "v1", &img);
        let layer = &img.blobs.last().unwrap().digest;
        parent.on(
            &format!("/v2/{repo}/blobs/{layer}"),
            Behavior::Redirect(to.clone()),
        );
    }
    let good = image(1249, 2000);
    parent.add_image("good", "v1", &good);

    let child = child_of(&parent, &["ascheme", "bloop", "crefused", "good"]);
    wait_serves(&child, "good", "v1", &good, 2 * MINUTE);
    for (repo, _, target, code) in &cases {
        let detail = wait_detail(&child, code, target, 2 * MINUTE);
        let text = detail["description"].as_str().unwrap();
        assert!(!text.contains(&format!("/v2/{repo}/")), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
        not_served(&child, repo, "v1");
    }
    let s = status(&child.url(""));
    assert!(
        !detail_codes(&s).iter().any(|c| c == "ParentUnreachable"),
        "the parent answered: {s}"
    );
}
