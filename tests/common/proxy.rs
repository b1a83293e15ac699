//! A TCP proxy the tests control, between a child node and its parent: it counts connections,
//! bytes each way and HTTP/1.1 requests (request line and headers, seen client → server, with the
//! bytes of the response that followed each one), and it can cut every open connection, refuse new
//! ones, stall (hold bytes without closing), throttle the server → client direction and corrupt
//! chosen responses (one body byte flipped, so the digest no longer matches).
//!
//! Built on std threads: one acceptor, two pumps per connection. Responses are attributed to the
//! latest request of their connection, which is exact for HTTP/1.1 without pipelining (what every
//! client here does): a client sends its next request only after it has read the whole response.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// One HTTP request seen client → server, and what the server sent back after it.
#[derive(Debug, Clone)]
pub struct Request {
    /// Index of the connection (0-based, in accept order).
    pub conn: u64,
    /// `GET /v2/hello/blobs/sha256:… HTTP/1.1`
    pub line: String,
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    /// Header names lower-cased, in the order sent.
    pub headers: Vec<(String, String)>,
    /// When the request head was complete, measured from the proxy's start.
    pub at: Duration,
    /// Response status code (from the first bytes of the response), if any came back.
    pub status: Option<u16>,
    /// Bytes (head and body) the server sent back on this connection after this request.
    pub response_bytes: u64,
    /// When the last of those bytes came from the server, measured from the proxy's start.
    pub last_byte_at: Option<Duration>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The path without the query string.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
}

struct Conn {
    client: TcpStream,
    server: TcpStream,
}

struct Shared {
    target: std::sync::atomic::AtomicU16,
    started: Instant,
    down: AtomicBool,
    stalled: AtomicBool,
    /// Rename `Range` request headers on the way to the server (a parent that ignores them).
    strip_range: AtomicBool,
    /// Bytes per second server → client; 0 = unlimited.
    throttle: AtomicU64,
    /// Pacing for the throttle, shared by every connection (one slow link).
    next_free: Mutex<Instant>,
    stopping: AtomicBool,
    accepted: AtomicU64,
    refused: AtomicU64,
    to_server: AtomicU64,
    to_client: AtomicU64,
    requests: Mutex<Vec<Request>>,
    /// Index into `requests` of each connection's latest request.
    latest: Mutex<HashMap<u64, usize>>,
    conns: Mutex<HashMap<u64, Conn>>,
    /// While set: GET responses for targets containing this get their first body byte flipped.
    corrupt: Mutex<Option<String>>,
    /// Connections whose current response is to be corrupted.
    corrupting: Mutex<HashMap<u64, Corrupting>>,
    corrupted: AtomicU64,
    /// Notified on every request and every response chunk, for waiters.
    changed: Condvar,
    changed_lock: Mutex<u64>,
}

/// A running proxy; stops (closing every connection) on drop.
pub struct Proxy {
    pub port: u16,
    shared: Arc<Shared>,
}

