//! `cachify::http`: real HTTP over loopback. Each test starts an axum
//! server on `127.0.0.1:0`, sends requests with reqwest, and runs on the
//! memory backend and on Redis (the binary's shared `redis-server`, each
//! test under its own key prefix).

mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::get;
use cachify::Cachify;
use cachify::http::{CacheControl, CacheLayer, clear_namespace};
use tokio::sync::oneshot;

/// Per request, headers and body: a broken test fails instead of hanging.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug)]
enum Store {
    Memory,
    Redis,
    Cluster,
}

impl Store {
    /// A client of its own: a fresh memory client, or a Redis client under
    /// a prefix no other test uses.
    async fn client(self, test: &str) -> Cachify {
        let builder = Cachify::builder().prefix(format!("http-{test}-{self:?}:"));
        match self {
            Store::Memory => builder.memory(),
            Store::Redis => builder.redis(support::shared_server().url()),
            Store::Cluster => builder.redis_cluster(support::cluster::shared_cluster().seeds()),
        }
        .build()
        .await
        .expect("build the test client")
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
    hit_and_miss,
    query_order_shares_an_entry,
    custom_key_fn,
    post_is_not_cached,
    errors_are_not_cached,
    status_and_headers_are_replayed,
    max_age_decreases_and_etag_is_stable,
    if_none_match_gets_304,
    head_is_answered_from_get,
    vary_mismatch_is_a_miss,
    request_no_cache_refreshes,
    request_no_store_bypasses,
    range_requests_bypass,
    uncacheable_responses_are_not_stored,
    authorization_is_cached_only_per_credential_when_allowed,
    bodies_over_the_limit_pass_through,
    streamed_bodies_keep_streaming,
    namespace_and_exact_invalidation,
    layer_and_route_layer,
    cold_url_runs_the_handler_once,
    layer_cache_control_is_sent_on_misses_and_hits,
    handler_cache_control_is_kept_with_its_age,
    ignored_query_params_share_an_entry,
    ignored_query_params_reach_the_key_fn_removed,
);

/// How many times a handler ran.
#[derive(Clone, Default)]
struct Calls(Arc<AtomicUsize>);

impl Calls {
    /// Counts one run and returns its number, from 1.
    fn bump(&self) -> usize {
        self.0.fetch_add(1, Ordering::SeqCst) + 1
    }

    fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
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

    /// `x-cachify`: `Some("HIT")`, `Some("MISS")`, or `None` (bypassed).
    fn cache(&self) -> Option<&str> {
        self.header("x-cachify")
    }

    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("a UTF-8 body")
    }

    fn max_age(&self) -> u64 {
        let cache_control = self
            .header("cache-control")
            .expect("a Cache-Control header");
        cache_control
            .rsplit("max-age=")
            .next()
            .and_then(|seconds| seconds.parse().ok())
            .unwrap_or_else(|| panic!("no max-age in `{cache_control}`"))
    }
}

impl App {
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base))
    }

    async fn get(&self, path: &str) -> Reply {
        self.send(self.request(reqwest::Method::GET, path)).await
    }

    async fn get_with(&self, path: &str, name: &str, value: &str) -> Reply {
        self.send(self.request(reqwest::Method::GET, path).header(name, value))
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
}

/// A router with one counting GET route whose body is `{name} {run}`.
fn counting(path: &str, name: &'static str, calls: &Calls) -> Router {
    let calls = calls.clone();
    Router::new().route(
        path,
        get(move || {
            let run = calls.bump();
            async move { format!("{name} {run}") }
        }),
    )
}

/// Single flight: 100 concurrent GETs of a cold URL share one run of a
/// slow handler, and all get its body.
async fn cold_url_runs_the_handler_once(store: Store) {
    let client = store.client("cold-url").await;
    let calls = Calls::default();
    let counted = calls.clone();
    let router = Router::new()
        .route(
            "/slow",
            get(move || {
                let run = counted.bump();
                async move {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    format!("slow {run}")
                }
            }),
        )
        .route_layer(CacheLayer::new().client(client.clone()).namespace("cold"));
    let app = Arc::new(serve(router).await);
    let requests: Vec<_> = (0..100)
        .map(|_| {
            let app = Arc::clone(&app);
            tokio::spawn(async move { app.get("/slow").await })
        })
        .collect();
    let mut misses = 0;
    for request in requests {
        let reply = request.await.expect("the request task");
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(
            reply.text(),
            "slow 1",
            "every caller gets the one run's body"
        );
        if reply.cache() == Some("MISS") {
            misses += 1;
        }
    }
    assert_eq!(
        calls.get(),
        1,
        "the handler ran once for 100 concurrent GETs"
    );
    assert_eq!(
        misses, 1,
        "one reply is the run's own; the others were shared"
    );
}

