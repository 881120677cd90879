//! Redis Cluster specifics, on real clusters of six `redis-server`
//! processes: slot-safe keys, clearing across primaries, fencing tokens
//! that survive an idle counter's expiry, and a primary killed under load.
//! The behaviour suites (`cached`, `locking`, `http_cache`) run on the
//! shared cluster as well.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cachify::{BreakerState, Cachify, Error};
use support::cluster::{RedisCluster, shared_cluster};

/// Bounds every wait on the cluster: a hung call fails the test.
const CALL_LIMIT: Duration = Duration::from_secs(5);

async fn cluster_client(prefix: &str) -> Cachify {
    Cachify::builder()
        .redis_cluster(shared_cluster().seeds())
        .prefix(prefix)
        .build()
        .await
        .expect("connect to the test cluster")
}

fn raw_get(key: &str) -> Option<Vec<u8>> {
    let mut raw = shared_cluster().connection();
    redis::cmd("GET").arg(key).query(&mut raw).unwrap()
}

fn raw_pttl(key: &str) -> i64 {
    let mut raw = shared_cluster().connection();
    redis::cmd("PTTL").arg(key).query(&mut raw).unwrap()
}

#[tokio::test]
async fn redis_at_a_cluster_node_names_redis_cluster() {
    let node = shared_cluster().seeds().remove(0);
    let error = Cachify::builder()
        .redis(node)
        .build()
        .await
        .expect_err("a cluster node is refused by `.redis`");
    match error {
        Error::Config(message) => assert!(message.contains(".redis_cluster"), "{message}"),
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

#[tokio::test]
async fn an_unreachable_cluster_is_an_error_or_lazy() {
    let port = support::free_port();
    let seeds = [format!("redis://127.0.0.1:{port}")];
    let started = Instant::now();
    let refused = Cachify::builder()
        .redis_cluster(seeds.clone())
        .connect_timeout(Duration::from_millis(300))
        .build()
        .await;
    assert!(matches!(refused, Err(Error::Backend(_))), "{refused:?}");
    assert!(started.elapsed() < CALL_LIMIT);

    let lazy = Cachify::builder()
        .redis_cluster(seeds)
        .lazy()
        .command_timeout(Duration::from_millis(200))
        .build()
        .await
        .expect("a lazy client builds without the cluster");
    let refused = lazy.lock("nobody-home").acquire().await;
    assert!(
        matches!(refused, Err(Error::Backend(_))),
        "locks fail closed: {refused:?}"
    );

    let empty: [&str; 0] = [];
    assert!(matches!(
        Cachify::builder().redis_cluster(empty).build().await,
        Err(Error::Config(_))
    ));
}

#[tokio::test]
async fn a_lock_and_its_fencing_counter_share_a_slot() {
    let client = cluster_client("slots:").await;
    let mut tokens = Vec::new();
    for name in ["report-7", "a", "user:42", "x-y-z"] {
        let guard = client.lock(name).acquire().await.unwrap();
        let fence = format!("slots:fence:{{{}}}", guard.key());
        assert_eq!(
            RedisCluster::slot_of(guard.key()),
            RedisCluster::slot_of(&fence),
            "`{}` and `{fence}`",
            guard.key()
        );
        let stored: Option<Vec<u8>> = raw_get(&fence);
        let stored: u64 = String::from_utf8(stored.expect("the counter exists"))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            stored,
            guard.fencing_token(),
            "the counter holds the last token"
        );
        let ttl = raw_pttl(&fence);
        assert!(
            ttl > 0 && ttl <= 24 * 3600 * 1000,
            "the counter expires when idle (PTTL {ttl})"
        );
        tokens.push(guard.fencing_token());
        guard.release().await.unwrap();
    }
    // Tokens follow the server's clock in microseconds.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    for token in tokens {
        assert!(token.abs_diff(now) < 60_000_000, "{token} vs {now}");
    }
}

/// Fencing tokens keep increasing when a counter expired while idle, on a
/// single node and on the cluster, and after `FLUSHALL` on a single node.
#[tokio::test]
async fn fencing_tokens_increase_across_counter_expiry() {
    let server = support::shared_server();
    let single = Cachify::builder()
        .redis(server.url())
        .prefix("idle-fence:")
        .fence_idle(Duration::from_millis(50))
        .build()
        .await
        .unwrap();
    let cluster = Cachify::builder()
        .redis_cluster(shared_cluster().seeds())
        .prefix("idle-fence:")
        .fence_idle(Duration::from_millis(50))
        .build()
        .await
        .unwrap();
    for client in [&single, &cluster] {
        let mut last = 0;
        for round in 0..5 {
            let guard = client.lock("nightly").acquire().await.unwrap();
            assert!(
                guard.fencing_token() > last,
                "round {round}: {} after {last}",
                guard.fencing_token()
            );
            last = guard.fencing_token();
            guard.release().await.unwrap();
            // Long enough for the idle counter to expire.
            tokio::time::sleep(Duration::from_millis(120)).await;
        }
    }
    let before = single.lock("flushed").acquire().await.unwrap();
    let before_token = before.fencing_token();
    before.release().await.unwrap();
    let mut raw = server.connection();
    let _: () = redis::cmd("FLUSHDB").query(&mut raw).unwrap();
    let after = single.lock("flushed").acquire().await.unwrap();
    assert!(
        after.fencing_token() > before_token,
        "a flushed counter restarts above the old tokens"
    );
    after.release().await.unwrap();
}

