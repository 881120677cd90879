//! The middleware: decide whether a request may use the cache, answer from
//! it, or run the handler and store what it returned.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::BoxError;
use axum::body::{Body, Bytes, HttpBody};
use axum::http::header::{AUTHORIZATION, RANGE};
use axum::http::request::Parts;
use axum::http::{Extensions, HeaderMap, HeaderValue, Method, Request, Response};
use tower_service::Service;
use tracing::Instrument;

use super::Settings;
use super::body::{self, Buffered};
use super::entry::{self, Entry, HIT, MISS, Reply, STALE, X_CACHIFY};
use super::stale::{self, Refresh, SetAside};
use crate::cache::{Computed, Core, Fetch, Served};
use crate::mode::Async;
use crate::observe::{self, CallKind, CallOutcome};
use crate::store::clamp_ttl;

/// The service [`CacheLayer`](super::CacheLayer) wraps around a handler or
/// router. Its responses have axum's [`Body`].
///
/// The inner service must be `Clone + Send + 'static` (axum's routers,
/// handlers and method routers are): each call is served by a clone, and
/// with [`stale_while_revalidate`](super::CacheLayer::stale_while_revalidate)
/// a clone refreshes an entry in a background task, after the response
/// was sent.
#[derive(Clone)]
pub struct CacheService<S> {
    pub(super) inner: S,
    pub(super) settings: Arc<Settings>,
}

impl<S: fmt::Debug> fmt::Debug for CacheService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheService")
            .field("inner", &self.inner)
            .field("settings", &self.settings)
            .finish()
    }
}

/// The future of a [`CacheService`] call.
pub struct ResponseFuture<E> {
    inner: Pin<Box<dyn Future<Output = Result<Response<Body>, E>> + Send>>,
}

impl<E> fmt::Debug for ResponseFuture<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<E> Future for ResponseFuture<E> {
    type Output = Result<Response<Body>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for CacheService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: HttpBody<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // The clone that was driven to readiness serves this call; the fresh
        // clone stays for the next `poll_ready` (tower's usual pattern).
        let fresh = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, fresh);
        ResponseFuture {
            inner: Box::pin(handle(self.settings.clone(), ready, request)),
        }
    }
}

/// How one request uses the cache.
struct Plan {
    key: String,
    head: bool,
    /// Skip the read (request `Cache-Control: no-cache`), still store.
    refresh: bool,
    /// Cached per credential: replies say `private`.
    private: bool,
}

impl Plan {
    /// `None` when the request must not touch the cache at all.
    fn new(settings: &Settings, core: &Core, parts: &Parts) -> Option<Self> {
        let head = parts.method == Method::HEAD;
        if parts.method != Method::GET && !head {
            return None;
        }
        let directives = settings.request_cache_control;
        if directives && entry::has_directive(&parts.headers, &["no-store"]) {
            return None;
        }
        // A partial response must not be stored under the whole resource's key.
        if parts.headers.contains_key(RANGE) {
            return None;
        }
        let credential = parts.headers.get(AUTHORIZATION);
        if credential.is_some() && !settings.cache_authorized {
            return None;
        }
        let scope = core.keys.http_scope(&settings.namespace);
        let request = settings.request_part(parts);
        Some(Plan {
            key: core
                .keys
                .http(&scope, credential.map(HeaderValue::as_bytes), &request),
            head,
            refresh: directives && entry::has_directive(&parts.headers, &["no-cache"]),
            private: credential.is_some(),
        })
    }

    fn reply<'a>(
        &self,
        settings: &'a Settings,
        request: &'a HeaderMap,
        outcome: HeaderValue,
    ) -> Reply<'a> {
        Reply {
            request,
            head: self.head,
            private: self.private,
            cache_control: &settings.cache_control,
            outcome,
        }
    }
}

/// What the handler produced.
pub(super) enum Handled {
    /// A response to pass on as it is, not stored.
    Passed(Response<Body>),
    /// A response to store, the extensions of the original response, and
    /// when it was stored (so its first reply shows the whole max-age).
    Storable(Entry, Extensions, u64),
}

