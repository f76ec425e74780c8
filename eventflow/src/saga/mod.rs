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
//!   ([`Event::caused_by`]). They are written to the store's outbox in the same commit, published
//!   after it, and re-published by [`SagaManager::flush_outbox`] if the process died in between
//!   (at least once, with stable ids).
//! - **State survives a restart**: a new manager over the same store resumes every instance.
//! - **Deadlines** ([`SagaContext::set_deadline`]) are stored with the instance; when due,
//!   [`SagaManager::fire_due_deadlines`] delivers the timeout event to the saga (and publishes it),
//!   even if the process that set it has restarted since. Completing an instance cancels them.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tracing::Instrument;
use uuid::Uuid;

use crate::bus::{EventBus, Subscription};
use crate::error::{BoxError, Error, Result};
use crate::event::{DomainEvent, Event};

pub mod memory;

pub use memory::InMemorySagaStore;

/// A process manager: reacts to events of one business transaction (one correlation id).
///
/// `handle` must be a pure decision over `state` and the event: it may run more than once for
/// the same event when two writers race (only one result is committed), so side effects belong
/// in the events it emits through the [`SagaContext`].
pub trait Saga: Send + Sync + 'static {
    /// The state kept per correlation id (serialized as JSON in the store).
    type State: Serialize + DeserializeOwned + Default + Send + Sync + 'static;

    /// The saga's name; it keys its instances in the store, so it must be stable.
    fn name(&self) -> &str;

    /// Event types that start a new instance when none exists for the correlation id. (For a
    /// typed event set, `E::event_types()`.)
    fn starts_on(&self) -> Vec<String>;

    /// Event types handled by an existing instance. A starting type seen again for an existing
    /// instance is handled too.
    fn handles(&self) -> Vec<String>;

    /// Handles `event` for the instance whose state is `state`.
    ///
    /// # Errors
    /// Any error: nothing is committed, the event is not marked handled, and
    /// [`SagaManager::handle`] returns [`Error::Handler`].
    fn handle(
        &self,
        state: &mut Self::State,
        event: &Event,
        ctx: &mut SagaContext,
    ) -> std::result::Result<(), BoxError>;
}

/// The event types of a typed event set, for [`Saga::starts_on`] and [`Saga::handles`].
pub fn event_types_of<E: DomainEvent>() -> Vec<String> {
    crate::projection::event_types_of::<E>()
}

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

/// What a saga's handler can do besides changing its state.
#[derive(Debug)]
pub struct SagaContext {
    correlation_id: String,
    started: bool,
    now: DateTime<Utc>,
    emitted: Vec<Event>,
    deadlines: Vec<Deadline>,
    completed: bool,
}

impl SagaContext {
    fn new(correlation_id: String, started: bool, deadlines: Vec<Deadline>) -> Self {
        SagaContext {
            correlation_id,
            started,
            now: Utc::now(),
            emitted: Vec::new(),
            deadlines,
            completed: false,
        }
    }

    /// The instance's correlation id.
    pub fn correlation_id(&self) -> &str {
        &self.correlation_id
    }

    /// True when this event creates the instance.
    pub fn is_start(&self) -> bool {
        self.started
    }

    /// Emits `event`; it will carry this instance's correlation id and the trigger's id as
    /// causation.
    pub fn emit(&mut self, event: Event) {
        self.emitted.push(event);
    }

    /// Emits a new event of `event_type` with `payload`.
    ///
    /// # Errors
    /// Invalid event type, payload that does not serialize.
    pub fn emit_new(
        &mut self,
        event_type: &str,
        payload: impl Serialize,
    ) -> std::result::Result<(), BoxError> {
        self.emit(Event::new(event_type, payload)?);
        Ok(())
    }

    /// Marks the instance complete: later events for it are ignored and its deadlines dropped.
    pub fn complete(&mut self) {
        self.completed = true;
    }

    /// Sets (or replaces) the deadline `name`: after `after`, `event` is delivered to this saga
    /// and published. The saga should list `event`'s type in [`Saga::handles`] to react to it.
    pub fn set_deadline(&mut self, name: &str, after: Duration, event: Event) {
        let after = chrono::Duration::from_std(after).unwrap_or(chrono::Duration::MAX);
        let due_at = self
            .now
            .checked_add_signed(after)
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        self.set_deadline_at(name, due_at, event);
    }

    /// Sets (or replaces) the deadline `name` to fire at `due_at`.
    pub fn set_deadline_at(&mut self, name: &str, due_at: DateTime<Utc>, event: Event) {
        self.cancel_deadline(name);
        self.deadlines.push(Deadline {
            name: name.to_owned(),
            due_at,
            event,
        });
    }

    /// Cancels the deadline `name` if it is set.
    pub fn cancel_deadline(&mut self, name: &str) {
        self.deadlines.retain(|d| d.name != name);
    }

    /// The instance's pending deadlines.
    pub fn deadlines(&self) -> &[Deadline] {
        &self.deadlines
    }
}

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
}

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

/// Attempts per event before a run of optimistic-concurrency conflicts is returned as an error.
const MAX_CONFLICT_RETRIES: u32 = 64;
/// Lock stripes serializing work on one correlation id inside one manager.
const LOCK_STRIPES: usize = 256;

