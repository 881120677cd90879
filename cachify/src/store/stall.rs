//! Read connections that notice a stalled Redis without a timer per command.
//!
//! A `tokio::time::timeout` around every read costs a hot cache path
//! several percent of its throughput under concurrency. Instead, each read
//! connection has one watchdog task: the connection's stream counts what it
//! reads, the callers count the reads they are waiting for, and when some
//! are owed but nothing has arrived for the command timeout, the watchdog
//! stops the connection's driver, which fails every pending read at once.
//! A connection that keeps answering is never cut, however long its queue.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ConnectionAddr, ConnectionInfo, RedisResult};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::task::AbortHandle;
use tokio::time::{Instant, MissedTickBehavior};

/// What a connection's stream, its callers and its watchdog share.
#[derive(Default)]
struct Watch {
    /// Reads that returned bytes. Written by the driver task alone (a load
    /// and a store, no read-modify-write), on a cache line of its own so
    /// the callers' counting does not slow it.
    reads: Padded<AtomicU64>,
    /// Reads sent on the connection and not yet answered (or abandoned).
    owed: Owing,
    /// Set by the watchdog before it stops the driver, so that the failed
    /// reads are reported as timeouts rather than a closed connection.
    stalled: AtomicBool,
}

/// Keeps a hot atomic off its neighbours' cache line.
#[derive(Default)]
#[repr(align(128))]
struct Padded<T>(T);

/// How many cells [`Owing`] spreads over.
const CELLS: usize = 16;

thread_local! {
    /// This thread's cell in every [`Owing`].
    static CELL: usize = {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed) % CELLS
    };
}

/// The count of owed reads, spread over cells that threads take in turn:
/// one counter for all would be written by every worker on every read, a
/// cache line bouncing between cores. A read may end on another thread
/// than the one that sent it, so only the totals tell how many are owed.
#[derive(Default)]
struct Owing {
    cells: [Padded<OwingCell>; CELLS],
}

/// Reads sent, and reads ended (answered or abandoned), by this cell's
/// threads; both only grow.
#[derive(Default)]
struct OwingCell {
    sent: AtomicU64,
    ended: AtomicU64,
}

impl Owing {
    fn cell(&self) -> &OwingCell {
        &self.cells[CELL.try_with(|cell| *cell).unwrap_or(0)].0
    }

    fn send(&self) {
        self.cell().sent.fetch_add(1, Ordering::Relaxed);
    }

    fn end(&self) {
        // Release: whoever sees this end also sees the read's send.
        self.cell().ended.fetch_add(1, Ordering::Release);
    }

    /// Whether reads are owed. Every end is summed before any send, and a
    /// read is sent before it ends: a read owed throughout the look is
    /// always seen, and no count ever looks negative.
    fn any(&self) -> bool {
        let sum = |count: fn(&OwingCell) -> u64| {
            self.cells
                .iter()
                .map(|cell| count(&cell.0))
                .fold(0, u64::wrapping_add)
        };
        let ended = sum(|cell| cell.ended.load(Ordering::Acquire));
        let sent = sum(|cell| cell.sent.load(Ordering::Relaxed));
        sent != ended
    }
}

/// A multiplexed connection over a stream that the watchdog watches.
/// Dropping it stops the connection's driver and its watchdog.
pub(super) struct WatchedConnection {
    connection: MultiplexedConnection,
    watch: Arc<Watch>,
    driver: AbortHandle,
    watchdog: AbortHandle,
}

impl WatchedConnection {
    /// Connects to a TCP or Unix-socket address and spawns the connection's
    /// driver and watchdog on the current runtime, where the connection is
    /// then used. `None` for an address whose stream only redis-rs makes
    /// (TLS). Not bounded here: the caller bounds connecting as a whole.
    pub(super) async fn connect(
        info: &ConnectionInfo,
        limit: Duration,
    ) -> RedisResult<Option<Self>> {
        match info.addr() {
            ConnectionAddr::Tcp(host, port) => {
                // Nagle's algorithm stays on, as on redis-rs's own
                // connections: it batches the small writes of many
                // concurrent reads (TCP_NODELAY measured a quarter slower
                // with 64 tasks on 2 cores).
                let stream = tokio::net::TcpStream::connect((host.as_str(), *port)).await?;
                Self::start(info, stream, limit).await.map(Some)
            }
            #[cfg(unix)]
            ConnectionAddr::Unix(path) => {
                let stream = tokio::net::UnixStream::connect(path).await?;
                Self::start(info, stream, limit).await.map(Some)
            }
            _ => Ok(None),
        }
    }

