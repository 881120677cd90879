//! A hash slot migrating between two primaries, by hand, with cachify in
//! use throughout.
//!
//! Resharding a Redis Cluster moves one slot at a time: the target is marked
//! `IMPORTING`, the source `MIGRATING`, the keys are `MIGRATE`d one batch at
//! a time, and finally every node is told the target owns the slot. While
//! that runs, the source answers `-ASK` for a key it no longer has, and a
//! client must send `ASKING` and the command to the target; once it is over,
//! the source answers `-MOVED` and the client must refresh its slot map.
//! A client that gets either wrong turns every read of a migrating key into
//! an error (a miss that reruns the function), for as long as a reshard
//! takes. This test stops halfway, with one key moved, and checks the cache
//! and the locks there and after the end.
//!
//! Locks are the exception, by design of Redis: a lock's grant script
//! touches two keys (the lock and its fencing counter), and Redis refuses
//! multi-key commands while their slot is split between two nodes. So a
//! lock in a migrating slot fails closed (`Error::Backend`) until the
//! migration ends, and works again after.
//!
//! It starts its own cluster: it changes slot ownership, which would disturb
//! any other test using [`support::cluster::shared_cluster`].

mod support;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cachify::{Cachify, Stats};
use redis::{ErrorKind, ServerErrorKind};
use support::Deadline;
use support::cluster::RedisCluster;

/// Bounds every call into cachify: a hang fails the test instead of blocking it.
const STEP: Duration = Duration::from_secs(5);
/// Bounds every raw command to one node (connect and reply).
const NODE_LIMIT: Duration = Duration::from_secs(2);
/// How many times a `CLUSTER SETSLOT` is tried before the test gives up: a
/// node may briefly refuse while it processes the gossip of the others.
const SETSLOT_ATTEMPTS: usize = 20;
/// How long the nodes may take to agree on the new owner of the slot.
const AGREE_TIMEOUT: Duration = Duration::from_secs(15);
/// The pause between two looks at the cluster while waiting for it.
const POLL: Duration = Duration::from_millis(100);
/// How far to search for key names that share a slot (plenty: 200 000 lock
/// names cover nearly all 16 384 slots, so the first cache key finds a partner).
const SEARCH_LOCKS: u64 = 200_000;
const SEARCH_ITEMS: u64 = 1_000;

