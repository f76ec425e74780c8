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
