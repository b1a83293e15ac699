//! Distribution as the parent: selection (tags, platforms, repository patterns), credentials,
//! moves and deletes followed by polling, a repository dropped from the selection,
//! `sync --once`, and `concurrency` with `bandwidthLimit`.

use super::*;

/// Against distribution: tags filtered by include/exclude, a two-platform index filtered to
/// linux/arm64 (only that child and its blobs arrive; the index keeps its exact bytes and digest),
/// a layer shared by two tags downloaded once, nothing of what was filtered out requested at all,
/// and the status records the finished pass.
#[test]
fn distribution_tags_platforms_and_shared_layers() {
    let work = tmp();
    let parent = Distribution::start();
    let shared = random_bytes(11, 300 * KIB);
    let v1 = Image::new("linux/amd64", &[shared.clone(), random_bytes(12, 10 * KIB)]);
    let v2 = Image::new("linux/amd64", &[shared.clone(), random_bytes(13, 10 * KIB)]);
    let rc = Image::new("linux/amd64", &[shared.clone(), random_bytes(14, 10 * KIB)]);
    let latest = Image::new("linux/amd64", &[random_bytes(15, 10 * KIB)]);
    skopeo_seed(
        work.path(),
        &parent.host(),
        "hello",
        &[
            ("v1", &v1),
            ("v2", &v2),
            ("v3-rc", &rc),
            ("latest", &latest),
        ],
    );
    let multi = Image::index(vec![
        Image::new("linux/amd64", &[random_bytes(16, 20 * KIB)]),
        // The shared layer again, in another repository: still downloaded only once.
        Image::new("linux/arm64", &[random_bytes(17, 20 * KIB), shared.clone()]),
    ]);
    skopeo_seed(work.path(), &parent.host(), "multi", &[("v1", &multi)]);
    // A Docker manifest list (pushed over HTTP: distribution keeps Docker media types as sent).
    let dlist = Image::docker_list(vec![
        Image::docker("linux/amd64", &[random_bytes(18, 20 * KIB)]),
        Image::docker("linux/arm64", &[random_bytes(19, 20 * KIB)]),
    ]);
    push_image(&parent.url(), "dlist", "v1", &dlist);
    assert_serves(&parent.url(), "dlist", "v1", &dlist, None);

    let proxy = Proxy::start(parent.port);
    let child = Node::child(
        &proxy.endpoint(),
        json!({
            "repositories": ["hello", "multi", "dlist"],
            "tags": {"include": "^v", "exclude": "-rc"},
            "platforms": ["linux/arm64"],
        }),
    );
    let c = child.base();
    let took = wait_for_tag(&child, "hello", "v2", &v2.digest, Duration::from_secs(30));
    wait_for_tag(&child, "hello", "v1", &v1.digest, Duration::from_secs(10));
    wait_for_tag(
        &child,
        "multi",
        "v1",
        &multi.digest,
        Duration::from_secs(10),
    );
    wait_for_tag(
        &child,
        "dlist",
        "v1",
        &dlist.digest,
        Duration::from_secs(10),
    );
    println!("initial sync from distribution: {took:?}");

    // Tags: exactly those passing include ^v and exclude -rc.
    assert_eq!(tags(&c, "hello"), Some(vec!["v1".into(), "v2".into()]));
    assert_serves(&c, "hello", "v1", &v1, None);
    assert_serves(&c, "hello", "v2", &v2, None);
    for reference in ["v3-rc", "latest", &rc.digest, &latest.digest] {
        let r = get(&c, &format!("/v2/hello/manifests/{reference}"));
        assert_eq!(r.status, 404, "filtered-out hello:{reference} is served");
    }

    // Platforms: the index with its exact bytes, only the arm64 child and its blobs.
    assert_eq!(tags(&c, "multi"), Some(vec!["v1".into()]));
    let n = assert_serves(&c, "multi", "v1", &multi, Some(&["linux/arm64"]));
    assert_eq!(n, 3, "arm64 config + 2 layers");
    assert_serves(&c, "multi", &multi.digest, &multi, Some(&["linux/arm64"]));
    let amd64 = multi.child("linux/amd64");
    assert_eq!(
        get(&c, &format!("/v2/multi/manifests/{}", amd64.digest)).status,
        404,
        "the amd64 child manifest was filtered out"
    );
    for b in &amd64.blobs {
        assert_eq!(
            get(&c, &format!("/v2/multi/blobs/{}", b.digest)).status,
            404
        );
    }
    // The same for a Docker manifest list.
    assert_serves(&c, "dlist", "v1", &dlist, Some(&["linux/arm64"]));
    let d_amd64 = dlist.child("linux/amd64");
    assert_eq!(
        get(&c, &format!("/v2/dlist/manifests/{}", d_amd64.digest)).status,
        404
    );

    // What went over the wire: the shared layer once, nothing filtered out, no blob twice.
    let reqs = proxy.requests();
    let shared_digest = sha256(&shared);
    assert_eq!(
        blob_gets(&reqs, &shared_digest).len(),
        1,
        "the layer shared by hello:v1, hello:v2 and multi:v1 (arm64) must be downloaded once\n{}",
        proxy_log(&proxy)
    );
    let mut excluded: Vec<&str> = vec![&amd64.digest, &rc.digest, &latest.digest, &d_amd64.digest];
    excluded.extend(amd64.blobs.iter().map(|b| b.digest.as_str()));
    excluded.extend(d_amd64.blobs.iter().map(|b| b.digest.as_str()));
    excluded.push(&rc.blobs[0].digest);
    excluded.push(&rc.blobs[2].digest);
    excluded.extend(latest.blobs.iter().map(|b| b.digest.as_str()));
    for d in excluded {
        assert!(
            mentions(&reqs, d).is_empty(),
            "filtered-out content {d} was requested: {:?}",
            mentions(&reqs, d)
        );
    }
    let mut per_blob: BTreeMap<String, usize> = BTreeMap::new();
    for r in reqs
        .iter()
        .filter(|r| r.method == "GET" && r.path().contains("/blobs/"))
    {
        *per_blob
            .entry(r.path().rsplit('/').next().unwrap().to_owned())
            .or_default() += 1;
    }
    let twice: Vec<_> = per_blob.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "blobs downloaded more than once: {twice:?}"
    );
    // Exactly the blobs of hello:v1, hello:v2 and the two arm64 images.
    let mut wanted: Vec<String> = Vec::new();
    for img in [
        &v1,
        &v2,
        multi.child("linux/arm64"),
        dlist.child("linux/arm64"),
    ] {
        wanted.extend(img.blobs.iter().map(|b| b.digest.clone()));
    }
    wanted.sort();
    wanted.dedup();
    assert_eq!(per_blob.keys().cloned().collect::<Vec<_>>(), wanted);

    // Status: a finished, successful pass with its counts.
    assert!(
        wait_until(Duration::from_secs(10), || {
            status(&c)["sync"]["lastSuccessfulSyncEndTime"].is_string()
        }),
        "no lastSuccessfulSyncEndTime{}",
        diag(&child)
    );
    let s = status(&c);
    let sync = &s["sync"];
    assert_eq!(sync["state"], "Succeeded", "{s:#}");
    assert!(sync["lastSyncStartTime"].is_string(), "{s:#}");
    assert!(sync["lastSyncEndTime"].is_string(), "{s:#}");
    let bytes = &sync["progress"]["bytes"];
    assert_eq!(bytes["done"], bytes["total"], "{s:#}");
    assert!(bytes["total"].as_u64().unwrap() > 0, "{s:#}");
    assert_eq!(s["parent"]["endpoint"], proxy.endpoint());
}

