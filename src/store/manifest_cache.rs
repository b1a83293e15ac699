//! Manifests served by tag, kept in memory so a pulled tag is answered without the index.
//!
//! A `GET` by tag reads two entries of the metadata index (the tag, then the manifest record).
//! In a big registry (100,000 tags, an index far larger than sled's cache) each is a page read
//! and a decode, and even with the whole index cached the lookups (and the pull notes they
//! lead to) cost more than the rest of the request: a random `GET` over 100,000 tags cost the
//! node 23.5 µs of CPU against 10.9 µs for a registry of one tag (BENCHMARKS.md, "Manifests by
//! tag from memory"). This cache maps a tag to what the `GET` answers (digest, media type,
//! bytes), least recently used out first, within `storage.manifestCache` bytes (applied live;
//! 0 turns it off).
//!
//! Only manifests whose bytes name their media type are kept: their record never changes, so
//! an entry stays true for as long as its tag names the same manifest. Every write that moves
//! or removes a tag forgets it once committed (the manifest commit, tag and manifest deletes,
//! a repository leaving the sync). A lookup that missed fills the cache only if no tag of its
//! shard was forgotten since it began: each shard counts its forgets, and the count is read
//! before the index and compared again, under the shard's lock, as the entry goes in. So a
//! reader that read the index before a write committed cannot put the old answer back after
//! the write forgot it.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use lru::LruCache;

use super::StoredManifest;

/// Shards, each behind its own lock, so concurrent `GET`s rarely wait for each other.
const SHARDS: usize = 16;

/// What an entry costs beyond its key, bytes and digest: the LRU's node and hash slot, the
/// `Bytes` and `Digest` headers (counted high, so the budget bounds the real memory).
const ENTRY_OVERHEAD: u64 = 192;

pub(super) struct ManifestCache {
    shards: Box<[Mutex<Shard>]>,
    hasher: RandomState,
    /// The budget of each shard (bytes).
    shard_budget: AtomicU64,
}

struct Shard {
    /// Tags of this shard forgotten so far.
    forgets: u64,
    /// Lookups answered from memory, and not, so far (for `/metrics`).
    hits: u64,
    misses: u64,
    /// Weight of the entries (bytes, see [`weight_of`]).
    weight: u64,
    entries: LruCache<Vec<u8>, Cached>,
}

struct Cached {
    manifest: StoredManifest,
    /// Whether a pull of the tag is noted (see [`super::pulls`]): not for tags pushed here.
    note_pulls: bool,
}

/// What the cache holds and how it has served, summed over its shards.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ManifestCacheUsage {
    pub entries: usize,
    /// What the entries count for against the budget (bytes).
    pub bytes: u64,
    pub hits: u64,
    pub misses: u64,
}

/// A lookup's outcome: the manifest, or what a fill after reading the index must present.
pub(super) enum Lookup {
    Hit {
        manifest: StoredManifest,
        note_pulls: bool,
    },
    Miss(Ticket),
}

/// The shard a missed key belongs to and its forget count when the lookup began.
pub(super) struct Ticket {
    shard: usize,
    forgets: u64,
}

impl ManifestCache {
    pub fn new(budget: u64) -> ManifestCache {
        ManifestCache {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        forgets: 0,
                        hits: 0,
                        misses: 0,
                        weight: 0,
                        entries: LruCache::unbounded(),
                    })
                })
                .collect(),
            hasher: RandomState::new(),
            shard_budget: AtomicU64::new(budget / SHARDS as u64),
        }
    }

    /// The manifest `key` (`repo\0tag`) names, if cached; otherwise a ticket for [`Self::fill`].
    pub fn get(&self, key: &[u8]) -> Lookup {
        let index = self.shard_of(key);
        let mut shard = self.lock(index);
        if let Some(cached) = shard.entries.get(key) {
            let hit = Lookup::Hit {
                manifest: cached.manifest.clone(),
                note_pulls: cached.note_pulls,
            };
            shard.hits += 1;
            return hit;
        }
        shard.misses += 1;
        Lookup::Miss(Ticket {
            shard: index,
            forgets: shard.forgets,
        })
    }

    /// Keep `manifest` as what `key` names, unless a tag of its shard was forgotten since the
    /// lookup that gave `ticket` (the index it read may be older than that write).
    pub fn fill(&self, key: &[u8], ticket: Ticket, manifest: &StoredManifest, note_pulls: bool) {
        let budget = self.shard_budget.load(Ordering::Relaxed);
        let weight = weight_of(key, manifest);
        if weight > budget {
            return;
        }
        let mut shard = self.lock(ticket.shard);
        if shard.forgets != ticket.forgets {
            return;
        }
        let cached = Cached {
            manifest: manifest.clone(),
            note_pulls,
        };
        if let Some(old) = shard.entries.put(key.to_vec(), cached) {
            shard.weight -= weight_of(key, &old.manifest);
        }
        shard.weight += weight;
        shard.shrink_to(budget);
    }

    /// `key`'s tag was moved or removed (call once the write has committed).
    pub fn forget(&self, key: &[u8]) {
        let mut shard = self.lock(self.shard_of(key));
        shard.forgets += 1;
        if let Some(old) = shard.entries.pop(key) {
            shard.weight -= weight_of(key, &old.manifest);
        }
    }

    /// Whether anything may be kept (`storage.manifestCache` is not 0).
    pub fn is_on(&self) -> bool {
        self.shard_budget.load(Ordering::Relaxed) > 0
    }

    /// Change the budget (`storage.manifestCache`), dropping what no longer fits.
    pub fn set_budget(&self, budget: u64) {
        let per_shard = budget / SHARDS as u64;
        self.shard_budget.store(per_shard, Ordering::Relaxed);
        for index in 0..SHARDS {
            let mut shard = self.lock(index);
            shard.shrink_to(per_shard);
            if shard.entries.is_empty() {
                // Its table keeps the size it grew to: turned off, the memory goes back.
                shard.entries = LruCache::unbounded();
            }
        }
    }

    /// What the shards hold and how their lookups went.
    pub fn usage(&self) -> ManifestCacheUsage {
        (0..SHARDS).fold(ManifestCacheUsage::default(), |sum, index| {
            let shard = self.lock(index);
            ManifestCacheUsage {
                entries: sum.entries + shard.entries.len(),
                bytes: sum.bytes + shard.weight,
                hits: sum.hits + shard.hits,
                misses: sum.misses + shard.misses,
            }
        })
    }

    fn shard_of(&self, key: &[u8]) -> usize {
        (self.hasher.hash_one(key) % SHARDS as u64) as usize
    }

    fn lock(&self, index: usize) -> MutexGuard<'_, Shard> {
        // Every change to a shard leaves it whole, so a panic elsewhere poisons nothing real.
        self.shards[index]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Shard {
    fn shrink_to(&mut self, budget: u64) {
        while self.weight > budget {
            match self.entries.pop_lru() {
                Some((key, old)) => self.weight -= weight_of(&key, &old.manifest),
                None => break,
            }
        }
    }
}

