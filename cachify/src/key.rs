//! Keys: how a template and a call's arguments become one backend key.
//!
//! A key reads as `{prefix}{kind}:{rendered template}`, for example
//! `cachify:cache:user-42`, so it stays recognisable in `redis-cli`.
//!
//! Injectivity: an interpolated value is percent-encoded for `%`, for the
//! first character of the literal text that follows its placeholder (the
//! "stop" character), and for a fixed set of characters that must never
//! appear raw (control characters, whitespace, glob metacharacters, `#`).
//! Read left to right, an encoded value is a sequence of tokens: `%XX`
//! (always three characters, since `%` never appears raw) or one raw
//! character that is never the stop character. The first raw stop
//! character outside a `%XX` token therefore ends the value; and since the
//! macros refuse two placeholders with no literal text between them, every
//! value but the last has one. So different argument tuples render
//! different keys, even when the stop character is a hex digit.

use std::fmt::{self, Display, Write};

use sha2::{Digest, Sha256};

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
}

impl KeyKind {
    /// The tag written between the prefix and the rendered template.
    pub const fn tag(self) -> &'static str {
        match self {
            KeyKind::Cached => "cache:",
            KeyKind::Once => "once:",
            KeyKind::Lock => "lock:",
        }
    }
}

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

/// Renders a template into a full key.
///
/// `values` must hold one value per [`Piece::Value`], in order; the macros
/// guarantee it. A missing value renders as nothing rather than panicking.
pub fn render(
    prefix: &str,
    kind: KeyKind,
    template: &KeyTemplate,
    values: &[&dyn Display],
) -> String {
    let mut key = String::with_capacity(prefix.len() + 8 + template.text.len() + 16 * values.len());
    key.push_str(prefix);
    key.push_str(kind.tag());
    let mut values = values.iter();
    for piece in template.pieces {
        match piece {
            Piece::Text(text) => key.push_str(text),
            Piece::Value { stop } => {
                if let Some(value) = values.next() {
                    // Writing into a String cannot fail.
                    let _ = write!(
                        Escaper {
                            out: &mut key,
                            stop: *stop
                        },
                        "{value}"
                    );
                }
            }
        }
    }
    shorten(key)
}

/// Builds a key from a name the caller already rendered (the lock API).
pub fn plain(prefix: &str, kind: KeyKind, name: &str) -> String {
    let mut key = String::with_capacity(prefix.len() + 8 + name.len());
    key.push_str(prefix);
    key.push_str(kind.tag());
    key.push_str(name);
    shorten(key)
}

/// A key that belongs to `key`, in its own key space: `tag` goes after the
/// prefix, so `cachify:lock:report-7` gets `cachify:fence:lock:report-7`.
/// Tags `fence:` (fencing counters) and `fill:` (cross-process cache-fill
/// locks) differ from every [`KeyKind::tag`], so they never collide.
pub fn derived(prefix: &str, key: &str, tag: &str) -> String {
    let rest = key.strip_prefix(prefix).unwrap_or(key);
    let mut derived = String::with_capacity(prefix.len() + tag.len() + rest.len());
    derived.push_str(prefix);
    derived.push_str(tag);
    derived.push_str(rest);
    derived
}

/// Replaces the tail of an over-long key with a digest of the whole key.
///
/// The marker `#` never appears raw in an interpolated value, so a shortened
/// key cannot be forged by passing its text as an argument.
fn shorten(key: String) -> String {
    if key.len() <= MAX_KEY_LEN {
        return key;
    }
    let digest = Sha256::digest(key.as_bytes());
    let mut head = LONG_KEY_HEAD;
    while !key.is_char_boundary(head) {
        head -= 1;
    }
    let mut short = String::with_capacity(head + 8 + 64);
    short.push_str(&key[..head]);
    short.push_str("#sha256:");
    for byte in digest {
        let _ = write!(short, "{byte:02x}");
    }
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
                let mut utf8 = [0u8; 4];
                for byte in c.encode_utf8(&mut utf8).bytes() {
                    write!(self.out, "%{byte:02X}")?;
                }
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

    fn dashed(a: &str, b: &str) -> String {
        render("p:", KeyKind::Cached, &DASHED, &[&a, &b])
    }

    #[test]
    fn reads_as_written() {
        const USER: KeyTemplate = KeyTemplate {
            text: "user-{id}",
            pieces: &[Piece::Text("user-"), Piece::Value { stop: None }],
        };
        assert_eq!(
            render("cachify:", KeyKind::Cached, &USER, &[&42]),
            "cachify:cache:user-42"
        );
        assert_eq!(
            render("cachify:", KeyKind::Once, &USER, &[&42]),
            "cachify:once:user-42"
        );
        assert_eq!(
            render("cachify:", KeyKind::Lock, &USER, &[&42]),
            "cachify:lock:user-42"
        );
        assert_eq!(
            plain("cachify:", KeyKind::Lock, "user-42"),
            "cachify:lock:user-42"
        );
        assert_eq!(
            derived("cachify:", "cachify:lock:user-42", "fence:"),
            "cachify:fence:lock:user-42"
        );
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
        let key = |a: &str, b: &str| render("", KeyKind::Cached, &HEX_STOP, &[&a, &b]);
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
}
