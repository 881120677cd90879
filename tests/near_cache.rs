//! The near cache (`.near_cache(n)`): decoded copies kept in process, and
//! dropped whenever Redis says their key changed, on one server and on a
//! cluster.
//!
//! - A write by another client, a `DEL`, expiry and `FLUSHALL` reach the copy.
//! - A killed tracking link, a restarted server and a failover never let a
//!   stale copy be served.
//! - A coherence checker: reader processes read random keys through the
//!   near cache while writer processes reset and rewrite them; every read
//!   must return a value that was current at some instant between its
//!   start (minus the staleness allowance) and its end.
//!
//! The checker's processes are this test binary run again on the
//! `#[ignore]`d `child` test.

mod support;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cachify::{Cachify, CachifyBuilder, cached};
use support::children::{Children, barrier, now_ns};
use support::cluster::RedisCluster;
use support::{Deadline, RedisServer};

/// How long a change may take to reach a copy before a check gives up.
const ARRIVAL: Duration = Duration::from_secs(3);
/// How long the tracking links may take to come up (or back).
const TRACKING: Duration = Duration::from_secs(10);
/// How long a dead link may go unnoticed: the socket's end arrives on
/// loopback within microseconds; this leaves room for a loaded machine.
const NOTICE: Duration = Duration::from_millis(100);

/// A deployment under test.
enum Deployment<'a> {
    Node(&'a RedisServer),
    Cluster(&'a RedisCluster),
}

impl Deployment<'_> {
    fn builder(&self) -> CachifyBuilder {
        let builder = match self {
            Deployment::Node(server) => Cachify::builder().redis(server.url()),
            Deployment::Cluster(cluster) => Cachify::builder().redis_cluster(cluster.seeds()),
        };
        builder
            .command_timeout(Duration::from_millis(500))
            .connect_timeout(Duration::from_millis(500))
    }

    /// A client with a near cache of 100 entries under `prefix`.
    async fn near_client(&self, prefix: &str) -> Cachify {
        self.builder()
            .prefix(prefix)
            .near_cache(100)
            .build()
            .await
            .unwrap()
    }

    /// Runs `command` as another client would (as `redis-cli` does).
    fn run<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> T {
        match self {
            Deployment::Node(server) => command.query(&mut server.connection()).unwrap(),
            Deployment::Cluster(cluster) => command.query(&mut cluster.connection()).unwrap(),
        }
    }

    /// Plain connections to the server, or to each primary.
    fn nodes(&self) -> Vec<redis::Connection> {
        match self {
            Deployment::Node(server) => vec![server.connection()],
            Deployment::Cluster(cluster) => cluster
                .primaries()
                .into_iter()
                .map(|port| {
                    redis::Client::open(format!("redis://127.0.0.1:{port}"))
                        .unwrap()
                        .get_connection_with_timeout(Duration::from_secs(5))
                        .unwrap()
                })
                .collect(),
        }
    }

    fn flushall(&self) {
        match self {
            Deployment::Node(server) => {
                let () = redis::cmd("FLUSHALL")
                    .query(&mut server.connection())
                    .unwrap();
            }
            Deployment::Cluster(cluster) => cluster.flushall(),
        }
    }

    /// Kills every connection that tracks keys (the near cache's links);
    /// returns how many there were.
    fn kill_tracking_links(&self) -> usize {
        let mut killed = 0;
        for mut node in self.nodes() {
            let list: String = redis::cmd("CLIENT").arg("LIST").query(&mut node).unwrap();
            for line in list.lines() {
                let field = |name: &str| {
                    line.split_whitespace()
                        .find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
                        .unwrap_or_default()
                        .to_owned()
                };
                if field("flags").contains('t') {
                    let () = redis::cmd("CLIENT")
                        .arg("KILL")
                        .arg("ID")
                        .arg(field("id"))
                        .query(&mut node)
                        .unwrap();
                    killed += 1;
                }
            }
        }
        killed
    }
}

/// The bytes cachify stores for `value`: the MessagePack codec's tag
/// byte, then the MessagePack.
fn encoded(value: u64) -> Vec<u8> {
    let mut bytes = vec![b'M'];
    bytes.extend(rmp_serde::to_vec(&value).unwrap());
    bytes
}

static COMPUTED: AtomicU64 = AtomicU64::new(0);

