//! cachify against the peers, side by side in one process and one run,
//! against a `redis-server` this bench starts on a free loopback port.
//!
//! ```text
//! cargo bench --bench peers              # full run, prints a ratio table
//! cargo bench --bench peers -- --test    # quick mode: each bench once (CI)
//! ```
//!
//! Workloads (see BENCHMARKS.md):
//! - `redis_hit/<size>/<who>`: one task, one cached read in a loop.
//! - `redis_hit_64_tasks/<size>/<who>`: 64 tasks reading concurrently.
//! - `memory_hit/<who>`: one thread, an in-process hit, against the
//!   `cached` crate and a bare `get` (with the clone) of moka and quick_cache.
//! - `lock/<who>`: acquire + release round trip.
//! - `cluster_hit/<who>` and `cluster_hit_64_tasks/<who>`: the same user
//!   read on a Redis Cluster of three primaries and three replicas, which
//!   this bench also starts, against redis-rs's cluster client doing GET
//!   plus decode.
//! - `near_hit/<who>`: a near-cache hit (`.near_cache(..)` in front of
//!   Redis) against a memory hit, one thread; and, async in one task,
//!   against redis-rs's own client-side cache (`cache-aio`) hit plus decode.
//! - stampede: 1,000 callers on one cold key whose function takes 50 ms
//!   (executions and time to the last answer, printed).
//! - invalidation: how long after a write by another connection a
//!   near-cache read returns the new value (median and 99th percentile,
//!   printed).
//! - lock handoff: how long after a holder starts releasing a lock a
//!   waiter on another client (its own connections and pub/sub) holds it,
//!   on memory, a single node and the cluster; and the same with the old
//!   wait, polling with backoff from 5 ms to 100 ms (median and 90th
//!   percentile, printed); and to a waiter in another process (a child of
//!   this bench), on a single node and the cluster. The same for the slot of
//!   a pool of one, to a waiter on another client.
//! - users app: `GET /users/{id}` of the example app, served by a child
//!   process of this bench, with and without the near cache (requests per
//!   second, printed).

use std::hint::black_box;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use cachify::{Cachify, cached};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use support::cluster::RedisCluster;

/// The integration tests' server support, for its Redis Cluster.
#[path = "../tests/support/mod.rs"]
mod support;

/// The users example app, served by a child process of this bench.
#[allow(dead_code)]
#[path = "../examples/users/app.rs"]
mod app;

/// A small, realistic value: a user record of three fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    id: u64,
    name: String,
    email: String,
}

/// A larger value, about 10 KiB encoded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page {
    id: u64,
    users: Vec<User>,
}

fn user(id: u64) -> User {
    User {
        id,
        name: format!("user number {id}"),
        email: format!("user{id}@example.com"),
    }
}

fn page(id: u64) -> Page {
    Page {
        id,
        users: (0..200).map(user).collect(),
    }
}

/// The bench's own redis-server, killed when the bench ends.
struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_redis() -> Server {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server on PATH (apt-get install redis-server)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Server { child, port }
}

static URL: OnceLock<String> = OnceLock::new();

fn url() -> &'static str {
    URL.get().expect("set in main")
}

fn redis_client() -> &'static Cachify {
    static CLIENT: OnceLock<Cachify> = OnceLock::new();
    CLIENT.get_or_init(|| {
        Cachify::builder()
            .redis(url())
            .prefix("bench:")
            .build_blocking()
            .unwrap()
    })
}

static CLUSTER_SEEDS: OnceLock<Vec<String>> = OnceLock::new();

fn cluster_seeds() -> Vec<String> {
    CLUSTER_SEEDS.get().expect("set in main").clone()
}

fn cluster_client() -> &'static Cachify {
    static CLIENT: OnceLock<Cachify> = OnceLock::new();
    CLIENT.get_or_init(|| {
        Cachify::builder()
            .redis_cluster(cluster_seeds())
            .prefix("bench:")
            .build_blocking()
            .unwrap()
    })
}

fn near_client() -> &'static Cachify {
    static CLIENT: OnceLock<Cachify> = OnceLock::new();
    CLIENT.get_or_init(|| {
        Cachify::builder()
            .redis(url())
            .prefix("bench-near:")
            .near_cache(10_000)
            .build_blocking()
            .unwrap()
    })
}

fn memory_client() -> &'static Cachify {
    static CLIENT: OnceLock<Cachify> = OnceLock::new();
    CLIENT.get_or_init(|| Cachify::builder().memory().build_blocking().unwrap())
}

// --- the cached functions under test -------------------------------------

#[cached("user-{id}", ttl = 3600, client = redis_client())]
async fn cachify_user(id: u64) -> User {
    user(id)
}

#[cached("page-{id}", ttl = 3600, client = redis_client())]
async fn cachify_page(id: u64) -> Page {
    page(id)
}

#[cached::macros::concurrent_cached(
    redis = true,
    ttl_secs = 3600,
    cache_prefix_block = r##"{ "bench-cached-user" }"##,
    map_error = r##"|e| format!("{e:?}")"##
)]
async fn cached_crate_user(id: u64) -> Result<User, String> {
    Ok(user(id))
}

