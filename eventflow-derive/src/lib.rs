//! Derive macros for [eventflow](https://docs.rs/eventflow): `#[derive(DomainEvent)]` for typed
//! event enums and `#[derive(Aggregate)]` for aggregates.
//!
//! Use them through `eventflow` (feature `derive`, on by default); the generated code refers
//! only to `::eventflow::__private_X_Y_Z` (this release's version), so this crate is never named directly. The attribute
//! reference is on the two derives below.
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

/// Derives `eventflow::DomainEvent` for an enum: one variant per event type.
///
/// ```ignore
/// #[derive(Serialize, Deserialize, DomainEvent)]
/// #[event(prefix = "order")]                 // default: the enum name in snake case, minus `_event(s)`
/// enum OrderEvent {
///     Placed { id: String, total: u64 },     // "order.placed", schema version 1
///     Shipped(Address),                      // "order.shipped"; payload = the Address
///     #[event(name = "order.cancelled-by-user", version = 3, upcast(v1 = cancel_v1, v2 = cancel_v2))]
///     Cancelled,                             // unit variant: payload `{}`
/// }
/// ```
///
/// - Enum keys: `prefix = "a.b"`, `handler_trait = Name` (default `Apply<Enum>`).
/// - Variant keys: `name = "full.type"`, `version = N` (from 1), `upcast(vN = path)` (a
///   `fn(Value) -> Result<Value, BoxError>` that upgrades version N to N + 1), `handler = name`
///   (default: the variant in snake case).
///
/// Names are checked at compile time with the rules of `eventflow::validate_event_type`, and
/// must be unique. The payload is the variant's content as serialized by the enum's own
/// `Serialize` derive (serde's default, externally tagged form; `tag`/`untagged` and skipped
/// variants are rejected); decoding uses a generated per-variant payload struct with the same
/// field attributes and the enum's `rename_all_fields` / `deny_unknown_fields`.
///
/// Also generates the handler trait `Apply<Enum>` with one method per variant
/// (`fn placed(&mut self, id: String, total: u64)`, `fn shipped(&mut self, value: Address)`,
/// ...), which `#[derive(Aggregate)]` dispatches to.
#[proc_macro_derive(DomainEvent, attributes(event))]
pub fn derive_domain_event(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand::derive_domain_event(&input).into()
}

/// Derives `eventflow::aggregate::Aggregate` (and, on request, `SnapshotState`).
///
/// ```ignore
/// #[derive(Default, Serialize, Deserialize, Aggregate)]
/// #[aggregate(event = OrderEvent, name = "order", snapshot_every = 100, state_version = 2)]
/// struct Order { /* state */ }
///
/// impl ApplyOrderEvent for Order { /* one method per event variant */ }
/// ```
///
/// Keys: `event = Type` (required), `name = "order"` (stream ids are `"{name}-{id}"`; default:
/// the type name in snake case), and `snapshot`, `snapshot_every = N` (default 100),
/// `state_version = N` (default 1), any of which implements `SnapshotState` (the state must
/// then be `Serialize + Deserialize`). `apply` dispatches each event to its handler method; a
/// variant without one is a compile error naming it.
#[proc_macro_derive(Aggregate, attributes(aggregate))]
pub fn derive_aggregate(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand::derive_aggregate(&input).into()
}
