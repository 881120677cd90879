//! Waiting for a held lock without polling, and in turn.
//!
//! A caller that may wait joins the lock's line (its waiters in arrival
//! order, kept by the store: see [`LockStore`]) on its first refused
//! attempt, then watches the lock's releases ([`LockStore::watch`]) and
//! tries again at once (a release may have come before the watch). From
//! then on it tries again when a release wakes it, when the lease that
//! refused it runs out (a lease that runs out announces nothing), or after
//! its re-check period ([`RECHECK`] by default) at the latest: a release
//! message can be lost.
//! Each attempt keeps its place in the line for a few re-checks, so a
//! waiter that crashed lets the others through after that long ([`KEEP_RECHECKS`] re-checks). A waiter that gives up, fails or is cancelled leaves
//! the line, waking the others.
//!
//! Everything is keyed by a resource key and its [`Line`], so any resource
//! taken by an atomic attempt that honours the line (a lock, a pool slot)
//! waits the same way.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::Error;
use crate::io;
use crate::keyspace::Line;
use crate::mode::Mode;
use crate::store::{Grant, LockStore, PoolStore, StoreFuture, Watch};

/// The longest a waiter goes between two attempts by default: the safety
/// net for a lost release message (`CachifyBuilder::lock_recheck`).
pub(crate) const RECHECK: Duration = Duration::from_millis(500);

/// How many re-checks a waiter's place in a line outlives its last
/// attempt: room to spare, so a slow but live waiter keeps it.
const KEEP_RECHECKS: u32 = 4;

/// How long after the end of the lease in the way a waiter tries again:
/// stores count lease time in whole milliseconds.
const LEASE_MARGIN: Duration = Duration::from_millis(2);

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
    /// Set for a pool's line: leaving goes through the pool store.
    pool: Option<Arc<dyn PoolStore>>,
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
            pool: None,
        }
    }

    /// The same turn in the line of a pool of `pools`: leaving it wakes
    /// the other waiters even while slots are held
    /// ([`PoolStore::leave_pool`]).
    pub(crate) fn in_pool(mut self, pools: &Arc<dyn PoolStore>) -> Self {
        self.pool = Some(Arc::clone(pools));
        self
    }

    /// What an attempt passes as its `join`: a caller that waits at all
    /// keeps its place for [`KEEP_RECHECKS`] re-checks; one that does not
    /// never joins.
    pub(crate) fn join(wait: Duration, recheck: Duration) -> Option<Duration> {
        (!wait.is_zero()).then(|| recheck.saturating_mul(KEEP_RECHECKS))
    }

    /// After a refused attempt: waits until it is worth trying again (a
    /// release, the end of the lease in the way, `free_in`, or the
    /// re-check). `false`: the deadline has passed, give up (and
    /// [`Turn::leave`]).
    pub(crate) async fn pause<M: Mode>(&mut self, free_in: Option<Duration>) -> bool {
        let now = Instant::now();
        let mut limit = match self.deadline {
            Some(deadline) if now >= deadline => return false,
            Some(deadline) => (deadline - now).min(self.recheck),
            None => self.recheck,
        };
        if let Some(free_in) = free_in {
            // A moment past the end, so the store sees the lease gone.
            limit = limit.min(free_in + LEASE_MARGIN);
        }
        match &mut self.watch {
            None => {
                // Watched only now: a release between the refusal and the
                // watch went unseen, so the next attempt comes at once.
                self.watch = Some(M::io(self.store.watch(&self.line)).await.ok());
            }
            Some(Some(watch)) => next_release::<M>(watch, limit).await,
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
        let _ = M::io(self.leaving()).await;
    }

    /// The store call that takes this caller out of its line.
    fn leaving(&self) -> StoreFuture<()> {
        match &self.pool {
            Some(pools) => pools.leave_pool(&self.key, &self.token, &self.line),
            None => self.store.leave(&self.key, &self.token, &self.line),
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if !self.queued {
            return;
        }
        // Cancelled or failed mid-wait: leave in the background.
        let leave = self.leaving();
        io::spawn(async move {
            let _ = leave.await;
        });
    }
}

/// Makes attempts until one takes the resource or the wait is over: the
/// waiting of a lock and of a pool slot, written once. `attempt` is one
/// atomic try that honours the line; `turn` makes
/// the caller's turn at its first refusal, when `wait` is not zero.
/// `Ok(None)`: refused until the deadline, and out of the line. An error
/// ends the wait at once (the dropped turn leaves the line in the
/// background).
pub(crate) async fn in_turn<M: Mode, T, F>(
    wait: Duration,
    mut attempt: impl FnMut() -> F,
    turn: impl Fn() -> Turn,
) -> Result<Option<T>, Error>
where
    F: Future<Output = Result<Grant<T>, Error>>,
{
    let mut waiting: Option<Turn> = None;
    loop {
        let free_in = match attempt().await? {
            Grant::Taken(taken) => {
                if let Some(waiting) = waiting {
                    waiting.settle();
                }
                return Ok(Some(taken));
            }
            Grant::Refused { free_in } => free_in,
        };
        let again = !wait.is_zero() && waiting.get_or_insert_with(&turn).pause::<M>(free_in).await;
        if !again {
            if let Some(waiting) = waiting {
                waiting.leave::<M>().await;
            }
            return Ok(None);
        }
    }
}

/// Waits for the next release `watch` sees, or `limit`. Should the wait
/// itself fail (a blocking call on cachify's own background thread), it
/// sleeps `limit` instead, so a waiter never spins.
pub(crate) async fn next_release<M: Mode>(watch: &mut Watch, limit: Duration) {
    match M::io(watch.next(limit)).await {
        Ok(rings) => watch.rung(rings),
        Err(_) => M::sleep(limit).await,
    }
}
