//! [`Repository`]: load an aggregate (snapshot + tail), run a command, append its events with
//! optimistic concurrency.

use std::fmt;
use std::sync::Arc;

use chrono::Utc;
use serde_json::Value;

use super::upcast::{Upcasters, upcast_payload};
use super::{Aggregate, SnapshotState};
use crate::error::{BoxError, Error, Result};
use crate::event::{DomainEvent, Event, Metadata};
use crate::store::{
    EventStore, ExpectedVersion, Snapshot, SnapshotStore, StoredEvent, StoredPayload,
};

/// An aggregate's state as loaded, with the stream version it includes.
#[derive(Debug, Clone, PartialEq)]
pub struct Loaded<A> {
    /// The state.
    pub state: A,
    /// The stream version folded into it (0 for an aggregate that has no events yet).
    pub version: u64,
    /// The version of the snapshot the load started from, if it used one.
    pub snapshot_version: Option<u64>,
}

/// Context carried onto every event a command appends: metadata, correlation, causation,
/// source.
///
/// ```
/// use eventflow::{CommandContext, Metadata};
///
/// let ctx = CommandContext::new()
///     .with_metadata(Metadata::default().user("u-7").tenant("acme"))
///     .with_correlation("checkout-9")
///     .with_causation("cmd-1");
/// assert_eq!(ctx.correlation_id.as_deref(), Some("checkout-9"));
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CommandContext {
    /// Metadata for every appended event.
    pub metadata: Metadata,
    /// Correlation id for every appended event.
    pub correlation_id: Option<String>,
    /// Causation id (the triggering event or command) for every appended event.
    pub causation_id: Option<String>,
    /// Source component for every appended event.
    pub source: Option<String>,
}

impl CommandContext {
    /// An empty context.
    pub fn new() -> Self {
        Self::default()
    }

    /// A context for a command triggered by `parent`: its correlation id (or its id), its id as
    /// causation, and its tenant and trace ids.
    pub fn caused_by(parent: &Event) -> Self {
        CommandContext {
            metadata: Metadata {
                tenant_id: parent.metadata.tenant_id.clone(),
                trace_id: parent.metadata.trace_id.clone(),
                ..Metadata::default()
            },
            correlation_id: Some(parent.correlation_or_id().into_owned()),
            causation_id: Some(parent.id.to_string()),
            source: None,
        }
    }

    /// Sets the metadata.
    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }

    /// Sets the correlation id.
    pub fn with_correlation(mut self, correlation_id: impl Into<String>) -> Self {
        self.correlation_id = Some(correlation_id.into());
        self
    }

    /// Sets the causation id.
    pub fn with_causation(mut self, causation_id: impl Into<String>) -> Self {
        self.causation_id = Some(causation_id.into());
        self
    }

    /// Sets the source component.
    pub fn with_source(mut self, source: impl Into<String>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// The envelope of `event` with this context.
    ///
    /// # Errors
    /// [`Error::Encode`].
    pub fn envelope<E: DomainEvent>(&self, event: &E) -> Result<Event> {
        let mut envelope = Event::from_domain(event)?.with_metadata(self.metadata.clone());
        envelope.correlation_id.clone_from(&self.correlation_id);
        envelope.causation_id.clone_from(&self.causation_id);
        envelope.source.clone_from(&self.source);
        Ok(envelope)
    }
}

/// Why [`Repository::execute`] did not commit.
#[derive(Debug)]
#[non_exhaustive]
pub enum ExecuteError<E> {
    /// The command rejected the request (its own error); nothing was appended.
    Rejected(E),
    /// Loading or appending failed; [`Error::Conflict`] when retries ran out.
    Store(Error),
}

impl<E> ExecuteError<E> {
    /// The command's own error, if that is what happened.
    pub fn rejected(&self) -> Option<&E> {
        match self {
            ExecuteError::Rejected(e) => Some(e),
            ExecuteError::Store(_) => None,
        }
    }

    /// True when the append lost an optimistic-concurrency race (after any retries).
    pub fn is_conflict(&self) -> bool {
        matches!(self, ExecuteError::Store(e) if e.is_conflict())
    }
}

