//! `GET`/`HEAD`/`PUT`/`DELETE /v2/<name>/manifests/<reference>`.

use bytes::BytesMut;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, ETAG, LOCATION};
use hyper::{Request, StatusCode};

use super::content_length;
use super::response::{Reply, DOCKER_CONTENT_DIGEST, OCI_SUBJECT};
use crate::oci::manifest::MAX_MANIFEST_BYTES;
use crate::oci::{Error, ErrorCode, Reference, RepositoryName, Result};
use crate::store::Store;

pub fn get(
    store: &Store,
    repo: &RepositoryName,
    reference: &str,
    head_only: bool,
) -> Result<Reply> {
    let reference: Reference = reference.parse()?;
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
) -> Result<Reply> {
    let reference: Reference = reference.parse()?;
    let too_large = || {
        Error::new(
            ErrorCode::TooLarge,
            format!(
                "manifest is larger than the {} MiB limit",
                MAX_MANIFEST_BYTES >> 20
            ),
        )
    };
    let declared = content_length(&req)?;
    let content_type = super::header(&req, CONTENT_TYPE)?.map(str::to_owned);
    let mut body = req.into_body();
    if declared.is_some_and(|len| len > MAX_MANIFEST_BYTES as u64) {
        drain(&mut body).await;
        return Err(too_large());
    }
    let mut bytes = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            Error::new(
                ErrorCode::ManifestInvalid,
                format!("could not read the manifest body: {e}"),
            )
        })?;
        if let Ok(data) = frame.into_data() {
            if bytes.len() + data.len() > MAX_MANIFEST_BYTES {
                drain(&mut body).await;
                return Err(too_large());
            }
            bytes.extend_from_slice(&data);
        }
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

/// Read and discard what is left of a refused body (up to a bound), so the client gets to read
/// the error instead of a broken pipe.
async fn drain(body: &mut Incoming) {
    const DRAIN_LIMIT: usize = 64 * 1024 * 1024;
    let mut drained = 0;
    while drained < DRAIN_LIMIT {
        match body.frame().await {
            Some(Ok(frame)) => drained += frame.data_ref().map_or(0, |d| d.len()),
            _ => break,
        }
    }
}

pub async fn delete(store: &Store, repo: &RepositoryName, reference: &str) -> Result<Reply> {
    let reference: Reference = reference.parse()?;
    store.delete_manifest(repo, &reference).await?;
    Ok(Reply::new(StatusCode::ACCEPTED))
}