impl Proxy {
    /// Listen on a free loopback port and forward each connection to `127.0.0.1:target`.
    pub fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(Shared {
            target: std::sync::atomic::AtomicU16::new(target),
            started: Instant::now(),
            down: AtomicBool::new(false),
            stalled: AtomicBool::new(false),
            strip_range: AtomicBool::new(false),
            throttle: AtomicU64::new(0),
            next_free: Mutex::new(Instant::now()),
            stopping: AtomicBool::new(false),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            to_server: AtomicU64::new(0),
            to_client: AtomicU64::new(0),
            requests: Mutex::new(Vec::new()),
            latest: Mutex::new(HashMap::new()),
            conns: Mutex::new(HashMap::new()),
            corrupt: Mutex::new(None),
            corrupting: Mutex::new(HashMap::new()),
            corrupted: AtomicU64::new(0),
            changed: Condvar::new(),
            changed_lock: Mutex::new(0),
        });
        let s = shared.clone();
        thread::Builder::new()
            .name(format!("proxy-{port}"))
            .spawn(move || accept_loop(listener, s))
            .unwrap();
        Proxy { port, shared }
    }

    /// `http://127.0.0.1:<port>`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Close every connection open now (both sides, immediately).
    pub fn cut(&self) {
        let conns: Vec<Conn> = self
            .shared
            .conns
            .lock()
            .unwrap()
            .drain()
            .map(|(_, c)| c)
            .collect();
        for c in conns {
            let _ = c.client.shutdown(Shutdown::Both);
            let _ = c.server.shutdown(Shutdown::Both);
        }
    }

    /// While down, every new connection is accepted and closed at once, never forwarded.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
    }

    /// While stalled, no byte is forwarded either way; connections stay open.
    pub fn stall(&self, stalled: bool) {
        self.shared.stalled.store(stalled, Ordering::SeqCst);
    }

    /// Forward new connections to `127.0.0.1:port` from now on (open ones are left as they are).
    pub fn set_target(&self, port: u16) {
        self.shared.target.store(port, Ordering::SeqCst);
    }

    /// While on, `Range` request headers reach the server renamed (`X-Rng`, same length), so
    /// the parent answers with the whole body as if it did not support ranges. The request log
    /// still shows what the client sent.
    pub fn strip_range(&self, on: bool) {
        self.shared.strip_range.store(on, Ordering::SeqCst);
    }

    /// Limit server → client bytes per second, over all connections together (`None`: no limit).
    pub fn throttle(&self, bytes_per_sec: Option<u64>) {
        self.shared
            .throttle
            .store(bytes_per_sec.unwrap_or(0), Ordering::SeqCst);
        *self.shared.next_free.lock().unwrap() = Instant::now();
    }

    /// While `Some(s)`, the response to every GET whose target contains `s` reaches the client
    /// with its first body byte flipped (same length, wrong digest).
    pub fn corrupt(&self, target_contains: Option<&str>) {
        *self.shared.corrupt.lock().unwrap() = target_contains.map(str::to_owned);
    }

    /// Responses corrupted so far.
    pub fn corrupted(&self) -> u64 {
        self.shared.corrupted.load(Ordering::SeqCst)
    }

    /// Connections accepted and forwarded so far.
    pub fn connections(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections closed at once because the proxy was down.
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::SeqCst)
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.shared.conns.lock().unwrap().len()
    }

    /// Bytes forwarded client → server.
    pub fn bytes_to_server(&self) -> u64 {
        self.shared.to_server.load(Ordering::SeqCst)
    }

    /// Bytes forwarded server → client.
    pub fn bytes_to_client(&self) -> u64 {
        self.shared.to_client.load(Ordering::SeqCst)
    }

    /// Every request seen so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// Number of requests seen so far.
    pub fn request_count(&self) -> usize {
        self.shared.requests.lock().unwrap().len()
    }

    /// The request lines seen so far, in order.
    pub fn request_lines(&self) -> Vec<String> {
        self.requests().into_iter().map(|r| r.line).collect()
    }

    /// Requests whose method is `method` and whose path (without query) satisfies `pred`.
    pub fn matching(&self, method: &str, pred: impl Fn(&str) -> bool) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == method && pred(r.path()))
            .collect()
    }

    /// Forget the requests seen so far (counters of bytes and connections are kept).
    pub fn clear_requests(&self) {
        self.shared.requests.lock().unwrap().clear();
        self.shared.latest.lock().unwrap().clear();
    }

    /// Block until `cond(requests)` holds or `timeout` passes; returns whether it held.
    pub fn wait_for(&self, timeout: Duration, cond: impl Fn(&[Request]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut guard = self.shared.changed_lock.lock().unwrap();
        loop {
            if cond(&self.shared.requests.lock().unwrap()) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            let wait = (deadline - now).min(Duration::from_millis(50));
            guard = self.shared.changed.wait_timeout(guard, wait).unwrap().0;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.cut();
        // Wake the acceptor so it sees `stopping`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn notify(shared: &Shared) {
    let mut n = shared.changed_lock.lock().unwrap();
    *n += 1;
    shared.changed.notify_all();
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut next_id = 0u64;
    for stream in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(client) = stream else { continue };
        if shared.down.load(Ordering::SeqCst) {
            shared.refused.fetch_add(1, Ordering::SeqCst);
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let server = match TcpStream::connect(("127.0.0.1", shared.target.load(Ordering::SeqCst))) {
            Ok(s) => s,
            Err(_) => {
                // The target is gone: behave like it (close the client's connection).
                shared.refused.fetch_add(1, Ordering::SeqCst);
                let _ = client.shutdown(Shutdown::Both);
                continue;
            }
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let id = next_id;
        next_id += 1;
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        shared.conns.lock().unwrap().insert(
            id,
            Conn {
                client: client.try_clone().unwrap(),
                server: server.try_clone().unwrap(),
            },
        );
        let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
        let sh = shared.clone();
        thread::spawn(move || pump_up(id, client, server, sh));
        let sh = shared.clone();
        thread::spawn(move || pump_down(id, s2, c2, sh));
    }
}

fn wait_unstalled(shared: &Shared) {
    while shared.stalled.load(Ordering::SeqCst) && !shared.stopping.load(Ordering::SeqCst) {
        thread::sleep(Duration::from_millis(10));
    }
}

fn close(id: u64, shared: &Shared) {
    if let Some(c) = shared.conns.lock().unwrap().remove(&id) {
        let _ = c.client.shutdown(Shutdown::Both);
        let _ = c.server.shutdown(Shutdown::Both);
    }
}

/// Client → server: forward, and parse request heads (skipping bodies by Content-Length).
fn pump_up(id: u64, mut client: TcpStream, mut server: TcpStream, shared: Arc<Shared>) {
    let mut parser = RequestParser::default();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match client.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for head in parser.feed(&buf[..n]) {
            record(id, head, &shared);
        }
        if shared.strip_range.load(Ordering::SeqCst) {
            rename_range_headers(&mut buf[..n]);
        }
        wait_unstalled(&shared);
        // Counted before the write, so the count never lags what the other side has seen.
        shared.to_server.fetch_add(n as u64, Ordering::SeqCst);
        if server.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    close(id, &shared);
}

/// Server → client: forward (throttled), attributing bytes to the connection's latest request
/// (counted as served by the server when read from it, before they are forwarded).
fn pump_down(id: u64, mut server: TcpStream, mut client: TcpStream, shared: Arc<Shared>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let rate = shared.throttle.load(Ordering::SeqCst);
        // Small reads when throttled, so the pacing is smooth and a cut lands mid-body.
        let max = if rate == 0 {
            buf.len()
        } else {
            ((rate / 20).max(512) as usize).min(buf.len())
        };
        let n = match server.read(&mut buf[..max]) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        wait_unstalled(&shared);
        let rate = shared.throttle.load(Ordering::SeqCst);
        if rate > 0 {
            let cost = Duration::from_secs_f64(n as f64 / rate as f64);
            let until = {
                let mut next = shared.next_free.lock().unwrap();
                let start = (*next).max(Instant::now());
                *next = start + cost;
                *next
            };
            let now = Instant::now();
            if until > now {
                thread::sleep(until - now);
            }
        }
        // Attribute before forwarding: once the client has the response it may send its next
        // request, which would otherwise take these bytes.
        attribute(id, &buf[..n], &shared);
        corrupt(id, &mut buf[..n], &shared);
        shared.to_client.fetch_add(n as u64, Ordering::SeqCst);
        if client.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    close(id, &shared);
}

/// Where a response being corrupted is: still in its head (with the last bytes seen, for a
/// blank line split across reads), or at the first body byte.
#[derive(Default)]
struct Corrupting {
    carry: Vec<u8>,
    flip_next: bool,
}

fn corrupt(id: u64, buf: &mut [u8], shared: &Shared) {
    let mut map = shared.corrupting.lock().unwrap();
    let Some(state) = map.get_mut(&id) else {
        return;
    };
    if buf.is_empty() {
        return;
    }
    let flip_at = if state.flip_next {
        Some(0)
    } else {
        let mut seen = std::mem::take(&mut state.carry);
        let carried = seen.len();
        seen.extend_from_slice(buf);
        match find(&seen, b"\r\n\r\n") {
            Some(p) if p + 4 - carried < buf.len() => Some(p + 4 - carried),
            Some(_) => {
                state.flip_next = true;
                None
            }
            None => {
                state.carry = seen[seen.len().saturating_sub(3)..].to_vec();
                None
            }
        }
    };
    if let Some(i) = flip_at {
        buf[i] ^= 0xff;
        map.remove(&id);
        shared.corrupted.fetch_add(1, Ordering::SeqCst);
    }
}

fn record(id: u64, head: ParsedHead, shared: &Shared) {
    let wanted = shared
        .corrupt
        .lock()
        .unwrap()
        .as_deref()
        .is_some_and(|s| head.method == "GET" && head.target.contains(s));
    if wanted {
        shared
            .corrupting
            .lock()
            .unwrap()
            .insert(id, Corrupting::default());
    } else {
        shared.corrupting.lock().unwrap().remove(&id);
    }
    let mut requests = shared.requests.lock().unwrap();
    requests.push(Request {
        conn: id,
        line: head.line,
        method: head.method,
        target: head.target,
        headers: head.headers,
        at: shared.started.elapsed(),
        status: None,
        response_bytes: 0,
        last_byte_at: None,
    });
    let index = requests.len() - 1;
    shared.latest.lock().unwrap().insert(id, index);
    drop(requests);
    notify(shared);
}

fn attribute(id: u64, bytes: &[u8], shared: &Shared) {
    let mut requests = shared.requests.lock().unwrap();
    let latest = shared.latest.lock().unwrap().get(&id).copied();
    if let Some(r) = latest.and_then(|i| requests.get_mut(i)) {
        if r.response_bytes == 0 {
            r.status = parse_status(bytes);
        }
        r.response_bytes += bytes.len() as u64;
        r.last_byte_at = Some(shared.started.elapsed());
    }
    drop(requests);
    notify(shared);
}

fn parse_status(bytes: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(&bytes[..bytes.len().min(32)]).ok()?;
    let mut parts = text.split(' ');
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    parts.next()?.get(..3)?.parse().ok()
}

struct ParsedHead {
    line: String,
    method: String,
    target: String,
    headers: Vec<(String, String)>,
}

/// Incremental HTTP/1.1 request-head parser over the client → server byte stream.
#[derive(Default)]
struct RequestParser {
    head: Vec<u8>,
    /// Body bytes still to skip.
    body_left: u64,
    /// A chunked or otherwise unframed body: stop parsing this connection.
    lost: bool,
}

impl RequestParser {
    fn feed(&mut self, mut bytes: &[u8]) -> Vec<ParsedHead> {
        let mut out = Vec::new();
        while !bytes.is_empty() && !self.lost {
            if self.body_left > 0 {
                let skip = (self.body_left as usize).min(bytes.len());
                self.body_left -= skip as u64;
                bytes = &bytes[skip..];
                continue;
            }
            // Collect the head up to the blank line.
            let before = self.head.len();
            self.head.extend_from_slice(bytes);
            let Some(end) = find(&self.head, b"\r\n\r\n") else {
                if self.head.len() > 1 << 20 {
                    self.lost = true;
                }
                return out;
            };
            let consumed = end + 4 - before;
            bytes = &bytes[consumed..];
            let head = std::mem::take(&mut self.head);
            let text = String::from_utf8_lossy(&head[..end]).into_owned();
            let mut lines = text.split("\r\n");
            let line = lines.next().unwrap_or("").to_owned();
            let mut parts = line.split(' ');
            let method = parts.next().unwrap_or("").to_owned();
            let target = parts.next().unwrap_or("").to_owned();
            let headers: Vec<(String, String)> = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
                .collect();
            for (k, v) in &headers {
                if k == "content-length" {
                    self.body_left = v.parse().unwrap_or(0);
                }
                if k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked") {
                    self.lost = true;
                }
            }
            out.push(ParsedHead {
                line,
                method,
                target,
                headers,
            });
        }
        out
    }
}

/// `\r\nRange:` (any case) → `\r\nX-Rng:`.
fn rename_range_headers(buf: &mut [u8]) {
    let needle = b"\r\nrange:";
    let mut i = 0;
    while i + needle.len() <= buf.len() {
        if buf[i..i + needle.len()].eq_ignore_ascii_case(needle) {
            buf[i + 2..i + 7].copy_from_slice(b"X-Rng");
            i += needle.len();
        } else {
            i += 1;
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
