//! Pools, a distributed semaphore: `#[pooled]` (async and sync), its
//! `_pool_size` sibling, and `cachify::pool(name, max_size)` /
//! `client.pool(..)` with `.ttl`, `.wait`, `.acquire()`/`.acquire_blocking()`,
//! `.size()`/`.size_blocking()` and the slot's release, drop and loss.
//!
//! Every scenario is written once, as a function taking the client, and run
//! on every backend by `on_every_backend!`: `<scenario>::on_memory`,
//! `<scenario>::on_redis` (each Redis run has its own `redis-server`) and
//! `<scenario>::on_cluster` (the binary's shared Redis Cluster, a prefix
//! per scenario). The macros use the global client, so each scenario runs
//! inside `cachify::scope` (threads inside `cachify::scope_blocking`).
//!
//! Redis-only behaviour follows: a slot whose lease ran out (the server
//! frozen past the lease on a node; the slot's lease end moved into the
//! past on the cluster) is reported lost and cannot be released by its old
//! holder; a SIGKILLed holder's slot frees after one lease (node and
//! cluster); and "busy is not broken" with a stopped server. The memory
//! store's expiry and ownership are unit-tested in `store/memory.rs`.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cachify::{Cachify, CallKind, Error, pooled};
use support::{Frozen, OwnServer, RedisServer};

const PREFIX: &str = "pl:";
/// Upper bound for things expected "soon": only reached when broken.
const SOON: Duration = Duration::from_secs(5);
/// Pause between two probes in the polling loops.
const POLL: Duration = Duration::from_millis(10);

fn memory_client() -> Cachify {
    Cachify::builder()
        .memory()
        .prefix(PREFIX)
        .build_blocking()
        .unwrap()
}

async fn redis_client(server: &RedisServer) -> Cachify {
    Cachify::builder()
        .redis(server.url())
        .prefix(PREFIX)
        .build()
        .await
        .unwrap()
}

/// A client of the binary's shared Redis Cluster, under a prefix of its own.
async fn cluster_client(scenario: &str) -> Cachify {
    Cachify::builder()
        .redis_cluster(support::cluster::shared_cluster().seeds())
        .prefix(format!("{PREFIX}{scenario}:"))
        .build()
        .await
        .unwrap()
}

/// Runs each named `async fn(&Cachify)` scenario on a memory client, on a
/// Redis client and on a Redis Cluster client, with that client in scope.
macro_rules! on_every_backend {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_memory() {
                let client = memory_client();
                cachify::scope(&client, super::$scenario(&client)).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_redis() {
                let server = RedisServer::start();
                let client = redis_client(&server).await;
                cachify::scope(&client, super::$scenario(&client)).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_cluster() {
                let client = cluster_client(stringify!($scenario)).await;
                cachify::scope(&client, super::$scenario(&client)).await;
            }
        }
    )*};
}

on_every_backend!(
    the_cap_holds_async,
    the_cap_holds_sync,
    the_api_caps_and_counts,
    wait_gets_a_slot_that_frees,
    sync_wait_gets_a_slot_that_frees,
    release_on_drop_panic_and_cancellation,
    the_watchdog_keeps_a_short_lease,
    max_size_zero_is_an_error_not_a_hang,
    methods_and_trait_impls,
);

// ----------------------------------------------------------- the functions

#[derive(Debug, PartialEq)]
pub enum AppError {
    /// From `cachify::Error::PoolFull`.
    Full,
    /// Any other `cachify::Error`.
    Backend,
    /// What `return_on_full` answers.
    Busy,
}

impl From<Error> for AppError {
    fn from(error: Error) -> Self {
        match error {
            Error::PoolFull { .. } => AppError::Full,
            _ => AppError::Backend,
        }
    }
}

/// A door the test opens to let the bodies inside finish.
#[derive(Clone, Default)]
pub struct Door(Arc<AtomicBool>);

