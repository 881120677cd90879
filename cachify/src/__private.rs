//! Hidden helpers called by the code that `#[cached]`, `#[once]` and `#[lock]` generate.
//!
//! Nothing here is public API: names and signatures may change in any release.
//! The macros reach these items through the absolute path `::cachify::__private`.
//! Each async helper and its blocking twin call the same core operation,
//! in `Async` or `Blocking` mode.

use std::fmt::Display;
use std::future::Future;
use std::marker::PhantomData;
use std::time::Duration;

use crate::client::Cachify;
use crate::error::Error;
use crate::mode::{Async, Blocking, Mode, drive};
use crate::observe::{self, CallOutcome, Clock};
use crate::site::TallyRef;

pub use crate::cache::{CacheCall, Ttl};
pub use crate::keyspace::{KeyKind, KeyTemplate, Piece};
pub use crate::locks::LockGuard;
pub use crate::observe::CallKind;
pub use crate::policy::{JsonBody, OkOnly, Optional, Policy, Whole};
pub use crate::pools::PoolSlot;
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

/// A `{name:?}` placeholder's value: rendered with `Debug`, then escaped
/// like every other value.
pub struct DebugKey<'a, T: ?Sized>(pub &'a T);

impl<T: std::fmt::Debug + ?Sized> Display for DebugKey<'_, T> {
    #[inline]
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.0, formatter)
    }
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
/// rendered (see the `site` module). `None` when the call has no typed key,
/// and when call spans are wanted: a span shows the key, so the call then
/// takes the rendered-key path.
#[inline]
pub fn typed_hit<P, R, K>(client: &Cachify, site: &'static Site, typed: &Option<K>) -> Option<R>
where
    P: Policy<R>,
    P::Stored: crate::value::CacheValue,
    K: TypedKey,
{
    let typed = typed.as_ref()?;
    if observe::spans_enabled() {
        return None;
    }
    let clock = Clock::start();
    let (stored, outcome) = client.core().typed_hit::<K, P::Stored>(site, typed)?;
    finished(client, site, outcome, clock);
    Some(P::restore(stored))
}

/// Records the latency of a finished `#[cached]` call (with `metrics`).
#[inline]
fn finished(
    #[cfg_attr(not(feature = "metrics"), allow(unused))] client: &Cachify,
    #[cfg_attr(not(feature = "metrics"), allow(unused))] site: &'static Site,
    #[cfg_attr(not(feature = "metrics"), allow(unused))] outcome: CallOutcome,
    #[cfg_attr(not(feature = "metrics"), allow(unused))] clock: Clock,
) {
    #[cfg(feature = "metrics")]
    site.tally(client.core().health()).finished(outcome, clock);
}

/// How an in-process hit was answered, when anything will show it.
#[inline]
fn local_hit(client: &Cachify, span: &tracing::Span) -> CallOutcome {
    if span.is_disabled() && !cfg!(feature = "metrics") {
        return CallOutcome::Hit;
    }
    client.core().local_hit()
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
    use tracing::Instrument;

    let core = client.core();
    let clock = Clock::start();
    let span = observe::call_span(site.kind(), site.template(), site.function(), &key);
    let tally = site.tally(core.health());
    let now = core.cached_now::<P, R, K>(&key, site, &tally, typed, call.codec);
    let (output, outcome) = match now {
        Ok(hit) => (hit, local_hit(client, &span)),
        Err(lookup) => {
            let run = core.cached::<Async, P, R, F, U>(&key, &tally, lookup, call, body, unless);
            if span.is_disabled() {
                run.await
            } else {
                run.instrument(span.clone()).await
            }
        }
    };
    observe::record_outcome(&span, outcome);
    tally.finished(outcome, clock);
    output
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
    let clock = Clock::start();
    let span = observe::call_span(site.kind(), site.template(), site.function(), &key);
    let tally = site.tally(core.health());
    let now = core.cached_now::<P, R, K>(&key, site, &tally, typed, call.codec);
    let (output, outcome) = match now {
        Ok(hit) => (hit, local_hit(client, &span)),
        Err(lookup) => {
            let _entered = span.enter();
            let body = async move { body() };
            drive(core.cached::<Blocking, P, R, _, U>(&key, &tally, lookup, call, body, unless))
        }
    };
    observe::record_outcome(&span, outcome);
    tally.finished(outcome, clock);
    output
}

/// `#[cached]` with `stale_if_error` (and no `early_refresh`) on an
/// `async fn`: entries carry their metadata (see the `refresh` module).
pub async fn cached_entry<P, R, F, U>(
    client: &Cachify,
    key: String,
    site: &'static Site,
    call: CacheCall,
    body: F,
    unless: U,
) -> R
where
    P: Policy<R>,
    F: Future<Output = R>,
    U: Fn(&P::Stored) -> bool,
{
    let observed = Observed::start(client, &key, site);
    let run = client.core().cached_entry::<Async, P, R, F, U>(
        &key,
        &observed.tally,
        &call,
        body,
        &unless,
    );
    let (output, outcome, _) = observed.run(run).await;
    observed.finish(outcome);
    output
}

/// Blocking twin of [`cached_entry`].
pub fn cached_entry_blocking<P, R, B, U>(
    client: &Cachify,
    key: String,
    site: &'static Site,
    call: CacheCall,
    body: B,
    unless: U,
) -> R
where
    P: Policy<R>,
    B: FnOnce() -> R,
    U: Fn(&P::Stored) -> bool,
{
    let observed = Observed::start(client, &key, site);
    let body = async move { body() };
    let run = client.core().cached_entry::<Blocking, P, R, _, U>(
        &key,
        &observed.tally,
        &call,
        body,
        &unless,
    );
    let (output, outcome, _) = observed.drive(run);
    observed.finish(outcome);
    output
}

/// `#[cached]` with `early_refresh` on an `async fn`: `make` makes the
/// function's future from clones of its arguments, for the first fill and
/// for each refresh in the background.
pub async fn cached_refreshing<P, R, G, F, U>(
    client: &Cachify,
    key: String,
    site: &'static Site,
    call: CacheCall,
    make: G,
    unless: U,
) -> R
where
    P: Policy<R> + 'static,
    R: 'static,
    G: Fn() -> F + Clone + Send + 'static,
    F: Future<Output = R> + Send + 'static,
    U: Fn(&P::Stored) -> bool + Clone + Send + Sync + 'static,
{
    let observed = Observed::start(client, &key, site);
    let body = async { make().await };
    let run = client.core().cached_entry::<Async, P, R, _, U>(
        &key,
        &observed.tally,
        &call,
        body,
        &unless,
    );
    let (output, outcome, refresh) = observed.run(run).await;
    observed.finish(outcome);
    if let Some(refresh) = refresh {
        crate::refresh::spawn_async::<_, P, R, _, _, _>(
            client, &key, site, call, refresh, make, unless,
        );
    }
    output
}

/// Blocking twin of [`cached_refreshing`]: `make` runs the function on
/// clones of its arguments.
pub fn cached_refreshing_blocking<P, R, G, U>(
    client: &Cachify,
    key: String,
    site: &'static Site,
    call: CacheCall,
    make: G,
    unless: U,
) -> R
where
    P: Policy<R> + 'static,
    R: 'static,
    G: Fn() -> R + Clone + Send + 'static,
    U: Fn(&P::Stored) -> bool + Clone + Send + Sync + 'static,
{
    let observed = Observed::start(client, &key, site);
    let body = async { make() };
    let run = client.core().cached_entry::<Blocking, P, R, _, U>(
        &key,
        &observed.tally,
        &call,
        body,
        &unless,
    );
    let (output, outcome, refresh) = observed.drive(run);
    observed.finish(outcome);
    if let Some(refresh) = refresh {
        crate::refresh::spawn_blocking::<_, P, R, _, _>(
            client, &key, site, call, refresh, make, unless,
        );
    }
    output
}

/// Never implemented. A method of a trait impl that has a cachify
/// attribute but no `#[cachify::trait_impl]` on its impl block looks for
/// its sibling and finds only this bound, so the error names the fix.
#[diagnostic::on_unimplemented(
    message = "a method of a trait impl with `#[cached]`, `#[once]`, `#[lock]` or `#[pooled]` needs `#[cachify::trait_impl]` on its impl block",
    label = "its siblings cannot be members of the trait",
    note = "write `#[cachify::trait_impl]` above `impl Trait for Type`: it moves the siblings (`<fn>_reset`, `<fn>_clear`, ...) to an inherent `impl Type`"
)]
pub trait NeedsTraitImplAttribute {}

