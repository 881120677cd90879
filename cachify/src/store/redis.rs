//! The Redis store, a single server: one auto-reconnecting multiplexed
//! connection (redis-rs `ConnectionManager`) for writes and lock commands,
//! and read connections on the callers' own runtimes. What it sends is
//! [`super::protocol`]'s.

use std::cell::RefCell;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::runtime::{Handle, Id as RuntimeId};
use tokio::sync::OnceCell;

use redis::AsyncConnectionConfig;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};

use redis::{Cmd, ConnectionInfo, FromRedisValue, ScriptInvocation};

use super::protocol::{ConnectSettings, Link, keyed, scan, timed};
use super::stall::WatchedConnection;
use super::subscriber::Subscriber;
use super::{Io, Watch};
use crate::error::{BackendError, Error};
use crate::io;
use crate::keyspace::KeyMatch;

/// How long redis-rs may wait between two reconnection attempts, so that
/// caching resumes soon after Redis is back.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// A single Redis server. Cheap to clone: every operation's I/O takes a
/// clone, so it owns what it needs and can run on any runtime.
#[derive(Clone)]
pub(crate) struct RedisStore {
    shared: Arc<Shared>,
}

struct Shared {
    /// Driven by cachify's background runtime: used by the blocking API and
    /// by callers outside any Tokio runtime.
    connection: ConnectionManager,
    runtimes: PerRuntime,
    command_timeout: Duration,
    /// Release messages for this client's lock waiters.
    subscriber: Subscriber,
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
    /// For TLS read connections, which redis-rs makes.
    config: AsyncConnectionConfig,
    connect_timeout: Duration,
    /// Bounded: runtimes come and go (one per `#[tokio::test]`), and a dead
    /// runtime's entry is never looked up again.
    connections: Mutex<Vec<(RuntimeId, ReadSlot)>>,
}

/// A runtime's read connection, connected by whichever read needs it first.
type ReadSlot = Arc<OnceCell<ReadConnection>>;

/// A read connection. Reads carry no timer of their own on a watched one:
/// its watchdog cuts it when Redis stops answering (see [`super::stall`]).
enum ReadConnection {
    /// TCP or a Unix socket.
    Watched(WatchedConnection),
    /// TLS, whose stream redis-rs makes and cannot be watched: each read
    /// is bounded by its own timer instead.
    Timed(MultiplexedConnection),
}

impl ReadConnection {
    /// `GET`, not bounded here.
    async fn get(&self, get: &Cmd) -> redis::RedisResult<Option<Vec<u8>>> {
        match self {
            Self::Watched(connection) => connection.query(get).await,
            Self::Timed(connection) => get.query_async(&mut connection.clone()).await,
        }
    }
}

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

impl RedisStore {
    /// Connects and PINGs, so that a wrong address, password or database
    /// number is an error here rather than on the first cached call; or,
    /// with `lazy`, only checks the URL and connects on first use. A server
    /// in cluster mode is refused with a hint to use `.redis_cluster`.
    ///
    /// Must run on the background runtime: redis-rs spawns the connection's
    /// driver task on the runtime it is created from.
    pub(crate) async fn connect(url: &str, settings: ConnectSettings) -> Result<Self, Error> {
        let shown = redact(url);
        let client = redis::Client::open(url).map_err(|error| invalid_url(&shown, &error))?;
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
            return Self::with(connection, client, &settings);
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
        // A server that cannot say (INFO renamed, an ACL user without it, a
        // proxy) is taken for a single node; one that says cluster mode is
        // refused, since its keys would answer MOVED.
        let info: Result<String, _> = redis::cmd("INFO")
            .arg("cluster")
            .query_async(&mut probe)
            .await;
        if info.is_ok_and(|info| info.contains("cluster_enabled:1")) {
            return Err(Error::Config(format!(
                "Redis at {shown} runs in cluster mode: use `Cachify::builder().redis_cluster([..])`"
            )));
        }
        drop(probe);

        let connection = ConnectionManager::new_with_config(client.clone(), manager_config.clone())
            .await
            .map_err(unreachable)?;
        Self::with(connection, client, &settings)
    }

    fn with(
        connection: ConnectionManager,
        client: redis::Client,
        settings: &ConnectSettings,
    ) -> Result<Self, Error> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        let subscriber =
            Subscriber::node(&client, settings.connect_timeout, settings.command_timeout)?;
        Ok(Self {
            shared: Arc::new(Shared {
                connection,
                runtimes: PerRuntime {
                    id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                    client,
                    config: AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(settings.connect_timeout))
                        .set_response_timeout(None),
                    connect_timeout: settings.connect_timeout,
                    connections: Mutex::new(Vec::new()),
                },
                command_timeout: settings.command_timeout,
                subscriber,
            }),
        })
    }
}

/// A URL redis-rs refuses, as a configuration error that never shows a password.
pub(crate) fn invalid_url(shown: &str, error: &redis::RedisError) -> Error {
    let hint = if error.to_string().contains("TLS") {
        " (rediss:// needs cachify's `tls` feature)"
    } else {
        ""
    };
    Error::Config(format!("invalid Redis URL {shown}: {error}{hint}"))
}

