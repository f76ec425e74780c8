//! Metrics: a test recorder (metrics-util's `DebuggingRecorder`, installed for this whole test
//! binary, which is why it is a binary of its own) sees every metric that `eventflow::metrics`
//! documents move in one run of the checkout flow: in memory (store, relay, saga, a projection
//! whose handler fails and parks), on PostgreSQL with a relay to a private NATS server that
//! refuses an oversized event (parked, dead-lettered), and across that server's restart (a
//! reconnect).
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use eventflow::bus::BusErrorKind;
use eventflow::bus::nats::{NatsBus, NatsConfig};
use eventflow::lease::{LeaseStore, MemoryLeaseStore};
use eventflow::metrics;
use eventflow::postgres::{PgPoolOptions, PostgresEventStore};
use eventflow::projection::{
    FailurePolicy, PartitionedOptions, PartitionedRunner, Projection, ProjectionRunner,
};
use eventflow::saga::{InMemorySagaStore, Saga, SagaContext, SagaManager};
use eventflow::store::InMemoryDeadLetterStore;
use eventflow::store::memory::InMemoryCheckpointStore;
use eventflow::{
    BoxError, Event, EventBus, EventStore, ExpectedVersion, FeedOptions, HandlerResult,
    InMemoryBus, InMemoryEventStore, WithBus, async_trait,
};
use eventflow_tests::nats_server::NatsServer;
use eventflow_tests::{database_url, service_unavailable, unique};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(20);

/// The checkout process manager, reduced: it starts on `checkout.started`, compensates on
/// `payment.failed`.
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
        vec!["payment.failed".into()]
    }
    fn handle(
        &self,
        state: &mut serde_json::Value,
        event: &Event,
        ctx: &mut SagaContext,
    ) -> Result<(), BoxError> {
        if event.event_type == "payment.failed" {
            ctx.complete();
        }
        *state = json!({ "last": event.event_type });
        Ok(())
    }
}

/// A read model whose handler cannot take a failed payment (parked under `orders`).
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

/// A read model that takes every event, run partitioned.
struct Ledger;

#[async_trait]
impl Projection for Ledger {
    fn name(&self) -> &str {
        "ledger"
    }
    async fn handle(&self, _event: &Event) -> HandlerResult {
        Ok(())
    }
}

/// Every metric's values by name: counters summed over labels, gauges and histograms as the
/// number of label sets that recorded something.
fn moved(snapshotter: &Snapshotter) -> HashMap<String, Vec<(Vec<String>, String)>> {
    let mut by_name: HashMap<String, Vec<(Vec<String>, String)>> = HashMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let labels = key
            .key()
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        let shown = match value {
            DebugValue::Counter(n) if n > 0 => format!("counter {n}"),
            DebugValue::Gauge(g) => format!("gauge {}", g.into_inner()),
            DebugValue::Histogram(h) if !h.is_empty() => format!("histogram {}", h.len()),
            _ => continue,
        };
        by_name
            .entry(key.key().name().to_owned())
            .or_default()
            .push((labels, shown));
    }
    by_name
}

