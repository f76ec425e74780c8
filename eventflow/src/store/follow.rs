//! Following the store: the one loop every reader of the global order uses.
//!
//! Store subscriptions (in memory and PostgreSQL), the [relay](crate::relay) and projection
//! runners all do the same thing: read [`EventStore::read_all`] in global order from a position,
//! keep the events that match their criteria, hand them on, and when caught up wait for the
//! store's [`commit_signal`](EventStore::commit_signal) (with a polling timeout, so a lost
//! signal only delays them). [`Follower`] is that loop as a pull API; [`subscribe`] runs it in a
//! task that feeds a [`Handler`], which is how a backend implements
//! [`EventStore::subscribe_dyn`].
//!
//! ```
//! # async fn demo() -> eventflow::Result<()> {
//! use std::sync::Arc;
//! use eventflow::store::follow::Follower;
//! use eventflow::store::memory::InMemoryEventStore;
//! use eventflow::{Event, EventStore, ExpectedVersion};
//!
//! let store = InMemoryEventStore::new();
//! store.append("order-1", ExpectedVersion::NoStream, Event::new("order.placed", ())?).await?;
//! let mut follower = Follower::new(Arc::new(store.clone()), 0);
//! let batch = follower.next_batch().await?;
//! assert_eq!(batch.events.len(), 1);
//! assert_eq!(follower.position(), 1);
//! # Ok(()) }
//! ```

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::watch;

use crate::error::Result;
use crate::event::Event;
use crate::handler::delivery;
use crate::handler::{Handler, Subscription};
use crate::store::{EventCriteria, EventStore, SubscribeOptions};

/// Default number of events read per [`read_all`](EventStore::read_all) call.
pub const DEFAULT_BATCH_SIZE: usize = 500;

/// Default polling fallback: how long a caught-up follower waits for the commit signal before it
/// reads again anyway.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(500);

/// One read of the store (see [`Follower::next_batch`]).
#[derive(Debug, Clone, Default)]
pub struct Batch {
    /// The events of this read that match the follower's criteria, in global order (may be empty
    /// when none of the events read matched).
    pub events: Vec<Event>,
    /// The global position of the last event read (matching or not): where the next read
    /// starts, and what a checkpoint should record once `events` are handled.
    pub position: u64,
}

/// Reads the store in global order from a position, waiting for commits when caught up.
///
/// Cancel-safe: dropping a [`next_batch`](Self::next_batch) future loses nothing, because the
/// position only moves when a batch is returned.
pub struct Follower {
    store: Arc<dyn EventStore>,
    position: u64,
    batch_size: usize,
    criteria: EventCriteria,
    poll_interval: Duration,
    signal: watch::Receiver<u64>,
    read_ahead: bool,
    prefetch: Option<Prefetch>,
}

/// A read of the next batch, started while the caller handles the current one.
struct Prefetch {
    after: u64,
    size: usize,
    read: tokio::task::JoinHandle<Result<Vec<Event>>>,
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.read.abort();
    }
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follower")
            .field("position", &self.position)
            .field("batch_size", &self.batch_size)
            .field("criteria", &self.criteria)
            .field("poll_interval", &self.poll_interval)
            .finish_non_exhaustive()
    }
}

impl Follower {
    /// A follower of `store` that starts after global position `after` (0 = from the start),
    /// reading [`DEFAULT_BATCH_SIZE`] events at a time and keeping every event.
    pub fn new(store: Arc<dyn EventStore>, after: u64) -> Self {
        let signal = store.commit_signal();
        Follower {
            store,
            position: after,
            batch_size: DEFAULT_BATCH_SIZE,
            criteria: EventCriteria::all(),
            poll_interval: DEFAULT_POLL_INTERVAL,
            signal,
            read_ahead: false,
            prefetch: None,
        }
    }

    /// While catching up (a read came back full), starts reading the next batch in a task as
    /// soon as one is returned, so the store's latency overlaps the caller's work on the
    /// batch. Off by default; needs a Tokio runtime.
    pub fn read_ahead(mut self, on: bool) -> Self {
        self.read_ahead = on;
        self
    }