impl<E> From<Error> for ExecuteError<E> {
    fn from(e: Error) -> Self {
        ExecuteError::Store(e)
    }
}

impl<E: fmt::Display> fmt::Display for ExecuteError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExecuteError::Rejected(e) => write!(f, "command rejected: {e}"),
            ExecuteError::Store(e) => e.fmt(f),
        }
    }
}

// Bounded on `Debug + Display` only, so commands may reject with a plain `String` or `&str` and
// callers can still use `?` into `Box<dyn Error>`; the command's error is shown, not chained.
impl<E: fmt::Debug + fmt::Display> std::error::Error for ExecuteError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ExecuteError::Rejected(_) => None,
            // Displayed as the store error itself, so its cause is the next link.
            ExecuteError::Store(e) => e.source(),
        }
    }
}

/// Snapshot settings, captured as plain functions where `A: SnapshotState` is known so that
/// the repository itself needs no such bound.
struct Snapshots<A> {
    store: Arc<dyn SnapshotStore>,
    every: u64,
    state_version: u32,
    encode: fn(&A) -> Result<Value>,
    decode: fn(&Value) -> Result<A>,
}

impl<A> Clone for Snapshots<A> {
    fn clone(&self) -> Self {
        Snapshots {
            store: Arc::clone(&self.store),
            every: self.every,
            state_version: self.state_version,
            encode: self.encode,
            decode: self.decode,
        }
    }
}

/// Loads aggregates from an [`EventStore`] and commits their commands.
///
/// - [`load`](Self::load) of an id that has no events returns the `Default` state at version 0
///   (not an error): a new aggregate is simply one with no history.
/// - [`create`](Self::create) runs a command on a new aggregate without reading its stream,
///   and appends with `ExpectedVersion::NoStream` (a conflict if it exists).
/// - [`execute`](Self::execute) loads, runs the command, and appends its events with
///   `ExpectedVersion::Exact(loaded version)`. If another writer committed in between, the
///   append fails with [`Error::Conflict`]; with
///   [`conflict_retries(n)`](Self::conflict_retries) the repository reloads and runs
///   the command again, up to `n` more times.
/// - With [`snapshots`](Self::snapshots), loads start from the latest snapshot whose
///   state version matches [`SnapshotState::STATE_VERSION`] (others are ignored) and replay only
///   the tail; a snapshot is saved each time a command's events cross a multiple of the
///   snapshot interval. A failure to read or save a snapshot is logged and falls back to a full
///   replay; it never fails a command whose events were committed.
/// - Events stored with an older schema version are upcast on load (see
///   [`upcaster`](Self::upcaster)).
///
/// Cloning is cheap (shared handles).
pub struct Repository<A: Aggregate> {
    store: Arc<dyn EventStore>,
    snapshots: Option<Snapshots<A>>,
    upcasters: Arc<Upcasters>,
    conflict_retries: u32,
}

impl<A: Aggregate> Clone for Repository<A> {
    fn clone(&self) -> Self {
        Repository {
            store: Arc::clone(&self.store),
            snapshots: self.snapshots.clone(),
            upcasters: Arc::clone(&self.upcasters),
            conflict_retries: self.conflict_retries,
        }
    }
}

impl<A: Aggregate> fmt::Debug for Repository<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Repository")
            .field("aggregate", &A::TYPE)
            .field("snapshot_every", &self.snapshots.as_ref().map(|s| s.every))
            .field("upcasters", &self.upcasters)
            .field("conflict_retries", &self.conflict_retries)
            .finish_non_exhaustive()
    }
}

impl<A: Aggregate> Repository<A> {
    /// A repository over `store`, without snapshots or retries.
    pub fn new(store: Arc<dyn EventStore>) -> Self {
        Repository {
            store,
            snapshots: None,
            upcasters: Arc::new(Upcasters::new()),
            conflict_retries: 0,
        }
    }

