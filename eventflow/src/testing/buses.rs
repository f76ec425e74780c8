//! Buses for tests: [`RecordingBus`] records what was published, [`NoopBus`] discards it.
//!
//! # Recording bus: inspect the events a piece of code published
//!
//! ```
//! use eventflow::{testing::RecordingBus, EventBus};
//! use eventflow::{event_types, Event};
//! use serde_json::json;
//!
//! # async fn create_user(bus: &dyn EventBus, email: &str) -> eventflow::Result<()> {
//! #     bus.publish(Event::new(event_types::USER_CREATED, json!({ "email": email }))?).await
//! # }
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> eventflow::Result<()> {
//! let bus = RecordingBus::new();
//!
//! // Run code that publishes events.
//! create_user(&bus, "test@example.com").await?;
//!
//! // Assert that they were published.
//! assert!(bus.has_event(event_types::USER_CREATED), "user.created event not published");
//! let created = bus.events_of_type(event_types::USER_CREATED);
//! assert_eq!(created.len(), 1);
//! assert_eq!(created[0].payload["email"], "test@example.com");
//! # Ok(())
//! # }
//! ```
//!
//! [`RecordingBus::forwarding`] records and also forwards every event to a real bus, so the
//! subscribers of that bus still run.
//!
//! # Noop bus: turn events off, but count them
//!
//! ```
//! use eventflow::{testing::NoopBus, EventBus};
//! use eventflow::Event;
//! use serde_json::json;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> eventflow::Result<()> {
//! let bus = NoopBus::new();
//! bus.publish(Event::new("order.created", json!({}))?).await?;
//! assert_eq!(bus.publish_count(), 1);
//! # Ok(())
//! # }
//! ```

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;

use crate::bus::memory::InMemoryBus;
use crate::bus::{
    Delivery, ErrorReceiver, ErrorStream, EventBus, Handler, Pattern, PatternSet, Subscription,
    SubscriptionOptions,
};
use crate::error::{Error, Result};
use crate::event::Event;
use crate::handler::sync;

/// A bus that records every event published through it.
///
/// - [`RecordingBus::new`] records and delivers to its own subscribers like a synchronous
///   [`InMemoryBus`] (handlers have run when `publish` returns).
/// - [`RecordingBus::forwarding`] records and forwards to an inner bus; `subscribe`, `errors`
///   and `close` are delegated to it.
///
/// Only valid events are recorded (an invalid event type is rejected as on every bus), and an
/// event is recorded before it is forwarded, so a handler sees it in [`events`](Self::events).
/// If forwarding fails, the event stays recorded and `publish` returns the inner bus's error.
pub struct RecordingBus {
    events: Mutex<Vec<Event>>,
    inner: Arc<dyn EventBus>,
    closed: AtomicBool,
}

impl RecordingBus {
    /// A recording bus that delivers to its own subscribers synchronously.
    pub fn new() -> Self {
        Self::forwarding(Arc::new(InMemoryBus::new()))
    }

    /// A recording bus that forwards every event to `inner` after recording it.
    pub fn forwarding(inner: Arc<dyn EventBus>) -> Self {
        RecordingBus {
            events: Mutex::new(Vec::new()),
            inner,
            closed: AtomicBool::new(false),
        }
    }

    fn recorded(&self) -> MutexGuard<'_, Vec<Event>> {
        sync::lock(&self.events)
    }

    /// Every recorded event, in publish order.
    pub fn events(&self) -> Vec<Event> {
        self.recorded().clone()
    }

    /// The recorded events whose type is exactly `event_type`, in publish order.
    pub fn events_of_type(&self, event_type: &str) -> Vec<Event> {
        self.recorded()
            .iter()
            .filter(|e| e.event_type == event_type)
            .cloned()
            .collect()
    }

    /// The recorded events whose type matches `pattern` (`*`, `order.*`, `order.>`).
    ///
    /// # Errors
    /// [`Error::InvalidPattern`].
    pub fn events_matching(&self, pattern: &str) -> Result<Vec<Event>> {
        let pattern = Pattern::parse(pattern)?;
        Ok(self
            .recorded()
            .iter()
            .filter(|e| pattern.matches(&e.event_type))
            .cloned()
            .collect())
    }

    /// True when at least one event of exactly `event_type` was recorded.
    pub fn has_event(&self, event_type: &str) -> bool {
        self.recorded().iter().any(|e| e.event_type == event_type)
    }

    /// The last recorded event.
    pub fn last(&self) -> Option<Event> {
        self.recorded().last().cloned()
    }

    /// How many events were recorded.
    pub fn len(&self) -> usize {
        self.recorded().len()
    }

    /// True when nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.recorded().is_empty()
    }

    /// Forgets every recorded event.
    pub fn clear(&self) {
        self.recorded().clear();
    }

    /// The bus events are forwarded to.
    pub fn inner(&self) -> &Arc<dyn EventBus> {
        &self.inner
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::SeqCst) {
            Err(Error::Closed("recording bus"))
        } else {
            Ok(())
        }
    }
}

