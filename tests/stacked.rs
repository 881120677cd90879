//! Stacked attributes: the first written is the outermost layer, and the
//! stack has one set of siblings. On memory, a single Redis node and the
//! Redis Cluster, async and sync.
//!
//! - Two `#[cached]` layers: a short one on an in-process memory client
//!   (`local()`) over a long one on the backend under test (`client()`).
//!   Twin functions with the same template and client (`*_peek`, which
//!   return `Err` on a miss, so they never store) read and delete one
//!   layer's entry at a time, so each layer is observed on its own.
//! - `#[cached] #[once]` against `#[once] #[cached]`: a call made while the
//!   `once` lock is held (by another function whose `#[once]` has the same
//!   template, so the same key) is answered from the cache by the first,
//!   and refused by the second even though its value is cached.
//! - `#[cached] #[pooled]`: a miss runs under a slot, a hit takes none.

mod support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use cachify::{Cachify, cached, lock, once, pooled};

#[derive(Debug, PartialEq)]
pub enum AppError {
    Busy,
    Missing,
    Cache(String),
}

impl From<cachify::Error> for AppError {
    fn from(error: cachify::Error) -> Self {
        AppError::Cache(error.to_string())
    }
}

/// The outer layer's TTL: short, so that waiting past it is cheap, and
/// long enough for the few calls that rely on its entry on a loaded machine.
const OUTER_TTL: Duration = Duration::from_millis(1500);
/// Comfortably past [`OUTER_TTL`].
const PAST_OUTER: Duration = Duration::from_millis(2500);

/// A short-lived in-process layer over a long-lived shared one, as
/// `$asyncness fn` (`async` or nothing), whose calls end with `$dot_await`.
/// Only one test uses each, as the counter is the function's.
macro_rules! two_cached_layers {
    ($test:ident, $test_attr:meta, $wait:path, $template:literal, $($async:ident)?; $($await:tt)*) => {
        mod $test {
            use super::*;

            static CALLS: AtomicU32 = AtomicU32::new(0);

            #[cached($template, ttl = OUTER_TTL, client = local())]
            #[cached($template, ttl = 300, client = client())]
            $($async)? fn profile(id: u32) -> Result<u32, AppError> {
                CALLS.fetch_add(1, Ordering::SeqCst);
                Ok(id * 10)
            }

            /// The outer layer's entry (same template and client), never stored.
            #[cached($template, client = local())]
            $($async)? fn outer_peek(id: u32) -> Result<u32, AppError> {
                let _ = id;
                Err(AppError::Missing)
            }

            /// The inner layer's entry (same template and client), never stored.
            #[cached($template, client = client())]
            $($async)? fn inner_peek(id: u32) -> Result<u32, AppError> {
                let _ = id;
                Err(AppError::Missing)
            }

            #[$test_attr]
            $($async)? fn $test() {
                let calls = || CALLS.load(Ordering::SeqCst);
                assert_eq!(profile(1)$($await)*, Ok(10));
                assert_eq!(calls(), 1);
                assert_eq!(outer_peek(1)$($await)*, Ok(10), "the outer layer stored it");
                assert_eq!(inner_peek(1)$($await)*, Ok(10), "the inner layer stored it");

                // Without the inner entry, the outer layer still answers,
                // and nothing reaches the inner layer (which would store it again).
                inner_peek_reset(1)$($await)*.unwrap();
                assert_eq!(profile(1)$($await)*, Ok(10));
                assert_eq!(calls(), 1, "answered by the outer layer");
                assert_eq!(inner_peek(1)$($await)*, Err(AppError::Missing), "the outer layer is outermost");

                // Past the outer TTL both miss: the function runs and fills both.
                $wait(PAST_OUTER)$($await)*;
                assert_eq!(outer_peek(1)$($await)*, Err(AppError::Missing), "the outer layer expired");
                assert_eq!(profile(1)$($await)*, Ok(10));
                assert_eq!(calls(), 2);
                assert_eq!(inner_peek(1)$($await)*, Ok(10));

                // Past the outer TTL again, the inner layer answers and refills the outer one.
                $wait(PAST_OUTER)$($await)*;
                assert_eq!(outer_peek(1)$($await)*, Err(AppError::Missing), "the outer layer expired");
                assert_eq!(profile(1)$($await)*, Ok(10));
                assert_eq!(calls(), 2, "answered by the inner layer");
                assert_eq!(outer_peek(1)$($await)*, Ok(10), "the outer layer was refilled");

                // The one `_reset` clears both layers.
                profile_reset(1)$($await)*.unwrap();
                assert_eq!(outer_peek(1)$($await)*, Err(AppError::Missing));
                assert_eq!(inner_peek(1)$($await)*, Err(AppError::Missing));
                assert_eq!(profile(1)$($await)*, Ok(10));
                assert_eq!(calls(), 3);

                // The one `_clear` clears both layers, for every argument.
                assert_eq!(profile(2)$($await)*, Ok(20));
                assert_eq!(profile_clear()$($await)*.unwrap(), 4, "two arguments in each of two layers");
                assert_eq!(outer_peek(1)$($await)*, Err(AppError::Missing));
                assert_eq!(inner_peek(2)$($await)*, Err(AppError::Missing));
            }
        }
    };
}

