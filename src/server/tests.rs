//! What a connection costs the server while it waits: a root holds one connection and one
//! waiting request per child that long-polls its change feed, so their sizes are its memory
//! per child (BENCHMARKS.md, "A root with many children"). Checked here against a budget, so
//! that a change that grows them fails a test instead of a benchmark run.

use std::sync::Arc;

use tokio::sync::Semaphore;

use super::*;
use crate::status::{Status, StatusHandle};
use crate::store::Store;

/// The budget of a connection's task: what a connection holds for its whole life, HTTP/1
/// included (HTTP/2 is a box of its own). 1 336 bytes with rustc 1.95; it was 4 584 while the
/// task wrapped the connection's future instead of being it.
const CONNECTION_BUDGET: usize = 1536;
/// The budget of the future hyper keeps for a request while it runs (and allocates once per
/// connection): 96 bytes with rustc 1.95, where it was 1 960 while it held the handler inline.
const REQUEST_BUDGET: usize = 128;

#[tokio::test]
async fn a_connection_and_its_request_stay_within_their_budgets() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let api = Arc::new(Api::new(store, StatusHandle::new(Status::default())));
    let limits = Limits::default();
    let (_stop, stop) = watch::channel(false);
    let shared = Arc::new(Shared {
        api,
        builders: protocol::Builders::new(http1_builder(&limits), http2_builder(&limits)),
        idle_timeout: limits.connection_idle_timeout,
        stop,
    });
    let permit = Arc::new(Semaphore::new(1)).acquire_owned().await.unwrap();
    let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();

    let plain: Opening<FileSendingSocket> = Box::pin(async { None });
    let connection = serve_connection(plain, peer, shared.clone(), permit);
    let plain_size = std::mem::size_of_val(&connection);
    assert!(
        plain_size <= CONNECTION_BUDGET,
        "a plain connection's task is {plain_size} bytes, over its budget of {CONNECTION_BUDGET}"
    );
    drop(connection);

    let permit = Arc::new(Semaphore::new(1)).acquire_owned().await.unwrap();
    let tls: Opening<tokio_rustls::server::TlsStream<TcpStream>> = Box::pin(async { None });
    let connection = serve_connection(tls, peer, shared, permit);
    // The same, with rustls' state (which a TLS connection needs) in place of the socket's.
    let size = std::mem::size_of_val(&connection);
    let budget = plain_size + std::mem::size_of::<tokio_rustls::server::TlsStream<TcpStream>>()
        - std::mem::size_of::<FileSendingSocket>();
    assert!(
        size <= budget,
        "a TLS connection's task is {size} bytes, over its budget of {budget}"
    );

    let size = std::mem::size_of::<answering::Answering>();
    assert!(
        size <= REQUEST_BUDGET,
        "a request's future is {size} bytes, over its budget of {REQUEST_BUDGET}"
    );
}
