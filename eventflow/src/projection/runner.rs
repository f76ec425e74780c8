//! [`ProjectionRunner`]: feeds a projection from the store, following it through
//! [`store::follow`](crate::store::follow).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use tokio::sync::{Mutex, watch};

use super::applier::PlainApplier;
use super::{
    Applier, ApplyError, Backoff, FailedEvent, FailurePolicy, Filter, Projection, ProjectionStatus,
    RunState, RunnerOptions, position_of,
};
use crate::error::{BoxError, Error, Result};
use crate::event::Event;
use crate::handler::sync;
use crate::store::dead_letter::{DeadLetterStore, InMemoryDeadLetterStore, ParkedEvent};
use crate::store::follow::{self, Follower};
use crate::store::{CheckpointStore, EventStore};

/// Where the runner reads; one batch at a time.
struct Cursor {
    loaded: bool,
    /// The position of the last handled event; the follower is moved back here when a batch
    /// was only partly handled.
    position: u64,
    /// Failed attempts on the event right after `position`.
    attempts: u32,
    /// Reads the store in global order, reading the next batch ahead while catching up.
    follower: Follower,
}

struct Shared {
    /// The runner's settings, shared by every handle (see [`ProjectionRunner::options`]).
    options: RunnerOptions,
    state: RunState,
    skipped: u64,
    parked: u64,
    /// Where [`FailurePolicy::Park`] parks events.
    dead_letters: Arc<dyn DeadLetterStore>,
    failure: Option<FailedEvent>,
    stopped: bool,
    /// The partition lease this runner worked under was lost (a fenced commit was refused):
    /// the live loop ends and nothing more is committed.
    lost: bool,
}

