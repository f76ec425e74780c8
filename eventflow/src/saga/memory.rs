//! [`InMemorySagaStore`]: the reference [`SagaStore`], for tests and single-process services.

use std::collections::hash_map::Entry as MapEntry;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{CommitOutcome, Deadline, LoadedSaga, SagaCommit, SagaInstance, SagaStore};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::handler::sync;
use crate::store::ExpectedVersion;

struct Entry {
    instance: SagaInstance,
    handled: HashSet<Uuid>,
    /// When it completed (its last commit), while it is completed.
    completed_at: Option<DateTime<Utc>>,
}

/// One saga's bookkeeping. Every map is keyed by correlation ids, which whoever publishes
/// chooses, so they keep std's randomly seeded hasher.
#[derive(Default)]
struct Saga {
    instances: HashMap<String, Entry>,
    /// Completed instances by completion time, so pruning finds the oldest without a scan.
    completed: BTreeSet<(DateTime<Utc>, String)>,
    /// Pruned instances: correlation id -> completion time.
    tombstones: HashMap<String, DateTime<Utc>>,
    /// The same tombstones by completion time.
    tombstones_by_time: BTreeSet<(DateTime<Utc>, String)>,
    outbox: Vec<Event>,
}

impl Saga {
    /// Removes and returns up to `limit` entries of `index` older than `before`, oldest first.
    fn take_older(
        index: &mut BTreeSet<(DateTime<Utc>, String)>,
        before: DateTime<Utc>,
        limit: usize,
    ) -> Vec<(DateTime<Utc>, String)> {
        let mut taken = Vec::new();
        while taken.len() < limit {
            match index.first() {
                Some((at, _)) if *at < before => taken.extend(index.pop_first()),
                _ => break,
            }
        }
        taken
    }
}

/// Saga state in process memory. Commits are atomic (one lock); state is lost with the process,
/// but survives a new [`SagaManager`](super::SagaManager) over the same store (a "restart" in
/// tests).
#[derive(Default)]
pub struct InMemorySagaStore {
    sagas: Mutex<HashMap<String, Saga>>,
}

impl std::fmt::Debug for InMemorySagaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemorySagaStore").finish_non_exhaustive()
    }
}

impl InMemorySagaStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many instances of `saga` exist.
    pub fn instance_count(&self, saga: &str) -> usize {
        self.lock().get(saga).map_or(0, |s| s.instances.len())
    }

    /// How many handled event ids the instances of `saga` hold.
    pub fn handled_count(&self, saga: &str) -> usize {
        self.lock()
            .get(saga)
            .map_or(0, |s| s.instances.values().map(|e| e.handled.len()).sum())
    }

    /// How many tombstones of pruned instances of `saga` exist.
    pub fn tombstone_count(&self, saga: &str) -> usize {
        self.lock().get(saga).map_or(0, |s| s.tombstones.len())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Saga>> {
        // Every critical section leaves the maps consistent, so a poisoned lock is still usable.
        sync::lock(&self.sagas)
    }
}

#[async_trait]
impl SagaStore for InMemorySagaStore {
    async fn load(&self, saga: &str, correlation_id: &str, event_id: Uuid) -> Result<LoadedSaga> {
        let sagas = self.lock();
        let Some(s) = sagas.get(saga) else {
            return Ok(LoadedSaga {
                instance: None,
                already_handled: false,
                pruned: false,
            });
        };
        let entry = s.instances.get(correlation_id);
        Ok(LoadedSaga {
            instance: entry.map(|e| e.instance.clone()),
            already_handled: entry.is_some_and(|e| e.handled.contains(&event_id)),
            pruned: s.tombstones.contains_key(correlation_id),
        })
    }

