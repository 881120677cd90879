//! `CacheLayer::stale_while_revalidate` across processes: one background
//! refresh per key, whichever process finds the entry stale first.
//!
//! The parent fills an entry on Redis (a node of its own, or the binary's
//! cluster) and lets it go stale. Copies of this test binary (the
//! `#[ignore]`d `child` test) each serve the same layer on their own port
//! and GET the entry together. Every handler run leaves a file; the
//! handler then blocks until the parent creates the release file, so every
//! stale GET happens while the one refresh runs. Exactly one run file must
//! appear, and every child must then see the refreshed response.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use cachify::Cachify;
use cachify::http::CacheLayer;
use support::children::Children;
use support::{Deadline, RedisServer};

/// Processes that find the entry stale together.
const PROCESSES: usize = 3;
/// Stale GETs per process while the refresh runs.
const GETS: usize = 5;
const TTL: Duration = Duration::from_secs(1);
const PAST_TTL: Duration = Duration::from_millis(1_200);
const WINDOW: Duration = Duration::from_secs(60);
/// How long anyone waits for anything.
const PATIENCE: Duration = Duration::from_secs(20);
/// Aborts a process that is still alive after this long (a deadlock).
const PROCESS_LIMIT: Duration = Duration::from_secs(60);

const SEEDS_ENV: &str = "CACHIFY_HTTP_STALE_SEEDS";
const CLUSTER_ENV: &str = "CACHIFY_HTTP_STALE_CLUSTER";
const PREFIX_ENV: &str = "CACHIFY_HTTP_STALE_PREFIX";
const DIR_ENV: &str = "CACHIFY_HTTP_STALE_DIR";

/// Created by the parent once every child has sent its stale GETs.
const RELEASE_FILE: &str = "release";
/// Created by each child after its stale GETs: `done-<pid>`.
const DONE_PREFIX: &str = "done-";
/// Created by each handler run: `run-<pid>-<n>`.
const RUN_PREFIX: &str = "run-";

async fn client(seeds: &[String], cluster: bool, prefix: &str) -> Cachify {
    let builder = Cachify::builder()
        .prefix(prefix)
        .command_timeout(Duration::from_secs(5));
    let builder = if cluster {
        builder.redis_cluster(seeds.to_vec())
    } else {
        builder.redis(seeds[0].clone())
    };
    builder.build().await.expect("build the client")
}

/// A router whose handler leaves a run file in `dir`, waits for the release
/// file, and answers `v2` (the parent's own fill answers `v1` at once).
fn router(client: &Cachify, dir: &Path, fill: bool) -> Router {
    let dir = dir.to_owned();
    let runs = Arc::new(AtomicUsize::new(0));
    let layer = CacheLayer::new()
        .client(client.clone())
        .namespace("processes")
        .ttl(TTL)
        .stale_while_revalidate(WINDOW);
    Router::new()
        .route(
            "/data",
            get(move || {
                let dir = dir.clone();
                let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
                async move {
                    if fill {
                        return "v1";
                    }
                    let name = format!("{RUN_PREFIX}{}-{run}", std::process::id());
                    std::fs::write(dir.join(name), b"").expect("write a run file");
                    let started = Instant::now();
                    while !dir.join(RELEASE_FILE).exists() {
                        assert!(started.elapsed() < PATIENCE, "never released");
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    "v2"
                }
            }),
        )
        .route_layer(layer)
}

/// Serves `router` on a loopback port; returns its base URL.
async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let address = listener.local_addr().expect("the bound address");
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{address}/data")
}

/// `x-cachify` and the body of a GET of `url`.
async fn get_data(http: &reqwest::Client, url: &str) -> (String, String) {
    let response = http.get(url).send().await.expect("the request succeeds");
    let cache = response
        .headers()
        .get("x-cachify")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (cache, response.text().await.expect("the body"))
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("build the HTTP client")
}

/// A directory of one test, removed when it drops.
struct TestDir(PathBuf);

