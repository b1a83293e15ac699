//! Admission: the cap on connections served at once, and the polite refusal past it.
//!
//! Every served connection holds a permit of one semaphore sized `limits.maxConnections` (below
//! the open-files limit, so the store, sled and the parent connections always have descriptors
//! left). A connection past the cap gets a minimal `HTTP/1.1 503` with OCI error JSON and is
//! closed, instead of being left in the backlog or running the process out of descriptors. The
//! log lines for refusals and accept errors are rate-limited: a flood of connections must not
//! become a flood of log lines.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// At most one log line per this long for each kind of event; the line counts the others.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// Refused connections kept open briefly to read what their client already sent, so the client
/// reads the 503 instead of a reset. Beyond this many at once, refusals close at once.
const MAX_LINGERING: usize = 32;
const LINGER: Duration = Duration::from_secs(2);

/// The connection cap and the refusals past it.
pub struct Admission {
    permits: Arc<Semaphore>,
    max: usize,
    lingering: Arc<Semaphore>,
    refusals: RateLimited,
}

impl Admission {
    pub fn new(max_connections: usize) -> Admission {
        Admission {
            permits: Arc::new(Semaphore::new(max_connections)),
            max: max_connections,
            lingering: Arc::new(Semaphore::new(MAX_LINGERING)),
            refusals: RateLimited::new(LOG_EVERY),
        }
    }

    /// A permit for a new connection, or `None` at the cap (then [`Admission::refuse`] it).
    pub fn admit(&mut self) -> Option<OwnedSemaphorePermit> {
        match self.permits.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) => {
                if let Some(others) = self.refusals.check() {
                    tracing::warn!(
                        max_connections = self.max,
                        refused_since_last_line = others + 1,
                        "at the connection limit (limits.maxConnections): refusing new \
                         connections with 503 until some close"
                    );
                }
                None
            }
        }
    }

    /// Answer a connection past the cap and close it, without ever blocking the accept loop: a
    /// 503 on plain HTTP; a TLS client could not read one before its handshake, so it is only
    /// closed.
    pub fn refuse(&self, stream: TcpStream, plain_http: bool) {
        if !plain_http {
            return;
        }
        let body = format!(
            r#"{{"errors":[{{"code":"TOOMANYREQUESTS","message":"the registry is serving its maximum of {} connections; retry shortly","detail":null}}]}}"#,
            self.max
        );
        let response = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        // A fresh socket's send buffer is empty: this never blocks and all but never falls short.
        let _ = stream.try_write(response.as_bytes());
        let Ok(permit) = self.lingering.clone().try_acquire_owned() else {
            return;
        };
        tokio::spawn(async move {
            let mut stream = stream;
            let _ = stream.shutdown().await;
            // Closing with unread request bytes would reset the connection and could discard the
            // 503 at the client: read until the client closes, briefly.
            let _ = tokio::time::timeout(LINGER, async {
                let mut sink = [0u8; 4096];
                while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
            })
            .await;
            drop(permit);
        });
    }
}

/// Lets through the first event and then at most one per interval, counting those held back.
pub struct RateLimited {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimited {
    pub fn new(every: Duration) -> RateLimited {
        RateLimited {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// `Some(n)` when this event should be logged, `n` being the events held back since the
    /// last line; `None` to stay quiet.
    pub fn check(&mut self) -> Option<u64> {
        let now = Instant::now();
        match self.last {
            Some(last) if now.duration_since(last) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limited_logs_once_per_interval() {
        let mut r = RateLimited::new(Duration::from_secs(3600));
        assert_eq!(r.check(), Some(0));
        for _ in 0..1000 {
            assert_eq!(r.check(), None);
        }
        r.last = Some(Instant::now() - Duration::from_secs(3601));
        assert_eq!(r.check(), Some(1000));
    }
}