const PREFIX: &str = "mig:";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_and_locks_follow_a_slot_through_migration() {
    // Starting a cluster blocks for seconds; keep the runtime's other worker free.
    let cluster = tokio::task::block_in_place(RedisCluster::start);
    // Everything after the cluster is up: a few dozen bounded steps.
    let _deadline = Deadline::new(Duration::from_secs(180), "the slot migration test");

    let client = within(
        "building the cluster client",
        Cachify::builder()
            .redis_cluster(cluster.seeds())
            .prefix(PREFIX)
            .command_timeout(Duration::from_millis(500))
            .build(),
    )
    .await
    .expect("connect cachify to the test cluster");

    static RUNS: AtomicU64 = AtomicU64::new(0);

    #[cachify::cached("item-{n}", ttl = 600, client = client)]
    async fn item(client: &Cachify, n: u64) -> u64 {
        RUNS.fetch_add(1, Ordering::SeqCst);
        n + 1000
    }

    let runs = || RUNS.load(Ordering::SeqCst);

    // --- 2. One slot for a cache key and a lock (and so its fencing counter).
    let (n, m) = keys_sharing_a_slot();
    let cache_key = format!("{PREFIX}cache:item-{n}");
    let lock_name = format!("job-{m}");
    let lock_key = format!("{PREFIX}lock:{lock_name}");
    let fence_key = format!("{PREFIX}fence:{{{lock_key}}}");
    let slot = RedisCluster::slot_of(&cache_key);
    assert_eq!(RedisCluster::slot_of(&lock_key), slot);
    assert_eq!(RedisCluster::slot_of(&fence_key), slot);

    let source = cluster.port_serving_slot(slot);
    let target = *cluster
        .primaries()
        .iter()
        .find(|&&port| port != source)
        .expect("the test cluster has three primaries");
    let all_nodes = node_ports(&cluster);
    let source_id: String = on_node(source, redis::cmd("CLUSTER").arg("MYID"))
        .await
        .expect("CLUSTER MYID on the source");
    let target_id: String = on_node(target, redis::cmd("CLUSTER").arg("MYID"))
        .await
        .expect("CLUSTER MYID on the target");
    println!(
        "slot {slot}: cache key {cache_key:?}, lock key {lock_key:?}, fence key {fence_key:?}; \
         source 127.0.0.1:{source} ({source_id}), target 127.0.0.1:{target} ({target_id}); \
         nodes {all_nodes:?}"
    );

    // --- 3. The value, written through cachify, on the source.
    assert_eq!(within("the first call", item(&client, n)).await, n + 1000);
    assert_eq!(runs(), 1, "the first call runs the body");
    assert_eq!(within("the second call", item(&client, n)).await, n + 1000);
    assert_eq!(runs(), 1, "the second call, before any migration, is a hit");
    let stored: Option<Vec<u8>> = on_node(source, redis::cmd("GET").arg(&cache_key))
        .await
        .expect("GET on the source before the migration");
    let stored = stored.expect("cachify stored the value on the slot's owner");
    println!(
        "before the migration the source holds {cache_key:?} ({} bytes)",
        stored.len()
    );

    // --- 4. Half a migration: both sides marked, only the cache key moved.
    setslot(target, slot, &["IMPORTING", &source_id]).await;
    setslot(source, slot, &["MIGRATING", &target_id]).await;
    migrate(source, target, std::slice::from_ref(&cache_key)).await;

    let on_source = on_node::<Option<Vec<u8>>>(source, redis::cmd("GET").arg(&cache_key)).await;
    println!("raw GET on the source after MIGRATE: {on_source:?}");
    match &on_source {
        Err(error) => assert!(
            error.kind() == ErrorKind::Server(ServerErrorKind::Ask) && error.code() == Some("ASK"),
            "the source should redirect with ASK, got {error:?}"
        ),
        Ok(value) => panic!("the source should redirect with ASK, it answered {value:?}"),
    }
    let unasked = on_node::<Option<Vec<u8>>>(target, redis::cmd("GET").arg(&cache_key)).await;
    println!("raw GET on the target without ASKING: {unasked:?}");
    assert!(
        matches!(&unasked, Err(error) if error.code() == Some("MOVED")),
        "the target does not own the slot yet and redirects a plain GET back: {unasked:?}"
    );
    let asked = asking_get(target, &cache_key).await;
    println!(
        "ASKING + GET on the target: {:?}",
        asked.as_ref().map(|value| value.as_ref().map(Vec::len))
    );
    assert_eq!(
        asked.expect("ASKING + GET on the target"),
        Some(stored.clone()),
        "the target holds the migrated value"
    );

    // From here on, what cachify does is collected, so that one run shows
    // every step that went wrong, with Redis's own error texts.
    let mut findings = Findings::default();
    let stats_before = client.stats();

    // --- 5a. A read of the moved key must follow ASK to the target.
    let before = runs();
    let value = within("a cached call while the slot migrates", item(&client, n)).await;
    let after = client.stats();
    println!(
        "half-migrated: cached call returned {value}, body runs {before} -> {}, stats {after:?}",
        runs()
    );
    findings.check(value == n + 1000, || {
        format!("half-migrated read returned {value}")
    });
    findings.check(runs() == before, || {
        format!(
            "half-migrated: the cached call reran the body (runs {before} -> {}): the read of \
             {cache_key:?} did not follow ASK to the target; stats {after:?}",
            runs()
        )
    });
    findings.check_no_new_errors("half-migrated cached read", &stats_before, &after);

    // --- 5b. A lock in the migrating slot, whose key does not exist anywhere.
    // Its grant script touches two keys (the lock and its fencing counter),
    // which Redis refuses while their slot is split between two nodes
    // (`-ASK`, then `-TRYAGAIN`): the lock must fail closed, promptly.
    lock_round(
        &client,
        &lock_name,
        &lock_key,
        source,
        target,
        &mut findings,
        "half-migrated",
        Expect::FailsClosed,
    )
    .await;

    // --- 5c. `_reset` (a DEL that must follow ASK), then a miss that refills.
    let stats_reset = client.stats();
    let reset = within("item_reset while the slot migrates", item_reset(&client, n)).await;
    println!("half-migrated: item_reset -> {reset:?}");
    findings.check(reset.is_ok(), || {
        format!("half-migrated: item_reset failed: {reset:?}")
    });
    let before = runs();
    let value = within("a cached call after the reset", item(&client, n)).await;
    println!(
        "half-migrated: call after reset returned {value}, body runs {before} -> {}",
        runs()
    );
    findings.check(value == n + 1000, || {
        format!("after the reset the call returned {value}")
    });
    findings.check(runs() == before + 1, || {
        format!(
            "half-migrated: after item_reset the call should miss and run the body once \
             (runs {before} -> {})",
            runs()
        )
    });
    let before = runs();
    let value = within("a cached call after the refill", item(&client, n)).await;
    findings.check(value == n + 1000 && runs() == before, || {
        format!(
            "half-migrated: the refilled value should be a hit (returned {value}, runs \
             {before} -> {})",
            runs()
        )
    });
    findings.check_no_new_errors(
        "half-migrated reset and refill",
        &stats_reset,
        &client.stats(),
    );
    let refilled = asking_get(target, &cache_key).await;
    println!(
        "half-migrated: the refilled entry on the target (ASKING + GET): {:?}",
        refilled.as_ref().map(|value| value.as_ref().map(Vec::len))
    );

    // --- 6. Finish: move whatever is left in the slot, then hand it over.
    let left: Vec<String> = on_node(
        source,
        redis::cmd("CLUSTER")
            .arg("GETKEYSINSLOT")
            .arg(slot)
            .arg(1000),
    )
    .await
    .expect("CLUSTER GETKEYSINSLOT on the source");
    println!("keys of slot {slot} still on the source before the hand-over: {left:?}");
    if !left.is_empty() {
        migrate(source, target, &left).await;
    }
    setslot(target, slot, &["NODE", &target_id]).await;
    setslot(source, slot, &["NODE", &target_id]).await;
    for &port in all_nodes
        .iter()
        .filter(|&&port| port != source && port != target)
    {
        setslot_on_other(port, slot, &target_id).await;
    }
    wait_until_all_agree(&all_nodes, slot, target).await;
    println!("every node says 127.0.0.1:{target} serves slot {slot}");

    let on_source = on_node::<Option<Vec<u8>>>(source, redis::cmd("GET").arg(&cache_key)).await;
    println!("raw GET on the source after the hand-over: {on_source:?}");
    assert!(
        matches!(&on_source, Err(error) if error.code() == Some("MOVED")),
        "the old owner should redirect with MOVED: {on_source:?}"
    );

    // cachify's slot map still names the source: it must follow MOVED.
    let stats_after = client.stats();
    for round in 0..3 {
        let before = runs();
        let value = within("a cached call after the migration", item(&client, n)).await;
        findings.check(value == n + 1000 && runs() == before, || {
            format!(
                "after the migration, call {round} should hit (returned {value}, runs \
                 {before} -> {}); stats {:?}",
                runs(),
                client.stats()
            )
        });
    }
    findings.check_no_new_errors(
        "cached reads after the migration",
        &stats_after,
        &client.stats(),
    );
    lock_round(
        &client,
        &lock_name,
        &lock_key,
        source,
        target,
        &mut findings,
        "migrated",
        Expect::Granted,
    )
    .await;

    let on_target: Option<Vec<u8>> = on_node(target, redis::cmd("GET").arg(&cache_key))
        .await
        .expect("a plain GET on the new owner");
    let through_cluster: Option<Vec<u8>> = tokio::task::block_in_place(|| {
        let mut connection = cluster.connection();
        redis::cmd("GET").arg(&cache_key).query(&mut connection)
    })
    .expect("GET through a fresh cluster connection");
    println!(
        "after the migration: on the target {:?} bytes, through a fresh cluster connection {:?} \
         bytes",
        on_target.as_ref().map(Vec::len),
        through_cluster.as_ref().map(Vec::len)
    );
    findings.check(on_target.is_some(), || {
        format!("after the migration {cache_key:?} is not on the target")
    });
    findings.check(through_cluster == on_target, || {
        "a fresh cluster connection reads something else than the target holds".to_owned()
    });

    let total = client.stats();
    println!(
        "body runs {}; stats over the whole test {total:?}; since the migration began: errors +{}",
        runs(),
        total.errors - stats_before.errors
    );
    findings.assert_none();
}

