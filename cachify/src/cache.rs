//! The cache core: read, single flight on a miss, fill across processes,
//! run, store. `#[cached]` and the HTTP layer both go through it.
//!
//! It fails open: a backend error or timeout is logged and the function
//! runs as if there were no cache. A stored value that no longer decodes
//! (its type changed after a deploy) is a miss and gets overwritten. Every
//! operation is written once, generic over a [`Mode`]. Tags and clearing
//! are in [`tags`].

mod tags;

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::codec::Codec;
use crate::error::Error;
use crate::flight::{Flights, Outcome, Role};
use crate::health::{Health, Stats};
use crate::keyspace::Keyspace;
use crate::locks::{LockGuard, Locks};
use crate::mode::Mode;
use crate::observe::{CallOutcome, Tally};
use crate::policy::Policy;
use crate::site::{Forget, Index, Site, TypedKey};
use crate::store::{StoreFuture, TagStore, ValueStore, Watch};
use crate::value::{AnyValue, CacheValue, ValueType, take};
use crate::wait::next_release;

/// How a `#[cached]` call runs, from the attribute.
#[derive(Clone, Debug)]
pub struct CacheCall {
    /// Time to live.
    pub ttl: Ttl,
    /// How long an empty output (`None`) is stored; `None`: it is not.
    pub none_ttl: Option<Duration>,
    /// `lock = true`: concurrent misses across processes run the function once.
    pub fill_lock: bool,
    /// The call's rendered tags (`tags = [..]`); empty when it has none.
    pub tags: Vec<String>,
    /// `codec = ..`: the codec of this function's entries; `None`: the client's.
    pub codec: Option<Codec>,
    /// `stale_if_error`: how much longer than its TTL a value is kept, to
    /// answer callers whose recomputation fails.
    pub stale_if_error: Option<Duration>,
    /// `early_refresh = true`: hits recompute the value in the background
    /// before it expires.
    pub early_refresh: bool,
}

/// How long a `#[cached]` value lives, from the attribute's `ttl`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ttl {
    /// No `ttl`: the client's `default_ttl` (no expiry without one).
    Default,
    /// `ttl = None`: no expiry, whatever the client's `default_ttl`.
    Never,
    /// `ttl = ..`: this long.
    For(Duration),
}

impl Ttl {
    /// The expiry to store with (`None`: none), given the client's default.
    fn resolve(self, default: Option<Duration>) -> Option<Duration> {
        match self {
            Ttl::Default => default,
            Ttl::Never => None,
            Ttl::For(ttl) => Some(ttl),
        }
    }
}

/// Pause between two looks at the cache while another process fills it,
/// when its release cannot be watched; watched, the filler's release wakes
/// the followers, and they look again after the locks' re-check at the
/// latest.
const FILL_POLL: Duration = Duration::from_millis(20);

/// One lookup through the core.
pub(crate) struct Fetch<'a, A> {
    pub(crate) key: &'a str,
    /// The counters of the caller's kind and template.
    pub(crate) tally: &'a Tally,
    /// Take the cross-process fill lock before computing.
    pub(crate) fill_lock: bool,
    /// Look in the cache before the first join; `false` when the caller
    /// has just looked. A caller that rejoins after a vanished leader
    /// always looks again.
    pub(crate) read: bool,
    /// Whether a stored (or a concurrent caller's) value answers this
    /// caller; a value it refuses is a miss.
    pub(crate) accept: A,
    /// The tags the value is stored under.
    pub(crate) tags: &'a [String],
    /// The codec of the entry (`None`: the client's).
    pub(crate) codec: Option<Codec>,
}

/// What the caller's own computation produced.
pub(crate) struct Computed<R, T> {
    /// What the caller returns.
    pub(crate) output: R,
    /// The value to hand to concurrent callers; `None`: they compute their
    /// own (an error is never shared).
    pub(crate) value: Option<Arc<T>>,
    /// Whether `value` is stored.
    pub(crate) store: bool,
    /// How long it is stored (`None`: no expiry).
    pub(crate) ttl: Option<Duration>,
}

/// A read under way (see [`Core::lookup`]).
pub(crate) enum Lookup<T> {
    /// The breaker is open: the store was not asked.
    Bypassed,
    /// The store answered at once: a hit, or `None` for a miss.
    Now(Option<T>),
    /// The store's answer is still to come.
    Later(StoreFuture<Option<AnyValue>>),
    /// Bytes still to come, to decode with the codec (see
    /// [`ValueStore::get_encoded`]).
    Encoded(StoreFuture<Option<Vec<u8>>>, Codec),
}

