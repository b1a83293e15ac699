//! Deleting from a repository: a tag, or a manifest with every tag that points at it. Each
//! delete is one sled transaction with its change events (and, on a ReadWrite child, its outbox
//! entry), taken under the repository's lock so nothing can point at what is being removed.

use sled::Transactional;

use super::locks::RepoGuard;
use super::metadata::{self, key2, key3, ChangeAction};
use super::{abort, manifest_unknown, outbox, Store};
use crate::oci::manifest::ParsedManifest;
use crate::oci::{Digest, Reference, RepositoryName, Result, Tag};

impl Store {
    /// Delete by digest (the manifest leaves `repo`, with every tag pointing at it) or by tag
    /// (only the tag goes).
    pub async fn delete_manifest(
        &self,
        repo: &RepositoryName,
        reference: &Reference,
    ) -> Result<()> {
        self.delete_manifest_from(repo, reference, self.records_upstream())
            .await
    }

    /// [`Store::delete_manifest`], recorded in the outbox when `upstream` (a client's delete on
    /// a ReadWrite node) or not (sync mirroring the parent).
    pub(super) async fn delete_manifest_from(
        &self,
        repo: &RepositoryName,
        reference: &Reference,
        upstream: bool,
    ) -> Result<()> {
        {
            let guard = self.locks.lock(repo);
            match reference {
                Reference::Tag(tag) => self.delete_tag_locked(&guard, repo, tag, upstream)?,
                Reference::Digest(digest) => {
                    self.delete_manifest_digest_locked(&guard, repo, digest, upstream)?
                }
            }
        }
        self.flush().await
    }

    pub(super) fn delete_tag_locked(
        &self,
        _guard: &RepoGuard,
        repo: &RepositoryName,
        tag: &Tag,
        upstream: bool,
    ) -> Result<()> {
        let t = &self.trees;
        let key = key2(repo.as_str(), tag.as_str());
        (&t.tags, &t.changes, &t.outbox).transaction(|(tags, changes, outbox_tree)| {
            let Some(target) = tags.remove(key.as_slice())? else {
                return abort(manifest_unknown(&Reference::Tag(tag.clone())));
            };
            let digest = String::from_utf8_lossy(&target).into_owned();
            if upstream {
                outbox::record(
                    outbox_tree,
                    repo,
                    outbox::OutboxOp::Untag {
                        tag: tag.to_string(),
                        digest: digest.clone(),
                    },
                )?;
            }
            metadata::record_change(
                changes,
                repo,
                ChangeAction::Untag,
                Some(tag.to_string()),
                &digest,
                None,
            )?;
            Ok(())
        })?;
        self.manifest_cache.forget(&key);
        Ok(())
    }

    /// The manifest leaves `repo` with every tag that points at it. The tags are found by a scan
    /// (transactions cannot scan); the repository lock keeps them from changing until the
    /// transaction has committed.
    pub(super) fn delete_manifest_digest_locked(
        &self,
        _guard: &RepoGuard,
        repo: &RepositoryName,
        digest: &Digest,
        upstream: bool,
    ) -> Result<()> {
        // By an alias: the manifest it names.
        let digest = &self
            .linked_digest(repo, digest)?
            .unwrap_or_else(|| digest.clone());
        let digest_str = digest.to_string();
        let stored = self.get_manifest(repo, &Reference::Digest(digest.clone()))?;
        let subject = ParsedManifest::parse(Some(stored.media_type.as_str()), &stored.bytes)
            .ok()
            .and_then(|p| p.subject);
        let prefix = key2(repo.as_str(), "");
        let mut tag_keys: Vec<(sled::IVec, String)> = Vec::new();
        for item in self.trees.tags.scan_prefix(&prefix) {
            let (k, v) = item?;
            if v.as_ref() == digest_str.as_bytes() {
                let tag = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
                tag_keys.push((k, tag));
            }
        }
        let t = &self.trees;
        (
            &t.manifest_links,
            &t.tags,
            &t.referrers,
            &t.changes,
            &t.outbox,
        )
            .transaction(|(manifest_links, tags, referrers, changes, outbox_tree)| {
                if manifest_links
                    .remove(key2(repo.as_str(), &digest_str))?
                    .is_none()
                {
                    return abort(manifest_unknown(&Reference::Digest(digest.clone())));
                }
                for (key, tag) in &tag_keys {
                    tags.remove(key)?;
                    metadata::record_change(
                        changes,
                        repo,
                        ChangeAction::Untag,
                        Some(tag.clone()),
                        &digest_str,
                        None,
                    )?;
                }
                if let Some(subject) = &subject {
                    referrers.remove(key3(repo.as_str(), &subject.to_string(), &digest_str))?;
                }
                metadata::record_change(
                    changes,
                    repo,
                    ChangeAction::Delete,
                    None,
                    &digest_str,
                    None,
                )?;
                if upstream {
                    outbox::record(
                        outbox_tree,
                        repo,
                        outbox::OutboxOp::Delete {
                            digest: digest_str.clone(),
                        },
                    )?;
                }
                Ok(())
            })?;
        for (key, _) in &tag_keys {
            self.manifest_cache.forget(key);
        }
        Ok(())
    }
}