    async fn commit(&self, saga: &str, commit: SagaCommit) -> Result<CommitOutcome> {
        let mut sagas = self.lock();
        let s = sagas.entry(saga.to_owned()).or_default();
        let conflict = |actual| Error::Conflict {
            stream: format!("saga:{saga}:{}", commit.correlation_id),
            expected: ExpectedVersion::Exact(commit.expected_version),
            actual,
        };
        // Checks first, then writes: a rejected commit leaves nothing behind.
        let actual = match s.instances.get(&commit.correlation_id) {
            Some(entry) if entry.handled.contains(&commit.handled_event) => {
                return Ok(CommitOutcome::AlreadyHandled);
            }
            Some(entry) => entry.instance.version,
            // A pruned instance is not created again: the manager reloads and sees it pruned.
            None if s.tombstones.contains_key(&commit.correlation_id) => {
                return Err(conflict(0));
            }
            None => 0,
        };
        if actual != commit.expected_version {
            return Err(conflict(actual));
        }
        let completed_at = commit.completed.then(Utc::now);
        let instance = SagaInstance {
            correlation_id: commit.correlation_id.clone(),
            state: commit.state,
            version: actual + 1,
            completed: commit.completed,
            deadlines: commit.deadlines,
        };
        let entry = match s.instances.entry(commit.correlation_id.clone()) {
            MapEntry::Occupied(occupied) => {
                let entry = occupied.into_mut();
                entry.instance = instance;
                entry
            }
            MapEntry::Vacant(vacant) => vacant.insert(Entry {
                instance,
                handled: HashSet::new(),
                completed_at: None,
            }),
        };
        if let Some(at) = entry.completed_at.take() {
            s.completed.remove(&(at, commit.correlation_id.clone()));
        }
        entry.handled.insert(commit.handled_event);
        entry.completed_at = completed_at;
        if let Some(at) = completed_at {
            s.completed.insert((at, commit.correlation_id));
        }
        s.outbox.extend(commit.outbox);
        Ok(CommitOutcome::Committed)
    }

    async fn due_deadlines(
        &self,
        saga: &str,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<(String, Deadline)>> {
        let sagas = self.lock();
        let Some(s) = sagas.get(saga) else {
            return Ok(Vec::new());
        };
        let mut due: Vec<(String, Deadline)> = s
            .instances
            .iter()
            .flat_map(|(c, e)| {
                e.instance
                    .deadlines
                    .iter()
                    .filter(|d| d.due_at <= now)
                    .map(move |d| (c.clone(), d.clone()))
            })
            .collect();
        due.sort_by_key(|(_, d)| d.due_at);
        due.truncate(limit);
        Ok(due)
    }

    async fn pending_outbox(&self, saga: &str, limit: usize) -> Result<Vec<Event>> {
        let sagas = self.lock();
        Ok(sagas
            .get(saga)
            .map(|s| s.outbox.iter().take(limit).cloned().collect())
            .unwrap_or_default())
    }

    async fn ack_outbox(&self, saga: &str, event_ids: &[Uuid]) -> Result<()> {
        let mut sagas = self.lock();
        if let Some(s) = sagas.get_mut(saga) {
            let ids: HashSet<&Uuid> = event_ids.iter().collect();
            s.outbox.retain(|e| !ids.contains(&e.id));
        }
        Ok(())
    }

    async fn prune(
        &self,
        saga: &str,
        completed_before: DateTime<Utc>,
        limit: usize,
    ) -> Result<u64> {
        let mut sagas = self.lock();
        let Some(s) = sagas.get_mut(saga) else {
            return Ok(0);
        };
        let taken = Saga::take_older(&mut s.completed, completed_before, limit);
        for (at, correlation_id) in &taken {
            s.instances.remove(correlation_id);
            if let Some(old) = s.tombstones.insert(correlation_id.clone(), *at) {
                s.tombstones_by_time.remove(&(old, correlation_id.clone()));
            }
        }
        let pruned = taken.len() as u64;
        s.tombstones_by_time.extend(taken);
        Ok(pruned)
    }

    async fn prune_tombstones(
        &self,
        saga: &str,
        completed_before: DateTime<Utc>,
        limit: usize,
    ) -> Result<u64> {
        let mut sagas = self.lock();
        let Some(s) = sagas.get_mut(saga) else {
            return Ok(0);
        };
        let taken = Saga::take_older(&mut s.tombstones_by_time, completed_before, limit);
        for (_, correlation_id) in &taken {
            s.tombstones.remove(correlation_id);
        }
        Ok(taken.len() as u64)
    }
}
