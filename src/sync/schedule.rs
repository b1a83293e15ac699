//! When sync may talk to the parent: a cron schedule (UTC) whose every start opens a window of
//! fixed length; `* * * * *` means continuous. Also the other duration and rate settings of
//! `parent.sync` (message TTL, bandwidth limit), parsed and range-checked here.
//!
//! (Stub: to be implemented.)

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::config::ConfigError;

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
    _private: (),
}

impl Schedule {
    /// Parse `schedule` (5-field cron, UTC) and `window` (ISO-8601, 1 h – 7 d, required unless the
    /// schedule is `* * * * *`). Errors name the field (`parent.sync.schedule`,
    /// `parent.sync.window`) and the rule.
    pub fn parse(_schedule: &str, _window: Option<&str>) -> Result<Schedule, ConfigError> {
        todo!()
    }

    pub fn is_continuous(&self) -> bool {
        todo!()
    }

    pub fn state_at(&self, _now: DateTime<Utc>) -> WindowState {
        todo!()
    }
}

/// `messageTtl`: ISO-8601 duration between 1 day and 90 days (field `parent.sync.messageTtl`).
pub fn parse_message_ttl(_ttl: &str) -> Result<Duration, ConfigError> {
    todo!()
}

/// `bandwidthLimit` like `20MiB/s`, `500KiB/s`, `1GB/s` → bytes per second (field
/// `parent.sync.bandwidthLimit`).
pub fn parse_bandwidth(_limit: &str) -> Result<u64, ConfigError> {
    todo!()
}
