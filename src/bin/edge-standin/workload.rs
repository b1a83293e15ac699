//! The workload API (HTTP/1.1 over a unix socket), as aziot-edged serves it to a module
//! (iot-edge-protocol.md §2): `/sign` (HMAC-SHA256 with the module key), `/trust-bundle`,
//! `/manifest-trust-bundle` and `/certificate/server`, with edgelet's `api-version` rule and its
//! `{"message": …}` errors. It counts requests by route so tests can see what a module used.
//! Unlike edgelet it cannot check the caller's container (SO_PEERCRED), so it never answers 403.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::net::UnixListener;

use crate::certs::{now_unix, Material, MAX_SERVER_CERT_DAYS};
use crate::http::{
    json_reply, message, parse_json, percent_decode, query_param, read_body, serve, Refusal, Reply,
};
use crate::identity::Identity;

/// The `api-version` values edgelet knows (`edgelet-http/src/version.rs`); every workload route
/// accepts all of them.
pub const API_VERSIONS: &[&str] = &[
    "2018-06-28",
    "2019-01-30",
    "2019-10-22",
    "2019-11-05",
    "2020-07-07",
    "2021-12-07",
    "2022-08-03",
];
const MAX_BODY: usize = 64 * 1024;
const DAY: u64 = 86_400;

/// The workload API's state.
pub struct Workload {
    identity: Identity,
    material: Arc<Material>,
    counts: Mutex<BTreeMap<String, u64>>,
}

/// The routes, as counted on the control API.
#[derive(Clone, Copy)]
enum Route<'a> {
    Sign { module: &'a str, genid: &'a str },
    ServerCert { module: &'a str, genid: &'a str },
    TrustBundle,
    ManifestTrustBundle,
}

impl Route<'_> {
    fn name(&self) -> &'static str {
        match self {
            Route::Sign { .. } => "/sign",
            Route::ServerCert { .. } => "/certificate/server",
            Route::TrustBundle => "/trust-bundle",
            Route::ManifestTrustBundle => "/manifest-trust-bundle",
        }
    }

    fn method(&self) -> Method {
        match self {
            Route::Sign { .. } | Route::ServerCert { .. } => Method::POST,
            Route::TrustBundle | Route::ManifestTrustBundle => Method::GET,
        }
    }
}

fn route(segments: &[String]) -> Option<Route<'_>> {
    let s: Vec<&str> = segments.iter().map(String::as_str).collect();
    match s.as_slice() {
        ["trust-bundle"] => Some(Route::TrustBundle),
        ["manifest-trust-bundle"] => Some(Route::ManifestTrustBundle),
        ["modules", module, "genid", genid, "sign"] => Some(Route::Sign { module, genid }),
        ["modules", module, "genid", genid, "certificate", "server"] => {
            Some(Route::ServerCert { module, genid })
        }
        _ => None,
    }
}

impl Workload {
    pub fn new(identity: Identity, material: Arc<Material>) -> Arc<Workload> {
        Arc::new(Workload {
            identity,
            material,
            counts: Mutex::new(BTreeMap::new()),
        })
    }

