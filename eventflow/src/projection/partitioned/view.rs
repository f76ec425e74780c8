//! [`ProjectionView`]: a partitioned projection's progress, read from the stored checkpoints
//! and leases, so any process can read it, whether or not it runs a partition.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::partition_checkpoint;
use crate::error::{Error, Result};
use crate::lease::LeaseStore;
use crate::store::dead_letter::DeadLetterStore;
use crate::store::{CheckpointStore, EventStore};

/// One partition's progress.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PartitionStatus {
    /// The partition.
    pub partition: u32,
    /// Its stored checkpoint: every event of the partition up to here is handled.
    pub position: u64,
    /// `head - position` (see [`ProjectionStatus::lag`](crate::projection::ProjectionStatus::lag)
    /// for what a PostgreSQL position difference means).
    pub lag: u64,
    /// The worker holding its lease, if a live lease exists.
    pub owner: Option<String>,
    /// The lease's epoch (bumped by every claim).
    pub epoch: Option<i64>,
    /// When the lease expires unless renewed.
    pub expires_at: Option<DateTime<Utc>>,
    /// Events of this partition parked under [`FailurePolicy::Park`](crate::projection::FailurePolicy::Park)
    /// (0 unless the view has the dead-letter store: [`ProjectionView::with_dead_letters`]).
    pub parked: u64,
}

/// A partitioned projection's progress across every process.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PartitionedStatus {
    /// The projection's name.
    pub name: String,
    /// The store's head position when the status was taken.
    pub head: u64,
    /// The lowest partition position: every event up to here is handled, in every partition.
    pub position: u64,
    /// `head - position`.
    pub lag: u64,
    /// Parked events, every partition together.
    pub parked: u64,
    /// Each partition, ascending.
    pub partitions: Vec<PartitionStatus>,
}

/// Reads a partitioned projection's progress from the stored checkpoints and leases: build one
/// in any process (an API server answering read-your-writes, a health check) with the same
/// name and partition count as the workers.
#[derive(Clone)]
pub struct ProjectionView {
    name: String,
    partitions: u32,
    store: Arc<dyn EventStore>,
    checkpoints: Arc<dyn CheckpointStore>,
    leases: Arc<dyn LeaseStore>,
    dead_letters: Option<Arc<dyn DeadLetterStore>>,
}

impl std::fmt::Debug for ProjectionView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProjectionView")
            .field("name", &self.name)
            .field("partitions", &self.partitions)
            .finish_non_exhaustive()
    }
}

impl ProjectionView {
    /// A view of projection `name` with `partitions` partitions.
    pub fn new(
        name: impl Into<String>,
        partitions: u32,
        store: Arc<dyn EventStore>,
        checkpoints: Arc<dyn CheckpointStore>,
        leases: Arc<dyn LeaseStore>,
    ) -> Self {
        ProjectionView {
            name: name.into(),
            partitions: partitions.max(1),
            store,
            checkpoints,
            leases,
            dead_letters: None,
        }
    }

    /// Counts parked events in `dead_letters` for [`status`](Self::status) (the store the
    /// workers were given with [`PartitionedRunner::dead_letters`](super::PartitionedRunner::dead_letters)).
    #[must_use]
    pub fn with_dead_letters(mut self, dead_letters: Arc<dyn DeadLetterStore>) -> Self {
        self.dead_letters = Some(dead_letters);
        self
    }

    pub(super) fn checkpoints(&self) -> &Arc<dyn CheckpointStore> {
        &self.checkpoints
    }

    /// Every partition's stored checkpoint, by partition.
    ///
    /// # Errors
    /// Backend errors.
    pub async fn positions(&self) -> Result<Vec<u64>> {
        let reads = (0..self.partitions).map(|p| {
            let name = partition_checkpoint(&self.name, p);
            let checkpoints = Arc::clone(&self.checkpoints);
            async move { checkpoints.load_checkpoint(&name).await }
        });
        futures_util::future::try_join_all(reads).await
    }

    /// Each partition's position, lag and lease holder.
    ///
    /// # Errors
    /// Backend errors.
    pub async fn status(&self) -> Result<PartitionedStatus> {
        let head = self.store.head_position().await?;
        let positions = self.positions().await?;
        let leases = self
            .leases
            .list(Some(&super::lease_name(&self.name)))
            .await?;
        let mut parked = vec![0; positions.len()];
        if let Some(dead_letters) = &self.dead_letters {
            for (p, n) in parked.iter_mut().enumerate() {
                let source = partition_checkpoint(&self.name, u32::try_from(p).unwrap_or(0));
                *n = dead_letters.count(&source).await?;
            }
        }
        let now = Utc::now();
        let partitions: Vec<PartitionStatus> = positions
            .iter()
            .enumerate()
            .map(|(p, &position)| {
                let partition = u32::try_from(p).unwrap_or(u32::MAX);
                let lease = leases
                    .iter()
                    .find(|l| l.partition == partition && l.expires_at > now);
                PartitionStatus {
                    partition,
                    position,
                    lag: head.saturating_sub(position),
                    owner: lease.map(|l| l.owner.clone()),
                    epoch: lease.map(|l| l.epoch),
                    expires_at: lease.map(|l| l.expires_at),
                    parked: parked[p],
                }
            })
            .collect();
        let position = positions.iter().copied().min().unwrap_or(0);
        Ok(PartitionedStatus {
            name: self.name.clone(),
            head,
            position,
            lag: head.saturating_sub(position),
            parked: parked.iter().sum(),
            partitions,
        })
    }

    /// Waits until every partition's stored checkpoint is at or past `position` (read your
    /// writes: pass the position an append returned). It reads the checkpoints, so it sees
    /// progress made in any process; it polls, from 2 ms doubling to 100 ms between reads.
    ///
    /// # Errors
    /// [`Error::Timeout`] after `timeout`; backend errors.
    pub async fn wait_for(&self, position: u64, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut pause = Duration::from_millis(2);
        loop {
            let positions = self.positions().await?;
            if positions.iter().all(|&p| p >= position) {
                return Ok(());
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(Error::Timeout {
                    operation: "partitioned projection wait_for",
                    after: timeout,
                });
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }
}
