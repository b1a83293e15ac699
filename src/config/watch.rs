//! Re-reading the configuration file while the node runs, so that `connected-registry token …`
//! (which rewrites the file atomically) takes effect without a restart: a token created works,
//! and one disabled or deleted stops working, within [`POLL_INTERVAL`].
//!
//! The file is polled (a `stat` a second costs nothing and works on every filesystem, bind
//! mounts and volumes included). A change that does not validate is refused whole: the last
//! good configuration stays and the error is logged.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use super::Config;

/// How often the file is checked for changes.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// What identifies one version of the file.
fn fingerprint(path: &std::path::Path) -> Option<(SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len(), meta.ino()))
}

/// Watch `path` (already loaded as `current`) and call `apply` with each new valid version.
pub fn spawn_file_watch(
    path: PathBuf,
    current: Config,
    apply: impl Fn(&Config) + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut seen = fingerprint(&path);
        let mut current = current;
        let mut ticker = tokio::time::interval(POLL_INTERVAL);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let now = fingerprint(&path);
            if now == seen {
                continue;
            }
            seen = now;
            let loaded = {
                let path = path.clone();
                tokio::task::spawn_blocking(move || Config::from_file(&path)).await
            };
            match loaded {
                Ok(Ok(new)) if new != current => {
                    tracing::info!(file = %path.display(), "configuration file changed; applied");
                    apply(&new);
                    current = new;
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(
                    file = %path.display(),
                    error = %e,
                    "configuration file changed but is not valid; keeping the last good configuration"
                ),
                Err(e) => tracing::warn!(error = %e, "reading the configuration file panicked"),
            }
        }
    })
}