/// A fresh number on every run, far from the values the tests write.
#[cached("item-{id}", ttl = 300, client = client)]
async fn item(client: &Cachify, id: &str) -> u64 {
    let _ = (client, id);
    1_000_000 + COMPUTED.fetch_add(1, Ordering::SeqCst)
}

/// Polls `read` until it returns what `accept` takes, for at most `limit`.
async fn eventually<F, Fut>(
    what: &str,
    limit: Duration,
    mut read: F,
    accept: impl Fn(u64) -> bool,
) -> u64
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = u64>,
{
    let started = Instant::now();
    loop {
        let value = read().await;
        if accept(value) {
            return value;
        }
        assert!(
            started.elapsed() < limit,
            "{what}: still {value} after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Reads `id` until a read is answered by the near cache (its links are
/// up and it holds a copy); returns the value.
async fn until_near_hit(client: &Cachify, id: &str) -> u64 {
    let started = Instant::now();
    loop {
        let before = client.stats().near_hits;
        let value = item(client, id).await;
        if client.stats().near_hits > before {
            return value;
        }
        assert!(
            started.elapsed() < TRACKING,
            "no near-cache hit on {id} within {TRACKING:?}: {:?}",
            client.stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A write, a `DEL`, expiry and `FLUSHALL` by others all reach the copy.
async fn changes_reach_the_copy(deployment: Deployment<'_>, prefix: &str) {
    let client = deployment.near_client(prefix).await;
    let key = format!("{prefix}cache:item-a");

    let first = until_near_hit(&client, "a").await;
    // Long enough for several rounds of the links' health checks, which
    // must not drop copies while nothing changes.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let hits = client.stats().near_hits;
    assert_eq!(item(&client, "a").await, first);
    assert!(
        client.stats().near_hits > hits,
        "a copy stays while nothing changes"
    );

    let invalidations = client.stats().near_invalidations;
    let () = deployment.run(redis::cmd("SET").arg(&key).arg(encoded(7)));
    eventually(
        "a SET by another client",
        ARRIVAL,
        || item(&client, "a"),
        |v| v == 7,
    )
    .await;
    assert!(client.stats().near_invalidations > invalidations);
    assert_eq!(
        until_near_hit(&client, "a").await,
        7,
        "the new value is kept"
    );

    let () = deployment.run(redis::cmd("DEL").arg(&key));
    let computed = eventually(
        "a DEL by another client",
        ARRIVAL,
        || item(&client, "a"),
        |v| v != 7,
    )
    .await;
    assert!(computed >= 1_000_000, "the function ran again: {computed}");

    // Expiry: the copy goes when the Redis entry does, whether or not Redis
    // has reported the expiry yet.
    let () = deployment.run(
        redis::cmd("SET")
            .arg(&key)
            .arg(encoded(8))
            .arg("PX")
            .arg(400),
    );
    let set_at = Instant::now();
    eventually(
        "a SET with a TTL",
        ARRIVAL,
        || item(&client, "a"),
        |v| v == 8,
    )
    .await;
    assert_eq!(until_near_hit(&client, "a").await, 8);
    let expired_by = set_at + Duration::from_millis(400);
    tokio::time::sleep_until(expired_by.into()).await;
    assert_ne!(
        item(&client, "a").await,
        8,
        "a copy never outlives the Redis TTL"
    );

    let before_flush = until_near_hit(&client, "a").await;
    deployment.flushall();
    let after = eventually(
        "FLUSHALL",
        ARRIVAL,
        || item(&client, "a"),
        |v| v != before_flush,
    )
    .await;
    assert!(after >= 1_000_000, "recomputed after FLUSHALL: {after}");
    assert_eq!(
        client.stats().errors,
        0,
        "no backend errors: {:?}",
        client.stats()
    );
}

/// Killing the tracking links never lets a stale copy through; the near
/// cache comes back by itself.
async fn lost_links_never_serve_stale(deployment: &Deployment<'_>, prefix: &str) {
    let client = deployment.near_client(prefix).await;
    let key = format!("{prefix}cache:item-b");
    for round in 0..3_u64 {
        until_near_hit(&client, "b").await;
        assert!(
            deployment.kill_tracking_links() >= 1,
            "a tracking link per primary"
        );
        tokio::time::sleep(NOTICE).await;
        let value = 100 + round;
        let () = deployment.run(redis::cmd("SET").arg(&key).arg(encoded(value)));
        assert_eq!(
            item(&client, "b").await,
            value,
            "round {round}: read after the link was killed and the key changed"
        );
    }
    assert_eq!(until_near_hit(&client, "b").await, 102, "tracking is back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_changes_reach_the_copy() {
    let server = RedisServer::start();
    changes_reach_the_copy(Deployment::Node(&server), "near-changes:").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_changes_reach_the_copy() {
    let cluster = RedisCluster::start();
    changes_reach_the_copy(Deployment::Cluster(&cluster), "near-changes:").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_killed_links_and_a_restart_never_serve_stale() {
    let mut server = RedisServer::start();
    let deployment = Deployment::Node(&server);
    lost_links_never_serve_stale(&deployment, "near-kill:").await;

    let client = deployment.near_client("near-restart:").await;
    let before = until_near_hit(&client, "c").await;
    server.restart();
    tokio::time::sleep(NOTICE).await;
    let after = item(&client, "c").await;
    assert_ne!(
        after, before,
        "the restarted server is empty: the copy must go"
    );
    let deployment = Deployment::Node(&server);
    let () = deployment.run(
        redis::cmd("SET")
            .arg("near-restart:cache:item-c")
            .arg(encoded(5)),
    );
    eventually(
        "a SET after the restart",
        ARRIVAL,
        || item(&client, "c"),
        |v| v == 5,
    )
    .await;
    assert_eq!(
        until_near_hit(&client, "c").await,
        5,
        "tracking is back after a restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_killed_links_and_a_failover_never_serve_stale() {
    let mut cluster = RedisCluster::start();
    lost_links_never_serve_stale(&Deployment::Cluster(&cluster), "near-kill:").await;

    let client = Deployment::Cluster(&cluster)
        .near_client("near-failover:")
        .await;
    let key = "near-failover:cache:item-d";
    let before = until_near_hit(&client, "d").await;
    let slot = RedisCluster::slot_of(key);
    let primary = cluster.port_serving_slot(slot);
    cluster.kill(primary);
    tokio::time::sleep(NOTICE).await;
    // Until the replica takes over, the key cannot change; the copy may be
    // served or not, but only with the value Redis still has.
    let during = item(&client, "d").await;
    assert!(during == before || during >= 1_000_000, "{during}");
    cluster.wait_for_failover(slot, Duration::from_secs(30));
    let deployment = Deployment::Cluster(&cluster);
    let () = deployment.run(redis::cmd("SET").arg(key).arg(encoded(6)));
    eventually(
        "a SET after the failover",
        Duration::from_secs(15),
        || item(&client, "d"),
        |v| v == 6,
    )
    .await;
    assert_eq!(
        until_near_hit(&client, "d").await,
        6,
        "tracking follows the new primary"
    );
}

// ---------------------------------------------------------------------------
// The coherence checker.

const ROLE_ENV: &str = "CACHIFY_NEAR_ROLE";
const TARGET_ENV: &str = "CACHIFY_NEAR_TARGET";
const BARRIER_ENV: &str = "CACHIFY_NEAR_BARRIER";
const LOG_ENV: &str = "CACHIFY_NEAR_LOG";
const INDEX_ENV: &str = "CACHIFY_NEAR_INDEX";
const READER: &str = "reader";
const WRITER: &str = "writer";
const READERS: usize = 3;
const WRITERS: usize = 2;
const KEYS: u64 = 8;
const RUN: Duration = Duration::from_secs(3);
/// One hash tag: on a cluster both live on the node the children poll.
const READY_KEY: &str = "{near-checker}-ready";
const GO_KEY: &str = "{near-checker}-go";
const PREFIX: &str = "near-checker:";
/// How far before its start a read may still see a replaced value: the
/// time an invalidation takes to arrive, with room for five busy processes
/// on two cores. The checker prints the largest lag it saw.
const ALLOWANCE_NS: u64 = 250_000_000;

/// Readers never store: a read of 0 means the key was absent.
#[cached("coherent-{key}", ttl = 60, client = client, unless = |_: &u64| true)]
async fn read_key(client: &Cachify, key: u64) -> u64 {
    let _ = (client, key);
    0
}

/// Writers store `version` after resetting the key.
#[cached("coherent-{key}", ttl = 60, client = client)]
async fn write_key(client: &Cachify, key: u64, version: u64) -> u64 {
    let _ = (client, key);
    version
}

fn child_client(target: &str) -> Cachify {
    let builder = if target.contains(',') {
        Cachify::builder().redis_cluster(target.split(','))
    } else {
        Cachify::builder().redis(target)
    };
    builder
        .prefix(PREFIX)
        .near_cache(1_000)
        .command_timeout(Duration::from_secs(2))
        .build_blocking()
        .unwrap()
}

/// A small xorshift: the children need cheap, seeded randomness only.
struct Random(u64);

impl Random {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[test]
#[ignore = "a child process of the coherence checker"]
fn child() {
    let Ok(role) = std::env::var(ROLE_ENV) else {
        eprintln!("{ROLE_ENV} is not set: this runs only as a child of the checker");
        return;
    };
    let _deadline = Deadline::new(Duration::from_secs(60), "a near_cache child");
    let target = std::env::var(TARGET_ENV).unwrap();
    let index: u64 = std::env::var(INDEX_ENV).unwrap().parse().unwrap();
    let log_path = PathBuf::from(std::env::var(LOG_ENV).unwrap());
    let client = child_client(&target);
    let mut redis = redis::Client::open(std::env::var(BARRIER_ENV).unwrap())
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(5))
        .unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // The links come up before the start, so reads use the near cache.
    runtime.block_on(async {
        let private = 1_000 + index;
        write_key(&client, private, 1).await;
        let started = Instant::now();
        while client.stats().near_hits == 0 {
            assert_eq!(read_key(&client, private).await, 1);
            assert!(started.elapsed() < TRACKING, "the near cache never came up");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    barrier(&mut redis, READY_KEY, GO_KEY, Duration::from_secs(30));
    let mut log = String::new();
    let mut random = Random(0x9E37_79B9_7F4A_7C15 ^ ((index + 1) * 0x1000_0001));
    let until = Instant::now() + RUN;
    runtime.block_on(async {
        if role == READER {
            while Instant::now() < until {
                let key = random.below(KEYS);
                let start = now_ns();
                let value = read_key(&client, key).await;
                let end = now_ns();
                log += &format!("r {key} {value} {start} {end}\n");
            }
        } else {
            let owned: Vec<u64> = (0..KEYS)
                .filter(|key| key % WRITERS as u64 == index)
                .collect();
            let mut version = 0;
            while Instant::now() < until {
                let key = owned[random.below(owned.len() as u64) as usize];
                let start = now_ns();
                write_key_reset(&client, key).await.unwrap();
                let end = now_ns();
                log += &format!("d {key} 0 {start} {end}\n");
                if random.below(5) > 0 {
                    version += 1;
                    let start = now_ns();
                    let written = write_key(&client, key, version).await;
                    let end = now_ns();
                    assert_eq!(written, version, "the writer's own key was absent");
                    log += &format!("s {key} {version} {start} {end}\n");
                }
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        }
    });
    let stats = client.stats();
    log += &format!(
        "stats {} {} {} {}\n",
        stats.near_hits, stats.near_misses, stats.near_invalidations, stats.errors
    );
    std::fs::write(log_path, log).unwrap();
}

/// One operation or read from a child's log.
struct Line {
    kind: char,
    key: u64,
    value: u64,
    start: u64,
    end: u64,
}

fn parse(text: &str) -> (Vec<Line>, Vec<[u64; 4]>) {
    let mut lines = Vec::new();
    let mut stats = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let numbers: Vec<u64> = fields[1..]
            .iter()
            .map(|field| field.parse().unwrap())
            .collect();
        if fields[0] == "stats" {
            stats.push([numbers[0], numbers[1], numbers[2], numbers[3]]);
        } else {
            lines.push(Line {
                kind: fields[0].chars().next().unwrap(),
                key: numbers[0],
                value: numbers[1],
                start: numbers[2],
                end: numbers[3],
            });
        }
    }
    (lines, stats)
}

/// The states a key went through, in order: `(value, began no earlier
/// than, ended no later than)`. Value 0 is "absent".
fn timeline(operations: &[&Line]) -> Vec<(u64, u64, u64)> {
    let mut states = vec![(0, 0, u64::MAX)];
    for operation in operations {
        if let Some(last) = states.last_mut() {
            last.2 = operation.end;
        }
        states.push((operation.value, operation.start, u64::MAX));
    }
    states
}

fn check_coherence(deployment: &Deployment<'_>, target: &str, barrier_url: &str, name: &str) {
    let dir = std::env::temp_dir().join(format!("cachify-near-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut children = Children::new(&dir, &[(TARGET_ENV, target), (BARRIER_ENV, barrier_url)]);
    let mut logs = Vec::new();
    for (role, count) in [(READER, READERS), (WRITER, WRITERS)] {
        for index in 0..count {
            let log = dir.join(format!("{role}-{index}.log"));
            let index = index.to_string();
            children.spawn(&[
                (ROLE_ENV, role),
                (INDEX_ENV, &index),
                (LOG_ENV, &log.display().to_string()),
            ]);
            logs.push(log);
        }
    }
    let mut barrier_connection = redis::Client::open(barrier_url)
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(5))
        .unwrap();
    children.wait_until("every child is ready", Duration::from_secs(40), || {
        redis::cmd("GET")
            .arg(READY_KEY)
            .query::<Option<usize>>(&mut barrier_connection)
            .unwrap()
            .unwrap_or(0)
            == READERS + WRITERS
    });
    let () = redis::cmd("SET")
        .arg(GO_KEY)
        .arg(1)
        .query(&mut barrier_connection)
        .unwrap();
    children.wait_for_success(None, Duration::from_secs(40));
    let _ = deployment;

    let mut reads = Vec::new();
    let mut writes: HashMap<u64, Vec<Line>> = HashMap::new();
    let mut stats = Vec::new();
    for log in &logs {
        let (lines, child_stats) = parse(&std::fs::read_to_string(log).unwrap());
        stats.extend(child_stats);
        for line in lines {
            match line.kind {
                'r' => reads.push(line),
                _ => writes.entry(line.key).or_default().push(line),
            }
        }
    }
    let timelines: HashMap<u64, Vec<(u64, u64, u64)>> = writes
        .iter()
        .map(|(key, operations)| (*key, timeline(&operations.iter().collect::<Vec<_>>())))
        .collect();
    let absent_only = vec![(0, 0, u64::MAX)];
    let mut violations = Vec::new();
    let mut largest_lag = 0;
    let mut values_read = 0;
    for read in &reads {
        let states = timelines.get(&read.key).unwrap_or(&absent_only);
        let candidates = states.iter().filter(|(value, ..)| *value == read.value);
        // How long before the read's start the newest matching state ended
        // (0 if it was still current): the read's staleness.
        let lag = candidates
            .filter(|(_, began, _)| *began <= read.end)
            .map(|(_, _, ended)| read.start.saturating_sub(*ended))
            .min();
        match lag {
            Some(lag) if lag <= ALLOWANCE_NS => largest_lag = largest_lag.max(lag),
            _ => violations.push(format!(
                "key {} read {} during [{}, {}] (lag {lag:?} ns)",
                read.key, read.value, read.start, read.end
            )),
        }
        if read.value > 0 {
            values_read += 1;
        }
    }
    let near_hits: u64 = stats.iter().take(READERS).map(|s| s[0]).sum();
    let invalidations: u64 = stats.iter().take(READERS).map(|s| s[2]).sum();
    let errors: u64 = stats.iter().map(|s| s[3]).sum();
    println!(
        "{name}: {} reads ({values_read} of a value), {} writes, {near_hits} near hits, {invalidations} invalidations in readers, largest lag {:.3} ms",
        reads.len(),
        writes.values().map(Vec::len).sum::<usize>(),
        largest_lag as f64 / 1e6
    );
    assert!(
        violations.is_empty(),
        "{name}: {} stale reads, first: {:#?}",
        violations.len(),
        &violations[..violations.len().min(10)]
    );
    assert_eq!(stats.len(), READERS + WRITERS, "every child reported");
    assert_eq!(errors, 0, "no backend errors");
    assert!(
        reads.len() > 1_000,
        "enough reads to mean something: {}",
        reads.len()
    );
    assert!(values_read > 100, "reads saw written values: {values_read}");
    assert!(near_hits > 100, "the near cache answered: {near_hits}");
    assert!(
        invalidations > 100,
        "the readers got invalidations: {invalidations}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn node_coherence_checker() {
    let server = RedisServer::start();
    let url = server.url();
    check_coherence(&Deployment::Node(&server), &url, &url, "node");
}

#[test]
fn cluster_coherence_checker() {
    let cluster = support::cluster::shared_cluster();
    let seeds = cluster.seeds().join(",");
    let port = cluster.port_serving_slot(RedisCluster::slot_of(READY_KEY));
    let barrier_url = format!("redis://127.0.0.1:{port}");
    check_coherence(
        &Deployment::Cluster(cluster),
        &seeds,
        &barrier_url,
        "cluster",
    );
}
