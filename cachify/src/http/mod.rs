//! Whole-response HTTP caching for axum (feature `axum`).
//!
//! [`CacheLayer`] is a tower layer: put it on a router with
//! [`Router::route_layer`](axum::Router::route_layer) (only matched routes)
//! or [`Router::layer`](axum::Router::layer) (everything, 404s included,
//! which are never stored). It caches whole GET responses, status, headers
//! and body, in the client's backend, Redis or memory:
//!
//! ```
//! use std::time::Duration;
//! use axum::{Router, routing::get};
//! use cachify::http::CacheLayer;
//!
//! async fn list_users() -> &'static str {
//!     "[]"
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), cachify::Error> {
//! let users = CacheLayer::new().namespace("users").ttl(Duration::from_secs(60));
//! let app: Router = Router::new()
//!     .route("/users", get(list_users))
//!     .route_layer(users.clone());
//!
//! // After a write, drop what is cached:
//! users.invalidate("/users").await?; // one entry
//! cachify::http::clear_namespace(cachify::global(), "users").await?; // all of them
//! # Ok(()) }
//! ```
//!
//! # What is cached
//!
//! - Only GET responses are stored; HEAD requests are answered from the GET
//!   entry, headers only. Other methods pass through untouched.
//! - Only 2xx responses (not 206) are stored, so an error is never replayed.
//!   Nor are responses with `Cache-Control: no-store`, `private` or
//!   `no-cache`, a `Set-Cookie` header, or `Vary: *`.
//! - The status, the body and the headers are stored and replayed as they
//!   were, the handler's `Cache-Control` included, less hop-by-hop headers,
//!   `Set-Cookie`, `Date`, `Age`, `Expires` and `Content-Length` (which is
//!   recomputed).
//! - Bodies over [`CacheLayer::max_body_size`] pass through and are not
//!   stored. A body is read up to the limit while deciding; one that goes
//!   over it is sent on as read so far followed by the rest of the stream,
//!   never collected whole. A body whose size hint is already over the
//!   limit is not read at all.
//! - Requests with an `Authorization` header pass through, unless
//!   [`CacheLayer::cache_authorized`] allows them: then each credential has
//!   its own entry, keyed by a SHA-256 digest of the header (never the
//!   header itself), and replies say `Cache-Control: private` (unless the
//!   handler set its own).
//! - A request with `Cache-Control: no-cache` skips the read and refreshes
//!   the entry; one with `no-store` bypasses the cache, neither reading nor
//!   writing. Requests with a `Range` header bypass it too.
//! - One entry per key: a response with `Vary: Accept-Language` is stored
//!   with the request's `Accept-Language`, and a request with another one
//!   is a miss that replaces it. To keep one entry per language, put the
//!   header in the key with [`CacheLayer::key_fn`].
//!
//! # What replies carry
//!
//! - `x-cachify: HIT` or `MISS` (requests that bypass the cache get none),
//!   or `STALE` (see [Stale responses](#stale-responses)).
//! - The handler's own `Cache-Control`, as it was, when it set one; hits
//!   then also carry `Age`, the seconds since the response was stored.
//! - Otherwise the layer's [`CacheLayer::cache_control`]. By default that
//!   is `max-age=<seconds left>`, counted from the expiry time stored in the
//!   entry, so it decreases as the entry ages, in every process. Replies
//!   cached per credential say `private` and nothing meant for shared
//!   caches.
//! - An `ETag`: the handler's, or else the quoted SHA-256 of the body, the
//!   same in every process and across restarts.
//! - A request whose `If-None-Match` matches gets `304 Not Modified`, on
//!   hits and on misses alike.
//!
//! # Stale responses
//!
//! By default an entry is a miss once its TTL is over. Two windows after
//! the TTL keep it useful (RFC 5861):
//!
//! - [`CacheLayer::stale_while_revalidate`]: within it, a GET is answered
//!   at once with the stored response, and one background request per key
//!   (in this process, and across processes by the key's fill lock)
//!   refreshes the entry.
//! - [`CacheLayer::stale_if_error`]: within it, a 5xx from the handler is
//!   answered with the stored response instead, and a warning is logged.
//!
//! The backend keeps entries for the TTL plus the larger window; the entry
//! itself records when it stops being fresh, as it always has. A stale
//! reply says `x-cachify: STALE`, carries `Age`, and does not claim to be
//! fresh: with [`CacheControl::remaining_ttl`] it says `max-age=0`, and a
//! handler's own `Cache-Control` comes with an `Age` past its freshness
//! (RFC 9111, 4.2.4 and 5.1). HEAD requests and requests with
//! `Cache-Control: no-cache` are never answered stale. Stale replies count
//! in [`Stats::stale`](crate::Stats::stale).
//!
//! # Keys
//!
//! `{prefix}http:{namespace}:GET:{path}?{query}`, for example
//! `cachify:http:users:GET:/users?page=2&sort=name`. Query parameters are
//! decoded, sorted by name and encoded again, so `?b=2&a=1` and `?a=1&b=2`
//! share an entry. Parameters named by [`CacheLayer::ignore_query_params`]
//! (`utm_source`, say) are left out. The `http:` tag keeps responses apart
//! from `#[cached]` values and locks. With a credential, `auth.<digest>:`
//! comes before `GET`. [`CacheLayer::key_fn`] replaces the
//! `GET:{path}?{query}` part, and is given the URI without the ignored
//! parameters.
//!
//! # Failures
//!
//! Like `#[cached]`, the cache fails open: if the backend errors or times
//! out, the handler runs and its response is returned, a warning is logged
//! (at most one line per 5 s), and the client's circuit breaker skips the
//! backend after repeated failures. Hits, misses, errors and skipped
//! writes show in [`Cachify::stats`].

mod body;
mod control;
mod entry;
mod query;
mod service;
mod stale;

use std::borrow::Cow;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::http::request::Parts;
use axum::http::{Request, Uri};
use tower_layer::Layer;

pub use self::control::CacheControl;
pub use self::service::{CacheService, ResponseFuture};
use crate::cache::Core;
use crate::client::Cachify;
use crate::error::Error;
use crate::keyspace;
use crate::mode::Async;
use crate::observe::{CallKind, Tally};
use crate::store::clamp_ttl;

/// TTL of entries when neither the layer nor the client sets one.
const DEFAULT_TTL: Duration = Duration::from_secs(60);
/// Largest body stored by default.
const DEFAULT_MAX_BODY_SIZE: usize = 1024 * 1024;

type KeyFn = dyn Fn(&Parts) -> String + Send + Sync;

#[derive(Clone)]
struct Settings {
    client: Option<Cachify>,
    namespace: String,
    ttl: Option<Duration>,
    max_body_size: usize,
    cache_authorized: bool,
    request_cache_control: bool,
    cache_control: CacheControl,
    /// Query parameter names left out of keys, as given (not encoded).
    ignored_query_params: Vec<String>,
    key_fn: Option<Arc<KeyFn>>,
    /// The counters of the last client served, so that a request takes no
    /// lock to find them; cleared by every builder method.
    tally: OnceLock<(u64, Arc<Tally>)>,
    /// How long after expiry a request is answered at once with the
    /// stored response while it is refreshed in the background.
    stale_while_revalidate: Duration,
    /// How long after expiry a 5xx is answered with the stored response.
    stale_if_error: Duration,
    /// The keys this layer (and its clones) is refreshing in the background.
    refreshing: Arc<stale::Refreshing>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            client: None,
            namespace: "default".to_owned(),
            ttl: None,
            max_body_size: DEFAULT_MAX_BODY_SIZE,
            cache_authorized: false,
            request_cache_control: true,
            cache_control: CacheControl::remaining_ttl(),
            ignored_query_params: Vec::new(),
            key_fn: None,
            tally: OnceLock::new(),
            stale_while_revalidate: Duration::ZERO,
            stale_if_error: Duration::ZERO,
            refreshing: Arc::default(),
        }
    }
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("client", &self.client)
            .field("namespace", &self.namespace)
            .field("ttl", &self.ttl)
            .field("max_body_size", &self.max_body_size)
            .field("cache_authorized", &self.cache_authorized)
            .field("request_cache_control", &self.request_cache_control)
            .field("cache_control", &self.cache_control)
            .field("ignored_query_params", &self.ignored_query_params)
            .field("key_fn", &self.key_fn.as_ref().map(|_| "custom"))
            .field("stale_while_revalidate", &self.stale_while_revalidate)
            .field("stale_if_error", &self.stale_if_error)
            .finish()
    }
}

