//! The lock as a value: `cachify::lock(name)` and `client.lock(name)`, with
//! `.ttl`, `.wait`, `.acquire()`/`.acquire_blocking()` and the guard's
//! `.release()`/`.release_blocking()`/`Drop`.
//!
//! Every scenario is written once, as a function taking the client, and run
//! on every backend by `on_every_backend!`: `<scenario>::on_memory`,
//! `<scenario>::on_redis` (each Redis run has its own `redis-server`) and
//! `<scenario>::on_cluster` (the binary's shared Redis Cluster, a prefix
//! per scenario).
//! Redis-only behaviour (ownership against outside writes, the key's lease
//! and token, a crashed holder, a dead or hung server) follows.

mod support;

use std::fmt::Debug;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cachify::{Cachify, Error};
use support::{Deadline, Frozen, RedisServer};

const PREFIX: &str = "lk:";
/// Upper bound for things expected "soon" (a background release, a failing
/// call): generous, only ever reached when the behaviour is broken.
const SOON: Duration = Duration::from_secs(5);
/// Pause between two probes of a lock in the polling loops.
const POLL: Duration = Duration::from_millis(20);

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

fn lock_key(client: &Cachify, name: &str) -> String {
    format!("{}lock:{name}", client.prefix())
}

/// Asserts `result` is `Err(Error::Locked { key })` naming `name`'s lock.
#[track_caller]
fn assert_locked<T: Debug>(result: Result<T, Error>, client: &Cachify, name: &str) {
    match result {
        Err(Error::Locked { key }) => assert_eq!(key, lock_key(client, name)),
        other => panic!("expected Err(Error::Locked) for `{name}`, got {other:?}"),
    }
}

/// Whether someone else could take the lock right now (taking and
/// releasing it if so).
async fn is_free(client: &Cachify, name: &str) -> bool {
    match client.lock(name).acquire().await {
        Ok(guard) => {
            guard.release().await.expect("release a probe lock");
            true
        }
        Err(Error::Locked { .. }) => false,
        Err(other) => panic!("probing `{name}`: {other:?}"),
    }
}

fn is_free_blocking(client: &Cachify, name: &str) -> bool {
    match client.lock(name).acquire_blocking() {
        Ok(guard) => {
            guard.release_blocking().expect("release a probe lock");
            true
        }
        Err(Error::Locked { .. }) => false,
        Err(other) => panic!("probing `{name}`: {other:?}"),
    }
}

/// Polls until the lock is free; panics if it is still held after `limit`.
/// Returns how long it took.
async fn wait_until_free(client: &Cachify, name: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    let attempts = limit.as_millis() / POLL.as_millis() + 1;
    for _ in 0..attempts {
        if is_free(client, name).await {
            return started.elapsed();
        }
        if started.elapsed() >= limit {
            break;
        }
        tokio::time::sleep(POLL).await;
    }
    panic!(
        "`{name}` was still held {:?} later (limit {limit:?})",
        started.elapsed()
    );
}

fn wait_until_free_blocking(client: &Cachify, name: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    let attempts = limit.as_millis() / POLL.as_millis() + 1;
    for _ in 0..attempts {
        if is_free_blocking(client, name) {
            return started.elapsed();
        }
        if started.elapsed() >= limit {
            break;
        }
        std::thread::sleep(POLL);
    }
    panic!(
        "`{name}` was still held {:?} later (limit {limit:?})",
        started.elapsed()
    );
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
/// Redis client and on a Redis Cluster client.
macro_rules! on_every_backend {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            use super::*;

            #[tokio::test]
            async fn on_memory() {
                super::$scenario(&memory_client()).await;
            }

            #[tokio::test]
            async fn on_redis() {
                let server = RedisServer::start();
                super::$scenario(&redis_client(&server).await).await;
            }

            #[tokio::test]
            async fn on_cluster() {
                super::$scenario(&cluster_client(stringify!($scenario)).await).await;
            }
        }
    )*};
}

