//! Attribute macros for [cachify](https://docs.rs/cachify): `#[cached]`, `#[once]`, `#[lock]` and `#[pooled]`,
//! and `#[trait_impl]`, which lets them work on the methods of a trait implementation.
//!
//! Use them through the `cachify` crate, which re-exports them; the code they
//! generate calls into `cachify` and does nothing on its own.

mod analysis;
mod attr;
mod expand;
mod fmt;
mod shape;
mod stack;
mod trait_impl;
mod valid;

use proc_macro::TokenStream;

use crate::attr::Kind;

/// Caches the result of a function under a key built from its arguments.
///
/// ```
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use cachify::cached;
///
/// #[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
/// struct User {
///     id: i64,
///     name: String,
/// }
///
/// #[derive(Debug)]
/// struct NotFound;
///
/// static QUERIES: AtomicU32 = AtomicU32::new(0);
///
/// #[cached("user-{user_id}", ttl = 300)]
/// async fn read_user(user_id: i64) -> Result<User, NotFound> {
///     QUERIES.fetch_add(1, Ordering::Relaxed); // stands for a database query
///     Ok(User { id: user_id, name: format!("user {user_id}") })
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), cachify::Error> {
/// let first = read_user(42).await.unwrap(); // runs the body, stores the `Ok`
/// let again = read_user(42).await.unwrap(); // answered from the cache
/// assert_eq!(first, again);
/// assert_eq!(QUERIES.load(Ordering::Relaxed), 1);
///
/// // Generated beside it: drop the cached value after a write.
/// read_user_reset(42).await?;
/// read_user(42).await.unwrap();
/// assert_eq!(QUERIES.load(Ordering::Relaxed), 2);
/// # Ok(()) }
/// ```
///
/// The first call with a given key runs the body and stores its result; later
/// calls return the stored copy until it expires. What is stored depends on
/// the return type: for a `Result` (any type spelled `Result`, `io::Result`,
/// `AppResult`, ...) only `Ok` values are cached and errors always run again;
/// for an `Option` (also inside `Ok`) only `Some` is cached, unless
/// `none_ttl` is given; with feature `axum`, `Json<T>` stores its `T`; any
/// other type is cached whole. The value must serialize and clone (see the
/// `cachify` docs for the exact bounds). An `impl Trait` output or an HTTP
/// response (`(StatusCode, Json<T>)`) cannot be stored: the error says to
/// cache an inner function or use `cachify::http::CacheLayer`.
///
/// # Key template
///
/// The first argument is a string such as `"user-{user_id}"`. Each `{name}`
/// placeholder (or `<name>`, the same thing) is replaced by the value of the
/// parameter `name`, formatted with `Display`; `{name:?}` formats it with
/// `Debug` instead (escaped alike). It may also read fields:
/// `{user.id}`, `{pair.0}`, `{self.tenant}`. Parameters bound by patterns
/// count too: with `Path(id): Path<i64>`, write `{id}`. `{{`, `}}`, `<<` and
/// `>>` stand for a literal `{`, `}`, `<` and `>`. Two placeholders need some
/// literal text between them (`"{a}:{b}"`, not `"{a}{b}"`), so that
/// different arguments never produce the same key.
///
/// # Options
///
/// Written after the template as `name = value`, separated by commas:
///
/// - `ttl = 300`: how long a value stays cached. An integer literal is a
///   number of seconds (at least 1); anything else must be an expression of
///   type `core::time::Duration`, e.g. `ttl = Duration::from_millis(500)`.
///   Without it the client's `default_ttl` applies (no expiry unless set).
///   `ttl = None`: the entry never expires, even when the client has a
///   `default_ttl`.
/// - `none_ttl = 5`: store a `None` output (or `Ok(None)`) too, for this
///   long (seconds or a `Duration`); without it `None` is never stored, so a
///   row created after a miss is seen at once.
/// - `unless = <expr>`: a predicate `Fn(&T) -> bool` on the value that would
///   be stored (the `Ok` value for a `Result`); when it returns `true` the
///   value is returned but not cached, e.g. `unless = |user: &User| user.is_admin`.
/// - `lock = true`: concurrent misses in *different processes* also run
///   the body once. The first process takes a short-lived lock on the key
///   and computes; the others wait for its value (up to the client's
///   `fill_wait` per holder of that lock, then compute themselves). Single flight within one process
///   is always on.
/// - `client = <expr>`: a `&cachify::Cachify` to use instead of the global
///   client, e.g. `client = &self.cache`. It may use `self` and the
///   parameters; it is evaluated before the body runs and stays borrowed
///   while the body runs, so it must not borrow a parameter that the body
///   moves or mutates (use a `&'static` client there).
/// - `tags = ["user:{id}", "users"]`: string literals, each a template
///   written like the key template. The value is stored under each
///   rendered tag (values as they format, unescaped), and
///   `cachify::invalidate_tags(["user:42"])` deletes it with every other
///   entry under that tag. A call that read its data before an
///   invalidation and stores its value after it has that value deleted.
/// - `codec = <expr>`: a `cachify::Codec` (e.g. `Codec::Json`, with feature
///   `json`) that writes and reads this function's entries instead of the
///   client's codec. In-process values (the memory backend, the near
///   cache's copies) are not encoded, so there it only changes the bytes
///   in Redis.
/// - `stale_if_error = 3600`: keep the value this much longer than its TTL
///   (seconds, at least 1, or a `Duration`). After the TTL a caller
///   recomputes; if the body returns what is not stored (an `Err`, or a
///   `None` without `none_ttl`), that caller gets the stale value instead,
///   with a warning and the `stale` counter. A successful output always
///   answers, and replaces the value.
/// - `early_refresh = true` (a literal): a hit shortly before expiry starts
///   one recomputation in the background (XFetch: the closer to expiry, and
///   the slower the body was, the likelier), once across processes, while
///   every caller keeps getting the cached value at once. The body then
///   runs on clones of the arguments, so they must be
///   `Clone + Send + 'static` (and an async body's future `Send`); methods
///   taking `self` are refused.
///
/// ```
/// use cachify::cached;
///
/// #[cached("top-{region}", ttl = 60, early_refresh = true, stale_if_error = 600)]
/// fn top_products(region: String) -> Result<Vec<String>, String> {
///     Ok(vec![format!("best seller in {region}")])
/// }
///
/// assert_eq!(top_products("eu".into()).unwrap().len(), 1);
/// assert_eq!(top_products("eu".into()).unwrap().len(), 1); // a hit
/// ```
///
/// With Redis, every process that shares it shares the entries. Here a
/// `Duration` TTL and `lock = true`, so a miss runs the body once across
/// all processes:
///
/// ```no_run
/// use std::time::Duration;
/// use cachify::{Cachify, cached};
///
/// #[cached("rate-{currency}", ttl = Duration::from_secs(30), lock = true)]
/// async fn exchange_rate(currency: String) -> Result<f64, std::io::Error> {
///     Ok(1.08) // stands for a slow call to a rates service
/// }
///
/// #[tokio::main]
/// async fn main() -> Result<(), Box<dyn std::error::Error>> {
///     let client = Cachify::builder().redis("redis://127.0.0.1:6379/0").build().await?;
///     cachify::init(client)?;
///     let rate = exchange_rate("EUR".to_owned()).await?;
///     println!("EUR: {rate}");
///     Ok(())
/// }
/// ```
///
/// # Stacking
///
/// `#[cached]`, `#[once]` and `#[lock]` on one function compose, and the
/// first written is the outermost layer, as Python's decorators read. The
/// first attribute expands the ones below it too, so the stack has one set
/// of siblings: `<fn>_reset` deletes the entry of every `#[cached]` layer,
/// innermost first, and `<fn>_clear` every entry of each; `<fn>_is_locked`
/// and `<fn>_release` answer for every lock layer, and `<fn>_pool_size` for
/// the busiest `#[pooled]` layer. Each sibling takes the parameters any
/// layer's key uses.
///
/// ```
/// use std::sync::LazyLock;
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use cachify::{Cachify, cached, once};
///
/// #[derive(Debug)]
/// enum AppError {
///     Busy,
///     Cache(cachify::Error),
/// }
///
/// impl From<cachify::Error> for AppError {
///     fn from(error: cachify::Error) -> Self {
///         AppError::Cache(error)
///     }
/// }
///
/// static LOCAL: LazyLock<Cachify> =
///     LazyLock::new(|| Cachify::builder().memory().build_blocking().unwrap());
/// static LOADS: AtomicU32 = AtomicU32::new(0);
///
/// #[cached("config-{name}", client = &LOCAL, ttl = 5)] // in this process, briefly
/// #[cached("config-{name}", ttl = 300)] // then the global client (Redis, say)
/// #[once("config-{name}", return_on_locked = Err(AppError::Busy))] // a miss loads under a lock
/// async fn config(name: &str) -> Result<String, AppError> {
///     LOADS.fetch_add(1, Ordering::Relaxed); // stands for a slow load
///     Ok(format!("{name}: on"))
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), cachify::Error> {
/// config("search").await.unwrap();
/// config("search").await.unwrap(); // the first layer answers
/// assert_eq!(LOADS.load(Ordering::Relaxed), 1);
///
/// config_reset("search").await?; // both cached layers
/// assert!(!config_is_locked("search").await?);
/// config("search").await.unwrap();
/// assert_eq!(LOADS.load(Ordering::Relaxed), 2);
/// # Ok(()) }
/// ```
///
/// Two layers of one kind with the same template and the same `client`
/// expression are a compile error: they would share one key. The layers
/// are found by their path (`cached`, `cachify::cached`,
/// `::cachify::cached`, ...); one imported under another name is not part
/// of the stack above it, and expands on its own, outside it.
///
/// # Generated `<fn>_reset` and `<fn>_clear`
///
/// A sibling function named `<fn>_reset` is generated right after the
/// function (inside an `impl` block it is an associated function beside it).
/// It takes only the parameters the key template (and the `client`
/// expression) use, plus `&self` if they use `self`, and returns
/// `Result<(), cachify::Error>`. It is `async` when the function is. Because
/// it is an extra item, a method of a trait implementation needs
/// [`macro@trait_impl`] on its `impl` block, which moves the siblings to an
/// inherent `impl` of the type.
///
/// `<fn>_clear` deletes the entries of every argument and returns how many,
/// as `Result<u64, cachify::Error>`. It takes only the parameters the
/// `client` expression uses (none for the global client). It finds the
/// keys with `SCAN` (on every primary of a cluster) and checks each against
/// the template, so a template that shares only its literal start is left
/// alone. A placeholder of a primitive integer parameter matches digits
/// only; any other value may hold any text, so a key this template could
/// itself have rendered is deleted (with `id: &str`, `"user-{id}"` also
/// matches `"user-settings-5"`).
///
/// ```
/// #[cachify::cached("square-{n}")]
/// fn square(n: u64) -> u64 {
///     n * n
/// }
///
/// square(2);
/// square(3);
/// assert_eq!(square_clear()?, 2);
/// # Ok::<(), cachify::Error>(())
/// ```
#[proc_macro_attribute]
pub fn cached(args: TokenStream, item: TokenStream) -> TokenStream {
    expand_function(Kind::Cached, args, item)
}

/// Runs a function at most once at a time per key, across every process
/// sharing the backend; a call made while another holds the lock does not run.
///
/// ```
/// use cachify::once;
///
/// #[derive(Debug)]
/// enum AppError {
///     Busy,
///     Cache(cachify::Error),
/// }
///
/// impl From<cachify::Error> for AppError {
///     fn from(error: cachify::Error) -> Self {
///         AppError::Cache(error)
///     }
/// }
///
/// #[once("update-user-{user_id}", return_on_locked = Err(AppError::Busy))]
/// async fn update_user(user_id: i64, name: String) -> Result<String, AppError> {
///     // While the body runs the lock is held: the same call made now, in
///     // this process or another, returns `Err(AppError::Busy)`.
///     assert!(update_user_is_locked(user_id).await?);
///     Ok(name)
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), cachify::Error> {
/// assert_eq!(update_user(7, "ada".to_owned()).await.unwrap(), "ada");
///
/// // Generated beside it:
/// let busy: bool = update_user_is_locked(7).await?; // released when the body returned
/// assert!(!busy);
/// update_user_release(7).await?; // frees a lock left by a crashed process
/// # Ok(()) }
/// ```
///
/// The lock is taken before the body runs and released when it finishes.
/// When it cannot be taken (another call holds it, or the backend failed:
/// locks never run unprotected), the function returns at once without
/// running the body: `return_on_locked` if given and the lock is held
/// elsewhere, otherwise `Err(E::from(error))` where `error` is the
/// `cachify::Error` that refused the lock; the latter needs a return type
/// `Result<_, E>` with `E: From<cachify::Error>`. Busy is not broken: with
/// `return_on_locked`, a backend failure is still `Err(E::from(error))`
/// when the return type allows it, and `return_on_locked` only otherwise.
///
/// The key template is written as for [`macro@cached`]; `#[once]` keys live
/// in their own key space. It stacks with the other attributes, the first
/// written outermost: see [`macro@cached`].
///
/// # Options
///
/// - `ttl = 30`: the lock's lease. It is renewed while the body runs, so it
///   only decides how soon the lock frees itself when its holder dies without
///   releasing it. Integer seconds (at least 1) or a `core::time::Duration`
///   expression; without it the client's `lock_ttl` applies.
/// - `return_on_locked = <expr>`: the value returned when the lock is held
///   elsewhere (and when the backend fails, if the return type cannot carry
///   a `cachify::Error`). It may use the function's parameters.
/// - `client = <expr>`: a `&cachify::Cachify` to use instead of the global client.
///
/// # Generated siblings
///
/// `<fn>_is_locked` returns `Result<bool, cachify::Error>`, whether the lock
/// for these arguments is held now; `<fn>_release` returns
/// `Result<(), cachify::Error>` and deletes the lock whoever holds it. Their
/// parameters are those the key template uses, as for `<fn>_reset` of
/// [`macro@cached`], and they are `async` when the function is.
#[proc_macro_attribute]
pub fn once(args: TokenStream, item: TokenStream) -> TokenStream {
    expand_function(Kind::Once, args, item)
}

/// Runs a function while holding a lock on a key built from its arguments,
/// waiting up to `wait` for the lock when another call holds it.
///
/// ```
/// use cachify::lock;
///
/// #[derive(Debug)]
/// enum AppError {
///     Cache(cachify::Error),
/// }
///
/// impl From<cachify::Error> for AppError {
///     fn from(error: cachify::Error) -> Self {
///         AppError::Cache(error)
///     }
/// }
///
/// #[lock("report-{id}", wait = 10, ttl = 30)]
/// fn build_report(id: u64) -> Result<String, AppError> {
///     Ok(format!("report {id}")) // runs under the lock
/// }
///
/// assert_eq!(build_report(7).unwrap(), "report 7");
///
/// // Generated beside it (plain functions here, because `build_report` is one):
/// let busy = build_report_is_locked(7)?;
/// assert!(!busy);
/// build_report_release(7)?;
/// # Ok::<(), cachify::Error>(())
/// ```
///
/// Calls with the same key run one after another; calls with different keys
/// run in parallel. If the lock is still held after `wait`, the function
/// returns without running the body, like [`macro@once`]. On a plain `fn`
/// the wait blocks the thread.
///
/// # Options
///
/// - `ttl = 30`: the lock's lease, renewed while the body runs, as for
///   [`macro@once`]. Integer seconds (at least 1) or a `core::time::Duration`
///   expression; without it the client's `lock_ttl` applies.
/// - `wait = 10`: how long to wait for the lock. Integer seconds (`0` means
///   do not wait) or a `core::time::Duration` expression; default zero.
/// - `return_on_locked = <expr>`: the value returned when the lock could not
///   be taken in time, as for [`macro@once`]. Without it the return type must
///   be `Result<_, E>` with `E: From<cachify::Error>`.
/// - `client = <expr>`: a `&cachify::Cachify` to use instead of the global client.
///
/// The key template and the generated `<fn>_is_locked` and `<fn>_release`
/// work as for [`macro@once`]; `#[lock]` keys live in their own key space.
/// It stacks with the other attributes, the first written outermost: see
/// [`macro@cached`].
#[proc_macro_attribute]
pub fn lock(args: TokenStream, item: TokenStream) -> TokenStream {
    expand_function(Kind::Lock, args, item)
}

/// Caps how many calls run at once per key, across every process sharing
/// the backend: a distributed semaphore of `max_size` slots.
///
/// ```
/// use cachify::pooled;
///
/// #[derive(Debug)]
/// enum AppError {
///     Cache(cachify::Error),
/// }
///
/// impl From<cachify::Error> for AppError {
///     fn from(error: cachify::Error) -> Self {
///         AppError::Cache(error)
///     }
/// }
///
/// // At most three exports per tenant at once; a fourth gets
/// // `Err(AppError::Cache(cachify::Error::PoolFull { .. }))`.
/// #[pooled("export-{tenant}", max_size = 3)]
/// async fn export(tenant: u64) -> Result<String, AppError> {
///     // While the body runs it holds one of the three slots.
///     assert_eq!(export_pool_size(tenant).await?, 1);
///     Ok(format!("export of {tenant}"))
/// }
///
/// // Waits up to 5 s for a slot; when none frees, returns `None`.
/// #[pooled("thumb-{id}", max_size = 8, ttl = 600, wait = 5, return_on_full = None)]
/// fn thumbnail(id: u64) -> Option<Vec<u8>> {
///     Some(vec![0; 16]) // runs under a slot
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), AppError> {
/// assert_eq!(export(7).await?, "export of 7");
/// assert_eq!(export_pool_size(7).await?, 0); // released when the body returned
/// assert!(thumbnail(1).is_some());
/// # Ok(()) }
/// ```
///
/// A slot is taken before the body runs and released when it finishes
/// (also on panic, and when the future is dropped). When no slot can be
/// taken (all `max_size` are held, or the backend failed: a pool never
/// runs its body unprotected), the function returns at once without
/// running the body: `return_on_full` if given and the pool is full,
/// otherwise `Err(E::from(error))` where `error` is the `cachify::Error`
/// that refused the slot ([`PoolFull`](https://docs.rs/cachify/latest/cachify/enum.Error.html#variant.PoolFull)
/// for a full pool); the latter needs a return type `Result<_, E>` with
/// `E: From<cachify::Error>`. Busy is not broken: with `return_on_full`, a
/// backend failure is still `Err(E::from(error))` when the return type
/// allows it, and `return_on_full` only otherwise.
///
/// The key template is written as for [`macro@cached`]; pools live in their
/// own key space, shared with `cachify::pool(name, max_size)` values of the
/// same rendered name.
///
/// # Options
///
/// - `max_size = 3` (required): how many calls with one key may run at
///   once; any expression of type `usize`. A literal `0` is refused at
///   compile time, a zero at run time is an `Err(cachify::Error::Config)`.
/// - `ttl = 30`: a slot's lease, renewed by a watchdog while the body runs,
///   so it only decides how soon a crashed holder's slot frees itself.
///   Integer seconds (at least 1) or a `core::time::Duration` expression;
///   without it the client's `lock_ttl` applies.
/// - `wait = 5`: how long to wait for a free slot. Integer seconds (`0`
///   means do not wait) or a `core::time::Duration` expression; default zero.
///   On a plain `fn` the wait blocks the thread.
/// - `return_on_full = <expr>`: the value returned when the pool is full
///   (and when the backend fails, if the return type cannot carry a
///   `cachify::Error`). It may use the function's parameters.
/// - `client = <expr>`: a `&cachify::Cachify` to use instead of the global client.
///
/// # Generated sibling
///
/// `<fn>_pool_size` returns `Result<usize, cachify::Error>`, how many slots
/// of the pool for these arguments are held now. Its parameters are those
/// the key template uses, as for `<fn>_reset` of [`macro@cached`], and it
/// is `async` when the function is.
#[proc_macro_attribute]
pub fn pooled(args: TokenStream, item: TokenStream) -> TokenStream {
    expand_function(Kind::Pooled, args, item)
}

fn expand_function(kind: Kind, args: TokenStream, item: TokenStream) -> TokenStream {
    let args = args.into();
    if stack::already_expanded(&args) {
        return item;
    }
    expand::expand(kind, args, item.into()).into()
}

/// Lets `#[cached]`, `#[once]`, `#[lock]` and `#[pooled]` work on the methods of an
/// `impl Trait for Type` block.
///
/// ```
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use cachify::cached;
///
/// #[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
/// struct User {
///     id: i64,
/// }
///
/// trait UserStore {
///     async fn find(&self, id: i64) -> Result<User, cachify::Error>;
/// }
///
/// struct PgStore;
/// static QUERIES: AtomicU32 = AtomicU32::new(0);
///
/// #[cachify::trait_impl]
/// impl UserStore for PgStore {
///     #[cached("user-{id}", ttl = 300)]
///     async fn find(&self, id: i64) -> Result<User, cachify::Error> {
///         QUERIES.fetch_add(1, Ordering::Relaxed); // stands for a query
///         Ok(User { id })
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), cachify::Error> {
/// let store = PgStore;
/// assert_eq!(store.find(7).await?, User { id: 7 });
/// assert_eq!(store.find(7).await?, User { id: 7 });
/// assert_eq!(QUERIES.load(Ordering::Relaxed), 1);
///
/// // The sibling lives in an inherent `impl PgStore`. This key does not use
/// // `self`, so neither does the sibling (one that did would be `store.find_reset(7)`).
/// PgStore::find_reset(7).await?;
/// store.find(7).await?;
/// assert_eq!(QUERIES.load(Ordering::Relaxed), 2);
/// # Ok(()) }
/// ```
///
/// A sibling such as `find_reset` is not a member of the trait, so it cannot
/// sit beside the method as it does in an inherent `impl`. This attribute
/// expands each method's `#[cached]`, `#[once]`, `#[lock]` or `#[pooled]` (or a stack of
/// them, as on a function; written bare,
/// as `cachify::cached` or as `::cachify::cached`; a renamed import is not
/// recognised) exactly as on a function, keeps the wrapped method in the trait
/// impl and puts its siblings in `impl<..> Type { .. }`, with the impl's
/// generic parameters that `Type` names and their bounds. The siblings
/// follow the usual rules: only the parameters the key uses, `&self` when it
/// uses `self`, `async` when the method is. A parameter type written
/// `Self::Id`, for an associated type of this impl, is spelled
/// `<Self as Trait>::Id` in the method and its siblings.
///
/// The siblings are `pub` (they reach as far as the trait's methods do, and
/// no farther than `Type`); give another visibility as the argument, e.g.
/// `#[cachify::trait_impl(pub(crate))]`.
///
/// Without this attribute, rustc reports each sibling as "not a member of
/// trait", and the method gets a second error that names
/// `#[cachify::trait_impl]`. That error needs a function known to sit in an
/// `impl` and a sibling it can name: an associated function that neither
/// takes `self` nor names `Self` (in its signature or its body), or a
/// `#[once]`, `#[lock]` or `#[pooled]` key with an `impl Trait` parameter,
/// gets rustc's error alone. The check names the sibling as
/// `Self::<fn>_reset` (or `_is_locked`, `_pool_size`), which is ambiguous
/// in a trait's default method whose supertrait has a same-named default
/// method with a cachify attribute, and in an `impl dyn Trait` whose trait
/// declares the sibling's name: rename one of the two.
///
/// With `#[async_trait]`, write `#[cachify::trait_impl]` above it, so the
/// methods are expanded while they are still `async fn`s; `#[async_trait]`
/// then boxes the wrapped bodies. Below it, the methods are already
/// rewritten and this is a compile error that says so.
///
/// A trait's own default methods need no attribute: `#[cached]` written in
/// the trait makes the siblings provided methods of the trait. Every
/// implementor then shares the key unless the template tells them apart
/// (say `{self.name}`), and a sibling without `&self` makes the trait
/// not `dyn`-compatible.
///
/// `impl Trait for Type` where `Type` cannot have an inherent impl in this
/// crate (a foreign type, a reference, `dyn Trait`) has nowhere to put the
/// siblings: rustc rejects the generated `impl`.
#[proc_macro_attribute]
pub fn trait_impl(args: TokenStream, item: TokenStream) -> TokenStream {
    trait_impl::expand(args.into(), item.into()).into()
}
