//! Analysis of a `#[cached]` function's return type: which storage policy
//! of `::cachify::__private` fits it, read from the type as written.

use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::spanned::Spanned;
use syn::{ReturnType, Type};

use crate::valid::{self, last_segment};

/// The policy type for `output`, and where a type error about the stored
/// value is best reported.
pub(crate) struct Shape {
    pub(crate) policy: TokenStream,
    pub(crate) stored_span: Span,
    /// Whether the stored part is an `Option`, whose `None` `none_ttl` governs.
    pub(crate) optional: bool,
}

/// `Result<T, E>` stores `T` (`OkOnly`), `Option<T>` stores `Option<T>`
/// with `None` empty (`Optional`), axum's `Json<T>` stores `T`
/// (`JsonBody`), anything else is stored whole. `Option` and `Json` are
/// looked for at the top and inside the `Ok` type, `Json` inside `Option`.
pub(crate) fn of(output: &ReturnType) -> Shape {
    let ReturnType::Type(_, ty) = output else {
        return Shape {
            policy: quote!(::cachify::__private::Whole),
            stored_span: Span::call_site(),
            optional: false,
        };
    };
    if valid::is_result_like(output) {
        return match valid::type_argument(ty, 0) {
            Some(ok) => {
                let inner = optional(ok);
                Shape {
                    policy: quote!(::cachify::__private::OkOnly<#inner>),
                    stored_span: ok.span(),
                    optional: is_option(ok),
                }
            }
            None => Shape {
                policy: quote!(::cachify::__private::OkOnly),
                stored_span: ty.span(),
                optional: false,
            },
        };
    }
    Shape {
        policy: optional(ty),
        stored_span: ty.span(),
        optional: is_option(ty),
    }
}

fn is_option(ty: &Type) -> bool {
    last_segment(ty).is_some_and(|segment| segment.ident == "Option")
        && valid::type_argument(ty, 0).is_some()
}

fn optional(ty: &Type) -> TokenStream {
    match valid::type_argument(ty, 0) {
        Some(inner) if is_option(ty) => {
            let inner = body(inner);
            quote!(::cachify::__private::Optional<#inner>)
        }
        _ => body(ty),
    }
}

fn body(ty: &Type) -> TokenStream {
    if is_axum_json(ty) {
        quote!(::cachify::__private::JsonBody)
    } else {
        quote!(::cachify::__private::Whole)
    }
}

/// `Json<T>` written bare or through axum's paths. A `Json` from another
/// crate (`sqlx::types::Json<T>`) is spelled with its path and stored whole.
fn is_axum_json(mut ty: &Type) -> bool {
    while let Type::Group(group) = ty {
        ty = &group.elem;
    }
    let Type::Path(path) = ty else {
        return false;
    };
    if path.qself.is_some() {
        return false;
    }
    let names: Vec<String> = path
        .path
        .segments
        .iter()
        .map(|segment| segment.ident.to_string())
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    matches!(
        names.as_slice(),
        ["Json"] | ["axum", "Json"] | ["axum", "extract" | "response", "Json"]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(ty: &str) -> String {
        let output: ReturnType = syn::parse_str(&format!("-> {ty}")).unwrap();
        of(&output).policy.to_string().replace(' ', "")
    }

    #[test]
    fn policies_follow_the_written_type() {
        let p = "::cachify::__private::";
        assert_eq!(policy("u64"), format!("{p}Whole"));
        assert_eq!(policy("Option<User>"), format!("{p}Optional<{p}Whole>"));
        assert_eq!(
            policy("Result<Option<User>, E>"),
            format!("{p}OkOnly<{p}Optional<{p}Whole>>")
        );
        assert_eq!(policy("io::Result<User>"), format!("{p}OkOnly<{p}Whole>"));
        assert_eq!(policy("Json<User>"), format!("{p}JsonBody"));
        assert_eq!(
            policy("Result<axum::Json<User>, AppError>"),
            format!("{p}OkOnly<{p}JsonBody>")
        );
        assert_eq!(
            policy("Option<Json<User>>"),
            format!("{p}Optional<{p}JsonBody>")
        );
        assert_eq!(policy("sqlx::types::Json<User>"), format!("{p}Whole"));
        assert_eq!(
            policy("Option<Option<u8>>"),
            format!("{p}Optional<{p}Whole>")
        );
    }
}
