//! Blob upload sessions: `POST` opens one, `PATCH` appends, `PUT` verifies and commits.
//!
//! The bytes of a session live in `uploads/<id>` and its record (which repository, when) in sled,
//! so a session survives a restart: its offset is the file's length. The running hash is kept in
//! memory while the server lives; after a restart the file is hashed again at commit.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use sled::Transactional;

use super::blobs::{self, append_stream};
use super::metadata::key2;
use super::{verify_digest, Store};
use crate::oci::error::IoContext;
use crate::oci::{Algorithm, Digest, Error, ErrorCode, Hasher, RepositoryName, Result};

pub type UploadId = uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadStatus {
    pub id: UploadId,
    /// Bytes received so far.
    pub offset: u64,
}

#[derive(Serialize, Deserialize)]
struct UploadRecord {
    repository: String,
    started: chrono::DateTime<chrono::Utc>,
}

/// In-memory state of sessions touched since start-up; the lock serialises requests on one
/// session.
pub(super) struct Sessions {
    dir: PathBuf,
    live: Mutex<HashMap<UploadId, Arc<tokio::sync::Mutex<RunningHash>>>>,
}

/// The hash of the first `offset` bytes of the session, when known.
#[derive(Default)]
struct RunningHash {
    state: Option<(u64, Hasher)>,
}

impl Sessions {
    pub fn new(root: &Path) -> Result<Sessions> {
        let dir = root.join("uploads");
        fs::create_dir_all(&dir).context(|| format!("creating {dir:?}"))?;
        Ok(Sessions {
            dir,
            live: Mutex::new(HashMap::new()),
        })
    }

    fn path(&self, id: &UploadId) -> PathBuf {
        self.dir.join(id.to_string())
    }

    fn lock_for(&self, id: &UploadId) -> Arc<tokio::sync::Mutex<RunningHash>> {
        self.live
            .lock()
            .expect("upload map lock")
            .entry(*id)
            .or_default()
            .clone()
    }

    fn forget(&self, id: &UploadId) {
        self.live.lock().expect("upload map lock").remove(id);
    }
}

impl Store {
    pub async fn start_upload(&self, repo: &RepositoryName) -> Result<UploadStatus> {
        let id = uuid::Uuid::new_v4();
        let path = self.uploads.path(&id);
        fs::File::create(&path).context(|| format!("creating {path:?}"))?;
        let record = UploadRecord {
            repository: repo.to_string(),
            started: chrono::Utc::now(),
        };
        self.trees.uploads.insert(
            id.to_string(),
            serde_json::to_vec(&record).expect("upload record serialises"),
        )?;
        self.flush().await?;
        self.uploads.lock_for(&id).lock().await.state = Some((0, Algorithm::Sha256.hasher()));
        Ok(UploadStatus { id, offset: 0 })
    }

    fn check_upload(&self, repo: &RepositoryName, id: &UploadId) -> Result<PathBuf> {
        let record = self
            .trees
            .uploads
            .get(id.to_string())?
            .ok_or_else(|| upload_unknown(repo, id))?;
        let record: UploadRecord =
            serde_json::from_slice(&record).map_err(|_| upload_unknown(repo, id))?;
        if record.repository != repo.as_str() {
            return Err(upload_unknown(repo, id));
        }
        Ok(self.uploads.path(id))
    }

    /// Take the session's lock, then check that the session still exists: a request that waited
    /// behind one that finished, cancelled or expired the session finds it gone (404) instead of
    /// touching a removed file.
    async fn lock_upload(
        &self,
        repo: &RepositoryName,
        id: &UploadId,
    ) -> Result<(PathBuf, tokio::sync::OwnedMutexGuard<RunningHash>)> {
        // Checked before the lock too, so requests for unknown sessions create no lock entry.
        self.check_upload(repo, id)?;
        let running = self.uploads.lock_for(id).lock_owned().await;
        match self.check_upload(repo, id) {
            Ok(path) => Ok((path, running)),
            Err(e) => {
                drop(running);
                // The session ended while we waited; whoever ended it may have dropped its
                // entry already, and ours must not outlive it.
                self.uploads.forget(id);
                Err(e)
            }
        }
    }

    pub fn upload_status(&self, repo: &RepositoryName, id: &UploadId) -> Result<UploadStatus> {
        let path = self.check_upload(repo, id)?;
        let offset = session_len(&path, repo, id)?;
        Ok(UploadStatus { id: *id, offset })
    }

