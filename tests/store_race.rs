//! The store under racing clients: random pushes, tags, untags and deletes from several clients
//! at once, with readers of the tags, must leave a store whose invariants hold (every tag
//! resolves to a manifest the repository holds, every manifest's blobs exist, the change feed
//! replays to the same state, no tag is served from memory as it was before a write moved it),
//! before and after a restart; requests racing on one upload session never fail with a 5xx;
//! one repository never changes what another serves; abandoned upload sessions expire.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::peers::{get, head, push_blob, random_bytes, request, wait_until, Image};
use common::{sha256, Registry};
use reqwest::Method;
use serde_json::{json, Value};

const REPOS: [&str; 2] = ["race/one", "race/two"];
const TAGS: [&str; 4] = ["a", "b", "c", "d"];

/// A tiny xorshift so every client's choices are reproducible from its seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

fn put_manifest(base: &str, repo: &str, reference: &str, image: &Image) -> u16 {
    request(
        Method::PUT,
        base,
        &format!("/v2/{repo}/manifests/{reference}"),
        &[("Content-Type", &image.media_type)],
        Some(image.bytes.clone()),
    )
    .status
}

/// Tags of `repo` with the digest each resolves to; every tag must resolve, its digest must be
/// served by digest with the same bytes, and every blob of that manifest must exist.
fn resolved_state(base: &str, images: &[Image]) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut state = BTreeMap::new();
    for repo in REPOS {
        let mut tags = BTreeMap::new();
        let listed = common::peers::tags(base, repo).unwrap_or_default();
        for tag in listed {
            let by_tag = get(base, &format!("/v2/{repo}/manifests/{tag}"));
            assert_eq!(
                by_tag.status, 200,
                "{repo}:{tag} is listed but does not resolve"
            );
            let digest = sha256(&by_tag.body);
            let by_digest = get(base, &format!("/v2/{repo}/manifests/{digest}"));
            assert_eq!(
                by_digest.status,
                200,
                "{repo}:{tag} resolves to {digest}, which the repository does not serve: {}",
                by_digest.text()
            );
            assert_eq!(by_digest.body, by_tag.body);
            let image = images
                .iter()
                .find(|i| i.digest == digest)
                .expect("a manifest that was pushed");
            for blob in &image.blobs {
                let r = head(base, &format!("/v2/{repo}/blobs/{}", blob.digest));
                assert_eq!(
                    r.status, 200,
                    "blob {} of {repo}:{tag} is missing",
                    blob.digest
                );
            }
            tags.insert(tag, digest);
        }
        state.insert(repo.to_owned(), tags);
    }
    state
}

/// Replay the whole change feed: per repository, the tag map and the set of manifests present.
type Replayed = BTreeMap<String, (BTreeMap<String, String>, BTreeSet<String>)>;

/// Every event in the change feed after `since`, read page by page.
fn feed_events(base: &str, mut since: u64) -> Vec<Value> {
    let mut events = Vec::new();
    loop {
        let r = get(
            base,
            &format!("/acr/connected-registry/v1/changes?since={since}"),
        );
        assert_eq!(r.status, 200, "change feed: {}", r.text());
        let page = r.json();
        let page_events = page["events"].as_array().unwrap();
        if page_events.is_empty() {
            return events;
        }
        events.extend(page_events.iter().cloned());
        since = page["next"].as_u64().unwrap();
    }
}

/// Every sequence number in the change feed after `since`.
fn feed_seqs(base: &str, since: u64) -> Vec<u64> {
    feed_events(base, since)
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect()
}

