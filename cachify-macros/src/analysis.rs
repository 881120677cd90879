//! Analysis of the annotated function for its siblings: which names the
//! key template and the `client = ..` expression use, which parameters
//! and generic parameters a sibling therefore keeps, and how its patterns
//! are pruned. `expand` only emits what this decides.

use std::collections::HashSet;

use proc_macro2::{TokenStream, TokenTree};
use quote::ToTokens;
use syn::punctuated::Punctuated;
use syn::spanned::Spanned;
use syn::visit::Visit;
use syn::visit_mut::{self, VisitMut};
use syn::{Expr, GenericParam, Generics, Ident, Pat, Token, WherePredicate};

use crate::fmt::Piece;

/// The names the template's placeholders (`roots`) and the client
/// expression use.
pub(crate) fn used_names(roots: &[Ident], client: Option<&Expr>) -> HashSet<String> {
    let mut names: HashSet<String> = roots.iter().map(ToString::to_string).collect();
    if let Some(client) = client {
        ExprNames(&mut names).visit_expr(client);
    }
    names
}

/// Collects single-segment paths (variables, `self`) in an expression, and
/// conservatively every identifier inside macro calls.
struct ExprNames<'a>(&'a mut HashSet<String>);

impl Visit<'_> for ExprNames<'_> {
    fn visit_expr_path(&mut self, path: &syn::ExprPath) {
        if let (None, Some(ident)) = (&path.qself, path.path.get_ident()) {
            self.0.insert(ident.to_string());
        }
        syn::visit::visit_expr_path(self, path);
    }

    fn visit_macro(&mut self, mac: &syn::Macro) {
        mentioned(mac.tokens.clone(), self.0);
    }
}

/// Every identifier in `tokens`, lifetimes written as `'a`.
fn mentioned(tokens: TokenStream, out: &mut HashSet<String>) {
    let mut after_quote = false;
    for token in tokens {
        match &token {
            TokenTree::Group(group) => mentioned(group.stream(), out),
            TokenTree::Ident(ident) if after_quote => {
                out.insert(format!("'{ident}"));
            }
            TokenTree::Ident(ident) => {
                out.insert(ident.to_string());
            }
            TokenTree::Punct(_) | TokenTree::Literal(_) => {}
        }
        after_quote = matches!(&token, TokenTree::Punct(punct) if punct.as_char() == '\'');
    }
}

pub(crate) fn mentions(tokens: &impl ToTokens) -> HashSet<String> {
    let mut names = HashSet::new();
    mentioned(tokens.to_token_stream(), &mut names);
    names
}

/// Whether the function is certainly inside an `impl` or a trait: it has
/// a receiver, or names `Self` in its signature or its body. A free
/// function can do none of these. In the body, nested items and macro
/// calls are skipped: an `impl` there may name `Self` of its own.
pub(crate) fn in_impl(function: &syn::ItemFn) -> bool {
    let sig = &function.sig;
    if sig.receiver().is_some() || mentions(sig).contains("Self") {
        return true;
    }
    let mut names = NamesSelf(false);
    names.visit_block(&function.block);
    names.0
}

/// Whether a body names `Self` outside nested items and macro calls.
struct NamesSelf(bool);

impl Visit<'_> for NamesSelf {
    fn visit_item(&mut self, _: &syn::Item) {}

    fn visit_macro(&mut self, _: &syn::Macro) {}

    fn visit_ident(&mut self, ident: &Ident) {
        self.0 |= ident == "Self";
    }
}

