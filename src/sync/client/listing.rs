//! Listings from the parent: `_catalog`, `tags/list` and the referrers API, each possibly split
//! into pages chained by `Link: <…>; rel="next"`.
//!
//! It exists because a listing is the one answer whose total size the parent controls page by
//! page: a parent whose `Link` always points at a new page could otherwise grow this node's
//! memory without end. Every listing here is bounded across all its pages — entries, bytes and
//! pages — and one that goes past a bound is refused as a whole (a truncated tag list would
//! look like deleted tags).

use std::collections::HashSet;

use reqwest::header::{self, HeaderMap};
use reqwest::{Method, StatusCode, Url};

use super::{pull_scope, repository, unexpected, Fetched, ParentClient, Req, SyncError, OCI_INDEX};
use crate::oci::Digest;

/// Most entries (repositories, tags or referrers) accepted across all the pages of one listing.
pub const MAX_LIST_ENTRIES: usize = 100_000;
/// Most bytes of JSON read across all the pages of one listing.
pub const MAX_LIST_BYTES: usize = 16 << 20;
/// Most pages followed in one listing (a chain of empty pages costs requests, not bytes).
pub const MAX_LIST_PAGES: usize = 1_000;

/// What one page said.
enum Page<T> {
    /// The listing does not exist (only honoured on the first page).
    Absent,
    Items(Vec<T>),
}

impl ParentClient {
    /// Every repository in `/v2/_catalog`, following pagination.
    pub async fn catalog(&self) -> Result<Vec<String>, SyncError> {
        let url = self.url(&format!("/v2/_catalog?n={}", self.page_size))?;
        self.pages(url, "registry:catalog:*".into(), None, |req, f| {
            string_page(req, f, "repositories")
        })
        .await?
        .ok_or_else(|| SyncError::Protocol("the parent has no catalog (404)".into()))
    }

    /// Every tag of `repo`, following pagination; `None` if the repository does not exist.
    pub async fn list_tags(&self, repo: &str) -> Result<Option<Vec<String>>, SyncError> {
        let repo = repository(repo)?;
        let url = self.url(&format!("/v2/{repo}/tags/list?n={}", self.page_size))?;
        self.pages(url, pull_scope(&repo), None, |req, f| {
            string_page(req, f, "tags")
        })
        .await
    }

    /// Referrers of `digest`; `None` if the parent has no referrers API (404, 405, 501). An
    /// answer that is not an OCI index is an error, so the next pass asks again.
    pub async fn referrers(
        &self,
        repo: &str,
        digest: &Digest,
    ) -> Result<Option<Vec<Digest>>, SyncError> {
        let repo = repository(repo)?;
        let url = self.url(&format!("/v2/{repo}/referrers/{digest}"))?;
        self.pages(url, pull_scope(&repo), Some(OCI_INDEX), |req, f| {
            if matches!(
                f.status,
                StatusCode::NOT_FOUND
                    | StatusCode::METHOD_NOT_ALLOWED
                    | StatusCode::NOT_IMPLEMENTED
            ) {
                return Ok(Page::Absent);
            }
            if !f.status.is_success() {
                return Err(unexpected(req, f));
            }
            parse_referrers(&f.body)
                .map(Page::Items)
                .map_err(|why| SyncError::Protocol(format!("{}: {why}", req.describe())))
        })
        .await
    }

    /// Resolve a `Link` target against the page it came from, refusing to leave the parent
    /// (the sync token must not be sent anywhere else).
    fn follow(&self, page: &Url, link: &str) -> Result<Url, SyncError> {
        let next = page
            .join(link)
            .map_err(|e| SyncError::Protocol(format!("invalid Link {link:?}: {e}")))?;
        if next.scheme() != self.origin.scheme()
            || next.host_str() != self.origin.host_str()
            || next.port_or_known_default() != self.origin.port_or_known_default()
        {
            return Err(SyncError::Protocol(format!(
                "the parent's Link {link:?} leaves the parent"
            )));
        }
        Ok(next)
    }

