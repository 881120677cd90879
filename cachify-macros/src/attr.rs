//! Parsing of the attribute arguments: `("template", name = expr, ...)`.

use proc_macro2::{Literal, Span, TokenStream};
use syn::ext::IdentExt;
use syn::parse::{ParseStream, Parser};
use syn::spanned::Spanned;
use syn::{Expr, Ident, Lit, LitBool, LitStr, Token};

/// Which of the four macros is being expanded.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Cached,
    Once,
    Lock,
    Pooled,
}

impl Kind {
    /// Every kind, as the attributes that stack on one function (see `stack`).
    pub(crate) const ALL: &'static [Kind] = &[Kind::Cached, Kind::Once, Kind::Lock, Kind::Pooled];

    /// The attribute's name, as users write it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Cached => "cached",
            Kind::Once => "once",
            Kind::Lock => "lock",
            Kind::Pooled => "pooled",
        }
    }

    fn options(self) -> &'static [&'static str] {
        match self {
            Kind::Cached => &[
                "ttl",
                "none_ttl",
                "unless",
                "lock",
                "client",
                "tags",
                "codec",
                "stale_if_error",
                "early_refresh",
            ],
            Kind::Once => &["ttl", "return_on_locked", "client"],
            Kind::Lock => &["ttl", "wait", "return_on_locked", "client"],
            Kind::Pooled => &["max_size", "ttl", "wait", "return_on_full", "client"],
        }
    }
}

/// A `ttl` or `wait` value.
pub(crate) enum Duration {
    /// An integer literal: whole seconds, as an unsuffixed literal.
    Secs(Literal),
    /// Any other expression, which must evaluate to a `core::time::Duration`.
    Expr(Expr),
}

/// The parsed arguments of one attribute.
pub(crate) struct Args {
    pub(crate) template: LitStr,
    pub(crate) ttl: Option<Duration>,
    /// `none_ttl` on `#[cached]`: how long a `None` output is stored.
    pub(crate) none_ttl: Option<Duration>,
    pub(crate) wait: Option<Duration>,
    pub(crate) unless: Option<Expr>,
    pub(crate) return_on_locked: Option<Expr>,
    /// `lock = <bool>` on `#[cached]`: one fill across processes.
    pub(crate) fill_lock: Option<Expr>,
    pub(crate) client: Option<Expr>,
    /// `tags = ["user:{id}", ..]` on `#[cached]`: tag templates.
    pub(crate) tags: Option<Vec<LitStr>>,
    /// `ttl = None` on `#[cached]`: never expires (`ttl` is then `None`).
    pub(crate) ttl_never: Option<Span>,
    /// `codec = <expr>` on `#[cached]`: a `cachify::Codec` for its entries.
    pub(crate) codec: Option<Expr>,
    /// `max_size = <usize>` on `#[pooled]`: how many callers run at once.
    pub(crate) max_size: Option<Expr>,
    /// `return_on_full` on `#[pooled]`.
    pub(crate) return_on_full: Option<Expr>,
    /// `stale_if_error` on `#[cached]`: how long after its TTL a value
    /// still answers when the function fails.
    pub(crate) stale_if_error: Option<Duration>,
    /// `early_refresh = true` on `#[cached]` (the literal, for its span).
    pub(crate) early_refresh: Option<LitBool>,
}

impl Args {
    /// The value returned instead of running the body when it may not run:
    /// `return_on_locked` or `return_on_full`.
    pub(crate) fn refusal(&self) -> Option<&Expr> {
        self.return_on_locked
            .as_ref()
            .or(self.return_on_full.as_ref())
    }
}

/// Parses the tokens inside `#[cached(...)]`, `#[once(...)]`, `#[lock(...)]` or `#[pooled(...)]`.
pub(crate) fn parse(kind: Kind, args: TokenStream) -> syn::Result<Args> {
    let parser = |input: ParseStream| parse_args(kind, input);
    parser.parse2(args)
}

