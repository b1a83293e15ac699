//! A big registry's listings (issue 11): with thousands of repositories and a repository of a
//! thousand tags, every `_catalog` and `tags/list` walk by `n`/`last` (and by the `Link` header a
//! client follows) is complete, strictly ordered and free of repeats, before and after a
//! restart, and every manifest is served with its bytes. The node runs with the smallest
//! metadata cache (`storage.metadataCache`, 1 MiB), less than its index of 2,500 manifests
//! takes, so lookups page index nodes in and out.
//! `bench/big.sh` measures the same at 10,000 repositories and 100,000 tags.

use crate::common;

use std::time::Duration;

use common::{sha256, Registry};
use reqwest::blocking::Client;
use serde_json::{json, Value};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const REPOS: usize = 1500;
const MANY_TAGS: usize = 1000;
const CONFIG: &[u8] =
    br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;

fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

fn repo(i: usize) -> String {
    // Names whose byte order differs from their numeric order, and nested ones.
    match i % 3 {
        0 => format!("big/r{i}"),
        1 => format!("big/r{i}/app"),
        _ => format!("big-{i}"),
    }
}

fn manifest(repo: &str, t: usize) -> String {
    json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha256(CONFIG), "size": CONFIG.len()},
        "layers": [], "annotations": {"repo": repo, "t": t.to_string()},
    })
    .to_string()
}

fn push(c: &Client, base: &str, repo: &str, tags: std::ops::Range<usize>) {
    let r = c
        .post(format!(
            "{base}/v2/{repo}/blobs/uploads/?digest={}",
            sha256(CONFIG)
        ))
        .body(CONFIG.to_vec())
        .send()
        .unwrap();
    assert_eq!(r.status(), 201, "{repo}");
    for t in tags {
        let r = c
            .put(format!("{base}/v2/{repo}/manifests/t{t}"))
            .header("Content-Type", OCI_MANIFEST)
            .body(manifest(repo, t))
            .send()
            .unwrap();
        assert_eq!(r.status(), 201, "{repo}:t{t}");
    }
}

/// Walk a listing with `n` per page, following `Link` when `follow_link`, else building
/// `last=` from the previous page. Asserts each page's size and returns every entry.
fn walk(c: &Client, base: &str, path: &str, key: &str, n: usize, follow_link: bool) -> Vec<String> {
    let mut all: Vec<String> = Vec::new();
    let mut next = Some(format!("{path}?n={n}"));
    let mut pages = 0;
    while let Some(target) = next.take() {
        pages += 1;
        assert!(pages < 10_000, "{path}: the listing never ends");
        let r = c.get(format!("{base}{target}")).send().unwrap();
        assert_eq!(r.status(), 200, "{target}");
        let link = r
            .headers()
            .get("link")
            .map(|v| v.to_str().unwrap().to_owned());
        let page: Value = r.json().unwrap();
        let entries: Vec<String> = page[key]
            .as_array()
            .unwrap_or(&Vec::new())
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        assert!(entries.len() <= n, "{target}: {} entries", entries.len());
        let full = entries.len() == n;
        all.extend(entries);
        if follow_link {
            // A full page links to the next; the last (short) page links nowhere.
            next = link.map(|l| {
                l.trim_start_matches('<')
                    .split_once('>')
                    .expect("a Link target")
                    .0
                    .to_owned()
            });
            if !full {
                assert!(next.is_none(), "{target}: a short page with a Link");
            }
        } else if full {
            next = Some(format!("{path}?n={n}&last={}", all.last().unwrap()));
        }
    }
    all
}

/// Every pushed manifest comes back by tag with its own bytes.
fn check_manifests(c: &Client, base: &str) {
    let pushed = (0..REPOS)
        .map(|i| (repo(i), 0))
        .chain((0..MANY_TAGS).map(|t| ("many/tags".to_owned(), t)));
    for (repo, t) in pushed {
        let r = c
            .get(format!("{base}/v2/{repo}/manifests/t{t}"))
            .header("Accept", OCI_MANIFEST)
            .send()
            .unwrap();
        assert_eq!(r.status(), 200, "{repo}:t{t}");
        assert_eq!(r.text().unwrap(), manifest(&repo, t), "{repo}:t{t}");
    }
}

fn check_listings(c: &Client, base: &str, expected_repos: &[String], expected_tags: &[String]) {
    for (n, follow_link) in [(100, false), (97, true), (1000, false), (5000, false)] {
        let names = walk(c, base, "/v2/_catalog", "repositories", n, follow_link);
        assert_eq!(names.len(), expected_repos.len(), "catalog n={n}");
        assert_eq!(names, expected_repos, "catalog n={n} link={follow_link}");
    }
    for (n, follow_link) in [(7, false), (100, true), (MANY_TAGS, false)] {
        let tags = walk(c, base, "/v2/many/tags/tags/list", "tags", n, follow_link);
        assert_eq!(tags, expected_tags, "tags n={n} link={follow_link}");
    }
}

#[test]
fn big_listings_are_complete_and_ordered_before_and_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    std::fs::write(&config, r#"{"storage": {"metadataCache": "1MiB"}}"#).unwrap();
    let mut reg = Registry::start_with(&["--config", config.to_str().unwrap()]);
    let base = reg.url("");
    // Eight pushers at once: the metadata flushes of concurrent writers are shared.
    std::thread::scope(|s| {
        for w in 0..8 {
            let base = base.clone();
            s.spawn(move || {
                let c = client();
                for i in (w..REPOS).step_by(8) {
                    push(&c, &base, &repo(i), 0..1);
                }
            });
        }
    });
    let c = client();
    push(&c, &base, "many/tags", 0..MANY_TAGS);
    let mut expected_repos: Vec<String> = (0..REPOS).map(repo).collect();
    expected_repos.push("many/tags".into());
    expected_repos.sort();
    let mut expected_tags: Vec<String> = (0..MANY_TAGS).map(|t| format!("t{t}")).collect();
    expected_tags.sort();
    check_listings(&c, &base, &expected_repos, &expected_tags);
    check_manifests(&c, &base);
    reg.terminate();
    reg.restart();
    check_listings(&c, &reg.url(""), &expected_repos, &expected_tags);
    check_manifests(&c, &reg.url(""));
}
