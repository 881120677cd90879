//! Property tests: a key template renders different argument tuples into
//! different keys, and the three key kinds never share a key.
//!
//! Uses the hidden runtime API the macros expand to
//! (`cachify::__private::{key, KeyKind, KeyTemplate, Piece}`), with const
//! templates shaped exactly like the ones the macros emit.
//!
//! Besides "two random tuples render two keys" (which random inputs rarely
//! put to the test), every rendered key is parsed back exhaustively: the
//! test lists *every* tuple whose rendering could be that key (each value
//! renders on its own, so a key is a concatenation of literal text and
//! per-value encodings) and requires exactly one, the original. A second
//! preimage is a real collision; it is re-rendered through the library
//! before being reported.

use std::collections::HashMap;
use std::fmt::Display;
use std::sync::{Mutex, OnceLock};

use cachify::__private::{KeyKind, KeyTemplate, Piece, key};
use cachify::Cachify;
use proptest::prelude::*;
use proptest::test_runner::Config;

const PREFIX: &str = "p:";
const KINDS: [KeyKind; 3] = [KeyKind::Cached, KeyKind::Once, KeyKind::Lock];

fn client() -> &'static Cachify {
    static CLIENT: OnceLock<Cachify> = OnceLock::new();
    CLIENT.get_or_init(|| {
        Cachify::builder()
            .memory()
            .prefix(PREFIX)
            .build_blocking()
            .expect("a memory client")
    })
}

// ------------------------------------------------ templates, as the macros emit them

/// `"{a}-{b}"`
const DASH: KeyTemplate = KeyTemplate {
    text: "{a}-{b}",
    pieces: &[
        Piece::Value { stop: Some('-') },
        Piece::Text("-"),
        Piece::Value { stop: None },
    ],
};

/// `"{a}A{b}"`: the stop character is a hex digit, as in `%2A`.
const HEX_STOP: KeyTemplate = KeyTemplate {
    text: "{a}A{b}",
    pieces: &[
        Piece::Value { stop: Some('A') },
        Piece::Text("A"),
        Piece::Value { stop: None },
    ],
};

/// `"x{a}:{b}:{c}y"`
const COLONS: KeyTemplate = KeyTemplate {
    text: "x{a}:{b}:{c}y",
    pieces: &[
        Piece::Text("x"),
        Piece::Value { stop: Some(':') },
        Piece::Text(":"),
        Piece::Value { stop: Some(':') },
        Piece::Text(":"),
        Piece::Value { stop: Some('y') },
        Piece::Text("y"),
    ],
};

/// `"v{a}2F{b}"`: a digit stop, followed by more hex text.
const DIGIT_STOP: KeyTemplate = KeyTemplate {
    text: "v{a}2F{b}",
    pieces: &[
        Piece::Text("v"),
        Piece::Value { stop: Some('2') },
        Piece::Text("2F"),
        Piece::Value { stop: None },
    ],
};

/// `"{a}é{b}/"`: a multi-byte stop character.
const ACCENT_STOP: KeyTemplate = KeyTemplate {
    text: "{a}é{b}/",
    pieces: &[
        Piece::Value { stop: Some('é') },
        Piece::Text("é"),
        Piece::Value { stop: Some('/') },
        Piece::Text("/"),
    ],
};

// Templates whose text right after a value starts with `%` (`"{a}%{b}"`,
// `"{first}%20{last}"`) would not be injective: the macros refuse them at
// compile time (tests/ui/percent_after_placeholder.rs).

/// `"{a}"`: one value, which always reaches the end of the key.
const ALONE: KeyTemplate = KeyTemplate {
    text: "{a}",
    pieces: &[Piece::Value { stop: None }],
};

fn arity(template: &KeyTemplate) -> usize {
    template
        .pieces
        .iter()
        .filter(|piece| matches!(piece, Piece::Value { .. }))
        .count()
}