#[tokio::test]
async fn clear_reaches_every_primary() {
    let client = cluster_client("clear-all:").await;
    let count = 300;
    for n in 0..count {
        let key = format!("clear-all:cache:item-{n}");
        let mut raw = shared_cluster().connection();
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg("x")
            .query(&mut raw)
            .unwrap();
    }
    let primaries: std::collections::BTreeSet<u16> = (0..count)
        .map(|n| {
            shared_cluster()
                .port_serving_slot(RedisCluster::slot_of(&format!("clear-all:cache:item-{n}")))
        })
        .collect();
    assert_eq!(primaries.len(), 3, "the keys are spread over every primary");
    let mut raw = shared_cluster().connection();
    let _: () = redis::cmd("SET")
        .arg("clear-all:lock:kept")
        .arg("t")
        .query(&mut raw)
        .unwrap();

    assert_eq!(client.clear().await.unwrap(), count);
    for n in 0..count {
        assert_eq!(raw_get(&format!("clear-all:cache:item-{n}")), None);
    }
    assert!(
        raw_get("clear-all:lock:kept").is_some(),
        "only cache entries are cleared"
    );
    assert_eq!(client.clear_blocking().unwrap(), 0);
}

/// While tasks run cached and locked calls, one primary is SIGKILLed. No
/// call panics or hangs; cached calls answer within the command timeout
/// plus their work; locks on the dead primary's slots fail closed until its
/// replica is promoted, and caching and locking resume by themselves.
#[test]
fn a_primary_killed_under_load() {
    let _deadline = support::Deadline::new(Duration::from_secs(120), "failover under load");
    let mut cluster = RedisCluster::start();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let command_timeout = Duration::from_millis(300);
    let client = runtime.block_on(async {
        Cachify::builder()
            .redis_cluster(cluster.seeds())
            .prefix("failover:")
            .command_timeout(command_timeout)
            .connect_timeout(Duration::from_millis(500))
            .circuit_breaker(1_000_000, Duration::from_millis(100))
            .lock_ttl(Duration::from_secs(2))
            .build()
            .await
            .unwrap()
    });

    // A key whose slot the victim serves.
    let fragile = runtime.block_on(async {
        Cachify::builder()
            .redis_cluster(cluster.seeds())
            .prefix("failover:")
            .command_timeout(command_timeout)
            .circuit_breaker(1, Duration::from_secs(1))
            .build()
            .await
            .unwrap()
    });
    let victim_key = "failover:cache:victim";
    let slot = RedisCluster::slot_of(victim_key);
    let victim = cluster.port_serving_slot(slot);
    let victim_lock = (0..1_000)
        .map(|n| format!("on-victim-{n}"))
        .find(|name| {
            cluster.port_serving_slot(RedisCluster::slot_of(&format!("failover:lock:{name}")))
                == victim
        })
        .expect("some lock name hashes to the victim's slots");

    let stop = Arc::new(AtomicBool::new(false));
    let slowest = Arc::new(AtomicU64::new(0));
    let calls = Arc::new(AtomicU64::new(0));
    let lock_errors = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..8)
        .map(|worker| {
            let (client, stop, slowest, calls, lock_errors) = (
                client.clone(),
                stop.clone(),
                slowest.clone(),
                calls.clone(),
                lock_errors.clone(),
            );
            runtime.spawn(async move {
                let mut round = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    round += 1;
                    let started = Instant::now();
                    let value = cached_square(&client, worker * 1_000 + round % 50).await;
                    assert_eq!(value, (worker * 1_000 + round % 50).pow(2));
                    let took = started.elapsed().as_millis() as u64;
                    slowest.fetch_max(took, Ordering::SeqCst);
                    calls.fetch_add(1, Ordering::SeqCst);
                    match client
                        .lock(format!("job-{worker}-{}", round % 20))
                        .acquire()
                        .await
                    {
                        Ok(guard) => {
                            let _ = guard.release().await;
                        }
                        Err(Error::Backend(_)) => {
                            lock_errors.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(other) => panic!("unexpected lock error: {other:?}"),
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            })
        })
        .collect();

    std::thread::sleep(Duration::from_millis(500));
    assert!(calls.load(Ordering::SeqCst) > 0, "the load runs");
    cluster.kill(victim);
    let killed_at = Instant::now();

    // While the slot has no primary, its locks fail closed, and a client
    // with a touchy breaker stops asking the cluster after one failure.
    let during = runtime.block_on(client.lock(&victim_lock).acquire());
    runtime.block_on(async {
        assert!(
            !write_and_read(&fragile, victim_key).await,
            "no cache while the slot is down"
        );
        assert_eq!(fragile.stats().breaker, BreakerState::Open);
        assert!(
            fragile.stats().bypassed > 0,
            "an open breaker skips the cluster"
        );
    });
    let promoted = cluster.wait_for_failover(slot, Duration::from_secs(30));
    assert_ne!(promoted, victim);
    let failover_took = killed_at.elapsed();

    // After the promotion, caching and locking on that slot resume by
    // themselves within a few seconds.
    let resumed = runtime.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let cached = write_and_read(&client, victim_key).await
                && write_and_read(&fragile, victim_key).await;
            let locked = client.lock(&victim_lock).acquire().await;
            if cached && let Ok(guard) = locked {
                guard.release().await.unwrap();
                return Instant::now();
            }
            assert!(
                Instant::now() < deadline,
                "caching or locking did not resume"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    stop.store(true, Ordering::SeqCst);
    runtime.block_on(async {
        for worker in workers {
            worker.await.expect("no worker panicked");
        }
    });
    assert_eq!(
        fragile.stats().breaker,
        BreakerState::Closed,
        "the breaker closes again"
    );
    let slowest = Duration::from_millis(slowest.load(Ordering::SeqCst));
    println!(
        "failover after {failover_took:?}; resumed {:?} after the kill; slowest cached call {slowest:?}; {} calls; {} lock errors",
        resumed.duration_since(killed_at),
        calls.load(Ordering::SeqCst),
        lock_errors.load(Ordering::SeqCst)
    );
    // A cached call makes at most a read and a write, each bounded by the
    // command timeout; the work itself is instant. Scheduling slack on a
    // loaded two-core machine is allowed for.
    assert!(
        slowest < command_timeout * 2 + Duration::from_millis(700),
        "a cached call took {slowest:?}"
    );
    assert!(
        matches!(during, Err(Error::Backend(_))),
        "a lock on a slot without a primary fails closed: {during:?}"
    );
}

async fn cached_square(client: &Cachify, n: u64) -> u64 {
    #[cachify::cached("square-{n}", ttl = 60, client = client)]
    async fn square(client: &Cachify, n: u64) -> u64 {
        let _ = client;
        n * n
    }
    square(client, n).await
}

/// Whether a value written through the cache under `key` reads back.
async fn write_and_read(client: &Cachify, key: &str) -> bool {
    let name = key.trim_start_matches("failover:cache:");
    #[cachify::cached("{name}", ttl = 60, client = client)]
    async fn probe(client: &Cachify, name: &str) -> u64 {
        let _ = (client, name);
        7
    }
    let before = client.stats().hits;
    let _ = probe(client, name).await;
    let _ = probe(client, name).await;
    client.stats().hits > before
}

/// `lock = true` on a cluster: concurrent misses from two clients (two
/// processes, as far as cachify can tell) run the function once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fill_lock_runs_once_across_clients() {
    static RUNS: AtomicU64 = AtomicU64::new(0);

    #[cachify::cached("report-{n}", ttl = 60, lock = true, client = client)]
    async fn report(client: &Cachify, n: u64) -> u64 {
        let _ = client;
        RUNS.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(300)).await;
        n + 1
    }

    let clients = [cluster_client("fill:").await, cluster_client("fill:").await];
    let calls: Vec<_> = (0..20)
        .map(|call| {
            let client = clients[call % 2].clone();
            tokio::spawn(async move {
                tokio::time::timeout(CALL_LIMIT, report(&client, 41))
                    .await
                    .expect("a filled value arrives in time")
            })
        })
        .collect();
    for call in calls {
        assert_eq!(call.await.unwrap(), 42);
    }
    assert_eq!(RUNS.load(Ordering::SeqCst), 1, "one run for both clients");
}

/// The watchdog notices a lock deleted behind its back on a cluster.
#[tokio::test]
async fn a_deleted_lock_is_reported_lost() {
    let client = cluster_client("lost:").await;
    let guard = client
        .lock("deleted")
        .ttl(Duration::from_millis(300))
        .acquire()
        .await
        .unwrap();
    let mut raw = shared_cluster().connection();
    let _: () = redis::cmd("DEL").arg(guard.key()).query(&mut raw).unwrap();
    tokio::time::timeout(CALL_LIMIT, guard.lost())
        .await
        .expect("the loss is noticed within a few renewals");
    assert!(guard.is_lost());
    assert!(matches!(guard.release().await, Err(Error::NotOwner)));
}