    /// Saves and loads snapshots in `store`, every [`SnapshotState::SNAPSHOT_EVERY`] events
    /// (change it with [`snapshot_every`](Self::snapshot_every)).
    pub fn snapshots(mut self, store: Arc<dyn SnapshotStore>) -> Self
    where
        A: SnapshotState,
    {
        self.snapshots = Some(Snapshots {
            store,
            every: A::SNAPSHOT_EVERY.max(1),
            state_version: A::STATE_VERSION,
            encode: |state| {
                serde_json::to_value(state).map_err(|source| Error::Encode {
                    event_type: format!("{}.snapshot", A::TYPE),
                    source,
                })
            },
            decode: |value| {
                A::deserialize(value).map_err(|e| Error::decode(format!("{}.snapshot", A::TYPE), e))
            },
        });
        self
    }

    /// Sets the snapshot interval (at least 1); no effect without
    /// [`snapshots`](Self::snapshots).
    pub fn snapshot_every(mut self, events: u64) -> Self {
        if let Some(s) = &mut self.snapshots {
            s.every = events.max(1);
        }
        self
    }

    /// Retries a command up to `retries` more times when its append loses an
    /// optimistic-concurrency race, reloading the state and deciding again each time.
    pub fn conflict_retries(mut self, retries: u32) -> Self {
        self.conflict_retries = retries;
        self
    }

    /// Registers an upcaster that upgrades payloads of `event_type` from `from_version` to
    /// `from_version + 1` at load time. Chains run one version at a time up to the current
    /// [`DomainEvent::schema_version`]; a missing step is [`Error::MissingUpcaster`].
    pub fn upcaster<F>(mut self, event_type: impl Into<String>, from_version: u32, f: F) -> Self
    where
        F: Fn(Value) -> Result<Value, BoxError> + Send + Sync + 'static,
    {
        Arc::make_mut(&mut self.upcasters).register(event_type, from_version, f);
        self
    }

    /// The event store.
    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    /// Loads the aggregate with this id (its stream is [`Aggregate::stream_id`]). An id with no
    /// events gives the default state at version 0.
    ///
    /// # Errors
    /// Store errors, [`Error::Decode`] / [`Error::UnknownEventType`] for an event that does not
    /// decode, [`Error::MissingUpcaster`] for an old schema version without an upcaster.
    pub async fn load(&self, id: &str) -> Result<Loaded<A>> {
        self.load_stream(&A::stream_id(id)).await
    }

    async fn load_stream(&self, stream: &str) -> Result<Loaded<A>> {
        let empty = || Loaded {
            state: A::default(),
            version: 0,
            snapshot_version: None,
        };
        // Snapshot and tail in one read when the event store keeps the snapshots with its
        // events (PostgreSQL, same schema): one round trip.
        let together = match &self.snapshots {
            Some(config) => {
                self.store
                    .load_snapshot_and_tail(&*config.store, stream, config.state_version)
                    .await?
            }
            None => None,
        };
        let (mut loaded, tail) = match together {
            Some((None, every_event)) => (empty(), every_event),
            Some((Some(snapshot), tail)) => match self.usable_snapshot(stream, snapshot) {
                Some(loaded) => (loaded, tail),
                // A snapshot that does not decode: replay the whole stream.
                None => (empty(), self.store.load_stream_stored(stream, 1).await?),
            },
            None => {
                let loaded = self.load_snapshot(stream).await.unwrap_or_else(empty);
                // The fold's fast path: payloads as the store holds them, decoded once into
                // the typed event (see `StoredEvent`).
                let tail = self
                    .store
                    .load_stream_stored(stream, loaded.version + 1)
                    .await?;
                (loaded, tail)
            }
        };
        for event in tail {
            let version = event.stream_version.unwrap_or(loaded.version + 1);
            self.apply_stored(&mut loaded.state, event)?;
            loaded.version = version;
        }
        Ok(loaded)
    }

    /// The latest usable snapshot, or `None` (no snapshots, none stored, another state version,
    /// or a state that does not decode: all mean "replay the stream").
    async fn load_snapshot(&self, stream: &str) -> Option<Loaded<A>> {
        let config = self.snapshots.as_ref()?;
        let snapshot = match config.store.load_snapshot(stream).await {
            Ok(snapshot) => snapshot?,
            Err(error) => {
                tracing::warn!(stream, %error, "cannot load snapshot; replaying the stream");
                return None;
            }
        };
        self.usable_snapshot(stream, snapshot)
    }

