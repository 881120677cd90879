//! The key space: the layout of every key cachify writes, in one place.
//!
//! | what | layout | example |
//! |---|---|---|
//! | `#[cached]` entry | `{prefix}cache:{rendered}` | `cachify:cache:user-42` |
//! | `#[once]` lock | `{prefix}once:{rendered}` | `cachify:once:update-7` |
//! | `#[lock]`, [`crate::lock()`] | `{prefix}lock:{name}` | `cachify:lock:nightly` |
//! | fill lock of `#[cached(lock = true)]`, and of `early_refresh`'s background refresh | `{prefix}fill:{entry key without prefix}` | `cachify:fill:cache:user-42` |
//! | note that a filler ran and stored nothing (its fill lock token, briefly) | `{prefix}unstored:{entry key without prefix}` | `cachify:unstored:cache:user-42` |
//! | fencing counter of a lock | `{prefix}fence:{` + lock key + `}` | `cachify:fence:{cachify:lock:nightly}` |
//! | HTTP response | `{prefix}http:{namespace}:{request}` | `cachify:http:users:GET:/users?a=1` |
//! | refresh lock of an HTTP response served stale | `{prefix}fill:{entry key without prefix}` | `cachify:fill:http:users:GET:/users?a=1` |
//! | version of a tag (`tags = [..]`) | `{prefix}tag:{` + encoded tag + `}:v` | `cachify:tag:{user:42}:v` |
//! | index of a tag's entries | `{prefix}tag:{` + encoded tag + `}:i` | `cachify:tag:{user:42}:i` |
//! | `#[pooled]`, [`crate::pool()`] (a sorted set: slot token -> lease end) | `{prefix}pool:{name}` | `cachify:pool:exports` |
//! | waiters of a lock or pool, in arrival order | `{prefix}queue:{` + lock or pool key + `}` | `cachify:queue:{cachify:lock:nightly}`, `cachify:queue:{cachify:pool:exports}` |
//! | when each waiter's place lapses | `{prefix}beats:{` + lock or pool key + `}` | `cachify:beats:{cachify:lock:nightly}` |
//! | pub/sub channel of a lock's or pool's releases | `{prefix}wake:{` + lock or pool key + `}` | `cachify:wake:{cachify:lock:nightly}` |
//!
//! Each tag (`cache:`, `once:`, `lock:`, `fill:`, `unstored:`, `fence:`, `http:`, `tag:`, `pool:`,
//! `queue:`, `beats:`, `wake:`)
//! differs from the others, so kinds never share a key.
//!
//! **Tags.** A tag's version and index share one hash tag, the encoded tag
//! (or the prefix's own tag), so a script can touch both on a cluster. The
//! tag is encoded like a value (`%`, `#`, braces, whitespace and glob
//! characters as `%XX`), so it cannot end the hash tag early; the empty tag
//! is `%` (which no encoded tag is) and a tag longer than
//! [`MAX_TAG_LEN`] bytes is `#sha256:` and its digest.
//! A `#[cached]` entry of a function with `stale_if_error` or
//! `early_refresh` holds its value in an envelope with its metadata (see
//! `entry.rs`), under the same key.
//!
//! **Hash tags (Redis Cluster).** The lock scripts touch several keys:
//! the lock, its fencing counter and its waiter queue (two sorted sets),
//! and they publish on the lock's channel (sharded pub/sub on a cluster,
//! whose channels are hashed like keys). Each of these wraps the whole lock
//! key in `{…}`, which makes Redis hash it exactly like the lock key, so
//! all live in one slot. When the lock key already holds a hash tag (from
//! the prefix, `{app}:`, or from a lock name such as `{tenant}:job`), they
//! keep that tag instead: `{prefix}fence:` (or `queue:`, …) and the rest of
//! the lock key. A pool's line is built the same way around the pool key. Interpolated values escape `{` and `}`, so a value can never create
//! or move a tag.
//!
//! **Injectivity.** An interpolated value is percent-encoded for `%`, for
//! the first character of the literal text that follows its placeholder
//! (the "stop" character), and for a fixed set of characters that must
//! never appear raw (control characters, whitespace, glob metacharacters,
//! `#`, braces). Read left to right, an encoded value is a sequence of
//! tokens: `%XX` (always three characters, since `%` never appears raw) or
//! one raw character that is never the stop character. The first raw stop
//! character outside a `%XX` token therefore ends the value; and since the
//! macros refuse two placeholders with no literal text between them, every
//! value but the last has one. So different argument tuples render
//! different keys, even when the stop character is a hex digit.
//!
//! **Length.** Keys longer than [`MAX_KEY_LEN`] bytes keep a readable head
//! and end in `#sha256:` and a digest of the whole key; `#` never appears
//! raw in a value, so a shortened key cannot be forged.

use std::fmt::{self, Display, Write};

use sha2::{Digest, Sha256};

use crate::error::Error;

/// Which macro (or API) a key belongs to. Each kind has its own key space, so
/// `#[cached]`, `#[once]` and `#[lock]` with the same template never collide.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// `#[cached]` entries.
    Cached,
    /// `#[once]` locks.
    Once,
    /// `#[lock]` locks and [`crate::lock()`] values.
    Lock,
    /// `#[pooled]` pools and [`crate::pool()`] values.
    Pool,
}

impl KeyKind {
    /// The tag written between the prefix and the rendered template.
    pub const fn tag(self) -> &'static str {
        match self {
            KeyKind::Cached => "cache:",
            KeyKind::Once => "once:",
            KeyKind::Lock => "lock:",
            KeyKind::Pool => "pool:",
        }
    }
}

