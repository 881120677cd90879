//! What cachify shows through `tracing`, and the per-template counters of
//! `stats_by_template()`:
//!
//! - every `#[cached]` call runs in a TRACE span `cachify.call` with its
//!   kind, template, function, rendered key and outcome (hit, miss, near,
//!   bypass, stale), typed hits included;
//! - lock acquisition, contention, loss and release are DEBUG events, and
//!   so are a pool slot's (acquired, full, lost, released);
//! - `stats_by_template()` counts per (kind, template) for cached, once,
//!   lock, `cachify::lock()` and HTTP calls, and serializes.
//!
//! One capturing subscriber is installed for the whole binary (lock loss
//! is seen on cachify's background thread); each test reads only the
//! records of its own templates and keys.

mod support;

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use cachify::{Cachify, CallKind, Error, cached, lock, once};
use support::{Deadline, RedisServer};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::prelude::*;
use tracing_subscriber::registry::LookupSpan;

const TEST_LIMIT: Duration = Duration::from_secs(60);

// ============================================================ the capture

type Fields = BTreeMap<String, String>;

#[derive(Clone, Debug)]
struct SpanRecord {
    name: String,
    fields: Fields,
}

#[derive(Clone, Debug)]
struct EventRecord {
    level: Level,
    target: String,
    fields: Fields,
}

#[derive(Default)]
struct Captured {
    spans: Vec<SpanRecord>,
    events: Vec<EventRecord>,
}

/// Where a span's record is in [`Captured::spans`].
struct Slot(usize);

struct FieldsOf<'a>(&'a mut Fields);

impl Visit for FieldsOf<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

struct Capture;

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields::new();
        attrs.record(&mut FieldsOf(&mut fields));
        let mut captured = captured();
        captured.spans.push(SpanRecord {
            name: attrs.metadata().name().to_owned(),
            fields,
        });
        let slot = captured.spans.len() - 1;
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(Slot(slot));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let Some(Slot(slot)) = span.extensions().get::<Slot>().map(|slot| Slot(slot.0)) else {
            return;
        };
        let mut captured = captured();
        values.record(&mut FieldsOf(&mut captured.spans[slot].fields));
    }

    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut fields = Fields::new();
        event.record(&mut FieldsOf(&mut fields));
        captured().events.push(EventRecord {
            level: *event.metadata().level(),
            target: event.metadata().target().to_owned(),
            fields,
        });
    }
}

fn captured() -> std::sync::MutexGuard<'static, Captured> {
    static CAPTURED: OnceLock<Mutex<Captured>> = OnceLock::new();
    CAPTURED
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Installs the capture for the whole process, once.
fn capture() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        tracing_subscriber::registry()
            .with(Capture)
            .try_init()
            .expect("the only global subscriber of this binary");
    });
}

/// The `cachify.call` spans of `template`, in the order they began.
fn call_spans(template: &str) -> Vec<Fields> {
    captured()
        .spans
        .iter()
        .filter(|span| span.name == "cachify.call")
        .filter(|span| span.fields.get("template").map(String::as_str) == Some(template))
        .map(|span| span.fields.clone())
        .collect()
}

fn outcomes(template: &str) -> Vec<String> {
    call_spans(template)
        .iter()
        .map(|fields| fields.get("outcome").cloned().unwrap_or_default())
        .collect()
}

/// The `cachify::lock` events of lock `key`, as their `lock` field.
fn lock_events(key: &str) -> Vec<(Level, String)> {
    captured()
        .events
        .iter()
        .filter(|event| event.target == "cachify::lock")
        .filter(|event| event.fields.get("key").map(String::as_str) == Some(key))
        .map(|event| {
            let what = event.fields.get("lock").cloned().unwrap_or_default();
            (event.level, what)
        })
        .collect()
}

fn memory() -> Cachify {
    Cachify::builder().memory().build_blocking().unwrap()
}

/// The row of (`kind`, `template`) in `client.stats_by_template()`.
fn row(client: &Cachify, kind: CallKind, template: &str) -> cachify::TemplateStats {
    client
        .stats_by_template()
        .into_iter()
        .find(|row| row.kind == kind && row.template == template)
        .unwrap_or_else(|| {
            panic!(
                "no row for {kind:?} {template}: {:?}",
                client.stats_by_template()
            )
        })
}

// ============================================================ spans

#[cached("obs-user-{id}", client = client)]
async fn user(client: &Cachify, id: u64) -> u64 {
    let _ = client;
    id * 10
}

