//! The client: a thin facade over the cache core, and its builder, the one
//! place that knows which stores exist.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::cache::Core;
use crate::codec::Codec;
use crate::error::Error;
use crate::health::{Health, Stats};
use crate::io;
use crate::keyspace::Keyspace;
use crate::locks::{LockBuilder, Locks};
use crate::mode::{Async, Blocking, Mode, drive};
use crate::observe::TemplateStats;
use crate::pools::{PoolBuilder, Pools};
use crate::store::cluster::ClusterStore;
use crate::store::memory::MemoryStore;
use crate::store::near::NearStore;
use crate::store::protocol::{ConnectSettings, Link};
use crate::store::redis::{RedisStore, redact};
use crate::store::tracking::Tracking;
use crate::store::{Encoded, LockStore, PoolStore, StoreFuture, TagStore, ValueStore};
use crate::wait;

const DEFAULT_LOCK_TTL: Duration = Duration::from_secs(30);
const DEFAULT_FENCE_IDLE: Duration = Duration::from_secs(24 * 3600);
const DEFAULT_MAX_ENTRIES: u64 = 10_000;
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_millis(500);
const DEFAULT_MAX_VALUE_SIZE: usize = 1024 * 1024;
const DEFAULT_BREAKER_THRESHOLD: u32 = 5;
const DEFAULT_BREAKER_COOL_DOWN: Duration = Duration::from_secs(5);

/// A cachify client: where entries and locks live, and how keys are named.
///
/// Cheap to clone (an `Arc`). Most programs build one at startup and hand
/// it to [`crate::init`]; the macros then use it through [`crate::global`].
///
/// ```
/// use std::time::Duration;
/// use cachify::Cachify;
///
/// let client = Cachify::builder()
///     .memory()
///     .prefix("myapp:")
///     .default_ttl(Duration::from_secs(60))
///     .build_blocking()?;
/// assert_eq!(client.prefix(), "myapp:");
/// # Ok::<(), cachify::Error>(())
/// ```
#[derive(Clone)]
pub struct Cachify {
    inner: Arc<Inner>,
}

struct Inner {
    core: Core,
    /// Where values live, with any password replaced, for `Debug`.
    shown_backend: String,
    pools: Pools,
}

impl fmt::Debug for Cachify {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cachify")
            .field("backend", &self.inner.shown_backend)
            .field("prefix", &self.prefix())
            .field("default_ttl", &self.default_ttl())
            .field("lock_ttl", &self.lock_ttl())
            .finish()
    }
}

impl Cachify {
    /// Starts configuring a client. See [`CachifyBuilder`].
    ///
    /// ```
    /// let client = cachify::Cachify::builder().build_blocking()?; // memory, all defaults
    /// assert_eq!(client.prefix(), "cachify:");
    /// # Ok::<(), cachify::Error>(())
    /// ```
    pub fn builder() -> CachifyBuilder {
        CachifyBuilder::default()
    }

