//! Sync (issue 3, "How it is shown"): a child node keeps a chosen subset of its parent here.
//!
//! Parents are the real thing: Debian's `docker-registry` (CNCF distribution 2.8) seeded with
//! `skopeo` from hand-built OCI layouts, or another `connected-registry` node. Between child and
//! parent sits a TCP proxy the test controls (tests/common/proxy.rs): it counts every request
//! the child makes and the bytes the parent serves, and it cuts, stalls, throttles or refuses
//! connections. Every test checks bytes, digests and status codes at the child; each starts its
//! own processes on free ports with temp dirs, so they run in parallel.

use crate::common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::peers::*;
use common::proxy::{Proxy, Request};
use common::{sha256, Registry};
use serde_json::{json, Value};

const CHANGES: &str = "/acr/connected-registry/v1/changes";

// ---- helpers ---------------------------------------------------------------------------------

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The status JSON, or why it could not be read (never panics: used in failure messages).
fn try_status(base: &str) -> String {
    match reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
        .get(format!("{base}/acr/connected-registry/v1/status"))
        .send()
    {
        Ok(r) => r.text().unwrap_or_default(),
        Err(e) => format!("(status unavailable: {e})"),
    }
}

/// The node's log without the per-request lines of the API (the tests poll a lot).
fn sync_log(node: &Registry) -> String {
    plain(&node.log_text())
        .lines()
        .filter(|l| !l.contains("connected_registry::api:"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// What to print when a test fails at a child: its status and the end of its log.
fn diag(node: &Registry) -> String {
    format!(
        "\n--- child status ---\n{}\n--- child log (tail) ---\n{}",
        try_status(&node.url("")),
        tail(&sync_log(node), 60)
    )
}

fn proxy_log(proxy: &Proxy) -> String {
    let lines: Vec<String> = proxy
        .requests()
        .iter()
        .map(|r| {
            format!(
                "  [{:>6.2}s c{}] {} -> {:?} {}B{}",
                r.at.as_secs_f64(),
                r.conn,
                r.line,
                r.status,
                r.response_bytes,
                r.header("range")
                    .map(|v| format!(" (Range: {v})"))
                    .unwrap_or_default()
            )
        })
        .collect();
    format!(
        "--- requests through the proxy ---\n{}",
        tail(&lines.join("\n"), 80)
    )
}

/// Wait until the child serves `repo:tag` with `digest`; returns how long it took.
fn wait_for_tag(
    node: &Registry,
    repo: &str,
    tag: &str,
    digest: &str,
    timeout: Duration,
) -> Duration {
    let start = Instant::now();
    let base = node.url("");
    let ok = wait_until(timeout, || {
        manifest_digest(&base, repo, tag).as_deref() == Some(digest)
    });
    assert!(
        ok,
        "{repo}:{tag} did not reach {digest} at the child within {timeout:?}{}",
        diag(node)
    );
    start.elapsed()
}

/// Wait until `GET /v2/<repo>/manifests/<reference>` is a 404 at the child.
fn wait_for_404(node: &Registry, repo: &str, reference: &str, timeout: Duration) {
    let base = node.url("");
    let ok = wait_until(timeout, || {
        get(&base, &format!("/v2/{repo}/manifests/{reference}")).status == 404
    });
    assert!(
        ok,
        "{repo}:{reference} is still served at the child after {timeout:?}{}",
        diag(node)
    );
}

/// The status once the pass that brought the content has ended `Succeeded` (read at once: a
/// later pass starts its own counts).
fn succeeded_status(node: &Registry) -> Value {
    let base = node.url("");
    assert!(
        wait_until(Duration::from_secs(5), || status(&base)["sync"]["state"]
            == "Succeeded"),
        "the pass did not end Succeeded{}",
        diag(node)
    );
    status(&base)
}

/// A Succeeded pass's progress counts are whole: done == total for repositories, manifests,
/// blobs and bytes.
fn assert_progress_complete(s: &Value) {
    let p = &s["sync"]["progress"];
    for key in ["repositories", "manifests", "blobs", "bytes"] {
        assert_eq!(
            p[key]["done"], p[key]["total"],
            "a Succeeded pass reports {key} {} of {}: {:#}",
            p[key]["done"], p[key]["total"], s["sync"]
        );
    }
}

/// GET requests for `/v2/<repo>/blobs/<digest>` (any repo).
fn blob_gets(requests: &[Request], digest: &str) -> Vec<Request> {
    requests
        .iter()
        .filter(|r| r.method == "GET" && r.path().ends_with(&format!("/blobs/{digest}")))
        .cloned()
        .collect()
}

/// Any request whose path names `digest`.
fn mentions(requests: &[Request], digest: &str) -> Vec<String> {
    requests
        .iter()
        .filter(|r| r.target.contains(digest))
        .map(|r| r.line.clone())
        .collect()
}

/// `Range: bytes=N-` → N.
fn range_start(r: &Request) -> Option<u64> {
    let v = r.header("range")?;
    let v = v.strip_prefix("bytes=")?;
    let (start, _) = v.split_once('-')?;
    start.trim().parse().ok()
}

/// The layers and config of a manifest document, as (digest, size).
fn blob_refs(manifest: &Value) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    if manifest["config"].is_object() {
        out.push((
            manifest["config"]["digest"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
            manifest["config"]["size"].as_u64().unwrap_or(0),
        ));
    }
    for l in manifest["layers"].as_array().into_iter().flatten() {
        out.push((
            l["digest"].as_str().unwrap_or("").to_owned(),
            l["size"].as_u64().unwrap_or(0),
        ));
    }
    out
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

// ---- the proxy itself ------------------------------------------------------------------------

/// The proxy forwards, records request lines and headers with the status and bytes of each
/// response, skips request bodies, and its controls do what they say: throttle slows the
/// server → client direction, stall holds bytes without closing, cut closes open connections,
/// down refuses new ones.
#[test]
fn proxy_counts_and_controls_work() {
    let reg = Registry::start();
    let base = reg.url("");
    let blob = Blob::new("application/octet-stream", random_bytes(99, 256 * KIB));
    push_blob(&base, "proxytest", &blob);
    let proxy = Proxy::start(reg.port);
    let p = proxy.endpoint();
    let blob_path = format!("/v2/proxytest/blobs/{}", blob.digest);

    // Forwarding and recording.
    assert_eq!(get(&p, "/v2/").status, 200);
    let r = get(&p, &blob_path);
    assert_eq!(r.status, 200);
    assert!(r.body == blob.bytes);
    let reqs = proxy.requests();
    assert_eq!(reqs.len(), 2, "{}", proxy_log(&proxy));
    assert_eq!(reqs[0].line, "GET /v2/ HTTP/1.1");
    assert_eq!(reqs[0].status, Some(200));
    assert_eq!(reqs[1].line, format!("GET {blob_path} HTTP/1.1"));
    assert!(reqs[1].response_bytes >= blob.bytes.len() as u64);
    assert!(reqs[1].response_bytes < blob.bytes.len() as u64 + 2048);
    assert!(proxy.bytes_to_client() >= blob.bytes.len() as u64);
    assert!(proxy.connections() >= 1);

    // A Range header is recorded, and the 206 that answers it.
    let r = request(
        reqwest::Method::GET,
        &p,
        &blob_path,
        &[("Range", "bytes=1000-")],
        None,
    );
    assert_eq!(r.status, 206);
    assert!(r.body[..] == blob.bytes[1000..]);
    let last = proxy.requests().pop().unwrap();
    assert_eq!(range_start(&last), Some(1000));
    assert_eq!(last.status, Some(206));

    // A request body that looks like a request is not counted as one.
    let n = proxy.request_count();
    let fake = b"GET /not-a-request HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    let r = request(
        reqwest::Method::POST,
        &p,
        "/v2/proxytest/blobs/uploads/",
        &[],
        Some(fake),
    );
    assert!(r.status >= 200);
    assert_eq!(proxy.request_count(), n + 1, "{}", proxy_log(&proxy));

    // Throttle: 256 KiB at 128 KiB/s takes about 2 s.
    proxy.throttle(Some(128 * 1024));
    let t = Instant::now();
    assert!(get(&p, &blob_path).body == blob.bytes);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(1500),
        "throttled GET took {took:?}"
    );
    assert!(took < Duration::from_secs(6), "throttled GET took {took:?}");
    proxy.throttle(None);

    // Stall: nothing moves while stalled, everything arrives after.
    proxy.stall(true);
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let (p, path) = (p.clone(), blob_path.clone());
        std::thread::spawn(move || tx.send(get(&p, &path).body).unwrap());
    }
    assert!(
        rx.recv_timeout(Duration::from_millis(700)).is_err(),
        "a stalled proxy forwarded"
    );
    proxy.stall(false);
    let body = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("unstalled GET finishes");
    assert!(body == blob.bytes);

    // Cut: an in-flight (throttled) download is closed mid-body.
    proxy.throttle(Some(32 * 1024));
    let n = proxy.request_count();
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let p = p.clone();
        let path = blob_path.clone();
        std::thread::spawn(move || {
            let got = reqwest::blocking::get(format!("{p}{path}")).and_then(|r| r.bytes());
            tx.send(got.map(|b| b.len())).unwrap();
        });
    }
    assert!(proxy.wait_for(Duration::from_secs(5), |reqs| {
        reqs.get(n).is_some_and(|r| r.response_bytes > 1024)
    }));
    assert!(proxy.open_connections() >= 1);
    proxy.cut();
    let got = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("cut GET returns");
    assert!(got.is_err(), "a cut download must fail, got {got:?}");
    assert_eq!(proxy.open_connections(), 0);
    proxy.throttle(None);

    // Corrupt: the body's first byte flipped, same length; off again, intact.
    proxy.corrupt(Some(&blob.digest));
    let r = get(&p, &blob_path);
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), blob.bytes.len());
    assert_eq!(r.body[0], blob.bytes[0] ^ 0xff);
    assert!(r.body[1..] == blob.bytes[1..]);
    assert_eq!(proxy.corrupted(), 1);
    assert_eq!(get(&p, "/v2/").status, 200, "other requests pass untouched");
    proxy.corrupt(None);
    assert!(get(&p, &blob_path).body == blob.bytes);

    // Strip range: the server sees no Range header and sends it all; the log shows it was sent.
    proxy.strip_range(true);
    let r = request(
        reqwest::Method::GET,
        &p,
        &blob_path,
        &[("Range", "bytes=1000-")],
        None,
    );
    assert_eq!(r.status, 200);
    assert!(r.body == blob.bytes);
    assert_eq!(range_start(&proxy.requests().pop().unwrap()), Some(1000));
    proxy.strip_range(false);

    // Down: new connections are refused until it is up again.
    proxy.set_down(true);
    let before = proxy.refused();
    assert!(reqwest::blocking::get(format!("{p}/v2/")).is_err());
    assert!(proxy.refused() > before);
    proxy.set_down(false);
    assert_eq!(get(&p, "/v2/").status, 200);
}

