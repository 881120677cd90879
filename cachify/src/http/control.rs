//! The `Cache-Control` header the layer sends on the responses it stores
//! and replays.

use std::fmt;
use std::str::FromStr;

use axum::http::HeaderValue;

use crate::error::Error;

/// Directives whose argument must be a number of seconds (RFC 9111, 5.2
/// and RFC 5861): a typo such as `max-age=5m` is refused, not sent.
const SECONDS: [&str; 4] = [
    "max-age",
    "s-maxage",
    "stale-while-revalidate",
    "stale-if-error",
];

/// Directives that allow shared caches to keep a response; dropped from
/// replies cached per credential, which only the user's own cache may keep.
const SHARED_ONLY: [&str; 2] = ["public", "s-maxage"];

/// The `Cache-Control` header [`CacheLayer`](super::CacheLayer) puts on the
/// responses it stores (the `MISS`) and answers from the cache (the `HIT`s),
/// set with [`CacheLayer::cache_control`](super::CacheLayer::cache_control).
///
/// A handler that sets its own `Cache-Control` on a response that is stored
/// keeps it: this policy applies only to responses without one. Replies
/// cached per credential always say `private`.
///
/// ```
/// use cachify::http::CacheControl;
///
/// // The default: `max-age=<seconds until the entry expires>`.
/// let counting_down = CacheControl::remaining_ttl();
/// // The same text on every reply, checked here rather than at request time.
/// let fixed = CacheControl::fixed("public, max-age=300, stale-while-revalidate=30")?;
/// // No header: downstream caches use their own rules.
/// let none = CacheControl::omitted();
///
/// assert!(CacheControl::fixed("max-age=5m").is_err());
/// assert!("no-cache".parse::<CacheControl>().is_ok());
/// # Ok::<(), cachify::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct CacheControl {
    policy: Policy,
}

#[derive(Clone, PartialEq, Eq)]
enum Policy {
    RemainingTtl,
    /// The text as given, and the form sent on replies cached per credential.
    Fixed {
        shared: HeaderValue,
        private: HeaderValue,
    },
    Omitted,
}

impl CacheControl {
    /// `max-age=<seconds until the entry expires>`, counted from the expiry
    /// time kept in the entry, so it decreases as the entry ages and is the
    /// same in every process. The default.
    pub const fn remaining_ttl() -> Self {
        Self {
            policy: Policy::RemainingTtl,
        }
    }

    /// The same directives on every reply, such as `"public, max-age=300"`
    /// or `"no-cache"` (browsers revalidate, using the `ETag`, while the
    /// layer keeps serving its entry).
    ///
    /// `directives` is a comma-separated list of `name` or `name=value`,
    /// the value a token or a quoted string. `max-age`, `s-maxage`,
    /// `stale-while-revalidate` and `stale-if-error` need a number of
    /// seconds. Anything else is an [`Error::Config`] naming what is wrong.
    ///
    /// On replies cached per credential
    /// ([`CacheLayer::cache_authorized`](super::CacheLayer::cache_authorized)),
    /// `public` and `s-maxage` are left out and `private` is added unless
    /// `private` or `no-store` is already there.
    ///
    /// ```
    /// use cachify::http::CacheControl;
    ///
    /// let error = CacheControl::fixed("public,, max-age=60").unwrap_err();
    /// assert!(error.to_string().contains("empty directive"), "{error}");
    /// ```
    pub fn fixed(directives: &str) -> Result<Self, Error> {
        let parsed = parse(directives).map_err(|reason| {
            Error::Config(format!("invalid Cache-Control `{directives}`: {reason}"))
        })?;
        let private = private_form(&parsed);
        let header = |text: &str| {
            HeaderValue::from_str(text).map_err(|error| {
                Error::Config(format!("invalid Cache-Control `{directives}`: {error}"))
            })
        };
        Ok(Self {
            policy: Policy::Fixed {
                shared: header(&parsed.join(", "))?,
                private: header(&private)?,
            },
        })
    }

