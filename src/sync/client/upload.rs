//! Pushing to the parent (a ReadWrite node's upstream): plain OCI pushes with the sync token —
//! blobs streamed from their files (checked with `HEAD` first, so a replay sends nothing twice),
//! manifests, tags and deletes — through the same transport, authentication and retries as
//! every pull. A blob body is re-opened from its file for every attempt, never held in memory.

use std::path::Path;

use bytes::Bytes;
use reqwest::header::{self, LOCATION};
use reqwest::{Method, StatusCode, Url};

use super::{unexpected, ParentClient, Req, SyncError, MAX_JSON_BYTES};
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

/// A streaming request body reading `path` in 256 KiB pieces.
pub(super) async fn file_body(path: &Path) -> Result<reqwest::Body, SyncError> {
    use tokio::io::AsyncReadExt;
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| SyncError::Disk(format!("opening {}: {e}", path.display())))?;
    let chunks = futures_util::stream::try_unfold(file, |mut file| async move {
        let mut buf = vec![0u8; 256 * 1024];
        let n = file.read(&mut buf).await?;
        if n == 0 {
            return Ok::<_, std::io::Error>(None);
        }
        buf.truncate(n);
        Ok(Some((Bytes::from(buf), file)))
    });
    Ok(reqwest::Body::wrap_stream(chunks))
}
