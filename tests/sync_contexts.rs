//! Sync functions work with no runtime, inside a multi-thread runtime and
//! inside a current-thread runtime (what `#[tokio::test]` gives): no
//! "cannot start a runtime from within a runtime" panic, no deadlock. And
//! a sync call that waits on a multi-thread runtime's worker does not stall
//! the runtime's other tasks.

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use cachify::{Cachify, cached, lock, once};

fn client() -> &'static Cachify {
    static CLIENT: OnceLock<Cachify> = OnceLock::new();
    CLIENT.get_or_init(|| {
        Cachify::builder()
            .redis(support::shared_server().url())
            .build_blocking()
            .unwrap()
    })
}

/// Runs per context: the tests run in parallel, each with its own context.
static RUNS: Mutex<BTreeMap<String, u32>> = Mutex::new(BTreeMap::new());

fn runs(context: &str) -> u32 {
    RUNS.lock().unwrap().get(context).copied().unwrap_or(0)
}

#[cached("ctx-cached-{context}-{n}", client = client())]
fn cached_sync(context: &str, n: u32) -> u32 {
    *RUNS.lock().unwrap().entry(context.to_owned()).or_default() += 1;
    n + 1
}

#[once("ctx-once-{context}", client = client())]
fn once_sync(context: &str) -> Result<bool, cachify::Error> {
    once_sync_is_locked(context)
}

#[lock("ctx-lock-{context}", wait = 1, client = client())]
fn lock_sync(context: &str) -> Result<bool, cachify::Error> {
    lock_sync_is_locked(context)
}

/// A lock that another holder keeps while the test calls this: it waits
/// out its `wait` (the backoff's sleeps and, on Redis, its retries) and
/// gives up.
#[lock("ctx-held-{context}", wait = Duration::from_millis(150), client = client())]
fn held_elsewhere(context: &str) -> Result<(), cachify::Error> {
    Ok(())
}

/// Every sync entry point, from whatever context calls it.
fn exercise(context: &str) {
    assert_eq!(cached_sync(context, 1), 2);
    assert_eq!(cached_sync(context, 1), 2);
    assert_eq!(runs(context), 1, "second call was a Redis hit");
    cached_sync_reset(context, 1).unwrap();
    assert_eq!(cached_sync(context, 1), 2);
    assert_eq!(runs(context), 2);

    assert!(once_sync(context).unwrap(), "held while running");
    assert!(!once_sync_is_locked(context).unwrap(), "released after");
    assert!(lock_sync(context).unwrap());
    lock_sync_release(context).unwrap();

    let guard = client()
        .lock(format!("ctx-value-{context}"))
        .acquire_blocking()
        .unwrap();
    guard.release_blocking().unwrap();

    let holder = client()
        .lock(format!("ctx-held-{context}"))
        .acquire_blocking()
        .unwrap();
    let started = Instant::now();
    assert!(matches!(
        held_elsewhere(context),
        Err(cachify::Error::Locked { .. })
    ));
    assert!(started.elapsed() >= Duration::from_millis(140), "it waited");
    holder.release_blocking().unwrap();
}

#[test]
fn without_a_runtime() {
    exercise("none");
}

#[tokio::test(flavor = "current_thread")]
async fn inside_a_current_thread_runtime() {
    exercise("current");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inside_a_multi_thread_runtime() {
    exercise("multi");
}

#[test]
fn inside_tasks_of_each_runtime_flavour() {
    let multi = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    multi.block_on(async {
        // A worker, and a blocking-pool thread of a multi-thread runtime.
        tokio::spawn(async { exercise("multi-task") })
            .await
            .unwrap();
        tokio::task::spawn_blocking(|| exercise("multi-blocking"))
            .await
            .unwrap();
    });
    let current = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    current.block_on(async {
        tokio::spawn(async { exercise("current-task") })
            .await
            .unwrap();
    });
}

#[test]
fn inside_a_blocking_task_and_nested_runtimes() {
    let outer = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    outer.block_on(async {
        tokio::task::spawn_blocking(|| exercise("blocking"))
            .await
            .unwrap();
        // A sync call from async code while the runtime also has async work pending.
        let ticker = tokio::spawn(async { tokio::task::yield_now().await });
        exercise("mixed");
        ticker.await.unwrap();
    });
}

#[test]
fn memory_client_without_a_runtime() {
    let memory = Cachify::builder().memory().build_blocking().unwrap();
    let guard = memory.lock("m").acquire_blocking().unwrap();
    assert!(matches!(
        memory.lock("m").acquire_blocking(),
        Err(cachify::Error::Locked { .. })
    ));
    guard.release_blocking().unwrap();
}

/// The client of the stall tests: the shared Redis one, or a memory one.
fn stall_client(backend: &str) -> &'static Cachify {
    static MEMORY: OnceLock<Cachify> = OnceLock::new();
    match backend {
        "redis" => client(),
        _ => MEMORY.get_or_init(|| Cachify::builder().memory().build_blocking().unwrap()),
    }
}

