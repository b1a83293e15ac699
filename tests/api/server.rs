//! The server around the API: `/v2/`, names, paths and malformed input, TLS with HTTP/2 and
//! HTTP/1.1, what the binary refuses to start with, and a child node as a read-only mirror.

use super::*;

#[test]
fn base_endpoint() {
    let reg = Registry::start();
    let r = client().get(reg.url("/v2/")).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        header(&r, "docker-distribution-api-version"),
        "registry/2.0"
    );
    assert_eq!(r.text().unwrap(), "{}");
}

#[test]
fn names_paths_and_malformed_input() {
    let reg = Registry::start();
    let c = client();
    // Any number of components, including ones named like API keywords.
    let deep = "a/b/c/d/e/f/g/blobs/manifests/tags";
    let (digest, _) = push_image(&c, &reg, deep, "v1", b"deep");
    let r = c
        .get(reg.url(&format!("/v2/{deep}/manifests/v1")))
        .send()
        .unwrap();
    assert_eq!(header(&r, "docker-content-digest"), digest);

    for bad in ["UPPER/case", "a//b", "-a", "a_", "a%2Fb"] {
        assert_error(
            c.get(reg.url(&format!("/v2/{bad}/tags/list")))
                .send()
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
        );
    }
    // Path tricks reqwest would normalise: sent raw.
    assert_eq!(
        raw_status(
            &reg,
            b"GET /v2/a/../../etc/passwd/blobs/sha256:00 HTTP/1.1\r\nHost: x\r\n\r\n"
        ),
        400
    );
    assert_eq!(
        raw_status(
            &reg,
            b"GET /v2/../blobs/uploads/ HTTP/1.1\r\nHost: x\r\n\r\n"
        ),
        400
    );
    let traversal = format!(
        "GET /v2/x/blobs/sha256:..%2F..%2F{} HTTP/1.1\r\nHost: x\r\n\r\n",
        "0".repeat(58)
    );
    assert_eq!(raw_status(&reg, traversal.as_bytes()), 400);

    assert_error(
        c.get(reg.url("/v2/x/blobs/sha256:abc")).send().unwrap(),
        StatusCode::BAD_REQUEST,
        "DIGEST_INVALID",
    );
    assert_error(
        c.get(reg.url("/v2/x/blobs/md5:d41d8cd98f00b204e9800998ecf8427e"))
            .send()
            .unwrap(),
        StatusCode::BAD_REQUEST,
        "DIGEST_INVALID",
    );
    assert_error(
        c.post(reg.url("/v2/x/blobs/uploads/?digest=sha256:zz"))
            .body("a")
            .send()
            .unwrap(),
        StatusCode::BAD_REQUEST,
        "DIGEST_INVALID",
    );
    // Monolithic upload whose bytes do not match: refused, nothing stored.
    let d = sha256(b"expected");
    assert_error(
        c.post(reg.url(&format!("/v2/x/blobs/uploads/?digest={d}")))
            .body("other")
            .send()
            .unwrap(),
        StatusCode::BAD_REQUEST,
        "DIGEST_INVALID",
    );
    assert_eq!(
        c.head(reg.url(&format!("/v2/x/blobs/{d}")))
            .send()
            .unwrap()
            .status(),
        404
    );
    assert!(common::files_under(&reg.data_path("tmp")).is_empty());

    assert_error(
        c.get(reg.url("/v2/x/nothing/here")).send().unwrap(),
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
    );
    assert_error(
        c.get(reg.url("/elsewhere")).send().unwrap(),
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
    );
    assert_error(
        c.post(reg.url(&format!("/v2/x/blobs/{d}"))).send().unwrap(),
        StatusCode::METHOD_NOT_ALLOWED,
        "UNSUPPORTED",
    );

    // Huge headers are refused by the HTTP layer, and the server keeps serving.
    let huge = format!(
        "GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let mut s = std::net::TcpStream::connect(("127.0.0.1", reg.port)).unwrap();
    let _ = s.write_all(huge.as_bytes());
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    let text = String::from_utf8_lossy(&resp);
    assert!(
        text.starts_with("HTTP/1.1 431") || text.is_empty(),
        "{text}"
    );
    // A Content-Length that lies (body shorter than promised, then the client hangs up).
    let mut s = std::net::TcpStream::connect(("127.0.0.1", reg.port)).unwrap();
    s.write_all(format!("POST /v2/x/blobs/uploads/?digest={d} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nshort").as_bytes()).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    assert_eq!(c.get(reg.url("/v2/")).send().unwrap().status(), 200);
    assert_eq!(
        c.head(reg.url(&format!("/v2/x/blobs/{d}")))
            .send()
            .unwrap()
            .status(),
        404
    );
    assert!(!reg.log_text().contains("panicked"));
}

/// A client that shuts its side of the connection once its request is out gets its answer, over
/// a raw socket and from busybox `nc` (the shell health probe), as distribution gives it.
#[test]
fn a_client_that_half_closes_after_its_request_is_answered() {
    let reg = Registry::start();
    for (request, status, body) in [
        (
            "GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n",
            "HTTP/1.1 200",
            "\r\n\r\n{}",
        ),
        (
            "GET /healthz HTTP/1.0\r\n\r\n",
            "HTTP/1.0 200",
            "\r\n\r\nok",
        ),
        (
            "GET /v2/x/manifests/none HTTP/1.1\r\nHost: x\r\n\r\n",
            "HTTP/1.1 404",
            "MANIFEST_UNKNOWN",
        ),
    ] {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", reg.port)).unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        s.write_all(request.as_bytes()).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with(status), "{request:?} -> {answer:?}");
        assert!(answer.contains(body), "{request:?} -> {answer:?}");
    }
    let busybox = common::require("busybox");
    let probe = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' | {} nc -w 5 127.0.0.1 {}",
            busybox.display(),
            reg.port
        ))
        .output()
        .unwrap();
    let answer = String::from_utf8_lossy(&probe.stdout);
    assert!(
        answer.starts_with("HTTP/1.0 200") && answer.ends_with("\r\n\r\nok"),
        "busybox nc got {answer:?}"
    );
    assert!(!reg.log_text().contains("panicked"));
}

