//! The status as a human-readable table, for `connected-registry status` (in the spirit of
//! `az acr connected-registry show -o table`). Kept apart from the CLI so it can be tested.

use std::fmt::Write;

use chrono::{DateTime, Utc};

use super::{Count, Status};

/// How many `statusDetails` entries the table shows (newest first).
pub const DETAILS_SHOWN: usize = 5;

/// Column where values start (the longest label plus two spaces).
const LABEL_WIDTH: usize = "LAST SUCCESSFUL SYNC".len() + 2;

/// Render `status` as aligned `LABEL  value` lines, then the newest status details.
pub fn render(status: &Status) -> String {
    let activation = match status.activation.since {
        Some(since) => format!(
            "{} (since {})",
            or_dash(&status.activation.status),
            time(since)
        ),
        None => or_dash(&status.activation.status),
    };
    let tls = &status.login_server.tls.status;
    let login_server = if tls.is_empty() {
        or_dash(&status.login_server.host)
    } else {
        format!("{} (TLS {tls})", or_dash(&status.login_server.host))
    };
    let parent = status
        .parent
        .as_ref()
        .map_or_else(|| "- (root)".to_owned(), |p| or_dash(&p.endpoint));
    let sync = &status.sync;
    let last_sync = sync
        .last_sync_end_time
        .or(status.parent.as_ref().and_then(|p| p.last_sync_time));
    let mut rows: Vec<(&str, String)> = vec![
        ("NAME", or_dash(&status.name)),
        ("VERSION", or_dash(&status.version)),
        ("MODE", or_dash(&status.mode)),
        ("CONNECTION STATE", or_dash(&status.connection_state)),
        ("ACTIVATION", activation),
        ("LOGIN SERVER", login_server),
        ("PARENT", parent),
        (
            "LAST SYNC",
            last_sync.map_or_else(|| "never".to_owned(), time),
        ),
    ];
    if let Some(ok) = sync.last_successful_sync_end_time {
        rows.push(("LAST SUCCESSFUL SYNC", time(ok)));
    }
    let state = sync.state.as_deref().unwrap_or("-");
    rows.push((
        "SYNC STATE",
        match &sync.trigger {
            Some(trigger) => format!("{state} (trigger: {trigger})"),
            None => state.to_owned(),
        },
    ));
    if let Some(next) = sync.next_window_start {
        rows.push(("NEXT WINDOW", time(next)));
    }
    let p = &sync.progress;
    rows.push((
        "PROGRESS",
        format!(
            "repositories {}, manifests {}, blobs {}, bytes {}/{}",
            count(p.repositories),
            count(p.manifests),
            count(p.blobs),
            human_bytes(p.bytes.done),
            human_bytes(p.bytes.total)
        ),
    ));
    rows.push((
        "STORAGE",
        format!(
            "{} used, {} available",
            human_bytes(status.storage.used_bytes),
            human_bytes(status.storage.available_bytes)
        ),
    ));
    if let Some(at) = status.last_activity_time {
        rows.push(("LAST ACTIVITY", time(at)));
    }

    let width = LABEL_WIDTH;
    let mut out = String::new();
    for (label, value) in &rows {
        let _ = writeln!(out, "{label:<width$}{value}");
    }
    if status.status_details.is_empty() {
        let _ = writeln!(out, "{:<width$}none", "STATUS DETAILS");
    } else {
        let _ = writeln!(
            out,
            "STATUS DETAILS (newest {} of {})",
            status.status_details.len().min(DETAILS_SHOWN),
            status.status_details.len()
        );
        for d in status.status_details.iter().take(DETAILS_SHOWN) {
            let _ = writeln!(
                out,
                "  {}  {:<8} {:<20} {}",
                time(d.timestamp),
                d.kind,
                d.code,
                d.description
            );
        }
    }
    out
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_owned()
    } else {
        s.to_owned()
    }
}

fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn count(c: Count) -> String {
    format!("{}/{}", c.done, c.total)
}

/// Bytes in binary units with one decimal: `512 B`, `1.5 KiB`, `20.0 GiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{Activation, LoginServer, ParentStatus, StatusDetail, TlsStatus};

    #[test]
    fn bytes_are_human() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(20 * 1024 * 1024 * 1024), "20.0 GiB");
        assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn renders_every_part() {
        let t = "2024-05-01T10:00:00Z".parse::<DateTime<Utc>>().unwrap();
        let mut status = Status {
            name: "factorya".into(),
            version: "0.1.0".into(),
            mode: "ReadOnly".into(),
            activation: Activation {
                status: "Active".into(),
                since: Some(t),
            },
            connection_state: "Syncing".into(),
            login_server: LoginServer {
                host: "registry.factory.local:8080".into(),
                tls: TlsStatus {
                    status: "Enabled".into(),
                },
            },
            parent: Some(ParentStatus {
                endpoint: "https://parent.example".into(),
                last_sync_time: Some(t),
            }),
            ..Status::default()
        };
        status.sync.trigger = Some("Schedule".into());
        status.sync.state = Some("Syncing".into());
        status.sync.progress.repositories = Count { done: 1, total: 2 };
        status.sync.progress.manifests = Count { done: 3, total: 4 };
        status.sync.progress.blobs = Count { done: 5, total: 6 };
        status.sync.progress.bytes = Count {
            done: 3 * 1024 * 1024,
            total: 10 * 1024 * 1024,
        };
        status.storage.used_bytes = 2048;
        status.storage.available_bytes = 5 * 1024 * 1024 * 1024;
        for i in 0..7 {
            status.status_details.push(StatusDetail {
                kind: "Error".into(),
                code: format!("ParentUnreachable{i}"),
                description: "connection refused".into(),
                timestamp: t,
                correlation_id: "x".into(),
            });
        }
        let out = render(&status);
        for want in [
            "NAME",
            "factorya",
            "MODE                  ReadOnly",
            "CONNECTION STATE      Syncing",
            "Active (since 2024-05-01 10:00:00 UTC)",
            "registry.factory.local:8080 (TLS Enabled)",
            "https://parent.example",
            "LAST SYNC             2024-05-01 10:00:00 UTC",
            "Syncing (trigger: Schedule)",
            "repositories 1/2, manifests 3/4, blobs 5/6, bytes 3.0 MiB/10.0 MiB",
            "2.0 KiB used, 5.0 GiB available",
            "STATUS DETAILS (newest 5 of 7)",
            "ParentUnreachable0",
            "ParentUnreachable4",
        ] {
            assert!(out.contains(want), "missing {want:?} in:\n{out}");
        }
        assert!(!out.contains("ParentUnreachable5"), "{out}");

        let root = render(&Status::default());
        assert!(root.contains("- (root)"), "{root}");
        assert!(root.contains("never"), "{root}");
        assert!(root.contains("STATUS DETAILS        none"), "{root}");
    }
}