#[cached::macros::concurrent_cached(
    redis = true,
    ttl_secs = 3600,
    cache_prefix_block = r##"{ "bench-cached-page" }"##,
    map_error = r##"|e| format!("{e:?}")"##
)]
async fn cached_crate_page(id: u64) -> Result<Page, String> {
    Ok(page(id))
}

#[cached("mem-user-{id}", ttl = 3600, client = memory_client())]
fn cachify_memory_user(id: u64) -> User {
    user(id)
}

#[cached("near-user-{id}", ttl = 3600, client = near_client())]
fn cachify_near_user(id: u64) -> User {
    user(id)
}

#[cached("near-user-{id}", ttl = 3600, client = near_client())]
async fn cachify_near_user_async(id: u64) -> User {
    user(id)
}

/// For the invalidation delay: what a read through the near cache sees now.
#[cached("near-version-{id}", ttl = 3600, client = near_client(), unless = |_: &u64| true)]
async fn near_version(id: u64) -> u64 {
    let _ = id;
    0
}

#[cached::macros::cached(ttl_secs = 3600)]
fn cached_crate_memory_user(id: u64) -> User {
    user(id)
}

#[cached("user-{id}", ttl = 3600, client = cluster_client())]
async fn cachify_cluster_user(id: u64) -> User {
    user(id)
}

// --- raw redis-rs, as a user would write it by hand ----------------------

async fn raw_cluster_connection() -> redis::cluster_async::ClusterConnection {
    redis::cluster::ClusterClient::new(cluster_seeds())
        .unwrap()
        .get_async_connection()
        .await
        .unwrap()
}

async fn raw_cluster_get(
    connection: &mut redis::cluster_async::ClusterConnection,
    key: &str,
) -> User {
    let bytes: Vec<u8> = connection.get(key).await.unwrap();
    rmp_serde::from_slice(&bytes).unwrap()
}

