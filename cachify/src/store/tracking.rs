//! The near cache's copies and the links that keep them coherent.
//!
//! Redis's server-assisted client-side caching in broadcasting mode: one
//! RESP3 connection to each primary runs `CLIENT TRACKING ON BCAST PREFIX
//! ..` over the value scopes, so Redis pushes the name of every value key
//! that changes there (a write from any client, a delete, expiry, eviction)
//! and a null on `FLUSHALL`/`FLUSHDB`. Broadcasting needs no per-key
//! bookkeeping on the server and does not depend on which connection read
//! a key, so reads keep using the ordinary connections.
//!
//! Coherence rules, each enforced here:
//! - A read's reply can race the invalidation of its key (Redis's
//!   client-side-caching page describes it): every invalidation bumps a
//!   sequence and stamps the key's slot with it, and a copy is installed
//!   only if nothing touched its slot (or flushed everything) since the read
//!   began. The check is repeated after the insert, so an invalidation that
//!   lands between check and insert removes the copy itself.
//! - While any link is down, or not yet tracking, nothing is served or
//!   installed; on every change of the links everything is dropped.
//! - A copy expires when the Redis entry does (its TTL is read with it).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use quanta::Instant;
use redis::aio::{AsyncPushSender, MultiplexedConnection, SendError};
use redis::{AsyncConnectionConfig, ConnectionInfo, ProtocolVersion, PushInfo, PushKind, Value};
use tokio::sync::Notify;

use super::local::LocalValues;
use super::protocol::{ConnectSettings, Link, timed};
use crate::error::{BackendError, Error};
use crate::health::Health;
use crate::io;
use crate::value::AnyValue;

/// How many slots key stamps are spread over. Two keys in one slot only
/// cost a skipped install, never a stale copy.
const SLOTS: usize = 4096;

/// How often each link is PINGed, and a cluster's primaries re-read: a
/// link that died without a word (a partition) is noticed within this plus
/// the command timeout.
const WATCH_INTERVAL: Duration = Duration::from_millis(250);

/// Longest pause between two attempts to bring the links back.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(1);

/// Where a read began, for [`Tracking::install`].
#[derive(Clone, Copy)]
pub(crate) struct Ticket {
    sequence: u64,
}

/// The near cache's copies, and whether they can be trusted now.
pub(crate) struct Tracking {
    copies: LocalValues,
    /// True while every primary's link tracks the value scopes.
    up: AtomicBool,
    /// Counts invalidations and flushes.
    sequence: AtomicU64,
    /// The sequence of the last invalidation of any key in each slot.
    stamps: Box<[AtomicU64]>,
    /// The sequence of the last flush.
    flushed: AtomicU64,
    /// The links in use; a push from older links changes nothing.
    generation: AtomicU64,
    /// Wakes the supervisor when a link reports it is gone.
    lost: Notify,
    health: Arc<Health>,
}

impl Tracking {
    /// Starts the links to `link`'s primaries on the background runtime;
    /// copies are served once they all track `scopes`.
    pub(crate) fn start<L: Link + Clone>(
        link: L,
        scopes: Vec<String>,
        max_entries: u64,
        settings: ConnectSettings,
        health: Arc<Health>,
    ) -> Arc<Self> {
        let tracking = Arc::new(Self::new(max_entries, health));
        io::spawn(supervise(link, Arc::downgrade(&tracking), scopes, settings));
        tracking
    }

    /// Down, and without links.
    fn new(max_entries: u64, health: Arc<Health>) -> Self {
        Self {
            copies: LocalValues::new(max_entries),
            up: AtomicBool::new(false),
            sequence: AtomicU64::new(0),
            stamps: (0..SLOTS).map(|_| AtomicU64::new(0)).collect(),
            flushed: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            lost: Notify::new(),
            health,
        }
    }

    /// The copies (served only while [`Tracking::is_up`]).
    pub(crate) fn copies(&self) -> &LocalValues {
        &self.copies
    }

