//! The vocabulary of the OCI Distribution and Image specs: digests, repository names, references,
//! media types, manifest parsing and the error codes every other part speaks.
//!
//! Nothing here does I/O; these are the types that let the store and the API agree on what a valid
//! name, digest or manifest is, checked once at the edge.

pub mod digest;
pub mod error;
pub mod manifest;
pub mod name;

pub use digest::{Algorithm, Digest, Hasher};
pub use error::{Error, ErrorCode, Result};
pub use manifest::{MediaType, ParsedManifest};
pub use name::{Reference, RepositoryName, Tag};