async fn handle<S, ReqBody, ResBody>(
    settings: Arc<Settings>,
    mut inner: S,
    request: Request<ReqBody>,
) -> Result<Response<Body>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: HttpBody<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let (parts, body) = request.into_parts();
    let client = settings.client();
    let core = client.core();
    let Some(plan) = Plan::new(&settings, core, &parts) else {
        let response = inner.call(Request::from_parts(parts, body)).await?;
        return Ok(response.map(Body::new));
    };
    // The handler takes the request; `Vary` and `If-None-Match` are read
    // from its headers afterwards.
    let request_headers = parts.headers.clone();
    let tally = settings.tally(core);
    // The lookup's span, as a `#[cached]` call has: the namespace is its
    // template; the handler's own spans nest inside it on a miss.
    let span = observe::call_span(CallKind::Http, &settings.namespace, "", &plan.key);
    // A GET that finds its entry stale, but within a window, may be
    // answered with it; the read sets it aside.
    let stale_window = settings.stale_while_revalidate.max(settings.stale_if_error);
    let set_aside = SetAside::default();
    let accept = |entry: &Entry| set_aside.accept(entry, &request_headers, stale_window);
    let hit =
        |entry: Entry| entry.respond(&plan.reply(&settings, &request_headers, HIT), entry::now());

    // A HEAD response has no body to store: it is answered from the GET
    // entry, or passes through.
    if plan.head {
        if !plan.refresh
            && let Some(entry) = core
                .read::<Async, Entry>(&plan.key, &tally, &accept, None)
                .instrument(span.clone())
                .await
        {
            observe::record_outcome(&span, CallOutcome::Hit);
            return Ok(hit(entry));
        }
        observe::record_outcome(&span, CallOutcome::Miss);
        let mut response = inner
            .call(Request::from_parts(parts, body))
            .await?
            .map(Body::new);
        response.headers_mut().insert(X_CACHIFY, MISS);
        return Ok(response);
    }

    let ttl = clamp_ttl(settings.ttl(client));
    let kept = settings.kept_for(ttl);
    let compute = async {
        let request = Request::from_parts(parts, body);
        if let Some(entry) = set_aside.take_within(settings.stale_while_revalidate) {
            let refresh = Refresh {
                settings: Arc::clone(&settings),
                client: client.clone(),
                tally: Arc::clone(&tally),
                key: plan.key.clone(),
                ttl,
                kept,
            };
            stale::revalidate(refresh, inner.clone(), request);
            stale::count(client, &plan.key, None);
            let reply = plan.reply(&settings, &request_headers, STALE);
            return Computed {
                output: Ok(entry.respond(&reply, entry::now())),
                value: None,
                store: false,
                ttl: None,
            };
        }
        let handled = run(&settings, core, &plan.key, ttl, &mut inner, request).await;
        let (output, value) = match handled {
            Err(error) => (Err(error), None),
            Ok(Handled::Passed(response)) if response.status().is_server_error() => {
                match set_aside.take_within(settings.stale_if_error) {
                    Some(entry) => {
                        stale::count(client, &plan.key, Some(response.status().as_u16()));
                        let reply = plan.reply(&settings, &request_headers, STALE);
                        (Ok(entry.respond(&reply, entry::now())), None)
                    }
                    None => (Ok(response), None),
                }
            }
            Ok(Handled::Passed(response)) => (Ok(response), None),
            Ok(Handled::Storable(entry, extensions, now)) => {
                // Built from the entry, so a miss and the hits after it look the same.
                let reply = plan.reply(&settings, &request_headers, MISS);
                let mut response = entry.respond(&reply, now);
                *response.extensions_mut() = extensions;
                (Ok(response), Some(Arc::new(entry)))
            }
        };
        let store = value.is_some();
        Computed {
            output,
            value,
            store,
            ttl: Some(kept),
        }
    };
    let lookup = async {
        if plan.refresh {
            // A refresh runs the handler itself, whatever is cached or in
            // flight, and stores what it got.
            let computed = compute.await;
            if let (true, Some(entry)) = (computed.store, &computed.value) {
                let _stored = core
                    .write::<Async, Entry>(&plan.key, &tally, Arc::clone(entry), Some(kept), None)
                    .await;
            }
            Served::Ran(computed.output)
        } else {
            let fetch = Fetch {
                key: &plan.key,
                tally: &tally,
                fill_lock: false,
                read: true,
                accept: &accept,
                tags: &[],
                codec: None,
            };
            core.fetch::<Async, Entry, _, _, _>(fetch, compute).await
        }
    };
    match lookup.instrument(span.clone()).await {
        Served::Cached(entry) => {
            observe::record_outcome(&span, CallOutcome::Hit);
            Ok(hit(entry))
        }
        Served::Ran(output) => {
            observe::record_outcome(&span, CallOutcome::Miss);
            output
        }
    }
}

/// Runs the handler and decides whether its response can be stored.
pub(super) async fn run<S, ReqBody, ResBody>(
    settings: &Settings,
    core: &Core,
    key: &str,
    ttl: Duration,
    inner: &mut S,
    request: Request<ReqBody>,
) -> Result<Handled, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: HttpBody<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let request_headers = request.headers().clone();
    let mut response = inner.call(request).await?.map(Body::new);
    response.headers_mut().insert(X_CACHIFY, MISS);
    let (head, body) = response.into_parts();
    if !entry::storable(&head) {
        return Ok(Handled::Passed(Response::from_parts(head, body)));
    }
    let limit = settings.max_body_size;
    if body::known_too_large(&body, limit) {
        core.count_oversized();
        return Ok(Handled::Passed(Response::from_parts(head, body)));
    }
    let bytes = match body::buffer(body, limit).await {
        Buffered::Complete(bytes) => bytes,
        Buffered::TooLarge(body) => {
            core.count_oversized();
            tracing::debug!(
                key,
                limit,
                "cachify: response body over the limit; passed through, not stored"
            );
            return Ok(Handled::Passed(Response::from_parts(head, body)));
        }
        Buffered::Unstorable(body) => {
            return Ok(Handled::Passed(Response::from_parts(head, body)));
        }
    };
    let now = entry::now();
    let expires_at = now.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
    let entry = Entry::new(&head, bytes, &request_headers, now, expires_at);
    Ok(Handled::Storable(entry, head.extensions, now))
}
