//! What cachify reports about its calls: per-template counters
//! ([`crate::Cachify::stats_by_template`]), `tracing` spans and events, and,
//! with the `metrics` feature, counters and a latency histogram through the
//! [`metrics`](https://docs.rs/metrics) facade.
//!
//! **Tracing.** Every `#[cached]` call runs in a span named `cachify.call`
//! at TRACE, target `cachify::call`, with the fields `kind`, `template`,
//! `function` (its path), `key` (the rendered key) and `outcome`, one of
//! `hit`, `near` (a hit the near cache answered), `miss` (the function ran,
//! or a concurrent caller's run answered), `bypass` (the circuit breaker
//! was open) and `stale` (the function failed and a stale value answered,
//! `stale_if_error`). HTTP lookups get the same span, kind `http`, with their
//! namespace as the template and `hit` or `miss`. Locks log DEBUG events
//! at target `cachify::lock`, with a field `lock` saying what happened:
//! `acquired`, `contended` (the lock was held by someone else and this
//! request gave up), `lost` (the watchdog found it taken away) and
//! `released` (its holder let go of it; on drop the store is told in the
//! background, so the event comes before the store confirms). Pools log
//! the same way at target `cachify::pool`, with a field `pool`: `acquired`,
//! `full`, `lost` and `released`. Backend
//! failures stay WARN lines, at most one per kind every five seconds.
//!
//! **Metrics** (feature `metrics`). Each is labelled `kind` (`cached`,
//! `once`, `lock`, `http` or `pool`) and `template` (the key template as
//! written, the namespace of an HTTP cache, `cachify::lock` for every
//! [`crate::lock()`] value, or `cachify::pool` for every [`crate::pool()`]
//! value), never by the rendered key:
//!
//! | name | type | counts |
//! |---|---|---|
//! | `cachify_hits_total` | counter | calls answered from the cache |
//! | `cachify_misses_total` | counter | reads that found nothing usable |
//! | `cachify_errors_total` | counter | backend operations that failed |
//! | `cachify_bypasses_total` | counter | reads skipped, breaker open |
//! | `cachify_lock_acquisitions_total` | counter | locks granted (pool slots, kind `pool`) |
//! | `cachify_lock_contention_total` | counter | locks refused, held elsewhere (pools full, kind `pool`) |
//! | `cachify_stale_total` | counter | calls answered with a stale value, the function having failed (`stale_if_error`) |
//! | `cachify_call_seconds` | histogram | `#[cached]` call latency, with an `outcome` label as in the span |
//!
//! The counters are kept per client, per (kind, template), hung off each
//! function's static call site: an in-process hit bumps one striped
//! counter and looks nothing up.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use serde::Serialize;

/// How many cells a striped counter spreads over (a [`Tally`], and
/// `health::Counter`).
pub(crate) const CELLS: usize = 16;

thread_local! {
    /// This thread's cell in every striped counter, [`UNASSIGNED`] until its
    /// first count. Const-initialized, so a read is one thread-local load
    /// with no lazy-initialization check: it is on the in-process hit path.
    static CELL: Cell<usize> = const { Cell::new(UNASSIGNED) };
}

/// A thread's [`CELL`] before it has counted anything.
const UNASSIGNED: usize = usize::MAX;

/// The calling thread's cell, below [`CELLS`]: threads take cells in turn,
/// so threads counting at once rarely write the same cache line.
#[inline]
pub(crate) fn cell() -> usize {
    let cell = CELL.get();
    if cell < CELLS { cell } else { assign_cell() }
}

/// Gives the calling thread its cell, on its first count.
#[cold]
fn assign_cell() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let cell = NEXT.fetch_add(1, Ordering::Relaxed) % CELLS;
    CELL.set(cell);
    cell
}

/// Which macro or API a call came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum CallKind {
    /// A `#[cached]` function.
    Cached,
    /// A `#[once]` function.
    Once,
    /// A `#[lock]` function or a [`crate::lock()`] value.
    Lock,
    /// A lookup of the HTTP response cache (feature `axum`).
    Http,
    /// A `#[pooled]` function or a [`crate::pool()`] value.
    Pool,
}

impl CallKind {
    /// The kind as it appears in spans and metric labels: `cached`, `once`,
    /// `lock`, `http` or `pool`.
    pub const fn as_str(self) -> &'static str {
        match self {
            CallKind::Cached => "cached",
            CallKind::Once => "once",
            CallKind::Lock => "lock",
            CallKind::Http => "http",
            CallKind::Pool => "pool",
        }
    }
}

/// The template under which [`crate::lock()`] and [`crate::Cachify::lock`]
/// values are counted: lock names are often built per resource, and one
/// label per name would grow without bound.
pub const LOCK_API_TEMPLATE: &str = "cachify::lock";

