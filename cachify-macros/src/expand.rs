//! Code generation: the wrapped function and its `_reset`/`_clear`/`_is_locked`/`_release`/`_pool_size` siblings.

use std::collections::HashSet;

use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, TokenStreamExt, format_ident, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{AttrStyle, Attribute, FnArg, Ident, ItemFn, LitStr, ReturnType, Visibility};

use crate::analysis;
use crate::attr::{self, Args, Duration, Kind};
use crate::fmt::{self, Field, Piece};
use crate::shape;
use crate::stack;
use crate::valid;

/// Expands one attribute, with the layers stacked under it. Errors become
/// `compile_error!` next to the item left untouched but for its other
/// cachify attributes, made inert, so the error is the only one the user sees.
pub(crate) fn expand(kind: Kind, args: TokenStream, item: TokenStream) -> TokenStream {
    match try_expand(kind, args, item.clone(), None) {
        Ok(Expansion { function, siblings }) => quote!(#function #(#siblings)*),
        Err(error) => {
            let error = error.to_compile_error();
            match syn::parse2::<ItemFn>(item.clone()) {
                Ok(mut function) => {
                    stack::disarm(&mut function.attrs);
                    quote!(#error #function)
                }
                Err(_) => quote!(#error #item),
            }
        }
    }
}

/// One attribute's output, apart, so `#[trait_impl]` can put the siblings in another `impl`.
pub(crate) struct Expansion {
    /// The function with its body wrapped.
    pub(crate) function: TokenStream,
    /// `<fn>_reset` and `<fn>_clear`, or `<fn>_is_locked` and `<fn>_release`.
    pub(crate) siblings: Vec<TokenStream>,
}

/// Where a method sits, when the attribute cannot see it for itself.
pub(crate) struct Method<'a> {
    /// The siblings' visibility.
    pub(crate) sibling_vis: &'a Visibility,
    /// `Type as Trait`, so that its path names the impl it is in.
    pub(crate) owner: String,
}

/// Expands one attribute and the layers stacked under it (see
/// [`stack`]); the siblings get the method's visibility if given, else
/// the function's.
pub(crate) fn try_expand(
    kind: Kind,
    args: TokenStream,
    item: TokenStream,
    method: Option<Method>,
) -> syn::Result<Expansion> {
    let mut function = valid::function(kind, item)?;
    let inner = stack::take_layers(&mut function.attrs)?;
    let outer = stack::Layer {
        kind,
        args,
        attribute: None,
    };
    let owner = method.as_ref().map(|method| method.owner.as_str());
    // Outermost first, as written.
    let keys = std::iter::once(&outer)
        .chain(&inner)
        .map(|layer| Key::new(layer, &function.sig, owner))
        .collect::<syn::Result<Vec<Key>>>()?;
    let layers: Vec<(Kind, &Args)> = keys.iter().map(|key| (key.kind, &key.args)).collect();
    stack::check(&layers)?;

    let sibling_vis = method
        .as_ref()
        .map_or(&function.vis, |method| method.sibling_vis);
    let mut siblings = siblings(&keys, &function, sibling_vis);
    siblings.extend(clear_sibling(&keys, &function, sibling_vis));
    let mut wrapped = function.clone();
    for key in keys.iter().rev() {
        wrapped = wrap(key, &wrapped)?;
    }
    if method.is_none() {
        wrapped
            .block
            .stmts
            .splice(0..0, trait_impl_check(&keys, &function));
    }
    wrapped.attrs.extend(
        inner
            .iter()
            .filter_map(|layer| layer.attribute.as_ref())
            .map(stack::inert),
    );
    Ok(Expansion {
        function: wrapped.into_token_stream(),
        siblings,
    })
}

/// One `tags = [..]` template, parsed and checked like the key template.
struct TagTemplate {
    literal: LitStr,
    pieces: Vec<Piece>,
    /// The parameter binding each placeholder reads.
    roots: Vec<Ident>,
}

fn tag_templates(args: &Args, sig: &syn::Signature) -> syn::Result<Vec<TagTemplate>> {
    let mut templates = Vec::new();
    for literal in args.tags.iter().flatten() {
        let pieces = fmt::parse(&literal.value()).map_err(|message| {
            let message = message.replace("the key template", "the tag template");
            syn::Error::new(literal.span(), message)
        })?;
        let roots = valid::placeholders_in(sig, literal, &pieces, "tag template")?;
        templates.push(TagTemplate {
            literal: literal.clone(),
            pieces,
            roots,
        });
    }
    Ok(templates)
}

/// Everything needed to render one layer's key, shared by the function and its siblings.
struct Key<'a> {
    kind: Kind,
    args: Args,
    pieces: Vec<Piece>,
    /// The parameter binding each placeholder reads, in template order.
    roots: Vec<Ident>,
    /// `Type as Trait` for a method of a trait impl.
    owner: Option<&'a str>,
    /// The return type's storage policy (used by `#[cached]`).
    shape: shape::Shape,
    /// `tags = [..]` of `#[cached]`.
    tags: Vec<TagTemplate>,
    /// With `early_refresh`: the arguments each run gets clones of.
    cloned: Vec<valid::Cloned>,
}

/// Names of generated locals: mixed-site hygiene keeps them apart from user code.
fn local(name: &str) -> Ident {
    Ident::new(name, Span::mixed_site())
}

impl<'a> Key<'a> {
    /// Parses and checks one layer's arguments against the function.
    fn new(
        layer: &stack::Layer,
        sig: &syn::Signature,
        owner: Option<&'a str>,
    ) -> syn::Result<Self> {
        let kind = layer.kind;
        let args = attr::parse(kind, layer.args.clone())?;
        let pieces = fmt::parse(&args.template.value())
            .map_err(|message| syn::Error::new(args.template.span(), message))?;
        let roots = valid::placeholders(sig, &args.template, &pieces)?;
        let tags = tag_templates(&args, sig)?;
        valid::return_type(kind, &args, sig)?;
        valid::max_size(kind, &args)?;
        let shape = shape::of(&sig.output);
        valid::none_ttl(&args, sig, shape.optional)?;
        let cloned = valid::refresh_arguments(&args, sig)?;
        Ok(Key {
            kind,
            args,
            pieces,
            roots,
            owner,
            shape,
            tags,
            cloned,
        })
    }

    /// Binds the client and the rendered key, as `__cachify_client` and `__cachify_key`.
    fn prelude(&self) -> TokenStream {
        let client = self.client_binding();
        let key = self.key_binding();
        quote! {
            #client
            #key
        }
    }

    /// Binds the client as `__cachify_client`.
    fn client_binding(&self) -> TokenStream {
        let client_var = local("__cachify_client");
        let client = match &self.args.client {
            Some(client) => client.to_token_stream(),
            None => quote!(::cachify::__private::global()),
        };
        quote! {
            let #client_var: &::cachify::Cachify = #client;
        }
    }

    /// The value each placeholder reads, as a reference, in template order.
    /// Each root resolves like the parameter's own identifier, even when a
    /// `macro_rules!` wrote the function; the template's span puts a
    /// missing `Display` impl or field on the template.
    fn values(&self) -> Vec<TokenStream> {
        template_values(&self.pieces, &self.roots, self.args.template.span())
    }

    /// The kind's variant name, the same in `KeyKind` and `CallKind`.
    fn kind_variant(&self) -> TokenStream {
        match self.kind {
            Kind::Cached => quote!(Cached),
            Kind::Once => quote!(Once),
            Kind::Lock => quote!(Lock),
            Kind::Pooled => quote!(Pool),
        }
    }

    /// The template as written, as a string literal at its own span.
    fn template_text(&self) -> LitStr {
        let template = &self.args.template;
        LitStr::new(&template.value(), template.span())
    }

    /// The key template as a `KeyTemplate` constant named `name`.
    fn template_const(&self, name: &Ident) -> TokenStream {
        template_const(name, &self.template_text(), &self.pieces)
    }

    /// Binds the rendered tags as `__cachify_tags`, a `Vec<String>`.
    fn tags_binding(&self) -> TokenStream {
        let tags_var = local("__cachify_tags");
        let tags = self.tags.iter().map(|tag| {
            let template = local("__CACHIFY_TAG");
            let span = tag.literal.span();
            let text = LitStr::new(&tag.literal.value(), span);
            let constant = template_const(&template, &text, &tag.pieces);
            let values = display_values(
                &tag.pieces,
                template_values(&tag.pieces, &tag.roots, span),
                span,
            );
            quote! {
                {
                    #constant
                    ::cachify::__private::tag(&#template, &[#(#values),*])
                }
            }
        });
        quote! {
            let #tags_var: ::std::vec::Vec<::std::string::String> = ::std::vec![#(#tags),*];
        }
    }

    /// Binds the rendered key as `__cachify_key` (the client must be bound).
    fn key_binding(&self) -> TokenStream {
        let client_var = local("__cachify_client");
        let key_var = local("__cachify_key");
        let template_const = local("__CACHIFY_TEMPLATE");
        let kind = self.kind_variant();
        let span = self.args.template.span();
        let constant = self.template_const(&template_const);
        let values = display_values(&self.pieces, self.values(), span);
        quote! {
            #constant
            let #key_var = ::cachify::__private::key(
                #client_var,
                ::cachify::__private::KeyKind::#kind,
                &#template_const,
                &[#(#values),*],
            );
        }
    }

    /// Binds the static description of the function, `__CACHIFY_SITE`: its
    /// kind, its template and its path, where the runtime keeps per-client
    /// counters (and, for `#[cached]`, typed indexes).
    fn site(&self, name_ident: &Ident) -> TokenStream {
        let site = local("__CACHIFY_SITE");
        let (kind, text) = (self.kind_variant(), self.template_text());
        // A trait impl's methods are told apart by their impl: two types'
        // `find` in one module are two functions.
        let name = match self.owner {
            Some(owner) => format!("<{owner}>::{}", name_ident.unraw()),
            None => name_ident.unraw().to_string(),
        };
        let name = LitStr::new(&name, name_ident.span());
        quote! {
            static #site: ::cachify::__private::Site = ::cachify::__private::Site::new(
                ::cachify::__private::CallKind::#kind,
                #text,
                ::core::concat!(::core::module_path!(), "::", #name),
            );
        }
    }

    /// For `#[cached]`: binds the typed key as `__cachify_typed`, and
    /// returns at once on a typed hit (the site must be bound).
    /// The hit is spanned at `bound_span`, as the cached call is, so that
    /// an unmet `Policy` bound is reported once, there.
    fn typed_fast_path(
        &self,
        policy: &TokenStream,
        ty: &TokenStream,
        bound_span: Span,
    ) -> TokenStream {
        let client_var = local("__cachify_client");
        let site = local("__CACHIFY_SITE");
        let typed = local("__cachify_typed");
        let hit = local("__cachify_hit");
        let span = self.args.template.span();
        let values = self.values();
        let policy: TokenStream = policy
            .clone()
            .into_iter()
            .map(|mut token| {
                token.set_span(bound_span);
                token
            })
            .collect();
        let hit_call = quote_spanned! {bound_span=>
            ::cachify::__private::typed_hit::<#policy, #ty, _>(
                #client_var,
                &#site,
                &#typed,
            )
        };
        quote_spanned! {span=>
            let #typed = {
                #[allow(unused_imports)]
                use ::cachify::__private::{TypedProbe as _, UntypedProbe as _};
                (&::cachify::__private::Probe((#(#values,)*))).typed_key()
            };
            if let ::core::option::Option::Some(#hit) = #hit_call {
                return #hit;
            }
        }
    }

    /// Names the template and the client expression use, to pick the siblings' parameters.
    fn used_names(&self) -> HashSet<String> {
        analysis::used_names(&self.roots, self.args.client.as_ref())
    }
}

/// The value each placeholder of `pieces` reads, as a reference, in
/// template order. Each root resolves like the parameter's own identifier,
/// even when a `macro_rules!` wrote the function; `span` (the template's)
/// puts a missing `Display` impl or field on the template.
fn template_values(pieces: &[Piece], roots: &[Ident], span: Span) -> Vec<TokenStream> {
    let placeholders = pieces.iter().filter_map(|piece| match piece {
        Piece::Value(placeholder) => Some(placeholder),
        Piece::Text(_) => None,
    });
    placeholders
        .zip(roots)
        .map(|(placeholder, root)| {
            let fields = placeholder.fields.iter().map(|field| match field {
                Field::Named(name) => Ident::new(name, span).into_token_stream(),
                Field::Index(index) => syn::Index {
                    index: *index,
                    span,
                }
                .into_token_stream(),
            });
            quote_spanned!(span=> &(#root #(. #fields)*))
        })
        .collect()
}

/// The values as `&dyn Display`, through `DebugKey` for `{name:?}`.
fn display_values(pieces: &[Piece], values: Vec<TokenStream>, span: Span) -> Vec<TokenStream> {
    let debug = pieces.iter().filter_map(|piece| match piece {
        Piece::Value(placeholder) => Some(placeholder.debug),
        Piece::Text(_) => None,
    });
    values
        .into_iter()
        .zip(debug)
        .map(|(value, debug)| {
            if debug {
                quote_spanned!(span=> &::cachify::__private::DebugKey(#value) as &dyn ::core::fmt::Display)
            } else {
                quote_spanned!(span=> #value as &dyn ::core::fmt::Display)
            }
        })
        .collect()
}

/// A `KeyTemplate` constant named `name` for the template `text`.
fn template_const(name: &Ident, text: &LitStr, pieces: &[Piece]) -> TokenStream {
    let pieces = pieces.iter().map(|piece| match piece {
        Piece::Text(text) => quote!(::cachify::__private::Piece::Text(#text)),
        Piece::Value(placeholder) => {
            let stop = match placeholder.stop {
                Some(stop) => quote!(::core::option::Option::Some(#stop)),
                None => quote!(::core::option::Option::None),
            };
            quote!(::cachify::__private::Piece::Value { stop: #stop })
        }
    });
    quote! {
        const #name: ::cachify::__private::KeyTemplate = ::cachify::__private::KeyTemplate {
            text: #text,
            pieces: &[#(#pieces),*],
        };
    }
}

/// The return type as the generated code spells it.
struct Output<'a> {
    /// The return type, `()` when there is none, `_` when it contains `impl Trait`.
    ty: TokenStream,
    /// Whether `ty` is a real type that can annotate a closure or a `let`.
    nameable: bool,
    /// The type after `->`, if any.
    declared: Option<&'a syn::Type>,
}

impl<'a> Output<'a> {
    fn new(output: &'a ReturnType) -> Self {
        match output {
            ReturnType::Default => Output {
                ty: quote!(()),
                nameable: true,
                declared: None,
            },
            ReturnType::Type(_, ty) => {
                let nameable = !analysis::mentions(ty).contains("impl");
                Output {
                    ty: if nameable {
                        ty.to_token_stream()
                    } else {
                        quote!(_)
                    },
                    nameable,
                    declared: Some(ty),
                }
            }
        }
    }

    /// Where a type error about the return type is reported: at its generic
    /// argument `index` if it has one (`User` in `Result<User, E>`), else at
    /// the whole type.
    fn span(&self, index: Option<usize>) -> Span {
        match self.declared {
            Some(ty) => index
                .and_then(|index| valid::type_argument(ty, index))
                .unwrap_or(ty)
                .span(),
            None => Span::call_site(),
        }
    }

    /// The user's block as a future or a closure, typed like the function so
    /// that `?`, early `return`s and coercions behave as they did.
    fn body(&self, sig: &syn::Signature, block: &syn::Block) -> TokenStream {
        let ty = &self.ty;
        match (sig.asyncness.is_some(), self.nameable) {
            (true, true) => {
                // An async block cannot be annotated; a typed `return` fixes its
                // output type before the body is checked.
                let fake = local("__cachify_return");
                // Inserted into the user's own braces: a nested block would
                // trip `unused_braces` on the user's code.
                let mut body = TokenStream::new();
                block.brace_token.surround(&mut body, |body| {
                    body.extend(quote! {
                        #[allow(unreachable_code)]
                        if false {
                            let #fake: #ty = loop {};
                            return #fake;
                        }
                    });
                    body.append_all(&block.stmts);
                });
                quote!(async move #body)
            }
            (true, false) => quote!(async move #block),
            (false, true) => quote!(move || -> #ty #block),
            (false, false) => quote!(move || #block),
        }
    }
}

/// The function itself: signature untouched, body wrapped in one layer.
fn wrap(key: &Key, function: &ItemFn) -> syn::Result<ItemFn> {
    let ItemFn {
        attrs,
        vis,
        sig,
        block,
    } = function;
    let client_var = local("__cachify_client");
    let key_var = local("__cachify_key");
    let output = Output::new(&sig.output);
    let body = output.body(sig, block);
    let dot_await = sig.asyncness.map(|_| quote!(.await));
    let (prelude, call) = if key.kind == Kind::Cached {
        let shape::Shape {
            policy,
            stored_span,
            ..
        } = &key.shape;
        let stored_span = *stored_span;
        let runner = if sig.asyncness.is_some() {
            quote!(cached)
        } else {
            quote!(cached_blocking)
        };
        let ty = &output.ty;
        let unless_var = local("__cachify_unless");
        let unless = match &key.args.unless {
            Some(unless) => unless.to_token_stream(),
            None => quote!(::cachify::__private::store_all),
        };
        // Spanned at the stored type, so an unmet `Policy` bound (not
        // serializable, not `Clone`) is reported there.
        let fill_lock = match &key.args.fill_lock {
            Some(fill_lock) => fill_lock.to_token_stream(),
            None => quote!(false),
        };
        let none_ttl = match &key.args.none_ttl {
            Some(none_ttl) => {
                let none_ttl = duration(none_ttl);
                quote!(::core::option::Option::Some(#none_ttl))
            }
            None => quote!(::core::option::Option::None),
        };
        let ttl = match (&key.args.ttl, key.args.ttl_never) {
            (Some(ttl), _) => {
                let ttl = duration(ttl);
                quote!(::cachify::__private::Ttl::For(#ttl))
            }
            (None, Some(never)) => quote_spanned!(never=> ::cachify::__private::Ttl::Never),
            (None, None) => quote!(::cachify::__private::Ttl::Default),
        };
        let codec = match &key.args.codec {
            Some(codec) => {
                let var = local("__cachify_codec");
                // The user's span on the whole binding keeps a type mismatch on their expression.
                let codec = quote_spanned!(codec.span()=> {
                    let #var: ::cachify::Codec = #codec;
                    #var
                });
                quote!(::core::option::Option::Some(#codec))
            }
            None => quote!(::core::option::Option::None),
        };
        // With `stale_if_error` or `early_refresh`, entries carry metadata:
        // their own call, and no typed fast path.
        // The fields every `#[cached]` call has.
        let tags_var = local("__cachify_tags");
        let fields = quote! {
            ttl: #ttl,
            none_ttl: #none_ttl,
            fill_lock: #fill_lock,
            codec: #codec,
            tags: #tags_var,
        };
        let entry = entry_call(key, sig, block, &output, &fields, &unless);
        let fast = match entry {
            Some(_) => TokenStream::new(),
            None => key.typed_fast_path(policy, &ty.to_token_stream(), stored_span),
        };
        let (client, key_binding) = (key.client_binding(), key.key_binding());
        let site = key.site(&sig.ident);
        let tags_binding = key.tags_binding();
        let prelude = quote! {
            #client
            #site
            #fast
            #key_binding
            #tags_binding
        };
        let site = local("__CACHIFY_SITE");
        let typed = local("__cachify_typed");
        let call = quote_spanned!(stored_span=>
            ::cachify::__private::#runner::<#policy, #ty, _, _, _>(
                #client_var,
                #key_var,
                &#site,
                #typed,
                ::cachify::__private::CacheCall {
                    #fields
                    stale_if_error: ::core::option::Option::None,
                    early_refresh: false,
                },
                #body,
                #unless_var
            )
        );
        // Bound first: the body moves the arguments, and `unless` may read them.
        let call = quote! {
            let #unless_var = #unless;
            #call #dot_await
        };
        (prelude, entry.unwrap_or(call))
    } else {
        let (acquire, run) = match (key.kind, sig.asyncness.is_some()) {
            (Kind::Pooled, true) => (quote!(pool_acquire), quote!(run_pooled)),
            (Kind::Pooled, false) => (quote!(pool_acquire_blocking), quote!(run_pooled_blocking)),
            (_, true) => (quote!(acquire), quote!(run_locked)),
            (_, false) => (quote!(acquire_blocking), quote!(run_locked_blocking)),
        };
        // A pool's cap, typed where the user wrote it.
        let max_size = key.args.max_size.as_ref().map(|max_size| {
            let var = local("__cachify_max_size");
            quote_spanned!(max_size.span()=> {
                let #var: usize = #max_size;
                #var
            },)
        });
        let wait = match &key.args.wait {
            Some(wait) => duration(wait),
            None => quote!(::core::time::Duration::ZERO),
        };
        let guard = local("__cachify_guard");
        // The refused arm runs instead of the body, so the user's expression may
        // still use the arguments the body would have moved.
        let refused = match key.args.refusal() {
            // A backend failure is an error when the output can say so.
            Some(value) if output.nameable => {
                let error = local("__cachify_error");
                let converted = local("__cachify_converted");
                let ty = &output.ty;
                quote! {
                    ::core::result::Result::Err(#error) => {
                        #[allow(unused_imports)]
                        use ::cachify::__private::{RefusalAsError as _, RefusalAsFallback as _};
                        match ::cachify::__private::Refused::<#ty>::new(#error).into_output() {
                            ::core::option::Option::Some(#converted) => #converted,
                            ::core::option::Option::None => #value,
                        }
                    }
                }
            }
            Some(value) => quote!(::core::result::Result::Err(_) => #value),
            None => {
                let error = local("__cachify_error");
                // Spanned at the error type, where a missing `From` impl is reported.
                let convert =
                    quote_spanned!(output.span(Some(1))=> ::cachify::__private::lock_error(#error));
                quote! {
                    ::core::result::Result::Err(#error) => ::core::result::Result::Err(#convert)
                }
            }
        };
        let site_var = local("__CACHIFY_SITE");
        let site = key.site(&sig.ident);
        let ttl = match &key.args.ttl {
            Some(ttl) => {
                let ttl = duration(ttl);
                quote!(::core::option::Option::Some(#ttl))
            }
            None => quote!(::core::option::Option::None),
        };
        let call = quote! {
            #site
            match ::cachify::__private::#acquire(#client_var, &#site_var, #key_var, #max_size #ttl, #wait) #dot_await {
                ::core::result::Result::Ok(#guard) =>
                    ::cachify::__private::#run(#guard, #body) #dot_await,
                #refused,
            }
        };
        (key.prelude(), call)
    };
    // Inner attributes (`#![allow(..)]` at the top of the body) stay
    // where they were: `ItemFn` prints them inside the braces.
    let block = syn::parse2(quote! {{
        #prelude
        #call
    }})?;
    Ok(ItemFn {
        attrs: attrs.clone(),
        vis: vis.clone(),
        sig: sig.clone(),
        block: Box::new(block),
    })
}

/// The cached call of a function with `stale_if_error` or `early_refresh`
/// (`None` without them): its entries carry their metadata, so it takes no
/// typed fast path. With `early_refresh`, the body becomes a closure that
/// runs on clones of the arguments, once per fill and per background
/// refresh.
fn entry_call(
    key: &Key,
    sig: &syn::Signature,
    block: &syn::Block,
    output: &Output,
    fields: &TokenStream,
    unless: &TokenStream,
) -> Option<TokenStream> {
    let refreshing = key
        .args
        .early_refresh
        .as_ref()
        .is_some_and(|literal| literal.value);
    if key.args.stale_if_error.is_none() && !refreshing {
        return None;
    }
    let client_var = local("__cachify_client");
    let key_var = local("__cachify_key");
    let site = local("__CACHIFY_SITE");
    let unless_var = local("__cachify_unless");
    let shape::Shape {
        policy,
        stored_span,
        ..
    } = &key.shape;
    let stored_span = *stored_span;
    let ty = &output.ty;
    let optional = |value: Option<&Duration>| match value {
        Some(value) => {
            let value = duration(value);
            quote!(::core::option::Option::Some(#value))
        }
        None => quote!(::core::option::Option::None),
    };
    let stale_if_error = optional(key.args.stale_if_error.as_ref());
    let call = quote! {
        ::cachify::__private::CacheCall {
            #fields
            stale_if_error: #stale_if_error,
            early_refresh: #refreshing,
        }
    };
    let is_async = sig.asyncness.is_some();
    let dot_await = sig.asyncness.map(|_| quote!(.await));
    if !refreshing {
        let runner = if is_async {
            quote!(cached_entry)
        } else {
            quote!(cached_entry_blocking)
        };
        let body = output.body(sig, block);
        let run = quote_spanned!(stored_span=>
            ::cachify::__private::#runner::<#policy, #ty, _, _>(
                #client_var, #key_var, &#site, #call, #body, #unless_var
            )
        );
        return Some(quote! {
            let #unless_var = #unless;
            #run #dot_await
        });
    }
    // Spanned at each parameter's type: that is what must be
    // `Clone + Send + 'static`, and where the error says so.
    let clones: Vec<TokenStream> = key
        .cloned
        .iter()
        .map(|cloned| {
            let (mutability, ident) = (&cloned.mutability, &cloned.ident);
            quote_spanned!(cloned.ty.span()=>
                let #mutability #ident = ::cachify::__private::refresh_clone(&#ident);
            )
        })
        .collect();
    let make = local("__cachify_make");
    let (runner, closure) = if is_async {
        let body = output.body(sig, block);
        (
            quote!(cached_refreshing::<#policy, #ty, _, _, _>),
            quote!(move || { #(#clones)* #body }),
        )
    } else {
        let mut body = TokenStream::new();
        block.brace_token.surround(&mut body, |body| {
            body.append_all(&clones);
            body.append_all(&block.stmts);
        });
        let closure = if output.nameable {
            quote!(move || -> #ty #body)
        } else {
            quote!(move || #body)
        };
        (
            quote!(cached_refreshing_blocking::<#policy, #ty, _, _>),
            closure,
        )
    };
    let run = quote_spanned!(stored_span=>
        ::cachify::__private::#runner(#client_var, #key_var, &#site, #call, #make, #unless_var)
    );
    Some(quote! {
        let #unless_var = #unless;
        let #make = #closure;
        #run #dot_await
    })
}

fn duration(duration: &Duration) -> TokenStream {
    match duration {
        Duration::Secs(seconds) => quote!(::cachify::__private::secs(#seconds)),
        Duration::Expr(value) => {
            let var = local("__cachify_duration");
            // The user's span on the whole binding keeps a type mismatch on their expression.
            quote_spanned!(value.span()=> {
                let #var: ::core::time::Duration = #value;
                #var
            })
        }
    }
}

/// A sibling that a kind of layer generates.
struct Sibling {
    /// It is named `<fn>_<suffix>`.
    suffix: &'static str,
    /// Its doc for a single layer.
    doc: String,
    /// What it returns in `Ok`.
    ok: TokenStream,
    /// The `__private` function that answers for one layer.
    runtime: &'static str,
    /// The `__private` function that combines the layers' answers.
    combine: &'static str,
}

/// The siblings each kind generates: `<fn>_reset`, `<fn>_is_locked` and\n/// `<fn>_release`, or `<fn>_pool_size`.
fn sibling_specs(kind: Kind, shown: &str) -> Vec<Sibling> {
    match kind {
        Kind::Cached => vec![Sibling {
            suffix: "reset",
            doc: format!(" Deletes the cached result of `{shown}` for these arguments."),
            ok: quote!(()),
            runtime: "delete",
            combine: "all_layers",
        }],
        Kind::Once | Kind::Lock => vec![
            Sibling {
                suffix: "is_locked",
                doc: format!(
                    " Whether a call of `{shown}` with these arguments holds its lock right now."
                ),
                ok: quote!(bool),
                runtime: "is_locked",
                combine: "any_layer",
            },
            Sibling {
                suffix: "release",
                doc: format!(
                    " Releases the lock of `{shown}` for these arguments, whoever holds it."
                ),
                ok: quote!(()),
                runtime: "release",
                combine: "all_layers",
            },
        ],
        Kind::Pooled => vec![Sibling {
            suffix: "pool_size",
            doc: format!(
                " How many calls of `{shown}` with these arguments hold a slot of its pool right now."
            ),
            ok: quote!(usize),
            runtime: "pool_size",
            combine: "busiest_layer",
        }],
    }
}

/// The siblings of a stack (`keys` outermost first): each one answers for
/// every layer that has it, innermost first, so that one `<fn>_reset`
/// clears every `#[cached]` layer.
fn siblings(keys: &[Key], function: &ItemFn, vis: &Visibility) -> Vec<TokenStream> {
    let sig = &function.sig;
    let name = &sig.ident;
    let shown = name.unraw().to_string();
    let used: HashSet<String> = keys.iter().flat_map(Key::used_names).collect();
    // Only the parameters the keys need, so callers pass just those.
    let (inputs, generics) = sibling_parameters(keys.iter(), sig, &used);
    let (generics, _, where_clause) = generics.split_for_impl();
    let attrs = sibling_attrs(function);
    let asyncness = &sig.asyncness;
    let client_var = local("__cachify_client");
    let key_var = local("__cachify_key");
    let blocking = if asyncness.is_some() { "" } else { "_blocking" };
    let dot_await = asyncness.map(|_| quote!(.await));

    // Each sibling with the layers that have it, innermost first.
    let mut specs: Vec<(Sibling, Vec<&Key>)> = Vec::new();
    for key in keys.iter().rev() {
        for spec in sibling_specs(key.kind, &shown) {
            match specs
                .iter_mut()
                .find(|(seen, _)| seen.suffix == spec.suffix)
            {
                Some((_, layers)) => layers.push(key),
                None => specs.push((spec, vec![key])),
            }
        }
    }
    specs
        .into_iter()
        .map(|(spec, layers)| {
            let sibling = format_ident!("{}_{}", name, spec.suffix, span = name.span());
            let runtime = format_ident!("{}{}", spec.runtime, blocking);
            let combine = format_ident!("{}", spec.combine);
            let mut doc = spec.doc;
            if layers.len() > 1 {
                doc.push_str(&format!(
                    " It answers for each of the {} stacked layers that have it, innermost \
                     first; every layer is tried, and the first error is returned.",
                    layers.len()
                ));
            }
            let answers = layers.iter().map(|key| {
                let prelude = key.prelude();
                quote!({
                    #prelude
                    ::cachify::__private::#runtime(#client_var, #key_var) #dot_await
                })
            });
            let ok = &spec.ok;
            quote! {
                #(#attrs)*
                #[doc = #doc]
                // Generated whether or not the caller needs it: unused is fine.
                #[allow(dead_code)]
                #vis #asyncness fn #sibling #generics (#(#inputs),*)
                    -> ::core::result::Result<#ok, ::cachify::Error>
                #where_clause
                {
                    ::cachify::__private::#combine([#(#answers),*])
                }
            }
        })
        .collect()
}

/// In a trait impl without `#[cachify::trait_impl]` the siblings are not
/// members of the trait, and rustc's only error would say so without the
/// fix. So a method names one of its siblings: an inherent impl or a trait
/// has it, and otherwise the name falls back to a local trait whose unmet
/// bound (`__private::NeedsTraitImplAttribute`) names the fix. Nothing is
/// checked where no sibling can be named: in a function that may be free
/// (see [`analysis::in_impl`]), or when every sibling has an `impl Trait`
/// input.
fn trait_impl_check(keys: &[Key], function: &ItemFn) -> Option<syn::Stmt> {
    if !analysis::in_impl(function) {
        return None;
    }
    let (sibling, arguments) = nameable_sibling(keys, &function.sig)?;
    let turbofish = (!arguments.is_empty()).then(|| quote!(::<#(#arguments),*>));
    let check = local("CachifySiblingCheck");
    Some(syn::parse_quote_spanned! { function.sig.ident.span() =>
        {
            #[allow(dead_code)]
            trait #check {
                fn #sibling() {}
            }
            impl<Checked: ?::core::marker::Sized + ::cachify::__private::NeedsTraitImplAttribute>
                #check for Checked {}
            let _ = Self::#sibling #turbofish;
        }
    })
}

/// A sibling of the stack that can be named as a value, with the generic
/// arguments that name it: the innermost layer's first, else `<fn>_clear`.
fn nameable_sibling(keys: &[Key], sig: &syn::Signature) -> Option<(Ident, Vec<TokenStream>)> {
    let first = sibling_specs(keys.last()?.kind, "").first()?.suffix;
    let used: HashSet<String> = keys.iter().flat_map(Key::used_names).collect();
    let first = (first, sibling_parameters(keys.iter(), sig, &used));
    let cached = cached_layers(keys);
    let clear = (!cached.is_empty()).then(|| ("clear", clear_parameters(&cached, sig)));
    std::iter::once(first)
        .chain(clear)
        .find_map(|(suffix, (inputs, generics))| {
            let arguments = analysis::generic_arguments(&generics, &inputs)?;
            let name = &sig.ident;
            Some((
                format_ident!("{}_{}", name, suffix, span = name.span()),
                arguments,
            ))
        })
}

/// A sibling's parameters: only those of the function that `used` names
/// (plus `&self` if it names `self`), with the generic parameters their
/// types and the client expression mention.
fn sibling_parameters<'k, 'a: 'k>(
    keys: impl Iterator<Item = &'k Key<'a>>,
    sig: &syn::Signature,
    used: &HashSet<String>,
) -> (Vec<TokenStream>, syn::Generics) {
    let mut inputs = Vec::new();
    let mut types = TokenStream::new();
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(receiver) if used.contains("self") => {
                let self_token = receiver.self_token;
                inputs.push(quote!(&#self_token));
            }
            FnArg::Receiver(_) => {}
            FnArg::Typed(typed) => {
                let bindings = valid::bindings(&typed.pat);
                if !bindings
                    .iter()
                    .any(|binding| used.contains(&binding.to_string()))
                {
                    continue;
                }
                let mut typed = typed.clone();
                typed.attrs.retain(is_cfg);
                analysis::prune_pattern(&mut typed.pat, used);
                typed.ty.to_tokens(&mut types);
                inputs.push(typed.into_token_stream());
            }
        }
    }
    for client in keys.filter_map(|key| key.args.client.as_ref()) {
        client.to_tokens(&mut types);
    }
    let generics = analysis::sibling_generics(&sig.generics, &analysis::mentions(&types));
    (inputs, generics)
}

/// `cfg` so the siblings exist exactly when the function does; `allow` so
/// a lint the user silenced on the signature stays silent on them.
fn sibling_attrs(function: &ItemFn) -> Vec<&Attribute> {
    function
        .attrs
        .iter()
        .filter(|attr| matches!(attr.style, AttrStyle::Outer))
        .filter(|attr| is_cfg(attr) || attr.path().is_ident("allow"))
        .collect()
}

/// `<fn>_clear` of a stack with `#[cached]` layers: deletes the entries of
/// every argument, in every cached layer (innermost first), and returns how
/// many. It takes only the parameters the layers' `client` expressions use.
fn clear_sibling(keys: &[Key], function: &ItemFn, vis: &Visibility) -> Option<TokenStream> {
    let cached = cached_layers(keys);
    if cached.is_empty() {
        return None;
    }
    let sig = &function.sig;
    let name = &sig.ident;
    let (inputs, generics) = clear_parameters(&cached, sig);
    let (generics, _, where_clause) = generics.split_for_impl();
    let attrs = sibling_attrs(function);
    let asyncness = &sig.asyncness;
    let (runtime, dot_await) = match asyncness {
        Some(_) => (quote!(clear), quote!(.await)),
        None => (quote!(clear_blocking), TokenStream::new()),
    };
    let sibling = format_ident!("{}_clear", name, span = name.span());
    let mut doc = format!(
        " Deletes the cached results of `{}` for every argument; returns how many entries were deleted.",
        name.unraw()
    );
    if cached.len() > 1 {
        doc.push_str(&format!(
            " It clears each of the {} stacked `#[cached]` layers, innermost first; every \
             layer is tried, and the first error is returned.",
            cached.len()
        ));
    }
    let client_var = local("__cachify_client");
    let template = local("__CACHIFY_TEMPLATE");
    let answers = cached.iter().map(|key| {
        let client = key.client_binding();
        let constant = key.template_const(&template);
        let integers = analysis::integer_placeholders(sig, &key.pieces);
        quote!({
            #client
            #constant
            ::cachify::__private::#runtime(#client_var, &#template, &[#(#integers),*]) #dot_await
        })
    });
    Some(quote! {
        #(#attrs)*
        #[doc = #doc]
        // Generated whether or not the caller needs it: unused is fine.
        #[allow(dead_code)]
        #vis #asyncness fn #sibling #generics (#(#inputs),*)
            -> ::core::result::Result<u64, ::cachify::Error>
        #where_clause
        {
            ::cachify::__private::total_of_layers([#(#answers),*])
        }
    })
}

/// The `#[cached]` layers of a stack, innermost first.
fn cached_layers<'k, 'a>(keys: &'k [Key<'a>]) -> Vec<&'k Key<'a>> {
    keys.iter()
        .rev()
        .filter(|key| key.kind == Kind::Cached)
        .collect()
}

/// `<fn>_clear`'s parameters: those the layers' `client` expressions use.
fn clear_parameters(cached: &[&Key], sig: &syn::Signature) -> (Vec<TokenStream>, syn::Generics) {
    let used = cached
        .iter()
        .flat_map(|key| analysis::used_names(&[], key.args.client.as_ref()))
        .collect();
    sibling_parameters(cached.iter().copied(), sig, &used)
}

fn is_cfg(attr: &Attribute) -> bool {
    attr.path().is_ident("cfg") || attr.path().is_ident("cfg_attr")
}
