//! The module's connection to edgeHub: MQTT 3.1.1 over TLS (rumqttc, trusting the edge CA's
//! bundle), client id `{device}/{module}`, the SDKs' user name, a SAS token as the password and
//! `clean_session = false`, as Microsoft's SDKs connect. Each connection is a session that
//! ends when the token is due for renewal (the next session brings a fresh one), when edgeHub
//! goes away (the next one starts after a backoff of 1 s doubling to 60 s) or when the node
//! stops. In a session: subscribe to desired patches, methods and twin responses, then `GET`
//! the whole twin; apply desired properties as configuration; report the status as reported
//! properties (only what changed, at most every 5 s, and only once the twin's configuration has
//! been applied, so the hub never sees the unconfigured node); send queued telemetry, keeping
//! each event until edgeHub acknowledges it; answer direct methods.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rumqttc::{
    AsyncClient, ConnectReturnCode, Event as MqttEvent, MqttOptions, Outgoing, Packet, QoS,
    TlsConfiguration, Transport,
};
use serde_json::Value;
use tokio::sync::{mpsc, watch, Notify};

use super::environment::ModuleEnvironment;
use super::telemetry::{Event, Queue};
use super::twin::{Desired, PatchOutcome};
use super::{methods, reported, EdgeError};
use crate::node::Node;

/// At most one reported-properties patch per this interval in steady state.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(5);
const KEEP_ALIVE: Duration = Duration::from_secs(60);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A twin `GET` not answered within this is asked again.
const TWIN_GET_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the first report after a twin `GET` waits for its desired properties to be applied
/// (a configuration that takes longer is reported as it stands then).
const APPLY_WAIT: Duration = Duration::from_secs(30);
/// Largest packet read (a full twin is at most 2 × 32 KB) and written (telemetry ≤ 256 KB).
const MAX_INCOMING_PACKET: usize = 1024 * 1024;
const MAX_OUTGOING_PACKET: usize = 300 * 1024;
/// Telemetry publishes in flight at once.
const MAX_IN_FLIGHT: usize = 50;

const TWIN_RESPONSES: &str = "$iothub/twin/res/#";
const DESIRED_PATCHES: &str = "$iothub/twin/PATCH/properties/desired/#";
const METHOD_REQUESTS: &str = "$iothub/methods/POST/#";

/// What outlives one connection: the twin's desired properties as last known, what the hub
/// holds of the reported ones, and the telemetry waiting to go.
pub struct ModuleState {
    pub telemetry: Mutex<Queue>,
    pub telemetry_queued: Notify,
    /// The newest desired properties, for the task that applies them as configuration.
    pub desired: watch::Sender<Option<Desired>>,
    /// Counts the whole twins handed to `desired` (one per answered `GET`).
    pub twins_received: AtomicU64,
    /// The count of `twins_received` the apply task has seen through (applied or refused).
    pub twins_applied: watch::Sender<u64>,
    /// Request ids for the whole process, never per connection: the broker may hand a new
    /// connection a response meant for the last one (a persistent session), and a reused id
    /// would take it for the answer to its own request.
    next_rid: AtomicU64,
}

impl ModuleState {
    pub fn new() -> Arc<ModuleState> {
        Arc::new(ModuleState {
            telemetry: Mutex::new(Queue::default()),
            telemetry_queued: Notify::new(),
            desired: watch::Sender::new(None),
            twins_received: AtomicU64::new(0),
            twins_applied: watch::Sender::new(0),
            next_rid: AtomicU64::new(1),
        })
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.telemetry.lock().unwrap_or_else(|e| e.into_inner())
    }
}

enum Ended {
    Stopped,
    Renew,
}

