//! The sync loop of a running node: wait for a window, reconcile, then follow the parent's change
//! feed (or poll a plain OCI parent) until the window closes, the parent goes away (retry with
//! backoff) or the node stops.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::watch;

use super::client::{FeedFollower, SyncError};
use super::engine::{SyncEngine, Trigger};
use super::schedule::{Schedule, WindowState};

/// How long one long-poll of the change feed waits for an event.
pub const LONG_POLL_SECONDS: u64 = 30;
/// Longest pause after a failed session (the parent gone, authentication refused, …); the pause
/// starts at one second and doubles.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Shortest time between two requests to the change feed, whatever it answers.
pub const FEED_MIN_INTERVAL: Duration = Duration::from_millis(250);
/// Longest pause between feed requests while the feed answers at once with nothing new (a
/// parent that does not long-poll): the pause doubles from [`FEED_MIN_INTERVAL`] up to this.
pub const FEED_MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Shortest time between the starts of two full passes, whatever the parent answers.
pub const MIN_PASS_INTERVAL: Duration = Duration::from_secs(5);
/// Longest pause between full passes the feed keeps forcing (410 `MESSAGES_EXPIRED` again and
/// again): the pause doubles from [`MIN_PASS_INTERVAL`] up to this.
pub const MAX_PASS_BACKOFF: Duration = Duration::from_secs(300);
/// How often a node that fell back to polling asks again whether the parent has a change feed.
pub const FEED_REPROBE_INTERVAL: Duration = Duration::from_secs(600);
/// First pause before a full pass retries what the feed could not apply ([`Repair`]).
pub const REPAIR_MIN_PAUSE: Duration = Duration::from_secs(10);
/// Longest pause between such passes while they keep failing.
pub const REPAIR_MAX_PAUSE: Duration = Duration::from_secs(300);
const CURSOR_KEY: &str = "feed_cursor";

/// What the node (not the schedule) asks of the sync loop.
#[derive(Clone, Default)]
pub struct RunControl {
    /// Why the first pass runs when it is not the node's first sync (e.g. `ConfigUpdate` after
    /// the configuration changed); `None` lets the loop decide (`InitialSync` or `Schedule`).
    pub first_trigger: Option<Trigger>,
    /// Notified for a pass now (`ManualResync`: the `sync` direct method), window or not.
    pub resync: Arc<tokio::sync::Notify>,
}

/// Run until `shutdown` turns true.
pub async fn run(
    engine: Arc<SyncEngine>,
    schedule: Schedule,
    mut shutdown: watch::Receiver<bool>,
    control: RunControl,
) {
    let mut loop_state = LoopState {
        first_trigger: control.first_trigger,
        first_pass_done: false,
        backoff: Duration::from_secs(1),
        passes: Pacer::new(MIN_PASS_INTERVAL, MAX_PASS_BACKOFF),
        feed: Pacer::new(FEED_MIN_INTERVAL, FEED_MAX_BACKOFF),
        polls: Pacer::new(engine.poll_intervals().first, engine.poll_intervals().max),
        repair: Repair::new(),
    };
    while !*shutdown.borrow() {
        match schedule.state_at(Utc::now()) {
            WindowState::Closed { opens_at } => {
                engine.status().update(|s| {
                    s.sync.next_window_start = Some(opens_at);
                    s.sync.state.get_or_insert_with(|| "Pending".into());
                });
                let wait = (opens_at - Utc::now()).to_std().unwrap_or_default();
                tracing::info!(%opens_at, "sync window closed; no requests to the parent until it opens");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.changed() => {}
                    _ = control.resync.notified() => manual_pass(&engine, &mut loop_state).await,
                }
            }
            WindowState::Open { closes_at } => {
                engine.status().update(|s| s.sync.next_window_start = None);
                let session = session(&engine, &mut loop_state, closes_at);
                let until_close = closes_at.map(|c| (c - Utc::now()).to_std().unwrap_or_default());
                tokio::select! {
                    _ = shutdown.changed() => {}
                    _ = control.resync.notified() => manual_pass(&engine, &mut loop_state).await,
                    timed_out = async {
                        match until_close {
                            Some(d) => tokio::time::timeout(d, session).await.is_err(),
                            None => { session.await; false }
                        }
                    } => {
                        if timed_out {
                            tracing::info!("sync window closed");
                            engine.status().update(|s| {
                                if s.sync.state.as_deref() == Some("Syncing") {
                                    s.sync.state = Some("TimedOut".into());
                                }
                                s.connection_state = "Online".into();
                            });
                        }
                    }
                }
            }
        }
    }
}

