//! Deadlines: timers a saga instance sets, fired by [`SagaManager::fire_due_deadlines`] or
//! the background [`SagaTimer`].
//!
//! Deadlines fail one by one. A deadline whose firing fails is retried after its own backoff
//! while every other deadline keeps firing; after the backoff's
//! [`max_attempts`](Backoff::max_attempts) failed attempts (5 by default) it is **parked**: its
//! timeout event goes to the saga's dead-letter store under
//! [`parked_deadline_source`](SagaManager::parked_deadline_source) (`saga:<name>:deadlines`,
//! apart from the outbox's `saga:<name>`, because a parked deadline is delivered again to the
//! saga, not published), with a reason naming the deadline and the instance, the last error and
//! the attempt count; the deadline is removed from the instance through the saga store, so it
//! never fires again by itself, in this process or after a restart;
//! [`retry_parked_deadlines`](SagaManager::retry_parked_deadlines) delivers it later.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{IgnoreReason, Saga, SagaCommit, SagaManager, SagaOutcome};
use crate::backoff::{Backoff, Jitter};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::store::dead_letter::ParkedEvent;

/// Failed attempts after which a deadline is parked, unless
/// [`SagaManager::with_deadline_backoff`] says otherwise.
const DEFAULT_DEADLINE_ATTEMPTS: u32 = 5;

