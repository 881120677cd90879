//! Owned distributed locks: `SET key token NX PX`, owner-only release and
//! renewal, and a watchdog that renews the lease while the holder runs.
//!
//! Locks fail closed: a backend error is `Err(Error::Backend)`, never a run
//! without the lock.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::backend::{Backend, clamp_ttl};
use crate::health::Counters;
use crate::key::{self, KeyKind};
use crate::{Cachify, Error, io};

/// First pause between two attempts while waiting for a held lock; it
/// doubles up to [`MAX_RETRY_PAUSE`].
const FIRST_RETRY_PAUSE: Duration = Duration::from_millis(5);
const MAX_RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Shortest gap between two renewals, whatever the lease.
const MIN_RENEW_PERIOD: Duration = Duration::from_millis(1);

/// Starts building a lock on the global client (see [`crate::global`]).
///
/// `name` is used as written: `cachify::lock("report-7")` and
/// `#[lock("report-{id}")]` called with `id = 7` share one lock.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), cachify::Error> {
/// use std::time::Duration;
///
/// let guard = cachify::lock("nightly-import")
///     .ttl(Duration::from_secs(30))
///     .wait(Duration::from_secs(5))
///     .acquire()
///     .await?;
/// // ... only one holder at a time runs this, across every process ...
/// guard.release().await?;
/// # Ok(()) }
/// ```
pub fn lock(name: impl Into<String>) -> LockBuilder<'static> {
    LockBuilder {
        client: None,
        name: name.into(),
        ttl: None,
        wait: Duration::ZERO,
    }
}

/// Configures one lock before acquiring it; from [`lock()`] or [`Cachify::lock`].
#[must_use = "a lock is only taken by `acquire()` or `acquire_blocking()`"]
#[derive(Debug)]
pub struct LockBuilder<'a> {
    client: Option<&'a Cachify>,
    name: String,
    ttl: Option<Duration>,
    wait: Duration,
}

impl<'a> LockBuilder<'a> {
    pub(crate) fn on(client: &'a Cachify, name: String) -> Self {
        Self {
            client: Some(client),
            name,
            ttl: None,
            wait: Duration::ZERO,
        }
    }

    /// The lease: how long the lock outlives a holder that crashed. While
    /// the holder is alive a watchdog renews it every `ttl / 3`. Defaults to
    /// the client's `lock_ttl`; below one millisecond rounds up to 1 ms.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// How long to wait for a held lock before giving up with
    /// [`Error::Locked`]. Defaults to zero: a held lock is refused at once.
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    fn parts(self) -> (Cachify, String, Option<Duration>, Duration) {
        let client = self.client.unwrap_or_else(|| crate::global()).clone();
        let key = key::plain(client.prefix(), KeyKind::Lock, &self.name);
        (client, key, self.ttl, self.wait)
    }

    /// Takes the lock, waiting up to `wait` if it is held.
    pub async fn acquire(self) -> Result<LockGuard, Error> {
        let (client, key, ttl, wait) = self.parts();
        acquire_owned(client, key, ttl, wait).await
    }

    /// Blocking twin of [`LockBuilder::acquire`], for code without a runtime
    /// (it also works inside one, blocking only the calling thread).
    pub fn acquire_blocking(self) -> Result<LockGuard, Error> {
        let (client, key, ttl, wait) = self.parts();
        io::block_on(acquire_owned(client, key, ttl, wait))
    }
}

/// A held lock. Released by [`LockGuard::release`], or when dropped
/// (including on panic or when the future holding it is cancelled).
#[must_use = "dropping the guard releases the lock at once"]
pub struct LockGuard {
    backend: Backend,
    key: String,
    /// Empty once released: `Drop` then has nothing left to do.
    token: String,
    lease: Duration,
    fencing_token: u64,
    lost: Arc<Lost>,
    watchdog: Option<AbortHandle>,
}

/// Set by the watchdog when it finds the lock is no longer ours.
#[derive(Default)]
struct Lost {
    flag: AtomicBool,
    notify: Notify,
}

impl Lost {
    fn mark(&self) {
        self.flag.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }
}

impl fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LockGuard")
            .field("key", &self.key)
            .field("fencing_token", &self.fencing_token)
            .finish_non_exhaustive()
    }
}

