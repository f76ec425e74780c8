//! Integration tests: store-owned fields (`stream_id`, `stream_version`, `position`) are set
//! only by a store. An event whose JSON claims `position: 1`, `stream_version: 999` and
//! `stream_id: "other"` is appended to a store, which assigns its own values, and published on a
//! bus, where a projection fed by the bus handles it without moving any checkpoint from the
//! claim; the same projection run from the store checkpoints the store's position. In memory
//! (async in-memory bus) always; in memory with NATS JetStream with feature `nats`; on
//! PostgreSQL with Redis Streams with features `postgres` and `redis`.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use eventflow::bus::memory::InMemoryBus;
use eventflow::projection::{self, Projection, ProjectionRunner};
use eventflow::store::memory::{InMemoryCheckpointStore, InMemoryEventStore};
use eventflow::{
    CheckpointStore, Event, EventBus, EventStore, ExpectedVersion, FeedOptions, HandlerResult,
};
use serde_json::json;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(20);

/// The forged event, as JSON from a party the store does not control.
fn forged() -> Event {
    let json = json!({
        "id": Uuid::now_v7(),
        "type": "claim.forged",
        "payload": { "note": "claims to be stored" },
        "timestamp": "2026-01-01T00:00:00Z",
        "stream_id": "other",
        "stream_version": 999,
        "position": 1,
    });
    let event = Event::from_json(json.to_string().as_bytes()).unwrap();
    // Decoding keeps the claim: these are what downstream code must not trust.
    assert_eq!(event.position, Some(1));
    assert_eq!(event.stream_version, Some(999));
    assert_eq!(event.stream_id.as_deref(), Some("other"));
    event
}

/// Records every event it handles.
struct Claims {
    name: String,
    seen: Mutex<Vec<Event>>,
}

impl Claims {
    fn new(name: &str) -> Arc<Self> {
        Arc::new(Claims {
            name: name.to_owned(),
            seen: Mutex::new(Vec::new()),
        })
    }
    fn seen(&self) -> Vec<Event> {
        self.seen.lock().unwrap().clone()
    }
    async fn wait_for(&self, id: Uuid) {
        let deadline = Instant::now() + WAIT;
        while !self.seen().iter().any(|e| e.id == id) {
            assert!(Instant::now() < deadline, "event {id} never arrived");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[async_trait]
impl Projection for Claims {
    fn name(&self) -> &str {
        &self.name
    }
    fn patterns(&self) -> Vec<String> {
        vec!["claim.>".into()]
    }
    async fn handle(&self, event: &Event) -> HandlerResult {
        self.seen.lock().unwrap().push(event.clone());
        Ok(())
    }
}

/// Appending: the store overwrites all three claimed fields, in what it returns and in what it
/// loads. The stream is new and the store already holds one event, so the true values (stream
/// `s`, version 1, a position after that event's) differ from every claimed one.
async fn store_assigns_its_own(store: &dyn EventStore, stream: &str) -> Event {
    let prior = store
        .append(
            &format!("{stream}-prior"),
            ExpectedVersion::NoStream,
            Event::new("claim.prior", json!({})).unwrap(),
        )
        .await
        .unwrap();
    let prior_position = prior.position.unwrap();
    let forged = forged();
    let recorded = store
        .append_batch(stream, ExpectedVersion::NoStream, vec![forged.clone()])
        .await
        .unwrap();
    let fields = |e: &Event| (e.stream_id.clone(), e.stream_version);
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].id, forged.id);
    assert_eq!(
        fields(&recorded[0]),
        (Some(stream.to_owned()), Some(1)),
        "append returned the claimed stream fields"
    );
    let position = recorded[0].position.unwrap();
    assert!(
        position > prior_position && position != 1,
        "append returned the claimed position"
    );
    let loaded = store.load_stream(stream, 1).await.unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(
        (fields(&loaded[0]), loaded[0].position),
        ((Some(stream.to_owned()), Some(1)), Some(position)),
        "load returned the claim"
    );
    assert!(store.load_stream("other", 1).await.unwrap().is_empty());
    assert_eq!(store.stream_version(stream).await.unwrap(), 1);
    loaded.into_iter().next().unwrap()
}

/// The bus: a projection fed by it handles the forged event, and no checkpoint moves; the same
/// projection run from the store then checkpoints the store's position of that event.
async fn bus_fed_projection_ignores_the_claim(
    store: Arc<dyn EventStore>,
    checkpoints: Arc<dyn CheckpointStore>,
    bus: &dyn EventBus,
    options: FeedOptions,
    name: &str,
    stored: &Event,
) {
    let fed = Claims::new(name);
    let subscription = projection::subscribe_with(bus, fed.clone(), options)
        .await
        .unwrap();
    let forged = forged();
    let marker = Event::new("claim.marker", json!({})).unwrap();
    bus.publish(forged.clone()).await.unwrap();
    bus.publish(marker.clone()).await.unwrap();
    fed.wait_for(marker.id).await;
    let seen = fed.seen();
    // The claim travels as written (the documented wire behaviour): only its use is ruled out.
    let received = seen.iter().find(|e| e.id == forged.id).unwrap();
    assert_eq!(
        (received.position, received.stream_version),
        (Some(1), Some(999))
    );
    assert_eq!(
        checkpoints.load_checkpoint(name).await.unwrap(),
        0,
        "a bus-fed projection moved the checkpoint"
    );
    drop(subscription);

    // The same projection from the store: its checkpoint is the store's position.
    let from_store = Claims::new(name);
    let runner =
        ProjectionRunner::new(store.clone(), checkpoints.clone(), from_store.clone()).unwrap();
    let through = runner.catch_up().await.unwrap();
    let head = store.head_position().await.unwrap();
    assert_eq!(through, head);
    assert_eq!(checkpoints.load_checkpoint(name).await.unwrap(), head);
    let handled = from_store.seen();
    let copy = handled.iter().find(|e| e.id == stored.id).unwrap();
    assert_eq!(copy.position, stored.position);
    assert_eq!(copy.stream_version, Some(1));
    // Nothing was skipped on the word of the claim: the event before it was handled too.
    assert!(handled.iter().any(|e| e.event_type == "claim.prior"));
}

#[tokio::test]
async fn memory_store_and_async_bus_ignore_claimed_store_fields() {
    let store = Arc::new(InMemoryEventStore::new());
    let stored = store_assigns_its_own(store.as_ref(), "s").await;
    let bus = InMemoryBus::builder().async_dispatch(64).build();
    bus_fed_projection_ignores_the_claim(
        store,
        Arc::new(InMemoryCheckpointStore::new()),
        &bus,
        FeedOptions::new().allow_at_most_once(),
        "claims-memory",
        &stored,
    )
    .await;
}

#[cfg(all(feature = "postgres", feature = "redis"))]
#[tokio::test]
async fn postgres_store_and_redis_streams_ignore_claimed_store_fields() {
    use eventflow::bus::redis::{RedisBus, RedisConfig};
    use eventflow::postgres::PostgresEventStore;
    use eventflow_tests::{database_url, redis_url, service_unavailable, unique};
    use sqlx::postgres::PgPoolOptions;

    let url = database_url();
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(30))
        .connect(&url)
        .await
        .unwrap_or_else(|e| service_unavailable("PostgreSQL", &url, e));
    let schema = unique("evown");
    let store = PostgresEventStore::builder(pool.clone())
        .schema(&schema)
        .build()
        .unwrap();
    store.migrate().await.unwrap();
    let stored = store_assigns_its_own(&store, "s").await;