impl Door {
    fn open(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    async fn pass(&self) {
        let started = Instant::now();
        while !self.0.load(Ordering::SeqCst) {
            assert!(started.elapsed() < SOON * 4, "the door never opened");
            tokio::time::sleep(POLL).await;
        }
    }

    fn pass_blocking(&self) {
        let started = Instant::now();
        while !self.0.load(Ordering::SeqCst) {
            assert!(started.elapsed() < SOON * 4, "the door never opened");
            std::thread::sleep(POLL);
        }
    }
}

/// Without `return_on_full`: a full pool is `Err(E::from(PoolFull))`.
#[pooled("export-{tenant}", max_size = 3)]
async fn export(tenant: u64, door: Door) -> Result<u64, AppError> {
    door.pass().await;
    Ok(tenant)
}

/// Sync, with `return_on_full`, a `Duration` lease and a computed cap.
#[pooled("thumb-{id}", max_size = 1 + 1, ttl = Duration::from_secs(2), return_on_full = None)]
fn thumbnail(id: u64, door: Door) -> Option<u64> {
    door.pass_blocking();
    Some(id)
}

/// Waits for a slot.
#[pooled("queued-{id}", max_size = 1, wait = 5)]
async fn queued(id: u64, work: Duration) -> Result<u64, AppError> {
    tokio::time::sleep(work).await;
    Ok(id)
}

/// Polls `size` until it is `expected`; panics after [`SOON`].
async fn until_size<F, Fut>(expected: usize, size: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<usize, Error>>,
{
    let started = Instant::now();
    loop {
        let now = size().await.unwrap();
        if now == expected {
            return;
        }
        assert!(
            started.elapsed() < SOON,
            "pool size stayed {now}, expected {expected}"
        );
        tokio::time::sleep(POLL).await;
    }
}

fn pool_key(client: &Cachify, name: &str) -> String {
    format!("{}pool:{name}", client.prefix())
}

#[track_caller]
fn assert_full<T: std::fmt::Debug>(result: Result<T, Error>, client: &Cachify, name: &str) {
    match result {
        Err(Error::PoolFull { key }) => assert_eq!(key, pool_key(client, name)),
        other => panic!("expected Err(Error::PoolFull) for `{name}`, got {other:?}"),
    }
}

// ---------------------------------------------------------------- scenarios

async fn the_cap_holds_async(client: &Cachify) {
    let door = Door::default();
    let mut holders = Vec::new();
    for _ in 0..3 {
        holders.push(tokio::spawn(cachify::scope(
            client,
            export(7, door.clone()),
        )));
    }
    until_size(3, || export_pool_size(7)).await;
    assert_eq!(
        export(7, door.clone()).await,
        Err(AppError::Full),
        "a fourth call is refused"
    );
    assert_eq!(
        export_pool_size(8).await.unwrap(),
        0,
        "another key, another pool"
    );
    assert_eq!(client.pool("export-7", 3).size().await.unwrap(), 3);
    assert_full(
        client.pool("export-7", 3).acquire().await,
        client,
        "export-7",
    );
    door.open();
    for holder in holders {
        assert_eq!(holder.await.unwrap(), Ok(7));
    }
    assert_eq!(
        export_pool_size(7).await.unwrap(),
        0,
        "released after the run"
    );
    assert_eq!(export(7, door).await, Ok(7));

    let stats = client.stats_by_template();
    let row = stats
        .iter()
        .find(|row| row.kind == CallKind::Pool && row.template == "export-{tenant}")
        .expect("the pooled function is counted");
    assert_eq!(row.locks_acquired, 4, "{row:?}");
    assert_eq!(row.lock_contention, 1, "{row:?}");
}

async fn the_cap_holds_sync(client: &Cachify) {
    let door = Door::default();
    let mut threads = Vec::new();
    for _ in 0..2 {
        let (client, door) = (client.clone(), door.clone());
        threads.push(std::thread::spawn(move || {
            cachify::scope_blocking(&client, || thumbnail(3, door))
        }));
    }
    until_size(2, || async { thumbnail_pool_size(3) }).await;
    let third = {
        let (client, door) = (client.clone(), door.clone());
        tokio::task::spawn_blocking(move || cachify::scope_blocking(&client, || thumbnail(3, door)))
            .await
            .unwrap()
    };
    assert_eq!(third, None, "return_on_full answers a full pool");
    assert_eq!(client.pool("thumb-3", 2).size_blocking().unwrap(), 2);
    door.open();
    for thread in threads {
        let joined = tokio::task::spawn_blocking(move || thread.join())
            .await
            .unwrap();
        assert_eq!(joined.unwrap(), Some(3));
    }
    assert_eq!(thumbnail_pool_size(3).unwrap(), 0);
}

async fn the_api_caps_and_counts(client: &Cachify) {
    let name = "api";
    let mut slots = Vec::new();
    for held in 1..=3 {
        let slot = client.pool(name, 3).acquire().await.unwrap();
        assert_eq!(slot.key(), pool_key(client, name));
        assert!(!slot.is_lost());
        slots.push(slot);
        assert_eq!(client.pool(name, 3).size().await.unwrap(), held);
    }
    assert_full(client.pool(name, 3).acquire().await, client, name);
    // The global builder resolves to the scope's client; sync twins agree.
    assert_full(cachify::pool(name, 3).acquire().await, client, name);
    let blocking = {
        let client = client.clone();
        tokio::task::spawn_blocking(move || {
            let full = client.pool(name, 3).acquire_blocking();
            let size = client.pool(name, 3).size_blocking();
            (full.map(|_| ()), size)
        })
        .await
        .unwrap()
    };
    assert_full(blocking.0, client, name);
    assert_eq!(blocking.1.unwrap(), 3);
    // A larger cap admits one more (callers should agree on max_size).
    let fourth = client.pool(name, 4).acquire().await.unwrap();
    assert_eq!(client.pool(name, 4).size().await.unwrap(), 4);

    slots.pop().unwrap().release().await.unwrap();
    fourth.release().await.unwrap();
    assert_eq!(client.pool(name, 3).size().await.unwrap(), 2);
    let slot = client.pool(name, 3).acquire().await.unwrap();
    let released = tokio::task::spawn_blocking(move || slot.release_blocking())
        .await
        .unwrap();
    released.unwrap();
    for slot in slots {
        slot.release().await.unwrap();
    }
    assert_eq!(cachify::pool(name, 3).size().await.unwrap(), 0);

    let stats = client.stats_by_template();
    let row = stats
        .iter()
        .find(|row| row.kind == CallKind::Pool && row.template == cachify::POOL_API_TEMPLATE)
        .expect("pool values are counted");
    assert_eq!((row.locks_acquired, row.lock_contention), (5, 3), "{row:?}");
}

async fn wait_gets_a_slot_that_frees(client: &Cachify) {
    let name = "wait";
    let holders = [
        client.pool(name, 2).acquire().await.unwrap(),
        client.pool(name, 2).acquire().await.unwrap(),
    ];
    // Gives up after its wait.
    let started = Instant::now();
    let result = client
        .pool(name, 2)
        .wait(Duration::from_millis(200))
        .acquire()
        .await;
    let waited = started.elapsed();
    assert_full(result, client, name);
    assert!(
        waited >= Duration::from_millis(150),
        "gave up after {waited:?}"
    );
    assert!(waited < SOON, "gave up only after {waited:?}");

    // Gets a slot freed during the wait.
    let [first, second] = holders;
    let releaser = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        first.release().await
    });
    let started = Instant::now();
    let slot = client
        .pool(name, 2)
        .wait(SOON)
        .acquire()
        .await
        .expect("the waiter gets the slot freed during its wait");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(150),
        "got a slot of a full pool after only {waited:?}"
    );
    releaser.await.unwrap().unwrap();
    assert_full(client.pool(name, 2).acquire().await, client, name);
    slot.release().await.unwrap();
    second.release().await.unwrap();

    // `wait = 5` on the macro: the second call waits for the first.
    let first = tokio::spawn(cachify::scope(
        client,
        queued(1, Duration::from_millis(300)),
    ));
    until_size(1, || queued_pool_size(1)).await;
    let started = Instant::now();
    assert_eq!(queued(1, Duration::ZERO).await, Ok(1));
    assert!(
        started.elapsed() >= Duration::from_millis(100),
        "ran beside a holder of its only slot"
    );
    assert_eq!(first.await.unwrap(), Ok(1));
}

