//! `GET`/`HEAD`/`PUT`/`DELETE /v2/<name>/manifests/<reference>`.

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use hyper::body::Incoming;
use hyper::header::{CONNECTION, CONTENT_TYPE, ETAG, LOCATION};
use hyper::{Request, StatusCode, Version};

use super::response::{Reply, DOCKER_CONTENT_DIGEST, OCI_SUBJECT};
use super::{body_stream, content_length, BodyTimeout};
use crate::oci::manifest::MAX_MANIFEST_BYTES;
use crate::oci::{Error, ErrorCode, Reference, RepositoryName, Result};
use crate::store::Store;

pub fn get(
    store: &Store,
    repo: &RepositoryName,
    reference: &str,
    head_only: bool,
) -> Result<Reply> {
    // A reference that is neither a tag nor a digest names no manifest: 404, as distribution
    // answers and the OCI conformance tests expect.
    let reference: Reference = reference.parse().map_err(|_| {
        Error::new(
            ErrorCode::ManifestUnknown,
            format!("{repo} has no manifest {:?}", super::short(reference)),
        )
    })?;
    let manifest = store.get_manifest(repo, &reference)?;
    let digest = manifest.digest.to_string();
    let reply = Reply::new(StatusCode::OK)
        .header(DOCKER_CONTENT_DIGEST, &digest)
        .header(ETAG, format!("\"{digest}\""));
    if head_only {
        return Ok(reply
            .header(CONTENT_TYPE, manifest.media_type.as_str())
            .header(
                hyper::header::CONTENT_LENGTH,
                manifest.bytes.len().to_string(),
            ));
    }
    Ok(reply.bytes(manifest.media_type.as_str(), manifest.bytes))
}

pub async fn put(
    store: &Store,
    repo: &RepositoryName,
    reference: &str,
    req: Request<Incoming>,
    body_timeout: BodyTimeout,
) -> Result<Reply> {
    let reference: Reference = reference.parse()?;
    let declared = content_length(&req)?;
    let content_type = super::header(&req, CONTENT_TYPE)?.map(str::to_owned);
    let http1 = req.version() < Version::HTTP_2;
    let expects_continue = req
        .headers()
        .get(hyper::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let oversized = declared.is_some_and(|len| len > MAX_MANIFEST_BYTES as u64);
    if oversized && (expects_continue || !http1) {
        // Refused before reading a byte: the body is never polled, so hyper never sends
        // `100 Continue` and a client that asked for it never sends the body (HTTP/2 resets
        // just the stream).
        return Ok(too_large(http1));
    }
    let mut body = body_stream(req, body_timeout);
    if oversized {
        // An HTTP/1.1 client that did not ask first is already writing the body; closing on it
        // would make it fail with a broken pipe before it reads the answer. Read a bounded rest
        // (the body idle timeout applies) so it reads the 413.
        drain(&mut body).await;
        return Ok(too_large(http1));
    }
    let mut bytes = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| {
            Error::new(
                ErrorCode::ManifestInvalid,
                format!("could not read the manifest body: {e}"),
            )
        })?;
        if bytes.len() + chunk.len() > MAX_MANIFEST_BYTES {
            // A body of unannounced length crossed the limit while the client is sending it:
            // read a bounded rest (the body idle timeout still applies), so the client reads
            // the 413 rather than a reset.
            drain(&mut body).await;
            return Ok(too_large(http1));
        }
        bytes.extend_from_slice(&chunk);
    }
    let bytes = bytes.freeze();
    let put = store
        .put_manifest(repo, &reference, content_type.as_deref(), bytes)
        .await?;
    let mut reply = Reply::new(StatusCode::CREATED)
        .header(LOCATION, format!("/v2/{repo}/manifests/{}", put.digest))
        .header(DOCKER_CONTENT_DIGEST, put.digest.to_string());
    if let Some(subject) = put.subject {
        reply = reply.header(OCI_SUBJECT, subject.to_string());
    }
    Ok(reply)
}

/// 413 for a manifest over the limit. What is left of the body is not read: on HTTP/1 the
/// connection is closed after the answer (HTTP/2 resets just the stream), so a client cannot make
/// the server read megabytes only to refuse them.
fn too_large(http1: bool) -> Reply {
    let err = Error::new(
        ErrorCode::TooLarge,
        format!(
            "manifest is larger than the {} MiB limit",
            MAX_MANIFEST_BYTES >> 20
        ),
    );
    let reply = Reply::new(StatusCode::PAYLOAD_TOO_LARGE);
    let reply = if http1 {
        reply.header(CONNECTION, "close")
    } else {
        reply
    };
    reply.bytes("application/json", err.to_json())
}

/// Read and discard up to a bound of what is left of a refused body.
async fn drain(body: &mut (impl Stream<Item = std::io::Result<Bytes>> + Unpin)) {
    const DRAIN_LIMIT: usize = 64 * 1024 * 1024;
    let mut drained = 0;
    while drained < DRAIN_LIMIT {
        match body.next().await {
            Some(Ok(chunk)) => drained += chunk.len(),
            _ => break,
        }
    }
}

pub async fn delete(store: &Store, repo: &RepositoryName, reference: &str) -> Result<Reply> {
    let reference: Reference = reference.parse()?;
    store.delete_manifest(repo, &reference).await?;
    Ok(Reply::new(StatusCode::ACCEPTED))
}
