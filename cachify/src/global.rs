//! The one global client the macros use unless told otherwise, and the
//! scopes that put another client in its place for a stretch of code.
//!
//! A scope's client is kept in a thread-local slot while the scoped code
//! runs on a thread: for [`scope_blocking`] for the length of the call, for
//! [`scope`] for the length of each poll of its future, on whichever thread
//! polls it. [`global`] reads that slot first, one thread-local load, which
//! keeps the in-process hit path as fast as without scopes.

use std::cell::Cell;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll};

use crate::client::Cachify;
use crate::error::Error;
use crate::locks::LockBuilder;
use crate::pools::PoolBuilder;

static GLOBAL: OnceLock<Cachify> = OnceLock::new();

thread_local! {
    /// The client of the innermost scope running on this thread.
    static SCOPED: Cell<Option<&'static Cachify>> = const { Cell::new(None) };
}

/// Makes `client` the global client. Call it once, at startup, before the
/// first cached call.
///
/// A second call, or a call after cachify already fell back to its memory
/// client, returns [`Error::AlreadyInitialized`] and changes nothing.
///
/// ```
/// let client = cachify::Cachify::builder().memory().build_blocking()?;
/// cachify::init(client)?;
/// let again = cachify::Cachify::builder().memory().build_blocking()?;
/// assert!(matches!(cachify::init(again), Err(cachify::Error::AlreadyInitialized)));
/// # Ok::<(), cachify::Error>(())
/// ```
pub fn init(client: Cachify) -> Result<(), Error> {
    GLOBAL.set(client).map_err(|_| Error::AlreadyInitialized)
}

/// The client in force: inside [`scope`] or [`scope_blocking`], the
/// scope's client; otherwise the one given to [`init`], or, if cachify was
/// used before any `init`, an in-process memory client (with one warning
/// logged).
///
/// This is the client every `#[cached]`, `#[once]`, `#[lock]` and
/// `#[pooled]` function without a `client = ..` argument uses, and
/// [`lock()`] and [`pool()`].
///
/// ```
/// assert_eq!(cachify::global().prefix(), "cachify:");
/// let other = cachify::Cachify::builder().prefix("test:").build_blocking()?;
/// cachify::scope_blocking(&other, || assert_eq!(cachify::global().prefix(), "test:"));
/// # Ok::<(), cachify::Error>(())
/// ```
#[inline]
pub fn global() -> &'static Cachify {
    if let Some(scoped) = SCOPED.with(Cell::get) {
        return scoped;
    }
    match GLOBAL.get() {
        Some(global) => global,
        None => fallback(),
    }
}

/// The global client on its first use: the fallback memory client if
/// `init` was never called. Kept out of line, off the hit path.
#[cold]
#[inline(never)]
fn fallback() -> &'static Cachify {
    GLOBAL.get_or_init(|| {
        tracing::warn!(
            "cachify was used before `cachify::init`; falling back to an in-process memory client"
        );
        Cachify::memory_fallback()
    })
}

/// Starts building a lock on the global client (see [`global`]), as it is
/// when the lock is taken: acquired inside a [`scope`], the lock is the
/// scope's client's.
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
    LockBuilder::on_global(name.into(), || &global().core().locks)
}

/// Starts building a pool of at most `max_size` concurrent holders on the
/// global client (see [`global`]), as it is when the pool is used, like
/// [`lock()`]: a distributed semaphore across every process sharing the
/// backend.
///
/// `name` is used as written: `cachify::pool("export-7", 3)` and
/// `#[pooled("export-{tenant}", max_size = 3)]` called with `tenant = 7`
/// share one pool. Callers of one pool should agree on `max_size`: each
/// caller is admitted while fewer than its own `max_size` slots are held.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), cachify::Error> {
/// use std::time::Duration;
///
/// let slot = cachify::pool("exports", 3)
///     .ttl(Duration::from_secs(60))
///     .wait(Duration::from_secs(5))
///     .acquire()
///     .await?;
/// assert_eq!(cachify::pool("exports", 3).size().await?, 1); // slots in use
/// // ... at most three holders run this at once, across every process ...
/// slot.release().await?;
/// # Ok(()) }
/// ```
pub fn pool(name: impl Into<String>, max_size: usize) -> PoolBuilder<'static> {
    PoolBuilder::on_global(name.into(), max_size, || global().pools())
}

/// Deletes every entry stored under any of `tags`, on the global client
/// (see [`global`]); see [`Cachify::invalidate_tags`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), cachify::Error> {
/// #[cachify::cached("user-{id}", tags = ["user:{id}", "users"])]
/// async fn profile(id: u64) -> String {
///     format!("user {id}")
/// }
///
/// profile(42).await;
/// cachify::invalidate_tags(["user:42"]).await?; // profile(42) runs again next time
/// # Ok(()) }
/// ```
pub fn invalidate_tags<I>(tags: I) -> impl Future<Output = Result<(), Error>> + Send
where
    I: IntoIterator,
    I::Item: AsRef<str>,
{
    global().invalidate_tags(tags)
}

/// Blocking twin of [`invalidate_tags`].
///
/// ```
/// cachify::invalidate_tags_blocking(["users"])?;
/// # Ok::<(), cachify::Error>(())
/// ```
pub fn invalidate_tags_blocking<I>(tags: I) -> Result<(), Error>
where
    I: IntoIterator,
    I::Item: AsRef<str>,
{
    global().invalidate_tags_blocking(tags)
}

