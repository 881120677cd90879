//! `#[cached(early_refresh = true)]`: under steady load a hot key is
//! recomputed in the background before it expires, so after the first
//! fill every call is a hit (none waits for the function), and it runs
//! about once per TTL in total, never twice at once, not once per caller. On memory, a single Redis node and the
//! cluster; async and sync; and with two clients on one Redis (two
//! "processes").

mod support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cachify::{Cachify, cached};

/// How long the function takes.
const WORK: Duration = Duration::from_millis(100);
/// How long the load lasts; the TTL is one second.
const LOAD: Duration = Duration::from_secs(5);
/// Load within the first TTL after the fill: refreshes start, and the
/// value is still fresh.
const FRESH_LOAD: Duration = Duration::from_millis(850);
/// Callers, each calling in a loop.
const CALLERS: usize = 4;
/// Each caller's pause between two calls.
const PAUSE: Duration = Duration::from_millis(10);
/// How many runs 5 s of load at a 1 s TTL may take: XFetch starts a
/// refresh a little ahead of expiry (more under more load), so between
/// once per TTL and twice; once per caller would be far more.
const RUNS: std::ops::RangeInclusive<u32> = 3..=11;

/// The runs of one function: how many, how many at once now, and how
/// many began while another was under way.
struct Runs {
    total: AtomicU32,
    running: AtomicU32,
    overlapping: AtomicU32,
}

impl Runs {
    const fn new() -> Self {
        Self {
            total: AtomicU32::new(0),
            running: AtomicU32::new(0),
            overlapping: AtomicU32::new(0),
        }
    }

    /// Counts a run until the guard drops.
    fn start(&'static self) -> Running {
        self.total.fetch_add(1, Ordering::SeqCst);
        if self.running.fetch_add(1, Ordering::SeqCst) > 0 {
            self.overlapping.fetch_add(1, Ordering::SeqCst);
        }
        Running(self)
    }
}

struct Running(&'static Runs);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Hits and misses the clients counted for one template.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Counted {
    hits: u64,
    misses: u64,
}

impl Counted {
    fn of(clients: &[&Cachify], template: &str) -> Self {
        let mut counted = Counted::default();
        for client in clients {
            for row in client.stats_by_template() {
                if row.template == template {
                    counted.hits += row.hits;
                    counted.misses += row.misses;
                }
            }
        }
        counted
    }

    fn since(self, before: Counted) -> Self {
        Counted {
            hits: self.hits - before.hits,
            misses: self.misses - before.misses,
        }
    }
}

/// What the callers saw: the slowest call, and how many calls there were.
#[derive(Default)]
struct Seen {
    slowest: Duration,
    calls: u64,
}

impl Seen {
    fn record(&mut self, took: Duration) {
        self.slowest = self.slowest.max(took);
        self.calls += 1;
    }

    /// No call waited for a run: every call during the load was a hit
    /// (`counted`: the hits and misses the clients counted for it); the
    /// function ran about once per TTL, and never twice at once.
    /// `before`: runs before the load.
    fn check(&self, runs: &Runs, before: u32, counted: Counted) {
        let overlapping = runs.overlapping.load(Ordering::SeqCst);
        assert_eq!(overlapping, 0, "runs that overlapped another");
        let runs = runs.total.load(Ordering::SeqCst) - before;
        assert!(self.calls > 100, "steady load: {} calls", self.calls);
        // A hit never waits for the function; a miss runs it or waits for
        // a run. Counted rather than timed: on a loaded machine a hit may
        // stall too, which is no wait for the function.
        assert_eq!(
            counted,
            Counted {
                hits: self.calls,
                misses: 0
            },
            "every call after the first fill is a hit (slowest call {:?}, a run takes {WORK:?})",
            self.slowest
        );
        assert!(
            RUNS.contains(&runs),
            "{runs} runs in {LOAD:?} at a 1 s TTL, outside {RUNS:?}"
        );
    }
}

