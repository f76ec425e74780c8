//! [`PartitionedRunner`]: one projection spread over the live workers of several processes,
//! by partition.
//!
//! The projection's events are split into P virtual partitions by a stable hash of their stream
//! id ([`partition_of`](super::partition_of); sagas: of the correlation id). Each partition has
//! its own lease (name = the projection, partition = p) and its own checkpoint (named
//! `<projection>#<p>`). Every worker joins the projection's membership in the lease store,
//! heartbeats it, and owns the partitions rendezvous hashing gives it among the live members
//! ([`assigned`](super::partition::assigned)); when a worker joins or leaves, each worker
//! stops the partitions it no longer owns (finishing the batch in flight, then releasing the
//! lease) and claims the ones it now owns as their leases come free.
//!
//! Each owned partition runs in a [`ProjectionRunner`] of its own (catch up from the
//! partition's checkpoint, then follow live), reading the store in global order and applying
//! only its partition's events, so order holds within a stream; at most
//! [`concurrency`](PartitionedOptions::concurrency) batches apply at once in one process.
//!
//! **A checkpoint write is fenced by the partition's lease** (owner and epoch, checked in the
//! commit that writes it): a worker that lost a lease (expired while it was paused, taken over
//! by another) commits nothing more for that partition, even if it wakes up mid-batch. With a
//! PostgreSQL projection the read model is written in the same transaction, so each event is
//! applied exactly once, whatever crashes. When a renewal finds the lease lost, the partition is
//! stopped at once: its batch in flight is given [`drain_timeout`](PartitionedOptions::drain_timeout)
//! to end (its commit is refused anyway), then aborted.
//!
//! The partition count is fixed for a projection's life: the first worker records it (a
//! checkpoint named `<projection>#partitions`) and a worker started with another count is
//! refused with [`Error::InvalidArgument`]. Changing it means a rebuild under a new name.
//!
//! [`PartitionedRunner::wait_for`] and [`PartitionedRunner::status`] read the stored
//! checkpoints and leases, so any process can ask, including one that runs no partition
//! ([`ProjectionView`]).

mod plain;
mod view;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Mutex, Semaphore, watch};

use super::{Applier, ApplyError, Projection, ProjectionRunner, ProjectionTask, RunnerOptions};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::lease::{Lease, LeaseStore};
use crate::store::dead_letter::{DeadLetterStore, InMemoryDeadLetterStore};
use crate::store::{CheckpointStore, EventStore};

use super::partition::{DEFAULT_PARTITIONS, PartitionKey, assigned, check_partitions};

pub use view::{PartitionStatus, PartitionedStatus, ProjectionView};

/// The checkpoint name of `partition` of `name`: `<name>#<partition>`.
pub fn partition_checkpoint(name: &str, partition: u32) -> String {
    format!("{name}#{partition}")
}

/// The name of a partitioned projection's leases and membership group: `projection:<name>`.
pub fn lease_name(projection: &str) -> String {
    format!("projection:{projection}")
}

/// The checkpoint that records a partitioned projection's partition count.
pub(crate) fn partitions_checkpoint(name: &str) -> String {
    format!("{name}#partitions")
}

/// Settings of a [`PartitionedRunner`].
#[derive(Debug, Clone)]
pub struct PartitionedOptions {
    /// The number of virtual partitions (1 to [`MAX_PARTITIONS`](super::partition::MAX_PARTITIONS));
    /// default [`DEFAULT_PARTITIONS`]. Fixed for the projection's life.
    pub partitions: u32,
    /// How many partition batches apply at the same time in this process (default 8). Each
    /// running batch of a PostgreSQL projection holds one pooled connection.
    pub concurrency: usize,
    /// How long a lease (and a membership) lives without renewal (default 10 s): after a worker
    /// dies, its partitions wait this long before another worker takes them over.
    pub lease_ttl: Duration,
    /// How often leases and the membership are renewed and the assignment recomputed (default a
    /// third of the lease time-to-live).
    pub heartbeat: Duration,
    /// How long a partition whose lease was lost, or that moves to another worker, may take to
    /// finish its batch in flight before it is aborted (default 5 s). A lost lease's commit is
    /// refused in any case.
    pub drain_timeout: Duration,
    /// Batch size, polling and failure policy of each partition's runner.
    pub runner: RunnerOptions,
    /// This worker's id in the membership and on its leases; a fresh UUID unless set. Two live
    /// workers must never share an id.
    pub worker_id: Option<String>,
}

