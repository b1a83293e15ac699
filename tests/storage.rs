//! Storage limits against the real binary: synced tags evicted least recently pulled first and
//! synced again once they fit, a push that does not fit refused with 507 and accepted once the
//! limit is raised live, and a real full disk (a small tmpfs) handled the same way: nothing
//! corrupt, serving goes on, recovery is automatic once space exists.

use crate::common;

use std::time::Duration;

use common::peers::{self, get, head, push_blob, push_image, Blob, Image, Node};
use common::support::{assert_blob_files_intact, Tmpfs};
use serde_json::{json, Value};

const MIB: usize = 1024 * 1024;
const LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

fn image(seed: u64, len: usize) -> Image {
    Image::new("linux/amd64", &[peers::random_bytes(seed, len)])
}

fn serves_tag(base: &str, repo: &str, tag: &str) -> u16 {
    get(base, &format!("/v2/{repo}/manifests/{tag}")).status
}

fn wait_for_detail(base: &str, code: &str) -> Value {
    let mut last = Value::Null;
    let found = peers::wait_until(Duration::from_secs(60), || {
        last = peers::status(base);
        peers::detail_codes(&last).iter().any(|c| c == code)
    });
    assert!(found, "no {code} in statusDetails: {last:#}");
    last
}

#[test]
fn synced_tags_are_evicted_least_recently_pulled_first_and_come_back_when_they_fit() {
    let parent = Node::with_config(json!({}));
    let p = parent.base();
    let images: Vec<Image> = (1..=3).map(|i| image(i, MIB)).collect();
    for (i, img) in images.iter().enumerate() {
        push_image(&p, &format!("r{}", i + 1), "v1", img);
    }
    let storage = json!({"maxSize": "2600KiB", "minFree": "0"});
    let mut config = peers::child_config(&p, json!({"repositories": ["r1", "r2"]}));
    config["storage"] = storage.clone();
    let child = Node::with_config(config.clone());
    let c = child.base();
    assert!(peers::wait_until(Duration::from_secs(60), || serves_tag(
        &c, "r1", "v1"
    ) == 200
        && serves_tag(&c, "r2", "v1") == 200));
    // r1 is pulled after both were synced, so r2 is the least recently pulled.
    std::thread::sleep(Duration::from_millis(1200));
    peers::assert_serves(&c, "r1", "v1", &images[0], None);

    config["parent"]["sync"]["repositories"] = json!(["r1", "r2", "r3"]);
    child.rewrite_config(config.clone());
    assert!(
        peers::wait_until(Duration::from_secs(60), || serves_tag(&c, "r3", "v1")
            == 200),
        "r3 syncs by evicting; log:\n{}",
        child.log_text()
    );
    peers::assert_serves(&c, "r3", "v1", &images[2], None);
    assert_eq!(
        serves_tag(&c, "r1", "v1"),
        200,
        "r1, pulled more recently than r2, was kept; log:\n{}",
        child.log_text()
    );
    peers::assert_serves(&c, "r1", "v1", &images[0], None);
    assert_eq!(
        serves_tag(&c, "r2", "v1"),
        404,
        "r2, pulled least recently, was evicted; log:\n{}",
        child.log_text()
    );
    for blob in images[1].all_blobs().keys() {
        assert_eq!(head(&c, &format!("/v2/r2/blobs/{blob}")).status, 404);
    }
    let log = common::clients::plain_log(&child);
    assert!(log.contains("evicted a synced tag"), "{log}");
    // r2 does not fit again: the next passes report DiskError instead of thrashing.
    let status = wait_for_detail(&c, "DiskError");
    assert!(status.to_string().contains("r2:v1"), "{status:#}");
    assert_eq!(serves_tag(&c, "r1", "v1"), 200);

    // Room again: everything converges without a restart.
    config["storage"]["maxSize"] = json!("20MiB");
    child.rewrite_config(config);
    assert!(
        peers::wait_until(Duration::from_secs(60), || serves_tag(&c, "r2", "v1")
            == 200),
        "r2 comes back once it fits; log:\n{}",
        child.log_text()
    );
    for (i, img) in images.iter().enumerate() {
        peers::assert_serves(&c, &format!("r{}", i + 1), "v1", img, None);
    }
    child.assert_no_panic();
    assert_blob_files_intact(&child.data_dir);
}

