//! Applying batches to a read model and keeping its checkpoint: the plain implementation (a
//! [`Projection`] and a [`CheckpointStore`]); `postgres.rs` has the transactional one.

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::Mutex;

use super::{Filter, Projection};
use crate::bus::HandlerResult;
use crate::error::{BoxError, Error, Result};
use crate::event::Event;
use crate::handler::delivery;
use crate::store::CheckpointStore;

/// The outcome of applying a batch.
pub(crate) enum ApplyError {
    /// The handler failed on `events[index]`; everything before it is applied and checkpointed
    /// at `handled_through` (None when nothing of the batch was).
    Handler {
        index: usize,
        handled_through: Option<u64>,
        error: BoxError,
    },
    /// Another runner moved the checkpoint; it is now at this position.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    Moved(u64),
    /// The store of the read model or of the checkpoint failed; nothing is known to be saved.
    Store(Error),
    /// The partition lease was lost (the fenced checkpoint write was refused): nothing of the
    /// batch was committed, and the runner must stop.
    LeaseLost(Error),
    /// An operator paused the projection (`eventflow projections pause`); nothing was applied.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    Paused,
}

impl From<Error> for ApplyError {
    fn from(e: Error) -> Self {
        ApplyError::Store(e)
    }
}

/// Applies batches to a read model and keeps its checkpoint. The plain implementation calls a
/// [`Projection`] and a [`CheckpointStore`]; the PostgreSQL one does both in one transaction.
#[async_trait]
pub(crate) trait Applier: Send + Sync + 'static {
    fn name(&self) -> &str;
    /// The `projection` and `partition` labels of the projection lag gauge: the name alone,
    /// except for a partitioned projection's partition.
    fn metric_labels(&self) -> (&str, Option<u32>) {
        (self.name(), None)
    }
    async fn load_checkpoint(&self) -> Result<u64>;
    /// Applies `events` (the batch after position `from`) and saves the checkpoint `through`.
    async fn apply(&self, from: u64, events: &[Arc<Event>], through: u64)
    -> Result<(), ApplyError>;
    /// Moves the checkpoint from `from` to `to` without applying anything (a skipped event).
    async fn skip(&self, from: u64, to: u64) -> Result<(), ApplyError>;
    /// Clears the read model and sets the checkpoint to 0.
    async fn reset(&self) -> Result<()>;
    /// Waits until every checkpoint saved so far is durable.
    async fn flush(&self) -> Result<()> {
        Ok(())
    }
}

pub(crate) fn position_of(event: &Event) -> Result<u64> {
    event.position.ok_or_else(|| {
        Error::InvalidArgument(format!(
            "event {} came from read_all without a position",
            event.id
        ))
    })
}

/// Runs a handler future, turning a panic into an error (through the one delivery core) so a
/// buggy handler cannot kill the runner's task.
pub(crate) async fn guarded<F>(fut: F) -> HandlerResult
where
    F: std::future::Future<Output = HandlerResult>,
{
    delivery::catch(fut).await.into_result()
}

pub(super) struct PlainApplier {
    name: String,
    projection: Arc<dyn Projection>,
    checkpoints: Arc<dyn CheckpointStore>,
    filter: Filter,
    /// The checkpoint save of the previous batch, still in flight. Saving it while the next
    /// batch is read and applied hides the store's commit latency; saves stay in order (each
    /// waits for the one before), and a lagging checkpoint only means replaying a batch.
    pending: Mutex<Option<tokio::task::JoinHandle<Result<()>>>>,
}

impl PlainApplier {
    pub(super) fn new(
        name: String,
        projection: Arc<dyn Projection>,
        checkpoints: Arc<dyn CheckpointStore>,
        filter: Filter,
    ) -> Self {
        PlainApplier {
            name,
            projection,
            checkpoints,
            filter,
            pending: Mutex::new(None),
        }
    }

    async fn flush_pending(&self) -> Result<()> {
        let pending = self.pending.lock().await.take();
        match pending {
            Some(save) => save
                .await
                .map_err(|e| Error::backend("checkpoint save", e))?,
            None => Ok(()),
        }
    }
}

#[async_trait]
impl Applier for PlainApplier {
    fn name(&self) -> &str {
        &self.name
    }

    async fn load_checkpoint(&self) -> Result<u64> {
        self.flush_pending().await?;
        self.checkpoints.load_checkpoint(&self.name).await
    }

    async fn flush(&self) -> Result<()> {
        self.flush_pending().await
    }

    async fn apply(
        &self,
        _from: u64,
        events: &[Arc<Event>],
        through: u64,
    ) -> Result<(), ApplyError> {
        for (index, event) in events.iter().enumerate() {
            if !self.filter.matches(&event.event_type) {
                continue;
            }
            if let Err(error) = guarded(self.projection.handle(event)).await {
                // Keep what was handled: checkpoint just before the failing event.
                self.flush_pending().await?;
                let handled_through = match index.checked_sub(1) {
                    Some(prev) => {
                        let p = position_of(&events[prev])?;
                        self.checkpoints.save_checkpoint(&self.name, p).await?;
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
        let mut pending = self.pending.lock().await;
        if let Some(previous) = pending.take() {
            // The events are handled; a failed save of the previous batch's checkpoint is
            // superseded by this one (at worst a restart replays from an older checkpoint).
            let saved = previous
                .await
                .map_err(|e| Error::backend("checkpoint save", e))
                .and_then(|r| r);
            if let Err(e) = saved {
                tracing::warn!(projection = %self.name, error = %e, "checkpoint save failed");
            }
        }
        let (checkpoints, name) = (Arc::clone(&self.checkpoints), self.name.clone());
        *pending = Some(tokio::spawn(async move {
            checkpoints.save_checkpoint(&name, through).await
        }));
        Ok(())
    }

    async fn skip(&self, _from: u64, to: u64) -> Result<(), ApplyError> {
        self.flush_pending().await?;
        self.checkpoints.save_checkpoint(&self.name, to).await?;
        Ok(())
    }

    async fn reset(&self) -> Result<()> {
        // A save still in flight must not land after the reset to 0.
        if let Err(e) = self.flush_pending().await {
            tracing::warn!(projection = %self.name, error = %e, "checkpoint save before reset failed");
        }
        self.projection
            .reset()
            .await
            .map_err(|source| Error::Backend {
                backend: "projection reset",
                source,
            })?;
        self.checkpoints.reset_checkpoint(&self.name).await
    }
}