#[test]
fn tls_serves_http2_and_http11() {
    let tls = common::TlsRegistry::start();
    let reg = &tls.reg;
    let root = reqwest::Certificate::from_pem(tls.cert_pem.as_bytes()).unwrap();
    let url = tls.url("/v2/");

    let h2 = Client::builder()
        .add_root_certificate(root.clone())
        .use_rustls_tls()
        .build()
        .unwrap();
    let r = h2.get(&url).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_2);

    let h1 = Client::builder()
        .add_root_certificate(root)
        .use_rustls_tls()
        .http1_only()
        .build()
        .unwrap();
    let r = h1.get(&url).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_11);

    // A blob round trip over HTTP/2.
    let data = vec![7u8; 3 * 1024 * 1024 + 17];
    let digest = sha256(&data);
    let r = h2
        .post(format!(
            "https://localhost:{}/v2/t/blobs/uploads/?digest={digest}",
            reg.port
        ))
        .body(data.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let got = h2
        .get(format!(
            "https://localhost:{}/v2/t/blobs/{digest}",
            reg.port
        ))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    assert_eq!(sha256(&got), digest);

    // Plain HTTP on the TLS port is not served.
    assert!(client().get(reg.url("/v2/")).send().is_err());
}

/// `connected-registry serve` with `args`, which must refuse to start: what it printed.
fn refused_start(args: &[&str]) -> String {
    let out = std::process::Command::new(common::BIN)
        .arg("serve")
        .args(args)
        .output()
        .unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn refuses_anonymous_on_a_non_loopback_address_and_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let err = refused_start(&["--listen", "0.0.0.0:0", "--data-dir", &path("open")]);
    assert!(err.contains("not a loopback address"), "{err}");

    let cfg = path("c.json");
    std::fs::write(&cfg, r#"{"lisen": "127.0.0.1:1"}"#).unwrap();
    let err = refused_start(&["--config", &cfg]);
    assert!(err.contains("lisen"), "{err}");

    std::fs::write(&cfg, r#"{"storage": {"metadataCache": "100KiB"}}"#).unwrap();
    let data = path("data");
    let err = refused_start(&[
        "--listen",
        "127.0.0.1:0",
        "--config",
        &cfg,
        "--data-dir",
        &data,
    ]);
    assert!(
        err.contains("storage.metadataCache") && err.contains("too small"),
        "{err}"
    );
    assert!(
        !std::path::Path::new(&data).exists(),
        "the store was opened"
    );
}

#[test]
fn a_child_node_is_a_read_only_mirror() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("child.json");
    // The parent is never reached in this test; only the local API is exercised.
    let unused = common::free_port();
    std::fs::write(
        &cfg,
        format!(r#"{{"parent": {{"endpoint": "http://127.0.0.1:{unused}", "sync": {{"repositories": ["x"]}}}}}}"#),
    )
    .unwrap();
    let reg = Registry::start_with(&["--config", cfg.to_str().unwrap()]);
    let c = client();
    let d = sha256(b"pushed to a child");
    assert_error(
        c.post(reg.url(&format!("/v2/x/blobs/uploads/?digest={d}")))
            .body("pushed to a child")
            .send()
            .unwrap(),
        StatusCode::FORBIDDEN,
        "DENIED",
    );
    assert_error(
        c.put(reg.url("/v2/x/manifests/v1"))
            .header("Content-Type", OCI_MANIFEST)
            .body("{}")
            .send()
            .unwrap(),
        StatusCode::FORBIDDEN,
        "DENIED",
    );
    assert_error(
        c.delete(reg.url(&format!("/v2/x/blobs/{d}")))
            .send()
            .unwrap(),
        StatusCode::FORBIDDEN,
        "DENIED",
    );
    assert_eq!(c.get(reg.url("/v2/")).send().unwrap().status(), 200);
    assert_error(
        c.get(reg.url("/v2/x/manifests/v1")).send().unwrap(),
        StatusCode::NOT_FOUND,
        "MANIFEST_UNKNOWN",
    );

    // A mode that does not exist is refused by name before anything starts.
    std::fs::write(
        &cfg,
        format!(r#"{{"mode": "ReadWriteX", "parent": {{"endpoint": "http://127.0.0.1:{unused}", "sync": {{"repositories": ["x"]}}}}}}"#),
    )
    .unwrap();
    let stderr = refused_start(&["--listen", "127.0.0.1:0", "--config", cfg.to_str().unwrap()]);
    assert!(
        stderr.contains("ReadWriteX") && stderr.contains("ReadOnly"),
        "{stderr}"
    );
}
