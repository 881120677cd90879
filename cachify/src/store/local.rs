//! Values kept in this process, as they are (no encoding): the memory
//! store's entries, and the near cache's copies of Redis entries.
//!
//! quick_cache rather than moka: a hit is a read lock on one shard and a
//! hash lookup, about half of moka's cost measured here (see
//! BENCHMARKS.md), and it stays bounded by entry count. Expiry is checked
//! when an entry is read, against quanta's clock, which reads the CPU's
//! time-stamp counter at about a third of the cost of `Instant::now`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use quanta::Instant;
use quick_cache::sync::Cache;

use super::clamp_ttl;
use crate::value::AnyValue;

/// One entry: the value, and when it stops being served.
#[derive(Clone)]
struct Slot {
    value: AnyValue,
    expires: Option<Instant>,
}

impl Slot {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|expires| now < expires)
    }
}

/// Bounded in-process values, each with its own time to live.
pub(crate) struct LocalValues {
    entries: Cache<Box<str>, Slot>,
}

/// The instant a value stored now for `ttl` expires.
pub(crate) fn expiry_after(ttl: Option<Duration>) -> Option<Instant> {
    ttl.map(|ttl| Instant::now() + clamp_ttl(ttl))
}

impl LocalValues {
    /// Holds at most `max_entries` values; the least useful go first.
    pub(crate) fn new(max_entries: u64) -> Self {
        let capacity = usize::try_from(max_entries.max(1)).unwrap_or(usize::MAX);
        Self {
            entries: Cache::new(capacity),
        }
    }

    /// The live value under `key`. An expired one is removed.
    pub(crate) fn get(&self, key: &str) -> Option<AnyValue> {
        let slot = self.entries.get(key)?;
        if slot.live(Instant::now()) {
            return Some(slot.value);
        }
        self.remove_if_same(key, &slot.value);
        None
    }

    /// Stores `value` under `key` until `expires` (`None`: until evicted or
    /// removed).
    pub(crate) fn insert(&self, key: &str, value: AnyValue, expires: Option<Instant>) {
        self.entries.insert(key.into(), Slot { value, expires });
    }

    /// Removes the entry under `key`; whether there was one.
    pub(crate) fn remove(&self, key: &str) -> bool {
        self.entries.remove(key).is_some()
    }

    /// Removes the entry under `key` only if it still holds `value` (the
    /// same allocation), so a newer value stored meanwhile stays.
    pub(crate) fn remove_if_same(&self, key: &str, value: &AnyValue) -> bool {
        self.entries
            .remove_if(key, |slot| slot.value.same(value))
            .is_some()
    }

    /// Removes every entry whose key starts with `prefix`; how many.
    pub(crate) fn remove_prefix(&self, prefix: &str) -> u64 {
        let removed = AtomicU64::new(0);
        self.entries.retain(|key, _| {
            let keep = !key.starts_with(prefix);
            if !keep {
                removed.fetch_add(1, Ordering::Relaxed);
            }
            keep
        });
        removed.into_inner()
    }

    /// Removes everything.
    pub(crate) fn clear(&self) {
        self.entries.clear();
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
}
