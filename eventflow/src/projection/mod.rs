//! Projections: read models built from the event store in global order, with checkpoints.
//!
//! A [`Projection`] has a name, the event patterns it wants and an async handler. A
//! [`ProjectionRunner`] feeds it from an [`EventStore`]: it loads the projection's checkpoint,
//! catches up with [`read_all`](EventStore::read_all) in batches, then follows new commits (it
//! waits on [`EventStore::commit_signal`], with a polling timeout as fallback). It saves the
//! checkpoint once per batch, never per event; while catching up it reads the next batch, and
//! finishes saving the previous checkpoint, while the current batch is applied.
//!
//! Delivery is **at least once**: a crash after the handler ran but before the batch's checkpoint
//! was saved replays those events. A projection whose read model lives in PostgreSQL can close
//! that gap with `eventflow::postgres::PgProjection` (feature `postgres`): its handler writes in the same
//! transaction that advances the checkpoint, so an event is applied exactly once.
//!
//! **The checkpoint never moves past an event that was not handled.** When the handler fails,
//! the [`FailurePolicy`] decides: retry with backoff, skip the event (it is reported in
//! [`ProjectionStatus`] and through `tracing`), or stop the runner.
//!
//! For consumers in other processes, [`subscribe`] runs the same projection from a (durable)
//! bus subscription instead of the store.
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use eventflow::projection::Projection;
//! use eventflow::{Event, HandlerResult};
//!
//! #[derive(Default)]
//! struct OrderCount(Mutex<u64>);
//!
//! #[async_trait::async_trait]
//! impl Projection for OrderCount {
//!     fn name(&self) -> &str { "order-count" }
//!     fn patterns(&self) -> Vec<String> { vec!["order.placed".into()] }
//!     async fn handle(&self, _event: &Event) -> HandlerResult {
//!         *self.0.lock().unwrap() += 1;
//!         Ok(())
//!     }
//!     async fn reset(&self) -> HandlerResult {
//!         *self.0.lock().unwrap() = 0;
//!         Ok(())
//!     }
//! }
//! # let _ = Arc::new(OrderCount::default());
//! ```

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::FutureExt;
use tokio::sync::{Mutex, watch};

use crate::bus::{EventBus, HandlerResult, Pattern, Subscription};
use crate::error::{BoxError, Error, Result};
use crate::event::{DomainEvent, Event};
use crate::store::{CheckpointStore, EventStore};

/// A read model fed with events in global order.
///
/// Contract:
/// - `handle` is called for every stored event whose type matches one of
///   [`patterns`](Self::patterns), one at a time, in global position order.
/// - Delivery is at least once: after a crash, events since the last checkpoint are delivered
///   again, so `handle` should be idempotent (or use a transactional PostgreSQL projection).
/// - An error (or a panic) from `handle` means "not handled": the runner applies its
///   [`FailurePolicy`] and never checkpoints past that event unless the policy skips it.
/// - [`reset`](Self::reset) clears the read model before a [`rebuild`](ProjectionRunner::rebuild).
#[async_trait]
pub trait Projection: Send + Sync + 'static {
    /// The projection's name; it keys its checkpoint, so it must be stable.
    fn name(&self) -> &str;

    /// The event patterns it wants (`*`, `order.*`, `order.>` or exact types); default all.
    /// For a typed event set, return [`event_types_of::<E>()`](event_types_of).
    fn patterns(&self) -> Vec<String> {
        vec!["*".to_owned()]
    }

    /// Applies one event to the read model.
    async fn handle(&self, event: &Event) -> HandlerResult;

    /// Clears the read model (called by [`ProjectionRunner::rebuild`] before replaying).
    async fn reset(&self) -> HandlerResult {
        Ok(())
    }
}

#[async_trait]
impl<P: Projection + ?Sized> Projection for Arc<P> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn patterns(&self) -> Vec<String> {
        (**self).patterns()
    }
    async fn handle(&self, event: &Event) -> HandlerResult {
        (**self).handle(event).await
    }
    async fn reset(&self) -> HandlerResult {
        (**self).reset().await
    }
}

/// The event types of a typed event set, as exact patterns for [`Projection::patterns`].
pub fn event_types_of<E: DomainEvent>() -> Vec<String> {
    E::event_types().iter().map(|t| (*t).to_owned()).collect()
}

