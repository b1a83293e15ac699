//! Pushing to the parent (a ReadWrite node's upstream): plain OCI pushes with the sync token —
//! blobs streamed from their files (checked with `HEAD` first, so a replay sends nothing twice),
//! manifests, tags and deletes — through the same transport, authentication and retries as
//! every pull. A blob body is re-opened from its file for every attempt, never held in memory,
//! paced by the bandwidth limit like downloads, and judged by its progress rather than by one
//! deadline for the whole request.
//!
//! A big blob goes up in chunks (`PATCH` with `Content-Range`) in a session whose URL the
//! caller keeps durably ([`UploadSession`]): an attempt cut off by the link or by a kill -9
//! resumes where the parent says the session stands (`GET` on it: `Range: 0-N`) instead of
//! sending the blob again from its first byte, which on a slow link is the difference between
//! minutes and hours. A connected-registry parent keeps what arrived of a cut chunk; a parent
//! that drops a session (distribution cancels one resumed at an unexpected offset) gets a fresh
//! one.

use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{self, LOCATION};
use reqwest::{Method, StatusCode, Url};

use super::pace::{Limiter, MAX_UPLOAD_PIECE};
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

/// Blobs larger than this go up in chunks, in a session a later attempt resumes; smaller ones
/// in one `PUT` (one request fewer, and little to lose).
pub const CHUNKED_UPLOAD_ABOVE: u64 = 32 << 20;
/// The size of one chunk (the last may be smaller).
pub const UPLOAD_CHUNK: u64 = 32 << 20;
/// Fresh sessions one upload may start after the parent lost or refused the one in use; after
/// that the blob goes in one `PUT`.
const SESSION_RESTARTS: u32 = 2;

/// Where a blob's chunked upload session is kept between attempts and across restarts (the
/// store's sync state, for the upstream pusher).
pub trait UploadSession {
    /// The session URL an earlier attempt left, if any.
    fn saved(&self) -> Option<String>;
    /// Keep `location` durably as the session to resume (`None`: there is none).
    fn save(&self, location: Option<&str>) -> impl Future<Output = Result<(), SyncError>> + Send;
}

/// `len` bytes of the file at `path` from byte `start`: the body of a blob upload or chunk.
#[derive(Clone)]
pub(super) struct FileBody {
    pub path: std::path::PathBuf,
    pub start: u64,
    pub len: u64,
}

/// How the parent took one chunk.
enum Chunk {
    /// The session now ends at this offset, to be continued at this URL.
    Took(Url, u64),
    /// The parent no longer has the session, or refused to go on with it.
    Lost,
}

fn push_scope(repo: &str) -> String {
    format!("repository:{repo}:pull,push")
}