/// Tags of derived keys; they differ from every [`KeyKind::tag`].
const FILL_TAG: &str = "fill:";
const UNSTORED_TAG: &str = "unstored:";
const FENCE_TAG: &str = "fence:";
const QUEUE_TAG: &str = "queue:";
const BEATS_TAG: &str = "beats:";
const WAKE_TAG: &str = "wake:";
#[cfg(feature = "axum")]
const HTTP_TAG: &str = "http:";
const TAG_TAG: &str = "tag:";

/// Encoded tags longer than this many bytes are replaced by a digest.
pub const MAX_TAG_LEN: usize = 512;

/// A key template, parsed and checked at compile time by the macros.
#[derive(Debug)]
pub struct KeyTemplate {
    /// The template as the user wrote it (shown by `Debug`, and a size hint).
    pub text: &'static str,
    /// Literal text and value slots, in order.
    pub pieces: &'static [Piece],
}

/// One part of a [`KeyTemplate`].
#[derive(Debug)]
pub enum Piece {
    /// Literal text, with `{{`/`}}`/`<<`/`>>` escapes already resolved.
    Text(&'static str),
    /// The next interpolated value. `stop` is the first character of the
    /// literal text that follows, or `None` when the value ends the template.
    Value {
        /// Escaped in this value so it cannot end the value early.
        stop: Option<char>,
    },
}

/// Keys longer than this many bytes are shortened with a SHA-256 digest.
pub const MAX_KEY_LEN: usize = 1024;
/// How much of a long key is kept, readable, before its digest.
const LONG_KEY_HEAD: usize = 256;

/// The keys of one client: its prefix, and every layout built on it.
#[derive(Clone, Debug)]
pub(crate) struct Keyspace {
    prefix: String,
}

/// The keys of a lock's waiters, all in the lock key's cluster slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Line {
    /// The waiters in arrival order: a sorted set of their tokens, scored
    /// by arrival (the server's clock in microseconds).
    pub(crate) queue: String,
    /// When each waiter's place lapses unless it tries again: a sorted set
    /// of their tokens, scored by deadline (the server's clock in ms).
    pub(crate) beats: String,
    /// Where releases are published.
    pub(crate) channel: String,
}

impl Default for Keyspace {
    /// The default prefix, `cachify:`.
    fn default() -> Self {
        Self {
            prefix: "cachify:".to_owned(),
        }
    }
}

impl Keyspace {
    /// Checks the prefix: braces in it must form one whole Redis hash tag
    /// (`{app}:`), or a lock and its fencing counter could land in
    /// different cluster slots.
    pub(crate) fn new(prefix: impl Into<String>) -> Result<Self, Error> {
        let prefix = prefix.into();
        if hash_tag(&prefix).is_none() && prefix.contains(['{', '}']) {
            return Err(Error::Config(format!(
                "prefix `{prefix}`: braces may only form one Redis hash tag such as `{{app}}:`"
            )));
        }
        Ok(Self { prefix })
    }

    /// The prefix put in front of every key.
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Renders a template into a full key.
    ///
    /// `values` must hold one value per [`Piece::Value`], in order; the
    /// macros guarantee it. A missing value renders as nothing rather than
    /// panicking.
    pub(crate) fn render(
        &self,
        kind: KeyKind,
        template: &KeyTemplate,
        values: &[&dyn Display],
    ) -> String {
        let mut key =
            String::with_capacity(self.prefix.len() + 8 + template.text.len() + 16 * values.len());
        key.push_str(&self.prefix);
        key.push_str(kind.tag());
        let mut values = values.iter();
        for piece in template.pieces {
            match piece {
                Piece::Text(text) => key.push_str(text),
                Piece::Value { stop } => {
                    if let Some(value) = values.next() {
                        // Written as it is, then escaped only if it must
                        // be: most values (numbers, plain words) need
                        // nothing, and the escaping writer would cost each
                        // a check per character through `fmt`. Writing into
                        // a String cannot fail.
                        let start = key.len();
                        let _ = write!(key, "{value}");
                        let plain = key.as_bytes()[start..].iter().all(|&byte| {
                            byte.is_ascii()
                                && !always_escaped(char::from(byte))
                                && Some(char::from(byte)) != *stop
                        });
                        if !plain {
                            let written = key.split_off(start);
                            let _ = Escaper {
                                out: &mut key,
                                stop: *stop,
                            }
                            .write_str(&written);
                        }
                    }
                }
            }
        }
        shorten(key, 0)
    }

    /// The key of a lock named by the caller ([`crate::lock()`]): used as
    /// written, so it matches `#[lock]` with the same rendered template.
    pub(crate) fn lock(&self, name: &str) -> String {
        let mut key = String::with_capacity(self.prefix.len() + 8 + name.len());
        key.push_str(&self.prefix);
        key.push_str(KeyKind::Lock.tag());
        key.push_str(name);
        shorten(key, 0)
    }

    /// The key of a pool named by the caller ([`crate::pool()`]): used as
    /// written, so it matches `#[pooled]` with the same rendered template.
    pub(crate) fn pool(&self, name: &str) -> String {
        let mut key = String::with_capacity(self.prefix.len() + 8 + name.len());
        key.push_str(&self.prefix);
        key.push_str(KeyKind::Pool.tag());
        key.push_str(name);
        shorten(key, 0)
    }

    /// The cross-process fill lock of a cache entry (`#[cached(lock = true)]`).
    pub(crate) fn fill(&self, entry_key: &str) -> String {
        self.of_entry(FILL_TAG, entry_key)
    }

