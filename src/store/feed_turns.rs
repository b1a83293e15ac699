//! Waiting long-polls woken a group at a time, so a push never waits behind a whole wave.
//!
//! One durable change wakes every long-poll that waits on the change feed: on a root with
//! 10 000 children that is 10 000 answers to write and as many requests to read back. Woken at
//! once they fill the runtime's queues, and a push that arrives meanwhile (a manifest `PUT`,
//! durable before its 201) runs after all of them; asked for 100 pushes a second, such a root
//! took 21–39 (BENCHMARKS.md, "A root with many children"). Here each waiting long-poll joins
//! one of a few groups (`changes::LONG_POLL_GROUPS`), and one relay task hands the newest
//! durable sequence number to the groups in turn. After each group the relay queues itself
//! behind the tasks it woke, so whatever else became ready runs after about one group's
//! answers. (About: a worker's local queue holds 256 tasks and a larger wake spills into the
//! runtime's global queue, which the relay does not wait for.) A sweep reaches every group with
//! what was newest when it got there; a change that lands during a sweep starts another, so no
//! group is left behind. Under sustained pushes sweeps are spaced by the number waiting
//! ([`sweep_spacing`]: 300 ms at 10 000), so a child's events come in batches and the root's
//! CPUs are not all spent on answers and the requests that follow them.
//!
//! A child's long-polls all wait in one group (chosen by its connection), so a child answered
//! in a sweep waits for the next one rather than being answered twice in one, and the children
//! of a group ask for the same page, which is read and rendered once for all of them.
//!
//! Streams do not wait here: they are written from a runtime of their own (`api::feed_stream`),
//! where nothing else queues behind them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::watch;

/// The groups and the relay that wakes them (started by the first long-poll that waits).
pub(super) struct Turns {
    groups: Arc<[watch::Sender<u64>]>,
    /// Spreads the waiters over the groups (round robin).
    next: AtomicUsize,
    relay: OnceLock<()>,
}

impl Turns {
    /// `groups` groups that start at `newest`, the newest durable sequence number at open.
    pub(super) fn new(newest: u64, groups: usize) -> Turns {
        Turns {
            groups: (0..groups.max(1))
                .map(|_| watch::Sender::new(newest))
                .collect(),
            next: AtomicUsize::new(0),
            relay: OnceLock::new(),
        }
    }

    /// A place in the group of `seat` (a number of the child's connection, so that its
    /// long-polls keep one group; round robin without one): the newest durable sequence
    /// number as it reaches that group. Starts the relay from `durable` (the store's own watch)
    /// the first time; it ends with the store (when `durable`'s sender is dropped) or with the
    /// runtime it runs on.
    pub(super) fn join(
        &self,
        durable: &watch::Sender<u64>,
        seat: Option<u64>,
    ) -> watch::Receiver<u64> {
        self.relay.get_or_init(|| {
            tokio::spawn(relay(durable.subscribe(), self.groups.clone()));
        });
        let place = match seat {
            // Fibonacci hashing: neighbouring seats (addresses) land in different groups.
            Some(seat) => (seat.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize,
            None => self.next.fetch_add(1, Ordering::Relaxed),
        };
        let group = place % self.groups.len();
        self.groups[group].subscribe()
    }
}

/// The least time from the start of one sweep to the start of the next, per long-poll waiting
/// when it started: about what an answer and the child's next request cost a root of two
/// vCPUs. Under sustained pushes a child then gets its events in batches rather than in as many
/// answers as the CPUs allow. With 10 000 children at 100 pushes a second and pages from the
/// log's tail (`feed_tail`), the p99 to all of them went from 0.69–1.58 s unspaced to
/// 0.48–0.55 s (BENCHMARKS.md, "The feed's tail in memory"). A push after a quiet spell is
/// never held: its sweep starts at once.
const SPACING_PER_WAITER: Duration = Duration::from_micros(30);

/// The most a sweep is held back, however many wait.
const MAX_SPACING: Duration = Duration::from_secs(1);

fn sweep_spacing(waiting: usize) -> Duration {
    SPACING_PER_WAITER
        .saturating_mul(u32::try_from(waiting).unwrap_or(u32::MAX))
        .min(MAX_SPACING)
}

/// Hand each new value of `durable` to every group in turn, queued behind each group's wake
/// before the next, sweeps spaced by [`sweep_spacing`].
async fn relay(mut durable: watch::Receiver<u64>, groups: Arc<[watch::Sender<u64>]>) {
    loop {
        let started = tokio::time::Instant::now();
        let waiting: usize = groups.iter().map(watch::Sender::receiver_count).sum();
        // Everything published after this starts another sweep.
        durable.borrow_and_update();
        for group in groups.iter() {
            let newest = *durable.borrow();
            group.send_if_modified(|seq| {
                let moved = newest > *seq;
                if moved {
                    *seq = newest;
                }
                moved
            });
            behind_the_queue().await;
        }
        if durable.changed().await.is_err() {
            // The store is gone.
            return;
        }
        tokio::time::sleep_until(started + sweep_spacing(waiting)).await;
    }
}

/// Go on once the tasks queued on this worker now have run: the group just woken answers
/// before the next is handed its value. (A task that wakes itself is queued at the back;
/// `tokio::task::yield_now` instead resumes at the worker's next driver poll, which comes
/// every 61 tasks, so the sweep would outrun the answers.)
async fn behind_the_queue() {
    let mut queued = false;
    std::future::poll_fn(|cx| {
        if queued {
            return std::task::Poll::Ready(());
        }
        queued = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_group_gets_every_change_including_one_made_during_a_sweep() {
        let durable = watch::Sender::new(5);
        let turns = Turns::new(5, 16);
        let mut waiters: Vec<_> = (0..32).map(|_| turns.join(&durable, None)).collect();
        assert!(waiters.iter().all(|w| *w.borrow() == 5));
        durable.send_replace(6);
        // A second change while the first sweep is under way (the relay yields per group).
        behind_the_queue().await;
        durable.send_replace(7);
        for (i, waiter) in waiters.iter_mut().enumerate() {
            tokio::time::timeout(Duration::from_secs(5), waiter.wait_for(|seq| *seq == 7))
                .await
                .unwrap_or_else(|_| panic!("waiter {i} never saw 7"))
                .unwrap();
        }
    }

    #[tokio::test]
    async fn the_relay_ends_with_the_store() {
        let durable = watch::Sender::new(0);
        let turns = Turns::new(0, 1);
        let waiter = turns.join(&durable, Some(7));
        behind_the_queue().await;
        drop(durable);
        // The relay holds the only other reference to the groups: once it has ended, only
        // `turns` holds them.
        tokio::time::timeout(Duration::from_secs(5), async {
            while Arc::strong_count(&turns.groups) > 1 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the relay ended");
        drop(waiter);
    }
}
