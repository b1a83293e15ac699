//! Manifest writes of concurrent writers committed together, in one sled transaction, by the
//! metadata flush that makes them durable.
//!
//! It exists because a sled 0.34 transaction costs two log writes of its own, whatever it
//! holds: it seals and writes the log buffer before and after reserving its batch marker
//! (`PageCache::pin_log`), each a `pwrite` and a waited `sync_file_range` handed to sled's I/O
//! threads. Group commit of the flushes ([`super::group_flush`]) could not share those: with
//! eight clients pushing manifests, perf counted 1.8 log writes per `PUT` and half the CPU in
//! them. A writer queues its write here and asks for a flush; the flush commits everything
//! queued, up to [`MAX_BATCH`] writes per transaction, and then flushes once. So a group of
//! writers costs one transaction and one fsync. (Committing each write as it arrived, with
//! only the flushes grouped, gave transactions of one or two writes: with eight clients the
//! aggregate was 2.6–3.0× one client's rate in alternated runs, 3.0–3.4× here; one client's
//! rate is the same either way. BENCHMARKS.md has the runs.) Every writer waits for its own
//! outcome.
//!
//! Each write is checked and applied in queue order inside the transaction, so a later write
//! sees the earlier ones (a tag moved twice moves twice, in order). A write that fails its own
//! checks (a blob or child not in the repository) aborts the attempt; it gets its error and the
//! rest are committed without it. The committer holds the repository locks of every write in
//! the batch across the transaction, taken in one order ([`RepoLocks::lock_all`]).

use std::sync::{Arc, Mutex};

use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::Transactional;

use super::locks::RepoLocks;
use super::manifest_cache::ManifestCache;
use super::metadata::{self, key2, Trees};
use super::{abort, aliases, outbox, ChangeAction};
use crate::oci::{Digest, Error, ErrorCode, RepositoryName, Result, Tag};

/// At most this many writes go into one transaction; the rest wait for the next.
const MAX_BATCH: usize = 64;

/// Everything a manifest write puts in the metadata, decided before it is queued.
pub(super) struct ManifestWrite {
    pub repo: RepositoryName,
    pub tag: Option<Tag>,
    pub digest: String,
    pub record: Vec<u8>,
    pub media_code: [u8; 1],
    /// The second name (another algorithm's digest) it was put by.
    pub alias: Option<String>,
    /// `repo\0subject\0digest` and the referrer descriptor, when it has a subject.
    pub referrer: Option<(Vec<u8>, Vec<u8>)>,
    pub subject: Option<String>,
    /// Blobs that must be linked in the repository.
    pub blobs: Vec<Digest>,
    /// Manifests (an index's children) that must be linked in the repository.
    pub children: Vec<Digest>,
    /// The tag's use record (see [`super::evict`]).
    pub tag_use: [u8; 9],
    /// A client's push on a ReadWrite node: recorded in the outbox for the parent.
    pub upstream: bool,
}

type Outcome = Result<()>;

struct Queued {
    write: ManifestWrite,
    done: tokio::sync::oneshot::Sender<Outcome>,
    /// The writer's blob claim, released once the write is committed (or failed), not when
    /// the writer stops waiting: garbage collection must not free what a queued write links.
    _claim: tokio::sync::OwnedRwLockReadGuard<()>,
}

/// What a queued write's writer waits on: its outcome, once a flush has committed it.
pub(super) type Committed = tokio::sync::oneshot::Receiver<Outcome>;

pub(super) struct ManifestCommits {
    queue: Mutex<Vec<Queued>>,
    trees: Trees,
    locks: Arc<RepoLocks>,
    /// Told of every tag a committed write moved.
    cache: Arc<ManifestCache>,
}

type TxTrees = (
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
    TransactionalTree,
);

impl ManifestCommits {
    pub fn new(
        trees: Trees,
        locks: Arc<RepoLocks>,
        cache: Arc<ManifestCache>,
    ) -> Arc<ManifestCommits> {
        Arc::new(ManifestCommits {
            queue: Mutex::default(),
            trees,
            locks,
            cache,
        })
    }