/// How a lookup was answered.
pub(crate) enum Served<T, R> {
    /// From the cache, another process's fill or a concurrent caller.
    Cached(T),
    /// By this caller's computation.
    Ran(R),
}

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

    /// How long until it runs out.
    fn left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }
}

/// Where a local leader stands after coordinating with other processes.
enum Fill<T> {
    /// Another process filled the cache meanwhile.
    Filled(T),
    /// Run the function (holding the fill lock if one was taken).
    Run(Option<Box<LockGuard>>),
}

/// The stores, keys, settings and health of one client: everything the
/// cache path and the locks share. The client is a thin facade over it.
pub(crate) struct Core {
    /// The typed indexes this client claimed, emptied when it goes.
    indexes: Mutex<Vec<Arc<dyn Forget>>>,
    values: Arc<dyn ValueStore>,
    pub(crate) locks: Locks,
    pub(crate) keys: Keyspace,
    default_ttl: Option<Duration>,
    fill_wait: Duration,
    flights: Flights,
    health: Arc<Health>,
    tags: Arc<dyn TagStore>,
    /// Keys with a background refresh under way in this process
    /// (`early_refresh`), so a burst of hits starts one.
    pub(crate) refreshing: Mutex<HashSet<String>>,
}

impl Core {
    pub(crate) fn new(
        values: Arc<dyn ValueStore>,
        locks: Locks,
        keys: Keyspace,
        default_ttl: Option<Duration>,
        fill_wait: Duration,
        health: Arc<Health>,
        tags: Arc<dyn TagStore>,
    ) -> Self {
        Self {
            indexes: Mutex::new(Vec::new()),
            values,
            locks,
            keys,
            default_ttl,
            fill_wait,
            flights: Flights::default(),
            health,
            tags,
            refreshing: Mutex::default(),
        }
    }

    /// The TTL of entries whose attribute sets none.
    pub(crate) fn default_ttl(&self) -> Option<Duration> {
        self.default_ttl
    }

    /// How long a `lock = true` caller waits for another process's fill.
    pub(crate) fn fill_wait(&self) -> Duration {
        self.fill_wait
    }

    pub(crate) fn stats(&self) -> Stats {
        self.health.stats()
    }

    /// What a client tracks about its backend and its calls.
    pub(crate) fn health(&self) -> &Health {
        &self.health
    }

    /// The in-process flights (single flight per key).
    pub(crate) fn flights(&self) -> &Flights {
        &self.flights
    }

    /// The value store, for reads that count nothing.
    pub(crate) fn values(&self) -> &dyn ValueStore {
        &*self.values
    }

    /// Tells this client apart at a generated function's [`Site`].
    fn id(&self) -> u64 {
        self.health.client
    }

    /// Counts a value the caller declined to store because of its size.
    pub(crate) fn count_oversized(&self) {
        self.health.counters.oversized.add();
    }

    /// Records the outcome of a cache-path store call: feeds the breaker
    /// and the counters, and logs failures (at most one line per period).
    fn observe<T>(&self, tally: &Tally, operation: &str, key: &str, outcome: &Result<T, Error>) {
        let health = &self.health;
        match outcome {
            Ok(_) | Err(Error::Codec(_)) => health.breaker.record_success(),
            Err(error) => {
                health.breaker.record_failure();
                tally.error();
                if let Some(suppressed) = health.cache_log.admit() {
                    tracing::warn!(
                        operation,
                        key,
                        %error,
                        suppressed,
                        "cachify: cache backend failed; running the function without the cache"
                    );
                }
            }
        }
    }

    /// The first step of a read, taken without awaiting: skips the store
    /// while the breaker is open, and finishes the read at once when the
    /// store answered without I/O (the memory store).
    pub(crate) fn lookup<T: CacheValue>(
        &self,
        key: &str,
        tally: &Tally,
        accept: &impl Fn(&T) -> bool,
        codec: Option<Codec>,
    ) -> Lookup<T> {
        if !self.health.breaker.allows() {
            tally.bypass();
            return Lookup::Bypassed;
        }
        let kind = ValueType::of::<T>().with_codec(codec);
        if let Some((pending, codec)) = self.values.get_encoded(key, kind) {
            return Lookup::Encoded(pending, codec);
        }
        match self.values.get(key, kind) {
            StoreFuture::Ready(Some(found)) => {
                let found = found.map(|found| found.and_then(take));
                Lookup::Now(self.found(key, tally, found, accept))
            }
            pending => Lookup::Later(pending),
        }
    }

