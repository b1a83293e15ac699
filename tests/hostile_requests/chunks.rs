//! Upload chunks whose bytes do not match their `Content-Range`.

use super::*;

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