/// What an argument of an `early_refresh` function must be: the
/// background refresh runs the function on clones of the arguments, on
/// another task or thread, after the call has returned.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be passed to an `early_refresh` function: its arguments must be `Clone + Send + 'static`",
    note = "the background refresh runs the function again on clones of its arguments; pass owned values (`String` rather than `&str`, `Arc<T>` rather than `&T`)"
)]
pub trait RefreshArgument: Clone + Send + 'static {}

impl<T: Clone + Send + 'static> RefreshArgument for T {}

/// A clone of one argument of an `early_refresh` function, for one run
/// (see [`RefreshArgument`]).
#[inline]
pub fn refresh_clone<T: RefreshArgument>(argument: &T) -> T {
    argument.clone()
}

/// The span, counters and clock of one call over entries.
struct Observed {
    span: tracing::Span,
    tally: TallyRef<'static>,
    clock: Clock,
}

impl Observed {
    fn start(client: &Cachify, key: &str, site: &'static Site) -> Self {
        Self {
            clock: Clock::start(),
            span: observe::call_span(site.kind(), site.template(), site.function(), key),
            tally: site.tally(client.core().health()),
        }
    }

    /// Runs an async call in the span.
    async fn run<F: Future>(&self, run: F) -> F::Output {
        use tracing::Instrument;

        if self.span.is_disabled() {
            run.await
        } else {
            run.instrument(self.span.clone()).await
        }
    }

