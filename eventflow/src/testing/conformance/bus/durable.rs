//! Durable subscriptions: a named subscriber that starts later gets what was published
//! meanwhile while an unnamed one resumes nothing (capability `persistent`), and subscribers
//! sharing a name share the work while unnamed ones each get every event (capability
//! `competing_consumers`). They need several buses for one [`Scope`].

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
use crate::bus::{EventBus, Handler, SubscriptionOptions};
use crate::event::Event;
use crate::handler::Subscription;
use crate::testing::conformance::Scope;

async fn close(bus: &dyn EventBus, promise: &str) {
    if let Err(e) = bus.close().await {
        fail(promise, format!("close failed: {e}"));
    }
}

/// The name of [`durable_subscriber_resumes`]'s subscriber.
const DURABLE_NAME: &str = "kit-durable";

async fn subscribe_named(
    bus: &dyn EventBus,
    pattern: &str,
    name: &str,
    handler: Arc<dyn Handler>,
    promise: &str,
) -> Subscription {
    match bus
        .subscribe_with(&[pattern], SubscriptionOptions::named(name), handler)
        .await
    {
        Ok(s) => s,
        Err(e) => fail(
            promise,
            format!("subscribe({pattern:?}) as {name} failed: {e}"),
        ),
    }
}

/// Capability `persistent`: a named subscriber on a bus closed and made again for the same
/// scope (a restarted process) resumes after the events its predecessor handled: it gets the events
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
    let sub = subscribe_named(
        &*first,
        "durable.*",
        DURABLE_NAME,
        handled.handler(),
        promise,
    )
    .await;
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
    let _sub = subscribe_named(
        &*restarted,
        "durable.*",
        DURABLE_NAME,
        resumed.handler(),
        promise,
    )
    .await;
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

/// Capability `competing_consumers`: two buses made for the same scope (two services on one
/// configuration) whose subscriptions to one pattern have no name each get every event: an
/// unnamed subscription has no identity to share.
pub async fn unnamed_subscribers_each_get_every_event<F, Fut>(make_bus: &F)
where
    F: Fn(Scope) -> Fut,
    Fut: Future<Output = Arc<dyn EventBus>>,
{
    let promise = "unnamed subscribers on two buses of one configuration each get every event";
    let scope = Scope::new("unnamed_subscribers_each_get_every_event");
    let (a, b) = (make_bus(scope.clone()).await, make_bus(scope).await);
    let (seen_a, seen_b) = (Collector::new(), Collector::new());
    let _sub_a = subscribe(&*a, "unnamed.*", seen_a.handler(), promise).await;
    let _sub_b = subscribe(&*b, "unnamed.*", seen_b.handler(), promise).await;
    let events: Vec<Event> = (0..40).map(|i| numbered("unnamed.item", 0, i)).collect();
    let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
    if let Err(e) = a.publish_batch(events).await {
        fail(promise, format!("publish_batch failed: {e}"));
    }
    seen_a
        .expect_exactly(&ids, &format!("{promise} (first bus)"))
        .await;
    seen_b
        .expect_exactly(&ids, &format!("{promise} (second bus)"))
        .await;
    close(&*a, promise).await;
    close(&*b, promise).await;
}

/// Capability `persistent`: only named subscriptions resume. Two unnamed subscriptions to one
/// pattern each get every event; once both are gone, unnamed subscriptions made again (on the
/// same bus, and on a bus made again for the same scope, as after a restart), in the opposite
/// order, get only events published after they subscribed: nothing of what was published
/// while none ran, and neither takes over the other's position.
pub async fn unnamed_subscriptions_do_not_resume<F, Fut>(make_bus: &F)
where
    F: Fn(Scope) -> Fut,
    Fut: Future<Output = Arc<dyn EventBus>>,
{
    let promise = "an unnamed subscription starts at new events and resumes nothing";
    let scope = Scope::new("unnamed_subscriptions_do_not_resume");
    let bus = make_bus(scope.clone()).await;
    let (first, second) = (Collector::new(), Collector::new());
    let sub_first = subscribe(&*bus, "fresh.*", first.handler(), promise).await;
    let sub_second = subscribe(&*bus, "fresh.*", second.handler(), promise).await;
    let mut both = Vec::new();
    for i in 0..5 {
        both.push(publish(&*bus, numbered("fresh.event", 0, i), promise).await);
    }
    first
        .expect_exactly(&both, &format!("{promise} (first)"))
        .await;
    second
        .expect_exactly(&both, &format!("{promise} (second)"))
        .await;
    // The first stops; the second goes on alone, so the two positions differ.
    drop(sub_first);
    for i in 5..8 {
        publish(&*bus, numbered("fresh.event", 0, i), promise).await;
    }
    drop(sub_second);
    for i in 8..10 {
        publish(&*bus, numbered("fresh.event", 0, i), promise).await;
    }
    // Made again in the opposite order, on the same bus.
    let (again_second, again_first) = (Collector::new(), Collector::new());
    let _s = subscribe(&*bus, "fresh.*", again_second.handler(), promise).await;
    let _f = subscribe(&*bus, "fresh.*", again_first.handler(), promise).await;
    let marker = publish(&*bus, numbered("fresh.marker", 0, 0), promise).await;
    let detail = "(made again on the same bus; anything before the marker was published before it subscribed)";
    again_second
        .expect_exactly(&[marker], &format!("{promise} {detail}"))
        .await;
    again_first
        .expect_exactly(&[marker], &format!("{promise} {detail}"))
        .await;
    drop((_s, _f));
    for i in 10..12 {
        publish(&*bus, numbered("fresh.event", 0, i), promise).await;
    }
    close(&*bus, promise).await;

    // A restarted process, subscribing in the opposite order.
    let restarted = make_bus(scope).await;
    let (third, fourth) = (Collector::new(), Collector::new());
    let _t = subscribe(&*restarted, "fresh.*", third.handler(), promise).await;
    let _u = subscribe(&*restarted, "fresh.*", fourth.handler(), promise).await;
    let marker = publish(&*restarted, numbered("fresh.marker", 0, 1), promise).await;
    let detail = "(made again on a restarted bus)";
    third
        .expect_exactly(&[marker], &format!("{promise} {detail}"))
        .await;
    fourth
        .expect_exactly(&[marker], &format!("{promise} {detail}"))
        .await;
    close(&*restarted, promise).await;
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
    share_work(make_bus, scope, "kit-shared", promise).await;
}

/// Two subscribers of `work.*`, on two buses of `scope`, named `name`.
async fn share_work<F, Fut>(make_bus: &F, scope: Scope, name: &str, promise: &str)
where
    F: Fn(Scope) -> Fut,
    Fut: Future<Output = Arc<dyn EventBus>>,
{
    let (a, b) = (make_bus(scope.clone()).await, make_bus(scope).await);
    let (seen_a, seen_b) = (Collector::new(), Collector::new());
    let options = SubscriptionOptions::named(name);
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
