//! `#[cachify::trait_impl]`: `#[cached]`, `#[once]` and `#[lock]` on the
//! methods of trait impls (native `async fn` in traits, sync methods,
//! `#[async_trait]`, generic impls), with the siblings in an inherent impl.
//! The `#[async_trait]` suite runs on a real redis-server; the rest on a
//! memory client.

mod support;

use std::fmt::Display;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use cachify::{Cachify, cached, lock, once};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    id: i64,
    tenant: String,
}

fn memory() -> &'static Cachify {
    static CLIENT: std::sync::OnceLock<Cachify> = std::sync::OnceLock::new();
    CLIENT.get_or_init(|| {
        Cachify::builder()
            .memory()
            .prefix("trait:")
            .build_blocking()
            .unwrap()
    })
}

fn redis() -> &'static Cachify {
    static CLIENT: std::sync::OnceLock<Cachify> = std::sync::OnceLock::new();
    CLIENT.get_or_init(|| {
        Cachify::builder()
            .redis(support::shared_server().url())
            .prefix("trait:")
            .build_blocking()
            .unwrap()
    })
}

// ---- Native `async fn` in a trait, sync methods, a client from `self`.

trait UserStore {
    async fn find(&self, id: i64) -> Result<User, String>;
    fn double(&self, n: u32) -> u32;
    type Id;
    fn by_id(&self, id: Self::Id) -> u64;
}

pub struct PgStore {
    tenant: String,
    cache: Cachify,
    finds: AtomicU32,
    doubles: AtomicU32,
}

impl PgStore {
    fn new(tenant: &str) -> Self {
        PgStore {
            tenant: tenant.into(),
            cache: Cachify::builder().memory().build_blocking().unwrap(),
            finds: AtomicU32::new(0),
            doubles: AtomicU32::new(0),
        }
    }
}

#[cachify::trait_impl]
impl UserStore for PgStore {
    /// Doc comments stay on the method.
    #[cached("pg-{self.tenant}-{id}", client = &self.cache)]
    async fn find(&self, id: i64) -> Result<User, String> {
        self.finds.fetch_add(1, Ordering::SeqCst);
        Ok(User {
            id,
            tenant: self.tenant.clone(),
        })
    }

    #[cachify::cached("pg-double-{n}", client = memory())]
    fn double(&self, n: u32) -> u32 {
        self.doubles.fetch_add(1, Ordering::SeqCst);
        n * 2
    }

    type Id = u64;

    #[::cachify::cached("pg-by-id-{id}", client = memory())]
    fn by_id(&self, id: Self::Id) -> u64 {
        self.doubles.fetch_add(1, Ordering::SeqCst);
        id + 1
    }
}

async fn find_through_generic<S: UserStore>(store: &S, id: i64) -> Result<User, String> {
    store.find(id).await
}

#[tokio::test]
async fn native_async_method_caches_and_its_sibling_resets() {
    let store = PgStore::new("acme");
    let first = store.find(7).await.unwrap();
    assert_eq!(store.find(7).await.unwrap(), first);
    assert_eq!(
        store.finds.load(Ordering::SeqCst),
        1,
        "second call is a hit"
    );
    assert_eq!(find_through_generic(&store, 7).await.unwrap(), first);
    assert_eq!(
        store.finds.load(Ordering::SeqCst),
        1,
        "a call through `S: UserStore` runs the wrapped method too"
    );

    store.find_reset(7).await.unwrap();
    store.find(7).await.unwrap();
    assert_eq!(
        store.finds.load(Ordering::SeqCst),
        2,
        "reset deletes the entry"
    );
    PgStore::find_reset(&store, 7).await.unwrap();
    store.find(7).await.unwrap();
    assert_eq!(
        store.finds.load(Ordering::SeqCst),
        3,
        "the sibling is an associated function of `PgStore`"
    );

    let other = PgStore::new("globex");
    assert_eq!(other.find(7).await.unwrap().tenant, "globex");

    // `_clear` takes what the client expression uses: here `&self`.
    store.find(8).await.unwrap();
    assert_eq!(store.find_clear().await.unwrap(), 2, "ids 7 and 8");
    store.find(7).await.unwrap();
    assert_eq!(store.finds.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn native_async_method_future_is_send() {
    let store = Arc::new(PgStore::new("spawned"));
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move { store.find(1).await })
        })
        .collect();
    for task in tasks {
        let user = tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("task finished")
            .unwrap()
            .unwrap();
        assert_eq!(user.tenant, "spawned");
    }
    assert_eq!(
        store.finds.load(Ordering::SeqCst),
        1,
        "one fill for four tasks"
    );
}

