//! Operator reads: what the `eventflow` command line (crate `eventflow-cli`) shows about a
//! store's schema — streams, checkpoints, dead letters of every source, saga instances of a
//! correlation id, pending migrations. Read-only and not on any hot path: each statement is
//! filled with the schema's names when it runs.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::dead_letter::PostgresDeadLetterStore;
use super::sql;
use super::store::PostgresEventStore;
use crate::error::{Error, Result};
use crate::saga::Deadline;
use crate::store::dead_letter::ParkedEvent;

/// One stream, as [`PostgresEventStore::streams`] lists it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct StreamSummary {
    /// The stream's id.
    pub stream_id: String,
    /// Its current version (the version of its last event).
    pub version: u64,
    /// The type of its last event.
    pub last_event_type: String,
    /// When its last event occurred (the event's `timestamp`).
    pub last_occurred_at: DateTime<Utc>,
}

/// A named reader's saved position (the relay's, a projection's), as
/// [`PostgresEventStore::list_checkpoints`] lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct CheckpointSummary {
    /// The reader's name.
    pub name: String,
    /// The global position it has handled up to.
    pub position: u64,
    /// When the position was last saved.
    pub updated_at: DateTime<Utc>,
    /// Whether an operator paused this (transactional) projection
    /// ([`set_projection_paused`](PostgresEventStore::set_projection_paused)); a partition's
    /// checkpoint (`<projection>#<partition>`) is paused with its projection.
    pub paused: bool,
}

/// An event a saga instance handled, as [`SagaSummary::handled`] lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct HandledEvent {
    /// The event's id.
    pub event_id: Uuid,
    /// Its type, when the event is in this store (`None` for one that came only from a bus).
    pub event_type: Option<String>,
    /// When the instance handled it.
    pub handled_at: DateTime<Utc>,
}