    /// Whether copies are served now.
    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::SeqCst)
    }

    /// The copy of `key`, if one is held and the links are up.
    pub(crate) fn get(&self, key: &str) -> Option<AnyValue> {
        let counters = &self.health.counters;
        let copy = self.is_up().then(|| self.copies.get(key)).flatten();
        if copy.is_some() {
            counters.near_hits.add();
        } else {
            counters.near_misses.add();
        }
        copy
    }

    /// Marks the start of a read whose answer may be installed.
    pub(crate) fn begin(&self) -> Ticket {
        Ticket {
            sequence: self.sequence.load(Ordering::SeqCst),
        }
    }

    /// Whether anything that could make a copy read since `ticket` stale
    /// has happened.
    fn disturbed(&self, key: &str, ticket: Ticket) -> bool {
        !self.is_up()
            || self.flushed.load(Ordering::SeqCst) > ticket.sequence
            || self.stamps[slot(key)].load(Ordering::SeqCst) > ticket.sequence
    }

    /// Keeps `value`, read from Redis since `ticket`, as the copy of `key`
    /// until `expires`, unless the key changed (or the links did) since.
    pub(crate) fn install(
        &self,
        key: &str,
        value: &AnyValue,
        ticket: Ticket,
        expires: Option<Instant>,
    ) {
        if self.disturbed(key, ticket) {
            return;
        }
        self.copies.insert(key, value.clone(), expires);
        // An invalidation between the check and the insert has already run
        // its removal, before the copy was there: take the copy out again.
        if self.disturbed(key, ticket) {
            self.copies.remove_if_same(key, value);
        }
    }

    /// Drops the copy of `key`, and keeps reads under way from installing
    /// one: this process is about to change the key.
    pub(crate) fn forget(&self, key: &str) {
        let sequence = self.sequence.fetch_add(1, Ordering::SeqCst) + 1;
        self.stamps[slot(key)].fetch_max(sequence, Ordering::SeqCst);
        self.copies.remove(key);
    }

    /// [`Tracking::forget`], because Redis said the key changed.
    fn invalidate(&self, key: &str) {
        self.forget(key);
        self.health.counters.near_invalidations.add();
    }

    /// Drops every copy, and keeps reads under way from installing one.
    fn flush(&self) {
        let sequence = self.sequence.fetch_add(1, Ordering::SeqCst) + 1;
        self.flushed.fetch_max(sequence, Ordering::SeqCst);
        self.copies.clear();
        self.health.counters.near_invalidations.add();
    }

    /// Drops the copies of keys that start with `prefix`: this process is
    /// about to delete them.
    pub(crate) fn forget_prefix(&self, prefix: &str) {
        let sequence = self.sequence.fetch_add(1, Ordering::SeqCst) + 1;
        // Reads under way for any key are kept from installing: cheaper
        // than stamping every slot a key of the prefix may hash to.
        self.flushed.fetch_max(sequence, Ordering::SeqCst);
        self.copies.remove_prefix(prefix);
    }

    /// Stops serving copies, and drops them: from now until the links are
    /// back, Redis may change keys without telling us.
    fn go_down(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.flush();
    }

    /// Starts serving copies, with none yet: whatever was installed before
    /// the links came back may have missed an invalidation.
    fn go_up(&self) {
        self.flush();
        self.up.store(true, Ordering::SeqCst);
    }

    /// Applies one push from the links of `generation`.
    fn pushed(&self, generation: u64, push: &PushInfo) {
        match push.kind {
            PushKind::Invalidate => match push.data.first() {
                Some(Value::Array(keys)) => {
                    for key in keys {
                        match key {
                            Value::BulkString(key) => {
                                // cachify's keys are text: others are not ours.
                                if let Ok(key) = std::str::from_utf8(key) {
                                    self.invalidate(key);
                                }
                            }
                            _ => self.flush(),
                        }
                    }
                }
                // A null after FLUSHALL/FLUSHDB; anything unexpected is
                // treated the same, which is always safe.
                _ => self.flush(),
            },
            PushKind::Disconnection if self.generation.load(Ordering::SeqCst) == generation => {
                self.go_down();
                self.lost.notify_one();
            }
            _ => {}
        }
    }
}

/// The stamp slot of `key`.
fn slot(key: &str) -> usize {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(key);
    // Truncation keeps the low bits, which are as good as any.
    (hash as usize) % SLOTS
}

/// Hands a link's pushes to the tracking state, in the order the link
/// received them, on the connection's own driver task.
struct Pushes {
    tracking: Weak<Tracking>,
    generation: u64,
}

impl AsyncPushSender for Pushes {
    fn send(&self, push: PushInfo) -> Result<(), SendError> {
        let tracking = self.tracking.upgrade().ok_or(SendError)?;
        tracking.pushed(self.generation, &push);
        Ok(())
    }
}

