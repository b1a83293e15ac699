//! The parent client: every request a node makes to its parent registry (any OCI registry, or a
//! connected-registry node) goes through here.
//!
//! It exists so that the sync engine can think in terms of "list the tags", "fetch this manifest",
//! "download this blob" and never about HTTP: this module owns the one connection pool, the
//! timeouts that detect a stalled parent, the retries with backoff, the sync-token credentials
//! (Basic auth and the docker token flow), the digest checks on everything that comes down the
//! wire, resumable blob downloads and the shared bandwidth limit. Whatever the parent sends, the
//! answer is either verified data or a [`SyncError`] whose [`code`](SyncError::code) goes into the
//! status model: nothing here panics on bad parent input.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::{Read, SeekFrom};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use rand::Rng;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, Response, StatusCode, Url};
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

use crate::oci::{Digest, Hasher, Reference, RepositoryName};

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
    /// 410 `MESSAGES_EXPIRED`: reconcile in full, then follow the feed from `latest` (the
    /// parent's newest sequence number, from the error's detail; `since` if it sent none).
    #[error("the parent no longer has change events since {since}")]
    MessagesExpired { since: u64, latest: u64 },
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

/// Time allowed to open a TCP (and TLS) connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest silence tolerated from the parent: waiting for response headers, or between two
/// pieces of a body. A parent that says nothing for this long is treated as gone.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Extra time a long-poll of the change feed gets beyond the `wait` it asked the parent for.
const LONG_POLL_MARGIN: Duration = Duration::from_secs(30);
/// Attempts per request (the first one included) on connection errors, timeouts, 5xx and 429.
const ATTEMPTS: u32 = 4;
const BACKOFF_BASE: Duration = Duration::from_millis(200);
const BACKOFF_CAP: Duration = Duration::from_secs(5);
/// Largest manifest accepted (distribution's own limit is 4 MiB too).
const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// Largest JSON document accepted (a catalog or tags page, a referrers index, a feed page).
const MAX_JSON_BYTES: usize = 32 << 20;
/// Entries asked for per catalog / tags page.
const PAGE_SIZE: u32 = 1000;
/// A pagination chain longer than this is a parent bug (or a loop).
const MAX_PAGES: usize = 100_000;
/// Blob bytes are written to disk in pieces of this size.
const WRITE_CHUNK: usize = 1 << 20;

/// What `GET`/`HEAD` on a manifest accepts.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_CONTENT_DIGEST: &str = "docker-content-digest";

/// Talks to one parent registry. Share it (e.g. in an `Arc`) between tasks: it holds the
/// connection pool, the bearer-token cache and the bandwidth limiter.
pub struct ParentClient {
    /// The endpoint with no trailing slash; request paths are appended to it.
    base: String,
    /// The endpoint parsed, to resolve relative links and check they stay on the parent.
    origin: Url,
    http: reqwest::Client,
    credentials: Option<(String, String)>,
    /// Bearer tokens by scope (`repository:<name>:pull`, `registry:catalog:*`, …).
    tokens: Mutex<HashMap<String, CachedToken>>,
    limiter: Option<Limiter>,
    requests: AtomicU64,
    /// `n` asked for on paginated lists (a field so unit tests can force several pages).
    page_size: u32,
    /// This child's `messageTtl`, sent with each change-feed request so the parent answers
    /// `MESSAGES_EXPIRED` once the child has missed events older than that.
    message_ttl: Option<Duration>,
}

impl fmt::Debug for ParentClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParentClient")
            .field("endpoint", &self.base)
            .field(
                "user",
                &self.credentials.as_ref().map(|(user, _)| user.as_str()),
            )
            .field("requests_made", &self.requests_made())
            .finish_non_exhaustive()
    }
}

struct CachedToken {
    token: String,
    valid_until: Instant,
}

/// The shared bandwidth limit: one governor cell is `unit` bytes.
struct Limiter {
    governor: DefaultDirectRateLimiter,
    unit: u64,
    burst: u32,
}

impl Limiter {
    fn new(bytes_per_second: u64) -> Option<Limiter> {
        let rate = bytes_per_second.max(1);
        // Whole KiB cells keep the replenish period exact for fast links; single bytes keep
        // slow links (a few KiB/s) smooth.
        let unit: u64 = if rate >= 1 << 20 { 1024 } else { 1 };
        let period_ns = (1_000_000_000u128 * u128::from(unit)) / u128::from(rate);
        let period = Duration::from_nanos(u64::try_from(period_ns).ok()?);
        // A quarter of a second worth of bytes may go at once.
        let burst = u32::try_from((rate / unit / 4).max(1)).unwrap_or(u32::MAX);
        let quota = Quota::with_period(period)?.allow_burst(NonZeroU32::new(burst)?);
        Some(Limiter {
            governor: RateLimiter::direct(quota),
            unit,
            burst,
        })
    }

    /// Wait until `bytes` more may be transferred; returns the bytes not yet charged (less
    /// than one cell), to be carried into the next call.
    async fn take(&self, bytes: u64) -> u64 {
        let mut cells = bytes / self.unit;
        while cells > 0 {
            let n = cells.min(u64::from(self.burst)) as u32;
            if let Some(n) = NonZeroU32::new(n) {
                // `n` never exceeds the burst, so this cannot fail for lack of capacity.
                let _ = self.governor.until_n_ready(n).await;
            }
            cells -= u64::from(n);
        }
        bytes % self.unit
    }
}

