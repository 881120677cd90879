//! Pool safety, proven: several processes, many tasks each, one pool of
//! [`MAX_SIZE`] slots, on a single Redis node and on the Redis Cluster.
//!
//! Each test starts [`PROCESSES`] copies of this test binary (the
//! `#[ignore]`d `child` test), released together by a barrier in a
//! redis-server of the test's own. Every child runs async tasks that take
//! a slot through `#[pooled(wait = ..)]` and through the pool value
//! (`client.pool(..).wait(..).acquire()`), and threads that call a sync
//! `#[pooled]` function: all on one pool.
//!
//! Inside the pool a task works for [`WORK`], longer than the lease
//! ([`LEASE`]): only the watchdog's renewals (every `LEASE / 3`) keep the
//! slot its own. Each section appends its `[start, end]` on
//! `CLOCK_MONOTONIC` (one clock for every process of the machine) to a
//! shared log; the parent then fails if more than [`MAX_SIZE`] sections
//! ever overlap, and if fewer than [`MAX_SIZE`] ever ran together.
//!
//! A crashed holder's slot freeing after one lease is tested in `pools.rs`.

mod support;

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use cachify::{Cachify, Error, pooled};
use support::children::{Children, barrier, now_ns};
use support::{Deadline, RedisServer};

/// Child processes per test.
const PROCESSES: usize = 3;
/// The pool's cap.
const MAX_SIZE: usize = 3;
/// Async tasks per child (half through `#[pooled]`, half through the value).
const TASKS: u32 = 4;
/// Threads per child calling the sync `#[pooled]` function.
const THREADS: u32 = 2;
/// Sections each child runs; then its tasks stop competing.
const QUOTA: u32 = 6;
/// The lease of every slot here, shorter than [`WORK`].
const LEASE: Duration = Duration::from_millis(200);
/// Time spent inside each section: two and a half leases.
const WORK: Duration = Duration::from_millis(500);
/// How long a caller waits for a slot before trying again.
const WAIT: Duration = Duration::from_secs(2);
/// Upper bound on the attempts of one task.
const MAX_ATTEMPTS: u32 = 500;
/// A child's tasks stop trying after this long, quota reached or not.
const CHILD_BUDGET: Duration = Duration::from_secs(25);
/// The parent waits this long for its children before killing them.
const CHILDREN_LIMIT: Duration = Duration::from_secs(40);
/// Aborts a process that is still alive after this long (a deadlock).
const PROCESS_LIMIT: Duration = Duration::from_secs(60);

/// The pool's backend: a Redis URL, or the cluster's seeds joined by `,`.
const SEEDS_ENV: &str = "CACHIFY_POOL_PROOF_SEEDS";
/// The barrier's redis-server.
const BARRIER_ENV: &str = "CACHIFY_POOL_PROOF_BARRIER";
const LOG_ENV: &str = "CACHIFY_POOL_PROOF_LOG";
const READY_KEY: &str = "barrier:ready";
const GO_KEY: &str = "barrier:go";
const POOL: &str = "proof";

// ---------------------------------------------------------------------------
// The child side.
// ---------------------------------------------------------------------------

fn client() -> &'static Cachify {
    static CLIENT: OnceLock<Cachify> = OnceLock::new();
    CLIENT.get_or_init(|| {
        let seeds = std::env::var(SEEDS_ENV).expect("only child processes use the client");
        let seeds: Vec<&str> = seeds.split(',').collect();
        let builder = match seeds.as_slice() {
            [url] => Cachify::builder().redis(*url),
            seeds => Cachify::builder().redis_cluster(seeds.iter().copied()),
        };
        builder
            .prefix("proof:")
            // Generous: a slow answer on a loaded machine is not what this
            // is about (a lost lease shows up as an overlap anyway).
            .command_timeout(Duration::from_secs(2))
            .build_blocking()
            .expect("child: connect to the pool's backend")
    })
}

