//! Caching and locking for Rust services, in one attribute.
//!
//! - [`#[cached]`](macro@cached) caches a function's result in Redis, a
//!   Redis Cluster or memory under a key built from its arguments, and
//!   generates `<fn>_reset`.
//! - [`#[once]`](macro@once) lets only one caller at a time run a function
//!   for a key, across every process that shares the Redis.
//! - [`#[lock]`](macro@lock) does the same but can wait for the lock.
//! - [`lock()`] is the same lock as a value, with a fencing token.
//! - [`#[pooled]`](macro@pooled) and [`pool()`] cap how many callers run at
//!   once (a distributed semaphore).
//! - [`http::CacheLayer`][CacheLayer] caches whole axum responses (feature `axum`).
//!
//! # Quickstart
//!
//! ```toml
//! [dependencies]
//! cachify = "0.1"
//! serde = { version = "1", features = ["derive"] }
//! tokio = { version = "1", features = ["full"] }
//! ```
//!
//! Build one client at startup and make it the global one with [`init`];
//! the macros use it from then on. Without `init`, cachify falls back to an
//! in-process memory client (and logs a warning), which is what the
//! examples in these docs run on.
//!
//! ```no_run
//! use std::time::Duration;
//! use cachify::{Cachify, cached, once};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Clone, Debug, Serialize, Deserialize)]
//! struct User {
//!     id: i64,
//!     name: String,
//! }
//!
//! #[derive(Debug)]
//! enum AppError {
//!     Busy,
//!     Cache(cachify::Error),
//! }
//!
//! impl From<cachify::Error> for AppError {
//!     fn from(error: cachify::Error) -> Self {
//!         AppError::Cache(error)
//!     }
//! }
//!
//! // Cached for five minutes per user; only `Ok` values are stored.
//! #[cached("user-{user_id}", ttl = 300)]
//! async fn read_user(user_id: i64) -> Result<User, AppError> {
//!     Ok(User { id: user_id, name: format!("user {user_id}") }) // a database read
//! }
//!
//! // One update per user at a time, across every process on this Redis.
//! #[once("update-user-{user_id}", return_on_locked = Err(AppError::Busy))]
//! async fn update_user(user_id: i64, name: String) -> Result<User, AppError> {
//!     let user = User { id: user_id, name }; // a database write
//!     read_user_reset(user_id).await?; // generated beside `read_user`
//!     Ok(user)
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let client = Cachify::builder()
//!         .redis("redis://127.0.0.1:6379/0") // or .memory(), the default
//!         .prefix("myapp:")
//!         .default_ttl(Duration::from_secs(60))
//!         .build()
//!         .await?; // connects and PINGs: a bad URL or password fails here
//!     cachify::init(client)?;
//!
//!     let user = read_user(42).await;
//!     let updated = update_user(42, "ada".to_owned()).await;
//!     println!("{user:?} {updated:?}");
//!     Ok(())
//! }
//! ```
//!
//! Sync functions work too, with no runtime or inside any Tokio runtime:
//!
//! ```
//! use cachify::cached;
//!
//! #[cached("square-{n}", ttl = 300)]
//! fn square(n: u64) -> u64 {
//!     n * n
//! }
//!
//! assert_eq!(square(7), 49); // runs
//! assert_eq!(square(7), 49); // cached
//! square_reset(7)?;           // next call runs again
//! # Ok::<(), cachify::Error>(())
//! ```
//!
//! # Where to go next
//!
//! - [`CachifyBuilder`]: the backends (memory, [Redis](CachifyBuilder::redis),
//!   [Redis Cluster](CachifyBuilder::redis_cluster)), the
//!   [near cache](CachifyBuilder::near_cache), timeouts and the circuit
//!   breaker.
//! - The macros' pages: key templates, options and generated siblings.
//! - [`LockGuard`]: fencing tokens and lost-lock detection.
//! - [`invalidate_tags`] (entries stored with `#[cached(tags = [..])]`),
//!   `<fn>_clear` and [`clear`]: deleting many entries at once.
//! - [`Cachify::stats`]: hits, misses, errors and the breaker's state.
//! - [`scope`] and [`scope_blocking`]: another client in place of the global
//!   one for a stretch of code, such as one test.
//!
//! # Failure behaviour
//!
//! The cache path fails open: if Redis errors or times out, the function
//! runs and its value is returned. Locks fail closed: a backend error is
//! `Err(Error::Backend)`, never a run without the lock. The repository's
//! RELIABILITY.md states each promise and the test that proves it.
//!
//! # Features
//!
//! None is on by default.
//!
//! - `axum`: [`http`][http-module], the HTTP response cache for axum, and
//!   `#[cached]` on handlers returning axum's `Json<T>`.
//! - `metrics`: counters and a latency histogram through the `metrics`
//!   facade, labelled by kind and key template.
//! - `json`: `Codec::Json`, values stored as JSON.
//! - `bincode`: `Codec::Bincode`, values stored with bincode 2 (opt-in:
//!   bincode is unmaintained and not self-describing).
//! - `tls`: `rediss://` URLs, with rustls and the webpki roots.
//!
// Links into the `axum` feature's module: local when it is built (docs.rs
// builds every feature), docs.rs otherwise.
#![cfg_attr(feature = "axum", doc = "[CacheLayer]: http::CacheLayer")]
#![cfg_attr(feature = "axum", doc = "[http-module]: http")]
#![cfg_attr(
    not(feature = "axum"),
    doc = "[CacheLayer]: https://docs.rs/cachify/latest/cachify/http/struct.CacheLayer.html"
)]
#![cfg_attr(
    not(feature = "axum"),
    doc = "[http-module]: https://docs.rs/cachify/latest/cachify/http/index.html"
)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

mod cache;
mod client;
mod codec;
mod entry;
mod error;
mod flight;
mod global;
mod health;
#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub mod http;
mod io;
mod keyspace;
mod lease;
mod locks;
mod mode;
mod observe;
mod policy;
mod pools;
mod refresh;
mod site;
mod store;
mod value;
mod wait;

#[doc(hidden)]
pub mod __private;

pub use cachify_macros::{cached, lock, once, pooled, trait_impl};

pub use crate::client::{Cachify, CachifyBuilder};
pub use crate::codec::Codec;
pub use crate::error::{BackendError, CodecError, Error};
pub use crate::global::{
    Scoped, clear, clear_blocking, global, init, invalidate_tags, invalidate_tags_blocking, lock,
    pool, scope, scope_blocking,
};
pub use crate::health::{BreakerState, Stats};
pub use crate::locks::{LockBuilder, LockGuard};
pub use crate::observe::{CallKind, LOCK_API_TEMPLATE, POOL_API_TEMPLATE, TemplateStats};
pub use crate::pools::{PoolBuilder, PoolSlot};
pub use crate::value::CacheValue;
