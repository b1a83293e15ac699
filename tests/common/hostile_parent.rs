//! A misbehaving parent: a small HTTP/1.1 server in the test process that serves the OCI
//! distribution API for the images a test gives it, and misbehaves on purpose, path by path, as
//! the test says — drip bytes, lie about sizes, stream forever, cut connections mid-blob, loop
//! `Link` headers, answer any status — so the real node can be tried as its child. It also takes
//! pushes (upload sessions and manifests, [`uploads`]), so a ReadWrite child can be tried
//! against a parent that refuses chunks, lies about a session or keeps corrupted bytes.
//!
//! One thread per connection, one request per connection (`Connection: close`), plain blocking
//! I/O: the point is control, not speed. Every request line is recorded for the test to count.

mod answer;
mod uploads;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

use super::peers::{Image, OCI_INDEX};
use super::sha256;
use answer::{index_answer, write_answer, Answer};

/// What a rule makes the parent do instead of answering normally.
#[derive(Clone, Debug)]
pub enum Behavior {
    /// Answer this status with an OCI error body.
    Status(u16),
    /// Answer normally, but send the body at this many bytes per second.
    Drip(u64),
    /// 200 with no length, streaming zeros until the client goes away.
    Forever,
    /// Answer normally (honouring `Range`), but close the connection after this many body bytes.
    CutAfter(usize),
    /// For a listing (`_catalog`, `tags/list`, referrers): every page is full of new entries and
    /// links to yet another page.
    EndlessPages,
    /// Accept the connection and never answer.
    Hang,
    /// `307 Temporary Redirect` to this location.
    Redirect(String),
    /// For an upload session (`GET` or `PATCH`): claim it holds this many bytes (`Range`),
    /// taking nothing.
    SessionHolds(u64),
    /// Take the request as usual, but with the first byte of its body flipped (a parent that
    /// keeps corrupted bytes of a chunk).
    Garble,
}

struct Rule {
    /// The rule applies to requests whose `METHOD target` contains this.
    contains: String,
    behavior: Behavior,
    /// How many more requests it applies to (`None`: all).
    remaining: Option<usize>,
}

/// What the change feed (`/acr/connected-registry/v1/changes`) answers.
#[derive(Clone, Debug)]
pub enum Feed {
    /// 404, as a plain OCI registry.
    Absent,
    /// This status for every feed request (403, 502, …).
    Status(u16),
    /// 200 with no events, at once, whatever the `wait`.
    EmptyAtOnce,
    /// 410 `MESSAGES_EXPIRED` every time.
    AlwaysExpired,
    /// A stream request (`Upgrade`) is switched (`101`) and gets these bytes, then the
    /// connection closes; a long-poll gets an empty page at once.
    Stream(Vec<u8>),
}

#[derive(Default)]
struct Content {
    /// repository → tag → digest.
    tags: BTreeMap<String, BTreeMap<String, String>>,
    /// digest → (media type, bytes).
    manifests: HashMap<String, (String, Arc<Vec<u8>>)>,
    blobs: HashMap<String, Arc<Vec<u8>>>,
    /// sha256 of a manifest → the name it is announced by (`Docker-Content-Digest`) and served
    /// under besides its sha256.
    names: HashMap<String, String>,
    /// subject digest → referrer descriptors; `None` map entry = no referrers API.
    referrers: Option<HashMap<String, Vec<serde_json::Value>>>,
    /// Pushes in progress.
    uploads: uploads::Uploads,
}

struct Shared {
    content: Mutex<Content>,
    rules: Mutex<Vec<Rule>>,
    feed: Mutex<Feed>,
    log: Mutex<Vec<String>>,
    stop: AtomicBool,
}

/// The misbehaving parent; stops accepting on drop.
pub struct HostileParent {
    pub port: u16,
    shared: Arc<Shared>,
}