fn render(kind: KeyKind, template: &KeyTemplate, values: &[String]) -> String {
    assert_eq!(values.len(), arity(template), "{}", template.text);
    let shown: Vec<&dyn Display> = values.iter().map(|value| value as &dyn Display).collect();
    key(client(), kind, template, &shown)
}

// ------------------------------------------------ the exhaustive preimage search

/// How one value renders on its own after a given stop character.
fn encode(stop: Option<char>, value: &str) -> String {
    static SINGLES: OnceLock<Mutex<HashMap<Option<char>, &'static KeyTemplate>>> = OnceLock::new();
    let template: &'static KeyTemplate = SINGLES
        .get_or_init(Default::default)
        .lock()
        .unwrap()
        .entry(stop)
        .or_insert_with(|| {
            // One leaked template per distinct stop character (a handful).
            let pieces: &'static [Piece] = Box::leak(Box::new([Piece::Value { stop }]));
            Box::leak(Box::new(KeyTemplate {
                text: "{v}",
                pieces,
            }))
        });
    let rendered = key(
        client(),
        KeyKind::Cached,
        template,
        &[&value as &dyn Display],
    );
    rendered
        .strip_prefix("p:cache:")
        .expect("the prefix and kind tag come first")
        .to_owned()
}

/// Percent-decoding, lenient: `None` when `s` cannot be any value's encoding.
fn decode(s: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(s.len());
    let mut at = 0;
    while at < s.len() {
        if s.as_bytes()[at] == b'%' {
            let hex = s.get(at + 1..at + 3)?;
            if !hex.bytes().all(|byte| byte.is_ascii_hexdigit()) {
                return None;
            }
            bytes.push(u8::from_str_radix(hex, 16).ok()?);
            at += 3;
        } else {
            let c = s[at..].chars().next()?;
            let mut utf8 = [0u8; 4];
            bytes.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
            at += c.len_utf8();
        }
    }
    String::from_utf8(bytes).ok()
}

/// Every tuple of values that renders `rest` with `pieces`.
fn walk(pieces: &[Piece], rest: &str, values: &mut Vec<String>, found: &mut Vec<Vec<String>>) {
    match pieces.split_first() {
        None => {
            if rest.is_empty() {
                found.push(values.clone());
            }
        }
        Some((Piece::Text(text), more)) => {
            if let Some(rest) = rest.strip_prefix(text) {
                walk(more, rest, values, found);
            }
        }
        Some((Piece::Value { stop }, more)) => {
            for end in (0..=rest.len()).filter(|&end| rest.is_char_boundary(end)) {
                let (encoded, after) = rest.split_at(end);
                let Some(value) = decode(encoded) else {
                    continue;
                };
                // Only a canonical encoding is something the library writes.
                if encode(*stop, &value) != encoded {
                    continue;
                }
                values.push(value);
                walk(more, after, values, found);
                values.pop();
            }
        }
    }
}

/// All tuples whose key, under `kind` and `template`, is `rendered`
/// (for keys short enough not to be shortened with a digest).
fn preimages(kind: KeyKind, template: &KeyTemplate, rendered: &str) -> Vec<Vec<String>> {
    let head = format!("{PREFIX}{}", kind.tag());
    let mut found = Vec::new();
    if let Some(rest) = rendered.strip_prefix(&head) {
        walk(template.pieces, rest, &mut Vec::new(), &mut found);
    }
    found
}

/// Fails with a re-checked witness if `values` shares its key with another tuple.
fn assert_single_preimage(template: &KeyTemplate, values: &[String]) -> Result<(), TestCaseError> {
    let rendered = render(KeyKind::Cached, template, values);
    prop_assume!(
        rendered.len() <= 1024,
        "shortened keys are checked elsewhere"
    );
    let found = preimages(KeyKind::Cached, template, &rendered);
    prop_assert!(
        found.iter().any(|tuple| tuple == values),
        "the search missed the original tuple {values:?} of key {rendered:?} ({})",
        template.text
    );
    for other in found.iter().filter(|tuple| *tuple != values) {
        let again = render(KeyKind::Cached, template, other);
        prop_assert_ne!(
            &again,
            &rendered,
            "COLLISION in template {:?}: {:?} and {:?} both render {:?}",
            template.text,
            values,
            other,
            rendered
        );
    }
    Ok(())
}

