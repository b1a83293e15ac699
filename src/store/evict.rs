//! Staying within `storage.maxSize` and `storage.minFree`: room is made before bytes are
//! written, by evicting the least recently pulled synced tags (they can be synced again).
//!
//! The `tag_use` tree records, per tag, where it came from and when it was last pulled:
//! `repo\0tag → [origin, seconds since the epoch (u64 BE)]`. Tags pushed here are never evicted;
//! neither is anything the upstream outbox still has to push. Tags from before the data format
//! recorded their origin count as synced only on a node with a parent. A pull moves the time at
//! most once a second, and is noted in memory first (see [`super::pulls`]), so pulls stay reads.
//!
//! Room is promised, not just checked: [`Store::make_room`] returns a [`Room`] that counts its
//! bytes against the limits until the write is accounted (or given up), and one writer at a
//! time decides what to evict, so downloads and pushes running at once cannot together
//! overshoot `maxSize`, nor slip an evicted tag back in while another tag takes its place.
//!
//! Eviction removes the tag like sync's pruning does (with its change event), then the
//! manifests and blob links only that tag kept, then the blob files no repository links any
//! more, under the exclusive side of the claim lock like garbage collection.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::counters::Counters;
use super::metadata::{decode_digest, key2};
use super::Store;
use crate::config::StorageLimits;
use crate::oci::{Digest, Error, ErrorCode, RepositoryName, Result, Tag};

/// Origin byte of a tag pushed by a client of this node.
pub(super) const PUSHED_HERE: u8 = 0;
/// Origin byte of a tag mirrored from the parent.
pub(super) const SYNCED: u8 = 1;
/// Origin byte of a tag from before origins were recorded (data format 1).
pub(super) const ORIGIN_UNKNOWN: u8 = 2;

/// Bytes promised to writes in flight, and the lock under which room is decided.
#[derive(Default)]
pub(super) struct Promised {
    bytes: AtomicU64,
    deciding: tokio::sync::Mutex<()>,
}

/// Room made for a write: its bytes count against the limits until this is dropped, which the
/// writer does once the bytes are accounted as used (or the write failed).
#[must_use = "the room is given back when this is dropped"]
pub struct Room<'a> {
    store: &'a Store,
    bytes: u64,
}