/// Sync and waiting: blocks its thread until a slot frees.
#[pooled("slow-{id}", max_size = 1, wait = Duration::from_secs(5))]
fn slow(id: u64, work: Duration) -> Result<u64, AppError> {
    std::thread::sleep(work);
    Ok(id)
}

async fn sync_wait_gets_a_slot_that_frees(client: &Cachify) {
    let client = client.clone();
    let (first, second, waited) = tokio::task::spawn_blocking(move || {
        let holder = {
            let client = client.clone();
            std::thread::spawn(move || {
                cachify::scope_blocking(&client, || slow(2, Duration::from_millis(300)))
            })
        };
        cachify::scope_blocking(&client, || {
            let started = Instant::now();
            while slow_pool_size(2).unwrap() == 0 {
                assert!(started.elapsed() < SOON, "the holder never took its slot");
                std::thread::sleep(POLL);
            }
            let started = Instant::now();
            let second = slow(2, Duration::ZERO);
            (holder.join().unwrap(), second, started.elapsed())
        })
    })
    .await
    .unwrap();
    assert_eq!(first, Ok(2));
    assert_eq!(second, Ok(2), "the waiter got the slot once it freed");
    assert!(
        waited >= Duration::from_millis(100),
        "ran beside the holder of the only slot ({waited:?})"
    );
}