on_every_backend!(
    held_lock_is_refused_until_released,
    wait_gets_the_lock_once_released,
    wait_gives_up_with_locked,
    dropping_the_guard_releases,
    a_panicking_task_releases,
    a_panicking_thread_releases,
    a_cancelled_future_releases,
    the_watchdog_keeps_a_short_lease,
    one_holder_at_a_time,
    extreme_durations_are_accepted,
);

// ---------------------------------------------------------------- scenarios

async fn held_lock_is_refused_until_released(client: &Cachify) {
    let name = "exclusive";
    let guard = client.lock(name).acquire().await.unwrap();
    assert_eq!(guard.key(), lock_key(client, name));
    assert!(guard.key().starts_with(client.prefix()));

    assert_locked(client.lock(name).acquire().await, client, name);
    assert_locked(
        client
            .lock(name)
            .ttl(Duration::from_secs(1))
            .acquire()
            .await,
        client,
        name,
    );
    // A clone of the client shares its locks.
    assert_locked(client.clone().lock(name).acquire().await, client, name);
    // Another name is another lock.
    client
        .lock("exclusive-other")
        .acquire()
        .await
        .unwrap()
        .release()
        .await
        .unwrap();

    guard.release().await.unwrap();
    let again = client
        .lock(name)
        .acquire()
        .await
        .expect("a released lock can be taken again");
    again.release().await.unwrap();
}

async fn wait_gets_the_lock_once_released(client: &Cachify) {
    let name = "wait-ok";
    let holder = client.lock(name).acquire().await.unwrap();
    let releaser = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        holder.release().await
    });
    let started = Instant::now();
    let guard = client
        .lock(name)
        .wait(Duration::from_secs(2))
        .acquire()
        .await
        .expect("the waiter gets the lock once the holder releases it");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(150),
        "got a held lock after only {waited:?}"
    );
    releaser.await.unwrap().expect("the holder's release");
    assert_locked(client.lock(name).acquire().await, client, name);
    guard.release().await.unwrap();
}

async fn wait_gives_up_with_locked(client: &Cachify) {
    let name = "wait-gives-up";
    let holder = client.lock(name).acquire().await.unwrap();
    let started = Instant::now();
    let result = client
        .lock(name)
        .wait(Duration::from_millis(200))
        .acquire()
        .await;
    let waited = started.elapsed();
    assert_locked(result, client, name);
    assert!(
        waited >= Duration::from_millis(150),
        "gave up after {waited:?}, before its 200 ms wait"
    );
    assert!(waited < SOON, "gave up only after {waited:?}");
    // Giving up does not disturb the holder.
    holder
        .release()
        .await
        .expect("the holder still owns the lock");
}

async fn dropping_the_guard_releases(client: &Cachify) {
    let name = "dropped";
    let guard = client.lock(name).acquire().await.unwrap();
    assert!(!is_free(client, name).await);
    drop(guard);
    wait_until_free(client, name, SOON).await;

    // A waiter is let in by a drop as well.
    let guard = client.lock(name).acquire().await.unwrap();
    let dropper = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(guard);
    });
    let waiter = client
        .lock(name)
        .wait(SOON)
        .acquire()
        .await
        .expect("a dropped lock lets the waiter in");
    dropper.await.unwrap();
    waiter.release().await.unwrap();
}

async fn a_panicking_task_releases(client: &Cachify) {
    let name = "panicking-task";
    let (acquired, on_acquired) = tokio::sync::oneshot::channel();
    let (crash, on_crash) = tokio::sync::oneshot::channel::<()>();
    let task_client = client.clone();
    let task = tokio::spawn(async move {
        let _guard = task_client.lock(name).acquire().await.unwrap();
        acquired.send(()).unwrap();
        let _ = on_crash.await;
        panic!("the lock holder crashes (this panic is part of the test)");
    });
    on_acquired.await.expect("the task took the lock");
    assert!(!is_free(client, name).await, "the task holds the lock");
    crash.send(()).unwrap();
    assert!(task.await.expect_err("the task panicked").is_panic());
    wait_until_free(client, name, SOON).await;
}

