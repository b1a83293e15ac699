//! Storage: blob files addressed by digest plus metadata in sled. Knows nothing of HTTP.
//!
//! Blobs live in [`blobs::BlobFiles`]; everything else (which repository links which blob and
//! manifest, tags, referrers, upload sessions, the change log) lives in sled trees and changes
//! only inside transactions, each flushed before the caller is told it succeeded. Content is
//! always written before the metadata that makes it visible, so a crash at any point leaves either
//! the old state or the new one, plus at most unreferenced bytes that GC reclaims. A change that
//! must read before it writes (the tags of a digest, the manifests of a repository, whether a
//! tag still points where it did, whether an upload session still exists) holds the
//! repository's lock ([`locks`]) or the session's lock across the read and its transaction.

mod aliases;
mod blob_reads;
pub mod blobs;
pub mod changes;
pub mod children;
mod counters;
mod deletes;
mod evict;
mod feed_tail;
mod feed_turns;
pub mod file_pieces;
pub mod format;
pub mod gc;
mod group_flush;
mod listings;
mod locks;
mod manifest_cache;
mod manifest_commit;
mod manifest_reads;
mod metadata;
mod mirror;
pub mod outbox;
mod pulls;
pub mod sweep;
mod upload_hash;
mod uploads;
pub mod usage;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use sled::transaction::ConflictableTransactionError;
use sled::Transactional;

use crate::oci::{
    Algorithm, Digest, Error, ErrorCode, MediaType, ParsedManifest, Reference, RepositoryName,
    Result,
};
#[cfg(test)]
pub(crate) use blob_reads::blob_file_for_tests;
pub use blob_reads::Delivery;
pub use blobs::BlobFiles;
pub use feed_tail::{EventPage, LoggedEvent};
use locks::{RepoGuard, RepoLocks};
pub use manifest_cache::ManifestCacheUsage;
use metadata::{key2, key3, ManifestRecord, Trees};
pub use metadata::{ChangeAction, ChangeEvent};
pub use uploads::{UploadId, UploadStatus};

/// A manifest as stored: its digest (the one it was asked for by: a tag's target, or the digest
/// or alias given), media type and exact bytes.
#[derive(Debug, Clone)]
pub struct StoredManifest {
    pub digest: Digest,
    pub media_type: MediaType,
    pub bytes: Bytes,
}

/// Result of a manifest put.
#[derive(Debug, Clone)]
pub struct PutManifest {
    /// The digest it was put by (its sha256 when put by tag).
    pub digest: Digest,
    pub subject: Option<Digest>,
}

pub struct Store {
    root: PathBuf,
    db: sled::Db,
    trees: Trees,
    files: BlobFiles,
    uploads: uploads::Sessions,
    /// Held by every writer of a repository's metadata across its reads and its transaction.
    locks: Arc<RepoLocks>,
    /// Sequence number of the newest durable change event; long-polls wait on it.
    last_change: Arc<tokio::sync::watch::Sender<u64>>,
    /// The change feed's cursor bounds and its shared page (see [`changes`]).
    feed: changes::Feed,
    /// Metadata flushes, shared by writers that wait at the same time (group commit).
    flusher: Arc<group_flush::GroupFlush>,
    /// Manifest writes queued to share one transaction (see [`manifest_commit`]).
    commits: Arc<manifest_commit::ManifestCommits>,
    /// Local pushes and deletes are recorded in the outbox for the parent (see [`outbox`]).
    upstream: std::sync::atomic::AtomicBool,
    counters: counters::Counters,
    /// Shared by every writer across its blob file commit and the transaction that links it
    /// (or the manifest transaction); exclusive while garbage collection or eviction decides
    /// which blob files and manifest records nothing links, so none is deleted as it is linked.
    claims: Arc<tokio::sync::RwLock<()>>,
    storage_limits: std::sync::RwLock<crate::config::StorageLimits>,
    has_parent: AtomicBool,
    /// Bytes the blob files take (see [`usage`]).
    used: AtomicU64,
    /// Room promised to writes not yet accounted in `used` (see [`evict`]).
    promised: evict::Promised,
    /// Garbage collection's grace period, which eviction respects too (milliseconds).
    grace_ms: AtomicU64,
    /// Pulls noted but not yet written to `tag_use` (see [`pulls`]).
    pending_pulls: pulls::PendingPulls,
    /// Manifests served by tag, kept in memory (see [`manifest_cache`]).
    manifest_cache: Arc<manifest_cache::ManifestCache>,
    /// The metadata index's cache size it was opened with (bytes).
    metadata_cache: u64,
}