async fn release_on_drop_panic_and_cancellation(client: &Cachify) {
    let name = "gone";
    let size = || async move { client.pool(name, 1).size().await };
    // Drop.
    let slot = client.pool(name, 1).acquire().await.unwrap();
    assert_eq!(size().await.unwrap(), 1);
    drop(slot);
    until_size(0, size).await;

    // A panicking task.
    let (acquired, on_acquired) = tokio::sync::oneshot::channel();
    let task_client = client.clone();
    let task = tokio::spawn(async move {
        let _slot = task_client.pool(name, 1).acquire().await.unwrap();
        acquired.send(()).unwrap();
        panic!("the slot holder crashes (this panic is part of the test)");
    });
    on_acquired.await.unwrap();
    assert!(task.await.expect_err("the task panicked").is_panic());
    until_size(0, size).await;

    // A panicking `#[pooled]` body on a thread.
    let thread_client = client.clone();
    let joined = tokio::task::spawn_blocking(move || {
        std::thread::spawn(move || cachify::scope_blocking(&thread_client, || panicking(1))).join()
    })
    .await
    .unwrap();
    assert!(joined.is_err(), "the body panicked");
    until_size(0, || async { panicking_pool_size(1) }).await;

    // A `#[pooled]` future dropped mid-run (a timeout cancels it).
    let door = Door::default();
    let outcome = tokio::time::timeout(Duration::from_millis(300), export(9, door.clone())).await;
    assert!(
        outcome.is_err(),
        "the timeout cancelled the call: {outcome:?}"
    );
    until_size(0, || export_pool_size(9)).await;

    // An aborted task holding a slot.
    let task = tokio::spawn(cachify::scope(client, export(9, door.clone())));
    until_size(1, || export_pool_size(9)).await;
    task.abort();
    assert!(task.await.expect_err("aborted").is_cancelled());
    until_size(0, || export_pool_size(9)).await;
}

#[pooled("panicking-{id}", max_size = 1, return_on_full = ())]
fn panicking(id: u64) {
    panic!("pooled body {id} panics (this panic is part of the test)");
}

async fn the_watchdog_keeps_a_short_lease(client: &Cachify) {
    let name = "short";
    let ttl = Duration::from_millis(600);
    let slot = client.pool(name, 1).ttl(ttl).acquire().await.unwrap();
    tokio::time::sleep(ttl * 4).await;
    assert_eq!(client.pool(name, 1).size().await.unwrap(), 1);
    assert_full(client.pool(name, 1).acquire().await, client, name);
    assert!(!slot.is_lost());
    slot.release()
        .await
        .expect("still the owner after four leases");
}

