//! The sections that govern how the node looks after itself on a small device: `storage` (how
//! much disk it may use), `garbageCollection` (when unreferenced content is freed) and `metrics`
//! (who may scrape `/metrics`). Each resolves to plain values with defaults filled in, and a bad
//! value is refused naming its field.

use std::time::Duration;

use serde::Deserialize;

use super::schedule::parse_iso_duration;
use super::ConfigError;

/// `storage`: a ceiling on what blobs may take, and a floor of free space on the data volume.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StorageConfig {
    /// Like `"20GiB"`: blobs never take more. No ceiling unless set.
    pub max_size: Option<String>,
    /// Like `"1GiB"`: free space kept on the data volume (default 256 MiB), so the metadata, the
    /// logs and the device's own system keep room to work.
    pub min_free: Option<String>,
    /// Like `"64MiB"`: memory the metadata index may keep cached (default 32 MiB; read at
    /// start). Larger keeps more of a big registry's tags and manifests in memory.
    pub metadata_cache: Option<String>,
    /// Like `"128MiB"`: memory the manifests served by tag may keep (default 64 MiB, applied
    /// live; `"0"` keeps none). It fills only with what is pulled.
    pub manifest_cache: Option<String>,
}

/// The storage limits in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageLimits {
    pub max_size: Option<u64>,
    pub min_free: u64,
}

pub const DEFAULT_MIN_FREE: u64 = 256 * 1024 * 1024;

/// The metadata index's cache unless `storage.metadataCache` says otherwise: enough for the
/// pages a busy node's writes touch (with 8 MiB, eight clients pushing manifests spent their
/// commits paging index nodes in and out; BENCHMARKS.md, "The metadata cache").
pub const DEFAULT_METADATA_CACHE: u64 = 32 * 1024 * 1024;

/// The manifests served by tag unless `storage.manifestCache` says otherwise: all of the
/// big-registry benchmark's 100,000 tags of 283-byte manifests (each counts ~270 bytes more:
/// 52 MiB), fewer of bigger ones. It is a ceiling, not a reservation: a registry of a few
/// hundred tags keeps them all in a few hundred KiB. At 32 MiB, 60 % of those tags fitted and
/// random `GET`s over them ran at half the rate of a one-tag registry (BENCHMARKS.md).
pub const DEFAULT_MANIFEST_CACHE: u64 = 64 * 1024 * 1024;

/// Below this the index would page on every lookup.
const MIN_METADATA_CACHE: u64 = 1024 * 1024;

impl Default for StorageLimits {
    fn default() -> Self {
        StorageLimits {
            max_size: None,
            min_free: DEFAULT_MIN_FREE,
        }
    }
}

impl StorageConfig {
    pub fn resolve(&self) -> Result<StorageLimits, ConfigError> {
        let max_size = self
            .max_size
            .as_deref()
            .map(|s| parse_size("storage.maxSize", s))
            .transpose()?;
        if max_size == Some(0) {
            return Err(ConfigError::Invalid {
                field: "storage.maxSize",
                rule: "must be greater than zero".to_owned(),
            });
        }
        let min_free = self
            .min_free
            .as_deref()
            .map(|s| parse_size("storage.minFree", s))
            .transpose()?
            .unwrap_or(DEFAULT_MIN_FREE);
        Ok(StorageLimits { max_size, min_free })
    }

    /// The metadata index's cache size in bytes.
    pub fn metadata_cache(&self) -> Result<u64, ConfigError> {
        let Some(text) = self.metadata_cache.as_deref() else {
            return Ok(DEFAULT_METADATA_CACHE);
        };
        let bytes = parse_size("storage.metadataCache", text)?;
        if bytes < MIN_METADATA_CACHE {
            return Err(ConfigError::Invalid {
                field: "storage.metadataCache",
                rule: format!("{text:?} is too small; give at least 1MiB"),
            });
        }
        Ok(bytes)
    }

    /// The memory the manifests served by tag may keep, in bytes.
    pub fn manifest_cache(&self) -> Result<u64, ConfigError> {
        self.manifest_cache
            .as_deref()
            .map_or(Ok(DEFAULT_MANIFEST_CACHE), |text| {
                parse_size("storage.manifestCache", text)
            })
    }
}

/// A size like `20GiB`, `500MB`, `1048576`.
pub fn parse_size(field: &'static str, text: &str) -> Result<u64, ConfigError> {
    text.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|_| ConfigError::Invalid {
            field,
            rule: format!(
                "{text:?} is not a size; give bytes with an optional unit, e.g. \"20GiB\", \"500MB\" or \"1048576\""
            ),
        })
}

