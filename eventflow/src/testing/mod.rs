//! Test support: the backend conformance kit, and given/when/then fixtures.

pub mod conformance;
pub mod saga;