/// How a request authenticates.
#[derive(Clone, Copy)]
enum Auth<'a> {
    /// Basic with the sync token, when there is one.
    Basic,
    Bearer(&'a str),
}

/// One request, kept whole so it can be sent again (retries, authentication).
struct Req {
    method: Method,
    url: Url,
    /// Bearer-token cache key for this request.
    scope: String,
    headers: HeaderMap,
    /// How long to wait for the response headers.
    wait: Duration,
}

impl Req {
    fn new(method: Method, url: Url, scope: impl Into<String>) -> Req {
        Req {
            method,
            url,
            scope: scope.into(),
            headers: HeaderMap::new(),
            wait: IDLE_TIMEOUT,
        }
    }

    fn header(mut self, name: header::HeaderName, value: &str) -> Req {
        if let Ok(value) = HeaderValue::from_str(value) {
            self.headers.insert(name, value);
        }
        self
    }

    /// `GET /path` as written in messages (no host, no query).
    fn describe(&self) -> String {
        format!("{} {}", self.method, self.url.path())
    }
}

/// Why a body could not be read.
enum BodyError {
    /// The connection broke or stalled: worth another attempt.
    Transient(String),
    TooLarge(usize),
}

/// A response read whole.
struct Fetched {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl ParentClient {
    pub fn new(options: ParentOptions) -> Result<ParentClient, SyncError> {
        let base = options.endpoint.trim().trim_end_matches('/').to_owned();
        let origin = Url::parse(&base)
            .map_err(|e| SyncError::Protocol(format!("invalid parent endpoint {base:?}: {e}")))?;
        if !matches!(origin.scheme(), "http" | "https") || origin.host_str().is_none() {
            return Err(SyncError::Protocol(format!(
                "invalid parent endpoint {base:?}: expected http(s)://host[:port]"
            )));
        }
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_keepalive(Duration::from_secs(30))
            .pool_idle_timeout(Duration::from_secs(90))
            .redirect(reqwest::redirect::Policy::limited(5))
            .user_agent(concat!("connected-registry/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = options.ca_pem.as_deref().filter(|p| !p.trim().is_empty()) {
            let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes()).map_err(|e| {
                SyncError::Protocol(format!("invalid parent CA certificate: {}", chain(&e)))
            })?;
            if certs.is_empty() {
                return Err(SyncError::Protocol(
                    "the parent CA certificate holds no PEM certificate".into(),
                ));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().map_err(|e| {
            SyncError::Protocol(format!("cannot build the HTTP client: {}", chain(&e)))
        })?;
        Ok(ParentClient {
            base,
            origin,
            http,
            credentials: options.credentials,
            tokens: Mutex::new(HashMap::new()),
            limiter: options.bandwidth_limit.and_then(Limiter::new),
            requests: AtomicU64::new(0),
            page_size: PAGE_SIZE,
            message_ttl: None,
        })
    }

    /// Send `ttl` as this child's message TTL with every change-feed request.
    pub fn with_message_ttl(mut self, ttl: Duration) -> ParentClient {
        self.message_ttl = Some(ttl);
        self
    }

    /// Requests sent to the parent so far (including retries and token requests).
    pub fn requests_made(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// `GET /v2/`.
    pub async fn ping(&self) -> Result<(), SyncError> {
        let req = Req::new(Method::GET, self.url("/v2/")?, "");
        let f = self.fetch(&req, MAX_JSON_BYTES).await?;
        if f.status.is_success() {
            Ok(())
        } else {
            Err(unexpected(&req, &f))
        }
    }

    /// Every repository in `/v2/_catalog`, following pagination.
    pub async fn catalog(&self) -> Result<Vec<String>, SyncError> {
        let url = self.url(&format!("/v2/_catalog?n={}", self.page_size))?;
        self.paginate(url, "registry:catalog:*", "repositories")
            .await?
            .ok_or_else(|| SyncError::Protocol("the parent has no catalog (404)".into()))
    }

    /// Every tag of `repo`, following pagination; `None` if the repository does not exist.
    pub async fn list_tags(&self, repo: &str) -> Result<Option<Vec<String>>, SyncError> {
        let repo = repository(repo)?;
        let url = self.url(&format!("/v2/{repo}/tags/list?n={}", self.page_size))?;
        self.paginate(url, pull_scope(&repo), "tags").await
    }

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
            Some(digest) => Ok(Some(digest)),
            // No (usable) Docker-Content-Digest: fetch the bytes and hash them.
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
        let digest = match &reference {
            Reference::Digest(expected) => {
                verify(&what, expected, &f.body)?;
                expected.clone()
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
                    announced
                }
                None => Digest::sha256_of(&f.body),
            },
        };
        let content_type = f
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        Ok(Some(RemoteManifest {
            digest,
            media_type: manifest_media_type(content_type, &f.body),
            bytes: f.body,
        }))
    }

    /// Referrers of `digest`; `None` if the parent has no referrers API.
    pub async fn referrers(
        &self,
        repo: &str,
        digest: &Digest,
    ) -> Result<Option<Vec<Digest>>, SyncError> {
        let repo = repository(repo)?;
        let mut url = self.url(&format!("/v2/{repo}/referrers/{digest}"))?;
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        loop {
            if !seen.insert(url.to_string()) || seen.len() > MAX_PAGES {
                return Err(SyncError::Protocol(format!(
                    "the referrers pages of {repo}@{digest} loop"
                )));
            }
            let req =
                Req::new(Method::GET, url, pull_scope(&repo)).header(header::ACCEPT, OCI_INDEX);
            let f = self.fetch(&req, MAX_JSON_BYTES).await?;
            if matches!(
                f.status,
                StatusCode::NOT_FOUND
                    | StatusCode::METHOD_NOT_ALLOWED
                    | StatusCode::NOT_IMPLEMENTED
            ) {
                return Ok(None);
            }
            if !f.status.is_success() {
                return Err(unexpected(&req, &f));
            }
            let Some(page) = parse_referrers(&f.body)? else {
                return Ok(None);
            };
            out.extend(page);
            match next_link(&f.headers) {
                Some(link) => url = self.follow(&req.url, &link)?,
                None => return Ok(Some(out)),
            }
        }
    }

    /// Download blob `digest` of `repo` into `partial`, resuming with `Range` from the bytes
    /// already there; verify the whole file against `digest` and fsync it. Returns the number of
    /// bytes transferred in this call.
    pub async fn download_blob(
        &self,
        repo: &str,
        digest: &Digest,
        partial: &Path,
    ) -> Result<u64, SyncError> {
        let repo = repository(repo)?;
        if let Some(dir) = partial.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|e| disk(dir, e))?;
        }
        let mut file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(partial)
            .await
            .map_err(|e| disk(partial, e))?;
        let have = file.metadata().await.map_err(|e| disk(partial, e))?.len();

        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"))?;
        let mut req = Req::new(Method::GET, url, pull_scope(&repo));
        if have > 0 {
            req = req.header(header::RANGE, &format!("bytes={have}-"));
        }
        let what = format!("blob {repo}@{digest}");
        let mut resp = self.send(&req).await?;
        let mut hasher = match resp.status() {
            StatusCode::PARTIAL_CONTENT if have > 0 => {
                let start = resp
                    .headers()
                    .get(header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(content_range_start);
                if start != Some(have) {
                    return Err(SyncError::Protocol(format!(
                        "{what}: asked for bytes from {have}, the parent answered {:?}",
                        resp.headers().get(header::CONTENT_RANGE)
                    )));
                }
                let hasher = hash_prefix(partial, digest).await?;
                file.seek(SeekFrom::End(0))
                    .await
                    .map_err(|e| disk(partial, e))?;
                hasher
            }
            StatusCode::OK | StatusCode::PARTIAL_CONTENT => {
                // Range ignored (or nothing to resume): start over.
                file.set_len(0).await.map_err(|e| disk(partial, e))?;
                file.seek(SeekFrom::Start(0))
                    .await
                    .map_err(|e| disk(partial, e))?;
                digest.algorithm().hasher()
            }
            StatusCode::RANGE_NOT_SATISFIABLE if have > 0 => {
                // Nothing after `have`: the file should already be the whole blob.
                drop(resp);
                let actual = hash_prefix(partial, digest).await?.finish();
                return self
                    .finish_blob(file, partial, &what, digest, actual, 0)
                    .await;
            }
            _ => {
                let f = read_whole(&mut resp, MAX_JSON_BYTES).await;
                let f = Fetched {
                    status: resp.status(),
                    headers: resp.headers().clone(),
                    body: f.unwrap_or_default(),
                };
                return Err(unexpected(&req, &f));
            }
        };

        let mut writer = tokio::io::BufWriter::with_capacity(WRITE_CHUNK, file);
        let mut transferred = 0u64;
        let mut uncharged = 0u64;
        let cut = loop {
            match tokio::time::timeout(IDLE_TIMEOUT, resp.chunk()).await {
                Ok(Ok(Some(chunk))) => {
                    if let Some(limiter) = &self.limiter {
                        uncharged = limiter.take(uncharged + chunk.len() as u64).await;
                    }
                    hasher.update(&chunk);
                    writer
                        .write_all(&chunk)
                        .await
                        .map_err(|e| disk(partial, e))?;
                    transferred += chunk.len() as u64;
                }
                Ok(Ok(None)) => break None,
                Ok(Err(e)) => break Some(chain(&e)),
                Err(_) => break Some(format!("no data for {}s", IDLE_TIMEOUT.as_secs())),
            }
        };
        writer.flush().await.map_err(|e| disk(partial, e))?;
        let file = writer.into_inner();
        if let Some(why) = cut {
            // Keep what arrived: the next call resumes from there.
            let _ = file.sync_data().await;
            return Err(SyncError::ParentUnreachable(format!(
                "{what}: download cut after {transferred} bytes ({why})"
            )));
        }
        let actual = hasher.finish();
        self.finish_blob(file, partial, &what, digest, actual, transferred)
            .await
    }

