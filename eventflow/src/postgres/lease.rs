//! [`PostgresLeaseStore`]: leases, fenced checkpoints and worker membership in a store's schema
//! (`migrations/0006_leases.sql`), and [`fenced_checkpoint`] inside a caller's transaction.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

use super::connect::describe;
use super::error::map_sqlx;
use super::rows::to_i64;
use super::schema::Schema;
use super::sql::Sql;
use crate::error::{Error, Result};
use crate::lease::{Lease, LeaseStore, validate, validate_ttl};

/// Leases in the `leases` table and members in `lease_members` of a store's schema; fenced
/// checkpoints go to the same schema's `checkpoints` table (what
/// [`PostgresCheckpointStore`](super::PostgresCheckpointStore) reads). Expiry is the
/// database's clock. Get one from [`PostgresEventStore::leases`](super::PostgresEventStore::leases)
/// or build one with [`new`](Self::new) / [`in_schema`](Self::in_schema); cheap to clone.
///
/// Every process that shares leased work must use the same schema.
#[derive(Debug, Clone)]
pub struct PostgresLeaseStore {
    pool: PgPool,
    sql: Sql,
    target: String,
}

type LeaseRow = (String, i64, String, i64, DateTime<Utc>);

fn lease_of(row: LeaseRow) -> Result<Lease> {
    let (name, partition, owner, epoch, expires_at) = row;
    Ok(Lease {
        name,
        partition: u32::try_from(partition)
            .map_err(|_| Error::decode("lease", format!("partition {partition} out of range")))?,
        owner,
        epoch,
        expires_at,
    })
}

fn micros(ttl: Duration) -> Result<i64> {
    validate_ttl(ttl)?;
    i64::try_from(ttl.as_micros())
        .map_err(|_| Error::InvalidArgument(format!("lease time-to-live {ttl:?} is out of range")))
}

impl PostgresLeaseStore {
    /// A lease store over `pool` in the default schema.
    pub fn new(pool: PgPool) -> Self {
        Self::from_parts(pool, Sql::new(Schema::default_schema()))
    }

    /// A lease store over `pool` in `schema`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an invalid schema name.
    pub fn in_schema(pool: PgPool, schema: &str) -> Result<Self> {
        Ok(Self::from_parts(pool, Sql::new(Schema::new(schema)?)))
    }

    pub(super) fn from_parts(pool: PgPool, sql: Sql) -> Self {
        let target = describe(&pool.connect_options());
        PostgresLeaseStore { pool, sql, target }
    }

    fn map(&self, error: sqlx::Error) -> Error {
        map_sqlx(&self.target, error)
    }

    /// [`LeaseStore::fenced_checkpoint`] on `conn`, inside the caller's transaction: the
    /// checkpoint commits (or rolls back) with the work it records, and the lease row stays
    /// share-locked until then, so no takeover completes in between (see [`fenced_checkpoint`]).
    ///
    /// # Errors
    /// As [`fenced_checkpoint`].
    pub async fn fenced_checkpoint_in(
        &self,
        conn: &mut PgConnection,
        lease: &Lease,
        checkpoint: &str,
        position: u64,
    ) -> Result<()> {
        fenced_write(&self.sql, &self.target, conn, lease, checkpoint, position).await
    }
}

/// Saves `position` as the checkpoint `checkpoint` in `schema`, fenced by `lease`, with one
/// statement on `conn`, typically inside the transaction that wrote the work the checkpoint
/// records (a `PgProjection`'s read model):
/// `... WHERE owner = $me AND epoch = $epoch`, holding a share lock on the lease row until the
/// transaction ends, so a takeover waits for the commit and its new owner reads the checkpoint
/// after it. It never moves a checkpoint backwards (a lower position is no error and changes
/// nothing).
///
/// Prefer [`PostgresLeaseStore::fenced_checkpoint_in`] on a hot path: this function checks the
/// schema name on every call.
///
/// # Errors
/// [`Error::LeaseLost`] when `lease` is no longer held by its owner at its epoch: nothing was
/// written, and the caller must roll back its transaction and stop that work;
/// [`Error::InvalidArgument`] for an invalid schema or checkpoint name; backend errors.
///
/// ```no_run
/// # async fn demo(store: eventflow::postgres::PostgresEventStore, lease: eventflow::lease::Lease)
/// # -> eventflow::Result<()> {
/// let mut tx = store.pool().begin().await.map_err(|e| eventflow::Error::backend("postgres", e))?;
/// // ... write the read model in `tx` ...
/// eventflow::postgres::fenced_checkpoint(&mut tx, store.schema(), &lease, "orders-view", 42).await?;
/// tx.commit().await.map_err(|e| eventflow::Error::backend("postgres", e))?;
/// # Ok(()) }
/// ```
pub async fn fenced_checkpoint(
    conn: &mut PgConnection,
    schema: &str,
    lease: &Lease,
    checkpoint: &str,
    position: u64,
) -> Result<()> {
    let sql = Sql::new(Schema::new(schema)?);
    fenced_write(&sql, "postgres", conn, lease, checkpoint, position).await
}