impl Default for PartitionedOptions {
    fn default() -> Self {
        let lease_ttl = Duration::from_secs(10);
        PartitionedOptions {
            partitions: DEFAULT_PARTITIONS,
            concurrency: 8,
            lease_ttl,
            heartbeat: lease_ttl / 3,
            drain_timeout: Duration::from_secs(5),
            runner: RunnerOptions::default(),
            worker_id: None,
        }
    }
}

impl PartitionedOptions {
    /// Sets the partition count.
    #[must_use]
    pub fn partitions(mut self, partitions: u32) -> Self {
        self.partitions = partitions;
        self
    }

    /// Sets how many batches apply at once in this process (at least 1).
    #[must_use]
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// Sets the lease time-to-live and the heartbeat (a third of it).
    #[must_use]
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self.heartbeat = ttl / 3;
        self
    }

    /// Sets the worker id.
    #[must_use]
    pub fn worker_id(mut self, id: impl Into<String>) -> Self {
        self.worker_id = Some(id.into());
        self
    }

    /// Sets each partition runner's options.
    #[must_use]
    pub fn runner(mut self, runner: RunnerOptions) -> Self {
        self.runner = runner;
        self
    }
}

/// One partition to build an applier for.
#[derive(Debug, Clone)]
pub(crate) struct PartitionSpec {
    pub(crate) partition: u32,
    pub(crate) partitions: u32,
    pub(crate) key: PartitionKey,
    /// `<name>#<partition>`.
    pub(crate) checkpoint: String,
    pub(crate) lease: Lease,
    /// The lease's time-to-live (the PostgreSQL applier bounds an idle transaction by it).
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) lease_ttl: Duration,
}

impl PartitionSpec {
    /// Whether `event` belongs to this partition.
    pub(crate) fn owns(&self, event: &Event) -> bool {
        self.partitions <= 1
            || super::partition::partition_of(&self.key.of(event), self.partitions)
                == self.partition
    }
}

/// Builds the applier of one partition: the plain (checkpoint store) or the transactional
/// PostgreSQL one.
pub(crate) trait PartitionAppliers: Send + Sync + 'static {
    fn applier(&self, spec: PartitionSpec) -> Arc<dyn Applier>;
}

/// Applies at most `concurrency` batches at once across the partitions of one process.
struct Gated {
    inner: Arc<dyn Applier>,
    permits: Arc<Semaphore>,
    /// The projection's name and this partition, for the lag gauge's labels.
    projection: String,
    partition: u32,
}

#[async_trait::async_trait]
impl Applier for Gated {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn metric_labels(&self) -> (&str, Option<u32>) {
        (&self.projection, Some(self.partition))
    }
    async fn load_checkpoint(&self) -> Result<u64> {
        self.inner.load_checkpoint().await
    }
    async fn apply(
        &self,
        from: u64,
        events: &[Arc<Event>],
        through: u64,
    ) -> Result<(), ApplyError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| Error::Closed("partitioned projection"))?;
        self.inner.apply(from, events, through).await
    }
    async fn skip(&self, from: u64, to: u64) -> Result<(), ApplyError> {
        self.inner.skip(from, to).await
    }
    async fn reset(&self) -> Result<()> {
        self.inner.reset().await
    }
    async fn flush(&self) -> Result<()> {
        self.inner.flush().await
    }
}

struct Running {
    lease: Lease,
    runner: ProjectionRunner,
    task: ProjectionTask,
}

