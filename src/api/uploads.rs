//! Blob uploads: `POST` (session, monolithic or mount), `PATCH` (streamed or chunked with
//! `Content-Range`), `PUT` (commit with `?digest=`), `GET` (status) and `DELETE` (cancel).

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use hyper::body::Incoming;
use hyper::header::{CONTENT_RANGE, LOCATION, RANGE};
use hyper::{Request, StatusCode};

use super::response::{Reply, DOCKER_CONTENT_DIGEST, DOCKER_UPLOAD_UUID};
use super::{body_stream, content_length, header, query, query_value, BodyTimeout};
use crate::oci::{Digest, Error, ErrorCode, RepositoryName, Result};
use crate::store::{Store, UploadId, UploadStatus};

pub async fn start(
    store: &Store,
    repo: &RepositoryName,
    req: Request<Incoming>,
    body_timeout: BodyTimeout,
    may_read: &(dyn Fn(&str) -> bool + Sync),
) -> Result<Reply> {
    let query = query(&req);
    if let Some(mount) = query_value(&query, "mount") {
        let digest: Digest = mount.parse()?;
        if let Some(from) = query_value(&query, "from") {
            let from: RepositoryName = from.parse()?;
            if may_read(from.as_str()) && store.mount_blob(repo, &from, &digest).await?.is_some() {
                return Ok(created(repo, &digest));
            }
        }
        // Not mountable: fall back to a regular upload session, as the spec asks.
    } else if let Some(digest) = query_value(&query, "digest") {
        let digest: Digest = digest.parse()?;
        store
            .put_blob(repo, &digest, body_stream(req, body_timeout))
            .await?;
        return Ok(created(repo, &digest));
    }
    let status = store.start_upload(repo).await?;
    Ok(in_progress(StatusCode::ACCEPTED, repo, &status))
}

pub fn status(store: &Store, repo: &RepositoryName, id: &str) -> Result<Reply> {
    let status = store.upload_status(repo, &upload_id(repo, id)?)?;
    Ok(in_progress(StatusCode::NO_CONTENT, repo, &status))
}

pub async fn patch(
    store: &Store,
    repo: &RepositoryName,
    id: &str,
    req: Request<Incoming>,
    body_timeout: BodyTimeout,
) -> Result<Reply> {
    let id = upload_id(repo, id)?;
    let range = chunk_range(&req)?;
    let (body, mismatch) = ExactLength::new(body_stream(req, body_timeout), range);
    let result = store
        .append_upload(repo, &id, range.map(|r| r.start), body)
        .await;
    match result {
        Ok(status) => Ok(in_progress(StatusCode::ACCEPTED, repo, &status)),
        Err(e) if mismatch.get().is_some() => {
            // What arrived stays (up to the declared end); say where the session is.
            let err = mismatch
                .get()
                .map_or(e, |m| Error::new(ErrorCode::SizeInvalid, m));
            let status = store.upload_status(repo, &id)?;
            Ok(in_progress(StatusCode::BAD_REQUEST, repo, &status)
                .bytes("application/json", err.to_json()))
        }
        Err(e) if e.code() == ErrorCode::RangeInvalid => {
            // Tell the client where the session really is so it can resume.
            let status = store.upload_status(repo, &id)?;
            Ok(
                in_progress(StatusCode::RANGE_NOT_SATISFIABLE, repo, &status)
                    .bytes("application/json", e.to_json()),
            )
        }
        Err(e) => Err(e),
    }
}

pub async fn finish(
    store: &Store,
    repo: &RepositoryName,
    id: &str,
    req: Request<Incoming>,
    body_timeout: BodyTimeout,
) -> Result<Reply> {
    let id = upload_id(repo, id)?;
    let query = query(&req);
    let digest: Digest = query_value(&query, "digest")
        .ok_or_else(|| {
            Error::new(
                ErrorCode::DigestInvalid,
                "the digest query parameter is required to complete an upload",
            )
        })?
        .parse()?;
    let range = chunk_range(&req)?;
    let (body, mismatch) = ExactLength::new(body_stream(req, body_timeout), range);
    store
        .finish_upload(repo, &id, &digest, range.map(|r| r.start), body)
        .await
        .map_err(|e| {
            mismatch
                .get()
                .map_or(e, |m| Error::new(ErrorCode::SizeInvalid, m))
        })?;
    Ok(created(repo, &digest))
}

