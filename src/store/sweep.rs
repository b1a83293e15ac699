//! The background sweep that keeps abandoned work from piling up: upload sessions and partial
//! downloads nothing has written to for the configured age (`limits.uploadSessionMaxAge`,
//! default 7 days as distribution) are removed with their files, whether they were abandoned
//! before or after a restart.

use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::Store;
use crate::oci::error::IoContext;
use crate::oci::Result;

/// How often the sweep runs: a quarter of the age, between one second and one hour.
pub fn sweep_interval(max_age: Duration) -> Duration {
    (max_age / 4).clamp(Duration::from_secs(1), Duration::from_secs(3600))
}

impl Store {
    /// Remove partial downloads (see [`Store::partial_path`]) untouched for `max_age`. Returns
    /// how many were removed.
    pub fn expire_partials(&self, max_age: Duration) -> Result<usize> {
        let dir = self.root.join("partial");
        let entries = match std::fs::read_dir(&dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            listed => listed.context(|| format!("listing {dir:?}"))?,
        };
        let now = SystemTime::now();
        let mut expired = 0;
        for entry in entries {
            let entry = entry.context(|| format!("listing {dir:?}"))?;
            let Ok(modified) = entry.metadata().and_then(|m| m.modified()) else {
                continue;
            };
            if now.duration_since(modified).unwrap_or_default() > max_age {
                match std::fs::remove_file(entry.path()) {
                    Ok(()) => expired += 1,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        tracing::warn!(path = %entry.path().display(), error = %e, "cannot remove an expired partial download")
                    }
                }
            }
        }
        Ok(expired)
    }

    /// One sweep of expired upload sessions and partial downloads.
    pub async fn sweep_expired(&self, max_age: Duration) -> Result<(usize, usize)> {
        let uploads = self.expire_uploads(max_age).await?;
        let partials = self.expire_partials(max_age)?;
        if uploads + partials > 0 {
            tracing::info!(
                upload_sessions = uploads,
                partial_downloads = partials,
                max_age_secs = max_age.as_secs(),
                "removed abandoned uploads"
            );
        }
        Ok((uploads, partials))
    }
}

/// Sweep now and then every [`sweep_interval`] for as long as the runtime lives.
pub fn spawn_sweeper(store: Arc<Store>, max_age: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(sweep_interval(max_age));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = store.sweep_expired(max_age).await {
                tracing::warn!(error = %e, "sweeping abandoned uploads failed; will retry");
            }
        }
    })
}
