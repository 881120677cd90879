//! `cachify::init` sets the global client once.
//!
//! One test only: the global client is per process, and this binary must
//! call `init` before anything touches it.

mod support;

use std::time::Duration;

use cachify::{Cachify, Error};
use support::RedisServer;

#[tokio::test]
async fn init_sets_the_global_client_once() {
    let server = RedisServer::start();
    let client = Cachify::builder()
        .redis(server.url())
        .prefix("x:")
        .lock_ttl(Duration::from_secs(12))
        .build()
        .await
        .unwrap();
    cachify::init(client).unwrap();

    let global = cachify::global();
    assert_eq!(global.prefix(), "x:");
    assert_eq!(global.lock_ttl(), Duration::from_secs(12));
    assert!(std::ptr::eq(global, cachify::global()));

    // A second init is refused and changes nothing.
    let second = Cachify::builder()
        .memory()
        .prefix("y:")
        .build()
        .await
        .unwrap();
    assert!(matches!(
        cachify::init(second),
        Err(Error::AlreadyInitialized)
    ));
    assert!(std::ptr::eq(global, cachify::global()));
    assert_eq!(cachify::global().prefix(), "x:");

    // `cachify::lock` goes through the initialised Redis client: the lock is
    // a key on that server, under its prefix, with its lock_ttl.
    let guard = cachify::lock("nightly").acquire().await.unwrap();
    assert_eq!(guard.key(), "x:lock:nightly");
    let mut raw = server.connection();
    let pttl: i64 = redis::cmd("PTTL")
        .arg("x:lock:nightly")
        .query(&mut raw)
        .unwrap();
    assert!(
        pttl > 0 && pttl <= 12_000,
        "PTTL {pttl} ms is not the client's 12 s lock_ttl"
    );
    guard.release().await.unwrap();
    let exists: bool = redis::cmd("EXISTS")
        .arg("x:lock:nightly")
        .query(&mut raw)
        .unwrap();
    assert!(!exists, "release did not delete the lock on the server");
}
