//! Which part of a `#[cached]` function's output is stored, and how an
//! output is rebuilt from it. The macro picks a policy from the return
//! type as written; policies nest, so `Result<Option<Json<User>>, E>` is
//! `OkOnly<Optional<JsonBody>>` and stores an `Option<User>`.
//!
//! - An `Err` is never stored ([`OkOnly`]), so errors are retried.
//! - A `None` is an *empty* output ([`Optional`]): it is stored only when
//!   the attribute gives `none_ttl`, and then for that long, so a row that
//!   did not exist yet is not reported missing for a whole TTL.
//! - axum's `Json<T>` stores its `T` ([`JsonBody`], feature `axum`).

use crate::value::CacheValue;

/// How a `#[cached]` function's output `R` is stored.
#[diagnostic::on_unimplemented(
    message = "`{R}` cannot be cached",
    note = "cached outputs must be `Serialize + DeserializeOwned + Clone + Send + Sync + 'static`, or `Result`, `Option` or axum's `Json` (feature `axum`) of such a type",
    note = "for an axum handler's response, cache an inner function that returns the data, or cache whole responses with `cachify::http::CacheLayer`"
)]
pub trait Policy<R> {
    /// The part that is stored.
    type Stored: CacheValue;

    /// The part to store, or `None` when this output must not be cached.
    fn stored(output: &R) -> Option<Self::Stored>;

    /// Whether a stored part is empty (a `None`): stored only with `none_ttl`.
    #[inline]
    fn is_empty(_stored: &Self::Stored) -> bool {
        false
    }

    /// Rebuilds an output from a stored value.
    fn restore(stored: Self::Stored) -> R;
}

/// The output as it is.
pub struct Whole;

impl<T: CacheValue> Policy<T> for Whole {
    type Stored = T;

    #[inline]
    fn stored(output: &T) -> Option<T> {
        Some(output.clone())
    }

    #[inline]
    fn restore(stored: T) -> T {
        stored
    }
}

/// `Result<T, E>`: the `Ok` part, stored as `P` stores `T`; an `Err` is
/// never stored.
pub struct OkOnly<P = Whole>(P);

impl<T, E, P: Policy<T>> Policy<Result<T, E>> for OkOnly<P> {
    type Stored = P::Stored;

    #[inline]
    fn stored(output: &Result<T, E>) -> Option<P::Stored> {
        P::stored(output.as_ref().ok()?)
    }

    #[inline]
    fn is_empty(stored: &P::Stored) -> bool {
        P::is_empty(stored)
    }

    #[inline]
    fn restore(stored: P::Stored) -> Result<T, E> {
        Ok(P::restore(stored))
    }
}

/// `Option<T>`: stored as `Option` of what `P` stores of `T`; `None` is empty.
pub struct Optional<P = Whole>(P);

impl<T, P: Policy<T>> Policy<Option<T>> for Optional<P> {
    type Stored = Option<P::Stored>;

    #[inline]
    fn stored(output: &Option<T>) -> Option<Option<P::Stored>> {
        match output {
            Some(value) => P::stored(value).map(Some),
            None => Some(None),
        }
    }

    #[inline]
    fn is_empty(stored: &Option<P::Stored>) -> bool {
        stored.is_none()
    }

    #[inline]
    fn restore(stored: Option<P::Stored>) -> Option<T> {
        stored.map(P::restore)
    }
}

/// axum's `Json<T>`: stores the `T` (feature `axum`).
pub struct JsonBody;

#[cfg(feature = "axum")]
impl<T: CacheValue> Policy<axum::Json<T>> for JsonBody {
    type Stored = T;

    #[inline]
    fn stored(output: &axum::Json<T>) -> Option<T> {
        Some(output.0.clone())
    }

    #[inline]
    fn restore(stored: T) -> axum::Json<T> {
        axum::Json(stored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn none_is_empty_at_any_depth_and_errors_are_not_stored() {
        assert!(<Optional as Policy<Option<u8>>>::is_empty(&None));
        assert!(!<Optional as Policy<Option<u8>>>::is_empty(&Some(1)));
        type Nested = OkOnly<Optional>;
        assert_eq!(
            <Nested as Policy<Result<Option<u8>, ()>>>::stored(&Ok(None)),
            Some(None)
        );
        assert!(<Nested as Policy<Result<Option<u8>, ()>>>::is_empty(&None));
        assert_eq!(
            <Nested as Policy<Result<Option<u8>, ()>>>::stored(&Err(())),
            None
        );
        assert_eq!(
            <Nested as Policy<Result<Option<u8>, ()>>>::restore(Some(4)),
            Ok(Some(4))
        );
        assert!(!<Whole as Policy<Option<u8>>>::is_empty(&None));
    }

    #[cfg(feature = "axum")]
    #[test]
    fn json_stores_its_body() {
        type Handler = OkOnly<Optional<JsonBody>>;
        let output: Result<Option<axum::Json<String>>, ()> = Ok(Some(axum::Json("a".into())));
        let stored = <Handler as Policy<_>>::stored(&output);
        assert_eq!(stored, Some(Some("a".to_owned())));
        let back: Result<Option<axum::Json<String>>, ()> =
            <Handler as Policy<_>>::restore(Some("b".to_owned()));
        assert_eq!(back.unwrap().unwrap().0, "b");
    }
}