fn replay_feed(base: &str) -> Replayed {
    let mut state: Replayed = BTreeMap::new();
    let mut previous_seq = 0u64;
    for e in &feed_events(base, 0) {
        let seq = e["seq"].as_u64().unwrap();
        assert!(seq > previous_seq, "change feed out of order");
        previous_seq = seq;
        let repo = e["repository"].as_str().unwrap().to_owned();
        let digest = e["digest"].as_str().unwrap().to_owned();
        let tag = e["tag"].as_str().map(str::to_owned);
        let (tags, manifests) = state.entry(repo.clone()).or_default();
        match (e["action"].as_str().unwrap(), tag) {
            ("push", tag) => {
                manifests.insert(digest.clone());
                if let Some(tag) = tag {
                    tags.insert(tag, digest);
                }
            }
            ("tag", Some(tag)) => {
                assert!(
                    manifests.contains(&digest),
                    "event {seq} tags {repo}:{tag} to {digest}, which the feed says is not there"
                );
                tags.insert(tag, digest);
            }
            ("untag", Some(tag)) => {
                assert_eq!(tags.remove(&tag).as_ref(), Some(&digest), "event {seq}");
            }
            ("delete", _) => {
                assert!(
                    manifests.remove(&digest),
                    "event {seq} deletes an absent manifest"
                );
                assert!(
                    !tags.values().any(|d| *d == digest),
                    "event {seq} deletes {digest} of {repo} while a tag still points at it"
                );
            }
            (action, tag) => panic!("unexpected event {action} {tag:?}"),
        }
    }
    state
}

fn assert_consistent(base: &str, images: &[Image]) -> BTreeMap<String, BTreeMap<String, String>> {
    let resolved = resolved_state(base, images);
    let replayed = replay_feed(base);
    for repo in REPOS {
        let (tags, manifests) = replayed.get(repo).cloned().unwrap_or_default();
        assert_eq!(
            resolved[repo], tags,
            "the change feed of {repo} replays to different tags than the registry serves"
        );
        for image in images {
            let served = get(base, &format!("/v2/{repo}/manifests/{}", image.digest)).status == 200;
            assert_eq!(
                served,
                manifests.contains(&image.digest),
                "{repo}@{} served={served} but the change feed says otherwise",
                image.digest
            );
        }
    }
    resolved
}

#[test]
fn racing_pushes_tags_untags_and_deletes_keep_the_store_consistent() {
    let mut registry = Registry::start();
    let base = registry.url("");
    let images: Vec<Image> = (0..3)
        .map(|i| Image::new("linux/amd64", &[random_bytes(100 + i, 512)]))
        .collect();
    for repo in REPOS {
        for image in &images {
            for blob in &image.blobs {
                push_blob(&base, repo, blob);
            }
        }
    }
    // Many tags on a manifest the clients leave alone: a delete that looks for the tags of its
    // digest outside its transaction takes long enough here to be overtaken by a tag push.
    let filler = Image::new("linux/arm64", &[random_bytes(99, 512)]);
    for repo in REPOS {
        common::peers::push_image(&base, repo, "filler", &filler);
        for i in 0..1500 {
            assert_eq!(put_manifest(&base, repo, &format!("f{i:04}"), &filler), 201);
        }
    }
    let mut images = images;
    images.push(filler);
    let images = Arc::new(images);
    let deadline = Instant::now() + Duration::from_secs(8);
    let start = feed_seqs(&base, 0).last().copied().unwrap_or(0);
    // A child following the feed while the clients race, as a child does: from each page's
    // `next`, waiting for more.
    let follower = {
        let base = base.clone();
        std::thread::spawn(move || {
            let (mut since, mut seen) = (start, Vec::new());
            while Instant::now() < deadline + Duration::from_secs(1) {
                let r = get(
                    &base,
                    &format!("/acr/connected-registry/v1/changes?since={since}&wait=1"),
                );
                assert_eq!(r.status, 200, "change feed: {}", r.text());
                let page = r.json();
                let events = page["events"].as_array().unwrap();
                seen.extend(events.iter().map(|e| e["seq"].as_u64().unwrap()));
                since = page["next"].as_u64().unwrap();
            }
            seen
        })
    };
    let clients: Vec<_> = (0..6u64)
        .map(|client| {
            let (base, images) = (base.clone(), images.clone());
            std::thread::spawn(move || {
                let mut rng = Rng(0x9E37_79B9 ^ ((client + 1) * 0x1234_5678_9ABC));
                let mut ops = 0;
                while Instant::now() < deadline {
                    let repo = REPOS[rng.below(REPOS.len())];
                    let image = &images[rng.below(images.len() - 1)];
                    let tag = TAGS[rng.below(TAGS.len())];
                    let status = match rng.below(4) {
                        0 => put_manifest(&base, repo, tag, image),
                        1 => put_manifest(&base, repo, &image.digest, image),
                        2 => {
                            common::peers::delete(&base, &format!("/v2/{repo}/manifests/{tag}"))
                                .status
                        }
                        _ => {
                            common::peers::delete(
                                &base,
                                &format!("/v2/{repo}/manifests/{}", image.digest),
                            )
                            .status
                        }
                    };
                    assert!(
                        [201, 202, 404].contains(&status),
                        "unexpected status {status}"
                    );
                    ops += 1;
                }
                ops
            })
        })
        .collect();
    // Readers of the tags meanwhile: a tag read from the index just before a write moved it
    // must not be served from memory after (the final check would see a tag that the feed
    // says moved).
    let readers: Vec<_> = (0..2u64)
        .map(|reader| {
            let base = base.clone();
            std::thread::spawn(move || {
                let mut rng = Rng(0x51ED_270B ^ ((reader + 1) * 0x9E37_79B9));
                let mut reads = 0;
                while Instant::now() < deadline {
                    let repo = REPOS[rng.below(REPOS.len())];
                    let tag = TAGS[rng.below(TAGS.len())];
                    let status = get(&base, &format!("/v2/{repo}/manifests/{tag}")).status;
                    assert!([200, 404].contains(&status), "GET {repo}:{tag}: {status}");
                    reads += 1;
                }
                reads
            })
        })
        .collect();
    let ops: usize = clients.into_iter().map(|c| c.join().unwrap()).sum();
    let reads: usize = readers.into_iter().map(|r| r.join().unwrap()).sum();
    eprintln!("{ops} racing operations, {reads} reads of tags");
    assert!(ops > 200, "too few operations ran to prove anything: {ops}");
    // What the follower saw is the whole feed since it started: an event committed after a
    // newer one was handed out would be behind its cursor, never seen.
    let followed = follower.join().unwrap();
    let logged = feed_seqs(&base, start);
    assert_eq!(
        followed.len(),
        logged.len(),
        "the follower missed events: {:?}",
        logged
            .iter()
            .filter(|s| !followed.contains(s))
            .collect::<Vec<_>>()
    );
    assert_eq!(followed, logged, "the follower saw the feed out of order");
    let before = assert_consistent(&base, &images);
    registry.kill9();
    registry.restart();
    let after = assert_consistent(&base, &images);
    assert_eq!(before, after, "the state changed across a restart");
}