/// Connect, and reconnect, until `shutdown` turns true.
pub async fn run(
    env: ModuleEnvironment,
    node: Arc<Node>,
    state: Arc<ModuleState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_secs(1);
    loop {
        if *shutdown.borrow() {
            return;
        }
        let mut session = Session::new(&env, &node, &state);
        match session.run(&mut shutdown).await {
            Ok(Ended::Stopped) => return,
            Ok(Ended::Renew) => {
                tracing::debug!("renewing the edgeHub connection with a fresh token");
                backoff = Duration::from_secs(1);
                continue;
            }
            Err(e) => {
                if session.connected {
                    backoff = Duration::from_secs(1);
                }
                tracing::warn!(error = %e, retry_in_s = backoff.as_secs(), "edgeHub connection lost; the registry keeps serving");
            }
        }
        let jitter = Duration::from_millis(rand::random::<u64>() % 500);
        tokio::select! {
            _ = tokio::time::sleep(backoff + jitter) => {}
            _ = shutdown.changed() => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// What each publish was, in the order they were handed to the client (rumqttc numbers them
/// in the same order).
enum Sent {
    Telemetry(Event),
    Other,
}

struct Session<'a> {
    env: &'a ModuleEnvironment,
    node: &'a Arc<Node>,
    state: &'a ModuleState,
    client: Option<AsyncClient>,
    connected: bool,
    twin_get: Option<(String, Instant)>,
    /// After a twin `GET`: which twin the first report waits for the apply task to finish,
    /// and since when (so the hub never sees the state from before the twin's configuration).
    report_waits_for: Option<(u64, Instant)>,
    /// What the hub holds of the reported properties (known once the twin `GET` answered).
    confirmed: Option<Value>,
    patch_in_flight: Option<(String, Value)>,
    last_patch_at: Option<Instant>,
    sent: VecDeque<Sent>,
    in_flight: HashMap<u16, Event>,
}

impl<'a> Session<'a> {
    fn new(env: &'a ModuleEnvironment, node: &'a Arc<Node>, state: &'a ModuleState) -> Self {
        Session {
            env,
            node,
            state,
            client: None,
            connected: false,
            twin_get: None,
            report_waits_for: None,
            confirmed: None,
            patch_in_flight: None,
            last_patch_at: None,
            sent: VecDeque::new(),
            in_flight: HashMap::new(),
        }
    }

    async fn run(&mut self, shutdown: &mut watch::Receiver<bool>) -> Result<Ended, EdgeError> {
        let (token, expiry) = self.env.sas_token().await?;
        let trust = self.env.trust_bundle().await?;
        let mut options = MqttOptions::new(
            self.env.client_id(),
            &self.env.gateway_hostname,
            self.env.mqtt_port,
        );
        options
            .set_keep_alive(KEEP_ALIVE)
            .set_clean_session(false)
            .set_credentials(self.env.username(), token)
            .set_max_packet_size(MAX_INCOMING_PACKET, MAX_OUTGOING_PACKET)
            .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                Arc::new(super::tls::client_config(&trust)?),
            )));
        let (client, mut eventloop) = AsyncClient::new(options, 256);
        self.client = Some(client);
        // The event loop runs in its own task (its poll is not safe to cancel mid-read).
        let (events_tx, mut events) = mpsc::channel(64);
        let poller = tokio::spawn(async move {
            loop {
                let event = eventloop.poll().await;
                let failed = event.is_err();
                if events_tx.send(event).await.is_err() || failed {
                    return;
                }
            }
        });
        let _stop_poller = AbortOnDrop(poller);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let life = Duration::from_secs(expiry.saturating_sub(now));
        let renew_at = Instant::now() + life.mul_f64(super::sas::RENEW_AT_FRACTION);
        let mut status = self.node.status().subscribe();
        let mut applied = self.state.twins_applied.subscribe();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let state = self.state;
        let result = loop {
            tokio::select! {
                _ = shutdown.changed() => {
                    self.disconnect().await;
                    break Ok(Ended::Stopped);
                }
                _ = tokio::time::sleep_until(renew_at.into()) => {
                    self.disconnect().await;
                    break Ok(Ended::Renew);
                }
                event = events.recv() => match event {
                    Some(Ok(event)) => {
                        if let Err(e) = self.on_event(event).await {
                            break Err(e);
                        }
                    }
                    Some(Err(e)) => break Err(EdgeError::Mqtt(e.to_string())),
                    None => break Err(EdgeError::Mqtt("the MQTT event loop ended".into())),
                },
                _ = tick.tick() => self.maintain(),
                _ = state.telemetry_queued.notified() => self.send_telemetry(),
                _ = status.changed() => self.report(),
                _ = applied.changed() => self.report(),
            }
        };
        // Whatever edgeHub did not acknowledge goes out again on the next connection.
        let unacknowledged: Vec<Event> = {
            let mut pkids: Vec<u16> = self.in_flight.keys().copied().collect();
            pkids.sort_unstable();
            let mut events: Vec<Event> = pkids
                .into_iter()
                .filter_map(|p| self.in_flight.remove(&p))
                .collect();
            events.extend(self.sent.drain(..).filter_map(|s| match s {
                Sent::Telemetry(e) => Some(e),
                Sent::Other => None,
            }));
            events
        };
        if !unacknowledged.is_empty() {
            self.state.queue().requeue_front(unacknowledged.into_iter());
        }
        result
    }

    async fn disconnect(&self) {
        if let Some(client) = &self.client {
            let _ = client.try_disconnect();
        }
        // Give the DISCONNECT a moment to be written.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    fn rid(&mut self) -> String {
        self.state
            .next_rid
            .fetch_add(1, Ordering::Relaxed)
            .to_string()
    }

    fn publish(&mut self, topic: String, payload: Vec<u8>, what: Sent) -> bool {
        let Some(client) = &self.client else {
            return false;
        };
        match client.try_publish(topic, QoS::AtLeastOnce, false, payload) {
            Ok(()) => {
                self.sent.push_back(what);
                true
            }
            Err(e) => {
                tracing::debug!(error = %e, "could not queue an MQTT publish");
                if let Sent::Telemetry(event) = what {
                    self.state.queue().requeue_front(std::iter::once(event));
                }
                false
            }
        }
    }

    async fn on_event(&mut self, event: MqttEvent) -> Result<(), EdgeError> {
        match event {
            MqttEvent::Incoming(Packet::ConnAck(ack)) => {
                if ack.code != ConnectReturnCode::Success {
                    return Err(EdgeError::Mqtt(format!(
                        "edgeHub refused the connection: {:?}",
                        ack.code
                    )));
                }
                self.on_connected()?;
            }
            MqttEvent::Incoming(Packet::Publish(publish)) => {
                self.on_publish(&publish.topic, &publish.payload).await;
            }
            MqttEvent::Incoming(Packet::PubAck(ack))
                if self.in_flight.remove(&ack.pkid).is_some() =>
            {
                self.send_telemetry();
            }
            MqttEvent::Outgoing(Outgoing::Publish(pkid)) => {
                if let Some(Sent::Telemetry(event)) = self.sent.pop_front() {
                    self.in_flight.insert(pkid, event);
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn on_connected(&mut self) -> Result<(), EdgeError> {
        tracing::info!(
            gateway = %self.env.gateway_hostname,
            client_id = %self.env.client_id(),
            "connected to edgeHub"
        );
        self.connected = true;
        let client = self.client.as_ref().expect("a session has a client");
        // Patches first, then the whole twin: nothing falls between the two.
        for topic in [TWIN_RESPONSES, DESIRED_PATCHES, METHOD_REQUESTS] {
            client
                .try_subscribe(topic, QoS::AtLeastOnce)
                .map_err(|e| EdgeError::Mqtt(format!("subscribing to {topic}: {e}")))?;
        }
        self.get_twin();
        self.send_telemetry();
        Ok(())
    }

    fn get_twin(&mut self) {
        let rid = self.rid();
        if self.publish(
            format!("$iothub/twin/GET/?$rid={rid}"),
            Vec::new(),
            Sent::Other,
        ) {
            self.twin_get = Some((rid, Instant::now()));
        }
    }

    async fn on_publish(&mut self, topic: &str, payload: &[u8]) {
        if let Some(rest) = topic.strip_prefix("$iothub/twin/res/") {
            let (code, rid) = parse_response(rest);
            self.on_twin_response(code, rid.as_deref(), payload);
        } else if let Some(rest) = topic.strip_prefix("$iothub/twin/PATCH/properties/desired/") {
            let version = query_value(rest, "$version").and_then(|v| v.parse().ok());
            match serde_json::from_slice::<Value>(payload) {
                Ok(patch) => self.on_desired_patch(&patch, version),
                Err(e) => {
                    tracing::warn!(error = %e, "a desired-properties patch that is not JSON; ignored")
                }
            }
        } else if let Some(rest) = topic.strip_prefix("$iothub/methods/POST/") {
            let name = rest.split('/').next().unwrap_or_default().to_owned();
            let Some(rid) = query_value(rest, "$rid") else {
                tracing::warn!(%topic, "a method request without $rid; ignored");
                return;
            };
            let request = serde_json::from_slice::<Value>(payload).unwrap_or(Value::Null);
            let (status, answer) = methods::call(self.node, &name, &request).await;
            tracing::info!(method = %name, status, "direct method answered");
            self.publish(
                format!("$iothub/methods/res/{status}/?$rid={rid}"),
                answer.to_string().into_bytes(),
                Sent::Other,
            );
        }
    }

    fn on_twin_response(&mut self, code: u16, rid: Option<&str>, payload: &[u8]) {
        let is_get = matches!((&self.twin_get, rid), (Some((r, _)), Some(got)) if r == got);
        if is_get {
            self.twin_get = None;
            if code != 200 {
                tracing::warn!(code, "edgeHub refused the twin GET; asking again shortly");
                return;
            }
            let twin: Value = serde_json::from_slice(payload).unwrap_or_default();
            let desired = Desired::from_full(twin.get("desired").unwrap_or(&Value::Null));
            let received = self.state.twins_received.fetch_add(1, Ordering::SeqCst) + 1;
            self.state.desired.send_replace(Some(desired));
            self.report_waits_for = Some((received, Instant::now()));
            self.confirmed = Some(match twin.get("reported") {
                Some(r @ Value::Object(_)) => super::twin::strip_bookkeeping(r),
                _ => Value::Object(Default::default()),
            });
            self.last_patch_at = None;
            self.report();
            return;
        }
        let is_patch =
            matches!((&self.patch_in_flight, rid), (Some((r, _)), Some(got)) if r == got);
        if is_patch {
            let (_, document) = self.patch_in_flight.take().expect("matched above");
            if !(200..300).contains(&code) {
                tracing::warn!(
                    code,
                    answer = %String::from_utf8_lossy(payload),
                    "edgeHub refused the reported properties"
                );
            }
            // Refused or not, this state is not sent again; the next change is.
            self.confirmed = Some(document);
        }
    }

    fn on_desired_patch(&mut self, patch: &Value, version: Option<i64>) {
        let mut outcome = PatchOutcome::Gap;
        self.state
            .desired
            .send_if_modified(|desired| match desired {
                Some(d) => {
                    outcome = d.patch(patch, version);
                    outcome == PatchOutcome::Applied
                }
                None => false,
            });
        match outcome {
            PatchOutcome::Applied => tracing::info!(?version, "desired properties changed"),
            PatchOutcome::Stale => tracing::debug!(?version, "an old desired patch; ignored"),
            PatchOutcome::Gap => {
                tracing::info!(
                    ?version,
                    "desired patches were missed; reading the whole twin"
                );
                if self.twin_get.is_none() {
                    self.get_twin();
                }
            }
        }
    }

    /// Patch the reported properties with what changed, at most every [`REPORT_INTERVAL`].
    fn report(&mut self) {
        if let Some((twin, since)) = self.report_waits_for {
            if *self.state.twins_applied.borrow() < twin && since.elapsed() < APPLY_WAIT {
                return;
            }
            self.report_waits_for = None;
        }
        let Some(confirmed) = &self.confirmed else {
            return;
        };
        if self.patch_in_flight.is_some()
            || self
                .last_patch_at
                .is_some_and(|at| at.elapsed() < REPORT_INTERVAL)
        {
            return;
        }
        let document = reported::document(&self.node.status().snapshot());
        let Some(patch) = reported::diff(confirmed, &document) else {
            return;
        };
        if let Err(e) = reported::validate(&patch) {
            tracing::error!(error = %e, "the reported properties would break edgeHub's rules; not sent");
            self.confirmed = Some(document);
            return;
        }
        let rid = self.rid();
        if self.publish(
            format!("$iothub/twin/PATCH/properties/reported/?$rid={rid}"),
            patch.to_string().into_bytes(),
            Sent::Other,
        ) {
            self.patch_in_flight = Some((rid, document));
            self.last_patch_at = Some(Instant::now());
        }
    }

    /// Once a second: ask again for a twin nobody answered, report what waited for the rate
    /// limit, and send telemetry.
    fn maintain(&mut self) {
        if !self.connected {
            return;
        }
        if let Some((_, asked)) = &self.twin_get {
            if asked.elapsed() > TWIN_GET_TIMEOUT {
                self.twin_get = None;
            }
        }
        if self.twin_get.is_none() && self.confirmed.is_none() {
            self.get_twin();
        }
        if let Some((_, _)) = &self.patch_in_flight {
            if self
                .last_patch_at
                .is_some_and(|at| at.elapsed() > TWIN_GET_TIMEOUT)
            {
                self.patch_in_flight = None;
            }
        }
        self.report();
        self.send_telemetry();
    }

    fn send_telemetry(&mut self) {
        if !self.connected {
            return;
        }
        while self.in_flight.len() + self.sent.len() < MAX_IN_FLIGHT {
            let Some(event) = self.state.queue().pop() else {
                return;
            };
            let topic = event.topic(&self.env.device_id, &self.env.module_id);
            let body = event.body.to_string().into_bytes();
            if !self.publish(topic, body, Sent::Telemetry(event)) {
                return;
            }
        }
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `{status}/?$rid={rid}[&…]` → status and rid.
fn parse_response(rest: &str) -> (u16, Option<String>) {
    let code = rest
        .split('/')
        .next()
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, query_value(rest, "$rid"))
}

/// The value of `key` in the `?a=b&c=d` part of a topic.
fn query_value(topic: &str, key: &str) -> Option<String> {
    let query = topic.split_once('?')?.1;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key || k == super::sas::quote(key)).then(|| v.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_parsed_as_edgehub_sends_them() {
        assert_eq!(parse_response("200/?$rid=7"), (200, Some("7".into())));
        assert_eq!(
            parse_response("204/?$rid=12&$version=4"),
            (204, Some("12".into()))
        );
        assert_eq!(query_value("?$version=9", "$version").as_deref(), Some("9"));
        assert_eq!(
            query_value("sync/?$rid=abc", "$rid").as_deref(),
            Some("abc")
        );
    }
}
