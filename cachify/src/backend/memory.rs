//! The in-process backend: two moka caches, one for values and one for locks.

use std::any::Any;
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::ops::compute::{CompResult, Op};
use moka::sync::Cache;

use super::clamp_ttl;
use crate::cache::CacheValue;

/// A value stored as it is: no encoding, so a memory hit costs a lookup and
/// a clone. A value of another type under the same key is a miss.
#[derive(Clone)]
struct Slot {
    value: Arc<dyn Any + Send + Sync>,
    ttl: Option<Duration>,
}

#[derive(Clone)]
struct Lease {
    token: Arc<str>,
    ttl: Duration,
}

/// Gives each entry its own time to live, renewed on every write.
struct PerEntryTtl;

impl Expiry<String, Slot> for PerEntryTtl {
    fn expire_after_create(&self, _: &String, slot: &Slot, _: Instant) -> Option<Duration> {
        slot.ttl
    }

    fn expire_after_update(
        &self,
        _: &String,
        slot: &Slot,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        slot.ttl
    }
}

impl Expiry<String, Lease> for PerEntryTtl {
    fn expire_after_create(&self, _: &String, lease: &Lease, _: Instant) -> Option<Duration> {
        Some(lease.ttl)
    }

    fn expire_after_update(
        &self,
        _: &String,
        lease: &Lease,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(lease.ttl)
    }
}

#[derive(Clone)]
pub(crate) struct MemoryBackend {
    values: Cache<String, Slot>,
    /// Unbounded on purpose: evicting a held lock under memory pressure
    /// would let a second holder in. Every lease expires by itself.
    locks: Cache<String, Lease>,
    /// The last fencing token of each lock name. Never evicted: a counter
    /// that restarted would hand out tokens a downstream store has seen.
    fences: Cache<String, u64>,
}

impl MemoryBackend {
    pub(crate) fn new(max_entries: u64) -> Self {
        Self {
            values: Cache::builder()
                .max_capacity(max_entries)
                .expire_after(PerEntryTtl)
                .build(),
            locks: Cache::builder().expire_after(PerEntryTtl).build(),
            fences: Cache::builder().build(),
        }
    }

    pub(crate) fn get<T: CacheValue>(&self, key: &str) -> Option<T> {
        let slot = self.values.get(key)?;
        slot.value.downcast_ref::<T>().cloned()
    }

    pub(crate) fn set<T: CacheValue>(&self, key: &str, value: T, ttl: Option<Duration>) {
        let slot = Slot {
            value: Arc::new(value),
            ttl: ttl.map(clamp_ttl),
        };
        self.values.insert(key.to_owned(), slot);
    }

    pub(crate) fn delete(&self, key: &str) {
        self.values.invalidate(key);
        // Through the per-key compute, like every other lock operation:
        // `invalidate` is not ordered with a renewal that already read the
        // lease, and that renewal would then put the deleted lock back.
        self.locks
            .entry(key.to_owned())
            .and_compute_with(|_| Op::Remove);
    }

    /// Deletes every value whose key starts with `prefix`.
    #[cfg(feature = "axum")]
    pub(crate) fn delete_prefix(&self, prefix: &str) -> u64 {
        let mut deleted = 0;
        for (key, _) in self.values.iter() {
            if key.starts_with(prefix) {
                self.values.invalidate(key.as_str());
                deleted += 1;
            }
        }
        deleted
    }

    /// The token of whoever holds the lock.
    pub(crate) fn lock_holder(&self, key: &str) -> Option<String> {
        self.locks.get(key).map(|lease| lease.token.to_string())
    }

    pub(crate) fn is_locked(&self, key: &str) -> bool {
        self.locks.contains_key(key)
    }

    /// Takes the lock if it is free; returns its fencing token.
    pub(crate) fn try_lock(
        &self,
        key: &str,
        fence_key: &str,
        token: &str,
        lease: Duration,
    ) -> Option<u64> {
        let lease = Lease {
            token: token.into(),
            ttl: clamp_ttl(lease),
        };
        let mut fence = None;
        // The token is drawn inside the lock's compute, which moka runs
        // alone for this key: grant and token are one step.
        self.locks
            .entry(key.to_owned())
            .and_compute_with(|held| match held {
                Some(_) => Op::Nop,
                None => {
                    let next = self
                        .fences
                        .entry(fence_key.to_owned())
                        .and_upsert_with(|last| last.map_or(1, |last| last.into_value() + 1));
                    fence = Some(next.into_value());
                    Op::Put(lease)
                }
            });
        fence
    }

    pub(crate) fn unlock(&self, key: &str, token: &str) -> bool {
        let result = self
            .locks
            .entry(key.to_owned())
            .and_compute_with(|held| match held {
                Some(entry) if &*entry.value().token == token => Op::Remove,
                _ => Op::Nop,
            });
        matches!(result, CompResult::Removed(_))
    }

    pub(crate) fn extend(&self, key: &str, token: &str, lease: Duration) -> bool {
        let result = self
            .locks
            .entry(key.to_owned())
            .and_compute_with(|held| match held {
                Some(entry) if &*entry.value().token == token => Op::Put(Lease {
                    token: entry.into_value().token,
                    ttl: clamp_ttl(lease),
                }),
                _ => Op::Nop,
            });
        matches!(result, CompResult::ReplacedWith(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_typed_and_expire() {
        let memory = MemoryBackend::new(100);
        memory.set("k", 5_u32, Some(Duration::from_millis(50)));
        assert_eq!(memory.get::<u32>("k"), Some(5));
        assert_eq!(memory.get::<String>("k"), None, "another type is a miss");
        std::thread::sleep(Duration::from_millis(120));
        assert_eq!(memory.get::<u32>("k"), None);
    }

    #[test]
    fn locks_are_owned_and_expire() {
        let memory = MemoryBackend::new(100);
        assert_eq!(
            memory.try_lock("l", "f", "a", Duration::from_millis(400)),
            Some(1)
        );
        assert_eq!(memory.try_lock("l", "f", "b", Duration::from_secs(1)), None);
        assert!(!memory.unlock("l", "b"), "only the owner releases");
        assert!(
            !memory.extend("l", "b", Duration::from_secs(1)),
            "only the owner extends"
        );
        assert!(memory.is_locked("l"));
        std::thread::sleep(Duration::from_millis(600));
        assert!(!memory.is_locked("l"), "an expired lease is free");
        assert!(
            !memory.extend("l", "a", Duration::from_secs(1)),
            "an expired lease is gone"
        );
        assert_eq!(
            memory.try_lock("l", "f", "b", Duration::from_secs(1)),
            Some(2),
            "fencing tokens increase"
        );
        assert!(memory.unlock("l", "b"));
        assert!(!memory.is_locked("l"));
    }

    #[test]
    fn extend_renews_the_lease() {
        let memory = MemoryBackend::new(100);
        assert!(
            memory
                .try_lock("l", "f", "a", Duration::from_millis(400))
                .is_some()
        );
        for _ in 0..4 {
            std::thread::sleep(Duration::from_millis(200));
            assert!(memory.extend("l", "a", Duration::from_millis(400)));
        }
        assert!(memory.is_locked("l"));
    }
}
