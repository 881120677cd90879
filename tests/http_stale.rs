//! `CacheLayer::stale_while_revalidate` and `stale_if_error`, over real
//! HTTP on loopback (axum + reqwest), on memory, on a single Redis node and
//! on a Redis Cluster. The handler's refresh blocks on a gate the test
//! opens, so a stale answer provably did not wait for the handler.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::get;
use cachify::Cachify;
use cachify::http::CacheLayer;
use tokio::sync::watch;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

/// Per request, headers and body: a broken test fails instead of hanging.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a test waits for something to happen in the background.
const PATIENCE: Duration = Duration::from_secs(10);
/// The freshness of entries in these tests: long enough for a second
/// request to be a hit on a loaded machine.
const TTL: Duration = Duration::from_secs(1);
/// Long enough after a fill for the entry to be stale.
const PAST_TTL: Duration = Duration::from_millis(1200);
/// A window no test outlives.
const LONG: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug)]
enum Store {
    Memory,
    Redis,
    Cluster,
}

impl Store {
    async fn build(self, test: &str) -> Cachify {
        // A loaded machine must not turn a slow fill-lock or write
        // command into a second refresh.
        let builder = Cachify::builder()
            .prefix(format!("http-stale-{test}-{self:?}:"))
            .command_timeout(Duration::from_secs(5));
        match self {
            Store::Memory => builder.memory(),
            Store::Redis => builder.redis(support::shared_server().url()),
            Store::Cluster => builder.redis_cluster(support::cluster::shared_cluster().seeds()),
        }
        .build()
        .await
        .expect("build the test client")
    }

    /// A client under a prefix no other test uses.
    async fn client(self, test: &str) -> Cachify {
        self.build(test).await
    }

    /// Two clients that share the entries and locks of `test`, as two
    /// processes would: two connections on Redis, one client on memory
    /// (whose entries live in one process only).
    async fn two_clients(self, test: &str) -> (Cachify, Cachify) {
        let first = self.build(test).await;
        let second = match self {
            Store::Memory => first.clone(),
            Store::Redis | Store::Cluster => self.build(test).await,
        };
        (first, second)
    }
}

