//! Pool waits without polling: a waiter is woken by a release, waiters are
//! served in arrival order (a holder that releases and takes a slot again
//! in a loop cannot starve one), and a waiter that gave up or was
//! cancelled does not block the others.
//!
//! Every scenario runs on memory (one client: memory pools are per
//! client), on a single Redis node and on the binary's shared Redis
//! Cluster (two clients each: the holder's and the waiter's, with their own
//! connections and subscriber). Times bound only "did not hang".

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cachify::{Cachify, Error};
use support::RedisServer;

const NAME: &str = "handoff";
/// Far beyond anything a working wake-up takes: only reached when broken.
const SOON: Duration = Duration::from_secs(20);
/// A re-check so far away that only a release can wake a waiter in time.
const HOUR: Duration = Duration::from_secs(3600);
/// A re-check whose lapse of a waiter's place (four re-checks) outlives
/// the scenario.
const SLOW_RECHECK: Duration = Duration::from_secs(10);
/// Time for a waiter just started to make its first attempt and wait.
const SETTLE: Duration = Duration::from_millis(300);

/// Where a scenario runs.
enum Backend<'a> {
    Memory,
    Redis(&'a RedisServer),
    Cluster(&'static str),
}

impl Backend<'_> {
    /// The holder's client and the waiter's, with `recheck`.
    async fn pair(&self, recheck: Duration) -> (Cachify, Cachify) {
        let builder = || {
            let builder = match self {
                Backend::Memory => Cachify::builder().memory().prefix("poolhand:"),
                Backend::Redis(server) => {
                    Cachify::builder().redis(server.url()).prefix("poolhand:")
                }
                Backend::Cluster(scenario) => Cachify::builder()
                    .redis_cluster(support::cluster::shared_cluster().seeds())
                    .prefix(format!("poolhand:{scenario}:")),
            };
            builder.lock_recheck(recheck)
        };
        let holder = builder().build().await.unwrap();
        let waiter = match self {
            Backend::Memory => holder.clone(),
            _ => builder().build().await.unwrap(),
        };
        (holder, waiter)
    }

    /// Runs `command` on Redis (in the slot of the keys it names).
    fn query<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> T {
        match self {
            Backend::Memory => unreachable!("memory has no Redis to plant things in"),
            Backend::Redis(server) => command.query(&mut server.connection()).unwrap(),
            Backend::Cluster(_) => command
                .query(&mut support::cluster::shared_cluster().connection())
                .unwrap(),
        }
    }
}

/// The key of the pool `NAME` and of its line's queue, for `client`.
fn keys(client: &Cachify) -> (String, String) {
    let pool = format!("{}pool:{NAME}", client.prefix());
    let queue = format!("{}queue:{{{pool}}}", client.prefix());
    (pool, queue)
}

macro_rules! on_every_backend {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            use super::*;

            // One thread: an in-process release and a new acquire never
            // yield in between, so without the line the holder would
            // always win.
            #[tokio::test]
            async fn on_memory() {
                super::$scenario(&Backend::Memory).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_redis() {
                let server = RedisServer::start();
                super::$scenario(&Backend::Redis(&server)).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_cluster() {
                super::$scenario(&Backend::Cluster(stringify!($scenario))).await;
            }
        }
    )*};
}

/// For what only Redis can plant: a slot whose lease runs out unannounced.
macro_rules! on_redis_backends {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_redis() {
                let server = RedisServer::start();
                super::$scenario(&Backend::Redis(&server)).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_cluster() {
                super::$scenario(&Backend::Cluster(stringify!($scenario))).await;
            }
        }
    )*};
}

on_every_backend!(
    a_release_wakes_a_pool_waiter,
    a_release_wakes_a_blocking_pool_waiter,
    a_holder_in_a_loop_does_not_starve_a_pool_waiter,
    a_blocking_holder_in_a_loop_does_not_starve_a_blocking_pool_waiter,
    a_pool_waiter_that_gives_up_leaves_the_line,
    a_cancelled_pool_waiter_leaves_the_line,
    a_caller_that_does_not_wait_does_not_jump_the_line,
    freed_slots_go_to_the_earliest_waiters,
);

on_redis_backends!(
    a_slot_lease_that_runs_out_wakes_a_waiter,
    a_waiter_leaving_wakes_the_next_one,
    a_second_waiter_takes_the_second_free_slot,
);

// ---------------------------------------------------------------- scenarios

