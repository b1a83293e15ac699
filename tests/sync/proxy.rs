//! The test proxy itself: what it records, and that its controls do what they say.

use super::*;

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
