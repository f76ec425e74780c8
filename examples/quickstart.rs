//! Quickstart: the in-memory bus and store, no services needed.
//!
//! Shows publishing and subscribing with wildcard patterns (`*`, `order.*`, `order.>`), a
//! panicking handler that does not take the bus down, the async bus, appending to and loading a
//! stream with optimistic concurrency, and correlation/causation across events.
//!
//! Run it with:
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! Durable mode: `cargo run --example quickstart -- --db events.db` keeps the store in a SQLite
//! file (created if missing; feature `sqlite`, on by default in the examples), so its events
//! are still there on the next run.
#![allow(clippy::print_stdout)]

use std::sync::Arc;

use eventflow::bus::memory::InMemoryBus;
use eventflow::store::memory::InMemoryEventStore;
use eventflow::{
    Event, EventBus, EventBusExt, EventCriteria, EventStore, ExpectedVersion, Metadata,
    event_types, sync_handler,
};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // --- The bus: publish and subscribe by pattern -------------------------------------------
    let bus = InMemoryBus::new(); // synchronous: handlers have run when publish returns

    let _all = bus
        .on(
            "*",
            sync_handler(|e| {
                println!("[*]        {:<22} {}", e.event_type, e.payload);
                Ok(())
            }),
        )
        .await?;
    let _orders = bus
        .on(
            "order.*",
            sync_handler(|e| {
                println!("[order.*]  {}", e.event_type);
                Ok(())
            }),
        )
        .await?;
    let _deep = bus
        .on(
            "order.>",
            sync_handler(|e| {
                println!("[order.>]  {}", e.event_type);
                Ok(())
            }),
        )
        .await?;
    // Keep the demo's output short: the default panic hook would print a backtrace.
    std::panic::set_hook(Box::new(|info| println!("[panic]    {info}")));
    // A handler that panics is caught and reported on the error stream; others still run.
    let _faulty = bus
        .on(
            "order.cancelled",
            sync_handler(|_| panic!("this handler is broken")),
        )
        .await?;
    let mut errors = bus.errors();

    println!("-- publish");
    bus.publish(Event::new(
        "order.created",
        json!({ "order_id": "o-1", "total": 42 }),
    )?)
    .await?;
    bus.publish(Event::new("order.line.added", json!({ "sku": "tea" }))?)
        .await?;
    bus.publish(Event::new(
        event_types::USER_CREATED,
        json!({ "email": "a@example.com" }),
    )?)
    .await?;
    bus.publish(Event::new("order.cancelled", json!({ "order_id": "o-1" }))?)
        .await?;
    let failure = errors.recv().await?;
    println!("-- error stream: {failure}");

    // Bad names never reach a subscriber.
    match Event::new("Order Created", json!({})) {
        Err(e) => println!("-- rejected: {e}"),
        Ok(_) => unreachable!("an invalid event type is rejected"),
    }

    // --- The async bus: a bounded buffer, per-subscriber order, close() drains -----------------
    let async_bus = InMemoryBus::builder().async_dispatch(100).build();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    async_bus
        .on("tick", move |e: Arc<Event>| {
            let tx = tx.clone();
            async move {
                tx.send(e.payload["n"].as_i64())?;
                Ok(())
            }
        })
        .await?
        .detach();
    for n in 0..5 {
        async_bus
            .publish(Event::new("tick", json!({ "n": n }))?)
            .await?;
    }
    async_bus.close().await?; // delivers everything already accepted
    let mut ticks = Vec::new();
    while let Ok(n) = rx.try_recv() {
        ticks.extend(n);
    }
    println!("-- async bus delivered, in order: {ticks:?}");

    // --- The store: streams, optimistic concurrency, correlation and causation ---------------
    let store = open_store().await?;
    // In durable mode the stream already holds the events of earlier runs: append after them.
    let version = store.stream_version("order-o-1").await?;
    let expected = match version {
        0 => ExpectedVersion::NoStream,
        v => ExpectedVersion::Exact(v),
    };
    let placed = Event::new("order.placed", json!({ "order_id": "o-1" }))?
        .with_metadata(Metadata::default().tenant("acme").user("u-7"))
        .with_correlation("checkout-1")
        .with_source("order-service");
    let paid = Event::new(event_types::PAYMENT_RECEIVED, json!({ "amount": 42 }))?
        .caused_by(&placed)
        .with_source("billing");
    let recorded = store
        .append_batch("order-o-1", expected, vec![placed, paid])
        .await?;
    println!("-- appended {} events to order-o-1", recorded.len());

    // A writer that read an old version loses, with a typed error.
    let late = Event::new("order.shipped", json!({}))?;
    match store
        .append("order-o-1", ExpectedVersion::Exact(version + 1), late)
        .await
    {
        Err(e) => println!("-- conflict: {e}"),
        Ok(_) => unreachable!("the stream is at version {}", version + 2),
    }

    for e in store.load_stream("order-o-1", 0).await? {
        println!(
            "-- order-o-1 v{} {:<18} correlation={} causation={}",
            e.stream_version.unwrap_or_default(),
            e.event_type,
            e.correlation_id.as_deref().unwrap_or("-"),
            e.causation_id.as_deref().unwrap_or("-"),
        );
    }
    let same_request = store
        .load(&EventCriteria::default().correlation_id("checkout-1"))
        .await?;
    println!(
        "-- {} events share correlation id checkout-1",
        same_request.len()
    );
    println!(
        "-- the store holds {} events in total",
        store.read_all(0, usize::MAX).await?.len()
    );
    bus.close().await?;
    Ok(())
}

/// The in-memory store, or with `--db <file>` a SQLite file that keeps the events across runs.
async fn open_store() -> Result<Arc<dyn EventStore>, Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let db = match (args.next().as_deref(), args.next()) {
        (None, _) => None,
        (Some("--db"), Some(path)) => Some(path),
        _ => return Err("usage: quickstart [--db <file>]".into()),
    };
    match db {
        None => Ok(Arc::new(InMemoryEventStore::new())),
        Some(path) => durable(&path).await,
    }
}

#[cfg(feature = "sqlite")]
async fn durable(path: &str) -> Result<Arc<dyn EventStore>, Box<dyn std::error::Error>> {
    let store = eventflow::sqlite::SqliteEventStore::open(path).await?;
    println!(
        "-- durable mode: {path} holds {} events from earlier runs",
        store.head_position().await?
    );
    Ok(Arc::new(store))
}

#[cfg(not(feature = "sqlite"))]
async fn durable(_path: &str) -> Result<Arc<dyn EventStore>, Box<dyn std::error::Error>> {
    Err("--db needs the examples' `sqlite` feature (on by default)".into())
}