/// Sections this process ran.
static SECTIONS: AtomicU32 = AtomicU32::new(0);
/// Waits for a slot that ran out (`Error::PoolFull` after `WAIT`).
static TIMED_OUT: AtomicU32 = AtomicU32::new(0);
/// Any other error: each one is also logged on its own line.
static ERRORS: AtomicU32 = AtomicU32::new(0);

fn quota_reached() -> bool {
    SECTIONS.load(Ordering::SeqCst) >= QUOTA
}

/// Appends one whole line to the shared log, in a single `write` on a file
/// opened in append mode, so lines of different processes never mix.
fn log_line(line: String) {
    static LOG: OnceLock<Mutex<File>> = OnceLock::new();
    let log = LOG.get_or_init(|| {
        let path = std::env::var(LOG_ENV).expect("the parent names the log");
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .expect("child: open the shared log");
        Mutex::new(file)
    });
    log.lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .write_all(line.as_bytes())
        .expect("child: append to the shared log");
}

fn log_section(start: u64, end: u64, note: &str) {
    let note = note.replace(char::is_whitespace, "_");
    log_line(format!(
        "section {} {start} {end} {note}\n",
        std::process::id()
    ));
}

fn log_error(error: &Error) {
    ERRORS.fetch_add(1, Ordering::SeqCst);
    let message = error.to_string().replace('\n', " ");
    log_line(format!("error {} {message}\n", std::process::id()));
}

/// Pause of a task after its section, varied per task, so that slots pass
/// to waiters (often of other processes) rather than straight back.
fn pause_after_section(task: u32) -> Duration {
    Duration::from_millis(u64::from(150 + task * 7))
}

/// `false` once the quota is reached (the section did not run).
#[pooled("proof", max_size = MAX_SIZE, ttl = LEASE, wait = WAIT, client = client())]
async fn async_section() -> Result<bool, Error> {
    if quota_reached() {
        return Ok(false);
    }
    let start = now_ns();
    tokio::time::sleep(WORK).await;
    let end = now_ns();
    SECTIONS.fetch_add(1, Ordering::SeqCst);
    log_section(start, end, "ok");
    Ok(true)
}

#[pooled("proof", max_size = MAX_SIZE, ttl = LEASE, wait = WAIT, client = client())]
fn sync_section() -> Result<bool, Error> {
    if quota_reached() {
        return Ok(false);
    }
    let start = now_ns();
    std::thread::sleep(WORK);
    let end = now_ns();
    SECTIONS.fetch_add(1, Ordering::SeqCst);
    log_section(start, end, "ok");
    Ok(true)
}

/// Through the pool value, checking the slot was never lost.
async fn value_section() -> Result<bool, Error> {
    let slot = client()
        .pool(POOL, MAX_SIZE)
        .ttl(LEASE)
        .wait(WAIT)
        .acquire()
        .await?;
    if quota_reached() {
        slot.release().await?;
        return Ok(false);
    }
    let start = now_ns();
    tokio::time::sleep(WORK).await;
    let end = now_ns();
    let lost = slot.is_lost();
    SECTIONS.fetch_add(1, Ordering::SeqCst);
    let released = slot.release().await;
    let note = match (lost, released) {
        (false, Ok(())) => "ok".to_owned(),
        (lost, released) => format!("lost={lost},release={released:?}"),
    };
    log_section(start, end, &note);
    Ok(true)
}

/// What one attempt's outcome means for its task: go on after `pause`, or stop.
fn next(outcome: Result<bool, Error>, task: u32) -> Option<Duration> {
    match outcome {
        Ok(true) => Some(pause_after_section(task)),
        Ok(false) => None,
        Err(Error::PoolFull { .. }) => {
            TIMED_OUT.fetch_add(1, Ordering::SeqCst);
            Some(Duration::ZERO)
        }
        Err(error) => {
            log_error(&error);
            None
        }
    }
}