    /// Append `body` to the session. With `start` (from `Content-Range`), the chunk must begin
    /// exactly where the session ends, else `RangeInvalid`.
    pub async fn append_upload<S>(
        &self,
        repo: &RepositoryName,
        id: &UploadId,
        start: Option<u64>,
        body: S,
    ) -> Result<UploadStatus>
    where
        S: Stream<Item = io::Result<Bytes>> + Unpin,
    {
        let (path, mut running) = self.lock_upload(repo, id).await?;
        let offset = self
            .append_locked(repo, id, &path, &mut running, start, body)
            .await?;
        Ok(UploadStatus { id: *id, offset })
    }

    async fn append_locked<S>(
        &self,
        repo: &RepositoryName,
        id: &UploadId,
        path: &Path,
        running: &mut RunningHash,
        start: Option<u64>,
        body: S,
    ) -> Result<u64>
    where
        S: Stream<Item = io::Result<Bytes>> + Unpin,
    {
        let offset = session_len(path, repo, id)?;
        if let Some(start) = start {
            if start != offset {
                return Err(Error::new(
                    ErrorCode::RangeInvalid,
                    format!("chunk starts at byte {start} but the upload has {offset} bytes; send the chunk that starts at {offset}"),
                ));
            }
        }
        let hasher = match running.state.take() {
            Some((hashed, h)) if hashed == offset => Some(h),
            _ => None,
        };
        let file = match OpenOptions::new().append(true).open(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(upload_unknown(repo, id)),
            opened => opened.context(|| format!("opening {path:?}"))?,
        };
        let appended = match append_stream(file, hasher, body, offset).await {
            Ok(appended) => appended,
            Err(e) => {
                if e.code() == ErrorCode::InsufficientStorage {
                    // The disk is full: give this request's bytes back; the session stays as
                    // it was before it, for the client to resume once there is room.
                    if let Ok(file) = OpenOptions::new().write(true).open(path) {
                        let _ = file.set_len(offset);
                    }
                }
                return Err(e);
            }
        };
        let new_offset = offset + appended.written;
        running.state = appended.hasher.map(|h| (new_offset, h));
        if let Some(e) = appended.body_error {
            return Err(blobs::body_error(e));
        }
        Ok(new_offset)
    }

    /// Append the final `body` (may be empty), verify the whole upload against `digest` and make
    /// it a blob of `repo`. A mismatch discards the session.
    pub async fn finish_upload<S>(
        &self,
        repo: &RepositoryName,
        id: &UploadId,
        digest: &Digest,
        start: Option<u64>,
        body: S,
    ) -> Result<u64>
    where
        S: Stream<Item = io::Result<Bytes>> + Unpin,
    {
        let (path, mut running) = self.lock_upload(repo, id).await?;
        let size = self
            .append_locked(repo, id, &path, &mut running, start, body)
            .await?;
        let actual = match running.state.take() {
            Some((hashed, h)) if hashed == size && digest.algorithm() == Algorithm::Sha256 => {
                h.finish()
            }
            _ => {
                let path = path.clone();
                let algorithm = digest.algorithm();
                tokio::task::spawn_blocking(move || blobs::hash_file(&path, algorithm.hasher()))
                    .await
                    .map_err(|e| {
                        Error::new(ErrorCode::Unknown, format!("hash task failed: {e}"))
                    })??
            }
        };
        if let Err(e) = verify_digest(digest, &actual) {
            self.remove_upload(id, &path).await?;
            drop(running);
            self.uploads.forget(id);
            return Err(e);
        }
        // Kept whole when it does not fit: the client may finish it once there is room.
        let _room = self.make_room(size).await?;
        let files = self.files.clone();
        let (src, d) = (path.clone(), digest.clone());
        let t = &self.trees;
        let link = key2(repo.as_str(), &digest.to_string());
        {
            let _claim = self.claims.read().await;
            let placed = tokio::task::spawn_blocking(move || files.commit(&src, &d))
                .await
                .map_err(|e| {
                    Error::new(ErrorCode::Unknown, format!("commit task failed: {e}"))
                })??;
            if placed {
                self.account(size);
            }
            let _repo_lock = self.locks.lock(repo);
            (&t.uploads, &t.blob_links, &t.repos).transaction(|(uploads, links, repos)| {
                uploads.remove(id.to_string().as_bytes())?;
                links.insert(link.as_slice(), &size.to_be_bytes())?;
                repos.insert(repo.as_str().as_bytes(), &[])?;
                Ok::<_, sled::transaction::ConflictableTransactionError<Error>>(())
            })?;
        }
        self.flush().await?;
        drop(running);
        self.uploads.forget(id);
        Ok(size)
    }

