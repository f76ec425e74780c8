//! The event store: the system of record for every committed event.
//!
//! [`EventStore`] is object-safe. [`InMemoryEventStore`](memory::InMemoryEventStore) is the
//! embedded default and the reference semantics; `eventflow::postgres::PostgresEventStore`
//! (feature `postgres`) is the production store. Both pass the same conformance kit
//! (`eventflow::testing::conformance::store`).

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::event::Event;
use crate::handler::{Handler, Subscription};

pub mod dead_letter;
pub mod follow;
pub mod memory;

pub use crate::event::{StoredEvent, StoredPayload};
pub use dead_letter::{DeadLetterStore, InMemoryDeadLetterStore, ParkedEvent};

/// Longest accepted stream id, in bytes.
pub const MAX_STREAM_ID_LEN: usize = 255;

pub use crate::version::ExpectedVersion;

impl ExpectedVersion {
    /// Checks the condition against the stream's `actual` version (0 when it does not exist).
    ///
    /// # Errors
    /// [`Error::Conflict`] when it does not hold.
    pub fn check(self, stream: &str, actual: u64) -> Result<()> {
        if self.allows(actual) {
            Ok(())
        } else {
            Err(Error::Conflict {
                stream: stream.to_owned(),
                expected: self,
                actual,
            })
        }
    }
}

/// Checks a stream id: 1 to 255 bytes, no control characters.
///
/// # Errors
/// [`Error::InvalidStreamId`].
pub fn validate_stream_id(stream: &str) -> Result<()> {
    let reason = if stream.is_empty() {
        Some("must not be empty")
    } else if stream.len() > MAX_STREAM_ID_LEN {
        Some("longer than 255 bytes")
    } else if stream.chars().any(char::is_control) {
        Some("must not contain control characters")
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(Error::InvalidStreamId {
            stream: stream.to_owned(),
            reason,
        }),
    }
}

/// Which events to [`load`](EventStore::load) or [`subscribe`](EventStoreExt::subscribe) to.
/// Every field that is set must match; results come in global position order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EventCriteria {
    /// Only these event types (any of them); empty means all.
    pub event_types: Vec<String>,
    /// Only events whose `timestamp` is at or after this instant.
    pub since: Option<DateTime<Utc>>,
    /// Only events whose `timestamp` is before this instant.
    pub until: Option<DateTime<Utc>>,
    /// Only events with this correlation id.
    pub correlation_id: Option<String>,
    /// Only events whose metadata has this tenant id.
    pub tenant_id: Option<String>,
    /// Only events of this stream.
    pub stream_id: Option<String>,
    /// Only events after this global position (exclusive).
    pub after_position: Option<u64>,
    /// At most this many events, for [`load`](EventStore::load) only: a subscription is not
    /// limited (its read batch size is [`SubscribeOptions::batch_size`]).
    pub limit: Option<usize>,
}

impl EventCriteria {
    /// Criteria that match every event.
    pub fn all() -> Self {
        Self::default()
    }
    /// Adds event types.
    pub fn event_types<I, S>(mut self, types: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.event_types.extend(types.into_iter().map(Into::into));
        self
    }
    /// Sets `since`.
    pub fn since(mut self, at: DateTime<Utc>) -> Self {
        self.since = Some(at);
        self
    }
    /// Sets `until`.
    pub fn until(mut self, at: DateTime<Utc>) -> Self {
        self.until = Some(at);
        self
    }
    /// Sets the correlation id.
    pub fn correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }
    /// Sets the tenant id.
    pub fn tenant_id(mut self, id: impl Into<String>) -> Self {
        self.tenant_id = Some(id.into());
        self
    }
    /// Sets the stream id.
    pub fn stream_id(mut self, id: impl Into<String>) -> Self {
        self.stream_id = Some(id.into());
        self
    }
    /// Sets the position to start after.
    pub fn after_position(mut self, position: u64) -> Self {
        self.after_position = Some(position);
        self
    }
    /// Sets the limit of a [`load`](EventStore::load).
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Whether a recorded event satisfies every filter (all but `limit`).
    pub fn matches(&self, event: &Event) -> bool {
        (self.event_types.is_empty() || self.event_types.contains(&event.event_type))
            && self.since.is_none_or(|s| event.timestamp >= s)
            && self.until.is_none_or(|u| event.timestamp < u)
            && self
                .correlation_id
                .as_ref()
                .is_none_or(|c| event.correlation_id.as_ref() == Some(c))
            && self
                .tenant_id
                .as_ref()
                .is_none_or(|t| event.metadata.tenant_id.as_ref() == Some(t))
            && self
                .stream_id
                .as_ref()
                .is_none_or(|s| event.stream_id.as_ref() == Some(s))
            && self
                .after_position
                .is_none_or(|p| event.position.is_some_and(|e| e > p))
    }
}

