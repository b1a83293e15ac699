//! The control API (HTTP/1.1 on loopback, JSON in and out): how a test or a developer plays
//! IoT Hub and the operator — read and change the twin, read telemetry, call direct methods,
//! see the MQTT connections, the reported patches applied and refused, count workload API
//! requests, and stop, start or restart the broker.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;

use crate::broker::Broker;
use crate::http::{json_reply, message, parse_json, query_param, read_body, serve, Refusal, Reply};
use crate::responder::Responder;
use crate::workload::Workload;

const MAX_BODY: usize = 1024 * 1024;
const DEFAULT_METHOD_TIMEOUT: f64 = 30.0;
const MAX_METHOD_TIMEOUT: f64 = 300.0;
/// How long a broker start waits for the responder to subscribe again.
const RESUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(15);

pub struct Control {
    pub responder: Arc<Responder>,
    pub broker: Arc<Broker>,
    pub workload: Arc<Workload>,
}

impl Control {
    /// Bind `addr` (loopback only: the API has no authentication) and serve it. Returns the
    /// bound address.
    pub async fn listen(self: Arc<Self>, addr: SocketAddr) -> Result<SocketAddr> {
        if !addr.ip().is_loopback() {
            bail!("--control must be a loopback address (the control API has no authentication), got {addr}");
        }
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} for the control API"))?;
        let bound = listener.local_addr()?;
        let handler = Arc::new(move |req| {
            let me = self.clone();
            async move { me.handle(req).await }
        });
        tokio::spawn(async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => serve(stream, handler.clone()),
                    Err(e) => {
                        tracing::warn!("control API accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Ok(bound)
    }

    async fn handle(&self, req: Request<Incoming>) -> Reply {
        let path = req.uri().path().trim_matches('/').to_owned();
        let segments: Vec<&str> = path.split('/').collect();
        let method = req.method().clone();
        match (&method, segments.as_slice()) {
            (&Method::GET, ["twin"]) => json_reply(StatusCode::OK, &self.responder.twin()),
            (&Method::PUT, ["twin", "desired"]) => match read_object(req).await {
                Ok(desired) => json_reply(StatusCode::OK, &self.responder.put_desired(desired)),
                Err(refusal) => refusal.into(),
            },
            (&Method::PATCH, ["twin", "desired"]) => match read_object(req).await {
                Ok(patch) => json_reply(StatusCode::OK, &self.responder.patch_desired(patch)),
                Err(refusal) => refusal.into(),
            },
            (&Method::GET, ["twin", "reported", "patches"]) => {
                json_reply(StatusCode::OK, &self.responder.reported_patches())
            }
            (&Method::GET, ["telemetry"]) => {
                json_reply(StatusCode::OK, &self.responder.telemetry())
            }
            (&Method::DELETE, ["telemetry"]) => {
                self.responder.clear_telemetry();
                json_reply(StatusCode::OK, &json!([]))
            }
            (&Method::POST, ["methods", name]) => {
                let name = name.to_string();
                self.call_method(&name, req).await
            }
            (&Method::GET, ["connections"]) => {
                json_reply(StatusCode::OK, &Value::Array(self.broker.connections()))
            }
            (&Method::GET, ["violations"]) => {
                json_reply(StatusCode::OK, &self.responder.violations())
            }
            (&Method::DELETE, ["violations"]) => {
                self.responder.clear_violations();
                json_reply(StatusCode::OK, &json!([]))
            }
            (&Method::GET, ["workload"]) => json_reply(StatusCode::OK, &self.workload.counts()),
            (&Method::GET, ["broker"]) => json_reply(
                StatusCode::OK,
                &json!({"running": self.broker.running().await}),
            ),
            (&Method::POST, ["broker", action]) => self.broker_action(action).await,
            (
                _,
                ["twin"]
                | ["twin", "desired"]
                | ["twin", "reported", "patches"]
                | ["telemetry"]
                | ["methods", _]
                | ["connections"]
                | ["violations"]
                | ["workload"]
                | ["broker"]
                | ["broker", _],
            ) => message(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} is not allowed on /{path}"),
            ),
            _ => message(
                StatusCode::NOT_FOUND,
                format!("no control API route /{path}; see the edge-standin documentation"),
            ),
        }
    }

    async fn call_method(&self, name: &str, req: Request<Incoming>) -> Reply {
        if name.is_empty()
            || name
                .chars()
                .any(|c| matches!(c, '/' | '+' | '#' | '?') || c.is_whitespace() || c.is_control())
        {
            return message(
                StatusCode::BAD_REQUEST,
                format!("invalid method name {name:?}"),
            );
        }
        let timeout = match query_param(&req, "timeout") {
            None => DEFAULT_METHOD_TIMEOUT,
            Some(t) => match t.parse::<f64>() {
                Ok(s) if s > 0.0 && s <= MAX_METHOD_TIMEOUT => s,
                _ => {
                    return message(
                        StatusCode::BAD_REQUEST,
                        format!("timeout must be a number of seconds in (0, {MAX_METHOD_TIMEOUT}], got {t:?}"),
                    )
                }
            },
        };
        let body = match read_body(req.into_body(), MAX_BODY).await {
            Ok(b) => b,
            Err(refusal) => return refusal.into(),
        };
        let payload = if body.iter().all(u8::is_ascii_whitespace) {
            Value::Null
        } else {
            match parse_json(&body) {
                Ok(v) => v,
                Err(refusal) => return refusal.into(),
            }
        };
        match self
            .responder
            .call_method(name, &payload, Duration::from_secs_f64(timeout))
            .await
        {
            Some(reply) => json_reply(
                StatusCode::OK,
                &json!({"status": reply.status, "payload": reply.payload}),
            ),
            None => message(
                StatusCode::GATEWAY_TIMEOUT,
                format!("the module did not answer method {name:?} within {timeout} s"),
            ),
        }
    }

    async fn broker_action(&self, action: &str) -> Reply {
        if action == "start" && self.broker.running().await {
            return json_reply(StatusCode::OK, &json!({"running": true}));
        }
        let before = self.responder.subscribed_count();
        let result = match action {
            "stop" => self.broker.stop().await,
            "start" => self.broker.start().await,
            "restart" => self.broker.restart().await,
            _ => {
                return message(
                    StatusCode::NOT_FOUND,
                    format!("unknown broker action {action:?}: use stop, start or restart"),
                )
            }
        };
        if let Err(e) = result {
            return message(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"));
        }
        if action == "stop" {
            return json_reply(StatusCode::OK, &json!({"running": false}));
        }
        // Have the responder reconnect now, and answer only once it listens again, so a test
        // that restarts the broker knows edgeHub's side is back.
        self.responder.wake();
        if self
            .responder
            .wait_subscribed(before, RESUBSCRIBE_TIMEOUT)
            .await
        {
            json_reply(StatusCode::OK, &json!({"running": true}))
        } else {
            message(
                StatusCode::GATEWAY_TIMEOUT,
                format!("the broker runs but the responder did not subscribe again within {RESUBSCRIBE_TIMEOUT:?}"),
            )
        }
    }
}

async fn read_object(req: Request<Incoming>) -> Result<Map<String, Value>, Refusal> {
    let bytes = read_body(req.into_body(), MAX_BODY).await?;
    match parse_json(&bytes)? {
        Value::Object(map) => Ok(map),
        other => Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            format!("expected a JSON object, got {other}"),
        )),
    }
}
