//! Lock safety, proven: several processes, many tasks each, one lock.
//!
//! Each test starts its own redis-server and [`PROCESSES`] copies of this
//! test binary (the `#[ignore]`d `child` test, with a role in the
//! environment), released together by a barrier in Redis. Every child runs
//! [`TASKS`] tasks (or threads) that take one lock again and again, through
//! one of the three ways of taking it: `#[once]`, the lock value
//! (`client.lock(..).acquire()`), and `#[lock(wait = ..)]`.
//!
//! Inside the lock a task works for [`WORK`], longer than the lease
//! ([`LEASE`]): only the watchdog's renewals (every `LEASE / 3`) keep the
//! lock its own. Each critical section appends one line with its
//! `[start, end]` on `CLOCK_MONOTONIC` (one clock for every process of the
//! machine) to a shared log; the parent then fails if any two sections
//! overlap, and checks that every process ran its share of sections while
//! the others were competing for the lock.
//!
//! A crashed holder's lock expiring after one lease is tested in
//! `lock_api.rs` (`redis_a_crashed_holders_lock_expires_after_its_lease`).

mod support;

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use cachify::{Cachify, Error, lock, once};
use support::children::{Children, barrier, now_ns};
use support::{Deadline, RedisServer};

/// Child processes per test.
const PROCESSES: usize = 3;
/// Tasks (threads for the sync `#[lock]`) per child.
const TASKS: u32 = 8;
/// Critical sections each child runs; then its tasks stop competing. A
/// quota per process (rather than a total) makes every process take part.
const QUOTA: u32 = 4;
/// The lease of every lock here, shorter than [`WORK`].
const LEASE: Duration = Duration::from_millis(200);
/// Time spent inside each critical section: two and a half leases.
const WORK: Duration = Duration::from_millis(500);
/// How long the waiting paths wait for the lock before trying again.
const WAIT: Duration = Duration::from_secs(2);
/// Upper bound on the attempts of one task.
const MAX_ATTEMPTS: u32 = 2_000;
/// A child's tasks stop trying after this long, quota reached or not
/// (normally they are done within ten seconds).
const CHILD_BUDGET: Duration = Duration::from_secs(40);
/// The parent waits this long for its children before killing them.
const CHILDREN_LIMIT: Duration = Duration::from_secs(60);
/// Aborts a process that is still alive after this long (a deadlock).
const PROCESS_LIMIT: Duration = Duration::from_secs(90);

const ROLE_ENV: &str = "CACHIFY_MX_ROLE";
const URL_ENV: &str = "CACHIFY_MX_URL";
const LOG_ENV: &str = "CACHIFY_MX_LOG";
/// Raw Redis keys of the start barrier (the client's keys are prefixed).
const READY_KEY: &str = "barrier:ready";
const GO_KEY: &str = "barrier:go";

const ONCE_ROLE: &str = "once";
const VALUE_ROLE: &str = "value";
const MACRO_ROLE: &str = "macro";

// ---------------------------------------------------------------------------
// The child side.
// ---------------------------------------------------------------------------

fn client() -> &'static Cachify {
    static CLIENT: OnceLock<Cachify> = OnceLock::new();
    CLIENT.get_or_init(|| {
        let url = std::env::var(URL_ENV).expect("only child processes use the client");
        Cachify::builder()
            .redis(url)
            .prefix("mx:")
            // Generous: a slow answer on a loaded machine is not what these
            // tests are about (a lost lease shows up as an overlap anyway).
            .command_timeout(Duration::from_secs(2))
            .build_blocking()
            .expect("child: connect to the test's redis-server")
    })
}

/// Sections this process ran.
static SECTIONS: AtomicU32 = AtomicU32::new(0);
/// `#[once]` calls refused because the lock was held.
static REFUSED: AtomicU32 = AtomicU32::new(0);
/// Waits for the lock that ran out (`Error::Locked` after `WAIT`).
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
    assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
    log.lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .write_all(line.as_bytes())
        .expect("child: append to the shared log");
}