    /// The note a filler leaves when it ran and stored nothing, naming its
    /// fill lock token, so the callers that waited for it stop waiting.
    pub(crate) fn unstored(&self, entry_key: &str) -> String {
        self.of_entry(UNSTORED_TAG, entry_key)
    }

    /// `{prefix}{tag}` and the entry key without its prefix.
    fn of_entry(&self, tag: &str, entry_key: &str) -> String {
        let rest = entry_key.strip_prefix(&self.prefix).unwrap_or(entry_key);
        let mut key = String::with_capacity(self.prefix.len() + tag.len() + rest.len());
        key.push_str(&self.prefix);
        key.push_str(tag);
        key.push_str(rest);
        key
    }

    /// The fencing counter of a lock, in the lock key's cluster slot (see
    /// the module documentation).
    pub(crate) fn fence(&self, lock_key: &str) -> String {
        self.beside(FENCE_TAG, lock_key)
    }

    /// Where the waiters of the lock (or any resource) `key` line up and
    /// are woken, in its cluster slot.
    pub(crate) fn line(&self, key: &str) -> Line {
        Line {
            queue: self.beside(QUEUE_TAG, key),
            beats: self.beside(BEATS_TAG, key),
            channel: self.beside(WAKE_TAG, key),
        }
    }

    /// `{prefix}{tag}` and `lock_key` in braces, or, when the lock key has
    /// a hash tag already, the rest of it with that tag: in its slot.
    fn beside(&self, tag: &str, lock_key: &str) -> String {
        let mut key = String::with_capacity(self.prefix.len() + tag.len() + lock_key.len() + 2);
        key.push_str(&self.prefix);
        key.push_str(tag);
        if hash_tag(lock_key).is_some() {
            // The lock key has a tag of its own (in the prefix, or in a
            // name such as `{tenant}:job`): keep it, and the slot with it.
            // The prefix has no stray braces, so that tag stays the first.
            key.push_str(lock_key.strip_prefix(&self.prefix).unwrap_or(lock_key));
        } else {
            key.push('{');
            key.push_str(lock_key);
            key.push('}');
        }
        key
    }

    /// Where `#[cached]` entries live: `{prefix}cache:`.
    pub(crate) fn cached_scope(&self) -> String {
        format!("{}{}", self.prefix, KeyKind::Cached.tag())
    }

    /// The starts of every key that holds a cached value (`#[cached]`
    /// entries and HTTP responses), and of no lock or counter key: what the
    /// near cache asks Redis to report changes of, and what `clear()`
    /// deletes.
    pub(crate) fn value_scopes(&self) -> Vec<String> {
        let scopes = vec![self.cached_scope()];
        #[cfg(feature = "axum")]
        let scopes = {
            let mut scopes = scopes;
            scopes.push(format!("{}{HTTP_TAG}", self.prefix));
            scopes
        };
        scopes
    }

    /// The version counter and the entry index of `tag`, in one cluster
    /// slot (see the module documentation).
    pub(crate) fn tag(&self, tag: &str) -> TagKeys {
        let mut encoded = String::with_capacity(tag.len() + 2);
        let _ = Escaper {
            out: &mut encoded,
            stop: None,
        }
        .write_str(tag);
        if encoded.is_empty() {
            encoded.push('%');
        } else if encoded.len() > MAX_TAG_LEN {
            encoded.clear();
            encoded.push_str("#sha256:");
            push_hex(&mut encoded, &Sha256::digest(tag.as_bytes()));
        }
        let base = format!("{}{TAG_TAG}{{{encoded}}}", self.prefix);
        TagKeys {
            version: format!("{base}:v"),
            index: format!("{base}:i"),
        }
    }

    /// Every key that `template` renders for `kind`, under this prefix.
    /// `integers` says, per value, whether it is a primitive integer,
    /// which renders as digits and `-` only (missing entries: any value).
    pub(crate) fn template_keys(
        &self,
        kind: KeyKind,
        template: &KeyTemplate,
        integers: &'static [bool],
    ) -> KeyMatch {
        let mut start = format!("{}{}", self.prefix, kind.tag());
        let skip = start.len();
        if let Some(Piece::Text(text)) = template.pieces.first() {
            start.push_str(text);
        }
        // A shortened key keeps only its head: the literal start is
        // searched for only as far as that head reaches.
        let mut head = start.len().min(LONG_KEY_HEAD);
        while !start.is_char_boundary(head) {
            head -= 1;
        }
        start.truncate(head);
        KeyMatch {
            pattern: scan_pattern(&start),
            start,
            template: Some(Shape {
                skip,
                pieces: template.pieces,
                integers,
            }),
        }
    }
}

/// What the rest of a template key looks like (see [`KeyMatch::matches`]).
#[derive(Clone, Copy, Debug)]
struct Shape {
    /// Bytes of prefix and kind before the rendered template.
    skip: usize,
    pieces: &'static [Piece],
    /// Per value: a primitive integer, so digits and `-` only.
    integers: &'static [bool],
}

/// The keys of one tag (see [`Keyspace::tag`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TagKeys {
    /// The tag's version counter, bumped by every invalidation.
    pub(crate) version: String,
    /// The set of entry keys written under the tag.
    pub(crate) index: String,
}

/// A set of keys to find and delete: a `SCAN MATCH` pattern, and an exact
/// test of each key it finds.
#[derive(Clone, Debug)]
pub(crate) struct KeyMatch {
    /// Every matching key starts with this.
    pub(crate) start: String,
    /// The `SCAN MATCH` glob of `start`.
    pub(crate) pattern: String,
    /// The template the rest of the key must follow; `None`: any key
    /// with the start matches.
    template: Option<Shape>,
}

