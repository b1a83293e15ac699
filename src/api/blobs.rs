//! `GET`/`HEAD`/`DELETE /v2/<name>/blobs/<digest>`, with single `Range` requests.

use hyper::body::Incoming;
use hyper::header::{ACCEPT_RANGES, CACHE_CONTROL, CONTENT_RANGE, ETAG, RANGE};
use hyper::{Request, StatusCode};

use super::header;
use super::response::{Reply, DOCKER_CONTENT_DIGEST};
use crate::oci::{Digest, Error, ErrorCode, RepositoryName, Result};
use crate::store::{blob_unknown, Delivery, Store};

const OCTET_STREAM: &str = "application/octet-stream";

pub fn get(
    store: &Store,
    repo: &RepositoryName,
    digest: &str,
    req: &Request<Incoming>,
    head_only: bool,
) -> Result<Reply> {
    let digest: Digest = digest.parse()?;
    let size = store
        .blob_size(repo, &digest)?
        .ok_or_else(|| blob_unknown(&digest))?;
    let (status, start, len) = match header(req, RANGE)?.map(|r| parse_range(r, size)) {
        None | Some(RangeRequest::Ignore) => (StatusCode::OK, 0, size),
        Some(RangeRequest::Unsatisfiable) => return Ok(unsatisfiable(&digest, size)),
        Some(RangeRequest::Range { start, end }) => {
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
    };
    let mut reply = Reply::new(status)
        .header(DOCKER_CONTENT_DIGEST, digest.to_string())
        .header(ETAG, format!("\"{digest}\""))
        .header(ACCEPT_RANGES, "bytes")
        .header(CACHE_CONTROL, "max-age=31536000");
    if status == StatusCode::PARTIAL_CONTENT {
        reply = reply.header(
            CONTENT_RANGE,
            format!("bytes {start}-{}/{size}", start + len - 1),
        );
    }
    if head_only {
        return Ok(reply
            .header(hyper::header::CONTENT_TYPE, OCTET_STREAM)
            .header(hyper::header::CONTENT_LENGTH, len.to_string()));
    }
    // The server marks connections whose socket sends blob pieces from their files.
    let delivery = req.extensions().get::<Delivery>().copied();
    let stream = store.read_blob(
        &digest,
        start,
        len,
        delivery.unwrap_or(Delivery::FromMemory),
    )?;
    Ok(reply.stream(OCTET_STREAM, len, stream))
}

fn unsatisfiable(digest: &Digest, size: u64) -> Reply {
    let err = Error::new(
        ErrorCode::RangeInvalid,
        format!("requested range is outside the blob's {size} bytes"),
    );
    Reply::new(StatusCode::RANGE_NOT_SATISFIABLE)
        .header(CONTENT_RANGE, format!("bytes */{size}"))
        .header(DOCKER_CONTENT_DIGEST, digest.to_string())
        .bytes("application/json", err.to_json())
}

pub async fn delete(store: &Store, repo: &RepositoryName, digest: &str) -> Result<Reply> {
    let digest: Digest = digest.parse()?;
    store.delete_blob(repo, &digest).await?;
    Ok(Reply::new(StatusCode::ACCEPTED).header(DOCKER_CONTENT_DIGEST, digest.to_string()))
}

#[derive(Debug, PartialEq, Eq)]
enum RangeRequest {
    /// Not a single byte range we serve partially (multiple ranges, other units, bad syntax):
    /// RFC 9110 lets the server answer with the whole content.
    Ignore,
    Unsatisfiable,
    Range {
        start: u64,
        end: u64,
    },
}

fn parse_range(value: &str, size: u64) -> RangeRequest {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeRequest::Ignore;
    };
    if spec.contains(',') {
        return RangeRequest::Ignore;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Ignore;
    };
    let (first, last) = (first.trim(), last.trim());
    // A position is digits; one past u64 is past any blob, so it saturates (a first position
    // that large is unsatisfiable, a last one is the blob's end, a suffix that long is the
    // whole blob) instead of overflowing or being taken for bad syntax.
    let parse = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().unwrap_or(u64::MAX))
    };
    match (first.is_empty(), last.is_empty()) {
        // bytes=-N: the last N bytes
        (true, false) => match parse(last) {
            Some(0) => RangeRequest::Unsatisfiable,
            Some(n) if size > 0 => RangeRequest::Range {
                start: size.saturating_sub(n),
                end: size - 1,
            },
            Some(_) => RangeRequest::Unsatisfiable,
            None => RangeRequest::Ignore,
        },
        (false, _) => {
            let Some(start) = parse(first) else {
                return RangeRequest::Ignore;
            };
            let end = if last.is_empty() {
                Some(u64::MAX)
            } else {
                parse(last)
            };
            let Some(end) = end else {
                return RangeRequest::Ignore;
            };
            if end < start {
                return RangeRequest::Ignore;
            }
            if start >= size {
                return RangeRequest::Unsatisfiable;
            }
            RangeRequest::Range {
                start,
                end: end.min(size - 1),
            }
        }
        (true, true) => RangeRequest::Ignore,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use RangeRequest::*;
        assert_eq!(parse_range("bytes=0-9", 100), Range { start: 0, end: 9 });
        assert_eq!(parse_range("bytes=90-", 100), Range { start: 90, end: 99 });
        assert_eq!(
            parse_range("bytes=90-1000", 100),
            Range { start: 90, end: 99 }
        );
        assert_eq!(parse_range("bytes=-10", 100), Range { start: 90, end: 99 });
        assert_eq!(parse_range("bytes=-1000", 100), Range { start: 0, end: 99 });
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-", 0), Unsatisfiable);
        assert_eq!(parse_range("bytes=0-1,3-4", 100), Ignore);
        assert_eq!(parse_range("items=0-1", 100), Ignore);
        assert_eq!(parse_range("bytes=5-1", 100), Ignore);
        assert_eq!(parse_range("bytes=x-1", 100), Ignore);
        assert_eq!(parse_range("bytes=+1-2", 100), Ignore);
        // Positions past u64 are past any blob.
        let huge = "99999999999999999999999";
        assert_eq!(
            parse_range(&format!("bytes=0-{huge}"), 100),
            Range { start: 0, end: 99 }
        );
        assert_eq!(
            parse_range(&format!("bytes=-{huge}"), 100),
            Range { start: 0, end: 99 }
        );
        assert_eq!(parse_range(&format!("bytes={huge}-"), 100), Unsatisfiable);
        assert_eq!(
            parse_range(&format!("bytes={huge}-{huge}"), 100),
            Unsatisfiable
        );
        assert_eq!(
            parse_range("bytes=18446744073709551615-18446744073709551615", 100),
            Unsatisfiable
        );
        assert_eq!(
            parse_range("bytes=0-18446744073709551615", u64::MAX),
            Range {
                start: 0,
                end: u64::MAX - 1
            }
        );
    }
}