/// Keeps the links up while the near cache exists: connects them, watches
/// them, and starts over (dropping every copy) whenever one fails or the
/// primaries change.
async fn supervise<L: Link>(
    link: L,
    tracking: Weak<Tracking>,
    scopes: Vec<String>,
    settings: ConnectSettings,
) {
    let mut delay = WATCH_INTERVAL / 5;
    let mut reported = false;
    loop {
        let Some(state) = tracking.upgrade() else {
            return;
        };
        let generation = state.generation.fetch_add(1, Ordering::SeqCst) + 1;
        let connected = connect(&link, &tracking, generation, &scopes, &settings).await;
        let (mut links, primaries) = match connected {
            Ok(connected) => connected,
            Err(error) => {
                state.go_down();
                if !reported {
                    tracing::warn!(%error, "cachify: the near cache cannot track Redis; reading Redis on every call until it can");
                    reported = true;
                }
                drop(state);
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_RETRY_DELAY);
                continue;
            }
        };
        state.go_up();
        if reported {
            tracing::info!("cachify: the near cache tracks Redis again");
            reported = false;
        }
        delay = WATCH_INTERVAL / 5;
        drop(state);
        watch(&link, &tracking, &mut links, &primaries, &settings).await;
        let Some(state) = tracking.upgrade() else {
            return;
        };
        // Retired before the links close, so their farewell pushes change nothing.
        state.generation.fetch_add(1, Ordering::SeqCst);
        drop(links);
        state.go_down();
    }
}

/// Connects a tracking link to every primary: `(links, their addresses)`.
async fn connect<L: Link>(
    link: &L,
    tracking: &Weak<Tracking>,
    generation: u64,
    scopes: &[String],
    settings: &ConnectSettings,
) -> Result<(Vec<MultiplexedConnection>, Vec<String>), Error> {
    let primaries = tokio::time::timeout(settings.command_timeout, link.primaries())
        .await
        .map_err(|_| Error::Backend(BackendError::timed_out(settings.command_timeout)))??;
    let mut links = Vec::with_capacity(primaries.len());
    let mut addresses = Vec::with_capacity(primaries.len());
    for primary in primaries {
        addresses.push(primary.addr().to_string());
        links.push(track(primary, tracking, generation, scopes, settings).await?);
    }
    // Nodes list the primaries in no fixed order.
    addresses.sort_unstable();
    Ok((links, addresses))
}

/// One RESP3 link to one primary, tracking `scopes` in broadcasting mode.
async fn track(
    primary: ConnectionInfo,
    tracking: &Weak<Tracking>,
    generation: u64,
    scopes: &[String],
    settings: &ConnectSettings,
) -> Result<MultiplexedConnection, Error> {
    let resp3 = primary
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP3);
    let client = redis::Client::open(primary.set_redis_settings(resp3))?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(settings.connect_timeout))
        .set_response_timeout(Some(settings.command_timeout))
        .set_push_sender(Pushes {
            tracking: Weak::clone(tracking),
            generation,
        });
    let mut connection = timed(
        settings.connect_timeout,
        client.get_multiplexed_async_connection_with_config(&config),
    )
    .await?;
    let mut command = redis::cmd("CLIENT");
    command.arg("TRACKING").arg("ON").arg("BCAST");
    for scope in scopes {
        command.arg("PREFIX").arg(scope);
    }
    timed(
        settings.command_timeout,
        command.query_async::<()>(&mut connection),
    )
    .await?;
    Ok(connection)
}

