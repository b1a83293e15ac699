//! When sync may talk to the parent: a cron schedule (UTC) whose every start opens a window of
//! fixed length; `* * * * *` means continuous. Also the other duration and rate settings of
//! `parent.sync` (message TTL, bandwidth limit), parsed and range-checked here.
//!
//! A window is the half-open interval `[start, start + window)`. Windows that overlap or touch
//! (the window is longer than the gap between starts) merge into one open period, so the sync
//! loop is not interrupted at the end of one window only to be told that the next is already open.
//! Nothing here iterates over every start: the latest start before a point is found by a binary
//! search over `croner`'s "next occurrence", so a dense schedule with a 7-day window costs a few
//! dozen cron look-ups.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Timelike, Utc};
use croner::Cron;

use crate::config::ConfigError;

const SCHEDULE_FIELD: &str = "parent.sync.schedule";
const WINDOW_FIELD: &str = "parent.sync.window";
const TTL_FIELD: &str = "parent.sync.messageTtl";
const BANDWIDTH_FIELD: &str = "parent.sync.bandwidthLimit";
const POLL_FIELD: &str = "parent.sync.pollInterval";
const MAX_POLL_FIELD: &str = "parent.sync.maxPollInterval";

/// The expression that means "always open".
const CONTINUOUS: &str = "* * * * *";

const MIN_WINDOW: Duration = Duration::from_secs(60 * 60);
const MAX_WINDOW: Duration = Duration::from_secs(7 * 24 * 60 * 60);
const MIN_TTL: Duration = Duration::from_secs(24 * 60 * 60);
const MAX_TTL: Duration = Duration::from_secs(90 * 24 * 60 * 60);
/// Bounds of `pollInterval` and `maxPollInterval`.
pub const MIN_POLL_INTERVAL: Duration = Duration::from_secs(1);
pub const MAX_POLL_INTERVAL: Duration = Duration::from_secs(60 * 60);

/// How many overlapping windows are merged when computing `closes_at`. Each step moves the
/// close by up to one window (at least an hour), so this looks well ahead; a schedule whose
/// windows chain on for longer is reported as closing at the bound, where the caller re-checks
/// and finds the window still open.
const MAX_MERGED_WINDOWS: usize = 64;

/// Where `now` falls relative to the sync windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowState {
    /// Sync may run until `closes_at` (`None`: continuous, never closes).
    Open { closes_at: Option<DateTime<Utc>> },
    /// No request may go to the parent before `opens_at`.
    Closed { opens_at: DateTime<Utc> },
}

#[derive(Debug, Clone)]
pub struct Schedule {
    /// `None`: continuous.
    windowed: Option<Windowed>,
}

#[derive(Debug, Clone)]
struct Windowed {
    cron: Cron,
    window: TimeDelta,
}

impl Schedule {
    /// Parse `schedule` (5-field cron, UTC) and `window` (ISO-8601, 1 h – 7 d, required unless the
    /// schedule is `* * * * *`). Errors name the field (`parent.sync.schedule`,
    /// `parent.sync.window`) and the rule.
    ///
    /// With a continuous schedule the window has no effect, but one that is given must still be
    /// valid: a typo is refused rather than silently ignored.
    pub fn parse(schedule: &str, window: Option<&str>) -> Result<Schedule, ConfigError> {
        let normalized = schedule.split_whitespace().collect::<Vec<_>>().join(" ");
        let window = window.map(parse_window).transpose()?;
        if normalized == CONTINUOUS {
            return Ok(Schedule { windowed: None });
        }
        let cron = Cron::new(&normalized)
            .parse()
            .map_err(|e| ConfigError::Invalid {
                field: SCHEDULE_FIELD,
                rule: format!(
                "{schedule:?} is not a valid 5-field cron expression (minute hour day-of-month \
                 month day-of-week, UTC; \"* * * * *\" for continuous sync): {e}"
            ),
            })?;
        // A pattern such as "0 0 30 2 *" parses but never fires: refuse it rather than wait
        // forever for a window that never opens.
        if cron.find_next_occurrence(&Utc::now(), false).is_err() {
            return Err(ConfigError::Invalid {
                field: SCHEDULE_FIELD,
                rule: format!(
                    "{schedule:?} never matches a date, so no sync window would ever open"
                ),
            });
        }
        let window = window.ok_or_else(|| ConfigError::Invalid {
            field: WINDOW_FIELD,
            rule: format!(
                "a window (ISO-8601 duration between PT1H and P7D, e.g. \"PT4H\") is required when \
                 the schedule is not continuous (schedule is {schedule:?})"
            ),
        })?;
        let window = TimeDelta::from_std(window).expect("window is at most 7 days");
        Ok(Schedule {
            windowed: Some(Windowed { cron, window }),
        })
    }

