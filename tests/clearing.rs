//! Clearing many entries at once, on memory, one Redis node and the Redis
//! Cluster, async and sync:
//!
//! - `<fn>_clear` deletes its function's entries for every argument
//!   (escaped values and shortened long keys included), and not those of
//!   another template that shares its literal start;
//! - `clear()` deletes every cached entry and HTTP response of the client,
//!   and leaves a held lock and its fencing counter alone.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use cachify::http::CacheLayer;
use cachify::{Cachify, CachifyBuilder, cached};

#[derive(Clone, Copy, Debug)]
enum Store {
    Memory,
    Redis,
    Cluster,
}

impl Store {
    /// A builder under a prefix no other test uses.
    fn builder(self, test: &str) -> CachifyBuilder {
        let builder = Cachify::builder()
            .prefix(self.prefix(test))
            .command_timeout(Duration::from_secs(2));
        match self {
            Store::Memory => builder.memory(),
            Store::Redis => builder.redis(support::shared_server().url()),
            Store::Cluster => builder.redis_cluster(support::cluster::shared_cluster().seeds()),
        }
    }

    fn prefix(self, test: &str) -> String {
        format!("clearing-{test}-{self:?}:")
    }

    async fn client(self, test: &str) -> Cachify {
        self.builder(test)
            .build()
            .await
            .expect("build the test client")
    }

    /// Whether `key` exists, asked as another client would; `None` on memory.
    fn exists(self, key: &str) -> Option<bool> {
        let command = {
            let mut command = ::redis::cmd("EXISTS");
            command.arg(key);
            command
        };
        match self {
            Store::Memory => None,
            Store::Redis => Some(
                command
                    .query(&mut support::shared_server().connection())
                    .unwrap(),
            ),
            Store::Cluster => Some(
                command
                    .query(&mut support::cluster::shared_cluster().connection())
                    .unwrap(),
            ),
        }
    }
}

macro_rules! on_every_backend {
    (async: [$($test:ident),* $(,)?], sync: [$($sync:ident),* $(,)?]) => {
        mod memory {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $test() { super::$test(super::Store::Memory).await; })*
            $(#[test] fn $sync() { super::$sync(super::Store::Memory); })*
        }
        mod redis {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $test() { super::$test(super::Store::Redis).await; })*
            $(#[test] fn $sync() { super::$sync(super::Store::Redis); })*
        }
        mod cluster {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)] async fn $test() { super::$test(super::Store::Cluster).await; })*
            $(#[test] fn $sync() { super::$sync(super::Store::Cluster); })*
        }
    };
}

on_every_backend!(
    async: [
        clear_sibling_deletes_every_argument_of_its_template_only,
        clear_deletes_cached_and_http_entries_and_leaves_locks,
    ],
    sync: [
        blocking_clear_sibling_deletes_every_argument_of_its_template_only,
        blocking_clear_deletes_cached_entries_and_leaves_locks,
    ]
);

/// Runs of a function, counted per test.
#[derive(Clone, Default)]
struct Calls(Arc<AtomicU32>);

impl Calls {
    fn bump(&self) -> u32 {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }

    fn get(&self) -> u32 {
        self.0.load(Ordering::SeqCst)
    }
}

#[cached("user-{id}-card", client = client)]
async fn card(client: &Cachify, calls: &Calls, id: &str) -> String {
    calls.bump();
    format!("card {id}")
}

#[cached("user-settings-{id}", client = client)]
async fn user_settings(client: &Cachify, calls: &Calls, id: u64) -> String {
    calls.bump();
    format!("settings {id}")
}

#[cached("user-{id}", client = client)]
async fn user(client: &Cachify, calls: &Calls, id: u64) -> String {
    calls.bump();
    format!("user {id}")
}

async fn clear_sibling_deletes_every_argument_of_its_template_only(store: Store) {
    let client = store.client("sibling").await;
    let (cards, settings) = (Calls::default(), Calls::default());
    let long = "z".repeat(3000);
    // Escaped values (`-` is the stop character, ` ` always escaped) and a
    // key long enough to be shortened to a head and a digest.
    let ids = ["1", "a-b", "x y", "set", long.as_str()];
    for id in ids {
        card(&client, &cards, id).await;
    }
    for id in [1, 2] {
        user_settings(&client, &settings, id).await;
    }
    assert_eq!((cards.get(), settings.get()), (5, 2));

    assert_eq!(card_clear(&client).await.unwrap(), 5);
    for id in ids {
        card(&client, &cards, id).await;
    }
    for id in [1, 2] {
        user_settings(&client, &settings, id).await;
    }
    assert_eq!(
        (cards.get(), settings.get()),
        (10, 2),
        "every card ran again; the settings, which share `user-`, were kept"
    );

    assert_eq!(user_settings_clear(&client).await.unwrap(), 2);
    for id in [1, 2] {
        user_settings(&client, &settings, id).await;
    }
    card(&client, &cards, "1").await;
    assert_eq!((cards.get(), settings.get()), (10, 4));
    assert_eq!(user_settings_clear(&client).await.unwrap(), 2);
    assert_eq!(user_settings_clear(&client).await.unwrap(), 0);

    // `user-{id}` with an integer `id` renders digits only: it clears
    // neither `user-settings-5` nor `user-1-card`.
    let users = Calls::default();
    for id in [1, 2] {
        user(&client, &users, id).await;
        user_settings(&client, &settings, id).await;
    }
    assert_eq!((users.get(), settings.get()), (2, 6));
    assert_eq!(user_clear(&client).await.unwrap(), 2);
    for id in [1, 2] {
        user(&client, &users, id).await;
        user_settings(&client, &settings, id).await;
    }
    card(&client, &cards, "1").await;
    assert_eq!((users.get(), settings.get(), cards.get()), (4, 6, 10));
}

