//! Serving entries past their freshness: stale-while-revalidate (answer at
//! once, refresh in the background) and stale-if-error (answer a 5xx with
//! what was stored), as RFC 5861 describes them.

use std::collections::HashSet;
use std::future::poll_fn;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::BoxError;
use axum::body::{Bytes, HttpBody};
use axum::http::{HeaderMap, Request, Response};
use tower_service::Service;
use tracing::Instrument;

use super::Settings;
use super::entry::{self, Entry};
use super::service::{Handled, run};
use crate::client::Cachify;
use crate::error::Error;
use crate::mode::Async;
use crate::observe::Tally;

/// The keys being refreshed in the background by one layer (and its
/// clones), so that concurrent stale requests start one refresh, not one
/// each.
#[derive(Debug, Default)]
pub(super) struct Refreshing {
    keys: Mutex<HashSet<String>>,
}

impl Refreshing {
    /// Claims `key` for a refresh; `None` when one is already running.
    fn claim(self: &Arc<Self>, key: &str) -> Option<Claim> {
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        keys.insert(key.to_owned()).then(|| Claim {
            refreshing: Arc::clone(self),
            key: key.to_owned(),
        })
    }
}

/// A claimed refresh; the key is free again when it drops, however the
/// refresh ended (a panicking handler included).
struct Claim {
    refreshing: Arc<Refreshing>,
    key: String,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.refreshing
            .keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key);
    }
}

/// An entry a read found past its freshness but still within a stale
/// window, set aside so that the request may be answered with it.
#[derive(Default)]
pub(super) struct SetAside(Mutex<Option<Entry>>);

impl SetAside {
    /// Whether `entry` answers `request` now as a fresh entry; if it is
    /// stale but within `window`, it is set aside.
    pub(super) fn accept(&self, entry: &Entry, request: &HeaderMap, window: Duration) -> bool {
        let now = entry::now();
        if !entry.matches(request) {
            return false;
        }
        if entry.is_fresh(now) {
            return true;
        }
        if entry.stale_within(now, window) {
            *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(entry.clone());
        }
        false
    }

    /// The entry set aside, if it is still within `window` after its
    /// expiry; otherwise it stays set aside (for another window).
    pub(super) fn take_within(&self, window: Duration) -> Option<Entry> {
        let mut set_aside = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        set_aside
            .as_ref()
            .is_some_and(|entry| entry.stale_within(entry::now(), window))
            .then(|| set_aside.take())
            .flatten()
    }
}

/// Counts a stale reply; with `error`, a 5xx it replaces, also logs a
/// warning (at most one line per period).
pub(super) fn count(client: &Cachify, key: &str, error: Option<u16>) {
    let health = client.core().health();
    health.counters.stale.add();
    if let Some(status) = error
        && let Some(suppressed) = health.stale_log.admit()
    {
        tracing::warn!(
            key,
            status,
            suppressed,
            "cachify: the handler answered with a server error; serving the stale cached response"
        );
    }
}

/// What a background refresh needs besides the request.
pub(super) struct Refresh {
    pub(super) settings: Arc<Settings>,
    pub(super) client: Cachify,
    pub(super) tally: Arc<Tally>,
    pub(super) key: String,
    /// How long the new entry is fresh.
    pub(super) ttl: Duration,
    /// How long the backend keeps it.
    pub(super) kept: Duration,
}

/// Starts refreshing `refresh.key` in the background by sending `request`
/// to `inner`, unless this layer is refreshing it already. Runs on the
/// caller's tokio runtime (the handler's home), or cachify's own if the
/// caller has none.
pub(super) fn revalidate<S, ReqBody, ResBody>(refresh: Refresh, inner: S, request: Request<ReqBody>)
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: HttpBody<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let Some(claim) = refresh.settings.refreshing.claim(&refresh.key) else {
        return;
    };
    let span = tracing::debug_span!("cachify.revalidate", key = refresh.key.as_str());
    let task = async move {
        let _claim = claim;
        refresh_entry(refresh, inner, request).await;
    }
    .instrument(span);
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => drop(runtime.spawn(task)),
        Err(_) => drop(crate::io::spawn(task)),
    }
}

async fn refresh_entry<S, ReqBody, ResBody>(
    refresh: Refresh,
    mut inner: S,
    request: Request<ReqBody>,
) where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: HttpBody<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let Refresh {
        settings,
        client,
        tally,
        key,
        ttl,
        kept,
    } = refresh;
    let core = client.core();
    // Another process may be refreshing it: its fill lock says so. A lock
    // the backend cannot grant is no reason to keep the entry stale.
    let guard = match core
        .locks
        .acquire::<Async>(core.keys.fill(&key), None, Duration::ZERO, false, None)
        .await
    {
        Ok(guard) => Some(guard),
        Err(Error::Locked { .. }) => return,
        Err(_) => None,
    };
    if poll_fn(|cx| inner.poll_ready(cx)).await.is_ok()
        && let Ok(Handled::Storable(entry, ..)) =
            run(&settings, core, &key, ttl, &mut inner, request).await
    {
        core.write::<Async, Entry>(&key, &tally, Arc::new(entry), Some(kept), None)
            .await;
    }
    if let Some(guard) = guard {
        guard.release_after_run::<Async>().await;
    }
}