struct Inner {
    name: String,
    /// `projection:<name>`: the leases' name and the membership group.
    lease_name: String,
    worker: String,
    options: PartitionedOptions,
    key: PartitionKey,
    store: Arc<dyn EventStore>,
    leases: Arc<dyn LeaseStore>,
    view: ProjectionView,
    appliers: Arc<dyn PartitionAppliers>,
    permits: Arc<Semaphore>,
    /// Where the partition runners park events under [`FailurePolicy::Park`](super::FailurePolicy::Park).
    dead_letters: std::sync::Mutex<Arc<dyn DeadLetterStore>>,
    running: Mutex<BTreeMap<u32, Running>>,
    /// Partitions being drained in the background (lost or moved away).
    draining: std::sync::Mutex<BTreeMap<u32, tokio::task::JoinHandle<()>>>,
    /// The partitions running here, for [`PartitionedRunner::owned`].
    owned: std::sync::Mutex<Vec<u32>>,
}

/// Runs a projection's partitions that this worker owns, among the live workers of every
/// process (see the module docs). Cloning gives another handle to the same worker.
#[derive(Clone)]
pub struct PartitionedRunner {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PartitionedRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartitionedRunner")
            .field("name", &self.inner.name)
            .field("worker", &self.inner.worker)
            .field("partitions", &self.inner.options.partitions)
            .finish_non_exhaustive()
    }
}

impl PartitionedRunner {
    /// A worker of `projection` (a plain [`Projection`], delivered at least once) over `store`,
    /// with partition leases in `leases`. Each partition checkpoint is written through
    /// [`LeaseStore::fenced_checkpoint`] and read from `checkpoints`, so they must be the same
    /// checkpoints (memory: `InMemoryCheckpointStore::shared_with(&leases)`; PostgreSQL: the
    /// schema's checkpoint store). The handler's effects are not in the fenced write, so a batch
    /// whose write was refused is handled again by the new owner (at least once); for exactly
    /// once, use a PostgreSQL projection (`eventflow::postgres::partitioned_runner`).
    ///
    /// # Errors
    /// [`Error::InvalidPattern`] for an invalid pattern, [`Error::InvalidArgument`] for a
    /// partition count out of range.
    pub fn new<P: Projection>(
        store: Arc<dyn EventStore>,
        checkpoints: Arc<dyn CheckpointStore>,
        leases: Arc<dyn LeaseStore>,
        projection: P,
        options: PartitionedOptions,
    ) -> Result<Self> {
        Self::with_key(
            store,
            checkpoints,
            leases,
            projection,
            options,
            PartitionKey::Stream,
        )
    }

    /// As [`new`](Self::new), partitioning events by `key` (sagas: by correlation id).
    ///
    /// # Errors
    /// As [`new`](Self::new).
    pub fn with_key<P: Projection>(
        store: Arc<dyn EventStore>,
        checkpoints: Arc<dyn CheckpointStore>,
        leases: Arc<dyn LeaseStore>,
        projection: P,
        options: PartitionedOptions,
        key: PartitionKey,
    ) -> Result<Self> {
        let filter = super::Filter::parse(&projection.patterns())?;
        let name = projection.name().to_owned();
        let appliers = plain::PlainAppliers {
            name: name.clone(),
            projection: Arc::new(projection),
            checkpoints: Arc::clone(&checkpoints),
            leases: Arc::clone(&leases),
            filter,
        };
        Self::from_appliers(
            name,
            store,
            checkpoints,
            leases,
            Arc::new(appliers),
            options,
            key,
        )
    }

    pub(crate) fn from_appliers(
        name: String,
        store: Arc<dyn EventStore>,
        checkpoints: Arc<dyn CheckpointStore>,
        leases: Arc<dyn LeaseStore>,
        appliers: Arc<dyn PartitionAppliers>,
        options: PartitionedOptions,
        key: PartitionKey,
    ) -> Result<Self> {
        let partitions = check_partitions(options.partitions)?;
        if name.is_empty() || name.contains('#') || name.contains('\0') {
            return Err(Error::InvalidArgument(format!(
                "invalid partitioned projection name {name:?}: non-empty, without '#' or NUL"
            )));
        }
        let worker = options
            .worker_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let view = ProjectionView::new(
            name.clone(),
            partitions,
            Arc::clone(&store),
            checkpoints,
            Arc::clone(&leases),
        );
        let permits = Arc::new(Semaphore::new(options.concurrency.max(1)));
        Ok(PartitionedRunner {
            inner: Arc::new(Inner {
                lease_name: lease_name(&name),
                name,
                worker,
                options,
                key,
                store,
                leases,
                view,
                appliers,
                permits,
                dead_letters: std::sync::Mutex::new(Arc::new(InMemoryDeadLetterStore::new())),
                running: Mutex::new(BTreeMap::new()),
                draining: std::sync::Mutex::new(BTreeMap::new()),
                owned: std::sync::Mutex::new(Vec::new()),
            }),
        })
    }

