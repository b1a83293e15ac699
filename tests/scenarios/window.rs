//! 2. Shop with a sync window: the lower node's twin gives it a daily one-hour window that
//!    opens within the next minute or two. Until it opens the top (its parent) answers not one
//!    request from it, counted by the top's own `/metrics`; once it opens, everything the root
//!    holds converges to the lower node on its own.

use std::time::{Duration, Instant};

use chrono::{DurationRound, Timelike, Utc};
use serde_json::json;

use crate::scenarios::field::{Endpoint, Field, LowerOptions};
use crate::scenarios::report::Figures;
use crate::scenarios::steps::{expect_digest, push, small_image, CONVERGE};

/// Routes the test process itself asks the top for (not the lower node's doing).
const OWN_ROUTES: &[&str] = &["metrics", "health"];

/// Requests the top answered on behalf of others than the test process.
fn requests_from_children(top: &Endpoint) -> u64 {
    top.requests_by_route()
        .into_iter()
        .filter(|(route, _)| !OWN_ROUTES.contains(&route.as_str()))
        .map(|(_, n)| n)
        .sum()
}

pub fn shop_with_a_sync_window(f: &mut Figures) {
    let now = Utc::now();
    // At least 30 s ahead, so the field is up well before the window opens.
    let minutes = if now.second() >= 30 { 2 } else { 1 };
    let opens = now.duration_trunc(chrono::Duration::minutes(1)).unwrap()
        + chrono::Duration::minutes(minutes);
    let field = Field::start(LowerOptions {
        sync: json!({
            "repositories": ["apps/*"],
            "schedule": format!("{} {} * * *", opens.minute(), opens.hour()),
            "window": "PT1H",
        }),
        ..LowerOptions::default()
    });
    let logs = || field.logs();
    let (root, top, lower) = (&field.root.admin, &field.top.admin, &field.lower.node.admin);

    let image = small_image(2_000);
    push(root, "apps/shop", "v1", &image);
    expect_digest(top, "apps/shop", "v1", &image.digest, CONVERGE, logs);
    // The module reports its window once its twin is applied.
    let mut status = serde_json::Value::Null;
    crate::common::peers::wait_until(Duration::from_secs(30), || {
        status = lower.status();
        status["sync"]["nextWindowStart"].is_string()
    });
    assert_eq!(
        status["sync"]["nextWindowStart"]
            .as_str()
            .map(|t| t.parse::<chrono::DateTime<Utc>>().unwrap()),
        Some(opens),
        "the lower node reports when its window opens: {:#}",
        status["sync"]
    );

    // Closed: watch the top until a moment before the window opens.
    let before = requests_from_children(top);
    let watched = Instant::now();
    while (opens - Utc::now()).num_milliseconds() > 500 {
        std::thread::sleep(Duration::from_millis(250));
    }
    let during = requests_from_children(top) - before;
    assert_eq!(
        during,
        0,
        "the top answered {during} requests while the lower node's window was closed\n{}",
        logs()
    );
    assert_eq!(
        lower.tag_digest("apps/shop", "v1"),
        None,
        "synced outside its window"
    );
    f.seconds("window closed, watched", watched.elapsed());
    f.note("requests at the parent while closed", during);

    // Open: it converges on its own.
    let opened = Instant::now();
    expect_digest(lower, "apps/shop", "v1", &image.digest, CONVERGE, logs);
    f.seconds("window open → synced", opened.elapsed());
    f.note(
        "trigger reported",
        lower.status()["sync"]["trigger"].clone(),
    );
    f.note(
        "requests at the parent once open",
        requests_from_children(top) - before,
    );
}