impl Default for RecordingBus {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for RecordingBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordingBus")
            .field("recorded", &self.len())
            .field("closed", &self.closed.load(Ordering::SeqCst))
            .finish_non_exhaustive()
    }
}

#[async_trait]
impl EventBus for RecordingBus {
    async fn publish(&self, mut event: Event) -> Result<()> {
        event.validate_owned()?;
        self.check_open()?;
        self.recorded().push(event.clone());
        self.inner.publish(event).await
    }

    async fn publish_batch(&self, mut events: Vec<Event>) -> Result<()> {
        crate::event::validate_owned(&mut events)?;
        self.check_open()?;
        self.recorded().extend(events.iter().cloned());
        self.inner.publish_batch(events).await
    }

    /// That of the bus it forwards to (the in-memory bus when it records only).
    fn guarantee(&self) -> Delivery {
        self.inner.guarantee()
    }

    async fn subscribe_with(
        &self,
        patterns: &[&str],
        options: SubscriptionOptions,
        handler: Arc<dyn Handler>,
    ) -> Result<Subscription> {
        PatternSet::parse(patterns)?;
        self.check_open()?;
        self.inner.subscribe_with(patterns, options, handler).await
    }

    async fn close(&self) -> Result<()> {
        self.closed.store(true, Ordering::SeqCst);
        self.inner.close().await
    }

    fn errors(&self) -> ErrorReceiver {
        self.inner.errors()
    }
}

/// A bus that discards every event and counts them.
///
/// It still validates: an invalid event type or pattern is rejected, and a closed bus rejects
/// publishes, as on every bus. Subscriptions are accepted and never fire.
#[derive(Debug)]
pub struct NoopBus {
    published: AtomicU64,
    errors: ErrorStream,
}

impl NoopBus {
    /// A new bus with a count of zero.
    pub fn new() -> Self {
        NoopBus {
            published: AtomicU64::new(0),
            errors: ErrorStream::new(1),
        }
    }

