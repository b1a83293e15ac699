//! Garbage collection against the real binary: what it frees (checked against the files on
//! disk), what it must never free (tags, index children, referrers, uploads in flight, content
//! a child is syncing), `gc --dry-run`, and a kill -9 in the middle of a run.

use crate::common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::peers::{self, get, head, push_blob, push_image, request, Blob, Image, Node};
use common::support::assert_blob_files_intact;
use common::BIN;
use serde_json::json;

const LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

fn blob_files(data_dir: &Path) -> BTreeSet<String> {
    common::files_under(&data_dir.join("blobs"))
        .into_iter()
        .filter_map(|p| {
            let hex = p.file_name()?.to_str()?.to_owned();
            let alg = p.parent()?.parent()?.file_name()?.to_str()?.to_owned();
            Some(format!("{alg}:{hex}"))
        })
        .collect()
}

fn blob_bytes(data_dir: &Path) -> u64 {
    common::files_under(&data_dir.join("blobs"))
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum()
}

fn gc_cli(data_dir: &Path, config: &Path, dry_run: bool) -> String {
    let mut args = vec![
        "gc",
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ];
    if dry_run {
        args.push("--dry-run");
    }
    let out = peers::run_cli(&args, Duration::from_secs(120));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "gc failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The `N` of "freed N bytes" / "would free N bytes" in the summary line, as bytes.
fn freed_in(stdout: &str) -> BTreeSet<(String, u64)> {
    stdout
        .lines()
        .filter_map(|l| l.strip_prefix("blob"))
        .map(|l| {
            let mut parts = l.split_whitespace();
            let digest = parts.next().unwrap().to_owned();
            let size = parts.next().unwrap().parse().unwrap();
            (digest, size)
        })
        .collect()
}

fn layer(seed: u64, len: usize) -> Vec<u8> {
    peers::random_bytes(seed, len)
}

#[test]
fn gc_frees_untagged_manifests_and_unreferenced_blobs_and_keeps_everything_live() {
    let mut node =
        Node::with_config(json!({"garbageCollection": {"enabled": false, "gracePeriod": "PT0S"}}));
    let base = node.base();
    let shared = layer(1, 40_000);
    let v1 = Image::new("linux/amd64", std::slice::from_ref(&shared));
    push_image(&base, "app", "v1", &v1);
    let signature = Image::artifact(&v1, "application/vnd.example.sig", b"signed");
    push_image(&base, "app", &signature.digest, &signature);
    let multi = Image::index(vec![
        Image::new("linux/amd64", &[layer(2, 30_000)]),
        Image::new("linux/arm64", &[layer(3, 30_000)]),
    ]);
    push_image(&base, "app", "multi", &multi);
    // Overwritten: the first image loses its tag and is garbage, with its own blobs.
    let old = Image::new("linux/amd64", &[layer(4, 50_000)]);
    push_image(&base, "app", "moving", &old);
    let moving = Image::new("linux/amd64", &[layer(5, 20_000)]);
    push_image(&base, "app", "moving", &moving);
    // Uploaded but never referenced.
    let orphan = Blob::new(LAYER, layer(6, 60_000));
    push_blob(&base, "app", &orphan);
    // Deleted by digest; shares a layer with v1, which must stay.
    let gone = Image::new("linux/arm64", &[shared.clone(), layer(7, 10_000)]);
    push_image(&base, "gone", "v1", &gone);
    peers::delete_manifest(&base, "gone", &gone.digest);
    node.terminate();

    let live: BTreeSet<String> = [&v1, &signature, &multi, &moving]
        .iter()
        .flat_map(|i| i.all_blobs().into_keys())
        .collect();
    let before = blob_files(&node.data_dir);
    let garbage: BTreeSet<String> = before.difference(&live).cloned().collect();
    assert!(
        garbage.contains(&orphan.digest) && garbage.len() >= 4,
        "{garbage:?}"
    );
    let bytes_before = blob_bytes(&node.data_dir);

    let dry = gc_cli(&node.data_dir, &node.config_path, true);
    assert!(
        dry.contains(&format!("manifest  app@{}", old.digest)),
        "{dry}"
    );
    assert!(
        dry.contains(&format!("manifest  gone@{}", gone.digest)) || !dry.contains("gone@"),
        "{dry}"
    );
    assert!(dry.contains("would free"), "{dry}");
    let would: BTreeSet<String> = freed_in(&dry).into_iter().map(|(d, _)| d).collect();
    assert_eq!(would, garbage, "dry run lists exactly the garbage");
    assert_eq!(
        blob_files(&node.data_dir),
        before,
        "a dry run deletes nothing"
    );

    let real = gc_cli(&node.data_dir, &node.config_path, false);
    let freed = freed_in(&real);
    let freed_digests: BTreeSet<String> = freed.iter().map(|(d, _)| d.clone()).collect();
    assert_eq!(freed_digests, garbage, "{real}");
    let freed_bytes: u64 = freed.iter().map(|(_, s)| s).sum();
    assert_eq!(
        bytes_before - blob_bytes(&node.data_dir),
        freed_bytes,
        "freed size matches the disk"
    );
    assert_eq!(blob_files(&node.data_dir), live);
    assert_blob_files_intact(&node.data_dir);

    node.restart();
    let base = node.base();
    peers::assert_serves(&base, "app", "v1", &v1, None);
    peers::assert_serves(&base, "app", "multi", &multi, None);
    peers::assert_serves(&base, "app", "moving", &moving, None);
    peers::assert_serves(&base, "app", &signature.digest, &signature, None);
    let referrers = get(&base, &format!("/v2/app/referrers/{}", v1.digest)).json();
    assert_eq!(
        referrers["manifests"][0]["digest"],
        signature.digest.as_str()
    );
    assert_eq!(
        get(&base, &format!("/v2/app/manifests/{}", old.digest)).status,
        404
    );
    assert_eq!(
        head(&base, &format!("/v2/app/blobs/{}", orphan.digest)).status,
        404
    );
    assert_eq!(
        get(&base, &format!("/v2/gone/manifests/{}", gone.digest)).status,
        404
    );
    node.terminate();

    let again = gc_cli(&node.data_dir, &node.config_path, false);
    assert!(freed_in(&again).is_empty(), "nothing left to free: {again}");
}

/// GC every second with a two-second grace period while clients push, an upload sits half
/// done across several runs, and a child syncs: nothing live is lost, the garbage goes.
#[test]
fn gc_on_a_schedule_while_clients_push_and_a_child_syncs_loses_nothing_live() {
    let gc = json!({"schedule": "* * * * * *", "gracePeriod": "PT2S"});
    let parent = Node::with_config(json!({"garbageCollection": gc}));
    let base = parent.base();
    let mut config = peers::child_config(&base, json!({"repositories": ["live/**"]}));
    config["garbageCollection"] = gc.clone();
    let child = Node::with_config(config);

    // An upload left half done across several collections.
    let slow = Blob::new(LAYER, layer(100, 200_000));
    let location = peers::start_upload(&base, "live/slow");
    let r = request(
        reqwest::Method::PATCH,
        &base,
        &location,
        &[("Content-Type", "application/octet-stream")],
        Some(slow.bytes[..100_000].to_vec()),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let location = common::support::absolute(&base, r.header("location").unwrap());

    let deadline = Instant::now() + Duration::from_secs(8);
    let pushers: Vec<_> = (0..2u64)
        .map(|w| {
            let base = base.clone();
            std::thread::spawn(move || {
                let mut live = Vec::new();
                let mut i = 0u64;
                while Instant::now() < deadline {
                    let image = Image::new("linux/amd64", &[layer(1000 + w * 1000 + i, 8_000)]);
                    push_image(&base, &format!("live/w{w}"), &format!("t{i}"), &image);
                    // Garbage: pushed, then its tag moves on.
                    let junk = Image::new("linux/amd64", &[layer(50_000 + w * 1000 + i, 8_000)]);
                    push_image(&base, &format!("junk/w{w}"), "latest", &junk);
                    live.push((format!("live/w{w}"), format!("t{i}"), image));
                    i += 1;
                }
                live
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(5));
    let r = request(
        reqwest::Method::PUT,
        &base,
        &common::support::finish_url(&location, &slow.digest),
        &[("Content-Type", "application/octet-stream")],
        Some(slow.bytes[100_000..].to_vec()),
    );
    assert_eq!(
        r.status,
        201,
        "an upload in flight survives collections: {}",
        r.text()
    );
    let slow_image = Image::new("linux/amd64", std::slice::from_ref(&slow.bytes));
    push_image(&base, "live/slow", "v1", &slow_image);
    let mut live: Vec<(String, String, Image)> = pushers
        .into_iter()
        .flat_map(|p| p.join().unwrap())
        .collect();
    live.push(("live/slow".into(), "v1".into(), slow_image));
    assert!(live.len() > 4, "pushed {} images", live.len());

    for (repo, tag, image) in &live {
        peers::assert_serves(&base, repo, tag, image, None);
    }
    let child_base = child.base();
    assert!(
        peers::wait_until(Duration::from_secs(60), || live.iter().all(
            |(repo, tag, image)| peers::manifest_digest(&child_base, repo, tag).as_deref()
                == Some(image.digest.as_str())
        )),
        "the child syncs everything; child's log:\n{}\nparent's log:\n{}",
        child.log_text(),
        parent.log_text()
    );
    // Let a few more collections run at both, past the grace period.
    std::thread::sleep(Duration::from_secs(4));
    for (repo, tag, image) in &live {
        peers::assert_serves(&base, repo, tag, image, None);
        peers::assert_serves(&child_base, repo, tag, image, None);
    }
    assert!(parent.log_text().contains("garbage collection finished"));
    assert!(child.log_text().contains("garbage collection finished"));
    // Only the last junk image per writer is still tagged; the earlier ones are gone.
    let junk_blobs = blob_files(&parent.data_dir).len() - live_blob_count(&live);
    assert!(
        junk_blobs <= 4,
        "{junk_blobs} junk blobs left at the parent"
    );
    parent.assert_no_panic();
    child.assert_no_panic();
    assert_blob_files_intact(&parent.data_dir);
    assert_blob_files_intact(&child.data_dir);
}

fn live_blob_count(live: &[(String, String, Image)]) -> usize {
    live.iter()
        .flat_map(|(_, _, i)| i.all_blobs().into_keys())
        .collect::<BTreeSet<_>>()
        .len()
}

#[test]
fn kill_9_during_gc_corrupts_nothing_and_the_next_run_finishes() {
    let mut node =
        Node::with_config(json!({"garbageCollection": {"enabled": false, "gracePeriod": "PT0S"}}));
    let base = node.base();
    let image = Image::new("linux/amd64", &[layer(9, 100_000)]);
    push_image(&base, "keep", "v1", &image);
    let client = common::support::client();
    for i in 0..1500u64 {
        let blob = Blob::new(LAYER, layer(10_000 + i, 512));
        let r = client
            .post(format!(
                "{base}/v2/junk/blobs/uploads/?digest={}",
                blob.digest
            ))
            .header("Content-Type", "application/octet-stream")
            .body(blob.bytes.clone())
            .send()
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    node.terminate();
    let before = blob_files(&node.data_dir).len();
    assert_eq!(before, 1502);

    let mut gc = Command::new(BIN)
        .args(["gc", "--data-dir", node.data_dir.to_str().unwrap()])
        .args(["--config", node.config_path.to_str().unwrap()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while blob_files(&node.data_dir).len() == before && started.elapsed() < Duration::from_secs(30)
    {
        if gc.try_wait().unwrap().is_some() {
            break;
        }
    }
    let _ = gc.kill();
    let _ = gc.wait();
    let left = blob_files(&node.data_dir).len();
    eprintln!("killed gc with {left} of {before} blob files left");
    assert_blob_files_intact(&node.data_dir);

    let out = gc_cli(&node.data_dir, &node.config_path, false);
    assert_eq!(blob_files(&node.data_dir).len(), 2, "{out}");
    node.restart();
    peers::assert_serves(&node.base(), "keep", "v1", &image, None);
    node.assert_no_panic();
}
