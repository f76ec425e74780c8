//! The in-memory event, snapshot and checkpoint stores: the embedded default and the reference
//! semantics every other backend is checked against.
//!
//! [`InMemoryEventStore`] keeps one global log of events (position = index + 1), an index of
//! positions per stream and a map from event id to position. Appends take a write lock only for
//! the checks and the push, so readers never wait on a slow writer, and positions are assigned
//! in commit order: the global order has no gaps by construction.
//!
//! ```
//! # async fn demo() -> eventflow::Result<()> {
//! use eventflow::store::memory::InMemoryEventStore;
//! use eventflow::{Event, EventStore, ExpectedVersion};
//! use serde_json::json;
//!
//! let store = InMemoryEventStore::new();
//! let placed = Event::new("order.placed", json!({ "total": 42 }))?;
//! store.append("order-1", ExpectedVersion::NoStream, placed).await?;
//! let paid = Event::new("order.paid", json!({}))?;
//! store.append("order-1", ExpectedVersion::Exact(1), paid).await?;
//!
//! let history = store.load_stream("order-1", 1).await?;
//! assert_eq!(history.len(), 2);
//! assert_eq!(history[1].stream_version, Some(2));
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;
use tokio::sync::watch;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::event::Event;
use crate::handler::{Handler, Subscription, sync};
use crate::lease::{LeaseStore, MemoryLeaseStore};
use crate::store::{
    CheckpointStore, EventCriteria, EventStore, ExpectedVersion, ReaderCheckpoints, Snapshot,
    SnapshotStore, SubscribeOptions, follow, validate_stream_id,
};

/// The log and its indexes, behind one lock.
#[derive(Default)]
struct Log {
    /// Every event, in global order; `events[i].position == Some(i + 1)`. Held by value: every
    /// read hands out owned copies anyway, and an `Arc` per event would cost an allocation.
    events: Vec<Event>,
    /// Per stream, the indexes into `events`; `streams[s][v - 1]` is version `v`.
    streams: HashMap<String, Vec<usize>>,
    /// Event id -> index into `events`. Ids can be chosen by a caller (`Event::with_id`) or
    /// arrive from a bus, so the map keeps std's randomly seeded SipHash: a fixed or unseeded
    /// hasher lets chosen ids collide and turns every lookup into a scan.
    ids: HashMap<Uuid, usize>,
}

struct Inner {
    /// Leases and the fenced checkpoints of readers (the relay of `with_bus`).
    leases: MemoryLeaseStore,
    log: RwLock<Log>,
    /// Bumped to the head position after every commit.
    signal: watch::Sender<u64>,
}

impl Inner {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Log> {
        // A panic while holding the lock cannot leave the log half-written (every mutation is
        // done after all checks, with infallible pushes), so a poisoned lock is still sound.
        sync::read(&self.log)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Log> {
        sync::write(&self.log)
    }

    fn append_batch(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        mut events: Vec<Event>,
    ) -> Result<Vec<Event>> {
        validate_stream_id(stream_id)?;
        crate::event::validate_owned(&mut events)?;
        // A batch holding one id twice cannot be stored: the second would be a duplicate of
        // the first.
        if events.len() > 1 {
            let mut seen = std::collections::HashSet::with_capacity(events.len());
            if let Some(dup) = events.iter().find(|e| !seen.insert(e.id)) {
                return Err(Error::InvalidArgument(format!(
                    "batch for stream {stream_id:?} holds event id {} twice",
                    dup.id
                )));
            }
        }

        let mut log = self.write();

        // Idempotency comes before the version check: a retried append must succeed even
        // though the first attempt already moved the stream on.
        let stored: Vec<Option<usize>> =
            events.iter().map(|e| log.ids.get(&e.id).copied()).collect();
        let found = stored.iter().filter(|s| s.is_some()).count();
        if found > 0 {
            let foreign = stored
                .iter()
                .flatten()
                .find(|&&i| log.events[i].stream_id.as_deref() != Some(stream_id));
            if found == events.len() && foreign.is_none() {
                return Ok(stored
                    .into_iter()
                    .flatten()
                    .map(|i| Event::clone(&log.events[i]))
                    .collect());
            }
            let i = foreign
                .copied()
                .or_else(|| stored.iter().flatten().next().copied())
                .unwrap_or_default();
            let existing = &log.events[i];
            return Err(Error::DuplicateEvent {
                id: existing.id,
                stream: existing.stream_id.clone().unwrap_or_default(),
            });
        }

        let actual = log.streams.get(stream_id).map_or(0, |s| s.len() as u64);
        expected.check(stream_id, actual)?;
        if events.is_empty() {
            return Ok(Vec::new());
        }

        let Log {
            events: all,
            streams,
            ids,
        } = &mut *log;
        // `get_mut` first: `entry` would allocate the key on every append.
        let stream = match streams.get_mut(stream_id) {
            Some(stream) => stream,
            None => streams.entry(stream_id.to_owned()).or_default(),
        };
        let stream_id_owned = stream_id.to_owned();
        let mut recorded = Vec::with_capacity(events.len());
        for (n, mut event) in events.into_iter().enumerate() {
            let index = all.len();
            // Store-owned: whatever the caller (or a bus message) put here is replaced.
            event.stream_id = Some(stream_id_owned.clone());
            event.stream_version = Some(actual + n as u64 + 1);
            event.position = Some(index as u64 + 1);
            ids.insert(event.id, index);
            stream.push(index);
            recorded.push(event.clone());
            all.push(event);
        }
        let head = all.len() as u64;
        // Sent under the lock so the signal's value only ever grows.
        self.signal.send_replace(head);
        drop(log);
        tracing::debug!(
            stream = stream_id,
            count = recorded.len(),
            head,
            "in-memory store: appended"
        );
        Ok(recorded)
    }