    /// No `Cache-Control` header (replies cached per credential still say
    /// `private`): downstream caches fall back on their own rules.
    pub const fn omitted() -> Self {
        Self {
            policy: Policy::Omitted,
        }
    }

    /// The header for a reply whose entry has `max_age` seconds left;
    /// `private` when the entry belongs to one credential.
    pub(super) fn header(&self, private: bool, max_age: u64) -> Option<HeaderValue> {
        match &self.policy {
            Policy::RemainingTtl if private => {
                HeaderValue::from_str(&format!("private, max-age={max_age}")).ok()
            }
            Policy::RemainingTtl => HeaderValue::from_str(&format!("max-age={max_age}")).ok(),
            Policy::Fixed { private: value, .. } if private => Some(value.clone()),
            Policy::Fixed { shared, .. } => Some(shared.clone()),
            Policy::Omitted if private => Some(HeaderValue::from_static("private")),
            Policy::Omitted => None,
        }
    }
}

impl Default for CacheControl {
    /// [`CacheControl::remaining_ttl`].
    fn default() -> Self {
        Self::remaining_ttl()
    }
}

impl FromStr for CacheControl {
    type Err = Error;

    /// [`CacheControl::fixed`].
    fn from_str(directives: &str) -> Result<Self, Error> {
        Self::fixed(directives)
    }
}

impl fmt::Debug for CacheControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.policy {
            Policy::RemainingTtl => f.write_str("CacheControl::remaining_ttl()"),
            Policy::Fixed { shared, .. } => write!(f, "CacheControl::fixed({shared:?})"),
            Policy::Omitted => f.write_str("CacheControl::omitted()"),
        }
    }
}

/// A `token` character (RFC 9110, 5.6.2).
fn is_tchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

/// The directives of `text`, each trimmed, or why it is not a valid list.
fn parse(text: &str) -> Result<Vec<&str>, String> {
    let mut directives = Vec::new();
    for directive in split_list(text)? {
        let directive = directive.trim_matches([' ', '\t']);
        if directive.is_empty() {
            return Err("empty directive".to_owned());
        }
        let (name, value) = match directive.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (directive, None),
        };
        if name.is_empty() || !name.bytes().all(is_tchar) {
            return Err(format!("`{name}` is not a directive name"));
        }
        match value {
            Some(value) if !valid_value(value) => {
                return Err(format!(
                    "`{name}` has the value `{value}`, neither a token nor a quoted string"
                ));
            }
            Some(value)
                if SECONDS
                    .iter()
                    .any(|wanted| name.eq_ignore_ascii_case(wanted))
                    && !value.bytes().all(|byte| byte.is_ascii_digit()) =>
            {
                return Err(format!(
                    "`{name}` needs a whole number of seconds, not `{value}`"
                ));
            }
            None if SECONDS
                .iter()
                .any(|wanted| name.eq_ignore_ascii_case(wanted)) =>
            {
                return Err(format!("`{name}` needs a number of seconds"));
            }
            _ => {}
        }
        directives.push(directive);
    }
    Ok(directives)
}

/// Splits on the commas outside quoted strings.
fn split_list(text: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (at, byte) in text.bytes().enumerate() {
        match byte {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b',' if !quoted => {
                parts.push(&text[start..at]);
                start = at + 1;
            }
            _ => {}
        }
    }
    if quoted {
        return Err("a quoted string is not closed".to_owned());
    }
    parts.push(&text[start..]);
    Ok(parts)
}

/// A token, or a quoted string of visible ASCII, spaces and tabs.
fn valid_value(value: &str) -> bool {
    if let Some(inner) = value
        .strip_prefix('"')
        .and_then(|rest| rest.strip_suffix('"'))
    {
        let mut escaped = false;
        return inner.bytes().all(|byte| {
            let allowed = byte == b'\t' || (b' '..=b'~').contains(&byte);
            let ends_early = byte == b'"' && !escaped;
            escaped = byte == b'\\' && !escaped;
            allowed && !ends_early
        }) && !escaped;
    }
    !value.is_empty() && value.bytes().all(is_tchar)
}

