//! The one error type of the registry. Every failure — a bad digest from a client, a missing blob,
//! a full disk — becomes an [`Error`], and the API renders it as OCI error JSON
//! (`{"errors":[{"code","message","detail"}]}`) with the status its code calls for.

use std::io;

use serde::Serialize;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Error codes from the OCI Distribution Spec, plus the few a registry needs beyond it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    /// An index refers to a manifest the repository does not have (a bad push, so 400).
    ManifestChildUnknown,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    Unauthorized,
    Denied,
    Unsupported,
    TooManyRequests,
    /// A byte range that cannot be served or accepted (416).
    RangeInvalid,
    /// The body is larger than the registry accepts for this kind of content (413).
    TooLarge,
    /// The request itself is malformed (bad query, bad header) in a way no spec code covers.
    BadRequest,
    /// The disk is full or the storage limit is reached (507).
    InsufficientStorage,
    /// The server is shutting down or not ready (503).
    Unavailable,
    /// No such endpoint (404).
    NotFound,
    /// The endpoint exists but not with this method (405).
    MethodNotAllowed,
    /// A change-feed cursor older than the retained change log (410): reconcile in full.
    MessagesExpired,
    /// Another instance of this connected registry is active at the parent (409).
    AlreadyActivated,
    /// A ReadWrite child under a ReadOnly parent (409).
    ModeIncompatible,
    /// Anything else: an internal failure, logged with its context.
    Unknown,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BlobUnknown => "BLOB_UNKNOWN",
            ErrorCode::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            ErrorCode::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            ErrorCode::DigestInvalid => "DIGEST_INVALID",
            ErrorCode::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            ErrorCode::ManifestInvalid => "MANIFEST_INVALID",
            ErrorCode::ManifestUnknown | ErrorCode::ManifestChildUnknown => "MANIFEST_UNKNOWN",
            ErrorCode::NameInvalid => "NAME_INVALID",
            ErrorCode::NameUnknown => "NAME_UNKNOWN",
            ErrorCode::SizeInvalid => "SIZE_INVALID",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Denied => "DENIED",
            ErrorCode::Unsupported => "UNSUPPORTED",
            ErrorCode::TooManyRequests => "TOOMANYREQUESTS",
            ErrorCode::RangeInvalid => "RANGE_INVALID",
            ErrorCode::TooLarge => "SIZE_INVALID",
            ErrorCode::BadRequest => "BAD_REQUEST",
            ErrorCode::InsufficientStorage => "INSUFFICIENT_STORAGE",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::MethodNotAllowed => "UNSUPPORTED",
            ErrorCode::MessagesExpired => "MESSAGES_EXPIRED",
            ErrorCode::AlreadyActivated => "ALREADY_ACTIVATED",
            ErrorCode::ModeIncompatible => "MODE_INCOMPATIBLE",
            ErrorCode::Unknown => "UNKNOWN",
        }
    }

    /// The HTTP status this code is sent with.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BlobUnknown
            | ErrorCode::BlobUploadUnknown
            | ErrorCode::ManifestUnknown
            | ErrorCode::NameUnknown
            | ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::BlobUploadInvalid
            | ErrorCode::DigestInvalid
            | ErrorCode::ManifestBlobUnknown
            | ErrorCode::ManifestChildUnknown
            | ErrorCode::ManifestInvalid
            | ErrorCode::NameInvalid
            | ErrorCode::SizeInvalid
            | ErrorCode::BadRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Denied => 403,
            ErrorCode::Unsupported => 415,
            ErrorCode::TooManyRequests => 429,
            ErrorCode::RangeInvalid => 416,
            ErrorCode::TooLarge => 413,
            ErrorCode::InsufficientStorage => 507,
            ErrorCode::Unavailable => 503,
            ErrorCode::MessagesExpired => 410,
            ErrorCode::AlreadyActivated | ErrorCode::ModeIncompatible => 409,
            ErrorCode::Unknown => 500,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A failure the client caused or can act on, with its OCI code.
    #[error("{code:?}: {message}")]
    Oci {
        code: ErrorCode,
        message: String,
        detail: Option<serde_json::Value>,
    },
    #[error("storage I/O failed while {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("metadata database failed: {0}")]
    Db(#[from] sled::Error),
}

impl Error {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Error::Oci {
            code,
            message: message.into(),
            detail: None,
        }
    }

    pub fn with_detail(self, detail: serde_json::Value) -> Self {
        match self {
            Error::Oci { code, message, .. } => Error::Oci {
                code,
                message,
                detail: Some(detail),
            },
            other => other,
        }
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Oci { code, .. } => *code,
            Error::Io { source, .. } if is_disk_full(source) => ErrorCode::InsufficientStorage,
            Error::Io { .. } | Error::Db(_) => ErrorCode::Unknown,
        }
    }

    /// The OCI error JSON body for this error. Internal details are not sent to clients.
    pub fn to_json(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Body<'a> {
            errors: [Entry<'a>; 1],
        }
        #[derive(Serialize)]
        struct Entry<'a> {
            code: &'static str,
            message: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            detail: Option<&'a serde_json::Value>,
        }
        let (message, detail) = match self {
            Error::Oci {
                message, detail, ..
            } => (message.as_str(), detail.as_ref()),
            Error::Io { source, .. } if is_disk_full(source) => {
                ("no space left on the registry's storage", None)
            }
            _ => ("internal storage error; see the registry log", None),
        };
        serde_json::to_vec(&Body {
            errors: [Entry {
                code: self.code().as_str(),
                message,
                detail,
            }],
        })
        .unwrap_or_default()
    }
}

fn is_disk_full(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::StorageFull || e.raw_os_error() == Some(libc::ENOSPC)
}

/// Attach what was being done to an I/O error.
pub trait IoContext<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::result::Result<T, io::Error> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Io {
            context: what(),
            source,
        })
    }
}

impl From<sled::transaction::TransactionError<Error>> for Error {
    fn from(e: sled::transaction::TransactionError<Error>) -> Self {
        match e {
            sled::transaction::TransactionError::Abort(e) => e,
            sled::transaction::TransactionError::Storage(e) => Error::Db(e),
        }
    }
}
