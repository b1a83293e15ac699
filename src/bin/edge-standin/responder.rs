//! edgeHub's side of the module's MQTT conversation, played by an MQTT client of the stand-in's
//! own mosquitto: it answers twin GETs, validates and applies reported patches (answering 204,
//! or 400 and recording the violation), records telemetry, publishes desired patches and calls
//! direct methods, waiting for the module's response. It reconnects by itself when the broker
//! goes away, and can be woken to reconnect at once when the broker comes back.
//!
//! Topics are not namespaced per client in mosquitto, so the stand-in serves exactly one module
//! identity: whoever publishes a twin request gets the answer on the shared response topic.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Packet, Publish, QoS, SubscribeFilter,
    SubscribeReasonCode, TlsConfiguration, Transport,
};
use serde_json::{json, Map, Value};
use tokio::sync::{oneshot, watch, Notify};

use crate::topics::{classify, property_bag, Topic};
use crate::twin::{validate_reported, Twin};

/// The responder's MQTT client id (any id that cannot be a module's `device/module`).
pub const CLIENT_ID: &str = "edge-standin-responder";
/// Telemetry messages kept (oldest dropped first).
const MAX_TELEMETRY: usize = 10_000;
const MAX_VIOLATIONS: usize = 1_000;
/// Applied reported patches kept, in order (oldest dropped first).
const MAX_REPORTED_PATCHES: usize = 1_000;
/// Bigger than edgeHub's 256 KiB message limit, so the stand-in never refuses what edgeHub takes.
const MAX_PACKET: usize = 1024 * 1024;

/// What the module answered to a direct method.
#[derive(Debug)]
pub struct MethodReply {
    pub status: u16,
    pub payload: Value,
}