    /// Follow `Link: <…>; rel="next"` from `url`, collecting what `parse` makes of every page,
    /// within [`MAX_LIST_ENTRIES`], [`MAX_LIST_BYTES`] and [`MAX_LIST_PAGES`]. `None` if the
    /// first page says the listing is absent.
    async fn pages<T>(
        &self,
        mut url: Url,
        scope: String,
        accept: Option<&str>,
        parse: impl Fn(&Req, &Fetched) -> Result<Page<T>, SyncError>,
    ) -> Result<Option<Vec<T>>, SyncError> {
        let listing = url.path().to_owned();
        let refused =
            |why: String| SyncError::Refused(format!("the listing {listing} was refused: {why}"));
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        let mut bytes = 0usize;
        loop {
            if !seen.insert(url.to_string()) {
                return Err(SyncError::Protocol(format!("the pages of {listing} loop")));
            }
            if seen.len() > MAX_LIST_PAGES {
                return Err(refused(format!("more than {MAX_LIST_PAGES} pages")));
            }
            let mut req = Req::new(Method::GET, url, scope.clone());
            if let Some(accept) = accept {
                req = req.header(header::ACCEPT, accept);
            }
            let budget = MAX_LIST_BYTES - bytes;
            let f = match self.fetch(&req, budget).await {
                Err(SyncError::Refused(_)) => {
                    return Err(refused(format!("more than {MAX_LIST_BYTES} bytes")))
                }
                other => other?,
            };
            bytes += f.body.len();
            let first = seen.len() == 1;
            match parse(&req, &f)? {
                Page::Absent if first => return Ok(None),
                Page::Absent => return Err(unexpected(&req, &f)),
                Page::Items(items) => out.extend(items),
            }
            if out.len() > MAX_LIST_ENTRIES {
                return Err(refused(format!("more than {MAX_LIST_ENTRIES} entries")));
            }
            match next_link(&f.headers) {
                Some(link) => url = self.follow(&req.url, &link)?,
                None => return Ok(Some(out)),
            }
        }
    }
}

/// One page of a `_catalog` or `tags/list` listing: the string array `field`.
fn string_page(req: &Req, f: &Fetched, field: &str) -> Result<Page<String>, SyncError> {
    if f.status == StatusCode::NOT_FOUND {
        return Ok(Page::Absent);
    }
    if !f.status.is_success() {
        return Err(unexpected(req, f));
    }
    string_array(&f.body, field)
        .map(Page::Items)
        .map_err(|why| SyncError::Protocol(format!("{}: {why}", req.describe())))
}

/// Digests listed by a referrers answer (an OCI index).
pub(super) fn parse_referrers(body: &[u8]) -> Result<Vec<Digest>, String> {
    #[derive(serde::Deserialize)]
    struct Index {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<Vec<Descriptor>>,
    }
    #[derive(serde::Deserialize)]
    struct Descriptor {
        digest: String,
    }
    let index = serde_json::from_slice::<Index>(body)
        .map_err(|e| format!("the referrers answer is not an OCI index: {e}"))?;
    if let Some(m) = index.media_type.as_deref().filter(|m| *m != OCI_INDEX) {
        return Err(format!("the referrers answer is a {m}, not an OCI index"));
    }
    let manifests = index
        .manifests
        .ok_or("the referrers answer has no `manifests`")?;
    manifests
        .into_iter()
        .map(|d| {
            d.digest
                .parse::<Digest>()
                .map_err(|e| format!("the referrers index lists a bad digest: {e}"))
        })
        .collect()
}

/// The array of strings `field` of a JSON object (`null` or absent = empty).
fn string_array(body: &[u8], field: &str) -> Result<Vec<String>, String> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))?;
    match value.get(field) {
        None | Some(serde_json::Value::Null) => Ok(Vec::new()),
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| format!("`{field}` holds a non-string"))
            })
            .collect(),
        Some(_) => Err(format!("`{field}` is not an array")),
    }
}

/// The target of the first `Link: <…>; rel="next"`.
fn next_link(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::LINK)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(parse_next_link)
}