/// Concurrent manifest pushes share one metadata transaction (`store::manifest_commit`): a
/// push that fails its own checks (a layer the repository does not hold) gets its error, and
/// the pushes committed beside it do not: each valid push is answered 201 and served after,
/// under its tag, and appears once in the change feed.
#[test]
fn concurrent_pushes_committed_together_fail_and_succeed_one_by_one() {
    let registry = Registry::start();
    let base = registry.url("");
    const CLIENTS: u64 = 12;
    const PUSHES: u64 = 25;
    let shared = Image::new("linux/amd64", &[random_bytes(7, 256)]);
    for repo in REPOS {
        for blob in &shared.blobs {
            push_blob(&base, repo, blob);
        }
    }
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let (base, shared) = (base.clone(), shared.clone());
            std::thread::spawn(move || {
                let mut pushed = Vec::new();
                for n in 0..PUSHES {
                    let repo = REPOS[((client + n) % 2) as usize];
                    // Every third push names a layer nobody pushed.
                    let broken = (client + n) % 3 == 0;
                    let mut image = shared.clone();
                    let annotated = {
                        let mut m: Value = serde_json::from_slice(&image.bytes).unwrap();
                        m["annotations"] = json!({ "n": format!("{client}-{n}") });
                        if broken {
                            m["layers"][0]["digest"] =
                                json!(common::sha256(format!("missing {client} {n}").as_bytes()));
                        }
                        serde_json::to_vec(&m).unwrap()
                    };
                    image.digest = sha256(&annotated);
                    image.bytes = annotated;
                    let tag = format!("c{client}-{n}");
                    let r = request(
                        Method::PUT,
                        &base,
                        &format!("/v2/{repo}/manifests/{tag}"),
                        &[("Content-Type", &image.media_type)],
                        Some(image.bytes.clone()),
                    );
                    if broken {
                        assert_eq!(r.status, 400, "{repo}:{tag}: {}", r.text());
                        assert!(
                            r.text().contains("MANIFEST_BLOB_UNKNOWN"),
                            "{repo}:{tag}: {}",
                            r.text()
                        );
                    } else {
                        assert_eq!(r.status, 201, "{repo}:{tag}: {}", r.text());
                        pushed.push((repo, tag, image.digest.clone()));
                    }
                }
                pushed
            })
        })
        .collect();
    let pushed: Vec<_> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    let valid = (0..CLIENTS)
        .flat_map(|c| (0..PUSHES).map(move |n| (c + n) % 3 != 0))
        .filter(|v| *v)
        .count();
    assert_eq!(pushed.len(), valid);
    for (repo, tag, digest) in &pushed {
        let r = get(&base, &format!("/v2/{repo}/manifests/{tag}"));
        assert_eq!(
            r.status, 200,
            "{repo}:{tag} was answered 201 but is not served"
        );
        assert_eq!(
            &sha256(&r.body),
            digest,
            "{repo}:{tag} serves another manifest"
        );
    }
    let replayed = replay_feed(&base);
    let in_feed: usize = REPOS
        .iter()
        .map(|repo| replayed.get(*repo).map_or(0, |(tags, _)| tags.len()))
        .sum();
    assert_eq!(in_feed, pushed.len(), "the feed lists another set of tags");
    for (repo, tag, digest) in &pushed {
        assert_eq!(
            replayed[*repo].0.get(tag),
            Some(digest),
            "{repo}:{tag} in the feed"
        );
    }
}