    let prefix = unique("own");
    let mut config = RedisConfig::new(redis_url());
    config.use_streams = true;
    config.key_prefix = prefix.clone();
    config.block = Duration::from_millis(200);
    let bus = RedisBus::connect(config)
        .await
        .unwrap_or_else(|e| service_unavailable("Redis", &redis_url(), e));
    let checkpoints = Arc::new(store.checkpoints());
    bus_fed_projection_ignores_the_claim(
        Arc::new(store.clone()),
        checkpoints,
        &bus,
        FeedOptions::new(),
        "claims-pg",
        &stored,
    )
    .await;

    bus.close().await.unwrap();
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    drop(store);
    sqlx::query(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
}

#[cfg(feature = "nats")]
#[tokio::test]
async fn memory_store_and_jetstream_ignore_claimed_store_fields() {
    use eventflow::bus::nats::{NatsBus, NatsConfig};
    use eventflow_tests::{nats_url, service_unavailable, unique};

    let store = Arc::new(InMemoryEventStore::new());
    let stored = store_assigns_its_own(store.as_ref(), "s").await;

    let url = nats_url();
    let mut config = NatsConfig::new(&url);
    config.subject_prefix = unique("own");
    config.enable_jetstream = true;
    config.memory_storage = true;
    config.stream_name = unique("OWN");
    config.connect_timeout = Duration::from_secs(3);
    config.request_timeout = Duration::from_secs(3);
    let stream = config.stream_name.clone();
    let bus = NatsBus::connect(config)
        .await
        .unwrap_or_else(|e| service_unavailable("NATS", &url, e));
    bus_fed_projection_ignores_the_claim(
        store,
        Arc::new(InMemoryCheckpointStore::new()),
        &bus,
        FeedOptions::new(),
        "claims-jetstream",
        &stored,
    )
    .await;

    bus.close().await.unwrap();
    let client = async_nats::connect(&url).await.unwrap();
    async_nats::jetstream::new(client)
        .delete_stream(&stream)
        .await
        .unwrap();
}
