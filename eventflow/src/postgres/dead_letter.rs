//! [`PostgresDeadLetterStore`]: parked events in the `dead_letters` table of a store's schema
//! (`migrations/0003_dead_letters.sql`).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::event::Event;
use crate::store::dead_letter::{DeadLetterStore, ParkedEvent, validate_source};

use super::connect::describe;
use super::error::map_sqlx;
use super::schema::Schema;
use super::sql::Sql;

/// Keeps parked events in the `dead_letters` table of a store's schema, so they survive a
/// restart. Get one from [`PostgresEventStore::dead_letters`](super::PostgresEventStore::dead_letters)
/// (a relay attached with [`with_bus`](crate::relay::WithBus::with_bus) uses it), or build one
/// with [`new`](Self::new) / [`in_schema`](Self::in_schema).
#[derive(Debug, Clone)]
pub struct PostgresDeadLetterStore {
    pub(super) pool: PgPool,
    pub(super) sql: Sql,
    target: String,
}

pub(super) type Row = (Uuid, String, String, String, String, i32, DateTime<Utc>);

impl PostgresDeadLetterStore {
    /// A dead-letter store over `pool` in the default schema.
    pub fn new(pool: PgPool) -> Self {
        Self::from_parts(pool, Sql::new(Schema::default_schema()))
    }

    /// A dead-letter store over `pool` in `schema`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an invalid schema name.
    pub fn in_schema(pool: PgPool, schema: &str) -> Result<Self> {
        Ok(Self::from_parts(pool, Sql::new(Schema::new(schema)?)))
    }

    pub(super) fn from_parts(pool: PgPool, sql: Sql) -> Self {
        let target = describe(&pool.connect_options());
        PostgresDeadLetterStore { pool, sql, target }
    }

    pub(super) fn map(&self, error: sqlx::Error) -> Error {
        map_sqlx(&self.target, error)
    }

    pub(super) fn decode(
        (id, source, event, reason, error, attempts, parked_at): Row,
    ) -> Result<ParkedEvent> {
        let event: Event =
            serde_json::from_str(&event).map_err(|e| Error::decode("dead letter event", e))?;
        Ok(ParkedEvent {
            id,
            source,
            event,
            reason,
            error,
            attempts: u32::try_from(attempts).unwrap_or(0),
            parked_at,
        })
    }
}

/// Text columns cannot hold NUL; an error message that carries one must still be parked.
pub(super) fn text(value: &str) -> String {
    value.replace('\0', "\u{fffd}")
}

#[async_trait]
impl DeadLetterStore for PostgresDeadLetterStore {
    async fn park(&self, parked: ParkedEvent) -> Result<()> {
        validate_source(&parked.source)?;
        // JSON text escapes NUL, so any event serde can write is stored as is.
        let event = serde_json::to_string(&parked.event).map_err(|source| Error::Encode {
            event_type: parked.event.event_type.clone(),
            source,
        })?;
        sqlx::query(&self.sql.dead_letter_park)
            .bind(parked.id)
            .bind(&parked.source)
            .bind(parked.event.id)
            .bind(event)
            .bind(text(&parked.reason))
            .bind(text(&parked.error))
            .bind(i32::try_from(parked.attempts).unwrap_or(i32::MAX))
            .bind(parked.parked_at)
            .execute(&self.pool)
            .await
            .map_err(|e| map_sqlx(&self.target, e))?;
        crate::metrics::parked(&parked.source);
        Ok(())
    }

    async fn list(&self, source: &str, limit: usize) -> Result<Vec<ParkedEvent>> {
        if source.contains('\0') {
            return Ok(Vec::new());
        }
        let rows: Vec<Row> = sqlx::query_as(&self.sql.dead_letter_list)
            .bind(source)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await
            .map_err(|e| map_sqlx(&self.target, e))?;
        rows.into_iter().map(Self::decode).collect()
    }

    async fn take(&self, id: Uuid) -> Result<Option<ParkedEvent>> {
        let row: Option<Row> = sqlx::query_as(&self.sql.dead_letter_take)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| map_sqlx(&self.target, e))?;
        row.map(Self::decode).transpose()
    }

    async fn discard(&self, id: Uuid) -> Result<bool> {
        // `take` without decoding: a dead letter that no longer decodes can still be dropped.
        let row: Option<(Uuid,)> = sqlx::query_as(&self.sql.dead_letter_take)
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| map_sqlx(&self.target, e))?;
        Ok(row.is_some())
    }

    async fn count(&self, source: &str) -> Result<u64> {
        if source.contains('\0') {
            return Ok(0);
        }
        let n: i64 = sqlx::query_scalar(&self.sql.dead_letter_count)
            .bind(source)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| map_sqlx(&self.target, e))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}