async fn hammer_async(started: Instant) {
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            tokio::spawn(async move {
                for _ in 0..MAX_ATTEMPTS {
                    if quota_reached() || started.elapsed() > CHILD_BUDGET {
                        return;
                    }
                    let outcome = if task % 2 == 0 {
                        async_section().await
                    } else {
                        value_section().await
                    };
                    match next(outcome, task) {
                        Some(pause) => tokio::time::sleep(pause).await,
                        None => return,
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("child: a task panicked");
    }
}

fn hammer_sync(started: Instant) {
    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            scope.spawn(move || {
                let task = TASKS + thread;
                for _ in 0..MAX_ATTEMPTS {
                    if quota_reached() || started.elapsed() > CHILD_BUDGET {
                        return;
                    }
                    match next(sync_section(), task) {
                        Some(pause) => std::thread::sleep(pause),
                        None => return,
                    }
                }
            });
        }
    });
}

#[test]
#[ignore = "a child process of the other tests in this file"]
fn child() {
    let Ok(barrier_url) = std::env::var(BARRIER_ENV) else {
        eprintln!("{BARRIER_ENV} is not set: this runs only as a child of the other tests here");
        return;
    };
    let _deadline = Deadline::new(PROCESS_LIMIT, "a pool_proof child");
    let mut redis = redis::Client::open(barrier_url)
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(5))
        .expect("child: raw connection to the barrier");
    // Connected before the start, so that all children start together.
    let _ = client();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    barrier(&mut redis, READY_KEY, GO_KEY, CHILDREN_LIMIT);
    let started = Instant::now();
    std::thread::scope(|scope| {
        scope.spawn(|| hammer_sync(started));
        runtime.block_on(hammer_async(started));
    });
    log_line(format!(
        "child {} {} {} {}\n",
        std::process::id(),
        SECTIONS.load(Ordering::SeqCst),
        TIMED_OUT.load(Ordering::SeqCst),
        ERRORS.load(Ordering::SeqCst),
    ));
}

// ---------------------------------------------------------------------------
// The parent side.
// ---------------------------------------------------------------------------

/// One section, as a child logged it.
#[derive(Debug)]
struct Section {
    pid: u32,
    start: u64,
    end: u64,
    note: String,
}

#[derive(Debug, Default)]
struct Log {
    sections: Vec<Section>,
    /// `(pid, sections, timed out, errors)` per child.
    summaries: Vec<(u32, u32, u32, u32)>,
    errors: Vec<String>,
}

fn parse_log(text: &str) -> Log {
    let mut log = Log::default();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let number = |at: usize| -> u64 {
            fields
                .get(at)
                .and_then(|field| field.parse().ok())
                .unwrap_or_else(|| panic!("malformed log line {line:?}"))
        };
        match fields[0] {
            "section" => {
                assert_eq!(fields.len(), 5, "malformed log line {line:?}");
                log.sections.push(Section {
                    pid: number(1) as u32,
                    start: number(2),
                    end: number(3),
                    note: fields[4].to_owned(),
                });
            }
            "child" => {
                assert_eq!(fields.len(), 5, "malformed log line {line:?}");
                log.summaries.push((
                    number(1) as u32,
                    number(2) as u32,
                    number(3) as u32,
                    number(4) as u32,
                ));
            }
            "error" => log.errors.push(line.to_owned()),
            _ => panic!("unexpected log line {line:?}"),
        }
    }
    log
}

