//! Stampede protection across processes: `#[cached(lock = true)]`.
//!
//! Each test starts its own redis-server and copies of this test binary
//! (the `#[ignore]`d `child` test, with a role in the environment). The
//! children are released together by a barrier in Redis and call one cold
//! cached function whose body counts its runs with `INCR executions` on the
//! server, sleeps, and returns the id of the process that ran it.
//!
//! - With `lock = true`, one process computes and the others wait for its
//!   value: one execution, one value.
//! - Without it (the control), the processes miss together and several run.
//! - If the process computing under the fill lock is SIGKILLed, the others
//!   still get a value once its lease (the client's `lock_ttl`) runs out.

mod support;

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use cachify::{Cachify, cached};
use support::children::{Children, barrier, now_ns};
use support::{Deadline, RedisServer};

/// Processes that miss together.
const PROCESSES: usize = 4;
/// How long the cached function's body takes: far longer than the spread
/// of the children's start after the barrier (milliseconds), so that they
/// all miss before the first value is stored.
const BODY: Duration = Duration::from_millis(1_000);
/// The short fill-lock lease of the crash test.
const SHORT_LOCK_TTL: Duration = Duration::from_secs(1);
/// The parent waits this long for its children before killing them.
const CHILDREN_LIMIT: Duration = Duration::from_secs(30);
/// Aborts a process that is still alive after this long (a deadlock).
const PROCESS_LIMIT: Duration = Duration::from_secs(60);

const ROLE_ENV: &str = "CACHIFY_FILL_ROLE";
const URL_ENV: &str = "CACHIFY_FILL_URL";
const LOG_ENV: &str = "CACHIFY_FILL_LOG";
const LOCK_TTL_ENV: &str = "CACHIFY_FILL_LOCK_TTL_MS";

/// Raw Redis keys (the client's keys are prefixed).
const READY_KEY: &str = "barrier:ready";
const GO_KEY: &str = "barrier:go";
const EXECUTIONS_KEY: &str = "executions";
/// Set to its pid by the crashing child once it computes under the fill lock.
const COMPUTING_KEY: &str = "computing";

/// Calls the function with `lock = true`.
const LOCKED_ROLE: &str = "locked";
/// Calls the function without it.
const UNLOCKED_ROLE: &str = "unlocked";
/// Calls the `lock = true` function and hangs in its body until killed.
const CRASH_ROLE: &str = "crash";

// ---------------------------------------------------------------------------
// The child side.
// ---------------------------------------------------------------------------

fn role() -> String {
    std::env::var(ROLE_ENV).expect("only child processes have a role")
}

fn url() -> String {
    std::env::var(URL_ENV).expect("only child processes use Redis")
}

fn client() -> &'static Cachify {
    static CLIENT: OnceLock<Cachify> = OnceLock::new();
    CLIENT.get_or_init(|| {
        let mut builder = Cachify::builder()
            .redis(url())
            .prefix("fx:")
            .command_timeout(Duration::from_secs(2));
        if let Ok(millis) = std::env::var(LOCK_TTL_ENV) {
            builder = builder.lock_ttl(Duration::from_millis(millis.parse().unwrap()));
        }
        builder
            .build_blocking()
            .expect("child: connect to the test's redis-server")
    })
}

fn raw_connection() -> redis::Connection {
    redis::Client::open(url())
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(5))
        .expect("child: raw connection")
}

/// The body both functions share: counts the run on the server, then works.
async fn compute() -> u32 {
    let mut redis = raw_connection();
    let _: i64 = redis::cmd("INCR")
        .arg(EXECUTIONS_KEY)
        .query(&mut redis)
        .unwrap();
    if role() == CRASH_ROLE {
        let _: () = redis::cmd("SET")
            .arg(COMPUTING_KEY)
            .arg(std::process::id())
            .query(&mut redis)
            .unwrap();
        // The parent SIGKILLs this process long before this sleep ends.
        tokio::time::sleep(PROCESS_LIMIT).await;
        panic!("child: the parent never killed this process");
    }
    tokio::time::sleep(BODY).await;
    std::process::id()
}

#[cached("report", lock = true, client = client())]
async fn locked_report() -> u32 {
    compute().await
}

#[cached("unlocked-report", client = client())]
async fn unlocked_report() -> u32 {
    compute().await
}

