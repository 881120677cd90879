//! The in-process store: values kept as they are (no encoding), locks,
//! fencing tokens and pools for callers in this process, their waiters'
//! lines and wake-ups, and cache tags.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use moka::Expiry;
use moka::ops::compute::{CompResult, Op};
use moka::sync::Cache;

use super::local::{LocalValues, expiry_after};
use super::wake::Hub;
use super::{
    Fence, Grant, Local, LockStore, PoolStore, StoreFuture, TagStore, ValueStore, Watch, clamp_ttl,
    next_fence,
};
use crate::keyspace::{KeyMatch, Line, TagKeys};
use crate::value::{AnyValue, ValueType};

#[derive(Clone)]
struct Lease {
    token: Arc<str>,
    ttl: Duration,
    /// When the lease runs out, for the waiters' [`Grant::Refused`].
    ends: Instant,
}

/// Gives each lease its own time to live, renewed on every renewal.
struct PerEntryTtl;

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

/// The live slots of one pool: each slot's token and when its lease ends.
#[derive(Clone, Default)]
struct Slots(Vec<(Arc<str>, Instant)>);

impl Slots {
    /// The slots whose lease has not ended at `now`.
    fn live(&self, now: Instant) -> Self {
        Slots(
            self.0
                .iter()
                .filter(|(_, ends)| *ends > now)
                .cloned()
                .collect(),
        )
    }

    /// Keeps these slots, or drops the pool when none is left.
    fn put(self) -> Op<Slots> {
        if self.0.is_empty() {
            Op::Remove
        } else {
            Op::Put(self)
        }
    }
}

/// Keeps a pool exactly as long as its longest lease.
struct LongestLease;

impl LongestLease {
    fn left(slots: &Slots, now: Instant) -> Option<Duration> {
        let ends = slots.0.iter().map(|(_, ends)| *ends).max()?;
        Some(ends.saturating_duration_since(now))
    }
}

impl Expiry<String, Slots> for LongestLease {
    fn expire_after_create(&self, _: &String, slots: &Slots, now: Instant) -> Option<Duration> {
        Self::left(slots, now)
    }

    fn expire_after_update(
        &self,
        _: &String,
        slots: &Slots,
        now: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Self::left(slots, now)
    }
}

/// The in-process store. Values are kept as they are (no encoding), so a
/// hit costs a lookup and a clone; a value of another type under the same
/// key is a miss. Locks live in a moka cache; fencing tokens come from one
/// counter for the whole store, so no lock name leaves anything behind
/// once its lease is over.
pub(crate) struct MemoryStore {
    values: LocalValues,
    /// Unbounded on purpose: evicting a held lock under memory pressure
    /// would let a second holder in. Every lease expires by itself.
    locks: Cache<String, Lease>,
    /// The last fencing token handed out, for any lock name: tokens that
    /// increase across the whole store increase per name too.
    last_fence: AtomicU64,
    /// Cache tags, by their version key. One lock for all: a tag's index
    /// and version change together, as in one Redis script.
    tags: Mutex<TagBook>,
    /// Unbounded for the same reason as `locks`; a pool goes when its
    /// longest lease ends.
    pools: Cache<String, Slots>,
    /// The waiters of each lock or pool that has any, in arrival order.
    lines: Mutex<HashMap<String, VecDeque<Place>>>,
    /// Wakes a lock's or pool's waiters when it is released.
    hub: Arc<Hub>,
}

/// Every tag in use, and when to sweep out the ones that are done.
#[derive(Default)]
struct TagBook {
    tags: HashMap<String, Tag>,
    /// Entries added since the last sweep.
    since_sweep: usize,
}

/// Sweep every so many tagged writes, so tags of expired entries go.
const TAG_SWEEP_EVERY: usize = 1024;

/// One tag: its version, until when that version must be kept, and its
/// index members (`{version}|{entry key}`) with their entry's expiry.
#[derive(Default)]
struct Tag {
    version: u64,
    keep_until: Option<Instant>,
    entries: HashMap<String, Option<Instant>>,
}