#[cached("order-{id}-lines", client = client)]
fn order_lines(client: &Cachify, calls: &Calls, id: u64) -> u64 {
    calls.bump();
    id * 10
}

#[cached("order-{id}-total", client = client)]
fn order_total(client: &Cachify, calls: &Calls, id: u64) -> u64 {
    calls.bump();
    id * 100
}

fn blocking_clear_sibling_deletes_every_argument_of_its_template_only(store: Store) {
    let client = store
        .builder("blocking-sibling")
        .build_blocking()
        .expect("build the test client");
    let (lines, totals) = (Calls::default(), Calls::default());
    for id in 0..3 {
        order_lines(&client, &lines, id);
        order_total(&client, &totals, id);
    }
    assert_eq!(order_lines_clear(&client).unwrap(), 3);
    for id in 0..3 {
        order_lines(&client, &lines, id);
        order_total(&client, &totals, id);
    }
    assert_eq!(
        (lines.get(), totals.get()),
        (6, 3),
        "the lines ran again, the totals were kept"
    );
}

/// A server on a loopback port with one cached, counting route.
async fn serve(client: &Cachify, calls: &Calls) -> String {
    let calls = calls.clone();
    let router = Router::new().route(
        "/hello",
        get(move || {
            let run = calls.bump();
            async move { format!("hello {run}") }
        })
        .route_layer(CacheLayer::new().client(client.clone()).namespace("hello")),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let address = listener.local_addr().expect("the bound address");
    // Ends with the test's runtime.
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{address}/hello")
}

async fn get_text(url: &str) -> String {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
        .get(url)
        .send()
        .await
        .expect("the request succeeds")
        .text()
        .await
        .expect("the whole body")
}

async fn clear_deletes_cached_and_http_entries_and_leaves_locks(store: Store) {
    let client = store.client("all").await;
    let (cards, pages) = (Calls::default(), Calls::default());
    let url = serve(&client, &pages).await;
    card(&client, &cards, "1").await;
    assert_eq!(get_text(&url).await, "hello 1");
    assert_eq!(get_text(&url).await, "hello 1", "the response is cached");
    let guard = client.lock("nightly").acquire().await.unwrap();
    let fence = format!("{}fence:{{{}}}", store.prefix("all"), guard.key());

    assert_eq!(
        client.clear().await.unwrap(),
        2,
        "one entry and one response"
    );
    card(&client, &cards, "1").await;
    assert_eq!(cards.get(), 2, "the cached entry went");
    assert_eq!(get_text(&url).await, "hello 2", "the HTTP response went");
    assert!(
        client.lock("nightly").acquire().await.is_err(),
        "the lock is still held"
    );
    let on_redis = (!matches!(store, Store::Memory)).then_some(true);
    assert_eq!(store.exists(&fence), on_redis, "its fencing counter stayed");
    assert_eq!(store.exists(guard.key()), on_redis);

    // The global function, through a scope.
    let cleared = cachify::scope(&client, async { cachify::clear().await.unwrap() }).await;
    assert_eq!(cleared, 2);
    card(&client, &cards, "1").await;
    assert_eq!(cards.get(), 3);
    guard.release().await.expect("the lock was ours all along");
}

fn blocking_clear_deletes_cached_entries_and_leaves_locks(store: Store) {
    let client = store
        .builder("blocking-all")
        .build_blocking()
        .expect("build the test client");
    let lines = Calls::default();
    order_lines(&client, &lines, 1);
    order_lines(&client, &lines, 2);
    let guard = client.lock("nightly").acquire_blocking().unwrap();
    assert_eq!(client.clear_blocking().unwrap(), 2);
    order_lines(&client, &lines, 1);
    assert_eq!(lines.get(), 3);
    assert_eq!(
        cachify::scope_blocking(&client, cachify::clear_blocking).unwrap(),
        1
    );
    assert!(client.lock("nightly").acquire_blocking().is_err());
    guard
        .release_blocking()
        .expect("the lock was ours all along");
}