/// A parsed set of patterns; `*` short-circuits.
#[derive(Debug, Clone)]
pub(crate) struct Filter {
    patterns: Vec<Pattern>,
    all: bool,
}

impl Filter {
    pub(crate) fn parse(patterns: &[String]) -> Result<Self> {
        let patterns = patterns
            .iter()
            .map(|p| Pattern::parse(p))
            .collect::<Result<Vec<_>>>()?;
        let all = patterns.iter().any(Pattern::is_all);
        Ok(Filter { patterns, all })
    }

    pub(crate) fn matches(&self, event_type: &str) -> bool {
        self.all || self.patterns.iter().any(|p| p.matches(event_type))
    }
}

/// How long to wait between retries of a failing event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the first retry.
    pub initial: Duration,
    /// Upper bound of the delay (it doubles per attempt up to this).
    pub max: Duration,
    /// Give up (and stop the runner) after this many failed attempts; `None` retries forever.
    pub max_attempts: Option<u32>,
}

impl Backoff {
    /// The delay after the `attempt`-th failure (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(5),
            max_attempts: None,
        }
    }
}

/// What the runner does when the handler fails on an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailurePolicy {
    /// Retry the event with backoff; after `max_attempts` (if set) the runner stops.
    Retry(Backoff),
    /// Report the event (status, `tracing` error) and move past it.
    Skip,
    /// Stop the runner at the event; the checkpoint stays just before it.
    Stop,
}

impl Default for FailurePolicy {
    fn default() -> Self {
        FailurePolicy::Retry(Backoff::default())
    }
}

/// Runner settings.
#[derive(Debug, Clone)]
pub struct RunnerOptions {
    /// Events read (and checkpointed) per batch.
    pub batch_size: usize,
    /// How long the live loop waits for a commit signal before reading anyway.
    pub poll_interval: Duration,
    /// What to do when the handler fails.
    pub failure: FailurePolicy,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        RunnerOptions {
            batch_size: 500,
            poll_interval: Duration::from_secs(1),
            failure: FailurePolicy::default(),
        }
    }
}

/// Where a runner is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RunState {
    /// Not started, or between runs.
    Idle,
    /// Reading stored events faster than they arrive.
    CatchingUp,
    /// Caught up; waiting for commits.
    Live,
    /// Stopped on an event it could not handle (see [`ProjectionStatus::failure`]).
    Failed,
}

/// An event the handler could not handle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedEvent {
    /// Its global position.
    pub position: u64,
    /// Its id.
    pub event_id: uuid::Uuid,
    /// Its type.
    pub event_type: String,
    /// The handler's error message.
    pub error: String,
}

/// A runner's progress, readable at any time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectionStatus {
    /// The projection's name.
    pub name: String,
    /// The position of the last event handled (and checkpointed or about to be).
    pub position: u64,
    /// The store's head position when the status was taken.
    pub head: u64,
    /// `head - position`, in positions; 0 means caught up. In the in-memory store positions are
    /// dense, so this counts events; in PostgreSQL positions are `(transaction id << 20) + index`
    /// and not dense, so it says whether the reader is behind, not by how many events.
    pub lag: u64,
    /// The runner's state.
    pub state: RunState,
    /// Events skipped under [`FailurePolicy::Skip`].
    pub skipped: u64,
    /// The last failure (retried, skipped, or the one it stopped on).
    pub failure: Option<FailedEvent>,
}

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

/// Runs a handler future, turning a panic into an error so a buggy handler cannot kill the
/// runner's task.
pub(crate) async fn guarded<F>(fut: F) -> HandlerResult
where
    F: std::future::Future<Output = HandlerResult>,
{
    match AssertUnwindSafe(fut).catch_unwind().await {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "handler panicked".to_owned());
            Err(format!("handler panicked: {message}").into())
        }
    }
}

struct PlainApplier {
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
        self.checkpoints.save_checkpoint(&self.name, 0).await
    }
}

/// A read of the next batch started while the current one is applied.
struct Prefetch {
    after: u64,
    read: tokio::task::JoinHandle<Result<Vec<Event>>>,
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.read.abort();
    }
}

#[derive(Default)]
struct Cursor {
    loaded: bool,
    position: u64,
    /// Failed attempts on the event right after `position`.
    attempts: u32,
    prefetch: Option<Prefetch>,
}

