//! Raw-socket clients, for what no well-behaved HTTP library will do: connect and say nothing,
//! send the HTTP/2 preface and go silent, declare a body and stall half-way, send headers only
//! and wait for the answer to `Expect: 100-continue`. And a minimal HTTP/2 client (prior
//! knowledge, hand-encoded frames) that makes one request and then sits idle, answering pings,
//! to watch the server close it.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Open a TCP connection to `host` (`127.0.0.1:port`).
pub fn connect(host: &str) -> TcpStream {
    let stream = TcpStream::connect(host).unwrap_or_else(|e| panic!("connect {host}: {e}"));
    stream.set_nodelay(true).unwrap();
    stream
}

/// Write an HTTP/1.1 request head (`Host` is added), then `body`.
pub fn send_http1(
    stream: &mut TcpStream,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) {
    let host = stream.peer_addr().unwrap().to_string();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    if !body.is_empty() {
        stream.write_all(body).unwrap();
    }
}

/// How a connection ended, seen from its client.
#[derive(Debug)]
pub struct Closed {
    /// When the close (end of file or reset) was seen, from the call.
    pub after: Duration,
    /// Everything the server sent before it closed.
    pub received: Vec<u8>,
}

impl Closed {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.received).into_owned()
    }
}

/// Read until the server closes the connection; `None` if it is still open after `timeout`.
pub fn wait_closed(stream: &mut TcpStream, timeout: Duration) -> Option<Closed> {
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let left = timeout.checked_sub(started.elapsed())?;
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // Reset or aborted: closed too.
            Err(_) => break,
        }
    }
    Some(Closed {
        after: started.elapsed(),
        received,
    })
}

/// Read an HTTP/1 response head (up to the blank line) within `timeout`; `None` if none came.
/// Returns the head and whatever followed it in the same reads.
pub fn read_head(stream: &mut TcpStream, timeout: Duration) -> Option<(String, Vec<u8>)> {
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&received[..end]).into_owned();
            return Some((head, received[end + 4..].to_vec()));
        }
        let left = timeout.checked_sub(started.elapsed())?;
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return None,
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}

// ---- HTTP/2 ----------------------------------------------------------------------------------

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

/// One HTTP/2 frame.
pub fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// The client's opening: preface and an empty SETTINGS frame.
pub fn h2_open() -> Vec<u8> {
    let mut out = H2_PREFACE.to_vec();
    out.extend(h2_frame(SETTINGS, 0, 0, &[]));
    out
}

/// A complete `GET` on stream 1 (HPACK: indexed `:method GET` and `:scheme http`, literal
/// `:path` and `:authority`).
pub fn h2_get(authority: &str, path: &str) -> Vec<u8> {
    assert!(path.len() < 127 && authority.len() < 127);
    let mut block = vec![0x82, 0x86, 0x44, path.len() as u8];
    block.extend_from_slice(path.as_bytes());
    block.extend([0x41, authority.len() as u8]);
    block.extend_from_slice(authority.as_bytes());
    h2_frame(HEADERS, END_STREAM | END_HEADERS, 1, &block)
}

/// What [`h2_request_then_idle`] saw.
#[derive(Debug, Default)]
pub struct H2Outcome {
    /// The response on stream 1 started with `:status 200` (HPACK static index 8).
    pub status_200: bool,
    /// The response on stream 1 was complete (a frame with END_STREAM).
    pub response_complete: bool,
    /// The server said GOAWAY.
    pub goaway: bool,
    /// Pings the server sent (and we answered).
    pub pings: u32,
    /// Time from the end of the response to the server closing the connection; `None` if it was
    /// still open after the timeout.
    pub closed_after: Option<Duration>,
}

/// Over HTTP/2 with prior knowledge: `GET path`, then stay idle (answering SETTINGS and PINGs, as
/// a live client does) until the server closes the connection or `timeout` passes.
pub fn h2_request_then_idle(host: &str, path: &str, timeout: Duration) -> H2Outcome {
    let mut stream = connect(host);
    stream.write_all(&h2_open()).unwrap();
    stream.write_all(&h2_get(host, path)).unwrap();
    let mut out = H2Outcome::default();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let started = Instant::now();
    let mut done_at: Option<Instant> = None;
    loop {
        // Handle every complete frame in the buffer.
        while buf.len() >= 9 {
            let len = (buf[0] as usize) << 16 | (buf[1] as usize) << 8 | buf[2] as usize;
            if buf.len() < 9 + len {
                break;
            }
            let (kind, flags) = (buf[3], buf[4]);
            let id = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
            let payload = buf[9..9 + len].to_vec();
            buf.drain(..9 + len);
            match kind {
                SETTINGS if flags & ACK == 0 => {
                    let _ = stream.write_all(&h2_frame(SETTINGS, ACK, 0, &[]));
                }
                PING if flags & ACK == 0 => {
                    out.pings += 1;
                    let _ = stream.write_all(&h2_frame(PING, ACK, 0, &payload));
                }
                GOAWAY => out.goaway = true,
                HEADERS if id == 1 && payload.first() == Some(&0x88) => out.status_200 = true,
                _ => {}
            }
            if id == 1 && matches!(kind, DATA | HEADERS) && flags & END_STREAM != 0 {
                out.response_complete = true;
                done_at.get_or_insert_with(Instant::now);
            }
        }
        let from = done_at.unwrap_or(started);
        let Some(left) = timeout.checked_sub(from.elapsed()) else {
            return out;
        };
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    out.closed_after = Some(done_at.unwrap_or(started).elapsed());
    out
}
