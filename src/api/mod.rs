//! The HTTP face of the registry: the OCI Distribution API under `/v2/`, the node-to-node
//! endpoints under `/acr/connected-registry/v1/` ([`acr`]), and the probes and metrics
//! (`/healthz`, `/readyz`, `/metrics`, in `ops`).
//!
//! [`Api::handle`] parses the route once and hands the request to a thin handler that validates
//! input, calls the store and shapes the reply. Every failure is an [`Error`] rendered as OCI
//! error JSON, so no request can end in a panic or a bare 500.

mod access;
pub mod acr;
mod blobs;
pub mod children;
mod feed_stream;
mod listings;
mod manifests;
mod ops;
mod quota;
pub mod response;
pub mod route;
mod token;
mod uploads;

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{FutureExt, Stream, StreamExt};
use http_body_util::BodyStream;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Method, Request, Response, StatusCode};

use crate::auth::{Authenticator, Identity};
use crate::config::{Config, Limits, Mode};
use crate::metrics::Metrics;
use crate::oci::{Error, ErrorCode, RepositoryName, Result};
use crate::status::StatusHandle;
use crate::store::Store;
pub(crate) use access::Realm;
pub use ops::route_label;
use response::{error_response, Body, Reply, DOCKER_API_VERSION};
use route::Route;

/// How [`Api::handle`] answers: a response now, or a wait that ends in one.
pub enum Answer {
    Now(Response<Body>),
    Later(Later),
}

/// What answers a request that waits ([`Answer::Later`]).
pub type Later = Pin<Box<dyn Future<Output = Response<Body>> + Send>>;

/// What the answer to a request needs to know of it once the request itself is gone.
struct RequestLine {
    started: Instant,
    method: Method,
    path: String,
    challenge: access::ChallengeContext,
}

pub struct Api {
    store: Arc<Store>,
    status: StatusHandle,
    /// Set when the server starts stopping; change-feed long-polls answer at once.
    stopping: tokio::sync::watch::Sender<bool>,
    /// `ReadOnly`: clients may pull but not push or delete. Applied live: a module's first
    /// twin configuration sets it after the server started.
    read_only: std::sync::atomic::AtomicBool,
    auth: Arc<Authenticator>,
    realm: Realm,
    children: children::ChildReports,
    /// Upload bodies in flight per token.
    uploads: quota::UploadSlots,
    /// A request body that sends nothing for this long is cut.
    body_idle_timeout: Duration,
    metrics: Metrics,
}

impl Api {
    /// Bytes the blobs take (the store's running count) and, when `statvfs` answers, bytes free
    /// on the data volume: one measurement for the status and `/metrics`.
    fn storage(&self) -> (u64, Option<u64>) {
        let available = self
            .store
            .available_bytes()
            .inspect_err(|e| tracing::warn!(error = %e, "statvfs of the data directory failed"))
            .ok();
        (self.store.used_bytes(), available)
    }

    pub fn status(&self) -> &StatusHandle {
        &self.status
    }

