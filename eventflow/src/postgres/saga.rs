//! [`PostgresSagaStore`]: saga instances, handled event ids, deadlines and
//! the outbox in PostgreSQL: the `saga_*` tables of `migrations/0002_projections_sagas.sql`, in
//! the event store's schema (created by `PostgresEventStore::migrate`).
//!
//! A commit is one transaction: it records the handled event id (primary key: a redelivered
//! event finds it and writes nothing), creates the instance (primary key on (saga, correlation
//! id): of two racing creations one finds the row and gets [`Error::Conflict`]) or updates it
//! only at the expected version, and writes the outbox.
//!
//! Retention (`migrations/0004_saga_retention.sql`): `prune` moves completed instances to
//! `saga_tombstones` and deletes their `saga_handled` rows, one statement per batch.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::connect::{describe, migrate_schema};
use super::error::{BACKEND, map_sqlx};
use super::schema::Schema;
use super::sql::Sql;
use super::store::PostgresEventStore;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::saga::{CommitOutcome, Deadline, LoadedSaga, SagaCommit, SagaInstance, SagaStore};
use crate::store::ExpectedVersion;

/// Saga state in PostgreSQL, in the tables of one schema (run `PostgresEventStore::migrate` or
/// [`migrate`](Self::migrate) first).
#[derive(Debug, Clone)]
pub struct PostgresSagaStore {
    pool: PgPool,
    sql: Sql,
    /// The server, for errors (no password).
    target: String,
}

impl PostgresSagaStore {
    /// A store over `pool` with its tables in `schema`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an invalid schema name.
    pub fn new(pool: PgPool, schema: &str) -> Result<Self> {
        let sql = Sql::new(Schema::new(schema)?);
        Ok(PostgresSagaStore {
            target: describe(&pool.connect_options()),
            pool,
            sql,
        })
    }

    /// A store in the same pool and schema as an event store.
    ///
    /// # Errors
    /// None in practice: the event store's schema name is already valid.
    pub fn for_store(store: &PostgresEventStore) -> Result<Self> {
        Self::new(store.pool().clone(), store.schema())
    }

    /// Creates the schema and its tables if needed (all of eventflow's migrations).
    ///
    /// # Errors
    /// Backend errors.
    pub async fn migrate(&self) -> Result<()> {
        migrate_schema(&self.pool, &self.sql).await
    }

    /// How many instances of `saga` exist.
    ///
    /// # Errors
    /// Backend errors.
    pub async fn instance_count(&self, saga: &str) -> Result<u64> {
        let n: i64 = sqlx::query_scalar(&self.sql.saga_instance_count)
            .bind(saga)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.map(e))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// How many handled event ids the instances of `saga` hold.
    ///
    /// # Errors
    /// Backend errors.
    pub async fn handled_count(&self, saga: &str) -> Result<u64> {
        self.count(&self.sql.saga_handled_count, saga).await
    }

    /// How many tombstones of pruned instances of `saga` exist.
    ///
    /// # Errors
    /// Backend errors.
    pub async fn tombstone_count(&self, saga: &str) -> Result<u64> {
        self.count(&self.sql.saga_tombstone_count, saga).await
    }

