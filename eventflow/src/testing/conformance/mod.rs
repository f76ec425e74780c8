//! The conformance kit: async functions that check a backend against the promises of
//! [`EventBus`](crate::EventBus) and [`EventStore`](crate::EventStore).
//!
//! Every backend runs the same kit (the in-memory ones in this crate's tests, the others in the
//! workspace's `tests/` crate against real servers). Each check panics with a message naming the
//! broken promise.

pub mod bus;
pub mod store;