/// Reloads of an instance whose deadline is being parked, when another step commits first.
const REMOVE_BACKOFF: Backoff = Backoff::new(Duration::from_millis(1), Duration::from_millis(50))
    .with_jitter(Jitter::Full)
    .with_max_attempts(Some(16));

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
    /// lists the ones waiting for a retry. When a deadline has failed the backoff's
    /// `max_attempts` times, it is parked: its timeout event goes to the saga's dead-letter
    /// store ([`parked_deadlines`](Self::parked_deadlines)), the deadline leaves its instance
    /// in the saga store (so it never fires again by itself, even after a restart), it is
    /// reported as an error, and it is not counted in the returned number.
    ///
    /// # Errors
    /// Store errors while reading the due deadlines.
    pub async fn fire_deadlines_at(&self, now: DateTime<Utc>) -> Result<usize> {
        self.fire_deadlines_where(now, &|_| true).await
    }

    /// As [`fire_deadlines_at`](Self::fire_deadlines_at), only for instances whose
    /// correlation id `mine` accepts (a partitioned saga worker fires the deadlines of the
    /// partitions it holds).
    ///
    /// # Errors
    /// As [`fire_deadlines_at`](Self::fire_deadlines_at).
    pub(super) async fn fire_deadlines_where(
        &self,
        now: DateTime<Utc>,
        mine: &(dyn Fn(&str) -> bool + Sync),
    ) -> Result<usize> {
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
                if !mine(correlation_id) || !self.deadline_retries.ready(&key, now) {
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
                        if self.deadline_retries.backoff.exhausted(attempts) {
                            self.park_failing(correlation_id, deadline, &key, &e, attempts)
                                .await;
                            skip.insert(key);
                            continue;
                        }
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

    /// Sets the backoff between retries of one failing deadline, and with its
    /// [`max_attempts`](Backoff::max_attempts) after how many failed attempts it is parked
    /// (default: 1 s doubling to 5 min, parked after 5 attempts, about 15 s after the first
    /// failure; `with_max_attempts(None)` retries for ever and never parks). Each deadline has
    /// its own count, kept in memory (a restarted process gives a failing deadline its attempts
    /// anew); the others keep firing.
    #[must_use]
    pub fn with_deadline_backoff(mut self, backoff: Backoff) -> Self {
        self.deadline_retries.backoff = backoff;
        self
    }

    /// The deadlines whose firing failed and that wait for a retry. A parked deadline leaves
    /// this list for [`parked_deadlines`](Self::parked_deadlines).
    pub fn failing_deadlines(&self) -> Vec<FailingDeadline> {
        self.deadline_retries.list()
    }

    /// The source under which this saga parks the timeout events of deadlines that failed too
    /// often: `saga:<name>:deadlines`, in the store set by [`dead_letters`](Self::dead_letters).
    /// It is apart from the outbox's [`parked_source`](Self::parked_source) because a parked
    /// deadline is delivered again to the saga
    /// ([`retry_parked_deadlines`](Self::retry_parked_deadlines)), not published.
    pub fn parked_deadline_source(&self) -> String {
        format!("saga:{}:deadlines", self.name)
    }

    /// Up to `limit` parked deadlines of this saga, oldest first: each one's timeout event
    /// (with the instance's correlation id), a reason naming the deadline and the instance, the
    /// last error and the attempt count.
    ///
    /// # Errors
    /// The dead-letter store's errors.
    pub async fn parked_deadlines(&self, limit: usize) -> Result<Vec<ParkedEvent>> {
        self.dead_letter_store()
            .list(&self.parked_deadline_source(), limit)
            .await
    }

    /// How many deadlines of this saga are parked.
    ///
    /// # Errors
    /// The dead-letter store's errors.
    pub async fn parked_deadline_count(&self) -> Result<u64> {
        self.dead_letter_store()
            .count(&self.parked_deadline_source())
            .await
    }

    /// Delivers up to `limit` parked deadlines again, oldest first, one at a time: each
    /// timeout event is handled by the saga as its instance's deadline event (and published,
    /// with a bus), exactly as if the deadline had fired, and its dead letter is removed once
    /// that step committed. One that fails again stays parked, and the next is tried.
    ///
    /// A dead letter is removed only after its step committed, so a crash in between delivers
    /// it again on the next retry, where the saga ignores it as already handled. One whose
    /// instance has completed or is gone, or that was handled since, is discarded (a completed
    /// instance cancels its deadlines).
    ///
    /// # Errors
    /// The dead-letter store's errors.
    pub async fn retry_parked_deadlines(&self, limit: usize) -> Result<DeadlineRetryOutcome> {
        let source = self.parked_deadline_source();
        let mut outcome = DeadlineRetryOutcome::default();
        for parked in self.dead_letter_store().list(&source, limit).await? {
            let event = &parked.event;
            // Handled as a deadline's event: the name only marks it as one.
            match self.handle_inner(event, Some("parked")).await {
                Ok(SagaOutcome::Handled { .. }) => {
                    self.dead_letter_store().discard(parked.id).await?;
                    outcome.delivered += 1;
                    tracing::info!(saga = %self.name, event_id = %event.id, reason = %parked.reason, "delivered a parked saga deadline");
                }
                Ok(other) => {
                    self.dead_letter_store().discard(parked.id).await?;
                    outcome.discarded += 1;
                    let why = match other {
                        SagaOutcome::Duplicate => "already handled",
                        SagaOutcome::Ignored(IgnoreReason::Completed) => "instance completed",
                        SagaOutcome::Ignored(IgnoreReason::NoInstance) => "instance gone",
                        _ => "ignored by the saga",
                    };
                    tracing::warn!(saga = %self.name, event_id = %event.id, reason = %parked.reason, why, "discarded a parked saga deadline that has nothing left to do");
                }
                Err(error) => {
                    outcome.failed += 1;
                    tracing::warn!(saga = %self.name, event_id = %event.id, reason = %parked.reason, %error, "a parked saga deadline failed again; it stays parked");
                }
            }
        }
        Ok(outcome)
    }

    /// Parks a deadline that failed `attempts` times: the timeout event into the dead-letter
    /// store first, then the deadline out of the instance. Parking before removing means a
    /// crash in between leaves both (the deadline fires again and may be parked twice; the
    /// second delivery is ignored as already handled), never neither. When the removal fails,
    /// the dead letter is taken back and the deadline stays failing, retried after its backoff.
    async fn park_failing(
        &self,
        correlation_id: &str,
        deadline: &Deadline,
        key: &DeadlineKey,
        error: &Error,
        attempts: u32,
    ) {
        let parked = ParkedEvent::new(
            self.parked_deadline_source(),
            deadline.event.clone(),
            format!(
                "deadline {:?} of instance {correlation_id:?} failed {attempts} times",
                deadline.name
            ),
            error,
            attempts,
        );
        let id = parked.id;
        let removed = match self.dead_letter_store().park(parked).await {
            Ok(()) => {
                self.remove_deadline(correlation_id, deadline.event.id)
                    .await
            }
            Err(e) => Err(e),
        };
        match removed {
            Ok(true) => {
                self.deadline_retries.succeeded(key);
                tracing::error!(
                    saga = %self.name,
                    correlation_id = %correlation_id,
                    deadline = %deadline.name,
                    event_id = %deadline.event.id,
                    attempts,
                    %error,
                    "saga deadline parked after failing too often; it will not fire again until retried"
                );
            }
            Ok(false) => {
                // Handled or replaced meanwhile (another process): nothing is left to park.
                self.deadline_retries.succeeded(key);
                self.discard_parked(id).await;
            }
            Err(park_error) => {
                self.discard_parked(id).await;
                tracing::warn!(
                    saga = %self.name,
                    correlation_id = %correlation_id,
                    deadline = %deadline.name,
                    attempts,
                    error = %park_error,
                    "could not park a failing saga deadline; retrying it later"
                );
            }
        }
    }

    async fn discard_parked(&self, id: Uuid) {
        if let Err(e) = self.dead_letter_store().discard(id).await {
            tracing::warn!(saga = %self.name, dead_letter = %id, error = %e, "could not discard a stale parked deadline; a retry will ignore it");
        }
    }

    /// Removes the deadline whose timeout event is `event_id` from the instance, in one commit
    /// that keeps its state as it is (the way a handled step consumes a fired deadline).
    /// `false` when the deadline is no longer there.
    async fn remove_deadline(&self, correlation_id: &str, event_id: Uuid) -> Result<bool> {
        let mut attempt = 0;
        loop {
            let loaded = self
                .store
                .load(&self.name, correlation_id, Uuid::nil())
                .await?;
            let Some(instance) = loaded.instance else {
                return Ok(false);
            };
            if !instance.deadlines.iter().any(|d| d.event.id == event_id) {
                return Ok(false);
            }
            let commit = SagaCommit {
                correlation_id: correlation_id.to_owned(),
                expected_version: instance.version,
                state: instance.state,
                completed: instance.completed,
                deadlines: instance
                    .deadlines
                    .into_iter()
                    .filter(|d| d.event.id != event_id)
                    .collect(),
                // A fresh id, not the timeout event's: the event was not handled, and a retry
                // must not be ignored as a duplicate.
                handled_event: Uuid::new_v4(),
                outbox: Vec::new(),
            };
            match self.store.commit(&self.name, commit).await {
                Ok(_) => return Ok(true),
                Err(e) if e.is_conflict() && !REMOVE_BACKOFF.exhausted(attempt) => {
                    attempt += 1;
                    tokio::time::sleep(REMOVE_BACKOFF.next_delay(attempt)).await;
                }
                Err(e) => return Err(e),
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

/// What [`SagaManager::retry_parked_deadlines`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadlineRetryOutcome {
    /// Deadlines handled by the saga; they are no longer parked.
    pub delivered: usize,
    /// Deadlines whose handling failed again; they stay parked.
    pub failed: usize,
    /// Deadlines with nothing left to do (already handled, instance completed or gone); their
    /// dead letters were removed.
    pub discarded: usize,
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
            backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(300))
                .with_max_attempts(Some(DEFAULT_DEADLINE_ATTEMPTS)),
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
