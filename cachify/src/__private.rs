//! Hidden helpers called by the code that `#[cached]`, `#[once]` and `#[lock]` generate.
//!
//! Nothing here is public API: names and signatures may change in any release.
//! The macros reach these items through the absolute path `::cachify::__private`.
//! Each async helper and its blocking twin call the same core operation,
//! in [`Async`] or [`Blocking`] mode.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use crate::client::Cachify;
use crate::error::Error;
use crate::mode::{Async, Blocking, Mode, drive};

pub use crate::cache::{CacheCall, OkOnly, Policy, Whole};
pub use crate::keyspace::{KeyKind, KeyTemplate, Piece};
pub use crate::locks::LockGuard;
pub use crate::site::{Probe, ScalarKey, Site, TypedKey, TypedProbe, Untyped, UntypedProbe};

/// The client in force: the innermost scope's, else the global client, else
/// the fallback memory client (see [`crate::global()`]).
#[inline]
pub fn global() -> &'static Cachify {
    crate::global::global()
}

/// Renders the full Redis/memory key for one call.
#[inline]
pub fn key(
    client: &Cachify,
    kind: KeyKind,
    template: &KeyTemplate,
    values: &[&dyn Display],
) -> String {
    client.core().keys.render(kind, template, values)
}

/// Integer seconds from an attribute, as a `Duration`.
#[inline]
pub const fn secs(seconds: u64) -> Duration {
    Duration::from_secs(seconds)
}

/// The `unless` predicate used when the attribute has none: store everything.
#[inline]
pub fn store_all<T: ?Sized>(_: &T) -> bool {
    false
}

/// A `#[cached]` call's typed fast path: the output on a hit, with no key
/// rendered (see [`crate::site`]). `None` when the call has no typed key.
#[inline]
pub fn typed_hit<P, R, K>(client: &Cachify, site: &Site, typed: &Option<K>) -> Option<R>
where
    P: Policy<R>,
    P::Stored: crate::value::CacheValue,
    K: TypedKey,
{
    let typed = typed.as_ref()?;
    client
        .core()
        .typed_hit::<K, P::Stored>(site, typed)
        .map(P::restore)
}

/// `#[cached]` on an `async fn`.
pub async fn cached<P, R, F, U, K>(
    client: &Cachify,
    key: String,
    site: &'static Site,
    typed: Option<K>,
    call: CacheCall,
    body: F,
    unless: U,
) -> R
where
    P: Policy<R>,
    F: Future<Output = R>,
    U: Fn(&P::Stored) -> bool,
    K: TypedKey,
{
    let core = client.core();
    match core.cached_now::<P, R, K>(&key, site, typed) {
        Ok(hit) => hit,
        Err(lookup) => {
            core.cached::<Async, P, R, F, U>(&key, lookup, call, body, unless)
                .await
        }
    }
}

/// `#[cached]` on a plain `fn`.
pub fn cached_blocking<P, R, F, U, K>(
    client: &Cachify,
    key: String,
    site: &'static Site,
    typed: Option<K>,
    call: CacheCall,
    body: F,
    unless: U,
) -> R
where
    P: Policy<R>,
    F: FnOnce() -> R,
    U: Fn(&P::Stored) -> bool,
    K: TypedKey,
{
    // An in-process hit returns here, before any future is made.
    let core = client.core();
    match core.cached_now::<P, R, K>(&key, site, typed) {
        Ok(hit) => hit,
        Err(lookup) => {
            let body = async move { body() };
            drive(core.cached::<Blocking, P, R, _, U>(&key, lookup, call, body, unless))
        }
    }
}

async fn acquire_in<M: Mode>(
    client: &Cachify,
    key: String,
    ttl: Option<Duration>,
    wait: Duration,
) -> Result<LockGuard, Error> {
    client.core().locks.acquire::<M>(key, ttl, wait, true).await
}

/// Acquires the lock of a `#[once]`/`#[lock]` call (`wait` is zero for `once`).
pub async fn acquire(
    client: &Cachify,
    key: String,
    ttl: Option<Duration>,
    wait: Duration,
) -> Result<LockGuard, Error> {
    acquire_in::<Async>(client, key, ttl, wait).await
}

/// Blocking twin of [`acquire`].
pub fn acquire_blocking(
    client: &Cachify,
    key: String,
    ttl: Option<Duration>,
    wait: Duration,
) -> Result<LockGuard, Error> {
    drive(acquire_in::<Blocking>(client, key, ttl, wait))
}

/// Runs an async body while holding `guard`, then releases it.
pub async fn run_locked<F: Future>(guard: LockGuard, body: F) -> F::Output {
    let output = body.await;
    guard.release_after_run::<Async>().await;
    output
}

/// Runs a blocking body while holding `guard`, then releases it.
pub fn run_locked_blocking<R>(guard: LockGuard, body: impl FnOnce() -> R) -> R {
    let output = body();
    drive(guard.release_after_run::<Blocking>());
    output
}

/// Converts a refused lock (`Locked` or `Backend`) into the function's error type.
#[inline]
pub fn lock_error<E: From<Error>>(error: Error) -> E {
    E::from(error)
}

/// `<fn>_reset`: deletes one cache entry.
pub async fn delete(client: &Cachify, key: String) -> Result<(), Error> {
    client.core().delete::<Async>(&key).await
}

/// Blocking [`delete`].
pub fn delete_blocking(client: &Cachify, key: String) -> Result<(), Error> {
    drive(client.core().delete::<Blocking>(&key))
}

/// `<fn>_release`: deletes a lock whoever holds it.
pub async fn release(client: &Cachify, key: String) -> Result<(), Error> {
    client.core().locks.force_unlock::<Async>(&key).await
}

/// Blocking [`release`].
pub fn release_blocking(client: &Cachify, key: String) -> Result<(), Error> {
    drive(client.core().locks.force_unlock::<Blocking>(&key))
}

/// `<fn>_is_locked`.
pub async fn is_locked(client: &Cachify, key: String) -> Result<bool, Error> {
    let holder = client.core().locks.holder::<Async>(&key).await?;
    Ok(holder.is_some())
}

/// Blocking `<fn>_is_locked`.
pub fn is_locked_blocking(client: &Cachify, key: String) -> Result<bool, Error> {
    let holder = drive(client.core().locks.holder::<Blocking>(&key))?;
    Ok(holder.is_some())
}