struct Shared {
    state: RunState,
    skipped: u64,
    failure: Option<FailedEvent>,
    stopped: bool,
}

struct Inner {
    name: String,
    store: Arc<dyn EventStore>,
    applier: Arc<dyn Applier>,
    options: RunnerOptions,
    /// One batch at a time (live loop, `catch_up` and `rebuild` share it).
    cursor: Mutex<Cursor>,
    position: AtomicU64,
    progress: watch::Sender<u64>,
    shared: StdMutex<Shared>,
}

/// Feeds a projection from an [`EventStore`]: catch up from its checkpoint, then follow live.
///
/// Cloning gives another handle to the same runner. Batches never overlap: the live loop,
/// [`catch_up`](Self::catch_up) and [`rebuild`](Self::rebuild) take turns.
#[derive(Clone)]
pub struct ProjectionRunner {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ProjectionRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProjectionRunner")
            .field("name", &self.inner.name)
            .field("position", &self.position())
            .finish_non_exhaustive()
    }
}

/// Whether a step made progress.
enum Step {
    Progress,
    Idle,
}

impl ProjectionRunner {
    /// A runner for `projection` over `store`, keeping its checkpoint in `checkpoints`.
    ///
    /// # Errors
    /// [`Error::InvalidPattern`] when one of the projection's patterns is invalid.
    pub fn new<P: Projection>(
        store: Arc<dyn EventStore>,
        checkpoints: Arc<dyn CheckpointStore>,
        projection: P,
    ) -> Result<Self> {
        let filter = Filter::parse(&projection.patterns())?;
        let name = projection.name().to_owned();
        let applier = PlainApplier {
            name: name.clone(),
            projection: Arc::new(projection),
            checkpoints,
            filter,
            pending: Mutex::new(None),
        };
        Ok(Self::from_applier(store, Arc::new(applier)))
    }

    pub(crate) fn from_applier(store: Arc<dyn EventStore>, applier: Arc<dyn Applier>) -> Self {
        ProjectionRunner {
            inner: Arc::new(Inner {
                name: applier.name().to_owned(),
                store,
                applier,
                options: RunnerOptions::default(),
                cursor: Mutex::new(Cursor::default()),
                position: AtomicU64::new(0),
                progress: watch::channel(0).0,
                shared: StdMutex::new(Shared {
                    state: RunState::Idle,
                    skipped: 0,
                    failure: None,
                    stopped: false,
                }),
            }),
        }
    }

    /// Replaces the options. Call before the runner is shared or started.
    ///
    /// # Panics
    /// When the runner has already been cloned or started.
    #[must_use]
    pub fn with_options(mut self, options: RunnerOptions) -> Self {
        let inner = Arc::get_mut(&mut self.inner)
            .expect("with_options must be called before the runner is cloned or started");
        inner.options = options;
        self
    }

    /// Sets the failure policy (see [`with_options`](Self::with_options)).
    #[must_use]
    pub fn with_failure_policy(self, failure: FailurePolicy) -> Self {
        let options = RunnerOptions {
            failure,
            ..self.inner.options.clone()
        };
        self.with_options(options)
    }

    /// Sets the batch size (see [`with_options`](Self::with_options)).
    #[must_use]
    pub fn with_batch_size(self, batch_size: usize) -> Self {
        let options = RunnerOptions {
            batch_size: batch_size.max(1),
            ..self.inner.options.clone()
        };
        self.with_options(options)
    }

    /// The projection's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The position of the last handled event (0 before the checkpoint is loaded).
    pub fn position(&self) -> u64 {
        self.inner.position.load(Ordering::Acquire)
    }

    /// The runner's status; `lag` is measured against the store's current head.
    ///
    /// # Errors
    /// Backend errors reading the head position.
    pub async fn status(&self) -> Result<ProjectionStatus> {
        let head = self.inner.store.head_position().await?;
        let position = self.position();
        let shared = self.lock_shared();
        Ok(ProjectionStatus {
            name: self.inner.name.clone(),
            position,
            head,
            lag: head.saturating_sub(position),
            state: shared.state,
            skipped: shared.skipped,
            failure: shared.failure.clone(),
        })
    }