pub async fn cancel(store: &Store, repo: &RepositoryName, id: &str) -> Result<Reply> {
    store.cancel_upload(repo, &upload_id(repo, id)?).await?;
    Ok(Reply::new(StatusCode::NO_CONTENT))
}

fn upload_id(repo: &RepositoryName, id: &str) -> Result<UploadId> {
    id.parse().map_err(|_| {
        Error::new(
            ErrorCode::BlobUploadUnknown,
            format!("upload {id:?} is not in progress in repository {repo}"),
        )
    })
}

fn created(repo: &RepositoryName, digest: &Digest) -> Reply {
    Reply::new(StatusCode::CREATED)
        .header(LOCATION, format!("/v2/{repo}/blobs/{digest}"))
        .header(DOCKER_CONTENT_DIGEST, digest.to_string())
}

fn in_progress(status: StatusCode, repo: &RepositoryName, upload: &UploadStatus) -> Reply {
    let last = upload.offset.saturating_sub(1);
    Reply::new(status)
        .header(LOCATION, format!("/v2/{repo}/blobs/uploads/{}", upload.id))
        .header(RANGE, format!("0-{last}"))
        .header(DOCKER_UPLOAD_UUID, upload.id.to_string())
}

/// The bytes a chunk declares with `Content-Range`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ChunkRange {
    start: u64,
    len: u64,
    end: u64,
}

/// What a chunk's `Content-Range: <start>-<end>` declares, checked against `Content-Length`
/// when both are sent; every number is checked before arithmetic (a range of more than
/// 2^64 - 1 bytes is refused, not wrapped around).
fn chunk_range(req: &Request<Incoming>) -> Result<Option<ChunkRange>> {
    let Some(value) = header(req, CONTENT_RANGE)? else {
        return Ok(None);
    };
    let invalid = || {
        Error::new(
            ErrorCode::BlobUploadInvalid,
            format!(
                "invalid Content-Range {value:?}: expected <start>-<end>, two integers from 0 to {}",
                u64::MAX
            ),
        )
    };
    let spec = value
        .trim()
        .trim_start_matches("bytes")
        .trim_start_matches(['=', ' ']);
    let spec = spec.split('/').next().unwrap_or(spec);
    let (start, end) = spec.split_once('-').ok_or_else(invalid)?;
    let start: u64 = start.trim().parse().map_err(|_| invalid())?;
    let end: u64 = end.trim().parse().map_err(|_| invalid())?;
    if end < start {
        return Err(Error::new(
            ErrorCode::RangeInvalid,
            format!("Content-Range {value:?} ends before it starts"),
        ));
    }
    let len = (end - start).checked_add(1).ok_or_else(|| {
        Error::new(
            ErrorCode::RangeInvalid,
            format!(
                "Content-Range {value:?} declares more than {} bytes, the most one chunk can hold",
                u64::MAX
            ),
        )
    })?;
    if let Some(sent) = content_length(req)? {
        if sent != len {
            return Err(Error::new(
                ErrorCode::SizeInvalid,
                format!(
                    "Content-Length {sent} does not match Content-Range {value:?} ({len} bytes)"
                ),
            ));
        }
    }
    Ok(Some(ChunkRange { start, len, end }))
}

/// Set when a body did not carry exactly the bytes its `Content-Range` declared: the message
/// the client gets.
#[derive(Clone, Default)]
struct LengthMismatch(Arc<Mutex<Option<String>>>);

impl LengthMismatch {
    fn set(&self, message: String) {
        *self.0.lock().expect("mismatch lock") = Some(message);
    }

