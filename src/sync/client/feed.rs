//! The parent's change feed (`GET /acr/connected-registry/v1/changes`): one long-poll at a time,
//! and the 410 `MESSAGES_EXPIRED` answer that sends the child back to a full reconcile.
//!
//! It is apart because only a connected-registry parent has it; against any other parent the
//! probe fails and the sync loop polls instead. [`stream`] reads the feed as a stream, where
//! the parent offers one.

mod stream;

use std::time::Duration;

use reqwest::{header, Method, StatusCode};

use super::body::read_body;
use super::{
    transient_body_error, unexpected, Fetched, ParentClient, Req, SyncError, MAX_JSON_BYTES,
};
pub use stream::FeedStream;

/// The `Upgrade` token of the streamed change feed.
const STREAM_PROTOCOL: &str = "cr-changes/1";

/// Extra time a long-poll of the change feed gets beyond the `wait` it asked the parent for.
const LONG_POLL_MARGIN: Duration = Duration::from_secs(30);

/// One page of the parent's change feed.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ChangesPage {
    pub events: Vec<crate::store::ChangeEvent>,
    pub next: u64,
}

/// What a request for the feed as a stream brought.
pub enum FeedAnswer {
    /// The parent streams: pages come from this.
    Stream(FeedStream),
    /// The parent answered as a long-poll (it does not stream, or the upgrade was lost on the
    /// way: an HTTP/2 connection, a proxy).
    Page(ChangesPage),
}

impl ParentClient {
    /// Long-poll the change feed: events after `since`, waiting up to `wait_secs` for one.
    pub async fn changes(&self, since: u64, wait_secs: u64) -> Result<ChangesPage, SyncError> {
        let req = self.changes_request(since, wait_secs, "")?;
        let f = self.fetch(&req, MAX_JSON_BYTES).await?;
        page_from(&req, since, &f)
    }

    /// Ask for the change feed as a stream (`Upgrade: cr-changes/1`) with an empty page every
    /// `heartbeat` while nothing happens. The same request is a long-poll of `wait_secs` to a
    /// parent that does not stream.
    pub async fn stream_changes(
        &self,
        since: u64,
        wait_secs: u64,
        heartbeat: Duration,
    ) -> Result<FeedAnswer, SyncError> {
        let heartbeat_secs = heartbeat.as_secs().max(1);
        let mut req = self
            .changes_request(since, wait_secs, &format!("&heartbeat={heartbeat_secs}"))?
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, STREAM_PROTOCOL);
        // A TLS parent offers HTTP/2, where nothing upgrades: the stream asks for HTTP/1.1.
        req.http1_only = true;
        let mut resp = self.send(&req).await?;
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            let upgraded = resp.upgrade().await.map_err(|e| {
                SyncError::ParentUnreachable(format!("{}: upgrade failed: {e}", req.describe()))
            })?;
            let silence = Duration::from_secs(heartbeat_secs) + LONG_POLL_MARGIN;
            return Ok(FeedAnswer::Stream(FeedStream::new(upgraded, silence)));
        }
        let status = resp.status();
        let headers = resp.headers().clone();
        // A long-poll's answer is not asked for again here: the follower's next request is.
        let body = read_body(&mut resp, MAX_JSON_BYTES).await.map_err(|e| {
            match transient_body_error(&req, e) {
                Ok(why) => SyncError::Transfer(format!("{}: {why}", req.describe())),
                Err(error) => error,
            }
        })?;
        let f = Fetched {
            status,
            headers,
            body,
        };
        page_from(&req, since, &f).map(FeedAnswer::Page)
    }

    /// `GET …/changes` from `since`, waiting `wait_secs`, with this child's TTL and `extra`.
    fn changes_request(&self, since: u64, wait_secs: u64, extra: &str) -> Result<Req, SyncError> {
        let ttl = self
            .message_ttl
            .map(|t| format!("&ttl={}", t.as_secs()))
            .unwrap_or_default();
        let url = self.url(&format!(
            "/acr/connected-registry/v1/changes?since={since}&wait={wait_secs}{ttl}{extra}"
        ))?;
        let mut req = Req::new(Method::GET, url, "feed");
        req.wait = Duration::from_secs(wait_secs.min(24 * 3600)) + LONG_POLL_MARGIN;
        Ok(req)
    }
}

/// Follows the change feed: over a stream while the parent offers one, else by long-polls.
pub struct FeedFollower {
    stream: Option<FeedStream>,
    /// False once the parent answered a stream request as a long-poll: it does not stream.
    streams: bool,
    heartbeat: Duration,
}

impl FeedFollower {
    /// A stream asks for an empty page every `heartbeat` while nothing happens.
    pub fn new(heartbeat: Duration) -> FeedFollower {
        FeedFollower {
            stream: None,
            streams: true,
            heartbeat,
        }
    }

    /// The next page after `since`, waiting up to `wait_secs`. `Ok(None)`: a stream ended
    /// before it brought a line (a parent that closes at once): ask again after a pause. A
    /// stream that ended after bringing lines is opened again at once.
    pub async fn next(
        &mut self,
        client: &ParentClient,
        since: u64,
        wait_secs: u64,
    ) -> Result<Option<ChangesPage>, SyncError> {
        let wait = Duration::from_secs(wait_secs);
        if let Some(stream) = self.stream.as_mut() {
            match stream.next_page(since, wait).await {
                Ok(Some(page)) => return Ok(Some(page)),
                Ok(None) if stream.lines_read() > 0 => self.stream = None,
                other => {
                    self.stream = None;
                    return other;
                }
            }
        }
        if !self.streams {
            return client.changes(since, wait_secs).await.map(Some);
        }
        match client
            .stream_changes(since, wait_secs, self.heartbeat)
            .await?
        {
            FeedAnswer::Page(page) => {
                tracing::info!(
                    "the parent answered a change-feed stream request as a long-poll; long-polling"
                );
                self.streams = false;
                Ok(Some(page))
            }
            FeedAnswer::Stream(stream) => {
                tracing::debug!("following the parent's change feed over a stream");
                let stream = self.stream.insert(stream);
                let page = stream.next_page(since, wait).await;
                if !matches!(page, Ok(Some(_))) {
                    self.stream = None;
                }
                page
            }
        }
    }
}

/// A long-poll answer: a page, 410 `MESSAGES_EXPIRED`, or an error naming what came back.
fn page_from(req: &Req, since: u64, f: &Fetched) -> Result<ChangesPage, SyncError> {
    match f.status {
        StatusCode::GONE => Err(SyncError::MessagesExpired {
            since,
            latest: expired_latest(&f.body).unwrap_or(since),
        }),
        StatusCode::NOT_FOUND => Err(SyncError::Protocol("parent has no change feed".into())),
        s if s.is_success() => serde_json::from_slice(&f.body)
            .map_err(|e| SyncError::Protocol(format!("invalid change feed page: {e}"))),
        _ => Err(unexpected(req, f)),
    }
}

/// `latest` from the detail of a 410 `MESSAGES_EXPIRED` body.
pub(super) fn expired_latest(body: &[u8]) -> Option<u64> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value
        .get("errors")?
        .as_array()?
        .iter()
        .find_map(|e| e.get("detail")?.get("latest")?.as_u64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expired_latest_from_bodies() {
        assert_eq!(
            expired_latest(
                br#"{"errors":[{"code":"MESSAGES_EXPIRED","message":"m","detail":{"since":3,"latest":42}}]}"#
            ),
            Some(42)
        );
        assert_eq!(expired_latest(b"gone"), None);
    }
}
