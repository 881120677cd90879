//! The Redis Cluster store, on redis-rs's own cluster client: it routes
//! each command by its key's slot, follows `MOVED` and `ASK`, and refreshes
//! the topology after a failover. The lock scripts touch a lock and its
//! fencing counter, whose keys share a hash slot (see [`crate::keyspace`]).

use std::sync::Arc;
use std::time::Duration;

use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{
    Cmd, ConnectionAddr, ConnectionInfo, FromRedisValue, ProtocolVersion, ScriptInvocation,
};

use super::protocol::{ConnectSettings, Link, keyed, scan, timed};
use super::redis::{invalid_url, redact};
use super::subscriber::Subscriber;
use super::{Io, Watch};
use crate::error::{BackendError, Error};
use crate::keyspace::KeyMatch;

/// How often redis-rs retries a command that met a moved slot or a lost
/// node, and how long it waits between tries (milliseconds, growing from
/// the first to the last). The command timeout bounds the whole, so a call
/// never waits past it; redis-rs's own defaults wait seconds per retry.
const RETRIES: u32 = 8;
const MIN_RETRY_WAIT_MS: u64 = 10;
const MAX_RETRY_WAIT_MS: u64 = 250;

/// A Redis Cluster. Cheap to clone: every operation's I/O takes a clone.
#[derive(Clone)]
pub(crate) struct ClusterStore {
    shared: Arc<Shared>,
}

struct Shared {
    /// Driven by cachify's background runtime, usable from any runtime.
    connection: ClusterConnection,
    command_timeout: Duration,
    /// The first seed's settings (credentials, TLS), to reach each primary.
    seed: ConnectionInfo,
    /// Release messages for this client's lock waiters.
    subscriber: Subscriber,
}

impl ClusterStore {
    /// Connects to the cluster through `seeds` and reads its slot map (or,
    /// with `lazy`, only checks the URLs and connects on first use).
    ///
    /// Must run on the background runtime: redis-rs spawns the connection's
    /// driver task on the runtime it is created from.
    pub(crate) async fn connect(
        seeds: &[String],
        settings: ConnectSettings,
    ) -> Result<Self, Error> {
        let shown = seeds
            .iter()
            .map(|seed| redact(seed))
            .collect::<Vec<_>>()
            .join(", ");
        let mut parsed = Vec::with_capacity(seeds.len());
        for seed in seeds {
            let client = redis::Client::open(seed.as_str())
                .map_err(|error| invalid_url(&redact(seed), &error))?;
            parsed.push(client.get_connection_info().clone());
        }
        let seed = parsed
            .into_iter()
            .next()
            .ok_or_else(|| Error::Config("redis_cluster needs at least one seed URL".into()))?;
        let builder = || {
            ClusterClient::builder(seeds.iter().map(String::as_str))
                .connection_timeout(settings.connect_timeout)
                .response_timeout(settings.command_timeout)
                .retries(RETRIES)
                .min_retry_wait(MIN_RETRY_WAIT_MS)
                .max_retry_wait(MAX_RETRY_WAIT_MS)
        };
        let invalid = |error: redis::RedisError| {
            Error::Config(format!("invalid Redis Cluster seeds {shown}: {error}"))
        };
        let client = builder().build().map_err(invalid)?;
        let config = || {
            ClusterConfig::new()
                .set_connection_timeout(settings.connect_timeout)
                .set_response_timeout(settings.command_timeout)
        };
        // Sharded pub/sub needs RESP3 and a push sender; connected on the
        // first wait, and reconnected and resubscribed by redis-rs.
        let subscriber = Subscriber::cluster(
            |sender| {
                let client = builder()
                    .use_protocol(ProtocolVersion::RESP3)
                    .push_sender(sender)
                    .build()
                    .map_err(invalid)?;
                Ok(client.get_pending_async_connection_with_config(config()))
            },
            settings.command_timeout,
        )?;
        let connection = if settings.lazy {
            client.get_pending_async_connection_with_config(config())
        } else {
            let connecting = client.get_async_connection_with_config(config());
            match tokio::time::timeout(settings.connect_timeout, connecting).await {
                Ok(connected) => connected.map_err(|error| {
                    Error::Backend(
                        BackendError::from(error)
                            .context(format_args!("cannot use the Redis Cluster at {shown}")),
                    )
                })?,
                Err(_) => {
                    return Err(Error::Backend(
                        BackendError::timed_out(settings.connect_timeout)
                            .context(format_args!("cannot reach the Redis Cluster at {shown}")),
                    ));
                }
            }
        };
        let store = Self {
            shared: Arc::new(Shared {
                connection,
                command_timeout: settings.command_timeout,
                seed,
                subscriber,
            }),
        };
        if !settings.lazy {
            let pong: String = store.shared.query(&redis::cmd("PING")).await?;
            debug_assert_eq!(pong, "PONG");
        }
        Ok(store)
    }
}

impl Shared {
    async fn query<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> Result<T, Error> {
        let mut connection = self.connection.clone();
        timed(self.command_timeout, command.query_async(&mut connection)).await
    }

