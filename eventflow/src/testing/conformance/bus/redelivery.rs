//! Redelivery (capability `redelivers`) and dead letters (capability `dead_letters`): the
//! at-least-once promises JetStream and Redis Streams share.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use uuid::Uuid;

use super::support::{
    Collector, QUIET_PERIOD, event, fail, numbered, publish, subscribe, wait_error,
};
use crate::bus::{BusErrorKind, EventBus, Handler, HandlerResult};
use crate::event::Event;
use crate::handler::sync;

/// Counts the attempts per event id.
#[derive(Clone, Default)]
struct Attempts(Arc<Mutex<HashMap<Uuid, usize>>>);

impl Attempts {
    /// Records one more attempt of `id` and returns its number (1 for the first).
    fn next(&self, id: Uuid) -> usize {
        let mut map = sync::lock(&self.0);
        let n = map.entry(id).or_insert(0);
        *n += 1;
        *n
    }

    fn of(&self, id: Uuid) -> usize {
        let map = sync::lock(&self.0);
        map.get(&id).copied().unwrap_or(0)
    }
}

/// Publishes a marker the subscription handles, waits for it, then waits [`QUIET_PERIOD`]: a
/// redelivery due before the marker has then had its chance to show.
async fn settle(bus: &dyn EventBus, seen: &Collector, event_type: &str, promise: &str) {
    let marker = publish(bus, event(event_type), promise).await;
    seen.wait_for(&[marker], promise).await;
    tokio::time::sleep(QUIET_PERIOD).await;
}

/// Capability `redelivers`: an event whose handler returned `Err`, then panicked, is delivered
/// again until the handler succeeds (here on the third attempt), and not after that; each
/// failure is reported; an event that succeeds at once is handled once.
pub async fn redelivery_after_error_and_panic(bus: &dyn EventBus) {
    let promise = "an event whose handler failed or panicked is redelivered until it succeeds";
    let mut errors = bus.errors();
    let attempts = Attempts::default();
    let seen = Collector::new();
    let handler: Arc<dyn Handler> = {
        let (attempts, seen) = (attempts.clone(), seen.clone());
        Arc::new(move |event: Arc<Event>| {
            let n = attempts.next(event.id);
            let flaky = event.event_type == "redeliver.flaky";
            let seen = seen.clone();
            async move {
                match n {
                    1 if flaky => HandlerResult::Err("conformance kit: first try fails".into()),
                    2 if flaky => panic!("conformance kit: second try panics on purpose"),
                    _ => {
                        seen.push(event);
                        Ok(())
                    }
                }
            }
        })
    };
    let _sub = subscribe(bus, "redeliver.*", handler, promise).await;
    let flaky = publish(bus, event("redeliver.flaky"), promise).await;
    let steady = publish(bus, event("redeliver.steady"), promise).await;
    seen.wait_for(&[flaky, steady], promise).await;
    wait_error(
        &mut errors,
        promise,
        "HandlerFailed for the flaky event",
        |e| e.kind == BusErrorKind::HandlerFailed && e.event_id == Some(flaky),
    )
    .await;
    wait_error(
        &mut errors,
        promise,
        "HandlerPanicked for the flaky event",
        |e| e.kind == BusErrorKind::HandlerPanicked && e.event_id == Some(flaky),
    )
    .await;
    settle(bus, &seen, "redeliver.marker", promise).await;
    let (flaky_tries, steady_tries) = (attempts.of(flaky), attempts.of(steady));
    if flaky_tries != 3 {
        fail(
            promise,
            format!(
                "the flaky event was attempted {flaky_tries} times, expected 3 (Err, panic, Ok)"
            ),
        );
    }
    if steady_tries != 1 {
        fail(
            promise,
            format!("an event handled at the first attempt was delivered {steady_tries} times"),
        );
    }
}

/// Capability `dead_letters`: an event whose handler always fails is attempted exactly
/// `max_deliveries` times, then terminated and reported as `DeadLettered`; events published
/// around it keep flowing, and it does not come back.
pub async fn dead_letter_after_max_deliveries(bus: &dyn EventBus, max_deliveries: u32) {
    let promise = "after max deliveries a failing event is dead-lettered while later events flow";
    let mut errors = bus.errors();
    let attempts = Attempts::default();
    let seen = Collector::new();
    let handler: Arc<dyn Handler> = {
        let (attempts, seen) = (attempts.clone(), seen.clone());
        Arc::new(move |event: Arc<Event>| {
            attempts.next(event.id);
            let poison = event.event_type == "dead.poison";
            let seen = seen.clone();
            async move {
                if poison {
                    return HandlerResult::Err("conformance kit: cannot digest, on purpose".into());
                }
                seen.push(event);
                Ok(())
            }
        })
    };
    let _sub = subscribe(bus, "dead.*", handler, promise).await;
    let mut good = vec![publish(bus, numbered("dead.good", 0, 0), promise).await];
    let poison = publish(bus, event("dead.poison"), promise).await;
    let later: Vec<Event> = (1..=20).map(|i| numbered("dead.good", 0, i)).collect();
    good.extend(later.iter().map(|e| e.id));
    if let Err(e) = bus.publish_batch(later).await {
        fail(promise, format!("publish_batch failed: {e}"));
    }
    seen.wait_for(&good, promise).await;
    let dead = wait_error(
        &mut errors,
        promise,
        "DeadLettered for the poison event",
        |e| e.kind == BusErrorKind::DeadLettered && e.event_id == Some(poison),
    )
    .await;
    if dead.event_type.as_deref() != Some("dead.poison") {
        fail(
            promise,
            format!("DeadLettered names the wrong event: {dead:?}"),
        );
    }
    settle(bus, &seen, "dead.marker", promise).await;
    let tries = attempts.of(poison);
    if tries != max_deliveries as usize {
        fail(
            promise,
            format!("the poison event was attempted {tries} times, expected {max_deliveries}"),
        );
    }
    let repeated = good.iter().filter(|id| attempts.of(**id) != 1).count();
    if repeated > 0 {
        fail(
            promise,
            format!("{repeated} events handled at the first attempt were delivered again"),
        );
    }
}
