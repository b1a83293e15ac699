//! The upstream outbox of a ReadWrite node: every push and delete a local client makes is
//! recorded here, in the same sled transaction as the change itself, and stays until the
//! upstream pusher (`sync::upstream`) has replayed it at the parent, in order. Because it is
//! written with the change, no crash can leave a local push without its outbox entry, and an
//! entry is removed only after the parent has answered: a parent outage of any length, a
//! restart or a kill -9 loses nothing.
//!
//! While an entry waits, the sync engine does not undo it: a tag (or manifest) with a pending
//! entry is neither pruned nor moved by content mirrored from the parent.

use std::sync::atomic::Ordering;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sled::transaction::{TransactionalTree, UnabortableTransactionError};

use super::Store;
use crate::oci::{Error, ErrorCode, RepositoryName, Result};

/// What to replay at the parent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum OutboxOp {
    /// A manifest (with its blobs, and index children) pushed here, under `tag` if any.
    /// `previous` is what the tag pointed at here before the push: the base the conflict
    /// rule compares the parent's tag with.
    Push {
        digest: String,
        tag: Option<String>,
        previous: Option<String>,
    },
    /// A tag removed here (it pointed at `digest`).
    Untag { tag: String, digest: String },
    /// A manifest deleted here (with its tags).
    Delete { digest: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxEntry {
    pub seq: u64,
    pub time: DateTime<Utc>,
    pub repository: String,
    #[serde(flatten)]
    pub op: OutboxOp,
}

impl OutboxEntry {
    /// Whether this entry concerns `tag` (or, with `None`, any tag) or `digest` in `repo`.
    pub(super) fn touches(&self, repo: &str, tag: Option<&str>, digest: Option<&str>) -> bool {
        if self.repository != repo {
            return false;
        }
        let (t, d) = match &self.op {
            OutboxOp::Push { digest, tag, .. } => (tag.as_deref(), digest.as_str()),
            OutboxOp::Untag { tag, digest } => (Some(tag.as_str()), digest.as_str()),
            OutboxOp::Delete { digest } => (None, digest.as_str()),
        };
        tag.is_some_and(|tag| t == Some(tag)) || digest.is_some_and(|digest| d == digest)
    }
}

/// Append `op` for `repo` inside a transaction.
pub(super) fn record(
    outbox: &TransactionalTree,
    repo: &RepositoryName,
    op: OutboxOp,
) -> std::result::Result<(), UnabortableTransactionError> {
    let seq = outbox.generate_id()? + 1;
    let entry = OutboxEntry {
        seq,
        time: Utc::now(),
        repository: repo.to_string(),
        op,
    };
    let json = serde_json::to_vec(&entry).expect("outbox entries serialise");
    outbox.insert(&seq.to_be_bytes(), json)?;
    Ok(())
}

/// Entries scanned at most when asking whether something is pending (the outbox of a node
/// cut off for weeks can be long; past this, the answer is "pending", the safe side).
const MAX_PENDING_SCAN: usize = 100_000;

impl Store {
    /// Record local pushes and deletes for the parent (a ReadWrite node with a parent).
    pub fn set_upstream(&self, on: bool) {
        self.upstream.store(on, Ordering::Relaxed);
    }

    pub(super) fn records_upstream(&self) -> bool {
        self.upstream.load(Ordering::Relaxed)
    }

    /// The oldest entry waiting, if any.
    pub fn outbox_first(&self) -> Result<Option<OutboxEntry>> {
        match self.trees.outbox.first()? {
            Some((_, v)) => Ok(Some(decode(&v)?)),
            None => Ok(None),
        }
    }

    /// The entry is done (replayed, or settled by the conflict rule): remove it, durably.
    pub async fn outbox_done(&self, seq: u64) -> Result<()> {
        self.trees.outbox.remove(seq.to_be_bytes())?;
        self.flush().await
    }

    /// Entries waiting.
    pub fn outbox_len(&self) -> usize {
        self.trees.outbox.len()
    }

    /// The file holding blob `digest` (the upstream pusher streams it to the parent).
    pub fn blob_file(&self, digest: &crate::oci::Digest) -> std::path::PathBuf {
        self.files.path(digest)
    }

    /// Whether any entry waits for `repo`.
    pub fn outbox_has_repository(&self, repo: &str) -> Result<bool> {
        self.outbox_scan(|e| e.repository == repo)
    }

    /// Whether an entry waits for `tag` (or `digest`) in `repo`.
    pub fn outbox_holds(
        &self,
        repo: &str,
        tag: Option<&str>,
        digest: Option<&str>,
    ) -> Result<bool> {
        self.outbox_scan(|e| e.touches(repo, tag, digest))
    }

    fn outbox_scan(&self, matches: impl Fn(&OutboxEntry) -> bool) -> Result<bool> {
        scan(&self.trees.outbox, matches)
    }
}

/// Whether an entry of `outbox` matches (true too once [`MAX_PENDING_SCAN`] entries were
/// scanned without an answer: the cautious one).
pub(super) fn scan(outbox: &sled::Tree, matches: impl Fn(&OutboxEntry) -> bool) -> Result<bool> {
    if outbox.is_empty() {
        return Ok(false);
    }
    for (scanned, item) in outbox.iter().enumerate() {
        if scanned >= MAX_PENDING_SCAN {
            return Ok(true);
        }
        let (_, v) = item?;
        if matches(&decode(&v)?) {
            return Ok(true);
        }
    }
    Ok(false)
}

fn decode(v: &[u8]) -> Result<OutboxEntry> {
    serde_json::from_slice(v)
        .map_err(|e| Error::new(ErrorCode::Unknown, format!("corrupt outbox entry: {e}")))
}
