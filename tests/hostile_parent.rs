//! Sync against a parent that misbehaves on purpose (issue 7): the real node as the child of a
//! hostile parent (tests/common/hostile_parent.rs), one defect per test. After each case the
//! child is alive, still serves what it had with every digest verified, reports the truth in
//! `GET /acr/connected-registry/v1/status`, and recovers once the parent behaves. Memory and
//! disk bounds come from the child's own figures (VmHWM, the data directory's size); the only
//! timing is generous "within N s" waits.

use crate::common;

use std::time::Duration;

use common::hostile_child::*;
use common::hostile_parent::{nested_indexes, Behavior, Feed, HostileParent};
use common::peers::*;
use serde_json::{json, Value};

/// Defect 1: a chain of 5,000 single-child indexes crashed the node (stack overflow) and again
/// after every restart. Now the tag is refused past the depth limit, shallower nesting still
/// syncs, the node stays up across a restart, and the tag syncs once the parent fixes it.
#[test]
fn nested_indexes_are_refused_without_a_crash_loop() {
    let parent = HostileParent::start();
    let good = image(101, 3000);
    parent.add_image("good", "v1", &good);
    let leaf = image(102, 2000);
    let deep = nested_indexes(&parent, "deep", &leaf, 5000);
    parent.tag("deep", "v1", &deep);
    let shallow = nested_indexes(&parent, "deep", &leaf, 3);
    parent.tag("deep", "shallow", &shallow);

    let mut child = child_of(&parent, &["deep", "good"]);
    wait_serves(&child, "good", "v1", &good, MINUTE);
    wait_detail(&child, "Refused", "deep:v1", MINUTE);
    // 3 levels of index are within the limit.
    wait_for_tag(&child, "deep", "shallow", &shallow, MINUTE);
    assert_serves(&child.url(""), "deep", &leaf.digest, &leaf, None);
    not_served(&child, "deep", "v1");
    let (state, connection) = sync_state(&child);
    assert_eq!(state, "Failed");
    assert_ne!(connection, "Offline");

    // No crash loop: restart, let it try again, still alive and serving.
    child.terminate();
    child.restart();
    wait_detail(&child, "Refused", "deep:v1", MINUTE);
    wait_serves(&child, "good", "v1", &good, MINUTE);
    assert!(!child.log_text().contains("overflowed its stack"));

    // The parent behaves: the tag syncs.
    parent.tag("deep", "v1", &leaf.digest);
    wait_serves(&child, "deep", "v1", &leaf, MINUTE);
}

/// A chain of `depth` single-child indexes over `leaf`, each padded with an annotation to about
/// `pad` bytes, all served in `repo`; returns their digests, top first.
fn padded_nested_indexes(
    parent: &HostileParent,
    repo: &str,
    leaf: &Image,
    depth: usize,
    pad: usize,
) -> Vec<String> {
    parent.add_untagged(repo, leaf);
    let mut child = json!({"mediaType": leaf.media_type, "digest": leaf.digest,
                           "size": leaf.bytes.len()});
    let mut digests = Vec::new();
    for level in 0..depth {
        let doc = json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [child],
            "annotations": {"pad": format!("{level}{}", "x".repeat(pad))},
        });
        let bytes = serde_json::to_vec(&doc).unwrap();
        let len = bytes.len();
        let digest = parent.add_manifest(OCI_INDEX, bytes);
        child = json!({"mediaType": OCI_INDEX, "digest": digest, "size": len});
        digests.push(digest);
    }
    digests.reverse();
    digests
}

/// Defect 1, memory: every level of a chain of ~4 MB indexes was held while walking down
/// (200 levels took 1.5 GB). Now the walk holds one large level at a time and stops at the
/// depth limit: 40 levels (160 MB at the parent) leave the child's peak RSS small, nothing
/// below the limit is fetched, and the tag is refused.
#[test]
fn large_nested_indexes_are_walked_in_bounded_memory() {
    let parent = HostileParent::start();
    let leaf = image(111, 2000);
    let chain = padded_nested_indexes(&parent, "big", &leaf, 40, 4_000_000);
    parent.tag("big", "v1", &chain[0]);
    let good = image(112, 2000);
    parent.add_image("good", "v1", &good);

    let child = child_of(&parent, &["big", "good"]);
    wait_detail(&child, "Refused", "big:v1", 2 * MINUTE);
    wait_serves(&child, "good", "v1", &good, MINUTE);
    // A second pass walks the chain again, and refuses it again.
    assert!(
        wait_until(2 * MINUTE, || parent.count("/v2/big/manifests/v1") >= 2),
        "{}",
        status_text(&child)
    );
    wait_detail(&child, "Refused", "big:v1", MINUTE);
    not_served(&child, "big", "v1");
    let peak = child.peak_rss_bytes();
    assert!(peak < 200 << 20, "peak RSS {peak}");
    // The root is fetched on every pass (by its tag: it is never held here).
    assert!(parent.count("/v2/big/manifests/v1") >= 2);
    assert_eq!(parent.count(&chain[20]), 0, "fetched below the depth limit");
    assert_eq!(parent.count(&leaf.digest), 0);
}

