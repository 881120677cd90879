use axum::Json;
use axum::http::StatusCode;
use cachify::cached;

#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub struct User {
    id: u64,
}

#[cached("user-{id}", ttl = 60)]
async fn get_user(id: u64) -> (StatusCode, Json<User>) {
    (StatusCode::OK, Json(User { id }))
}

fn main() {}

#[cached("status-{id}", ttl = 60)]
async fn status(id: u64) -> Result<axum::response::Response, String> {
    Err(id.to_string())
}
