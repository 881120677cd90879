//! One code path for async and blocking callers.
//!
//! Every operation (read, write, fill, cached call, acquire, release, wait)
//! is one `async fn` generic over a [`Mode`]. In [`Async`] mode its waits
//! are real awaits on the caller's runtime. In [`Blocking`] mode each wait
//! blocks the calling thread before it returns, so every future of the
//! operation is ready the first time it is polled, and [`drive`] runs the
//! whole operation on the caller's thread. Store I/O in blocking mode runs
//! on cachify's background runtime (see [`crate::io`]), which is what lets
//! a sync function work with no runtime, and inside a multi-thread or a
//! current-thread runtime alike. A wait that blocks a worker thread of a
//! multi-thread runtime first hands that worker's other tasks to another
//! thread (see [`wait_here`]), so a sync call made straight from async code
//! stalls only its own task.

use std::future::{Future, Ready, ready};
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::{self, Thread};
use std::time::Duration;

use tokio::runtime::{Handle, RuntimeFlavor};

use crate::error::Error;
use crate::io;
use crate::store::{StoreFuture, taken};

/// How an operation waits: the futures a mode hands out are named types,
/// so what an operation holds across its awaits is plain to see.
pub(crate) trait Mode: Send + Sync + 'static {
    /// Whether waits block the calling thread.
    const BLOCKING: bool;

    /// The wait for a store operation.
    type Io<T: Unpin + Send + 'static>: Future<Output = Result<T, Error>> + Send;
    /// A pause.
    type Sleep: Future<Output = ()> + Send;

    /// Waits for a store operation.
    fn io<T: Unpin + Send + 'static>(operation: StoreFuture<T>) -> Self::Io<T>;

    /// Pauses for `duration`.
    fn sleep(duration: Duration) -> Self::Sleep;
}

/// Awaits on the caller's runtime.
pub(crate) struct Async;

/// Blocks the calling thread; futures are ready on their first poll.
pub(crate) struct Blocking;

impl Mode for Async {
    const BLOCKING: bool = false;
    type Io<T: Unpin + Send + 'static> = StoreFuture<T>;
    type Sleep = tokio::time::Sleep;

    fn io<T: Unpin + Send + 'static>(operation: StoreFuture<T>) -> StoreFuture<T> {
        operation
    }

    fn sleep(duration: Duration) -> tokio::time::Sleep {
        tokio::time::sleep(duration)
    }
}

impl Mode for Blocking {
    const BLOCKING: bool = true;
    type Io<T: Unpin + Send + 'static> = Ready<Result<T, Error>>;
    type Sleep = Ready<()>;

    /// Runs the operation now (its I/O on the background runtime), so the
    /// returned future is ready. An in-process answer (`Ready`) never
    /// waits, so it skips [`wait_here`] and its cost.
    fn io<T: Unpin + Send + 'static>(operation: StoreFuture<T>) -> Ready<Result<T, Error>> {
        ready(match operation {
            StoreFuture::Io(operation) => wait_here(|| io::block_on(operation)),
            StoreFuture::Fetch(fetch, Some(decode)) => {
                wait_here(|| io::block_on(fetch)).and_then(decode)
            }
            StoreFuture::Fetch(_, None) => Err(taken()),
            StoreFuture::Ready(result) => result.unwrap_or_else(|| Err(taken())),
        })
    }

    fn sleep(duration: Duration) -> Ready<()> {
        wait_here(|| thread::sleep(duration));
        ready(())
    }
}

/// Runs `wait`, which blocks this thread, without stalling the runtime it
/// may be running on.
///
/// On a worker thread of a multi-thread Tokio runtime, blocking would hold
/// up every task queued on that worker until the wait ends, so the worker's
/// queue is first handed to another thread (`block_in_place`). Anywhere
/// else `wait` just runs: with no runtime, or on a thread that is not a
/// worker (`spawn_blocking`, the thread inside `Runtime::block_on`) nothing
/// else is held up, and on a current-thread runtime there is no other
/// thread to hand the work to (`block_in_place` would panic there).
pub(crate) fn wait_here<R>(wait: impl FnOnce() -> R) -> R {
    if on_a_multi_thread_task() {
        tokio::task::block_in_place(wait)
    } else {
        wait()
    }
}

/// Whether this thread is running a task of a multi-thread runtime: a
/// worker, or a `spawn_blocking` thread, where `block_in_place` only runs
/// its closure. A current-thread runtime's tasks and the future given to
/// `block_on` (which is not a task) answer no.
fn on_a_multi_thread_task() -> bool {
    tokio::task::try_id().is_some()
        && Handle::try_current()
            .is_ok_and(|runtime| runtime.runtime_flavor() == RuntimeFlavor::MultiThread)
}

/// Runs a [`Blocking`]-mode operation to the end on this thread.
///
/// Such futures are ready on their first poll. Should one ever return
/// `Pending`, this thread parks until it is woken, like any minimal
/// executor, rather than spinning or giving up.
pub(crate) fn drive<F: Future>(operation: F) -> F::Output {
    let mut operation = pin!(operation);
    // The first poll needs no waker of its own: it is the only one that
    // normally happens, and making a waker would cost every sync hit.
    if let Poll::Ready(output) = operation
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        return output;
    }
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut context = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(output) = operation.as_mut().poll(&mut context) {
            return output;
        }
        thread::park();
    }
}

/// Wakes the thread that drives a blocking operation.
struct Unpark(Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocking_operations_finish_on_the_first_poll_without_a_runtime() {
        let ready = drive(async {
            Blocking::sleep(Duration::from_millis(1)).await;
            Blocking::io(StoreFuture::ready(Ok(7_u8))).await
        });
        assert_eq!(ready.unwrap(), 7);
        let io = drive(Blocking::io(StoreFuture::io(async {
            tokio::time::sleep(Duration::from_millis(1)).await;
            Ok(9_u8)
        })));
        assert_eq!(io.unwrap(), 9, "I/O runs on the background runtime");
    }
}
