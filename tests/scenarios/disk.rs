//! 5. Full disk: the lower node's data volume is a small tmpfs, and a file the suite writes
//!    into it leaves room for about one of the three images it must sync. The node reports
//!    `DiskError`, evicts synced tags by its policy (least recently pulled first), keeps serving
//!    what it holds with every digest intact, and completes on its own once the file is gone.

use std::process::Command;
use std::time::Instant;

use serde_json::json;

use crate::common::images::{docker, Volume};
use crate::common::peers::{detail_codes, wait_until};
use crate::scenarios::field::{Field, LowerOptions};
use crate::scenarios::report::Figures;
use crate::scenarios::steps::{expect_digest, pull_verified, push_big, CONVERGE};

const MIB: u64 = 1024 * 1024;
const TMPFS_MIB: u64 = 64;
const IMAGE_MIB: u64 = 8;
const REPOS: [&str; 3] = ["apps/disk-a", "apps/disk-b", "apps/disk-c"];

/// A named volume on a tmpfs of `mib` MiB owned by the image's user.
fn tmpfs_volume(mib: u64) -> Volume {
    let name = crate::common::images::unique_name("field-tmpfs");
    crate::common::run(Command::new(docker()).args([
        "volume",
        "create",
        "--driver",
        "local",
        "--opt",
        "type=tmpfs",
        "--opt",
        "device=tmpfs",
        "--opt",
        &format!("o=size={mib}m,uid=1000,gid=1000"),
        &name,
    ]));
    Volume { name }
}

/// Bytes free on the file system holding `path`, as the node measures them.
fn available(path: &std::path::Path) -> u64 {
    connected_registry::store::usage::available_bytes(path).unwrap()
}

pub fn full_disk(f: &mut Figures) {
    let volume = tmpfs_volume(TMPFS_MIB);
    let field = Field::start(LowerOptions {
        data: Some(volume),
        extra: json!({"storage": {"minFree": "2MiB"}}),
        ..LowerOptions::default()
    });
    let logs = || field.logs();
    let (root, lower) = (&field.root.admin, &field.lower.node.admin);
    let data = field.lower.data.mountpoint();

    // Leave room for about one image (and the metadata's growth).
    let filler = data.join("filler.bin");
    let keep = (IMAGE_MIB + 5) * MIB;
    let fill = available(&data).saturating_sub(keep);
    let file = std::fs::File::create(&filler).unwrap();
    file.set_len(0).unwrap();
    // Written, not sparse: tmpfs counts only pages that hold data.
    let chunk = vec![0xA5u8; MIB as usize];
    let mut left = fill;
    let mut w = std::io::BufWriter::new(file);
    while left > 0 {
        let n = left.min(MIB) as usize;
        std::io::Write::write_all(&mut w, &chunk[..n]).unwrap();
        left -= n as u64;
    }
    drop(w);
    f.note(
        "tmpfs / filler / left",
        format!(
            "{TMPFS_MIB} MiB / {} MiB / {} MiB",
            fill / MIB,
            available(&data) / MIB
        ),
    );

    let mut digests = vec![];
    for (i, repo) in REPOS.iter().enumerate() {
        let (digest, _) = push_big(root, repo, "v1", 5_000 + i as u64, IMAGE_MIB);
        digests.push(digest);
    }
    let mut last = json!(null);
    let reported = wait_until(CONVERGE, || {
        last = lower.status();
        detail_codes(&last).iter().any(|c| c == "DiskError")
    });
    assert!(reported, "no DiskError reported: {last:#}\n{}", logs());
    let detail = last["statusDetails"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["code"] == "DiskError").cloned())
        .unwrap_or_default();
    f.note(
        "reported",
        detail["description"]
            .as_str()
            .unwrap_or_default()
            .chars()
            .take(120)
            .collect::<String>(),
    );

    // Serving goes on, and what is served is whole.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let mut served = 0;
    for (repo, digest) in REPOS.iter().zip(&digests) {
        if let Some(got) = pull_verified(lower, repo, "v1").unwrap_or_else(|e| panic!("{e}")) {
            assert_eq!(&got, digest);
            served += 1;
        }
    }
    assert!(
        served < REPOS.len(),
        "everything fit: the scenario did not fill the disk"
    );
    f.note(
        "tags served while full",
        format!("{served} of {}", REPOS.len()),
    );
    let evictions = field
        .lower
        .node
        .logs()
        .matches("evicted a synced tag")
        .count();
    f.note("evictions while full", evictions);

    // Space comes back: everything completes without a restart.
    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    for (repo, digest) in REPOS.iter().zip(&digests) {
        expect_digest(lower, repo, "v1", digest, CONVERGE * 2, logs);
    }
    f.seconds("space freed → all synced", freed.elapsed());
    for (repo, digest) in REPOS.iter().zip(&digests) {
        let got = pull_verified(lower, repo, "v1").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got.as_ref(), Some(digest));
    }
    // `statusDetails` keeps the history; the state says it is over.
    let mut now = json!(null);
    let recovered = wait_until(CONVERGE, || {
        now = lower.status();
        now["sync"]["state"] == "Succeeded" && now["connectionState"] == "Online"
    });
    assert!(
        recovered,
        "the lower node does not report recovery: {now:#}"
    );
    let files = crate::common::support::assert_blob_files_intact(&data);
    f.note("blob files verified on the volume", files);
}