    fn lock_shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        // A poisoned lock only means a panic elsewhere while it was held; the data is plain.
        self.inner
            .shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set_state(&self, state: RunState) {
        self.lock_shared().state = state;
    }

    fn set_position(&self, cursor: &mut Cursor, position: u64) {
        if cursor.position != position {
            cursor.attempts = 0;
        }
        cursor.position = position;
        self.inner.position.store(position, Ordering::Release);
        self.inner.progress.send_replace(position);
    }

    /// Handles every stored event after the checkpoint, in batches, and returns the position
    /// reached (the store's head at the time the last read came back empty).
    ///
    /// # Errors
    /// [`Error::Handler`] when the runner stopped on an event (policy `Stop`, or retries
    /// exhausted); backend errors of the store or the read model.
    pub async fn catch_up(&self) -> Result<u64> {
        let mut cursor = self.inner.cursor.lock().await;
        loop {
            match self.step(&mut cursor).await? {
                Step::Progress => {}
                Step::Idle => return Ok(cursor.position),
            }
        }
    }

    /// Clears the read model (the projection's reset hook), sets the checkpoint to 0 and replays
    /// every stored event. A stopped runner is cleared to run again.
    ///
    /// # Errors
    /// As [`catch_up`](Self::catch_up), and the reset hook's error.
    pub async fn rebuild(&self) -> Result<u64> {
        {
            let mut cursor = self.inner.cursor.lock().await;
            tracing::info!(projection = %self.inner.name, "projection rebuild");
            self.inner.applier.reset().await?;
            cursor.loaded = true;
            self.set_position(&mut cursor, 0);
            cursor.attempts = 0;
            let mut shared = self.lock_shared();
            shared.stopped = false;
            shared.failure = None;
            shared.skipped = 0;
            shared.state = RunState::CatchingUp;
        }
        self.catch_up().await
    }

    /// Clears a stop (policy `Stop` or exhausted retries) so the runner tries the event again.
    pub fn resume(&self) {
        let mut shared = self.lock_shared();
        shared.stopped = false;
        shared.state = RunState::Idle;
    }