async fn hit_and_miss(store: Store) {
    let client = store.client("hit-and-miss").await;
    let calls = Calls::default();
    let app = serve(
        counting("/hello", "hello", &calls)
            .route_layer(CacheLayer::new().client(client.clone()).namespace("hello")),
    )
    .await;

    let first = app.get("/hello").await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.cache(), Some("MISS"));
    assert_eq!(first.text(), "hello 1");
    assert_eq!(
        first.header("content-type"),
        Some("text/plain; charset=utf-8")
    );

    let second = app.get("/hello").await;
    assert_eq!(second.cache(), Some("HIT"));
    assert_eq!(second.text(), "hello 1");
    assert_eq!(
        second.header("content-type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(calls.get(), 1, "the handler ran once");

    let stats = client.stats();
    assert_eq!((stats.hits, stats.misses, stats.errors), (1, 1, 0));
}

async fn query_order_shares_an_entry(store: Store) {
    let client = store.client("query-order").await;
    let calls = Calls::default();
    let counted = calls.clone();
    let layer = CacheLayer::new().client(client.clone()).namespace("search");
    let app = serve(
        Router::new()
            .route(
                "/search",
                get(move |uri: axum::http::Uri| {
                    let run = counted.bump();
                    async move { format!("{} {run}", uri.query().unwrap_or_default()) }
                }),
            )
            .route_layer(layer.clone()),
    )
    .await;

    let first = app.get("/search?a=1&b=x+y").await;
    assert_eq!((first.cache(), first.text()), (Some("MISS"), "a=1&b=x+y 1"));
    let reordered = app.get("/search?b=x%20y&a=1").await;
    assert_eq!(
        reordered.cache(),
        Some("HIT"),
        "same parameters, other order"
    );
    assert_eq!(reordered.text(), "a=1&b=x+y 1");
    let other = app.get("/search?a=1&b=z").await;
    assert_eq!((other.cache(), other.text()), (Some("MISS"), "a=1&b=z 2"));
    assert_eq!(calls.get(), 2);

    let key = layer.key("/search?b=x+y&a=1").unwrap();
    assert_eq!(
        key,
        format!("{}http:search:GET:/search?a=1&b=x%20y", client.prefix())
    );
    if let Store::Redis = store {
        let mut raw = support::shared_server().connection();
        let exists: bool = ::redis::cmd("EXISTS").arg(&key).query(&mut raw).unwrap();
        assert!(exists, "`{key}` is readable as written in Redis");
    }
}

async fn custom_key_fn(store: Store) {
    let client = store.client("key-fn").await;
    let calls = Calls::default();
    // One entry per path: the query is ignored.
    let layer = CacheLayer::new()
        .client(client)
        .namespace("items")
        .key_fn(|request| format!("item{}", request.uri.path()));
    let app = serve(counting("/items/{id}", "item", &calls).route_layer(layer.clone())).await;

    assert_eq!(app.get("/items/7?page=1").await.cache(), Some("MISS"));
    let other_query = app.get("/items/7?page=2").await;
    assert_eq!(other_query.cache(), Some("HIT"));
    assert_eq!(other_query.text(), "item 1");
    assert_eq!(app.get("/items/8").await.cache(), Some("MISS"));
    assert_eq!(calls.get(), 2);

    layer.invalidate_key("item/items/7").await.unwrap();
    assert_eq!(app.get("/items/7").await.text(), "item 3");
    // `invalidate` applies the key function to the URI.
    layer.invalidate("/items/8?ignored=1").await.unwrap();
    assert_eq!(app.get("/items/8").await.text(), "item 4");
}

async fn post_is_not_cached(store: Store) {
    let client = store.client("post").await;
    let calls = Calls::default();
    let (on_get, on_post) = (calls.clone(), calls.clone());
    let app = serve(
        Router::new()
            .route(
                "/thing",
                get(move || {
                    let run = on_get.bump();
                    async move { format!("got {run}") }
                })
                .post(move || {
                    let run = on_post.bump();
                    async move { format!("posted {run}") }
                }),
            )
            .route_layer(CacheLayer::new().client(client)),
    )
    .await;

    for run in 1..=2 {
        let posted = app.send(app.request(reqwest::Method::POST, "/thing")).await;
        assert_eq!(posted.text(), format!("posted {run}"));
        assert_eq!(posted.cache(), None, "POST bypasses the cache");
    }
    assert_eq!(app.get("/thing").await.text(), "got 3");
    let posted = app.send(app.request(reqwest::Method::POST, "/thing")).await;
    assert_eq!(
        posted.text(),
        "posted 4",
        "a GET entry never answers a POST"
    );
    assert_eq!(app.get("/thing").await.cache(), Some("HIT"));
    assert_eq!(calls.get(), 4);
}

async fn errors_are_not_cached(store: Store) {
    let client = store.client("errors").await;
    let calls = Calls::default();
    let (flaky, broken) = (calls.clone(), Calls::default());
    let broken_runs = broken.clone();
    let app = serve(
        Router::new()
            .route(
                "/flaky",
                get(move || {
                    let run = flaky.bump();
                    async move {
                        if run == 1 {
                            (StatusCode::INTERNAL_SERVER_ERROR, "down".to_owned())
                        } else {
                            (StatusCode::OK, format!("up {run}"))
                        }
                    }
                }),
            )
            .route(
                "/broken",
                get(move || {
                    broken_runs.bump();
                    async { StatusCode::INTERNAL_SERVER_ERROR }
                }),
            )
            .route_layer(CacheLayer::new().client(client)),
    )
    .await;

    let failed = app.get("/flaky").await;
    assert_eq!(failed.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(failed.cache(), Some("MISS"));
    assert_eq!(
        failed.header("cache-control"),
        None,
        "no max-age on an error"
    );
    let recovered = app.get("/flaky").await;
    assert_eq!(
        (recovered.status, recovered.text()),
        (StatusCode::OK, "up 2")
    );
    assert_eq!(recovered.cache(), Some("MISS"), "the 500 was not stored");
    let cached = app.get("/flaky").await;
    assert_eq!((cached.cache(), cached.text()), (Some("HIT"), "up 2"));

    for _ in 0..3 {
        assert_eq!(
            app.get("/broken").await.status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
    assert_eq!(broken.get(), 3, "a 500 never comes back from the cache");
}

async fn status_and_headers_are_replayed(store: Store) {
    let client = store.client("replay").await;
    let calls = Calls::default();
    let (created, partial) = (calls.clone(), calls.clone());
    let app = serve(
        Router::new()
            .route(
                "/created",
                get(move || {
                    created.bump();
                    async {
                        (
                            StatusCode::CREATED,
                            [
                                (header::CONTENT_TYPE, "application/vnd.test+json"),
                                (header::CONTENT_LANGUAGE, "fr"),
                                (header::CONTENT_ENCODING, "gzip"),
                                (header::HeaderName::from_static("x-custom"), "kept"),
                            ],
                            // Not really gzip: the client must not decode it.
                            vec![0x1f_u8, 0x8b, 0, 255, 7],
                        )
                    }
                }),
            )
            .route(
                "/non-authoritative",
                get(move || {
                    partial.bump();
                    async {
                        (
                            StatusCode::NON_AUTHORITATIVE_INFORMATION,
                            [("x-source", "mirror")],
                            "copy",
                        )
                    }
                }),
            )
            .route_layer(CacheLayer::new().client(client)),
    )
    .await;

    let miss = app.get("/created").await;
    let hit = app.get("/created").await;
    assert_eq!((miss.cache(), hit.cache()), (Some("MISS"), Some("HIT")));
    for reply in [&miss, &hit] {
        assert_eq!(reply.status, StatusCode::CREATED);
        assert_eq!(
            reply.header("content-type"),
            Some("application/vnd.test+json")
        );
        assert_eq!(reply.header("content-language"), Some("fr"));
        assert_eq!(reply.header("content-encoding"), Some("gzip"));
        assert_eq!(reply.header("x-custom"), Some("kept"));
        assert_eq!(reply.header("content-length"), Some("5"));
        assert_eq!(&reply.body[..], &[0x1f, 0x8b, 0, 255, 7]);
        // Hyper dates every response; the stored one is not replayed.
        assert_eq!(reply.headers.get_all("date").iter().count(), 1);
    }
    assert_eq!(miss.header("etag"), hit.header("etag"));

    let miss = app.get("/non-authoritative").await;
    let hit = app.get("/non-authoritative").await;
    assert_eq!(hit.cache(), Some("HIT"));
    for reply in [&miss, &hit] {
        assert_eq!(reply.status, StatusCode::NON_AUTHORITATIVE_INFORMATION);
        assert_eq!(reply.header("x-source"), Some("mirror"));
        assert_eq!(reply.text(), "copy");
    }
    assert_eq!(calls.get(), 2);
}

async fn max_age_decreases_and_etag_is_stable(store: Store) {
    let calls = Calls::default();
    let layer = |client: Cachify| {
        CacheLayer::new()
            .client(client)
            .namespace("etag")
            .ttl(Duration::from_secs(60))
    };
    let first = serve(
        counting("/page", "page", &Calls::default())
            .route_layer(layer(store.client("etag-one").await)),
    )
    .await;
    // Another client (another prefix: no shared entries) and another layer.
    let second =
        serve(counting("/page", "page", &calls).route_layer(layer(store.client("etag-two").await)))
            .await;

    let miss = first.get("/page").await;
    assert_eq!(miss.cache(), Some("MISS"));
    assert_eq!(miss.max_age(), 60);
    let etag = miss.header("etag").expect("an ETag").to_owned();
    assert!(
        etag.starts_with('"') && etag.ends_with('"') && etag.len() == 66,
        "{etag}"
    );

    // Whole seconds: wait until at least one has passed.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let hit = first.get("/page").await;
    assert_eq!(hit.cache(), Some("HIT"));
    assert!(hit.max_age() < 60, "max-age counts down: {}", hit.max_age());
    assert_eq!(hit.header("etag"), Some(etag.as_str()));

    let elsewhere = second.get("/page").await;
    assert_eq!(
        elsewhere.cache(),
        Some("MISS"),
        "the other client has its own entries"
    );
    assert_eq!(elsewhere.text(), miss.text());
    assert_eq!(
        elsewhere.header("etag"),
        Some(etag.as_str()),
        "same body, same ETag"
    );
    assert_eq!(calls.get(), 1);
}

async fn if_none_match_gets_304(store: Store) {
    let client = store.client("if-none-match").await;
    let calls = Calls::default();
    let (a, b) = (calls.clone(), calls.clone());
    let app = serve(
        Router::new()
            .route(
                "/a",
                get(move || {
                    a.bump();
                    async { "same body" }
                }),
            )
            .route(
                "/b",
                get(move || {
                    b.bump();
                    async { "same body" }
                }),
            )
            .route_layer(CacheLayer::new().client(client)),
    )
    .await;
    let etag = app.get("/a").await.header("etag").unwrap().to_owned();

    // A miss whose response has the ETag the client holds.
    let fresh = app.get_with("/b", "if-none-match", &etag).await;
    assert_eq!(fresh.status, StatusCode::NOT_MODIFIED);
    assert_eq!(fresh.cache(), Some("MISS"));
    assert_eq!(fresh.header("etag"), Some(etag.as_str()));
    assert!(fresh.body.is_empty());
    assert_eq!(calls.get(), 2);

    let cached = app.get_with("/b", "if-none-match", &etag).await;
    assert_eq!(
        (cached.status, cached.cache()),
        (StatusCode::NOT_MODIFIED, Some("HIT"))
    );
    assert!(
        cached
            .header("cache-control")
            .unwrap()
            .starts_with("max-age=")
    );
    let listed = format!("\"stale\", W/{etag}");
    let weak = app.get_with("/b", "if-none-match", &listed).await;
    assert_eq!(
        weak.status,
        StatusCode::NOT_MODIFIED,
        "weak comparison, in a list"
    );
    let changed = app.get_with("/b", "if-none-match", "\"stale\"").await;
    assert_eq!(
        (changed.status, changed.cache()),
        (StatusCode::OK, Some("HIT"))
    );
    assert_eq!(changed.text(), "same body");
    assert_eq!(
        calls.get(),
        2,
        "the stored entry answered every conditional request"
    );
}

async fn head_is_answered_from_get(store: Store) {
    let client = store.client("head").await;
    let calls = Calls::default();
    let app =
        serve(counting("/doc", "document", &calls).route_layer(CacheLayer::new().client(client)))
            .await;

    let head = app.send(app.request(reqwest::Method::HEAD, "/doc")).await;
    assert_eq!((head.status, head.cache()), (StatusCode::OK, Some("MISS")));
    assert_eq!(
        app.get("/doc").await.cache(),
        Some("MISS"),
        "a HEAD response has no body to store"
    );
    let head = app.send(app.request(reqwest::Method::HEAD, "/doc")).await;
    assert_eq!((head.status, head.cache()), (StatusCode::OK, Some("HIT")));
    assert!(head.body.is_empty());
    assert_eq!(head.header("content-length"), Some("10"), "`document 2`");
    assert!(head.header("etag").is_some());
    assert_eq!(calls.get(), 2);
}

async fn vary_mismatch_is_a_miss(store: Store) {
    let client = store.client("vary").await;
    let calls = Calls::default();
    let counted = calls.clone();
    let app = serve(
        Router::new()
            .route(
                "/greeting",
                get(move |headers: HeaderMap| {
                    let run = counted.bump();
                    async move {
                        let language = headers
                            .get("accept-language")
                            .and_then(|value| value.to_str().ok())
                            .unwrap_or("en")
                            .to_owned();
                        (
                            [(header::VARY, "Accept-Language")],
                            format!("{language} {run}"),
                        )
                    }
                }),
            )
            .route_layer(CacheLayer::new().client(client)),
    )
    .await;

    let french = app.get_with("/greeting", "accept-language", "fr").await;
    assert_eq!((french.cache(), french.text()), (Some("MISS"), "fr 1"));
    let french = app.get_with("/greeting", "accept-language", "fr").await;
    assert_eq!((french.cache(), french.text()), (Some("HIT"), "fr 1"));
    assert_eq!(french.header("vary"), Some("Accept-Language"));
    let german = app.get_with("/greeting", "accept-language", "de").await;
    assert_eq!(
        (german.cache(), german.text()),
        (Some("MISS"), "de 2"),
        "never the French entry"
    );
    let german = app.get_with("/greeting", "accept-language", "de").await;
    assert_eq!((german.cache(), german.text()), (Some("HIT"), "de 2"));
}

async fn request_no_cache_refreshes(store: Store) {
    let client = store.client("no-cache").await;
    let calls = Calls::default();
    let stubborn_calls = Calls::default();
    let app = serve(
        counting("/news", "news", &calls)
            .route_layer(CacheLayer::new().client(client.clone()).namespace("news"))
            .merge(
                counting("/stubborn", "stubborn", &stubborn_calls).route_layer(
                    CacheLayer::new()
                        .client(client)
                        .namespace("stubborn")
                        .request_cache_control(false),
                ),
            ),
    )
    .await;

    assert_eq!(app.get("/news").await.text(), "news 1");
    assert_eq!(app.get("/news").await.cache(), Some("HIT"));
    let refreshed = app.get_with("/news", "cache-control", "no-cache").await;
    assert_eq!(
        (refreshed.cache(), refreshed.text()),
        (Some("MISS"), "news 2")
    );
    let after = app.get("/news").await;
    assert_eq!(
        (after.cache(), after.text()),
        (Some("HIT"), "news 2"),
        "the entry was refreshed"
    );

    assert_eq!(app.get("/stubborn").await.text(), "stubborn 1");
    let ignored = app.get_with("/stubborn", "cache-control", "no-cache").await;
    assert_eq!(
        (ignored.cache(), ignored.text()),
        (Some("HIT"), "stubborn 1")
    );
}

async fn request_no_store_bypasses(store: Store) {
    let client = store.client("no-store").await;
    let calls = Calls::default();
    let app =
        serve(counting("/feed", "feed", &calls).route_layer(CacheLayer::new().client(client)))
            .await;

    let bypassed = app.get_with("/feed", "cache-control", "no-store").await;
    assert_eq!((bypassed.cache(), bypassed.text()), (None, "feed 1"));
    assert_eq!(bypassed.header("etag"), None);
    let first = app.get("/feed").await;
    assert_eq!(
        (first.cache(), first.text()),
        (Some("MISS"), "feed 2"),
        "no-store wrote nothing"
    );
    let bypassed = app
        .get_with("/feed", "Cache-Control", "max-age=0, No-Store")
        .await;
    assert_eq!(
        (bypassed.cache(), bypassed.text()),
        (None, "feed 3"),
        "and read nothing"
    );
    let cached = app.get("/feed").await;
    assert_eq!((cached.cache(), cached.text()), (Some("HIT"), "feed 2"));
}

async fn range_requests_bypass(store: Store) {
    let client = store.client("range").await;
    let calls = Calls::default();
    let app =
        serve(counting("/file", "file", &calls).route_layer(CacheLayer::new().client(client)))
            .await;

    assert_eq!(app.get("/file").await.cache(), Some("MISS"));
    // A partial answer must never be stored as, or served for, the whole.
    let ranged = app.get_with("/file", "range", "bytes=0-1").await;
    assert_eq!((ranged.cache(), ranged.text()), (None, "file 2"));
    let whole = app.get("/file").await;
    assert_eq!((whole.cache(), whole.text()), (Some("HIT"), "file 1"));
}

async fn uncacheable_responses_are_not_stored(store: Store) {
    let client = store.client("uncacheable").await;
    let calls = Calls::default();
    let route = |directive: (header::HeaderName, &'static str)| {
        let calls = calls.clone();
        get(move || {
            let run = calls.bump();
            let directive = directive.clone();
            async move { ([directive], format!("run {run}")) }
        })
    };
    let app = serve(
        Router::new()
            .route("/no-store", route((header::CACHE_CONTROL, "no-store")))
            .route(
                "/private",
                route((header::CACHE_CONTROL, "private, max-age=30")),
            )
            .route("/cookie", route((header::SET_COOKIE, "session=abc")))
            .route_layer(CacheLayer::new().client(client)),
    )
    .await;

    for (path, header, value) in [
        ("/no-store", "cache-control", "no-store"),
        ("/private", "cache-control", "private, max-age=30"),
        ("/cookie", "set-cookie", "session=abc"),
    ] {
        for _ in 0..2 {
            let reply = app.get(path).await;
            assert_eq!(reply.cache(), Some("MISS"), "{path} is never a hit");
            assert_eq!(
                reply.header(header),
                Some(value),
                "{path} keeps its own headers"
            );
            assert_eq!(reply.header("etag"), None);
        }
    }
    assert_eq!(calls.get(), 6);
}

async fn authorization_is_cached_only_per_credential_when_allowed(store: Store) {
    let client = store.client("authorization").await;
    let calls = Calls::default();
    let route = || {
        let calls = calls.clone();
        get(move |headers: HeaderMap| {
            let run = calls.bump();
            async move {
                let who = headers
                    .get(header::AUTHORIZATION)
                    .map_or("anonymous", |value| value.to_str().unwrap_or("?"))
                    .to_owned();
                format!("{who} {run}")
            }
        })
    };
    let app = serve(
        Router::new()
            .route("/default/me", route())
            .route_layer(
                CacheLayer::new()
                    .client(client.clone())
                    .namespace("default"),
            )
            .merge(
                Router::new().route("/allowed/me", route()).route_layer(
                    CacheLayer::new()
                        .client(client.clone())
                        .namespace("allowed")
                        .cache_authorized(true),
                ),
            ),
    )
    .await;

    for run in 1..=2 {
        let reply = app
            .get_with("/default/me", "authorization", "Bearer alice-secret")
            .await;
        assert_eq!(reply.text(), format!("Bearer alice-secret {run}"));
        assert_eq!(reply.cache(), None, "not cached unless allowed");
    }

    let alice = app
        .get_with("/allowed/me", "authorization", "Bearer alice-secret")
        .await;
    assert_eq!(
        (alice.cache(), alice.text()),
        (Some("MISS"), "Bearer alice-secret 3")
    );
    let alice = app
        .get_with("/allowed/me", "authorization", "Bearer alice-secret")
        .await;
    assert_eq!(
        (alice.cache(), alice.text()),
        (Some("HIT"), "Bearer alice-secret 3")
    );
    assert!(
        alice
            .header("cache-control")
            .unwrap()
            .starts_with("private, max-age=")
    );
    let bob = app
        .get_with("/allowed/me", "authorization", "Bearer bob-secret")
        .await;
    assert_eq!(
        (bob.cache(), bob.text()),
        (Some("MISS"), "Bearer bob-secret 4"),
        "never Alice's"
    );
    let anonymous = app.get("/allowed/me").await;
    assert_eq!(
        (anonymous.cache(), anonymous.text()),
        (Some("MISS"), "anonymous 5")
    );
    assert_eq!(calls.get(), 5);

    if let Store::Redis = store {
        let keys = redis_keys(client.prefix());
        assert_eq!(keys.len(), 3, "{keys:?}");
        for key in &keys {
            assert!(
                !key.contains("secret") && !key.contains("Bearer"),
                "credential in `{key}`"
            );
        }
    }
}

/// Every key under `prefix` on the shared server (SCAN, bounded).
fn redis_keys(prefix: &str) -> Vec<String> {
    let mut raw = support::shared_server().connection();
    let mut keys = Vec::new();
    let mut cursor = 0u64;
    for _ in 0..10_000 {
        let (next, batch): (u64, Vec<String>) = ::redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .query(&mut raw)
            .unwrap();
        keys.extend(batch);
        if next == 0 {
            return keys;
        }
        cursor = next;
    }
    panic!("SCAN did not finish");
}

/// A body of `chunks` chunks of 1000 bytes, with no size hint.
fn stream_body(chunks: u8) -> Body {
    Body::from_stream(futures_util::stream::iter(
        (0..chunks).map(|chunk| Ok::<_, Infallible>(vec![b'a' + chunk % 26; 1000])),
    ))
}

fn expected_stream(chunks: u8) -> Vec<u8> {
    (0..chunks)
        .flat_map(|chunk| vec![b'a' + chunk % 26; 1000])
        .collect()
}

async fn bodies_over_the_limit_pass_through(store: Store) {
    let client = store.client("large").await;
    let calls = Calls::default();
    let (big, streamed, small) = (calls.clone(), calls.clone(), calls.clone());
    let app = serve(
        Router::new()
            .route(
                "/big",
                get(move || {
                    big.bump();
                    async { vec![b'x'; 4096] }
                }),
            )
            .route(
                "/streamed",
                get(move || {
                    streamed.bump();
                    async { stream_body(16) }
                }),
            )
            .route(
                "/small",
                get(move || {
                    small.bump();
                    async { stream_body(1) }
                }),
            )
            .route_layer(CacheLayer::new().client(client.clone()).max_body_size(1024)),
    )
    .await;

    for _ in 0..2 {
        let reply = app.get("/big").await;
        assert_eq!(reply.cache(), Some("MISS"));
        assert_eq!(reply.body.len(), 4096);
        assert!(reply.body.iter().all(|&byte| byte == b'x'));
        assert_eq!(reply.header("etag"), None, "passed through untouched");
    }
    for _ in 0..2 {
        let reply = app.get("/streamed").await;
        assert_eq!(reply.cache(), Some("MISS"));
        assert_eq!(
            reply.body,
            expected_stream(16),
            "the whole stream, in order"
        );
    }
    // A stream within the limit is stored.
    assert_eq!(app.get("/small").await.cache(), Some("MISS"));
    let small = app.get("/small").await;
    assert_eq!(
        (small.cache(), &small.body[..]),
        (Some("HIT"), &expected_stream(1)[..])
    );

    assert_eq!(calls.get(), 5);
    assert_eq!(client.stats().oversized, 4);
}

async fn streamed_bodies_keep_streaming(store: Store) {
    let client = store.client("streaming").await;
    let (release, released) = oneshot::channel::<()>();
    let released = Arc::new(std::sync::Mutex::new(Some(released)));
    let app = serve(
        Router::new()
            .route(
                "/live",
                get(move || {
                    let released = released.lock().unwrap().take();
                    async move {
                        // Two chunks go over the limit; the last one waits
                        // until the client has seen the first ones.
                        let head = futures_util::stream::iter(
                            [vec![b'1'; 1000], vec![b'2'; 1000]].map(Ok::<_, Infallible>),
                        );
                        let tail = futures_util::stream::unfold(released, |released| async move {
                            let released = released?;
                            let _ = released.await;
                            Some((Ok(vec![b'3'; 1000]), None))
                        });
                        Body::from_stream(futures_util::StreamExt::chain(head, tail))
                    }
                }),
            )
            .route_layer(CacheLayer::new().client(client).max_body_size(1024)),
    )
    .await;

    let mut response = app
        .request(reqwest::Method::GET, "/live")
        .send()
        .await
        .expect("headers arrive before the stream ends");
    assert_eq!(response.headers()["x-cachify"], "MISS");
    let mut body = Vec::new();
    // Bounded: each chunk is at least one byte.
    while body.len() < 2000 {
        let chunk = response.chunk().await.unwrap().expect("more of the stream");
        body.extend_from_slice(&chunk);
    }
    assert_eq!(
        body.len(),
        2000,
        "the gated chunk cannot have been read yet"
    );
    release.send(()).unwrap();
    while let Some(chunk) = response.chunk().await.unwrap() {
        body.extend_from_slice(&chunk);
        assert!(body.len() <= 3000);
    }
    let expected: Vec<u8> = [b'1', b'2', b'3']
        .iter()
        .flat_map(|&byte| [byte; 1000])
        .collect();
    assert_eq!(body, expected);
}

async fn namespace_and_exact_invalidation(store: Store) {
    let client = store.client("invalidation").await;
    let (users_calls, posts_calls) = (Calls::default(), Calls::default());
    let users = CacheLayer::new().client(client.clone()).namespace("users");
    let app = serve(
        counting("/users", "users", &users_calls)
            .route(
                "/users/{id}",
                get({
                    let calls = users_calls.clone();
                    move || {
                        let run = calls.bump();
                        async move { format!("user {run}") }
                    }
                }),
            )
            .route_layer(users.clone())
            .merge(
                counting("/posts", "posts", &posts_calls)
                    .route_layer(CacheLayer::new().client(client.clone()).namespace("posts")),
            ),
    )
    .await;

    assert_eq!(app.get("/users?page=1&size=10").await.text(), "users 1");
    assert_eq!(app.get("/users/7").await.text(), "user 2");
    assert_eq!(app.get("/posts").await.text(), "posts 1");

    // Exact: one entry, found whatever the query order.
    users.invalidate("/users?size=10&page=1").await.unwrap();
    assert_eq!(app.get("/users?page=1&size=10").await.text(), "users 3");
    assert_eq!(app.get("/users/7").await.cache(), Some("HIT"));

    // Namespace: every entry of `users`, none of `posts`.
    assert_eq!(clear_namespace(&client, "users").await.unwrap(), 2);
    assert_eq!(app.get("/users?page=1&size=10").await.text(), "users 4");
    assert_eq!(app.get("/users/7").await.text(), "user 5");
    assert_eq!(app.get("/posts").await.cache(), Some("HIT"));
    assert_eq!(users.clear().await.unwrap(), 2, "the layer's own handle");
    assert_eq!(app.get("/users/7").await.cache(), Some("MISS"));
    assert_eq!(posts_calls.get(), 1);
}

async fn layer_and_route_layer(store: Store) {
    let client = store.client("layers").await;
    let (routed, layered) = (Calls::default(), Calls::default());
    let route_layer = serve(
        counting("/r", "routed", &routed).route_layer(
            CacheLayer::new()
                .client(client.clone())
                .namespace("route-layer"),
        ),
    )
    .await;
    let layer = serve(
        counting("/l", "layered", &layered)
            .layer(CacheLayer::new().client(client).namespace("layer")),
    )
    .await;

    for (app, path) in [(&route_layer, "/r"), (&layer, "/l")] {
        assert_eq!(app.get(path).await.cache(), Some("MISS"));
        assert_eq!(app.get(path).await.cache(), Some("HIT"));
    }
    assert_eq!((routed.get(), layered.get()), (1, 1));

    // `layer` also wraps the fallback: a 404 goes through, and is not stored.
    for _ in 0..2 {
        let missing = layer.get("/nowhere").await;
        assert_eq!(
            (missing.status, missing.cache()),
            (StatusCode::NOT_FOUND, Some("MISS"))
        );
    }
}

/// Without `.client(..)`, the layer uses `cachify::global()` (this binary
/// never calls `init`, so that is the in-memory fallback).
#[tokio::test]
async fn the_global_client_is_the_default() {
    let calls = Calls::default();
    let app = serve(
        counting("/global", "global", &calls).route_layer(CacheLayer::new().namespace("global")),
    )
    .await;
    assert_eq!(app.get("/global").await.cache(), Some("MISS"));
    assert_eq!(app.get("/global").await.cache(), Some("HIT"));
    assert_eq!(
        clear_namespace(cachify::global(), "global").await.unwrap(),
        1
    );
    assert_eq!(app.get("/global").await.text(), "global 2");
}

/// Redis goes away: requests are still answered, by the handler.
#[tokio::test]
async fn a_dead_backend_fails_open() {
    static OWN: support::OwnServer = support::OwnServer::new();
    let client = OWN.client().clone();
    let calls = Calls::default();
    let app =
        serve(counting("/up", "up", &calls).route_layer(CacheLayer::new().client(client.clone())))
            .await;
    assert_eq!(app.get("/up").await.cache(), Some("MISS"));
    assert_eq!(app.get("/up").await.cache(), Some("HIT"));

    OWN.stop();
    for run in 2..=9 {
        let reply = app.get("/up").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(
            (reply.cache(), reply.text()),
            (Some("MISS"), format!("up {run}").as_str())
        );
    }
    let stats = client.stats();
    assert!(stats.errors > 0, "{stats:?}");
    assert!(stats.bypassed > 0, "the breaker opened: {stats:?}");
}

/// A route that echoes its query after the run number, with `headers`.
fn echoing(
    calls: &Calls,
    headers: &'static [(&'static str, &'static str)],
) -> axum::routing::MethodRouter {
    let calls = calls.clone();
    get(move |uri: axum::http::Uri| {
        let run = calls.bump();
        async move {
            let mut map = HeaderMap::new();
            for (name, value) in headers {
                map.append(*name, header::HeaderValue::from_static(value));
            }
            (map, format!("{run} {}", uri.query().unwrap_or_default()))
        }
    })
}

async fn layer_cache_control_is_sent_on_misses_and_hits(store: Store) {
    let client = store.client("layer-cache-control").await;
    let calls = Calls::default();
    let fixed = CacheControl::fixed("public, s-maxage=600, max-age=30").expect("valid directives");
    let app = serve(
        Router::new()
            .route("/fixed", echoing(&calls, &[]))
            .route_layer(
                CacheLayer::new()
                    .client(client.clone())
                    .namespace("fixed")
                    .cache_authorized(true)
                    .cache_control(fixed),
            )
            .merge(
                Router::new()
                    .route("/omitted", echoing(&calls, &[]))
                    .route_layer(
                        CacheLayer::new()
                            .client(client)
                            .namespace("omitted")
                            .cache_authorized(true)
                            .cache_control(CacheControl::omitted()),
                    ),
            ),
    )
    .await;

    for outcome in ["MISS", "HIT"] {
        let shared = app.get("/fixed").await;
        assert_eq!(shared.cache(), Some(outcome));
        assert_eq!(
            shared.header("cache-control"),
            Some("public, s-maxage=600, max-age=30"),
            "the layer's directives, as given, on a {outcome}"
        );
        assert_eq!(shared.header("age"), None, "the layer's header is fresh");
        let own = app
            .get_with("/fixed", "authorization", "Bearer alice")
            .await;
        assert_eq!(own.cache(), Some(outcome));
        assert_eq!(
            own.header("cache-control"),
            Some("private, max-age=30"),
            "per credential: private, nothing for shared caches"
        );
        let etag = shared.header("etag").expect("an ETag");
        let unchanged = app.get_with("/fixed", "if-none-match", etag).await;
        assert_eq!(unchanged.status, StatusCode::NOT_MODIFIED);
        assert_eq!(
            unchanged.header("cache-control"),
            Some("public, s-maxage=600, max-age=30")
        );

        let omitted = app.get("/omitted").await;
        assert_eq!(omitted.cache(), Some(outcome));
        assert_eq!(omitted.header("cache-control"), None);
        let own = app
            .get_with("/omitted", "authorization", "Bearer alice")
            .await;
        assert_eq!(own.header("cache-control"), Some("private"));
    }
    assert_eq!(calls.get(), 4, "each path and credential ran once");
}

async fn handler_cache_control_is_kept_with_its_age(store: Store) {
    let client = store.client("handler-cache-control").await;
    let calls = Calls::default();
    const OWN: &str = "public, max-age=5, stale-while-revalidate=10";
    let layer = |namespace: &str, client: &Cachify| {
        CacheLayer::new()
            .client(client.clone())
            .namespace(namespace)
            .ttl(Duration::from_secs(60))
    };
    let app = serve(
        Router::new()
            .route("/default", echoing(&calls, &[("cache-control", OWN)]))
            .route_layer(layer("default", &client))
            .merge(
                Router::new()
                    .route("/configured", echoing(&calls, &[("cache-control", OWN)]))
                    .route_layer(
                        layer("configured", &client)
                            .cache_control("no-cache".parse().expect("valid directives")),
                    ),
            )
            .merge(
                Router::new()
                    .route("/per-user", echoing(&calls, &[("cache-control", OWN)]))
                    .route_layer(layer("per-user", &client).cache_authorized(true)),
            )
            .merge(
                Router::new()
                    .route(
                        "/private",
                        echoing(&calls, &[("cache-control", "private, max-age=5")]),
                    )
                    .route_layer(layer("private", &client).cache_control(
                        CacheControl::fixed("public, max-age=1").expect("valid directives"),
                    )),
            ),
    )
    .await;

    for path in ["/default", "/configured"] {
        let miss = app.get(path).await;
        assert_eq!(miss.cache(), Some("MISS"));
        assert_eq!(
            miss.header("cache-control"),
            Some(OWN),
            "{path}: the handler's, kept"
        );
        assert_eq!(miss.header("age"), None, "{path}: fresh from the handler");
        assert_eq!(
            miss.headers.get_all("cache-control").iter().count(),
            1,
            "{path}: one header, not the layer's as well"
        );
    }
    // Whole seconds: wait until at least one has passed.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for path in ["/default", "/configured"] {
        let hit = app.get(path).await;
        assert_eq!(hit.cache(), Some("HIT"));
        assert_eq!(
            hit.header("cache-control"),
            Some(OWN),
            "{path}: still the handler's"
        );
        let age: u64 = hit.header("age").expect("an Age").parse().expect("seconds");
        assert!(
            (1..60).contains(&age),
            "{path}: Age counts from the store: {age}"
        );
        let etag = hit.header("etag").expect("an ETag");
        let unchanged = app.get_with(path, "if-none-match", etag).await;
        assert_eq!(unchanged.status, StatusCode::NOT_MODIFIED);
        assert_eq!(unchanged.header("cache-control"), Some(OWN));
    }
    // Cached per credential, the handler's own directives are made
    // private too: no shared cache may keep one user's reply.
    for outcome in ["MISS", "HIT"] {
        let own = app
            .get_with("/per-user", "authorization", "Bearer alice")
            .await;
        assert_eq!(own.cache(), Some(outcome));
        assert_eq!(
            own.header("cache-control"),
            Some("private, max-age=5, stale-while-revalidate=10"),
            "a {outcome} per credential"
        );
    }
    // `private` is never stored, and passes through as the handler sent it.
    for _ in 0..2 {
        let private = app.get("/private").await;
        assert_eq!(private.cache(), Some("MISS"));
        assert_eq!(private.header("cache-control"), Some("private, max-age=5"));
    }
    assert_eq!(calls.get(), 5);
}

async fn ignored_query_params_share_an_entry(store: Store) {
    let client = store.client("ignored-params").await;
    let calls = Calls::default();
    let layer = CacheLayer::new()
        .client(client.clone())
        .namespace("users")
        .ignore_query_params(["utm_source"])
        .ignore_query_params(vec!["fbclid".to_owned()]);
    let app = serve(
        Router::new()
            .route("/users", echoing(&calls, &[]))
            .route_layer(layer.clone()),
    )
    .await;

    let first = app.get("/users?utm_source=mail").await;
    assert_eq!(
        (first.cache(), first.text()),
        (Some("MISS"), "1 utm_source=mail"),
        "the handler sees the whole query"
    );
    for same in [
        "/users",
        "/users?fbclid=abc",
        "/users?utm_source=x&fbclid=y&utm_source=z",
        "/users?utm%5Fsource=encoded",
    ] {
        let reply = app.get(same).await;
        assert_eq!(
            (reply.cache(), reply.text()),
            (Some("HIT"), "1 utm_source=mail"),
            "{same}"
        );
    }
    // The other parameters still count, in any order.
    let paged = app.get("/users?utm_source=a&page=2&sort=name").await;
    assert_eq!(
        (paged.cache(), paged.text()),
        (Some("MISS"), "2 utm_source=a&page=2&sort=name")
    );
    assert_eq!(
        app.get("/users?sort=name&page=2").await.cache(),
        Some("HIT")
    );
    // Exact names: case and near names are other parameters.
    assert_eq!(app.get("/users?UTM_SOURCE=x").await.cache(), Some("MISS"));
    assert_eq!(app.get("/users?utm_source_x=1").await.cache(), Some("MISS"));
    assert_eq!(calls.get(), 4);

    let key = layer.key("/users?fbclid=1&utm_source=2").unwrap();
    assert_eq!(key, format!("{}http:users:GET:/users", client.prefix()));
    assert_eq!(
        layer.key("/users?page=2&utm_source=q&sort=name").unwrap(),
        format!("{}http:users:GET:/users?page=2&sort=name", client.prefix())
    );
    if let Store::Redis = store {
        let mut raw = support::shared_server().connection();
        let exists: bool = ::redis::cmd("EXISTS").arg(&key).query(&mut raw).unwrap();
        assert!(exists, "`{key}` is the key the layer wrote");
    }
    // Invalidation agrees with the key the layer uses.
    layer
        .invalidate("/users?utm_source=elsewhere")
        .await
        .unwrap();
    assert_eq!(app.get("/users?fbclid=q").await.text(), "5 fbclid=q");
    layer
        .invalidate("/users?sort=name&utm_source=x&page=2")
        .await
        .unwrap();
    assert_eq!(
        app.get("/users?page=2&sort=name").await.cache(),
        Some("MISS")
    );
    assert_eq!(calls.get(), 6);
}

async fn ignored_query_params_reach_the_key_fn_removed(store: Store) {
    let client = store.client("ignored-key-fn").await;
    let calls = Calls::default();
    // The query as the key function sees it, order kept.
    let layer = CacheLayer::new()
        .client(client.clone())
        .namespace("items")
        .ignore_query_params(["utm_source"])
        .key_fn(|request| format!("item:{}", request.uri));
    let app = serve(
        Router::new()
            .route("/items", echoing(&calls, &[]))
            .route_layer(layer.clone()),
    )
    .await;

    let first = app.get("/items?b=2&utm_source=x&a=1").await;
    assert_eq!(
        (first.cache(), first.text()),
        (Some("MISS"), "1 b=2&utm_source=x&a=1")
    );
    assert_eq!(app.get("/items?b=2&a=1").await.cache(), Some("HIT"));
    assert_eq!(
        app.get("/items?a=1&b=2").await.cache(),
        Some("MISS"),
        "the key function's own order"
    );
    assert_eq!(
        app.get("/items?utm_source=only").await.cache(),
        Some("MISS")
    );
    assert_eq!(
        app.get("/items").await.cache(),
        Some("HIT"),
        "no query left: no `?`"
    );
    assert_eq!(
        layer.key("/items?utm_source=z&b=2&a=1").unwrap(),
        format!("{}http:items:item:/items?b=2&a=1", client.prefix())
    );
    layer
        .invalidate("/items?b=2&a=1&utm_source=y")
        .await
        .unwrap();
    assert_eq!(app.get("/items?b=2&a=1").await.text(), "4 b=2&a=1");
    assert_eq!(calls.get(), 4);
}
