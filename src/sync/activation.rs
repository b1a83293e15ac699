//! A child's activation at its parent, and the status it reports there.
//!
//! Before its first sync a named child activates (`POST …/registries/{name}/activate`) with an
//! instance id kept in its data directory, so a restart of the same instance is welcome while a
//! second instance of the name is refused (`ALREADY_ACTIVATED`) — as is a ReadWrite child under a
//! ReadOnly parent (`MODE_INCOMPATIBLE`). A refused child keeps serving what it has, reports
//! `activation.status: Inactive`, sync state `NotActivated` and a `statusDetails` entry, and
//! tries again on a slow backoff. A plain OCI parent has no activation: the child syncs at once.
//!
//! Once active it pushes its status every [`STATUS_INTERVAL`], and on a clean shutdown it
//! deactivates, so a replacement instance can start; after a crash (kill -9) the name stays
//! held until `connected-registry deactivate NAME` on the parent.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::client::{GatewayAnswer, SyncError};
use super::engine::SyncEngine;
use crate::store::Store;

/// How often an active child reports its status to the parent while nothing changes.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(30);
/// Shortest time between two reports when the status keeps changing (progress during a sync).
pub const MIN_REPORT_GAP: Duration = Duration::from_secs(2);
/// First wait before activating again after a refusal or an unreachable parent; doubled per
/// attempt up to [`RETRY_MAX`].
pub const RETRY_FIRST: Duration = Duration::from_secs(10);
pub const RETRY_MAX: Duration = Duration::from_secs(300);

const INSTANCE_KEY: &str = "instance_id";

/// How activation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Activated {
    /// Active at a connected-registry parent.
    Yes,
    /// The parent has no activation (a plain OCI registry).
    NotApplicable,
    /// The node is stopping.
    Stopped,
}

/// This installation's instance id (created once, kept in the data directory).
pub async fn instance_id(store: &Store) -> Result<String, SyncError> {
    if let Some(id) = store.sync_state(INSTANCE_KEY)? {
        if let Ok(id) = String::from_utf8(id) {
            return Ok(id);
        }
    }
    let id = uuid::Uuid::new_v4().to_string();
    store.set_sync_state(INSTANCE_KEY, id.as_bytes()).await?;
    Ok(id)
}

/// Activate `name` at the parent, retrying until it is accepted, the parent turns out to have
/// no activation, or `shutdown` turns true.
pub async fn activate(
    engine: &SyncEngine,
    name: &str,
    mode: &str,
    shutdown: &mut watch::Receiver<bool>,
) -> Activated {
    let mut wait = RETRY_FIRST;
    loop {
        let attempt = match instance_id(engine.store()).await {
            Ok(id) => engine.client().activate(name, &id, mode).await,
            Err(e) => Err(e),
        };
        let status = engine.status();
        match attempt {
            Ok(GatewayAnswer::Accepted) => {
                tracing::info!(name, "activated at the parent");
                status.update(|s| {
                    s.activation.status = "Active".into();
                    s.activation.since = Some(chrono::Utc::now());
                    if s.sync.state.as_deref() == Some("NotActivated") {
                        s.sync.state = Some("Pending".into());
                    }
                });
                return Activated::Yes;
            }
            Ok(GatewayAnswer::NotSupported) => {
                tracing::info!("the parent has no activation endpoint (a plain OCI registry)");
                status.update(|s| {
                    s.activation.status = "Active".into();
                    s.activation.since = Some(chrono::Utc::now());
                });
                return Activated::NotApplicable;
            }
            Ok(GatewayAnswer::Refused { code, message }) => {
                tracing::warn!(name, %code, %message, retry_in_s = wait.as_secs(), "activation refused");
                status.update(|s| {
                    s.activation.status = "Inactive".into();
                    s.sync.state = Some("NotActivated".into());
                });
                status.add_detail("Activation", &code, message);
            }
            Err(e) => {
                tracing::warn!(name, error = %e, retry_in_s = wait.as_secs(), "activation failed");
                status.update(|s| {
                    s.activation.status = "Inactive".into();
                    s.sync.state = Some("NotActivated".into());
                    s.connection_state = "Offline".into();
                });
                status.add_detail("Activation", e.code(), e.to_string());
            }
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = shutdown.wait_for(|stop| *stop) => return Activated::Stopped,
        }
        wait = (wait * 2).min(RETRY_MAX);
    }
}

/// Push this node's status to the parent when it changes (at most every [`MIN_REPORT_GAP`])
/// and every [`STATUS_INTERVAL`] regardless, until `shutdown`; then
/// deactivate (a clean shutdown frees the name for another instance).
pub fn spawn_reporter(
    engine: Arc<SyncEngine>,
    name: String,
    schedule: super::schedule::Schedule,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut changes = engine.status().subscribe();
        loop {
            // Reports wait for the sync window like everything else sent to the parent.
            if !super::run::wait_for_window(&engine, &schedule, &mut shutdown, None).await {
                break;
            }
            let reported = tokio::time::Instant::now();
            let snapshot = changes.borrow_and_update().clone();
            match engine.client().report_status(&name, &snapshot).await {
                Ok(GatewayAnswer::Accepted | GatewayAnswer::NotSupported) => {}
                Ok(GatewayAnswer::Refused { code, message }) => {
                    tracing::warn!(%code, %message, "the parent refused this node's status")
                }
                Err(e) => tracing::debug!(error = %e, "reporting status to the parent failed"),
            }
            // Again when the status changes (at most every MIN_REPORT_GAP) or every
            // STATUS_INTERVAL while nothing does.
            let changed = tokio::select! {
                () = tokio::time::sleep(STATUS_INTERVAL) => false,
                _ = changes.changed() => true,
                _ = shutdown.changed() => false,
            };
            if changed {
                tokio::time::sleep_until(reported + MIN_REPORT_GAP).await;
            }
            if *shutdown.borrow() || shutdown.has_changed().is_err() {
                break;
            }
        }
        if let Ok(id) = instance_id(engine.store()).await {
            let answer = tokio::time::timeout(
                Duration::from_secs(5),
                engine.client().deactivate(&name, &id),
            )
            .await;
            tracing::info!(?answer, "deactivated at the parent on shutdown");
        }
    })
}
