//! Faults in a download: a cut blob resumes with `Range`, corrupt bytes are refused, a parent
//! that ignores `Range` is handled, and the status of a resumed pass is whole.

use super::*;

/// A blob download cut in the middle resumes with `Range: bytes=N-` from what is on disk: the
/// parent serves the blob's bytes about once in total, not twice.
#[test]
fn fault_cut_mid_blob_resumes_with_range() {
    let work = tmp();
    let parent = Distribution::start();
    let layer = random_bytes(91, MIB);
    let img = Image::new("linux/amd64", std::slice::from_ref(&layer));
    let layer_digest = sha256(&layer);
    skopeo_seed(work.path(), &parent.host(), "resume/app", &[("v1", &img)]);
    let proxy = Proxy::start(parent.port);
    proxy.throttle(Some(256 * 1024));
    let child = Node::child(&proxy.endpoint(), json!({"repositories": ["resume/app"]}));

    let started = proxy.wait_for(Duration::from_secs(30), |reqs| {
        blob_gets(reqs, &layer_digest)
            .iter()
            .any(|r| r.response_bytes >= 300 * 1024)
    });
    assert!(
        started,
        "the layer download never got going\n{}{}",
        proxy_log(&proxy),
        diag(&child)
    );
    proxy.cut();
    std::thread::sleep(Duration::from_millis(100));
    let before_cut = blob_gets(&proxy.requests(), &layer_digest)[0].response_bytes;
    proxy.throttle(None);

    wait_for_tag(
        &child,
        "resume/app",
        "v1",
        &img.digest,
        Duration::from_secs(30),
    );
    assert_serves(&child.base(), "resume/app", "v1", &img, None);

    let gets = blob_gets(&proxy.requests(), &layer_digest);
    let log = proxy_log(&proxy);
    assert!(gets.len() >= 2, "expected a second, resumed request\n{log}");
    assert_eq!(
        range_start(&gets[0]).unwrap_or(0),
        0,
        "the first request starts at 0"
    );
    let resumed: Vec<&Request> = gets[1..]
        .iter()
        .filter(|r| range_start(r).unwrap_or(0) > 0)
        .collect();
    assert!(
        !resumed.is_empty(),
        "no `Range: bytes=N-` request after the cut\n{log}"
    );
    let n = range_start(resumed[0]).unwrap();
    assert!(
        n <= before_cut,
        "resumed at {n}, but only {before_cut} bytes had been served"
    );
    assert!(
        n >= 64 * 1024,
        "resumed at {n}: most of the {before_cut} bytes received were thrown away"
    );
    assert_eq!(resumed[0].status, Some(206), "{log}");
    let total: u64 = gets.iter().map(|r| r.response_bytes).sum();
    println!(
        "layer {} bytes; served {total} bytes over {} requests; resumed at {n}",
        layer.len(),
        gets.len()
    );
    assert!(total >= layer.len() as u64);
    assert!(
        total <= layer.len() as u64 + layer.len() as u64 / 10,
        "the parent served {total} bytes for a {}-byte blob: not resumed\n{log}",
        layer.len()
    );
    let partial = child.data_path(&format!("partial/sha256-{}", &layer_digest[7..]));
    assert!(
        !partial.exists(),
        "the partial file {partial:?} is left behind"
    );
}

/// A parent (or a link) that serves a blob whose bytes do not match its digest: the child
/// refuses it, records `DigestMismatch`, never shows the tag, keeps no poisoned partial file
/// to resume from; once the bytes are right again the tag arrives intact.
#[test]
fn fault_corrupted_blob_is_rejected_with_digest_mismatch() {
    let work = tmp();
    let parent = Distribution::start();
    let good = Image::new("linux/amd64", &[random_bytes(701, 4 * KIB)]);
    let img = Image::new("linux/amd64", &[random_bytes(702, 128 * KIB)]);
    let layer = img.blobs[1].digest.clone();
    skopeo_seed(
        work.path(),
        &parent.host(),
        "bad/app",
        &[("v0", &good), ("v1", &img)],
    );
    let proxy = Proxy::start(parent.port);
    proxy.corrupt(Some(&layer));
    let child = Node::child(&proxy.endpoint(), json!({"repositories": ["bad/app"]}));
    let c = child.base();
    wait_for_tag(
        &child,
        "bad/app",
        "v0",
        &good.digest,
        Duration::from_secs(30),
    );
    assert!(
        wait_until(Duration::from_secs(20), || {
            detail_codes(&status(&c))
                .iter()
                .any(|code| code == "DigestMismatch")
        }),
        "statusDetails never showed DigestMismatch (corrupted {} responses){}",
        proxy.corrupted(),
        diag(&child)
    );
    assert!(proxy.corrupted() >= 1);
    let s = status(&c);
    println!(
        "with a corrupted layer: state {}, details {:?}",
        s["sync"]["state"],
        detail_codes(&s)
    );
    assert_eq!(
        tags(&c, "bad/app"),
        Some(vec!["v0".to_owned()]),
        "v1 must not be visible"
    );
    assert_eq!(get(&c, "/v2/bad/app/manifests/v1").status, 404);
    assert_eq!(get(&c, &format!("/v2/bad/app/blobs/{layer}")).status, 404);

    proxy.corrupt(None);
    let took = wait_for_tag(
        &child,
        "bad/app",
        "v1",
        &img.digest,
        Duration::from_secs(40),
    );
    println!("arrived {took:?} after the link stopped corrupting");
    assert_serves(&c, "bad/app", "v1", &img, None);
    // The good download started from 0: nothing of the poisoned bytes was kept to resume from.
    let last = blob_gets(&proxy.requests(), &layer).pop().unwrap();
    assert_eq!(
        range_start(&last).unwrap_or(0),
        0,
        "resumed from a corrupt partial file"
    );
}