// ---- distribution as the parent --------------------------------------------------------------

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

// ---- connected-registry as the parent --------------------------------------------------------

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

// ---- faults ----------------------------------------------------------------------------------

/// A blob download cut in the middle resumes with `Range: bytes=N-` from what is on disk: the
/// parent serves the blob's bytes about once in total, not twice.
#[test]
fn fault_cut_mid_blob_resumes_with_range() {
    let work = tmp();
    let parent = Distribution::start();
    let layer = random_bytes(91, MIB);
    let img = Image::new("linux/amd64", std::slice::from_ref(&layer));
    let layer_digest = sha256(&layer);
    skopeo_seed(work.path(), &parent.host(), "resume/app", &[("v1", &img)]);
    let proxy = Proxy::start(parent.port);
    proxy.throttle(Some(256 * 1024));
    let child = Node::child(&proxy.endpoint(), json!({"repositories": ["resume/app"]}));

    let started = proxy.wait_for(Duration::from_secs(30), |reqs| {
        blob_gets(reqs, &layer_digest)
            .iter()
            .any(|r| r.response_bytes >= 300 * 1024)
    });
    assert!(
        started,
        "the layer download never got going\n{}{}",
        proxy_log(&proxy),
        diag(&child)
    );
    proxy.cut();
    std::thread::sleep(Duration::from_millis(100));
    let before_cut = blob_gets(&proxy.requests(), &layer_digest)[0].response_bytes;
    proxy.throttle(None);

    wait_for_tag(
        &child,
        "resume/app",
        "v1",
        &img.digest,
        Duration::from_secs(30),
    );
    assert_serves(&child.base(), "resume/app", "v1", &img, None);

    let gets = blob_gets(&proxy.requests(), &layer_digest);
    let log = proxy_log(&proxy);
    assert!(gets.len() >= 2, "expected a second, resumed request\n{log}");
    assert_eq!(
        range_start(&gets[0]).unwrap_or(0),
        0,
        "the first request starts at 0"
    );
    let resumed: Vec<&Request> = gets[1..]
        .iter()
        .filter(|r| range_start(r).unwrap_or(0) > 0)
        .collect();
    assert!(
        !resumed.is_empty(),
        "no `Range: bytes=N-` request after the cut\n{log}"
    );
    let n = range_start(resumed[0]).unwrap();
    assert!(
        n <= before_cut,
        "resumed at {n}, but only {before_cut} bytes had been served"
    );
    assert!(
        n >= 64 * 1024,
        "resumed at {n}: most of the {before_cut} bytes received were thrown away"
    );
    assert_eq!(resumed[0].status, Some(206), "{log}");
    let total: u64 = gets.iter().map(|r| r.response_bytes).sum();
    println!(
        "layer {} bytes; served {total} bytes over {} requests; resumed at {n}",
        layer.len(),
        gets.len()
    );
    assert!(total >= layer.len() as u64);
    assert!(
        total <= layer.len() as u64 + layer.len() as u64 / 10,
        "the parent served {total} bytes for a {}-byte blob: not resumed\n{log}",
        layer.len()
    );
    let partial = child.data_path(&format!("partial/sha256-{}", &layer_digest[7..]));
    assert!(
        !partial.exists(),
        "the partial file {partial:?} is left behind"
    );
}