    /// Starts building a lock on this client; see [`crate::lock()`].
    ///
    /// ```
    /// let client = cachify::Cachify::builder().memory().build_blocking()?;
    /// let guard = client.lock("nightly-import").acquire_blocking()?;
    /// assert_eq!(guard.key(), "cachify:lock:nightly-import");
    /// guard.release_blocking()?;
    /// # Ok::<(), cachify::Error>(())
    /// ```
    pub fn lock(&self, name: impl Into<String>) -> LockBuilder<'_> {
        self.inner.core.locks.builder(name.into())
    }

    /// Starts building a pool of at most `max_size` concurrent holders on
    /// this client; see [`crate::pool()`].
    ///
    /// ```
    /// let client = cachify::Cachify::builder().memory().build_blocking()?;
    /// let slot = client.pool("exports", 3).acquire_blocking()?;
    /// assert_eq!(slot.key(), "cachify:pool:exports");
    /// assert_eq!(client.pool("exports", 3).size_blocking()?, 1);
    /// slot.release_blocking()?;
    /// # Ok::<(), cachify::Error>(())
    /// ```
    pub fn pool(&self, name: impl Into<String>, max_size: usize) -> PoolBuilder<'_> {
        self.inner.pools.builder(name.into(), max_size)
    }

    /// The prefix put in front of every key.
    pub fn prefix(&self) -> &str {
        self.inner.core.keys.prefix()
    }

    /// The TTL of cache entries whose attribute sets none (`None`: no expiry).
    pub fn default_ttl(&self) -> Option<Duration> {
        self.inner.core.default_ttl()
    }

    /// The lease of locks whose attribute sets no `ttl`.
    pub fn lock_ttl(&self) -> Duration {
        self.inner.core.locks.lock_ttl()
    }

    /// How long `#[cached(lock = true)]` waits for another process to fill
    /// a key before computing it itself.
    pub fn fill_wait(&self) -> Duration {
        self.inner.core.fill_wait()
    }

    /// How long a lock's fencing counter is kept after its last grant.
    pub fn fence_idle(&self) -> Duration {
        self.inner.core.locks.fence_idle()
    }

    /// The longest a lock waiter goes between two attempts when no release
    /// wakes it (see [`CachifyBuilder::lock_recheck`]).
    pub fn lock_recheck(&self) -> Duration {
        self.inner.core.locks.recheck()
    }

    /// Counters of hits, misses, backend errors and lock contention, and the
    /// state of the cache path's circuit breaker.
    pub fn stats(&self) -> Stats {
        self.inner.core.stats()
    }

    /// The counters of [`Cachify::stats`] split by kind and key template
    /// (one entry per template, functions sharing a template counted
    /// together), for the calls made through this client: `#[cached]`,
    /// `#[once]` and `#[lock]` functions, [`crate::lock()`] values (under
    /// [`crate::LOCK_API_TEMPLATE`]) and HTTP caches (their namespace).
    /// Sorted by kind, then template; serializes with serde. Fill locks and
    /// near-cache counts are in [`Cachify::stats`] only.
    ///
    /// ```
    /// #[cachify::cached("square-{n}", client = &client)]
    /// fn square(client: &cachify::Cachify, n: u64) -> u64 {
    ///     n * n
    /// }
    ///
    /// let client = cachify::Cachify::builder().memory().build_blocking()?;
    /// square(&client, 3);
    /// square(&client, 3);
    /// let json = serde_json::to_value(client.stats_by_template()).unwrap();
    /// assert_eq!(json[0]["kind"], "cached");
    /// assert_eq!(json[0]["template"], "square-{n}");
    /// assert_eq!(json[0]["hits"], 1);
    /// assert_eq!(json[0]["misses"], 1);
    /// # Ok::<(), cachify::Error>(())
    /// ```
    pub fn stats_by_template(&self) -> Vec<TemplateStats> {
        self.inner.core.health().stats_by_template()
    }

    /// Deletes every cached value of this client: every `#[cached]` entry
    /// (under `{prefix}cache:`) and every HTTP response (under
    /// `{prefix}http:`), and returns how many were deleted. Locks, their
    /// fencing counters and tag versions stay. On Redis it walks the keys
    /// with `SCAN` in batches and `UNLINK`s them, on every primary of a
    /// cluster; it never blocks the server the way `KEYS` would.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cachify::Error> {
    /// #[cachify::cached("square-{n}", client = client)]
    /// async fn square(client: &cachify::Cachify, n: u64) -> u64 {
    ///     n * n
    /// }
    ///
    /// let client = cachify::Cachify::builder().memory().build().await?;
    /// square(&client, 2).await;
    /// square(&client, 3).await;
    /// assert_eq!(client.clear().await?, 2);
    /// # Ok(()) }
    /// ```
    pub async fn clear(&self) -> Result<u64, Error> {
        self.inner.core.clear_values::<Async>().await
    }

    /// Blocking twin of [`Cachify::clear`].
    ///
    /// ```
    /// let client = cachify::Cachify::builder().memory().build_blocking()?;
    /// assert_eq!(client.clear_blocking()?, 0);
    /// # Ok::<(), cachify::Error>(())
    /// ```
    pub fn clear_blocking(&self) -> Result<u64, Error> {
        drive(self.inner.core.clear_values::<Blocking>())
    }

    /// Deletes every entry stored under any of `tags` (`#[cached(tags =
    /// [..])]`), whatever function stored it.
    ///
    /// No value outlives an invalidation: a call that read its data before
    /// `invalidate_tags` and stores its value after it has that value
    /// deleted too (its tags' versions moved while it ran). Tags are
    /// matched as rendered: `"user:{id}"` with `id = 42` is `"user:42"`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cachify::Error> {
    /// #[cachify::cached("profile-{id}", tags = ["user:{id}", "users"], client = client)]
    /// async fn profile(client: &cachify::Cachify, id: u64) -> String {
    ///     format!("user {id}")
    /// }
    ///
    /// let client = cachify::Cachify::builder().memory().build().await?;
    /// profile(&client, 42).await;
    /// client.invalidate_tags(["user:42"]).await?; // or ["users"]: every profile
    /// profile(&client, 42).await; // runs again
    /// assert_eq!(client.stats().misses, 2);
    /// # Ok(()) }
    /// ```
    pub fn invalidate_tags<I>(&self, tags: I) -> impl Future<Output = Result<(), Error>> + Send + '_
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let tags = owned(tags);
        async move { self.inner.core.invalidate_tags::<Async>(&tags).await }
    }

    /// Blocking twin of [`Cachify::invalidate_tags`].
    ///
    /// ```
    /// let client = cachify::Cachify::builder().memory().build_blocking()?;
    /// client.invalidate_tags_blocking(["users"])?;
    /// # Ok::<(), cachify::Error>(())
    /// ```
    pub fn invalidate_tags_blocking<I>(&self, tags: I) -> Result<(), Error>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        drive(self.inner.core.invalidate_tags::<Blocking>(&owned(tags)))
    }

    /// The cache core behind this client.
    pub(crate) fn core(&self) -> &Core {
        &self.inner.core
    }

    /// The pools of this client.
    pub(crate) fn pools(&self) -> &Pools {
        &self.inner.pools
    }

    /// The in-memory client used when cachify is used before [`crate::init`].
    pub(crate) fn memory_fallback() -> Self {
        let builder = CachifyBuilder::default();
        let stores = builder.memory_stores();
        let health = Arc::new(Health::new(
            builder.breaker_threshold,
            builder.breaker_cool_down,
        ));
        builder.assemble(Keyspace::default(), stores, health)
    }
}

