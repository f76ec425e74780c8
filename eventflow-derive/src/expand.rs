//! Code generation: the only place that writes tokens with `quote!`.
//!
//! Generated code names nothing but the versioned runtime module (`::eventflow::__private_X_Y_Z`,
//! see [`PRIVATE`]) and core items, and puts its
//! impls inside `const _: () = { .. };` so it adds no names to the user's module (the handler
//! trait, which the user implements, is the one deliberate exception).

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{DeriveInput, Ident};

use crate::ast::{AggregateInput, EventEnum, Style, Variant};
use crate::{fallback, valid};

/// The runtime module of the one `eventflow` release this derive belongs to: its name carries
/// this crate's version (both crates share the workspace version, and `eventflow` pins this crate
/// with `=`). A derive paired with another release of `eventflow` fails to compile with
/// "could not find `__private_X_Y_Z` in `eventflow`" instead of generating code against a
/// runtime it was not written for (thiserror's `__private{PATCH}` scheme).
pub(crate) const PRIVATE: &str = concat!(
    "::eventflow::__private_",
    env!("CARGO_PKG_VERSION_MAJOR"),
    "_",
    env!("CARGO_PKG_VERSION_MINOR"),
    "_",
    env!("CARGO_PKG_VERSION_PATCH"),
);

/// [`PRIVATE`] as a path for `quote!`.
fn private() -> TokenStream {
    PRIVATE.parse().expect("PRIVATE is a valid path")
}

/// The serde crate as seen through [`PRIVATE`], for `#[serde(crate = "...")]`.
fn serde_crate() -> String {
    format!("{PRIVATE}::serde")
}

pub(crate) fn derive_domain_event(input: &DeriveInput) -> TokenStream {
    let data = match valid::event_shape(input) {
        Ok(data) => data,
        Err(err) => return fallback::domain_event(input, None, &err),
    };
    let event = match EventEnum::from_syn(input, data) {
        Ok(event) => event,
        Err(err) => return fallback::domain_event(input, None, &err),
    };
    match valid::event_enum(&event) {
        Ok(()) => domain_event(&event),
        Err(err) => fallback::domain_event(input, Some(&event), &err),
    }
}

pub(crate) fn derive_aggregate(input: &DeriveInput) -> TokenStream {
    let aggregate = match AggregateInput::from_syn(input) {
        Ok(aggregate) => aggregate,
        Err(err) => return fallback::aggregate(input, None, &err),
    };
    match valid::aggregate(&aggregate) {
        Ok(()) => aggregate_impl(&aggregate),
        Err(err) => fallback::aggregate(input, Some(&aggregate), &err),
    }
}

fn domain_event(e: &EventEnum<'_>) -> TokenStream {
    let private = private();
    let ident = &e.input.ident;
    let target = ident.to_string();
    let names: Vec<&str> = e.variants.iter().map(|v| v.name.as_str()).collect();
    let decoders: Vec<TokenStream> = e.variants.iter().map(|v| payload_decoder(e, v)).collect();
    let decode_arms = e.variants.iter().map(decode_arm);
    let stored_arms = e.variants.iter().map(stored_decode_arm);
    let patterns: Vec<TokenStream> = e.variants.iter().map(wildcard_pattern).collect();
    let versioned: Vec<(&str, u32)> = e
        .variants
        .iter()
        .filter(|v| v.version != 1)
        .map(|v| (v.name.as_str(), v.version))
        .collect();
    let versioned_names = versioned.iter().map(|(n, _)| n);
    let versioned_versions = versioned.iter().map(|(_, v)| v);
    let private_ref = &private;
    let upcasts = e.variants.iter().flat_map(|v| {
        v.attrs.upcasts.iter().map(move |u| {
            let private = private_ref;
            let name = &v.name;
            let from = u.from;
            let func = &u.func;
            quote_spanned! {func.span()=>
                (#name, #from) => ::core::option::Option::Some(#func as #private::Upcaster),
            }
        })
    });
    let handler_trait = handler_trait(e);
    let dispatch = dispatch(e);

    quote! {
        #handler_trait

        const _: () = {
            #(#decoders)*

            #[automatically_derived]
            impl #private::DomainEvent for #ident {
                fn event_types() -> &'static [&'static str] {
                    &[#(#names),*]
                }

                #[inline]
                fn event_type(&self) -> &'static str {
                    match self {
                        #(#patterns => #names,)*
                    }
                }

                #[inline]
                fn schema_version(event_type: &str) -> u32 {
                    match event_type {
                        #(#versioned_names => #versioned_versions,)*
                        _ => 1,
                    }
                }

                fn to_payload(&self) -> #private::Result<#private::Value> {
                    #private::variant_to_payload(self, Self::event_type(self))
                }

                #[inline]
                fn from_envelope(
                    event: &#private::Event,
                ) -> #private::Result<Self> {
                    match event.event_type.as_str() {
                        #(#decode_arms)*
                        other => ::core::result::Result::Err(
                            #private::unknown_event_type(other, #target),
                        ),
                    }
                }

                #[inline]
                fn from_stored(
                    event: &#private::StoredEvent,
                ) -> #private::Result<Self> {
                    match event.event_type.as_str() {
                        #(#stored_arms)*
                        other => ::core::result::Result::Err(
                            #private::unknown_event_type(other, #target),
                        ),
                    }
                }

                fn upcaster(
                    event_type: &str,
                    from_version: u32,
                ) -> ::core::option::Option<#private::Upcaster> {
                    match (event_type, from_version) {
                        #(#upcasts)*
                        _ => ::core::option::Option::None,
                    }
                }
            }

            #dispatch
        };
    }
}

