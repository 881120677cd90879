//! `ttl = None` and `codec = ..` on `#[cached]`, on memory, a single Redis
//! node and the Redis Cluster, async and sync.
//!
//! - `ttl = None`: the entry never expires, even though the client's
//!   `default_ttl` is short (a function without `ttl` shows that it is).
//! - `codec = Codec::Json`: the function's entries are JSON under the key,
//!   read back as JSON; the client's codec (MessagePack) still writes the
//!   other functions' entries. On memory nothing is encoded: the option
//!   only has to compile and round-trip there.

mod support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use cachify::{Cachify, Codec, cached};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    id: u32,
    name: String,
}

#[derive(Debug, PartialEq)]
pub struct AppError;

/// The clients' `default_ttl`: short, so that waiting past it is cheap,
/// and long enough to read an entry's PTTL before it runs out on a loaded
/// machine.
const DEFAULT_TTL: Duration = Duration::from_millis(1500);
/// Comfortably past [`DEFAULT_TTL`].
const PAST_DEFAULT: Duration = Duration::from_millis(2500);

fn user(id: u32) -> User {
    User {
        id,
        name: format!("user {id}"),
    }
}

/// The same tests, once per backend: `client()` is the client under test,
/// with `default_ttl` set to [`DEFAULT_TTL`].
macro_rules! options_suite {
    () => {
        use super::*;

        static FOREVER: AtomicU32 = AtomicU32::new(0);
        static DEFAULTED: AtomicU32 = AtomicU32::new(0);

        #[cached("forever-{id}", ttl = None, client = client())]
        async fn forever(id: u32) -> u32 {
            FOREVER.fetch_add(1, Ordering::SeqCst);
            id
        }

        #[cached("defaulted-{id}", client = client())]
        async fn defaulted(id: u32) -> u32 {
            DEFAULTED.fetch_add(1, Ordering::SeqCst);
            id
        }

        #[tokio::test]
        async fn async_ttl_none_outlives_the_default_ttl() {
            assert_eq!(forever(1).await, 1);
            assert_eq!(defaulted(1).await, 1);
            tokio::time::sleep(PAST_DEFAULT).await;
            assert_eq!(forever(1).await, 1);
            assert_eq!(defaulted(1).await, 1);
            assert_eq!(
                DEFAULTED.load(Ordering::SeqCst),
                2,
                "the default ttl ran out"
            );
            assert_eq!(
                FOREVER.load(Ordering::SeqCst),
                1,
                "`ttl = None` did not expire"
            );
        }

        static FOREVER_SYNC: AtomicU32 = AtomicU32::new(0);
        static DEFAULTED_SYNC: AtomicU32 = AtomicU32::new(0);

        #[cached("forever-sync-{id}", ttl = None, client = client())]
        fn forever_sync(id: u32) -> Option<u32> {
            FOREVER_SYNC.fetch_add(1, Ordering::SeqCst);
            Some(id)
        }

        #[cached("defaulted-sync-{id}", client = client())]
        fn defaulted_sync(id: u32) -> Option<u32> {
            DEFAULTED_SYNC.fetch_add(1, Ordering::SeqCst);
            Some(id)
        }

        #[test]
        fn sync_ttl_none_outlives_the_default_ttl() {
            assert_eq!(forever_sync(1), Some(1));
            assert_eq!(defaulted_sync(1), Some(1));
            std::thread::sleep(PAST_DEFAULT);
            assert_eq!(forever_sync(1), Some(1));
            assert_eq!(defaulted_sync(1), Some(1));
            assert_eq!(
                DEFAULTED_SYNC.load(Ordering::SeqCst),
                2,
                "the default ttl ran out"
            );
            assert_eq!(
                FOREVER_SYNC.load(Ordering::SeqCst),
                1,
                "`ttl = None` did not expire"
            );
        }

        static AS_JSON: AtomicU32 = AtomicU32::new(0);

        #[cached("json-{id}", codec = Codec::Json, client = client())]
        fn as_json(id: u32) -> User {
            AS_JSON.fetch_add(1, Ordering::SeqCst);
            user(id)
        }

        #[test]
        fn sync_codec_round_trips() {
            assert_eq!(as_json(1), user(1));
            assert_eq!(as_json(1), user(1));
            assert_eq!(
                AS_JSON.load(Ordering::SeqCst),
                1,
                "the second call is a hit"
            );
        }

        static AS_JSON_ASYNC: AtomicU32 = AtomicU32::new(0);

        #[cached("json-async-{id}", ttl = 300, codec = Codec::Json, client = client())]
        async fn as_json_async(id: u32) -> Result<User, AppError> {
            AS_JSON_ASYNC.fetch_add(1, Ordering::SeqCst);
            Ok(user(id))
        }

        #[tokio::test]
        async fn async_codec_round_trips() {
            assert_eq!(as_json_async(1).await, Ok(user(1)));
            assert_eq!(as_json_async(1).await, Ok(user(1)));
            assert_eq!(
                AS_JSON_ASYNC.load(Ordering::SeqCst),
                1,
                "the second call is a hit"
            );
        }

        // Without counters, for the checks of the raw entries in Redis,
        // which run in parallel with the tests above.

        #[allow(dead_code)]
        #[cached("stored-forever-{id}", ttl = None, client = client())]
        pub(crate) async fn stored_forever(id: u32) -> u32 {
            id
        }

        #[allow(dead_code)]
        #[cached("stored-defaulted-{id}", client = client())]
        pub(crate) async fn stored_defaulted(id: u32) -> u32 {
            id
        }

        #[allow(dead_code)]
        #[cached("stored-json-{id}", ttl = 300, codec = Codec::Json, client = client())]
        pub(crate) async fn stored_json(id: u32) -> Result<User, AppError> {
            Ok(user(id))
        }

        #[allow(dead_code)]
        #[cached("stored-json-sync-{id}", codec = Codec::Json, client = client())]
        pub(crate) fn stored_json_sync(id: u32) -> User {
            user(id)
        }

        #[allow(dead_code)]
        #[cached("plain-{id}", ttl = 300, client = client())]
        pub(crate) async fn plain(id: u32) -> User {
            user(id)
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
                .default_ttl(DEFAULT_TTL)
                .build_blocking()
                .unwrap()
        })
    }

    mod suite {
        use super::client;
        options_suite!();
    }
}

