//! The newest part of the change log in memory, each event beside its JSON, so that a feed page
//! from any recent cursor is a few pointer copies rather than a read of the log.
//!
//! After a push every waiting child asks for a page. Long-polls mostly ask from one cursor and
//! share one read (`changes::Feed::last_page`), but streams drift apart and ask from many, and
//! each such page was read from sled, deserialised, serialised again to size it and once more to
//! write it. A stream that lagged asked for a longer page, which cost more, so it lagged more:
//! 10 000 streams fell behind for good in 4 of 6 runs at 100 pushes a second on one VM and in
//! every run at 300 on another (BENCHMARKS.md, "The feed's tail in memory"). Here each durable
//! event is read from the log once and kept with its JSON (what a page carries), and a page is a
//! slice of the window: its byte bound is a sum and its rendering a copy.
//!
//! The window holds every durable event with a sequence number in `(after, through]`, at most
//! [`TAIL_EVENTS`] events and [`TAIL_BYTES`] of JSON; it grows at the new end as readers ask for
//! newer events and drops its oldest when full. A cursor before the window is read from the log
//! as before. Nothing here is persisted: the log stays the record, the window a copy of its end.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use serde_json::value::RawValue;

use super::listings::CHANGES_PAGE_BYTES;
use super::metadata::{corrupt, decode_u64, ChangeEvent};
use crate::oci::Result;

/// Events the window holds at most: 40 s of events at 100 pushes a second.
const TAIL_EVENTS: usize = 4096;
/// JSON bytes the window holds at most (two full pages).
const TAIL_BYTES: usize = 2 * CHANGES_PAGE_BYTES;

/// One durable change event and its JSON as a feed page carries it.
#[derive(Debug)]
pub struct LoggedEvent {
    pub event: ChangeEvent,
    /// `event` as serde_json renders it: a page's events are these, joined.
    pub json: Box<RawValue>,
}

impl LoggedEvent {
    /// The event stored in the log under `key` as `value`.
    fn from_log(key: &[u8], value: &[u8]) -> Result<LoggedEvent> {
        let seq = decode_u64(key);
        let event: ChangeEvent =
            serde_json::from_slice(value).map_err(|_| corrupt(&format!("change event {seq}")))?;
        // Rendered afresh, not copied from the log: an event written by an older version
        // renders as every other event of the page does.
        let json = serde_json::value::to_raw_value(&event).expect("change events serialise");
        Ok(LoggedEvent { event, json })
    }

    /// What the event counts against a page's byte bound: its JSON and a separator.
    fn page_bytes(&self) -> usize {
        self.json.get().len() + 1
    }
}

/// A page of the feed: durable events, oldest first.
pub type EventPage = Arc<[Arc<LoggedEvent>]>;

/// The window over the log's newest events.
pub(super) struct Tail {
    window: Mutex<Window>,
    /// The window's bounds: events, and bytes of JSON.
    max_events: usize,
    max_bytes: usize,
}

struct Window {
    /// The window holds every durable event after this sequence number…
    after: u64,
    /// …through this one.
    through: u64,
    events: VecDeque<Arc<LoggedEvent>>,
    bytes: usize,
}

impl Tail {
    /// An empty window at `newest`, the newest durable sequence number at open.
    pub(super) fn new(newest: u64) -> Tail {
        Tail::bounded(newest, TAIL_EVENTS, TAIL_BYTES)
    }

    fn bounded(newest: u64, max_events: usize, max_bytes: usize) -> Tail {
        Tail {
            window: Mutex::new(Window::empty(newest)),
            max_events,
            max_bytes,
        }
    }

    /// The durable events of `log` after `since` through `through` (durable), at most `limit`
    /// and [`CHANGES_PAGE_BYTES`] of JSON (at least one when there is one): from the window
    /// when `since` lies in it, else from the log.
    pub(super) fn page(
        &self,
        log: &sled::Tree,
        since: u64,
        through: u64,
        limit: usize,
    ) -> Result<Vec<Arc<LoggedEvent>>> {
        // Only a copy of the log: a panic while it was held left nothing that matters.
        let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        // A window left far behind (nobody asked for a while) starts again as near `through`
        // as its bound reaches, so no call reads more than that many events into it.
        let reach = through.saturating_sub(self.max_events as u64);
        if window.through < reach {
            *window = Window::empty(reach);
        }
        if through > window.through {
            window.extend(log, through, (self.max_events, self.max_bytes))?;
        }
        if since < window.after {
            drop(window);
            return read_log(log, since, through, limit);
        }
        let first = window.events.partition_point(|e| e.event.seq <= since);
        Ok(bounded(window.events.range(first..), through, limit)
            .cloned()
            .collect())
    }
}

