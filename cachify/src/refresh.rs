//! `#[cached]` with `stale_if_error` or `early_refresh`: the cache path
//! over entries that carry their metadata (see [`crate::entry`]).
//!
//! - **Stale if error.** An entry is stored for its TTL plus
//!   `stale_if_error`, fresh for the TTL only. A caller that finds it
//!   stale recomputes (through the same single flight and fill lock as any
//!   miss); when the function's output is one the policy refuses to store
//!   (an `Err`, or a `None` without `none_ttl`), that caller gets the stale
//!   value instead, counted (`stale`) and logged. A successful output
//!   always answers, and replaces the entry.
//! - **Early refresh.** A hit that XFetch picks ([`Entry::refresh_now`])
//!   still returns the cached value at once, and starts one recomputation
//!   in the background: one per key in this process (a set of keys under
//!   refresh, then the single flight), and one across processes (the fill
//!   lock, tried without waiting). A refresh that finds the entry already
//!   replaced does nothing; one whose function fails keeps the current
//!   value. Async functions refresh on cachify's background runtime,
//!   sync functions on a thread of their own.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::cache::{CacheCall, Computed, Core, Fetch, Lookup, Served};
use crate::entry::{Entry, now_millis, uniform};
use crate::flight::{Outcome, Role};
use crate::mode::{Async, Blocking, Mode, drive};
use crate::observe::{CallOutcome, Tally};
use crate::policy::Policy;
use crate::site::Site;
use crate::value::{AnyValue, ValueType, take};

/// Something that owns a client's core and can be moved into a
/// background refresh (the client).
pub(crate) trait CoreOwner: Clone + Send + Sync + 'static {
    fn core(&self) -> &Core;
}

/// What a hit asks its caller to do: refresh the entry, seen fresh until
/// `seen` (Unix ms), in the background.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Refresh {
    seen: u64,
}

/// How long an entry computed for `ttl` is kept in the store.
fn kept_for(call: &CacheCall, ttl: Option<Duration>) -> Option<Duration> {
    let extra = call.stale_if_error.unwrap_or_default();
    ttl.map(|ttl| ttl.saturating_add(extra))
}

/// Whether the policy refuses to store this output's stored part: the
/// failures a stale value may stand in for.
fn refused<P: Policy<R>, R>(call: &CacheCall, stored: Option<&P::Stored>) -> bool {
    match stored {
        None => true,
        Some(stored) => P::is_empty(stored) && call.none_ttl.is_none(),
    }
}