async fn a_release_wakes_a_pool_waiter(backend: &Backend<'_>) {
    let (holder, waiter) = backend.pair(HOUR).await;
    let first = holder.pool(NAME, 2).acquire().await.unwrap();
    let second = holder.pool(NAME, 2).acquire().await.unwrap();
    let waiting = tokio::spawn(async move { waiter.pool(NAME, 2).wait(HOUR).acquire().await });
    tokio::time::sleep(SETTLE).await;
    assert!(!waiting.is_finished(), "the pool is full: the waiter waits");
    first.release().await.unwrap();
    let taken = tokio::time::timeout(SOON, waiting)
        .await
        .expect("the release did not wake the waiter (its re-check is an hour away)")
        .unwrap()
        .unwrap();
    taken.release().await.unwrap();
    second.release().await.unwrap();
}

async fn a_release_wakes_a_blocking_pool_waiter(backend: &Backend<'_>) {
    let (holder, waiter) = backend.pair(HOUR).await;
    let held = holder.pool(NAME, 1).acquire().await.unwrap();
    let (done, outcome) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(waiter.pool(NAME, 1).wait(HOUR).acquire_blocking());
    });
    tokio::time::sleep(SETTLE).await;
    held.release().await.unwrap();
    let taken = tokio::task::spawn_blocking(move || outcome.recv_timeout(SOON))
        .await
        .unwrap()
        .expect("the release did not wake the blocking waiter (its re-check is an hour away)")
        .unwrap();
    taken.release().await.unwrap();
}

/// How many times the holder takes the slot again.
const ROUNDS: usize = 40;
/// How long the holder keeps it each time.
const HOLD: Duration = Duration::from_millis(5);

async fn a_holder_in_a_loop_does_not_starve_a_pool_waiter(backend: &Backend<'_>) {
    let (holder, waiter) = backend.pair(Duration::from_millis(500)).await;
    let rounds = Arc::new(AtomicUsize::new(0));
    let held = holder.pool(NAME, 1).acquire().await.unwrap();
    let waiting = tokio::spawn({
        let rounds = Arc::clone(&rounds);
        async move {
            let taken = waiter.pool(NAME, 1).wait(SOON).acquire().await.unwrap();
            let at = rounds.load(Ordering::SeqCst);
            taken.release().await.unwrap();
            at
        }
    });
    tokio::time::sleep(SETTLE).await;
    held.release().await.unwrap();
    for _ in 0..ROUNDS {
        let again = holder.pool(NAME, 1).wait(SOON).acquire().await.unwrap();
        rounds.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(HOLD).await;
        again.release().await.unwrap();
    }
    let at = tokio::time::timeout(SOON, waiting).await.unwrap().unwrap();
    assert_eq!(
        at, 0,
        "the waiter came first in line, yet the holder took the slot {at} times before it"
    );
}

async fn a_blocking_holder_in_a_loop_does_not_starve_a_blocking_pool_waiter(backend: &Backend<'_>) {
    let (holder, waiter) = backend.pair(Duration::from_millis(500)).await;
    let rounds = Arc::new(AtomicUsize::new(0));
    let at = tokio::task::spawn_blocking({
        let rounds = Arc::clone(&rounds);
        move || {
            let held = holder.pool(NAME, 1).acquire_blocking().unwrap();
            let looping = std::thread::spawn({
                let rounds = Arc::clone(&rounds);
                move || {
                    std::thread::sleep(SETTLE);
                    held.release_blocking().unwrap();
                    for _ in 0..ROUNDS {
                        let again = holder.pool(NAME, 1).wait(SOON).acquire_blocking().unwrap();
                        rounds.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(HOLD);
                        again.release_blocking().unwrap();
                    }
                }
            });
            let taken = waiter.pool(NAME, 1).wait(SOON).acquire_blocking().unwrap();
            let at = rounds.load(Ordering::SeqCst);
            taken.release_blocking().unwrap();
            looping.join().unwrap();
            at
        }
    })
    .await
    .unwrap();
    assert_eq!(
        at, 0,
        "the waiter came first in line, yet the holder took the slot {at} times before it"
    );
}

async fn a_pool_waiter_that_gives_up_leaves_the_line(backend: &Backend<'_>) {
    let (holder, waiter) = backend.pair(SLOW_RECHECK).await;
    let held = holder.pool(NAME, 1).acquire().await.unwrap();
    let gave_up = waiter
        .pool(NAME, 1)
        .wait(Duration::from_millis(200))
        .acquire()
        .await;
    assert!(
        matches!(gave_up, Err(Error::PoolFull { .. })),
        "{gave_up:?}"
    );
    held.release().await.unwrap();
    // Had its place stayed (for 40 s), a caller that does not wait would
    // be refused the free slot.
    let next = holder.pool(NAME, 1).acquire().await;
    assert!(next.is_ok(), "the line still held the quitter: {next:?}");
}