    fn load_stream(&self, stream_id: &str, from_version: u64) -> Vec<Event> {
        let log = self.read();
        let Some(indexes) = log.streams.get(stream_id) else {
            return Vec::new();
        };
        let skip = usize::try_from(from_version.saturating_sub(1)).unwrap_or(usize::MAX);
        indexes
            .iter()
            .skip(skip)
            .map(|&i| Event::clone(&log.events[i]))
            .collect()
    }

    fn stream_version(&self, stream_id: &str) -> u64 {
        self.read()
            .streams
            .get(stream_id)
            .map_or(0, |s| s.len() as u64)
    }

    fn load(&self, criteria: &EventCriteria) -> Vec<Event> {
        let log = self.read();
        let limit = criteria.limit.unwrap_or(usize::MAX);
        let after = usize::try_from(criteria.after_position.unwrap_or(0)).unwrap_or(usize::MAX);
        let matching = |e: &&Event| criteria.matches(e);
        match &criteria.stream_id {
            // The stream index avoids scanning the whole log.
            Some(stream) => log
                .streams
                .get(stream)
                .into_iter()
                .flatten()
                .filter(|&&i| i >= after)
                .map(|&i| &log.events[i])
                .filter(matching)
                .take(limit)
                .cloned()
                .collect(),
            None => log
                .events
                .iter()
                .skip(after)
                .filter(matching)
                .take(limit)
                .cloned()
                .collect(),
        }
    }

    fn read_all(&self, after_position: u64, limit: usize) -> Vec<Event> {
        let log = self.read();
        let start = usize::try_from(after_position)
            .unwrap_or(usize::MAX)
            .min(log.events.len());
        let end = start.saturating_add(limit).min(log.events.len());
        log.events[start..end].to_vec()
    }

    fn head_position(&self) -> u64 {
        self.read().events.len() as u64
    }
}

/// The in-memory event store. Cheap to clone: clones share the same log.
///
/// Keeps every promise of [`EventStore`]; see the [module docs](self) for how. With
/// [`with_bus`](crate::relay::WithBus::with_bus) a relay also publishes every committed event
/// to a bus.
#[derive(Clone)]
pub struct InMemoryEventStore {
    inner: Arc<Inner>,
}

impl Default for InMemoryEventStore {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for InMemoryEventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let log = self.inner.read();
        f.debug_struct("InMemoryEventStore")
            .field("events", &log.events.len())
            .field("streams", &log.streams.len())
            .finish()
    }
}

impl InMemoryEventStore {
    /// An empty store.
    pub fn new() -> Self {
        InMemoryEventStore {
            inner: Arc::new(Inner {
                leases: MemoryLeaseStore::new(),
                log: RwLock::new(Log::default()),
                signal: watch::channel(0).0,
            }),
        }
    }

    /// Number of events stored.
    pub fn len(&self) -> usize {
        self.inner.read().events.len()
    }