fn parse_next_link(value: &str) -> Option<String> {
    let mut rest = value;
    while let Some(open) = rest.find('<') {
        let after = &rest[open + 1..];
        let close = after.find('>')?;
        let target = &after[..close];
        let params_end = after[close..].find('<').map_or(after.len(), |i| close + i);
        let params = &after[close + 1..params_end];
        let is_next = params.split(';').any(|p| {
            let Some((key, value)) = p.split_once('=') else {
                return false;
            };
            key.trim().eq_ignore_ascii_case("rel")
                && value
                    .trim()
                    .trim_end_matches(',')
                    .trim()
                    .trim_matches('"')
                    .split_whitespace()
                    .any(|r| r.eq_ignore_ascii_case("next"))
        });
        if is_next {
            return Some(target.to_owned());
        }
        rest = &after[params_end..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::client::{ParentOptions, OCI_MANIFEST};
    use std::time::{Duration, Instant};

    #[test]
    fn parses_link_headers() {
        assert_eq!(
            parse_next_link(r#"</v2/_catalog?last=b&n=2>; rel="next""#).as_deref(),
            Some("/v2/_catalog?last=b&n=2")
        );
        assert_eq!(
            parse_next_link(r#"<https://x/a>; rel="prev", <https://x/b?c,d>; rel=next"#).as_deref(),
            Some("https://x/b?c,d")
        );
        assert_eq!(parse_next_link(r#"</a>; rel="prev""#), None);
        assert_eq!(parse_next_link("garbage <"), None);
    }

    #[test]
    fn referrers_from_bodies() {
        let d = Digest::sha256_of(b"x");
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"digest":"{d}","size":1}}]}}"#
        );
        assert_eq!(parse_referrers(index.as_bytes()).unwrap(), vec![d.clone()]);
        assert!(parse_referrers(b"404 page not found").is_err());
        assert!(
            parse_referrers(br#"{"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#)
                .is_err()
        );
        assert!(parse_referrers(br#"{"manifests":[{"digest":"sha256:zz"}]}"#).is_err());
    }

    /// Push a config blob and a manifest to `repo` (so distribution lists it in its catalog).
    async fn push_tiny_image(http: &reqwest::Client, base: &str, repo: &str) {
        let config = b"{}";
        let digest = Digest::sha256_of(config);
        let resp = http
            .post(format!("{base}/v2/{repo}/blobs/uploads/"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::ACCEPTED, "{repo}");
        let location = resp.headers()[header::LOCATION]
            .to_str()
            .unwrap()
            .to_owned();
        let mut url = Url::parse(base).unwrap().join(&location).unwrap();
        url.query_pairs_mut()
            .append_pair("digest", &digest.to_string());
        let resp = http.put(url).body(config.to_vec()).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED, "{repo}");
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{digest}","size":2}},"layers":[]}}"#
        );
        let resp = http
            .put(format!("{base}/v2/{repo}/manifests/latest"))
            .header(header::CONTENT_TYPE, OCI_MANIFEST)
            .body(manifest)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED, "{repo}");
    }

    /// Catalog pagination against the real distribution (it paginates `_catalog` with `n`):
    /// three repositories, two per page.
    #[tokio::test]
    async fn catalog_follows_link_pagination_of_distribution() {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{level: error}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\n  delete: {{enabled: true}}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("root").display()
            ),
        )
        .unwrap();
        let child = std::process::Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("docker-registry (Debian package docker-registry) must be installed");
        struct Kill(std::process::Child);
        impl Drop for Kill {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let _guard = Kill(child);
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while http.get(format!("{base}/v2/")).send().await.is_err() {
            assert!(Instant::now() < deadline, "docker-registry did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for repo in ["alpha", "beta/one", "gamma"] {
            push_tiny_image(&http, &base, repo).await;
        }
        let mut client = ParentClient::new(ParentOptions {
            endpoint: base,
            credentials: None,
            ca_pem: None,
            bandwidth_limit: None,
        })
        .unwrap();
        client.page_size = 2;
        let before = client.requests_made();
        let repos = client.catalog().await.unwrap();
        assert_eq!(repos, vec!["alpha", "beta/one", "gamma"]);
        assert_eq!(client.requests_made() - before, 2, "two pages");
    }
}