/// Repository patterns: `apps/**` matches any depth below apps/, `team/*` one component only;
/// globs need the parent's catalog, and only matching repositories arrive.
#[test]
fn distribution_glob_repository_patterns() {
    let work = tmp();
    let parent = Distribution::start();
    let repos = [
        "apps/web",
        "apps/api/v2",
        "apps-old/x",
        "team/a",
        "team/a/b",
        "other",
    ];
    let mut images = BTreeMap::new();
    for (i, repo) in repos.iter().enumerate() {
        let img = Image::new("linux/amd64", &[random_bytes(100 + i as u64, 2 * KIB)]);
        skopeo_seed(work.path(), &parent.host(), repo, &[("1.0", &img)]);
        images.insert(*repo, img);
    }
    let proxy = Proxy::start(parent.port);
    let child = Node::child(
        &proxy.endpoint(),
        json!({"repositories": ["apps/**", "team/*"]}),
    );
    let c = child.base();
    for repo in ["apps/web", "apps/api/v2", "team/a"] {
        wait_for_tag(
            &child,
            repo,
            "1.0",
            &images[repo].digest,
            Duration::from_secs(30),
        );
        assert_serves(&c, repo, "1.0", &images[repo], None);
        assert_eq!(tags(&c, repo), Some(vec!["1.0".to_owned()]));
    }
    // Give a second cycle the chance to (wrongly) add the others.
    std::thread::sleep(Duration::from_secs(1));
    for repo in ["apps-old/x", "team/a/b", "other"] {
        assert_eq!(tags(&c, repo), None, "{repo} does not match the patterns");
        let r = get(&c, &format!("/v2/{repo}/manifests/{}", images[repo].digest));
        assert_eq!(r.status, 404);
        assert!(mentions(&proxy.requests(), &format!("/v2/{repo}/")).is_empty());
    }
    assert!(
        !proxy.matching("GET", |p| p == "/v2/_catalog").is_empty(),
        "globs are resolved with the parent's catalog\n{}",
        proxy_log(&proxy)
    );
}

