//! Listings over the store: repositories, tags, referrers and change events, each in key order,
//! a page at a time, so no answer has to hold more than one page.
//!
//! A page is bounded twice: by its number of entries and by the bytes of their JSON. It stops
//! before the entry that would take it past its byte budget, except that a page always holds at
//! least one entry, so an entry larger than the budget (a referrer with large annotations; one
//! is bounded by the manifest size limit) is a page of its own.
//!
//! The catalog lists a repository only while it holds a manifest (tagged or not): a name that
//! only links blobs (a client that pushed blobs and never a manifest, a sync whose manifest
//! failed after its config blob was linked) has nothing a client could pull (distribution lists
//! any repository with a linked layer; a half-synced mirror must not). That costs one
//! index seek per name walked (`manifest_links` is keyed `repo\0digest`), never a scan. The
//! store's own listing ([`Store::list_repositories`], for pruning) still sees every name.

use bytes::Bytes;
use serde::Deserialize;

use super::feed_tail;
use super::metadata::{key2, key3};
use super::{ChangeEvent, Store};
use crate::oci::{Digest, Error, ErrorCode, RepositoryName, Result};

/// Bytes of events one change-feed page may hold (besides its entry limit).
pub const CHANGES_PAGE_BYTES: usize = 1 << 20;

/// One page of a listing, and whether entries follow it.
pub type Page<T> = (Vec<T>, bool);

/// A referrer as stored: its digest, and its descriptor's JSON exactly as listed.
pub type ReferrerEntry = (String, Bytes);

/// Fill a page of at most `max_entries` entries and, once it has one, at most `max_bytes` bytes
/// of JSON, from `entries` (already in order and within the listing), skipping those `item`
/// maps to `None`; `item` also gives each entry's JSON size.
fn fill<T>(
    entries: impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>,
    max_entries: usize,
    max_bytes: usize,
    mut item: impl FnMut(&[u8], sled::IVec) -> Result<Option<(T, usize)>>,
) -> Result<Page<T>> {
    let mut items = Vec::new();
    let mut bytes = 0usize;
    for entry in entries {
        let (k, v) = entry?;
        let Some((t, size)) = item(&k, v)? else {
            continue;
        };
        if items.len() >= max_entries
            || (!items.is_empty() && bytes.saturating_add(size) > max_bytes)
        {
            return Ok((items, true));
        }
        bytes = bytes.saturating_add(size);
        items.push(t);
    }
    Ok((items, false))
}

/// The exclusive upper bound of the keys that start with `prefix` (which ends in the NUL
/// separator, so bumping that byte is enough).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

/// The first key after `last` among the keys that start with `prefix`.
fn after(prefix: &[u8], last: Option<&str>) -> Vec<u8> {
    let mut start = prefix.to_vec();
    if let Some(last) = last {
        start.extend_from_slice(last.as_bytes());
        start.push(0);
    }
    start
}

/// A name's size in a JSON array: quotes and a comma (names need no escaping).
fn name_size(name: &str) -> usize {
    name.len() + 3
}

impl Store {
    pub fn repository_exists(&self, repo: &RepositoryName) -> Result<bool> {
        Ok(self.trees.repos.contains_key(repo.as_str())?)
    }

