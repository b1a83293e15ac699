//! The sled trees behind the store and how their keys and values are laid out.
//!
//! Keys join repository, digest and tag with a NUL byte, which none of them can contain, so a
//! prefix scan on `repo\0` sees exactly that repository and sorts lexically by the next part.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sled::transaction::{TransactionalTree, UnabortableTransactionError};

use crate::oci::{Digest, Error, ErrorCode, MediaType, RepositoryName, Result};

#[derive(Clone)]
pub(super) struct Trees {
    /// repository name → ()
    pub repos: sled::Tree,
    /// repo\0digest → blob size (u64 BE)
    pub blob_links: sled::Tree,
    /// digest → [`ManifestRecord`]
    pub manifests: sled::Tree,
    /// repo\0digest → the media type this repository serves it with (one byte, see
    /// [`media_type_code`]; empty in stores written before media types were per repository,
    /// meaning the [`ManifestRecord`]'s)
    pub manifest_links: sled::Tree,
    /// repo\0alias → the digest a manifest is stored under: the second name (a `sha512`
    /// digest) a manifest was put or mirrored by, see [`super::aliases`]
    pub manifest_aliases: sled::Tree,
    /// repo\0tag → digest
    pub tags: sled::Tree,
    /// repo\0subject\0referrer → referrer descriptor JSON
    pub referrers: sled::Tree,
    /// upload id → upload record JSON
    pub uploads: sled::Tree,
    /// sequence (u64 BE) → [`ChangeEvent`] JSON
    pub changes: sled::Tree,
    /// sync state key → value (the change-feed cursor, …)
    pub sync_state: sled::Tree,
    /// sequence (u64 BE) → [`super::outbox::OutboxEntry`] JSON: local changes for the parent
    pub outbox: sled::Tree,
    /// repo\0tag → where the tag came from and when it was last pulled (see `super::evict`)
    pub tag_use: sled::Tree,
    /// repo\0tag → the digest an evicted tag pointed at and the bytes it took (see
    /// `super::evict`): not synced again while it would not fit
    pub evicted: sled::Tree,
}

impl Trees {
    pub fn open(db: &sled::Db) -> Result<Trees> {
        Ok(Trees {
            repos: db.open_tree("repos")?,
            blob_links: db.open_tree("blob_links")?,
            manifests: db.open_tree("manifests")?,
            manifest_links: db.open_tree("manifest_links")?,
            manifest_aliases: db.open_tree("manifest_aliases")?,
            tags: db.open_tree("tags")?,
            referrers: db.open_tree("referrers")?,
            uploads: db.open_tree("uploads")?,
            changes: db.open_tree("changes")?,
            sync_state: db.open_tree("sync_state")?,
            outbox: db.open_tree("outbox")?,
            tag_use: db.open_tree("tag_use")?,
            evicted: db.open_tree("evicted")?,
        })
    }
}

pub(super) fn key2(a: &str, b: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(a.len() + b.len() + 1);
    k.extend_from_slice(a.as_bytes());
    k.push(0);
    k.extend_from_slice(b.as_bytes());
    k
}

pub(super) fn key3(a: &str, b: &str, c: &str) -> Vec<u8> {
    let mut k = key2(a, b);
    k.push(0);
    k.extend_from_slice(c.as_bytes());
    k
}

