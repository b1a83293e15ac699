//! A running node: the store, the registry API, authentication and sync wired together, and
//! live reconfiguration.
//!
//! Every source of configuration (the file watch, the module twin) hands a whole, validated
//! [`Config`] to [`Node::apply`]. What can change while serving changes at once: client and
//! sync tokens, anonymous pull, the log level, and the parent with what it syncs (the sync task
//! restarts; its first pass is a `ConfigUpdate` and prunes what is no longer selected). What
//! needs a new listener or store (listen address, data directory, TLS, name, mode, limits) is
//! kept until the next start, and `statusDetails` says so. A configuration that does not
//! validate is refused whole ([`Node::reject`]): the last good one keeps running and
//! `config.error` says why.

pub mod gc;
mod initial;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::api::Api;
use crate::auth::Authenticator;
use crate::config::{Config, ConfigError, Mode};
use crate::status::StatusHandle;
use crate::store::Store;
use crate::sync::run::RunControl;
use crate::sync::Trigger;
pub use initial::initial_status;

/// Sets the log level (an ACR level name, already validated) of the running process.
pub type LogLevelSetter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;
/// Completes a configuration from a source with what the process was started with (the
/// environment's connection string, `--listen`, `--data-dir`, …), the same for every source.
pub type Completer = Box<dyn Fn(&mut Config) -> Result<(), ConfigError> + Send + Sync>;

/// How long a stop or a reconfiguration waits for the sync task to finish what it is doing.
const SYNC_STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a configuration came from (`config.source` in the status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigSource {
    Default,
    File,
    Environment,
    Twin,
}

impl ConfigSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ConfigSource::Default => "default",
            ConfigSource::File => "file",
            ConfigSource::Environment => "environment",
            ConfigSource::Twin => "twin",
        }
    }
}

pub struct Node {
    store: Arc<Store>,
    api: Arc<Api>,
    auth: Arc<Authenticator>,
    loopback: bool,
    log_level: Option<LogLevelSetter>,
    complete: Completer,
    resync: Arc<Notify>,
    collector: gc::Collector,
    /// The garbage collection schedule and grace period in force; the scheduler follows it.
    gc_settings: watch::Sender<crate::config::GarbageCollection>,
    running: tokio::sync::Mutex<Running>,
}

struct Running {
    config: Config,
    sync: Option<SyncTask>,
}

struct SyncTask {
    stop: watch::Sender<bool>,
    handle: JoinHandle<()>,
}

/// What [`Node::start`] needs besides the configuration.
pub struct NodeOptions {
    pub source: ConfigSource,
    pub store: Arc<Store>,
    pub api: Arc<Api>,
    pub auth: Arc<Authenticator>,
    pub loopback: bool,
    pub log_level: Option<LogLevelSetter>,
    pub complete: Completer,
}

impl Node {
    /// Start the parts that run beside the server (sync) with `config`, already completed and
    /// validated. Must be called inside the runtime.
    pub fn start(config: Config, options: NodeOptions) -> anyhow::Result<Arc<Node>> {
        let collector = gc::Collector::new(
            options.store.clone(),
            config.limits()?.upload_session_max_age,
        );
        let (gc_settings, gc_watch) = watch::channel(config.garbage_collection()?);
        apply_storage(&options.store, &config)?;
        collector.spawn_schedule(gc_watch);
        let node = Arc::new(Node {
            store: options.store,
            api: options.api,
            auth: options.auth,
            loopback: options.loopback,
            log_level: options.log_level,
            complete: options.complete,
            resync: Arc::new(Notify::new()),
            collector,
            gc_settings,
            running: tokio::sync::Mutex::new(Running {
                config: config.clone(),
                sync: None,
            }),
        });
        let sync = node.spawn_sync(&config, None)?;
        node.running
            .try_lock()
            .expect("nobody else holds a node being started")
            .sync = sync;
        node.status().update(|s| {
            s.config.version = 1;
            s.config.source = options.source.as_str().to_owned();
            s.config.error = None;
        });
        Ok(node)
    }