    async fn count(&self, statement: &str, saga: &str) -> Result<u64> {
        let n: i64 = sqlx::query_scalar(statement)
            .bind(saga)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.map(e))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

impl PostgresSagaStore {
    fn map(&self, error: sqlx::Error) -> Error {
        map_sqlx(&self.target, error)
    }
}

fn json_error(what: &str, e: serde_json::Error) -> Error {
    Error::decode(what.to_owned(), e)
}

fn conflict(saga: &str, commit: &SagaCommit, actual: u64) -> Error {
    Error::Conflict {
        stream: format!("saga:{saga}:{}", commit.correlation_id),
        expected: ExpectedVersion::Exact(commit.expected_version),
        actual,
    }
}

#[async_trait]
impl SagaStore for PostgresSagaStore {
    async fn load(&self, saga: &str, correlation_id: &str, event_id: Uuid) -> Result<LoadedSaga> {
        type Row = (
            Option<serde_json::Value>,
            Option<i64>,
            Option<bool>,
            Option<serde_json::Value>,
            bool,
            bool,
        );
        let row: Row = sqlx::query_as(&self.sql.saga_load)
            .bind(saga)
            .bind(correlation_id)
            .bind(event_id)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.map(e))?;
        let (state, version, completed, deadlines, already_handled, pruned) = row;
        let instance = match (state, version) {
            (Some(state), Some(version)) => Some(SagaInstance {
                correlation_id: correlation_id.to_owned(),
                state,
                version: u64::try_from(version).unwrap_or(0),
                completed: completed.unwrap_or(false),
                deadlines: match deadlines {
                    Some(d) => {
                        serde_json::from_value(d).map_err(|e| json_error("saga deadlines", e))?
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
        // In a task of its own, so a caller that gives up (a dropped future) never cancels the
        // transaction half-way: sqlx can then return a connection to the pool that is still
        // inside a transaction.
        let store = self.clone();
        let saga = saga.to_owned();
        tokio::spawn(async move { store.commit_now(&saga, commit).await })
            .await
            .map_err(|e| Error::backend(BACKEND, e))?
    }

    async fn due_deadlines(
        &self,
        saga: &str,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<(String, Deadline)>> {
        self.due_deadlines_now(saga, now, limit).await
    }

    async fn pending_outbox(&self, saga: &str, limit: usize) -> Result<Vec<Event>> {
        self.pending_outbox_now(saga, limit).await
    }

    async fn ack_outbox(&self, saga: &str, event_ids: &[Uuid]) -> Result<()> {
        self.ack_outbox_now(saga, event_ids).await
    }

    async fn prune(
        &self,
        saga: &str,
        completed_before: DateTime<Utc>,
        limit: usize,
    ) -> Result<u64> {
        let n: i64 = sqlx::query_scalar(&self.sql.saga_prune)
            .bind(saga)
            .bind(completed_before)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.map(e))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn prune_tombstones(
        &self,
        saga: &str,
        completed_before: DateTime<Utc>,
        limit: usize,
    ) -> Result<u64> {
        let done = sqlx::query(&self.sql.saga_prune_tombstones)
            .bind(saga)
            .bind(completed_before)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .execute(&self.pool)
            .await
            .map_err(|e| self.map(e))?;
        Ok(done.rows_affected())
    }
}

impl PostgresSagaStore {
    async fn commit_now(&self, saga: &str, commit: SagaCommit) -> Result<CommitOutcome> {
        let deadlines =
            serde_json::to_value(&commit.deadlines).map_err(|source| Error::Encode {
                event_type: "saga deadlines".to_owned(),
                source,
            })?;
        let next_deadline = commit.deadlines.iter().map(|d| d.due_at).min();
        let expected = i64::try_from(commit.expected_version)
            .map_err(|_| Error::InvalidArgument("saga version over i64".into()))?;

        let mut tx = self.pool.begin().await.map_err(|e| self.map(e))?;
        let recorded = sqlx::query(&self.sql.saga_record_handled)
            .bind(saga)
            .bind(&commit.correlation_id)
            .bind(commit.handled_event)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.map(e))?;
        if recorded.rows_affected() == 0 {
            return Ok(CommitOutcome::AlreadyHandled);
        }

        let written = if commit.expected_version == 0 {
            sqlx::query(&self.sql.saga_create)
                .bind(saga)
                .bind(&commit.correlation_id)
                .bind(&commit.state)
                .bind(commit.completed)
                .bind(&deadlines)
                .bind(next_deadline)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.map(e))?
        } else {
            sqlx::query(&self.sql.saga_update)
                .bind(saga)
                .bind(&commit.correlation_id)
                .bind(&commit.state)
                .bind(commit.completed)
                .bind(&deadlines)
                .bind(next_deadline)
                .bind(expected)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.map(e))?
        };
        if written.rows_affected() == 0 {
            drop(tx);
            let actual: Option<i64> = sqlx::query_scalar(&self.sql.saga_version)
                .bind(saga)
                .bind(&commit.correlation_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| self.map(e))?;
            let actual = actual.map_or(0, |v| u64::try_from(v).unwrap_or(0));
            return Err(conflict(saga, &commit, actual));
        }

        if !commit.outbox.is_empty() {
            let ids: Vec<Uuid> = commit.outbox.iter().map(|e| e.id).collect();
            let events = commit
                .outbox
                .iter()
                .map(|e| {
                    serde_json::to_value(e).map_err(|source| Error::Encode {
                        event_type: e.event_type.clone(),
                        source,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            sqlx::query(&self.sql.saga_outbox_insert)
                .bind(saga)
                .bind(&ids)
                .bind(&events)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.map(e))?;
        }
        tx.commit().await.map_err(|e| self.map(e))?;
        Ok(CommitOutcome::Committed)
    }

    async fn due_deadlines_now(
        &self,
        saga: &str,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<(String, Deadline)>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows: Vec<(String, serde_json::Value)> = sqlx::query_as(&self.sql.saga_due_deadlines)
            .bind(saga)
            .bind(now)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.map(e))?;
        let mut due = Vec::new();
        for (correlation_id, deadlines) in rows {
            let deadlines: Vec<Deadline> =
                serde_json::from_value(deadlines).map_err(|e| json_error("saga deadlines", e))?;
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

    async fn pending_outbox_now(&self, saga: &str, limit: usize) -> Result<Vec<Event>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows: Vec<serde_json::Value> = sqlx::query_scalar(&self.sql.saga_pending_outbox)
            .bind(saga)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.map(e))?;
        rows.into_iter()
            .map(|v| serde_json::from_value(v).map_err(|e| json_error("saga outbox event", e)))
            .collect()
    }

    async fn ack_outbox_now(&self, saga: &str, event_ids: &[Uuid]) -> Result<()> {
        sqlx::query(&self.sql.saga_ack_outbox)
            .bind(saga)
            .bind(event_ids)
            .execute(&self.pool)
            .await
            .map_err(|e| self.map(e))?;
        Ok(())
    }
}