/// The most sections running at one instant, and the sections running at
/// the first instant that many ran. An end at the same nanosecond as a
/// start counts first: touching sections do not overlap.
fn most_at_once(sections: &[Section]) -> (usize, Vec<String>) {
    let mut events: Vec<(u64, i8, usize)> = Vec::new();
    for (at, section) in sections.iter().enumerate() {
        events.push((section.start, 1, at));
        events.push((section.end, -1, at));
    }
    events.sort_by_key(|&(time, change, _)| (time, change));
    let mut running: HashSet<usize> = HashSet::new();
    let (mut most, mut witnesses) = (0, Vec::new());
    for (_, change, at) in events {
        if change > 0 {
            running.insert(at);
        } else {
            running.remove(&at);
        }
        if running.len() > most {
            most = running.len();
            witnesses = running
                .iter()
                .map(|&at| format!("{:?}", sections[at]))
                .collect();
        }
    }
    (most, witnesses)
}

/// A temporary directory of one test, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("cachify-pool-proof-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs [`PROCESSES`] children against the pool at `seeds`, released
/// together, and checks their log.
fn prove(name: &str, seeds: &str) {
    // One test at a time: each one loads the machine with its children, and
    // lease renewals must not be starved by the neighbouring test.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let barrier_server = RedisServer::start();
    let scratch = Scratch::new(name);
    let log_path = scratch.0.join("sections.log");
    File::create(&log_path).unwrap();
    let mut children = Children::new(
        &scratch.0,
        &[
            (SEEDS_ENV, seeds),
            (BARRIER_ENV, &barrier_server.url()),
            (LOG_ENV, &log_path.display().to_string()),
        ],
    );
    for _ in 0..PROCESSES {
        children.spawn(&[]);
    }
    let mut redis = barrier_server.connection();
    children.wait_until("every child is ready", CHILDREN_LIMIT, || {
        let ready: Option<usize> = redis::cmd("GET").arg(READY_KEY).query(&mut redis).unwrap();
        ready == Some(PROCESSES)
    });
    let _: () = redis::cmd("SET")
        .arg(GO_KEY)
        .arg(1)
        .query(&mut redis)
        .unwrap();
    children.wait_for_success(None, CHILDREN_LIMIT);

    let log = parse_log(&std::fs::read_to_string(&log_path).unwrap());
    assert!(log.errors.is_empty(), "{name}: errors: {:#?}", log.errors);
    assert_eq!(
        log.summaries.iter().map(|s| s.0).collect::<HashSet<_>>(),
        children.pids(),
        "{name}: one summary per child: {:#?}",
        log.summaries
    );
    for &(pid, sections, _, errors) in &log.summaries {
        let logged = log.sections.iter().filter(|s| s.pid == pid).count();
        // A section in flight when the quota was reached still counts.
        assert!(
            sections >= QUOTA && logged == sections as usize,
            "{name}: child {pid} ran {sections} sections, logged {logged}"
        );
        assert_eq!(errors, 0, "{name}: child {pid}");
    }
    for section in &log.sections {
        assert_eq!(section.note, "ok", "{name}: {section:?}");
        assert!(
            section.end - section.start >= WORK.as_nanos() as u64,
            "{name}: every section outlives its lease: {section:?}"
        );
    }
    let (most, witnesses) = most_at_once(&log.sections);
    assert!(
        most <= MAX_SIZE,
        "{name}: {most} sections ran at once, over the cap of {MAX_SIZE}:\n{}",
        witnesses.join("\n")
    );
    assert!(
        most >= MAX_SIZE,
        "{name}: at most {most} sections ever ran together: the pool never filled"
    );
    let pids: HashSet<u32> = log.sections.iter().map(|s| s.pid).collect();
    eprintln!(
        "{name}: {} sections by {} processes, at most {most} at once; waits timed out {}",
        log.sections.len(),
        pids.len(),
        log.summaries.iter().map(|s| s.2).sum::<u32>(),
    );
}

#[test]
fn redis_at_most_max_size_run_at_once_across_processes() {
    let server = RedisServer::start();
    prove("redis", &server.url());
}

#[test]
fn cluster_at_most_max_size_run_at_once_across_processes() {
    let cluster = support::cluster::shared_cluster();
    prove("cluster", &cluster.seeds().join(","));
}
