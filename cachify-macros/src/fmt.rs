//! Parsing of key templates such as `"user-{user_id}"` or `"order-<order.id>"`.
//!
//! A placeholder is `{name}` or `<name>`, where the name is a parameter (or
//! `self`) optionally followed by `.field` or `.0` segments. `{{`, `}}`, `<<`
//! and `>>` stand for a literal brace or angle bracket. Two placeholders must
//! be separated by literal text: the runtime escapes the first character of
//! that text inside the value before it, which is what keeps keys injective.

/// One part of a parsed template.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Piece {
    /// Literal text, escapes resolved; never empty.
    Text(String),
    /// A value to interpolate.
    Value(Placeholder),
}

/// A `{root.field...}` placeholder.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Placeholder {
    /// The placeholder as written, braces or angle brackets included, for messages.
    pub(crate) written: String,
    /// A parameter name, or `self`.
    pub(crate) root: String,
    /// Field accesses applied to the root, in order.
    pub(crate) fields: Vec<Field>,
    /// `{name:?}`: formatted with `Debug` rather than `Display`.
    pub(crate) debug: bool,
    /// First character of the literal text that follows, `None` at the end.
    pub(crate) stop: Option<char>,
}

/// One `.field` segment of a placeholder.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Field {
    Named(String),
    Index(u32),
}

/// Parses a template; the error is a message meant for the template literal's span.
pub(crate) fn parse(template: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut rest = template;
    while let Some(c) = rest.chars().next() {
        let after = &rest[c.len_utf8()..];
        match c {
            '{' | '<' if after.starts_with(c) => {
                text.push(c);
                rest = &after[1..];
            }
            '{' | '<' => {
                let close = if c == '{' { '}' } else { '>' };
                let Some(len) = after.find(close) else {
                    return Err(format!(
                        "unclosed placeholder `{rest}` in the key template: add a closing `{close}`, or write `{c}{c}` for a literal `{c}`"
                    ));
                };
                let written = &rest[..len + 2];
                let placeholder = placeholder(written, &after[..len], c)?;
                if text.is_empty() {
                    if let Some(Piece::Value(previous)) = pieces.last() {
                        return Err(format!(
                            "placeholders `{}` and `{written}` must be separated by literal text, so keys cannot collide",
                            previous.written
                        ));
                    }
                } else {
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                }
                pieces.push(Piece::Value(placeholder));
                rest = &after[len + 1..];
            }
            '}' | '>' if after.starts_with(c) => {
                text.push(c);
                rest = &after[1..];
            }
            '}' | '>' => {
                return Err(format!(
                    "unmatched `{c}` in the key template: write `{c}{c}` for a literal `{c}`"
                ));
            }
            _ => {
                text.push(c);
                rest = after;
            }
        }
    }
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    // `%` starts the escapes in interpolated values: as the first character
    // after a value it could not be told apart from one.
    for pair in pieces.windows(2) {
        if let [Piece::Value(value), Piece::Text(text)] = pair
            && text.starts_with('%')
        {
            return Err(format!(
                "the text right after `{}` starts with `%`, which keys use to escape values, so different arguments could share a key: put another character first, e.g. `-%`",
                value.written
            ));
        }
    }
    set_stops(&mut pieces);
    Ok(pieces)
}

fn placeholder(written: &str, name: &str, open: char) -> Result<Placeholder, String> {
    if name.is_empty() {
        return Err(format!(
            "empty placeholder `{written}` in the key template: name a parameter, e.g. `{open}user_id{}`, or write `{open}{open}` for a literal `{open}`",
            &written[1..],
        ));
    }
    let invalid = || {
        format!(
            "invalid placeholder `{written}` in the key template: expected a parameter name, optionally followed by fields and `:?`, e.g. `{{user_id}}`, `{{user.id}}`, `{{pair.0}}` or `{{ids:?}}`"
        )
    };
    let (name, debug) = match name.split_once(':') {
        None => (name, false),
        Some((name, "?")) => (name, true),
        Some((_, spec)) => {
            return Err(format!(
                "unsupported format `:{spec}` in placeholder `{written}`: keys take `{open}name{close}` (`Display`) or `{open}name:?{close}` (`Debug`)",
                close = if open == '{' { '}' } else { '>' },
            ));
        }
    };
    let mut segments = name.split('.');
    let root = match segments.next() {
        Some(root) if root == "self" || is_identifier(root) => root.to_owned(),
        _ => return Err(invalid()),
    };
    let mut fields = Vec::new();
    for segment in segments {
        let field = if is_identifier(segment) {
            Field::Named(segment.to_owned())
        } else {
            Field::Index(tuple_index(segment).ok_or_else(invalid)?)
        };
        fields.push(field);
    }
    Ok(Placeholder {
        written: written.to_owned(),
        root,
        fields,
        debug,
        stop: None,
    })
}