async fn a_panicking_thread_releases(client: &Cachify) {
    let name = "panicking-thread";
    let (acquired, on_acquired) = mpsc::channel();
    let (crash, on_crash) = mpsc::channel::<()>();
    let thread_client = client.clone();
    let thread = std::thread::spawn(move || {
        let _guard = thread_client.lock(name).acquire_blocking().unwrap();
        acquired.send(()).unwrap();
        let _ = on_crash.recv_timeout(SOON);
        panic!("the lock holder crashes (this panic is part of the test)");
    });
    on_acquired
        .recv_timeout(SOON)
        .expect("the thread took the lock");
    assert!(!is_free(client, name).await, "the thread holds the lock");
    crash.send(()).unwrap();
    let joined = tokio::task::spawn_blocking(move || thread.join())
        .await
        .unwrap();
    assert!(joined.is_err(), "the thread panicked");
    wait_until_free(client, name, SOON).await;
}

async fn a_cancelled_future_releases(client: &Cachify) {
    // Cancelled by a timeout.
    let name = "cancelled";
    let held = AtomicBool::new(false);
    let outcome = tokio::time::timeout(Duration::from_secs(1), async {
        let guard = client.lock(name).acquire().await.unwrap();
        assert!(!is_free(client, name).await, "the future holds the lock");
        held.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(60)).await;
        guard.release().await
    })
    .await;
    assert!(
        outcome.is_err(),
        "the timeout should have cancelled the future: {outcome:?}"
    );
    assert!(
        held.load(Ordering::SeqCst),
        "the future had not taken the lock when it was cancelled"
    );
    wait_until_free(client, name, SOON).await;

    // Cancelled by aborting its task.
    let (acquired, on_acquired) = tokio::sync::oneshot::channel();
    let task_client = client.clone();
    let task = tokio::spawn(async move {
        let _guard = task_client.lock(name).acquire().await.unwrap();
        acquired.send(()).unwrap();
        tokio::time::sleep(Duration::from_secs(60)).await;
    });
    on_acquired.await.expect("the task took the lock");
    assert!(!is_free(client, name).await, "the task holds the lock");
    task.abort();
    assert!(task.await.expect_err("the task was aborted").is_cancelled());
    wait_until_free(client, name, SOON).await;
}

async fn the_watchdog_keeps_a_short_lease(client: &Cachify) {
    let name = "short-lease";
    let ttl = Duration::from_millis(600);
    let guard = client.lock(name).ttl(ttl).acquire().await.unwrap();
    tokio::time::sleep(ttl * 5).await;
    assert!(
        !is_free(client, name).await,
        "the lease ran out while its holder was alive"
    );
    guard
        .release()
        .await
        .expect("still the owner after five leases");
}