/// A handler's own header on a reply cached per credential: its directives
/// in their private form, so no shared cache keeps one user's reply; just
/// `private` when it does not parse.
pub(super) fn handler_private(own: &HeaderValue) -> HeaderValue {
    let private = own
        .to_str()
        .ok()
        .and_then(|text| parse(text).ok())
        .map(|directives| private_form(&directives))
        .and_then(|form| HeaderValue::from_str(&form).ok());
    private.unwrap_or_else(|| HeaderValue::from_static("private"))
}

/// The directives as sent on a reply cached per credential.
fn private_form(directives: &[&str]) -> String {
    let name = |directive: &str| directive.split('=').next().unwrap_or_default().to_owned();
    let already_private = directives.iter().any(|directive| {
        directive.eq_ignore_ascii_case("private")
            || name(directive).eq_ignore_ascii_case("no-store")
    });
    let mut kept: Vec<&str> = Vec::with_capacity(directives.len() + 1);
    if !already_private {
        kept.push("private");
    }
    kept.extend(directives.iter().copied().filter(|directive| {
        !SHARED_ONLY
            .iter()
            .any(|shared| name(directive).eq_ignore_ascii_case(shared))
    }));
    kept.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(control: &CacheControl, private: bool) -> Option<String> {
        control
            .header(private, 42)
            .map(|value| value.to_str().unwrap().to_owned())
    }

    #[test]
    fn each_policy_renders_its_header() {
        let remaining = CacheControl::default();
        assert_eq!(sent(&remaining, false).as_deref(), Some("max-age=42"));
        assert_eq!(
            sent(&remaining, true).as_deref(),
            Some("private, max-age=42")
        );
        let fixed = CacheControl::fixed(" public,max-age=300 ,\tx=\"a, b\"").unwrap();
        assert_eq!(
            sent(&fixed, false).as_deref(),
            Some("public, max-age=300, x=\"a, b\"")
        );
        assert_eq!(
            sent(&fixed, true).as_deref(),
            Some("private, max-age=300, x=\"a, b\"")
        );
        let omitted = CacheControl::omitted();
        assert_eq!(sent(&omitted, false), None);
        assert_eq!(sent(&omitted, true).as_deref(), Some("private"));
    }

    #[test]
    fn private_forms_drop_what_only_shared_caches_use() {
        let both = CacheControl::fixed("PUBLIC, s-maxage=600, max-age=60").unwrap();
        assert_eq!(sent(&both, true).as_deref(), Some("private, max-age=60"));
        let no_store = CacheControl::fixed("no-store").unwrap();
        assert_eq!(sent(&no_store, true).as_deref(), Some("no-store"));
        let private = CacheControl::fixed("Private, max-age=5").unwrap();
        assert_eq!(sent(&private, true).as_deref(), Some("Private, max-age=5"));
    }

    #[test]
    fn malformed_directives_are_refused_with_the_reason() {
        for (text, reason) in [
            ("", "empty directive"),
            ("public,,max-age=1", "empty directive"),
            ("public,", "empty directive"),
            ("max-age", "needs a number of seconds"),
            ("max-age=5m", "whole number of seconds"),
            ("S-MAXAGE=-1", "whole number of seconds"),
            ("stale-if-error=\"60\"", "whole number of seconds"),
            ("max age=5", "not a directive name"),
            ("=5", "not a directive name"),
            ("x=", "neither a token nor a quoted string"),
            ("x=a b", "neither a token nor a quoted string"),
            ("x=\"a\"b", "neither a token nor a quoted string"),
            ("x=\"open", "not closed"),
            ("x=\"é\"", "neither a token nor a quoted string"),
            ("no-cache\r\nx-evil: 1", "not a directive name"),
        ] {
            let error = CacheControl::fixed(text).expect_err(text).to_string();
            assert!(error.contains(reason), "`{text}`: {error}");
            assert!(error.contains("invalid Cache-Control"), "{error}");
        }
        assert!(CacheControl::fixed("x=\"a\\\"b\", no-transform").is_ok());
        assert!("immutable".parse::<CacheControl>().is_ok());
    }
}
