//! Stacked attributes: `#[cached] #[once] fn f` is one function with two
//! layers, the first written outermost, as Python's decorators read.
//!
//! rustc expands the first attribute first, with the others still on the
//! item. That attribute takes the others off ([`take_layers`]) and wraps
//! the function in every layer itself, innermost first, so that the layers
//! nest in the written order and share one set of siblings. The attributes
//! it took are left on the function as inert markers ([`inert`]): the
//! user's `use cachify::once` stays used, and they expand to nothing.
//!
//! A cachify attribute is recognised by its path (`cached`,
//! `cachify::cached`, `::cachify::cached`, the same for every [`Kind`]);
//! one imported under another name (`use cachify::cached as c`) is not
//! seen by the attributes above it, and expands after them, outside them,
//! with siblings of its own.

use proc_macro2::{Span, TokenStream, TokenTree};
use quote::ToTokens;
use syn::{Attribute, Ident, Meta, Path};

use crate::attr::{self, Args, Kind};

/// The argument of a cachify attribute that has already been expanded (by
/// the first attribute of its stack, or by `#[trait_impl]`): the attribute
/// then returns the item as it is.
const EXPANDED: &str = "__cachify_expanded";

/// Whether these are the arguments of an attribute already expanded.
pub(crate) fn already_expanded(args: &TokenStream) -> bool {
    let mut tokens = args.clone().into_iter();
    matches!(
        (tokens.next(), tokens.next()),
        (Some(TokenTree::Ident(ident)), None) if ident == EXPANDED
    )
}