    /// Long-poll the change feed: events after `since`, waiting up to `wait_secs` for one.
    pub async fn changes(&self, since: u64, wait_secs: u64) -> Result<ChangesPage, SyncError> {
        let ttl = self
            .message_ttl
            .map(|t| format!("&ttl={}", t.as_secs()))
            .unwrap_or_default();
        let url = self.url(&format!(
            "/acr/connected-registry/v1/changes?since={since}&wait={wait_secs}{ttl}"
        ))?;
        let mut req = Req::new(Method::GET, url, "feed");
        req.wait = Duration::from_secs(wait_secs.min(24 * 3600)) + LONG_POLL_MARGIN;
        let f = self.fetch(&req, MAX_JSON_BYTES).await?;
        match f.status {
            StatusCode::GONE => Err(SyncError::MessagesExpired {
                since,
                latest: expired_latest(&f.body).unwrap_or(since),
            }),
            StatusCode::NOT_FOUND => Err(SyncError::Protocol("parent has no change feed".into())),
            s if s.is_success() => serde_json::from_slice(&f.body)
                .map_err(|e| SyncError::Protocol(format!("invalid change feed page: {e}"))),
            _ => Err(unexpected(&req, &f)),
        }
    }

    // ---- private helpers ----

    /// The endpoint plus `path_and_query`.
    fn url(&self, path_and_query: &str) -> Result<Url, SyncError> {
        Url::parse(&format!("{}{path_and_query}", self.base)).map_err(|e| {
            SyncError::Protocol(format!("cannot build a URL for {path_and_query}: {e}"))
        })
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

    /// Follow `Link: <…>; rel="next"` from `url`, collecting the string array `field` of every
    /// page. `None` if the first page is a 404.
    async fn paginate(
        &self,
        mut url: Url,
        scope: impl Into<String>,
        field: &str,
    ) -> Result<Option<Vec<String>>, SyncError> {
        let scope = scope.into();
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        loop {
            if !seen.insert(url.to_string()) || seen.len() > MAX_PAGES {
                return Err(SyncError::Protocol(format!(
                    "the pages of {} loop",
                    url.path()
                )));
            }
            let req = Req::new(Method::GET, url, scope.clone());
            let f = self.fetch(&req, MAX_JSON_BYTES).await?;
            if f.status == StatusCode::NOT_FOUND && out.is_empty() && seen.len() == 1 {
                return Ok(None);
            }
            if !f.status.is_success() {
                return Err(unexpected(&req, &f));
            }
            out.extend(
                string_array(&f.body, field)
                    .map_err(|why| SyncError::Protocol(format!("{}: {why}", req.describe())))?,
            );
            match next_link(&f.headers) {
                Some(link) => url = self.follow(&req.url, &link)?,
                None => return Ok(Some(out)),
            }
        }
    }

    /// Send `req` and read the whole body (at most `limit` bytes; nothing for `HEAD`), trying
    /// again when the body is cut or stalls.
    async fn fetch(&self, req: &Req, limit: usize) -> Result<Fetched, SyncError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut resp = self.send(req).await?;
            let status = resp.status();
            let headers = resp.headers().clone();
            if req.method == Method::HEAD {
                return Ok(Fetched {
                    status,
                    headers,
                    body: Bytes::new(),
                });
            }
            match read_body(&mut resp, limit).await {
                Ok(body) => {
                    return Ok(Fetched {
                        status,
                        headers,
                        body,
                    })
                }
                Err(BodyError::TooLarge(limit)) => {
                    return Err(SyncError::Protocol(format!(
                        "{}: the answer is larger than {limit} bytes",
                        req.describe()
                    )))
                }
                Err(BodyError::Transient(why)) => {
                    if attempt >= ATTEMPTS {
                        return Err(SyncError::ParentUnreachable(format!(
                            "{}: {why} (after {attempt} attempts)",
                            req.describe()
                        )));
                    }
                    tracing::debug!(request = %req.describe(), %why, attempt, "retrying");
                    tokio::time::sleep(backoff(attempt)).await;
                }
            }
        }
    }

