//! [`InMemorySagaStore`]: the reference [`SagaStore`], for tests and single-process services.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::{CommitOutcome, Deadline, LoadedSaga, SagaCommit, SagaInstance, SagaStore};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::handler::sync;
use crate::store::ExpectedVersion;

#[derive(Default)]
struct Entry {
    instance: Option<SagaInstance>,
    handled: HashSet<Uuid>,
}

#[derive(Default)]
struct Saga {
    instances: HashMap<String, Entry>,
    outbox: Vec<Event>,
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
        self.lock().get(saga).map_or(0, |s| {
            s.instances
                .values()
                .filter(|e| e.instance.is_some())
                .count()
        })
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
        let entry = sagas
            .get(saga)
            .and_then(|s| s.instances.get(correlation_id));
        Ok(LoadedSaga {
            instance: entry.and_then(|e| e.instance.clone()),
            already_handled: entry.is_some_and(|e| e.handled.contains(&event_id)),
        })
    }

    async fn commit(&self, saga: &str, commit: SagaCommit) -> Result<CommitOutcome> {
        let mut sagas = self.lock();
        let saga_entry = sagas.entry(saga.to_owned()).or_default();
        let entry = saga_entry
            .instances
            .entry(commit.correlation_id.clone())
            .or_default();
        if entry.handled.contains(&commit.handled_event) {
            return Ok(CommitOutcome::AlreadyHandled);
        }
        let actual = entry.instance.as_ref().map_or(0, |i| i.version);
        if actual != commit.expected_version {
            return Err(Error::Conflict {
                stream: format!("saga:{saga}:{}", commit.correlation_id),
                expected: ExpectedVersion::Exact(commit.expected_version),
                actual,
            });
        }
        entry.handled.insert(commit.handled_event);
        entry.instance = Some(SagaInstance {
            correlation_id: commit.correlation_id,
            state: commit.state,
            version: actual + 1,
            completed: commit.completed,
            deadlines: commit.deadlines,
        });
        saga_entry.outbox.extend(commit.outbox);
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
            .filter_map(|(c, e)| e.instance.as_ref().map(|i| (c, i)))
            .flat_map(|(c, i)| {
                i.deadlines
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
}
