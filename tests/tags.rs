//! `#[cached(tags = [..])]` and `invalidate_tags`, on memory, one Redis
//! node and the Redis Cluster, async and sync:
//!
//! - an invalidation deletes the entries of every function under the tag,
//!   and nothing untagged or under another tag;
//! - no race: a value computed from data read before an invalidation and
//!   stored after it does not survive it (the function reads its data,
//!   then waits while the test changes the data and invalidates);
//! - the near cache drops invalidated entries at once;
//! - the global functions use the global client (a scope's).

mod support;

use std::sync::Barrier;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use cachify::{Cachify, CachifyBuilder, cached};
use tokio::sync::Semaphore;

#[derive(Clone, Copy, Debug)]
enum Store {
    Memory,
    Redis,
    Cluster,
}

impl Store {
    /// A builder under a prefix no other test uses.
    fn builder(self, test: &str) -> CachifyBuilder {
        let builder = Cachify::builder()
            .prefix(format!("tags-{test}-{self:?}:"))
            .command_timeout(Duration::from_secs(2));
        match self {
            Store::Memory => builder.memory(),
            Store::Redis => builder.redis(support::shared_server().url()),
            Store::Cluster => builder.redis_cluster(support::cluster::shared_cluster().seeds()),
        }
    }

    async fn client(self, test: &str) -> Cachify {
        self.builder(test)
            .build()
            .await
            .expect("build the test client")
    }
}

/// One `#[tokio::test]` per backend for each `async fn(Store)`, and one
/// `#[test]` per backend for each `fn(Store)` (sync, no runtime).
macro_rules! on_every_backend {
    (async: [$($test:ident),* $(,)?], sync: [$($sync:ident),* $(,)?]) => {
        mod memory {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $test() { super::$test(super::Store::Memory).await; })*
            $(#[test] fn $sync() { super::$sync(super::Store::Memory); })*
        }
        mod redis {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $test() { super::$test(super::Store::Redis).await; })*
            $(#[test] fn $sync() { super::$sync(super::Store::Redis); })*
        }
        mod cluster {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $test() { super::$test(super::Store::Cluster).await; })*
            $(#[test] fn $sync() { super::$sync(super::Store::Cluster); })*
        }
    };
}

on_every_backend!(
    async: [
        invalidation_reaches_every_function_under_the_tag,
        a_value_computed_across_an_invalidation_is_not_kept,
        an_entry_written_again_after_an_invalidation_stays_tagged,
        the_global_functions_use_the_scope_client,
    ],
    sync: [
        blocking_invalidation_reaches_every_function_under_the_tag,
        blocking_value_computed_across_an_invalidation_is_not_kept,
        tags_read_fields_and_debug_values,
    ]
);

/// Runs of a function, counted per test.
#[derive(Default)]
struct Calls(AtomicU32);

impl Calls {
    fn bump(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }

    fn get(&self) -> u32 {
        self.0.load(Ordering::SeqCst)
    }
}

#[cached("profile-{id}", tags = ["user:{id}", "users"], client = client)]
async fn profile(client: &Cachify, calls: &Calls, id: u64) -> String {
    calls.bump();
    format!("profile {id}")
}

#[cached("settings-{id}", tags = ["user:{id}"], client = client)]
async fn settings(client: &Cachify, calls: &Calls, id: u64) -> String {
    calls.bump();
    format!("settings {id}")
}

#[cached("plain-{id}", client = client)]
async fn plain(client: &Cachify, calls: &Calls, id: u64) -> String {
    calls.bump();
    format!("plain {id}")
}