impl Core {
    /// A `#[cached]` call over entries (see the module docs). The output
    /// comes with how the call was answered, and, on a hit that XFetch
    /// picked, the refresh to start.
    pub(crate) async fn cached_entry<M, P, R, F, U>(
        &self,
        key: &str,
        tally: &Tally,
        call: &CacheCall,
        body: F,
        unless: &U,
    ) -> (R, CallOutcome, Option<Refresh>)
    where
        M: Mode,
        P: Policy<R>,
        F: Future<Output = R>,
        U: Fn(&P::Stored) -> bool,
    {
        // The last stale entry this caller saw, for when its run fails.
        let stale: Mutex<Option<Entry<P::Stored>>> = Mutex::new(None);
        let keep_stale = call.stale_if_error.is_some();
        let accept = |entry: &Entry<P::Stored>| {
            if entry.fresh_at(now_millis()) {
                return true;
            }
            if keep_stale {
                *stale.lock().unwrap_or_else(PoisonError::into_inner) = Some(entry.clone());
            }
            false
        };
        let lookup = self.lookup(key, tally, &accept, call.codec);
        let mut outcome = match lookup {
            Lookup::Bypassed => CallOutcome::Bypass,
            _ => CallOutcome::Miss,
        };
        if let Some(entry) = self
            .finish::<M, Entry<P::Stored>>(key, tally, lookup, &accept)
            .await
        {
            let refresh =
                (call.early_refresh && entry.refresh_now(now_millis(), uniform())).then(|| {
                    Refresh {
                        seen: entry.fresh_until(),
                    }
                });
            return (P::restore(entry.value), CallOutcome::Hit, refresh);
        }
        let served_stale = AtomicBool::new(false);
        let fetch = Fetch {
            key,
            tally,
            fill_lock: call.fill_lock,
            read: false,
            accept: &accept,
            tags: &call.tags,
            codec: call.codec,
        };
        let compute = async {
            let started = Instant::now();
            let output = body.await;
            let took = started.elapsed();
            let stored = P::stored(&output);
            if refused::<P, R>(call, stored.as_ref()) {
                let old = stale.lock().unwrap_or_else(PoisonError::into_inner).take();
                if let Some(old) = old {
                    served_stale.store(true, Ordering::Relaxed);
                    return Computed {
                        output: P::restore(old.value),
                        value: None,
                        store: false,
                        ttl: None,
                    };
                }
            }
            let (store, ttl) = match &stored {
                Some(stored) => self.keep_for::<P, R>(call, stored, unless),
                None => (false, None),
            };
            Computed {
                output,
                value: stored.map(|stored| Arc::new(Entry::new(stored, now_millis(), ttl, took))),
                store,
                ttl: kept_for(call, ttl),
            }
        };
        // Boxed, as in `Core::cached`: hits don't move the miss path's state.
        let output =
            match Box::pin(self.fetch::<M, Entry<P::Stored>, R, _, _>(fetch, compute)).await {
                Served::Cached(entry) => P::restore(entry.value),
                Served::Ran(output) => output,
            };
        if served_stale.load(Ordering::Relaxed) {
            outcome = CallOutcome::Stale;
            tally.stale();
            if let Some(suppressed) = self.health().stale_log.admit() {
                tracing::warn!(
                    key,
                    suppressed,
                    "cachify: the function failed; answering with the stale cached value (stale_if_error)"
                );
            }
        }
        (output, outcome, None)
    }

    /// Recomputes the entry under `key` unless another caller, here or in
    /// another process, is already at it, or has replaced the entry seen
    /// at `refresh`. Never fails: a failed run keeps the current entry.
    async fn refresh<M, P, R, F, U>(
        &self,
        key: &str,
        tally: &Tally,
        call: CacheCall,
        refresh: Refresh,
        body: F,
        unless: &U,
    ) where
        M: Mode,
        P: Policy<R>,
        F: Future<Output = R>,
        U: Fn(&P::Stored) -> bool,
    {
        let Role::Leader(leader) = self.flights().join::<M>(key) else {
            // A caller of this process is computing it now.
            return;
        };
        let guard = match self
            .locks
            .acquire::<M>(self.keys.fill(key), None, Duration::ZERO, false, None)
            .await
        {
            Ok(guard) => guard,
            // Another process is computing it; or the store is down, and
            // the current value stays until it is back.
            Err(_) => return,
        };
        let kind = ValueType::of::<Entry<P::Stored>>().with_codec(call.codec);
        let current = M::io(self.values().get(key, kind)).await;
        let replaced = match current {
            Ok(Some(found)) => take::<Entry<P::Stored>>(found)
                .filter(|entry| entry.fresh_until() != refresh.seen)
                .map(Arc::new),
            _ => None,
        };
        if let Some(entry) = replaced {
            leader.publish(Outcome::Value(AnyValue::new(entry)));
        } else {
            // Read before the function reads its data (see `cache::tags`).
            let versions = self.tag_versions::<M>(&call.tags).await;
            let started = Instant::now();
            // The output itself is dropped here: only its stored part is kept.
            let stored = P::stored(&body.await);
            let took = started.elapsed();
            let kept = match &stored {
                Some(stored) if !refused::<P, R>(&call, Some(stored)) => {
                    Some(self.keep_for::<P, R>(&call, stored, unless))
                }
                _ => None,
            };
            match (stored, kept) {
                (Some(stored), Some((store, ttl))) => {
                    let entry = Arc::new(Entry::new(stored, now_millis(), ttl, took));
                    leader.publish(Outcome::Value(AnyValue::new(Arc::clone(&entry))));
                    let kept = kept_for(&call, ttl);
                    // Unknown tag versions: the value could outlive an
                    // invalidation, so it is not stored.
                    if let (true, Some(versions)) = (store, versions)
                        && self
                            .write::<M, Entry<P::Stored>>(key, tally, entry, kept, call.codec)
                            .await
                    {
                        self.tag_written::<M>(key, &call.tags, kept, versions).await;
                    }
                }
                _ => {
                    leader.publish(Outcome::Failed);
                    if let Some(suppressed) = self.health().stale_log.admit() {
                        tracing::warn!(
                            key,
                            suppressed,
                            "cachify: early refresh failed; keeping the current value"
                        );
                    }
                }
            }
        }
        guard.release_after_run::<M>().await;
        drop(leader);
    }
}