/// One saga instance, as [`PostgresEventStore::saga_instances`] lists it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct SagaSummary {
    /// The saga's name.
    pub saga: String,
    /// The instance's state, as stored.
    pub state: serde_json::Value,
    /// Its version (1 after creation, +1 per commit).
    pub version: u64,
    /// Whether it completed.
    pub completed: bool,
    /// Its pending deadlines.
    pub deadlines: Vec<Deadline>,
    /// The events it handled, in the order it handled them.
    pub handled: Vec<HandledEvent>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl PostgresEventStore {
    /// Up to `limit` streams whose id starts with `prefix` (all for `""`), by id, with their
    /// version and last event.
    ///
    /// # Errors
    /// [`Error::Connect`] or [`Error::Backend`].
    pub async fn streams(&self, prefix: &str, limit: usize) -> Result<Vec<StreamSummary>> {
        let rows: Vec<(String, i64, String, DateTime<Utc>)> =
            sqlx::query_as(&self.inner.sql.fill(sql::INSPECT_STREAMS))
                .bind(prefix)
                .bind(to_i64(limit as u64))
                .fetch_all(&self.inner.pool)
                .await
                .map_err(|e| self.map(e))?;
        Ok(rows
            .into_iter()
            .map(
                |(stream_id, version, last_event_type, last_occurred_at)| StreamSummary {
                    stream_id,
                    version: to_u64(version),
                    last_event_type,
                    last_occurred_at,
                },
            )
            .collect())
    }

    /// Every saved checkpoint of this schema (the relay's and projections'), by name.
    ///
    /// # Errors
    /// [`Error::Connect`] or [`Error::Backend`].
    pub async fn list_checkpoints(&self) -> Result<Vec<CheckpointSummary>> {
        let rows: Vec<(String, i64, DateTime<Utc>, bool)> =
            sqlx::query_as(&self.inner.sql.fill(sql::INSPECT_CHECKPOINTS))
                .fetch_all(&self.inner.pool)
                .await
                .map_err(|e| self.map(e))?;
        Ok(rows
            .into_iter()
            .map(|(name, position, updated_at, paused)| CheckpointSummary {
                name,
                position: to_u64(position),
                updated_at,
                paused,
            })
            .collect())
    }

    /// Pauses (`true`) or resumes (`false`) the transactional projection `name`
    /// ([`PgProjection`](super::PgProjection)): while paused, its runners in every process
    /// apply nothing (their status says [`RunState::Paused`](crate::projection::RunState::Paused))
    /// and read again at each commit or poll. Takes effect at their next batch; the batch in
    /// flight, if any, completes.
    ///
    /// # Errors
    /// [`Error::Connect`] or [`Error::Backend`].
    pub async fn set_projection_paused(&self, name: &str, paused: bool) -> Result<()> {
        sqlx::query(&self.inner.sql.fill(sql::INSPECT_SET_PAUSED))
            .bind(name)
            .bind(paused)
            .execute(&self.inner.pool)
            .await
            .map_err(|e| self.map(e))?;
        Ok(())
    }

    /// How many events lie after position `after` up to and including `through`: the progress
    /// of a reader between two positions, in events (positions are not dense).
    ///
    /// # Errors
    /// [`Error::Connect`] or [`Error::Backend`].
    pub async fn count_events(&self, after: u64, through: u64) -> Result<u64> {
        let n: i64 = sqlx::query_scalar(&self.inner.sql.fill(sql::INSPECT_COUNT_EVENTS))
            .bind(to_i64(after))
            .bind(to_i64(through))
            .fetch_one(&self.inner.pool)
            .await
            .map_err(|e| self.map(e))?;
        Ok(to_u64(n))
    }

    /// The instances of every saga for `correlation_id`, by saga name, with their pending
    /// deadlines and the events they handled.
    ///
    /// # Errors
    /// [`Error::Connect`], [`Error::Backend`], [`Error::Decode`] for stored JSON that does not
    /// decode.
    pub async fn saga_instances(&self, correlation_id: &str) -> Result<Vec<SagaSummary>> {
        type Row = (
            String,
            serde_json::Value,
            i64,
            bool,
            serde_json::Value,
            DateTime<Utc>,
            DateTime<Utc>,
            String,
        );
        let rows: Vec<Row> = sqlx::query_as(&self.inner.sql.fill(sql::INSPECT_SAGAS))
            .bind(correlation_id)
            .fetch_all(&self.inner.pool)
            .await
            .map_err(|e| self.map(e))?;
        rows.into_iter()
            .map(
                |(saga, state, version, completed, deadlines, created_at, updated_at, handled)| {
                    Ok(SagaSummary {
                        deadlines: serde_json::from_value(deadlines)
                            .map_err(|e| Error::decode("saga deadlines", e))?,
                        handled: serde_json::from_str(&handled)
                            .map_err(|e| Error::decode("saga handled events", e))?,
                        saga,
                        state,
                        version: to_u64(version),
                        completed,
                        created_at,
                        updated_at,
                    })
                },
            )
            .collect()
    }

    /// The versions and descriptions of the embedded migrations not yet applied to this
    /// store's schema, oldest first (all of them when the schema does not exist); empty when
    /// [`migrate`](Self::migrate) has nothing to do.
    ///
    /// # Errors
    /// [`Error::Connect`] or [`Error::Backend`].
    pub async fn pending_migrations(&self) -> Result<Vec<(i64, String)>> {
        let applied: Vec<i64> =
            match sqlx::query_scalar(&self.inner.sql.fill(sql::INSPECT_APPLIED_MIGRATIONS))
                .fetch_all(&self.inner.pool)
                .await
            {
                Ok(applied) => applied,
                // 42P01 undefined_table: the schema or sqlx's table is not there yet.
                Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("42P01") => {
                    Vec::new()
                }
                Err(e) => return Err(self.map(e)),
            };
        Ok(super::connect::embedded_migrations()
            .filter(|(version, _)| !applied.contains(version))
            .collect())
    }
}

impl PostgresDeadLetterStore {
    /// Up to `limit` dead letters of every source, oldest first.
    ///
    /// # Errors
    /// [`Error::Connect`], [`Error::Backend`], [`Error::Decode`] for a stored event that does
    /// not decode.
    pub async fn list_all(&self, limit: usize) -> Result<Vec<ParkedEvent>> {
        let rows = sqlx::query_as(&self.sql.fill(sql::INSPECT_DEAD_LETTERS))
            .bind(to_i64(limit as u64))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.map(e))?;
        rows.into_iter().map(Self::decode).collect()
    }

    /// The dead letter `id`, left parked (`None` when there is none).
    ///
    /// # Errors
    /// [`Error::Connect`], [`Error::Backend`], [`Error::Decode`].
    pub async fn get(&self, id: Uuid) -> Result<Option<ParkedEvent>> {
        let row = sqlx::query_as(&self.sql.fill(sql::INSPECT_DEAD_LETTER))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.map(e))?;
        row.map(Self::decode).transpose()
    }
}
