//! `GET`/`HEAD`/`PUT`/`DELETE /v2/<name>/manifests/<reference>`.

use http_body_util::{BodyExt, Limited};
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
    if content_length(&req)?.is_some_and(|len| len > MAX_MANIFEST_BYTES as u64) {
        return Err(too_large());
    }
    let content_type = super::header(&req, CONTENT_TYPE)?.map(str::to_owned);
    let bytes = Limited::new(req.into_body(), MAX_MANIFEST_BYTES)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                too_large()
            } else {
                Error::new(
                    ErrorCode::ManifestInvalid,
                    format!("could not read the manifest body: {e}"),
                )
            }
        })?
        .to_bytes();
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

pub async fn delete(store: &Store, repo: &RepositoryName, reference: &str) -> Result<Reply> {
    let reference: Reference = reference.parse()?;
    store.delete_manifest(repo, &reference).await?;
    Ok(Reply::new(StatusCode::ACCEPTED))
}
