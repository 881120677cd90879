//! Checks of the annotated item against the template and the options.

use proc_macro2::TokenStream;
use quote::{ToTokens, quote};
use syn::visit::{self, Visit};
use syn::{
    FnArg, GenericArgument, Ident, Item, ItemFn, LitStr, Pat, PathArguments, PathSegment,
    ReturnType, Signature, Type,
};

use crate::attr::{Args, Kind};
use crate::fmt::Piece;

/// Parses the annotated item, which must be a non-`const` function with a body.
pub(crate) fn function(kind: Kind, item: TokenStream) -> syn::Result<ItemFn> {
    // Point at the item's keyword and name, not at its whole body.
    let function = match syn::parse2::<Item>(item)? {
        Item::Fn(function) => function,
        Item::Struct(item) => return Err(not_a_function(kind, item.struct_token, item.ident)),
        Item::Enum(item) => return Err(not_a_function(kind, item.enum_token, item.ident)),
        Item::Union(item) => return Err(not_a_function(kind, item.union_token, item.ident)),
        Item::Trait(item) => return Err(not_a_function(kind, item.trait_token, item.ident)),
        Item::Mod(item) => return Err(not_a_function(kind, item.mod_token, item.ident)),
        Item::Const(item) => return Err(not_a_function(kind, item.const_token, item.ident)),
        Item::Static(item) => return Err(not_a_function(kind, item.static_token, item.ident)),
        Item::Type(item) => return Err(not_a_function(kind, item.type_token, item.ident)),
        Item::Impl(item) => return Err(not_a_function(kind, item.impl_token, item.self_ty)),
        other => return Err(not_a_function(kind, other, TokenStream::new())),
    };
    if let Some(constness) = &function.sig.constness {
        return Err(syn::Error::new(
            constness.span,
            format!(
                "`#[{}]` cannot be applied to a `const fn`: it talks to a cache at run time",
                kind.name()
            ),
        ));
    }
    rewritten_by_async_trait(kind.name(), &function.sig)?;
    Ok(function)
}

/// `#[async_trait]` on the enclosing `impl` has already turned the `async fn`
/// into a plain `fn` returning a boxed future (with an `'async_trait`
/// lifetime), which cannot be cached as it stands; the fix is to expand the
/// attribute first, through `#[cachify::trait_impl]` above `#[async_trait]`.
fn rewritten_by_async_trait(macro_name: &str, sig: &Signature) -> syn::Result<()> {
    if !sig
        .generics
        .lifetimes()
        .any(|param| param.lifetime.ident == "async_trait")
    {
        return Ok(());
    }
    Err(syn::Error::new(
        sig.ident.span(),
        format!(
            "`#[{macro_name}]` on a method of an `#[async_trait]` impl needs `#[cachify::trait_impl]` \
             on the impl block, written above `#[async_trait]`, so it sees the `async fn` before \
             `#[async_trait]` rewrites it"
        ),
    ))
}

