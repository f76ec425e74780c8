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

#[cfg(any(feature = "nats", feature = "redis"))]
mod buffer;
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
pub use pattern::{Pattern, PatternSet};

/// What a bus guarantees about delivery, in its type ([`EventBus::guarantee`]) and at run time.
///
/// | backend | guarantee |
/// |---|---|
/// | [`InMemoryBus`](memory::InMemoryBus) (sync or async) | at most once, in process |
/// | NATS core, Redis pub/sub | at most once |
/// | NATS JetStream, Redis Streams | at least once |
/// | `RecordingBus`, `NoopBus` (`eventflow::testing`) | that of the bus they wrap (`NoopBus`: at most once) |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Delivery {
    /// An event may be lost (process crash, disconnect, full queue); a handler's failure is
    /// reported, not retried.
    AtMostOnce,
    /// An event is delivered until a handler succeeds (or the bus dead-letters it after its
    /// maximum deliveries); a handler may see it more than once.
    AtLeastOnce,
}

/// How to subscribe, for [`EventBus::subscribe_with`].
///
/// The `name` is the subscription's identity, given by the caller and by nothing else (not the
/// configuration, not the order of subscribing); the patterns are only a filter.
///
/// | | named | unnamed |
/// |---|---|---|
/// | **JetStream** | the durable consumer: resumes after a restart; different names each get every event, one name (in one or several processes) splits the events | an ephemeral consumer of its own, from new events on, deleted when the subscription stops |
/// | **Redis Streams** | the consumer group: the same rules as JetStream | a consumer group of its own (`ephemeral:<uuid>`) at the stream's end, destroyed when the subscription stops |
/// | **NATS core** | the queue group: one name splits the events (at most once) | every subscriber gets every event |
/// | **In-memory, Redis pub/sub** | a label only: every subscription gets every event | every subscription gets every event |
///
/// So on an at-least-once bus, **named = durable, resumable, shared**, and **unnamed = live
/// from now, at least once while subscribed, nothing shared, nothing resumed**: two unnamed
/// subscriptions (in one process, or in two services on the same configuration) each get
/// every event, and events published while no unnamed subscription runs are never delivered
/// to a later one. Name every subscription that must not miss events while its process is
/// down, or whose work several processes share.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubscriptionOptions {
    /// The subscription's identity (see above); `[A-Za-z0-9_-]`, at most 200 bytes.
    pub name: Option<String>,
}

impl SubscriptionOptions {
    /// No name: a subscription with no identity of its own (see above).
    pub fn new() -> Self {
        Self::default()
    }

    /// Options naming the subscription `name`.
    pub fn named(name: impl Into<String>) -> Self {
        SubscriptionOptions {
            name: Some(name.into()),
        }
    }

    /// The name, checked: `[A-Za-z0-9_-]`, 1 to 200 bytes.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument) naming it otherwise.
    pub fn checked_name(&self) -> Result<Option<&str>> {
        match self.name.as_deref() {
            None => Ok(None),
            Some(name) if is_subscription_name(name) => Ok(Some(name)),
            Some(name) => Err(crate::Error::InvalidArgument(format!(
                "subscription name {name:?} must be 1 to 200 bytes of [A-Za-z0-9_-]"
            ))),
        }
    }
}

fn is_subscription_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Turns `raw` (a saga or projection name) into a subscription name: every byte outside
/// `[A-Za-z0-9_-]` becomes `_`, and a long name is cut at 200 bytes.
pub fn subscription_name(raw: &str) -> String {
    let mut name: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(200)
        .collect();
    if name.is_empty() {
        name.push('_');
    }
    name
}

/// How a saga manager or projection is fed from a bus (`SagaManager::subscribe_with`,
/// `projection::subscribe_with`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct FeedOptions {
    /// Accept a bus whose [`guarantee`](EventBus::guarantee) is [`Delivery::AtMostOnce`].
    pub allow_at_most_once: bool,
    /// The subscription name, instead of the one derived from the saga or projection name.
    pub name: Option<String>,
}

impl FeedOptions {
    /// The defaults: at-least-once buses only, named after the saga or projection.
    pub fn new() -> Self {
        Self::default()
    }

    /// Accepts an at-most-once bus (in-memory, NATS core, Redis pub/sub): events lost by the
    /// bus are lost to the saga or projection. Prefer catching up from the event store.
    pub fn allow_at_most_once(mut self) -> Self {
        self.allow_at_most_once = true;
        self
    }

    /// Names the subscription `name` instead.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Refuses `bus` for `consumer` when it delivers at most once and that was not allowed.
    ///
    /// # Errors
    /// [`Error::AtMostOnceBus`](crate::Error::AtMostOnceBus).
    pub fn check(&self, bus: &dyn EventBus, consumer: &str) -> Result<()> {
        if bus.guarantee() == Delivery::AtMostOnce && !self.allow_at_most_once {
            return Err(crate::Error::AtMostOnceBus {
                consumer: consumer.to_owned(),
            });
        }
        Ok(())
    }
}

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
/// Whether delivery is at most once or at least once depends on the backend:
/// [`guarantee`](Self::guarantee) says which.
#[async_trait]
pub trait EventBus: Send + Sync + 'static {
    /// What this bus guarantees about delivery (see [`Delivery`]).
    fn guarantee(&self) -> Delivery;

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

    /// Delivers every event whose type matches any of `patterns` to `handler`, through ONE
    /// ordered consumer, until the returned [`Subscription`] is dropped: the handler sees one
    /// publisher's events in publish order, whatever pattern they matched, and one at a time.
    ///
    /// `options.name` is the subscription's identity on a durable bus (see
    /// [`SubscriptionOptions`]).
    ///
    /// # Errors
    /// Invalid or no pattern, invalid name, closed bus, backend failure.
    async fn subscribe_with(
        &self,
        patterns: &[&str],
        options: SubscriptionOptions,
        handler: Arc<dyn Handler>,
    ) -> Result<Subscription>;

    /// Delivers every event whose type matches `pattern` to `handler` until the returned
    /// [`Subscription`] is dropped: [`subscribe_with`](Self::subscribe_with) with one pattern
    /// and no name.
    ///
    /// # Errors
    /// Invalid pattern, closed bus, backend failure.
    async fn subscribe(&self, pattern: &str, handler: Arc<dyn Handler>) -> Result<Subscription> {
        self.subscribe_with(&[pattern], SubscriptionOptions::default(), handler)
            .await
    }

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