impl Tag {
    /// Nothing left that a later read would miss: no live entry, and no
    /// version that must still be seen.
    fn done(&mut self, now: Instant) -> bool {
        self.entries
            .retain(|_, expires| expires.is_none_or(|expires| now < expires));
        self.entries.is_empty() && self.keep_until.is_none_or(|until| until <= now)
    }
}

/// A waiter's place in a line, kept until `until` unless it tries again.
struct Place {
    token: Arc<str>,
    until: Instant,
}

/// Microseconds since the Unix epoch, the floor of new fencing tokens.
fn clock_micros() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_micros()).unwrap_or(u64::MAX)
}

impl MemoryStore {
    pub(crate) fn new(max_entries: u64) -> Self {
        Self {
            values: LocalValues::new(max_entries),
            locks: Cache::builder().expire_after(PerEntryTtl).build(),
            last_fence: AtomicU64::new(0),
            tags: Mutex::default(),
            pools: Cache::builder().expire_after(LongestLease).build(),
            lines: Mutex::default(),
            hub: Arc::default(),
        }
    }

    fn tags(&self) -> std::sync::MutexGuard<'_, TagBook> {
        self.tags.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the line of `key` lets `token` take one of `free` free
    /// places (a lock has one, or none while held): it does when fewer than
    /// `free` waiters are ahead of it (none for a lock: it is the head, or
    /// the line is empty), after dropping lapsed places. A caller not in
    /// the line counts as behind all of it. On a refusal with `join`,
    /// `token` joins the line or keeps its place; on a grant it leaves it.
    pub(crate) fn take_turn(
        &self,
        key: &str,
        token: &str,
        join: Option<Duration>,
        free: usize,
    ) -> bool {
        let mut lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        let (ahead, queued) = match lines.get_mut(key) {
            Some(line) => {
                line.retain(|place| place.until > now);
                match line.iter().position(|place| &*place.token == token) {
                    Some(at) => (at, Some(at)),
                    None => (line.len(), None),
                }
            }
            None => (0, None),
        };
        let turn = ahead < free;
        if let Some(line) = lines.get_mut(key) {
            match (turn, queued, join) {
                (true, Some(at), _) => {
                    line.remove(at);
                }
                (false, Some(at), Some(keep)) => line[at].until = now + keep,
                _ => {}
            }
        }
        if let (false, None, Some(keep)) = (turn, queued, join) {
            lines.entry(key.to_owned()).or_default().push_back(Place {
                token: token.into(),
                until: now + keep,
            });
        }
        if lines.get(key).is_some_and(VecDeque::is_empty) {
            lines.remove(key);
        }
        turn
    }

    fn draw_fence(&self) -> u64 {
        let clock = clock_micros();
        let previous = self
            .last_fence
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| {
                Some(next_fence(last, clock))
            })
            // The closure always returns `Some`.
            .unwrap_or_else(|last| last);
        next_fence(previous, clock)
    }

    /// How many locks are held now (expired leases may still count until
    /// moka's next maintenance).
    #[cfg(test)]
    fn held_locks(&self) -> u64 {
        self.locks.run_pending_tasks();
        self.locks.entry_count()
    }
}

impl ValueStore for MemoryStore {
    fn get(&self, key: &str, _: ValueType) -> StoreFuture<Option<AnyValue>> {
        StoreFuture::ready(Ok(self.values.get(key)))
    }

    fn set(
        &self,
        key: &str,
        value: AnyValue,
        _: ValueType,
        ttl: Option<Duration>,
    ) -> StoreFuture<bool> {
        self.values.insert(key, value, expiry_after(ttl));
        StoreFuture::ready(Ok(true))
    }

    fn delete(&self, key: &str) -> StoreFuture<()> {
        self.values.remove(key);
        StoreFuture::ready(Ok(()))
    }

    fn delete_prefix(&self, prefix: &str) -> StoreFuture<u64> {
        StoreFuture::ready(Ok(self.values.remove_prefix(prefix)))
    }

