//! The global client when `cachify::init` was never called first.
//!
//! One test only: the global client is per process, and this binary must
//! touch it before any `init`.

use std::time::Duration;

use cachify::{Cachify, Error};

#[test]
fn global_before_init_is_a_memory_client_and_init_is_then_refused() {
    let first: &'static Cachify = cachify::global();
    assert_eq!(first.prefix(), "cachify:");
    assert_eq!(first.lock_ttl(), Duration::from_secs(30));
    assert_eq!(first.default_ttl(), None);
    assert!(
        format!("{first:?}").contains("memory"),
        "the fallback should be the memory client: {first:?}"
    );

    // The same client every time, not a new one per call.
    assert!(std::ptr::eq(first, cachify::global()));
    assert!(std::ptr::eq(
        first,
        std::thread::spawn(cachify::global).join().unwrap()
    ));

    // The fallback is a working client, shared by `cachify::lock`: a lock
    // taken through one is held for the other.
    let guard = cachify::lock("fallback").acquire_blocking().unwrap();
    assert_eq!(guard.key(), "cachify:lock:fallback");
    assert!(matches!(
        first.lock("fallback").acquire_blocking(),
        Err(Error::Locked { key }) if key == "cachify:lock:fallback"
    ));

    // `init` after the fallback is refused and changes nothing.
    let late = Cachify::builder()
        .memory()
        .prefix("late:")
        .build_blocking()
        .unwrap();
    assert!(matches!(
        cachify::init(late),
        Err(Error::AlreadyInitialized)
    ));
    assert!(std::ptr::eq(first, cachify::global()));
    assert_eq!(cachify::global().prefix(), "cachify:");
    // Still the same backend: the lock taken before `init` is still held.
    assert!(matches!(
        cachify::lock("fallback").acquire_blocking(),
        Err(Error::Locked { .. })
    ));
    guard.release_blocking().unwrap();
    cachify::lock("fallback")
        .acquire_blocking()
        .unwrap()
        .release_blocking()
        .unwrap();
}
