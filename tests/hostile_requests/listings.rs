//! Lists that would not fit one response: referrers with megabytes of annotations, tens of
//! thousands of tags and repositories. Every page is bounded and the walk complete.

use super::*;

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
