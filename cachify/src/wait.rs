//! Waiting for a held lock without polling, and in turn.
//!
//! A caller that may wait joins the lock's line (its waiters in arrival
//! order, kept by the store: see [`LockStore`]) on its first refused
//! attempt, then watches the lock's releases ([`LockStore::watch`]) and
//! tries again at once (a release may have come before the watch). From
//! then on it tries again only when a release wakes it, or after
//! its re-check period ([`RECHECK`] by default) at the latest: a release
//! message can be lost, and a lease can run out with no release at all.
//! Each attempt keeps its place in the line for a few re-checks, so a
//! waiter that crashed lets the others through after that long ([`KEEP_RECHECKS`] re-checks). A waiter that gives up, fails or is cancelled leaves
//! the line, waking the others.
//!
//! Everything is keyed by a resource key and its [`Line`], so any resource
//! taken by an atomic attempt that honours the line (a lock today, a pool
//! slot next) waits the same way.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::io;
use crate::keyspace::Line;
use crate::mode::Mode;
use crate::store::{LockStore, Watch};

/// The longest a waiter goes between two attempts by default: the safety
/// net for a lost release message, and for a lease that ran out without a
/// release (`CachifyBuilder::lock_recheck`).
pub(crate) const RECHECK: Duration = Duration::from_millis(500);

/// How many re-checks a waiter's place in a line outlives its last
/// attempt: room to spare, so a slow but live waiter keeps it.
const KEEP_RECHECKS: u32 = 4;

/// One caller's turn in a resource's line, from its first refused attempt
/// until it takes the resource or gives up. Leaves the line when dropped
/// unless [`Turn::settle`]d.
pub(crate) struct Turn {
    store: Arc<dyn LockStore>,
    key: String,
    token: String,
    line: Line,
    /// `None`: a wait without end.
    deadline: Option<Instant>,
    /// The longest pause between two attempts.
    recheck: Duration,
    /// Taken after the first refusal; `None` inside once watching failed.
    watch: Option<Option<Watch>>,
    /// Whether this caller may still hold a place in the line.
    queued: bool,
}

impl Turn {
    /// A turn for `token`, whose attempts joined `line` (with
    /// [`Turn::join`]), waiting until `deadline`.
    pub(crate) fn new(
        store: &Arc<dyn LockStore>,
        key: &str,
        token: &str,
        line: &Line,
        deadline: Option<Instant>,
        recheck: Duration,
    ) -> Self {
        Self {
            store: Arc::clone(store),
            key: key.to_owned(),
            token: token.to_owned(),
            line: line.clone(),
            deadline,
            recheck,
            watch: None,
            queued: true,
        }
    }

    /// What an attempt passes as its `join`: a caller that waits at all
    /// keeps its place for [`KEEP_RECHECKS`] re-checks; one that does not
    /// never joins.
    pub(crate) fn join(wait: Duration, recheck: Duration) -> Option<Duration> {
        (!wait.is_zero()).then(|| recheck.saturating_mul(KEEP_RECHECKS))
    }

    /// After a refused attempt: waits until it is worth trying again (a
    /// release, or the re-check). `false`: the deadline has passed, give
    /// up (and [`Turn::leave`]).
    pub(crate) async fn pause<M: Mode>(&mut self) -> bool {
        let now = Instant::now();
        let limit = match self.deadline {
            Some(deadline) if now >= deadline => return false,
            Some(deadline) => (deadline - now).min(self.recheck),
            None => self.recheck,
        };
        match &mut self.watch {
            None => {
                // Watched only now: a release between the refusal and the
                // watch went unseen, so the next attempt comes at once.
                self.watch = Some(M::io(self.store.watch(&self.line)).await.ok());
            }
            Some(Some(watch)) => {
                if let Ok(rings) = M::io(watch.next(limit)).await {
                    watch.rung(rings);
                }
            }
            Some(None) => M::sleep(limit).await,
        }
        true
    }

    /// The resource was taken: the attempt that took it left the line.
    pub(crate) fn settle(mut self) {
        self.queued = false;
    }

    /// Leaves the line after giving up, waking the others if the resource
    /// was waiting for this caller. A failure is left to the place's
    /// lapse.
    pub(crate) async fn leave<M: Mode>(mut self) {
        self.queued = false;
        let _ = M::io(self.store.leave(&self.key, &self.token, &self.line)).await;
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if !self.queued {
            return;
        }
        // Cancelled or failed mid-wait: leave in the background.
        let leave = self.store.leave(&self.key, &self.token, &self.line);
        io::spawn(async move {
            let _ = leave.await;
        });
    }
}

