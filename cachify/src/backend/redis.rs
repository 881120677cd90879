//! The Redis backend: one auto-reconnecting multiplexed connection
//! (redis-rs `ConnectionManager`) shared by every caller, and two Lua
//! scripts that make lock release and renewal owner-only.

use std::cell::RefCell;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};
use std::time::Duration;

use tokio::runtime::{Handle, Id as RuntimeId};
use tokio::sync::OnceCell;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Script};

use super::clamp_ttl;
use crate::Error;
use crate::cache::CacheValue;
use crate::codec::Codec;
use crate::error::BackendError;
use crate::io;

/// Takes the lock if it is free and, in the same atomic step, draws the
/// next fencing token of that lock name.
static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then \
             return redis.call('INCR', KEYS[2]) \
         else \
             return false \
         end",
    )
});

/// Deletes the lock only if it still holds our token.
static UNLOCK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then \
             return redis.call('DEL', KEYS[1]) \
         else \
             return 0 \
         end",
    )
});

/// Renews the lease only if the lock still holds our token.
static EXTEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then \
             return redis.call('PEXPIRE', KEYS[1], ARGV[2]) \
         else \
             return 0 \
         end",
    )
});

/// Connection settings taken from the builder.
#[derive(Clone, Debug)]
pub(crate) struct RedisSettings {
    pub(crate) codec: Codec,
    pub(crate) connect_timeout: Duration,
    pub(crate) command_timeout: Duration,
    pub(crate) max_value_size: usize,
    pub(crate) lazy: bool,
}

/// How long redis-rs may wait between two reconnection attempts, so that
/// caching resumes soon after Redis is back.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub(crate) struct RedisBackend {
    /// Driven by cachify's background runtime: used by the blocking API and
    /// by callers outside any Tokio runtime.
    connection: ConnectionManager,
    runtimes: Arc<PerRuntime>,
    codec: Codec,
    command_timeout: Duration,
    max_value_size: usize,
}

/// Read connections driven by the callers' own runtimes, one per runtime
/// and client. A command sent on the background runtime's connection
/// crosses to its thread and back, two wake-ups that cost a serial cache
/// hit about 15% over a hand-written redis-rs call; on a connection of the
/// caller's runtime it does not.
///
/// They are plain multiplexed connections, made on first use: a
/// `ConnectionManager` takes a mutex shared by all workers on every
/// command, which costs throughput. A read connection that fails is
/// dropped, and the next read makes a new one.
struct PerRuntime {
    /// Tells this client's entries apart in the per-thread cache.
    id: u64,
    client: redis::Client,
    config: AsyncConnectionConfig,
    /// Bounded: runtimes come and go (one per `#[tokio::test]`), and a dead
    /// runtime's entry is never looked up again.
    connections: Mutex<Vec<(RuntimeId, ReadSlot)>>,
}

/// A runtime's read connection, connected by whichever read needs it first.
type ReadSlot = Arc<OnceCell<MultiplexedConnection>>;

/// How many runtimes' connections a client (and each thread) remembers.
const REMEMBERED_RUNTIMES: usize = 8;

thread_local! {
    /// Per-thread shortcut to [`PerRuntime::connections`], so the hot path
    /// takes no lock: `(client id, runtime id, connection)`.
    static LOCAL_CONNECTIONS: RefCell<Vec<(u64, RuntimeId, ReadSlot)>> =
        const { RefCell::new(Vec::new()) };
}

fn remember<T>(list: &mut Vec<T>, entry: T) {
    if list.len() >= REMEMBERED_RUNTIMES {
        list.remove(0);
    }
    list.push(entry);
}

