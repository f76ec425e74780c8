//! The outbox pattern for a service that is not event-sourced: it keeps customers in a plain
//! table, and writes each customer row and the `customer.registered` event announcing it in
//! one transaction ([`PostgresEventStore::append_in`]). The relay publishes the event once
//! the transaction commits; a rolled-back registration leaves neither the row nor the event.
//!
//! Needs only a PostgreSQL server: run it with
//! `DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo run -p eventflow-examples --features postgres --example outbox`.
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use eventflow::bus::memory::InMemoryBus;
use eventflow::postgres::{PgPool, PostgresConfig, PostgresEventStore};
use eventflow::{Event, EventBus, ExpectedVersion, WithBus, sync_handler};
use serde_json::json;

/// Registers a customer: the row and its event commit together, or neither does.
async fn register(
    store: &PostgresEventStore,
    id: &str,
    name: &str,
    fail_after_append: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut tx = store.pool().begin().await?;
    sqlx::query(&format!(
        "INSERT INTO {}.customers (id, name) VALUES ($1, $2)",
        store.schema()
    ))
    .bind(id)
    .bind(name)
    .execute(&mut *tx)
    .await?;
    let registered = Event::new("customer.registered", json!({ "id": id, "name": name }))?;
    store
        .append_in(
            &mut tx,
            &format!("customer-{id}"),
            ExpectedVersion::NoStream,
            registered,
        )
        .await?;
    if fail_after_append {
        // Something later in the same unit of work fails: dropping `tx` rolls back both.
        return Err("payment check failed".into());
    }
    tx.commit().await?;
    Ok(())
}

async fn customers(pool: &PgPool, schema: &str) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(&format!(
        "SELECT name FROM {schema}.customers ORDER BY name"
    ))
    .fetch_all(pool)
    .await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
    let mut config = PostgresConfig::new(url);
    config.schema = format!("eventflow_outbox_{nanos}");
    let store = PostgresEventStore::connect_with(config).await?;
    store.migrate().await?;
    let schema = store.schema().to_owned();
    sqlx::query(&format!(
        "CREATE TABLE {schema}.customers (id text PRIMARY KEY, name text NOT NULL)"
    ))
    .execute(store.pool())
    .await?;

    // The relay publishes every committed event to the bus (here in memory; NATS or Redis in
    // production), at least once and in commit order.
    let bus = Arc::new(InMemoryBus::new());
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let _printer = bus
        .subscribe(
            "customer.*",
            Arc::new(sync_handler(move |event| {
                println!("bus: {} {}", event.event_type, event.payload);
                let _ = seen_tx.send(event.payload["id"].as_str().map(str::to_owned));
                Ok(())
            })),
        )
        .await?;
    let relayed = store.clone().with_bus(bus.clone());

    register(&store, "c-1", "Ada", false).await?;
    let failed = register(&store, "c-2", "Grace", true).await;
    println!("registering Grace: {failed:?}");
    register(&store, "c-3", "Alan", false).await?;

    let mut published = Vec::new();
    while published.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(10), seen.recv()).await {
            Ok(Some(Some(id))) => published.push(id),
            _ => return Err("the relay did not publish both registrations".into()),
        }
    }
    let rows = customers(store.pool(), &schema).await?;
    println!("customers: {rows:?}, published: {published:?}");
    assert_eq!(rows, vec!["Ada", "Alan"]);
    assert_eq!(published, vec!["c-1", "c-3"]);

    drop(relayed);
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(store.pool())
        .await?;
    Ok(())
}
