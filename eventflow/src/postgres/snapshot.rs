//! [`PostgresSnapshotStore`]: the latest snapshot per stream.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use sqlx::types::Json;

use crate::error::{Error, Result};
use crate::store::{Snapshot, SnapshotStore};

use super::connect::describe;
use super::error::map_sqlx;
use super::rows::to_i64;
use super::schema::Schema;
use super::sql::Sql;

/// Keeps the latest [`Snapshot`] of each stream in the `snapshots` table of a store's schema.
/// Get one from [`PostgresEventStore::snapshots`](super::PostgresEventStore::snapshots), or
/// build one with [`new`](Self::new) / [`in_schema`](Self::in_schema).
#[derive(Debug, Clone)]
pub struct PostgresSnapshotStore {
    pool: PgPool,
    sql: Sql,
    target: String,
}

impl PostgresSnapshotStore {
    /// A snapshot store over `pool` in the default schema.
    pub fn new(pool: PgPool) -> Self {
        Self::from_parts(pool, Sql::new(Schema::default_schema()))
    }

    /// A snapshot store over `pool` in `schema`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an invalid schema name.
    pub fn in_schema(pool: PgPool, schema: &str) -> Result<Self> {
        Ok(Self::from_parts(pool, Sql::new(Schema::new(schema)?)))
    }

    pub(super) fn from_parts(pool: PgPool, sql: Sql) -> Self {
        let target = describe(&pool.connect_options());
        PostgresSnapshotStore { pool, sql, target }
    }
}

#[async_trait]
impl SnapshotStore for PostgresSnapshotStore {
    async fn load_snapshot(&self, stream_id: &str) -> Result<Option<Snapshot>> {
        if stream_id.contains('\0') {
            return Ok(None);
        }
        let row: Option<(String, i64, i32, Json<serde_json::Value>, DateTime<Utc>)> =
            sqlx::query_as(&self.sql.load_snapshot)
                .bind(stream_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| map_sqlx(&self.target, e))?;
        Ok(row.map(
            |(stream_id, version, schema_version, Json(state), taken_at)| Snapshot {
                stream_id,
                version: u64::try_from(version).unwrap_or(0),
                schema_version: u32::try_from(schema_version).unwrap_or(0),
                state,
                taken_at,
            },
        ))
    }

    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<()> {
        crate::store::validate_stream_id(&snapshot.stream_id)?;
        let schema_version = i32::try_from(snapshot.schema_version).map_err(|_| {
            Error::InvalidArgument(format!(
                "snapshot schema version {} is over {}",
                snapshot.schema_version,
                i32::MAX
            ))
        })?;
        let state = serde_json::to_string(&snapshot.state).map_err(|source| Error::Encode {
            event_type: "<snapshot>".to_owned(),
            source,
        })?;
        sqlx::query(&self.sql.save_snapshot)
            .bind(&snapshot.stream_id)
            .bind(to_i64(snapshot.version, "snapshot version")?)
            .bind(schema_version)
            .bind(state)
            .bind(snapshot.taken_at)
            .execute(&self.pool)
            .await
            .map_err(|e| map_sqlx(&self.target, e))?;
        Ok(())
    }

    fn colocation(&self) -> Option<String> {
        Some(colocation(&self.target, self.sql.schema.name()))
    }
}

/// The [`SnapshotStore::colocation`] key of snapshots in `schema` of the database `target`
/// describes: an event store in the same schema of the same database reads them in one
/// statement with its events.
pub(super) fn colocation(target: &str, schema: &str) -> String {
    format!("postgres {target} schema {schema}")
}