/// Configures a [`Cachify`] client. From [`Cachify::builder`].
///
/// ```no_run
/// # async fn start() -> Result<(), cachify::Error> {
/// use std::time::Duration;
/// use cachify::Cachify;
///
/// let client = Cachify::builder()
///     .redis("redis://127.0.0.1:6379/0")
///     .prefix("myapp:")
///     .default_ttl(Duration::from_secs(60))
///     .lock_ttl(Duration::from_secs(30))
///     .build()
///     .await?;
/// cachify::init(client)?;
/// # Ok(()) }
/// ```
#[must_use = "a builder does nothing until `build()` or `build_blocking()`"]
#[derive(Clone)]
pub struct CachifyBuilder {
    target: Target,
    prefix: String,
    default_ttl: Option<Duration>,
    lock_ttl: Duration,
    fill_wait: Option<Duration>,
    fence_idle: Duration,
    max_entries: u64,
    codec: Codec,
    connect_timeout: Duration,
    command_timeout: Duration,
    max_value_size: usize,
    breaker_threshold: u32,
    breaker_cool_down: Duration,
    lazy: bool,
    near_entries: Option<u64>,
    lock_recheck: Duration,
}

impl Default for CachifyBuilder {
    fn default() -> Self {
        Self {
            target: Target::Memory,
            prefix: Keyspace::default().prefix().to_owned(),
            default_ttl: None,
            lock_ttl: DEFAULT_LOCK_TTL,
            fill_wait: None,
            fence_idle: DEFAULT_FENCE_IDLE,
            max_entries: DEFAULT_MAX_ENTRIES,
            codec: Codec::default(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            max_value_size: DEFAULT_MAX_VALUE_SIZE,
            breaker_threshold: DEFAULT_BREAKER_THRESHOLD,
            breaker_cool_down: DEFAULT_BREAKER_COOL_DOWN,
            lazy: false,
            near_entries: None,
            lock_recheck: wait::RECHECK,
        }
    }
}

impl fmt::Debug for CachifyBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachifyBuilder")
            .field("backend", &self.target.shown())
            .field("prefix", &self.prefix)
            .field("default_ttl", &self.default_ttl)
            .field("lock_ttl", &self.lock_ttl)
            .field("fill_wait", &self.fill_wait)
            .field("fence_idle", &self.fence_idle)
            .field("max_entries", &self.max_entries)
            .field("codec", &self.codec)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("max_value_size", &self.max_value_size)
            .field("breaker_threshold", &self.breaker_threshold)
            .field("breaker_cool_down", &self.breaker_cool_down)
            .field("lazy", &self.lazy)
            .field("near_cache", &self.near_entries)
            .field("lock_recheck", &self.lock_recheck)
            .finish()
    }
}

