//! Response shapes: every handler answers through these, so headers common to all responses and
//! the OCI error JSON are written in one place.

use std::future::Future;
use std::io;
use std::pin::Pin;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full, StreamBody};
use hyper::body::Frame;
use hyper::header::{HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Response, StatusCode};

use crate::oci::{Error, ErrorCode, Result};

pub type Body = UnsyncBoxBody<Bytes, io::Error>;

pub const DOCKER_CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");
pub const DOCKER_UPLOAD_UUID: HeaderName = HeaderName::from_static("docker-upload-uuid");
pub const DOCKER_API_VERSION: HeaderName =
    HeaderName::from_static("docker-distribution-api-version");
pub const OCI_SUBJECT: HeaderName = HeaderName::from_static("oci-subject");
pub const OCI_FILTERS_APPLIED: HeaderName = HeaderName::from_static("oci-filters-applied");

pub fn empty_body() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

pub fn full_body(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn stream_body<S>(stream: S) -> Body
where
    S: Stream<Item = io::Result<Bytes>> + Send + 'static,
{
    StreamBody::new(stream.map(|r| r.map(Frame::data))).boxed_unsync()
}

/// The rest of a request that waits before it can answer (a change-feed long-poll): a small
/// future that makes the reply once the wait ends. The server runs it after it has freed the
/// request's own state, which is many times larger, so a waiting request costs only this.
pub type Waiting = Pin<Box<dyn Future<Output = Result<Reply>> + Send>>;

/// A response under construction; `header` silently skips values that are not valid header
/// text (they only ever come from our own formatting).
pub struct Reply {
    inner: Response<Body>,
    /// Set by [`Reply::after`]: the reply is made by this wait.
    wait: Option<Waiting>,
}

impl Reply {
    pub fn new(status: StatusCode) -> Reply {
        let mut inner = Response::new(empty_body());
        *inner.status_mut() = status;
        inner
            .headers_mut()
            .insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        Reply { inner, wait: None }
    }

    /// The reply `wait` makes when it ends, for a request that waits (see [`Waiting`]).
    pub fn after(wait: impl Future<Output = Result<Reply>> + Send + 'static) -> Reply {
        Reply {
            inner: Response::new(empty_body()),
            wait: Some(Box::pin(wait)),
        }
    }

    /// The wait that makes this reply, if it is one made by [`Reply::after`].
    pub fn take_wait(&mut self) -> Option<Waiting> {
        self.wait.take()
    }

    pub fn header(mut self, name: HeaderName, value: impl AsRef<str>) -> Reply {
        if let Ok(v) = HeaderValue::from_str(value.as_ref()) {
            self.inner.headers_mut().insert(name, v);
        }
        self
    }

    /// No `Content-Length` (an answer that has no body at all: `101`).
    pub fn without_length(mut self) -> Reply {
        self.inner.headers_mut().remove(CONTENT_LENGTH);
        self
    }

    /// A body whose length is known; sets `Content-Length`.
    pub fn bytes(mut self, content_type: &str, bytes: impl Into<Bytes>) -> Reply {
        let bytes = bytes.into();
        let len = bytes.len();
        *self.inner.body_mut() = full_body(bytes);
        self.header(CONTENT_TYPE, content_type)
            .header(CONTENT_LENGTH, len.to_string())
    }

    pub fn json(self, value: &impl serde::Serialize) -> Reply {
        let bytes = serde_json::to_vec(value).expect("responses serialise");
        self.bytes("application/json", bytes)
    }

    /// A streamed body of `len` bytes.
    pub fn stream<S>(mut self, content_type: &str, len: u64, stream: S) -> Reply
    where
        S: Stream<Item = io::Result<Bytes>> + Send + 'static,
    {
        *self.inner.body_mut() = stream_body(stream);
        self.header(CONTENT_TYPE, content_type)
            .header(CONTENT_LENGTH, len.to_string())
    }

    /// A streamed body whose length is not known in advance (sent chunked on HTTP/1.1), for
    /// answers produced piece by piece so they are never held whole.
    pub fn stream_unsized<S>(mut self, content_type: &str, stream: S) -> Reply
    where
        S: Stream<Item = io::Result<Bytes>> + Send + 'static,
    {
        *self.inner.body_mut() = stream_body(stream);
        self.inner.headers_mut().remove(CONTENT_LENGTH);
        self.header(CONTENT_TYPE, content_type)
    }

    /// The response. A reply that is still a wait ([`Reply::after`]) is taken apart by
    /// [`Reply::take_wait`] first; one that reaches here (a wait whose reply waits again) is a
    /// mistake of ours, answered as an internal error.
    pub fn build(self) -> Response<Body> {
        if self.wait.is_some() {
            tracing::error!("a waiting reply was answered before its wait ran");
            return internal_error_response();
        }
        self.inner
    }
}

/// The answer to a mistake of ours (a handler that panicked, a reply answered before its wait
/// ran): a 500 with `UNKNOWN`, and nothing of the mistake shown to the client.
pub fn internal_error_response() -> Response<Body> {
    error_response(&Error::new(ErrorCode::Unknown, "internal error"))
}

/// Render any error as OCI error JSON with its status.
pub fn error_response(err: &Error) -> Response<Body> {
    let status =
        StatusCode::from_u16(err.code().http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    Reply::new(status)
        .bytes("application/json", err.to_json())
        .build()
}