/// `garbageCollection`: on by default, once a day at 03:00 UTC (as ACR's).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GarbageCollectionConfig {
    #[serde(default = "enabled")]
    pub enabled: bool,
    /// Cron expression, UTC: 5 fields, or 6 with seconds first.
    #[serde(default = "default_gc_schedule")]
    pub schedule: String,
    /// Content written or claimed more recently than this is never collected, so a push whose
    /// manifest has not arrived yet keeps its blobs (ISO-8601, `PT0S` – `P1D`, default `PT1H`).
    #[serde(default = "default_grace_period")]
    pub grace_period: String,
}

impl Default for GarbageCollectionConfig {
    fn default() -> Self {
        GarbageCollectionConfig {
            enabled: true,
            schedule: default_gc_schedule(),
            grace_period: default_grace_period(),
        }
    }
}

fn enabled() -> bool {
    true
}

fn default_gc_schedule() -> String {
    "0 3 * * *".to_owned()
}

fn default_grace_period() -> String {
    "PT1H".to_owned()
}

/// The garbage collection settings in force.
#[derive(Debug, Clone)]
pub struct GarbageCollection {
    /// `None`: only on demand (`connected-registry gc`, the `gc` direct method).
    pub schedule: Option<croner::Cron>,
    pub grace_period: Duration,
}

const MAX_GRACE_PERIOD: Duration = Duration::from_secs(24 * 60 * 60);

impl GarbageCollectionConfig {
    pub fn resolve(&self) -> Result<GarbageCollection, ConfigError> {
        let grace_period = parse_iso_duration("garbageCollection.gracePeriod", &self.grace_period)?;
        if grace_period > MAX_GRACE_PERIOD {
            return Err(ConfigError::Invalid {
                field: "garbageCollection.gracePeriod",
                rule: format!("{:?} must be at most P1D", self.grace_period),
            });
        }
        let normalized = self
            .schedule
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        let cron = croner::Cron::new(&normalized)
            .with_seconds_optional()
            .parse()
            .map_err(|e| ConfigError::Invalid {
                field: "garbageCollection.schedule",
                rule: format!(
                    "{:?} is not a valid cron expression (minute hour day-of-month month day-of-week, UTC, optionally seconds first): {e}",
                    self.schedule
                ),
            })?;
        Ok(GarbageCollection {
            schedule: self.enabled.then_some(cron),
            grace_period,
        })
    }
}

/// `metrics`: `/metrics` asks for credentials (any client or sync token) unless `anonymous`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MetricsConfig {
    /// Let scrapers read `/metrics` without credentials.
    #[serde(default)]
    pub anonymous: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_schedules_resolve_or_are_refused_by_field() {
        let s = StorageConfig {
            max_size: Some("20GiB".into()),
            min_free: Some("1GiB".into()),
            metadata_cache: Some("64MiB".into()),
            manifest_cache: Some("0".into()),
        };
        let limits = s.resolve().unwrap();
        assert_eq!(limits.max_size, Some(20 << 30));
        assert_eq!(limits.min_free, 1 << 30);
        assert_eq!(
            StorageConfig::default().resolve().unwrap(),
            StorageLimits::default()
        );
        assert_eq!(s.metadata_cache().unwrap(), 64 << 20);
        assert_eq!(
            StorageConfig::default().metadata_cache().unwrap(),
            DEFAULT_METADATA_CACHE
        );
        assert_eq!(s.manifest_cache().unwrap(), 0);
        assert_eq!(
            StorageConfig::default().manifest_cache().unwrap(),
            DEFAULT_MANIFEST_CACHE
        );
        let bad = StorageConfig {
            manifest_cache: Some("plenty".into()),
            ..Default::default()
        };
        let e = bad.manifest_cache().unwrap_err().to_string();
        assert!(e.contains("storage.manifestCache"), "{e}");
        let bad = StorageConfig {
            max_size: Some("lots".into()),
            ..Default::default()
        };
        assert!(bad
            .resolve()
            .unwrap_err()
            .to_string()
            .contains("storage.maxSize"));
        for (text, says) in [("some", "not a size"), ("512KiB", "too small")] {
            let bad = StorageConfig {
                metadata_cache: Some(text.into()),
                ..Default::default()
            };
            let e = bad.metadata_cache().unwrap_err().to_string();
            assert!(
                e.contains("storage.metadataCache") && e.contains(says),
                "{e}"
            );
        }

        let gc = GarbageCollectionConfig::default().resolve().unwrap();
        assert!(gc.schedule.is_some());
        assert_eq!(gc.grace_period, Duration::from_secs(3600));
        let off = GarbageCollectionConfig {
            enabled: false,
            ..Default::default()
        };
        assert!(off.resolve().unwrap().schedule.is_none());
        let bad = GarbageCollectionConfig {
            schedule: "every day".into(),
            ..Default::default()
        };
        assert!(bad
            .resolve()
            .unwrap_err()
            .to_string()
            .contains("garbageCollection.schedule"));
        let long = GarbageCollectionConfig {
            grace_period: "P2D".into(),
            ..Default::default()
        };
        assert!(long
            .resolve()
            .unwrap_err()
            .to_string()
            .contains("gracePeriod"));
    }
}