async fn raw_connection() -> redis::aio::MultiplexedConnection {
    redis::Client::open(url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn raw_get<T: serde::de::DeserializeOwned>(
    connection: &mut redis::aio::MultiplexedConnection,
    key: &str,
) -> T {
    let bytes: Vec<u8> = connection.get(key).await.unwrap();
    rmp_serde::from_slice(&bytes).unwrap()
}

/// One runtime for the whole bench: the `cached` crate's connection lives
/// on the runtime that first used it, and dies with it.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

// --- workloads ------------------------------------------------------------

fn redis_hit(c: &mut Criterion) {
    let rt = runtime();
    let mut raw = rt.block_on(async {
        let mut raw = raw_connection().await;
        let _: () = raw
            .set("raw-user", rmp_serde::to_vec_named(&user(1)).unwrap())
            .await
            .unwrap();
        let _: () = raw
            .set("raw-page", rmp_serde::to_vec_named(&page(1)).unwrap())
            .await
            .unwrap();
        // Warm every cache so each measured call is a hit.
        cachify_user(1).await;
        cachify_page(1).await;
        cached_crate_user(1).await.unwrap();
        cached_crate_page(1).await.unwrap();
        raw
    });
    let mut group = c.benchmark_group("redis_hit");
    group.bench_function(BenchmarkId::new("user", "raw_redis_rs"), |b| {
        b.to_async(rt).iter(|| {
            let mut connection = raw.clone();
            async move { black_box(raw_get::<User>(&mut connection, "raw-user").await) }
        })
    });
    group.bench_function(BenchmarkId::new("user", "cachify"), |b| {
        b.to_async(rt)
            .iter(|| async { black_box(cachify_user(1).await) })
    });
    group.bench_function(BenchmarkId::new("user", "cached_crate"), |b| {
        b.to_async(rt)
            .iter(|| async { black_box(cached_crate_user(1).await.unwrap()) })
    });
    group.bench_function(BenchmarkId::new("page_10k", "raw_redis_rs"), |b| {
        b.to_async(rt).iter(|| {
            let mut connection = raw.clone();
            async move { black_box(raw_get::<Page>(&mut connection, "raw-page").await) }
        })
    });
    group.bench_function(BenchmarkId::new("page_10k", "cachify"), |b| {
        b.to_async(rt)
            .iter(|| async { black_box(cachify_page(1).await) })
    });
    group.bench_function(BenchmarkId::new("page_10k", "cached_crate"), |b| {
        b.to_async(rt)
            .iter(|| async { black_box(cached_crate_page(1).await.unwrap()) })
    });
    group.finish();
    rt.block_on(async { black_box(&mut raw) });
}

const TASKS: u64 = 64;
const READS_PER_TASK: u64 = 50;

/// Runs `TASKS` tasks of `READS_PER_TASK` reads each, `iters` times.
fn concurrent<F, Fut>(rt: &tokio::runtime::Runtime, iters: u64, read: F) -> Duration
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    rt.block_on(async move {
        let started = Instant::now();
        for _ in 0..iters {
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..TASKS {
                let read = read.clone();
                tasks.spawn(async move {
                    for _ in 0..READS_PER_TASK {
                        read().await;
                    }
                });
            }
            tasks.join_all().await;
        }
        started.elapsed()
    })
}

fn redis_hit_64_tasks(c: &mut Criterion) {
    let rt = runtime();
    let raw = rt.block_on(async {
        let mut raw = raw_connection().await;
        let _: () = raw
            .set("raw-user", rmp_serde::to_vec_named(&user(1)).unwrap())
            .await
            .unwrap();
        cachify_user(1).await;
        cached_crate_user(1).await.unwrap();
        raw
    });
    let mut group = c.benchmark_group("redis_hit_64_tasks");
    group.throughput(Throughput::Elements(TASKS * READS_PER_TASK));
    group.sample_size(20);
    group.bench_function(BenchmarkId::new("user", "raw_redis_rs"), |b| {
        b.iter_custom(|iters| {
            let raw = raw.clone();
            concurrent(rt, iters, move || {
                let mut connection = raw.clone();
                async move {
                    black_box(raw_get::<User>(&mut connection, "raw-user").await);
                }
            })
        })
    });
    group.bench_function(BenchmarkId::new("user", "cachify"), |b| {
        b.iter_custom(|iters| {
            concurrent(rt, iters, || async {
                black_box(cachify_user(1).await);
            })
        })
    });
    group.bench_function(BenchmarkId::new("user", "cached_crate"), |b| {
        b.iter_custom(|iters| {
            concurrent(rt, iters, || async {
                black_box(cached_crate_user(1).await.unwrap());
            })
        })
    });
    group.finish();
}

/// Stores the raw user on the cluster and warms cachify's entry.
fn cluster_setup(rt: &tokio::runtime::Runtime) -> redis::cluster_async::ClusterConnection {
    rt.block_on(async {
        let mut raw = raw_cluster_connection().await;
        let _: () = raw
            .set("raw-user", rmp_serde::to_vec_named(&user(1)).unwrap())
            .await
            .unwrap();
        cachify_cluster_user(1).await;
        raw
    })
}

fn cluster_hit(c: &mut Criterion) {
    let rt = runtime();
    let raw = cluster_setup(rt);
    let mut group = c.benchmark_group("cluster_hit");
    group.bench_function("raw_redis_rs", |b| {
        b.to_async(rt).iter(|| {
            let mut connection = raw.clone();
            async move { black_box(raw_cluster_get(&mut connection, "raw-user").await) }
        })
    });
    group.bench_function("cachify", |b| {
        b.to_async(rt)
            .iter(|| async { black_box(cachify_cluster_user(1).await) })
    });
    group.finish();
}

fn cluster_hit_64_tasks(c: &mut Criterion) {
    let rt = runtime();
    let raw = cluster_setup(rt);
    let mut group = c.benchmark_group("cluster_hit_64_tasks");
    group.throughput(Throughput::Elements(TASKS * READS_PER_TASK));
    group.sample_size(20);
    group.bench_function("raw_redis_rs", |b| {
        b.iter_custom(|iters| {
            let raw = raw.clone();
            concurrent(rt, iters, move || {
                let mut connection = raw.clone();
                async move {
                    black_box(raw_cluster_get(&mut connection, "raw-user").await);
                }
            })
        })
    });
    group.bench_function("cachify", |b| {
        b.iter_custom(|iters| {
            concurrent(rt, iters, || async {
                black_box(cachify_cluster_user(1).await);
            })
        })
    });
    group.finish();
}

fn memory_hit(c: &mut Criterion) {
    cachify_memory_user(1);
    cached_crate_memory_user(1);
    let moka: moka::sync::Cache<u64, User> = moka::sync::Cache::new(10_000);
    moka.insert(1, user(1));
    let quick: quick_cache::sync::Cache<u64, User> = quick_cache::sync::Cache::new(10_000);
    quick.insert(1, user(1));
    let mut group = c.benchmark_group("memory_hit");
    group.bench_function("cachify", |b| {
        b.iter(|| black_box(cachify_memory_user(black_box(1))))
    });
    group.bench_function("cached_crate", |b| {
        b.iter(|| black_box(cached_crate_memory_user(black_box(1))))
    });
    group.bench_function("moka_get", |b| {
        b.iter(|| black_box(moka.get(&black_box(1))))
    });
    group.bench_function("quick_cache_get", |b| {
        b.iter(|| black_box(quick.get(&black_box(1))))
    });
    group.finish();
}

/// Reads until the near cache answers from process memory (its tracking
/// link is up and it holds the entry), for at most 10 s.
fn until_near_hit(read: impl Fn()) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let before = near_client().stats().near_hits;
        read();
        if near_client().stats().near_hits > before {
            return;
        }
        assert!(Instant::now() < deadline, "the near cache never answered");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn near_hit(c: &mut Criterion) {
    let rt = runtime();
    cachify_memory_user(1);
    until_near_hit(|| {
        black_box(cachify_near_user(1));
    });
    until_near_hit(|| {
        rt.block_on(cachify_near_user_async(1));
    });
    // redis-rs's client-side cache: RESP3, tracking, an LRU of replies.
    let mut cached_connection = rt.block_on(async {
        let url = format!("{}?protocol=resp3", url());
        let config = redis::AsyncConnectionConfig::new()
            .set_cache_config(redis::caching::CacheConfig::new());
        let mut connection = redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .unwrap();
        let _: () = connection
            .set("aio-user", rmp_serde::to_vec_named(&user(1)).unwrap())
            .await
            .unwrap();
        let _: User = raw_get(&mut connection, "aio-user").await;
        connection
    });
    let mut group = c.benchmark_group("near_hit");
    group.bench_function("cachify_near", |b| {
        b.iter(|| black_box(cachify_near_user(black_box(1))))
    });
    group.bench_function("cachify_memory", |b| {
        b.iter(|| black_box(cachify_memory_user(black_box(1))))
    });
    group.bench_function("cachify_near_async", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    black_box(cachify_near_user_async(black_box(1)).await);
                }
                started.elapsed()
            })
        })
    });
    group.bench_function("redis_rs_cache_aio", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let started = Instant::now();
                for _ in 0..iters {
                    black_box(raw_get::<User>(&mut cached_connection, "aio-user").await);
                }
                started.elapsed()
            })
        })
    });
    group.finish();
}

