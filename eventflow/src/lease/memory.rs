//! [`MemoryLeaseStore`]: the reference semantics of [`LeaseStore`], for tests and the embedded
//! store.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{Lease, LeaseStore, validate, validate_ttl};
use crate::error::{Error, Result};
use crate::handler::sync;

/// Named positions, shared with the `InMemoryCheckpointStore` that reads them.
pub(crate) type CheckpointMap = Arc<Mutex<HashMap<String, u64>>>;

#[derive(Default)]
struct State {
    leases: BTreeMap<(String, u32), Lease>,
    members: HashMap<String, BTreeMap<String, DateTime<Utc>>>,
}

/// Leases, fenced checkpoints and membership in memory, with the semantics of the PostgreSQL
/// store (one process only). Cheap to clone; clones share everything.
#[derive(Clone, Default)]
pub struct MemoryLeaseStore {
    state: Arc<Mutex<State>>,
    checkpoints: CheckpointMap,
}

impl std::fmt::Debug for MemoryLeaseStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryLeaseStore")
            .field("leases", &sync::lock(&self.state).leases.len())
            .finish_non_exhaustive()
    }
}

impl MemoryLeaseStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The positions [`fenced_checkpoint`](LeaseStore::fenced_checkpoint) writes.
    pub(crate) fn checkpoint_map(&self) -> CheckpointMap {
        Arc::clone(&self.checkpoints)
    }
}

fn expiry(ttl: Duration) -> Result<DateTime<Utc>> {
    let ttl = validate_ttl(ttl)?;
    Utc::now()
        .checked_add_signed(ttl)
        .ok_or_else(|| Error::InvalidArgument(format!("lease time-to-live {ttl} is out of range")))
}

#[async_trait]
impl LeaseStore for MemoryLeaseStore {
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
        let now = Utc::now();
        let mut state = sync::lock(&self.state);
        let key = (name.to_owned(), partition);
        let epoch = match state.leases.get(&key) {
            None => 1,
            Some(held) if held.expires_at > now && held.owner == owner => held.epoch,
            Some(held) if held.expires_at > now => return Ok(None),
            Some(old) => old.epoch + 1,
        };
        let lease = Lease {
            name: name.to_owned(),
            partition,
            owner: owner.to_owned(),
            epoch,
            expires_at,
        };
        state.leases.insert(key, lease.clone());
        Ok(Some(lease))
    }

    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Option<Lease>> {
        let expires_at = expiry(ttl)?;
        let now = Utc::now();
        let mut state = sync::lock(&self.state);
        match state.leases.get_mut(&(lease.name.clone(), lease.partition)) {
            Some(held)
                if held.owner == lease.owner
                    && held.epoch == lease.epoch
                    && held.expires_at > now =>
            {
                held.expires_at = expires_at;
                Ok(Some(held.clone()))
            }
            _ => Ok(None),
        }
    }

    async fn release(&self, lease: &Lease) -> Result<bool> {
        let now = Utc::now();
        let mut state = sync::lock(&self.state);
        match state.leases.get_mut(&(lease.name.clone(), lease.partition)) {
            Some(held) if held.owner == lease.owner && held.epoch == lease.epoch => {
                // Kept, expired: the next claim increments the epoch.
                held.expires_at = held.expires_at.min(now);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn list(&self, name: Option<&str>) -> Result<Vec<Lease>> {
        let state = sync::lock(&self.state);
        Ok(state
            .leases
            .values()
            .filter(|l| name.is_none_or(|n| l.name == n))
            .cloned()
            .collect())
    }

    async fn fenced_checkpoint(
        &self,
        lease: &Lease,
        checkpoint: &str,
        position: u64,
    ) -> Result<()> {
        validate("checkpoint name", checkpoint)?;
        // The lease lock is held across the write, so no takeover falls between the check and
        // the write (the lock order is always state, then checkpoints).
        let state = sync::lock(&self.state);
        match state.leases.get(&(lease.name.clone(), lease.partition)) {
            Some(held) if held.owner == lease.owner && held.epoch == lease.epoch => {
                let mut positions = sync::lock(&self.checkpoints);
                let saved = positions.entry(checkpoint.to_owned()).or_insert(0);
                *saved = (*saved).max(position);
                Ok(())
            }
            _ => Err(lease.lost()),
        }
    }

    async fn join(&self, group: &str, member: &str, ttl: Duration) -> Result<()> {
        validate("group", group)?;
        validate("member", member)?;
        let expires_at = expiry(ttl)?;
        let now = Utc::now();
        let mut state = sync::lock(&self.state);
        let members = state.members.entry(group.to_owned()).or_default();
        // Members that died without leaving do not pile up.
        members.retain(|_, until| *until > now);
        members.insert(member.to_owned(), expires_at);
        Ok(())
    }

    async fn members(&self, group: &str) -> Result<Vec<String>> {
        let now = Utc::now();
        let state = sync::lock(&self.state);
        Ok(state
            .members
            .get(group)
            .map(|m| {
                m.iter()
                    .filter(|(_, expires_at)| **expires_at > now)
                    .map(|(member, _)| member.clone())
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn leave(&self, group: &str, member: &str) -> Result<()> {
        let mut state = sync::lock(&self.state);
        if let Some(members) = state.members.get_mut(group) {
            members.remove(member);
        }
        Ok(())
    }
}
