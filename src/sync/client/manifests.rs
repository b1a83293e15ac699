//! Manifests from the parent: `HEAD` for the digest a tag points at, `GET` for the exact bytes,
//! always digest-verified, and the media type worked out from what the parent says and what the
//! document says about itself.
//!
//! It exists apart from the request loop so that every manifest check (digest header, algorithm,
//! media type) is in one short place.

use reqwest::header::{self, HeaderMap};
use reqwest::{Method, StatusCode};

use super::{
    parse_reference, pull_scope, repository, unexpected, ParentClient, RemoteManifest, Req,
    SyncError, DOCKER_CONTENT_DIGEST, MANIFEST_ACCEPT, MAX_MANIFEST_BYTES, OCI_INDEX, OCI_MANIFEST,
};
use crate::oci::{Digest, Reference};

impl ParentClient {
    /// `HEAD` a manifest: its digest, or `None` if it does not exist.
    pub async fn head_manifest(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<Option<Digest>, SyncError> {
        let repo = repository(repo)?;
        let reference = parse_reference(reference)?;
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}"))?;
        let req =
            Req::new(Method::HEAD, url, pull_scope(&repo)).header(header::ACCEPT, MANIFEST_ACCEPT);
        let f = self.fetch(&req, 0).await?;
        if f.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !f.status.is_success() {
            return Err(unexpected(&req, &f));
        }
        if let Reference::Digest(digest) = &reference {
            return Ok(Some(digest.clone()));
        }
        match header_digest(&f.headers) {
            // Any algorithm: the sync engine compares a sha512 with the alias the store keeps
            // for it, and the manifest is fetched (and verified) by this digest when it changed.
            Some(digest) => Ok(Some(digest)),
            // No usable Docker-Content-Digest: fetch the bytes and hash them.
            None => Ok(self
                .get_manifest(repo.as_str(), &reference.to_string())
                .await?
                .map(|m| m.digest)),
        }
    }

    /// `GET` a manifest with its exact bytes, digest verified; `None` if it does not exist.
    pub async fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<Option<RemoteManifest>, SyncError> {
        let repo = repository(repo)?;
        let reference = parse_reference(reference)?;
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}"))?;
        let req =
            Req::new(Method::GET, url, pull_scope(&repo)).header(header::ACCEPT, MANIFEST_ACCEPT);
        let f = self.fetch(&req, MAX_MANIFEST_BYTES).await?;
        if f.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !f.status.is_success() {
            return Err(unexpected(&req, &f));
        }
        let what = format!("manifest {repo}:{reference}");
        let (digest, named) = match &reference {
            Reference::Digest(expected) => {
                verify(&what, expected, &f.body)?;
                (expected.clone(), expected.clone())
            }
            Reference::Tag(_) => match f.headers.get(DOCKER_CONTENT_DIGEST) {
                Some(value) => {
                    let announced = value
                        .to_str()
                        .ok()
                        .and_then(|v| v.trim().parse::<Digest>().ok())
                        .ok_or_else(|| {
                            SyncError::Protocol(format!(
                                "{what}: invalid Docker-Content-Digest header {value:?}"
                            ))
                        })?;
                    verify(&what, &announced, &f.body)?;
                    // Verified; named here by sha256, as the store names a tagged manifest.
                    (Digest::sha256_of(&f.body), announced)
                }
                None => {
                    let digest = Digest::sha256_of(&f.body);
                    (digest.clone(), digest)
                }
            },
        };
        let content_type = f
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        Ok(Some(RemoteManifest {
            digest,
            named,
            media_type: manifest_media_type(content_type, &f.body),
            bytes: f.body,
        }))
    }
}

pub(super) fn verify(what: &str, expected: &Digest, bytes: &[u8]) -> Result<(), SyncError> {
    let actual = Digest::of(expected.algorithm(), bytes);
    if &actual == expected {
        Ok(())
    } else {
        Err(SyncError::DigestMismatch {
            what: what.to_owned(),
            expected: expected.to_string(),
            actual: actual.to_string(),
        })
    }
}

fn header_digest(headers: &HeaderMap) -> Option<Digest> {
    headers
        .get(DOCKER_CONTENT_DIGEST)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The manifest's media type: the Content-Type when it names one, else the document's own
/// `mediaType`, else a guess from its shape.
pub(super) fn manifest_media_type(content_type: Option<&str>, bytes: &[u8]) -> String {
    let ct = content_type
        .and_then(|c| c.split(';').next())
        .map(|c| c.trim().to_ascii_lowercase())
        .unwrap_or_default();
    if ct.starts_with("application/vnd.") {
        return ct;
    }
    #[derive(serde::Deserialize)]
    struct Shape {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Shape>(bytes) {
        Ok(Shape {
            media_type: Some(m),
            ..
        }) if !m.is_empty() => m,
        Ok(Shape {
            manifests: Some(_), ..
        }) => OCI_INDEX.to_owned(),
        _ if !ct.is_empty() && ct != "application/json" && ct != "text/plain" => ct,
        _ => OCI_MANIFEST.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_type_and_referrers_from_bodies() {
        assert_eq!(
            manifest_media_type(
                Some("application/vnd.oci.image.index.v1+json; charset=utf-8"),
                b"{}"
            ),
            OCI_INDEX
        );
        assert_eq!(
            manifest_media_type(
                Some("application/json"),
                br#"{"mediaType":"application/vnd.docker.distribution.manifest.v2+json"}"#
            ),
            "application/vnd.docker.distribution.manifest.v2+json"
        );
        assert_eq!(manifest_media_type(None, br#"{"manifests":[]}"#), OCI_INDEX);
        assert_eq!(manifest_media_type(None, b"not json"), OCI_MANIFEST);
    }
}