fn not_a_function(kind: Kind, keyword: impl ToTokens, name: impl ToTokens) -> syn::Error {
    syn::Error::new_spanned(
        quote!(#keyword #name),
        format!("`#[{}]` can only be applied to a function", kind.name()),
    )
}

/// Every placeholder root must name a binding of the function's parameters.
/// Returns those bindings, one per placeholder, in template order.
pub(crate) fn placeholders(
    sig: &Signature,
    template: &LitStr,
    pieces: &[Piece],
) -> syn::Result<Vec<Ident>> {
    placeholders_in(sig, template, pieces, "key template")
}

/// [`placeholders`] of a template named `what` in messages.
pub(crate) fn placeholders_in(
    sig: &Signature,
    template: &LitStr,
    pieces: &[Piece],
    what: &str,
) -> syn::Result<Vec<Ident>> {
    let bindings = parameter_bindings(sig);
    let mut roots = Vec::new();
    let mut errors: Option<syn::Error> = None;
    for piece in pieces {
        let Piece::Value(placeholder) = piece else {
            continue;
        };
        match bindings
            .iter()
            .find(|binding| **binding == placeholder.root)
        {
            Some(binding) => {
                // Resolves like the parameter, but errors point at the template.
                let mut root = binding.clone();
                root.set_span(binding.span().located_at(template.span()));
                roots.push(root);
            }
            None => {
                let parameters = if bindings.is_empty() {
                    "it has no parameters".to_owned()
                } else {
                    let names: Vec<String> = bindings.iter().map(ToString::to_string).collect();
                    format!("its parameters are: {}", names.join(", "))
                };
                let error = syn::Error::new(
                    template.span(),
                    format!(
                        "`{}` in the {what} names no parameter of `{}`; {parameters}",
                        placeholder.written, sig.ident
                    ),
                );
                match &mut errors {
                    Some(errors) => errors.combine(error),
                    None => errors = Some(error),
                }
            }
        }
    }
    match errors {
        Some(errors) => Err(errors),
        None => Ok(roots),
    }
}

/// `#[once]` and `#[lock]` need a value for a refused lock: the user's
/// `return_on_locked`, or an `Err` converted from `cachify::Error`.
///
/// `#[cached]` needs a return type it can name and store: an `impl Trait`
/// (an axum handler's `impl IntoResponse`) is neither.
pub(crate) fn return_type(kind: Kind, args: &Args, sig: &Signature) -> syn::Result<()> {
    if kind == Kind::Cached {
        return match &sig.output {
            ReturnType::Type(_, ty) => {
                if let Some(opaque) = opaque(ty) {
                    return Err(syn::Error::new_spanned(
                        opaque,
                        format!("`#[cached]` cannot store an `impl Trait` output: {INSTEAD}"),
                    ));
                }
                match response(ty) {
                    Some(response) => Err(syn::Error::new_spanned(
                        response,
                        format!("`#[cached]` cannot store an HTTP response: {INSTEAD}"),
                    )),
                    None => Ok(()),
                }
            }
            ReturnType::Default => Ok(()),
        };
    }
    if args.refusal().is_some() || is_result_like(&sig.output) {
        return Ok(());
    }
    let option = if kind == Kind::Pooled {
        "return_on_full"
    } else {
        "return_on_locked"
    };
    let message = format!(
        "`#[{}]` needs `{option} = <expr>`, or a return type `Result<_, E>` with `E: From<cachify::Error>`",
        kind.name()
    );
    Err(match &sig.output {
        ReturnType::Type(_, ty) => syn::Error::new_spanned(ty, message),
        ReturnType::Default => syn::Error::new(sig.ident.span(), message),
    })
}

/// What to do instead of caching a response-like output.
const INSTEAD: &str = "cache an inner function that returns the data (e.g. `Result<User, E>` or axum's `Json<User>`), or cache whole responses with `cachify::http::CacheLayer`";

/// The first part of `ty` that is an HTTP response rather than data: a
/// status or headers (`StatusCode`, `HeaderMap`), a type written through
/// `axum::` or `http::` other than `axum::Json` (`axum::response::Response`,
/// `axum::response::Html<T>`), or a tuple holding one of these or a bare
/// `Json` (`(StatusCode, Json<T>)`). `Json<T>` alone is data: its `T` is
/// stored. A user's own `Response` or `Redirect` struct is data too.
fn response(ty: &Type) -> Option<&Type> {
    fn is_response(ty: &Type) -> bool {
        let Type::Path(path) = ungrouped(ty) else {
            return false;
        };
        let segments: Vec<String> = path
            .path
            .segments
            .iter()
            .map(|segment| segment.ident.to_string())
            .collect();
        match segments.as_slice() {
            [name] => name == "StatusCode" || name == "HeaderMap",
            [first, .., last] => (first == "axum" || first == "http") && last != "Json",
            [] => false,
        }
    }
    let ty = ungrouped(ty);
    if let Type::Tuple(tuple) = ty
        && tuple.elems.iter().any(|elem| {
            is_response(elem)
                || matches!(ungrouped(elem), Type::Path(path)
                    if path.path.segments.len() == 1 && path.path.segments[0].ident == "Json")
        })
    {
        return Some(ty);
    }
    if is_response(ty) {
        return Some(ty);
    }
    // Inside `Result<_, E>` (any `..Result`) or `Option`: the stored part.
    let wrapper = last_segment(ty).is_some_and(|segment| {
        segment.ident == "Option" || segment.ident.to_string().ends_with("Result")
    });
    if wrapper {
        return type_argument(ty, 0).and_then(response);
    }
    None
}

/// `ty` without the invisible groups and parentheses around it.
fn ungrouped(mut ty: &Type) -> &Type {
    loop {
        ty = match ty {
            Type::Group(group) => &group.elem,
            Type::Paren(paren) => &paren.elem,
            _ => return ty,
        };
    }
}

/// The first `impl Trait` inside `ty`, if any.
fn opaque(ty: &Type) -> Option<&syn::TypeImplTrait> {
    struct Opaque<'a>(Option<&'a syn::TypeImplTrait>);
    impl<'a> Visit<'a> for Opaque<'a> {
        fn visit_type_impl_trait(&mut self, opaque: &'a syn::TypeImplTrait) {
            self.0.get_or_insert(opaque);
        }
    }
    let mut found = Opaque(None);
    found.visit_type(ty);
    found.0
}

/// `#[pooled]` needs a `max_size`, and a literal one of at least 1: a pool
/// of no slots would refuse every call.
pub(crate) fn max_size(kind: Kind, args: &Args) -> syn::Result<()> {
    if kind != Kind::Pooled {
        return Ok(());
    }
    let Some(max_size) = &args.max_size else {
        return Err(syn::Error::new(
            args.template.span(),
            "`#[pooled]` needs `max_size = <usize>`: how many calls may run at once, e.g. `#[pooled(\"export-{tenant}\", max_size = 3)]`",
        ));
    };
    let mut inner = max_size;
    while let syn::Expr::Group(group) = inner {
        inner = &group.expr;
    }
    if let syn::Expr::Lit(syn::ExprLit {
        lit: syn::Lit::Int(int),
        ..
    }) = inner
        && int.base10_parse::<u128>()? == 0
    {
        return Err(syn::Error::new(
            int.span(),
            "max_size must be at least 1: a pool of 0 slots would refuse every call",
        ));
    }
    Ok(())
}

