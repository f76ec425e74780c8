//! [`SqliteLeaseStore`]: leases with fencing in the store's SQLite file, for the processes of one
//! node (see [`lease`](crate::lease)). Every operation is one write transaction (the store's
//! writer lock and `BEGIN IMMEDIATE`), so a claim, a renewal and a fenced checkpoint write each
//! see and change the lease row with no other writer in between: a fenced write and a takeover
//! are serialized, and a stale owner's write either commits before the takeover or fails with
//! [`Error::LeaseLost`]. Expiry uses the node's clock (every process sharing the file runs on
//! it).

use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use sqlx::SqliteConnection;

use super::rows::{from_micros, micros, to_i64};
use super::sql;
use super::store::SqliteEventStore;
use crate::error::{Error, Result};
use crate::lease::{Lease, LeaseStore};

/// Leases, fenced checkpoints (in the `checkpoints` table the store's
/// [`SqliteCheckpointStore`](super::SqliteCheckpointStore) reads) and membership; from
/// [`SqliteEventStore::leases`].
#[derive(Debug, Clone)]
pub struct SqliteLeaseStore {
    store: SqliteEventStore,
}

fn validate(what: &str, value: &str) -> Result<()> {
    if value.is_empty() || value.contains('\0') {
        return Err(Error::InvalidArgument(format!(
            "invalid {what} {value:?}: must be non-empty without NUL"
        )));
    }
    Ok(())
}

/// Microseconds since the epoch at which a lease of `ttl` taken now expires.
fn expiry(ttl: Duration) -> Result<i64> {
    if ttl.is_zero() {
        return Err(Error::InvalidArgument(
            "a lease time-to-live must be above zero".into(),
        ));
    }
    let ttl = i64::try_from(ttl.as_micros())
        .map_err(|_| Error::InvalidArgument(format!("lease time-to-live {ttl:?} is too long")))?;
    micros(Utc::now())
        .checked_add(ttl)
        .ok_or_else(|| Error::InvalidArgument(format!("lease time-to-live {ttl} µs is too long")))
}

impl SqliteLeaseStore {
    pub(super) fn new(store: SqliteEventStore) -> Self {
        SqliteLeaseStore { store }
    }

    async fn get(
        &self,
        conn: &mut SqliteConnection,
        name: &str,
        partition: u32,
    ) -> Result<Option<(String, i64, i64)>> {
        sqlx::query_as(sql::LEASE_GET)
            .bind(name)
            .bind(i64::from(partition))
            .fetch_optional(conn)
            .await
            .map_err(|e| self.store.map(e))
    }

    async fn put(&self, conn: &mut SqliteConnection, lease: &Lease) -> Result<()> {
        sqlx::query(sql::LEASE_PUT)
            .bind(&lease.name)
            .bind(i64::from(lease.partition))
            .bind(&lease.owner)
            .bind(lease.epoch)
            .bind(micros(lease.expires_at))
            .execute(conn)
            .await
            .map_err(|e| self.store.map(e))?;
        Ok(())
    }

    /// Whether `lease` is held by its owner at its epoch (and, with `live`, not expired).
    async fn holds(&self, conn: &mut SqliteConnection, lease: &Lease, live: bool) -> Result<bool> {
        let now = micros(Utc::now());
        Ok(matches!(
            self.get(conn, &lease.name, lease.partition).await?,
            Some((owner, epoch, expires_at))
                if owner == lease.owner && epoch == lease.epoch && (!live || expires_at > now)
        ))
    }
}