    /// Finishes a read begun by [`Core::lookup`]: `Some` on a hit.
    pub(crate) async fn finish<M: Mode, T: CacheValue>(
        &self,
        key: &str,
        tally: &Tally,
        lookup: Lookup<T>,
        accept: &impl Fn(&T) -> bool,
    ) -> Option<T> {
        match lookup {
            Lookup::Bypassed => None,
            Lookup::Now(value) => value,
            Lookup::Later(pending) => {
                let found = M::io(pending).await;
                self.found(key, tally, found.map(|found| found.and_then(take)), accept)
            }
            Lookup::Encoded(pending, codec) => {
                let found = M::io(pending).await.and_then(|bytes| match bytes {
                    Some(bytes) => Ok(Some(codec.decode::<T>(&bytes)?)),
                    None => Ok(None),
                });
                self.found(key, tally, found, accept)
            }
        }
    }

    /// Reads the cache (`codec`: the entry's, `None` for the client's):
    /// `Some` on a hit. Counts hits, misses and failures.
    pub(crate) async fn read<M: Mode, T: CacheValue>(
        &self,
        key: &str,
        tally: &Tally,
        accept: &impl Fn(&T) -> bool,
        codec: Option<Codec>,
    ) -> Option<T> {
        let lookup = self.lookup(key, tally, accept, codec);
        self.finish::<M, T>(key, tally, lookup, accept).await
    }

    /// Counts and logs what a read found (a stored value of another type
    /// comes as `None`); the hit, if there is one.
    fn found<T: CacheValue>(
        &self,
        key: &str,
        tally: &Tally,
        found: Result<Option<T>, Error>,
        accept: &impl Fn(&T) -> bool,
    ) -> Option<T> {
        self.observe(tally, "read", key, &found);
        let value = match found {
            Ok(found) => found.filter(|value| accept(value)),
            Err(Error::Codec(error)) => {
                tracing::debug!(key, %error, "cachify: cached value no longer decodes; treating it as a miss");
                None
            }
            // Already counted and logged by `observe`.
            Err(_) => None,
        };
        if value.is_some() {
            tally.hit();
        } else {
            tally.miss();
        }
        value
    }

    /// Stores a value (`codec`: the entry's, `None` for the client's)
    /// unless the breaker is open; never fails the caller. Whether it was
    /// stored.
    pub(crate) async fn write<M: Mode, T: CacheValue>(
        &self,
        key: &str,
        tally: &Tally,
        value: Arc<T>,
        ttl: Option<Duration>,
        codec: Option<Codec>,
    ) -> bool {
        if !self.health.breaker.allows() {
            return false;
        }
        let kind = ValueType::of::<T>().with_codec(codec);
        let set = self.values.set(key, AnyValue::new(value), kind, ttl);
        let written = M::io(set).await;
        self.observe(tally, "write", key, &written);
        if let Ok(false) = written {
            self.count_oversized();
        }
        matches!(written, Ok(true))
    }

    /// Deletes one entry (`_reset`, HTTP invalidation).
    pub(crate) async fn delete<M: Mode>(&self, key: &str) -> Result<(), Error> {
        M::io(self.values.delete(key)).await
    }

    /// Deletes every entry whose key starts with `prefix`.
    pub(crate) async fn delete_prefix<M: Mode>(&self, prefix: &str) -> Result<u64, Error> {
        M::io(self.values.delete_prefix(prefix)).await
    }