    /// `snapshot` as a loaded state, or `None` (another state version, or a state that does
    /// not decode: both mean "replay the stream").
    fn usable_snapshot(&self, stream: &str, snapshot: Snapshot) -> Option<Loaded<A>> {
        let config = self.snapshots.as_ref()?;
        if snapshot.schema_version != config.state_version {
            tracing::debug!(
                stream,
                snapshot_schema = snapshot.schema_version,
                current_schema = config.state_version,
                "ignoring snapshot of another state version"
            );
            return None;
        }
        match (config.decode)(&snapshot.state) {
            Ok(state) => Some(Loaded {
                state,
                version: snapshot.version,
                snapshot_version: Some(snapshot.version),
            }),
            Err(error) => {
                tracing::warn!(stream, %error, "snapshot does not decode; replaying the stream");
                None
            }
        }
    }

    /// Applies a stored event, upcasting an older schema version first (runtime upcasters, then
    /// the ones declared on the enum).
    fn apply_stored(&self, state: &mut A, mut event: StoredEvent) -> Result<()> {
        let current = <A::Event as DomainEvent>::schema_version(&event.event_type);
        if event.version != current {
            let payload = std::mem::replace(&mut event.payload, StoredPayload::Value(Value::Null))
                .into_value(&event.event_type)?;
            event.payload = StoredPayload::Value(upcast_payload::<A::Event>(
                Some(&self.upcasters),
                &event.event_type,
                event.version,
                current,
                payload,
            )?);
            event.version = current;
        }
        state.apply_stored(&event)
    }

    /// Runs `decide` on the current state of aggregate `id` and appends the events it returns;
    /// see [`execute_with`](Self::execute_with).
    ///
    /// # Errors
    /// As [`execute_with`](Self::execute_with).
    pub async fn execute<F, E>(&self, id: &str, decide: F) -> Result<Vec<Event>, ExecuteError<E>>
    where
        F: FnMut(&A) -> Result<Vec<A::Event>, E>,
    {
        self.execute_with(id, &CommandContext::default(), decide)
            .await
    }

