//! Upstream pushes to a parent that misbehaves (the hostile parent takes pushes too): a parent
//! that refuses every chunk still gets the blob, in one `PUT`; a kept session the parent claims
//! holds more than the blob is not resumed; a session whose bytes the parent corrupted, so that
//! its closing `PUT` is refused, is left for a fresh one instead of being closed again forever.
//! Each case ends with the image whole at the parent (every digest checked) and the outbox
//! empty. The layer is 40 MiB: above the 32 MiB from which blobs go up in chunks.

use crate::common;

use std::time::Duration;

use common::hostile_child::{log_tail, wait_active, wait_outbox_empty};
use common::hostile_parent::{Behavior, HostileParent};
use common::peers::{
    assert_serves, manifest_digest, push_image, random_bytes, status, status_text, wait_until,
    Image, Node,
};

const LAYER: usize = 40 << 20;

/// A ReadWrite child of `parent`, activated, with an image of one `LAYER`-byte layer pushed to
/// it as `repo:v1`; the image.
fn pushed_to_child(parent: &HostileParent, repo: &str, seed: u64) -> (Node, Image) {
    let child = Node::with_config(serde_json::json!({
        "name": format!("hostileup{seed}"), "mode": "ReadWrite",
        "parent": {"endpoint": parent.endpoint(), "sync": {"repositories": ["apps/*"]}}
    }));
    wait_active(&child.base());
    let image = Image::new("linux/amd64", &[random_bytes(seed, LAYER)]);
    push_image(&child.base(), repo, "v1", &image);
    (child, image)
}

/// Wait until the parent serves `repo:v1` as `image` (every digest verified) and the child's
/// outbox is empty.
fn wait_arrived(parent: &HostileParent, child: &Node, repo: &str, image: &Image) {
    let arrived = wait_until(Duration::from_secs(90), || {
        manifest_digest(&parent.endpoint(), repo, "v1").as_deref() == Some(image.digest.as_str())
            && status(&child.base())["upstream"]["pending"] == 0
    });
    assert!(
        arrived,
        "{repo}:v1 never arrived whole\nstatus: {}\nlog tail:\n{}\nparent saw: {:#?}",
        status_text(&child.reg),
        log_tail(&child.reg),
        parent.requests()
    );
    assert_serves(&parent.endpoint(), repo, "v1", image, None);
}

/// The layer's digest as it appears in a closing `PUT …?digest=` (URL-encoded).
fn digest_query(image: &Image) -> String {
    let layer = image.blobs.iter().max_by_key(|b| b.bytes.len()).unwrap();
    format!("digest={}", layer.digest.replace(':', "%3A"))
}

/// A parent that answers 404 to every `PATCH` (no chunked uploads): the first session and two
/// fresh ones are tried, then the blob goes whole in one `PUT` and arrives.
#[test]
fn a_parent_refusing_every_chunk_gets_the_blob_in_one_put() {
    let parent = HostileParent::start();
    parent.on("PATCH /v2/apps/whole/", Behavior::Status(404));
    let (child, image) = pushed_to_child(&parent, "apps/whole", 301);
    wait_arrived(&parent, &child, "apps/whole", &image);
    let requests = parent.requests();
    let patches: Vec<usize> = (0..requests.len())
        .filter(|&i| requests[i].starts_with("PATCH "))
        .collect();
    assert_eq!(
        patches.len(),
        3,
        "one session and two fresh ones: {requests:#?}"
    );
    let last_patch = patches[2];
    let whole = requests[last_patch..]
        .iter()
        .position(|r| r.starts_with("PUT ") && r.contains(&digest_query(&image)));
    assert!(
        whole.is_some()
            && requests[last_patch..]
                .iter()
                .any(|r| r.starts_with("POST ")),
        "no whole PUT in a new session after the last refused chunk: {requests:#?}"
    );
    assert!(child.reg.log_text().contains("sending the blob in one PUT"));
}

/// A kept session (the first attempt failed at its first chunk) that the parent says holds
/// more bytes than the blob has cannot end well: a fresh session is started, and the blob is
/// closed once, there — not first in the over-full one.
#[test]
fn a_kept_session_holding_more_than_the_blob_is_not_resumed() {
    let parent = HostileParent::start();
    parent.on_times("PATCH /v2/apps/over/", Behavior::Status(422), 1);
    parent.on_times(
        "GET /v2/apps/over/blobs/uploads/",
        Behavior::SessionHolds(2 * LAYER as u64),
        1,
    );
    let (child, image) = pushed_to_child(&parent, "apps/over", 302);
    wait_arrived(&parent, &child, "apps/over", &image);
    assert_eq!(
        parent.count("GET /v2/apps/over/blobs/uploads/"),
        1,
        "the kept session was asked where it stands"
    );
    assert_eq!(
        parent.count(&digest_query(&image)),
        1,
        "closed only in the fresh session: {:#?}",
        parent.requests()
    );
}

/// A parent that keeps a corrupted first chunk refuses the closing `PUT` (the digest does not
/// match what the session holds). The session is dropped, so the next attempt sends the blob
/// into a fresh session and it arrives; closing the corrupted one again would fail forever.
#[test]
fn a_session_the_parent_corrupted_is_replaced_by_a_fresh_one() {
    let parent = HostileParent::start();
    parent.on_times("PATCH /v2/apps/garbled/", Behavior::Garble, 1);
    let (child, image) = pushed_to_child(&parent, "apps/garbled", 303);
    wait_arrived(&parent, &child, "apps/garbled", &image);
    assert_eq!(
        parent.count(&digest_query(&image)),
        2,
        "one refused close, one good: {:#?}",
        parent.requests()
    );
    assert_eq!(
        parent.count("GET /v2/apps/garbled/blobs/uploads/"),
        0,
        "the refused session was resumed: {:#?}",
        parent.requests()
    );
    assert!(
        child.reg.log_text().contains("DIGEST_INVALID"),
        "the refusal is logged with the parent's reason"
    );
}

/// A push whose entry settles without its upload finishing (the manifest deleted here while
/// the parent refused its chunks) leaves no kept session behind: pushing the image again later
/// starts a fresh session instead of resuming the abandoned one.
#[test]
fn an_abandoned_upload_session_is_forgotten_once_the_outbox_is_empty() {
    let parent = HostileParent::start();
    parent.on("PATCH /v2/apps/stale/", Behavior::Status(422));
    let (child, image) = pushed_to_child(&parent, "apps/stale", 304);
    assert!(
        wait_until(Duration::from_secs(30), || parent.count("PATCH ") >= 1),
        "no chunk was tried"
    );
    let r = common::peers::delete(
        &child.base(),
        &format!("/v2/apps/stale/manifests/{}", image.digest),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    wait_outbox_empty(&child.base(), Duration::from_secs(60));
    assert!(
        wait_until(Duration::from_secs(10), || child
            .reg
            .log_text()
            .contains("forgot upload sessions")),
        "the kept session was not forgotten:\n{}",
        log_tail(&child.reg)
    );
    parent.behave();
    let asked_before = parent.count("GET /v2/apps/stale/blobs/uploads/");
    push_image(&child.base(), "apps/stale", "v1", &image);
    wait_arrived(&parent, &child, "apps/stale", &image);
    assert_eq!(
        parent.count("GET /v2/apps/stale/blobs/uploads/"),
        asked_before,
        "the abandoned session was resumed: {:#?}",
        parent.requests()
    );
}