    /// Whether no event is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl EventStore for InMemoryEventStore {
    async fn append_batch(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<Event>,
    ) -> Result<Vec<Event>> {
        self.inner.append_batch(stream_id, expected, events)
    }

    async fn load_stream(&self, stream_id: &str, from_version: u64) -> Result<Vec<Event>> {
        Ok(self.inner.load_stream(stream_id, from_version))
    }

    async fn stream_version(&self, stream_id: &str) -> Result<u64> {
        Ok(self.inner.stream_version(stream_id))
    }

    async fn load(&self, criteria: &EventCriteria) -> Result<Vec<Event>> {
        Ok(self.inner.load(criteria))
    }

    async fn read_all(&self, after_position: u64, limit: usize) -> Result<Vec<Event>> {
        Ok(self.inner.read_all(after_position, limit))
    }

    async fn head_position(&self) -> Result<u64> {
        Ok(self.inner.head_position())
    }

    fn commit_signal(&self) -> watch::Receiver<u64> {
        self.inner.signal.subscribe()
    }

    async fn subscribe_dyn(
        &self,
        criteria: EventCriteria,
        options: SubscribeOptions,
        handler: Arc<dyn Handler>,
    ) -> Result<Subscription> {
        Ok(follow::subscribe(
            Arc::new(self.clone()),
            criteria,
            options,
            handler,
        ))
    }
}

/// A relay attached with [`with_bus`](crate::relay::WithBus::with_bus) keeps its position in
/// memory, like the events, shared by every relay of this store (and its clones), and holds a
/// lease of this store's [`MemoryLeaseStore`], so of several relays of one name exactly one
/// publishes.
impl ReaderCheckpoints for InMemoryEventStore {
    fn reader_checkpoints(&self) -> Arc<dyn CheckpointStore> {
        Arc::new(InMemoryCheckpointStore::shared_with(&self.inner.leases))
    }

    fn reader_leases(&self) -> Option<Arc<dyn LeaseStore>> {
        Some(Arc::new(self.inner.leases.clone()))
    }
}

/// Keeps the latest [`Snapshot`] per stream in memory.
#[derive(Debug, Clone, Default)]
pub struct InMemorySnapshotStore {
    snapshots: Arc<Mutex<HashMap<String, Snapshot>>>,
}

impl InMemorySnapshotStore {
    /// An empty snapshot store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl SnapshotStore for InMemorySnapshotStore {
    async fn load_snapshot(&self, stream_id: &str) -> Result<Option<Snapshot>> {
        let snapshots = sync::lock(&self.snapshots);
        Ok(snapshots.get(stream_id).cloned())
    }

    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<()> {
        validate_stream_id(&snapshot.stream_id)?;
        let mut snapshots = sync::lock(&self.snapshots);
        match snapshots.entry(snapshot.stream_id.clone()) {
            Entry::Occupied(mut e) => {
                // An older snapshot (lower version) must not replace a newer one.
                if snapshot.version >= e.get().version {
                    e.insert(snapshot);
                }
            }
            Entry::Vacant(e) => {
                e.insert(snapshot);
            }
        }
        Ok(())
    }
}

/// Keeps named reader positions in memory.
#[derive(Debug, Clone, Default)]
pub struct InMemoryCheckpointStore {
    positions: Arc<Mutex<HashMap<String, u64>>>,
}

impl InMemoryCheckpointStore {
    /// An empty checkpoint store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The checkpoints `leases` fences: what
    /// [`LeaseStore::fenced_checkpoint`] writes
    /// there, this store reads (and the other way round).
    pub fn shared_with(leases: &MemoryLeaseStore) -> Self {
        InMemoryCheckpointStore {
            positions: leases.checkpoint_map(),
        }
    }
}

#[async_trait]
impl CheckpointStore for InMemoryCheckpointStore {
    async fn load_checkpoint(&self, name: &str) -> Result<u64> {
        let positions = sync::lock(&self.positions);
        Ok(positions.get(name).copied().unwrap_or(0))
    }

    async fn save_checkpoint(&self, name: &str, position: u64) -> Result<()> {
        let mut positions = sync::lock(&self.positions);
        let saved = positions.entry(name.to_owned()).or_insert(0);
        *saved = (*saved).max(position);
        Ok(())
    }

    async fn reset_checkpoint(&self, name: &str) -> Result<()> {
        sync::lock(&self.positions).insert(name.to_owned(), 0);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
