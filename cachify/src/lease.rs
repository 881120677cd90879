//! What a lock and a pool slot share: a lease held under a random token,
//! renewed by a watchdog while its holder runs, found lost when renewal
//! fails, and given back by its owner alone, retrying while the store is
//! unreachable.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use crate::error::Error;
use crate::io;
use crate::mode::Mode;
use crate::store::StoreFuture;

/// Shortest gap between two renewals, whatever the lease.
const MIN_RENEW_PERIOD: Duration = Duration::from_millis(1);
/// First and longest pause between two tries to give a lease back.
const FIRST_RETRY_PAUSE: Duration = Duration::from_millis(5);
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(1);

/// What is held, for the log lines and DEBUG events about it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Held {
    Lock,
    PoolSlot,
}

impl Held {
    fn noun(self) -> &'static str {
        match self {
            Held::Lock => "lock",
            Held::PoolSlot => "pool slot",
        }
    }

    /// The DEBUG event of a lease found taken away, next to the WARN line.
    pub(crate) fn lost_event(self, key: &str) {
        match self {
            Held::Lock => {
                tracing::debug!(target: "cachify::lock", lock = "lost", key, "cachify: lock lost");
            }
            Held::PoolSlot => {
                tracing::debug!(target: "cachify::pool", pool = "lost", key, "cachify: pool slot lost");
            }
        }
    }

    /// The DEBUG event of a release by the holder (explicit, at the end of
    /// its function, or on drop).
    pub(crate) fn released_event(self, key: &str) {
        match self {
            Held::Lock => tracing::debug!(
                target: "cachify::lock",
                lock = "released",
                key,
                "cachify: lock released"
            ),
            Held::PoolSlot => tracing::debug!(
                target: "cachify::pool",
                pool = "released",
                key,
                "cachify: pool slot released"
            ),
        }
    }
}

/// Set by the watchdog when it finds the lease is no longer ours.
#[derive(Default)]
pub(crate) struct Lost {
    flag: AtomicBool,
    notify: Notify,
}

impl Lost {
    pub(crate) fn mark(&self) {
        self.flag.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    pub(crate) fn is_marked(&self) -> bool {
        self.flag.load(Ordering::Acquire)
    }

    /// Resolves once marked.
    pub(crate) async fn marked(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_marked() {
                return;
            }
            notified.await;
        }
    }
}

/// A random 128-bit token, as 32 hex digits.
pub(crate) fn new_token() -> Result<String, Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)
        .map_err(|error| Error::Config(format!("no randomness for a lock token: {error}")))?;
    Ok(format!("{:032x}", u128::from_be_bytes(bytes)))
}

/// The watchdog: renews the lease every third of it (`renew` answers
/// whether the lease is still ours) until aborted or the lease is lost.
pub(crate) async fn renew_while_held(
    held: Held,
    key: String,
    lease: Duration,
    lost: Arc<Lost>,
    renew: impl Fn() -> StoreFuture<bool>,
) {
    let noun = held.noun();
    let period = (lease / 3).max(MIN_RENEW_PERIOD);
    let mut ticks = tokio::time::interval_at(Instant::now() + period, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut renewed = Instant::now();
    loop {
        ticks.tick().await;
        match renew().await {
            Ok(true) => renewed = Instant::now(),
            Ok(false) => {
                tracing::warn!(
                    key,
                    "cachify: {noun} lost while its holder was still running (lease expired or taken)"
                );
                held.lost_event(&key);
                lost.mark();
                return;
            }
            Err(error) if renewed.elapsed() >= lease => {
                tracing::warn!(key, %error, "cachify: {noun} lost: its lease ran out while renewals failed");
                held.lost_event(&key);
                lost.mark();
                return;
            }
            Err(error) => {
                tracing::warn!(key, %error, "cachify: could not renew a {noun}'s lease; will retry");
            }
        }
    }
}

/// Gives back what `token` may hold (`release` answers whether it held
/// anything), retrying until the store answers or the lease would have
/// ended anyway. Owner-only, so it never touches anyone else's lease.
pub(crate) async fn abandon(
    held: Held,
    key: String,
    lease: Duration,
    release: impl Fn() -> StoreFuture<bool>,
) {
    let give_up = Instant::now().checked_add(lease);
    let mut pause = FIRST_RETRY_PAUSE;
    loop {
        match release().await {
            Ok(true) => {
                tracing::info!(
                    key,
                    "cachify: gave back a {} its holder could not release at once",
                    held.noun()
                );
                return;
            }
            Ok(false) => return,
            Err(_) if give_up.is_some_and(|give_up| Instant::now() >= give_up) => return,
            Err(_) => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_RETRY_PAUSE);
            }
        }
    }
}

/// One attempt to take a lease. While armed, dropping it (the acquiring
/// future was cancelled mid-call, or the call failed) gives back in the
/// background whatever the attempt may still take: its script can land on
/// Redis after the caller stopped waiting. `give_back` makes the owned
/// give-back, only then.
pub(crate) struct Attempt<'a, F, R>
where
    F: FnOnce() -> R,
    R: Fn() -> StoreFuture<bool> + Send + 'static,
{
    held: Held,
    key: &'a str,
    lease: Duration,
    give_back: Option<F>,
}

