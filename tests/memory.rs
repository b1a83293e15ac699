//! The node's memory after load: the binary runs on jemalloc with the options `main.rs` gives it
//! (a background thread that hands freed pages back), so after a burst of large pulls the process
//! is small again without anything else happening. The wait is bounded; no timing is asserted.

use crate::common;

use std::time::{Duration, Instant};

use common::peers::{push_blob, random_bytes, Blob, MIB};
use common::Registry;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .collect()
}

#[test]
fn memory_taken_by_a_burst_of_pulls_goes_back_to_the_system() {
    let reg = Registry::start();
    let pid = reg.pid();
    let threads = thread_names(pid);
    assert!(
        threads.iter().any(|n| n == "jemalloc_bg_thd"),
        "the node runs on jemalloc with its background thread: {threads:?}"
    );

    let blob = Blob::new("application/octet-stream", random_bytes(7, 64 * MIB));
    push_blob(&reg.url(""), "burst/big", &blob);
    let before = rss_kib(pid);

    // Eight clients at once, three times: each stream's 1 MiB chunks come and go.
    let url = reg.url(&format!("/v2/burst/big/blobs/{}", blob.digest));
    for _ in 0..3 {
        let pulls: Vec<_> = (0..8)
            .map(|_| {
                let url = url.clone();
                std::thread::spawn(move || {
                    let mut body = reqwest::blocking::get(&url).unwrap();
                    assert_eq!(body.status(), 200);
                    let mut sink = std::io::sink();
                    body.copy_to(&mut sink).unwrap() as usize
                })
            })
            .collect();
        for pull in pulls {
            assert_eq!(pull.join().unwrap(), 64 * MIB);
        }
    }

    // Back to within 12 MiB of where it was before the pulls, in well under a minute.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut now = rss_kib(pid);
    while now > before + 12 * 1024 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        now = rss_kib(pid);
    }
    assert!(
        now <= before + 12 * 1024,
        "RSS {now} KiB a minute after the pulls, {before} KiB before them"
    );
}