/// The offset after the last byte a session's `Range: 0-N` (or `bytes=0-N`) header names;
/// `None` without one. "0-0" is read as nothing received yet (it is ambiguous: some registries
/// send it for an empty session), so a session holding one byte resumes from zero and is
/// corrected by the parent's answer.
fn range_end(headers: &reqwest::header::HeaderMap) -> Option<u64> {
    let value = headers.get(header::RANGE)?.to_str().ok()?;
    let value = value.strip_prefix("bytes=").unwrap_or(value);
    let (first, last) = value.split_once('-')?;
    let (first, last) = (
        first.trim().parse::<u64>().ok()?,
        last.trim().parse::<u64>().ok()?,
    );
    match (first, last) {
        (0, 0) => Some(0),
        (0, last) => last.checked_add(1),
        _ => None,
    }
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

    /// Upload the blob in `file` (`size` bytes) as `digest`: up to [`CHUNKED_UPLOAD_ABOVE`],
    /// `POST` a session and one `PUT` with the whole body; above it, in chunks, resuming the
    /// session `session` kept from an earlier attempt if the parent still has it.
    pub async fn upload_blob(
        &self,
        repo: &str,
        digest: &Digest,
        file: &Path,
        size: u64,
        session: &impl UploadSession,
    ) -> Result<(), SyncError> {
        if size <= CHUNKED_UPLOAD_ABOVE {
            return self.upload_whole(repo, digest, file, size).await;
        }
        let (mut url, mut offset) = match self.resume_upload(repo, session).await? {
            Some((url, offset)) if offset <= size => (url, offset),
            // None kept, or one holding more than the blob: it cannot end well.
            _ => self.fresh_upload(repo, session).await?,
        };
        let mut restarts = 0;
        while offset < size {
            let end = offset.saturating_add(UPLOAD_CHUNK).min(size);
            match self.upload_chunk(repo, &url, file, offset, end).await? {
                Chunk::Took(next, at) if at > offset && at <= size => {
                    if next != url {
                        session.save(Some(next.as_str())).await?;
                    }
                    (url, offset) = (next, at);
                }
                Chunk::Took(_, at) if at > size => {
                    return Err(SyncError::Protocol(format!(
                        "the parent says the upload of {digest} holds {at} bytes, more than its {size}"
                    )));
                }
                // No progress (the parent holds a byte it reported as "0-0"), or no session.
                Chunk::Took(..) | Chunk::Lost => {
                    restarts += 1;
                    if restarts > SESSION_RESTARTS {
                        // A parent that will not take chunks still takes the blob whole.
                        tracing::warn!(%digest, "the parent keeps refusing chunks; sending the blob in one PUT");
                        session.save(None).await?;
                        return self.upload_whole(repo, digest, file, size).await;
                    }
                    tracing::info!(%digest, "the parent has no usable upload session; starting a new one");
                    (url, offset) = self.fresh_upload(repo, session).await?;
                }
            }
        }
        match self.finish_upload(repo, url, digest, file, size, 0).await {
            // The parent answered and refused it (a digest that does not match what the
            // session holds): the next attempt starts afresh rather than repeat this one.
            Err(e @ SyncError::Protocol(_)) => {
                session.save(None).await?;
                Err(e)
            }
            Err(e) => Err(e),
            Ok(()) => session.save(None).await,
        }
    }

    /// `POST` a session, then one `PUT` with the whole blob.
    async fn upload_whole(
        &self,
        repo: &str,
        digest: &Digest,
        file: &Path,
        size: u64,
    ) -> Result<(), SyncError> {
        let url = self.start_upload(repo).await?;
        self.finish_upload(repo, url, digest, file, 0, size).await
    }

    /// `POST` a new upload session; its URL.
    async fn start_upload(&self, repo: &str) -> Result<Url, SyncError> {
        let start = Req::new(
            Method::POST,
            self.url(&format!("/v2/{repo}/blobs/uploads/"))?,
            push_scope(repo),
        );
        let f = self.fetch(&start, MAX_JSON_BYTES).await?;
        if f.status != StatusCode::ACCEPTED {
            return Err(unexpected(&start, &f));
        }
        self.session_location(&start, &f.headers)?.ok_or_else(|| {
            SyncError::Protocol(format!("{} answered no Location", start.describe()))
        })
    }

    /// A new session, kept in `session` before anything is sent to it.
    async fn fresh_upload(
        &self,
        repo: &str,
        session: &impl UploadSession,
    ) -> Result<(Url, u64), SyncError> {
        let url = self.start_upload(repo).await?;
        session.save(Some(url.as_str())).await?;
        Ok((url, 0))
    }

    /// Where the kept session stands at the parent (its URL to go on with and the offset of
    /// the next byte); `None` (and nothing kept) when there is none or the parent lost it.
    async fn resume_upload(
        &self,
        repo: &str,
        session: &impl UploadSession,
    ) -> Result<Option<(Url, u64)>, SyncError> {
        let Some(saved) = session.saved() else {
            return Ok(None);
        };
        let url = match Url::parse(&saved) {
            Ok(url) if self.same_origin(&url).is_ok() => url,
            // Kept for another parent (the endpoint changed), or not a URL.
            _ => {
                session.save(None).await?;
                return Ok(None);
            }
        };
        let status = Req::new(Method::GET, url, push_scope(repo));
        let f = self.fetch(&status, MAX_JSON_BYTES).await?;
        if f.status != StatusCode::NO_CONTENT && f.status != StatusCode::OK {
            tracing::info!(status = %f.status, "the parent no longer has the upload session; starting a new one");
            session.save(None).await?;
            return Ok(None);
        }
        let url = self
            .session_location(&status, &f.headers)?
            .unwrap_or(status.url);
        let offset = range_end(&f.headers).unwrap_or(0);
        tracing::info!(offset, "resuming an upload to the parent");
        Ok(Some((url, offset)))
    }

    /// `PATCH` bytes `start..end` of `file` into the session at `url`.
    async fn upload_chunk(
        &self,
        repo: &str,
        url: &Url,
        file: &Path,
        start: u64,
        end: u64,
    ) -> Result<Chunk, SyncError> {
        let mut patch = Req::new(Method::PATCH, url.clone(), push_scope(repo))
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::CONTENT_RANGE, &format!("{start}-{}", end - 1));
        patch.file_body = Some(FileBody {
            path: file.to_owned(),
            start,
            len: end - start,
        });
        let f = self.fetch(&patch, MAX_JSON_BYTES).await?;
        match f.status {
            // Taken; or (416) not where the chunk starts, and the answer says where it is.
            StatusCode::ACCEPTED | StatusCode::RANGE_NOT_SATISFIABLE => {
                let next = self
                    .session_location(&patch, &f.headers)?
                    .unwrap_or_else(|| url.clone());
                match range_end(&f.headers) {
                    Some(at) => Ok(Chunk::Took(next, at)),
                    None if f.status == StatusCode::ACCEPTED => Ok(Chunk::Took(next, end)),
                    None => Ok(Chunk::Lost),
                }
            }
            // The session is gone, or was cancelled (distribution: resumed at an offset it
            // did not expect).
            StatusCode::NOT_FOUND | StatusCode::BAD_REQUEST => {
                tracing::info!(status = %f.status, "the parent refused a chunk: {}", String::from_utf8_lossy(&f.body));
                Ok(Chunk::Lost)
            }
            _ => Err(unexpected(&patch, &f)),
        }
    }

    /// The closing `PUT …?digest=` of the session at `url`, with `len` bytes of `file` from
    /// `start` as its body (all of a small blob; nothing after chunks).
    async fn finish_upload(
        &self,
        repo: &str,
        mut url: Url,
        digest: &Digest,
        file: &Path,
        start: u64,
        len: u64,
    ) -> Result<(), SyncError> {
        url.query_pairs_mut()
            .append_pair("digest", &digest.to_string());
        let mut put = Req::new(Method::PUT, url, push_scope(repo))
            .header(header::CONTENT_TYPE, "application/octet-stream");
        if len > 0 {
            put.file_body = Some(FileBody {
                path: file.to_owned(),
                start,
                len,
            });
        } else {
            put.body = Some(Bytes::new());
        }
        let f = self.fetch(&put, MAX_JSON_BYTES).await?;
        if f.status != StatusCode::CREATED {
            return Err(unexpected(&put, &f));
        }
        Ok(())
    }

    /// The session URL an answer names in `Location` (relative to the request), if any; one
    /// that leaves the parent is refused.
    fn session_location(
        &self,
        req: &Req,
        headers: &reqwest::header::HeaderMap,
    ) -> Result<Option<Url>, SyncError> {
        let Some(location) = headers.get(LOCATION) else {
            return Ok(None);
        };
        let location = location.to_str().map_err(|_| {
            SyncError::Protocol(format!(
                "{} answered an unreadable Location",
                req.describe()
            ))
        })?;
        let url = req.url.join(location).map_err(|e| {
            SyncError::Protocol(format!("invalid upload Location {location:?}: {e}"))
        })?;
        self.same_origin(&url)?;
        Ok(Some(url))
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

/// A streaming request body reading the piece `body` names in pieces of up to 256 KiB, paced
/// by the node's bandwidth limit (shared with downloads: `bandwidthLimit` bounds the link both
/// ways; pieces are then a quarter second's worth, so progress shows steadily), counting what
/// it hands over in `sent`.
pub(super) async fn file_body(
    body: &FileBody,
    limiter: Option<Arc<Limiter>>,
    sent: Sent,
) -> Result<reqwest::Body, SyncError> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let path = &body.path;
    let disk = |e: std::io::Error| SyncError::Disk(format!("reading {}: {e}", path.display()));
    let mut file = tokio::fs::File::open(path).await.map_err(disk)?;
    file.seek(std::io::SeekFrom::Start(body.start))
        .await
        .map_err(disk)?;
    let piece = limiter.as_ref().map_or(MAX_UPLOAD_PIECE, |l| l.piece());
    let state = (file.take(body.len), limiter, sent, 0u64);
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

    fn range(value: &str) -> Option<u64> {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(header::RANGE, value.parse().unwrap());
        range_end(&headers)
    }

    #[test]
    fn a_session_range_names_the_next_offset() {
        assert_eq!(range("0-1048575"), Some(1 << 20));
        assert_eq!(range("bytes=0-99"), Some(100));
        // Ambiguous (empty, or one byte): read as empty; the parent's answer corrects it.
        assert_eq!(range("0-0"), Some(0));
        for bad in [
            "5-10",
            "0-",
            "-5",
            "0-x",
            "nonsense",
            "0-18446744073709551615",
        ] {
            assert_eq!(range(bad), None, "{bad}");
        }
        assert_eq!(range_end(&reqwest::header::HeaderMap::new()), None);
    }

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