    /// Runs a blocking call in the span.
    fn drive<F: Future>(&self, run: F) -> F::Output {
        let _entered = self.span.enter();
        drive(run)
    }

    fn finish(&self, outcome: CallOutcome) {
        observe::record_outcome(&self.span, outcome);
        self.tally.finished(outcome, self.clock);
    }
}

async fn acquire_in<M: Mode>(
    client: &Cachify,
    site: &'static Site,
    key: String,
    ttl: Option<Duration>,
    wait: Duration,
) -> Result<LockGuard, Error> {
    let core = client.core();
    let tally = site.tally(core.health());
    core.locks
        .acquire::<M>(key, ttl, wait, true, Some(&tally))
        .await
}

/// Acquires the lock of a `#[once]`/`#[lock]` call (`wait` is zero for `once`).
pub async fn acquire(
    client: &Cachify,
    site: &'static Site,
    key: String,
    ttl: Option<Duration>,
    wait: Duration,
) -> Result<LockGuard, Error> {
    acquire_in::<Async>(client, site, key, ttl, wait).await
}

/// Blocking twin of [`acquire`].
pub fn acquire_blocking(
    client: &Cachify,
    site: &'static Site,
    key: String,
    ttl: Option<Duration>,
    wait: Duration,
) -> Result<LockGuard, Error> {
    drive(acquire_in::<Blocking>(client, site, key, ttl, wait))
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

/// A refused lock of a function with `return_on_locked`: held elsewhere, or
/// a backend failure. `Refused::<R>::new(error).into_output()` is the
/// output for a failure when `R` is `Result<_, E>` with
/// `E: From<cachify::Error>` (through [`RefusalAsError`]), and `None`, to
/// use `return_on_locked`, otherwise (through [`RefusalAsFallback`]): busy
/// is not broken, so a client is not told to retry an outage forever.
pub struct Refused<R>(Error, PhantomData<fn() -> R>);

impl<R> Refused<R> {
    /// Wraps the acquire error.
    #[inline]
    pub fn new(error: Error) -> Self {
        Self(error, PhantomData)
    }
}

/// Chosen for outputs `Result<T, E>` with `E: From<cachify::Error>`.
pub trait RefusalAsError<R> {
    /// `None` when the lock is held elsewhere (or the pool is full), else
    /// the error as `Err`.
    fn into_output(self) -> Option<R>;
}

impl<T, E: From<Error>> RefusalAsError<Result<T, E>> for Refused<Result<T, E>> {
    #[inline]
    fn into_output(self) -> Option<Result<T, E>> {
        match self.0 {
            Error::Locked { .. } | Error::PoolFull { .. } => None,
            error => Some(Err(E::from(error))),
        }
    }
}

/// Chosen for every other output: `return_on_locked` answers both cases.
pub trait RefusalAsFallback<R> {
    /// Always `None`.
    fn into_output(self) -> Option<R>;
}

impl<R> RefusalAsFallback<R> for &Refused<R> {
    #[inline]
    fn into_output(self) -> Option<R> {
        None
    }
}

/// Converts a refused lock or slot (`Locked`, `PoolFull` or `Backend`) into the function's error type.
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

/// One rendered tag of a `#[cached(tags = [..])]` call.
#[inline]
pub fn tag(template: &KeyTemplate, values: &[&dyn Display]) -> String {
    crate::keyspace::render_tag(template, values)
}

/// `<fn>_clear`: deletes every entry of a `#[cached]` template.
/// `integers` says, per placeholder, whether its parameter is a primitive
/// integer (which renders as digits and `-` only).
pub async fn clear(
    client: &Cachify,
    template: &KeyTemplate,
    integers: &'static [bool],
) -> Result<u64, Error> {
    client
        .core()
        .clear_template::<Async>(KeyKind::Cached, template, integers)
        .await
}

/// Blocking [`clear`].
pub fn clear_blocking(
    client: &Cachify,
    template: &KeyTemplate,
    integers: &'static [bool],
) -> Result<u64, Error> {
    drive(
        client
            .core()
            .clear_template::<Blocking>(KeyKind::Cached, template, integers),
    )
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

/// The siblings of stacked attributes: every layer's answer to `_reset` or
/// `_release`, in order; the first error, if any.
pub fn all_layers<const N: usize>(answers: [Result<(), Error>; N]) -> Result<(), Error> {
    answers.into_iter().collect()
}

/// `_clear` of stacked attributes: how many entries every layer deleted;
/// the first error, if any (every layer is tried).
pub fn total_of_layers<const N: usize>(answers: [Result<u64, Error>; N]) -> Result<u64, Error> {
    let mut total = 0u64;
    for answer in answers {
        total = total.saturating_add(answer?);
    }
    Ok(total)
}

/// `_pool_size` of stacked attributes: the most slots in use of any pool
/// layer; the first error, if any (every layer is asked).
pub fn busiest_layer<const N: usize>(answers: [Result<usize, Error>; N]) -> Result<usize, Error> {
    let mut busiest = 0;
    for answer in answers {
        busiest = busiest.max(answer?);
    }
    Ok(busiest)
}

/// `_is_locked` of stacked attributes: whether any layer's lock is held;
/// the first error, if any.
pub fn any_layer<const N: usize>(answers: [Result<bool, Error>; N]) -> Result<bool, Error> {
    let mut held = false;
    for answer in answers {
        held |= answer?;
    }
    Ok(held)
}

/// Takes a slot for a `#[pooled]` call, in either mode.
async fn pool_acquire_in<M: Mode>(
    client: &Cachify,
    site: &'static Site,
    key: String,
    max_size: usize,
    ttl: Option<Duration>,
    wait: Duration,
) -> Result<PoolSlot, Error> {
    let tally = site.tally(client.core().health());
    client
        .pools()
        .acquire::<M>(key, max_size, ttl, wait, &tally)
        .await
}

/// Takes a slot for a `#[pooled]` call.
pub async fn pool_acquire(
    client: &Cachify,
    site: &'static Site,
    key: String,
    max_size: usize,
    ttl: Option<Duration>,
    wait: Duration,
) -> Result<PoolSlot, Error> {
    pool_acquire_in::<Async>(client, site, key, max_size, ttl, wait).await
}

/// Blocking twin of [`pool_acquire`].
pub fn pool_acquire_blocking(
    client: &Cachify,
    site: &'static Site,
    key: String,
    max_size: usize,
    ttl: Option<Duration>,
    wait: Duration,
) -> Result<PoolSlot, Error> {
    drive(pool_acquire_in::<Blocking>(
        client, site, key, max_size, ttl, wait,
    ))
}

/// Runs an async body while holding `slot`, then releases it.
pub async fn run_pooled<F: Future>(slot: PoolSlot, body: F) -> F::Output {
    let output = body.await;
    slot.release_after_run::<Async>().await;
    output
}

/// Runs a blocking body while holding `slot`, then releases it.
pub fn run_pooled_blocking<R>(slot: PoolSlot, body: impl FnOnce() -> R) -> R {
    let output = body();
    drive(slot.release_after_run::<Blocking>());
    output
}

/// `<fn>_pool_size`: slots of the pool in use.
pub async fn pool_size(client: &Cachify, key: String) -> Result<usize, Error> {
    client.pools().size::<Async>(&key).await
}

/// Blocking `<fn>_pool_size`.
pub fn pool_size_blocking(client: &Cachify, key: String) -> Result<usize, Error> {
    drive(client.pools().size::<Blocking>(&key))
}
