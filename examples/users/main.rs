//! The py-cachify FastAPI tutorial's users app, on axum + sqlx + cachify.
//!
//! ```text
//! cargo run --example users
//! REDIS_URL=redis://127.0.0.1:6379/0 USERS_SLOW_MS=2000 cargo run --example users
//! ```
//!
//! Settings: `BIND_ADDR` (default `127.0.0.1:3000`), `DATABASE_URL`
//! (default `sqlite://users.db` in the working directory), `REDIS_URL`
//! (default: the in-memory client), `USERS_SLOW_MS` (default 0).
//!
//! With the `metrics` feature it also serves Prometheus metrics at
//! `/metrics` (`cargo run --example users --features metrics`), and
//! `RUST_LOG=cachify=trace` shows a span per cached call.

mod app;

use std::sync::Arc;
use std::time::Duration;

use cachify::Cachify;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();

    let env =
        |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_owned());
    let builder = Cachify::builder().prefix("users-app:");
    let client = match std::env::var("REDIS_URL") {
        Ok(url) => builder.redis(url).build().await?,
        Err(_) => builder.memory().build().await?,
    };
    tracing::info!(?client, "cachify client");
    cachify::init(client)?;

    let slow = Duration::from_millis(env("USERS_SLOW_MS", "0").parse()?);
    let db = app::connect_db(&env("DATABASE_URL", "sqlite://users.db")).await?;
    let state = Arc::new(app::AppState { db, slow });

    let address = env("BIND_ADDR", "127.0.0.1:3000");
    let listener = tokio::net::TcpListener::bind(&address).await?;
    tracing::info!("listening on http://{}", listener.local_addr()?);
    let router = app::router(state);
    #[cfg(feature = "metrics")]
    let router = {
        let handle = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
        // Histograms keep their samples until upkeep drains them; without a
        // scrape they would pile up.
        let upkeep = handle.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(5));
            loop {
                every.tick().await;
                upkeep.run_upkeep();
            }
        });
        app::with_metrics(router, handle)
    };
    axum::serve(listener, router).await?;
    Ok(())
}