/// A parent that requires credentials: the sync token goes as Basic auth; a wrong password
/// shows as `AuthenticationFailed` (and nothing is synced); the right one syncs.
#[test]
fn distribution_sync_token_auth() {
    let work = tmp();
    let parent = Distribution::start_with_auth(Some(("factorya-sync", "s3cret-pass")));
    let img = Image::new("linux/amd64", &[random_bytes(801, 8 * KIB)]);
    skopeo_seed_as(
        work.path(),
        &parent.host(),
        "secure/app",
        &[("v1", &img)],
        Some("factorya-sync:s3cret-pass"),
    );
    assert_eq!(get(&parent.url(), "/v2/secure/app/tags/list").status, 401);
    let config = |password: &str| {
        json!({"parent": {
            "endpoint": parent.url(),
            "syncToken": {"name": "factorya-sync", "password": password},
            "sync": {"repositories": ["secure/app"]},
        }})
    };
    let mut child = Node::with_config(config("wrong-password"));
    let c = child.base();
    assert!(
        wait_until(Duration::from_secs(20), || {
            detail_codes(&status(&c))
                .iter()
                .any(|code| code == "AuthenticationFailed")
        }),
        "statusDetails never showed AuthenticationFailed{}",
        diag(&child)
    );
    assert_eq!(tags(&c, "secure/app"), None);

    child.terminate();
    child.rewrite_config(config("s3cret-pass"));
    child.restart();
    wait_for_tag(
        &child,
        "secure/app",
        "v1",
        &img.digest,
        Duration::from_secs(30),
    );
    assert_serves(&c, "secure/app", "v1", &img, None);
}

