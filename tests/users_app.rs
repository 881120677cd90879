//! The users example app, driven over real HTTP on a free loopback port,
//! with cachify on Redis.

#[allow(dead_code)]
#[path = "../examples/users/app.rs"]
mod app;
mod support;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::{Value, json};

/// How long reads and updates take in the shared app (`USERS_SLOW_MS`).
const SLOW: Duration = Duration::from_millis(400);

struct Running {
    base: String,
    db: sqlx::SqlitePool,
}

/// One app for the whole test binary: the global client is per process, so
/// every test uses its own users rather than its own app.
fn app() -> &'static Running {
    static APP: OnceLock<Running> = OnceLock::new();
    APP.get_or_init(|| {
        let (ready, started) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().expect("a runtime for the app");
            runtime.block_on(async move {
                let client = cachify::Cachify::builder()
                    .redis(support::shared_server().url())
                    .prefix("users-test:")
                    .build()
                    .await
                    .expect("connect to the test Redis");
                cachify::init(client).expect("the only init in this binary");
                let dir =
                    std::env::temp_dir().join(format!("cachify-users-{}", std::process::id()));
                std::fs::create_dir_all(&dir).unwrap();
                let url = format!("sqlite://{}", dir.join("users.db").display());
                let _ = std::fs::remove_file(dir.join("users.db"));
                let db = app::connect_db(&url).await.expect("open the database");
                let state = Arc::new(app::AppState {
                    db: db.clone(),
                    slow: SLOW,
                });
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let base = format!("http://{}", listener.local_addr().unwrap());
                ready.send(Running { base, db }).unwrap();
                axum::serve(listener, app::router(state)).await.unwrap();
            });
        });
        started
            .recv_timeout(Duration::from_secs(30))
            .expect("the app started")
    })
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

async fn create(name: &str) -> Value {
    let response = http()
        .post(format!("{}/users", app().base))
        .json(&json!({ "name": name, "email": format!("{name}@example.com") }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    response.json().await.unwrap()
}

async fn get_user(id: i64) -> (u16, Value) {
    let response = http()
        .get(format!("{}/users/{id}", app().base))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn put_user(id: i64, name: &str) -> (u16, Value) {
    let response = http()
        .put(format!("{}/users/{id}", app().base))
        .json(&json!({ "name": name, "email": format!("{name}@example.com") }))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn create_then_read_through_the_cache() {
    let ada = create("ada").await;
    let id = ada["id"].as_i64().unwrap();
    assert_eq!(
        ada,
        json!({ "id": id, "name": "ada", "email": "ada@example.com" })
    );
    assert_eq!(get_user(id).await, (200, ada.clone()));

    // Change the row behind the app's back: the cached copy is still served.
    sqlx::query("UPDATE users SET name = 'changed' WHERE id = ?")
        .bind(id)
        .execute(&app().db)
        .await
        .unwrap();
    assert_eq!(
        get_user(id).await,
        (200, ada),
        "served by #[cached], not the database"
    );
}

#[tokio::test]
async fn an_unknown_user_is_a_json_404() {
    let (status, body) = get_user(987_654).await;
    assert_eq!(status, 404);
    assert_eq!(body, json!({ "error": "user 987654 not found" }));
}

#[tokio::test]
async fn an_update_resets_the_cached_user() {
    let id = create("bob").await["id"].as_i64().unwrap();
    assert_eq!(get_user(id).await.1["name"], "bob");
    let (status, updated) = put_user(id, "robert").await;
    assert_eq!(status, 200);
    assert_eq!(updated["name"], "robert");
    assert_eq!(
        get_user(id).await.1["name"],
        "robert",
        "the next GET shows the new data"
    );
}

#[tokio::test]
async fn a_concurrent_update_of_the_same_user_gets_226() {
    let id = create("cy").await["id"].as_i64().unwrap();
    let first = tokio::spawn(put_user(id, "first"));
    // Wait until the first update holds its lock, then try a second one.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let key = format!("users-test:once:update-user-{id}");
        let mut raw = support::shared_server().connection();
        let held: bool = redis::cmd("EXISTS").arg(&key).query(&mut raw).unwrap();
        if held {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the first update never took its lock"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let second = put_user(id, "second").await;
    assert_eq!(second, (226, json!({ "status": "Update in progress" })));
    assert_eq!(first.await.unwrap().0, 200);
    assert_eq!(get_user(id).await.1["name"], "first");
    // With the first one done, updates go through again.
    assert_eq!(put_user(id, "third").await.0, 200);
}

#[tokio::test]
async fn the_list_is_cached_and_cleared_by_writes() {
    let list = |skip: i64| async move {
        let response = http()
            .get(format!("{}/users?skip={skip}&limit=1000", app().base))
            .send()
            .await
            .unwrap();
        let cache = response.headers()["x-cachify"].to_str().unwrap().to_owned();
        let users: Vec<Value> = response.json().await.unwrap();
        (cache, users)
    };
    // Other tests write concurrently and clear the list too: look for a
    // HIT within a few tries.
    let mut hit = false;
    for _ in 0..10 {
        if list(0).await.0 == "HIT" {
            hit = true;
            break;
        }
    }
    assert!(hit, "a repeated list request is served from the HTTP cache");

    let dee = create("dee").await;
    let (cache, after) = list(0).await;
    assert_eq!(cache, "MISS", "a POST clears the list namespace");
    assert!(after.contains(&dee), "the new user shows at once");

    let id = dee["id"].as_i64().unwrap();
    assert_eq!(put_user(id, "deedee").await.0, 200);
    let (cache, after_update) = list(0).await;
    assert_eq!(cache, "MISS", "a PUT clears it too");
    assert!(
        after_update
            .iter()
            .any(|user| user["id"] == id && user["name"] == "deedee")
    );
}
