//! Crash safety against the real binary: `kill -9` in the middle of a monolithic push, of a
//! chunked upload and of a storm of manifest pushes, then restart on the same data directory and
//! check that nothing is corrupt or half-visible and that interrupted work can be resumed; and a
//! SIGTERM that lets an in-flight upload finish before the process exits 0.

use crate::common;

use common::support;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{files_under, sha256, Registry};
use reqwest::blocking::Client;
use support::{
    absolute, assert_blob_files_intact, assert_oci_error, client, hash_reader, header,
    largest_file, wait_for, Gen, MIB,
};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn base(reg: &Registry) -> String {
    reg.url("")
}

/// `GET /v2/` answers 200 with the API version header.
fn assert_api_up(c: &Client, reg: &Registry) {
    let r = c.get(reg.url("/v2/")).send().unwrap();
    assert_eq!(r.status().as_u16(), 200, "GET /v2/ after restart");
    assert_eq!(
        header(&r, "docker-distribution-api-version"),
        "registry/2.0"
    );
}

/// The blob is not visible in `repo`: HEAD 404 and GET 404 BLOB_UNKNOWN.
fn assert_blob_absent(c: &Client, reg: &Registry, repo: &str, digest: &str) {
    let url = reg.url(&format!("/v2/{repo}/blobs/{digest}"));
    let r = c.head(&url).send().unwrap();
    assert_eq!(r.status().as_u16(), 404, "HEAD {digest} must be 404");
    assert_oci_error(
        c.get(&url).send().unwrap(),
        404,
        "BLOB_UNKNOWN",
        "GET of a blob that was never completed",
    );
}

/// GET the blob, stream and hash it: 200, right length, right digest, right header.
fn assert_blob_pulls(c: &Client, reg: &Registry, repo: &str, digest: &str, len: u64) {
    let url = reg.url(&format!("/v2/{repo}/blobs/{digest}"));
    let head = c.head(&url).send().unwrap();
    assert_eq!(head.status().as_u16(), 200, "HEAD {digest}");
    assert_eq!(header(&head, "content-length"), len.to_string());
    let r = c.get(&url).send().unwrap();
    assert_eq!(r.status().as_u16(), 200, "GET {digest}");
    assert_eq!(header(&r, "docker-content-digest"), digest);
    let (got, got_len) = hash_reader(r).unwrap();
    assert_eq!(got_len, len, "pulled length of {digest}");
    assert_eq!(got, digest, "pulled bytes do not hash to the digest");
}

/// `DIR/tmp` exists and holds nothing.
fn assert_tmp_empty(reg: &Registry) {
    let tmp = reg.data_path("tmp");
    assert!(tmp.is_dir(), "{tmp:?} missing");
    let left = files_under(&tmp);
    assert!(left.is_empty(), "stale temp files after restart: {left:?}");
}

fn upload_offset(range: &str) -> u64 {
    let (first, last) = range
        .split_once('-')
        .unwrap_or_else(|| panic!("bad Range {range:?}"));
    assert_eq!(first, "0", "Range must start at 0: {range:?}");
    last.parse::<u64>().unwrap() + 1
}

/// Case 1: kill -9 while a 300 MiB monolithic `POST ?digest=` streams in.
#[test]
fn kill9_mid_monolithic_push_leaves_nothing_visible_or_corrupt() {
    let mut reg = Registry::start();
    let c = client();
    let repo = "crash/mono";
    let gen = Gen::new(0x300, 300 * MIB);
    let digest = gen.digest();
    let pause_at = 120 * MIB;

    let (reader, gate) = gen.reader().pause_after(pause_at);
    let progress = reader.progress();
    let url = reg.url(&format!("/v2/{repo}/blobs/uploads/?digest={digest}"));
    let pusher = std::thread::spawn(move || {
        client()
            .post(url)
            .header("content-type", "application/octet-stream")
            .body(reader.into_body())
            .send()
            .map(|r| r.status().as_u16())
    });

    // The client holds the body at 120 MiB; wait until the server has written (nearly) all of
    // that to its temp file, so the kill really lands mid-blob.
    let tmp = reg.data_path("tmp");
    let written = wait_for(Duration::from_secs(60), || {
        progress.load(Ordering::SeqCst) == pause_at && largest_file(&tmp) >= pause_at - 2 * MIB
    });
    assert!(
        written,
        "server never wrote the first {} MiB to DIR/tmp (largest temp file {} bytes, client sent {})",
        pause_at / MIB,
        largest_file(&tmp),
        progress.load(Ordering::SeqCst)
    );
    reg.kill9();
    gate.release();
    let outcome = pusher.join().unwrap();
    assert!(
        !matches!(outcome, Ok(201)),
        "the push must not have succeeded: {outcome:?}"
    );
    assert!(
        largest_file(&tmp) > 0,
        "the crash should have left a partial temp file for the restart to clean"
    );

    reg.restart();
    assert_api_up(&c, &reg);
    assert_blob_absent(&c, &reg, repo, &digest);
    assert_tmp_empty(&reg);
    let hex = digest.strip_prefix("sha256:").unwrap();
    assert!(
        !reg.data_path(&format!("blobs/sha256/{}/{hex}", &hex[..2]))
            .exists(),
        "a partial blob file is at the blob's path"
    );
    assert_blob_files_intact(&reg.data_dir);

    // Now the whole push, and the blob comes back byte for byte.
    let r = c
        .post(reg.url(&format!("/v2/{repo}/blobs/uploads/?digest={digest}")))
        .header("content-type", "application/octet-stream")
        .body(gen.body_from(0))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "{}", r.text().unwrap_or_default());
    assert_eq!(header(&r, "docker-content-digest"), digest);
    assert_blob_pulls(&c, &reg, repo, &digest, gen.len);
    assert_eq!(assert_blob_files_intact(&reg.data_dir), 1);
    assert_tmp_empty(&reg);
}

