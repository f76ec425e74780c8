//! Integration tests: poison events are parked, not retried forever, and the rest flows.
//!
//! A private `nats-server` with `max_payload` 1 MiB plays the bus that will never take a 2 MiB
//! event; a second one with 4 MiB plays the bus after the limit was raised. The relay, a saga's
//! outbox and a projection runner each park the poison event and move on; the PostgreSQL and
//! in-memory dead-letter stores pass the same conformance checks.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use eventflow::bus::BusErrorKind;
use eventflow::bus::nats::{NatsBus, NatsConfig};
use eventflow::postgres::{PgPool, PgPoolOptions, PostgresEventStore};
use eventflow::projection::{FailurePolicy, Projection, ProjectionRunner};
use eventflow::relay::retry_parked;
use eventflow::saga::{InMemorySagaStore, Saga, SagaContext, SagaManager};
use eventflow::store::{DeadLetterStore, InMemoryDeadLetterStore};
use eventflow::testing::conformance;
use eventflow::{
    BoxError, Error, Event, EventBus, EventBusExt, EventStore, ExpectedVersion, HandlerResult,
    WithBus, async_trait, sync_handler,
};
use eventflow_tests::nats_server::NatsServer;
use eventflow_tests::{database_url, service_unavailable, unique};
use serde_json::json;
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(30);
const MIB: usize = 1 << 20;

// ---------------------------------------------------------------------------------------------
// helpers

/// A private nats-server whose `max_payload` is `limit` bytes (set in a config file: the server
/// has no command-line flag for it).
fn nats_with_max_payload(limit: usize) -> (NatsServer, tempfile::NamedTempFile) {
    use std::io::Write;
    let mut conf = tempfile::NamedTempFile::new().unwrap();
    writeln!(conf, "max_payload: {limit}").unwrap();
    let path = conf.path().to_str().unwrap().to_owned();
    (NatsServer::start_with(&["-c", &path]), conf)
}

async fn nats_bus(url: &str, prefix: &str) -> NatsBus {
    let mut c = NatsConfig::new(url);
    c.subject_prefix = prefix.to_owned();
    c.connect_timeout = Duration::from_secs(3);
    match NatsBus::connect(c).await {
        Ok(bus) => bus,
        Err(e @ Error::Connect { .. }) => service_unavailable("NATS", url, e),
        Err(e) => panic!("cannot set up the NATS bus at {url}: {e}"),
    }
}

/// Every event of `pattern` on `bus`, in arrival order.
async fn collect(bus: &NatsBus, pattern: &str) -> mpsc::UnboundedReceiver<Event> {
    let (tx, rx) = mpsc::unbounded_channel();
    bus.on(
        pattern,
        sync_handler(move |e: &Event| {
            let _ = tx.send(e.clone());
            Ok(())
        }),
    )
    .await
    .unwrap()
    .detach();
    rx
}

async fn recv_n(rx: &mut mpsc::UnboundedReceiver<Event>, n: usize, what: &str) -> Vec<Event> {
    let mut got = Vec::with_capacity(n);
    let deadline = Instant::now() + WAIT;
    while got.len() < n {
        match tokio::time::timeout_at(deadline.into(), rx.recv()).await {
            Ok(Some(e)) => got.push(e),
            Ok(None) => panic!("{what}: handler dropped after {} of {n} events", got.len()),
            Err(_) => panic!("{what}: only {} of {n} events within {WAIT:?}", got.len()),
        }
    }
    got
}

/// Publishes a marker on `bus` and checks it is the next event `rx` sees: nothing else (no
/// duplicate, no parked event) arrived after what was already received.
async fn next_is_marker(bus: &NatsBus, rx: &mut mpsc::UnboundedReceiver<Event>, what: &str) {
    let marker = Event::new("dl.marker", json!({})).unwrap();
    bus.publish(marker.clone()).await.unwrap();
    let next = recv_n(rx, 1, what).await;
    assert_eq!(next[0].id, marker.id, "{what}: an unexpected event arrived");
}

async fn pg_pool() -> PgPool {
    let url = database_url();
    PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(30))
        .connect(&url)
        .await
        .unwrap_or_else(|e| service_unavailable("PostgreSQL", &url, e))
}

