//! The event bus: publish events, subscribe handlers by pattern.
//!
//! [`EventBus`] is object-safe, so services hold an `Arc<dyn EventBus>` and pick the backend at
//! start-up: [`InMemoryBus`](memory::InMemoryBus), `NatsBus` (feature `nats`), `RedisBus`
//! (feature `redis`), or the test buses [`RecordingBus`](testing::RecordingBus) and
//! [`NoopBus`](testing::NoopBus).

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use serde_json::json;
use tokio::sync::broadcast;
use uuid::Uuid;

use crate::error::{BoxError, Result};
use crate::event::{Event, Metadata};

pub mod memory;
#[cfg(feature = "nats")]
pub mod nats;
pub mod pattern;
#[cfg(feature = "redis")]
pub mod redis;
pub mod testing;

pub use pattern::Pattern;

/// What a handler returns: `Ok(())` when the event was handled.
pub type HandlerResult = std::result::Result<(), BoxError>;

/// Handles events delivered by a bus or a store subscription.
///
/// Any `Fn(Arc<Event>) -> impl Future<Output = HandlerResult>` closure is a handler; wrap a
/// synchronous closure with [`sync_handler`]. The event is shared (`Arc`) between every
/// subscriber, never deep-cloned.
///
/// A handler that returns an error or panics never takes the bus down: the bus reports it on its
/// error stream, or, where the backend can redeliver (JetStream, Redis Streams), redelivers it.
pub trait Handler: Send + Sync + 'static {
    /// Handles one event.
    fn handle(&self, event: Arc<Event>) -> BoxFuture<'static, HandlerResult>;
}

impl<F, Fut> Handler for F
where
    F: Fn(Arc<Event>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    fn handle(&self, event: Arc<Event>) -> BoxFuture<'static, HandlerResult> {
        Box::pin(self(event))
    }
}

/// A shared handler is a handler, so an `Arc<dyn Handler>` can be passed wherever any handler
/// is accepted ([`EventBusExt::on`],
/// [`EventStoreExt::subscribe`](crate::store::EventStoreExt::subscribe)).
impl<H: Handler + ?Sized> Handler for Arc<H> {
    fn handle(&self, event: Arc<Event>) -> BoxFuture<'static, HandlerResult> {
        (**self).handle(event)
    }
}

/// A handler made from a synchronous closure (see [`sync_handler`]).
pub struct SyncHandler<F>(F);

impl<F> Handler for SyncHandler<F>
where
    F: Fn(&Event) -> HandlerResult + Send + Sync + 'static,
{
    fn handle(&self, event: Arc<Event>) -> BoxFuture<'static, HandlerResult> {
        Box::pin(std::future::ready((self.0)(&event)))
    }
}

/// Wraps a synchronous closure as a [`Handler`].
///
/// ```
/// use eventflow::bus::{sync_handler, Handler};
/// let handler = sync_handler(|event| {
///     tracing::info!(id = %event.id, "got {}", event.event_type);
///     Ok(())
/// });
/// # fn is_handler(_: impl Handler) {}
/// # is_handler(handler);
/// ```
pub fn sync_handler<F>(f: F) -> SyncHandler<F>
where
    F: Fn(&Event) -> HandlerResult + Send + Sync + 'static,
{
    SyncHandler(f)
}

/// What went wrong, for a [`BusError`] on a bus's error stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BusErrorKind {
    /// A handler returned an error.
    HandlerFailed,
    /// A handler panicked.
    HandlerPanicked,
    /// The connection to the server was lost.
    Disconnected,
    /// The connection was re-established.
    Reconnected,
    /// Messages were dropped because a subscriber could not keep up, or events may have been
    /// missed during an outage (at-most-once backends).
    Dropped,
    /// A message was given up on after too many deliveries (and dead-lettered if configured).
    DeadLettered,
    /// A received message could not be decoded.
    Decode,
    /// Anything else.
    Other,
}