struct Inner {
    name: String,
    /// The projection lag gauge's `projection` label, and its `partition` label for a
    /// partition's runner.
    metric: (String, Option<u32>),
    store: Arc<dyn EventStore>,
    applier: Arc<dyn Applier>,
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
    /// Sets the projection lag gauge from the newest event of what was applied.
    fn applied_metric(&self, newest: chrono::DateTime<chrono::Utc>) {
        let (name, partition) = &self.inner.metric;
        crate::metrics::projection_applied(name, *partition, newest);
    }

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
        let applier = PlainApplier::new(name, Arc::new(projection), checkpoints, filter);
        Ok(Self::from_applier(store, Arc::new(applier)))
    }

    pub(crate) fn from_applier(store: Arc<dyn EventStore>, applier: Arc<dyn Applier>) -> Self {
        let options = RunnerOptions::default();
        let follower = Follower::new(Arc::clone(&store), 0)
            .batch_size(options.batch_size)
            .read_ahead(true);
        ProjectionRunner {
            inner: Arc::new(Inner {
                name: applier.name().to_owned(),
                metric: {
                    let (name, partition) = applier.metric_labels();
                    (name.to_owned(), partition)
                },
                store,
                applier,
                cursor: Mutex::new(Cursor {
                    loaded: false,
                    position: 0,
                    attempts: 0,
                    follower,
                }),
                position: AtomicU64::new(0),
                progress: watch::channel(0).0,
                shared: StdMutex::new(Shared {
                    options,
                    state: RunState::Idle,
                    skipped: 0,
                    parked: 0,
                    dead_letters: Arc::new(InMemoryDeadLetterStore::new()),
                    failure: None,
                    stopped: false,
                    lost: false,
                }),
            }),
        }
    }

    /// Replaces the options. They belong to the runner, so every handle (clone) sees them; a
    /// running live loop uses them from its next batch on.
    #[must_use]
    pub fn options(self, options: RunnerOptions) -> Self {
        let batch_size = options.batch_size.max(1);
        self.lock_shared().options = RunnerOptions {
            batch_size,
            ..options
        };
        self
    }

    /// Sets the failure policy (see [`options`](Self::options)).
    #[must_use]
    pub fn failure_policy(self, failure: FailurePolicy) -> Self {
        self.lock_shared().options.failure = failure;
        self
    }

    /// Where [`FailurePolicy::Park`] parks the events the handler fails on (source: the
    /// projection's name); in memory unless set. With a PostgreSQL store, pass its
    /// `dead_letters()` so they survive a restart.
    #[must_use]
    pub fn dead_letters(self, dead_letters: Arc<dyn DeadLetterStore>) -> Self {
        self.lock_shared().dead_letters = dead_letters;
        self
    }

    /// The dead-letter store of [`FailurePolicy::Park`].
    pub fn dead_letter_store(&self) -> Arc<dyn DeadLetterStore> {
        Arc::clone(&self.lock_shared().dead_letters)
    }

    /// Up to `limit` events this projection parked, oldest first.
    ///
    /// # Errors
    /// The dead-letter store's errors.
    pub async fn parked(&self, limit: usize) -> Result<Vec<ParkedEvent>> {
        self.dead_letter_store().list(&self.inner.name, limit).await
    }

    /// Sets the number of events read and checkpointed per batch, at least 1 (see
    /// [`options`](Self::options)).
    #[must_use]
    pub fn batch_size(self, batch_size: usize) -> Self {
        self.lock_shared().options.batch_size = batch_size.max(1);
        self
    }

    /// Sets how long the live loop waits for a commit signal before reading anyway (see
    /// [`options`](Self::options)).
    #[must_use]
    pub fn poll_interval(self, interval: Duration) -> Self {
        self.lock_shared().options.poll_interval = interval;
        self
    }

    fn current_options(&self) -> RunnerOptions {
        self.lock_shared().options.clone()
    }

    /// The projection's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Whether the partition lease this runner worked under was lost (its live loop has ended).
    pub(crate) fn lease_lost(&self) -> bool {
        self.lock_shared().lost
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
            parked: shared.parked,
            failure: shared.failure.clone(),
        })
    }

    fn lock_shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        sync::lock(&self.inner.shared)
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
        self.reset().await?;
        self.catch_up().await
    }

    /// Clears the read model (the projection's reset hook) and sets the checkpoint to 0,
    /// without replaying: the next [`catch_up`](Self::catch_up) or live batch starts from the
    /// first event. For a transactional PostgreSQL projection (`PgProjection`) this also restarts a
    /// runner of the same projection in another process, which finds its checkpoint moved (as
    /// `eventflow projections reset` relies on). A stopped runner is cleared to run again.
    ///
    /// # Errors
    /// The reset hook's error; backend errors.
    pub async fn reset(&self) -> Result<()> {
        {
            let mut cursor = self.inner.cursor.lock().await;
            tracing::info!(projection = %self.inner.name, "projection reset");
            self.inner.applier.reset().await?;
            cursor.loaded = true;
            self.set_position(&mut cursor, 0);
            cursor.attempts = 0;
            let mut shared = self.lock_shared();
            shared.stopped = false;
            shared.failure = None;
            shared.skipped = 0;
            shared.parked = 0;
            shared.state = RunState::Idle;
        }
        Ok(())
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
            match step {
                Ok(Step::Progress) => {
                    errors = 0;
                    continue;
                }
                Ok(Step::Idle) => {
                    errors = 0;
                    let poll_interval = self.current_options().poll_interval;
                    tokio::select! {
                        () = follow::wait_for_commit(&mut signal, poll_interval) => {}
                        _ = stop.changed() => {}
                    }
                }
                Err(e) => {
                    if self.lock_shared().lost {
                        tracing::warn!(projection = %self.inner.name, error = %e, "partition lease lost; this runner stops without committing");
                        self.set_state(RunState::Idle);
                        return;
                    }
                    if self.lock_shared().stopped {
                        tracing::error!(projection = %self.inner.name, error = %e, "projection stopped");
                        return;
                    }
                    errors = errors.saturating_add(1);
                    let delay = Backoff::default().next_delay(errors);
                    tracing::warn!(projection = %self.inner.name, error = %e, ?delay, "projection read failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        _ = stop.changed() => {}
                    }
                }
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
        let options = self.current_options();
        cursor.follower.seek(cursor.position);
        cursor.follower.set_batch_size(options.batch_size);
        let batch = cursor.follower.try_next_batch().await?.unwrap_or_default();
        let Some(last) = batch.events.last() else {
            // Caught up: make the last batch's checkpoint durable before reporting it.
            self.inner.applier.flush().await?;
            self.set_state(RunState::Live);
            return Ok(Step::Idle);
        };
        let through = position_of(last)?;
        let last_timestamp = last.timestamp;
        let batch: Vec<Arc<Event>> = batch.events.into_iter().map(Arc::new).collect();
        self.set_state(RunState::CatchingUp);
        match self
            .inner
            .applier
            .apply(cursor.position, &batch, through)
            .await
        {
            Ok(()) => {
                tracing::debug!(projection = %self.inner.name, through, events = batch.len(), "projection batch");
                self.applied_metric(last_timestamp);
                self.set_position(cursor, through);
                Ok(Step::Progress)
            }
            Err(ApplyError::Moved(position)) => {
                tracing::info!(projection = %self.inner.name, position, "checkpoint moved by another runner");
                self.set_position(cursor, position);
                Ok(Step::Progress)
            }
            Err(ApplyError::Store(e)) => Err(e),
            Err(ApplyError::LeaseLost(e)) => {
                self.lock_shared().lost = true;
                Err(e)
            }
            Err(ApplyError::Paused) => {
                // Like caught up: the live loop tries again at the next commit or poll.
                self.set_state(RunState::Paused);
                Ok(Step::Idle)
            }
            Err(ApplyError::Handler {
                index,
                handled_through,
                error,
            }) => {
                if let Some(p) = handled_through {
                    self.set_position(cursor, p);
                    if let Some(prev) = index.checked_sub(1) {
                        self.applied_metric(batch[prev].timestamp);
                    }
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
        let failure = self.current_options().failure;
        let give_up = match failure {
            FailurePolicy::Stop => true,
            FailurePolicy::Retry(backoff) => backoff.exhausted(cursor.attempts),
            FailurePolicy::Skip | FailurePolicy::Park => {
                let park = failure == FailurePolicy::Park;
                if park {
                    let dead_letters = self.dead_letter_store();
                    let parked = ParkedEvent::new(
                        self.inner.name.as_str(),
                        event.clone(),
                        "the projection's handler failed",
                        error.as_ref(),
                        cursor.attempts,
                    );
                    // Not parked, not past: the step runs again and so does the handler.
                    dead_letters.park(parked).await?;
                    tracing::error!(projection = %self.inner.name, event_id = %event.id, event_type = %event.event_type, position, error = %error, "projection parked an event it could not handle");
                } else {
                    tracing::error!(projection = %self.inner.name, event_id = %event.id, event_type = %event.event_type, position, error = %error, "projection skipped an event it could not handle");
                }
                match self.inner.applier.skip(cursor.position, position).await {
                    Ok(()) => {}
                    Err(ApplyError::Moved(p)) => {
                        self.set_position(cursor, p);
                        return Ok(Step::Progress);
                    }
                    Err(ApplyError::Store(e)) => return Err(e),
                    Err(ApplyError::LeaseLost(e)) => {
                        self.lock_shared().lost = true;
                        return Err(e);
                    }
                    // A skip applies nothing, so a pause does not stop it.
                    Err(ApplyError::Paused) => return Ok(Step::Idle),
                    Err(ApplyError::Handler { error, .. }) => {
                        return Err(Error::backend("projection", error));
                    }
                }
                {
                    let mut shared = self.lock_shared();
                    if park {
                        shared.parked += 1;
                    } else {
                        shared.skipped += 1;
                    }
                    shared.failure = Some(failed);
                }
                self.set_position(cursor, position);
                self.applied_metric(event.timestamp);
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
        let FailurePolicy::Retry(backoff) = failure else {
            unreachable!("only Retry can reach here");
        };
        let delay = backoff.next_delay(cursor.attempts);
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
