//! The node-to-node endpoints under `/acr/connected-registry/v1/` (DESIGN.md, "Node-to-node
//! API"): the long-poll change feed children follow, and this node's own status.
//!
//! Only `/v2/…` and `/acr/…` pass the IoT Edge API proxy, which is why these live here and not
//! on a separate port. A waiting long-poll holds no thread (it awaits the store's change watch)
//! and returns as soon as the server starts stopping, so it never delays a graceful shutdown.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use serde::Serialize;

use super::access::{check, Need};
use super::children;
use super::response::Reply;
use super::{query_value, Api};
use crate::auth::{Identity, Principal};
use crate::config::{GatewayAction, RepositoryAction};
use crate::oci::{Error, ErrorCode, Result};
use crate::store::ChangeEvent;

pub const PREFIX: &str = "/acr/connected-registry/v1/";

/// The longest a change-feed request waits for an event.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// Events per change-feed page (a page also stops at the store's byte bound,
/// `CHANGES_PAGE_BYTES`, 1 MiB).
pub const PAGE_LIMIT: usize = 1000;

/// The message TTLs (seconds) a child may give: 1 s up to the 90 days of the longest
/// `messageTtl` a configuration accepts.
pub const TTL_RANGE: std::ops::RangeInclusive<u64> = 1..=90 * 24 * 60 * 60;

/// How long a measured storage usage is reused before the blob directory is walked again.
const USAGE_MAX_AGE: Duration = Duration::from_secs(60);

/// The endpoints this module serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AcrRoute<'a> {
    Changes,
    Status,
    /// `GET registries`: the children.
    Registries,
    Activate(&'a str),
    Deactivate(&'a str),
    ChildStatus(&'a str),
}

impl<'a> AcrRoute<'a> {
    /// The route for `path`, or `None` when the path is not one of these endpoints (other
    /// `/acr/…` endpoints are routed elsewhere).
    pub(crate) fn parse(path: &'a str) -> Option<AcrRoute<'a>> {
        let rest = path.strip_prefix(PREFIX)?.trim_end_matches('/');
        match rest {
            "changes" => return Some(AcrRoute::Changes),
            "status" => return Some(AcrRoute::Status),
            "registries" => return Some(AcrRoute::Registries),
            _ => {}
        }
        let (name, action) = rest.strip_prefix("registries/")?.split_once('/')?;
        match action {
            "activate" => Some(AcrRoute::Activate(name)),
            "deactivate" => Some(AcrRoute::Deactivate(name)),
            "status" => Some(AcrRoute::ChildStatus(name)),
            _ => None,
        }
    }

    /// The one method each endpoint answers.
    fn method(self) -> Method {
        match self {
            AcrRoute::Changes | AcrRoute::Status | AcrRoute::Registries => Method::GET,
            AcrRoute::Activate(_) | AcrRoute::Deactivate(_) => Method::POST,
            AcrRoute::ChildStatus(_) => Method::PUT,
        }
    }
}

/// Answer a request for one of these endpoints.
pub(super) async fn handle(
    api: &Api,
    identity: &Identity,
    route: AcrRoute<'_>,
    req: Request<Incoming>,
) -> Result<Reply> {
    let method = req.method();
    if *method != route.method() {
        return Err(Error::new(
            ErrorCode::MethodNotAllowed,
            format!("method {method} is not supported on {}", req.uri().path()),
        ));
    }
    match route {
        AcrRoute::Changes => {
            // A child reads the feed with its sync token's gateway message/read; it sees
            // only events of repositories the token may read.
            let child = match &identity.principal {
                Principal::Token(t) => t.gateways(GatewayAction::MessageRead).next().unwrap_or("*"),
                Principal::Anonymous(_) => "*",
            };
            check(identity, &Need::Gateway(child, GatewayAction::MessageRead))?;
            changes(api, identity, &super::query(&req)).await
        }
        AcrRoute::Status => {
            check(identity, &Need::Authenticated)?;
            status(api).await
        }
        AcrRoute::Registries => {
            check(identity, &Need::Authenticated)?;
            children::list(api, identity)
        }
        AcrRoute::Activate(name) => children::activate(api, identity, name, req).await,
        AcrRoute::Deactivate(name) => children::deactivate(api, identity, name, req).await,
        AcrRoute::ChildStatus(name) => children::put_status(api, identity, name, req).await,
    }
}

#[derive(Serialize)]
struct ChangesPage {
    events: Vec<ChangeEvent>,
    next: u64,
}

/// `GET …/changes?since=SEQ&wait=SECONDS&ttl=SECONDS`. Every number is checked against its
/// range before it is used: `since` is any cursor, `wait` is capped at [`MAX_WAIT`], `ttl` must
/// lie in [`TTL_RANGE`].
async fn changes(api: &Api, identity: &Identity, q: &[(String, String)]) -> Result<Reply> {
    let since = number(q, "since", 0..=u64::MAX)?.unwrap_or(0);
    let wait = number(q, "wait", 0..=u64::MAX)?.unwrap_or(0);
    let wait = Duration::from_secs(wait.min(MAX_WAIT.as_secs()));
    let ttl = number(q, "ttl", TTL_RANGE)?;
    let mut stopping = api.stopping.subscribe();
    let events = tokio::select! {
        page = api.store.wait_for_changes(since, wait, PAGE_LIMIT) => page?,
        // The server is stopping: answer now with what there is (nothing new).
        _ = stopping.wait_for(|stop| *stop) => Vec::new(),
    };
    // A child that has missed events older than its message TTL must reconcile in full, as
    // if the parent had kept events only that long for it.
    if let (Some(ttl), Some(first)) = (ttl, events.first()) {
        // In range, so neither conversion nor subtraction can overflow.
        let ttl_delta = chrono::Duration::seconds(ttl as i64);
        if chrono::Utc::now()
            .checked_sub_signed(ttl_delta)
            .is_some_and(|oldest| first.time < oldest)
        {
            return Err(Error::new(
                ErrorCode::MessagesExpired,
                format!(
                    "change events after {since} are older than the child's message TTL ({ttl}s); reconcile in full"
                ),
            )
            .with_detail(serde_json::json!({
                "since": since,
                "latest": *api.store.watch_changes().borrow(),
            })));
        }
    }
    let next = events.last().map_or(since, |e| e.seq);
    let events = events
        .into_iter()
        .filter(|e| identity.holds(&e.repository, RepositoryAction::ContentRead))
        .collect();
    Ok(Reply::new(StatusCode::OK).json(&ChangesPage { events, next }))
}

/// `GET …/status`: the status model, with storage measured now (usage at most a minute old).
async fn status(api: &Api) -> Result<Reply> {
    let (used, available) = api.storage.measure().await;
    api.status.update(|s| {
        if let Some(used) = used {
            s.storage.used_bytes = used;
        }
        if let Some(available) = available {
            s.storage.available_bytes = available;
        }
    });
    Ok(Reply::new(StatusCode::OK).json(&api.status.snapshot()))
}

/// The integer query parameter `key`, if given, refused with a 400 naming it and its range
/// unless it is an integer within `range`.
pub(crate) fn number(
    q: &[(String, String)],
    key: &str,
    range: std::ops::RangeInclusive<u64>,
) -> Result<Option<u64>> {
    query_value(q, key)
        .map(|v| match v.parse::<u64>() {
            Ok(n) if range.contains(&n) => Ok(n),
            _ => Err(Error::new(
                ErrorCode::BadRequest,
                format!(
                    "{key}={v:?} must be an integer from {} to {}",
                    range.start(),
                    range.end()
                ),
            )),
        })
        .transpose()
}

impl Api {
    /// Make every waiting (and future) change-feed long-poll answer at once; called when the
    /// server starts stopping so graceful shutdown is not held up by idle children.
    pub fn stop_long_polls(&self) {
        self.stopping.send_replace(true);
    }
}

/// Storage used by blobs (walked at most once a minute) and free space for the data directory.
pub(super) struct StorageUsage {
    data_dir: PathBuf,
    used: tokio::sync::Mutex<Option<(Instant, u64)>>,
}

impl StorageUsage {
    pub(super) fn new(data_dir: &Path) -> StorageUsage {
        StorageUsage {
            data_dir: data_dir.to_owned(),
            used: tokio::sync::Mutex::new(None),
        }
    }

    /// `(used, available)` bytes; a part that cannot be measured is `None` (and logged).
    async fn measure(&self) -> (Option<u64>, Option<u64>) {
        let available = match available_bytes(&self.data_dir) {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::warn!(error = %e, dir = %self.data_dir.display(), "statvfs failed");
                None
            }
        };
        let mut cached = self.used.lock().await;
        if let Some((at, used)) = *cached {
            if at.elapsed() < USAGE_MAX_AGE {
                return (Some(used), available);
            }
        }
        let blobs = self.data_dir.join("blobs");
        let used = match tokio::task::spawn_blocking(move || dir_size(&blobs)).await {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "measuring blob storage failed");
                return (cached.map(|(_, u)| u), available);
            }
            Err(e) => {
                tracing::warn!(error = %e, "measuring blob storage panicked");
                return (cached.map(|(_, u)| u), available);
            }
        };
        *cached = Some((Instant::now(), used));
        (Some(used), available)
    }
}

