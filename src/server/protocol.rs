//! Which HTTP version a connection speaks, decided before hyper sees a byte: by ALPN on TLS,
//! and on plain TCP by peeking (not reading) at its first bytes for the HTTP/2 preface.
//!
//! It exists because hyper-util's auto-detection reads those bytes itself and hands them back
//! through a rewind buffer, after which hyper's HTTP/1 read buffer needs a second reservation
//! and doubles to 16 KiB for the life of the connection. A root holds one connection per child
//! long-polling its change feed; peeking keeps that buffer at hyper's 8 KiB. HTTP/1 is served
//! by hyper's own builder, not hyper-util's: its upgradeable connections (a change-feed stream
//! takes the connection over) always detect the version that way, and wrap the socket so an
//! upgraded stream could not get it back.

use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;

/// The HTTP/2 connection preface a client sends first (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// How long to wait for the rest of a preface that arrived in pieces.
const PIECE_WAIT: Duration = Duration::from_millis(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
}

/// The builders for each version, configured once.
pub struct Builders {
    pub http1: http1::Builder,
    pub http2: auto::Builder<TokioExecutor>,
}

impl Builders {
    pub fn new(http1: http1::Builder, http2: auto::Builder<TokioExecutor>) -> Builders {
        Builders {
            http1,
            http2: http2.http2_only(),
        }
    }
}

/// The protocol TLS negotiated (HTTP/1.1 unless ALPN chose `h2`).
pub fn from_alpn(alpn: Option<&[u8]>) -> Protocol {
    if alpn == Some(b"h2") {
        Protocol::Http2
    } else {
        Protocol::Http1
    }
}

/// Peek at a plain TCP connection until its first bytes are the HTTP/2 preface or cannot be.
/// `None` when the client sent nothing (or closed) for `within`: the caller closes it.
pub async fn sniff(stream: &TcpStream, within: Duration) -> Option<Protocol> {
    let decide = async {
        let mut buf = [0u8; H2_PREFACE.len()];
        loop {
            let n = stream.peek(&mut buf).await.ok()?;
            if n == 0 {
                // Closed before a byte: HTTP/1 machinery reports it like any early close.
                return Some(Protocol::Http1);
            }
            if buf[..n] != H2_PREFACE[..n] {
                return Some(Protocol::Http1);
            }
            if n == H2_PREFACE.len() {
                return Some(Protocol::Http2);
            }
            // A preface split across segments: peek returns at once while bytes wait, so
            // give the rest a moment to arrive.
            tokio::time::sleep(PIECE_WAIT).await;
        }
    };
    tokio::time::timeout(within, decide).await.ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    #[tokio::test]
    async fn preface_request_and_silence() {
        let wait = Duration::from_secs(2);
        let (mut client, server) = pair().await;
        client.write_all(b"PUT /v2/ HTTP/1.1\r\n").await.unwrap();
        assert_eq!(sniff(&server, wait).await, Some(Protocol::Http1));

        let (mut client, server) = pair().await;
        client.write_all(&H2_PREFACE[..10]).await.unwrap();
        let rest = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            client.write_all(&H2_PREFACE[10..]).await.unwrap();
            client
        });
        assert_eq!(sniff(&server, wait).await, Some(Protocol::Http2));
        drop(rest.await.unwrap());

        let (_client, server) = pair().await;
        assert_eq!(sniff(&server, Duration::from_millis(100)).await, None);
        assert_eq!(from_alpn(Some(b"h2")), Protocol::Http2);
        assert_eq!(from_alpn(None), Protocol::Http1);
    }
}