    pub fn is_continuous(&self) -> bool {
        self.windowed.is_none()
    }

    pub fn state_at(&self, now: DateTime<Utc>) -> WindowState {
        match &self.windowed {
            None => WindowState::Open { closes_at: None },
            Some(w) => w.state_at(now),
        }
    }
}

impl Windowed {
    fn state_at(&self, now: DateTime<Utc>) -> WindowState {
        // `now` is inside the window of start S iff S <= now < S + window, i.e. S is in
        // (now - window, now].
        let Some(mut start) = self.latest_start_in(now - self.window, now) else {
            // No start in (now - window, now]: the next start after now opens the next window.
            let opens_at = self.next_after(now).unwrap_or(DateTime::<Utc>::MAX_UTC);
            return WindowState::Closed { opens_at };
        };
        // Merge windows that begin before (or exactly when) the current one closes.
        let mut closes_at = start + self.window;
        for _ in 0..MAX_MERGED_WINDOWS {
            match self.latest_start_in(start, closes_at) {
                Some(later) => {
                    start = later;
                    closes_at = later + self.window;
                }
                None => break,
            }
        }
        WindowState::Open {
            closes_at: Some(closes_at),
        }
    }

    /// The first start at or after `t`.
    fn next_at_or_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        // Starts fall on whole seconds; round up so croner never sees a fraction.
        let whole = t.with_nanosecond(0)?;
        let from = if whole < t {
            whole + TimeDelta::seconds(1)
        } else {
            whole
        };
        self.cron.find_next_occurrence(&from, true).ok()
    }

    /// The first start strictly after `t`.
    fn next_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.next_at_or_after(t.with_nanosecond(0)? + TimeDelta::seconds(1))
    }

    /// The latest start in `(after, until]`, by binary search over whole seconds: "the next start
    /// at or after t is at most `until`" holds for every t up to that start and for none later.
    fn latest_start_in(&self, after: DateTime<Utc>, until: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let first = self.next_after(after).filter(|s| *s <= until)?;
        let (mut good, mut bad) = (0_i64, (until - first).num_seconds() + 1);
        while bad - good > 1 {
            let mid = good + (bad - good) / 2;
            let probe = first + TimeDelta::seconds(mid);
            match self.next_at_or_after(probe) {
                Some(s) if s <= until => good = (s - first).num_seconds().max(mid),
                _ => bad = mid,
            }
        }
        Some(first + TimeDelta::seconds(good))
    }
}

/// `window`: ISO-8601 duration between 1 hour and 7 days (field `parent.sync.window`).
fn parse_window(window: &str) -> Result<Duration, ConfigError> {
    let d = parse_iso_duration(WINDOW_FIELD, window)?;
    if !(MIN_WINDOW..=MAX_WINDOW).contains(&d) {
        return Err(ConfigError::Invalid {
            field: WINDOW_FIELD,
            rule: format!("{window:?} must be between PT1H and P7D (inclusive)"),
        });
    }
    Ok(d)
}

/// `messageTtl`: ISO-8601 duration between 1 day and 90 days (field `parent.sync.messageTtl`).
pub fn parse_message_ttl(ttl: &str) -> Result<Duration, ConfigError> {
    let d = parse_iso_duration(TTL_FIELD, ttl)?;
    if !(MIN_TTL..=MAX_TTL).contains(&d) {
        return Err(ConfigError::Invalid {
            field: TTL_FIELD,
            rule: format!("{ttl:?} must be between P1D and P90D (inclusive)"),
        });
    }
    Ok(d)
}

