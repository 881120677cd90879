//! The macros on every kind of function: methods, generics, `impl Trait`,
//! borrowed arguments, patterns, attributes. Uses the global client (memory,
//! through the fallback), so it also covers code with no `client = ..`.

use std::fmt::Display;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use cachify::{cached, lock, once};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    id: i64,
    tenant: String,
}

/// axum's `Path` extractor, as a stand-in with the same shape.
pub struct Path<T>(pub T);

pub struct Repo {
    tenant: String,
    calls: AtomicU32,
}

impl Repo {
    /// Documented method: the doc comment and `#[inline]` must survive.
    #[inline]
    #[cached("repo-{self.tenant}-{id}")]
    pub async fn find(&self, id: i64) -> Result<User, String> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(User {
            id,
            tenant: self.tenant.clone(),
        })
    }

    #[cached("repo-mut-{id}")]
    pub fn find_mut(&mut self, id: i64) -> i64 {
        self.calls.fetch_add(1, Ordering::SeqCst);
        id * 10
    }

    #[once("repo-arc-{self.tenant}", return_on_locked = 0)]
    pub async fn arc_job(self: Arc<Self>) -> u32 {
        self.calls.fetch_add(1, Ordering::SeqCst);
        1 + u32::from(self.arc_job_is_locked().await.unwrap())
    }

    /// Associated function without a receiver.
    #[cached("repo-assoc-{name}")]
    pub fn assoc(name: &str) -> String {
        name.to_uppercase()
    }
}

#[tokio::test]
async fn methods_with_self_in_the_key() {
    let repo = Repo {
        tenant: "acme".into(),
        calls: AtomicU32::new(0),
    };
    let other = Repo {
        tenant: "globex".into(),
        calls: AtomicU32::new(0),
    };
    assert_eq!(repo.find(1).await.unwrap().tenant, "acme");
    assert_eq!(repo.find(1).await.unwrap().tenant, "acme");
    assert_eq!(
        other.find(1).await.unwrap().tenant,
        "globex",
        "self.tenant is part of the key"
    );
    assert_eq!(repo.calls.load(Ordering::SeqCst), 1);
    repo.find_reset(1).await.unwrap();
    repo.find(1).await.unwrap();
    assert_eq!(repo.calls.load(Ordering::SeqCst), 2);
}

#[test]
fn mut_self_and_associated_functions() {
    let mut repo = Repo {
        tenant: "t".into(),
        calls: AtomicU32::new(0),
    };
    assert_eq!(repo.find_mut(4), 40);
    assert_eq!(repo.find_mut(4), 40);
    assert_eq!(repo.calls.load(Ordering::SeqCst), 1);
    Repo::find_mut_reset(4).unwrap();
    assert_eq!(Repo::assoc("x"), "X");
    Repo::assoc_reset("x").unwrap();
}

#[tokio::test]
async fn arc_self_receiver() {
    let repo = Arc::new(Repo {
        tenant: "arc".into(),
        calls: AtomicU32::new(0),
    });
    assert_eq!(repo.clone().arc_job().await, 2, "held while running");
    assert!(!repo.arc_job_is_locked().await.unwrap());
    repo.arc_job_release().await.unwrap();
}

static GENERIC: AtomicU32 = AtomicU32::new(0);

#[cached("generic-{key}")]
fn generic<K, V>(key: K, make: impl Fn() -> V) -> V
where
    K: Display + Clone,
    V: Serialize + serde::de::DeserializeOwned + Clone + Send + Sync + 'static,
{
    GENERIC.fetch_add(1, Ordering::SeqCst);
    let _ = key.clone();
    make()
}

#[test]
fn generics_where_clauses_and_impl_trait() {
    assert_eq!(generic("a", || 5_u8), 5);
    assert_eq!(generic("a", || 6_u8), 5, "cached");
    assert_eq!(GENERIC.load(Ordering::SeqCst), 1);
    // The sibling keeps only the generics its parameters use.
    generic_reset("a").unwrap();
    assert_eq!(generic("a", || 6_u8), 6);
}

/// A generic type's methods: each names its sibling (with its type and
/// const arguments) to tell an inherent impl from a trait impl, which must
/// compile and leave calls as they were.
pub struct Shelf<T>(std::marker::PhantomData<T>);

