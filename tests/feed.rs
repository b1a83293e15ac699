//! The node-to-node endpoints over real HTTP against the running binary: the change feed children
//! follow (events, long-poll wake-up, cursors, errors, shutdown while a poll waits), the status
//! endpoint, and `connected-registry status` printing it.

use crate::common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::peers::{self, Image};
use common::{free_port, Registry, BIN};
use reqwest::blocking::Client;
use reqwest::StatusCode;
use serde_json::{json, Value};

const FEED: &str = "/acr/connected-registry/v1/changes";
const STATUS: &str = "/acr/connected-registry/v1/status";

fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

/// Push a small image (config + one layer) under `reference` with the shared harness.
fn push_image(reg: &Registry, repo: &str, reference: &str, layer: &[u8]) -> Image {
    let image = Image::new("linux/amd64", &[layer.to_vec()]);
    peers::push_image(&reg.url(""), repo, reference, &image);
    image
}

/// One page of the feed, asserting a 200.
fn changes(c: &Client, reg: &Registry, query: &str) -> Value {
    let r = c.get(reg.url(&format!("{FEED}?{query}"))).send().unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{query}");
    assert_eq!(
        r.headers()["content-type"].to_str().unwrap(),
        "application/json"
    );
    r.json().unwrap()
}

fn assert_error(r: reqwest::blocking::Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(r.status(), status, "expected {status} {code}");
    let body: Value = r.json().expect("error body is JSON");
    assert_eq!(body["errors"][0]["code"], code, "{body}");
    assert!(body["errors"][0]["message"].as_str().unwrap().len() > 3);
    body
}

