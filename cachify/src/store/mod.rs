//! Where entries, locks and pools live, behind four traits.
//!
//! - [`ValueStore`]: typed cache entries. The memory store implements it
//!   directly and keeps values as they are; a [`ByteStore`] gets it from
//!   [`Encoded`], which applies the codec and the size limit.
//! - [`ByteStore`]: bytes under keys, with TTLs (Redis, Redis Cluster).
//! - [`LockStore`]: owned locks with fencing tokens.
//! - [`TagStore`]: the versions and entry indexes of cache tags.
//! - [`PoolStore`]: pools of owned slots (a distributed semaphore).
//!
//! Every operation returns a [`StoreFuture`]: an answer already known
//! (in-process stores), I/O to await, or bytes to fetch and then decode
//! where the answer is awaited. That one shape serves async and blocking
//! callers alike (see [`crate::mode`]). A new store is one file here that
//! implements the traits (for a Redis-speaking one, [`protocol::Link`]'s
//! four methods), plus its `mod` line and one builder method.

pub(crate) mod cluster;
mod encoded;
pub(crate) mod local;
pub(crate) mod memory;
pub(crate) mod near;
pub(crate) mod protocol;
pub(crate) mod redis;
mod stall;
pub(crate) mod subscriber;
pub(crate) mod tracking;
pub(crate) mod wake;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::stream::{self, StreamExt};

use crate::codec::Codec;
use crate::error::{BackendError, Error};
use crate::keyspace::{KeyMatch, Line, TagKeys};
use crate::value::{AnyValue, ValueType};

pub(crate) use self::encoded::Encoded;
pub(crate) use self::wake::Watch;

/// Longest TTL or lease handed to a store (about 100 years): Redis refuses
/// expiry times that overflow, and nobody means more.
const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
/// Shortest TTL or lease: Redis counts in milliseconds, so shorter
/// durations are rounded up to one millisecond.
const MIN_TTL: Duration = Duration::from_millis(1);

/// Rounds a TTL into the range every store accepts.
pub(crate) fn clamp_ttl(ttl: Duration) -> Duration {
    ttl.clamp(MIN_TTL, MAX_TTL)
}

/// A TTL in whole milliseconds, as Redis takes it.
pub(crate) fn millis(ttl: Duration) -> u64 {
    // clamp_ttl keeps this far below u64::MAX milliseconds.
    clamp_ttl(ttl).as_millis() as u64
}

/// I/O that runs on its own: owns everything it needs, so a blocking caller
/// can hand it to the background runtime.
pub(crate) type Io<T> = Pin<Box<dyn Future<Output = Result<T, Error>> + Send + 'static>>;

/// Turns fetched bytes into the answer (a decode).
pub(crate) type Decode<T> = Box<dyn FnOnce(Option<Vec<u8>>) -> Result<T, Error> + Send>;

/// The answer of one store operation.
#[must_use = "a store operation does nothing until awaited or driven"]
pub(crate) enum StoreFuture<T> {
    /// Answered already, without I/O (in-process stores). `None` once taken.
    Ready(Option<Result<T, Error>>),
    /// I/O still to run.
    Io(Io<T>),
    /// Bytes to fetch, then decoded by whoever waits for the answer: a
    /// blocking caller decodes on its own thread, not on the background
    /// runtime that ran the I/O. The decode is `None` once used.
    Fetch(Io<Option<Vec<u8>>>, Option<Decode<T>>),
}

impl<T> StoreFuture<T> {
    pub(crate) fn ready(result: Result<T, Error>) -> Self {
        Self::Ready(Some(result))
    }

    pub(crate) fn io(io: impl Future<Output = Result<T, Error>> + Send + 'static) -> Self {
        Self::Io(Box::pin(io))
    }

    /// Applies `f` to the answer, keeping it ready if it was.
    pub(crate) fn map<U>(
        self,
        f: impl FnOnce(T) -> Result<U, Error> + Send + 'static,
    ) -> StoreFuture<U>
    where
        T: 'static,
    {
        match self {
            Self::Ready(result) => StoreFuture::Ready(result.map(|result| result.and_then(f))),
            Self::Io(io) => StoreFuture::io(async move { io.await.and_then(f) }),
            Self::Fetch(io, decode) => StoreFuture::Fetch(
                io,
                decode.map(|decode| -> Decode<U> {
                    Box::new(move |bytes| decode(bytes).and_then(f))
                }),
            ),
        }
    }
}

