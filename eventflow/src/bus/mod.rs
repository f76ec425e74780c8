//! The event bus: publish events, subscribe handlers by pattern.
//!
//! [`EventBus`] is object-safe, so services hold an `Arc<dyn EventBus>` and pick the backend at
//! start-up: [`InMemoryBus`](memory::InMemoryBus), `NatsBus` (feature `nats`), `RedisBus`
//! (feature `redis`); the test buses `RecordingBus` and `NoopBus` are in `eventflow::testing`
//! (feature `testing`).

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::json;

use crate::error::Result;
use crate::event::{Event, Metadata};

pub mod memory;
#[cfg(feature = "nats")]
pub mod nats;
pub mod pattern;
#[cfg(feature = "redis")]
pub mod redis;

pub use crate::handler::{
    BusError, BusErrorKind, ErrorReceiver, ErrorSender, ErrorStream, Handler, HandlerResult,
    Subscription, SyncHandler, sync_handler,
};
pub use pattern::Pattern;

/// Publishes events and delivers them to subscribed handlers.
///
/// Contract, shared by every backend (and checked by
/// `eventflow::testing::conformance::bus`):
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
    async fn publish_batch(&self, mut events: Vec<Event>) -> Result<()> {
        crate::event::validate_owned(&mut events)?;
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
