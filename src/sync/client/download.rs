//! Blob downloads: streamed to a file under `partial/`, resumed with `Range` from the bytes
//! already there, paced by the shared bandwidth limit, and verified against the descriptor — its
//! size as well as its digest — before the caller may import the file.
//!
//! It exists apart from the request loop because a blob is the one answer that goes to disk and
//! may be huge: every byte here is bounded by the descriptor's size (a parent that streams more
//! is cut off and its bytes dropped), a partial file that cannot be resumed is dropped, and a
//! transfer slower than [`MIN_TRANSFER_RATE`](super::MIN_TRANSFER_RATE) ends, so the caller can
//! retry from where it stopped.

use std::io::{Read, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Instant;

use reqwest::header;
use reqwest::{Method, StatusCode};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use super::body::RateGuard;
use super::{
    disk, pull_scope, read_whole, repository, unexpected, Fetched, ParentClient, Req, SyncError,
    WRITE_CHUNK,
};
use crate::oci::{Digest, Hasher};

impl ParentClient {
    /// Download blob `digest` of `repo` into `partial`, resuming with `Range` from the bytes
    /// already there; verify the whole file against `digest` and fsync it. Returns the number of
    /// bytes transferred in this call. Prefer [`ParentClient::download_blob_sized`] when the
    /// descriptor's size is known.
    pub async fn download_blob(
        &self,
        repo: &str,
        digest: &Digest,
        partial: &Path,
    ) -> Result<u64, SyncError> {
        self.download_blob_sized(repo, digest, None, partial).await
    }

    /// Like [`ParentClient::download_blob`], bounded by `size` (the descriptor's): never more
    /// than `size` bytes go to disk, a parent that sends more fails the download and its bytes
    /// are dropped, and the finished file must be exactly `size` bytes long.
    ///
    /// A cut or too slow transfer is [`SyncError::Transfer`] and keeps the bytes that arrived for
    /// the next call to resume; a size or digest mismatch drops them.
    pub async fn download_blob_sized(
        &self,
        repo: &str,
        digest: &Digest,
        size: Option<u64>,
        partial: &Path,
    ) -> Result<u64, SyncError> {
        let repo = repository(repo)?;
        let what = format!("blob {repo}@{digest}");
        if let Some(dir) = partial.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| disk(dir, e))?;
        }
        let mut file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(partial)
            .await
            .map_err(|e| disk(partial, e))?;
        let mut have = file.metadata().await.map_err(|e| disk(partial, e))?.len();
        if let Some(size) = size {
            if have > size {
                // Longer than the blob can be: nothing in it can be resumed.
                tracing::info!(%digest, have, size, "dropping an oversized partial download");
                file.set_len(0).await.map_err(|e| disk(partial, e))?;
                have = 0;
            } else if have == size && size > 0 {
                let actual = hash_prefix(partial, digest).await?.finish();
                if &actual == digest {
                    return self
                        .finish_blob(file, partial, &what, digest, size, actual, 0)
                        .await;
                }
                file.set_len(0).await.map_err(|e| disk(partial, e))?;
                have = 0;
            }
        }

        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"))?;
        let mut req = Req::new(Method::GET, url, pull_scope(&repo));
        if have > 0 {
            req = req.header(header::RANGE, &format!("bytes={have}-"));
        }
        let mut resp = self.send(&req).await?;
        let status = resp.status();
        let resumed = status == StatusCode::PARTIAL_CONTENT
            && have > 0
            && resp
                .headers()
                .get(header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(content_range_start)
                == Some(have);
        let mut hasher = match status {
            StatusCode::PARTIAL_CONTENT if have > 0 && !resumed => {
                // A range we did not ask for: these bytes cannot be placed; start over next time.
                drop(resp);
                file.set_len(0).await.map_err(|e| disk(partial, e))?;
                return Err(SyncError::Transfer(format!(
                    "{what}: asked for bytes from {have}, the parent answered another range"
                )));
            }
            StatusCode::PARTIAL_CONTENT if resumed => {
                let hasher = hash_prefix(partial, digest).await?;
                file.seek(SeekFrom::End(0))
                    .await
                    .map_err(|e| disk(partial, e))?;
                hasher
            }
            StatusCode::OK | StatusCode::PARTIAL_CONTENT => {
                // Range ignored (or nothing to resume): start over.
                have = 0;
                file.set_len(0).await.map_err(|e| disk(partial, e))?;
                file.seek(SeekFrom::Start(0))
                    .await
                    .map_err(|e| disk(partial, e))?;
                digest.algorithm().hasher()
            }
            StatusCode::RANGE_NOT_SATISFIABLE if have > 0 => {
                // Nothing after `have`: the file should already be the whole blob.
                drop(resp);
                let actual = hash_prefix(partial, digest).await?.finish();
                let size = size.unwrap_or(have);
                return self
                    .finish_blob(file, partial, &what, digest, size, actual, 0)
                    .await;
            }
            _ => {
                let body = read_whole(&mut resp, 64 << 10).await;
                let f = Fetched {
                    status,
                    headers: resp.headers().clone(),
                    body: body.unwrap_or_default(),
                };
                return Err(unexpected(&req, &f));
            }
        };
        if let (Some(size), Some(len)) = (size, resp.content_length()) {
            if have + len != size {
                drop(resp);
                drop(file);
                remove(partial).await?;
                return Err(SyncError::SizeMismatch(format!(
                    "{what}: the descriptor says {size} bytes, the parent announces {}",
                    have + len
                )));
            }
        }

        let mut writer = tokio::io::BufWriter::with_capacity(WRITE_CHUNK, file);
        let mut transferred = 0u64;
        let mut uncharged = 0u64;
        let mut guard = RateGuard::new(self.min_rate());
        let cut = loop {
            let chunk = match tokio::time::timeout(guard.wait(), resp.chunk()).await {
                Ok(Ok(Some(chunk))) => chunk,
                Ok(Ok(None)) => break None,
                Ok(Err(e)) => break Some(super::chain(&e)),
                Err(_) => match guard.check(0) {
                    Ok(()) => continue,
                    Err(why) => break Some(why),
                },
            };
            if size.is_some_and(|size| have + transferred + chunk.len() as u64 > size) {
                drop(resp);
                drop(writer);
                remove(partial).await?;
                return Err(SyncError::SizeMismatch(format!(
                    "{what}: the parent sent more than the {} bytes the descriptor says",
                    size.unwrap_or_default()
                )));
            }
            if let Some(limiter) = &self.limiter {
                let waited = Instant::now();
                uncharged = limiter.take(uncharged + chunk.len() as u64).await;
                guard.pause(waited.elapsed());
            }
            hasher.update(&chunk);
            writer
                .write_all(&chunk)
                .await
                .map_err(|e| disk(partial, e))?;
            transferred += chunk.len() as u64;
            if let Err(why) = guard.check(chunk.len() as u64) {
                break Some(why);
            }
        };
        writer.flush().await.map_err(|e| disk(partial, e))?;
        let file = writer.into_inner();
        let total = have + transferred;
        let short = size.is_some_and(|size| total < size);
        if cut.is_some() || short {
            // Keep what arrived: the next call resumes from there.
            let _ = file.sync_data().await;
            let why = cut.unwrap_or_else(|| "the answer ended early".into());
            return Err(SyncError::Transfer(format!(
                "{what}: download cut after {transferred} bytes ({why})"
            )));
        }
        let actual = hasher.finish();
        self.finish_blob(
            file,
            partial,
            &what,
            digest,
            size.unwrap_or(total),
            actual,
            transferred,
        )
        .await
    }

    /// The smallest transfer rate tolerated: [`super::MIN_TRANSFER_RATE`], or less under a
    /// bandwidth limit that is itself lower.
    pub(super) fn min_rate(&self) -> u64 {
        match &self.limiter {
            Some(l) => super::MIN_TRANSFER_RATE.min(l.rate() / 4),
            None => super::MIN_TRANSFER_RATE,
        }
    }

    /// The end of a download: compare size and digest, then keep (fsynced) or delete the file.
    #[allow(clippy::too_many_arguments)]
    async fn finish_blob(
        &self,
        file: tokio::fs::File,
        partial: &Path,
        what: &str,
        expected: &Digest,
        size: u64,
        actual: Digest,
        transferred: u64,
    ) -> Result<u64, SyncError> {
        let len = file.metadata().await.map_err(|e| disk(partial, e))?.len();
        if len != size {
            drop(file);
            remove(partial).await?;
            return Err(SyncError::SizeMismatch(format!(
                "{what}: the descriptor says {size} bytes, the parent sent {len}"
            )));
        }
        if &actual != expected {
            drop(file);
            remove(partial).await?;
            return Err(SyncError::DigestMismatch {
                what: what.to_owned(),
                expected: expected.to_string(),
                actual: actual.to_string(),
            });
        }
        file.sync_all().await.map_err(|e| disk(partial, e))?;
        Ok(transferred)
    }
}

