//! What a hostile or careless client can ask for, against the running binary: lists that would
//! not fit one response (referrers with megabytes of annotations, tens of thousands of tags and
//! repositories), numbers outside every range a parameter or header accepts, upload chunks whose
//! bytes do not match their `Content-Range`, and manifests nested deeper than clients can parse.
//! Every answer is bounded, every refusal is a 4xx OCI error, and no request makes the server
//! panic (the harness fails any test whose registry log shows a panic).

use crate::common;

use std::collections::{BTreeSet, HashSet};
use std::io::{Read, Write};
use std::time::Duration;

use common::peers::{get, push_blob, random_bytes, request, Blob, Http, Image, MIB, OCI_MANIFEST};
use common::{sha256, Registry};
use reqwest::Method;
use serde_json::{json, Value};

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const FEED: &str = "/acr/connected-registry/v1/changes";

/// The largest manifest the registry accepts (and so the largest one referrer descriptor).
const MAX_MANIFEST: usize = 4 * MIB;

fn assert_oci_error(r: &Http, status: u16, code: &str, what: &str) -> String {
    assert_eq!(r.status, status, "{what}: {}", r.text());
    let body = r.json();
    assert_eq!(body["errors"][0]["code"], code, "{what}: {body}");
    body["errors"][0]["message"].as_str().unwrap().to_owned()
}

/// The target of `Link: <…>; rel="next"`, if any.
fn next_link(r: &Http) -> Option<String> {
    let link = r.header("link")?;
    assert!(link.ends_with("rel=\"next\""), "{link}");
    let start = link.find('<').unwrap() + 1;
    let end = link.find('>').unwrap();
    Some(link[start..end].to_owned())
}

/// Follow `Link` from `path`, returning every page.
fn walk(base: &str, path: &str) -> Vec<Http> {
    let mut pages = Vec::new();
    let mut next = Some(path.to_owned());
    let mut seen = HashSet::new();
    while let Some(path) = next {
        assert!(seen.insert(path.clone()), "the pages loop at {path}");
        let r = get(base, &path);
        assert_eq!(r.status, 200, "GET {path}: {}", r.text());
        next = next_link(&r);
        pages.push(r);
    }
    pages
}

