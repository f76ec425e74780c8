//! Unit tests of the saga manager, through the given/when/then fixture.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{Saga, SagaContext};
use crate::error::BoxError;
use crate::event::Event;
use crate::testing::saga::SagaFixture;

/// reserve -> reserved -> pay -> paid | failed (compensate) | timeout (compensate).
struct Checkout;

#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
struct State {
    order_id: String,
    step: String,
}

impl Saga for Checkout {
    type State = State;
    fn name(&self) -> &str {
        "checkout"
    }
    fn starts_on(&self) -> Vec<String> {
        vec!["order.placed".into()]
    }
    fn handles(&self) -> Vec<String> {
        [
            "inventory.reserved",
            "payment.succeeded",
            "payment.failed",
            "checkout.timed_out",
        ]
        .map(String::from)
        .to_vec()
    }
    fn handle(&self, s: &mut State, e: &Event, ctx: &mut SagaContext) -> Result<(), BoxError> {
        match e.event_type.as_str() {
            "order.placed" => {
                s.order_id = e.payload["order_id"].as_str().ok_or("no order id")?.into();
                s.step = "reserving".into();
                ctx.emit_new("inventory.reserve", json!({ "order_id": s.order_id }))?;
                ctx.set_deadline(
                    "checkout",
                    Duration::from_secs(30),
                    Event::new("checkout.timed_out", json!({}))?,
                );
            }
            "inventory.reserved" => {
                s.step = "paying".into();
                ctx.emit_new("payment.process", json!({ "order_id": s.order_id }))?;
            }
            "payment.succeeded" => {
                s.step = "done".into();
                ctx.complete();
            }
            "payment.failed" | "checkout.timed_out" => {
                s.step = "compensated".into();
                ctx.emit_new("inventory.release", json!({ "order_id": s.order_id }))?;
                ctx.complete();
            }
            other => return Err(format!("unexpected {other}").into()),
        }
        Ok(())
    }
}

fn ev(t: &str) -> Event {
    Event::new(t, json!({ "order_id": "o-1" })).unwrap()
}

#[tokio::test]
async fn start_emits_the_first_command() {
    SagaFixture::new(Checkout)
        .when(ev("order.placed"))
        .await
        .then_emits(&["inventory.reserve"])
        .then_state(|s| assert_eq!(s.step, "reserving"))
        .then_running();
}

#[tokio::test]
async fn reserved_then_payment() {
    SagaFixture::new(Checkout)
        .given([ev("order.placed")])
        .when(ev("inventory.reserved"))
        .await
        .then_emits(&["payment.process"])
        .then_state(|s| assert_eq!(s.order_id, "o-1"));
}

#[tokio::test]
async fn payment_failure_compensates_and_completes() {
    SagaFixture::new(Checkout)
        .given([ev("order.placed"), ev("inventory.reserved")])
        .when(ev("payment.failed"))
        .await
        .then_emits(&["inventory.release"])
        .then_completed();
}

#[tokio::test]
async fn the_deadline_compensates_when_time_passes() {
    SagaFixture::new(Checkout)
        .given([ev("order.placed")])
        .when_time_passes(Duration::from_secs(31))
        .await
        .then_emits(&["inventory.release"])
        .then_state(|s| assert_eq!(s.step, "compensated"))
        .then_completed();
}

#[tokio::test]
async fn no_deadline_before_it_is_due() {
    SagaFixture::new(Checkout)
        .given([ev("order.placed")])
        .when_time_passes(Duration::from_secs(5))
        .await
        .then_emits_nothing()
        .then_running();
}

#[tokio::test]
async fn a_redelivered_event_is_ignored() {
    let placed = ev("order.placed").with_correlation("c-9");
    SagaFixture::new(Checkout)
        .given([placed.clone()])
        .when(placed)
        .await
        .then_ignored()
        .then_emits_nothing();
}

#[tokio::test]
async fn a_handler_error_commits_nothing() {
    let bad = Event::new("order.placed", json!({})).unwrap();
    let message = SagaFixture::new(Checkout).when(bad).await.then_error();
    assert!(message.contains("no order id"), "{message}");
}

/// A bus that takes everything but events whose payload says `poison` (too large, for good).
struct RejectsPoison(crate::testing::RecordingBus);

#[async_trait::async_trait]
impl crate::bus::EventBus for RejectsPoison {
    async fn publish(&self, event: Event) -> crate::error::Result<()> {
        self.publish_batch(vec![event]).await
    }
    async fn publish_batch(&self, events: Vec<Event>) -> crate::error::Result<()> {
        if let Some(e) = events.iter().find(|e| e.payload["poison"] == true) {
            return Err(crate::error::Error::EventTooLarge {
                id: e.id,
                size: 2 << 20,
                limit: 1 << 20,
            });
        }
        self.0.publish_batch(events).await
    }
    fn guarantee(&self) -> crate::bus::Delivery {
        self.0.guarantee()
    }
    async fn subscribe_with(
        &self,
        patterns: &[&str],
        options: crate::bus::SubscriptionOptions,
        handler: std::sync::Arc<dyn crate::bus::Handler>,
    ) -> crate::error::Result<crate::bus::Subscription> {
        self.0.subscribe_with(patterns, options, handler).await
    }
    async fn close(&self) -> crate::error::Result<()> {
        self.0.close().await
    }
    fn errors(&self) -> crate::bus::ErrorReceiver {
        self.0.errors()
    }
}

/// Emits a good event, a poison one and another good one per start.
struct Emits3;

impl Saga for Emits3 {
    type State = ();
    fn name(&self) -> &str {
        "emits3"
    }
    fn starts_on(&self) -> Vec<String> {
        vec!["emit.start".into()]
    }
    fn handles(&self) -> Vec<String> {
        Vec::new()
    }
    fn handle(&self, _: &mut (), _: &Event, ctx: &mut SagaContext) -> Result<(), BoxError> {
        for (n, poison) in [(1, false), (2, true), (3, false)] {
            ctx.emit_new("emit.out", json!({ "n": n, "poison": poison }))?;
        }
        ctx.complete();
        Ok(())
    }
}

#[tokio::test]
async fn a_step_parks_an_emitted_event_the_bus_never_takes_and_publishes_the_rest() {
    use std::sync::Arc;
    let bus = Arc::new(RejectsPoison(crate::testing::RecordingBus::new()));
    let store = Arc::new(super::InMemorySagaStore::new());
    let manager = super::SagaManager::new(Emits3, store.clone())
        .unwrap()
        .with_bus(bus.clone());
    manager
        .handle(&Event::new("emit.start", json!({})).unwrap())
        .await
        .unwrap();
    let published: Vec<u64> = bus
        .0
        .events()
        .iter()
        .map(|e| e.payload["n"].as_u64().unwrap())
        .collect();
    assert_eq!(
        published,
        vec![1, 3],
        "the rest of the outbox flows, in order"
    );
    let parked = manager.parked(10).await.unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].event.payload["n"], 2);
    assert_eq!(parked[0].source, "saga:emits3");
    assert_eq!(manager.parked_count().await.unwrap(), 1);
    use super::SagaStore;
    assert!(
        store.pending_outbox("emits3", 10).await.unwrap().is_empty(),
        "nothing is left in the outbox"
    );
    assert_eq!(manager.flush_outbox().await.unwrap(), 0);
}
