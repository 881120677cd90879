//! What a lock and a pool slot share: a lease held under a random token,
//! renewed by a watchdog while its holder runs, found lost when renewal
//! fails, and given back by its owner alone, retrying while the store is
//! unreachable.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::error::Error;
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
    lost: std::sync::Arc<Lost>,
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