impl Shared {
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

    /// Bounds one operation by the command timeout.
    async fn timed<T>(
        &self,
        operation: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, Error> {
        timed(self.command_timeout, operation).await
    }

    /// Sends `command` on the ordered background connection.
    async fn ordered<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> Result<T, Error> {
        let mut connection = self.connection.clone();
        self.timed(command.query_async(&mut connection)).await
    }

    /// `get` is a `GET key` command.
    ///
    /// Every path but the hot one awaits a boxed future: a read's future is
    /// allocated and moved whole on every read, and the background
    /// connection, the TLS timer and the handshake would make it kilobytes.
    async fn get(self: Arc<Self>, get: Cmd) -> Result<Option<Vec<u8>>, Error> {
        let Some((runtime, slot)) = self.read_slot() else {
            return Box::pin(self.ordered(&get)).await;
        };
        let result = match slot.get() {
            // The hot path: no timer. Should Redis stall, the watchdog cuts
            // the connection within about the command timeout, failing
            // this read.
            Some(ReadConnection::Watched(connection)) => match connection.query(&get).await {
                Err(_) if connection.stalled() => Err(Error::Backend(BackendError::timed_out(
                    self.command_timeout,
                ))),
                result => result.map_err(Error::from),
            },
            Some(connection @ ReadConnection::Timed(_)) => {
                Box::pin(self.timed(connection.get(&get))).await
            }
            None => Box::pin(self.connect_and_get(&slot, &get)).await,
        };
        if result.is_err() {
            self.drop_slot(runtime, &slot);
        }
        result
    }

    /// Connects `slot` (unless another read did meanwhile) and reads. Every
    /// read waiting for the connection is bounded on its own, so that a
    /// stalled handshake costs each of them one timeout, not one each in
    /// turn.
    async fn connect_and_get(&self, slot: &ReadSlot, get: &Cmd) -> Result<Option<Vec<u8>>, Error> {
        let read = async {
            let connection = slot.get_or_try_init(|| self.connect_read()).await?;
            connection.get(get).await
        };
        self.timed(read).await
    }

    /// A read connection for the current runtime, connected (handshake
    /// included) within the connect timeout.
    async fn connect_read(&self) -> redis::RedisResult<ReadConnection> {
        let info = self.runtimes.client.get_connection_info();
        let connecting = WatchedConnection::connect(info, self.command_timeout);
        let watched = tokio::time::timeout(self.runtimes.connect_timeout, connecting)
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        if let Some(connection) = watched {
            return Ok(ReadConnection::Watched(connection));
        }
        let connection = self
            .runtimes
            .client
            .get_multiplexed_async_connection_with_config(&self.runtimes.config)
            .await?;
        Ok(ReadConnection::Timed(connection))
    }

    /// Deletes every key of `matching`, with `SCAN` (never `KEYS`, which
    /// blocks the server) and `UNLINK` in batches. Returns how many keys
    /// were deleted.
    async fn delete_matching(&self, matching: &KeyMatch) -> Result<u64, Error> {
        let mut connection = self.connection.clone();
        let mut cursor: u64 = 0;
        let mut deleted = 0;
        loop {
            let (next, mut keys): (u64, Vec<String>) = self
                .timed(scan(cursor, &matching.pattern).query_async(&mut connection))
                .await?;
            keys.retain(|key| matching.matches(key));
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

    async fn invoke<T: redis::FromRedisValue>(
        &self,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Result<T, Error> {
        let mut connection = self.connection.clone();
        self.timed(invocation.invoke_async(&mut connection)).await
    }
}

impl Link for RedisStore {
    fn read(&self, key: &str) -> Io<Option<Vec<u8>>> {
        Box::pin(Arc::clone(&self.shared).get(keyed("GET", key)))
    }

    fn send<T: FromRedisValue + Send + 'static>(&self, command: Cmd) -> Io<T> {
        let shared = Arc::clone(&self.shared);
        Box::pin(async move { shared.ordered(&command).await })
    }

    fn script<T: FromRedisValue + Send + 'static>(
        &self,
        invocation: ScriptInvocation<'static>,
    ) -> Io<T> {
        let shared = Arc::clone(&self.shared);
        Box::pin(async move { shared.invoke(invocation).await })
    }

    fn unlink_matching(&self, matching: &KeyMatch) -> Io<u64> {
        let (shared, matching) = (Arc::clone(&self.shared), matching.clone());
        Box::pin(async move { shared.delete_matching(&matching).await })
    }

    fn primaries(&self) -> Io<Vec<ConnectionInfo>> {
        let server = self.shared.runtimes.client.get_connection_info().clone();
        Box::pin(async move { Ok(vec![server]) })
    }

    fn watch(&self, channel: &str) -> Io<Watch> {
        self.shared.subscriber.watch(channel)
    }
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