    fn delete_matching(&self, matching: &KeyMatch) -> StoreFuture<u64> {
        StoreFuture::ready(Ok(self.values.remove_matching(matching)))
    }

    fn local(&self) -> Option<Local<'_>> {
        Some(Local {
            values: &self.values,
            near: false,
        })
    }
}

impl LockStore for MemoryStore {
    fn try_lock(
        &self,
        key: &str,
        token: &str,
        lease: Duration,
        fence: Option<Fence<'_>>,
        _: &Line,
        join: Option<Duration>,
    ) -> StoreFuture<Grant<u64>> {
        let ttl = clamp_ttl(lease);
        let mut grant = Grant::Refused { free_in: None };
        // The token is drawn inside the lock's compute, which moka runs
        // alone for this key: line, grant and token are one step.
        self.locks.entry(key.to_owned()).and_compute_with(|held| {
            if !self.take_turn(key, token, join, usize::from(held.is_none())) {
                grant = Grant::Refused {
                    free_in: held
                        .as_ref()
                        .map(|held| held.value().ends.saturating_duration_since(Instant::now())),
                };
                return Op::Nop;
            }
            grant = Grant::Taken(fence.map_or(0, |_| self.draw_fence()));
            Op::Put(Lease {
                token: token.into(),
                ttl,
                ends: Instant::now() + ttl,
            })
        });
        StoreFuture::ready(Ok(grant))
    }

    fn unlock(&self, key: &str, token: &str, line: &Line) -> StoreFuture<bool> {
        let result = self
            .locks
            .entry(key.to_owned())
            .and_compute_with(|held| match held {
                Some(entry) if &*entry.value().token == token => Op::Remove,
                _ => Op::Nop,
            });
        let released = matches!(result, CompResult::Removed(_));
        if released {
            self.hub.ring(&line.channel);
        }
        StoreFuture::ready(Ok(released))
    }

    fn renew(&self, key: &str, token: &str, lease: Duration) -> StoreFuture<bool> {
        let result = self
            .locks
            .entry(key.to_owned())
            .and_compute_with(|held| match held {
                Some(entry) if &*entry.value().token == token => Op::Put(Lease {
                    token: entry.into_value().token,
                    ttl: clamp_ttl(lease),
                    ends: Instant::now() + clamp_ttl(lease),
                }),
                _ => Op::Nop,
            });
        StoreFuture::ready(Ok(matches!(result, CompResult::ReplacedWith(_))))
    }

    fn holder(&self, key: &str) -> StoreFuture<Option<String>> {
        StoreFuture::ready(Ok(self.locks.get(key).map(|lease| lease.token.to_string())))
    }

    fn note(&self, key: &str, token: &str, ttl: Duration) -> StoreFuture<()> {
        let ttl = clamp_ttl(ttl);
        self.locks.insert(
            key.to_owned(),
            Lease {
                token: token.into(),
                ttl,
                ends: Instant::now() + ttl,
            },
        );
        StoreFuture::ready(Ok(()))
    }

    fn force_unlock(&self, key: &str, line: &Line) -> StoreFuture<()> {
        // Through the per-key compute, like every other lock operation:
        // `invalidate` is not ordered with a renewal that already read the
        // lease, and that renewal would then put the deleted lock back.
        self.locks
            .entry(key.to_owned())
            .and_compute_with(|_| Op::Remove);
        self.hub.ring(&line.channel);
        StoreFuture::ready(Ok(()))
    }

    fn leave(&self, key: &str, token: &str, line: &Line) -> StoreFuture<()> {
        let mut lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(places) = lines.get_mut(key) {
            places.retain(|place| &*place.token != token);
            if places.is_empty() {
                lines.remove(key);
            }
        }
        drop(lines);
        if !self.locks.contains_key(key) {
            self.hub.ring(&line.channel);
        }
        StoreFuture::ready(Ok(()))
    }

    fn watch(&self, line: &Line) -> StoreFuture<Watch> {
        StoreFuture::ready(Ok(self.hub.watch(&line.channel)))
    }
}

