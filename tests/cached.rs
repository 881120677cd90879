//! `#[cached]` behaviour on both backends, for async and sync functions.

mod support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use cachify::{Cachify, cached};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    id: i64,
    name: String,
}

#[derive(Debug, PartialEq)]
pub struct AppError(String);

/// The same tests, once per backend: `client()` names the client under test.
macro_rules! cached_suite {
    () => {
        use super::*;

        static READS: AtomicU32 = AtomicU32::new(0);

        #[cached("user-{user_id}", ttl = 300, client = client())]
        async fn read_user(user_id: i64) -> Result<User, AppError> {
            READS.fetch_add(1, Ordering::SeqCst);
            Ok(User {
                id: user_id,
                name: format!("user {user_id}"),
            })
        }

        #[tokio::test]
        async fn async_hit_miss_and_reset() {
            let first = read_user(1).await.unwrap();
            assert_eq!(
                first,
                User {
                    id: 1,
                    name: "user 1".into()
                }
            );
            assert_eq!(read_user(1).await.unwrap(), first);
            assert_eq!(READS.load(Ordering::SeqCst), 1, "second call is a hit");
            read_user(2).await.unwrap();
            assert_eq!(
                READS.load(Ordering::SeqCst),
                2,
                "another argument is another key"
            );

            read_user_reset(1).await.unwrap();
            assert_eq!(read_user(1).await.unwrap(), first);
            assert_eq!(READS.load(Ordering::SeqCst), 3, "reset deletes the entry");
            read_user(2).await.unwrap();
            assert_eq!(
                READS.load(Ordering::SeqCst),
                3,
                "reset deletes only that entry"
            );
        }

        static SQUARES: AtomicU32 = AtomicU32::new(0);

        #[cached("square-{n}", client = client())]
        fn square(n: u64) -> u64 {
            SQUARES.fetch_add(1, Ordering::SeqCst);
            n * n
        }

        #[test]
        fn sync_hit_miss_and_reset() {
            assert_eq!(square(3), 9);
            assert_eq!(square(3), 9);
            assert_eq!(SQUARES.load(Ordering::SeqCst), 1);
            square_reset(3).unwrap();
            assert_eq!(square(3), 9);
            assert_eq!(SQUARES.load(Ordering::SeqCst), 2);
        }

        static FLAKY: AtomicU32 = AtomicU32::new(0);

        #[cached("flaky-{id}", client = client())]
        async fn flaky(id: u32) -> Result<u32, AppError> {
            match FLAKY.fetch_add(1, Ordering::SeqCst) {
                0 => Err(AppError("first call fails".into())),
                n => Ok(id + n),
            }
        }

        #[tokio::test]
        async fn result_caches_only_ok() {
            assert_eq!(flaky(10).await, Err(AppError("first call fails".into())));
            assert_eq!(flaky(10).await, Ok(11), "the error was not cached");
            assert_eq!(flaky(10).await, Ok(11), "the Ok value was");
            assert_eq!(FLAKY.load(Ordering::SeqCst), 2);
        }

        static LOOKUPS: AtomicU32 = AtomicU32::new(0);

        #[cached("maybe-{id}", client = client())]
        fn maybe(id: u32) -> Option<String> {
            LOOKUPS.fetch_add(1, Ordering::SeqCst);
            (id % 2 == 0).then(|| format!("even {id}"))
        }

        #[test]
        fn option_caches_some_but_not_none() {
            assert_eq!(maybe(1), None);
            assert_eq!(maybe(1), None);
            assert_eq!(LOOKUPS.load(Ordering::SeqCst), 2, "None is not stored");
            assert_eq!(maybe(2), Some("even 2".into()));
            assert_eq!(maybe(2), Some("even 2".into()));
            assert_eq!(LOOKUPS.load(Ordering::SeqCst), 3, "Some is");
        }

        static ROWS: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());
        static FINDS: AtomicU32 = AtomicU32::new(0);

        /// A row that does not exist yet, then does.
        #[cached("row-{id}", ttl = 300, client = client())]
        async fn find_row(id: u32) -> Result<Option<u32>, AppError> {
            FINDS.fetch_add(1, Ordering::SeqCst);
            Ok(ROWS.lock().unwrap().contains(&id).then_some(id * 10))
        }

        #[tokio::test]
        async fn ok_none_is_not_stored_so_a_new_row_is_seen_at_once() {
            assert_eq!(find_row(7).await, Ok(None));
            ROWS.lock().unwrap().push(7);
            assert_eq!(find_row(7).await, Ok(Some(70)), "Ok(None) was not cached");
            assert_eq!(find_row(7).await, Ok(Some(70)));
            assert_eq!(FINDS.load(Ordering::SeqCst), 2, "Ok(Some) was");
        }

        static MISSING: AtomicU32 = AtomicU32::new(0);

        #[cached("missing-{id}", ttl = 300, none_ttl = Duration::from_millis(1500), client = client())]
        fn missing(id: u32) -> Option<u32> {
            MISSING.fetch_add(1, Ordering::SeqCst);
            (id > 100).then_some(id)
        }

        static MISSING_ASYNC: AtomicU32 = AtomicU32::new(0);

        #[cached("missing-async-{id}", none_ttl = 2, client = client())]
        async fn missing_async(id: u32) -> Result<Option<u32>, AppError> {
            MISSING_ASYNC.fetch_add(1, Ordering::SeqCst);
            Ok((id > 100).then_some(id))
        }

        #[test]
        fn none_ttl_stores_none_for_its_own_ttl() {
            assert_eq!(missing(1), None);
            assert_eq!(missing(1), None);
            assert_eq!(MISSING.load(Ordering::SeqCst), 1, "None stored with none_ttl");
            std::thread::sleep(Duration::from_millis(2500));
            assert_eq!(missing(1), None);
            assert_eq!(MISSING.load(Ordering::SeqCst), 2, "for none_ttl, not ttl");
            assert_eq!(missing(101), Some(101));
            std::thread::sleep(Duration::from_millis(2500));
            assert_eq!(missing(101), Some(101));
            assert_eq!(MISSING.load(Ordering::SeqCst), 3, "Some keeps the long ttl");
        }

        #[tokio::test]
        async fn none_ttl_on_an_async_result_option() {
            assert_eq!(missing_async(1).await, Ok(None));
            assert_eq!(missing_async(1).await, Ok(None));
            assert_eq!(MISSING_ASYNC.load(Ordering::SeqCst), 1);
            tokio::time::sleep(Duration::from_millis(3000)).await;
            assert_eq!(missing_async(1).await, Ok(None));
            assert_eq!(MISSING_ASYNC.load(Ordering::SeqCst), 2, "expired after none_ttl");
        }

        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub enum Sort {
            Name,
            Age { descending: bool },
        }

        #[derive(Debug)]
        pub struct Query {
            ids: Vec<u64>,
            sort: Sort,
        }

        static SEARCHES: AtomicU32 = AtomicU32::new(0);

        #[cached("search-{query.ids:?}-{query.sort:?}", client = client())]
        async fn search(query: Query) -> Vec<u64> {
            SEARCHES.fetch_add(1, Ordering::SeqCst);
            let mut ids = query.ids;
            if query.sort == (Sort::Age { descending: true }) {
                ids.reverse();
            }
            ids
        }

        static TAGGED: AtomicU32 = AtomicU32::new(0);

        #[cached("tagged-{tags:?}", client = client())]
        fn tagged(tags: &[&str]) -> usize {
            TAGGED.fetch_add(1, Ordering::SeqCst);
            tags.len()
        }

        #[tokio::test]
        async fn debug_placeholders_key_by_value() {
            let query = |ids: &[u64], sort: Sort| Query { ids: ids.to_vec(), sort };
            assert_eq!(search(query(&[1, 2], Sort::Name)).await, vec![1, 2]);
            assert_eq!(search(query(&[1, 2], Sort::Name)).await, vec![1, 2]);
            assert_eq!(SEARCHES.load(Ordering::SeqCst), 1, "equal values share a key");
            let age = Sort::Age { descending: true };
            assert_eq!(search(query(&[1, 2], age.clone())).await, vec![2, 1]);
            assert_eq!(search(query(&[1, 2, 3], Sort::Name)).await, vec![1, 2, 3]);
            assert_eq!(search(query(&[12], Sort::Name)).await, vec![12]);
            assert_eq!(SEARCHES.load(Ordering::SeqCst), 4, "different values do not");
            search_reset(query(&[1, 2], Sort::Name)).await.unwrap();
            assert_eq!(search(query(&[1, 2], Sort::Name)).await, vec![1, 2]);
            assert_eq!(SEARCHES.load(Ordering::SeqCst), 5, "the sibling keys alike");
        }

        #[test]
        fn debug_values_with_separators_stay_apart() {
            // Debug output quotes and escapes strings; the key escapes again.
            assert_eq!(tagged(&["a-b"]), 1);
            assert_eq!(tagged(&["a", "b"]), 2);
            assert_eq!(tagged(&["a\\", "\\b"]), 2);
            assert_eq!(tagged(&["a\\\\", "b"]), 2);
            assert_eq!(tagged(&["a-b"]), 1);
            assert_eq!(TAGGED.load(Ordering::SeqCst), 4);
        }

        static NAMES: AtomicU32 = AtomicU32::new(0);

        #[cached("name-{id}", client = client(), unless = |name: &String| name.is_empty())]
        async fn name_of(id: u32) -> String {
            NAMES.fetch_add(1, Ordering::SeqCst);
            if id == 0 {
                String::new()
            } else {
                format!("n{id}")
            }
        }

        #[tokio::test]
        async fn unless_skips_storing_matching_values() {
            assert_eq!(name_of(0).await, "");
            assert_eq!(name_of(0).await, "");
            assert_eq!(
                NAMES.load(Ordering::SeqCst),
                2,
                "an empty name is returned but not stored"
            );
            assert_eq!(name_of(5).await, "n5");
            assert_eq!(name_of(5).await, "n5");
            assert_eq!(NAMES.load(Ordering::SeqCst), 3);
        }

        static TICKS: AtomicU32 = AtomicU32::new(0);

        #[cached("tick", ttl = Duration::from_secs(1), client = client())]
        fn tick() -> u32 {
            TICKS.fetch_add(1, Ordering::SeqCst)
        }

        #[test]
        fn entries_expire_after_their_ttl() {
            assert_eq!(tick(), 0);
            assert_eq!(tick(), 0, "fresh entry is a hit");
            let deadline = Instant::now() + Duration::from_secs(5);
            while tick() == 0 {
                assert!(Instant::now() < deadline, "entry never expired");
                std::thread::sleep(Duration::from_millis(50));
            }
            assert_eq!(TICKS.load(Ordering::SeqCst), 2);
        }

        static SLOW: AtomicU32 = AtomicU32::new(0);

        #[cached("slow-{id}", client = client())]
        async fn slow(id: u32) -> Result<u32, AppError> {
            SLOW.fetch_add(1, Ordering::SeqCst);
            // Long enough for all 50 callers to join while it runs.
            tokio::time::sleep(Duration::from_millis(800)).await;
            Ok(id * 2)
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn concurrent_async_misses_run_once() {
            let mut tasks = tokio::task::JoinSet::new();
            for _ in 0..50 {
                tasks.spawn(slow(21));
            }
            let results = tasks.join_all().await;
            assert_eq!(results.len(), 50);
            assert!(results.iter().all(|r| *r == Ok(42)), "{results:?}");
            assert_eq!(SLOW.load(Ordering::SeqCst), 1, "single flight");
        }

        static HANDOVERS: AtomicU32 = AtomicU32::new(0);

        #[cached("handover-{id}", client = client())]
        async fn handover(id: u32, hold: Duration) -> u32 {
            HANDOVERS.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(hold).await;
            id
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn followers_elect_a_new_leader_when_the_leader_is_cancelled() {
            let leader = tokio::spawn(handover(3, Duration::from_secs(30)));
            let deadline = Instant::now() + Duration::from_secs(5);
            while HANDOVERS.load(Ordering::SeqCst) == 0 {
                assert!(Instant::now() < deadline, "the leader never started");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let mut followers = tokio::task::JoinSet::new();
            for _ in 0..20 {
                followers.spawn(handover(3, Duration::from_millis(500)));
            }
            // Let the followers join the leader's flight, then cancel it.
            tokio::time::sleep(Duration::from_millis(100)).await;
            leader.abort();
            let results = followers.join_all().await;
            assert!(results.iter().all(|r| *r == 3), "{results:?}");
            assert_eq!(
                HANDOVERS.load(Ordering::SeqCst),
                2,
                "one new leader ran for all twenty followers"
            );
        }

        static GREETINGS: AtomicU32 = AtomicU32::new(0);

        // `unless` reads a parameter that is not `Copy`.
        #[cached("greet-{name}", client = client(), unless = |greeting: &String| greeting.contains(banned.as_str()))]
        fn greet(name: &str, banned: String) -> String {
            GREETINGS.fetch_add(1, Ordering::SeqCst);
            format!("hello {name}")
        }

        #[test]
        fn unless_may_read_the_arguments() {
            assert_eq!(greet("bob", "bob".into()), "hello bob");
            assert_eq!(greet("bob", "bob".into()), "hello bob");
            assert_eq!(GREETINGS.load(Ordering::SeqCst), 2, "matched `unless`: not stored");
            assert_eq!(greet("amy", "bob".into()), "hello amy");
            assert_eq!(greet("amy", "bob".into()), "hello amy");
            assert_eq!(GREETINGS.load(Ordering::SeqCst), 3);
        }

        static SLOW_SYNC: AtomicU32 = AtomicU32::new(0);

        #[cached("slow-sync-{id}", client = client())]
        fn slow_sync(id: u32) -> u32 {
            SLOW_SYNC.fetch_add(1, Ordering::SeqCst);
            // Long enough for all 16 threads to join while it runs.
            std::thread::sleep(Duration::from_millis(800));
            id * 2
        }

        #[test]
        fn concurrent_sync_misses_run_once() {
            let results: Vec<u32> = std::thread::scope(|scope| {
                let handles: Vec<_> = (0..16).map(|_| scope.spawn(|| slow_sync(8))).collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            assert!(results.iter().all(|r| *r == 16), "{results:?}");
            assert_eq!(SLOW_SYNC.load(Ordering::SeqCst), 1, "single flight");
        }

        #[cached("{a}-{b}", client = client())]
        fn joined(a: &str, b: &str) -> String {
            format!("{a}|{b}")
        }

        #[test]
        fn values_cannot_forge_separators() {
            assert_eq!(joined("x-y", "z"), "x-y|z");
            assert_eq!(
                joined("x", "y-z"),
                "x|y-z",
                "a different key, not the first entry"
            );
            assert_eq!(joined("", ""), "|");
            assert_eq!(joined("-", ""), "-|");
        }

        static ODD: AtomicU32 = AtomicU32::new(0);

        #[cached("odd-{s}", client = client())]
        fn odd(s: &str) -> String {
            ODD.fetch_add(1, Ordering::SeqCst);
            s.to_uppercase()
        }

        #[test]
        fn odd_and_huge_arguments_work() {
            let huge = "k".repeat(10 * 1024);
            let inputs = [
                "",
                " ",
                "a b",
                "\n",
                "*",
                "?",
                "[",
                ":",
                "ünï©ødé",
                "%2A",
                huge.as_str(),
            ];
            for input in inputs {
                assert_eq!(odd(input), input.to_uppercase());
                assert_eq!(odd(input), input.to_uppercase());
            }
            assert_eq!(
                ODD.load(Ordering::SeqCst) as usize,
                inputs.len(),
                "each input ran once, no collisions"
            );
        }

        // One template, three macros: three separate keys.
        #[cached("shared-{id}", client = client())]
        fn shared_cached(id: u32) -> Result<u32, AppError> {
            Ok(id)
        }

        #[cachify::once("shared-{id}", client = client())]
        fn shared_once(id: u32) -> Result<bool, cachify::Error> {
            shared_once_is_locked(id)
        }

        #[test]
        fn cached_and_lock_keys_do_not_collide() {
            assert_eq!(shared_cached(1), Ok(1));
            // The cache entry exists, yet the once-lock is free, and held only while running.
            assert!(!shared_once_is_locked(1).unwrap());
            assert_eq!(shared_once(1).unwrap(), true);
            assert_eq!(shared_cached(1), Ok(1));
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
                .prefix("t:")
                .build_blocking()
                .unwrap()
        })
    }

    mod suite {
        use super::client;
        cached_suite!();
    }
}

mod cluster {
    use super::*;

    fn client() -> &'static Cachify {
        static CLIENT: std::sync::OnceLock<Cachify> = std::sync::OnceLock::new();
        CLIENT.get_or_init(|| {
            Cachify::builder()
                .redis_cluster(support::cluster::shared_cluster().seeds())
                .prefix("t:")
                .build_blocking()
                .unwrap()
        })
    }

    mod suite {
        use super::client;
        cached_suite!();
    }
}

mod redis {
    use super::*;

    fn client() -> &'static Cachify {
        static CLIENT: std::sync::OnceLock<Cachify> = std::sync::OnceLock::new();
        CLIENT.get_or_init(|| {
            Cachify::builder()
                .redis(support::shared_server().url())
                .prefix("t:")
                .build_blocking()
                .unwrap()
        })
    }

    mod suite {
        use super::client;
        cached_suite!();
    }

    #[cached("user-{user_id}", client = client())]
    fn stored_user(user_id: i64) -> User {
        User {
            id: user_id,
            name: "stored".into(),
        }
    }

    #[cached("set-{{{id}}}-<<{id}>>", client = client())]
    fn braced(id: u32) -> u32 {
        id
    }

    #[test]
    fn escaped_braces_and_angles_are_literal_in_the_key() {
        braced(5);
        let mut raw = support::shared_server().connection();
        let stored: bool = ::redis::cmd("EXISTS")
            .arg("t:cache:set-{5}-<5>")
            .query(&mut raw)
            .unwrap();
        assert!(stored, "`{{{{`, `}}}}`, `<<` and `>>` are literal text");
    }

    #[test]
    fn keys_are_readable_in_redis() {
        stored_user(42);
        let mut raw = support::shared_server().connection();
        let bytes: Option<Vec<u8>> = ::redis::cmd("GET")
            .arg("t:cache:user-42")
            .query(&mut raw)
            .unwrap();
        let bytes = bytes.expect("the entry is stored under the key as written");
        assert_eq!(bytes[0], b'M', "MessagePack tag");
    }

    static DECODES: AtomicU32 = AtomicU32::new(0);

    #[cached("garbage-{id}", client = client())]
    fn decoded(id: u32) -> User {
        DECODES.fetch_add(1, Ordering::SeqCst);
        User {
            id: id.into(),
            name: "fresh".into(),
        }
    }

    #[test]
    fn undecodable_values_are_misses_and_get_overwritten() {
        let mut raw = support::shared_server().connection();
        // Written from outside: garbage, then a value of another Redis type.
        let _: () = ::redis::cmd("SET")
            .arg("t:cache:garbage-1")
            .arg(b"\x00\xffnot msgpack".as_slice())
            .query(&mut raw)
            .unwrap();
        assert_eq!(decoded(1).name, "fresh");
        assert_eq!(decoded(1).name, "fresh");
        assert_eq!(
            DECODES.load(Ordering::SeqCst),
            1,
            "the garbage was overwritten by a good value"
        );

        let _: () = ::redis::cmd("DEL")
            .arg("t:cache:garbage-2")
            .query(&mut raw)
            .unwrap();
        let _: () = ::redis::cmd("HSET")
            .arg("t:cache:garbage-2")
            .arg("f")
            .arg("v")
            .query(&mut raw)
            .unwrap();
        assert_eq!(decoded(2).name, "fresh");
        assert_eq!(decoded(2).name, "fresh");
        assert_eq!(
            DECODES.load(Ordering::SeqCst),
            2,
            "a hash under the key is replaced too"
        );
    }
}

/// The cache path fails open: with Redis gone, functions still answer.
mod outage {
    use super::*;
    static CALLS: AtomicU32 = AtomicU32::new(0);

    /// This module's own server, so stopping it affects no other test.
    static OWN: support::OwnServer = support::OwnServer::new();

    fn client() -> &'static Cachify {
        OWN.client()
    }

    #[cached("doubled-{n}", client = client())]
    async fn doubled(n: u32) -> Result<u32, AppError> {
        CALLS.fetch_add(1, Ordering::SeqCst);
        Ok(n * 2)
    }

    #[cached("tripled-{n}", client = client())]
    fn tripled(n: u32) -> u32 {
        CALLS.fetch_add(1, Ordering::SeqCst);
        n * 3
    }

    #[tokio::test]
    async fn functions_answer_when_redis_is_down() {
        assert_eq!(doubled(1).await, Ok(2));
        OWN.stop();
        let started = Instant::now();
        for n in 0..3 {
            assert_eq!(doubled(n).await, Ok(n * 2));
            assert_eq!(
                tokio::task::spawn_blocking(move || tripled(n))
                    .await
                    .unwrap(),
                n * 3
            );
        }
        assert!(
            CALLS.load(Ordering::SeqCst) >= 7,
            "each call ran the function"
        );
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "bounded by timeouts, took {:?}",
            started.elapsed()
        );
    }
}
