//! One tag's content, walked from the parent: the manifest, the index children that pass the
//! platform filter, every blob (downloaded once, resumed, size- and digest-verified) and the
//! referrers (signatures, SBOMs) of each manifest.
//!
//! It exists apart from the pass logic because this is where the parent decides the shape of
//! the work: an index of indexes of … is walked with an explicit stack (no recursion, so no
//! stack to overflow), no deeper than [`MAX_INDEX_DEPTH`], holding at most one large level's
//! bytes; and a blob transfer that is cut is resumed within the pass, a bounded number of times.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{stream, StreamExt};

use super::SyncEngine;
use crate::oci::{Digest, ParsedManifest, Reference, RepositoryName};
use crate::sync::client::{RemoteManifest, SyncError};

/// Deepest nesting of indexes under a tag: an index may hold indexes down to this many levels
/// (real images use one). A deeper tag is refused, reported in `statusDetails`, and never
/// retried into a crash.
pub const MAX_INDEX_DEPTH: usize = 8;
/// A manifest up to this size stays in memory while its children sync; a larger index is
/// fetched again (digest-verified) once its children are stored, so a walk holds at most one
/// large level at a time.
pub const KEEP_MANIFEST_BYTES: usize = 64 << 10;
/// Attempts to download one blob within a pass when its transfer is cut or too slow; the count
/// starts again whenever an attempt brought new bytes.
pub const BLOB_ATTEMPTS: u32 = 5;
/// First pause before a blob download is resumed; doubled per failed attempt.
pub const BLOB_RETRY_BASE: Duration = Duration::from_millis(500);
/// Longest pause between two attempts at one blob.
pub const BLOB_RETRY_CAP: Duration = Duration::from_secs(10);

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An index whose children are being synced.
struct Frame {
    digest: Digest,
    media_type: String,
    /// Its bytes, when small enough to keep (see [`KEEP_MANIFEST_BYTES`]).
    bytes: Option<Bytes>,
    children: Vec<(Digest, u64)>,
    next: usize,
}

/// A manifest whose whole tree is stored here (except itself, when it is the root).
struct Done {
    digest: Digest,
    media_type: String,
    bytes: Bytes,
}

impl SyncEngine {
    /// Fetch manifest `root` and everything under it (children stored by digest, blobs, and —
    /// with `referrers` — the referrers of every child). Returns the root's media type and bytes
    /// for the caller to store. `prefetched`: the root, already fetched and verified (by tag).
    pub(super) async fn fetch_tree(
        &self,
        repo: &RepositoryName,
        root: Digest,
        root_size: Option<u64>,
        referrers: bool,
        mut prefetched: Option<RemoteManifest>,
    ) -> Result<(String, Bytes), SyncError> {
        let mut stack: Vec<Frame> = Vec::new();
        let mut next = (root, root_size);
        loop {
            let (digest, size) = next;
            let visit = self
                .visit(repo, &digest, size, stack.len(), prefetched.take())
                .await?;
            let mut done = match visit {
                Visit::Leaf(done) => done,
                Visit::Index(mut frame) => {
                    frame.next = 1;
                    let (child, size) = &frame.children[0];
                    next = (child.clone(), Some(*size));
                    stack.push(frame);
                    continue;
                }
            };
            // Store finished children and climb until an index has another child to do.
            loop {
                let Some(frame) = stack.last_mut() else {
                    return Ok((done.media_type, done.bytes));
                };
                self.store
                    .put_mirrored_manifest(
                        repo,
                        &Reference::Digest(done.digest.clone()),
                        &done.media_type,
                        done.bytes,
                    )
                    .await?;
                if referrers {
                    self.sync_referrers(repo, &done.digest).await?;
                }
                self.progress(|p| p.manifests.done += 1);
                if frame.next < frame.children.len() {
                    let (child, size) = &frame.children[frame.next];
                    next = (child.clone(), Some(*size));
                    frame.next += 1;
                    break;
                }
                let frame = stack.pop().expect("a frame is on the stack");
                let bytes = match frame.bytes {
                    Some(bytes) => bytes,
                    None => self.refetch(repo, &frame.digest).await?,
                };
                done = Done {
                    digest: frame.digest,
                    media_type: frame.media_type,
                    bytes,
                };
            }
        }
    }