/// The system of record: append-only streams of events with a global order.
///
/// Contract, shared by every implementation (and checked by
/// `eventflow::testing::conformance::store`):
/// - **A batch is all or nothing.** Versions in a stream run 1, 2, 3, ... with no gaps or
///   duplicates; every event gets a global position, increasing in commit order.
/// - **Optimistic concurrency.** Of two writers appending with the same expected version,
///   exactly one wins; the other gets [`Error::Conflict`] and nothing of its batch is written.
/// - **Idempotent event ids.** When *every* event of a batch is already stored (same ids, same
///   stream), the append writes nothing and returns the stored events: a retried append is
///   harmless. When only some are, it fails with [`Error::DuplicateEvent`] and writes nothing.
///   The idempotency check comes before the version check.
/// - **Gap-free global order.** A reader following positions never passes over an event that a
///   concurrent transaction commits later with a lower position.
/// - Invalid event types and stream ids are rejected before anything is written.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Appends `events` to `stream_id` atomically if the stream is at `expected`, and returns
    /// them as recorded (with `stream_id`, `stream_version` and `position` set).
    ///
    /// # Errors
    /// [`Error::Conflict`], [`Error::DuplicateEvent`], [`Error::InvalidEventType`],
    /// [`Error::InvalidStreamId`], backend errors.
    async fn append_batch(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<Event>,
    ) -> Result<Vec<Event>>;

    /// Appends one event; see [`append_batch`](Self::append_batch).
    ///
    /// # Errors
    /// As [`append_batch`](Self::append_batch).
    async fn append(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        event: Event,
    ) -> Result<Event> {
        let mut recorded = self.append_batch(stream_id, expected, vec![event]).await?;
        recorded
            .pop()
            .ok_or_else(|| Error::InvalidArgument("store returned no event for an append".into()))
    }

    /// The events of `stream_id` whose stream version is at least `from_version`, in order. An
    /// unknown stream gives an empty list.
    ///
    /// # Errors
    /// Backend errors.
    async fn load_stream(&self, stream_id: &str, from_version: u64) -> Result<Vec<Event>>;

    /// [`load_stream`](Self::load_stream) reduced to what folding an aggregate needs, the
    /// payload as the store holds it (see [`StoredEvent`]): `Repository::load` reads this and
    /// decodes each payload once, into the typed event. The default maps `load_stream`;
    /// PostgreSQL selects only those columns and hands the payload over as JSON text.
    ///
    /// # Errors
    /// Backend errors.
    async fn load_stream_stored(
        &self,
        stream_id: &str,
        from_version: u64,
    ) -> Result<Vec<StoredEvent>> {
        Ok(self
            .load_stream(stream_id, from_version)
            .await?
            .into_iter()
            .map(StoredEvent::from_event)
            .collect())
    }

    /// The latest snapshot of `stream_id` at state schema version `state_version` in
    /// `snapshots` and the stored events after it (every event without one), in one read, when
    /// this store can read `snapshots` together with its events (see
    /// [`SnapshotStore::colocation`]); `None` when it cannot, and the caller reads them
    /// separately. `Repository::load` tries this first. The default is `None`; PostgreSQL reads
    /// both in one statement when `snapshots` keeps its table in the same schema of the same
    /// database.
    ///
    /// # Errors
    /// Backend errors.
    async fn load_snapshot_and_tail(
        &self,
        snapshots: &dyn SnapshotStore,
        stream_id: &str,
        state_version: u32,
    ) -> Result<Option<(Option<Snapshot>, Vec<StoredEvent>)>> {
        let _ = (snapshots, stream_id, state_version);
        Ok(None)
    }

    /// The current version of `stream_id` (0 when it does not exist).
    ///
    /// # Errors
    /// Backend errors.
    async fn stream_version(&self, stream_id: &str) -> Result<u64>;

    /// Events matching `criteria`, in global position order.
    ///
    /// # Errors
    /// Backend errors.
    async fn load(&self, criteria: &EventCriteria) -> Result<Vec<Event>>;

    /// Up to `limit` events after global position `after_position`, in global order.
    ///
    /// # Errors
    /// Backend errors.
    async fn read_all(&self, after_position: u64, limit: usize) -> Result<Vec<Event>>;

    /// The highest position a reader can safely read up to now (0 for an empty store). Events
    /// at or below it are all visible; used to measure lag.
    ///
    /// # Errors
    /// Backend errors.
    async fn head_position(&self) -> Result<u64>;

    /// A signal that changes whenever events may have been committed (in memory: on every
    /// commit; PostgreSQL: on every `NOTIFY`). Readers that follow the store (subscriptions, the
    /// relay, projection runners) wait on it between reads, with a polling timeout as fallback
    /// so a lost signal only delays them.
    fn commit_signal(&self) -> tokio::sync::watch::Receiver<u64>;

    /// Delivers every event matching `criteria` to `handler` in global order: first the stored
    /// ones after `criteria.after_position`, then new ones as they are committed, until the
    /// [`Subscription`] is dropped. `criteria.limit` does not apply; `options` sets the read
    /// batch size.
    ///
    /// Delivery is sequential. A handler error is reported through `tracing` and the
    /// subscription moves on; use a projection runner for retry policies and checkpoints.
    ///
    /// This is the object-safe form; call [`subscribe`](EventStoreExt::subscribe) (any handler)
    /// or [`subscribe_with`](EventStoreExt::subscribe_with) instead.
    ///
    /// # Errors
    /// Backend errors while starting.
    async fn subscribe_dyn(
        &self,
        criteria: EventCriteria,
        options: SubscribeOptions,
        handler: Arc<dyn Handler>,
    ) -> Result<Subscription>;
}