async fn max_size_zero_is_an_error_not_a_hang(client: &Cachify) {
    let started = Instant::now();
    let result = client.pool("zero", 0).wait(Duration::MAX).acquire().await;
    assert!(
        matches!(&result, Err(Error::Config(message)) if message.contains("max_size")),
        "{result:?}"
    );
    let zero = 0;
    assert_eq!(sized(zero).await, Err(AppError::Backend));
    assert!(started.elapsed() < SOON, "took {:?}", started.elapsed());
}

#[pooled("sized-{cap}", max_size = cap, wait = Duration::from_secs(3600))]
async fn sized(cap: usize) -> Result<usize, AppError> {
    Ok(cap)
}

pub struct Exporter {
    pub id: u32,
}

impl Exporter {
    #[pooled("exporter-{self.id}", max_size = 1)]
    async fn run(&self, door: Door) -> Result<u32, AppError> {
        door.pass().await;
        Ok(self.id)
    }
}

pub trait Job {
    fn work(&self, door: Door) -> Result<u32, AppError>;
}

#[cachify::trait_impl]
impl Job for Exporter {
    #[pooled("job-{self.id}", max_size = 1)]
    fn work(&self, door: Door) -> Result<u32, AppError> {
        door.pass_blocking();
        Ok(self.id)
    }
}

async fn methods_and_trait_impls(client: &Cachify) {
    let exporter = Arc::new(Exporter { id: 4 });
    let door = Door::default();
    let running = {
        let (exporter, door) = (exporter.clone(), door.clone());
        tokio::spawn(cachify::scope(
            client,
            async move { exporter.run(door).await },
        ))
    };
    until_size(1, || exporter.run_pool_size()).await;
    assert_eq!(exporter.run(Door::default()).await, Err(AppError::Full));
    door.open();
    assert_eq!(running.await.unwrap(), Ok(4));

    let client = client.clone();
    let exporter_for_thread = exporter.clone();
    let (sizes, full) = tokio::task::spawn_blocking(move || {
        cachify::scope_blocking(&client, || {
            let door = Door::default();
            std::thread::scope(|threads| {
                let running = threads.spawn(|| {
                    cachify::scope_blocking(&client, || exporter_for_thread.work(door.clone()))
                });
                let started = Instant::now();
                while exporter_for_thread.work_pool_size().unwrap() == 0 {
                    assert!(
                        started.elapsed() < SOON,
                        "the trait method never took its slot"
                    );
                    std::thread::sleep(POLL);
                }
                let full = exporter_for_thread.work(Door::default());
                door.open();
                assert_eq!(running.join().unwrap(), Ok(4));
                (exporter_for_thread.work_pool_size().unwrap(), full)
            })
        })
    })
    .await
    .unwrap();
    assert_eq!(full, Err(AppError::Full));
    assert_eq!(sizes, 0);
}

// ------------------------------------------------------- Redis-only: loss

/// Node: the server frozen past the lease. Renewals fail, the watchdog
/// reports the slot lost once its lease is over, the server's clock ran on,
/// and the old holder cannot release the place someone else now has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_an_expired_slot_is_lost_and_not_released_by_its_old_holder() {
    let server = RedisServer::start();
    let client = redis_client(&server).await;
    let name = "expired";
    let slot = client
        .pool(name, 1)
        .ttl(Duration::from_millis(600))
        .acquire()
        .await
        .unwrap();
    {
        let _frozen = Frozen::new(&server);
        tokio::time::timeout(SOON, slot.lost())
            .await
            .expect("the watchdog reports the slot lost");
    }
    assert!(slot.is_lost());
    let newcomer = client
        .pool(name, 1)
        .wait(SOON)
        .acquire()
        .await
        .expect("the expired slot's place is free");
    assert!(
        matches!(slot.release().await, Err(Error::NotOwner)),
        "an expired slot cannot be released by its old holder"
    );
    assert_eq!(
        client.pool(name, 1).size().await.unwrap(),
        1,
        "the old holder's release did not free the newcomer's slot"
    );
    newcomer.release().await.unwrap();

    let mut raw = server.connection();
    expired_at_a_renewal(&client, |command| command.query(&mut raw).unwrap()).await;
    expired_before_any_renewal(&client, |command| command.query(&mut raw).unwrap()).await;
}

