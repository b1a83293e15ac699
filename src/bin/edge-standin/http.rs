//! Small HTTP/1.1 pieces the workload API and the control API share: JSON responses, the
//! `{"message": …}` error shape both use, bounded body reads, query parameters, and a
//! connection loop that serves any stream with a handler.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};

pub type Reply = Response<Full<Bytes>>;

/// A JSON response.
pub fn json_reply(status: StatusCode, body: &Value) -> Reply {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"null".to_vec());
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(bytes)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

/// `{"message": msg}` with `status`, the error shape of the workload API.
pub fn message(status: StatusCode, msg: impl Into<String>) -> Reply {
    json_reply(status, &json!({"message": msg.into()}))
}

/// A refused request: the status and the text of its `{"message": …}` answer (small, so
/// `Result`s carrying it stay cheap).
#[derive(Debug)]
pub struct Refusal {
    pub status: StatusCode,
    pub message: String,
}

impl Refusal {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            message: message.into(),
        }
    }
}

impl From<Refusal> for Reply {
    fn from(r: Refusal) -> Reply {
        message(r.status, r.message)
    }
}

/// Read a request body of at most `limit` bytes; 413 past that.
pub async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, Refusal> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                Err(Refusal::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("request body is over {limit} bytes"),
                ))
            } else {
                Err(Refusal::new(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the request body: {e}"),
                ))
            }
        }
    }
}

/// Parse a JSON body; 400 with a clear message when it is not JSON.
pub fn parse_json(bytes: &[u8]) -> Result<Value, Refusal> {
    serde_json::from_slice(bytes).map_err(|e| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            format!("request body is not valid JSON: {e}"),
        )
    })
}

/// The first value of query parameter `name` (percent-decoded), if present.
pub fn query_param(req: &Request<Incoming>, name: &str) -> Option<String> {
    let query = req.uri().query()?;
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// Percent-decode `s` (`+` stays a `+`); invalid escapes are kept as they are.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Serve HTTP/1.1 on `stream`, answering each request with `handler`.
pub fn serve<S, H, F>(stream: S, handler: Arc<H>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>) -> F + Send + Sync + 'static,
    F: Future<Output = Reply> + Send + 'static,
{
    tokio::spawn(async move {
        let service = hyper::service::service_fn(move |req| {
            let handler = handler.clone();
            async move { Ok::<_, Infallible>(handler(req).await) }
        });
        if let Err(e) = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await
        {
            tracing::debug!("HTTP connection ended with an error: {e}");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn decodes() {
        assert_eq!(percent_decode("%24.on"), "$.on");
        assert_eq!(percent_decode("a+b%20c"), "a+b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(percent_decode("%zz%2F"), "%zz/");
        assert_eq!(percent_decode("caf%C3%A9"), "café");
    }
}
