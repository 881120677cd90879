//! A Redis Cluster whose nodes require a password: with the right one in the
//! seed URLs, caching, locks and `clear` work through every node the client
//! discovers (not only the seeds it was given); with a wrong one, or none,
//! `build` fails in bounded time; and the password never shows, neither in
//! an error nor in a client's `Debug`.

mod support;

use std::future::Future;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cachify::{Cachify, Error};
use support::cluster::RedisCluster;

/// The cluster's password: distinctive, so that finding it in a text means
/// it leaked.
const PASSWORD: &str = "cachify-cluster-pw-5e1c7";
/// A password the cluster does not accept, equally distinctive.
const WRONG_PASSWORD: &str = "not-the-cluster-pw-9b2d4";
/// Bounds every wait on the cluster: a hung call fails the test.
const CALL_LIMIT: Duration = Duration::from_secs(10);
/// The connect timeout given to clients that must fail.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// One password-protected cluster for this test binary; each test uses its
/// own key prefix.
fn cluster() -> &'static RedisCluster {
    static CLUSTER: OnceLock<RedisCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| RedisCluster::start_with_password(PASSWORD))
}

/// Awaits `future` for at most [`CALL_LIMIT`].
async fn bounded<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(CALL_LIMIT, future)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {CALL_LIMIT:?}"))
}

/// A client of the cluster with the right password in all six seeds.
async fn authenticated_client(prefix: &str) -> Cachify {
    client_of(cluster().seeds_with_password(), prefix).await
}

/// A client of the cluster through `seeds`, which must carry the password.
async fn client_of(seeds: Vec<String>, prefix: &str) -> Cachify {
    bounded(
        "build with the right password",
        Cachify::builder()
            .redis_cluster(seeds)
            .prefix(prefix)
            .build(),
    )
    .await
    .expect("connect to the password-protected cluster with its password")
}

/// The cluster's plain seeds with `password` put in.
fn seeds_with(password: &str) -> Vec<String> {
    cluster()
        .seeds()
        .into_iter()
        .map(|seed| seed.replacen("redis://", &format!("redis://:{password}@"), 1))
        .collect()
}

/// How many keys under `prefix` the cluster holds.
fn keys_under(prefix: &str) -> usize {
    keys_per_primary(prefix).iter().sum()
}

/// How many keys under `prefix` each primary holds (`KEYS` sees only the
/// node it runs on), over authenticated connections.
fn keys_per_primary(prefix: &str) -> Vec<usize> {
    cluster()
        .primaries()
        .into_iter()
        .map(|port| {
            let node = redis::Client::open(format!("redis://:{PASSWORD}@127.0.0.1:{port}"))
                .expect("a loopback URL parses");
            let mut connection = node
                .get_connection_with_timeout(Duration::from_secs(5))
                .expect("connect to a primary with the password");
            connection
                .set_read_timeout(Some(Duration::from_secs(5)))
                .expect("set a read timeout");
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{prefix}*"))
                .query(&mut connection)
                .expect("KEYS on a primary");
            keys.len()
        })
        .collect()
}

/// With the password, a `#[cached]` function runs once per argument and
/// then hits, on keys spread over the primaries; a lock is taken and given
/// back; and `clear` deletes, and counts, exactly the cached entries.
#[tokio::test]
async fn the_right_password_caches_locks_and_clears() {
    static RUNS: AtomicU64 = AtomicU64::new(0);

    #[cachify::cached("square-{n}", ttl = 60, client = client)]
    async fn square(client: &Cachify, n: u64) -> u64 {
        let _ = client;
        RUNS.fetch_add(1, Ordering::SeqCst);
        n * n
    }

    let client = authenticated_client("auth-ok:").await;
    // Enough arguments that their keys land on more than one primary.
    let arguments: Vec<u64> = (1..=8).collect();
    for &n in &arguments {
        assert_eq!(bounded("first call", square(&client, n)).await, n * n);
    }
    assert_eq!(RUNS.load(Ordering::SeqCst), 8, "one run per argument");
    let hits_before = client.stats().hits;
    for &n in &arguments {
        assert_eq!(bounded("second call", square(&client, n)).await, n * n);
    }
    assert_eq!(
        RUNS.load(Ordering::SeqCst),
        8,
        "the second calls hit the cache"
    );
    assert_eq!(client.stats().hits - hits_before, 8, "{:?}", client.stats());
    assert_eq!(keys_under("auth-ok:cache:"), 8, "the entries are in Redis");

    let guard = bounded("lock acquire", client.lock("x").acquire())
        .await
        .expect("take a lock on the password-protected cluster");
    assert!(guard.fencing_token() > 0);
    bounded("lock release", guard.release())
        .await
        .expect("release the lock");

    let deleted = bounded("clear", client.clear())
        .await
        .expect("clear on the password-protected cluster");
    assert_eq!(deleted, 8, "clear counts the entries it deleted");
    assert_eq!(keys_under("auth-ok:cache:"), 0, "and they are gone");

    assert_eq!(bounded("call after clear", square(&client, 3)).await, 9);
    assert_eq!(RUNS.load(Ordering::SeqCst), 9, "a cleared entry runs again");
}

