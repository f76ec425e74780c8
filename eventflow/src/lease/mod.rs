//! Leases with fencing: one owner at a time for work that must not run twice (the relay of a
//! store schema, a projection or saga partition), across processes.
//!
//! A [`Lease`] names a piece of work (`name`, `partition`), its `owner` (one id per running
//! worker, never reused), an `epoch` and an expiry. A worker claims a free or expired lease with
//! [`LeaseStore::try_acquire`], which increments the epoch; it keeps it by calling
//! [`renew`](LeaseStore::renew) well within the time-to-live (a heartbeat), and gives it up with
//! [`release`](LeaseStore::release). A lease that was not renewed in time expires and the next
//! claimant takes it over with a higher epoch.
//!
//! # Fencing
//! Expiry alone cannot stop a worker that was paused (a GC pause, `SIGSTOP`, a slow disk) past
//! its lease from writing after it wakes, beside the new owner. So every checkpoint write of
//! leased work is **fenced**: [`LeaseStore::fenced_checkpoint`] (and, inside the caller's own
//! transaction, `postgres::fenced_checkpoint`) writes only while the lease row still carries
//! the writer's owner and epoch, and fails with [`Error::LeaseLost`] otherwise. In PostgreSQL
//! the fenced write holds a share lock on the lease row until its transaction ends, so a
//! takeover (which updates that row) waits for the commit and the new owner reads the
//! checkpoint after it: the work of a stale owner either committed before the takeover or not
//! at all. A fenced write never moves a checkpoint backwards.
//!
//! Expiry uses the lease store's clock (the database's `now()` in PostgreSQL), so the clocks of
//! the worker processes do not matter; only the time-to-live and the heartbeat do. A holder
//! also counts the time-to-live on its own monotonic clock from the moment it sent its last
//! successful renewal, and stops starting new work when that runs out, before the store would
//! let another worker take over.
//!
//! # Membership
//! Workers that share partitions announce themselves in a group with
//! [`join`](LeaseStore::join) / [`heartbeat`](LeaseStore::heartbeat) (a member expires like a
//! lease) and read the live members with [`members`](LeaseStore::members), so each can compute
//! which partitions it should own.
//!
//! ```
//! # async fn demo() -> eventflow::Result<()> {
//! use std::time::Duration;
//! use eventflow::lease::{LeaseStore, MemoryLeaseStore};
//!
//! let leases = MemoryLeaseStore::new();
//! let ttl = Duration::from_secs(10);
//! let mine = leases.try_acquire("relay:orders", 0, "worker-a", ttl).await?.expect("free");
//! assert!(leases.try_acquire("relay:orders", 0, "worker-b", ttl).await?.is_none());
//! leases.fenced_checkpoint(&mine, "relay", 42).await?;
//! let mine = leases.renew(&mine, ttl).await?.expect("still mine");
//! leases.release(&mine).await?;
//! let theirs = leases.try_acquire("relay:orders", 0, "worker-b", ttl).await?.expect("released");
//! assert_eq!(theirs.epoch, mine.epoch + 1);
//! assert!(leases.fenced_checkpoint(&mine, "relay", 43).await.is_err());
//! # Ok(()) }
//! ```

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::error::{Error, Result};

mod memory;

pub use memory::MemoryLeaseStore;

/// The default lease time-to-live of leased work (the relay of [`with_bus`]).
///
/// [`with_bus`]: https://docs.rs/eventflow/latest/eventflow/relay/trait.WithBus.html#method.with_bus
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);

/// The default heartbeat: how often a holder renews its lease and a standby worker tries to
/// claim it. Well under a third of [`DEFAULT_TTL`], so two renewals may fail before it expires.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(3);

/// One owner's claim on a piece of work (see the [module docs](self)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// What is leased, e.g. `relay:<schema>` or `projection:<name>`.
    pub name: String,
    /// Which partition of it (0 for work that is not partitioned).
    pub partition: u32,
    /// Who holds it: a worker id, unique per running worker.
    pub owner: String,
    /// Increments every time the lease changes hands (a takeover, or a claim after a release or
    /// an expiry); the fence of every checkpoint write. Starts at 1.
    pub epoch: i64,
    /// When it expires unless renewed, by the lease store's clock.
    pub expires_at: DateTime<Utc>,
}

impl Lease {
    /// Whether the lease has expired by `now` (a holder should use its own monotonic clock;
    /// this is for status displays).
    pub fn is_expired_at(&self, now: DateTime<Utc>) -> bool {
        self.expires_at <= now
    }

    /// The [`Error::LeaseLost`] for this lease.
    pub fn lost(&self) -> Error {
        Error::LeaseLost {
            name: self.name.clone(),
            partition: self.partition,
            owner: self.owner.clone(),
            epoch: self.epoch,
        }
    }
}

