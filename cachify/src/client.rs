//! The client: a backend plus the settings every call shares.

use std::fmt::{self, Display};
use std::sync::Arc;
use std::time::Duration;

use crate::backend::redis::{RedisSettings, redact};
use crate::backend::{Backend, MemoryBackend, RedisBackend};
use crate::codec::Codec;
use crate::flight::Flights;
use crate::health::{Counters, Health, Stats};
use crate::key::{self, KeyKind, KeyTemplate};
use crate::lock::LockBuilder;
use crate::{Error, io};

const DEFAULT_PREFIX: &str = "cachify:";
const DEFAULT_LOCK_TTL: Duration = Duration::from_secs(30);
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
    backend: Backend,
    /// Redis URL with any password replaced, for `Debug`.
    shown_backend: String,
    prefix: String,
    default_ttl: Option<Duration>,
    lock_ttl: Duration,
    fill_wait: Duration,
    flights: Flights,
    health: Health,
}

impl fmt::Debug for Cachify {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cachify")
            .field("backend", &self.inner.shown_backend)
            .field("prefix", &self.inner.prefix)
            .field("default_ttl", &self.inner.default_ttl)
            .field("lock_ttl", &self.inner.lock_ttl)
            .finish()
    }
}

impl Cachify {
    /// Starts configuring a client. See [`CachifyBuilder`].
    pub fn builder() -> CachifyBuilder {
        CachifyBuilder::default()
    }