impl StoreFuture<()> {
    /// Runs `operations` up to `at_once` at a time, over the connection's
    /// pipelining rather than one round trip after another; fails with the
    /// first error. In-process operations have already run.
    pub(crate) fn all(operations: Vec<StoreFuture<()>>, at_once: usize) -> StoreFuture<()> {
        if operations
            .iter()
            .all(|operation| matches!(operation, StoreFuture::Ready(_)))
        {
            let first_error = operations
                .into_iter()
                .find_map(|operation| match operation {
                    StoreFuture::Ready(Some(Err(error))) => Some(error),
                    _ => None,
                });
            return StoreFuture::ready(first_error.map_or(Ok(()), Err));
        }
        StoreFuture::io(async move {
            let mut running = stream::iter(operations).buffer_unordered(at_once.max(1));
            while let Some(result) = running.next().await {
                result?;
            }
            Ok(())
        })
    }
}

impl StoreFuture<Option<Vec<u8>>> {
    /// Decodes the fetched bytes with `decode`, where the answer is awaited.
    pub(crate) fn decode<T>(
        self,
        decode: impl FnOnce(Option<Vec<u8>>) -> Result<T, Error> + Send + 'static,
    ) -> StoreFuture<T> {
        match self {
            Self::Ready(result) => StoreFuture::Ready(result.map(|result| result.and_then(decode))),
            Self::Io(io) => StoreFuture::Fetch(io, Some(Box::new(decode))),
            Self::Fetch(io, first) => StoreFuture::Fetch(
                io,
                first.map(|first| -> Decode<T> {
                    Box::new(move |bytes| first(bytes).and_then(decode))
                }),
            ),
        }
    }
}

impl<T: Unpin> Future for StoreFuture<T> {
    type Output = Result<T, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Self::Ready(result) => Poll::Ready(result.take().unwrap_or_else(|| Err(taken()))),
            Self::Io(io) => io.as_mut().poll(cx),
            Self::Fetch(io, decode) => match io.as_mut().poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(fetched) => match decode.take() {
                    Some(decode) => Poll::Ready(fetched.and_then(decode)),
                    None => Poll::Ready(Err(taken())),
                },
            },
        }
    }
}

/// What polling an answer a second time gets: an error, never a hang.
pub(crate) fn taken() -> Error {
    Error::Backend(BackendError::new("a store answer was taken twice"))
}

/// Typed cache entries (`#[cached]`, HTTP responses).
pub(crate) trait ValueStore: Send + Sync + 'static {
    /// The value under `key`. An entry that does not decode as `kind` is
    /// `Err(Error::Codec)`, which callers treat as a miss.
    fn get(&self, key: &str, kind: ValueType) -> StoreFuture<Option<AnyValue>>;

    /// Stores `value` (of type `kind`) for `ttl` (`None`: no expiry).
    /// `Ok(false)` when it was over the size limit and not stored.
    fn set(
        &self,
        key: &str,
        value: AnyValue,
        kind: ValueType,
        ttl: Option<Duration>,
    ) -> StoreFuture<bool>;

    /// Deletes one entry.
    fn delete(&self, key: &str) -> StoreFuture<()>;

    /// Deletes every entry whose key starts with `prefix`; returns how many.
    fn delete_prefix(&self, prefix: &str) -> StoreFuture<u64>;

    /// For a store that keeps nothing but encoded bytes: the bytes under
    /// `key` and the codec they were written with (`kind`'s, else the
    /// store's), for the caller to decode straight into its own type, where
    /// [`ValueStore::get`] would box a decode and share the value behind an
    /// `Arc`. `None` from other stores.
    fn get_encoded(
        &self,
        _key: &str,
        _kind: ValueType,
    ) -> Option<(StoreFuture<Option<Vec<u8>>>, Codec)> {
        None
    }

    /// The in-process values this store answers from now, if any: what the
    /// typed fast path may index (see [`crate::site`]).
    fn local(&self) -> Option<Local<'_>> {
        None
    }

    /// Deletes every entry of `matching`; returns how many.
    fn delete_matching(&self, matching: &KeyMatch) -> StoreFuture<u64>;
}