/// Takes `key` out of the keys under refresh when the refresh ends, even
/// by a panic of the function.
struct Refreshing<O: CoreOwner> {
    owner: O,
    key: String,
}

impl<O: CoreOwner> Refreshing<O> {
    /// `None` when a refresh of `key` is already under way here.
    fn start(owner: &O, key: &str) -> Option<Self> {
        let fresh = owner
            .core()
            .refreshing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key.to_owned());
        fresh.then(|| Self {
            owner: owner.clone(),
            key: key.to_owned(),
        })
    }
}

impl<O: CoreOwner> Drop for Refreshing<O> {
    fn drop(&mut self) {
        self.owner
            .core()
            .refreshing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key);
    }
}

/// Starts the refresh of an async function's entry on cachify's
/// background runtime; `make` makes the function's future.
#[allow(clippy::too_many_arguments)]
pub(crate) fn spawn_async<O, P, R, G, F, U>(
    owner: &O,
    key: &str,
    site: &'static Site,
    call: CacheCall,
    refresh: Refresh,
    make: G,
    unless: U,
) where
    O: CoreOwner,
    P: Policy<R> + 'static,
    R: 'static,
    G: FnOnce() -> F + Send + 'static,
    F: Future<Output = R> + Send + 'static,
    U: Fn(&P::Stored) -> bool + Send + Sync + 'static,
{
    let Some(running) = Refreshing::start(owner, key) else {
        return;
    };
    crate::io::spawn(async move {
        let core = running.owner.core();
        let tally = site.tally(core.health());
        core.refresh::<Async, P, R, _, U>(&running.key, &tally, call, refresh, make(), &unless)
            .await;
        drop(running);
    });
}

/// Starts the refresh of a sync function's entry on a thread of its own;
/// `make` runs the function.
#[allow(clippy::too_many_arguments)]
pub(crate) fn spawn_blocking<O, P, R, G, U>(
    owner: &O,
    key: &str,
    site: &'static Site,
    call: CacheCall,
    refresh: Refresh,
    make: G,
    unless: U,
) where
    O: CoreOwner,
    P: Policy<R> + 'static,
    R: 'static,
    G: FnOnce() -> R + Send + 'static,
    U: Fn(&P::Stored) -> bool + Send + Sync + 'static,
{
    let Some(running) = Refreshing::start(owner, key) else {
        return;
    };
    let spawned = std::thread::Builder::new()
        .name("cachify-refresh".into())
        .spawn(move || {
            let core = running.owner.core();
            let tally = site.tally(core.health());
            let body = async move { make() };
            drive(core.refresh::<Blocking, P, R, _, U>(
                &running.key,
                &tally,
                call,
                refresh,
                body,
                &unless,
            ));
            drop(running);
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "cachify: could not start an early refresh; the value will be recomputed when it expires");
    }
}
