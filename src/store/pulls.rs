//! Pulls noted in memory and written to the `tag_use` tree in batches.
//!
//! Eviction needs to know when each synced tag was last pulled (see [`super::evict`]), but a
//! pull is a read. Looking the tag's use record up on every `GET` by tag was one of the four
//! index lookups a manifest `GET` made, and over a big registry (100,000 tags, a metadata
//! index larger than its cache) each lookup is a page read. A pull now only notes the tag and
//! the time in a bounded, sorted map. The notes are written (the record read, and replaced
//! when the time moved and the tag is not one pushed here) in key order, so each page of the
//! index is read once for all the notes on it: before eviction decides, every few seconds in
//! the background or as soon as [`WRITE_AT`] tags wait, and when the store closes. When the
//! map is full, a pull writes its own note at once, as every pull did before.
//!
//! A crash loses at most the notes of the last few seconds, as sled's own unflushed writes
//! always could: a tag then merely looks less recently pulled than it was.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::evict::{decode_use, encode_use, now_secs, PULLED_AGAIN_AFTER_SECS, PUSHED_HERE};
use super::Store;
use crate::oci::Result;

/// The background task writes the notes as soon as this many tags wait.
const WRITE_AT: usize = 16_384;

/// At most this many tags' pulls wait in memory (~100 bytes each).
pub(super) const MAX_PENDING_PULLS: usize = 2 * WRITE_AT;

/// How often the background task writes the notes.
const WRITE_EVERY: Duration = Duration::from_secs(5);

#[derive(Default)]
pub(super) struct PendingPulls {
    /// Tag key (`repo\0tag`) → when it was last pulled (seconds since the epoch).
    notes: Mutex<BTreeMap<Vec<u8>, u64>>,
    /// Wakes the background writer when [`WRITE_AT`] tags wait.
    many: Arc<tokio::sync::Notify>,
    /// Held while notes are written, so eviction waits for notes another thread took.
    writing: Mutex<()>,
}

impl PendingPulls {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Vec<u8>, u64>> {
        self.notes.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Store {
    /// Note a pull of the tag `key` (`repo\0tag`) names, for eviction's least-recently-pulled
    /// order.
    pub(super) fn note_pull_of(&self, key: Vec<u8>) {
        let now = now_secs();
        {
            let mut notes = self.pending_pulls.lock();
            if notes.len() < MAX_PENDING_PULLS || notes.contains_key(&key) {
                notes.insert(key, now);
                if notes.len() == WRITE_AT {
                    self.pending_pulls.many.notify_one();
                }
                return;
            }
        }
        if let Err(e) = self.write_pull(&key, now) {
            tracing::warn!(error = %e, "recording a pull failed");
        }
    }

    /// Write every noted pull to `tag_use`, and wait for notes another thread is writing;
    /// returns how many this call wrote.
    pub(super) fn write_pending_pulls(&self) -> Result<usize> {
        let _writing = self
            .pending_pulls
            .writing
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let notes = std::mem::take(&mut *self.pending_pulls.lock());
        let noted = notes.len();
        for (key, at) in notes {
            self.write_pull(&key, at)?;
        }
        Ok(noted)
    }

    /// Whether pulls of the tag at `key` move its use record: it has one, and the tag was not
    /// pushed here (see [`Store::write_pull`]). Only a write of the tag changes that.
    pub(super) fn pulls_are_recorded(&self, key: &[u8]) -> Result<bool> {
        Ok(self
            .trees
            .tag_use
            .get(key)?
            .is_some_and(|value| decode_use(&value).0 != PUSHED_HERE))
    }

    /// Move the last-pull time of the tag at `key` to `at`, unless it was pushed here, is gone,
    /// or the time moved less than [`PULLED_AGAIN_AFTER_SECS`].
    fn write_pull(&self, key: &[u8], at: u64) -> Result<()> {
        let Some(value) = self.trees.tag_use.get(key)? else {
            return Ok(());
        };
        let (origin, last) = decode_use(&value);
        if origin != PUSHED_HERE && at.saturating_sub(last) >= PULLED_AGAIN_AFTER_SECS {
            // Only over the record just read: a push of the tag meanwhile made it one pushed
            // here, and that must stay. A lost race only loses this pull's time.
            let new = encode_use(origin, at);
            let _ = self
                .trees
                .tag_use
                .compare_and_swap(key, Some(&value), Some(&new[..]))?;
        }
        Ok(())
    }

    /// Write the noted pulls every [`WRITE_EVERY`], or when [`WRITE_AT`] wait, while the store
    /// is open (when it was opened inside a Tokio runtime; otherwise they are written when
    /// eviction decides or the store closes).
    pub(super) fn spawn_pull_writer(self: &Arc<Self>) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let store = Arc::downgrade(self);
        let many = self.pending_pulls.many.clone();
        handle.spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(WRITE_EVERY) => {}
                    _ = many.notified() => {}
                }
                let Some(open) = store.upgrade() else {
                    return;
                };
                if open.pending_pulls.lock().is_empty() {
                    continue;
                }
                let written = tokio::task::spawn_blocking(move || open.write_pending_pulls()).await;
                if let Ok(Err(e)) = written {
                    tracing::warn!(error = %e, "recording pulls failed");
                }
            }
        });
    }
}