/// A non-keyword identifier. The character check rules out raw identifiers and
/// comments, which syn's lexer would otherwise accept.
fn is_identifier(segment: &str) -> bool {
    segment.chars().all(|c| c == '_' || c.is_alphanumeric())
        && syn::parse_str::<syn::Ident>(segment).is_ok()
}

/// A tuple index as Rust spells it: decimal digits, no leading zero.
fn tuple_index(segment: &str) -> Option<u32> {
    let digits = !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit());
    if !digits || (segment.len() > 1 && segment.starts_with('0')) {
        return None;
    }
    segment.parse().ok()
}

fn set_stops(pieces: &mut [Piece]) {
    for i in 0..pieces.len() {
        let stop = match pieces.get(i + 1) {
            Some(Piece::Text(text)) => text.chars().next(),
            _ => None,
        };
        if let Piece::Value(placeholder) = &mut pieces[i] {
            placeholder.stop = stop;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Piece {
        Piece::Text(s.to_owned())
    }

    fn value(written: &str, root: &str, fields: Vec<Field>, stop: Option<char>) -> Piece {
        Piece::Value(Placeholder {
            written: written.to_owned(),
            root: root.to_owned(),
            fields,
            debug: false,
            stop,
        })
    }

    #[test]
    fn debug_placeholders() {
        let pieces = parse("ids-{req.ids:?}-<n:?>").unwrap();
        let debug: Vec<(bool, &str)> = pieces
            .iter()
            .filter_map(|piece| match piece {
                Piece::Value(value) => Some((value.debug, value.root.as_str())),
                Piece::Text(_) => None,
            })
            .collect();
        assert_eq!(debug, [(true, "req"), (true, "n")]);
        assert!(error("x-{id:x}").contains("unsupported format `:x`"));
        assert!(error("x-{id:#?}").contains("unsupported format `:#?`"));
        assert!(error("x-{:?}").contains("invalid placeholder"));
    }

    fn error(template: &str) -> String {
        match parse(template) {
            Ok(pieces) => panic!("{template:?} parsed as {pieces:?}"),
            Err(message) => message,
        }
    }

    #[test]
    fn text_only() {
        assert_eq!(parse("nightly-job"), Ok(vec![text("nightly-job")]));
        assert_eq!(parse(""), Ok(vec![]));
    }

    #[test]
    fn placeholder_with_stop_chars() {
        assert_eq!(
            parse("user-{user_id}:{kind}"),
            Ok(vec![
                text("user-"),
                value("{user_id}", "user_id", vec![], Some(':')),
                text(":"),
                value("{kind}", "kind", vec![], None),
            ])
        );
    }

    #[test]
    fn placeholder_at_start() {
        assert_eq!(
            parse("{id}é"),
            Ok(vec![value("{id}", "id", vec![], Some('é')), text("é")])
        );
    }

    #[test]
    fn angle_placeholder_is_an_alias() {
        assert_eq!(
            parse("user-<user_id>"),
            Ok(vec![
                text("user-"),
                value("<user_id>", "user_id", vec![], None)
            ])
        );
    }

    #[test]
    fn fields_self_and_tuple_index() {
        assert_eq!(
            parse("{self.tenant}/{user.id}/{pair.0}/{x.10.name}"),
            Ok(vec![
                value(
                    "{self.tenant}",
                    "self",
                    vec![Field::Named("tenant".into())],
                    Some('/')
                ),
                text("/"),
                value(
                    "{user.id}",
                    "user",
                    vec![Field::Named("id".into())],
                    Some('/')
                ),
                text("/"),
                value("{pair.0}", "pair", vec![Field::Index(0)], Some('/')),
                text("/"),
                value(
                    "{x.10.name}",
                    "x",
                    vec![Field::Index(10), Field::Named("name".into())],
                    None
                ),
            ])
        );
    }

    #[test]
    fn escapes_are_literal_text() {
        assert_eq!(parse("{{a}}<<b>>"), Ok(vec![text("{a}<b>")]));
        // An escaped brace is literal text, so it separates placeholders and is the stop char.
        assert_eq!(
            parse("{a}{{{b}"),
            Ok(vec![
                value("{a}", "a", vec![], Some('{')),
                text("{"),
                value("{b}", "b", vec![], None),
            ])
        );
        assert_eq!(
            parse("<a>>>"),
            Ok(vec![value("<a>", "a", vec![], Some('>')), text(">")])
        );
    }

    #[test]
    fn unicode_identifier() {
        assert_eq!(
            parse("{año}-"),
            Ok(vec![value("{año}", "año", vec![], Some('-')), text("-")])
        );
    }

    #[test]
    fn empty_placeholder() {
        assert_eq!(
            error("user-{}"),
            "empty placeholder `{}` in the key template: name a parameter, e.g. `{user_id}`, or write `{{` for a literal `{`"
        );
        assert_eq!(
            error("user-<>"),
            "empty placeholder `<>` in the key template: name a parameter, e.g. `<user_id>`, or write `<<` for a literal `<`"
        );
    }

    #[test]
    fn unclosed_placeholder() {
        assert_eq!(
            error("user-{user_id"),
            "unclosed placeholder `{user_id` in the key template: add a closing `}`, or write `{{` for a literal `{`"
        );
        assert_eq!(
            error("a-<b"),
            "unclosed placeholder `<b` in the key template: add a closing `>`, or write `<<` for a literal `<`"
        );
    }

    #[test]
    fn unmatched_close() {
        assert_eq!(
            error("user}"),
            "unmatched `}` in the key template: write `}}` for a literal `}`"
        );
        assert_eq!(
            error("a->b"),
            "unmatched `>` in the key template: write `>>` for a literal `>`"
        );
        assert_eq!(
            error("{a}}"),
            "unmatched `}` in the key template: write `}}` for a literal `}`"
        );
    }

    #[test]
    fn invalid_names() {
        for template in [
            "{a b}", "{1x}", "{a.}", "{.a}", "{a..b}", "{fn}", "{_}", "{a.self}", "{a.01}",
            "{a-b}", "{r#type}", "{a/**/}", "{ a }", "{Self}", "<a{b>",
        ] {
            let message = error(template);
            assert_eq!(
                message,
                format!(
                    "invalid placeholder `{template}` in the key template: expected a parameter name, optionally followed by fields and `:?`, e.g. `{{user_id}}`, `{{user.id}}`, `{{pair.0}}` or `{{ids:?}}`"
                ),
                "{template}"
            );
        }
    }

    #[test]
    fn percent_right_after_a_placeholder() {
        assert_eq!(
            parse("{a}%{b}").unwrap_err(),
            "the text right after `{a}` starts with `%`, which keys use to escape values, so different arguments could share a key: put another character first, e.g. `-%`"
        );
        assert!(parse("{first}%20{last}").is_err());
        assert!(parse("%{a}-%{b}").is_ok(), "elsewhere `%` is plain text");
    }

    #[test]
    fn adjacent_placeholders() {
        assert_eq!(
            error("{a}{b}"),
            "placeholders `{a}` and `{b}` must be separated by literal text, so keys cannot collide"
        );
        assert_eq!(
            error("x-{a}<b.c>"),
            "placeholders `{a}` and `<b.c>` must be separated by literal text, so keys cannot collide"
        );
    }
}
