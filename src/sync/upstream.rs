//! The upstream pusher of a ReadWrite node: replays the store's outbox at the parent, oldest
//! entry first, with the sync token — for each pushed manifest its blobs (skipping those the
//! parent has), then its index children, then the manifest by digest, then its tag; deletes and
//! untags as they happened. An entry leaves the outbox only once the parent has answered, so a
//! parent outage, a restart or a kill -9 at any moment loses nothing; a failed entry is retried
//! with backoff ([`RETRY_FIRST`] doubling to [`RETRY_MAX`]) and blocks the ones after it, which
//! keeps the order.
//!
//! **Conflicts — the parent wins.** Before moving a tag at the parent, the pusher reads where
//! the parent's tag points now. If it points neither at the pushed manifest nor at what the tag
//! pointed to here before the local push (the base the local push was made on), someone moved it
//! at the parent meanwhile: the parent's tag is left alone, the pushed manifest still goes up by
//! digest (so it stays pullable by digest here and there), the next sync brings the parent's tag
//! down, and an `UpstreamConflict` entry in `statusDetails` names the tag and both digests. An
//! untag whose tag moved at the parent is dropped the same way. Deterministic and never silent.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::watch;

use super::client::{Deleted, SyncError, UploadSession};
use super::engine::SyncEngine;
use crate::oci::manifest::ParsedManifest;
use crate::oci::{Digest, RepositoryName};
use crate::store::outbox::{OutboxEntry, OutboxOp};

pub const RETRY_FIRST: Duration = Duration::from_secs(1);
pub const RETRY_MAX: Duration = Duration::from_secs(300);
/// How often the outbox's length is counted while it drains.
const REPORT_EVERY: Duration = Duration::from_secs(1);
/// How often an empty outbox is looked at again without a change event.
const IDLE_CHECK: Duration = Duration::from_secs(5);
/// Index levels followed when pushing a manifest tree (as deep as sync accepts).
const MAX_DEPTH: usize = 8;

/// How one entry ended.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Pushed,
    /// Settled without doing it: by the conflict rule (`UpstreamConflict`), because the parent
    /// refuses it for good (`UpstreamRefused`), or because nothing is left to do. The code, the
    /// description, and the tag to bring down from the parent now that the local change gave
    /// way.
    Settled(&'static str, String, Option<(RepositoryName, String)>),
}

