//! What a runner does when a handler fails, and its other settings.

use std::time::Duration;

/// How long to wait between retries of a failing event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the first retry.
    pub initial: Duration,
    /// Upper bound of the delay (it doubles per attempt up to this).
    pub max: Duration,
    /// Give up (and stop the runner) after this many failed attempts; `None` retries forever.
    pub max_attempts: Option<u32>,
}

impl Backoff {
    /// The delay after the `attempt`-th failure (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(5),
            max_attempts: None,
        }
    }
}

/// What the runner does when the handler fails on an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailurePolicy {
    /// Retry the event with backoff; after `max_attempts` (if set) the runner stops.
    Retry(Backoff),
    /// Report the event (status, `tracing` error) and move past it.
    Skip,
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