/// A migrated store in a schema of its own.
async fn pg_store(pool: &PgPool) -> (PostgresEventStore, String) {
    let schema = unique("dl");
    let store = PostgresEventStore::builder(pool.clone())
        .schema(&schema)
        .poll_interval(Duration::from_millis(200))
        .build()
        .unwrap();
    store.migrate().await.unwrap();
    (store, schema)
}

async fn drop_schema(pool: &PgPool, schema: &str) {
    sqlx::query(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .execute(pool)
        .await
        .unwrap();
}

/// Item `n` of 1,000; item `big` carries a 2 MiB payload.
fn item(n: usize, big: usize) -> Event {
    let pad = if n == big {
        "x".repeat(2 * MIB)
    } else {
        String::new()
    };
    Event::new("dl.item", json!({ "n": n, "pad": pad })).unwrap()
}

fn numbers(events: &[Event]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e.payload["n"].as_u64().unwrap())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// the relay

/// The id of the one event the relay parked.
async fn parked_event_id(relayed: &eventflow::Relayed<PostgresEventStore>) -> uuid::Uuid {
    relayed.parked(1).await.unwrap()[0].event.id
}

#[tokio::test]
async fn relay_parks_an_event_too_large_for_nats_and_a_retry_delivers_it() {
    const BIG: usize = 500;
    let (small, _conf_small) = nats_with_max_payload(MIB);
    let (large, _conf_large) = nats_with_max_payload(4 * MIB);
    let prefix = unique("dl");
    let bus = nats_bus(&small.url(), &prefix).await;
    let mut seen = collect(&bus, "dl.*").await;

    let pool = pg_pool().await;
    let (store, schema) = pg_store(&pool).await;
    let relayed = store.clone().with_bus(bus.clone());
    let mut relay_errors = relayed.relay_errors().unwrap();
    for chunk in 0..10 {
        let events = (chunk * 100..(chunk + 1) * 100)
            .map(|n| item(n, BIG))
            .collect();
        relayed
            .append_batch(&format!("dl-{chunk}"), ExpectedVersion::NoStream, events)
            .await
            .unwrap();
    }
    // Without parking the relay retries the batch holding the big event forever: this times out.
    relayed.flush(WAIT).await.unwrap();

    let delivered = recv_n(&mut seen, 999, "relay to a 1 MiB server").await;
    let expected: Vec<u64> = (0..1000u64).filter(|n| *n != BIG as u64).collect();
    assert_eq!(numbers(&delivered), expected, "999 delivered, in order");
    next_is_marker(&bus, &mut seen, "relay").await;

    let reported = relay_errors
        .try_recv()
        .expect("the parked event is reported");
    assert_eq!(reported.kind, BusErrorKind::DeadLettered);
    assert_eq!(reported.event_id, Some(parked_event_id(&relayed).await));
    let status = relayed.relay_status().await.unwrap();
    assert_eq!(status.parked, 1, "the relay status counts the parked event");
    assert_eq!(status.lag, 0, "the relay moved past it");
    let parked = relayed.parked(10).await.unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].event.payload["n"], BIG, "the big event is parked");
    assert_eq!(parked[0].source, "relay");
    assert!(
        parked[0].reason.contains("permanent"),
        "{:?}",
        parked[0].reason
    );
    assert!(
        parked[0].error.contains("over the limit"),
        "{:?}",
        parked[0].error
    );
    assert!(parked[0].attempts >= 2, "attempts: {}", parked[0].attempts);
    // Parked in the store's own table, so it survives the process.
    assert_eq!(store.dead_letters().count("relay").await.unwrap(), 1);

    // A retry on the same (1 MiB) bus fails again: the event stays parked.
    let again = relayed.retry_parked(10).await.unwrap();
    assert_eq!((again.published, again.failed), (0, 1));
    assert_eq!(relayed.parked(10).await.unwrap().len(), 1);

    // The limit raised (a bus on a 4 MiB server): the retry delivers it and unparks it.
    let bigger = nats_bus(&large.url(), &prefix).await;
    let mut seen_big = collect(&bigger, "dl.*").await;
    let retried = retry_parked(relayed.dead_letters().as_ref(), &bigger, "relay", 10)
        .await
        .unwrap();
    assert_eq!((retried.published, retried.failed), (1, 0));
    let got = recv_n(&mut seen_big, 1, "retry on a 4 MiB server").await;
    assert_eq!(got[0].id, parked[0].event.id);
    assert_eq!(got[0].payload["pad"].as_str().unwrap().len(), 2 * MIB);
    assert_eq!(relayed.relay_status().await.unwrap().parked, 0);

    drop(relayed);
    drop(store);
    drop_schema(&pool, &schema).await;
}

