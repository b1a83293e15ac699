//! The change log's lifetime and the long-poll over it: the parent side of the change feed.
//!
//! Every manifest transaction appends events to the `changes` tree (see `metadata::record_change`).
//! Children read them through `GET /acr/connected-registry/v1/changes`, waiting here for new ones.
//! Events older than the retention are pruned, oldest first; the highest pruned sequence number
//! is persisted (`change_meta` tree, key `pruned_through`), so a child whose cursor points into the
//! pruned part is told its cursor expired (410 `MESSAGES_EXPIRED`) and reconciles in full instead
//! of silently missing events.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sled::transaction::ConflictableTransactionError;
use sled::Transactional;

use super::feed_tail::{EventPage, Tail};
use super::feed_turns::Turns;
use super::metadata::{decode_u64, ChangeEvent};
use super::Store;
use crate::oci::{Error, ErrorCode, Result};

/// How long change events are kept. The parent does not know each child's `messageTtl`
/// (1 d – 90 d) before activation exists, so it keeps them for the longest a child may ask for.
pub const CHANGE_RETENTION: Duration = Duration::from_secs(90 * 24 * 60 * 60);

/// How often the background pruner runs (it also runs once at start).
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(10 * 60);

/// Events deleted per transaction while pruning, so one prune never builds a huge transaction.
const PRUNE_BATCH: usize = 1000;

/// Groups the waiting long-polls are spread over ([`super::feed_turns`]): at 10 000 children a
/// group is ~600 answers, ~15 ms of a root's CPU. 16, 64 and 256 measured alike at 10 000
/// children and 100 pushes a second (BENCHMARKS.md, "Long-polls woken in turn").
const LONG_POLL_GROUPS: usize = 16;

const META_TREE: &str = "change_meta";
const PRUNED_THROUGH: &[u8] = b"pruned_through";

/// What the feed keeps beside the log, so that a long-poll answer reads nothing it need not:
/// after an event every waiting child (thousands, on a root) asks at once, nearly all from the
/// same cursor.
pub(super) struct Feed {
    meta: sled::Tree,
    /// `pruned_through` as persisted, raised before a prune deletes anything (so a reader that
    /// sees a gap also sees it expired).
    pruned_through: AtomicU64,
    /// The page last read, handed to every long-poll asking for the same one.
    last_page: Mutex<Option<Page>>,
    /// The log's newest events, for pages from any other recent cursor (streams drift apart).
    tail: Tail,
    /// Long-polls wait here, woken a group at a time.
    long_polls: Turns,
}

/// The durable events after `since` through `through`, at most `limit` of them. Durable events
/// never change, so the page stays right for as long as `since` is not pruned (checked on every
/// answer).
struct Page {
    since: u64,
    through: u64,
    limit: usize,
    events: EventPage,
}

impl Feed {
    /// The feed of `db`, whose newest durable event is `newest`.
    pub(super) fn open(db: &sled::Db, newest: u64) -> Result<Feed> {
        let meta = db.open_tree(META_TREE)?;
        let pruned = meta.get(PRUNED_THROUGH)?.map_or(0, |v| decode_u64(&v));
        Ok(Feed {
            meta,
            pruned_through: AtomicU64::new(pruned),
            last_page: Mutex::new(None),
            tail: Tail::new(newest),
            long_polls: Turns::new(newest, LONG_POLL_GROUPS),
        })
    }
}

impl Store {
    /// Sequence number of the newest event removed by pruning (0 = nothing was ever pruned).
    pub fn pruned_through(&self) -> u64 {
        self.feed.pruned_through.load(Ordering::SeqCst)
    }

    /// Sequence number of the oldest retained change event, if any.
    pub fn oldest_change_seq(&self) -> Result<Option<u64>> {
        Ok(self.trees.changes.first()?.map(|(k, _)| decode_u64(&k)))
    }