impl Drop for Room<'_> {
    fn drop(&mut self) {
        self.store
            .promised
            .bytes
            .fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// A pull moves a tag's last-use time only when it is older than this.
pub(super) const PULLED_AGAIN_AFTER_SECS: u64 = 1;

pub(super) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub(super) fn encode_use(origin: u8, secs: u64) -> [u8; 9] {
    let mut v = [0u8; 9];
    v[0] = origin;
    v[1..].copy_from_slice(&secs.to_be_bytes());
    v
}

pub(super) fn decode_use(v: &[u8]) -> (u8, u64) {
    match v.split_first() {
        Some((&origin, rest)) => (origin, super::metadata::decode_u64(rest)),
        None => (ORIGIN_UNKNOWN, 0),
    }
}

impl Store {
    /// The limits blobs must stay within (applied live).
    pub fn set_storage_limits(&self, limits: StorageLimits) {
        *self
            .storage_limits
            .write()
            .unwrap_or_else(|e| e.into_inner()) = limits;
    }

    /// Whether this node has a parent, so tags of unknown origin can be synced again.
    pub fn set_has_parent(&self, has_parent: bool) {
        self.has_parent.store(has_parent, Ordering::Relaxed);
    }

    /// Bytes the blob files take, as far as known.
    pub fn used_bytes(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Format 1 → 2: every existing tag gets a use record of unknown origin, used now.
    pub(super) fn migrate_tag_use(&self) -> Result<usize> {
        let now = now_secs();
        let mut batch = sled::Batch::default();
        let mut count = 0;
        for key in self.trees.tags.iter().keys() {
            batch.insert(key?, &encode_use(ORIGIN_UNKNOWN, now));
            count += 1;
        }
        self.trees.tag_use.apply_batch(batch)?;
        Ok(count)
    }

    /// How many bytes are missing for `bytes` more to fit, and why, or `None` when they fit.
    fn shortfall(&self, bytes: u64) -> Option<(u64, String)> {
        let limits = *self
            .storage_limits
            .read()
            .unwrap_or_else(|e| e.into_inner());
        let used = self
            .used_bytes()
            .saturating_add(self.promised.bytes.load(Ordering::Relaxed));
        if let Some(max) = limits.max_size {
            if used.saturating_add(bytes) > max {
                let missing = used.saturating_add(bytes) - max;
                return Some((
                    missing,
                    format!(
                        "storing {} more would exceed storage.maxSize ({} of {} used)",
                        crate::store::usage::human_bytes(bytes),
                        crate::store::usage::human_bytes(used),
                        crate::store::usage::human_bytes(max)
                    ),
                ));
            }
        }
        if let Ok(free) = super::usage::available_bytes(&self.root) {
            let promised = self.promised.bytes.load(Ordering::Relaxed);
            let needed = bytes
                .saturating_add(promised)
                .saturating_add(limits.min_free);
            if free < needed {
                let missing = needed - free;
                return Some((missing, format!(
                    "storing {} more would leave less than storage.minFree ({}) free on the data volume ({} free)",
                    crate::store::usage::human_bytes(bytes),
                    crate::store::usage::human_bytes(limits.min_free),
                    crate::store::usage::human_bytes(free)
                )));
            }
        }
        None
    }

    /// At most how many bytes evicting every evictable synced tag could free (blobs shared
    /// between tags are counted for each, so this never falls short of the truth).
    fn evictable_bytes(&self) -> Result<u64> {
        let unknown_is_synced = self.has_parent.load(Ordering::Relaxed);
        let mut total = 0u64;
        for item in self.trees.tag_use.iter() {
            let (key, value) = item?;
            let (origin, _) = decode_use(&value);
            if !(origin == SYNCED || (origin == ORIGIN_UNKNOWN && unknown_is_synced)) {
                continue;
            }
            let Some(target) = self.trees.tags.get(&key)? else {
                continue;
            };
            let at = key.iter().position(|&b| b == 0).unwrap_or(key.len());
            let Ok(repo) = String::from_utf8_lossy(&key[..at]).parse::<RepositoryName>() else {
                continue;
            };
            let digest = decode_digest(&target)?.to_string();
            let (_, blobs) = self.live_in(&repo, &HashSet::from([digest]))?;
            for blob in blobs {
                if let Ok(blob) = blob.parse::<Digest>() {
                    total = total.saturating_add(self.blob_size(&repo, &blob)?.unwrap_or(0));
                }
            }
        }
        Ok(total)
    }

    /// Make room for `bytes` more, evicting least recently pulled synced tags as needed, and
    /// promise it to the caller until the returned [`Room`] is dropped. Fails with
    /// `INSUFFICIENT_STORAGE` (507) saying which limit holds when nothing more can go.
    pub async fn make_room(&self, bytes: u64) -> Result<Room<'_>> {
        let _deciding = self.promised.deciding.lock().await;
        // Evicting is no use when even every synced tag would not make room: keep serving them.
        if let Some((missing, why)) = self.shortfall(bytes) {
            // What was pulled since the notes were last written decides the order.
            self.write_pending_pulls()?;
            let could_free = self.evictable_bytes()?;
            if could_free < missing {
                return Err(Error::new(
                    ErrorCode::InsufficientStorage,
                    format!(
                        "{why}; evicting every synced tag would free at most {}, so none was evicted",
                        crate::store::usage::human_bytes(could_free)
                    ),
                ));
            }
        }
        let mut evicted = 0;
        while let Some((_, why)) = self.shortfall(bytes) {
            let Some((repo, tag)) = self.least_recently_pulled()? else {
                let more = if evicted > 0 {
                    format!(" after evicting {evicted} synced tag(s)")
                } else {
                    String::new()
                };
                return Err(Error::new(
                    ErrorCode::InsufficientStorage,
                    format!("{why}{more}; nothing else can be evicted (tags pushed here are kept)"),
                ));
            };
            let exclusive = self.claims.write().await;
            let freed = self.evict_tag(&repo, &tag)?;
            drop(exclusive);
            evicted += 1;
            tracing::info!(repository = %repo, %tag, freed_bytes = freed, "evicted a synced tag to stay within the storage limits");
        }
        self.promised.bytes.fetch_add(bytes, Ordering::Relaxed);
        let room = Room { store: self, bytes };
        if evicted > 0 {
            self.flush().await?;
        }
        Ok(room)
    }

    /// The synced tag pulled least recently that may be evicted.
    fn least_recently_pulled(&self) -> Result<Option<(RepositoryName, Tag)>> {
        let unknown_is_synced = self.has_parent.load(Ordering::Relaxed);
        let mut best: Option<(u64, Vec<u8>)> = None;
        let mut stale = sled::Batch::default();
        for item in self.trees.tag_use.iter() {
            let (key, value) = item?;
            let (origin, last) = decode_use(&value);
            let evictable = origin == SYNCED || (origin == ORIGIN_UNKNOWN && unknown_is_synced);
            if !evictable || best.as_ref().is_some_and(|(t, _)| *t <= last) {
                continue;
            }
            if !self.trees.tags.contains_key(&key)? {
                stale.remove(key);
                continue;
            }
            best = Some((last, key.to_vec()));
        }
        self.trees.tag_use.apply_batch(stale)?;
        let Some((_, key)) = best else {
            return Ok(None);
        };
        let at = key.iter().position(|&b| b == 0).unwrap_or(key.len());
        let repo = String::from_utf8_lossy(&key[..at]).parse::<RepositoryName>();
        let tag = String::from_utf8_lossy(key.get(at + 1..).unwrap_or_default()).parse::<Tag>();
        match (repo, tag) {
            (Ok(repo), Ok(tag)) => {
                if self.outbox_holds(repo.as_str(), Some(tag.as_str()), None)? {
                    // Waiting to go upstream: never evicted. Mark it pushed here so it is not
                    // picked again.
                    self.trees
                        .tag_use
                        .insert(&key, &encode_use(PUSHED_HERE, now_secs()))?;
                    return self.least_recently_pulled();
                }
                Ok(Some((repo, tag)))
            }
            _ => {
                self.trees.tag_use.remove(&key)?;
                self.least_recently_pulled()
            }
        }
    }

    /// Remove `tag` and what only it kept; returns the bytes of blob files deleted. The caller
    /// holds the exclusive side of the claim lock.
    fn evict_tag(&self, repo: &RepositoryName, tag: &Tag) -> Result<u64> {
        let key = key2(repo.as_str(), tag.as_str());
        let (manifests, blobs) = {
            let guard = self.locks.lock(repo);
            let Some(target) = self.trees.tags.get(&key)? else {
                self.trees.tag_use.remove(&key)?;
                return Ok(0);
            };
            let digest = decode_digest(&target)?.to_string();
            let (manifests, blobs) = self.live_in(repo, &HashSet::from([digest.clone()]))?;
            let mut size = 0u64;
            for blob in &blobs {
                if let Ok(blob) = blob.parse::<Digest>() {
                    size += self.blob_size(repo, &blob)?.unwrap_or(0);
                }
            }
            let at_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            let record = serde_json::json!({ "digest": digest, "bytes": size, "atMs": at_ms });
            self.trees
                .evicted
                .insert(&key, serde_json::to_vec(&record).unwrap_or_default())?;
            self.delete_tag_locked(&guard, repo, tag, false)?;
            self.trees.tag_use.remove(&key)?;
            // What the outbox holds stays; so does what was pushed within the grace period,
            // unless it is what this tag kept.
            let cutoff = SystemTime::now() - self.grace();
            let mut keep: HashSet<String> = self
                .recently_pushed(cutoff)?
                .remove(repo.as_str())
                .unwrap_or_default();
            keep.retain(|d| !manifests.contains(d));
            keep.extend(
                self.outbox_digests()?
                    .remove(repo.as_str())
                    .unwrap_or_default(),
            );
            self.sweep_repository(&guard, repo, &keep, cutoff, &blobs, false)?;
            (manifests, blobs)
        };
        let repos: Vec<sled::IVec> = self
            .trees
            .repos
            .iter()
            .keys()
            .collect::<std::result::Result<_, _>>()?;
        let linked_anywhere = |tree: &sled::Tree, digest: &str| -> Result<bool> {
            for name in &repos {
                if tree.contains_key(key2(&String::from_utf8_lossy(name), digest))? {
                    return Ok(true);
                }
            }
            Ok(false)
        };
        for digest in &manifests {
            if !linked_anywhere(&self.trees.manifest_links, digest)? {
                self.trees.manifests.remove(digest.as_bytes())?;
            }
        }
        let mut freed = 0;
        for digest in &blobs {
            if linked_anywhere(&self.trees.blob_links, digest)? {
                continue;
            }
            let Ok(parsed) = digest.parse::<Digest>() else {
                continue;
            };
            freed += self.files.remove(&parsed)?;
        }
        self.release(freed);
        Counters::add(&self.counters.evicted_tags, 1);
        Ok(freed)
    }

    /// Whether some synced tag was evicted and has not been synced again.
    pub fn holds_evicted_tags(&self) -> Result<bool> {
        Ok(!self.trees.evicted.is_empty())
    }

    /// Drop the eviction records made before `since` (after a pass started then synced or
    /// checked every selected tag; what it evicted itself still has to come back).
    pub fn forget_evicted_before(&self, since: SystemTime) -> Result<()> {
        let since_ms = since
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut batch = sled::Batch::default();
        for item in self.trees.evicted.iter() {
            let (key, value) = item?;
            let record: serde_json::Value = serde_json::from_slice(&value).unwrap_or_default();
            if record["atMs"].as_u64().unwrap_or(0) < since_ms {
                batch.remove(key);
            }
        }
        self.trees.evicted.apply_batch(batch)?;
        Ok(())
    }

    /// `Err(INSUFFICIENT_STORAGE)` when `tag` was evicted while pointing at `digest` and would
    /// still not fit; the record is dropped once it would (or the tag moved at the parent).
    pub async fn check_evicted(
        &self,
        repo: &RepositoryName,
        tag: &str,
        digest: &Digest,
    ) -> Result<()> {
        // Decided like room is made, so an eviction half-way (bytes freed, room not yet
        // promised to the write that evicted) is never mistaken for space.
        let _deciding = self.promised.deciding.lock().await;
        let key = key2(repo.as_str(), tag);
        let Some(value) = self.trees.evicted.get(&key)? else {
            return Ok(());
        };
        let record: serde_json::Value = serde_json::from_slice(&value).unwrap_or_default();
        let same = record["digest"].as_str() == Some(digest.to_string().as_str());
        let bytes = record["bytes"].as_u64().unwrap_or(0);
        if same {
            if let Some((_, why)) = self.shortfall(bytes) {
                return Err(Error::new(
                    ErrorCode::InsufficientStorage,
                    format!("{repo}:{tag} was evicted to stay within the storage limits and still does not fit: {why}"),
                ));
            }
        }
        self.trees.evicted.remove(&key)?;
        Ok(())
    }

    /// `bytes` of blob files were deleted.
    pub(super) fn release(&self, bytes: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                Some(u.saturating_sub(bytes))
            });
        Counters::add(&self.counters.freed_bytes, bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn room_promised_to_one_write_is_not_given_to_another() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.set_storage_limits(StorageLimits {
            max_size: Some(1000),
            min_free: 0,
        });
        let first = store.make_room(600).await.unwrap();
        let refused = store.make_room(600).await.map(|_| ()).unwrap_err();
        assert_eq!(refused.code(), ErrorCode::InsufficientStorage);
        assert!(refused.to_string().contains("storage.maxSize"), "{refused}");
        drop(first);
        // Given back (the write failed, or its bytes are now accounted as used).
        let second = store.make_room(600).await.unwrap();
        store.account(600);
        drop(second);
        assert!(store.make_room(600).await.is_err());
        assert!(store.make_room(400).await.is_ok());
    }
}
