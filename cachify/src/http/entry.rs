//! What is stored for one response, and how it is replayed.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::http::header::{
    AGE, CACHE_CONTROL, CONNECTION, CONTENT_LENGTH, ETAG, HeaderName, IF_NONE_MATCH, SET_COOKIE,
    VARY,
};
use axum::http::{HeaderMap, HeaderValue, Response, StatusCode, response};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::CacheControl;

/// The header that says whether a response came from the cache.
pub(super) const X_CACHIFY: HeaderName = HeaderName::from_static("x-cachify");
pub(super) const HIT: HeaderValue = HeaderValue::from_static("HIT");
pub(super) const MISS: HeaderValue = HeaderValue::from_static("MISS");
/// Answered from an entry past its freshness (stale-while-revalidate or
/// stale-if-error).
pub(super) const STALE: HeaderValue = HeaderValue::from_static("STALE");

/// Response headers that are never stored: hop-by-hop headers, headers
/// that belong to one response only (`Date`, `Set-Cookie`), and the ones
/// the cache writes itself on every reply. A handler's `Cache-Control` is
/// stored: it is replayed instead of the layer's.
const NOT_STORED: [&str; 15] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "set-cookie",
    "date",
    "age",
    "expires",
    "content-length",
    "x-cachify",
];

/// One cached response. The memory backend keeps it as it is (the body is
/// shared, not copied); Redis stores it with the client's codec, the body
/// and header values as binary strings.
#[derive(Clone, Serialize, Deserialize)]
pub(super) struct Entry {
    status: u16,
    /// Lower-case names, raw values, in the handler's order.
    headers: Vec<(String, Bytes)>,
    body: Bytes,
    /// When the response was stored, in milliseconds since the Unix epoch:
    /// the `Age` of a replayed handler `Cache-Control` counts from it.
    stored_at: u64,
    /// When the entry stops being fresh, in milliseconds since the Unix
    /// epoch: kept in the entry so that every process reports the same
    /// remaining max-age. With stale serving the backend keeps the entry
    /// longer; without it, this is also when the backend drops it.
    expires_at: u64,
    /// The request headers named by the response's `Vary`, as they were
    /// when it was stored. A request that differs in one of them is a miss.
    vary: Vec<(String, Option<Bytes>)>,
}

/// Now, in milliseconds since the Unix epoch.
pub(super) fn now() -> u64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

/// Whether the `Cache-Control` headers hold any of `directives`
/// (case-insensitive, with or without an argument).
pub(super) fn has_directive(headers: &HeaderMap, directives: &[&str]) -> bool {
    headers
        .get_all(CACHE_CONTROL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|directive| directive.split('=').next().unwrap_or_default().trim())
        .any(|name| {
            directives
                .iter()
                .any(|wanted| name.eq_ignore_ascii_case(wanted))
        })
}

/// Whether a response may be stored, judging by its status and headers:
/// a 2xx (not a partial 206), that does not forbid shared caching, sets no
/// cookie and does not vary on everything.
pub(super) fn storable(parts: &response::Parts) -> bool {
    parts.status.is_success()
        && parts.status != StatusCode::PARTIAL_CONTENT
        && !has_directive(&parts.headers, &["no-store", "private", "no-cache"])
        && !parts.headers.contains_key(SET_COOKIE)
        && !vary_names(&parts.headers).any(|name| name == "*")
}

/// The header names listed by `Vary`, lower-cased.
fn vary_names(headers: &HeaderMap) -> impl Iterator<Item = String> + '_ {
    headers
        .get_all(VARY)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .filter(|name| !name.is_empty())
}

/// All values of a request header, joined as one field value.
fn request_value(request: &HeaderMap, name: &str) -> Option<Bytes> {
    let mut values = request.get_all(name).iter();
    let first = values.next()?;
    let mut joined = first.as_bytes().to_vec();
    for value in values {
        joined.extend_from_slice(b", ");
        joined.extend_from_slice(value.as_bytes());
    }
    Some(joined.into())
}

/// A strong ETag that is the SHA-256 of the body: the same in every
/// process, across restarts, for the same bytes.
fn etag_of(body: &[u8]) -> Bytes {
    let mut etag = Vec::with_capacity(66);
    etag.push(b'"');
    for byte in Sha256::digest(body) {
        etag.extend_from_slice(format!("{byte:02x}").as_bytes());
    }
    etag.push(b'"');
    etag.into()
}

/// Splits an `If-None-Match` list on the commas outside quoted tags.
fn entity_tags(list: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut quoted = false;
    list.split(move |&byte| {
        if byte == b'"' {
            quoted = !quoted;
        }
        byte == b',' && !quoted
    })
    .map(<[u8]>::trim_ascii)
    .filter(|tag| !tag.is_empty())
}

