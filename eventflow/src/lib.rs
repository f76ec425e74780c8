//! # eventflow
//!
//! Event sourcing and an event bus for Rust services: typed events, an event store
//! (in-memory or PostgreSQL), and a pluggable bus (in-memory, NATS, Redis) that drives
//! projections and sagas.
//!
//! ```
//! use eventflow::{Event, validate_event_type};
//! use serde_json::json;
//!
//! let event = Event::new("order.created", json!({ "order_id": "o-1" }))?.with_correlation("c-1");
//! assert_eq!(event.event_type, "order.created");
//! assert!(validate_event_type("Order Created").is_err());
//! # Ok::<(), eventflow::Error>(())
//! ```
//!
//! ## Cargo features
//!
//! | feature | what it adds | default |
//! |---|---|---|
//! | `postgres` | `PostgresEventStore`, snapshots, checkpoints, relay (sqlx) | no |
//! | `nats` | `NatsBus`, core and JetStream (async-nats) | no |
//! | `redis` | `RedisBus`, pub/sub and Streams (redis-rs) | no |
//! | `full` | all of the above | no |

pub mod aggregate;
pub mod bus;
pub mod error;
pub mod event;
pub mod event_types;
pub mod projection;
pub mod relay;
pub mod saga;
pub mod store;
pub mod testing;

pub use bus::{EventBus, EventBusExt, Handler, HandlerResult, Pattern, Subscription, sync_handler};
pub use error::{BoxError, Error, Result};
pub use event::{DomainEvent, Event, Metadata, validate_event_type};
pub use store::{
    CheckpointStore, EventCriteria, EventStore, ExpectedVersion, Snapshot, SnapshotStore,
};