impl Store {
    /// Open (or create) the store under `root`, removing what a crash may have left half-done;
    /// the metadata index keeps the default cache ([`crate::config::DEFAULT_METADATA_CACHE`]).
    pub fn open(root: &Path) -> Result<Arc<Store>> {
        Store::open_with_cache(root, crate::config::DEFAULT_METADATA_CACHE)
    }

    /// [`Store::open`] with the metadata index caching up to `metadata_cache` bytes
    /// (`storage.metadataCache`).
    pub fn open_with_cache(root: &Path, metadata_cache: u64) -> Result<Arc<Store>> {
        use crate::oci::error::IoContext;
        std::fs::create_dir_all(root).context(|| format!("creating data directory {root:?}"))?;
        let found_format = format::read_format(root)?;
        let db = sled::Config::new()
            .path(root.join("metadata"))
            .cache_capacity(metadata_cache)
            .flush_every_ms(Some(1000))
            .open()
            .map_err(|e| match e {
                sled::Error::Io(source) => Error::Io {
                    context: format!(
                        "opening metadata database in {root:?} (is another instance using it?)"
                    ),
                    source,
                },
                other => Error::Db(other),
            })?;
        let trees = Trees::open(&db)?;
        let files = BlobFiles::new(root)?;
        let newest = metadata::newest_change(&trees.changes)?;
        let last_change = Arc::new(tokio::sync::watch::Sender::new(newest));
        let locks = Arc::new(RepoLocks::new());
        let manifest_cache = Arc::new(manifest_cache::ManifestCache::new(
            crate::config::DEFAULT_MANIFEST_CACHE,
        ));
        let commits = manifest_commit::ManifestCommits::new(
            trees.clone(),
            locks.clone(),
            manifest_cache.clone(),
        );
        let flusher = group_flush::GroupFlush::new(flush_work(
            commits.clone(),
            db.clone(),
            trees.changes.clone(),
            last_change.clone(),
        ));
        let feed = changes::Feed::open(&db, newest)?;
        let store = Store {
            root: root.to_owned(),
            db,
            trees,
            files,
            uploads: uploads::Sessions::new(root)?,
            locks,
            last_change,
            feed,
            flusher,
            commits,
            upstream: std::sync::atomic::AtomicBool::new(false),
            counters: counters::Counters::default(),
            claims: Arc::new(tokio::sync::RwLock::new(())),
            storage_limits: std::sync::RwLock::new(Default::default()),
            has_parent: AtomicBool::new(false),
            used: AtomicU64::new(0),
            promised: evict::Promised::default(),
            grace_ms: AtomicU64::new(3_600_000),
            pending_pulls: pulls::PendingPulls::default(),
            manifest_cache,
            metadata_cache,
        };
        store.migrate(found_format)?;
        let removed = store.files.clean_temp()?;
        let (stale_files, stale_records) = store.reconcile_uploads()?;
        if removed + stale_files + stale_records > 0 {
            tracing::info!(
                temp_files = removed,
                orphan_upload_files = stale_files,
                orphan_upload_records = stale_records,
                "cleaned up after an unclean stop"
            );
        }
        let store = Arc::new(store);
        store.spawn_usage_walk();
        store.spawn_pull_writer();
        Ok(store)
    }