#[test]
fn events_for_push_tag_untag_delete() {
    let reg = Registry::start();
    let c = client();

    let empty = changes(&c, &reg, "since=0");
    assert_eq!(empty, json!({"events": [], "next": 0}));
    // `since` defaults to 0.
    assert_eq!(changes(&c, &reg, ""), empty);

    let repo = "feed/app";
    let image = push_image(&reg, repo, "v1", b"layer one");
    let digest = image.digest.clone();
    peers::push_image(&reg.url(""), repo, "v2", &image); // same manifest, new tag
    peers::delete_manifest(&reg.url(""), repo, "v1"); // untag
    peers::delete_manifest(&reg.url(""), repo, &digest); // untag v2, then delete
    let by_digest = {
        let layerless = Image::new("linux/amd64", &[]);
        peers::push_image(&reg.url(""), "other", &layerless.digest, &layerless);
        layerless.digest
    };

    let page = changes(&c, &reg, "since=0");
    let events = page["events"].as_array().unwrap();
    let got: Vec<(&str, &str, Option<&str>, &str)> = events
        .iter()
        .map(|e| {
            (
                e["repository"].as_str().unwrap(),
                e["action"].as_str().unwrap(),
                e["tag"].as_str(),
                e["digest"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (repo, "push", Some("v1"), digest.as_str()),
            (repo, "tag", Some("v2"), digest.as_str()),
            (repo, "untag", Some("v1"), digest.as_str()),
            (repo, "untag", Some("v2"), digest.as_str()),
            (repo, "delete", None, digest.as_str()),
            ("other", "push", None, by_digest.as_str()),
        ],
        "{page}"
    );
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    for e in events {
        let time = e["time"].as_str().unwrap();
        assert!(
            chrono::DateTime::parse_from_rfc3339(time).is_ok(),
            "bad time {time}"
        );
    }
    assert_eq!(page["next"].as_u64().unwrap(), *seqs.last().unwrap());

    // Paging from the middle, and from the end with no wait.
    let rest = changes(&c, &reg, &format!("since={}", seqs[2]));
    assert_eq!(rest["events"].as_array().unwrap().len(), 3);
    assert_eq!(rest["events"][0]["seq"].as_u64().unwrap(), seqs[3]);
    let next = page["next"].as_u64().unwrap();
    let started = Instant::now();
    let end = changes(&c, &reg, &format!("since={next}&wait=0"));
    assert_eq!(end, json!({"events": [], "next": next}));
    assert!(started.elapsed() < Duration::from_secs(2));

    // Events survive a restart, and new ones carry on after them.
    let mut reg = reg;
    assert!(reg.terminate().success());
    reg.restart();
    assert_eq!(changes(&c, &reg, "since=0")["events"], page["events"]);
    push_image(&reg, repo, "v3", b"layer three");
    let after = changes(&c, &reg, &format!("since={next}"));
    assert_eq!(after["events"].as_array().unwrap().len(), 1, "{after}");
    assert!(after["events"][0]["seq"].as_u64().unwrap() > next);
    assert_eq!(after["events"][0]["tag"], "v3");
}

#[test]
fn long_poll_wakes_on_a_push() {
    let reg = Registry::start();
    let c = client();
    push_image(&reg, "poll", "first", b"first");
    let next = changes(&c, &reg, "since=0")["next"].as_u64().unwrap();

    let url = reg.url(&format!("{FEED}?since={next}&wait=10"));
    let poll = std::thread::spawn(move || {
        let started = Instant::now();
        let r = client().get(url).send().unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let body: Value = r.json().unwrap();
        (started.elapsed(), body)
    });
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        !poll.is_finished(),
        "the long-poll returned before any change"
    );
    let digest = push_image(&reg, "poll", "second", b"second").digest;
    let (elapsed, body) = poll.join().unwrap();
    assert!(elapsed < Duration::from_secs(9), "took {elapsed:?}");
    let events = body["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{body}");
    assert_eq!(events[0]["repository"], "poll");
    assert_eq!(events[0]["action"], "push");
    assert_eq!(events[0]["tag"], "second");
    assert_eq!(events[0]["digest"], digest.as_str());
    assert_eq!(body["next"], events[0]["seq"]);

    // With nothing new, a short wait ends empty after about the wait.
    let next = body["next"].as_u64().unwrap();
    let started = Instant::now();
    let empty = changes(&c, &reg, &format!("since={next}&wait=1"));
    assert_eq!(empty, json!({"events": [], "next": next}));
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

#[test]
fn bad_cursors_and_methods_are_refused() {
    let reg = Registry::start();
    let c = client();
    for query in ["since=abc", "since=-1", "since=1.5", "wait=x", "wait=-3"] {
        let r = c.get(reg.url(&format!("{FEED}?{query}"))).send().unwrap();
        assert_error(r, StatusCode::BAD_REQUEST, "BAD_REQUEST");
    }
    let r = c.post(reg.url(FEED)).send().unwrap();
    assert_error(r, StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED");
    let r = c
        .get(reg.url("/acr/connected-registry/v1/nothing"))
        .send()
        .unwrap();
    assert_error(r, StatusCode::NOT_FOUND, "NOT_FOUND");

    // A cursor this registry never handed out (its log was reset, or it belongs to another
    // registry) is expired: the child must reconcile in full, then follow from `latest`.
    push_image(&reg, "x", "v1", b"x");
    let latest = changes(&c, &reg, "since=0")["next"].as_u64().unwrap();
    let r = c
        .get(reg.url(&format!("{FEED}?since={}", latest + 1000)))
        .send()
        .unwrap();
    let body = assert_error(r, StatusCode::GONE, "MESSAGES_EXPIRED");
    assert_eq!(body["errors"][0]["detail"]["latest"], latest, "{body}");

    // A huge wait is capped, not refused (checked with an event already there).
    let page = changes(&c, &reg, "since=0&wait=100000");
    assert_eq!(page["events"].as_array().unwrap().len(), 1);
}

#[test]
fn status_endpoint_and_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("config.toml");
    std::fs::write(&config, "name = \"factorya\"\n").unwrap();
    let reg = Registry::start_with(&["--config", config.to_str().unwrap()]);
    let c = client();
    push_image(&reg, "apps/hello", "v1", &[7u8; 4096]);

    let r = c.get(reg.url(STATUS)).send().unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let s: Value = r.json().unwrap();
    assert_eq!(s["name"], "factorya", "{s}");
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(s["mode"], "ReadWrite");
    assert_eq!(s["activation"]["status"], "Active");
    assert!(s["activation"]["since"].is_string(), "{s}");
    assert_eq!(s["connectionState"], "Online");
    assert_eq!(s["loginServer"]["host"], reg.host());
    assert_eq!(s["loginServer"]["tls"]["status"], "Disabled");
    assert!(s["parent"].is_null(), "{s}");
    assert!(
        s["sync"].is_object() && s["statusDetails"].is_array(),
        "{s}"
    );
    let used = s["storage"]["usedBytes"].as_u64().unwrap();
    assert!(used >= 4096, "{s}");
    assert!(s["storage"]["availableBytes"].as_u64().unwrap() > 0, "{s}");

    let out = Command::new(BIN)
        .args(["status", "--url", &reg.url("")])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "NAME",
        "factorya",
        "CONNECTION STATE",
        "Online",
        "ReadWrite",
        "Active",
        "- (root)",
        "STORAGE",
        "KiB used",
    ] {
        assert!(table.contains(want), "missing {want:?} in:\n{table}");
    }

    let out = Command::new(BIN)
        .args(["status", "--json", "--url", &reg.url("/")])
        .output()
        .unwrap();
    assert!(out.status.success());
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["name"], "factorya");

    // Nobody listening: a clear message and a failing exit status.
    let closed = format!("http://127.0.0.1:{}", free_port());
    let out = Command::new(BIN)
        .args(["status", "--url", &closed])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach the registry"), "{err}");
    assert!(err.contains(&closed), "{err}");
}

