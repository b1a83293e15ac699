//! The child's side of the hostile-parent tests: a real node syncing from a
//! [`HostileParent`](super::hostile_parent::HostileParent), and the checks every case makes on
//! it — what it serves (every digest verified), what its status says, how much disk it holds.
//! Waits poll (see [`wait_until`]); a failed wait prints the status and the log's tail.

use std::time::Duration;

use serde_json::{json, Value};

use super::files_under;
use super::hostile_parent::HostileParent;
use super::peers::{
    assert_serves, get, random_bytes, status, status_text, tail, wait_for_tag, wait_until, Image,
    Node,
};
use super::Registry;

pub const MINUTE: Duration = Duration::from_secs(60);

/// A node syncing `repositories` (names or patterns) from `parent`.
pub fn child_of(parent: &HostileParent, repositories: &[&str]) -> Node {
    Node::child(&parent.endpoint(), json!({ "repositories": repositories }))
}

/// A single-layer linux/amd64 image with a `len`-byte layer determined by `seed`.
pub fn image(seed: u64, len: usize) -> Image {
    Image::new("linux/amd64", &[random_bytes(seed, len)])
}

/// Wait until `repo:tag` is served exactly as `image` (every digest verified).
pub fn wait_serves(node: &Registry, repo: &str, tag: &str, image: &Image, within: Duration) {
    wait_for_tag(node, repo, tag, &image.digest, within);
    assert_serves(&node.url(""), repo, tag, image, None);
}

/// Wait (bounded) until the node at `node_base` is activated at its parent.
pub fn wait_active(node_base: &str) {
    assert!(
        wait_until(Duration::from_secs(20), || status(node_base)["activation"]
            ["status"]
            == "Active"),
        "never activated: {}",
        status(node_base)
    );
}

/// Wait (bounded by `within`) until the outbox of the ReadWrite node at `node_base` is empty.
pub fn wait_outbox_empty(node_base: &str, within: Duration) {
    assert!(
        wait_until(within, || status(node_base)["upstream"]["pending"] == 0),
        "the outbox never drained: {}",
        status(node_base)
    );
}

/// The last 40 lines of the node's log.
pub fn log_tail(node: &Registry) -> String {
    tail(&node.log_text(), 40)
}

/// The `statusDetails` entries with `code` whose description contains `needle`.
pub fn details(node: &Registry, code: &str, needle: &str) -> Vec<Value> {
    status(&node.url(""))["statusDetails"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|d| {
                    d["code"] == code && d["description"].as_str().unwrap_or("").contains(needle)
                })
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

/// Wait until `statusDetails` holds `code` (with `needle` in its description); returns it.
pub fn wait_detail(node: &Registry, code: &str, needle: &str, within: Duration) -> Value {
    let mut found = Value::Null;
    let ok = wait_until(within, || match details(node, code, needle).first() {
        Some(d) => {
            found = d.clone();
            true
        }
        None => false,
    });
    assert!(
        ok,
        "no {code} detail mentioning {needle:?} within {within:?}\nstatus: {}\nlog tail:\n{}",
        status_text(node),
        log_tail(node)
    );
    found
}

/// Assert `repo:tag` answers 404 at the node.
pub fn not_served(node: &Registry, repo: &str, tag: &str) {
    let r = get(&node.url(""), &format!("/v2/{repo}/manifests/{tag}"));
    assert_eq!(
        r.status,
        404,
        "{repo}:{tag} must not be visible: {}",
        r.text()
    );
}

/// Bytes of the files under `path`.
pub fn dir_size(path: &std::path::Path) -> u64 {
    files_under(path)
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

/// `(sync.state, connectionState)` of the node's status.
pub fn sync_state(node: &Registry) -> (String, String) {
    let s = status(&node.url(""));
    (
        s["sync"]["state"].as_str().unwrap_or("").to_owned(),
        s["connectionState"].as_str().unwrap_or("").to_owned(),
    )
}