/// Case 2: kill -9 during a PATCH of a chunked upload; the session survives and resumes at the offset
/// it reports.
#[test]
fn kill9_mid_chunked_upload_resumes_at_reported_offset() {
    let mut reg = Registry::start();
    let c = client();
    let repo = "crash/chunked";
    let base = base(&reg);
    let gen = Gen::new(0xC4, 48 * MIB);
    let digest = gen.digest();

    let r = c
        .post(reg.url(&format!("/v2/{repo}/blobs/uploads/")))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let upload_url = absolute(&base, &header(&r, "location"));
    let upload_id = header(&r, "docker-upload-uuid");

    // Two whole chunks.
    let mut location = upload_url.clone();
    for (start, end) in [(0, 8 * MIB), (8 * MIB, 16 * MIB)] {
        let r = c
            .patch(&location)
            .header("content-type", "application/octet-stream")
            .header("content-range", format!("{start}-{}", end - 1))
            .body(gen.bytes(start, end - start))
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 202, "PATCH {start}-{end}");
        assert_eq!(header(&r, "range"), format!("0-{}", end - 1));
        location = absolute(&base, &header(&r, "location"));
    }

    // A second session with all its bytes in, to be completed with a wrong digest after restart.
    let small = Gen::new(0x5A11, MIB + 17);
    let r = c
        .post(reg.url(&format!("/v2/{repo}/blobs/uploads/")))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let small_url = absolute(&base, &header(&r, "location"));
    let r = c
        .patch(&small_url)
        .header("content-range", format!("0-{}", small.len - 1))
        .body(small.to_vec())
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let small_url = absolute(&base, &header(&r, "location"));

    // The third chunk (16..48 MiB) stops after 16 MiB of its body; kill while it hangs there.
    let (reader, gate) = gen.reader_from(16 * MIB).pause_after(16 * MIB);
    let third = {
        let location = location.clone();
        let total = gen.len;
        std::thread::spawn(move || {
            client()
                .patch(location)
                .header("content-type", "application/octet-stream")
                .header("content-range", format!("{}-{}", 16 * MIB, total - 1))
                .body(reader.into_body())
                .send()
                .map(|r| r.status().as_u16())
        })
    };
    let session_file = reg.data_path(&format!("uploads/{upload_id}"));
    let arrived = wait_for(Duration::from_secs(60), || {
        std::fs::metadata(&session_file).map_or(0, |m| m.len()) >= 30 * MIB
    });
    assert!(
        arrived,
        "the interrupted PATCH never reached the session file {session_file:?}"
    );
    reg.kill9();
    gate.release();
    let outcome = third.join().unwrap();
    assert!(
        !matches!(outcome, Ok(202)),
        "the interrupted PATCH must not have succeeded: {outcome:?}"
    );

    reg.restart();
    assert_api_up(&c, &reg);
    assert_tmp_empty(&reg);

    // The session is still there and says how far it got.
    let r = c.get(&upload_url).send().unwrap();
    assert_eq!(r.status().as_u16(), 204, "upload status after restart");
    assert_eq!(header(&r, "docker-upload-uuid"), upload_id);
    let offset = upload_offset(&header(&r, "range"));
    assert!(
        (30 * MIB..=32 * MIB).contains(&offset),
        "after restart the session holds {offset} bytes; expected what arrived before the kill \
         (30..=32 MiB)"
    );
    assert_eq!(
        std::fs::metadata(&session_file).unwrap().len(),
        offset,
        "reported offset differs from the session's bytes on disk"
    );

    // Chunks that do not start exactly at the offset are refused with 416 and the real offset.
    for wrong in [offset + 1, offset - 1, 0, 16 * MIB] {
        let r = c
            .patch(&upload_url)
            .header("content-range", format!("{wrong}-{}", wrong + 1023))
            .body(gen.bytes(wrong, 1024))
            .send()
            .unwrap();
        assert_eq!(
            header(&r, "range"),
            format!("0-{}", offset - 1),
            "416 must report the session's offset"
        );
        assert_oci_error(r, 416, "RANGE_INVALID", "PATCH at a wrong offset");
    }
    let r = c.get(&upload_url).send().unwrap();
    assert_eq!(r.status().as_u16(), 204);
    assert_eq!(
        upload_offset(&header(&r, "range")),
        offset,
        "a refused chunk changed the session"
    );

    // The wrong-digest completion of the other session is refused and leaves no blob.
    let wrong_digest = sha256(b"definitely not the uploaded bytes");
    let r = c
        .put(format!("{small_url}?digest={wrong_digest}"))
        .send()
        .unwrap();
    assert_oci_error(r, 400, "DIGEST_INVALID", "PUT with a wrong digest");
    assert_blob_absent(&c, &reg, repo, &wrong_digest);
    assert_blob_absent(&c, &reg, repo, &small.digest());

    // Resume exactly at the offset, then commit.
    let r = c
        .patch(&upload_url)
        .header("content-type", "application/octet-stream")
        .header("content-range", format!("{offset}-{}", gen.len - 1))
        .body(gen.body_from(offset))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 202, "resumed PATCH");
    assert_eq!(header(&r, "range"), format!("0-{}", gen.len - 1));
    let location = absolute(&base, &header(&r, "location"));
    let sep = if location.contains('?') { '&' } else { '?' };
    let r = c
        .put(format!("{location}{sep}digest={digest}"))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "{}", r.text().unwrap_or_default());
    assert_eq!(header(&r, "docker-content-digest"), digest);
    assert_blob_pulls(&c, &reg, repo, &digest, gen.len);
    assert_oci_error(
        c.get(&upload_url).send().unwrap(),
        404,
        "BLOB_UPLOAD_UNKNOWN",
        "a committed session is gone",
    );
    assert_blob_files_intact(&reg.data_dir);
    assert_tmp_empty(&reg);
}