impl LockGuard {
    /// The full backend key of this lock.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// A number that strictly increases with every grant of this lock name
    /// (across processes, for as long as the backend keeps its data).
    ///
    /// A lease can run out while its holder is paused (a GC pause, a stalled
    /// VM), and another holder may then take the lock: mutual exclusion by
    /// lease alone is for efficiency, not correctness. Pass this token with
    /// every write to the resource the lock protects, and have that store
    /// reject a token lower than the highest it has seen: then a stale
    /// holder's late writes are refused.
    pub fn fencing_token(&self) -> u64 {
        self.fencing_token
    }

    /// Whether the watchdog found the lock taken away (its key deleted or
    /// overwritten, or its lease expired while renewals failed).
    pub fn is_lost(&self) -> bool {
        self.lost.flag.load(Ordering::Acquire)
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
        loop {
            let notified = self.lost.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_lost() {
                return;
            }
            notified.await;
        }
    }

    /// Releases the lock. `Err(Error::NotOwner)` means it was no longer
    /// ours: the lease ran out or someone deleted or took the key.
    pub async fn release(mut self) -> Result<(), Error> {
        self.stop_watchdog();
        let released = unlock(&self.backend, &self.key, &self.token, self.lease).await;
        // Cleared only now: if this future is dropped during the await,
        // `Drop` still sees the token and releases in the background.
        self.token.clear();
        released
    }

    /// Blocking twin of [`LockGuard::release`].
    pub fn release_blocking(mut self) -> Result<(), Error> {
        self.stop_watchdog();
        let (backend, key, lease) = (self.backend.clone(), self.key.clone(), self.lease);
        let token = std::mem::take(&mut self.token);
        io::block_on(async move { unlock(&backend, &key, &token, lease).await })
    }

    /// Release at the end of a `#[once]`/`#[lock]` function: the function
    /// already ran, so a failure is only worth a warning.
    pub(crate) async fn release_after_run(self) {
        let key = self.key.clone();
        if let Err(error) = self.release().await {
            tracing::warn!(key, %error, "cachify: releasing a lock after its function ran failed");
        }
    }

    pub(crate) fn release_after_run_blocking(self) {
        let key = self.key.clone();
        if let Err(error) = self.release_blocking() {
            tracing::warn!(key, %error, "cachify: releasing a lock after its function ran failed");
        }
    }

    fn stop_watchdog(&mut self) {
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.abort();
        }
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.stop_watchdog();
        if self.token.is_empty() {
            return;
        }
        let token = std::mem::take(&mut self.token);
        match &self.backend {
            // In-process: release at once, so the next caller finds it free.
            Backend::Memory(memory) => {
                memory.unlock(&self.key, &token);
            }
            // Drop cannot await: release in the background, retrying while
            // Redis is unreachable. Owner-only release makes a late one harmless.
            Backend::Redis(_) => {
                io::spawn(abandon(
                    self.backend.clone(),
                    self.key.clone(),
                    token,
                    self.lease,
                ));
            }
        }
    }
}

/// Owner-only release; on a backend error, keeps trying in the background
/// so the lock does not linger for its whole lease.
async fn unlock(backend: &Backend, key: &str, token: &str, lease: Duration) -> Result<(), Error> {
    match backend.unlock(key, token).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(Error::NotOwner),
        Err(error) => {
            io::spawn(abandon(
                backend.clone(),
                key.to_owned(),
                token.to_owned(),
                lease,
            ));
            Err(error)
        }
    }
}

/// While armed, dropping it (the acquiring future was cancelled mid-call,
/// or the call failed) takes back whatever the attempt may have taken:
/// its `SET NX` can still land on Redis after we stopped waiting.
struct Attempt<'a> {
    backend: &'a Backend,
    key: &'a str,
    token: &'a str,
    lease: Duration,
    armed: bool,
}

impl Attempt<'_> {
    fn settle(mut self) {
        self.armed = false;
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if self.armed {
            let (backend, key, token) = (
                self.backend.clone(),
                self.key.to_owned(),
                self.token.to_owned(),
            );
            io::spawn(abandon(backend, key, token, self.lease));
        }
    }
}

/// A random 128-bit token, as 32 hex digits.
fn new_token() -> Result<String, Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|error| Error::Config(format!("no randomness for a lock token: {error}")))?;
    Ok(format!("{:032x}", u128::from_be_bytes(bytes)))
}

