//! `#[cached(early_refresh = true)]` across real processes: three copies of
//! this test binary (the `#[ignore]`d `child` test) call one hot cached
//! function on one `redis-server` for four seconds, at a TTL of one second.
//! The parent fills the entry just before releasing them together.
//!
//! The body counts its runs on the server, and counts a run that began
//! while another was under way (`INCR running` above 1). Each child reports
//! the hits and misses its client counted.
//!
//! - Every call of every child is a hit: none waited for the function.
//! - The function never ran twice at once, across the processes.
//! - It ran about once per TTL in total, not once per process.

mod support;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cachify::{Cachify, cached};
use support::children::{Children, barrier};
use support::{Deadline, RedisServer};

/// Processes under load.
const PROCESSES: usize = 3;
/// How long each child calls the function.
const LOAD: Duration = Duration::from_secs(4);
/// Each child's pause between two calls.
const PAUSE: Duration = Duration::from_millis(10);
/// How long a run of the function takes.
const WORK: Duration = Duration::from_millis(100);
/// Runs in total, the parent's fill included: about one per TTL (a refresh
/// starts a little ahead of expiry), far fewer than one per process per TTL.
const RUNS: std::ops::RangeInclusive<u64> = 3..=10;
/// The parent waits this long for its children before killing them.
const CHILDREN_LIMIT: Duration = Duration::from_secs(30);
/// Aborts a process that is still alive after this long (a deadlock).
const PROCESS_LIMIT: Duration = Duration::from_secs(60);

const URL_ENV: &str = "CACHIFY_REFRESH_URL";
const LOG_ENV: &str = "CACHIFY_REFRESH_LOG";

/// Raw Redis keys (the client's keys are prefixed).
const READY_KEY: &str = "barrier:ready";
const GO_KEY: &str = "barrier:go";
const RUNS_KEY: &str = "runs";
const RUNNING_KEY: &str = "running";
const OVERLAPPING_KEY: &str = "overlapping";

/// The server's URL: the parent's own, or the one it gave its children.
static URL: OnceLock<String> = OnceLock::new();

fn url() -> &'static str {
    URL.get_or_init(|| std::env::var(URL_ENV).expect("the parent sets the server's URL"))
}

fn client() -> &'static Cachify {
    static CLIENT: OnceLock<Cachify> = OnceLock::new();
    CLIENT.get_or_init(|| {
        Cachify::builder()
            .redis(url())
            .prefix("er:")
            .command_timeout(Duration::from_secs(2))
            .build_blocking()
            .expect("connect to the test's redis-server")
    })
}

fn raw_connection() -> redis::Connection {
    redis::Client::open(url())
        .unwrap()
        .get_connection_with_timeout(Duration::from_secs(5))
        .expect("a raw connection to the test's redis-server")
}

#[cached("hot", ttl = 1, early_refresh = true, client = client())]
async fn hot() -> u64 {
    let mut redis = raw_connection();
    let _: u64 = redis::cmd("INCR").arg(RUNS_KEY).query(&mut redis).unwrap();
    let running: u64 = redis::cmd("INCR")
        .arg(RUNNING_KEY)
        .query(&mut redis)
        .unwrap();
    if running > 1 {
        let _: u64 = redis::cmd("INCR")
            .arg(OVERLAPPING_KEY)
            .query(&mut redis)
            .unwrap();
    }
    tokio::time::sleep(WORK).await;
    let _: i64 = redis::cmd("DECR")
        .arg(RUNNING_KEY)
        .query(&mut redis)
        .unwrap();
    7
}

#[test]
#[ignore = "a child process of the other test in this file"]
fn child() {
    let Ok(log) = std::env::var(LOG_ENV) else {
        eprintln!("{LOG_ENV} is not set: this runs only as a child of the other test here");
        return;
    };
    let _deadline = Deadline::new(PROCESS_LIMIT, "an early_refresh_processes child");
    let mut redis = raw_connection();
    let _ = client();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    barrier(&mut redis, READY_KEY, GO_KEY, CHILDREN_LIMIT);
    let calls = runtime.block_on(async {
        let started = Instant::now();
        let mut calls = 0_u64;
        while started.elapsed() < LOAD {
            assert_eq!(hot().await, 7);
            calls += 1;
            tokio::time::sleep(PAUSE).await;
        }
        calls
    });
    let stats = client().stats();
    let line = format!(
        "result {} {calls} {} {}\n",
        std::process::id(),
        stats.hits,
        stats.misses
    );
    OpenOptions::new()
        .append(true)
        .open(log)
        .and_then(|mut log| log.write_all(line.as_bytes()))
        .expect("append to the shared log");
}

/// One child's report.
#[derive(Debug)]
struct Report {
    calls: u64,
    hits: u64,
    misses: u64,
}

fn reports(text: &str) -> Vec<Report> {
    text.lines()
        .map(|line| {
            let fields: Vec<u64> = line
                .strip_prefix("result ")
                .unwrap_or_else(|| panic!("malformed log line {line:?}"))
                .split(' ')
                .map(|field| field.parse().unwrap())
                .collect();
            assert_eq!(fields.len(), 4, "malformed log line {line:?}");
            Report {
                calls: fields[1],
                hits: fields[2],
                misses: fields[3],
            }
        })
        .collect()
}

fn count(redis: &mut redis::Connection, key: &str) -> u64 {
    redis::cmd("GET")
        .arg(key)
        .query::<Option<u64>>(redis)
        .unwrap()
        .unwrap_or(0)
}

#[test]
fn several_processes_refresh_a_hot_key_once_per_ttl_in_total() {
    let _deadline = Deadline::new(PROCESS_LIMIT, "early_refresh_processes");
    let server = RedisServer::start();
    let dir: PathBuf =
        std::env::temp_dir().join(format!("cachify-early-refresh-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("calls.log");
    File::create(&log).unwrap();
    let mut children = Children::new(
        &dir,
        &[
            (URL_ENV, &server.url()),
            (LOG_ENV, &log.display().to_string()),
        ],
    );
    for _ in 0..PROCESSES {
        children.spawn(&[]);
    }
    let mut redis = server.connection();
    children.wait_until("the children are ready", CHILDREN_LIMIT, || {
        count(&mut redis, READY_KEY) >= PROCESSES as u64
    });
    // The first fill, by the parent, just before the load starts.
    URL.set(server.url()).expect("only this test sets the URL");
    let _ = client();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    assert_eq!(runtime.block_on(hot()), 7);
    let _: () = redis::cmd("SET")
        .arg(GO_KEY)
        .arg(1)
        .query(&mut redis)
        .unwrap();
    children.wait_for_success(None, CHILDREN_LIMIT);

    let reports = reports(&std::fs::read_to_string(&log).unwrap());
    assert_eq!(reports.len(), PROCESSES, "one report per child");
    let outputs = children.outputs();
    for report in &reports {
        assert!(report.calls > 50, "steady load: {report:?}\n{outputs}");
        assert_eq!(
            (report.hits, report.misses),
            (report.calls, 0),
            "every call was a hit: none waited for the function\n{outputs}"
        );
    }
    assert_eq!(
        count(&mut redis, OVERLAPPING_KEY),
        0,
        "runs that began while another was under way"
    );
    let runs = count(&mut redis, RUNS_KEY);
    assert!(
        RUNS.contains(&runs),
        "{runs} runs in {LOAD:?} at a 1 s TTL across {PROCESSES} processes, outside {RUNS:?}"
    );
    drop(children);
    let _ = std::fs::remove_dir_all(&dir);
}