impl TestDir {
    fn new(name: &str) -> Self {
        let path =
            std::env::temp_dir().join(format!("cachify-http-stale-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create the test directory");
        TestDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn files_starting_with(dir: &Path, prefix: &str) -> usize {
    std::fs::read_dir(dir)
        .expect("read the test directory")
        .filter_map(Result::ok)
        .filter(|entry| entry.file_name().to_string_lossy().starts_with(prefix))
        .count()
}

#[test]
#[ignore = "runs only as a child of the other tests here"]
fn child() {
    let Ok(dir) = std::env::var(DIR_ENV) else {
        eprintln!("{DIR_ENV} is not set: this runs only as a child of the other tests here");
        return;
    };
    let _deadline = Deadline::new(PROCESS_LIMIT, "an http_stale_processes child");
    let dir = PathBuf::from(dir);
    let seeds: Vec<String> = std::env::var(SEEDS_ENV)
        .expect("the seeds")
        .split(',')
        .map(str::to_owned)
        .collect();
    let cluster = std::env::var(CLUSTER_ENV).is_ok();
    let prefix = std::env::var(PREFIX_ENV).expect("the prefix");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let client = client(&seeds, cluster, &prefix).await;
        let url = serve(router(&client, &dir, false)).await;
        let http = http();
        for _ in 0..GETS {
            let (cache, body) = get_data(&http, &url).await;
            assert_eq!((cache.as_str(), body.as_str()), ("STALE", "v1"));
        }
        let done = format!("{DONE_PREFIX}{}", std::process::id());
        std::fs::write(dir.join(done), b"").expect("write the done file");
        // The refresh, wherever it ran, reaches this process too.
        let started = Instant::now();
        loop {
            let (cache, body) = get_data(&http, &url).await;
            if (cache.as_str(), body.as_str()) == ("HIT", "v2") {
                break;
            }
            assert!(
                started.elapsed() < PATIENCE,
                "never refreshed: {cache} {body}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
}

fn one_refresh_across_processes(seeds: &[String], cluster: bool, name: &str) {
    let _deadline = Deadline::new(PROCESS_LIMIT, "one_refresh_across_processes");
    let dir = TestDir::new(name);
    let prefix = format!("http-stale-processes-{name}:");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let client = client(seeds, cluster, &prefix).await;
        let url = serve(router(&client, dir.path(), true)).await;
        let (cache, body) = get_data(&http(), &url).await;
        assert_eq!((cache.as_str(), body.as_str()), ("MISS", "v1"));
    });
    std::thread::sleep(PAST_TTL);

    let seeds = seeds.join(",");
    let dir_path = dir.path().to_string_lossy().into_owned();
    let mut envs = vec![
        (SEEDS_ENV, seeds.as_str()),
        (PREFIX_ENV, prefix.as_str()),
        (DIR_ENV, dir_path.as_str()),
    ];
    if cluster {
        envs.push((CLUSTER_ENV, "1"));
    }
    let mut children = Children::new(dir.path(), &envs);
    for _ in 0..PROCESSES {
        children.spawn(&[]);
    }
    children.wait_until("every child sent its stale GETs", PATIENCE, || {
        files_starting_with(dir.path(), DONE_PREFIX) == PROCESSES
    });
    // Time for a second refresh, if one was wrongly started, to begin.
    std::thread::sleep(Duration::from_millis(300));
    let runs = files_starting_with(dir.path(), RUN_PREFIX);
    assert_eq!(
        runs,
        1,
        "{PROCESSES} processes x {GETS} stale GETs ran the handler once\n{}",
        children.outputs()
    );
    std::fs::write(dir.path().join(RELEASE_FILE), b"").expect("write the release file");
    children.wait_for_success(None, PATIENCE);
    assert_eq!(files_starting_with(dir.path(), RUN_PREFIX), 1);
}

#[test]
fn one_refresh_across_processes_on_a_node() {
    let server = RedisServer::start();
    one_refresh_across_processes(&[server.url()], false, "node");
}

#[test]
fn one_refresh_across_processes_on_a_cluster() {
    let cluster = support::cluster::shared_cluster();
    one_refresh_across_processes(&cluster.seeds(), true, "cluster");
}