fn parse_args(kind: Kind, input: ParseStream) -> syn::Result<Args> {
    let template = parse_template(kind, input)?;
    let mut args = Args {
        template,
        ttl: None,
        none_ttl: None,
        wait: None,
        unless: None,
        return_on_locked: None,
        fill_lock: None,
        client: None,
        tags: None,
        ttl_never: None,
        codec: None,
        max_size: None,
        return_on_full: None,
        stale_if_error: None,
        early_refresh: None,
    };
    while !input.is_empty() {
        input.parse::<Token![,]>()?;
        if input.is_empty() {
            break;
        }
        // `parse_any` so that a keyword such as `type = 1` is reported as an unknown option.
        let name = Ident::parse_any(input)?;
        let option = name.to_string();
        check_option(kind, &name, &option)?;
        input.parse::<Token![=]>()?;
        let value: Expr = input.parse()?;
        let duplicate = || {
            syn::Error::new(
                name.span(),
                format!("duplicate option `{option}` in `#[{}]`", kind.name()),
            )
        };
        if let Some(span) = none_literal(&value) {
            check_none(kind, &option, span)?;
        }
        match option.as_str() {
            "ttl" => {
                if args.ttl.is_some() || args.ttl_never.is_some() {
                    return Err(duplicate());
                }
                if let Some(span) = none_literal(&value) {
                    args.ttl_never = Some(span);
                    continue;
                }
                args.ttl = Some(duration(
                    value,
                    Some("omit it to use the client's default"),
                )?);
            }
            "none_ttl" => {
                if args.none_ttl.is_some() {
                    return Err(duplicate());
                }
                args.none_ttl = Some(duration(value, Some("omit it to not store `None`"))?);
            }
            "wait" => {
                if args.wait.is_some() {
                    return Err(duplicate());
                }
                args.wait = Some(duration(value, None)?);
            }
            "unless" => set_once(&mut args.unless, value, duplicate)?,
            "return_on_locked" => set_once(&mut args.return_on_locked, value, duplicate)?,
            "lock" => set_once(&mut args.fill_lock, value, duplicate)?,
            "tags" => {
                if args.tags.is_some() {
                    return Err(duplicate());
                }
                args.tags = Some(tags(value)?);
            }
            "codec" => set_once(&mut args.codec, value, duplicate)?,
            "max_size" => set_once(&mut args.max_size, value, duplicate)?,
            "return_on_full" => set_once(&mut args.return_on_full, value, duplicate)?,
            "stale_if_error" => {
                if args.stale_if_error.is_some() {
                    return Err(duplicate());
                }
                args.stale_if_error = Some(stale_if_error(value)?);
            }
            "early_refresh" => {
                if args.early_refresh.is_some() {
                    return Err(duplicate());
                }
                args.early_refresh = Some(bool_literal(value, &option)?);
            }
            _ => set_once(&mut args.client, value, duplicate)?,
        }
    }
    Ok(args)
}

fn parse_template(kind: Kind, input: ParseStream) -> syn::Result<LitStr> {
    let message = format!(
        "`#[{}]` takes a key template string as its first argument, e.g. `#[{}(\"user-{{user_id}}\")]`",
        kind.name(),
        kind.name(),
    );
    if input.is_empty() {
        return Err(syn::Error::new(Span::call_site(), message));
    }
    if !input.peek(Lit) {
        return Err(input.error(message));
    }
    match input.parse::<Lit>()? {
        Lit::Str(template) if template.suffix().is_empty() => Ok(template),
        other => Err(syn::Error::new(other.span(), message)),
    }
}

fn check_option(kind: Kind, name: &Ident, option: &str) -> syn::Result<()> {
    let valid = kind.options();
    if valid.contains(&option) {
        return Ok(());
    }
    let list = valid.join(", ");
    let macro_name = kind.name();
    let message = match option {
        "wait" => format!(
            "option `wait` is not valid for `#[{macro_name}]` (only `#[lock]` and `#[pooled]` wait); valid options are: {list}"
        ),
        "unless" | "none_ttl" | "codec" | "stale_if_error" | "early_refresh" => format!(
            "option `{option}` is not valid for `#[{macro_name}]` (only `#[cached]` takes it); valid options are: {list}"
        ),
        "tags" => format!(
            "option `tags` is not valid for `#[{macro_name}]` (only `#[cached]` takes it); valid options are: {list}"
        ),
        "lock" => format!(
            "option `lock` is not valid for `#[{macro_name}]` (only `#[cached]` takes it); valid options are: {list}"
        ),
        "return_on_locked" if kind == Kind::Pooled => format!(
            "option `return_on_locked` is not valid for `#[pooled]`: a pool is full, not locked, so write `return_on_full`; valid options are: {list}"
        ),
        "return_on_locked" => format!(
            "option `return_on_locked` is not valid for `#[{macro_name}]` (only `#[once]` and `#[lock]` take it); valid options are: {list}"
        ),
        "max_size" | "return_on_full" => format!(
            "option `{option}` is not valid for `#[{macro_name}]` (only `#[pooled]` takes it); valid options are: {list}"
        ),
        _ => format!("unknown option `{option}` for `#[{macro_name}]`; valid options are: {list}"),
    };
    Err(syn::Error::new(name.span(), message))
}