impl RedisBackend {
    /// Connects and PINGs, so that a wrong address, password or database
    /// number is an error here rather than on the first cached call; or,
    /// with `lazy`, only checks the URL and connects on first use.
    ///
    /// Must run on the background runtime: redis-rs spawns the connection's
    /// driver task on the runtime it is created from.
    pub(crate) async fn connect(url: &str, settings: RedisSettings) -> Result<Self, Error> {
        let shown = redact(url);
        let client = redis::Client::open(url).map_err(|error| {
            let hint = if error.to_string().contains("TLS") {
                " (rediss:// needs cachify's `tls` feature)"
            } else {
                ""
            };
            Error::Config(format!("invalid Redis URL {shown}: {error}{hint}"))
        })?;
        let unreachable = |error: redis::RedisError| {
            Error::Backend(
                BackendError::from(error).context(format_args!("cannot use Redis at {shown}")),
            )
        };

        // No response timeout in redis-rs: `timed` bounds every command
        // (including the wait for a reconnection), and a second timer per
        // command costs throughput.
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.connect_timeout))
            .set_response_timeout(None)
            .set_max_delay(MAX_RECONNECT_DELAY);
        if settings.lazy {
            let connection =
                ConnectionManager::new_lazy_with_config(client.clone(), manager_config.clone())
                    .map_err(unreachable)?;
            return Ok(Self::with(connection, client, &settings));
        }

        let probe_config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(settings.connect_timeout))
            .set_response_timeout(Some(settings.command_timeout));
        let mut probe = client
            .get_multiplexed_async_connection_with_config(&probe_config)
            .await
            .map_err(unreachable)?;
        redis::cmd("PING")
            .query_async::<()>(&mut probe)
            .await
            .map_err(unreachable)?;
        drop(probe);

        let connection = ConnectionManager::new_with_config(client.clone(), manager_config.clone())
            .await
            .map_err(unreachable)?;
        Ok(Self::with(connection, client, &settings))
    }

    fn with(
        connection: ConnectionManager,
        client: redis::Client,
        settings: &RedisSettings,
    ) -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        Self {
            connection,
            runtimes: Arc::new(PerRuntime {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                client,
                config: AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(settings.connect_timeout))
                    .set_response_timeout(None),
                connections: Mutex::new(Vec::new()),
            }),
            codec: settings.codec,
            command_timeout: settings.command_timeout,
            max_value_size: settings.max_value_size,
        }
    }

    /// Encodes a value for `set`; `None` when it is over the size limit.
    pub(crate) fn encode_within_limit<T: CacheValue>(
        &self,
        key: &str,
        value: &T,
    ) -> Result<Option<Vec<u8>>, Error> {
        let bytes = self.encode(value)?;
        if bytes.len() > self.max_value_size {
            tracing::warn!(
                key,
                size = bytes.len(),
                limit = self.max_value_size,
                "cachify: value over the size limit; returned but not stored"
            );
            return Ok(None);
        }
        Ok(Some(bytes))
    }

    /// The read connection slot of this caller's runtime, or `None` for
    /// callers outside any runtime and on the background runtime, which read
    /// through the background connection.
    ///
    /// Only reads use per-runtime connections: writes, deletes and lock
    /// commands all go through the one background connection, so that a
    /// command that timed out on our side but still reaches Redis later can
    /// never overtake one issued after it.
    fn read_slot(&self) -> Option<(RuntimeId, ReadSlot)> {
        let runtime = Handle::try_current().ok()?.id();
        if runtime == io::handle().id() {
            return None;
        }
        let id = self.runtimes.id;
        let slot = LOCAL_CONNECTIONS.with_borrow_mut(|local| {
            if let Some((_, _, slot)) = local
                .iter()
                .find(|(client, at, _)| *client == id && *at == runtime)
            {
                return Arc::clone(slot);
            }
            let slot = self.shared_slot(runtime);
            remember(local, (id, runtime, Arc::clone(&slot)));
            slot
        });
        Some((runtime, slot))
    }

    /// The shared read slot of `runtime`, made if it has none yet.
    fn shared_slot(&self, runtime: RuntimeId) -> ReadSlot {
        let mut connections = self
            .runtimes
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((_, slot)) = connections.iter().find(|(at, _)| *at == runtime) {
            return Arc::clone(slot);
        }
        let slot = ReadSlot::default();
        remember(&mut connections, (runtime, Arc::clone(&slot)));
        slot
    }

    /// Forgets a failed read connection, here and in the per-thread caches
    /// (theirs are replaced when they next miss), so the next read reconnects.
    fn drop_slot(&self, runtime: RuntimeId, failed: &ReadSlot) {
        let mut connections = self
            .runtimes
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        connections.retain(|(at, slot)| !(*at == runtime && Arc::ptr_eq(slot, failed)));
        drop(connections);
        let id = self.runtimes.id;
        LOCAL_CONNECTIONS.with_borrow_mut(|local| {
            local.retain(|(client, at, slot)| {
                !(*client == id && *at == runtime && Arc::ptr_eq(slot, failed))
            });
        });
    }

    /// Bounds one operation by the command timeout. redis-rs has its own
    /// response timeout, but while it reconnects (with backoff) a command
    /// waits for the reconnection; this keeps every call within the limit.
    async fn timed<T>(
        &self,
        operation: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, Error> {
        match tokio::time::timeout(self.command_timeout, operation).await {
            Ok(reply) => Ok(reply?),
            Err(_) => Err(Error::Backend(BackendError::timed_out(
                self.command_timeout,
            ))),
        }
    }

    pub(crate) fn encode<T: CacheValue>(&self, value: &T) -> Result<Vec<u8>, Error> {
        Ok(self.codec.encode(value)?)
    }

    pub(crate) fn decode<T: CacheValue>(&self, bytes: &[u8]) -> Result<T, Error> {
        Ok(self.codec.decode(bytes)?)
    }

    pub(crate) async fn get_bytes(&self, key: &str) -> Result<Option<Vec<u8>>, Error> {
        let mut get = redis::cmd("GET");
        get.arg(key);
        let Some((runtime, slot)) = self.read_slot() else {
            let mut connection = self.connection.clone();
            return self.timed(get.query_async(&mut connection)).await;
        };
        let read = async {
            let connection = slot
                .get_or_try_init(|| {
                    self.runtimes
                        .client
                        .get_multiplexed_async_connection_with_config(&self.runtimes.config)
                })
                .await?;
            get.query_async(&mut connection.clone()).await
        };
        let result = self.timed(read).await;
        if result.is_err() {
            self.drop_slot(runtime, &slot);
        }
        result
    }

    pub(crate) async fn get<T: CacheValue>(&self, key: &str) -> Result<Option<T>, Error> {
        match self.get_bytes(key).await? {
            Some(bytes) => self.decode(&bytes).map(Some),
            None => Ok(None),
        }
    }

    pub(crate) async fn set(
        &self,
        key: &str,
        bytes: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<(), Error> {
        let mut connection = self.connection.clone();
        let mut command = redis::cmd("SET");
        command.arg(key).arg(bytes);
        if let Some(ttl) = ttl {
            command.arg("PX").arg(millis(ttl));
        }
        self.timed(command.query_async::<()>(&mut connection)).await
    }

    pub(crate) async fn delete(&self, key: &str) -> Result<(), Error> {
        let mut connection = self.connection.clone();
        self.timed(
            redis::cmd("DEL")
                .arg(key)
                .query_async::<()>(&mut connection),
        )
        .await
    }

    /// Deletes every key that starts with `prefix`, with `SCAN` (never
    /// `KEYS`, which blocks the server) and `UNLINK` in batches. Returns how
    /// many keys were deleted.
    #[cfg(feature = "axum")]
    pub(crate) async fn delete_prefix(&self, prefix: &str) -> Result<u64, Error> {
        let mut connection = self.connection.clone();
        let pattern = format!("{}*", glob_escape(prefix));
        let mut cursor: u64 = 0;
        let mut deleted = 0;
        loop {
            let mut scan = redis::cmd("SCAN");
            scan.arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(SCAN_BATCH);
            let (next, keys): (u64, Vec<String>) =
                self.timed(scan.query_async(&mut connection)).await?;
            if !keys.is_empty() {
                let unlinked: u64 = self
                    .timed(redis::cmd("UNLINK").arg(&keys).query_async(&mut connection))
                    .await?;
                deleted += unlinked;
            }
            if next == 0 {
                return Ok(deleted);
            }
            cursor = next;
        }
    }

    /// The token of whoever holds the lock.
    pub(crate) async fn lock_holder(&self, key: &str) -> Result<Option<String>, Error> {
        let mut connection = self.connection.clone();
        self.timed(redis::cmd("GET").arg(key).query_async(&mut connection))
            .await
    }

    pub(crate) async fn exists(&self, key: &str) -> Result<bool, Error> {
        let mut connection = self.connection.clone();
        self.timed(redis::cmd("EXISTS").arg(key).query_async(&mut connection))
            .await
    }

    /// Takes the lock if it is free; returns its fencing token.
    pub(crate) async fn try_lock(
        &self,
        key: &str,
        fence_key: &str,
        token: &str,
        lease: Duration,
    ) -> Result<Option<u64>, Error> {
        let mut connection = self.connection.clone();
        let mut invocation = ACQUIRE.key(key);
        invocation.key(fence_key).arg(token).arg(millis(lease));
        self.timed(invocation.invoke_async(&mut connection)).await
    }

    pub(crate) async fn unlock(&self, key: &str, token: &str) -> Result<bool, Error> {
        let mut connection = self.connection.clone();
        let mut invocation = UNLOCK.key(key);
        invocation.arg(token);
        let deleted: i64 = self.timed(invocation.invoke_async(&mut connection)).await?;
        Ok(deleted == 1)
    }

    pub(crate) async fn extend(
        &self,
        key: &str,
        token: &str,
        lease: Duration,
    ) -> Result<bool, Error> {
        let mut connection = self.connection.clone();
        let mut invocation = EXTEND.key(key);
        invocation.arg(token).arg(millis(lease));
        let renewed: i64 = self.timed(invocation.invoke_async(&mut connection)).await?;
        Ok(renewed == 1)
    }
}

/// How many keys one `SCAN` step asks for.
#[cfg(feature = "axum")]
const SCAN_BATCH: u64 = 500;

/// Escapes Redis glob metacharacters so `prefix` matches only itself.
#[cfg(feature = "axum")]
fn glob_escape(prefix: &str) -> String {
    let mut escaped = String::with_capacity(prefix.len() + 4);
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

fn millis(ttl: Duration) -> u64 {
    // clamp_ttl keeps this far below u64::MAX milliseconds.
    clamp_ttl(ttl).as_millis() as u64
}

/// The URL as it may be shown: any password replaced by `***`. A URL that
/// does not parse is not shown at all, since it may still hold a password.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "(not shown: it has no scheme such as redis://)".to_owned();
    };
    // Split at the last `@` first: a password may itself hold `@`, `:`,
    // `/` or `?`, and everything before that `@` is credentials.
    let (credentials, location) = match rest.rsplit_once('@') {
        Some((user_info, location)) => match user_info.split_once(':') {
            Some((user, _)) => (format!("{user}:***@"), location),
            // A lone `word@` may be a password written without its colon.
            None => ("***@".to_owned(), location),
        },
        None => (String::new(), rest),
    };
    // Unix-socket URLs carry the password as a query parameter.
    let location = match location.split_once('?') {
        Some((path, query)) => format!("{path}?{}", redact_query(query)),
        None => location.to_owned(),
    };
    format!("`{scheme}://{credentials}{location}`")
}

