//! Aggregates: state rebuilt from its own event stream, changed only by commands that decide
//! new events.
//!
//! - [`Aggregate`] binds a state type to its [`DomainEvent`] enum and says how each event
//!   changes the state (`apply`). `#[derive(Aggregate)]` writes it: `apply` dispatches to the
//!   handler trait that `#[derive(DomainEvent)]` generated for the enum (`Apply<Enum>`, one
//!   method per variant), so a variant without a handler does not compile.
//! - Commands are plain methods that take `&self` and return
//!   `Result<Vec<Event>, YourError>`.
//! - [`Repository`] loads (snapshot + tail), runs a command, appends the new events with
//!   [`ExpectedVersion::Exact`](crate::ExpectedVersion::Exact), retries a conflict when asked, and
//!   upcasts old schema versions on the way in.
//! - `eventflow::testing::AggregateTest` tests commands given/when/then, without a store.
//!
//! # Example
//!
//! ```
//! use eventflow::aggregate::Repository;
//! use eventflow::store::memory::InMemoryEventStore;
//! use eventflow::{Aggregate, DomainEvent}; // the traits and their derives
//! use serde::{Deserialize, Serialize};
//! use std::sync::Arc;
//!
//! #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, DomainEvent)]
//! #[event(prefix = "counter")]
//! enum CounterEvent {
//!     Incremented { by: u64 },            // type "counter.incremented", version 1
//!     #[event(name = "counter.reset", version = 2)]
//!     Reset,
//! }
//!
//! #[derive(Debug, Default, Aggregate)]
//! #[aggregate(event = CounterEvent)]        // stream ids: "counter-<id>"
//! struct Counter {
//!     value: u64,
//! }
//!
//! impl ApplyCounterEvent for Counter {
//!     fn incremented(&mut self, by: u64) {
//!         self.value += by;
//!     }
//!     fn reset(&mut self) {
//!         self.value = 0;
//!     }
//! }
//!
//! impl Counter {
//!     fn increment(&self, by: u64) -> Result<Vec<CounterEvent>, String> {
//!         if by == 0 {
//!             return Err("increment by at least 1".into());
//!         }
//!         Ok(vec![CounterEvent::Incremented { by }])
//!     }
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let repo = Repository::<Counter>::new(Arc::new(InMemoryEventStore::new()));
//! repo.execute("c1", |c| c.increment(2)).await?;
//! repo.execute("c1", |c| c.increment(3)).await?;
//! let loaded = repo.load("c1").await?;
//! assert_eq!((loaded.state.value, loaded.version), (5, 2));
//! assert_eq!(Counter::stream_id("c1"), "counter-c1");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Result;
use crate::event::StoredEvent;
use crate::event::{DomainEvent, Event};

mod repository;
pub(crate) mod upcast;

pub use repository::{CommandContext, ExecuteError, Loaded, Repository};
pub use upcast::Upcasters;

/// State folded from an event stream.
///
/// Usually derived: `#[derive(Aggregate)]` with `#[aggregate(event = MyEvent)]` and, optionally,
/// `name = "order"` (the type name; default: the struct name in snake case), `snapshot`,
/// `snapshot_every = 100` and `state_version = 1` (any of the last three opts into
/// [`SnapshotState`]). The derived `apply` calls the handler trait that
/// `#[derive(DomainEvent)]` generated for the event enum; implement that trait (one method per
/// variant) on the aggregate.
pub trait Aggregate: Default + Send + Sync + 'static {
    /// The aggregate type name; stream ids are `"{TYPE}-{id}"` (see [`stream_id`](Self::stream_id)).
    const TYPE: &'static str;

    /// The event enum this aggregate is built from.
    type Event: DomainEvent;

    /// Applies one event. Applying never fails: the event already happened; commands check
    /// rules before deciding events.
    fn apply(&mut self, event: Self::Event);

    /// Decodes a stored event (at its current schema version) and applies it. The default
    /// decodes with [`DomainEvent::from_envelope`] and calls [`apply`](Self::apply); the derive
    /// replaces it with a fused version that hands the payload's fields straight to the handler.
    ///
    /// # Errors
    /// As [`DomainEvent::from_envelope`].
    fn apply_envelope(&mut self, event: &Event) -> Result<()> {
        self.apply(Self::Event::from_envelope(event)?);
        Ok(())
    }

    /// Decodes a [`StoredEvent`] (at its current schema version) and applies it: what
    /// `Repository::load` runs per event. The default goes through
    /// [`apply_envelope`](Self::apply_envelope) (building an envelope and a `Value` first); the
    /// derive replaces it with the fused decode reading the payload text once, straight into the
    /// variant's fields.
    ///
    /// # Errors
    /// As [`DomainEvent::from_envelope`].
    fn apply_stored(&mut self, event: &StoredEvent) -> Result<()> {
        self.apply_envelope(&event.to_envelope()?)
    }

    /// The stream of the aggregate with this id: `"{TYPE}-{id}"`, e.g. `order-42`.
    fn stream_id(id: &str) -> String {
        let mut stream = String::with_capacity(Self::TYPE.len() + 1 + id.len());
        stream.push_str(Self::TYPE);
        stream.push('-');
        stream.push_str(id);
        stream
    }
}

/// Opt-in to snapshots: the state is saved as JSON every [`SNAPSHOT_EVERY`](Self::SNAPSHOT_EVERY)
/// events and loaded back instead of replaying the whole stream.
///
/// Bump [`STATE_VERSION`](Self::STATE_VERSION) whenever the state's shape or meaning changes:
/// snapshots of another version are ignored (the state is rebuilt from the stream), never
/// trusted.
pub trait SnapshotState: Aggregate + Serialize + DeserializeOwned {
    /// The schema version of the serialized state.
    const STATE_VERSION: u32 = 1;
    /// Take a snapshot each time the stream passes a multiple of this many events.
    const SNAPSHOT_EVERY: u64 = 100;
}