impl<'a, F, R> Attempt<'a, F, R>
where
    F: FnOnce() -> R,
    R: Fn() -> StoreFuture<bool> + Send + 'static,
{
    /// An armed attempt at `key`'s lease of `lease`.
    pub(crate) fn new(held: Held, key: &'a str, lease: Duration, give_back: F) -> Self {
        Self {
            held,
            key,
            lease,
            give_back: Some(give_back),
        }
    }

    /// The store answered: nothing is left to give back here.
    pub(crate) fn settle(mut self) {
        self.give_back = None;
    }
}

impl<F, R> Drop for Attempt<'_, F, R>
where
    F: FnOnce() -> R,
    R: Fn() -> StoreFuture<bool> + Send + 'static,
{
    fn drop(&mut self) {
        if let Some(give_back) = self.give_back.take() {
            let release = give_back();
            io::spawn(abandon(self.held, self.key.to_owned(), self.lease, release));
        }
    }
}

/// The store's owner-only give-back of a lease, for one token.
pub(crate) type GiveBack = Arc<dyn Fn(&str) -> StoreFuture<bool> + Send + Sync>;

/// A lease held now: what a lock guard and a pool slot keep, and how both
/// give it back (explicitly, or on drop, a panic and cancellation included).
pub(crate) struct Holding {
    held: Held,
    key: String,
    /// Empty once given back: `Drop` then has nothing left to do.
    token: String,
    lease: Duration,
    lost: Arc<Lost>,
    watchdog: Option<AbortHandle>,
    give_back: GiveBack,
}

impl Holding {
    /// Holds the lease `token` was just granted, and starts its watchdog
    /// (`renew` answers whether `token` still holds it).
    pub(crate) fn start(
        held: Held,
        key: String,
        token: String,
        lease: Duration,
        renew: impl Fn(&str) -> StoreFuture<bool> + Send + Sync + 'static,
        give_back: GiveBack,
    ) -> Self {
        let lost = Arc::new(Lost::default());
        let watchdog = {
            let token = token.clone();
            io::spawn(renew_while_held(
                held,
                key.clone(),
                lease,
                Arc::clone(&lost),
                move || renew(&token),
            ))
            .abort_handle()
        };
        Self {
            held,
            key,
            token,
            lease,
            lost,
            watchdog: Some(watchdog),
            give_back,
        }
    }

    /// The full backend key.
    pub(crate) fn key(&self) -> &str {
        &self.key
    }

    /// The token this lease was granted to (empty once given back).
    pub(crate) fn token(&self) -> &str {
        &self.token
    }

    /// Marked when the watchdog (or a give-back) finds the lease gone.
    pub(crate) fn lost(&self) -> &Lost {
        &self.lost
    }

    /// Gives the lease back. `Err(Error::NotOwner)`: it was no longer ours
    /// (reported lost, once); on a store error it is given back in the
    /// background, so it does not linger for its whole lease.
    pub(crate) async fn release<M: Mode>(mut self) -> Result<(), Error> {
        self.stop_watchdog();
        let released = match M::io((self.give_back)(&self.token)).await {
            Ok(true) => {
                self.held.released_event(&self.key);
                Ok(())
            }
            Ok(false) => {
                if !self.lost.is_marked() {
                    self.held.lost_event(&self.key);
                    self.lost.mark();
                }
                Err(Error::NotOwner)
            }
            Err(error) => {
                let (give_back, token) = (Arc::clone(&self.give_back), self.token.clone());
                io::spawn(abandon(
                    self.held,
                    self.key.clone(),
                    self.lease,
                    move || give_back(&token),
                ));
                Err(error)
            }
        };
        // Cleared only now: if this future is dropped during the await,
        // `Drop` still sees the token and gives the lease back.
        self.token.clear();
        released
    }

    /// The give-back at the end of a `#[once]`, `#[lock]` or `#[pooled]`
    /// function or a fill: the function already ran, so a failure is only
    /// worth a warning.
    pub(crate) async fn release_after_run<M: Mode>(self) {
        let (key, noun) = (self.key.clone(), self.held.noun());
        if let Err(error) = self.release::<M>().await {
            tracing::warn!(key, %error, "cachify: giving back a {noun} after its function ran failed");
        }
    }

    fn stop_watchdog(&mut self) {
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.abort();
        }
    }
}

impl Drop for Holding {
    fn drop(&mut self) {
        self.stop_watchdog();
        if self.token.is_empty() {
            return;
        }
        let token = std::mem::take(&mut self.token);
        self.held.released_event(&self.key);
        // An in-process store has given it back already. Otherwise Drop
        // cannot await: give back in the background, retrying while the
        // store is unreachable. Owner-only, so a late one is harmless.
        if let StoreFuture::Io(release) = (self.give_back)(&token) {
            let (held, key, lease, give_back) = (
                self.held,
                self.key.clone(),
                self.lease,
                Arc::clone(&self.give_back),
            );
            io::spawn(async move {
                if release.await.is_err() {
                    abandon(held, key, lease, move || give_back(&token)).await;
                }
            });
        }
    }
}