    /// How many events were published (and discarded).
    pub fn publish_count(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    fn check_open(&self) -> Result<()> {
        if self.errors.is_closed() {
            Err(Error::Closed("noop bus"))
        } else {
            Ok(())
        }
    }
}

impl Default for NoopBus {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl EventBus for NoopBus {
    async fn publish(&self, mut event: Event) -> Result<()> {
        event.validate_owned()?;
        self.check_open()?;
        self.published.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn publish_batch(&self, mut events: Vec<Event>) -> Result<()> {
        crate::event::validate_owned(&mut events)?;
        self.check_open()?;
        self.published
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// At most once: it delivers nothing at all.
    fn guarantee(&self) -> Delivery {
        Delivery::AtMostOnce
    }

    async fn subscribe_with(
        &self,
        patterns: &[&str],
        options: SubscriptionOptions,
        handler: Arc<dyn Handler>,
    ) -> Result<Subscription> {
        let patterns = PatternSet::parse(patterns)?;
        options.checked_name()?;
        self.check_open()?;
        drop(handler);
        Ok(Subscription::new(patterns.label(), || {}))
    }

    async fn close(&self) -> Result<()> {
        // Closing the stream ends every error receiver.
        self.errors.close();
        Ok(())
    }

    fn errors(&self) -> ErrorReceiver {
        self.errors.subscribe()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::AtomicUsize;

    use serde_json::json;

    use super::*;
    use crate::bus::{EventBusExt, sync_handler};
    use crate::testing::conformance;

    fn ev(t: &str) -> Event {
        Event::new(t, json!({ "t": t })).unwrap()
    }

    #[tokio::test]
    async fn recording_bus_passes_the_conformance_kit() {
        let caps = conformance::bus::Capabilities::in_memory_sync();
        conformance::bus::run(caps, |_scope| async {
            Arc::new(RecordingBus::new()) as Arc<dyn EventBus>
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn forwarding_recording_bus_passes_the_conformance_kit() {
        let caps = conformance::bus::Capabilities::at_most_once();
        conformance::bus::run(caps, |_scope| async {
            let inner = Arc::new(InMemoryBus::builder().async_dispatch(64).build());
            Arc::new(RecordingBus::forwarding(inner)) as Arc<dyn EventBus>
        })
        .await;
    }

    #[tokio::test]
    async fn recording_bus_records_in_order_and_filters() {
        let bus = RecordingBus::new();
        assert!(bus.is_empty());
        bus.publish(ev("user.created")).await.unwrap();
        bus.publish_batch(vec![ev("order.created"), ev("user.created")])
            .await
            .unwrap();
        assert_eq!(bus.len(), 3);
        let types: Vec<String> = bus.events().into_iter().map(|e| e.event_type).collect();
        assert_eq!(types, ["user.created", "order.created", "user.created"]);
        assert_eq!(bus.events_of_type("user.created").len(), 2);
        assert_eq!(bus.events_matching("order.*").unwrap().len(), 1);
        assert!(bus.has_event("order.created"));
        assert!(!bus.has_event("order"));
        assert_eq!(bus.last().unwrap().event_type, "user.created");
        bus.clear();
        assert!(bus.is_empty() && !bus.has_event("user.created"));
    }

    #[tokio::test]
    async fn recording_bus_does_not_record_rejected_events() {
        let bus = RecordingBus::new();
        let mut bad = ev("ok");
        bad.event_type = "Not Valid".into();
        assert!(matches!(
            bus.publish(bad.clone()).await,
            Err(Error::InvalidEventType { .. })
        ));
        assert!(bus.publish_batch(vec![ev("ok"), bad]).await.is_err());
        assert!(bus.is_empty());
        bus.close().await.unwrap();
        assert!(matches!(bus.publish(ev("ok")).await, Err(Error::Closed(_))));
        assert!(bus.is_empty());
    }

    #[tokio::test]
    async fn forwarding_recording_bus_delivers_to_the_inner_bus() {
        let inner = Arc::new(InMemoryBus::new());
        let count = Arc::new(AtomicUsize::new(0));
        let c = count.clone();
        let _sub = inner
            .on(
                "order.*",
                sync_handler(move |_| {
                    c.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }),
            )
            .await
            .unwrap();
        let bus = RecordingBus::forwarding(inner.clone());
        bus.publish(ev("order.created")).await.unwrap();
        bus.publish(ev("user.created")).await.unwrap();
        assert_eq!(count.load(Ordering::SeqCst), 1);
        assert_eq!(bus.len(), 2);
        bus.close().await.unwrap();
        assert!(inner.is_closed(), "close is delegated to the inner bus");
    }

    #[tokio::test]
    async fn noop_bus_counts_and_discards() {
        let bus = NoopBus::new();
        let fired = Arc::new(AtomicUsize::new(0));
        let f = fired.clone();
        let _sub = bus
            .on(
                "*",
                sync_handler(move |_| {
                    f.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }),
            )
            .await
            .unwrap();
        bus.publish(ev("a.b")).await.unwrap();
        bus.publish_batch(vec![ev("a.c"), ev("a.d")]).await.unwrap();
        assert_eq!(bus.publish_count(), 3);
        assert_eq!(
            fired.load(Ordering::SeqCst),
            0,
            "a noop subscription never fires"
        );

        assert!(matches!(
            bus.subscribe("a..b", Arc::new(sync_handler(|_| Ok(()))))
                .await,
            Err(Error::InvalidPattern { .. })
        ));
        let mut bad = ev("ok");
        bad.event_type = "BAD".into();
        assert!(bus.publish(bad).await.is_err());
        assert_eq!(bus.publish_count(), 3, "rejected events are not counted");

        let mut errors = bus.errors();
        bus.close().await.unwrap();
        assert!(matches!(
            bus.publish(ev("a.b")).await,
            Err(Error::Closed(_))
        ));
        assert!(matches!(
            errors.recv().await,
            Err(tokio::sync::broadcast::error::RecvError::Closed)
        ));
        assert_eq!(bus.publish_count(), 3);
    }
}
