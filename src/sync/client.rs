//! The parent client: every request a node makes to its parent registry (any OCI registry, or a
//! connected-registry node) goes through here.
//!
//! (Stub: to be implemented.)

use std::path::Path;

use bytes::Bytes;

use crate::oci::Digest;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("parent unreachable: {0}")]
    ParentUnreachable(String),
    #[error("authentication at the parent failed: {0}")]
    AuthenticationFailed(String),
    #[error("{what} digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    #[error("local disk: {0}")]
    Disk(String),
    #[error("the parent no longer has change events since {since}")]
    MessagesExpired { since: u64 },
    #[error("unexpected answer from the parent: {0}")]
    Protocol(String),
    #[error("sync window closed")]
    WindowClosed,
    #[error("local store: {0}")]
    Store(#[from] crate::oci::Error),
}

impl SyncError {
    /// The `statusDetails` code for this failure.
    pub fn code(&self) -> &'static str {
        match self {
            SyncError::ParentUnreachable(_) => "ParentUnreachable",
            SyncError::AuthenticationFailed(_) => "AuthenticationFailed",
            SyncError::DigestMismatch { .. } => "DigestMismatch",
            SyncError::Disk(_) => "DiskError",
            SyncError::MessagesExpired { .. } => "MessagesExpired",
            SyncError::Protocol(_) => "ProtocolError",
            SyncError::WindowClosed => "WindowClosed",
            SyncError::Store(_) => "DiskError",
        }
    }
}

pub struct ParentOptions {
    /// `http(s)://host:port`, no trailing slash.
    pub endpoint: String,
    /// Sync token name and password (Basic auth, and for the docker token flow).
    pub credentials: Option<(String, String)>,
    /// Extra trusted CA certificates, PEM text.
    pub ca_pem: Option<String>,
    /// Bytes per second across all blob downloads; `None` = unlimited.
    pub bandwidth_limit: Option<u64>,
}

/// A manifest fetched from the parent.
#[derive(Debug, Clone)]
pub struct RemoteManifest {
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Bytes,
}

/// One page of the parent's change feed.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ChangesPage {
    pub events: Vec<crate::store::ChangeEvent>,
    pub next: u64,
}

pub struct ParentClient {
    _private: (),
}

impl ParentClient {
    pub fn new(_options: ParentOptions) -> Result<ParentClient, SyncError> {
        todo!()
    }

    /// Requests sent to the parent so far (including retries and token requests).
    pub fn requests_made(&self) -> u64 {
        todo!()
    }

    /// `GET /v2/`.
    pub async fn ping(&self) -> Result<(), SyncError> {
        todo!()
    }

    /// Every repository in `/v2/_catalog`, following pagination.
    pub async fn catalog(&self) -> Result<Vec<String>, SyncError> {
        todo!()
    }

    /// Every tag of `repo`, following pagination; `None` if the repository does not exist.
    pub async fn list_tags(&self, _repo: &str) -> Result<Option<Vec<String>>, SyncError> {
        todo!()
    }

    /// `HEAD` a manifest: its digest, or `None` if it does not exist.
    pub async fn head_manifest(&self, _repo: &str, _reference: &str) -> Result<Option<Digest>, SyncError> {
        todo!()
    }

    /// `GET` a manifest with its exact bytes, digest verified; `None` if it does not exist.
    pub async fn get_manifest(&self, _repo: &str, _reference: &str) -> Result<Option<RemoteManifest>, SyncError> {
        todo!()
    }

    /// Referrers of `digest`; `None` if the parent has no referrers API.
    pub async fn referrers(&self, _repo: &str, _digest: &Digest) -> Result<Option<Vec<Digest>>, SyncError> {
        todo!()
    }

    /// Download blob `digest` of `repo` into `partial`, resuming with `Range` from the bytes
    /// already there; verify the whole file against `digest` and fsync it. Returns the number of
    /// bytes transferred in this call.
    pub async fn download_blob(&self, _repo: &str, _digest: &Digest, _partial: &Path) -> Result<u64, SyncError> {
        todo!()
    }

    /// Long-poll the change feed: events after `since`, waiting up to `wait_secs` for one.
    pub async fn changes(&self, _since: u64, _wait_secs: u64) -> Result<ChangesPage, SyncError> {
        todo!()
    }
}