    /// Queue `write` for the next flush's transaction; the caller then asks for a flush and
    /// waits on what this returns ([`outcome`]). `claim` (the store's blob claim) is held until
    /// the write is committed, so nothing it links is collected meanwhile, even if the caller
    /// stops waiting.
    pub fn enqueue(
        &self,
        write: ManifestWrite,
        claim: tokio::sync::OwnedRwLockReadGuard<()>,
    ) -> Committed {
        let (done, committed) = tokio::sync::oneshot::channel();
        self.queue().push(Queued {
            write,
            done,
            _claim: claim,
        });
        committed
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Vec<Queued>> {
        // Held only around queue moves, which leave nothing torn if they panic.
        self.queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Commit every queued write, [`MAX_BATCH`] per transaction, telling each writer its
    /// outcome. Blocking (sled): the flush runs it off the async threads.
    pub fn commit_queued(&self) {
        loop {
            let batch = {
                let mut queue = self.queue();
                let take = queue.len().min(MAX_BATCH);
                queue.drain(..take).collect::<Vec<_>>()
            };
            if batch.is_empty() {
                return;
            }
            // A panic in sled drops the batch's writers (each is told its commit was
            // abandoned); the writes queued behind them are still committed.
            let _ =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.commit_batch(batch)));
        }
    }

    fn commit_batch(&self, mut batch: Vec<Queued>) {
        let repos: Vec<&RepositoryName> = batch.iter().map(|q| &q.write.repo).collect();
        let guards = self.locks.lock_all(&repos);
        // Mirrored content never moves a tag a local push has not yet taken upstream.
        let mut tags = Vec::with_capacity(batch.len());
        let mut ready = Vec::with_capacity(batch.len());
        for queued in batch.drain(..) {
            let w = &queued.write;
            let held = match (&w.tag, w.upstream) {
                (Some(t), false) => outbox::scan(&self.trees.outbox, |e| {
                    e.touches(w.repo.as_str(), Some(t.as_str()), None)
                }),
                _ => Ok(false),
            };
            match held {
                Ok(held) => {
                    tags.push(if held { None } else { w.tag.clone() });
                    ready.push(queued);
                }
                Err(e) => {
                    let _ = queued.done.send(Err(e));
                }
            }
        }
        while !ready.is_empty() {
            match self.transact(&ready, &tags) {
                Ok(()) => {
                    // Before any writer hears of it, no cached answer of a moved tag is left.
                    for (queued, tag) in ready.iter().zip(&tags) {
                        if let Some(tag) = tag {
                            self.cache
                                .forget(&key2(queued.write.repo.as_str(), tag.as_str()));
                        }
                    }
                    for queued in ready.drain(..) {
                        let _ = queued.done.send(Ok(()));
                    }
                }
                Err(Failed::One(index, e)) => {
                    let _ = ready.remove(index).done.send(Err(e));
                    tags.remove(index);
                }
                Err(Failed::All(e)) => {
                    for queued in ready.drain(..) {
                        let _ = queued.done.send(Err(Error::Db(e.clone())));
                    }
                }
            }
        }
        drop(guards);
    }

    fn transact(&self, batch: &[Queued], tags: &[Option<Tag>]) -> std::result::Result<(), Failed> {
        let t = &self.trees;
        (
            &t.repos,
            &t.blob_links,
            &t.manifests,
            &t.manifest_links,
            &t.manifest_aliases,
            &t.tags,
            &t.referrers,
            &t.changes,
            &t.outbox,
            &t.tag_use,
        )
            .transaction(|trees| {
                for (index, (queued, tag)) in batch.iter().zip(tags).enumerate() {
                    apply(trees, &queued.write, tag.as_ref()).map_err(|e| match e {
                        ConflictableTransactionError::Abort(e) => {
                            ConflictableTransactionError::Abort((index, e))
                        }
                        ConflictableTransactionError::Conflict => {
                            ConflictableTransactionError::Conflict
                        }
                        ConflictableTransactionError::Storage(e) => {
                            ConflictableTransactionError::Storage(e)
                        }
                    })?;
                }
                Ok(())
            })
            .map_err(|e| match e {
                TransactionError::Abort((index, e)) => Failed::One(index, e),
                TransactionError::Storage(e) => Failed::All(e),
            })
    }
}

