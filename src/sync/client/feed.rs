//! The parent's change feed (`GET /acr/connected-registry/v1/changes`): one long-poll at a time,
//! and the 410 `MESSAGES_EXPIRED` answer that sends the child back to a full reconcile.
//!
//! It is apart because only a connected-registry parent has it; against any other parent the
//! probe fails and the sync loop polls instead.

use std::time::Duration;

use reqwest::{Method, StatusCode};

use super::{unexpected, ParentClient, Req, SyncError, MAX_JSON_BYTES};

/// Extra time a long-poll of the change feed gets beyond the `wait` it asked the parent for.
const LONG_POLL_MARGIN: Duration = Duration::from_secs(30);

/// One page of the parent's change feed.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ChangesPage {
    pub events: Vec<crate::store::ChangeEvent>,
    pub next: u64,
}

impl ParentClient {
    /// Long-poll the change feed: events after `since`, waiting up to `wait_secs` for one.
    pub async fn changes(&self, since: u64, wait_secs: u64) -> Result<ChangesPage, SyncError> {
        let ttl = self
            .message_ttl
            .map(|t| format!("&ttl={}", t.as_secs()))
            .unwrap_or_default();
        let url = self.url(&format!(
            "/acr/connected-registry/v1/changes?since={since}&wait={wait_secs}{ttl}"
        ))?;
        let mut req = Req::new(Method::GET, url, "feed");
        req.wait = Duration::from_secs(wait_secs.min(24 * 3600)) + LONG_POLL_MARGIN;
        let f = self.fetch(&req, MAX_JSON_BYTES).await?;
        match f.status {
            StatusCode::GONE => Err(SyncError::MessagesExpired {
                since,
                latest: expired_latest(&f.body).unwrap_or(since),
            }),
            StatusCode::NOT_FOUND => Err(SyncError::Protocol("parent has no change feed".into())),
            s if s.is_success() => serde_json::from_slice(&f.body)
                .map_err(|e| SyncError::Protocol(format!("invalid change feed page: {e}"))),
            _ => Err(unexpected(&req, &f)),
        }
    }
}

/// `latest` from the detail of a 410 `MESSAGES_EXPIRED` body.
fn expired_latest(body: &[u8]) -> Option<u64> {
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