/// `Self::Variant { .. }`, `Self::Variant(..)` or `Self::Variant`.
fn wildcard_pattern(v: &Variant<'_>) -> TokenStream {
    let ident = v.ident();
    match v.style() {
        Style::Unit => quote!(Self::#ident),
        Style::Tuple => quote!(Self::#ident(..)),
        Style::Struct => quote!(Self::#ident { .. }),
    }
}

/// The payload type of a variant with fields: a private struct with the variant's fields and
/// their `#[serde(..)]` attributes, so that decoding a payload is exactly what a hand-written
/// `PayloadStruct::deserialize(&payload)` does (no enum tag, no variant lookup).
fn payload_decoder(e: &EventEnum<'_>, v: &Variant<'_>) -> TokenStream {
    let private = private();
    let serde_crate = serde_crate();
    let name = payload_ident(v);
    let fields = v.fields.iter().map(|f| {
        let attrs = &f.serde_attrs;
        let ty = f.ty;
        match v.style() {
            Style::Struct => {
                let binding = &f.binding;
                quote!(#(#attrs)* #binding: #ty)
            }
            _ => quote!(#(#attrs)* #ty),
        }
    });
    let rename_all = e
        .serde
        .rename_all_fields
        .as_ref()
        .map(|lit| quote!(#[serde(rename_all = #lit)]));
    let deny = e
        .serde
        .deny_unknown_fields
        .then(|| quote!(#[serde(deny_unknown_fields)]));
    match v.style() {
        Style::Unit => TokenStream::new(),
        Style::Tuple => quote! {
            #[derive(#private::serde::Deserialize)]
            #[serde(crate = #serde_crate)]
            #[allow(non_camel_case_types)]
            struct #name(#(#fields),*);
        },
        Style::Struct => quote! {
            #[derive(#private::serde::Deserialize)]
            #[serde(crate = #serde_crate)]
            #rename_all
            #deny
            #[allow(non_camel_case_types)]
            struct #name { #(#fields),* }
        },
    }
}

fn payload_ident(v: &Variant<'_>) -> Ident {
    Ident::new(
        &format!(
            "__{}Payload",
            v.ident().to_string().trim_start_matches("r#")
        ),
        proc_macro2::Span::call_site(),
    )
}

/// [`decode_arm`] for a `StoredEvent`: the payload decoded once from whatever the store handed
/// over (JSON text or a value).
fn stored_decode_arm(v: &Variant<'_>) -> TokenStream {
    let private = private();
    let name = &v.name;
    let version = v.version;
    let variant = v.ident();
    let payload = payload_ident(v);
    let build = match v.style() {
        Style::Unit => {
            return quote! {
                #name => #private::decode_unit_from::<Self, _, _>(event, #version, Self::#variant),
            };
        }
        Style::Tuple => {
            let members = (0..v.fields.len()).map(syn::Index::from);
            quote!(Self::#variant(#(p.#members),*))
        }
        Style::Struct => {
            let members: Vec<&Ident> = v.fields.iter().map(|f| &f.binding).collect();
            quote!(Self::#variant { #(#members: p.#members),* })
        }
    };
    quote! {
        #name => #private::decode_from::<Self, #payload, _>(event, #version).map(|p| #build),
    }
}

/// `"type.name" => decode the payload (upcast first when its version is older)`.
fn decode_arm(v: &Variant<'_>) -> TokenStream {
    let private = private();
    let name = &v.name;
    let version = v.version;
    let variant = v.ident();
    let payload = payload_ident(v);
    let build = match v.style() {
        Style::Unit => {
            // A unit variant carries no data: whatever payload it has is ignored.
            return quote! {
                #name => #private::decode_unit::<Self, _>(event, #version, Self::#variant),
            };
        }
        Style::Tuple => {
            let members = (0..v.fields.len()).map(syn::Index::from);
            quote!(Self::#variant(#(p.#members),*))
        }
        Style::Struct => {
            let members: Vec<&Ident> = v.fields.iter().map(|f| &f.binding).collect();
            quote!(Self::#variant { #(#members: p.#members),* })
        }
    };
    quote! {
        #name => #private::decode_payload::<Self, _, _>(
            event,
            #version,
            |payload| {
                <#payload as #private::serde::Deserialize>::deserialize(payload)
                    .map(|p| #build)
            },
        ),
    }
}

/// The trait with one method per variant, which the aggregate implements.
pub(crate) fn handler_trait(e: &EventEnum<'_>) -> TokenStream {
    let vis = &e.input.vis;
    let ident = &e.input.ident;
    let trait_ident = &e.handler_trait;
    let trait_doc = format!(
        "Handlers for every variant of [`{ident}`]: one method per event type, generated by \
         `#[derive(DomainEvent)]`.\n\nImplement it for an aggregate and `#[derive(Aggregate)]` \
         with `#[aggregate(event = {ident})]` wires `Aggregate::apply` to it. A missing \
         method is a compile error that names the variant's handler."
    );
    let methods = e.variants.iter().map(|v| {
        let handler = &v.handler;
        let doc = format!(
            "Applies [`{ident}::{}`] (event type `{}`, schema version {}).",
            v.ident(),
            v.name,
            v.version
        );
        let args = v.fields.iter().map(|f| {
            let binding = &f.binding;
            let ty = f.ty;
            quote!(#binding: #ty)
        });
        // Spanned on the variant: rustc's "missing `x` in implementation" note then points
        // at the variant whose handler is missing.
        quote_spanned! {v.ident().span()=>
            #[doc = #doc]
            fn #handler(&mut self, #(#args),*);
        }
    });
    quote! {
        #[doc = #trait_doc]
        #vis trait #trait_ident {
            #(#methods)*
        }
    }
}

/// `Dispatch<H>` for every `H` that implements the handler trait: a plain `match` on the
/// variant, and a fused decode-and-apply that goes from the envelope straight to the handler
/// (what a hand-written rehydration loop does, without building the enum in between).
fn dispatch(e: &EventEnum<'_>) -> TokenStream {
    let private = private();
    let ident = &e.input.ident;
    let target = ident.to_string();
    let trait_ident = &e.handler_trait;
    let arms = e.variants.iter().map(|v| {
        let variant = v.ident();
        let handler = &v.handler;
        let bindings: Vec<&Ident> = v.fields.iter().map(|f| &f.binding).collect();
        let pattern = match v.style() {
            Style::Unit => quote!(Self::#variant),
            Style::Tuple => quote!(Self::#variant(#(#bindings),*)),
            Style::Struct => quote!(Self::#variant { #(#bindings),* }),
        };
        quote!(#pattern => __handler.#handler(#(#bindings),*),)
    });
    let envelope_arms = e.variants.iter().map(|v| {
        let name = &v.name;
        let version = v.version;
        let handler = &v.handler;
        let payload = payload_ident(v);
        let args: Vec<TokenStream> = match v.style() {
            Style::Unit => {
                return quote! {
                    #name => {
                        #private::decode_unit_from::<Self, _, _>(event, #version, ())?;
                        __handler.#handler();
                    }
                };
            }
            Style::Tuple => (0..v.fields.len())
                .map(|i| {
                    let i = syn::Index::from(i);
                    quote!(p.#i)
                })
                .collect(),
            Style::Struct => v
                .fields
                .iter()
                .map(|f| {
                    let b = &f.binding;
                    quote!(p.#b)
                })
                .collect(),
        };
        quote! {
            #name => {
                let p = #private::decode_from::<Self, #payload, _>(event, #version)?;
                __handler.#handler(#(#args),*);
            }
        }
    });
    quote! {
        #[automatically_derived]
        impl<__H: #trait_ident + ?::core::marker::Sized> #private::Dispatch<__H>
            for #ident
        {
            #[inline]
            fn dispatch(self, __handler: &mut __H) {
                match self {
                    #(#arms)*
                }
            }

            #[inline]
            fn dispatch_envelope<__S: #private::PayloadSource + ?::core::marker::Sized>(
                event: &__S,
                __handler: &mut __H,
            ) -> #private::Result<()> {
                match #private::PayloadSource::event_type(event) {
                    #(#envelope_arms)*
                    other => {
                        return ::core::result::Result::Err(
                            #private::unknown_event_type(other, #target),
                        );
                    }
                }
                ::core::result::Result::Ok(())
            }
        }
    }
}

/// A `DomainEvent` impl whose bodies are never run: emitted next to a `compile_error!` so that
/// uses of the type do not add errors of their own.
pub(crate) fn domain_event_stub(input: &DeriveInput) -> TokenStream {
    let private = private();
    let ident = &input.ident;
    quote! {
        const _: () = {
            impl #private::DomainEvent for #ident {
                fn event_types() -> &'static [&'static str] {
                    &[]
                }
                fn event_type(&self) -> &'static str {
                    ::core::unreachable!()
                }
                fn to_payload(&self) -> #private::Result<#private::Value> {
                    ::core::unreachable!()
                }
                fn from_envelope(
                    _: &#private::Event,
                ) -> #private::Result<Self> {
                    ::core::unreachable!()
                }
            }
        };
    }
}

fn aggregate_impl(a: &AggregateInput<'_>) -> TokenStream {
    let private = private();
    let input = a.input;
    let ident = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let name = &a.name;
    let Some(event) = &a.attrs.event else {
        return TokenStream::new();
    };
    // Spanned on the event type so a missing handler-trait impl points at `event = ..`.
    let apply = quote_spanned! {event.span()=>
        <#event as #private::Dispatch<Self>>::dispatch(event, self)
    };
    let apply_envelope = quote_spanned! {event.span()=>
        <#event as #private::Dispatch<Self>>::dispatch_envelope(event, self)
    };
    let snapshot = a.snapshots().then(|| {
        let version = a.attrs.state_version.as_ref().map_or(1, |n| n.value);
        let every = a.attrs.snapshot_every.as_ref().map_or(100, |n| n.value);
        quote! {
            #[automatically_derived]
            impl #impl_generics #private::SnapshotState for #ident #ty_generics #where_clause {
                const STATE_VERSION: u32 = #version;
                const SNAPSHOT_EVERY: u64 = #every;
            }
        }
    });
    quote! {
        const _: () = {
            #[automatically_derived]
            impl #impl_generics #private::Aggregate for #ident #ty_generics #where_clause {
                const TYPE: &'static str = #name;
                type Event = #event;

                #[inline]
                fn apply(&mut self, event: Self::Event) {
                    #apply
                }

                #[inline]
                fn apply_envelope(
                    &mut self,
                    event: &#private::Event,
                ) -> #private::Result<()> {
                    #apply_envelope
                }

                #[inline]
                fn apply_stored(
                    &mut self,
                    event: &#private::StoredEvent,
                ) -> #private::Result<()> {
                    #apply_envelope
                }
            }
            #snapshot
        };
    }
}

/// An `Aggregate` impl with an empty `apply`, emitted next to a `compile_error!`.
pub(crate) fn aggregate_stub(input: &DeriveInput, a: Option<&AggregateInput<'_>>) -> TokenStream {
    let private = private();
    let ident = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let Some(event) = a.and_then(|a| a.attrs.event.as_ref()) else {
        return TokenStream::new();
    };
    quote! {
        const _: () = {
            impl #impl_generics #private::Aggregate for #ident #ty_generics #where_clause {
                const TYPE: &'static str = "invalid";
                type Event = #event;
                fn apply(&mut self, _: Self::Event) {}
            }
        };
    }
}