    pub async fn cancel_upload(&self, repo: &RepositoryName, id: &UploadId) -> Result<()> {
        let (path, running) = self.lock_upload(repo, id).await?;
        self.remove_upload(id, &path).await?;
        drop(running);
        self.uploads.forget(id);
        Ok(())
    }

    async fn remove_upload(&self, id: &UploadId, path: &Path) -> Result<()> {
        self.trees.uploads.remove(id.to_string())?;
        self.flush().await?;
        match fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(e).context(|| format!("removing {path:?}"))
            }
            _ => Ok(()),
        }
    }

    /// Remove upload files without a record and records without a file (a crash between the two
    /// steps of starting or finishing a session).
    pub(super) fn reconcile_uploads(&self) -> Result<(usize, usize)> {
        let mut stale_files = 0;
        for entry in fs::read_dir(&self.uploads.dir).context(|| "listing uploads".to_owned())? {
            let entry = entry.context(|| "listing uploads".to_owned())?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !self.trees.uploads.contains_key(name.as_bytes())? {
                fs::remove_file(entry.path()).context(|| format!("removing {:?}", entry.path()))?;
                stale_files += 1;
            }
        }
        let mut stale_records = 0;
        for item in self.trees.uploads.iter() {
            let (k, _) = item?;
            let name = String::from_utf8_lossy(&k).into_owned();
            if !self.uploads.dir.join(&name).is_file() {
                self.trees.uploads.remove(&k)?;
                stale_records += 1;
            }
        }
        Ok((stale_files, stale_records))
    }

    /// Remove the sessions nothing has written to for `max_age` (their file's modification time;
    /// the start time for a session whose file is gone). A session busy with a request is left
    /// alone. Returns how many were removed.
    pub async fn expire_uploads(&self, max_age: Duration) -> Result<usize> {
        let now = SystemTime::now();
        let idle_too_long = |path: &Path, started: SystemTime| {
            let last_write = fs::metadata(path)
                .and_then(|m| m.modified())
                .unwrap_or(started);
            now.duration_since(last_write).unwrap_or_default() > max_age
        };
        let mut expired = 0;
        for item in self.trees.uploads.iter() {
            let (key, value) = item?;
            let Ok(id) = std::str::from_utf8(&key).unwrap_or("").parse::<UploadId>() else {
                continue;
            };
            let started = serde_json::from_slice::<UploadRecord>(&value)
                .map(|r| SystemTime::from(r.started))
                .unwrap_or(UNIX_EPOCH);
            let path = self.uploads.path(&id);
            if !idle_too_long(&path, started) {
                continue;
            }
            let lock = self.uploads.lock_for(&id);
            let Ok(running) = lock.try_lock() else {
                continue; // a request is using it right now
            };
            // Look again under the lock: a request may have written just before we took it.
            if self.trees.uploads.contains_key(&key)? && idle_too_long(&path, started) {
                self.trees.uploads.remove(&key)?;
                match fs::remove_file(&path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {
                        tracing::warn!(path = %path.display(), error = %e, "cannot remove an expired upload")
                    }
                    _ => expired += 1,
                }
                drop(running);
                self.uploads.forget(&id);
            }
        }
        if expired > 0 {
            self.flush().await?;
        }
        Ok(expired)
    }
}

/// Length of a session's file; a file removed under us means the session is gone.
fn session_len(path: &Path, repo: &RepositoryName, id: &UploadId) -> Result<u64> {
    match fs::metadata(path) {
        Ok(m) => Ok(m.len()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(upload_unknown(repo, id)),
        Err(e) => Err(e).context(|| format!("reading size of {path:?}")),
    }
}

fn upload_unknown(repo: &RepositoryName, id: &UploadId) -> Error {
    Error::new(
        ErrorCode::BlobUploadUnknown,
        format!("upload {id} is not in progress in repository {repo}"),
    )
}