/// Weak comparison (RFC 9110, 8.8.3.2), as `If-None-Match` requires.
fn weak_eq(left: &[u8], right: &[u8]) -> bool {
    fn opaque(tag: &[u8]) -> &[u8] {
        tag.strip_prefix(b"W/").unwrap_or(tag)
    }
    opaque(left) == opaque(right)
}

/// Whether the request's `If-None-Match` matches `etag`.
fn none_match(request: &HeaderMap, etag: &[u8]) -> bool {
    request
        .get_all(IF_NONE_MATCH)
        .iter()
        .flat_map(|value| entity_tags(value.as_bytes()))
        .any(|tag| tag == b"*" || weak_eq(tag, etag))
}

/// How a reply is sent.
pub(super) struct Reply<'a> {
    /// The request's headers (for `If-None-Match`).
    pub(super) request: &'a HeaderMap,
    /// HEAD: headers only.
    pub(super) head: bool,
    /// The request carried credentials: downstream caches must not share it.
    pub(super) private: bool,
    /// What to say when the handler set no `Cache-Control`.
    pub(super) cache_control: &'a CacheControl,
    /// `HIT`, `MISS` or `STALE`.
    pub(super) outcome: HeaderValue,
}

impl Entry {
    /// Builds an entry from a storable response and its whole body.
    pub(super) fn new(
        parts: &response::Parts,
        body: Bytes,
        request: &HeaderMap,
        stored_at: u64,
        expires_at: u64,
    ) -> Self {
        // Headers named by `Connection` are hop-by-hop too.
        let per_connection: Vec<String> = parts
            .headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(|name| name.trim().to_ascii_lowercase())
            .collect();
        let mut headers: Vec<(String, Bytes)> = parts
            .headers
            .iter()
            .filter(|(name, _)| {
                !NOT_STORED.contains(&name.as_str())
                    && !per_connection.iter().any(|hop| hop == name.as_str())
            })
            .map(|(name, value)| {
                (
                    name.as_str().to_owned(),
                    Bytes::copy_from_slice(value.as_bytes()),
                )
            })
            .collect();
        // An ETag the handler chose (a version, say) is kept.
        if !parts.headers.contains_key(ETAG) {
            headers.push((ETAG.as_str().to_owned(), etag_of(&body)));
        }
        let vary = vary_names(&parts.headers)
            .map(|name| {
                let value = request_value(request, &name);
                (name, value)
            })
            .collect();
        Entry {
            status: parts.status.as_u16(),
            headers,
            body,
            stored_at,
            expires_at,
            vary,
        }
    }

    /// Whether `request` agrees on every header the response varies on,
    /// and the stored status is one that can be replayed.
    pub(super) fn matches(&self, request: &HeaderMap) -> bool {
        StatusCode::from_u16(self.status).is_ok()
            && self
                .vary
                .iter()
                .all(|(name, value)| request_value(request, name) == *value)
    }

    /// Whether the entry is still fresh at `now`.
    pub(super) fn is_fresh(&self, now: u64) -> bool {
        self.expires_at > now
    }

    /// Whether `now` is no later than `window` after the entry stopped
    /// being fresh (a fresh entry is within any window).
    pub(super) fn stale_within(&self, now: u64, window: Duration) -> bool {
        let window = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        self.expires_at.saturating_add(window) > now
    }

    /// The `Age` of this entry at `now`: whole seconds since it was stored.
    fn age(&self, now: u64) -> HeaderValue {
        HeaderValue::from(Duration::from_millis(now.saturating_sub(self.stored_at)).as_secs())
    }

    fn header(&self, name: &HeaderName) -> Option<&Bytes> {
        self.headers
            .iter()
            .find(|(stored, _)| stored == name.as_str())
            .map(|(_, value)| value)
    }

