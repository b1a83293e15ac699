//! The node's status: one model, updated by every part and read by every reporter (the
//! `/acr/connected-registry/v1/status` endpoint, the CLI, and later the module twin and metrics).
//!
//! Parts publish through a [`StatusHandle`] (a `tokio::sync::watch` channel), so readers always
//! see a whole, consistent snapshot.

pub mod children;
pub mod table;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// How many `statusDetails` entries are kept (newest first).
pub const MAX_STATUS_DETAILS: usize = 20;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub name: String,
    pub version: String,
    pub mode: String,
    pub activation: Activation,
    pub connection_state: String,
    pub last_activity_time: Option<DateTime<Utc>>,
    pub login_server: LoginServer,
    pub parent: Option<ParentStatus>,
    pub sync: SyncStatus,
    /// A ReadWrite node's outbox toward its parent (absent elsewhere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<UpstreamStatus>,
    pub storage: StorageStatus,
    pub status_details: Vec<StatusDetail>,
    /// Which configuration runs, and why the last one offered was refused.
    #[serde(default)]
    pub config: ConfigStatus,
}

impl Status {
    /// Drop the `kind` entries of `statusDetails` recorded before `before`. A completed sync
    /// pass refreshes what the node reports of its sync (as ACR's status is refreshed on every
    /// sync): a failure an earlier pass met and this one did not is no longer listed. Entries of
    /// other kinds (configuration, activation, upstream notices) stay as the history they are.
    pub fn clear_details(&mut self, kind: &str, before: DateTime<Utc>) {
        self.status_details
            .retain(|d| d.kind != kind || d.timestamp >= before);
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConfigStatus {
    /// Counts the configurations applied since the node started (1 = the one it started with).
    pub version: u64,
    /// Where it came from: `default`, `file`, `environment` or `twin`.
    pub source: String,
    /// Why the last configuration offered was refused; `None` once a valid one is applied.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Activation {
    pub status: String,
    pub since: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LoginServer {
    pub host: String,
    pub tls: TlsStatus,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TlsStatus {
    pub status: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ParentStatus {
    pub endpoint: String,
    pub last_sync_time: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SyncStatus {
    /// InitialSync | Schedule | ManualResync | RecoveryService | ConfigUpdate
    pub trigger: Option<String>,
    /// Pending | Syncing | Succeeded | Failed | TimedOut | NotActivated
    pub state: Option<String>,
    pub last_sync_start_time: Option<DateTime<Utc>>,
    pub last_sync_end_time: Option<DateTime<Utc>>,
    pub last_successful_sync_end_time: Option<DateTime<Utc>>,
    pub next_window_start: Option<DateTime<Utc>>,
    pub progress: Progress,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    pub repositories: Count,
    pub manifests: Count,
    pub blobs: Count,
    pub bytes: Count,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Count {
    pub done: u64,
    pub total: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamStatus {
    /// Local pushes and deletes not yet replayed at the parent.
    pub pending: u64,
    pub oldest_pending_since: Option<DateTime<Utc>>,
    pub last_push_time: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StorageStatus {
    pub used_bytes: u64,
    pub available_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StatusDetail {
    #[serde(rename = "type")]
    pub kind: String,
    pub code: String,
    pub description: String,
    pub timestamp: DateTime<Utc>,
    pub correlation_id: String,
}

/// Shared, cheaply cloned access to the status.
#[derive(Clone)]
pub struct StatusHandle {
    tx: watch::Sender<Status>,
}

impl StatusHandle {
    pub fn new(initial: Status) -> StatusHandle {
        StatusHandle {
            tx: watch::Sender::new(initial),
        }
    }

    pub fn snapshot(&self) -> Status {
        self.tx.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Status> {
        self.tx.subscribe()
    }

    pub fn update(&self, f: impl FnOnce(&mut Status)) {
        self.tx.send_modify(f);
    }

    /// Record a failure (or notice) in `statusDetails`, newest first, bounded.
    pub fn add_detail(&self, kind: &str, code: &str, description: impl Into<String>) {
        let detail = StatusDetail {
            kind: kind.to_owned(),
            code: code.to_owned(),
            description: description.into(),
            timestamp: Utc::now(),
            correlation_id: uuid::Uuid::new_v4().to_string(),
        };
        self.update(|s| {
            s.status_details.insert(0, detail);
            s.status_details.truncate(MAX_STATUS_DETAILS);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_completed_pass_clears_only_the_earlier_details_of_its_kind() {
        let handle = StatusHandle::new(Status::default());
        handle.add_detail("Sync", "TransferFailed", "an earlier pass");
        handle.add_detail("Config", "ConfigError", "a refused configuration");
        let started = Utc::now();
        handle.add_detail("Sync", "RepositoryMissing", "this pass");
        handle.update(|s| s.clear_details("Sync", started));
        let codes: Vec<String> = handle
            .snapshot()
            .status_details
            .into_iter()
            .map(|d| d.code)
            .collect();
        assert_eq!(codes, ["RepositoryMissing", "ConfigError"]);
    }
}