#[test]
#[ignore = "a child process of the other tests in this file"]
fn child() {
    let Ok(role) = std::env::var(ROLE_ENV) else {
        eprintln!("{ROLE_ENV} is not set: this runs only as a child of the other tests here");
        return;
    };
    let _deadline = Deadline::new(PROCESS_LIMIT, "a fill_across_processes child");
    let mut redis = raw_connection();
    // Connected before the start, so that all children start together.
    let _ = client();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    barrier(&mut redis, READY_KEY, GO_KEY, CHILDREN_LIMIT);
    let start = now_ns();
    let value = runtime.block_on(async {
        match role.as_str() {
            LOCKED_ROLE | CRASH_ROLE => locked_report().await,
            UNLOCKED_ROLE => unlocked_report().await,
            other => panic!("unknown role {other}"),
        }
    });
    let end = now_ns();
    let stats = client().stats();
    let line = format!(
        "result {} {value} {start} {end} {} {}\n",
        std::process::id(),
        stats.misses,
        stats.hits
    );
    // One whole line per write, on a file opened in append mode.
    OpenOptions::new()
        .append(true)
        .open(std::env::var(LOG_ENV).unwrap())
        .and_then(|mut log| log.write_all(line.as_bytes()))
        .expect("child: append to the shared log");
}

// ---------------------------------------------------------------------------
// The parent side.
// ---------------------------------------------------------------------------

/// What one child's call returned.
#[derive(Debug)]
struct Call {
    pid: u32,
    value: u32,
    start: u64,
    end: u64,
    misses: u64,
    hits: u64,
}

impl Call {
    fn took(&self) -> Duration {
        Duration::from_nanos(self.end - self.start)
    }
}

fn parse_calls(text: &str) -> Vec<Call> {
    text.lines()
        .map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            assert!(
                fields.len() == 7 && fields[0] == "result",
                "malformed log line {line:?}"
            );
            let number = |at: usize| -> u64 {
                fields[at]
                    .parse()
                    .unwrap_or_else(|_| panic!("malformed log line {line:?}"))
            };
            Call {
                pid: number(1) as u32,
                value: number(2) as u32,
                start: number(3),
                end: number(4),
                misses: number(5),
                hits: number(6),
            }
        })
        .collect()
}

/// One test's server, scratch directory, shared log and children.
struct Run {
    // Dropped in this order: the children are killed before the server goes.
    children: Children,
    _server: RedisServer,
    url: String,
    redis: redis::Connection,
    log: PathBuf,
    dir: PathBuf,
    _turn: std::sync::MutexGuard<'static, ()>,
}