    /// Runs garbage collection now or on its schedule.
    pub fn collector(&self) -> &gc::Collector {
        &self.collector
    }

    pub fn api(&self) -> &Arc<Api> {
        &self.api
    }

    pub fn status(&self) -> &StatusHandle {
        self.api.status()
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The configuration running now.
    pub async fn config(&self) -> Config {
        self.running.lock().await.config.clone()
    }

    /// Complete `config` as every configuration is completed (environment, command line) and
    /// validate it, without applying it.
    pub fn complete(&self, mut config: Config) -> Result<Config, ConfigError> {
        (self.complete)(&mut config)?;
        config.validate()?;
        Ok(config)
    }

    /// Apply a new configuration from `source` (completed and validated here; refused whole and
    /// reported when it is not valid). Returns whether anything changed.
    pub async fn apply(&self, new: Config, source: ConfigSource) -> Result<bool, ConfigError> {
        let new = match self.complete(new) {
            Ok(new) => new,
            Err(e) => {
                self.reject(source, &e.to_string());
                return Err(e);
            }
        };
        let mut running = self.running.lock().await;
        if running.config == new {
            self.status().update(|s| s.config.error = None);
            return Ok(false);
        }
        if let Some(parent) = &new.parent {
            // A parent the sync engine cannot be built for (an unreadable CA file, …) is refused
            // before the running sync is touched.
            if let Err(e) =
                crate::sync::setup::build(parent, self.store.clone(), self.status().clone())
            {
                let message = format!("parent: {e}");
                self.reject(source, &message);
                return Err(ConfigError::Invalid {
                    field: "parent",
                    rule: e.to_string(),
                });
            }
        }
        let old = std::mem::replace(&mut running.config, new.clone());
        self.auth.reconfigure(&new, self.loopback);
        if let (Some(set), Some(logging), true) =
            (&self.log_level, &new.logging, old.logging != new.logging)
        {
            if let Err(e) = set(&logging.level) {
                tracing::warn!(error = %e, "could not change the log level");
            }
        }
        if let Err(e) = apply_storage(&self.store, &new) {
            tracing::warn!(error = %e, "could not apply the storage settings");
        }
        if let Ok(gc) = new.garbage_collection() {
            self.gc_settings.send_replace(gc);
        }
        let restart_only = restart_only_changes(&old, &new);
        if !restart_only.is_empty() {
            let fields = restart_only.join(", ");
            tracing::warn!(%fields, "configuration changes that apply at the next start");
            self.status().add_detail(
                "Config",
                "RestartRequired",
                format!("{fields} changed; the change applies when the node restarts"),
            );
        }
        // The mode applies at once: a module's first twin configuration sets it.
        let mode = new.effective_mode();
        self.api.set_mode(mode);
        self.store
            .set_upstream(new.parent.is_some() && mode == Mode::ReadWrite);
        // A new mode is activated anew at the parent, so the sync restarts with it.
        if old.parent != new.parent || old.name != new.name || old.effective_mode() != mode {
            if let Some(task) = running.sync.take() {
                stop_sync(task).await;
            }
            self.status().update(|s| {
                s.mode = mode.as_str().to_owned();
                s.name = new.name.clone().unwrap_or_else(|| "root".to_owned());
                s.parent = new.parent.as_ref().map(|p| crate::status::ParentStatus {
                    endpoint: p.endpoint.clone(),
                    last_sync_time: None,
                });
                if new.parent.is_none() {
                    s.sync = Default::default();
                }
            });
            running.sync = self
                .spawn_sync(&new, Some(Trigger::ConfigUpdate))
                .map_err(|e| ConfigError::Invalid {
                    field: "parent",
                    rule: e.to_string(),
                })?;
        }
        self.status().update(|s| {
            s.config.version += 1;
            s.config.source = source.as_str().to_owned();
            s.config.error = None;
        });
        tracing::info!(source = source.as_str(), "configuration applied");
        Ok(true)
    }

    /// Record that a configuration from `source` was refused; the running one stays.
    pub fn reject(&self, source: ConfigSource, message: &str) {
        tracing::warn!(
            source = source.as_str(),
            error = %message,
            "configuration refused; keeping the last good configuration"
        );
        self.status()
            .update(|s| s.config.error = Some(message.to_owned()));
        self.status().add_detail(
            "Config",
            "ConfigError",
            format!("{} configuration refused: {message}", source.as_str()),
        );
    }

    /// Ask for a full sync pass now. `false` when this node has no parent.
    pub async fn request_resync(&self) -> bool {
        let has_parent = self.running.lock().await.sync.is_some();
        if has_parent {
            self.resync.notify_one();
        }
        has_parent
    }

    /// Stop the sync task (activation is given up at the parent on the way out).
    pub async fn stop(&self) {
        if let Some(task) = self.running.lock().await.sync.take() {
            stop_sync(task).await;
        }
    }

    fn spawn_sync(
        &self,
        config: &Config,
        first_trigger: Option<Trigger>,
    ) -> anyhow::Result<Option<SyncTask>> {
        let Some(parent) = &config.parent else {
            return Ok(None);
        };
        let (stop, stopped) = watch::channel(false);
        let handle = crate::sync::setup::spawn(
            parent,
            config.name.clone().map(|n| (n, config.effective_mode())),
            self.store.clone(),
            self.status().clone(),
            stopped,
            RunControl {
                first_trigger,
                resync: self.resync.clone(),
            },
        )?;
        Ok(Some(SyncTask { stop, handle }))
    }
}

async fn stop_sync(task: SyncTask) {
    let _ = task.stop.send(true);
    let mut handle = task.handle;
    if tokio::time::timeout(SYNC_STOP_TIMEOUT, &mut handle)
        .await
        .is_err()
    {
        tracing::warn!("the sync task did not stop within {SYNC_STOP_TIMEOUT:?}; aborting it");
        handle.abort();
    }
}

/// Storage limits and what may be evicted follow the configuration.
fn apply_storage(store: &Store, config: &Config) -> Result<(), ConfigError> {
    store.set_storage_limits(config.storage_limits()?);
    store.set_has_parent(config.parent.is_some());
    store.set_grace_period(config.garbage_collection()?.grace_period);
    store.set_manifest_cache(config.manifest_cache()?);
    Ok(())
}

/// The fields that changed between `old` and `new` that only a restart can apply.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    if old.listen_addr().ok() != new.listen_addr().ok() {
        changed.push("listen");
    }
    if old.data_dir() != new.data_dir() {
        changed.push("dataDir");
    }
    if old.tls != new.tls {
        changed.push("tls");
    }
    if old.login_server != new.login_server {
        changed.push("loginServer");
    }
    if old.limits != new.limits {
        changed.push("limits");
    }
    if old.metadata_cache().ok() != new.metadata_cache().ok() {
        changed.push("storage.metadataCache");
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn settings_read_only_at_start_are_named_when_they_change() {
        let old = config(r#"{"storage": {"maxSize": "1GiB"}}"#);
        // Live: the storage ceiling.
        let new = config(r#"{"storage": {"maxSize": "2GiB"}}"#);
        assert!(restart_only_changes(&old, &new).is_empty());
        // The metadata cache is sized when the store opens.
        let new = config(r#"{"storage": {"maxSize": "1GiB", "metadataCache": "64MiB"}}"#);
        assert_eq!(restart_only_changes(&old, &new), ["storage.metadataCache"]);
        // Spelled out at its default: no change.
        let new = config(r#"{"storage": {"maxSize": "1GiB", "metadataCache": "32MiB"}}"#);
        assert!(restart_only_changes(&old, &new).is_empty());
    }
}
