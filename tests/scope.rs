//! `cachify::scope` and `cachify::scope_blocking`: code run in a scope sees
//! the scope's client in place of the global one, through the macros (async
//! and sync), their siblings, `cachify::global()` and `cachify::lock()`.
//!
//! No test here calls `cachify::init`: the global client, where one is
//! used, is the fallback memory client, shared by every test in this
//! binary. Each test uses its own key names on it.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cachify::{Cachify, cached};

/// A memory client whose prefix tells it apart.
fn memory(prefix: &str) -> Cachify {
    Cachify::builder()
        .memory()
        .prefix(prefix)
        .build_blocking()
        .unwrap()
}

/// The prefix of the client in force here.
fn in_force() -> String {
    cachify::global().prefix().to_owned()
}

/// Keyed by `n` only: which test stored the entry is in the value, so a
/// test that reads another test's entry gets the wrong label.
#[cached("label-{n}")]
async fn label(n: u32, who: &str) -> String {
    tokio::task::yield_now().await;
    who.to_owned()
}

/// The sync twin of [`label`].
#[cached("label-sync-{n}")]
fn label_sync(n: u32, who: &str) -> String {
    who.to_owned()
}

/// How many of the two flavour tests below have stored their values.
static ARRIVED: AtomicU32 = AtomicU32::new(0);

