//! The sync loop of a running node: wait for a window, reconcile, then follow the parent's change
//! feed (or poll a plain OCI parent) until the window closes, the parent goes away (retry with
//! backoff) or the node stops.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::watch;

use super::client::SyncError;
use super::engine::{SyncEngine, Trigger};
use super::schedule::{Schedule, WindowState};

/// How long one long-poll of the change feed waits for an event.
pub const LONG_POLL_SECONDS: u64 = 30;
/// Against a plain OCI parent (no change feed): time between reconcile passes.
pub const POLL_INTERVAL: Duration = Duration::from_secs(5);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const CURSOR_KEY: &str = "feed_cursor";

/// Run until `shutdown` turns true.
pub async fn run(engine: Arc<SyncEngine>, schedule: Schedule, mut shutdown: watch::Receiver<bool>) {
    let mut loop_state = LoopState {
        first_pass_done: false,
        backoff: Duration::from_secs(1),
    };
    while !*shutdown.borrow() {
        match schedule.state_at(Utc::now()) {
            WindowState::Closed { opens_at } => {
                engine.status().update(|s| {
                    s.sync.next_window_start = Some(opens_at);
                    s.sync.state.get_or_insert_with(|| "Pending".into());
                });
                let wait = (opens_at - Utc::now()).to_std().unwrap_or_default();
                tracing::info!(%opens_at, "sync window closed; no requests to the parent until it opens");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => {}
                }
            }
            WindowState::Open { closes_at } => {
                engine.status().update(|s| s.sync.next_window_start = None);
                let session = session(&engine, &mut loop_state, closes_at);
                let until_close = closes_at.map(|c| (c - Utc::now()).to_std().unwrap_or_default());
                tokio::select! {
                    _ = shutdown.changed() => {}
                    timed_out = async {
                        match until_close {
                            Some(d) => tokio::time::timeout(d, session).await.is_err(),
                            None => { session.await; false }
                        }
                    } => {
                        if timed_out {
                            tracing::info!("sync window closed");
                            engine.status().update(|s| {
                                if s.sync.state.as_deref() == Some("Syncing") {
                                    s.sync.state = Some("TimedOut".into());
                                }
                                s.connection_state = "Online".into();
                            });
                        }
                    }
                }
            }
        }
    }
}

struct LoopState {
    first_pass_done: bool,
    backoff: Duration,
}

/// Sync inside one open window; returns only when the window has closed (or on shutdown, by
/// being dropped).
async fn session(
    engine: &SyncEngine,
    state: &mut LoopState,
    closes_at: Option<chrono::DateTime<Utc>>,
) {
    loop {
        let result = follow(engine, state, closes_at).await;
        if let Err(e) = result {
            engine.record_failure(&e);
            let jitter = Duration::from_millis(rand::random::<u64>() % 500);
            tokio::time::sleep(state.backoff + jitter).await;
            state.backoff = (state.backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// Reconcile, then keep up with the parent until an error.
async fn follow(
    engine: &SyncEngine,
    state: &mut LoopState,
    closes_at: Option<chrono::DateTime<Utc>>,
) -> Result<(), SyncError> {
    let mut cursor = load_cursor(engine)?;
    let probe = engine.client().changes(cursor, 0).await;
    let has_feed = match &probe {
        Ok(_) => true,
        Err(SyncError::MessagesExpired { .. }) => true,
        Err(SyncError::Protocol(_)) => false,
        Err(e) => return Err(clone_error(e)),
    };
    if !has_feed {
        // A plain OCI parent: reconcile every POLL_INTERVAL (tags/list + HEAD, downloads only
        // what changed).
        loop {
            let trigger = if state.first_pass_done {
                Trigger::Schedule
            } else {
                Trigger::InitialSync
            };
            engine.full_pass(trigger).await?;
            state.first_pass_done = true;
            state.backoff = Duration::from_secs(1);
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
    if let Err(SyncError::MessagesExpired { latest, .. }) = probe {
        engine.full_pass(Trigger::RecoveryService).await?;
        cursor = latest;
        save_cursor(engine, cursor).await?;
    } else if !state.first_pass_done {
        // Events since `cursor` are replayed after the pass; applying one twice is harmless.
        let trigger = if cursor == 0 {
            Trigger::InitialSync
        } else {
            Trigger::Schedule
        };
        engine.full_pass(trigger).await?;
    }
    state.first_pass_done = true;
    state.backoff = Duration::from_secs(1);
    loop {
        let wait = match closes_at {
            Some(c) => ((c - Utc::now()).num_seconds().max(0) as u64).min(LONG_POLL_SECONDS),
            None => LONG_POLL_SECONDS,
        };
        let page = match engine.client().changes(cursor, wait).await {
            Ok(page) => page,
            Err(SyncError::MessagesExpired { latest, .. }) => {
                engine.full_pass(Trigger::RecoveryService).await?;
                cursor = latest;
                save_cursor(engine, cursor).await?;
                continue;
            }
            Err(e) => return Err(e),
        };
        engine.status().update(|s| {
            s.last_activity_time = Some(Utc::now());
            if s.connection_state != "Syncing" {
                s.connection_state = "Online".into();
            }
        });
        for event in &page.events {
            engine.apply_event(event).await?;
            cursor = event.seq;
        }
        if page.next > cursor {
            cursor = page.next;
        }
        if !page.events.is_empty() {
            save_cursor(engine, cursor).await?;
            engine.status().update(|s| {
                if let Some(p) = s.parent.as_mut() {
                    p.last_sync_time = Some(Utc::now());
                }
            });
        }
    }
}

fn clone_error(e: &SyncError) -> SyncError {
    match e {
        SyncError::ParentUnreachable(m) => SyncError::ParentUnreachable(m.clone()),
        SyncError::AuthenticationFailed(m) => SyncError::AuthenticationFailed(m.clone()),
        other => SyncError::Protocol(other.to_string()),
    }
}

fn load_cursor(engine: &SyncEngine) -> Result<u64, SyncError> {
    Ok(engine
        .store()
        .sync_state(CURSOR_KEY)?
        .and_then(|v| v.try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0))
}

async fn save_cursor(engine: &SyncEngine, cursor: u64) -> Result<(), SyncError> {
    engine
        .store()
        .set_sync_state(CURSOR_KEY, &cursor.to_be_bytes())
        .await?;
    Ok(())
}