    /// Waits until the runner has handled every event up to `position`.
    ///
    /// # Errors
    /// [`Error::Timeout`] after `timeout`.
    pub async fn wait_for(&self, position: u64, timeout: Duration) -> Result<()> {
        let mut rx = self.inner.progress.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|p| *p >= position))
            .await
            .map_err(|_| Error::Timeout {
                operation: "projection wait_for",
                after: timeout,
            })?
            .map_err(|_| Error::Closed("projection runner"))?;
        Ok(())
    }

    /// Waits until the runner has handled everything stored now.
    ///
    /// # Errors
    /// [`Error::Timeout`] after `timeout`; backend errors reading the head.
    pub async fn wait_caught_up(&self, timeout: Duration) -> Result<()> {
        let head = self.inner.store.head_position().await?;
        self.wait_for(head, timeout).await
    }

    /// Starts the live loop on the current tokio runtime: catch up, then follow commits until
    /// the returned task is stopped or dropped, or the runner stops on an event.
    ///
    /// [`ProjectionTask::stop`] lets the batch in flight finish. Dropping the task aborts it,
    /// even mid-batch, like a crash: the checkpoint then reflects the last saved batch, so those
    /// events are replayed on restart (exactly once with a transactional PostgreSQL projection,
    /// at least once otherwise). Prefer `stop` with a connection pool shared with other work:
    /// a query cancelled mid-flight costs the pool that connection's state.
    pub fn start(&self) -> ProjectionTask {
        let runner = self.clone();
        let (stop, stopped) = watch::channel(false);
        let handle = tokio::spawn(async move { runner.follow(stopped).await });
        ProjectionTask {
            handle: Some(handle),
            stop,
        }
    }

    async fn follow(self, mut stop: watch::Receiver<bool>) {
        let mut signal = self.inner.store.commit_signal();
        let mut errors = 0u32;
        while !*stop.borrow() {
            // Mark the signal seen before reading, so a commit during the read wakes us again.
            signal.borrow_and_update();
            let step = {
                let mut cursor = self.inner.cursor.lock().await;
                self.step(&mut cursor).await
            };
            let delay = match step {
                Ok(Step::Progress) => {
                    errors = 0;
                    continue;
                }
                Ok(Step::Idle) => {
                    errors = 0;
                    self.inner.options.poll_interval
                }
                Err(e) => {
                    if self.lock_shared().stopped {
                        tracing::error!(projection = %self.inner.name, error = %e, "projection stopped");
                        return;
                    }
                    errors = errors.saturating_add(1);
                    let delay = Backoff::default().delay(errors);
                    tracing::warn!(projection = %self.inner.name, error = %e, ?delay, "projection read failed; retrying");
                    delay
                }
            };
            tokio::select! {
                changed = signal.changed(), if errors == 0 => {
                    if changed.is_err() {
                        // The store dropped its signal; fall back to polling.
                        tokio::time::sleep(self.inner.options.poll_interval).await;
                    }
                }
                () = tokio::time::sleep(delay) => {}
                _ = stop.changed() => {}
            }
        }
        self.set_state(RunState::Idle);
    }

    async fn step(&self, cursor: &mut Cursor) -> Result<Step> {
        if let Some(failure) = self.stopped_error() {
            return Err(failure);
        }
        if !cursor.loaded {
            let position = self.inner.applier.load_checkpoint().await?;
            cursor.loaded = true;
            self.set_position(cursor, position);
        }
        let batch_size = self.inner.options.batch_size;
        let batch = match cursor.prefetch.take() {
            Some(mut prefetch) if prefetch.after == cursor.position => (&mut prefetch.read)
                .await
                .map_err(|e| Error::backend("projection read", e))??,
            _ => {
                self.inner
                    .store
                    .read_all(cursor.position, batch_size)
                    .await?
            }
        };
        let Some(last) = batch.last() else {
            // Caught up: make the last batch's checkpoint durable before reporting it.
            self.inner.applier.flush().await?;
            self.set_state(RunState::Live);
            return Ok(Step::Idle);
        };
        let through = position_of(last)?;
        if batch.len() >= batch_size {
            // Catching up: read the next batch while this one is applied and checkpointed.
            let store = Arc::clone(&self.inner.store);
            cursor.prefetch = Some(Prefetch {
                after: through,
                read: tokio::spawn(async move { store.read_all(through, batch_size).await }),
            });
        }
        let batch: Vec<Arc<Event>> = batch.into_iter().map(Arc::new).collect();
        self.set_state(RunState::CatchingUp);
        match self
            .inner
            .applier
            .apply(cursor.position, &batch, through)
            .await
        {
            Ok(()) => {
                tracing::debug!(projection = %self.inner.name, through, events = batch.len(), "projection batch");
                self.set_position(cursor, through);
                Ok(Step::Progress)
            }
            Err(ApplyError::Moved(position)) => {
                tracing::info!(projection = %self.inner.name, position, "checkpoint moved by another runner");
                self.set_position(cursor, position);
                Ok(Step::Progress)
            }
            Err(ApplyError::Store(e)) => Err(e),
            Err(ApplyError::Handler {
                index,
                handled_through,
                error,
            }) => {
                if let Some(p) = handled_through {
                    self.set_position(cursor, p);
                }
                self.on_failure(cursor, &batch[index], error).await
            }
        }
    }

    fn stopped_error(&self) -> Option<Error> {
        let shared = self.lock_shared();
        if !shared.stopped {
            return None;
        }
        let failure = shared.failure.clone();
        Some(match failure {
            Some(f) => Error::Handler {
                event_id: f.event_id,
                event_type: f.event_type,
                source: format!("projection {} stopped: {}", self.inner.name, f.error).into(),
            },
            None => Error::Closed("projection runner"),
        })
    }

    async fn on_failure(
        &self,
        cursor: &mut Cursor,
        event: &Event,
        error: BoxError,
    ) -> Result<Step> {
        let position = position_of(event)?;
        let failed = FailedEvent {
            position,
            event_id: event.id,
            event_type: event.event_type.clone(),
            error: error.to_string(),
        };
        cursor.attempts = cursor.attempts.saturating_add(1);
        let give_up = match self.inner.options.failure {
            FailurePolicy::Stop => true,
            FailurePolicy::Retry(backoff) => {
                backoff.max_attempts.is_some_and(|m| cursor.attempts >= m)
            }
            FailurePolicy::Skip => {
                tracing::error!(projection = %self.inner.name, event_id = %event.id, event_type = %event.event_type, position, error = %error, "projection skipped an event it could not handle");
                match self.inner.applier.skip(cursor.position, position).await {
                    Ok(()) => {}
                    Err(ApplyError::Moved(p)) => {
                        self.set_position(cursor, p);
                        return Ok(Step::Progress);
                    }
                    Err(ApplyError::Store(e)) => return Err(e),
                    Err(ApplyError::Handler { error, .. }) => {
                        return Err(Error::backend("projection", error));
                    }
                }
                {
                    let mut shared = self.lock_shared();
                    shared.skipped += 1;
                    shared.failure = Some(failed);
                }
                self.set_position(cursor, position);
                return Ok(Step::Progress);
            }
        };
        if give_up {
            tracing::error!(projection = %self.inner.name, event_id = %event.id, event_type = %event.event_type, position, attempts = cursor.attempts, error = %error, "projection stopped on an event it could not handle");
            let mut shared = self.lock_shared();
            shared.failure = Some(failed);
            shared.stopped = true;
            shared.state = RunState::Failed;
            drop(shared);
            return Err(Error::Handler {
                event_id: event.id,
                event_type: event.event_type.clone(),
                source: error,
            });
        }
        let FailurePolicy::Retry(backoff) = self.inner.options.failure else {
            unreachable!("only Retry can reach here");
        };
        let delay = backoff.delay(cursor.attempts);
        tracing::warn!(projection = %self.inner.name, event_id = %event.id, event_type = %event.event_type, position, attempt = cursor.attempts, ?delay, error = %error, "projection handler failed; retrying");
        self.lock_shared().failure = Some(failed);
        tokio::time::sleep(delay).await;
        Ok(Step::Progress)
    }
}

