//! Accepting connections: plain HTTP (HTTP/1.1, or HTTP/2 with prior knowledge), or TLS (rustls)
//! with HTTP/2 and HTTP/1.1 by ALPN; the limits that keep hostile or broken clients from holding
//! the node ([`admission`] caps connections, [`idle`] closes the ones that make no progress); and
//! a graceful stop that lets in-flight requests finish before the store is flushed.

mod admission;
mod answering;
mod idle;
mod protocol;
mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::api::Api;
use crate::config::Limits;
use crate::socket::FileSendingSocket;
use crate::store::Delivery;
use admission::{Admission, RateLimited};
use idle::Activity;
pub use tls::{acceptor as tls_acceptor_for, certified_key, tls_acceptor, RenewableCert};

/// How long a stop waits for in-flight requests before closing their connections.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Upper bound of the TLS handshake (and never more than the connection idle timeout).
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound of reading an HTTP/1 request head (and never more than the idle timeout).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Streams one HTTP/2 connection may have open at once.
const MAX_CONCURRENT_STREAMS: u32 = 200;
/// Upper bound of the HTTP/2 keep-alive ping interval (otherwise half the idle timeout); a
/// ping not answered within the same time closes the connection.
const MAX_PING_INTERVAL: Duration = Duration::from_secs(20);
/// After a connection is told to close (HTTP/2 `GOAWAY`), how long it may go without progress
/// before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// Pause after a failed `accept` (out of descriptors and the like) instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(10);

/// What every connection task shares.
struct Shared {
    api: Arc<Api>,
    builders: protocol::Builders,
    idle_timeout: Duration,
    /// Set when the server starts stopping: connections finish what is in flight and close.
    stop: watch::Receiver<bool>,
}

/// Serve `api` on `listener` until `shutdown` resolves, then drain.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    api: Arc<Api>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    tracing::info!(
        connection_idle_timeout_s = limits.connection_idle_timeout.as_secs(),
        body_idle_timeout_s = limits.body_idle_timeout.as_secs(),
        max_connections = limits.max_connections,
        "connection limits"
    );
    let (stop, stop_rx) = watch::channel(false);
    let shared = Arc::new(Shared {
        api,
        builders: protocol::Builders::new(http1_builder(&limits), http2_builder(&limits)),
        idle_timeout: limits.connection_idle_timeout,
        stop: stop_rx,
    });
    let mut admission = Admission::new(limits.max_connections);
    let mut accept_errors = RateLimited::new(ACCEPT_LOG_EVERY);
    let mut conns = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    if let Some(others) = accept_errors.check() {
                        tracing::warn!(error = %e, failed_since_last_line = others + 1, "accept failed");
                    }
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            // Reap finished connection tasks so the set stays as large as the live connections.
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            () = &mut shutdown => break,
        };
        let Some(permit) = admission.admit() else {
            admission.refuse(stream, tls.is_none());
            continue;
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        // The task is the served connection's own future, which starts with the opening (a
        // box of its own, freed once the connection is open): the state a connection holds for
        // its whole life is one allocation, not a wrapper around another.
        match &tls {
            None => {
                let opening = Box::pin(open_plain(stream, peer, shared.clone()));
                conns.spawn(serve_connection(opening, peer, shared, permit))
            }
            Some(acceptor) => {
                let opening = Box::pin(open_tls(acceptor.clone(), stream, peer, shared.clone()));
                conns.spawn(serve_connection(opening, peer, shared, permit))
            }
        };
    }
    drop(listener);
    tracing::info!("stopping: waiting for in-flight requests");
    let _ = stop.send(true);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("in-flight requests did not finish within {DRAIN_TIMEOUT:?}; closing them");
        conns.shutdown().await;
    }
    Ok(())
}

/// A connection ready to be served: its stream, the protocol it speaks and how blob pieces
/// reach it.
struct Opened<I> {
    io: I,
    protocol: protocol::Protocol,
    delivery: Delivery,
}

/// What makes a connection ready to be served, `None` when it never gets there.
type Opening<I> = Pin<Box<dyn Future<Output = Option<Opened<I>>> + Send>>;

/// A plain connection, once its first bytes tell HTTP/1 from HTTP/2. A client that sends
/// nothing is closed after the idle timeout, as before any other request; a stopping server
/// does not wait for it.
async fn open_plain(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
) -> Option<Opened<FileSendingSocket>> {
    let mut stop = shared.stop.clone();
    let protocol = tokio::select! {
        p = protocol::sniff(&stream, shared.idle_timeout) => p,
        _ = stop.wait_for(|stopping| *stopping) => None,
    };
    let Some(protocol) = protocol else {
        tracing::debug!(%peer, "closing a connection that sent nothing");
        return None;
    };
    let io = FileSendingSocket::new(stream, sends_from_files(peer));
    let delivery = io.delivery();
    Some(Opened {
        io,
        protocol,
        delivery,
    })
}