// ------------------------------------------------ strategies

/// Short strings built from atoms that matter to the encoding: separators,
/// hex digits and hex pairs that spell escaped bytes, `%` and partial
/// escapes, glob and control characters, whitespace, multi-byte
/// characters, and now and then any `char` at all.
fn value() -> impl Strategy<Value = String> {
    let atoms: Vec<&'static str> = vec![
        "-", ":", "/", "x", "y", "v", "a", "A", "F", "f", "0", "2", "9", "é", "%", "%2", "%2A",
        "%25", "%C3", "20", "2A", "0A", "00", "25", "23", "2D", "3A", "2F", "41", "C3", "A9", "*",
        "?", "[", "]", "{", "}", "\\", "#", " ", "\n", "\t", "\r", "\u{0}", "\u{7f}", "\u{a0}",
        "\u{200b}", "日", "😀", "#sha256:",
    ];
    let atom = prop_oneof![
        12 => prop::sample::select(atoms).prop_map(str::to_owned),
        1 => any::<char>().prop_map(String::from),
    ];
    prop::collection::vec(atom, 0..6).prop_map(|atoms| atoms.concat())
}

fn tuple(n: usize) -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(value(), n)
}

fn config(cases: u32) -> Config {
    Config {
        cases,
        // Never write `proptest-regressions/` files into the repository.
        failure_persistence: None,
        ..Config::default()
    }
}

/// One property per template, so a failure names its template.
macro_rules! single_preimage {
    ($($name:ident => $template:ident),* $(,)?) => {$(
        proptest! {
            #![proptest_config(config(384))]
            #[test]
            fn $name(values in tuple(arity(&$template))) {
                assert_single_preimage(&$template, &values)?;
            }
        }
    )*};
}

single_preimage!(
    dash_keys_have_one_preimage => DASH,
    hex_stop_keys_have_one_preimage => HEX_STOP,
    colon_keys_have_one_preimage => COLONS,
    digit_stop_keys_have_one_preimage => DIGIT_STOP,
    accent_stop_keys_have_one_preimage => ACCENT_STOP,
    lone_value_keys_have_one_preimage => ALONE,
);

const ALL: [&KeyTemplate; 6] = [&DASH, &HEX_STOP, &COLONS, &DIGIT_STOP, &ACCENT_STOP, &ALONE];

