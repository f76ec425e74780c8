//! Store to bus: the relay (transactional outbox).
//!
//! Publishing right after a commit loses the event when the process dies in between. The relay
//! closes that gap: it follows the store in global order from a durable checkpoint, publishes
//! each read batch with [`EventBus::publish_batch`], and advances the checkpoint only after the
//! bus accepted the batch. Delivery is **at least once, in commit order**: a relay killed after
//! publishing but before saving its checkpoint publishes that batch again when it restarts.
//!
//! # Failures: retry or park
//! When the bus rejects a batch, the relay publishes that batch event by event, in order, to
//! find the culprit. A failure that retrying cannot fix ([`Error::is_permanent`]: an event
//! larger than the bus's limit, an invalid or unencodable event) **parks** that event in the
//! relay's [`DeadLetterStore`] (source: the relay's name) with the reason, the error and the
//! attempt count, reports it on [`RelayHandle::errors`] (a [`BusErrorKind::DeadLettered`]
//! error) and at `error` level through `tracing`, counts it in [`RelayStatus::parked`], and the
//! relay moves on to the next event. Any other failure (connection, timeout, backend) is retried with
//! [`Backoff`] on the same event, so nothing is skipped and order is kept. Parked events are
//! listed with [`RelayHandle::parked`], published again with [`RelayHandle::retry_parked`] (removed
//! from the store once the bus took them) and dropped for good with
//! [`RelayHandle::discard_parked`]; [`Relayed`] has the same three for a store's relay, and
//! [`retry_parked`] works on any dead-letter store and bus.
//! Between reads it sleeps on the store's [`commit_signal`](EventStore::commit_signal), with a
//! polling fallback.
//!
//! ```
//! # async fn demo(bus: std::sync::Arc<dyn eventflow::EventBus>) -> eventflow::Result<()> {
//! use std::sync::Arc;
//! use eventflow::relay::Relay;
//! use eventflow::store::memory::{InMemoryCheckpointStore, InMemoryEventStore};
//!
//! let store = InMemoryEventStore::new();
//! let relay = Relay::new(Arc::new(store.clone()), bus, Arc::new(InMemoryCheckpointStore::new()))
//!     .name("orders-relay")
//!     .spawn();
//! // ... append to the store; every committed event reaches the bus ...
//! let status = relay.status().await?;
//! tracing::info!(position = status.position, lag = status.lag, "relay");
//! relay.stop().await;
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::backoff::Backoff;
use crate::bus::EventBus;
use crate::error::{Error, Result};
use crate::event::Event;
use crate::handler::{BusError, BusErrorKind, ErrorReceiver, ErrorSender};
use crate::lease::{self, Lease, LeaseStore};
use crate::store::dead_letter::{DeadLetterStore, InMemoryDeadLetterStore, ParkedEvent};
use crate::store::follow::{self, Follower};
use crate::store::{CheckpointStore, EventStore};

mod attach;
pub mod forward;
mod leased;
mod parked;
pub use attach::{IntoBus, RelayOptions, Relayed, WithBus, read_status};
pub use forward::{DEFAULT_FORWARDER_NAME, ForwardTarget, Forwarder};
use leased::{Halt, Tenure};
pub use parked::{RetryOutcome, retry_parked};

/// The default checkpoint name of a relay.
pub const DEFAULT_RELAY_NAME: &str = "relay";

