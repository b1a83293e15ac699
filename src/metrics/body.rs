//! A response body that counts the bytes it hands to the connection, so "bytes out" is what
//! actually flowed: a client that hangs up halfway counts only what it was sent.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Buf;
use hyper::body::{Body, Frame, SizeHint};
use prometheus_client::metrics::counter::Counter;

/// `inner`, adding the length of each data frame to a counter as the frame is taken.
pub struct CountedBody<B> {
    inner: B,
    sent: Counter,
}

impl<B> CountedBody<B> {
    pub(super) fn new(inner: B, sent: Counter) -> CountedBody<B> {
        CountedBody { inner, sent }
    }
}

impl<B> Body for CountedBody<B>
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

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    #[tokio::test]
    async fn data_frames_are_counted_as_they_are_taken() {
        let sent = Counter::default();
        let body = CountedBody::new(Full::new(bytes::Bytes::from_static(b"hello")), sent.clone());
        assert_eq!(sent.get(), 0);
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"hello");
        assert_eq!(sent.get(), 5);
    }
}