/// Delete a partial download that cannot be used.
async fn remove(partial: &Path) -> Result<(), SyncError> {
    match tokio::fs::remove_file(partial).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(disk(partial, e)),
    }
}

/// The start offset of `Content-Range: bytes START-END/TOTAL`.
fn content_range_start(value: &str) -> Option<u64> {
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    let (start, _) = rest.split_once('-')?;
    start.trim().parse().ok()
}

/// Hash the bytes already in `partial` with the algorithm of `digest` (off the async threads).
async fn hash_prefix(partial: &Path, digest: &Digest) -> Result<Hasher, SyncError> {
    let path: PathBuf = partial.to_owned();
    let mut hasher = digest.algorithm().hasher();
    tokio::task::spawn_blocking(move || {
        let mut file = std::fs::File::open(&path).map_err(|e| disk(&path, e))?;
        let mut buf = vec![0u8; WRITE_CHUNK];
        loop {
            let n = file.read(&mut buf).map_err(|e| disk(&path, e))?;
            if n == 0 {
                return Ok(hasher);
            }
            hasher.update(&buf[..n]);
        }
    })
    .await
    .map_err(|e| SyncError::Disk(format!("hashing {}: {e}", partial.display())))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_range() {
        assert_eq!(content_range_start("bytes 4000-4999/5000"), Some(4000));
        assert_eq!(content_range_start("bytes */5000"), None);
    }
}