/// A parent (or a link) that serves a blob whose bytes do not match its digest: the child
/// refuses it, records `DigestMismatch`, never shows the tag, keeps no poisoned partial file
/// to resume from; once the bytes are right again the tag arrives intact.
#[test]
fn fault_corrupted_blob_is_rejected_with_digest_mismatch() {
    let work = tmp();
    let parent = Distribution::start();
    let good = Image::new("linux/amd64", &[random_bytes(701, 4 * KIB)]);
    let img = Image::new("linux/amd64", &[random_bytes(702, 128 * KIB)]);
    let layer = img.blobs[1].digest.clone();
    skopeo_seed(
        work.path(),
        &parent.host(),
        "bad/app",
        &[("v0", &good), ("v1", &img)],
    );
    let proxy = Proxy::start(parent.port);
    proxy.corrupt(Some(&layer));
    let child = Node::child(&proxy.endpoint(), json!({"repositories": ["bad/app"]}));
    let c = child.base();
    wait_for_tag(
        &child,
        "bad/app",
        "v0",
        &good.digest,
        Duration::from_secs(30),
    );
    assert!(
        wait_until(Duration::from_secs(20), || {
            detail_codes(&status(&c))
                .iter()
                .any(|code| code == "DigestMismatch")
        }),
        "statusDetails never showed DigestMismatch (corrupted {} responses){}",
        proxy.corrupted(),
        diag(&child)
    );
    assert!(proxy.corrupted() >= 1);
    let s = status(&c);
    println!(
        "with a corrupted layer: state {}, details {:?}",
        s["sync"]["state"],
        detail_codes(&s)
    );
    assert_eq!(
        tags(&c, "bad/app"),
        Some(vec!["v0".to_owned()]),
        "v1 must not be visible"
    );
    assert_eq!(get(&c, "/v2/bad/app/manifests/v1").status, 404);
    assert_eq!(get(&c, &format!("/v2/bad/app/blobs/{layer}")).status, 404);

    proxy.corrupt(None);
    let took = wait_for_tag(
        &child,
        "bad/app",
        "v1",
        &img.digest,
        Duration::from_secs(40),
    );
    println!("arrived {took:?} after the link stopped corrupting");
    assert_serves(&c, "bad/app", "v1", &img, None);
    // The good download started from 0: nothing of the poisoned bytes was kept to resume from.
    let last = blob_gets(&proxy.requests(), &layer).pop().unwrap();
    assert_eq!(
        range_start(&last).unwrap_or(0),
        0,
        "resumed from a corrupt partial file"
    );
}