    /// Bring a directory of an older data format up to [`format::CURRENT_FORMAT`] (each step
    /// idempotent, the new format recorded only once the metadata is durable).
    fn migrate(&self, found: Option<u32>) -> Result<()> {
        if found == Some(format::CURRENT_FORMAT) {
            return Ok(());
        }
        if let Some(old) = found {
            if old < 2 {
                let tags = self.migrate_tag_use()?;
                tracing::info!(
                    from = old,
                    to = 2,
                    tags,
                    "migrated the data directory: tags now record their origin and last pull"
                );
            }
            self.db.flush()?;
        }
        format::write_current(&self.root)
    }

    /// The grace period of garbage collection and eviction (applied live).
    pub fn set_grace_period(&self, grace: Duration) {
        self.grace_ms.store(
            grace.as_millis().min(u64::MAX as u128) as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    pub(crate) fn grace(&self) -> Duration {
        Duration::from_millis(self.grace_ms.load(std::sync::atomic::Ordering::Relaxed))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// How much memory the manifests served by tag may keep (`storage.manifestCache`, applied
    /// live; 0 keeps none).
    pub fn set_manifest_cache(&self, bytes: u64) {
        self.manifest_cache.set_budget(bytes);
    }

    /// The manifests kept in memory, what they count for, and how lookups by tag were served.
    pub fn manifest_cache_usage(&self) -> ManifestCacheUsage {
        self.manifest_cache.usage()
    }

    /// The metadata index's cache size, as opened (bytes).
    pub fn metadata_cache(&self) -> u64 {
        self.metadata_cache
    }

    /// Make every committed change durable, then wake whoever waits for change events. Writers
    /// flushing at the same time share one flush ([`group_flush`]).
    pub async fn flush(&self) -> Result<()> {
        self.flusher.flush().await
    }

    /// Watch the sequence number of the newest durable change event.
    pub fn watch_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.last_change.subscribe()
    }

    // ---- blobs -------------------------------------------------------------------------------

    /// Size of `digest` if `repo` links it.
    pub fn blob_size(&self, repo: &RepositoryName, digest: &Digest) -> Result<Option<u64>> {
        let key = key2(repo.as_str(), &digest.to_string());
        Ok(self
            .trees
            .blob_links
            .get(key)?
            .map(|v| metadata::decode_u64(&v)))
    }

    /// Stream `len` bytes of blob `digest` from `start`. The caller checked the link.
    pub fn read_blob(
        &self,
        digest: &Digest,
        start: u64,
        len: u64,
        delivery: Delivery,
    ) -> Result<impl Stream<Item = io::Result<Bytes>> + Send + 'static> {
        self.files.read_stream(digest, start, len, delivery)
    }

    /// Unlink `digest` from `repo`. The file stays until garbage collection.
    pub async fn delete_blob(&self, repo: &RepositoryName, digest: &Digest) -> Result<()> {
        let key = key2(repo.as_str(), &digest.to_string());
        let removed = {
            let _guard = self.locks.lock(repo);
            self.trees.blob_links.remove(key)?
        };
        if removed.is_none() {
            return Err(blob_unknown(digest));
        }
        self.flush().await
    }

    /// Link an existing blob of `from` into `repo` (cross-repository mount). `Ok(None)` when the
    /// blob is not mountable (unknown in `from`), so the caller can fall back to an upload.
    pub async fn mount_blob(
        &self,
        repo: &RepositoryName,
        from: &RepositoryName,
        digest: &Digest,
    ) -> Result<Option<u64>> {
        let Some(size) = self.blob_size(from, digest)? else {
            return Ok(None);
        };
        if !self.link_blob(repo, digest, size).await? {
            return Ok(None);
        }
        Ok(Some(size))
    }

    /// Link the blob file of `digest` (which must exist) into `repo`. `Ok(false)` when the file
    /// is gone (garbage collection took it first).
    async fn link_blob(&self, repo: &RepositoryName, digest: &Digest, size: u64) -> Result<bool> {
        {
            let _claim = self.claims.read().await;
            if !self.files.claim(digest) {
                return Ok(false);
            }
            let guard = self.locks.lock(repo);
            self.link_blob_locked(&guard, repo, digest, size)?;
        }
        self.flush().await?;
        Ok(true)
    }

    fn link_blob_locked(
        &self,
        _guard: &RepoGuard,
        repo: &RepositoryName,
        digest: &Digest,
        size: u64,
    ) -> Result<()> {
        let t = &self.trees;
        (&t.blob_links, &t.repos)
            .transaction(|(links, repos)| {
                links.insert(
                    key2(repo.as_str(), &digest.to_string()),
                    &size.to_be_bytes(),
                )?;
                repos.insert(repo.as_str().as_bytes(), &[])?;
                Ok(())
            })
            .map_err(Error::from)
    }

    /// Store a complete blob from a stream (monolithic upload), verifying it against `digest`.
    pub async fn put_blob<S>(&self, repo: &RepositoryName, digest: &Digest, body: S) -> Result<u64>
    where
        S: Stream<Item = io::Result<Bytes>> + Unpin,
    {
        let (file, tmp_path) = self.files.new_temp()?;
        let result = async {
            let appended =
                blobs::append_stream(file, Some(digest.algorithm().hasher()), body, 0).await?;
            if let Some(e) = appended.body_error {
                return Err(blobs::body_error(e));
            }
            let actual = appended.hasher.expect("hasher given").finish();
            verify_digest(digest, &actual)?;
            drop(appended.file);
            let _room = self.make_room(appended.written).await?;
            {
                let _claim = self.claims.read().await;
                if self.files.commit(&tmp_path, digest)? {
                    self.account(appended.written);
                }
                let guard = self.locks.lock(repo);
                self.link_blob_locked(&guard, repo, digest, appended.written)?;
            }
            self.flush().await?;
            Ok(appended.written)
        }
        .await;
        match result {
            Ok(size) => Ok(size),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp_path);
                Err(e)
            }
        }
    }

    // ---- manifests ---------------------------------------------------------------------------

    /// Store manifest `bytes` in `repo` under `reference`. Everything it references must already
    /// be in `repo`; the manifest, its tag, its referrer entry and the change event become
    /// visible together.
    pub async fn put_manifest(
        &self,
        repo: &RepositoryName,
        reference: &Reference,
        content_type: Option<&str>,
        bytes: Bytes,
    ) -> Result<PutManifest> {
        let upstream = self.records_upstream();
        self.put_manifest_inner(repo, reference, content_type, bytes, true, upstream)
            .await
    }

    /// Like [`Store::put_manifest`] for content mirrored from a parent: an index may name child
    /// manifests that were left out on purpose (platform filter), so only blobs are required.
    pub async fn put_mirrored_manifest(
        &self,
        repo: &RepositoryName,
        reference: &Reference,
        media_type: &str,
        bytes: Bytes,
    ) -> Result<PutManifest> {
        self.put_manifest_inner(repo, reference, Some(media_type), bytes, false, false)
            .await
    }

    async fn put_manifest_inner(
        &self,
        repo: &RepositoryName,
        reference: &Reference,
        content_type: Option<&str>,
        bytes: Bytes,
        require_children: bool,
        // A client's push on a ReadWrite node: recorded in the outbox for the parent.
        upstream: bool,
    ) -> Result<PutManifest> {
        let parsed = ParsedManifest::parse(content_type, &bytes)?;
        // Stored under its sha256; a digest of another algorithm, once verified, is an alias.
        let digest = Digest::sha256_of(&bytes);
        let alias = match reference {
            Reference::Digest(expected) if expected.algorithm() == Algorithm::Sha256 => {
                verify_digest(expected, &digest)?;
                None
            }
            Reference::Digest(expected) => {
                verify_digest(expected, &Digest::of(expected.algorithm(), &bytes))?;
                Some(expected.to_string())
            }
            Reference::Tag(_) => None,
        };
        let digest_str = digest.to_string();
        let record = ManifestRecord::encode(parsed.media_type, parsed.media_type_named, &bytes);
        let referrer = parsed
            .subject
            .as_ref()
            .map(|s| {
                let d = parsed.referrer_descriptor(&digest, bytes.len() as u64);
                (
                    key3(repo.as_str(), &s.to_string(), &digest_str),
                    serde_json::to_vec(&d),
                )
            })
            .map(|(k, v)| v.map(|v| (k, v)))
            .transpose()
            .map_err(|e| Error::new(ErrorCode::Unknown, e.to_string()))?;

        let write = manifest_commit::ManifestWrite {
            repo: repo.clone(),
            tag: match reference {
                Reference::Tag(t) => Some(t.clone()),
                Reference::Digest(_) => None,
            },
            digest: digest_str,
            record,
            media_code: [metadata::media_type_code(parsed.media_type)],
            alias,
            referrer,
            subject: parsed.subject.as_ref().map(|s| s.to_string()),
            blobs: parsed.blobs.clone(),
            children: if require_children {
                parsed.children.clone()
            } else {
                Vec::new()
            },
            tag_use: evict::encode_use(
                if require_children {
                    evict::PUSHED_HERE
                } else {
                    evict::SYNCED
                },
                evict::now_secs(),
            ),
            upstream,
        };
        // Held until the write is committed, even if this request is dropped while it waits
        // in the queue: the blobs it links stay claimed.
        let claim = self.claims.clone().read_owned().await;
        let committed = self.commits.enqueue(write, claim);
        // The next flush commits the write, then makes it durable. Nothing awaits between the
        // two calls, and the flush is requested on its first poll, so a queued write always
        // has a flush coming for it even if this request is dropped right away.
        self.flush().await?;
        // That flush started after the write was queued, so it has committed it: its outcome
        // is already here.
        manifest_commit::outcome(committed).await?;
        Ok(PutManifest {
            digest: match reference {
                Reference::Digest(given) => given.clone(),
                Reference::Tag(_) => digest,
            },
            subject: parsed.subject,
        })
    }
}

