use axum::response::IntoResponse;
use cachify::cached;

#[cached("user-{id}", ttl = 60)]
async fn get_user(id: u64) -> impl IntoResponse {
    format!("user {id}")
}

fn main() {}
