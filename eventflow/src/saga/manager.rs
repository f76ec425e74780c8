//! [`SagaManager`]: routes events to saga instances and commits each step atomically.

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument;
use uuid::Uuid;

use super::{CommitOutcome, Deadline, Saga, SagaCommit, SagaContext, SagaStore};
use crate::backoff::{Backoff, Jitter};
use crate::bus::EventBus;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::relay::{IntoBus, RetryOutcome, retry_parked};
use crate::store::dead_letter::{DeadLetterStore, InMemoryDeadLetterStore, ParkedEvent};

/// What [`SagaManager::handle`] did with an event.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum SagaOutcome {
    /// The saga handled it.
    Handled {
        /// The instance's correlation id.
        correlation_id: String,
        /// Whether this event created the instance.
        started: bool,
        /// Whether the instance completed.
        completed: bool,
        /// The events it emitted (as published).
        emitted: Vec<Event>,
    },
    /// The event was already handled by this instance.
    Duplicate,
    /// The saga does not handle this event (see the reason).
    Ignored(IgnoreReason),
}

/// Why an event was ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IgnoreReason {
    /// Its type is neither a starting nor a handled type.
    NotInterested,
    /// It is a handled (not starting) type, and no instance exists for its correlation id.
    NoInstance,
    /// It has no correlation id and does not start the saga.
    NoCorrelation,
    /// The instance has completed.
    Completed,
}

/// Retries of a commit that lost an optimistic-concurrency race (another process committed the
/// same instance first): up to 64 reloads, each after a short jittered pause so racing managers
/// spread out instead of colliding again; then the conflict is returned as an error.
const CONFLICT_BACKOFF: Backoff = Backoff::new(Duration::from_millis(1), Duration::from_millis(50))
    .with_jitter(Jitter::Full)
    .with_max_attempts(Some(64));
/// Lock stripes serializing work on one correlation id inside one manager.
const LOCK_STRIPES: usize = 256;

/// Runs a [`Saga`] over a [`SagaStore`], publishing what it emits on a bus.
pub struct SagaManager<S: Saga> {
    saga: Arc<S>,
    pub(super) name: String,
    starts: HashSet<String>,
    handles: HashSet<String>,
    pub(super) store: Arc<dyn SagaStore>,
    bus: Option<Arc<dyn EventBus>>,
    /// Where outbox events the bus will never take are parked (source `saga:<name>`).
    dead_letters: Arc<dyn DeadLetterStore>,
    /// Serializes instances of one correlation id within this process, so conflicts only
    /// happen between processes.
    locks: Vec<tokio::sync::Mutex<()>>,
    /// Picks a lock stripe; seeded per manager, so correlation ids (chosen by whoever
    /// publishes) cannot be chosen to pile onto one stripe.
    stripes: RandomState,
    /// Deadlines whose firing failed, retried with their own backoff.
    pub(super) deadline_retries: super::deadline::DeadlineRetries,
    /// How long completed instances and their tombstones are kept (`retention.rs`).
    pub(super) retention: super::retention::Retention,
    _state: PhantomData<fn() -> S::State>,
}

impl<S: Saga> std::fmt::Debug for SagaManager<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SagaManager")
            .field("saga", &self.name)
            .field("starts", &self.starts)
            .field("handles", &self.handles)
            .finish_non_exhaustive()
    }
}

