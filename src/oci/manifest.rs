//! Manifest media types and the parse that tells the store what a manifest references.
//!
//! The raw bytes are the manifest: they are stored and served exactly as pushed and the digest is
//! of those bytes. Parsing (with `oci-spec`'s types) only extracts what must exist (blobs, child
//! manifests), the `subject` for the referrers API, and the descriptor a referrer is listed with.

use std::collections::HashMap;

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};
use serde::{Deserialize, Serialize};

use super::digest::Digest;
use super::error::{Error, ErrorCode, Result};

/// Largest manifest accepted, as in distribution and the spec's recommendation.
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// Deepest nesting of JSON objects and arrays accepted in a manifest (the document's own object
/// is level 1). A real manifest needs about 5 levels. Clients must be able to read back what was
/// pushed, and their JSON parsers stop at different depths: Go's encoding/json at 10,000,
/// Python's at about 1,000, serde_json (Rust: oras-rs, this registry's own sync) at 128; so 64,
/// well inside all of them.
pub const MAX_MANIFEST_DEPTH: usize = 64;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaType {
    OciManifest,
    OciIndex,
    DockerManifest,
    DockerManifestList,
}

impl MediaType {
    pub fn as_str(self) -> &'static str {
        match self {
            MediaType::OciManifest => OCI_MANIFEST,
            MediaType::OciIndex => OCI_INDEX,
            MediaType::DockerManifest => DOCKER_MANIFEST,
            MediaType::DockerManifestList => DOCKER_MANIFEST_LIST,
        }
    }

    pub fn parse(s: &str) -> Option<MediaType> {
        // Content-Type may carry parameters (`; charset=utf-8`).
        let essence = s.split(';').next().unwrap_or("").trim();
        match essence {
            OCI_MANIFEST => Some(MediaType::OciManifest),
            OCI_INDEX => Some(MediaType::OciIndex),
            DOCKER_MANIFEST => Some(MediaType::DockerManifest),
            DOCKER_MANIFEST_LIST => Some(MediaType::DockerManifestList),
            _ => None,
        }
    }

    pub fn is_index(self) -> bool {
        matches!(self, MediaType::OciIndex | MediaType::DockerManifestList)
    }
}

/// How a referrer is listed in a referrers response (an OCI descriptor).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReferrerDescriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub annotations: Option<HashMap<String, String>>,
}

/// What a manifest's bytes say about the content it needs.
#[derive(Debug, Clone)]
pub struct ParsedManifest {
    pub media_type: MediaType,
    /// Whether the bytes name `media_type` themselves (a `mediaType` field), so it is the
    /// same whatever `Content-Type` a put of them sends.
    pub media_type_named: bool,
    /// Config and layer blobs that must exist in the repository (foreign layers with `urls` are
    /// not required).
    pub blobs: Vec<Digest>,
    /// The size the manifest declares for each of `blobs`.
    pub blob_sizes: Vec<u64>,
    /// Child manifests of an index that must exist in the repository.
    pub children: Vec<Digest>,
    pub subject: Option<Digest>,
    pub artifact_type: Option<String>,
    pub annotations: Option<HashMap<String, String>>,
}

impl ParsedManifest {
    /// Parse `bytes` given the `Content-Type` the client sent (if any).
    pub fn parse(content_type: Option<&str>, bytes: &[u8]) -> Result<ParsedManifest> {
        check_depth(bytes)?;
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Probe {
            schema_version: Option<u32>,
            media_type: Option<String>,
            manifests: Option<serde_json::Value>,
        }
        let probe: Probe = serde_json::from_slice(bytes)
            .map_err(|e| invalid(format!("manifest is not valid JSON: {e}")))?;
        if probe.schema_version != Some(2) {
            return Err(Error::new(
                ErrorCode::ManifestInvalid,
                "unsupported manifest: schemaVersion must be 2 (schema 1 manifests are not accepted)",
            ));
        }
        let declared = probe.media_type.as_deref();
        let header = content_type.filter(|ct| {
            let essence = ct.split(';').next().unwrap_or("").trim();
            !essence.is_empty()
                && essence != "application/json"
                && essence != "application/octet-stream"
        });
        let media_type = match (declared, header) {
            (Some(d), Some(h)) => {
                let d_t = MediaType::parse(d).ok_or_else(|| unsupported(d))?;
                let h_t = MediaType::parse(h).ok_or_else(|| unsupported(h))?;
                if d_t != h_t {
                    return Err(invalid(format!(
                        "Content-Type {h:?} does not match the manifest's mediaType {d:?}"
                    )));
                }
                d_t
            }
            (Some(t), None) | (None, Some(t)) => {
                MediaType::parse(t).ok_or_else(|| unsupported(t))?
            }
            (None, None) if probe.manifests.is_some() => MediaType::OciIndex,
            (None, None) => MediaType::OciManifest,
        };

        if media_type.is_index() {
            let index: ImageIndex = serde_json::from_slice(bytes)
                .map_err(|e| invalid(format!("invalid image index: {e}")))?;
            let children = index
                .manifests()
                .iter()
                .map(descriptor_digest)
                .collect::<Result<Vec<_>>>()?;
            Ok(ParsedManifest {
                media_type,
                media_type_named: declared.is_some(),
                blobs: Vec::new(),
                blob_sizes: Vec::new(),
                children,
                subject: index
                    .subject()
                    .as_ref()
                    .map(descriptor_digest)
                    .transpose()?,
                artifact_type: index.artifact_type().as_ref().map(|t| t.to_string()),
                annotations: index.annotations().clone(),
            })
        } else {
            let manifest: ImageManifest = serde_json::from_slice(bytes)
                .map_err(|e| invalid(format!("invalid image manifest: {e}")))?;
            let mut blobs = vec![descriptor_digest(manifest.config())?];
            let mut blob_sizes = vec![manifest.config().size()];
            for layer in manifest.layers() {
                let foreign = layer.urls().as_ref().is_some_and(|u| !u.is_empty());
                if !foreign {
                    blobs.push(descriptor_digest(layer)?);
                    blob_sizes.push(layer.size());
                }
            }
            let artifact_type = manifest
                .artifact_type()
                .as_ref()
                .map(|t| t.to_string())
                .or_else(|| Some(manifest.config().media_type().to_string()));
            Ok(ParsedManifest {
                media_type,
                media_type_named: declared.is_some(),
                blobs,
                blob_sizes,
                children: Vec::new(),
                subject: manifest
                    .subject()
                    .as_ref()
                    .map(descriptor_digest)
                    .transpose()?,
                artifact_type,
                annotations: manifest.annotations().clone(),
            })
        }
    }