/// Takes and releases the lock `name`, and records what went wrong. While
/// it is held, reports where Redis keeps it (a raw `GET` on the source
/// answers it, or `-ASK`s to the target).
#[allow(clippy::too_many_arguments)]
async fn lock_round(
    client: &Cachify,
    name: &str,
    key: &str,
    source: u16,
    target: u16,
    findings: &mut Findings,
    when: &str,
    expect: Expect,
) {
    let stats = client.stats();
    let started = Instant::now();
    let acquired = within("acquiring the lock", client.lock(name).acquire()).await;
    if let Expect::FailsClosed = expect {
        println!(
            "{when}: acquiring lock {key:?} -> {acquired:?} after {:?}",
            started.elapsed()
        );
        findings.check(matches!(acquired, Err(cachify::Error::Backend(_))), || {
            format!("{when}: lock {key:?} did not fail closed: {acquired:?}")
        });
        findings.check(started.elapsed() < STEP, || {
            format!("{when}: refusing lock {key:?} took {:?}", started.elapsed())
        });
        let left = on_node::<Option<String>>(source, redis::cmd("GET").arg(key)).await;
        findings.check(matches!(left, Ok(None) | Err(_)), || {
            format!("{when}: a refused lock left {key:?} on the source: {left:?}")
        });
        return;
    }
    match acquired {
        Ok(guard) => {
            let on_source = on_node::<Option<String>>(source, redis::cmd("GET").arg(key)).await;
            let on_target = asking_get(target, key).await;
            println!(
                "{when}: lock {:?} acquired, fencing token {}; raw GET on the source: \
                 {on_source:?}; ASKING + GET on the target: {}",
                guard.key(),
                guard.fencing_token(),
                match &on_target {
                    Ok(Some(_)) => "present".to_owned(),
                    other => format!("{other:?}"),
                }
            );
            findings.check(guard.key() == key, || {
                format!(
                    "{when}: the lock key is {:?}, expected {key:?}",
                    guard.key()
                )
            });
            let released = within("releasing the lock", guard.release()).await;
            println!("{when}: release -> {released:?}");
            findings.check(released.is_ok(), || {
                format!("{when}: releasing lock {key:?} failed: {released:?}")
            });
        }
        Err(error) => {
            println!(
                "{when}: acquiring lock {key:?} FAILED after {:?}: {error} ({error:?})",
                started.elapsed()
            );
            // What Redis itself answers a two-key script on these keys: the
            // source, then the target after ASKING.
            let fence = format!("{PREFIX}fence:{{{key}}}");
            let mut probe = redis::cmd("EVAL");
            probe
                .arg("return redis.call('EXISTS', KEYS[1], KEYS[2])")
                .arg(2)
                .arg(key)
                .arg(&fence);
            let from_source = on_node::<i64>(source, &probe).await;
            let from_target = asking::<i64>(target, &probe).await;
            println!(
                "{when}: a raw two-key EVAL on {key:?} and {fence:?}: source {from_source:?}, \
                 target after ASKING {from_target:?}"
            );
            findings.push(format!(
                "{when}: acquiring lock {key:?} (slot {}) failed after {:?}: {error} \
                 ({error:?}). The lock script touches two keys of the slot, the lock and \
                 its fencing counter {fence:?}; Redis answers such a script on these keys \
                 with {from_source:?} on the source and {from_target:?} on the target \
                 after ASKING",
                RedisCluster::slot_of(key),
                started.elapsed()
            ));
        }
    }
    findings.check_no_new_errors(&format!("{when} lock round"), &stats, &client.stats());
}

