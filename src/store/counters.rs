//! Running totals of what the store has done since the process started, for `/metrics`: bytes
//! freed by garbage collection, tags evicted to stay within the storage limit, and bytes
//! mirrored from the parent. Plain atomics, so reading them costs nothing.

use std::sync::atomic::{AtomicU64, Ordering};

use super::Store;

#[derive(Debug, Default)]
pub(super) struct Counters {
    pub freed_bytes: AtomicU64,
    pub evicted_tags: AtomicU64,
    pub synced_bytes: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

impl Store {
    /// Bytes of blob files garbage collection and eviction removed since the start.
    pub fn freed_bytes_total(&self) -> u64 {
        self.counters.freed_bytes.load(Ordering::Relaxed)
    }

    /// Synced tags evicted to stay within the storage limit since the start.
    pub fn evictions_total(&self) -> u64 {
        self.counters.evicted_tags.load(Ordering::Relaxed)
    }

    /// Blob bytes mirrored from the parent since the start.
    pub fn synced_bytes_total(&self) -> u64 {
        self.counters.synced_bytes.load(Ordering::Relaxed)
    }
}