#[cached("obs-sync-{id}", client = client)]
fn user_sync(client: &Cachify, id: u64) -> u64 {
    let _ = client;
    id + 1
}

#[tokio::test]
async fn every_cached_call_has_a_span_with_kind_template_key_and_outcome() {
    let _deadline = Deadline::new(TEST_LIMIT, "spans");
    capture();
    let client = Cachify::builder()
        .memory()
        .prefix("obs1:")
        .build()
        .await
        .unwrap();
    // Miss, hit through the rendered key, then what would be a typed hit:
    // with spans wanted it takes the rendered path, so it has a span too.
    for _ in 0..3 {
        assert_eq!(user(&client, 7).await, 70);
    }
    assert_eq!(outcomes("obs-user-{id}"), ["miss", "hit", "hit"]);
    let span = &call_spans("obs-user-{id}")[0];
    assert_eq!(span["kind"], "cached");
    assert_eq!(span["key"], "obs1:cache:obs-user-7");
    assert!(
        span["function"].ends_with("observability::user"),
        "{span:?}"
    );

    for _ in 0..3 {
        assert_eq!(user_sync(&client, 4), 5);
    }
    assert_eq!(outcomes("obs-sync-{id}"), ["miss", "hit", "hit"]);
    assert_eq!(
        call_spans("obs-sync-{id}")[2]["key"],
        "obs1:cache:obs-sync-4"
    );
    assert_eq!(client.stats().hits, 4, "the hits are counted as before");
}

#[cached("obs-breaker-{id}", client = client)]
async fn breaker_guarded(client: &Cachify, id: u64) -> u64 {
    let _ = client;
    id
}

#[tokio::test]
async fn a_call_with_the_breaker_open_is_a_bypass() {
    let _deadline = Deadline::new(TEST_LIMIT, "bypass");
    capture();
    let mut server = RedisServer::start();
    let client = Cachify::builder()
        .redis(server.url())
        .prefix("obs2:")
        .command_timeout(Duration::from_millis(200))
        .connect_timeout(Duration::from_millis(200))
        .circuit_breaker(1, Duration::from_secs(60))
        .build()
        .await
        .unwrap();
    server.stop();
    // The first call's read fails and opens the breaker; the next skips Redis.
    assert_eq!(breaker_guarded(&client, 1).await, 1);
    assert_eq!(breaker_guarded(&client, 2).await, 2);
    assert_eq!(outcomes("obs-breaker-{id}"), ["miss", "bypass"]);
    let warned = captured().events.iter().any(|event| {
        event.level == Level::WARN
            && event.fields.get("key").map(String::as_str) == Some("obs2:cache:obs-breaker-1")
    });
    assert!(warned, "the failure is still a WARN line");

    let stats = client.stats_by_template();
    let row = stats
        .iter()
        .find(|row| row.template == "obs-breaker-{id}")
        .expect("a row for the template");
    assert_eq!((row.errors, row.bypassed, row.hits), (1, 1, 0), "{row:?}");
}

#[cached("obs-near-{id}", ttl = 300, client = client)]
async fn near_item(client: &Cachify, id: u64) -> u64 {
    let _ = client;
    id * 3
}

