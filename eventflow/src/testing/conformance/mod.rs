//! The conformance kit: async functions that check a backend against the promises of
//! [`EventBus`](crate::EventBus) and [`EventStore`](crate::EventStore).
//!
//! Every backend runs the same kit (the in-memory ones in this crate's tests, the others in the
//! workspace's `tests/` crate against real servers). A backend declares what it can do in a
//! `Capabilities` value ([`bus::Capabilities`], [`store::Capabilities`]); the kit runs the
//! checks every backend must pass plus the checks each declared capability implies, skips the
//! others, and returns a [`Report`] naming what ran and what was skipped. Each check panics with
//! a message naming the broken promise.
//!
//! Checks get their backend from a factory that takes a [`Scope`]: backends made for the same
//! scope share their storage (subject or key prefix, stream, schema, durable names), backends
//! made for different scopes share nothing. Most checks use one backend per scope; the checks
//! of durability and competing consumers make several for one scope.

pub mod bus;
pub mod dead_letters;
pub mod leases;
pub mod partitions;
mod report;
pub mod store;

pub use report::{Report, Scope};
