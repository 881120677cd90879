//! Query parameters left out of the key.

use std::borrow::Cow;

use axum::http::Uri;
use axum::http::request::Parts;
use axum::http::uri::PathAndQuery;

use crate::keyspace;

/// `query` without the parameters whose form-decoded name is one of
/// `ignored` (exactly, case included); the others stay as they were, in
/// their order. Borrowed when nothing is left out.
pub(super) fn without<'a>(query: &'a str, ignored: &[String]) -> Cow<'a, str> {
    let is_ignored = |pair: &&str| {
        let name = pair.split_once('=').map_or(*pair, |(name, _)| name);
        let name = keyspace::form_decode(name);
        ignored.iter().any(|ignored| ignored.as_bytes() == name)
    };
    if ignored.is_empty() || !query.split('&').any(|pair| is_ignored(&pair)) {
        return Cow::Borrowed(query);
    }
    let kept: Vec<&str> = query.split('&').filter(|pair| !is_ignored(pair)).collect();
    Cow::Owned(kept.join("&"))
}

/// A copy of the request head whose URI has `query` as its query (none
/// when empty), for a key function.
pub(super) fn with_query(parts: &Parts, query: &str) -> Parts {
    let path = parts.uri.path();
    let path_and_query = if query.is_empty() {
        PathAndQuery::try_from(path)
    } else {
        PathAndQuery::try_from(format!("{path}?{query}"))
    };
    let mut uri = parts.uri.clone().into_parts();
    let mut copy = parts.clone();
    // What is left of a valid query is valid: the URI always rebuilds.
    if let Ok(path_and_query) = path_and_query {
        uri.path_and_query = Some(path_and_query);
        if let Ok(rebuilt) = Uri::from_parts(uri) {
            copy.uri = rebuilt;
        }
    }
    copy
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ignored(names: &[&str]) -> Vec<String> {
        names.iter().map(|name| (*name).to_owned()).collect()
    }

    #[test]
    fn every_occurrence_of_an_ignored_name_is_left_out() {
        let utm = ignored(&["utm_source", "fbclid"]);
        assert_eq!(
            without("b=2&utm_source=x&a=1&utm_source=y&fbclid=z", &utm),
            "b=2&a=1"
        );
        assert_eq!(without("utm_source=x", &utm), "");
        assert_eq!(without("utm%5Fsource=x&utm+source=y", &utm), "utm+source=y");
        assert_eq!(without("utm_source&page=1", &utm), "page=1", "no value");
        assert!(matches!(
            without("UTM_SOURCE=x&a=1", &utm),
            Cow::Borrowed("UTM_SOURCE=x&a=1")
        ));
        assert!(matches!(without("utm_source=x", &[]), Cow::Borrowed(_)));
    }

    #[test]
    fn key_functions_see_the_query_left() {
        let (parts, ()) = axum::http::Request::get("http://example.test/a%20b?utm_source=x&q=1")
            .header("accept", "text/html")
            .body(())
            .unwrap()
            .into_parts();
        let kept = with_query(&parts, "q=1");
        assert_eq!(kept.uri, "http://example.test/a%20b?q=1");
        assert_eq!(kept.headers["accept"], "text/html");
        assert_eq!(with_query(&parts, "").uri, "http://example.test/a%20b");
    }
}