/// A TLS connection, once its handshake is done (within [`TLS_HANDSHAKE_TIMEOUT`]); ALPN
/// names its protocol.
async fn open_tls(
    acceptor: TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
) -> Option<Opened<tokio_rustls::server::TlsStream<TcpStream>>> {
    let handshake = TLS_HANDSHAKE_TIMEOUT.min(shared.idle_timeout);
    match tokio::time::timeout(handshake, acceptor.accept(stream)).await {
        Ok(Ok(io)) => Some(Opened {
            protocol: protocol::from_alpn(io.get_ref().1.alpn_protocol()),
            io,
            delivery: Delivery::FromMemory,
        }),
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            None
        }
    }
}

/// Whether a plain connection from `peer` sends blob pieces from their files. Not for a peer on
/// this machine's loopback: it reads what is sent from the same memory, and a page sent from the
/// file reaches it colder than one the node copied into the socket, which costs the machine more
/// than the copy saves (BENCHMARKS.md, "Pulls sent from the file").
fn sends_from_files(peer: SocketAddr) -> bool {
    !peer.ip().to_canonical().is_loopback()
}

/// The HTTP/1 settings, from hyper's own timers and limits.
///
/// Half-closed clients are answered: `printf 'GET /healthz HTTP/1.0\r\n\r\n' | nc host port`
/// shuts its side once the request is out, and hyper's default drops such a request unanswered
/// (distribution answers it). The price: a long-poll whose client went away altogether is only
/// noticed when its answer is written, at the latest when its `wait` ends.
fn http1_builder(limits: &Limits) -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT.min(limits.connection_idle_timeout))
        .half_close(true);
    builder
}

/// The HTTP/2 settings, from hyper's own timers and limits.
fn http2_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let idle = limits.connection_idle_timeout;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let ping = (idle / 2).clamp(Duration::from_secs(1), MAX_PING_INTERVAL);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .keep_alive_interval(ping)
        .keep_alive_timeout(ping);
    builder
}

/// Open one connection, then serve it until it ends, goes idle, the server stops or a
/// change-feed stream takes it over; `permit` is its place under the connection cap, released
/// when it closes.
async fn serve_connection<I>(
    opening: Opening<I>,
    peer: SocketAddr,
    shared: Arc<Shared>,
    permit: OwnedSemaphorePermit,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let Some(Opened {
        io,
        protocol,
        delivery,
    }) = opening.await
    else {
        return;
    };
    let activity = Activity::new();
    // Each request carries the connection's slot: a change-feed stream that takes the
    // connection over keeps it (the slot is freed when the last holder lets go).
    let slot = crate::api::ConnectionSlot(Arc::new(permit));
    let service = {
        let api = shared.api.clone();
        let activity = activity.clone();
        service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(crate::api::ClientAddr(peer));
            req.extensions_mut().insert(slot.clone());
            req.extensions_mut().insert(delivery);
            answering::Answering::new(api.clone(), activity.clone(), req)
        })
    };
    let io = TokioIo::new(io);
    match protocol {
        protocol::Protocol::Http1 => {
            // With upgrades: a change-feed stream takes the connection over.
            let conn = shared.builders.http1.serve_connection(io, service);
            let conn = conn.with_upgrades();
            tokio::pin!(conn);
            drive(conn, |c| c.graceful_shutdown(), &activity, &shared, peer).await
        }
        protocol::Protocol::Http2 => {
            // Boxed: an HTTP/2 connection's state is twice an HTTP/1 one's, and held inline it
            // would make every connection's future that large.
            let mut conn = Box::pin(shared.builders.http2.serve_connection(io, service));
            drive(
                conn.as_mut(),
                |c| c.graceful_shutdown(),
                &activity,
                &shared,
                peer,
            )
            .await
        }
    }
}

/// Run a served connection until it ends, goes idle or the server stops; `close` tells it to
/// finish what is in flight and close.
async fn drive<C, E>(
    mut conn: std::pin::Pin<&mut C>,
    close: fn(std::pin::Pin<&mut C>),
    activity: &Activity,
    shared: &Shared,
    peer: SocketAddr,
) where
    C: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut stop = shared.stop.clone();
    let ended = tokio::select! {
        result = conn.as_mut() => Some(result),
        () = activity.until_idle(shared.idle_timeout) => {
            tracing::debug!(%peer, "closing an idle connection");
            None
        }
        _ = stop.wait_for(|stopping| *stopping) => None,
    };
    let result = match ended {
        Some(result) => result,
        None => {
            // HTTP/2 says GOAWAY, HTTP/1 closes once its request (if any) is answered; one
            // that then makes no progress (a silent peer) is dropped.
            close(conn.as_mut());
            activity.progress();
            tokio::select! {
                result = conn.as_mut() => result,
                () = activity.until_idle(CLOSE_GRACE) => Ok(()),
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}

/// Open access (no credentials at all) is only safe where nobody else can connect: on any
/// other address the node needs tokens, or at least an explicit `anonymousPull`.
pub fn check_anonymous_allowed(
    addr: SocketAddr,
    config: &crate::config::Config,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        addr.ip().is_loopback() || config.has_tokens() || config.anonymous_pull.is_some(),
        "refusing to start: {addr} is not a loopback address and no client credentials are \
         configured, so anyone on the network could push and pull. Listen on 127.0.0.1 \
         (the default), create client tokens (`connected-registry token create`) or set \
         `anonymousPull`."
    );
    Ok(())
}

#[cfg(test)]
mod tests;
