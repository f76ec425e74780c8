//! Store to bus: the relay (transactional outbox).
//!
//! Publishing right after a commit loses the event when the process dies in between. The relay
//! closes that gap: it follows the store in global order from a durable checkpoint, publishes
//! each read batch with [`EventBus::publish_batch`], and advances the checkpoint only after the
//! bus accepted the batch. On a bus error it retries the same batch with backoff, so it never
//! skips an event. Delivery is therefore **at least once, in commit order**: a relay killed after
//! publishing but before saving its checkpoint publishes that batch again when it restarts.
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
use crate::store::follow::{self, Follower};
use crate::store::{CheckpointStore, EventStore};

mod attach;
pub use attach::{IntoBus, Relayed, WithBus};

/// The default checkpoint name of a relay.
pub const DEFAULT_RELAY_NAME: &str = "relay";

/// Builds and starts a relay; see the [module docs](self).
pub struct Relay {
    store: Arc<dyn EventStore>,
    bus: Arc<dyn EventBus>,
    checkpoints: Arc<dyn CheckpointStore>,
    name: String,
    batch_size: usize,
    poll_interval: Duration,
    min_backoff: Duration,
    max_backoff: Duration,
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
            name: DEFAULT_RELAY_NAME.to_owned(),
            batch_size: follow::DEFAULT_BATCH_SIZE,
            poll_interval: follow::DEFAULT_POLL_INTERVAL,
            min_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
        }
    }

    /// The checkpoint name (one per relay that must not share progress with another).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
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
        let store = Arc::clone(&self.store);
        let name = self.name.clone();
        // Every log line of the relay carries its name through this span.
        let span = tracing::info_span!("relay", relay = %name);
        let task = tokio::spawn(tracing::Instrument::instrument(
            self.run(position_tx, stop_rx),
            span,
        ));
        RelayHandle {
            name,
            store,
            position: position_rx,
            stop: stop_tx,
            task: Some(task),
        }
    }

    async fn run(self, position: watch::Sender<u64>, mut stop: watch::Receiver<bool>) {
        let name = self.name.as_str();
        let mut backoff = Backoff::new(self.min_backoff, self.max_backoff).delays();
        let start = loop {
            match until_stopped(&mut stop, self.checkpoints.load_checkpoint(name)).await {
                None => return,
                Some(Ok(p)) => break p,
                Some(Err(error)) => {
                    tracing::warn!(relay = name, %error, "relay: cannot load checkpoint; retrying");
                    if until_stopped(&mut stop, tokio::time::sleep(backoff.next_delay()))
                        .await
                        .is_none()
                    {
                        return;
                    }
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
            let batch = match until_stopped(&mut stop, follower.next_batch()).await {
                None => return,
                Some(Ok(batch)) => batch,
                Some(Err(error)) => {
                    tracing::warn!(relay = name, position = follower.position(), %error, "relay: read failed; retrying");
                    if until_stopped(&mut stop, tokio::time::sleep(backoff.next_delay()))
                        .await
                        .is_none()
                    {
                        return;
                    }
                    continue;
                }
            };
            backoff.reset();
            let count = batch.events.len();
            let first = batch.events.first().and_then(|e| e.position);
            if count > 0 {
                // The same batch again and again until the bus takes it: never skip.
                loop {
                    let publish = self.bus.publish_batch(batch.events.clone());
                    match until_stopped(&mut stop, publish).await {
                        None => return,
                        Some(Ok(())) => break,
                        Some(Err(error)) => {
                            tracing::warn!(
                                relay = name,
                                from = first,
                                to = batch.position,
                                %error,
                                "relay: publish failed; retrying the batch"
                            );
                            if until_stopped(&mut stop, tokio::time::sleep(backoff.next_delay()))
                                .await
                                .is_none()
                            {
                                return;
                            }
                        }
                    }
                }
                backoff.reset();
            }
            // Published: now (and only now) the checkpoint may move.
            loop {
                let save = self.checkpoints.save_checkpoint(name, batch.position);
                match until_stopped(&mut stop, save).await {
                    None => return,
                    Some(Ok(())) => break,
                    Some(Err(error)) => {
                        tracing::warn!(relay = name, position = batch.position, %error, "relay: cannot save checkpoint; retrying");
                        if until_stopped(&mut stop, tokio::time::sleep(backoff.next_delay()))
                            .await
                            .is_none()
                        {
                            return;
                        }
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

/// Runs `future` unless the stop flag is (or becomes) set; `None` when stopped.
async fn until_stopped<F: std::future::Future>(
    stop: &mut watch::Receiver<bool>,
    future: F,
) -> Option<F::Output> {
    if *stop.borrow() {
        return None;
    }
    tokio::select! {
        biased;
        // `wait_for` also ends when the handle (the sender) is gone: stop then too.
        _ = stop.wait_for(|s| *s) => None,
        out = future => Some(out),
    }
}

/// Where a relay is, and how far behind the store (see [`RelayHandle::status`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayStatus {
    /// The global position up to which every event was published and checkpointed.
    pub position: u64,
    /// The store's head position.
    pub head: u64,
    /// `head - position`, in positions; 0 means caught up. In the in-memory store positions are
    /// dense, so this counts events; in PostgreSQL positions are `(transaction id << 20) + index`
    /// and not dense, so it says whether the reader is behind, not by how many events.
    pub lag: u64,
}

/// A running relay. Dropping it aborts the relay at once (what a crash would do); call
/// [`stop`](Self::stop) to end it cleanly.
pub struct RelayHandle {
    name: String,
    store: Arc<dyn EventStore>,
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

    /// The global position up to which every event was published and checkpointed.
    pub fn position(&self) -> u64 {
        *self.position.borrow()
    }

    /// The relay's position, the store's head and the lag between them.
    ///
    /// # Errors
    /// The store's error when reading its head.
    pub async fn status(&self) -> Result<RelayStatus> {
        let position = self.position();
        let head = self.store.head_position().await?;
        Ok(RelayStatus {
            position,
            head,
            lag: head.saturating_sub(position),
        })
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
        }
    }
}

#[cfg(test)]
mod tests;