/// Calls `call` from `CALLERS` tasks in a loop for `LOAD`.
async fn load_async<F, Fut>(call: F) -> Seen
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = u64> + Send,
{
    let seen = Arc::new(Mutex::new(Seen::default()));
    let end = Instant::now() + LOAD;
    let tasks: Vec<_> = (0..CALLERS)
        .map(|caller| {
            let (call, seen) = (call.clone(), Arc::clone(&seen));
            tokio::spawn(async move {
                while Instant::now() < end {
                    let started = Instant::now();
                    assert!(call(caller).await > 0);
                    seen.lock().unwrap().record(started.elapsed());
                    tokio::time::sleep(PAUSE).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    Arc::into_inner(seen).unwrap().into_inner().unwrap()
}

/// Calls `call` from `CALLERS` threads in a loop for `LOAD`.
fn load_sync(call: fn(usize) -> u64) -> Seen {
    let seen = Mutex::new(Seen::default());
    let end = Instant::now() + LOAD;
    std::thread::scope(|scope| {
        for caller in 0..CALLERS {
            let seen = &seen;
            scope.spawn(move || {
                while Instant::now() < end {
                    let started = Instant::now();
                    assert!(call(caller) > 0);
                    seen.lock().unwrap().record(started.elapsed());
                    std::thread::sleep(PAUSE);
                }
            });
        }
    });
    seen.into_inner().unwrap()
}

macro_rules! refresh_suite {
    () => {
        use super::*;

        static ASYNC_RUNS: Runs = Runs::new();

        #[cached("top-async", ttl = 1, early_refresh = true, client = client())]
        async fn top_async() -> u64 {
            let _run = ASYNC_RUNS.start();
            tokio::time::sleep(WORK).await;
            1
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn async_hot_key_never_waits_and_runs_about_once_per_ttl() {
            top_async().await;
            let before = Counted::of(&[client()], "top-async");
            let seen = load_async(|_| top_async()).await;
            let counted = Counted::of(&[client()], "top-async").since(before);
            seen.check(&ASYNC_RUNS, 1, counted);
        }

        static SYNC_RUNS: Runs = Runs::new();

        #[cached("top-sync", ttl = 1, early_refresh = true, client = client())]
        fn top_sync(region: String) -> u64 {
            let _run = SYNC_RUNS.start();
            std::thread::sleep(WORK);
            region.len() as u64
        }

        #[test]
        fn sync_hot_key_never_waits_and_runs_about_once_per_ttl() {
            top_sync("eu".into());
            let before = Counted::of(&[client()], "top-sync");
            let seen = load_sync(|_| top_sync("eu".into()));
            let counted = Counted::of(&[client()], "top-sync").since(before);
            seen.check(&SYNC_RUNS, 1, counted);
        }

        static FAILING_RUNS: Runs = Runs::new();

        /// Succeeds the first time only.
        #[cached("top-failing", ttl = 1, early_refresh = true, client = client())]
        async fn top_failing() -> Result<u64, String> {
            let _run = FAILING_RUNS.start();
            tokio::time::sleep(WORK).await;
            match FAILING_RUNS.total.load(Ordering::SeqCst) {
                1 => Ok(7),
                _ => Err("down".into()),
            }
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn async_failed_refreshes_keep_the_current_value() {
            assert_eq!(top_failing().await, Ok(7));
            let end = Instant::now() + FRESH_LOAD;
            let callers: Vec<_> = (0..CALLERS)
                .map(|_| {
                    tokio::spawn(async move {
                        while Instant::now() < end {
                            assert_eq!(top_failing().await, Ok(7));
                            tokio::time::sleep(PAUSE).await;
                        }
                    })
                })
                .collect();
            for caller in callers {
                caller.await.unwrap();
            }
            assert!(
                FAILING_RUNS.total.load(Ordering::SeqCst) > 1,
                "a refresh was tried"
            );
        }

        static FAILING_SYNC_RUNS: Runs = Runs::new();

        /// Succeeds the first time only.
        #[cached("top-failing-sync", ttl = 1, early_refresh = true, client = client())]
        fn top_failing_sync() -> Option<u64> {
            let _run = FAILING_SYNC_RUNS.start();
            std::thread::sleep(WORK);
            (FAILING_SYNC_RUNS.total.load(Ordering::SeqCst) == 1).then_some(7)
        }

        #[test]
        fn sync_failed_refreshes_keep_the_current_value() {
            assert_eq!(top_failing_sync(), Some(7));
            let end = Instant::now() + FRESH_LOAD;
            std::thread::scope(|scope| {
                for _ in 0..CALLERS {
                    scope.spawn(move || {
                        while Instant::now() < end {
                            assert_eq!(top_failing_sync(), Some(7));
                            std::thread::sleep(PAUSE);
                        }
                    });
                }
            });
            assert!(
                FAILING_SYNC_RUNS.total.load(Ordering::SeqCst) > 1,
                "a refresh was tried"
            );
        }
    };
}

/// Two clients on one Redis, as two processes: one function, its calls
/// spread over both.
macro_rules! two_clients_suite {
    () => {
        use super::*;

        fn pick(caller: usize) -> &'static Cachify {
            if caller % 2 == 0 { client() } else { second() }
        }

        static SHARED_RUNS: Runs = Runs::new();

        #[cached("top-shared", ttl = 1, early_refresh = true, client = pick(caller))]
        async fn top_shared(caller: usize) -> u64 {
            let _run = SHARED_RUNS.start();
            tokio::time::sleep(WORK).await;
            caller as u64 + 1
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn two_clients_run_it_about_once_per_ttl_in_total() {
            // The first fill, and the second client connected before the load.
            top_shared(0).await;
            top_shared(1).await;
            let before = Counted::of(&[client(), second()], "top-shared");
            let seen = load_async(top_shared).await;
            let counted = Counted::of(&[client(), second()], "top-shared").since(before);
            seen.check(&SHARED_RUNS, 1, counted);
        }

        static SHARED_SYNC_RUNS: Runs = Runs::new();

        #[cached("top-shared-sync", ttl = 1, early_refresh = true, client = pick(caller))]
        fn top_shared_sync(caller: usize) -> u64 {
            let _run = SHARED_SYNC_RUNS.start();
            std::thread::sleep(WORK);
            caller as u64 + 1
        }

        #[test]
        fn two_sync_clients_run_it_about_once_per_ttl_in_total() {
            top_shared_sync(0);
            top_shared_sync(1);
            let before = Counted::of(&[client(), second()], "top-shared-sync");
            let seen = load_sync(top_shared_sync);
            let counted = Counted::of(&[client(), second()], "top-shared-sync").since(before);
            seen.check(&SHARED_SYNC_RUNS, 1, counted);
        }
    };
}

mod memory {
    use super::*;

    fn client() -> &'static Cachify {
        static CLIENT: std::sync::OnceLock<Cachify> = std::sync::OnceLock::new();
        CLIENT.get_or_init(|| {
            Cachify::builder()
                .memory()
                .prefix("er:")
                .build_blocking()
                .unwrap()
        })
    }

    mod suite {
        use super::client;
        refresh_suite!();
    }
}

mod redis {
    use super::*;

    fn client() -> &'static Cachify {
        static CLIENT: std::sync::OnceLock<Cachify> = std::sync::OnceLock::new();
        CLIENT.get_or_init(|| {
            Cachify::builder()
                .redis(support::shared_server().url())
                .prefix("er:")
                .build_blocking()
                .unwrap()
        })
    }

    fn second() -> &'static Cachify {
        static CLIENT: std::sync::OnceLock<Cachify> = std::sync::OnceLock::new();
        CLIENT.get_or_init(|| {
            Cachify::builder()
                .redis(support::shared_server().url())
                .prefix("er:")
                .build_blocking()
                .unwrap()
        })
    }

    mod suite {
        use super::client;
        refresh_suite!();
    }

    mod two_clients {
        use super::{client, second};
        two_clients_suite!();
    }
}

mod cluster {
    use super::*;

    fn client() -> &'static Cachify {
        static CLIENT: std::sync::OnceLock<Cachify> = std::sync::OnceLock::new();
        CLIENT.get_or_init(|| {
            Cachify::builder()
                .redis_cluster(support::cluster::shared_cluster().seeds())
                .prefix("er:")
                .build_blocking()
                .unwrap()
        })
    }

    fn second() -> &'static Cachify {
        static CLIENT: std::sync::OnceLock<Cachify> = std::sync::OnceLock::new();
        CLIENT.get_or_init(|| {
            Cachify::builder()
                .redis_cluster(support::cluster::shared_cluster().seeds())
                .prefix("er:")
                .build_blocking()
                .unwrap()
        })
    }

    mod suite {
        use super::client;
        refresh_suite!();
    }

    mod two_clients {
        use super::{client, second};
        two_clients_suite!();
    }
}