    /// Where the partitions park the events their handler fails on under
    /// [`FailurePolicy::Park`](super::FailurePolicy::Park), each under its checkpoint name
    /// (`<name>#<p>`); in memory unless set (with PostgreSQL, pass the store's
    /// `dead_letters()`, and give the same store to [`ProjectionView::with_dead_letters`] to
    /// count them from any process). Set it before [`start`](Self::start).
    #[must_use]
    pub fn dead_letters(self, dead_letters: Arc<dyn DeadLetterStore>) -> Self {
        *crate::handler::sync::lock(&self.inner.dead_letters) = dead_letters;
        self
    }

    /// The projection's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// This worker's id (in the membership and on its leases).
    pub fn worker_id(&self) -> &str {
        &self.inner.worker
    }

    /// The partition count.
    pub fn partitions(&self) -> u32 {
        self.inner.options.partitions
    }

    /// The partitions running in this worker now, ascending.
    pub fn owned(&self) -> Vec<u32> {
        crate::handler::sync::lock(&self.inner.owned).clone()
    }

    /// A read-only view of the projection's progress (any process can build one; see
    /// [`ProjectionView`]).
    pub fn view(&self) -> &ProjectionView {
        &self.inner.view
    }

    /// Every partition's stored position, lag and lease holder (see [`ProjectionView::status`]).
    ///
    /// # Errors
    /// Backend errors.
    pub async fn status(&self) -> Result<PartitionedStatus> {
        self.inner.view.status().await
    }

    /// Waits until every partition's stored checkpoint has passed `position`, in whichever
    /// process runs it (see [`ProjectionView::wait_for`]).
    ///
    /// # Errors
    /// [`Error::Timeout`] after `timeout`; backend errors.
    pub async fn wait_for(&self, position: u64, timeout: Duration) -> Result<()> {
        self.inner.view.wait_for(position, timeout).await
    }

    /// Joins the membership and runs the worker until the returned task is stopped or dropped.
    pub fn start(&self) -> PartitionedTask {
        let (stop, stopped) = watch::channel(false);
        let this = self.clone();
        let handle = tokio::spawn(async move { this.coordinate(stopped).await });
        PartitionedTask {
            runner: self.clone(),
            handle: Some(handle),
            stop,
        }
    }

    async fn check_partition_count(&self) -> Result<()> {
        let checkpoints = self.inner.view.checkpoints();
        let name = partitions_checkpoint(&self.inner.name);
        let want = u64::from(self.inner.options.partitions);
        match checkpoints.load_checkpoint(&name).await? {
            0 => checkpoints.save_checkpoint(&name, want).await,
            n if n == want => Ok(()),
            n => Err(Error::InvalidArgument(format!(
                "projection {} runs with {n} partitions; this worker was started with {want} \
                 (the count is fixed for a projection's life: rebuild it under a new name to \
                 change it)",
                self.inner.name
            ))),
        }
    }

