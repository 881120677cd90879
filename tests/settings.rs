//! Builder settings take effect in the macros: `default_ttl`, `lock_ttl`,
//! `prefix`, `max_entries`; and the Redis connection comes back by itself.

mod support;

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use cachify::{Cachify, cached, once};

fn memory_with_default_ttl() -> &'static Cachify {
    static CLIENT: OnceLock<Cachify> = OnceLock::new();
    CLIENT.get_or_init(|| {
        Cachify::builder()
            .memory()
            .default_ttl(Duration::from_millis(200))
            .build_blocking()
            .unwrap()
    })
}

fn redis_with_settings() -> &'static Cachify {
    static CLIENT: OnceLock<Cachify> = OnceLock::new();
    CLIENT.get_or_init(|| {
        Cachify::builder()
            .redis(support::shared_server().url())
            .prefix("app7:")
            .default_ttl(Duration::from_secs(40))
            .lock_ttl(Duration::from_secs(7))
            .build_blocking()
            .unwrap()
    })
}

static STAMPS: AtomicU32 = AtomicU32::new(0);

#[cached("stamp", client = memory_with_default_ttl())]
fn stamp() -> u32 {
    STAMPS.fetch_add(1, Ordering::SeqCst)
}

#[test]
fn default_ttl_applies_when_the_attribute_sets_none() {
    assert_eq!(stamp(), 0);
    assert_eq!(stamp(), 0);
    let deadline = Instant::now() + Duration::from_secs(5);
    while stamp() == 0 {
        assert!(Instant::now() < deadline, "the entry never expired");
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[cached("settings-{id}", client = redis_with_settings())]
fn settings_value(id: u32) -> u32 {
    id
}

#[cached("settings-short-{id}", ttl = 5, client = redis_with_settings())]
fn settings_short(id: u32) -> u32 {
    id
}

#[once("settings-job", client = redis_with_settings())]
fn settings_job() -> Result<i64, cachify::Error> {
    let mut raw = support::shared_server().connection();
    Ok(redis::cmd("PTTL")
        .arg("app7:once:settings-job")
        .query(&mut raw)
        .unwrap())
}

#[test]
fn prefix_default_ttl_and_lock_ttl_reach_redis() {
    let mut raw = support::shared_server().connection();
    settings_value(1);
    let ttl: i64 = redis::cmd("PTTL")
        .arg("app7:cache:settings-1")
        .query(&mut raw)
        .unwrap();
    assert!(
        (35_000..=40_000).contains(&ttl),
        "default_ttl 40 s, PTTL {ttl}"
    );

    settings_short(1);
    let ttl: i64 = redis::cmd("PTTL")
        .arg("app7:cache:settings-short-1")
        .query(&mut raw)
        .unwrap();
    assert!(
        (1..=5_000).contains(&ttl),
        "the attribute's ttl wins, PTTL {ttl}"
    );

    let lease = settings_job().unwrap();
    assert!(
        (5_000..=7_000).contains(&lease),
        "lock_ttl 7 s is the lease, PTTL {lease}"
    );
}

#[test]
fn the_memory_backend_is_bounded() {
    let small = Cachify::builder()
        .memory()
        .max_entries(50)
        .build_blocking()
        .unwrap();
    static RUNS: AtomicU32 = AtomicU32::new(0);

    #[cached("bounded-{n}", client = small_client())]
    fn bounded(n: u32) -> u32 {
        RUNS.fetch_add(1, Ordering::SeqCst);
        n
    }
    static SMALL: OnceLock<Cachify> = OnceLock::new();
    fn small_client() -> &'static Cachify {
        SMALL.get().expect("set by the test")
    }
    SMALL.set(small).unwrap();

    for n in 0..2_000 {
        bounded(n);
    }
    let before = RUNS.load(Ordering::SeqCst);
    for n in 0..2_000 {
        bounded(n);
    }
    let reruns = RUNS.load(Ordering::SeqCst) - before;
    // At most 50 entries can still be there, so almost everything runs again.
    assert!(
        reruns >= 2_000 - 100,
        "only {reruns} of 2000 ran again: the cache kept too much"
    );
}

/// A server this test can restart on the same port.
static RESTARTABLE: support::OwnServer = support::OwnServer::new();

fn restartable_client() -> &'static Cachify {
    RESTARTABLE.client()
}

static RECONNECT_RUNS: AtomicU32 = AtomicU32::new(0);

#[cached("reconnect", client = restartable_client())]
async fn reconnecting() -> u32 {
    RECONNECT_RUNS.fetch_add(1, Ordering::SeqCst);
    7
}

#[tokio::test]
async fn caching_resumes_after_redis_restarts() {
    assert_eq!(reconnecting().await, 7);
    assert_eq!(reconnecting().await, 7);
    assert_eq!(RECONNECT_RUNS.load(Ordering::SeqCst), 1);

    RESTARTABLE.restart();

    // The restarted server is empty: the next calls run, store again, and
    // once the connection is back they are hits.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut hits_in_a_row = 0;
    while hits_in_a_row < 3 {
        assert!(
            Instant::now() < deadline,
            "caching never resumed after the restart"
        );
        let before = RECONNECT_RUNS.load(Ordering::SeqCst);
        assert_eq!(reconnecting().await, 7, "answers throughout");
        if RECONNECT_RUNS.load(Ordering::SeqCst) == before {
            hits_in_a_row += 1;
        } else {
            hits_in_a_row = 0;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut raw = RESTARTABLE.connection();
    let stored: bool = redis::cmd("EXISTS")
        .arg("cachify:cache:reconnect")
        .query(&mut raw)
        .unwrap();
    assert!(stored, "the hits come from the restarted server");
}