/// A store's in-process values.
pub(crate) struct Local<'a> {
    pub(crate) values: &'a local::LocalValues,
    /// Whether they are near-cache copies of Redis entries.
    pub(crate) near: bool,
}

/// Bytes under keys, with per-key TTLs.
pub(crate) trait ByteStore: Send + Sync + 'static {
    fn get(&self, key: &str) -> StoreFuture<Option<Vec<u8>>>;
    fn set(&self, key: &str, bytes: Vec<u8>, ttl: Option<Duration>) -> StoreFuture<()>;
    fn delete(&self, key: &str) -> StoreFuture<()>;
    fn delete_prefix(&self, prefix: &str) -> StoreFuture<u64>;
    fn delete_matching(&self, matching: &KeyMatch) -> StoreFuture<u64>;
}

/// What one atomic attempt at a lock or a pool slot got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Grant<T> {
    /// Taken: the lock's fencing token, or `()` for a pool slot.
    Taken(T),
    /// Refused. `free_in`: when the lease in the way runs out (a held
    /// lock's, or the soonest of a full pool's), if one is; a waiter tries
    /// again then at the latest, since a lease that runs out announces
    /// nothing. `None`: refused for the waiters ahead, whose leaving or
    /// taking wakes the line.
    Refused { free_in: Option<Duration> },
}

impl<T> Grant<T> {
    /// The grant of what `f` makes of the taken value.
    pub(crate) fn map<U>(self, f: impl FnOnce(T) -> U) -> Grant<U> {
        match self {
            Grant::Taken(taken) => Grant::Taken(f(taken)),
            Grant::Refused { free_in } => Grant::Refused { free_in },
        }
    }
}

/// Where a lock draws its fencing token.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Fence<'a> {
    /// The counter's key, in the lock key's cluster slot.
    pub(crate) key: &'a str,
    /// How long an unused counter is kept.
    pub(crate) idle: Duration,
}

/// Owned locks: a random token per holder, owner-only release and renewal.
///
/// Fair: a lock's waiters line up in arrival order ([`Line`]), and a free
/// lock goes only to the head of the line, or to anyone when the line is
/// empty. A place in the line lapses when its waiter has not tried again
/// for `keep` (it crashed, or gave up without saying so).
pub(crate) trait LockStore: Send + Sync + 'static {
    /// Takes the lock for `lease` if nobody holds it and nobody waits
    /// before this caller. [`Grant::Refused`]: held elsewhere (with the
    /// time left on its lease), or promised to an earlier waiter.
    /// [`Grant::Taken`]: taken, with the next fencing token of `fence`
    /// drawn in the same atomic step (`0` without a fence). `join`: on a
    /// refusal, join the line (or keep this token's place in it) for that
    /// long; `None` for a caller that will not wait.
    ///
    /// Fencing tokens strictly increase per lock name, across expiry of an
    /// idle counter: a counter starts at (and never falls behind) the
    /// store's clock in microseconds, so a new counter starts above every
    /// token the expired one handed out.
    fn try_lock(
        &self,
        key: &str,
        token: &str,
        lease: Duration,
        fence: Option<Fence<'_>>,
        line: &Line,
        join: Option<Duration>,
    ) -> StoreFuture<Grant<u64>>;

    /// Deletes the lock if `token` still owns it, and wakes its waiters;
    /// false when it does not own it.
    fn unlock(&self, key: &str, token: &str, line: &Line) -> StoreFuture<bool>;

    /// Renews the lease if `token` still owns the lock; false when it does not.
    fn renew(&self, key: &str, token: &str, lease: Duration) -> StoreFuture<bool>;

    /// The token of whoever holds the lock.
    fn holder(&self, key: &str) -> StoreFuture<Option<String>>;

    /// Deletes the lock whoever holds it (`_release`), and wakes its waiters.
    fn force_unlock(&self, key: &str, line: &Line) -> StoreFuture<()>;

    /// Sets `key` to `token` for `ttl`, whatever it held: a note, read
    /// back with [`LockStore::holder`], such as a filler's "ran and stored
    /// nothing".
    fn note(&self, key: &str, token: &str, ttl: Duration) -> StoreFuture<()>;

    /// Takes `token` out of the line of `key`, waking the others if the
    /// lock is free (it may have been waiting for this token).
    fn leave(&self, key: &str, token: &str, line: &Line) -> StoreFuture<()>;

    /// Watches for releases of the lock whose line is `line`: resolves once
    /// the watch sees every release from then on (or, where releases are
    /// not announced at the moment, once waiters must rely on re-checks).
    fn watch(&self, line: &Line) -> StoreFuture<Watch>;
}