fn log_section(start: u64, end: u64, token: Option<u64>, note: &str) {
    let token = token.map_or_else(|| "-".to_owned(), |token| token.to_string());
    let note = note.replace(char::is_whitespace, "_");
    log_line(format!(
        "section {} {start} {end} {token} {note}\n",
        std::process::id()
    ));
}

fn log_error(error: &Error) {
    ERRORS.fetch_add(1, Ordering::SeqCst);
    let message = error.to_string().replace('\n', " ");
    log_line(format!("error {} {message}\n", std::process::id()));
}

/// Pause between two attempts of one task: 10 to 39 ms, varied so that the
/// tasks do not knock in step.
fn pause(task: u32, attempt: u32) -> Duration {
    Duration::from_millis(u64::from(10 + (task * 7 + attempt * 13) % 30))
}

/// Pause of a task after its critical section: longer than the longest
/// pause of a waiting `acquire` between two tries (100 ms), so that the lock
/// passes to a waiter, often of another process, rather than straight back
/// to the task that just released it.
fn pause_after_section(task: u32) -> Duration {
    Duration::from_millis(u64::from(150 + task * 5))
}

/// Path (a): `#[once]` on an async fn. Never waits: a held lock is
/// `Err(Error::Locked)`.
#[once("mx-once", ttl = LEASE, client = client())]
async fn once_section() -> Result<bool, Error> {
    if quota_reached() {
        return Ok(false);
    }
    let start = now_ns();
    tokio::time::sleep(WORK).await;
    let end = now_ns();
    SECTIONS.fetch_add(1, Ordering::SeqCst);
    log_section(start, end, None, "ok");
    Ok(true)
}