impl TagStore for MemoryStore {
    fn tag_version(&self, tag: &TagKeys) -> StoreFuture<u64> {
        let book = self.tags();
        StoreFuture::ready(Ok(book.tags.get(&tag.version).map_or(0, |tag| tag.version)))
    }

    fn tag_entry(&self, tag: &TagKeys, entry: &str, ttl: Option<Duration>) -> StoreFuture<u64> {
        let now = Instant::now();
        let mut book = self.tags();
        book.since_sweep += 1;
        if book.since_sweep >= TAG_SWEEP_EVERY {
            book.since_sweep = 0;
            book.tags.retain(|_, tag| !tag.done(now));
        }
        let held = book.tags.entry(tag.version.clone()).or_default();
        let expires = ttl.map(|ttl| now + clamp_ttl(ttl));
        // Only ever later: writers of one key with different TTLs may
        // record in either order, and the entry lives as long as the longer.
        held.entries
            .entry(format!("{}|{entry}", held.version))
            .and_modify(|kept| {
                *kept = kept.zip(expires).map(|(kept, expires)| kept.max(expires));
            })
            .or_insert(expires);
        StoreFuture::ready(Ok(held.version))
    }

    fn bump_tag(&self, tag: &TagKeys, idle: Duration) -> StoreFuture<Vec<String>> {
        let mut book = self.tags();
        // Drawn under the book's lock, so versions only move forward.
        let version = self.draw_fence();
        let held = book.tags.entry(tag.version.clone()).or_default();
        held.version = version;
        held.keep_until = Some(Instant::now() + clamp_ttl(idle));
        StoreFuture::ready(Ok(held.entries.keys().cloned().collect()))
    }

    fn untag(&self, tag: &TagKeys, members: &[String]) -> StoreFuture<()> {
        if let Some(held) = self.tags().tags.get_mut(&tag.version) {
            for member in members {
                held.entries.remove(member);
            }
        }
        StoreFuture::ready(Ok(()))
    }
}

impl PoolStore for MemoryStore {
    fn acquire_slot(
        &self,
        key: &str,
        token: &str,
        max_size: usize,
        lease: Duration,
        _: &Line,
        join: Option<Duration>,
    ) -> StoreFuture<Grant<()>> {
        let mut grant = Grant::Refused { free_in: None };
        // Each pool's compute runs alone for its key: line, count and take
        // are one step.
        self.pools.entry(key.to_owned()).and_compute_with(|held| {
            let now = Instant::now();
            let mut live = held
                .map(|entry| entry.value().live(now))
                .unwrap_or_default();
            let free = max_size.saturating_sub(live.0.len());
            if self.take_turn(key, token, join, free) {
                live.0.push((token.into(), now + clamp_ttl(lease)));
                grant = Grant::Taken(());
            } else if free == 0 {
                let soonest = live.0.iter().map(|(_, ends)| *ends).min();
                grant = Grant::Refused {
                    free_in: soonest.map(|ends| ends.saturating_duration_since(now)),
                };
            }
            live.put()
        });
        StoreFuture::ready(Ok(grant))
    }

    fn renew_slot(&self, key: &str, token: &str, lease: Duration) -> StoreFuture<bool> {
        let mut renewed = false;
        self.pools.entry(key.to_owned()).and_compute_with(|held| {
            let Some(held) = held else {
                return Op::Nop;
            };
            let now = Instant::now();
            let mut live = held.value().live(now);
            if let Some(slot) = live.0.iter_mut().find(|(held, _)| &**held == token) {
                slot.1 = now + clamp_ttl(lease);
                renewed = true;
            }
            live.put()
        });
        StoreFuture::ready(Ok(renewed))
    }

    fn release_slot(&self, key: &str, token: &str, line: &Line) -> StoreFuture<bool> {
        let mut released = false;
        self.pools.entry(key.to_owned()).and_compute_with(|held| {
            let Some(held) = held else {
                return Op::Nop;
            };
            let mut live = held.value().live(Instant::now());
            let before = live.0.len();
            live.0.retain(|(held, _)| &**held != token);
            released = live.0.len() < before;
            live.put()
        });
        if released {
            self.hub.ring(&line.channel);
        }
        StoreFuture::ready(Ok(released))
    }