#[test]
fn sync_methods_and_associated_types() {
    let store = PgStore::new("sync");
    assert_eq!(store.double(21), 42);
    assert_eq!(store.double(21), 42);
    assert_eq!(store.doubles.load(Ordering::SeqCst), 1);
    // The key does not use `self`, so neither does the sibling; sync like the method.
    PgStore::double_reset(21).unwrap();
    assert_eq!(store.double(21), 42);
    assert_eq!(store.doubles.load(Ordering::SeqCst), 2);

    // `Self::Id` in the signature: the sibling spells it `<Self as UserStore>::Id`.
    assert_eq!(store.by_id(9), 10);
    assert_eq!(store.by_id(9), 10);
    assert_eq!(store.doubles.load(Ordering::SeqCst), 3);
    PgStore::by_id_reset(9).unwrap();
    assert_eq!(store.by_id(9), 10);
    assert_eq!(store.doubles.load(Ordering::SeqCst), 4);
}

// ---- `dyn Trait` and a generic impl.

/// In a module of its own, so the tests show the siblings' visibility.
mod shapes {
    use super::*;

    pub trait Shape {
        fn area(&self, scale: u64) -> u64;
    }

    pub struct Square<T> {
        pub(crate) side: T,
        pub(crate) calls: AtomicU32,
    }

    // The siblings are called from outside this module: `pub(crate)` reaches there.
    #[cachify::trait_impl(pub(crate))]
    impl<T> Shape for Square<T>
    where
        T: Display + Into<u64> + Copy,
    {
        #[cached("square-{self.side}-{scale}", client = memory())]
        fn area(&self, scale: u64) -> u64 {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let side: u64 = self.side.into();
            side * side * scale
        }
    }
}

use shapes::{Shape, Square};

#[test]
fn generic_impl_through_dyn_trait() {
    let square = Square {
        side: 3_u8,
        calls: AtomicU32::new(0),
    };
    let shape: &dyn Shape = &square;
    assert_eq!(shape.area(2), 18);
    assert_eq!(shape.area(2), 18);
    assert_eq!(
        square.calls.load(Ordering::SeqCst),
        1,
        "a call through `dyn Shape` hits"
    );
    square.area_reset(2).unwrap();
    assert_eq!(shape.area(2), 18);
    assert_eq!(square.calls.load(Ordering::SeqCst), 2);
    Square::<u8>::area_reset(&square, 2).unwrap();
    assert_eq!(shape.area(2), 18);
    assert_eq!(square.calls.load(Ordering::SeqCst), 3);
}

// ---- `#[async_trait]`, with `#[cachify::trait_impl]` above it, on Redis.

#[async_trait]
pub trait Jobs: Send + Sync {
    async fn load(&self, id: i64) -> Result<User, String>;
    async fn run_once(&self, id: i64, hold: Duration) -> u32;
    async fn run_locked(&self, id: i64, hold: Duration) -> Result<u32, cachify::Error>;
    async fn count(&self, n: u32) -> u32;
}

mod jobs {
    use super::*;

    pub struct RedisJobs {
        pub(crate) tenant: String,
        pub(crate) loads: AtomicU32,
        pub(crate) runs: AtomicU32,
        pub(crate) cache: &'static Cachify,
    }

    // The siblings are `pub` by default: the tests call them from outside this module.
    #[cachify::trait_impl]
    #[async_trait]
    impl Jobs for RedisJobs {
        #[cached("jobs-{self.tenant}-{id}", client = redis())]
        async fn load(&self, id: i64) -> Result<User, String> {
            self.loads.fetch_add(1, Ordering::SeqCst);
            Ok(User {
                id,
                tenant: self.tenant.clone(),
            })
        }

        #[once("jobs-once-{id}", return_on_locked = 0, client = redis())]
        async fn run_once(&self, id: i64, hold: Duration) -> u32 {
            self.runs.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(hold).await;
            1
        }

        #[lock("jobs-lock-{id}", client = redis())]
        async fn run_locked(&self, id: i64, hold: Duration) -> Result<u32, cachify::Error> {
            self.runs.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(hold).await;
            Ok(2)
        }

        // The client comes from `self`, which `#[async_trait]` renames in the body.
        #[cached("jobs-count-{n}", client = self.cache)]
        async fn count(&self, n: u32) -> u32 {
            self.runs.fetch_add(1, Ordering::SeqCst);
            n + 1
        }
    }
}

use jobs::RedisJobs;

fn jobs(tenant: &str) -> Arc<RedisJobs> {
    Arc::new(RedisJobs {
        tenant: tenant.into(),
        loads: AtomicU32::new(0),
        runs: AtomicU32::new(0),
        cache: redis(),
    })
}

