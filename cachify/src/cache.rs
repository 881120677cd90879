//! The `#[cached]` path: read, single flight on a miss, run, store.
//!
//! It fails open: a backend error or timeout is logged and the function
//! runs as if there were no cache. A stored value that no longer decodes
//! (its type changed after a deploy) is a miss and gets overwritten.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use tokio::time::Instant;

use crate::flight::{Outcome, Role};
use crate::health::Counters;
use crate::key;
use crate::lock::{self, LockGuard};
use crate::{Cachify, Error};

/// What a cached value must be: stored in Redis as bytes, kept in memory as
/// it is, and handed to concurrent callers as clones.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be cached: cached values must be `Serialize + DeserializeOwned + Clone + Send + Sync + 'static`",
    note = "derive `serde::Serialize`, `serde::Deserialize` and `Clone` for `{Self}`"
)]
pub trait CacheValue: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {}

impl<T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static> CacheValue for T {}

/// Which part of a function's output is cached. Chosen by the macro from the
/// return type.
pub trait Policy<R> {
    /// The part that is stored.
    type Stored: CacheValue;
    /// The part to store, or `None` when this output must not be cached.
    fn stored(output: &R) -> Option<&Self::Stored>;
    /// Rebuilds an output from a stored value.
    fn restore(stored: Self::Stored) -> R;
}

/// For `Result`: caches `Ok` values only, so errors are retried.
pub struct OkOnly;

impl<T: CacheValue, E> Policy<Result<T, E>> for OkOnly {
    type Stored = T;

    #[inline]
    fn stored(output: &Result<T, E>) -> Option<&T> {
        output.as_ref().ok()
    }

    #[inline]
    fn restore(stored: T) -> Result<T, E> {
        Ok(stored)
    }
}

/// For everything else, `Option` included (`None` is cached too).
pub struct Whole;

impl<T: CacheValue> Policy<T> for Whole {
    type Stored = T;

    #[inline]
    fn stored(output: &T) -> Option<&T> {
        Some(output)
    }

    #[inline]
    fn restore(stored: T) -> T {
        stored
    }
}

/// Reads the cache: `Some` on a hit. Skips the backend while the breaker
/// is open; counts hits, misses and failures.
async fn read<P: Policy<R>, R>(client: &Cachify, key: &str) -> Option<R> {
    if !client.health().breaker.allows() {
        Counters::add(&client.health().counters.bypassed);
        return None;
    }
    let lookup = client.backend().get(key).await;
    client.observe("read", key, &lookup);
    hit::<P, R>(client, key, lookup)
}

fn read_blocking<P: Policy<R>, R>(client: &Cachify, key: &str) -> Option<R> {
    if !client.health().breaker.allows() {
        Counters::add(&client.health().counters.bypassed);
        return None;
    }
    let lookup = client.backend().get_blocking(key);
    client.observe("read", key, &lookup);
    hit::<P, R>(client, key, lookup)
}

fn hit<P: Policy<R>, R>(
    client: &Cachify,
    key: &str,
    lookup: Result<Option<P::Stored>, Error>,
) -> Option<R> {
    let counters = &client.health().counters;
    match lookup {
        Ok(Some(stored)) => {
            Counters::add(&counters.hits);
            return Some(P::restore(stored));
        }
        Ok(None) => {}
        Err(Error::Codec(error)) => {
            tracing::debug!(key, %error, "cachify: cached value no longer decodes; treating it as a miss");
        }
        // Already counted and logged by `observe`.
        Err(_) => {}
    }
    Counters::add(&counters.misses);
    None
}

/// Stores a value unless the breaker is open; never fails the caller.
async fn write<T: CacheValue>(client: &Cachify, key: &str, value: &T, ttl: Option<Duration>) {
    if !client.health().breaker.allows() {
        return;
    }
    let written = client.backend().set(key, value, ttl).await;
    record_write(client, key, written);
}

fn write_blocking<T: CacheValue>(client: &Cachify, key: &str, value: &T, ttl: Option<Duration>) {
    if !client.health().breaker.allows() {
        return;
    }
    let written = client.backend().set_blocking(key, value, ttl);
    record_write(client, key, written);
}