    /// Runs redis-rs's handshake (AUTH, SELECT, HELLO as the URL asks) over
    /// `stream`, then spawns the driver and the watchdog.
    async fn start<S>(info: &ConnectionInfo, stream: S, limit: Duration) -> RedisResult<Self>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let watch = Arc::new(Watch::default());
        let stream = Watched {
            stream,
            watch: Arc::clone(&watch),
        };
        // No response timeout: the watchdog bounds reads.
        let config = AsyncConnectionConfig::new().set_response_timeout(None);
        let (connection, driver) =
            MultiplexedConnection::new_with_config(info.redis_settings(), stream, config).await?;
        let driver = tokio::spawn(driver).abort_handle();
        let watchdog =
            tokio::spawn(watchdog(Arc::clone(&watch), driver.clone(), limit)).abort_handle();
        Ok(Self {
            connection,
            watch,
            driver,
            watchdog,
        })
    }

    /// Sends `command` and waits for its answer, as long as the connection
    /// keeps answering.
    pub(super) async fn query<T: redis::FromRedisValue>(
        &self,
        command: &redis::Cmd,
    ) -> RedisResult<T> {
        let _owed = Owed::new(&self.watch);
        // What `query_async` does, without the boxed future of its
        // `ConnectionLike` detour.
        let reply = self.connection.clone().send_packed_command(command).await?;
        Ok(redis::from_redis_value(reply.extract_error()?)?)
    }

    /// Whether the watchdog cut this connection for not answering.
    pub(super) fn stalled(&self) -> bool {
        self.watch.stalled.load(Ordering::Acquire)
    }
}

impl Drop for WatchedConnection {
    fn drop(&mut self) {
        // The driver would otherwise wait for answers still owed by a
        // stalled server, and the watchdog would tick for nothing.
        self.driver.abort();
        self.watchdog.abort();
    }
}

/// One read owed by the server, from before it is sent until it is
/// answered or abandoned (the caller's future dropped).
struct Owed<'a>(&'a Watch);

impl<'a> Owed<'a> {
    fn new(watch: &'a Watch) -> Self {
        watch.owed.send();
        Self(watch)
    }
}

impl Drop for Owed<'_> {
    fn drop(&mut self) {
        self.0.owed.end();
    }
}

/// Stops the connection's driver once reads are owed and nothing has been
/// read for `limit`; ends with the connection (aborted by its drop).
///
/// The clock starts at the first tick that finds reads owed and none
/// answered since the tick before: a read sent then was already waiting,
/// so no read is cut before it has waited `limit`, and a stalled one is
/// cut within `limit` plus two ticks.
async fn watchdog(watch: Arc<Watch>, driver: AbortHandle, limit: Duration) {
    let mut ticks = tokio::time::interval(tick(limit));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut seen = watch.reads.0.load(Ordering::Relaxed);
    let mut stalled_since: Option<Instant> = None;
    loop {
        ticks.tick().await;
        // The time of the look, not of the tick, which may have been late.
        let now = Instant::now();
        let reads = watch.reads.0.load(Ordering::Relaxed);
        if reads != seen || !watch.owed.any() {
            seen = reads;
            stalled_since = None;
            continue;
        }
        let since = *stalled_since.get_or_insert(now);
        if now.duration_since(since) >= limit {
            watch.stalled.store(true, Ordering::Release);
            // Dropping the driver drops redis-rs's queue of pending reads:
            // each fails at once, and so does any read sent after.
            driver.abort();
            return;
        }
    }
}

/// How often a watchdog looks: an eighth of the limit (at least 1 ms), so
/// that a stalled read fails within about 1.25 times the limit.
fn tick(limit: Duration) -> Duration {
    (limit / 8).max(Duration::from_millis(1))
}

/// A stream that counts its reads for the watchdog.
struct Watched<S> {
    stream: S,
    watch: Arc<Watch>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.stream).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            // Only this task writes `reads`: a plain load and store suffice.
            let reads = &this.watch.reads.0;
            reads.store(reads.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
