//! `#[once]` and `#[lock]` behaviour on both backends, async and sync.

mod support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use cachify::{Cachify, Error, lock, once};

#[derive(Debug, PartialEq)]
pub enum AppError {
    Busy(u64),
    Cache(String),
}

impl From<Error> for AppError {
    fn from(error: Error) -> Self {
        AppError::Cache(match error {
            Error::Locked { key } => format!("locked {key}"),
            other => other.to_string(),
        })
    }
}

/// Polls `condition` every 10 ms for up to 5 s.
fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Async twin of [`eventually`].
async fn until(what: &str, mut condition: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

macro_rules! locking_suite {
    () => {
        use super::*;

        static UPDATES: AtomicU32 = AtomicU32::new(0);

        #[once("update-{user_id}", client = client(), return_on_locked = Err(AppError::Busy(user_id)))]
        async fn update_user(user_id: u64, hold: Duration) -> Result<u64, AppError> {
            UPDATES.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(hold).await;
            Ok(user_id)
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn once_refuses_while_running_and_frees_after() {
            assert!(!update_user_is_locked(1).await.unwrap());
            let running = tokio::spawn(update_user(1, Duration::from_millis(800)));
            until("the first update holds the lock", async || update_user_is_locked(1).await.unwrap()).await;
            assert_eq!(update_user(1, Duration::ZERO).await, Err(AppError::Busy(1)), "return_on_locked sees the arguments");
            assert_eq!(update_user(2, Duration::ZERO).await, Ok(2), "another key is free");
            assert_eq!(running.await.unwrap(), Ok(1));
            assert!(!update_user_is_locked(1).await.unwrap(), "released after the run");
            assert_eq!(update_user(1, Duration::ZERO).await, Ok(1));
            assert_eq!(UPDATES.load(Ordering::SeqCst), 3, "the refused call never ran");
        }

        #[once("plain-{id}", client = client())]
        async fn plain(id: u64, hold: Duration) -> Result<u64, AppError> {
            tokio::time::sleep(hold).await;
            Ok(id)
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn once_without_return_on_locked_is_err_locked() {
            let running = tokio::spawn(plain(5, Duration::from_millis(800)));
            until("the first call holds the lock", async || plain_is_locked(5).await.unwrap()).await;
            let refused = plain(5, Duration::ZERO).await.unwrap_err();
            let AppError::Cache(message) = refused else { panic!("expected a converted cachify error") };
            assert!(message.starts_with("locked ") && message.ends_with("once:plain-5"), "{message}");
            assert_eq!(running.await.unwrap(), Ok(5));
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn release_sibling_frees_a_held_lock() {
            let running = tokio::spawn(plain(6, Duration::from_millis(800)));
            until("the first call holds the lock", async || plain_is_locked(6).await.unwrap()).await;
            plain_release(6).await.unwrap();
            assert!(!plain_is_locked(6).await.unwrap());
            assert_eq!(plain(6, Duration::ZERO).await, Ok(6));
            assert_eq!(running.await.unwrap(), Ok(6), "the first holder still finishes");
        }

        static REPORTS: AtomicU32 = AtomicU32::new(0);

        #[lock("report-{id}", wait = 5, ttl = 30, client = client())]
        fn build_report(id: u64) -> Result<u32, AppError> {
            let order = REPORTS.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(150));
            Ok(order)
        }

        #[test]
        fn sync_lock_waits_its_turn() {
            let started = Instant::now();
            let mut orders: Vec<u32> = std::thread::scope(|scope| {
                let handles: Vec<_> = (0..3).map(|_| scope.spawn(|| build_report(1))).collect();
                handles.into_iter().map(|h| h.join().unwrap().unwrap()).collect()
            });
            orders.sort();
            assert_eq!(orders, vec![0, 1, 2], "all three ran, one at a time");
            assert!(started.elapsed() >= Duration::from_millis(400), "serialised: {:?}", started.elapsed());
            assert!(!build_report_is_locked(1).unwrap());
        }

        #[lock("impatient-{id}", wait = Duration::from_millis(200), client = client())]
        fn impatient(id: u64, hold: Duration) -> Result<u64, AppError> {
            std::thread::sleep(hold);
            Ok(id)
        }

        #[test]
        fn sync_lock_gives_up_after_wait() {
            std::thread::scope(|scope| {
                let holder = scope.spawn(|| impatient(1, Duration::from_millis(1500)));
                eventually("the holder has the lock", || impatient_is_locked(1).unwrap());
                let started = Instant::now();
                let refused = impatient(1, Duration::ZERO);
                let waited = started.elapsed();
                assert!(matches!(&refused, Err(AppError::Cache(m)) if m.starts_with("locked")), "{refused:?}");
                assert!(waited >= Duration::from_millis(180), "waited {waited:?}");
                assert!(waited < Duration::from_millis(1400), "gave up before the holder finished: {waited:?}");
                assert_eq!(holder.join().unwrap(), Ok(1));
            });
        }

        static SYNC_ONCE: AtomicU32 = AtomicU32::new(0);

        #[once("sync-once-{id}", client = client(), return_on_locked = Ok(0))]
        fn sync_once(id: u32) -> Result<u32, AppError> {
            SYNC_ONCE.fetch_add(1, Ordering::SeqCst);
            // Long enough for all six threads to try while it runs.
            std::thread::sleep(Duration::from_millis(1000));
            Ok(id)
        }

        #[test]
        fn sync_once_runs_one_of_many() {
            let results: Vec<u32> = std::thread::scope(|scope| {
                let handles: Vec<_> = (0..6).map(|_| scope.spawn(|| sync_once(9).unwrap())).collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            assert_eq!(results.iter().filter(|r| **r == 9).count(), 1, "{results:?}");
            assert_eq!(results.iter().filter(|r| **r == 0).count(), 5, "{results:?}");
            assert_eq!(SYNC_ONCE.load(Ordering::SeqCst), 1);
        }

        #[once("long-{id}", ttl = Duration::from_millis(600), client = client(), return_on_locked = None)]
        async fn long_job(id: u64) -> Option<u64> {
            tokio::time::sleep(Duration::from_millis(2400)).await;
            Some(id)
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn watchdog_keeps_a_short_lease_while_the_job_runs() {
            let running = tokio::spawn(long_job(1));
            // Three leases later the job still runs, and still holds its lock.
            tokio::time::sleep(Duration::from_millis(1800)).await;
            assert!(long_job_is_locked(1).await.unwrap());
            assert_eq!(long_job(1).await, None, "refused: the lease was renewed");
            assert_eq!(running.await.unwrap(), Some(1));
            assert!(!long_job_is_locked(1).await.unwrap());
        }

        #[lock("panicky-{id}", client = client())]
        fn panicky(id: u64) -> Result<u64, AppError> {
            if id == 1 {
                panic!("the job failed");
            }
            Ok(id)
        }

        #[test]
        fn a_panicking_holder_releases_its_lock() {
            let outcome = std::panic::catch_unwind(|| panicky(1));
            assert!(outcome.is_err(), "the panic reaches the caller");
            eventually("the lock is released", || !panicky_is_locked(1).unwrap());
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn a_cancelled_holder_releases_its_lock() {
            let cancelled = tokio::time::timeout(Duration::from_millis(100), plain(77, Duration::from_secs(10))).await;
            assert!(cancelled.is_err(), "the call was cancelled");
            let deadline = Instant::now() + Duration::from_secs(5);
            while plain_is_locked(77).await.unwrap() {
                assert!(Instant::now() < deadline, "lock never released after cancellation");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert_eq!(plain(77, Duration::ZERO).await, Ok(77));
        }
    };
}

mod memory {
    use super::*;

    fn client() -> &'static Cachify {
        static CLIENT: std::sync::OnceLock<Cachify> = std::sync::OnceLock::new();
        CLIENT.get_or_init(|| Cachify::builder().memory().build_blocking().unwrap())
    }

    mod suite {
        use super::client;
        locking_suite!();
    }
}

mod cluster {
    use super::*;

    fn client() -> &'static Cachify {
        static CLIENT: std::sync::OnceLock<Cachify> = std::sync::OnceLock::new();
        CLIENT.get_or_init(|| {
            Cachify::builder()
                .redis_cluster(support::cluster::shared_cluster().seeds())
                .build_blocking()
                .unwrap()
        })
    }

    mod suite {
        use super::client;
        locking_suite!();
    }
}

mod redis {
    use super::*;

    fn client() -> &'static Cachify {
        static CLIENT: std::sync::OnceLock<Cachify> = std::sync::OnceLock::new();
        CLIENT.get_or_init(|| {
            Cachify::builder()
                .redis(support::shared_server().url())
                .build_blocking()
                .unwrap()
        })
    }

    mod suite {
        use super::client;
        locking_suite!();
    }
}

/// Locks fail closed: with Redis gone they refuse, and the body never runs.
mod outage {
    use super::*;

    static OWN: support::OwnServer = support::OwnServer::new();
    static RAN: AtomicU32 = AtomicU32::new(0);

    fn client() -> &'static Cachify {
        OWN.client()
    }

    #[once("guarded-{id}", client = client())]
    async fn guarded(id: u64) -> Result<u64, Error> {
        RAN.fetch_add(1, Ordering::SeqCst);
        Ok(id)
    }

    #[lock("guarded-sync-{id}", client = client(), return_on_locked = u64::MAX)]
    fn guarded_sync(id: u64) -> u64 {
        RAN.fetch_add(1, Ordering::SeqCst);
        id
    }

    #[tokio::test]
    async fn locks_refuse_when_redis_is_down() {
        assert_eq!(guarded(1).await.unwrap(), 1);
        assert_eq!(RAN.load(Ordering::SeqCst), 1);
        OWN.stop();
        for id in 0..3 {
            let refused = guarded(id).await;
            assert!(matches!(refused, Err(Error::Backend(_))), "{refused:?}");
            let refused_sync = tokio::task::spawn_blocking(move || guarded_sync(id))
                .await
                .unwrap();
            assert_eq!(refused_sync, u64::MAX);
        }
        assert!(
            guarded_is_locked(1).await.is_err(),
            "is_locked reports the outage too"
        );
        assert_eq!(
            RAN.load(Ordering::SeqCst),
            1,
            "nothing ran without its lock"
        );
    }
}