/// Builds and starts a relay; see the [module docs](self).
pub struct Relay {
    store: Arc<dyn EventStore>,
    bus: Arc<dyn EventBus>,
    checkpoints: Arc<dyn CheckpointStore>,
    dead_letters: Arc<dyn DeadLetterStore>,
    /// Parked events are reported here (see [`RelayHandle::errors`]).
    errors: ErrorSender,
    name: String,
    batch_size: usize,
    poll_interval: Duration,
    min_backoff: Duration,
    max_backoff: Duration,
    /// With a lease store: one relay of this name at a time publishes (see [`Relay::leased`]).
    leases: Option<Arc<dyn LeaseStore>>,
    lease_ttl: Duration,
    heartbeat: Duration,
    owner: String,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("name", &self.name)
            .field("batch_size", &self.batch_size)
            .field("poll_interval", &self.poll_interval)
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// A relay from `store` to `bus` that keeps its position in `checkpoints` under the name
    /// [`DEFAULT_RELAY_NAME`].
    pub fn new(
        store: Arc<dyn EventStore>,
        bus: Arc<dyn EventBus>,
        checkpoints: Arc<dyn CheckpointStore>,
    ) -> Self {
        Relay {
            store,
            bus,
            checkpoints,
            dead_letters: Arc::new(InMemoryDeadLetterStore::new()),
            errors: ErrorSender::default(),
            name: DEFAULT_RELAY_NAME.to_owned(),
            batch_size: follow::DEFAULT_BATCH_SIZE,
            poll_interval: follow::DEFAULT_POLL_INTERVAL,
            min_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
            leases: None,
            lease_ttl: lease::DEFAULT_TTL,
            heartbeat: lease::DEFAULT_HEARTBEAT,
            owner: lease::worker_id("relay"),
        }
    }

    /// Publishes only while holding the lease `relay:<name>` (partition 0) of `leases`, so of
    /// the relays of one name in every process, exactly one publishes; the others stand by
    /// and try to claim the lease every [`heartbeat`](Self::lease_timing). The holder renews
    /// it every heartbeat; it stops publishing, before its next batch, once it cannot have
    /// renewed within the time-to-live (by its own monotonic clock) or learns that the lease
    /// changed hands, and its checkpoint writes are fenced
    /// ([`LeaseStore::fenced_checkpoint`]), so a relay that lost its lease (even one paused
    /// and resumed) never moves the checkpoint. A stopped relay releases its lease; a killed
    /// one is taken over once the lease expires: within the time-to-live plus one heartbeat.
    ///
    /// `leases` must fence the checkpoints this relay's checkpoint store reads (see
    /// [`LeaseStore::fenced_checkpoint`]).
    pub fn leased(mut self, leases: Arc<dyn LeaseStore>) -> Self {
        self.leases = Some(leases);
        self
    }

    /// The lease's time-to-live and the heartbeat (default [`lease::DEFAULT_TTL`], 10 s, and
    /// [`lease::DEFAULT_HEARTBEAT`], 3 s). The heartbeat is capped at a third of the
    /// time-to-live, so two renewals may fail before the lease expires.
    pub fn lease_timing(mut self, ttl: Duration, heartbeat: Duration) -> Self {
        self.lease_ttl = ttl.max(Duration::from_millis(1));
        self.heartbeat = heartbeat
            .min(self.lease_ttl / 3)
            .max(Duration::from_millis(1));
        self
    }