/// How long after another connection's write (from its `OK`) a near-cache
/// read returns the new value: median and 99th percentile of 1,000 writes.
fn invalidation_report() {
    let rt = runtime();
    let mut delays = rt.block_on(async {
        let mut writer = raw_connection().await;
        let key = "bench-near:cache:near-version-1";
        let mut delays = Vec::with_capacity(1_000);
        for version in 1..=1_000_u64 {
            // A near copy of the previous version is held when the write lands.
            let mut previous = vec![b'M'];
            previous.extend(rmp_serde::to_vec(&(version - 1)).unwrap());
            let _: () = writer.set(key, previous).await.unwrap();
            let held = Instant::now() + Duration::from_secs(5);
            let before = near_client().stats().near_hits;
            while near_version(1).await != version - 1 || near_client().stats().near_hits == before
            {
                assert!(
                    Instant::now() < held,
                    "the near cache never held version {}",
                    version - 1
                );
            }
            let mut next = vec![b'M'];
            next.extend(rmp_serde::to_vec(&version).unwrap());
            let _: () = writer.set(key, next).await.unwrap();
            let written = Instant::now();
            while near_version(1).await != version {
                assert!(
                    written.elapsed() < Duration::from_secs(5),
                    "version {version} never seen"
                );
            }
            delays.push(written.elapsed());
        }
        delays
    });
    delays.sort();
    let at = |q: f64| delays[((delays.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    println!(
        "invalidation: a write seen by a near-cache read after {:.0} µs median, {:.0} µs p99, {:.0} µs max ({} writes)",
        at(0.5),
        at(0.99),
        at(1.0),
        delays.len()
    );
}

fn lock_round_trip(c: &mut Criterion) {
    let rt = runtime();
    let raw = rt.block_on(raw_connection());
    let release = redis::Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end",
    );
    let mut group = c.benchmark_group("lock");
    group.bench_function("raw_set_nx_and_script", |b| {
        b.to_async(rt).iter(|| {
            let mut connection = raw.clone();
            let release = release.clone();
            async move {
                let taken: Option<String> = redis::cmd("SET")
                    .arg("raw-lock")
                    .arg("token")
                    .arg("NX")
                    .arg("PX")
                    .arg(30_000)
                    .query_async(&mut connection)
                    .await
                    .unwrap();
                assert!(taken.is_some());
                let released: i64 = release
                    .key("raw-lock")
                    .arg("token")
                    .invoke_async(&mut connection)
                    .await
                    .unwrap();
                assert_eq!(released, 1);
            }
        })
    });
    group.bench_function("cachify", |b| {
        b.to_async(rt).iter(|| async {
            let guard = redis_client().lock("bench-lock").acquire().await.unwrap();
            guard.release().await.unwrap();
        })
    });
    group.finish();
}

/// How the waiter of the handoff report waits.
#[derive(Clone, Copy)]
enum Waiting {
    /// `.wait(..)`: woken by the release.
    Woken,
    /// The wait before issue 9: try, sleep 5 ms doubling to 100 ms, try again.
    Polling,
}

/// One handoff after another: the holder keeps the lock for `hold` while a
/// waiter on `waiter` waits, then releases it. Returns, per round, the
/// time from the holder's release call to the waiter holding the lock.
async fn handoffs(
    holder: &Cachify,
    waiter: &Cachify,
    name: &str,
    waiting: Waiting,
    rounds: usize,
    hold: Duration,
) -> Vec<Duration> {
    let mut delays = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let held = holder
            .lock(name)
            .wait(Duration::from_secs(10))
            .acquire()
            .await
            .unwrap();
        let (waiter, name) = (waiter.clone(), name.to_owned());
        let taken = tokio::spawn(async move {
            let guard = match waiting {
                Waiting::Woken => waiter
                    .lock(&name)
                    .wait(Duration::from_secs(10))
                    .acquire()
                    .await
                    .unwrap(),
                Waiting::Polling => {
                    let mut pause = Duration::from_millis(5);
                    loop {
                        match waiter.lock(&name).acquire().await {
                            Ok(guard) => break guard,
                            Err(cachify::Error::Locked { .. }) => {
                                tokio::time::sleep(pause).await;
                                pause = (pause * 2).min(Duration::from_millis(100));
                            }
                            Err(error) => panic!("{error}"),
                        }
                    }
                }
            };
            let at = Instant::now();
            guard.release().await.unwrap();
            at
        });
        tokio::time::sleep(hold).await;
        let released = Instant::now();
        held.release().await.unwrap();
        delays.push(taken.await.unwrap() - released);
    }
    delays.sort();
    delays
}

/// One pool handoff after another: the holder keeps the one slot of a
/// pool of one for `hold` while a waiter on `waiter` waits, then releases
/// it. Returns, per round, the time from the holder's release call to the
/// waiter holding the slot.
async fn pool_handoffs(
    holder: &Cachify,
    waiter: &Cachify,
    name: &str,
    rounds: usize,
    hold: Duration,
) -> Vec<Duration> {
    let wait = Duration::from_secs(10);
    let mut delays = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let held = holder.pool(name, 1).wait(wait).acquire().await.unwrap();
        let (waiter, name) = (waiter.clone(), name.to_owned());
        let taken = tokio::spawn(async move {
            let slot = waiter.pool(&name, 1).wait(wait).acquire().await.unwrap();
            let at = Instant::now();
            slot.release().await.unwrap();
            at
        });
        tokio::time::sleep(hold).await;
        let released = Instant::now();
        held.release().await.unwrap();
        delays.push(taken.await.unwrap() - released);
    }
    delays.sort();
    delays
}

