//! Reading the parent's answers within bounds: at most so many bytes, and no slower than
//! [`MIN_TRANSFER_RATE`].
//!
//! It exists because a parent (or a link) that drips one byte a second never trips a silence
//! timeout, yet would hold a pass for days: every body read here — documents and blobs — must
//! bring its share of bytes in each [`RATE_WINDOW`].

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use reqwest::Response;

use super::chain;

/// The slowest body tolerated, in bytes per second, averaged over each [`RATE_WINDOW`]: a
/// manifest, a listing page or a blob that drips slower ends (a blob resumes where it stopped),
/// so no answer can hold a pass for long.
pub const MIN_TRANSFER_RATE: u64 = 1024;
/// The window [`MIN_TRANSFER_RATE`] is measured over; also the longest silence tolerated in the
/// middle of a body.
pub const RATE_WINDOW: Duration = Duration::from_secs(10);

/// Why a body could not be read.
pub(super) enum BodyError {
    /// The connection broke: worth another attempt.
    Transient(String),
    /// Slower than [`MIN_TRANSFER_RATE`] (or silent for a [`RATE_WINDOW`]).
    TooSlow(String),
    TooLarge(usize),
}

/// Enforces [`MIN_TRANSFER_RATE`] on one body: every [`RATE_WINDOW`] must have brought its share.
pub(super) struct RateGuard {
    min_rate: u64,
    window_start: Instant,
    bytes: u64,
}

impl RateGuard {
    pub(super) fn new(min_rate: u64) -> RateGuard {
        RateGuard {
            min_rate,
            window_start: Instant::now(),
            bytes: 0,
        }
    }

    /// How long the next piece of the body may take before the window is judged.
    pub(super) fn wait(&self) -> Duration {
        (self.window_start + RATE_WINDOW)
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(10))
    }

    /// Time spent waiting on this node (the bandwidth limit) does not count against the parent.
    pub(super) fn pause(&mut self, waited: Duration) {
        self.window_start += waited;
    }

    /// Count `n` more bytes; at the end of a window, fail if it brought too few.
    pub(super) fn check(&mut self, n: u64) -> Result<(), String> {
        self.bytes += n;
        let elapsed = self.window_start.elapsed();
        if elapsed < RATE_WINDOW {
            return Ok(());
        }
        let needed = (self.min_rate as f64 * elapsed.as_secs_f64()) as u64;
        if self.bytes < needed {
            return Err(format!(
                "{} bytes in {}s, slower than the minimum of {} bytes/s",
                self.bytes,
                elapsed.as_secs(),
                self.min_rate
            ));
        }
        self.window_start = Instant::now();
        self.bytes = 0;
        Ok(())
    }
}

/// Read a body whole, at most `limit` bytes, no slower than [`MIN_TRANSFER_RATE`].
pub(super) async fn read_body(resp: &mut Response, limit: usize) -> Result<Bytes, BodyError> {
    if let Some(len) = resp.content_length() {
        if len > limit as u64 {
            return Err(BodyError::TooLarge(limit));
        }
    }
    let mut buf = BytesMut::new();
    let mut guard = RateGuard::new(MIN_TRANSFER_RATE);
    loop {
        let n = match tokio::time::timeout(guard.wait(), resp.chunk()).await {
            Ok(Ok(Some(chunk))) => {
                if buf.len() + chunk.len() > limit {
                    return Err(BodyError::TooLarge(limit));
                }
                buf.extend_from_slice(&chunk);
                chunk.len() as u64
            }
            Ok(Ok(None)) => return Ok(buf.freeze()),
            Ok(Err(e)) => return Err(BodyError::Transient(chain(&e))),
            Err(_) => 0,
        };
        guard.check(n).map_err(BodyError::TooSlow)?;
    }
}

/// Like [`read_body`], for error answers whose body only feeds a message.
pub(super) async fn read_whole(resp: &mut Response, limit: usize) -> Option<Bytes> {
    read_body(resp, limit).await.ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_guard_fails_a_drip_and_passes_a_stream() {
        let mut guard = RateGuard::new(1000);
        guard.window_start -= RATE_WINDOW;
        assert!(guard.check(10).is_err());
        let mut guard = RateGuard::new(1000);
        guard.window_start -= RATE_WINDOW;
        assert!(guard.check(1 << 20).is_ok());
        assert!(guard.check(0).is_ok(), "a new window has begun");
    }
}