impl Drop for Store {
    /// The last seconds' notes are written as the store closes (sled flushes its log as the
    /// trees go, right after).
    fn drop(&mut self) {
        if let Err(e) = self.write_pending_pulls() {
            tracing::warn!(error = %e, "recording pulls failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StorageLimits;
    use crate::oci::{ErrorCode, RepositoryName};
    use crate::store::evict::SYNCED;
    use crate::store::metadata::key2;

    fn note_pull(store: &Store, repo: &RepositoryName, tag: &str) {
        store.note_pull_of(key2(repo.as_str(), tag));
    }

    fn last_pull(store: &Store, key: &[u8]) -> (u8, u64) {
        decode_use(&store.trees.tag_use.get(key).unwrap().unwrap())
    }

    fn pulled_long_ago(store: &Store, key: &[u8], origin: u8) {
        store
            .trees
            .tag_use
            .insert(key, &encode_use(origin, 5))
            .unwrap();
    }

    fn pulled_just_now(store: &Store, key: &[u8]) -> bool {
        last_pull(store, key).1 >= now_secs() - 5
    }

    /// A pull is noted, not written; it is written by the next batch, before eviction decides,
    /// and when the store closes. Tags pushed here keep their record.
    #[tokio::test]
    async fn pulls_are_noted_then_written_before_eviction_decides_and_at_close() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let repo: RepositoryName = "r/s".parse().unwrap();
        let synced = key2("r/s", "synced");
        let pushed = key2("r/s", "pushed");
        pulled_long_ago(&store, &synced, SYNCED);
        pulled_long_ago(&store, &pushed, PUSHED_HERE);

        note_pull(&store, &repo, "synced");
        note_pull(&store, &repo, "pushed");
        note_pull(&store, &repo, "never-tagged");
        assert_eq!(
            last_pull(&store, &synced),
            (SYNCED, 5),
            "a pull wrote at once"
        );
        assert_eq!(store.write_pending_pulls().unwrap(), 3);
        assert_eq!(last_pull(&store, &synced).0, SYNCED);
        assert!(pulled_just_now(&store, &synced));
        assert_eq!(last_pull(&store, &pushed), (PUSHED_HERE, 5));
        assert!(store
            .trees
            .tag_use
            .get(key2("r/s", "never-tagged"))
            .unwrap()
            .is_none());
        assert_eq!(store.write_pending_pulls().unwrap(), 0);

        // Eviction writes what was noted before it looks for the least recently pulled tag.
        pulled_long_ago(&store, &synced, SYNCED);
        note_pull(&store, &repo, "synced");
        store.set_storage_limits(StorageLimits {
            max_size: Some(0),
            min_free: 0,
        });
        let refused = store.make_room(1).await.map(|_| ()).unwrap_err();
        assert_eq!(refused.code(), ErrorCode::InsufficientStorage);
        assert!(pulled_just_now(&store, &synced));

        // Closing the store writes the last notes.
        pulled_long_ago(&store, &synced, SYNCED);
        note_pull(&store, &repo, "synced");
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert!(pulled_just_now(&store, &synced));
    }

    /// The notes are bounded: once the map is full, a pull of a tag not in it is written at once.
    #[tokio::test]
    async fn once_the_notes_are_full_a_pull_is_written_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let repo: RepositoryName = "r/s".parse().unwrap();
        for i in 0..MAX_PENDING_PULLS {
            note_pull(&store, &repo, &format!("t{i}"));
        }
        let synced = key2("r/s", "synced");
        pulled_long_ago(&store, &synced, SYNCED);
        note_pull(&store, &repo, "synced");
        assert!(pulled_just_now(&store, &synced));
        assert_eq!(store.pending_pulls.lock().len(), MAX_PENDING_PULLS);
        // A tag already noted is noted again, not written.
        let noted = key2("r/s", "t0");
        pulled_long_ago(&store, &noted, SYNCED);
        note_pull(&store, &repo, "t0");
        assert_eq!(last_pull(&store, &noted), (SYNCED, 5), "written at once");
        assert_eq!(store.pending_pulls.lock().len(), MAX_PENDING_PULLS);
    }
}