/// A failure that has no caller to return to: a handler error or panic, a lost connection, a
/// dropped or dead-lettered message. Read them from [`EventBus::errors`].
#[derive(Debug, Clone)]
pub struct BusError {
    /// What went wrong.
    pub kind: BusErrorKind,
    /// The event concerned, when there is one.
    pub event_id: Option<Uuid>,
    /// Its type, when known.
    pub event_type: Option<String>,
    /// The subscription pattern concerned, when there is one.
    pub pattern: Option<String>,
    /// Human-readable detail.
    pub message: String,
}

impl BusError {
    /// A failure of `kind` with a message.
    pub fn new(kind: BusErrorKind, message: impl Into<String>) -> Self {
        BusError {
            kind,
            event_id: None,
            event_type: None,
            pattern: None,
            message: message.into(),
        }
    }

    /// Attaches the event concerned.
    pub fn for_event(mut self, event: &Event) -> Self {
        self.event_id = Some(event.id);
        self.event_type = Some(event.event_type.clone());
        self
    }

    /// Attaches the subscription pattern concerned.
    pub fn for_pattern(mut self, pattern: impl Into<String>) -> Self {
        self.pattern = Some(pattern.into());
        self
    }
}

impl fmt::Display for BusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.kind)?;
        if let Some(t) = &self.event_type {
            write!(f, " [{t}]")?;
        }
        if let Some(id) = &self.event_id {
            write!(f, " event {id}")?;
        }
        if let Some(p) = &self.pattern {
            write!(f, " (subscription {p})")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for BusError {}

/// Receives a bus's [`BusError`]s. It is a broadcast receiver: every call to
/// [`EventBus::errors`] gets its own, a slow reader loses the oldest entries (and is told so by
/// `RecvError::Lagged`), and `recv` returns `Closed` once the bus is closed.
pub type ErrorReceiver = broadcast::Receiver<BusError>;

/// The sending side of a bus's error stream, for bus implementations.
#[derive(Debug, Clone)]
pub struct ErrorSender(broadcast::Sender<BusError>);

impl ErrorSender {
    /// An error stream that keeps the last `capacity` failures for slow readers.
    pub fn new(capacity: usize) -> Self {
        ErrorSender(broadcast::channel(capacity.max(1)).0)
    }

    /// Reports a failure; also emits it as a `tracing` warning.
    pub fn report(&self, error: BusError) {
        tracing::warn!(
            kind = ?error.kind,
            event_id = ?error.event_id,
            event_type = error.event_type.as_deref(),
            pattern = error.pattern.as_deref(),
            "event bus: {}",
            error.message
        );
        // No receiver is fine: nobody is listening for errors.
        let _ = self.0.send(error);
    }

    /// A new receiver.
    pub fn subscribe(&self) -> ErrorReceiver {
        self.0.subscribe()
    }
}

impl Default for ErrorSender {
    fn default() -> Self {
        ErrorSender::new(1024)
    }
}

/// A live subscription. Delivery stops when it is dropped or [`unsubscribe`](Self::unsubscribe)d;
/// call [`detach`](Self::detach) to keep it for the life of the bus.
#[must_use = "dropping a Subscription unsubscribes it; call .detach() to keep it running"]
pub struct Subscription {
    pattern: String,
    cancel: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl Subscription {
    /// A subscription to `pattern` that runs `cancel` when it ends.
    pub fn new(pattern: impl Into<String>, cancel: impl FnOnce() + Send + Sync + 'static) -> Self {
        Subscription {
            pattern: pattern.into(),
            cancel: Some(Box::new(cancel)),
        }
    }

    /// The pattern (or, for store subscriptions, a description of the criteria).
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// Stops delivery. Handlers already running finish.
    pub fn unsubscribe(mut self) {
        if let Some(cancel) = self.cancel.take() {
            cancel();
        }
    }

    /// Keeps the subscription running until the bus (or store) is closed.
    pub fn detach(mut self) {
        self.cancel = None;
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(cancel) = self.cancel.take() {
            cancel();
        }
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("pattern", &self.pattern)
            .field("active", &self.cancel.is_some())
            .finish()
    }
}

/// Publishes events and delivers them to subscribed handlers.
///
/// Contract, shared by every backend (and checked by
/// [`testing::conformance::bus`](crate::testing::conformance::bus)):
/// - `publish` validates the event type first; an invalid one is an
///   [`Error::InvalidEventType`](crate::Error::InvalidEventType) and reaches no subscriber.
/// - Patterns follow [`Pattern`]: `*` every event, `order.*` one more token, `order.>` one or
///   more. An invalid pattern is an [`Error::InvalidPattern`](crate::Error::InvalidPattern).
/// - Each subscriber sees the events of one publisher in publish order.
/// - A handler's error or panic never stops the bus or other handlers; it is redelivered where
///   the backend can, and reported on [`errors`](Self::errors) otherwise.
/// - After `close`, `publish` fails with [`Error::Closed`](crate::Error::Closed).
///
/// Whether delivery is at most once or at least once depends on the backend; see its docs.
#[async_trait]
pub trait EventBus: Send + Sync + 'static {
    /// Publishes one event.
    ///
    /// # Errors
    /// Invalid event type, closed bus, backend failure.
    async fn publish(&self, event: Event) -> Result<()>;

    /// Publishes events in order. Backends pipeline or batch them where they can. Every event is
    /// validated before any is sent.
    ///
    /// # Errors
    /// As [`publish`](Self::publish); on a backend failure some events may have been published.
    async fn publish_batch(&self, events: Vec<Event>) -> Result<()> {
        for event in &events {
            event.validate()?;
        }
        for event in events {
            self.publish(event).await?;
        }
        Ok(())
    }

    /// Delivers every event whose type matches `pattern` to `handler` until the returned
    /// [`Subscription`] is dropped.
    ///
    /// # Errors
    /// Invalid pattern, closed bus, backend failure.
    async fn subscribe(&self, pattern: &str, handler: Arc<dyn Handler>) -> Result<Subscription>;

    /// Stops accepting events, delivers what was already accepted (where the backend queues),
    /// and ends every subscription.
    ///
    /// # Errors
    /// Backend failure while draining.
    async fn close(&self) -> Result<()>;

    /// A receiver for failures that have no caller (see [`BusError`]).
    fn errors(&self) -> ErrorReceiver;
}

/// Conveniences on every [`EventBus`].
#[async_trait]
pub trait EventBusExt: EventBus {
    /// Subscribes a handler without wrapping it in an `Arc` first.
    ///
    /// # Errors
    /// As [`EventBus::subscribe`].
    async fn on<H: Handler>(&self, pattern: &str, handler: H) -> Result<Subscription> {
        self.subscribe(pattern, Arc::new(handler)).await
    }
}

impl<B: EventBus + ?Sized> EventBusExt for B {}

/// Publishes a [`SYSTEM_ERROR`](crate::event_types::SYSTEM_ERROR) event describing `error`,
/// produced by `source`, with `metadata`. The payload holds `source`, `error` (the message) and
/// `chain` (the messages of its sources).
///
/// # Errors
/// As [`EventBus::publish`].
pub async fn publish_error(
    bus: &(impl EventBus + ?Sized),
    source: &str,
    error: &(dyn std::error::Error + 'static),
    metadata: Metadata,
) -> Result<()> {
    let mut chain = Vec::new();
    let mut cause = error.source();
    while let Some(c) = cause {
        chain.push(c.to_string());
        cause = c.source();
    }
    let event = Event::new(
        crate::event_types::SYSTEM_ERROR,
        json!({ "source": source, "error": error.to_string(), "chain": chain }),
    )?
    .with_metadata(metadata)
    .with_source(source);
    bus.publish(event).await
}

/// Publishes `event` and panics if that fails. Only for events whose loss must stop the
/// process.
///
/// # Panics
/// When [`EventBus::publish`] returns an error.
pub async fn must_publish(bus: &(impl EventBus + ?Sized), event: Event) {
    let (id, event_type) = (event.id, event.event_type.clone());
    if let Err(e) = bus.publish(event).await {
        panic!("must_publish: event {id} ({event_type}) was not published: {e}");
    }
}
