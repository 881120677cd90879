//! How the backend is doing: counters users can read, the circuit breaker
//! of the cache path, and rate-limited failure logs.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::observe::{CELLS, CallKind, Tallies, Tally, TemplateStats, cell};

/// Counters of one client, from [`crate::Cachify::stats`].
///
/// ```
/// let client = cachify::Cachify::builder().memory().build_blocking()?;
/// let stats = client.stats();
/// assert_eq!(stats.hits, 0);
/// assert_eq!(stats.breaker, cachify::BreakerState::Closed);
/// # Ok::<(), cachify::Error>(())
/// ```
///
/// It serializes with serde, the breaker as `"closed"`, `"open"` or
/// `"half_open"`; [`crate::Cachify::stats_by_template`] splits the counts
/// by function.
///
/// ```
/// # let client = cachify::Cachify::builder().memory().build_blocking()?;
/// # let stats = client.stats();
/// let json = serde_json::to_value(stats).unwrap();
/// assert_eq!(json["hits"], 0);
/// assert_eq!(json["breaker"], "closed");
/// # Ok::<(), cachify::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Stats {
    /// Cached calls answered from the cache.
    pub hits: u64,
    /// Cache reads that found nothing usable (nothing stored, or a value
    /// that no longer decodes), including the looks a caller takes while
    /// another process fills the key (`lock = true`).
    pub misses: u64,
    /// Backend operations that failed or timed out (cache and locks).
    pub errors: u64,
    /// Cached calls that skipped the backend because the breaker was open.
    pub bypassed: u64,
    /// Cache writes skipped because the value was over the size limit.
    pub oversized: u64,
    /// Locks granted, and pool slots granted.
    pub locks_acquired: u64,
    /// Lock requests refused because someone else held the lock, and slot
    /// requests refused because the pool was full.
    pub lock_contention: u64,
    /// Reads the near cache answered without asking Redis
    /// ([`crate::CachifyBuilder::near_cache`]); they count as hits too.
    pub near_hits: u64,
    /// Reads the near cache passed on to Redis: nothing held, or the near
    /// cache bypassed while its invalidation link was down.
    pub near_misses: u64,
    /// Near copies dropped because Redis said their key changed (one per
    /// key, or one per flush of the whole near cache).
    pub near_invalidations: u64,
    /// State of the cache path's circuit breaker.
    pub breaker: BreakerState,
    /// Answers given with a value past its freshness: `#[cached]` calls
    /// whose function failed (`stale_if_error`), and HTTP replies served
    /// stale (`stale_while_revalidate`, `stale_if_error`).
    pub stale: u64,
}

/// The circuit breaker of the cache path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// The backend is used.
    Closed,
    /// The backend failed repeatedly: cached functions run without it until
    /// the cool-down ends.
    Open,
    /// One call is probing the backend; the others still skip it.
    HalfOpen,
}

/// One cell on its own cache line, so threads counting in different cells
/// never write the same line.
#[derive(Default)]
#[repr(align(128))]
struct Cell(AtomicU64);

/// A counter that threads bump without contending: each thread adds to its
/// own cell (threads take cells in turn), and a read sums the cells.
#[derive(Default)]
pub(crate) struct Counter {
    cells: [Cell; CELLS],
}