/// Where leases, their fenced checkpoints and worker membership live: one table set in
/// PostgreSQL (`PostgresLeaseStore`), or memory ([`MemoryLeaseStore`]).
///
/// Contract (checked by `eventflow::testing::conformance::leases` on every implementation):
/// - of any number of workers racing [`try_acquire`](Self::try_acquire) on a free lease,
///   exactly one gets it;
/// - every change of hands increments the epoch; an owner re-acquiring its own live lease
///   renews it and keeps the epoch;
/// - a lease not renewed within its time-to-live can be taken over; before that it cannot;
/// - [`renew`](Self::renew) of a lease that expired or changed hands returns `None`;
/// - [`fenced_checkpoint`](Self::fenced_checkpoint) by anyone but the current owner at the
///   current epoch fails with [`Error::LeaseLost`] and writes nothing; it never moves a
///   checkpoint backwards;
/// - [`members`](Self::members) lists exactly the members whose last heartbeat is within its
///   time-to-live.
#[async_trait]
pub trait LeaseStore: Send + Sync + 'static {
    /// Claims `(name, partition)` for `owner` for `ttl`: a free, released or expired lease is
    /// taken with the epoch incremented (1 for a lease never held); a live lease of `owner`
    /// itself is renewed (same epoch). `None` while another owner holds it.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an empty name or owner or a zero `ttl`; backend errors.
    async fn try_acquire(
        &self,
        name: &str,
        partition: u32,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>>;

    /// Extends `lease` to `ttl` from now. `None` when it is lost: it expired (even if nobody
    /// took it over: claim it again with [`try_acquire`](Self::try_acquire)), was released, or
    /// changed hands.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a zero `ttl`; backend errors.
    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Option<Lease>>;

    /// Gives `lease` up, so another worker can take it at once (the epoch is kept, and the next
    /// claim increments it). `false` when it was no longer held by this owner at this epoch.
    ///
    /// # Errors
    /// Backend errors.
    async fn release(&self, lease: &Lease) -> Result<bool>;

    /// The leases of `name` (every lease with `None`), live and expired, ordered by name and
    /// partition: who holds what, at which epoch, until when.
    ///
    /// # Errors
    /// Backend errors.
    async fn list(&self, name: Option<&str>) -> Result<Vec<Lease>>;

    /// Saves `position` as the checkpoint `checkpoint`, fenced by `lease`: only while `lease`
    /// is still held by its owner at its epoch, and never moving the checkpoint backwards (a
    /// lower position leaves it as it is and succeeds). The checkpoint is the one the matching
    /// checkpoint store reads (PostgreSQL: the schema's `checkpoints` table; memory:
    /// `InMemoryCheckpointStore::shared_with` this store).
    ///
    /// # Errors
    /// [`Error::LeaseLost`] when the lease changed hands (nothing written);
    /// [`Error::InvalidArgument`] for an empty checkpoint name; backend errors.
    async fn fenced_checkpoint(&self, lease: &Lease, checkpoint: &str, position: u64)
    -> Result<()>;

    /// Adds (or keeps) `member` in `group` for `ttl` from now.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for an empty group or member or a zero `ttl`; backend errors.
    async fn join(&self, group: &str, member: &str, ttl: Duration) -> Result<()>;

    /// Keeps `member` in `group` for another `ttl` (the same as [`join`](Self::join)).
    ///
    /// # Errors
    /// As [`join`](Self::join).
    async fn heartbeat(&self, group: &str, member: &str, ttl: Duration) -> Result<()> {
        self.join(group, member, ttl).await
    }

    /// The live members of `group` (heartbeat within their time-to-live), sorted.
    ///
    /// # Errors
    /// Backend errors.
    async fn members(&self, group: &str) -> Result<Vec<String>>;

    /// Removes `member` from `group` at once.
    ///
    /// # Errors
    /// Backend errors.
    async fn leave(&self, group: &str, member: &str) -> Result<()>;
}

/// A fresh worker id: `<prefix>-<pid>-<random>`, unique per call, so a restarted process never
/// takes an old owner's identity.
pub fn worker_id(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    )
}

/// Checks the arguments every lease store takes.
pub(crate) fn validate(what: &str, value: &str) -> Result<()> {
    if value.is_empty() || value.contains('\0') {
        return Err(Error::InvalidArgument(format!(
            "invalid {what} {value:?}: must be non-empty without NUL"
        )));
    }
    Ok(())
}

/// Checks a time-to-live.
pub(crate) fn validate_ttl(ttl: Duration) -> Result<chrono::Duration> {
    if ttl.is_zero() {
        return Err(Error::InvalidArgument(
            "a lease time-to-live must be above zero".into(),
        ));
    }
    chrono::Duration::from_std(ttl)
        .map_err(|_| Error::InvalidArgument(format!("lease time-to-live {ttl:?} is out of range")))
}

#[cfg(test)]
mod tests;