    /// Moves the follower to after global position `position` (for example back to an event
    /// that must be handled again, or to a checkpoint another reader saved). A read ahead from
    /// another position is dropped.
    pub fn seek(&mut self, position: u64) {
        if self.position != position {
            self.position = position;
            self.prefetch = None;
        }
    }

    /// Changes the batch size of the next reads (at least 1); see
    /// [`batch_size`](Self::batch_size).
    pub fn set_batch_size(&mut self, size: usize) {
        self.batch_size = size.max(1);
    }

    /// Reads up to `size` events per call (at least 1).
    pub fn batch_size(mut self, size: usize) -> Self {
        self.batch_size = size.max(1);
        self
    }

    /// Keeps only events matching `criteria`. Its `after_position` and `limit` are ignored here:
    /// the start position and batch size are set with [`new`](Self::new) and
    /// [`batch_size`](Self::batch_size).
    pub fn criteria(mut self, mut criteria: EventCriteria) -> Self {
        criteria.after_position = None;
        criteria.limit = None;
        self.criteria = criteria;
        self
    }

    /// How long to wait for the commit signal before reading again anyway.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// The global position of the last event read.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The store being followed.
    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    /// The next read: waits until at least one event after [`position`](Self::position) is
    /// committed, reads up to the batch size of them, and returns those that match the criteria
    /// together with the new position.
    ///
    /// # Errors
    /// The store's read error; the position is unchanged, so calling again retries the read.
    pub async fn next_batch(&mut self) -> Result<Batch> {
        loop {
            if let Some(batch) = self.try_next_batch().await? {
                return Ok(batch);
            }
            self.wait().await;
        }
    }

    /// One read without waiting: `None` when there is nothing after the position yet.
    ///
    /// # Errors
    /// The store's read error; the position is unchanged.
    pub async fn try_next_batch(&mut self) -> Result<Option<Batch>> {
        // Mark the signal as seen *before* reading: a commit that lands after this point
        // changes it again, so `wait` cannot sleep through it.
        self.signal.borrow_and_update();
        let events = match self.prefetch.take() {
            Some(mut ahead) if ahead.after == self.position && ahead.size == self.batch_size => {
                // A failed or cancelled task is a failed read: the position stays, so the
                // next call reads again.
                (&mut ahead.read)
                    .await
                    .map_err(|e| crate::error::Error::backend("read ahead", e))??
            }
            _ => self.store.read_all(self.position, self.batch_size).await?,
        };
        let Some(last) = events.last() else {
            return Ok(None);
        };
        let position = last.position.unwrap_or(self.position).max(self.position);
        if self.read_ahead && events.len() >= self.batch_size {
            let (store, size) = (Arc::clone(&self.store), self.batch_size);
            self.prefetch = Some(Prefetch {
                after: position,
                size,
                read: tokio::spawn(async move { store.read_all(position, size).await }),
            });
        }
        let events: Vec<Event> = events
            .into_iter()
            .filter(|e| self.criteria.matches(e))
            .collect();
        // Moved only after the last await, so a dropped future never loses a batch.
        self.position = position;
        Ok(Some(Batch { events, position }))
    }

    /// Waits for the commit signal, at most the poll interval.
    pub async fn wait(&mut self) {
        wait_for_commit(&mut self.signal, self.poll_interval).await;
    }
}

/// Waits until `signal` (a store's [`commit_signal`](EventStore::commit_signal)) changes, at
/// most `poll_interval`: how every follower of the store sleeps when caught up. A closed signal
/// (the store is shutting down) degrades to plain polling.
pub async fn wait_for_commit(signal: &mut watch::Receiver<u64>, poll_interval: Duration) {
    match tokio::time::timeout(poll_interval, signal.changed()).await {
        Ok(Ok(())) | Err(_) => {}
        Ok(Err(_)) => tokio::time::sleep(poll_interval).await,
    }
}

