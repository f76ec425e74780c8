//! Subscriptions: catch up, then follow live, filtered, despite handler errors, and stop when
//! dropped.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use uuid::Uuid;

use super::support::{channel_handler, ev, ids, need, positions, recv_n};
use crate::bus::HandlerResult;
use crate::event::Event;
use crate::store::{EventCriteria, EventStore, EventStoreExt, ExpectedVersion, SubscribeOptions};

/// `subscribe` catches up from `after_position` (in batches of `limit`), then delivers new
/// events live, in order, filtered by the criteria; a failing handler does not stop it; nothing
/// arrives after the subscription is dropped.
pub async fn subscribe_catch_up_then_live(store: &dyn EventStore) {
    const P: &str = "subscribe catches up from after_position, then follows live, in order";
    let mut written = Vec::new();
    for i in 0..6u64 {
        let t = if i % 2 == 0 { "sub.even" } else { "sub.odd" };
        written.push(need(
            store.append("sub-1", ExpectedVersion::Any, ev(t, i)).await,
            P,
            "append",
        ));
    }
    let start = written[1].position.unwrap_or(0);

    let (tx, mut rx) = mpsc::unbounded_channel();
    let all_sub = need(
        store
            .subscribe_with(
                EventCriteria::all().after_position(start),
                SubscribeOptions::new().batch_size(2),
                channel_handler(tx),
            )
            .await,
        P,
        "subscribe",
    );
    let (even_tx, mut even_rx) = mpsc::unbounded_channel();
    let even_sub = need(
        store
            .subscribe(
                EventCriteria::all().event_types(["sub.even"]),
                channel_handler(even_tx),
            )
            .await,
        P,
        "subscribe",
    );
    // A handler that fails on every other event must still see every event.
    let (fail_tx, mut fail_rx) = mpsc::unbounded_channel::<Arc<Event>>();
    let failing = Arc::new(move |event: Arc<Event>| {
        let tx = fail_tx.clone();
        async move {
            let n = event.payload["n"].as_u64().unwrap_or(0);
            let _ = tx.send(event);
            if n.is_multiple_of(2) {
                HandlerResult::Err("conformance kit: handler fails on purpose".into())
            } else {
                Ok(())
            }
        }
    });
    let fail_sub = need(
        store.subscribe(EventCriteria::all(), failing).await,
        "a handler error does not stop a store subscription",
        "subscribe",
    );

    let caught_up = recv_n(&mut rx, 4, P).await;
    ensure!(
        ids(&caught_up) == ids(&written[2..]),
        P,
        "catch-up delivered {:?}, expected positions {:?}",
        positions(&caught_up),
        positions(&written[2..])
    );

    for i in 6..10u64 {
        let t = if i % 2 == 0 { "sub.even" } else { "sub.odd" };
        written.push(need(
            store.append("sub-2", ExpectedVersion::Any, ev(t, i)).await,
            P,
            "append",
        ));
    }
    let live = recv_n(&mut rx, 4, P).await;
    ensure!(
        ids(&live) == ids(&written[6..]),
        P,
        "live delivery gave positions {:?}, expected {:?}",
        positions(&live),
        positions(&written[6..])
    );
    let even = recv_n(&mut even_rx, 5, "subscribe filters by criteria").await;
    let want_even: Vec<Uuid> = written
        .iter()
        .filter(|e| e.event_type == "sub.even")
        .map(|e| e.id)
        .collect();
    ensure!(
        ids(&even) == want_even,
        "subscribe filters by criteria",
        "an event_types subscription got {:?}",
        even.iter().map(|e| &e.event_type).collect::<Vec<_>>()
    );
    let failed = recv_n(
        &mut fail_rx,
        10,
        "a handler error does not stop a store subscription",
    )
    .await;
    ensure!(
        ids(&failed) == ids(&written),
        "a handler error does not stop a store subscription",
        "a failing handler saw {} events in the wrong order",
        failed.len()
    );

    drop(all_sub);
    drop(even_sub);
    drop(fail_sub);
    for i in 10..13u64 {
        need(
            store
                .append("sub-3", ExpectedVersion::Any, ev("sub.even", i))
                .await,
            P,
            "append",
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    ensure!(
        rx.try_recv().is_err() && even_rx.try_recv().is_err() && fail_rx.try_recv().is_err(),
        "a dropped store subscription delivers nothing more",
        "an event committed after the drop was delivered"
    );
}