impl Window {
    fn empty(at: u64) -> Window {
        Window {
            after: at,
            through: at,
            events: VecDeque::new(),
            bytes: 0,
        }
    }

    /// Read the log's events after the window's end through `through` into the window,
    /// dropping its oldest beyond `(max_events, max_bytes)`.
    fn extend(&mut self, log: &sled::Tree, through: u64, max: (usize, usize)) -> Result<()> {
        let start = self.through.saturating_add(1).to_be_bytes();
        for item in log.range(start..=through.to_be_bytes()) {
            let (key, value) = item?;
            let logged = Arc::new(LoggedEvent::from_log(&key, &value)?);
            self.bytes += logged.page_bytes();
            self.through = logged.event.seq;
            self.events.push_back(logged);
            while self.events.len() > max.0 || self.bytes > max.1 {
                let Some(oldest) = self.events.pop_front() else {
                    break;
                };
                self.bytes -= oldest.page_bytes();
                self.after = oldest.event.seq;
            }
        }
        // No event is left between the last one read and `through`.
        self.through = through;
        Ok(())
    }
}

/// The events of `log` after `since` through `through`, bounded as a page is.
pub(super) fn read_log(
    log: &sled::Tree,
    since: u64,
    through: u64,
    limit: usize,
) -> Result<Vec<Arc<LoggedEvent>>> {
    let start = since.saturating_add(1).to_be_bytes();
    let read: Vec<Arc<LoggedEvent>> = log
        .range(start..=through.to_be_bytes())
        .take(limit)
        .map(|item| {
            let (key, value) = item?;
            Ok(Arc::new(LoggedEvent::from_log(&key, &value)?))
        })
        .collect::<Result<_>>()?;
    Ok(bounded(read.iter(), through, limit).cloned().collect())
}

