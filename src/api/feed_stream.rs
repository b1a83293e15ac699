//! The change feed as a stream: `GET …/changes?since=SEQ&heartbeat=SECONDS` with
//! `Connection: Upgrade` and `Upgrade: cr-changes/1`. After `101 Switching Protocols` the
//! connection carries one feed page per line (the long-poll's JSON page, then `\n`), written as
//! events become durable, and an empty page every `heartbeat` seconds while nothing happens. A
//! page the child may not have (its message TTL passed, events pruned) is one line of OCI error
//! JSON (`{"errors":[…]}`), and the stream ends. A stream also ends when the node's tokens change
//! and after [`LIFETIME`], so the child's credentials are checked again as a long-poll's are.
//!
//! It exists for roots with thousands of children. A waiting HTTP/1 long-poll keeps hyper's
//! connection machinery (read and write buffers, dispatcher, connection task: ~11 KB of RSS per
//! child); an upgraded connection hands all of that back, so a waiting stream is one small task
//! and its socket. A child sends no request per event either. Nothing else changes: the pages
//! are the long-poll's, checked the same way, and a child that does not ask (or an HTTP/2
//! connection, or a proxy that strips the upgrade) long-polls as before.
//!
//! After a push every waiting stream writes at once: a page all of them may read in full is
//! serialised once ([`SharedPage`]), and the streams run on a runtime of their own
//! ([`streams_runtime`]) so the registry's requests do not wait behind such a wave.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::header::{CONNECTION, UPGRADE};
use hyper::upgrade::OnUpgrade;
use hyper::{Request, StatusCode, Version};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::acr::{feed_position, number, page_for, SharedPage, MAX_WAIT, PAGE_LIMIT};
use super::response::Reply;
use super::{Api, ConnectionSlot};
use crate::auth::Identity;
use crate::oci::{Error, Result};
use crate::socket::FileSendingSocket;
use crate::store::Store;

/// The `Upgrade` token a child asks for and the parent answers with.
pub const PROTOCOL: &str = "cr-changes/1";
/// The heartbeat when the child names none.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(30);
/// A child that takes no line for this long (it stopped reading) is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// A stream ends after this long, at its next heartbeat, and the child asks again: what it was
/// allowed is checked afresh at least this often (a bearer token's own lifetime), besides at
/// once whenever the tokens change.
const LIFETIME: Duration = Duration::from_secs(crate::auth::jwt::LIFETIME_SECS);

/// What the request handler takes from the request before it lets go of it.
pub(super) struct Opening {
    pub(super) upgrade: OnUpgrade,
    pub(super) slot: Option<ConnectionSlot>,
}

/// Whether `req` asks for the stream: HTTP/1.1 with `Connection: upgrade` and our protocol
/// among its `Upgrade` tokens.
pub(super) fn wanted(req: &Request<Incoming>) -> bool {
    let lists = |name| {
        req.headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect::<Vec<_>>()
    };
    req.version() == Version::HTTP_11
        && lists(CONNECTION)
            .iter()
            .any(|t| t.eq_ignore_ascii_case("upgrade"))
        && lists(UPGRADE)
            .iter()
            .any(|t| t.eq_ignore_ascii_case(PROTOCOL))
}

/// Answer a stream request: every check of a long-poll (410 when `since` is gone, 400 on a bad
/// parameter) happens before the switch, then the stream runs in a task of its own.
pub(super) async fn open(
    api: &Api,
    identity: &Identity,
    q: &[(String, String)],
    opening: Opening,
) -> Result<Reply> {
    let (since, ttl) = feed_position(q)?;
    let heartbeat = number(q, "heartbeat", 1..=MAX_WAIT.as_secs())?
        .map_or(DEFAULT_HEARTBEAT, Duration::from_secs);
    // What is already there goes out first, with the same checks a later page gets.
    let events = api
        .store
        .wait_for_changes(since, Duration::ZERO, PAGE_LIMIT)
        .await?;
    let page = page_for(&api.store, identity, since, ttl, &events)?;
    let first = (page.next > since).then(|| line(&page));
    let follower = Follower {
        store: api.store.clone(),
        stopping: api.stopping.subscribe(),
        reconfigured: api.auth.reconfigured(),
        identity: identity.clone(),
        since: page.next,
        ttl,
        heartbeat,
        _slot: opening.slot,
    };
    match streams_runtime() {
        Some(runtime) => drop(runtime.spawn(follower.run(opening.upgrade, first))),
        None => drop(tokio::spawn(follower.run(opening.upgrade, first))),
    }
    Ok(Reply::switching_protocols(PROTOCOL))
}

