//! The promises of partitioned projections and sagas, checked with workers as tasks of one
//! process over one set of stores (the multi-process checks on PostgreSQL live in the
//! workspace's `tests/partitions.rs`).
//!
//! A factory gives the stores of a [`Scope`]: every worker of a check gets its stores from the
//! same scope, so they share the event store, the checkpoints and the leases.
//!
//! - [`spread_and_rebalance`]: workers that join and leave (gracefully) share every partition:
//!   each event is handled exactly once, in stream order, by some worker; the late joiner takes
//!   its share; [`ProjectionView::status`] shows every partition caught up and held by a live
//!   worker.
//! - [`lost_lease_commits_nothing`]: a worker whose lease was taken while it was in the middle
//!   of a batch cannot save that batch's checkpoint, stops, and never moves a checkpoint while
//!   another holds the lease; no checkpoint moves backwards.
//! - [`wait_for_every_partition`]: [`ProjectionView::wait_for`] (no runner of its own) returns
//!   only once the read model has the event, and times out while a partition has no worker.
//! - [`parked_in_status`]: an event a partition parks shows in that partition's status.
//! - [`saga_steps_and_deadlines_once`]: a partitioned saga over three workers, one aborted as a
//!   crash: one instance per correlation id, every step and every deadline once.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use super::Scope;
use crate::bus::HandlerResult;
use crate::error::{BoxError, Error, Result};
use crate::event::Event;
use crate::handler::sync::lock;
use crate::lease::{Lease, LeaseStore};
use crate::projection::{
    PartitionedOptions, PartitionedRunner, Projection, ProjectionView, RunnerOptions, lease_name,
    partition_checkpoint,
};
use crate::saga::{PartitionedSaga, Saga, SagaContext, SagaManager, SagaStore};
use crate::store::{CheckpointStore, EventStore, ExpectedVersion};

/// The stores one worker of a check uses.
#[derive(Clone)]
pub struct Stores {
    /// The event store.
    pub store: Arc<dyn EventStore>,
    /// Partition checkpoints: the ones `leases` writes fenced (memory:
    /// `InMemoryCheckpointStore::shared_with(&leases)`).
    pub checkpoints: Arc<dyn CheckpointStore>,
    /// Partition leases, fenced checkpoint writes and the membership.
    pub leases: Arc<dyn LeaseStore>,
    /// Saga state.
    pub sagas: Arc<dyn SagaStore>,
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores").finish_non_exhaustive()
    }
}

/// Runs every check with stores from `make`.
///
/// # Errors
/// Backend errors.
///
/// # Panics
/// When a promise is broken.
pub async fn run<F, Fut>(make: F) -> Result<()>
where
    F: Fn(Scope) -> Fut,
    Fut: Future<Output = Stores>,
{
    spread_and_rebalance(make(Scope::new("partitions_spread")).await).await?;
    lost_lease_commits_nothing(make(Scope::new("partitions_fenced")).await).await?;
    wait_for_every_partition(make(Scope::new("partitions_wait_for")).await).await?;
    parked_in_status(make(Scope::new("partitions_parked")).await).await?;
    saga_steps_and_deadlines_once(make(Scope::new("partitions_saga")).await).await?;
    Ok(())
}

const WAIT: Duration = Duration::from_secs(20);

fn options(worker: &str, partitions: u32) -> PartitionedOptions {
    PartitionedOptions::default()
        .partitions(partitions)
        .concurrency(4)
        .lease_ttl(Duration::from_millis(300))
        .worker_id(worker)
        .runner(RunnerOptions {
            batch_size: 50,
            poll_interval: Duration::from_millis(20),
            ..RunnerOptions::default()
        })
}

/// (worker, event id, stream, version), in the order handled.
type Log = Arc<Mutex<Vec<(String, uuid::Uuid, String, u64)>>>;

struct Recorder {
    name: String,
    worker: String,
    log: Log,
    /// Handling this event id blocks until the gate opens (for the fencing check).
    gate: Option<(uuid::Uuid, Arc<tokio::sync::Notify>)>,
}

#[async_trait]
impl Projection for Recorder {
    fn name(&self) -> &str {
        &self.name
    }
    async fn handle(&self, event: &Event) -> HandlerResult {
        if let Some((id, gate)) = &self.gate
            && *id == event.id
        {
            gate.notified().await;
        }
        lock(&self.log).push((
            self.worker.clone(),
            event.id,
            event.stream_id.clone().unwrap_or_default(),
            event.stream_version.unwrap_or(0),
        ));
        Ok(())
    }
}

