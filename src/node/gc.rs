//! Running garbage collection for a node: on its `garbageCollection.schedule` (cron, UTC; daily
//! at 03:00 by default, as ACR's), and on demand (the `gc` direct method). One run at a time;
//! a new schedule or grace period applies at once.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::{watch, Mutex};

use crate::config::GarbageCollection;
use crate::oci::{Error, ErrorCode, Result};
use crate::store::gc::GcReport;
use crate::store::Store;

/// Runs garbage collection, one run at a time.
#[derive(Clone)]
pub struct Collector {
    store: Arc<Store>,
    running: Arc<Mutex<()>>,
    /// Upload sessions and partial downloads idle this long expire with each run.
    upload_max_age: Duration,
}

impl Collector {
    pub fn new(store: Arc<Store>, upload_max_age: Duration) -> Collector {
        Collector {
            store,
            running: Arc::new(Mutex::new(())),
            upload_max_age,
        }
    }

    /// One run now (waits for a run in progress to finish first), logged with what it freed.
    pub async fn run(&self, dry_run: bool) -> Result<GcReport> {
        let _one_at_a_time = self.running.lock().await;
        let store = self.store.clone();
        let grace = store.grace();
        let report = tokio::task::spawn_blocking(move || store.collect_garbage(grace, dry_run))
            .await
            .map_err(|e| {
                Error::new(
                    ErrorCode::Unknown,
                    format!("garbage collection task failed: {e}"),
                )
            })??;
        // Publish the change events of removed manifests to waiting children.
        self.store.flush().await?;
        let freed = report.freed_bytes();
        let (uploads, partials) = if dry_run {
            (0, 0)
        } else {
            self.store.sweep_expired(self.upload_max_age).await?
        };
        tracing::info!(
            dry_run,
            manifests = report.manifests.len(),
            blob_links = report.blob_links,
            blobs = report.blobs.len(),
            freed_bytes = freed,
            freed = %crate::store::usage::human_bytes(freed),
            expired_uploads = uploads,
            expired_partial_downloads = partials,
            elapsed_ms = report.elapsed.as_millis() as u64,
            "garbage collection finished"
        );
        Ok(report)
    }

    /// Run on `settings`' schedule until the sender is dropped; a new value applies at once.
    pub fn spawn_schedule(
        &self,
        mut settings: watch::Receiver<GarbageCollection>,
    ) -> tokio::task::JoinHandle<()> {
        let collector = self.clone();
        tokio::spawn(async move {
            loop {
                let current = settings.borrow_and_update().clone();
                collector.store.set_grace_period(current.grace_period);
                let wait = current
                    .schedule
                    .as_ref()
                    .and_then(|cron| cron.find_next_occurrence(&Utc::now(), false).ok())
                    .map(|next| (next - Utc::now()).to_std().unwrap_or_default());
                let due = async {
                    match wait {
                        Some(wait) => tokio::time::sleep(wait.max(Duration::from_secs(1))).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    changed = settings.changed() => {
                        if changed.is_err() {
                            return;
                        }
                    }
                    () = due => {
                        if let Err(e) = collector.run(false).await {
                            tracing::warn!(error = %e, "scheduled garbage collection failed; it runs again at its next time");
                        }
                    }
                }
            }
        })
    }
}
