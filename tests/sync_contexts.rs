//! Sync functions work with no runtime, inside a multi-thread runtime and
//! inside a current-thread runtime (what `#[tokio::test]` gives): no
//! "cannot start a runtime from within a runtime" panic, no deadlock.

mod support;

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};

use cachify::{Cachify, cached, lock, once};

fn client() -> &'static Cachify {
    static CLIENT: OnceLock<Cachify> = OnceLock::new();
    CLIENT.get_or_init(|| {
        Cachify::builder()
            .redis(support::shared_server().url())
            .build_blocking()
            .unwrap()
    })
}

/// Runs per context: the tests run in parallel, each with its own context.
static RUNS: Mutex<BTreeMap<String, u32>> = Mutex::new(BTreeMap::new());

fn runs(context: &str) -> u32 {
    RUNS.lock().unwrap().get(context).copied().unwrap_or(0)
}

#[cached("ctx-cached-{context}-{n}", client = client())]
fn cached_sync(context: &str, n: u32) -> u32 {
    *RUNS.lock().unwrap().entry(context.to_owned()).or_default() += 1;
    n + 1
}

#[once("ctx-once-{context}", client = client())]
fn once_sync(context: &str) -> Result<bool, cachify::Error> {
    once_sync_is_locked(context)
}

#[lock("ctx-lock-{context}", wait = 1, client = client())]
fn lock_sync(context: &str) -> Result<bool, cachify::Error> {
    lock_sync_is_locked(context)
}

/// Every sync entry point, from whatever context calls it.
fn exercise(context: &str) {
    assert_eq!(cached_sync(context, 1), 2);
    assert_eq!(cached_sync(context, 1), 2);
    assert_eq!(runs(context), 1, "second call was a Redis hit");
    cached_sync_reset(context, 1).unwrap();
    assert_eq!(cached_sync(context, 1), 2);
    assert_eq!(runs(context), 2);

    assert!(once_sync(context).unwrap(), "held while running");
    assert!(!once_sync_is_locked(context).unwrap(), "released after");
    assert!(lock_sync(context).unwrap());
    lock_sync_release(context).unwrap();

    let guard = client()
        .lock(format!("ctx-value-{context}"))
        .acquire_blocking()
        .unwrap();
    guard.release_blocking().unwrap();
}

#[test]
fn without_a_runtime() {
    exercise("none");
}

#[tokio::test(flavor = "current_thread")]
async fn inside_a_current_thread_runtime() {
    exercise("current");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inside_a_multi_thread_runtime() {
    exercise("multi");
}

#[test]
fn inside_a_blocking_task_and_nested_runtimes() {
    let outer = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    outer.block_on(async {
        tokio::task::spawn_blocking(|| exercise("blocking"))
            .await
            .unwrap();
        // A sync call from async code while the runtime also has async work pending.
        let ticker = tokio::spawn(async { tokio::task::yield_now().await });
        exercise("mixed");
        ticker.await.unwrap();
    });
}

#[test]
fn memory_client_without_a_runtime() {
    let memory = Cachify::builder().memory().build_blocking().unwrap();
    let guard = memory.lock("m").acquire_blocking().unwrap();
    assert!(matches!(
        memory.lock("m").acquire_blocking(),
        Err(cachify::Error::Locked { .. })
    ));
    guard.release_blocking().unwrap();
}