/// The first of `events` (oldest first) that make a page: through `through`, at most `limit`,
/// at most [`CHANGES_PAGE_BYTES`] of JSON and at least one event.
fn bounded<'e>(
    events: impl Iterator<Item = &'e Arc<LoggedEvent>>,
    through: u64,
    limit: usize,
) -> impl Iterator<Item = &'e Arc<LoggedEvent>> {
    let mut bytes = 0;
    events
        .take_while(move |e| e.event.seq <= through)
        .take(limit)
        .enumerate()
        .take_while(move |(n, e)| {
            bytes += e.page_bytes();
            *n == 0 || bytes <= CHANGES_PAGE_BYTES
        })
        .map(|(_, e)| e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ChangeAction;

    /// A log of `count` events with gaps in their numbers (as aborted transactions leave).
    fn log_with_gaps(count: u64) -> (tempfile::TempDir, sled::Tree, Vec<u64>) {
        let dir = tempfile::tempdir().unwrap();
        let log = sled::open(dir.path())
            .unwrap()
            .open_tree("changes")
            .unwrap();
        let seqs: Vec<u64> = (1..).filter(|n| n % 7 != 3).take(count as usize).collect();
        for &seq in &seqs {
            let event = ChangeEvent {
                seq,
                time: chrono::Utc::now(),
                repository: format!("repo{}", seq % 5),
                action: ChangeAction::Tag,
                tag: Some(format!("v{seq}")),
                digest: format!("sha256:{seq:064x}"),
                subject: (seq % 4 == 0).then(|| format!("sha256:{:064x}", seq - 1)),
            };
            log.insert(seq.to_be_bytes(), serde_json::to_vec(&event).unwrap())
                .unwrap();
        }
        (dir, log, seqs)
    }

    fn seqs(page: &[Arc<LoggedEvent>]) -> Vec<u64> {
        page.iter().map(|e| e.event.seq).collect()
    }

    /// As the log grows (events past `through` are in the log but not durable yet), readers
    /// at every recent cursor get from the window exactly what the log gives them, whether the
    /// window is bounded by events or by bytes, and a cursor it has dropped reads the log.
    #[test]
    fn pages_from_the_window_are_the_logs_pages() {
        let (_dir, log, all) = log_with_gaps(300);
        let event_bytes = all
            .iter()
            .map(|&seq| read_log(&log, seq - 1, seq, 1).unwrap()[0].page_bytes())
            .max()
            .unwrap();
        for tail in [
            Tail::bounded(0, 24, usize::MAX),
            Tail::bounded(0, usize::MAX, 10 * event_bytes),
        ] {
            for &through in all.iter().step_by(3) {
                for back in [0, 1, 2, 5, 9, 30, 80] {
                    let since = through.saturating_sub(back + 1);
                    for limit in [1, 4, 1000] {
                        let from_tail = tail.page(&log, since, through, limit).unwrap();
                        let from_log = read_log(&log, since, through, limit).unwrap();
                        assert_eq!(seqs(&from_tail), seqs(&from_log), "{since}..={through}");
                        assert!(from_tail.iter().all(|e| e.event.seq <= through));
                        let expected: Vec<u64> = all
                            .iter()
                            .copied()
                            .filter(|&seq| seq > since && seq <= through)
                            .take(limit)
                            .collect();
                        assert_eq!(seqs(&from_log), expected);
                        // A page from the window shares its events; the log's are read afresh.
                        if back <= 2 && !from_tail.is_empty() {
                            let again = tail.page(&log, since, through, limit).unwrap();
                            assert!(Arc::ptr_eq(&from_tail[0], &again[0]), "{since}: window");
                        }
                    }
                }
            }
            let window = tail.window.lock().unwrap();
            assert!(window.after > 0, "the window dropped its oldest");
            assert!(window.events.len() <= tail.max_events && window.bytes <= tail.max_bytes);
        }
    }

    #[test]
    fn a_window_left_behind_starts_again_near_the_newest() {
        let (_dir, log, all) = log_with_gaps(50);
        let tail = Tail::bounded(0, 8, usize::MAX);
        assert_eq!(seqs(&tail.page(&log, 0, all[2], 10).unwrap()), all[..3]);
        // Nobody asked while 40 more events came: the window reads only the newest 8 numbers.
        let page = tail.page(&log, all[40], all[45], 10).unwrap();
        assert_eq!(seqs(&page), all[41..=45]);
        {
            let window = tail.window.lock().unwrap();
            assert_eq!((window.after, window.through), (all[45] - 8, all[45]));
            let held: Vec<u64> = all
                .iter()
                .copied()
                .filter(|&seq| seq > all[45] - 8 && seq <= all[45])
                .collect();
            let in_window: Vec<u64> = window.events.iter().map(|e| e.event.seq).collect();
            assert_eq!(in_window, held);
        }
        // An older cursor reads the log.
        let old = tail.page(&log, all[10], all[45], 10).unwrap();
        assert_eq!(seqs(&old), all[11..21]);
    }

    #[test]
    fn each_events_json_is_what_serde_renders_and_pages_are_bounded_in_bytes() {
        let (_dir, log, all) = log_with_gaps(40);
        let page = Tail::new(0).page(&log, 0, all[39], 1000).unwrap();
        assert_eq!(page.len(), 40);
        for logged in &page {
            let rendered = serde_json::to_string(&logged.event).unwrap();
            assert_eq!(logged.json.get(), rendered);
        }
        // An oversized event is a page of its own.
        let dir = tempfile::tempdir().unwrap();
        let big = sled::open(dir.path())
            .unwrap()
            .open_tree("changes")
            .unwrap();
        for seq in 1..=3u64 {
            let mut event = page[0].event.clone();
            event.seq = seq;
            event.tag = Some("t".repeat(CHANGES_PAGE_BYTES * 2 / 3));
            big.insert(seq.to_be_bytes(), serde_json::to_vec(&event).unwrap())
                .unwrap();
        }
        let tail = Tail::new(0);
        assert_eq!(seqs(&tail.page(&big, 0, 3, 1000).unwrap()), [1]);
        assert_eq!(seqs(&tail.page(&big, 1, 3, 1000).unwrap()), [2]);
    }
}
