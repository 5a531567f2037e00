//! `#[exposed]`: turns a trait of `async fn`s into functions main exposes and renderers call
//! through a generated, typed client. Use it through `extension_api::exposed`.
//!
//! For `trait Config` it generates:
//! - the trait itself, its methods returning `Send` futures (implement them with `async fn`);
//! - `ConfigClient`, whose methods take the same arguments and return
//!   `Result<R, extension_api::InvokeError>`;
//! - `expose_config(&main, implementation) -> Result<Disposer, IpcError>`.
//!
//! Each method travels on the reserved channel `expose:Config.method`, its arguments as a
//! tuple. No channel string appears in the author's code.
//!
//! A method returning `Result<T, E>` (written so: a path ending in `Result` with two type
//! arguments) fails typed: an `Err(e)` reaches the client as an `InvokeError` of kind
//! `Handler` whose `data::<E>()` gives `e` back, and whose message is `e`'s `Display` text (or
//! its `Debug` text, or a generic sentence). `E` must be `Serialize`. The client's method then
//! returns `Result<T, InvokeError>`. Any other return type (an alias of a `Result` included)
//! is a plain value.
//!
//! `web_assets!(CRATE, "DIR")` (used by `export_extension!(..., web = "DIR")`, not directly)
//! embeds a web renderer directory: see the `web` module.

mod web;

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{FnArg, Ident, ItemTrait, Pat, ReturnType, TraitItem, Type, parse_macro_input};

/// See the crate documentation.
#[proc_macro_attribute]
pub fn exposed(attribute: TokenStream, item: TokenStream) -> TokenStream {
    if !attribute.is_empty() {
        let error = syn::Error::new(Span::call_site(), "`#[exposed]` takes no arguments");
        return error.to_compile_error().into();
    }
    let input = parse_macro_input!(item as ItemTrait);
    match expand(input) {
        Ok(tokens) => tokens.into(),
        Err(error) => error.to_compile_error().into(),
    }
}

/// Embeds the web renderer directory `DIR` (relative to the crate) as a
/// `&'static [CRATE::abi::WebAsset]`: `web_assets!($crate, "web")`. Used by
/// `export_extension!`'s `web = "DIR"` argument.
#[doc(hidden)]
#[proc_macro]
pub fn web_assets(input: TokenStream) -> TokenStream {
    match web::expand(input.into()) {
        Ok(tokens) => tokens.into(),
        Err(error) => error.to_compile_error().into(),
    }
}

struct Method {
    name: Ident,
    arguments: Vec<(Ident, Type)>,
    /// What the client gets on success (`T` of a `Result<T, E>`, or the whole return type).
    output: Type,
    /// The return type as written in the trait.
    returns: Type,
    /// `E` of a `Result<T, E>` return type.
    error: Option<Type>,
    docs: Vec<syn::Attribute>,
}

