//! Values kept in this process, as they are (no encoding): the memory
//! store's entries, and the near cache's copies of Redis entries.
//!
//! quick_cache rather than moka: a hit is a read lock on one shard and a
//! hash lookup, about half of moka's cost measured here (see
//! BENCHMARKS.md), and it stays bounded by entry count. Expiry is checked
//! when an entry is read, against quanta's clock, which reads the CPU's
//! time-stamp counter at about a third of the cost of `Instant::now`.
//!
//! Every stored value knows whether it is still the one under its key: it
//! is retired when it is replaced, removed or evicted. The typed fast path
//! ([`crate::site`]) indexes stored values by a function's arguments and
//! serves them only while they are live, so every way a key changes here
//! reaches it without a reverse index.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use quanta::Instant;
use quick_cache::sync::{Cache, EntryAction, EntryResult};
use quick_cache::{DefaultHashBuilder, Lifecycle, UnitWeighter};

use super::clamp_ttl;
use crate::keyspace::KeyMatch;
use crate::value::AnyValue;

/// One stored value, and whether it may still be served.
pub(crate) struct Stored {
    value: AnyValue,
    expires: Option<Instant>,
    /// Cleared once the value is no longer the one under its key.
    current: AtomicBool,
}

impl Stored {
    pub(crate) fn value(&self) -> &AnyValue {
        &self.value
    }

    /// Still under its key, and not expired at `now`.
    #[inline]
    pub(crate) fn live(&self, now: Instant) -> bool {
        self.current.load(Ordering::Acquire) && self.expires.is_none_or(|expires| now < expires)
    }

    /// Live now: the clock is read only when the value has an expiry.
    #[inline]
    pub(crate) fn live_now(&self) -> bool {
        self.current.load(Ordering::Acquire)
            && self.expires.is_none_or(|expires| Instant::now() < expires)
    }

    fn retire(&self) {
        self.current.store(false, Ordering::Release);
    }
}

/// Retires values quick_cache evicts.
#[derive(Clone, Default)]
struct RetireEvicted;

impl Lifecycle<String, Arc<Stored>> for RetireEvicted {
    type RequestState = ();

    fn on_evict(&self, _: &mut (), _: String, stored: Arc<Stored>) {
        stored.retire();
    }
}

/// Bounded in-process values, each with its own time to live.
pub(crate) struct LocalValues {
    entries: Cache<String, Arc<Stored>, UnitWeighter, DefaultHashBuilder, RetireEvicted>,
}

/// The instant a value stored now for `ttl` expires.
pub(crate) fn expiry_after(ttl: Option<Duration>) -> Option<Instant> {
    ttl.map(|ttl| Instant::now() + clamp_ttl(ttl))
}

impl LocalValues {
    /// Holds at most `max_entries` values; the least useful go first.
    pub(crate) fn new(max_entries: u64) -> Self {
        let capacity = max_entries.max(1);
        Self {
            entries: Cache::with(
                usize::try_from(capacity).unwrap_or(usize::MAX),
                capacity,
                UnitWeighter,
                DefaultHashBuilder::default(),
                RetireEvicted,
            ),
        }
    }

    /// How many values it holds at most.
    pub(crate) fn capacity(&self) -> u64 {
        self.entries.capacity()
    }

    /// The live value under `key`.
    pub(crate) fn get(&self, key: &str) -> Option<AnyValue> {
        self.entry(key).map(|stored| stored.value.clone())
    }

    /// The live entry under `key`. An expired one is removed.
    pub(crate) fn entry(&self, key: &str) -> Option<Arc<Stored>> {
        let stored = self.entries.get(key)?;
        if stored.live_now() {
            return Some(stored);
        }
        self.remove_if_same(key, &stored.value);
        None
    }

    /// Stores `value` under `key` until `expires` (`None`: until evicted or
    /// removed), retiring the value it replaces.
    pub(crate) fn insert(&self, key: &str, value: AnyValue, expires: Option<Instant>) {
        let mut fresh = Some(Arc::new(Stored {
            value,
            expires,
            current: AtomicBool::new(true),
        }));
        // Replaced in place under the shard's lock, so the value replaced is
        // always the one retired, whatever races it.
        let outcome = self.entries.entry(key, None, |_, held| {
            held.retire();
            if let Some(fresh) = fresh.take() {
                *held = fresh;
            }
            EntryAction::Retain(())
        });
        match outcome {
            EntryResult::Retained(()) => {}
            EntryResult::Vacant(guard) | EntryResult::Replaced(guard, _) => {
                if let Some(fresh) = fresh {
                    let _ = guard.insert(fresh);
                }
            }
            EntryResult::Removed(_, held) => held.retire(),
            // Only with a timeout, and none was given.
            EntryResult::Timeout => {}
        }
    }