    /// Starts building a lock on this client; see [`crate::lock()`].
    pub fn lock(&self, name: impl Into<String>) -> LockBuilder<'_> {
        LockBuilder::on(self, name.into())
    }

    /// The prefix put in front of every key.
    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// The TTL of cache entries whose attribute sets none (`None`: no expiry).
    pub fn default_ttl(&self) -> Option<Duration> {
        self.inner.default_ttl
    }

    /// The lease of locks whose attribute sets no `ttl`.
    pub fn lock_ttl(&self) -> Duration {
        self.inner.lock_ttl
    }

    /// How long `#[cached(lock = true)]` waits for another process to fill
    /// a key before computing it itself.
    pub fn fill_wait(&self) -> Duration {
        self.inner.fill_wait
    }

    /// Counters of hits, misses, backend errors and lock contention, and the
    /// state of the cache path's circuit breaker.
    pub fn stats(&self) -> Stats {
        self.inner
            .health
            .counters
            .snapshot(self.inner.health.breaker.state())
    }

    pub(crate) fn health(&self) -> &Health {
        &self.inner.health
    }

    /// The in-memory client used when cachify is used before [`crate::init`].
    pub(crate) fn memory_fallback() -> Self {
        CachifyBuilder::default().assemble(
            Backend::Memory(MemoryBackend::new(DEFAULT_MAX_ENTRIES)),
            "memory".into(),
        )
    }

    pub(crate) fn backend(&self) -> &Backend {
        &self.inner.backend
    }

    pub(crate) fn flights(&self) -> &Flights {
        &self.inner.flights
    }

    pub(crate) fn render_key(
        &self,
        kind: KeyKind,
        template: &KeyTemplate,
        values: &[&dyn Display],
    ) -> String {
        key::render(&self.inner.prefix, kind, template, values)
    }

    /// Records the outcome of a cache-path backend call: feeds the breaker
    /// and the counters, and logs failures (at most one line per period).
    pub(crate) fn observe<T>(&self, operation: &str, key: &str, outcome: &Result<T, Error>) {
        let health = &self.inner.health;
        match outcome {
            Ok(_) | Err(Error::Codec(_)) => health.breaker.record_success(),
            Err(error) => {
                health.breaker.record_failure();
                Counters::add(&health.counters.errors);
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
    redis_url: Option<String>,
    prefix: String,
    default_ttl: Option<Duration>,
    lock_ttl: Duration,
    fill_wait: Option<Duration>,
    max_entries: u64,
    codec: Codec,
    connect_timeout: Duration,
    command_timeout: Duration,
    max_value_size: usize,
    breaker_threshold: u32,
    breaker_cool_down: Duration,
    lazy: bool,
}

impl Default for CachifyBuilder {
    fn default() -> Self {
        Self {
            redis_url: None,
            prefix: DEFAULT_PREFIX.to_owned(),
            default_ttl: None,
            lock_ttl: DEFAULT_LOCK_TTL,
            fill_wait: None,
            max_entries: DEFAULT_MAX_ENTRIES,
            codec: Codec::default(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            max_value_size: DEFAULT_MAX_VALUE_SIZE,
            breaker_threshold: DEFAULT_BREAKER_THRESHOLD,
            breaker_cool_down: DEFAULT_BREAKER_COOL_DOWN,
            lazy: false,
        }
    }
}

impl fmt::Debug for CachifyBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachifyBuilder")
            .field("redis_url", &self.redis_url.as_deref().map(redact))
            .field("prefix", &self.prefix)
            .field("default_ttl", &self.default_ttl)
            .field("lock_ttl", &self.lock_ttl)
            .field("fill_wait", &self.fill_wait)
            .field("max_entries", &self.max_entries)
            .field("codec", &self.codec)
            .field("connect_timeout", &self.connect_timeout)
            .field("command_timeout", &self.command_timeout)
            .field("max_value_size", &self.max_value_size)
            .field("breaker_threshold", &self.breaker_threshold)
            .field("breaker_cool_down", &self.breaker_cool_down)
            .field("lazy", &self.lazy)
            .finish()
    }
}

impl CachifyBuilder {
    /// Uses Redis at `url`: `redis://[user:password@]host[:port][/db]`, or
    /// `rediss://` for TLS (with the `tls` feature).
    pub fn redis(mut self, url: impl Into<String>) -> Self {
        self.redis_url = Some(url.into());
        self
    }

    /// Keeps everything in this process (the default): bounded, per-entry
    /// TTLs, no Redis needed. Locks then only exclude callers in this process.
    pub fn memory(mut self) -> Self {
        self.redis_url = None;
        self
    }

    /// Put in front of every key. Default `"cachify:"`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// TTL of entries whose `#[cached]` sets none. Default: no expiry.
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.default_ttl = Some(ttl);
        self
    }

    /// Lease of locks whose attribute sets no `ttl`. Default 30 s.
    pub fn lock_ttl(mut self, ttl: Duration) -> Self {
        self.lock_ttl = ttl;
        self
    }

    /// How long `#[cached(lock = true)]` callers wait for another process
    /// that is filling the same key, before computing it themselves.
    /// Default: twice `lock_ttl`, so that a crashed filler (whose lock
    /// expires after one `lock_ttl`) is replaced by a waiter first.
    pub fn fill_wait(mut self, wait: Duration) -> Self {
        self.fill_wait = Some(wait);
        self
    }

    /// Capacity of the memory backend, in entries. Default 10,000.
    pub fn max_entries(mut self, max_entries: u64) -> Self {
        self.max_entries = max_entries;
        self
    }

    /// The format of values stored in Redis. Default MessagePack.
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// How long connecting to Redis may take. Default 2 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long one Redis command may take before it counts as failed
    /// (the cache path then runs the function). Default 500 ms.
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// Largest encoded value written to Redis, in bytes; larger values are
    /// returned to the caller but not stored (with a warning). Default 1 MiB.
    /// The memory backend stores values without encoding and has no limit.
    pub fn max_value_size(mut self, bytes: usize) -> Self {
        self.max_value_size = bytes;
        self
    }

    /// The cache path's circuit breaker: after `threshold` consecutive
    /// backend failures, cached functions run without the backend for
    /// `cool_down`, then one call probes it. Default 5 failures, 5 s.
    /// Locks never skip the backend: they keep failing closed.
    pub fn circuit_breaker(mut self, threshold: u32, cool_down: Duration) -> Self {
        self.breaker_threshold = threshold;
        self.breaker_cool_down = cool_down;
        self
    }

    /// Lets `build()` succeed while Redis is unreachable: the connection is
    /// made in the background on first use. Until it is up, cached functions
    /// run without the cache and locks return `Err(Error::Backend)`. A
    /// malformed URL is still an error.
    pub fn lazy(mut self) -> Self {
        self.lazy = true;
        self
    }

    fn check(&self) -> Result<(), Error> {
        let positive = [
            ("default_ttl", self.default_ttl.unwrap_or(Duration::MAX)),
            ("lock_ttl", self.lock_ttl),
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
        Ok(())
    }

    /// Builds the client; with Redis, connects and PINGs first, so a bad
    /// URL, an unreachable server, a wrong password or database is an error
    /// here. Needs a Tokio runtime.
    pub async fn build(self) -> Result<Cachify, Error> {
        self.check()?;
        match self.redis_url.clone() {
            None => Ok(self.build_memory()),
            Some(url) => {
                let settings = self.redis_settings();
                // Connect on the background runtime so the connection's
                // driver task lives there (see `io`).
                let backend = io::spawn(async move { RedisBackend::connect(&url, settings).await })
                    .await
                    .map_err(|error| {
                        Error::Config(format!("connecting to Redis failed: {error}"))
                    })??;
                Ok(self.with_redis(backend))
            }
        }
    }

    /// Blocking twin of [`CachifyBuilder::build`], for programs without a
    /// runtime (it also works inside one).
    pub fn build_blocking(self) -> Result<Cachify, Error> {
        self.check()?;
        match self.redis_url.clone() {
            None => Ok(self.build_memory()),
            Some(url) => {
                let settings = self.redis_settings();
                let backend =
                    io::block_on(async move { RedisBackend::connect(&url, settings).await })?;
                Ok(self.with_redis(backend))
            }
        }
    }

    fn redis_settings(&self) -> RedisSettings {
        RedisSettings {
            codec: self.codec,
            connect_timeout: self.connect_timeout,
            command_timeout: self.command_timeout,
            max_value_size: self.max_value_size,
            lazy: self.lazy,
        }
    }

    fn build_memory(self) -> Cachify {
        let backend = Backend::Memory(MemoryBackend::new(self.max_entries));
        self.assemble(backend, "memory".into())
    }

    fn with_redis(self, backend: RedisBackend) -> Cachify {
        let shown = format!(
            "redis {}",
            self.redis_url.as_deref().map(redact).unwrap_or_default()
        );
        self.assemble(Backend::Redis(backend), shown)
    }

    fn assemble(self, backend: Backend, shown_backend: String) -> Cachify {
        Cachify {
            inner: Arc::new(Inner {
                backend,
                shown_backend,
                prefix: self.prefix,
                default_ttl: self.default_ttl,
                lock_ttl: self.lock_ttl,
                fill_wait: self.fill_wait.unwrap_or(self.lock_ttl.saturating_mul(2)),
                flights: Flights::default(),
                health: Health::new(self.breaker_threshold, self.breaker_cool_down),
            }),
        }
    }
}