/// `#[cached]` over `#[pooled]`: a miss runs under a slot of the pool, a
/// hit takes none; the stack's `_pool_size` counts the pool layer's slots.
macro_rules! cached_over_pooled {
    ($test:ident, $test_attr:meta, $template:literal, $($async:ident)?; $($await:tt)*) => {
        mod $test {
            use super::*;

            static CALLS: AtomicU32 = AtomicU32::new(0);

            #[cached($template, client = client())]
            #[pooled($template, max_size = 1, client = client())]
            $($async)? fn export(id: u32) -> Result<usize, AppError> {
                CALLS.fetch_add(1, Ordering::SeqCst);
                Ok(export_pool_size(id)$($await)*?)
            }

            #[$test_attr]
            $($async)? fn $test() {
                assert_eq!(export(1)$($await)*, Ok(1), "the body held the one slot");
                assert_eq!(export_pool_size(1)$($await)*.unwrap(), 0, "released after the body");
                assert_eq!(export(1)$($await)*, Ok(1), "a hit");
                assert_eq!(CALLS.load(Ordering::SeqCst), 1);
                export_reset(1)$($await)*.unwrap();
                assert_eq!(export(1)$($await)*, Ok(1));
                assert_eq!(CALLS.load(Ordering::SeqCst), 2);
            }
        }
    };
}

/// `#[cached]` over `$kind` and `$kind` over `#[cached]` (`$kind`: `once`
/// or `lock`), with a third function holding the same lock.
macro_rules! cached_and_lock {
    ($test:ident, $kind:ident, $test_attr:meta, $over:literal, $under:literal, $held:literal, $($async:ident)?; $($await:tt)*) => {
        mod $test {
            use super::*;

            static CACHED_OVER: AtomicU32 = AtomicU32::new(0);
            static CACHED_UNDER: AtomicU32 = AtomicU32::new(0);

            #[cached($over, client = client())]
            #[$kind($held, client = client(), return_on_locked = Err(AppError::Busy))]
            $($async)? fn cached_over(id: u32) -> Result<u32, AppError> {
                CACHED_OVER.fetch_add(1, Ordering::SeqCst);
                Ok(id)
            }

            #[$kind($held, client = client(), return_on_locked = Err(AppError::Busy))]
            #[cached($under, client = client())]
            $($async)? fn cached_under(id: u32) -> Result<u32, AppError> {
                CACHED_UNDER.fetch_add(1, Ordering::SeqCst);
                Ok(id)
            }

            /// Calls both while holding their lock, and asks the siblings
            /// of the stacks whether it is held.
            #[$kind($held, client = client())]
            $($async)? fn while_held(id: u32) -> Result<[Result<u32, AppError>; 2], AppError> {
                assert!(cached_over_is_locked(id)$($await)*?, "the stack's `_is_locked` sees its lock layer");
                assert!(cached_under_is_locked(id)$($await)*?);
                Ok([cached_over(id)$($await)*, cached_under(id)$($await)*])
            }

            #[$test_attr]
            $($async)? fn $test() {
                assert_eq!(cached_over(1)$($await)*, Ok(1));
                assert_eq!(cached_under(1)$($await)*, Ok(1));
                assert_eq!(cached_over(1)$($await)*, Ok(1));
                assert_eq!(cached_under(1)$($await)*, Ok(1));
                assert_eq!(CACHED_OVER.load(Ordering::SeqCst), 1);
                assert_eq!(CACHED_UNDER.load(Ordering::SeqCst), 1);

                let [over, under] = while_held(1)$($await)*.unwrap();
                assert_eq!(over, Ok(1), "`#[cached]` outermost: a hit takes no lock");
                assert_eq!(under, Err(AppError::Busy), "the lock outermost: taken even for a cached value");

                // A miss of `#[cached]` over the lock goes through the lock.
                let [over, under] = while_held(2)$($await)*.unwrap();
                assert_eq!(over, Err(AppError::Busy));
                assert_eq!(under, Err(AppError::Busy));
                assert_eq!(CACHED_OVER.load(Ordering::SeqCst), 1);
                assert_eq!(CACHED_UNDER.load(Ordering::SeqCst), 1);

                // Released: `_is_locked` says so, and `_reset` and `_release` work.
                assert!(!cached_over_is_locked(1)$($await)*.unwrap());
                cached_under_release(1)$($await)*.unwrap();
                cached_under_reset(1)$($await)*.unwrap();
                assert_eq!(cached_under(1)$($await)*, Ok(1));
                assert_eq!(CACHED_UNDER.load(Ordering::SeqCst), 2, "`_reset` cleared the cached layer");
            }
        }
    };
}