    /// Every tag of `repo` in lexical order, at most `n`, after `last`. For the store's own
    /// use (sync); answers to clients go through [`Store::tags_page`].
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
        Ok(self
            .tags_page(repo, last, n.unwrap_or(usize::MAX), usize::MAX)?
            .0)
    }

    /// One page of the tags of `repo` in lexical order, after `last` (an unknown repository has
    /// none; the caller checks it exists).
    pub fn tags_page(
        &self,
        repo: &RepositoryName,
        last: Option<&str>,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Page<String>> {
        let prefix = key2(repo.as_str(), "");
        let range = after(&prefix, last)..prefix_end(&prefix);
        fill(
            self.trees.tags.range(range),
            max_entries,
            max_bytes,
            |k, _| {
                let tag = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
                let size = name_size(&tag);
                Ok(Some((tag, size)))
            },
        )
    }

    /// Every repository name in lexical order, at most `n`, after `last`, including those that
    /// hold only blobs. For the store's own use (sync prunes by it); answers to clients go
    /// through [`Store::repositories_page`].
    pub fn list_repositories(&self, n: Option<usize>, last: Option<&str>) -> Result<Vec<String>> {
        Ok(self
            .names_page(last, n.unwrap_or(usize::MAX), usize::MAX, None)?
            .0)
    }

    /// One page of the catalog: names of repositories that hold a manifest and that `visible`
    /// accepts (the client's credentials may read them), in lexical order, after `last`.
    pub fn repositories_page(
        &self,
        last: Option<&str>,
        max_entries: usize,
        max_bytes: usize,
        visible: &dyn Fn(&str) -> bool,
    ) -> Result<Page<String>> {
        self.names_page(last, max_entries, max_bytes, Some(visible))
    }

    /// Whether the repository named by key `name` links at least one manifest (one seek).
    fn holds_manifest(&self, name: &[u8]) -> Result<bool> {
        let mut prefix = name.to_vec();
        prefix.push(0);
        Ok(self
            .trees
            .manifest_links
            .scan_prefix(prefix)
            .next()
            .transpose()?
            .is_some())
    }

    fn names_page(
        &self,
        last: Option<&str>,
        max_entries: usize,
        max_bytes: usize,
        // For the catalog: which names a client may see (and only those holding a manifest).
        catalog: Option<&dyn Fn(&str) -> bool>,
    ) -> Result<Page<String>> {
        let entries = match last {
            Some(last) => {
                let mut start = last.as_bytes().to_vec();
                start.push(0);
                self.trees.repos.range(start..)
            }
            None => self.trees.repos.range::<&[u8], _>(..),
        };
        fill(entries, max_entries, max_bytes, |k, _| {
            let name = String::from_utf8_lossy(k).into_owned();
            if let Some(visible) = catalog {
                if !visible(&name) || !self.holds_manifest(k)? {
                    return Ok(None);
                }
            }
            let size = name_size(&name);
            Ok(Some((name, size)))
        })
    }

    /// One page of the referrers of `subject` in `repo` (optionally only those of one artifact
    /// type), in digest order after the referrer digest `last`, each with its descriptor JSON as
    /// stored. The descriptors are copied, never parsed whole: only their artifact type is read.
    pub fn referrers_page(
        &self,
        repo: &RepositoryName,
        subject: &Digest,
        artifact_type: Option<&str>,
        last: Option<&str>,
        max_entries: usize,
        max_bytes: usize,
    ) -> Result<Page<ReferrerEntry>> {
        #[derive(Deserialize)]
        struct Probe {
            #[serde(rename = "artifactType")]
            artifact_type: Option<String>,
        }
        let prefix = key3(repo.as_str(), &subject.to_string(), "");
        let range = after(&prefix, last)..prefix_end(&prefix);
        fill(
            self.trees.referrers.range(range),
            max_entries,
            max_bytes,
            |k, v| {
                let probe: Probe = serde_json::from_slice(&v).map_err(|e| {
                    Error::new(ErrorCode::Unknown, format!("corrupt referrer record: {e}"))
                })?;
                if artifact_type.is_some_and(|t| probe.artifact_type.as_deref() != Some(t)) {
                    return Ok(None);
                }
                let size = v.len() + 1;
                let digest = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
                Ok(Some(((digest, Bytes::copy_from_slice(&v)), size)))
            },
        )
    }

    /// Change events with sequence number greater than `since`, oldest first, at most `limit`
    /// and at most [`CHANGES_PAGE_BYTES`] of JSON (always at least one event when there is one).
    pub fn changes_since(&self, since: u64, limit: usize) -> Result<Vec<ChangeEvent>> {
        let page = feed_tail::read_log(&self.trees.changes, since, u64::MAX, limit)?;
        Ok(page.iter().map(|logged| logged.event.clone()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Reference;
    use futures_util::stream;

    async fn put(
        store: &Store,
        repo: &RepositoryName,
        reference: &str,
        manifest: serde_json::Value,
    ) -> String {
        let bytes = serde_json::to_vec(&manifest).unwrap();
        let digest = Digest::sha256_of(&bytes).to_string();
        store
            .put_manifest(
                repo,
                &reference.parse().unwrap(),
                Some("application/vnd.oci.image.manifest.v1+json"),
                Bytes::from(bytes),
            )
            .await
            .unwrap();
        digest
    }

    /// An empty image manifest over a `{}` config linked into `repo`; returns its bytes.
    async fn empty_image(store: &Store, repo: &RepositoryName, note: &str) -> serde_json::Value {
        let config = b"{}".to_vec();
        let config_digest = Digest::sha256_of(&config);
        store
            .put_blob(
                repo,
                &config_digest,
                stream::iter([Ok(Bytes::from(config))]),
            )
            .await
            .unwrap();
        serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                       "digest": config_digest.to_string(), "size": 2},
            "layers": [],
            "annotations": {"note": note},
        })
    }

    #[tokio::test]
    async fn catalog_lists_only_repositories_with_a_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let names: Vec<RepositoryName> = ["a/b", "blobs/only", "c", "d"]
            .iter()
            .map(|n| n.parse().unwrap())
            .collect();
        let mut digests = Vec::new();
        for repo in &names {
            let image = empty_image(&store, repo, repo.as_str()).await;
            if repo.as_str() != "blobs/only" {
                digests.push(put(&store, repo, "v1", image).await);
            }
        }
        // "c" loses its only manifest: back to blob links alone.
        store
            .delete_manifest(&names[2], &Reference::Digest(digests[1].parse().unwrap()))
            .await
            .unwrap();

        let all = |n| {
            store
                .repositories_page(None, n, 1 << 20, &|_| true)
                .unwrap()
        };
        assert_eq!(all(100), (vec!["a/b".into(), "d".into()], false));
        assert_eq!(all(1), (vec!["a/b".into()], true));
        let rest = store
            .repositories_page(Some("a/b"), 1, 1 << 20, &|_| true)
            .unwrap();
        assert_eq!(rest, (vec!["d".into()], false));
        // The store's own listing (pruning) still sees every name.
        assert_eq!(
            store.list_repositories(None, None).unwrap(),
            vec!["a/b", "blobs/only", "c", "d"]
        );
        assert!(store.repository_exists(&names[1]).unwrap());

        // An untagged manifest is enough to be listed.
        let image = serde_json::to_vec(&empty_image(&store, &names[1], "untagged").await).unwrap();
        let digest = Digest::sha256_of(&image);
        store
            .put_manifest(
                &names[1],
                &Reference::Digest(digest),
                Some("application/vnd.oci.image.manifest.v1+json"),
                Bytes::from(image),
            )
            .await
            .unwrap();
        assert_eq!(all(100).0, vec!["a/b", "blobs/only", "d"]);
    }

    #[tokio::test]
    async fn pages_are_bounded_by_entries_and_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let repo: RepositoryName = "a/b".parse().unwrap();
        let config = b"{}".to_vec();
        let config_digest = Digest::sha256_of(&config);
        store
            .put_blob(
                &repo,
                &config_digest,
                stream::iter([Ok(Bytes::from(config))]),
            )
            .await
            .unwrap();
        let image = |note: &str| {
            serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                           "digest": config_digest.to_string(), "size": 2},
                "layers": [],
                "annotations": {"note": note},
            })
        };
        let subject = put(&store, &repo, "base", image("base")).await;
        for tag in ["t1", "t2", "t3", "t4", "t5"] {
            put(&store, &repo, tag, image("base")).await;
        }
        let mut referrers = Vec::new();
        for i in 0..5 {
            let mut m = image(&format!(
                "{i}{}",
                "x".repeat(if i == 2 { 5000 } else { 10 })
            ));
            m["subject"] = serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": subject, "size": 1});
            m["artifactType"] = serde_json::json!(if i % 2 == 0 { "even" } else { "odd" });
            let bytes = serde_json::to_vec(&m).unwrap();
            let digest = Digest::sha256_of(&bytes);
            put(&store, &repo, &digest.to_string(), m).await;
            referrers.push(digest.to_string());
        }
        referrers.sort();

        let page = store.tags_page(&repo, None, 2, 1 << 20).unwrap();
        assert_eq!(page, (vec!["base".into(), "t1".into()], true));
        let page = store.tags_page(&repo, Some("t1"), 10, 12).unwrap();
        assert_eq!(page, (vec!["t2".into(), "t3".into()], true));
        let page = store.tags_page(&repo, Some("t3"), 10, 1).unwrap();
        assert_eq!(page, (vec!["t4".into()], true));
        let page = store.tags_page(&repo, Some("t4"), 10, 1).unwrap();
        assert_eq!(page, (vec!["t5".into()], false));
        let other: RepositoryName = "a".parse().unwrap();
        assert_eq!(
            store.tags_page(&other, None, 10, 100).unwrap(),
            (vec![], false)
        );

        let subject: Digest = subject.parse().unwrap();
        let all = store
            .referrers_page(&repo, &subject, None, None, 100, 1 << 20)
            .unwrap();
        assert!(!all.1);
        let digests: Vec<_> = all.0.iter().map(|(d, _)| d.clone()).collect();
        assert_eq!(digests, referrers);
        for (digest, descriptor) in &all.0 {
            let d: serde_json::Value = serde_json::from_slice(descriptor).unwrap();
            assert_eq!(d["digest"], digest.as_str());
        }
        // Walk with a byte budget below the large one: every referrer once, the large one alone.
        let mut walked = Vec::new();
        let mut last: Option<String> = None;
        loop {
            let (items, more) = store
                .referrers_page(&repo, &subject, None, last.as_deref(), 100, 1000)
                .unwrap();
            assert!(!items.is_empty());
            let bytes: usize = items.iter().map(|(_, d)| d.len()).sum();
            assert!(items.len() == 1 || bytes <= 1000, "{bytes}");
            walked.extend(items.iter().map(|(d, _)| d.clone()));
            last = walked.last().cloned();
            if !more {
                break;
            }
        }
        assert_eq!(walked, referrers);
        let even = store
            .referrers_page(&repo, &subject, Some("even"), None, 2, 1 << 20)
            .unwrap();
        assert_eq!(even.0.len(), 2);
        assert!(even.1);
        let last = even.0[1].0.clone();
        let rest = store
            .referrers_page(&repo, &subject, Some("even"), Some(&last), 2, 1 << 20)
            .unwrap();
        assert_eq!(rest.0.len(), 1);
        assert!(!rest.1);
    }
}