    /// This relay's owner id in its lease (default: `relay-<pid>-<random>`, unique per relay).
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = owner.into();
        self
    }

    /// The name of the lease a [`leased`](Self::leased) relay holds: `relay:<name>`.
    pub fn lease_name(name: &str) -> String {
        format!("relay:{name}")
    }

    /// The checkpoint name (one per relay that must not share progress with another).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Where events the bus will never take are parked (an in-memory store unless set; a
    /// store's relay uses [`ReaderCheckpoints::reader_dead_letters`](crate::store::ReaderCheckpoints::reader_dead_letters)).
    pub fn dead_letters(mut self, dead_letters: Arc<dyn DeadLetterStore>) -> Self {
        self.dead_letters = dead_letters;
        self
    }

    /// Events read and published per batch (at least 1).
    pub fn batch_size(mut self, size: usize) -> Self {
        self.batch_size = size.max(1);
        self
    }

    /// How long to wait for the commit signal before reading again anyway.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// The first and the largest pause between retries of a failed publish or checkpoint save
    /// (doubling in between, with jitter; see [`Backoff`]).
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.min_backoff = min;
        self.max_backoff = max.max(min);
        self
    }

    /// Starts the relay in a Tokio task. Must be called within a Tokio runtime.
    pub fn spawn(self) -> RelayHandle {
        let (position_tx, position_rx) = watch::channel(0);
        let (stop_tx, stop_rx) = watch::channel(false);
        let (lease_tx, lease_rx) = watch::channel(None);
        let leases = self.leases.clone();
        let store = Arc::clone(&self.store);
        let bus = Arc::clone(&self.bus);
        let dead_letters = Arc::clone(&self.dead_letters);
        let errors = self.errors.clone();
        let name = self.name.clone();
        // Every log line of the relay carries its name through this span.
        let span = tracing::info_span!("relay", relay = %name);
        let task = tokio::spawn(tracing::Instrument::instrument(
            self.run(position_tx, stop_rx, lease_tx),
            span,
        ));
        RelayHandle {
            name,
            leases,
            lease: lease_rx,
            store,
            bus,
            dead_letters,
            errors,
            position: position_rx,
            stop: stop_tx,
            task: Some(task),
        }
    }

    async fn run(
        self,
        position: watch::Sender<u64>,
        stop: watch::Receiver<bool>,
        holding: watch::Sender<Option<Lease>>,
    ) {
        let Some(leases) = self.leases.clone() else {
            let mut halt = Halt::new(stop, None);
            let _ = self
                .publish_from_checkpoint(&position, &mut halt, None)
                .await;
            return;
        };
        let lease_name = Self::lease_name(&self.name);
        let mut halt = Halt::new(stop, None);
        loop {
            // Standby: claim the lease every heartbeat; meanwhile follow the checkpoint the
            // active relay (maybe in another process) moves, so `wait_for` works here too.
            let claimed = halt
                .run(leases.try_acquire(&lease_name, 0, &self.owner, self.lease_ttl))
                .await;
            let lease = match claimed {
                None => return,
                Some(Ok(Some(lease))) => lease,
                Some(Ok(None)) => {
                    if let Some(Ok(p)) =
                        halt.run(self.checkpoints.load_checkpoint(&self.name)).await
                    {
                        position.send_if_modified(|old| {
                            let moved = p > *old;
                            *old = (*old).max(p);
                            moved
                        });
                    }
                    if halt.run(tokio::time::sleep(self.heartbeat)).await.is_none() {
                        return;
                    }
                    continue;
                }
                Some(Err(error)) => {
                    tracing::warn!(relay = %self.name, %error, "relay: cannot claim its lease; retrying");
                    if halt.run(tokio::time::sleep(self.heartbeat)).await.is_none() {
                        return;
                    }
                    continue;
                }
            };
            // The store counts the time-to-live from when it ran the claim, which is after
            // this instant: counting from here errs on the safe side.
            let claimed_at = tokio::time::Instant::now();
            tracing::info!(relay = %self.name, owner = %self.owner, epoch = lease.epoch, "relay: lease taken; publishing");
            holding.send_replace(Some(lease.clone()));
            crate::metrics::leases_held(&lease_name, 1);
            let tenure = Tenure::start(
                Arc::clone(&leases),
                lease.clone(),
                claimed_at,
                self.lease_ttl,
                self.heartbeat,
            );
            let mut active = Halt::new(halt.stop.clone(), Some(tenure.lost()));
            let outcome = self
                .publish_from_checkpoint(&position, &mut active, Some(&tenure))
                .await;
            let stopped = halt.is_stopped();
            holding.send_replace(None);
            crate::metrics::leases_held(&lease_name, 0);
            drop(tenure);
            if stopped {
                // A clean stop hands the lease over at once.
                if let Err(error) = leases.release(&lease).await {
                    tracing::warn!(relay = %self.name, %error, "relay: cannot release its lease");
                }
                return;
            }
            if outcome.is_none() {
                tracing::warn!(relay = %self.name, owner = %self.owner, epoch = lease.epoch, "relay: lease lost; standing by");
                crate::metrics::lease_lost(&lease_name);
            }
        }
    }

    /// Loads the checkpoint and publishes from it until halted (`None`): stopped, or (with a
    /// tenure) the lease lost.
    async fn publish_from_checkpoint(
        &self,
        position: &watch::Sender<u64>,
        halt: &mut Halt,
        tenure: Option<&Tenure>,
    ) -> Option<()> {
        let name = self.name.as_str();
        let mut backoff = Backoff::new(self.min_backoff, self.max_backoff).delays();
        let start = loop {
            match halt.run(self.checkpoints.load_checkpoint(name)).await? {
                Ok(p) => break p,
                Err(error) => {
                    tracing::warn!(relay = name, %error, "relay: cannot load checkpoint; retrying");
                    halt.run(tokio::time::sleep(backoff.next_delay())).await?;
                }
            }
        };
        backoff.reset();
        position.send_replace(start);
        tracing::debug!(relay = name, position = start, "relay: started");
        let mut follower = Follower::new(Arc::clone(&self.store), start)
            .batch_size(self.batch_size)
            .poll_interval(self.poll_interval);

        loop {
            let batch = match halt.run(follower.next_batch()).await? {
                Ok(batch) => batch,
                Err(error) => {
                    tracing::warn!(relay = name, position = follower.position(), %error, "relay: read failed; retrying");
                    halt.run(tokio::time::sleep(backoff.next_delay())).await?;
                    continue;
                }
            };
            backoff.reset();
            let count = batch.events.len();
            let first = batch.events.first().and_then(|e| e.position);
            if count > 0 {
                // Never start a batch without a lease that is surely still ours.
                if tenure.is_some_and(|t| !t.is_valid()) {
                    return None;
                }
                // A publish under way finishes even if the lease is lost meanwhile; its
                // checkpoint write below is fenced, so it commits nothing then.
                let publish = self.bus.publish_batch(batch.events.clone());
                match halt.run_through(publish).await? {
                    Ok(()) => crate::metrics::relay_published(
                        name,
                        count,
                        batch.events.last().map(|e| e.timestamp),
                    ),
                    Err(error) => {
                        tracing::warn!(
                            relay = name,
                            from = first,
                            to = batch.position,
                            %error,
                            "relay: batch rejected; publishing it event by event"
                        );
                        for event in &batch.events {
                            self.publish_one(event, halt, &mut backoff).await?;
                        }
                    }
                }
                backoff.reset();
            }
            // Published: now (and only now) the checkpoint may move.
            loop {
                let saved = match tenure {
                    Some(tenure) => {
                        halt.run_through(tenure.fenced_checkpoint(name, batch.position))
                            .await?
                    }
                    None => {
                        halt.run(self.checkpoints.save_checkpoint(name, batch.position))
                            .await?
                    }
                };
                match saved {
                    Ok(()) => break,
                    Err(error @ Error::LeaseLost { .. }) => {
                        tracing::warn!(relay = name, position = batch.position, %error, "relay: fenced off; the checkpoint stays");
                        if let Some(tenure) = tenure {
                            tenure.mark_lost();
                        }
                        return None;
                    }
                    Err(error) => {
                        tracing::warn!(relay = name, position = batch.position, %error, "relay: cannot save checkpoint; retrying");
                        halt.run(tokio::time::sleep(backoff.next_delay())).await?;
                    }
                }
            }
            backoff.reset();
            position.send_replace(batch.position);
            tracing::debug!(
                relay = name,
                count,
                from = first,
                position = batch.position,
                "relay: published"
            );
        }
    }
}

