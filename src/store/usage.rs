//! How much disk the blobs take and how much the data volume has left: the numbers the storage
//! limits, the status and `/metrics` use.
//!
//! Blob bytes are counted once by a walk of `blobs/` when the store opens (in the background,
//! so a large store still starts at once) and then kept up to date as files are committed and
//! deleted. Each garbage collection walks every file anyway and sets the exact figure again.

use std::fs;
use std::io;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::Store;

/// A byte count for people, in binary units (`712.0 MiB`), as everywhere in this project.
pub fn human_bytes(bytes: u64) -> String {
    bytesize::ByteSize(bytes).to_string_as(true)
}

impl Store {
    /// Count the blob files' bytes in the background and add them to the running total.
    pub(super) fn spawn_usage_walk(self: &Arc<Self>) {
        let store = Arc::downgrade(self);
        let blobs = self.root.join("blobs");
        let walk = move || {
            let total = dir_size(&blobs);
            if let Some(store) = store.upgrade() {
                match total {
                    Ok(total) => {
                        store.used.fetch_add(total, Ordering::Relaxed);
                    }
                    Err(e) => tracing::warn!(error = %e, "measuring blob storage failed"),
                }
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn_blocking(walk);
            }
            Err(_) => walk(),
        }
    }

    /// A blob file of `bytes` was committed.
    pub(super) fn account(&self, bytes: u64) {
        self.used.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Bytes available to unprivileged users on the data volume.
    pub fn available_bytes(&self) -> io::Result<u64> {
        available_bytes(&self.root)
    }
}

/// Bytes available to unprivileged users on the filesystem holding `dir`.
pub fn available_bytes(dir: &Path) -> io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::other("data directory path contains NUL"))?;
    // SAFETY: `path` is a valid NUL-terminated string and `stat` a properly sized out-parameter.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(path.as_ptr(), &mut stat) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
    Ok(stat.f_bavail as u64 * stat.f_frsize as u64)
}

/// Total size of the files under `dir` (0 if it does not exist yet).
pub fn dir_size(dir: &Path) -> io::Result<u64> {
    let entries = match fs::read_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        listed => listed?,
    };
    let mut total = 0;
    for entry in entries {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() {
            dir_size(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}
