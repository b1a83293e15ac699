//! Hashing a large upload beside its disk writes.
//!
//! An upload's writer thread used to hash each chunk and then write it, so the two took turns,
//! and while the writer waited for the disk (the drop-behind in `blobs.rs` waits for each 16 MiB
//! window to be written back) nothing was hashed. Once an upload has passed `APART_FROM` bytes
//! its chunks are hashed on a thread of their own, so SHA-256 and the disk overlap
//! (BENCHMARKS.md, "Pushes hash beside the disk"). Small uploads hash inline: a thread would
//! cost more than their hash. If the thread cannot be had, the state is reported lost, and the
//! upload's completion hashes the file from disk, as after a restart.

use std::sync::mpsc::{sync_channel, SyncSender};
use std::thread::JoinHandle;

use bytes::Bytes;

use crate::oci::Hasher;

/// Uploads hash inline until they have passed this many bytes.
const APART_FROM: u64 = 8 * 1024 * 1024;

/// Chunks waiting for the hashing thread: bounds what it adds to an upload's memory. A writer
/// that gets this far ahead waits for it.
const QUEUE: usize = 4;

/// The hash of an upload in progress, wherever it is being computed.
pub(super) enum UploadHash {
    /// Not known (an upload resumed after a restart, or a hashing thread that failed).
    Lost,
    /// Boxed: the hash state is much larger than the other variants.
    Inline { hasher: Box<Hasher>, seen: u64 },
    Apart {
        chunks: SyncSender<Bytes>,
        thread: JoinHandle<Hasher>,
    },
}

impl UploadHash {
    pub(super) fn new(hasher: Option<Hasher>) -> UploadHash {
        match hasher {
            Some(hasher) => UploadHash::Inline {
                hasher: Box::new(hasher),
                seen: 0,
            },
            None => UploadHash::Lost,
        }
    }

    /// Take `chunk` into the hash: inline while the upload is small, then on the thread.
    pub(super) fn update(&mut self, chunk: &Bytes) {
        if let UploadHash::Inline { seen, .. } = self {
            if *seen >= APART_FROM {
                *self = match std::mem::replace(self, UploadHash::Lost) {
                    UploadHash::Inline { hasher, .. } => apart(*hasher),
                    other => other,
                };
            }
        }
        match self {
            UploadHash::Lost => {}
            UploadHash::Inline { hasher, seen } => {
                hasher.update(chunk);
                *seen += chunk.len() as u64;
            }
            UploadHash::Apart { chunks, .. } => {
                if chunks.send(chunk.clone()).is_err() {
                    // The thread is gone (it panicked): the hash is lost, not wrong.
                    *self = UploadHash::Lost;
                }
            }
        }
    }

    /// The hash state after every chunk given, `None` if it was lost.
    pub(super) fn finish(self) -> Option<Hasher> {
        match self {
            UploadHash::Lost => None,
            UploadHash::Inline { hasher, .. } => Some(*hasher),
            UploadHash::Apart { chunks, thread } => {
                drop(chunks);
                thread.join().ok()
            }
        }
    }
}

/// Move `hasher` to a thread of its own; `Lost` if no thread can be started.
fn apart(hasher: Hasher) -> UploadHash {
    let (chunks, queue) = sync_channel::<Bytes>(QUEUE);
    let thread = std::thread::Builder::new()
        .name("upload-hash".into())
        .spawn(move || {
            let mut hasher = hasher;
            for chunk in queue {
                hasher.update(&chunk);
            }
            hasher
        });
    match thread {
        Ok(thread) => UploadHash::Apart { chunks, thread },
        Err(e) => {
            tracing::warn!(
                error = %e,
                "no thread to hash an upload on: it is hashed from disk when it completes"
            );
            UploadHash::Lost
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Algorithm;

    /// Chunks hashed inline, then on the thread, give the digest of all of them in order.
    #[test]
    fn a_hash_moved_to_its_thread_midway_is_the_hash_of_every_chunk_in_order() {
        let chunks: Vec<Bytes> = (0..40u32)
            .map(|i| Bytes::from(vec![(i % 251) as u8; 300 * 1024 + i as usize]))
            .collect();
        let mut expected = Algorithm::Sha256.hasher();
        let mut hash = UploadHash::new(Some(Algorithm::Sha256.hasher()));
        let mut went_apart = false;
        for chunk in &chunks {
            expected.update(chunk);
            hash.update(chunk);
            went_apart |= matches!(hash, UploadHash::Apart { .. });
        }
        assert!(
            went_apart,
            "12 MiB of chunks should have moved the hash to its thread"
        );
        assert_eq!(hash.finish().unwrap().finish(), expected.finish());
    }

    /// A lost hash stays lost whatever comes after.
    #[test]
    fn a_lost_hash_stays_lost() {
        let mut hash = UploadHash::new(None);
        hash.update(&Bytes::from_static(b"abc"));
        assert!(hash.finish().is_none());
    }
}