/// Hides the value of every query parameter that may hold a secret.
fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if name.to_ascii_lowercase().contains("pass") => format!("{name}=***"),
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[cfg(feature = "axum")]
    #[test]
    fn glob_characters_in_prefixes_match_only_themselves() {
        assert_eq!(super::glob_escape("a*b?[c]\\d:"), "a\\*b\\?\\[c\\]\\\\d:");
    }

    #[test]
    fn passwords_never_show() {
        assert_eq!(redact("redis://:s3cret@h:1/0"), "`redis://:***@h:1/0`");
        assert_eq!(redact("rediss://u:s3cret@h/2"), "`rediss://u:***@h/2`");
        assert_eq!(redact("redis://s3cret@h"), "`redis://***@h`");
        assert_eq!(redact("redis://u:pa/ss@h/0"), "`redis://u:***@h/0`");
        assert_eq!(
            redact("redis://u:pa?ss@h:6379/0"),
            "`redis://u:***@h:6379/0`"
        );
        assert_eq!(redact("redis://u:p?pass=x@h/0"), "`redis://u:***@h/0`");
        assert_eq!(
            redact("redis+unix:///tmp/r.sock?db=1&pass=s3cret"),
            "`redis+unix:///tmp/r.sock?db=1&pass=***`"
        );
        assert_eq!(
            redact("unix:///tmp/r.sock?password=s3cret"),
            "`unix:///tmp/r.sock?password=***`"
        );
        assert_eq!(redact("redis://h:6379/0"), "`redis://h:6379/0`");
        assert!(!redact("s3cret").contains("s3cret"));
        assert!(!redact("redis://u:p@ss:w@rd@h/0").contains("ss:w"));
    }
}