/// Against distribution (polling every 5 s): an idle cycle downloads nothing (tags/list and
/// HEAD only), a tag moved at the parent follows here, a manifest deleted at the parent (and the
/// tag on it) is deleted here, and an untouched tag stays.
#[test]
fn distribution_tag_move_and_delete_followed() {
    let work = tmp();
    let parent = Distribution::start();
    let a = Image::new("linux/amd64", &[random_bytes(21, 8 * KIB)]);
    let b = Image::new("linux/amd64", &[random_bytes(22, 8 * KIB)]);
    let cc = Image::new("linux/amd64", &[random_bytes(23, 8 * KIB)]);
    skopeo_seed(
        work.path(),
        &parent.host(),
        "app",
        &[("v1", &a), ("v2", &b), ("v3", &cc)],
    );
    let proxy = Proxy::start(parent.port);
    let child = Node::child(&proxy.endpoint(), json!({"repositories": ["app"]}));
    let c = child.base();
    for (tag, img) in [("v1", &a), ("v2", &b), ("v3", &cc)] {
        wait_for_tag(&child, "app", tag, &img.digest, Duration::from_secs(30));
    }

    // Idle: over more than one polling cycle, nothing is downloaded again.
    std::thread::sleep(Duration::from_millis(500));
    let n0 = proxy.request_count();
    std::thread::sleep(Duration::from_secs(6));
    let idle: Vec<Request> = proxy.requests()[n0..].to_vec();
    println!(
        "idle cycle against distribution ({} requests in 6 s):\n{}",
        idle.len(),
        idle.iter()
            .map(|r| format!("  {}", r.line))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        idle.iter()
            .any(|r| r.method == "GET" && r.path() == "/v2/app/tags/list"),
        "the child polls a plain OCI parent every 5 s\n{}{}",
        proxy_log(&proxy),
        diag(&child)
    );
    let downloads: Vec<&Request> = idle
        .iter()
        .filter(|r| {
            r.method == "GET" && (r.path().contains("/blobs/") || r.path().contains("/manifests/"))
        })
        .collect();
    assert!(
        downloads.is_empty(),
        "an idle cycle downloaded: {downloads:?}"
    );

    // Move v1 to a new image; delete b (distribution drops v2 with it).
    let d = Image::new("linux/amd64", &[random_bytes(24, 8 * KIB)]);
    skopeo_seed(work.path(), &parent.host(), "app", &[("v1", &d)]);
    delete_manifest(&parent.url(), "app", &b.digest);
    assert_eq!(get(&parent.url(), "/v2/app/manifests/v2").status, 404);

    let took = wait_for_tag(&child, "app", "v1", &d.digest, Duration::from_secs(20));
    println!("tag move followed in {took:?}");
    assert_serves(&c, "app", "v1", &d, None);
    wait_for_404(&child, "app", "v2", Duration::from_secs(15));
    assert_eq!(
        get(&c, &format!("/v2/app/manifests/{}", b.digest)).status,
        404,
        "a manifest deleted at the parent is deleted here"
    );
    assert_eq!(tags(&c, "app"), Some(vec!["v1".into(), "v3".into()]));
    assert_serves(&c, "app", "v3", &cc, None);
    // Only the new image was downloaded for the move: its layer exactly once.
    assert_eq!(blob_gets(&proxy.requests(), &d.blobs[1].digest).len(), 1);
    assert_eq!(blob_gets(&proxy.requests(), &a.blobs[1].digest).len(), 1);
}