/// A parent that ignores `Range` (answers 200 with the whole blob) after a cut: the child must
/// start the file over rather than append the whole body to what it had, and the tag arrives
/// intact without a `DigestMismatch` loop.
#[test]
fn fault_parent_ignoring_range_restarts_download_cleanly() {
    let work = tmp();
    let parent = Distribution::start();
    let layer = random_bytes(96, 512 * KIB);
    let layer_digest = sha256(&layer);
    let img = Image::new("linux/amd64", std::slice::from_ref(&layer));
    skopeo_seed(work.path(), &parent.host(), "norange/app", &[("v1", &img)]);
    let proxy = Proxy::start(parent.port);
    proxy.throttle(Some(256 * 1024));
    proxy.strip_range(true);
    let child = Node::child(&proxy.endpoint(), json!({"repositories": ["norange/app"]}));
    assert!(
        proxy.wait_for(Duration::from_secs(30), |reqs| {
            blob_gets(reqs, &layer_digest)
                .iter()
                .any(|r| r.response_bytes >= 128 * 1024)
        }),
        "the layer download never got going\n{}{}",
        proxy_log(&proxy),
        diag(&child)
    );
    proxy.cut();
    proxy.throttle(None);
    let took = wait_for_tag(
        &child,
        "norange/app",
        "v1",
        &img.digest,
        Duration::from_secs(20),
    );
    println!("a parent ignoring Range: tag arrived {took:?} after the cut");
    assert_serves(&child.base(), "norange/app", "v1", &img, None);
    let gets = blob_gets(&proxy.requests(), &layer_digest);
    let log = proxy_log(&proxy);
    assert!(
        gets[1..]
            .iter()
            .any(|r| range_start(r).unwrap_or(0) > 0 && r.status == Some(200)),
        "the child asked for a range and got the whole blob (what this test is about)\n{log}"
    );
    assert!(
        gets.len() <= 3,
        "the download was retried {} times\n{log}",
        gets.len()
    );
    let s = status(&child.base());
    assert!(
        !detail_codes(&s).iter().any(|c| c == "DigestMismatch"),
        "a 200 answer to a Range request was appended to the partial file: {:#}",
        s["statusDetails"]
    );
}