async fn invalidation_reaches_every_function_under_the_tag(store: Store) {
    let client = store.client("every-function").await;
    let (profiles, settings_calls, plains) = (Calls::default(), Calls::default(), Calls::default());
    for id in [1, 2] {
        profile(&client, &profiles, id).await;
        settings(&client, &settings_calls, id).await;
        plain(&client, &plains, id).await;
    }
    assert_eq!(
        (profiles.get(), settings_calls.get(), plains.get()),
        (2, 2, 2)
    );

    client.invalidate_tags(["user:1"]).await.unwrap();
    for id in [1, 2] {
        profile(&client, &profiles, id).await;
        settings(&client, &settings_calls, id).await;
        plain(&client, &plains, id).await;
    }
    assert_eq!(
        (profiles.get(), settings_calls.get(), plains.get()),
        (3, 3, 2),
        "user:1 went from both functions; user 2 and the untagged entries stayed"
    );

    client.invalidate_tags(["users"]).await.unwrap();
    for id in [1, 2] {
        profile(&client, &profiles, id).await;
        settings(&client, &settings_calls, id).await;
    }
    assert_eq!(
        (profiles.get(), settings_calls.get()),
        (5, 3),
        "`users` tags every profile and no settings"
    );

    client
        .invalidate_tags(["no-such-tag", "user:9"])
        .await
        .unwrap();
    profile(&client, &profiles, 1).await;
    assert_eq!(profiles.get(), 5, "an unknown tag deletes nothing");
}

/// Holds a function between reading its data and returning, once.
struct Gate {
    armed: AtomicBool,
    entered: Semaphore,
    release: Semaphore,
}

impl Gate {
    fn new() -> Self {
        Self {
            armed: AtomicBool::new(true),
            entered: Semaphore::new(0),
            release: Semaphore::new(0),
        }
    }

    /// In the function: the first call signals and waits to be released.
    async fn pass(&self) {
        if self.armed.swap(false, Ordering::SeqCst) {
            self.entered.add_permits(1);
            self.release.acquire().await.unwrap().forget();
        }
    }
}

#[cached("balance-{id}", tags = ["account:{id}"], client = client)]
async fn balance(client: &Cachify, data: &AtomicU32, gate: &Gate, id: u64) -> u32 {
    let read = data.load(Ordering::SeqCst);
    gate.pass().await;
    read
}

async fn a_value_computed_across_an_invalidation_is_not_kept(store: Store) {
    let client = store.client("race").await;
    let data = AtomicU32::new(1);
    let gate = Gate::new();
    let _deadline = support::Deadline::new(Duration::from_secs(30), "the race test");

    let call = balance(&client, &data, &gate, 7);
    let writer = async {
        gate.entered.acquire().await.unwrap().forget();
        // The call has read 1 and waits: the data changes and is
        // invalidated before it stores what it read.
        data.store(2, Ordering::SeqCst);
        client.invalidate_tags(["account:7"]).await.unwrap();
        gate.release.add_permits(1);
    };
    let (stale, ()) = tokio::join!(call, writer);
    assert_eq!(stale, 1, "the racing call returns what it read");

    assert_eq!(
        balance(&client, &data, &gate, 7).await,
        2,
        "the value read before the invalidation did not survive it"
    );
    assert_eq!(
        balance(&client, &data, &gate, 7).await,
        2,
        "and the fresh value is cached"
    );
    data.store(3, Ordering::SeqCst);
    assert_eq!(balance(&client, &data, &gate, 7).await, 2, "cached");
}

#[cached("counter-{id}", tags = ["counter"], client = client)]
async fn counter(client: &Cachify, data: &AtomicU32, id: u64) -> u32 {
    data.load(Ordering::SeqCst)
}

/// An invalidation takes off its index only what it deleted: an entry of
/// the same key written again afterwards is found by the next one.
async fn an_entry_written_again_after_an_invalidation_stays_tagged(store: Store) {
    let client = store.client("rewritten").await;
    let data = AtomicU32::new(1);
    assert_eq!(counter(&client, &data, 1).await, 1);
    for round in 2..5 {
        data.store(round, Ordering::SeqCst);
        client.invalidate_tags(["counter"]).await.unwrap();
        assert_eq!(counter(&client, &data, 1).await, round, "round {round}");
        assert_eq!(counter(&client, &data, 1).await, round, "cached again");
    }
}

