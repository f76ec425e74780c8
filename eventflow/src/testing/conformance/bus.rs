//! The bus conformance kit: every [`EventBus`] backend runs these checks.
//!
//! Each check is a public async function that takes a fresh bus (`&dyn EventBus`, with its own
//! subject or key prefix, created by the caller) and panics with a message naming the broken
//! promise. [`run_all`] runs every check, each on a fresh bus from a factory:
//!
//! ```
//! use std::sync::Arc;
//! use eventflow::bus::{EventBus, memory::InMemoryBus};
//! use eventflow::testing::conformance;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! conformance::bus::run_all(|| async { Arc::new(InMemoryBus::new()) as Arc<dyn EventBus> }).await;
//! # }
//! ```
//!
//! # Written for networked, asynchronous buses
//!
//! The checks make no assumption that delivery has happened when `publish` returns. Handlers
//! collect deliveries into shared state, and a check waits for the expected deliveries with a
//! bounded timeout ([`DELIVERY_TIMEOUT`]). A check that something is *not* delivered publishes a
//! sentinel event that *is* delivered, waits for it, and then waits a further grace period
//! ([`QUIET_PERIOD`]) before looking.
//!
//! At-least-once backends (JetStream, Redis Streams) may redeliver: the checks compare sets of
//! distinct event ids, and ordering checks look at the order of *first* deliveries.
//!
//! # What a backend must do to pass
//!
//! - `subscribe` is effective before it returns: an event published right after `subscribe`
//!   returns is delivered to it. A networked backend must make sure the server knows about the
//!   subscription first (flush the SUBSCRIBE / PSUBSCRIBE to the server, create the consumer or
//!   group before returning).
//! - Once `Subscription::unsubscribe` returns or the `Subscription` is dropped, no handler call
//!   starts for an event published afterwards (check a local flag if the server-side
//!   unsubscribe is asynchronous).
//! - A handler's error or panic neither ends its own subscription nor affects others.
//! - After `close`, `publish`, `publish_batch` and `subscribe` fail with
//!   [`Error::Closed`]; closing twice is not an error.

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::json;
use uuid::Uuid;

use crate::bus::{EventBus, Handler, HandlerResult, Subscription};
use crate::error::Error;
use crate::event::{Event, Metadata};

/// How long a check waits for an expected delivery before it fails.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a check waits, after its sentinel event arrived, before it concludes that an event
/// was not delivered.
pub const QUIET_PERIOD: Duration = Duration::from_millis(300);