/// The status of a pass that resumed a cut download: `Succeeded` with its counts whole (bytes
/// done == total), not short by the bytes that were already on disk.
#[test]
fn status_progress_is_whole_after_a_resumed_download() {
    let work = tmp();
    let parent = Distribution::start();
    let layer = random_bytes(95, 512 * KIB);
    let layer_digest = sha256(&layer);
    let img = Image::new("linux/amd64", std::slice::from_ref(&layer));
    skopeo_seed(work.path(), &parent.host(), "progress/app", &[("v1", &img)]);
    let proxy = Proxy::start(parent.port);
    proxy.throttle(Some(256 * 1024));
    let child = Node::child(&proxy.endpoint(), json!({"repositories": ["progress/app"]}));
    assert!(
        proxy.wait_for(Duration::from_secs(30), |reqs| {
            blob_gets(reqs, &layer_digest)
                .iter()
                .any(|r| r.response_bytes >= 128 * 1024)
        }),
        "the layer download never got going\n{}{}",
        proxy_log(&proxy),
        diag(&child)
    );
    proxy.cut();
    proxy.throttle(None);
    wait_for_tag(
        &child,
        "progress/app",
        "v1",
        &img.digest,
        Duration::from_secs(30),
    );
    let s = succeeded_status(&child);
    assert!(
        blob_gets(&proxy.requests(), &layer_digest)
            .iter()
            .any(|r| range_start(r).unwrap_or(0) > 0),
        "the download was not resumed (nothing to check)\n{}",
        proxy_log(&proxy)
    );
    println!(
        "progress after a resumed download: {}",
        s["sync"]["progress"]
    );
    assert_progress_complete(&s);
}

/// What a client polling the child saw.
#[derive(Default)]
struct Watch {
    checks: u64,
    violations: Vec<String>,
}