    /// Fetch one manifest (or find it complete here): an index becomes a frame to descend into,
    /// an image manifest gets its blobs.
    async fn visit(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
        size: Option<u64>,
        depth: usize,
        prefetched: Option<RemoteManifest>,
    ) -> Result<Visit, SyncError> {
        // Stored here means complete: children are always stored before their parents.
        if let Some(m) = self.store.manifest_by_digest(repo, digest)? {
            return Ok(Visit::Leaf(Done {
                digest: digest.clone(),
                media_type: m.media_type.as_str().to_owned(),
                bytes: m.bytes,
            }));
        }
        let remote = match prefetched {
            Some(m) if m.named == *digest => m,
            _ => self.refetch_remote(repo, digest).await?,
        };
        if let Some(size) = size.filter(|s| *s != remote.bytes.len() as u64) {
            return Err(SyncError::SizeMismatch(format!(
                "manifest {repo}@{digest}: the descriptor says {size} bytes, the parent sent {}",
                remote.bytes.len()
            )));
        }
        let parsed = ParsedManifest::parse(Some(&remote.media_type), &remote.bytes)
            .map_err(|e| SyncError::Protocol(format!("manifest {digest} of {repo}: {e}")))?;
        let media_type = parsed.media_type.as_str().to_owned();
        if !parsed.media_type.is_index() {
            self.ensure_blobs(repo, &parsed).await?;
            return Ok(Visit::Leaf(Done {
                digest: digest.clone(),
                media_type,
                bytes: remote.bytes,
            }));
        }
        let children = self.selected_children(&remote.bytes, &parsed)?;
        if children.is_empty() {
            return Ok(Visit::Leaf(Done {
                digest: digest.clone(),
                media_type,
                bytes: remote.bytes,
            }));
        }
        if depth >= MAX_INDEX_DEPTH {
            return Err(SyncError::Refused(format!(
                "{repo}@{digest}: indexes nested deeper than {MAX_INDEX_DEPTH} levels"
            )));
        }
        self.progress(|p| p.manifests.total += children.len() as u64);
        let keep = remote.bytes.len() <= KEEP_MANIFEST_BYTES;
        Ok(Visit::Index(Frame {
            digest: digest.clone(),
            media_type,
            bytes: keep.then_some(remote.bytes),
            children,
            next: 0,
        }))
    }

    async fn refetch_remote(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
    ) -> Result<RemoteManifest, SyncError> {
        self.client
            .get_manifest(repo.as_str(), &digest.to_string())
            .await?
            .ok_or_else(|| {
                SyncError::Protocol(format!(
                    "manifest {digest} of {repo} vanished at the parent"
                ))
            })
    }

    /// The bytes of a large index again, once its children are stored (digest-verified).
    async fn refetch(&self, repo: &RepositoryName, digest: &Digest) -> Result<Bytes, SyncError> {
        Ok(self.refetch_remote(repo, digest).await?.bytes)
    }

    /// Children of an index whose platform is selected (all when no platforms are configured),
    /// with the sizes their descriptors give.
    fn selected_children(
        &self,
        bytes: &[u8],
        parsed: &ParsedManifest,
    ) -> Result<Vec<(Digest, u64)>, SyncError> {
        let index: oci_spec::image::ImageIndex = serde_json::from_slice(bytes)
            .map_err(|e| SyncError::Protocol(format!("invalid index: {e}")))?;
        let mut out = Vec::new();
        for (descriptor, digest) in index.manifests().iter().zip(&parsed.children) {
            let keep = match descriptor.platform() {
                None => true,
                Some(p) => self.selection.matches_platform(
                    &p.os().to_string(),
                    &p.architecture().to_string(),
                    p.variant().as_deref(),
                ),
            };
            if keep {
                out.push((digest.clone(), descriptor.size()));
            }
        }
        Ok(out)
    }

    async fn ensure_blobs(
        &self,
        repo: &RepositoryName,
        parsed: &ParsedManifest,
    ) -> Result<(), SyncError> {
        self.progress(|p| p.blobs.total += parsed.blobs.len() as u64);
        let blobs = parsed
            .blobs
            .iter()
            .cloned()
            .zip(parsed.blob_sizes.iter().copied());
        let results: Vec<Result<(), SyncError>> = stream::iter(blobs)
            .map(|(d, size)| async move { self.ensure_blob(repo, &d, size).await })
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        results.into_iter().collect()
    }

