//! The sync engine: make the selected repositories here match the parent, one verified piece at
//! a time, so that a tag only ever points at content that is complete on this node.
//!
//! Order inside a tag: blobs (downloaded once, resumable, size- and digest-verified) → child
//! manifests → the manifest by digest → its referrers → the tag itself. Anything cut short leaves
//! only invisible bytes (partial downloads, untagged manifests) that the next pass picks up.
//! [`tree`] walks one tag's content; this module runs passes, repositories and tags, and decides
//! what a failure ends: a parent that does not answer ends the pass, anything else fails only
//! the tag (or repository) at hand, which is recorded in `statusDetails`.

mod tree;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use chrono::Utc;
use futures_util::{stream, StreamExt};
use tokio::sync::Semaphore;

use super::client::{ParentClient, SyncError};
use super::schedule::PollIntervals;
use super::select::Selection;
use crate::oci::{Digest, Reference, RepositoryName};
use crate::status::{Progress, StatusHandle};
use crate::store::{ChangeAction, ChangeEvent, Store};

pub use tree::{
    BLOB_ATTEMPTS, BLOB_RETRY_BASE, BLOB_RETRY_CAP, KEEP_MANIFEST_BYTES, MAX_INDEX_DEPTH,
};

/// Consecutive passes on which a repository's `tags/list` must answer 404 before its tags here
/// are pruned: one 404 (a parent restarting, a proxy hiccup) is not evidence enough.
pub const PRUNE_AFTER_MISSING_PASSES: u32 = 2;

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