/// The one fenced write: see [`fenced_checkpoint`].
pub(crate) async fn fenced_write(
    sql: &Sql,
    target: &str,
    conn: &mut PgConnection,
    lease: &Lease,
    checkpoint: &str,
    position: u64,
) -> Result<()> {
    validate("checkpoint name", checkpoint)?;
    let held: i64 = sqlx::query_scalar(&sql.fenced_checkpoint)
        .bind(&lease.name)
        .bind(i64::from(lease.partition))
        .bind(&lease.owner)
        .bind(lease.epoch)
        .bind(checkpoint)
        .bind(to_i64(position, "checkpoint position")?)
        .fetch_one(conn)
        .await
        .map_err(|e| map_sqlx(target, e))?;
    if held == 0 {
        return Err(lease.lost());
    }
    Ok(())
}

#[async_trait]
impl LeaseStore for PostgresLeaseStore {
    async fn try_acquire(
        &self,
        name: &str,
        partition: u32,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>> {
        validate("lease name", name)?;
        validate("lease owner", owner)?;
        let row: Option<LeaseRow> = sqlx::query_as(&self.sql.lease_acquire)
            .bind(name)
            .bind(i64::from(partition))
            .bind(owner)
            .bind(micros(ttl)?)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.map(e))?;
        row.map(lease_of).transpose()
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Option<Lease>> {
        let row: Option<LeaseRow> = sqlx::query_as(&self.sql.lease_renew)
            .bind(&lease.name)
            .bind(i64::from(lease.partition))
            .bind(&lease.owner)
            .bind(lease.epoch)
            .bind(micros(ttl)?)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.map(e))?;
        row.map(lease_of).transpose()
    }

    async fn release(&self, lease: &Lease) -> Result<bool> {
        let done = sqlx::query(&self.sql.lease_release)
            .bind(&lease.name)
            .bind(i64::from(lease.partition))
            .bind(&lease.owner)
            .bind(lease.epoch)
            .execute(&self.pool)
            .await
            .map_err(|e| self.map(e))?;
        Ok(done.rows_affected() > 0)
    }

    async fn list(&self, name: Option<&str>) -> Result<Vec<Lease>> {
        let rows: Vec<LeaseRow> = sqlx::query_as(&self.sql.lease_list)
            .bind(name)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.map(e))?;
        rows.into_iter().map(lease_of).collect()
    }

    async fn fenced_checkpoint(
        &self,
        lease: &Lease,
        checkpoint: &str,
        position: u64,
    ) -> Result<()> {
        let mut conn = self.pool.acquire().await.map_err(|e| self.map(e))?;
        fenced_write(
            &self.sql,
            &self.target,
            &mut conn,
            lease,
            checkpoint,
            position,
        )
        .await
    }

    async fn join(&self, group: &str, member: &str, ttl: Duration) -> Result<()> {
        validate("group", group)?;
        validate("member", member)?;
        sqlx::query(&self.sql.member_join)
            .bind(group)
            .bind(member)
            .bind(micros(ttl)?)
            .execute(&self.pool)
            .await
            .map_err(|e| self.map(e))?;
        Ok(())
    }

    async fn members(&self, group: &str) -> Result<Vec<String>> {
        sqlx::query_scalar(&self.sql.members)
            .bind(group)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.map(e))
    }

    async fn leave(&self, group: &str, member: &str) -> Result<()> {
        sqlx::query(&self.sql.member_leave)
            .bind(group)
            .bind(member)
            .execute(&self.pool)
            .await
            .map_err(|e| self.map(e))?;
        Ok(())
    }
}