/// (checkpoint, old, new, writer, lease owner at the save)
type Saves = Arc<Mutex<Vec<(String, u64, u64, String, Option<String>)>>>;

/// A lease store that logs each fenced checkpoint write that succeeded, with the writer and the
/// lease holder right after it.
struct Witness {
    inner: Arc<dyn LeaseStore>,
    checkpoints: Arc<dyn CheckpointStore>,
    log: Saves,
}

#[async_trait]
impl LeaseStore for Witness {
    async fn try_acquire(
        &self,
        name: &str,
        partition: u32,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>> {
        self.inner.try_acquire(name, partition, owner, ttl).await
    }
    async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<Option<Lease>> {
        self.inner.renew(lease, ttl).await
    }
    async fn release(&self, lease: &Lease) -> Result<bool> {
        self.inner.release(lease).await
    }
    async fn list(&self, name: Option<&str>) -> Result<Vec<Lease>> {
        self.inner.list(name).await
    }
    async fn fenced_checkpoint(
        &self,
        lease: &Lease,
        checkpoint: &str,
        position: u64,
    ) -> Result<()> {
        let old = self.checkpoints.load_checkpoint(checkpoint).await?;
        self.inner
            .fenced_checkpoint(lease, checkpoint, position)
            .await?;
        let new = self.checkpoints.load_checkpoint(checkpoint).await?;
        let holder = self
            .inner
            .list(Some(&lease.name))
            .await?
            .into_iter()
            .find(|l| l.partition == lease.partition && l.expires_at > chrono::Utc::now())
            .map(|l| l.owner);
        lock(&self.log).push((checkpoint.to_owned(), old, new, lease.owner.clone(), holder));
        Ok(())
    }
    async fn join(&self, group: &str, member: &str, ttl: Duration) -> Result<()> {
        self.inner.join(group, member, ttl).await
    }
    async fn members(&self, group: &str) -> Result<Vec<String>> {
        self.inner.members(group).await
    }
    async fn leave(&self, group: &str, member: &str) -> Result<()> {
        self.inner.leave(group, member).await
    }
}

async fn append_spread(store: &dyn EventStore, streams: usize, per_stream: usize) -> Result<u64> {
    let mut head = 0;
    for round in 0..per_stream {
        for s in 0..streams {
            let event = Event::new("kit.part", serde_json::json!({ "s": s, "round": round }))?;
            let stored = store
                .append(
                    &format!("kit-{s}"),
                    ExpectedVersion::Exact(round as u64),
                    event,
                )
                .await?;
            head = stored.position.unwrap_or(head);
        }
    }
    Ok(head)
}

fn view(stores: &Stores, name: &str, partitions: u32) -> ProjectionView {
    ProjectionView::new(
        name,
        partitions,
        Arc::clone(&stores.store),
        Arc::clone(&stores.checkpoints),
        Arc::clone(&stores.leases),
    )
}

fn worker(stores: &Stores, projection: Recorder, partitions: u32) -> Result<PartitionedRunner> {
    let id = projection.worker.clone();
    PartitionedRunner::new(
        Arc::clone(&stores.store),
        Arc::clone(&stores.checkpoints),
        Arc::clone(&stores.leases),
        projection,
        options(&id, partitions),
    )
}

/// Workers join and leave gracefully while events arrive: each event once, in stream order.
///
/// # Errors
/// Backend errors.
///
/// # Panics
/// When a promise is broken.
pub async fn spread_and_rebalance(stores: Stores) -> Result<()> {
    const P: u32 = 8;
    let name = "kit-spread";
    let log: Log = Arc::default();
    let recorder = |w: &str| Recorder {
        name: name.to_owned(),
        worker: w.to_owned(),
        log: Arc::clone(&log),
        gate: None,
    };
    let tasks: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|w| worker(&stores, recorder(w), P).map(|r| r.start()))
        .collect::<Result<_>>()?;
    append_spread(stores.store.as_ref(), 40, 10).await?;
    let mut tasks = tasks.into_iter();
    // One leaves gracefully, one joins late.
    if let Some(first) = tasks.next() {
        first.stop().await;
    }
    let late = worker(&stores, recorder("d"), P)?.start();
    let head = append_spread_more(stores.store.as_ref(), 40, 10, 10).await?;
    let view = view(&stores, name, P);
    view.wait_for(head, WAIT).await?;

