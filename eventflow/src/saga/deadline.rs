//! Deadlines: timers a saga instance sets, fired by [`SagaManager::fire_due_deadlines`] or
//! the background [`SagaTimer`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Saga, SagaManager, SagaOutcome};
use crate::backoff::Backoff;
use crate::error::{Error, Result};
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
    /// Deadlines fail one by one: a deadline whose firing fails (the saga handler returns an
    /// error, or its commit fails) is logged, kept, and retried on a later call after its own
    /// backoff ([`with_deadline_backoff`](Self::with_deadline_backoff)); every other due
    /// deadline still fires in this call. [`failing_deadlines`](Self::failing_deadlines)
    /// lists the ones waiting for a retry.
    ///
    /// # Errors
    /// Store errors while reading the due deadlines.
    pub async fn fire_deadlines_at(&self, now: DateTime<Utc>) -> Result<usize> {
        const PAGE: usize = 256;
        let mut fired = 0;
        // Deadlines seen in this call that will not be fired again in it (failed now, or
        // waiting for their backoff); the page grows by their number so the loop always moves.
        let mut skip: HashSet<DeadlineKey> = HashSet::new();
        loop {
            let limit = PAGE + skip.len();
            let due = self.store.due_deadlines(&self.name, now, limit).await?;
            let complete = due.len() < limit;
            let mut progressed = false;
            for (correlation_id, deadline) in &due {
                let key = DeadlineKey::new(correlation_id, deadline);
                if skip.contains(&key) {
                    continue;
                }
                progressed = true;
                if !self.deadline_retries.ready(&key, now) {
                    skip.insert(key);
                    continue;
                }
                match self.fire_one(&deadline.name, &deadline.event).await {
                    Ok(SagaOutcome::Handled { .. }) => {
                        self.deadline_retries.succeeded(&key);
                        fired += 1;
                    }
                    Ok(_) => {
                        // It was handled before (a crash after the commit): the deadline is
                        // gone from the instance, so it will not come back.
                        self.deadline_retries.succeeded(&key);
                        skip.insert(key);
                    }
                    Err(e) => {
                        let attempts = self.deadline_retries.failed(&key, now, &e);
                        tracing::warn!(
                            saga = %self.name,
                            correlation_id = %correlation_id,
                            deadline = %deadline.name,
                            attempts,
                            error = %e,
                            "saga deadline failed; retrying it later, the others go on"
                        );
                        skip.insert(key);
                    }
                }
            }
            if complete {
                // Every due deadline was seen: forget retries of deadlines that are gone.
                self.deadline_retries.retain_seen(&skip);
                return Ok(fired);
            }
            if !progressed {
                return Ok(fired);
            }
        }
    }

    /// Sets the backoff between retries of one failing deadline (default: 1 s doubling to
    /// 5 min, retrying for ever). Each deadline has its own count; the others keep firing.
    #[must_use]
    pub fn with_deadline_backoff(mut self, backoff: Backoff) -> Self {
        self.deadline_retries.backoff = backoff;
        self
    }

    /// The deadlines whose firing failed and that wait for a retry.
    pub fn failing_deadlines(&self) -> Vec<FailingDeadline> {
        self.deadline_retries.list()
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
    /// (resuming whatever a previous process left), and about once a minute
    /// [prunes](Self::prune) what the retention windows let go. Dropping the returned task
    /// stops it.
    pub fn start_timer(self: &Arc<Self>, tick: Duration) -> SagaTimer {
        /// Pruning finds nothing most of the time: once a minute is plenty.
        const PRUNE_EVERY: Duration = Duration::from_secs(60);
        let manager = Arc::clone(self);
        let handle = tokio::spawn(async move {
            let mut last_prune: Option<tokio::time::Instant> = None;
            loop {
                if last_prune.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
                    last_prune = Some(tokio::time::Instant::now());
                    if let Err(e) = manager.prune().await {
                        tracing::warn!(saga = %manager.name, error = %e, "saga pruning failed");
                    }
                }
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

/// A deadline whose firing failed, waiting for its retry (see
/// [`SagaManager::failing_deadlines`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FailingDeadline {
    /// The instance's correlation id.
    pub correlation_id: String,
    /// The deadline's name.
    pub name: String,
    /// Failed attempts so far.
    pub attempts: u32,
    /// The last error (the saga handler's or the store's message).
    pub last_error: String,
    /// When it is retried (not before).
    pub retry_at: DateTime<Utc>,
}

/// One deadline: the instance, the name and the timeout event's id (a deadline set again is
/// a new one).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct DeadlineKey {
    correlation_id: String,
    name: String,
    event_id: String,
}

impl DeadlineKey {
    fn new(correlation_id: &str, deadline: &Deadline) -> Self {
        DeadlineKey {
            correlation_id: correlation_id.to_owned(),
            name: deadline.name.clone(),
            event_id: deadline.event.id.to_string(),
        }
    }
}

#[derive(Debug)]
struct Retry {
    attempts: u32,
    retry_at: DateTime<Utc>,
    last_error: String,
}

/// The per-deadline retry state of a [`SagaManager`] (in memory: a restarted process retries
/// a failing deadline at once).
#[derive(Debug)]
pub(super) struct DeadlineRetries {
    backoff: Backoff,
    failing: Mutex<HashMap<DeadlineKey, Retry>>,
}

impl Default for DeadlineRetries {
    fn default() -> Self {
        DeadlineRetries {
            backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(300)),
            failing: Mutex::new(HashMap::new()),
        }
    }
}

impl DeadlineRetries {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<DeadlineKey, Retry>> {
        self.failing.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `key` may be fired at `now` (never failed, or its backoff has passed).
    fn ready(&self, key: &DeadlineKey, now: DateTime<Utc>) -> bool {
        self.lock().get(key).is_none_or(|r| r.retry_at <= now)
    }

    fn succeeded(&self, key: &DeadlineKey) {
        self.lock().remove(key);
    }

    /// Records a failure; returns the number of failed attempts.
    fn failed(&self, key: &DeadlineKey, now: DateTime<Utc>, error: &Error) -> u32 {
        let mut failing = self.lock();
        let retry = failing.entry(key.clone()).or_insert(Retry {
            attempts: 0,
            retry_at: now,
            last_error: String::new(),
        });
        retry.attempts = retry.attempts.saturating_add(1);
        let delay = self
            .backoff
            .next_delay(retry.attempts)
            .min(self.backoff.max);
        retry.retry_at = now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
        let mut message = error.to_string();
        let mut source = std::error::Error::source(error);
        while let Some(e) = source {
            message.push_str(": ");
            message.push_str(&e.to_string());
            source = e.source();
        }
        retry.last_error = message;
        retry.attempts
    }

    fn retain_seen(&self, seen: &HashSet<DeadlineKey>) {
        self.lock().retain(|k, _| seen.contains(k));
    }

    fn list(&self) -> Vec<FailingDeadline> {
        self.lock()
            .iter()
            .map(|(k, r)| FailingDeadline {
                correlation_id: k.correlation_id.clone(),
                name: k.name.clone(),
                attempts: r.attempts,
                last_error: r.last_error.clone(),
                retry_at: r.retry_at,
            })
            .collect()
    }
}
