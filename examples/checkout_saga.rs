//! Example: the checkout saga from the Go package's README, as a process manager.
//!
//! `checkout.started` -> `inventory.reserve` -> (inventory service) `inventory.reserved` ->
//! `payment.process` -> (payment service) `payment.succeeded` -> `order.confirmed`, or
//! `payment.failed` -> compensation `inventory.release` + `order.cancelled`; and when the
//! payment service never answers, a deadline fires `checkout.timed_out` -> the same
//! compensation.
//!
//! Shows: the `Saga` trait (starting and handled event types, serde state per correlation id),
//! `SagaManager` subscribed to a bus, emitted events carrying the correlation id and the
//! triggering event's id as causation, completion, and a deadline fired by the manager's timer.
//! Everything runs in memory.
//!
//! Run it with:
//!
//! ```text
//! cargo run -p eventflow-examples --example checkout_saga
//! ```
//!
//! With PostgreSQL and NATS, only the construction changes: keep the state in
//! `eventflow::postgres::PostgresSagaStore::for_store(&pg_store)` (feature `postgres`), so
//! instances and deadlines survive a restart, and pass a `NatsBus` (feature `nats`) to
//! `with_bus` and `subscribe`.
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::Duration;

use eventflow::bus::memory::InMemoryBus;
use eventflow::saga::{InMemorySagaStore, Saga, SagaContext, SagaManager};
use eventflow::{BoxError, Event, EventBus, EventBusExt};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// The checkout process manager.
struct CheckoutSaga {
    payment_timeout: Duration,
}

/// Its state per checkout (correlation id).
#[derive(Debug, Default, Serialize, Deserialize)]
struct Checkout {
    order_id: String,
    amount_cents: i64,
    step: String,
}

impl Saga for CheckoutSaga {
    type State = Checkout;

    fn name(&self) -> &str {
        "checkout"
    }

    fn starts_on(&self) -> Vec<String> {
        vec!["checkout.started".into()]
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

    fn handle(
        &self,
        state: &mut Checkout,
        event: &Event,
        ctx: &mut SagaContext,
    ) -> Result<(), BoxError> {
        match event.event_type.as_str() {
            "checkout.started" => {
                state.order_id = event.payload["order_id"]
                    .as_str()
                    .ok_or("no order_id")?
                    .into();
                state.amount_cents = event.payload["amount_cents"].as_i64().unwrap_or(0);
                state.step = "reserving".into();
                ctx.emit_new("inventory.reserve", json!({ "order_id": state.order_id }))?;
                // If the whole checkout is not done in time, compensate.
                ctx.set_deadline(
                    "checkout",
                    self.payment_timeout,
                    Event::new("checkout.timed_out", json!({ "order_id": state.order_id }))?,
                );
            }
            "inventory.reserved" => {
                state.step = "paying".into();
                ctx.emit_new(
                    "payment.process",
                    json!({ "order_id": state.order_id, "amount_cents": state.amount_cents }),
                )?;
            }
            "payment.succeeded" => {
                state.step = "confirmed".into();
                ctx.emit_new("order.confirmed", json!({ "order_id": state.order_id }))?;
                ctx.complete();
            }
            "payment.failed" | "checkout.timed_out" => {
                let reason = if event.event_type == "payment.failed" {
                    "payment failed"
                } else {
                    "timed out"
                };
                state.step = format!("cancelled ({reason})");
                // Compensation: give the reserved stock back.
                ctx.emit_new("inventory.release", json!({ "order_id": state.order_id }))?;
                ctx.emit_new(
                    "order.cancelled",
                    json!({ "order_id": state.order_id, "reason": reason }),
                )?;
                ctx.complete();
            }
            _ => {}
        }
        Ok(())
    }
}

/// Replies to `request` with `reply_type`, caused by it (same correlation id).
async fn reply(bus: &InMemoryBus, request: &Event, reply_type: &str) -> Result<(), BoxError> {
    let reply = Event::new(reply_type, request.payload.clone())?.caused_by(request);
    bus.publish(reply).await?;
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let bus = Arc::new(InMemoryBus::builder().async_dispatch(256).build());

    // Print every event with its correlation and causation (ids shortened to their last 8
    // characters: UUID v7 ids start with a timestamp, so their heads look alike).
    bus.on("*", |event: Arc<Event>| async move {
        let tail = |s: &str| s[s.len().saturating_sub(8)..].to_owned();
        let short = |s: &Option<String>| s.as_deref().map(tail).unwrap_or_else(|| "-".into());
        println!(
            "  {:<22} correlation {:<10} causation {:<8} id {}",
            event.event_type,
            event.correlation_id.as_deref().unwrap_or("-"),
            short(&event.causation_id),
            tail(&event.id.to_string()),
        );
        Ok(())
    })
    .await?
    .detach();

    // The inventory service reserves anything.
    let inventory = bus.clone();
    bus.on("inventory.reserve", move |event: Arc<Event>| {
        let bus = inventory.clone();
        async move { reply(&bus, &event, "inventory.reserved").await }
    })
    .await?
    .detach();

    // The payment service accepts up to 100.00, declines more, and never answers for o-3.
    let payments = bus.clone();
    bus.on("payment.process", move |event: Arc<Event>| {
        let bus = payments.clone();
        async move {
            if event.payload["order_id"] == "o-3" {
                return Ok(()); // lost in the network: the saga's deadline will fire
            }
            let outcome = if event.payload["amount_cents"].as_i64().unwrap_or(0) <= 10_000 {
                "payment.succeeded"
            } else {
                "payment.failed"
            };
            reply(&bus, &event, outcome).await
        }
    })
    .await?
    .detach();

    let manager = Arc::new(
        SagaManager::new(
            CheckoutSaga {
                payment_timeout: Duration::from_millis(300),
            },
            Arc::new(InMemorySagaStore::new()),
        )?
        .with_bus(bus.clone()),
    );
    // The in-memory bus delivers at most once (in process); a service on a durable bus
    // (JetStream, Redis Streams) calls `manager.subscribe(bus)` without the opt-in.
    let _subscription = manager
        .subscribe_with(
            bus.as_ref(),
            eventflow::FeedOptions::new().allow_at_most_once(),
        )
        .await?;
    let _timer = manager.start_timer(Duration::from_millis(50));

    for (order_id, amount_cents) in [("o-1", 4_200), ("o-2", 25_000), ("o-3", 1_000)] {
        println!("checkout {order_id} ({amount_cents} cents):");
        let correlation = format!("checkout-{order_id}");
        let started = Event::new(
            "checkout.started",
            json!({ "order_id": order_id, "amount_cents": amount_cents }),
        )?
        .with_correlation(correlation.clone());
        bus.publish(started).await?;
        // Wait until this checkout's saga completes (bounded).
        let done = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let Some((state, true)) = manager.instance(&correlation).await? {
                    return Ok::<_, eventflow::Error>(state);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await??;
        // Let the last published events reach the printer.
        tokio::time::sleep(Duration::from_millis(20)).await;
        println!("  => {}: {}\n", done.order_id, done.step);
    }
    bus.close().await?;
    Ok(())
}
