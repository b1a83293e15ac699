//! 1. Connected factory: root → top (ReadWrite) → lower (ReadOnly, an IoT Edge module). What a
//!    client on `ot` can reach; an image pushed at the root pullable with `docker pull` from the
//!    lower node, and how long each layer takes to have it; an image pushed at the top reaching
//!    the root.

use std::time::{Duration, Instant};

use crate::common::images::Network;
use crate::scenarios::field::{probe, Field, LowerOptions};
use crate::scenarios::report::Figures;
use crate::scenarios::steps::{
    docker_pull_as, expect_digest, median_max, push, seed_busybox, small_image, CONVERGE,
};

/// Pushes at the root timed through both layers.
const ROUNDS: u64 = 5;

pub fn connected_factory(f: &mut Figures) {
    let field = Field::start(LowerOptions::default());
    f.seconds(
        "field up (3 nodes, 3 networks, edge stand-in)",
        field.started_in,
    );
    let logs = || field.logs();

    // What a client on `ot` reaches: the lower node, never the root or the top.
    let root_ip = ip_on(&field.root.container.name, &field.layers.cloud.name);
    let top_ip = ip_on(&field.top.container.name, &field.layers.it.name);
    for (who, ip) in [("root", &root_ip), ("top", &top_ip)] {
        let answer = http_probe(&field.layers.ot, ip);
        assert!(
            !answer.contains("HTTP/1.1"),
            "a client on ot reached the {who} at {ip}: {answer}"
        );
    }
    let lower_ip = ip_on(&field.lower.node.container.name, &field.layers.ot.name);
    let answer = http_probe(&field.layers.ot, &lower_ip);
    assert!(
        answer.contains("HTTP/1.0 200 OK"),
        "a client on ot cannot reach the lower node: {answer}"
    );
    f.note("reachable from ot", "lower only (root and top time out)");

    let root = &field.root.admin;
    let top = &field.top.admin;
    let lower = field.lower_client();
    let (mut to_top, mut to_lower) = (vec![], vec![]);
    for round in 0..ROUNDS {
        let image = small_image(100 + round);
        let tag = format!("v{round}");
        push(root, "apps/line", &tag, &image);
        let pushed = Instant::now();
        expect_digest(top, "apps/line", &tag, &image.digest, CONVERGE, logs);
        let at_top = pushed.elapsed();
        expect_digest(&lower, "apps/line", &tag, &image.digest, CONVERGE, logs);
        let at_lower = pushed.elapsed();
        to_top.push(at_top);
        to_lower.push(at_lower - at_top);
    }
    let (median, max) = median_max(to_top);
    f.note(
        "push at root → pullable at top (median / max, target < 2 s)",
        format!("{:.3} s / {:.3} s", median.as_secs_f64(), max.as_secs_f64()),
    );
    let (median, max) = median_max(to_lower);
    f.note(
        "top → pullable at lower (median / max, target < 2 s)",
        format!("{:.3} s / {:.3} s", median.as_secs_f64(), max.as_secs_f64()),
    );

    // Throughput across the layers: one big layer, unpaced.
    let mib = crate::scenarios::crashes::big_mib();
    let (big, _) = crate::scenarios::steps::push_big(root, "apps/bulk", "v1", 150, mib);
    let pushed = Instant::now();
    expect_digest(top, "apps/bulk", "v1", &big, CONVERGE * 3, logs);
    let at_top = pushed.elapsed();
    expect_digest(&lower, "apps/bulk", "v1", &big, CONVERGE * 3, logs);
    let at_lower = pushed.elapsed() - at_top;
    let rate = |took: std::time::Duration| mib as f64 / took.as_secs_f64();
    f.note(
        "one big layer root → top → lower",
        format!(
            "{mib} MiB: {:.2} s ({:.0} MiB/s), then {:.2} s ({:.0} MiB/s)",
            at_top.as_secs_f64(),
            rate(at_top),
            at_lower.as_secs_f64(),
            rate(at_lower)
        ),
    );

    // A runnable image pushed at the root: the Docker engine pulls it from the lower node.
    let work = tempfile::tempdir().unwrap();
    let digest = seed_busybox(work.path(), root, "apps/busybox", "v1");
    expect_digest(&lower, "apps/busybox", "v1", &digest, CONVERGE, logs);
    let reference = format!("{}/apps/busybox:v1", lower.host);
    let pulled = docker_pull_as(
        work.path(),
        &lower.host,
        "line1",
        &lower.password,
        &reference,
    )
    .unwrap_or_else(|e| panic!("docker pull {reference}: {e}\n{}", logs()));
    assert_eq!(pulled, digest, "docker pull from the lower node");
    f.note("docker pull at lower", "busybox digest matches the root's");

    // Pushed at the top (ReadWrite): reaches the root, and the lower node too.
    let image = small_image(900);
    push(top, "apps/fromtop", "v1", &image);
    let pushed = Instant::now();
    expect_digest(root, "apps/fromtop", "v1", &image.digest, CONVERGE, logs);
    f.seconds("push at top → at root", pushed.elapsed());
    expect_digest(&lower, "apps/fromtop", "v1", &image.digest, CONVERGE, logs);
    // The twin's mode holds from its first configuration: the ReadOnly lower node refuses a
    // push (it would never reach the parent), with no restart asked for.
    let refused = crate::common::credentials::push_image_as(
        &field.lower.node.admin.base,
        Some(&field.lower.node.admin.authorization()),
        "apps/local",
        "v1",
        &small_image(901),
    )
    .expect_err("the ReadOnly lower node took a push");
    assert_eq!(
        crate::common::credentials::error_code(&refused),
        "DENIED",
        "{refused:?}"
    );
    let status = field.lower.node.admin.status();
    assert_eq!(status["mode"], "ReadOnly", "{status:#}");
    let codes = crate::common::peers::detail_codes(&status);
    assert!(!codes.iter().any(|c| c == "RestartRequired"), "{status:#}");
    f.note(
        "push at the ReadOnly lower",
        "refused (DENIED), mode from the twin",
    );
    // Reports are rate-limited (one patch per 5 s), so the twin may lag the status a little.
    field
        .lower
        .standin
        .wait_for_reported(Duration::from_secs(40), |reported| {
            reported["name"] == "lowernode"
                && reported["activation"]["status"] == "Active"
                && reported["config"]["source"] == "twin"
        });
    field.lower.standin.assert_no_violations();
}

/// A container's address on one network.
pub fn ip_on(container: &str, network: &str) -> String {
    let format = format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}");
    let out = crate::common::run(
        std::process::Command::new(crate::common::images::docker())
            .args(["inspect", "-f", &format, container]),
    );
    let ip = out.trim().to_owned();
    assert!(!ip.is_empty(), "{container} has no address on {network}");
    ip
}

/// `GET /healthz` from a probe container on `network` to `ip`:8080; what came back (a status
/// line, or nc's complaint).
fn http_probe(network: &Network, ip: &str) -> String {
    // nc shuts its side once the request is out; the node answers all the same.
    let script = format!("printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} 8080");
    let (code, out) = probe(network, &["sh", "-c", &script]);
    format!("{ip}: exit {code}: {out}")
}
