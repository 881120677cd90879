//! `#[trait_impl]`: the function attributes on the methods of `impl Trait for Type`,
//! with their siblings moved to an inherent `impl Type`.

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote};
use syn::visit_mut::{self, VisitMut};
use syn::{Attribute, Ident, ImplItem, ImplItemFn, Item, ItemImpl, Meta, Path, Type, Visibility};

use crate::analysis;
use crate::attr::{self, Kind};
use crate::expand::{self, Expansion};

/// The argument of a `#[cached]`, `#[once]` or `#[lock]` that `#[trait_impl]`
/// has already expanded: the attribute then returns the method as it is.
const EXPANDED: &str = "__cachify_expanded_by_trait_impl";

/// Whether these are the arguments `#[trait_impl]` leaves on a method it expanded.
pub(crate) fn already_expanded(args: &TokenStream) -> bool {
    let mut tokens = args.clone().into_iter();
    matches!(
        (tokens.next(), tokens.next()),
        (Some(proc_macro2::TokenTree::Ident(ident)), None) if ident == EXPANDED
    )
}

/// Expands `#[trait_impl]`. Errors come out as `compile_error!` beside the
/// block, with the methods' attributes made inert, so that they are the
/// only errors the user sees; an inherent `impl` is left as it is, since the
/// attributes work there.
pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let with_error = |error: syn::Error, item: &dyn ToTokens| {
        let error = error.to_compile_error();
        quote!(#error #item)
    };
    let block = match trait_impl_block(item.clone()) {
        Ok(block) => block,
        Err(error) => return with_error(error, &item),
    };
    let expanded =
        parse_args(args).and_then(|sibling_vis| expand_block(block.clone(), &sibling_vis));
    match expanded {
        Ok(tokens) => tokens,
        Err(error) => {
            let mut block = block;
            for item in &mut block.items {
                if let ImplItem::Fn(method) = item {
                    for attribute in &mut method.attrs {
                        if macro_kind(attribute.path()).is_some() {
                            *attribute = inert(attribute);
                        }
                    }
                }
            }
            with_error(error, &block)
        }
    }
}