    /// With `lock = true`: takes the fill lock, or waits (up to
    /// `fill_wait`) for whoever holds it to store the value. A live
    /// filler's lease is renewed, so waiters keep waiting while it
    /// computes; a crashed filler's lease runs out after `lock_ttl` and the
    /// next waiter to try takes over. Fails open: a backend error means
    /// running the function.
    async fn fill<M: Mode, T: CacheValue>(
        &self,
        key: &str,
        tally: &Tally,
        accept: &impl Fn(&T) -> bool,
        codec: Option<Codec>,
    ) -> Fill<T> {
        let fill_key = self.keys.fill(key);
        let mut patience = Patience::new(self.fill_wait);
        // Taken at the first refusal: the filler's release wakes this
        // follower, which then reads what it stored.
        let mut watch: Option<Option<Watch>> = None;
        loop {
            match self
                .locks
                .acquire::<M>(fill_key.clone(), None, Duration::ZERO, false, None)
                .await
            {
                Ok(guard) => {
                    // The previous holder may have stored it just before releasing.
                    return match self.read::<M, T>(key, tally, accept, codec).await {
                        Some(value) => Fill::Filled(value),
                        None => Fill::Run(Some(Box::new(guard))),
                    };
                }
                Err(Error::Locked { .. }) => {
                    if watch.is_none() {
                        watch = Some(self.locks.watch::<M>(&fill_key).await);
                    }
                    // Read after the watch: a release before it shows here.
                    let holder = self.locks.holder::<M>(&fill_key).await;
                    let held = matches!(holder, Ok(Some(_)));
                    if !patience.still_waiting(holder) {
                        return Fill::Run(None);
                    }
                    match watch.as_mut() {
                        Some(Some(watch)) if held => {
                            let limit = self.locks.recheck().min(patience.left());
                            next_release::<M>(watch, limit).await;
                        }
                        Some(None) if held => M::sleep(FILL_POLL).await,
                        _ => {}
                    }
                    if let Some(value) = self.read::<M, T>(key, tally, accept, codec).await {
                        return Fill::Filled(value);
                    }
                    if let Some(waited_for) = &patience.holder
                        && self.ran_unstored::<M>(key, waited_for).await
                    {
                        return Fill::Run(None);
                    }
                }
                Err(_) => return Fill::Run(None),
            }
        }
    }

    /// Whether the filler `token` of `key` ran and stored nothing (its
    /// note, left before its release): then waiting for the next filler
    /// would only queue the callers up to run one after another.
    async fn ran_unstored<M: Mode>(&self, key: &str, token: &str) -> bool {
        let note = self.locks.holder::<M>(&self.keys.unstored(key)).await;
        matches!(note, Ok(Some(note)) if note == token)
    }

