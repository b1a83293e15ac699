//! Which content a node keeps: repository names and patterns, tag regexes and platforms from
//! `parent.sync`, compiled once.

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use regex::Regex;

use crate::config::{ConfigError, SyncConfig};

#[derive(Debug, Clone)]
pub struct Selection {
    exact: Vec<String>,
    patterns: Option<GlobSet>,
    include: Option<Regex>,
    exclude: Option<Regex>,
    platforms: Vec<Platform>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Selection {
    pub fn new(sync: &SyncConfig) -> Result<Selection, ConfigError> {
        let mut exact = Vec::new();
        let mut globs = GlobSetBuilder::new();
        let mut any_glob = false;
        for entry in &sync.repositories {
            if entry.contains(['*', '?', '[', '{']) {
                let glob = GlobBuilder::new(entry)
                    .literal_separator(true)
                    .build()
                    .map_err(|e| ConfigError::Invalid {
                        field: "parent.sync.repositories",
                        rule: format!("{entry:?} is not a valid pattern: {e}"),
                    })?;
                globs.add(glob);
                any_glob = true;
            } else {
                entry
                    .parse::<crate::oci::RepositoryName>()
                    .map_err(|e| ConfigError::Invalid {
                        field: "parent.sync.repositories",
                        rule: e.to_string(),
                    })?;
                exact.push(entry.clone());
            }
        }
        let patterns = if any_glob {
            Some(globs.build().map_err(|e| ConfigError::Invalid {
                field: "parent.sync.repositories",
                rule: e.to_string(),
            })?)
        } else {
            None
        };
        let regex = |field, pattern: &Option<String>| -> Result<Option<Regex>, ConfigError> {
            pattern
                .as_deref()
                .map(|p| {
                    Regex::new(p).map_err(|e| ConfigError::Invalid {
                        field,
                        rule: format!("{p:?} is not a valid regular expression: {e}"),
                    })
                })
                .transpose()
        };
        let tags = sync.tags.clone().unwrap_or(crate::config::TagFilter {
            include: None,
            exclude: None,
        });
        let platforms = sync
            .platforms
            .iter()
            .map(|p| {
                let parts: Vec<&str> = p.split('/').collect();
                match parts.as_slice() {
                    [os, arch] | [os, arch, _] if !os.is_empty() && !arch.is_empty() => {
                        Ok(Platform {
                            os: os.to_string(),
                            architecture: arch.to_string(),
                            variant: parts.get(2).map(|v| v.to_string()),
                        })
                    }
                    _ => Err(ConfigError::Invalid {
                        field: "parent.sync.platforms",
                        rule: format!("{p:?} must be os/architecture[/variant], like linux/arm64"),
                    }),
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(Selection {
            exact,
            patterns,
            include: regex("parent.sync.tags.include", &tags.include)?,
            exclude: regex("parent.sync.tags.exclude", &tags.exclude)?,
            platforms,
        })
    }

    /// Names given exactly (they are synced even when the parent has no catalog).
    pub fn exact_names(&self) -> &[String] {
        &self.exact
    }

    pub fn has_patterns(&self) -> bool {
        self.patterns.is_some()
    }

    pub fn matches_repository(&self, name: &str) -> bool {
        self.exact.iter().any(|e| e == name)
            || self.patterns.as_ref().is_some_and(|p| p.is_match(name))
    }

    pub fn matches_tag(&self, tag: &str) -> bool {
        self.include.as_ref().is_none_or(|r| r.is_match(tag))
            && !self.exclude.as_ref().is_some_and(|r| r.is_match(tag))
    }

    /// Whether a child manifest of an index with this platform is kept (no list = all).
    pub fn matches_platform(&self, os: &str, architecture: &str, variant: Option<&str>) -> bool {
        self.platforms.is_empty()
            || self.platforms.iter().any(|p| {
                p.os == os
                    && p.architecture == architecture
                    && (p.variant.is_none() || p.variant.as_deref() == variant)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selection(repos: &[&str], include: Option<&str>, exclude: Option<&str>) -> Selection {
        let sync = SyncConfig {
            repositories: repos.iter().map(|s| s.to_string()).collect(),
            tags: Some(crate::config::TagFilter {
                include: include.map(str::to_owned),
                exclude: exclude.map(str::to_owned),
            }),
            platforms: vec!["linux/arm64".into(), "linux/arm/v7".into()],
            ..SyncConfig::default()
        };
        Selection::new(&sync).unwrap()
    }

    #[test]
    fn repositories_tags_and_platforms() {
        let s = selection(
            &["hello-world", "apps/*", "deep/**"],
            Some("^v"),
            Some("-rc"),
        );
        assert!(s.matches_repository("hello-world"));
        assert!(s.matches_repository("apps/web"));
        assert!(!s.matches_repository("apps/web/api"));
        assert!(s.matches_repository("deep/a/b/c"));
        assert!(!s.matches_repository("other"));
        assert!(s.matches_tag("v1.0"));
        assert!(!s.matches_tag("v1.0-rc1"));
        assert!(!s.matches_tag("latest"));
        assert!(s.matches_platform("linux", "arm64", Some("v8")));
        assert!(s.matches_platform("linux", "arm", Some("v7")));
        assert!(!s.matches_platform("linux", "arm", Some("v6")));
        assert!(!s.matches_platform("linux", "amd64", None));
    }
}
