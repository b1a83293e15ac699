//! The node as an Azure IoT Edge module: who it is ([`environment`]: the runtime's variables,
//! the [`workload`] API that signs its [`sas`] tokens and hands out the edge CA), its
//! connection to edgeHub ([`session`]: MQTT over TLS), and what flows through it — the module
//! twin's desired properties as the configuration ([`twin`]), the status as reported properties
//! ([`reported`]), [`telemetry`] events on the `telemetry` output, and direct [`methods`].
//!
//! The registry never waits for edgeHub: it serves with the last configuration the twin gave
//! (kept in the store) while edgeHub is away, and reports again when it returns.

pub mod environment;
pub mod methods;
pub mod reported;
pub mod sas;
pub mod server_cert;
mod session;
pub mod telemetry;
mod tls;
pub mod twin;
pub mod workload;

use std::sync::Arc;

use tokio::sync::watch;

pub use environment::ModuleEnvironment;
use session::ModuleState;

use crate::config::{Config, ConfigError};
use crate::node::{ConfigSource, Node};
use crate::store::Store;

/// Where the configuration the twin last gave is kept (the store's sync state).
const SAVED_CONFIG_KEY: &str = "module_twin_desired";
/// What a parent endpoint may name to mean the parent device (a nested IoT Edge device).
const PARENT_HOSTNAME_VARIABLES: [&str; 2] =
    ["${IOTEDGE_PARENTHOSTNAME}", "$IOTEDGE_PARENTHOSTNAME"];

#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error("IoT Edge environment: {0}")]
    Environment(String),
    #[error("workload API: {0}")]
    Workload(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("MQTT: {0}")]
    Mqtt(String),
}

/// Complete a configuration for a module: `$IOTEDGE_PARENTHOSTNAME` in the parent endpoint is
/// the parent device's hostname, and a parent with no `caCertificate` is trusted through the
/// runtime's trust bundle (the parent device's API proxy presents an edge CA certificate).
pub fn complete_config(
    config: &mut Config,
    module: &ModuleEnvironment,
    trust_bundle: Option<&str>,
) -> Result<(), ConfigError> {
    let Some(parent) = config.parent.as_mut() else {
        return Ok(());
    };
    for variable in PARENT_HOSTNAME_VARIABLES {
        if parent.endpoint.contains(variable) {
            let host = module.parent_hostname.as_deref().ok_or_else(|| ConfigError::Invalid {
                field: "parent.endpoint",
                rule: format!(
                    "{:?} names {variable} but this device has no parent (IOTEDGE_PARENTHOSTNAME is not set)",
                    parent.endpoint
                ),
            })?;
            parent.endpoint = parent.endpoint.replace(variable, host);
        }
    }
    if parent.ca_certificate.is_none() && parent.endpoint.starts_with("https://") {
        parent.ca_certificate = trust_bundle.map(str::to_owned);
    }
    Ok(())
}

/// The configuration the twin last gave, if any (used until edgeHub answers).
pub fn saved_config(store: &Store) -> Option<Config> {
    let bytes = store.sync_state(SAVED_CONFIG_KEY).ok()??;
    match serde_json::from_slice(&bytes) {
        Ok(config) => Some(config),
        Err(e) => {
            let error = crate::config::without_values(&e.to_string());
            tracing::warn!(%error, "the saved twin configuration no longer parses; ignored");
            None
        }
    }
}

/// Run the module client until `shutdown` turns true.
pub fn spawn(
    module: ModuleEnvironment,
    node: Arc<Node>,
    shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let state = ModuleState::new();
    tokio::spawn(watch_status(node.clone(), state.clone(), shutdown.clone()));
    tokio::spawn(apply_desired(node.clone(), state.clone(), shutdown.clone()));
    tokio::spawn(session::run(module, node, state, shutdown))
}

/// Turn status changes into telemetry events.
async fn watch_status(
    node: Arc<Node>,
    state: Arc<ModuleState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut status = node.status().subscribe();
    let mut tracker = telemetry::Tracker::new(Default::default());
    loop {
        let events = tracker.events(&status.borrow_and_update().clone());
        if !events.is_empty() {
            {
                let mut queue = state.telemetry.lock().unwrap_or_else(|e| e.into_inner());
                for event in events {
                    queue.push(event);
                }
            }
            state.telemetry_queued.notify_one();
        }
        tokio::select! {
            changed = status.changed() => if changed.is_err() { return },
            _ = shutdown.changed() => return,
        }
    }
}

/// Apply the newest desired properties as the configuration, one at a time.
async fn apply_desired(
    node: Arc<Node>,
    state: Arc<ModuleState>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut desired = state.desired.subscribe();
    loop {
        tokio::select! {
            changed = desired.changed() => if changed.is_err() { return },
            _ = shutdown.changed() => return,
        }
        // Read before the desired properties: what is applied below is at least this twin.
        let received = state
            .twins_received
            .load(std::sync::atomic::Ordering::SeqCst);
        let current = desired.borrow_and_update().clone();
        let Some(current) = current else { continue };
        match current.config() {
            Ok(None) => {
                tracing::info!("the module twin holds no configuration; keeping the current one")
            }
            Ok(Some((config, document))) => {
                if node.apply(config, ConfigSource::Twin).await.is_ok() {
                    if let Err(e) = node
                        .store()
                        .set_sync_state(SAVED_CONFIG_KEY, document.to_string().as_bytes())
                        .await
                    {
                        tracing::warn!(error = %e, "could not keep the twin's configuration");
                    }
                }
            }
            Err(message) => node.reject(ConfigSource::Twin, &message),
        }
        state.twins_applied.send_replace(received);
    }
}
