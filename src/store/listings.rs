//! Listings over the store: repositories, tags, referrers and change events, each in key order,
//! paged by the caller so no answer has to hold more than one page.

use super::metadata::{self, key2, key3};
use super::{ChangeEvent, Store};
use crate::oci::manifest::ReferrerDescriptor;
use crate::oci::{Digest, Error, ErrorCode, RepositoryName, Result};

impl Store {
    pub fn repository_exists(&self, repo: &RepositoryName) -> Result<bool> {
        Ok(self.trees.repos.contains_key(repo.as_str())?)
    }

    /// Tags of `repo` in lexical order, at most `n`, after `last`.
    pub fn list_tags(
        &self,
        repo: &RepositoryName,
        n: Option<usize>,
        last: Option<&str>,
    ) -> Result<Vec<String>> {
        if !self.repository_exists(repo)? {
            return Err(Error::new(
                ErrorCode::NameUnknown,
                format!("repository {repo} is not known to this registry"),
            ));
        }
        let prefix = key2(repo.as_str(), "");
        let start = match last {
            Some(last) => {
                let mut k = key2(repo.as_str(), last);
                k.push(0);
                k
            }
            None => prefix.clone(),
        };
        let mut tags = Vec::new();
        for item in self.trees.tags.range(start..) {
            let (k, _) = item?;
            if !k.starts_with(&prefix) || n.is_some_and(|n| tags.len() >= n) {
                break;
            }
            tags.push(String::from_utf8_lossy(&k[prefix.len()..]).into_owned());
        }
        Ok(tags)
    }

    /// Repository names in lexical order, at most `n`, after `last`.
    pub fn list_repositories(&self, n: Option<usize>, last: Option<&str>) -> Result<Vec<String>> {
        let iter = match last {
            Some(last) => {
                let mut start = last.as_bytes().to_vec();
                start.push(0);
                self.trees.repos.range(start..)
            }
            None => self.trees.repos.range::<&[u8], _>(..),
        };
        let mut names = Vec::new();
        for item in iter {
            if n.is_some_and(|n| names.len() >= n) {
                break;
            }
            let (k, _) = item?;
            names.push(String::from_utf8_lossy(&k).into_owned());
        }
        Ok(names)
    }

    /// Descriptors of the manifests in `repo` whose subject is `subject`, optionally only those
    /// of one artifact type.
    pub fn referrers(
        &self,
        repo: &RepositoryName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<ReferrerDescriptor>> {
        let prefix = key3(repo.as_str(), &subject.to_string(), "");
        let mut out = Vec::new();
        for item in self.trees.referrers.scan_prefix(prefix) {
            let (_, v) = item?;
            let d: ReferrerDescriptor = serde_json::from_slice(&v).map_err(|e| {
                Error::new(ErrorCode::Unknown, format!("corrupt referrer record: {e}"))
            })?;
            if artifact_type.is_none_or(|t| d.artifact_type.as_deref() == Some(t)) {
                out.push(d);
            }
        }
        Ok(out)
    }

    /// Change events with sequence number greater than `since`, oldest first, at most `limit`.
    pub fn changes_since(&self, since: u64, limit: usize) -> Result<Vec<ChangeEvent>> {
        metadata::changes_since(&self.trees.changes, since, limit)
    }
}
