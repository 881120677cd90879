//! Owned distributed locks: `SET key token NX PX`, owner-only release and
//! renewal, and a watchdog that renews the lease while the holder runs.
//! Waiters are served in arrival order and woken by releases (see
//! [`crate::wait`]).
//!
//! Locks fail closed: a backend error is `Err(Error::Backend)`, never a run
//! without the lock.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::Error;
use crate::health::Health;
use crate::keyspace::Keyspace;
use crate::lease::{self, GiveBack, Held, Holding, new_token};
use crate::mode::{Async, Blocking, Mode, drive};
use crate::observe::{CallKind, LOCK_API_TEMPLATE, Tally};
use crate::store::{Fence, LockStore, Watch, clamp_ttl};
use crate::wait::{self, Turn};

/// The locks of one client: its lock store and lock settings.
pub(crate) struct Locks {
    store: Arc<dyn LockStore>,
    keys: Keyspace,
    lock_ttl: Duration,
    fence_idle: Duration,
    health: Arc<Health>,
    /// The longest a waiter goes between two attempts.
    recheck: Duration,
}

impl fmt::Debug for Locks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Locks")
            .field("prefix", &self.keys.prefix())
            .field("lock_ttl", &self.lock_ttl)
            .field("fence_idle", &self.fence_idle)
            .finish_non_exhaustive()
    }
}

impl Locks {
    pub(crate) fn new(
        store: Arc<dyn LockStore>,
        keys: Keyspace,
        lock_ttl: Duration,
        fence_idle: Duration,
        health: Arc<Health>,
    ) -> Self {
        Self {
            store,
            keys,
            lock_ttl,
            fence_idle,
            health,
            recheck: wait::RECHECK,
        }
    }

    /// Sets the longest pause between two attempts of a waiter.
    pub(crate) fn with_recheck(mut self, recheck: Duration) -> Self {
        self.recheck = recheck;
        self
    }

    /// The longest pause between two attempts of a waiter.
    pub(crate) fn recheck(&self) -> Duration {
        self.recheck
    }

    /// The lease of locks that set no `ttl`.
    pub(crate) fn lock_ttl(&self) -> Duration {
        self.lock_ttl
    }

    /// How long an unused fencing counter is kept.
    pub(crate) fn fence_idle(&self) -> Duration {
        self.fence_idle
    }

    /// Takes the lock `key`, waiting up to `wait` if it is held. `fenced`:
    /// draw a fencing token (fill locks don't). `tally`: the counters of
    /// the caller's template, which `stats()` sums; without one (fill
    /// locks) the client's own counters count.
    pub(crate) async fn acquire<M: Mode>(
        &self,
        key: String,
        ttl: Option<Duration>,
        wait: Duration,
        fenced: bool,
        tally: Option<&Tally>,
    ) -> Result<LockGuard, Error> {
        let lease = clamp_ttl(ttl.unwrap_or(self.lock_ttl));
        let token = new_token()?;
        let fence_key = fenced.then(|| self.keys.fence(&key));
        let fence = fence_key.as_deref().map(|key| Fence {
            key,
            idle: self.fence_idle,
        });
        let counters = &self.health.counters;
        let line = self.keys.line(&key);
        let join = Turn::join(wait, self.recheck);
        // A wait too long to represent is a wait without end.
        let deadline = Instant::now().checked_add(wait);
        let attempt = || async {
            let attempt = lease::Attempt::new(Held::Lock, &key, lease, || {
                let (store, key, token, line) = (
                    Arc::clone(&self.store),
                    key.clone(),
                    token.clone(),
                    line.clone(),
                );
                move || store.unlock(&key, &token, &line)
            });
            let taken = M::io(self.store.try_lock(&key, &token, lease, fence, &line, join)).await;
            // On an error the armed attempt, dropped, takes back what the
            // SET may yet take.
            if taken.is_ok() {
                attempt.settle();
            }
            taken
        };
        let turn = || Turn::new(&self.store, &key, &token, &line, deadline, self.recheck);
        let fencing_token = match wait::in_turn::<M, _, _>(wait, attempt, turn).await {
            Ok(Some(fencing_token)) => fencing_token,
            Ok(None) => {
                match tally {
                    Some(tally) => tally.lock_contended(),
                    None => counters.lock_contention.add(),
                }
                tracing::debug!(
                    target: "cachify::lock",
                    lock = "contended",
                    key,
                    ?wait,
                    "cachify: lock held elsewhere; giving up"
                );
                return Err(Error::Locked { key });
            }
            Err(error) => {
                match tally {
                    Some(tally) => tally.error(),
                    None => counters.errors.add(),
                }
                if let Some(suppressed) = self.health.lock_log.admit() {
                    tracing::warn!(key, %error, suppressed, "cachify: could not take a lock; refusing to run without it");
                }
                return Err(error);
            }
        };
        match tally {
            Some(tally) => tally.lock_acquired(),
            None => counters.locks_acquired.add(),
        }
        tracing::debug!(
            target: "cachify::lock",
            lock = "acquired",
            key,
            fencing_token,
            ?lease,
            "cachify: lock acquired"
        );
        let renew = {
            let (store, key) = (Arc::clone(&self.store), key.clone());
            move |token: &str| store.renew(&key, token, lease)
        };
        let give_back: GiveBack = {
            let (store, key) = (Arc::clone(&self.store), key.clone());
            Arc::new(move |token: &str| store.unlock(&key, token, &line))
        };
        Ok(LockGuard {
            holding: Holding::start(Held::Lock, key, token, lease, renew, give_back),
            fencing_token,
        })
    }

