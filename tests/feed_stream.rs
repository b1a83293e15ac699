//! The change feed as a stream (`Upgrade: cr-changes/1`): against the running binary over raw
//! sockets (the switch, pages and heartbeats on one connection, the checks made before the
//! switch, a stopping server, the connection cap, a thousand streams at once), and a real child
//! against a hostile parent whose streams are broken (closed at once, garbage) or carry a page.

use crate::common;

use std::io::{ErrorKind, Read};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::credentials::{basic, create_sync_token, token_command, SecuredNode};
use common::hostile_child::*;
use common::hostile_parent::{Feed, HostileParent};
use common::peers::*;
use common::{raw, Registry};
use serde_json::{json, Value};

const FEED: &str = "/acr/connected-registry/v1/changes";
const PROTOCOL: &str = "cr-changes/1";

/// A raw stream request's connection: lines read from what followed the answer's head.
struct Lines {
    pending: Vec<u8>,
    stream: TcpStream,
}

impl Lines {
    /// The next line within `within`, parsed; `None` if the stream ended.
    fn line(&mut self, within: Duration) -> Option<Value> {
        let started = Instant::now();
        loop {
            if let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                let text = String::from_utf8_lossy(&line);
                return Some(
                    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}")),
                );
            }
            let left = within
                .checked_sub(started.elapsed())
                .unwrap_or_else(|| panic!("no whole line within {within:?}: {:?}", self.pending));
            self.stream
                .set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            let mut buf = [0u8; 4096];
            match self.stream.read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => return None,
            }
        }
    }
}

/// A raw stream request: the answer's head (lower-cased) and the connection after it.
fn open(host: &str, query: &str, upgrade: &str) -> (String, Lines) {
    open_as(host, query, upgrade, None)
}

/// [`open`] with an `Authorization` header.
fn open_as(host: &str, query: &str, upgrade: &str, authorization: Option<&str>) -> (String, Lines) {
    let mut stream = raw::connect(host);
    let mut headers = vec![("Connection", "upgrade"), ("Upgrade", upgrade)];
    headers.extend(authorization.map(|a| ("Authorization", a)));
    raw::send_http1(
        &mut stream,
        "GET",
        &format!("{FEED}?{query}"),
        &headers,
        b"",
    );
    let (head, pending) = raw::read_head(&mut stream, Duration::from_secs(10)).expect("an answer");
    (head.to_lowercase(), Lines { pending, stream })
}

/// A non-101 answer: its head and body, lower-cased.
fn refused(host: &str, query: &str, upgrade: &str) -> String {
    let (head, mut lines) = open(host, query, upgrade);
    assert!(!head.starts_with("http/1.1 101"), "{head}");
    lines
        .stream
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 4096];
    while let Ok(n @ 1..) = lines.stream.read(&mut buf) {
        lines.pending.extend_from_slice(&buf[..n]);
    }
    format!(
        "{head}\n\n{}",
        String::from_utf8_lossy(&lines.pending).to_lowercase()
    )
}

fn tags_in(page: &Value) -> Vec<(String, String)> {
    page["events"]
        .as_array()
        .unwrap_or_else(|| panic!("not a page: {page}"))
        .iter()
        .filter_map(|e| {
            Some((
                e["tag"].as_str()?.to_owned(),
                e["digest"].as_str()?.to_owned(),
            ))
        })
        .collect()
}

fn host(reg: &Registry) -> String {
    format!("127.0.0.1:{}", reg.port)
}

/// After the switch, one connection carries what was there, a heartbeat while nothing happens,
/// and each later push as it lands, each a page with its digest.
#[test]
fn a_stream_carries_pages_heartbeats_and_new_pushes() {
    let reg = Registry::start();
    let base = reg.url("");
    let v1 = image(3101, 500);
    push_image(&base, "stream/app", "v1", &v1);
    let (head, mut stream) = open(&host(&reg), "since=0&heartbeat=1", PROTOCOL);
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: cr-changes/1"), "{head}");
    assert!(!head.contains("content-length"), "{head}");

    let first = stream
        .line(Duration::from_secs(5))
        .expect("the events already there");
    assert_eq!(
        tags_in(&first),
        vec![("v1".into(), v1.digest.clone())],
        "{first}"
    );
    let next = first["next"].as_u64().unwrap();
    let started = Instant::now();
    let beat = stream.line(Duration::from_secs(5)).expect("a heartbeat");
    assert_eq!(beat, json!({"events": [], "next": next}));
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );

    let v2 = image(3102, 500);
    push_image(&base, "stream/app", "v2", &v2);
    let page = loop {
        let page = stream
            .line(Duration::from_secs(5))
            .expect("the push's page");
        if !tags_in(&page).is_empty() {
            break page;
        }
    };
    assert_eq!(
        tags_in(&page),
        vec![("v2".into(), v2.digest.clone())],
        "{page}"
    );
    assert!(page["next"].as_u64().unwrap() > next, "{page}");
}

