//! Group commit of metadata flushes: every writer waits until a flush that started after its
//! transaction has finished, and one flush serves every writer that was waiting when it began.
//!
//! It exists because a flush is an fsync of sled's log, and that is what a small manifest `PUT`
//! spends most of its time on: flushed one per writer, eight clients pushing at once queued
//! behind each other's fsyncs and halved the aggregate rate. Here at most one flush runs at a
//! time; writers arriving while it runs share the next one, so N concurrent writers cost about
//! two fsyncs instead of N, and each is still told "done" only once its own change is durable.
//!
//! The flushes run on a task of their own, so a writer whose request is dropped mid-wait (a
//! client that went away) cannot leave the group without a leader.

use std::sync::{Arc, Mutex};

use crate::oci::{Error, ErrorCode, Result};

/// The work of one flush: make durable everything committed before it started.
pub type FlushFn = Arc<dyn Fn() -> Result<()> + Send + Sync>;

pub struct GroupFlush {
    state: Mutex<State>,
    /// The number of the last finished flush and what it returned.
    finished: tokio::sync::watch::Sender<(u64, Option<String>)>,
    work: FlushFn,
}

#[derive(Default)]
struct State {
    /// Number of the newest flush that has started.
    started: u64,
    /// The highest flush number a writer waits for.
    wanted: u64,
    /// Whether the flush task is running.
    running: bool,
}

impl GroupFlush {
    pub fn new(work: FlushFn) -> Arc<GroupFlush> {
        Arc::new(GroupFlush {
            state: Mutex::new(State::default()),
            finished: tokio::sync::watch::Sender::new((0, None)),
            work,
        })
    }

    /// Return once a flush that started after this call has finished (its error, if it failed).
    pub async fn flush(self: &Arc<Self>) -> Result<()> {
        let mut finished = self.finished.subscribe();
        let target = {
            let mut state = self.state.lock().expect("flush state");
            // A flush already running may have started before the caller's change: the next
            // one is the first that surely covers it.
            let target = state.started + 1;
            state.wanted = state.wanted.max(target);
            if !state.running {
                state.running = true;
                let group = self.clone();
                tokio::spawn(async move { group.run().await });
            }
            target
        };
        let (_, error) = finished
            .wait_for(|(done, _)| *done >= target)
            .await
            .map_err(|_| Error::new(ErrorCode::Unknown, "the metadata flusher stopped"))?
            .clone();
        match error {
            None => Ok(()),
            Some(message) => Err(Error::new(
                ErrorCode::Unknown,
                format!("flushing metadata: {message}"),
            )),
        }
    }

    /// Flush until nobody waits for a newer flush.
    async fn run(self: Arc<Self>) {
        loop {
            let number = {
                let mut state = self.state.lock().expect("flush state");
                if state.wanted <= state.started {
                    state.running = false;
                    return;
                }
                state.started += 1;
                state.started
            };
            let work = self.work.clone();
            let outcome = match tokio::task::spawn_blocking(move || work()).await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(e) => Some(format!("flush task failed: {e}")),
            };
            self.finished.send_replace((number, outcome));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writers_share_flushes_and_each_waits_for_its_own() {
        let flushes = Arc::new(AtomicU64::new(0));
        let counter = flushes.clone();
        let group = GroupFlush::new(Arc::new(move || {
            std::thread::sleep(Duration::from_millis(20));
            counter.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }));
        let mut writers = Vec::new();
        for _ in 0..64 {
            let group = group.clone();
            let flushes = flushes.clone();
            writers.push(tokio::spawn(async move {
                let before = flushes.load(Ordering::SeqCst);
                group.flush().await.unwrap();
                // At least one flush finished after this writer arrived.
                assert!(flushes.load(Ordering::SeqCst) > before);
            }));
        }
        for w in writers {
            w.await.unwrap();
        }
        let total = flushes.load(Ordering::SeqCst);
        assert!(
            (1..=8).contains(&total),
            "64 concurrent writers took {total} flushes"
        );
        // A writer arriving later gets a flush of its own.
        group.flush().await.unwrap();
        assert_eq!(flushes.load(Ordering::SeqCst), total + 1);
    }

    #[tokio::test]
    async fn a_failed_flush_fails_its_writers_and_the_next_one_runs() {
        let fail = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let flag = fail.clone();
        let group = GroupFlush::new(Arc::new(move || {
            if flag.load(Ordering::SeqCst) {
                Err(Error::new(ErrorCode::Unknown, "disk on fire"))
            } else {
                Ok(())
            }
        }));
        let err = group.flush().await.unwrap_err();
        assert!(err.to_string().contains("disk on fire"), "{err}");
        fail.store(false, Ordering::SeqCst);
        group.flush().await.unwrap();
    }
}