    async fn invoke<T: redis::FromRedisValue>(
        &self,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Result<T, Error> {
        let mut connection = self.connection.clone();
        timed(
            self.command_timeout,
            invocation.invoke_async(&mut connection),
        )
        .await
        .map_err(cross_slot_hint)
    }

    /// The addresses of the primaries that serve slots, from `CLUSTER NODES`.
    async fn primaries(&self) -> Result<Vec<(String, u16)>, Error> {
        let nodes: String = self.query(redis::cmd("CLUSTER").arg("NODES")).await?;
        primaries_of(&nodes)
    }

    /// How to reach each primary: the seed's settings at its address.
    async fn primary_connections(&self) -> Result<Vec<ConnectionInfo>, Error> {
        let primaries = self.primaries().await?;
        Ok(primaries
            .into_iter()
            .map(|(host, port)| {
                let address = match self.seed.addr() {
                    ConnectionAddr::TcpTls {
                        insecure,
                        tls_params,
                        ..
                    } => ConnectionAddr::TcpTls {
                        host,
                        port,
                        insecure: *insecure,
                        tls_params: tls_params.clone(),
                    },
                    _ => ConnectionAddr::Tcp(host, port),
                };
                self.seed.clone().set_addr(address)
            })
            .collect())
    }

    /// Deletes every key of `matching` on every primary: `SCAN` each one in
    /// batches (never `KEYS`), and `UNLINK` what it finds.
    async fn delete_matching(&self, matching: &KeyMatch) -> Result<u64, Error> {
        let mut deleted = 0;
        for (host, port) in self.primaries().await? {
            let node = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                host: host.clone(),
                port,
            });
            let mut cursor: u64 = 0;
            loop {
                let mut connection = self.connection.clone();
                let reply = timed(
                    self.command_timeout,
                    connection.route_command(scan(cursor, &matching.pattern), node.clone()),
                )
                .await?;
                let (next, mut keys): (u64, Vec<String>) = redis::from_redis_value(reply)
                    .map_err(|error| Error::Backend(BackendError::new(error.to_string())))?;
                keys.retain(|key| matching.matches(key));
                if !keys.is_empty() {
                    // redis-rs splits a multi-key UNLINK by slot.
                    let unlinked: u64 = self.query(redis::cmd("UNLINK").arg(&keys)).await?;
                    deleted += unlinked;
                }
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        Ok(deleted)
    }
}

/// The primaries that serve slots, as `(host, port)`, from the text of
/// `CLUSTER NODES`. A failing primary (`fail`, `fail?`) or one without an
/// address is an error: skipping it would leave its keys behind silently.
fn primaries_of(nodes: &str) -> Result<Vec<(String, u16)>, Error> {
    let mut primaries = Vec::new();
    for line in nodes.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(address), Some(flags)) = (fields.get(1), fields.get(2)) else {
            continue;
        };
        let flags: Vec<&str> = flags.split(',').collect();
        let serving = fields.len() > 8;
        if !serving || !flags.contains(&"master") {
            continue;
        }
        if flags
            .iter()
            .any(|flag| matches!(*flag, "fail" | "fail?" | "noaddr"))
        {
            return Err(Error::Backend(BackendError::new(format!(
                "primary {address} of the Redis Cluster is failing; not every primary can be scanned now"
            ))));
        }
        // `ip:port@cport[,hostname]`
        let location = address.split('@').next().unwrap_or_default();
        let parsed = location
            .rsplit_once(':')
            .and_then(|(host, port)| Some((host.to_owned(), port.parse().ok()?)));
        match parsed {
            Some(primary) => primaries.push(primary),
            None => {
                return Err(Error::Backend(BackendError::new(format!(
                    "unreadable node address `{address}` in CLUSTER NODES"
                ))));
            }
        }
    }
    Ok(primaries)
}

/// A lock and its counter in two slots can only come from a lock name with
/// a `}` outside any hash tag: say so instead of Redis's bare CROSSSLOT.
fn cross_slot_hint(error: Error) -> Error {
    match error {
        Error::Backend(backend) if backend.to_string().contains("CROSSSLOT") => {
            Error::Config(format!(
                "{backend}: on a Redis Cluster a lock name may not hold a `}}` outside a hash tag"
            ))
        }
        other => other,
    }
}

impl Link for ClusterStore {
    fn read(&self, key: &str) -> Io<Option<Vec<u8>>> {
        self.send(keyed("GET", key))
    }

    fn send<T: FromRedisValue + Send + 'static>(&self, command: Cmd) -> Io<T> {
        let shared = Arc::clone(&self.shared);
        Box::pin(async move { shared.query(&command).await })
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
        let shared = Arc::clone(&self.shared);
        Box::pin(async move { shared.primary_connections().await })
    }

    fn publish(&self) -> &'static str {
        "SPUBLISH"
    }

    fn watch(&self, channel: &str) -> Io<Watch> {
        self.shared.subscriber.watch(channel)
    }
}

#[cfg(test)]
mod tests {
    use super::primaries_of;

    #[test]
    fn primaries_are_read_from_cluster_nodes() {
        let nodes = "\
a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
b2 127.0.0.1:7001@17001 master - 0 0 2 connected 5461-10922
d4 127.0.0.1:7003@17003 slave a1 0 0 1 connected
c3 127.0.0.1:7002@17002,node-c master - 0 0 4 connected 10923-16383
f6 127.0.0.1:7005@17005 master,fail - 0 0 0 connected
";
        assert_eq!(
            primaries_of(nodes).unwrap(),
            vec![
                ("127.0.0.1".to_owned(), 7000),
                ("127.0.0.1".to_owned(), 7001),
                ("127.0.0.1".to_owned(), 7002),
            ]
        );
        for flags in ["master,fail", "master,fail?", "master,noaddr"] {
            let failing = format!("{nodes}e5 127.0.0.1:7004@17004 {flags} - 0 0 5 connected 1-2\n");
            assert!(primaries_of(&failing).is_err(), "{flags}");
        }
    }
}
