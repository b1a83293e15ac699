//! Per-repository write locks: why a read followed by a write in the store stays consistent.
//!
//! sled transactions cannot scan, so a change that must first find keys (every tag of a digest,
//! every manifest of a repository) reads them outside its transaction. Every writer of a
//! repository's metadata holds that repository's lock across its read and its transaction, so no
//! other writer can slip in between. Locks are striped (a fixed set of mutexes chosen by a hash of
//! the name), held only around synchronous sled calls and never across an `await` or a flush, so
//! writers of different repositories rarely meet and durability waits run in parallel.

use std::hash::{Hash, Hasher};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::oci::RepositoryName;

const STRIPES: usize = 64;

pub(super) struct RepoLocks {
    stripes: Box<[Mutex<()>]>,
}

/// Proof that the caller holds the write lock of a repository.
pub(super) struct RepoGuard<'a> {
    _guard: MutexGuard<'a, ()>,
}

impl RepoLocks {
    pub fn new() -> RepoLocks {
        RepoLocks {
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
        }
    }

    /// Take `repo`'s write lock. Not re-entrant: functions that run under it take a
    /// [`RepoGuard`] argument instead of locking again.
    pub fn lock(&self, repo: &RepositoryName) -> RepoGuard<'_> {
        self.lock_stripe(Self::stripe(repo))
    }

    /// Take the write locks of all of `repos` (a repository named twice, or two sharing a
    /// stripe, locked once), always in stripe order, so two callers of this never deadlock and
    /// a caller of [`RepoLocks::lock`] holds one stripe at most.
    pub fn lock_all(&self, repos: &[&RepositoryName]) -> Vec<RepoGuard<'_>> {
        let mut stripes: Vec<usize> = repos.iter().map(|repo| Self::stripe(repo)).collect();
        stripes.sort_unstable();
        stripes.dedup();
        stripes.into_iter().map(|s| self.lock_stripe(s)).collect()
    }

    fn stripe(repo: &RepositoryName) -> usize {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        repo.as_str().hash(&mut hasher);
        (hasher.finish() as usize) % STRIPES
    }

    fn lock_stripe(&self, stripe: usize) -> RepoGuard<'_> {
        // The lock guards no data of its own, so a panic while it was held left nothing torn.
        RepoGuard {
            _guard: self.stripes[stripe]
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        }
    }
}