/// Runs every check in this module, each on a fresh bus from `make_bus`, and closes each bus
/// afterwards.
///
/// # Panics
/// When a check fails; the message names the broken promise.
pub async fn run_all<F, Fut>(make_bus: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn EventBus>>,
{
    macro_rules! run {
        ($($check:ident),* $(,)?) => {$(
            let bus = make_bus().await;
            tracing::debug!(check = stringify!($check), "bus conformance check");
            $check(&*bus).await;
            // Some checks close the bus themselves; a second close must be harmless anyway.
            let _ = bus.close().await;
        )*};
    }
    run!(
        exact_type,
        subscribe_effective_on_return,
        pattern_all,
        pattern_one_token,
        pattern_one_or_more,
        pattern_leading_wildcard,
        invalid_pattern,
        invalid_event_type,
        invalid_event_type_in_batch,
        publish_order,
        publish_batch_order,
        concurrent_publishers_order,
        multiple_subscribers,
        unsubscribe_stops_delivery,
        drop_stops_delivery,
        handler_error_isolated,
        handler_panic_isolated,
        envelope_intact,
        closed_bus_rejects,
    );
}

// ---------------------------------------------------------------------------------------------
// Collecting deliveries

/// Collects the events delivered to one subscription.
#[derive(Clone, Default)]
struct Collector {
    events: Arc<Mutex<Vec<Arc<Event>>>>,
}

impl Collector {
    fn new() -> Self {
        Self::default()
    }

    fn push(&self, event: Arc<Event>) {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(event);
    }

    /// A handler that records every delivery and succeeds.
    fn handler(&self) -> Arc<dyn Handler> {
        let this = self.clone();
        Arc::new(move |event: Arc<Event>| {
            this.push(event);
            std::future::ready(HandlerResult::Ok(()))
        })
    }

    /// Every delivery so far (with duplicates).
    fn all(&self) -> Vec<Arc<Event>> {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Distinct event ids in order of first delivery.
    fn first_deliveries(&self) -> Vec<Arc<Event>> {
        let mut seen = HashSet::new();
        self.all()
            .into_iter()
            .filter(|e| seen.insert(e.id))
            .collect()
    }

    fn distinct_ids(&self) -> HashSet<Uuid> {
        self.all().iter().map(|e| e.id).collect()
    }

    /// Waits until every id in `ids` was delivered, or panics naming `promise`.
    async fn wait_for(&self, ids: &[Uuid], promise: &str) {
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
    async fn expect_exactly(&self, expected: &[Uuid], promise: &str) {
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
fn fail(promise: &str, detail: impl std::fmt::Display) -> ! {
    panic!("bus conformance: {promise}: {detail}")
}

fn event(event_type: &str) -> Event {
    match Event::new(event_type, json!({ "type": event_type })) {
        Ok(e) => e,
        Err(e) => fail("kit", format!("cannot build event {event_type:?}: {e}")),
    }
}

fn numbered(event_type: &str, publisher: usize, seq: usize) -> Event {
    match Event::new(event_type, json!({ "publisher": publisher, "seq": seq })) {
        Ok(e) => e,
        Err(e) => fail("kit", format!("cannot build event {event_type:?}: {e}")),
    }
}

/// An event whose type is invalid (built valid, then broken, as a careless caller could).
fn invalid(event_type: &str) -> Event {
    let mut e = event("kit.invalid");
    e.event_type = event_type.to_owned();
    e
}

async fn subscribe(
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

async fn publish(bus: &dyn EventBus, event: Event, promise: &str) -> Uuid {
    let (id, event_type) = (event.id, event.event_type.clone());
    if let Err(e) = bus.publish(event).await {
        fail(promise, format!("publish({event_type:?}) failed: {e}"));
    }
    id
}

/// Subscribes `pattern`, publishes one event of each type, and checks that exactly the events
/// whose type is in `expected` arrive.
async fn check_pattern(bus: &dyn EventBus, pattern: &str, types: &[&str], expected: &[&str]) {
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

// ---------------------------------------------------------------------------------------------
// The checks

/// An exact pattern receives its own type and nothing else (not a longer or shorter type).
pub async fn exact_type(bus: &dyn EventBus) {
    check_pattern(
        bus,
        "order.created",
        &[
            "order.updated",
            "order.created.v2",
            "order",
            "orders.created",
            "order.created",
        ],
        &["order.created"],
    )
    .await;
}

/// An event published right after `subscribe` returns is delivered.
pub async fn subscribe_effective_on_return(bus: &dyn EventBus) {
    let promise = "subscribe is effective when it returns";
    for i in 0..5 {
        let seen = Collector::new();
        let _sub = subscribe(bus, "ready.check", seen.handler(), promise).await;
        let id = publish(bus, numbered("ready.check", 0, i), promise).await;
        seen.wait_for(&[id], promise).await;
    }
}

/// `*` alone receives every event.
pub async fn pattern_all(bus: &dyn EventBus) {
    let types = ["a", "order.created", "order.line.added", "x.y.z.w"];
    check_pattern(bus, "*", &types, &types).await;
}

/// `order.*` receives `order.` plus exactly one token.
pub async fn pattern_one_token(bus: &dyn EventBus) {
    check_pattern(
        bus,
        "order.*",
        &[
            "order",
            "order.line.added",
            "orders.created",
            "user.created",
            "order.created",
            "order.shipped",
        ],
        &["order.created", "order.shipped"],
    )
    .await;
}

/// `order.>` receives `order.` plus one or more tokens.
pub async fn pattern_one_or_more(bus: &dyn EventBus) {
    check_pattern(
        bus,
        "order.>",
        &[
            "order",
            "orders.created",
            "user.order.created",
            "order.created",
            "order.line.added",
            "order.a.b.c",
        ],
        &["order.created", "order.line.added", "order.a.b.c"],
    )
    .await;
}

/// `*.created` receives any one token followed by `created`.
pub async fn pattern_leading_wildcard(bus: &dyn EventBus) {
    check_pattern(
        bus,
        "*.created",
        &[
            "created",
            "a.b.created",
            "user.updated",
            "user.created.v2",
            "user.created",
            "order.created",
        ],
        &["user.created", "order.created"],
    )
    .await;
}

/// An invalid pattern is rejected with [`Error::InvalidPattern`] naming it.
pub async fn invalid_pattern(bus: &dyn EventBus) {
    let promise = "an invalid pattern is rejected with Error::InvalidPattern";
    for pattern in ["", "a..b", ".a", "a.", "a.>.b", "A.b", "order*", "a b"] {
        let seen = Collector::new();
        match bus.subscribe(pattern, seen.handler()).await {
            Err(Error::InvalidPattern { pattern: p, .. }) if p == pattern => {}
            Err(other) => fail(
                promise,
                format!("subscribe({pattern:?}) failed with the wrong error: {other}"),
            ),
            Ok(_) => fail(promise, format!("subscribe({pattern:?}) was accepted")),
        }
    }
}

/// Publishing an event with an invalid type fails with [`Error::InvalidEventType`] and
/// delivers nothing.
pub async fn invalid_event_type(bus: &dyn EventBus) {
    let promise = "publish rejects an invalid event type with Error::InvalidEventType";
    let seen = Collector::new();
    let _sub = subscribe(bus, "*", seen.handler(), promise).await;
    for bad in ["", "Bad Type", "a..b", ".a", "a.", "a.*", "a.>", "a\u{7}b"] {
        match bus.publish(invalid(bad)).await {
            Err(Error::InvalidEventType { name, .. }) if name == bad => {}
            Err(other) => fail(
                promise,
                format!("publish of type {bad:?} failed with the wrong error: {other}"),
            ),
            Ok(()) => fail(promise, format!("publish of type {bad:?} was accepted")),
        }
    }
    let sentinel = publish(bus, event("kit.sentinel"), promise).await;
    seen.expect_exactly(&[sentinel], "an invalid event reaches no subscriber")
        .await;
}

/// A batch holding an invalid event type fails with [`Error::InvalidEventType`] and delivers
/// none of its events, not even the valid ones before it.
pub async fn invalid_event_type_in_batch(bus: &dyn EventBus) {
    let promise = "publish_batch rejects an invalid event type with Error::InvalidEventType";
    let seen = Collector::new();
    let _sub = subscribe(bus, "*", seen.handler(), promise).await;
    let batch = vec![event("kit.one"), invalid("Not Valid"), event("kit.two")];
    match bus.publish_batch(batch).await {
        Err(Error::InvalidEventType { name, .. }) if name == "Not Valid" => {}
        Err(other) => fail(promise, format!("failed with the wrong error: {other}")),
        Ok(()) => fail(promise, "the batch was accepted"),
    }
    let sentinel = publish(bus, event("kit.sentinel"), promise).await;
    seen.expect_exactly(
        &[sentinel],
        "a batch with an invalid event is validated before anything is sent",
    )
    .await;
}

/// Checks that the first deliveries of `seen` follow `ids` exactly.
fn check_order(seen: &Collector, ids: &[Uuid], promise: &str) {
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

const ORDER_COUNT: usize = 200;

/// One subscriber sees 200 events published one by one in publish order.
pub async fn publish_order(bus: &dyn EventBus) {
    let promise = "a subscriber sees one publisher's events in publish order (publish)";
    let seen = Collector::new();
    let _sub = subscribe(bus, "seq.>", seen.handler(), promise).await;
    let mut ids = Vec::with_capacity(ORDER_COUNT);
    for i in 0..ORDER_COUNT {
        // Alternate types so that ordering holds across subjects / keys, not just within one.
        let t = if i % 2 == 0 { "seq.even" } else { "seq.odd.n" };
        ids.push(publish(bus, numbered(t, 0, i), promise).await);
    }
    seen.wait_for(&ids, promise).await;
    check_order(&seen, &ids, promise);
}

/// One subscriber sees 200 events published in one batch in batch order.
pub async fn publish_batch_order(bus: &dyn EventBus) {
    let promise = "a subscriber sees a batch's events in batch order (publish_batch)";
    let seen = Collector::new();
    let _sub = subscribe(bus, "seq.>", seen.handler(), promise).await;
    let events: Vec<Event> = (0..ORDER_COUNT)
        .map(|i| {
            let t = if i % 2 == 0 { "seq.even" } else { "seq.odd.n" };
            numbered(t, 0, i)
        })
        .collect();
    let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
    if let Err(e) = bus.publish_batch(events).await {
        fail(promise, format!("publish_batch failed: {e}"));
    }
    seen.wait_for(&ids, promise).await;
    check_order(&seen, &ids, promise);
}

/// Four publishers publishing concurrently: a subscriber sees each one's events in its order.
pub async fn concurrent_publishers_order(bus: &dyn EventBus) {
    let promise = "a subscriber sees each concurrent publisher's events in its publish order";
    const PUBLISHERS: usize = 4;
    const EACH: usize = 50;
    let seen = Collector::new();
    let _sub = subscribe(bus, "conc.*", seen.handler(), promise).await;
    let per_publisher: Vec<Vec<Event>> = (0..PUBLISHERS)
        .map(|p| (0..EACH).map(|i| numbered("conc.event", p, i)).collect())
        .collect();
    let ids: Vec<Vec<Uuid>> = per_publisher
        .iter()
        .map(|events| events.iter().map(|e| e.id).collect())
        .collect();
    let publishers = per_publisher.into_iter().map(|events| async move {
        for e in events {
            publish(bus, e, promise).await;
            // Let the other publishers interleave.
            tokio::task::yield_now().await;
        }
    });
    futures_util::future::join_all(publishers).await;
    let all: Vec<Uuid> = ids.iter().flatten().copied().collect();
    seen.wait_for(&all, promise).await;
    for own in &ids {
        check_order(&seen, own, promise);
    }
}

/// Several subscribers (overlapping patterns) each receive every matching event.
pub async fn multiple_subscribers(bus: &dyn EventBus) {
    let promise = "every subscriber receives every matching event";
    let collectors: Vec<Collector> = (0..4).map(|_| Collector::new()).collect();
    let patterns = ["*", "multi.*", "multi.>", "multi.event"];
    let mut subs = Vec::new();
    for (c, p) in collectors.iter().zip(patterns) {
        subs.push(subscribe(bus, p, c.handler(), promise).await);
    }
    let mut ids = Vec::new();
    for i in 0..50 {
        ids.push(publish(bus, numbered("multi.event", 0, i), promise).await);
    }
    for (c, p) in collectors.iter().zip(patterns) {
        c.expect_exactly(&ids, &format!("{promise} (subscriber {p:?})"))
            .await;
    }
    drop(subs);
}

async fn check_stop(bus: &dyn EventBus, by_drop: bool) {
    let how = if by_drop {
        "dropping a Subscription"
    } else {
        "Subscription::unsubscribe"
    };
    let promise = format!("{how} stops its delivery and leaves other subscriptions working");
    let stopped = Collector::new();
    let kept = Collector::new();
    let stopped_sub = subscribe(bus, "stop.*", stopped.handler(), &promise).await;
    let _kept_sub = subscribe(bus, "stop.*", kept.handler(), &promise).await;
    let first = publish(bus, event("stop.before"), &promise).await;
    stopped.wait_for(&[first], &promise).await;
    kept.wait_for(&[first], &promise).await;

    if by_drop {
        drop(stopped_sub);
    } else {
        stopped_sub.unsubscribe();
    }
    let mut later = Vec::new();
    for i in 0..10 {
        later.push(publish(bus, numbered("stop.after", 0, i), &promise).await);
    }
    let mut all = vec![first];
    all.extend(&later);
    kept.expect_exactly(&all, &promise).await;
    stopped.expect_exactly(&[first], &promise).await;
}

/// After `unsubscribe()` a subscription receives nothing more; others keep receiving.
pub async fn unsubscribe_stops_delivery(bus: &dyn EventBus) {
    check_stop(bus, false).await;
}

/// After its `Subscription` is dropped a subscription receives nothing more; others keep
/// receiving.
pub async fn drop_stops_delivery(bus: &dyn EventBus) {
    check_stop(bus, true).await;
}

/// A failing or panicking handler; records every call.
fn misbehaving(calls: &Collector, panics: bool) -> Arc<dyn Handler> {
    let calls = calls.clone();
    Arc::new(move |event: Arc<Event>| {
        calls.push(event.clone());
        async move {
            if panics {
                panic!(
                    "conformance kit: this handler panics on purpose ({})",
                    event.id
                );
            }
            HandlerResult::Err(format!("conformance kit: failing on purpose ({})", event.id).into())
        }
    })
}

async fn check_isolation(bus: &dyn EventBus, panics: bool) {
    let what = if panics {
        "a panicking handler"
    } else {
        "a handler that returns Err"
    };
    let promise =
        format!("{what} neither stops other handlers, nor its own subscription, nor the bus");
    let bad_calls = Collector::new();
    let before = Collector::new();
    let after = Collector::new();
    // Healthy subscribers on both sides of the bad one, in subscription order.
    let _before = subscribe(bus, "iso.>", before.handler(), &promise).await;
    let _bad = subscribe(bus, "iso.>", misbehaving(&bad_calls, panics), &promise).await;
    let _after = subscribe(bus, "iso.>", after.handler(), &promise).await;
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(publish(bus, numbered("iso.event", 0, i), &promise).await);
    }
    before.wait_for(&ids, &promise).await;
    after.wait_for(&ids, &promise).await;
    // The bad handler was called for every event: one failure did not end its subscription.
    bad_calls.wait_for(&ids, &promise).await;

    // The bus keeps working for new subscriptions and later events.
    let fresh = Collector::new();
    let _fresh = subscribe(bus, "iso.>", fresh.handler(), &promise).await;
    let last = publish(bus, event("iso.last"), &promise).await;
    fresh.wait_for(&[last], &promise).await;
    after.wait_for(&[last], &promise).await;
}

/// A handler that returns `Err` does not stop other handlers, later events, or the bus.
pub async fn handler_error_isolated(bus: &dyn EventBus) {
    check_isolation(bus, false).await;
}

/// A handler that panics does not stop other handlers, later events, or the bus.
pub async fn handler_panic_isolated(bus: &dyn EventBus) {
    check_isolation(bus, true).await;
}

/// Every field of the envelope arrives intact: id, type, payload, metadata, timestamp, source,
/// correlation, causation and schema version.
pub async fn envelope_intact(bus: &dyn EventBus) {
    let promise = "the envelope (payload, metadata, correlation, causation, ...) arrives intact";
    let seen = Collector::new();
    let _sub = subscribe(bus, "envelope.>", seen.handler(), promise).await;
    let parent = event("envelope.parent").with_correlation("corr-42");
    let payload = json!({
        "text": "ünïcødé ✓ \"quoted\" \n newline",
        "int": -42,
        "big": 9_007_199_254_740_993_u64,
        "float": 1.5,
        "bool": true,
        "null": null,
        "list": [1, "two", { "three": 3 }],
        "nested": { "a": { "b": { "c": [] } } },
    });
    let child = match Event::new("envelope.child.created", payload) {
        Ok(e) => e,
        Err(e) => fail(promise, e),
    }
    .with_metadata(
        Metadata::default()
            .user("user-1")
            .tenant("tenant-1")
            .request("req-1")
            .trace("trace-1")
            .with("region", "eu-west-1")
            .with("attempt", 3)
            .with("tags", json!(["a", "b"])),
    )
    .with_source("conformance-kit")
    .with_version(3)
    .caused_by(&parent);
    let expected = [parent.clone(), child.clone()];
    publish(bus, parent, promise).await;
    publish(bus, child, promise).await;
    let ids: Vec<Uuid> = expected.iter().map(|e| e.id).collect();
    seen.wait_for(&ids, promise).await;
    for want in &expected {
        let all = seen.all();
        let Some(got) = all.iter().find(|e| e.id == want.id) else {
            fail(promise, format!("event {} missing", want.id));
        };
        let checks: [(&str, bool); 9] = [
            ("event_type", got.event_type == want.event_type),
            ("payload", got.payload == want.payload),
            ("metadata", got.metadata == want.metadata),
            ("timestamp", got.timestamp == want.timestamp),
            ("source", got.source == want.source),
            ("correlation_id", got.correlation_id == want.correlation_id),
            ("causation_id", got.causation_id == want.causation_id),
            ("version", got.version == want.version),
            (
                "stream fields",
                got.stream_id == want.stream_id
                    && got.stream_version == want.stream_version
                    && got.position == want.position,
            ),
        ];
        for (field, ok) in checks {
            if !ok {
                fail(
                    promise,
                    format!("field {field} changed in transit:\n sent {want:?}\n got  {got:?}"),
                );
            }
        }
    }
}

/// After `close`: `publish`, `publish_batch` and `subscribe` fail with [`Error::Closed`], and a
/// second `close` is not an error.
pub async fn closed_bus_rejects(bus: &dyn EventBus) {
    let promise = "after close, the bus rejects publish/publish_batch/subscribe with Error::Closed";
    let seen = Collector::new();
    let _sub = subscribe(bus, "*", seen.handler(), promise).await;
    let id = publish(bus, event("close.before"), promise).await;
    seen.wait_for(&[id], promise).await;
    if let Err(e) = bus.close().await {
        fail(promise, format!("close failed: {e}"));
    }
    match bus.publish(event("close.after")).await {
        Err(Error::Closed(_)) => {}
        Err(other) => fail(
            promise,
            format!("publish failed with the wrong error: {other}"),
        ),
        Ok(()) => fail(promise, "publish after close succeeded"),
    }
    match bus.publish_batch(vec![event("close.after")]).await {
        Err(Error::Closed(_)) => {}
        Err(other) => fail(
            promise,
            format!("publish_batch failed with the wrong error: {other}"),
        ),
        Ok(()) => fail(promise, "publish_batch after close succeeded"),
    }
    match bus.subscribe("*", seen.handler()).await {
        Err(Error::Closed(_)) => {}
        Err(other) => fail(
            promise,
            format!("subscribe failed with the wrong error: {other}"),
        ),
        Ok(_) => fail(promise, "subscribe after close succeeded"),
    }
    if let Err(e) = bus.close().await {
        fail("closing a closed bus is not an error", e);
    }
}

/// The kit must catch a broken bus: each test runs one check against a bus with one fault.
#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::{AtomicBool, Ordering};

    use async_trait::async_trait;

    use super::*;
    use crate::bus::ErrorReceiver;
    use crate::bus::memory::InMemoryBus;
    use crate::error::Result;

    #[derive(Clone, Copy, PartialEq)]
    enum Fault {
        /// Swaps every pair of published events.
        Reorders,
        /// `unsubscribe`/drop does nothing.
        IgnoresUnsubscribe,
        /// An invalid event type is silently accepted (and dropped).
        AcceptsInvalidTypes,
        /// A batch is sent event by event, so events before an invalid one go out.
        SendsBatchBeforeValidating,
        /// `close` does nothing.
        IgnoresClose,
        /// `order.*` behaves like `order.>` (a glob translated carelessly).
        WidensOneTokenWildcard,
        /// A handler that failed once is never called again.
        DropsFailingSubscription,
        /// Custom metadata is lost in transit.
        LosesCustomMetadata,
    }

    struct Faulty {
        inner: InMemoryBus,
        fault: Fault,
        held: Mutex<Option<Event>>,
    }

    fn faulty(fault: Fault) -> Faulty {
        Faulty {
            inner: InMemoryBus::new(),
            fault,
            held: Mutex::new(None),
        }
    }

    #[async_trait]
    impl EventBus for Faulty {
        async fn publish(&self, mut event: Event) -> Result<()> {
            match self.fault {
                Fault::Reorders => {
                    event.validate()?;
                    let held = self.held.lock().unwrap().take();
                    match held {
                        None => *self.held.lock().unwrap() = Some(event),
                        Some(first) => {
                            self.inner.publish(event).await?;
                            self.inner.publish(first).await?;
                        }
                    }
                    return Ok(());
                }
                Fault::AcceptsInvalidTypes if event.validate().is_err() => return Ok(()),
                Fault::LosesCustomMetadata => event.metadata.custom.clear(),
                _ => {}
            }
            self.inner.publish(event).await
        }

        async fn publish_batch(&self, events: Vec<Event>) -> Result<()> {
            if self.fault == Fault::SendsBatchBeforeValidating {
                for e in events {
                    self.inner.publish(e).await?;
                }
                return Ok(());
            }
            for e in events {
                self.publish(e).await?;
            }
            Ok(())
        }

        async fn subscribe(
            &self,
            pattern: &str,
            handler: Arc<dyn Handler>,
        ) -> Result<Subscription> {
            match self.fault {
                Fault::IgnoresUnsubscribe => {
                    self.inner.subscribe(pattern, handler).await?.detach();
                    Ok(Subscription::new(pattern, || {}))
                }
                Fault::WidensOneTokenWildcard if pattern.ends_with(".*") => {
                    let widened = format!("{}>", &pattern[..pattern.len() - 1]);
                    self.inner.subscribe(&widened, handler).await
                }
                Fault::DropsFailingSubscription => {
                    let dead = Arc::new(AtomicBool::new(false));
                    let wrapped = move |event: Arc<Event>| {
                        let (handler, dead) = (handler.clone(), dead.clone());
                        async move {
                            if dead.load(Ordering::SeqCst) {
                                return Ok(());
                            }
                            let result = handler.handle(event).await;
                            if result.is_err() {
                                dead.store(true, Ordering::SeqCst);
                            }
                            result
                        }
                    };
                    self.inner.subscribe(pattern, Arc::new(wrapped)).await
                }
                _ => self.inner.subscribe(pattern, handler).await,
            }
        }

        async fn close(&self) -> Result<()> {
            if self.fault == Fault::IgnoresClose {
                return Ok(());
            }
            self.inner.close().await
        }

        fn errors(&self) -> ErrorReceiver {
            self.inner.errors()
        }
    }

    #[tokio::test]
    #[should_panic(expected = "in publish order (publish)")]
    async fn catches_reordering() {
        publish_order(&faulty(Fault::Reorders)).await;
    }

    #[tokio::test]
    #[should_panic(expected = "Subscription::unsubscribe stops its delivery")]
    async fn catches_an_unsubscribe_that_does_nothing() {
        unsubscribe_stops_delivery(&faulty(Fault::IgnoresUnsubscribe)).await;
    }

    #[tokio::test]
    #[should_panic(expected = "dropping a Subscription stops its delivery")]
    async fn catches_a_drop_that_does_nothing() {
        drop_stops_delivery(&faulty(Fault::IgnoresUnsubscribe)).await;
    }

    #[tokio::test]
    #[should_panic(expected = "publish rejects an invalid event type")]
    async fn catches_an_accepted_invalid_type() {
        invalid_event_type(&faulty(Fault::AcceptsInvalidTypes)).await;
    }

    #[tokio::test]
    #[should_panic(expected = "validated before anything is sent")]
    async fn catches_a_batch_sent_before_validation() {
        invalid_event_type_in_batch(&faulty(Fault::SendsBatchBeforeValidating)).await;
    }

    #[tokio::test]
    #[should_panic(expected = "publish after close succeeded")]
    async fn catches_a_close_that_does_nothing() {
        closed_bus_rejects(&faulty(Fault::IgnoresClose)).await;
    }

    #[tokio::test]
    #[should_panic(expected = "pattern \"order.*\" delivers exactly")]
    async fn catches_a_widened_wildcard() {
        pattern_one_token(&faulty(Fault::WidensOneTokenWildcard)).await;
    }

    #[tokio::test]
    #[should_panic(expected = "a handler that returns Err neither stops")]
    async fn catches_a_subscription_killed_by_a_handler_error() {
        handler_error_isolated(&faulty(Fault::DropsFailingSubscription)).await;
    }

    #[tokio::test]
    #[should_panic(expected = "field metadata changed in transit")]
    async fn catches_lost_metadata() {
        envelope_intact(&faulty(Fault::LosesCustomMetadata)).await;
    }
}