/// The lock handoff latency, printed: median and 90th percentile.
fn handoff_report() {
    let rt = runtime();
    let quick = std::env::args().any(|arg| arg == "--test");
    let (rounds, polled_rounds) = if quick { (3, 2) } else { (200, 40) };
    let memory = Cachify::builder().memory().build_blocking().unwrap();
    let node = || {
        Cachify::builder()
            .redis(url())
            .prefix("bench:")
            .build_blocking()
            .unwrap()
    };
    let cluster = || {
        Cachify::builder()
            .redis_cluster(cluster_seeds())
            .prefix("bench:")
            .build_blocking()
            .unwrap()
    };
    let backends = [
        ("memory", memory.clone(), memory),
        ("redis", node(), node()),
        ("cluster", cluster(), cluster()),
    ];
    let micros = |delays: &[Duration], q: f64| {
        delays[((delays.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6
    };
    for (backend, holder, waiter) in &backends {
        let woken = rt.block_on(handoffs(
            holder,
            waiter,
            "handoff-woken",
            Waiting::Woken,
            rounds,
            Duration::from_millis(20),
        ));
        // Held long enough for the polling backoff to reach its 100 ms cap.
        let polled = rt.block_on(handoffs(
            holder,
            waiter,
            "handoff-polled",
            Waiting::Polling,
            polled_rounds,
            Duration::from_millis(300),
        ));
        println!(
            "lock handoff, {backend}: woken {:.0} µs median, {:.0} µs p90 ({} handoffs); polling (before) {:.0} µs median, {:.0} µs p90 ({} handoffs)",
            micros(&woken, 0.5),
            micros(&woken, 0.9),
            woken.len(),
            micros(&polled, 0.5),
            micros(&polled, 0.9),
            polled.len(),
        );
        let pooled = rt.block_on(pool_handoffs(
            holder,
            waiter,
            "handoff-pool",
            rounds,
            Duration::from_millis(20),
        ));
        println!(
            "pool handoff, {backend}: woken {:.0} µs median, {:.0} µs p90 ({} handoffs)",
            micros(&pooled, 0.5),
            micros(&pooled, 0.9),
            pooled.len(),
        );
    }
    for (backend, holder, spec) in [
        ("redis", &backends[1].1, format!("redis {}", url())),
        (
            "cluster",
            &backends[2].1,
            format!("cluster {}", cluster_seeds().join(",")),
        ),
    ] {
        let delays = process_handoffs(holder, &spec, rounds);
        println!(
            "lock handoff to another process, {backend}: {:.0} µs median, {:.0} µs p90 ({} handoffs, blocking API)",
            micros(&delays, 0.5),
            micros(&delays, 0.9),
            delays.len(),
        );
    }
}

/// Set in a child process of this bench: the waiter of the cross-process
/// handoff, on the Redis (`redis <url>`) or cluster (`cluster <seeds>`) given.
const HANDOFF_WAITER_ENV: &str = "CACHIFY_BENCH_HANDOFF_WAITER";
const HANDOFF_LOCK: &str = "handoff-process";

/// Microseconds of the system clock, which both processes share.
fn wall_micros() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros()
}

/// The child's side: for each line on stdin, wait for the lock, print the
/// time it was granted, release it.
fn serve_handoff_waiter(backend: &str) -> ! {
    use std::io::{BufRead, Write};
    let builder = match backend.split_once(' ') {
        Some(("redis", url)) => Cachify::builder().redis(url),
        Some(("cluster", seeds)) => Cachify::builder().redis_cluster(seeds.split(',')),
        _ => panic!("unknown handoff backend {backend:?}"),
    };
    let client = builder.prefix("bench:").build_blocking().unwrap();
    let mut stdout = std::io::stdout().lock();
    for _ in std::io::stdin().lock().lines() {
        let guard = client
            .lock(HANDOFF_LOCK)
            .wait(Duration::from_secs(10))
            .acquire_blocking()
            .unwrap();
        let granted = wall_micros();
        guard.release_blocking().unwrap();
        writeln!(stdout, "{granted}").unwrap();
        stdout.flush().unwrap();
    }
    std::process::exit(0)
}

/// The handoff to a waiter in another process (a child of this bench):
/// the delay from the holder's release call to the child's grant, by the
/// system clock both share.
fn process_handoffs(holder: &Cachify, backend: &str, rounds: usize) -> Vec<Duration> {
    use std::io::{BufRead, BufReader, Write};
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(HANDOFF_WAITER_ENV, backend)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut to_child = child.stdin.take().unwrap();
    let mut from_child = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut delays = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let held = holder
            .lock(HANDOFF_LOCK)
            .wait(Duration::from_secs(10))
            .acquire_blocking()
            .unwrap();
        writeln!(to_child).unwrap();
        to_child.flush().unwrap();
        // Time for the child to try, subscribe and wait.
        std::thread::sleep(Duration::from_millis(50));
        let released = wall_micros();
        held.release_blocking().unwrap();
        let granted: u128 = from_child.next().unwrap().unwrap().parse().unwrap();
        delays.push(Duration::from_micros(
            u64::try_from(granted.saturating_sub(released)).unwrap(),
        ));
    }
    drop(to_child);
    child.wait().unwrap();
    delays.sort();
    delays
}

static STAMPEDE_RUNS: AtomicU32 = AtomicU32::new(0);

#[cached("stampede-{round}", client = redis_client())]
async fn stampede(round: u64) -> User {
    STAMPEDE_RUNS.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(50)).await;
    user(round)
}

