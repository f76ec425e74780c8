//! [`SagaStore`]: durable saga state, and the values it stores.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::Deadline;
use crate::error::Result;
use crate::event::Event;

#[cfg(doc)]
use super::InMemorySagaStore;
#[cfg(doc)]
use crate::error::Error;

/// A stored saga instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SagaInstance {
    /// Its correlation id.
    pub correlation_id: String,
    /// Its state, as JSON.
    pub state: serde_json::Value,
    /// Bumped by every commit (1 after creation); used for optimistic concurrency.
    pub version: u64,
    /// Whether the saga completed.
    pub completed: bool,
    /// Pending deadlines.
    pub deadlines: Vec<Deadline>,
}

/// What [`SagaStore::load`] returns.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedSaga {
    /// The instance, if one exists.
    pub instance: Option<SagaInstance>,
    /// Whether the event asked about was already handled by it.
    pub already_handled: bool,
    /// Whether the instance completed and was pruned ([`SagaStore::prune`]): only its tombstone
    /// is left (`instance` is `None`), and it must not start again.
    pub pruned: bool,
}

/// One atomic step of an instance, for [`SagaStore::commit`].
#[derive(Debug, Clone, PartialEq)]
pub struct SagaCommit {
    /// The instance.
    pub correlation_id: String,
    /// The version the step was computed from; 0 creates the instance.
    pub expected_version: u64,
    /// The new state.
    pub state: serde_json::Value,
    /// Whether the instance is now complete.
    pub completed: bool,
    /// The deadlines after the step (replacing the stored ones).
    pub deadlines: Vec<Deadline>,
    /// The event handled by this step.
    pub handled_event: Uuid,
    /// Events to publish after the commit.
    pub outbox: Vec<Event>,
}

/// The result of [`SagaStore::commit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CommitOutcome {
    /// Written.
    Committed,
    /// The event was already handled for this instance; nothing was written.
    AlreadyHandled,
}

/// Durable saga state: instances, handled event ids, deadlines and the outbox.
///
/// Contract (shared by [`InMemorySagaStore`] and the PostgreSQL store):
/// - `commit` is all or nothing.
/// - At most one instance per (saga, correlation id): creating one that exists, or updating one
///   whose version is not `expected_version`, fails with [`Error::Conflict`] and writes nothing.
/// - An event id is recorded at most once per instance: committing a step for an id already
///   recorded returns [`CommitOutcome::AlreadyHandled`] and writes nothing.
/// - Retention: [`prune`](Self::prune) removes a completed instance and its handled ids and
///   leaves a tombstone (saga, correlation id, completion time); creating an instance whose
///   tombstone exists fails with [`Error::Conflict`], and [`load`](Self::load) reports it as
///   [`LoadedSaga::pruned`]. [`prune_tombstones`](Self::prune_tombstones) removes old
///   tombstones; after that the correlation id is unknown again. Each call removes at most
///   `limit` entries in one short atomic step, so pruning never holds a long transaction or
///   lock. A completed instance's completion time is the time of its last commit (in
///   PostgreSQL, the database's clock).
#[async_trait]
pub trait SagaStore: Send + Sync + 'static {
    /// The instance of `saga` for `correlation_id`, and whether it has handled `event_id`.
    ///
    /// # Errors
    /// Backend errors.
    async fn load(&self, saga: &str, correlation_id: &str, event_id: Uuid) -> Result<LoadedSaga>;

    /// Commits one step atomically (see the trait docs).
    ///
    /// # Errors
    /// [`Error::Conflict`] on a lost race; backend errors.
    async fn commit(&self, saga: &str, commit: SagaCommit) -> Result<CommitOutcome>;

    /// Up to `limit` deadlines of `saga` due at `now`, with their correlation ids, earliest first.
    ///
    /// # Errors
    /// Backend errors.
    async fn due_deadlines(
        &self,
        saga: &str,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<(String, Deadline)>>;

    /// Up to `limit` outbox events of `saga` not yet acknowledged, oldest first.
    ///
    /// # Errors
    /// Backend errors.
    async fn pending_outbox(&self, saga: &str, limit: usize) -> Result<Vec<Event>>;

    /// Removes published events from the outbox.
    ///
    /// # Errors
    /// Backend errors.
    async fn ack_outbox(&self, saga: &str, event_ids: &[Uuid]) -> Result<()>;

    /// Removes up to `limit` instances of `saga` that completed before `completed_before`,
    /// oldest first, with their handled event ids, leaving a tombstone for each. Returns how
    /// many it removed (fewer than `limit`: none are left to remove). Instances that have not
    /// completed are never removed.
    ///
    /// # Errors
    /// Backend errors.
    async fn prune(&self, saga: &str, completed_before: DateTime<Utc>, limit: usize)
    -> Result<u64>;

    /// Removes up to `limit` tombstones of `saga` whose instance completed before
    /// `completed_before`, oldest first. Returns how many it removed.
    ///
    /// # Errors
    /// Backend errors.
    async fn prune_tombstones(
        &self,
        saga: &str,
        completed_before: DateTime<Utc>,
        limit: usize,
    ) -> Result<u64>;
}