// ---------------------------------------------------------------------------------------------
// the saga outbox

/// Emits one `dl.item` per start, 2 MiB for the start that asks for it.
struct Emitter;

impl Saga for Emitter {
    type State = ();
    fn name(&self) -> &str {
        "emitter"
    }
    fn starts_on(&self) -> Vec<String> {
        vec!["dlsaga.start".into()]
    }
    fn handles(&self) -> Vec<String> {
        Vec::new()
    }
    fn handle(&self, _: &mut (), event: &Event, ctx: &mut SagaContext) -> Result<(), BoxError> {
        let n = event.payload["n"].as_u64().unwrap() as usize;
        let big = event.payload["big"].as_u64().unwrap() as usize;
        ctx.emit(item(n, big));
        ctx.complete();
        Ok(())
    }
}

#[tokio::test]
async fn saga_outbox_parks_an_event_too_large_for_nats_and_the_rest_flows() {
    const BIG: usize = 300;
    let (small, _conf_small) = nats_with_max_payload(MIB);
    let (large, _conf_large) = nats_with_max_payload(4 * MIB);
    let prefix = unique("dls");
    let store = Arc::new(InMemorySagaStore::new());

    // A first manager whose bus is down: every emitted event stays in the outbox.
    let down = eventflow::InMemoryBus::new();
    down.close().await.unwrap();
    let first = SagaManager::new(Emitter, store.clone())
        .unwrap()
        .with_bus(down);
    for n in 0..1000 {
        let start = Event::new("dlsaga.start", json!({ "n": n, "big": BIG })).unwrap();
        first.handle(&start).await.unwrap();
    }

    // The next one flushes the outbox to a 1 MiB server.
    let bus = nats_bus(&small.url(), &prefix).await;
    let mut seen = collect(&bus, "dl.*").await;
    let dead_letters = Arc::new(InMemoryDeadLetterStore::new());
    let manager = SagaManager::new(Emitter, store.clone())
        .unwrap()
        .with_bus(bus.clone())
        .dead_letters(dead_letters.clone());
    // Without parking, the batch holding the big event fails every time and nothing flows.
    assert_eq!(manager.flush_outbox().await.unwrap(), 1000);
    let delivered = recv_n(&mut seen, 999, "saga outbox to a 1 MiB server").await;
    let expected: Vec<u64> = (0..1000u64).filter(|n| *n != BIG as u64).collect();
    assert_eq!(numbers(&delivered), expected, "999 delivered, in order");
    next_is_marker(&bus, &mut seen, "saga outbox").await;
    assert_eq!(
        manager.flush_outbox().await.unwrap(),
        0,
        "the outbox is empty"
    );

    assert_eq!(manager.parked_count().await.unwrap(), 1);
    let parked = manager.parked(10).await.unwrap();
    assert_eq!(parked[0].source, "saga:emitter");
    assert_eq!(parked[0].event.payload["n"], BIG);
    assert!(
        parked[0].reason.contains("permanent"),
        "{:?}",
        parked[0].reason
    );
    assert!(
        parked[0].error.contains("over the limit"),
        "{:?}",
        parked[0].error
    );

    let bigger = nats_bus(&large.url(), &prefix).await;
    let mut seen_big = collect(&bigger, "dl.*").await;
    let retried = retry_parked(
        manager.dead_letter_store().as_ref(),
        &bigger,
        &manager.parked_source(),
        10,
    )
    .await
    .unwrap();
    assert_eq!((retried.published, retried.failed), (1, 0));
    let got = recv_n(&mut seen_big, 1, "saga retry on a 4 MiB server").await;
    assert_eq!(got[0].id, parked[0].event.id);
    assert_eq!(manager.parked_count().await.unwrap(), 0);
}