/// What a lock round must see.
enum Expect {
    /// The lock is taken and released.
    Granted,
    /// The lock is refused with `Error::Backend`, in bounded time.
    FailsClosed,
}

/// Expectations about cachify that failed, gathered so that one run
/// reports every step of the migration that went wrong, not just the first.
/// Failures of the test's own set-up (a `SETSLOT` refused, say) panic at once.
#[derive(Default)]
struct Findings(Vec<String>);

impl Findings {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            self.push(what());
        }
    }

    fn push(&mut self, finding: String) {
        println!("FINDING: {finding}");
        self.0.push(finding);
    }

    /// cachify counts every failed backend operation; a redirection it
    /// followed is not one.
    fn check_no_new_errors(&mut self, what: &str, before: &Stats, after: &Stats) {
        self.check(after.errors == before.errors, || {
            format!(
                "{what}: cachify counted {} backend error(s); stats {after:?}",
                after.errors - before.errors
            )
        });
    }

    fn assert_none(self) {
        assert!(
            self.0.is_empty(),
            "cachify misbehaved while a slot migrated:\n- {}",
            self.0.join("\n- ")
        );
    }
}

/// A cache key `mig:cache:item-<n>` and a lock name `job-<m>` whose lock key
/// `mig:lock:job-<m>` hash to the same slot.
fn keys_sharing_a_slot() -> (u64, u64) {
    let mut lock_of_slot: HashMap<u16, u64> = HashMap::new();
    for m in 0..SEARCH_LOCKS {
        lock_of_slot
            .entry(RedisCluster::slot_of(&format!("{PREFIX}lock:job-{m}")))
            .or_insert(m);
    }
    (0..SEARCH_ITEMS)
        .find_map(|n| {
            let slot = RedisCluster::slot_of(&format!("{PREFIX}cache:item-{n}"));
            lock_of_slot.get(&slot).map(|&m| (n, m))
        })
        .expect("some cache key shares a slot with some lock key")
}