/// Given a single seed, the client learns the other primaries from the
/// cluster and must authenticate to them as well: entries land on every
/// primary, read back as hits, and are all cleared.
#[tokio::test]
async fn one_seed_with_the_password_reaches_every_primary() {
    static RUNS: AtomicU64 = AtomicU64::new(0);

    #[cachify::cached("cube-{n}", ttl = 60, client = client)]
    async fn cube(client: &Cachify, n: u64) -> u64 {
        let _ = client;
        RUNS.fetch_add(1, Ordering::SeqCst);
        n * n * n
    }

    let seed = cluster().seeds_with_password().remove(0);
    let client = client_of(vec![seed], "auth-one-seed:").await;
    // 32 keys: the chance that three primaries' slot ranges do not all get
    // one is negligible, and the assertion below says so if it happens.
    for round in 0..2 {
        for n in 0..32 {
            assert_eq!(bounded("cube", cube(&client, n)).await, n * n * n);
        }
        assert_eq!(RUNS.load(Ordering::SeqCst), 32, "round {round}");
    }
    let spread = keys_per_primary("auth-one-seed:cache:");
    assert_eq!(spread.iter().sum::<usize>(), 32, "{spread:?}");
    assert!(
        spread.len() == 3 && spread.iter().all(|&keys| keys > 0),
        "every primary holds entries: {spread:?}"
    );
    for n in 0..3 {
        let guard = bounded(
            "lock acquire",
            client.lock(format!("one-seed-{n}")).acquire(),
        )
        .await
        .expect("take a lock through one seed");
        bounded("lock release", guard.release())
            .await
            .expect("release it");
    }
    let deleted = bounded("clear", client.clear()).await.expect("clear");
    assert_eq!(deleted, 32, "clear reaches every primary");
    assert_eq!(keys_under("auth-one-seed:cache:"), 0);
}

/// A wrong password is a backend error from `build`, in bounded time, and
/// no text of it holds the password, the wrong or the right one.
#[tokio::test]
async fn a_wrong_password_is_a_backend_error_that_hides_it() {
    cluster();
    let started = Instant::now();
    let refused = bounded(
        "build with a wrong password",
        Cachify::builder()
            .redis_cluster(seeds_with(WRONG_PASSWORD))
            .connect_timeout(CONNECT_TIMEOUT)
            .build(),
    )
    .await;
    let elapsed = started.elapsed();
    let error = refused.expect_err("a wrong password is refused");
    println!("wrong password, after {elapsed:?}: {error}");
    assert!(matches!(error, Error::Backend(_)), "{error:?}");
    for text in [error.to_string(), format!("{error:?}")] {
        assert!(!text.contains(WRONG_PASSWORD), "the password shows: {text}");
        assert!(!text.contains(PASSWORD), "a password shows: {text}");
    }
    assert!(
        elapsed < CONNECT_TIMEOUT + Duration::from_secs(3),
        "refused only after {elapsed:?}"
    );
}

/// No password at all is refused the same way.
#[tokio::test]
async fn no_password_is_a_backend_error() {
    let seeds = cluster().seeds();
    let started = Instant::now();
    let refused = bounded(
        "build without a password",
        Cachify::builder()
            .redis_cluster(seeds)
            .connect_timeout(CONNECT_TIMEOUT)
            .build(),
    )
    .await;
    let elapsed = started.elapsed();
    let error = refused.expect_err("a client without the password is refused");
    println!("no password, after {elapsed:?}: {error}");
    assert!(matches!(error, Error::Backend(_)), "{error:?}");
    assert!(
        elapsed < CONNECT_TIMEOUT + Duration::from_secs(3),
        "refused only after {elapsed:?}"
    );
}

/// `Debug` of a client, and of its builder, shows `***` for the password.
#[tokio::test]
async fn debug_never_shows_the_password() {
    let builder = Cachify::builder().redis_cluster(cluster().seeds_with_password());
    let shown = format!("{builder:?}");
    assert!(!shown.contains(PASSWORD), "the builder shows it: {shown}");
    assert!(shown.contains("***"), "{shown}");

    let client = authenticated_client("auth-debug:").await;
    for shown in [format!("{client:?}"), format!("{client:#?}")] {
        println!("{shown}");
        assert!(!shown.contains(PASSWORD), "the client shows it: {shown}");
        assert!(shown.contains("***"), "{shown}");
    }
}