async fn one_holder_at_a_time(client: &Cachify) {
    const TASKS: usize = 6;
    const ROUNDS: usize = 5;
    let name = "contended";
    let inside = Arc::new(AtomicUsize::new(0));
    let most_inside = Arc::new(AtomicUsize::new(0));
    let entries = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let (client, inside, most_inside, entries) = (
            client.clone(),
            inside.clone(),
            most_inside.clone(),
            entries.clone(),
        );
        tasks.push(tokio::spawn(async move {
            for _ in 0..ROUNDS {
                let guard = client
                    .lock(name)
                    .wait(Duration::from_secs(30))
                    .acquire()
                    .await
                    .unwrap();
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                most_inside.fetch_max(now, Ordering::SeqCst);
                entries.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                guard.release().await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(entries.load(Ordering::SeqCst), TASKS * ROUNDS);
    assert_eq!(
        most_inside.load(Ordering::SeqCst),
        1,
        "two holders were inside at once"
    );
}

/// `Duration::MAX` is the natural way to write "wait as long as it takes"
/// or "a lease that never runs out"; neither may panic or fail.
///
/// (Regression: `acquire` once computed `Instant::now() + wait`, which
/// panics with "overflow when adding duration to instant" for
/// `wait(Duration::MAX)`, even on a free lock; `acquire_blocking` turned
/// that panic on the background thread into an `Err(Backend)`.)
async fn extreme_durations_are_accepted(client: &Cachify) {
    let name = "extreme";
    let guard = client
        .lock(name)
        .ttl(Duration::MAX)
        .acquire()
        .await
        .expect("ttl(Duration::MAX)");
    assert!(!is_free(client, name).await);
    guard.release().await.unwrap();

    let guard = client
        .lock(name)
        .ttl(Duration::ZERO)
        .acquire()
        .await
        .expect("ttl(0) rounds up to 1 ms");
    guard.release().await.ok(); // a 1 ms lease may already be gone: NotOwner is fine

    let guard = client
        .lock(name)
        .wait(Duration::MAX)
        .acquire()
        .await
        .expect("acquire of a free lock with wait(Duration::MAX)");
    guard.release().await.unwrap();
    let blocking = client.lock(name).wait(Duration::MAX).acquire_blocking();
    blocking
        .expect("acquire_blocking of a free lock with wait(Duration::MAX)")
        .release_blocking()
        .unwrap();
}

// ---------------------------------------------------------------- the free function

#[tokio::test]
async fn the_free_lock_function_uses_the_global_client() {
    // Nothing in this binary calls `init`, so the global client is the
    // memory fallback with the default prefix.
    let global = cachify::global();
    let name = "free-fn";
    let guard = cachify::lock(name)
        .ttl(Duration::from_secs(5))
        .acquire()
        .await
        .unwrap();
    assert_eq!(guard.key(), "cachify:lock:free-fn");
    assert_locked(global.lock(name).acquire().await, global, name);
    assert_locked(cachify::lock(name).acquire_blocking(), global, name);
    assert_locked(
        cachify::lock(name)
            .wait(Duration::from_millis(50))
            .acquire()
            .await,
        global,
        name,
    );
    guard.release().await.unwrap();

    let guard = cachify::lock(name)
        .wait(Duration::from_secs(1))
        .acquire_blocking()
        .unwrap();
    assert_locked(cachify::lock(name).acquire().await, global, name);
    guard.release_blocking().unwrap();
    assert!(is_free(global, name).await);

    // The shared scenarios hold on the global client too.
    held_lock_is_refused_until_released(global).await;
    dropping_the_guard_releases(global).await;
    wait_gives_up_with_locked(global).await;
}

// ---------------------------------------------------------------- the blocking API

fn blocking_scenario(client: &Cachify) {
    let name = "blocking";
    let guard = client.lock(name).acquire_blocking().unwrap();
    assert_eq!(guard.key(), lock_key(client, name));
    assert_locked(client.lock(name).acquire_blocking(), client, name);
    guard.release_blocking().unwrap();

    // A blocking waiter gets the lock when a holder on another thread lets go.
    let holder = client.lock(name).acquire_blocking().unwrap();
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        holder.release_blocking()
    });
    let started = Instant::now();
    let guard = client
        .lock(name)
        .wait(SOON)
        .acquire_blocking()
        .expect("the blocking waiter gets the lock");
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "got a held lock after {:?}",
        started.elapsed()
    );
    releaser.join().unwrap().unwrap();

    // Dropping a guard outside any runtime still releases it.
    drop(guard);
    wait_until_free_blocking(client, name, SOON);
}

/// Mixing the two APIs on one lock, from inside a runtime.
async fn mixed_scenario(client: &Cachify) {
    let name = "mixed";
    let guard = client.lock(name).acquire().await.unwrap();
    assert_locked(client.lock(name).acquire_blocking(), client, name);
    guard.release_blocking().unwrap();
    let guard = client.lock(name).acquire_blocking().unwrap();
    assert_locked(client.lock(name).acquire().await, client, name);
    guard.release().await.unwrap();
}

mod blocking {
    use super::*;

    const LIMIT: Duration = Duration::from_secs(60);

    #[test]
    fn memory_without_a_runtime() {
        let _deadline = Deadline::new(LIMIT, "blocking lock API, memory, no runtime");
        blocking_scenario(&memory_client());
    }

    #[test]
    fn redis_without_a_runtime() {
        let _deadline = Deadline::new(LIMIT, "blocking lock API, Redis, no runtime");
        assert!(tokio::runtime::Handle::try_current().is_err());
        let server = RedisServer::start();
        let client = Cachify::builder()
            .redis(server.url())
            .prefix(PREFIX)
            .build_blocking()
            .unwrap();
        blocking_scenario(&client);
    }

    #[test]
    fn cluster_without_a_runtime() {
        let _deadline = Deadline::new(LIMIT, "blocking lock API, cluster, no runtime");
        let client = Cachify::builder()
            .redis_cluster(support::cluster::shared_cluster().seeds())
            .prefix(format!("{PREFIX}blocking-cluster:"))
            .build_blocking()
            .unwrap();
        blocking_scenario(&client);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn memory_in_a_current_thread_runtime() {
        let _deadline = Deadline::new(LIMIT, "blocking lock API, memory, current-thread runtime");
        let client = memory_client();
        blocking_scenario(&client);
        mixed_scenario(&client).await;
    }

    #[tokio::test(flavor = "current_thread")]
    async fn redis_in_a_current_thread_runtime() {
        let _deadline = Deadline::new(LIMIT, "blocking lock API, Redis, current-thread runtime");
        let server = RedisServer::start();
        let client = redis_client(&server).await;
        blocking_scenario(&client);
        mixed_scenario(&client).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memory_in_a_multi_thread_runtime() {
        let _deadline = Deadline::new(LIMIT, "blocking lock API, memory, multi-thread runtime");
        let client = memory_client();
        blocking_scenario(&client);
        mixed_scenario(&client).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_in_a_multi_thread_runtime() {
        let _deadline = Deadline::new(LIMIT, "blocking lock API, Redis, multi-thread runtime");
        let server = RedisServer::start();
        let client = redis_client(&server).await;
        blocking_scenario(&client);
        mixed_scenario(&client).await;
        // And from a worker thread of the runtime.
        let worker_client = client.clone();
        tokio::spawn(async move {
            let guard = worker_client
                .lock("from-a-worker")
                .acquire_blocking()
                .unwrap();
            guard.release_blocking().unwrap();
        })
        .await
        .unwrap();
    }
}

// ---------------------------------------------------------------- Redis only

fn raw_get(server: &RedisServer, key: &str) -> Option<String> {
    redis::cmd("GET")
        .arg(key)
        .query(&mut server.connection())
        .unwrap()
}

fn raw_pttl(server: &RedisServer, key: &str) -> i64 {
    redis::cmd("PTTL")
        .arg(key)
        .query(&mut server.connection())
        .unwrap()
}

fn is_token(value: &str) -> bool {
    value.len() == 32 && value.bytes().all(|byte| byte.is_ascii_hexdigit())
}

#[tokio::test]
async fn redis_the_lock_key_has_the_lease_and_a_random_token() {
    let server = RedisServer::start();
    let client = redis_client(&server).await;
    let guard = client
        .lock("leased")
        .ttl(Duration::from_secs(10))
        .acquire()
        .await
        .unwrap();
    let pttl = raw_pttl(&server, guard.key());
    assert!(
        pttl > 0 && pttl <= 10_000,
        "PTTL {pttl} ms for a 10 s lease"
    );
    let first = raw_get(&server, guard.key()).expect("the lock is a key in Redis");
    assert!(
        is_token(&first),
        "the lock's value is not a 32-hex-digit token: {first:?}"
    );
    guard.release().await.unwrap();
    assert_eq!(
        raw_get(&server, "lk:lock:leased"),
        None,
        "release deletes the key"
    );

    let guard = client
        .lock("leased")
        .ttl(Duration::from_secs(10))
        .acquire()
        .await
        .unwrap();
    let second = raw_get(&server, guard.key()).unwrap();
    assert!(is_token(&second), "{second:?}");
    assert_ne!(first, second, "two acquisitions got the same token");
    let other = client.lock("leased-too").acquire().await.unwrap();
    let third = raw_get(&server, other.key()).unwrap();
    assert!(
        third != first && third != second,
        "two locks got the same token"
    );
    guard.release().await.unwrap();
    other.release().await.unwrap();

    // Renewals keep the lease within its ttl.
    let ttl = Duration::from_millis(600);
    let guard = client.lock("renewed").ttl(ttl).acquire().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let pttl = raw_pttl(&server, guard.key());
    assert!(
        pttl > 0 && pttl <= 600,
        "PTTL {pttl} ms for a renewed 600 ms lease"
    );
    guard.release().await.unwrap();
}

#[tokio::test]
async fn redis_release_after_an_outside_delete_is_not_owner() {
    let server = RedisServer::start();
    let client = redis_client(&server).await;
    let mut raw = server.connection();

    let guard = client.lock("deleted").acquire().await.unwrap();
    let _: () = redis::cmd("DEL").arg(guard.key()).query(&mut raw).unwrap();
    assert!(matches!(guard.release().await, Err(Error::NotOwner)));

    let guard = client.lock("deleted").acquire_blocking().unwrap();
    let _: () = redis::cmd("DEL").arg(guard.key()).query(&mut raw).unwrap();
    assert!(matches!(guard.release_blocking(), Err(Error::NotOwner)));
}

#[tokio::test]
async fn redis_an_overwritten_lock_is_not_ours_to_release_renew_or_delete() {
    let server = RedisServer::start();
    let client = redis_client(&server).await;
    let mut raw = server.connection();
    let key = "lk:lock:taken";
    let take_over = |raw: &mut redis::Connection| {
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg("someone-else")
            .arg("PX")
            .arg(60_000)
            .query(raw)
            .unwrap();
    };

    // release() and release_blocking() refuse, and leave the other value.
    let guard = client.lock("taken").acquire().await.unwrap();
    take_over(&mut raw);
    assert!(matches!(guard.release().await, Err(Error::NotOwner)));
    assert_eq!(raw_get(&server, key).as_deref(), Some("someone-else"));
    let _: () = redis::cmd("DEL").arg(key).query(&mut raw).unwrap();

    let guard = client.lock("taken").acquire_blocking().unwrap();
    take_over(&mut raw);
    assert!(matches!(guard.release_blocking(), Err(Error::NotOwner)));
    assert_eq!(raw_get(&server, key).as_deref(), Some("someone-else"));
    let _: () = redis::cmd("DEL").arg(key).query(&mut raw).unwrap();

    // The watchdog does not renew the other value, and a dropped guard
    // does not delete it.
    let ttl = Duration::from_millis(300);
    let guard = client.lock("taken").ttl(ttl).acquire().await.unwrap();
    take_over(&mut raw);
    tokio::time::sleep(ttl * 2).await; // several renewal periods
    let pttl = raw_pttl(&server, key);
    assert!(
        pttl > 30_000,
        "the watchdog renewed someone else's key (PTTL {pttl} ms)"
    );
    drop(guard);
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            raw_get(&server, key).as_deref(),
            Some("someone-else"),
            "a dropped guard deleted another value"
        );
    }
}

/// The env var that makes `crash_child_takes_the_lock_and_waits_to_be_killed`
/// act: the URL of the parent's Redis server.
const CHILD_URL_ENV: &str = "CACHIFY_TEST_CRASH_CHILD_URL";
const CHILD_TEST: &str = "crash_child_takes_the_lock_and_waits_to_be_killed";
const CHILD_READY: &str = "CRASH-CHILD: LOCK ACQUIRED";
const CRASH_LOCK: &str = "crash";

/// Not a test of its own: the child process of
/// `redis_a_crashed_holders_lock_expires_after_its_lease`.
#[tokio::test]
#[ignore = "helper process for redis_a_crashed_holders_lock_expires_after_its_lease"]
async fn crash_child_takes_the_lock_and_waits_to_be_killed() {
    let Ok(url) = std::env::var(CHILD_URL_ENV) else {
        eprintln!("{CHILD_URL_ENV} is not set: only the crash test runs this, as a child process");
        return;
    };
    let client = Cachify::builder()
        .redis(url)
        .prefix(PREFIX)
        .build()
        .await
        .expect("child: connect to Redis");
    let guard = client
        .lock(CRASH_LOCK)
        .ttl(Duration::from_secs(1))
        .acquire()
        .await
        .expect("child: take the lock");
    assert_eq!(guard.key(), format!("{PREFIX}lock:{CRASH_LOCK}"));
    let mut stdout = std::io::stdout();
    writeln!(stdout, "{CHILD_READY}").unwrap();
    stdout.flush().unwrap();
    // The parent SIGKILLs this process long before this sleep ends.
    tokio::time::sleep(Duration::from_secs(60)).await;
    drop(guard);
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

#[tokio::test]
async fn redis_a_crashed_holders_lock_expires_after_its_lease() {
    use std::os::unix::process::ExitStatusExt;

    let server = RedisServer::start();
    let client = redis_client(&server).await;
    let mut child = KillOnDrop(
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                CHILD_TEST,
                "--nocapture",
                "--ignored",
                "--test-threads",
                "1",
            ])
            .env(CHILD_URL_ENV, server.url())
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
    // libtest prints `test <name> ... ` without a newline before the output.
    while !seen.iter().any(|line: &String| line.ends_with(CHILD_READY)) {
        let left = Duration::from_secs(30).saturating_sub(started.elapsed());
        match child_lines.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => panic!(
                "the child never took the lock; its output:\n{}",
                seen.join("\n")
            ),
        }
    }

    // Held by the child, on a 1 s lease its watchdog keeps renewing.
    assert_locked(client.lock(CRASH_LOCK).acquire().await, &client, CRASH_LOCK);
    let key = lock_key(&client, CRASH_LOCK);
    let pttl = raw_pttl(&server, &key);
    assert!(pttl > 0 && pttl <= 1_000, "PTTL {pttl} ms for a 1 s lease");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_locked(client.lock(CRASH_LOCK).acquire().await, &client, CRASH_LOCK);

    // SIGKILL: no destructor, no release.
    let pid = child.0.id() as libc::pid_t;
    assert_eq!(
        unsafe { libc::kill(pid, libc::SIGKILL) },
        0,
        "kill the child"
    );
    let status = child.0.wait().unwrap();
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "the child ended otherwise: {status:?}"
    );
    assert_locked(client.lock(CRASH_LOCK).acquire().await, &client, CRASH_LOCK);

    // Nobody renews it now: it expires within its 1 s lease.
    let freed_after = wait_until_free(&client, CRASH_LOCK, Duration::from_secs(3)).await;
    assert!(
        freed_after <= Duration::from_secs(3),
        "freed after {freed_after:?}"
    );
}

