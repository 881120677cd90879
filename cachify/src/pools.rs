//! Pools, a distributed semaphore: at most `max_size` holders of one pool
//! at a time, across every process sharing the store.
//!
//! A slot is owned like a lock: a random token with a lease, renewed by a
//! watchdog while its holder runs, released only by its holder, and lost
//! (never silently regained) once its lease ran out. Pools fail closed: a
//! backend error is `Err(Error::Backend)`, never a run without a slot.
//!
//! Waiters line up and are woken by releases exactly as lock waiters are
//! (see [`crate::wait`]): a free slot goes to the earliest waiters first,
//! so a holder that releases and takes a slot again in a loop cannot
//! starve one that waits.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::Error;
use crate::health::Health;
use crate::keyspace::Keyspace;
use crate::lease::{self, GiveBack, Held, Holding, new_token};
use crate::mode::{Async, Blocking, Mode, drive};
use crate::observe::{CallKind, POOL_API_TEMPLATE, Tally};
use crate::store::{LockStore, PoolStore, clamp_ttl};
use crate::wait::{self, Turn};

/// The pools of one client: its pool store and the default lease.
pub(crate) struct Pools {
    store: Arc<dyn PoolStore>,
    keys: Keyspace,
    lock_ttl: Duration,
    health: Arc<Health>,
    /// Where waiters watch a pool's releases (its line is keyed like a
    /// lock's).
    locks: Arc<dyn LockStore>,
    /// The longest a waiter goes between two attempts.
    recheck: Duration,
}

impl fmt::Debug for Pools {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pools")
            .field("prefix", &self.keys.prefix())
            .field("lock_ttl", &self.lock_ttl)
            .finish_non_exhaustive()
    }
}

impl Pools {
    pub(crate) fn new(
        store: Arc<dyn PoolStore>,
        keys: Keyspace,
        lock_ttl: Duration,
        health: Arc<Health>,
        locks: Arc<dyn LockStore>,
        recheck: Duration,
    ) -> Self {
        Self {
            store,
            keys,
            lock_ttl,
            health,
            locks,
            recheck,
        }
    }

    /// Takes a slot of the pool `key`, waiting up to `wait` while it is
    /// full. `tally`: the counters of the caller's template.
    pub(crate) async fn acquire<M: Mode>(
        &self,
        key: String,
        max_size: usize,
        ttl: Option<Duration>,
        wait: Duration,
        tally: &Tally,
    ) -> Result<PoolSlot, Error> {
        if max_size == 0 {
            return Err(Error::Config(format!(
                "pool `{key}`: max_size must be at least 1 (a pool of 0 slots never admits anyone)"
            )));
        }
        let lease = clamp_ttl(ttl.unwrap_or(self.lock_ttl));
        let token = new_token()?;
        let line = self.keys.line(&key);
        let join = Turn::join(wait, self.recheck);
        // A wait too long to represent is a wait without end.
        let deadline = Instant::now().checked_add(wait);
        let attempt = || async {
            let attempt = lease::Attempt::new(Held::PoolSlot, &key, lease, || {
                let (store, key, token, line) = (
                    Arc::clone(&self.store),
                    key.clone(),
                    token.clone(),
                    line.clone(),
                );
                move || store.release_slot(&key, &token, &line)
            });
            let taken = self
                .store
                .acquire_slot(&key, &token, max_size, lease, &line, join);
            let taken = M::io(taken).await;
            // On an error the armed attempt, dropped, takes back what the
            // script may yet take.
            if taken.is_ok() {
                attempt.settle();
            }
            taken
        };
        let turn = || {
            Turn::new(&self.locks, &key, &token, &line, deadline, self.recheck).in_pool(&self.store)
        };
        match wait::in_turn::<M, _, _>(wait, attempt, turn).await {
            Ok(Some(())) => {}
            Ok(None) => {
                tally.lock_contended();
                tracing::debug!(
                    target: "cachify::pool",
                    pool = "full",
                    key,
                    max_size,
                    ?wait,
                    "cachify: pool full; giving up"
                );
                return Err(Error::PoolFull { key });
            }
            Err(error) => {
                tally.error();
                if let Some(suppressed) = self.health.lock_log.admit() {
                    tracing::warn!(key, %error, suppressed, "cachify: could not take a pool slot; refusing to run without it");
                }
                return Err(error);
            }
        }
        tally.lock_acquired();
        tracing::debug!(
            target: "cachify::pool",
            pool = "acquired",
            key,
            max_size,
            ?lease,
            "cachify: pool slot acquired"
        );
        let renew = {
            let (store, key) = (Arc::clone(&self.store), key.clone());
            move |token: &str| store.renew_slot(&key, token, lease)
        };
        let give_back: GiveBack = {
            let (store, key) = (Arc::clone(&self.store), key.clone());
            Arc::new(move |token: &str| store.release_slot(&key, token, &line))
        };
        Ok(PoolSlot {
            holding: Holding::start(Held::PoolSlot, key, token, lease, renew, give_back),
        })
    }

