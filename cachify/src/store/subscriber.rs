//! Release messages from Redis: one RESP3 pub/sub connection per store,
//! shared by every waiter of the client, subscribed to a lock's channel
//! only while someone in this process waits for it.
//!
//! A single server uses `SUBSCRIBE` (its scripts `PUBLISH`), through a
//! redis-rs `ConnectionManager` that reconnects and resubscribes by
//! itself. A cluster uses sharded pub/sub (`SSUBSCRIBE`/`SPUBLISH`, Redis
//! 7): a channel lives in its lock's slot, so a release is published by
//! the node that ran the script, and redis-rs's cluster connection routes
//! and re-routes each subscription by that slot.
//!
//! Nothing here is needed for correctness: when the connection is down, or
//! the server cannot speak RESP3 (before Redis 6), a subscription fails,
//! quietly, and waiters fall back to their timed re-check.

use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{ProtocolVersion, PushInfo, PushKind, Value};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::Io;
use super::protocol::timed;
use super::wake::{Hub, Watch};
use crate::error::{BackendError, Error};
use crate::io;

/// The longest wait between two reconnection attempts of the subscriber.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// The subscriber of one store. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Subscriber {
    inner: Arc<Inner>,
}

struct Inner {
    hub: Arc<Hub>,
    connection: Connection,
    command_timeout: Duration,
    /// Subscribes and unsubscribes one at a time, so an unsubscription
    /// decided when a channel's last waiter left never lands after a new
    /// waiter's subscription to it.
    order: tokio::sync::Mutex<()>,
}

enum Connection {
    Node(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Subscriber {
    /// For a single server: a lazily connected RESP3 connection to it.
    /// Must run on the background runtime, like every connection.
    pub(crate) fn node(
        client: &redis::Client,
        connect_timeout: Duration,
        command_timeout: Duration,
    ) -> Result<Self, Error> {
        let info = client.get_connection_info().clone();
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let client = redis::Client::open(info.set_redis_settings(settings))
            .map_err(|error| Error::Backend(BackendError::from(error)))?;
        let (sender, messages) = unbounded_channel();
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(None)
            .set_max_delay(MAX_RECONNECT_DELAY)
            .set_push_sender(sender)
            .set_automatic_resubscription();
        let manager = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|error| Error::Backend(BackendError::from(error)))?;
        Ok(Self::start(
            Connection::Node(manager),
            messages,
            command_timeout,
        ))
    }

    /// For a cluster: a lazily connected RESP3 cluster connection. `build`
    /// finishes the store's own client settings (seeds, credentials,
    /// timeouts) with the push sender it is given.
    pub(crate) fn cluster(
        build: impl FnOnce(UnboundedSender<PushInfo>) -> Result<ClusterConnection, Error>,
        command_timeout: Duration,
    ) -> Result<Self, Error> {
        let (sender, messages) = unbounded_channel();
        let connection = build(sender)?;
        Ok(Self::start(
            Connection::Cluster(connection),
            messages,
            command_timeout,
        ))
    }

    fn start(
        connection: Connection,
        messages: UnboundedReceiver<PushInfo>,
        command_timeout: Duration,
    ) -> Self {
        let inner = Arc::new_cyclic(|weak: &Weak<Inner>| {
            let weak = weak.clone();
            let hub = Hub::with_idle(Box::new(move |channel| {
                let weak = weak.clone();
                io::spawn(async move {
                    if let Some(inner) = weak.upgrade() {
                        inner.unsubscribe(channel).await;
                    }
                });
            }));
            Inner {
                hub: Arc::new(hub),
                connection,
                command_timeout,
                order: tokio::sync::Mutex::new(()),
            }
        });
        io::spawn(deliver(Arc::downgrade(&inner.hub), messages));
        Self { inner }
    }

    /// Watches `channel`: the watch is subscribed (or the subscription
    /// failed, and the waiter relies on its re-check) when this resolves.
    pub(crate) fn watch(&self, channel: &str) -> Io<Watch> {
        let inner = Arc::clone(&self.inner);
        let watch = inner.hub.watch(channel);
        Box::pin(async move {
            inner.subscribe(watch.name()).await;
            Ok(watch)
        })
    }
}

impl Inner {
    async fn subscribe(&self, channel: &str) {
        let _order = self.order.lock().await;
        let subscribed = match &self.connection {
            Connection::Node(manager) => {
                timed(self.command_timeout, manager.clone().subscribe(channel)).await
            }
            Connection::Cluster(cluster) => {
                timed(self.command_timeout, cluster.clone().ssubscribe(channel)).await
            }
        };
        if let Err(error) = subscribed {
            tracing::debug!(
                target: "cachify::lock",
                channel,
                %error,
                "cachify: no release messages for this wait; re-checking on a timer"
            );
        }
    }

    async fn unsubscribe(&self, channel: String) {
        let _order = self.order.lock().await;
        // A waiter came back while this waited its turn.
        if self.hub.is_watched(&channel) {
            return;
        }
        // A failure leaves a subscription nobody listens to: harmless.
        let _ = match &self.connection {
            Connection::Node(manager) => {
                timed(self.command_timeout, manager.clone().unsubscribe(&channel)).await
            }
            Connection::Cluster(cluster) => {
                timed(self.command_timeout, cluster.clone().sunsubscribe(&channel)).await
            }
        };
    }
}

/// Rings the hub for every release message, until the connection (and
/// with it the sender) or the store is gone.
async fn deliver(hub: Weak<Hub>, mut messages: UnboundedReceiver<PushInfo>) {
    while let Some(push) = messages.recv().await {
        if !matches!(push.kind, PushKind::Message | PushKind::SMessage) {
            continue;
        }
        let Some(hub) = hub.upgrade() else {
            return;
        };
        if let Some(Value::BulkString(channel)) = push.data.first()
            && let Ok(channel) = std::str::from_utf8(channel)
        {
            hub.ring(channel);
        }
    }
}
