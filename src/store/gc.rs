//! Garbage collection: frees the manifests and blobs nothing live references, while clients
//! push and sync runs.
//!
//! **Live** in a repository: what a tag points at; what the upstream outbox still has to push;
//! what was pushed or tagged within the grace period (a push whose manifest has not arrived yet,
//! index children pushed before their index); and, transitively, the children of a live index,
//! the referrers (signatures, SBOMs) of a live manifest, and the blobs of every live manifest.
//! A blob link counts as recent while its file was written or claimed (uploaded again, mounted,
//! linked by sync, checked with `HEAD`) within the grace period.
//!
//! Two phases. Per repository, under its write lock, untagged manifests that are not live
//! leave through the ordinary delete path (one transaction each, with change events), then blob
//! links no live manifest needs. Then, under the exclusive side of the store's claim lock (every
//! writer that links a blob or puts a manifest holds the shared side across its file commit and
//! its transaction), manifest records no repository links are dropped and blob files no
//! repository links are deleted. Metadata goes before files, each step is durable on its own,
//! so a kill -9 anywhere leaves at most unreferenced bytes that the next run frees.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use super::locks::RepoGuard;
use super::metadata::{self, decode_digest, key2, key3, ChangeAction, ChangeEvent, ManifestRecord};
use super::outbox::OutboxOp;
use super::Store;
use crate::oci::error::IoContext;
use crate::oci::{Digest, ErrorCode, ParsedManifest, RepositoryName, Result};

/// What one run freed (or, with `dry_run`, would free).
#[derive(Debug, Default, Clone)]
pub struct GcReport {
    pub dry_run: bool,
    /// Untagged manifests removed, as `(repository, digest)`.
    pub manifests: Vec<(String, String)>,
    /// Blob links removed from repositories.
    pub blob_links: usize,
    /// Blob files deleted, as `(digest, size)`.
    pub blobs: Vec<(String, u64)>,
    /// Manifest records no repository links any more.
    pub manifest_records: usize,
    /// Repositories left empty and forgotten.
    pub repositories: usize,
    pub elapsed: Duration,
}

impl GcReport {
    pub fn freed_bytes(&self) -> u64 {
        self.blobs.iter().map(|(_, size)| size).sum()
    }
}

impl Store {
    /// One garbage collection run. Content written or claimed within `grace` is kept. Blocking:
    /// run it on a blocking thread.
    pub fn collect_garbage(&self, grace: Duration, dry_run: bool) -> Result<GcReport> {
        let started = Instant::now();
        let cutoff = SystemTime::now() - grace;
        let mut report = GcReport {
            dry_run,
            ..GcReport::default()
        };
        // Events after this one are read again under each repository's lock: a manifest pushed
        // while the run goes (an index's child before its index, a synced manifest before its
        // tag) is live too.
        let started_at_seq = metadata::newest_change(&self.trees.changes)?;
        let recent = self.recently_pushed(cutoff)?;
        let pending = self.outbox_digests()?;
        // Links a dry run would have removed, so its second phase sees what a real run would.
        let mut dropped_blob_links = HashSet::new();
        let mut dropped_manifest_links = HashSet::new();
        let repos: Vec<String> = self
            .trees
            .repos
            .iter()
            .keys()
            .map(|k| k.map(|k| String::from_utf8_lossy(&k).into_owned()))
            .collect::<std::result::Result<_, _>>()?;
        for name in repos {
            let Ok(repo) = name.parse::<RepositoryName>() else {
                continue;
            };
            let guard = self.locks.lock(&repo);
            let mut keep: HashSet<String> = recent
                .get(&name)
                .into_iter()
                .chain(pending.get(&name))
                .flatten()
                .cloned()
                .collect();
            keep.extend(self.pushed_after(started_at_seq, &name)?);
            let none = HashSet::new();
            let swept = self.sweep_repository(&guard, &repo, &keep, cutoff, &none, dry_run)?;
            drop(guard);
            report.blob_links += swept.blob_links.len();
            report.repositories += usize::from(swept.forgotten);
            for digest in swept.manifests {
                dropped_manifest_links.insert(key2(&name, &digest));
                report.manifests.push((name.clone(), digest));
            }
            dropped_blob_links.extend(swept.blob_links.iter().map(|d| key2(&name, d)));
        }
        if !dry_run {
            self.db.flush()?;
        }
        if !dry_run {
            // Gone already; a link made again since (a tag pushed for a manifest the sweep
            // took, a blob linked again) is a live link, not a dropped one.
            dropped_manifest_links.clear();
            dropped_blob_links.clear();
        }
        {
            let _exclusive = self.claims.blocking_write();
            report.manifest_records =
                self.drop_unlinked_records(&dropped_manifest_links, dry_run)?;
            report.blobs = self.delete_unlinked_files(&dropped_blob_links, dry_run)?;
        }
        if !dry_run {
            self.release(report.freed_bytes());
        }
        report.elapsed = started.elapsed();
        Ok(report)
    }