pub(crate) async fn acquire(
    client: &Cachify,
    key: String,
    ttl: Option<Duration>,
    wait: Duration,
) -> Result<LockGuard, Error> {
    acquire_owned(client.clone(), key, ttl, wait).await
}

pub(crate) fn acquire_blocking(
    client: &Cachify,
    key: String,
    ttl: Option<Duration>,
    wait: Duration,
) -> Result<LockGuard, Error> {
    io::block_on(acquire_owned(client.clone(), key, ttl, wait))
}

async fn acquire_owned(
    client: Cachify,
    key: String,
    ttl: Option<Duration>,
    wait: Duration,
) -> Result<LockGuard, Error> {
    let lease = clamp_ttl(ttl.unwrap_or(client.lock_ttl()));
    let token = new_token()?;
    let backend = client.backend().clone();
    let fence_key = key::derived(client.prefix(), &key, "fence:");
    let counters = &client.health().counters;
    // A wait too long to represent is a wait without end.
    let deadline = Instant::now().checked_add(wait);
    let mut pause = FIRST_RETRY_PAUSE;
    let fencing_token = loop {
        let attempt = Attempt {
            backend: &backend,
            key: &key,
            token: &token,
            lease,
            armed: true,
        };
        match backend.try_lock(&key, &fence_key, &token, lease).await {
            Ok(Some(fencing_token)) => {
                attempt.settle();
                break fencing_token;
            }
            Ok(None) => attempt.settle(),
            Err(error) => {
                Counters::add(&counters.errors);
                if let Some(suppressed) = client.health().lock_log.admit() {
                    tracing::warn!(key, %error, suppressed, "cachify: could not take a lock; refusing to run without it");
                }
                // Dropping the armed attempt takes back what the SET may yet take.
                drop(attempt);
                return Err(error);
            }
        }
        let now = Instant::now();
        let pause_now = match deadline {
            Some(deadline) if now >= deadline => {
                Counters::add(&counters.lock_contention);
                return Err(Error::Locked { key });
            }
            Some(deadline) => pause.min(deadline - now),
            None => pause,
        };
        tokio::time::sleep(pause_now).await;
        pause = (pause * 2).min(MAX_RETRY_PAUSE);
    };
    Counters::add(&counters.locks_acquired);
    let lost = Arc::new(Lost::default());
    let watchdog = io::spawn(renew(
        backend.clone(),
        key.clone(),
        token.clone(),
        lease,
        Arc::clone(&lost),
    ))
    .abort_handle();
    Ok(LockGuard {
        backend,
        key,
        token,
        lease,
        fencing_token,
        lost,
        watchdog: Some(watchdog),
    })
}

/// After a failed attempt, deletes the lock if that attempt's token holds
/// it, retrying until the backend answers or the lease would have ended
/// anyway. Owner-only, so it never touches anyone else's lock.
async fn abandon(backend: Backend, key: String, token: String, lease: Duration) {
    let give_up = Instant::now().checked_add(lease);
    let mut pause = FIRST_RETRY_PAUSE;
    loop {
        match backend.unlock(&key, &token).await {
            Ok(true) => {
                tracing::info!(
                    key,
                    "cachify: removed a lock taken by an attempt that had timed out"
                );
                return;
            }
            Ok(false) => return,
            Err(_) if give_up.is_some_and(|give_up| Instant::now() >= give_up) => return,
            Err(_) => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_RETRY_PAUSE * 10);
            }
        }
    }
}

/// Renews the lease every third of it until aborted or the lock is lost.
async fn renew(backend: Backend, key: String, token: String, lease: Duration, lost: Arc<Lost>) {
    let period = (lease / 3).max(MIN_RENEW_PERIOD);
    let mut ticks = tokio::time::interval_at(Instant::now() + period, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut renewed = Instant::now();
    loop {
        ticks.tick().await;
        match backend.extend(&key, &token, lease).await {
            Ok(true) => renewed = Instant::now(),
            Ok(false) => {
                tracing::warn!(
                    key,
                    "cachify: lock lost while its holder was still running (lease expired or key taken)"
                );
                lost.mark();
                return;
            }
            Err(error) if renewed.elapsed() >= lease => {
                tracing::warn!(key, %error, "cachify: lock lost: its lease ran out while renewals failed");
                lost.mark();
                return;
            }
            Err(error) => {
                tracing::warn!(key, %error, "cachify: could not renew a lock lease; will retry");
            }
        }
    }
}
