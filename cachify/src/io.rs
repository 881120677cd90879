//! The background runtime that drives Redis connections, lock watchdogs and
//! the blocking (sync) API.
//!
//! Redis connections are created here, so their driver tasks never live on
//! the application's runtime. That is what lets a sync function block the
//! only thread of a current-thread runtime (`#[tokio::test]`) while its
//! Redis round trip still completes, and what lets a sync program without a
//! runtime use cachify at all.

use std::future::Future;
use std::sync::LazyLock;

use tokio::runtime::{Builder, Handle, Runtime};
use tokio::task::JoinHandle;

use crate::error::{BackendError, Error};

static IO_RUNTIME: LazyLock<Runtime> = LazyLock::new(|| {
    Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("cachify-io")
        .enable_all()
        .build()
        // Only fails when the OS refuses a thread: nothing sensible can go on.
        .expect("cachify could not start its background I/O thread")
});

/// A handle to the background runtime.
pub(crate) fn handle() -> &'static Handle {
    IO_RUNTIME.handle()
}

/// Starts `future` on the background runtime.
pub(crate) fn spawn<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    handle().spawn(future)
}

/// Runs `future` on the background runtime and blocks this thread until it
/// finishes. Safe to call with no runtime, and from inside any runtime,
/// because the calling thread only waits on a channel.
pub(crate) fn block_on<F, T>(future: F) -> Result<T, Error>
where
    F: Future<Output = Result<T, Error>> + Send + 'static,
    T: Send + 'static,
{
    // The background runtime has one thread: blocking it on itself would
    // wait forever.
    if Handle::try_current().is_ok_and(|current| current.id() == handle().id()) {
        return Err(Error::Backend(BackendError::new(
            "a blocking cachify call ran on cachify's own background thread",
        )));
    }
    let (done, outcome) = std::sync::mpsc::sync_channel(1);
    spawn(async move {
        // The receiver only goes away if the caller's thread died.
        let _ = done.send(future.await);
    });
    outcome.recv().unwrap_or_else(|_| {
        Err(Error::Backend(BackendError::new(
            "cachify's background task stopped before answering",
        )))
    })
}