/// Options of a store subscription (see [`EventStoreExt::subscribe_with`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubscribeOptions {
    /// Events read from the store per [`read_all`](EventStore::read_all) call (at least 1).
    pub batch_size: usize,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        SubscribeOptions {
            batch_size: follow::DEFAULT_BATCH_SIZE,
        }
    }
}

impl SubscribeOptions {
    /// The defaults: [`follow::DEFAULT_BATCH_SIZE`] events per read.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads up to `size` events per call (at least 1).
    pub fn batch_size(mut self, size: usize) -> Self {
        self.batch_size = size.max(1);
        self
    }
}

/// Conveniences on every [`EventStore`] (as [`EventBusExt`](crate::bus::EventBusExt) is on
/// every bus).
#[async_trait]
pub trait EventStoreExt: EventStore {
    /// Subscribes any [`Handler`] (a closure, a [`sync_handler`](crate::bus::sync_handler), an
    /// `Arc<dyn Handler>`) with the default [`SubscribeOptions`]; see
    /// [`subscribe_dyn`](EventStore::subscribe_dyn) for the delivery contract.
    ///
    /// # Errors
    /// Backend errors while starting.
    async fn subscribe<H: Handler>(
        &self,
        criteria: EventCriteria,
        handler: H,
    ) -> Result<Subscription> {
        self.subscribe_dyn(criteria, SubscribeOptions::default(), Arc::new(handler))
            .await
    }

    /// [`subscribe`](Self::subscribe) with explicit options (the read batch size).
    ///
    /// # Errors
    /// Backend errors while starting.
    async fn subscribe_with<H: Handler>(
        &self,
        criteria: EventCriteria,
        options: SubscribeOptions,
        handler: H,
    ) -> Result<Subscription> {
        self.subscribe_dyn(criteria, options, Arc::new(handler))
            .await
    }
}