/// Waits for the next release `watch` sees, or `limit`; without a watch
/// (watching failed), for `limit`.
pub(crate) async fn next_release<M: Mode>(watch: &mut Option<Watch>, limit: Duration) {
    match watch {
        Some(watch) => {
            if let Ok(rings) = M::io(watch.next(limit)).await {
                watch.rung(rings);
            }
        }
        None => M::sleep(limit).await,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::health::Health;
    use crate::keyspace::Keyspace;
    use crate::locks::Locks;
    use crate::mode::{Async, Blocking, drive};
    use crate::store::memory::MemoryStore;
    use crate::store::{Fence, StoreFuture};

    /// The memory store, counting attempts to take a lock.
    struct Counting {
        memory: MemoryStore,
        attempts: AtomicUsize,
    }

    impl LockStore for Counting {
        fn try_lock(
            &self,
            key: &str,
            token: &str,
            lease: Duration,
            fence: Option<Fence<'_>>,
            line: &Line,
            join: Option<Duration>,
        ) -> StoreFuture<Option<u64>> {
            self.attempts.fetch_add(1, Ordering::SeqCst);
            self.memory.try_lock(key, token, lease, fence, line, join)
        }
        fn unlock(&self, key: &str, token: &str, line: &Line) -> StoreFuture<bool> {
            self.memory.unlock(key, token, line)
        }
        fn renew(&self, key: &str, token: &str, lease: Duration) -> StoreFuture<bool> {
            self.memory.renew(key, token, lease)
        }
        fn holder(&self, key: &str) -> StoreFuture<Option<String>> {
            self.memory.holder(key)
        }
        fn force_unlock(&self, key: &str, line: &Line) -> StoreFuture<()> {
            self.memory.force_unlock(key, line)
        }
        fn leave(&self, key: &str, token: &str, line: &Line) -> StoreFuture<()> {
            self.memory.leave(key, token, line)
        }
        fn watch(&self, line: &Line) -> StoreFuture<Watch> {
            self.memory.watch(line)
        }
    }

    fn locks() -> (Arc<Counting>, Locks) {
        let store = Arc::new(Counting {
            memory: MemoryStore::new(10),
            attempts: AtomicUsize::new(0),
        });
        let locks = Locks::new(
            Arc::clone(&store) as Arc<dyn LockStore>,
            Keyspace::default(),
            Duration::from_secs(30),
            Duration::from_secs(60),
            Arc::new(Health::new(1, Duration::from_secs(1))),
        );
        (store, locks)
    }

    const HELD_FOR: Duration = Duration::from_millis(2000);
    const WAIT: Duration = Duration::from_secs(30);
    /// The first refusal, the attempt right after watching, one per
    /// re-check while held, and the one that takes the lock. Polling with
    /// backoff up to 100 ms costs about 25.
    const HANDFUL: usize = 2 + (HELD_FOR.as_millis() / RECHECK.as_millis()) as usize + 1;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_async_waiter_tries_a_handful_of_times_not_dozens() {
        let (store, locks) = locks();
        let held = locks
            .acquire::<Async>("l".into(), None, Duration::ZERO, true, None)
            .await
            .unwrap();
        let locks = Arc::new(locks);
        let waiter = tokio::spawn({
            let locks = Arc::clone(&locks);
            async move {
                locks
                    .acquire::<Async>("l".into(), None, WAIT, true, None)
                    .await
            }
        });
        tokio::time::sleep(HELD_FOR).await;
        held.release().await.unwrap();
        let taken = waiter.await.unwrap().unwrap();
        let attempts = store.attempts.load(Ordering::SeqCst) - 1;
        assert!(
            (3..=HANDFUL).contains(&attempts),
            "waiting {HELD_FOR:?} took {attempts} attempts"
        );
        taken.release().await.unwrap();
    }

    #[test]
    fn a_blocking_waiter_tries_a_handful_of_times_not_dozens() {
        let (store, locks) = locks();
        let held =
            drive(locks.acquire::<Blocking>("l".into(), None, Duration::ZERO, true, None)).unwrap();
        let locks = Arc::new(locks);
        let waiter = std::thread::spawn({
            let locks = Arc::clone(&locks);
            move || drive(locks.acquire::<Blocking>("l".into(), None, WAIT, true, None))
        });
        std::thread::sleep(HELD_FOR);
        held.release_blocking().unwrap();
        let taken = waiter.join().unwrap().unwrap();
        let attempts = store.attempts.load(Ordering::SeqCst) - 1;
        assert!(
            (3..=HANDFUL).contains(&attempts),
            "waiting {HELD_FOR:?} took {attempts} attempts"
        );
        taken.release_blocking().unwrap();
    }
}
