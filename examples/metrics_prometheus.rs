//! Example: eventflow's metrics (see `eventflow::metrics` for names and labels) exported in the
//! Prometheus text format with `metrics-exporter-prometheus`.
//!
//! eventflow records through the `metrics` facade and forces no exporter: the application
//! installs one. Here a recorder is installed, a small checkout runs in memory (store -> relay
//! -> bus -> saga, and a projection that parks an event it cannot handle), and the scrape page
//! is printed; the example then exits. A service would serve the page instead, with the
//! exporter's `http-listener` feature:
//! `PrometheusBuilder::new().with_http_listener(([0, 0, 0, 0], 9000)).install()?`.
//!
//! Run it with:
//!
//! ```text
//! cargo run -p eventflow-examples --example metrics_prometheus
//! ```
#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::Duration;

use eventflow::projection::{FailurePolicy, Projection, ProjectionRunner};
use eventflow::saga::{InMemorySagaStore, Saga, SagaContext, SagaManager};
use eventflow::store::memory::InMemoryCheckpointStore;
use eventflow::{
    BoxError, Event, EventStore, ExpectedVersion, FeedOptions, HandlerResult, InMemoryBus,
    InMemoryEventStore, WithBus, async_trait,
};
use metrics_exporter_prometheus::PrometheusBuilder;
use serde_json::json;

struct Checkout;

impl Saga for Checkout {
    type State = serde_json::Value;
    fn name(&self) -> &str {
        "checkout"
    }
    fn starts_on(&self) -> Vec<String> {
        vec!["checkout.started".into()]
    }
    fn handles(&self) -> Vec<String> {
        vec!["payment.failed".into(), "payment.succeeded".into()]
    }
    fn handle(
        &self,
        state: &mut serde_json::Value,
        event: &Event,
        ctx: &mut SagaContext,
    ) -> Result<(), BoxError> {
        if event.event_type != "checkout.started" {
            ctx.complete();
        }
        *state = json!({ "last": event.event_type });
        Ok(())
    }
}

/// A read model that cannot take failed payments yet: they are parked.
struct Orders;

#[async_trait]
impl Projection for Orders {
    fn name(&self) -> &str {
        "orders"
    }
    async fn handle(&self, event: &Event) -> HandlerResult {
        if event.event_type == "payment.failed" {
            return Err("no refund column yet".into());
        }
        Ok(())
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let prometheus = PrometheusBuilder::new().install_recorder()?;
    eventflow::metrics::describe();

    let bus = InMemoryBus::new();
    let store = InMemoryEventStore::new().with_bus(bus.clone());
    let manager = Arc::new(SagaManager::new(
        Checkout,
        Arc::new(InMemorySagaStore::new()),
    )?);
    let _saga = manager
        .subscribe_with(&bus, FeedOptions::new().allow_at_most_once())
        .await?;
    for (order, outcome) in [("o1", "payment.succeeded"), ("o2", "payment.failed")] {
        let started = Event::new("checkout.started", json!({ "order_id": order }))?
            .with_correlation(format!("checkout-{order}"));
        let paid = Event::new(outcome, json!({ "order_id": order }))?.caused_by(&started);
        store
            .append(
                &format!("order-{order}"),
                ExpectedVersion::NoStream,
                started,
            )
            .await?;
        store
            .append(&format!("payment-{order}"), ExpectedVersion::NoStream, paid)
            .await?;
    }
    store.flush(Duration::from_secs(5)).await?;
    let runner = ProjectionRunner::new(
        Arc::new(store.store().clone()),
        Arc::new(InMemoryCheckpointStore::new()),
        Orders,
    )?
    .failure_policy(FailurePolicy::Park);
    runner.catch_up().await?;

    // What a Prometheus scrape of this process would read.
    let page = prometheus.render();
    print!("{page}");
    for name in eventflow::metrics::ALL {
        if !page.contains(name) {
            println!("(not recorded in this run: {name})");
        }
    }
    Ok(())
}
