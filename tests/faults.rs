//! Fault injection: Redis stalled (SIGSTOP), stopped, SIGKILLed and
//! restarted under load, flushed, absent at start-up (`lazy()`); the
//! circuit breaker, the counters and rate-limited logs; locks lost to an
//! outside writer; fencing tokens; panicking and cancelled cached calls.
//!
//! Every test that breaks its Redis has a `redis-server` of its own on a
//! free loopback port. Functions take their client as a parameter
//! (`client = &client`), so each test builds the client it needs.
//! Bounds on durations only prove that nothing hangs: they are many times
//! the command timeout.

mod support;

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use cachify::{BreakerState, Cachify, CachifyBuilder, Error, cached, lock, once};
use support::{Deadline, Frozen, RedisServer};

/// The command (and connect) timeout of every Redis client here.
const TIMEOUT: Duration = Duration::from_millis(200);
/// Upper bound for one call while Redis misbehaves: a read and a write
/// that each time out, the function's own time, and a loaded machine.
const CALL_BOUND: Duration = Duration::from_secs(3);
/// Upper bound for the client to come back after Redis does.
const RECOVERY: Duration = Duration::from_secs(30);
/// Upper bound for things expected soon (a lost lock noticed, ...).
const SOON: Duration = Duration::from_secs(5);
/// Whole-test watchdog: aborts the process rather than hang the suite.
const TEST_LIMIT: Duration = Duration::from_secs(180);

fn builder(server: &RedisServer, prefix: &str) -> CachifyBuilder {
    Cachify::builder()
        .redis(server.url())
        .prefix(prefix)
        .command_timeout(TIMEOUT)
        .connect_timeout(TIMEOUT)
}

fn memory_client(prefix: &str) -> Cachify {
    Cachify::builder()
        .memory()
        .prefix(prefix)
        .build_blocking()
        .unwrap()
}

fn raw_exists(server: &RedisServer, key: &str) -> bool {
    redis::cmd("EXISTS")
        .arg(key)
        .query(&mut server.connection())
        .unwrap()
}

fn raw_get(server: &RedisServer, key: &str) -> Option<String> {
    redis::cmd("GET")
        .arg(key)
        .query(&mut server.connection())
        .unwrap()
}

/// Runs `call` and returns its value and how long it took.
async fn timed<T>(call: impl Future<Output = T>) -> (T, Duration) {
    let started = Instant::now();
    let value = call.await;
    (value, started.elapsed())
}

/// Runs a blocking call on a blocking thread, timed there.
async fn timed_blocking<T: Send + 'static>(
    call: impl FnOnce() -> T + Send + 'static,
) -> (T, Duration) {
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let value = call();
        (value, started.elapsed())
    })
    .await
    .expect("the blocking call panicked")
}

#[track_caller]
fn assert_timeout<T: std::fmt::Debug>(result: Result<T, Error>, what: &str) {
    match result {
        Err(Error::Backend(error)) => {
            assert!(
                error.is_timeout(),
                "{what}: not reported as a timeout: {error}"
            )
        }
        other => panic!("{what} with Redis stalled: expected Err(Backend(timeout)), got {other:?}"),
    }
}

#[track_caller]
fn assert_backend_error<T: std::fmt::Debug>(result: Result<T, Error>, what: &str) {
    assert!(
        matches!(result, Err(Error::Backend(_))),
        "{what}: expected Err(Error::Backend), got {result:?}"
    );
}

