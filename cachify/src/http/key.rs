//! Keys of cached responses.
//!
//! A key reads as `{prefix}http:{namespace}:{request part}`, for example
//! `cachify:http:users:GET:/users?page=2&sort=name`. The `http:` tag differs
//! from every other tag cachify writes (`cache:`, `once:`, `lock:`,
//! `fence:`, `fill:`), so a response never shares a key with a cached
//! function or a lock. The namespace is escaped so it cannot contain `:`,
//! which makes `{prefix}http:{namespace}:` a prefix of exactly that
//! namespace's keys (clearing `users` leaves `users:admin` alone).

use std::fmt::Write;

use axum::http::{HeaderValue, Uri};
use sha2::{Digest, Sha256};

use crate::key::MAX_KEY_LEN;

/// The tag between the client's prefix and the namespace.
const TAG: &str = "http:";
/// How much of a long key is kept, readable, before its digest.
const LONG_KEY_HEAD: usize = 256;

/// `{prefix}http:{namespace}:`, the start of every key of one namespace.
pub(super) fn scope(prefix: &str, namespace: &str) -> String {
    let mut scope = String::with_capacity(prefix.len() + TAG.len() + namespace.len() + 1);
    scope.push_str(prefix);
    scope.push_str(TAG);
    for c in namespace.chars() {
        if c == ':' || c == '%' || c.is_whitespace() || c.is_control() {
            let mut utf8 = [0u8; 4];
            for byte in c.encode_utf8(&mut utf8).bytes() {
                let _ = write!(scope, "%{byte:02X}");
            }
        } else {
            scope.push(c);
        }
    }
    scope.push(':');
    scope
}

/// The full key: the scope, a digest of the credential when there is one,
/// then the request part (`GET:/path?sorted-query` or a custom key).
pub(super) fn full(scope: &str, credential: Option<&HeaderValue>, request: &str) -> String {
    let mut key = String::with_capacity(scope.len() + 38 + request.len());
    key.push_str(scope);
    if let Some(credential) = credential {
        // A digest, never the credential: keys are visible to anyone with
        // access to Redis. 128 bits keep credentials apart.
        key.push_str("auth.");
        push_hex(&mut key, &Sha256::digest(credential.as_bytes())[..16]);
        key.push(':');
    }
    key.push_str(request);
    shorten(key, scope.len())
}

/// The default request part: `GET:{path}?{query with sorted parameters}`.
/// HEAD requests use it too, so they are answered from GET entries.
pub(super) fn of_uri(uri: &Uri) -> String {
    let mut key = String::with_capacity(4 + uri.path().len() + 1 + uri.query().map_or(0, str::len));
    key.push_str("GET:");
    key.push_str(uri.path());
    if let Some(query) = uri.query() {
        let query = sorted_query(query);
        if !query.is_empty() {
            key.push('?');
            key.push_str(&query);
        }
    }
    key
}

/// Decodes the parameters (`+` and `%XX`), sorts them by name and encodes
/// them again, so that `b=2&a=1`, `a=1&b=2` and `a=%31&b=2` are one key.
/// Parameters with the same name keep their order: `a=1&a=2` is a list,
/// and may mean something else than `a=2&a=1`.
fn sorted_query(query: &str) -> String {
    let mut pairs: Vec<(Vec<u8>, Vec<u8>)> = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(name), decode(value))
        })
        .collect();
    pairs.sort_by(|left, right| left.0.cmp(&right.0));
    let mut sorted = String::with_capacity(query.len() + 8);
    for (at, (name, value)) in pairs.iter().enumerate() {
        if at > 0 {
            sorted.push('&');
        }
        encode(&mut sorted, name);
        sorted.push('=');
        encode(&mut sorted, value);
    }
    sorted
}

/// Form decoding: `+` is a space, `%XX` a byte; a stray `%` stays as it is.
fn decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let escaped = match bytes[at] {
            b'%' => bytes.get(at + 1..at + 3).and_then(hex_pair),
            _ => None,
        };
        match (escaped, bytes[at]) {
            (Some(byte), _) => {
                decoded.push(byte);
                at += 2;
            }
            (None, b'+') => decoded.push(b' '),
            (None, byte) => decoded.push(byte),
        }
        at += 1;
    }
    decoded
}