#[tokio::test]
async fn async_trait_cached_through_spawned_dyn_calls() {
    let concrete = jobs("spawn");
    let shared: Arc<dyn Jobs> = concrete.clone();
    concrete.load_reset(5).await.unwrap();
    for round in 0..2 {
        let shared = Arc::clone(&shared);
        let user = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::spawn(async move { shared.load(5).await }),
        )
        .await
        .expect("task finished")
        .unwrap()
        .unwrap();
        assert_eq!(user.id, 5, "round {round}");
    }
    assert_eq!(
        concrete.loads.load(Ordering::SeqCst),
        1,
        "second call is a hit"
    );
    RedisJobs::load_reset(&concrete, 5).await.unwrap();
    shared.load(5).await.unwrap();
    assert_eq!(
        concrete.loads.load(Ordering::SeqCst),
        2,
        "reset deletes the entry"
    );
}

/// Polls `$check` (an `is_locked` sibling call) until it is true, for at most 5 s.
macro_rules! until_locked {
    ($check:expr) => {{
        let mut held = false;
        for _ in 0..100 {
            held = $check.await.unwrap();
            if held {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        held
    }};
}

#[tokio::test]
async fn async_trait_client_from_self() {
    let concrete = jobs("count");
    let shared: Arc<dyn Jobs> = concrete.clone();
    concrete.count_reset(4).await.unwrap();
    assert_eq!(shared.count(4).await, 5);
    assert_eq!(shared.count(4).await, 5);
    assert_eq!(
        concrete.runs.load(Ordering::SeqCst),
        1,
        "second call is a hit"
    );
    // The key uses no `self` but the client does, so the sibling takes `&self`.
    RedisJobs::count_reset(&concrete, 4).await.unwrap();
    assert_eq!(shared.count(4).await, 5);
    assert_eq!(
        concrete.runs.load(Ordering::SeqCst),
        2,
        "reset deletes the entry"
    );
}

#[tokio::test]
async fn async_trait_once_siblings() {
    let concrete = jobs("once");
    let shared: Arc<dyn Jobs> = concrete.clone();
    let running = {
        let shared = Arc::clone(&shared);
        tokio::spawn(async move { shared.run_once(11, Duration::from_secs(2)).await })
    };
    assert!(
        until_locked!(RedisJobs::run_once_is_locked(11)),
        "held while the body runs"
    );
    assert_eq!(
        shared.run_once(11, Duration::ZERO).await,
        0,
        "a second call is refused while the first runs"
    );
    RedisJobs::run_once_release(11).await.unwrap();
    assert!(!RedisJobs::run_once_is_locked(11).await.unwrap());
    assert_eq!(
        shared.run_once(11, Duration::ZERO).await,
        1,
        "after `_release` a call runs although the first still does"
    );
    let first = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("task finished")
        .unwrap();
    assert_eq!(first, 1);
    assert_eq!(concrete.runs.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn async_trait_lock_siblings() {
    let concrete = jobs("lock");
    let shared: Arc<dyn Jobs> = concrete.clone();
    let running = {
        let shared = Arc::clone(&shared);
        tokio::spawn(async move { shared.run_locked(12, Duration::from_millis(500)).await })
    };
    assert!(
        until_locked!(RedisJobs::run_locked_is_locked(12)),
        "held while the body runs"
    );
    assert!(
        shared.run_locked(12, Duration::ZERO).await.is_err(),
        "no wait: refused while held"
    );
    let first = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("task finished")
        .unwrap();
    assert_eq!(first.unwrap(), 2);
    assert!(
        !RedisJobs::run_locked_is_locked(12).await.unwrap(),
        "released when the body finished"
    );
    RedisJobs::run_locked_release(12).await.unwrap();
    assert_eq!(concrete.runs.load(Ordering::SeqCst), 1);
}

// ---- A default method in the trait itself: every implementor shares its key,
// and the sibling is a provided method of the trait.

pub trait Greeter {
    fn name(&self) -> String;

    #[cached("greeting-{id}", client = memory())]
    fn greet(&self, id: u32) -> String {
        format!("hello {id} from {}", self.name())
    }
}

pub struct English;
pub struct French;

impl Greeter for English {
    fn name(&self) -> String {
        "english".into()
    }
}

impl Greeter for French {
    fn name(&self) -> String {
        "french".into()
    }
}

#[test]
fn default_method_key_is_shared_by_implementors() {
    English::greet_reset(1).unwrap();
    assert_eq!(English.greet(1), "hello 1 from english");
    assert_eq!(
        French.greet(1),
        "hello 1 from english",
        "the template does not name the implementor, so both share the key"
    );
    French::greet_reset(1).unwrap();
    assert_eq!(French.greet(1), "hello 1 from french");
}
