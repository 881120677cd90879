//! The one global client the macros use unless told otherwise.

use std::sync::OnceLock;

use crate::client::Cachify;
use crate::error::Error;
use crate::locks::LockBuilder;

static GLOBAL: OnceLock<Cachify> = OnceLock::new();

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

/// The client in force: the one given to [`init`], or, if cachify was used
/// before any `init`, an in-process memory client (with one warning logged).
///
/// ```
/// assert_eq!(cachify::global().prefix(), "cachify:");
/// ```
pub fn global() -> &'static Cachify {
    GLOBAL.get_or_init(|| {
        tracing::warn!(
            "cachify was used before `cachify::init`; falling back to an in-process memory client"
        );
        Cachify::memory_fallback()
    })
}

/// Starts building a lock on the global client (see [`global`]).
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