    async fn coordinate(self, mut stop: watch::Receiver<bool>) {
        let inner = &self.inner;
        let mut checked = false;
        while !*stop.borrow() {
            if !checked {
                match self.check_partition_count().await {
                    Ok(()) => checked = true,
                    Err(e @ Error::InvalidArgument(_)) => {
                        tracing::error!(projection = %inner.name, error = %e, "partitioned projection refused to start");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(projection = %inner.name, error = %e, "partition count not checked yet; retrying");
                    }
                }
            }
            if checked && let Err(e) = self.tick().await {
                tracing::warn!(projection = %inner.name, worker = %inner.worker, error = %e, "partition assignment failed; retrying on the next heartbeat");
            }
            tokio::select! {
                () = tokio::time::sleep(inner.options.heartbeat) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// One heartbeat: renew the leases (all at once: a renewal waits for the partition's batch
    /// in flight, whose fenced write holds the lease row), then the membership; stop what is
    /// lost or moved (in the background, so a slow drain never delays the next renewals), claim
    /// what is ours.
    async fn tick(&self) -> Result<()> {
        let inner = &self.inner;
        let ttl = inner.options.lease_ttl;
        let mut running = inner.running.lock().await;

        let renewals = futures_util::future::join_all(running.iter().map(|(&p, r)| {
            let leases = Arc::clone(&inner.leases);
            let lease = r.lease.clone();
            let lost = r.task.is_finished() && r.runner.lease_lost();
            async move {
                if lost {
                    return (p, Ok(None));
                }
                (p, leases.renew(&lease, ttl).await)
            }
        }))
        .await;
        for (p, renewed) in renewals {
            match renewed {
                Ok(Some(lease)) => {
                    if let Some(r) = running.get_mut(&p) {
                        r.lease = lease;
                    }
                }
                Ok(None) => {
                    tracing::warn!(projection = %inner.name, partition = p, "partition lease lost; stopping it");
                    crate::metrics::lease_lost(&inner.lease_name);
                    if let Some(r) = running.remove(&p) {
                        self.drain_in_background(p, r, false);
                    }
                }
                Err(e) => {
                    tracing::warn!(projection = %inner.name, partition = p, error = %e, "partition lease not renewed; retrying");
                }
            }
        }

        inner
            .leases
            .heartbeat(&inner.lease_name, &inner.worker, ttl)
            .await?;
        let mut members = inner.leases.members(&inner.lease_name).await?;
        if !members.iter().any(|m| m == &inner.worker) {
            members.push(inner.worker.clone());
        }
        let want = assigned(
            &members,
            &inner.worker,
            &inner.name,
            inner.options.partitions,
        );

        // Hand over what moved to another worker: finish the batch, then release.
        let moved: Vec<u32> = running
            .keys()
            .copied()
            .filter(|p| !want.contains(p))
            .collect();
        for p in moved {
            if let Some(r) = running.remove(&p) {
                tracing::info!(projection = %inner.name, partition = p, "partition moves to another worker");
                self.drain_in_background(p, r, true);
            }
        }

        // Claim what is ours and free (and no longer draining here).
        for p in want {
            if running.contains_key(&p) || self.draining(p) {
                continue;
            }
            let Some(lease) = inner
                .leases
                .try_acquire(&inner.lease_name, p, &inner.worker, ttl)
                .await?
            else {
                continue;
            };
            tracing::info!(projection = %inner.name, partition = p, epoch = lease.epoch, "partition claimed");
            let spec = PartitionSpec {
                partition: p,
                partitions: inner.options.partitions,
                key: inner.key,
                checkpoint: partition_checkpoint(&inner.name, p),
                lease: lease.clone(),
                lease_ttl: ttl,
            };
            let applier = Arc::new(Gated {
                inner: inner.appliers.applier(spec),
                permits: Arc::clone(&inner.permits),
                projection: inner.name.clone(),
                partition: p,
            });
            let dead_letters = Arc::clone(&crate::handler::sync::lock(&inner.dead_letters));
            let runner = ProjectionRunner::from_applier(Arc::clone(&inner.store), applier)
                .options(inner.options.runner.clone())
                .dead_letters(dead_letters);
            let task = runner.start();
            running.insert(
                p,
                Running {
                    lease,
                    runner,
                    task,
                },
            );
        }
        *crate::handler::sync::lock(&inner.owned) = running.keys().copied().collect();
        crate::metrics::leases_held(&inner.lease_name, running.len());
        Ok(())
    }

    /// Whether partition `p` is still draining in this worker.
    fn draining(&self, p: u32) -> bool {
        let mut draining = crate::handler::sync::lock(&self.inner.draining);
        draining.retain(|_, handle| !handle.is_finished());
        draining.contains_key(&p)
    }

    /// Drains a partition in a task of its own, then releases its lease if asked (a partition
    /// that moved; a lost lease is not ours to release).
    fn drain_in_background(&self, p: u32, running: Running, release: bool) {
        let this = self.clone();
        let handle = tokio::spawn(async move {
            let lease = running.lease.clone();
            this.drain(running).await;
            if release && let Err(e) = this.inner.leases.release(&lease).await {
                tracing::warn!(projection = %this.inner.name, partition = p, error = %e, "partition lease not released; it expires");
            }
        });
        crate::handler::sync::lock(&self.inner.draining).insert(p, handle);
    }

    /// Stops a partition: the batch in flight may finish (within the drain timeout), then the
    /// loop is aborted.
    async fn drain(&self, running: Running) {
        let timeout = self.inner.options.drain_timeout;
        if tokio::time::timeout(timeout, running.task.stop())
            .await
            .is_err()
        {
            tracing::warn!(projection = %self.inner.name, partition = running.lease.partition, ?timeout, "partition did not drain in time; aborted");
        }
    }

    async fn shutdown(&self) {
        let inner = &self.inner;
        let mut running = inner.running.lock().await;
        let all = std::mem::take(&mut *running);
        futures_util::future::join_all(all.into_values().map(|r| async move {
            let lease = r.lease.clone();
            self.drain(r).await;
            if let Err(e) = inner.leases.release(&lease).await {
                tracing::warn!(projection = %inner.name, partition = lease.partition, error = %e, "partition lease not released; it expires");
            }
        }))
        .await;
        let draining = std::mem::take(&mut *crate::handler::sync::lock(&inner.draining));
        for (_, handle) in draining {
            let _ = handle.await;
        }
        crate::handler::sync::lock(&inner.owned).clear();
        crate::metrics::leases_held(&inner.lease_name, 0);
        if let Err(e) = inner.leases.leave(&inner.lease_name, &inner.worker).await {
            tracing::warn!(projection = %inner.name, error = %e, "membership not left; it expires");
        }
    }
}

/// A running [`PartitionedRunner`]; dropping it aborts the worker (as a crash would: its
/// leases expire after their time-to-live).
#[derive(Debug)]
pub struct PartitionedTask {
    runner: PartitionedRunner,
    handle: Option<tokio::task::JoinHandle<()>>,
    stop: watch::Sender<bool>,
}

impl PartitionedTask {
    /// Stops the worker: every partition finishes its batch in flight (within the drain
    /// timeout), its lease is released and the worker leaves the membership, so the others
    /// take its partitions over at their next heartbeat.
    pub async fn stop(mut self) {
        self.stop.send_replace(true);
        if let Some(handle) = self.handle.take() {
            let _ = handle.await;
        }
        self.runner.shutdown().await;
    }

    /// Aborts the worker at once, even mid-batch (as a crash would); its leases expire.
    pub async fn abort(mut self) {
        if let Some(handle) = self.handle.take() {
            handle.abort();
            let _ = handle.await;
        }
        let all = std::mem::take(&mut *self.runner.inner.running.lock().await);
        for (_, r) in all {
            r.task.abort().await;
        }
        let draining = std::mem::take(&mut *crate::handler::sync::lock(
            &self.runner.inner.draining,
        ));
        for (_, handle) in draining {
            handle.abort();
        }
    }

    /// The worker's runner.
    pub fn runner(&self) -> &PartitionedRunner {
        &self.runner
    }
}

impl Drop for PartitionedTask {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.abort();
        }
        // The partition tasks abort when their `ProjectionTask`s drop: clear the map now, or,
        // if the aborted coordinator still holds its lock, as soon as it lets go.
        if let Ok(mut running) = self.runner.inner.running.try_lock() {
            running.clear();
        } else if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let runner = self.runner.clone();
            rt.spawn(async move { runner.inner.running.lock().await.clear() });
        }
    }
}