    /// Answers from the cache, or from a concurrent caller's computation
    /// (single flight in this process, and the fill lock across processes
    /// when asked), or runs `compute` and stores what it says to store.
    pub(crate) async fn fetch<M, T, R, A, F>(&self, fetch: Fetch<'_, A>, compute: F) -> Served<T, R>
    where
        M: Mode,
        T: CacheValue,
        A: Fn(&T) -> bool,
        F: Future<Output = Computed<R, T>>,
    {
        let Fetch {
            key,
            tally,
            fill_lock,
            read,
            accept,
            tags,
            codec,
        } = fetch;
        let mut look = read;
        let leader = loop {
            if look && let Some(value) = self.read::<M, T>(key, tally, &accept, codec).await {
                return Served::Cached(value);
            }
            look = true;
            match self.flights.join::<M>(key) {
                Role::Leader(leader) => break Some(leader),
                Role::Follower(flight) => match flight.wait::<M>().await {
                    // Another function with the same key may have stored
                    // another type; another request may want another variant.
                    Outcome::Value(value) => match take::<T>(value) {
                        Some(value) if accept(&value) => return Served::Cached(value),
                        _ => break None,
                    },
                    Outcome::Failed => break None,
                    Outcome::Abandoned => {}
                },
            }
        };
        let fill_guard = match (&leader, fill_lock) {
            (Some(leader), true) => match self.fill::<M, T>(key, tally, &accept, codec).await {
                Fill::Filled(value) => {
                    leader.publish(Outcome::Value(AnyValue::new(Arc::new(value.clone()))));
                    return Served::Cached(value);
                }
                Fill::Run(guard) => guard,
            },
            _ => None,
        };
        // Read before the function reads its data (see `tags`).
        let versions = self.tag_versions::<M>(tags).await;
        let computed = compute.await;
        if let Some(leader) = &leader {
            leader.publish(match &computed.value {
                Some(value) => Outcome::Value(AnyValue::new(Arc::clone(value))),
                None => Outcome::Failed,
            });
        }
        // Unknown tag versions: the value could outlive an invalidation,
        // so it is not stored.
        let stored = if let (true, Some(value), Some(versions)) =
            (computed.store, &computed.value, versions)
            && self
                .write::<M, T>(key, tally, Arc::clone(value), computed.ttl, codec)
                .await
        {
            self.tag_written::<M>(key, tags, computed.ttl, versions)
                .await;
            true
        } else {
            false
        };
        if let Some(guard) = fill_guard {
            if !stored {
                // Those waiting for this fill would find nothing and take
                // the fill lock in turn, each running alone: the note lets
                // them run at once instead. Without it they still run.
                let unstored = self.keys.unstored(key);
                let _ = self
                    .locks
                    .note::<M>(&unstored, guard.token(), self.fill_wait)
                    .await;
            }
            guard.release_after_run::<M>().await;
        }
        drop(leader);
        Served::Ran(computed.output)
    }

    /// A typed hit at `site` (see [`crate::site`]): no key rendered.
    /// The hit comes with how it was answered.
    #[inline]
    pub(crate) fn typed_hit<K: TypedKey, T: CacheValue>(
        &self,
        site: &Site,
        key: &K,
    ) -> Option<(T, CallOutcome)> {
        let (index, tally) = site.index::<K, T>(self.id())?;
        let value = index.get(key)?;
        tally.hit();
        if index.near {
            self.health.counters.near_hits.add();
            return Some((value, CallOutcome::Near));
        }
        Some((value, CallOutcome::Hit))
    }

    /// How an in-process hit through the rendered key was answered: from
    /// the near cache's copies, or from the memory store.
    pub(crate) fn local_hit(&self) -> CallOutcome {
        match self.values.local() {
            Some(local) if local.near => CallOutcome::Near,
            _ => CallOutcome::Hit,
        }
    }

    /// After a hit through the rendered key `rendered`: indexes the entry
    /// it came from under `key` at `site`, so the next call is a typed hit.
    fn index_typed<K: TypedKey, T: CacheValue>(&self, site: &Site, key: K, rendered: &str) {
        let Some(local) = self.values.local() else {
            return;
        };
        // The slot first: a client without one at this site looks
        // nothing up again.
        let Some(claim) = site.slot(self.id()) else {
            return;
        };
        let index = claim.index::<K, T>(|| {
            let index = Arc::new(Index::new(local.values.capacity(), local.near));
            self.indexes
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Arc::clone(&index) as Arc<dyn Forget>);
            index
        });
        if let (Some(index), Some(stored)) = (index, local.values.entry(rendered)) {
            index.insert(key, stored);
        }
    }

    /// The start of a `#[cached]` call, before any future is made: the
    /// output on an in-process hit, else the read under way for
    /// [`Core::cached`] to finish.
    /// An in-process hit is also indexed under `typed` at `site`, so the
    /// function's next call with these arguments is a typed hit.
    pub(crate) fn cached_now<P: Policy<R>, R, K: TypedKey>(
        &self,
        key: &str,
        site: &Site,
        tally: &Tally,
        typed: Option<K>,
        codec: Option<Codec>,
    ) -> Result<R, Lookup<P::Stored>> {
        match self.lookup(key, tally, &accept_any::<P::Stored>, codec) {
            Lookup::Now(Some(stored)) => {
                if let Some(typed) = typed {
                    self.index_typed::<K, P::Stored>(site, typed, key);
                }
                Ok(P::restore(stored))
            }
            lookup => Err(lookup),
        }
    }

    /// A `#[cached]` call: the stored part of the output chosen by `P`,
    /// not stored when `unless` says so (but still shared). `lookup` is the
    /// read [`Core::cached_now`] began. The output comes with how the call
    /// was answered.
    pub(crate) async fn cached<M, P, R, F, U>(
        &self,
        key: &str,
        tally: &Tally,
        lookup: Lookup<P::Stored>,
        call: CacheCall,
        body: F,
        unless: U,
    ) -> (R, CallOutcome)
    where
        M: Mode,
        P: Policy<R>,
        F: Future<Output = R>,
        U: Fn(&P::Stored) -> bool,
    {
        let accept = accept_any::<P::Stored>;
        let outcome = match lookup {
            Lookup::Bypassed => CallOutcome::Bypass,
            _ => CallOutcome::Miss,
        };
        if let Some(stored) = self
            .finish::<M, P::Stored>(key, tally, lookup, &accept)
            .await
        {
            return (P::restore(stored), CallOutcome::Hit);
        }
        let fetch = Fetch {
            key,
            tally,
            fill_lock: call.fill_lock,
            read: false,
            accept,
            tags: &call.tags,
            codec: call.codec,
        };
        let compute = async {
            let output = body.await;
            let value = P::stored(&output).map(Arc::new);
            let (store, ttl) = match value.as_deref() {
                Some(stored) => self.keep_for::<P, R>(&call, stored, &unless),
                None => (false, None),
            };
            Computed {
                output,
                value,
                store,
                ttl,
            }
        };
        // Boxed: the miss path's state (flight, fill lock, the body) is
        // large, and every hit would otherwise move it around.
        let output = match Box::pin(self.fetch::<M, P::Stored, R, _, _>(fetch, compute)).await {
            Served::Cached(stored) => P::restore(stored),
            Served::Ran(output) => output,
        };
        (output, outcome)
    }
}