    /// Delete change events whose time is before `older_than`, oldest first, stopping at the
    /// first newer one. The newest event is always kept. Returns how many were deleted.
    pub fn prune_changes(&self, older_than: DateTime<Utc>) -> Result<usize> {
        let meta = &self.feed.meta;
        let changes = &self.trees.changes;
        let mut deleted = 0;
        loop {
            let newest = changes.last()?.map(|(k, _)| decode_u64(&k));
            let mut batch = Vec::new();
            for item in changes.iter() {
                let (k, v) = item?;
                let seq = decode_u64(&k);
                if Some(seq) == newest || batch.len() >= PRUNE_BATCH {
                    break;
                }
                let event: ChangeEvent = serde_json::from_slice(&v).map_err(|e| {
                    Error::new(
                        ErrorCode::Unknown,
                        format!("corrupt change event {seq}: {e}"),
                    )
                })?;
                if event.time >= older_than {
                    break;
                }
                batch.push(seq);
            }
            let Some(&last) = batch.last() else {
                break;
            };
            // Before the events go: a long-poll that reads the log after this sees the gap
            // as expired rather than handing it out as a page.
            self.feed.pruned_through.fetch_max(last, Ordering::SeqCst);
            (changes, meta)
                .transaction(|(changes, meta)| {
                    for seq in &batch {
                        changes.remove(&seq.to_be_bytes())?;
                    }
                    let previous = meta.get(PRUNED_THROUGH)?.map(|v| decode_u64(&v));
                    if previous.is_none_or(|p| p < last) {
                        meta.insert(PRUNED_THROUGH, &last.to_be_bytes())?;
                    }
                    Ok::<_, ConflictableTransactionError<Error>>(())
                })
                .map_err(Error::from)?;
            deleted += batch.len();
            if batch.len() < PRUNE_BATCH {
                break;
            }
        }
        if deleted > 0 {
            self.db.flush()?;
        }
        Ok(deleted)
    }

    /// Whether a change-feed cursor can no longer be served: events after it were pruned, or it
    /// is newer than anything this log ever made durable (the log was reset, or the cursor came
    /// from another registry). Either way the child must reconcile in full. `since = 0` on a log
    /// that was never pruned is never expired.
    pub fn changes_expired(&self, since: u64) -> bool {
        since < self.pruned_through() || since > *self.last_change.borrow()
    }

    /// Durable change events after `since`, oldest first, at most `limit`. Returns at once when
    /// there are some; otherwise waits up to `wait` for one and returns what arrived (possibly
    /// nothing). Fails with [`ErrorCode::MessagesExpired`] when `since` is expired
    /// ([`Store::changes_expired`]); the error's detail is `{"since", "latest"}`, `latest` being
    /// the newest durable seq: a child reconciles in full and then follows from `latest`.
    /// Holds no thread while waiting; dropping the future cancels the wait. Every waiter is
    /// woken at once by a new event: for a few waiters, or on a runtime of their own (streams).
    pub async fn wait_for_changes(
        &self,
        since: u64,
        wait: Duration,
        limit: usize,
    ) -> Result<EventPage> {
        self.wait_on(self.watch_changes(), since, wait, limit).await
    }

    /// [`Store::wait_for_changes`] for long-polls, on the registry's own runtime, where
    /// thousands may wait and pushes must not queue behind all their answers: woken a group at
    /// a time ([`super::feed_turns`]). `seat` is a number of the child's connection
    /// ([`crate::api::ConnectionSlot::seat`]): its long-polls all wait in one group, so a
    /// group's children ask for the same page and none is answered twice in a sweep.
    pub async fn wait_for_changes_in_turn(
        &self,
        seat: Option<u64>,
        since: u64,
        wait: Duration,
        limit: usize,
    ) -> Result<EventPage> {
        let turn = self.feed.long_polls.join(&self.last_change, seat);
        self.wait_on(turn, since, wait, limit).await
    }

    /// Wait on `durable` (the newest durable sequence number as this waiter sees it).
    async fn wait_on(
        &self,
        mut durable: tokio::sync::watch::Receiver<u64>,
        since: u64,
        wait: Duration,
        limit: usize,
    ) -> Result<EventPage> {
        let expired = || {
            Error::new(
                ErrorCode::MessagesExpired,
                format!(
                    "change events after {since} are no longer kept (retention {} days); \
                     reconcile in full and follow the feed from the newest sequence",
                    CHANGE_RETENTION.as_secs() / 86_400
                ),
            )
            .with_detail(serde_json::json!({
                "since": since,
                "latest": *self.last_change.borrow(),
            }))
        };
        if self.changes_expired(since) {
            return Err(expired());
        }
        let deadline = tokio::time::Instant::now() + wait;
        let events = loop {
            let newest = *durable.borrow_and_update();
            if newest > since {
                break self.page(since, newest, limit)?;
            }
            match tokio::time::timeout_at(deadline, durable.changed()).await {
                Ok(Ok(())) => continue,
                // Timed out, or the store is gone.
                _ => break Arc::from([]),
            }
        };
        // Pruning may have run while waiting; a gap must not be handed out as a page.
        if since < self.pruned_through() {
            return Err(expired());
        }
        Ok(events)
    }