    /// Send `req` with the sync token: Basic first (or a cached bearer token), then, on a
    /// `Bearer` challenge, a token from the realm and one more try. A 401/403 that persists is
    /// [`SyncError::AuthenticationFailed`].
    async fn send(&self, req: &Req) -> Result<Response, SyncError> {
        let mut fresh: Option<String> = None;
        loop {
            let token = fresh.clone().or_else(|| self.cached_token(&req.scope));
            let auth = match token.as_deref() {
                Some(t) => Auth::Bearer(t),
                None => Auth::Basic,
            };
            let resp = self.send_retrying(req, auth).await?;
            let status = resp.status();
            if status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN {
                return Ok(resp);
            }
            if fresh.is_none() {
                if let Some(challenge) = bearer_challenge(resp.headers()) {
                    drop(resp);
                    self.forget_token(&req.scope);
                    fresh = Some(self.fetch_token(&challenge, &req.scope).await?);
                    continue;
                }
            }
            let mut resp = resp;
            let body = read_whole(&mut resp, 64 << 10).await.unwrap_or_default();
            return Err(SyncError::AuthenticationFailed(format!(
                "{} answered {status}{}",
                req.describe(),
                error_detail(&body)
            )));
        }
    }

    /// One request, tried again with backoff and jitter on connection errors, timeouts, 5xx
    /// and 429. Other statuses are the caller's business.
    async fn send_retrying(&self, req: &Req, auth: Auth<'_>) -> Result<Response, SyncError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut builder = self
                .http
                .request(req.method.clone(), req.url.clone())
                .headers(req.headers.clone());
            builder = match auth {
                Auth::Bearer(token) => builder.bearer_auth(token),
                Auth::Basic => match &self.credentials {
                    Some((user, password)) => builder.basic_auth(user, Some(password)),
                    None => builder,
                },
            };
            self.requests.fetch_add(1, Ordering::Relaxed);
            let (why, retry_after) = match tokio::time::timeout(req.wait, builder.send()).await {
                Ok(Ok(resp)) => {
                    let status = resp.status();
                    if !(status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS) {
                        return Ok(resp);
                    }
                    (format!("answered {status}"), retry_after(resp.headers()))
                }
                Ok(Err(e)) if e.is_builder() || e.is_redirect() => {
                    return Err(SyncError::Protocol(format!(
                        "{}: {}",
                        req.describe(),
                        chain(&e)
                    )))
                }
                Ok(Err(e)) => (chain(&e), None),
                Err(_) => (format!("no answer within {}s", req.wait.as_secs()), None),
            };
            if attempt >= ATTEMPTS {
                return Err(SyncError::ParentUnreachable(format!(
                    "{} {}: {why} (after {attempt} attempts)",
                    self.base,
                    req.describe()
                )));
            }
            tracing::debug!(request = %req.describe(), %why, attempt, "retrying");
            tokio::time::sleep(retry_after.unwrap_or_else(|| backoff(attempt))).await;
        }
    }

    fn cached_token(&self, scope: &str) -> Option<String> {
        let tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens
            .get(scope)
            .filter(|t| t.valid_until > Instant::now())
            .map(|t| t.token.clone())
    }

    fn forget_token(&self, scope: &str) {
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        tokens.remove(scope);
    }

    /// The docker token flow: `GET realm?service=…&scope=…` with the sync token as Basic
    /// credentials; the token is cached under `cache_key` until shortly before it expires.
    async fn fetch_token(
        &self,
        challenge: &Challenge,
        cache_key: &str,
    ) -> Result<String, SyncError> {
        let realm = challenge.param("realm").ok_or_else(|| {
            SyncError::AuthenticationFailed("Bearer challenge without a realm".into())
        })?;
        let mut url = self.origin.join(realm).map_err(|e| {
            SyncError::AuthenticationFailed(format!("invalid token realm {realm:?}: {e}"))
        })?;
        if !matches!(url.scheme(), "http" | "https")
            || (self.origin.scheme() == "https" && url.scheme() != "https")
        {
            return Err(SyncError::AuthenticationFailed(format!(
                "refusing to send the sync token to the realm {realm:?}"
            )));
        }
        let scopes: Vec<&str> = challenge
            .param("scope")
            .map(|s| s.split_whitespace().collect())
            .unwrap_or_default();
        if challenge.param("service").is_some() || !scopes.is_empty() {
            let mut query = url.query_pairs_mut();
            if let Some(service) = challenge.param("service") {
                query.append_pair("service", service);
            }
            for scope in scopes {
                query.append_pair("scope", scope);
            }
        }
        let req = Req::new(Method::GET, url, "");
        let mut resp = self.send_retrying(&req, Auth::Basic).await?;
        let status = resp.status();
        let body = match read_body(&mut resp, 1 << 20).await {
            Ok(body) => body,
            Err(BodyError::TooLarge(_)) => {
                return Err(SyncError::Protocol("the token answer is too large".into()))
            }
            Err(BodyError::Transient(why)) => {
                return Err(SyncError::ParentUnreachable(format!(
                    "token request: {why}"
                )))
            }
        };
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(SyncError::AuthenticationFailed(format!(
                "the token service answered {status}{}",
                error_detail(&body)
            )));
        }
        if !status.is_success() {
            return Err(SyncError::AuthenticationFailed(format!(
                "the token service answered {status}{}",
                error_detail(&body)
            )));
        }
        #[derive(serde::Deserialize)]
        struct TokenAnswer {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let answer: TokenAnswer = serde_json::from_slice(&body)
            .map_err(|e| SyncError::Protocol(format!("invalid token answer: {e}")))?;
        let token = answer
            .token
            .filter(|t| !t.is_empty())
            .or(answer.access_token.filter(|t| !t.is_empty()))
            .ok_or_else(|| {
                SyncError::AuthenticationFailed("the token service sent no token".into())
            })?;
        // Docker's default lifetime is 60 s; stop using a token a little before it expires.
        let lifetime = answer.expires_in.unwrap_or(60).min(24 * 3600);
        let valid_for = lifetime.saturating_sub((lifetime / 10).max(5));
        if valid_for > 0 {
            let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
            tokens.retain(|_, t| t.valid_until > Instant::now());
            tokens.insert(
                cache_key.to_owned(),
                CachedToken {
                    token: token.clone(),
                    valid_until: Instant::now() + Duration::from_secs(valid_for),
                },
            );
        }
        Ok(token)
    }

    /// The end of a download: compare, then keep (fsynced) or delete the file.
    async fn finish_blob(
        &self,
        file: tokio::fs::File,
        partial: &Path,
        what: &str,
        expected: &Digest,
        actual: Digest,
        transferred: u64,
    ) -> Result<u64, SyncError> {
        if &actual != expected {
            drop(file);
            match tokio::fs::remove_file(partial).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(disk(partial, e)),
            }
            return Err(SyncError::DigestMismatch {
                what: what.to_owned(),
                expected: expected.to_string(),
                actual: actual.to_string(),
            });
        }
        file.sync_all().await.map_err(|e| disk(partial, e))?;
        Ok(transferred)
    }
}