impl HostileParent {
    pub fn start() -> HostileParent {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            content: Mutex::new(Content::default()),
            rules: Mutex::new(Vec::new()),
            feed: Mutex::new(Feed::Absent),
            log: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let s = shared.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if s.stop.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let s = s.clone();
                std::thread::spawn(move || {
                    let _ = serve(&s, stream);
                });
            }
        });
        HostileParent { port, shared }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Serve `image` (its blobs and children too) as `repo:tag`.
    pub fn add_image(&self, repo: &str, tag: &str, image: &Image) {
        self.add_untagged(repo, image);
        self.tag(repo, tag, &image.digest);
    }

    /// Serve `image` (blobs, children) by digest only.
    pub fn add_untagged(&self, repo: &str, image: &Image) {
        for b in &image.blobs {
            self.add_blob(&b.bytes);
        }
        for c in &image.children {
            self.add_untagged(repo, c);
        }
        self.add_manifest(&image.media_type, image.bytes.clone());
        self.shared
            .content
            .lock()
            .unwrap()
            .tags
            .entry(repo.to_owned())
            .or_default();
    }

    /// Serve these manifest bytes by their digest; returns the digest.
    pub fn add_manifest(&self, media_type: &str, bytes: Vec<u8>) -> String {
        let digest = sha256(&bytes);
        self.shared
            .content
            .lock()
            .unwrap()
            .manifests
            .insert(digest.clone(), (media_type.to_owned(), Arc::new(bytes)));
        digest
    }

    /// Serve these blob bytes by their digest; returns the digest.
    pub fn add_blob(&self, bytes: &[u8]) -> String {
        let digest = sha256(bytes);
        self.shared
            .content
            .lock()
            .unwrap()
            .blobs
            .insert(digest.clone(), Arc::new(bytes.to_vec()));
        digest
    }

    /// Announce the manifest `digest` (a sha256) as `name` in `Docker-Content-Digest` and serve
    /// it under that name too: its true sha512, or a lie.
    pub fn name_manifest(&self, digest: &str, name: &str) {
        self.shared
            .content
            .lock()
            .unwrap()
            .names
            .insert(digest.to_owned(), name.to_owned());
    }

    /// Point `repo:tag` at `digest`.
    pub fn tag(&self, repo: &str, tag: &str, digest: &str) {
        self.shared
            .content
            .lock()
            .unwrap()
            .tags
            .entry(repo.to_owned())
            .or_default()
            .insert(tag.to_owned(), digest.to_owned());
    }

    /// Turn the referrers API on (answering an empty index for subjects with none).
    pub fn enable_referrers(&self) {
        let mut c = self.shared.content.lock().unwrap();
        c.referrers.get_or_insert_with(HashMap::new);
    }

    /// List `referrer` (served in `repo`) as a referrer of `subject`.
    pub fn add_referrer(&self, repo: &str, subject: &str, referrer: &Image) {
        self.add_untagged(repo, referrer);
        let mut c = self.shared.content.lock().unwrap();
        let mut d = json!({
            "mediaType": referrer.media_type,
            "digest": referrer.digest,
            "size": referrer.bytes.len(),
        });
        if let Some(t) = &referrer.artifact_type {
            d["artifactType"] = json!(t);
        }
        c.referrers
            .get_or_insert_with(HashMap::new)
            .entry(subject.to_owned())
            .or_default()
            .push(d);
    }

    /// Misbehave on every request whose `METHOD target` contains `contains`.
    pub fn on(&self, contains: &str, behavior: Behavior) {
        self.rule(contains, behavior, None);
    }

    /// Misbehave on the next `times` requests whose `METHOD target` contains `contains`.
    pub fn on_times(&self, contains: &str, behavior: Behavior, times: usize) {
        self.rule(contains, behavior, Some(times));
    }

    fn rule(&self, contains: &str, behavior: Behavior, remaining: Option<usize>) {
        self.shared.rules.lock().unwrap().push(Rule {
            contains: contains.to_owned(),
            behavior,
            remaining,
        });
    }

    /// Behave again.
    pub fn behave(&self) {
        self.shared.rules.lock().unwrap().clear();
        *self.shared.feed.lock().unwrap() = Feed::Absent;
    }

    pub fn set_feed(&self, feed: Feed) {
        *self.shared.feed.lock().unwrap() = feed;
    }

    /// Every request so far, as `METHOD target`.
    pub fn requests(&self) -> Vec<String> {
        self.shared.log.lock().unwrap().clone()
    }

    /// How many requests so far had a target containing `contains`.
    pub fn count(&self, contains: &str) -> usize {
        self.shared
            .log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(contains))
            .count()
    }
}

impl Drop for HostileParent {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// A chain of `depth` single-child indexes over `leaf`, all served in `repo`; returns the top
/// index's digest.
pub fn nested_indexes(parent: &HostileParent, repo: &str, leaf: &Image, depth: usize) -> String {
    parent.add_untagged(repo, leaf);
    let mut child = (
        leaf.media_type.clone(),
        leaf.digest.clone(),
        leaf.bytes.len(),
    );
    for _ in 0..depth {
        let doc = json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [{"mediaType": child.0, "digest": child.1, "size": child.2}],
        });
        let bytes = serde_json::to_vec(&doc).unwrap();
        let len = bytes.len();
        let digest = parent.add_manifest(OCI_INDEX, bytes);
        child = (OCI_INDEX.to_owned(), digest, len);
    }
    child.1
}

// ---- serving ---------------------------------------------------------------------------------