    /// The durable events after `since` through `newest`, at most `limit`: made once and shared
    /// by every long-poll that asks for the same page, and made from the log's tail in memory
    /// when `since` is recent ([`super::feed_tail`]).
    fn page(&self, since: u64, newest: u64, limit: usize) -> Result<EventPage> {
        let last_page = || {
            self.feed
                .last_page
                .lock()
                .unwrap_or_else(|e| e.into_inner())
        };
        if let Some(page) = last_page().as_ref() {
            if (page.since, page.through, page.limit) == (since, newest, limit) {
                return Ok(page.events.clone());
            }
        }
        // Only what is durable: an event still in flight could vanish in a crash.
        let events: EventPage = self
            .feed
            .tail
            .page(&self.trees.changes, since, newest, limit)?
            .into();
        *last_page() = Some(Page {
            since,
            through: newest,
            limit,
            events: events.clone(),
        });
        Ok(events)
    }
}

/// Prune events older than [`CHANGE_RETENTION`] now and every [`PRUNE_INTERVAL`], in the
/// background, until the runtime stops.
pub fn spawn_pruner(store: Arc<Store>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let retention =
            chrono::Duration::from_std(CHANGE_RETENTION).expect("retention fits chrono");
        let mut ticks = tokio::time::interval(PRUNE_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let store = store.clone();
            let older_than = Utc::now() - retention;
            match tokio::task::spawn_blocking(move || store.prune_changes(older_than)).await {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => tracing::info!(events = n, %older_than, "pruned old change events"),
                Ok(Err(e)) => tracing::warn!(error = %e, "pruning change events failed"),
                Err(e) => tracing::warn!(error = %e, "change pruner task failed"),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::{Digest, Reference, RepositoryName};
    use bytes::Bytes;
    use futures_util::stream;

    fn events(page: &[Arc<crate::store::LoggedEvent>]) -> Vec<ChangeEvent> {
        page.iter().map(|logged| logged.event.clone()).collect()
    }

    async fn push(store: &Store, repo: &RepositoryName, tag: &str, n: u32) {
        let config = format!(r#"{{"n":{n}}}"#).into_bytes();
        let digest = Digest::sha256_of(&config);
        let len = config.len();
        store
            .put_blob(repo, &digest, stream::iter([Ok(Bytes::from(config))]))
            .await
            .unwrap();
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": digest.to_string(), "size": len},
            "layers": [],
        }))
        .unwrap();
        store
            .put_manifest(
                repo,
                &Reference::Tag(tag.parse().unwrap()),
                Some("application/vnd.oci.image.manifest.v1+json"),
                Bytes::from(manifest),
            )
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn pruning_expires_old_cursors_and_keeps_the_newest_event() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let repo: RepositoryName = "apps/hello".parse().unwrap();
        for n in 0..5 {
            push(&store, &repo, &format!("v{n}"), n).await;
        }
        let all = store.changes_since(0, 100).unwrap();
        assert_eq!(all.len(), 5);
        assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
        let newest = all[4].seq;

        // Nothing pruned: no cursor from this log is expired.
        assert_eq!(store.pruned_through(), 0);
        assert!(!store.changes_expired(0));
        assert!(!store.changes_expired(newest));
        // A cursor this log never handed out is.
        assert!(store.changes_expired(newest + 1));

        // A page read for a cursor that pruning will expire: it must not be handed out later.
        let before = store
            .wait_for_changes(all[2].seq, Duration::ZERO, 10)
            .await
            .unwrap();
        assert_eq!(events(&before), &all[3..]);

        // Nothing is old enough yet.
        let past = Utc::now() - chrono::Duration::days(1);
        assert_eq!(store.prune_changes(past).unwrap(), 0);

        // Everything is old: all but the newest go.
        let future = Utc::now() + chrono::Duration::days(1);
        assert_eq!(store.prune_changes(future).unwrap(), 4);
        assert_eq!(store.oldest_change_seq().unwrap(), Some(newest));
        assert_eq!(store.pruned_through(), all[3].seq);
        assert_eq!(store.prune_changes(future).unwrap(), 0);

        // Cursors before the pruned events are expired; the last pruned one and later are not.
        for cursor in [0, all[0].seq, all[2].seq] {
            assert!(store.changes_expired(cursor), "{cursor}");
            let err = store
                .wait_for_changes(cursor, Duration::ZERO, 10)
                .await
                .unwrap_err();
            assert_eq!(err.code(), ErrorCode::MessagesExpired);
            assert_eq!(err.code().http_status(), 410);
        }
        let page = store
            .wait_for_changes(all[3].seq, Duration::ZERO, 10)
            .await
            .unwrap();
        assert_eq!(events(&page), &all[4..]);
        assert!(store
            .wait_for_changes(newest, Duration::ZERO, 10)
            .await
            .unwrap()
            .is_empty());

        // The pruned mark survives a restart, and new events carry on after it.
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert!(store.changes_expired(0));
        assert!(!store.changes_expired(newest));
        push(&store, &repo, "v9", 9).await;
        let page = store.changes_since(newest, 10).unwrap();
        assert_eq!(page.len(), 1);
        assert!(page[0].seq > newest);
    }

    #[tokio::test]
    async fn a_waiting_poll_wakes_on_a_new_event() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let repo: RepositoryName = "hello".parse().unwrap();
        let started = std::time::Instant::now();
        let waiter = {
            let store = store.clone();
            tokio::spawn(
                async move { store.wait_for_changes(0, Duration::from_secs(20), 10).await },
            )
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        push(&store, &repo, "latest", 1).await;
        let events = waiter.await.unwrap().unwrap();
        assert!(started.elapsed() < Duration::from_secs(10));
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].event.repository, "hello");
        assert_eq!(events[0].event.tag.as_deref(), Some("latest"));

        // With nothing new, a short wait times out empty.
        let seq = events[0].event.seq;
        let empty = store
            .wait_for_changes(seq, Duration::from_millis(50), 10)
            .await
            .unwrap();
        assert!(empty.is_empty());
    }

    /// Long-polls woken in turn (groups, a relay) while pushes go on: every follower, with a
    /// seat or without, gets every event once and in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn long_polls_in_turn_follow_every_event_in_order_while_pushes_go_on() {
        const FOLLOWERS: u64 = 200;
        const PUSHES: u32 = 40;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let repo: RepositoryName = "hello".parse().unwrap();
        let (done, _) = tokio::sync::watch::channel(None::<u64>);
        let followers: Vec<_> = (0..FOLLOWERS)
            .map(|n| {
                let (store, mut done) = (store.clone(), done.subscribe());
                // Every third follower has no seat (round robin); the rest keep one.
                let seat = (n % 3 != 0).then_some(n * 4096);
                tokio::spawn(async move {
                    let (mut since, mut seen) = (0, Vec::new());
                    while done.borrow_and_update().is_none_or(|last| since < last) {
                        let page = store
                            .wait_for_changes_in_turn(seat, since, Duration::from_secs(1), 1000)
                            .await
                            .unwrap();
                        seen.extend(page.iter().map(|e| e.event.seq));
                        since = seen.last().copied().unwrap_or(since);
                    }
                    seen
                })
            })
            .collect();
        for n in 0..PUSHES {
            push(&store, &repo, &format!("v{n}"), n).await;
        }
        let all: Vec<u64> = store
            .changes_since(0, 1000)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(all.len(), PUSHES as usize);
        done.send_replace(all.last().copied());
        for (n, follower) in followers.into_iter().enumerate() {
            let seen = tokio::time::timeout(Duration::from_secs(60), follower)
                .await
                .unwrap_or_else(|_| panic!("follower {n} never caught up"))
                .unwrap();
            assert_eq!(seen, all, "follower {n}");
        }
    }

    #[tokio::test]
    async fn long_polls_at_the_same_cursor_share_one_page() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let repo: RepositoryName = "hello".parse().unwrap();
        for n in 0..3 {
            push(&store, &repo, &format!("v{n}"), n).await;
        }
        let all = store.changes_since(0, 100).unwrap();
        let first = store.wait_for_changes(0, Duration::ZERO, 10).await.unwrap();
        let second = store.wait_for_changes(0, Duration::ZERO, 10).await.unwrap();
        assert_eq!(events(&first), &all[..]);
        assert!(Arc::ptr_eq(&first, &second), "the same page is read once");

        // Another cursor or another limit is another page, read afresh.
        let later = store
            .wait_for_changes(all[0].seq, Duration::ZERO, 10)
            .await
            .unwrap();
        assert_eq!(events(&later), &all[1..]);
        let short = store.wait_for_changes(0, Duration::ZERO, 2).await.unwrap();
        assert_eq!(events(&short), &all[..2]);

        // A new event makes a new page for the same cursor.
        push(&store, &repo, "v3", 3).await;
        let grown = store.wait_for_changes(0, Duration::ZERO, 10).await.unwrap();
        assert_eq!(grown.len(), 4);
        assert_eq!(events(&grown[..3]), &all[..]);
    }
}