impl Relay {
    /// Publishes one event of a rejected batch: retried with backoff while the failure is
    /// transient, parked when it is permanent. `None` when stopped meanwhile.
    async fn publish_one(
        &self,
        event: &Event,
        halt: &mut Halt,
        backoff: &mut crate::backoff::Delays,
    ) -> Option<()> {
        let name = self.name.as_str();
        // The batch attempt counts as the first.
        let mut attempts = 1u32;
        loop {
            attempts = attempts.saturating_add(1);
            let error = match halt.run(self.bus.publish(event.clone())).await? {
                Ok(()) => {
                    crate::metrics::relay_published(name, 1, Some(event.timestamp));
                    return Some(());
                }
                Err(error) => error,
            };
            if error.is_permanent() {
                let parked = ParkedEvent::new(
                    name,
                    event.clone(),
                    "permanent: the bus rejected the event",
                    &error,
                    attempts,
                );
                let message = format!(
                    "relay {name} parked event {} at position {:?} after {attempts} attempts: {error}",
                    event.id, event.position
                );
                self.park(parked, halt, backoff).await?;
                self.errors
                    .report(BusError::new(BusErrorKind::DeadLettered, message).for_event(event));
                tracing::error!(
                    relay = name,
                    event_id = %event.id,
                    event_type = %event.event_type,
                    position = event.position,
                    attempts,
                    %error,
                    "relay: parked an event the bus will never take; moving on"
                );
                return Some(());
            }
            tracing::warn!(
                relay = name,
                event_id = %event.id,
                position = event.position,
                attempts,
                %error,
                "relay: publish failed; retrying the event"
            );
            halt.run(tokio::time::sleep(backoff.next_delay())).await?;
        }
    }

