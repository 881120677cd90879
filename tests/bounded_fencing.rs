//! Fencing counters are bounded: a million distinct `#[once]` keys leave
//! no permanent key behind in Redis, and every counter expires once idle.

mod support;

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cachify::{Cachify, Error, once};
use support::RedisServer;

const KEYS: u64 = 1_000_000;
const TASKS: u64 = 64;
/// Longer than the test runs, so every counter is still there to inspect.
const FENCE_IDLE: Duration = Duration::from_secs(600);

fn server() -> &'static RedisServer {
    static SERVER: OnceLock<RedisServer> = OnceLock::new();
    SERVER.get_or_init(RedisServer::start)
}

fn client() -> &'static Cachify {
    static CLIENT: OnceLock<Cachify> = OnceLock::new();
    CLIENT.get_or_init(|| {
        Cachify::builder()
            .redis(server().url())
            .prefix("bounded:")
            .fence_idle(FENCE_IDLE)
            .build_blocking()
            .unwrap()
    })
}

#[once("update-user-{id}", client = client())]
async fn update_user(id: u64) -> Result<u64, Error> {
    Ok(id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_once_keys_leave_no_permanent_key() {
    let started = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            tokio::spawn(async move {
                let mut id = task;
                while id < KEYS {
                    assert_eq!(update_user(id).await.unwrap(), id);
                    id += TASKS;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    println!("{KEYS} distinct #[once] calls in {:?}", started.elapsed());

    let mut raw = server().connection();
    let mut cursor = 0u64;
    let (mut keys, mut permanent, mut fences) = (0u64, Vec::new(), 0u64);
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(10_000)
            .query(&mut raw)
            .unwrap();
        let mut ttls = redis::pipe();
        for key in &batch {
            ttls.cmd("PTTL").arg(key);
        }
        let ttls: Vec<i64> = ttls.query(&mut raw).unwrap();
        for (key, ttl) in batch.iter().zip(ttls) {
            keys += 1;
            if ttl == -1 {
                permanent.push(key.clone());
            }
            if key.starts_with("bounded:fence:") {
                fences += 1;
                assert!(
                    ttl > 0 && ttl <= FENCE_IDLE.as_millis() as i64,
                    "{key}: PTTL {ttl}"
                );
            }
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    assert!(
        permanent.is_empty(),
        "{} keys without expiry, such as {:?}",
        permanent.len(),
        &permanent[..permanent.len().min(5)]
    );
    assert_eq!(fences, KEYS, "one idle-expiring counter per lock name");
    assert_eq!(keys, KEYS, "every lock was released; only counters remain");
}