impl Counter {
    #[inline]
    pub(crate) fn add(&self) {
        self.cells[cell()].0.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> u64 {
        self.cells
            .iter()
            .map(|cell| cell.0.load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }
}

/// Counts with no template behind them (near-cache counts, oversized
/// values, fill locks); `Health::stats` adds the templates' counts.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) hits: Counter,
    pub(crate) misses: Counter,
    pub(crate) errors: Counter,
    pub(crate) bypassed: Counter,
    pub(crate) oversized: Counter,
    pub(crate) locks_acquired: Counter,
    pub(crate) lock_contention: Counter,
    pub(crate) near_hits: Counter,
    pub(crate) near_misses: Counter,
    pub(crate) near_invalidations: Counter,
    pub(crate) stale: Counter,
}

impl Counters {
    pub(crate) fn snapshot(&self, breaker: BreakerState) -> Stats {
        Stats {
            hits: self.hits.get(),
            misses: self.misses.get(),
            errors: self.errors.get(),
            bypassed: self.bypassed.get(),
            oversized: self.oversized.get(),
            locks_acquired: self.locks_acquired.get(),
            lock_contention: self.lock_contention.get(),
            near_hits: self.near_hits.get(),
            near_misses: self.near_misses.get(),
            near_invalidations: self.near_invalidations.get(),
            breaker,
            // HTTP replies; `Health::stats` adds the `#[cached]` ones per template.
            stale: self.stale.get(),
        }
    }
}

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

/// Opens after `threshold` consecutive failures; after `cool_down` lets one
/// call probe; closes on its success, reopens on its failure. A probe that
/// never reports back (its future was dropped) is replaced after another
/// cool-down, so the breaker cannot stick half-open.
pub(crate) struct Breaker {
    threshold: u64,
    cool_down: Duration,
    epoch: Instant,
    state: AtomicU8,
    consecutive_failures: AtomicU64,
    /// Milliseconds since `epoch` when the state last became open or half-open.
    since: AtomicU64,
}

impl Breaker {
    pub(crate) fn new(threshold: u32, cool_down: Duration) -> Self {
        Self {
            threshold: u64::from(threshold.max(1)),
            cool_down,
            epoch: Instant::now(),
            state: AtomicU8::new(CLOSED),
            consecutive_failures: AtomicU64::new(0),
            since: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub(crate) fn state(&self) -> BreakerState {
        match self.state.load(Ordering::Acquire) {
            CLOSED => BreakerState::Closed,
            OPEN => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }

    /// Whether this call may use the backend.
    #[inline]
    pub(crate) fn allows(&self) -> bool {
        let state = self.state.load(Ordering::Acquire);
        if state == CLOSED {
            return true;
        }
        let since = self.since.load(Ordering::Acquire);
        let cool_down = u64::try_from(self.cool_down.as_millis()).unwrap_or(u64::MAX);
        if self.now().saturating_sub(since) < cool_down {
            return false;
        }
        // Cool-down over: exactly one caller wins the right to probe.
        let won = self
            .state
            .compare_exchange(state, HALF_OPEN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if won {
            self.since.store(self.now(), Ordering::Release);
        }
        won
    }

    pub(crate) fn record_success(&self) {
        // Called on every hit: only write when there is something to reset,
        // so concurrent hits don't fight over this cache line.
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
        if self.state.load(Ordering::Acquire) != CLOSED {
            self.state.store(CLOSED, Ordering::Release);
            tracing::info!("cachify: backend answers again; circuit breaker closed");
        }
    }

    pub(crate) fn record_failure(&self) {
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        let state = self.state.load(Ordering::Acquire);
        if state == HALF_OPEN || (state == CLOSED && failures >= self.threshold) {
            self.since.store(self.now(), Ordering::Release);
            if self.state.swap(OPEN, Ordering::AcqRel) == CLOSED {
                tracing::warn!(
                    failures,
                    cool_down = ?self.cool_down,
                    "cachify: backend keeps failing; circuit breaker open, cached functions run without it"
                );
            }
        }
    }
}

/// Lets one log line through per period and counts the ones it held back,
/// so an outage does not flood the logs.
pub(crate) struct LogLimit {
    period_ms: u64,
    epoch: Instant,
    /// Milliseconds since `epoch` of the last line let through, plus one (0: never).
    last: AtomicU64,
    suppressed: AtomicU64,
}

impl LogLimit {
    pub(crate) fn new(period: Duration) -> Self {
        Self {
            period_ms: u64::try_from(period.as_millis()).unwrap_or(u64::MAX),
            epoch: Instant::now(),
            last: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when a line may be logged now, `n` being how many were held
    /// back since the last one; `None` when this one should be held back.
    pub(crate) fn admit(&self) -> Option<u64> {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX) + 1;
        let last = self.last.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < self.period_ms {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if self
            .last
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.suppressed.swap(0, Ordering::Relaxed))
    }
}

/// Everything a client tracks about its backend and its calls.
pub(crate) struct Health {
    /// Tells this client apart at a generated function's call site.
    pub(crate) client: u64,
    pub(crate) counters: Counters,
    /// Counters per (kind, template); reached through call sites on the
    /// hot path, so this lock is taken once per site and client.
    tallies: Mutex<Tallies>,
    pub(crate) breaker: Breaker,
    /// Cache-path failures (fail open).
    pub(crate) cache_log: LogLimit,
    /// Lock failures (fail closed).
    pub(crate) lock_log: LogLimit,
    /// Stale values and responses served, and failed background refreshes.
    pub(crate) stale_log: LogLimit,
}

/// How often a failure of one kind may be logged.
const LOG_PERIOD: Duration = Duration::from_secs(5);

impl Health {
    pub(crate) fn new(threshold: u32, cool_down: Duration) -> Self {
        static NEXT_CLIENT: AtomicU64 = AtomicU64::new(1);
        Self {
            client: NEXT_CLIENT.fetch_add(1, Ordering::Relaxed),
            counters: Counters::default(),
            tallies: Mutex::default(),
            breaker: Breaker::new(threshold, cool_down),
            cache_log: LogLimit::new(LOG_PERIOD),
            lock_log: LogLimit::new(LOG_PERIOD),
            stale_log: LogLimit::new(LOG_PERIOD),
        }
    }
}

impl Health {
    /// The counters of (`kind`, `template`), with `function` recorded as
    /// one of the functions using it.
    pub(crate) fn tally(
        &self,
        kind: CallKind,
        template: &str,
        function: Option<&'static str>,
    ) -> Arc<Tally> {
        self.tallies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .tally(kind, template, function)
    }

    /// The client's counters: its own, plus every template's (a call
    /// counts in one place only, so a hit bumps one counter).
    pub(crate) fn stats(&self) -> Stats {
        let mut stats = self.counters.snapshot(self.breaker.state());
        for row in self.stats_by_template() {
            stats.hits = stats.hits.wrapping_add(row.hits);
            stats.misses = stats.misses.wrapping_add(row.misses);
            stats.errors = stats.errors.wrapping_add(row.errors);
            stats.bypassed = stats.bypassed.wrapping_add(row.bypassed);
            stats.locks_acquired = stats.locks_acquired.wrapping_add(row.locks_acquired);
            stats.lock_contention = stats.lock_contention.wrapping_add(row.lock_contention);
            stats.stale = stats.stale.wrapping_add(row.stale);
        }
        stats
    }

    pub(crate) fn stats_by_template(&self) -> Vec<TemplateStats> {
        self.tallies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .snapshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_opens_probes_and_closes() {
        let breaker = Breaker::new(3, Duration::from_millis(100));
        for _ in 0..2 {
            breaker.record_failure();
            assert!(breaker.allows(), "below the threshold");
        }
        breaker.record_failure();
        assert_eq!(breaker.state(), BreakerState::Open);
        assert!(!breaker.allows(), "open during the cool-down");
        std::thread::sleep(Duration::from_millis(150));
        assert!(breaker.allows(), "one probe after the cool-down");
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        assert!(!breaker.allows(), "only one probe");
        breaker.record_failure();
        assert_eq!(
            breaker.state(),
            BreakerState::Open,
            "a failed probe reopens"
        );
        std::thread::sleep(Duration::from_millis(150));
        assert!(breaker.allows());
        breaker.record_success();
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert!(breaker.allows());
    }

    #[test]
    fn a_lost_probe_is_replaced_after_another_cool_down() {
        let breaker = Breaker::new(1, Duration::from_millis(100));
        breaker.record_failure();
        std::thread::sleep(Duration::from_millis(150));
        assert!(breaker.allows(), "the probe that never reports back");
        assert!(!breaker.allows());
        std::thread::sleep(Duration::from_millis(150));
        assert!(breaker.allows(), "a new probe");
    }

    #[test]
    fn successes_reset_the_failure_count() {
        let breaker = Breaker::new(2, Duration::from_secs(60));
        breaker.record_failure();
        breaker.record_success();
        breaker.record_failure();
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[test]
    fn log_limit_lets_one_line_per_period() {
        let limit = LogLimit::new(Duration::from_millis(100));
        assert_eq!(limit.admit(), Some(0));
        assert_eq!(limit.admit(), None);
        assert_eq!(limit.admit(), None);
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(limit.admit(), Some(2), "reports what it held back");
    }
}