fn hex_pair(pair: &[u8]) -> Option<u8> {
    let digit = |c: u8| (c as char).to_digit(16);
    // Two hex digits are at most 255.
    Some((digit(pair[0])? * 16 + digit(pair[1])?) as u8)
}

/// Percent-encodes everything but unreserved characters, so `&`, `=`, `#`,
/// spaces and glob characters inside a value cannot forge the key's layout.
fn encode(out: &mut String, bytes: &[u8]) {
    for &byte in bytes {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
}

fn push_hex(out: &mut String, bytes: &[u8]) {
    for byte in bytes {
        let _ = write!(out, "{byte:02x}");
    }
}

/// Replaces the tail of an over-long key with a digest of the whole key,
/// keeping at least the scope so that clearing the namespace still finds it.
fn shorten(key: String, scope_len: usize) -> String {
    if key.len() <= MAX_KEY_LEN {
        return key;
    }
    let mut head = LONG_KEY_HEAD.max(scope_len);
    while !key.is_char_boundary(head) {
        head -= 1;
    }
    let mut short = String::with_capacity(head + 8 + 64);
    short.push_str(&key[..head]);
    short.push_str("#sha256:");
    push_hex(&mut short, &Sha256::digest(key.as_bytes()));
    short
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(uri: &str) -> String {
        of_uri(&uri.parse().unwrap())
    }

    #[test]
    fn reads_as_written() {
        assert_eq!(scope("cachify:", "users"), "cachify:http:users:");
        assert_eq!(
            full(&scope("cachify:", "users"), None, &part("/users?b=2&a=1")),
            "cachify:http:users:GET:/users?a=1&b=2"
        );
        assert_eq!(part("/"), "GET:/");
        assert_eq!(part("/x?"), "GET:/x");
    }

    #[test]
    fn parameter_order_and_spelling_do_not_matter() {
        assert_eq!(part("/s?a=1&b=2"), part("/s?b=2&a=1"));
        assert_eq!(part("/s?q=a+b"), part("/s?q=a%20b"));
        assert_eq!(part("/s?a=%31"), part("/s?a=1"));
        assert_eq!(part("/s?a&&b="), part("/s?b=&a="));
        assert_ne!(
            part("/s?a=1&a=2"),
            part("/s?a=2&a=1"),
            "lists keep their order"
        );
        assert_ne!(part("/s?a=1"), part("/s?a=2"));
    }

    #[test]
    fn values_cannot_forge_separators() {
        assert_ne!(part("/s?a=1%26b%3D2"), part("/s?a=1&b=2"));
        assert_eq!(part("/s?a=*%23%"), "GET:/s?a=%2A%23%25");
        assert_eq!(part("/s?a=%zz"), "GET:/s?a=%25zz");
    }

    #[test]
    fn namespaces_do_not_nest() {
        let users = scope("p:", "users");
        let admins = scope("p:", "users:admin");
        assert_eq!(admins, "p:http:users%3Aadmin:");
        assert!(!admins.starts_with(&users));
        assert_eq!(scope("p:", "a b%"), "p:http:a%20b%25:");
    }

    #[test]
    fn credentials_are_hashed_and_kept_apart() {
        let scope = scope("p:", "n");
        let alice = HeaderValue::from_static("Bearer alice-secret");
        let bob = HeaderValue::from_static("Bearer bob-secret");
        let key = full(&scope, Some(&alice), "GET:/me");
        assert!(!key.contains("alice"), "{key}");
        assert!(key.starts_with("p:http:n:auth."));
        assert!(key.ends_with(":GET:/me"));
        assert_eq!(key, full(&scope, Some(&alice), "GET:/me"));
        assert_ne!(key, full(&scope, Some(&bob), "GET:/me"));
        assert_ne!(key, full(&scope, None, "GET:/me"));
    }

    #[test]
    fn long_keys_are_shortened_within_their_namespace() {
        let scope = scope("p:", "n");
        let long = format!("GET:/s?q={}", "x".repeat(5000));
        let key = full(&scope, None, &long);
        assert!(key.len() <= MAX_KEY_LEN);
        assert!(key.starts_with(&scope));
        assert!(key.contains("#sha256:"));
        assert_eq!(key, full(&scope, None, &long));
        assert_ne!(key, full(&scope, None, &format!("{long}y")));
    }
}