/// Generates one `#[tokio::test]` per backend for each `async fn(Store)`.
macro_rules! on_every_backend {
    ($($test:ident),* $(,)?) => {
        mod memory {
            $(#[tokio::test] async fn $test() { super::$test(super::Store::Memory).await; })*
        }
        mod redis {
            $(#[tokio::test] async fn $test() { super::$test(super::Store::Redis).await; })*
        }
        mod cluster {
            $(#[tokio::test] async fn $test() { super::$test(super::Store::Cluster).await; })*
        }
    };
}

on_every_backend!(
    fresh_entries_are_hits,
    stale_is_served_at_once_while_refreshing,
    one_refresh_per_key,
    one_refresh_per_key_across_layers,
    past_the_window_is_a_miss,
    a_failed_refresh_keeps_the_stale_entry,
    request_no_cache_is_never_answered_stale,
    stale_if_error_replaces_a_5xx,
    stale_if_error_passes_errors_without_an_entry_or_past_the_window,
    client_errors_are_not_replaced,
    stale_if_error_warns_at_most_once_per_period,
    head_is_never_answered_stale,
    a_handler_cache_control_is_replayed_with_its_age,
);

/// A handler whose first run answers at once and whose later runs wait
/// for the gate; each answers `v{run}` with the status set by the test.
#[derive(Clone)]
struct Backend {
    calls: Arc<AtomicUsize>,
    status: Arc<AtomicU16>,
    gate: watch::Receiver<bool>,
    /// The handler's own `Cache-Control`, if any.
    cache_control: Option<&'static str>,
}

struct Control {
    backend: Backend,
    gate: watch::Sender<bool>,
}

impl Control {
    fn new() -> Self {
        let (gate, receiver) = watch::channel(false);
        Self {
            backend: Backend {
                calls: Arc::default(),
                status: Arc::new(AtomicU16::new(200)),
                gate: receiver,
                cache_control: None,
            },
            gate,
        }
    }

    /// A control whose gate is open from the start.
    fn open() -> Self {
        let control = Self::new();
        control.open_gate();
        control
    }

    fn open_gate(&self) {
        self.gate.send_replace(true);
    }

    fn calls(&self) -> usize {
        self.backend.calls.load(Ordering::SeqCst)
    }

    fn answer_with(&self, status: StatusCode) {
        self.backend.status.store(status.as_u16(), Ordering::SeqCst);
    }

    /// Waits (bounded) until the handler has started `calls` runs.
    async fn wait_for_calls(&self, calls: usize) {
        let started = Instant::now();
        while self.calls() < calls {
            assert!(
                started.elapsed() < PATIENCE,
                "the handler started {} runs, not {calls}",
                self.calls()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn router(&self, layer: CacheLayer) -> Router {
        let backend = self.backend.clone();
        Router::new()
            .route(
                "/data",
                get(move || {
                    let backend = backend.clone();
                    async move {
                        let run = backend.calls.fetch_add(1, Ordering::SeqCst) + 1;
                        let status = StatusCode::from_u16(backend.status.load(Ordering::SeqCst))
                            .expect("a valid status");
                        if run > 1 {
                            let mut gate = backend.gate.clone();
                            gate.wait_for(|open| *open).await.expect("the gate is kept");
                        }
                        let mut headers = HeaderMap::new();
                        if let Some(cache_control) = backend.cache_control {
                            headers.insert("cache-control", cache_control.parse().expect("valid"));
                        }
                        (status, headers, format!("v{run}"))
                    }
                }),
            )
            .route_layer(layer)
    }
}

/// A server on a loopback port and a client for it.
struct App {
    base: String,
    http: reqwest::Client,
}

async fn serve(router: Router) -> App {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let address = listener.local_addr().expect("the bound address");
    // Ends with the test's runtime.
    tokio::spawn(async move { axum::serve(listener, router).await });
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("build the HTTP client");
    App {
        base: format!("http://{address}"),
        http,
    }
}

/// A whole response.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .map(|value| value.to_str().expect("an ASCII header"))
    }

    /// `x-cachify`: `HIT`, `MISS` or `STALE`.
    fn cache(&self) -> Option<&str> {
        self.header("x-cachify")
    }

    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("a UTF-8 body")
    }
}

impl App {
    async fn get(&self, path: &str) -> Reply {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        let response = request.send().await.expect("the request succeeds");
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await.expect("the whole body");
        Reply {
            status,
            headers,
            body,
        }
    }

    /// GETs `path` until it is a `HIT` with `body` (bounded).
    async fn wait_for_hit(&self, path: &str, body: &str) -> Reply {
        let started = Instant::now();
        loop {
            let reply = self.get(path).await;
            if reply.cache() == Some("HIT") && reply.text() == body {
                return reply;
            }
            assert!(
                started.elapsed() < PATIENCE,
                "no HIT with `{body}`; last reply {:?} `{}`",
                reply.cache(),
                reply.text()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn layer(client: &Cachify) -> CacheLayer {
    CacheLayer::new()
        .client(client.clone())
        .namespace("stale")
        .ttl(TTL)
}

async fn fresh_entries_are_hits(store: Store) {
    let client = store.client("fresh").await;
    let control = Control::open();
    let app = serve(
        control.router(
            layer(&client)
                .stale_while_revalidate(LONG)
                .stale_if_error(LONG),
        ),
    )
    .await;

    let first = app.get("/data").await;
    assert_eq!((first.cache(), first.text()), (Some("MISS"), "v1"));
    let second = app.get("/data").await;
    assert_eq!((second.cache(), second.text()), (Some("HIT"), "v1"));
    assert_eq!(control.calls(), 1);
    assert_eq!(client.stats().stale, 0, "a fresh hit is not stale");
}

async fn stale_is_served_at_once_while_refreshing(store: Store) {
    let client = store.client("swr").await;
    let control = Control::new();
    let app = serve(control.router(layer(&client).stale_while_revalidate(LONG))).await;
    assert_eq!(app.get("/data").await.text(), "v1");
    tokio::time::sleep(PAST_TTL).await;

    // The refresh waits for the gate, still closed: this answer did not.
    let stale = app.get("/data").await;
    assert_eq!(stale.status, StatusCode::OK);
    assert_eq!((stale.cache(), stale.text()), (Some("STALE"), "v1"));
    assert_eq!(
        stale.header("cache-control"),
        Some("max-age=0"),
        "not fresh"
    );
    let age: u64 = stale
        .header("age")
        .expect("a stale reply has an Age")
        .parse()
        .expect("Age is seconds");
    assert!(age < 60, "Age {age} counts from the fill");
    control.wait_for_calls(2).await;
    assert_eq!(client.stats().stale, 1);

    // Still refreshing: still stale, no second refresh.
    let again = app.get("/data").await;
    assert_eq!((again.cache(), again.text()), (Some("STALE"), "v1"));

    control.open_gate();
    let fresh = app.wait_for_hit("/data", "v2").await;
    assert_eq!(fresh.status, StatusCode::OK);
    assert_eq!(control.calls(), 2, "one background refresh");
}

async fn one_refresh_per_key(store: Store) {
    let client = store.client("single-refresh").await;
    let control = Control::new();
    let app = Arc::new(serve(control.router(layer(&client).stale_while_revalidate(LONG))).await);
    assert_eq!(app.get("/data").await.text(), "v1");
    tokio::time::sleep(PAST_TTL).await;

    let requests: Vec<_> = (0..20)
        .map(|_| {
            let app = Arc::clone(&app);
            tokio::spawn(async move { app.get("/data").await })
        })
        .collect();
    for request in requests {
        let reply = request.await.expect("the request task");
        assert_eq!((reply.cache(), reply.text()), (Some("STALE"), "v1"));
    }
    control.wait_for_calls(2).await;
    assert_eq!(control.calls(), 2, "one refresh for 20 stale requests");
    let stats = client.stats();
    assert_eq!(
        (stats.locks_acquired, stats.lock_contention),
        (1, 0),
        "the other requests saw the refresh in this process, without asking the backend"
    );

    control.open_gate();
    app.wait_for_hit("/data", "v2").await;
    assert_eq!(control.calls(), 2);
}

/// Two layers that share nothing in this process but the backend (on
/// Redis, two clients: as two processes would): the fill lock lets one
/// refresh run.
async fn one_refresh_per_key_across_layers(store: Store) {
    let (first, second) = store.two_clients("across").await;
    let control = Control::new();
    let one = serve(control.router(layer(&first).stale_while_revalidate(LONG))).await;
    let two = serve(control.router(layer(&second).stale_while_revalidate(LONG))).await;
    assert_eq!(one.get("/data").await.text(), "v1");
    tokio::time::sleep(PAST_TTL).await;

    let stale = one.get("/data").await;
    assert_eq!((stale.cache(), stale.text()), (Some("STALE"), "v1"));
    control.wait_for_calls(2).await;
    for _ in 0..5 {
        let other = two.get("/data").await;
        assert_eq!((other.cache(), other.text()), (Some("STALE"), "v1"));
    }
    // Give a second refresh, if one was wrongly started, time to begin.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(control.calls(), 2, "the other layer did not refresh too");

    control.open_gate();
    one.wait_for_hit("/data", "v2").await;
    two.wait_for_hit("/data", "v2").await;
    assert_eq!(control.calls(), 2);
}

async fn past_the_window_is_a_miss(store: Store) {
    let client = store.client("past-swr").await;
    let control = Control::open();
    // Kept a minute for stale-if-error, stale-while-revalidate only 200 ms.
    let cache = layer(&client)
        .stale_while_revalidate(Duration::from_millis(200))
        .stale_if_error(LONG);
    let app = serve(control.router(cache)).await;
    assert_eq!(app.get("/data").await.text(), "v1");
    tokio::time::sleep(TTL + Duration::from_millis(600)).await;

    let reply = app.get("/data").await;
    assert_eq!((reply.cache(), reply.text()), (Some("MISS"), "v2"));
    assert_eq!(control.calls(), 2);
    assert_eq!(client.stats().stale, 0);
}

async fn a_failed_refresh_keeps_the_stale_entry(store: Store) {
    let client = store.client("failed-refresh").await;
    let control = Control::open();
    let app = serve(control.router(layer(&client).stale_while_revalidate(LONG))).await;
    assert_eq!(app.get("/data").await.text(), "v1");
    tokio::time::sleep(PAST_TTL).await;

    control.answer_with(StatusCode::INTERNAL_SERVER_ERROR);
    let stale = app.get("/data").await;
    assert_eq!((stale.cache(), stale.text()), (Some("STALE"), "v1"));
    control.wait_for_calls(2).await;
    // The failed refresh ends (its claim is dropped); the next stale
    // request starts another, and is still answered with v1.
    let started = Instant::now();
    while control.calls() < 3 {
        assert!(started.elapsed() < PATIENCE, "no second refresh");
        let reply = app.get("/data").await;
        assert_eq!(
            (reply.status, reply.cache(), reply.text()),
            (StatusCode::OK, Some("STALE"), "v1")
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    control.answer_with(StatusCode::OK);
    let started = Instant::now();
    loop {
        let reply = app.get("/data").await;
        assert_eq!(reply.status, StatusCode::OK);
        if reply.cache() == Some("HIT") {
            assert_ne!(reply.text(), "v1", "refreshed");
            break;
        }
        assert!(started.elapsed() < PATIENCE, "never refreshed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn request_no_cache_is_never_answered_stale(store: Store) {
    let client = store.client("no-cache").await;
    let control = Control::open();
    let cache = layer(&client)
        .stale_while_revalidate(LONG)
        .stale_if_error(LONG);
    let app = serve(control.router(cache)).await;
    assert_eq!(app.get("/data").await.text(), "v1");
    tokio::time::sleep(PAST_TTL).await;

    control.answer_with(StatusCode::SERVICE_UNAVAILABLE);
    let request = app
        .http
        .get(format!("{}/data", app.base))
        .header("cache-control", "no-cache");
    let reply = app.send(request).await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "the handler's own answer"
    );
    assert_eq!(reply.text(), "v2");

    control.answer_with(StatusCode::OK);
    let request = app
        .http
        .get(format!("{}/data", app.base))
        .header("cache-control", "no-cache");
    let reply = app.send(request).await;
    assert_eq!((reply.cache(), reply.text()), (Some("MISS"), "v3"));
    assert_eq!(client.stats().stale, 0);
}

async fn stale_if_error_replaces_a_5xx(store: Store) {
    let client = store.client("sie").await;
    let control = Control::open();
    let app = serve(control.router(layer(&client).stale_if_error(LONG))).await;
    assert_eq!(app.get("/data").await.text(), "v1");

    // Fresh: the handler is not asked.
    control.answer_with(StatusCode::BAD_GATEWAY);
    assert_eq!(app.get("/data").await.cache(), Some("HIT"));
    tokio::time::sleep(PAST_TTL).await;

    let reply = app.get("/data").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!((reply.cache(), reply.text()), (Some("STALE"), "v1"));
    assert_eq!(reply.header("cache-control"), Some("max-age=0"));
    assert!(reply.header("age").is_some(), "a stale reply has an Age");
    assert_eq!(control.calls(), 2, "the handler was asked first");
    assert_eq!(client.stats().stale, 1);

    // The handler is asked again each time, and answered for when it recovers.
    let again = app.get("/data").await;
    assert_eq!((again.cache(), again.text()), (Some("STALE"), "v1"));
    assert_eq!(control.calls(), 3);
    control.answer_with(StatusCode::OK);
    let recovered = app.get("/data").await;
    assert_eq!((recovered.cache(), recovered.text()), (Some("MISS"), "v4"));
    assert_eq!(app.get("/data").await.text(), "v4");
    assert_eq!(client.stats().stale, 2);
}

async fn stale_if_error_passes_errors_without_an_entry_or_past_the_window(store: Store) {
    let client = store.client("sie-window").await;
    let control = Control::open();
    let cache = layer(&client).stale_if_error(Duration::from_millis(200));
    let app = serve(control.router(cache)).await;

    control.answer_with(StatusCode::INTERNAL_SERVER_ERROR);
    let nothing = app.get("/data").await;
    assert_eq!(
        nothing.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "no entry"
    );
    assert_eq!(nothing.text(), "v1");

    control.answer_with(StatusCode::OK);
    assert_eq!(app.get("/data").await.text(), "v2");
    control.answer_with(StatusCode::INTERNAL_SERVER_ERROR);
    tokio::time::sleep(TTL + Duration::from_millis(600)).await;
    let past = app.get("/data").await;
    assert_eq!(
        past.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "past the window"
    );
    assert_eq!(past.text(), "v3");
    assert_eq!(client.stats().stale, 0);
}

async fn client_errors_are_not_replaced(store: Store) {
    let client = store.client("sie-4xx").await;
    let control = Control::open();
    let app = serve(
        control.router(
            layer(&client)
                .stale_if_error(LONG)
                .stale_while_revalidate(Duration::ZERO),
        ),
    )
    .await;
    assert_eq!(app.get("/data").await.text(), "v1");
    tokio::time::sleep(PAST_TTL).await;

    control.answer_with(StatusCode::NOT_FOUND);
    let reply = app.get("/data").await;
    assert_eq!(
        reply.status,
        StatusCode::NOT_FOUND,
        "a 4xx is the handler's answer"
    );
    assert_eq!(reply.text(), "v2");
    assert_eq!(client.stats().stale, 0);
}

/// The WARN events seen by [`Warnings`], as `field=value` lists.
type Seen = Arc<std::sync::Mutex<Vec<String>>>;

/// Records the WARN events of the thread it is installed on.
struct Warnings(Seen);

struct Fields<'a>(&'a mut String);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!("{}={value:?} ", field.name()));
    }
}

impl<S: Subscriber> Layer<S> for Warnings {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        if *event.metadata().level() == Level::WARN {
            let mut fields = String::new();
            event.record(&mut Fields(&mut fields));
            self.0.lock().expect("the capture").push(fields);
        }
    }
}

/// The test runtime has one thread, where the server's tasks run too: a
/// subscriber set on it sees the layer's events.
async fn stale_if_error_warns_at_most_once_per_period(store: Store) {
    let seen = Seen::default();
    let subscriber = tracing_subscriber::registry().with(Warnings(Arc::clone(&seen)));
    let _installed = tracing::subscriber::set_default(subscriber);
    let client = store.client("sie-warning").await;
    let control = Control::open();
    let app = serve(control.router(layer(&client).stale_if_error(LONG))).await;
    assert_eq!(app.get("/data").await.text(), "v1");
    tokio::time::sleep(PAST_TTL).await;

    control.answer_with(StatusCode::BAD_GATEWAY);
    for _ in 0..3 {
        let reply = app.get("/data").await;
        assert_eq!((reply.cache(), reply.text()), (Some("STALE"), "v1"));
    }
    assert_eq!(client.stats().stale, 3);
    let seen = seen.lock().expect("the capture");
    let stale: Vec<&String> = seen
        .iter()
        .filter(|fields| fields.contains("serving the stale cached response"))
        .collect();
    assert_eq!(stale.len(), 1, "one line per period: {seen:?}");
    assert!(stale[0].contains("status=502"), "{}", stale[0]);
    assert!(
        stale[0].contains("http-stale-sie-warning"),
        "names the key: {}",
        stale[0]
    );
}

async fn head_is_never_answered_stale(store: Store) {
    let client = store.client("head").await;
    let control = Control::new();
    let app = serve(control.router(layer(&client).stale_while_revalidate(LONG))).await;
    assert_eq!(app.get("/data").await.text(), "v1");
    let head = app.send(app.http.head(format!("{}/data", app.base))).await;
    assert_eq!(head.cache(), Some("HIT"), "a fresh entry answers HEAD");
    tokio::time::sleep(PAST_TTL).await;

    control.open_gate();
    let head = app.send(app.http.head(format!("{}/data", app.base))).await;
    assert_eq!(head.cache(), Some("MISS"), "the handler answers a HEAD");
    assert_eq!(control.calls(), 2);
    assert_eq!(client.stats().stale, 0);
}

async fn a_handler_cache_control_is_replayed_with_its_age(store: Store) {
    let client = store.client("handler-cache-control").await;
    let mut control = Control::open();
    control.backend.cache_control = Some("public, max-age=1");
    let app = serve(control.router(layer(&client).stale_if_error(LONG))).await;
    assert_eq!(app.get("/data").await.text(), "v1");
    tokio::time::sleep(PAST_TTL).await;

    control.answer_with(StatusCode::INTERNAL_SERVER_ERROR);
    let stale = app.get("/data").await;
    assert_eq!((stale.cache(), stale.text()), (Some("STALE"), "v1"));
    assert_eq!(stale.header("cache-control"), Some("public, max-age=1"));
    let age: u64 = stale
        .header("age")
        .expect("an Age")
        .parse()
        .expect("Age is seconds");
    assert!(age >= 1, "Age {age} is past the handler's max-age");
}