/// The same tests, once per backend: `client()` is the client under test,
/// `local()` an in-process memory client.
macro_rules! stacked_suite {
    () => {
        use super::*;

        two_cached_layers!(two_cached_layers_async, tokio::test, tokio::time::sleep, "profile-{id}", async; .await);
        two_cached_layers!(two_cached_layers_sync, test, std::thread::sleep, "profile-sync-{id}", ;);
        cached_and_lock!(cached_and_once_async, once, tokio::test, "o-over-{id}", "o-under-{id}", "o-held-{id}", async; .await);
        cached_and_lock!(cached_and_once_sync, once, test, "os-over-{id}", "os-under-{id}", "os-held-{id}", ;);
        cached_and_lock!(cached_and_lock_async, lock, tokio::test, "l-over-{id}", "l-under-{id}", "l-held-{id}", async; .await);
        cached_and_lock!(cached_and_lock_sync, lock, test, "ls-over-{id}", "ls-under-{id}", "ls-held-{id}", ;);
        cached_over_pooled!(cached_over_pooled_async, tokio::test, "p-{id}", async; .await);
        cached_over_pooled!(cached_over_pooled_sync, test, "ps-{id}", ;);
    };
}

/// A memory client of its own for each backend's suite (a `static` in it).
macro_rules! local_client {
    () => {
        fn local() -> &'static Cachify {
            static CLIENT: std::sync::OnceLock<Cachify> = std::sync::OnceLock::new();
            CLIENT.get_or_init(|| Cachify::builder().memory().build_blocking().unwrap())
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
                .prefix("stm:")
                .build_blocking()
                .unwrap()
        })
    }

    local_client!();

    mod suite {
        use super::{client, local};
        stacked_suite!();
    }
}

mod redis_node {
    use super::*;

    fn client() -> &'static Cachify {
        static CLIENT: std::sync::OnceLock<Cachify> = std::sync::OnceLock::new();
        CLIENT.get_or_init(|| {
            Cachify::builder()
                .redis(support::shared_server().url())
                .prefix("stn:")
                .build_blocking()
                .unwrap()
        })
    }

    local_client!();

    mod suite {
        use super::{client, local};
        stacked_suite!();
    }
}

mod cluster {
    use super::*;

    fn client() -> &'static Cachify {
        static CLIENT: std::sync::OnceLock<Cachify> = std::sync::OnceLock::new();
        CLIENT.get_or_init(|| {
            Cachify::builder()
                .redis_cluster(support::cluster::shared_cluster().seeds())
                .prefix("stc:")
                .build_blocking()
                .unwrap()
        })
    }

    local_client!();

    mod suite {
        use super::{client, local};
        stacked_suite!();
    }
}