/// Lets the two flavour tests meet while both hold their values, so they
/// overlap when the harness runs them in parallel (the default). Waits at
/// most 5 s: run one at a time, the later test still finds the earlier
/// one's entries if the two share a client.
async fn meet_the_other_test() {
    ARRIVED.fetch_add(1, Ordering::SeqCst);
    for _ in 0..500 {
        if ARRIVED.load(Ordering::SeqCst) >= 2 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What each flavour test does with its own client: store, meet the other
/// test, then read back only its own values.
async fn own_values_only(who: &'static str) {
    let client = memory(&format!("{who}:"));
    cachify::scope(&client, async {
        assert_eq!(label(1, who).await, who);
        assert_eq!(label_sync(1, who), who, "a sync function inside `scope`");
        meet_the_other_test().await;
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
            assert_eq!(label(1, who).await, who, "across awaits");
            assert_eq!(label_sync(1, who), who);
            assert_eq!(in_force(), format!("{who}:"));
        }
    })
    .await;
    let stats = client.stats();
    assert_eq!(
        (stats.misses, stats.hits),
        (2, 6),
        "all on the scoped client"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_thread_test_sees_only_its_own_values() {
    // As a spawned task the scoped future is polled by the workers, not by
    // the test's own thread.
    tokio::spawn(own_values_only("multi")).await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn a_current_thread_test_sees_only_its_own_values() {
    own_values_only("current").await;
}

static RESETS: AtomicU32 = AtomicU32::new(0);

#[cached("reset-me-{n}")]
async fn counted(n: u32) -> u32 {
    RESETS.fetch_add(1, Ordering::SeqCst);
    n
}

#[tokio::test]
async fn reset_inside_a_scope_deletes_the_scoped_entry_only() {
    counted(1).await; // stored on the global client
    let runs_before = RESETS.load(Ordering::SeqCst);
    let client = memory("reset:");
    cachify::scope(&client, async {
        counted(1).await;
        counted(1).await;
        counted_reset(1).await.unwrap();
        counted(1).await;
    })
    .await;
    assert_eq!(
        RESETS.load(Ordering::SeqCst) - runs_before,
        2,
        "the scoped client missed, hit, was reset and missed again"
    );
    counted(1).await;
    assert_eq!(
        RESETS.load(Ordering::SeqCst) - runs_before,
        2,
        "the global entry was neither reset nor replaced"
    );
}

#[tokio::test]
async fn lock_inside_a_scope_is_the_scoped_clients_lock() {
    let (first, second) = (memory("lock-a:"), memory("lock-b:"));
    let guard = cachify::scope(&first, cachify::lock("shared-name").acquire())
        .await
        .unwrap();
    assert!(guard.key().starts_with("lock-a:"), "{}", guard.key());
    assert!(
        matches!(
            first.lock("shared-name").acquire().await,
            Err(cachify::Error::Locked { .. })
        ),
        "the scoped lock is held on the scoped client"
    );
    // A builder made outside any scope takes the lock of the scope it is
    // acquired in.
    let builder = cachify::lock("shared-name");
    let other = cachify::scope(&second, builder.acquire()).await.unwrap();
    assert!(other.key().starts_with("lock-b:"));
    other.release().await.unwrap();
    let unscoped = cachify::lock("shared-name").acquire().await.unwrap();
    assert!(unscoped.key().starts_with("cachify:"));
    unscoped.release().await.unwrap();
    guard.release().await.unwrap();
}

static SYNC_RUNS: Mutex<Vec<String>> = Mutex::new(Vec::new());

#[cached("square-{n}")]
fn square(n: u64) -> u64 {
    SYNC_RUNS.lock().unwrap().push(in_force());
    n * n
}

#[test]
fn scope_blocking_runs_sync_functions_on_the_scoped_client() {
    let client = memory("blocking:");
    let squares = cachify::scope_blocking(&client, || {
        let first = square(12);
        square_reset(12).unwrap();
        (first, square(12), square(12))
    });
    assert_eq!(squares, (144, 144, 144));
    let stats = client.stats();
    assert_eq!((stats.misses, stats.hits), (2, 1));
    let runs = SYNC_RUNS.lock().unwrap().clone();
    let here: Vec<_> = runs.iter().filter(|at| *at == "blocking:").collect();
    assert_eq!(here.len(), 2, "{runs:?}");
    assert_eq!(in_force(), "cachify:", "the scope ended with the call");
}

#[test]
fn nested_scopes_restore_the_outer_one() {
    let (outer, inner) = (memory("outer:"), memory("inner:"));
    assert_eq!(in_force(), "cachify:");
    cachify::scope_blocking(&outer, || {
        assert_eq!(in_force(), "outer:");
        cachify::scope_blocking(&inner, || assert_eq!(in_force(), "inner:"));
        assert_eq!(in_force(), "outer:");
    });
    assert_eq!(in_force(), "cachify:");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let seen = runtime.block_on(cachify::scope(&outer, async {
        let mut seen = vec![in_force()];
        let inner_seen = cachify::scope(&inner, async {
            tokio::task::yield_now().await;
            in_force()
        })
        .await;
        seen.push(inner_seen);
        tokio::task::yield_now().await;
        seen.push(in_force());
        seen
    }));
    assert_eq!(seen, ["outer:", "inner:", "outer:"]);
    assert_eq!(in_force(), "cachify:");
}

#[test]
fn a_panic_inside_scope_blocking_restores_the_outer_scope() {
    let (outer, inner) = (memory("calm:"), memory("panicky:"));
    cachify::scope_blocking(&outer, || {
        let panicked = catch_unwind(AssertUnwindSafe(|| {
            cachify::scope_blocking(&inner, || panic!("inside the inner scope"))
        }));
        assert!(panicked.is_err());
        assert_eq!(in_force(), "calm:");
    });
    let panicked = catch_unwind(AssertUnwindSafe(|| {
        cachify::scope_blocking(&inner, || panic!("inside the only scope"))
    }));
    assert!(panicked.is_err());
    assert_eq!(in_force(), "cachify:");
}

/// A task spawned inside a scope sees the global client, a scoped one
/// its own scope's.
async fn spawned_tasks_keep_out_of_the_scope(prefix: &str) {
    let client = memory(prefix);
    let (plain, scoped) = cachify::scope(&client, {
        let client = client.clone();
        async move {
            let plain = tokio::spawn(async { in_force() });
            let scoped = tokio::spawn(cachify::scope(&client, async { in_force() }));
            (plain.await.unwrap(), scoped.await.unwrap())
        }
    })
    .await;
    assert_eq!(plain, "cachify:");
    assert_eq!(scoped, prefix);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spawned_task_is_outside_the_scope_on_a_multi_thread_runtime() {
    spawned_tasks_keep_out_of_the_scope("spawner-multi:").await;
}

/// Here the spawned tasks run on the scoped future's own thread, while it
/// waits for them: the scope is in force only while its future is polled.
#[tokio::test(flavor = "current_thread")]
async fn a_spawned_task_is_outside_the_scope_on_a_current_thread_runtime() {
    spawned_tasks_keep_out_of_the_scope("spawner-current:").await;
}

/// Records the client in force when it is dropped.
struct DropProbe(Arc<Mutex<Option<String>>>);

impl Drop for DropProbe {
    fn drop(&mut self) {
        *self.0.lock().unwrap() = Some(in_force());
    }
}

#[tokio::test]
async fn a_cancelled_scoped_future_is_dropped_inside_its_scope() {
    let client = memory("dropped:");
    let seen = Arc::new(Mutex::new(None));
    let probe = DropProbe(Arc::clone(&seen));
    let never = cachify::scope(&client, async move {
        let _probe = probe;
        std::future::pending::<()>().await;
    });
    let timed_out = tokio::time::timeout(Duration::from_millis(20), never).await;
    assert!(timed_out.is_err());
    assert_eq!(seen.lock().unwrap().as_deref(), Some("dropped:"));
}
