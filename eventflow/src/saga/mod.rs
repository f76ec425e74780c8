//! Sagas (process managers): state per correlation id, follow-up events with causation.
//!
//! A [`Saga`] declares the event types that start it and those it handles. The [`SagaManager`]
//! routes each event by its correlation id to the saga's instance, loads its state (serde) from a
//! [`SagaStore`], calls [`Saga::handle`], and commits the new state, the handled event's id and
//! the events to emit in one atomic step. Then it publishes the emitted events on its bus.
//!
//! Promises, on every [`SagaStore`] (memory and PostgreSQL):
//! - **One instance per correlation id.** Two events with the same correlation id arriving at
//!   once (in one process or several) never create two instances: the store's unique key on
//!   (saga, correlation id) makes one creation lose, and the loser retries as an update.
//! - **An event is handled at most once per instance.** Its id is recorded with the state in the
//!   same commit; a redelivered event is ignored ([`SagaOutcome::Duplicate`]).
//! - **Emitted events carry the correlation id and the trigger's id as causation**
//!   ([`Event::caused_by`](crate::Event::caused_by)). They are written to the store's outbox in
//!   the same commit, published after it, and re-published by [`SagaManager::flush_outbox`] if
//!   the process died in between (at least once, with stable ids).
//! - **State survives a restart**: a new manager over the same store resumes every instance.
//! - **Deadlines** ([`SagaContext::set_deadline`]) are stored with the instance; when due,
//!   [`SagaManager::fire_due_deadlines`] delivers the timeout event to the saga (and publishes it),
//!   even if the process that set it has restarted since. Completing an instance cancels them.
//!   Deadlines fail one by one: a failing one is retried with its own backoff, then parked in
//!   the saga's dead-letter store ([`SagaManager::parked_deadlines`],
//!   [`SagaManager::retry_parked_deadlines`]); the others keep firing.
//! - **Nothing grows without bound** ([`SagaManager::prune`], run by the timer about once a
//!   minute): a completed instance and its handled event ids are kept for
//!   [`retention`](SagaManager::retention) (default 24 hours) after it completed, then replaced
//!   by a tombstone (saga, correlation id, completion time) that is kept until
//!   [`tombstone_retention`](SagaManager::tombstone_retention) (default 7 days) after
//!   completion. Until then, any event of a completed instance's correlation id, a redelivered
//!   one included, starts nothing ([`IgnoreReason::Completed`]); after it, a starting event
//!   with that correlation id starts a new instance. So deduplication holds for the
//!   tombstone window; set it longer than the longest redelivery the bus can make. Instances
//!   that never complete are kept (complete them with a deadline). In memory, each window
//!   bounds the entries to what completed within it; in PostgreSQL, the rows.

mod context;
mod deadline;
mod manager;
mod partitioned;
mod retention;
mod store;
mod subscribe;
mod traits;

pub mod memory;

pub use context::SagaContext;
pub use deadline::{Deadline, DeadlineRetryOutcome, FailingDeadline, SagaTimer};
pub use manager::{IgnoreReason, SagaManager, SagaOutcome};
pub use memory::InMemorySagaStore;
pub use partitioned::{PartitionedSaga, PartitionedSagaTask};
pub use retention::{DEFAULT_RETENTION, DEFAULT_TOMBSTONE_RETENTION, Pruned};
pub use store::{CommitOutcome, LoadedSaga, SagaCommit, SagaInstance, SagaStore};
pub use subscribe::SagaProjection;
pub use traits::{Saga, event_types_of};

#[cfg(test)]
mod tests;