fn has(seen: &HashMap<String, Vec<(Vec<String>, String)>>, name: &str, label: &str) -> bool {
    seen.get(name).is_some_and(|v| {
        v.iter()
            .any(|(labels, _)| labels.iter().any(|l| l == label))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_metric_moves_in_a_checkout_run() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();
    metrics::describe();

    // In memory: store -> relay -> bus -> saga; a projection parks what it cannot handle.
    let bus = InMemoryBus::new();
    let store = InMemoryEventStore::new().with_bus(bus.clone());
    let manager = Arc::new(SagaManager::new(Checkout, Arc::new(InMemorySagaStore::new())).unwrap());
    let _saga = manager
        .subscribe_with(&bus, FeedOptions::new().allow_at_most_once())
        .await
        .unwrap();
    let started = Event::new("checkout.started", json!({ "order_id": "o1" }))
        .unwrap()
        .with_correlation("c1");
    let failed = Event::new("payment.failed", json!({}))
        .unwrap()
        .caused_by(&started);
    store
        .append("order-o1", ExpectedVersion::NoStream, started)
        .await
        .unwrap();
    store
        .append("payment-o1", ExpectedVersion::NoStream, failed)
        .await
        .unwrap();
    store.flush(WAIT).await.unwrap();
    let runner = ProjectionRunner::new(
        Arc::new(store.store().clone()),
        Arc::new(InMemoryCheckpointStore::new()),
        Orders,
    )
    .unwrap()
    .failure_policy(FailurePolicy::Park)
    .dead_letters(Arc::new(InMemoryDeadLetterStore::new()));
    runner.catch_up().await.unwrap();
    assert_eq!(runner.status().await.unwrap().parked, 1);
    let deadline = tokio::time::Instant::now() + WAIT;
    while !manager
        .instance("c1")
        .await
        .unwrap()
        .is_some_and(|(_, done)| done)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the saga never completed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // A partitioned projection: a lag gauge per partition; its worker holds both partition
    // leases, and finds one lost when it is released behind its back (then claims it again,
    // at the next epoch).
    let leases = MemoryLeaseStore::new();
    let partitioned = PartitionedRunner::new(
        Arc::new(store.store().clone()),
        Arc::new(InMemoryCheckpointStore::shared_with(&leases)),
        Arc::new(leases.clone()),
        Ledger,
        PartitionedOptions::default()
            .partitions(2)
            .lease_ttl(Duration::from_secs(3)),
    )
    .unwrap();
    let _worker = partitioned.start();
    let head = store.store().head_position().await.unwrap();
    partitioned.wait_for(head, WAIT).await.unwrap();
    let taken = leases.list(Some("projection:ledger")).await.unwrap();
    assert_eq!(taken.len(), 2);
    assert!(leases.release(&taken[0]).await.unwrap());
    let deadline = tokio::time::Instant::now() + WAIT;
    while leases.list(Some("projection:ledger")).await.unwrap()[0].epoch == taken[0].epoch {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker never claimed its lost lease again"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // PostgreSQL, relayed to a private NATS server that refuses events over 1 KiB: the
    // oversized one is parked by the relay (a dead letter), the small one published.
    let nats = {
        use std::io::Write;
        let mut conf = tempfile::NamedTempFile::new().unwrap();
        writeln!(conf, "max_payload: 1024").unwrap();
        let path = conf.path().to_str().unwrap().to_owned();
        (NatsServer::start_with(&["-c", &path]), conf)
    };
    let mut server = nats.0;
    let mut config = NatsConfig::new(server.url());
    config.subject_prefix = unique("metrics");
    config.reconnect_wait = Duration::from_millis(100);
    let nats_bus = NatsBus::connect(config)
        .await
        .unwrap_or_else(|e| service_unavailable("NATS", &server.url(), e));
    let url = database_url();
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await
        .unwrap_or_else(|e| service_unavailable("PostgreSQL", &url, e));
    let pg = PostgresEventStore::builder(pool)
        .schema(unique("metrics"))
        .poll_interval(Duration::from_millis(100))
        .build()
        .unwrap();
    pg.migrate().await.unwrap();
    let pg = pg.with_bus(nats_bus.clone());
    let big = Event::new("checkout.started", json!({ "pad": "x".repeat(4096) })).unwrap();
    let small = Event::new("checkout.started", json!({ "order_id": "o2" })).unwrap();
    pg.append("order-o2", ExpectedVersion::NoStream, big)
        .await
        .unwrap();
    pg.append("order-o3", ExpectedVersion::NoStream, small)
        .await
        .unwrap();
    pg.flush(WAIT).await.unwrap();
    assert_eq!(pg.relay_status().await.unwrap().parked, 1);

    // The server restarts: the bus reconnects. (Waited for on the bus's error stream: a
    // snapshot drains the recorder's histograms, so only one is taken, at the end.)
    let mut errors = nats_bus.errors();
    server.restart();
    tokio::time::timeout(WAIT, async {
        while errors.recv().await.unwrap().kind != BusErrorKind::Reconnected {}
    })
    .await
    .expect("no reconnect reported");

    let seen = moved(&snapshotter);
    for name in metrics::ALL {
        assert!(
            seen.contains_key(name),
            "{name} never moved; seen: {seen:#?}"
        );
    }
    for (name, label) in [
        (metrics::STORE_APPEND_SECONDS, "store=memory"),
        (metrics::STORE_APPEND_SECONDS, "store=postgres"),
        (metrics::STORE_APPENDED_EVENTS, "store=memory"),
        (metrics::STORE_APPENDED_EVENTS, "store=postgres"),
        (metrics::RELAY_PUBLISHED_EVENTS, "relay=relay"),
        (metrics::RELAY_LAG_SECONDS, "relay=relay"),
        (metrics::PROJECTION_LAG_SECONDS, "projection=orders"),
        (metrics::SAGA_LAG_SECONDS, "saga=checkout"),
        (metrics::HANDLER_FAILURES, "outcome=error"),
        (metrics::PARKED_EVENTS, "source=orders"),
        (metrics::PARKED_EVENTS, "source=relay"),
        (metrics::BUS_ERRORS, "kind=dead_lettered"),
        (metrics::BUS_ERRORS, "kind=reconnected"),
        (metrics::LEASES_HELD, "lease=projection:ledger"),
        (metrics::LEASES_HELD, "lease=relay:relay"),
        (metrics::LEASES_LOST, "lease=projection:ledger"),
    ] {
        assert!(
            has(&seen, name, label),
            "{name}{{{label}}} never moved; seen: {seen:#?}"
        );
    }
    // One lag gauge per partition of the partitioned projection, none without the label.
    let ledger: Vec<&Vec<String>> = seen[metrics::PROJECTION_LAG_SECONDS]
        .iter()
        .map(|(labels, _)| labels)
        .filter(|labels| labels.iter().any(|l| l == "projection=ledger"))
        .collect();
    for partition in ["partition=0", "partition=1"] {
        assert!(
            ledger
                .iter()
                .any(|labels| labels.iter().any(|l| l == partition)),
            "no ledger lag gauge with {partition}: {ledger:?}"
        );
    }
    assert!(ledger.iter().all(|labels| labels.len() == 2), "{ledger:?}");
}