/// Bytes available to unprivileged users on the filesystem holding `dir`.
fn available_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("data directory path contains NUL"))?;
    // SAFETY: `path` is a valid NUL-terminated string and `stat` a properly sized out-parameter.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(path.as_ptr(), &mut stat) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    #[allow(clippy::unnecessary_cast)] // the field types differ between platforms
    Ok(stat.f_bavail as u64 * stat.f_frsize as u64)
}

/// Total size of the files under `dir` (0 if it does not exist yet).
fn dir_size(dir: &Path) -> std::io::Result<u64> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut total = 0;
    for entry in entries {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            total += dir_size(&entry.path())?;
        } else if kind.is_file() {
            total += entry.metadata()?.len();
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            AcrRoute::parse("/acr/connected-registry/v1/changes"),
            Some(AcrRoute::Changes)
        );
        assert_eq!(
            AcrRoute::parse("/acr/connected-registry/v1/status/"),
            Some(AcrRoute::Status)
        );
        assert_eq!(
            AcrRoute::parse("/acr/connected-registry/v1/registries"),
            Some(AcrRoute::Registries)
        );
        assert_eq!(
            AcrRoute::parse("/acr/connected-registry/v1/registries/factorya/activate"),
            Some(AcrRoute::Activate("factorya"))
        );
        assert_eq!(
            AcrRoute::parse("/acr/connected-registry/v1/registries/factorya/status"),
            Some(AcrRoute::ChildStatus("factorya"))
        );
        assert_eq!(
            AcrRoute::parse("/acr/connected-registry/v1/registries/a/b/c"),
            None
        );
        assert_eq!(AcrRoute::parse("/acr/oauth2/token"), None);
        assert_eq!(AcrRoute::parse("/v2/changes"), None);
    }

    #[test]
    fn sizes_are_measured() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(dir_size(&dir.path().join("missing")).unwrap(), 0);
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/x"), [0u8; 10]).unwrap();
        std::fs::write(dir.path().join("a/b/y"), [0u8; 5]).unwrap();
        assert_eq!(dir_size(dir.path()).unwrap(), 15);
        assert!(available_bytes(dir.path()).unwrap() > 0);
    }
}