    /// The descriptor under which this manifest is listed as a referrer of its subject.
    pub fn referrer_descriptor(&self, digest: &Digest, size: u64) -> ReferrerDescriptor {
        ReferrerDescriptor {
            media_type: self.media_type.as_str().to_owned(),
            digest: digest.to_string(),
            size,
            artifact_type: self.artifact_type.clone(),
            annotations: self.annotations.clone(),
        }
    }
}

/// Refuse JSON nested deeper than [`MAX_MANIFEST_DEPTH`], with one pass over the bytes before any
/// parser sees them. serde_json alone would not: its recursion limit (128) covers the values it
/// builds, but the fields a manifest type ignores are skipped without a depth limit, so a
/// manifest nested a million levels deep in an unknown field would be stored, and served to
/// clients that cannot parse it.
fn check_depth(bytes: &[u8]) -> Result<()> {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_MANIFEST_DEPTH {
                    return Err(invalid(format!(
                        "manifest JSON is nested deeper than {MAX_MANIFEST_DEPTH} levels, more than \
                         clients can be relied on to read back"
                    )));
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

fn descriptor_digest(d: &Descriptor) -> Result<Digest> {
    d.digest()
        .as_ref()
        .parse::<Digest>()
        .map_err(|e| invalid(format!("manifest references an unusable digest: {e}")))
}

fn invalid(message: String) -> Error {
    Error::new(ErrorCode::ManifestInvalid, message)
}

fn unsupported(media_type: &str) -> Error {
    Error::new(
        ErrorCode::ManifestInvalid,
        format!(
            "unsupported manifest media type {media_type:?}: accepted are {OCI_MANIFEST}, {OCI_INDEX}, {DOCKER_MANIFEST} and {DOCKER_MANIFEST_LIST}"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";
    const LAYER: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn docker_manifest_is_parsed_with_its_blobs() {
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","size":2,"digest":"{CONFIG}"}},"layers":[{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","size":0,"digest":"{LAYER}"}}]}}"#
        );
        let p = ParsedManifest::parse(Some(DOCKER_MANIFEST), m.as_bytes()).unwrap();
        assert_eq!(p.media_type, MediaType::DockerManifest);
        assert!(p.media_type_named);
        assert_eq!(p.blobs.len(), 2);
        // Without a mediaType field the Content-Type decides, so the bytes do not name it.
        let open = m.replace(&format!(r#""mediaType":"{DOCKER_MANIFEST}","#), "");
        let p = ParsedManifest::parse(Some(DOCKER_MANIFEST), open.as_bytes()).unwrap();
        assert_eq!(p.media_type, MediaType::DockerManifest);
        assert!(!p.media_type_named);
        let e = ParsedManifest::parse(Some(OCI_INDEX), m.as_bytes()).unwrap_err();
        assert_eq!(e.code(), ErrorCode::ManifestInvalid);
    }

    #[test]
    fn depth_is_limited_before_parsing() {
        let nested = |depth: usize, open: &str, close: &str| {
            format!(
                r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","size":2,"digest":"{CONFIG}"}},"layers":[],"x":{}1{}}}"#,
                open.repeat(depth),
                close.repeat(depth)
            )
        };
        // The document is level 1: 63 more levels are the limit.
        for (open, close) in [("[", "]"), (r#"{"a":"#, "}")] {
            let ok = nested(MAX_MANIFEST_DEPTH - 1, open, close);
            ParsedManifest::parse(None, ok.as_bytes()).unwrap();
            for depth in [MAX_MANIFEST_DEPTH, 200, 100_000] {
                let deep = nested(depth, open, close);
                let e = ParsedManifest::parse(None, deep.as_bytes()).unwrap_err();
                assert_eq!(e.code(), ErrorCode::ManifestInvalid);
                assert!(e.to_string().contains("64 levels"), "{e}");
            }
        }
        // Brackets inside strings (escaped quotes included) are text, not nesting.
        let text = format!(r#""\"{}\\""#, "[{".repeat(1000));
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","size":2,"digest":"{CONFIG}"}},"layers":[],"annotations":{{"a":{text}}}}}"#
        );
        let p = ParsedManifest::parse(None, m.as_bytes()).unwrap();
        assert!(p.annotations.unwrap()["a"].starts_with("\"[{[{"));
    }

    #[test]
    fn rejects_garbage_and_schema1() {
        for bad in [&b"not json"[..], b"{}", br#"{"schemaVersion":1}"#, b"[]"] {
            let e = ParsedManifest::parse(None, bad).unwrap_err();
            assert_eq!(e.code(), ErrorCode::ManifestInvalid);
        }
    }
}