/// `None` (or `Option::None`, by any path), as an option's value: its span.
fn none_literal(value: &Expr) -> Option<Span> {
    let mut inner = value;
    while let Expr::Group(group) = inner {
        inner = &group.expr;
    }
    let Expr::Path(path) = inner else {
        return None;
    };
    let last = path.path.segments.last()?;
    (path.qself.is_none() && last.ident == "None" && last.arguments.is_none())
        .then(|| last.ident.span())
}

/// `option = None` means "never expires" for `ttl` on `#[cached]` only;
/// anywhere else it is an error that says what to write instead.
fn check_none(kind: Kind, option: &str, span: Span) -> syn::Result<()> {
    let instead = match option {
        "ttl" if kind == Kind::Cached => return Ok(()),
        "ttl" => format!(
            "`ttl = None` is not valid for `#[{}]`: a lock's lease must end, so that a crashed \
             holder's lock frees itself; omit `ttl` to use the client's `lock_ttl`",
            kind.name()
        ),
        "none_ttl" => "`none_ttl = None` is the default: omit it to not store `None`".to_owned(),
        "wait" => "`wait = None`: omit `wait` (or write `wait = 0`) to not wait".to_owned(),
        _ => return Ok(()),
    };
    Err(syn::Error::new(span, instead))
}

fn set_once(
    slot: &mut Option<Expr>,
    value: Expr,
    duplicate: impl FnOnce() -> syn::Error,
) -> syn::Result<()> {
    if slot.is_some() {
        return Err(duplicate());
    }
    *slot = Some(value);
    Ok(())
}

/// Integer literals are seconds; anything else is left to the type checker
/// as a `Duration`. A TTL (`zero`: how to say "none" instead) cannot be zero.
fn duration(value: Expr, zero: Option<&str>) -> syn::Result<Duration> {
    // A literal passed through a `macro_rules!` `$ttl:expr` arrives wrapped in an invisible group.
    let mut inner = &value;
    while let Expr::Group(group) = inner {
        inner = &group.expr;
    }
    let Expr::Lit(syn::ExprLit {
        lit: Lit::Int(int), ..
    }) = inner
    else {
        return Ok(Duration::Expr(value));
    };
    let seconds: u64 = int.base10_parse()?;
    if let (0, Some(instead)) = (seconds, zero) {
        return Err(syn::Error::new(
            int.span(),
            format!("ttl must be at least 1 second; {instead}"),
        ));
    }
    let mut literal = Literal::u64_unsuffixed(seconds);
    literal.set_span(int.span());
    Ok(Duration::Secs(literal))
}

/// `tags = ["user:{id}", "users"]`: an array of string literals, each a
/// template (checked like the key template by the caller).
fn tags(value: Expr) -> syn::Result<Vec<LitStr>> {
    let mut inner = &value;
    while let Expr::Group(group) = inner {
        inner = &group.expr;
    }
    let Expr::Array(array) = inner else {
        return Err(syn::Error::new_spanned(
            value,
            "`tags` takes an array of string literals, e.g. `tags = [\"user:{id}\", \"users\"]`",
        ));
    };
    array
        .elems
        .iter()
        .map(|element| {
            let mut element_inner = element;
            while let Expr::Group(group) = element_inner {
                element_inner = &group.expr;
            }
            match element_inner {
                Expr::Lit(syn::ExprLit {
                    lit: Lit::Str(tag), ..
                }) if tag.suffix().is_empty() => {
                    if tag.value().is_empty() {
                        return Err(syn::Error::new(
                            tag.span(),
                            "a tag cannot be empty: name what the entry depends on, e.g. `\"users\"`",
                        ));
                    }
                    Ok(tag.clone())
                }
                _ => Err(syn::Error::new_spanned(
                    element,
                    "a tag must be a string literal (a template such as `\"user:{id}\"`)",
                )),
            }
        })
        .collect()
}

/// `stale_if_error`: a duration like `ttl`, never zero (omitting it is how
/// to say none).
fn stale_if_error(value: Expr) -> syn::Result<Duration> {
    let parsed = duration(value, None)?;
    if let Duration::Secs(seconds) = &parsed
        && seconds.to_string() == "0"
    {
        return Err(syn::Error::new(
            seconds.span(),
            "stale_if_error must be at least 1 second; omit it to never serve stale values",
        ));
    }
    Ok(parsed)
}

/// An option that changes the generated code: a `true` or `false` literal.
fn bool_literal(value: Expr, option: &str) -> syn::Result<LitBool> {
    let mut inner = &value;
    while let Expr::Group(group) = inner {
        inner = &group.expr;
    }
    match inner {
        Expr::Lit(syn::ExprLit {
            lit: Lit::Bool(literal),
            ..
        }) => Ok(literal.clone()),
        _ => Err(syn::Error::new(
            value.span(),
            format!("`{option}` takes `true` or `false`, written as a literal"),
        )),
    }
}