/// Returns when a link fails (a push said so, or a PING did not come
/// back), when the primaries changed, or when the near cache is gone.
async fn watch<L: Link>(
    link: &L,
    tracking: &Weak<Tracking>,
    links: &mut [MultiplexedConnection],
    primaries: &[String],
    settings: &ConnectSettings,
) {
    loop {
        {
            let Some(state) = tracking.upgrade() else {
                return;
            };
            let lost = state.lost.notified();
            if !state.is_up() {
                return;
            }
            if tokio::time::timeout(WATCH_INTERVAL, lost).await.is_ok() {
                return;
            }
        }
        for connection in links.iter_mut() {
            let ping = redis::cmd("PING");
            let pong = ping.query_async::<()>(connection);
            if timed(settings.command_timeout, pong).await.is_err() {
                return;
            }
        }
        let now = tokio::time::timeout(settings.command_timeout, link.primaries()).await;
        // Not knowing the primaries is not a failed link: the PINGs above
        // say whether the links still work.
        if let Ok(Ok(now)) = now {
            let mut now: Vec<String> = now.iter().map(|info| info.addr().to_string()).collect();
            now.sort_unstable();
            if now != primaries {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::value::take;

    fn tracking() -> Tracking {
        let tracking = Tracking::new(100, Arc::new(Health::new(5, Duration::from_secs(1))));
        tracking.go_up();
        tracking
    }

    fn value(n: u32) -> AnyValue {
        AnyValue::new(Arc::new(n))
    }

    fn held(tracking: &Tracking, key: &str) -> Option<u32> {
        tracking.get(key).and_then(take::<u32>)
    }

    /// The race of Redis's client-side-caching page: the reply of a read
    /// arrives after the invalidation of its key. It must not be kept.
    #[test]
    fn a_read_that_raced_an_invalidation_is_not_kept() {
        let tracking = tracking();
        let ticket = tracking.begin();
        tracking.invalidate("k");
        tracking.install("k", &value(1), ticket, None);
        assert_eq!(held(&tracking, "k"), None);

        let ticket = tracking.begin();
        tracking.install("k", &value(2), ticket, None);
        assert_eq!(held(&tracking, "k"), Some(2), "an undisturbed read is kept");
    }

    #[test]
    fn other_keys_flushes_and_lost_links() {
        let tracking = tracking();
        assert_ne!(slot("k"), slot("other"), "the test needs two slots");
        let ticket = tracking.begin();
        tracking.invalidate("other");
        tracking.install("k", &value(1), ticket, None);
        assert_eq!(
            held(&tracking, "k"),
            Some(1),
            "another key's change does not matter"
        );

        let ticket = tracking.begin();
        tracking.flush();
        assert_eq!(held(&tracking, "k"), None, "a flush drops every copy");
        tracking.install("k", &value(2), ticket, None);
        assert_eq!(
            held(&tracking, "k"),
            None,
            "nor is a read from before it kept"
        );

        let ticket = tracking.begin();
        tracking.install("k", &value(3), ticket, None);
        tracking.go_down();
        assert_eq!(held(&tracking, "k"), None, "nothing is served while down");
        tracking.install("k", &value(4), ticket, None);
        tracking.go_up();
        assert_eq!(
            held(&tracking, "k"),
            None,
            "nothing from before the links came back"
        );

        let ticket = tracking.begin();
        tracking.install("p:1", &value(5), ticket, None);
        tracking.install("q:1", &value(6), ticket, None);
        tracking.forget_prefix("p:");
        assert_eq!(held(&tracking, "p:1"), None);
        assert_eq!(held(&tracking, "q:1"), Some(6));
    }

    #[test]
    fn pushes_from_retired_links_change_nothing() {
        let tracking = tracking();
        tracking.generation.store(2, Ordering::SeqCst);
        tracking.install("k", &value(1), tracking.begin(), None);
        tracking.pushed(
            1,
            &PushInfo {
                kind: PushKind::Disconnection,
                data: vec![],
            },
        );
        assert!(tracking.is_up());
        assert_eq!(held(&tracking, "k"), Some(1));
        tracking.pushed(
            2,
            &PushInfo {
                kind: PushKind::Disconnection,
                data: vec![],
            },
        );
        assert!(
            !tracking.is_up(),
            "the current link's end takes the near cache down"
        );
    }

    #[test]
    fn invalidation_pushes() {
        let tracking = tracking();
        tracking.install("a", &value(1), tracking.begin(), None);
        tracking.install("b", &value(2), tracking.begin(), None);
        let keys = Value::Array(vec![Value::BulkString(b"a".to_vec())]);
        tracking.pushed(
            0,
            &PushInfo {
                kind: PushKind::Invalidate,
                data: vec![keys],
            },
        );
        assert_eq!(held(&tracking, "a"), None);
        assert_eq!(held(&tracking, "b"), Some(2));
        tracking.pushed(
            0,
            &PushInfo {
                kind: PushKind::Invalidate,
                data: vec![Value::Nil],
            },
        );
        assert_eq!(held(&tracking, "b"), None, "FLUSHALL drops everything");
    }
}