/// The attribute as it is left once expanded: kept, so that the user's
/// `use cachify::cached` counts as used, but inert.
pub(crate) fn inert(attribute: &Attribute) -> Attribute {
    let path = attribute.path();
    let marker = Ident::new(EXPANDED, Span::call_site());
    syn::parse_quote!(#[#path(#marker)])
}

/// Makes every cachify attribute in `attrs` inert: after an error, so
/// that they do not expand on their own, with errors of their own.
pub(crate) fn disarm(attrs: &mut [Attribute]) {
    for attribute in attrs {
        if macro_kind(attribute.path()).is_some() {
            *attribute = inert(attribute);
        }
    }
}

/// Whether `attribute` is one left by [`inert`].
fn is_inert(attribute: &Attribute) -> bool {
    matches!(&attribute.meta, Meta::List(list) if already_expanded(&list.tokens))
}

/// `cached`, `cachify::cached` or `::cachify::cached` (and the same for every kind).
pub(crate) fn macro_kind(path: &Path) -> Option<Kind> {
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
    Kind::ALL.iter().copied().find(|kind| kind.name() == name)
}

/// One layer of a stack, as written.
pub(crate) struct Layer {
    pub(crate) kind: Kind,
    /// The tokens inside the attribute's parentheses.
    pub(crate) args: TokenStream,
    /// The attribute itself, to leave its inert marker; `None` for the
    /// attribute being expanded, which rustc has taken off.
    pub(crate) attribute: Option<Attribute>,
}

impl Layer {
    /// The layer of a cachify attribute written `attribute`.
    pub(crate) fn of(kind: Kind, attribute: Attribute) -> syn::Result<Self> {
        let args = match &attribute.meta {
            Meta::List(list) if !list.tokens.is_empty() => list.tokens.clone(),
            // The parser's own message, on the attribute (not on the one
            // being expanded, as an empty argument list would have it).
            _ => {
                let message = match attr::parse(kind, TokenStream::new()) {
                    Err(error) => error.to_string(),
                    Ok(_) => unreachable!("an empty attribute has no template"),
                };
                return Err(syn::Error::new_spanned(&attribute, message));
            }
        };
        Ok(Self {
            kind,
            args,
            attribute: Some(attribute),
        })
    }
}

/// Takes the cachify attributes off `attrs`: the layers under the one
/// being expanded, outermost first. The other attributes stay, in order.
pub(crate) fn take_layers(attrs: &mut Vec<Attribute>) -> syn::Result<Vec<Layer>> {
    let mut layers = Vec::new();
    let mut kept = Vec::with_capacity(attrs.len());
    for attribute in attrs.drain(..) {
        match macro_kind(attribute.path()) {
            // An inert marker (see [`inert`]) is a layer some other attribute
            // has expanded already (that of a renamed import, say).
            Some(_) if is_inert(&attribute) => kept.push(attribute),
            Some(kind) => layers.push(Layer::of(kind, attribute)?),
            None => kept.push(attribute),
        }
    }
    *attrs = kept;
    Ok(layers)
}

/// Refuses two layers of one kind with the same template and the same
/// client expression: they share one key, so the inner `#[cached]` would
/// only repeat the outer one, and the inner `#[once]` or `#[lock]` would
/// never get the lock that its outer layer holds. `layers` are outermost first.
pub(crate) fn check(layers: &[(Kind, &Args)]) -> syn::Result<()> {
    let client = |args: &Args| {
        args.client
            .as_ref()
            .map(|client| client.to_token_stream().to_string())
    };
    for (index, (kind, inner)) in layers.iter().enumerate() {
        let same = layers[..index].iter().any(|(outer_kind, outer)| {
            outer_kind == kind
                && outer.template.value() == inner.template.value()
                && client(outer) == client(inner)
        });
        if same {
            let name = kind.name();
            let why = match kind {
                Kind::Cached => "the inner one would only repeat the outer one",
                _ => "the inner one would never get the lock that the outer one holds",
            };
            return Err(syn::Error::new(
                inner.template.span(),
                format!(
                    "this `#[{name}]` has the same key as a `#[{name}]` above it on the same \
                     function (same template and client): {why}; give the layers different \
                     templates or clients"
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attributes(source: &str) -> Vec<Attribute> {
        let function: syn::ItemFn = syn::parse_str(&format!("{source} fn f() {{}}")).unwrap();
        function.attrs
    }

    fn layers(source: &str) -> (Vec<(&'static str, String)>, Vec<String>) {
        let mut attrs = attributes(source);
        let layers = take_layers(&mut attrs).unwrap();
        let layers = layers
            .iter()
            .map(|layer| (layer.kind.name(), layer.args.to_string()))
            .collect();
        let kept = attrs
            .iter()
            .map(|attribute| attribute.to_token_stream().to_string())
            .collect();
        (layers, kept)
    }

    #[test]
    fn layers_are_taken_outermost_first_and_the_rest_stays_in_order() {
        let (taken, kept) = layers(
            "#[doc = \"x\"] #[cachify::once(\"a\")] #[inline] #[::cachify::lock(\"b\")] \
             #[cached(\"c\")] #[memo(\"d\")] #[other::cached(\"e\")]",
        );
        assert_eq!(
            taken,
            [
                ("once", "\"a\"".to_owned()),
                ("lock", "\"b\"".to_owned()),
                ("cached", "\"c\"".to_owned()),
            ]
        );
        assert_eq!(
            kept,
            [
                "# [doc = \"x\"]",
                "# [inline]",
                "# [memo (\"d\")]",
                "# [other :: cached (\"e\")]"
            ]
        );
    }

    #[test]
    fn inert_markers_are_not_layers() {
        let marked = inert(&attributes("#[once(\"a\")]")[0]);
        let mut attrs = vec![marked.clone()];
        assert!(take_layers(&mut attrs).unwrap().is_empty());
        assert_eq!(attrs, [marked]);
    }

    #[test]
    fn a_bare_attribute_is_an_error_on_it() {
        for source in ["#[cached]", "#[cached()]", "#[once = 1]"] {
            let mut attrs = attributes(source);
            let error = take_layers(&mut attrs).err().unwrap();
            assert!(error.to_string().contains("key template"), "{error}");
        }
    }

    fn args(kind: Kind, tokens: &str) -> Args {
        attr::parse(kind, tokens.parse().unwrap()).unwrap()
    }

    #[test]
    fn same_kind_template_and_client_is_refused() {
        let outer = args(Kind::Cached, "\"u-{id}\", ttl = 5");
        let same = args(Kind::Cached, "\"u-{id}\", ttl = 300");
        let other_client = args(Kind::Cached, "\"u-{id}\", client = &LOCAL");
        let once = args(Kind::Once, "\"u-{id}\"");
        assert!(check(&[(Kind::Cached, &outer), (Kind::Cached, &same)]).is_err());
        assert!(check(&[(Kind::Cached, &outer), (Kind::Cached, &other_client)]).is_ok());
        assert!(check(&[(Kind::Cached, &outer), (Kind::Once, &once)]).is_ok());
        let locked = args(Kind::Once, "\"u-{id}\"");
        let error = check(&[
            (Kind::Once, &once),
            (Kind::Cached, &outer),
            (Kind::Once, &locked),
        ]);
        assert!(
            error
                .err()
                .unwrap()
                .to_string()
                .contains("never get the lock")
        );
    }
}
