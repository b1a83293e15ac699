//! Sync windows: a closed window makes no request at all; a window that opens syncs.

use super::*;

/// A schedule whose window is closed now makes zero requests to the parent (not one connection
/// through the proxy), and the status shows when the next window opens.
#[test]
fn window_closed_makes_zero_requests() {
    use chrono::{Duration as ChronoDuration, Timelike, Utc};
    let parent = Distribution::start();
    let proxy = Proxy::start(parent.port);
    let now = Utc::now();
    // A daily one-hour window starting 12 hours from now: closed now, for sure.
    let hour = (now.hour() + 12) % 24;
    let today = now.date_naive().and_hms_opt(hour, 0, 0).unwrap().and_utc();
    let expected = if today > now {
        today
    } else {
        today + ChronoDuration::days(1)
    };
    let child = Node::child(
        &proxy.endpoint(),
        json!({"repositories": ["any/**"], "schedule": format!("0 {hour} * * *"), "window": "PT1H"}),
    );
    let c = child.base();
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        (
            proxy.connections(),
            proxy.refused(),
            proxy.request_count(),
            proxy.bytes_to_server()
        ),
        (0, 0, 0, 0),
        "requests outside the window\n{}",
        proxy_log(&proxy)
    );
    let s = status(&c);
    let next = s["sync"]["nextWindowStart"]
        .as_str()
        .unwrap_or_else(|| panic!("no sync.nextWindowStart: {s:#}"));
    let next: chrono::DateTime<Utc> = next
        .parse()
        .unwrap_or_else(|e| panic!("nextWindowStart {next}: {e}"));
    assert_eq!(next, expected, "nextWindowStart");
    println!(
        "window closed; nextWindowStart {next}, state {}",
        s["sync"]["state"]
    );

    // The status table says so too.
    let out = run_cli(&["status", "--url", &c], Duration::from_secs(20));
    let text = plain(&String::from_utf8_lossy(&out.stdout));
    println!("{text}");
    assert!(out.status.success(), "status CLI: {out:?}");
    assert!(
        text.contains(&expected.format("%Y-%m-%d %H:%M").to_string()),
        "the status table shows the next window:\n{text}"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        proxy.connections() + proxy.refused(),
        0,
        "requests outside the window"
    );
}

/// A daily window that opens within the minute: nothing goes to the parent before it opens
/// (the status says when it will), then the child syncs on its own.
#[test]
fn window_opens_on_schedule_and_syncs() {
    use chrono::{Duration as ChronoDuration, DurationRound, Timelike, Utc};
    let work = tmp();
    let parent = Distribution::start();
    let img = Image::new("linux/amd64", &[random_bytes(1001, 4 * KIB)]);
    skopeo_seed(work.path(), &parent.host(), "sched/app", &[("v1", &img)]);
    let proxy = Proxy::start(parent.port);
    let now = Utc::now();
    let minutes = if now.second() >= 50 { 2 } else { 1 };
    let opens =
        now.duration_trunc(ChronoDuration::minutes(1)).unwrap() + ChronoDuration::minutes(minutes);
    let child = Node::child(
        &proxy.endpoint(),
        json!({
            "repositories": ["sched/app"],
            "schedule": format!("{} {} * * *", opens.minute(), opens.hour()),
            "window": "PT1H",
        }),
    );
    let c = child.base();
    let s = status(&c);
    assert_eq!(
        s["sync"]["nextWindowStart"]
            .as_str()
            .map(|t| t.parse::<chrono::DateTime<Utc>>().unwrap()),
        Some(opens),
        "{:#}",
        s["sync"]
    );
    // Until it opens: not one connection.
    let until_open = (opens - Utc::now()).to_std().unwrap_or_default();
    std::thread::sleep(until_open.saturating_sub(Duration::from_millis(500)));
    assert_eq!(
        (proxy.connections(), proxy.refused()),
        (0, 0),
        "requests before the window opened\n{}",
        proxy_log(&proxy)
    );
    assert_eq!(tags(&c, "sched/app"), None);
    let took = wait_for_tag(
        &child,
        "sched/app",
        "v1",
        &img.digest,
        Duration::from_secs(15),
    );
    println!("window opened at {opens}; synced {took:?} after 0.5 s before the opening");
    assert_serves(&c, "sched/app", "v1", &img, None);
    assert!(
        status(&c)["sync"]["nextWindowStart"].is_null(),
        "inside the window"
    );
}
