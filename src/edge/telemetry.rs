//! Telemetry on the module's `telemetry` output: one JSON event per thing that happened, read
//! off status changes (so every part reports through the one status model): `activation`,
//! `syncStarted`, `syncProgress` (at most every 10 s or 10 %), `syncCompleted`, `syncFailed`,
//! `upstreamPushed`, `configApplied`, `configRejected`. Events wait in a bounded queue while
//! edgeHub is away (the oldest are dropped first, and counted) and are sent when it returns.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::sas::quote;
use crate::status::{Progress, Status};

/// The module output the events go to (the deployment routes it upstream).
pub const OUTPUT: &str = "telemetry";
/// Events kept while edgeHub is unreachable.
pub const QUEUE_CAPACITY: usize = 1000;
const PROGRESS_EVERY: Duration = Duration::from_secs(10);
const PROGRESS_STEP: f64 = 0.10;

#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub kind: &'static str,
    pub body: Value,
    pub id: String,
}

impl Event {
    fn new(kind: &'static str, mut body: Value) -> Event {
        if let Some(map) = body.as_object_mut() {
            map.insert("eventType".into(), kind.into());
            map.insert("time".into(), chrono::Utc::now().to_rfc3339().into());
        }
        Event {
            kind,
            body,
            id: uuid::Uuid::new_v4().to_string(),
        }
    }

    /// The topic edgeHub takes a module's output message on: system properties first
    /// (`$.on`, `$.mid`, `$.ct`, `$.ce`), then the custom ones, all percent-encoded.
    pub fn topic(&self, device_id: &str, module_id: &str) -> String {
        let system = [
            ("$.on", OUTPUT),
            ("$.mid", self.id.as_str()),
            ("$.ct", "application/json"),
            ("$.ce", "utf-8"),
        ];
        let custom = [("eventType", self.kind)];
        let bag: Vec<String> = system
            .iter()
            .chain(custom.iter())
            .map(|(k, v)| format!("{}={}", quote(k), quote(v)))
            .collect();
        format!(
            "devices/{device_id}/modules/{module_id}/messages/events/{}",
            bag.join("&")
        )
    }
}

/// Turns successive status snapshots into events.
pub struct Tracker {
    last: Status,
    progress_sent_at: Option<Instant>,
    progress_sent_fraction: f64,
}

impl Tracker {
    pub fn new(initial: Status) -> Tracker {
        Tracker {
            last: initial,
            progress_sent_at: None,
            progress_sent_fraction: 0.0,
        }
    }

    pub fn events(&mut self, now: &Status) -> Vec<Event> {
        let mut events = Vec::new();
        let last = &self.last;
        if now.activation.status != last.activation.status {
            events.push(Event::new(
                "activation",
                json!({"status": now.activation.status, "since": now.activation.since}),
            ));
        }
        if now.config.version != last.config.version && now.config.version > 0 {
            events.push(Event::new(
                "configApplied",
                json!({"version": now.config.version, "source": now.config.source}),
            ));
        }
        if now.config.error != last.config.error {
            if let Some(error) = &now.config.error {
                events.push(Event::new(
                    "configRejected",
                    json!({"error": error, "version": now.config.version}),
                ));
            }
        }
        let (sync, old_sync) = (&now.sync, &last.sync);
        if sync.last_sync_start_time != old_sync.last_sync_start_time
            && sync.last_sync_start_time.is_some()
        {
            self.progress_sent_at = Some(Instant::now());
            self.progress_sent_fraction = 0.0;
            events.push(Event::new(
                "syncStarted",
                json!({"trigger": sync.trigger, "startTime": sync.last_sync_start_time}),
            ));
        }
        if sync.state.as_deref() == Some("Syncing") && sync.progress != old_sync.progress {
            let fraction = fraction(&sync.progress);
            let due = self
                .progress_sent_at
                .is_none_or(|at| at.elapsed() >= PROGRESS_EVERY);
            if due || fraction >= self.progress_sent_fraction + PROGRESS_STEP {
                self.progress_sent_at = Some(Instant::now());
                self.progress_sent_fraction = fraction;
                events.push(Event::new(
                    "syncProgress",
                    json!({"trigger": sync.trigger, "fraction": (fraction * 1000.0).round() / 1000.0, "progress": sync.progress}),
                ));
            }
        }
        if sync.last_sync_end_time != old_sync.last_sync_end_time
            && sync.last_sync_end_time.is_some()
        {
            let body = json!({
                "trigger": sync.trigger,
                "state": sync.state,
                "startTime": sync.last_sync_start_time,
                "endTime": sync.last_sync_end_time,
                "progress": sync.progress,
            });
            if sync.state.as_deref() == Some("Succeeded") {
                events.push(Event::new("syncCompleted", body));
            } else {
                let mut body = body;
                if let Some(detail) = now.status_details.iter().find(|d| d.kind == "Sync") {
                    body["error"] = json!({"code": detail.code, "description": detail.description});
                }
                events.push(Event::new("syncFailed", body));
            }
        }
        // A failure outside a pass (the parent unreachable, credentials refused, activation
        // refused) ends no pass but is a failed sync all the same.
        let ended = sync.last_sync_end_time != old_sync.last_sync_end_time;
        if !ended && sync.state.as_deref() != Some("Syncing") {
            let new_failure = now.status_details.iter().find(|d| {
                matches!(d.kind.as_str(), "Sync" | "Activation")
                    && !last
                        .status_details
                        .iter()
                        .any(|old| old.correlation_id == d.correlation_id)
            });
            if let Some(detail) = new_failure {
                events.push(Event::new(
                    "syncFailed",
                    json!({
                        "state": sync.state,
                        "connectionState": now.connection_state,
                        "error": {"code": detail.code, "description": detail.description},
                    }),
                ));
            }
        }
        let pushed = |s: &Status| s.upstream.as_ref().and_then(|u| u.last_push_time);
        if pushed(now) != pushed(last) && pushed(now).is_some() {
            events.push(Event::new(
                "upstreamPushed",
                json!({"lastPushTime": pushed(now), "pending": now.upstream.as_ref().map(|u| u.pending)}),
            ));
        }
        self.last = now.clone();
        events
    }
}

