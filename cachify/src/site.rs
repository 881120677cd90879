//! The typed fast path of in-process hits. Each `#[cached]` function whose
//! key values are all integers, `bool` or `char` (or has none) keeps, per
//! client, an index from its arguments themselves to the entries it found
//! in the client's in-process values (the memory store, or the near
//! cache's copies). A hit then builds no key string and hashes a few
//! integers; it serves an entry only while that entry is still the one
//! under its key (see [`crate::store::local`]), so every change that
//! reaches the in-process values (a write, a `_reset`, `clear()`, an
//! eviction, an invalidation from Redis) reaches it too.
//!
//! Why such types only: for them two values are equal exactly when they
//! render alike, so two argument lists share an index entry exactly when
//! they share a key. Other types take the rendered-key path.
//!
//! The index is a small sharded map of our own rather than quick_cache or
//! moka: both return a clone of what they hold, which for a shared entry
//! is a reference count bumped and dropped on every hit, from every
//! thread. Here the value is cloned under the shard's read lock. It is
//! only an index: when a shard is full, entries that are no longer live go
//! first, then any one.

use std::any::Any;
use std::hash::{BuildHasher, Hash};
use std::ops::Deref;
use std::sync::{Arc, OnceLock, PoisonError, RwLock};

use hashbrown::HashTable;
use quanta::Instant;

use crate::health::Health;
use crate::observe::{CallKind, Tally};
use crate::store::local::Stored;
use crate::value::CacheValue;

/// How many shards an index has.
const SHARDS: usize = 16;

/// A typed key: owned argument values, compared and hashed as they are.
pub trait TypedKey: Hash + Eq + Clone + Send + Sync + 'static {}

impl<K: Hash + Eq + Clone + Send + Sync + 'static> TypedKey for K {}

/// A key value whose `Display` output is equal exactly when the values
/// are: the types a typed key is made of.
pub trait ScalarKey {
    /// The value itself, owned.
    type Owned: TypedKey;
    /// The value, owned.
    fn owned(&self) -> Self::Owned;
}

macro_rules! scalar_keys {
    ($($ty:ty),*) => {$(
        impl ScalarKey for $ty {
            type Owned = $ty;
            #[inline]
            fn owned(&self) -> $ty {
                *self
            }
        }
    )*};
}

scalar_keys!(
    u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize, bool, char
);

impl<S: ScalarKey + ?Sized> ScalarKey for &S {
    type Owned = S::Owned;
    #[inline]
    fn owned(&self) -> S::Owned {
        (**self).owned()
    }
}

/// The key values of one call, as references, for the macro to ask which
/// path the call takes: `(&Probe(values)).typed_key()` resolves to
/// [`TypedProbe`] when every value is a [`ScalarKey`], and to
/// [`UntypedProbe`] otherwise (including in generic code).
pub struct Probe<V>(pub V);

/// No typed key: the call takes the rendered-key path.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Untyped {}

/// Calls whose key values are all [`ScalarKey`]s.
pub trait TypedProbe {
    /// The owned values.
    type Key: TypedKey;
    /// The typed key of this call.
    fn typed_key(&self) -> Option<Self::Key>;
}

/// Every other call.
pub trait UntypedProbe {
    /// Always `None`.
    fn typed_key(&self) -> Option<Untyped>;
}

impl<V> UntypedProbe for &Probe<V> {
    #[inline]
    fn typed_key(&self) -> Option<Untyped> {
        None
    }
}

impl TypedProbe for Probe<()> {
    type Key = ();
    #[inline]
    fn typed_key(&self) -> Option<()> {
        Some(())
    }
}

macro_rules! typed_probes {
    ($(($($name:ident $index:tt),+)),*) => {$(
        impl<$($name: ScalarKey),+> TypedProbe for Probe<($(&$name,)+)> {
            type Key = ($($name::Owned,)+);
            #[inline]
            fn typed_key(&self) -> Option<Self::Key> {
                Some(($(self.0.$index.owned(),)+))
            }
        }
    )*};
}

typed_probes!((A 0), (A 0, B 1), (A 0, B 1, C 2), (A 0, B 1, C 2, D 3));

/// How many clients a function keeps a slot for (its counters and its
/// typed index); later ones count through a map of their client and take
/// the rendered-key path at that function. A slot stays taken after its
/// client is dropped (its index emptied, see [`Forget`]), so a program
/// that makes many clients (a test suite, say) keeps the fast path for the
/// first few.
const CLAIMS: usize = 4;

/// The static description of one generated function (`#[cached]`,
/// `#[once]` or `#[lock]`): its kind, its key template as written and its
/// path, and, for the first `CLAIMS` clients it is called with, a slot
/// holding that client's counters for its template and, for `#[cached]`,
/// its typed index.
pub struct Site {
    kind: CallKind,
    template: &'static str,
    function: &'static str,
    claims: [OnceLock<Claim>; CLAIMS],
}

