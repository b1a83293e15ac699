//! Blobs: `GET`/`HEAD` with ranges, `DELETE`, every upload flow (monolithic, chunked, status,
//! cancel), `sha512` digests, cross-repository mounts, an upload session across a restart, and
//! pulls by a peer off loopback (large pieces sent from the file with `sendfile`).

use super::*;

#[test]
fn blob_get_head_range_delete() {
    let reg = Registry::start();
    let c = client();
    let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let digest = push_blob(&c, &reg, "a/b", &data);

    let r = c
        .head(reg.url(&format!("/v2/a/b/blobs/{digest}")))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-length"), "10000");
    assert_eq!(header(&r, "docker-content-digest"), digest);

    let r = c
        .get(reg.url(&format!("/v2/a/b/blobs/{digest}")))
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().unwrap().as_ref(), &data[..]);

    let r = c
        .get(reg.url(&format!("/v2/a/b/blobs/{digest}")))
        .header("Range", "bytes=100-199")
        .send()
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(header(&r, "content-range"), "bytes 100-199/10000");
    assert_eq!(r.bytes().unwrap().as_ref(), &data[100..200]);

    let r = c
        .get(reg.url(&format!("/v2/a/b/blobs/{digest}")))
        .header("Range", "bytes=-10")
        .send()
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().unwrap().as_ref(), &data[9990..]);

    let r = c
        .get(reg.url(&format!("/v2/a/b/blobs/{digest}")))
        .header("Range", "bytes=9990-")
        .send()
        .unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().unwrap().as_ref(), &data[9990..]);

    let r = c
        .get(reg.url(&format!("/v2/a/b/blobs/{digest}")))
        .header("Range", "bytes=10000-")
        .send()
        .unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(header(&r, "content-range"), "bytes */10000");

    // The blob is linked to a/b only.
    assert_error(
        c.get(reg.url(&format!("/v2/other/blobs/{digest}")))
            .send()
            .unwrap(),
        StatusCode::NOT_FOUND,
        "BLOB_UNKNOWN",
    );
    let r = c
        .head(reg.url(&format!("/v2/other/blobs/{digest}")))
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);

    let r = c
        .delete(reg.url(&format!("/v2/a/b/blobs/{digest}")))
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_error(
        c.get(reg.url(&format!("/v2/a/b/blobs/{digest}")))
            .send()
            .unwrap(),
        StatusCode::NOT_FOUND,
        "BLOB_UNKNOWN",
    );
    assert_error(
        c.delete(reg.url(&format!("/v2/a/b/blobs/{digest}")))
            .send()
            .unwrap(),
        StatusCode::NOT_FOUND,
        "BLOB_UNKNOWN",
    );
}