pub struct SyncEngine {
    store: Arc<Store>,
    client: ParentClient,
    selection: Selection,
    concurrency: usize,
    status: StatusHandle,
    downloads: Semaphore,
    /// Tags a pass works on at once, across the repositories it syncs at once.
    tag_slots: Semaphore,
    /// One download per digest at a time; a second task needing it waits and then links it.
    blob_locks: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
    /// Cleared for the rest of a pass after the parent answers a referrers request with "no
    /// such API"; set again when the next pass starts.
    referrers_supported: AtomicBool,
    /// Repositories whose `tags/list` answered 404, with the number of consecutive passes.
    missing: Mutex<HashMap<RepositoryName, u32>>,
    /// Pacing of passes against a parent with no change feed.
    poll_intervals: PollIntervals,
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
            tag_slots: Semaphore::new(concurrency.max(1)),
            blob_locks: Mutex::new(HashMap::new()),
            referrers_supported: AtomicBool::new(true),
            missing: Mutex::new(HashMap::new()),
            poll_intervals: PollIntervals::default(),
        }
    }

    pub fn with_poll_intervals(mut self, poll_intervals: PollIntervals) -> SyncEngine {
        self.poll_intervals = poll_intervals;
        self
    }

    pub fn poll_intervals(&self) -> PollIntervals {
        self.poll_intervals
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

    /// One full reconcile: every selected repository and tag compared with the parent. A
    /// pass-ending error is recorded in the status here (once); the caller need not record it.
    pub async fn full_pass(&self, trigger: Trigger) -> Result<PassSummary, SyncError> {
        let started = Utc::now();
        self.referrers_supported.store(true, Ordering::Relaxed);
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
            // A completed pass's findings replace the earlier passes' (one cut short adds to
            // them), in the same update that says how it ended.
            Ok(failures) if failures.is_empty() => self.status.update(|s| {
                s.clear_details("Sync", started);
                s.connection_state = "Online".into();
                s.last_activity_time = Some(ended);
                s.sync.state = Some("Succeeded".into());
                s.sync.last_sync_end_time = Some(ended);
                s.sync.last_successful_sync_end_time = Some(ended);
                if let Some(p) = s.parent.as_mut() {
                    p.last_sync_time = Some(ended);
                }
            }),
            Ok(_) => self.status.update(|s| {
                s.clear_details("Sync", started);
                s.connection_state = "Online".into();
                s.last_activity_time = Some(ended);
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
        // A pass that found nothing to fetch is routine: every few seconds on an idle child.
        let changed = fetched_anything(&progress);
        macro_rules! pass_finished {
            ($level:ident) => {
                tracing::$level!(
                    trigger = trigger.as_str(),
                    repositories = progress.repositories.done,
                    manifests = progress.manifests.done,
                    blobs = progress.blobs.done,
                    bytes = progress.bytes.done,
                    failures = failures.len(),
                    "sync pass finished"
                )
            };
        }
        if changed || !failures.is_empty() {
            pass_finished!(info);
        } else {
            pass_finished!(debug);
        }
        Ok(PassSummary { progress, failures })
    }

    /// Note a failure in the status (connection state and `statusDetails`). `Offline` only for
    /// a parent that does not answer.
    pub fn record_failure(&self, e: &SyncError) {
        tracing::warn!(code = e.code(), error = %e, "sync failed");
        let offline = matches!(e, SyncError::ParentUnreachable(_));
        self.status.update(|s| {
            s.connection_state = if offline { "Offline" } else { "Unhealthy" }.into();
        });
        self.status.add_detail("Sync", e.code(), e.to_string());
    }

    /// Whether a `ParentUnreachable` from one request means the parent is gone (it does not
    /// answer `GET /v2/` either) rather than one bad path.
    async fn parent_gone(&self, e: &SyncError) -> bool {
        matches!(e, SyncError::ParentUnreachable(_)) && self.client.ping().await.is_err()
    }

    async fn reconcile(&self) -> Result<Vec<String>, SyncError> {
        let repositories = self.selected_repositories().await?;
        self.prune_unselected().await?;
        self.progress(|p| p.repositories.total = repositories.len() as u64);
        let mut failures = Vec::new();
        // Several repositories at once, so many small ones do not go one by one; the tags in
        // flight across them stay within `concurrency` (`tag_slots`).
        let mut results = stream::iter(repositories)
            .map(|repo| async move {
                let result = self.sync_repository(&repo).await;
                (repo, result)
            })
            .buffer_unordered(self.concurrency);
        while let Some((repo, result)) = results.next().await {
            match result {
                Ok(mut f) => failures.append(&mut f),
                // Losing the parent ends the pass; the caller retries.
                Err(e) if self.parent_gone(&e).await => return Err(e),
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
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            match name.parse::<RepositoryName>() {
                Ok(repo) => out.push(repo),
                Err(e) => self.status.add_detail(
                    "Sync",
                    "InvalidName",
                    format!("the parent lists an invalid repository name {name:?}, skipped: {e}"),
                ),
            }
        }
        Ok(out)
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
        let listed = self.client.list_tags(repo.as_str()).await?;
        let remote: Vec<String> = match listed {
            Some(tags) => {
                self.missing.lock().expect("missing map").remove(repo);
                tags
            }
            None => {
                let passes = {
                    let mut missing = self.missing.lock().expect("missing map");
                    let n = missing.entry(repo.clone()).or_insert(0);
                    *n += 1;
                    *n
                };
                if passes < PRUNE_AFTER_MISSING_PASSES && !self.store.all_tags(repo)?.is_empty() {
                    self.status.add_detail(
                        "Sync",
                        "RepositoryMissing",
                        format!(
                            "the parent answered 404 for the tags of {repo}; its tags here are \
                             kept until that is seen on {PRUNE_AFTER_MISSING_PASSES} passes in a row"
                        ),
                    );
                    return Ok(Vec::new());
                }
                Vec::new()
            }
        };
        let remote: Vec<String> = remote
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
        let results: Vec<(String, Result<(), SyncError>)> = stream::iter(remote)
            .map(|tag| async move {
                let _slot = self.tag_slots.acquire().await.expect("never closed");
                let result = self.sync_tag(repo, &tag, None).await;
                (tag, result)
            })
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        let mut failures = Vec::new();
        for (tag, result) in results {
            match result {
                Ok(()) => {}
                Err(e) if self.parent_gone(&e).await => return Err(e),
                Err(e) => {
                    let e = tag_failure(repo, &tag, e);
                    self.record_failure(&e);
                    failures.push(format!("{repo}:{tag}: {e}"));
                }
            }
        }
        Ok(failures)
    }

    /// Make `tag` here point where it points at the parent (`known`: the digest from a change
    /// event, saving a `HEAD`). An unchanged tag still has its referrers checked in a pass.
    pub async fn sync_tag(
        &self,
        repo: &RepositoryName,
        tag: &str,
        known: Option<Digest>,
    ) -> Result<(), SyncError> {
        let from_event = known.is_some();
        let local = self.store.tag_digest(repo, tag)?;
        let mut prefetched = None;
        let remote = match known {
            Some(d) => d,
            // Not held here: fetch it at once (a `HEAD` first would only add a request).
            None if local.is_none() => match self.client.get_manifest(repo.as_str(), tag).await? {
                Some(m) => {
                    let named = m.named.clone();
                    prefetched = Some(m);
                    named
                }
                None => return Err(listed_but_missing(repo, tag)),
            },
            None => match self.client.head_manifest(repo.as_str(), tag).await? {
                Some(d) => d,
                None => return Err(listed_but_missing(repo, tag)),
            },
        };
        // A parent's sha512 is compared through the alias recorded when the manifest was
        // stored (after verifying that digest), so an unchanged tag is not fetched again.
        let remote_here = self.store.linked_digest(repo, &remote)?;
        if local.is_some() && local == remote_here {
            // A pass checks the referrers of every tag; a feed event need not (referrers pushed
            // later arrive as events of their own).
            if from_event {
                return Ok(());
            }
            return self.sync_referrers(repo, &remote).await;
        }
        // A tag evicted for room is not fetched again while it still would not fit.
        self.store.check_evicted(repo, tag, &remote).await?;
        self.progress(|p| p.manifests.total += 1);
        let (media_type, bytes) = self
            .fetch_tree(repo, remote.clone(), None, true, prefetched)
            .await?;
        // By digest first, then its referrers, then the tag: the tag is the last thing visible.
        self.store
            .put_mirrored_manifest(
                repo,
                &Reference::Digest(remote.clone()),
                &media_type,
                bytes.clone(),
            )
            .await?;
        self.sync_referrers(repo, &remote).await?;
        let reference = Reference::Tag(tag.parse()?);
        self.store
            .put_mirrored_manifest(repo, &reference, &media_type, bytes)
            .await?;
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

/// Whether a pass found something to fetch (a pass that did not is routine on an idle child).
pub fn fetched_anything(progress: &Progress) -> bool {
    progress.manifests.total > 0 || progress.blobs.total > 0
}

/// A tag the parent lists but whose manifest answers 404: inconsistent, so nothing is removed
/// on its word.
fn listed_but_missing(repo: &RepositoryName, tag: &str) -> SyncError {
    SyncError::Protocol(format!(
        "{repo}:{tag} is listed by the parent but its manifest answers 404"
    ))
}

/// Name the tag in a failure whose message does not say which tag it was.
fn tag_failure(repo: &RepositoryName, tag: &str, e: SyncError) -> SyncError {
    match e {
        SyncError::Refused(m) => SyncError::Refused(format!("tag {repo}:{tag}: {m}")),
        other => other,
    }
}