/// How often a child polls a parent with no change feed: `first` after a pass that fetched
/// something, doubling after each pass that found nothing new, up to `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PollIntervals {
    pub first: Duration,
    pub max: Duration,
}

impl Default for PollIntervals {
    fn default() -> Self {
        PollIntervals {
            first: Duration::from_secs(5),
            max: Duration::from_secs(300),
        }
    }
}

/// `pollInterval` and `maxPollInterval`: each PT1S – PT1H, the maximum not below the first.
pub fn parse_poll_intervals(sync: &super::SyncConfig) -> Result<PollIntervals, ConfigError> {
    let bounded = |field, text: &str| {
        let d = parse_iso_duration(field, text)?;
        if !(MIN_POLL_INTERVAL..=MAX_POLL_INTERVAL).contains(&d) {
            return Err(ConfigError::Invalid {
                field,
                rule: format!("{text:?} must be between PT1S and PT1H (inclusive)"),
            });
        }
        Ok(d)
    };
    let first = bounded(POLL_FIELD, &sync.poll_interval)?;
    let max = bounded(MAX_POLL_FIELD, &sync.max_poll_interval)?;
    if max < first {
        return Err(ConfigError::Invalid {
            field: MAX_POLL_FIELD,
            rule: format!(
                "{:?} must not be shorter than pollInterval {:?}",
                sync.max_poll_interval, sync.poll_interval
            ),
        });
    }
    Ok(PollIntervals { first, max })
}

/// An ISO-8601 duration of fixed length: weeks, days, hours, minutes and seconds (a day is 24 h,
/// as everything here is UTC). Years and months have no fixed length and are refused.
pub(crate) fn parse_iso_duration(field: &'static str, text: &str) -> Result<Duration, ConfigError> {
    let text = text.trim();
    let d: iso8601_duration::Duration = text.parse().map_err(|_| ConfigError::Invalid {
        field,
        rule: format!(
            "{text:?} is not an ISO-8601 duration (e.g. \"PT4H\", \"P2D\", \"P1DT12H\", \"P1W\")"
        ),
    })?;
    if d.year != 0.0 || d.month != 0.0 {
        return Err(ConfigError::Invalid {
            field,
            rule: format!(
                "{text:?} uses years or months, whose length varies; give it in weeks, days, \
                 hours, minutes or seconds (e.g. \"P30D\" rather than \"P1M\")"
            ),
        });
    }
    let seconds = f64::from(d.day) * 86_400.0
        + f64::from(d.hour) * 3_600.0
        + f64::from(d.minute) * 60.0
        + f64::from(d.second);
    // Round to milliseconds so that f32 noise in fractional parts does not leak out.
    let millis = (seconds * 1_000.0).round();
    if !millis.is_finite() || millis < 0.0 || millis > u64::MAX as f64 {
        return Err(ConfigError::Invalid {
            field,
            rule: format!("{text:?} is out of range"),
        });
    }
    Ok(Duration::from_millis(millis as u64))
}

