//! The global client when `cachify::init` was never called first.
//!
//! One test only: the global client is per process, and this binary must
//! touch it before any `init`.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cachify::{Cachify, Error};

/// Log lines written through `tracing`, kept for inspection.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn global_before_init_is_a_memory_client_and_init_is_then_refused() {
    let logs = Captured::default();
    let writer = logs.clone();
    tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

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

    // Exactly one warning, however often the fallback was used.
    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let warnings = logs
        .lines()
        .filter(|line| line.contains("WARN") && line.contains("falling back"))
        .count();
    assert_eq!(warnings, 1, "logs:\n{logs}");
}
