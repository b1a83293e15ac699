//! Entry points for `cargo fuzz` (`fuzz/`): every parser that reads the network, reachable with
//! plain bytes. Each must return (an error is fine) for any input: never panic, never hang,
//! never allocate without bound. Not part of the API.

use std::str::FromStr;
use std::sync::OnceLock;

/// `/v2/…` routes and the node-to-node routes under `/acr/`.
pub fn routes(path: &str) {
    let route = crate::api::route::Route::parse(path);
    let _ = route.name();
    let _ = crate::api::acr::AcrRoute::parse(path);
}

/// Repository names, tags, references and digests.
pub fn names(text: &str) {
    let _ = crate::oci::RepositoryName::from_str(text);
    let _ = crate::oci::Reference::from_str(text);
    let _ = crate::oci::Digest::from_str(text);
}

/// A manifest or index body, under the content type chosen by the first byte.
pub fn manifests(data: &[u8]) {
    const TYPES: [Option<&str>; 6] = [
        None,
        Some("application/vnd.oci.image.manifest.v1+json"),
        Some("application/vnd.oci.image.index.v1+json"),
        Some("application/vnd.docker.distribution.manifest.v2+json"),
        Some("application/vnd.docker.distribution.manifest.list.v2+json"),
        Some("text/plain"),
    ];
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let content_type = TYPES[selector as usize % TYPES.len()];
    if let Ok(parsed) = crate::oci::manifest::ParsedManifest::parse(content_type, body) {
        let digest = crate::oci::Digest::sha256_of(body);
        let _ = parsed.referrer_descriptor(&digest, body.len() as u64);
    }
}

/// An `Authorization` header value: Basic credentials, a bearer JWT, and docker token scopes.
pub fn authorization(value: &str) {
    static SIGNER: OnceLock<crate::auth::jwt::Signer> = OnceLock::new();
    let signer = SIGNER.get_or_init(crate::auth::jwt::Signer::default);
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        let _ = crate::auth::decode_basic(rest);
    } else {
        let _ = signer.check(rest);
    }
    let _ = crate::auth::jwt::parse_scopes([value].into_iter());
    let _ = crate::config::Action::from_str(value);
}

/// A `WWW-Authenticate` header from a parent.
pub fn challenges(value: &str) {
    let _ = crate::sync::client::parse_challenges(value);
}

/// A change-feed query string (`since`, `wait`, `ttl`).
pub fn feed_query(query: &[u8]) {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(query).into_owned().collect();
    for key in ["since", "wait", "ttl"] {
        let _ = crate::api::acr::number(&pairs, key, 0..=u64::MAX);
        let _ = crate::api::acr::number(&pairs, key, crate::api::acr::TTL_RANGE);
    }
}

/// An `ACR_REGISTRY_CONNECTION_STRING`.
pub fn connection_string(text: &str) {
    let _ = crate::config::bootstrap::ConnectionString::parse(text);
}