/// A repository dropped from `parent.sync.repositories` (node restarted with the new config) is
/// pruned here: its tags, manifests and blobs are gone from the API; the kept one stays.
#[test]
fn distribution_repository_dropped_from_selection_is_pruned() {
    let work = tmp();
    let parent = Distribution::start();
    let keep = Image::new("linux/amd64", &[random_bytes(31, 4 * KIB)]);
    let drop_img = Image::new("linux/amd64", &[random_bytes(32, 4 * KIB)]);
    skopeo_seed(work.path(), &parent.host(), "keep", &[("v1", &keep)]);
    skopeo_seed(work.path(), &parent.host(), "dropme", &[("v1", &drop_img)]);
    let mut child = Node::child(&parent.url(), json!({"repositories": ["keep", "dropme"]}));
    let c = child.base();
    wait_for_tag(&child, "keep", "v1", &keep.digest, Duration::from_secs(30));
    wait_for_tag(
        &child,
        "dropme",
        "v1",
        &drop_img.digest,
        Duration::from_secs(30),
    );

    let exit = child.terminate();
    assert!(exit.success(), "SIGTERM exit: {exit}");
    child.rewrite_config(child_config(
        &parent.url(),
        json!({"repositories": ["keep"]}),
    ));
    child.restart();

    wait_for_404(&child, "dropme", "v1", Duration::from_secs(20));
    assert_eq!(
        tags(&c, "dropme"),
        None,
        "a pruned repository has no tags/list"
    );
    assert_eq!(
        get(&c, &format!("/v2/dropme/manifests/{}", drop_img.digest)).status,
        404
    );
    for b in &drop_img.blobs {
        assert_eq!(
            get(&c, &format!("/v2/dropme/blobs/{}", b.digest)).status,
            404
        );
    }
    assert_serves(&c, "keep", "v1", &keep, None);
    // The parent still has it: pruning is local.
    assert_eq!(
        manifest_digest(&parent.url(), "dropme", "v1"),
        Some(drop_img.digest.clone())
    );
}

/// `connected-registry sync --once`: exit 0 with a summary after a full pass whose content a
/// node then serves; a second pass downloads nothing; with the parent down it exits non-zero
/// and says why.
#[test]
fn sync_once_exit_codes_and_output() {
    let work = tmp();
    let parent = Distribution::start();
    let index = Image::index(vec![
        Image::new("linux/amd64", &[random_bytes(41, 16 * KIB)]),
        Image::new("linux/arm64", &[random_bytes(42, 16 * KIB)]),
    ]);
    let lib = Image::new("linux/amd64", &[random_bytes(43, 16 * KIB)]);
    skopeo_seed(work.path(), &parent.host(), "once/app", &[("v1", &index)]);
    skopeo_seed(
        work.path(),
        &parent.host(),
        "once/lib",
        &[("v1", &lib), ("v2", &lib)],
    );
    let proxy = Proxy::start(parent.port);
    let config = work.path().join("child.json");
    std::fs::write(
        &config,
        child_config(&proxy.endpoint(), json!({"repositories": ["once/**"]})).to_string(),
    )
    .unwrap();
    let mut node = Registry::start();
    node.terminate();
    let data = node.data_dir.to_str().unwrap().to_owned();
    let args = [
        "sync",
        "--once",
        "--config",
        config.to_str().unwrap(),
        "--data-dir",
        &data,
    ];

    let out = run_cli(&args, Duration::from_secs(60));
    let text = plain(&format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ));
    println!("sync --once output:\n{text}");
    assert!(
        out.status.success(),
        "sync --once failed ({}):\n{text}",
        out.status
    );
    assert!(!text.trim().is_empty(), "sync --once prints a summary");
    assert!(
        text.contains("manifests") || text.contains("blobs"),
        "the summary counts manifests/blobs:\n{text}"
    );

    node.restart();
    let c = node.url("");
    assert_serves(&c, "once/app", "v1", &index, None);
    assert_serves(&c, "once/lib", "v1", &lib, None);
    assert_serves(&c, "once/lib", "v2", &lib, None);
    node.terminate();

    // Nothing changed: a second pass downloads no blob.
    let n0 = proxy.request_count();
    let out = run_cli(&args, Duration::from_secs(60));
    assert!(out.status.success(), "second pass: {out:?}");
    let again: Vec<Request> = proxy.requests()[n0..].to_vec();
    let blob_downloads: Vec<&str> = again
        .iter()
        .filter(|r| r.method == "GET" && r.path().contains("/blobs/"))
        .map(|r| r.line.as_str())
        .collect();
    assert!(
        blob_downloads.is_empty(),
        "second pass downloaded {blob_downloads:?}"
    );

    // Parent down: non-zero exit, and the output says what failed.
    proxy.set_down(true);
    let t = Instant::now();
    let out = run_cli(&args, Duration::from_secs(120));
    let text = plain(&format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ));
    println!(
        "sync --once with the parent down ({:?}):\n{text}",
        t.elapsed()
    );
    assert!(
        !out.status.success(),
        "sync --once must fail with the parent down:\n{text}"
    );
    let lower = text.to_lowercase();
    assert!(
        lower.contains("unreachable")
            || lower.contains("connect")
            || lower.contains(&proxy.port.to_string()),
        "the failure names the parent or the cause:\n{text}"
    );
}

