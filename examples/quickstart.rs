//! cachify in one screen: `#[cached]`, its `_reset`, `#[once]` and `#[lock]`.
//!
//! Runs on the in-process memory client; set `REDIS_URL` to use Redis:
//!
//! ```text
//! cargo run --example quickstart
//! REDIS_URL=redis://127.0.0.1:6379/0 cargo run --example quickstart
//! ```

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use cachify::{Cachify, cached, lock, once};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct User {
    id: i64,
    name: String,
}

#[derive(Debug)]
enum AppError {
    Busy,
    Cache(cachify::Error),
}

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppError::Busy => f.write_str("an update is already in progress"),
            AppError::Cache(error) => write!(f, "cache error: {error}"),
        }
    }
}

impl std::error::Error for AppError {}

impl From<cachify::Error> for AppError {
    fn from(error: cachify::Error) -> Self {
        AppError::Cache(error)
    }
}

static DB_READS: AtomicU32 = AtomicU32::new(0);

/// A slow "database read", cached for five minutes per user.
#[cached("user-{user_id}", ttl = 300)]
async fn read_user(user_id: i64) -> Result<User, AppError> {
    DB_READS.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(200)).await;
    Ok(User {
        id: user_id,
        name: format!("user {user_id}"),
    })
}

/// Only one update per user at a time; a second one is told to come back.
#[once("update-user-{user_id}", return_on_locked = Err(AppError::Busy))]
async fn update_user(user_id: i64, name: String) -> Result<User, AppError> {
    tokio::time::sleep(Duration::from_millis(300)).await;
    read_user_reset(user_id).await?;
    Ok(User { id: user_id, name })
}

/// A sync job: waits up to 2 s for the lock instead of giving up.
#[lock("report-{id}", wait = 2, ttl = 30)]
fn build_report(id: u64) -> Result<String, AppError> {
    std::thread::sleep(Duration::from_millis(100));
    Ok(format!("report {id}"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let builder = Cachify::builder().prefix("quickstart:");
    let builder = match std::env::var("REDIS_URL") {
        Ok(url) => builder.redis(url),
        Err(_) => builder.memory(),
    };
    let client = builder.build().await?;
    println!("client: {client:?}");
    cachify::init(client)?;

    println!("\n#[cached]");
    for _ in 0..2 {
        let started = Instant::now();
        let user = read_user(1).await?;
        println!("  read_user(1) = {user:?} in {:?}", started.elapsed());
    }
    read_user_reset(1).await?;
    let started = Instant::now();
    read_user(1).await?;
    println!(
        "  after read_user_reset(1): {:?} (ran again)",
        started.elapsed()
    );
    println!("  database reads: {}", DB_READS.load(Ordering::SeqCst));

    println!("\n#[once]");
    let (first, second) = tokio::join!(update_user(1, "Ada".into()), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        println!(
            "  update_user_is_locked(1) = {}",
            update_user_is_locked(1).await?
        );
        Ok::<_, cachify::Error>(update_user(1, "Grace".into()).await)
    });
    println!("  first update:  {first:?}");
    println!("  second update: {:?}", second?);

    println!("\n#[lock] (sync, waits for the lock)");
    let reports = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2).map(|_| scope.spawn(|| build_report(7))).collect();
        handles
            .into_iter()
            .map(|handle| handle.join().expect("report thread"))
            .collect::<Vec<_>>()
    });
    println!("  two concurrent build_report(7): {reports:?}");

    println!("\ncachify::lock (the lock as a value)");
    let guard = cachify::lock("nightly-import")
        .ttl(Duration::from_secs(30))
        .acquire()
        .await?;
    println!("  holding {}", guard.key());
    let refused = cachify::lock("nightly-import").acquire().await;
    println!("  a second acquire: {refused:?}");
    guard.release().await?;
    println!("  released");
    Ok(())
}