/// Runs a [`Saga`] over a [`SagaStore`], publishing what it emits on a bus.
pub struct SagaManager<S: Saga> {
    saga: Arc<S>,
    name: String,
    starts: HashSet<String>,
    handles: HashSet<String>,
    store: Arc<dyn SagaStore>,
    bus: Option<Arc<dyn EventBus>>,
    /// Serializes instances of one correlation id within this process, so conflicts only
    /// happen between processes.
    locks: Vec<tokio::sync::Mutex<()>>,
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
            locks: (0..LOCK_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            _state: PhantomData,
        })
    }

    /// Publishes emitted events (and fired timeout events) on `bus`, through the store's outbox.
    #[must_use]
    pub fn with_bus(mut self, bus: Arc<dyn EventBus>) -> Self {
        self.bus = Some(bus);
        self
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

    /// The state and completion of the instance for `correlation_id`, if it exists.
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
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        correlation_id.hash(&mut hasher);
        let stripe = (hasher.finish() as usize) % self.locks.len();
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

    async fn handle_inner(&self, event: &Event, deadline: Option<&str>) -> Result<SagaOutcome> {
        let is_start = self.starts.contains(&event.event_type);
        if deadline.is_none() && !is_start && !self.handles.contains(&event.event_type) {
            return Ok(SagaOutcome::Ignored(IgnoreReason::NotInterested));
        }
        let correlation_id = match (&event.correlation_id, is_start) {
            (Some(c), _) => c.clone(),
            (None, true) => event.id.to_string(),
            (None, false) => return Ok(SagaOutcome::Ignored(IgnoreReason::NoCorrelation)),
        };
        let span = tracing::debug_span!("saga", saga = %self.name, correlation_id = %correlation_id, event_id = %event.id, event_type = %event.event_type);
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
                Err(e) if e.is_conflict() && attempt < MAX_CONFLICT_RETRIES => {
                    attempt += 1;
                    tracing::debug!(attempt, "saga commit lost a race; reloading");
                    tokio::task::yield_now().await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Publishes the outbox events of the step just committed, then removes them from the
    /// outbox; a failure leaves them for [`flush_outbox`](Self::flush_outbox).
    async fn publish_committed(&self, outbox: Vec<Event>) {
        let Some(bus) = &self.bus else { return };
        if outbox.is_empty() {
            return;
        }
        let ids: Vec<Uuid> = outbox.iter().map(|e| e.id).collect();
        let result = match bus.publish_batch(outbox).await {
            Ok(()) => self.store.ack_outbox(&self.name, &ids).await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::warn!(saga = %self.name, error = %e, "saga outbox not published yet; will retry");
        }
    }

    /// Publishes every pending outbox event (emitted events whose publish did not complete,
    /// e.g. because the process died) and removes them from the outbox. Returns how many.
    ///
    /// # Errors
    /// Store or bus errors (the events stay in the outbox).
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
            let ids: Vec<Uuid> = pending.iter().map(|e| e.id).collect();
            let n = pending.len();
            bus.publish_batch(pending).await?;
            self.store.ack_outbox(&self.name, &ids).await?;
            total += n;
            if n < 256 {
                return Ok(total);
            }
        }
    }

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

    /// Subscribes the manager to every type it listens to on `bus`. A handler error makes the
    /// bus redeliver where it can. Dropping the subscription stops delivery.
    ///
    /// # Errors
    /// The bus's subscribe errors.
    pub async fn subscribe(self: &Arc<Self>, bus: &dyn EventBus) -> Result<Subscription> {
        let mut subscriptions = Vec::new();
        for event_type in self.event_types() {
            let manager = Arc::clone(self);
            let handler = move |event: Arc<Event>| {
                let manager = Arc::clone(&manager);
                async move {
                    manager
                        .handle(&event)
                        .await
                        .map(|_| ())
                        .map_err(BoxError::from)
                }
            };
            subscriptions.push(bus.subscribe(&event_type, Arc::new(handler)).await?);
        }
        let description = format!("saga {}", self.name);
        Ok(Subscription::new(description, move || drop(subscriptions)))
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

/// A [`SagaManager`] as a [`Projection`](crate::projection::Projection), so a
/// [`ProjectionRunner`](crate::projection::ProjectionRunner) can feed the saga from the event
/// store in global order, with a checkpoint. Redelivered events (after a crash before the
/// checkpoint) are ignored by the saga's handled-event record, so each is acted on once.
pub struct SagaProjection<S: Saga> {
    name: String,
    manager: Arc<SagaManager<S>>,
}

impl<S: Saga> SagaProjection<S> {
    /// Wraps `manager`; the projection (and its checkpoint) is named `saga-<saga name>`.
    pub fn new(manager: Arc<SagaManager<S>>) -> Self {
        SagaProjection {
            name: format!("saga-{}", manager.name()),
            manager,
        }
    }
}

impl<S: Saga> std::fmt::Debug for SagaProjection<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SagaProjection")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl<S: Saga> crate::projection::Projection for SagaProjection<S> {
    fn name(&self) -> &str {
        &self.name
    }

    fn patterns(&self) -> Vec<String> {
        self.manager.event_types()
    }

    async fn handle(&self, event: &Event) -> crate::bus::HandlerResult {
        self.manager.handle(event).await?;
        Ok(())
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

#[cfg(test)]
mod tests;