#[lock("stall-{backend}", wait = 1, client = stall_client(backend))]
fn wait_for_stall_lock(backend: &str) -> Result<(), cachify::Error> {
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_lock_wait_on_a_worker_does_not_stall_the_runtime_redis() {
    ticker_keeps_ticking_while_workers_wait("redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_lock_wait_on_a_worker_does_not_stall_the_runtime_memory() {
    ticker_keeps_ticking_while_workers_wait("memory").await;
}

/// While sync calls wait about 1 s for a lock on every worker of a
/// multi-thread runtime (called straight from async tasks, as a handler
/// would), a task of that runtime that ticks every 10 ms keeps ticking.
async fn ticker_keeps_ticking_while_workers_wait(backend: &'static str) {
    let holder = stall_client(backend)
        .lock(format!("stall-{backend}"))
        .acquire()
        .await
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let ticker = tokio::spawn({
        let stop = Arc::clone(&stop);
        async move {
            let mut ticks = Vec::new();
            // Bounded: about 5 s of ticks at most.
            for _ in 0..500 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                ticks.push(Instant::now());
            }
            ticks
        }
    });
    // Let the ticker start before the workers are taken.
    tokio::time::sleep(Duration::from_millis(50)).await;

    // One waiter per worker: without a hand-off, no worker is left to
    // run the ticker.
    let started = Instant::now();
    let waiters: Vec<_> = (0..2)
        .map(|_| tokio::spawn(async move { wait_for_stall_lock(backend) }))
        .collect();
    for waiter in waiters {
        let outcome = waiter.await.unwrap();
        assert!(
            matches!(outcome, Err(cachify::Error::Locked { .. })),
            "{backend}: {outcome:?}"
        );
    }
    let waited = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let ticks = ticker.await.unwrap();
    holder.release().await.unwrap();

    assert!(
        waited >= Duration::from_millis(900),
        "{backend}: waited {waited:?}"
    );
    let ended = started + waited;
    let during: Vec<Instant> = ticks
        .into_iter()
        .filter(|tick| (started..=ended).contains(tick))
        .collect();
    assert!(
        during.len() >= 30,
        "{backend}: {} ticks in {waited:?}",
        during.len()
    );
    // The wait's start and end count as ticks, so a stall at either
    // edge shows as a gap too.
    let edges: Vec<Instant> = [started].into_iter().chain(during).chain([ended]).collect();
    let largest_gap = edges
        .windows(2)
        .map(|pair| pair[1].duration_since(pair[0]))
        .max()
        .unwrap_or(waited);
    assert!(
        largest_gap < Duration::from_millis(200),
        "{backend}: the ticker stalled for {largest_gap:?}"
    );
}

static SLOW_FILL_STARTED: AtomicBool = AtomicBool::new(false);

/// On memory, so that no store I/O hands the worker off first.
#[cached("slow-fill", client = stall_client("memory"))]
fn slow_fill() -> u32 {
    SLOW_FILL_STARTED.store(true, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(1000));
    7
}

/// Sync callers waiting on another caller's fill of the same key (single
/// flight) on every worker: the runtime's other tasks keep running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_followers_of_a_fill_do_not_stall_the_runtime() {
    // The leader runs off the workers, so only the followers are on them.
    let leader = tokio::task::spawn_blocking(slow_fill);
    // Bounded: the leader must be running before the followers join it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !SLOW_FILL_STARTED.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "the leader never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ticker = tokio::spawn(async {
        let started = Instant::now();
        let mut largest_gap = Duration::ZERO;
        let mut last = started;
        // Bounded: about 1.5 s of ticks at most.
        while started.elapsed() < Duration::from_millis(700) {
            tokio::time::sleep(Duration::from_millis(10)).await;
            largest_gap = largest_gap.max(last.elapsed());
            last = Instant::now();
        }
        largest_gap
    });
    let followers: Vec<_> = (0..2)
        .map(|_| tokio::spawn(async { slow_fill() }))
        .collect();
    for follower in followers {
        assert_eq!(follower.await.unwrap(), 7);
    }
    assert_eq!(leader.await.unwrap(), 7);
    let largest_gap = ticker.await.unwrap();
    assert!(
        largest_gap < Duration::from_millis(200),
        "the ticker stalled for {largest_gap:?}"
    );
}