pub(super) fn decode_u64(v: &[u8]) -> u64 {
    v.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

pub(super) fn decode_digest(v: &[u8]) -> Result<Digest> {
    std::str::from_utf8(v)
        .map_err(|_| corrupt("digest is not UTF-8"))?
        .parse()
        .map_err(|_| corrupt("stored digest is invalid"))
}

pub(super) fn corrupt(what: &str) -> Error {
    Error::new(ErrorCode::Unknown, format!("corrupt metadata: {what}"))
}

/// A manifest's media type (one byte) followed by its exact bytes. The byte's high bit
/// ([`NAMED_BY_BYTES`], data format 3) says the bytes name their media type themselves (a
/// `mediaType` field, which a put's `Content-Type` must match), so every repository serves them
/// with this one and a lookup by tag need not read the repository's link for it.
pub(super) struct ManifestRecord {
    pub media_type: MediaType,
    pub named_by_bytes: bool,
    pub bytes: Bytes,
}

/// The flag in a [`ManifestRecord`]'s first byte.
const NAMED_BY_BYTES: u8 = 0x80;

pub(super) fn media_type_code(media_type: MediaType) -> u8 {
    match media_type {
        MediaType::OciManifest => 0,
        MediaType::OciIndex => 1,
        MediaType::DockerManifest => 2,
        MediaType::DockerManifestList => 3,
    }
}

pub(super) fn media_type_from_code(code: u8) -> Result<MediaType> {
    Ok(match code {
        0 => MediaType::OciManifest,
        1 => MediaType::OciIndex,
        2 => MediaType::DockerManifest,
        3 => MediaType::DockerManifestList,
        _ => return Err(corrupt("unknown manifest media type code")),
    })
}

impl ManifestRecord {
    pub fn encode(media_type: MediaType, named_by_bytes: bool, bytes: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(bytes.len() + 1);
        let flag = if named_by_bytes { NAMED_BY_BYTES } else { 0 };
        v.push(media_type_code(media_type) | flag);
        v.extend_from_slice(bytes);
        v
    }

    /// The record as stored; its bytes are shared with the index's copy, not copied.
    pub fn decode(v: sled::IVec) -> Result<ManifestRecord> {
        let &code = v.first().ok_or_else(|| corrupt("empty manifest record"))?;
        let media_type = media_type_from_code(code & !NAMED_BY_BYTES)?;
        Ok(ManifestRecord {
            media_type,
            named_by_bytes: code & NAMED_BY_BYTES != 0,
            bytes: Bytes::from_owner(v).slice(1..),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeAction {
    /// A manifest arrived in the repository (with the tag it was pushed under, if any).
    Push,
    /// A tag now points at a manifest that was already there.
    Tag,
    Untag,
    /// A manifest left the repository.
    Delete,
}

/// One entry of the change log that children follow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChangeEvent {
    pub seq: u64,
    pub time: chrono::DateTime<chrono::Utc>,
    pub repository: String,
    pub action: ChangeAction,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    pub digest: String,
    /// For a pushed referrer: the manifest it refers to, so a child can tell a signature it
    /// wants from an index child it filtered out without fetching either.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}

pub(super) fn record_change(
    changes: &TransactionalTree,
    repo: &RepositoryName,
    action: ChangeAction,
    tag: Option<String>,
    digest: &str,
    subject: Option<&str>,
) -> std::result::Result<(), UnabortableTransactionError> {
    // generate_id is strictly increasing across restarts, and events commit in the order of
    // their numbers: sled 0.34 runs each transaction whole under one global lock
    // (`concurrency_control::write`), so no reader can see a number before a smaller one that
    // will still commit. A child following the feed relies on both (checked by
    // `store_race::racing_pushes_tags_untags_and_deletes_keep_the_store_consistent`); a sled
    // without that lock would need a lock of our own around these transactions.
    let seq = changes.generate_id()? + 1;
    let event = ChangeEvent {
        seq,
        time: chrono::Utc::now(),
        repository: repo.to_string(),
        action,
        tag,
        digest: digest.to_owned(),
        subject: subject.map(str::to_owned),
    };
    let json = serde_json::to_vec(&event).expect("change events serialise");
    changes.insert(&seq.to_be_bytes(), json)?;
    Ok(())
}

pub(super) fn newest_change(changes: &sled::Tree) -> Result<u64> {
    Ok(changes.last()?.map(|(k, _)| decode_u64(&k)).unwrap_or(0))
}