fn expand(input: ItemTrait) -> syn::Result<TokenStream2> {
    if !input.generics.params.is_empty() {
        return Err(syn::Error::new(input.generics.span(), "an `#[exposed]` trait cannot be generic"));
    }
    let mut methods = Vec::new();
    for item in &input.items {
        let TraitItem::Fn(function) = item else {
            return Err(syn::Error::new(item.span(), "an `#[exposed]` trait can only contain `async fn` methods"));
        };
        methods.push(method(function)?);
    }
    let vis = &input.vis;
    let trait_name = &input.ident;
    let trait_attrs = &input.attrs;
    let client = format_ident!("{}Client", trait_name);
    let expose_fn = format_ident!("expose_{}", snake_case(&trait_name.to_string()));
    let trait_methods = methods.iter().map(|m| {
        let Method { name, arguments, returns, docs, .. } = m;
        let args = arguments.iter().map(|(arg, ty)| quote! { #arg: #ty });
        quote! {
            #(#docs)*
            fn #name(&self, #(#args),*) -> impl ::core::future::Future<Output = #returns> + ::core::marker::Send;
        }
    });
    let client_methods = methods.iter().map(|m| {
        let Method { name, arguments, output, docs, .. } = m;
        let channel = format!("expose:{trait_name}.{name}");
        let args = arguments.iter().map(|(arg, ty)| quote! { #arg: #ty });
        let names = arguments.iter().map(|(arg, _)| arg);
        let types = arguments.iter().map(|(_, ty)| ty);
        quote! {
            #(#docs)*
            pub fn #name(&self, #(#args),*) -> impl ::core::future::Future<
                Output = ::core::result::Result<#output, ::extension_api::InvokeError>,
            > + ::core::marker::Send + 'static {
                self.renderer.invoke_with_timeout::<(#(#types,)*), #output, &str>(
                    #channel,
                    &(#(#names,)*),
                    self.timeout,
                )
            }
        }
    });
    let registrations = methods.iter().map(|m| {
        let Method { name, arguments, output, error, .. } = m;
        let channel = format!("expose:{trait_name}.{name}");
        let names: Vec<_> = arguments.iter().map(|(arg, _)| arg).collect();
        let types = arguments.iter().map(|(_, ty)| ty);
        let (error_type, call) = match error {
            None => (
                quote! { ::extension_api::__private::Never },
                quote! { ::core::result::Result::Ok(#trait_name::#name(&*implementation, #(#names),*).await) },
            ),
            Some(error) => {
                let function = format!("{trait_name}.{name}");
                (
                    quote! { ::extension_api::__private::ExposedError<#error> },
                    quote! {
                        #trait_name::#name(&*implementation, #(#names),*).await.map_err(|error| {
                            #[allow(unused_imports)]
                            use ::extension_api::__private::{ViaDebug as _, ViaDisplay as _, ViaNothing as _};
                            let message = (&&::extension_api::__private::ErrorText(&error)).exposed_error_text(#function);
                            ::extension_api::__private::ExposedError { message, value: error }
                        })
                    },
                )
            }
        };
        // Checked here, at the error type as written, so the compiler's complaint points there.
        let serializable = error.iter().map(|error| {
            quote_spanned! { error.span() =>
                const _: fn() = || ::extension_api::__private::exposed_error_must_be_serialize::<#error>();
            }
        });
        quote! {
            #(#serializable)*
            {
                let implementation = implementation.clone();
                let registered = main.handle::<(#(#types,)*), #output, #error_type, &str, _, _>(
                    #channel,
                    move |(#(#names,)*), _meta| {
                        let implementation = implementation.clone();
                        async move { #call }
                    },
                );
                match registered {
                    ::core::result::Result::Ok(disposer) => disposers.push(disposer),
                    ::core::result::Result::Err(error) => {
                        ::extension_api::Disposer::group(disposers).dispose();
                        return ::core::result::Result::Err(error);
                    }
                }
            }
        }
    });
    let client_doc = format!("Calls the functions of [`{trait_name}`] that main exposes, from a renderer half.");
    let expose_doc = format!(
        "Exposes `implementation` as main's [`{trait_name}`]: renderers call it through [`{client}`]. \
         Fails if it is already exposed; dispose the returned disposer to withdraw it (calls then \
         fail with `InvokeErrorKind::NoHandler`)."
    );
    Ok(quote! {
        #(#trait_attrs)*
        #vis trait #trait_name: ::core::marker::Send + ::core::marker::Sync + 'static {
            #(#trait_methods)*
        }

        #[doc = #client_doc]
        #[derive(Clone)]
        #vis struct #client {
            renderer: ::extension_api::Renderer,
            timeout: ::core::time::Duration,
        }

        impl #client {
            /// A client calling through `renderer`, waiting [`extension_api::DEFAULT_INVOKE_TIMEOUT`] per call.
            pub fn new(renderer: &::extension_api::Renderer) -> Self {
                Self { renderer: renderer.clone(), timeout: ::extension_api::DEFAULT_INVOKE_TIMEOUT }
            }

            /// The same client with another per-call timeout.
            pub fn with_timeout(mut self, timeout: ::core::time::Duration) -> Self {
                self.timeout = timeout;
                self
            }

            #(#client_methods)*
        }

        #[doc = #expose_doc]
        #vis fn #expose_fn<T: #trait_name>(
            main: &::extension_api::Main,
            implementation: T,
        ) -> ::core::result::Result<::extension_api::Disposer, ::extension_api::IpcError> {
            let implementation = ::std::sync::Arc::new(implementation);
            let mut disposers = ::std::vec::Vec::new();
            #(#registrations)*
            ::core::result::Result::Ok(::extension_api::Disposer::group(disposers))
        }
    })
}

fn method(function: &syn::TraitItemFn) -> syn::Result<Method> {
    let signature = &function.sig;
    if signature.asyncness.is_none() {
        return Err(syn::Error::new(
            signature.fn_token.span(),
            "exposed functions are called across processes, so they must be `async fn`",
        ));
    }
    if !signature.generics.params.is_empty() {
        return Err(syn::Error::new(signature.generics.span(), "an exposed function cannot be generic"));
    }
    if function.default.is_some() {
        return Err(syn::Error::new(function.span(), "an exposed function cannot have a default body"));
    }
    let mut inputs = signature.inputs.iter();
    match inputs.next() {
        Some(FnArg::Receiver(receiver)) if receiver.reference.is_some() && receiver.mutability.is_none() => {}
        Some(other) => {
            return Err(syn::Error::new(
                other.span(),
                "an exposed function takes `&self` (the implementation is shared by concurrent calls)",
            ));
        }
        None => return Err(syn::Error::new(signature.span(), "an exposed function takes `&self`")),
    }
    let mut arguments = Vec::new();
    for input in inputs {
        let FnArg::Typed(typed) = input else {
            return Err(syn::Error::new(input.span(), "`self` may only be the first argument"));
        };
        let Pat::Ident(pattern) = &*typed.pat else {
            return Err(syn::Error::new(
                typed.pat.span(),
                "name each argument of an exposed function with a plain identifier",
            ));
        };
        if let Type::Reference(reference) = &*typed.ty {
            return Err(syn::Error::new(
                reference.span(),
                "arguments of exposed functions are copied across the boundary: take them by value (for example `String` instead of `&str`)",
            ));
        }
        arguments.push((pattern.ident.clone(), (*typed.ty).clone()));
    }
    let returns: Type = match &signature.output {
        ReturnType::Default => syn::parse_quote!(()),
        ReturnType::Type(_, ty) => (**ty).clone(),
    };
    let (output, error) = match result_types(&returns) {
        Some((ok, error)) => (ok, Some(error)),
        None => (returns.clone(), None),
    };
    let docs = function.attrs.iter().filter(|attr| attr.path().is_ident("doc")).cloned().collect();
    Ok(Method { name: signature.ident.clone(), arguments, output, returns, error, docs })
}

/// `(T, E)` of a return type written `Result<T, E>` (any path ending in `Result`, with two
/// type arguments).
fn result_types(ty: &Type) -> Option<(Type, Type)> {
    let Type::Path(path) = ty else { return None };
    if path.qself.is_some() {
        return None;
    }
    let last = path.path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let syn::PathArguments::AngleBracketed(arguments) = &last.arguments else { return None };
    let mut types = arguments.args.iter().map(|argument| match argument {
        syn::GenericArgument::Type(ty) => Some(ty.clone()),
        _ => None,
    });
    match (types.next(), types.next(), types.next()) {
        (Some(Some(ok)), Some(Some(error)), None) => Some((ok, error)),
        _ => None,
    }
}

fn snake_case(name: &str) -> String {
    let mut out = String::new();
    for (index, character) in name.chars().enumerate() {
        if character.is_uppercase() {
            if index > 0 {
                out.push('_');
            }
            out.extend(character.to_lowercase());
        } else {
            out.push(character);
        }
    }
    out
}
