//! The parent client: every request a node makes to its parent registry (any OCI registry, or a
//! connected-registry node) goes through here.
//!
//! It exists so that the sync engine can think in terms of "list the tags", "fetch this manifest",
//! "download this blob" and never about HTTP. This module owns the one connection pool, the
//! request loop (timeouts, retries with backoff) and the bounds every answer is read within;
//! [`auth`] holds the sync-token credentials (Basic and the docker token flow), [`manifests`]
//! the digest-checked manifest requests, [`listing`] the paginated listings and their caps,
//! [`download`] resumable, size-bounded blob downloads and the shared bandwidth limit, [`body`]
//! the size and minimum-rate bounds on reading any answer, [`feed`] the change feed. Whatever
//! the parent sends, the answer is either verified data or a [`SyncError`] whose
//! [`code`](SyncError::code) goes into the status model: nothing here panics on bad parent input.

mod auth;
mod body;
mod download;
mod feed;
mod gateway;
mod listing;
mod manifests;
mod pace;
mod upload;

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rand::Rng;
use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, Response, StatusCode, Url};

use crate::oci::{Digest, Reference, RepositoryName};
use auth::{Auth, CachedToken};
use body::{read_body, read_whole, BodyError};
use pace::Limiter;

#[doc(hidden)]
pub(crate) use auth::parse_challenges;
pub use body::{MIN_TRANSFER_RATE, RATE_WINDOW};
pub use feed::{ChangesPage, FeedAnswer, FeedFollower, FeedStream};
pub use gateway::GatewayAnswer;
pub use listing::{MAX_LIST_BYTES, MAX_LIST_ENTRIES, MAX_LIST_PAGES};
use upload::FileBody;
pub use upload::{Deleted, UploadSession};

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
    /// The parent answered, but this transfer failed: the body was cut or too slow, after
    /// retries. Only the tag (or blob) at hand fails.
    #[error("transfer from the parent failed: {0}")]
    Transfer(String),
    /// The parent answered 5xx (or 429) to every attempt of one request.
    #[error("the parent failed the request: {0}")]
    ServerError(String),
    /// A blob's length differs from its descriptor's `size`.
    #[error("size mismatch: {0}")]
    SizeMismatch(String),
    /// Content refused by a limit of this node (nesting depth, listing caps, answer sizes).
    #[error("refused: {0}")]
    Refused(String),
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
            SyncError::Transfer(_) => "TransferFailed",
            SyncError::ServerError(_) => "ParentError",
            SyncError::SizeMismatch(_) => "SizeMismatch",
            SyncError::Refused(_) => "Refused",
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
    /// Its sha256 when fetched by tag, else the digest asked for.
    pub digest: Digest,
    /// The digest the parent names it by: the one asked for, or the (verified)
    /// `Docker-Content-Digest` of a fetch by tag, which may be a sha512.
    pub named: Digest,
    pub media_type: String,
    pub bytes: Bytes,
}

/// Time allowed to open a TCP (and TLS) connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// TCP keepalive on every connection to the parent: after this long without traffic a probe
/// goes out, then one every [`KEEPALIVE_INTERVAL`]; [`KEEPALIVE_PROBES`] unanswered ones end the
/// connection. A waiting long-poll sends nothing, so without probes a link cut silently (no
/// reset: a radio gone, a cable pulled upstream) is noticed only when the poll times out
/// (its wait plus a margin: 30–60 s later); with them, within ~25 s. Tiny packets, answered by
/// the parent's kernel.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(10);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_PROBES: u32 = 3;
/// Longest wait for the response headers. A parent that says nothing for this long is treated
/// as gone.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts per request (the first one included) on connection errors, timeouts, 5xx and 429.
const ATTEMPTS: u32 = 4;
/// First retry delay; doubled per attempt (with jitter) up to [`BACKOFF_CAP`].
const BACKOFF_BASE: Duration = Duration::from_millis(200);
/// Longest delay between two attempts (also the cap on a parent's `Retry-After`).
const BACKOFF_CAP: Duration = Duration::from_secs(5);
/// Redirects followed per request.
const MAX_REDIRECTS: usize = 5;
/// Largest manifest accepted (distribution's own limit is 4 MiB too).
const MAX_MANIFEST_BYTES: usize = 4 << 20;
/// Largest JSON document accepted outside listings (a feed page, an error body).
const MAX_JSON_BYTES: usize = 16 << 20;
/// Entries asked for per catalog / tags page.
const PAGE_SIZE: u32 = 1000;
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
    /// The same client held to HTTP/1.1, for requests that switch protocols (the change-feed
    /// stream): over TLS `http` negotiates HTTP/2, where a request cannot upgrade.
    http1: reqwest::Client,
    credentials: Option<(String, String)>,
    /// Bearer tokens by scope (`repository:<name>:pull`, `registry:catalog:*`, …).
    tokens: Mutex<HashMap<String, CachedToken>>,
    limiter: Option<Arc<Limiter>>,
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