/// What the storm pushers saw acknowledged.
#[derive(Default)]
struct StormLog {
    /// tag -> digest, for every manifest PUT answered 201.
    acked: HashMap<String, String>,
    /// digests acknowledged for `latest`, in order.
    latest_acked: Vec<String>,
    /// The manifest being pushed when the pusher stopped (not acknowledged).
    in_flight: Option<String>,
    /// Answers that were neither 201 nor a dropped connection.
    failures: Vec<String>,
}

fn push_small_blob(c: &Client, base: &str, repo: &str, bytes: Vec<u8>) -> Result<(), String> {
    let digest = sha256(&bytes);
    let r = c
        .post(format!("{base}/v2/{repo}/blobs/uploads/?digest={digest}"))
        .body(bytes)
        .send()
        .map_err(|e| format!("connection: {e}"))?;
    if r.status().as_u16() != 201 {
        return Err(format!("blob push answered {}", r.status()));
    }
    Ok(())
}

/// Push manifests to `repo` until the connection fails. Blob and manifest pushes that get an
/// answer must succeed; the first transport error ends the loop (the server was killed).
fn storm(reg_url: String, repo: String, seed: u64, log: Arc<Mutex<StormLog>>) {
    let c = client();
    let url = |p: &str| format!("{reg_url}{p}");
    for i in 0u64.. {
        let layer = Gen::new(
            seed * 1_000_000 + i,
            1 + (seed * 7919 + i * 104_729) % 65_536,
        );
        let layer_bytes = layer.to_vec();
        let config = format!(r#"{{"architecture":"amd64","os":"linux","storm":"{repo}","i":{i}}}"#)
            .into_bytes();
        for blob in [layer_bytes.clone(), config.clone()] {
            if let Err(e) = push_small_blob(&c, &reg_url, &repo, blob) {
                if e.starts_with("connection") {
                    return;
                }
                log.lock().unwrap().failures.push(e);
                return;
            }
        }
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha256(&config),
                "size": config.len(),
            },
            "layers": [{
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": sha256(&layer_bytes),
                "size": layer_bytes.len(),
            }],
            "annotations": { "storm.index": i.to_string() },
        }))
        .unwrap();
        let digest = sha256(&manifest);
        for tag in [format!("v{i}"), "latest".to_owned()] {
            log.lock().unwrap().in_flight = Some(digest.clone());
            let r = c
                .put(url(&format!("/v2/{repo}/manifests/{tag}")))
                .header("content-type", OCI_MANIFEST)
                .body(manifest.clone())
                .send();
            let mut log = log.lock().unwrap();
            match r {
                Err(_) => return,
                Ok(r) if r.status().as_u16() == 201 => {
                    let got = r
                        .headers()
                        .get("docker-content-digest")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    if got != digest {
                        log.failures.push(format!(
                            "PUT {tag}: Docker-Content-Digest {got}, want {digest}"
                        ));
                    }
                    log.in_flight = None;
                    if tag == "latest" {
                        log.latest_acked.push(digest.clone());
                    } else {
                        log.acked.insert(tag, digest.clone());
                    }
                }
                Ok(r) => {
                    log.failures
                        .push(format!("PUT {tag} answered {}", r.status()));
                    return;
                }
            }
        }
    }
}