async fn a_cancelled_pool_waiter_leaves_the_line(backend: &Backend<'_>) {
    let (holder, waiter) = backend.pair(SLOW_RECHECK).await;
    let held = holder.pool(NAME, 1).acquire().await.unwrap();
    let cancelled = tokio::time::timeout(SETTLE, waiter.pool(NAME, 1).wait(HOUR).acquire()).await;
    assert!(cancelled.is_err(), "the waiter was cancelled mid-wait");
    held.release().await.unwrap();
    // It leaves in the background; its place would last 40 s.
    let started = Instant::now();
    loop {
        match holder.pool(NAME, 1).acquire().await {
            Ok(_) => break,
            Err(Error::PoolFull { .. }) if started.elapsed() < SOON => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => panic!("the cancelled waiter still holds its place: {other:?}"),
        }
    }
}

async fn a_caller_that_does_not_wait_does_not_jump_the_line(backend: &Backend<'_>) {
    let (holder, waiter) = backend.pair(HOUR).await;
    let held = holder.pool(NAME, 1).acquire().await.unwrap();
    let waiting = tokio::spawn(async move { waiter.pool(NAME, 1).wait(HOUR).acquire().await });
    tokio::time::sleep(SETTLE).await;
    held.release().await.unwrap();
    // The freed slot is the waiter's, whether it has taken it yet or not.
    let jumped = holder.pool(NAME, 1).acquire().await;
    assert!(
        matches!(jumped, Err(Error::PoolFull { .. })),
        "a caller that does not wait took the slot from the waiter: {jumped:?}"
    );
    let taken = tokio::time::timeout(SOON, waiting)
        .await
        .expect("the release did not wake the waiter")
        .unwrap()
        .unwrap();
    taken.release().await.unwrap();
}

/// Two slots freed at once go to the first two waiters, each woken by a
/// release, and a caller that does not wait is refused while they wait.
async fn freed_slots_go_to_the_earliest_waiters(backend: &Backend<'_>) {
    let (holder, waiter) = backend.pair(HOUR).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(holder.pool(NAME, 3).acquire().await.unwrap());
    }
    let mut waiting = Vec::new();
    for _ in 0..2 {
        let waiter = waiter.clone();
        waiting.push(tokio::spawn(async move {
            waiter.pool(NAME, 3).wait(HOUR).acquire().await
        }));
        tokio::time::sleep(SETTLE).await;
    }
    let last = held.pop().unwrap();
    // A free slot, but two waiters ahead of a caller that does not wait.
    last.release().await.unwrap();
    let jumped = holder.pool(NAME, 3).acquire().await;
    assert!(
        matches!(jumped, Err(Error::PoolFull { .. })),
        "a caller that does not wait took a slot from the waiters: {jumped:?}"
    );
    held.pop().unwrap().release().await.unwrap();
    for waiter in waiting {
        let taken = tokio::time::timeout(SOON, waiter)
            .await
            .expect("a freed slot did not reach a waiter (its re-check is an hour away)")
            .unwrap()
            .unwrap();
        taken.release().await.unwrap();
    }
    held.pop().unwrap().release().await.unwrap();
}

/// A waiter second in line (behind a waiter that crashed and keeps its
/// place) gets nothing from one free slot, which is the head's, and takes
/// the second one: a free slot goes to any waiter with fewer waiters ahead
/// of it than there are free slots, not only to the head of the line.
async fn a_second_waiter_takes_the_second_free_slot(backend: &Backend<'_>) {
    let (holder, waiter) = backend.pair(HOUR).await;
    let (_, queue) = keys(&holder);
    let beats = queue.replacen("queue:", "beats:", 1);
    let mut held = vec![
        holder.pool(NAME, 2).acquire().await.unwrap(),
        holder.pool(NAME, 2).acquire().await.unwrap(),
    ];
    let (seconds, micros): (u64, u64) = backend.query(&redis::cmd("TIME"));
    let now_ms = seconds * 1000 + micros / 1000;
    backend.query::<()>(redis::cmd("ZADD").arg(&queue).arg(0).arg("ghost"));
    backend.query::<()>(
        redis::cmd("ZADD")
            .arg(&beats)
            .arg(now_ms + 3_600_000)
            .arg("ghost"),
    );
    let waiting = tokio::spawn(async move { waiter.pool(NAME, 2).wait(HOUR).acquire().await });
    tokio::time::sleep(SETTLE).await;
    held.pop().unwrap().release().await.unwrap();
    tokio::time::sleep(SETTLE).await;
    assert!(
        !waiting.is_finished(),
        "the one free slot is kept for the head of the line"
    );
    held.pop().unwrap().release().await.unwrap();
    let taken = tokio::time::timeout(SOON, waiting)
        .await
        .expect("the second free slot did not go to the second waiter")
        .unwrap()
        .unwrap();
    taken.release().await.unwrap();
}