fn abort<T>(e: Error) -> std::result::Result<T, ConflictableTransactionError<Error>> {
    Err(ConflictableTransactionError::Abort(e))
}

pub(crate) fn verify_digest(expected: &Digest, actual: &Digest) -> Result<()> {
    if expected == actual {
        Ok(())
    } else {
        Err(Error::new(
            ErrorCode::DigestInvalid,
            format!("content digest {actual} does not match the digest given, {expected}"),
        )
        .with_detail(
            serde_json::json!({ "expected": expected.to_string(), "actual": actual.to_string() }),
        ))
    }
}

pub(crate) fn blob_unknown(digest: &Digest) -> Error {
    Error::new(
        ErrorCode::BlobUnknown,
        format!("blob {digest} is not in this repository"),
    )
    .with_detail(serde_json::json!({ "digest": digest.to_string() }))
}

fn manifest_unknown(reference: &Reference) -> Error {
    Error::new(
        ErrorCode::ManifestUnknown,
        format!("manifest {reference} is not in this repository"),
    )
}

/// One metadata flush: commits the queued manifest writes, then makes everything committed
/// durable; its announcement publishes the newest change event of that moment to the
/// long-polls.
fn flush_work(
    commits: Arc<manifest_commit::ManifestCommits>,
    db: sled::Db,
    changes: sled::Tree,
    last_change: Arc<tokio::sync::watch::Sender<u64>>,
) -> group_flush::FlushFn {
    Arc::new(move || {
        // The manifest writes queued for this flush go in first, in one transaction per
        // batch (see [`manifest_commit`]).
        commits.commit_queued();
        // Read the newest event before flushing: everything committed by then is in this
        // flush, so the published seq is durable. Not `flush_async`: several of those at once
        // can hang for good in sled 0.34 (spacejam/sled#1308); this runs off the async threads.
        let newest = metadata::newest_change(&changes)?;
        db.flush()?;
        let last_change = last_change.clone();
        Ok(Arc::new(move || {
            last_change.send_if_modified(|seq| {
                let moved = newest > *seq;
                if moved {
                    *seq = newest;
                }
                moved
            });
        }) as group_flush::Announce)
    })
}
