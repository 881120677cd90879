//! `#[cached(stale_if_error = ..)]`: after the TTL a failed recomputation
//! is answered with the stale value (and counted), a successful one
//! replaces it, and after TTL + stale_if_error the failure is returned.
//! On memory, a single Redis node and the cluster; async and sync.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use cachify::{Cachify, CallKind, cached};

#[derive(Debug, PartialEq)]
pub struct AppError;

/// Fresh for this long.
const TTL: Duration = Duration::from_millis(400);
/// Then kept this much longer, to answer failures.
const STALE: Duration = Duration::from_millis(1000);
/// A moment past the TTL.
const PAST_TTL: Duration = Duration::from_millis(550);
/// A moment past TTL + STALE, counted from the last successful fill.
const PAST_STALE: Duration = Duration::from_millis(1650);

/// The stale count of `template` on `client`.
fn stale_of(client: &Cachify, template: &str) -> u64 {
    client
        .stats_by_template()
        .into_iter()
        .find(|row| row.kind == CallKind::Cached && row.template == template)
        .map_or(0, |row| row.stale)
}

macro_rules! stale_suite {
    () => {
        use super::*;

        static RATE_FAILS: AtomicBool = AtomicBool::new(false);
        static RATE: AtomicU32 = AtomicU32::new(10);
        static RATE_RUNS: AtomicU32 = AtomicU32::new(0);

        #[cached("rate-{id}", ttl = TTL, stale_if_error = STALE, client = client())]
        async fn rate(id: u32) -> Result<u32, AppError> {
            RATE_RUNS.fetch_add(1, Ordering::SeqCst);
            if RATE_FAILS.load(Ordering::SeqCst) {
                Err(AppError)
            } else {
                Ok(RATE.load(Ordering::SeqCst) + id)
            }
        }

        #[tokio::test]
        async fn async_err_after_the_ttl_serves_the_stale_value() {
            let runs = || RATE_RUNS.load(Ordering::SeqCst);
            assert_eq!(rate(1).await, Ok(11));
            RATE_FAILS.store(true, Ordering::SeqCst);
            // Spawned: the call's future is `Send`.
            let spawned = tokio::spawn(rate(1)).await.unwrap();
            assert_eq!(spawned, Ok(11), "fresh: a hit");
            assert_eq!(runs(), 1);
            assert_eq!(stale_of(client(), "rate-{id}"), 0);

            tokio::time::sleep(PAST_TTL).await;
            assert_eq!(rate(1).await, Ok(11), "stale, the function failed");
            assert_eq!(runs(), 2, "the stale value was recomputed first");
            assert_eq!(stale_of(client(), "rate-{id}"), 1, "and counted");
            assert!(client().stats().stale >= 1);

            RATE_FAILS.store(false, Ordering::SeqCst);
            RATE.store(20, Ordering::SeqCst);
            assert_eq!(rate(1).await, Ok(21), "a success is never the stale value");
            assert_eq!(rate(1).await, Ok(21), "and replaced it");
            assert_eq!(runs(), 3);
            assert_eq!(stale_of(client(), "rate-{id}"), 1);

            RATE_FAILS.store(true, Ordering::SeqCst);
            tokio::time::sleep(PAST_STALE).await;
            assert_eq!(rate(1).await, Err(AppError), "too old to serve");
            assert_eq!(stale_of(client(), "rate-{id}"), 1);
        }

        static PRICE_FAILS: AtomicBool = AtomicBool::new(false);
        static PRICE: AtomicU32 = AtomicU32::new(5);
        static PRICE_RUNS: AtomicU32 = AtomicU32::new(0);

        #[cached("price-{id}", ttl = TTL, stale_if_error = STALE, client = client())]
        fn price(id: u32) -> Option<u32> {
            PRICE_RUNS.fetch_add(1, Ordering::SeqCst);
            if PRICE_FAILS.load(Ordering::SeqCst) {
                None
            } else {
                Some(PRICE.load(Ordering::SeqCst) * id)
            }
        }

        #[test]
        fn sync_none_after_the_ttl_serves_the_stale_value() {
            let runs = || PRICE_RUNS.load(Ordering::SeqCst);
            assert_eq!(price(2), Some(10));
            PRICE_FAILS.store(true, Ordering::SeqCst);
            assert_eq!(price(2), Some(10), "fresh: a hit");
            assert_eq!(runs(), 1);

            std::thread::sleep(PAST_TTL);
            assert_eq!(price(2), Some(10), "stale, the function returned None");
            assert_eq!(runs(), 2);
            assert_eq!(stale_of(client(), "price-{id}"), 1);

            PRICE_FAILS.store(false, Ordering::SeqCst);
            PRICE.store(7, Ordering::SeqCst);
            assert_eq!(price(2), Some(14), "a success is never the stale value");
            assert_eq!(price(2), Some(14));
            assert_eq!(runs(), 3);

            PRICE_FAILS.store(true, Ordering::SeqCst);
            std::thread::sleep(PAST_STALE);
            assert_eq!(price(2), None, "too old to serve");
            assert_eq!(stale_of(client(), "price-{id}"), 1);
        }

        static PLAIN_RUNS: AtomicU32 = AtomicU32::new(0);

        // Two functions on one template: the first stores plain values (as
        // a version without `stale_if_error` did), the second entries.
        #[cached("legacy-{id}", client = client())]
        fn legacy_plain(id: u32) -> u32 {
            PLAIN_RUNS.fetch_add(1, Ordering::SeqCst);
            id
        }

        #[cached("legacy-{id}", stale_if_error = 60, client = client())]
        fn legacy_entry(id: u32) -> Result<u32, AppError> {
            Ok(id + 100)
        }

        #[test]
        fn plain_values_and_entries_read_as_misses_of_each_other() {
            assert_eq!(legacy_plain(3), 3);
            assert_eq!(legacy_entry(3), Ok(103), "a plain value is a miss");
            assert_eq!(legacy_entry(3), Ok(103));
            assert_eq!(legacy_plain(3), 3, "an entry is a miss");
            assert_eq!(PLAIN_RUNS.load(Ordering::SeqCst), 2);
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
                .prefix("sie:")
                .build_blocking()
                .unwrap()
        })
    }

    mod suite {
        use super::client;
        stale_suite!();
    }
}

mod redis {
    use super::*;

    fn client() -> &'static Cachify {
        static CLIENT: std::sync::OnceLock<Cachify> = std::sync::OnceLock::new();
        CLIENT.get_or_init(|| {
            Cachify::builder()
                .redis(support::shared_server().url())
                .prefix("sie:")
                .build_blocking()
                .unwrap()
        })
    }

    mod suite {
        use super::client;
        stale_suite!();
    }
}

mod cluster {
    use super::*;

    fn client() -> &'static Cachify {
        static CLIENT: std::sync::OnceLock<Cachify> = std::sync::OnceLock::new();
        CLIENT.get_or_init(|| {
            Cachify::builder()
                .redis_cluster(support::cluster::shared_cluster().seeds())
                .prefix("sie:")
                .build_blocking()
                .unwrap()
        })
    }

    mod suite {
        use super::client;
        stale_suite!();
    }
}