    /// Manifests pushed or tagged at or after `cutoff`, by repository (from the change log,
    /// newest first, which is kept far longer than any grace period).
    pub(super) fn recently_pushed(
        &self,
        cutoff: SystemTime,
    ) -> Result<HashMap<String, HashSet<String>>> {
        let cutoff = chrono::DateTime::<chrono::Utc>::from(cutoff);
        let mut recent: HashMap<String, HashSet<String>> = HashMap::new();
        for item in self.trees.changes.iter().rev() {
            let (_, value) = item?;
            let Ok(event) = serde_json::from_slice::<ChangeEvent>(&value) else {
                continue;
            };
            if event.time < cutoff {
                break;
            }
            if matches!(event.action, ChangeAction::Push | ChangeAction::Tag) {
                recent
                    .entry(event.repository)
                    .or_default()
                    .insert(event.digest);
            }
        }
        Ok(recent)
    }

    /// Manifests of `repo` pushed or tagged in change events after `seq` (the few written while
    /// a run goes; read under the repository's lock, so none committed before it is missed).
    fn pushed_after(&self, seq: u64, repo: &str) -> Result<Vec<String>> {
        let mut pushed = Vec::new();
        for item in self.trees.changes.range((seq + 1).to_be_bytes()..) {
            let (_, value) = item?;
            let Ok(event) = serde_json::from_slice::<ChangeEvent>(&value) else {
                continue;
            };
            if event.repository == repo
                && matches!(event.action, ChangeAction::Push | ChangeAction::Tag)
            {
                pushed.push(event.digest);
            }
        }
        Ok(pushed)
    }

    /// Manifests the upstream outbox still has to push, by repository.
    pub(super) fn outbox_digests(&self) -> Result<HashMap<String, HashSet<String>>> {
        let mut pending: HashMap<String, HashSet<String>> = HashMap::new();
        for item in self.trees.outbox.iter() {
            let (_, value) = item?;
            let Ok(entry) = serde_json::from_slice::<super::outbox::OutboxEntry>(&value) else {
                continue;
            };
            if let OutboxOp::Push { digest, .. } = entry.op {
                pending.entry(entry.repository).or_default().insert(digest);
            }
        }
        Ok(pending)
    }

    /// Under `repo`'s lock: remove its manifests and blob links that nothing live needs. Links
    /// to `forced` blobs go even when recent (eviction of what it just untagged).
    pub(super) fn sweep_repository(
        &self,
        guard: &RepoGuard,
        repo: &RepositoryName,
        keep: &HashSet<String>,
        cutoff: SystemTime,
        forced: &HashSet<String>,
        dry_run: bool,
    ) -> Result<RepositorySweep> {
        let prefix = key2(repo.as_str(), "");
        let (live, live_blobs) = self.live_in(repo, keep)?;
        let mut swept = RepositorySweep::default();
        let mut linked = 0usize;
        for key in self.trees.manifest_links.scan_prefix(&prefix).keys() {
            let key = key?;
            let digest = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
            if live.contains(&digest) {
                linked += 1;
                continue;
            }
            let Ok(parsed) = digest.parse::<Digest>() else {
                continue;
            };
            if !dry_run {
                match self.delete_manifest_digest_locked(guard, repo, &parsed, false) {
                    Ok(()) => {}
                    Err(e) if e.code() == ErrorCode::ManifestUnknown => continue,
                    Err(e) => return Err(e),
                }
            }
            swept.manifests.push(digest);
        }
        let mut batch = sled::Batch::default();
        let mut blob_links = 0usize;
        for item in self.trees.blob_links.scan_prefix(&prefix) {
            let (key, _) = item?;
            let digest = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
            let stale = forced.contains(&digest) || self.link_is_stale(&digest, cutoff);
            if live_blobs.contains(&digest) || !stale {
                blob_links += 1;
                continue;
            }
            batch.remove(key);
            swept.blob_links.push(digest);
        }
        if !dry_run {
            self.trees.blob_links.apply_batch(batch)?;
            self.drop_dangling_aliases(repo)?;
            self.drop_stale_tag_use(&prefix)?;
            let tags_left = self.trees.tags.scan_prefix(&prefix).next().is_some();
            if linked == 0 && blob_links == 0 && !tags_left {
                self.trees.repos.remove(repo.as_str())?;
                swept.forgotten = true;
            }
        }
        Ok(swept)
    }

    /// The live manifests of `repo` (tags, `keep`, index children and referrers of live ones)
    /// and the blobs they reference.
    pub(super) fn live_in(
        &self,
        repo: &RepositoryName,
        keep: &HashSet<String>,
    ) -> Result<(HashSet<String>, HashSet<String>)> {
        let prefix = key2(repo.as_str(), "");
        let mut queue: Vec<String> = keep.iter().cloned().collect();
        for value in self.trees.tags.scan_prefix(&prefix).values() {
            queue.push(String::from_utf8_lossy(&value?).into_owned());
        }
        let mut live = HashSet::new();
        let mut blobs = HashSet::new();
        while let Some(digest) = queue.pop() {
            if !live.insert(digest.clone()) {
                continue;
            }
            if let Some(record) = self.trees.manifests.get(digest.as_bytes())? {
                let record = ManifestRecord::decode(record)?;
                if let Ok(parsed) =
                    ParsedManifest::parse(Some(record.media_type.as_str()), &record.bytes)
                {
                    blobs.extend(parsed.blobs.iter().map(|d| d.to_string()));
                    queue.extend(parsed.children.iter().map(|d| d.to_string()));
                }
            }
            let referrers = key3(repo.as_str(), &digest, "");
            for key in self.trees.referrers.scan_prefix(&referrers).keys() {
                let key = key?;
                queue.push(String::from_utf8_lossy(&key[referrers.len()..]).into_owned());
            }
        }
        Ok((live, blobs))
    }