impl Settings {
    /// The pinned client, or the global one in force now.
    fn client(&self) -> &Cachify {
        self.client
            .as_ref()
            .unwrap_or_else(|| crate::global::global())
    }

    fn ttl(&self, client: &Cachify) -> Duration {
        self.ttl.or(client.default_ttl()).unwrap_or(DEFAULT_TTL)
    }

    /// How long the backend keeps an entry that is fresh for `ttl`: longer
    /// by the larger stale window, so it can still be served stale.
    fn kept_for(&self, ttl: Duration) -> Duration {
        clamp_ttl(ttl.saturating_add(self.stale_while_revalidate.max(self.stale_if_error)))
    }

    /// The counters of this namespace on `core`'s client: kept for the
    /// first client served (the usual one), looked up for any other.
    fn tally(&self, core: &Core) -> Arc<Tally> {
        let health = core.health();
        if let Some((client, tally)) = self.tally.get()
            && *client == health.client
        {
            return Arc::clone(tally);
        }
        let tally = health.tally(CallKind::Http, &self.namespace, None);
        let _ = self.tally.set((health.client, Arc::clone(&tally)));
        tally
    }

    /// The request part of the key of `request`: `GET:{path}?{sorted
    /// query}` or what the key function returns, the ignored query
    /// parameters left out of both.
    fn request_part(&self, request: &Parts) -> String {
        let query = request
            .uri
            .query()
            .map(|query| query::without(query, &self.ignored_query_params));
        match (&self.key_fn, query) {
            (None, query) => keyspace::http_request(request.uri.path(), query.as_deref()),
            (Some(key_fn), Some(Cow::Owned(kept))) => key_fn(&query::with_query(request, &kept)),
            (Some(key_fn), _) => key_fn(request),
        }
    }
}