/// `bandwidthLimit` like `20MiB/s`, `500KiB/s`, `1GB/s` → bytes per second (field
/// `parent.sync.bandwidthLimit`).
pub fn parse_bandwidth(limit: &str) -> Result<u64, ConfigError> {
    let invalid = |why: &str| ConfigError::Invalid {
        field: BANDWIDTH_FIELD,
        rule: format!(
            "{limit:?} {why}; give bytes per second with an optional unit, e.g. \"20MiB/s\", \
             \"500KiB/s\", \"1GB/s\" or \"1048576/s\""
        ),
    };
    let trimmed = limit.trim();
    let amount = trimmed
        .strip_suffix("/s")
        .or_else(|| trimmed.strip_suffix("/S"))
        .unwrap_or(trimmed)
        .trim_end();
    let bytes = amount
        .parse::<bytesize::ByteSize>()
        .map_err(|_| invalid("is not a rate"))?
        .as_u64();
    if bytes == 0 {
        return Err(invalid("must be greater than zero"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    fn invalid_field(err: ConfigError) -> (&'static str, String) {
        match err {
            ConfigError::Invalid { field, rule } => (field, rule),
            other => panic!("expected ConfigError::Invalid, got {other:?}"),
        }
    }

    fn open(closes_at: DateTime<Utc>) -> WindowState {
        WindowState::Open {
            closes_at: Some(closes_at),
        }
    }

    fn closed(opens_at: DateTime<Utc>) -> WindowState {
        WindowState::Closed { opens_at }
    }

    #[test]
    fn continuous_is_always_open_and_window_is_optional() {
        for (expr, window) in [
            ("* * * * *", None),
            ("  *  * *\t* *  ", None),
            ("* * * * *", Some("PT4H")),
        ] {
            let s = Schedule::parse(expr, window).unwrap();
            assert!(s.is_continuous());
            for now in [at(2024, 1, 1, 0, 0), at(2031, 7, 15, 13, 37)] {
                assert_eq!(s.state_at(now), WindowState::Open { closes_at: None });
            }
        }
    }

    #[test]
    fn poll_intervals_default_bounded_and_ordered() {
        let mut sync = crate::config::SyncConfig::default();
        assert_eq!(
            parse_poll_intervals(&sync).unwrap(),
            PollIntervals::default()
        );
        sync.poll_interval = "PT30S".into();
        sync.max_poll_interval = "PT1H".into();
        let p = parse_poll_intervals(&sync).unwrap();
        assert_eq!((p.first.as_secs(), p.max.as_secs()), (30, 3600));
        for (first, max, field) in [
            ("PT0.5S", "PT5M", "parent.sync.pollInterval"),
            ("PT5S", "PT2H", "parent.sync.maxPollInterval"),
            ("PT1M", "PT30S", "parent.sync.maxPollInterval"),
            ("often", "PT5M", "parent.sync.pollInterval"),
        ] {
            sync.poll_interval = first.into();
            sync.max_poll_interval = max.into();
            let (got, _) = invalid_field(parse_poll_intervals(&sync).unwrap_err());
            assert_eq!(got, field, "{first} {max}");
        }
    }

    #[test]
    fn continuous_still_refuses_a_malformed_window() {
        let (field, _) = invalid_field(Schedule::parse("* * * * *", Some("4 hours")).unwrap_err());
        assert_eq!(field, "parent.sync.window");
    }

    #[test]
    fn daily_window() {
        let s = Schedule::parse("0 2 * * *", Some("PT4H")).unwrap();
        assert!(!s.is_continuous());
        let six = at(2024, 3, 10, 6, 0);
        assert_eq!(
            s.state_at(at(2024, 3, 10, 1, 59)),
            closed(at(2024, 3, 10, 2, 0))
        );
        assert_eq!(s.state_at(at(2024, 3, 10, 2, 0)), open(six));
        assert_eq!(s.state_at(at(2024, 3, 10, 5, 59)), open(six));
        let almost = six - TimeDelta::nanoseconds(1);
        assert_eq!(s.state_at(almost), open(six));
        assert_eq!(s.state_at(six), closed(at(2024, 3, 11, 2, 0)));
        assert_eq!(
            s.state_at(at(2024, 3, 10, 23, 0)),
            closed(at(2024, 3, 11, 2, 0))
        );
        // Sub-second "now" just before the start.
        let just_before = at(2024, 3, 10, 2, 0) - TimeDelta::milliseconds(1);
        assert_eq!(s.state_at(just_before), closed(at(2024, 3, 10, 2, 0)));
    }

    #[test]
    fn window_across_midnight_and_month_end() {
        let s = Schedule::parse("0 22 * * *", Some("PT4H")).unwrap();
        assert_eq!(
            s.state_at(at(2024, 1, 31, 23, 30)),
            open(at(2024, 2, 1, 2, 0))
        );
        assert_eq!(s.state_at(at(2024, 2, 1, 1, 0)), open(at(2024, 2, 1, 2, 0)));
        assert_eq!(
            s.state_at(at(2024, 2, 1, 2, 0)),
            closed(at(2024, 2, 1, 22, 0))
        );
    }

    #[test]
    fn overlapping_windows_open_until_the_latest_start_plus_window() {
        // Starts at 00:00 and 02:00 only, 3-hour window: [00:00, 03:00) and [02:00, 05:00)
        // overlap and merge into [00:00, 05:00).
        let s = Schedule::parse("0 0,2 * * *", Some("PT3H")).unwrap();
        let five = at(2024, 5, 1, 5, 0);
        assert_eq!(s.state_at(at(2024, 5, 1, 0, 30)), open(five));
        assert_eq!(s.state_at(at(2024, 5, 1, 2, 30)), open(five));
        assert_eq!(s.state_at(at(2024, 5, 1, 4, 59)), open(five));
        assert_eq!(s.state_at(five), closed(at(2024, 5, 2, 0, 0)));
        // Touching windows merge too: [01:00, 02:00) then [02:00, 03:00).
        let s = Schedule::parse("0 1,2 * * *", Some("PT1H")).unwrap();
        assert_eq!(
            s.state_at(at(2024, 5, 1, 1, 10)),
            open(at(2024, 5, 1, 3, 0))
        );
        assert_eq!(
            s.state_at(at(2024, 5, 1, 3, 0)),
            closed(at(2024, 5, 2, 1, 0))
        );
    }

    #[test]
    fn dense_schedule_with_long_window_is_cheap() {
        // Every minute on weekdays with a 7-day window: it never closes in practice, and must be
        // answered without walking ten thousand starts per call.
        let s = Schedule::parse("* * * * 1-5", Some("P7D")).unwrap();
        let started = std::time::Instant::now();
        for day in 1..=7 {
            match s.state_at(at(2024, 7, day, 12, 34)) {
                WindowState::Open { closes_at: Some(c) } => assert!(c > at(2024, 7, day, 12, 34)),
                other => panic!("expected open, got {other:?}"),
            }
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        // Hourly with a one-hour window: back-to-back windows merge within the horizon.
        let s = Schedule::parse("0 * * * *", Some("PT1H")).unwrap();
        match s.state_at(at(2024, 7, 1, 12, 34)) {
            WindowState::Open { closes_at: Some(c) } => {
                assert!(c >= at(2024, 7, 1, 12, 34) + TimeDelta::hours(MAX_MERGED_WINDOWS as i64))
            }
            other => panic!("expected open, got {other:?}"),
        }
    }

    #[test]
    fn weekly_schedule() {
        // Saturdays at 03:00 for a day; 2024-06-01 is a Saturday.
        let s = Schedule::parse("0 3 * * 6", Some("P1D")).unwrap();
        assert_eq!(
            s.state_at(at(2024, 6, 1, 12, 0)),
            open(at(2024, 6, 2, 3, 0))
        );
        assert_eq!(
            s.state_at(at(2024, 6, 3, 0, 0)),
            closed(at(2024, 6, 8, 3, 0))
        );
    }

    #[test]
    fn window_errors_name_the_field() {
        let (field, rule) = invalid_field(Schedule::parse("0 2 * * *", None).unwrap_err());
        assert_eq!(field, "parent.sync.window");
        assert!(
            rule.contains("required when the schedule is not continuous"),
            "{rule}"
        );
        for bad in ["PT30M", "P8D", "PT59M59S", "P7DT1S"] {
            let (field, rule) = invalid_field(Schedule::parse("0 2 * * *", Some(bad)).unwrap_err());
            assert_eq!(field, "parent.sync.window");
            assert!(
                rule.contains("must be between PT1H and P7D"),
                "{bad}: {rule}"
            );
        }
        let (field, rule) = invalid_field(Schedule::parse("0 2 * * *", Some("P1M")).unwrap_err());
        assert_eq!(field, "parent.sync.window");
        assert!(rule.contains("months"), "{rule}");
        let (field, _) = invalid_field(Schedule::parse("0 2 * * *", Some("P1Y")).unwrap_err());
        assert_eq!(field, "parent.sync.window");
        let (field, rule) = invalid_field(Schedule::parse("0 2 * * *", Some("4h")).unwrap_err());
        assert_eq!(field, "parent.sync.window");
        assert!(rule.contains("ISO-8601"), "{rule}");
        // Bounds are inclusive; weeks and mixed forms are fine.
        for good in ["PT1H", "PT60M", "P7D", "P1W", "P1DT12H", "PT1.5H"] {
            Schedule::parse("0 2 * * *", Some(good)).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
    }

    #[test]
    fn invalid_cron_names_the_field_expression_and_reason() {
        for bad in ["0 25 * * *", "not a cron", "0 2 * *", "0 0 2 * * *", ""] {
            let (field, rule) = invalid_field(Schedule::parse(bad, Some("PT4H")).unwrap_err());
            assert_eq!(field, "parent.sync.schedule", "{bad}");
            assert!(rule.contains(&format!("{bad:?}")), "{bad}: {rule}");
        }
        let (_, rule) = invalid_field(Schedule::parse("0 25 * * *", Some("PT4H")).unwrap_err());
        assert!(rule.contains(':'), "parser's reason missing: {rule}");
        let (field, rule) = invalid_field(Schedule::parse("0 0 30 2 *", Some("PT4H")).unwrap_err());
        assert_eq!(field, "parent.sync.schedule");
        assert!(rule.contains("never matches"), "{rule}");
    }

    #[test]
    fn message_ttl_bounds() {
        let day = 24 * 60 * 60;
        assert_eq!(parse_message_ttl("P1D").unwrap(), Duration::from_secs(day));
        assert_eq!(
            parse_message_ttl("P2D").unwrap(),
            Duration::from_secs(2 * day)
        );
        assert_eq!(
            parse_message_ttl("PT24H").unwrap(),
            Duration::from_secs(day)
        );
        assert_eq!(
            parse_message_ttl("P90D").unwrap(),
            Duration::from_secs(90 * day)
        );
        assert_eq!(
            parse_message_ttl("P2W").unwrap(),
            Duration::from_secs(14 * day)
        );
        for bad in ["PT23H", "P91D", "P13W", "P1M", "P1Y", "2 days", ""] {
            let (field, _) = invalid_field(parse_message_ttl(bad).unwrap_err());
            assert_eq!(field, "parent.sync.messageTtl", "{bad}");
        }
        let (_, rule) = invalid_field(parse_message_ttl("P91D").unwrap_err());
        assert!(rule.contains("between P1D and P90D"), "{rule}");
    }

    #[test]
    fn bandwidth_forms() {
        assert_eq!(parse_bandwidth("20MiB/s").unwrap(), 20 * 1024 * 1024);
        assert_eq!(parse_bandwidth("500KiB/s").unwrap(), 500 * 1024);
        assert_eq!(parse_bandwidth("1GB/s").unwrap(), 1_000_000_000);
        assert_eq!(parse_bandwidth("1048576/s").unwrap(), 1_048_576);
        assert_eq!(parse_bandwidth(" 10 MB/s ").unwrap(), 10_000_000);
        assert_eq!(parse_bandwidth("1.5KiB/s").unwrap(), 1536);
        assert_eq!(parse_bandwidth("20MiB").unwrap(), 20 * 1024 * 1024);
        for bad in [
            "0/s",
            "0MiB/s",
            "fast",
            "-1MiB/s",
            "20 furlongs/s",
            "",
            "/s",
        ] {
            let (field, rule) = invalid_field(parse_bandwidth(bad).unwrap_err());
            assert_eq!(field, "parent.sync.bandwidthLimit", "{bad}");
            assert!(rule.contains("20MiB/s"), "{bad}: {rule}");
        }
    }
}
