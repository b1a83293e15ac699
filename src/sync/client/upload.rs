//! Pushing to the parent (a ReadWrite node's upstream): plain OCI pushes with the sync token —
//! blobs streamed from their files (checked with `HEAD` first, so a replay sends nothing twice),
//! manifests, tags and deletes — through the same transport, authentication and retries as
//! every pull. A blob body is re-opened from its file for every attempt, never held in memory,
//! paced by the bandwidth limit like downloads, and judged by its progress rather than by one
//! deadline for the whole request.

use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{self, LOCATION};
use reqwest::{Method, StatusCode, Url};

use super::download::{Limiter, MAX_UPLOAD_PIECE};
use super::{unexpected, ParentClient, Req, SyncError, MAX_JSON_BYTES, RATE_WINDOW};
use crate::oci::Digest;

/// How the parent answered a `DELETE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deleted {
    Yes,
    NotThere,
    /// For good (deletes disabled there, or tag deletion unsupported), with its answer.
    Refused(String),
}

fn push_scope(repo: &str) -> String {
    format!("repository:{repo}:pull,push")
}

impl ParentClient {
    /// Whether the parent has `digest` in `repo`.
    pub async fn blob_exists(&self, repo: &str, digest: &Digest) -> Result<bool, SyncError> {
        let req = Req::new(
            Method::HEAD,
            self.url(&format!("/v2/{repo}/blobs/{digest}"))?,
            push_scope(repo),
        );
        let f = self.fetch(&req, 0).await?;
        match f.status {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Err(unexpected(&req, &f)),
        }
    }

    /// Upload the blob in `file` (`size` bytes) as `digest`: `POST` a session, then one `PUT`
    /// with the whole body streamed from the file.
    pub async fn upload_blob(
        &self,
        repo: &str,
        digest: &Digest,
        file: &Path,
        size: u64,
    ) -> Result<(), SyncError> {
        let start = Req::new(
            Method::POST,
            self.url(&format!("/v2/{repo}/blobs/uploads/"))?,
            push_scope(repo),
        );
        let f = self.fetch(&start, MAX_JSON_BYTES).await?;
        if f.status != StatusCode::ACCEPTED {
            return Err(unexpected(&start, &f));
        }
        let location = f
            .headers
            .get(LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                SyncError::Protocol(format!("{} answered no Location", start.describe()))
            })?;
        let mut url = start.url.join(location).map_err(|e| {
            SyncError::Protocol(format!("invalid upload Location {location:?}: {e}"))
        })?;
        self.same_origin(&url)?;
        url.query_pairs_mut()
            .append_pair("digest", &digest.to_string());
        let mut put = Req::new(Method::PUT, url, push_scope(repo))
            .header(header::CONTENT_TYPE, "application/octet-stream");
        put.file_body = Some((file.to_owned(), size));
        let f = self.fetch(&put, MAX_JSON_BYTES).await?;
        if f.status != StatusCode::CREATED {
            return Err(unexpected(&put, &f));
        }
        Ok(())
    }

    /// `PUT` a manifest under `reference` (a tag or its digest).
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: Bytes,
    ) -> Result<(), SyncError> {
        let mut req = Req::new(
            Method::PUT,
            self.url(&format!("/v2/{repo}/manifests/{reference}"))?,
            push_scope(repo),
        )
        .header(header::CONTENT_TYPE, media_type);
        req.body = Some(bytes);
        let f = self.fetch(&req, MAX_JSON_BYTES).await?;
        if f.status != StatusCode::CREATED {
            return Err(unexpected(&req, &f));
        }
        Ok(())
    }

    /// `DELETE` a manifest by digest or tag.
    pub async fn delete_manifest(&self, repo: &str, reference: &str) -> Result<Deleted, SyncError> {
        let req = Req::new(
            Method::DELETE,
            self.url(&format!("/v2/{repo}/manifests/{reference}"))?,
            format!("repository:{repo}:delete"),
        );
        let f = self.fetch(&req, MAX_JSON_BYTES).await?;
        match f.status {
            s if s.is_success() => Ok(Deleted::Yes),
            StatusCode::NOT_FOUND => Ok(Deleted::NotThere),
            // Deletes disabled (distribution's default), or tags that cannot be deleted: asking
            // again will not change the answer.
            StatusCode::BAD_REQUEST | StatusCode::METHOD_NOT_ALLOWED => {
                Ok(Deleted::Refused(unexpected(&req, &f).to_string()))
            }
            _ => Err(unexpected(&req, &f)),
        }
    }

    /// Refuse a URL (an upload `Location`) that leaves the parent.
    fn same_origin(&self, url: &Url) -> Result<(), SyncError> {
        let origin = &self.origin;
        if url.scheme() == origin.scheme()
            && url.host_str() == origin.host_str()
            && url.port_or_known_default() == origin.port_or_known_default()
        {
            Ok(())
        } else {
            Err(SyncError::Protocol(format!(
                "the parent sent an upload location on another host: {}",
                url.origin().ascii_serialization()
            )))
        }
    }
}