/// Defect 3: a blob whose descriptor says 5 bytes while the parent streams forever filled
/// `partial/` without end. Now the download stops at the descriptor's size, the bytes are
/// dropped, the data directory stays small, and the blob syncs once the parent behaves.
#[test]
fn endless_blob_stops_at_the_descriptor_size() {
    let parent = HostileParent::start();
    let tiny = Image::new("linux/amd64", &[b"12345".to_vec()]);
    parent.add_image("tiny", "v1", &tiny);
    let layer = &tiny.blobs.last().unwrap().digest;
    parent.on(&format!("/blobs/{layer}"), Behavior::Forever);
    let good = image(201, 4000);
    parent.add_image("good", "v1", &good);

    let child = child_of(&parent, &["good", "tiny"]);
    wait_serves(&child, "good", "v1", &good, MINUTE);
    wait_detail(&child, "SizeMismatch", "tiny", MINUTE);
    not_served(&child, "tiny", "v1");
    // Let it try a few more passes: the data directory stays small.
    std::thread::sleep(Duration::from_secs(8));
    let data = dir_size(&child.data_dir);
    assert!(data < 64 << 20, "data directory holds {data} bytes");
    let partial = dir_size(&child.data_path("partial"));
    assert!(partial <= 5, "partial/ holds {partial} bytes");
    assert!(child.peak_rss_bytes() < 256 << 20);

    parent.behave();
    wait_serves(&child, "tiny", "v1", &tiny, MINUTE);
}

/// Defect 4: a blob whose digest is right but whose length differs from the manifest's
/// descriptor was published as `Succeeded`. Now the tag stays invisible, the status says
/// `SizeMismatch`, and a corrected manifest syncs.
#[test]
fn blob_size_must_match_its_descriptor() {
    let parent = HostileParent::start();
    let real = image(301, 10_000);
    parent.add_untagged("lie", &real);
    let mut tags = Vec::new();
    for (tag, delta) in [("longer", 3i64), ("shorter", -2i64)] {
        let mut doc: Value = serde_json::from_slice(&real.bytes).unwrap();
        let size = doc["layers"][0]["size"].as_i64().unwrap();
        doc["layers"][0]["size"] = json!(size + delta);
        let bytes = serde_json::to_vec_pretty(&doc).unwrap();
        let digest = parent.add_manifest(OCI_MANIFEST, bytes);
        parent.tag("lie", tag, &digest);
        tags.push(tag);
    }
    let good = image(302, 3000);
    parent.add_image("good", "v1", &good);

    let child = child_of(&parent, &["good", "lie"]);
    wait_serves(&child, "good", "v1", &good, MINUTE);
    wait_detail(&child, "SizeMismatch", "", MINUTE);
    let base = child.url("");
    assert!(wait_until(MINUTE, || {
        let s = status(&base);
        s["sync"]["state"] == "Failed"
            && s["statusDetails"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["code"] == "SizeMismatch")
                .count()
                >= 2
    }));
    for tag in &tags {
        not_served(&child, "lie", tag);
    }
    let partial = dir_size(&child.data_path("partial"));
    assert_eq!(partial, 0, "mismatched bytes are dropped");

    // The parent fixes its manifests.
    for tag in &tags {
        parent.tag("lie", tag, &real.digest);
    }
    for tag in &tags {
        wait_serves(&child, "lie", tag, &real, MINUTE);
    }
}

/// Defect 5: a manifest or tags list that drips one byte a second held the pass forever.
/// Now each such request ends, the rest of the pass goes on, and the status says so.
#[test]
fn dripping_answers_do_not_hold_the_pass() {
    let parent = HostileParent::start();
    let slow = image(401, 3000);
    parent.add_image("aslow", "v1", &slow);
    let listing = image(402, 3000);
    parent.add_image("bslowlist", "v1", &listing);
    let good = image(403, 3000);
    parent.add_image("cgood", "v1", &good);
    parent.on(
        &format!("/v2/aslow/manifests/{}", slow.digest),
        Behavior::Drip(1),
    );
    // A tag not held yet is fetched by tag (no HEAD first), a known one by digest.
    parent.on("/v2/aslow/manifests/v1", Behavior::Drip(1));
    parent.on("/v2/bslowlist/tags/list", Behavior::Drip(1));

    let child = child_of(&parent, &["aslow", "bslowlist", "cgood"]);
    wait_serves(&child, "cgood", "v1", &good, 2 * MINUTE);
    wait_detail(&child, "TransferFailed", "aslow", MINUTE);
    wait_detail(&child, "TransferFailed", "bslowlist", MINUTE);
    not_served(&child, "aslow", "v1");
    assert!(wait_until(MINUTE, || sync_state(&child).0 == "Failed"));

    parent.behave();
    wait_serves(&child, "aslow", "v1", &slow, 2 * MINUTE);
    wait_serves(&child, "bslowlist", "v1", &listing, 2 * MINUTE);
    assert!(wait_until(2 * MINUTE, || sync_state(&child).0 == "Succeeded"));
}