/// Polls `condition` (async) every 50 ms until it holds, or panics after `limit`.
async fn eventually(what: &str, limit: Duration, mut condition: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    let rounds = limit.as_millis() / 50 + 1;
    for _ in 0..rounds {
        if condition().await {
            return;
        }
        if started.elapsed() >= limit {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out after {limit:?} waiting until {what}");
}

fn eventually_blocking(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let started = Instant::now();
    let rounds = limit.as_millis() / 20 + 1;
    for _ in 0..rounds {
        if condition() {
            return;
        }
        if started.elapsed() >= limit {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out after {limit:?} waiting until {what}");
}

// ====================================================================== 1. stall

static STALL_RUNS: AtomicU32 = AtomicU32::new(0);
static STALL_ONCE_RAN: AtomicU32 = AtomicU32::new(0);

#[cached("stall-{n}", client = &client)]
async fn stall_async(client: Cachify, n: u64) -> u64 {
    STALL_RUNS.fetch_add(1, Ordering::SeqCst);
    n * 10 + 1
}

#[cached("stall-sync-{n}", client = &client)]
fn stall_sync(client: Cachify, n: u64) -> u64 {
    STALL_RUNS.fetch_add(1, Ordering::SeqCst);
    n * 10 + 2
}

#[once("stall-once-{n}", client = &client)]
async fn stall_once(client: Cachify, n: u64) -> Result<u64, Error> {
    STALL_ONCE_RAN.fetch_add(1, Ordering::SeqCst);
    Ok(n)
}

/// Redis frozen with SIGSTOP: the TCP connection stays up but nothing
/// answers. Cached calls answer from the function within about a command
/// timeout; locks refuse with a timeout; once Redis resumes, caching does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_costs_a_timeout_and_locks_fail_closed() {
    let _deadline = Deadline::new(TEST_LIMIT, "a_stalled_redis_costs_a_timeout");
    let server = RedisServer::start();
    let client = builder(&server, "stall:")
        .circuit_breaker(3, Duration::from_millis(300))
        .build()
        .await
        .unwrap();
    let runs = || STALL_RUNS.load(Ordering::SeqCst);

    // Warm: both functions cached.
    assert_eq!(stall_async(client.clone(), 1).await, 11);
    assert_eq!(stall_async(client.clone(), 1).await, 11);
    let sync_client = client.clone();
    assert_eq!(
        timed_blocking(move || stall_sync(sync_client, 1)).await.0,
        12
    );
    let sync_client = client.clone();
    assert_eq!(
        timed_blocking(move || stall_sync(sync_client, 1)).await.0,
        12
    );
    assert_eq!(runs(), 2, "second calls were hits");

    let frozen = Frozen::new(&server);
    // n = 1 is cached, but unreachable: the function answers instead.
    for n in [1, 2, 3] {
        let before = runs();
        let (value, took) = timed(stall_async(client.clone(), n)).await;
        assert_eq!(value, n * 10 + 1);
        assert!(
            took < CALL_BOUND,
            "async cached call took {took:?} with Redis stalled"
        );
        let sync_client = client.clone();
        let (value, took) = timed_blocking(move || stall_sync(sync_client, n)).await;
        assert_eq!(value, n * 10 + 2);
        assert!(
            took < CALL_BOUND,
            "sync cached call took {took:?} with Redis stalled"
        );
        assert_eq!(runs(), before + 2, "both functions ran (fail open)");
    }

    // Locks fail closed, reported as timeouts, without running the body.
    let (result, took) = timed(client.lock("stalled").acquire()).await;
    assert_timeout(result, "acquire");
    assert!(took < CALL_BOUND, "acquire took {took:?}");
    let blocking_client = client.clone();
    let (result, took) =
        timed_blocking(move || blocking_client.lock("stalled-sync").acquire_blocking()).await;
    assert_timeout(result, "acquire_blocking");
    assert!(took < CALL_BOUND, "acquire_blocking took {took:?}");
    let (result, took) = timed(stall_once(client.clone(), 1)).await;
    assert_timeout(result, "#[once]");
    assert!(took < CALL_BOUND, "#[once] took {took:?}");
    assert_eq!(
        STALL_ONCE_RAN.load(Ordering::SeqCst),
        0,
        "no body ran without its lock"
    );

    drop(frozen);

    // Caching resumes by itself: a call becomes a hit again.
    eventually(
        "a cached call is a hit after SIGCONT",
        RECOVERY,
        async || {
            let hits = client.stats().hits;
            assert_eq!(stall_async(client.clone(), 4).await, 41);
            client.stats().hits > hits
        },
    )
    .await;
    assert_eq!(client.stats().breaker, BreakerState::Closed);
    // Late replies to the timed-out commands did not shift onto later ones:
    // every key answers its own value, from the cache.
    for n in 1..=4 {
        assert_eq!(stall_async(client.clone(), n).await, n * 10 + 1);
        let sync_client = client.clone();
        assert_eq!(
            timed_blocking(move || stall_sync(sync_client, n)).await.0,
            n * 10 + 2
        );
    }
    let hits = client.stats().hits;
    assert_eq!(stall_async(client.clone(), 2).await, 21);
    assert_eq!(client.stats().hits, hits + 1, "warm again");
    // The lock whose SET was still queued in the frozen server is not orphaned.
    let guard = client.lock("stalled").wait(SOON).acquire().await.unwrap();
    guard.release().await.unwrap();
    assert_eq!(stall_once(client.clone(), 7).await.unwrap(), 7);
}

static SWARM_RUNS: AtomicU64 = AtomicU64::new(0);

#[cached("swarm-{n}", client = &client)]
async fn swarm(client: Cachify, n: u64) -> u64 {
    SWARM_RUNS.fetch_add(1, Ordering::SeqCst);
    n * 3 + 1
}

const SWARM: u64 = 64;

/// `SWARM` cached calls at once, each on its own key; the slowest's time.
async fn swarm_calls(client: &Cachify) -> Duration {
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..SWARM {
        let client = client.clone();
        tasks.spawn(async move {
            let (value, took) = timed(swarm(client, n)).await;
            assert_eq!(value, n * 3 + 1);
            took
        });
    }
    tasks.join_all().await.into_iter().max().unwrap()
}

/// Reads carry no timer of their own: the read connection's watchdog must
/// fail every read in flight on it when Redis freezes, so that 64 calls
/// waiting at once all fail open within about the command timeout; and so
/// must the next 64, which find the connection gone and reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_reads_in_flight_when_redis_stalls_all_fail_open_in_time() {
    let _deadline = Deadline::new(TEST_LIMIT, "many_reads_in_flight_when_redis_stalls");
    let server = RedisServer::start();
    // The breaker never opens: every call goes to the stalled Redis.
    let client = builder(&server, "swarm:")
        .circuit_breaker(u32::MAX, Duration::from_secs(60))
        .build()
        .await
        .unwrap();
    let runs = || SWARM_RUNS.load(Ordering::SeqCst);

    // Warm: every key cached, this runtime's read connection up.
    swarm_calls(&client).await;
    let (before, hits) = (runs(), client.stats().hits);
    swarm_calls(&client).await;
    assert_eq!(runs(), before, "warm calls were hits");
    assert_eq!(client.stats().hits, hits + SWARM);

    let frozen = Frozen::new(&server);
    // A read cut by the watchdog, the function, and a write that times out.
    let bound = TIMEOUT * 3 + Duration::from_secs(1);
    for wave in ["in flight on the read connection", "reconnecting"] {
        let before = runs();
        let slowest = swarm_calls(&client).await;
        assert!(
            slowest < bound,
            "{wave}: the slowest of {SWARM} calls took {slowest:?} with Redis stalled"
        );
        assert_eq!(runs(), before + SWARM, "{wave}: every call ran (fail open)");
    }
    drop(frozen);

    eventually(
        "a cached call is a hit after SIGCONT",
        RECOVERY,
        async || {
            let hits = client.stats().hits;
            assert_eq!(swarm(client.clone(), 1).await, 4);
            client.stats().hits > hits
        },
    )
    .await;
}

// ====================================================================== 2. breaker

static BREAKER_RUNS: AtomicU32 = AtomicU32::new(0);
static BREAKER_LOCKED_RAN: AtomicU32 = AtomicU32::new(0);

#[cached("brk-{n}", client = &client)]
async fn breaker_async(client: Cachify, n: u64) -> u64 {
    BREAKER_RUNS.fetch_add(1, Ordering::SeqCst);
    n + 100
}

#[cached("brk-sync-{n}", client = &client)]
fn breaker_sync(client: Cachify, n: u64) -> u64 {
    BREAKER_RUNS.fetch_add(1, Ordering::SeqCst);
    n + 200
}

#[once("brk-once", client = &client)]
async fn breaker_once(client: Cachify) -> Result<(), Error> {
    BREAKER_LOCKED_RAN.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

#[lock("brk-lock", client = &client, return_on_locked = false)]
fn breaker_lock(client: Cachify) -> bool {
    BREAKER_LOCKED_RAN.fetch_add(1, Ordering::SeqCst);
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_circuit_breaker_opens_bypasses_probes_and_closes() {
    let _deadline = Deadline::new(TEST_LIMIT, "the_circuit_breaker_opens");
    let mut server = RedisServer::start();
    // Long enough that the bypass phase below surely fits in it.
    let cool_down = Duration::from_millis(1500);
    let client = builder(&server, "brk:")
        .circuit_breaker(3, cool_down)
        .build()
        .await
        .unwrap();
    let runs = || BREAKER_RUNS.load(Ordering::SeqCst);

    assert_eq!(breaker_async(client.clone(), 1).await, 101);
    assert_eq!(breaker_async(client.clone(), 1).await, 101);
    assert_eq!(runs(), 1);
    let stats = client.stats();
    assert_eq!(
        (stats.breaker, stats.errors, stats.hits),
        (BreakerState::Closed, 0, 1)
    );

    server.stop();
    // A few failing calls (each a failed read, and maybe a failed write) open it.
    let mut failing_calls = 0;
    while client.stats().breaker != BreakerState::Open {
        failing_calls += 1;
        assert!(
            failing_calls <= 3,
            "still {:?} after 3 failing calls",
            client.stats()
        );
        let (value, took) = timed(breaker_async(client.clone(), 10 + failing_calls)).await;
        assert_eq!(value, 110 + failing_calls);
        assert!(took < CALL_BOUND, "a call with Redis down took {took:?}");
    }
    let opened = Instant::now();
    assert!(client.stats().errors >= 3, "{:?}", client.stats());

    // Open: calls answer from the function without touching Redis.
    let before = client.stats();
    let runs_before = runs();
    for n in 0..10 {
        assert_eq!(breaker_async(client.clone(), n).await, n + 100);
        let sync_client = client.clone();
        assert_eq!(
            timed_blocking(move || breaker_sync(sync_client, n)).await.0,
            n + 200
        );
    }
    let after = client.stats();
    assert!(
        opened.elapsed() < cool_down,
        "the bypass phase outlasted the cool-down ({:?}); the checks below assume it did not",
        opened.elapsed()
    );
    assert_eq!(after.breaker, BreakerState::Open);
    assert_eq!(
        after.errors, before.errors,
        "an open breaker must not touch Redis"
    );
    assert_eq!(
        after.bypassed,
        before.bypassed + 20,
        "every call was bypassed"
    );
    assert_eq!(runs(), runs_before + 20, "every call ran its function");
    assert_eq!(after.hits, before.hits);

    // Locks never skip Redis: they keep failing closed while the breaker is open.
    assert_backend_error(
        client.lock("while-open").acquire().await,
        "acquire while open",
    );
    assert_backend_error(breaker_once(client.clone()).await, "#[once] while open");
    let lock_client = client.clone();
    assert!(!timed_blocking(move || breaker_lock(lock_client)).await.0);
    assert_eq!(
        BREAKER_LOCKED_RAN.load(Ordering::SeqCst),
        0,
        "no body ran unlocked"
    );
    assert_eq!(
        client.stats().errors,
        after.errors + 3,
        "lock failures are counted as errors"
    );

    // After the cool-down one call probes Redis; it is still down, so the
    // breaker reopens, and the next call is bypassed again.
    tokio::time::sleep(cool_down + Duration::from_millis(300)).await;
    let before = client.stats();
    assert_eq!(breaker_async(client.clone(), 50).await, 150);
    let probed = client.stats();
    assert_eq!(
        probed.errors,
        before.errors + 1,
        "exactly one probe reached Redis"
    );
    assert_eq!(
        probed.bypassed, before.bypassed,
        "the probe was not bypassed"
    );
    assert_eq!(probed.breaker, BreakerState::Open, "a failed probe reopens");
    assert_eq!(breaker_async(client.clone(), 51).await, 151);
    let after = client.stats();
    assert_eq!(
        (after.errors, after.bypassed),
        (probed.errors, probed.bypassed + 1)
    );

    // Redis back on the same port: within bounded time the breaker closes
    // and calls are hits again.
    server.restart();
    eventually("the breaker closes and a call hits", RECOVERY, async || {
        let hits = client.stats().hits;
        assert_eq!(breaker_async(client.clone(), 7).await, 107);
        client.stats().hits > hits
    })
    .await;
    assert_eq!(client.stats().breaker, BreakerState::Closed);
    let sync_client = client.clone();
    let hits = client.stats().hits;
    assert_eq!(
        timed_blocking(move || breaker_sync(sync_client, 7)).await.0,
        207
    );
    let sync_client = client.clone();
    assert_eq!(
        timed_blocking(move || breaker_sync(sync_client, 7)).await.0,
        207
    );
    assert_eq!(
        client.stats().hits,
        hits + 1,
        "sync caching works again too"
    );
    breaker_once(client.clone()).await.unwrap();
    assert_eq!(BREAKER_LOCKED_RAN.load(Ordering::SeqCst), 1);
}

// ====================================================================== 3. kill -9 under load

static LOAD_RUNS: AtomicU64 = AtomicU64::new(0);

#[cached("load-{n}", client = &client)]
async fn load_async(client: Cachify, n: u64) -> u64 {
    LOAD_RUNS.fetch_add(1, Ordering::Relaxed);
    tokio::task::yield_now().await;
    n * 7 + 3
}

#[cached("load-sync-{n}", client = &client)]
fn load_sync(client: Cachify, n: u64) -> u64 {
    LOAD_RUNS.fetch_add(1, Ordering::Relaxed);
    n * 11 + 5
}

/// Shared by the load workers.
#[derive(Default)]
struct Load {
    stop: AtomicBool,
    calls: AtomicU64,
    wrong: Mutex<Vec<String>>,
}

const LOAD_KEYS: u64 = 8;
const LOAD_MAX_CALLS: u64 = 20_000;
const LOAD_TIME: Duration = Duration::from_secs(90);

#[test]
fn redis_killed_and_restarted_under_load() {
    let _deadline = Deadline::new(TEST_LIMIT, "redis_killed_and_restarted_under_load");
    let mut server = RedisServer::start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client = runtime
        .block_on(
            builder(&server, "load:")
                .circuit_breaker(3, Duration::from_millis(300))
                .build(),
        )
        .unwrap();
    let load = Arc::new(Load::default());
    let started = Instant::now();

    let tasks: Vec<_> = (0..4u64)
        .map(|worker| {
            let (client, load) = (client.clone(), Arc::clone(&load));
            runtime.spawn(async move {
                for i in 0..LOAD_MAX_CALLS {
                    if load.stop.load(Ordering::SeqCst) || started.elapsed() > LOAD_TIME {
                        break;
                    }
                    let n = (i + worker) % LOAD_KEYS;
                    let value = load_async(client.clone(), n).await;
                    if value != n * 7 + 3 {
                        load.wrong
                            .lock()
                            .unwrap()
                            .push(format!("async {n} -> {value}"));
                    }
                    load.calls.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        })
        .collect();
    let (done, finished) = mpsc::channel();
    let threads: Vec<_> = (0..2u64)
        .map(|worker| {
            let (client, load, done) = (client.clone(), Arc::clone(&load), done.clone());
            std::thread::spawn(move || {
                for i in 0..LOAD_MAX_CALLS {
                    if load.stop.load(Ordering::SeqCst) || started.elapsed() > LOAD_TIME {
                        break;
                    }
                    let n = (i + worker) % LOAD_KEYS;
                    let value = load_sync(client.clone(), n);
                    if value != n * 11 + 5 {
                        load.wrong
                            .lock()
                            .unwrap()
                            .push(format!("sync {n} -> {value}"));
                    }
                    load.calls.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(2));
                }
                let _ = done.send(());
            })
        })
        .collect();
    drop(done);

    eventually_blocking("the load is warm", RECOVERY, || client.stats().hits > 50);
    // SIGKILL: no shutdown, connections reset mid-flight.
    server.stop();
    let calls_at_kill = load.calls.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(800));
    let calls_during_outage = load.calls.load(Ordering::SeqCst) - calls_at_kill;
    server.restart();
    let hits_at_restart = client.stats().hits;
    eventually_blocking("caching resumes after the restart", RECOVERY, || {
        client.stats().hits > hits_at_restart + 50
    });
    load.stop.store(true, Ordering::SeqCst);

    runtime.block_on(async {
        for task in tasks {
            tokio::time::timeout(Duration::from_secs(20), task)
                .await
                .expect("a load task is stuck")
                .expect("a load task panicked");
        }
    });
    for _ in 0..threads.len() {
        finished
            .recv_timeout(Duration::from_secs(20))
            .expect("a load thread is stuck or panicked");
    }
    for thread in threads {
        thread.join().expect("a load thread panicked");
    }
    let wrong = load.wrong.lock().unwrap();
    assert!(wrong.is_empty(), "wrong values served: {wrong:?}");
    assert!(
        calls_during_outage > 0,
        "no call returned during the outage: callers were stuck"
    );
    let stats = client.stats();
    assert!(stats.errors > 0, "the outage went unnoticed: {stats:?}");
    assert_eq!(stats.breaker, BreakerState::Closed, "{stats:?}");
    eprintln!(
        "load: {} calls, {} during the 800 ms outage, {} runs, {stats:?}",
        load.calls.load(Ordering::SeqCst),
        calls_during_outage,
        LOAD_RUNS.load(Ordering::SeqCst)
    );
}

static GENERATION: AtomicU64 = AtomicU64::new(0);
static FLUSH_RUNS: AtomicU32 = AtomicU32::new(0);

#[cached("gen-{n}", client = &client)]
async fn generation(client: Cachify, n: u64) -> (u64, u64) {
    FLUSH_RUNS.fetch_add(1, Ordering::SeqCst);
    (n, GENERATION.load(Ordering::SeqCst))
}

#[cached("gen-sync-{n}", client = &client)]
fn generation_sync(client: Cachify, n: u64) -> (u64, u64) {
    FLUSH_RUNS.fetch_add(1, Ordering::SeqCst);
    (n, GENERATION.load(Ordering::SeqCst))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_flushall_nothing_stale_is_served() {
    let server = RedisServer::start();
    let client = builder(&server, "gen:").build().await.unwrap();
    let runs = || FLUSH_RUNS.load(Ordering::SeqCst);
    for n in 0..5 {
        assert_eq!(generation(client.clone(), n).await, (n, 0));
        let c = client.clone();
        assert_eq!(
            timed_blocking(move || generation_sync(c, n)).await.0,
            (n, 0)
        );
    }
    GENERATION.store(1, Ordering::SeqCst);
    for n in 0..5 {
        assert_eq!(generation(client.clone(), n).await, (n, 0), "cached");
        let c = client.clone();
        assert_eq!(
            timed_blocking(move || generation_sync(c, n)).await.0,
            (n, 0)
        );
    }
    assert_eq!(runs(), 10);

    let _: () = redis::cmd("FLUSHALL")
        .query(&mut server.connection())
        .unwrap();
    for n in 0..5 {
        assert_eq!(
            generation(client.clone(), n).await,
            (n, 1),
            "ran again after FLUSHALL"
        );
        let c = client.clone();
        assert_eq!(
            timed_blocking(move || generation_sync(c, n)).await.0,
            (n, 1)
        );
    }
    assert_eq!(runs(), 20, "every key ran once after the flush");
    assert_eq!(generation(client.clone(), 3).await, (3, 1));
    assert_eq!(runs(), 20, "and is cached again");
}

// ====================================================================== 4. lazy

static LAZY_RUNS: AtomicU32 = AtomicU32::new(0);

#[cached("lazy-{n}", client = &client)]
async fn lazy_cached(client: Cachify, n: u64) -> u64 {
    LAZY_RUNS.fetch_add(1, Ordering::SeqCst);
    n + 1
}

#[cached("lazy-sync-{n}", client = &client)]
fn lazy_cached_sync(client: Cachify, n: u64) -> u64 {
    LAZY_RUNS.fetch_add(1, Ordering::SeqCst);
    n + 2
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lazy_client_starts_without_redis_and_uses_it_once_it_is_up() {
    let _deadline = Deadline::new(TEST_LIMIT, "a_lazy_client_starts_without_redis");
    let mut server = RedisServer::start();
    server.stop(); // the port is known, nothing listens on it

    let (client, took) = timed(
        builder(&server, "lazy:")
            .circuit_breaker(3, Duration::from_millis(300))
            .lazy()
            .build(),
    )
    .await;
    let client = client.expect("a lazy build succeeds with Redis unreachable");
    assert!(took < CALL_BOUND, "a lazy build took {took:?}");
    let blocking = builder(&server, "lazy:").lazy();
    let (built, took) = timed_blocking(move || blocking.build_blocking()).await;
    built.expect("a lazy build_blocking succeeds too");
    assert!(took < CALL_BOUND, "a lazy build_blocking took {took:?}");
    // Not lazy: the same address is an error at once.
    assert_backend_error(builder(&server, "lazy:").build().await, "an eager build");

    // Fail open: the functions run every time.
    for _ in 0..3 {
        let (value, took) = timed(lazy_cached(client.clone(), 1)).await;
        assert_eq!(value, 2);
        assert!(took < CALL_BOUND, "a cached call took {took:?}");
        let c = client.clone();
        assert_eq!(timed_blocking(move || lazy_cached_sync(c, 1)).await.0, 3);
    }
    assert_eq!(LAZY_RUNS.load(Ordering::SeqCst), 6, "nothing was cached");
    // Fail closed.
    let (result, took) = timed(client.lock("lazy").acquire()).await;
    assert_backend_error(result, "acquire before Redis is up");
    assert!(took < CALL_BOUND, "acquire took {took:?}");

    server.restart();
    eventually(
        "a lazy client caches once Redis is up",
        RECOVERY,
        async || {
            let hits = client.stats().hits;
            assert_eq!(lazy_cached(client.clone(), 5).await, 6);
            client.stats().hits > hits
        },
    )
    .await;
    eventually(
        "a lazy client locks once Redis is up",
        RECOVERY,
        async || match client.lock("lazy").acquire().await {
            Ok(guard) => {
                guard.release().await.unwrap();
                true
            }
            Err(Error::Backend(_)) => false,
            Err(other) => panic!("{other:?}"),
        },
    )
    .await;
    let c = client.clone();
    assert_eq!(timed_blocking(move || lazy_cached_sync(c, 5)).await.0, 7);
    let runs = LAZY_RUNS.load(Ordering::SeqCst);
    let c = client.clone();
    assert_eq!(timed_blocking(move || lazy_cached_sync(c, 5)).await.0, 7);
    assert_eq!(LAZY_RUNS.load(Ordering::SeqCst), runs, "sync calls hit too");
}

#[tokio::test]
async fn a_lazy_client_still_rejects_a_malformed_url() {
    for url in [
        "not a url",
        "redis://127.0.0.1:notaport/0",
        "http://127.0.0.1:1/0",
        "",
    ] {
        let result = Cachify::builder().redis(url).lazy().build().await;
        assert!(
            matches!(result, Err(Error::Config(_))),
            "lazy build of {url:?}: {result:?}"
        );
        let result = Cachify::builder().redis(url).lazy().build_blocking();
        assert!(
            matches!(result, Err(Error::Config(_))),
            "lazy build_blocking of {url:?}: {result:?}"
        );
    }
}

// ====================================================================== 5. observability

static OBS_RUNS: AtomicU32 = AtomicU32::new(0);

#[cached("obs-{n}", client = &client)]
async fn observed(client: Cachify, n: u64) -> String {
    OBS_RUNS.fetch_add(1, Ordering::SeqCst);
    "v".repeat(n as usize)
}

#[once("obs-once", client = &client, return_on_locked = false)]
async fn observed_once(client: Cachify) -> bool {
    true
}

#[derive(Debug, Default, PartialEq)]
struct Counts {
    hits: u64,
    misses: u64,
    errors: u64,
    bypassed: u64,
    oversized: u64,
    locks_acquired: u64,
    lock_contention: u64,
}

fn counts(client: &Cachify) -> Counts {
    let stats = client.stats();
    Counts {
        hits: stats.hits,
        misses: stats.misses,
        errors: stats.errors,
        bypassed: stats.bypassed,
        oversized: stats.oversized,
        locks_acquired: stats.locks_acquired,
        lock_contention: stats.lock_contention,
    }
}

/// The counters on one client, step by step, each step changing exactly
/// the counters it should.
async fn counters_scenario(client: &Cachify, redis: bool) {
    assert_eq!(counts(client), Counts::default());
    assert_eq!(client.stats().breaker, BreakerState::Closed);

    assert_eq!(observed(client.clone(), 3).await, "vvv");
    assert_eq!(
        counts(client),
        Counts {
            misses: 1,
            ..Counts::default()
        }
    );
    assert_eq!(observed(client.clone(), 3).await, "vvv");
    assert_eq!(
        counts(client),
        Counts {
            misses: 1,
            hits: 1,
            ..Counts::default()
        }
    );

    // 200 bytes is over the 64-byte limit of the Redis client.
    assert_eq!(observed(client.clone(), 200).await.len(), 200);
    assert_eq!(observed(client.clone(), 200).await.len(), 200);
    let expected = if redis {
        Counts {
            misses: 3,
            hits: 1,
            oversized: 2,
            ..Counts::default()
        }
    } else {
        // The memory backend has no size limit.
        Counts {
            misses: 2,
            hits: 2,
            ..Counts::default()
        }
    };
    assert_eq!(counts(client), expected);

    let guard = client.lock("obs").acquire().await.unwrap();
    assert!(matches!(
        client.lock("obs").acquire().await,
        Err(Error::Locked { .. })
    ));
    assert!(matches!(
        client
            .lock("obs")
            .wait(Duration::from_millis(50))
            .acquire()
            .await,
        Err(Error::Locked { .. })
    ));
    let contended = client.clone();
    assert!(matches!(
        timed_blocking(move || contended.lock("obs").acquire_blocking())
            .await
            .0,
        Err(Error::Locked { .. })
    ));
    guard.release().await.unwrap();
    assert!(observed_once(client.clone()).await);
    let expected = Counts {
        locks_acquired: 2,
        lock_contention: 3,
        ..expected
    };
    assert_eq!(counts(client), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_each_outcome_on_redis() {
    let mut server = RedisServer::start();
    let client = builder(&server, "obs:")
        .max_value_size(64)
        .circuit_breaker(1000, Duration::from_secs(60))
        .build()
        .await
        .unwrap();
    counters_scenario(&client, true).await;
    let before = counts(&client);

    server.stop();
    assert_eq!(observed(client.clone(), 4).await, "vvvv");
    let after = counts(&client);
    assert_eq!(
        after.errors,
        before.errors + 2,
        "a failed read and a failed write"
    );
    assert_eq!(after.hits, before.hits);
    assert_backend_error(client.lock("obs-down").acquire().await, "acquire");
    let after_lock = counts(&client);
    assert_eq!(
        after_lock.errors,
        after.errors + 1,
        "a failed acquire is an error"
    );
    assert_eq!(
        (after_lock.locks_acquired, after_lock.lock_contention),
        (after.locks_acquired, after.lock_contention),
        "a failed acquire is neither a grant nor contention"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_count_each_outcome_on_memory() {
    counters_scenario(&memory_client("obs-mem:"), false).await;
}

thread_local! {
    /// Log output of events emitted on this thread, while capturing.
    static CAPTURED: std::cell::RefCell<Option<Vec<u8>>> = const { std::cell::RefCell::new(None) };
}

/// Writes into [`CAPTURED`] of the thread that emits the event.
struct ThisThread;

impl Write for ThisThread {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        CAPTURED.with_borrow_mut(|captured| {
            if let Some(buffer) = captured {
                buffer.extend_from_slice(bytes);
            }
        });
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Starts capturing the log lines of events emitted on this thread.
///
/// The subscriber is global for this test binary, not scoped to the test:
/// tracing caches each call site's interest when the site is first hit,
/// and with a single *scoped* subscriber it asks only the subscriber of the
/// thread that got there first. Another test's thread reaching a site
/// first would silence it here for good. Events of other threads are
/// formatted and dropped.
fn capture_this_thread() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_writer(|| ThisThread)
            .with_ansi(false)
            .finish();
        tracing_subscriber::util::SubscriberInitExt::try_init(subscriber)
            .expect("no other global subscriber in this test binary");
    });
    CAPTURED.set(Some(Vec::new()));
}

/// What was captured on this thread since the last call.
fn take_captured() -> String {
    let bytes = CAPTURED.with_borrow_mut(|captured| captured.as_mut().map(std::mem::take));
    String::from_utf8(bytes.expect("capture_this_thread() first")).unwrap()
}

fn lines_with<'a>(logs: &'a str, needle: &str) -> Vec<&'a str> {
    logs.lines().filter(|line| line.contains(needle)).collect()
}

static LOGGED_RUNS: AtomicU32 = AtomicU32::new(0);

#[cached("logged-{n}", client = &client)]
async fn logged(client: Cachify, n: u64) -> u64 {
    LOGGED_RUNS.fetch_add(1, Ordering::SeqCst);
    n * 3
}

const CACHE_FAILED: &str = "cache backend failed";
/// The library's period between two failure lines of one kind.
const LOG_PERIOD: Duration = Duration::from_secs(5);

/// 50 failing calls at once, on this thread.
async fn burst(client: &Cachify, first: u64) -> Duration {
    let started = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for n in first..first + 50 {
        calls.spawn(logged(client.clone(), n));
    }
    let mut answered = 0;
    while let Some(value) = calls.join_next().await {
        let value = value.unwrap();
        assert_eq!(value % 3, 0);
        answered += 1;
    }
    assert_eq!(answered, 50, "every call answered");
    started.elapsed()
}

/// On a current-thread runtime, so every event of the test is emitted on
/// the thread that captures.
#[test]
fn an_outage_logs_a_few_lines_not_one_per_call() {
    let _deadline = Deadline::new(TEST_LIMIT, "an_outage_logs_a_few_lines");
    capture_this_thread();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut server = RedisServer::start();
        // A breaker that never opens: every call goes to Redis and fails.
        let client = builder(&server, "log:")
            .circuit_breaker(u32::MAX, Duration::from_secs(60))
            .build()
            .await
            .unwrap();
        assert_eq!(logged(client.clone(), 1).await, 3);
        server.stop();
        take_captured();

        let runs = LOGGED_RUNS.load(Ordering::SeqCst);
        let took = burst(&client, 100).await;
        assert_eq!(
            LOGGED_RUNS.load(Ordering::SeqCst),
            runs + 50,
            "every call ran its function"
        );
        let stats = client.stats();
        assert!(stats.errors >= 50, "the calls did fail: {stats:?}");
        let text = take_captured();
        let failures = lines_with(&text, CACHE_FAILED);
        // One line per period, plus one for a period boundary crossed.
        let allowed = 1 + (took.as_secs_f64() / LOG_PERIOD.as_secs_f64()).ceil() as usize;
        assert!(
            !failures.is_empty() && failures.len() <= allowed.min(3),
            "{} failure lines for {} failed operations in {took:?}:\n{text}",
            failures.len(),
            stats.errors
        );
        assert!(failures.iter().all(|line| line.contains("WARN")), "{text}");

        // The next line, a period later, says how many were held back.
        tokio::time::sleep(LOG_PERIOD + Duration::from_millis(300)).await;
        assert_eq!(logged(client.clone(), 999).await, 2997);
        let text = take_captured();
        let failures = lines_with(&text, CACHE_FAILED);
        assert_eq!(failures.len(), 1, "{text}");
        let suppressed: u64 = failures[0]
            .split("suppressed=")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|digits| digits.parse().ok())
            .unwrap_or_else(|| panic!("no suppressed=N in {:?}", failures[0]));
        assert!(
            suppressed >= 49,
            "suppressed={suppressed} after a burst of 50 failing calls"
        );

        // With a breaker: it opens once, and says so once.
        let breaking = builder(&server, "log2:")
            .lazy()
            .circuit_breaker(3, Duration::from_secs(60))
            .build()
            .await
            .unwrap();
        burst(&breaking, 200).await;
        burst(&breaking, 300).await;
        let text = take_captured();
        assert_eq!(lines_with(&text, "circuit breaker open").len(), 1, "{text}");
        assert!(lines_with(&text, CACHE_FAILED).len() <= 3, "{text}");
        // The first 50 all passed the closed breaker before any failed.
        assert!(breaking.stats().bypassed >= 50, "{:?}", breaking.stats());
    });
}

// ====================================================================== 6. lost locks, fencing

/// The lease of the locks below: renewed every 100 ms, so a loss is seen soon.
const SHORT_LEASE: Duration = Duration::from_millis(300);

async fn assert_lost_soon(guard: &cachify::LockGuard) {
    tokio::time::timeout(SOON, guard.lost())
        .await
        .unwrap_or_else(|_| panic!("lost() did not resolve within {SOON:?}"));
    assert!(guard.is_lost());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_deleted_lock_is_reported_lost() {
    let server = RedisServer::start();
    let client = builder(&server, "lost:").build().await.unwrap();
    let guard = Arc::new(
        client
            .lock("deleted")
            .ttl(SHORT_LEASE)
            .acquire()
            .await
            .unwrap(),
    );
    assert!(!guard.is_lost());
    // A task already waiting on lost() is woken.
    let waiter = {
        let guard = Arc::clone(&guard);
        tokio::spawn(async move { guard.lost().await })
    };
    // Several renewals later, still ours.
    tokio::time::sleep(SHORT_LEASE * 2).await;
    assert!(!guard.is_lost(), "lost while nobody touched it");
    assert!(!waiter.is_finished());

    let _: () = redis::cmd("DEL")
        .arg(guard.key())
        .query(&mut server.connection())
        .unwrap();
    tokio::time::timeout(SOON, waiter)
        .await
        .expect("a waiting lost() was not woken")
        .unwrap();
    assert_lost_soon(&guard).await;
    let guard = Arc::into_inner(guard).unwrap();
    assert!(matches!(guard.release().await, Err(Error::NotOwner)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_an_overwritten_lock_is_reported_lost_and_left_alone() {
    let server = RedisServer::start();
    let client = builder(&server, "lost:").build().await.unwrap();
    let guard = client
        .lock("taken")
        .ttl(SHORT_LEASE)
        .acquire()
        .await
        .unwrap();
    let key = guard.key().to_owned();
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("someone-else")
        .arg("PX")
        .arg(60_000)
        .query(&mut server.connection())
        .unwrap();
    assert_lost_soon(&guard).await;
    assert!(matches!(
        client.lock("taken").acquire().await,
        Err(Error::Locked { .. })
    ));
    assert!(matches!(guard.release().await, Err(Error::NotOwner)));
    assert_eq!(raw_get(&server, &key).as_deref(), Some("someone-else"));
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query(&mut server.connection())
        .unwrap();
    assert!(
        pttl > 30_000,
        "someone else's lease was touched: PTTL {pttl}"
    );
}

/// A Redis restart loses every lock (no persistence): the holder hears of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_a_restart_loses_the_lock_and_the_holder_hears_of_it() {
    let _deadline = Deadline::new(TEST_LIMIT, "redis_a_restart_loses_the_lock");
    let mut server = RedisServer::start();
    let client = builder(&server, "lost:").build().await.unwrap();
    let guard = client
        .lock("restarted")
        .ttl(Duration::from_secs(1))
        .acquire()
        .await
        .unwrap();
    let restarter = tokio::task::spawn_blocking(move || {
        server.restart();
        server
    });
    let server = restarter.await.unwrap();
    tokio::time::timeout(RECOVERY, guard.lost())
        .await
        .expect("the holder never heard its lock was gone");
    assert!(matches!(
        guard.release().await,
        Err(Error::NotOwner) | Err(Error::Backend(_))
    ));
    eventually(
        "the lock can be taken again",
        RECOVERY,
        async || match client.lock("restarted").acquire().await {
            Ok(again) => {
                again.release().await.unwrap();
                true
            }
            Err(Error::Backend(_)) => false,
            Err(other) => panic!("{other:?}"),
        },
    )
    .await;
    drop(server);
}

#[lock("gone-{id}", client = &client)]
fn mem_locked(client: Cachify, id: u32) -> Result<(), Error> {
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_a_force_released_lock_is_reported_lost() {
    let client = memory_client("lost-mem:");
    let guard = client
        .lock("gone-1")
        .ttl(SHORT_LEASE)
        .acquire()
        .await
        .unwrap();
    assert!(
        mem_locked_is_locked(client.clone(), 1).unwrap(),
        "the same lock as #[lock(\"gone-{{id}}\")]"
    );
    tokio::time::sleep(SHORT_LEASE * 2).await;
    assert!(!guard.is_lost(), "lost while nobody touched it");
    mem_locked_release(client.clone(), 1).unwrap();
    assert_lost_soon(&guard).await;
    assert!(matches!(guard.release().await, Err(Error::NotOwner)));

    // Force-released and taken by someone else: the old guard is lost, and
    // neither its release nor its drop frees the new holder's lock.
    let old = client
        .lock("gone-2")
        .ttl(SHORT_LEASE)
        .acquire()
        .await
        .unwrap();
    mem_locked_release(client.clone(), 2).unwrap();
    let new = client
        .lock("gone-2")
        .ttl(Duration::from_secs(30))
        .acquire()
        .await
        .unwrap();
    assert!(new.fencing_token() > old.fencing_token());
    assert_lost_soon(&old).await;
    assert!(matches!(old.release().await, Err(Error::NotOwner)));
    let old = client.lock("gone-3").acquire().await.unwrap();
    mem_locked_release(client.clone(), 3).unwrap();
    let newer = client.lock("gone-3").acquire().await.unwrap();
    drop(old);
    assert!(matches!(
        client.lock("gone-2").acquire().await,
        Err(Error::Locked { .. })
    ));
    assert!(matches!(
        client.lock("gone-3").acquire().await,
        Err(Error::Locked { .. })
    ));
    assert!(mem_locked_is_locked(client.clone(), 2).unwrap());
    new.release().await.unwrap();
    newer.release().await.unwrap();
}

async fn fencing_scenario(client: &Cachify) {
    let mut tokens_a = Vec::new();
    let mut tokens_b = Vec::new();
    for round in 0..4 {
        let a = client.lock("fence-a").acquire().await.unwrap();
        tokens_a.push(a.fencing_token());
        // A refused attempt is not a grant.
        assert!(matches!(
            client.lock("fence-a").acquire().await,
            Err(Error::Locked { .. })
        ));
        a.release().await.unwrap();
        if round % 2 == 0 {
            let b = client.lock("fence-b").acquire().await.unwrap();
            tokens_b.push(b.fencing_token());
            drop(b);
            // A dropped guard's release may be in the background.
            let c = client.clone();
            eventually("fence-b is free", SOON, async || {
                match c.lock("fence-b").acquire().await {
                    Ok(probe) => {
                        probe.release().await.unwrap();
                        true
                    }
                    Err(_) => false,
                }
            })
            .await;
        }
    }
    let blocking = client.clone();
    let guard = timed_blocking(move || blocking.lock("fence-a").acquire_blocking().unwrap())
        .await
        .0;
    tokens_a.push(guard.fencing_token());
    guard.release().await.unwrap();
    // The probe acquisitions in `eventually` are grants of fence-b too.
    let b = client.lock("fence-b").acquire().await.unwrap();
    tokens_b.push(b.fencing_token());
    b.release().await.unwrap();

    assert!(
        tokens_a.windows(2).all(|w| w[0] < w[1]),
        "fence-a: {tokens_a:?}"
    );
    assert!(
        tokens_b.windows(2).all(|w| w[0] < w[1]),
        "fence-b: {tokens_b:?}"
    );
    // Counters start from the store's clock in microseconds, so a counter
    // that expired while idle (or was flushed) restarts above its old tokens.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    for first in [tokens_a[0], tokens_b[0]] {
        assert!(
            first.abs_diff(now) < 600_000_000,
            "tokens follow the clock: a {tokens_a:?}, b {tokens_b:?}, now {now}"
        );
    }
    // An expired lease still counts: the next grant is higher.
    let short = client
        .lock("fence-a")
        .ttl(Duration::from_millis(1))
        .acquire()
        .await
        .unwrap();
    let short_token = short.fencing_token();
    drop(short);
    let c = client.clone();
    let mut later = None;
    eventually("fence-a is free", SOON, async || {
        match c.lock("fence-a").acquire().await {
            Ok(guard) => {
                later = Some(guard);
                true
            }
            Err(_) => false,
        }
    })
    .await;
    let later = later.unwrap();
    assert!(later.fencing_token() > short_token);
    assert!(short_token > *tokens_a.last().unwrap());
    later.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_tokens_increase_per_name_on_redis() {
    let server = RedisServer::start();
    let client = builder(&server, "fence:").build().await.unwrap();
    fencing_scenario(&client).await;
    // Another process (client) on the same Redis continues the sequence.
    let other = builder(&server, "fence:").build().await.unwrap();
    let mine = client.lock("fence-c").acquire().await.unwrap();
    let first = mine.fencing_token();
    mine.release().await.unwrap();
    let theirs = other.lock("fence-c").acquire().await.unwrap();
    assert!(theirs.fencing_token() > first);
    theirs.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_tokens_increase_per_name_on_memory() {
    fencing_scenario(&memory_client("fence-mem:")).await;
}

// ====================================================================== 7. panics

static PANIC_RUNS: AtomicU32 = AtomicU32::new(0);

#[cached("panicky-{n}", client = &client)]
async fn panicky(client: Cachify, n: u64) -> u64 {
    let run = PANIC_RUNS.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(400)).await;
    if run == 0 {
        panic!("the first run of panicky fails (expected by the test)");
    }
    n * 1000 + u64::from(run)
}

static PANIC_SYNC_RUNS: AtomicU32 = AtomicU32::new(0);

#[cached("panicky-sync-{n}", client = &client)]
fn panicky_sync(client: Cachify, n: u64) -> u64 {
    let run = PANIC_SYNC_RUNS.fetch_add(1, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(400));
    if run == 0 {
        panic!("the first run of panicky_sync fails (expected by the test)");
    }
    n * 1000 + u64::from(run)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_leader_hands_over_to_a_waiter() {
    let _deadline = Deadline::new(TEST_LIMIT, "a_panicking_leader_hands_over");
    let server = RedisServer::start();
    let client = builder(&server, "panic:").build().await.unwrap();
    let leader = tokio::spawn(panicky(client.clone(), 5));
    eventually("the leader runs", SOON, async || {
        PANIC_RUNS.load(Ordering::SeqCst) == 1
    })
    .await;
    let mut waiters = tokio::task::JoinSet::new();
    for _ in 0..10 {
        waiters.spawn(panicky(client.clone(), 5));
    }
    let outcome = leader.await;
    assert!(
        outcome.is_err_and(|error| error.is_panic()),
        "the leader panicked"
    );
    let values = tokio::time::timeout(Duration::from_secs(20), waiters.join_all())
        .await
        .expect("waiters were left waiting after their leader panicked");
    assert_eq!(
        values,
        vec![5001; 10],
        "every waiter got the second run's value"
    );
    assert_eq!(
        PANIC_RUNS.load(Ordering::SeqCst),
        2,
        "one new leader ran for all ten"
    );
    // Stored: the successful run's value (the panicking run stored nothing).
    assert_eq!(panicky(client.clone(), 5).await, 5001);
    assert_eq!(PANIC_RUNS.load(Ordering::SeqCst), 2);
    assert!(raw_exists(&server, "panic:cache:panicky-5"));
}

#[test]
fn a_panicking_sync_leader_hands_over_to_a_waiting_thread() {
    let _deadline = Deadline::new(TEST_LIMIT, "a_panicking_sync_leader_hands_over");
    let server = RedisServer::start();
    let client = builder(&server, "panic:").build_blocking().unwrap();
    std::thread::scope(|scope| {
        let leader = scope.spawn(|| panicky_sync(client.clone(), 6));
        eventually_blocking("the leader runs", SOON, || {
            PANIC_SYNC_RUNS.load(Ordering::SeqCst) == 1
        });
        let waiters: Vec<_> = (0..10)
            .map(|_| scope.spawn(|| panicky_sync(client.clone(), 6)))
            .collect();
        assert!(leader.join().is_err(), "the leader panicked");
        for waiter in waiters {
            assert_eq!(waiter.join().expect("a waiter panicked"), 6001);
        }
    });
    assert_eq!(
        PANIC_SYNC_RUNS.load(Ordering::SeqCst),
        2,
        "one new leader ran for all ten"
    );
    assert_eq!(panicky_sync(client.clone(), 6), 6001);
    assert_eq!(PANIC_SYNC_RUNS.load(Ordering::SeqCst), 2);
}

// ====================================================================== 8. cancellation

static CANCEL_RUNS: AtomicU32 = AtomicU32::new(0);

#[cached("cancel-{n}", client = &client)]
async fn cancellable(client: Cachify, n: u64, hold: Duration) -> u64 {
    CANCEL_RUNS.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(hold).await;
    n + 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_call_stores_nothing() {
    let server = RedisServer::start();
    let client = builder(&server, "cancel:").build().await.unwrap();
    let key = "cancel:cache:cancel-9";
    let cancelled = tokio::time::timeout(
        Duration::from_millis(200),
        cancellable(client.clone(), 9, Duration::from_secs(30)),
    )
    .await;
    assert!(cancelled.is_err(), "the call was cancelled mid-body");
    assert_eq!(
        CANCEL_RUNS.load(Ordering::SeqCst),
        1,
        "the body had started"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!raw_exists(&server, key), "a cancelled call left an entry");

    let value = tokio::time::timeout(SOON, cancellable(client.clone(), 9, Duration::ZERO))
        .await
        .expect("the next call waited for the cancelled one");
    assert_eq!(value, 10);
    assert_eq!(
        CANCEL_RUNS.load(Ordering::SeqCst),
        2,
        "the next call ran the function"
    );
    assert!(raw_exists(&server, key));
    assert_eq!(cancellable(client.clone(), 9, Duration::ZERO).await, 10);
    assert_eq!(
        CANCEL_RUNS.load(Ordering::SeqCst),
        2,
        "and its value was stored"
    );
}
