//! [`PostgresSagaStore`] (feature `postgres`): saga instances, handled event ids, deadlines and
//! the outbox in PostgreSQL: the `saga_*` tables of `migrations/0002_projections_sagas.sql`, in
//! the event store's schema (created by `PostgresEventStore::migrate`).
//!
//! A commit is one transaction: it records the handled event id (primary key: a redelivered
//! event finds it and writes nothing), creates the instance (primary key on (saga, correlation
//! id): of two racing creations one finds the row and gets [`Error::Conflict`]) or updates it
//! only at the expected version, and writes the outbox.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::{CommitOutcome, Deadline, LoadedSaga, SagaCommit, SagaInstance, SagaStore};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::projection::postgres::{pg_error, quote_schema};
use crate::store::ExpectedVersion;
use crate::store::postgres::PostgresEventStore;

/// Saga state in PostgreSQL, in the tables of one schema (run `PostgresEventStore::migrate` or
/// [`migrate`](Self::migrate) first).
#[derive(Debug, Clone)]
pub struct PostgresSagaStore {
    pool: PgPool,
    schema: String,
    /// The schema, quoted for SQL.
    q: String,
}

impl PostgresSagaStore {
    /// A store over `pool` with its tables in `schema`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an invalid schema name.
    pub fn new(pool: PgPool, schema: &str) -> Result<Self> {
        let q = quote_schema(schema)?;
        Ok(PostgresSagaStore {
            pool,
            schema: schema.to_owned(),
            q,
        })
    }

    /// A store in the same pool and schema as an event store.
    pub fn for_store(store: &PostgresEventStore) -> Result<Self> {
        Self::new(store.pool().clone(), store.schema())
    }

    /// Creates the schema and its tables if needed (all of eventflow's migrations).
    ///
    /// # Errors
    /// Backend errors.
    pub async fn migrate(&self) -> Result<()> {
        PostgresEventStore::migrate_schema(&self.pool, &self.schema).await
    }

    /// How many instances of `saga` exist.
    ///
    /// # Errors
    /// Backend errors.
    pub async fn instance_count(&self, saga: &str) -> Result<u64> {
        let n: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM {}.saga_instances WHERE saga = $1",
            self.q
        ))
        .bind(saga)
        .fetch_one(&self.pool)
        .await
        .map_err(pg_error)?;
        Ok(u64::try_from(n).unwrap_or(0))
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
        // One round trip: the instance (if any) and whether the event is recorded.
        type Row = (
            Option<serde_json::Value>,
            Option<i64>,
            Option<bool>,
            Option<serde_json::Value>,
            bool,
        );
        let row: Row = sqlx::query_as(&format!(
            "SELECT i.state, i.version, i.completed, i.deadlines, \
                    EXISTS (SELECT 1 FROM {q}.saga_handled h \
                            WHERE h.saga = $1 AND h.correlation_id = $2 AND h.event_id = $3) \
             FROM (SELECT 1) AS one \
             LEFT JOIN {q}.saga_instances i ON i.saga = $1 AND i.correlation_id = $2",
            q = self.q
        ))
        .bind(saga)
        .bind(correlation_id)
        .bind(event_id)
        .fetch_one(&self.pool)
        .await
        .map_err(pg_error)?;
        let (state, version, completed, deadlines, already_handled) = row;
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
            .map_err(|e| Error::backend("postgres", e))?
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

        let mut tx = self.pool.begin().await.map_err(pg_error)?;
        let recorded = sqlx::query(&format!(
            "INSERT INTO {q}.saga_handled (saga, correlation_id, event_id) \
             VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            q = self.q
        ))
        .bind(saga)
        .bind(&commit.correlation_id)
        .bind(commit.handled_event)
        .execute(&mut *tx)
        .await
        .map_err(pg_error)?;
        if recorded.rows_affected() == 0 {
            return Ok(CommitOutcome::AlreadyHandled);
        }

        let written = if commit.expected_version == 0 {
            // The primary key decides a creation race: the loser inserts nothing.
            sqlx::query(&format!(
                "INSERT INTO {q}.saga_instances \
                    (saga, correlation_id, state, version, completed, deadlines, next_deadline) \
                 VALUES ($1, $2, $3, 1, $4, $5, $6) ON CONFLICT DO NOTHING",
                q = self.q
            ))
            .bind(saga)
            .bind(&commit.correlation_id)
            .bind(&commit.state)
            .bind(commit.completed)
            .bind(&deadlines)
            .bind(next_deadline)
            .execute(&mut *tx)
            .await
            .map_err(pg_error)?
        } else {
            sqlx::query(&format!(
                "UPDATE {q}.saga_instances \
                 SET state = $3, version = version + 1, completed = $4, deadlines = $5, \
                     next_deadline = $6, updated_at = now() \
                 WHERE saga = $1 AND correlation_id = $2 AND version = $7",
                q = self.q
            ))
            .bind(saga)
            .bind(&commit.correlation_id)
            .bind(&commit.state)
            .bind(commit.completed)
            .bind(&deadlines)
            .bind(next_deadline)
            .bind(expected)
            .execute(&mut *tx)
            .await
            .map_err(pg_error)?
        };
        if written.rows_affected() == 0 {
            drop(tx);
            let actual: Option<i64> = sqlx::query_scalar(&format!(
                "SELECT version FROM {q}.saga_instances WHERE saga = $1 AND correlation_id = $2",
                q = self.q
            ))
            .bind(saga)
            .bind(&commit.correlation_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(pg_error)?;
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
            sqlx::query(&format!(
                "INSERT INTO {q}.saga_outbox (saga, event_id, event) \
                 SELECT $1, id, event FROM UNNEST($2::uuid[], $3::jsonb[]) WITH ORDINALITY \
                     AS t(id, event, n) ORDER BY n \
                 ON CONFLICT (saga, event_id) DO NOTHING",
                q = self.q
            ))
            .bind(saga)
            .bind(&ids)
            .bind(&events)
            .execute(&mut *tx)
            .await
            .map_err(pg_error)?;
        }
        tx.commit().await.map_err(pg_error)?;
        Ok(CommitOutcome::Committed)
    }

    async fn due_deadlines_now(
        &self,
        saga: &str,
        now: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<(String, Deadline)>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows: Vec<(String, serde_json::Value)> = sqlx::query_as(&format!(
            "SELECT correlation_id, deadlines FROM {q}.saga_instances \
             WHERE saga = $1 AND next_deadline IS NOT NULL AND next_deadline <= $2 \
             ORDER BY next_deadline LIMIT $3",
            q = self.q
        ))
        .bind(saga)
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(pg_error)?;
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
        let rows: Vec<serde_json::Value> = sqlx::query_scalar(&format!(
            "SELECT event FROM {q}.saga_outbox WHERE saga = $1 ORDER BY seq LIMIT $2",
            q = self.q
        ))
        .bind(saga)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(pg_error)?;
        rows.into_iter()
            .map(|v| serde_json::from_value(v).map_err(|e| json_error("saga outbox event", e)))
            .collect()
    }

    async fn ack_outbox_now(&self, saga: &str, event_ids: &[Uuid]) -> Result<()> {
        sqlx::query(&format!(
            "DELETE FROM {q}.saga_outbox WHERE saga = $1 AND event_id = ANY($2)",
            q = self.q
        ))
        .bind(saga)
        .bind(event_ids)
        .execute(&self.pool)
        .await
        .map_err(pg_error)?;
        Ok(())
    }
}
