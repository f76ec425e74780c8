//! Position continuity: positions count transaction ids, so after a dump and restore into a
//! cluster whose transaction-id counter is younger (or a logical-replication upgrade) new
//! positions would fall below the stored ones, and every reader with a checkpoint (the relay,
//! projections, subscriptions) would skip them without an error. The store checks before its
//! first append in each process, and in `migrate()`, and then moves positions forward with the
//! schema's stored offset (`position_base`, `migrations/0007_positions_tenants.sql`).

use std::sync::atomic::Ordering;

use sqlx::{Acquire, Executor, PgConnection};

use super::sql::Sql;
use super::store::PostgresEventStore;
use crate::error::Result;

/// Raises the schema's position offset if new positions would fall at or below the highest
/// stored one, and returns the new offset (`None`: nothing to do, the common case, one cheap
/// statement).
///
/// The raise runs under an exclusive lock on `events`: appends in flight (with the old offset)
/// finish first, none starts meanwhile, and readers wait; it happens once after a restore.
pub(crate) async fn continue_positions(
    conn: &mut PgConnection,
    sql: &Sql,
) -> std::result::Result<Option<i64>, sqlx::Error> {
    let (top, next): (i64, i64) = sqlx::query_as(&sql.positions_check)
        .fetch_one(&mut *conn)
        .await?;
    if top < next {
        return Ok(None);
    }
    let mut tx = conn.begin().await?;
    tx.execute(sql.lock_events.as_str()).await?;
    let raised: Option<i64> = sqlx::query_scalar(&sql.positions_raise)
        .fetch_optional(&mut *tx)
        .await?;
    tx.commit().await?;
    if let Some(offset) = raised {
        tracing::warn!(
            schema = sql.schema.name(),
            highest_position = top,
            xid_offset = offset,
            "postgres event store: new positions would fall below the stored ones (a restore \
             into another cluster?); moved them forward"
        );
    }
    Ok(raised)
}

impl PostgresEventStore {
    /// [`continue_positions`], once per store (and process): before the first append.
    pub(super) async fn ensure_positions_continue(&self) -> Result<()> {
        if self.inner.positions_checked.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut conn = self.inner.pool.acquire().await.map_err(|e| self.map(e))?;
        continue_positions(&mut conn, &self.inner.sql)
            .await
            .map_err(|e| self.map(e))?;
        self.inner.positions_checked.store(true, Ordering::Release);
        Ok(())
    }
}