/// A tower [`Layer`] that caches whole HTTP responses. See the
/// [module documentation](self) for what is cached and how.
///
/// Cheap to clone: keep a clone to invalidate entries after writes.
///
/// ```
/// use std::time::Duration;
/// use axum::{Router, routing::get};
/// use cachify::http::{CacheControl, CacheLayer};
///
/// let client = cachify::Cachify::builder().memory().build_blocking()?;
/// let cache = CacheLayer::new()
///     .client(client)                      // default: `cachify::global()`
///     .namespace("catalog")                // default "default"
///     .ttl(Duration::from_secs(300))       // default: the client's, else 60 s
///     .max_body_size(256 * 1024)           // default 1 MiB
///     .cache_authorized(false)             // the default
///     .cache_control(CacheControl::fixed("public, max-age=60")?) // default: seconds left
///     .ignore_query_params(["utm_source"]); // default: none
/// let app: Router = Router::new()
///     .route("/items", get(|| async { "[]" }))
///     .layer(cache);
/// # Ok::<(), cachify::Error>(())
/// ```
#[derive(Clone, Debug, Default)]
#[must_use = "a layer does nothing until it is applied to a router or service"]
pub struct CacheLayer {
    settings: Arc<Settings>,
}

impl CacheLayer {
    /// A layer with the defaults: the global client, namespace `"default"`,
    /// the client's default TTL (else 60 s), bodies up to 1 MiB, requests
    /// with `Authorization` not cached, `Cache-Control: max-age=<seconds
    /// left>`, every query parameter in the key.
    ///
    /// ```
    /// let cache = cachify::http::CacheLayer::new(); // the defaults
    /// assert_eq!(cache.key("/users")?, "cachify:http:default:GET:/users");
    /// # Ok::<(), cachify::Error>(())
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    fn settings(&mut self) -> &mut Settings {
        let settings = Arc::make_mut(&mut self.settings);
        settings.tally = OnceLock::new();
        settings
    }

    /// Uses `client` instead of [`crate::global()`] (which is otherwise
    /// looked up at each request, so `cachify::init` may come later).
    ///
    /// ```
    /// let client = cachify::Cachify::builder().prefix("shop:").build_blocking()?;
    /// let cache = cachify::http::CacheLayer::new().client(client);
    /// assert_eq!(cache.key("/items")?, "shop:http:default:GET:/items");
    /// # Ok::<(), cachify::Error>(())
    /// ```
    pub fn client(mut self, client: Cachify) -> Self {
        self.settings().client = Some(client);
        self
    }

