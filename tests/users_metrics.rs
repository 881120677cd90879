//! The users example with the `metrics` feature: `/metrics` serves
//! cachify's series in the Prometheus text format, labelled by kind and
//! template, over real HTTP.

#[allow(dead_code)]
#[path = "../examples/users/app.rs"]
mod app;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

#[tokio::test]
async fn metrics_endpoint_shows_cachify_series() {
    let metrics = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .expect("the only recorder of this binary");
    let client = cachify::Cachify::builder()
        .memory()
        .prefix("users-metrics:")
        .build()
        .await
        .unwrap();
    cachify::init(client).expect("the only init in this binary");
    let dir = std::env::temp_dir().join(format!("cachify-users-metrics-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _ = std::fs::remove_file(dir.join("users.db"));
    let db = app::connect_db(&format!("sqlite://{}", dir.join("users.db").display()))
        .await
        .unwrap();
    let state = Arc::new(app::AppState {
        db,
        slow: Duration::ZERO,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = app::with_metrics(app::router(state), metrics);
    tokio::spawn(async move { axum::serve(listener, router).await });
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();

    let created: Value = http
        .post(format!("{base}/users"))
        .json(&json!({ "name": "ada", "email": "ada@example.com" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_i64().unwrap();
    for _ in 0..2 {
        let response = http.get(format!("{base}/users/{id}")).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series = |name: &str| {
        text.lines()
            .find(|line| line.starts_with(name) && line.contains(r#"template="user-{id}""#))
            .unwrap_or_else(|| panic!("no {name} for user-{{id}} in:\n{text}"))
            .to_owned()
    };
    assert!(series("cachify_hits_total").ends_with(" 1"), "{text}");
    assert!(series("cachify_misses_total").contains(r#"kind="cached""#));
    assert!(series("cachify_call_seconds").contains(r#"outcome="#));
    assert!(
        !text.contains(&format!("user-{id}\"")),
        "the rendered key is never a label:\n{text}"
    );
}
