//! What the bus checks share: collecting deliveries, waiting with bounds, failing with the
//! broken promise, building events.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use uuid::Uuid;

use crate::bus::{BusError, ErrorReceiver, EventBus, Handler, HandlerResult, Subscription};
use crate::event::Event;
use crate::handler::sync;

/// How long a check waits for an expected delivery (or a reported error) before it fails.
///
/// Generous on purpose: with `RUST_BACKTRACE` set, every panic of the kit's panicking handlers
/// symbolizes a backtrace of a debug test binary, which takes seconds on a loaded machine, and
/// the report comes only after it (a 4 s bound failed that way under CI load).
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a check waits, after its sentinel event arrived, before it concludes that an event
/// was not delivered.
pub const QUIET_PERIOD: Duration = Duration::from_millis(300);

// ---------------------------------------------------------------------------------------------
// Collecting deliveries

/// Collects the events delivered to one subscription.
#[derive(Clone, Default)]
pub(super) struct Collector {
    events: Arc<Mutex<Vec<Arc<Event>>>>,
}

impl Collector {
    pub(super) fn new() -> Self {
        Self::default()
    }

    pub(super) fn push(&self, event: Arc<Event>) {
        sync::lock(&self.events).push(event);
    }

    /// A handler that records every delivery and succeeds.
    pub(super) fn handler(&self) -> Arc<dyn Handler> {
        let this = self.clone();
        Arc::new(move |event: Arc<Event>| {
            this.push(event);
            std::future::ready(HandlerResult::Ok(()))
        })
    }

    /// Every delivery so far (with duplicates).
    pub(super) fn all(&self) -> Vec<Arc<Event>> {
        sync::lock(&self.events).clone()
    }

    /// Distinct event ids in order of first delivery.
    pub(super) fn first_deliveries(&self) -> Vec<Arc<Event>> {
        let mut seen = HashSet::new();
        self.all()
            .into_iter()
            .filter(|e| seen.insert(e.id))
            .collect()
    }

    /// How many times `id` was delivered.
    pub(super) fn count(&self, id: Uuid) -> usize {
        self.all().iter().filter(|e| e.id == id).count()
    }

    pub(super) fn distinct_ids(&self) -> HashSet<Uuid> {
        self.all().iter().map(|e| e.id).collect()
    }

    /// Waits until every id in `ids` was delivered, or panics naming `promise`.
    pub(super) async fn wait_for(&self, ids: &[Uuid], promise: &str) {
        let deadline = tokio::time::Instant::now() + DELIVERY_TIMEOUT;
        loop {
            let seen = self.distinct_ids();
            let missing = ids.iter().filter(|id| !seen.contains(id)).count();
            if missing == 0 {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                fail(
                    promise,
                    format!(
                        "{missing} of {} expected events were not delivered within {:?} \
                         ({} distinct events delivered)",
                        ids.len(),
                        DELIVERY_TIMEOUT,
                        seen.len()
                    ),
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits for `expected`, then [`QUIET_PERIOD`], then checks that nothing else arrived.
    pub(super) async fn expect_exactly(&self, expected: &[Uuid], promise: &str) {
        self.wait_for(expected, promise).await;
        tokio::time::sleep(QUIET_PERIOD).await;
        let expected: HashSet<Uuid> = expected.iter().copied().collect();
        let unexpected: Vec<String> = self
            .first_deliveries()
            .iter()
            .filter(|e| !expected.contains(&e.id))
            .map(|e| e.event_type.clone())
            .collect();
        if !unexpected.is_empty() {
            fail(
                promise,
                format!("unexpected deliveries of event types {unexpected:?}"),
            );
        }
    }
}

#[track_caller]
pub(super) fn fail(promise: &str, detail: impl std::fmt::Display) -> ! {
    panic!("bus conformance: {promise}: {detail}")
}

pub(super) fn event(event_type: &str) -> Event {
    match Event::new(event_type, json!({ "type": event_type })) {
        Ok(e) => e,
        Err(e) => fail("kit", format!("cannot build event {event_type:?}: {e}")),
    }
}

pub(super) fn numbered(event_type: &str, publisher: usize, seq: usize) -> Event {
    match Event::new(event_type, json!({ "publisher": publisher, "seq": seq })) {
        Ok(e) => e,
        Err(e) => fail("kit", format!("cannot build event {event_type:?}: {e}")),
    }
}

/// An event whose type is invalid (built valid, then broken, as a careless caller could).
pub(super) fn invalid(event_type: &str) -> Event {
    let mut e = event("kit.invalid");
    e.event_type = event_type.to_owned();
    e
}

pub(super) async fn subscribe(
    bus: &dyn EventBus,
    pattern: &str,
    handler: Arc<dyn Handler>,
    promise: &str,
) -> Subscription {
    match bus.subscribe(pattern, handler).await {
        Ok(s) => s,
        Err(e) => fail(promise, format!("subscribe({pattern:?}) failed: {e}")),
    }
}

pub(super) async fn publish(bus: &dyn EventBus, event: Event, promise: &str) -> Uuid {
    let (id, event_type) = (event.id, event.event_type.clone());
    if let Err(e) = bus.publish(event).await {
        fail(promise, format!("publish({event_type:?}) failed: {e}"));
    }
    id
}

/// Subscribes `pattern`, publishes one event of each type, and checks that exactly the events
/// whose type is in `expected` arrive.
pub(super) async fn check_pattern(
    bus: &dyn EventBus,
    pattern: &str,
    types: &[&str],
    expected: &[&str],
) {
    let promise = format!("pattern {pattern:?} delivers exactly {expected:?}");
    let seen = Collector::new();
    let _sub = subscribe(bus, pattern, seen.handler(), &promise).await;
    let mut want = Vec::new();
    for t in types {
        let id = publish(bus, event(t), &promise).await;
        if expected.contains(t) {
            want.push(id);
        }
    }
    seen.expect_exactly(&want, &promise).await;
}
/// Checks that the first deliveries of `seen` follow `ids` exactly.
pub(super) fn check_order(seen: &Collector, ids: &[Uuid], promise: &str) {
    let got: Vec<Uuid> = seen
        .first_deliveries()
        .iter()
        .filter(|e| ids.contains(&e.id))
        .map(|e| e.id)
        .collect();
    if let Some(at) = got.iter().zip(ids).position(|(g, w)| g != w) {
        fail(
            promise,
            format!(
                "delivery #{at} is publish #{:?}",
                ids.iter().position(|id| *id == got[at])
            ),
        );
    }
}

/// Waits for a reported error matching `pred` (skipping others), or panics naming `promise`.
pub(super) async fn wait_error(
    errors: &mut ErrorReceiver,
    promise: &str,
    what: &str,
    pred: impl Fn(&BusError) -> bool,
) -> BusError {
    let deadline = tokio::time::Instant::now() + DELIVERY_TIMEOUT;
    // What arrived instead, for the failure message.
    let mut others = Vec::new();
    let mut lagged = 0;
    loop {
        match tokio::time::timeout_at(deadline, errors.recv()).await {
            Ok(Ok(e)) if pred(&e) => return e,
            Ok(Ok(e)) => others.push(e.kind),
            Ok(Err(RecvError::Lagged(n))) => lagged += n,
            Ok(Err(RecvError::Closed)) => {
                fail(promise, format!("the error stream ended before {what}"))
            }
            Err(_) => fail(
                promise,
                format!(
                    "no {what} reported on errors() within {DELIVERY_TIMEOUT:?} (reported \
                     instead: {others:?}; {lagged} missed by lagging)"
                ),
            ),
        }
    }
}