/// Redis stopped: every lock call fails closed with `Err(Error::Backend)`,
/// within a few seconds each, and the client recovers once Redis is back.
///
/// (Regression: each call once took about 9.5 s to fail, far beyond the
/// client's `connect_timeout` (2 s) and `command_timeout` (500 ms): every
/// command waited for redis-rs's `ConnectionManager` to run its whole
/// reconnect schedule, which its response timeout does not bound.)
#[tokio::test]
async fn redis_down_means_backend_errors_never_a_lock() {
    let mut server = RedisServer::start();
    let client = redis_client(&server).await;
    let held = client.lock("held-when-it-died").acquire().await.unwrap();
    server.stop();

    let mut slow = Vec::new();
    let mut timed = |what: &str, started: Instant, result: Result<(), Error>| {
        let took = started.elapsed();
        assert!(
            matches!(result, Err(Error::Backend(_))),
            "{what} with Redis down: {result:?}"
        );
        if took >= SOON {
            slow.push(format!("{what} took {took:?} to fail"));
        }
    };
    for round in 0..2 {
        let started = Instant::now();
        let result = client.lock("down").acquire().await.map(drop);
        timed(&format!("acquire #{round}"), started, result);
    }
    let started = Instant::now();
    let result = client
        .lock("down")
        .wait(Duration::from_secs(1))
        .acquire()
        .await
        .map(drop);
    timed("acquire with a wait", started, result);
    let started = Instant::now();
    let result = client.lock("down").acquire_blocking().map(drop);
    timed("acquire_blocking", started, result);
    let started = Instant::now();
    let result = held.release().await;
    timed("release", started, result);

    // The client recovers once the server is back (bounded polling).
    server.restart();
    let started = Instant::now();
    loop {
        match client.lock("back").acquire().await {
            Ok(guard) => {
                guard.release().await.unwrap();
                break;
            }
            Err(Error::Backend(_)) if started.elapsed() < Duration::from_secs(30) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => panic!("the client did not recover after a restart: {other:?}"),
        }
    }
    assert!(
        slow.is_empty(),
        "with Redis down, lock calls fail too slowly (limit {SOON:?}):\n{}",
        slow.join("\n")
    );
}

