//! What a runner does when a handler fails, and its other settings.

use std::time::Duration;

/// How long to wait between retries of a failing event: the crate's one retry policy
/// (exponential, with jitter; default 50 ms doubling to 5 s, retrying forever).
pub use crate::backoff::Backoff;

/// What the runner does when the handler fails on an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailurePolicy {
    /// Retry the event with backoff; after `max_attempts` (if set) the runner stops.
    Retry(Backoff),
    /// Report the event (status, `tracing` error) and move past it.
    Skip,
    /// Park the event in the runner's dead-letter store (source: the projection's name, with
    /// the handler's error and the attempt count; see
    /// [`ProjectionRunner::dead_letters`](super::ProjectionRunner::dead_letters)), report it
    /// (status `parked`, `tracing` error) and move past it: the checkpoint advances. Parked on
    /// the first failure; a handler that wants retries first retries inside itself.
    Park,
    /// Stop the runner at the event; the checkpoint stays just before it.
    Stop,
}

impl Default for FailurePolicy {
    fn default() -> Self {
        FailurePolicy::Retry(Backoff::default())
    }
}

/// Runner settings.
#[derive(Debug, Clone)]
pub struct RunnerOptions {
    /// Events read (and checkpointed) per batch.
    pub batch_size: usize,
    /// How long the live loop waits for a commit signal before reading anyway.
    pub poll_interval: Duration,
    /// What to do when the handler fails.
    pub failure: FailurePolicy,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        RunnerOptions {
            batch_size: 500,
            poll_interval: Duration::from_secs(1),
            failure: FailurePolicy::default(),
        }
    }
}