/// Replay the outbox until `shutdown`.
pub fn spawn(
    engine: Arc<SyncEngine>,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut changes = engine.store().watch_changes();
        let mut wait = RETRY_FIRST;
        // When the outbox was last counted, and whether it held anything then.
        let mut reported: Option<(tokio::time::Instant, bool)> = None;
        while !*shutdown.borrow() {
            let entry = match engine.store().outbox_first() {
                Ok(entry) => entry,
                Err(e) => {
                    tracing::error!(error = %e, "reading the outbox failed");
                    None
                }
            };
            // Counting the outbox walks it: at most once a second while it drains, and at once
            // whenever it turns empty or non-empty.
            let holds = entry.is_some();
            if !holds && reported.is_none_or(|(_, held)| held) {
                forget_kept_sessions(&engine).await;
            }
            if reported.is_none_or(|(at, held)| held != holds || at.elapsed() >= REPORT_EVERY) {
                report_with(&engine, entry.as_ref());
                reported = Some((tokio::time::Instant::now(), holds));
            }
            let Some(entry) = entry else {
                tokio::select! {
                    _ = changes.changed() => {}
                    () = tokio::time::sleep(IDLE_CHECK) => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            };
            let outcome = tokio::select! {
                outcome = replay(&engine, &entry) => outcome,
                _ = shutdown.changed() => break,
            };
            match outcome {
                Ok(outcome) => {
                    if let Err(e) = engine.store().outbox_done(entry.seq).await {
                        tracing::error!(error = %e, "removing a replayed outbox entry failed");
                        continue;
                    }
                    wait = RETRY_FIRST;
                    engine.status().update(|s| {
                        if s.connection_state == "Offline" {
                            s.connection_state = "Online".into();
                        }
                        s.upstream
                            .get_or_insert_with(Default::default)
                            .last_push_time = Some(Utc::now());
                    });
                    match outcome {
                        Outcome::Pushed => {
                            tracing::info!(seq = entry.seq, repository = %entry.repository, op = ?entry.op, "pushed upstream")
                        }
                        Outcome::Settled(code, what, resync) => {
                            tracing::warn!(seq = entry.seq, code, %what, "not replayed upstream: the parent wins");
                            engine.status().add_detail("Upstream", code, what);
                            if let Some((repo, tag)) = resync {
                                if let Err(e) = engine.sync_tag(&repo, &tag, None).await {
                                    tracing::warn!(error = %e, "re-syncing the parent's tag failed; the next pass will");
                                }
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(seq = entry.seq, error = %e, retry_in_s = wait.as_secs(), "upstream push failed");
                    if matches!(e, SyncError::ParentUnreachable(_)) {
                        // The pusher may be first to find the link gone (the feed's long-poll
                        // sends nothing while it waits).
                        engine
                            .status()
                            .update(|s| s.connection_state = "Offline".into());
                    }
                    engine.status().add_detail(
                        "Upstream",
                        "UpstreamPushFailed",
                        format!(
                            "{} (entry {} for {}; retrying)",
                            e, entry.seq, entry.repository
                        ),
                    );
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        _ = shutdown.changed() => {}
                    }
                    wait = (wait * 2).min(RETRY_MAX);
                }
            }
        }
        report(&engine);
    })
}

/// Put the outbox's length and age in the status.
pub fn report(engine: &SyncEngine) {
    let first = engine.store().outbox_first().ok().flatten();
    report_with(engine, first.as_ref());
}

/// [`report`] with the outbox's oldest entry already read.
fn report_with(engine: &SyncEngine, first: Option<&OutboxEntry>) {
    let pending = match first {
        Some(_) => engine.store().outbox_len() as u64,
        None => 0,
    };
    let oldest = first.map(|e| e.time);
    engine.status().update(|s| {
        let u = s.upstream.get_or_insert_with(Default::default);
        u.pending = pending;
        u.oldest_pending_since = oldest;
    });
}

async fn replay(engine: &SyncEngine, entry: &OutboxEntry) -> Result<Outcome, SyncError> {
    let client = engine.client();
    let repo: RepositoryName = entry.repository.parse()?;
    match &entry.op {
        OutboxOp::Push { digest, tag, previous } => {
            let digest: Digest = digest.parse()?;
            if !push_tree(engine, &repo, &digest).await? {
                return Ok(Outcome::Settled(
                    "UpstreamSkipped",
                    format!("{repo}@{digest} was deleted here before it went upstream"),
                    None,
                ));
            }
            let Some(tag) = tag else {
                return Ok(Outcome::Pushed);
            };
            let parent_now = client.head_manifest(repo.as_str(), tag).await?;
            if let Some(parent_now) = parent_now.filter(|p| *p != digest) {
                if previous.as_deref() != Some(parent_now.to_string().as_str()) {
                    return Ok(Outcome::Settled(
                        "UpstreamConflict",
                        format!(
                            "{repo}:{tag} moved at the parent to {parent_now} while a local push of {digest} waited; the parent's tag stays, {digest} is kept by digest here and at the parent"
                        ),
                        Some((repo.clone(), tag.clone())),
                    ));
                }
            }
            let stored = engine
                .store()
                .manifest_by_digest(&repo, &digest)?
                .ok_or_else(|| SyncError::Protocol(format!("{repo}@{digest} vanished")))?;
            client
                .put_manifest(repo.as_str(), tag, stored.media_type.as_str(), stored.bytes)
                .await?;
            Ok(Outcome::Pushed)
        }
        OutboxOp::Untag { tag, digest } => {
            match client.head_manifest(repo.as_str(), tag).await? {
                None => Ok(Outcome::Pushed),
                Some(now) if now.to_string() == *digest => {
                    match client.delete_manifest(repo.as_str(), tag).await? {
                        Deleted::Refused(why) => Ok(Outcome::Settled(
                            "UpstreamRefused",
                            format!("{repo}:{tag} was removed here, but the parent refuses to delete it ({why}); it stays there"),
                            None,
                        )),
                        Deleted::Yes | Deleted::NotThere => Ok(Outcome::Pushed),
                    }
                }
                Some(now) => Ok(Outcome::Settled(
                    "UpstreamConflict",
                    format!("{repo}:{tag} was removed here but moved at the parent to {now}; the parent's tag stays"),
                    Some((repo.clone(), tag.clone())),
                )),
            }
        }
        OutboxOp::Delete { digest } => match client.delete_manifest(repo.as_str(), digest).await? {
            Deleted::Refused(why) => Ok(Outcome::Settled(
                "UpstreamRefused",
                format!("{repo}@{digest} was deleted here, but the parent refuses to delete it ({why}); it stays there"),
                None,
            )),
            Deleted::Yes | Deleted::NotThere => Ok(Outcome::Pushed),
        },
    }
}

/// Push the manifest `digest` of `repo` with everything it references (blobs the parent lacks,
/// index children first), by digest. `false` if it is no longer here.
async fn push_tree(
    engine: &SyncEngine,
    repo: &RepositoryName,
    digest: &Digest,
) -> Result<bool, SyncError> {
    let store = engine.store();
    let client = engine.client();
    // Depth-first without recursion: children before their index.
    let mut stack: Vec<(Digest, usize, bool)> = vec![(digest.clone(), 0, false)];
    while let Some((d, depth, children_done)) = stack.pop() {
        let Some(stored) = store.manifest_by_digest(repo, &d)? else {
            if d == *digest {
                return Ok(false);
            }
            // A child left out here (platform filter of a mirrored index): nothing to push.
            continue;
        };
        let parsed = ParsedManifest::parse(Some(stored.media_type.as_str()), &stored.bytes)?;
        if !children_done && !parsed.children.is_empty() && depth < MAX_DEPTH {
            stack.push((d.clone(), depth, true));
            for child in &parsed.children {
                stack.push((child.clone(), depth + 1, false));
            }
            continue;
        }
        for blob in &parsed.blobs {
            let session = KeptSession::new(store, repo, blob);
            if client.blob_exists(repo.as_str(), blob).await? {
                // A session kept by an attempt that finished without forgetting it.
                session.save(None).await?;
                continue;
            }
            let size = store.blob_size(repo, blob)?.ok_or_else(|| {
                SyncError::Protocol(format!("blob {blob} of {repo}@{d} is missing here"))
            })?;
            client
                .upload_blob(repo.as_str(), blob, &store.blob_file(blob), size, &session)
                .await?;
        }
        client
            .put_manifest(
                repo.as_str(),
                &d.to_string(),
                stored.media_type.as_str(),
                stored.bytes,
            )
            .await?;
    }
    Ok(true)
}

/// Forget every kept upload session once the outbox is empty (at start, and each time it turns
/// empty): a session whose entry settled another way (the manifest deleted here, or dropped by
/// the conflict rule) would otherwise stay for good, and be resumed by an unrelated later push.
async fn forget_kept_sessions(engine: &SyncEngine) {
    match engine
        .store()
        .remove_sync_state_under(KEPT_SESSION_PREFIX)
        .await
    {
        Ok(0) => {}
        Ok(n) => tracing::info!(sessions = n, "forgot upload sessions no outbox entry needs"),
        Err(e) => tracing::warn!(error = %e, "forgetting kept upload sessions failed"),
    }
}

/// Where kept upload sessions live in the store's sync state.
const KEPT_SESSION_PREFIX: &str = "upstream-upload/";

/// A blob's upload session at the parent, kept in the store's sync state under
/// `upstream-upload/<repository>@<digest>` so that an upload cut off (or a node killed) midway
/// resumes where the parent says it stands.
struct KeptSession<'a> {
    store: &'a crate::store::Store,
    key: String,
}

impl<'a> KeptSession<'a> {
    fn new(store: &'a crate::store::Store, repo: &RepositoryName, blob: &Digest) -> Self {
        KeptSession {
            store,
            key: format!("{KEPT_SESSION_PREFIX}{repo}@{blob}"),
        }
    }
}

impl UploadSession for KeptSession<'_> {
    fn saved(&self) -> Option<String> {
        let bytes = self.store.sync_state(&self.key).ok()??;
        String::from_utf8(bytes).ok()
    }

    async fn save(&self, location: Option<&str>) -> Result<(), SyncError> {
        match location {
            Some(location) => {
                self.store
                    .set_sync_state(&self.key, location.as_bytes())
                    .await
            }
            None => self.store.remove_sync_state(&self.key).await,
        }
        .map_err(SyncError::from)
    }
}