/// `concurrency` and `bandwidthLimit`: blob downloads overlap (at most `concurrency` at once)
/// and together stay under the limit.
#[test]
fn distribution_concurrency_and_bandwidth_limit() {
    let work = tmp();
    let parent = Distribution::start();
    let images: Vec<Image> = (0..4u64)
        .map(|i| Image::new("linux/amd64", &[random_bytes(500 + i, 384 * KIB)]))
        .collect();
    let tagged: Vec<(String, &Image)> = images
        .iter()
        .enumerate()
        .map(|(i, img)| (format!("t{i}"), img))
        .collect();
    let seed: Vec<(&str, &Image)> = tagged.iter().map(|(t, i)| (t.as_str(), *i)).collect();
    skopeo_seed(work.path(), &parent.host(), "bw/app", &seed);
    let proxy = Proxy::start(parent.port);
    let child = Node::child(
        &proxy.endpoint(),
        json!({"repositories": ["bw/app"], "concurrency": 2, "bandwidthLimit": "512KiB/s"}),
    );
    // Time it as the child sees it (from the first layer request to the last tag visible): the
    // parent's side of the wire runs ahead by what the socket buffers hold.
    let is_layer =
        |r: &Request| r.method == "GET" && r.path().contains("/blobs/") && r.response_bytes > 4096;
    assert!(
        proxy.wait_for(Duration::from_secs(30), |reqs| reqs.iter().any(is_layer)),
        "no layer download started\n{}{}",
        proxy_log(&proxy),
        diag(&child)
    );
    let t0 = Instant::now();
    for (tag, img) in &tagged {
        wait_for_tag(&child, "bw/app", tag, &img.digest, Duration::from_secs(30));
    }
    let span = t0.elapsed();
    let layers: Vec<Request> = proxy
        .requests()
        .into_iter()
        .filter(|r| {
            r.method == "GET" && r.path().contains("/blobs/") && r.response_bytes > 300 * 1024
        })
        .collect();
    assert_eq!(layers.len(), 4, "{}", proxy_log(&proxy));
    let bytes: u64 = layers.iter().map(|r| r.response_bytes).sum();
    let rate = bytes as f64 / span.as_secs_f64();
    // Downloads running at once: at 512 KiB/s a 384 KiB layer takes at least 0.5 s (past a
    // quarter-second burst), so layer requests that start within 0.3 s of each other overlap.
    let mut max_overlap = 0;
    for r in &layers {
        let overlap = layers
            .iter()
            .filter(|o| o.at >= r.at && o.at < r.at + Duration::from_millis(300))
            .count();
        max_overlap = max_overlap.max(overlap);
    }
    println!(
        "1.5 MiB of layers in {span:?} ({:.0} KiB/s), at most {max_overlap} at once",
        rate / 1024.0
    );
    // A limiter may allow a burst of up to one second's worth; past that, 512 KiB/s (+10%).
    let limit = 512.0 * 1024.0;
    let min_span = (bytes as f64 - limit) / (limit * 1.1);
    assert!(
        span.as_secs_f64() >= min_span,
        "{bytes} bytes in {span:?} ({:.0} KiB/s) is over the 512KiB/s limit\n{}",
        rate / 1024.0,
        proxy_log(&proxy)
    );
    assert!(
        max_overlap <= 2,
        "more than `concurrency` downloads at once\n{}",
        proxy_log(&proxy)
    );
    assert_eq!(
        max_overlap,
        2,
        "downloads do not run concurrently\n{}",
        proxy_log(&proxy)
    );
}
