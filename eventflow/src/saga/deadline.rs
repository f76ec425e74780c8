//! Deadlines: timers a saga instance sets, fired by [`SagaManager::fire_due_deadlines`] or
//! the background [`SagaTimer`].

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Saga, SagaManager, SagaOutcome};
use crate::error::Result;
use crate::event::Event;

/// A timer set by a saga instance: at `due_at`, `event` is delivered to the saga and published.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deadline {
    /// Name, unique within the instance (setting it again replaces it).
    pub name: String,
    /// When it fires.
    pub due_at: DateTime<Utc>,
    /// The timeout event (its id is fixed when the deadline is set, so firing is idempotent).
    pub event: Event,
}

impl<S: Saga> SagaManager<S> {
    /// Fires every deadline due now: its timeout event is handled by the saga (consuming the
    /// deadline in the same commit) and published. Returns how many fired.
    ///
    /// # Errors
    /// Store errors, and the saga handler's errors.
    pub async fn fire_due_deadlines(&self) -> Result<usize> {
        self.fire_deadlines_at(Utc::now()).await
    }

    /// As [`fire_due_deadlines`](Self::fire_due_deadlines) with a given clock (for tests).
    ///
    /// # Errors
    /// As [`fire_due_deadlines`](Self::fire_due_deadlines).
    pub async fn fire_deadlines_at(&self, now: DateTime<Utc>) -> Result<usize> {
        let mut fired = 0;
        loop {
            let due = self.store.due_deadlines(&self.name, now, 256).await?;
            let n = due.len();
            for (_correlation_id, deadline) in due {
                if let SagaOutcome::Handled { .. } =
                    self.fire_one(&deadline.name, &deadline.event).await?
                {
                    fired += 1;
                }
                // Otherwise it was handled before (a crash after the commit): the deadline is
                // gone from the instance, so it will not come back.
            }
            if n < 256 {
                return Ok(fired);
            }
        }
    }

    /// The deadlines due at `now`, as (name, timeout event).
    #[cfg(any(test, feature = "testing"))]
    pub(crate) async fn store_due(&self, now: DateTime<Utc>) -> Result<Vec<(String, Event)>> {
        Ok(self
            .store
            .due_deadlines(&self.name, now, usize::MAX)
            .await?
            .into_iter()
            .map(|(_, d)| (d.name, d.event))
            .collect())
    }

    /// Fires one deadline: handles its event and consumes it.
    pub(crate) async fn fire_one(&self, name: &str, event: &Event) -> Result<SagaOutcome> {
        tracing::debug!(saga = %self.name, deadline = %name, "saga deadline fired");
        self.handle_inner(event, Some(name)).await
    }

    /// Starts a background loop that every `tick` fires due deadlines and flushes the outbox
    /// (resuming whatever a previous process left). Dropping the returned task stops it.
    pub fn start_timer(self: &Arc<Self>, tick: Duration) -> SagaTimer {
        let manager = Arc::clone(self);
        let handle = tokio::spawn(async move {
            loop {
                if let Err(e) = manager.flush_outbox().await {
                    tracing::warn!(saga = %manager.name, error = %e, "saga outbox flush failed");
                }
                if let Err(e) = manager.fire_due_deadlines().await {
                    tracing::warn!(saga = %manager.name, error = %e, "saga deadlines failed");
                }
                tokio::time::sleep(tick).await;
            }
        });
        SagaTimer { handle }
    }
}

/// The background loop of [`SagaManager::start_timer`]; dropping it stops the loop.
#[derive(Debug)]
pub struct SagaTimer {
    handle: tokio::task::JoinHandle<()>,
}

impl Drop for SagaTimer {
    fn drop(&mut self) {
        self.handle.abort();
    }
}