    /// What `/metrics` reports; the server counts each request and response body into it.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn new(store: Arc<Store>, status: StatusHandle) -> Api {
        Api {
            metrics: Metrics::new(),
            store,
            status,
            stopping: tokio::sync::watch::Sender::new(false),
            read_only: std::sync::atomic::AtomicBool::new(false),
            auth: Arc::new(Authenticator::new(&Config::default(), true)),
            realm: Realm {
                service: "connected-registry".to_owned(),
                tls: false,
            },
            body_idle_timeout: Limits::default().body_idle_timeout,
            children: children::ChildReports::default(),
            uploads: quota::UploadSlots::default(),
        }
    }

    /// Authenticate clients with `auth`; `realm` is what 401 challenges send them to.
    pub fn auth(mut self, auth: Arc<Authenticator>, service: String, tls: bool) -> Api {
        self.auth = auth;
        self.realm = Realm { service, tls };
        self
    }

    /// Apply the server's limits (the request body idle timeout).
    pub fn limits(mut self, limits: Limits) -> Api {
        self.body_idle_timeout = limits.body_idle_timeout;
        self
    }

    fn body_timeout(&self) -> BodyTimeout {
        BodyTimeout {
            idle: self.body_idle_timeout,
            stopping: self.stopping.subscribe(),
            received: self.metrics.received_bytes(),
        }
    }

    /// `ReadOnly` refuses pushes and deletes.
    pub fn mode(self, mode: Mode) -> Api {
        self.set_mode(mode);
        self
    }

    /// Change the mode of a running node (a new configuration).
    pub fn set_mode(&self, mode: Mode) {
        self.read_only
            .store(mode == Mode::ReadOnly, std::sync::atomic::Ordering::Relaxed);
    }

    /// The mode requests are answered in now.
    pub fn current_mode(&self) -> Mode {
        if self.read_only.load(std::sync::atomic::Ordering::Relaxed) {
            Mode::ReadOnly
        } else {
            Mode::ReadWrite
        }
    }

    /// Answer one request. Never fails: errors become OCI error responses. A request that
    /// waits (a change-feed long-poll) is answered [`Answer::Later`], by a future that holds
    /// only what the wait needs: the caller drops this one, and the request's state with it,
    /// before it runs that.
    pub async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Answer {
        let request = RequestLine {
            started: Instant::now(),
            method: req.method().clone(),
            path: req.uri().path().to_owned(),
            challenge: access::ChallengeContext::capture(req.headers(), req.uri()),
        };
        let mut result = self.dispatch(req).await;
        match result.as_mut().ok().and_then(Reply::take_wait) {
            Some(wait) => Answer::Later(Box::pin(async move {
                let result = wait.await;
                self.respond(&request, result)
            })),
            None => Answer::Now(self.respond(&request, result)),
        }
    }

    /// The response to `request`: its reply, or its error as OCI error JSON (with a challenge
    /// when it is a 401).
    fn respond(&self, request: &RequestLine, result: Result<Reply>) -> Response<Body> {
        let RequestLine {
            started,
            method,
            path,
            challenge,
        } = request;
        let mut response = match result {
            Ok(reply) => reply.build(),
            Err(err) => {
                match err.code() {
                    ErrorCode::Unknown | ErrorCode::InsufficientStorage => {
                        tracing::error!(%method, %path, error = %err, "request failed")
                    }
                    _ => tracing::debug!(%method, %path, error = %err, "request refused"),
                }
                let mut response = error_response(&err);
                if err.code() == ErrorCode::Unauthorized {
                    let value = if token::is_token_path(path) {
                        "Basic realm=\"connected-registry\"".to_owned()
                    } else {
                        challenge.challenge(&self.realm, path, method)
                    };
                    if let Ok(value) = HeaderValue::from_str(&value) {
                        response
                            .headers_mut()
                            .insert(hyper::header::WWW_AUTHENTICATE, value);
                    }
                }
                response
            }
        };
        response
            .headers_mut()
            .insert(DOCKER_API_VERSION, HeaderValue::from_static("registry/2.0"));
        tracing::debug!(
            %method,
            %path,
            status = response.status().as_u16(),
            elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
            "request"
        );
        response
    }

    /// Route a request. Every handler that awaits runs in a box of its own, so the future of a
    /// request is only as large as the handler it runs. A change-feed long-poll (a root holds
    /// one per child) does not wait in here at all: it answers with a [`Reply::after`].
    async fn dispatch(&self, req: Request<Incoming>) -> Result<Reply> {
        let path = req.uri().path().to_owned();
        let method = req.method().clone();
        let source = req
            .extensions()
            .get::<ClientAddr>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.0.ip());
        // Probes and scrapers: before identification, as the probes are open.
        if let Some(route) = ops::OpsRoute::parse(&path) {
            return Box::pin(ops::handle(self, route, req, source)).await;
        }
        if token::is_token_path(&path) {
            return Box::pin(token::handle(self, req, source)).await;
        }
        let identity = Box::pin(self.identify(&req, source)).await?;
        if let Some(route) = acr::AcrRoute::parse(&path) {
            return Box::pin(acr::handle(self, &identity, route, req)).await;
        }
        let route = Route::parse(&path);
        access::check(&identity, &access::Need::of(&route, &method))?;
        if self.current_mode() == Mode::ReadOnly && route.name().is_some() && !is_read(&method) {
            return Err(Error::new(
                ErrorCode::Denied,
                "this node is in ReadOnly mode: pushes and deletes are refused (push to its parent instead)",
            ));
        }
        // Upload bodies in flight are limited per token.
        let _upload_slot = match (&route, &method, identity.name()) {
            (Route::UploadStart { .. }, &Method::POST, Some(name))
            | (Route::Upload { .. }, &Method::PATCH | &Method::PUT, Some(name)) => {
                Some(self.uploads.take(&format!("token {name:?}"))?)
            }
            _ => None,
        };
        let store = &self.store;
        match (route, &method) {
            (Route::Base, &Method::GET | &Method::HEAD) => {
                Ok(Reply::new(StatusCode::OK).bytes("application/json", "{}"))
            }
            (Route::Catalog, &Method::GET) => {
                let identity = identity.clone();
                let visible = Arc::new(move |name: &str| {
                    identity.holds(name, crate::config::RepositoryAction::MetadataRead)
                });
                listings::catalog(store, &req, visible)
            }
            (Route::Tags { name }, &Method::GET) => listings::tags(store, &repo(name)?, &req),
            (Route::Referrers { name, digest }, &Method::GET) => {
                listings::referrers(store, &repo(name)?, digest, &req)
            }
            (Route::Manifest { name, reference }, m) if is_read(m) => {
                manifests::get(store, &repo(name)?, reference, m == Method::HEAD)
            }
            (Route::Manifest { name, reference }, &Method::PUT) => {
                Box::pin(manifests::put(
                    store,
                    &repo(name)?,
                    reference,
                    req,
                    self.body_timeout(),
                ))
                .await
            }
            (Route::Manifest { name, reference }, &Method::DELETE) => {
                Box::pin(manifests::delete(store, &repo(name)?, reference)).await
            }
            (Route::Blob { name, digest }, m) if is_read(m) => {
                blobs::get(store, &repo(name)?, digest, &req, m == Method::HEAD)
            }
            (Route::Blob { name, digest }, &Method::DELETE) => {
                Box::pin(blobs::delete(store, &repo(name)?, digest)).await
            }
            (Route::UploadStart { name }, &Method::POST) => {
                // A blob is mounted only from a repository the client may read.
                let may_read = |from: &str| {
                    access::check(
                        &identity,
                        &access::Need::Repository(
                            from,
                            crate::config::RepositoryAction::ContentRead,
                        ),
                    )
                    .is_ok()
                };
                Box::pin(uploads::start(
                    store,
                    &repo(name)?,
                    req,
                    self.body_timeout(),
                    &may_read,
                ))
                .await
            }
            (Route::Upload { name, id }, &Method::GET) => uploads::status(store, &repo(name)?, id),
            (Route::Upload { name, id }, &Method::PATCH) => {
                Box::pin(uploads::patch(
                    store,
                    &repo(name)?,
                    id,
                    req,
                    self.body_timeout(),
                ))
                .await
            }
            (Route::Upload { name, id }, &Method::PUT) => {
                Box::pin(uploads::finish(
                    store,
                    &repo(name)?,
                    id,
                    req,
                    self.body_timeout(),
                ))
                .await
            }
            (Route::Upload { name, id }, &Method::DELETE) => {
                Box::pin(uploads::cancel(store, &repo(name)?, id)).await
            }
            (Route::NotFound, _) => Err(Error::new(
                ErrorCode::NotFound,
                format!("no such endpoint: {}", short(&path)),
            )),
            (route, m) => {
                // A bad name is the more useful answer than a bad method.
                route.name().map(repo).transpose()?;
                Err(Error::new(
                    ErrorCode::MethodNotAllowed,
                    format!("method {m} is not supported on {}", short(&path)),
                ))
            }
        }
    }
}

