//! The stores beside the events, in the same database: [`SqliteSnapshotStore`],
//! [`SqliteCheckpointStore`] and [`SqliteDeadLetterStore`].

use async_trait::async_trait;
use sqlx::Row;
use uuid::Uuid;

use super::rows::{from_micros, micros, to_i64};
use super::sql;
use super::store::SqliteEventStore;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::store::dead_letter::{DeadLetterStore, ParkedEvent, validate_source};
use crate::store::{CheckpointStore, Snapshot, SnapshotStore, validate_stream_id};

/// Keeps the latest [`Snapshot`] per stream in the `snapshots` table; from
/// [`SqliteEventStore::snapshots`].
#[derive(Debug, Clone)]
pub struct SqliteSnapshotStore {
    store: SqliteEventStore,
}

impl SqliteSnapshotStore {
    pub(super) fn new(store: SqliteEventStore) -> Self {
        SqliteSnapshotStore { store }
    }
}

#[async_trait]
impl SnapshotStore for SqliteSnapshotStore {
    async fn load_snapshot(&self, stream_id: &str) -> Result<Option<Snapshot>> {
        let row = sqlx::query(sql::LOAD_SNAPSHOT)
            .bind(stream_id)
            .fetch_optional(&self.store.inner.pool)
            .await
            .map_err(|e| self.store.map(e))?;
        let Some(row) = row else { return Ok(None) };
        let column = |e| self.store.map(e);
        let state: &str = row.try_get(3).map_err(column)?;
        let version: i64 = row.try_get(1).map_err(column)?;
        let schema_version: i64 = row.try_get(2).map_err(column)?;
        Ok(Some(Snapshot {
            stream_id: row.try_get(0).map_err(column)?,
            version: u64::try_from(version).unwrap_or(0),
            schema_version: u32::try_from(schema_version).unwrap_or(0),
            state: serde_json::from_str(state).map_err(|e| Error::decode("<snapshot>", e))?,
            taken_at: from_micros(row.try_get(4).map_err(column)?),
        }))
    }

    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<()> {
        validate_stream_id(&snapshot.stream_id)?;
        let state = serde_json::to_string(&snapshot.state).map_err(|source| Error::Encode {
            event_type: "<snapshot>".into(),
            source,
        })?;
        let mut write = self.store.begin_write().await?;
        sqlx::query(sql::SAVE_SNAPSHOT)
            .bind(&snapshot.stream_id)
            .bind(to_i64(snapshot.version, "snapshot version")?)
            .bind(i64::from(snapshot.schema_version))
            .bind(state)
            .bind(micros(snapshot.taken_at))
            .execute(&mut *write.tx)
            .await
            .map_err(|e| self.store.map(e))?;
        write.tx.commit().await.map_err(|e| self.store.map(e))
    }
}

/// Keeps named reader positions (relays, forwarders, projections) in the `checkpoints` table;
/// from [`SqliteEventStore::checkpoints`]. A checkpoint never moves backwards except through
/// [`reset_checkpoint`](CheckpointStore::reset_checkpoint).
#[derive(Debug, Clone)]
pub struct SqliteCheckpointStore {
    store: SqliteEventStore,
}

impl SqliteCheckpointStore {
    pub(super) fn new(store: SqliteEventStore) -> Self {
        SqliteCheckpointStore { store }
    }
}

pub(super) fn validate_checkpoint_name(name: &str) -> Result<()> {
    if name.is_empty() || name.contains('\0') {
        return Err(Error::InvalidArgument(format!(
            "invalid checkpoint name {name:?}: must be non-empty without NUL"
        )));
    }
    Ok(())
}

#[async_trait]
impl CheckpointStore for SqliteCheckpointStore {
    async fn load_checkpoint(&self, name: &str) -> Result<u64> {
        let position: Option<i64> = sqlx::query_scalar(sql::LOAD_CHECKPOINT)
            .bind(name)
            .fetch_optional(&self.store.inner.pool)
            .await
            .map_err(|e| self.store.map(e))?;
        Ok(position.and_then(|p| u64::try_from(p).ok()).unwrap_or(0))
    }

