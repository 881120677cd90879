//! Single flight: concurrent misses on one key in one process run the
//! function once, and the other callers take its result.
//!
//! Async and blocking callers have separate registries: a blocking waiter
//! parks its thread, and must never wait for an async leader that may need
//! that very thread (a current-thread runtime) to make progress.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::{self, ThreadId};

use tokio::sync::Notify;

use crate::mode::Mode;
use crate::value::AnyValue;

/// A leader's result as followers see it.
#[derive(Clone)]
pub(crate) enum Outcome {
    /// The value to return, type-erased; followers downcast it.
    Value(AnyValue),
    /// The leader's result cannot be shared (an `Err`): each follower runs
    /// the function itself, as it would without a cache.
    Failed,
    /// The leader went away without a result (it panicked or its future was
    /// cancelled): the followers elect a new leader.
    Abandoned,
}

#[derive(Default)]
pub(crate) struct Flight {
    outcome: Mutex<Option<Outcome>>,
    ready: Condvar,
    notify: Notify,
    leader_thread: Option<ThreadId>,
}

impl Flight {
    fn outcome(&self) -> Option<Outcome> {
        self.outcome
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn publish(&self, outcome: Outcome) {
        let mut slot = self.outcome.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.is_none() {
            *slot = Some(outcome);
        }
        drop(slot);
        self.ready.notify_all();
        self.notify.notify_waiters();
    }

    /// Waits for the leader: parks the thread in blocking mode, awaits
    /// otherwise.
    pub(crate) async fn wait<M: Mode>(&self) -> Outcome {
        if M::BLOCKING {
            // On a multi-thread runtime's worker, its other tasks move on.
            crate::mode::wait_here(|| self.wait_blocking())
        } else {
            self.wait_async().await
        }
    }

    async fn wait_async(&self) -> Outcome {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Register before checking, so a publish in between is not lost.
            notified.as_mut().enable();
            if let Some(outcome) = self.outcome() {
                return outcome;
            }
            notified.await;
        }
    }

    fn wait_blocking(&self) -> Outcome {
        if self.leader_thread == Some(thread::current().id()) {
            // The leader's own body called back into the same key: waiting
            // would wait for ourselves forever.
            return Outcome::Failed;
        }
        let slot = self.outcome.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = self
            .ready
            .wait_while(slot, |outcome| outcome.is_none())
            .unwrap_or_else(PoisonError::into_inner);
        slot.clone().unwrap_or(Outcome::Abandoned)
    }
}

/// In-flight calls of one client.
#[derive(Default)]
pub(crate) struct Flights {
    running: Mutex<HashMap<String, Arc<Flight>>>,
    running_blocking: Mutex<HashMap<String, Arc<Flight>>>,
}

/// What a caller that missed the cache does next.
pub(crate) enum Role<'a> {
    /// Run the function and publish its result.
    Leader(Leader<'a>),
    /// Wait for the leader's result.
    Follower(Arc<Flight>),
}

impl Flights {
    /// Joins the flight for `key`, or starts one.
    pub(crate) fn join<M: Mode>(&self, key: &str) -> Role<'_> {
        let blocking = M::BLOCKING;
        let map = if blocking {
            &self.running_blocking
        } else {
            &self.running
        };
        let mut running = map.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(flight) = running.get(key) {
            return Role::Follower(Arc::clone(flight));
        }
        let flight = Arc::new(Flight {
            leader_thread: blocking.then(|| thread::current().id()),
            ..Flight::default()
        });
        running.insert(key.to_owned(), Arc::clone(&flight));
        Role::Leader(Leader {
            map,
            key: key.to_owned(),
            flight,
        })
    }
}

/// The leader's handle on its flight. Dropping it without publishing (a
/// panic or a cancelled future) tells the followers to elect a new leader,
/// so nobody waits forever.
pub(crate) struct Leader<'a> {
    map: &'a Mutex<HashMap<String, Arc<Flight>>>,
    key: String,
    flight: Arc<Flight>,
}

impl Leader<'_> {
    /// Hands the result to the followers, and to callers that join before
    /// the leader drops this handle (while it is still storing the value).
    pub(crate) fn publish(&self, outcome: Outcome) {
        self.flight.publish(outcome);
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        self.flight.publish(Outcome::Abandoned);
        let mut running = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if running
            .get(&self.key)
            .is_some_and(|flight| Arc::ptr_eq(flight, &self.flight))
        {
            running.remove(&self.key);
        }
    }
}
