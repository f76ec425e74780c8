//! [`SqliteSagaStore`]: saga instances, handled event ids, deadlines and the outbox in the
//! `saga_*` tables of the store's database. A commit is one write transaction (the store's
//! writer lock and `BEGIN IMMEDIATE`): it records the handled id (primary key: a redelivered
//! event finds it and writes nothing), creates the instance (primary key on (saga, correlation
//! id); a tombstone blocks it) or updates it only at the expected version, and writes the
//! outbox.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;
use uuid::Uuid;

use super::rows::micros;
use super::sql;
use super::store::SqliteEventStore;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::saga::{CommitOutcome, Deadline, LoadedSaga, SagaCommit, SagaInstance, SagaStore};
use crate::store::ExpectedVersion;

/// Saga state in the store's SQLite database; from [`SqliteEventStore::sagas`].
#[derive(Debug, Clone)]
pub struct SqliteSagaStore {
    store: SqliteEventStore,
}

fn json_error(what: &str, e: serde_json::Error) -> Error {
    Error::decode(what.to_owned(), e)
}

fn encode_error(what: &str, source: serde_json::Error) -> Error {
    Error::Encode {
        event_type: what.to_owned(),
        source,
    }
}

impl SqliteSagaStore {
    pub(super) fn new(store: SqliteEventStore) -> Self {
        SqliteSagaStore { store }
    }

    /// How many instances of `saga` exist.
    ///
    /// # Errors
    /// Backend errors.
    pub async fn instance_count(&self, saga: &str) -> Result<u64> {
        self.count(sql::SAGA_INSTANCE_COUNT, saga).await
    }

    /// How many handled event ids the instances of `saga` hold.
    ///
    /// # Errors
    /// Backend errors.
    pub async fn handled_count(&self, saga: &str) -> Result<u64> {
        self.count(sql::SAGA_HANDLED_COUNT, saga).await
    }

    /// How many tombstones of pruned instances of `saga` exist.
    ///
    /// # Errors
    /// Backend errors.
    pub async fn tombstone_count(&self, saga: &str) -> Result<u64> {
        self.count(sql::SAGA_TOMBSTONE_COUNT, saga).await
    }