/// Deletes every cached value of the global client (see [`global`]):
/// `#[cached]` entries and HTTP responses, never a lock. See
/// [`Cachify::clear`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), cachify::Error> {
/// let deleted = cachify::clear().await?;
/// # Ok(()) }
/// ```
pub fn clear() -> impl Future<Output = Result<u64, Error>> + Send {
    global().clear()
}

/// Blocking twin of [`clear`].
///
/// ```
/// let deleted = cachify::clear_blocking()?;
/// # Ok::<(), cachify::Error>(())
/// ```
pub fn clear_blocking() -> Result<u64, Error> {
    global().clear_blocking()
}

/// Runs `future` with `client` in place of the global client.
///
/// Everything the future does while it runs sees `client` as [`global`]:
/// `#[cached]`, `#[once]`, `#[lock]` and `#[pooled]` functions without a
/// `client = ..` argument, async or sync, their `_reset`, `_release`,
/// `_is_locked` and `_pool_size` siblings, and [`lock()`] and [`pool()`]. That holds across `.await`s and whichever
/// worker thread polls the future. Scopes nest: the innermost one wins, and
/// the outer one is back when it ends. [`init`] is not needed, and an
/// `init` done elsewhere is not touched.
///
/// Its main use is tests: give each `#[tokio::test]` its own memory client,
/// and tests running in parallel in one process never see each other's
/// cached values or locks.
///
/// ```
/// use cachify::{Cachify, cached};
///
/// #[cached("greeting-{name}")]
/// async fn greeting(name: &str) -> String {
///     format!("hello {name}")
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), cachify::Error> {
/// let client = Cachify::builder().memory().build().await?;
/// cachify::scope(&client, async {
///     assert_eq!(greeting("ada").await, "hello ada");
/// })
/// .await;
/// assert_eq!(client.stats().misses, 1, "the call used the scope's client");
/// # Ok(()) }
/// ```
///
/// A task started with `tokio::spawn` (or any other executor's spawn)
/// inside the scope is not part of it: it runs on its own, outside this
/// future, and sees the global client. Scope the spawned future too:
/// `tokio::spawn(cachify::scope(&client, work))`.
///
/// The client is kept alive until the process ends, because scoped code
/// may hold `&'static` references to it (from [`global`], and in the code
/// the macros generate). Scoping the same client (or a clone of it) again
/// keeps nothing more; each new client scoped keeps its store, so make one
/// client per test, not one per call.
pub fn scope<F: Future>(client: &Cachify, future: F) -> Scoped<F> {
    Scoped {
        client: kept(client),
        future: Some(Box::pin(future)),
    }
}

/// Runs `body` on this thread with `client` in place of the global client.
///
/// The sync counterpart of [`scope`]: every cachify call `body` makes on
/// this thread, including through a runtime's `block_on`, sees `client` as
/// [`global`]. The previous client is back when `body` returns or panics,
/// and scopes nest. Threads and tasks that `body` starts are not part of
/// the scope. The client is kept alive until the process ends, as with
/// [`scope`].
///
/// ```
/// use cachify::{Cachify, cached};
///
/// #[cached("square-{n}")]
/// fn square(n: u64) -> u64 {
///     n * n
/// }
///
/// let client = Cachify::builder().memory().build_blocking()?;
/// let squared = cachify::scope_blocking(&client, || {
///     square(3);
///     square(3)
/// });
/// assert_eq!(squared, 9);
/// assert_eq!((client.stats().misses, client.stats().hits), (1, 1));
/// # Ok::<(), cachify::Error>(())
/// ```
pub fn scope_blocking<R>(client: &Cachify, body: impl FnOnce() -> R) -> R {
    let _entered = Entered::new(kept(client));
    body()
}

/// The future of [`scope`]: polls the scoped future with its client in
/// force, and drops it the same way.
#[must_use = "futures do nothing unless awaited"]
pub struct Scoped<F> {
    client: &'static Cachify,
    /// Boxed so the scope can pin it without unsafe code; `None` only
    /// while the scope itself is being dropped.
    future: Option<Pin<Box<F>>>,
}

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<F::Output> {
        let _entered = Entered::new(self.client);
        match self.future.as_mut() {
            Some(future) => future.as_mut().poll(context),
            // Only `drop` empties it, and nothing polls a dropped value.
            None => unreachable!("a cachify scope was polled while being dropped"),
        }
    }
}

impl<F> Drop for Scoped<F> {
    /// Whatever the future's own destructors do (release a guard, call a
    /// `_reset`) also happens with the scope's client.
    fn drop(&mut self) {
        let _entered = Entered::new(self.client);
        drop(self.future.take());
    }
}

impl<F> std::fmt::Debug for Scoped<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scoped")
            .field("client", self.client)
            .finish_non_exhaustive()
    }
}

/// A scope in force on this thread; dropping it (also while unwinding)
/// brings back the scope that was in force before.
struct Entered {
    outer: Option<&'static Cachify>,
}

impl Entered {
    fn new(client: &'static Cachify) -> Self {
        Self {
            outer: SCOPED.replace(Some(client)),
        }
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        SCOPED.set(self.outer);
    }
}

/// A `'static` copy of `client`, made once per client.
///
/// Scoped code gets `&'static Cachify` like unscoped code, and may keep it
/// past the scope (a partly polled future can be moved out of one), so a
/// scoped client must never be freed. Copies are found again by the
/// address of the client's core, which a live client never shares.
fn kept(client: &Cachify) -> &'static Cachify {
    static KEPT: OnceLock<Mutex<HashMap<usize, &'static Cachify>>> = OnceLock::new();
    let core = std::ptr::from_ref(client.core()) as usize;
    let mut kept = KEPT
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    kept.entry(core)
        .or_insert_with(|| Box::leak(Box::new(client.clone())))
}
