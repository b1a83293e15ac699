//! A `connected-registry` parent: pushes arrive through its change feed (a stream, or a
//! long-poll), with the same selection as a full pass; an expired cursor reconciles in full;
//! referrers arrive; a chain of three nodes.

use super::*;

/// Wait until the child follows the parent's change feed: a stream open (`101`) or a long-poll
/// in flight.
fn wait_long_poll(proxy: &Proxy, child: &Registry) {
    let ok = proxy.wait_for(Duration::from_secs(15), |reqs| {
        reqs.iter()
            .any(|r| r.path() == CHANGES && matches!(r.status, None | Some(101)))
    });
    assert!(
        ok,
        "the child never long-polled the parent's change feed\n{}{}",
        proxy_log(proxy),
        diag(child)
    );
}

/// Poll `repo:tag` at `base` every 10 ms for up to `limit`; the time it took, or None.
fn time_to_arrive(
    base: &str,
    repo: &str,
    tag: &str,
    digest: &str,
    limit: Duration,
) -> Option<Duration> {
    let t = Instant::now();
    while t.elapsed() < limit {
        if manifest_digest(base, repo, tag).as_deref() == Some(digest) {
            return Some(t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}

/// A push at a connected-registry parent reaches the child within 2 s (existing and new
/// repositories matching the pattern), and one outside the selection never does.
#[test]
fn connected_parent_push_reaches_child_within_2s() {
    let root = Registry::start();
    let r = root.url("");
    let v0 = Image::new("linux/amd64", &[random_bytes(51, 4 * KIB)]);
    push_image(&r, "live/app", "v0", &v0);
    let proxy = Proxy::start(root.port);
    let child = Node::child(&proxy.endpoint(), json!({"repositories": ["live/**"]}));
    let c = child.base();
    wait_for_tag(
        &child,
        "live/app",
        "v0",
        &v0.digest,
        Duration::from_secs(30),
    );
    wait_long_poll(&proxy, &child);

    let mut times = Vec::new();
    for (i, repo) in ["live/app", "live/app", "live/new/repo"].iter().enumerate() {
        let img = Image::new("linux/amd64", &[random_bytes(52 + i as u64, 4 * KIB)]);
        let tag = format!("v{}", i + 1);
        push_image(&r, repo, &tag, &img);
        let took = time_to_arrive(&c, repo, &tag, &img.digest, Duration::from_secs(2));
        println!("push at the parent -> pullable at the child: {repo}:{tag} in {took:?}");
        assert!(
            took.is_some(),
            "{repo}:{tag} pushed at the parent is not at the child within 2 s\n{}{}",
            proxy_log(&proxy),
            diag(&child)
        );
        times.push(took.unwrap());
        assert_serves(&c, repo, &tag, &img, None);
    }
    println!("push-to-child latencies: {times:?}");

    let other = Image::new("linux/amd64", &[random_bytes(59, 4 * KIB)]);
    push_image(&r, "other/app", "v1", &other);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(tags(&c, "other/app"), None, "other/app is not selected");
    assert!(mentions(&proxy.requests(), "/v2/other/app/").is_empty());
}

/// An idle child of a connected-registry parent follows its feed on one stream: over 5 s idle,
/// at most a couple of `GET …/changes` requests and nothing else, and exactly one open — the
/// stream (`Upgrade: cr-changes/1`, answered `101`), which a parent that does not stream would
/// answer as a long-poll (it also says how long to wait).
#[test]
fn connected_parent_idle_child_follows_one_stream() {
    let root = Registry::start();
    let img = Image::new("linux/amd64", &[random_bytes(61, 4 * KIB)]);
    push_image(&root.url(""), "idle/app", "v1", &img);
    let proxy = Proxy::start(root.port);
    let child = Node::child(&proxy.endpoint(), json!({"repositories": ["idle/**"]}));
    wait_for_tag(
        &child,
        "idle/app",
        "v1",
        &img.digest,
        Duration::from_secs(30),
    );
    wait_long_poll(&proxy, &child);

    let n0 = proxy.request_count();
    let bytes0 = proxy.bytes_to_server() + proxy.bytes_to_client();
    std::thread::sleep(Duration::from_secs(5));
    let all = proxy.requests();
    let idle = &all[n0..];
    println!(
        "idle 5 s: {} requests, {} bytes: {:?}",
        idle.len(),
        proxy.bytes_to_server() + proxy.bytes_to_client() - bytes0,
        idle.iter().map(|r| &r.line).collect::<Vec<_>>()
    );
    assert!(
        idle.len() <= 2,
        "an idle child made {} requests\n{}",
        idle.len(),
        proxy_log(&proxy)
    );
    for r in idle {
        assert!(
            r.method == "GET" && r.path() == CHANGES,
            "idle request {:?}",
            r.line
        );
    }
    let in_flight: Vec<&Request> = all
        .iter()
        .filter(|r| r.path() == CHANGES && matches!(r.status, None | Some(101)))
        .collect();
    assert_eq!(
        in_flight.len(),
        1,
        "exactly one feed request open\n{}",
        proxy_log(&proxy)
    );
    let open = in_flight[0];
    assert_eq!(open.status, Some(101), "{}", proxy_log(&proxy));
    assert_eq!(open.header("upgrade"), Some("cr-changes/1"));
    let q = open.target.clone();
    assert!(
        q.contains("since=") && q.contains("wait=") && q.contains("heartbeat="),
        "stream query: {q}"
    );
    let wait: u64 = q
        .split(['?', '&'])
        .find_map(|kv| kv.strip_prefix("wait="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(wait >= 10, "a long-poll waits (asked wait={wait})");
    assert!(
        proxy.bytes_to_server() + proxy.bytes_to_client() - bytes0 < 4096,
        "idle traffic"
    );
}

/// The change-feed path applies the same selection as a full pass: tag include/exclude and the
/// platform filter hold for pushes that arrive as events; a tag deleted at the parent and a
/// manifest deleted by digest are deleted here; and a client polling the child while an event is
/// applied (throttled link) never sees the new tag before its content is complete.
#[test]
fn connected_parent_feed_applies_filters_deletes_and_never_shows_half_synced_tag() {
    let root = Registry::start();
    let r = root.url("");
    let seed = Image::new("linux/arm64", &[random_bytes(601, 4 * KIB)]);
    push_image(&r, "feed/app", "v0", &seed);
    let proxy = Proxy::start(root.port);
    let child = Node::child(
        &proxy.endpoint(),
        json!({
            "repositories": ["feed/**"],
            "tags": {"include": "^v", "exclude": "-rc"},
            "platforms": ["linux/arm64"],
        }),
    );
    let c = child.base();
    wait_for_tag(
        &child,
        "feed/app",
        "v0",
        &seed.digest,
        Duration::from_secs(30),
    );
    wait_long_poll(&proxy, &child);

    // Pushed while the child follows the feed.
    let index = Image::index(vec![
        Image::new("linux/amd64", &[random_bytes(602, 8 * KIB)]),
        Image::new("linux/arm64", &[random_bytes(603, 8 * KIB)]),
    ]);
    let rc = Image::new("linux/arm64", &[random_bytes(604, 4 * KIB)]);
    let latest = Image::new("linux/arm64", &[random_bytes(605, 4 * KIB)]);
    let v3 = Image::new("linux/arm64", &[random_bytes(606, 4 * KIB)]);
    push_image(&r, "feed/app", "v2-rc", &rc);
    push_image(&r, "feed/app", "latest", &latest);
    push_image(&r, "feed/app", "v1", &index);
    push_image(&r, "feed/app", "v3", &v3);
    wait_for_tag(
        &child,
        "feed/app",
        "v1",
        &index.digest,
        Duration::from_secs(5),
    );
    wait_for_tag(&child, "feed/app", "v3", &v3.digest, Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        tags(&c, "feed/app"),
        Some(vec!["v0".into(), "v1".into(), "v3".into()]),
        "tags arriving by the feed pass include ^v / exclude -rc{}",
        diag(&child)
    );
    assert_serves(&c, "feed/app", "v1", &index, Some(&["linux/arm64"]));
    let amd64 = index.child("linux/amd64");
    assert_eq!(
        get(&c, &format!("/v2/feed/app/manifests/{}", amd64.digest)).status,
        404,
        "the feed path ignored the platform filter"
    );
    let reqs = proxy.requests();
    // An untagged push event (the amd64 child pushed by digest before its index) may cost one
    // manifest GET (the event does not say whether it is a referrer); never its blobs.
    assert!(
        mentions(&reqs, &amd64.digest).len() <= 1,
        "the amd64 child manifest was fetched {} times",
        mentions(&reqs, &amd64.digest).len()
    );
    let mut filtered: Vec<(&str, &str)> = vec![
        ("v2-rc's manifest", &rc.digest),
        ("latest's manifest", &latest.digest),
    ];
    filtered.extend(
        amd64
            .blobs
            .iter()
            .map(|b| ("an amd64 blob", b.digest.as_str())),
    );
    filtered.extend(rc.blobs.iter().map(|b| ("a v2-rc blob", b.digest.as_str())));
    filtered.extend(
        latest
            .blobs
            .iter()
            .map(|b| ("a latest blob", b.digest.as_str())),
    );
    for (what, d) in filtered {
        assert!(
            mentions(&reqs, d).is_empty(),
            "filtered-out {what} {d} was requested by the feed path: {:?}\n{}",
            mentions(&reqs, d),
            proxy_log(&proxy)
        );
    }

    // A tag moved at the parent follows within 2 s.
    let v3b = Image::new("linux/arm64", &[random_bytes(609, 4 * KIB)]);
    push_image(&r, "feed/app", "v3", &v3b);
    let took = time_to_arrive(&c, "feed/app", "v3", &v3b.digest, Duration::from_secs(2));
    assert!(
        took.is_some(),
        "tag move by the feed did not arrive in 2 s{}",
        diag(&child)
    );
    assert_serves(&c, "feed/app", "v3", &v3b, None);

    // Deletes at the parent: a tag (the manifest stays), then a manifest by digest.
    let resp = delete(&r, "/v2/feed/app/manifests/v3");
    assert_eq!(resp.status, 202, "DELETE tag at the root: {}", resp.text());
    wait_for_404(&child, "feed/app", "v3", Duration::from_secs(3));
    delete_manifest(&r, "feed/app", &seed.digest);
    assert_eq!(get(&r, "/v2/feed/app/manifests/v0").status, 404);
    wait_for_404(&child, "feed/app", &seed.digest, Duration::from_secs(3));
    wait_for_404(&child, "feed/app", "v0", Duration::from_secs(3));
    assert_eq!(tags(&c, "feed/app"), Some(vec!["v1".into()]));

    // A big push over a slow link while a client polls the child.
    let mut expected = BTreeMap::new();
    expected.insert("v1".to_owned(), index.digest.clone());
    let big = Image::new(
        "linux/arm64",
        &[random_bytes(607, 512 * KIB), random_bytes(608, 64 * KIB)],
    );
    expected.insert("v4".to_owned(), big.digest.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_child(c.clone(), "feed/app".into(), expected, stop.clone());
    proxy.throttle(Some(256 * 1024));
    push_image(&r, "feed/app", "v4", &big);
    let took = wait_for_tag(
        &child,
        "feed/app",
        "v4",
        &big.digest,
        Duration::from_secs(20),
    );
    println!("576 KiB over a 256 KiB/s link by the feed: {took:?}");
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    let w = watcher.join().unwrap();
    assert!(
        w.violations.is_empty(),
        "a client saw incomplete content: {:#?}",
        w.violations
    );
    assert!(
        w.checks >= 10,
        "the watcher made too few checks ({})",
        w.checks
    );
    assert!(
        took >= Duration::from_millis(1500),
        "the throttle was not in the way ({took:?})"
    );
    assert_serves(&c, "feed/app", "v4", &big, None);
}

/// A child whose feed cursor the parent cannot serve (the parent was replaced by a fresh one:
/// `since` is beyond its log) gets 410 `MESSAGES_EXPIRED` and reconciles in full (trigger
/// `RecoveryService`): the new parent's content arrives and what it no longer has is removed.
#[test]
fn connected_parent_expired_cursor_gets_410_and_reconciles_in_full() {
    let old_root = Registry::start();
    let mut old = Vec::new();
    for i in 0..5u64 {
        let img = Image::new("linux/amd64", &[random_bytes(950 + i, 2 * KIB)]);
        push_image(&old_root.url(""), "reset/app", &format!("old{i}"), &img);
        old.push(img);
    }
    let proxy = Proxy::start(old_root.port);
    let child = Node::child(&proxy.endpoint(), json!({"repositories": ["reset/**"]}));
    let c = child.base();
    wait_for_tag(
        &child,
        "reset/app",
        "old4",
        &old[4].digest,
        Duration::from_secs(30),
    );
    wait_long_poll(&proxy, &child);

    let new_root = Registry::start();
    let img = Image::new("linux/amd64", &[random_bytes(960, 2 * KIB)]);
    push_image(&new_root.url(""), "reset/app", "new", &img);
    proxy.set_target(new_root.port);
    proxy.cut();
    wait_for_tag(
        &child,
        "reset/app",
        "new",
        &img.digest,
        Duration::from_secs(20),
    );
    assert_serves(&c, "reset/app", "new", &img, None);
    assert!(
        wait_until(Duration::from_secs(5), || tags(&c, "reset/app")
            == Some(vec!["new".into()])),
        "tags the new parent does not have are still here: {:?}",
        tags(&c, "reset/app")
    );
    let gone = proxy
        .requests()
        .into_iter()
        .find(|r| r.path() == CHANGES && r.status == Some(410));
    assert!(
        gone.is_some(),
        "no 410 from the change feed\n{}",
        proxy_log(&proxy)
    );
    let s = status(&c);
    assert_eq!(s["sync"]["trigger"], "RecoveryService", "{:#}", s["sync"]);
}

/// Referrers (an SBOM and a signature with `subject`, pushed by digest as oras does) of a synced
/// manifest arrive at the child: its referrers API lists them and serves their exact bytes; a
/// referrer pushed later arrives through the change feed.
#[test]
fn connected_parent_referrers_arrive() {
    let root = Registry::start();
    let r = root.url("");
    let img = Image::new("linux/amd64", &[random_bytes(71, 8 * KIB)]);
    push_image(&r, "sig/app", "v1", &img);
    let sbom = Image::artifact(
        &img,
        "application/spdx+json",
        b"{\"spdxVersion\":\"SPDX-2.3\"}",
    );
    let sig = Image::artifact(
        &img,
        "application/vnd.dev.cosign.simplesigning.v1+json",
        b"signature-bytes",
    );
    for a in [&sbom, &sig] {
        let resp = push_image(&r, "sig/app", &a.digest, a);
        assert_eq!(resp.header("oci-subject"), Some(img.digest.as_str()));
    }
    let referrers_path = format!("/v2/sig/app/referrers/{}", img.digest);
    let listed = |base: &str| -> BTreeMap<String, Value> {
        let resp = get(base, &referrers_path);
        if resp.status != 200 {
            return BTreeMap::new();
        }
        resp.json()["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|d| (d["digest"].as_str().unwrap().to_owned(), d.clone()))
            .collect()
    };
    assert_eq!(listed(&r).len(), 2, "the parent lists both referrers");

    let proxy = Proxy::start(root.port);
    let child = Node::child(&proxy.endpoint(), json!({"repositories": ["sig/**"]}));
    let c = child.base();
    wait_for_tag(
        &child,
        "sig/app",
        "v1",
        &img.digest,
        Duration::from_secs(30),
    );
    assert!(
        wait_until(Duration::from_secs(10), || listed(&c).len() == 2),
        "the child lists {:?}\n{}{}",
        listed(&c),
        proxy_log(&proxy),
        diag(&child)
    );
    let at_child = listed(&c);
    for a in [&sbom, &sig] {
        let d = &at_child[&a.digest];
        assert_eq!(d["mediaType"], OCI_MANIFEST);
        assert_eq!(d["size"], a.bytes.len());
        assert_eq!(d["artifactType"], a.artifact_type.as_deref().unwrap());
        assert_serves(&c, "sig/app", &a.digest, a, None);
    }
    assert_eq!(
        listed(&c),
        listed(&r),
        "the same referrer descriptors as the parent"
    );

    // A referrer pushed while the child follows the feed.
    wait_long_poll(&proxy, &child);
    let att = Image::artifact(&img, "application/vnd.in-toto+json", b"{\"predicate\":{}}");
    push_image(&r, "sig/app", &att.digest, &att);
    assert!(
        wait_until(Duration::from_secs(5), || listed(&c)
            .contains_key(&att.digest)),
        "a referrer pushed later did not arrive\n{}{}",
        proxy_log(&proxy),
        diag(&child)
    );
    assert_serves(&c, "sig/app", &att.digest, &att, None);
}

/// A chain of three nodes: a two-platform image pushed with skopeo at the root is pulled with
/// skopeo from the grandchild with the identical digest and bytes, and a later push travels both
/// hops through the change feeds.
#[test]
fn chain_root_child_grandchild() {
    let work = tmp();
    let root = Registry::start();
    let child = Node::child(&root.url(""), json!({"repositories": ["chain/**"]}));
    let grand = Node::child(&child.base(), json!({"repositories": ["chain/**"]}));
    let g = grand.base();

    let index = Image::index(vec![
        Image::new(
            "linux/amd64",
            &[random_bytes(81, 32 * KIB), random_bytes(82, 4 * KIB)],
        ),
        Image::new("linux/arm64", &[random_bytes(83, 32 * KIB)]),
    ]);
    skopeo_seed(work.path(), &root.host(), "chain/app", &[("v1", &index)]);
    let took = wait_for_tag(
        &grand,
        "chain/app",
        "v1",
        &index.digest,
        Duration::from_secs(30),
    );
    println!("root push -> grandchild: {took:?}");
    assert_serves(&child.base(), "chain/app", "v1", &index, None);
    assert_serves(&g, "chain/app", "v1", &index, None);
    let out = work.path().join("pulled");
    let digest = skopeo_pull(&grand.host(), "chain/app", "v1", &out);
    assert_eq!(
        digest, index.digest,
        "skopeo pulled a different digest from the grandchild"
    );
    for (d, b) in index.all_blobs() {
        let pulled = std::fs::read(out.join("blobs/sha256").join(&d[7..])).unwrap();
        assert!(
            pulled == b.bytes,
            "blob {d} pulled from the grandchild differs"
        );
    }

    // A second push at the root, both hops by change feed.
    let v2 = Image::new("linux/amd64", &[random_bytes(84, 4 * KIB)]);
    push_image(&root.url(""), "chain/app", "v2", &v2);
    let took = time_to_arrive(&g, "chain/app", "v2", &v2.digest, Duration::from_secs(5));
    println!("second push root -> grandchild: {took:?}");
    assert!(
        took.is_some(),
        "v2 did not reach the grandchild within 5 s{}{}",
        diag(&child),
        diag(&grand)
    );
    assert_serves(&g, "chain/app", "v2", &v2, None);
}