    let log = lock(&log).clone();
    let ids: HashSet<_> = log.iter().map(|(_, id, _, _)| *id).collect();
    assert_eq!(ids.len(), 800, "every event handled");
    assert_eq!(
        log.len(),
        800,
        "each event handled once (graceful moves only)"
    );
    let mut versions: HashMap<&str, u64> = HashMap::new();
    for (_, _, stream, version) in &log {
        let last = versions.entry(stream.as_str()).or_default();
        assert!(*version > *last, "stream {stream} handled out of order");
        *last = *version;
    }
    // Status: every partition caught up and held by a live worker.
    let mut status = view.status().await?;
    for _ in 0..100 {
        if status
            .partitions
            .iter()
            .all(|p| p.owner.as_deref().is_some_and(|o| o != "a"))
            && status
                .partitions
                .iter()
                .any(|p| p.owner.as_deref() == Some("d"))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        status = view.status().await?;
    }
    assert_eq!(status.partitions.len(), P as usize);
    assert!(
        status
            .partitions
            .iter()
            .any(|p| p.owner.as_deref() == Some("d")),
        "the late worker took no partition: {status:?}"
    );
    assert!(status.position >= head && status.lag == 0, "{status:?}");
    for p in &status.partitions {
        assert!(
            p.position >= head,
            "partition {} behind: {p:?}",
            p.partition
        );
        assert!(
            p.owner.as_deref().is_some_and(|o| o != "a"),
            "partition {} not held by a live worker: {p:?}",
            p.partition
        );
    }
    for t in tasks {
        t.stop().await;
    }
    late.stop().await;
    Ok(())
}

async fn append_spread_more(
    store: &dyn EventStore,
    streams: usize,
    from_round: usize,
    rounds: usize,
) -> Result<u64> {
    let mut head = 0;
    for round in from_round..from_round + rounds {
        for s in 0..streams {
            let event = Event::new("kit.part", serde_json::json!({ "s": s, "round": round }))?;
            let stored = store
                .append(
                    &format!("kit-{s}"),
                    ExpectedVersion::Exact(round as u64),
                    event,
                )
                .await?;
            head = stored.position.unwrap_or(head);
        }
    }
    Ok(head)
}

/// A worker whose lease is taken mid-batch saves nothing.
///
/// # Errors
/// Backend errors.
///
/// # Panics
/// When a promise is broken.
pub async fn lost_lease_commits_nothing(stores: Stores) -> Result<()> {
    let name = "kit-fenced";
    let first = Event::new("kit.part", serde_json::json!({ "n": 0 }))?;
    let first_id = first.id;
    stores
        .store
        .append("kit-fenced-0", ExpectedVersion::NoStream, first)
        .await?;
    let head = append_spread(stores.store.as_ref(), 3, 2).await?;
    let log: Log = Arc::default();
    let gate = Arc::new(tokio::sync::Notify::new());
    let saves: Saves = Arc::default();
    let witness: Arc<dyn LeaseStore> = Arc::new(Witness {
        inner: Arc::clone(&stores.leases),
        checkpoints: Arc::clone(&stores.checkpoints),
        log: Arc::clone(&saves),
    });
    let runner = PartitionedRunner::new(
        Arc::clone(&stores.store),
        Arc::clone(&stores.checkpoints),
        witness,
        Recorder {
            name: name.to_owned(),
            worker: "a".to_owned(),
            log: Arc::clone(&log),
            gate: Some((first_id, Arc::clone(&gate))),
        },
        options("a", 1),
    )?;
    let task = runner.start();
    // Wait until the worker is inside its first batch (it holds the lease and blocks).
    let held = wait_until(|| async {
        if runner.owned() != [0] {
            return Ok(None);
        }
        Ok(stores
            .leases
            .list(Some(&lease_name(name)))
            .await?
            .into_iter()
            .find(|l| l.owner == "a"))
    })
    .await?;
    // The lease is taken from it (as after an expiry while it was paused).
    stores.leases.release(&held).await?;
    let intruder = stores
        .leases
        .try_acquire(&lease_name(name), 0, "intruder", Duration::from_secs(60))
        .await?
        .unwrap_or_else(|| panic!("the released lease could not be taken over"));
    assert!(
        intruder.epoch > held.epoch,
        "a takeover must bump the epoch"
    );
    gate.notify_one();
    // The worker's batch save is refused: it stops the partition.
    wait_until(|| async { Ok(runner.owned().is_empty().then_some(())) }).await?;
    let checkpoint = stores
        .checkpoints
        .load_checkpoint(&partition_checkpoint(name, 0))
        .await?;
    assert_eq!(
        checkpoint, 0,
        "a worker that lost its lease moved the checkpoint"
    );
    // Once the intruder lets go, the worker takes the partition back and finishes it.
    stores.leases.release(&intruder).await?;
    gate.notify_one();
    view(&stores, name, 1).wait_for(head, WAIT).await?;
    for (checkpoint, old, new, writer, owner) in lock(&saves).iter() {
        assert!(new >= old, "{checkpoint} moved backwards: {old} -> {new}");
        assert_eq!(
            owner.as_deref(),
            Some(writer.as_str()),
            "{checkpoint} saved by {writer} while {owner:?} held the lease"
        );
    }
    task.stop().await;
    Ok(())
}