/// One client's slot at a [`Site`].
pub(crate) struct Claim {
    client: u64,
    /// The client's counters for the site's (kind, template).
    pub(crate) tally: Arc<Tally>,
    index: OnceLock<Arc<dyn Any + Send + Sync>>,
}

impl Site {
    /// An unclaimed site, for a `static`: `function` is the function's
    /// path, `concat!(module_path!(), "::", "name")`.
    pub const fn new(kind: CallKind, template: &'static str, function: &'static str) -> Self {
        Self {
            kind,
            template,
            function,
            claims: [const { OnceLock::new() }; CLAIMS],
        }
    }

    /// Which macro made the function.
    pub fn kind(&self) -> CallKind {
        self.kind
    }

    /// The key template as written in the attribute.
    pub fn template(&self) -> &'static str {
        self.template
    }

    /// The function's path, `module::name`.
    pub fn function(&self) -> &'static str {
        self.function
    }

    /// The slot of `client`, if it has one here.
    #[inline]
    pub(crate) fn slot(&self, client: u64) -> Option<&Claim> {
        for claim in &self.claims {
            match claim.get() {
                Some(claim) if claim.client == client => return Some(claim),
                Some(_) => {}
                None => return None,
            }
        }
        None
    }

    /// The slot of `client`, taken with the tally `make` gives if a slot is
    /// free.
    pub(crate) fn claim(&self, client: u64, make: impl FnOnce() -> Arc<Tally>) -> Option<&Claim> {
        let mut make = Some(make);
        for claim in &self.claims {
            let claim = claim.get_or_init(|| {
                let make = make
                    .take()
                    .expect("made at most once: the slot is then taken");
                Claim {
                    client,
                    tally: make(),
                    index: OnceLock::new(),
                }
            });
            if claim.client == client {
                return Some(claim);
            }
        }
        None
    }

    /// The index of `client`, typed, if it has one here.
    #[inline]
    pub(crate) fn index<K: TypedKey, T: CacheValue>(
        &self,
        client: u64,
    ) -> Option<(&Index<K, T>, &Tally)> {
        let claim = self.slot(client)?;
        Some((claim.index.get()?.downcast_ref()?, &claim.tally))
    }
}

/// A client's counters at a site: its slot's, or for a client without a
/// slot there, the ones it keeps by template.
pub(crate) enum TallyRef<'a> {
    Slot(&'a Tally),
    Shared(Arc<Tally>),
}

impl Deref for TallyRef<'_> {
    type Target = Tally;

    #[inline]
    fn deref(&self) -> &Tally {
        match self {
            TallyRef::Slot(tally) => tally,
            TallyRef::Shared(tally) => tally,
        }
    }
}

impl Site {
    /// The counters of `health`'s client for this site's template. Once
    /// the client has a slot here this is a scan of at most [`CLAIMS`]
    /// slots: no lock, no map.
    #[inline]
    pub(crate) fn tally(&self, health: &Health) -> TallyRef<'_> {
        match self.slot(health.client) {
            Some(claim) => TallyRef::Slot(&claim.tally),
            None => self.tally_slow(health),
        }
    }

    #[cold]
    fn tally_slow(&self, health: &Health) -> TallyRef<'_> {
        let make = || health.tally(self.kind, self.template, Some(self.function));
        match self.claim(health.client, make) {
            Some(claim) => TallyRef::Slot(&claim.tally),
            None => TallyRef::Shared(make()),
        }
    }
}

impl Claim {
    /// This slot's index, made if it has none yet.
    pub(crate) fn index<K: TypedKey, T: CacheValue>(
        &self,
        make: impl FnOnce() -> Arc<Index<K, T>>,
    ) -> Option<&Index<K, T>> {
        self.index
            .get_or_init(|| make() as Arc<dyn Any + Send + Sync>)
            .downcast_ref()
    }
}

/// An entry found through the rendered-key path, indexed by arguments.
struct Found<K, T> {
    key: K,
    value: Arc<T>,
    stored: Arc<Stored>,
}

/// A table of one shard. The hash that picks the shard also places the
/// entry in it, so a lookup hashes its key once.
type Shard<K, T> = RwLock<HashTable<Found<K, T>>>;

/// One function's index for one client.
pub(crate) struct Index<K, T> {
    /// Inline rather than boxed: a hit follows one pointer fewer.
    shards: [Shard<K, T>; SHARDS],
    /// foldhash's fast variant: keys are a few integers, and the index is
    /// bounded per shard, so the quality variant's extra mixing buys
    /// nothing here.
    hasher: foldhash::fast::RandomState,
    per_shard: usize,
    /// Whether hits come from the near cache (and count as near hits).
    pub(crate) near: bool,
}

/// Forgets what an index holds, when its client goes away.
pub(crate) trait Forget: Send + Sync {
    fn forget(&self);
}

impl<K: TypedKey, T: CacheValue> Index<K, T> {
    pub(crate) fn new(max_entries: u64, near: bool) -> Self {
        let max_entries = usize::try_from(max_entries).unwrap_or(usize::MAX);
        Self {
            shards: std::array::from_fn(|_| RwLock::new(HashTable::new())),
            hasher: foldhash::fast::RandomState::default(),
            per_shard: max_entries.div_ceil(SHARDS).max(1),
            near,
        }
    }

