//! The sync engine: make the selected repositories here match the parent, one verified piece at
//! a time, so that a tag only ever points at content that is complete on this node.
//!
//! Order inside a tag: blobs (downloaded once, resumable, verified) → child manifests →
//! referrers → the tag itself. Anything cut short leaves only invisible bytes (partial downloads,
//! untagged manifests) that the next pass picks up.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use chrono::Utc;
use futures_util::{stream, StreamExt};
use tokio::sync::Semaphore;

use super::client::{ParentClient, SyncError};
use super::select::Selection;
use crate::oci::{Digest, ParsedManifest, Reference, RepositoryName};
use crate::status::{Progress, StatusHandle};
use crate::store::{ChangeAction, ChangeEvent, Store};

/// Why a sync pass runs (the `sync.trigger` of the status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    InitialSync,
    Schedule,
    ManualResync,
    RecoveryService,
    ConfigUpdate,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::InitialSync => "InitialSync",
            Trigger::Schedule => "Schedule",
            Trigger::ManualResync => "ManualResync",
            Trigger::RecoveryService => "RecoveryService",
            Trigger::ConfigUpdate => "ConfigUpdate",
        }
    }
}

/// What one pass did.
#[derive(Debug, Default, Clone)]
pub struct PassSummary {
    pub progress: Progress,
    /// Failures that did not stop the pass (one repository or tag each).
    pub failures: Vec<String>,
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub struct SyncEngine {
    store: Arc<Store>,
    client: ParentClient,
    selection: Selection,
    concurrency: usize,
    status: StatusHandle,
    downloads: Semaphore,
    /// One download per digest at a time; a second task needing it waits and then links it.
    blob_locks: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
    /// Cleared after the parent answers a referrers request with "no such API".
    referrers_supported: AtomicBool,
}

impl SyncEngine {
    pub fn new(
        store: Arc<Store>,
        client: ParentClient,
        selection: Selection,
        concurrency: usize,
        status: StatusHandle,
    ) -> SyncEngine {
        SyncEngine {
            store,
            client,
            selection,
            concurrency: concurrency.max(1),
            status,
            downloads: Semaphore::new(concurrency.max(1)),
            blob_locks: Mutex::new(HashMap::new()),
            referrers_supported: AtomicBool::new(true),
        }
    }