/// Pushes racing from several clients while a child streams: a page may carry several of them
/// (whatever became durable while the last line was written), but every event arrives exactly
/// once, in sequence order, each with its digest.
#[test]
fn a_burst_of_pushes_arrives_whole_and_in_order() {
    const PUSHERS: u64 = 4;
    const EACH: u64 = 6;
    let reg = Registry::start();
    let base = reg.url("");
    let (head, mut stream) = open(&host(&reg), "since=0&heartbeat=30", PROTOCOL);
    assert!(head.starts_with("http/1.1 101"), "{head}");
    let mut expected: Vec<(String, String)> = std::thread::scope(|scope| {
        let pushers: Vec<_> = (0..PUSHERS)
            .map(|p| {
                let base = &base;
                scope.spawn(move || {
                    (0..EACH)
                        .map(|i| {
                            let seed = 3200 + p * EACH + i;
                            let image = image(seed, 300);
                            let tag = format!("t{seed}");
                            push_image(base, "burst/app", &tag, &image);
                            (tag, image.digest)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        pushers
            .into_iter()
            .flat_map(|p| p.join().unwrap())
            .collect()
    });
    let (mut seen, mut pages, mut last_seq, mut last_next) = (Vec::new(), 0, 0, 0);
    while seen.len() < expected.len() {
        let page = stream
            .line(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("the stream ended after {seen:?}"));
        pages += 1;
        for event in page["events"].as_array().unwrap() {
            let seq = event["seq"].as_u64().unwrap();
            assert!(
                seq > last_seq,
                "out of order: {seq} after {last_seq}: {page}"
            );
            last_seq = seq;
        }
        let next = page["next"].as_u64().unwrap();
        assert!(next >= last_seq && next >= last_next, "{page}");
        last_next = next;
        seen.extend(tags_in(&page));
    }
    seen.sort();
    expected.sort();
    assert_eq!(seen, expected, "each push's event exactly once");
    println!("{} pushes arrived in {pages} pages", expected.len());
}

/// Everything a long-poll checks is checked before the switch, with the same errors; a request
/// for another protocol is an ordinary long-poll.
#[test]
fn stream_requests_are_checked_before_the_switch() {
    let reg = Registry::start();
    let v1 = image(3111, 500);
    push_image(&reg.url(""), "checked/app", "v1", &v1);
    let answer = refused(&host(&reg), "since=0&heartbeat=0", PROTOCOL);
    assert!(answer.starts_with("http/1.1 400"), "{answer}");
    assert!(
        answer.contains("bad_request") && answer.contains("heartbeat"),
        "{answer}"
    );
    let answer = refused(&host(&reg), "since=x", PROTOCOL);
    assert!(answer.starts_with("http/1.1 400"), "{answer}");
    std::thread::sleep(Duration::from_millis(1100));
    let answer = refused(&host(&reg), "since=0&ttl=1", PROTOCOL);
    assert!(answer.starts_with("http/1.1 410"), "{answer}");
    assert!(answer.contains("messages_expired"), "{answer}");
    let answer = refused(&host(&reg), "since=0&wait=0", "websocket");
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(answer.contains("\"tag\":\"v1\""), "{answer}");
}

/// A stopping server ends its streams (the child sees the end and asks again elsewhere) and
/// exits at once.
#[test]
fn sigterm_ends_a_stream() {
    let mut reg = Registry::start();
    let (head, mut stream) = open(&host(&reg), "since=0", PROTOCOL);
    assert!(head.starts_with("http/1.1 101"), "{head}");
    reg.send_sigterm();
    let status = reg
        .wait_exit(Duration::from_secs(5))
        .unwrap_or_else(|| panic!("still running 5 s after SIGTERM; log:\n{}", reg.log_text()));
    assert!(status.success(), "{status}; log:\n{}", reg.log_text());
    assert_eq!(
        stream.line(Duration::from_secs(5)),
        None,
        "the stream ended"
    );
}

/// A stream lasts as long as its credentials: one is asked for with the child's sync token
/// (none: 401, before any switch), and disabling the token while it is open ends it; asking
/// again is refused.
#[test]
fn a_stream_ends_when_its_token_is_disabled() {
    let mut password = String::new();
    let node = SecuredNode::start(json!({"name": "rootnode"}), |config| {
        password = create_sync_token(config, "childa", "apps/*");
    });
    let host = host(&node.reg);
    let auth = basic("childa", &password);
    let answer = refused(&host, "since=0", PROTOCOL);
    assert!(answer.starts_with("http/1.1 401"), "{answer}");
    let (head, mut stream) = open_as(&host, "since=0&heartbeat=60", PROTOCOL, Some(&auth));
    assert!(head.starts_with("http/1.1 101"), "{head}");
    let out = token_command(&node.config, &["disable", "--name", "childa"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The node re-reads its configuration within a second or so; the heartbeat is a minute off.
    assert_eq!(
        stream.line(Duration::from_secs(15)),
        None,
        "the stream ended"
    );
    let (head, _) = open_as(&host, "since=0", PROTOCOL, Some(&auth));
    assert!(head.starts_with("http/1.1 401"), "{head}");
}

/// Children waiting at the same place get one line made for all of them only when they may read
/// every event in it: a child whose token covers `apps/*` and one whose token covers `secret/*`
/// each see only their own repository's pushes, in turn, as the other one's pass them by.
#[test]
fn each_stream_gets_only_what_its_token_may_read() {
    let (mut pusher, mut apps, mut secret) = (String::new(), String::new(), String::new());
    let node = SecuredNode::start(json!({"name": "rootnode"}), |config| {
        pusher = common::credentials::create_token(
            config,
            "pusher",
            &["--repository", "*", "content/read", "content/write"],
        );
        apps = create_sync_token(config, "childa", "apps/*");
        secret = create_sync_token(config, "childb", "secret/*");
    });
    let (host, base) = (host(&node.reg), node.base());
    let pusher = basic("pusher", &pusher);
    let mut streams: Vec<Lines> = [("childa", &apps), ("childb", &secret)]
        .into_iter()
        .map(|(name, password)| {
            let auth = basic(name, password);
            let (head, lines) = open_as(&host, "since=0&heartbeat=60", PROTOCOL, Some(&auth));
            assert!(head.starts_with("http/1.1 101"), "{name}: {head}");
            lines
        })
        .collect();
    for (n, repo) in ["apps/one", "secret/one", "apps/two", "secret/two"]
        .into_iter()
        .enumerate()
    {
        let image = image(3300 + n as u64, 300);
        common::credentials::push_image_as(&base, Some(&pusher), repo, "v1", &image)
            .unwrap_or_else(|r| panic!("push to {repo}: {}", r.status));
        for (stream, allowed) in streams.iter_mut().zip(["apps/", "secret/"]) {
            let page = stream
                .line(Duration::from_secs(10))
                .unwrap_or_else(|| panic!("{allowed} stream ended at push {n}"));
            let events = page["events"].as_array().unwrap();
            if repo.starts_with(allowed) {
                assert_eq!(events.len(), 1, "{allowed}: {page}");
                assert_eq!(events[0]["repository"], repo, "{page}");
                assert_eq!(events[0]["digest"], image.digest.as_str(), "{page}");
            } else {
                assert!(events.is_empty(), "{allowed} was shown {repo}: {page}");
            }
        }
    }
}

/// A stream holds its connection's place under `maxConnections` until it ends.
#[test]
fn streams_count_under_the_connection_cap() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("config.json");
    let limits = json!({"limits": {"maxConnections": 3}});
    std::fs::write(&cfg, limits.to_string()).unwrap();
    let reg = Registry::start_with(&["--config", cfg.to_str().unwrap()]);
    let mut streams: Vec<Lines> = (0..3)
        .map(|_| {
            let (head, stream) = open(&host(&reg), "since=0", PROTOCOL);
            assert!(head.starts_with("http/1.1 101"), "{head}");
            stream
        })
        .collect();
    let mut extra = raw::connect(&host(&reg));
    raw::send_http1(&mut extra, "GET", "/v2/", &[], b"");
    let (head, _) = raw::read_head(&mut extra, Duration::from_secs(5)).expect("an answer");
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    drop(streams.pop());
    let served = wait_until(Duration::from_secs(10), || {
        get(&reg.url(""), "/v2/").status == 200
    });
    assert!(served, "a closed stream gave its place back");
}

/// A thousand children on streams at once: every one gets the event of one push, with its
/// digest, on its own connection.
#[test]
fn a_thousand_streams_all_get_the_event() {
    const CHILDREN: usize = 1000;
    common::raise_open_files_limit();
    let reg = Registry::start();
    let seed = image(3121, 500);
    push_image(&reg.url(""), "many/app", "seed", &seed);
    let latest = get(&reg.url(""), &format!("{FEED}?since=0")).json()["next"]
        .as_u64()
        .unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let switched = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let children: Vec<_> = (0..CHILDREN)
        .map(|_| {
            let (addr, switched) = (host(&reg), switched.clone());
            runtime.spawn(async move {
                use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
                let stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
                let mut stream = tokio::io::BufReader::new(stream);
                let request = format!(
                    "GET {FEED}?since={latest} HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: {PROTOCOL}\r\n\r\n"
                );
                stream.get_mut().write_all(request.as_bytes()).await.unwrap();
                let mut head = String::new();
                while !head.ends_with("\r\n\r\n") {
                    assert!(stream.read_line(&mut head).await.unwrap() > 0, "{head}");
                }
                assert!(head.starts_with("HTTP/1.1 101"), "{head}");
                switched.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut page = String::new();
                stream.read_line(&mut page).await.unwrap();
                page
            })
        })
        .collect();
    assert!(
        wait_until(Duration::from_secs(60), || {
            switched.load(std::sync::atomic::Ordering::SeqCst) == CHILDREN
        }),
        "not every stream was switched"
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        children.iter().all(|c| !c.is_finished()),
        "a stream wrote early"
    );
    let wake = image(3122, 500);
    push_image(&reg.url(""), "many/app", "wake", &wake);
    let pages = runtime.block_on(async {
        let mut pages = Vec::new();
        for child in children {
            let page = tokio::time::timeout(Duration::from_secs(60), child)
                .await
                .expect("a stream never got the event")
                .unwrap();
            pages.push(page);
        }
        pages
    });
    assert_eq!(pages.len(), CHILDREN);
    for page in pages {
        let page: Value = serde_json::from_str(&page).expect("a JSON page");
        assert_eq!(
            tags_in(&page),
            vec![("wake".into(), wake.digest.clone())],
            "{page}"
        );
    }
}

// ---- a real child against a hostile parent's streams -------------------------------------

/// A stream's line, as the hostile parent sends it.
fn page_line(events: Value, next: u64) -> Vec<u8> {
    let mut line = serde_json::to_vec(&json!({"events": events, "next": next})).unwrap();
    line.push(b'\n');
    line
}

/// A page that arrives on a stream is applied: the tag it names is fetched and served. (The
/// parent's streams end after their lines; the child asks again.)
#[test]
fn a_page_on_a_stream_is_applied() {
    let parent = HostileParent::start();
    let v1 = image(3131, 2000);
    parent.add_image("app", "v1", &v1);
    parent.set_feed(Feed::Stream(page_line(json!([]), 0)));
    let child = child_of(&parent, &["app"]);
    wait_serves(&child, "app", "v1", &v1, MINUTE);
    assert!(
        wait_until(MINUTE, || parent.count("heartbeat=") > 0),
        "the child never asked for a stream"
    );
    // The parent gets v2 now; only a stream says so (no pass runs while the feed works).
    let v2 = image(3132, 2000);
    parent.add_image("app", "v2", &v2);
    let event = json!({"seq": 7, "time": "2026-01-01T00:00:00Z", "repository": "app",
                       "action": "push", "tag": "v2", "digest": v2.digest});
    parent.set_feed(Feed::Stream(page_line(json!([event]), 7)));
    wait_serves(&child, "app", "v2", &v2, MINUTE);
}

/// A stream the parent closes at once, or whose line is not a page, is asked for again at a
/// paced rate (not in a loop); what the child holds stays served.
#[test]
fn broken_streams_are_paced() {
    for (what, bytes) in [
        ("closed at once", Vec::new()),
        ("garbage", b"not a page\n".to_vec()),
    ] {
        let parent = HostileParent::start();
        let app = image(3141, 2000);
        parent.add_image("app", "v1", &app);
        parent.set_feed(Feed::Stream(bytes));
        let child = child_of(&parent, &["app"]);
        wait_serves(&child, "app", "v1", &app, MINUTE);
        std::thread::sleep(Duration::from_secs(2));
        let before = parent.count(FEED);
        let streams_before = parent.count("heartbeat=");
        std::thread::sleep(Duration::from_secs(10));
        let asked = parent.count(FEED) - before;
        let streams = parent.count("heartbeat=") - streams_before;
        println!("{what}: {asked} feed requests in 10 s, {streams} of them for a stream");
        assert!(
            streams >= 1,
            "{what}: the child stopped asking for a stream"
        );
        assert!(asked <= 12, "{what}: {asked} feed requests in 10 s");
        assert_serves(&child.url(""), "app", "v1", &app, None);
    }
}