static SHELF: AtomicU32 = AtomicU32::new(0);

impl<T: Display + Send + Sync + 'static> Shelf<T> {
    #[cached("shelf-items-{items:?}")]
    pub fn count<U: std::fmt::Debug + Clone, const N: usize>(&self, items: [U; N]) -> usize {
        SHELF.fetch_add(1, Ordering::SeqCst);
        items.len()
    }

    #[cached("shelf-label-{label}")]
    pub async fn label(&self, label: impl Display + Send) -> String
    where
        T: Clone,
    {
        SHELF.fetch_add(1, Ordering::SeqCst);
        format!("[{label}]")
    }

    /// No receiver and no `Self` in the signature, but in the body.
    #[cached("shelf-size-{id}")]
    pub fn size(id: usize) -> usize {
        SHELF.fetch_add(1, Ordering::SeqCst);
        std::mem::size_of::<Self>() + id
    }

    /// No receiver, but the signature names `Self`.
    #[lock("shelf-new-{name}")]
    pub fn named(name: &str) -> Result<Self, cachify::Error> {
        let _ = name;
        Ok(Self(std::marker::PhantomData))
    }
}

#[tokio::test]
async fn generic_impl_methods_and_their_siblings() {
    let shelf = Shelf::<String>::named("s").unwrap();
    assert!(!Shelf::<String>::named_is_locked("s").unwrap());
    let before = SHELF.load(Ordering::SeqCst);
    assert_eq!(shelf.count([1_u8, 2, 3]), 3);
    assert_eq!(shelf.count([1_u8, 2, 3]), 3, "cached");
    assert_eq!(SHELF.load(Ordering::SeqCst), before + 1);
    Shelf::<String>::count_reset::<u8, 3>([1, 2, 3]).unwrap();
    assert_eq!(shelf.count([1_u8, 2, 3]), 3);
    assert_eq!(SHELF.load(Ordering::SeqCst), before + 2);
    assert_eq!(shelf.label(7).await, "[7]");
    assert_eq!(shelf.label(7).await, "[7]", "cached");
    assert_eq!(SHELF.load(Ordering::SeqCst), before + 3);
    Shelf::<String>::label_reset(7).await.unwrap();
    assert_eq!(Shelf::<String>::size(2), 2);
    assert_eq!(Shelf::<String>::size(2), 2, "cached");
    assert_eq!(SHELF.load(Ordering::SeqCst), before + 4);
    assert_eq!(Shelf::<String>::size_clear().unwrap(), 1);
}

/// The check that names `#[cachify::trait_impl]` compiles under a
/// forbidden naming lint, and with a const parameter that shares its name
/// with a type in scope.
#[forbid(non_upper_case_globals, nonstandard_style)]
mod strict {
    use cachify::cached;

    #[allow(dead_code)]
    pub struct N;

    pub struct Crate;

    impl Crate {
        #[cached("strict-{items:?}")]
        pub fn len<const N: usize>(&self, items: [u8; N]) -> usize {
            items.len()
        }
    }
}

#[test]
fn strict_lints_and_const_parameters_named_like_types() {
    let shelf = strict::Crate;
    assert_eq!(shelf.len([1, 2]), 2);
    strict::Crate::len_reset::<2>([1, 2]).unwrap();
}

#[cached("display-{value}")]
async fn display_any(value: impl Display + Send) -> String {
    format!("<{value}>")
}

#[tokio::test]
async fn impl_trait_arguments() {
    assert_eq!(display_any(3).await, "<3>");
    assert_eq!(
        display_any("3").await,
        "<3>",
        "same rendered key, same entry"
    );
    display_any_reset(3).await.unwrap();
}

static PATHS: AtomicU32 = AtomicU32::new(0);

#[cached("path-{id}")]
async fn by_path(Path(id): Path<i64>, _unused: &str) -> Option<i64> {
    PATHS.fetch_add(1, Ordering::SeqCst);
    Some(id)
}

