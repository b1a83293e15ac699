//! What "idle" means for a connection, so that no connection is held forever.
//!
//! A connection makes progress when a request starts or ends and when a frame of a response body
//! is produced. It is idle when no request handler is running and it has made no progress for the
//! idle timeout: that covers a socket that sent nothing at all (not even enough bytes to tell
//! HTTP/1 from HTTP/2), an HTTP/2 connection with no open stream (whatever pings or settings it
//! exchanges), an HTTP/1 keep-alive connection between requests, and a response stuck because its
//! client stopped reading. A running handler is not idle: it is bounded by its own limits (the
//! body idle timeout while it reads, the change feed's wait).

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Buf;
use http_body::{Body, Frame, SizeHint};
use prometheus_client::metrics::counter::Counter;
use tokio::time::Instant;

/// The progress of one connection, shared by its service and its watchdog.
pub struct Activity {
    born: Instant,
    /// Milliseconds after `born` of the last progress.
    last_progress_ms: AtomicU64,
    /// Request handlers running (their futures not yet resolved into a response).
    handlers: AtomicUsize,
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            born: Instant::now(),
            last_progress_ms: AtomicU64::new(0),
            handlers: AtomicUsize::new(0),
        })
    }

    /// Note progress now.
    pub fn progress(&self) {
        let now = self.born.elapsed().as_millis() as u64;
        self.last_progress_ms.fetch_max(now, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_progress_ms.load(Ordering::Relaxed));
        self.born.elapsed().saturating_sub(last)
    }

    /// A running handler; the connection is not idle until it is dropped.
    pub fn handling(self: &Arc<Self>) -> Handling {
        self.handlers.fetch_add(1, Ordering::AcqRel);
        self.progress();
        Handling(self.clone())
    }

    /// A response body that notes progress whenever it yields a frame and adds the length of
    /// each data frame to `sent` as the connection takes it (so "bytes out" is what actually
    /// flowed: a client that hangs up halfway counts only what it was sent).
    pub fn track<B>(self: &Arc<Self>, body: B, sent: Counter) -> Tracked<B> {
        Tracked {
            inner: body,
            activity: self.clone(),
            sent,
        }
    }

    /// Resolves once the connection has been idle for `timeout`.
    pub async fn until_idle(&self, timeout: Duration) {
        loop {
            let wait = if self.handlers.load(Ordering::Acquire) > 0 {
                timeout
            } else {
                match timeout.checked_sub(self.idle_for()) {
                    Some(left) if !left.is_zero() => left,
                    _ => return,
                }
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// Guard of a running handler (see [`Activity::handling`]).
pub struct Handling(Arc<Activity>);

impl Drop for Handling {
    fn drop(&mut self) {
        self.0.progress();
        self.0.handlers.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body whose frames count as progress and bytes sent (see [`Activity::track`]).
pub struct Tracked<B> {
    inner: B,
    activity: Arc<Activity>,
    sent: Counter,
}

impl<B> Body for Tracked<B>
where
    B: Body + Unpin,
    B::Data: Buf,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if polled.is_ready() {
            this.activity.progress();
        }
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                this.sent.inc_by(data.remaining() as u64);
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for Tracked<B> {
    fn drop(&mut self) {
        self.activity.progress();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_only_without_handlers_and_progress() {
        let activity = Activity::new();
        let timeout = Duration::from_millis(200);
        let started = Instant::now();
        let handler = activity.handling();
        let watchdog = tokio::spawn({
            let activity = activity.clone();
            async move { activity.until_idle(timeout).await }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!watchdog.is_finished(), "a running handler is not idle");
        drop(handler);
        watchdog.await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(700));
    }

    #[tokio::test]
    async fn data_frames_are_counted_as_they_are_taken() {
        use http_body_util::{BodyExt, Full};
        let sent = Counter::default();
        let body = Full::new(bytes::Bytes::from_static(b"hello"));
        let body = Activity::new().track(body, sent.clone());
        assert_eq!(sent.get(), 0);
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"hello");
        assert_eq!(sent.get(), 5);
    }
}
