//! [`PartitionedSaga`]: one saga spread over the live workers of several processes, by
//! correlation id.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use super::{Saga, SagaManager, SagaProjection};
use crate::error::Result;
use crate::lease::LeaseStore;
use crate::projection::partition::PartitionKey;
use crate::projection::{PartitionedOptions, PartitionedRunner, PartitionedTask, partition_of};
use crate::store::{CheckpointStore, EventStore};

/// A worker of a saga fed from the event store and partitioned by correlation id: every process
/// runs one (over the same stores), and the saga's partitions spread over them as a
/// [`PartitionedRunner`]'s do. All events of one instance (one correlation id) fall in one
/// partition, so one worker at a time handles an instance, in global order.
///
/// Each worker also fires the due deadlines of the instances in the partitions it holds
/// (every [`deadline_tick`](Self::deadline_tick)), so a deadline is fired by the holder of its
/// partition, and after a crash by the worker that takes the partition over.
///
/// **Every step and every deadline takes effect once**: a step commits the instance's state
/// with the handled event's id, and a deadline's timeout event is a step too, so a step
/// replayed after a crash (or a deadline fired again by a worker whose lease just moved) is
/// recognised and ignored ([`SagaOutcome::Duplicate`](super::SagaOutcome::Duplicate)).
/// Delivery to the saga is at least once; its effect is exactly once.
pub struct PartitionedSaga<S: Saga> {
    manager: Arc<SagaManager<S>>,
    runner: PartitionedRunner,
    tick: Duration,
}

impl<S: Saga> std::fmt::Debug for PartitionedSaga<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionedSaga")
            .field("saga", &self.manager.name())
            .field("runner", &self.runner)
            .finish_non_exhaustive()
    }
}

impl<S: Saga> PartitionedSaga<S> {
    /// A worker of `manager`'s saga reading `store`, with partition checkpoints (named
    /// `saga-<name>#<p>`) in `checkpoints` and partition leases in `leases`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) for a partition count out of
    /// range; invalid event types.
    pub fn new(
        manager: Arc<SagaManager<S>>,
        store: Arc<dyn EventStore>,
        checkpoints: Arc<dyn CheckpointStore>,
        leases: Arc<dyn LeaseStore>,
        options: PartitionedOptions,
    ) -> Result<Self> {
        let runner = PartitionedRunner::with_key(
            store,
            checkpoints,
            leases,
            SagaProjection::new(Arc::clone(&manager)),
            options,
            PartitionKey::Correlation,
        )?;
        Ok(PartitionedSaga {
            manager,
            runner,
            tick: Duration::from_millis(200),
        })
    }

    /// How often the worker fires due deadlines of its partitions and flushes the outbox
    /// (default 200 ms).
    #[must_use]
    pub fn deadline_tick(mut self, tick: Duration) -> Self {
        self.tick = tick;
        self
    }

    /// The partitioned runner (status, `wait_for`, owned partitions).
    pub fn runner(&self) -> &PartitionedRunner {
        &self.runner
    }

    /// The saga's manager.
    pub fn manager(&self) -> &Arc<SagaManager<S>> {
        &self.manager
    }

    /// Fires the due deadlines of the partitions this worker holds now; returns how many fired.
    ///
    /// # Errors
    /// As [`SagaManager::fire_due_deadlines`].
    pub async fn fire_due_deadlines(&self) -> Result<usize> {
        let owned = self.runner.owned();
        if owned.is_empty() {
            return Ok(0);
        }
        let partitions = self.runner.partitions();
        let mine = move |correlation_id: &str| {
            owned
                .binary_search(&partition_of(correlation_id, partitions))
                .is_ok()
        };
        self.manager.fire_deadlines_where(Utc::now(), &mine).await
    }

    /// Starts the worker: the partitioned runner and the deadline timer.
    pub fn start(self: &Arc<Self>) -> PartitionedSagaTask {
        let task = self.runner.start();
        let this = Arc::clone(self);
        let timer = tokio::spawn(async move {
            loop {
                tokio::time::sleep(this.tick).await;
                if let Err(e) = this.manager.flush_outbox().await {
                    tracing::warn!(saga = %this.manager.name(), error = %e, "saga outbox flush failed");
                }
                if let Err(e) = this.fire_due_deadlines().await {
                    tracing::warn!(saga = %this.manager.name(), error = %e, "saga deadlines failed");
                }
            }
        });
        PartitionedSagaTask {
            task: Some(task),
            timer,
        }
    }
}

/// A running [`PartitionedSaga`]; dropping it aborts the worker (its leases expire).
#[derive(Debug)]
pub struct PartitionedSagaTask {
    task: Option<PartitionedTask>,
    timer: tokio::task::JoinHandle<()>,
}

impl PartitionedSagaTask {
    /// Stops the deadline timer, then the partitions (see [`PartitionedTask::stop`]).
    pub async fn stop(mut self) {
        self.timer.abort();
        if let Some(task) = self.task.take() {
            task.stop().await;
        }
    }
}

impl Drop for PartitionedSagaTask {
    fn drop(&mut self) {
        self.timer.abort();
    }
}