// ---------------------------------------------------------------------------------------------
// projections

/// Fails on item 3, records the others.
struct Picky {
    name: String,
    seen: std::sync::Mutex<Vec<u64>>,
}

#[async_trait]
impl Projection for Picky {
    fn name(&self) -> &str {
        &self.name
    }
    fn patterns(&self) -> Vec<String> {
        vec!["dl.*".into()]
    }
    async fn handle(&self, event: &Event) -> HandlerResult {
        let n = event.payload["n"].as_u64().unwrap();
        if n == 3 {
            return Err("item 3 is unreadable".into());
        }
        self.seen.lock().unwrap().push(n);
        Ok(())
    }
    async fn reset(&self) -> HandlerResult {
        Ok(())
    }
}

#[tokio::test]
async fn projection_park_policy_parks_the_failing_event_and_moves_past_it() {
    let pool = pg_pool().await;
    let (store, schema) = pg_store(&pool).await;
    let events: Vec<Event> = (0..10).map(|n| item(n, usize::MAX)).collect();
    store
        .append_batch("dl-p", ExpectedVersion::NoStream, events)
        .await
        .unwrap();
    let projection = Arc::new(Picky {
        name: unique("picky"),
        seen: Default::default(),
    });
    struct Shared(Arc<Picky>);
    #[async_trait]
    impl Projection for Shared {
        fn name(&self) -> &str {
            self.0.name()
        }
        fn patterns(&self) -> Vec<String> {
            self.0.patterns()
        }
        async fn handle(&self, event: &Event) -> HandlerResult {
            self.0.handle(event).await
        }
        async fn reset(&self) -> HandlerResult {
            self.0.reset().await
        }
    }
    let runner = ProjectionRunner::new(
        Arc::new(store.clone()),
        Arc::new(store.checkpoints()),
        Shared(projection.clone()),
    )
    .unwrap()
    .failure_policy(FailurePolicy::Park)
    .dead_letters(Arc::new(store.dead_letters()));
    let head = store.head_position().await.unwrap();
    // Without `Park` the runner would stop (or retry forever) at item 3.
    assert_eq!(
        tokio::time::timeout(WAIT, runner.catch_up())
            .await
            .unwrap()
            .unwrap(),
        head
    );
    assert_eq!(
        *projection.seen.lock().unwrap(),
        vec![0, 1, 2, 4, 5, 6, 7, 8, 9]
    );
    let status = runner.status().await.unwrap();
    assert_eq!((status.parked, status.position, status.lag), (1, head, 0));
    let parked = store
        .dead_letters()
        .list(&projection.name, 10)
        .await
        .unwrap();
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].event.payload["n"], 3);
    assert!(
        parked[0].error.contains("item 3 is unreadable"),
        "{:?}",
        parked[0].error
    );
    assert_eq!(runner.parked(10).await.unwrap()[0].id, parked[0].id);
    // The checkpoint moved past it: a new runner starts after the head.
    use eventflow::CheckpointStore;
    assert_eq!(
        store
            .checkpoints()
            .load_checkpoint(&projection.name)
            .await
            .unwrap(),
        head
    );

    drop(runner);
    drop(store);
    drop_schema(&pool, &schema).await;
}

// ---------------------------------------------------------------------------------------------
// dead-letter store conformance

#[tokio::test]
async fn postgres_dead_letter_store_passes_the_kit() {
    let pool = pg_pool().await;
    let (store, schema) = pg_store(&pool).await;
    conformance::dead_letters::run(&store.dead_letters(), &unique("kit"))
        .await
        .unwrap();
    drop(store);
    drop_schema(&pool, &schema).await;
}

#[tokio::test]
async fn in_memory_dead_letter_store_passes_the_kit() {
    conformance::dead_letters::run(&InMemoryDeadLetterStore::new(), "kit")
        .await
        .unwrap();
}