/// One request as read: its line, the headers a misbehaviour or an upload needs, its body.
pub(super) struct Request {
    pub method: String,
    pub target: String,
    /// Where a `Range: bytes=N-` asks to start.
    pub range: Option<usize>,
    /// A `Content-Range: N-M` (an upload chunk's place).
    pub content_range: Option<(u64, u64)>,
    pub content_type: Option<String>,
    /// It asked to switch protocols (`Upgrade: …`): the change-feed stream.
    pub upgrade: bool,
    pub body: Vec<u8>,
}

/// Largest request body taken (one upload chunk is 32 MiB).
const MAX_BODY: usize = 64 << 20;

fn read_request(reader: &mut BufReader<TcpStream>) -> std::io::Result<Request> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let mut req = Request {
        method: parts.next().unwrap_or("").to_owned(),
        target: parts.next().unwrap_or("").to_owned(),
        range: None,
        content_range: None,
        content_type: None,
        upgrade: false,
        body: Vec::new(),
    };
    let mut length = 0;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        let Some((k, v)) = h.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
        match k.as_str() {
            "range" => {
                req.range = v
                    .strip_prefix("bytes=")
                    .and_then(|r| r.split('-').next())
                    .and_then(|n| n.parse::<usize>().ok());
            }
            "content-range" => {
                let v = v.strip_prefix("bytes ").unwrap_or(v);
                req.content_range = v
                    .split_once('-')
                    .and_then(|(a, b)| Some((a.parse().ok()?, b.split('/').next()?.parse().ok()?)));
            }
            "content-length" => length = v.parse::<usize>().unwrap_or(0).min(MAX_BODY),
            "content-type" => req.content_type = Some(v.to_owned()),
            "upgrade" => req.upgrade = true,
            _ => {}
        }
    }
    req.body = vec![0; length];
    reader.read_exact(&mut req.body)?;
    Ok(req)
}

fn serve(shared: &Shared, stream: TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut req = read_request(&mut reader)?;
    let (method, target, range) = (req.method.clone(), req.target.clone(), req.range);
    let asked = Asked {
        method: &method,
        target: &target,
        range,
        upgrade: req.upgrade,
    };
    let line = format!("{method} {target}");
    shared.log.lock().unwrap().push(line.clone());
    let behavior = {
        let mut rules = shared.rules.lock().unwrap();
        let found = rules
            .iter_mut()
            .find(|r| line.contains(&r.contains) && r.remaining != Some(0));
        found.map(|r| {
            if let Some(n) = r.remaining.as_mut() {
                *n -= 1;
            }
            r.behavior.clone()
        })
    };
    let garble = matches!(behavior, Some(Behavior::Garble));
    let mut stream = stream;
    match behavior {
        Some(Behavior::Status(code)) => {
            let a = Answer::error(code, "HOSTILE");
            write_answer(&mut stream, &method, a, None, None)
        }
        Some(Behavior::Redirect(location)) => {
            let a = Answer::new(307, Vec::new()).header("Location", &location);
            write_answer(&mut stream, &method, a, None, None)
        }
        Some(Behavior::Hang) => {
            std::thread::sleep(Duration::from_secs(3600));
            Ok(())
        }
        Some(Behavior::Forever) => {
            stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n")?;
            let chunk = vec![0u8; 64 << 10];
            loop {
                stream.write_all(&chunk)?;
            }
        }
        Some(Behavior::EndlessPages) => {
            let page = shared
                .log
                .lock()
                .unwrap()
                .iter()
                .filter(|l| l.contains("page="))
                .count();
            let path = target.split('?').next().unwrap_or("").to_owned();
            let entries: Vec<String> = (0..1000).map(|i| format!("e{page}x{i}")).collect();
            let a = if path.contains("/referrers/") {
                let manifests: Vec<_> = entries
                    .iter()
                    .map(|e| {
                        json!({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                               "digest": sha256(e.as_bytes()), "size": 10})
                    })
                    .collect();
                index_answer(manifests)
            } else if path.ends_with("_catalog") {
                Answer::json(200, json!({"repositories": entries}))
            } else {
                Answer::json(200, json!({"name": "x", "tags": entries}))
            };
            let a = a.header(
                "Link",
                &format!("<{path}?page={}&n=1000>; rel=\"next\"", page + 1),
            );
            write_answer(&mut stream, &method, a, None, None)
        }
        Some(Behavior::Drip(rate)) => {
            let a = answer(shared, &asked);
            write_answer(&mut stream, &method, a, Some(rate), None)
        }
        Some(Behavior::CutAfter(n)) => {
            let a = answer(shared, &asked);
            write_answer(&mut stream, &method, a, None, Some(n))
        }
        Some(Behavior::SessionHolds(n)) => {
            let path = target.split('?').next().unwrap_or("");
            let a = Answer::new(if method == "GET" { 204 } else { 202 }, Vec::new())
                .header("Location", path)
                .header("Range", &format!("0-{}", n.saturating_sub(1)));
            write_answer(&mut stream, &method, a, None, None)
        }
        Some(Behavior::Garble) | None => {
            if garble {
                if let Some(first) = req.body.first_mut() {
                    *first ^= 0xff;
                }
            }
            let pushed = uploads::answer(&mut shared.content.lock().unwrap(), &req);
            let a = pushed.unwrap_or_else(|| answer(shared, &asked));
            write_answer(&mut stream, &method, a, None, None)
        }
    }
}