#[test]
fn uploads_post_put_patch_chunked_status_cancel() {
    let reg = Registry::start();
    let c = client();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let digest = sha256(&data);

    // POST then PUT with the whole body.
    let r = c.post(reg.url("/v2/up/blobs/uploads/")).send().unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(header(&r, "range"), "0-0");
    assert!(!header(&r, "docker-upload-uuid").is_empty());
    let loc = header(&r, "location");
    assert!(loc.starts_with("/v2/up/blobs/uploads/"), "{loc}");
    let r = c
        .put(reg.url(&format!("{loc}?digest={digest}")))
        .body(data.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(header(&r, "location"), format!("/v2/up/blobs/{digest}"));
    assert_eq!(header(&r, "docker-content-digest"), digest);

    // Streamed PATCH (no Content-Range), then PUT with no body.
    let loc = header(
        &c.post(reg.url("/v2/up2/blobs/uploads/")).send().unwrap(),
        "location",
    );
    let r = c.patch(reg.url(&loc)).body(data.clone()).send().unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(header(&r, "range"), format!("0-{}", data.len() - 1));
    let loc = header(&r, "location");
    let r = c
        .put(reg.url(&format!("{loc}?digest={digest}")))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let got = c
        .get(reg.url(&format!("/v2/up2/blobs/{digest}")))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    assert_eq!(got.as_ref(), &data[..]);

    // Chunked PATCH with Content-Range; status; out-of-order chunk; final chunk on PUT.
    let loc = header(
        &c.post(reg.url("/v2/up3/blobs/uploads/")).send().unwrap(),
        "location",
    );
    let mut offset = 0;
    for chunk in data[..200_000].chunks(65_536) {
        let r = c
            .patch(reg.url(&loc))
            .header(
                "Content-Range",
                format!("{}-{}", offset, offset + chunk.len() - 1),
            )
            .header("Content-Type", "application/octet-stream")
            .body(chunk.to_vec())
            .send()
            .unwrap();
        assert_eq!(r.status(), 202);
        offset += chunk.len();
        assert_eq!(header(&r, "range"), format!("0-{}", offset - 1));
    }
    let r = c.get(reg.url(&loc)).send().unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(header(&r, "range"), "0-199999");
    assert_eq!(header(&r, "location"), loc);
    // A chunk that does not start where the upload ends.
    let r = c
        .patch(reg.url(&loc))
        .header("Content-Range", "100-199")
        .body(vec![0u8; 100])
        .send()
        .unwrap();
    assert_eq!(r.status(), 416);
    assert_eq!(header(&r, "range"), "0-199999");
    // A Content-Range that disagrees with Content-Length.
    let r = c
        .patch(reg.url(&loc))
        .header("Content-Range", "200000-200009")
        .body(vec![0u8; 5])
        .send()
        .unwrap();
    assert_error(r, StatusCode::BAD_REQUEST, "SIZE_INVALID");
    let r = c
        .put(reg.url(&format!("{loc}?digest={digest}")))
        .header("Content-Range", format!("200000-{}", data.len() - 1))
        .body(data[200_000..].to_vec())
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let got = c
        .get(reg.url(&format!("/v2/up3/blobs/{digest}")))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    assert_eq!(sha256(&got), digest);

    // Digest mismatch, missing digest, cancel, unknown session.
    let loc = header(
        &c.post(reg.url("/v2/up4/blobs/uploads/")).send().unwrap(),
        "location",
    );
    assert_error(
        c.put(reg.url(&loc)).body("abc").send().unwrap(),
        StatusCode::BAD_REQUEST,
        "DIGEST_INVALID",
    );
    let wrong = sha256(b"something else");
    assert_error(
        c.put(reg.url(&format!("{loc}?digest={wrong}")))
            .body("abc")
            .send()
            .unwrap(),
        StatusCode::BAD_REQUEST,
        "DIGEST_INVALID",
    );
    assert_eq!(
        c.head(reg.url(&format!("/v2/up4/blobs/{wrong}")))
            .send()
            .unwrap()
            .status(),
        404
    );
    assert_error(
        c.get(reg.url(&format!("/v2/up4/blobs/{wrong}")))
            .send()
            .unwrap(),
        StatusCode::NOT_FOUND,
        "BLOB_UNKNOWN",
    );
    let loc = header(
        &c.post(reg.url("/v2/up4/blobs/uploads/")).send().unwrap(),
        "location",
    );
    assert_eq!(c.delete(reg.url(&loc)).send().unwrap().status(), 204);
    assert_error(
        c.get(reg.url(&loc)).send().unwrap(),
        StatusCode::NOT_FOUND,
        "BLOB_UPLOAD_UNKNOWN",
    );
    assert_error(
        c.patch(reg.url(&loc)).body("x").send().unwrap(),
        StatusCode::NOT_FOUND,
        "BLOB_UPLOAD_UNKNOWN",
    );
    assert_error(
        c.get(reg.url("/v2/up4/blobs/uploads/not-a-uuid"))
            .send()
            .unwrap(),
        StatusCode::NOT_FOUND,
        "BLOB_UPLOAD_UNKNOWN",
    );
    // A session belongs to its repository.
    let loc = header(
        &c.post(reg.url("/v2/up4/blobs/uploads/")).send().unwrap(),
        "location",
    );
    let id = loc.rsplit('/').next().unwrap();
    assert_error(
        c.get(reg.url(&format!("/v2/up5/blobs/uploads/{id}")))
            .send()
            .unwrap(),
        StatusCode::NOT_FOUND,
        "BLOB_UPLOAD_UNKNOWN",
    );
}

#[test]
fn sha512_blobs_are_accepted() {
    use sha2::Digest;
    let reg = Registry::start();
    let c = client();
    let data = b"sha512 content".to_vec();
    let digest = format!("sha512:{}", hex::encode(sha2::Sha512::digest(&data)));
    let r = c
        .post(reg.url(&format!("/v2/s/blobs/uploads/?digest={digest}")))
        .body(data.clone())
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = c
        .get(reg.url(&format!("/v2/s/blobs/{digest}")))
        .send()
        .unwrap();
    assert_eq!(header(&r, "docker-content-digest"), digest);
    assert_eq!(r.bytes().unwrap().as_ref(), &data[..]);
    // Chunked too (the running sha256 hash cannot be used; the file is hashed again).
    let loc = header(
        &c.post(reg.url("/v2/s/blobs/uploads/")).send().unwrap(),
        "location",
    );
    let loc = header(
        &c.patch(reg.url(&loc)).body(data.clone()).send().unwrap(),
        "location",
    );
    assert_eq!(
        c.put(reg.url(&format!("{loc}?digest={digest}")))
            .send()
            .unwrap()
            .status(),
        201
    );
}

#[test]
fn cross_repository_mount() {
    let reg = Registry::start();
    let c = client();
    let digest = push_blob(&c, &reg, "src/repo", b"shared layer");
    let r = c
        .post(reg.url(&format!(
            "/v2/dst/repo/blobs/uploads/?mount={digest}&from=src/repo"
        )))
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(
        header(&r, "location"),
        format!("/v2/dst/repo/blobs/{digest}")
    );
    assert_eq!(header(&r, "docker-content-digest"), digest);
    let got = c
        .get(reg.url(&format!("/v2/dst/repo/blobs/{digest}")))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    assert_eq!(got.as_ref(), b"shared layer");
    // Not mountable (unknown in `from`): a regular session instead.
    let other = sha256(b"never pushed");
    let r = c
        .post(reg.url(&format!(
            "/v2/dst/repo/blobs/uploads/?mount={other}&from=src/repo"
        )))
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    assert!(header(&r, "location").starts_with("/v2/dst/repo/blobs/uploads/"));
    // One copy on disk however many repositories link it.
    let hex = digest.trim_start_matches("sha256:");
    let copies = common::files_under(&reg.data_dir)
        .into_iter()
        .filter(|p| p.file_name().unwrap() == hex)
        .count();
    assert_eq!(copies, 1);
}

#[test]
fn upload_session_survives_restart() {
    let mut reg = Registry::start();
    let c = client();
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 241) as u8).collect();
    let digest = sha256(&data);
    let loc = header(
        &c.post(reg.url("/v2/keep/blobs/uploads/")).send().unwrap(),
        "location",
    );
    let r = c
        .patch(reg.url(&loc))
        .header("Content-Range", "0-599999")
        .body(data[..600_000].to_vec())
        .send()
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(reg.terminate().code(), Some(0));
    reg.restart();
    let r = c.get(reg.url(&loc)).send().unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(header(&r, "range"), "0-599999");
    let r = c
        .put(reg.url(&format!("{loc}?digest={digest}")))
        .header("Content-Range", "600000-999999")
        .body(data[600_000..].to_vec())
        .send()
        .unwrap();
    assert_eq!(r.status(), 201);
    let got = c
        .get(reg.url(&format!("/v2/keep/blobs/{digest}")))
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    assert_eq!(got.as_ref(), &data[..]);
}