async fn the_global_functions_use_the_scope_client(store: Store) {
    let client = store.client("global").await;
    let calls = Calls::default();
    cachify::scope(&client, async {
        profile(&client, &calls, 5).await;
        cachify::invalidate_tags(["user:5"]).await.unwrap();
        profile(&client, &calls, 5).await;
    })
    .await;
    assert_eq!(
        calls.get(),
        2,
        "cachify::invalidate_tags used the scope's client"
    );
}

#[cached("report-{id}", tags = ["team:{team}", "reports"], client = client)]
fn report(client: &Cachify, calls: &Calls, team: &str, id: u64) -> String {
    calls.bump();
    format!("report {id} of {team}")
}

fn blocking_invalidation_reaches_every_function_under_the_tag(store: Store) {
    let client = store
        .builder("blocking-every")
        .build_blocking()
        .expect("build the test client");
    let calls = Calls::default();
    report(&client, &calls, "red", 1);
    report(&client, &calls, "blue", 2);
    report(&client, &calls, "red", 1);
    assert_eq!(calls.get(), 2);
    client.invalidate_tags_blocking(["team:red"]).unwrap();
    report(&client, &calls, "red", 1);
    report(&client, &calls, "blue", 2);
    assert_eq!(calls.get(), 3, "only the red report ran again");
    cachify::scope_blocking(&client, || cachify::invalidate_tags_blocking(["reports"])).unwrap();
    report(&client, &calls, "red", 1);
    report(&client, &calls, "blue", 2);
    assert_eq!(calls.get(), 5, "the global function reached every report");
}

struct Account {
    id: u64,
    region: String,
}

#[cached(
    "account-{account.id}",
    tags = ["region:{account.region}", "batch:{batch:?}"],
    client = client
)]
fn account_summary(client: &Cachify, calls: &Calls, account: &Account, batch: &[u32]) -> String {
    calls.bump();
    format!("account {} in {}", account.id, account.region)
}

/// Tag templates read fields and `{x:?}` like key templates, and render
/// values as they format: `Debug` of `[1, 2]` is `[1, 2]`.
fn tags_read_fields_and_debug_values(store: Store) {
    let client = store
        .builder("fields")
        .build_blocking()
        .expect("build the test client");
    let calls = Calls::default();
    let account = Account {
        id: 4,
        region: "eu west".into(),
    };
    account_summary(&client, &calls, &account, &[1, 2]);
    account_summary(&client, &calls, &account, &[1, 2]);
    assert_eq!(calls.get(), 1);
    client.invalidate_tags_blocking(["region:eu west"]).unwrap();
    account_summary(&client, &calls, &account, &[1, 2]);
    assert_eq!(calls.get(), 2, "the field's tag");
    client.invalidate_tags_blocking(["batch:[1, 2]"]).unwrap();
    account_summary(&client, &calls, &account, &[1, 2]);
    assert_eq!(calls.get(), 3, "the Debug tag");
}

/// Holds a sync function between reading its data and returning, once.
struct BlockingGate {
    armed: AtomicBool,
    entered: Barrier,
    release: Barrier,
}

#[cached("stock-{id}", tags = ["stock:{id}"], client = client)]
fn stock(client: &Cachify, data: &AtomicU32, gate: &BlockingGate, id: u64) -> u32 {
    let read = data.load(Ordering::SeqCst);
    if gate.armed.swap(false, Ordering::SeqCst) {
        gate.entered.wait();
        gate.release.wait();
    }
    read
}