#[test]
fn a_push_that_does_not_fit_is_refused_with_507_and_fits_once_the_limit_is_raised() {
    let mut config = json!({"storage": {"maxSize": "1MiB", "minFree": "0"}});
    let node = Node::with_config(config.clone());
    let base = node.base();
    let first = image(10, 600 * 1024);
    push_image(&base, "app", "v1", &first);

    let big = Blob::new(LAYER, peers::random_bytes(11, 600 * 1024));
    let client = common::support::client();
    let monolithic = client
        .post(format!(
            "{base}/v2/app/blobs/uploads/?digest={}",
            big.digest
        ))
        .header("Content-Type", "application/octet-stream")
        .body(big.bytes.clone())
        .send()
        .unwrap();
    assert_eq!(monolithic.status().as_u16(), 507);
    let body = monolithic.text().unwrap();
    assert_eq!(
        common::support::oci_codes(&body),
        ["INSUFFICIENT_STORAGE"],
        "{body}"
    );
    assert!(body.contains("storage.maxSize"), "{body}");

    let location = peers::start_upload(&base, "app");
    let finish = client
        .put(common::support::finish_url(&location, &big.digest))
        .header("Content-Type", "application/octet-stream")
        .body(big.bytes.clone())
        .send()
        .unwrap();
    assert_eq!(finish.status().as_u16(), 507, "{}", finish.text().unwrap());
    // Nothing half-done is visible, and what was there is still served.
    assert_eq!(
        head(&base, &format!("/v2/app/blobs/{}", big.digest)).status,
        404
    );
    peers::assert_serves(&base, "app", "v1", &first, None);

    config["storage"]["maxSize"] = json!("4MiB");
    node.rewrite_config(config);
    assert!(peers::wait_until(Duration::from_secs(20), || {
        client
            .post(format!(
                "{base}/v2/app/blobs/uploads/?digest={}",
                big.digest
            ))
            .header("Content-Type", "application/octet-stream")
            .body(big.bytes.clone())
            .send()
            .unwrap()
            .status()
            .as_u16()
            == 201
    }));
    node.assert_no_panic();
}

/// A data volume that really runs out (ENOSPC): a chunked push, small or large, is refused with
/// 507, a sync reports DiskError, serving goes on, and both finish once space is freed.
#[test]
fn a_full_disk_refuses_pushes_and_syncs_cleanly_and_recovers_by_itself() {
    let parent = Node::with_config(json!({}));
    let p = parent.base();
    let small = image(20, 256 * 1024);
    let large = image(21, 6 * MIB);
    push_image(&p, "small", "v1", &small);

    let volume = Tmpfs::mount(24);
    let mut config = peers::child_config(&p, json!({"repositories": ["small", "large"]}));
    config["mode"] = json!("ReadWrite");
    config["storage"] = json!({"minFree": "0"});
    let child = Node::with_config_in(config, Some(volume.path.join("data")));
    let c = child.base();
    assert!(peers::wait_until(Duration::from_secs(60), || serves_tag(
        &c, "small", "v1"
    ) == 200));
    let client = common::support::client();
    // A chunked upload has no size up front: the disk itself says no, with 507, and the refused
    // bytes are given back.
    let refused_and_given_back = |leave_mib: usize, seed: u64, len_mib: usize| {
        volume.fill_leaving("filler", (leave_mib * MIB) as u64);
        let location = peers::start_upload(&c, "local");
        let patch = client
            .patch(&location)
            .header("Content-Type", "application/octet-stream")
            .body(peers::random_bytes(seed, len_mib * MIB))
            .send()
            .unwrap();
        assert_eq!(patch.status().as_u16(), 507, "{}", patch.text().unwrap());
        assert!(
            volume.available() > ((leave_mib - 1) * MIB) as u64,
            "{} free",
            volume.available()
        );
    };
    // A large upload runs out after 11 MiB, past the point where it is hashed on a thread of
    // its own (8 MiB).
    refused_and_given_back(11, 24, 16);
    std::fs::remove_file(volume.path.join("filler")).unwrap();
    refused_and_given_back(3, 22, 5);

    push_image(&p, "large", "v1", &large);
    wait_for_detail(&c, "DiskError");
    peers::assert_serves(&c, "small", "v1", &small, None);
    assert_eq!(serves_tag(&c, "large", "v1"), 404);

    std::fs::remove_file(volume.path.join("filler")).unwrap();
    assert!(
        peers::wait_until(Duration::from_secs(60), || serves_tag(&c, "large", "v1")
            == 200),
        "the sync completes once space exists; log:\n{}",
        child.log_text()
    );
    peers::assert_serves(&c, "large", "v1", &large, None);
    let again = Blob::new(LAYER, peers::random_bytes(23, 5 * MIB));
    push_blob(&c, "local", &again);
    child.assert_no_panic();
    assert_blob_files_intact(&child.data_dir);
}