    /// The token of whoever holds `key`.
    pub(crate) async fn holder<M: Mode>(&self, key: &str) -> Result<Option<String>, Error> {
        M::io(self.store.holder(key)).await
    }

    /// Leaves the note `token` under `key` for `ttl` (see
    /// [`LockStore::note`]); read it with [`Locks::holder`].
    pub(crate) async fn note<M: Mode>(
        &self,
        key: &str,
        token: &str,
        ttl: Duration,
    ) -> Result<(), Error> {
        M::io(self.store.note(key, token, ttl)).await
    }

    /// Deletes the lock `key` whoever holds it.
    pub(crate) async fn force_unlock<M: Mode>(&self, key: &str) -> Result<(), Error> {
        M::io(self.store.force_unlock(key, &self.keys.line(key))).await
    }

    /// Watches the releases of the lock `key` (the followers of a fill
    /// wait for its filler this way); `None` if watching failed.
    pub(crate) async fn watch<M: Mode>(&self, key: &str) -> Option<Watch> {
        M::io(self.store.watch(&self.keys.line(key))).await.ok()
    }

    /// Starts building a lock named `name` on these locks.
    pub(crate) fn builder(&self, name: String) -> LockBuilder<'_> {
        LockBuilder::new(Target::Client(self), name)
    }
}

/// Whose locks a builder takes.
#[derive(Debug)]
enum Target<'a> {
    Client(&'a Locks),
    /// Looked up when the lock is taken, so a builder made before
    /// `cachify::init` still uses the client given to it.
    Global(fn() -> &'static Locks),
}

/// Configures one lock before acquiring it; from [`crate::lock()`] or
/// [`crate::Cachify::lock`].
#[must_use = "a lock is only taken by `acquire()` or `acquire_blocking()`"]
#[derive(Debug)]
pub struct LockBuilder<'a> {
    target: Target<'a>,
    name: String,
    ttl: Option<Duration>,
    wait: Duration,
}

impl LockBuilder<'static> {
    /// A lock on the global client, resolved when it is taken.
    pub(crate) fn on_global(name: String, locks: fn() -> &'static Locks) -> Self {
        Self::new(Target::Global(locks), name)
    }
}

impl<'a> LockBuilder<'a> {
    fn new(target: Target<'a>, name: String) -> Self {
        Self {
            target,
            name,
            ttl: None,
            wait: Duration::ZERO,
        }
    }

    /// The lease: how long the lock outlives a holder that crashed. While
    /// the holder is alive a watchdog renews it every `ttl / 3`. Defaults to
    /// the client's `lock_ttl`; below one millisecond rounds up to 1 ms.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let guard = cachify::lock("nightly-import")
    ///     .ttl(Duration::from_secs(60))
    ///     .acquire_blocking()?;
    /// guard.release_blocking()?;
    /// # Ok::<(), cachify::Error>(())
    /// ```
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// How long to wait for a held lock before giving up with
    /// [`Error::Locked`]. Defaults to zero: a held lock is refused at once.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let held = cachify::lock("report-7").acquire_blocking()?;
    /// // Held above: this one waits 50 ms, then gives up.
    /// let second = cachify::lock("report-7")
    ///     .wait(Duration::from_millis(50))
    ///     .acquire_blocking();
    /// assert!(matches!(second, Err(cachify::Error::Locked { .. })));
    /// held.release_blocking()?;
    /// # Ok::<(), cachify::Error>(())
    /// ```
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    async fn acquire_in<M: Mode>(self) -> Result<LockGuard, Error> {
        let locks = match self.target {
            Target::Client(locks) => locks,
            Target::Global(global) => global(),
        };
        let key = locks.keys.lock(&self.name);
        let tally = locks.health.tally(CallKind::Lock, LOCK_API_TEMPLATE, None);
        locks
            .acquire::<M>(key, self.ttl, self.wait, true, Some(&tally))
            .await
    }

    /// Takes the lock, waiting up to `wait` if it is held.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cachify::Error> {
    /// let guard = cachify::lock("nightly-import").acquire().await?;
    /// // ... the work that must not run twice at once ...
    /// guard.release().await?;
    /// # Ok(()) }
    /// ```
    pub async fn acquire(self) -> Result<LockGuard, Error> {
        self.acquire_in::<Async>().await
    }