/// A queued write's outcome, once a flush has committed it (or an error if its batch was
/// dropped by a panic in sled).
pub(super) async fn outcome(committed: Committed) -> Outcome {
    committed.await.unwrap_or_else(|_| {
        Err(Error::new(
            ErrorCode::Unknown,
            "the manifest commit was abandoned",
        ))
    })
}

enum Failed {
    /// The write at this index failed its own checks.
    One(usize, Error),
    /// The transaction could not be committed.
    All(sled::Error),
}

/// One write, inside the batch's transaction.
fn apply(
    trees: &TxTrees,
    w: &ManifestWrite,
    tag: Option<&Tag>,
) -> std::result::Result<(), ConflictableTransactionError<Error>> {
    let (
        repos,
        blob_links,
        manifests,
        manifest_links,
        aliases_tree,
        tags,
        referrers,
        changes,
        outbox_tree,
        tag_uses,
    ) = trees;
    let repo = &w.repo;
    for blob in &w.blobs {
        if blob_links
            .get(key2(repo.as_str(), &blob.to_string()))?
            .is_none()
        {
            return abort(
                Error::new(
                    ErrorCode::ManifestBlobUnknown,
                    format!("blob {blob} referenced by the manifest is not in repository {repo}"),
                )
                .with_detail(serde_json::json!({ "digest": blob.to_string() })),
            );
        }
    }
    for child in &w.children {
        if !aliases::linked_in(manifest_links, aliases_tree, repo, &child.to_string())? {
            return abort(
                Error::new(
                    ErrorCode::ManifestChildUnknown,
                    format!("manifest {child} referenced by the index is not in repository {repo}"),
                )
                .with_detail(serde_json::json!({ "digest": child.to_string() })),
            );
        }
    }
    if repos.get(repo.as_str().as_bytes())?.is_none() {
        repos.insert(repo.as_str().as_bytes(), &[])?;
    }
    manifests.insert(w.digest.as_bytes(), w.record.as_slice())?;
    let new_in_repo = manifest_links
        .insert(key2(repo.as_str(), &w.digest), &w.media_code)?
        .is_none();
    if let Some(alias) = &w.alias {
        aliases_tree.insert(key2(repo.as_str(), alias), w.digest.as_bytes())?;
    }
    if let Some((key, descriptor)) = &w.referrer {
        referrers.insert(key.as_slice(), descriptor.as_slice())?;
    }
    let mut events = Vec::new();
    if new_in_repo {
        events.push((ChangeAction::Push, tag.map(|t| t.to_string())));
    }
    let mut previous_digest = None;
    if let Some(tag) = tag {
        tag_uses.insert(key2(repo.as_str(), tag.as_str()), w.tag_use.as_slice())?;
        let previous = tags.insert(key2(repo.as_str(), tag.as_str()), w.digest.as_bytes())?;
        let moved = previous.as_deref() != Some(w.digest.as_bytes());
        if moved && !new_in_repo {
            events.push((ChangeAction::Tag, Some(tag.to_string())));
        }
        previous_digest = previous.map(|p| String::from_utf8_lossy(&p).into_owned());
    }
    if w.upstream {
        outbox::record(
            outbox_tree,
            repo,
            outbox::OutboxOp::Push {
                digest: w.digest.clone(),
                tag: tag.map(|t| t.to_string()),
                previous: previous_digest,
            },
        )?;
    }
    for (action, tag) in events {
        metadata::record_change(changes, repo, action, tag, &w.digest, w.subject.as_deref())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn write(repo: &str) -> ManifestWrite {
        ManifestWrite {
            repo: repo.parse().unwrap(),
            tag: None,
            digest: Digest::sha256_of(b"{}").to_string(),
            record: b"{}".to_vec(),
            media_code: [0],
            alias: None,
            referrer: None,
            subject: None,
            blobs: Vec::new(),
            children: Vec::new(),
            tag_use: [0; 9],
            upstream: false,
        }
    }

    /// A writer whose request is dropped while its write waits in the queue: the write keeps
    /// its blob claim (garbage collection cannot take the store) until a flush commits it.
    #[tokio::test]
    async fn a_queued_write_keeps_its_claim_after_its_writer_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let claim = store.claims.clone().read_owned().await;
        drop(store.commits.enqueue(write("a/b"), claim));
        assert!(
            store.claims.try_write().is_err(),
            "the queued write's claim went with its writer"
        );
        // The next flush commits the queue.
        store.flush().await.unwrap();
        assert!(store.commits.queue().is_empty());
        assert!(store.claims.try_write().is_ok());
        let digest = Digest::sha256_of(b"{}").to_string();
        assert!(store
            .trees
            .manifests
            .get(digest.as_bytes())
            .unwrap()
            .is_some());
    }

    /// Writes queued together share a transaction and are applied in queue order: a tag moved
    /// twice in one batch ends on the second manifest, and each writer hears its own outcome.
    #[tokio::test]
    async fn writes_queued_together_commit_in_order_with_their_own_outcomes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let tagged = |bytes: &[u8]| ManifestWrite {
            tag: Some("t".parse().unwrap()),
            digest: Digest::sha256_of(bytes).to_string(),
            record: bytes.to_vec(),
            ..write("a/b")
        };
        let missing_blob = ManifestWrite {
            blobs: vec![Digest::sha256_of(b"not pushed")],
            ..tagged(b"{\"c\":3}")
        };
        let mut outcomes = Vec::new();
        for w in [tagged(b"{\"a\":1}"), missing_blob, tagged(b"{\"b\":2}")] {
            let claim = store.claims.clone().read_owned().await;
            outcomes.push(store.commits.enqueue(w, claim));
        }
        store.flush().await.unwrap();
        let results = futures_util::future::join_all(outcomes.into_iter().map(outcome)).await;
        assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
        let err = results[1].as_ref().unwrap_err();
        assert_eq!(err.code(), ErrorCode::ManifestBlobUnknown, "{err}");
        let tag = store.trees.tags.get(key2("a/b", "t")).unwrap().unwrap();
        assert_eq!(
            tag.as_ref(),
            Digest::sha256_of(b"{\"b\":2}").to_string().as_bytes()
        );
    }

    /// By tag, the media type comes from the record when its bytes name it, and from the
    /// repository's link otherwise (records of data format 2 included); by digest, always from
    /// the link. The link's type here deliberately differs from the record's, to see which is
    /// read.
    #[tokio::test]
    async fn a_tag_reads_the_link_only_when_the_bytes_leave_the_media_type_open() {
        use crate::oci::{MediaType, Reference};
        use crate::store::metadata::{media_type_code, ManifestRecord};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let cases = [("named/by-bytes", true), ("open/type", false)];
        for (repo, named) in cases {
            let bytes = format!("{{\"{repo}\":1}}");
            let w = ManifestWrite {
                tag: Some("t".parse().unwrap()),
                digest: Digest::sha256_of(bytes.as_bytes()).to_string(),
                record: ManifestRecord::encode(MediaType::OciManifest, named, bytes.as_bytes()),
                media_code: [media_type_code(MediaType::DockerManifest)],
                ..write(repo)
            };
            let claim = store.claims.clone().read_owned().await;
            let committed = store.commits.enqueue(w, claim);
            store.flush().await.unwrap();
            outcome(committed).await.unwrap();
        }
        for (repo, named) in cases {
            let repo = repo.parse().unwrap();
            let by_tag = store
                .get_manifest(&repo, &Reference::Tag("t".parse().unwrap()))
                .unwrap();
            let expected = if named {
                MediaType::OciManifest
            } else {
                MediaType::DockerManifest
            };
            assert_eq!(by_tag.media_type, expected, "{repo}");
            let by_digest = store
                .get_manifest(&repo, &Reference::Digest(by_tag.digest.clone()))
                .unwrap();
            assert_eq!(by_digest.media_type, MediaType::DockerManifest, "{repo}");
            assert_eq!(by_digest.bytes, by_tag.bytes);
        }
    }
}