    /// Link the blob if any repository here has it; otherwise download it (once, resumably).
    async fn ensure_blob(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
        size: u64,
    ) -> Result<(), SyncError> {
        if !self.store.link_local_blob(repo, digest).await? {
            let lock = self
                .blob_locks
                .lock()
                .expect("blob lock map")
                .entry(digest.clone())
                .or_default()
                .clone();
            let _guard = lock.lock().await;
            let result = self.download_and_import(repo, digest, size).await;
            self.blob_locks
                .lock()
                .expect("blob lock map")
                .remove(digest);
            result?;
        }
        self.progress(|p| p.blobs.done += 1);
        Ok(())
    }

    async fn download_and_import(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
        size: u64,
    ) -> Result<(), SyncError> {
        if self.store.link_local_blob(repo, digest).await? {
            return Ok(());
        }
        let _permit = self
            .downloads
            .acquire()
            .await
            .expect("semaphore is never closed");
        self.progress(|p| p.bytes.total += size);
        // Room for what is left to download, evicting least recently pulled synced tags if
        // needed; when nothing more can go, the tag fails with DiskError and the pass goes on.
        let partial = self.store.partial_path(digest);
        // The room stays promised until the blob is imported, so downloads and pushes running
        // at once cannot together overshoot the limits.
        let _room = self
            .store
            .make_room(size.saturating_sub(partial_len(&partial)))
            .await?;
        let mut left = BLOB_ATTEMPTS;
        let mut pause = BLOB_RETRY_BASE;
        loop {
            let before = partial_len(&partial);
            match self
                .client
                .download_blob_sized(repo.as_str(), digest, Some(size), &partial)
                .await
            {
                Ok(transferred) => {
                    tracing::debug!(%digest, transferred, size, "blob downloaded");
                    break;
                }
                Err(SyncError::Transfer(why)) => {
                    if partial_len(&partial) > before {
                        // Bytes keep arriving: the link is flaky, not dead.
                        left = BLOB_ATTEMPTS;
                        pause = BLOB_RETRY_BASE;
                    }
                    left -= 1;
                    if left == 0 {
                        return Err(SyncError::Transfer(format!(
                            "{why} (gave up after {BLOB_ATTEMPTS} attempts without progress)"
                        )));
                    }
                    tracing::info!(%digest, %why, "blob transfer interrupted; resuming");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(BLOB_RETRY_CAP);
                }
                Err(e) => {
                    if matches!(e, SyncError::Disk(_)) {
                        // A full disk: the partial download is given back rather than kept to
                        // resume; nothing else can be written until there is room.
                        let _ = std::fs::remove_file(&partial);
                    }
                    return Err(e);
                }
            }
        }
        // The whole blob is done, including bytes a resumed download already had.
        self.progress(|p| p.bytes.done += size);
        self.store.import_blob(repo, digest, partial).await?;
        Ok(())
    }

    /// Referrers of `subject` (signatures, SBOMs) that are not here yet. Checked on every pass
    /// for every tag; a failure fails the tag, so the next pass asks again.
    pub(super) fn sync_referrers<'a>(
        &'a self,
        repo: &'a RepositoryName,
        subject: &'a Digest,
    ) -> BoxFuture<'a, Result<(), SyncError>> {
        Box::pin(async move {
            if !self.referrers_supported.load(Ordering::Relaxed) {
                return Ok(());
            }
            let Some(referrers) = self.client.referrers(repo.as_str(), subject).await? else {
                // No referrers API at the parent: not asked again in this pass.
                self.referrers_supported.store(false, Ordering::Relaxed);
                return Ok(());
            };
            for referrer in referrers {
                if self.store.has_manifest(repo, &referrer)? {
                    continue;
                }
                self.store_by_digest(repo, &referrer).await?;
            }
            Ok(())
        })
    }

    /// Fetch a manifest and its tree and store it by digest (a referrer, an untagged push).
    pub(super) async fn store_by_digest(
        &self,
        repo: &RepositoryName,
        digest: &Digest,
    ) -> Result<(), SyncError> {
        self.progress(|p| p.manifests.total += 1);
        let (media_type, bytes) = self
            .fetch_tree(repo, digest.clone(), None, false, None)
            .await?;
        self.store
            .put_mirrored_manifest(repo, &Reference::Digest(digest.clone()), &media_type, bytes)
            .await?;
        self.progress(|p| p.manifests.done += 1);
        Ok(())
    }
}

enum Visit {
    Leaf(Done),
    Index(Frame),
}

fn partial_len(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}
