//! [`PostgresCheckpointStore`]: durable positions of the relay and projections.

use async_trait::async_trait;
use sqlx::PgPool;

use crate::error::{Error, Result};
use crate::store::CheckpointStore;

use super::connect::describe;
use super::error::map_sqlx;
use super::rows::to_i64;
use super::schema::Schema;
use super::sql::Sql;

/// Keeps named reader positions in the `checkpoints` table of a store's schema, so a relay or
/// projection restarts where it stopped. Get one from
/// [`PostgresEventStore::checkpoints`](super::PostgresEventStore::checkpoints), or build one with
/// [`new`](Self::new) / [`in_schema`](Self::in_schema).
#[derive(Debug, Clone)]
pub struct PostgresCheckpointStore {
    pool: PgPool,
    sql: Sql,
    target: String,
}

impl PostgresCheckpointStore {
    /// A checkpoint store over `pool` in the default schema.
    pub fn new(pool: PgPool) -> Self {
        Self::from_parts(pool, Sql::new(Schema::default_schema()))
    }

    /// A checkpoint store over `pool` in `schema`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an invalid schema name.
    pub fn in_schema(pool: PgPool, schema: &str) -> Result<Self> {
        Ok(Self::from_parts(pool, Sql::new(Schema::new(schema)?)))
    }

    pub(super) fn from_parts(pool: PgPool, sql: Sql) -> Self {
        let target = describe(&pool.connect_options());
        PostgresCheckpointStore { pool, sql, target }
    }
}

#[async_trait]
impl CheckpointStore for PostgresCheckpointStore {
    async fn load_checkpoint(&self, name: &str) -> Result<u64> {
        if name.contains('\0') {
            return Ok(0);
        }
        let position: Option<i64> = sqlx::query_scalar(&self.sql.load_checkpoint)
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| map_sqlx(&self.target, e))?;
        Ok(position.and_then(|p| u64::try_from(p).ok()).unwrap_or(0))
    }

    async fn save_checkpoint(&self, name: &str, position: u64) -> Result<()> {
        if name.is_empty() || name.contains('\0') {
            return Err(Error::InvalidArgument(format!(
                "invalid checkpoint name {name:?}: must be non-empty without NUL"
            )));
        }
        sqlx::query(&self.sql.save_checkpoint)
            .bind(name)
            .bind(to_i64(position, "checkpoint position")?)
            .execute(&self.pool)
            .await
            .map_err(|e| map_sqlx(&self.target, e))?;
        Ok(())
    }

    async fn reset_checkpoint(&self, name: &str) -> Result<()> {
        if name.is_empty() || name.contains('\0') {
            return Err(Error::InvalidArgument(format!(
                "invalid checkpoint name {name:?}: must be non-empty without NUL"
            )));
        }
        sqlx::query(&self.sql.reset_checkpoint)
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(|e| map_sqlx(&self.target, e))?;
        Ok(())
    }
}
