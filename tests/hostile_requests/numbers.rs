//! Numbers outside every range a parameter or header accepts: a 400 OCI error, never a panic.

use super::*;

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