/// A full pool whose one slot belongs to a holder that crashed: the end
/// of its lease wakes the waiter, though nobody announces it and the
/// re-check is an hour away.
async fn a_slot_lease_that_runs_out_wakes_a_waiter(backend: &Backend<'_>) {
    let (holder, waiter) = backend.pair(HOUR).await;
    let (pool, _) = keys(&holder);
    let (seconds, micros): (u64, u64) = backend.query(&redis::cmd("TIME"));
    let now_ms = seconds * 1000 + micros / 1000;
    backend.query::<()>(
        redis::cmd("ZADD")
            .arg(&pool)
            .arg(now_ms + 500)
            .arg("crashed"),
    );
    let taken = tokio::time::timeout(SOON, waiter.pool(NAME, 1).wait(HOUR).acquire())
        .await
        .expect("the end of the slot's lease did not wake the waiter");
    taken.unwrap().release().await.unwrap();
}

/// A slot kept for the head of the line, whose wait is then cancelled:
/// its leaving wakes the next waiter at once, though slots are still held
/// (the pool key exists) and the next re-check is an hour away.
async fn a_waiter_leaving_wakes_the_next_one(backend: &Backend<'_>) {
    let (holder, waiter) = backend.pair(HOUR).await;
    let (pool, queue) = keys(&holder);
    // Two slots: one held by a live holder, one by a holder that crashed,
    // whose lease the waiters are told ends in an hour.
    let kept = holder.pool(NAME, 2).acquire().await.unwrap();
    let server_ms = || {
        let (seconds, micros): (u64, u64) = backend.query(&redis::cmd("TIME"));
        seconds * 1000 + micros / 1000
    };
    backend.query::<()>(
        redis::cmd("ZADD")
            .arg(&pool)
            .arg(server_ms() + 3_600_000)
            .arg("crashed"),
    );
    let first = tokio::spawn({
        let holder = holder.clone();
        async move { holder.pool(NAME, 2).wait(HOUR).acquire().await }
    });
    tokio::time::sleep(SETTLE).await;
    let second = tokio::spawn(async move { waiter.pool(NAME, 2).wait(HOUR).acquire().await });
    tokio::time::sleep(SETTLE).await;
    let waiting: u64 = backend.query(redis::cmd("ZCARD").arg(&queue));
    assert_eq!(waiting, 2, "both waiters are in line");
    // The crashed slot's lease is cut short behind the waiters' backs and
    // frees unannounced: it is kept for the head, whose wait is now
    // cancelled. Only its leaving can wake the second.
    backend.query::<()>(
        redis::cmd("ZADD")
            .arg(&pool)
            .arg("XX")
            .arg(server_ms() + 100)
            .arg("crashed"),
    );
    tokio::time::sleep(SETTLE).await;
    assert!(!first.is_finished() && !second.is_finished());
    first.abort();
    let taken = tokio::time::timeout(SOON, second)
        .await
        .expect("the head's leaving did not wake the next waiter")
        .unwrap()
        .unwrap();
    taken.release().await.unwrap();
    kept.release().await.unwrap();
}

// ------------------------------------------------ cost of a wait (Redis)

/// Script calls the server has run (`EVALSHA`, and `EVAL` should a script
/// have to be sent whole).
fn script_calls(server: &RedisServer) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut server.connection())
        .unwrap();
    info.lines()
        .filter(|line| line.starts_with("cmdstat_evalsha:") || line.starts_with("cmdstat_eval:"))
        .filter_map(|line| {
            let calls = line.split("calls=").nth(1)?;
            calls.split(',').next()?.parse::<u64>().ok()
        })
        .sum()
}

/// Waiting 2 s for a full pool costs a handful of script calls, where
/// polling with backoff up to 100 ms cost about 25.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_costs_a_handful_of_attempts_on_redis() {
    const HELD_FOR: Duration = Duration::from_secs(2);
    let server = RedisServer::start();
    let (holder, waiter) = Backend::Redis(&server)
        .pair(Duration::from_millis(500))
        .await;
    // A long lease: no renewal runs a script during the wait.
    let held = holder
        .pool(NAME, 1)
        .ttl(Duration::from_secs(60))
        .acquire()
        .await
        .unwrap();
    let before = script_calls(&server);
    let waiting = tokio::spawn(async move { waiter.pool(NAME, 1).wait(SOON).acquire().await });
    tokio::time::sleep(HELD_FOR).await;
    held.release().await.unwrap();
    let taken = tokio::time::timeout(SOON, waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    taken.release().await.unwrap();
    // The waiter's attempts: its first, the one right after subscribing,
    // one per 500 ms re-check and the one that took the slot; then both
    // releases.
    let calls = script_calls(&server) - before;
    assert!(
        (5..=11).contains(&calls),
        "waiting {HELD_FOR:?} cost {calls} script calls"
    );
}
