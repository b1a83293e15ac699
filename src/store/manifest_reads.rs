//! Reading a manifest: by tag, from memory when it can ([`super::manifest_cache`]), or by
//! digest (or alias). Both answer the digest, the media type this repository serves it as, and
//! the exact bytes.

use super::manifest_cache::Lookup;
use super::metadata::{self, key2, ManifestRecord};
use super::{manifest_unknown, Store, StoredManifest};
use crate::oci::{Digest, Reference, RepositoryName, Result, Tag};

impl Store {
    /// Resolve `reference` in `repo` to its stored manifest (a digest may be an alias, see
    /// [`super::aliases`]).
    pub fn get_manifest(
        &self,
        repo: &RepositoryName,
        reference: &Reference,
    ) -> Result<StoredManifest> {
        match reference {
            Reference::Tag(tag) => self.manifest_by_tag(repo, tag),
            Reference::Digest(digest) => {
                let (stored, link) = self
                    .manifest_link(repo, digest)?
                    .ok_or_else(|| manifest_unknown(reference))?;
                let record = self.manifest_record(&stored, reference)?;
                Ok(StoredManifest {
                    digest: digest.clone(),
                    media_type: linked_type(&link, &record)?,
                    bytes: record.bytes,
                })
            }
        }
    }

    /// The manifest `tag` names: from memory, or from the tag's and the manifest's entries in
    /// the index (and the repository's link for a manifest whose bytes leave its media type
    /// open). A tag only ever names a manifest linked in its repository (they leave together),
    /// so the link is not needed for anything else.
    fn manifest_by_tag(&self, repo: &RepositoryName, tag: &Tag) -> Result<StoredManifest> {
        let key = key2(repo.as_str(), tag.as_str());
        let ticket = match self.manifest_cache.get(&key) {
            Lookup::Hit {
                manifest,
                note_pulls,
            } => {
                if note_pulls {
                    self.note_pull_of(key);
                }
                return Ok(manifest);
            }
            Lookup::Miss(ticket) => ticket,
        };
        let reference = || Reference::Tag(tag.clone());
        let target = self
            .trees
            .tags
            .get(&key)?
            .ok_or_else(|| manifest_unknown(&reference()))?;
        let digest = metadata::decode_digest(&target)?;
        let record = self.manifest_record(&digest, &reference())?;
        if !record.named_by_bytes {
            let (_, link) = self
                .manifest_link(repo, &digest)?
                .ok_or_else(|| manifest_unknown(&reference()))?;
            self.note_pull_of(key);
            return Ok(StoredManifest {
                media_type: linked_type(&link, &record)?,
                digest,
                bytes: record.bytes,
            });
        }
        let manifest = StoredManifest {
            digest,
            media_type: record.media_type,
            bytes: record.bytes,
        };
        if !self.manifest_cache.is_on() {
            self.note_pull_of(key);
            return Ok(manifest);
        }
        // Bytes that name their type are answered the same until the tag moves, and so is
        // whether its pulls are recorded (its origin changes only when the tag is written).
        let note_pulls = self.pulls_are_recorded(&key)?;
        self.manifest_cache
            .fill(&key, ticket, &manifest, note_pulls);
        if note_pulls {
            self.note_pull_of(key);
        }
        Ok(manifest)
    }

    fn manifest_record(&self, digest: &Digest, asked: &Reference) -> Result<ManifestRecord> {
        let record = self
            .trees
            .manifests
            .get(digest.to_string())?
            .ok_or_else(|| manifest_unknown(asked))?;
        ManifestRecord::decode(record)
    }
}