/// 1,000 concurrent callers on one cold key: executions and time to the
/// last answer. Printed, not timed by criterion: it is one event.
fn stampede_report() {
    let rt = runtime();
    let round = u64::from(std::process::id());
    let (elapsed, answers) = rt.block_on(async move {
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..1_000 {
            tasks.spawn(stampede(round));
        }
        let answers = tasks.join_all().await;
        (started.elapsed(), answers)
    });
    assert!(answers.iter().all(|answer| *answer == user(round)));
    println!(
        "stampede: 1000 callers, function ran {} time(s), last answer after {:.1} ms",
        STAMPEDE_RUNS.load(Ordering::SeqCst),
        elapsed.as_secs_f64() * 1000.0
    );
}

const ROUNDS: usize = 21;
const SERIAL_READS: u32 = 2_000;
/// In-process hits in one round of the interleaved memory comparison.
const MEMORY_HITS: u32 = 200_000;

/// How long `MEMORY_HITS` calls of `hit` take, on this thread.
fn memory_round(hit: impl Fn()) -> Duration {
    let started = Instant::now();
    for _ in 0..MEMORY_HITS {
        hit();
    }
    started.elapsed()
}

/// Times `SERIAL_READS` reads, one after the other, in one task.
fn serial<F, Fut>(rt: &tokio::runtime::Runtime, read: F) -> Duration
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    rt.block_on(async {
        let started = Instant::now();
        for _ in 0..SERIAL_READS {
            read().await;
        }
        started.elapsed()
    })
}