/// The attribute as `#[trait_impl]` leaves it on a method it has expanded:
/// kept, so that the user's `use cachify::cached` counts as used, but inert.
fn inert(attribute: &Attribute) -> Attribute {
    let path = attribute.path();
    let marker = Ident::new(EXPANDED, Span::call_site());
    syn::parse_quote!(#[#path(#marker)])
}

fn expand_block(mut block: ItemImpl, sibling_vis: &Visibility) -> syn::Result<TokenStream> {
    let Some((_, trait_path, _)) = block.trait_.clone() else {
        // `trait_impl_block` lets only trait impls through.
        return Ok(block.into_token_stream());
    };
    let associated_types: Vec<Ident> = block
        .items
        .iter()
        .filter_map(|item| match item {
            ImplItem::Type(ty) => Some(ty.ident.clone()),
            _ => None,
        })
        .collect();

    let self_ty = &block.self_ty;
    let owner = compact(&quote!(#self_ty as #trait_path));
    let mut errors = TokenStream::new();
    let mut siblings = Vec::new();
    for item in &mut block.items {
        let ImplItem::Fn(method) = item else {
            continue;
        };
        let Some((kind, attribute)) = take_attribute(method)? else {
            continue;
        };
        if method
            .sig
            .generics
            .lifetimes()
            .any(|param| param.lifetime.ident == "async_trait")
        {
            return Err(syn::Error::new(
                Span::call_site(),
                "`#[cachify::trait_impl]` must be written above `#[async_trait]`: below it, \
                 the methods are no longer `async fn`s",
            ));
        }
        QualifySelf {
            trait_path: &trait_path,
            associated_types: &associated_types,
        }
        .visit_signature_mut(&mut method.sig);
        match expand_method(kind, &attribute, method, sibling_vis, &owner) {
            Ok(Expansion {
                function,
                siblings: more,
            }) => {
                let inert = inert(&attribute);
                *item = ImplItem::Verbatim(quote!(#inert #function));
                siblings.extend(more);
            }
            Err(error) => {
                errors.extend(error.to_compile_error());
                method.attrs.push(inert(&attribute));
            }
        }
    }

    if siblings.is_empty() {
        return Ok(quote!(#errors #block));
    }
    // Only the impl's parameters that the type names: an inherent impl
    // cannot have parameters that only the trait uses.
    let named = analysis::mentions(&block.self_ty);
    for param in block.generics.type_params() {
        let name = param.ident.to_string();
        if !named.contains(&name)
            && siblings
                .iter()
                .any(|sibling| analysis::mentions(sibling).contains(&name))
        {
            return Err(syn::Error::new(
                param.ident.span(),
                format!(
                    "a sibling would take a parameter whose type uses `{name}`, which the trait \
                     names but the type does not, so the inherent `impl` that holds the siblings \
                     cannot declare it; leave that parameter out of the key template"
                ),
            ));
        }
    }
    let generics = analysis::sibling_generics(&block.generics, &named);
    let (impl_generics, _, where_clause) = generics.split_for_impl();
    let self_ty = &block.self_ty;
    let cfgs = block
        .attrs
        .iter()
        .filter(|attr| attr.path().is_ident("cfg"));
    Ok(quote! {
        #errors
        #block
        #(#cfgs)*
        impl #impl_generics #self_ty #where_clause {
            #(#siblings)*
        }
    })
}

/// Nothing, or the siblings' visibility (default `pub`: as far as the trait's methods reach).
fn parse_args(args: TokenStream) -> syn::Result<Visibility> {
    if args.is_empty() {
        return Ok(syn::parse_quote!(pub));
    }
    // Tokens that are not a visibility parse as none, then fail as left over.
    syn::parse2::<Visibility>(args.clone()).map_err(|_| {
        syn::Error::new_spanned(
            args,
            "`#[cachify::trait_impl]` takes nothing, or the siblings' visibility, \
             e.g. `#[cachify::trait_impl(pub(crate))]`",
        )
    })
}

/// The annotated item, which must be `impl Trait for Type`.
fn trait_impl_block(item: TokenStream) -> syn::Result<ItemImpl> {
    let message = "`#[cachify::trait_impl]` can only be applied to an `impl Trait for Type` block";
    let block = match syn::parse2::<Item>(item)? {
        Item::Impl(block) => block,
        other => {
            // The keyword and the name, not the whole body.
            let head = match &other {
                Item::Fn(item) => {
                    let (fn_token, ident) = (&item.sig.fn_token, &item.sig.ident);
                    quote!(#fn_token #ident)
                }
                Item::Struct(item) => {
                    let (keyword, ident) = (&item.struct_token, &item.ident);
                    quote!(#keyword #ident)
                }
                Item::Enum(item) => {
                    let (keyword, ident) = (&item.enum_token, &item.ident);
                    quote!(#keyword #ident)
                }
                Item::Trait(item) => {
                    let (keyword, ident) = (&item.trait_token, &item.ident);
                    quote!(#keyword #ident)
                }
                Item::Mod(item) => {
                    let (keyword, ident) = (&item.mod_token, &item.ident);
                    quote!(#keyword #ident)
                }
                _ => other.to_token_stream(),
            };
            return Err(syn::Error::new_spanned(head, message));
        }
    };
    if block.trait_.is_none() {
        let (impl_token, self_ty) = (&block.impl_token, &block.self_ty);
        return Err(syn::Error::new_spanned(
            quote!(#impl_token #self_ty),
            "`#[cachify::trait_impl]` is for `impl Trait for Type`; in an inherent `impl Type` \
             `#[cached]`, `#[once]` and `#[lock]` work without it",
        ));
    }
    Ok(block)
}

/// Removes the method's `#[cached]`, `#[once]` or `#[lock]`, if it has one.
fn take_attribute(method: &mut ImplItemFn) -> syn::Result<Option<(Kind, Attribute)>> {
    let mut found: Option<(Kind, Attribute)> = None;
    let mut kept = Vec::with_capacity(method.attrs.len());
    for attribute in method.attrs.drain(..) {
        let Some(kind) = macro_kind(attribute.path()) else {
            kept.push(attribute);
            continue;
        };
        if let Some((first, _)) = &found {
            return Err(syn::Error::new_spanned(
                &attribute,
                format!(
                    "`#[{}]` cannot be combined with `#[{}]` on one method",
                    kind.name(),
                    first.name()
                ),
            ));
        }
        found = Some((kind, attribute));
    }
    method.attrs = kept;
    Ok(found)
}

/// `cached`, `cachify::cached` or `::cachify::cached` (and the same for `once`, `lock` and `pooled`).
fn macro_kind(path: &Path) -> Option<Kind> {
    let segments: Vec<String> = path
        .segments
        .iter()
        .map(|segment| segment.ident.to_string())
        .collect();
    let name = match segments.as_slice() {
        [name] if path.leading_colon.is_none() => name,
        [krate, name] if krate == "cachify" => name,
        _ => return None,
    };
    [Kind::Cached, Kind::Once, Kind::Lock, Kind::Pooled]
        .into_iter()
        .find(|kind| kind.name() == name)
}

/// Expands one method's attribute, with the same code as on a function.
fn expand_method(
    kind: Kind,
    attribute: &Attribute,
    method: &ImplItemFn,
    sibling_vis: &Visibility,
    owner: &str,
) -> syn::Result<Expansion> {
    let args = match &attribute.meta {
        Meta::List(list) => list.tokens.clone(),
        // The parser's own message, on the attribute rather than on `#[trait_impl]`.
        _ => {
            let message = match attr::parse(kind, TokenStream::new()) {
                Err(error) => error.to_string(),
                Ok(_) => unreachable!("an empty attribute has no template"),
            };
            return Err(syn::Error::new_spanned(attribute, message));
        }
    };
    let ImplItemFn {
        attrs,
        vis,
        sig,
        block,
        ..
    } = method;
    let item = quote!(#(#attrs)* #vis #sig #block);
    let method = expand::Method {
        sibling_vis,
        owner: owner.to_owned(),
    };
    expand::try_expand(kind, args, item, Some(method))
}

/// Tokens as Rust code is usually written: `Store<T> as Repo`, not
/// `Store < T > as Repo`.
fn compact(tokens: &TokenStream) -> String {
    let mut text = tokens.to_string();
    for (spaced, tight) in [
        (" <", "<"),
        ("< ", "<"),
        (" >", ">"),
        (" ,", ","),
        (" ::", "::"),
        (":: ", "::"),
    ] {
        text = text.replace(spaced, tight);
    }
    text
}

/// Rewrites `Self::Id`, for an associated type `Id` of this impl, as
/// `<Self as Trait>::Id`: in the inherent impl that holds the siblings, the
/// short form is ambiguous.
struct QualifySelf<'a> {
    trait_path: &'a Path,
    associated_types: &'a [Ident],
}

impl VisitMut for QualifySelf<'_> {
    fn visit_type_mut(&mut self, ty: &mut Type) {
        if let Type::Path(path) = ty
            && path.qself.is_none()
            && path.path.leading_colon.is_none()
            && path.path.segments.len() >= 2
            && path.path.segments[0].ident == "Self"
            && path.path.segments[0].arguments.is_none()
            && self.associated_types.contains(&path.path.segments[1].ident)
        {
            let trait_path = self.trait_path;
            let self_token = &path.path.segments[0].ident;
            let rest = path.path.segments.iter().skip(1);
            let qualified: Type = syn::parse_quote!(<#self_token as #trait_path> #(:: #rest)*);
            *ty = qualified;
        }
        visit_mut::visit_type_mut(self, ty);
    }
}