/// The next fencing token: one above the last, and never behind `clock`
/// (microseconds of the store's clock). See [`LockStore::try_lock`].
pub(crate) fn next_fence(last: u64, clock: u64) -> u64 {
    last.saturating_add(1).max(clock)
}

/// The versions and entry indexes of cache tags (`#[cached(tags = [..])]`).
///
/// A writer reads its tags' versions before it computes, and after it
/// stored the entry adds it to each tag's index and reads the versions
/// again, in one atomic step per tag; an invalidation bumps the version
/// and reads the index in one atomic step, then deletes what it read. So
/// either the invalidation finds the entry in the index, or the writer
/// finds the version moved (see `cache/tags.rs`).
pub(crate) trait TagStore: Send + Sync + 'static {
    /// The tag's version now; 0 when it was never bumped (or its counter
    /// expired).
    fn tag_version(&self, tag: &TagKeys) -> StoreFuture<u64>;

    /// Adds `entry` to the tag's index as the member `{version}|{entry}`,
    /// with the tag's version now, keeps the index at least `ttl` (`None`:
    /// for ever), and returns that version, in one atomic step.
    ///
    /// The version in the member keeps an entry written again after an
    /// invalidation in the index: the invalidation removes only the
    /// members it read, and the new write added another.
    fn tag_entry(&self, tag: &TagKeys, entry: &str, ttl: Option<Duration>) -> StoreFuture<u64>;

    /// Moves the tag's version past every earlier one (one above the last,
    /// never behind the store's clock in microseconds, kept `idle`) and
    /// returns the members of its index, in one atomic step.
    fn bump_tag(&self, tag: &TagKeys, idle: Duration) -> StoreFuture<Vec<String>>;

    /// Removes `members` (as [`TagStore::bump_tag`] returned them) from the
    /// tag's index.
    fn untag(&self, tag: &TagKeys, members: &[String]) -> StoreFuture<()>;
}

/// Pools (a distributed semaphore): up to `max_size` owned slots per key,
/// each a random token with its own lease, all timed by the store's clock.
///
/// Fair like [`LockStore`]: a pool's waiters line up in arrival order
/// ([`Line`]), and a free slot goes to a caller only when fewer waiters
/// are ahead of it than there are free slots. Releases wake the waiters
/// ([`LockStore::watch`] on the pool's line).
pub(crate) trait PoolStore: Send + Sync + 'static {
    /// Takes a slot for `token` for `lease` if fewer than `max_size` live
    /// slots are held and fewer waiters of `line` are ahead of `token` than
    /// there are free slots; refused otherwise (with the time left on the
    /// soonest lease when the pool is full). Expired slots and lapsed
    /// places are dropped first, in the same atomic step. `join`: on a
    /// refusal, join the line (or keep this token's place in it) for that
    /// long; `None` for a caller that will not wait. On a grant the token
    /// leaves the line.
    fn acquire_slot(
        &self,
        key: &str,
        token: &str,
        max_size: usize,
        lease: Duration,
        line: &Line,
        join: Option<Duration>,
    ) -> StoreFuture<Grant<()>>;

    /// Renews the lease of `token`'s slot if it is still live; false when
    /// it expired or is gone.
    fn renew_slot(&self, key: &str, token: &str, lease: Duration) -> StoreFuture<bool>;

    /// Frees `token`'s slot and wakes the waiters of `line`; false when it
    /// had already expired or was gone.
    fn release_slot(&self, key: &str, token: &str, line: &Line) -> StoreFuture<bool>;

    /// How many live slots the pool holds.
    fn pool_size(&self, key: &str) -> StoreFuture<usize>;

    /// Takes `token` out of the pool's line and wakes the others: a slot
    /// may have been free and kept for this token. (A lock's
    /// [`LockStore::leave`] wakes only when the lock is free; a pool key
    /// exists while any slot is held.)
    fn leave_pool(&self, key: &str, token: &str, line: &Line) -> StoreFuture<()>;
}