/// One request, kept whole so it can be sent again (retries, authentication, redirects).
#[derive(Clone)]
struct Req {
    method: Method,
    url: Url,
    /// Bearer-token cache key for this request.
    scope: String,
    headers: HeaderMap,
    /// How long to wait for the response headers.
    wait: Duration,
    /// A small body sent whole with each attempt (node-to-node JSON, a manifest); blobs
    /// never go here.
    body: Option<Bytes>,
    /// A blob body: a piece of a file, streamed afresh for each attempt.
    file_body: Option<FileBody>,
    /// Send over HTTP/1.1 even where HTTP/2 is offered (an `Upgrade` request).
    http1_only: bool,
}

impl Req {
    fn new(method: Method, url: Url, scope: impl Into<String>) -> Req {
        Req {
            method,
            url,
            scope: scope.into(),
            headers: HeaderMap::new(),
            wait: IDLE_TIMEOUT,
            body: None,
            file_body: None,
            http1_only: false,
        }
    }

    /// Send `value` as the JSON body.
    fn json(mut self, value: &impl serde::Serialize) -> Req {
        let bytes = serde_json::to_vec(value).expect("plain values serialise");
        self.body = Some(Bytes::from(bytes));
        self.header(header::CONTENT_TYPE, "application/json")
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

/// The HTTP client for one parent: its CA, timeouts, keepalive probes; `http1_only` for
/// requests that switch protocols.
fn http_client(options: &ParentOptions, http1_only: bool) -> Result<reqwest::Client, SyncError> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_keepalive(KEEPALIVE_IDLE)
        .tcp_keepalive_interval(KEEPALIVE_INTERVAL)
        .tcp_keepalive_retries(KEEPALIVE_PROBES)
        .pool_idle_timeout(Duration::from_secs(90))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("connected-registry/", env!("CARGO_PKG_VERSION")));
    if http1_only {
        builder = builder.http1_only();
    }
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
    builder
        .build()
        .map_err(|e| SyncError::Protocol(format!("cannot build the HTTP client: {}", chain(&e))))
}