fn blocking_value_computed_across_an_invalidation_is_not_kept(store: Store) {
    let client = store
        .builder("blocking-race")
        .build_blocking()
        .expect("build the test client");
    let data = AtomicU32::new(1);
    let gate = BlockingGate {
        armed: AtomicBool::new(true),
        entered: Barrier::new(2),
        release: Barrier::new(2),
    };
    let _deadline = support::Deadline::new(Duration::from_secs(30), "the blocking race test");
    let stale = std::thread::scope(|threads| {
        let call = threads.spawn(|| stock(&client, &data, &gate, 3));
        gate.entered.wait();
        data.store(2, Ordering::SeqCst);
        client.invalidate_tags_blocking(["stock:3"]).unwrap();
        gate.release.wait();
        call.join().unwrap()
    });
    assert_eq!(stale, 1);
    assert_eq!(
        stock(&client, &data, &gate, 3),
        2,
        "the value read before the invalidation did not survive it"
    );
    data.store(3, Ordering::SeqCst);
    assert_eq!(
        stock(&client, &data, &gate, 3),
        2,
        "the fresh value is cached"
    );
}

/// On Redis with a near cache: the copy of an invalidated entry is gone
/// at once in this process, and soon in another client's.
mod near {
    use super::*;

    async fn near_copies_go(store: Store) {
        let near = |name: &str| store.builder(name).prefix("tags-near:").near_cache(100);
        let client = near("a").build().await.unwrap();
        let other = near("b").build().await.unwrap();
        let calls = Calls::default();
        let other_calls = Calls::default();
        let _deadline = support::Deadline::new(Duration::from_secs(30), "the near-cache test");
        // Fill, then read twice through each near cache: copies are kept.
        profile(&client, &calls, 8).await;
        for _ in 0..2 {
            profile(&client, &calls, 8).await;
            profile(&other, &other_calls, 8).await;
        }
        assert_eq!((calls.get(), other_calls.get()), (1, 0));
        assert!(client.stats().near_hits > 0, "{:?}", client.stats());

        client.invalidate_tags(["user:8"]).await.unwrap();
        profile(&client, &calls, 8).await;
        assert_eq!(calls.get(), 2, "this process's copy went with the entry");
        // The other client's copy goes when Redis reports the delete; by
        // then this client has filled the entry again, so a miss there
        // means a read from Redis, which the stats count.
        let before = other.stats().near_misses;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while other.stats().near_misses == before {
            assert!(
                std::time::Instant::now() < deadline,
                "the other near cache kept its copy"
            );
            profile(&other, &other_calls, 8).await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(other_calls.get(), 0, "and found the refilled entry there");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis() {
        near_copies_go(Store::Redis).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cluster() {
        near_copies_go(Store::Cluster).await;
    }
}

/// The keys tags write: a version and an index per tag, one cluster slot
/// for both, and a lock never deleted through a forged index.
mod layout {
    use super::*;

    #[test]
    fn a_tags_version_and_index_share_a_slot_and_locks_are_never_deleted() {
        let cluster = support::cluster::shared_cluster();
        let client = Store::Cluster
            .builder("layout")
            .build_blocking()
            .expect("build the test client");
        let calls = Calls::default();
        report(&client, &calls, "green {x}", 1);
        let mut connection = cluster.connection();
        let index = "tags-layout-Cluster:tag:{team:green%20%7Bx%7D}:i";
        let members: Vec<String> = ::redis::cmd("ZRANGE")
            .arg(index)
            .arg(0)
            .arg(-1)
            .query(&mut connection)
            .unwrap();
        assert_eq!(members, ["0|tags-layout-Cluster:cache:report-1"]);
        let guard = client.lock("held").acquire_blocking().unwrap();
        // A member naming a lock, as only a write from outside could add.
        let () = ::redis::cmd("ZADD")
            .arg(index)
            .arg("+inf")
            .arg(format!("0|{}", guard.key()))
            .query(&mut connection)
            .unwrap();
        client.invalidate_tags_blocking(["team:green {x}"]).unwrap();
        let version: u64 = ::redis::cmd("GET")
            .arg("tags-layout-Cluster:tag:{team:green%20%7Bx%7D}:v")
            .query(&mut connection)
            .unwrap();
        assert!(version > 0);
        assert!(
            client.lock("held").acquire_blocking().is_err(),
            "the lock is still held"
        );
        guard.release_blocking().unwrap();
        let exists: bool = ::redis::cmd("EXISTS")
            .arg("tags-layout-Cluster:cache:report-1")
            .query(&mut connection)
            .unwrap();
        assert!(!exists, "the entry went");
    }
}

/// A tag's index on Redis holds the live entries only: each write drops
/// the members whose entries have expired, so a tag that is never
/// invalidated does not grow without end.
mod index_size {
    use super::*;

    #[cached("brief-{id}", ttl = Duration::from_millis(300), tags = ["brief"], client = client)]
    async fn brief(client: &Cachify, id: u64) -> u64 {
        id
    }

    #[cached("lasting-{id}", ttl = None, tags = ["brief"], client = client)]
    async fn lasting(client: &Cachify, id: u64) -> u64 {
        id
    }

    #[cached("kept-{id}", ttl = 60, tags = ["kept"], client = client)]
    async fn kept_long(client: &Cachify, id: u64) -> u64 {
        id
    }

    #[cached("kept-{id}", ttl = Duration::from_millis(300), tags = ["kept"], client = client)]
    async fn kept_short(client: &Cachify, id: u64) -> u64 {
        id
    }

    /// Writers of one key with different TTLs may record it in the index in
    /// either order: its score only moves later, so a shorter TTL recorded
    /// last cannot drop a key that lives longer.
    async fn a_key_keeps_its_later_expiry(
        store: Store,
        connection: &mut dyn ::redis::ConnectionLike,
    ) {
        let client = store.client("index-expiry").await;
        let index = format!("{}tag:{{kept}}:i", client.prefix());
        let member = format!("0|{}cache:kept-1", client.prefix());
        let score = |connection: &mut dyn ::redis::ConnectionLike| -> f64 {
            ::redis::cmd("ZSCORE")
                .arg(&index)
                .arg(&member)
                .query(connection)
                .unwrap()
        };
        kept_long(&client, 1).await;
        let long = score(connection);
        kept_short_reset(&client, 1).await.unwrap();
        kept_short(&client, 1).await;
        assert!(
            score(connection) >= long,
            "the 300 ms write moved the key's expiry earlier than the 60 s one"
        );
        client.invalidate_tags(["kept"]).await.unwrap();
    }

    async fn expired_entries_leave_the_index(
        store: Store,
        connection: &mut dyn ::redis::ConnectionLike,
    ) {
        let client = store.client("index-size").await;
        let index = format!("{}tag:{{brief}}:i", client.prefix());
        let size = |connection: &mut dyn ::redis::ConnectionLike| -> u64 {
            ::redis::cmd("ZCARD").arg(&index).query(connection).unwrap()
        };
        lasting(&client, 0).await;
        for id in 1..=20 {
            brief(&client, id).await;
        }
        assert_eq!(size(connection), 21, "every live entry is indexed");
        tokio::time::sleep(Duration::from_millis(600)).await;
        brief(&client, 21).await;
        assert_eq!(
            size(connection),
            2,
            "the expired entries left the index; the one without expiry and the new one stay"
        );
        client.invalidate_tags(["brief"]).await.unwrap();
        assert_eq!(size(connection), 0);
        client.clear().await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis() {
        let mut connection = support::shared_server().connection();
        expired_entries_leave_the_index(Store::Redis, &mut connection).await;
        a_key_keeps_its_later_expiry(Store::Redis, &mut connection).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cluster() {
        let mut connection = support::cluster::shared_cluster().connection();
        expired_entries_leave_the_index(Store::Cluster, &mut connection).await;
        a_key_keeps_its_later_expiry(Store::Cluster, &mut connection).await;
    }
}