#[tokio::test]
async fn destructuring_patterns() {
    assert_eq!(by_path(Path(9), "x").await, Some(9));
    assert_eq!(by_path(Path(9), "y").await, Some(9));
    assert_eq!(PATHS.load(Ordering::SeqCst), 1);
    by_path_reset(Path(9)).await.unwrap();
    by_path(Path(9), "z").await;
    assert_eq!(PATHS.load(Ordering::SeqCst), 2);
}

#[cached("field-{user.id}-<user.tenant>")]
fn field_access(user: &User, mut factor: i64) -> i64 {
    factor += 1;
    user.id * factor
}

#[test]
fn field_access_and_angle_placeholders() {
    let user = User {
        id: 2,
        tenant: "t".into(),
    };
    assert_eq!(field_access(&user, 1), 4);
    assert_eq!(field_access(&user, 100), 4, "factor is not in the key");
    field_access_reset(&user).unwrap();
    assert_eq!(field_access(&user, 100), 202);
}

#[lock("lock-{id}", wait = std::time::Duration::from_millis(10))]
#[allow(clippy::needless_pass_by_value)]
fn with_other_attributes(id: String) -> Result<usize, cachify::Error> {
    Ok(id.len())
}

#[test]
fn other_attributes_survive() {
    assert_eq!(with_other_attributes("four".into()).unwrap(), 4);
    assert!(!with_other_attributes_is_locked("four".into()).unwrap());
}

/// Question marks, early returns and conversions inside bodies keep working.
#[cached("parse-{text}")]
async fn parse(text: &str) -> Result<i64, std::num::ParseIntError> {
    if text.is_empty() {
        return Ok(0);
    }
    let n: i64 = text.trim().parse()?;
    Ok(n)
}

#[cached("parse-sync-{text}")]
fn parse_sync(text: &str) -> Result<i64, Box<dyn std::error::Error + Send + Sync>> {
    if text.is_empty() {
        return Ok(0);
    }
    Ok(text.trim().parse::<i64>()?)
}

#[tokio::test]
async fn question_mark_and_early_return() {
    assert_eq!(parse("").await, Ok(0));
    assert_eq!(parse(" 12 ").await, Ok(12));
    assert!(parse("x").await.is_err());
    assert_eq!(parse_sync("").unwrap(), 0);
    assert!(parse_sync("x").is_err());
}

/// Generated futures stay `Send`, so handlers can run on a multi-thread runtime.
#[test]
fn futures_are_send() {
    fn assert_send<T: Send>(_: &T) {}
    let repo = Repo {
        tenant: "s".into(),
        calls: AtomicU32::new(0),
    };
    assert_send(&repo.find(1));
    assert_send(&by_path(Path(1), "s"));
    assert_send(&parse("1"));
}

/// A struct whose name ends in `Result` is a value, not a `Result`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchResult {
    hits: u32,
}

#[cached("search-{query}")]
fn search(query: &str) -> SearchResult {
    SearchResult {
        hits: query.len() as u32,
    }
}

#[test]
fn result_named_structs_are_cached_whole() {
    assert_eq!(search("abc"), SearchResult { hits: 3 });
    assert_eq!(search("abc"), SearchResult { hits: 3 });
    search_reset("abc").unwrap();
}

/// Data types that share a name with an HTTP response type are data: only
/// a status, headers, axum's own paths or a tuple with a bare `Json` are
/// refused as responses.
mod response_like_names {
    use std::sync::atomic::{AtomicU32, Ordering};

    use cachify::cached;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Redirect {
        from: String,
        to: String,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct Response {
        status: u16,
    }

    static RUNS: AtomicU32 = AtomicU32::new(0);

    #[cached("short-{code}")]
    fn redirect(code: u32) -> Option<Redirect> {
        RUNS.fetch_add(1, Ordering::SeqCst);
        Some(Redirect {
            from: format!("/s/{code}"),
            to: "/long".into(),
        })
    }

    #[cached("upstream-{id}")]
    fn upstream(id: u32) -> Result<(u32, Response), String> {
        RUNS.fetch_add(1, Ordering::SeqCst);
        Ok((id, Response { status: 200 }))
    }

    #[test]
    fn a_users_redirect_and_response_structs_are_cached() {
        assert_eq!(redirect(1), redirect(1));
        assert_eq!(upstream(2), upstream(2));
        assert_eq!(RUNS.load(Ordering::SeqCst), 2);
    }
}
