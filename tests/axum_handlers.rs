//! `#[cached]` on axum handlers themselves: `Json<T>`, `Result<Json<T>, E>`
//! and `Option<Json<T>>` store the `T`. Real servers on `127.0.0.1:0`,
//! real requests with reqwest, on memory, a single Redis and a cluster.

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cachify::{Cachify, cached};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    id: u64,
    name: String,
}

#[derive(Clone, Default)]
pub struct Db {
    users: Arc<Mutex<HashMap<u64, String>>>,
    reads: Arc<AtomicU32>,
}

impl Db {
    fn load(&self, id: u64) -> Option<User> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        let name = self.users.lock().unwrap().get(&id).cloned()?;
        Some(User { id, name })
    }

    fn reads(&self) -> u32 {
        self.reads.load(Ordering::SeqCst)
    }
}

#[derive(Debug)]
pub enum AppError {
    NotFound,
    Cache(cachify::Error),
}

impl From<cachify::Error> for AppError {
    fn from(error: cachify::Error) -> Self {
        AppError::Cache(error)
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        match self {
            AppError::NotFound => StatusCode::NOT_FOUND.into_response(),
            AppError::Cache(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
        }
    }
}

async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{address}")
}

macro_rules! handler_suite {
    () => {
        use super::*;

        #[cached("user-{id}", ttl = 60, client = client())]
        async fn get_user(
            State(db): State<Db>,
            Path(id): Path<u64>,
        ) -> Result<Json<User>, AppError> {
            db.load(id).map(Json).ok_or(AppError::NotFound)
        }

        #[cached("user-count", ttl = 60, client = client())]
        async fn user_count(State(db): State<Db>) -> Json<usize> {
            db.reads.fetch_add(1, Ordering::SeqCst);
            Json(db.users.lock().unwrap().len())
        }

        #[cached("maybe-user-{id}", ttl = 60, client = client())]
        fn maybe_user(db: &Db, id: u64) -> Option<Json<User>> {
            db.load(id).map(Json)
        }

        #[tokio::test]
        async fn a_json_handler_is_cached_by_its_body() {
            let db = Db::default();
            db.users.lock().unwrap().insert(1, "Ada".into());
            let router = Router::new()
                .route("/users/{id}", get(get_user))
                .route("/count", get(user_count))
                .with_state(db.clone());
            let base = serve(router).await;
            let http = reqwest::Client::new();
            let fetch = |path: String| {
                let http = http.clone();
                async move { http.get(path).send().await.unwrap() }
            };

            let first = fetch(format!("{base}/users/1")).await;
            assert_eq!(first.status(), 200);
            assert_eq!(first.json::<User>().await.unwrap().name, "Ada");
            let again = fetch(format!("{base}/users/1")).await;
            assert_eq!(again.json::<User>().await.unwrap().name, "Ada");
            assert_eq!(db.reads(), 1, "the second request was a hit");

            // Errors are not stored: a 404 becomes a 200 once the row exists.
            assert_eq!(fetch(format!("{base}/users/2")).await.status(), 404);
            db.users.lock().unwrap().insert(2, "Grace".into());
            let found = fetch(format!("{base}/users/2")).await;
            assert_eq!(found.json::<User>().await.unwrap().name, "Grace");
            assert_eq!(db.reads(), 3);

            // The sibling takes the parameters the key uses, as written.
            db.users.lock().unwrap().insert(1, "Ada L.".into());
            get_user_reset(Path(1)).await.unwrap();
            let renamed = fetch(format!("{base}/users/1")).await;
            assert_eq!(renamed.json::<User>().await.unwrap().name, "Ada L.");
            assert_eq!(db.reads(), 4);

            let count = fetch(format!("{base}/count"))
                .await
                .json::<usize>()
                .await
                .unwrap();
            assert_eq!(count, 2);
            let count = fetch(format!("{base}/count"))
                .await
                .json::<usize>()
                .await
                .unwrap();
            assert_eq!(count, 2);
            assert_eq!(db.reads(), 5, "Json<T> alone is cached too");
        }

        #[test]
        fn option_json_stores_some_and_skips_none() {
            let db = Db::default();
            assert!(maybe_user(&db, 9).is_none());
            db.users.lock().unwrap().insert(9, "Linus".into());
            assert_eq!(
                maybe_user(&db, 9).map(|json| json.0.name),
                Some("Linus".into())
            );
            assert_eq!(
                maybe_user(&db, 9).map(|json| json.0.name),
                Some("Linus".into())
            );
            assert_eq!(db.reads(), 2, "None was not stored, Some was");
        }
    };
}

mod memory {
    use super::*;

    fn client() -> &'static Cachify {
        static CLIENT: std::sync::OnceLock<Cachify> = std::sync::OnceLock::new();
        CLIENT.get_or_init(|| Cachify::builder().memory().build_blocking().unwrap())
    }

    mod suite {
        use super::client;
        handler_suite!();
    }
}

mod redis {
    use super::*;

    fn client() -> &'static Cachify {
        static CLIENT: std::sync::OnceLock<Cachify> = std::sync::OnceLock::new();
        CLIENT.get_or_init(|| {
            Cachify::builder()
                .redis(support::shared_server().url())
                .build_blocking()
                .unwrap()
        })
    }

    mod suite {
        use super::client;
        handler_suite!();
    }
}

mod cluster {
    use super::*;

    fn client() -> &'static Cachify {
        static CLIENT: std::sync::OnceLock<Cachify> = std::sync::OnceLock::new();
        CLIENT.get_or_init(|| {
            Cachify::builder()
                .redis_cluster(support::cluster::shared_cluster().seeds())
                .build_blocking()
                .unwrap()
        })
    }

    mod suite {
        use super::client;
        handler_suite!();
    }
}
