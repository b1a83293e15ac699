//! What sync needs from the store beyond the registry API: reusing blobs already on disk,
//! importing verified downloads, pruning whole repositories, and a small key/value space for
//! sync state (the change-feed cursor) that survives restarts.

use std::path::PathBuf;

use super::locks::RepoGuard;
use super::metadata::{decode_digest, key2};
use super::{Store, StoredManifest};
use crate::oci::error::IoContext;
use crate::oci::{Digest, ErrorCode, Reference, RepositoryName, Result, Tag};

impl Store {
    /// Where an in-progress download of `digest` keeps its bytes; unlike `tmp/`, this directory
    /// survives restarts so a download resumes where it stopped.
    pub fn partial_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("partial")
            .join(format!("{}-{}", digest.algorithm().as_str(), digest.hex()))
    }

    /// Link `digest` into `repo` if its bytes are already on disk (from any repository).
    /// Returns whether it is now linked.
    pub async fn link_local_blob(&self, repo: &RepositoryName, digest: &Digest) -> Result<bool> {
        if self.blob_size(repo, digest)?.is_some() {
            return Ok(true);
        }
        let path = self.files.path(digest);
        let size = match std::fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(_) => return Ok(false),
        };
        self.link_blob(repo, digest, size).await
    }

    /// Make the verified, fsync'd file at `path` blob `digest` of `repo`.
    pub async fn import_blob(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
        path: PathBuf,
    ) -> Result<()> {
        let size = std::fs::metadata(&path)
            .context(|| format!("reading size of {path:?}"))?
            .len();
        let files = self.files.clone();
        let d = digest.clone();
        {
            let _claim = self.claims.read().await;
            let placed = tokio::task::spawn_blocking(move || files.commit(&path, &d))
                .await
                .map_err(|e| {
                    crate::oci::Error::new(crate::oci::ErrorCode::Unknown, e.to_string())
                })??;
            if placed {
                self.account(size);
            }
            let guard = self.locks.lock(repo);
            self.link_blob_locked(&guard, repo, digest, size)?;
        }
        super::counters::Counters::add(&self.counters.synced_bytes, size);
        self.flush().await
    }

    /// The digest `tag` points at in `repo`, if any.
    pub fn tag_digest(&self, repo: &RepositoryName, tag: &str) -> Result<Option<Digest>> {
        self.trees
            .tags
            .get(key2(repo.as_str(), tag))?
            .map(|v| decode_digest(&v))
            .transpose()
    }

    /// Whether `repo` holds the manifest `digest` names (by its own digest or an alias).
    pub fn has_manifest(&self, repo: &RepositoryName, digest: &Digest) -> Result<bool> {
        Ok(self.manifest_link(repo, digest)?.is_some())
    }

    pub fn manifest_by_digest(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
    ) -> Result<Option<StoredManifest>> {
        match self.get_manifest(repo, &Reference::Digest(digest.clone())) {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.code() == crate::oci::ErrorCode::ManifestUnknown => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every tag of `repo` (empty if the repository is unknown).
    pub fn all_tags(&self, repo: &RepositoryName) -> Result<Vec<String>> {
        if !self.repository_exists(repo)? {
            return Ok(Vec::new());
        }
        self.list_tags(repo, None, None)
    }

    /// Remove a tag if it still points at `expected` (or at anything, with `None`).
    pub async fn remove_tag(
        &self,
        repo: &RepositoryName,
        tag: &str,
        expected: Option<&Digest>,
    ) -> Result<bool> {
        let tag: Tag = tag.parse()?;
        {
            let guard = self.locks.lock(repo);
            let Some(current) = self.tag_digest(repo, tag.as_str())? else {
                return Ok(false);
            };
            if expected.is_some_and(|e| *e != current) {
                return Ok(false);
            }
            // A local push of this tag still on its way to the parent is not undone.
            if self.outbox_holds(repo.as_str(), Some(tag.as_str()), None)? {
                return Ok(false);
            }
            self.delete_tag_locked(&guard, repo, &tag, false)?;
        }
        self.flush().await?;
        Ok(true)
    }

    /// Remove a manifest from `repo` if it is there.
    pub async fn remove_manifest(&self, repo: &RepositoryName, digest: &Digest) -> Result<bool> {
        if self.outbox_holds(repo.as_str(), None, Some(&digest.to_string()))? {
            return Ok(false);
        }
        match self
            .delete_manifest_from(repo, &Reference::Digest(digest.clone()), false)
            .await
        {
            Ok(()) => Ok(true),
            Err(e) if e.code() == ErrorCode::ManifestUnknown => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Remove everything `repo` holds: tags, manifests, aliases, blob links and the name
    /// itself. Each manifest leaves in its own transaction (with its change events), so a crash
    /// part-way leaves a smaller repository that the next prune finishes.
    pub async fn delete_repository(&self, repo: &RepositoryName) -> Result<()> {
        self.delete_repository_locked(&self.locks.lock(repo), repo)?;
        self.flush().await
    }

    fn delete_repository_locked(&self, guard: &RepoGuard, repo: &RepositoryName) -> Result<()> {
        // Local pushes still on their way to the parent keep the repository until they are up.
        if self.outbox_has_repository(repo.as_str())? {
            return Ok(());
        }
        let prefix = key2(repo.as_str(), "");
        let mut manifests = Vec::new();
        for key in self.trees.manifest_links.scan_prefix(&prefix).keys() {
            if let Ok(digest) = decode_digest(&key?[prefix.len()..]) {
                manifests.push(digest);
            }
        }
        for digest in manifests {
            match self.delete_manifest_digest_locked(guard, repo, &digest, false) {
                Ok(()) => {}
                Err(e) if e.code() == ErrorCode::ManifestUnknown => {}
                Err(e) => return Err(e),
            }
        }
        let mut batch = sled::Batch::default();
        for key in self.trees.blob_links.scan_prefix(&prefix).keys() {
            batch.remove(key?);
        }
        self.trees.blob_links.apply_batch(batch)?;
        let mut batch = sled::Batch::default();
        let mut tag_keys = Vec::new();
        for key in self.trees.tags.scan_prefix(&prefix).keys() {
            let key = key?;
            batch.remove(key.clone());
            tag_keys.push(key);
        }
        self.trees.tags.apply_batch(batch)?;
        for key in &tag_keys {
            self.manifest_cache.forget(key);
        }
        self.remove_aliases(repo)?;
        self.trees.repos.remove(repo.as_str())?;
        Ok(())
    }

    pub fn sync_state(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.trees.sync_state.get(key)?.map(|v| v.to_vec()))
    }

    pub async fn set_sync_state(&self, key: &str, value: &[u8]) -> Result<()> {
        self.trees.sync_state.insert(key, value)?;
        self.flush().await
    }

    /// Forget `key` (durably, if it was there).
    pub async fn remove_sync_state(&self, key: &str) -> Result<()> {
        if self.trees.sync_state.remove(key)?.is_some() {
            self.flush().await?;
        }
        Ok(())
    }

    /// Forget every key that starts with `prefix` (durably, if any was there); how many.
    pub async fn remove_sync_state_under(&self, prefix: &str) -> Result<usize> {
        let mut removed = 0;
        for key in self.trees.sync_state.scan_prefix(prefix).keys() {
            self.trees.sync_state.remove(key?)?;
            removed += 1;
        }
        if removed > 0 {
            self.flush().await?;
        }
        Ok(removed)
    }
}