    /// A blob link may go when its file was last written or claimed before `cutoff` (or is
    /// gone).
    fn link_is_stale(&self, digest: &str, cutoff: SystemTime) -> bool {
        let Ok(digest) = digest.parse::<Digest>() else {
            return true;
        };
        match fs::metadata(self.files.path(&digest)).and_then(|m| m.modified()) {
            Ok(modified) => modified < cutoff,
            Err(_) => true,
        }
    }

    /// Aliases of `repo` whose manifest left it.
    fn drop_dangling_aliases(&self, repo: &RepositoryName) -> Result<()> {
        let prefix = key2(repo.as_str(), "");
        let mut batch = sled::Batch::default();
        for item in self.trees.manifest_aliases.scan_prefix(&prefix) {
            let (key, target) = item?;
            let target = decode_digest(&target)?;
            let link = key2(repo.as_str(), &target.to_string());
            if !self.trees.manifest_links.contains_key(link)? {
                batch.remove(key);
            }
        }
        self.trees.manifest_aliases.apply_batch(batch)?;
        Ok(())
    }

    /// Use records of tags that are gone.
    fn drop_stale_tag_use(&self, prefix: &[u8]) -> Result<()> {
        let mut batch = sled::Batch::default();
        for key in self.trees.tag_use.scan_prefix(prefix).keys() {
            let key = key?;
            if !self.trees.tags.contains_key(&key)? {
                batch.remove(key);
            }
        }
        self.trees.tag_use.apply_batch(batch)?;
        Ok(())
    }

    /// Under the exclusive claim lock: manifest records that no repository links.
    fn drop_unlinked_records(&self, dropped: &HashSet<Vec<u8>>, dry_run: bool) -> Result<usize> {
        let linked = linked_digests(&self.trees.manifest_links, dropped)?;
        let mut batch = sled::Batch::default();
        let mut count = 0;
        for key in self.trees.manifests.iter().keys() {
            let key = key?;
            if !linked.contains(key.as_ref()) {
                batch.remove(key);
                count += 1;
            }
        }
        if !dry_run {
            self.trees.manifests.apply_batch(batch)?;
            self.db.flush()?;
        }
        Ok(count)
    }

    /// Under the exclusive claim lock: blob files that no repository links. Returns each with
    /// its size.
    fn delete_unlinked_files(
        &self,
        dropped: &HashSet<Vec<u8>>,
        dry_run: bool,
    ) -> Result<Vec<(String, u64)>> {
        let linked = linked_digests(&self.trees.blob_links, dropped)?;
        let mut deleted = Vec::new();
        let root = self.root.join("blobs");
        for algorithm in read_dir_names(&root)? {
            for shard in read_dir_names(&root.join(&algorithm))? {
                let dir = root.join(&algorithm).join(&shard);
                for hex in read_dir_names(&dir)? {
                    let digest = format!("{algorithm}:{hex}");
                    if linked.contains(digest.as_bytes()) {
                        continue;
                    }
                    let path = dir.join(&hex);
                    let size = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                    if !dry_run {
                        match fs::remove_file(&path) {
                            Ok(()) => {}
                            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                            Err(e) => {
                                return Err(e).context(|| format!("removing blob file {path:?}"))
                            }
                        }
                    }
                    deleted.push((digest, size));
                }
                if !dry_run {
                    // Only succeeds when the shard is empty.
                    let _ = fs::remove_dir(&dir);
                }
            }
        }
        Ok(deleted)
    }
}

#[derive(Default)]
pub(super) struct RepositorySweep {
    manifests: Vec<String>,
    blob_links: Vec<String>,
    forgotten: bool,
}

/// The digests (second key part) a `repo\0digest` tree links, leaving out `dropped` keys.
fn linked_digests(tree: &sled::Tree, dropped: &HashSet<Vec<u8>>) -> Result<HashSet<Vec<u8>>> {
    let mut linked = HashSet::new();
    for key in tree.iter().keys() {
        let key = key?;
        if dropped.contains(key.as_ref()) {
            continue;
        }
        if let Some(at) = key.iter().position(|&b| b == 0) {
            linked.insert(key[at + 1..].to_vec());
        }
    }
    Ok(linked)
}

fn read_dir_names(dir: &Path) -> Result<Vec<String>> {
    let entries = match fs::read_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        listed => listed.context(|| format!("listing {dir:?}"))?,
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.context(|| format!("listing {dir:?}"))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    Ok(names)
}