/// The template under which [`crate::pool()`] and [`crate::Cachify::pool`]
/// values are counted, for the same reason as [`LOCK_API_TEMPLATE`].
pub const POOL_API_TEMPLATE: &str = "cachify::pool";

/// The counters of one (kind, template) on one client, from
/// [`crate::Cachify::stats_by_template`]. Functions that share a template
/// share one entry.
///
/// ```
/// #[cachify::cached("double-{n}", client = &client)]
/// fn double(client: &cachify::Cachify, n: u64) -> u64 {
///     n * 2
/// }
///
/// let client = cachify::Cachify::builder().memory().build_blocking()?;
/// double(&client, 1);
/// double(&client, 1);
/// let stats = client.stats_by_template();
/// assert_eq!(stats[0].kind, cachify::CallKind::Cached);
/// assert_eq!(stats[0].template, "double-{n}");
/// assert_eq!((stats[0].hits, stats[0].misses), (1, 1));
/// # Ok::<(), cachify::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct TemplateStats {
    /// Which macro or API the calls came from.
    pub kind: CallKind,
    /// The key template as written in the attribute, the HTTP cache's
    /// namespace, or [`LOCK_API_TEMPLATE`].
    pub template: String,
    /// The paths of the functions seen with this template (`module::fn`),
    /// sorted; empty for HTTP and [`crate::lock()`].
    pub functions: Vec<String>,
    /// Calls answered from the cache.
    pub hits: u64,
    /// Cache reads that found nothing usable.
    pub misses: u64,
    /// Backend operations that failed or timed out.
    pub errors: u64,
    /// Cache reads skipped because the breaker was open.
    pub bypassed: u64,
    /// Locks granted (pool slots, for kind [`CallKind::Pool`]).
    pub locks_acquired: u64,
    /// Lock requests refused because someone else held the lock (slot
    /// requests refused because the pool was full, for [`CallKind::Pool`]).
    pub lock_contention: u64,
    /// Calls answered with a stale value because the function failed
    /// (`stale_if_error`).
    pub stale: u64,
}

const HITS: usize = 0;
const MISSES: usize = 1;
const ERRORS: usize = 2;
const BYPASSED: usize = 3;
const LOCKS_ACQUIRED: usize = 4;
const LOCK_CONTENTION: usize = 5;
const STALE: usize = 6;
const FIELDS: usize = 7;

/// One thread cell of a [`Tally`]: every field on one cache line.
#[derive(Default)]
#[repr(align(128))]
struct TallyCell([AtomicU64; FIELDS]);

/// The counters of one (kind, template) on one client, striped per thread
/// like `health::Counter`, and the source of its metrics.
pub(crate) struct Tally {
    /// The metric labels.
    #[cfg(feature = "metrics")]
    kind: CallKind,
    /// Shared, so that a label costs a count increment, not an allocation.
    #[cfg(feature = "metrics")]
    template: metrics::SharedString,
    cells: [TallyCell; CELLS],
}

impl Tally {
    pub(crate) fn new(
        #[cfg_attr(not(feature = "metrics"), allow(unused))] kind: CallKind,
        #[cfg_attr(not(feature = "metrics"), allow(unused))] template: &str,
    ) -> Self {
        Self {
            #[cfg(feature = "metrics")]
            kind,
            #[cfg(feature = "metrics")]
            template: metrics::SharedString::from(Arc::<str>::from(template)),
            cells: Default::default(),
        }
    }

    #[inline]
    fn add(
        &self,
        field: usize,
        #[cfg_attr(not(feature = "metrics"), allow(unused))] name: &'static str,
    ) {
        self.cells[cell()].0[field].fetch_add(1, Ordering::Relaxed);
        #[cfg(feature = "metrics")]
        metrics::counter!(name, "kind" => self.kind.as_str(), "template" => self.template.clone())
            .increment(1);
    }

    #[inline]
    pub(crate) fn hit(&self) {
        self.add(HITS, "cachify_hits_total");
    }

    pub(crate) fn miss(&self) {
        self.add(MISSES, "cachify_misses_total");
    }

    pub(crate) fn error(&self) {
        self.add(ERRORS, "cachify_errors_total");
    }

    pub(crate) fn bypass(&self) {
        self.add(BYPASSED, "cachify_bypasses_total");
    }

    pub(crate) fn lock_acquired(&self) {
        self.add(LOCKS_ACQUIRED, "cachify_lock_acquisitions_total");
    }

    pub(crate) fn lock_contended(&self) {
        self.add(LOCK_CONTENTION, "cachify_lock_contention_total");
    }

    pub(crate) fn stale(&self) {
        self.add(STALE, "cachify_stale_total");
    }

