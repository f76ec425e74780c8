//! Ordering (capability `ordered`): a subscriber sees one publisher's events in publish order.

use uuid::Uuid;

use super::support::{Collector, check_order, fail, numbered, publish, subscribe};
use crate::bus::EventBus;
use crate::event::Event;

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