/// What [`answer`] goes by.
struct Asked<'a> {
    method: &'a str,
    target: &'a str,
    range: Option<usize>,
    upgrade: bool,
}

/// The normal answer to a request.
fn answer(shared: &Shared, asked: &Asked) -> Answer {
    let Asked {
        method,
        target,
        range,
        upgrade,
    } = *asked;
    let path = target.split('?').next().unwrap_or("");
    if path == "/v2/" || path == "/v2" {
        return Answer::json(200, json!({}));
    }
    if path.starts_with("/acr/connected-registry/v1/changes") {
        return match shared.feed.lock().unwrap().clone() {
            Feed::Absent => Answer::error(404, "NOT_FOUND"),
            Feed::Status(code) => Answer::error(code, "HOSTILE"),
            Feed::EmptyAtOnce => Answer::json(200, json!({"events": [], "next": 0})),
            Feed::Stream(bytes) if upgrade => {
                Answer::new(101, bytes).header("Upgrade", "cr-changes/1")
            }
            Feed::Stream(_) => Answer::json(200, json!({"events": [], "next": 0})),
            Feed::AlwaysExpired => Answer::json(
                410,
                json!({"errors": [{"code": "MESSAGES_EXPIRED", "message": "gone",
                                   "detail": {"since": 0, "latest": 0}}]}),
            ),
        };
    }
    let c = shared.content.lock().unwrap();
    if path == "/v2/_catalog" {
        let repos: Vec<&String> = c.tags.keys().collect();
        return Answer::json(200, json!({ "repositories": repos }));
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return Answer::error(404, "NOT_FOUND");
    };
    if let Some(repo) = rest.strip_suffix("/tags/list") {
        return match c.tags.get(repo) {
            Some(tags) => {
                let tags: Vec<&String> = tags.keys().collect();
                Answer::json(200, json!({"name": repo, "tags": tags}))
            }
            None => Answer::error(404, "NAME_UNKNOWN"),
        };
    }
    if let Some(i) = rest.rfind("/manifests/") {
        let repo = &rest[..i];
        let reference = &rest[i + "/manifests/".len()..];
        let digest = if reference.contains(':') {
            let named = c.names.iter().find(|(_, name)| name.as_str() == reference);
            Some(
                named
                    .map_or(reference, |(digest, _)| digest.as_str())
                    .to_owned(),
            )
        } else {
            c.tags.get(repo).and_then(|t| t.get(reference)).cloned()
        };
        return match digest.and_then(|d| c.manifests.get(&d).map(|m| (d, m.clone()))) {
            Some((digest, (media_type, bytes))) => Answer {
                status: 200,
                headers: vec![
                    ("Content-Type".into(), media_type),
                    (
                        "Docker-Content-Digest".into(),
                        c.names.get(&digest).cloned().unwrap_or(digest),
                    ),
                ],
                body: bytes,
                start: 0,
            },
            None => Answer::error(404, "MANIFEST_UNKNOWN"),
        };
    }
    if let Some(i) = rest.rfind("/blobs/") {
        let digest = &rest[i + "/blobs/".len()..];
        return match c.blobs.get(digest) {
            Some(bytes) => {
                let len = bytes.len();
                match range.filter(|_| method == "GET") {
                    Some(start) if start >= len => Answer::error(416, "RANGE"),
                    Some(start) => Answer {
                        status: 206,
                        headers: vec![(
                            "Content-Range".into(),
                            format!("bytes {start}-{}/{len}", len - 1),
                        )],
                        body: bytes.clone(),
                        start,
                    },
                    None => Answer {
                        status: 200,
                        headers: vec![("Docker-Content-Digest".into(), digest.to_owned())],
                        body: bytes.clone(),
                        start: 0,
                    },
                }
            }
            None => Answer::error(404, "BLOB_UNKNOWN"),
        };
    }
    if let Some(i) = rest.rfind("/referrers/") {
        let subject = &rest[i + "/referrers/".len()..];
        return match &c.referrers {
            None => Answer::error(404, "NOT_FOUND"),
            Some(map) => index_answer(map.get(subject).cloned().unwrap_or_default()),
        };
    }
    Answer::error(404, "NOT_FOUND")
}
