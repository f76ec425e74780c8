//! Test support: the backend conformance kit, and given/when/then fixtures.

pub mod aggregate;
pub mod conformance;
pub mod saga;

pub use aggregate::{AggregateTest, AggregateTestOutcome};
