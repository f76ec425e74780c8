//! Example: an order summary read model (CQRS query side) built by a projection over the
//! in-memory event store, followed live, then rebuilt from scratch.
//!
//! Shows: the `Projection` trait (name, patterns, handler, reset hook), `ProjectionRunner`
//! catching up from its checkpoint in batches and following new commits, `status()` (position
//! and lag), and `rebuild()` giving the same read model from zero.
//!
//! Run it with:
//!
//! ```text
//! cargo run -p eventflow-examples --example projections
//! ```
//!
//! On PostgreSQL, write the read model in the runner's transaction instead
//! (`eventflow::postgres::{PgProjection, projection_runner}`, feature `postgres`) so a crash
//! never applies an event twice.
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eventflow::projection::{Projection, ProjectionRunner};
use eventflow::store::memory::{InMemoryCheckpointStore, InMemoryEventStore};
use eventflow::{Event, EventStore, ExpectedVersion, HandlerResult};
use serde_json::json;

/// One row of the read model.
#[derive(Debug, Clone, Default, PartialEq)]
struct OrderSummary {
    customer: String,
    items: u32,
    total_cents: i64,
    status: &'static str,
}

/// The read model: order id -> summary.
#[derive(Default)]
struct OrderSummaries {
    rows: Mutex<BTreeMap<String, OrderSummary>>,
}

impl OrderSummaries {
    fn snapshot(&self) -> BTreeMap<String, OrderSummary> {
        self.rows.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

#[eventflow::async_trait]
impl Projection for OrderSummaries {
    fn name(&self) -> &str {
        "order-summaries"
    }

    fn patterns(&self) -> Vec<String> {
        vec!["order.*".into()]
    }

    async fn handle(&self, event: &Event) -> HandlerResult {
        let order_id = event.payload["order_id"]
            .as_str()
            .ok_or("order event without order_id")?
            .to_owned();
        let mut rows = self.rows.lock().map_err(|_| "read model lock poisoned")?;
        let row = rows.entry(order_id).or_default();
        match event.event_type.as_str() {
            "order.created" => {
                row.customer = event.payload["customer"].as_str().unwrap_or("").to_owned();
                row.status = "open";
            }
            "order.item_added" => {
                row.items += 1;
                row.total_cents += event.payload["price_cents"].as_i64().unwrap_or(0);
            }
            "order.paid" => row.status = "paid",
            "order.shipped" => row.status = "shipped",
            _ => {}
        }
        Ok(())
    }

    async fn reset(&self) -> HandlerResult {
        self.rows
            .lock()
            .map_err(|_| "read model lock poisoned")?
            .clear();
        Ok(())
    }
}

async fn place_order(
    store: &InMemoryEventStore,
    order_id: &str,
    customer: &str,
    prices: &[i64],
) -> eventflow::Result<()> {
    let mut events = vec![Event::new(
        "order.created",
        json!({ "order_id": order_id, "customer": customer }),
    )?];
    for price in prices {
        events.push(Event::new(
            "order.item_added",
            json!({ "order_id": order_id, "price_cents": price }),
        )?);
    }
    store
        .append_batch(
            &format!("order-{order_id}"),
            ExpectedVersion::NoStream,
            events,
        )
        .await?;
    Ok(())
}

async fn set_status(
    store: &InMemoryEventStore,
    order_id: &str,
    event_type: &str,
) -> eventflow::Result<()> {
    let stream = format!("order-{order_id}");
    let version = store.stream_version(&stream).await?;
    let event = Event::new(event_type, json!({ "order_id": order_id }))?;
    store
        .append(&stream, ExpectedVersion::Exact(version), event)
        .await?;
    Ok(())
}

fn print_summaries(title: &str, rows: &BTreeMap<String, OrderSummary>) {
    println!("{title}");
    for (id, row) in rows {
        println!(
            "  {id:<6} {:<8} {} item(s) {:>8.2}  {}",
            row.customer,
            row.items,
            row.total_cents as f64 / 100.0,
            row.status
        );
    }
}

#[tokio::main]
async fn main() -> eventflow::Result<()> {
    let store = Arc::new(InMemoryEventStore::new());
    // History written before the read model existed.
    place_order(&store, "o-1", "ada", &[1250, 899]).await?;
    place_order(&store, "o-2", "grace", &[4200]).await?;
    set_status(&store, "o-1", "order.paid").await?;
    store
        .append(
            "audit",
            ExpectedVersion::Any,
            Event::new("audit.login", json!({ "user": "ada" }))?,
        )
        .await?;

    let summaries = Arc::new(OrderSummaries::default());
    let runner = ProjectionRunner::new(
        store.clone(),
        Arc::new(InMemoryCheckpointStore::new()),
        summaries.clone(),
    )?
    .batch_size(2);
    let status = runner.status().await?;
    println!(
        "before start: position {} lag {}",
        status.position, status.lag
    );

    // Catch up in batches of 2 from the checkpoint, then follow live.
    let task = runner.start();
    runner.wait_caught_up(Duration::from_secs(5)).await?;
    print_summaries("caught up:", &summaries.snapshot());

    // New commits reach the read model without polling by the caller.
    place_order(&store, "o-3", "linus", &[300, 300, 300]).await?;
    set_status(&store, "o-1", "order.shipped").await?;
    runner.wait_caught_up(Duration::from_secs(5)).await?;
    let live = summaries.snapshot();
    print_summaries("live:", &live);
    let status = runner.status().await?;
    println!(
        "status: position {} head {} lag {} ({:?})",
        status.position, status.head, status.lag, status.state
    );
    task.stop().await;

    // Throw the read model away and rebuild it from the first event.
    runner.rebuild().await?;
    let rebuilt = summaries.snapshot();
    print_summaries("rebuilt from scratch:", &rebuilt);
    assert_eq!(rebuilt, live, "a rebuild gives the same read model");
    println!("rebuild matches the live read model");
    Ok(())
}