    /// The hash of `key`, and the shard it picks.
    #[inline]
    fn shard(&self, key: &K) -> (u64, &Shard<K, T>) {
        let hash = self.hasher.hash_one(key);
        // Bits the table uses neither to place entries (the low ones) nor
        // for its tags (the top seven): in one shard they are all alike.
        (hash, &self.shards[(hash >> 48) as usize % SHARDS])
    }

    /// The value indexed under `key`, while its entry is live.
    #[inline]
    pub(crate) fn get(&self, key: &K) -> Option<T> {
        let (hash, shard) = self.shard(key);
        let shard = shard.read().unwrap_or_else(PoisonError::into_inner);
        let found = shard.find(hash, |found| found.key == *key)?;
        found.stored.live_now().then(|| T::clone(&found.value))
    }

    /// Indexes `stored` (a value of type `T`) under `key`.
    pub(crate) fn insert(&self, key: K, stored: Arc<Stored>) {
        let Some(value) = stored.value().downcast_arc::<T>() else {
            return;
        };
        let (hash, shard) = self.shard(&key);
        let mut shard = shard.write().unwrap_or_else(PoisonError::into_inner);
        let rehash = |held: &Found<K, T>| self.hasher.hash_one(&held.key);
        let found = Found { key, value, stored };
        if let Some(held) = shard.find_mut(hash, |held| held.key == found.key) {
            *held = found;
            return;
        }
        if shard.len() >= self.per_shard {
            let now = Instant::now();
            shard.retain(|held| held.stored.live(now));
            if shard.len() >= self.per_shard
                && let Some((any, key)) = shard
                    .iter()
                    .next()
                    .map(|held| (rehash(held), held.key.clone()))
                && let Ok(held) = shard.find_entry(any, |held| held.key == key)
            {
                held.remove();
            }
        }
        shard.insert_unique(hash, found, rehash);
    }
}

impl<K: TypedKey, T: CacheValue> Forget for Index<K, T> {
    fn forget(&self) {
        for shard in &self.shards {
            shard
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::local::LocalValues;
    use crate::value::AnyValue;

    fn stored(local: &LocalValues, key: &str, value: u32) -> Arc<Stored> {
        local.insert(key, AnyValue::new(Arc::new(value)), None);
        local.entry(key).unwrap()
    }

    #[test]
    fn a_site_keeps_one_slot_per_client_for_the_first_few() {
        static SITE: Site = Site::new(CallKind::Cached, "t-{n}", "tests::f");
        let tally = || Arc::new(Tally::new(CallKind::Cached, "t-{n}"));
        let make = || Arc::new(Index::<(u64,), u32>::new(10, false));
        for client in 1..=CLAIMS as u64 {
            let claim = SITE.claim(client, tally).expect("a free slot");
            assert!(claim.index(make).is_some());
            assert!(SITE.index::<(u64,), u32>(client).is_some());
        }
        assert!(SITE.claim(99, tally).is_none(), "no slot left");
        assert!(SITE.slot(99).is_none());
        assert!(
            SITE.index::<(u64,), String>(1).is_none(),
            "another value type is not this index"
        );
        assert_eq!(
            (SITE.kind(), SITE.template(), SITE.function()),
            (CallKind::Cached, "t-{n}", "tests::f")
        );
    }

    #[test]
    fn an_index_serves_live_entries_only_and_stays_bounded() {
        let local = LocalValues::new(1_000);
        let index = Index::<(u64,), u32>::new(32, false);
        index.insert((1,), stored(&local, "k1", 10));
        assert_eq!(index.get(&(1,)), Some(10));
        local.remove("k1");
        assert_eq!(index.get(&(1,)), None, "retired with its entry");
        index.insert((1,), stored(&local, "k1", 11));
        assert_eq!(index.get(&(1,)), Some(11), "indexed again");
        index.insert((1,), stored(&local, "k1", 12));
        assert_eq!(index.get(&(1,)), Some(12), "replaced");
        for n in 0..500 {
            index.insert((n,), stored(&local, &format!("k{n}"), 7));
        }
        let held = index
            .shards
            .iter()
            .map(|shard| shard.read().unwrap().len())
            .sum::<usize>();
        assert!(held <= 32 + SHARDS, "bounded: {held}");
        index.forget();
        assert_eq!(index.get(&(499,)), None, "forgotten");
    }

    #[test]
    // Borrowed as the generated code does, where the probe's type decides.
    #[allow(clippy::needless_borrow)]
    fn probes_pick_the_typed_path_for_scalars_only() {
        let (id, flag, name) = (7_u64, true, String::from("x"));
        assert_eq!((&Probe((&id, &flag))).typed_key(), Some((7, true)));
        assert_eq!((&Probe(())).typed_key(), Some(()));
        let untyped: Option<Untyped> = (&Probe((&id, &name))).typed_key();
        assert!(untyped.is_none());
    }
}
