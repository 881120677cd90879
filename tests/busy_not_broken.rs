//! `return_on_locked` answers a lock held elsewhere, not a backend failure:
//! when the output can carry a `cachify::Error` (`Result<_, E>` with
//! `E: From<cachify::Error>`), an outage is that error, so a client is not
//! told "busy, retry" while Redis is down. Otherwise `return_on_locked`
//! answers both, as documented. Each test stops its own `redis-server`.

mod support;

use cachify::{lock, once};
use support::OwnServer;

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