/// How far a pass is, by bytes when their total is known, else by manifests.
fn fraction(p: &Progress) -> f64 {
    let (done, total) = if p.bytes.total > 0 {
        (p.bytes.done, p.bytes.total)
    } else {
        (p.manifests.done, p.manifests.total)
    };
    if total == 0 {
        0.0
    } else {
        (done as f64 / total as f64).min(1.0)
    }
}

/// Events waiting for edgeHub, oldest first, bounded.
#[derive(Default)]
pub struct Queue {
    events: VecDeque<Event>,
    pub dropped: u64,
}

impl Queue {
    pub fn push(&mut self, event: Event) {
        if self.events.len() >= QUEUE_CAPACITY {
            self.events.pop_front();
            self.dropped += 1;
        }
        self.events.push_back(event);
    }

    /// Put back events that were sent but not acknowledged, ahead of the rest.
    pub fn requeue_front(&mut self, events: impl DoubleEndedIterator<Item = Event>) {
        for event in events.rev() {
            self.events.push_front(event);
        }
        while self.events.len() > QUEUE_CAPACITY {
            self.events.pop_back();
            self.dropped += 1;
        }
    }

    pub fn pop(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_topic_carries_the_output_and_properties_as_edgehub_expects() {
        let event = Event::new("syncStarted", json!({}));
        let topic = event.topic("dev1", "connected-registry");
        assert!(topic.starts_with(
            "devices/dev1/modules/connected-registry/messages/events/%24.on=telemetry&%24.mid="
        ));
        assert!(topic.ends_with("&%24.ct=application%2Fjson&%24.ce=utf-8&eventType=syncStarted"));
    }

    #[test]
    fn a_pass_gives_started_and_completed_and_the_queue_is_bounded() {
        let mut status = Status::default();
        let mut tracker = Tracker::new(status.clone());
        status.sync.last_sync_start_time = Some(chrono::Utc::now());
        status.sync.state = Some("Syncing".into());
        status.sync.trigger = Some("InitialSync".into());
        let kinds: Vec<_> = tracker.events(&status).iter().map(|e| e.kind).collect();
        assert_eq!(kinds, ["syncStarted"]);
        status.sync.progress.bytes.total = 100;
        status.sync.progress.bytes.done = 5;
        assert!(
            tracker.events(&status).is_empty(),
            "5 % within 10 s is not reported"
        );
        status.sync.progress.bytes.done = 50;
        let kinds: Vec<_> = tracker.events(&status).iter().map(|e| e.kind).collect();
        assert_eq!(kinds, ["syncProgress"]);
        status.sync.state = Some("Succeeded".into());
        status.sync.last_sync_end_time = Some(chrono::Utc::now());
        let kinds: Vec<_> = tracker.events(&status).iter().map(|e| e.kind).collect();
        assert_eq!(kinds, ["syncCompleted"]);
        let handle = crate::status::StatusHandle::new(status.clone());
        handle.add_detail("Sync", "ParentUnreachable", "connection refused");
        let failed = tracker.events(&handle.snapshot());
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].kind, "syncFailed");
        assert_eq!(failed[0].body["error"]["code"], "ParentUnreachable");
        assert!(
            tracker.events(&handle.snapshot()).is_empty(),
            "reported once"
        );
        let mut queue = Queue::default();
        for _ in 0..QUEUE_CAPACITY + 5 {
            queue.push(Event::new("activation", json!({})));
        }
        assert_eq!((queue.len(), queue.dropped), (QUEUE_CAPACITY, 5));
    }
}
