//! Test support (feature `testing`): the backend conformance kit, the test buses
//! ([`RecordingBus`], [`NoopBus`]), and given/when/then fixtures for aggregates and sagas.
//!
//! None of it is part of a production build: enable the feature in `[dev-dependencies]`:
//!
//! ```toml
//! [dev-dependencies]
//! eventflow = { version = "0.1", features = ["testing"] }
//! ```

pub mod aggregate;
pub mod buses;
pub mod conformance;
pub mod saga;

pub use aggregate::{AggregateTest, AggregateTestOutcome};
pub use buses::{NoopBus, RecordingBus};