// ---- free helpers ----

fn disk(path: &Path, e: std::io::Error) -> SyncError {
    SyncError::Disk(format!("{}: {e}", path.display()))
}

/// An error and its sources, joined (reqwest's own message alone says little).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

fn repository(repo: &str) -> Result<RepositoryName, SyncError> {
    repo.parse()
        .map_err(|e: crate::oci::Error| SyncError::Protocol(e.to_string()))
}

fn parse_reference(reference: &str) -> Result<Reference, SyncError> {
    reference
        .parse()
        .map_err(|e: crate::oci::Error| SyncError::Protocol(e.to_string()))
}

fn pull_scope(repo: &RepositoryName) -> String {
    format!("repository:{repo}:pull")
}

/// Exponential backoff with jitter: between half and all of `base · 2^(attempt-1)`, capped.
fn backoff(attempt: u32) -> Duration {
    let exp = BACKOFF_BASE
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(BACKOFF_CAP);
    let ms = exp.as_millis() as u64;
    Duration::from_millis(rand::thread_rng().gen_range(ms / 2..=ms))
}

/// A `Retry-After` in seconds, capped so a parent cannot park the sync.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get(header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs).min(BACKOFF_CAP))
}

fn verify(what: &str, expected: &Digest, bytes: &[u8]) -> Result<(), SyncError> {
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
fn manifest_media_type(content_type: Option<&str>, bytes: &[u8]) -> String {
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

/// `latest` from the detail of a 410 `MESSAGES_EXPIRED` body.
fn expired_latest(body: &[u8]) -> Option<u64> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value
        .get("errors")?
        .as_array()?
        .iter()
        .find_map(|e| e.get("detail")?.get("latest")?.as_u64())
}

/// Digests listed by a referrers answer; `None` when it is not an OCI index.
fn parse_referrers(body: &[u8]) -> Result<Option<Vec<Digest>>, SyncError> {
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
    let Ok(index) = serde_json::from_slice::<Index>(body) else {
        return Ok(None);
    };
    if index.media_type.as_deref().is_some_and(|m| m != OCI_INDEX) {
        return Ok(None);
    }
    let Some(manifests) = index.manifests else {
        return Ok(None);
    };
    manifests
        .into_iter()
        .map(|d| {
            d.digest.parse::<Digest>().map_err(|e| {
                SyncError::Protocol(format!("referrers index lists a bad digest: {e}"))
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
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

/// The start offset of `Content-Range: bytes START-END/TOTAL`.
fn content_range_start(value: &str) -> Option<u64> {
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    let (start, _) = rest.split_once('-')?;
    start.trim().parse().ok()
}

/// Read a body whole, at most `limit` bytes, tolerating no silence longer than the idle
/// timeout.
async fn read_body(resp: &mut Response, limit: usize) -> Result<Bytes, BodyError> {
    if let Some(len) = resp.content_length() {
        if len > limit as u64 {
            return Err(BodyError::TooLarge(limit));
        }
    }
    let mut buf = BytesMut::new();
    loop {
        match tokio::time::timeout(IDLE_TIMEOUT, resp.chunk()).await {
            Ok(Ok(Some(chunk))) => {
                if buf.len() + chunk.len() > limit {
                    return Err(BodyError::TooLarge(limit));
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(Ok(None)) => return Ok(buf.freeze()),
            Ok(Err(e)) => return Err(BodyError::Transient(chain(&e))),
            Err(_) => {
                return Err(BodyError::Transient(format!(
                    "no data for {}s",
                    IDLE_TIMEOUT.as_secs()
                )))
            }
        }
    }
}

/// Like [`read_body`], for error answers whose body only feeds a message.
async fn read_whole(resp: &mut Response, limit: usize) -> Option<Bytes> {
    read_body(resp, limit).await.ok()
}

/// `Protocol` error for an answer the caller did not expect.
fn unexpected(req: &Req, f: &Fetched) -> SyncError {
    SyncError::Protocol(format!(
        "{} answered {}{}",
        req.describe(),
        f.status,
        error_detail(&f.body)
    ))
}

/// `: CODE: message` from an OCI error body, or the start of any other body.
fn error_detail(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<OciError>,
    }
    #[derive(serde::Deserialize)]
    struct OciError {
        code: Option<String>,
        message: Option<String>,
    }
    if let Ok(e) = serde_json::from_slice::<Errors>(body) {
        if let Some(first) = e.errors.first() {
            return format!(
                ": {}: {}",
                first.code.as_deref().unwrap_or("?"),
                first.message.as_deref().unwrap_or("")
            );
        }
    }
    let text: String = String::from_utf8_lossy(body)
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    let text = text.trim();
    if text.is_empty() {
        String::new()
    } else {
        format!(": {text}")
    }
}

/// Hash the bytes already in `partial` with the algorithm of `digest` (off the async threads).
async fn hash_prefix(partial: &Path, digest: &Digest) -> Result<Hasher, SyncError> {
    let path: PathBuf = partial.to_owned();
    let mut hasher = digest.algorithm().hasher();
    tokio::task::spawn_blocking(move || {
        let mut file = std::fs::File::open(&path).map_err(|e| disk(&path, e))?;
        let mut buf = vec![0u8; WRITE_CHUNK];
        loop {
            let n = file.read(&mut buf).map_err(|e| disk(&path, e))?;
            if n == 0 {
                return Ok(hasher);
            }
            hasher.update(&buf[..n]);
        }
    })
    .await
    .map_err(|e| SyncError::Disk(format!("hashing {}: {e}", partial.display())))?
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

/// One challenge of a `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Challenge {
    scheme: String,
    /// Parameter names lowercased, values unquoted.
    params: Vec<(String, String)>,
}

impl Challenge {
    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The first `Bearer` challenge among the `WWW-Authenticate` headers.
fn bearer_challenge(headers: &HeaderMap) -> Option<Challenge> {
    headers
        .get_all(header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(parse_challenges)
        .find(|c| c.scheme.eq_ignore_ascii_case("bearer"))
}

/// Parse a `WWW-Authenticate` value (RFC 9110 §11.6.1): one or more challenges, each a scheme
/// and comma-separated `name=value` parameters, values as tokens or quoted strings (which may
/// hold commas, as docker scopes do).
fn parse_challenges(value: &str) -> Vec<Challenge> {
    let chars: Vec<char> = value.chars().collect();
    let mut p = Cursor { s: &chars, i: 0 };
    let mut out = Vec::new();
    loop {
        p.skip(|c| c.is_whitespace() || c == ',');
        if p.done() {
            return out;
        }
        let scheme = p.token();
        if scheme.is_empty() {
            p.i += 1; // junk: skip it
            continue;
        }
        let mut challenge = Challenge {
            scheme,
            params: Vec::new(),
        };
        loop {
            p.skip(char::is_whitespace);
            let save = p.i;
            let name = p.token();
            p.skip(char::is_whitespace);
            if name.is_empty() || !p.eat('=') {
                // Not a parameter: a new challenge (or a token68, which is skipped).
                p.i = save;
                if !name.is_empty() && !challenge.params.is_empty() {
                    break;
                }
                if !name.is_empty() {
                    // token68 right after the scheme: consume it.
                    p.i += name.chars().count();
                    p.skip(|c| c == '=');
                }
                break;
            }
            p.skip(char::is_whitespace);
            let value = if p.peek() == Some('"') {
                p.quoted()
            } else {
                p.value()
            };
            challenge.params.push((name.to_ascii_lowercase(), value));
            p.skip(char::is_whitespace);
            if !p.eat(',') {
                break;
            }
        }
        out.push(challenge);
    }
}

struct Cursor<'a> {
    s: &'a [char],
    i: usize,
}

impl Cursor<'_> {
    fn done(&self) -> bool {
        self.i >= self.s.len()
    }

    fn peek(&self) -> Option<char> {
        self.s.get(self.i).copied()
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn skip(&mut self, what: impl Fn(char) -> bool) {
        while self.peek().is_some_and(&what) {
            self.i += 1;
        }
    }

    fn take_while(&mut self, what: impl Fn(char) -> bool) -> String {
        let start = self.i;
        self.skip(what);
        self.s[start..self.i].iter().collect()
    }

    /// An RFC 9110 token.
    fn token(&mut self) -> String {
        self.take_while(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c))
    }

    /// An unquoted parameter value: lenient, up to the next comma or space.
    fn value(&mut self) -> String {
        self.take_while(|c| c != ',' && c != '"' && !c.is_whitespace())
    }

    /// A quoted string, with backslash escapes.
    fn quoted(&mut self) -> String {
        let mut out = String::new();
        self.i += 1; // the opening quote
        while let Some(c) = self.peek() {
            self.i += 1;
            match c {
                '"' => return out,
                '\\' => {
                    if let Some(next) = self.peek() {
                        out.push(next);
                        self.i += 1;
                    }
                }
                c => out.push(c),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(c: &Challenge) -> Vec<(&str, &str)> {
        c.params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    #[test]
    fn parses_docker_bearer_challenge() {
        let c = parse_challenges(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:samalba/my-app:pull,push""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "Bearer");
        assert_eq!(
            params(&c[0]),
            vec![
                ("realm", "https://auth.docker.io/token"),
                ("service", "registry.docker.io"),
                ("scope", "repository:samalba/my-app:pull,push"),
            ]
        );
    }

    #[test]
    fn parses_spaces_errors_escapes_and_several_challenges() {
        let c = parse_challenges(
            r#"Basic realm="Registry Realm" , Bearer  Realm = "https://p.example/acr/oauth2/token", service=p.example,scope="repository:a:pull repository:b:pull",error="insufficient_scope",error_description="say \"hi\"""#,
        );
        assert_eq!(c.len(), 2, "{c:?}");
        assert_eq!(c[0].scheme, "Basic");
        assert_eq!(c[0].param("realm"), Some("Registry Realm"));
        assert_eq!(c[1].scheme, "Bearer");
        assert_eq!(
            c[1].param("realm"),
            Some("https://p.example/acr/oauth2/token")
        );
        assert_eq!(c[1].param("service"), Some("p.example"));
        assert_eq!(
            c[1].param("scope"),
            Some("repository:a:pull repository:b:pull")
        );
        assert_eq!(c[1].param("error"), Some("insufficient_scope"));
        assert_eq!(c[1].param("error_description"), Some(r#"say "hi""#));

        let mut headers = HeaderMap::new();
        headers.append(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Basic realm="x""#),
        );
        assert_eq!(bearer_challenge(&headers), None);
        headers.append(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"bearer realm="http://h/token""#),
        );
        assert_eq!(
            bearer_challenge(&headers).and_then(|c| c.param("realm").map(str::to_owned)),
            Some("http://h/token".to_owned())
        );
    }

    #[test]
    fn survives_garbage_challenges() {
        for junk in [
            "",
            ",,,",
            "Bearer",
            "Bearer realm",
            "Bearer realm=",
            "Bearer realm=\"unterminated",
            "Negotiate abc123==",
            "\"\"\"===,,, ;;; Bearer x=\"\\",
            "Bearer a=b,,c=d",
        ] {
            let _ = parse_challenges(junk);
        }
        let c = parse_challenges("Negotiate abc123==, Bearer realm=\"r\"");
        assert_eq!(c.len(), 2, "{c:?}");
        assert_eq!(c[1].param("realm"), Some("r"));
        let c = parse_challenges("Bearer realm=http://unquoted/token,service=s");
        assert_eq!(c[0].param("realm"), Some("http://unquoted/token"));
        assert_eq!(c[0].param("service"), Some("s"));
    }

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
        assert_eq!(content_range_start("bytes 4000-4999/5000"), Some(4000));
        assert_eq!(content_range_start("bytes */5000"), None);
    }

    #[test]
    fn backoff_grows_with_jitter_and_a_cap() {
        for attempt in 1..10 {
            let d = backoff(attempt);
            let full = BACKOFF_BASE
                .saturating_mul(1 << (attempt - 1))
                .min(BACKOFF_CAP);
            assert!(d >= full / 2 && d <= full, "{attempt}: {d:?}");
        }
        assert!(backoff(100) <= BACKOFF_CAP);
    }

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
        let d = Digest::sha256_of(b"x");
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"digest":"{d}","size":1}}]}}"#
        );
        assert_eq!(
            parse_referrers(index.as_bytes()).unwrap(),
            Some(vec![d.clone()])
        );
        assert_eq!(parse_referrers(b"404 page not found").unwrap(), None);
        assert_eq!(
            parse_referrers(br#"{"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#)
                .unwrap(),
            None
        );
        assert!(parse_referrers(br#"{"manifests":[{"digest":"sha256:zz"}]}"#).is_err());
        assert_eq!(
            expired_latest(
                br#"{"errors":[{"code":"MESSAGES_EXPIRED","message":"m","detail":{"since":3,"latest":42}}]}"#
            ),
            Some(42)
        );
        assert_eq!(expired_latest(b"gone"), None);
    }

    /// The sync engine shares one client between tasks and spawns its futures.
    #[test]
    fn client_and_its_futures_are_send() {
        fn send_sync<T: Send + Sync>(_: &T) {}
        fn send<T: Send>(_: &T) {}
        let client = ParentClient::new(ParentOptions {
            endpoint: "http://127.0.0.1:9".into(),
            credentials: Some(("u".into(), "s3cret".into())),
            ca_pem: None,
            bandwidth_limit: Some(1 << 20),
        })
        .unwrap();
        send_sync(&client);
        let d = Digest::sha256_of(b"");
        send(&client.ping());
        send(&client.catalog());
        send(&client.list_tags("a"));
        send(&client.head_manifest("a", "v1"));
        send(&client.get_manifest("a", "v1"));
        send(&client.referrers("a", &d));
        send(&client.download_blob("a", &d, Path::new("x")));
        send(&client.changes(0, 0));
        assert!(
            !format!("{client:?}").contains("s3cret"),
            "no password in Debug"
        );
    }

    #[tokio::test]
    async fn bandwidth_limit_paces_downloads() {
        // 64 KiB/s with a 16 KiB burst: 48 KiB beyond the burst take about 0.75 s.
        let limiter = Limiter::new(64 << 10).unwrap();
        let start = Instant::now();
        let mut carry = 0;
        for _ in 0..4 {
            carry = limiter.take(carry + (16 << 10)).await;
        }
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(600) && took < Duration::from_secs(3),
            "{took:?}"
        );
        // Faster than one cell per nanosecond is as good as no limit.
        assert!(Limiter::new(u64::MAX).is_none());
        assert!(Limiter::new(0).is_some());
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