/// Where a client keeps its entries and locks.
#[derive(Clone)]
enum Target {
    Memory,
    Redis(String),
    Cluster(Vec<String>),
}

impl Target {
    /// As `Debug` shows it: passwords replaced.
    fn shown(&self) -> String {
        match self {
            Target::Memory => "memory".to_owned(),
            Target::Redis(url) => format!("redis {}", redact(url)),
            Target::Cluster(seeds) => {
                let seeds: Vec<String> = seeds.iter().map(|seed| redact(seed)).collect();
                format!("redis cluster [{}]", seeds.join(", "))
            }
        }
    }
}

/// The stores of a client.
struct Stores {
    values: Arc<dyn ValueStore>,
    locks: Arc<dyn LockStore>,
    tags: Arc<dyn TagStore>,
    pools: Arc<dyn PoolStore>,
}

impl CachifyBuilder {
    /// Uses Redis at `url`: `redis://[user:password@]host[:port][/db]`, or
    /// `rediss://` for TLS (with the `tls` feature). A server in cluster
    /// mode is refused at `build()`: use [`CachifyBuilder::redis_cluster`].
    ///
    /// ```no_run
    /// # async fn start() -> Result<(), cachify::Error> {
    /// let client = cachify::Cachify::builder()
    ///     .redis("redis://:secret@127.0.0.1:6379/2") // password, database 2
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn redis(mut self, url: impl Into<String>) -> Self {
        self.target = Target::Redis(url.into());
        self
    }

    /// Uses a Redis Cluster, found through any of `seeds` (URLs as for
    /// [`CachifyBuilder::redis`]; a password or `rediss://` in the first
    /// one applies to every node). Commands follow `MOVED` and `ASK`
    /// redirections and the topology as it changes.
    ///
    /// ```no_run
    /// # async fn start() -> Result<(), cachify::Error> {
    /// let client = cachify::Cachify::builder()
    ///     .redis_cluster(["redis://127.0.0.1:7000", "redis://127.0.0.1:7001"])
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn redis_cluster<I, S>(mut self, seeds: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.target = Target::Cluster(seeds.into_iter().map(Into::into).collect());
        self
    }

    /// Keeps everything in this process (the default): bounded, per-entry
    /// TTLs, no Redis needed. Locks then only exclude callers in this process.
    ///
    /// ```
    /// let client = cachify::Cachify::builder().memory().build_blocking()?;
    /// assert!(format!("{client:?}").contains("memory"));
    /// # Ok::<(), cachify::Error>(())
    /// ```
    pub fn memory(mut self) -> Self {
        self.target = Target::Memory;
        self
    }