    pub fn client(&self) -> &ParentClient {
        &self.client
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn status(&self) -> &StatusHandle {
        &self.status
    }

    /// One full reconcile: every selected repository and tag compared with the parent.
    pub async fn full_pass(&self, trigger: Trigger) -> Result<PassSummary, SyncError> {
        let started = Utc::now();
        self.status.update(|s| {
            s.connection_state = "Syncing".into();
            s.sync.trigger = Some(trigger.as_str().into());
            s.sync.state = Some("Syncing".into());
            s.sync.last_sync_start_time = Some(started);
            s.sync.progress = Progress::default();
        });
        let result = self.reconcile().await;
        let ended = Utc::now();
        let progress = self.status.snapshot().sync.progress;
        match &result {
            Ok(failures) if failures.is_empty() => self.status.update(|s| {
                s.connection_state = "Online".into();
                s.sync.state = Some("Succeeded".into());
                s.sync.last_sync_end_time = Some(ended);
                s.sync.last_successful_sync_end_time = Some(ended);
                if let Some(p) = s.parent.as_mut() {
                    p.last_sync_time = Some(ended);
                }
            }),
            Ok(_) => self.status.update(|s| {
                s.connection_state = "Online".into();
                s.sync.state = Some("Failed".into());
                s.sync.last_sync_end_time = Some(ended);
            }),
            Err(e) => {
                self.record_failure(e);
                self.status.update(|s| {
                    s.sync.state = Some("Failed".into());
                    s.sync.last_sync_end_time = Some(ended);
                });
            }
        }
        let failures = result?;
        tracing::info!(
            trigger = trigger.as_str(),
            repositories = progress.repositories.done,
            manifests = progress.manifests.done,
            blobs = progress.blobs.done,
            bytes = progress.bytes.done,
            failures = failures.len(),
            "sync pass finished"
        );
        Ok(PassSummary { progress, failures })
    }

    /// Note a failure in the status (connection state and `statusDetails`).
    pub fn record_failure(&self, e: &SyncError) {
        tracing::warn!(code = e.code(), error = %e, "sync failed");
        let offline = matches!(e, SyncError::ParentUnreachable(_));
        self.status.update(|s| {
            s.connection_state = if offline { "Offline" } else { "Unhealthy" }.into();
        });
        self.status.add_detail("Sync", e.code(), e.to_string());
    }

    async fn reconcile(&self) -> Result<Vec<String>, SyncError> {
        let repositories = self.selected_repositories().await?;
        self.prune_unselected().await?;
        self.progress(|p| p.repositories.total = repositories.len() as u64);
        let mut failures = Vec::new();
        for repo in &repositories {
            match self.sync_repository(repo).await {
                Ok(mut f) => failures.append(&mut f),
                // Losing the parent ends the pass; the caller retries.
                Err(e @ SyncError::ParentUnreachable(_)) => return Err(e),
                Err(e) => {
                    self.record_failure(&e);
                    failures.push(format!("{repo}: {e}"));
                }
            }
            self.progress(|p| p.repositories.done += 1);
        }
        Ok(failures)
    }

    async fn selected_repositories(&self) -> Result<Vec<RepositoryName>, SyncError> {
        let mut names: Vec<String> = self.selection.exact_names().to_vec();
        if self.selection.has_patterns() {
            for name in self.client.catalog().await? {
                if self.selection.matches_repository(&name) && !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        Ok(names.into_iter().filter_map(|n| n.parse().ok()).collect())
    }

    /// A repository no longer selected is removed here (this node is a mirror).
    async fn prune_unselected(&self) -> Result<(), SyncError> {
        for name in self.store.list_repositories(None, None)? {
            if !self.selection.matches_repository(&name) {
                tracing::info!(repository = %name, "pruning a repository no longer selected");
                self.store.delete_repository(&name.parse()?).await?;
            }
        }
        Ok(())
    }

    /// Bring every selected tag of `repo` in line with the parent. Returns per-tag failures.
    pub async fn sync_repository(&self, repo: &RepositoryName) -> Result<Vec<String>, SyncError> {
        let remote: Vec<String> = self
            .client
            .list_tags(repo.as_str())
            .await?
            .unwrap_or_default()
            .into_iter()
            .filter(|t| self.selection.matches_tag(t))
            .collect();
        let wanted: HashSet<&str> = remote.iter().map(String::as_str).collect();
        for tag in self.store.all_tags(repo)? {
            if !wanted.contains(tag.as_str()) {
                let old = self.store.tag_digest(repo, &tag)?;
                self.store.remove_tag(repo, &tag, None).await?;
                if let Some(old) = old {
                    self.drop_if_gone(repo, &old).await?;
                }
            }
        }
        let results: Vec<Result<(), SyncError>> = stream::iter(remote.clone())
            .map(|tag| async move { self.sync_tag(repo, &tag, None).await })
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        let mut failures = Vec::new();
        for result in results {
            match result {
                Ok(()) => {}
                Err(e @ SyncError::ParentUnreachable(_)) => return Err(e),
                Err(e) => {
                    self.record_failure(&e);
                    failures.push(format!("{repo}: {e}"));
                }
            }
        }
        Ok(failures)
    }

    /// Make `tag` here point where it points at the parent (`known`: the digest from a change
    /// event, saving a `HEAD`).
    pub async fn sync_tag(
        &self,
        repo: &RepositoryName,
        tag: &str,
        known: Option<Digest>,
    ) -> Result<(), SyncError> {
        let remote = match known {
            Some(d) => d,
            None => match self.client.head_manifest(repo.as_str(), tag).await? {
                Some(d) => d,
                None => {
                    self.store.remove_tag(repo, tag, None).await?;
                    return Ok(());
                }
            },
        };
        let local = self.store.tag_digest(repo, tag)?;
        if local.as_ref() == Some(&remote) {
            return Ok(());
        }
        self.progress(|p| p.manifests.total += 1);
        let (media_type, bytes) = self.sync_manifest_tree(repo, remote.clone()).await?;
        let reference = Reference::Tag(tag.parse()?);
        self.store
            .put_mirrored_manifest(repo, &reference, &media_type, bytes)
            .await?;
        self.sync_referrers(repo, &remote).await?;
        self.progress(|p| p.manifests.done += 1);
        if let Some(old) = local {
            self.drop_if_gone(repo, &old).await?;
        }
        Ok(())
    }

    /// Remove a manifest that lost its tag here once the parent no longer has it either.
    async fn drop_if_gone(&self, repo: &RepositoryName, digest: &Digest) -> Result<(), SyncError> {
        let still_tagged = self
            .store
            .all_tags(repo)?
            .iter()
            .any(|t| self.store.tag_digest(repo, t).ok().flatten().as_ref() == Some(digest));
        if !still_tagged
            && self
                .client
                .head_manifest(repo.as_str(), &digest.to_string())
                .await?
                .is_none()
        {
            self.store.remove_manifest(repo, digest).await?;
        }
        Ok(())
    }

    /// Fetch manifest `digest` and everything under it (children of an index that pass the
    /// platform filter, stored by digest; blobs). Returns the manifest for the caller to store.
    fn sync_manifest_tree(
        &self,
        repo: &RepositoryName,
        digest: Digest,
    ) -> BoxFuture<'_, Result<(String, Bytes), SyncError>> {
        let repo = repo.clone();
        Box::pin(async move {
            if let Some(m) = self.store.manifest_by_digest(&repo, &digest)? {
                return Ok((m.media_type.as_str().to_owned(), m.bytes));
            }
            let remote = self
                .client
                .get_manifest(repo.as_str(), &digest.to_string())
                .await?
                .ok_or_else(|| {
                    SyncError::Protocol(format!(
                        "manifest {digest} of {repo} vanished at the parent"
                    ))
                })?;
            let parsed = ParsedManifest::parse(Some(&remote.media_type), &remote.bytes)
                .map_err(|e| SyncError::Protocol(format!("manifest {digest} of {repo}: {e}")))?;
            if parsed.media_type.is_index() {
                for child in self.selected_children(&remote.bytes, &parsed)? {
                    self.progress(|p| p.manifests.total += 1);
                    let (child_type, child_bytes) =
                        self.sync_manifest_tree(&repo, child.clone()).await?;
                    self.store
                        .put_mirrored_manifest(
                            &repo,
                            &Reference::Digest(child.clone()),
                            &child_type,
                            child_bytes,
                        )
                        .await?;
                    self.sync_referrers(&repo, &child).await?;
                    self.progress(|p| p.manifests.done += 1);
                }
            } else {
                self.ensure_blobs(&repo, &parsed).await?;
            }
            Ok((parsed.media_type.as_str().to_owned(), remote.bytes))
        })
    }

    /// Children of an index whose platform is selected (all when no platforms are configured).
    fn selected_children(
        &self,
        bytes: &[u8],
        parsed: &ParsedManifest,
    ) -> Result<Vec<Digest>, SyncError> {
        let index: oci_spec::image::ImageIndex = serde_json::from_slice(bytes)
            .map_err(|e| SyncError::Protocol(format!("invalid index: {e}")))?;
        let mut out = Vec::new();
        for (descriptor, digest) in index.manifests().iter().zip(&parsed.children) {
            let keep = match descriptor.platform() {
                None => true,
                Some(p) => self.selection.matches_platform(
                    &p.os().to_string(),
                    &p.architecture().to_string(),
                    p.variant().as_deref(),
                ),
            };
            if keep {
                out.push(digest.clone());
            }
        }
        Ok(out)
    }

    async fn ensure_blobs(
        &self,
        repo: &RepositoryName,
        parsed: &ParsedManifest,
    ) -> Result<(), SyncError> {
        self.progress(|p| p.blobs.total += parsed.blobs.len() as u64);
        let blobs = parsed
            .blobs
            .iter()
            .cloned()
            .zip(parsed.blob_sizes.iter().copied());
        let results: Vec<Result<(), SyncError>> = stream::iter(blobs)
            .map(|(d, size)| async move { self.ensure_blob(repo, &d, size).await })
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// Link the blob if any repository here has it; otherwise download it (once, resumably).
    async fn ensure_blob(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
        size: u64,
    ) -> Result<(), SyncError> {
        if !self.store.link_local_blob(repo, digest).await? {
            let lock = self
                .blob_locks
                .lock()
                .expect("blob lock map")
                .entry(digest.clone())
                .or_default()
                .clone();
            let _guard = lock.lock().await;
            if !self.store.link_local_blob(repo, digest).await? {
                let _permit = self
                    .downloads
                    .acquire()
                    .await
                    .expect("semaphore is never closed");
                self.progress(|p| p.bytes.total += size);
                let partial = self.store.partial_path(digest);
                let transferred = self
                    .client
                    .download_blob(repo.as_str(), digest, &partial)
                    .await?;
                tracing::debug!(%digest, transferred, size, "blob downloaded");
                // The whole blob is done, including bytes a resumed download already had.
                self.progress(|p| p.bytes.done += size);
                self.store.import_blob(repo, digest, partial).await?;
            }
            self.blob_locks
                .lock()
                .expect("blob lock map")
                .remove(digest);
        }
        self.progress(|p| p.blobs.done += 1);
        Ok(())
    }

    /// Referrers of `subject` (signatures, SBOMs) that are not here yet.
    async fn sync_referrers(
        &self,
        repo: &RepositoryName,
        subject: &Digest,
    ) -> Result<(), SyncError> {
        if !self.referrers_supported.load(Ordering::Relaxed) {
            return Ok(());
        }
        let Some(referrers) = self.client.referrers(repo.as_str(), subject).await? else {
            self.referrers_supported.store(false, Ordering::Relaxed);
            return Ok(());
        };
        for referrer in referrers {
            if self.store.has_manifest(repo, &referrer)? {
                continue;
            }
            self.store_by_digest(repo, &referrer).await?;
        }
        Ok(())
    }

    async fn store_by_digest(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
    ) -> Result<(), SyncError> {
        self.progress(|p| p.manifests.total += 1);
        let (media_type, bytes) = self.sync_manifest_tree(repo, digest.clone()).await?;
        self.store
            .put_mirrored_manifest(repo, &Reference::Digest(digest.clone()), &media_type, bytes)
            .await?;
        self.progress(|p| p.manifests.done += 1);
        Ok(())
    }

    /// Apply one event of the parent's change feed.
    pub async fn apply_event(&self, event: &ChangeEvent) -> Result<(), SyncError> {
        let Ok(repo) = event.repository.parse::<RepositoryName>() else {
            return Ok(());
        };
        if !self.selection.matches_repository(repo.as_str()) {
            return Ok(());
        }
        let Ok(digest) = event.digest.parse::<Digest>() else {
            return Ok(());
        };
        match (event.action, event.tag.as_deref()) {
            (ChangeAction::Push | ChangeAction::Tag, Some(tag)) => {
                if self.selection.matches_tag(tag) {
                    self.sync_tag(&repo, tag, Some(digest)).await?;
                }
            }
            (ChangeAction::Push | ChangeAction::Tag, None) => {
                // An untagged push: a referrer of something here is kept; index children arrive
                // with their index's tag (and may be filtered out by platform).
                let subject = event
                    .subject
                    .as_deref()
                    .and_then(|s| s.parse::<Digest>().ok());
                if let Some(subject) = subject {
                    if self.store.has_manifest(&repo, &subject)?
                        && !self.store.has_manifest(&repo, &digest)?
                    {
                        self.store_by_digest(&repo, &digest).await?;
                    }
                }
            }
            (ChangeAction::Untag, Some(tag)) => {
                self.store.remove_tag(&repo, tag, Some(&digest)).await?;
            }
            (ChangeAction::Delete, _) => {
                self.store.remove_manifest(&repo, &digest).await?;
            }
            (ChangeAction::Untag, None) => {}
        }
        Ok(())
    }

    fn progress(&self, f: impl FnOnce(&mut Progress)) {
        self.status.update(|s| f(&mut s.sync.progress));
    }
}