    /// Removes the entry under `key`; whether there was one.
    pub(crate) fn remove(&self, key: &str) -> bool {
        match self.entries.remove(key) {
            Some((_, held)) => {
                held.retire();
                true
            }
            None => false,
        }
    }

    /// Removes the entry under `key` only if it still holds `value` (the
    /// same allocation), so a newer value stored meanwhile stays.
    pub(crate) fn remove_if_same(&self, key: &str, value: &AnyValue) -> bool {
        match self.entries.remove_if(key, |held| held.value.same(value)) {
            Some((_, held)) => {
                held.retire();
                true
            }
            None => false,
        }
    }

    /// Removes every entry whose key starts with `prefix`; how many.
    pub(crate) fn remove_prefix(&self, prefix: &str) -> u64 {
        let removed = AtomicU64::new(0);
        self.entries.retain(|key, held| {
            let keep = !key.starts_with(prefix);
            if !keep {
                held.retire();
                removed.fetch_add(1, Ordering::Relaxed);
            }
            keep
        });
        removed.into_inner()
    }

    /// Removes every entry of `matching`; how many.
    pub(crate) fn remove_matching(&self, matching: &KeyMatch) -> u64 {
        let removed = AtomicU64::new(0);
        self.entries.retain(|key, held| {
            let keep = !matching.matches(key);
            if !keep {
                held.retire();
                removed.fetch_add(1, Ordering::Relaxed);
            }
            keep
        });
        removed.into_inner()
    }

    /// Removes everything.
    pub(crate) fn clear(&self) {
        self.entries.retain(|_, held| {
            held.retire();
            false
        });
    }

    /// How many entries are held, expired ones included until they are read.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::value::take;

    fn value(n: u32) -> AnyValue {
        AnyValue::new(Arc::new(n))
    }

    #[test]
    fn entries_expire_and_are_bounded() {
        let local = LocalValues::new(100);
        local.insert("a", value(1), expiry_after(Some(Duration::from_millis(30))));
        local.insert("b", value(2), None);
        assert_eq!(local.get("a").and_then(take::<u32>), Some(1));
        std::thread::sleep(Duration::from_millis(60));
        assert!(local.get("a").is_none(), "expired");
        assert_eq!(local.get("b").and_then(take::<u32>), Some(2));
        for n in 0..1_000 {
            local.insert(&format!("k{n}"), value(n), None);
        }
        assert!(local.len() <= 100, "bounded: {}", local.len());
    }

    #[test]
    fn removal_by_key_prefix_and_identity() {
        let local = LocalValues::new(100);
        let first = value(1);
        local.insert("p:1", first.clone(), None);
        local.insert("p:2", value(2), None);
        local.insert("q:1", value(3), None);
        assert!(
            !local.remove_if_same("p:1", &value(1)),
            "another allocation stays"
        );
        assert!(local.remove_if_same("p:1", &first));
        assert_eq!(local.remove_prefix("p:"), 1);
        assert!(local.remove("q:1"));
        assert!(!local.remove("q:1"));
    }

    #[test]
    fn replaced_removed_and_evicted_values_are_retired() {
        let local = LocalValues::new(10);
        local.insert("k", value(1), None);
        let first = local.entry("k").unwrap();
        let now = Instant::now();
        assert!(first.live(now));
        local.insert("k", value(2), None);
        assert!(!first.live(now), "replaced");
        let second = local.entry("k").unwrap();
        local.remove("k");
        assert!(!second.live(now), "removed");
        local.insert("k", value(3), None);
        let third = local.entry("k").unwrap();
        local.clear();
        assert!(!third.live(now), "cleared");
        local.insert("k", value(4), None);
        let fourth = local.entry("k").unwrap();
        for n in 0..1_000 {
            local.insert(&format!("other{n}"), value(n), None);
        }
        if local.entry("k").is_none() {
            assert!(!fourth.live(now), "evicted");
        }
        let evicted = (0..1_000)
            .filter(|n| local.entry(&format!("other{n}")).is_none())
            .count();
        assert!(evicted > 0, "a bounded store evicts");
    }
}
