//! The typed fast path: `#[cached]` functions whose key values are all
//! integers, `bool` or `char` answer repeated in-process hits through an
//! index of their arguments. Every change that reaches the in-process
//! values must reach those hits too.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cachify::{Cachify, cached};

static RUNS: AtomicU64 = AtomicU64::new(0);

fn run() -> u64 {
    RUNS.fetch_add(1, Ordering::SeqCst) + 1
}

/// Defines `by_id` (and `by_id_reset`) in the calling module: each test
/// gets its own function, so the first client it uses claims it, whatever
/// the tests running beside it do.
macro_rules! by_id {
    () => {
        #[cached("typed-{id}", client = client)]
        fn by_id(client: &Cachify, id: u64) -> (u64, u64) {
            let _ = client;
            (id, run())
        }

        /// Three calls: a miss, a hit through the rendered key (which
        /// indexes the entry), and a typed hit.
        #[allow(dead_code, reason = "not every test warms")]
        fn warm(client: &Cachify, id: u64) -> (u64, u64) {
            let first = by_id(client, id);
            assert_eq!(by_id(client, id), first);
            assert_eq!(by_id(client, id), first);
            first
        }
    };
}

#[cached("typed-short-{id}", ttl = Duration::from_millis(200), client = client)]
fn short(client: &Cachify, id: u32) -> u64 {
    let _ = (client, id);
    run()
}

#[cached("typed-mixed-{flag}-{letter}-{n}", client = client)]
async fn mixed(client: &Cachify, flag: bool, letter: char, n: i64) -> String {
    let _ = client;
    format!("{flag}/{letter}/{n}/{}", run())
}

#[cached("typed-constant", client = client)]
fn constant(client: &Cachify) -> u64 {
    let _ = client;
    run()
}

fn memory() -> Cachify {
    Cachify::builder().memory().build_blocking().unwrap()
}

#[test]
fn typed_hits_follow_resets_and_clears() {
    by_id!();
    let client = memory();
    let first = warm(&client, 1);
    let hits = client.stats().hits;
    assert_eq!(by_id(&client, 1), first);
    assert_eq!(client.stats().hits, hits + 1, "a typed hit counts as a hit");

    by_id_reset(&client, 1).unwrap();
    let second = by_id(&client, 1);
    assert_ne!(second, first, "a reset reaches the typed hit");
    assert_eq!(by_id(&client, 1), second);
    assert_eq!(by_id(&client, 1), second);

    client.clear_blocking().unwrap();
    let third = by_id(&client, 1);
    assert_ne!(third, second, "clear() reaches the typed hit");

    let other = warm(&client, 2);
    assert_eq!(other.0, 2, "another argument, another entry");
    assert_eq!(by_id(&client, 1), third);
}

#[test]
fn typed_hits_expire_with_their_entry() {
    let client = memory();
    let first = short(&client, 7);
    assert_eq!(short(&client, 7), first);
    assert_eq!(short(&client, 7), first);
    let started = Instant::now();
    std::thread::sleep(Duration::from_millis(250));
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert_ne!(short(&client, 7), first, "expired");
}

#[test]
fn evicted_entries_are_not_served() {
    by_id!();
    let client = Cachify::builder()
        .memory()
        .max_entries(50)
        .build_blocking()
        .unwrap();
    let first = warm(&client, 1_000);
    for id in 0..2_000 {
        by_id(&client, id);
    }
    // Either still held, or evicted and computed afresh: never a stale
    // value for a key the store no longer holds.
    let now = by_id(&client, 1_000);
    assert!(now == first || now.1 > first.1);
    by_id_reset(&client, 1_000).unwrap();
    assert_ne!(by_id(&client, 1_000), first);
}

#[tokio::test]
async fn several_key_types_and_no_key() {
    let client = memory();
    let a = mixed(&client, true, 'x', -3).await;
    assert_eq!(mixed(&client, true, 'x', -3).await, a);
    assert_eq!(mixed(&client, true, 'x', -3).await, a);
    assert!(a.starts_with("true/x/-3/"));
    for (flag, letter, n) in [(false, 'x', -3), (true, 'y', -3), (true, 'x', 3)] {
        let other = mixed(&client, flag, letter, n).await;
        assert!(
            other.starts_with(&format!("{flag}/{letter}/{n}/")),
            "{other}"
        );
        assert_ne!(other, a);
    }

    let c = constant(&client);
    assert_eq!(constant(&client), c);
    assert_eq!(constant(&client), c);
    constant_reset(&client).unwrap();
    assert_ne!(constant(&client), c);
}

#[test]
fn a_second_client_at_the_same_function_gets_its_own_values() {
    by_id!();
    let (first, second) = (memory(), memory());
    let a = warm(&first, 5);
    let b = warm(&second, 5);
    assert_ne!(a, b, "two memory clients hold their own entries");
    assert_eq!(by_id(&first, 5), a);
    assert_eq!(by_id(&second, 5), b);
    drop(first);
    assert_eq!(by_id(&second, 5), b);
}

/// The near cache's copies take the typed path too: a write elsewhere
/// reaches a typed hit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_near_hits_follow_writes_elsewhere() {
    by_id!();
    let server = support::RedisServer::start();
    let client = Cachify::builder()
        .redis(server.url())
        .prefix("typed-near:")
        .near_cache(100)
        .build()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let first = loop {
        let before = client.stats().near_hits;
        let value = by_id(&client, 9);
        if client.stats().near_hits > before {
            break value;
        }
        assert!(
            Instant::now() < deadline,
            "no near hits: {:?}",
            client.stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // Typed hits from here on (the entry was indexed by the near hit).
    let hits = client.stats().near_hits;
    assert_eq!(by_id(&client, 9), first);
    assert_eq!(client.stats().near_hits, hits + 1);
    let mut encoded = vec![b'M'];
    encoded.extend(rmp_serde::to_vec(&(9_u64, 424_242_u64)).unwrap());
    let () = redis::cmd("SET")
        .arg("typed-near:cache:typed-9")
        .arg(encoded)
        .query(&mut server.connection())
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let value = by_id(&client, 9);
        if value == (9, 424_242) {
            break;
        }
        assert_eq!(value, first);
        assert!(
            Instant::now() < deadline,
            "the write never reached the typed hit"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
