//! The server's protective limits: how long a connection, a request body or an upload session may
//! sit idle, and how many connections are served at once. Every one has a default that holds
//! against hostile clients; the `limits` section of the configuration only moves them.

use std::time::Duration;

use serde::Deserialize;

use super::schedule::parse_iso_duration;
use super::ConfigError;

/// The `limits` section as written (ISO-8601 durations, like the rest of the schema).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitsConfig {
    /// A connection that has sent nothing, or an HTTP/2 connection with no open stream, is
    /// closed after this long (default `PT60S`).
    pub connection_idle_timeout: Option<String>,
    /// A request body that sends nothing for this long is cut (default `PT30S`); the bytes
    /// already received by an upload session stay and the session can be resumed.
    pub body_idle_timeout: Option<String>,
    /// Connections served at once (default: 80 % of the open-files limit, at most 16384). More
    /// are answered `503` and closed.
    pub max_connections: Option<usize>,
    /// Upload sessions and partial downloads untouched for this long are removed (default
    /// `P7D`, as distribution).
    pub upload_session_max_age: Option<String>,
}

/// The limits in force, with every default filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub connection_idle_timeout: Duration,
    pub body_idle_timeout: Duration,
    pub max_connections: usize,
    pub upload_session_max_age: Duration,
}

pub const DEFAULT_CONNECTION_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_UPLOAD_SESSION_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// Upper bound of the default connection cap, whatever the open-files limit.
pub const MAX_DEFAULT_CONNECTIONS: usize = 16_384;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connection_idle_timeout: DEFAULT_CONNECTION_IDLE_TIMEOUT,
            body_idle_timeout: DEFAULT_BODY_IDLE_TIMEOUT,
            max_connections: default_max_connections(open_files_limit()),
            upload_session_max_age: DEFAULT_UPLOAD_SESSION_MAX_AGE,
        }
    }
}

impl LimitsConfig {
    /// Resolve against the defaults, refusing values that would disable a protection.
    pub fn resolve(&self) -> Result<Limits, ConfigError> {
        let defaults = Limits::default();
        let duration = |field: &'static str,
                        text: &Option<String>,
                        default: Duration,
                        min: Duration,
                        max: Duration|
         -> Result<Duration, ConfigError> {
            let Some(text) = text else {
                return Ok(default);
            };
            let d = parse_iso_duration(field, text)?;
            if !(min..=max).contains(&d) {
                return Err(ConfigError::Invalid {
                    field,
                    rule: format!(
                        "{text:?} must be between {} and {}",
                        humantime(min),
                        humantime(max)
                    ),
                });
            }
            Ok(d)
        };
        let secs = Duration::from_secs;
        let limits = Limits {
            connection_idle_timeout: duration(
                "limits.connectionIdleTimeout",
                &self.connection_idle_timeout,
                defaults.connection_idle_timeout,
                secs(1),
                secs(3600),
            )?,
            body_idle_timeout: duration(
                "limits.bodyIdleTimeout",
                &self.body_idle_timeout,
                defaults.body_idle_timeout,
                secs(1),
                secs(3600),
            )?,
            max_connections: match self.max_connections {
                None => defaults.max_connections,
                Some(n) => {
                    let fds = open_files_limit();
                    if n < 1 || n as u64 >= fds {
                        return Err(ConfigError::Invalid {
                            field: "limits.maxConnections",
                            rule: format!(
                                "{n} must be at least 1 and below the open-files limit ({fds}), \
                                 which the store and the parent connections share"
                            ),
                        });
                    }
                    n
                }
            },
            upload_session_max_age: duration(
                "limits.uploadSessionMaxAge",
                &self.upload_session_max_age,
                defaults.upload_session_max_age,
                secs(1),
                secs(365 * 24 * 3600),
            )?,
        };
        Ok(limits)
    }
}

fn humantime(d: Duration) -> String {
    match d.as_secs() {
        s if s % 86_400 == 0 => format!("P{}D", s / 86_400),
        s => format!("PT{s}S"),
    }
}

/// The soft open-files limit of this process.
pub fn open_files_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and nothing else.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    if ok {
        limit.rlim_cur
    } else {
        1024
    }
}

/// Raise the soft open-files limit to the hard one, as a service manager would (systemd's
/// `LimitNOFILE`): a root with thousands of children long-polling holds a descriptor for each.
/// Returns the soft limit now in force.
pub fn raise_open_files_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write only the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            libc::setrlimit(libc::RLIMIT_NOFILE, &raised);
        }
    }
    open_files_limit()
}

/// 80 % of the descriptor limit, leaving the rest to blob files, sled and parent connections.
fn default_max_connections(fds: u64) -> usize {
    ((fds.saturating_mul(4) / 5) as usize).clamp(16, MAX_DEFAULT_CONNECTIONS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_bounds() {
        let l = LimitsConfig::default().resolve().unwrap();
        assert_eq!(l.connection_idle_timeout, Duration::from_secs(60));
        assert_eq!(l.body_idle_timeout, Duration::from_secs(30));
        assert_eq!(l.upload_session_max_age, Duration::from_secs(7 * 86_400));
        assert!(l.max_connections >= 16 && (l.max_connections as u64) < open_files_limit());
        assert_eq!(default_max_connections(1024), 819);
        assert_eq!(default_max_connections(1 << 20), MAX_DEFAULT_CONNECTIONS);
        let bad = LimitsConfig {
            body_idle_timeout: Some("PT0S".into()),
            ..Default::default()
        };
        let e = bad.resolve().unwrap_err().to_string();
        assert!(e.contains("limits.bodyIdleTimeout"), "{e}");
        let bad = LimitsConfig {
            max_connections: Some(usize::MAX),
            ..Default::default()
        };
        let e = bad.resolve().unwrap_err().to_string();
        assert!(e.contains("limits.maxConnections"), "{e}");
    }
}
