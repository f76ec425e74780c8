//! A runner's progress, as [`ProjectionRunner::status`](super::ProjectionRunner::status)
//! reports it.

#[cfg(doc)]
use super::FailurePolicy;

/// Where a runner is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RunState {
    /// Not started, or between runs.
    Idle,
    /// Reading stored events faster than they arrive.
    CatchingUp,
    /// Caught up; waiting for commits.
    Live,
    /// Stopped on an event it could not handle (see [`ProjectionStatus::failure`]).
    Failed,
    /// Paused by an operator (`eventflow projections pause`, transactional PostgreSQL
    /// projections): it applies nothing until resumed, and reads again at each commit or poll.
    Paused,
}

/// An event the handler could not handle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedEvent {
    /// Its global position.
    pub position: u64,
    /// Its id.
    pub event_id: uuid::Uuid,
    /// Its type.
    pub event_type: String,
    /// The handler's error message.
    pub error: String,
}

/// A runner's progress, readable at any time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectionStatus {
    /// The projection's name.
    pub name: String,
    /// The position of the last event handled (and checkpointed or about to be).
    pub position: u64,
    /// The store's head position when the status was taken.
    pub head: u64,
    /// `head - position`, in positions; 0 means caught up. In the in-memory store positions are
    /// dense, so this counts events; in PostgreSQL positions are `(transaction id << 20) + index`
    /// and not dense, so it says whether the reader is behind, not by how many events.
    pub lag: u64,
    /// The runner's state.
    pub state: RunState,
    /// Events skipped under [`FailurePolicy::Skip`].
    pub skipped: u64,
    /// Events parked under [`FailurePolicy::Park`] by this runner (since it was built or
    /// rebuilt); the dead-letter store holds them until retried or discarded.
    pub parked: u64,
    /// The last failure (retried, skipped, parked, or the one it stopped on).
    pub failure: Option<FailedEvent>,
}