/// Case 3: kill -9 at a random moment of a manifest push storm: every listed tag resolves to a whole
/// manifest whose blobs all pull with the right digests, and every acknowledged push survived.
#[test]
fn kill9_during_manifest_storm_leaves_every_tag_whole() {
    let mut reg = Registry::start();
    let c = client();
    let repos = ["storm/alpha", "storm/beta"];
    let logs: Vec<Arc<Mutex<StormLog>>> = repos.iter().map(|_| Arc::default()).collect();
    let pushers: Vec<_> = repos
        .iter()
        .zip(&logs)
        .enumerate()
        .map(|(n, (repo, log))| {
            let (url, repo, log) = (reg.url(""), repo.to_string(), log.clone());
            std::thread::spawn(move || storm(url, repo, n as u64 + 1, log))
        })
        .collect();

    // Let both pushers get going, then kill at a random moment.
    let started = wait_for(Duration::from_secs(60), || {
        logs.iter().all(|l| l.lock().unwrap().acked.len() >= 20)
    });
    assert!(started, "the storm did not get going");
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let delay = Duration::from_micros(u64::from(nanos) % 400_000);
    println!("storm: killing after a further {delay:?}");
    std::thread::sleep(delay);
    reg.kill9();
    for p in pushers {
        p.join().unwrap();
    }

    reg.restart();
    assert_api_up(&c, &reg);
    assert_tmp_empty(&reg);
    assert_blob_files_intact(&reg.data_dir);

    for (repo, log) in repos.iter().zip(&logs) {
        let log = log.lock().unwrap();
        assert!(log.failures.is_empty(), "{repo}: {:?}", log.failures);
        println!(
            "storm: {repo}: {} tags acknowledged before the kill, in flight: {:?}",
            log.acked.len(),
            log.in_flight
        );
        let r = c
            .get(reg.url(&format!("/v2/{repo}/tags/list")))
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let listed: serde_json::Value = r.json().unwrap();
        assert_eq!(listed["name"], *repo);
        let tags: BTreeSet<String> = listed["tags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_owned())
            .collect();

        // Durability: everything acknowledged is there, pointing where it was acknowledged.
        for (tag, digest) in &log.acked {
            assert!(tags.contains(tag), "{repo}: acknowledged tag {tag} lost");
            let r = c
                .head(reg.url(&format!("/v2/{repo}/manifests/{tag}")))
                .header("accept", OCI_MANIFEST)
                .send()
                .unwrap();
            assert_eq!(r.status().as_u16(), 200, "{repo}:{tag}");
            assert_eq!(header(&r, "docker-content-digest"), *digest, "{repo}:{tag}");
        }
        // At most the one push in flight may have landed beyond what was acknowledged.
        let extra: Vec<&String> = tags
            .iter()
            .filter(|t| *t != "latest" && !log.acked.contains_key(*t))
            .collect();
        assert!(extra.len() <= 1, "{repo}: unacknowledged tags {extra:?}");

        // Whole: every listed tag resolves to bytes that hash to their digest, and everything
        // they reference pulls with the right digest and size.
        let mut checked_blobs = BTreeSet::new();
        for tag in &tags {
            let r = c
                .get(reg.url(&format!("/v2/{repo}/manifests/{tag}")))
                .header("accept", OCI_MANIFEST)
                .send()
                .unwrap();
            assert_eq!(
                r.status().as_u16(),
                200,
                "{repo}:{tag} is listed but not served"
            );
            let digest = header(&r, "docker-content-digest");
            assert_eq!(header(&r, "content-type"), OCI_MANIFEST);
            let bytes = r.bytes().unwrap();
            assert_eq!(sha256(&bytes), digest, "{repo}:{tag}: bytes vs digest");
            let by_digest = c
                .get(reg.url(&format!("/v2/{repo}/manifests/{digest}")))
                .header("accept", OCI_MANIFEST)
                .send()
                .unwrap();
            assert_eq!(by_digest.status().as_u16(), 200);
            assert_eq!(by_digest.bytes().unwrap(), bytes);
            if tag == "latest" {
                let ok: Vec<&String> = log
                    .latest_acked
                    .last()
                    .into_iter()
                    .chain(log.in_flight.as_ref())
                    .collect();
                assert!(
                    ok.contains(&&digest),
                    "{repo}:latest is {digest}, neither the last acknowledged nor the in-flight push ({ok:?})"
                );
            }
            let m: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            let mut descriptors = vec![m["config"].clone()];
            descriptors.extend(m["layers"].as_array().unwrap().iter().cloned());
            for d in descriptors {
                let bd = d["digest"].as_str().unwrap().to_owned();
                if checked_blobs.insert(bd.clone()) {
                    assert_blob_pulls(&c, &reg, repo, &bd, d["size"].as_u64().unwrap());
                }
            }
        }
        assert!(tags.len() >= 21, "{repo}: only {} tags", tags.len());
    }
}

/// Case 4: SIGTERM while a slow upload streams in: the upload completes with 201, the process exits
/// 0, and the blob is there after a restart.
#[test]
fn sigterm_lets_inflight_upload_finish_then_exits_zero() {
    let mut reg = Registry::start();
    let c = client();
    let repo = "graceful/slow";
    let gen = Gen::new(0x7E7, 24 * MIB);
    let digest = gen.digest();
    // ~2 s for the whole body.
    let reader = gen.reader().throttled(gen.len as f64 / 2.0);
    let progress = reader.progress();
    let url = reg.url(&format!("/v2/{repo}/blobs/uploads/?digest={digest}"));
    let started = Instant::now();
    let pusher = std::thread::spawn(move || {
        let r = client()
            .post(url)
            .header("content-type", "application/octet-stream")
            .body(reader.into_body())
            .send()
            .map_err(|e| e.to_string())?;
        let status = r.status().as_u16();
        let digest = r
            .headers()
            .get("docker-content-digest")
            .map(|v| v.to_str().unwrap().to_owned());
        let body = r.text().unwrap_or_default();
        Ok::<_, String>((status, digest, body, Instant::now()))
    });

    let tmp = reg.data_path("tmp");
    assert!(
        wait_for(Duration::from_secs(10), || largest_file(&tmp) >= 4 * MIB),
        "the slow upload never reached the server's temp file"
    );
    let sent_at_signal = progress.load(Ordering::SeqCst);
    assert!(
        sent_at_signal < gen.len / 2,
        "the upload went too fast to interrupt ({sent_at_signal} bytes)"
    );
    reg.send_sigterm();
    let signalled = Instant::now();

    // While draining, the server takes no new connections (checked while the upload still runs).
    let addr = reg.host();
    let refused = wait_for(Duration::from_millis(500), || {
        std::net::TcpStream::connect(&addr).is_err()
    });
    assert!(refused, "new connections are still accepted after SIGTERM");
    assert!(
        progress.load(Ordering::SeqCst) < gen.len,
        "the upload finished before the listener closed; cannot tell that it was in flight"
    );

    let status = reg
        .wait_exit(Duration::from_secs(40))
        .expect("the server did not exit within 40 s of SIGTERM");
    let exited = Instant::now();
    let (code, got_digest, body, answered) = pusher
        .join()
        .unwrap()
        .unwrap_or_else(|e| panic!("in-flight upload was cut off by SIGTERM: {e}"));
    assert_eq!(code, 201, "in-flight upload after SIGTERM: {body}");
    assert_eq!(got_digest.as_deref(), Some(digest.as_str()));
    assert!(
        answered <= exited,
        "the answer came after the process exited"
    );
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status}"
    );
    println!(
        "graceful: SIGTERM at {:?} with {} of {} bytes sent; upload answered {:?} later; exit 0",
        signalled - started,
        sent_at_signal,
        gen.len,
        answered.saturating_duration_since(signalled)
    );

    reg.restart();
    assert_api_up(&c, &reg);
    assert_blob_pulls(&c, &reg, repo, &digest, gen.len);
    assert_tmp_empty(&reg);
    assert_blob_files_intact(&reg.data_dir);
}