/// Wait until `schedule`'s window is open (at once when it is), saying in the status when it
/// opens: a node with a sync window says nothing to its parent outside it, not even to activate
/// or report its status. `false` when the node shuts down first. A pass asked for by hand
/// (`resync`) ends the wait too and stays asked for, so the sync loop still runs it.
pub async fn wait_for_window(
    engine: &SyncEngine,
    schedule: &Schedule,
    shutdown: &mut watch::Receiver<bool>,
    resync: Option<&tokio::sync::Notify>,
) -> bool {
    loop {
        if *shutdown.borrow() {
            return false;
        }
        let WindowState::Closed { opens_at } = schedule.state_at(Utc::now()) else {
            return true;
        };
        engine.status().update(|s| {
            s.sync.next_window_start = Some(opens_at);
            s.sync.state.get_or_insert_with(|| "Pending".into());
        });
        let wait = (opens_at - Utc::now()).to_std().unwrap_or_default();
        let asked = async {
            match resync {
                Some(notify) => notify.notified().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            changed = shutdown.changed() => if changed.is_err() {
                return false;
            },
            () = asked => {
                if let Some(notify) = resync {
                    notify.notify_one();
                }
                return true;
            }
        }
    }
}

/// A pass asked for by hand; it replaces whatever the session was doing (that restarts after
/// it and picks up the feed where it was).
async fn manual_pass(engine: &SyncEngine, state: &mut LoopState) {
    tracing::info!("sync requested; starting a full pass");
    if engine.full_pass(Trigger::ManualResync).await.is_ok() {
        state.first_pass_done = true;
    }
}

struct LoopState {
    first_trigger: Option<Trigger>,
    first_pass_done: bool,
    backoff: Duration,
    /// Paces full passes (the first one, and those a 410 from the feed forces).
    passes: Pacer,
    /// Paces requests to the change feed.
    feed: Pacer,
    /// The pause after each pass against a parent with no feed (`pollInterval`, doubling to
    /// `maxPollInterval` while passes find nothing new).
    polls: Pacer,
    /// Full passes that retry what the feed could not apply.
    repair: Repair,
}

/// While following the feed, what it could not apply (an event that failed: the disk was full,
/// the parent answered garbage; a tag evicted for room) is retried by a full pass, after a
/// pause that doubles from [`REPAIR_MIN_PAUSE`] to [`REPAIR_MAX_PAUSE`] while passes keep
/// failing, so a full disk recovers by itself once space exists without hammering the parent.
struct Repair {
    pending: bool,
    pause: Duration,
    due: Option<Instant>,
}

impl Repair {
    fn new() -> Repair {
        Repair {
            pending: false,
            pause: REPAIR_MIN_PAUSE,
            due: None,
        }
    }

    /// Something failed to apply: a pass is due after the current pause.
    fn needed(&mut self) {
        self.pending = true;
        self.due.get_or_insert_with(|| Instant::now() + self.pause);
    }

    /// How long until the repair pass, if one is due.
    fn wait(&self) -> Option<Duration> {
        self.due
            .map(|due| due.saturating_duration_since(Instant::now()))
    }

    fn is_due(&self) -> bool {
        self.due.is_some_and(|due| Instant::now() >= due)
    }

    /// A full pass ran (whatever started it): done when it succeeded, else back off.
    fn after_pass(&mut self, succeeded: bool) {
        self.due = None;
        if succeeded {
            self.pending = false;
            self.pause = REPAIR_MIN_PAUSE;
        } else if self.pending {
            self.pause = (self.pause * 2).min(REPAIR_MAX_PAUSE);
        }
    }
}

/// Paces one kind of request to the parent: never more often than a floor, and backing off
/// (doubling up to a cap) while the parent's answers bring nothing.
struct Pacer {
    floor: Duration,
    cap: Duration,
    current: Duration,
    last: Option<Instant>,
}

impl Pacer {
    fn new(floor: Duration, cap: Duration) -> Pacer {
        Pacer {
            floor,
            cap,
            current: floor,
            last: None,
        }
    }

    /// Wait until the current interval has passed since the previous start, then start.
    async fn wait(&mut self) {
        if let Some(last) = self.last {
            let due = last + self.current;
            tokio::time::sleep_until(due.into()).await;
        }
        self.last = Some(Instant::now());
    }

    fn productive(&mut self) {
        self.current = self.floor;
    }

    fn unproductive(&mut self) {
        self.current = (self.current * 2).min(self.cap);
    }
}

/// Why [`follow`] stopped: the error, and whether a full pass already recorded it.
struct Stop {
    error: SyncError,
    recorded: bool,
}

impl From<SyncError> for Stop {
    fn from(error: SyncError) -> Stop {
        Stop {
            error,
            recorded: false,
        }
    }
}

/// Sync inside one open window; returns only when the window has closed (or on shutdown, by
/// being dropped).
async fn session(
    engine: &SyncEngine,
    state: &mut LoopState,
    closes_at: Option<chrono::DateTime<Utc>>,
) {
    loop {
        let result = follow(engine, state, closes_at).await;
        if let Err(stop) = result {
            if !stop.recorded {
                engine.record_failure(&stop.error);
            }
            let jitter = Duration::from_millis(rand::random::<u64>() % 500);
            tokio::time::sleep(state.backoff + jitter).await;
            state.backoff = (state.backoff * 2).min(MAX_BACKOFF);
        }
    }
}

/// One full pass, paced by [`MIN_PASS_INTERVAL`] (and its backoff). Returns whether it fetched
/// anything.
async fn pass(engine: &SyncEngine, state: &mut LoopState, trigger: Trigger) -> Result<bool, Stop> {
    state.passes.wait().await;
    unpaced_pass(engine, state, trigger).await
}

/// One full pass, right away (polling paces its passes itself).
async fn unpaced_pass(
    engine: &SyncEngine,
    state: &mut LoopState,
    trigger: Trigger,
) -> Result<bool, Stop> {
    let started = std::time::SystemTime::now();
    let summary = engine.full_pass(trigger).await.map_err(|error| Stop {
        error,
        recorded: true,
    })?;
    let succeeded = summary.failures.is_empty();
    if succeeded {
        // Every selected tag was synced or checked: what was marked evicted before is no
        // longer selected (or gone at the parent).
        engine
            .store()
            .forget_evicted_before(started)
            .map_err(SyncError::from)?;
    }
    state.repair.after_pass(succeeded);
    Ok(super::engine::fetched_anything(&summary.progress))
}

/// Reconcile, then keep up with the parent until an error (or, when polling, until it is time
/// to ask again whether the parent has a feed).
async fn follow(
    engine: &SyncEngine,
    state: &mut LoopState,
    closes_at: Option<chrono::DateTime<Utc>>,
) -> Result<(), Stop> {
    let mut cursor = load_cursor(engine)?;
    state.feed.wait().await;
    let probe = engine.client().changes(cursor, 0).await;
    let has_feed = match &probe {
        Ok(_) | Err(SyncError::MessagesExpired { .. }) => true,
        Err(e) => {
            // Whatever the feed answered (401/403/404/5xx, garbage), a parent whose `/v2/`
            // answers is synced by polling.
            engine.client().ping().await?;
            tracing::info!(error = %e, "the parent has no usable change feed; polling");
            let intervals = engine.poll_intervals();
            // A notice of how this node syncs, not a failure: not refreshed away by a pass.
            engine.status().add_detail(
                "Feed",
                "PollingFallback",
                format!(
                    "no change feed at the parent ({e}); polling every {}s, backing off to \
                     every {}s while nothing changes",
                    intervals.first.as_secs(),
                    intervals.max.as_secs()
                ),
            );
            false
        }
    };
    if !has_feed {
        // A plain OCI parent: reconcile (tags/list + HEAD, downloads only what changed), then
        // pause `pollInterval`, doubling while passes find nothing new; ask again for a feed
        // every FEED_REPROBE_INTERVAL.
        let until = Instant::now() + FEED_REPROBE_INTERVAL;
        loop {
            let trigger = if state.first_pass_done {
                Trigger::Schedule
            } else {
                state.first_trigger.take().unwrap_or(Trigger::InitialSync)
            };
            if unpaced_pass(engine, state, trigger).await? {
                state.polls.productive();
            } else {
                state.polls.unproductive();
            }
            state.first_pass_done = true;
            state.backoff = Duration::from_secs(1);
            // Measured from the end of the pass: a slow parent is not asked again at once.
            tokio::time::sleep(state.polls.current).await;
            if Instant::now() >= until {
                return Ok(());
            }
        }
    }
    if let Err(SyncError::MessagesExpired { latest, .. }) = probe {
        pass(engine, state, Trigger::RecoveryService).await?;
        state.passes.unproductive();
        cursor = latest;
        save_cursor(engine, cursor).await?;
    } else if !state.first_pass_done {
        // Events since `cursor` are replayed after the pass; applying one twice is harmless.
        // A node that never synced makes its initial sync, whatever started it.
        let trigger = match state.first_trigger.take() {
            _ if cursor == 0 => Trigger::InitialSync,
            Some(trigger) => trigger,
            None => Trigger::Schedule,
        };
        pass(engine, state, trigger).await?;
    }
    state.first_pass_done = true;
    // The session backoff is reset by the first page, not by the probe: a parent whose probe
    // answers but whose feed then fails at once is asked less often each time.
    let mut feed = FeedFollower::new(Duration::from_secs(LONG_POLL_SECONDS));
    loop {
        if engine
            .store()
            .holds_evicted_tags()
            .map_err(SyncError::from)?
        {
            state.repair.needed();
        }
        if state.repair.is_due() {
            pass(engine, state, Trigger::Schedule).await?;
            // Still failing: due again after the longer pause.
            if state.repair.pending {
                state.repair.needed();
            }
        }
        let mut wait = match closes_at {
            Some(c) => ((c - Utc::now()).num_seconds().max(0) as u64).min(LONG_POLL_SECONDS),
            None => LONG_POLL_SECONDS,
        };
        if let Some(repair_in) = state.repair.wait() {
            wait = wait.min(repair_in.as_secs().max(1));
        }
        state.feed.wait().await;
        let asked = Instant::now();
        let page = match feed.next(engine.client(), cursor, wait).await {
            Ok(Some(page)) => page,
            Ok(None) => {
                // A stream that ended with nothing: ask again, later each time.
                state.feed.unproductive();
                continue;
            }
            Err(SyncError::MessagesExpired { latest, .. }) => {
                // Back-to-back 410s back off (see MAX_PASS_BACKOFF).
                pass(engine, state, Trigger::RecoveryService).await?;
                state.passes.unproductive();
                cursor = latest;
                save_cursor(engine, cursor).await?;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        state.passes.productive();
        state.backoff = Duration::from_secs(1);
        engine.status().update(|s| {
            s.last_activity_time = Some(Utc::now());
            if s.connection_state != "Syncing" {
                s.connection_state = "Online".into();
            }
        });
        let before = cursor;
        for event in &page.events {
            match engine.apply_event(event).await {
                Ok(()) => {}
                Err(e @ SyncError::ParentUnreachable(_)) => return Err(e.into()),
                // One bad event does not hold the feed; a full pass retries it (`Repair`).
                Err(e) => {
                    engine.record_failure(&e);
                    state.repair.needed();
                }
            }
            cursor = cursor.max(event.seq);
        }
        if page.next > cursor {
            cursor = page.next;
        }
        // An answer well before the wait that brought nothing new is a parent that does not
        // long-poll (or a loop): back off.
        let early = asked.elapsed() < Duration::from_secs(wait) / 2;
        if cursor == before && early {
            state.feed.unproductive();
        } else {
            state.feed.productive();
        }
        if cursor != before {
            save_cursor(engine, cursor).await?;
            engine.status().update(|s| {
                if let Some(p) = s.parent.as_mut() {
                    p.last_sync_time = Some(Utc::now());
                }
            });
        }
    }
}

fn load_cursor(engine: &SyncEngine) -> Result<u64, SyncError> {
    Ok(engine
        .store()
        .sync_state(CURSOR_KEY)?
        .and_then(|v| v.try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0))
}

async fn save_cursor(engine: &SyncEngine, cursor: u64) -> Result<(), SyncError> {
    engine
        .store()
        .set_sync_state(CURSOR_KEY, &cursor.to_be_bytes())
        .await?;
    Ok(())
}