    /// Parks an event, retrying the dead-letter store until it takes it: the checkpoint must
    /// not pass an event that is neither published nor parked.
    async fn park(
        &self,
        parked: ParkedEvent,
        halt: &mut Halt,
        backoff: &mut crate::backoff::Delays,
    ) -> Option<()> {
        loop {
            match halt.run(self.dead_letters.park(parked.clone())).await? {
                Ok(()) => return Some(()),
                Err(error) => {
                    tracing::warn!(relay = %self.name, event_id = %parked.event.id, %error, "relay: cannot park the event; retrying");
                    halt.run(tokio::time::sleep(backoff.next_delay())).await?;
                }
            }
        }
    }
}

/// Where a relay is, and how far behind the store (see [`RelayHandle::status`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RelayStatus {
    /// The global position up to which every event was published and checkpointed.
    pub position: u64,
    /// The store's head position.
    pub head: u64,
    /// `head - position`, in positions; 0 means caught up. In the in-memory store positions are
    /// dense, so this counts events; in PostgreSQL positions are `(transaction id << 20) + index`
    /// and not dense, so it says whether the reader is behind, not by how many events.
    pub lag: u64,
    /// Events of this relay waiting in its dead-letter store: parked because the bus will never
    /// take them (see [Failures](self#failures-retry-or-park)).
    pub parked: u64,
    /// Whether this relay publishes: always for a relay without a lease; for a
    /// [`leased`](Relay::leased) one, while it holds the lease (the others stand by). From
    /// [`read_status`]: whether some relay holds a live lease.
    pub active: bool,
    /// The relay's lease: the one this relay holds (`None` on standby or without a lease);
    /// from [`read_status`], the stored lease of whichever process holds or last held it
    /// (owner, epoch, expiry).
    pub lease: Option<Lease>,
}

/// A running relay. Dropping it aborts the relay at once (what a crash would do); call
/// [`stop`](Self::stop) to end it cleanly.
pub struct RelayHandle {
    name: String,
    /// Where the relay holds its lease to publish, if it needs one.
    leases: Option<Arc<dyn LeaseStore>>,
    /// The lease while held.
    lease: watch::Receiver<Option<Lease>>,
    store: Arc<dyn EventStore>,
    bus: Arc<dyn EventBus>,
    dead_letters: Arc<dyn DeadLetterStore>,
    errors: ErrorSender,
    position: watch::Receiver<u64>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for RelayHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayHandle")
            .field("name", &self.name)
            .field("position", &*self.position.borrow())
            .finish_non_exhaustive()
    }
}

impl RelayHandle {
    /// The relay's checkpoint name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The global position up to which every event was published and checkpointed (on a
    /// standby relay: as far as the active relay got, as last read from the checkpoint).
    pub fn position(&self) -> u64 {
        *self.position.borrow()
    }

    /// Whether this relay publishes now: always without a lease; with one, while it holds it.
    pub fn is_active(&self) -> bool {
        self.leases.is_none() || self.lease.borrow().is_some()
    }

