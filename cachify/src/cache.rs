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

use crate::Cachify;
use crate::Error;
use crate::flight::{Outcome, Role};

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

fn hit<P: Policy<R>, R>(
    client: &Cachify,
    key: &str,
    lookup: Result<Option<P::Stored>, Error>,
) -> Option<R> {
    match lookup {
        Ok(Some(stored)) => Some(P::restore(stored)),
        Ok(None) => None,
        Err(Error::Codec(error)) => {
            tracing::debug!(key, %error, "cachify: cached value no longer decodes; treating it as a miss");
            None
        }
        Err(error) => {
            client.note_backend_failure("read", key, &error);
            None
        }
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

pub(crate) async fn cached<P, R, F, U>(
    client: &Cachify,
    key: String,
    ttl: Option<Duration>,
    body: F,
    unless: U,
) -> R
where
    P: Policy<R>,
    F: Future<Output = R>,
    U: Fn(&P::Stored) -> bool,
{
    let leader = loop {
        if let Some(output) = hit::<P, R>(client, &key, client.backend().get(&key).await) {
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
    let ttl = ttl.or(client.default_ttl());
    let output = body.await;
    let (store, share) = to_store::<P, R, U>(&output, &unless);
    if let Some(leader) = &leader {
        leader.publish(share);
    }
    if let Some(value) = store
        && let Err(error) = client.backend().set(&key, value, ttl).await
    {
        client.note_backend_failure("write", &key, &error);
    }
    drop(leader);
    output
}

pub(crate) fn cached_blocking<P, R, F, U>(
    client: &Cachify,
    key: String,
    ttl: Option<Duration>,
    body: F,
    unless: U,
) -> R
where
    P: Policy<R>,
    F: FnOnce() -> R,
    U: Fn(&P::Stored) -> bool,
{
    let leader = loop {
        if let Some(output) = hit::<P, R>(client, &key, client.backend().get_blocking(&key)) {
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
    let ttl = ttl.or(client.default_ttl());
    let output = body();
    let (store, share) = to_store::<P, R, U>(&output, &unless);
    if let Some(leader) = &leader {
        leader.publish(share);
    }
    if let Some(value) = store
        && let Err(error) = client.backend().set_blocking(&key, value, ttl)
    {
        client.note_backend_failure("write", &key, &error);
    }
    drop(leader);
    output
}