/// Defect 2: `tags/list` pages whose `Link` always points at a new page grew memory without
/// end. Now the listing is refused past its caps, the rest syncs, and memory stays bounded.
#[test]
fn endless_listing_pages_are_capped() {
    let parent = HostileParent::start();
    let looped = image(501, 2000);
    parent.add_image("loop", "v1", &looped);
    parent.on("/v2/loop/tags/list", Behavior::EndlessPages);
    let good = image(502, 2000);
    parent.add_image("zgood", "v1", &good);

    let child = child_of(&parent, &["loop", "zgood"]);
    wait_detail(&child, "Refused", "tags/list", 2 * MINUTE);
    wait_serves(&child, "zgood", "v1", &good, MINUTE);
    let peak = child.peak_rss_bytes();
    assert!(peak < 256 << 20, "peak RSS {peak}");
    not_served(&child, "loop", "v1");

    parent.behave();
    wait_serves(&child, "loop", "v1", &looped, MINUTE);
}

/// Defect 6: a feed that answers at once with nothing, or always 410, made the child loop
/// (30,000 requests or 4,000 passes in 10 s). Now both are paced.
#[test]
fn hot_feed_answers_are_paced() {
    let parent = HostileParent::start();
    let app = image(601, 2000);
    parent.add_image("app", "v1", &app);
    parent.set_feed(Feed::EmptyAtOnce);
    let child = child_of(&parent, &["app"]);
    wait_serves(&child, "app", "v1", &app, MINUTE);
    let feed = "/acr/connected-registry/v1/changes";
    let before = parent.count(feed);
    std::thread::sleep(Duration::from_secs(10));
    let empty_polls = parent.count(feed) - before;
    assert!(empty_polls <= 60, "{empty_polls} feed requests in 10 s");

    parent.set_feed(Feed::AlwaysExpired);
    std::thread::sleep(Duration::from_secs(2));
    let before = parent.count("/v2/app/tags/list");
    std::thread::sleep(Duration::from_secs(10));
    let passes = parent.count("/v2/app/tags/list") - before;
    assert!(passes <= 4, "{passes} full passes in 10 s");
    assert_serves(&child.url(""), "app", "v1", &app, None);

    // Behaves again (no feed: polling) and a new tag arrives.
    parent.behave();
    let v2 = image(602, 2000);
    parent.add_image("app", "v2", &v2);
    wait_serves(&child, "app", "v2", &v2, 2 * MINUTE);
}

/// Defect 7: a proxy answering `/acr/*` with 403 or 502 while `/v2` works left the child
/// unsynced forever. Now it polls, and says so in the status.
#[test]
fn refused_feed_probe_falls_back_to_polling() {
    for code in [403u16, 502] {
        let parent = HostileParent::start();
        let app = image(700 + u64::from(code), 2000);
        parent.add_image("app", "v1", &app);
        parent.set_feed(Feed::Status(code));
        let child = child_of(&parent, &["app"]);
        wait_serves(&child, "app", "v1", &app, MINUTE);
        wait_detail(&child, "PollingFallback", "polling", MINUTE);
        let v2 = image(710 + u64::from(code), 2000);
        parent.add_image("app", "v2", &v2);
        wait_serves(&child, "app", "v2", &v2, MINUTE);
        assert_ne!(sync_state(&child).1, "Offline");
    }
}

