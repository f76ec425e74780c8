//! What to emit when the input breaks a rule: the errors as `compile_error!`, plus stub impls
//! (and the handler trait, when the variants are known) so that code using the type compiles
//! against them and the user sees the one real error instead of a cascade.

use proc_macro2::TokenStream;
use syn::DeriveInput;

use crate::ast::{AggregateInput, EventEnum};
use crate::expand;

pub(crate) fn domain_event(
    input: &DeriveInput,
    parsed: Option<&EventEnum<'_>>,
    error: &syn::Error,
) -> TokenStream {
    let mut out = error.to_compile_error();
    if let Some(event) = parsed {
        out.extend(expand::handler_trait(event));
    }
    // A stub for a generic type would only add errors of its own (`'static` bounds).
    if input.generics.params.is_empty() {
        out.extend(expand::domain_event_stub(input));
    }
    out
}

pub(crate) fn aggregate(
    input: &DeriveInput,
    parsed: Option<&AggregateInput<'_>>,
    error: &syn::Error,
) -> TokenStream {
    let mut out = error.to_compile_error();
    if !matches!(input.data, syn::Data::Union(_)) {
        out.extend(expand::aggregate_stub(input, parsed));
    }
    out
}