    /// The response: a `304 Not Modified` when the request's
    /// `If-None-Match` matches, else the stored status, headers and body.
    /// Both carry `x-cachify`, and the handler's `Cache-Control` with an
    /// `Age` on hits, or else the layer's.
    pub(super) fn respond(&self, reply: &Reply<'_>, now: u64) -> Response<Body> {
        let not_modified = self
            .header(&ETAG)
            .is_some_and(|etag| none_match(reply.request, etag));
        let mut response = Response::new(Body::empty());
        let headers = response.headers_mut();
        for (name, value) in &self.headers {
            // A 304 carries the validator, `Vary`, `Content-Location` and the
            // caching directives (RFC 9110, 15.4.5), nothing else stored.
            if not_modified
                && !matches!(
                    name.as_str(),
                    "etag" | "vary" | "content-location" | "cache-control"
                )
            {
                continue;
            }
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_maybe_shared(value.clone()),
            ) {
                headers.append(name, value);
            }
        }
        if let Some(own) = headers.get(CACHE_CONTROL) {
            if reply.private {
                let private = super::control::handler_private(own);
                headers.insert(CACHE_CONTROL, private);
            }
            // The handler's freshness counts from when it answered.
            if reply.outcome == HIT || reply.outcome == STALE {
                headers.insert(AGE, self.age(now));
            }
        } else {
            // A stale entry has no time left: `max-age=0` by default.
            let max_age = Duration::from_millis(self.expires_at.saturating_sub(now)).as_secs();
            if let Some(value) = reply.cache_control.header(reply.private, max_age) {
                headers.insert(CACHE_CONTROL, value);
            }
            // Says the reply was not produced for this request (RFC 9111, 5.1).
            if reply.outcome == STALE {
                headers.insert(AGE, self.age(now));
            }
        }
        headers.insert(X_CACHIFY, reply.outcome.clone());
        if not_modified {
            *response.status_mut() = StatusCode::NOT_MODIFIED;
            return response;
        }
        headers.insert(CONTENT_LENGTH, HeaderValue::from(self.body.len()));
        // `matches` checked the status.
        *response.status_mut() = StatusCode::from_u16(self.status).unwrap_or(StatusCode::OK);
        if !reply.head {
            *response.body_mut() = Body::from(self.body.clone());
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(status: u16, headers: &[(&'static str, &'static str)]) -> response::Parts {
        let mut builder = Response::builder().status(status);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap().into_parts().0
    }

    fn request(headers: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn only_shareable_successes_are_stored() {
        assert!(storable(&parts(200, &[])));
        assert!(storable(&parts(
            203,
            &[("cache-control", "public, max-age=5")]
        )));
        assert!(!storable(&parts(500, &[])));
        assert!(!storable(&parts(304, &[])));
        assert!(!storable(&parts(206, &[])));
        assert!(!storable(&parts(200, &[("cache-control", "No-Store")])));
        assert!(!storable(&parts(
            200,
            &[("cache-control", "private=\"x\"")]
        )));
        assert!(!storable(&parts(
            200,
            &[("cache-control", "max-age=1, no-cache")]
        )));
        assert!(!storable(&parts(200, &[("set-cookie", "a=b")])));
        assert!(!storable(&parts(200, &[("vary", "accept, *")])));
    }

    #[test]
    fn hop_by_hop_and_per_response_headers_are_not_stored() {
        let response = parts(
            201,
            &[
                ("content-type", "text/plain"),
                ("x-custom", "1"),
                ("connection", "x-hop"),
                ("x-hop", "gone"),
                ("date", "yesterday"),
                ("transfer-encoding", "chunked"),
                ("cache-control", "public"),
            ],
        );
        let entry = Entry::new(
            &response,
            Bytes::from_static(b"hi"),
            &HeaderMap::new(),
            0,
            1,
        );
        let names: Vec<&str> = entry
            .headers
            .iter()
            .map(|(name, _)| name.as_str())
            .collect();
        assert_eq!(names, ["content-type", "x-custom", "cache-control", "etag"]);
    }

    #[test]
    fn etags_are_stable_hashes_of_the_body() {
        assert_eq!(etag_of(b"hello"), etag_of(b"hello"));
        assert_ne!(etag_of(b"hello"), etag_of(b"hellO"));
        assert_eq!(
            &etag_of(b"")[..],
            b"\"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\""
        );
    }

    #[test]
    fn if_none_match_lists_and_weak_tags() {
        let etag = b"\"a,b\"";
        assert!(none_match(
            &request(&[("if-none-match", "\"x\", \"a,b\"")]),
            etag
        ));
        assert!(none_match(
            &request(&[("if-none-match", "W/\"a,b\"")]),
            etag
        ));
        assert!(none_match(&request(&[("if-none-match", "*")]), etag));
        assert!(!none_match(&request(&[("if-none-match", "\"a\"")]), etag));
        assert!(!none_match(&request(&[]), etag));
    }

    #[test]
    fn vary_headers_must_agree() {
        let response = parts(200, &[("vary", "Accept-Language")]);
        let stored_for = request(&[("accept-language", "fr")]);
        let entry = Entry::new(&response, Bytes::new(), &stored_for, 0, u64::MAX);
        assert!(entry.matches(&stored_for));
        assert!(!entry.matches(&request(&[("accept-language", "de")])));
        assert!(!entry.matches(&request(&[])));
    }

    #[test]
    fn freshness_and_stale_windows() {
        let entry = Entry::new(&parts(200, &[]), Bytes::new(), &HeaderMap::new(), 0, 1_000);
        assert!(entry.is_fresh(999));
        assert!(!entry.is_fresh(1_000), "expired");
        assert!(
            entry.stale_within(999, Duration::ZERO),
            "fresh is within any window"
        );
        assert!(!entry.stale_within(1_000, Duration::ZERO));
        assert!(entry.stale_within(1_999, Duration::from_secs(1)));
        assert!(!entry.stale_within(2_000, Duration::from_secs(1)));
        assert!(
            entry.stale_within(u64::MAX - 1, Duration::MAX),
            "no overflow"
        );
    }
}
