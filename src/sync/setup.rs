//! Turn a validated `parent` configuration into a running sync engine, and run one pass for
//! `connected-registry sync --once` with a progress bar.

use std::sync::Arc;
use std::time::Duration;

use super::activation;
use super::client::{ParentClient, ParentOptions, SyncError};
use super::engine::{PassSummary, SyncEngine, Trigger};
use super::schedule::{parse_bandwidth, parse_message_ttl, parse_poll_intervals, Schedule};
use super::select::Selection;
use crate::config::{ConfigError, Mode, ParentConfig};
use crate::status::StatusHandle;
use crate::store::Store;

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot read parent.caCertificate file {path:?}: {source}")]
    CaFile {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Client(#[from] SyncError),
}

/// Build the engine and its schedule from `parent`.
pub fn build(
    parent: &ParentConfig,
    store: Arc<Store>,
    status: StatusHandle,
) -> Result<(Arc<SyncEngine>, Schedule), SetupError> {
    let sync = &parent.sync;
    let schedule = Schedule::parse(&sync.schedule, sync.window.as_deref())?;
    let selection = Selection::new(sync)?;
    let ca_pem = match &parent.ca_certificate {
        None => None,
        Some(text) if text.contains("-----BEGIN") => Some(text.clone()),
        Some(path) => Some(
            std::fs::read_to_string(path).map_err(|source| SetupError::CaFile {
                path: path.clone(),
                source,
            })?,
        ),
    };
    let client = ParentClient::new(ParentOptions {
        endpoint: parent.endpoint.trim_end_matches('/').to_owned(),
        credentials: parent
            .sync_token
            .as_ref()
            .map(|t| (t.name.clone(), t.password.clone())),
        ca_pem,
        bandwidth_limit: sync
            .bandwidth_limit
            .as_deref()
            .map(parse_bandwidth)
            .transpose()?,
    })?
    .with_message_ttl(parse_message_ttl(&sync.message_ttl)?);
    let engine = SyncEngine::new(store, client, selection, sync.concurrency, status)
        .with_poll_intervals(parse_poll_intervals(sync)?);
    Ok((Arc::new(engine), schedule))
}

/// One full pass, drawing a progress bar on stderr from the status updates.
pub async fn run_once(engine: &SyncEngine) -> Result<PassSummary, SyncError> {
    use indicatif::{ProgressBar, ProgressStyle};
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {bytes}/{total_bytes} ({bytes_per_sec}) {msg}",
        )
        .expect("valid progress template"),
    );
    let mut updates = engine.status().subscribe();
    let drawer = {
        let bar = bar.clone();
        tokio::spawn(async move {
            loop {
                let p = updates.borrow_and_update().sync.progress.clone();
                bar.set_length(p.bytes.total.max(p.bytes.done));
                bar.set_position(p.bytes.done);
                bar.set_message(format!(
                    "repositories {}/{} manifests {}/{} blobs {}/{}",
                    p.repositories.done,
                    p.repositories.total,
                    p.manifests.done,
                    p.manifests.total,
                    p.blobs.done,
                    p.blobs.total
                ));
                if updates.changed().await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let result = engine.full_pass(Trigger::ManualResync).await;
    drawer.abort();
    bar.finish_and_clear();
    result
}

/// Start the sync loop of a node with a parent; it stops when `shutdown` turns true. A node
/// with a `name` activates at the parent first and then reports its status there
/// ([`super::activation`]).
pub fn spawn(
    parent: &ParentConfig,
    node: Option<(String, Mode)>,
    store: Arc<Store>,
    status: StatusHandle,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    control: super::run::RunControl,
) -> Result<tokio::task::JoinHandle<()>, SetupError> {
    let (engine, schedule) = build(parent, store, status.clone())?;
    status.update(|s| {
        s.parent.get_or_insert_with(Default::default).endpoint = parent.endpoint.clone();
        s.sync.state = Some("Pending".into());
    });
    Ok(tokio::spawn(async move {
        let mut reporter = None;
        let read_write = node
            .as_ref()
            .is_some_and(|(_, mode)| *mode == Mode::ReadWrite);
        if read_write {
            // What waits in the outbox shows before the parent is reached.
            super::upstream::report(&engine);
        }
        if let Some((name, mode)) = node {
            // Outside its sync window a node says nothing to its parent, activation included.
            // (A pass asked for by hand goes ahead: the operator asked for it.)
            let resync = Some(control.resync.as_ref());
            if !super::run::wait_for_window(&engine, &schedule, &mut shutdown, resync).await {
                return;
            }
            match activation::activate(&engine, &name, mode.as_str(), &mut shutdown).await {
                activation::Activated::Stopped => return,
                activation::Activated::NotApplicable => {}
                activation::Activated::Yes => {
                    reporter = Some(activation::spawn_reporter(
                        engine.clone(),
                        name,
                        schedule.clone(),
                        shutdown.clone(),
                    ));
                }
            }
        }
        let pusher = read_write.then(|| super::upstream::spawn(engine.clone(), shutdown.clone()));
        super::run::run(engine, schedule, shutdown, control).await;
        if let Some(reporter) = reporter {
            let _ = reporter.await;
        }
        if let Some(pusher) = pusher {
            let _ = pusher.await;
        }
    }))
}