    fn pool_size(&self, key: &str) -> StoreFuture<usize> {
        let size = self
            .pools
            .get(key)
            .map_or(0, |slots| slots.live(Instant::now()).0.len());
        StoreFuture::ready(Ok(size))
    }

    fn leave_pool(&self, key: &str, token: &str, line: &Line) -> StoreFuture<()> {
        let mut lines = self.lines.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(places) = lines.get_mut(key) {
            places.retain(|place| &*place.token != token);
            if places.is_empty() {
                lines.remove(key);
            }
        }
        drop(lines);
        self.hub.ring(&line.channel);
        StoreFuture::ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::value::take;

    const FENCE: Option<Fence<'static>> = Some(Fence {
        key: "f",
        idle: Duration::from_secs(60),
    });

    fn line() -> Line {
        crate::keyspace::Keyspace::default().line("l")
    }

    fn now<T>(future: StoreFuture<T>) -> T {
        match future {
            StoreFuture::Ready(Some(result)) => result.unwrap(),
            _ => panic!("the memory store answers at once"),
        }
    }

    /// A lock attempt's fencing token, if it took the lock.
    fn taken(future: StoreFuture<Grant<u64>>) -> Option<u64> {
        match now(future) {
            Grant::Taken(token) => Some(token),
            Grant::Refused { .. } => None,
        }
    }

    /// Whether a pool attempt took a slot.
    fn slot(future: StoreFuture<Grant<()>>) -> bool {
        now(future) == Grant::Taken(())
    }

    fn get<T: crate::value::CacheValue>(memory: &MemoryStore, key: &str) -> Option<T> {
        now(ValueStore::get(memory, key, ValueType::of::<T>())).and_then(take::<T>)
    }

    #[test]
    fn values_are_typed_and_expire() {
        let memory = MemoryStore::new(100);
        let kind = ValueType::of::<u32>();
        let five = AnyValue::new(Arc::new(5_u32));
        now(memory.set("k", five, kind, Some(Duration::from_millis(50))));
        assert_eq!(get::<u32>(&memory, "k"), Some(5));
        assert_eq!(get::<String>(&memory, "k"), None, "another type is a miss");
        std::thread::sleep(Duration::from_millis(120));
        assert_eq!(get::<u32>(&memory, "k"), None);
    }

    #[test]
    fn locks_are_owned_and_expire() {
        let memory = MemoryStore::new(100);
        let first =
            taken(memory.try_lock("l", "a", Duration::from_millis(400), FENCE, &line(), None))
                .unwrap();
        assert!(first > 0);
        assert_eq!(
            taken(memory.try_lock("l", "b", Duration::from_secs(1), FENCE, &line(), None)),
            None
        );
        assert!(
            !now(memory.unlock("l", "b", &line())),
            "only the owner releases"
        );
        assert!(
            !now(memory.renew("l", "b", Duration::from_secs(1))),
            "only the owner renews"
        );
        assert_eq!(now(memory.holder("l")).as_deref(), Some("a"));
        std::thread::sleep(Duration::from_millis(600));
        assert_eq!(now(memory.holder("l")), None, "an expired lease is free");
        assert!(
            !now(memory.renew("l", "a", Duration::from_secs(1))),
            "an expired lease is gone"
        );
        let second =
            taken(memory.try_lock("l", "b", Duration::from_secs(1), FENCE, &line(), None)).unwrap();
        assert!(second > first, "fencing tokens increase");
        assert!(now(memory.unlock("l", "b", &line())));
        assert_eq!(now(memory.holder("l")), None);
        assert_eq!(
            taken(memory.try_lock("l", "c", Duration::from_secs(1), None, &line(), None)),
            Some(0),
            "no fence, no token"
        );
    }

    #[test]
    fn renew_extends_the_lease() {
        let memory = MemoryStore::new(100);
        assert!(
            taken(memory.try_lock("l", "a", Duration::from_millis(400), FENCE, &line(), None))
                .is_some()
        );
        for _ in 0..4 {
            std::thread::sleep(Duration::from_millis(200));
            assert!(now(memory.renew("l", "a", Duration::from_millis(400))));
        }
        assert!(now(memory.holder("l")).is_some());
    }

    #[test]
    fn a_million_lock_names_leave_nothing_behind() {
        let memory = MemoryStore::new(100);
        let line = line();
        let mut last = 0;
        for name in 0..1_000_000 {
            let key = format!("l{name}");
            let token =
                taken(memory.try_lock(&key, "t", Duration::from_secs(5), FENCE, &line, None))
                    .unwrap();
            assert!(token > last, "tokens increase across names too");
            last = token;
            assert!(now(memory.unlock(&key, "t", &line)));
        }
        assert_eq!(memory.held_locks(), 0);
        assert!(memory.lines.lock().unwrap().is_empty());
    }

    const KEEP: Option<Duration> = Some(Duration::from_secs(60));
    const LEASE: Duration = Duration::from_secs(60);

    /// The time left on the lease in the way, if any.
    fn free_in<T: std::fmt::Debug>(future: StoreFuture<Grant<T>>) -> Option<Duration> {
        match now(future) {
            Grant::Refused { free_in } => free_in,
            taken => panic!("expected a refusal, got {taken:?}"),
        }
    }

    #[test]
    fn a_refusal_tells_when_the_lease_in_the_way_ends() {
        let memory = MemoryStore::new(10);
        let line = line();
        assert!(taken(memory.try_lock("l", "holder", LEASE, FENCE, &line, None)).is_some());
        let left = free_in(memory.try_lock("l", "waiter", LEASE, FENCE, &line, KEEP))
            .expect("a held lock tells its lease");
        assert!(left <= LEASE && left > LEASE / 2, "{left:?}");
        assert!(now(memory.unlock("l", "holder", &line)));
        assert_eq!(
            free_in(memory.try_lock("l", "other", LEASE, FENCE, &line, None)),
            None,
            "a free lock promised to a waiter has no lease to wait for"
        );

        let short = Duration::from_secs(5);
        assert!(slot(memory.acquire_slot("p", "a", 2, LEASE, &line, None)));
        assert!(slot(memory.acquire_slot("p", "b", 2, short, &line, None)));
        let left = free_in(memory.acquire_slot("p", "c", 2, LEASE, &line, KEEP))
            .expect("a full pool tells its soonest lease");
        assert!(left <= short && left > short / 2, "{left:?}");
        assert!(now(memory.release_slot("p", "b", &line)));
        assert_eq!(
            free_in(memory.acquire_slot("p", "d", 2, LEASE, &line, None)),
            None,
            "a free slot kept for a waiter has no lease to wait for"
        );
    }

    #[test]
    fn a_free_lock_goes_to_the_head_of_the_line() {
        let memory = MemoryStore::new(10);
        let line = line();
        assert!(taken(memory.try_lock("l", "holder", LEASE, FENCE, &line, KEEP)).is_some());
        assert_eq!(
            taken(memory.try_lock("l", "first", LEASE, FENCE, &line, KEEP)),
            None
        );
        assert_eq!(
            taken(memory.try_lock("l", "second", LEASE, FENCE, &line, KEEP)),
            None
        );
        assert!(now(memory.unlock("l", "holder", &line)));
        for cutter in ["holder", "other"] {
            assert_eq!(
                taken(memory.try_lock("l", cutter, LEASE, FENCE, &line, None)),
                None,
                "a free lock waits for the head of its line"
            );
        }
        assert_eq!(
            taken(memory.try_lock("l", "second", LEASE, FENCE, &line, KEEP)),
            None,
            "the second waiter waits for the first"
        );
        let first = taken(memory.try_lock("l", "first", LEASE, FENCE, &line, KEEP)).unwrap();
        assert!(now(memory.unlock("l", "first", &line)));
        let second = taken(memory.try_lock("l", "second", LEASE, FENCE, &line, KEEP)).unwrap();
        assert!(second > first, "fencing tokens still increase");
        assert!(now(memory.unlock("l", "second", &line)));
        assert!(
            taken(memory.try_lock("l", "anyone", LEASE, FENCE, &line, None)).is_some(),
            "an empty line lets anyone in"
        );
        assert!(
            memory.lines.lock().unwrap().is_empty(),
            "no line left behind"
        );
    }

    #[test]
    fn a_lapsed_place_lets_the_next_waiter_through() {
        let memory = MemoryStore::new(10);
        let line = line();
        let brief = Some(Duration::from_millis(50));
        assert!(taken(memory.try_lock("l", "holder", LEASE, FENCE, &line, None)).is_some());
        assert_eq!(
            taken(memory.try_lock("l", "gone", LEASE, FENCE, &line, brief)),
            None
        );
        assert!(now(memory.unlock("l", "holder", &line)));
        assert_eq!(
            taken(memory.try_lock("l", "next", LEASE, FENCE, &line, KEEP)),
            None
        );
        std::thread::sleep(Duration::from_millis(120));
        assert!(
            taken(memory.try_lock("l", "next", LEASE, FENCE, &line, KEEP)).is_some(),
            "the place of a waiter that stopped trying lapsed"
        );
    }

    #[test]
    fn leaving_the_line_lets_the_next_one_in_and_wakes_it() {
        let memory = MemoryStore::new(10);
        let line = line();
        let mut watch = now(memory.watch(&line));
        assert!(taken(memory.try_lock("l", "holder", LEASE, FENCE, &line, None)).is_some());
        assert_eq!(
            taken(memory.try_lock("l", "quitter", LEASE, FENCE, &line, KEEP)),
            None
        );
        assert!(now(memory.unlock("l", "holder", &line)));
        let rings = crate::io::block_on(watch.next(Duration::from_secs(60))).unwrap();
        assert_eq!(rings, 1, "the release rang");
        watch.rung(rings);
        now(memory.leave("l", "quitter", &line));
        let rings = crate::io::block_on(watch.next(Duration::from_secs(60))).unwrap();
        assert_eq!(rings, 2, "leaving a free lock's line rang");
        assert!(taken(memory.try_lock("l", "next", LEASE, FENCE, &line, None)).is_some());
        now(memory.force_unlock("l", &line));
        let rings = crate::io::block_on(watch.next(Duration::from_secs(60))).unwrap();
        assert_eq!(rings, 3, "a forced release rang");
    }

    fn tag() -> TagKeys {
        crate::keyspace::Keyspace::default().tag("t")
    }

    #[test]
    fn tag_versions_move_and_indexes_list_their_entries() {
        let memory = MemoryStore::new(100);
        let tag = tag();
        assert_eq!(now(memory.tag_version(&tag)), 0, "never bumped");
        assert_eq!(now(memory.tag_entry(&tag, "k", None)), 0);
        let members = now(memory.bump_tag(&tag, Duration::from_secs(60)));
        assert_eq!(members, ["0|k"]);
        let first = now(memory.tag_version(&tag));
        assert!(first > 0);
        now(memory.untag(&tag, &members));
        let members = now(memory.bump_tag(&tag, Duration::from_secs(60)));
        assert!(members.is_empty(), "{members:?}");
        assert!(now(memory.tag_version(&tag)) > first, "every bump moves it");
    }

    /// An invalidation that reads the index, then the same key written
    /// again, then the invalidation takes off what it read: the new write
    /// stays in the index for the next invalidation to find.
    #[test]
    fn an_entry_written_again_during_an_invalidation_stays_indexed() {
        let memory = MemoryStore::new(100);
        let tag = tag();
        now(memory.tag_entry(&tag, "k", None));
        let read = now(memory.bump_tag(&tag, Duration::from_secs(60)));
        now(memory.tag_entry(&tag, "k", None));
        now(memory.untag(&tag, &read));
        let next = now(memory.bump_tag(&tag, Duration::from_secs(60)));
        assert_eq!(next.len(), 1, "{next:?}");
        assert!(next[0].ends_with("|k"));
    }

    /// Two writers of one key with different TTLs record in either order:
    /// the index keeps the later expiry (none at all beats any).
    #[test]
    fn an_index_keeps_the_later_expiry_of_a_key() {
        let memory = MemoryStore::new(100);
        let tag = tag();
        let expiry = |memory: &MemoryStore| memory.tags().tags[&tag.version].entries["0|k"];
        now(memory.tag_entry(&tag, "k", Some(Duration::from_secs(60))));
        let long = expiry(&memory).unwrap();
        now(memory.tag_entry(&tag, "k", Some(Duration::from_millis(1))));
        assert_eq!(expiry(&memory), Some(long), "a shorter TTL recorded later");
        now(memory.tag_entry(&tag, "k", None));
        now(memory.tag_entry(&tag, "k", Some(Duration::from_millis(1))));
        assert_eq!(expiry(&memory), None, "an entry without expiry");
    }

    #[test]
    fn tags_of_expired_entries_are_swept() {
        let memory = MemoryStore::new(100);
        let keys = crate::keyspace::Keyspace::default();
        for n in 1..TAG_SWEEP_EVERY {
            let tag = keys.tag(&format!("t{n}"));
            now(memory.tag_entry(&tag, "k", Some(Duration::from_millis(1))));
        }
        std::thread::sleep(Duration::from_millis(20));
        let live = keys.tag("live");
        now(memory.tag_entry(&live, "k", None));
        assert_eq!(memory.tags().tags.len(), 1, "only the live tag is left");
    }

    #[test]
    fn free_pool_slots_go_to_the_waiters_ahead() {
        let memory = MemoryStore::new(100);
        let lease = Duration::from_secs(60);
        let keep = Some(Duration::from_secs(60));
        let take = |token, join| slot(memory.acquire_slot("p", token, 2, lease, &line(), join));
        assert!(take("a", None) && take("b", None));
        assert!(!take("w1", keep), "full: w1 joins the line");
        assert!(!take("w2", keep), "full: w2 joins behind it");
        assert!(now(memory.release_slot("p", "a", &line())));
        assert!(!take("w2", keep), "one free slot: w1's");
        assert!(
            !take("c", None),
            "a caller that does not wait is behind both"
        );
        assert!(now(memory.release_slot("p", "b", &line())));
        assert!(take("w2", keep), "two free slots: one is w2's");
        assert!(take("w1", keep));
        assert!(!take("c", None), "full again");
        assert!(
            memory.lines.lock().unwrap().is_empty(),
            "both left the line"
        );
    }

    #[test]
    fn pool_slots_are_capped_owned_and_expire() {
        let memory = MemoryStore::new(100);
        let lease = Duration::from_millis(300);
        assert!(slot(memory.acquire_slot("p", "a", 2, lease, &line(), None)));
        assert!(slot(memory.acquire_slot(
            "p",
            "b",
            2,
            Duration::from_secs(5),
            &line(),
            None
        )));
        assert!(
            !slot(memory.acquire_slot("p", "c", 2, lease, &line(), None)),
            "full"
        );
        assert_eq!(now(memory.pool_size("p")), 2);
        assert!(
            !now(memory.release_slot("p", "c", &line())),
            "only a holder releases"
        );
        assert!(
            !now(memory.renew_slot("p", "c", lease)),
            "only a holder renews"
        );
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(now(memory.pool_size("p")), 1, "a's lease ended");
        assert!(
            !now(memory.renew_slot("p", "a", lease)),
            "an ended lease is gone"
        );
        assert!(
            !now(memory.release_slot("p", "a", &line())),
            "and cannot be released"
        );
        assert!(
            slot(memory.acquire_slot("p", "c", 2, lease, &line(), None)),
            "its slot is free"
        );
        assert!(now(memory.release_slot("p", "b", &line())));
        assert!(now(memory.release_slot("p", "c", &line())));
        assert_eq!(now(memory.pool_size("p")), 0);
        memory.pools.run_pending_tasks();
        assert_eq!(
            memory.pools.entry_count(),
            0,
            "an empty pool leaves nothing"
        );
    }
}
