//! Derive macros for [eventflow](https://docs.rs/eventflow): `#[derive(DomainEvent)]` for typed
//! event enums and `#[derive(Aggregate)]` for aggregates.
//!
//! Use them through `eventflow` (feature `derive`, on by default); the generated code refers
//! only to `::eventflow::__private`, so this crate is never named directly. The attribute
//! reference lives on `eventflow::DomainEvent` and `eventflow::aggregate::Aggregate`.
//!
//! Layout (after thiserror's `impl/`): `ast` is the typed view of the input, `attr` parses the
//! attributes, `valid` checks the rules (each error points at the offending token), `expand`
//! writes the output, and `fallback` writes `compile_error!` plus a stub when the input is wrong.

mod ast;
mod attr;
mod case;
mod expand;
mod fallback;
mod valid;

use proc_macro::TokenStream;
use syn::{DeriveInput, parse_macro_input};

/// Derives `eventflow::DomainEvent` (and the enum's handler trait) for an event enum.
#[proc_macro_derive(DomainEvent, attributes(event))]
pub fn derive_domain_event(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand::derive_domain_event(&input).into()
}

/// Derives `eventflow::aggregate::Aggregate` (and, on request, `SnapshotState`) for a struct.
#[proc_macro_derive(Aggregate, attributes(aggregate))]
pub fn derive_aggregate(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand::derive_aggregate(&input).into()
}
