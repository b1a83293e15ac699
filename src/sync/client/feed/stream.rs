//! Reading the change feed as a stream (the parent's `cr-changes/1` upgrade): one page per line,
//! an empty page as a heartbeat, one line of OCI error JSON before the parent ends it.
//!
//! Apart from the request side because it is a small line protocol of its own, and everything
//! the parent sends on it is bounded here: a line is at most `MAX_JSON_BYTES`, a stream that
//! sends nothing (not even its heartbeat) for too long is given up, and whatever ends a stream
//! (the parent closes it, the link breaks, a line is cut) only means "ask again".

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::time::Instant;

use super::super::{SyncError, MAX_JSON_BYTES};
use super::{expired_latest, ChangesPage};

/// Bytes read from the socket at once; the whole lines among them are taken together.
const READ_BUFFER: usize = 64 << 10;

/// An open stream of change-feed pages.
pub struct FeedStream {
    reader: BufReader<reqwest::Upgraded>,
    /// The start of a line not yet whole (a read cut short by the caller's `wait`).
    partial: Vec<u8>,
    /// Longest time without a line (the heartbeat plus a margin) before the stream is given up.
    silence: Duration,
    last_line: Instant,
    lines: u64,
}

impl FeedStream {
    pub(in super::super) fn new(upgraded: reqwest::Upgraded, silence: Duration) -> FeedStream {
        FeedStream {
            reader: BufReader::with_capacity(READ_BUFFER, upgraded),
            partial: Vec::new(),
            silence,
            last_line: Instant::now(),
            lines: 0,
        }
    }

    /// Lines (pages and heartbeats) this stream brought.
    pub fn lines_read(&self) -> u64 {
        self.lines
    }

    /// The next page after `since`: every whole line that has arrived, as one page. An empty
    /// page at `since` when nothing arrived within `wait` (the stream stays open); `Ok(None)`
    /// when the stream ended (closed, broken, or silent past its heartbeat): ask again.
    pub async fn next_page(
        &mut self,
        since: u64,
        wait: Duration,
    ) -> Result<Option<ChangesPage>, SyncError> {
        let silent_at = self.last_line + self.silence;
        let until = silent_at.min(Instant::now() + wait);
        let line = match tokio::time::timeout_at(until, self.read_line()).await {
            Ok(line) => line?,
            Err(_) if Instant::now() >= silent_at => {
                tracing::info!(
                    silent_s = self.silence.as_secs(),
                    "the change-feed stream sent nothing, not even its heartbeat; asking again"
                );
                None
            }
            Err(_) => {
                return Ok(Some(ChangesPage {
                    events: Vec::new(),
                    next: since,
                }))
            }
        };
        let Some(line) = line else {
            return Ok(None);
        };
        let mut page = parse(&line, since)?;
        // Lines already here join this page (no waiting for more).
        while self.reader.buffer().contains(&b'\n') {
            let Some(line) = self.read_line().await? else {
                break;
            };
            let more = parse(&line, page.next)?;
            page.events.extend(more.events);
            page.next = page.next.max(more.next);
        }
        Ok(Some(page))
    }

    /// One whole line; `None` at the end of the stream or when the connection fails. Bytes
    /// read before a cancellation stay in `partial` for the next call.
    async fn read_line(&mut self) -> Result<Option<Vec<u8>>, SyncError> {
        loop {
            let room = (MAX_JSON_BYTES + 1).saturating_sub(self.partial.len()) as u64;
            let read = (&mut self.reader)
                .take(room)
                .read_until(b'\n', &mut self.partial)
                .await;
            match read {
                Ok(_) if self.partial.ends_with(b"\n") => {
                    self.last_line = Instant::now();
                    self.lines += 1;
                    return Ok(Some(std::mem::take(&mut self.partial)));
                }
                Ok(0) => return Ok(None),
                Ok(_) if self.partial.len() > MAX_JSON_BYTES => {
                    return Err(SyncError::Refused(format!(
                        "a change-feed stream line is larger than {MAX_JSON_BYTES} bytes"
                    )))
                }
                Ok(_) => continue,
                Err(e) => {
                    tracing::info!(error = %e, "the change-feed stream broke; asking again");
                    return Ok(None);
                }
            }
        }
    }
}

/// One line: a page, or the error the parent ended the stream with.
fn parse(line: &[u8], since: u64) -> Result<ChangesPage, SyncError> {
    let line = line.trim_ascii();
    if line.starts_with(br#"{"errors""#) {
        let value: serde_json::Value = serde_json::from_slice(line).unwrap_or_default();
        let error = &value["errors"][0];
        if error["code"] == "MESSAGES_EXPIRED" {
            return Err(SyncError::MessagesExpired {
                since,
                latest: expired_latest(line).unwrap_or(since),
            });
        }
        return Err(SyncError::Protocol(format!(
            "the parent ended the change-feed stream: {}: {}",
            error["code"].as_str().unwrap_or("?"),
            error["message"].as_str().unwrap_or("")
        )));
    }
    serde_json::from_slice(line)
        .map_err(|e| SyncError::Protocol(format!("invalid change feed page in the stream: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_pages_and_errors() {
        let page = parse(br#"{"events":[],"next":7}"#, 3).unwrap();
        assert_eq!((page.events.len(), page.next), (0, 7));
        match parse(
            br#"{"errors":[{"code":"MESSAGES_EXPIRED","message":"m","detail":{"since":3,"latest":42}}]}"#,
            3,
        ) {
            Err(SyncError::MessagesExpired { since: 3, latest: 42 }) => {}
            other => panic!("{other:?}"),
        }
        match parse(br#"{"errors":[{"code":"DENIED","message":"no"}]}"#, 3) {
            Err(SyncError::Protocol(m)) => assert!(m.contains("DENIED: no"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse(b"garbage", 3), Err(SyncError::Protocol(_))));
    }
}