#[test]
fn requests_racing_on_one_upload_session_never_fail_with_a_server_error() {
    let registry = Registry::start();
    let base = registry.url("");
    let repo = "race/uploads";
    let chunk = random_bytes(7, 64 * 1024);
    let mut statuses = BTreeMap::<u16, usize>::new();
    for round in 0..40 {
        let r = request(
            Method::POST,
            &base,
            &format!("/v2/{repo}/blobs/uploads/"),
            &[],
            None,
        );
        assert_eq!(r.status, 202);
        let location = r.header("location").unwrap().to_owned();
        let handles: Vec<_> = (0..6)
            .map(|worker| {
                let (base, location, chunk) = (base.clone(), location.clone(), chunk.clone());
                std::thread::spawn(move || {
                    let mut seen = Vec::new();
                    for step in 0..4 {
                        let sep = if location.contains('?') { '&' } else { '?' };
                        let r = match (worker + step + round) % 4 {
                            0 => request(Method::PATCH, &base, &location, &[], Some(chunk.clone())),
                            1 => request(Method::GET, &base, &location, &[], None),
                            2 => request(
                                Method::PUT,
                                &base,
                                &format!("{location}{sep}digest={}", sha256(&chunk)),
                                &[],
                                None,
                            ),
                            _ => request(Method::DELETE, &base, &location, &[], None),
                        };
                        assert!(
                            r.status < 500,
                            "{} on a racing upload session: {}",
                            r.status,
                            r.text()
                        );
                        if r.status == 404 {
                            assert_eq!(r.json()["errors"][0]["code"], "BLOB_UPLOAD_UNKNOWN");
                        }
                        seen.push(r.status);
                    }
                    seen
                })
            })
            .collect();
        for h in handles {
            for status in h.join().unwrap() {
                *statuses.entry(status).or_default() += 1;
            }
        }
    }
    eprintln!("statuses: {statuses:?}");
    assert!(
        statuses.contains_key(&404),
        "no request ever raced a finished session"
    );
    assert!(!registry.log_text().contains("storage I/O failed"));
}

