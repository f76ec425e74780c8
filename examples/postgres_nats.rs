//! Example: the PostgreSQL event store relayed to NATS JetStream (the transactional outbox).
//!
//! Events are committed to PostgreSQL only. A [`Relay`] follows the store in commit order from a
//! checkpoint kept in the same database and publishes every committed event to a [`NatsBus`] in
//! JetStream mode; a durable subscriber (standing in for a projection in another service)
//! receives them. Killing the process at any point loses nothing: the relay resumes from its
//! checkpoint and the durable consumer from its last ack (duplicates are possible, loss is not).
//!
//! Needs PostgreSQL and NATS with JetStream on loopback (or `DATABASE_URL` / `NATS_URL`):
//!
//! ```text
//! cargo run -p eventflow-examples --features postgres,nats --example postgres_nats
//! ```
#![allow(clippy::print_stdout)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use eventflow::bus::nats::{NatsBus, NatsConfig};
use eventflow::postgres::PostgresEventStore;
use eventflow::relay::Relay;
use eventflow::{Event, EventBus, EventStore, ExpectedVersion, SubscriptionOptions, sync_handler};
use serde_json::json;
use tokio::sync::mpsc;

#[tokio::main]
async fn main() -> eventflow::Result<()> {
    let database_url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let nats_url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());

    // The store: events are committed here and nowhere else.
    let store = PostgresEventStore::connect(&database_url).await?;
    store.migrate().await?;

    // The bus: JetStream, so a subscriber that is down meanwhile still gets every event.
    let mut config = NatsConfig::jetstream(nats_url);
    config.subject_prefix = "example".into();
    config.stream_name = "EVENTFLOW_EXAMPLE".into();
    config.max_age = Duration::from_secs(3600); // an example should not keep data for ever
    let bus = NatsBus::connect(config).await?;

    // A subscriber in "another service": named, so its durable consumer (the name) resumes
    // after a restart; an unnamed subscription would start at new events each time.
    let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
    let _orders = bus
        .subscribe_with(
            &["order.*"],
            SubscriptionOptions::named("example-projection"),
            Arc::new(sync_handler(move |event: &Event| {
                let _ = tx.send(event.clone());
                Ok(())
            })),
        )
        .await?;

    // The relay: store -> bus, checkpointed in the store's own database.
    let relay = Relay::new(
        Arc::new(store.clone()),
        Arc::new(bus.clone()) as Arc<dyn EventBus>,
        Arc::new(store.checkpoints()),
    )
    .name("example-postgres-nats")
    .spawn();

    // Commit an order's history. No publish call: the relay does it.
    let placed = Event::new("order.placed", json!({ "items": 3, "total": 4200 }))?
        .with_correlation("checkout-1")
        .with_source("example");
    let order = format!("order-{}", placed.id);
    let paid = Event::new("order.paid", json!({ "amount": 4200 }))?.caused_by(&placed);
    let shipped = Event::new("order.shipped", json!({ "carrier": "post" }))?.caused_by(&paid);
    let committed = store
        .append_batch(
            &order,
            ExpectedVersion::NoStream,
            vec![placed, paid, shipped],
        )
        .await?;
    println!("committed {} events to stream {order}", committed.len());

    // Wait until the subscriber saw ours (a fresh run may first relay older events).
    let mut waiting: HashSet<_> = committed.iter().map(|e| e.id).collect();
    while !waiting.is_empty() {
        match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
            Ok(Some(event)) => {
                if waiting.remove(&event.id) {
                    println!(
                        "subscriber got {:<14} v{} of {} (position {:?}, correlation {:?})",
                        event.event_type,
                        event.stream_version.unwrap_or_default(),
                        event.stream_id.as_deref().unwrap_or("?"),
                        event.position,
                        event.correlation_id,
                    );
                }
            }
            _ => {
                return Err(eventflow::Error::Timeout {
                    operation: "waiting for the relayed events",
                    after: Duration::from_secs(30),
                });
            }
        }
    }

    // The checkpoint moves once the bus accepted the batch (it may trail the subscriber).
    if let Some(last) = committed.last().and_then(|e| e.position) {
        relay.wait_for(last, Duration::from_secs(10)).await?;
    }
    let status = relay.status().await?;
    println!(
        "relay at position {} (head {}, lag {}); NATS {}",
        status.position,
        status.head,
        status.lag,
        bus.status()
    );
    relay.stop().await;
    bus.close().await?;
    Ok(())
}