/// A slot whose lease ended (its end moved into the past through `raw`)
/// before its watchdog's first renewal, and before anyone else touched the
/// pool: it no longer counts, and its holder's release is refused.
async fn expired_before_any_renewal(
    client: &Cachify,
    mut raw: impl FnMut(&redis::Cmd) -> redis::Value,
) {
    let name = "unpurged";
    let slot = client
        .pool(name, 1)
        .ttl(Duration::from_secs(60))
        .acquire()
        .await
        .unwrap();
    let held = members(raw(redis::cmd("ZRANGE").arg(slot.key()).arg(0).arg(-1)));
    assert_eq!(held.len(), 1, "one slot token in the set");
    raw(redis::cmd("ZADD")
        .arg(slot.key())
        .arg("XX")
        .arg(1)
        .arg(&held[0]));
    assert_eq!(client.pool(name, 1).size().await.unwrap(), 0);
    assert!(
        matches!(slot.release().await, Err(Error::NotOwner)),
        "a slot whose lease ended cannot be released"
    );
    let left = members(raw(redis::cmd("ZRANGE")
        .arg(pool_key(client, name))
        .arg(0)
        .arg(-1)));
    assert!(left.is_empty(), "the expired member is removed: {left:?}");
}

/// The members of a `ZRANGE` reply.
fn members(reply: redis::Value) -> Vec<String> {
    match reply {
        redis::Value::Array(items) => items
            .into_iter()
            .map(|item| match item {
                redis::Value::BulkString(bytes) => String::from_utf8(bytes).unwrap(),
                other => panic!("a member that is not a string: {other:?}"),
            })
            .collect(),
        other => panic!("not a ZRANGE reply: {other:?}"),
    }
}

/// Cluster: the slot's lease end moved into the past (as the server would
/// see an expired lease), at a renewal and before any.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_an_expired_slot_is_lost_and_not_released_by_its_old_holder() {
    let client = cluster_client("expired").await;
    let mut raw = support::cluster::shared_cluster().connection();
    expired_at_a_renewal(&client, |command| command.query(&mut raw).unwrap()).await;
    expired_before_any_renewal(&client, |command| command.query(&mut raw).unwrap()).await;
}

/// A slot whose lease end is moved into the past through `raw`: its next
/// renewal finds it over, so the watchdog reports it lost, its place goes
/// to a newcomer, and the old holder's release is refused and frees
/// nothing.
async fn expired_at_a_renewal(client: &Cachify, mut raw: impl FnMut(&redis::Cmd) -> redis::Value) {
    let name = "expired-at-renewal";
    let slot = client
        .pool(name, 1)
        .ttl(Duration::from_millis(600))
        .acquire()
        .await
        .unwrap();
    let held = members(raw(redis::cmd("ZRANGE").arg(slot.key()).arg(0).arg(-1)));
    assert_eq!(held.len(), 1, "one slot token in the set");
    raw(redis::cmd("ZADD")
        .arg(slot.key())
        .arg("XX")
        .arg(1)
        .arg(&held[0]));
    tokio::time::timeout(SOON, slot.lost())
        .await
        .expect("the watchdog reports the slot lost");
    let newcomer = client.pool(name, 1).acquire().await.unwrap();
    assert!(matches!(slot.release().await, Err(Error::NotOwner)));
    assert_eq!(client.pool(name, 1).size().await.unwrap(), 1);
    newcomer.release().await.unwrap();
}