#[test]
fn one_repository_never_changes_the_media_type_another_serves() {
    let registry = Registry::start();
    let base = registry.url("");
    // The same bytes are a valid OCI image manifest and a valid Docker schema 2 manifest when
    // they carry no mediaType: the Content-Type of the push decides.
    let config = random_bytes(11, 64);
    let layer = random_bytes(12, 256);
    let descriptor = |media_type: &str, bytes: &[u8]| json!({"mediaType": media_type, "digest": sha256(bytes), "size": bytes.len()});
    let manifest: Value = json!({
        "schemaVersion": 2,
        "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
        "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", &layer)],
    });
    let bytes = serde_json::to_vec(&manifest).unwrap();
    let digest = sha256(&bytes);
    let types = [
        ("media/oci", "application/vnd.oci.image.manifest.v1+json"),
        (
            "media/docker",
            "application/vnd.docker.distribution.manifest.v2+json",
        ),
    ];
    for (repo, media_type) in types {
        for blob in [&config, &layer] {
            push_blob(
                &base,
                repo,
                &common::peers::Blob::new("application/octet-stream", blob.clone()),
            );
        }
        let r = request(
            Method::PUT,
            &base,
            &format!("/v2/{repo}/manifests/v1"),
            &[("Content-Type", media_type)],
            Some(bytes.clone()),
        );
        assert_eq!(r.status, 201, "{}", r.text());
        assert_eq!(r.header("docker-content-digest"), Some(digest.as_str()));
    }
    for (repo, media_type) in types {
        for reference in ["v1", digest.as_str()] {
            let r = get(&base, &format!("/v2/{repo}/manifests/{reference}"));
            assert_eq!(r.status, 200);
            assert_eq!(r.body, bytes);
            assert_eq!(
                r.header("content-type"),
                Some(media_type),
                "{repo}:{reference} is served with another repository's media type"
            );
            let r = head(&base, &format!("/v2/{repo}/manifests/{reference}"));
            assert_eq!(r.header("content-type"), Some(media_type));
        }
    }
}

#[test]
fn abandoned_upload_sessions_and_partial_downloads_expire_across_restarts() {
    let config = tempfile::NamedTempFile::with_suffix(".json").unwrap();
    std::fs::write(
        config.path(),
        r#"{"limits": {"uploadSessionMaxAge": "PT5S"}}"#,
    )
    .unwrap();
    let mut registry = Registry::start_with(&["--config", config.path().to_str().unwrap()]);
    let base = registry.url("");
    let repo = "expire/me";
    let mut abandoned = Vec::new();
    for _ in 0..200 {
        let r = request(
            Method::POST,
            &base,
            &format!("/v2/{repo}/blobs/uploads/"),
            &[],
            None,
        );
        assert_eq!(r.status, 202);
        abandoned.push(r.header("location").unwrap().to_owned());
    }
    // Half of them survive a restart first: expiry must not depend on the process that made them.
    registry.kill9();
    registry.restart();
    let partial = registry.data_path("partial");
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::write(partial.join("sha256-abandoned"), b"half a blob").unwrap();
    std::fs::File::options()
        .write(true)
        .open(partial.join("sha256-abandoned"))
        .unwrap()
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
    // One session stays in use: a chunk every second keeps it alive.
    let r = request(
        Method::POST,
        &base,
        &format!("/v2/{repo}/blobs/uploads/"),
        &[],
        None,
    );
    let active = r.header("location").unwrap().to_owned();
    let mut sent = Vec::new();
    let uploads_dir = registry.data_path("uploads");
    let count_files = || std::fs::read_dir(&uploads_dir).unwrap().count();
    assert_eq!(count_files(), 201);
    let expired = wait_until(Duration::from_secs(30), || {
        let chunk = random_bytes(sent.len() as u64, 100);
        let r = request(Method::PATCH, &base, &active, &[], Some(chunk.clone()));
        assert_eq!(
            r.status,
            202,
            "the active session must not expire: {}",
            r.text()
        );
        sent.extend_from_slice(&chunk);
        std::thread::sleep(Duration::from_millis(700));
        count_files() == 1
    });
    assert!(
        expired,
        "abandoned sessions still on disk: {}",
        count_files()
    );
    for location in abandoned.iter().take(5) {
        let r = get(&base, location);
        assert_eq!(r.status, 404);
        assert_eq!(r.json()["errors"][0]["code"], "BLOB_UPLOAD_UNKNOWN");
    }
    assert!(
        !partial.join("sha256-abandoned").exists(),
        "the abandoned partial download was not removed"
    );
    // The active session is whole and completes.
    let sep = if active.contains('?') { '&' } else { '?' };
    let r = request(
        Method::PUT,
        &base,
        &format!("{active}{sep}digest={}", sha256(&sent)),
        &[],
        None,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let r = get(&base, &format!("/v2/{repo}/blobs/{}", sha256(&sent)));
    assert_eq!(r.body, sent);
    assert!(registry.log_text().contains("removed abandoned uploads"));
}
