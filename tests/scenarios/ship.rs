//! 3. Ship at sea: the top node's link to `cloud` is cut (`docker network disconnect`); the top
//!    reports itself `Offline` within 45 s although nothing it sends fails (TCP keepalive). Pulls
//!    at both layers keep working, pushes at the top wait in its outbox (and still reach the
//!    lower node), the root moves on alone; the link returns and both directions converge: tags
//!    and digests match on every layer and the outbox is empty.

use std::time::{Duration, Instant};

use crate::scenarios::field::{Field, LowerOptions};
use crate::scenarios::report::Figures;
use crate::scenarios::steps::{
    expect_digest, holdings, pull_verified, push, small_image, CONVERGE,
};

/// How long the ship stays out of reach (at least).
const AT_SEA: Duration = Duration::from_secs(8);
/// How long after the cut the top may still report itself `Online`: the keepalive's ~25 s
/// and the retries of the request it cut, with room for a loaded machine.
const OFFLINE_WITHIN: Duration = Duration::from_secs(45);

pub fn ship_at_sea(f: &mut Figures) {
    let field = Field::start(LowerOptions::default());
    let logs = || field.logs();
    let (root, top, lower) = (&field.root.admin, &field.top.admin, &field.lower.node.admin);
    let before = small_image(3_000);
    push(root, "apps/chart", "v1", &before);
    expect_digest(lower, "apps/chart", "v1", &before.digest, CONVERGE, logs);

    field.top.disconnect(&field.layers.cloud);
    let cut = Instant::now();
    // Pulls keep working at both layers.
    for (name, at) in [("top", top), ("lower", lower)] {
        let pulled = pull_verified(at, "apps/chart", "v1").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            pulled.as_deref(),
            Some(before.digest.as_str()),
            "pull at {name} while cut off"
        );
    }
    // The top says it is cut off before anything is pushed there: its waiting long-poll
    // sends nothing, and ends on TCP keepalive (the old wait: the poll's timeout, 30–60 s).
    let offline = crate::common::peers::wait_until(OFFLINE_WITHIN, || {
        top.status()["connectionState"] == "Offline"
    });
    let status = top.status();
    assert!(
        offline,
        "the top still says {} {:?} after the cut: {:#}",
        status["connectionState"],
        cut.elapsed(),
        status["statusDetails"]
    );
    f.seconds("cut → top reports Offline", cut.elapsed());
    // Pushed at the top: queued for the root, and the lower node has it at once.
    let aboard = small_image(3_001);
    push(top, "apps/log", "v1", &aboard);
    expect_digest(lower, "apps/log", "v1", &aboard.digest, CONVERGE, logs);
    // Pushed at the root meanwhile: cannot reach the ship.
    let ashore = small_image(3_002);
    push(root, "apps/chart", "v2", &ashore);
    while cut.elapsed() < AT_SEA {
        std::thread::sleep(Duration::from_millis(200));
    }
    let status = top.status();
    let pending = status["upstream"]["pending"].as_u64().unwrap_or(0);
    assert!(
        pending > 0,
        "the push waits in the top's outbox: {:#}",
        status["upstream"]
    );
    assert_eq!(
        root.tag_digest("apps/log", "v1"),
        None,
        "reached the root through a cut link"
    );
    assert_eq!(
        top.tag_digest("apps/chart", "v2"),
        None,
        "reached the ship through a cut link"
    );
    f.note("outbox while cut off", pending);

    // Back in port.
    field.top.connect(&field.layers.cloud, "top");
    let back = Instant::now();
    expect_digest(root, "apps/log", "v1", &aboard.digest, CONVERGE, logs);
    let upstream = back.elapsed();
    expect_digest(lower, "apps/chart", "v2", &ashore.digest, CONVERGE, logs);
    let downstream = back.elapsed();
    f.seconds("link back → top's push at root", upstream);
    f.seconds("link back → root's push at lower", downstream);
    let drained = crate::common::peers::wait_until(CONVERGE, || {
        top.status()["upstream"]["pending"].as_u64() == Some(0)
    });
    assert!(
        drained,
        "the top's outbox drains: {:#}\n{}",
        top.status()["upstream"],
        logs()
    );
    let (at_root, at_top, at_lower) = (
        holdings(root, "apps/"),
        holdings(top, "apps/"),
        holdings(lower, "apps/"),
    );
    assert_eq!(
        at_root, at_top,
        "root and top hold the same tags and digests"
    );
    assert_eq!(
        at_top, at_lower,
        "top and lower hold the same tags and digests"
    );
    f.note("tags matching on all layers", at_root.len());
}