/// The ports of all six nodes, from the seed URLs `redis://127.0.0.1:<port>`.
fn node_ports(cluster: &RedisCluster) -> Vec<u16> {
    cluster
        .seeds()
        .iter()
        .map(|seed| {
            seed.rsplit(':')
                .next()
                .and_then(|port| port.trim_end_matches('/').parse().ok())
                .unwrap_or_else(|| panic!("no port in the seed {seed:?}"))
        })
        .collect()
}

/// Awaits `future` for at most [`STEP`]; panics, naming `what`, if it hangs.
async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {STEP:?}"))
}

/// Runs one command on the node at `port` over a new plain (non-cluster)
/// connection, so redirections come back as errors instead of being followed.
async fn on_node<T: redis::FromRedisValue>(
    port: u16,
    command: &redis::Cmd,
) -> redis::RedisResult<T> {
    with_node(port, async |connection| {
        command.query_async(connection).await
    })
    .await
}

/// `ASKING` then `command` on one connection to `port`, as a client that
/// followed an `-ASK` would: the importing node then answers for the slot.
async fn asking<T: redis::FromRedisValue>(
    port: u16,
    command: &redis::Cmd,
) -> redis::RedisResult<T> {
    with_node(port, async |connection| {
        let (reply,): (T,) = redis::pipe()
            .cmd("ASKING")
            .ignore()
            .add_command(command.clone())
            .query_async(connection)
            .await?;
        Ok(reply)
    })
    .await
}

/// Runs `talk` on a new connection to the node at `port` alone, bounded by
/// [`NODE_LIMIT`].
async fn with_node<T>(
    port: u16,
    talk: impl AsyncFnOnce(&mut redis::aio::MultiplexedConnection) -> redis::RedisResult<T>,
) -> redis::RedisResult<T> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
    let run = async {
        let mut connection = client.get_multiplexed_async_connection().await?;
        talk(&mut connection).await
    };
    tokio::time::timeout(NODE_LIMIT, run)
        .await
        .unwrap_or_else(|_| panic!("127.0.0.1:{port} did not answer within {NODE_LIMIT:?}"))
}

/// `ASKING` then `GET key` on `port`.
async fn asking_get(port: u16, key: &str) -> redis::RedisResult<Option<Vec<u8>>> {
    asking(port, redis::cmd("GET").arg(key)).await
}

/// `CLUSTER SETSLOT <slot> <how...>` on `port`, retried a bounded number of
/// times; panics with the last refusal.
async fn setslot(port: u16, slot: u16, how: &[&str]) {
    let mut command = redis::cmd("CLUSTER");
    command.arg("SETSLOT").arg(slot).arg(how);
    let mut last = None;
    for _ in 0..SETSLOT_ATTEMPTS {
        match on_node::<String>(port, &command).await {
            Ok(_) => {
                println!(
                    "CLUSTER SETSLOT {slot} {} on 127.0.0.1:{port}: OK",
                    how.join(" ")
                );
                return;
            }
            Err(error) => last = Some(error),
        }
        tokio::time::sleep(POLL).await;
    }
    panic!(
        "CLUSTER SETSLOT {slot} {} on 127.0.0.1:{port} refused {SETSLOT_ATTEMPTS} times; \
         last: {last:?}",
        how.join(" ")
    );
}

