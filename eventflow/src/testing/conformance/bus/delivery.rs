//! Delivery: patterns, subscriptions that start and stop, several subscribers, the envelope,
//! and (for buses that dispatch in `publish`) handlers that have run when `publish` returns.

use std::sync::Arc;

use serde_json::json;
use uuid::Uuid;

use super::support::{Collector, check_pattern, event, fail, numbered, publish, subscribe};
use crate::bus::{EventBus, HandlerResult};
use crate::event::{Event, Metadata};

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

/// Capability `sync_dispatch`: every matching handler, even one that yields before it finishes,
/// has run when `publish` or `publish_batch` returns.
pub async fn handlers_ran_when_publish_returns(bus: &dyn EventBus) {
    let promise = "with sync dispatch, every handler has run when publish returns";
    let seen = Collector::new();
    let recorder = seen.clone();
    let yielding = Arc::new(move |event: Arc<Event>| {
        let recorder = recorder.clone();
        async move {
            tokio::task::yield_now().await;
            recorder.push(event);
            HandlerResult::Ok(())
        }
    });
    let _plain = subscribe(bus, "sync.*", seen.handler(), promise).await;
    let _yielding = subscribe(bus, "sync.>", yielding, promise).await;
    let one = publish(bus, event("sync.one"), promise).await;
    if seen.count(one) != 2 {
        fail(
            promise,
            format!(
                "{} of 2 handlers had run when publish returned",
                seen.count(one)
            ),
        );
    }
    let batch: Vec<Event> = (0..5).map(|i| numbered("sync.batch", 0, i)).collect();
    let ids: Vec<Uuid> = batch.iter().map(|e| e.id).collect();
    if let Err(e) = bus.publish_batch(batch).await {
        fail(promise, format!("publish_batch failed: {e}"));
    }
    let missing = ids.iter().filter(|id| seen.count(**id) != 2).count();
    if missing > 0 {
        fail(
            promise,
            format!(
                "{missing} of 5 batch events had not reached both handlers when publish_batch returned"
            ),
        );
    }
}