pub struct Responder {
    client: AsyncClient,
    twin: Mutex<Twin>,
    telemetry: Mutex<VecDeque<Value>>,
    violations: Mutex<Vec<Value>>,
    /// Every reported patch applied, in the order applied: what the hub was told, and when.
    reported_patches: Mutex<VecDeque<Value>>,
    pending: Mutex<HashMap<String, oneshot::Sender<MethodReply>>>,
    next_rid: AtomicU64,
    /// Counts the times the responder's subscriptions were granted (once per connection).
    subscribed: watch::Sender<u64>,
    wake: Notify,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A rustls client configuration (ring provider) that trusts only `ca_pem`.
fn tls_config(ca_pem: &str) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(cert.context("unreadable CA certificate")?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

impl Responder {
    /// Connect to the broker on 127.0.0.1 (TLS, trusting `ca_pem`) and start answering.
    pub fn start(mqtt_port: u16, ca_pem: &str, desired: Map<String, Value>) -> Result<Arc<Self>> {
        let mut opts = MqttOptions::new(CLIENT_ID, "127.0.0.1", mqtt_port);
        opts.set_keep_alive(Duration::from_secs(30))
            .set_clean_session(true)
            .set_max_packet_size(MAX_PACKET, MAX_PACKET)
            .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                Arc::new(tls_config(ca_pem)?),
            )));
        let (client, eventloop) = AsyncClient::new(opts, 1024);
        let (subscribed, _) = watch::channel(0);
        let me = Arc::new(Responder {
            client,
            twin: Mutex::new(Twin::new(desired)),
            telemetry: Mutex::new(VecDeque::new()),
            violations: Mutex::new(Vec::new()),
            reported_patches: Mutex::new(VecDeque::new()),
            pending: Mutex::new(HashMap::new()),
            next_rid: AtomicU64::new(1),
            subscribed,
            wake: Notify::new(),
        });
        tokio::spawn(me.clone().run(eventloop));
        Ok(me)
    }

    /// How many times the subscriptions have been granted so far.
    pub fn subscribed_count(&self) -> u64 {
        *self.subscribed.borrow()
    }

    /// Wait until the subscriptions are granted more than `after` times; false on timeout.
    pub async fn wait_subscribed(&self, after: u64, timeout: Duration) -> bool {
        let mut rx = self.subscribed.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|n| *n > after))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Cut a reconnect backoff short (the broker is back).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    async fn run(self: Arc<Self>, mut eventloop: EventLoop) {
        let mut backoff = Duration::from_millis(50);
        let mut reported_down = false;
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    backoff = Duration::from_millis(50);
                    reported_down = false;
                    tracing::info!("responder connected to the broker");
                    if let Err(e) = self.client.try_subscribe_many(subscriptions()) {
                        tracing::error!("responder cannot subscribe: {e}");
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    if ack
                        .return_codes
                        .iter()
                        .all(|c| matches!(c, SubscribeReasonCode::Success(_)))
                    {
                        self.subscribed.send_modify(|n| *n += 1);
                    } else {
                        tracing::error!("broker refused a responder subscription: {ack:?}");
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => self.handle(p),
                Ok(_) => {}
                Err(e) => {
                    if !reported_down {
                        tracing::warn!("responder lost the broker ({e}); reconnecting");
                        reported_down = true;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = self.wake.notified() => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    fn publish(&self, topic: String, payload: Vec<u8>) {
        if let Err(e) = self
            .client
            .try_publish(topic.clone(), QoS::AtLeastOnce, false, payload)
        {
            tracing::error!("cannot publish on {topic}: {e}");
        }
    }

    fn handle(&self, p: Publish) {
        match classify(&p.topic) {
            Topic::TwinGet { rid } => {
                let doc = lock(&self.twin).document();
                self.publish(
                    format!("$iothub/twin/res/200/?$rid={rid}"),
                    doc.to_string().into_bytes(),
                );
            }
            Topic::ReportedPatch { rid } => self.reported_patch(&rid, &p.payload),
            Topic::MethodResponse { status, rid } => {
                let payload = if p.payload.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_slice(&p.payload).unwrap_or_else(|_| {
                        Value::String(String::from_utf8_lossy(&p.payload).into_owned())
                    })
                };
                match lock(&self.pending).remove(&rid) {
                    Some(tx) => {
                        let _ = tx.send(MethodReply { status, payload });
                    }
                    None => tracing::warn!(rid, "method response for no pending call"),
                }
            }
            Topic::Telemetry {
                device,
                module,
                bag,
            } => {
                let props = property_bag(bag);
                let body = serde_json::from_slice::<Value>(&p.payload).unwrap_or_else(|_| {
                    Value::String(String::from_utf8_lossy(&p.payload).into_owned())
                });
                let record = json!({
                    "output": props.get("$.on").cloned().unwrap_or(Value::Null),
                    "properties": props,
                    "body": body,
                    "topic": p.topic,
                    "device": device,
                    "module": module,
                    "receivedAt": now_rfc3339(),
                });
                let mut telemetry = lock(&self.telemetry);
                if telemetry.len() >= MAX_TELEMETRY {
                    telemetry.pop_front();
                }
                telemetry.push_back(record);
            }
            Topic::Other => tracing::debug!(topic = p.topic, "ignored publish"),
        }
    }

    fn reported_patch(&self, rid: &str, payload: &[u8]) {
        match validate_reported(payload) {
            Ok(patch) => {
                {
                    let mut history = lock(&self.reported_patches);
                    if history.len() >= MAX_REPORTED_PATCHES {
                        history.pop_front();
                    }
                    history.push_back(json!({
                        "rid": rid,
                        "patch": Value::Object(patch.clone()),
                        "receivedAt": now_rfc3339(),
                    }));
                }
                lock(&self.twin).patch_reported(&patch);
                self.publish(format!("$iothub/twin/res/204/?$rid={rid}"), Vec::new());
            }
            Err(errors) => {
                tracing::warn!(rid, ?errors, "refused a reported patch");
                let body = json!({"message": errors.join("; ")});
                {
                    let mut violations = lock(&self.violations);
                    if violations.len() < MAX_VIOLATIONS {
                        violations.push(json!({
                            "rid": rid,
                            "errors": errors,
                            "patch": String::from_utf8_lossy(&payload[..payload.len().min(4096)]),
                            "patchBytes": payload.len(),
                            "receivedAt": now_rfc3339(),
                        }));
                    }
                }
                self.publish(
                    format!("$iothub/twin/res/400/?$rid={rid}"),
                    body.to_string().into_bytes(),
                );
            }
        }
    }

    pub fn twin(&self) -> Value {
        lock(&self.twin).document()
    }

    pub fn telemetry(&self) -> Value {
        Value::Array(lock(&self.telemetry).iter().cloned().collect())
    }

    pub fn clear_telemetry(&self) {
        lock(&self.telemetry).clear();
    }

    pub fn reported_patches(&self) -> Value {
        Value::Array(lock(&self.reported_patches).iter().cloned().collect())
    }

    pub fn violations(&self) -> Value {
        Value::Array(lock(&self.violations).clone())
    }

    pub fn clear_violations(&self) {
        lock(&self.violations).clear();
    }

    /// Merge `patch` into the desired properties and send it to the module. Returns the new
    /// desired document.
    pub fn patch_desired(&self, patch: Map<String, Value>) -> Value {
        let mut twin = lock(&self.twin);
        let sent = twin.patch_desired(patch);
        self.publish_desired(&sent);
        twin.desired_document()
    }

    /// Replace the desired properties and send the difference to the module (nothing is sent
    /// when nothing changed). Returns the new desired document.
    pub fn put_desired(&self, desired: Map<String, Value>) -> Value {
        let mut twin = lock(&self.twin);
        if let Some(sent) = twin.replace_desired(desired) {
            self.publish_desired(&sent);
        }
        twin.desired_document()
    }

    /// Publish while the twin lock is held, so patches go out in `$version` order.
    fn publish_desired(&self, patch: &Value) {
        let version = patch["$version"].as_u64().unwrap_or(0);
        self.publish(
            format!("$iothub/twin/PATCH/properties/desired/?$version={version}"),
            patch.to_string().into_bytes(),
        );
    }

    /// Call direct method `name` with `payload`; `None` when the module does not answer within
    /// `timeout`.
    pub async fn call_method(
        &self,
        name: &str,
        payload: &Value,
        timeout: Duration,
    ) -> Option<MethodReply> {
        let rid = format!("{:x}", self.next_rid.fetch_add(1, Ordering::SeqCst));
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(rid.clone(), tx);
        self.publish(
            format!("$iothub/methods/POST/{name}/?$rid={rid}"),
            payload.to_string().into_bytes(),
        );
        let reply = tokio::time::timeout(timeout, rx)
            .await
            .ok()
            .and_then(Result::ok);
        lock(&self.pending).remove(&rid);
        reply
    }
}

/// Everything the module publishes that edgeHub would act on. mosquitto does not match
/// `$`-topics with a leading wildcard, so each `$iothub` prefix is explicit. The two telemetry
/// filters overlap (`#` also matches the parent level); mosquitto delivers a message once.
fn subscriptions() -> Vec<SubscribeFilter> {
    [
        "$iothub/twin/GET/#",
        "$iothub/twin/PATCH/properties/reported/#",
        "devices/+/modules/+/messages/events/#",
        "devices/+/modules/+/messages/events",
        "$iothub/methods/res/#",
    ]
    .into_iter()
    .map(|t| SubscribeFilter::new(t.to_owned(), QoS::AtLeastOnce))
    .collect()
}

pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
