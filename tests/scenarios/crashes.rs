//! 4. Crashes: `docker kill` (SIGKILL) of the top node in the middle of a big sync, and of the
//!    lower node while clients pull and while a push it took is still on its way upstream (before
//!    and in the middle of its upload). A client polling the nodes throughout verifies every
//!    digest of every tag it is served and never sees a corrupt or half-synced one; everything
//!    finishes after the restarts.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::common::images::volume_mountpoint;
use crate::scenarios::field::{Endpoint, Field, LowerOptions};
use crate::scenarios::report::Figures;
use crate::scenarios::steps::{
    expect_digest, pull_verified, push, push_big, small_image, CONVERGE,
};

/// The big images' layer (here and in the factory's throughput figure): `FIELD_BIG_MIB` (the
/// issue's 500 in `bench/field.sh`), 64 MiB by default.
pub fn big_mib() -> u64 {
    std::env::var("FIELD_BIG_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}

/// Polls `repo:tag` at `nodes` until stopped: whenever a node serves the tag it must be
/// `digest` with every blob whole (a node that is down is skipped). Counts verified pulls.
struct Watcher {
    stop: Arc<AtomicBool>,
    verified: Arc<AtomicU64>,
    thread: JoinHandle<()>,
}

impl Watcher {
    fn start(nodes: Vec<Endpoint>, repo: &str, tag: &str, digest: &str) -> Watcher {
        let (stop, verified) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let (s, v) = (stop.clone(), verified.clone());
        let (repo, tag, digest) = (repo.to_owned(), tag.to_owned(), digest.to_owned());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                for node in &nodes {
                    if let Ok(Some(served)) = pull_verified(node, &repo, &tag) {
                        assert_eq!(
                            served, digest,
                            "{repo}:{tag} at {} is another image",
                            node.base
                        );
                        v.fetch_add(1, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Watcher {
            stop,
            verified,
            thread,
        }
    }

    /// Stop and return how many pulls were verified (a failed verification fails here).
    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Err(panic) = self.thread.join() {
            std::panic::resume_unwind(panic);
        }
        self.verified.load(Ordering::Relaxed)
    }
}

pub fn crashes(f: &mut Figures) {
    // The lower's bandwidth limit paces its uploads too, so a kill can land mid-upload.
    let field = Field::start(LowerOptions {
        mode: "ReadWrite",
        sync: serde_json::json!({"repositories": ["apps/*"], "bandwidthLimit": "16MiB/s"}),
        ..LowerOptions::default()
    });
    let logs = || field.logs();
    let (root, top, lower) = (&field.root.admin, &field.top.admin, &field.lower.node.admin);

    // The top is killed while it downloads a big layer (paced, so the kill lands mid-way).
    let mut config = field.top.config();
    config["parent"]["sync"]["bandwidthLimit"] = serde_json::json!("16MiB/s");
    field.top.rewrite_config(&config);
    std::thread::sleep(Duration::from_secs(2));
    let mib = big_mib();
    let (digest, _) = push_big(root, "apps/big", "v1", 4_000, mib);
    let watcher = Watcher::start(vec![top.clone(), lower.clone()], "apps/big", "v1", &digest);
    let started = Instant::now();
    let downloading = crate::common::peers::poll_every(Duration::from_millis(20), CONVERGE, || {
        bytes_under(&field.top, "partial") > 1024 * 1024
    });
    assert!(downloading, "the top never started downloading\n{}", logs());
    field.top.kill();
    f.note(
        "top killed mid-sync after",
        format!("{:.1} s", started.elapsed().as_secs_f64()),
    );
    std::thread::sleep(Duration::from_secs(1));
    field.top.restart();
    expect_digest(top, "apps/big", "v1", &digest, CONVERGE * 3, logs);
    let took = started.elapsed();
    f.note(
        "big image through two layers, with a kill",
        format!("{mib} MiB at top in {:.1} s", took.as_secs_f64()),
    );
    expect_digest(lower, "apps/big", "v1", &digest, CONVERGE * 3, logs);
    f.seconds("… and at lower", started.elapsed());
    let verified = watcher.finish();
    f.note("verified pulls of the big tag while it synced", verified);
    for (name, at) in [("top", top), ("lower", lower)] {
        let pulled = pull_verified(at, "apps/big", "v1").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            pulled.as_deref(),
            Some(digest.as_str()),
            "after the restart at {name}"
        );
    }

    // The lower node is killed while clients pull from it.
    let line = small_image(4_100);
    push(root, "apps/line", "v1", &line);
    expect_digest(lower, "apps/line", "v1", &line.digest, CONVERGE, logs);
    let watcher = Watcher::start(vec![lower.clone()], "apps/line", "v1", &line.digest);
    std::thread::sleep(Duration::from_millis(500));
    field.lower.node.kill();
    std::thread::sleep(Duration::from_millis(500));
    field.lower.node.restart();
    std::thread::sleep(Duration::from_millis(500));
    let verified = watcher.finish();
    assert!(verified > 0, "no pull verified around the kill");
    f.note("verified pulls at lower around a kill", verified);

    // The lower node (ReadWrite) is killed right after a push it took, before (or while) its
    // outbox sends it upstream: after the restart it reaches the root.
    let made_here = small_image(4_200);
    push(lower, "apps/fromlower", "v1", &made_here);
    field.lower.node.kill();
    let killed = Instant::now();
    field.lower.node.restart();
    expect_digest(
        root,
        "apps/fromlower",
        "v1",
        &made_here.digest,
        CONVERGE,
        logs,
    );
    f.seconds("push at lower, kill, restart → at root", killed.elapsed());
    let pulled = pull_verified(root, "apps/fromlower", "v1").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(pulled.as_deref(), Some(made_here.digest.as_str()));

    // … and killed in the middle of sending a big layer up (the top holds part of it in an
    // upload session): after the restart the lower asks the top where that session stands and
    // sends the rest, and it reaches the root; the top never serves a half-received tag (the
    // watcher verifies every pull).
    let (big_here, _) = push_big(lower, "apps/bigfromlower", "v1", 4_300, mib);
    let watcher = Watcher::start(
        vec![root.clone(), top.clone()],
        "apps/bigfromlower",
        "v1",
        &big_here,
    );
    let uploading = crate::common::peers::poll_every(Duration::from_millis(20), CONVERGE, || {
        bytes_under(&field.top, "uploads") > 1024 * 1024
    });
    assert!(uploading, "the lower never started its upload\n{}", logs());
    field.lower.node.kill();
    let killed = Instant::now();
    f.note(
        "lower killed mid-upload with",
        format!(
            "{} MiB at the top",
            bytes_under(&field.top, "uploads") >> 20
        ),
    );
    field.lower.node.restart();
    expect_digest(
        root,
        "apps/bigfromlower",
        "v1",
        &big_here,
        CONVERGE * 3,
        logs,
    );
    f.seconds(
        "big push at lower, kill mid-upload → at root",
        killed.elapsed(),
    );
    let verified = watcher.finish();
    f.note("verified pulls of it at root and top", verified);
    crate::common::support::assert_blob_files_intact(&field.lower.data.mountpoint());
}

/// Bytes under `dir` of a node's data volume: `partial` (downloads), `uploads` (upload sessions).
fn bytes_under(node: &crate::scenarios::field::NodeContainer, dir: &str) -> u64 {
    let volume = node.container.inspect(
        "{{range .Mounts}}{{if eq .Destination \"/var/acr/data\"}}{{.Name}}{{end}}{{end}}",
    );
    crate::common::files_under(&volume_mountpoint(&volume).join(dir))
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}