#[test]
fn sigterm_ends_a_pending_long_poll() {
    let mut reg = Registry::start();
    let url = reg.url(&format!("{FEED}?since=0&wait=60"));
    let poll = std::thread::spawn(move || {
        let started = Instant::now();
        let r = client().get(url).send();
        (started.elapsed(), r.map(|r| r.status()))
    });
    std::thread::sleep(Duration::from_millis(1000));
    assert!(
        !poll.is_finished(),
        "the long-poll returned before any change"
    );
    let stopping = Instant::now();
    reg.send_sigterm();
    let status = reg
        .wait_exit(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("still running 5 s after SIGTERM; log:\n{}", reg.log_text()));
    assert!(status.success(), "{status}; log:\n{}", reg.log_text());
    assert!(stopping.elapsed() < Duration::from_secs(5));
    let (elapsed, result) = poll.join().unwrap();
    assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    // The poll was answered (empty) before the connection closed.
    assert_eq!(result.unwrap(), StatusCode::OK);
}

#[test]
fn events_older_than_the_child_ttl_expire_its_cursor() {
    let reg = Registry::start();
    let c = client();
    push_image(&reg, "ttl/app", "v1", b"layer");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    // The child last saw nothing (since=0) and the first event it missed is older than 1 s.
    let r = c
        .get(reg.url(&format!("{FEED}?since=0&ttl=1")))
        .send()
        .unwrap();
    let body = assert_error(r, StatusCode::GONE, "MESSAGES_EXPIRED");
    let latest = body["errors"][0]["detail"]["latest"].as_u64().unwrap();
    assert!(latest >= 1, "{body}");
    // A longer TTL still gets the events, and a cursor at `latest` is simply up to date.
    let page = changes(&c, &reg, "since=0&ttl=3600");
    assert!(!page["events"].as_array().unwrap().is_empty());
    let page = changes(&c, &reg, &format!("since={latest}&ttl=1"));
    assert_eq!(page["events"], serde_json::json!([]));
}

/// A thousand children long-polling at once (issue 11): every one of them is answered with the
/// event of one push, with its digest, on its own connection.
#[test]
fn a_thousand_long_polls_are_all_answered() {
    const CHILDREN: usize = 1000;
    common::raise_open_files_limit();
    let reg = Registry::start();
    let c = client();
    push_image(&reg, "many", "seed", b"seed");
    let next = changes(&c, &reg, "since=0")["next"].as_u64().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let addr = format!("127.0.0.1:{}", reg.port);
    let polls: Vec<_> = (0..CHILDREN)
        .map(|_| {
            let (addr, sent) = (addr.clone(), sent.clone());
            runtime.spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                // Every failure is returned with what it was, so an early end says why.
                let mut stream = tokio::net::TcpStream::connect(&addr)
                    .await
                    .map_err(|e| format!("connect: {e}"))?;
                let request = format!(
                    "GET {FEED}?since={next}&wait=60 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                );
                stream
                    .write_all(request.as_bytes())
                    .await
                    .map_err(|e| format!("send: {e}"))?;
                sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut answer = Vec::new();
                let read = stream.read_to_end(&mut answer).await;
                let answer = String::from_utf8_lossy(&answer).into_owned();
                read.map_err(|e| format!("read: {e} after {answer:?}"))?;
                Ok::<String, String>(answer)
            })
        })
        .collect();
    assert!(
        common::peers::wait_until(Duration::from_secs(60), || {
            sent.load(std::sync::atomic::Ordering::SeqCst) == CHILDREN
                || polls.iter().any(|p| p.is_finished())
        }),
        "not every long-poll was sent"
    );
    // Let the server take in the last requests; none of them may have been answered yet.
    std::thread::sleep(Duration::from_secs(1));
    if let Some(early) = polls.iter().position(|p| p.is_finished()) {
        let polls_sent = sent.load(std::sync::atomic::Ordering::SeqCst);
        let outcome = runtime.block_on(polls.into_iter().nth(early).unwrap());
        panic!("poll {early} of {polls_sent} sent ended before any push: {outcome:?}");
    }
    let digest = push_image(&reg, "many", "wake", b"wake").digest;
    let answers = runtime.block_on(async {
        let mut answers = Vec::new();
        for poll in polls {
            answers.push(
                tokio::time::timeout(Duration::from_secs(60), poll)
                    .await
                    .expect("a long-poll was never answered")
                    .unwrap()
                    .unwrap_or_else(|e| panic!("a long-poll failed: {e}")),
            );
        }
        answers
    });
    assert_eq!(answers.len(), CHILDREN);
    for answer in answers {
        let (head, body) = answer.split_once("\r\n\r\n").expect("a whole response");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let page: Value = serde_json::from_str(body).expect("a JSON page");
        let events = page["events"].as_array().unwrap();
        assert_eq!(events.len(), 1, "{page}");
        assert_eq!(events[0]["tag"], "wake");
        assert_eq!(events[0]["digest"], digest.as_str());
    }
}
