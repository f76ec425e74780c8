//! The applier of one partition of a plain [`Projection`]: the handler, then a checkpoint save
//! fenced by the partition's lease.

use std::sync::Arc;

use async_trait::async_trait;

use super::{PartitionAppliers, PartitionSpec};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::lease::LeaseStore;
use crate::projection::{Applier, ApplyError, Filter, Projection, guarded, position_of};
use crate::store::CheckpointStore;

pub(super) struct PlainAppliers {
    pub(super) name: String,
    pub(super) projection: Arc<dyn Projection>,
    pub(super) checkpoints: Arc<dyn CheckpointStore>,
    pub(super) leases: Arc<dyn LeaseStore>,
    pub(super) filter: Filter,
}

impl PartitionAppliers for PlainAppliers {
    fn applier(&self, spec: PartitionSpec) -> Arc<dyn Applier> {
        Arc::new(FencedApplier {
            projection_name: self.name.clone(),
            projection: Arc::clone(&self.projection),
            checkpoints: Arc::clone(&self.checkpoints),
            leases: Arc::clone(&self.leases),
            filter: self.filter.clone(),
            spec,
        })
    }
}

/// Applies one partition's events to a plain projection and saves the partition's checkpoint
/// only while this worker still holds the partition's lease. The handler's effects are not
/// transactional, so delivery stays at least once (a batch whose save was refused is handled
/// again by the new owner); the checkpoint never moves under a worker that lost the lease.
pub(super) struct FencedApplier {
    projection_name: String,
    projection: Arc<dyn Projection>,
    checkpoints: Arc<dyn CheckpointStore>,
    leases: Arc<dyn LeaseStore>,
    filter: Filter,
    spec: PartitionSpec,
}

impl FencedApplier {
    /// Saves `position` only while this worker still holds the partition's lease (the lease
    /// store checks owner and epoch in the same step as the write).
    async fn fenced_save(&self, position: u64) -> Result<(), ApplyError> {
        match self
            .leases
            .fenced_checkpoint(&self.spec.lease, &self.spec.checkpoint, position)
            .await
        {
            Ok(()) => Ok(()),
            Err(e @ Error::LeaseLost { .. }) => Err(ApplyError::LeaseLost(e)),
            Err(e) => Err(ApplyError::Store(e)),
        }
    }
}

#[async_trait]
impl Applier for FencedApplier {
    fn name(&self) -> &str {
        &self.spec.checkpoint
    }

    async fn load_checkpoint(&self) -> Result<u64> {
        self.checkpoints
            .load_checkpoint(&self.spec.checkpoint)
            .await
    }

    async fn apply(
        &self,
        _from: u64,
        events: &[Arc<Event>],
        through: u64,
    ) -> Result<(), ApplyError> {
        for (index, event) in events.iter().enumerate() {
            if !self.spec.owns(event) || !self.filter.matches(&event.event_type) {
                continue;
            }
            if let Err(error) = guarded(self.projection.handle(event)).await {
                let handled_through = match index.checked_sub(1) {
                    Some(prev) => {
                        let p = position_of(&events[prev])?;
                        self.fenced_save(p).await?;
                        Some(p)
                    }
                    None => None,
                };
                return Err(ApplyError::Handler {
                    index,
                    handled_through,
                    error,
                });
            }
        }
        self.fenced_save(through).await
    }

    async fn skip(&self, _from: u64, to: u64) -> Result<(), ApplyError> {
        self.fenced_save(to).await
    }

    async fn reset(&self) -> Result<()> {
        Err(Error::InvalidArgument(format!(
            "projection {}: a partitioned projection is rebuilt by resetting its read model and \
             every partition's checkpoint while no worker runs",
            self.projection_name
        )))
    }
}