    /// Blocking twin of [`LockBuilder::acquire`], for code without a runtime
    /// (it also works inside one, blocking only the calling thread).
    ///
    /// ```
    /// let guard = cachify::lock("nightly-import").acquire_blocking()?;
    /// guard.release_blocking()?;
    /// # Ok::<(), cachify::Error>(())
    /// ```
    pub fn acquire_blocking(self) -> Result<LockGuard, Error> {
        drive(self.acquire_in::<Blocking>())
    }
}

/// A held lock. Released by [`LockGuard::release`], or when dropped
/// (including on panic or when the future holding it is cancelled).
#[must_use = "dropping the guard releases the lock at once"]
pub struct LockGuard {
    holding: Holding,
    fencing_token: u64,
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("key", &self.holding.key())
            .field("fencing_token", &self.fencing_token)
            .finish_non_exhaustive()
    }
}

impl LockGuard {
    /// The full backend key of this lock.
    ///
    /// ```
    /// let guard = cachify::lock("report-7").acquire_blocking()?;
    /// assert_eq!(guard.key(), "cachify:lock:report-7");
    /// # Ok::<(), cachify::Error>(())
    /// ```
    pub fn key(&self) -> &str {
        self.holding.key()
    }

    /// A number that strictly increases with every grant of this lock name,
    /// across processes, and across restarts and flushes of Redis (see
    /// RELIABILITY.md for the clock assumption this rests on).
    ///
    /// A lease can run out while its holder is paused (a GC pause, a stalled
    /// VM), and another holder may then take the lock: mutual exclusion by
    /// lease alone is for efficiency, not correctness. Pass this token with
    /// every write to the resource the lock protects, and have that store
    /// reject a token lower than the highest it has seen: then a stale
    /// holder's late writes are refused.
    ///
    /// ```
    /// let first = cachify::lock("ledger").acquire_blocking()?;
    /// let token = first.fencing_token();
    /// first.release_blocking()?;
    /// let second = cachify::lock("ledger").acquire_blocking()?;
    /// assert!(second.fencing_token() > token);
    /// # Ok::<(), cachify::Error>(())
    /// ```
    pub fn fencing_token(&self) -> u64 {
        self.fencing_token
    }

    /// Whether the watchdog found the lock taken away (its key deleted or
    /// overwritten, or its lease expired while renewals failed).
    ///
    /// ```
    /// let guard = cachify::lock("import").acquire_blocking()?;
    /// assert!(!guard.is_lost());
    /// # Ok::<(), cachify::Error>(())
    /// ```
    pub fn is_lost(&self) -> bool {
        self.holding.lost().is_marked()
    }

    /// Resolves when the lock is found lost (see [`LockGuard::is_lost`]).
    /// Race it against the protected work to stop early:
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cachify::Error> {
    /// let guard = cachify::lock("import").acquire().await?;
    /// tokio::select! {
    ///     _ = guard.lost() => { /* someone took the lock: stop writing */ }
    ///     _ = tokio::time::sleep(std::time::Duration::from_millis(10)) => { /* the work */ }
    /// }
    /// guard.release().await?;
    /// # Ok(()) }
    /// ```
    pub async fn lost(&self) {
        self.holding.lost().marked().await;
    }

    /// Releases the lock. `Err(Error::NotOwner)` means it was no longer
    /// ours: the lease ran out or someone deleted or took the key.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cachify::Error> {
    /// let guard = cachify::lock("import").acquire().await?;
    /// guard.release().await?;
    /// assert!(cachify::lock("import").acquire().await.is_ok()); // free again
    /// # Ok(()) }
    /// ```
    pub async fn release(self) -> Result<(), Error> {
        self.release_in::<Async>().await
    }

    /// Blocking twin of [`LockGuard::release`].
    ///
    /// ```
    /// let guard = cachify::lock("import").acquire_blocking()?;
    /// guard.release_blocking()?;
    /// # Ok::<(), cachify::Error>(())
    /// ```
    pub fn release_blocking(self) -> Result<(), Error> {
        drive(self.release_in::<Blocking>())
    }

    async fn release_in<M: Mode>(self) -> Result<(), Error> {
        self.holding.release::<M>().await
    }

    /// The holder's random token (what [`Locks::holder`] reads while it
    /// holds the lock).
    pub(crate) fn token(&self) -> &str {
        self.holding.token()
    }

    /// Release at the end of a `#[once]`/`#[lock]` function or a fill: the
    /// function already ran, so a failure is only worth a warning.
    pub(crate) async fn release_after_run<M: Mode>(self) {
        self.holding.release_after_run::<M>().await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::keyspace::Line;
    use crate::store::memory::MemoryStore;
    use crate::store::{Grant, StoreFuture};
    use crate::wait::RECHECK;

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
        ) -> StoreFuture<Grant<u64>> {
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
        fn note(&self, key: &str, token: &str, ttl: Duration) -> StoreFuture<()> {
            self.memory.note(key, token, ttl)
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
