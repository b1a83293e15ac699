//! Polling a plain OCI parent (issue 11): an idle child backs off from `pollInterval` to
//! `maxPollInterval` while passes find nothing new, and a change brings it back to
//! `pollInterval`. The parent is Debian's `docker-registry`; a counting proxy sits between.

use crate::common;

use std::time::Duration;

use common::peers::*;
use common::proxy::Proxy;
use serde_json::json;

const KIB: usize = 1024;

/// Gaps between the starts of consecutive `tags/list` requests (one per pass), in seconds.
fn pass_gaps(proxy: &Proxy, repo: &str) -> Vec<f64> {
    let path = format!("/v2/{repo}/tags/list");
    let starts: Vec<Duration> = proxy
        .matching("GET", |p| p == path)
        .iter()
        .map(|r| r.at)
        .collect();
    starts
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect()
}

#[test]
fn idle_polling_backs_off_and_a_change_resets_it() {
    let work = tempfile::tempdir().unwrap();
    let parent = Distribution::start();
    let first = Image::new("linux/amd64", &[random_bytes(1101, 4 * KIB)]);
    skopeo_seed(work.path(), &parent.host(), "poll/app", &[("v1", &first)]);
    let proxy = Proxy::start(parent.port);
    let child = Node::child(
        &proxy.endpoint(),
        json!({"repositories": ["poll/app"], "pollInterval": "PT1S", "maxPollInterval": "PT4S"}),
    );
    wait_for_tag(
        &child,
        "poll/app",
        "v1",
        &first.digest,
        Duration::from_secs(30),
    );
    // Idle: the pauses grow 1 s → 2 s → 4 s and stay at 4 s.
    proxy.clear_requests();
    std::thread::sleep(Duration::from_secs(17));
    let gaps = pass_gaps(&proxy, "poll/app");
    assert!(gaps.len() >= 3, "too few passes while idle: {gaps:?}");
    assert!(
        gaps.windows(2).all(|w| w[1] >= w[0] - 0.5),
        "idle pauses shrank: {gaps:?}"
    );
    let last = *gaps.last().unwrap();
    assert!(
        (3.5..6.0).contains(&last),
        "the pause settles at maxPollInterval (4 s): {gaps:?}"
    );
    // Nothing but the pass itself goes out: tags/list, a HEAD of the tag and the tag's referrers.
    for r in proxy.requests() {
        assert!(
            r.path() == "/v2/poll/app/tags/list"
                || (r.method == "HEAD" && r.path() == "/v2/poll/app/manifests/v1")
                || (r.method == "GET" && r.path().starts_with("/v2/poll/app/referrers/")),
            "unexpected request while idle: {}",
            r.line
        );
    }

    // A change is noticed within one long pause, and the pause returns to 1 s.
    let second = Image::new("linux/amd64", &[random_bytes(1102, 4 * KIB)]);
    skopeo_seed(work.path(), &parent.host(), "poll/app", &[("v2", &second)]);
    wait_for_tag(
        &child,
        "poll/app",
        "v2",
        &second.digest,
        Duration::from_secs(15),
    );
    std::thread::sleep(Duration::from_millis(3000));
    let fetched_at = proxy
        .matching("GET", |p| p.starts_with("/v2/poll/app/manifests/"))
        .last()
        .expect("the new manifest was fetched")
        .at;
    let lists: Vec<Duration> = proxy
        .matching("GET", |p| p == "/v2/poll/app/tags/list")
        .iter()
        .map(|r| r.at)
        .collect();
    let fetching_pass = lists.iter().rev().find(|at| **at <= fetched_at).unwrap();
    let next_pass = lists.iter().find(|at| **at > fetched_at);
    let pause = next_pass.map(|n| (*n - *fetching_pass).as_secs_f64());
    assert!(
        pause.is_some_and(|p| p < 2.5),
        "after a pass that fetched something the next one follows after pollInterval (1 s), \
         not the 4 s of idle; passes at {lists:?}, fetch at {fetched_at:?}"
    );
}
