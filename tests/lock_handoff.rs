//! Lock waits without polling: a waiter is woken by the release, waiters
//! are served in arrival order (a holder that releases and takes the lock
//! again in a loop cannot starve one), and the safety nets hold (a waiter
//! that gave up, was cancelled or crashed does not block the others; a
//! lease that runs out wakes its waiters when it ends; a release nobody
//! announced is found by the re-check).
//!
//! Every scenario runs on memory (one client: memory locks are per
//! client), on a single Redis node and on the binary's shared Redis
//! Cluster (two clients each: the holder's and the waiter's, with their own
//! connections and subscriber). Times bound only "did not hang".

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cachify::{Cachify, CachifyBuilder, Error};
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
        self.clients(|builder| builder.lock_recheck(recheck)).await
    }

    /// The holder's client and the waiter's, each from `configure`d builders.
    async fn clients(
        &self,
        configure: impl Fn(CachifyBuilder) -> CachifyBuilder,
    ) -> (Cachify, Cachify) {
        let builder = || {
            let builder = match self {
                Backend::Memory => Cachify::builder().memory().prefix("hand:"),
                Backend::Redis(server) => Cachify::builder().redis(server.url()).prefix("hand:"),
                Backend::Cluster(scenario) => Cachify::builder()
                    .redis_cluster(support::cluster::shared_cluster().seeds())
                    .prefix(format!("hand:{scenario}:")),
            };
            configure(builder)
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

/// The key of the lock `NAME` and of its line's sorted sets, for `client`.
fn keys(client: &Cachify) -> (String, String, String) {
    let lock = format!("{}lock:{NAME}", client.prefix());
    let queue = format!("{}queue:{{{lock}}}", client.prefix());
    let beats = format!("{}beats:{{{lock}}}", client.prefix());
    (lock, queue, beats)
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

/// For what only Redis can plant: a place of a waiter that crashed, a lock
/// whose release nobody announces.
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
    a_release_wakes_a_waiter,
    a_release_wakes_a_blocking_waiter,
    a_holder_in_a_loop_does_not_starve_a_waiter,
    a_blocking_holder_in_a_loop_does_not_starve_a_blocking_waiter,
    a_waiter_that_gives_up_leaves_the_line,
    a_cancelled_waiter_leaves_the_line,
);

on_redis_backends!(
    a_crashed_waiter_lets_the_others_through,
    a_release_nobody_announced_is_found_by_the_recheck,
    a_lease_that_runs_out_wakes_its_waiter,
    a_lease_that_runs_out_wakes_its_blocking_waiter,
    a_fill_wakes_its_followers_on_other_clients,
    an_unstored_fill_lets_its_followers_run_at_once,
);

// ---------------------------------------------------------------- scenarios

async fn a_release_wakes_a_waiter(backend: &Backend<'_>) {
    let (holder, waiter) = backend.pair(HOUR).await;
    let held = holder.lock(NAME).acquire().await.unwrap();
    let first = held.fencing_token();
    let waiting = tokio::spawn(async move { waiter.lock(NAME).wait(HOUR).acquire().await });
    tokio::time::sleep(SETTLE).await;
    held.release().await.unwrap();
    let taken = tokio::time::timeout(SOON, waiting)
        .await
        .expect("the release did not wake the waiter (its re-check is an hour away)")
        .unwrap()
        .unwrap();
    assert!(taken.fencing_token() > first);
    taken.release().await.unwrap();
}

async fn a_release_wakes_a_blocking_waiter(backend: &Backend<'_>) {
    let (holder, waiter) = backend.pair(HOUR).await;
    let held = holder.lock(NAME).acquire().await.unwrap();
    let (done, outcome) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(waiter.lock(NAME).wait(HOUR).acquire_blocking());
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

/// How many times the holder takes the lock again.
const ROUNDS: usize = 40;
/// How long the holder keeps it each time.
const HOLD: Duration = Duration::from_millis(5);

async fn a_holder_in_a_loop_does_not_starve_a_waiter(backend: &Backend<'_>) {
    let (holder, waiter) = backend.pair(Duration::from_millis(500)).await;
    let rounds = Arc::new(AtomicUsize::new(0));
    let grants = Arc::new(Mutex::new(Vec::new()));
    let held = holder.lock(NAME).acquire().await.unwrap();
    grants.lock().unwrap().push(held.fencing_token());
    let waiting = tokio::spawn({
        let (rounds, grants) = (Arc::clone(&rounds), Arc::clone(&grants));
        async move {
            let taken = waiter.lock(NAME).wait(SOON).acquire().await.unwrap();
            let at = rounds.load(Ordering::SeqCst);
            grants.lock().unwrap().push(taken.fencing_token());
            taken.release().await.unwrap();
            at
        }
    });
    tokio::time::sleep(SETTLE).await;
    held.release().await.unwrap();
    for _ in 0..ROUNDS {
        let again = holder.lock(NAME).wait(SOON).acquire().await.unwrap();
        grants.lock().unwrap().push(again.fencing_token());
        rounds.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(HOLD).await;
        again.release().await.unwrap();
    }
    let at = tokio::time::timeout(SOON, waiting).await.unwrap().unwrap();
    assert_eq!(
        at, 0,
        "the waiter came first in line, yet the holder took the lock {at} times before it"
    );
    let grants = grants.lock().unwrap();
    assert!(
        grants.windows(2).all(|pair| pair[0] < pair[1]),
        "fencing tokens increase in grant order: {grants:?}"
    );
}

async fn a_blocking_holder_in_a_loop_does_not_starve_a_blocking_waiter(backend: &Backend<'_>) {
    let (holder, waiter) = backend.pair(Duration::from_millis(500)).await;
    let rounds = Arc::new(AtomicUsize::new(0));
    let at = tokio::task::spawn_blocking({
        let rounds = Arc::clone(&rounds);
        move || {
            let held = holder.lock(NAME).acquire_blocking().unwrap();
            let looping = std::thread::spawn({
                let rounds = Arc::clone(&rounds);
                move || {
                    std::thread::sleep(SETTLE);
                    held.release_blocking().unwrap();
                    for _ in 0..ROUNDS {
                        let again = holder.lock(NAME).wait(SOON).acquire_blocking().unwrap();
                        rounds.fetch_add(1, Ordering::SeqCst);
                        std::thread::sleep(HOLD);
                        again.release_blocking().unwrap();
                    }
                }
            });
            let taken = waiter.lock(NAME).wait(SOON).acquire_blocking().unwrap();
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
        "the waiter came first in line, yet the holder took the lock {at} times before it"
    );
}

async fn a_waiter_that_gives_up_leaves_the_line(backend: &Backend<'_>) {
    let (holder, waiter) = backend.pair(SLOW_RECHECK).await;
    let held = holder.lock(NAME).acquire().await.unwrap();
    let gave_up = waiter
        .lock(NAME)
        .wait(Duration::from_millis(200))
        .acquire()
        .await;
    assert!(matches!(gave_up, Err(Error::Locked { .. })), "{gave_up:?}");
    held.release().await.unwrap();
    // Had its place stayed (for 40 s), a caller that does not wait would
    // be refused the free lock.
    let next = holder.lock(NAME).acquire().await;
    assert!(next.is_ok(), "the line still held the quitter: {next:?}");
}

async fn a_cancelled_waiter_leaves_the_line(backend: &Backend<'_>) {
    let (holder, waiter) = backend.pair(SLOW_RECHECK).await;
    let held = holder.lock(NAME).acquire().await.unwrap();
    let cancelled = tokio::time::timeout(SETTLE, waiter.lock(NAME).wait(HOUR).acquire()).await;
    assert!(cancelled.is_err(), "the waiter was cancelled mid-wait");
    held.release().await.unwrap();
    // It leaves in the background; its place would last 40 s.
    let started = Instant::now();
    loop {
        match holder.lock(NAME).acquire().await {
            Ok(_) => break,
            Err(Error::Locked { .. }) if started.elapsed() < SOON => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => panic!("the cancelled waiter still holds its place: {other:?}"),
        }
    }
}

async fn a_crashed_waiter_lets_the_others_through(backend: &Backend<'_>) {
    let (holder, waiter) = backend.pair(Duration::from_millis(100)).await;
    let (_, queue, beats) = keys(&holder);
    // A waiter that joined the line, then crashed: its place lapses in 1 s.
    let (seconds, micros): (u64, u64) = backend.query(&redis::cmd("TIME"));
    let now_ms = seconds * 1000 + micros / 1000;
    backend.query::<()>(redis::cmd("ZADD").arg(&queue).arg(0).arg("ghost"));
    backend.query::<()>(
        redis::cmd("ZADD")
            .arg(&beats)
            .arg(now_ms + 1000)
            .arg("ghost"),
    );
    assert!(
        matches!(holder.lock(NAME).acquire().await, Err(Error::Locked { .. })),
        "a free lock waits for the head of its line"
    );
    let taken = tokio::time::timeout(SOON, waiter.lock(NAME).wait(SOON).acquire())
        .await
        .expect("the crashed waiter's place never lapsed");
    taken.unwrap().release().await.unwrap();
    let left: u64 = backend.query(redis::cmd("ZCARD").arg(&queue));
    assert_eq!(left, 0, "the lapsed place was purged");
}

/// The lock as a holder that crashed leaves it: its lease runs out in
/// `millis`, and nobody announces it.
fn plant_crashed_holder(backend: &Backend<'_>, lock: &str, millis: u64) {
    backend.query::<()>(
        redis::cmd("SET")
            .arg(lock)
            .arg("crashed")
            .arg("PX")
            .arg(millis),
    );
}

async fn a_release_nobody_announced_is_found_by_the_recheck(backend: &Backend<'_>) {
    let (holder, waiter) = backend.pair(Duration::from_millis(100)).await;
    let (lock, _, _) = keys(&holder);
    // A lease an hour long, as the waiter first sees it...
    plant_crashed_holder(backend, &lock, 3_600_000);
    let waiting = tokio::spawn(async move { waiter.lock(NAME).wait(SOON).acquire().await });
    tokio::time::sleep(SETTLE).await;
    // ...then cut short behind its back: nobody publishes, and the end the
    // waiter was told of is an hour away, so only the re-check finds it.
    backend.query::<()>(redis::cmd("PEXPIRE").arg(&lock).arg(300));
    let taken = tokio::time::timeout(SOON, waiting)
        .await
        .expect("the re-check never found the lapsed lease")
        .unwrap();
    taken.unwrap().release().await.unwrap();
}

async fn a_lease_that_runs_out_wakes_its_waiter(backend: &Backend<'_>) {
    let (holder, waiter) = backend.pair(HOUR).await;
    let (lock, _, _) = keys(&holder);
    plant_crashed_holder(backend, &lock, 500);
    let taken = tokio::time::timeout(SOON, waiter.lock(NAME).wait(HOUR).acquire())
        .await
        .expect("the end of the lease did not wake the waiter (its re-check is an hour away)");
    taken.unwrap().release().await.unwrap();
}

async fn a_lease_that_runs_out_wakes_its_blocking_waiter(backend: &Backend<'_>) {
    let (holder, waiter) = backend.pair(HOUR).await;
    let (lock, _, _) = keys(&holder);
    plant_crashed_holder(backend, &lock, 500);
    let (done, taken) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(waiter.lock(NAME).wait(HOUR).acquire_blocking());
    });
    let taken = tokio::task::spawn_blocking(move || taken.recv_timeout(SOON))
        .await
        .unwrap()
        .expect("the end of the lease did not wake the blocking waiter");
    taken.unwrap().release().await.unwrap();
}

#[cachify::cached("fill-{n}", ttl = 60, lock = true, client = client)]
async fn slow_fill(client: &Cachify, runs: &AtomicUsize, n: u64) -> u64 {
    let _ = client;
    runs.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(2 * SETTLE).await;
    n + 1
}

/// `#[cached(lock = true)]` on two clients (two processes, as far as
/// cachify can tell): the follower is woken by the filler's release, though
/// its re-check and its `fill_wait` are an hour away.
async fn a_fill_wakes_its_followers_on_other_clients(backend: &Backend<'_>) {
    let (filler, follower) = backend
        .clients(|builder| builder.lock_recheck(HOUR).fill_wait(HOUR))
        .await;
    let runs = AtomicUsize::new(0);
    let both = async {
        tokio::join!(slow_fill(&filler, &runs, 41), async {
            tokio::time::sleep(SETTLE).await;
            slow_fill(&follower, &runs, 41).await
        })
    };
    let (filled, followed) = tokio::time::timeout(SOON, both)
        .await
        .expect("the filler's release did not wake its follower");
    assert_eq!((filled, followed), (42, 42));
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "the follower waited for the fill"
    );
}

/// Runs of a function in flight, and the most at once.
#[derive(Default)]
struct Overlap {
    running: AtomicUsize,
    peak: AtomicUsize,
    runs: AtomicUsize,
}

#[cachify::cached("failing-{n}", ttl = 60, lock = true, client = client)]
async fn failing_fill(client: &Cachify, overlap: &Overlap, n: u64) -> Result<u64, String> {
    let _ = client;
    overlap.runs.fetch_add(1, Ordering::SeqCst);
    let now = overlap.running.fetch_add(1, Ordering::SeqCst) + 1;
    overlap.peak.fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep(2 * SETTLE).await;
    overlap.running.fetch_sub(1, Ordering::SeqCst);
    Err(format!("no value for {n}"))
}

/// A filler that stores nothing (an `Err`) leaves a note before its
/// release, so the callers that waited for it run at once, side by side,
/// rather than taking the fill lock one after another.
async fn an_unstored_fill_lets_its_followers_run_at_once(backend: &Backend<'_>) {
    let settings = |builder: CachifyBuilder| builder.lock_recheck(HOUR).fill_wait(HOUR);
    let (filler, first) = backend.clients(settings).await;
    let (_, second) = backend.clients(settings).await;
    let overlap = Overlap::default();
    let all = async {
        tokio::join!(
            failing_fill(&filler, &overlap, 7),
            async {
                tokio::time::sleep(SETTLE).await;
                failing_fill(&first, &overlap, 7).await
            },
            async {
                tokio::time::sleep(SETTLE).await;
                failing_fill(&second, &overlap, 7).await
            },
        )
    };
    let outputs = tokio::time::timeout(SOON, all)
        .await
        .expect("the followers never ran");
    assert!(outputs.0.is_err() && outputs.1.is_err() && outputs.2.is_err());
    assert_eq!(overlap.runs.load(Ordering::SeqCst), 3, "nothing was stored");
    assert_eq!(
        overlap.peak.load(Ordering::SeqCst),
        2,
        "the two followers ran side by side, not in turn"
    );
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

/// Waiting 2 s for a held lock costs a handful of script calls, where
/// polling with backoff up to 100 ms cost about 25.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_costs_a_handful_of_attempts_on_redis() {
    const HELD_FOR: Duration = Duration::from_secs(2);
    let server = RedisServer::start();
    let (holder, waiter) = Backend::Redis(&server)
        .pair(Duration::from_millis(500))
        .await;
    let held = holder.lock(NAME).acquire().await.unwrap();
    let before = script_calls(&server);
    let waiting = tokio::spawn(async move { waiter.lock(NAME).wait(SOON).acquire().await });
    tokio::time::sleep(HELD_FOR).await;
    held.release().await.unwrap();
    let taken = tokio::time::timeout(SOON, waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    taken.release().await.unwrap();
    // The waiter's attempts: its first, the one right after subscribing,
    // one per 500 ms re-check and the one that took the lock; then both
    // releases.
    let calls = script_calls(&server) - before;
    assert!(
        (5..=11).contains(&calls),
        "waiting {HELD_FOR:?} cost {calls} script calls"
    );
}

// ------------------------------------- release messages unavailable (Redis)

/// A waiter whose release messages cannot arrive still takes the lock once
/// it is free, at its re-check: `holder` holds it, `waiter` waits.
async fn taken_at_the_recheck(holder: &Cachify, waiter: &Cachify) {
    let held = holder.lock(NAME).acquire().await.unwrap();
    let waiting = tokio::spawn({
        let waiter = waiter.clone();
        async move { waiter.lock(NAME).wait(SOON).acquire().await }
    });
    tokio::time::sleep(SETTLE).await;
    held.release().await.unwrap();
    let taken = tokio::time::timeout(SOON, waiting)
        .await
        .expect("the re-check never took the free lock")
        .unwrap()
        .unwrap();
    taken.release().await.unwrap();
}

/// A server that cannot speak RESP3 (`HELLO` unavailable, as before Redis
/// 6): subscribing fails, quietly, and waits rely on the re-check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_resp3_waits_fall_back_to_the_recheck() {
    let server = RedisServer::start_with(&["--rename-command", "HELLO", "\"\""]);
    let (holder, waiter) = Backend::Redis(&server)
        .pair(Duration::from_millis(100))
        .await;
    taken_at_the_recheck(&holder, &waiter).await;
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut server.connection())
        .unwrap();
    assert!(
        !info.contains("cmdstat_subscribe:"),
        "the wait subscribed after all: {info}"
    );
}

/// The subscriber connection is cut while a waiter waits: the wait goes
/// on, and the lock is taken once free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_subscriber_connection_does_not_break_a_wait() {
    let server = RedisServer::start();
    let (holder, waiter) = Backend::Redis(&server)
        .pair(Duration::from_millis(100))
        .await;
    let held = holder.lock(NAME).acquire().await.unwrap();
    let waiting = tokio::spawn({
        let waiter = waiter.clone();
        async move { waiter.lock(NAME).wait(SOON).acquire().await }
    });
    tokio::time::sleep(SETTLE).await;
    let killed: u64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query(&mut server.connection())
        .unwrap();
    assert_eq!(
        killed, 1,
        "the waiter's client had one subscriber connection"
    );
    held.release().await.unwrap();
    let taken = tokio::time::timeout(SOON, waiting)
        .await
        .expect("the wait broke with its subscriber connection")
        .unwrap()
        .unwrap();
    taken.release().await.unwrap();
    // And the client subscribes again for its next wait.
    taken_at_the_recheck(&holder, &waiter).await;
}
