//! ReadWrite nodes push upstream, with the real binary at every layer: a push at a grandchild
//! reaches the root through a ReadWrite middle node (with sync tokens at each level); the outbox
//! survives a parent outage and a kill -9 of the child and drains when the parent is back; and a
//! tag moved at the parent while a local push waited follows the documented rule (the parent
//! wins, the local manifest stays pullable by digest, the conflict is in `statusDetails`).

use crate::common;

use std::time::Duration;

use common::credentials::{
    basic, create_read_write_sync_token, create_token, send_as, SecuredNode,
};
use common::hostile_child::{wait_active, wait_outbox_empty};
use common::peers::{
    assert_serves, detail_codes, manifest_digest, push_image, random_bytes, status, wait_for_tag,
    wait_until, Image, Node,
};
use common::Registry;
use reqwest::Method;
use serde_json::{json, Value};

fn image(seed: u64) -> Image {
    Image::new(
        "linux/amd64",
        &[random_bytes(seed, 20_000), random_bytes(seed + 1000, 5000)],
    )
}

fn upstream(node_base: &str) -> Value {
    status(node_base)["upstream"].clone()
}

/// The `upstream` status of a node that requires credentials.
fn upstream_as(node_base: &str, authorization: &str) -> Value {
    let r = send_as(
        Method::GET,
        node_base,
        "/acr/connected-registry/v1/status",
        Some(authorization),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["upstream"].clone()
}

#[test]
fn a_push_at_a_grandchild_reaches_the_root_through_a_read_write_middle() {
    let (mut middle_pw, mut admin_pw) = (String::new(), String::new());
    let root = SecuredNode::start(json!({"name": "rootnode"}), |config| {
        middle_pw = create_read_write_sync_token(config, "middle1", "apps/*");
        admin_pw = create_token(
            config,
            "admin",
            &["--repository", "*", "content/read", "metadata/read"],
        );
    });
    let mut lower_pw = String::new();
    let middle = SecuredNode::start(
        json!({
            "name": "middle1", "mode": "ReadWrite",
            "parent": {
                "endpoint": root.base(),
                "syncToken": {"name": "middle1", "password": middle_pw},
                "sync": {"repositories": ["apps/*"]}
            }
        }),
        |config| lower_pw = create_read_write_sync_token(config, "lower1", "apps/*"),
    );
    let lower = Node::with_config(json!({
        "name": "lower1", "mode": "ReadWrite",
        "parent": {
            "endpoint": middle.base(),
            "syncToken": {"name": "lower1", "password": lower_pw},
            "sync": {"repositories": ["apps/*"]}
        }
    }));
    wait_active(&lower.base());

    // A client pushes at the bottom (a loopback node without client tokens is open).
    let pushed = image(1);
    push_image(&lower.base(), "apps/web", "v1", &pushed);
    let admin = basic("admin", &admin_pw);
    let at_root = || {
        let r = send_as(
            Method::GET,
            &root.base(),
            "/v2/apps/web/manifests/v1",
            Some(&admin),
            None,
        );
        (r.status == 200).then(|| common::sha256(&r.body))
    };
    assert!(
        wait_until(Duration::from_secs(30), || at_root()
            == Some(pushed.digest.clone())),
        "the push never reached the root; lower: {}; middle: {}",
        status(&lower.base()),
        middle
            .reg
            .log_text()
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Every blob arrived whole at the root.
    for blob in &pushed.blobs {
        let r = send_as(
            Method::GET,
            &root.base(),
            &format!("/v2/apps/web/blobs/{}", blob.digest),
            Some(&admin),
            None,
        );
        assert_eq!(r.status, 200);
        assert_eq!(common::sha256(&r.body), blob.digest);
    }
    assert!(wait_until(Duration::from_secs(10), || upstream(
        &lower.base()
    )["pending"]
        == 0));
    assert!(upstream(&lower.base())["lastPushTime"].is_string());
    let lower_creds = basic("lower1", &lower_pw);
    assert!(wait_until(Duration::from_secs(10), || upstream_as(
        &middle.base(),
        &lower_creds
    )["pending"]
        == 0));
}

#[test]
fn the_outbox_survives_a_parent_outage_and_a_kill_9_then_drains() {
    let mut root = Registry::start();
    let mut child = Node::with_config(json!({
        "name": "shipnode1", "mode": "ReadWrite",
        "parent": {"endpoint": root.url(""), "sync": {"repositories": ["apps/*"]}}
    }));
    wait_active(&child.base());

    // The parent goes away; pushes and a delete at the child queue up.
    root.kill9();
    let (a, b, c) = (image(10), image(20), image(30));
    push_image(&child.base(), "apps/a", "v1", &a);
    push_image(&child.base(), "apps/b", "v1", &b);
    push_image(&child.base(), "apps/b", "v2", &c);
    let r = send_as(
        Method::DELETE,
        &child.base(),
        &format!("/v2/apps/b/manifests/{}", c.digest),
        None,
        None,
    );
    assert_eq!(r.status, 202);
    assert!(wait_until(Duration::from_secs(10), || upstream(
        &child.base()
    )["pending"]
        == 4));
    assert!(upstream(&child.base())["oldestPendingSince"].is_string());

    // kill -9 the child with a full outbox; it comes back with every entry.
    child.kill9();
    child.restart();
    assert_eq!(
        upstream(&child.base())["pending"],
        4,
        "the outbox survived the kill"
    );
    // Local content is served throughout.
    assert_serves(&child.base(), "apps/a", "v1", &a, None);

    // The parent comes back: everything arrives, in order (v2 pushed then deleted).
    root.restart();
    wait_outbox_empty(&child.base(), Duration::from_secs(60));
    assert_serves(&root.url(""), "apps/a", "v1", &a, None);
    assert_serves(&root.url(""), "apps/b", "v1", &b, None);
    assert_eq!(
        manifest_digest(&root.url(""), "apps/b", "v2"),
        None,
        "v2 was deleted here"
    );
    assert_eq!(manifest_digest(&root.url(""), "apps/b", &c.digest), None);
}

#[test]
fn a_tag_moved_at_the_parent_while_a_push_waited_the_parent_wins_and_nothing_is_lost() {
    let mut root = Registry::start();
    let (base_image, local, remote) = (image(40), image(50), image(60));
    push_image(&root.url(""), "apps/web", "v1", &base_image);
    let mut child = Node::with_config(json!({
        "name": "shipnode2", "mode": "ReadWrite",
        "parent": {"endpoint": root.url(""), "sync": {"repositories": ["apps/*"]}}
    }));
    wait_for_tag(
        &child,
        "apps/web",
        "v1",
        &base_image.digest,
        Duration::from_secs(30),
    );

    // Offline, the child moves v1 to `local`; it is killed before it can push.
    root.kill9();
    push_image(&child.base(), "apps/web", "v1", &local);
    child.kill9();
    // Meanwhile at the parent someone moves v1 to `remote`.
    root.restart();
    push_image(&root.url(""), "apps/web", "v1", &remote);
    child.restart();

    assert!(
        wait_until(Duration::from_secs(60), || upstream(&child.base())
            ["pending"]
            == 0
            && detail_codes(&status(&child.base()))
                .contains(&"UpstreamConflict".to_owned())),
        "no conflict reported: {}",
        status(&child.base())
    );
    // The parent's tag stayed; the local manifest reached the parent by digest and stays here.
    assert_eq!(
        manifest_digest(&root.url(""), "apps/web", "v1"),
        Some(remote.digest.clone())
    );
    assert_eq!(
        manifest_digest(&root.url(""), "apps/web", &local.digest),
        Some(local.digest.clone())
    );
    wait_for_tag(
        &child,
        "apps/web",
        "v1",
        &remote.digest,
        Duration::from_secs(30),
    );
    assert_serves(&child.base(), "apps/web", &local.digest, &local, None);
    let detail = status(&child.base())["statusDetails"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["code"] == "UpstreamConflict")
        .cloned()
        .unwrap();
    let text = detail["description"].as_str().unwrap();
    assert!(
        text.contains("apps/web:v1")
            && text.contains(&remote.digest)
            && text.contains(&local.digest),
        "{text}"
    );
}

/// The Docker engine pushes at a grandchild; the image is pulled with `docker pull` at the root
/// (through two ReadWrite layers), with the digest docker reported at push.
#[test]
fn docker_push_at_a_grandchild_docker_pull_at_the_root() {
    use common::clients::{busybox_bytes, tar, unique, DockerImages};
    use common::{require, run};
    use std::process::Command;

    let docker = require("docker");
    let root = Registry::start();
    let middle = Node::with_config(json!({
        "name": "middle2", "mode": "ReadWrite",
        "parent": {"endpoint": root.url(""), "sync": {"repositories": ["apps/*"]}}
    }));
    let lower = Node::with_config(json!({
        "name": "lower2", "mode": "ReadWrite",
        "parent": {"endpoint": middle.base(), "sync": {"repositories": ["apps/*"]}}
    }));
    wait_active(&lower.base());

    let tmp = tempfile::tempdir().unwrap();
    let rootfs = tar(tmp.path(), &[("bin/busybox", &busybox_bytes(), 0o755)]);
    std::fs::write(tmp.path().join("rootfs.tar"), &rootfs).unwrap();
    let repo = format!("apps/{}", unique("up"));
    let at_lower = format!("{}/{repo}:1", lower.host());
    let at_root = format!("{}/{repo}:1", root.host());
    let _cleanup = DockerImages(vec![at_lower.clone(), at_root.clone()]);
    run(Command::new(&docker)
        .arg("import")
        .arg(tmp.path().join("rootfs.tar"))
        .arg(&at_lower));
    let push = run(Command::new(&docker).args(["push", &at_lower]));
    let pushed = push
        .lines()
        .find_map(|l| l.strip_prefix("1: digest: "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no digest in docker push output:\n{push}"))
        .to_owned();
    assert!(
        wait_until(Duration::from_secs(30), || manifest_digest(
            &root.url(""),
            &repo,
            "1"
        ) == Some(pushed.clone())),
        "never reached the root: {}",
        status(&lower.base())
    );
    let pull = run(Command::new(&docker).args(["pull", &at_root]));
    assert!(pull.contains(&pushed), "docker pull at the root: {pull}");
}

/// A ReadWrite child of a plain distribution parent: pushes go up as plain OCI pushes, and an
/// untag the parent refuses for good (distribution answers 400 to a delete by tag) is reported
/// as `UpstreamRefused` instead of blocking the outbox.
#[test]
fn a_distribution_parent_gets_pushes_and_a_refused_untag_does_not_block_the_outbox() {
    use common::peers::Distribution;
    let parent = Distribution::start();
    let child = Node::with_config(json!({
        "name": "shipnode3", "mode": "ReadWrite",
        "parent": {"endpoint": parent.url(), "sync": {"repositories": ["apps/*"]}}
    }));
    wait_active(&child.base());
    let (a, b) = (image(70), image(80));
    push_image(&child.base(), "apps/a", "v1", &a);
    assert!(wait_until(Duration::from_secs(30), || manifest_digest(
        &parent.url(),
        "apps/a",
        "v1"
    ) == Some(
        a.digest.clone()
    )));
    assert_serves(&parent.url(), "apps/a", "v1", &a, None);
    let r = send_as(
        Method::DELETE,
        &child.base(),
        "/v2/apps/a/manifests/v1",
        None,
        None,
    );
    assert_eq!(r.status, 202);
    push_image(&child.base(), "apps/b", "v1", &b);
    assert!(
        wait_until(Duration::from_secs(60), || {
            manifest_digest(&parent.url(), "apps/b", "v1") == Some(b.digest.clone())
                && upstream(&child.base())["pending"] == 0
        }),
        "outbox blocked: {}",
        status(&child.base())
    );
    assert_serves(&parent.url(), "apps/b", "v1", &b, None);
    assert_eq!(
        manifest_digest(&parent.url(), "apps/a", "v1"),
        Some(a.digest.clone()),
        "the untag was refused there"
    );
    assert!(
        detail_codes(&status(&child.base())).contains(&"UpstreamRefused".to_owned()),
        "{}",
        status(&child.base())
    );
}

/// `bandwidthLimit` paces uploads too, and a slow upload that keeps moving is not cut off: a
/// 240 KiB layer at 16 KiB/s takes ~15 s, longer than the progress window (10 s), and reaches
/// the parent whole on its first attempt.
#[test]
fn a_slow_paced_upload_reaches_the_parent_however_long_it_takes() {
    use common::peers::Distribution;
    let parent = Distribution::start();
    let child = Node::with_config(json!({
        "name": "shipnode4", "mode": "ReadWrite",
        "parent": {"endpoint": parent.url(),
                   "sync": {"repositories": ["apps/*"], "bandwidthLimit": "16KiB/s"}}
    }));
    wait_active(&child.base());
    let big = Image::new("linux/amd64", &[random_bytes(90, 240 * 1024)]);
    let pushed = std::time::Instant::now();
    push_image(&child.base(), "apps/slow", "v1", &big);
    assert!(
        wait_until(Duration::from_secs(90), || manifest_digest(
            &parent.url(),
            "apps/slow",
            "v1"
        ) == Some(big.digest.clone())),
        "the paced upload never arrived: {}",
        status(&child.base())
    );
    // The limit held: 240 KiB cannot pass 16 KiB/s in less than ~15 s.
    assert!(
        pushed.elapsed() >= Duration::from_secs(10),
        "uploaded in {:?}: not paced",
        pushed.elapsed()
    );
    assert_serves(&parent.url(), "apps/slow", "v1", &big, None);
    assert!(
        !detail_codes(&status(&child.base())).contains(&"ParentUnreachable".to_owned()),
        "an attempt was cut off: {}",
        status(&child.base())
    );
}

/// The bytes of `PATCH` bodies the proxy saw, by where each chunk started (its
/// `Content-Range`), in order.
fn chunk_starts(proxy: &common::proxy::Proxy) -> Vec<u64> {
    proxy
        .requests()
        .iter()
        .filter(|r| r.method == "PATCH")
        .filter_map(|r| r.header("content-range")?.split('-').next()?.parse().ok())
        .collect()
}

/// A ReadWrite child of the parent on `parent_port` (through a proxy) pushes a one-layer image
/// of `layer` bytes to `repo:v1`, is killed (-9) once 40 MiB of it went up (past the first
/// 32 MiB chunk), and restarted with the proxy's request log cleared; returns once the parent at
/// `parent_url` serves the image, with the bytes that went up before the kill.
fn push_killed_mid_upload(
    parent_port: u16,
    parent_url: &str,
    repo: &str,
    layer: usize,
) -> (Node, common::proxy::Proxy, Image, u64) {
    let proxy = common::proxy::Proxy::start(parent_port);
    let mut child = Node::with_config(json!({
        "name": "shipnode5", "mode": "ReadWrite",
        "parent": {"endpoint": proxy.endpoint(),
                   "sync": {"repositories": ["apps/*"], "bandwidthLimit": "16MiB/s"}}
    }));
    wait_active(&child.base());
    let big = Image::new("linux/amd64", &[random_bytes(95, layer)]);
    push_image(&child.base(), repo, "v1", &big);
    assert!(
        wait_until(Duration::from_secs(60), || proxy.bytes_to_server()
            >= 40 << 20),
        "the upload did not start: {}",
        status(&child.base())
    );
    child.kill9();
    let before_kill = proxy.bytes_to_server();
    assert!(
        before_kill < layer as u64,
        "the whole layer went up before the kill"
    );
    proxy.clear_requests();
    child.restart();
    assert!(
        wait_until(Duration::from_secs(90), || manifest_digest(
            parent_url, repo, "v1"
        ) == Some(big.digest.clone())),
        "the image never reached the parent: {}",
        status(&child.base())
    );
    assert_serves(parent_url, repo, "v1", &big, None);
    (child, proxy, big, before_kill)
}

/// A big blob goes up in chunks, and a kill -9 of the child midway loses only the cut part: the
/// restarted child asks the parent (a connected registry) where the session stands and sends
/// the rest from there, not the blob again from its first byte.
#[test]
fn an_upload_cut_by_a_kill_9_resumes_where_the_parent_says_it_stands() {
    const LAYER: usize = 80 << 20;
    let root = Registry::start();
    let (child, proxy, _, before_kill) =
        push_killed_mid_upload(root.port, &root.url(""), "apps/resume", LAYER);
    // After the restart: where the session stands was asked, and the chunks went on from
    // there (no chunk from byte 0, and far less than the layer sent again).
    assert!(
        proxy
            .requests()
            .iter()
            .any(|r| r.method == "GET" && r.path().contains("/blobs/uploads/")),
        "the session's state was not asked for: {:?}",
        proxy.request_lines()
    );
    let starts = chunk_starts(&proxy);
    assert!(
        !starts.is_empty() && starts.iter().all(|&s| s >= 32 << 20),
        "chunks after the restart started at {starts:?}"
    );
    let after = proxy.bytes_to_server() - before_kill;
    eprintln!(
        "to the parent: {} MiB before the kill, {} MiB after the restart (layer {} MiB)",
        before_kill >> 20,
        after >> 20,
        LAYER >> 20
    );
    assert!(
        after < (LAYER as u64) - (24 << 20),
        "{after} bytes went to the parent after the restart (layer {LAYER}, {before_kill} before the kill)"
    );
    // Resumed, not replaced by a new session.
    assert!(
        !child.reg.log_text().contains("starting a new one"),
        "the session was not resumed:\n{}",
        child.reg.log_text()
    );
}

/// The same chunked upload against distribution: the blob arrives whole (digest checked by
/// the parent), and a kill -9 midway still ends with everything there — resumed where
/// distribution kept the session, or in a fresh session where it cancelled it.
#[test]
fn a_chunked_upload_to_distribution_arrives_whole_through_a_kill_9() {
    let parent = common::peers::Distribution::start();
    let (child, proxy, _, _) =
        push_killed_mid_upload(parent.port, &parent.url(), "apps/chunked", 72 << 20);
    wait_outbox_empty(&child.base(), Duration::from_secs(20));
    // After the restart it went up in chunks of 32 MiB: distribution cancels a session
    // resumed after a cut chunk, so a fresh one starts from byte 0.
    let starts = chunk_starts(&proxy);
    assert!(
        starts.contains(&0) && starts.contains(&(32 << 20)),
        "chunks started at {starts:?}"
    );
}