fn digests_of(pages: &[Http]) -> Vec<String> {
    pages
        .iter()
        .flat_map(|p| {
            assert_eq!(p.header("content-type"), Some(OCI_INDEX));
            let index = p.json();
            assert_eq!(index["schemaVersion"], 2);
            assert_eq!(index["mediaType"], OCI_INDEX);
            index["manifests"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["digest"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Reset the process's peak RSS (VmHWM) so the next peak is of what follows; false if the
/// kernel does not allow it (the peak then includes what came before, which only loosens the
/// check).
fn reset_peak_rss(reg: &Registry) -> bool {
    std::fs::write(format!("/proc/{}/clear_refs", reg.pid()), "5").is_ok()
}

/// A referrer of `subject` whose annotations carry `annotation_bytes` bytes.
fn big_referrer(
    base: &str,
    repo: &str,
    subject: &Image,
    i: u64,
    annotation_bytes: usize,
) -> String {
    let config = Blob::new(common::peers::OCI_EMPTY, b"{}".to_vec());
    let layer = Blob::new("application/vnd.example.payload", b"signature".to_vec());
    push_blob(base, repo, &config);
    push_blob(base, repo, &layer);
    let filler = hex::encode(random_bytes(i, annotation_bytes / 2));
    let doc = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.big",
        "config": config.descriptor(),
        "layers": [layer.descriptor()],
        "subject": subject.descriptor(),
        "annotations": {"org.example.index": i.to_string(), "org.example.filler": filler},
    });
    let bytes = serde_json::to_vec(&doc).unwrap();
    assert!(bytes.len() < MAX_MANIFEST);
    let digest = sha256(&bytes);
    let r = request(
        Method::PUT,
        base,
        &format!("/v2/{repo}/manifests/{digest}"),
        &[("Content-Type", OCI_MANIFEST)],
        Some(bytes),
    );
    assert_eq!(r.status, 201, "PUT referrer {i}: {}", r.text());
    digest
}

#[test]
fn referrers_are_paged_and_each_page_is_bounded() {
    let reg = Registry::start();
    let base = reg.url("");
    let subject = Image::new("linux/amd64", &[b"subject layer".to_vec()]);
    common::peers::push_image(&base, "sig/app", "v1", &subject);
    let count = 20;
    let mut want = BTreeSet::new();
    for i in 0..count {
        want.insert(big_referrer(&base, "sig/app", &subject, i, 3 * MIB));
    }
    let first = format!("/v2/sig/app/referrers/{}", subject.digest);

    // One walk: every referrer exactly once, over several pages, none of them large.
    let pages = walk(&base, &first);
    let got = digests_of(&pages);
    assert_eq!(got.len(), count as usize, "each referrer exactly once");
    assert_eq!(got.iter().cloned().collect::<BTreeSet<_>>(), want);
    assert!(pages.len() > 1, "{} referrers of 3 MiB fit one page", count);
    for p in &pages {
        // A page holds at most about 1 MiB of descriptors, or one descriptor (which is bounded
        // by the manifest limit) when that alone is larger.
        assert!(
            p.body.len() <= MAX_MANIFEST + 64 * 1024,
            "a page of {} bytes",
            p.body.len()
        );
    }
    // Annotations are listed whole, as the spec requires.
    let d = &pages[0].json()["manifests"][0];
    assert_eq!(
        d["annotations"]["org.example.filler"]
            .as_str()
            .unwrap()
            .len(),
        3 * MIB
    );

    // Four clients walking the whole list at once do not make the server hold it four times
    // (unpaged, each request held the 60 MiB list at least twice: ~300 MiB more at the peak).
    let before = reg.rss_bytes();
    let reset = reset_peak_rss(&reg);
    let walks: Vec<_> = (0..4)
        .map(|_| {
            let (base, first) = (base.clone(), first.clone());
            std::thread::spawn(move || digests_of(&walk(&base, &first)).len())
        })
        .collect();
    for w in walks {
        assert_eq!(w.join().unwrap(), count as usize);
    }
    let peak = reg.peak_rss_bytes();
    let growth = peak.saturating_sub(before);
    eprintln!(
        "RSS before the walks {} MiB, peak during them {} MiB (peak reset: {reset})",
        before >> 20,
        peak >> 20
    );
    assert!(
        growth < 100 * MIB as u64,
        "four concurrent walks grew the server by {} MiB",
        growth >> 20
    );
}

#[test]
fn referrer_pages_keep_n_and_the_artifact_type_filter() {
    let reg = Registry::start();
    let base = reg.url("");
    let subject = Image::new("linux/amd64", &[b"small subject".to_vec()]);
    common::peers::push_image(&base, "small/app", "v1", &subject);
    let mut sboms = BTreeSet::new();
    let mut all = BTreeSet::new();
    for i in 0..23u32 {
        let kind = if i % 2 == 0 {
            "application/vnd.example.sbom"
        } else {
            "application/vnd.example.signature"
        };
        let a = Image::artifact(&subject, kind, format!("payload {i}").as_bytes());
        common::peers::push_image(&base, "small/app", &a.digest, &a);
        if i % 2 == 0 {
            sboms.insert(a.digest.clone());
        }
        all.insert(a.digest);
    }
    let first = format!("/v2/small/app/referrers/{}", subject.digest);

    // Small referrers fit one page.
    let pages = walk(&base, &first);
    assert_eq!(pages.len(), 1);
    assert_eq!(digests_of(&pages).into_iter().collect::<BTreeSet<_>>(), all);

    // `n` pages them, and the Link keeps it.
    let pages = walk(&base, &format!("{first}?n=5"));
    assert_eq!(pages.len(), 5, "23 referrers in pages of 5");
    for p in &pages[..4] {
        assert_eq!(p.json()["manifests"].as_array().unwrap().len(), 5);
        assert!(
            next_link(p).unwrap().contains("n=5"),
            "{:?}",
            p.header("link")
        );
    }
    let got = digests_of(&pages);
    assert_eq!(got.len(), 23);
    assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), all);

    // A filtered walk stays filtered on every page, and says so on every page.
    let filtered = format!("{first}?artifactType=application/vnd.example.sbom&n=4");
    let pages = walk(&base, &filtered);
    assert_eq!(pages.len(), 3, "12 SBOMs in pages of 4");
    for p in &pages {
        assert_eq!(p.header("oci-filters-applied"), Some("artifactType"));
    }
    let got = digests_of(&pages);
    assert_eq!(got.len(), 12);
    assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), sboms);

    // n=0 is an empty index with no Link.
    let r = get(&base, &format!("{first}?n=0"));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["manifests"], json!([]));
    assert!(r.header("link").is_none());
}