    /// Put in front of every key. Default `"cachify:"`.
    ///
    /// ```
    /// let client = cachify::Cachify::builder().prefix("myapp:").build_blocking()?;
    /// assert_eq!(client.prefix(), "myapp:");
    /// # Ok::<(), cachify::Error>(())
    /// ```
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// TTL of entries whose `#[cached]` sets none. Default: no expiry.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let client = cachify::Cachify::builder()
    ///     .default_ttl(Duration::from_secs(60))
    ///     .build_blocking()?;
    /// assert_eq!(client.default_ttl(), Some(Duration::from_secs(60)));
    /// # Ok::<(), cachify::Error>(())
    /// ```
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = Some(ttl);
        self
    }

    /// Lease of locks whose attribute sets no `ttl`. Default 30 s.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let client = cachify::Cachify::builder()
    ///     .lock_ttl(Duration::from_secs(10))
    ///     .build_blocking()?;
    /// assert_eq!(client.lock_ttl(), Duration::from_secs(10));
    /// assert_eq!(client.fill_wait(), Duration::from_secs(20)); // twice lock_ttl by default
    /// # Ok::<(), cachify::Error>(())
    /// ```
    pub fn lock_ttl(mut self, ttl: Duration) -> Self {
        self.lock_ttl = ttl;
        self
    }

    /// How long `#[cached(lock = true)]` callers wait for another process
    /// that is filling the same key, before computing it themselves.
    /// Default: twice `lock_ttl`, so that a crashed filler (whose lock
    /// expires after one `lock_ttl`) is replaced by a waiter first.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let client = cachify::Cachify::builder()
    ///     .fill_wait(Duration::from_secs(5))
    ///     .build_blocking()?;
    /// assert_eq!(client.fill_wait(), Duration::from_secs(5));
    /// # Ok::<(), cachify::Error>(())
    /// ```
    pub fn fill_wait(mut self, wait: Duration) -> Self {
        self.fill_wait = Some(wait);
        self
    }

    /// How long a lock's fencing counter is kept after the lock was last
    /// granted. Default one day. Tokens keep increasing after a counter
    /// expired (see [`crate::LockGuard::fencing_token`]); this only bounds
    /// how many counters Redis keeps.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let client = cachify::Cachify::builder()
    ///     .fence_idle(Duration::from_secs(7 * 24 * 3600)) // a week
    ///     .build_blocking()?;
    /// assert_eq!(client.fence_idle(), Duration::from_secs(7 * 24 * 3600));
    /// # Ok::<(), cachify::Error>(())
    /// ```
    pub fn fence_idle(mut self, idle: Duration) -> Self {
        self.fence_idle = idle;
        self
    }

    /// The longest a lock waiter (`wait = ..`, `.wait(..)`, the followers
    /// of `#[cached(lock = true)]`) goes between two attempts. Default
    /// 500 ms; below 1 ms rounds up to 1 ms.
    ///
    /// Waiters do not poll: a release wakes them at once (in process, or
    /// by a Redis pub/sub message), and a lease that runs out unreleased
    /// (a holder that crashed) when it ends, since each refused attempt
    /// reports the time left on it. This re-check is the safety net for a
    /// lost message and for a lease cut short by someone other than its
    /// holder. A waiter's place in the line lapses
    /// after four re-checks without an attempt, so a waiter that crashed
    /// holds up the others that long at most.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let client = cachify::Cachify::builder()
    ///     .lock_recheck(Duration::from_millis(200))
    ///     .build_blocking()?;
    /// assert_eq!(client.lock_recheck(), Duration::from_millis(200));
    /// # Ok::<(), cachify::Error>(())
    /// ```
    pub fn lock_recheck(mut self, recheck: Duration) -> Self {
        self.lock_recheck = recheck.max(Duration::from_millis(1));
        self
    }

    /// Capacity of the memory backend, in entries. Default 10,000.
    ///
    /// ```
    /// use cachify::{Cachify, Error};
    ///
    /// let client = Cachify::builder().memory().max_entries(100_000).build_blocking()?;
    /// // A capacity of zero is refused when the client is built.
    /// let empty = Cachify::builder().memory().max_entries(0).build_blocking();
    /// assert!(matches!(empty, Err(Error::Config(_))));
    /// # Ok::<(), cachify::Error>(())
    /// ```
    pub fn max_entries(mut self, max_entries: u64) -> Self {
        self.max_entries = max_entries;
        self
    }

    /// The format of values stored in Redis. Default MessagePack. A
    /// `#[cached]` function may pick another for its own entries with
    /// `codec = ..`.
    ///
    /// ```no_run
    /// # async fn start() -> Result<(), cachify::Error> {
    /// use cachify::{Cachify, Codec};
    ///
    /// let client = Cachify::builder()
    ///     .redis("redis://127.0.0.1:6379")
    ///     .codec(Codec::MessagePack) // or Codec::Json with the `json` feature
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// How long connecting to Redis may take. Default 2 s.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// // Nothing listens on port 1: `build` gives up within the timeout.
    /// let unreachable = cachify::Cachify::builder()
    ///     .redis("redis://127.0.0.1:1")
    ///     .connect_timeout(Duration::from_millis(300))
    ///     .build_blocking();
    /// assert!(matches!(unreachable, Err(cachify::Error::Backend(_))));
    /// ```
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long one Redis command may take before it counts as failed
    /// (the cache path then runs the function). Default 500 ms. Cache reads
    /// on a single server are cut when their connection has answered
    /// nothing for this long, rather than each by its own timer, so a read
    /// behind a long but moving queue may take longer.
    ///
    /// ```no_run
    /// # async fn start() -> Result<(), cachify::Error> {
    /// use std::time::Duration;
    ///
    /// let client = cachify::Cachify::builder()
    ///     .redis("redis://127.0.0.1:6379")
    ///     .command_timeout(Duration::from_millis(100))
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// Largest encoded value written to Redis, in bytes; larger values are
    /// returned to the caller but not stored (with a warning). Default 1 MiB.
    /// The memory backend stores values without encoding and has no limit.
    ///
    /// ```no_run
    /// # async fn start() -> Result<(), cachify::Error> {
    /// let client = cachify::Cachify::builder()
    ///     .redis("redis://127.0.0.1:6379")
    ///     .max_value_size(64 * 1024) // values over 64 KiB are not stored
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn max_value_size(mut self, bytes: usize) -> Self {
        self.max_value_size = bytes;
        self
    }

    /// The cache path's circuit breaker: after `threshold` consecutive
    /// backend failures, cached functions run without the backend for
    /// `cool_down`, then one call probes it. Default 5 failures, 5 s.
    /// Locks never skip the backend: they keep failing closed.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cachify::{BreakerState, Cachify};
    ///
    /// let client = Cachify::builder()
    ///     .circuit_breaker(3, Duration::from_secs(10))
    ///     .build_blocking()?;
    /// assert_eq!(client.stats().breaker, BreakerState::Closed);
    /// // A threshold of zero is refused when the client is built.
    /// assert!(Cachify::builder().circuit_breaker(0, Duration::from_secs(1)).build_blocking().is_err());
    /// # Ok::<(), cachify::Error>(())
    /// ```
    pub fn circuit_breaker(mut self, threshold: u32, cool_down: Duration) -> Self {
        self.breaker_threshold = threshold;
        self.breaker_cool_down = cool_down;
        self
    }

    /// Keeps up to `max_entries` decoded values in this process, in front of
    /// Redis (after [`CachifyBuilder::redis`] or
    /// [`CachifyBuilder::redis_cluster`]), so a repeated read costs no round
    /// trip. The copies stay coherent: Redis reports every change of a
    /// cached key (a write or `_reset` by any process, `SET`/`DEL` from
    /// `redis-cli`, expiry, eviction, `FLUSHALL`) and the copy is dropped
    /// at once. A copy never outlives the entry's TTL in Redis.
    ///
    /// It uses Redis's client-side caching in broadcasting mode (`CLIENT
    /// TRACKING ON BCAST`, Redis 6 or later): one extra connection to the
    /// server, or to each primary of a cluster, is told of every change
    /// under the client's prefix. While that link is down (a restart, a
    /// failover, a killed connection) the near cache is emptied and every
    /// read goes to Redis, until the link is back. A write made elsewhere
    /// is seen here once its invalidation arrives, normally well under a
    /// millisecond (BENCHMARKS.md measures it). `stats()` counts near-cache
    /// hits, misses and invalidations.
    ///
    /// ```no_run
    /// # async fn start() -> Result<(), cachify::Error> {
    /// let client = cachify::Cachify::builder()
    ///     .redis("redis://127.0.0.1:6379")
    ///     .near_cache(10_000)
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn near_cache(mut self, max_entries: u64) -> Self {
        self.near_entries = Some(max_entries);
        self
    }

    /// Lets `build()` succeed while Redis is unreachable: the connection is
    /// made in the background on first use. Until it is up, cached functions
    /// run without the cache and locks return `Err(Error::Backend)`. A
    /// malformed URL is still an error.
    ///
    /// ```
    /// // Nothing listens on port 1, yet the client is built; it keeps trying in
    /// // the background, and cached functions run uncached meanwhile.
    /// let client = cachify::Cachify::builder()
    ///     .redis("redis://127.0.0.1:1")
    ///     .lazy()
    ///     .build_blocking()?;
    /// assert!(client.lock("job").acquire_blocking().is_err()); // locks fail closed
    /// # Ok::<(), cachify::Error>(())
    /// ```
    pub fn lazy(mut self) -> Self {
        self.lazy = true;
        self
    }

    /// Checks every setting; returns the key space of the prefix.
    fn check(&self) -> Result<Keyspace, Error> {
        let positive = [
            ("default_ttl", self.default_ttl.unwrap_or(Duration::MAX)),
            ("lock_ttl", self.lock_ttl),
            ("fence_idle", self.fence_idle),
            ("connect_timeout", self.connect_timeout),
            ("command_timeout", self.command_timeout),
        ];
        for (name, value) in positive {
            if value < Duration::from_millis(1) {
                return Err(Error::Config(format!(
                    "{name} must be at least 1 ms, got {value:?}"
                )));
            }
        }
        if self.max_entries == 0 {
            return Err(Error::Config("max_entries must be at least 1".into()));
        }
        if self.breaker_threshold == 0 {
            return Err(Error::Config(
                "the circuit breaker threshold must be at least 1".into(),
            ));
        }
        match (self.near_entries, &self.target) {
            (Some(0), _) => {
                return Err(Error::Config(
                    "near_cache must hold at least 1 entry".into(),
                ));
            }
            (Some(_), Target::Memory) => {
                return Err(Error::Config(
                    "near_cache keeps copies of Redis entries: use it with `.redis(..)` or `.redis_cluster(..)`".into(),
                ));
            }
            _ => {}
        }
        if let Target::Cluster(seeds) = &self.target
            && seeds.is_empty()
        {
            return Err(Error::Config(
                "redis_cluster needs at least one seed URL".into(),
            ));
        }
        Keyspace::new(self.prefix.clone())
    }

    /// Builds the client; with Redis, connects and PINGs first, so a bad
    /// URL, an unreachable server, a wrong password or database is an error
    /// here. Needs a Tokio runtime.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cachify::Error> {
    /// let client = cachify::Cachify::builder().memory().build().await?;
    /// cachify::init(client)?;
    /// # Ok(()) }
    /// ```
    pub async fn build(self) -> Result<Cachify, Error> {
        self.build_in::<Async>().await
    }

    /// Blocking twin of [`CachifyBuilder::build`], for programs without a
    /// runtime (it also works inside one).
    ///
    /// ```
    /// fn main() -> Result<(), cachify::Error> {
    ///     let client = cachify::Cachify::builder().memory().build_blocking()?;
    ///     cachify::init(client)?;
    ///     Ok(())
    /// }
    /// ```
    pub fn build_blocking(self) -> Result<Cachify, Error> {
        drive(self.build_in::<Blocking>())
    }

    async fn build_in<M: Mode>(self) -> Result<Cachify, Error> {
        let keys = self.check()?;
        let settings = ConnectSettings {
            connect_timeout: self.connect_timeout,
            command_timeout: self.command_timeout,
            lazy: self.lazy,
        };
        let health = Arc::new(Health::new(self.breaker_threshold, self.breaker_cool_down));
        // Connected on the background runtime, so the connection's driver
        // task lives there (see `io`).
        let stores = match self.target.clone() {
            Target::Memory => self.memory_stores(),
            Target::Redis(url) => {
                let connect = settings.clone();
                let redis = M::io(StoreFuture::io(on_background(async move {
                    RedisStore::connect(&url, connect).await
                })))
                .await?;
                self.redis_stores(redis, &keys, settings, &health)
            }
            Target::Cluster(seeds) => {
                let connect = settings.clone();
                let cluster = M::io(StoreFuture::io(on_background(async move {
                    ClusterStore::connect(&seeds, connect).await
                })))
                .await?;
                self.redis_stores(cluster, &keys, settings, &health)
            }
        };
        Ok(self.assemble(keys, stores, health))
    }

    fn memory_stores(&self) -> Stores {
        let memory = Arc::new(MemoryStore::new(self.max_entries));
        Stores {
            values: memory.clone(),
            locks: memory.clone(),
            tags: memory.clone(),
            pools: memory,
        }
    }

    /// A Redis deployment holds the locks as it is, and the values through
    /// the codec, with the near cache in front when asked.
    fn redis_stores<L: Link + Clone>(
        &self,
        link: L,
        keys: &Keyspace,
        settings: ConnectSettings,
        health: &Arc<Health>,
    ) -> Stores {
        let link = Arc::new(link);
        let values: Arc<dyn ValueStore> = match self.near_entries {
            Some(entries) => {
                let tracking = Tracking::start(
                    L::clone(&link),
                    keys.value_scopes(),
                    entries,
                    settings,
                    Arc::clone(health),
                );
                Arc::new(NearStore::new(
                    Arc::clone(&link),
                    self.codec,
                    self.max_value_size,
                    tracking,
                ))
            }
            None => Arc::new(Encoded::new(
                Arc::clone(&link),
                self.codec,
                self.max_value_size,
            )),
        };
        Stores {
            values,
            locks: link.clone(),
            tags: link.clone(),
            pools: link,
        }
    }

    fn assemble(self, keys: Keyspace, stores: Stores, health: Arc<Health>) -> Cachify {
        let pools = Pools::new(
            stores.pools,
            keys.clone(),
            self.lock_ttl,
            Arc::clone(&health),
            Arc::clone(&stores.locks),
            self.lock_recheck,
        );
        let locks = Locks::new(
            stores.locks,
            keys.clone(),
            self.lock_ttl,
            self.fence_idle,
            Arc::clone(&health),
        )
        .with_recheck(self.lock_recheck);
        let core = Core::new(
            stores.values,
            locks,
            keys,
            self.default_ttl,
            self.fill_wait.unwrap_or(self.lock_ttl.saturating_mul(2)),
            health,
            stores.tags,
        );
        Cachify {
            inner: Arc::new(Inner {
                core,
                shown_backend: self.target.shown(),
                pools,
            }),
        }
    }
}

/// The tags as owned strings, so the future that uses them owns them.
fn owned<I>(tags: I) -> Vec<String>
where
    I: IntoIterator,
    I::Item: AsRef<str>,
{
    tags.into_iter()
        .map(|tag| tag.as_ref().to_owned())
        .collect()
}

/// Runs `connect` as a task of the background runtime and waits for it.
async fn on_background<T: Send + 'static>(
    connect: impl std::future::Future<Output = Result<T, Error>> + Send + 'static,
) -> Result<T, Error> {
    io::spawn(connect)
        .await
        .map_err(|error| Error::Config(format!("connecting to Redis failed: {error}")))?
}

impl crate::refresh::CoreOwner for Cachify {
    fn core(&self) -> &Core {
        Cachify::core(self)
    }
}