    async fn count(&self, statement: &str, saga: &str) -> Result<u64> {
        let n: i64 = sqlx::query_scalar(statement)
            .bind(saga)
            .fetch_one(&self.store.inner.pool)
            .await
            .map_err(|e| self.store.map(e))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn commit_now(&self, saga: &str, commit: SagaCommit) -> Result<CommitOutcome> {
        let map = |e| self.store.map(e);
        let deadlines = serde_json::to_string(&commit.deadlines)
            .map_err(|e| encode_error("saga deadlines", e))?;
        let state =
            serde_json::to_string(&commit.state).map_err(|e| encode_error("saga state", e))?;
        let outbox = commit
            .outbox
            .iter()
            .map(|e| {
                serde_json::to_string(e)
                    .map(|json| (e.id, json))
                    .map_err(|source| encode_error(&e.event_type, source))
            })
            .collect::<Result<Vec<_>>>()?;
        let next_deadline = commit.deadlines.iter().map(|d| micros(d.due_at)).min();
        let expected = i64::try_from(commit.expected_version)
            .map_err(|_| Error::InvalidArgument("saga version over i64".into()))?;
        let now = micros(Utc::now());

        let mut write = self.store.begin_write().await?;
        let tx = &mut *write.tx;
        let handled: bool = sqlx::query_scalar(sql::SAGA_IS_HANDLED)
            .bind(saga)
            .bind(&commit.correlation_id)
            .bind(commit.handled_event)
            .fetch_one(&mut *tx)
            .await
            .map_err(map)?;
        if handled {
            return Ok(CommitOutcome::AlreadyHandled);
        }
        let written = if commit.expected_version == 0 {
            let tombstoned: bool = sqlx::query_scalar(sql::SAGA_IS_TOMBSTONED)
                .bind(saga)
                .bind(&commit.correlation_id)
                .fetch_one(&mut *tx)
                .await
                .map_err(map)?;
            if tombstoned {
                0
            } else {
                sqlx::query(sql::SAGA_CREATE)
                    .bind(saga)
                    .bind(&commit.correlation_id)
                    .bind(&state)
                    .bind(commit.completed)
                    .bind(&deadlines)
                    .bind(next_deadline)
                    .bind(now)
                    .execute(&mut *tx)
                    .await
                    .map_err(map)?
                    .rows_affected()
            }
        } else {
            sqlx::query(sql::SAGA_UPDATE)
                .bind(&state)
                .bind(commit.completed)
                .bind(&deadlines)
                .bind(next_deadline)
                .bind(now)
                .bind(saga)
                .bind(&commit.correlation_id)
                .bind(expected)
                .execute(&mut *tx)
                .await
                .map_err(map)?
                .rows_affected()
        };
        if written == 0 {
            let actual: Option<i64> = sqlx::query_scalar(sql::SAGA_VERSION)
                .bind(saga)
                .bind(&commit.correlation_id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(map)?;
            drop(write);
            return Err(Error::Conflict {
                stream: format!("saga:{saga}:{}", commit.correlation_id),
                expected: ExpectedVersion::Exact(commit.expected_version),
                actual: actual.map_or(0, |v| u64::try_from(v).unwrap_or(0)),
            });
        }
        sqlx::query(sql::SAGA_RECORD_HANDLED)
            .bind(saga)
            .bind(&commit.correlation_id)
            .bind(commit.handled_event)
            .execute(&mut *tx)
            .await
            .map_err(map)?;
        for (id, json) in &outbox {
            sqlx::query(sql::SAGA_OUTBOX_INSERT)
                .bind(saga)
                .bind(id)
                .bind(json)
                .execute(&mut *tx)
                .await
                .map_err(map)?;
        }
        write.tx.commit().await.map_err(map)?;
        Ok(CommitOutcome::Committed)
    }
}

#[async_trait]
impl SagaStore for SqliteSagaStore {
    async fn load(&self, saga: &str, correlation_id: &str, event_id: Uuid) -> Result<LoadedSaga> {
        let map = |e| self.store.map(e);
        let row = sqlx::query(sql::SAGA_LOAD)
            .bind(saga)
            .bind(correlation_id)
            .bind(event_id)
            .fetch_one(&self.store.inner.pool)
            .await
            .map_err(map)?;
        let state: Option<String> = row.try_get(0).map_err(map)?;
        let version: Option<i64> = row.try_get(1).map_err(map)?;
        let completed: Option<bool> = row.try_get(2).map_err(map)?;
        let deadlines: Option<String> = row.try_get(3).map_err(map)?;
        let already_handled: bool = row.try_get(4).map_err(map)?;
        let pruned: bool = row.try_get(5).map_err(map)?;
        let instance = match (state, version) {
            (Some(state), Some(version)) => Some(SagaInstance {
                correlation_id: correlation_id.to_owned(),
                state: serde_json::from_str(&state).map_err(|e| json_error("saga state", e))?,
                version: u64::try_from(version).unwrap_or(0),
                completed: completed.unwrap_or(false),
                deadlines: match deadlines {
                    Some(d) => {
                        serde_json::from_str(&d).map_err(|e| json_error("saga deadlines", e))?
                    }
                    None => Vec::new(),
                },
            }),
            _ => None,
        };
        Ok(LoadedSaga {
            instance,
            already_handled,
            pruned,
        })
    }

    async fn commit(&self, saga: &str, commit: SagaCommit) -> Result<CommitOutcome> {
        // In a task of its own, so a caller that gives up never cancels the transaction
        // half-way.
        let store = self.clone();
        let saga = saga.to_owned();
        tokio::spawn(async move { store.commit_now(&saga, commit).await })
            .await
            .map_err(|e| Error::backend(super::error::BACKEND, e))?
    }

    async fn due_deadlines(
        &self,
        saga: &str,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<(String, Deadline)>> {
        let rows: Vec<(String, String)> = sqlx::query_as(sql::SAGA_DUE_DEADLINES)
            .bind(saga)
            .bind(micros(now))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.store.inner.pool)
            .await
            .map_err(|e| self.store.map(e))?;
        let mut due = Vec::new();
        for (correlation_id, deadlines) in rows {
            let deadlines: Vec<Deadline> =
                serde_json::from_str(&deadlines).map_err(|e| json_error("saga deadlines", e))?;
            due.extend(
                deadlines
                    .into_iter()
                    .filter(|d| d.due_at <= now)
                    .map(|d| (correlation_id.clone(), d)),
            );
        }
        due.sort_by_key(|(_, d)| d.due_at);
        Ok(due)
    }

    async fn pending_outbox(&self, saga: &str, limit: usize) -> Result<Vec<Event>> {
        let rows: Vec<String> = sqlx::query_scalar(sql::SAGA_PENDING_OUTBOX)
            .bind(saga)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.store.inner.pool)
            .await
            .map_err(|e| self.store.map(e))?;
        rows.iter()
            .map(|v| serde_json::from_str(v).map_err(|e| json_error("saga outbox event", e)))
            .collect()
    }

    async fn ack_outbox(&self, saga: &str, event_ids: &[Uuid]) -> Result<()> {
        let mut write = self.store.begin_write().await?;
        for id in event_ids {
            sqlx::query(sql::SAGA_ACK_OUTBOX)
                .bind(saga)
                .bind(id)
                .execute(&mut *write.tx)
                .await
                .map_err(|e| self.store.map(e))?;
        }
        write.tx.commit().await.map_err(|e| self.store.map(e))
    }

    async fn prune(
        &self,
        saga: &str,
        completed_before: DateTime<Utc>,
        limit: usize,
    ) -> Result<u64> {
        let map = |e| self.store.map(e);
        let mut write = self.store.begin_write().await?;
        let done: Vec<(String, i64)> = sqlx::query_as(sql::SAGA_PRUNABLE)
            .bind(saga)
            .bind(micros(completed_before))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&mut *write.tx)
            .await
            .map_err(map)?;
        for (correlation_id, completed_at) in &done {
            for statement in [sql::SAGA_DELETE_INSTANCE, sql::SAGA_DELETE_HANDLED] {
                sqlx::query(statement)
                    .bind(saga)
                    .bind(correlation_id)
                    .execute(&mut *write.tx)
                    .await
                    .map_err(map)?;
            }
            sqlx::query(sql::SAGA_TOMBSTONE)
                .bind(saga)
                .bind(correlation_id)
                .bind(completed_at)
                .execute(&mut *write.tx)
                .await
                .map_err(map)?;
        }
        write.tx.commit().await.map_err(map)?;
        Ok(done.len() as u64)
    }

    async fn prune_tombstones(
        &self,
        saga: &str,
        completed_before: DateTime<Utc>,
        limit: usize,
    ) -> Result<u64> {
        let mut write = self.store.begin_write().await?;
        let done = sqlx::query(sql::SAGA_PRUNE_TOMBSTONES)
            .bind(saga)
            .bind(micros(completed_before))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .execute(&mut *write.tx)
            .await
            .map_err(|e| self.store.map(e))?;
        write.tx.commit().await.map_err(|e| self.store.map(e))?;
        Ok(done.rows_affected())
    }
}