fn weight_of(key: &[u8], manifest: &StoredManifest) -> u64 {
    (key.len() + manifest.bytes.len() + manifest.digest.hex().len()) as u64 + ENTRY_OVERHEAD
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::MediaType;
    use bytes::Bytes;

    fn manifest(bytes: &'static [u8]) -> StoredManifest {
        StoredManifest {
            digest: crate::oci::Digest::sha256_of(bytes),
            media_type: MediaType::OciManifest,
            bytes: Bytes::from_static(bytes),
        }
    }

    fn hit(cache: &ManifestCache, key: &[u8]) -> Option<Bytes> {
        match cache.get(key) {
            Lookup::Hit { manifest, .. } => Some(manifest.bytes),
            Lookup::Miss(_) => None,
        }
    }

    fn ticket(cache: &ManifestCache, key: &[u8]) -> Ticket {
        match cache.get(key) {
            Lookup::Hit { .. } => panic!("{key:?} was cached"),
            Lookup::Miss(ticket) => ticket,
        }
    }

    #[test]
    fn a_fill_begun_before_a_forget_does_not_bring_the_old_answer_back() {
        let cache = ManifestCache::new(1 << 20);
        let (key, other) = (b"a/b\0t".as_slice(), b"a/b\0u".as_slice());
        let before_write = ticket(&cache, key);
        cache.forget(key);
        cache.fill(key, before_write, &manifest(b"old"), true);
        assert_eq!(hit(&cache, key), None, "the old answer came back");
        let after_write = ticket(&cache, key);
        cache.fill(key, after_write, &manifest(b"new"), true);
        assert_eq!(hit(&cache, key).as_deref(), Some(&b"new"[..]));
        cache.forget(key);
        assert_eq!(hit(&cache, key), None, "a forgotten tag is still answered");
        // A tag in the same shard forgotten meanwhile also turns the fill away.
        let shard_of_key = cache.shard_of(key);
        let same_shard = (0..10_000u32)
            .map(|i| format!("a/b\0x{i}").into_bytes())
            .find(|k| cache.shard_of(k) == shard_of_key)
            .unwrap();
        let stale = ticket(&cache, key);
        cache.forget(&same_shard);
        cache.fill(key, stale, &manifest(b"new"), true);
        assert_eq!(hit(&cache, key), None);
        assert_eq!(hit(&cache, other), None);
    }

    #[test]
    fn the_budget_bounds_the_entries_least_recently_used_out_first() {
        let entry = weight_of(b"r\0t000", &manifest(b"0123456789"));
        let cache = ManifestCache::new(entry * 4 * SHARDS as u64);
        let keys: Vec<Vec<u8>> = (0..400)
            .map(|i| format!("r\0t{i:03}").into_bytes())
            .collect();
        for key in &keys {
            let t = ticket(&cache, key);
            cache.fill(key, t, &manifest(b"0123456789"), true);
            let usage = cache.usage();
            assert!(
                usage.bytes <= entry * 4 * SHARDS as u64,
                "{usage:?} over budget"
            );
            assert_eq!(usage.bytes, usage.entries as u64 * entry);
        }
        // Each shard holds its four most recent keys.
        let held: Vec<&Vec<u8>> = keys.iter().filter(|k| hit(&cache, k).is_some()).collect();
        assert_eq!(held.len(), 4 * SHARDS);
        for shard in 0..SHARDS {
            let in_shard: Vec<&Vec<u8>> =
                keys.iter().filter(|k| cache.shard_of(k) == shard).collect();
            let newest = &in_shard[in_shard.len() - 4..];
            assert!(
                newest.iter().all(|k| held.contains(k)),
                "shard {shard} lost a recent key"
            );
        }
        cache.set_budget(0);
        assert_eq!((cache.usage().entries, cache.usage().bytes), (0, 0));
        let t = ticket(&cache, &keys[0]);
        cache.fill(&keys[0], t, &manifest(b"0123456789"), true);
        assert_eq!(cache.usage().bytes, 0, "a cache of 0 bytes keeps nothing");
    }
}