/// Runs a store subscription in a task: delivers every event matching `criteria` after
/// `criteria.after_position` to `handler`, in global order, then follows live, until the returned
/// [`Subscription`] is dropped. `options.batch_size` is the read batch size (`criteria.limit`
/// does not apply to a subscription).
///
/// This is the shared implementation of [`EventStore::subscribe_dyn`]; a backend calls it with
/// an `Arc` of itself (for a `Clone` store, `Arc::new(self.clone())`).
///
/// Delivery is sequential. A handler error or panic is logged with `tracing` and the subscription
/// moves on to the next event. A read error is logged and retried after the poll interval.
///
/// Must be called within a Tokio runtime.
pub fn subscribe(
    store: Arc<dyn EventStore>,
    criteria: EventCriteria,
    options: SubscribeOptions,
    handler: Arc<dyn Handler>,
) -> Subscription {
    subscribe_with(store, criteria, options, handler, DEFAULT_POLL_INTERVAL)
}

/// [`subscribe`] with an explicit polling fallback interval.
pub fn subscribe_with(
    store: Arc<dyn EventStore>,
    criteria: EventCriteria,
    options: SubscribeOptions,
    handler: Arc<dyn Handler>,
    poll_interval: Duration,
) -> Subscription {
    let description = describe(&criteria);
    let after = criteria.after_position.unwrap_or(0);
    let mut follower = Follower::new(store, after)
        .batch_size(options.batch_size)
        .criteria(criteria)
        .poll_interval(poll_interval);
    // Checked before every delivery, so nothing is delivered once the subscription is dropped,
    // even if the task is mid-poll on another thread when the abort arrives.
    let cancelled = Arc::new(AtomicBool::new(false));
    let task_cancelled = Arc::clone(&cancelled);
    let task_description = description.clone();
    let span = tracing::debug_span!("store_subscription", subscription = %description);
    let task = tokio::spawn(tracing::Instrument::instrument(
        async move {
            loop {
                let batch = match follower.next_batch().await {
                    Ok(batch) => batch,
                    Err(error) => {
                        tracing::warn!(
                            subscription = %task_description,
                            position = follower.position(),
                            %error,
                            "store subscription: read failed; retrying"
                        );
                        tokio::time::sleep(follower.poll_interval).await;
                        continue;
                    }
                };
                for event in batch.events {
                    if task_cancelled.load(Ordering::Acquire) {
                        return;
                    }
                    deliver(&*handler, event, &task_description).await;
                }
            }
        },
        span,
    ));
    let abort = task.abort_handle();
    Subscription::new(description, move || {
        cancelled.store(true, Ordering::Release);
        abort.abort();
    })
}

/// Calls `handler` for one event through the shared delivery core, turning an error or a panic
/// into a `tracing` warning.
async fn deliver(handler: &dyn Handler, event: Event, subscription: &str) {
    let (id, event_type, position) = (event.id, event.event_type.clone(), event.position);
    let outcome = delivery::run(handler, Arc::new(event), subscription).await;
    if let Some(failure) = outcome.failure() {
        tracing::warn!(
            subscription,
            event_id = %id,
            event_type,
            position,
            "store subscription: {failure}; moving on"
        );
    }
}

/// A short description of a subscription's criteria, used as its [`Subscription::pattern`].
fn describe(criteria: &EventCriteria) -> String {
    let mut out = String::from("store");
    if !criteria.event_types.is_empty() {
        let _ = write!(out, " types={}", criteria.event_types.join(","));
    }
    if let Some(s) = &criteria.stream_id {
        let _ = write!(out, " stream={s}");
    }
    if let Some(c) = &criteria.correlation_id {
        let _ = write!(out, " correlation={c}");
    }
    if let Some(t) = &criteria.tenant_id {
        let _ = write!(out, " tenant={t}");
    }
    if let Some(p) = criteria.after_position {
        let _ = write!(out, " after={p}");
    }
    out
}

#[cfg(test)]
mod tests;