async fn hammer_once() {
    let started = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            tokio::spawn(async move {
                for attempt in 0..MAX_ATTEMPTS {
                    if quota_reached() || started.elapsed() > CHILD_BUDGET {
                        return;
                    }
                    let pause = match once_section().await {
                        Ok(true) => pause_after_section(task),
                        Ok(false) => continue,
                        Err(Error::Locked { .. }) => {
                            REFUSED.fetch_add(1, Ordering::SeqCst);
                            pause(task, attempt)
                        }
                        Err(error) => {
                            log_error(&error);
                            return;
                        }
                    };
                    tokio::time::sleep(pause).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("child: a task panicked");
    }
}

/// Path (b): the lock as a value, with its fencing token.
async fn hammer_value() {
    let started = Instant::now();
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            tokio::spawn(async move {
                for _ in 0..MAX_ATTEMPTS {
                    if quota_reached() || started.elapsed() > CHILD_BUDGET {
                        return;
                    }
                    let acquired = client()
                        .lock("mx-value")
                        .ttl(LEASE)
                        .wait(WAIT)
                        .acquire()
                        .await;
                    let guard = match acquired {
                        Ok(guard) => guard,
                        Err(Error::Locked { .. }) => {
                            TIMED_OUT.fetch_add(1, Ordering::SeqCst);
                            continue;
                        }
                        Err(error) => {
                            log_error(&error);
                            return;
                        }
                    };
                    if quota_reached() {
                        if let Err(error) = guard.release().await {
                            log_error(&error);
                        }
                        return;
                    }
                    let start = now_ns();
                    tokio::time::sleep(WORK).await;
                    let end = now_ns();
                    let lost = guard.is_lost();
                    let token = guard.fencing_token();
                    SECTIONS.fetch_add(1, Ordering::SeqCst);
                    let released = guard.release().await;
                    let note = match (lost, released) {
                        (false, Ok(())) => "ok".to_owned(),
                        (lost, released) => format!("lost={lost},release={released:?}"),
                    };
                    log_section(start, end, Some(token), &note);
                    tokio::time::sleep(pause_after_section(task)).await;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("child: a task panicked");
    }
}

/// Path (c): `#[lock]` with a `wait`, on a sync fn called from threads.
#[lock("mx-macro", wait = WAIT, ttl = LEASE, client = client())]
fn macro_section() -> Result<bool, Error> {
    if quota_reached() {
        return Ok(false);
    }
    let start = now_ns();
    std::thread::sleep(WORK);
    let end = now_ns();
    SECTIONS.fetch_add(1, Ordering::SeqCst);
    log_section(start, end, None, "ok");
    Ok(true)
}

fn hammer_macro() {
    let started = Instant::now();
    std::thread::scope(|scope| {
        for task in 0..TASKS {
            scope.spawn(move || {
                for _ in 0..MAX_ATTEMPTS {
                    if quota_reached() || started.elapsed() > CHILD_BUDGET {
                        return;
                    }
                    match macro_section() {
                        Ok(true) => std::thread::sleep(pause_after_section(task)),
                        Ok(false) => {}
                        Err(Error::Locked { .. }) => {
                            TIMED_OUT.fetch_add(1, Ordering::SeqCst);
                            continue;
                        }
                        Err(error) => {
                            log_error(&error);
                            return;
                        }
                    }
                }
            });
        }
    });
}

#[test]
#[ignore = "a child process of the other tests in this file"]
fn child() {
    let Ok(role) = std::env::var(ROLE_ENV) else {
        eprintln!("{ROLE_ENV} is not set: this runs only as a child of the other tests here");
        return;
    };
    let _deadline = Deadline::new(PROCESS_LIMIT, "a mutual_exclusion child");
    let url = std::env::var(URL_ENV).expect("the parent passes the URL");
    let mut redis = redis::Client::open(url)
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(5))
        .expect("child: raw connection");
    // Connected before the start, so that all children start together.
    let _ = client();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    barrier(&mut redis, READY_KEY, GO_KEY, CHILDREN_LIMIT);
    let active_from = now_ns();
    match role.as_str() {
        ONCE_ROLE => runtime.block_on(hammer_once()),
        VALUE_ROLE => runtime.block_on(hammer_value()),
        MACRO_ROLE => hammer_macro(),
        other => panic!("unknown role {other}"),
    }
    let active_to = now_ns();
    log_line(format!(
        "child {} {} {} {} {} {active_from} {active_to}\n",
        std::process::id(),
        SECTIONS.load(Ordering::SeqCst),
        REFUSED.load(Ordering::SeqCst),
        TIMED_OUT.load(Ordering::SeqCst),
        ERRORS.load(Ordering::SeqCst),
    ));
}

// ---------------------------------------------------------------------------
// The parent side.
// ---------------------------------------------------------------------------

/// One critical section, as a child logged it.
#[derive(Clone, Debug)]
struct Section {
    pid: u32,
    start: u64,
    end: u64,
    token: Option<u64>,
    note: String,
}

/// What a child reported when its tasks were done.
#[derive(Debug)]
struct Summary {
    pid: u32,
    sections: u32,
    refused: u32,
    timed_out: u32,
    errors: u32,
    active_from: u64,
    active_to: u64,
}

#[derive(Debug, Default)]
struct Log {
    sections: Vec<Section>,
    summaries: Vec<Summary>,
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
                assert_eq!(fields.len(), 6, "malformed log line {line:?}");
                log.sections.push(Section {
                    pid: number(1) as u32,
                    start: number(2),
                    end: number(3),
                    token: (fields[4] != "-").then(|| number(4)),
                    note: fields[5].to_owned(),
                });
            }
            "child" => {
                assert_eq!(fields.len(), 8, "malformed log line {line:?}");
                log.summaries.push(Summary {
                    pid: number(1) as u32,
                    sections: number(2) as u32,
                    refused: number(3) as u32,
                    timed_out: number(4) as u32,
                    errors: number(5) as u32,
                    active_from: number(6),
                    active_to: number(7),
                });
            }
            "error" => log.errors.push(line.to_owned()),
            _ => panic!("unexpected log line {line:?}"),
        }
    }
    log
}

fn describe(section: &Section) -> String {
    format!(
        "pid {} [{}, {}] token {:?}",
        section.pid, section.start, section.end, section.token
    )
}