fn record_write(client: &Cachify, key: &str, written: Result<bool, Error>) {
    client.observe("write", key, &written);
    if let Ok(false) = written {
        Counters::add(&client.health().counters.oversized);
    }
}

/// What a follower does with its leader's outcome.
enum Next<R> {
    /// Return the leader's value.
    Return(R),
    /// Run the function without a flight.
    Run,
    /// Check the cache and join again (the leader vanished).
    Rejoin,
}

fn follow<P: Policy<R>, R>(outcome: Outcome) -> Next<R> {
    match outcome {
        // Another function with the same key may have stored another type.
        Outcome::Value(value) => match value.downcast_ref::<P::Stored>() {
            Some(stored) => Next::Return(P::restore(stored.clone())),
            None => Next::Run,
        },
        Outcome::Failed => Next::Run,
        Outcome::Abandoned => Next::Rejoin,
    }
}

/// Decides whether to store `output`; returns the value to store and to share.
fn to_store<'a, P: Policy<R>, R, U: Fn(&P::Stored) -> bool>(
    output: &'a R,
    unless: &U,
) -> (Option<&'a P::Stored>, Outcome) {
    match P::stored(output) {
        Some(stored) => {
            let share = Outcome::Value(Arc::new(stored.clone()));
            (if unless(stored) { None } else { Some(stored) }, share)
        }
        None => (None, Outcome::Failed),
    }
}

/// How a `#[cached]` call runs, from the attribute.
#[derive(Clone, Copy, Debug)]
pub struct CacheCall {
    /// Time to live; `None`: the client's default.
    pub ttl: Option<Duration>,
    /// `lock = true`: concurrent misses across processes run the function once.
    pub fill_lock: bool,
}

/// Pause between two looks at the cache while another process fills it.
const FILL_POLL: Duration = Duration::from_millis(20);

/// How long a caller still waits for another process's fill: `fill_wait`
/// for each holder of the fill lock. A holder that dies is replaced after
/// its lease, and the new one gets the full `fill_wait` again, so a slow
/// recomputation after a crash is still waited for.
struct Patience {
    wait: Duration,
    deadline: Instant,
    holder: Option<String>,
}

impl Patience {
    fn new(wait: Duration) -> Self {
        Self {
            wait,
            deadline: Instant::now() + wait,
            holder: None,
        }
    }

    /// Whether to keep waiting, given who holds the fill lock now (an error
    /// reading it counts as no change).
    fn still_waiting(&mut self, holder: Result<Option<String>, Error>) -> bool {
        if let Ok(Some(holder)) = holder
            && self.holder.as_ref() != Some(&holder)
        {
            self.holder = Some(holder);
            self.deadline = Instant::now() + self.wait;
        }
        Instant::now() < self.deadline
    }
}

/// Where a local leader stands after coordinating with other processes.
enum Fill<R> {
    /// Another process filled the cache meanwhile.
    Filled(R),
    /// Run the function (holding the fill lock if one was taken).
    Run(Option<Box<LockGuard>>),
}

/// With `lock = true`: takes the fill lock, or waits (up to the client's
/// `fill_wait`) for whoever holds it to store the value. A live filler's
/// lease is renewed, so waiters keep waiting while it computes; a crashed
/// filler's lease runs out after `lock_ttl` and the next waiter to try takes
/// over. Fails open: a backend error means running the function.
async fn fill<P: Policy<R>, R>(client: &Cachify, key: &str) -> Fill<R> {
    let fill_key = key::derived(client.prefix(), key, "fill:");
    let mut patience = Patience::new(client.fill_wait());
    loop {
        match lock::acquire(client, fill_key.clone(), None, Duration::ZERO).await {
            Ok(guard) => {
                // The previous holder may have stored it just before releasing.
                return match read::<P, R>(client, key).await {
                    Some(output) => Fill::Filled(output),
                    None => Fill::Run(Some(Box::new(guard))),
                };
            }
            Err(Error::Locked { .. }) => {
                let holder = client.backend().lock_holder(&fill_key).await;
                if !patience.still_waiting(holder) {
                    return Fill::Run(None);
                }
                tokio::time::sleep(FILL_POLL).await;
                if let Some(output) = read::<P, R>(client, key).await {
                    return Fill::Filled(output);
                }
            }
            Err(_) => return Fill::Run(None),
        }
    }
}