/// A JSON request body of at most `max` bytes, parsed as `T` (400 naming the problem if not).
pub(crate) async fn read_json<T: serde::de::DeserializeOwned>(
    req: Request<Incoming>,
    api: &Api,
    max: usize,
) -> Result<T> {
    let bytes = read_bounded(req, api, max).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::new(ErrorCode::BadRequest, format!("invalid JSON body: {e}")))
}

/// A whole request body of at most `max` bytes (413 beyond).
pub(crate) async fn read_bounded(req: Request<Incoming>, api: &Api, max: usize) -> Result<Vec<u8>> {
    let mut body = body_stream(req, api.body_timeout());
    let mut bytes = Vec::new();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| Error::new(ErrorCode::BadRequest, e.to_string()))?;
        if bytes.len() + chunk.len() > max {
            return Err(Error::new(
                ErrorCode::TooLarge,
                format!("the request body is larger than {max} bytes"),
            ));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// The client's address, put in each request's extensions by the server.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// The connection's place under the server's connection cap, put in each request's extensions
/// by the server: a connection taken over by a change-feed stream keeps it while it streams.
#[derive(Debug, Clone)]
pub struct ConnectionSlot(pub Arc<tokio::sync::OwnedSemaphorePermit>);

impl ConnectionSlot {
    /// A number this connection alone has while it is open (its slot's address).
    pub fn seat(&self) -> u64 {
        Arc::as_ptr(&self.0) as u64
    }
}

impl Api {
    /// Who sent `req` (anonymous without an `Authorization` header).
    async fn identify(&self, req: &Request<Incoming>, source: IpAddr) -> Result<Identity> {
        let authorization = header(req, hyper::header::AUTHORIZATION)?;
        self.auth.identify(authorization, source).await
    }
}

fn is_read(m: &Method) -> bool {
    m == Method::GET || m == Method::HEAD
}

fn repo(name: &str) -> Result<RepositoryName> {
    name.parse()
}

fn short(s: &str) -> &str {
    match s.char_indices().nth(200) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// The query string's key/value pairs.
pub(crate) fn query<B>(req: &Request<B>) -> Vec<(String, String)> {
    req.uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default()
}

pub(crate) fn query_value<'q>(query: &'q [(String, String)], key: &str) -> Option<&'q str> {
    query
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

pub(crate) fn header<B>(req: &Request<B>, name: hyper::header::HeaderName) -> Result<Option<&str>> {
    match req.headers().get(&name) {
        None => Ok(None),
        Some(v) => v.to_str().map(Some).map_err(|_| {
            Error::new(
                ErrorCode::BadRequest,
                format!("header {name} is not valid text"),
            )
        }),
    }
}

/// `Content-Length` as a number, if sent.
pub(crate) fn content_length<B>(req: &Request<B>) -> Result<Option<u64>> {
    header(req, hyper::header::CONTENT_LENGTH)?
        .map(|v| {
            v.trim().parse::<u64>().map_err(|_| {
                Error::new(
                    ErrorCode::BadRequest,
                    format!("invalid Content-Length {v:?}"),
                )
            })
        })
        .transpose()
}

/// While the server stops, a body that has sent nothing for this long is cut even if its idle
/// timeout is longer, so a stalled client does not hold the stop for its whole drain.
const STOPPING_BODY_GRACE: Duration = Duration::from_secs(5);

/// How long a request body may send nothing before it is cut (and where the bytes it sends are
/// counted for `/metrics`).
pub(crate) struct BodyTimeout {
    idle: Duration,
    /// Set when the server starts stopping.
    stopping: tokio::sync::watch::Receiver<bool>,
    received: prometheus_client::metrics::counter::Counter,
}

impl BodyTimeout {
    /// Resolves when a body waited on from now has sent nothing for too long: its idle timeout,
    /// or [`STOPPING_BODY_GRACE`] once the server is stopping. Returns the error to end it with.
    async fn expired(&mut self) -> io::Error {
        let started = tokio::time::Instant::now();
        let deadline = started + self.idle;
        let stopping = *self.stopping.borrow();
        if !stopping {
            let stop = self.stopping.wait_for(|s| *s).map(|r| r.is_ok());
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {}
                true = stop => {}
            }
        }
        let now = tokio::time::Instant::now();
        if now < deadline {
            tokio::time::sleep_until(deadline.min(started + STOPPING_BODY_GRACE)).await;
        }
        let waited = started.elapsed().as_secs();
        let why = if tokio::time::Instant::now() < deadline {
            " while the server was stopping"
        } else {
            ""
        };
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the request body sent nothing for {waited} s{why}"),
        )
    }
}

/// The request body as a stream of data chunks for the store. A body that sends nothing for
/// its idle timeout ends with a [`io::ErrorKind::TimedOut`] error (what arrived before stays
/// with the caller), so a stalled client cannot hold its request, its upload session or a stop.
pub(crate) fn body_stream(
    req: Request<Incoming>,
    timeout: BodyTimeout,
) -> impl Stream<Item = io::Result<Bytes>> + Unpin + Send {
    let body = BodyStream::new(req.into_body());
    Box::pin(futures_util::stream::unfold(
        Some((body, timeout)),
        |state| async move {
            let (mut body, mut timeout) = state?;
            loop {
                // Biased: while data flows the timer is never even polled (nor registered).
                let frame = tokio::select! {
                    biased;
                    frame = body.next() => frame?,
                    e = timeout.expired() => {
                        tracing::debug!(error = %e, "request body cut");
                        return Some((Err(e), None));
                    }
                };
                match frame {
                    Ok(frame) => {
                        if let Ok(data) = frame.into_data() {
                            timeout.received.inc_by(data.len() as u64);
                            return Some((Ok(data), Some((body, timeout))));
                        }
                    }
                    Err(e) => return Some((Err(io::Error::other(e)), None)),
                }
            }
        },
    ))
}