    /// Requests seen, by route (`other` for paths that match none).
    pub fn counts(&self) -> Value {
        json!(*self.counts.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Bind the socket (mode 0666, so a non-root container user can connect) and serve it.
    pub fn listen(self: &Arc<Self>) -> Result<()> {
        let path = self.identity.workload_socket();
        if path.exists() {
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
        }
        let listener = UnixListener::bind(&path)
            .with_context(|| format!("cannot listen on {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))
            .with_context(|| format!("cannot chmod {}", path.display()))?;
        let me = self.clone();
        tokio::spawn(async move {
            let handler = Arc::new(move |req| {
                let me = me.clone();
                async move { me.handle(req).await }
            });
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => serve(stream, handler.clone()),
                    Err(e) => {
                        tracing::warn!("workload socket accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Ok(())
    }

    fn count(&self, name: &str) {
        *self
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name.to_owned())
            .or_default() += 1;
    }

    async fn handle(&self, req: Request<Incoming>) -> Reply {
        let segments: Vec<String> = req
            .uri()
            .path()
            .trim_start_matches('/')
            .split('/')
            .map(percent_decode)
            .collect();
        let Some(route) = route(&segments) else {
            self.count("other");
            return message(
                StatusCode::NOT_FOUND,
                format!("no workload API route for {}", req.uri().path()),
            );
        };
        self.count(route.name());
        if req.method() != route.method() {
            return message(
                StatusCode::METHOD_NOT_ALLOWED,
                format!(
                    "{} takes {}, not {}",
                    route.name(),
                    route.method(),
                    req.method()
                ),
            );
        }
        if let Err(reply) = check_api_version(query_param(&req, "api-version")) {
            return reply.into();
        }
        match route {
            Route::TrustBundle => json_reply(
                StatusCode::OK,
                &json!({"certificate": self.material.ca.pem}),
            ),
            Route::ManifestTrustBundle => json_reply(StatusCode::OK, &json!({"certificate": ""})),
            Route::Sign { module, genid } => {
                if let Err(reply) = self.check_module(module, genid) {
                    return reply.into();
                }
                match read_json(req).await {
                    Ok(body) => self.sign(&body),
                    Err(refusal) => refusal.into(),
                }
            }
            Route::ServerCert { module, genid } => {
                if let Err(reply) = self.check_module(module, genid) {
                    return reply.into();
                }
                match read_json(req).await {
                    Ok(body) => self.server_cert(&body),
                    Err(refusal) => refusal.into(),
                }
            }
        }
    }

    /// edgelet trims a leading `$` from the module name; the generation id must match too.
    fn check_module(&self, module: &str, genid: &str) -> Result<(), Refusal> {
        let module = module.strip_prefix('$').unwrap_or(module);
        if module != self.identity.module_id {
            return Err(Refusal::new(
                StatusCode::NOT_FOUND,
                format!("module {module:?} not found"),
            ));
        }
        if genid != self.identity.generation_id {
            return Err(Refusal::new(
                StatusCode::NOT_FOUND,
                format!("module {module:?} has no generation {genid:?}"),
            ));
        }
        Ok(())
    }

    /// `{"keyId","algo","data"}` → `{"digest"}`; like the current edgelet, only `data` is read.
    fn sign(&self, body: &Value) -> Reply {
        let Some(data) = body.get("data").and_then(Value::as_str) else {
            return message(
                StatusCode::BAD_REQUEST,
                "sign request needs \"data\" (base64 of the bytes to sign)",
            );
        };
        let bytes = match base64::engine::general_purpose::STANDARD.decode(data) {
            Ok(b) => b,
            Err(e) => {
                return message(
                    StatusCode::BAD_REQUEST,
                    format!("\"data\" is not base64: {e}"),
                )
            }
        };
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.material.module_key) else {
            return message(StatusCode::INTERNAL_SERVER_ERROR, "unusable module key");
        };
        mac.update(&bytes);
        let digest = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        json_reply(StatusCode::OK, &json!({"digest": digest}))
    }

    /// `{"commonName","expiration"}` → 201 with the key, the chain and the expiration.
    fn server_cert(&self, body: &Value) -> Reply {
        let Some(cn) = body.get("commonName").and_then(Value::as_str) else {
            return message(
                StatusCode::BAD_REQUEST,
                "server certificate request needs \"commonName\"",
            );
        };
        if cn.is_empty() || cn.len() > 64 {
            return message(
                StatusCode::BAD_REQUEST,
                "\"commonName\" must be 1 to 64 characters",
            );
        }
        let now = now_unix();
        let max = now + MAX_SERVER_CERT_DAYS * DAY;
        let not_after = match body.get("expiration") {
            None | Some(Value::Null) => max,
            Some(Value::String(s)) => match chrono::DateTime::parse_from_rfc3339(s) {
                Ok(t) if t.timestamp() <= now as i64 => {
                    return message(
                        StatusCode::BAD_REQUEST,
                        format!("\"expiration\" {s} is in the past"),
                    )
                }
                Ok(t) => (t.timestamp() as u64).min(max),
                Err(e) => {
                    return message(
                        StatusCode::BAD_REQUEST,
                        format!("\"expiration\" {s:?} is not an RFC 3339 time: {e}"),
                    )
                }
            },
            Some(other) => {
                return message(
                    StatusCode::BAD_REQUEST,
                    format!("\"expiration\" must be an RFC 3339 string, not {other}"),
                )
            }
        };
        let sans = vec![cn.to_owned(), self.identity.module_id.clone()];
        match self.material.ca.issue_server(cn, &sans, not_after) {
            Ok(issued) => {
                let expiration =
                    chrono::DateTime::<chrono::Utc>::from_timestamp(issued.not_after as i64, 0)
                        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                        .unwrap_or_default();
                json_reply(
                    StatusCode::CREATED,
                    &json!({
                        "privateKey": {"type": "key", "bytes": issued.key_pem},
                        "certificate": issued.chain_pem,
                        "expiration": expiration,
                    }),
                )
            }
            Err(e) => message(
                StatusCode::BAD_REQUEST,
                format!("cannot issue a certificate for {cn:?}: {e:#}"),
            ),
        }
    }
}

async fn read_json(req: Request<Incoming>) -> Result<Value, Refusal> {
    let bytes = read_body(req.into_body(), MAX_BODY).await?;
    let value = parse_json(&bytes)?;
    if !value.is_object() {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "request body must be a JSON object",
        ));
    }
    Ok(value)
}

/// `api-version` is required and must be one edgelet knows (2018-06-28 or later).
fn check_api_version(version: Option<String>) -> Result<(), Refusal> {
    match version {
        None => Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "the api-version query parameter is required",
        )),
        Some(v) if API_VERSIONS.contains(&v.as_str()) => Ok(()),
        Some(v) => Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            format!(
                "invalid api-version {v:?}: this route accepts {}",
                API_VERSIONS.join(", ")
            ),
        )),
    }
}