    /// The lease this relay holds (`None` on standby or without a lease).
    pub fn lease(&self) -> Option<Lease> {
        self.lease.borrow().clone()
    }

    /// The relay's position, the store's head, the lag between them and how many events are
    /// parked.
    ///
    /// # Errors
    /// The store's error when reading its head; the dead-letter store's when counting.
    pub async fn status(&self) -> Result<RelayStatus> {
        let position = self.position();
        let head = self.store.head_position().await?;
        let parked = self.dead_letters.count(&self.name).await?;
        let lease = self.lease.borrow().clone();
        Ok(RelayStatus {
            position,
            head,
            lag: head.saturating_sub(position),
            parked,
            active: self.leases.is_none() || lease.is_some(),
            lease,
        })
    }

    /// The relay's error stream: a [`BusErrorKind::DeadLettered`] error for every event it
    /// parks (from the moment of the call; also logged through `tracing`).
    pub fn errors(&self) -> ErrorReceiver {
        self.errors.subscribe()
    }

    /// Where this relay parks the events the bus will never take.
    pub fn dead_letters(&self) -> &Arc<dyn DeadLetterStore> {
        &self.dead_letters
    }

    /// Up to `limit` events this relay parked, oldest first.
    ///
    /// # Errors
    /// The dead-letter store's errors.
    pub async fn parked(&self, limit: usize) -> Result<Vec<ParkedEvent>> {
        self.dead_letters.list(&self.name, limit).await
    }

    /// Publishes up to `limit` parked events of this relay again, oldest first, through the
    /// relay's bus, removing each from the dead-letter store once the bus took it (see
    /// [`retry_parked`]). Call it after fixing the cause (e.g. raising the bus's size limit).
    ///
    /// # Errors
    /// The dead-letter store's errors (a publish failure leaves the event parked and is counted
    /// in [`RetryOutcome::failed`]).
    pub async fn retry_parked(&self, limit: usize) -> Result<RetryOutcome> {
        retry_parked(
            self.dead_letters.as_ref(),
            self.bus.as_ref(),
            &self.name,
            limit,
        )
        .await
    }

    /// Drops the parked event `id` for good; `false` when there was none.
    ///
    /// # Errors
    /// The dead-letter store's errors.
    pub async fn discard_parked(&self, id: uuid::Uuid) -> Result<bool> {
        self.dead_letters.discard(id).await
    }

    /// Waits until every event up to global position `position` was published and
    /// checkpointed.
    ///
    /// # Errors
    /// [`Error::Timeout`] after `timeout`; [`Error::Closed`] when the relay has ended.
    pub async fn wait_for(&self, position: u64, timeout: Duration) -> Result<()> {
        let mut rx = self.position.clone();
        match tokio::time::timeout(timeout, rx.wait_for(|p| *p >= position)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(Error::Closed("relay")),
            Err(_) => Err(Error::Timeout {
                operation: "relay catching up",
                after: timeout,
            }),
        }
    }

    /// Stops the relay and waits for its task to end. A batch being published is abandoned
    /// without moving the checkpoint, so the next relay publishes it again.
    pub async fn stop(mut self) {
        self.stop.send_replace(true);
        if let Some(task) = self.task.take() {
            // A join error is a panic inside the relay, already reported by the runtime.
            let _ = task.await;
        }
    }

    /// Aborts the relay at once, as a crash would (tests use this to prove at-least-once).
    pub fn abort(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            // Dropping the last clone of a store ends its relay: hand the lease over at once
            // rather than after its time-to-live (best effort; a crash leaves it to expire).
            let held = self.lease.borrow().clone();
            if let (Some(leases), Some(lease), Ok(runtime)) = (
                self.leases.clone(),
                held,
                tokio::runtime::Handle::try_current(),
            ) {
                runtime.spawn(async move {
                    let _ = task.await;
                    let _ = leases.release(&lease).await;
                });
            }
        }
    }
}

#[cfg(test)]
mod tests;
