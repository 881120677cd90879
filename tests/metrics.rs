//! The `metrics` feature: counters and a latency histogram through the
//! `metrics` facade, labelled by kind and key template and never by the
//! rendered key, read back from `metrics-util`'s debugging recorder.
//!
//! The recorder is global and its snapshots reset counters, so every
//! snapshot is added into one running total that all tests read; each test
//! uses templates of its own.

mod support;

use std::collections::BTreeMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use cachify::{Cachify, Error, cached, lock};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use support::{Deadline, RedisServer};

const TEST_LIMIT: Duration = Duration::from_secs(60);

/// A metric's name and its labels, sorted.
type Series = (String, Vec<(String, String)>);

#[derive(Default)]
struct Totals {
    counters: BTreeMap<Series, u64>,
    /// Samples per histogram series.
    histograms: BTreeMap<Series, usize>,
}

fn snapshotter() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("the only recorder of this binary");
        snapshotter
    })
}

/// Everything recorded so far, by series.
fn totals() -> std::sync::MutexGuard<'static, Totals> {
    static TOTALS: OnceLock<Mutex<Totals>> = OnceLock::new();
    let mut totals = TOTALS
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    for (key, _, _, value) in snapshotter().snapshot().into_vec() {
        let key = key.key();
        let mut labels: Vec<(String, String)> = key
            .labels()
            .map(|label| (label.key().to_owned(), label.value().to_owned()))
            .collect();
        labels.sort();
        let series = (key.name().to_owned(), labels);
        match value {
            DebugValue::Counter(count) => *totals.counters.entry(series).or_default() += count,
            DebugValue::Histogram(samples) => {
                *totals.histograms.entry(series).or_default() += samples.len();
            }
            DebugValue::Gauge(_) => {}
        }
    }
    totals
}

fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut labels: Vec<(String, String)> = pairs
        .iter()
        .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
        .collect();
    labels.sort();
    labels
}

fn counter(name: &str, kind: &str, template: &str) -> u64 {
    let series = (
        name.to_owned(),
        labels(&[("kind", kind), ("template", template)]),
    );
    totals().counters.get(&series).copied().unwrap_or(0)
}

fn samples(kind: &str, template: &str, outcome: &str) -> usize {
    let series = (
        "cachify_call_seconds".to_owned(),
        labels(&[("kind", kind), ("outcome", outcome), ("template", template)]),
    );
    totals().histograms.get(&series).copied().unwrap_or(0)
}

/// Every label value recorded so far.
fn every_label_value() -> Vec<String> {
    let totals = totals();
    totals
        .counters
        .keys()
        .chain(totals.histograms.keys())
        .flat_map(|(_, labels)| labels.iter().map(|(_, value)| value.clone()))
        .collect()
}

fn memory(prefix: &str) -> Cachify {
    Cachify::builder()
        .memory()
        .prefix(prefix)
        .build_blocking()
        .unwrap()
}

#[cached("met-user-{id}", client = client)]
fn user(client: &Cachify, id: u64) -> u64 {
    let _ = client;
    id * 2
}

#[cached("met-name-{name}", client = client)]
async fn by_name(client: &Cachify, name: String) -> String {
    let _ = client;
    name
}

#[test]
fn hits_misses_and_latency_are_labelled_by_kind_and_template() {
    snapshotter();
    let client = memory("met1:");
    // A miss, a hit through the rendered key, then typed hits.
    for _ in 0..4 {
        assert_eq!(user(&client, 21), 42);
    }
    assert_eq!(counter("cachify_hits_total", "cached", "met-user-{id}"), 3);
    assert_eq!(
        counter("cachify_misses_total", "cached", "met-user-{id}"),
        1
    );
    assert_eq!(samples("cached", "met-user-{id}", "hit"), 3);
    assert_eq!(samples("cached", "met-user-{id}", "miss"), 1);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    for _ in 0..2 {
        let name = runtime.block_on(by_name(&client, "ada".to_owned()));
        assert_eq!(name, "ada");
    }
    assert_eq!(
        counter("cachify_hits_total", "cached", "met-name-{name}"),
        1
    );
    assert_eq!(samples("cached", "met-name-{name}", "hit"), 1);

    let values = every_label_value();
    for key in [
        "met1:cache:met-user-21",
        "met-user-21",
        "met1:cache:met-name-ada",
    ] {
        assert!(!values.iter().any(|value| value == key), "{key} is a label");
    }
}

#[lock("met-job-{n}", client = client)]
fn job(client: &Cachify, n: u64) -> Result<u64, Error> {
    let _ = client;
    Ok(n)
}

#[test]
fn locks_count_acquisitions_and_contention() {
    snapshotter();
    let client = memory("met2:");
    job(&client, 1).unwrap();
    job(&client, 2).unwrap();
    assert_eq!(
        counter("cachify_lock_acquisitions_total", "lock", "met-job-{n}"),
        2
    );
    let before = counter(
        "cachify_lock_contention_total",
        "lock",
        cachify::LOCK_API_TEMPLATE,
    );
    let held = client.lock("met-held-7").acquire_blocking().unwrap();
    assert!(client.lock("met-held-7").acquire_blocking().is_err());
    drop(held);
    assert_eq!(
        counter(
            "cachify_lock_contention_total",
            "lock",
            cachify::LOCK_API_TEMPLATE
        ),
        before + 1
    );
    assert!(
        !every_label_value()
            .iter()
            .any(|value| value.contains("met-held-7")),
        "a lock name is never a label"
    );
}

#[cached("met-breaker-{id}", client = client)]
async fn guarded(client: &Cachify, id: u64) -> u64 {
    let _ = client;
    id
}

#[tokio::test]
async fn errors_and_bypasses_are_counted() {
    let _deadline = Deadline::new(TEST_LIMIT, "errors and bypasses");
    snapshotter();
    let mut server = RedisServer::start();
    let client = Cachify::builder()
        .redis(server.url())
        .prefix("met3:")
        .command_timeout(Duration::from_millis(200))
        .connect_timeout(Duration::from_millis(200))
        .circuit_breaker(1, Duration::from_secs(60))
        .build()
        .await
        .unwrap();
    server.stop();
    assert_eq!(guarded(&client, 1).await, 1);
    assert_eq!(guarded(&client, 2).await, 2);
    assert_eq!(
        counter("cachify_errors_total", "cached", "met-breaker-{id}"),
        1
    );
    assert_eq!(
        counter("cachify_bypasses_total", "cached", "met-breaker-{id}"),
        1
    );
    assert_eq!(samples("cached", "met-breaker-{id}", "bypass"), 1);
}

static STALE_FAILS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

#[cached("met-stale-{id}", ttl = Duration::from_millis(200), stale_if_error = 60, client = client)]
fn stale_user(client: &Cachify, id: u64) -> Option<u64> {
    let _ = client;
    (!STALE_FAILS.load(std::sync::atomic::Ordering::SeqCst)).then_some(id)
}

#[test]
fn stale_answers_are_counted() {
    snapshotter();
    let client = memory("met-stale:");
    assert_eq!(stale_user(&client, 5), Some(5));
    STALE_FAILS.store(true, std::sync::atomic::Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(stale_user(&client, 5), Some(5));
    assert_eq!(
        counter("cachify_stale_total", "cached", "met-stale-{id}"),
        1
    );
    assert_eq!(samples("cached", "met-stale-{id}", "stale"), 1);
}
