//! Second names of manifests. A manifest is linked, tagged and logged under the sha256 of its
//! bytes; one put by a digest of another algorithm (a client pushing by a `sha512:` reference, a
//! parent announcing `Docker-Content-Digest: sha512:…`) also gets an alias
//! `repo\0sha512:… → sha256:…` in the same transaction, written only after that digest was
//! verified over the bytes. A `GET`/`HEAD`/`DELETE` by either name finds the manifest, and the
//! sync engine compares what the parent announces with what a tag here points at without
//! fetching the manifest again.
//!
//! An alias states a fact about bytes (these bytes have both digests), so it never turns wrong:
//! it stays when the manifest leaves the repository (a lookup through it then finds no link and
//! answers 404, and the same bytes put again make it live again) and goes with the repository.

use sled::transaction::{TransactionalTree, UnabortableTransactionError};
use sled::IVec;

use super::metadata::{decode_digest, key2};
use super::Store;
use crate::oci::{Digest, RepositoryName, Result};

impl Store {
    /// The name `digest` is linked under in `repo` (itself, or the manifest it is an alias of),
    /// with the link's value; `None` when `repo` has no such manifest.
    pub(super) fn manifest_link(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
    ) -> Result<Option<(Digest, IVec)>> {
        let links = &self.trees.manifest_links;
        if let Some(link) = links.get(key2(repo.as_str(), &digest.to_string()))? {
            return Ok(Some((digest.clone(), link)));
        }
        let Some(target) = self
            .trees
            .manifest_aliases
            .get(key2(repo.as_str(), &digest.to_string()))?
        else {
            return Ok(None);
        };
        let target = decode_digest(&target)?;
        Ok(links
            .get(key2(repo.as_str(), &target.to_string()))?
            .map(|link| (target, link)))
    }

    /// The digest the manifest named `digest` (by its own digest or an alias) is stored under
    /// in `repo`, if `repo` holds it.
    pub fn linked_digest(&self, repo: &RepositoryName, digest: &Digest) -> Result<Option<Digest>> {
        Ok(self.manifest_link(repo, digest)?.map(|(d, _)| d))
    }

    /// Drop every alias of `repo` (with the repository itself).
    pub(super) fn remove_aliases(&self, repo: &RepositoryName) -> Result<()> {
        let mut batch = sled::Batch::default();
        for key in self
            .trees
            .manifest_aliases
            .scan_prefix(key2(repo.as_str(), ""))
            .keys()
        {
            batch.remove(key?);
        }
        self.trees.manifest_aliases.apply_batch(batch)?;
        Ok(())
    }
}

/// Inside a transaction: whether `repo` links `digest`, by its own name or through an alias.
pub(super) fn linked_in(
    links: &TransactionalTree,
    aliases: &TransactionalTree,
    repo: &RepositoryName,
    digest: &str,
) -> std::result::Result<bool, UnabortableTransactionError> {
    if links.get(key2(repo.as_str(), digest))?.is_some() {
        return Ok(true);
    }
    match aliases.get(key2(repo.as_str(), digest))? {
        Some(target) => {
            let target = String::from_utf8_lossy(&target);
            Ok(links.get(key2(repo.as_str(), &target))?.is_some())
        }
        None => Ok(false),
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use futures_util::stream;

    use super::*;
    use crate::oci::{Algorithm, ErrorCode, Reference};

    const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

    #[tokio::test]
    async fn a_manifest_put_by_sha512_answers_to_both_digests() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let repo: RepositoryName = "a/b".parse().unwrap();
        let config = Bytes::from_static(b"{}");
        let config_digest = Digest::sha256_of(&config);
        store
            .put_blob(&repo, &config_digest, stream::iter([Ok(config)]))
            .await
            .unwrap();
        let bytes = Bytes::from(
            serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                           "digest": config_digest.to_string(), "size": 2},
                "layers": [],
            }))
            .unwrap(),
        );
        let sha256 = Digest::sha256_of(&bytes);
        let sha512 = Digest::of(Algorithm::Sha512, &bytes);

        // A wrong sha512 is refused and names nothing.
        let wrong = Digest::of(Algorithm::Sha512, b"other bytes");
        let err = store
            .put_manifest(
                &repo,
                &Reference::Digest(wrong.clone()),
                Some(OCI_MANIFEST),
                bytes.clone(),
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::DigestInvalid);
        assert_eq!(store.linked_digest(&repo, &wrong).unwrap(), None);

        let put = store
            .put_manifest(
                &repo,
                &Reference::Digest(sha512.clone()),
                Some(OCI_MANIFEST),
                bytes.clone(),
            )
            .await
            .unwrap();
        assert_eq!(put.digest, sha512);
        for name in [&sha512, &sha256] {
            let m = store
                .get_manifest(&repo, &Reference::Digest(name.clone()))
                .unwrap();
            assert_eq!(&m.digest, name, "answered by the name asked for");
            assert_eq!(m.bytes, bytes);
            assert_eq!(
                store.linked_digest(&repo, name).unwrap(),
                Some(sha256.clone())
            );
            assert!(store.has_manifest(&repo, name).unwrap());
        }
        // Stored once, logged by its sha256.
        let events = store.changes_since(0, 100).unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].digest, sha256.to_string());

        // An index naming its child by sha512 finds the child through the alias.
        let index = Bytes::from(
            serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": [{"mediaType": OCI_MANIFEST, "digest": sha512.to_string(),
                               "size": bytes.len()}],
            }))
            .unwrap(),
        );
        store
            .put_manifest(
                &repo,
                &Reference::Tag("multi".parse().unwrap()),
                Some(OCI_INDEX),
                index,
            )
            .await
            .unwrap();

        // Deleted by its alias: gone by both names; the bytes put again answer to both again.
        store
            .delete_manifest(&repo, &Reference::Digest(sha512.clone()))
            .await
            .unwrap();
        for name in [&sha512, &sha256] {
            let err = store
                .get_manifest(&repo, &Reference::Digest(name.clone()))
                .unwrap_err();
            assert_eq!(err.code(), ErrorCode::ManifestUnknown);
            assert!(!store.has_manifest(&repo, name).unwrap());
        }
        store
            .put_manifest(
                &repo,
                &Reference::Tag("v1".parse().unwrap()),
                Some(OCI_MANIFEST),
                bytes.clone(),
            )
            .await
            .unwrap();
        let m = store
            .get_manifest(&repo, &Reference::Digest(sha512.clone()))
            .unwrap();
        assert_eq!((m.digest, m.bytes), (sha512.clone(), bytes));

        // The repository goes with its aliases.
        store.delete_repository(&repo).await.unwrap();
        assert!(store
            .trees
            .manifest_aliases
            .scan_prefix(key2(repo.as_str(), ""))
            .next()
            .is_none());
    }
}