    /// How many slots of the pool `key` are held now.
    pub(crate) async fn size<M: Mode>(&self, key: &str) -> Result<usize, Error> {
        M::io(self.store.pool_size(key)).await
    }

    /// Starts building a pool named `name` on these pools.
    pub(crate) fn builder(&self, name: String, max_size: usize) -> PoolBuilder<'_> {
        PoolBuilder::new(Target::Client(self), name, max_size)
    }
}

/// Whose pools a builder uses.
#[derive(Debug)]
enum Target<'a> {
    Client(&'a Pools),
    /// Looked up when used, so a builder made before `cachify::init`
    /// still uses the client given to it.
    Global(fn() -> &'static Pools),
}

/// Configures one pool before taking a slot or counting; from
/// [`crate::pool()`] or [`crate::Cachify::pool`].
#[must_use = "a slot is only taken by `acquire()` or `acquire_blocking()`"]
#[derive(Debug)]
pub struct PoolBuilder<'a> {
    target: Target<'a>,
    name: String,
    max_size: usize,
    ttl: Option<Duration>,
    wait: Duration,
}

impl PoolBuilder<'static> {
    /// A pool on the global client, resolved when it is used.
    pub(crate) fn on_global(name: String, max_size: usize, pools: fn() -> &'static Pools) -> Self {
        Self::new(Target::Global(pools), name, max_size)
    }
}

impl<'a> PoolBuilder<'a> {
    fn new(target: Target<'a>, name: String, max_size: usize) -> Self {
        Self {
            target,
            name,
            max_size,
            ttl: None,
            wait: Duration::ZERO,
        }
    }

    fn pools(&self) -> &'a Pools {
        match self.target {
            Target::Client(pools) => pools,
            Target::Global(global) => global(),
        }
    }

    /// A slot's lease: how long it outlives a holder that crashed. While
    /// the holder is alive a watchdog renews it every `ttl / 3`. Defaults
    /// to the client's `lock_ttl`; below one millisecond rounds up to 1 ms.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let slot = cachify::pool("exports", 3)
    ///     .ttl(Duration::from_secs(60))
    ///     .acquire_blocking()?;
    /// slot.release_blocking()?;
    /// # Ok::<(), cachify::Error>(())
    /// ```
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// How long to wait for a free slot before giving up with
    /// [`Error::PoolFull`]. Defaults to zero: a full pool is refused at once.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let held = cachify::pool("single", 1).acquire_blocking()?;
    /// // The one slot is held above: this waits 50 ms, then gives up.
    /// let second = cachify::pool("single", 1)
    ///     .wait(Duration::from_millis(50))
    ///     .acquire_blocking();
    /// assert!(matches!(second, Err(cachify::Error::PoolFull { .. })));
    /// held.release_blocking()?;
    /// # Ok::<(), cachify::Error>(())
    /// ```
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    async fn acquire_in<M: Mode>(self) -> Result<PoolSlot, Error> {
        let pools = self.pools();
        let key = pools.keys.pool(&self.name);
        let tally = pools.health.tally(CallKind::Pool, POOL_API_TEMPLATE, None);
        pools
            .acquire::<M>(key, self.max_size, self.ttl, self.wait, &tally)
            .await
    }

    /// Takes a slot, waiting up to `wait` while the pool is full. A
    /// `max_size` of zero is `Err(Error::Config)`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cachify::Error> {
    /// let slot = cachify::pool("exports", 3).acquire().await?;
    /// // ... at most three holders run this at once, across every process ...
    /// slot.release().await?;
    /// # Ok(()) }
    /// ```
    pub async fn acquire(self) -> Result<PoolSlot, Error> {
        self.acquire_in::<Async>().await
    }

    /// Blocking twin of [`PoolBuilder::acquire`], for code without a
    /// runtime (it also works inside one, blocking only the calling thread).
    ///
    /// ```
    /// let slot = cachify::pool("exports", 3).acquire_blocking()?;
    /// slot.release_blocking()?;
    /// # Ok::<(), cachify::Error>(())
    /// ```
    pub fn acquire_blocking(self) -> Result<PoolSlot, Error> {
        drive(self.acquire_in::<Blocking>())
    }

    /// How many slots of the pool are held now (slots whose lease ran out
    /// do not count).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cachify::Error> {
    /// let slot = cachify::pool("exports", 3).acquire().await?;
    /// assert_eq!(cachify::pool("exports", 3).size().await?, 1);
    /// slot.release().await?;
    /// assert_eq!(cachify::pool("exports", 3).size().await?, 0);
    /// # Ok(()) }
    /// ```
    pub async fn size(&self) -> Result<usize, Error> {
        let pools = self.pools();
        pools.size::<Async>(&pools.keys.pool(&self.name)).await
    }

    /// Blocking twin of [`PoolBuilder::size`].
    ///
    /// ```
    /// assert_eq!(cachify::pool("exports", 3).size_blocking()?, 0);
    /// # Ok::<(), cachify::Error>(())
    /// ```
    pub fn size_blocking(&self) -> Result<usize, Error> {
        let pools = self.pools();
        drive(pools.size::<Blocking>(&pools.keys.pool(&self.name)))
    }
}