#[tokio::test]
async fn a_hit_from_the_near_cache_is_near() {
    let _deadline = Deadline::new(TEST_LIMIT, "near");
    capture();
    let server = RedisServer::start();
    let client = Cachify::builder()
        .redis(server.url())
        .prefix("obs3:")
        .near_cache(100)
        .build()
        .await
        .unwrap();
    let started = Instant::now();
    loop {
        let before = client.stats().near_hits;
        assert_eq!(near_item(&client, 5).await, 15);
        if client.stats().near_hits > before {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no near hit: {:?}",
            client.stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let outcomes = outcomes("obs-near-{id}");
    assert_eq!(outcomes.first().map(String::as_str), Some("miss"));
    assert_eq!(outcomes.last().map(String::as_str), Some("near"));
}

// ============================================================ lock events

#[lock("obs-job-{n}", client = client)]
async fn job(client: &Cachify, n: u64) -> Result<u64, Error> {
    let _ = client;
    Ok(n)
}

/// Calls itself while holding its lock: the inner call is refused.
#[once("obs-once-{n}", client = client)]
fn once_job(client: &Cachify, n: u64, nested: bool) -> Result<bool, Error> {
    if nested {
        return Ok(false);
    }
    Ok(matches!(
        once_job(client, n, true),
        Err(Error::Locked { .. })
    ))
}

#[lock("obs-lost", client = client, ttl = Duration::from_millis(90))]
async fn loses_its_lock(client: &Cachify) -> Result<(), Error> {
    loses_its_lock_release(client).await?;
    // Long enough for several renewals, which find the lock gone.
    tokio::time::sleep(Duration::from_millis(400)).await;
    Ok(())
}

#[tokio::test]
async fn locks_log_acquired_contended_lost_and_released() {
    let _deadline = Deadline::new(TEST_LIMIT, "lock events");
    capture();
    let client = Cachify::builder()
        .memory()
        .prefix("obs4:")
        .build()
        .await
        .unwrap();
    let debug = |what: &str| (Level::DEBUG, what.to_owned());

    assert_eq!(job(&client, 1).await.unwrap(), 1);
    assert_eq!(
        lock_events("obs4:lock:obs-job-1"),
        [debug("acquired"), debug("released")]
    );

    let held = client.lock("obs-held").acquire().await.unwrap();
    let _ = client.lock("obs-held").acquire().await.unwrap_err();
    drop(held);
    assert_eq!(
        lock_events("obs4:lock:obs-held"),
        [debug("acquired"), debug("contended"), debug("released")]
    );

    assert!(
        once_job(&client, 2, false).unwrap(),
        "the nested call is refused"
    );
    assert_eq!(
        lock_events("obs4:once:obs-once-2"),
        [debug("acquired"), debug("contended"), debug("released")]
    );
    let once = row(&client, CallKind::Once, "obs-once-{n}");
    assert_eq!((once.locks_acquired, once.lock_contention), (1, 1));

    loses_its_lock(&client).await.unwrap();
    assert_eq!(
        lock_events("obs4:lock:obs-lost"),
        [debug("acquired"), debug("lost")],
        "released by force, then found lost by the watchdog"
    );
}

// ============================================================ stats by template

#[cached("obs-shared-{id}", client = client)]
fn shared_a(client: &Cachify, id: u64) -> u64 {
    let _ = client;
    id
}

#[cached("obs-shared-{id}", client = client)]
fn shared_b(client: &Cachify, id: String) -> String {
    let _ = client;
    id
}

#[cached("obs-alone-{id}", client = client)]
fn alone(client: &Cachify, id: u64) -> u64 {
    let _ = client;
    id
}

#[test]
fn stats_by_template_counts_each_template_apart() {
    capture();
    let client = memory();
    for _ in 0..3 {
        shared_a(&client, 1);
    }
    shared_b(&client, "x".to_owned());
    shared_b(&client, "y".to_owned());
    alone(&client, 1);
    alone(&client, 1);

    // The shared template is said once, naming both functions.
    let shared_warnings: Vec<Fields> = captured()
        .events
        .iter()
        .filter(|event| event.level == Level::WARN)
        .filter(|event| {
            event
                .fields
                .get("message")
                .is_some_and(|message| message.contains("same key template"))
        })
        .map(|event| event.fields.clone())
        .collect();
    let about = |template: &str| {
        shared_warnings
            .iter()
            .filter(|fields| fields.get("template").map(String::as_str) == Some(template))
            .count()
    };
    assert_eq!(about("obs-shared-{id}"), 1, "{shared_warnings:?}");
    assert_eq!(about("obs-alone-{id}"), 0, "{shared_warnings:?}");
    let warning = shared_warnings
        .iter()
        .find(|fields| fields.get("template").map(String::as_str) == Some("obs-shared-{id}"))
        .unwrap();
    assert_eq!(warning["first"], "observability::shared_a");
    assert_eq!(warning["second"], "observability::shared_b");

    let shared = row(&client, CallKind::Cached, "obs-shared-{id}");
    assert_eq!((shared.hits, shared.misses), (2, 3), "{shared:?}");
    assert_eq!(
        shared.functions,
        ["observability::shared_a", "observability::shared_b"]
    );
    let alone = row(&client, CallKind::Cached, "obs-alone-{id}");
    assert_eq!((alone.hits, alone.misses, alone.errors), (1, 1, 0));
    let total = client.stats();
    assert_eq!((total.hits, total.misses), (3, 4));

    let json = serde_json::to_value(client.stats_by_template()).unwrap();
    let rows = json.as_array().unwrap();
    let alone = rows
        .iter()
        .find(|row| row["template"] == "obs-alone-{id}")
        .unwrap();
    assert_eq!(alone["kind"], "cached");
    assert_eq!(alone["hits"], 1);
    assert_eq!(alone["functions"][0], "observability::alone");
    let stats = serde_json::to_value(client.stats()).unwrap();
    assert_eq!(stats["hits"], 3);
    assert_eq!(stats["breaker"], "closed");
}

#[cached("obs-many-{id}", client = client)]
fn many(client: &Cachify, id: u64) -> u64 {
    let _ = client;
    id
}

/// A function keeps slots for its first few clients; the ones after count
/// too, through their client's own map.
#[test]
fn clients_beyond_a_functions_slots_count_too() {
    let clients: Vec<Cachify> = (0..8).map(|_| memory()).collect();
    for client in &clients {
        for _ in 0..4 {
            assert_eq!(many(client, 3), 3);
        }
    }
    for client in &clients {
        let row = row(client, CallKind::Cached, "obs-many-{id}");
        assert_eq!((row.hits, row.misses), (3, 1), "{row:?}");
    }
}

#[lock("obs-count-{n}", client = client)]
fn counted_lock(client: &Cachify, n: u64) -> Result<u64, Error> {
    let _ = client;
    Ok(n)
}

#[test]
fn locks_count_by_template_and_the_lock_api_under_one_label() {
    let client = memory();
    counted_lock(&client, 1).unwrap();
    counted_lock(&client, 2).unwrap();
    let held = client.lock("obs-api-a").acquire_blocking().unwrap();
    let refused = client.lock("obs-api-a").acquire_blocking();
    assert!(matches!(refused, Err(Error::Locked { .. })));
    drop(held);
    drop(client.lock("obs-api-b").acquire_blocking().unwrap());

    let lock = row(&client, CallKind::Lock, "obs-count-{n}");
    assert_eq!((lock.locks_acquired, lock.lock_contention), (2, 0));
    assert_eq!(lock.functions, ["observability::counted_lock"]);
    let api = row(&client, CallKind::Lock, cachify::LOCK_API_TEMPLATE);
    assert_eq!((api.locks_acquired, api.lock_contention), (2, 1));
    assert!(api.functions.is_empty());
    assert!(
        client
            .stats_by_template()
            .iter()
            .all(|row| !row.template.starts_with("obs-api")),
        "a lock name is never a template"
    );
}

#[tokio::test]
async fn http_lookups_count_under_their_namespace() {
    use axum::Router;
    use axum::routing::get;
    use cachify::http::CacheLayer;

    capture();
    let _deadline = Deadline::new(TEST_LIMIT, "http stats");
    let client = memory();
    let router = Router::new()
        .route("/users", get(|| async { "all" }))
        .layer(
            CacheLayer::new()
                .client(client.clone())
                .namespace("obs-users")
                .ttl(Duration::from_secs(60)),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    for _ in 0..3 {
        let body = http
            .get(format!("http://{address}/users"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(body, "all");
    }
    let users = row(&client, CallKind::Http, "obs-users");
    assert_eq!((users.hits, users.misses), (2, 1), "{users:?}");
    // Each lookup has its span, the namespace as its template.
    let spans = call_spans("obs-users");
    assert_eq!(outcomes("obs-users"), ["miss", "hit", "hit"], "{spans:?}");
    assert_eq!(spans[0]["kind"], "http");
    assert_eq!(spans[0]["key"], "cachify:http:obs-users:GET:/users");
}

pub trait Find {
    fn find(&self, client: &Cachify, id: u64) -> u64;
}

pub struct FromA;
pub struct FromB;

#[cachify::trait_impl]
impl Find for FromA {
    #[cached("obs-trait-{id}", client = client)]
    fn find(&self, client: &Cachify, id: u64) -> u64 {
        let _ = client;
        id
    }
}

#[cachify::trait_impl]
impl Find for FromB {
    #[cached("obs-trait-{id}", client = client)]
    fn find(&self, client: &Cachify, id: u64) -> u64 {
        let _ = client;
        id + 1
    }
}

/// Two impls' `find` in one module are two functions, named by their impl,
/// and sharing a template they are warned about.
#[test]
fn trait_impl_methods_are_named_by_their_impl() {
    capture();
    let client = memory();
    assert_eq!(FromA.find(&client, 1), 1);
    assert_eq!(FromB.find(&client, 2), 3);
    let shared = row(&client, CallKind::Cached, "obs-trait-{id}");
    assert_eq!(
        shared.functions,
        [
            "observability::<FromA as Find>::find",
            "observability::<FromB as Find>::find"
        ]
    );
    let warned = captured()
        .events
        .iter()
        .filter(|event| event.level == Level::WARN)
        .filter(|event| event.fields.get("template").map(String::as_str) == Some("obs-trait-{id}"))
        .count();
    assert_eq!(warned, 1);
}

// ============================================================ pool events

/// The `cachify::pool` events of pool `key`, as their `pool` field.
fn pool_events(key: &str) -> Vec<(Level, String)> {
    captured()
        .events
        .iter()
        .filter(|event| event.target == "cachify::pool")
        .filter(|event| event.fields.get("key").map(String::as_str) == Some(key))
        .map(|event| {
            let what = event.fields.get("pool").cloned().unwrap_or_default();
            (event.level, what)
        })
        .collect()
}

#[cachify::pooled("obs-export-{n}", max_size = 1, client = client)]
async fn export(client: &Cachify, n: u64) -> Result<bool, Error> {
    // Calls itself while holding the only slot: the inner call is refused.
    Ok(matches!(
        Box::pin(export_inner(client, n)).await,
        Err(Error::PoolFull { .. })
    ))
}

#[cachify::pooled("obs-export-{n}", max_size = 1, client = client)]
async fn export_inner(client: &Cachify, n: u64) -> Result<bool, Error> {
    let _ = client;
    Ok(false)
}

#[tokio::test]
async fn pools_log_acquired_full_lost_and_released() {
    let _deadline = Deadline::new(TEST_LIMIT, "pool events");
    capture();
    let client = Cachify::builder()
        .memory()
        .prefix("obs6:")
        .build()
        .await
        .unwrap();
    let debug = |what: &str| (Level::DEBUG, what.to_owned());

    assert!(
        export(&client, 1).await.unwrap(),
        "the nested call is refused"
    );
    assert_eq!(
        pool_events("obs6:pool:obs-export-1"),
        [debug("acquired"), debug("full"), debug("released")]
    );
    let pool = row(&client, CallKind::Pool, "obs-export-{n}");
    assert_eq!((pool.locks_acquired, pool.lock_contention), (1, 1));

    let held = client.pool("obs-held", 1).acquire().await.unwrap();
    let _ = client.pool("obs-held", 1).acquire().await.unwrap_err();
    drop(held);
    assert_eq!(
        pool_events("obs6:pool:obs-held"),
        [debug("acquired"), debug("full"), debug("released")]
    );
    let api = row(&client, CallKind::Pool, cachify::POOL_API_TEMPLATE);
    assert_eq!((api.locks_acquired, api.lock_contention), (1, 1));

    // Lost: the pool deleted from outside while its holder runs.
    let server = RedisServer::start();
    let client = Cachify::builder()
        .redis(server.url())
        .prefix("obs6:")
        .build()
        .await
        .unwrap();
    let slot = client
        .pool("obs-lost", 1)
        .ttl(Duration::from_millis(90))
        .acquire()
        .await
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg(slot.key())
        .query(&mut server.connection())
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), slot.lost())
        .await
        .expect("the watchdog finds the slot gone");
    assert!(matches!(slot.release().await, Err(Error::NotOwner)));
    assert_eq!(
        pool_events("obs6:pool:obs-lost"),
        [debug("acquired"), debug("lost")],
        "found lost by the watchdog, reported once"
    );
}

// ============================================================ stale values

static STALE_FAILS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[cached("obs-stale-{id}", ttl = Duration::from_millis(200), stale_if_error = 60, client = client)]
async fn stale_user(client: &Cachify, id: u64) -> Result<u64, String> {
    let _ = client;
    if STALE_FAILS.load(std::sync::atomic::Ordering::SeqCst) {
        Err("down".into())
    } else {
        Ok(id)
    }
}

#[tokio::test]
async fn a_stale_answer_has_the_outcome_stale_and_is_counted() {
    let _deadline = Deadline::new(TEST_LIMIT, "stale spans");
    capture();
    let client = memory();
    assert_eq!(stale_user(&client, 3).await, Ok(3));
    STALE_FAILS.store(true, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stale_user(&client, 3).await, Ok(3));
    assert_eq!(outcomes("obs-stale-{id}"), ["miss", "stale"]);
    assert_eq!(row(&client, CallKind::Cached, "obs-stale-{id}").stale, 1);
    assert_eq!(client.stats().stale, 1);
}