proptest! {
    #![proptest_config(config(256))]

    /// The direct statement, on random pairs, for every template and kind.
    #[test]
    fn different_tuples_render_different_keys(
        first in tuple(3),
        second in tuple(3),
        which in 0..ALL.len(),
    ) {
        let template = ALL[which];
        let n = arity(template);
        let (first, second) = (&first[..n], &second[..n]);
        for kind in KINDS {
            let (a, b) = (render(kind, template, first), render(kind, template, second));
            if first == second {
                prop_assert_eq!(a, b, "rendering is deterministic");
            } else {
                prop_assert_ne!(a, b, "{:?}: {:?} vs {:?}", template.text, first, second);
            }
        }
    }

    /// Redis Cluster hash tags: no value can put a brace into a key, so a
    /// key's slot (and its lock's fencing counter's, which wraps the lock
    /// key in one tag) never depends on what an argument holds.
    #[test]
    fn values_never_make_a_hash_tag(values in tuple(3), which in 0..ALL.len()) {
        let template = ALL[which];
        let n = arity(template);
        for kind in KINDS {
            let rendered = render(kind, template, &values[..n]);
            prop_assert!(
                !rendered.contains('{') && !rendered.contains('}'),
                "a brace from {:?} reached {:?}", &values[..n], rendered
            );
        }
    }

    /// The three kinds live in separate key spaces: no tuple under one kind
    /// renders the key of any tuple under another (same template or not).
    #[test]
    fn kinds_never_collide(
        first in tuple(3),
        second in tuple(3),
        which in (0..ALL.len(), 0..ALL.len()),
    ) {
        let (one, other) = (ALL[which.0], ALL[which.1]);
        for kind in KINDS {
            let mine = render(kind, one, &first[..arity(one)]);
            for other_kind in KINDS.into_iter().filter(|k| *k != kind) {
                let theirs = render(other_kind, other, &second[..arity(other)]);
                prop_assert_ne!(&mine, &theirs);
                let same_values = render(other_kind, one, &first[..arity(one)]);
                prop_assert_ne!(&mine, &same_values);
            }
            let head = format!("{}{}", PREFIX, kind.tag());
            prop_assert!(mine.starts_with(&head));
        }
    }

    /// Many tuples at once from the same small alphabet: no two distinct
    /// tuples share a key.
    #[test]
    fn a_batch_has_no_collisions(batch in prop::collection::vec(tuple(3), 48), which in 0..ALL.len()) {
        let template = ALL[which];
        let n = arity(template);
        let mut seen: HashMap<String, &[String]> = HashMap::new();
        for values in &batch {
            let values = &values[..n];
            let rendered = render(KeyKind::Cached, template, values);
            if let Some(earlier) = seen.insert(rendered.clone(), values) {
                prop_assert_eq!(earlier, values, "{:?} collide on {:?}", template.text, rendered);
            }
        }
    }

    /// Keys over 1 KiB are shortened to a readable head and a digest of the
    /// whole key: still distinct, bounded, and never equal to a short key.
    #[test]
    fn shortened_keys_stay_distinct(
        long in "[a-c%*:\\-]{1100,1300}",
        tail in tuple(2),
        short in tuple(2),
    ) {
        let one = vec![long.clone(), tail[0].clone()];
        let mut two = one.clone();
        two[1].push('*');
        let three = vec![format!("{long}-"), tail[0].clone()];
        let keys: Vec<String> = [&one, &two, &three]
            .into_iter()
            .map(|values| render(KeyKind::Cached, &DASH, values))
            .collect();
        for k in &keys {
            prop_assert!(k.len() <= 1024, "{} bytes", k.len());
            prop_assert!(k.contains("#sha256:"), "{k}");
        }
        prop_assert_ne!(&keys[0], &keys[1]);
        prop_assert_ne!(&keys[0], &keys[2]);
        prop_assert_ne!(&keys[1], &keys[2]);
        let short_key = render(KeyKind::Cached, &DASH, &short);
        prop_assert!(!short_key.contains('#'), "a value's `#` is escaped: {short_key}");
        prop_assert!(keys.iter().all(|k| *k != short_key));
    }

    /// Inside a value, nothing that must be escaped appears raw, and the
    /// value's stop character appears only percent-encoded.
    #[test]
    fn escaped_characters_never_appear_raw(values in tuple(1), stop in prop::sample::select(vec!['-', 'A', '2', ':', 'é', '%'])) {
        let encoded = encode(Some(stop), &values[0]);
        // Read as the library writes it: `%XX` tokens and raw characters.
        let mut chars = encoded.chars();
        while let Some(c) = chars.next() {
            if c == '%' {
                let hex: String = chars.by_ref().take(2).collect();
                prop_assert!(
                    hex.len() == 2 && hex.chars().all(|h| h.is_ascii_digit() || ('A'..='F').contains(&h)),
                    "`%` not followed by two upper-case hex digits in {:?}", encoded
                );
                continue;
            }
            let must_escape = c.is_control()
                || c.is_whitespace()
                || matches!(c, '#' | '*' | '?' | '[' | ']' | '\\' | '{' | '}');
            prop_assert!(!must_escape, "raw {:?} in {:?}", c, encoded);
            prop_assert_ne!(c, stop, "raw stop character in {:?}", encoded);
        }
        prop_assert_eq!(decode(&encoded), Some(values[0].clone()), "decodes back");
    }
}
