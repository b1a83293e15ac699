//! Storage used by blob files (walked at most once a minute, as the status endpoint does) and
//! free space of the data directory's filesystem (one `statvfs`), for the storage gauges.
//!
//! This is the measurement of `api::acr::StorageUsage`, whose `measure` is private to the status
//! endpoint; once that is shared, this copy can go.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a measured usage is reused before the blob directory is walked again.
const USAGE_MAX_AGE: Duration = Duration::from_secs(60);

/// Blob bytes and free bytes of one data directory.
#[derive(Debug)]
pub struct StorageUsage {
    data_dir: PathBuf,
    used: tokio::sync::Mutex<Option<(Instant, u64)>>,
}

impl StorageUsage {
    pub fn new(data_dir: &Path) -> StorageUsage {
        StorageUsage {
            data_dir: data_dir.to_owned(),
            used: tokio::sync::Mutex::new(None),
        }
    }

    /// `(used, free)` bytes; a part that cannot be measured is `None` (and logged at debug:
    /// the scrape shows it as a missing gauge).
    pub async fn measure(&self) -> (Option<u64>, Option<u64>) {
        let free = available_bytes(&self.data_dir)
            .inspect_err(|e| tracing::debug!(error = %e, "statvfs of the data directory failed"))
            .ok();
        let mut cached = self.used.lock().await;
        if let Some((at, used)) = *cached {
            if at.elapsed() < USAGE_MAX_AGE {
                return (Some(used), free);
            }
        }
        let blobs = self.data_dir.join("blobs");
        match tokio::task::spawn_blocking(move || dir_size(&blobs)).await {
            Ok(Ok(used)) => {
                *cached = Some((Instant::now(), used));
                (Some(used), free)
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "measuring blob storage failed");
                (cached.map(|(_, u)| u), free)
            }
            Err(e) => {
                tracing::warn!(error = %e, "measuring blob storage panicked");
                (cached.map(|(_, u)| u), free)
            }
        }
    }
}

/// Bytes available to unprivileged users on the filesystem holding `dir`.
fn available_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("data directory path contains NUL"))?;
    // SAFETY: `path` is a valid NUL-terminated string and `stat` a properly sized out-parameter.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(path.as_ptr(), &mut stat) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
    Ok(stat.f_bavail as u64 * stat.f_frsize as u64)
}

/// Total size of the files under `dir` (0 if it does not exist yet).
fn dir_size(dir: &Path) -> std::io::Result<u64> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut total = 0;
    for entry in entries {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            total += dir_size(&entry.path())?;
        } else if kind.is_file() {
            total += entry.metadata()?.len();
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn blob_files_and_free_space_are_measured() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("blobs/sha256/ab")).unwrap();
        std::fs::write(dir.path().join("blobs/sha256/ab/x"), [0u8; 10]).unwrap();
        std::fs::write(dir.path().join("outside"), [0u8; 99]).unwrap();
        let (used, free) = StorageUsage::new(dir.path()).measure().await;
        assert_eq!(used, Some(10));
        assert!(free.unwrap() > 0);
    }
}