/// Bytes of a blob body handed to the connection so far.
#[derive(Clone, Default)]
pub(super) struct Sent(Arc<AtomicU64>);

impl Sent {
    fn add(&self, n: usize) {
        self.0.fetch_add(n as u64, Ordering::Relaxed);
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A streaming request body reading `path` in pieces of up to 256 KiB, paced by the node's
/// bandwidth limit (shared with downloads: `bandwidthLimit` bounds the link both ways; pieces
/// are then a quarter second's worth, so progress shows steadily), counting what it hands over
/// in `sent`.
pub(super) async fn file_body(
    path: &Path,
    limiter: Option<Arc<Limiter>>,
    sent: Sent,
) -> Result<reqwest::Body, SyncError> {
    use tokio::io::AsyncReadExt;
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| SyncError::Disk(format!("opening {}: {e}", path.display())))?;
    let piece = limiter.as_ref().map_or(MAX_UPLOAD_PIECE, |l| l.piece());
    let state = (file, limiter, sent, 0u64);
    let chunks = futures_util::stream::try_unfold(
        state,
        move |(mut file, limiter, sent, carry)| async move {
            let mut buf = vec![0u8; piece];
            let n = file.read(&mut buf).await?;
            if n == 0 {
                return Ok::<_, std::io::Error>(None);
            }
            buf.truncate(n);
            let carry = match &limiter {
                Some(limiter) => limiter.take(carry + n as u64).await,
                None => 0,
            };
            sent.add(n);
            Ok(Some((Bytes::from(buf), (file, limiter, sent, carry))))
        },
    );
    Ok(reqwest::Body::wrap_stream(chunks))
}

/// Waits for the answer to a request whose blob body is being sent. The body must keep moving
/// (`min_rate` bytes a second over each [`RATE_WINDOW`], as a download must) and, once all of it
/// is sent, the answer must come within `wait`. `None`: it did not. One deadline for the whole
/// request would fail every blob that takes longer than `wait` to send on a slow link.
pub(super) async fn answer_to_upload<T>(
    send: impl Future<Output = T>,
    sent: &Sent,
    size: u64,
    wait: Duration,
    min_rate: u64,
) -> Option<T> {
    tokio::pin!(send);
    let mut before = sent.get();
    loop {
        let body_done = before >= size;
        let window = if body_done { wait } else { RATE_WINDOW };
        match tokio::time::timeout(window, &mut send).await {
            Ok(answer) => return Some(answer),
            Err(_) if body_done => return None,
            Err(_) => {
                let now = sent.get();
                if now < size && now - before < min_rate.saturating_mul(window.as_secs()) {
                    return None;
                }
                before = now;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body sent at `rate` bytes a second (in 1 KiB steps), then the answer `answer_after`
    /// later.
    fn upload(
        sent: &Sent,
        size: u64,
        rate: u64,
        answer_after: Duration,
    ) -> impl Future<Output = u64> {
        let sent = sent.clone();
        async move {
            let step = Duration::from_secs_f64(1024.0 / rate as f64);
            while sent.get() < size {
                tokio::time::sleep(step).await;
                sent.add(1024);
            }
            tokio::time::sleep(answer_after).await;
            sent.get()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_upload_that_keeps_moving_is_answered_however_long_it_takes() {
        let sent = Sent::default();
        // 10 MiB at 64 KiB/s: 160 s, far beyond the 30 s wait for the answer.
        let size = 10 << 20;
        let send = upload(&sent, size, 64 << 10, Duration::from_secs(5));
        let started = tokio::time::Instant::now();
        let answer = answer_to_upload(send, &sent, size, Duration::from_secs(30), 1024).await;
        assert_eq!(answer, Some(size));
        assert!(started.elapsed() >= Duration::from_secs(160));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_upload_ends_within_a_window() {
        let sent = Sent::default();
        let stalled = {
            let sent = sent.clone();
            async move {
                sent.add(4096);
                std::future::pending::<()>().await
            }
        };
        let started = tokio::time::Instant::now();
        let answer = answer_to_upload(stalled, &sent, 1 << 20, Duration::from_secs(30), 1024).await;
        assert_eq!(answer, None);
        assert!(
            started.elapsed() <= RATE_WINDOW * 2,
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_sent_body_without_an_answer_ends_after_the_wait() {
        let sent = Sent::default();
        let size = 1 << 20;
        let send = upload(&sent, size, 1 << 20, Duration::from_secs(3600));
        let started = tokio::time::Instant::now();
        let answer = answer_to_upload(send, &sent, size, Duration::from_secs(30), 1024).await;
        assert_eq!(answer, None);
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(30) && took <= Duration::from_secs(45),
            "{took:?}"
        );
    }
}
