//! Projections: read models built from the event store in global order, with checkpoints.
//!
//! A [`Projection`] has a name, the event patterns it wants and an async handler. A
//! [`ProjectionRunner`] feeds it from an [`EventStore`](crate::EventStore): it loads the
//! projection's checkpoint, catches up with [`read_all`](crate::EventStore::read_all) in
//! batches, then follows new commits, through [`store::follow`](crate::store::follow) like every
//! reader of the store (it waits on [`commit_signal`](crate::EventStore::commit_signal), with a
//! polling timeout as fallback). It saves the checkpoint once per batch, never per event; while
//! catching up it reads the next batch, and finishes saving the previous checkpoint, while the
//! current batch is applied.
//!
//! Delivery is **at least once**: a crash after the handler ran but before the batch's checkpoint
//! was saved replays those events. A projection whose read model lives in PostgreSQL can close
//! that gap with `eventflow::postgres::PgProjection` (feature `postgres`): its handler writes in the same
//! transaction that advances the checkpoint, so an event is applied exactly once.
//!
//! **The checkpoint never moves past an event that was not handled.** When the handler fails,
//! the [`FailurePolicy`] decides: retry with backoff, skip the event (it is reported in
//! [`ProjectionStatus`] and through `tracing`), or stop the runner.
//!
//! For consumers in other processes, [`subscribe`] runs the same projection from a (durable)
//! bus subscription instead of the store.
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use eventflow::projection::Projection;
//! use eventflow::{Event, HandlerResult};
//!
//! #[derive(Default)]
//! struct OrderCount(Mutex<u64>);
//!
//! #[eventflow::async_trait]
//! impl Projection for OrderCount {
//!     fn name(&self) -> &str { "order-count" }
//!     fn patterns(&self) -> Vec<String> { vec!["order.placed".into()] }
//!     async fn handle(&self, _event: &Event) -> HandlerResult {
//!         *self.0.lock().unwrap() += 1;
//!         Ok(())
//!     }
//!     async fn reset(&self) -> HandlerResult {
//!         *self.0.lock().unwrap() = 0;
//!         Ok(())
//!     }
//! }
//! # let _ = Arc::new(OrderCount::default());
//! ```

mod applier;
mod filter;
pub mod partition;
mod partitioned;
mod policy;
mod runner;
mod status;
mod subscribe;
mod traits;

pub use partition::{PartitionKey, partition_of};
pub use partitioned::{
    PartitionStatus, PartitionedOptions, PartitionedRunner, PartitionedStatus, PartitionedTask,
    ProjectionView, lease_name, partition_checkpoint,
};
pub use policy::{Backoff, FailurePolicy, RunnerOptions};
pub use runner::{ProjectionRunner, ProjectionTask};
pub use status::{FailedEvent, ProjectionStatus, RunState};
pub use subscribe::{subscribe, subscribe_with};
pub use traits::{Projection, event_types_of};

// For the PostgreSQL projection (and the saga runner).
pub(crate) use applier::{Applier, ApplyError, guarded, position_of};
pub(crate) use filter::Filter;
#[cfg_attr(not(feature = "postgres"), allow(unused_imports))]
pub(crate) use partitioned::{PartitionAppliers, PartitionSpec};

#[cfg(test)]
mod tests;