impl KeyMatch {
    /// Every key that starts with `start`.
    pub(crate) fn prefix(start: &str) -> Self {
        Self {
            start: start.to_owned(),
            pattern: scan_pattern(start),
            template: None,
        }
    }

    /// Whether `key` is one of the keys.
    ///
    /// A template key is read with the escaping rules of
    /// [`Keyspace::render`]: literal text as written, and a value as `%XX`
    /// tokens and raw characters that are neither escaped always nor its
    /// stop character; an integer's value holds digits and `-` only. A
    /// key shortened to a head and a digest matches when its head is the
    /// start of such a key.
    pub(crate) fn matches(&self, key: &str) -> bool {
        let Some(shape) = self.template else {
            return key.starts_with(&self.start);
        };
        if !key.starts_with(&self.start) {
            return false;
        }
        match shortened_head(key) {
            Some(head) => head.len() >= shape.skip && follows(&head[shape.skip..], shape, true),
            None => follows(&key[shape.skip..], shape, false),
        }
    }
}

/// The readable head of a key that [`shorten`] shortened.
fn shortened_head(key: &str) -> Option<&str> {
    let (head, digest) = key.rsplit_once("#sha256:")?;
    let digest_ok = digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit());
    (digest_ok && head.len() <= LONG_KEY_HEAD).then_some(head)
}

/// Whether `rest` is what the shape's pieces render (with `partial`: the
/// start of it).
fn follows(mut rest: &str, shape: Shape, partial: bool) -> bool {
    let mut values = 0;
    for piece in shape.pieces {
        match piece {
            Piece::Text(text) => match rest.strip_prefix(text) {
                Some(after) => rest = after,
                None => return partial && text.starts_with(rest),
            },
            Piece::Value { stop } => {
                let integer = shape.integers.get(values).copied().unwrap_or(false);
                values += 1;
                let bytes = rest.as_bytes();
                let mut at = 0;
                while let Some(c) = rest[at..].chars().next() {
                    if c == '%' {
                        let token = bytes.get(at + 1..at + 3);
                        match token {
                            Some(hex) if hex.iter().all(|b| b.is_ascii_hexdigit()) => at += 3,
                            // A head may cut a token short.
                            None if partial => return true,
                            _ => return false,
                        }
                    } else if Some(c) == *stop {
                        break;
                    } else if always_escaped(c) || (integer && !(c.is_ascii_digit() || c == '-')) {
                        return false;
                    } else {
                        at += c.len_utf8();
                    }
                }
                // An integer is never empty (a head may end before it).
                if integer && at == 0 && !(partial && rest.is_empty()) {
                    return false;
                }
                rest = &rest[at..];
            }
        }
    }
    rest.is_empty()
}

#[cfg(feature = "axum")]
impl Keyspace {
    /// `{prefix}http:{namespace}:`, the start of every key of one HTTP
    /// namespace. The namespace is escaped so it cannot contain `:`, which
    /// makes this a prefix of exactly that namespace's keys (clearing
    /// `users` leaves `users:admin` alone).
    pub(crate) fn http_scope(&self, namespace: &str) -> String {
        let mut scope =
            String::with_capacity(self.prefix.len() + HTTP_TAG.len() + namespace.len() + 1);
        scope.push_str(&self.prefix);
        scope.push_str(HTTP_TAG);
        for c in namespace.chars() {
            if matches!(c, ':' | '%' | '{' | '}') || c.is_whitespace() || c.is_control() {
                push_escaped(&mut scope, c);
            } else {
                scope.push(c);
            }
        }
        scope.push(':');
        scope
    }

    /// The key of one cached response: the scope, a digest of the
    /// credential when there is one, then the request part (see
    /// [`http_request`]). Shortened keys keep the whole scope, so clearing
    /// the namespace still finds them.
    pub(crate) fn http(&self, scope: &str, credential: Option<&[u8]>, request: &str) -> String {
        let mut key = String::with_capacity(scope.len() + 38 + request.len());
        key.push_str(scope);
        if let Some(credential) = credential {
            // A digest, never the credential: keys are visible to anyone
            // with access to Redis. 128 bits keep credentials apart.
            key.push_str("auth.");
            push_hex(&mut key, &Sha256::digest(credential)[..16]);
            key.push(':');
        }
        key.push_str(request);
        shorten(key, scope.len())
    }
}

#[cfg(feature = "axum")]
/// The default request part of an HTTP key: `GET:{path}?{query with sorted
/// parameters}`. HEAD requests use it too, so they are answered from GET
/// entries.
pub(crate) fn http_request(path: &str, query: Option<&str>) -> String {
    let mut key = String::with_capacity(4 + path.len() + 1 + query.map_or(0, str::len));
    key.push_str("GET:");
    key.push_str(path);
    if let Some(query) = query {
        let query = sorted_query(query);
        if !query.is_empty() {
            key.push('?');
            key.push_str(&query);
        }
    }
    key
}

/// A tag as a `tags = [..]` template renders it: the values as they
/// format, unescaped, so `"user:{id}"` with `id = 42` is the tag a caller
/// names as `"user:42"`. Two renderings that read alike are one tag, which
/// can only make an invalidation delete more, never less.
pub(crate) fn render_tag(template: &KeyTemplate, values: &[&dyn Display]) -> String {
    let mut tag = String::with_capacity(template.text.len() + 8 * values.len());
    let mut values = values.iter();
    for piece in template.pieces {
        match piece {
            Piece::Text(text) => tag.push_str(text),
            Piece::Value { .. } => {
                if let Some(value) = values.next() {
                    let _ = write!(tag, "{value}");
                }
            }
        }
    }
    tag
}

