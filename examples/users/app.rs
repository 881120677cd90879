//! The users app: routes, handlers and the cached/locked data functions.
//! `main.rs` runs it; `tests/users_app.rs` includes this file and drives it
//! over real HTTP.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cachify::http::CacheLayer;
use cachify::{cached, once};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};

/// The HTTP cache namespace of the paginated list, cleared on every write.
pub const USERS_NAMESPACE: &str = "users";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub id: i64,
    pub name: String,
    pub email: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct NewUser {
    pub name: String,
    pub email: String,
}

#[derive(Debug, Deserialize)]
pub struct Page {
    #[serde(default)]
    pub skip: i64,
    #[serde(default = "default_limit")]
    pub limit: i64,
}

fn default_limit() -> i64 {
    20
}

pub struct AppState {
    pub db: SqlitePool,
    /// `USERS_SLOW_MS`: an artificial delay on reads and updates, so that
    /// caching and locking can be seen by hand.
    pub slow: Duration,
}

#[derive(Debug)]
pub enum AppError {
    NotFound(i64),
    /// Another update of the same user is running.
    Busy,
    Database(String),
    Cache(cachify::Error),
}

impl From<sqlx::Error> for AppError {
    fn from(error: sqlx::Error) -> Self {
        AppError::Database(error.to_string())
    }
}

impl From<cachify::Error> for AppError {
    fn from(error: cachify::Error) -> Self {
        AppError::Cache(error)
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, body) = match self {
            AppError::NotFound(id) => (
                StatusCode::NOT_FOUND,
                serde_json::json!({ "error": format!("user {id} not found") }),
            ),
            // 226 IM Used, as in the py-cachify tutorial.
            AppError::Busy => (
                StatusCode::IM_USED,
                serde_json::json!({ "status": "Update in progress" }),
            ),
            AppError::Database(error) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                serde_json::json!({ "error": error }),
            ),
            AppError::Cache(error) => (
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({ "error": error.to_string() }),
            ),
        };
        (status, Json(body)).into_response()
    }
}

/// Opens (creating if needed) the SQLite database and its table.
pub async fn connect_db(url: &str) -> Result<SqlitePool, sqlx::Error> {
    let options = SqliteConnectOptions::from_str(url)?.create_if_missing(true);
    let db = SqlitePoolOptions::new()
        .max_connections(5)
        .connect_with(options)
        .await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS users (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL,
            email TEXT NOT NULL
        )",
    )
    .execute(&db)
    .await?;
    Ok(db)
}

pub fn router(state: Arc<AppState>) -> Router {
    let list = Router::new()
        .route("/users", get(list_users).post(create_user))
        .route_layer(
            CacheLayer::new()
                .namespace(USERS_NAMESPACE)
                .ttl(Duration::from_secs(60)),
        );
    Router::new()
        .route("/users/{id}", get(get_user).put(update_user))
        .merge(list)
        .with_state(state)
}

/// Adds `GET /metrics`: the Prometheus text of everything recorded through
/// the `metrics` facade, cachify's `cachify_*` series included.
#[cfg(feature = "metrics")]
pub fn with_metrics(
    router: Router,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
) -> Router {
    router.route(
        "/metrics",
        get(move || std::future::ready(metrics.render())),
    )
}

fn user_from(row: &sqlx::sqlite::SqliteRow) -> User {
    User {
        id: row.get("id"),
        name: row.get("name"),
        email: row.get("email"),
    }
}

/// Cached for five minutes per user; an unknown id is an error, and
/// errors are never cached.
#[cached("user-{id}", ttl = 300)]
pub async fn read_user(id: i64, db: &SqlitePool, slow: Duration) -> Result<User, AppError> {
    tokio::time::sleep(slow).await;
    let row = sqlx::query("SELECT id, name, email FROM users WHERE id = ?")
        .bind(id)
        .fetch_optional(db)
        .await?;
    row.as_ref().map(user_from).ok_or(AppError::NotFound(id))
}

async fn get_user(
    State(state): State<Arc<AppState>>,
    Path(id): Path<i64>,
) -> Result<Json<User>, AppError> {
    Ok(Json(read_user(id, &state.db, state.slow).await?))
}

async fn create_user(
    State(state): State<Arc<AppState>>,
    Json(new): Json<NewUser>,
) -> Result<(StatusCode, Json<User>), AppError> {
    let row =
        sqlx::query("INSERT INTO users (name, email) VALUES (?, ?) RETURNING id, name, email")
            .bind(&new.name)
            .bind(&new.email)
            .fetch_one(&state.db)
            .await?;
    cachify::http::clear_namespace(cachify::global(), USERS_NAMESPACE).await?;
    Ok((StatusCode::CREATED, Json(user_from(&row))))
}

/// One update per user at a time, across every process on the same Redis;
/// a concurrent one gets 226 `{"status":"Update in progress"}`. While Redis
/// is unreachable the lock fails closed as `AppError::Cache` (503), not 226:
/// busy is not broken, so clients are not told to retry an outage.
#[once("update-user-{id}", return_on_locked = Err(AppError::Busy))]
async fn update_user(
    State(state): State<Arc<AppState>>,
    Path(id): Path<i64>,
    Json(new): Json<NewUser>,
) -> Result<Json<User>, AppError> {
    tokio::time::sleep(state.slow).await;
    let row =
        sqlx::query("UPDATE users SET name = ?, email = ? WHERE id = ? RETURNING id, name, email")
            .bind(&new.name)
            .bind(&new.email)
            .bind(id)
            .fetch_optional(&state.db)
            .await?
            .ok_or(AppError::NotFound(id))?;
    read_user_reset(id).await?;
    cachify::http::clear_namespace(cachify::global(), USERS_NAMESPACE).await?;
    Ok(Json(user_from(&row)))
}

/// Paginated list, cached whole by the HTTP layer for 60 s.
async fn list_users(
    State(state): State<Arc<AppState>>,
    Query(page): Query<Page>,
) -> Result<Json<Vec<User>>, AppError> {
    let rows = sqlx::query("SELECT id, name, email FROM users ORDER BY id LIMIT ? OFFSET ?")
        .bind(page.limit.clamp(0, 100))
        .bind(page.skip.max(0))
        .fetch_all(&state.db)
        .await?;
    Ok(Json(rows.iter().map(user_from).collect()))
}