/// The raw bytes under `key`, read without cachify.
fn raw_get(connection: &mut impl redis::ConnectionLike, key: &str) -> Vec<u8> {
    let bytes: Option<Vec<u8>> = redis::cmd("GET").arg(key).query(connection).unwrap();
    bytes.unwrap_or_else(|| panic!("nothing stored under {key}"))
}

/// The remaining time to live of `key` in milliseconds: -1 without expiry.
fn raw_pttl(connection: &mut impl redis::ConnectionLike, key: &str) -> i64 {
    redis::cmd("PTTL").arg(key).query(connection).unwrap()
}

/// Asserts the entry is the codec's tag byte and then the JSON of `expected`.
#[track_caller]
fn assert_json(bytes: &[u8], expected: &User) {
    assert_eq!(bytes[0], b'J', "the JSON codec's tag");
    let decoded: User = serde_json::from_slice(&bytes[1..]).expect("plain JSON after the tag");
    assert_eq!(&decoded, expected);
}

/// The checks of the raw entries in Redis, for a backend whose module has
/// `client()` and `raw()` (a plain connection) and the suite in `suite`.
macro_rules! redis_checks {
    ($prefix:literal) => {
        #[tokio::test]
        async fn ttl_none_is_stored_without_expiry() {
            suite::stored_forever(7).await;
            suite::stored_defaulted(7).await;
            let mut raw = raw();
            assert_eq!(
                raw_pttl(&mut raw, concat!($prefix, "cache:stored-forever-7")),
                -1
            );
            let defaulted = raw_pttl(&mut raw, concat!($prefix, "cache:stored-defaulted-7"));
            assert!(
                defaulted > 0 && defaulted <= DEFAULT_TTL.as_millis() as i64,
                "the default ttl applies without `ttl`: {defaulted} ms"
            );
        }

        #[tokio::test]
        async fn codec_json_writes_json_and_the_client_codec_writes_the_rest() {
            assert_eq!(suite::stored_json(8).await, Ok(user(8)));
            suite::plain(8).await;
            let mut raw = raw();
            assert_json(
                &raw_get(&mut raw, concat!($prefix, "cache:stored-json-8")),
                &user(8),
            );
            let plain = raw_get(&mut raw, concat!($prefix, "cache:plain-8"));
            assert_eq!(plain[0], b'M', "the client's codec, MessagePack");
            assert!(serde_json::from_slice::<User>(&plain[1..]).is_err());
        }

        #[test]
        fn sync_codec_json_writes_json() {
            suite::stored_json_sync(9);
            assert_json(
                &raw_get(&mut raw(), concat!($prefix, "cache:stored-json-sync-9")),
                &user(9),
            );
        }

        static READ_BACK: AtomicU32 = AtomicU32::new(0);

        #[cached("read-back-{id}", codec = Codec::Json, client = client())]
        fn read_back(id: u32) -> User {
            READ_BACK.fetch_add(1, Ordering::SeqCst);
            user(id)
        }

        #[test]
        fn codec_json_reads_what_another_process_wrote_as_json() {
            let mut raw = raw();
            let mut written = vec![b'J'];
            written.extend(serde_json::to_vec(&user(99)).unwrap());
            let _: () = redis::cmd("SET")
                .arg(concat!($prefix, "cache:read-back-1"))
                .arg(written)
                .query(&mut raw)
                .unwrap();
            assert_eq!(read_back(1), user(99), "decoded as JSON, not recomputed");
            assert_eq!(READ_BACK.load(Ordering::SeqCst), 0);
        }
    };
}