impl<S: Saga> SagaManager<S> {
    /// A manager for `saga` keeping state in `store`. Without a bus (see
    /// [`with_bus`](Self::with_bus)) emitted events are only returned, not published.
    ///
    /// # Errors
    /// [`Error::InvalidEventType`] when a declared type is not a valid event type.
    pub fn new(saga: S, store: Arc<dyn SagaStore>) -> Result<Self> {
        let starts: HashSet<String> = saga.starts_on().into_iter().collect();
        let handles: HashSet<String> = saga.handles().into_iter().collect();
        for t in starts.iter().chain(&handles) {
            crate::event::validate_event_type(t)?;
        }
        Ok(SagaManager {
            name: saga.name().to_owned(),
            saga: Arc::new(saga),
            starts,
            handles,
            store,
            bus: None,
            dead_letters: Arc::new(InMemoryDeadLetterStore::new()),
            locks: (0..LOCK_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            stripes: RandomState::new(),
            deadline_retries: super::deadline::DeadlineRetries::default(),
            retention: super::retention::Retention::default(),
            _state: PhantomData,
        })
    }

    /// Publishes emitted events (and fired timeout events) on `bus`, through the store's outbox.
    #[must_use]
    pub fn with_bus(mut self, bus: impl IntoBus) -> Self {
        self.bus = Some(bus.into_bus());
        self
    }

    /// Where outbox events the bus will never take (too large, invalid) are parked, under the
    /// source [`parked_source`](Self::parked_source); in memory unless set. With a PostgreSQL
    /// saga store, pass the event store's `dead_letters()` so they survive a restart.
    #[must_use]
    pub fn dead_letters(mut self, dead_letters: Arc<dyn DeadLetterStore>) -> Self {
        self.dead_letters = dead_letters;
        self
    }

    /// The dead-letter store of this saga's outbox.
    pub fn dead_letter_store(&self) -> &Arc<dyn DeadLetterStore> {
        &self.dead_letters
    }

    /// The source under which this saga parks outbox events: `saga:<name>`.
    pub fn parked_source(&self) -> String {
        format!("saga:{}", self.name)
    }

    /// Up to `limit` parked outbox events of this saga, oldest first.
    ///
    /// # Errors
    /// The dead-letter store's errors.
    pub async fn parked(&self, limit: usize) -> Result<Vec<ParkedEvent>> {
        self.dead_letters.list(&self.parked_source(), limit).await
    }

    /// How many outbox events of this saga are parked (its status of dead letters).
    ///
    /// # Errors
    /// The dead-letter store's errors.
    pub async fn parked_count(&self) -> Result<u64> {
        self.dead_letters.count(&self.parked_source()).await
    }

    /// Publishes up to `limit` parked outbox events again on the saga's bus, removing each once
    /// the bus took it (see [`retry_parked`](crate::relay::retry_parked), which also takes
    /// another bus).
    ///
    /// # Errors
    /// The dead-letter store's errors; [`Error::InvalidArgument`] when the manager has no bus.
    pub async fn retry_parked(&self, limit: usize) -> Result<RetryOutcome> {
        let Some(bus) = &self.bus else {
            return Err(Error::InvalidArgument(format!(
                "saga {} has no bus to publish parked events on",
                self.name
            )));
        };
        retry_parked(
            self.dead_letters.as_ref(),
            bus.as_ref(),
            &self.parked_source(),
            limit,
        )
        .await
    }

    /// The saga's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The saga.
    pub fn saga(&self) -> &S {
        &self.saga
    }

    /// Every event type the saga listens to (starting and handled).
    pub fn event_types(&self) -> Vec<String> {
        let mut types: Vec<String> = self.starts.union(&self.handles).cloned().collect();
        types.sort();
        types
    }

    /// The state and completion of the instance for `correlation_id`, if it exists (`None`
    /// too once it completed and was [pruned](Self::prune)).
    ///
    /// # Errors
    /// Backend errors; [`Error::Decode`] when the stored state does not decode.
    pub async fn instance(&self, correlation_id: &str) -> Result<Option<(S::State, bool)>> {
        let loaded = self
            .store
            .load(&self.name, correlation_id, Uuid::nil())
            .await?;
        loaded
            .instance
            .map(|i| Ok((self.decode_state(i.state)?, i.completed)))
            .transpose()
    }

    fn decode_state(&self, state: serde_json::Value) -> Result<S::State> {
        serde_json::from_value(state)
            .map_err(|e| Error::decode(format!("saga {} state", self.name), e))
    }

    fn lock_for(&self, correlation_id: &str) -> &tokio::sync::Mutex<()> {
        let stripe = (self.stripes.hash_one(correlation_id) as usize) % self.locks.len();
        &self.locks[stripe]
    }

    /// Routes `event` to its instance and commits the step.
    ///
    /// # Errors
    /// [`Error::Handler`] when the saga's handler fails (nothing is committed, so a redelivery
    /// retries it); store errors; [`Error::Conflict`] after many lost races in a row.
    pub async fn handle(&self, event: &Event) -> Result<SagaOutcome> {
        self.handle_inner(event, None).await
    }

    pub(super) async fn handle_inner(
        &self,
        event: &Event,
        deadline: Option<&str>,
    ) -> Result<SagaOutcome> {
        let is_start = self.starts.contains(&event.event_type);
        if deadline.is_none() && !is_start && !self.handles.contains(&event.event_type) {
            return Ok(SagaOutcome::Ignored(IgnoreReason::NotInterested));
        }
        let correlation_id = match (&event.correlation_id, is_start) {
            (Some(c), _) => c.clone(),
            (None, true) => event.id.to_string(),
            (None, false) => return Ok(SagaOutcome::Ignored(IgnoreReason::NoCorrelation)),
        };
        crate::metrics::saga_handled(&self.name, event.timestamp);
        let span = tracing::debug_span!("saga", saga = %self.name, correlation_id = %correlation_id, event_id = %event.id, event_type = %event.event_type, stream_id = event.stream_id.as_deref());
        crate::event::traceparent::continue_trace(&span, event);
        self.step(event, deadline, is_start, correlation_id)
            .instrument(span)
            .await
    }

    async fn step(
        &self,
        event: &Event,
        deadline: Option<&str>,
        is_start: bool,
        correlation_id: String,
    ) -> Result<SagaOutcome> {
        let guard = self.lock_for(&correlation_id).lock().await;

        let mut attempt = 0u32;
        loop {
            let loaded = self
                .store
                .load(&self.name, &correlation_id, event.id)
                .await?;
            if loaded.already_handled {
                tracing::debug!("saga ignored an event it already handled");
                return Ok(SagaOutcome::Duplicate);
            }
            if loaded.pruned {
                // Completed and pruned: only its tombstone is left, and it must not restart.
                return Ok(SagaOutcome::Ignored(IgnoreReason::Completed));
            }
            let (mut state, version, deadlines) = match loaded.instance {
                Some(i) if i.completed => {
                    return Ok(SagaOutcome::Ignored(IgnoreReason::Completed));
                }
                Some(i) => (self.decode_state(i.state)?, i.version, i.deadlines),
                None if is_start => (S::State::default(), 0, Vec::new()),
                None => return Ok(SagaOutcome::Ignored(IgnoreReason::NoInstance)),
            };
            // Handling a deadline's event consumes the deadline in the same commit that records
            // the event as handled, whether the timer fired it or it arrived another way (e.g.
            // published by another process), so a handled deadline can never fire again.
            let mut deadlines = deadlines;
            deadlines.retain(|d| d.event.id != event.id);
            let mut ctx = SagaContext::new(correlation_id.clone(), version == 0, deadlines);
            self.saga
                .handle(&mut state, event, &mut ctx)
                .map_err(|source| Error::Handler {
                    event_id: event.id,
                    event_type: event.event_type.clone(),
                    source,
                })?;
            let emitted: Vec<Event> = ctx
                .emitted
                .into_iter()
                .map(|e| e.caused_by(event).with_correlation(correlation_id.clone()))
                .collect();
            // Timeout events carry the instance's correlation id and the setter as causation.
            let deadlines: Vec<Deadline> = if ctx.completed {
                Vec::new()
            } else {
                ctx.deadlines
                    .into_iter()
                    .map(|mut d| {
                        if d.event.causation_id.is_none() {
                            d.event = d.event.caused_by(event);
                        }
                        d.event.correlation_id = Some(correlation_id.clone());
                        d
                    })
                    .collect()
            };
            let mut outbox = Vec::new();
            if self.bus.is_some() {
                if deadline.is_some() {
                    outbox.push(event.clone());
                }
                outbox.extend(emitted.iter().cloned());
            }
            let state_json = serde_json::to_value(&state).map_err(|source| Error::Encode {
                event_type: format!("saga {} state", self.name),
                source,
            })?;
            let commit = SagaCommit {
                correlation_id: correlation_id.clone(),
                expected_version: version,
                state: state_json,
                completed: ctx.completed,
                deadlines,
                handled_event: event.id,
                outbox: outbox.clone(),
            };
            match self.store.commit(&self.name, commit).await {
                Ok(CommitOutcome::Committed) => {
                    tracing::debug!(
                        started = version == 0,
                        completed = ctx.completed,
                        emitted = emitted.len(),
                        "saga step committed"
                    );
                    // Publish outside the lock: with a synchronous bus, a reply to what we publish
                    // comes back into this manager for the same correlation id.
                    drop(guard);
                    self.publish_committed(outbox).await;
                    return Ok(SagaOutcome::Handled {
                        correlation_id,
                        started: version == 0,
                        completed: ctx.completed,
                        emitted,
                    });
                }
                Ok(CommitOutcome::AlreadyHandled) => return Ok(SagaOutcome::Duplicate),
                Err(e) if e.is_conflict() && !CONFLICT_BACKOFF.exhausted(attempt) => {
                    attempt += 1;
                    tracing::debug!(attempt, "saga commit lost a race; reloading");
                    tokio::time::sleep(CONFLICT_BACKOFF.next_delay(attempt)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Publishes the outbox events of the step just committed, then removes them from the
    /// outbox; a transient failure leaves them for [`flush_outbox`](Self::flush_outbox).
    async fn publish_committed(&self, outbox: Vec<Event>) {
        let Some(bus) = &self.bus else { return };
        if outbox.is_empty() {
            return;
        }
        if let Err(e) = self.deliver_outbox(bus.as_ref(), outbox).await {
            tracing::warn!(saga = %self.name, error = %e, "saga outbox not published yet; will retry");
        }
    }

    /// Publishes outbox events in order and removes them from the outbox. When the bus rejects
    /// the batch, the events go one by one: an event the bus will never take
    /// ([`Error::is_permanent`]) is parked and removed, so the rest of the outbox flows; the
    /// first transient failure stops there, leaving it and what follows in the outbox, in
    /// order.
    async fn deliver_outbox(&self, bus: &dyn EventBus, events: Vec<Event>) -> Result<()> {
        let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
        match bus.publish_batch(events.clone()).await {
            Ok(()) => return self.store.ack_outbox(&self.name, &ids).await,
            Err(error) => {
                tracing::debug!(saga = %self.name, %error, "saga outbox batch rejected; publishing event by event");
            }
        }
        for event in events {
            match bus.publish(event.clone()).await {
                Ok(()) => {}
                Err(error) if error.is_permanent() => {
                    let parked = ParkedEvent::new(
                        self.parked_source(),
                        event.clone(),
                        "permanent: the bus rejected the saga's event",
                        &error,
                        2,
                    );
                    self.dead_letters.park(parked).await?;
                    tracing::error!(saga = %self.name, event_id = %event.id, event_type = %event.event_type, %error, "saga outbox: parked an event the bus will never take; moving on");
                }
                Err(error) => return Err(error),
            }
            self.store.ack_outbox(&self.name, &[event.id]).await?;
        }
        Ok(())
    }

    /// Publishes every pending outbox event (emitted events whose publish did not complete,
    /// e.g. because the process died) and removes them from the outbox. Returns how many left
    /// the outbox (published or parked). An event the bus will never take is parked (see
    /// [`parked`](Self::parked)) and the rest flows.
    ///
    /// # Errors
    /// Store, dead-letter store or transient bus errors (the events from the failing one on
    /// stay in the outbox, in order).
    pub async fn flush_outbox(&self) -> Result<usize> {
        let Some(bus) = &self.bus else {
            return Ok(0);
        };
        let mut total = 0;
        loop {
            let pending = self.store.pending_outbox(&self.name, 256).await?;
            if pending.is_empty() {
                return Ok(total);
            }
            let n = pending.len();
            self.deliver_outbox(bus.as_ref(), pending).await?;
            total += n;
            if n < 256 {
                return Ok(total);
            }
        }
    }
}
