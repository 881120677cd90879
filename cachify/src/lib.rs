//! Caching and locking for Rust services, in one attribute.
//!
//! - [`#[cached]`](cached) caches a function's result in Redis or in memory
//!   under a key built from its arguments, and generates `<fn>_reset`.
//! - [`#[once]`](once) lets only one caller at a time run a function for a
//!   key, across every process that shares the Redis.
//! - [`#[lock]`](macro@lock) does the same but can wait for the lock.
//! - [`lock()`] is the same lock as a value.
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
//! Everything goes through one global client, set with [`init`] at startup
//! (an in-memory client is used if `init` was never called). Sync functions
//! work with no runtime and inside any Tokio runtime; async functions need
//! Tokio.
//!
//! The cache path fails open: if Redis errors or times out, the function
//! runs and its value is returned. Locks fail closed: a backend error is
//! `Err(Error::Backend)`, never a run without the lock.

#![warn(missing_docs)]

mod cache;
mod client;
mod codec;
mod error;
mod flight;
mod global;
mod health;
#[cfg(feature = "axum")]
pub mod http;
mod io;
mod keyspace;
mod locks;
mod mode;
mod observe;
mod site;
mod store;
mod value;

#[doc(hidden)]
pub mod __private;

pub use cachify_macros::{cached, lock, once};

pub use crate::client::{Cachify, CachifyBuilder};
pub use crate::codec::Codec;
pub use crate::error::{BackendError, CodecError, Error};
pub use crate::global::{global, init, lock};
pub use crate::health::{BreakerState, Stats};
pub use crate::locks::{LockBuilder, LockGuard};
pub use crate::observe::{CallKind, LOCK_API_TEMPLATE, TemplateStats};
pub use crate::value::CacheValue;