async fn wait_until<T, F, Fut>(mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(t) = f().await? {
            return Ok(t);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Timeout {
                operation: "partitions kit: waiting for a condition",
                after: WAIT,
            });
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `wait_for` on a view without a runner returns once the read model has the event.
///
/// # Errors
/// Backend errors.
///
/// # Panics
/// When a promise is broken.
pub async fn wait_for_every_partition(stores: Stores) -> Result<()> {
    const P: u32 = 4;
    let name = "kit-wait";
    let log: Log = Arc::default();
    let tasks: Vec<_> = ["a", "b"]
        .iter()
        .map(|w| {
            worker(
                &stores,
                Recorder {
                    name: name.to_owned(),
                    worker: (*w).to_owned(),
                    log: Arc::clone(&log),
                    gate: None,
                },
                P,
            )
            .map(|r| r.start())
        })
        .collect::<Result<_>>()?;
    let view = view(&stores, name, P);
    for n in 0..20u64 {
        let event = Event::new("kit.part", serde_json::json!({ "n": n }))?;
        let id = event.id;
        let stored = stores
            .store
            .append(&format!("kit-wait-{n}"), ExpectedVersion::NoStream, event)
            .await?;
        let position = stored.position.unwrap_or(0);
        view.wait_for(position, WAIT).await?;
        assert!(
            lock(&log).iter().any(|(_, e, _, _)| *e == id),
            "wait_for returned before the read model had the event"
        );
    }
    for t in tasks {
        t.stop().await;
    }
    let event = Event::new("kit.part", serde_json::json!({ "late": true }))?;
    let stored = stores
        .store
        .append("kit-wait-late", ExpectedVersion::NoStream, event)
        .await?;
    let position = stored.position.unwrap_or(0);
    let late = view.wait_for(position, Duration::from_millis(100)).await;
    assert!(
        matches!(late, Err(Error::Timeout { .. })),
        "wait_for must time out while no worker runs: {late:?}"
    );
    Ok(())
}

/// Fails on events whose payload says so.
struct Picky;

#[async_trait]
impl Projection for Picky {
    fn name(&self) -> &str {
        "kit-parked"
    }
    async fn handle(&self, event: &Event) -> HandlerResult {
        if event.payload["bad"] == serde_json::json!(true) {
            return Err("rejected by the kit".into());
        }
        Ok(())
    }
}

/// An event parked by a partition shows in the status of that partition, from a view.
///
/// # Errors
/// Backend errors.
///
/// # Panics
/// When a promise is broken.
pub async fn parked_in_status(stores: Stores) -> Result<()> {
    const P: u32 = 4;
    let dead_letters: Arc<dyn crate::store::dead_letter::DeadLetterStore> =
        Arc::new(crate::store::dead_letter::InMemoryDeadLetterStore::new());
    let mut opts = options("a", P);
    opts.runner.failure = crate::projection::FailurePolicy::Park;
    let runner = PartitionedRunner::new(
        Arc::clone(&stores.store),
        Arc::clone(&stores.checkpoints),
        Arc::clone(&stores.leases),
        Picky,
        opts,
    )?
    .dead_letters(Arc::clone(&dead_letters));
    let task = runner.start();
    let bad = Event::new("kit.part", serde_json::json!({ "bad": true }))?;
    stores
        .store
        .append("kit-parked-bad", ExpectedVersion::NoStream, bad)
        .await?;
    let good = Event::new("kit.part", serde_json::json!({ "bad": false }))?;
    let stored = stores
        .store
        .append("kit-parked-good", ExpectedVersion::NoStream, good)
        .await?;
    let view = view(&stores, "kit-parked", P).with_dead_letters(dead_letters);
    view.wait_for(stored.position.unwrap_or(0), WAIT).await?;
    let status = view.status().await?;
    assert_eq!(status.parked, 1, "one parked event: {status:?}");
    let partition = crate::projection::partition_of("kit-parked-bad", P);
    assert_eq!(
        status.partitions[partition as usize].parked, 1,
        "parked in the bad stream's partition: {status:?}"
    );
    task.stop().await;
    Ok(())
}

struct Trip;

#[derive(Debug, Default, Serialize, Deserialize)]
struct TripState {
    started: u32,
    steps: u32,
    timeouts: u32,
}

impl Saga for Trip {
    type State = TripState;
    fn name(&self) -> &str {
        "kit-trip"
    }
    fn starts_on(&self) -> Vec<String> {
        vec!["kit.trip_started".into()]
    }
    fn handles(&self) -> Vec<String> {
        vec!["kit.trip_step".into(), "kit.trip_timeout".into()]
    }
    fn handle(
        &self,
        state: &mut TripState,
        event: &Event,
        ctx: &mut SagaContext,
    ) -> std::result::Result<(), BoxError> {
        match event.event_type.as_str() {
            "kit.trip_started" => {
                state.started += 1;
                ctx.set_deadline(
                    "timeout",
                    Duration::from_millis(300),
                    Event::new("kit.trip_timeout", serde_json::json!({}))?,
                );
            }
            "kit.trip_step" => state.steps += 1,
            _ => state.timeouts += 1,
        }
        if state.steps == 2 && state.timeouts == 1 {
            ctx.complete();
        }
        Ok(())
    }
}

/// A partitioned saga over three workers, one aborted: every step and deadline once.
///
/// # Errors
/// Backend errors.
///
/// # Panics
/// When a promise is broken.
pub async fn saga_steps_and_deadlines_once(stores: Stores) -> Result<()> {
    const TRIPS: usize = 200;
    let manager = Arc::new(SagaManager::new(Trip, Arc::clone(&stores.sagas))?);
    let workers: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|w| {
            PartitionedSaga::new(
                Arc::clone(&manager),
                Arc::clone(&stores.store),
                Arc::clone(&stores.checkpoints),
                Arc::clone(&stores.leases),
                options(w, 8),
            )
            .map(|s| Arc::new(s.deadline_tick(Duration::from_millis(20))).start())
        })
        .collect::<Result<_>>()?;
    let mut workers = workers.into_iter();
    let mut crashed = workers.next();
    for t in 0..TRIPS {
        let trip = format!("kit-trip-{t}");
        let events = vec![
            Event::new("kit.trip_started", serde_json::json!({}))?.with_correlation(trip.clone()),
            Event::new("kit.trip_step", serde_json::json!({ "n": 1 }))?
                .with_correlation(trip.clone()),
            Event::new("kit.trip_step", serde_json::json!({ "n": 2 }))?
                .with_correlation(trip.clone()),
        ];
        stores
            .store
            .append_batch(&trip, ExpectedVersion::NoStream, events)
            .await?;
        if t == TRIPS / 2 {
            // A crash: its leases expire and the others take its partitions over.
            drop(crashed.take());
        }
    }
    drop(crashed.take());
    wait_until(|| async {
        let mut done = 0;
        for t in 0..TRIPS {
            if let Some((_, true)) = manager.instance(&format!("kit-trip-{t}")).await? {
                done += 1;
            }
        }
        Ok((done == TRIPS).then_some(()))
    })
    .await?;
    for t in 0..TRIPS {
        let trip = format!("kit-trip-{t}");
        let (state, _) = manager
            .instance(&trip)
            .await?
            .unwrap_or_else(|| panic!("no instance for {trip}"));
        assert_eq!(
            (state.started, state.steps, state.timeouts),
            (1, 2, 1),
            "{trip}: every step and the deadline exactly once"
        );
    }
    for w in workers {
        w.stop().await;
    }
    Ok(())
}