/// Poll the child as a client would (tags/list, GET each tag's manifest, HEAD every blob it
/// names) until `stop`: every listed tag must be complete and one of the expected digests.
fn watch_child(
    base: String,
    repo: String,
    expected: BTreeMap<String, String>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Watch> {
    std::thread::spawn(move || {
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let mut w = Watch::default();
        let fail = |w: &mut Watch, m: String| {
            if w.violations.len() < 20 {
                w.violations.push(m);
            }
        };
        while !stop.load(Ordering::SeqCst) {
            let list = match http.get(format!("{base}/v2/{repo}/tags/list")).send() {
                Ok(r) if r.status() == 404 => Vec::new(),
                Ok(r) if r.status() == 200 => {
                    let v: Value = r.json().unwrap_or(Value::Null);
                    v["tags"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|t| t.as_str().map(str::to_owned))
                        .collect()
                }
                Ok(r) => {
                    fail(&mut w, format!("tags/list answered {}", r.status()));
                    continue;
                }
                Err(e) => {
                    fail(&mut w, format!("tags/list failed: {e}"));
                    continue;
                }
            };
            for tag in list {
                let resp = http
                    .get(format!("{base}/v2/{repo}/manifests/{tag}"))
                    .header("Accept", ACCEPT_ALL)
                    .send();
                let body = match resp {
                    Ok(r) if r.status() == 200 => r.bytes().unwrap().to_vec(),
                    Ok(r) => {
                        fail(
                            &mut w,
                            format!("listed tag {tag}: manifest answered {}", r.status()),
                        );
                        continue;
                    }
                    Err(e) => {
                        fail(
                            &mut w,
                            format!("listed tag {tag}: manifest GET failed: {e}"),
                        );
                        continue;
                    }
                };
                let digest = sha256(&body);
                if expected.get(&tag) != Some(&digest) {
                    fail(
                        &mut w,
                        format!(
                            "tag {tag} served {digest}, expected {:?}",
                            expected.get(&tag)
                        ),
                    );
                }
                let doc: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                for (d, size) in blob_refs(&doc) {
                    match http.head(format!("{base}/v2/{repo}/blobs/{d}")).send() {
                        Ok(r) if r.status() == 200 => {
                            let len = r
                                .headers()
                                .get("content-length")
                                .and_then(|v| v.to_str().ok())
                                .and_then(|v| v.parse::<u64>().ok());
                            if len != Some(size) {
                                fail(
                                    &mut w,
                                    format!(
                                        "tag {tag}: blob {d} HEAD length {len:?}, expected {size}"
                                    ),
                                );
                            }
                        }
                        Ok(r) => fail(
                            &mut w,
                            format!(
                                "tag {tag} is listed but its blob {d} answers {}",
                                r.status()
                            ),
                        ),
                        Err(e) => fail(&mut w, format!("tag {tag}: HEAD blob {d} failed: {e}")),
                    }
                }
                w.checks += 1;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        w
    })
}

/// The parent stalls, then goes away mid-sync (connections cut, new ones refused): local pulls
/// keep working, a client polling the child never sees a tag whose content is incomplete, the
/// status says `ParentUnreachable`, and when the parent comes back sync finishes on its own.
#[test]
fn fault_parent_gone_mid_sync_no_half_synced_tag_and_resume() {
    let work = tmp();
    let parent = Distribution::start();
    let base_layer = random_bytes(200, 64 * KIB);
    let mut images = Vec::new();
    for i in 0..4u64 {
        images.push(Image::new(
            "linux/amd64",
            &[base_layer.clone(), random_bytes(201 + i, 160 * KIB)],
        ));
    }
    let tagged: Vec<(String, &Image)> = images
        .iter()
        .enumerate()
        .map(|(i, img)| (format!("v{i}"), img))
        .collect();
    let seed: Vec<(&str, &Image)> = tagged.iter().map(|(t, i)| (t.as_str(), *i)).collect();
    skopeo_seed(work.path(), &parent.host(), "steady/app", &seed);
    let expected: BTreeMap<String, String> = tagged
        .iter()
        .map(|(t, i)| (t.clone(), i.digest.clone()))
        .collect();

    let proxy = Proxy::start(parent.port);
    proxy.throttle(Some(128 * 1024));
    let child = Node::child(
        &proxy.endpoint(),
        json!({"repositories": ["steady/app"], "concurrency": 2}),
    );
    let c = child.base();
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_child(
        c.clone(),
        "steady/app".into(),
        expected.clone(),
        stop.clone(),
    );

    // Let part of it arrive: at least one tag (of four) complete here.
    assert!(
        wait_until(Duration::from_secs(30), || {
            !tags(&c, "steady/app").unwrap_or_default().is_empty()
        }),
        "no tag arrived\n{}{}",
        proxy_log(&proxy),
        diag(&child)
    );
    let local_pulls_work = |phase: &str| {
        let t = Instant::now();
        let visible = tags(&c, "steady/app").unwrap_or_default();
        for tag in &visible {
            let img = tagged.iter().find(|(t, _)| t == tag).unwrap().1;
            assert_serves(&c, "steady/app", tag, img, None);
        }
        assert_eq!(get(&c, "/v2/").status, 200);
        let took = t.elapsed();
        println!("{phase}: local pulls of {visible:?} took {took:?}");
        assert!(!visible.is_empty(), "{phase}: nothing to pull");
        assert!(
            took < Duration::from_secs(3),
            "{phase}: local pulls took {took:?}"
        );
    };

    // The parent slows to 1 KiB/s.
    proxy.throttle(Some(1024));
    std::thread::sleep(Duration::from_millis(1500));
    local_pulls_work("parent at 1 KiB/s");

    // The parent hangs: bytes stop, connections stay open.
    proxy.stall(true);
    std::thread::sleep(Duration::from_millis(1500));
    local_pulls_work("parent stalled");

    // The parent goes away.
    proxy.set_down(true);
    proxy.cut();
    proxy.stall(false);
    let unreachable = wait_until(Duration::from_secs(20), || {
        detail_codes(&status(&c))
            .iter()
            .any(|code| code == "ParentUnreachable")
    });
    assert!(
        unreachable,
        "statusDetails never showed ParentUnreachable{}",
        diag(&child)
    );
    let s = status(&c);
    println!(
        "while the parent is down: connectionState {}, details {:?}",
        s["connectionState"],
        detail_codes(&s)
    );
    assert!(
        s["connectionState"] == "Offline" || s["connectionState"] == "Unhealthy",
        "connectionState with the parent down: {}",
        s["connectionState"]
    );
    local_pulls_work("parent down");
    let synced_while_down = tags(&c, "steady/app").unwrap_or_default();
    assert!(
        synced_while_down.len() < 4,
        "the test needs the sync to be cut short: {synced_while_down:?}"
    );

    // Back: sync resumes by itself.
    let back = Instant::now();
    proxy.throttle(None);
    proxy.set_down(false);
    for (tag, img) in &tagged {
        wait_for_tag(
            &child,
            "steady/app",
            tag,
            &img.digest,
            Duration::from_secs(45),
        );
    }
    println!(
        "resumed and finished {:?} after the parent came back",
        back.elapsed()
    );
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    let w = watcher.join().unwrap();
    println!("watcher: {} tag checks", w.checks);
    assert!(
        w.violations.is_empty(),
        "a client saw incomplete content: {:#?}",
        w.violations
    );
    assert!(
        w.checks >= 20,
        "the watcher made too few checks ({})",
        w.checks
    );
    for (tag, img) in &tagged {
        assert_serves(&c, "steady/app", tag, img, None);
    }
}

/// A connected-registry parent killed with -9 while the child follows its feed: local pulls keep
/// working, status says `ParentUnreachable`; the parent restarts on the same port and a new push
/// reaches the child without anyone touching it.
#[test]
fn fault_connected_parent_killed_and_back() {
    let mut root = Registry::start();
    let r = root.url("");
    let v1 = Image::new("linux/amd64", &[random_bytes(301, 16 * KIB)]);
    push_image(&r, "kill/app", "v1", &v1);
    let child = Node::child(&r, json!({"repositories": ["kill/**"]}));
    let c = child.base();
    wait_for_tag(
        &child,
        "kill/app",
        "v1",
        &v1.digest,
        Duration::from_secs(30),
    );

    root.kill9();
    assert!(
        wait_until(Duration::from_secs(20), || {
            detail_codes(&status(&c))
                .iter()
                .any(|code| code == "ParentUnreachable")
        }),
        "statusDetails never showed ParentUnreachable{}",
        diag(&child)
    );
    assert_serves(&c, "kill/app", "v1", &v1, None);
    let detail = status(&c)["statusDetails"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["code"] == "ParentUnreachable")
        .cloned()
        .unwrap();
    assert!(
        detail["timestamp"].is_string() && detail["description"].is_string(),
        "{detail}"
    );

    root.restart();
    let v2 = Image::new("linux/amd64", &[random_bytes(302, 16 * KIB)]);
    push_image(&r, "kill/app", "v2", &v2);
    let took = wait_for_tag(
        &child,
        "kill/app",
        "v2",
        &v2.digest,
        Duration::from_secs(45),
    );
    println!("sync resumed {took:?} after the parent came back");
    assert_serves(&c, "kill/app", "v2", &v2, None);
    assert_serves(&c, "kill/app", "v1", &v1, None);
}

/// `kill -9` of the child mid-download (throttled 2 MiB blob): after a restart the download
/// resumes from the partial file with `Range` and finishes; the parent serves the blob about
/// once in total.
#[test]
fn fault_child_killed_mid_sync_restarts_and_finishes() {
    let work = tmp();
    let parent = Distribution::start();
    let layer = random_bytes(401, 2 * MIB);
    let layer_digest = sha256(&layer);
    let img = Image::new("linux/amd64", &[layer.clone(), random_bytes(402, 4 * KIB)]);
    skopeo_seed(work.path(), &parent.host(), "crash/app", &[("v1", &img)]);
    let proxy = Proxy::start(parent.port);
    proxy.throttle(Some(512 * 1024));
    let mut child = Node::child(&proxy.endpoint(), json!({"repositories": ["crash/app"]}));
    let partial = child.data_path(&format!("partial/sha256-{}", &layer_digest[7..]));

    assert!(
        proxy.wait_for(Duration::from_secs(30), |reqs| {
            blob_gets(reqs, &layer_digest)
                .iter()
                .any(|r| r.response_bytes >= 700 * 1024)
        }),
        "the layer download never got going\n{}{}",
        proxy_log(&proxy),
        diag(&child)
    );
    assert!(
        wait_until(Duration::from_secs(5), || partial
            .metadata()
            .map(|m| m.len() > 0)
            .unwrap_or(false)),
        "no partial download at {partial:?}"
    );
    child.kill9();
    let on_disk = partial.metadata().map(|m| m.len()).unwrap_or(0);
    let served_before = blob_gets(&proxy.requests(), &layer_digest)[0].response_bytes;
    println!(
        "killed with {on_disk} bytes of {} on disk ({served_before} served)",
        layer.len()
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", child.port)).is_err(),
        "the child is down"
    );
    let n_before = proxy.request_count();
    proxy.throttle(None);
    child.restart();

    wait_for_tag(
        &child,
        "crash/app",
        "v1",
        &img.digest,
        Duration::from_secs(30),
    );
    assert_serves(&child.base(), "crash/app", "v1", &img, None);
    let after: Vec<Request> = proxy.requests()[n_before..].to_vec();
    let gets = blob_gets(&after, &layer_digest);
    let log = proxy_log(&proxy);
    assert!(!gets.is_empty(), "{log}");
    let n = range_start(&gets[0]).unwrap_or(0);
    assert!(
        n > 0,
        "after the restart the download started over instead of resuming\n{log}"
    );
    assert!(
        n <= on_disk,
        "resumed at {n} but only {on_disk} bytes were on disk"
    );
    assert_eq!(gets[0].status, Some(206), "{log}");
    let total: u64 = blob_gets(&proxy.requests(), &layer_digest)
        .iter()
        .map(|r| r.response_bytes)
        .sum();
    println!(
        "layer {} bytes; served {total} bytes in total; resumed at {n}",
        layer.len()
    );
    assert!(
        total <= layer.len() as u64 + layer.len() as u64 / 10,
        "the parent served {total} bytes for a {}-byte blob\n{log}",
        layer.len()
    );
    assert!(
        !partial.exists(),
        "the partial file {partial:?} is left behind"
    );
}

// ---- schedule --------------------------------------------------------------------------------

/// A schedule whose window is closed now makes zero requests to the parent (not one connection
/// through the proxy), and the status shows when the next window opens.
#[test]
fn window_closed_makes_zero_requests() {
    use chrono::{Duration as ChronoDuration, Timelike, Utc};
    let parent = Distribution::start();
    let proxy = Proxy::start(parent.port);
    let now = Utc::now();
    // A daily one-hour window starting 12 hours from now: closed now, for sure.
    let hour = (now.hour() + 12) % 24;
    let today = now.date_naive().and_hms_opt(hour, 0, 0).unwrap().and_utc();
    let expected = if today > now {
        today
    } else {
        today + ChronoDuration::days(1)
    };
    let child = Node::child(
        &proxy.endpoint(),
        json!({"repositories": ["any/**"], "schedule": format!("0 {hour} * * *"), "window": "PT1H"}),
    );
    let c = child.base();
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        (
            proxy.connections(),
            proxy.refused(),
            proxy.request_count(),
            proxy.bytes_to_server()
        ),
        (0, 0, 0, 0),
        "requests outside the window\n{}",
        proxy_log(&proxy)
    );
    let s = status(&c);
    let next = s["sync"]["nextWindowStart"]
        .as_str()
        .unwrap_or_else(|| panic!("no sync.nextWindowStart: {s:#}"));
    let next: chrono::DateTime<Utc> = next
        .parse()
        .unwrap_or_else(|e| panic!("nextWindowStart {next}: {e}"));
    assert_eq!(next, expected, "nextWindowStart");
    println!(
        "window closed; nextWindowStart {next}, state {}",
        s["sync"]["state"]
    );

    // The status table says so too.
    let out = run_cli(&["status", "--url", &c], Duration::from_secs(20));
    let text = plain(&String::from_utf8_lossy(&out.stdout));
    println!("{text}");
    assert!(out.status.success(), "status CLI: {out:?}");
    assert!(
        text.contains(&expected.format("%Y-%m-%d %H:%M").to_string()),
        "the status table shows the next window:\n{text}"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        proxy.connections() + proxy.refused(),
        0,
        "requests outside the window"
    );
}

/// A daily window that opens within the minute: nothing goes to the parent before it opens
/// (the status says when it will), then the child syncs on its own.
#[test]
fn window_opens_on_schedule_and_syncs() {
    use chrono::{Duration as ChronoDuration, DurationRound, Timelike, Utc};
    let work = tmp();
    let parent = Distribution::start();
    let img = Image::new("linux/amd64", &[random_bytes(1001, 4 * KIB)]);
    skopeo_seed(work.path(), &parent.host(), "sched/app", &[("v1", &img)]);
    let proxy = Proxy::start(parent.port);
    let now = Utc::now();
    let minutes = if now.second() >= 50 { 2 } else { 1 };
    let opens =
        now.duration_trunc(ChronoDuration::minutes(1)).unwrap() + ChronoDuration::minutes(minutes);
    let child = Node::child(
        &proxy.endpoint(),
        json!({
            "repositories": ["sched/app"],
            "schedule": format!("{} {} * * *", opens.minute(), opens.hour()),
            "window": "PT1H",
        }),
    );
    let c = child.base();
    let s = status(&c);
    assert_eq!(
        s["sync"]["nextWindowStart"]
            .as_str()
            .map(|t| t.parse::<chrono::DateTime<Utc>>().unwrap()),
        Some(opens),
        "{:#}",
        s["sync"]
    );
    // Until it opens: not one connection.
    let until_open = (opens - Utc::now()).to_std().unwrap_or_default();
    std::thread::sleep(until_open.saturating_sub(Duration::from_millis(500)));
    assert_eq!(
        (proxy.connections(), proxy.refused()),
        (0, 0),
        "requests before the window opened\n{}",
        proxy_log(&proxy)
    );
    assert_eq!(tags(&c, "sched/app"), None);
    let took = wait_for_tag(
        &child,
        "sched/app",
        "v1",
        &img.digest,
        Duration::from_secs(15),
    );
    println!("window opened at {opens}; synced {took:?} after 0.5 s before the opening");
    assert_serves(&c, "sched/app", "v1", &img, None);
    assert!(
        status(&c)["sync"]["nextWindowStart"].is_null(),
        "inside the window"
    );
}