impl Drop for Core {
    /// A site keeps the index of the client that claimed it: emptied here,
    /// it holds no values of a client that is gone.
    fn drop(&mut self) {
        let indexes = self
            .indexes
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        for index in indexes.drain(..) {
            index.forget();
        }
    }
}

impl Core {
    /// Whether a `#[cached]` call's stored part is stored, and for how
    /// long (`None`: no expiry).
    pub(crate) fn keep_for<P: Policy<R>, R>(
        &self,
        call: &CacheCall,
        stored: &P::Stored,
        unless: &impl Fn(&P::Stored) -> bool,
    ) -> (bool, Option<Duration>) {
        if P::is_empty(stored) {
            // An empty output is stored only for its own, usually shorter, TTL.
            (call.none_ttl.is_some() && !unless(stored), call.none_ttl)
        } else {
            (!unless(stored), call.ttl.resolve(self.default_ttl))
        }
    }
}

/// Every stored value answers a `#[cached]` call.
fn accept_any<T>(_: &T) -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mode::Async;
    use crate::observe::CallKind;
    use crate::policy::Whole;
    use crate::store::memory::MemoryStore;

    fn is_send<F: Future + Send>(_: F) {}

    /// Async callers spawn cached calls as tasks: every async operation,
    /// borrowed from a client the future itself owns, must be `Send`.
    #[test]
    fn async_operations_are_send() {
        let memory = Arc::new(MemoryStore::new(10));
        let health = Arc::new(Health::new(1, Duration::from_secs(1)));
        let keys = Keyspace::default();
        let locks = Locks::new(
            memory.clone(),
            keys.clone(),
            Duration::from_secs(1),
            Duration::from_secs(1),
            Arc::clone(&health),
        );
        let core = Arc::new(Core::new(
            memory.clone(),
            locks,
            keys,
            None,
            Duration::ZERO,
            health,
            memory,
        ));
        let call = CacheCall {
            ttl: Ttl::Default,
            none_ttl: None,
            fill_lock: true,
            tags: vec!["t".to_owned()],
            codec: None,
            stale_if_error: None,
            early_refresh: false,
        };
        is_send(async move {
            let core = &*core;
            static SITE: Site = Site::new(CallKind::Cached, "k", "tests::k");
            let tally = SITE.tally(core.health());
            let _ = core
                .read::<Async, u32>("k", &tally, &|_: &u32| true, None)
                .await;
            let lookup =
                match core.cached_now::<Whole, u32, (u64,)>("k", &SITE, &tally, Some((1,)), None) {
                    Ok(_) => return,
                    Err(lookup) => lookup,
                };
            let _ = core
                .cached::<Async, Whole, u32, _, _>(
                    "k",
                    &tally,
                    lookup,
                    call,
                    async { 1 },
                    |_: &u32| false,
                )
                .await;
            let _ = core.delete::<Async>("k").await;
            let _ = core.invalidate_tags::<Async>(&["t".to_owned()]).await;
            let _ = core.clear_values::<Async>().await;
            const TEMPLATE: crate::keyspace::KeyTemplate = crate::keyspace::KeyTemplate {
                text: "k",
                pieces: &[],
            };
            let _ = core
                .clear_template::<Async>(crate::keyspace::KeyKind::Cached, &TEMPLATE, &[])
                .await;
            let _ = core
                .locks
                .acquire::<Async>("l".into(), None, Duration::ZERO, true, None)
                .await;
        });
    }
}