/// Prints the median, min and max of `ROUNDS` per-round ratios of `ours`
/// to `theirs`, the two run alternately.
fn print_median_ratio(label: &str, ours: impl Fn() -> Duration, theirs: impl Fn() -> Duration) {
    let mut ratios: Vec<f64> = (0..ROUNDS)
        .map(|_| {
            let theirs = theirs().as_secs_f64();
            ours().as_secs_f64() / theirs
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    println!(
        "{label:<48} {:.3} [{:.3}, {:.3}]",
        ratios[ROUNDS / 2],
        ratios[0],
        ratios[ROUNDS - 1]
    );
}

/// Alternates raw redis-rs and cachify batches, round after round, and
/// prints the median of the per-round time ratios, on one node and on the
/// cluster; and the same for in-process hits against the `cached` crate.
/// On a noisy machine this is steadier than comparing two benches measured
/// minutes apart.
fn interleaved_report() {
    let rt = runtime();
    let raw = rt.block_on(async {
        let mut raw = raw_connection().await;
        let _: () = raw
            .set("raw-user", rmp_serde::to_vec_named(&user(1)).unwrap())
            .await
            .unwrap();
        cachify_user(1).await;
        raw
    });
    let raw_read = move || {
        let mut connection = raw.clone();
        async move {
            black_box(raw_get::<User>(&mut connection, "raw-user").await);
        }
    };
    let cachify_read = || async {
        black_box(cachify_user(1).await);
    };
    let cluster = cluster_setup(rt);
    let raw_cluster_read = move || {
        let mut connection = cluster.clone();
        async move {
            black_box(raw_cluster_get(&mut connection, "raw-user").await);
        }
    };
    let cachify_cluster_read = || async {
        black_box(cachify_cluster_user(1).await);
    };
    let batch = TASKS * READS_PER_TASK;
    println!(
        "\ninterleaved, {ROUNDS} rounds (cachify time / peer time: median [min, max]; \
         the peer is raw redis-rs, or the `cached` crate for the memory hit)"
    );
    cachify_memory_user(1);
    cached_crate_memory_user(1);
    print_median_ratio(
        &format!("memory hit, user, one thread ({MEMORY_HITS} hits a round)"),
        || memory_round(|| drop(black_box(cachify_memory_user(black_box(1))))),
        || memory_round(|| drop(black_box(cached_crate_memory_user(black_box(1))))),
    );
    print_median_ratio(
        &format!("redis hit, user, serial ({SERIAL_READS} reads a round)"),
        || serial(rt, cachify_read),
        || serial(rt, raw_read.clone()),
    );
    print_median_ratio(
        &format!("redis hit, user, 64 tasks ({batch} reads a round)"),
        || concurrent(rt, 1, cachify_read),
        || concurrent(rt, 1, raw_read.clone()),
    );
    print_median_ratio(
        &format!("cluster hit, user, serial ({SERIAL_READS} reads a round)"),
        || serial(rt, cachify_cluster_read),
        || serial(rt, raw_cluster_read.clone()),
    );
    print_median_ratio(
        &format!("cluster hit, user, 64 tasks ({batch} reads a round)"),
        || concurrent(rt, 1, cachify_cluster_read),
        || concurrent(rt, 1, raw_cluster_read.clone()),
    );
}

criterion_group!(
    benches,
    redis_hit,
    redis_hit_64_tasks,
    memory_hit,
    near_hit,
    lock_round_trip,
    cluster_hit,
    cluster_hit_64_tasks
);

/// Reads criterion's median for one bench, in nanoseconds per iteration.
fn median_ns(group: &str, id: &str) -> Option<f64> {
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("../criterion")
        .join(group)
        .join(id)
        .join("new/estimates.json");
    let text = std::fs::read_to_string(path).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    json["median"]["point_estimate"].as_f64()
}

fn report() {
    let row = |label: &str, group: &str, ours: &str, theirs: &str, per: f64| match (
        median_ns(group, ours),
        median_ns(group, theirs),
    ) {
        (Some(ours_ns), Some(theirs_ns)) => println!(
            "{label:<44} cachify {:>10.2} µs   {theirs:<22} {:>10.2} µs   ratio {:.3}",
            ours_ns / per / 1000.0,
            theirs_ns / per / 1000.0,
            ours_ns / theirs_ns
        ),
        _ => println!("{label:<44} (no figures: quick mode or not run)"),
    };
    let per_batch = (TASKS * READS_PER_TASK) as f64;
    println!("\nratios (cachify time / peer time; below 1.0 means cachify is faster)");
    row(
        "redis hit, user, serial",
        "redis_hit",
        "user/cachify",
        "user/raw_redis_rs",
        1.0,
    );
    row(
        "redis hit, user, serial",
        "redis_hit",
        "user/cachify",
        "user/cached_crate",
        1.0,
    );
    row(
        "redis hit, 10 KiB page, serial",
        "redis_hit",
        "page_10k/cachify",
        "page_10k/raw_redis_rs",
        1.0,
    );
    row(
        "redis hit, 10 KiB page, serial",
        "redis_hit",
        "page_10k/cachify",
        "page_10k/cached_crate",
        1.0,
    );
    row(
        "redis hit, 64 tasks (per read)",
        "redis_hit_64_tasks",
        "user/cachify",
        "user/raw_redis_rs",
        per_batch,
    );
    row(
        "redis hit, 64 tasks (per read)",
        "redis_hit_64_tasks",
        "user/cachify",
        "user/cached_crate",
        per_batch,
    );
    row("memory hit", "memory_hit", "cachify", "cached_crate", 1.0);
    row("memory hit", "memory_hit", "cachify", "moka_get", 1.0);
    row(
        "memory hit",
        "memory_hit",
        "cachify",
        "quick_cache_get",
        1.0,
    );
    row(
        "near-cache hit vs memory hit",
        "near_hit",
        "cachify_near",
        "cachify_memory",
        1.0,
    );
    row(
        "near-cache hit (async) vs cache-aio",
        "near_hit",
        "cachify_near_async",
        "redis_rs_cache_aio",
        1.0,
    );
    row(
        "cluster hit, user, serial",
        "cluster_hit",
        "cachify",
        "raw_redis_rs",
        1.0,
    );
    row(
        "cluster hit, 64 tasks (per read)",
        "cluster_hit_64_tasks",
        "cachify",
        "raw_redis_rs",
        per_batch,
    );
    row(
        "lock acquire + release",
        "lock",
        "cachify",
        "raw_set_nx_and_script",
        1.0,
    );
}

/// In a child process of the bench: which users app to serve ("near" or
/// "plain"), against the Redis at `USERS_REDIS_ENV`, writing its port to
/// the file at `USERS_PORT_ENV`.
const USERS_APP_ENV: &str = "CACHIFY_BENCH_USERS_APP";
const USERS_REDIS_ENV: &str = "CACHIFY_BENCH_USERS_REDIS";
const USERS_PORT_ENV: &str = "CACHIFY_BENCH_USERS_PORT";
/// Concurrent HTTP clients, and how long each measurement lasts.
const USERS_CLIENTS: usize = 32;
const USERS_RUN: Duration = Duration::from_secs(3);

/// The child: the users app, its cachify client with or without the near
/// cache. Serves until the bench kills it.
fn serve_users_app(mode: &str) -> ! {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let redis = std::env::var(USERS_REDIS_ENV).unwrap();
        let builder = Cachify::builder()
            .redis(redis)
            .prefix(format!("bench-users-{mode}:"));
        let builder = if mode == "near" {
            builder.near_cache(10_000)
        } else {
            builder
        };
        cachify::init(builder.build().await.unwrap()).unwrap();
        let dir = std::env::temp_dir().join(format!("cachify-bench-users-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let db = app::connect_db(&format!("sqlite://{}", dir.join("users.db").display()))
            .await
            .unwrap();
        let state = std::sync::Arc::new(app::AppState {
            db,
            slow: Duration::ZERO,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        std::fs::write(std::env::var(USERS_PORT_ENV).unwrap(), port.to_string()).unwrap();
        axum::serve(listener, app::router(state)).await.unwrap();
    });
    std::process::exit(0)
}

/// Starts the users app in `mode` as a child process; `(child, base URL)`.
fn start_users_app(mode: &str) -> (Child, String) {
    let port_file = std::env::temp_dir().join(format!(
        "cachify-bench-users-port-{}-{mode}",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&port_file);
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .env(USERS_APP_ENV, mode)
        .env(USERS_REDIS_ENV, url())
        .env(USERS_PORT_ENV, &port_file)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    support::die_with_the_parent(&mut command);
    let child = command.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let port = loop {
        if let Ok(port) = std::fs::read_to_string(&port_file)
            && let Ok(port) = port.trim().parse::<u16>()
        {
            break port;
        }
        assert!(Instant::now() < deadline, "the users app did not start");
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = std::fs::remove_file(&port_file);
    (child, format!("http://127.0.0.1:{port}"))
}

/// `GET /users/{id}` requests per second against one app, for `USERS_RUN`.
async fn users_rps(base: &str) -> f64 {
    let http = reqwest::Client::new();
    let created: serde_json::Value = http
        .post(format!("{base}/users"))
        .json(&serde_json::json!({ "name": "bench", "email": "bench@example.com" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = format!("{base}/users/{}", created["id"]);
    for _ in 0..100 {
        assert!(http.get(&url).send().await.unwrap().status().is_success());
    }
    let until = Instant::now() + USERS_RUN;
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..USERS_CLIENTS {
        let (http, url) = (http.clone(), url.clone());
        clients.spawn(async move {
            let mut done = 0_u64;
            while Instant::now() < until {
                let response = http.get(&url).send().await.unwrap();
                assert!(response.status().is_success());
                black_box(response.bytes().await.unwrap());
                done += 1;
            }
            done
        });
    }
    let done: u64 = clients.join_all().await.into_iter().sum();
    done as f64 / USERS_RUN.as_secs_f64()
}

/// The users example's `GET /users/{id}` with the near cache on and off,
/// each in its own process, three rounds alternating.
fn users_app_report() {
    let rt = runtime();
    let (mut near, mut plain) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        for (mode, results) in [("plain", &mut plain), ("near", &mut near)] {
            let (mut child, base) = start_users_app(mode);
            results.push(rt.block_on(users_rps(&base)));
            let _ = child.kill();
            let _ = child.wait();
        }
    }
    let median = |results: &mut Vec<f64>| {
        results.sort_by(f64::total_cmp);
        results[results.len() / 2]
    };
    let (near, plain) = (median(&mut near), median(&mut plain));
    println!(
        "users app, GET /users/{{id}}, {USERS_CLIENTS} clients: near cache {near:.0} req/s, Redis on every hit {plain:.0} req/s, ratio {:.2} (median of 3 runs each)",
        near / plain
    );
}

fn main() {
    if let Ok(mode) = std::env::var(USERS_APP_ENV) {
        serve_users_app(&mode);
    }
    if let Ok(backend) = std::env::var(HANDOFF_WAITER_ENV) {
        serve_handoff_waiter(&backend);
    }
    let server = start_redis();
    let url = format!("redis://127.0.0.1:{}/0", server.port);
    // SAFETY: set before any other thread exists; the `cached` crate reads it.
    unsafe { std::env::set_var("CACHED_REDIS_CONNECTION_STRING", &url) };
    URL.set(url).unwrap();
    let cluster = RedisCluster::start();
    CLUSTER_SEEDS.set(cluster.seeds()).unwrap();

    benches();
    stampede_report();
    invalidation_report();
    handoff_report();
    if !std::env::args().any(|arg| arg == "--test") {
        interleaved_report();
        users_app_report();
    }
    Criterion::default().configure_from_args().final_summary();
    report();
    drop(server);
    drop(cluster);
}
