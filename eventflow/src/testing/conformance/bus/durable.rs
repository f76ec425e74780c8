//! Durable subscriptions: a subscriber that starts later gets what was published meanwhile
//! (capability `persistent`), and subscribers sharing a durable name share the work
//! (capability `competing_consumers`). Both need several buses for one [`Scope`].

use std::future::Future;
use std::sync::Arc;

use uuid::Uuid;

use super::support::{Collector, fail, numbered, publish, subscribe};

/// Two subscriptions to one pattern with different names (two services) each get every
/// event, on every bus.
pub async fn different_names_each_get_every_event(bus: &dyn EventBus) {
    let promise = "subscriptions with different names each get every event";
    let (seen_a, seen_b) = (Collector::new(), Collector::new());
    let mut subs = Vec::new();
    for (name, seen) in [("kit-service-a", &seen_a), ("kit-service-b", &seen_b)] {
        match bus
            .subscribe_with(
                &["named.*"],
                SubscriptionOptions::named(name),
                seen.handler(),
            )
            .await
        {
            Ok(s) => subs.push(s),
            Err(e) => fail(promise, format!("subscribe as {name} failed: {e}")),
        }
    }
    let mut ids = Vec::new();
    for i in 0..30 {
        ids.push(publish(bus, numbered("named.event", 0, i), promise).await);
    }
    seen_a
        .expect_exactly(&ids, &format!("{promise} (kit-service-a)"))
        .await;
    seen_b
        .expect_exactly(&ids, &format!("{promise} (kit-service-b)"))
        .await;
    drop(subs);
}
use crate::bus::{EventBus, SubscriptionOptions};
use crate::event::Event;
use crate::testing::conformance::Scope;

async fn close(bus: &dyn EventBus, promise: &str) {
    if let Err(e) = bus.close().await {
        fail(promise, format!("close failed: {e}"));
    }
}

/// Capability `persistent`: a subscriber on a bus closed and made again for the same scope
/// (a restarted process) resumes after the events its predecessor handled: it gets the events
/// published while no subscriber ran, then live ones, and not the ones already handled.
pub async fn durable_subscriber_resumes<F, Fut>(make_bus: &F)
where
    F: Fn(Scope) -> Fut,
    Fut: Future<Output = Arc<dyn EventBus>>,
{
    let promise = "a restarted durable subscriber gets what was published while it was down";
    let scope = Scope::new("durable_subscriber_resumes");

    let first = make_bus(scope.clone()).await;
    let handled = Collector::new();
    let sub = subscribe(&*first, "durable.*", handled.handler(), promise).await;
    let before: Vec<Uuid> = {
        let mut ids = Vec::new();
        for i in 0..5 {
            ids.push(publish(&*first, numbered("durable.event", 0, i), promise).await);
        }
        ids
    };
    handled.wait_for(&before, promise).await;
    // An at-least-once bus may acknowledge after the handler returns; once a later event was
    // handled, the earlier ones are acknowledged. Only this marker may come back.
    let marker = publish(&*first, numbered("durable.marker", 0, 0), promise).await;
    handled.wait_for(&[marker], promise).await;
    drop(sub);
    close(&*first, promise).await;

    // Published while no subscriber runs.
    let publisher = make_bus(scope.clone()).await;
    let during: Vec<Event> = (5..10).map(|i| numbered("durable.event", 0, i)).collect();
    let mut expected: Vec<Uuid> = during.iter().map(|e| e.id).collect();
    if let Err(e) = publisher.publish_batch(during).await {
        fail(promise, format!("publish_batch failed: {e}"));
    }

    let restarted = make_bus(scope.clone()).await;
    let resumed = Collector::new();
    let _sub = subscribe(&*restarted, "durable.*", resumed.handler(), promise).await;
    resumed.wait_for(&expected, promise).await;
    let live = publish(&*publisher, numbered("durable.event", 0, 10), promise).await;
    expected.push(live);
    resumed.wait_for(&expected, promise).await;
    tokio::time::sleep(super::QUIET_PERIOD).await;
    let firsts: Vec<Uuid> = resumed
        .first_deliveries()
        .iter()
        .map(|e| e.id)
        .filter(|id| *id != marker)
        .collect();
    let replayed = firsts.iter().filter(|id| before.contains(id)).count();
    if replayed > 0 {
        fail(
            promise,
            format!("the restarted subscriber got {replayed} events its predecessor had handled"),
        );
    }
    if firsts != expected {
        fail(
            promise,
            "the restarted subscriber did not get the missed events in publish order, then the live one",
        );
    }
    close(&*restarted, promise).await;
    close(&*publisher, promise).await;
}

