//! The values read at scrape time from the store and the status model rather than counted as
//! requests flow: they already live there (the store's running totals, the status model's sync
//! times), so each scrape copies them into a registry of constant metrics of its own.

use chrono::{DateTime, Utc};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

/// One scrape's reading of the node.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeValues {
    /// Seconds since the last successful sync pass ended. `None` (the metric is not exported)
    /// on a root, which has nothing to sync, and on a child before its first successful sync:
    /// alert on `absent(connected_registry_sync_lag_seconds)` for children that never synced.
    pub sync_lag_seconds: Option<f64>,
    /// Blob bytes mirrored from the parent since the start.
    pub synced_bytes: u64,
    /// Entries waiting in the upstream outbox.
    pub outbox_depth: u64,
    /// Bytes of blob files.
    pub storage_used_bytes: u64,
    /// Bytes free for the data directory; `None` when it could not be measured.
    pub storage_free_bytes: Option<u64>,
    /// Blob bytes freed by garbage collection and eviction since the start.
    pub gc_freed_bytes: u64,
    /// Synced tags evicted to stay within the storage limit since the start.
    pub evictions: u64,
    /// The manifests served by tag that are kept in memory, and how lookups were served.
    pub manifest_cache: crate::store::ManifestCacheUsage,
    /// Children whose latest report says they are connected (`Online` or `Syncing`); `None`
    /// when they could not be listed.
    pub connected_children: Option<u64>,
}

impl NodeValues {
    /// The sync lag at `now` of a node whose last successful sync ended at `last_success`.
    pub fn sync_lag(
        has_parent: bool,
        last_success: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) -> Option<f64> {
        let last = last_success.filter(|_| has_parent)?;
        // A clock stepped back reads as no lag rather than a negative one.
        Some(((now - last).num_milliseconds().max(0) as f64) / 1000.0)
    }

    /// These values as constant metrics, named with [`super::PREFIX`].
    pub(super) fn registry(&self) -> Registry {
        let mut r = Registry::with_prefix(super::PREFIX);
        if let Some(lag) = self.sync_lag_seconds {
            r.register_with_unit(
                "sync_lag",
                "Seconds since the last successful sync with the parent ended (absent on a root and before the first success)",
                Unit::Seconds,
                ConstGauge::new(lag),
            );
        }
        r.register_with_unit(
            "sync",
            "Blob bytes mirrored from the parent since the process started",
            Unit::Bytes,
            ConstCounter::new(self.synced_bytes),
        );
        r.register(
            "outbox_depth",
            "Local pushes and deletes waiting to be replayed to the parent",
            ConstGauge::new(self.outbox_depth),
        );
        r.register_with_unit(
            "storage_used",
            "Bytes of blob files in the data directory",
            Unit::Bytes,
            ConstGauge::new(self.storage_used_bytes),
        );
        if let Some(free) = self.storage_free_bytes {
            r.register_with_unit(
                "storage_free",
                "Bytes available on the filesystem of the data directory",
                Unit::Bytes,
                ConstGauge::new(free),
            );
        }
        r.register_with_unit(
            "gc_freed",
            "Blob bytes freed by garbage collection and eviction since the process started",
            Unit::Bytes,
            ConstCounter::new(self.gc_freed_bytes),
        );
        r.register(
            "evictions",
            "Synced tags evicted to stay within the storage limit since the process started",
            ConstCounter::new(self.evictions),
        );
        r.register(
            "manifest_cache_hits",
            "Manifest lookups by tag answered from memory since the process started",
            ConstCounter::new(self.manifest_cache.hits),
        );
        r.register(
            "manifest_cache_misses",
            "Manifest lookups by tag that read the metadata index since the process started",
            ConstCounter::new(self.manifest_cache.misses),
        );
        r.register_with_unit(
            "manifest_cache",
            "What the manifests kept in memory count for against storage.manifestCache",
            Unit::Bytes,
            ConstGauge::new(self.manifest_cache.bytes),
        );
        if let Some(children) = self.connected_children {
            r.register(
                "connected_children",
                "Child registries whose latest status report says they are Online or Syncing",
                ConstGauge::new(children),
            );
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_only_for_a_child_that_has_synced() {
        let now = Utc::now();
        let before = now - chrono::Duration::milliseconds(2500);
        assert_eq!(NodeValues::sync_lag(true, Some(before), now), Some(2.5));
        assert_eq!(NodeValues::sync_lag(false, Some(before), now), None);
        assert_eq!(NodeValues::sync_lag(true, None, now), None);
        let later = now + chrono::Duration::seconds(5);
        assert_eq!(NodeValues::sync_lag(true, Some(later), now), Some(0.0));
    }
}