/// The generic arguments that name a sibling with these `generics` and
/// `inputs` as a value (`Self::find_reset::<T, { N }>`): its type and
/// const parameters, in order, a const one in braces so that a type of the
/// same name cannot capture it. `None` when an input is `impl Trait`,
/// whose anonymous parameter cannot be named.
pub(crate) fn generic_arguments(
    generics: &Generics,
    inputs: &[TokenStream],
) -> Option<Vec<TokenStream>> {
    if inputs.iter().any(|input| mentions(input).contains("impl")) {
        return None;
    }
    Some(
        generics
            .params
            .iter()
            .filter_map(|param| match param {
                GenericParam::Type(param) => Some(param.ident.to_token_stream()),
                GenericParam::Const(param) => {
                    let ident = &param.ident;
                    Some(quote::quote!({ #ident }))
                }
                GenericParam::Lifetime(_) => None,
            })
            .collect(),
    )
}

/// Rewrites a kept parameter's pattern for a sibling (see [`Prune`]).
pub(crate) fn prune_pattern(pat: &mut Pat, used: &HashSet<String>) {
    Prune(used).visit_pat_mut(pat);
}

/// Rewrites a kept parameter pattern: no `mut`, and `_` for the bindings the
/// key does not use, so the sibling compiles without unused warnings.
struct Prune<'a>(&'a HashSet<String>);

impl VisitMut for Prune<'_> {
    fn visit_pat_mut(&mut self, pat: &mut Pat) {
        let replacement = match pat {
            Pat::Ident(binding) => {
                binding.mutability = None;
                if self.0.contains(&binding.ident.to_string()) {
                    None
                } else {
                    let underscore = Token![_](binding.ident.span());
                    Some(match binding.subpat.take() {
                        Some((_, subpattern)) => *subpattern,
                        None => Pat::Wild(syn::PatWild {
                            attrs: Vec::new(),
                            underscore_token: underscore,
                        }),
                    })
                }
            }
            _ => None,
        };
        if let Some(replacement) = replacement {
            *pat = replacement;
        }
        visit_mut::visit_pat_mut(self, pat);
    }

    fn visit_field_pat_mut(&mut self, field: &mut syn::FieldPat) {
        visit_mut::visit_field_pat_mut(self, field);
        // Shorthand `Foo { a }` prints only its pattern; once that is `_`, the field must be named.
        if field.colon_token.is_none() && !matches!(&*field.pat, Pat::Ident(_)) {
            field.colon_token = Some(Token![:](field.member.span()));
        }
    }
}

/// The generic parameters the kept parameter types (and the client) mention,
/// with every bound and predicate that mentions a dropped one removed, so
/// each kept parameter is inferred from the arguments.
pub(crate) fn sibling_generics(generics: &Generics, mentioned: &HashSet<String>) -> Generics {
    let name = |param: &GenericParam| match param {
        GenericParam::Type(param) => param.ident.to_string(),
        GenericParam::Lifetime(param) => param.lifetime.to_string(),
        GenericParam::Const(param) => param.ident.to_string(),
    };
    let (kept, dropped): (HashSet<String>, HashSet<String>) = generics
        .params
        .iter()
        .map(name)
        .partition(|name| mentioned.contains(name));

    let mut sibling = generics.clone();
    sibling.params = generics
        .params
        .iter()
        .filter(|param| kept.contains(&name(param)))
        .cloned()
        .map(|mut param| {
            match &mut param {
                GenericParam::Type(param) => param.bounds = without(&param.bounds, &dropped),
                GenericParam::Lifetime(param) => param.bounds = without(&param.bounds, &dropped),
                GenericParam::Const(_) => {}
            }
            param
        })
        .collect();
    if let Some(where_clause) = &mut sibling.where_clause {
        where_clause.predicates = where_clause
            .predicates
            .iter()
            .filter_map(|predicate| match predicate {
                WherePredicate::Type(predicate) => {
                    let bounded = mentions(&predicate.bounded_ty);
                    let relevant = bounded.contains("Self") || !bounded.is_disjoint(&kept);
                    if !relevant || !bounded.is_disjoint(&dropped) {
                        return None;
                    }
                    let mut predicate = predicate.clone();
                    predicate.bounds = without(&predicate.bounds, &dropped);
                    (!predicate.bounds.is_empty()).then_some(WherePredicate::Type(predicate))
                }
                WherePredicate::Lifetime(predicate) => {
                    if !kept.contains(&predicate.lifetime.to_string()) {
                        return None;
                    }
                    let mut predicate = predicate.clone();
                    predicate.bounds = without(&predicate.bounds, &dropped);
                    (!predicate.bounds.is_empty()).then_some(WherePredicate::Lifetime(predicate))
                }
                _ => None,
            })
            .collect();
    }
    sibling
}

/// The bounds that mention none of the `dropped` generic parameters.
fn without<T: ToTokens + Clone, P: Default>(
    bounds: &Punctuated<T, P>,
    dropped: &HashSet<String>,
) -> Punctuated<T, P> {
    bounds
        .iter()
        .filter(|bound| mentions(bound).is_disjoint(dropped))
        .cloned()
        .collect()
}

/// Per placeholder of a key template: whether it reads a parameter of a
/// primitive integer type (`id: u64`, `id: &i32`) as it is, with no
/// field access, so its values render as digits and `-` only.
pub(crate) fn integer_placeholders(sig: &syn::Signature, pieces: &[Piece]) -> Vec<bool> {
    pieces
        .iter()
        .filter_map(|piece| match piece {
            Piece::Value(placeholder) => Some(placeholder),
            Piece::Text(_) => None,
        })
        .map(|placeholder| {
            placeholder.fields.is_empty()
                && sig.inputs.iter().any(|input| match input {
                    syn::FnArg::Typed(typed) => {
                        matches!(&*typed.pat, Pat::Ident(binding)
                            if binding.ident == placeholder.root && binding.subpat.is_none())
                            && is_integer(&typed.ty)
                    }
                    syn::FnArg::Receiver(_) => false,
                })
        })
        .collect()
}

/// A primitive integer type, possibly behind references or parentheses.
fn is_integer(ty: &syn::Type) -> bool {
    match ty {
        syn::Type::Reference(reference) => is_integer(&reference.elem),
        syn::Type::Paren(paren) => is_integer(&paren.elem),
        syn::Type::Group(group) => is_integer(&group.elem),
        syn::Type::Path(path) if path.qself.is_none() => {
            path.path.get_ident().is_some_and(|ident| {
                matches!(
                    ident.to_string().as_str(),
                    "u8" | "u16"
                        | "u32"
                        | "u64"
                        | "u128"
                        | "usize"
                        | "i8"
                        | "i16"
                        | "i32"
                        | "i64"
                        | "i128"
                        | "isize"
                )
            })
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_placeholders_are_plain_integer_parameters() {
        let sig: syn::Signature = syn::parse_quote!(
            fn f(a: u64, b: &i32, c: String, d: &str, e: (u8, u8), Wrapper(f): Wrapper<u64>, g: my::u64)
        );
        let pieces = crate::fmt::parse("{a}-{b}-{c}-{d}-{e.0}-{f}-{g}").unwrap();
        assert_eq!(
            integer_placeholders(&sig, &pieces),
            [true, true, false, false, false, false, false]
        );
    }
}