/// The runtime the streams are written from: threads of their own (half the CPUs, at least
/// one), so that the writes of a wave (a line to each of thousands of children after a push)
/// never queue the registry's requests, the next push among them, behind them: the kernel
/// shares the CPUs between the two runtimes. Half, not all: with as many stream threads as
/// CPUs, a root taking 100 pushes a second from 10 000 children fell behind in some runs and
/// stayed behind (BENCHMARKS.md, "One line for all children"). Created with the first stream
/// and kept for the life of the process; if its threads cannot be started, streams run on the
/// registry's own runtime instead.
fn streams_runtime() -> Option<&'static tokio::runtime::Runtime> {
    static RUNTIME: std::sync::OnceLock<Option<tokio::runtime::Runtime>> =
        std::sync::OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            let cpus = std::thread::available_parallelism().map_or(1, usize::from);
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads((cpus / 2).max(1))
                .thread_name("feed-streams")
                .enable_all()
                .build()
                .inspect_err(|e| {
                    tracing::warn!(error = %e, "no threads for the change-feed streams: they \
                        share the registry's")
                })
                .ok()
        })
        .as_ref()
}

/// One child's stream: where it is in the feed and what its pages are filtered by.
struct Follower {
    store: Arc<Store>,
    stopping: watch::Receiver<bool>,
    /// Moves when the tokens change: the identity below may no longer hold.
    reconfigured: watch::Receiver<u64>,
    identity: Identity,
    since: u64,
    ttl: Option<u64>,
    heartbeat: Duration,
    /// Held while the stream runs: it counts under the connection cap.
    _slot: Option<ConnectionSlot>,
}

impl Follower {
    /// Take the upgraded connection back from hyper (its buffers are freed; a plain TCP or TLS
    /// socket is unwrapped so nothing else stays with it) and stream on it.
    async fn run(self, upgrade: OnUpgrade, first: Option<Vec<u8>>) {
        let upgraded = match upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::debug!(error = %e, "change-feed stream: the upgrade failed");
                return;
            }
        };
        // Bytes a child sent after its request are not part of this protocol: dropped, and
        // with them hyper's read buffer (8 KiB) before the stream starts to wait.
        match upgraded.downcast::<TokioIo<FileSendingSocket>>() {
            Ok(parts) => {
                drop(parts.read_buf);
                self.follow(parts.io.into_inner().into_inner(), first).await
            }
            Err(upgraded) => {
                type Tls = TokioIo<tokio_rustls::server::TlsStream<TcpStream>>;
                match upgraded.downcast::<Tls>() {
                    Ok(parts) => {
                        drop(parts.read_buf);
                        self.follow(parts.io.into_inner(), first).await
                    }
                    Err(upgraded) => self.follow(TokioIo::new(upgraded), first).await,
                }
            }
        }
    }

    /// Write pages until the child goes away, stops reading, the server stops, or a page cannot
    /// be had (an error line, then the end).
    async fn follow<I: AsyncRead + AsyncWrite + Unpin>(
        mut self,
        mut io: I,
        first: Option<Vec<u8>>,
    ) {
        if let Some(first) = first {
            if !send(&mut io, &first).await {
                return;
            }
        }
        let ends_at = Instant::now() + LIFETIME;
        while let Some(left) = ends_at.checked_duration_since(Instant::now()) {
            let wait = self.heartbeat.min(left);
            let waited = tokio::select! {
                events = self.store.wait_for_changes(self.since, wait, PAGE_LIMIT) => events,
                _ = self.stopping.wait_for(|stop| *stop) => break,
                _ = self.reconfigured.changed() => break,
                () = peer_leaves(&mut io) => break,
            };
            let next = waited.and_then(|events| {
                let page = page_for(&self.store, &self.identity, self.since, self.ttl, &events)?;
                static LINES: SharedPage = SharedPage::new();
                Ok((LINES.bytes(&page, &events, |page| line(page)), page.next))
            });
            match next {
                Ok((page, next)) => {
                    if !send(&mut io, &page).await {
                        break;
                    }
                    self.since = next;
                }
                Err(e) => {
                    send(&mut io, &error_line(&e)).await;
                    break;
                }
            }
        }
        let _ = tokio::time::timeout(WRITE_TIMEOUT, io.shutdown()).await;
    }
}

/// Resolves when the child closes its side, sends anything (it may not), or the socket fails.
async fn peer_leaves<I: AsyncRead + Unpin>(io: &mut I) {
    let mut byte = [0u8; 1];
    let _ = io.read(&mut byte).await;
}

/// Write one line; false when the child is gone or took nothing for [`WRITE_TIMEOUT`].
async fn send<I: AsyncWrite + Unpin>(io: &mut I, line: &[u8]) -> bool {
    let write = async {
        io.write_all(line).await?;
        io.flush().await
    };
    matches!(tokio::time::timeout(WRITE_TIMEOUT, write).await, Ok(Ok(())))
}

fn line(page: &impl serde::Serialize) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(page).expect("pages serialise");
    bytes.push(b'\n');
    bytes
}

fn error_line(err: &Error) -> Vec<u8> {
    let mut bytes = err.to_json();
    bytes.push(b'\n');
    bytes
}

impl Reply {
    /// `101 Switching Protocols` to `protocol` (no body, so no `Content-Length`).
    fn switching_protocols(protocol: &str) -> Reply {
        Reply::new(StatusCode::SWITCHING_PROTOCOLS)
            .without_length()
            .header(CONNECTION, "upgrade")
            .header(UPGRADE, protocol)
    }
}
