//! Retention of saga bookkeeping: completed instances, their handled event ids, and the
//! tombstones left when they are pruned (see [`SagaManager::prune`]).

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{Saga, SagaManager};
use crate::error::Result;

/// Default time a completed instance (its state and handled event ids) is kept: 24 hours.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);
/// Default time a pruned instance's tombstone is kept after its completion: 7 days.
pub const DEFAULT_TOMBSTONE_RETENTION: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// Entries removed per step: each step is one short statement (or one lock), never a long
/// transaction.
const PRUNE_BATCH: usize = 1_000;

/// The retention windows of a [`SagaManager`].
#[derive(Debug, Clone, Copy)]
pub(super) struct Retention {
    completed: Duration,
    tombstones: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            completed: DEFAULT_RETENTION,
            tombstones: DEFAULT_TOMBSTONE_RETENTION,
        }
    }
}

/// What [`SagaManager::prune`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Pruned {
    /// Completed instances removed with their handled event ids (each left a tombstone).
    pub instances: u64,
    /// Tombstones removed.
    pub tombstones: u64,
}

/// `now - window`, or `None` when the window reaches before any time (keep everything).
fn cutoff(now: DateTime<Utc>, window: Duration) -> Option<DateTime<Utc>> {
    now.checked_sub_signed(chrono::Duration::from_std(window).ok()?)
}

impl<S: Saga> SagaManager<S> {
    /// Keeps a completed instance (its state and the ids of the events it handled) for `window`
    /// after it completed; [`prune`](Self::prune) then removes it and leaves a tombstone.
    /// Default: [`DEFAULT_RETENTION`] (24 hours). `Duration::MAX` keeps them for ever.
    #[must_use]
    pub fn retention(mut self, window: Duration) -> Self {
        self.retention.completed = window;
        self
    }

    /// Keeps the tombstone of a pruned instance until `window` after it completed; until then
    /// an event of that correlation id (a redelivery, a late event) starts nothing and is
    /// ignored as [`IgnoreReason::Completed`](super::IgnoreReason::Completed). After it, the
    /// correlation id is unknown again: a starting event starts a new instance. Choose it
    /// longer than the longest redelivery your bus can make. Default:
    /// [`DEFAULT_TOMBSTONE_RETENTION`] (7 days). `Duration::MAX` keeps them for ever.
    #[must_use]
    pub fn tombstone_retention(mut self, window: Duration) -> Self {
        self.retention.tombstones = window;
        self
    }

    /// Removes what the retention windows let go: completed instances older than
    /// [`retention`](Self::retention) (leaving tombstones) and tombstones older than
    /// [`tombstone_retention`](Self::tombstone_retention), in steps of 1,000, each one short
    /// atomic step in the store. Instances that have not completed are never removed. The
    /// timer of [`start_timer`](Self::start_timer) calls it about once a minute.
    ///
    /// # Errors
    /// Store errors (what earlier steps removed stays removed).
    pub async fn prune(&self) -> Result<Pruned> {
        self.prune_at(Utc::now()).await
    }

    /// As [`prune`](Self::prune) with a given clock (for tests).
    ///
    /// # Errors
    /// Store errors.
    pub async fn prune_at(&self, now: DateTime<Utc>) -> Result<Pruned> {
        let mut pruned = Pruned::default();
        if let Some(before) = cutoff(now, self.retention.completed) {
            loop {
                let n = self.store.prune(&self.name, before, PRUNE_BATCH).await?;
                pruned.instances += n;
                if n < PRUNE_BATCH as u64 {
                    break;
                }
            }
        }
        if let Some(before) = cutoff(now, self.retention.tombstones) {
            loop {
                let n = self
                    .store
                    .prune_tombstones(&self.name, before, PRUNE_BATCH)
                    .await?;
                pruned.tombstones += n;
                if n < PRUNE_BATCH as u64 {
                    break;
                }
            }
        }
        if pruned != Pruned::default() {
            tracing::debug!(saga = %self.name, instances = pruned.instances, tombstones = pruned.tombstones, "saga bookkeeping pruned");
        }
        Ok(pruned)
    }
}