/// A held slot of a pool. Released by [`PoolSlot::release`], or when
/// dropped (including on panic or when the future holding it is cancelled).
#[must_use = "dropping the slot releases it at once"]
pub struct PoolSlot {
    holding: Holding,
}

impl fmt::Debug for PoolSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PoolSlot")
            .field("key", &self.holding.key())
            .field("lost", &self.is_lost())
            .finish_non_exhaustive()
    }
}

impl PoolSlot {
    /// The full backend key of the pool.
    ///
    /// ```
    /// let slot = cachify::pool("exports", 3).acquire_blocking()?;
    /// assert_eq!(slot.key(), "cachify:pool:exports");
    /// # Ok::<(), cachify::Error>(())
    /// ```
    pub fn key(&self) -> &str {
        self.holding.key()
    }

    /// Whether the watchdog found the slot taken away (its lease ran out,
    /// for example while renewals failed, or the pool was deleted).
    ///
    /// ```
    /// let slot = cachify::pool("exports", 3).acquire_blocking()?;
    /// assert!(!slot.is_lost());
    /// # Ok::<(), cachify::Error>(())
    /// ```
    pub fn is_lost(&self) -> bool {
        self.holding.lost().is_marked()
    }

    /// Resolves when the slot is found lost (see [`PoolSlot::is_lost`]).
    /// Race it against the work to stop early:
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cachify::Error> {
    /// let slot = cachify::pool("exports", 3).acquire().await?;
    /// tokio::select! {
    ///     _ = slot.lost() => { /* over the cap now: stop */ }
    ///     _ = tokio::time::sleep(std::time::Duration::from_millis(10)) => { /* the work */ }
    /// }
    /// slot.release().await?;
    /// # Ok(()) }
    /// ```
    pub async fn lost(&self) {
        self.holding.lost().marked().await;
    }

    /// Frees the slot. `Err(Error::NotOwner)` means it was no longer ours:
    /// its lease ran out (and someone else may have its place).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cachify::Error> {
    /// let slot = cachify::pool("single", 1).acquire().await?;
    /// slot.release().await?;
    /// assert!(cachify::pool("single", 1).acquire().await.is_ok()); // free again
    /// # Ok(()) }
    /// ```
    pub async fn release(self) -> Result<(), Error> {
        self.release_in::<Async>().await
    }

    /// Blocking twin of [`PoolSlot::release`].
    ///
    /// ```
    /// let slot = cachify::pool("exports", 3).acquire_blocking()?;
    /// slot.release_blocking()?;
    /// # Ok::<(), cachify::Error>(())
    /// ```
    pub fn release_blocking(self) -> Result<(), Error> {
        drive(self.release_in::<Blocking>())
    }

    async fn release_in<M: Mode>(self) -> Result<(), Error> {
        self.holding.release::<M>().await
    }

    /// Release at the end of a `#[pooled]` function: the function already
    /// ran, so a failure is only worth a warning.
    pub(crate) async fn release_after_run<M: Mode>(self) {
        self.holding.release_after_run::<M>().await;
    }
}