/// An acquire that timed out must not leave a slot taken by nobody: its
/// script may still run once the server answers again, and the abandoned
/// attempt then frees what it took.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_timed_out_acquire_leaves_no_orphan_slot() {
    let server = RedisServer::start();
    let client = redis_client(&server).await;
    // Loads the script, so the frozen server's late run takes a slot (a
    // first `EVALSHA` would only find the script missing).
    let warm = client.pool("orphan", 1).acquire().await.unwrap();
    warm.release().await.unwrap();
    let frozen = Frozen::new(&server);
    let result = client.pool("orphan", 1).acquire().await;
    assert!(
        matches!(&result, Err(Error::Backend(error)) if error.is_timeout()),
        "{result:?}"
    );
    drop(frozen);
    let slot = client
        .pool("orphan", 1)
        .wait(SOON)
        .acquire()
        .await
        .expect("no orphan slot is left behind");
    slot.release().await.unwrap();
}

/// The pool key expires by itself once its last lease is over, so an
/// abandoned pool leaves nothing behind.
#[tokio::test]
async fn redis_an_abandoned_pool_key_expires() {
    let server = RedisServer::start();
    let client = redis_client(&server).await;
    let slot = client
        .pool("abandoned", 2)
        .ttl(Duration::from_secs(2))
        .acquire()
        .await
        .unwrap();
    let mut raw = server.connection();
    let pttl: i64 = redis::cmd("PTTL").arg(slot.key()).query(&mut raw).unwrap();
    assert!(pttl > 0 && pttl <= 2_000, "PTTL {pttl} ms for a 2 s lease");
    slot.release().await.unwrap();
}

// ----------------------------------------------- Redis-only: a crashed holder

const CHILD_ENV: &str = "CACHIFY_TEST_POOL_CRASH_SEEDS";
const CHILD_TEST: &str = "crash_child_takes_a_slot_and_waits_to_be_killed";
const CHILD_READY: &str = "CRASH-CHILD: SLOT ACQUIRED";
const CRASH_POOL: &str = "crash";
const CRASH_LEASE: Duration = Duration::from_secs(1);

/// Not a test of its own: the child process of the crash tests below. The
/// environment holds the Redis URL, or the cluster's seeds joined by `,`.
#[tokio::test]
#[ignore = "helper process for the crashed-holder tests"]
async fn crash_child_takes_a_slot_and_waits_to_be_killed() {
    let Ok(seeds) = std::env::var(CHILD_ENV) else {
        eprintln!("{CHILD_ENV} is not set: only the crash tests run this, as a child process");
        return;
    };
    let seeds: Vec<&str> = seeds.split(',').collect();
    let builder = match seeds.as_slice() {
        [url] => Cachify::builder().redis(*url),
        seeds => Cachify::builder().redis_cluster(seeds.iter().copied()),
    };
    let client = builder
        .prefix(PREFIX)
        .build()
        .await
        .expect("child: connect");
    let slot = client
        .pool(CRASH_POOL, 2)
        .ttl(CRASH_LEASE)
        .acquire()
        .await
        .expect("child: take the slot");
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{CHILD_READY}").unwrap();
    stdout.flush().unwrap();
    // The parent SIGKILLs this process long before this sleep ends.
    tokio::time::sleep(Duration::from_secs(60)).await;
    drop(slot);
    panic!("child: the parent never killed this process");
}