/// `none_ttl` says how long a `None` is stored: the output must have one
/// (`Option<T>`, or `Result<Option<T>, E>`), or the option would do nothing.
pub(crate) fn none_ttl(args: &Args, sig: &Signature, optional: bool) -> syn::Result<()> {
    if args.none_ttl.is_none() || optional {
        return Ok(());
    }
    let message =
        "`none_ttl` needs an output that can be `None`: `Option<T>` or `Result<Option<T>, E>`";
    Err(match &sig.output {
        ReturnType::Type(_, ty) => syn::Error::new_spanned(ty, message),
        ReturnType::Default => syn::Error::new(sig.ident.span(), message),
    })
}

/// Whether the return type is spelled like a `Result`: a path whose last
/// segment is `Result` (`Result<T, E>`, `io::Result<T>`), or ends with
/// `Result` and takes generic arguments (`AppResult<T>`). A plain struct
/// such as `SearchResult` is not one.
pub(crate) fn is_result_like(output: &ReturnType) -> bool {
    let ReturnType::Type(_, ty) = output else {
        return false;
    };
    last_segment(ty).is_some_and(|segment| {
        let name = segment.ident.to_string();
        name == "Result"
            || (name.ends_with("Result")
                && matches!(segment.arguments, PathArguments::AngleBracketed(_)))
    })
}

/// The generic type argument `index` of a path type: `User` is argument 0 of `Result<User, E>`.
pub(crate) fn type_argument(ty: &Type, index: usize) -> Option<&Type> {
    let PathArguments::AngleBracketed(arguments) = &last_segment(ty)?.arguments else {
        return None;
    };
    arguments
        .args
        .iter()
        .filter_map(|argument| match argument {
            GenericArgument::Type(ty) => Some(ty),
            _ => None,
        })
        .nth(index)
}

pub(crate) fn last_segment(ty: &Type) -> Option<&PathSegment> {
    // Types passed through `macro_rules!` arrive in invisible groups.
    match ungrouped(ty) {
        Type::Path(path) => path.path.segments.last(),
        _ => None,
    }
}

/// The names a template may use, in declaration order: `self` for a
/// receiver, then every binding in the parameter patterns.
fn parameter_bindings(sig: &Signature) -> Vec<Ident> {
    let mut names = Vec::new();
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(receiver) => {
                names.push(Ident::new("self", receiver.self_token.span));
            }
            FnArg::Typed(typed) => names.extend(bindings(&typed.pat)),
        }
    }
    names
}

/// The variables a parameter pattern binds: `Path(id)` binds `id`,
/// `Foo { a, b: c }` binds `a` and `c`.
pub(crate) fn bindings(pat: &Pat) -> Vec<Ident> {
    struct Bindings(Vec<Ident>);
    impl Visit<'_> for Bindings {
        fn visit_pat_ident(&mut self, binding: &syn::PatIdent) {
            self.0.push(binding.ident.clone());
            visit::visit_pat_ident(self, binding);
        }
    }
    let mut found = Bindings(Vec::new());
    found.visit_pat(pat);
    found.0
}

/// One binding of a parameter, as `early_refresh` clones it.
pub(crate) struct Cloned {
    pub(crate) mutability: Option<syn::Token![mut]>,
    pub(crate) ident: Ident,
    /// The parameter's type, where an argument that cannot be cloned into
    /// a background refresh is reported.
    pub(crate) ty: Type,
}

/// With `early_refresh`: the bindings the background refresh clones. A
/// method taking `self` is refused: the refresh would need an owned copy
/// of the receiver.
pub(crate) fn refresh_arguments(args: &Args, sig: &Signature) -> syn::Result<Vec<Cloned>> {
    if !args
        .early_refresh
        .as_ref()
        .is_some_and(|literal| literal.value)
    {
        return Ok(Vec::new());
    }
    let mut cloned = Vec::new();
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(receiver) => {
                return Err(syn::Error::new(
                    receiver.self_token.span,
                    "`early_refresh` cannot be used on a method taking `self`: the background refresh \
                     needs owned copies of the arguments; cache a free function that takes what it \
                     needs (`Clone + Send + 'static` values)",
                ));
            }
            FnArg::Typed(typed) => {
                struct Collect<'a>(&'a mut Vec<Cloned>, &'a Type);
                impl Visit<'_> for Collect<'_> {
                    fn visit_pat_ident(&mut self, binding: &syn::PatIdent) {
                        self.0.push(Cloned {
                            mutability: binding.mutability,
                            ident: binding.ident.clone(),
                            ty: self.1.clone(),
                        });
                        visit::visit_pat_ident(self, binding);
                    }
                }
                Collect(&mut cloned, &typed.ty).visit_pat(&typed.pat);
            }
        }
    }
    Ok(cloned)
}