/// A parent that ignores `Range` (answers 200 with the whole blob) after a cut: the child must
/// start the file over rather than append the whole body to what it had, and the tag arrives
/// intact without a `DigestMismatch` loop.
#[test]
fn fault_parent_ignoring_range_restarts_download_cleanly() {
    let work = tmp();
    let parent = Distribution::start();
    let layer = random_bytes(96, 512 * KIB);
    let layer_digest = sha256(&layer);
    let img = Image::new("linux/amd64", std::slice::from_ref(&layer));
    skopeo_seed(work.path(), &parent.host(), "norange/app", &[("v1", &img)]);
    let proxy = Proxy::start(parent.port);
    proxy.throttle(Some(256 * 1024));
    proxy.strip_range(true);
    let child = Node::child(&proxy.endpoint(), json!({"repositories": ["norange/app"]}));
    assert!(
        proxy.wait_for(Duration::from_secs(30), |reqs| {
            blob_gets(reqs, &layer_digest)
                .iter()
                .any(|r| r.response_bytes >= 128 * 1024)
        }),
        "the layer download never got going\n{}{}",
        proxy_log(&proxy),
        diag(&child)
    );
    proxy.cut();
    proxy.throttle(None);
    let took = wait_for_tag(
        &child,
        "norange/app",
        "v1",
        &img.digest,
        Duration::from_secs(20),
    );
    println!("a parent ignoring Range: tag arrived {took:?} after the cut");
    assert_serves(&child.base(), "norange/app", "v1", &img, None);
    let gets = blob_gets(&proxy.requests(), &layer_digest);
    let log = proxy_log(&proxy);
    assert!(
        gets[1..]
            .iter()
            .any(|r| range_start(r).unwrap_or(0) > 0 && r.status == Some(200)),
        "the child asked for a range and got the whole blob (what this test is about)\n{log}"
    );
    assert!(
        gets.len() <= 3,
        "the download was retried {} times\n{log}",
        gets.len()
    );
    let s = status(&child.base());
    assert!(
        !detail_codes(&s).iter().any(|c| c == "DigestMismatch"),
        "a 200 answer to a Range request was appended to the partial file: {:#}",
        s["statusDetails"]
    );
}

/// The status of a pass that resumed a cut download: `Succeeded` with its counts whole (bytes
/// done == total), not short by the bytes that were already on disk.
#[test]
fn status_progress_is_whole_after_a_resumed_download() {
    let work = tmp();
    let parent = Distribution::start();
    let layer = random_bytes(95, 512 * KIB);
    let layer_digest = sha256(&layer);
    let img = Image::new("linux/amd64", std::slice::from_ref(&layer));
    skopeo_seed(work.path(), &parent.host(), "progress/app", &[("v1", &img)]);
    let proxy = Proxy::start(parent.port);
    proxy.throttle(Some(256 * 1024));
    let child = Node::child(&proxy.endpoint(), json!({"repositories": ["progress/app"]}));
    assert!(
        proxy.wait_for(Duration::from_secs(30), |reqs| {
            blob_gets(reqs, &layer_digest)
                .iter()
                .any(|r| r.response_bytes >= 128 * 1024)
        }),
        "the layer download never got going\n{}{}",
        proxy_log(&proxy),
        diag(&child)
    );
    proxy.cut();
    proxy.throttle(None);
    wait_for_tag(
        &child,
        "progress/app",
        "v1",
        &img.digest,
        Duration::from_secs(30),
    );
    let s = succeeded_status(&child);
    assert!(
        blob_gets(&proxy.requests(), &layer_digest)
            .iter()
            .any(|r| range_start(r).unwrap_or(0) > 0),
        "the download was not resumed (nothing to check)\n{}",
        proxy_log(&proxy)
    );
    println!(
        "progress after a resumed download: {}",
        s["sync"]["progress"]
    );
    assert_progress_complete(&s);
}