#[async_trait]
impl LeaseStore for SqliteLeaseStore {
    async fn try_acquire(
        &self,
        name: &str,
        partition: u32,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>> {
        validate("lease name", name)?;
        validate("lease owner", owner)?;
        let expires_at = expiry(ttl)?;
        let now = micros(Utc::now());
        let mut write = self.store.begin_write().await?;
        let epoch = match self.get(&mut write.tx, name, partition).await? {
            None => 1,
            Some((held, epoch, until)) if until > now && held == owner => epoch,
            Some((_, _, until)) if until > now => return Ok(None),
            Some((_, epoch, _)) => epoch + 1,
        };
        let lease = Lease {
            name: name.to_owned(),
            partition,
            owner: owner.to_owned(),
            epoch,
            expires_at: from_micros(expires_at),
        };
        self.put(&mut write.tx, &lease).await?;
        write.tx.commit().await.map_err(|e| self.store.map(e))?;
        Ok(Some(lease))
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Option<Lease>> {
        let expires_at = expiry(ttl)?;
        let mut write = self.store.begin_write().await?;
        if !self.holds(&mut write.tx, lease, true).await? {
            return Ok(None);
        }
        let renewed = Lease {
            expires_at: from_micros(expires_at),
            ..lease.clone()
        };
        self.put(&mut write.tx, &renewed).await?;
        write.tx.commit().await.map_err(|e| self.store.map(e))?;
        Ok(Some(renewed))
    }

    async fn release(&self, lease: &Lease) -> Result<bool> {
        let mut write = self.store.begin_write().await?;
        let Some((owner, epoch, until)) = self
            .get(&mut write.tx, &lease.name, lease.partition)
            .await?
        else {
            return Ok(false);
        };
        if owner != lease.owner || epoch != lease.epoch {
            return Ok(false);
        }
        // Kept, expired: the next claim increments the epoch.
        let released = Lease {
            expires_at: from_micros(until.min(micros(Utc::now()))),
            ..lease.clone()
        };
        self.put(&mut write.tx, &released).await?;
        write.tx.commit().await.map_err(|e| self.store.map(e))?;
        Ok(true)
    }

    async fn list(&self, name: Option<&str>) -> Result<Vec<Lease>> {
        let rows: Vec<(String, i64, String, i64, i64)> = sqlx::query_as(sql::LEASE_LIST)
            .bind(name)
            .fetch_all(self.store.pool())
            .await
            .map_err(|e| self.store.map(e))?;
        Ok(rows
            .into_iter()
            .map(|(name, partition, owner, epoch, expires_at)| Lease {
                name,
                partition: u32::try_from(partition).unwrap_or(u32::MAX),
                owner,
                epoch,
                expires_at: from_micros(expires_at),
            })
            .collect())
    }

    async fn fenced_checkpoint(
        &self,
        lease: &Lease,
        checkpoint: &str,
        position: u64,
    ) -> Result<()> {
        validate("checkpoint name", checkpoint)?;
        let position = to_i64(position, "checkpoint position")?;
        let mut write = self.store.begin_write().await?;
        if !self.holds(&mut write.tx, lease, false).await? {
            return Err(lease.lost());
        }
        sqlx::query(sql::SAVE_CHECKPOINT)
            .bind(checkpoint)
            .bind(position)
            .execute(&mut *write.tx)
            .await
            .map_err(|e| self.store.map(e))?;
        write.tx.commit().await.map_err(|e| self.store.map(e))
    }

    async fn join(&self, group: &str, member: &str, ttl: Duration) -> Result<()> {
        validate("group", group)?;
        validate("member", member)?;
        let expires_at = expiry(ttl)?;
        let mut write = self.store.begin_write().await?;
        sqlx::query(sql::MEMBER_JOIN)
            .bind(group)
            .bind(member)
            .bind(expires_at)
            .execute(&mut *write.tx)
            .await
            .map_err(|e| self.store.map(e))?;
        write.tx.commit().await.map_err(|e| self.store.map(e))
    }

    async fn members(&self, group: &str) -> Result<Vec<String>> {
        sqlx::query_scalar(sql::MEMBERS)
            .bind(group)
            .bind(micros(Utc::now()))
            .fetch_all(self.store.pool())
            .await
            .map_err(|e| self.store.map(e))
    }

    async fn leave(&self, group: &str, member: &str) -> Result<()> {
        let mut write = self.store.begin_write().await?;
        sqlx::query(sql::MEMBER_LEAVE)
            .bind(group)
            .bind(member)
            .execute(&mut *write.tx)
            .await
            .map_err(|e| self.store.map(e))?;
        write.tx.commit().await.map_err(|e| self.store.map(e))
    }
}