/// `CLUSTER SETSLOT <slot> NODE <owner>` on a node that neither gives nor
/// takes the slot. Redis refuses it on a replica ("Please use SETSLOT only
/// with masters"); a replica learns the new owner from its primary's gossip
/// instead, which [`wait_until_all_agree`] waits for.
async fn setslot_on_other(port: u16, slot: u16, owner_id: &str) {
    let mut command = redis::cmd("CLUSTER");
    command.arg("SETSLOT").arg(slot).arg("NODE").arg(owner_id);
    let mut last = None;
    for _ in 0..SETSLOT_ATTEMPTS {
        match on_node::<String>(port, &command).await {
            Ok(_) => {
                println!("CLUSTER SETSLOT {slot} NODE on 127.0.0.1:{port}: OK");
                return;
            }
            Err(error) if error.to_string().contains("only with masters") => {
                println!("CLUSTER SETSLOT {slot} NODE on 127.0.0.1:{port}: a replica, skipped");
                return;
            }
            Err(error) => last = Some(error),
        }
        tokio::time::sleep(POLL).await;
    }
    panic!(
        "CLUSTER SETSLOT {slot} NODE {owner_id} on 127.0.0.1:{port} refused \
         {SETSLOT_ATTEMPTS} times; last: {last:?}"
    );
}

/// `MIGRATE`s `keys` from `source` to `target` (database 0, 5 s timeout).
async fn migrate(source: u16, target: u16, keys: &[String]) {
    let reply: String = on_node(
        source,
        redis::cmd("MIGRATE")
            .arg("127.0.0.1")
            .arg(target)
            .arg("")
            .arg(0)
            .arg(5000)
            .arg("KEYS")
            .arg(keys),
    )
    .await
    .unwrap_or_else(|error| panic!("MIGRATE {keys:?} from {source} to {target}: {error}"));
    println!("MIGRATE {keys:?} from 127.0.0.1:{source} to 127.0.0.1:{target}: {reply}");
    assert_eq!(reply, "OK", "MIGRATE moved the keys");
}

/// Waits, for at most [`AGREE_TIMEOUT`], until every node's `CLUSTER NODES`
/// says `owner` serves `slot` and no node still marks it as migrating or
/// importing; panics with the last view otherwise.
async fn wait_until_all_agree(ports: &[u16], slot: u16, owner: u16) {
    let started = Instant::now();
    let mut last_seen = String::new();
    while started.elapsed() < AGREE_TIMEOUT {
        let mut agreed = true;
        for &port in ports {
            let nodes = on_node::<String>(port, redis::cmd("CLUSTER").arg("NODES")).await;
            let ok = match &nodes {
                Ok(text) => {
                    serving_port(text, slot) == Some(owner) && !text.contains(&format!("[{slot}-"))
                }
                Err(_) => false,
            };
            if !ok {
                last_seen = format!("CLUSTER NODES on 127.0.0.1:{port}: {nodes:?}");
                agreed = false;
                break;
            }
        }
        if agreed {
            return;
        }
        tokio::time::sleep(POLL).await;
    }
    panic!(
        "the nodes did not agree that {owner} serves slot {slot} within {AGREE_TIMEOUT:?}; last seen: {last_seen}"
    );
}

/// The port of the primary that serves `slot` in a `CLUSTER NODES` reply
/// (`<id> <ip:port@cport> <flags> <primary> <ping> <pong> <epoch> <link>
/// <slot>...`, a slot being `n`, `n-m`, or `[n->-id]`/`[n-<-id]` while it
/// migrates, which does not count as serving).
fn serving_port(text: &str, slot: u16) -> Option<u16> {
    text.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let primary = fields.get(2)?.split(',').any(|flag| flag == "master");
        let serves = fields.iter().skip(8).any(|range| {
            if range.starts_with('[') {
                return false;
            }
            let (first, last) = range.split_once('-').unwrap_or((range, range));
            match (first.parse::<u16>(), last.parse::<u16>()) {
                (Ok(first), Ok(last)) => (first..=last).contains(&slot),
                _ => false,
            }
        });
        if !(primary && serves) {
            return None;
        }
        fields
            .get(1)?
            .split('@')
            .next()?
            .rsplit(':')
            .next()?
            .parse()
            .ok()
    })
}
