//! The test support's Redis Cluster: that it comes up whole, that its slot
//! arithmetic agrees with Redis, and that a killed primary is replaced.

mod support;

use std::time::{Duration, Instant};

use support::cluster::{RedisCluster, shared_cluster};

/// How long a failover may take: the node timeout is 1 s, and a replica
/// waits a little more before it asks to be promoted.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(30);

#[test]
fn the_cluster_comes_up_with_three_primaries() {
    let cluster = shared_cluster();
    let primaries = cluster.primaries();
    assert_eq!(primaries.len(), 3, "primaries: {primaries:?}");
    assert_eq!(cluster.seeds().len(), 6);
    for seed in cluster.seeds() {
        assert!(seed.starts_with("redis://127.0.0.1:"), "seed {seed}");
    }
}

#[test]
fn a_set_through_the_cluster_connection_is_readable() {
    let cluster = shared_cluster();
    let mut connection = cluster.connection();
    // Keys in different slots, so more than one primary is written.
    for key in ["cs:set:a", "cs:set:b", "cs:set:c", "cs:set:d"] {
        let () = redis::cmd("SET")
            .arg(key)
            .arg(format!("value of {key}"))
            .query(&mut connection)
            .unwrap();
        let read: String = redis::cmd("GET").arg(key).query(&mut connection).unwrap();
        assert_eq!(read, format!("value of {key}"));
    }
}

#[test]
fn slot_of_matches_cluster_keyslot() {
    // The check value of CRC16/XMODEM, and the slot Redis's docs give for it.
    assert_eq!(RedisCluster::slot_of("123456789"), 0x31C3);
    let mut connection = shared_cluster().connection();
    let keys = [
        "plain",
        "",
        "{user}:1",
        "{user}:2",
        "user",
        "a{}b",
        "{}{x}",
        "x{y}z",
        "{a}{b}",
        "{",
        "}{a}",
        "{{x}}",
        "ünïcode{ключ}",
    ];
    for key in keys {
        let redis_slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut connection)
            .unwrap();
        assert_eq!(RedisCluster::slot_of(key), redis_slot, "slot of {key:?}");
    }
    // A hash tag is what it is for: the same slot as the tag alone.
    assert_eq!(
        RedisCluster::slot_of("{user}:1"),
        RedisCluster::slot_of("user")
    );
    assert_eq!(RedisCluster::slot_of("x{y}z"), RedisCluster::slot_of("y"));
}

#[test]
fn a_killed_primary_is_replaced_and_the_data_survives() {
    // Its own cluster: killing a node of the shared one would disturb the
    // other tests.
    let started = Instant::now();
    let mut cluster = RedisCluster::start();
    eprintln!("own cluster ready after {:?}", started.elapsed());
    let key = "{failover}:key";
    let slot = RedisCluster::slot_of(key);
    let mut connection = cluster.connection();
    let () = redis::cmd("SET")
        .arg(key)
        .arg("kept")
        .query(&mut connection)
        .unwrap();
    // Routed to every primary, answered with the fewest replicas that
    // acknowledged: each primary's one replica has everything written so far.
    let acknowledged: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(1000)
        .query(&mut connection)
        .unwrap();
    assert_eq!(acknowledged, 1, "the write did not reach the replica");
    drop(connection);

    let old_primary = cluster.port_serving_slot(slot);
    cluster.kill(old_primary);
    let killed_at = Instant::now();
    let new_primary = cluster.wait_for_failover(slot, FAILOVER_TIMEOUT);
    eprintln!(
        "failover from {old_primary} to {new_primary} after {:?}",
        killed_at.elapsed()
    );
    assert_ne!(new_primary, old_primary);
    assert_eq!(cluster.port_serving_slot(slot), new_primary);
    assert!(cluster.primaries().contains(&new_primary));
    assert!(!cluster.primaries().contains(&old_primary));

    let mut fresh = cluster.connection();
    let read: String = redis::cmd("GET").arg(key).query(&mut fresh).unwrap();
    assert_eq!(read, "kept");

    cluster.flushall();
    let gone: Option<String> = redis::cmd("GET").arg(key).query(&mut fresh).unwrap();
    assert_eq!(gone, None, "FLUSHALL on every primary empties the cluster");
}
