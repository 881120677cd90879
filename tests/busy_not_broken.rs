//! `return_on_locked` answers a lock held elsewhere, not a backend failure:
//! when the output can carry a `cachify::Error` (`Result<_, E>` with
//! `E: From<cachify::Error>`), an outage is that error, so a client is not
//! told "busy, retry" while Redis is down. Otherwise `return_on_locked`
//! answers both, as documented. The same holds for `return_on_full` of
//! pools, and on a Redis Cluster. Each test stops its own `redis-server`
//! (or cluster).

mod support;

use std::time::Duration;

use cachify::{Cachify, lock, once, pooled};
use support::OwnServer;
use support::cluster::RedisCluster;

#[derive(Debug, PartialEq)]
pub enum AppError {
    Busy,
    Backend,
}

impl From<cachify::Error> for AppError {
    fn from(error: cachify::Error) -> Self {
        match error {
            cachify::Error::Locked { .. } => AppError::Busy,
            _ => AppError::Backend,
        }
    }
}

static UPDATES: OwnServer = OwnServer::new();

#[once("update-{id}", return_on_locked = Err(AppError::Busy), client = UPDATES.client())]
async fn update(id: u32) -> Result<u32, AppError> {
    if id == 2 {
        tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    }
    Ok(id)
}

#[tokio::test]
async fn an_outage_is_an_error_not_busy() {
    assert_eq!(update(1).await, Ok(1));
    let holder = tokio::spawn(update(2));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !update_is_locked(2).await.unwrap() {
        assert!(
            std::time::Instant::now() < deadline,
            "the holder never locked"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(update(2).await, Err(AppError::Busy), "held elsewhere");
    assert_eq!(holder.await.unwrap(), Ok(2));
    UPDATES.stop();
    assert_eq!(
        update(1).await,
        Err(AppError::Backend),
        "Redis down is the backend error, not return_on_locked"
    );
}

static JOBS: OwnServer = OwnServer::new();

#[lock("job-{id}", return_on_locked = None, client = JOBS.client())]
fn job(id: u32) -> Option<u32> {
    Some(id)
}

#[derive(Debug, PartialEq)]
pub struct Refused(&'static str);

#[lock("report-{id}", return_on_locked = Err(Refused("busy")), client = JOBS.client())]
fn report(id: u32) -> Result<u32, Refused> {
    Ok(id)
}

#[test]
fn without_a_from_impl_return_on_locked_answers_both() {
    assert_eq!(job(1), Some(1));
    assert_eq!(report(1), Ok(1));
    let held = JOBS.client().lock("job-1").acquire_blocking().unwrap();
    assert_eq!(job(1), None, "held elsewhere");
    held.release_blocking().unwrap();
    JOBS.stop();
    assert_eq!(job(1), None, "Option output: return_on_locked");
    assert_eq!(
        report(1),
        Err(Refused("busy")),
        "Result without From<cachify::Error>: return_on_locked"
    );
}

#[once("cluster-update-{id}", return_on_locked = Err(AppError::Busy), client = client)]
async fn cluster_update(client: &Cachify, id: u32) -> Result<u32, AppError> {
    Ok(id)
}

#[pooled("cluster-export-{id}", max_size = 1, return_on_full = Err(AppError::Busy), client = client)]
async fn cluster_export(client: &Cachify, id: u32) -> Result<u32, AppError> {
    Ok(id)
}

/// On a cluster with every node down, a lock and a pool answer with the
/// backend error, not "busy" or "full"; while it is up, a pool full
/// elsewhere answers `Busy`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_outage_is_an_error_not_busy_or_full() {
    let mut cluster = RedisCluster::start();
    let client = Cachify::builder()
        .redis_cluster(cluster.seeds())
        .prefix("bnb:")
        .command_timeout(Duration::from_secs(1))
        .build()
        .await
        .unwrap();
    assert_eq!(cluster_update(&client, 1).await, Ok(1));
    assert_eq!(cluster_export(&client, 1).await, Ok(1));
    let slot = client.pool("cluster-export-1", 1).acquire().await.unwrap();
    assert_eq!(
        cluster_export(&client, 1).await,
        Err(AppError::Busy),
        "full: return_on_full"
    );
    slot.release().await.unwrap();
    for port in cluster
        .seeds()
        .iter()
        .filter_map(|seed| seed.rsplit(':').next()?.parse::<u16>().ok())
    {
        cluster.kill(port);
    }
    assert_eq!(
        cluster_update(&client, 1).await,
        Err(AppError::Backend),
        "the cluster down is the backend error, not return_on_locked"
    );
    assert_eq!(
        cluster_export(&client, 1).await,
        Err(AppError::Backend),
        "the cluster down is the backend error, not return_on_full"
    );
}