#[tokio::test]
async fn redis_hung_means_a_timeout_error_never_a_lock() {
    let server = RedisServer::start();
    let client = redis_client(&server).await;
    let frozen = Frozen::new(&server);
    let started = Instant::now();
    let result = client.lock("hung").acquire().await;
    let took = started.elapsed();
    match result {
        Err(Error::Backend(error)) => {
            assert!(error.is_timeout(), "not reported as a timeout: {error}")
        }
        other => panic!("acquire with Redis hung: {other:?}"),
    }
    assert!(took < SOON, "a hung server took {took:?} to fail");
    drop(frozen);
    // Once it answers again, so does the client.
    let guard = client
        .lock("after-hang")
        .wait(SOON)
        .acquire()
        .await
        .unwrap();
    guard.release().await.unwrap();
}

/// An acquire that timed out must not leave the lock taken by nobody.
///
/// When `SET key token NX PX` times out, the command may still run once the
/// server answers again. (Regression: `acquire` once returned
/// `Err(Backend)` and forgot the token, so the lock stayed held by a token
/// no guard owns for the whole lease, 30 s by default.)
#[tokio::test]
async fn redis_a_timed_out_acquire_leaves_no_orphan_lock() {
    let server = RedisServer::start();
    let client = redis_client(&server).await;
    let frozen = Frozen::new(&server);
    let result = client.lock("orphan").acquire().await;
    assert!(
        matches!(&result, Err(Error::Backend(error)) if error.is_timeout()),
        "{result:?}"
    );
    drop(frozen);
    // The lease is the default 30 s; nothing is held, so the lock must be
    // free right away once the server answers again.
    let freed_after = wait_until_free(&client, "orphan", SOON).await;
    assert!(freed_after < SOON);
}

/// An acquire whose future is dropped while its `SET NX` is in flight must
/// not leave the lock taken by nobody once Redis answers again.
#[tokio::test]
async fn redis_a_cancelled_acquire_leaves_no_orphan_lock() {
    let server = RedisServer::start();
    let client = redis_client(&server).await;
    let frozen = Frozen::new(&server);
    let cancelled = tokio::time::timeout(
        Duration::from_millis(50),
        client.lock("cancelled").acquire(),
    )
    .await;
    assert!(cancelled.is_err(), "the acquire was cancelled mid-flight");
    drop(frozen);
    // The lease is the default 30 s: only the cleanup can free it this soon.
    let freed_after = wait_until_free(&client, "cancelled", SOON).await;
    assert!(freed_after < SOON);
}