fn fill_blocking<P: Policy<R>, R>(client: &Cachify, key: &str) -> Fill<R> {
    let fill_key = key::derived(client.prefix(), key, "fill:");
    let mut patience = Patience::new(client.fill_wait());
    loop {
        match lock::acquire_blocking(client, fill_key.clone(), None, Duration::ZERO) {
            Ok(guard) => {
                return match read_blocking::<P, R>(client, key) {
                    Some(output) => Fill::Filled(output),
                    None => Fill::Run(Some(Box::new(guard))),
                };
            }
            Err(Error::Locked { .. }) => {
                let holder = client.backend().lock_holder_blocking(&fill_key);
                if !patience.still_waiting(holder) {
                    return Fill::Run(None);
                }
                std::thread::sleep(FILL_POLL);
                if let Some(output) = read_blocking::<P, R>(client, key) {
                    return Fill::Filled(output);
                }
            }
            Err(_) => return Fill::Run(None),
        }
    }
}

pub(crate) async fn cached<P, R, F, U>(
    client: &Cachify,
    key: String,
    call: CacheCall,
    body: F,
    unless: U,
) -> R
where
    P: Policy<R>,
    F: Future<Output = R>,
    U: Fn(&P::Stored) -> bool,
{
    let leader = loop {
        if let Some(output) = read::<P, R>(client, &key).await {
            return output;
        }
        match client.flights().join(&key, false) {
            Role::Leader(leader) => break Some(leader),
            Role::Follower(flight) => match follow::<P, R>(flight.wait().await) {
                Next::Return(output) => return output,
                Next::Run => break None,
                Next::Rejoin => {}
            },
        }
    };
    let fill_guard = match (&leader, call.fill_lock) {
        (Some(leader), true) => match fill::<P, R>(client, &key).await {
            Fill::Filled(output) => {
                leader.publish(to_store::<P, R, U>(&output, &unless).1);
                return output;
            }
            Fill::Run(guard) => guard,
        },
        _ => None,
    };
    let output = body.await;
    let (store, share) = to_store::<P, R, U>(&output, &unless);
    if let Some(leader) = &leader {
        leader.publish(share);
    }
    if let Some(value) = store {
        write(client, &key, value, call.ttl.or(client.default_ttl())).await;
    }
    if let Some(guard) = fill_guard {
        guard.release_after_run().await;
    }
    drop(leader);
    output
}

pub(crate) fn cached_blocking<P, R, F, U>(
    client: &Cachify,
    key: String,
    call: CacheCall,
    body: F,
    unless: U,
) -> R
where
    P: Policy<R>,
    F: FnOnce() -> R,
    U: Fn(&P::Stored) -> bool,
{
    let leader = loop {
        if let Some(output) = read_blocking::<P, R>(client, &key) {
            return output;
        }
        match client.flights().join(&key, true) {
            Role::Leader(leader) => break Some(leader),
            Role::Follower(flight) => match follow::<P, R>(flight.wait_blocking()) {
                Next::Return(output) => return output,
                Next::Run => break None,
                Next::Rejoin => {}
            },
        }
    };
    let fill_guard = match (&leader, call.fill_lock) {
        (Some(leader), true) => match fill_blocking::<P, R>(client, &key) {
            Fill::Filled(output) => {
                leader.publish(to_store::<P, R, U>(&output, &unless).1);
                return output;
            }
            Fill::Run(guard) => guard,
        },
        _ => None,
    };
    let output = body();
    let (store, share) = to_store::<P, R, U>(&output, &unless);
    if let Some(leader) = &leader {
        leader.publish(share);
    }
    if let Some(value) = store {
        write_blocking(client, &key, value, call.ttl.or(client.default_ttl()));
    }
    if let Some(guard) = fill_guard {
        guard.release_after_run_blocking();
    }
    drop(leader);
    output
}