/// Kills and reaps the child if the test fails before it does.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A child holds one of the pool's two slots with a 1 s lease, renewed by
/// its watchdog, and this process the other, renewed all along (so the
/// pool's key never expires as a whole: the child's slot must expire on
/// its own). SIGKILLed (no destructor, no release), its slot frees within
/// about one lease (bounded at two here, for a loaded machine; the default
/// lease would be 30 s).
async fn a_crashed_holders_slot_frees_after_one_lease(client: &Cachify, seeds: &str) {
    use std::os::unix::process::ExitStatusExt;

    let mut child = KillOnDrop(
        Command::new(std::env::current_exe().unwrap())
            .args(["--exact", CHILD_TEST, "--nocapture", "--ignored"])
            .args(["--test-threads", "1"])
            .env(CHILD_ENV, seeds)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let (lines, child_lines) = mpsc::channel();
    let stdout = child.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    let started = Instant::now();
    while !seen.iter().any(|line: &String| line.ends_with(CHILD_READY)) {
        let left = Duration::from_secs(30).saturating_sub(started.elapsed());
        match child_lines.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => panic!("the child never took the slot:\n{}", seen.join("\n")),
        }
    }
    let keeper = client
        .pool(CRASH_POOL, 2)
        .ttl(CRASH_LEASE)
        .acquire()
        .await
        .unwrap();
    // Held past its lease: the child's watchdog renews it.
    tokio::time::sleep(CRASH_LEASE * 2).await;
    assert_full(
        client.pool(CRASH_POOL, 2).acquire().await,
        client,
        CRASH_POOL,
    );

    let pid = child.0.id() as libc::pid_t;
    assert_eq!(
        unsafe { libc::kill(pid, libc::SIGKILL) },
        0,
        "kill the child"
    );
    let status = child.0.wait().unwrap();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status:?}");
    let killed = Instant::now();
    assert_eq!(client.pool(CRASH_POOL, 2).size().await.unwrap(), 2);
    let slot = client
        .pool(CRASH_POOL, 2)
        .wait(Duration::from_secs(5))
        .acquire()
        .await
        .expect("the crashed holder's slot frees");
    let freed = killed.elapsed();
    assert!(
        freed <= CRASH_LEASE * 2,
        "freed {freed:?} after the kill, for a {CRASH_LEASE:?} lease"
    );
    slot.release().await.unwrap();
    keeper.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_crashed_holders_slot_frees_after_one_lease() {
    let server = RedisServer::start();
    let client = redis_client(&server).await;
    a_crashed_holders_slot_frees_after_one_lease(&client, &server.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_a_crashed_holders_slot_frees_after_one_lease() {
    let cluster = support::cluster::shared_cluster();
    let client = Cachify::builder()
        .redis_cluster(cluster.seeds())
        .prefix(PREFIX)
        .build()
        .await
        .unwrap();
    a_crashed_holders_slot_frees_after_one_lease(&client, &cluster.seeds().join(",")).await;
}

// --------------------------------------------------- busy is not broken

static EXPORTS: OwnServer = OwnServer::new();

#[pooled("report-{id}", max_size = 1, return_on_full = Err(AppError::Busy), client = EXPORTS.client())]
async fn report(id: u32, door: Door) -> Result<u32, AppError> {
    door.pass().await;
    Ok(id)
}

/// `return_on_full` answers a full pool; with Redis down, the output says
/// so (`AppError::Backend`, through `From<cachify::Error>`), not "full".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_is_an_error_not_full() {
    let door = Door::default();
    let holder = tokio::spawn(report(1, door.clone()));
    let started = Instant::now();
    while report_pool_size(1).await.unwrap() == 0 {
        assert!(started.elapsed() < SOON, "the holder never took its slot");
        tokio::time::sleep(POLL).await;
    }
    assert_eq!(
        report(1, Door::default()).await,
        Err(AppError::Busy),
        "full: return_on_full"
    );
    door.open();
    assert_eq!(holder.await.unwrap(), Ok(1));
    EXPORTS.stop();
    assert_eq!(
        report(1, Door::default()).await,
        Err(AppError::Backend),
        "Redis down is the backend error, not return_on_full"
    );
    assert!(matches!(report_pool_size(1).await, Err(Error::Backend(_))));
}

static THUMBS: OwnServer = OwnServer::new();

#[pooled("thumb-{id}", max_size = 1, return_on_full = None, client = THUMBS.client())]
fn thumb(id: u32) -> Option<u32> {
    Some(id)
}

/// An output that cannot carry an error: `return_on_full` answers both.
#[test]
fn without_an_error_type_return_on_full_answers_both() {
    assert_eq!(thumb(1), Some(1));
    let held = THUMBS
        .client()
        .pool("thumb-1", 1)
        .acquire_blocking()
        .unwrap();
    assert_eq!(thumb(1), None, "full");
    held.release_blocking().unwrap();
    assert_eq!(thumb(1), Some(1));
    THUMBS.stop();
    assert_eq!(thumb(1), None, "Option output: return_on_full");
    assert!(matches!(
        THUMBS.client().pool("thumb-1", 1).size_blocking(),
        Err(Error::Backend(_))
    ));
}