impl Run {
    fn start(name: &str) -> Self {
        // One test at a time: the control test needs its children to start
        // together, which a neighbouring test's load could spoil.
        static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
        let turn = ONE_AT_A_TIME
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let server = RedisServer::start();
        let dir = std::env::temp_dir().join(format!(
            "cachify-fill-across-processes-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("calls.log");
        File::create(&log).unwrap();
        Run {
            _turn: turn,
            redis: server.connection(),
            children: Children::new(
                &dir,
                &[
                    (URL_ENV, &server.url()),
                    (LOG_ENV, &log.display().to_string()),
                ],
            ),
            url: server.url(),
            log,
            _server: server,
            dir,
        }
    }

    /// Starts one child in `role`, with a fill-lock lease if given.
    fn spawn(&mut self, role: &str, lock_ttl: Option<Duration>) -> u32 {
        match lock_ttl {
            Some(ttl) => self.children.spawn(&[
                (ROLE_ENV, role),
                (LOCK_TTL_ENV, &ttl.as_millis().to_string()),
            ]),
            None => self.children.spawn(&[(ROLE_ENV, role)]),
        }
    }

    fn count(&mut self, key: &str) -> u64 {
        redis::cmd("GET")
            .arg(key)
            .query::<Option<u64>>(&mut self.redis)
            .unwrap()
            .unwrap_or(0)
    }

    /// Waits until `n` children in all said "ready", then releases them.
    fn go_when_ready(&mut self, n: u64) {
        let mut redis = self.redis_clone();
        self.children
            .wait_until("the children are ready", CHILDREN_LIMIT, || {
                redis::cmd("GET")
                    .arg(READY_KEY)
                    .query::<Option<u64>>(&mut redis)
                    .unwrap()
                    .unwrap_or(0)
                    >= n
            });
        let _: () = redis::cmd("SET")
            .arg(GO_KEY)
            .arg(1)
            .query(&mut self.redis)
            .unwrap();
    }

    fn redis_clone(&self) -> redis::Connection {
        redis::Client::open(self.url.as_str())
            .unwrap()
            .get_connection_with_timeout(Duration::from_secs(5))
            .unwrap()
    }

    fn calls(&self) -> Vec<Call> {
        parse_calls(&std::fs::read_to_string(&self.log).unwrap())
    }

    /// Starts [`PROCESSES`] children in `role` together and returns their
    /// calls, one per child, and how many times the body ran.
    fn all_together(&mut self, role: &str) -> (Vec<Call>, u64) {
        let pids: HashSet<u32> = (0..PROCESSES).map(|_| self.spawn(role, None)).collect();
        self.go_when_ready(PROCESSES as u64);
        self.children.wait_for_success(None, CHILDREN_LIMIT);
        let calls = self.calls();
        assert_eq!(
            calls.iter().map(|call| call.pid).collect::<HashSet<_>>(),
            pids,
            "one call per child: {calls:#?}"
        );
        let executions = self.count(EXECUTIONS_KEY);
        (calls, executions)
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        self.children.kill_all();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn concurrent_misses_in_several_processes_run_the_function_once() {
    let _deadline = Deadline::new(PROCESS_LIMIT, "concurrent_misses_run_once");
    let mut run = Run::start("locked");
    let (calls, executions) = run.all_together(LOCKED_ROLE);
    // Not vacuous: every child missed, so none was a plain hit after the
    // value was stored.
    assert!(
        calls.iter().all(|call| call.misses >= 1),
        "every child missed the cold cache: {calls:#?}"
    );
    assert_eq!(
        executions, 1,
        "one process computed, the others waited for its value: {calls:#?}"
    );
    let computed_by = calls[0].value;
    assert!(
        calls.iter().all(|call| call.value == computed_by),
        "every process got the same value: {calls:#?}"
    );
    assert!(
        calls.iter().any(|call| call.pid == computed_by),
        "the value was computed by one of the children: {calls:#?}"
    );
    // The others read it from the cache once it was stored.
    assert!(
        calls
            .iter()
            .all(|call| (call.pid == computed_by) == (call.hits == 0)),
        "the waiters' value is a cache hit: {calls:#?}"
    );
}

/// The control: the same processes and body, without `lock = true`.
#[test]
fn without_the_fill_lock_several_processes_run_the_function() {
    let _deadline = Deadline::new(PROCESS_LIMIT, "without_the_fill_lock");
    let mut run = Run::start("unlocked");
    let (calls, executions) = run.all_together(UNLOCKED_ROLE);
    eprintln!("without the fill lock, {PROCESSES} processes ran the body {executions} times");
    assert!(
        executions > 1,
        "the processes missed together and each ran the body: {calls:#?}"
    );
    // Each run returns its own pid to its own caller.
    let values: HashSet<u32> = calls.iter().map(|call| call.value).collect();
    assert_eq!(
        values.len() as u64,
        executions,
        "one distinct value per run: {calls:#?}"
    );
}

/// The process computing under the fill lock is SIGKILLed while the others
/// wait for its value. Its fill lock is no longer renewed, so it expires
/// within one `lock_ttl`; then one survivor takes it and computes, and the
/// others get that survivor's value, as they would have got the crasher's.
#[test]
fn a_crashed_filler_is_replaced_after_its_lease() {
    use std::os::unix::process::ExitStatusExt;

    let _deadline = Deadline::new(PROCESS_LIMIT, "a_crashed_filler_is_replaced");
    let mut run = Run::start("crash");

    // The crasher takes the fill lock and hangs in the body.
    let crasher = run.spawn(CRASH_ROLE, Some(SHORT_LOCK_TTL));
    run.go_when_ready(1);
    let mut redis = run.redis_clone();
    run.children
        .wait_until("the crasher computes", CHILDREN_LIMIT, || {
            redis::cmd("EXISTS")
                .arg(COMPUTING_KEY)
                .query::<bool>(&mut redis)
                .unwrap()
        });

    // The others miss while it holds the fill lock ("go" is already set).
    let survivors: HashSet<u32> = (0..PROCESSES - 1)
        .map(|_| run.spawn(LOCKED_ROLE, Some(SHORT_LOCK_TTL)))
        .collect();
    run.children
        .wait_until("the others are about to call", CHILDREN_LIMIT, || {
            redis::cmd("GET")
                .arg(READY_KEY)
                .query::<Option<u64>>(&mut redis)
                .unwrap()
                .unwrap_or(0)
                >= PROCESSES as u64
        });
    let killed_at = now_ns();
    let status = run.children.kill(crasher);
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "the crasher was killed"
    );

    run.children.wait_for_success(Some(crasher), CHILDREN_LIMIT);
    let calls = run.calls();
    assert_eq!(
        calls.iter().map(|call| call.pid).collect::<HashSet<_>>(),
        survivors,
        "every survivor got a value: {calls:#?}"
    );
    let report = format!(
        "crasher {crasher} killed at {killed_at}; calls (took): {:#?}",
        calls
            .iter()
            .map(|call| (call, call.took()))
            .collect::<Vec<_>>()
    );
    for call in &calls {
        assert!(
            call.took() < SHORT_LOCK_TTL + BODY + Duration::from_secs(10),
            "bounded time, not a wait for the dead holder: {report}"
        );
        assert_ne!(call.value, crasher, "the crasher stored nothing: {report}");
        assert!(
            survivors.contains(&call.value),
            "computed by a survivor: {report}"
        );
    }
    let executions = run.count(EXECUTIONS_KEY);
    assert_eq!(
        executions, 2,
        "the crasher's run, then exactly one survivor's (more: survivors ran \
         the body without the fill lock, e.g. after waiting `lock_ttl` for it): {report}"
    );
    let computed_by = calls[0].value;
    assert!(
        calls.iter().all(|call| call.value == computed_by),
        "every survivor got the same value: {report}"
    );
}