/// Three layers on a method of a trait impl: the siblings move to an
/// inherent impl as usual, one per name for the whole stack.
mod trait_method {
    use super::*;

    local_client!();

    fn shared() -> &'static Cachify {
        static CLIENT: std::sync::OnceLock<Cachify> = std::sync::OnceLock::new();
        CLIENT.get_or_init(|| Cachify::builder().memory().build_blocking().unwrap())
    }

    pub trait Store {
        async fn find(&self, id: u32) -> Result<u32, AppError>;
    }

    pub struct Rows;

    static FINDS: AtomicU32 = AtomicU32::new(0);

    #[cachify::trait_impl]
    impl Store for Rows {
        #[cached("find-{id}", ttl = 300, client = local())]
        #[once("find-{id}", client = shared(), return_on_locked = Err(AppError::Busy))]
        #[cached("find-{id}", ttl = 300, client = shared())]
        async fn find(&self, id: u32) -> Result<u32, AppError> {
            FINDS.fetch_add(1, Ordering::SeqCst);
            assert!(
                Rows::find_is_locked(id).await?,
                "the middle layer holds its lock"
            );
            Ok(id)
        }
    }

    #[tokio::test]
    async fn layers_stack_on_a_trait_method() {
        assert_eq!(Rows.find(1).await, Ok(1));
        assert_eq!(Rows.find(1).await, Ok(1));
        assert_eq!(FINDS.load(Ordering::SeqCst), 1);
        assert!(!Rows::find_is_locked(1).await.unwrap());
        Rows::find_reset(1).await.unwrap();
        assert_eq!(Rows.find(1).await, Ok(1));
        assert_eq!(
            FINDS.load(Ordering::SeqCst),
            2,
            "`_reset` cleared both cached layers"
        );
        Rows::find_release(1).await.unwrap();
    }
}

/// Two lock layers share one `_is_locked` (held when either is) and one
/// `_release` (frees both).
mod two_locks {
    use super::*;

    local_client!();

    #[once("two-outer-{id}", client = local())]
    #[lock("two-inner-{id}", client = local())]
    fn both(id: u32) -> Result<u32, AppError> {
        Ok(id)
    }

    #[test]
    fn one_is_locked_and_one_release_for_both_layers() {
        assert!(!both_is_locked(1).unwrap());
        // The inner layer's lock, held through the lock API (same key as `#[lock]`).
        let guard = local().lock("two-inner-1").acquire_blocking().unwrap();
        assert!(
            both_is_locked(1).unwrap(),
            "held when the inner layer's lock is"
        );
        assert!(
            matches!(both(1), Err(AppError::Cache(_))),
            "refused by the inner layer"
        );
        both_release(1).unwrap();
        assert!(!both_is_locked(1).unwrap(), "`_release` freed it");
        assert_eq!(both(1), Ok(1));
        drop(guard);
    }
}

/// A renamed import is not part of the stack above it: it expands after
/// that stack, outside it (as documented), beside the stack's inert markers.
mod renamed_import {
    use super::*;
    use cachify::cached as memo;

    local_client!();

    static RUNS: AtomicU32 = AtomicU32::new(0);

    #[once("renamed-outer-{id}", client = local(), return_on_locked = Err(AppError::Busy))]
    #[memo("renamed-{id}", client = local())]
    #[once("renamed-inner-{id}", client = local(), return_on_locked = Err(AppError::Busy))]
    fn job(id: u32) -> Result<u32, AppError> {
        RUNS.fetch_add(1, Ordering::SeqCst);
        Ok(id)
    }

    #[once("renamed-outer-{id}", client = local())]
    fn while_outer_held(id: u32) -> Result<Result<u32, AppError>, AppError> {
        Ok(job(id))
    }

    #[test]
    fn a_renamed_attribute_expands_outside_the_stack_above_it() {
        assert_eq!(job(1), Ok(1));
        assert_eq!(job(1), Ok(1));
        assert_eq!(RUNS.load(Ordering::SeqCst), 1);
        // Outermost, the renamed `#[cached]` answers without the `once` locks.
        assert_eq!(while_outer_held(1), Ok(Ok(1)));
        job_reset(1).unwrap();
        assert_eq!(while_outer_held(1), Ok(Err(AppError::Busy)));
    }
}
