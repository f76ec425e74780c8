//! Errors: invalid input is rejected before anything is sent, a failing or panicking handler
//! is isolated and reported, and a closed bus rejects everything.

use std::sync::Arc;

use super::support::{Collector, event, fail, invalid, numbered, publish, subscribe, wait_error};
use crate::bus::{BusError, BusErrorKind, EventBus, Handler, HandlerResult};
use crate::error::Error;
use crate::event::Event;

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

/// A failing or panicking handler; records every call.
pub(super) fn misbehaving(calls: &Collector, panics: bool) -> Arc<dyn Handler> {
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

/// A handler's `Err` is reported on [`errors`](EventBus::errors) as `HandlerFailed` and its
/// panic as `HandlerPanicked`, each naming the event and the subscription's pattern.
pub async fn handler_failures_reported(bus: &dyn EventBus) {
    let promise = "a handler's Err and panic are reported on errors(), naming event and pattern";
    let mut errors = bus.errors();
    let calls = Collector::new();
    let _failing = subscribe(bus, "report.failing", misbehaving(&calls, false), promise).await;
    let _panicking = subscribe(bus, "report.panicking", misbehaving(&calls, true), promise).await;
    let failing = publish(bus, event("report.failing"), promise).await;
    let panicking = publish(bus, event("report.panicking"), promise).await;
    // The two subscriptions deliver independently: either report may come first, so wait
    // for both at once (waiting for one would skip the other if it came first).
    let is_failed =
        |e: &BusError| e.kind == BusErrorKind::HandlerFailed && e.event_id == Some(failing);
    let is_panicked =
        |e: &BusError| e.kind == BusErrorKind::HandlerPanicked && e.event_id == Some(panicking);
    let (mut failed, mut panicked) = (None, None);
    while failed.is_none() || panicked.is_none() {
        let what = match (&failed, &panicked) {
            (None, None) => "HandlerFailed and HandlerPanicked",
            (None, Some(_)) => "HandlerFailed",
            _ => "HandlerPanicked",
        };
        let e = wait_error(&mut errors, promise, what, |e| {
            is_failed(e) || is_panicked(e)
        })
        .await;
        if is_failed(&e) {
            failed = Some(e);
        } else {
            panicked = Some(e);
        }
    }
    let (Some(failed), Some(panicked)) = (failed, panicked) else {
        unreachable!("both reports were received");
    };
    if failed.pattern.as_deref() != Some("report.failing")
        || failed.event_type.as_deref() != Some("report.failing")
    {
        fail(
            promise,
            format!("HandlerFailed names the wrong subscription or event: {failed:?}"),
        );
    }
    if panicked.pattern.as_deref() != Some("report.panicking")
        || !panicked.message.contains("panics on purpose")
    {
        fail(
            promise,
            format!("HandlerPanicked lacks the pattern or the panic message: {panicked:?}"),
        );
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