/// Capability `competing_consumers`: two buses made for the same scope (two processes) that
/// subscribe the same pattern share its events: together they handle every event, and no event
/// goes to both.
pub async fn competing_consumers_share_work<F, Fut>(make_bus: &F)
where
    F: Fn(Scope) -> Fut,
    Fut: Future<Output = Arc<dyn EventBus>>,
{
    let promise = "subscribers sharing a durable name share the events, each to one of them";
    let scope = Scope::new("competing_consumers_share_work");
    share_work(make_bus, scope, None, promise).await;
}

/// Capability `competing_consumers`: two buses made for the same scope (two processes) whose
/// subscriptions to one pattern carry the same name ([`SubscriptionOptions::named`]) share its
/// events: together they handle every event, and no event goes to both.
pub async fn same_name_shares_work<F, Fut>(make_bus: &F)
where
    F: Fn(Scope) -> Fut,
    Fut: Future<Output = Arc<dyn EventBus>>,
{
    let promise = "subscriptions with the same name share the events, each to one of them";
    let scope = Scope::new("same_name_shares_work");
    share_work(make_bus, scope, Some("kit-shared"), promise).await;
}

/// Two subscribers of `work.*`, on two buses of `scope`, named `name` (or unnamed).
async fn share_work<F, Fut>(make_bus: &F, scope: Scope, name: Option<&str>, promise: &str)
where
    F: Fn(Scope) -> Fut,
    Fut: Future<Output = Arc<dyn EventBus>>,
{
    let (a, b) = (make_bus(scope.clone()).await, make_bus(scope).await);
    let (seen_a, seen_b) = (Collector::new(), Collector::new());
    let options = match name {
        Some(name) => SubscriptionOptions::named(name),
        None => SubscriptionOptions::new(),
    };
    let mut subs = Vec::new();
    for (bus, seen) in [(&a, &seen_a), (&b, &seen_b)] {
        match bus
            .subscribe_with(&["work.*"], options.clone(), seen.handler())
            .await
        {
            Ok(s) => subs.push(s),
            Err(e) => fail(promise, format!("subscribe failed: {e}")),
        }
    }
    let events: Vec<Event> = (0..40).map(|i| numbered("work.item", 0, i)).collect();
    let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
    if let Err(e) = a.publish_batch(events).await {
        fail(promise, format!("publish_batch failed: {e}"));
    }
    let deadline = tokio::time::Instant::now() + super::DELIVERY_TIMEOUT;
    loop {
        let mut all = seen_a.distinct_ids();
        all.extend(seen_b.distinct_ids());
        if ids.iter().all(|id| all.contains(id)) {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            let missing = ids.iter().filter(|id| !all.contains(id)).count();
            fail(
                promise,
                format!(
                    "{missing} of {} events reached neither subscriber",
                    ids.len()
                ),
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    tokio::time::sleep(super::QUIET_PERIOD).await;
    let both = seen_a
        .distinct_ids()
        .intersection(&seen_b.distinct_ids())
        .count();
    if both > 0 {
        fail(
            promise,
            format!("{both} of {} events went to both subscribers", ids.len()),
        );
    }
    close(&*a, promise).await;
    close(&*b, promise).await;
}