/// The media type this repository was given (the record's for links made before media types
/// were kept per repository).
fn linked_type(link: &[u8], record: &ManifestRecord) -> Result<crate::oci::MediaType> {
    match link.first() {
        Some(&code) => metadata::media_type_from_code(code),
        None => Ok(record.media_type),
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::oci::manifest::OCI_INDEX;
    use crate::oci::ErrorCode;

    /// An index of no manifests, so it needs no blobs; `n` makes each one different.
    fn index(n: u32) -> Bytes {
        Bytes::from(format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[],"annotations":{{"n":"{n}"}}}}"#
        ))
    }

    fn tag(name: &str) -> Reference {
        Reference::Tag(name.parse().unwrap())
    }

    /// Every write that moves or removes a tag is seen by the next `GET` of a tag served from
    /// memory: a push moving it, a tag delete, a delete of its manifest by digest, the
    /// repository leaving. (Eviction removes a tag through the tag delete.)
    #[tokio::test]
    async fn every_write_that_moves_or_removes_a_tag_is_served_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let repo: RepositoryName = "cached/repo".parse().unwrap();
        let put = |t: &'static str, n: u32| {
            let store = store.clone();
            let repo = repo.clone();
            async move {
                store
                    .put_manifest(&repo, &tag(t), Some(OCI_INDEX), index(n))
                    .await
                    .unwrap()
                    .digest
            }
        };
        // Read twice: the second read is from memory.
        let served = |t: &str| -> Option<Bytes> {
            let first = store.get_manifest(&repo, &tag(t));
            let second = store.get_manifest(&repo, &tag(t));
            match (first, second) {
                (Ok(a), Ok(b)) => {
                    assert_eq!((&a.digest, &a.bytes), (&b.digest, &b.bytes));
                    Some(b.bytes)
                }
                (Err(a), Err(b)) => {
                    assert_eq!(
                        (a.code(), b.code()),
                        (ErrorCode::ManifestUnknown, ErrorCode::ManifestUnknown)
                    );
                    None
                }
                (a, b) => panic!("{t}: first {a:?}, then {b:?}"),
            }
        };

        put("t", 1).await;
        assert_eq!(served("t"), Some(index(1)));
        let usage = store.manifest_cache_usage();
        assert_eq!(
            (usage.entries, usage.hits, usage.misses),
            (1, 1, 1),
            "{usage:?}"
        );
        put("t", 2).await;
        assert_eq!(served("t"), Some(index(2)), "a moved tag");

        store.delete_manifest(&repo, &tag("t")).await.unwrap();
        assert_eq!(served("t"), None, "a deleted tag");

        let digest = put("t", 3).await;
        put("u", 3).await;
        assert_eq!(served("t"), Some(index(3)));
        assert_eq!(served("u"), Some(index(3)));
        store
            .delete_manifest(&repo, &Reference::Digest(digest))
            .await
            .unwrap();
        assert_eq!(served("t"), None, "a tag of a manifest deleted by digest");
        assert_eq!(served("u"), None, "a tag of a manifest deleted by digest");

        put("t", 4).await;
        assert_eq!(served("t"), Some(index(4)));
        store.delete_repository(&repo).await.unwrap();
        assert_eq!(served("t"), None, "a tag of a repository that left");
        assert_eq!(store.manifest_cache_usage().bytes, 0);

        // Turned off, nothing is kept and everything is still served.
        store.set_manifest_cache(0);
        put("t", 5).await;
        assert_eq!(served("t"), Some(index(5)));
        assert_eq!(store.manifest_cache_usage().entries, 0);
    }

    /// Pulls of a synced tag are noted (eviction orders by them) whether the answer came from
    /// memory or from the index; a tag pushed here, whose use record pulls never move, notes
    /// nothing once it is in memory.
    #[tokio::test]
    async fn pulls_of_synced_tags_are_noted_from_memory_too() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let repo: RepositoryName = "noted/repo".parse().unwrap();
        store
            .put_mirrored_manifest(&repo, &tag("synced"), OCI_INDEX, index(1))
            .await
            .unwrap();
        store
            .put_manifest(&repo, &tag("pushed"), Some(OCI_INDEX), index(2))
            .await
            .unwrap();
        store.write_pending_pulls().unwrap();
        let noted_by = |t: &str| {
            store.get_manifest(&repo, &tag(t)).unwrap();
            store.write_pending_pulls().unwrap()
        };
        assert_eq!(noted_by("synced"), 1, "from the index");
        assert_eq!(noted_by("synced"), 1, "from memory");
        noted_by("pushed");
        assert_eq!(noted_by("pushed"), 0, "a tag pushed here, from memory");
        let usage = store.manifest_cache_usage();
        assert_eq!((usage.hits, usage.misses), (2, 2), "{usage:?}");
        store.set_manifest_cache(0);
        assert_eq!(noted_by("synced"), 1, "with the cache off");
    }
}
