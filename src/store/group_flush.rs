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
//!
//! Order matters on a busy root: a flush also publishes new change events, which wakes every
//! waiting long-poll (ten thousand on a root with that many children). The flush task tells its
//! writers first and only then runs the flush's announcement, so a writer's answer is queued
//! ahead of that wave instead of behind it; and on a multi-threaded runtime the fsync runs in
//! place (`block_in_place`) rather than on the blocking pool, whose wake-up would put the flush
//! task itself at the back of the run queue.

use std::sync::{Arc, Mutex};

use crate::oci::{Error, ErrorCode, Result};

/// The work of one flush: make durable everything committed before it started. What it
/// returns runs once the flush's writers have been told (publishing what became durable).
pub type FlushFn = Arc<dyn Fn() -> Result<Announce> + Send + Sync>;

/// What a finished flush announces to readers, right after waking its writers. Idempotent:
/// each writer runs it too before it returns, so a writer never returns before readers can see
/// what it made durable.
pub type Announce = Arc<dyn Fn() + Send + Sync>;

/// The number of the last finished flush, its error if it failed, its announcement if not.
type Finished = (u64, Option<String>, Option<Announce>);

pub struct GroupFlush {
    state: Mutex<State>,
    finished: tokio::sync::watch::Sender<Finished>,
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
            finished: tokio::sync::watch::Sender::new((0, None, None)),
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
        let (_, error, announce) = finished
            .wait_for(|(done, _, _)| *done >= target)
            .await
            .map_err(|_| Error::new(ErrorCode::Unknown, "the metadata flusher stopped"))?
            .clone();
        if let Some(announce) = announce {
            announce();
        }
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
            let (outcome, announce) = match self.run_work().await {
                Ok(announce) => (None, Some(announce)),
                Err(message) => (Some(message), None),
            };
            self.finished
                .send_replace((number, outcome, announce.clone()));
            if let Some(announce) = announce {
                announce();
            }
        }
    }

    /// One flush's work, off the async threads: in place where the runtime can hand this
    /// thread's other tasks to another (multi-threaded), on the blocking pool otherwise.
    async fn run_work(&self) -> std::result::Result<Announce, String> {
        let work = self.work.clone();
        let multi_threaded = tokio::runtime::Handle::current().runtime_flavor()
            == tokio::runtime::RuntimeFlavor::MultiThread;
        let outcome = if multi_threaded {
            // A panic (a bug in sled) fails this flush's writers instead of ending the flush
            // task with `running` still set, which would leave every later writer waiting for
            // good.
            match tokio::task::block_in_place(|| {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work()))
            }) {
                Ok(outcome) => outcome,
                Err(_) => return Err("the flush panicked".to_owned()),
            }
        } else {
            match tokio::task::spawn_blocking(move || work()).await {
                Ok(outcome) => outcome,
                Err(e) => return Err(format!("flush task failed: {e}")),
            }
        };
        outcome.map_err(|e| e.to_string())
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
            Ok(Arc::new(|| {}) as Announce)
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

    /// A flush whose announcement takes a while and then counts that it ran: a writer that
    /// returned while the flush task was still announcing would see no count.
    fn counting_flush(announced: Arc<AtomicU64>) -> Arc<GroupFlush> {
        GroupFlush::new(Arc::new(move || {
            std::thread::sleep(Duration::from_millis(5));
            let announced = announced.clone();
            Ok(Arc::new(move || {
                std::thread::sleep(Duration::from_millis(20));
                announced.fetch_add(1, Ordering::SeqCst);
            }) as Announce)
        }))
    }

    async fn writers_see_their_flush_announced() {
        let announced = Arc::new(AtomicU64::new(0));
        let group = counting_flush(announced.clone());
        let mut writers = Vec::new();
        for _ in 0..16 {
            let group = group.clone();
            let announced = announced.clone();
            writers.push(tokio::spawn(async move {
                group.flush().await.unwrap();
                // Readers can see what this writer made durable by the time it is told.
                assert!(announced.load(Ordering::SeqCst) > 0);
            }));
        }
        for w in writers {
            w.await.unwrap();
        }
    }

    // The fsync runs in place on a multi-threaded runtime and on the blocking pool otherwise;
    // both tell writers only once the flush is announced.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn multi_threaded_writers_return_after_the_announcement() {
        writers_see_their_flush_announced().await;
    }

    #[tokio::test]
    async fn current_thread_writers_return_after_the_announcement() {
        writers_see_their_flush_announced().await;
    }

    // A panicking flush fails its writers and leaves the flusher able to run the next one, on
    // both kinds of runtime.
    async fn a_panicking_flush_fails_its_writers_and_the_next_one_runs() {
        let panic = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let flag = panic.clone();
        let group = GroupFlush::new(Arc::new(move || {
            if flag.swap(false, Ordering::SeqCst) {
                panic!("sled bug");
            }
            Ok(Arc::new(|| {}) as Announce)
        }));
        let err = tokio::time::timeout(Duration::from_secs(10), group.flush())
            .await
            .expect("the writers of a panicking flush were never told")
            .unwrap_err();
        assert!(err.to_string().contains("flush"), "{err}");
        tokio::time::timeout(Duration::from_secs(10), group.flush())
            .await
            .expect("the flush after a panicking one never ran")
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn multi_threaded_flusher_survives_a_panicking_flush() {
        a_panicking_flush_fails_its_writers_and_the_next_one_runs().await;
    }

    #[tokio::test]
    async fn current_thread_flusher_survives_a_panicking_flush() {
        a_panicking_flush_fails_its_writers_and_the_next_one_runs().await;
    }

    #[tokio::test]
    async fn a_failed_flush_fails_its_writers_and_the_next_one_runs() {
        let fail = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let flag = fail.clone();
        let group = GroupFlush::new(Arc::new(move || {
            if flag.load(Ordering::SeqCst) {
                Err(Error::new(ErrorCode::Unknown, "disk on fire"))
            } else {
                Ok(Arc::new(|| {}) as Announce)
            }
        }));
        let err = group.flush().await.unwrap_err();
        assert!(err.to_string().contains("disk on fire"), "{err}");
        fail.store(false, Ordering::SeqCst);
        group.flush().await.unwrap();
    }
}