    /// Loads aggregate `id`, runs `decide` on its state, and appends the events it returns with
    /// `ExpectedVersion::Exact(loaded version)`, each carrying `ctx`'s metadata, correlation,
    /// causation and source. Returns the committed events (empty when `decide` returned none;
    /// nothing is appended then).
    ///
    /// On [`Error::Conflict`] it reloads and calls `decide` again, at most
    /// [`conflict_retries`](Self::conflict_retries) times, so `decide` must not have
    /// side effects of its own.
    ///
    /// # Errors
    /// [`ExecuteError::Rejected`] with the command's error; [`ExecuteError::Store`] with
    /// [`Error::Conflict`] when retries ran out, or a load or append error.
    pub async fn execute_with<F, E>(
        &self,
        id: &str,
        ctx: &CommandContext,
        mut decide: F,
    ) -> Result<Vec<Event>, ExecuteError<E>>
    where
        F: FnMut(&A) -> Result<Vec<A::Event>, E>,
    {
        let stream = A::stream_id(id);
        let mut attempt = 0u32;
        loop {
            let loaded = self.load_stream(&stream).await?;
            let events = decide(&loaded.state).map_err(ExecuteError::Rejected)?;
            if events.is_empty() {
                return Ok(Vec::new());
            }
            let envelopes = events
                .iter()
                .map(|e| ctx.envelope(e))
                .collect::<Result<Vec<_>>>()?;
            let expected = ExpectedVersion::Exact(loaded.version);
            match self.store.append_batch(&stream, expected, envelopes).await {
                Ok(recorded) => {
                    tracing::debug!(
                        stream,
                        version = loaded.version + recorded.len() as u64,
                        events = recorded.len(),
                        correlation_id = ctx.correlation_id.as_deref(),
                        "command committed"
                    );
                    self.maybe_snapshot(&stream, loaded, events).await;
                    return Ok(recorded);
                }
                Err(error) if error.is_conflict() && attempt < self.conflict_retries => {
                    attempt += 1;
                    tracing::debug!(stream, attempt, %error, "conflict; reloading and deciding again");
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// Creates aggregate `id`: runs `decide` on the `Default` state and appends the events it
    /// returns with [`ExpectedVersion::NoStream`], without reading the stream first (a new
    /// aggregate has none: one round trip instead of two); see
    /// [`create_with`](Self::create_with).
    ///
    /// # Errors
    /// As [`create_with`](Self::create_with).
    pub async fn create<F, E>(&self, id: &str, decide: F) -> Result<Vec<Event>, ExecuteError<E>>
    where
        F: FnOnce(&A) -> Result<Vec<A::Event>, E>,
    {
        self.create_with(id, &CommandContext::default(), decide)
            .await
    }

    /// [`create`](Self::create) with a [`CommandContext`] carried onto every event.
    ///
    /// # Errors
    /// [`ExecuteError::Rejected`] with the command's error; [`ExecuteError::Store`] with
    /// [`Error::Conflict`] when the aggregate already has events (nothing is appended; use
    /// [`execute`](Self::execute) for an existing aggregate), or an append error.
    pub async fn create_with<F, E>(
        &self,
        id: &str,
        ctx: &CommandContext,
        decide: F,
    ) -> Result<Vec<Event>, ExecuteError<E>>
    where
        F: FnOnce(&A) -> Result<Vec<A::Event>, E>,
    {
        let stream = A::stream_id(id);
        let loaded = Loaded {
            state: A::default(),
            version: 0,
            snapshot_version: None,
        };
        let events = decide(&loaded.state).map_err(ExecuteError::Rejected)?;
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let envelopes = events
            .iter()
            .map(|e| ctx.envelope(e))
            .collect::<Result<Vec<_>>>()?;
        let recorded = self
            .store
            .append_batch(&stream, ExpectedVersion::NoStream, envelopes)
            .await?;
        tracing::debug!(
            stream,
            events = recorded.len(),
            correlation_id = ctx.correlation_id.as_deref(),
            "aggregate created"
        );
        self.maybe_snapshot(&stream, loaded, events).await;
        Ok(recorded)
    }

    /// Saves a snapshot when the committed events crossed a multiple of the interval.
    async fn maybe_snapshot(&self, stream: &str, loaded: Loaded<A>, events: Vec<A::Event>) {
        let Some(config) = &self.snapshots else {
            return;
        };
        let before = loaded.version;
        let after = before + events.len() as u64;
        if after / config.every == before / config.every {
            return;
        }
        let mut state = loaded.state;
        for event in events {
            state.apply(event);
        }
        let result = match (config.encode)(&state) {
            Ok(value) => {
                config
                    .store
                    .save_snapshot(Snapshot {
                        stream_id: stream.to_owned(),
                        version: after,
                        schema_version: config.state_version,
                        state: value,
                        taken_at: Utc::now(),
                    })
                    .await
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => tracing::debug!(stream, version = after, "saved snapshot"),
            Err(error) => tracing::warn!(stream, version = after, %error, "cannot save snapshot"),
        }
    }

    /// Saves a snapshot of aggregate `id` now (for example after a migration), and returns its
    /// version. Does nothing and returns `None` without [`snapshots`](Self::snapshots).
    ///
    /// # Errors
    /// Load errors and snapshot store errors.
    pub async fn snapshot_now(&self, id: &str) -> Result<Option<u64>> {
        let Some(config) = &self.snapshots else {
            return Ok(None);
        };
        let stream = A::stream_id(id);
        let loaded = self.load_stream(&stream).await?;
        config
            .store
            .save_snapshot(Snapshot {
                stream_id: stream,
                version: loaded.version,
                schema_version: config.state_version,
                state: (config.encode)(&loaded.state)?,
                taken_at: Utc::now(),
            })
            .await?;
        Ok(Some(loaded.version))
    }
}