/// The live loop of a [`ProjectionRunner`]; dropping it aborts the loop (see
/// [`ProjectionRunner::start`]).
#[derive(Debug)]
pub struct ProjectionTask {
    handle: Option<tokio::task::JoinHandle<()>>,
    stop: watch::Sender<bool>,
}

impl ProjectionTask {
    /// Stops the loop after the batch in flight and waits for it to end.
    pub async fn stop(mut self) {
        self.stop.send_replace(true);
        if let Some(handle) = self.handle.take() {
            let _ = handle.await;
        }
    }

    /// Aborts the loop at once, even mid-batch (as a crash would), and waits for it to end.
    pub async fn abort(mut self) {
        if let Some(handle) = self.handle.take() {
            handle.abort();
            let _ = handle.await;
        }
    }

    /// Whether the loop has ended (it ends on its own only when the runner stops on an event).
    pub fn is_finished(&self) -> bool {
        self.handle.as_ref().is_none_or(|h| h.is_finished())
    }
}

impl Drop for ProjectionTask {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            handle.abort();
        }
    }
}

/// Runs `projection` from a bus subscription instead of the store: for consumers in other
/// processes that read the bus (NATS JetStream, Redis Streams) rather than the database.
///
/// Every pattern of the projection is subscribed with a handler that calls
/// [`Projection::handle`] and returns its result, so a durable backend redelivers an event the
/// projection failed on. There is no checkpoint here: the bus's acknowledgement is the
/// checkpoint, delivery is at least once, and the handler should be idempotent. Dropping the
/// returned subscription ends every underlying one.
///
/// # Errors
/// Invalid patterns, and the bus's subscribe errors.
pub async fn subscribe<P: Projection>(bus: &dyn EventBus, projection: P) -> Result<Subscription> {
    let projection: Arc<dyn Projection> = Arc::new(projection);
    let patterns = projection.patterns();
    Filter::parse(&patterns)?;
    let mut subscriptions = Vec::with_capacity(patterns.len());
    for pattern in &patterns {
        let projection = Arc::clone(&projection);
        let handler = move |event: Arc<Event>| {
            let projection = Arc::clone(&projection);
            async move { guarded(projection.handle(&event)).await }
        };
        subscriptions.push(bus.subscribe(pattern, Arc::new(handler)).await?);
    }
    let description = format!("projection {} [{}]", projection.name(), patterns.join(", "));
    Ok(Subscription::new(description, move || drop(subscriptions)))
}

#[cfg(test)]
mod tests;