/// An address of this machine that is not on loopback (the Docker engine's bridge at least).
fn non_loopback_address() -> std::net::IpAddr {
    let out = std::process::Command::new("ip")
        .args(["-o", "-4", "addr", "show"])
        .output()
        .expect("ip (iproute2) runs");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "inet")
        .filter_map(|w| w.split('/').next()?.parse::<std::net::IpAddr>().ok())
        .find(|ip| !ip.is_loopback())
        .unwrap_or_else(|| panic!("this machine has no address off loopback: {text}"))
}

/// A peer that is not on this machine's loopback gets large blob pieces sent from the file
/// (`sendfile`), whole, by ranges that start and end off the page and piece boundaries, and four
/// at once; a loopback peer gets them written from memory, with the same bytes.
#[test]
fn a_peer_off_loopback_gets_blob_pieces_sent_from_the_file() {
    const MIB: usize = 1024 * 1024;
    let reg = Registry::start();
    let data: Vec<u8> = (0..5 * MIB + 4321).map(|i| (i * 13 % 251) as u8).collect();
    let digest = push_blob(&client(), &reg, "a/b", &data);
    let url = reg.url(&format!("/v2/a/b/blobs/{digest}"));
    let get = |c: &Client, range: Option<(usize, usize)>| {
        let mut req = c.get(&url);
        if let Some((first, last)) = range {
            req = req.header("Range", format!("bytes={first}-{last}"));
        }
        let r = req.send().unwrap();
        let want = match range {
            None => (200, &data[..]),
            Some((first, last)) => (206, &data[first..=last]),
        };
        assert_eq!(r.status(), want.0);
        let got = r.bytes().unwrap();
        assert_eq!(got.len(), want.1.len(), "{range:?}");
        assert!(got.as_ref() == want.1, "{range:?}: the bytes differ");
    };
    let sent_from_file = "sending blob pieces from their files";

    get(&client(), None);
    assert!(
        !reg.log_text().contains(sent_from_file),
        "a loopback peer's pull is written from memory"
    );

    let address = non_loopback_address();
    let off_loopback = Client::builder().local_address(address).build().unwrap();
    get(&off_loopback, None);
    for range in [
        (1, 2 * MIB + 4097),
        (MIB - 3, 4 * MIB + 11),
        (4096, data.len() - 1),
    ] {
        get(&off_loopback, Some(range));
    }
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| get(&off_loopback, None));
        }
    });
    assert!(
        reg.log_text().contains(sent_from_file),
        "a pull from {address} is sent from the file"
    );
}