/// Sorts the sections by start and returns every one that starts before a
/// section that started earlier has ended, with that section.
fn overlaps(sections: &mut [Section]) -> Vec<String> {
    sections.sort_by_key(|section| (section.start, section.end));
    let mut found = Vec::new();
    let mut latest: Option<&Section> = None;
    for section in sections.iter() {
        if let Some(previous) = latest {
            if section.start < previous.end {
                found.push(format!(
                    "{} starts {} µs before {} ends",
                    describe(section),
                    (previous.end - section.start) / 1_000,
                    describe(previous)
                ));
            }
            if section.end <= previous.end {
                continue;
            }
        }
        latest = Some(section);
    }
    found
}

/// With the sections sorted by start: every pair of neighbours whose
/// fencing tokens do not strictly increase.
fn fencing_violations(sorted: &[Section]) -> Vec<String> {
    sorted
        .windows(2)
        .filter(|pair| pair[0].token >= pair[1].token)
        .map(|pair| format!("{} then {}", describe(&pair[0]), describe(&pair[1])))
        .collect()
}

/// A temporary directory of one test, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "cachify-mutual-exclusion-{}-{name}",
            std::process::id()
        ));
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

/// Runs [`PROCESSES`] children in `role`, released together, and returns
/// their log and pids.
fn run_children(role: &str) -> (Log, HashSet<u32>) {
    // One test at a time: each one loads the machine with its children, and
    // lease renewals must not be starved by the neighbouring test.
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let server = RedisServer::start();
    let scratch = Scratch::new(role);
    let log_path = scratch.0.join("sections.log");
    File::create(&log_path).unwrap();
    let mut children = Children::new(
        &scratch.0,
        &[
            (ROLE_ENV, role),
            (URL_ENV, &server.url()),
            (LOG_ENV, &log_path.display().to_string()),
        ],
    );
    for _ in 0..PROCESSES {
        children.spawn(&[]);
    }

    let mut redis = server.connection();
    let polls = CHILDREN_LIMIT.as_millis() / 20;
    let mut ready = 0;
    for _ in 0..polls {
        ready = redis::cmd("GET")
            .arg(READY_KEY)
            .query::<Option<usize>>(&mut redis)
            .unwrap()
            .unwrap_or(0);
        if ready == PROCESSES {
            break;
        }
        children.assert_all_running("before the start");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(ready, PROCESSES, "not every child got ready");
    let _: () = redis::cmd("SET")
        .arg(GO_KEY)
        .arg(1)
        .query(&mut redis)
        .unwrap();

    // Every child must exit, and succeed.
    children.wait_for_success(None, CHILDREN_LIMIT);
    let text = std::fs::read_to_string(&log_path).unwrap();
    (parse_log(&text), children.pids())
}

/// The checks every path shares. Returns the sections sorted by start.
fn check(role: &str, mut log: Log, pids: &HashSet<u32>) -> (Vec<Section>, Vec<Summary>) {
    assert!(log.errors.is_empty(), "{role}: errors: {:#?}", log.errors);
    assert_eq!(
        log.summaries.iter().map(|s| s.pid).collect::<HashSet<_>>(),
        *pids,
        "{role}: one summary per child: {:#?}",
        log.summaries
    );
    let overlapping = overlaps(&mut log.sections);
    assert!(
        overlapping.is_empty(),
        "{role}: {} of {} critical sections overlap another:\n{}",
        overlapping.len(),
        log.sections.len(),
        overlapping.join("\n")
    );

    for summary in &log.summaries {
        let logged = log
            .sections
            .iter()
            .filter(|section| section.pid == summary.pid)
            .count();
        assert_eq!(
            (summary.sections, logged),
            (QUOTA, QUOTA as usize),
            "{role}: every child runs its quota of sections: {summary:?}"
        );
        assert_eq!(summary.errors, 0, "{role}: {summary:?}");
    }

    let sections = log.sections;
    for section in &sections {
        assert_eq!(section.note, "ok", "{role}: {}", describe(section));
        assert!(
            section.end - section.start >= WORK.as_nanos() as u64,
            "{role}: every section outlives its lease: {}",
            describe(section)
        );
    }

    // Not vacuous: sections of one process ran while another process was
    // competing for the lock. Until the first two children reach their
    // quota, every section has a competitor; that is at least 2 * QUOTA.
    let contended = sections
        .iter()
        .filter(|section| {
            log.summaries.iter().any(|other| {
                other.pid != section.pid
                    && other.active_from < section.end
                    && section.start < other.active_to
            })
        })
        .count();
    assert!(
        contended >= 2 * QUOTA as usize,
        "{role}: only {contended} sections ran while another process competed: {:#?}",
        log.summaries
    );
    // Which process ran each section, in order: `a` for the first pid.
    let mut names: Vec<u32> = log.summaries.iter().map(|s| s.pid).collect();
    names.sort_unstable();
    let order: String = sections
        .iter()
        .map(|section| {
            let at = names.iter().position(|pid| *pid == section.pid).unwrap();
            char::from(b'a' + at as u8)
        })
        .collect();
    eprintln!(
        "{role}: {} sections by {} processes in the order {order} ({contended} with another \
         process competing), no overlap; refused {}, waits timed out {}",
        sections.len(),
        log.summaries.len(),
        log.summaries.iter().map(|s| s.refused).sum::<u32>(),
        log.summaries.iter().map(|s| s.timed_out).sum::<u32>(),
    );
    (sections, log.summaries)
}

#[test]
fn once_runs_one_holder_at_a_time_across_processes() {
    let _deadline = Deadline::new(PROCESS_LIMIT, "once_runs_one_holder_at_a_time");
    let (log, pids) = run_children(ONCE_ROLE);
    let (_, summaries) = check(ONCE_ROLE, log, &pids);
    // Each child ran its quota (checked above) and was refused too: its
    // tasks kept knocking while the lock was held.
    for summary in &summaries {
        assert!(
            summary.refused >= 1,
            "`#[once]` refuses callers while the lock is held: {summary:?}"
        );
    }
}

#[test]
fn lock_value_runs_one_holder_at_a_time_with_increasing_fencing_tokens() {
    let _deadline = Deadline::new(PROCESS_LIMIT, "lock_value_runs_one_holder_at_a_time");
    let (log, pids) = run_children(VALUE_ROLE);
    let (sections, _) = check(VALUE_ROLE, log, &pids);
    assert!(
        sections.iter().all(|section| section.token.is_some()),
        "every section logged its fencing token"
    );
    let violations = fencing_violations(&sections);
    assert!(
        violations.is_empty(),
        "fencing tokens, in the order the sections ran, strictly increase:\n{}",
        violations.join("\n")
    );
}

#[test]
fn lock_macro_with_wait_runs_one_holder_at_a_time_across_processes() {
    let _deadline = Deadline::new(PROCESS_LIMIT, "lock_macro_runs_one_holder_at_a_time");
    let (log, pids) = run_children(MACRO_ROLE);
    check(MACRO_ROLE, log, &pids);
}

/// The overlap detector itself, on made-up sections.
#[test]
fn the_overlap_detector_finds_overlaps() {
    let section = |pid, start, end, token| Section {
        pid,
        start,
        end,
        token: Some(token),
        note: "ok".into(),
    };
    let mut apart = vec![
        section(2, 20, 30, 2),
        section(1, 0, 10, 1),
        section(3, 30, 40, 3),
    ];
    assert!(
        overlaps(&mut apart).is_empty(),
        "touching is not overlapping"
    );
    assert!(fencing_violations(&apart).is_empty());

    // The third section overlaps the first, which is longer than the second.
    let mut nested = vec![
        section(1, 0, 100, 1),
        section(2, 10, 20, 2),
        section(3, 50, 60, 3),
    ];
    assert_eq!(overlaps(&mut nested).len(), 2);

    let out_of_order = vec![section(1, 0, 10, 5), section(2, 10, 20, 5)];
    assert_eq!(fencing_violations(&out_of_order).len(), 1);
}