    /// The namespace of this layer's entries, cleared together by
    /// [`clear_namespace`] or [`CacheLayer::clear`]. Default `"default"`.
    ///
    /// ```
    /// let client = cachify::Cachify::builder().build_blocking()?;
    /// let cache = cachify::http::CacheLayer::new().client(client).namespace("users");
    /// assert_eq!(cache.key("/users/42")?, "cachify:http:users:GET:/users/42");
    /// # Ok::<(), cachify::Error>(())
    /// ```
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.settings().namespace = namespace.into();
        self
    }

    /// How long entries live. Default: the client's `default_ttl`, else 60 s.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// let cache = cachify::http::CacheLayer::new().ttl(Duration::from_secs(300));
    /// ```
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.settings().ttl = Some(ttl);
        self
    }

    /// Largest body stored, in bytes; larger ones pass through. Default
    /// 1 MiB. With Redis, the client's `max_value_size` also applies to the
    /// whole encoded entry.
    ///
    /// ```
    /// let cache = cachify::http::CacheLayer::new().max_body_size(256 * 1024); // 256 KiB
    /// ```
    pub fn max_body_size(mut self, bytes: usize) -> Self {
        self.settings().max_body_size = bytes;
        self
    }

    /// Whether requests with an `Authorization` header are cached, each
    /// credential under its own key. Default `false`: they pass through.
    ///
    /// ```
    /// // Per-user pages: each `Authorization` value gets its own entries.
    /// let cache = cachify::http::CacheLayer::new().namespace("me").cache_authorized(true);
    /// ```
    pub fn cache_authorized(mut self, cache: bool) -> Self {
        self.settings().cache_authorized = cache;
        self
    }

    /// Whether a request's `Cache-Control: no-cache` (refresh) and
    /// `no-store` (bypass) are obeyed. Default `true`; `false` stops clients
    /// from forcing the handler to run.
    ///
    /// ```
    /// // Clients cannot force the handler to run with `Cache-Control: no-cache`.
    /// let cache = cachify::http::CacheLayer::new().request_cache_control(false);
    /// ```
    pub fn request_cache_control(mut self, obey: bool) -> Self {
        self.settings().request_cache_control = obey;
        self
    }

    /// The `Cache-Control` header of the responses this layer stores and
    /// replays, when the handler did not set one. Default
    /// [`CacheControl::remaining_ttl`]: `max-age=<seconds until the entry
    /// expires>`.
    ///
    /// A handler's own `Cache-Control` on a response that is stored (so
    /// not `no-store`, `private` or `no-cache`) is kept as it was, on the
    /// `MISS` and on every `HIT`, which also carry `Age`: the seconds since
    /// the response was stored, so downstream caches count its freshness
    /// from when the handler produced it. Responses that are not stored
    /// pass through with their headers untouched.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cachify::http::{CacheControl, CacheLayer};
    ///
    /// // Stored for 10 minutes here; browsers and CDNs may keep it 60 s.
    /// let cache = CacheLayer::new()
    ///     .ttl(Duration::from_secs(600))
    ///     .cache_control(CacheControl::fixed("public, max-age=60")?);
    /// // Cached here only: browsers revalidate with the ETag every time.
    /// let server_side = CacheLayer::new().cache_control("no-cache".parse()?);
    /// # Ok::<(), cachify::Error>(())
    /// ```
    pub fn cache_control(mut self, cache_control: CacheControl) -> Self {
        self.settings().cache_control = cache_control;
        self
    }

    /// Leaves the named query parameters out of keys, so that
    /// `/users?utm_source=mail` and `/users` share one entry (the handler
    /// of the first request that fills it still sees its whole query).
    ///
    /// Names are compared exactly, case included, with the request's names
    /// decoded (`utm%5Fsource` is `utm_source`); every occurrence is left
    /// out. The parameters left are sorted by name as usual. Calling it
    /// again adds to the names. [`CacheLayer::key`] and
    /// [`CacheLayer::invalidate`] leave the same parameters out.
    ///
    /// With a [`key_fn`](Self::key_fn), the function is given the request
    /// with these parameters taken out of its URI (the others as they
    /// came, in their order).
    ///
    /// ```
    /// use cachify::http::CacheLayer;
    ///
    /// let client = cachify::Cachify::builder().memory().build_blocking()?;
    /// let cache = CacheLayer::new()
    ///     .client(client)
    ///     .namespace("users")
    ///     .ignore_query_params(["utm_source", "utm_medium", "fbclid"]);
    /// assert_eq!(
    ///     cache.key("/users?utm_source=mail&page=2&fbclid=x")?,
    ///     cache.key("/users?page=2")?,
    /// );
    /// # Ok::<(), cachify::Error>(())
    /// ```
    pub fn ignore_query_params<I>(mut self, names: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.settings()
            .ignored_query_params
            .extend(names.into_iter().map(Into::into));
        self
    }

    /// Replaces the `GET:{path}?{query}` part of keys with what `key_fn`
    /// returns for the request. The prefix, namespace and credential digest
    /// still come first. The request's URI lacks the parameters named by
    /// [`ignore_query_params`](Self::ignore_query_params).
    ///
    /// ```
    /// use cachify::http::CacheLayer;
    ///
    /// // One entry per path and language, whatever the query.
    /// let cache = CacheLayer::new().key_fn(|request| {
    ///     let language = request
    ///         .headers
    ///         .get("accept-language")
    ///         .and_then(|value| value.to_str().ok())
    ///         .unwrap_or("-");
    ///     format!("{}:{language}", request.uri.path())
    /// });
    /// ```
    pub fn key_fn<F>(mut self, key_fn: F) -> Self
    where
        F: Fn(&Parts) -> String + Send + Sync + 'static,
    {
        self.settings().key_fn = Some(Arc::new(key_fn));
        self
    }

    /// The backend key a plain (no credential) GET of `uri` is cached
    /// under, as `redis-cli` shows it. `uri` is a path with an optional
    /// query, or an absolute URL. Ignored query parameters are left out.
    /// With a [`key_fn`](Self::key_fn), that function is applied to a GET
    /// of `uri` with no headers.
    ///
    /// ```
    /// use cachify::http::CacheLayer;
    ///
    /// let client = cachify::Cachify::builder().memory().build_blocking()?;
    /// let cache = CacheLayer::new().client(client).namespace("users");
    /// assert_eq!(cache.key("/users?b=2&a=1")?, "cachify:http:users:GET:/users?a=1&b=2");
    /// # Ok::<(), cachify::Error>(())
    /// ```
    pub fn key(&self, uri: &str) -> Result<String, Error> {
        let uri: Uri = uri
            .parse()
            .map_err(|error| Error::Config(format!("invalid URI `{uri}`: {error}")))?;
        let (parts, ()) = Request::get(uri)
            .body(())
            .map_err(|error| Error::Config(error.to_string()))?
            .into_parts();
        Ok(self.key_of(&self.settings.request_part(&parts)))
    }

    fn key_of(&self, request: &str) -> String {
        let keys = &self.settings.client().core().keys;
        keys.http(&keys.http_scope(&self.settings.namespace), None, request)
    }

    /// Deletes the entry of a plain GET of `uri` (see [`CacheLayer::key`]);
    /// query order and ignored query parameters do not matter. Entries cached per credential are
    /// cleared with [`CacheLayer::clear`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cachify::Error> {
    /// let cache = cachify::http::CacheLayer::new().namespace("users");
    /// cache.invalidate("/users/42").await?;
    /// # Ok(()) }
    /// ```
    pub async fn invalidate(&self, uri: &str) -> Result<(), Error> {
        let key = self.key(uri)?;
        self.settings.client().core().delete::<Async>(&key).await
    }

    /// Deletes the entry whose key part is `key`, as a
    /// [`key_fn`](Self::key_fn) returned it (or `GET:{path}?{sorted query}`).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cachify::Error> {
    /// let cache = cachify::http::CacheLayer::new()
    ///     .namespace("users")
    ///     .key_fn(|request| request.uri.path().to_owned());
    /// cache.invalidate_key("/users/42").await?;
    /// # Ok(()) }
    /// ```
    pub async fn invalidate_key(&self, key: &str) -> Result<(), Error> {
        let key = self.key_of(key);
        self.settings.client().core().delete::<Async>(&key).await
    }

    /// Deletes every entry of this layer's namespace; see [`clear_namespace`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), cachify::Error> {
    /// let client = cachify::Cachify::builder().build().await?;
    /// let cache = cachify::http::CacheLayer::new().client(client).namespace("users");
    /// assert_eq!(cache.clear().await?, 0); // nothing cached yet
    /// # Ok(()) }
    /// ```
    pub async fn clear(&self) -> Result<u64, Error> {
        clear_namespace(self.settings.client(), &self.settings.namespace).await
    }

    /// Serves expired entries for up to `window` after their expiry
    /// (RFC 5861's `stale-while-revalidate`): a GET in that window is
    /// answered at once with the stored response (`x-cachify: STALE`), and
    /// the handler runs in the background to refresh the entry. Default
    /// zero: an expired entry is a miss.
    ///
    /// - One background refresh per key at a time: in this process (per
    ///   layer and its clones), and across processes through the key's fill
    ///   lock. A refresh whose response is not stored (an error, a 5xx,
    ///   `no-store`, too large) leaves the stale entry in place until
    ///   `window` runs out; the next stale request tries again.
    /// - The refresh is the request that found the entry stale, sent on to
    ///   a clone of the inner service, on the caller's tokio runtime. That
    ///   is why [`CacheService`] requires its inner service to be
    ///   `Clone + Send + 'static` (axum's routers and handlers are).
    /// - Entries stay in the backend for `ttl` plus the larger of this and
    ///   [`stale_if_error`](Self::stale_if_error).
    /// - A stale reply carries `Age` and says it is not fresh: with the
    ///   default [`CacheControl::remaining_ttl`] it is `max-age=0`; a
    ///   handler's own `Cache-Control` is replayed with an `Age` past it;
    ///   a [`CacheControl::fixed`] header is sent as written.
    /// - HEAD requests and requests with `Cache-Control: no-cache` (when
    ///   [`request_cache_control`](Self::request_cache_control) obeys them)
    ///   are never answered stale.
    /// - A stale reply counts in [`Stats::stale`](crate::Stats::stale), and
    ///   as a miss.
    ///
    /// ```
    /// use std::time::Duration;
    /// use axum::{Router, routing::get};
    /// use cachify::http::CacheLayer;
    ///
    /// // Fresh for a minute; for 5 minutes more, answered at once while refreshed.
    /// let cache = CacheLayer::new()
    ///     .ttl(Duration::from_secs(60))
    ///     .stale_while_revalidate(Duration::from_secs(300));
    /// let app: Router = Router::new()
    ///     .route("/report", get(|| async { "slow to build" }))
    ///     .route_layer(cache);
    /// ```
    pub fn stale_while_revalidate(mut self, window: Duration) -> Self {
        self.settings().stale_while_revalidate = window;
        self
    }

    /// Answers a 5xx from the handler with the stored response, for up to
    /// `window` after the entry's expiry (RFC 5861's `stale-if-error`).
    /// Default zero: a 5xx passes through.
    ///
    /// - Only server errors (5xx responses) are replaced; a 4xx, and an
    ///   `Err` from the inner service, pass through. With no entry, or
    ///   past `window`, the 5xx passes through too.
    /// - The stale reply is `x-cachify: STALE`, with `Age` and a
    ///   `Cache-Control` as described under
    ///   [`stale_while_revalidate`](Self::stale_while_revalidate); the
    ///   entry is not refreshed, and the handler runs again on the next
    ///   request.
    /// - Each one logs a warning (at most one line per 5 s, with the count
    ///   of lines held back), and counts in
    ///   [`Stats::stale`](crate::Stats::stale).
    /// - Entries stay in the backend for `ttl` plus the larger of this and
    ///   `stale_while_revalidate`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use cachify::http::CacheLayer;
    ///
    /// // If the upstream fails, keep serving what we had for up to an hour.
    /// let cache = CacheLayer::new()
    ///     .ttl(Duration::from_secs(60))
    ///     .stale_if_error(Duration::from_secs(3600));
    /// ```
    pub fn stale_if_error(mut self, window: Duration) -> Self {
        self.settings().stale_if_error = window;
        self
    }
}

impl<S> Layer<S> for CacheLayer {
    type Service = CacheService<S>;

    fn layer(&self, inner: S) -> CacheService<S> {
        CacheService {
            inner,
            settings: self.settings.clone(),
        }
    }
}

/// Deletes every cached response of `namespace` on `client` (all paths, all
/// credentials) and returns how many entries were deleted. On Redis this
/// walks the keys with `SCAN` in batches and `UNLINK`s them, so it never
/// blocks the server the way `KEYS` would.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), cachify::Error> {
/// let deleted = cachify::http::clear_namespace(cachify::global(), "users").await?;
/// assert_eq!(deleted, 0);
/// # Ok(()) }
/// ```
pub async fn clear_namespace(client: &Cachify, namespace: &str) -> Result<u64, Error> {
    let core = client.core();
    core.delete_prefix::<Async>(&core.keys.http_scope(namespace))
        .await
}