mod redis_node {
    use super::*;

    fn client() -> &'static Cachify {
        static CLIENT: std::sync::OnceLock<Cachify> = std::sync::OnceLock::new();
        CLIENT.get_or_init(|| {
            Cachify::builder()
                .redis(support::shared_server().url())
                .prefix("opt:")
                .default_ttl(DEFAULT_TTL)
                .build_blocking()
                .unwrap()
        })
    }

    fn raw() -> redis::Connection {
        support::shared_server().connection()
    }

    mod suite {
        use super::client;
        options_suite!();
    }

    redis_checks!("opt:");

    /// A client whose own codec is JSON, with the near cache in front.
    fn json_near_client() -> &'static Cachify {
        static CLIENT: std::sync::OnceLock<Cachify> = std::sync::OnceLock::new();
        CLIENT.get_or_init(|| {
            Cachify::builder()
                .redis(support::shared_server().url())
                .prefix("optj:")
                .codec(Codec::Json)
                .near_cache(100)
                .build_blocking()
                .unwrap()
        })
    }

    static PACKED: AtomicU32 = AtomicU32::new(0);

    #[cached("packed-{id}", codec = Codec::MessagePack, client = json_near_client())]
    async fn packed(id: u32) -> User {
        PACKED.fetch_add(1, Ordering::SeqCst);
        user(id)
    }

    #[tokio::test]
    async fn codec_overrides_the_client_codec_through_the_near_cache() {
        assert_eq!(packed(1).await, user(1));
        let bytes = raw_get(&mut raw(), "optj:cache:packed-1");
        assert_eq!(
            bytes[0], b'M',
            "the function's codec, not the client's JSON"
        );
        // A write leaves no near copy: the second call decodes Redis's
        // bytes (and keeps a copy), the third answers from the copy.
        assert_eq!(packed(1).await, user(1));
        assert_eq!(packed(1).await, user(1));
        assert_eq!(
            PACKED.load(Ordering::SeqCst),
            1,
            "read back with the function's codec"
        );
    }
}

mod cluster {
    use super::*;

    fn client() -> &'static Cachify {
        static CLIENT: std::sync::OnceLock<Cachify> = std::sync::OnceLock::new();
        CLIENT.get_or_init(|| {
            Cachify::builder()
                .redis_cluster(support::cluster::shared_cluster().seeds())
                .prefix("optc:")
                .default_ttl(DEFAULT_TTL)
                .build_blocking()
                .unwrap()
        })
    }

    fn raw() -> redis::cluster::ClusterConnection {
        support::cluster::shared_cluster().connection()
    }

    mod suite {
        use super::client;
        options_suite!();
    }

    redis_checks!("optc:");
}