impl<T: EventStore + ?Sized> EventStoreExt for T {}

/// A store that keeps the checkpoints of the readers that follow it, such as the relay that
/// [`WithBus::with_bus`](crate::relay::WithBus::with_bus) attaches (the relay attaches to the
/// store; the store knows nothing of it).
pub trait ReaderCheckpoints: EventStore + Clone {
    /// Where a reader of this store keeps its position: durable beside the events for a
    /// durable store.
    fn reader_checkpoints(&self) -> Arc<dyn CheckpointStore>;

    /// How long a caught-up reader waits for the [`commit_signal`](EventStore::commit_signal)
    /// before reading again anyway.
    fn reader_poll_interval(&self) -> std::time::Duration {
        follow::DEFAULT_POLL_INTERVAL
    }

    /// Where a reader of this store parks the events it gives up on (see [`dead_letter`]):
    /// durable beside the events for a durable store. The default keeps them in memory.
    fn reader_dead_letters(&self) -> Arc<dyn DeadLetterStore> {
        Arc::new(InMemoryDeadLetterStore::new())
    }

    /// Where the readers of this store that must run once at a time (the relay of `with_bus`)
    /// hold their leases, with fenced writes to the checkpoints of
    /// [`reader_checkpoints`](Self::reader_checkpoints). `None` (the default): a reader runs
    /// without a lease, so every process attaching one publishes (for a store only one process
    /// opens).
    fn reader_leases(&self) -> Option<Arc<dyn crate::lease::LeaseStore>> {
        None
    }
}

/// A saved aggregate state (see `Repository`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The stream the state was folded from.
    pub stream_id: String,
    /// The stream version the state includes.
    pub version: u64,
    /// The aggregate's state schema version when the snapshot was taken; a snapshot of another
    /// schema version is ignored.
    pub schema_version: u32,
    /// The state, as JSON.
    pub state: serde_json::Value,
    /// When it was taken.
    pub taken_at: DateTime<Utc>,
}

/// Stores the latest [`Snapshot`] per stream.
#[async_trait]
pub trait SnapshotStore: Send + Sync + 'static {
    /// The latest snapshot of `stream_id`, if any.
    ///
    /// # Errors
    /// Backend errors.
    async fn load_snapshot(&self, stream_id: &str) -> Result<Option<Snapshot>>;

    /// Saves `snapshot`, replacing an older one of the same stream (a snapshot older than the
    /// stored one is ignored).
    ///
    /// # Errors
    /// Backend errors.
    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<()>;

    /// Where this store keeps its snapshots, for an event store that can read them together
    /// with its events (see [`EventStore::load_snapshot_and_tail`]): an opaque key the event
    /// store compares with its own. `None` (the default): never read together. A wrapper that
    /// forwards it must read and write the same snapshots as the store it wraps.
    fn colocation(&self) -> Option<String> {
        None
    }
}

/// Durable positions of named readers (the relay, projections).
#[async_trait]
pub trait CheckpointStore: Send + Sync + 'static {
    /// The saved position of `name` (0 when none).
    ///
    /// # Errors
    /// Backend errors.
    async fn load_checkpoint(&self, name: &str) -> Result<u64>;

    /// Saves the position of `name`. **A checkpoint never moves backwards**: saving a position
    /// below the stored one leaves it as it is (and succeeds), so a slow or stale writer cannot
    /// make every reader after it replay what was done. Use
    /// [`reset_checkpoint`](Self::reset_checkpoint) to start over on purpose.
    ///
    /// # Errors
    /// Backend errors.
    async fn save_checkpoint(&self, name: &str, position: u64) -> Result<()>;

    /// Sets the position of `name` back to 0 (a rebuild); the only way a checkpoint moves
    /// backwards.
    ///
    /// # Errors
    /// Backend errors.
    async fn reset_checkpoint(&self, name: &str) -> Result<()>;
}