    /// Records how long a call took, labelled with its outcome.
    #[inline]
    pub(crate) fn finished(
        &self,
        #[cfg_attr(not(feature = "metrics"), allow(unused))] outcome: CallOutcome,
        #[cfg_attr(not(feature = "metrics"), allow(unused))] clock: Clock,
    ) {
        #[cfg(feature = "metrics")]
        metrics::histogram!(
            "cachify_call_seconds",
            "kind" => self.kind.as_str(),
            "template" => self.template.clone(),
            "outcome" => outcome.as_str()
        )
        .record(clock.0.elapsed().as_secs_f64());
    }

    fn get(&self, field: usize) -> u64 {
        self.cells
            .iter()
            .map(|cell| cell.0[field].load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }
}

/// Every tally of one client, by kind and template, with the functions
/// seen under each: read by `stats_by_template`, and where a call site
/// gets its tally the first time a client calls it.
#[derive(Default)]
pub(crate) struct Tallies {
    by_template: BTreeMap<(CallKind, String), Tallied>,
}

/// One template's tally and the functions seen using it.
struct Tallied {
    tally: Arc<Tally>,
    functions: Vec<&'static str>,
}

impl Tallies {
    /// The tally of (`kind`, `template`), made if new; `function` is
    /// recorded as one of its functions.
    pub(crate) fn tally(
        &mut self,
        kind: CallKind,
        template: &str,
        function: Option<&'static str>,
    ) -> Arc<Tally> {
        let tallied = self
            .by_template
            .entry((kind, template.to_owned()))
            .or_insert_with(|| Tallied {
                tally: Arc::new(Tally::new(kind, template)),
                functions: Vec::new(),
            });
        if let Some(function) = function
            && !tallied.functions.contains(&function)
        {
            // Two functions of one kind and template share their keys: they
            // read each other's values, or miss forever when the types
            // differ. Said once, when the second one is first used.
            if let Some(first) = tallied.functions.first() {
                tracing::warn!(
                    kind = kind.as_str(),
                    template,
                    first,
                    second = function,
                    "cachify: two functions use the same key template, so they share their entries; give them different templates"
                );
            }
            tallied.functions.push(function);
        }
        Arc::clone(&tallied.tally)
    }

    pub(crate) fn snapshot(&self) -> Vec<TemplateStats> {
        self.by_template
            .iter()
            .map(|((kind, template), Tallied { tally, functions })| {
                let mut functions: Vec<String> =
                    functions.iter().map(|&path| path.to_owned()).collect();
                functions.sort();
                TemplateStats {
                    kind: *kind,
                    template: template.clone(),
                    functions,
                    hits: tally.get(HITS),
                    misses: tally.get(MISSES),
                    errors: tally.get(ERRORS),
                    bypassed: tally.get(BYPASSED),
                    locks_acquired: tally.get(LOCKS_ACQUIRED),
                    lock_contention: tally.get(LOCK_CONTENTION),
                    stale: tally.get(STALE),
                }
            })
            .collect()
    }
}

/// How a `#[cached]` call was answered: the span's `outcome` field and the
/// histogram's `outcome` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CallOutcome {
    /// From the cache.
    Hit,
    /// From the near cache's copy, without asking Redis.
    Near,
    /// The function ran, or a concurrent caller's run answered.
    Miss,
    /// The breaker was open: the function ran without the cache.
    Bypass,
    /// The function failed and a stale value answered (`stale_if_error`).
    Stale,
}

impl CallOutcome {
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            CallOutcome::Hit => "hit",
            CallOutcome::Near => "near",
            CallOutcome::Miss => "miss",
            CallOutcome::Bypass => "bypass",
            CallOutcome::Stale => "stale",
        }
    }
}

/// When a call started, for the latency histogram; nothing without the
/// `metrics` feature, so a call reads no clock then.
#[derive(Clone, Copy)]
pub(crate) struct Clock(#[cfg(feature = "metrics")] quanta::Instant);

impl Clock {
    #[inline]
    pub(crate) fn start() -> Self {
        Clock(
            #[cfg(feature = "metrics")]
            quanta::Instant::now(),
        )
    }
}

/// Whether `#[cached]` call spans are wanted. A cached interest check: one
/// atomic load when no subscriber wants them.
#[inline]
pub(crate) fn spans_enabled() -> bool {
    tracing::span_enabled!(target: "cachify::call", tracing::Level::TRACE)
}

/// The span of one `#[cached]` call; disabled (and free) when no subscriber
/// wants it.
#[inline]
pub(crate) fn call_span(
    kind: CallKind,
    template: &str,
    function: &str,
    key: &str,
) -> tracing::Span {
    tracing::trace_span!(
        target: "cachify::call",
        "cachify.call",
        kind = kind.as_str(),
        template,
        function,
        key,
        outcome = tracing::field::Empty,
    )
}

/// Records how a call was answered on its span.
#[inline]
pub(crate) fn record_outcome(span: &tracing::Span, outcome: CallOutcome) {
    if !span.is_disabled() {
        span.record("outcome", outcome.as_str());
    }
}