/// A body that could not be read whole: `Ok(why)` when another attempt may read it (the
/// connection broke), else the error to give up with.
fn transient_body_error(req: &Req, e: BodyError) -> Result<String, SyncError> {
    match e {
        BodyError::TooLarge(limit) => Err(SyncError::Refused(format!(
            "{}: the answer is larger than {limit} bytes",
            req.describe()
        ))),
        BodyError::TooSlow(why) => Err(SyncError::Transfer(format!("{}: {why}", req.describe()))),
        BodyError::Transient(why) => Ok(why),
    }
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
        let http = http_client(&options, false)?;
        let http1 = http_client(&options, true)?;
        Ok(ParentClient {
            base,
            origin,
            http,
            http1,
            credentials: options.credentials,
            tokens: Mutex::new(HashMap::new()),
            limiter: options.bandwidth_limit.and_then(Limiter::new).map(Arc::new),
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

    // ---- private helpers ----

    /// The endpoint plus `path_and_query`.
    fn url(&self, path_and_query: &str) -> Result<Url, SyncError> {
        Url::parse(&format!("{}{path_and_query}", self.base)).map_err(|e| {
            SyncError::Protocol(format!("cannot build a URL for {path_and_query}: {e}"))
        })
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
                Err(e) => {
                    let why = transient_body_error(req, e)?;
                    if attempt >= ATTEMPTS {
                        return Err(SyncError::Transfer(format!(
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

    /// One request, tried again with backoff and jitter on connection errors, timeouts, 5xx
    /// and 429. Other statuses are the caller's business.
    async fn send_retrying(&self, req: &Req, auth: Auth<'_>) -> Result<Response, SyncError> {
        // Redirects are followed here, not by the HTTP client, so that a failure is reported
        // with the URL where it happened and the sync token never leaves the parent's origin.
        let mut current = std::borrow::Cow::Borrowed(req);
        let mut seen = vec![req.url.clone()];
        loop {
            // The request's own URL (the parent, or the realm it named) gets the credentials;
            // a redirect to another origin does not.
            let same_origin = current.url.origin() == req.url.origin();
            let auth = if same_origin { auth } else { Auth::Anonymous };
            let resp = self.send_one(&current, auth, same_origin).await?;
            let location = resp
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let (true, Some(location)) = (resp.status().is_redirection(), location) else {
                return Ok(resp);
            };
            let here = describe_url(&current.method, &current.url);
            let target = current.url.join(&location).map_err(|e| {
                SyncError::Protocol(format!("{here}: invalid redirect Location: {e}"))
            })?;
            let there = describe_url(&current.method, &target);
            if !matches!(target.scheme(), "http" | "https") {
                return Err(SyncError::Protocol(format!(
                    "{there}: redirect to an unsupported scheme"
                )));
            }
            if seen.contains(&target) || seen.len() > MAX_REDIRECTS {
                return Err(SyncError::Protocol(format!(
                    "{there}: too many redirects (or a redirect loop)"
                )));
            }
            seen.push(target.clone());
            let mut next = current.into_owned();
            next.url = target;
            if resp.status() == StatusCode::SEE_OTHER && next.method != Method::HEAD {
                next.method = Method::GET;
                next.body = None;
                next.file_body = None;
            }
            current = std::borrow::Cow::Owned(next);
        }
    }

    /// One request (no redirects followed), tried again with backoff and jitter on connection
    /// errors, timeouts, 5xx and 429. `at_parent`: the URL is on the parent's origin (else a
    /// failure is the transfer's, not the parent's).
    async fn send_one(
        &self,
        req: &Req,
        auth: Auth<'_>,
        at_parent: bool,
    ) -> Result<Response, SyncError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let client = if req.http1_only {
                &self.http1
            } else {
                &self.http
            };
            let mut builder = client
                .request(req.method.clone(), req.url.clone())
                .headers(req.headers.clone());
            if let Some(body) = &req.body {
                builder = builder.body(body.clone());
            }
            let mut upload = None;
            if let Some(file) = &req.file_body {
                let sent = upload::Sent::default();
                let body = upload::file_body(file, self.limiter.clone(), sent.clone()).await?;
                builder = builder
                    .header(header::CONTENT_LENGTH, file.len.to_string())
                    .body(body);
                upload = Some((sent, file.len));
            }
            builder = match auth {
                Auth::Bearer(token) => builder.bearer_auth(token),
                Auth::Basic => match &self.credentials {
                    Some((user, password)) => builder.basic_auth(user, Some(password)),
                    None => builder,
                },
                Auth::Anonymous => builder,
            };
            self.requests.fetch_add(1, Ordering::Relaxed);
            // A blob body is judged by its progress, not by one deadline for the whole request
            // (a big blob on a slow link takes longer than any fixed wait).
            let answer = match &upload {
                None => tokio::time::timeout(req.wait, builder.send()).await.ok(),
                Some((sent, size)) => {
                    let min_rate = self.min_rate();
                    upload::answer_to_upload(builder.send(), sent, *size, req.wait, min_rate).await
                }
            };
            let (why, retry_after, answered) = match answer {
                Some(Ok(resp)) => {
                    let status = resp.status();
                    if !(status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS) {
                        return Ok(resp);
                    }
                    (
                        format!("answered {status}"),
                        retry_after(resp.headers()),
                        true,
                    )
                }
                Some(Err(e)) if e.is_builder() => {
                    return Err(SyncError::Protocol(format!(
                        "{}: {}",
                        describe_url(&req.method, &req.url),
                        chain(&e.without_url())
                    )));
                }
                // Without the URL: a redirect target's query may carry a signature, and
                // the request is named (without it) in the message anyway.
                Some(Err(e)) => (chain(&e.without_url()), None, false),
                None if upload.is_some() => (
                    format!(
                        "the upload stalled, or no answer within {}s of its end",
                        req.wait.as_secs()
                    ),
                    None,
                    false,
                ),
                None => (
                    format!("no answer within {}s", req.wait.as_secs()),
                    None,
                    false,
                ),
            };
            if attempt >= ATTEMPTS {
                let what = if at_parent {
                    format!("{} {}", self.base, req.describe())
                } else {
                    describe_url(&req.method, &req.url)
                };
                let message = format!("{what}: {why} (after {attempt} attempts)");
                return Err(if !at_parent {
                    // The parent answered (with a redirect); where it sent us did not.
                    SyncError::Transfer(message)
                } else if answered {
                    SyncError::ServerError(message)
                } else {
                    SyncError::ParentUnreachable(message)
                });
            }
            tracing::debug!(request = %req.describe(), %why, attempt, "retrying");
            tokio::time::sleep(retry_after.unwrap_or_else(|| backoff(attempt))).await;
        }
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

/// `GET scheme://host:port/path` for a URL the parent redirected to: no credentials, no query
/// (a signed storage URL carries its signature there), no fragment.
fn describe_url(method: &Method, url: &Url) -> String {
    let mut url = url.clone();
    url.set_query(None);
    url.set_fragment(None);
    let _ = url.set_username("");
    let _ = url.set_password(None);
    format!("{method} {url}")
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn redirect_targets_are_named_without_secrets() {
        let url = Url::parse("https://u:pw@storage.example:8443/b/blob?X-Amz-Signature=s3cret#f")
            .unwrap();
        assert_eq!(
            describe_url(&Method::GET, &url),
            "GET https://storage.example:8443/b/blob"
        );
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
}
