//! Blob uploads: `POST` (session, monolithic or mount), `PATCH` (streamed or chunked with
//! `Content-Range`), `PUT` (commit with `?digest=`), `GET` (status) and `DELETE` (cancel).

use hyper::body::Incoming;
use hyper::header::{CONTENT_RANGE, LOCATION, RANGE};
use hyper::{Request, StatusCode};

use super::response::{Reply, DOCKER_CONTENT_DIGEST, DOCKER_UPLOAD_UUID};
use super::{body_stream, content_length, header, query, query_value};
use crate::oci::{Digest, Error, ErrorCode, RepositoryName, Result};
use crate::store::{Store, UploadId, UploadStatus};

pub async fn start(store: &Store, repo: &RepositoryName, req: Request<Incoming>) -> Result<Reply> {
    let query = query(&req);
    if let Some(mount) = query_value(&query, "mount") {
        let digest: Digest = mount.parse()?;
        if let Some(from) = query_value(&query, "from") {
            let from: RepositoryName = from.parse()?;
            if store.mount_blob(repo, &from, &digest).await?.is_some() {
                return Ok(created(repo, &digest));
            }
        }
        // Not mountable: fall back to a regular upload session, as the spec asks.
    } else if let Some(digest) = query_value(&query, "digest") {
        let digest: Digest = digest.parse()?;
        store.put_blob(repo, &digest, body_stream(req)).await?;
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
) -> Result<Reply> {
    let id = upload_id(repo, id)?;
    let start = chunk_start(&req)?;
    let result = store
        .append_upload(repo, &id, start, body_stream(req))
        .await;
    match result {
        Ok(status) => Ok(in_progress(StatusCode::ACCEPTED, repo, &status)),
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
    let start = chunk_start(&req)?;
    store
        .finish_upload(repo, &id, &digest, start, body_stream(req))
        .await?;
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

/// Where a chunk says it starts (`Content-Range: <start>-<end>`), checked against
/// `Content-Length` when both are sent.
fn chunk_start(req: &Request<Incoming>) -> Result<Option<u64>> {
    let Some(value) = header(req, CONTENT_RANGE)? else {
        return Ok(None);
    };
    let invalid = || {
        Error::new(
            ErrorCode::BlobUploadInvalid,
            format!("invalid Content-Range {value:?}: expected <start>-<end>"),
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
    if let Some(len) = content_length(req)? {
        if len != end - start + 1 {
            return Err(Error::new(
                ErrorCode::SizeInvalid,
                format!("Content-Length {len} does not match Content-Range {value:?}"),
            ));
        }
    }
    Ok(Some(start))
}