    fn get(&self) -> Option<String> {
        self.0.lock().expect("mismatch lock").clone()
    }
}

/// A request body held to the length its `Content-Range` declares (with no range, passed
/// through as it is): a piece that would take it past the declared end fails before it is
/// handed on, so nothing beyond the range is written; a body that ends short fails at its end.
/// Either failure is recorded in the [`LengthMismatch`] for the handler to answer with.
struct ExactLength<S> {
    inner: S,
    range: Option<ChunkRange>,
    received: u64,
    mismatch: LengthMismatch,
    done: bool,
}

impl<S> ExactLength<S> {
    fn new(inner: S, range: Option<ChunkRange>) -> (ExactLength<S>, LengthMismatch) {
        let mismatch = LengthMismatch::default();
        let stream = ExactLength {
            inner,
            range,
            received: 0,
            mismatch: mismatch.clone(),
            done: false,
        };
        (stream, mismatch)
    }

    fn fail(&mut self, message: String) -> Poll<Option<io::Result<Bytes>>> {
        self.done = true;
        self.mismatch.set(message.clone());
        Poll::Ready(Some(Err(io::Error::new(
            io::ErrorKind::InvalidData,
            message,
        ))))
    }
}

impl<S> Stream for ExactLength<S>
where
    S: Stream<Item = io::Result<Bytes>> + Unpin,
{
    type Item = io::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let polled = Pin::new(&mut this.inner).poll_next(cx);
        let Some(range) = this.range else {
            return polled;
        };
        match polled {
            Poll::Ready(Some(Ok(piece))) => {
                let received = this.received.saturating_add(piece.len() as u64);
                if received > range.len {
                    return this.fail(format!(
                        "the body carries more than the {} bytes its Content-Range {}-{} declares",
                        range.len, range.start, range.end
                    ));
                }
                this.received = received;
                Poll::Ready(Some(Ok(piece)))
            }
            Poll::Ready(None) if this.received < range.len => this.fail(format!(
                "the body ended after {} of the {} bytes its Content-Range {}-{} declares",
                this.received, range.len, range.start, range.end
            )),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{stream, StreamExt};

    fn range(start: u64, end: u64) -> Option<ChunkRange> {
        Some(ChunkRange {
            start,
            len: end - start + 1,
            end,
        })
    }

    async fn run(
        range: Option<ChunkRange>,
        pieces: &[&'static [u8]],
    ) -> (Vec<u8>, bool, Option<String>) {
        let body = stream::iter(pieces.iter().map(|p| Ok(Bytes::from_static(p))));
        let (mut s, mismatch) = ExactLength::new(body, range);
        let mut got = Vec::new();
        let mut failed = false;
        while let Some(piece) = s.next().await {
            match piece {
                Ok(p) => got.extend_from_slice(&p),
                Err(_) => failed = true,
            }
        }
        (got, failed, mismatch.get())
    }

    #[tokio::test]
    async fn bodies_must_carry_exactly_the_declared_bytes() {
        // Exactly as declared, or with no range at all: passed through.
        assert_eq!(
            run(range(0, 5), &[b"abc", b"def"]).await,
            (b"abcdef".to_vec(), false, None)
        );
        assert_eq!(
            run(None, &[b"abc", b"def"]).await,
            (b"abcdef".to_vec(), false, None)
        );
        // Short: everything that came, then a failure.
        let (got, failed, why) = run(range(10, 19), &[b"abc"]).await;
        assert_eq!((got, failed), (b"abc".to_vec(), true));
        assert!(why.unwrap().contains("ended after 3 of the 10 bytes"));
        // Long: the piece that crosses the end is never handed on.
        let (got, failed, why) = run(range(0, 3), &[b"abc", b"def", b"ghi"]).await;
        assert_eq!((got, failed), (b"abc".to_vec(), true));
        assert!(why.unwrap().contains("more than the 4 bytes"));
    }
}