/// A `SCAN MATCH` pattern for the keys that start with `prefix`: its glob
/// metacharacters escaped so that they match only themselves.
pub(crate) fn scan_pattern(prefix: &str) -> String {
    let mut pattern = String::with_capacity(prefix.len() + 4);
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('*');
    pattern
}

/// The Redis hash tag of `key`: the text between the first `{` and the
/// first `}` after it, when that text is not empty.
pub(crate) fn hash_tag(key: &str) -> Option<&str> {
    let open = key.find('{')?;
    let close = key[open + 1..].find('}')?;
    (close > 0).then(|| &key[open + 1..open + 1 + close])
}

#[cfg(feature = "axum")]
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
            (form_decode(name), form_decode(value))
        })
        .collect();
    pairs.sort_by(|left, right| left.0.cmp(&right.0));
    let mut sorted = String::with_capacity(query.len() + 8);
    for (at, (name, value)) in pairs.iter().enumerate() {
        if at > 0 {
            sorted.push('&');
        }
        form_encode(&mut sorted, name);
        sorted.push('=');
        form_encode(&mut sorted, value);
    }
    sorted
}

#[cfg(feature = "axum")]
/// Form decoding: `+` is a space, `%XX` a byte; a stray `%` stays as it is.
pub(crate) fn form_decode(text: &str) -> Vec<u8> {
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

#[cfg(feature = "axum")]
fn hex_pair(pair: &[u8]) -> Option<u8> {
    let digit = |c: u8| (c as char).to_digit(16);
    // Two hex digits are at most 255.
    Some((digit(pair[0])? * 16 + digit(pair[1])?) as u8)
}

#[cfg(feature = "axum")]
/// Percent-encodes everything but unreserved characters, so `&`, `=`, `#`,
/// braces, spaces and glob characters inside a value cannot forge the
/// key's layout.
fn form_encode(out: &mut String, bytes: &[u8]) {
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

fn push_escaped(out: &mut String, c: char) {
    let mut utf8 = [0u8; 4];
    for byte in c.encode_utf8(&mut utf8).bytes() {
        let _ = write!(out, "%{byte:02X}");
    }
}

/// Replaces the tail of an over-long key with a digest of the whole key,
/// keeping at least `keep` bytes (a scope that must stay a prefix).
fn shorten(key: String, keep: usize) -> String {
    if key.len() <= MAX_KEY_LEN {
        return key;
    }
    let digest = Sha256::digest(key.as_bytes());
    let mut head = LONG_KEY_HEAD.max(keep);
    while !key.is_char_boundary(head) {
        head -= 1;
    }
    let mut short = String::with_capacity(head + 8 + 64);
    short.push_str(&key[..head]);
    short.push_str("#sha256:");
    push_hex(&mut short, &digest);
    short
}

/// Whether a character must always be escaped inside an interpolated value.
fn always_escaped(c: char) -> bool {
    c.is_control()
        || c.is_whitespace()
        || matches!(c, '%' | '#' | '*' | '?' | '[' | ']' | '\\' | '{' | '}')
}

/// A `fmt::Write` adapter that percent-encodes as it writes, so a value is
/// formatted straight into the key without an intermediate `String`.
struct Escaper<'a> {
    out: &'a mut String,
    stop: Option<char>,
}

impl Write for Escaper<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut clean_from = 0;
        for (at, c) in s.char_indices() {
            if always_escaped(c) || Some(c) == self.stop {
                self.out.push_str(&s[clean_from..at]);
                push_escaped(self.out, c);
                clean_from = at + c.len_utf8();
            }
        }
        self.out.push_str(&s[clean_from..]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DASHED: KeyTemplate = KeyTemplate {
        text: "{a}-{b}",
        pieces: &[
            Piece::Value { stop: Some('-') },
            Piece::Text("-"),
            Piece::Value { stop: None },
        ],
    };

    fn keys(prefix: &str) -> Keyspace {
        Keyspace::new(prefix).unwrap()
    }

    fn dashed(a: &str, b: &str) -> String {
        keys("p:").render(KeyKind::Cached, &DASHED, &[&a, &b])
    }

    #[test]
    fn no_tag_starts_another() {
        let tags = [
            KeyKind::Cached.tag(),
            KeyKind::Once.tag(),
            KeyKind::Lock.tag(),
            KeyKind::Pool.tag(),
            FILL_TAG,
            UNSTORED_TAG,
            FENCE_TAG,
            QUEUE_TAG,
            BEATS_TAG,
            WAKE_TAG,
            TAG_TAG,
            #[cfg(feature = "axum")]
            HTTP_TAG,
        ];
        for (at, tag) in tags.iter().enumerate() {
            for (other_at, other) in tags.iter().enumerate() {
                assert!(
                    at == other_at || !other.starts_with(tag),
                    "`{tag}` starts `{other}`: two kinds could share a key"
                );
            }
        }
    }

    #[test]
    fn reads_as_written() {
        const USER: KeyTemplate = KeyTemplate {
            text: "user-{id}",
            pieces: &[Piece::Text("user-"), Piece::Value { stop: None }],
        };
        let keys = keys("cachify:");
        assert_eq!(
            keys.render(KeyKind::Cached, &USER, &[&42]),
            "cachify:cache:user-42"
        );
        assert_eq!(
            keys.render(KeyKind::Once, &USER, &[&42]),
            "cachify:once:user-42"
        );
        assert_eq!(
            keys.render(KeyKind::Lock, &USER, &[&42]),
            "cachify:lock:user-42"
        );
        assert_eq!(keys.lock("user-42"), "cachify:lock:user-42");
        assert_eq!(
            keys.render(KeyKind::Pool, &USER, &[&42]),
            "cachify:pool:user-42"
        );
        assert_eq!(keys.pool("user-42"), "cachify:pool:user-42");
        assert_eq!(
            keys.fill("cachify:cache:user-42"),
            "cachify:fill:cache:user-42"
        );
        assert_eq!(
            keys.unstored("cachify:cache:user-42"),
            "cachify:unstored:cache:user-42"
        );
        assert_eq!(
            keys.fence("cachify:lock:user-42"),
            "cachify:fence:{cachify:lock:user-42}"
        );
    }

    #[test]
    fn a_line_shares_its_locks_hash_slot() {
        let plain = keys("cachify:");
        let lock = plain.lock("job");
        let line = plain.line(&lock);
        assert_eq!(line.queue, "cachify:queue:{cachify:lock:job}");
        assert_eq!(line.beats, "cachify:beats:{cachify:lock:job}");
        assert_eq!(line.channel, "cachify:wake:{cachify:lock:job}");
        let named = plain.lock("{tenant}:job");
        let tagged = keys("{app}:");
        let app_lock = tagged.lock("job");
        for (keys, lock) in [(&plain, &named), (&tagged, &app_lock)] {
            let line = keys.line(lock);
            for key in [&line.queue, &line.beats, &line.channel] {
                assert_eq!(hash_tag(key), hash_tag(lock), "{key} beside {lock}");
            }
        }
        assert_ne!(
            plain.line(&named),
            plain.line(&plain.lock("{tenant}:other"))
        );
    }

    #[test]
    fn a_pools_line_shares_its_hash_slot() {
        let plain = keys("cachify:");
        let pool = plain.pool("exports");
        assert_eq!(
            plain.line(&pool).queue,
            "cachify:queue:{cachify:pool:exports}"
        );
        // What Redis hashes to find a key's slot.
        let hashed = |key: &str| hash_tag(key).unwrap_or(key).to_owned();
        let tagged = keys("{app}:");
        for (keys, pool) in [
            (&plain, pool),
            (&plain, plain.pool("{tenant}:exports")),
            (&tagged, tagged.pool("exports")),
        ] {
            let line = keys.line(&pool);
            for key in [&line.queue, &line.beats, &line.channel] {
                assert_eq!(hashed(key), hashed(&pool), "{key} beside {pool}");
            }
        }
        assert_ne!(
            plain.line(&plain.pool("job")),
            plain.line(&plain.lock("job"))
        );
    }

    #[test]
    fn a_fence_shares_its_locks_hash_slot() {
        let plain = keys("cachify:");
        let lock = plain.lock("job");
        assert_eq!(hash_tag(&lock), None);
        assert_eq!(hash_tag(&plain.fence(&lock)), Some(lock.as_str()));

        let tagged = keys("{app}:");
        let lock = tagged.lock("job");
        let fence = tagged.fence(&lock);
        assert_eq!(fence, "{app}:fence:lock:job");
        assert_eq!(hash_tag(&fence), Some("app"));
        assert_eq!(hash_tag(&lock), Some("app"));

        let named = plain.lock("{tenant}:job");
        let fence = plain.fence(&named);
        assert_eq!(fence, "cachify:fence:lock:{tenant}:job");
        assert_eq!(hash_tag(&fence), Some("tenant"));
        assert_eq!(hash_tag(&named), Some("tenant"));
        assert_ne!(fence, plain.fence(&plain.lock("{tenant}:other")));
    }

    #[test]
    fn values_cannot_make_hash_tags() {
        const ONE: KeyTemplate = KeyTemplate {
            text: "{a}",
            pieces: &[Piece::Value { stop: None }],
        };
        let key = keys("p:").render(KeyKind::Lock, &ONE, &[&"{x}"]);
        assert_eq!(key, "p:lock:%7Bx%7D");
        assert_eq!(hash_tag(&key), None);
    }

    #[test]
    fn prefixes_with_stray_braces_are_refused() {
        for bad in ["a{b", "a}b", "{}x", "}{"] {
            assert!(matches!(Keyspace::new(bad), Err(Error::Config(_))), "{bad}");
        }
        assert!(Keyspace::new("{app}:").is_ok());
    }

    #[test]
    fn glob_characters_in_prefixes_match_only_themselves() {
        assert_eq!(scan_pattern("a*b?[c]\\d:"), "a\\*b\\?\\[c\\]\\\\d:*");
    }

    #[test]
    fn hash_tags_follow_the_redis_rule() {
        assert_eq!(hash_tag("{user}:1"), Some("user"));
        assert_eq!(hash_tag("a{}b"), None);
        assert_eq!(hash_tag("{}{x}"), None);
        assert_eq!(hash_tag("x{y}z"), Some("y"));
        assert_eq!(hash_tag("x{y"), None);
        assert_eq!(hash_tag("plain"), None);
    }

    #[test]
    fn values_cannot_forge_separators() {
        assert_ne!(dashed("x-y", "z"), dashed("x", "y-z"));
        assert_eq!(dashed("x-y", "z"), "p:cache:x%2Dy-z");
        // The escape character itself is escaped, so `%2D` cannot pose as `-`.
        assert_ne!(dashed("x%2Dy", "z"), dashed("x-y", "z"));
        // Only the stop character of the last value is free.
        assert_eq!(dashed("a", "b-c"), "p:cache:a-b-c");
    }

    #[test]
    fn a_hex_digit_stop_character_stays_unambiguous() {
        const HEX_STOP: KeyTemplate = KeyTemplate {
            text: "{a}A{b}",
            pieces: &[
                Piece::Value { stop: Some('A') },
                Piece::Text("A"),
                Piece::Value { stop: None },
            ],
        };
        let key = |a: &str, b: &str| keys("").render(KeyKind::Cached, &HEX_STOP, &[&a, &b]);
        // `*` encodes as `%2A`, which holds an `A` inside its token.
        assert_eq!(key("*", "x"), "cache:%2AAx");
        assert_ne!(key("*", "x"), key("%2", "x"));
        assert_ne!(key("*", "x"), key("", "%2Ax"));
        assert_ne!(key("A", ""), key("", "A"));
    }

    #[test]
    fn odd_characters_are_escaped_not_dropped() {
        let key = dashed("a b\n*?[]#", "ü");
        assert_eq!(key, "p:cache:a%20b%0A%2A%3F%5B%5D%23-ü");
        assert_ne!(dashed("", ""), dashed("-", ""));
    }

    #[test]
    fn long_keys_are_shortened_stably() {
        let long = "x".repeat(5000);
        let key = dashed(&long, "1");
        assert!(key.len() <= MAX_KEY_LEN, "{}", key.len());
        assert!(key.starts_with("p:cache:xxx"));
        assert!(key.contains("#sha256:"));
        assert_eq!(key, dashed(&long, "1"), "same input, same key");
        assert_ne!(key, dashed(&long, "2"), "the digest covers the whole key");
        let unicode = "é".repeat(3000);
        assert!(dashed(&unicode, "").len() <= MAX_KEY_LEN);
    }

    #[cfg(feature = "axum")]
    fn part(uri: &str) -> String {
        let (path, query) = match uri.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (uri, None),
        };
        http_request(path, query)
    }

    #[cfg(feature = "axum")]
    #[test]
    fn http_keys_read_as_written() {
        let keys = keys("cachify:");
        assert_eq!(keys.http_scope("users"), "cachify:http:users:");
        assert_eq!(
            keys.http(&keys.http_scope("users"), None, &part("/users?b=2&a=1")),
            "cachify:http:users:GET:/users?a=1&b=2"
        );
        assert_eq!(part("/"), "GET:/");
        assert_eq!(part("/x?"), "GET:/x");
    }

    #[cfg(feature = "axum")]
    #[test]
    fn query_order_and_spelling_do_not_matter() {
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

    #[cfg(feature = "axum")]
    #[test]
    fn query_values_cannot_forge_separators() {
        assert_ne!(part("/s?a=1%26b%3D2"), part("/s?a=1&b=2"));
        assert_eq!(part("/s?a=*%23%"), "GET:/s?a=%2A%23%25");
        assert_eq!(part("/s?a=%zz"), "GET:/s?a=%25zz");
        assert_eq!(part("/s?a={x}"), "GET:/s?a=%7Bx%7D");
    }

    #[cfg(feature = "axum")]
    #[test]
    fn namespaces_do_not_nest() {
        let keys = keys("p:");
        let users = keys.http_scope("users");
        let admins = keys.http_scope("users:admin");
        assert_eq!(admins, "p:http:users%3Aadmin:");
        assert!(!admins.starts_with(&users));
        assert_eq!(keys.http_scope("a b%{"), "p:http:a%20b%25%7B:");
    }

    #[cfg(feature = "axum")]
    #[test]
    fn credentials_are_hashed_and_kept_apart() {
        let keys = keys("p:");
        let scope = keys.http_scope("n");
        let key = keys.http(&scope, Some(b"Bearer alice-secret"), "GET:/me");
        assert!(!key.contains("alice"), "{key}");
        assert!(key.starts_with("p:http:n:auth."));
        assert!(key.ends_with(":GET:/me"));
        assert_eq!(
            key,
            keys.http(&scope, Some(b"Bearer alice-secret"), "GET:/me")
        );
        assert_ne!(
            key,
            keys.http(&scope, Some(b"Bearer bob-secret"), "GET:/me")
        );
        assert_ne!(key, keys.http(&scope, None, "GET:/me"));
    }

    #[cfg(feature = "axum")]
    #[test]
    fn long_http_keys_are_shortened_within_their_namespace() {
        let keys = keys("p:");
        let scope = keys.http_scope("n");
        let long = format!("GET:/s?q={}", "x".repeat(5000));
        let key = keys.http(&scope, None, &long);
        assert!(key.len() <= MAX_KEY_LEN);
        assert!(key.starts_with(&scope));
        assert!(key.contains("#sha256:"));
        assert_eq!(key, keys.http(&scope, None, &long));
        assert_ne!(key, keys.http(&scope, None, &format!("{long}y")));
    }

    #[test]
    fn a_tags_keys_share_one_hash_tag_that_values_cannot_break() {
        let plain = keys("cachify:");
        let user = plain.tag("user:42");
        assert_eq!(user.version, "cachify:tag:{user:42}:v");
        assert_eq!(user.index, "cachify:tag:{user:42}:i");
        for tag in ["user:42", "a}b", "{x}", "", "a b", &"y".repeat(2000)] {
            let keys = plain.tag(tag);
            let slot = hash_tag(&keys.version);
            assert!(slot.is_some(), "{tag:?}: {keys:?}");
            assert_eq!(slot, hash_tag(&keys.index), "{tag:?}");
            assert!(keys.version.len() < MAX_KEY_LEN);
        }
        assert_ne!(plain.tag("").version, plain.tag("%").version);
        assert_ne!(plain.tag("a}b").version, plain.tag("a").version);
        assert_ne!(
            plain.tag(&"y".repeat(2000)).version,
            plain.tag(&"y".repeat(2001)).version
        );
        let tagged = keys("{app}:").tag("user:42");
        assert_eq!(hash_tag(&tagged.version), Some("app"));
        assert_eq!(hash_tag(&tagged.index), Some("app"));
    }

    #[test]
    fn tags_render_their_values_as_written() {
        const TAG: KeyTemplate = KeyTemplate {
            text: "user:{id}-{name}",
            pieces: &[
                Piece::Text("user:"),
                Piece::Value { stop: Some('-') },
                Piece::Text("-"),
                Piece::Value { stop: None },
            ],
        };
        assert_eq!(render_tag(&TAG, &[&42, &"a b-c"]), "user:42-a b-c");
    }

    const CARD: KeyTemplate = KeyTemplate {
        text: "user-{id}-card",
        pieces: &[
            Piece::Text("user-"),
            Piece::Value { stop: Some('-') },
            Piece::Text("-card"),
        ],
    };

    #[test]
    fn a_template_matches_the_keys_it_renders_and_no_other() {
        let keys = keys("p:");
        let card = keys.template_keys(KeyKind::Cached, &CARD, &[]);
        assert_eq!(card.pattern, "p:cache:user-*");
        for id in ["1", "a-b", "x y%", "", "é*?[", &"z".repeat(3000)] {
            let key = keys.render(KeyKind::Cached, &CARD, &[&id]);
            assert!(card.matches(&key), "{id:?}: {key}");
        }
        for other in [
            "p:cache:user-settings-1",
            "p:cache:user-1-cards",
            "p:cache:user-1-card-",
            "p:cache:user-1",
            "p:cache:user-a b-card",
            "p:cache:user-%2-card",
            "p:once:user-1-card",
            "q:cache:user-1-card",
        ] {
            assert!(!card.matches(other), "{other}");
        }
        // A shortened key of another template that cannot have this
        // template's start.
        const OTHER: KeyTemplate = KeyTemplate {
            text: "user-settings-{id}",
            pieces: &[Piece::Text("user-settings-"), Piece::Value { stop: None }],
        };
        let long = keys.render(KeyKind::Cached, &OTHER, &[&"z".repeat(3000)]);
        assert!(long.contains("#sha256:"));
        assert!(!card.matches(&long), "{long}");
    }

    #[test]
    fn a_hex_digit_stop_character_is_found_outside_escapes() {
        const HEX: KeyTemplate = KeyTemplate {
            text: "{a}A{b}",
            pieces: &[
                Piece::Value { stop: Some('A') },
                Piece::Text("A"),
                Piece::Value { stop: None },
            ],
        };
        let keys = keys("");
        let hex = keys.template_keys(KeyKind::Cached, &HEX, &[]);
        assert_eq!(hex.pattern, "cache:*");
        for (a, b) in [("*", "x"), ("A", ""), ("", "A"), ("%2", "%")] {
            let key = keys.render(KeyKind::Cached, &HEX, &[&a, &b]);
            assert!(hex.matches(&key), "{key}");
        }
        assert!(!hex.matches("cache:xyz"), "no stop character");
    }

    #[test]
    fn glob_characters_in_a_templates_start_match_only_themselves() {
        const GLOB: KeyTemplate = KeyTemplate {
            text: "a*[b]-{id}",
            pieces: &[Piece::Text("a*[b]-"), Piece::Value { stop: None }],
        };
        let matching = keys("p?:").template_keys(KeyKind::Cached, &GLOB, &[]);
        assert_eq!(matching.pattern, "p\\?:cache:a\\*\\[b\\]-*");
        assert!(matching.matches("p?:cache:a*[b]-7"));
        assert!(!matching.matches("px:cache:a*[b]-7"));
    }

    #[test]
    fn an_integer_value_matches_only_what_an_integer_renders() {
        const USER: KeyTemplate = KeyTemplate {
            text: "user-{id}",
            pieces: &[Piece::Text("user-"), Piece::Value { stop: None }],
        };
        let keys = keys("p:");
        let by_integer = keys.template_keys(KeyKind::Cached, &USER, &[true]);
        let by_any = keys.template_keys(KeyKind::Cached, &USER, &[false]);
        for id in [0_i64, 42, -7, i64::MAX] {
            let key = keys.render(KeyKind::Cached, &USER, &[&id]);
            assert!(by_integer.matches(&key), "{key}");
        }
        for other in [
            "p:cache:user-settings-5",
            "p:cache:user-",
            "p:cache:user-5x",
        ] {
            assert!(!by_integer.matches(other), "{other}");
        }
        assert!(
            by_any.matches("p:cache:user-settings-5"),
            "a string could render it"
        );
        // A digit stop character is escaped inside the integer.
        const DIGIT_STOP: KeyTemplate = KeyTemplate {
            text: "{a}1{b}",
            pieces: &[
                Piece::Value { stop: Some('1') },
                Piece::Text("1"),
                Piece::Value { stop: None },
            ],
        };
        let digits = keys.template_keys(KeyKind::Cached, &DIGIT_STOP, &[true, true]);
        let key = keys.render(KeyKind::Cached, &DIGIT_STOP, &[&21, &1]);
        assert_eq!(key, "p:cache:2%3111");
        assert!(digits.matches(&key));
    }
}