/// Defect 8: one blob answering 500 for good ended every pass as `ParentUnreachable`
/// (`Offline`), so nothing else synced. Now only its tag fails.
#[test]
fn one_failing_blob_fails_only_its_tag() {
    let parent = HostileParent::start();
    let bad = image(801, 3000);
    parent.add_image("abad", "v1", &bad);
    parent.on(
        &format!("/blobs/{}", bad.blobs.last().unwrap().digest),
        Behavior::Status(500),
    );
    let good = image(802, 3000);
    parent.add_image("bgood", "v1", &good);

    let child = child_of(&parent, &["abad", "bgood"]);
    wait_serves(&child, "bgood", "v1", &good, 2 * MINUTE);
    wait_detail(&child, "ParentError", "abad", MINUTE);
    not_served(&child, "abad", "v1");
    assert!(wait_until(MINUTE, || sync_state(&child).0 == "Failed"));
    let s = status(&child.url(""));
    assert_ne!(s["connectionState"], "Offline", "{s}");
    assert!(
        !detail_codes(&s).iter().any(|c| c == "ParentUnreachable"),
        "{s}"
    );

    parent.behave();
    wait_serves(&child, "abad", "v1", &bad, 2 * MINUTE);
    assert!(wait_until(MINUTE, || sync_state(&child).0 == "Succeeded"));
    // A pass that succeeded refreshes the sync's details: the failure is no longer listed.
    let s = status(&child.url(""));
    assert!(
        !detail_codes(&s).iter().any(|c| c == "ParentError"),
        "a failure no pass meets any more is still reported: {s}"
    );
}

/// Defect 10: one 404 from `tags/list` for a repository emptied it here. Now tags are kept
/// until the 404 is seen on consecutive passes.
#[test]
fn one_404_listing_does_not_empty_the_mirror() {
    let parent = HostileParent::start();
    let v1 = image(1001, 2000);
    let v2 = image(1002, 2000);
    parent.add_image("app", "v1", &v1);
    parent.add_image("app", "v2", &v2);
    let child = child_of(&parent, &["app"]);
    wait_serves(&child, "app", "v1", &v1, MINUTE);
    wait_serves(&child, "app", "v2", &v2, MINUTE);

    parent.on_times("/v2/app/tags/list", Behavior::Status(404), 1);
    let listed = parent.count("/v2/app/tags/list");
    wait_detail(&child, "RepositoryMissing", "app", MINUTE);
    // Two more passes after the 404.
    assert!(wait_until(MINUTE, || parent.count("/v2/app/tags/list") >= listed + 3));
    assert_serves(&child.url(""), "app", "v1", &v1, None);
    assert_serves(&child.url(""), "app", "v2", &v2, None);
}

/// Defect 11: one connection cut mid-blob failed `sync --once` (exit 1). Now each cut is
/// resumed within the pass with `Range`.
#[test]
fn cut_transfers_resume_within_the_pass() {
    let parent = HostileParent::start();
    let big = image(1101, 3 << 20);
    parent.add_image("big", "v1", &big);
    let layer = big.blobs.last().unwrap().digest.clone();
    parent.on_times(&format!("/blobs/{layer}"), Behavior::CutAfter(600_000), 8);

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("child.json");
    std::fs::write(
        &config,
        serde_json::to_vec(&child_config(
            &parent.endpoint(),
            json!({"repositories": ["big"]}),
        ))
        .unwrap(),
    )
    .unwrap();
    let data = dir.path().join("data");
    let out = run_cli(
        &[
            "sync",
            "--once",
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ],
        Duration::from_secs(180),
    );
    assert!(
        out.status.success(),
        "sync --once failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let ranged = parent.count(&format!("/blobs/{layer}"));
    assert!(ranged >= 6, "{ranged} blob requests");

    // The whole blob is stored, byte for byte.
    let hex = layer.trim_start_matches("sha256:");
    let stored = std::fs::read(data.join("blobs/sha256").join(&hex[..2]).join(hex)).unwrap();
    assert!(
        stored == big.blobs.last().unwrap().bytes,
        "blob bytes differ"
    );
}

/// Defect 9: a signature added at the parent after the image synced never arrived, and a
/// referrers request that failed once was never retried. Now referrers are checked every pass.
#[test]
fn referrers_are_checked_every_pass() {
    let parent = HostileParent::start();
    parent.enable_referrers();
    let app = image(901, 2000);
    parent.add_image("app", "v1", &app);
    let child = child_of(&parent, &["app"]);
    wait_serves(&child, "app", "v1", &app, MINUTE);

    // A signature arrives at the parent later; its first referrers answers fail.
    let sig = Image::artifact(&app, "application/vnd.example.signature", b"signed");
    parent.on_times(
        &format!("/referrers/{}", app.digest),
        Behavior::Status(500),
        4,
    );
    parent.add_referrer("app", &app.digest, &sig);
    wait_detail(&child, "ParentError", "referrers", MINUTE);
    let base = child.url("");
    // The signature arrives.
    wait_for_tag(&child, "app", &sig.digest, &sig.digest, MINUTE);
    assert_serves(&base, "app", &sig.digest, &sig, None);
    assert!(wait_until(MINUTE, || sync_state(&child).0 == "Succeeded"));
}