/// Send `count` requests one after the other on one connection: `make(i)` gives each one's
/// method, path, headers and body, and each must answer `status`.
#[allow(clippy::type_complexity)]
fn many(
    base: &str,
    count: usize,
    status: u16,
    make: impl Fn(usize) -> (Method, String, Vec<(&'static str, String)>, Vec<u8>),
) {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    for i in 0..count {
        let (method, path, headers, body) = make(i);
        let mut req = client
            .request(method.clone(), format!("{base}{path}"))
            .body(body);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let r = req
            .send()
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let got = r.status().as_u16();
        assert_eq!(
            got,
            status,
            "{method} {path}: {}",
            r.text().unwrap_or_default()
        );
    }
}

#[test]
fn tags_and_catalog_without_n_list_everything_streamed() {
    let reg = Registry::start();
    let base = reg.url("");
    let image = Image::new("linux/amd64", &[b"many tags".to_vec()]);
    common::peers::push_image(&base, "many/tags", "t00000", &image);
    // More than the 10,000 an unpaged answer used to stop at.
    let tags = 10_050;
    many(&base, tags - 1, 201, |i| {
        let path = format!("/v2/many/tags/manifests/t{:05}", i + 1);
        let headers = vec![("Content-Type", OCI_MANIFEST.to_owned())];
        (Method::PUT, path, headers, image.bytes.clone())
    });
    let r = get(&base, "/v2/many/tags/tags/list");
    assert_eq!(r.status, 200);
    assert!(r.header("link").is_none(), "{:?}", r.header("link"));
    assert!(
        r.header("content-length").is_none(),
        "a long list is streamed, not built whole"
    );
    let body = r.json();
    assert_eq!(body["name"], "many/tags");
    let got: Vec<String> = body["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect();
    let want: Vec<String> = (0..tags).map(|i| format!("t{i:05}")).collect();
    assert_eq!(got, want, "every tag once, in order");

    // With an n larger than a page, pages are capped and Link leads through all of them.
    let pages = walk(&base, "/v2/many/tags/tags/list?n=1000000");
    assert!(pages.len() >= 2, "{} pages", pages.len());
    let got: Vec<String> = pages
        .iter()
        .flat_map(|p| {
            assert!(p.body.len() <= 1024 * 1024, "{} bytes", p.body.len());
            p.json()["tags"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(got, want);

    // Each tag was a change event: a feed page is bounded in events and bytes.
    let r = get(&base, &format!("{FEED}?since=0"));
    assert_eq!(r.status, 200);
    let page = r.json();
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 1000);
    assert!(r.body.len() <= 1024 * 1024, "{} bytes", r.body.len());
    assert_eq!(page["next"], events.last().unwrap()["seq"]);

    // The catalog, the same way (a repository is listed once it holds a manifest: an empty
    // index is the smallest).
    let repos = 10_020;
    let index =
        serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}))
            .unwrap();
    many(&base, repos, 201, |i| {
        let path = format!("/v2/repo{i:05}/manifests/latest");
        let headers = vec![("Content-Type", OCI_INDEX.to_owned())];
        (Method::PUT, path, headers, index.clone())
    });
    let r = get(&base, "/v2/_catalog");
    assert_eq!(r.status, 200);
    assert!(r.header("link").is_none());
    assert!(r.header("content-length").is_none());
    let got: Vec<String> = r.json()["repositories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_owned())
        .collect();
    let mut want: Vec<String> = (0..repos).map(|i| format!("repo{i:05}")).collect();
    want.insert(0, "many/tags".to_owned());
    assert_eq!(got, want);
    let pages = walk(&base, "/v2/_catalog?n=4000");
    assert_eq!(pages.len(), 3);
    let paged: Vec<String> = pages
        .iter()
        .flat_map(|p| {
            p.json()["repositories"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(paged, want);
}

/// Numbers no parameter accepts: negative, fractional, not a number, past u64, empty.
const NOT_NUMBERS: &[&str] = &[
    "-1",
    "1.5",
    "abc",
    "",
    "0x10",
    "1e3",
    "18446744073709551616",
    "99999999999999999999999999999",
];

#[test]
fn out_of_range_numbers_are_refused_with_400_and_never_panic() {
    let reg = Registry::start();
    let base = reg.url("");
    let image = Image::new("linux/amd64", &[b"numbers".to_vec()]);
    common::peers::push_image(&base, "num/app", "v1", &image);
    let sig = Image::artifact(&image, "application/vnd.example.sig", b"s");
    common::peers::push_image(&base, "num/app", &sig.digest, &sig);

    // The change feed: since, wait and ttl (an event exists, so ttl is compared with it).
    for p in ["since", "wait", "ttl"] {
        for v in NOT_NUMBERS {
            let r = get(&base, &format!("{FEED}?{p}={v}"));
            let msg = assert_oci_error(&r, 400, "BAD_REQUEST", &format!("{p}={v}"));
            assert!(msg.contains(p), "{msg}");
        }
    }
    for v in [
        "0",
        "7776001",
        "100000000000000",
        "9223372036854775807",
        "9223372036854775808",
        "18446744073709551615",
    ] {
        let r = get(&base, &format!("{FEED}?since=0&ttl={v}"));
        let msg = assert_oci_error(&r, 400, "BAD_REQUEST", &format!("ttl={v}"));
        assert!(msg.contains("ttl") && msg.contains("7776000"), "{msg}");
    }
    // In range, and the edges of the other numbers: answered, not refused.
    for q in [
        "since=0&ttl=1",
        "since=0&ttl=7776000",
        "since=0&wait=0",
        "since=0&wait=18446744073709551615",
    ] {
        let r = get(&base, &format!("{FEED}?{q}"));
        assert!(r.status == 200 || r.status == 410, "{q}: {}", r.text());
    }
    let r = get(&base, &format!("{FEED}?since=18446744073709551615"));
    assert_oci_error(&r, 410, "MESSAGES_EXPIRED", "since=u64::MAX");

    // n of every list.
    let lists = [
        "/v2/num/app/tags/list".to_owned(),
        "/v2/_catalog".to_owned(),
        format!("/v2/num/app/referrers/{}", image.digest),
    ];
    for list in &lists {
        for v in NOT_NUMBERS {
            let r = get(&base, &format!("{list}?n={v}"));
            let msg = assert_oci_error(&r, 400, "BAD_REQUEST", &format!("{list}?n={v}"));
            assert!(msg.contains("n="), "{msg}");
        }
        // The largest n is a page capped by the server, not an overflow.
        let r = get(&base, &format!("{list}?n=18446744073709551615"));
        assert_eq!(r.status, 200, "{list}: {}", r.text());
        assert!(r.header("link").is_none());
    }
    // A `last` that is not a referrer digest.
    let r = get(&base, &format!("{}?last=nope", lists[2]));
    assert_oci_error(&r, 400, "BAD_REQUEST", "referrers last=nope");

    // Range on a blob: huge numbers are positions past any blob, not overflows.
    let layer = &image.blobs[1];
    let blob = format!("/v2/num/app/blobs/{}", layer.digest);
    let len = layer.bytes.len();
    for (range, status) in [
        ("bytes=0-99999999999999999999999", 206),
        ("bytes=-99999999999999999999999", 206),
        ("bytes=0-18446744073709551615", 206),
        ("bytes=99999999999999999999999-", 416),
        ("bytes=18446744073709551615-18446744073709551615", 416),
        ("bytes=18446744073709551615-", 416),
        ("bytes=3-2", 200),
    ] {
        let r = request(Method::GET, &base, &blob, &[("Range", range)], None);
        assert_eq!(r.status, status, "Range {range}: {}", r.text());
        if status == 206 {
            assert_eq!(r.body, layer.bytes, "Range {range}");
            assert_eq!(
                r.header("content-range"),
                Some(format!("bytes 0-{}/{len}", len - 1).as_str())
            );
        }
    }

    // Content-Range and Content-Length of upload chunks.
    let upload = || {
        let r = request(Method::POST, &base, "/v2/num/up/blobs/uploads/", &[], None);
        assert_eq!(r.status, 202);
        r.header("location").unwrap().to_owned()
    };
    for (range, length) in [
        ("0-18446744073709551615", "0"),
        ("bytes 0-18446744073709551615/*", "0"),
        ("1-18446744073709551615", "0"),
    ] {
        let location = upload();
        let r = request(
            Method::PATCH,
            &base,
            &location,
            &[("Content-Range", range), ("Content-Length", length)],
            Some(Vec::new()),
        );
        assert!(
            r.status == 416 || r.status == 400,
            "Content-Range {range} with an empty body: {} {}",
            r.status,
            r.text()
        );
    }
    for range in [
        "0-99999999999999999999999",
        "-1-5",
        "5-",
        "a-b",
        "18446744073709551616-18446744073709551617",
    ] {
        let location = upload();
        let r = request(
            Method::PATCH,
            &base,
            &location,
            &[("Content-Range", range)],
            Some(b"12345".to_vec()),
        );
        assert_oci_error(
            &r,
            400,
            "BLOB_UPLOAD_INVALID",
            &format!("Content-Range {range}"),
        );
    }

    // Manifests nested deeper than clients read back.
    let deep = |depth: usize| {
        let config = &image.blobs[0];
        let mut doc = String::new();
        doc.push_str(&format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{},"layers":[],"x":"#,
            config.descriptor()
        ));
        doc.push_str(&"[".repeat(depth));
        doc.push_str(&"]".repeat(depth));
        doc.push('}');
        doc.into_bytes()
    };
    for depth in [62, 63, 64, 200, 20_000, 1_000_000] {
        let bytes = deep(depth);
        let r = request(
            Method::PUT,
            &base,
            &format!("/v2/num/app/manifests/deep{depth}"),
            &[("Content-Type", OCI_MANIFEST)],
            Some(bytes),
        );
        // The document's own object is level 1, so the array nest adds one more.
        if depth < 64 {
            assert_eq!(r.status, 201, "depth {depth}: {}", r.text());
        } else {
            let msg = assert_oci_error(&r, 400, "MANIFEST_INVALID", &format!("depth {depth}"));
            assert!(msg.contains("64"), "{msg}");
        }
    }

    assert!(!reg.log_text().contains("panicked"), "{}", reg.log_text());
}

/// A reader that yields `data` in pieces of `piece` bytes, so reqwest sends it chunked (no
/// Content-Length).
struct Pieces {
    data: Vec<u8>,
    at: usize,
    piece: usize,
}

impl Read for Pieces {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.piece.min(buf.len()).min(self.data.len() - self.at);
        buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

fn patch_chunked(location: &str, range: &str, data: Vec<u8>) -> (u16, Value, Option<String>) {
    let client = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let body = reqwest::blocking::Body::new(Pieces {
        data,
        at: 0,
        piece: 7,
    });
    let r = client
        .patch(location)
        .header("Content-Range", range)
        .header("Content-Type", "application/octet-stream")
        .body(body)
        .send()
        .unwrap();
    let status = r.status().as_u16();
    let range = r
        .headers()
        .get("range")
        .map(|v| v.to_str().unwrap().to_owned());
    let body: Value = r.json().unwrap_or(Value::Null);
    (status, body, range)
}

/// `PATCH` a chunked body over a plain socket, all of it written before the answer is read: a
/// server that refuses the body early answers before the client has finished sending it, which
/// an HTTP client library may report as a failed send instead of the answer.
fn raw_patch_chunked(port: u16, path: &str, range: &str, data: &[u8]) -> (u16, Value) {
    let mut request = format!(
        "PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Range: {range}\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for piece in data.chunks(7) {
        request.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        request.extend_from_slice(piece);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(&request).unwrap();
    let mut response = Vec::new();
    let _ = s.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

fn upload_offset(base: &str, location: &str) -> u64 {
    let r = get(base, location);
    assert_eq!(r.status, 204, "{}", r.text());
    let range = r.header("range").unwrap();
    let end: u64 = range.split_once('-').unwrap().1.parse().unwrap();
    if end == 0 {
        // "0-0" is also what an empty session says.
        0
    } else {
        end + 1
    }
}

#[test]
fn chunk_bytes_must_match_their_content_range() {
    let reg = Registry::start();
    let base = reg.url("");
    let data = random_bytes(7, 300);
    let start = || {
        let r = request(Method::POST, &base, "/v2/chunks/blobs/uploads/", &[], None);
        assert_eq!(r.status, 202);
        reg.url(r.header("location").unwrap())
    };

    // Fewer bytes than the range declares: refused once the body ends.
    let location = start();
    let (status, body, _) = patch_chunked(&location, "0-99", data[..50].to_vec());
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["errors"][0]["code"], "SIZE_INVALID", "{body}");
    // What arrived stays, and the session resumes from there.
    assert_eq!(upload_offset(&base, &location), 50);
    let (status, body, range) = patch_chunked(&location, "50-99", data[50..100].to_vec());
    assert_eq!(status, 202, "{body}");
    assert_eq!(range.as_deref(), Some("0-99"));

    // More bytes than declared: refused, and nothing past the declared end is written.
    let path = location.strip_prefix(&base).unwrap();
    let (status, body) = raw_patch_chunked(reg.port, path, "100-109", &data[100..200]);
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["errors"][0]["code"], "SIZE_INVALID", "{body}");
    let offset = upload_offset(&base, &location);
    assert!((100..=110).contains(&offset), "offset {offset}");

    // The rest, exactly as declared, completes the blob with the right bytes.
    let (status, body, _) = patch_chunked(
        &location,
        &format!("{offset}-{}", data.len() - 1),
        data[offset as usize..].to_vec(),
    );
    assert_eq!(status, 202, "{body}");
    let digest = sha256(&data);
    let sep = if location.contains('?') { '&' } else { '?' };
    let r = request(
        Method::PUT,
        &base,
        &format!("{location}{sep}digest={digest}"),
        &[],
        None,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    let r = get(&base, &format!("/v2/chunks/blobs/{digest}"));
    assert!(r.body == data);

    // The wrap-around range with an empty body.
    let location = start();
    let r = request(
        Method::PATCH,
        &base,
        &location,
        &[
            ("Content-Range", "0-18446744073709551615"),
            ("Content-Length", "0"),
        ],
        Some(Vec::new()),
    );
    let msg = assert_oci_error(&r, 416, "RANGE_INVALID", "0-18446744073709551615");
    assert!(msg.contains("Content-Range"), "{msg}");
    // The final PUT checks its chunk the same way.
    let r = request(
        Method::PUT,
        &base,
        &format!("{location}?digest={}", sha256(b"abc")),
        &[("Content-Range", "0-9"), ("Content-Length", "3")],
        Some(b"abc".to_vec()),
    );
    assert_oci_error(&r, 400, "SIZE_INVALID", "PUT 0-9 with 3 bytes");
    let client = reqwest::blocking::Client::new();
    let r = client
        .put(format!("{location}?digest={}", sha256(b"abc")))
        .header("Content-Range", "0-9")
        .body(reqwest::blocking::Body::new(Pieces {
            data: b"abc".to_vec(),
            at: 0,
            piece: 1,
        }))
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().unwrap();
    assert_eq!(body["errors"][0]["code"], "SIZE_INVALID", "{body}");
}