    async fn save_checkpoint(&self, name: &str, position: u64) -> Result<()> {
        validate_checkpoint_name(name)?;
        let mut write = self.store.begin_write().await?;
        sqlx::query(sql::SAVE_CHECKPOINT)
            .bind(name)
            .bind(to_i64(position, "checkpoint position")?)
            .execute(&mut *write.tx)
            .await
            .map_err(|e| self.store.map(e))?;
        write.tx.commit().await.map_err(|e| self.store.map(e))
    }

    async fn reset_checkpoint(&self, name: &str) -> Result<()> {
        validate_checkpoint_name(name)?;
        let mut write = self.store.begin_write().await?;
        sqlx::query(sql::RESET_CHECKPOINT)
            .bind(name)
            .execute(&mut *write.tx)
            .await
            .map_err(|e| self.store.map(e))?;
        write.tx.commit().await.map_err(|e| self.store.map(e))
    }
}

/// Keeps dead letters in the `dead_letters` table; from [`SqliteEventStore::dead_letters`].
#[derive(Debug, Clone)]
pub struct SqliteDeadLetterStore {
    store: SqliteEventStore,
}

impl SqliteDeadLetterStore {
    pub(super) fn new(store: SqliteEventStore) -> Self {
        SqliteDeadLetterStore { store }
    }

    fn decode(&self, row: &sqlx::sqlite::SqliteRow) -> Result<ParkedEvent> {
        let column = |e| self.store.map(e);
        let event: &str = row.try_get(2).map_err(column)?;
        let event: Event =
            serde_json::from_str(event).map_err(|e| Error::decode("<dead letter>", e))?;
        let attempts: i64 = row.try_get(5).map_err(column)?;
        Ok(ParkedEvent {
            id: row.try_get(0).map_err(column)?,
            source: row.try_get(1).map_err(column)?,
            event,
            reason: row.try_get(3).map_err(column)?,
            error: row.try_get(4).map_err(column)?,
            attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
            parked_at: from_micros(row.try_get(6).map_err(column)?),
        })
    }
}

#[async_trait]
impl DeadLetterStore for SqliteDeadLetterStore {
    async fn park(&self, parked: ParkedEvent) -> Result<()> {
        validate_source(&parked.source)?;
        let event = serde_json::to_string(&parked.event).map_err(|source| Error::Encode {
            event_type: parked.event.event_type.clone(),
            source,
        })?;
        let mut write = self.store.begin_write().await?;
        sqlx::query(sql::DEAD_LETTER_PARK)
            .bind(parked.id)
            .bind(&parked.source)
            .bind(parked.event.id)
            .bind(event)
            .bind(&parked.reason)
            .bind(&parked.error)
            .bind(i64::from(parked.attempts))
            .bind(micros(parked.parked_at))
            .execute(&mut *write.tx)
            .await
            .map_err(|e| self.store.map(e))?;
        write.tx.commit().await.map_err(|e| self.store.map(e))
    }

    async fn list(&self, source: &str, limit: usize) -> Result<Vec<ParkedEvent>> {
        let rows = sqlx::query(sql::DEAD_LETTER_LIST)
            .bind(source)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.store.inner.pool)
            .await
            .map_err(|e| self.store.map(e))?;
        rows.iter().map(|r| self.decode(r)).collect()
    }

    async fn take(&self, id: Uuid) -> Result<Option<ParkedEvent>> {
        let mut write = self.store.begin_write().await?;
        let row = sqlx::query(sql::DEAD_LETTER_TAKE)
            .bind(id)
            .fetch_optional(&mut *write.tx)
            .await
            .map_err(|e| self.store.map(e))?;
        write.tx.commit().await.map_err(|e| self.store.map(e))?;
        row.map(|r| self.decode(&r)).transpose()
    }

    async fn discard(&self, id: Uuid) -> Result<bool> {
        Ok(self.take(id).await?.is_some())
    }

    async fn count(&self, source: &str) -> Result<u64> {
        let n: i64 = sqlx::query_scalar(sql::DEAD_LETTER_COUNT)
            .bind(source)
            .fetch_one(&self.store.inner.pool)
            .await
            .map_err(|e| self.store.map(e))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}
