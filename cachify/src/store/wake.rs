//! Wake-ups for waiters: in this process, one signal per watched resource
//! (a lock, and later a pool), rung when the resource is released.
//!
//! The memory store rings a signal itself when a lock is released; a Redis
//! store rings it when its subscriber connection receives the release
//! message (see [`super::subscriber`]). A waiter takes a [`Watch`] before
//! its next attempt, so a release between that attempt and the wait is not
//! missed, then waits for a ring or for its timed re-check, whichever comes
//! first: messages can be lost, and a lease can run out with no release.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;

use super::StoreFuture;

/// Called with a resource's name when its last watcher is gone (a Redis
/// store unsubscribes then).
pub(crate) type Idle = Box<dyn Fn(String) + Send + Sync>;

/// The signals of the resources someone watches now, by name.
#[derive(Default)]
pub(crate) struct Hub {
    watched: Mutex<HashMap<String, (usize, Arc<Signal>)>>,
    idle: Option<Idle>,
}

/// Rung on every release of one resource.
#[derive(Default)]
struct Signal {
    /// How many times it was rung: a waiter compares it with what it saw
    /// before its attempt, so a ring in between is not lost.
    rings: AtomicU64,
    notify: Notify,
}

impl Hub {
    /// A hub that calls `idle` when a name's last watcher goes away.
    pub(crate) fn with_idle(idle: Idle) -> Self {
        Self {
            watched: Mutex::default(),
            idle: Some(idle),
        }
    }

    /// Starts watching `name`. The watch sees every ring from now on.
    pub(crate) fn watch(self: &Arc<Self>, name: &str) -> Watch {
        let mut watched = self.watched.lock().unwrap_or_else(PoisonError::into_inner);
        let (count, signal) = watched.entry(name.to_owned()).or_default();
        *count += 1;
        let signal = Arc::clone(signal);
        let seen = signal.rings.load(Ordering::Acquire);
        Watch {
            hub: Arc::clone(self),
            name: name.to_owned(),
            signal,
            seen,
        }
    }

    /// Wakes every watcher of `name`; nothing when nobody watches it.
    pub(crate) fn ring(&self, name: &str) {
        let watched = self.watched.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, signal)) = watched.get(name) {
            signal.rings.fetch_add(1, Ordering::AcqRel);
            signal.notify.notify_waiters();
        }
    }

    /// Whether anyone watches `name` now.
    pub(crate) fn is_watched(&self, name: &str) -> bool {
        let watched = self.watched.lock().unwrap_or_else(PoisonError::into_inner);
        watched.contains_key(name)
    }

    /// How many names are watched now.
    #[cfg(test)]
    pub(crate) fn watched(&self) -> usize {
        self.watched
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    fn unwatch(&self, name: &str) {
        let mut watched = self.watched.lock().unwrap_or_else(PoisonError::into_inner);
        let Entry::Occupied(mut entry) = watched.entry(name.to_owned()) else {
            return;
        };
        entry.get_mut().0 -= 1;
        if entry.get().0 == 0 {
            entry.remove();
            drop(watched);
            if let Some(idle) = &self.idle {
                idle(name.to_owned());
            }
        }
    }
}

/// One waiter's watch over one resource; stops watching when dropped.
pub(crate) struct Watch {
    hub: Arc<Hub>,
    name: String,
    signal: Arc<Signal>,
    /// The rings this waiter has seen.
    seen: u64,
}

impl Watch {
    /// Resolves at the first ring this waiter has not seen yet (at once if
    /// one came since the last [`Watch::rung`]), or after `limit`. Owns
    /// what it needs, so a blocking caller can wait on the background
    /// runtime. Answers how many rings there have been.
    pub(crate) fn next(&self, limit: Duration) -> StoreFuture<u64> {
        let (signal, seen) = (Arc::clone(&self.signal), self.seen);
        StoreFuture::io(async move {
            let notified = signal.notify.notified();
            tokio::pin!(notified);
            // Registered before the check: a ring after it wakes this wait.
            notified.as_mut().enable();
            let rings = signal.rings.load(Ordering::Acquire);
            if rings != seen {
                return Ok(rings);
            }
            let _ = tokio::time::timeout(limit, notified).await;
            Ok(signal.rings.load(Ordering::Acquire))
        })
    }

    /// Records the rings seen, from [`Watch::next`].
    pub(crate) fn rung(&mut self, rings: u64) {
        self.seen = rings;
    }

    /// The watched name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.hub.unwatch(&self.name);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    fn now(future: StoreFuture<u64>) -> u64 {
        crate::io::block_on(future).unwrap()
    }

    #[test]
    fn a_ring_before_the_wait_is_not_lost() {
        let hub = Arc::new(Hub::default());
        let mut watch = hub.watch("a");
        hub.ring("a");
        hub.ring("other");
        let rings = now(watch.next(Duration::from_secs(60)));
        assert_eq!(rings, 1, "the ring came before the wait: answered at once");
        watch.rung(rings);
        assert_eq!(
            now(watch.next(Duration::from_millis(10))),
            1,
            "no new ring: the wait ends at its limit"
        );
    }

    #[test]
    fn the_last_watcher_leaving_says_so_once() {
        let left = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&left);
        let hub = Arc::new(Hub::with_idle(Box::new(move |name| {
            assert_eq!(name, "a");
            counted.fetch_add(1, Ordering::SeqCst);
        })));
        let first = hub.watch("a");
        let second = hub.watch("a");
        assert!(hub.is_watched("a"));
        drop(first);
        assert_eq!(left.load(Ordering::SeqCst), 0);
        drop(second);
        assert_eq!(left.load(Ordering::SeqCst), 1);
        assert!(!hub.is_watched("a"));
        assert_eq!(hub.watched(), 0, "nothing left behind");
    }
}
