//! The middleware: decide whether a request may use the cache, answer from
//! it, or run the handler and store what it returned.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::BoxError;
use axum::body::{Body, Bytes, HttpBody};
use axum::http::header::{AUTHORIZATION, RANGE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, Request, Response};
use tower_service::Service;

use super::Settings;
use super::body::{self, Buffered};
use super::entry::{self, Entry, HIT, MISS, Reply, X_CACHIFY};
use super::key;
use crate::backend::clamp_ttl;
use crate::health::Counters;
use crate::{Cachify, Error};

/// The service [`CacheLayer`](super::CacheLayer) wraps around a handler or
/// router. Its responses have axum's [`Body`].
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
    S::Error: 'static,
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
    fn new(settings: &Settings, client: &Cachify, parts: &Parts) -> Option<Self> {
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
        let scope = key::scope(client.prefix(), &settings.namespace);
        let request = match &settings.key_fn {
            Some(key_fn) => key_fn(parts),
            None => key::of_uri(&parts.uri),
        };
        Some(Plan {
            key: key::full(&scope, credential, &request),
            head,
            refresh: directives && entry::has_directive(&parts.headers, &["no-cache"]),
            private: credential.is_some(),
        })
    }

    fn reply<'a>(&self, request: &'a HeaderMap, outcome: HeaderValue) -> Reply<'a> {
        Reply {
            request,
            head: self.head,
            private: self.private,
            outcome,
        }
    }
}

async fn handle<S, ReqBody, ResBody>(
    settings: Arc<Settings>,
    mut inner: S,
    request: Request<ReqBody>,
) -> Result<Response<Body>, S::Error>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: HttpBody<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let (parts, body) = request.into_parts();
    let client = settings.client();
    let Some(plan) = Plan::new(&settings, client, &parts) else {
        let response = inner.call(Request::from_parts(parts, body)).await?;
        return Ok(response.map(Body::new));
    };
    if !plan.refresh
        && let Some(entry) = lookup(client, &plan.key, &parts.headers).await
    {
        return Ok(entry.respond(&plan.reply(&parts.headers, HIT), entry::now()));
    }

    // The handler takes the request; `Vary` and `If-None-Match` are read
    // from its headers afterwards.
    let request_headers = parts.headers.clone();
    let mut response = inner
        .call(Request::from_parts(parts, body))
        .await?
        .map(Body::new);
    response.headers_mut().insert(X_CACHIFY, MISS);
    // A HEAD response has no body to store; GET fills the entry.
    if plan.head {
        return Ok(response);
    }
    let (head, body) = response.into_parts();
    if !entry::storable(&head) {
        return Ok(Response::from_parts(head, body));
    }
    let limit = settings.max_body_size;
    if body::known_too_large(&body, limit) {
        Counters::add(&client.health().counters.oversized);
        return Ok(Response::from_parts(head, body));
    }
    let bytes = match body::buffer(body, limit).await {
        Buffered::Complete(bytes) => bytes,
        Buffered::TooLarge(body) => {
            Counters::add(&client.health().counters.oversized);
            tracing::debug!(
                key = plan.key,
                limit,
                "cachify: response body over the limit; passed through, not stored"
            );
            return Ok(Response::from_parts(head, body));
        }
        Buffered::Unstorable(body) => return Ok(Response::from_parts(head, body)),
    };

    let ttl = clamp_ttl(settings.ttl(client));
    let now = entry::now();
    let expires_at = now.saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
    let entry = Entry::new(&head, bytes, &request_headers, expires_at);
    store(client, &plan.key, &entry, ttl).await;
    // Built from the entry, so a miss and the hits after it look the same.
    let mut response = entry.respond(&plan.reply(&request_headers, MISS), now);
    *response.extensions_mut() = head.extensions;
    Ok(response)
}

/// Reads an entry, fail-open like `#[cached]`: skips the backend while the
/// breaker is open, and treats errors and undecodable entries as misses.
async fn lookup(client: &Cachify, key: &str, request: &HeaderMap) -> Option<Entry> {
    let counters = &client.health().counters;
    if !client.health().breaker.allows() {
        Counters::add(&counters.bypassed);
        return None;
    }
    let found = client.backend().get::<Entry>(key).await;
    client.observe("read", key, &found);
    let entry = match found {
        Ok(found) => found.filter(|entry| entry.answers(request, entry::now())),
        Err(Error::Codec(error)) => {
            tracing::debug!(key, %error, "cachify: cached response no longer decodes; treating it as a miss");
            None
        }
        // Counted and logged by `observe`.
        Err(_) => None,
    };
    Counters::add(if entry.is_some() {
        &counters.hits
    } else {
        &counters.misses
    });
    entry
}

/// Stores an entry unless the breaker is open; never fails the request.
async fn store(client: &Cachify, key: &str, entry: &Entry, ttl: std::time::Duration) {
    if !client.health().breaker.allows() {
        return;
    }
    let written = client.backend().set(key, entry, Some(ttl)).await;
    client.observe("write", key, &written);
    if let Ok(false) = written {
        Counters::add(&client.health().counters.oversized);
    }
}
