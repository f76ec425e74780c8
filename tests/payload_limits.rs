//! The payload depth limit against every backend: payloads nested 200 and 100,000 levels deep
//! are rejected with [`Error::PayloadTooDeep`] by appends and publishes, and a too-deep row
//! written into PostgreSQL by another tool never stops a global reader. Everything runs on
//! normal test threads: no check, rejection or drop may recurse once per level.
//!
//! Needs PostgreSQL, NATS and Redis (`DATABASE_URL`, `NATS_URL`, `REDIS_URL`; see
//! `tests/support`).
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use eventflow::bus::EventBus;
use eventflow::bus::nats::{NatsBus, NatsConfig};
use eventflow::bus::redis::{RedisBus, RedisConfig};
use eventflow::event::{MAX_PAYLOAD_DEPTH, dismantle, payload_depth};
use eventflow::postgres::{PostgresEventStore, UNDECODABLE_SOURCE};
use eventflow::store::memory::InMemoryEventStore;
use eventflow::store::{DeadLetterStore, ParkedEvent};
use eventflow::testing::RecordingBus;
use eventflow::{
    Error, Event, EventCriteria, EventStore, EventStoreExt, ExpectedVersion, InMemoryBus,
    SubscribeOptions, WithBus,
};
use eventflow_tests::{Seen, eventually, recorder};
use eventflow_tests::{database_url, nats_url, redis_url, service_unavailable, unique};
use serde_json::{Value, json};
use sqlx::postgres::{PgPool, PgPoolOptions};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(20);
const DEPTHS: [usize; 2] = [200, 100_000];

/// A JSON value nested `depth` arrays deep, built without recursion.
fn nested(depth: usize) -> Value {
    let mut value = json!("bottom");
    for _ in 0..depth {
        value = Value::Array(vec![value]);
    }
    value
}

/// An event whose payload is `depth` levels deep (built by hand: `Event::new` rejects it).
fn deep_event(depth: usize) -> Event {
    let mut event = Event::new("deep.event", json!(null)).unwrap();
    event.payload = nested(depth);
    event
}

/// An event whose metadata `custom` map holds a value `depth` levels deep.
fn deep_metadata_event(depth: usize) -> Event {
    let mut event = Event::new("deep.event", json!(null)).unwrap();
    event.metadata.custom.insert("k".into(), nested(depth));
    event
}

fn ev(event_type: &str, n: u64) -> Event {
    Event::new(event_type, json!({ "n": n })).unwrap()
}

#[track_caller]
fn assert_too_deep(result: Result<impl std::fmt::Debug, Error>, field: &str, depth: usize) {
    match result {
        Err(Error::PayloadTooDeep {
            event_type,
            field: got_field,
            depth: got,
            limit,
        }) => {
            assert_eq!(
                (event_type.as_str(), got_field, got, limit),
                ("deep.event", field, depth, MAX_PAYLOAD_DEPTH)
            );
        }
        other => panic!("expected PayloadTooDeep for {field} at {depth}, got {other:?}"),
    }
}

fn types(seen: &Seen) -> Vec<String> {
    seen.lock()
        .unwrap()
        .iter()
        .map(|e| e.event_type.clone())
        .collect()
}

/// Publishes deep events (alone and in a batch, in the payload and in the metadata), each
/// rejected with the typed error, then a marker; once the marker arrives, nothing else has.
async fn assert_bus_rejects_deep(bus: &dyn EventBus) {
    let (seen, handler) = recorder();
    let _sub = bus.subscribe("*.>", handler).await.unwrap();
    for depth in DEPTHS {
        assert_too_deep(bus.publish(deep_event(depth)).await, "payload", depth);
        assert_too_deep(
            bus.publish(deep_metadata_event(depth)).await,
            "metadata",
            depth + 1,
        );
        assert_too_deep(
            bus.publish_batch(vec![ev("ok.before", 1), deep_event(depth)])
                .await,
            "payload",
            depth,
        );
    }
    bus.publish(ev("ok.marker", 0)).await.unwrap();
    eventually("the marker", || !seen.lock().unwrap().is_empty()).await;
    assert_eq!(types(&seen), ["ok.marker"], "nothing rejected was sent");
}

#[tokio::test]
async fn the_memory_store_and_bus_reject_deep_payloads() {
    let store = InMemoryEventStore::new();
    for depth in DEPTHS {
        assert_too_deep(
            store
                .append("s", ExpectedVersion::Any, deep_event(depth))
                .await,
            "payload",
            depth,
        );
        assert_too_deep(
            store
                .append_batch(
                    "s",
                    ExpectedVersion::Any,
                    vec![ev("ok.a", 1), deep_metadata_event(depth)],
                )
                .await,
            "metadata",
            depth + 1,
        );
    }
    assert!(store.read_all(0, 10).await.unwrap().is_empty());
    assert_bus_rejects_deep(&InMemoryBus::new()).await;
    assert_bus_rejects_deep(&InMemoryBus::builder().async_dispatch(16).build()).await;
}

#[tokio::test]
async fn nats_and_redis_reject_deep_payloads_before_sending() {
    let mut config = NatsConfig::new(nats_url());
    config.subject_prefix = unique("deep");
    let nats = match NatsBus::connect(config).await {
        Ok(bus) => bus,
        Err(e) => service_unavailable("NATS", &nats_url(), e),
    };
    assert_bus_rejects_deep(&nats).await;
    nats.close().await.unwrap();

    let mut config = RedisConfig::new(redis_url());
    config.key_prefix = unique("deep");
    let redis = match RedisBus::connect(config).await {
        Ok(bus) => bus,
        Err(e) => service_unavailable("Redis", &redis_url(), e),
    };
    assert_bus_rejects_deep(&redis).await;
    redis.close().await.unwrap();
}

/// A PostgreSQL store in a schema of its own; the schema is dropped by [`Pg::cleanup`].
struct Pg {
    pool: PgPool,
    store: PostgresEventStore,
    schema: String,
}

impl Pg {
    async fn new() -> Self {
        let url = database_url();
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(30))
            .connect(&url)
            .await
            .unwrap_or_else(|e| service_unavailable("PostgreSQL", &url, e));
        let schema = unique("evdeep");
        let store = PostgresEventStore::builder(pool.clone())
            .schema(&schema)
            .poll_interval(Duration::from_millis(100))
            .settle_timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        store.migrate().await.unwrap();
        Pg {
            pool,
            store,
            schema,
        }
    }

    /// Inserts a row the way another tool (or an older eventflow) could: `payload` and
    /// `metadata` are JSON texts nested as deep as PostgreSQL takes.
    async fn insert_raw(&self, stream: &str, version: i64, payload: &str, metadata: &str) -> Uuid {
        let id = Uuid::now_v7();
        let sql = format!(
            "INSERT INTO \"{}\".events (position, transaction_id, event_id, stream_id, \
             stream_version, event_type, schema_version, payload, metadata, occurred_at) \
             SELECT (tx.id << 20) + 1, tx.id, $5, $1, $2, 'deep.event', 1, \
                    $3::jsonb, $4::jsonb, now() \
               FROM (SELECT pg_current_xact_id()::text::bigint AS id) tx",
            self.schema
        );
        sqlx::query(&sql)
            .bind(stream)
            .bind(version)
            .bind(payload)
            .bind(metadata)
            .bind(id)
            .execute(&self.pool)
            .await
            .unwrap();
        id
    }

    async fn cleanup(self) {
        drop(self.store);
        sqlx::query(&format!("DROP SCHEMA \"{}\" CASCADE", self.schema))
            .execute(&self.pool)
            .await
            .unwrap();
        self.pool.close().await;
    }
}

fn brackets(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

#[tokio::test]
async fn postgres_append_rejects_deep_payloads_and_writes_nothing() {
    let pg = Pg::new().await;
    for depth in DEPTHS {
        assert_too_deep(
            pg.store
                .append("s", ExpectedVersion::Any, deep_event(depth))
                .await,
            "payload",
            depth,
        );
        assert_too_deep(
            pg.store
                .append_batch(
                    "s",
                    ExpectedVersion::Any,
                    vec![ev("ok.a", 1), deep_metadata_event(depth)],
                )
                .await,
            "metadata",
            depth + 1,
        );
    }
    assert_eq!(pg.store.stream_version("s").await.unwrap(), 0);
    // At the limit, the payload is stored and read back whole.
    let at_limit = Event::new("deep.event", nested(MAX_PAYLOAD_DEPTH)).unwrap();
    pg.store
        .append("s", ExpectedVersion::NoStream, at_limit.clone())
        .await
        .unwrap();
    let back = pg.store.load_stream("s", 1).await.unwrap();
    assert_eq!(back[0].payload, at_limit.payload);
    assert_eq!(payload_depth(&back[0].payload), MAX_PAYLOAD_DEPTH);
    pg.cleanup().await;
}

#[tokio::test]
async fn a_too_deep_row_written_by_another_tool_stops_no_reader() {
    let pg = Pg::new().await;
    let store = &pg.store;
    let first = store
        .append("s", ExpectedVersion::NoStream, ev("ok.first", 1))
        .await
        .unwrap();
    // Two rows no writer of eventflow accepts and serde_json cannot parse: a payload 200
    // levels deep, and metadata 10,000 levels deep (about as deep as PostgreSQL's own parser
    // goes). Decoding them into values would also make them dangerous to drop.
    let bad_payload = brackets(200);
    let bad_metadata = format!(r#"{{"custom":{{"k":{}}}}}"#, brackets(10_000));
    let bad = pg.insert_raw("s", 2, &bad_payload, "{}").await;
    let bad_meta = pg.insert_raw("s", 3, "{}", &bad_metadata).await;
    // Several readers meet the rows at once: each row is parked once all the same.
    let reads = futures_util::future::join_all((0..4).map(|_| store.read_all(0, 100))).await;
    for read in reads {
        assert_eq!(
            read.unwrap().len(),
            1,
            "only the first event decodes so far"
        );
    }
    let after = store
        .append("s", ExpectedVersion::Any, ev("ok.after", 2))
        .await
        .unwrap();
    assert_eq!(after.stream_version, Some(4));
    // Its id stays taken: appending it again is a duplicate, not a retry loop or a read error.
    match store
        .append("s", ExpectedVersion::Any, ev("ok.again", 9).with_id(bad))
        .await
    {
        Err(Error::DuplicateEvent { id, stream }) => assert_eq!((id, stream.as_str()), (bad, "s")),
        other => panic!("expected DuplicateEvent, got {other:?}"),
    }
    let good = [first.id, after.id];
    let ids = |events: &[Event]| events.iter().map(|e| e.id).collect::<Vec<_>>();

    // Global reads skip the two rows (reporting them) and go on past them.
    assert_eq!(ids(&store.read_all(0, 100).await.unwrap()), good);
    // One row at a time: a page holding only a bad row is read past, not returned empty.
    let next = store.read_all(first.position.unwrap(), 1).await.unwrap();
    assert_eq!(ids(&next), [after.id]);
    // The stream still loads, every call.
    assert_eq!(ids(&store.load_stream("s", 1).await.unwrap()), good);
    assert_eq!(
        ids(&store
            .load(&EventCriteria::all().stream_id("s"))
            .await
            .unwrap()),
        good
    );

    // A store subscription reading one event at a time delivers what follows, live too.
    let (seen, handler) = recorder();
    let _sub = store
        .subscribe_with(
            EventCriteria::all(),
            SubscribeOptions::new().batch_size(1),
            handler,
        )
        .await
        .unwrap();
    let live = store
        .append("s", ExpectedVersion::Any, ev("ok.live", 3))
        .await
        .unwrap();
    eventually("the subscription past the bad rows", || {
        seen.lock().unwrap().len() == 3
    })
    .await;
    assert_eq!(ids(&seen.lock().unwrap()), [first.id, after.id, live.id]);

    // A relay following the store publishes every event around them, in order.
    let bus = Arc::new(RecordingBus::new());
    let relayed = store.clone().with_bus(bus.clone());
    relayed.flush(WAIT).await.unwrap();
    eventually("the relay past the bad rows", || bus.len() >= 3).await;
    assert_eq!(ids(&bus.events()), [first.id, after.id, live.id]);
    drop(relayed);

    // Each row was parked exactly once, with its reason and its stored text, whole.
    let dead_letters = store.dead_letters();
    let parked = dead_letters.list(UNDECODABLE_SOURCE, 10).await.unwrap();
    assert_eq!(UNDECODABLE_SOURCE, "store:undecodable");
    let parked_ids: Vec<Uuid> = parked.iter().map(|p| p.event.id).collect();
    assert_eq!(
        parked_ids,
        [bad, bad_meta],
        "each bad row parked once, in order"
    );
    let stored_text = |p: &ParkedEvent, key: &str| {
        // PostgreSQL prints jsonb with a space after `:` and `,`; the texts here hold neither
        // inside strings.
        p.event.payload[key].as_str().unwrap().replace(' ', "")
    };
    let (payload_row, metadata_row) = (&parked[0], &parked[1]);
    assert_eq!(
        payload_row.reason,
        "undecodable: the stored payload cannot be decoded"
    );
    assert!(
        payload_row.error.contains("recursion limit"),
        "{}",
        payload_row.error
    );
    assert_eq!(stored_text(payload_row, "undecodable_payload"), bad_payload);
    assert_eq!(stored_text(payload_row, "undecodable_metadata"), "{}");
    assert_eq!(
        (
            payload_row.event.event_type.as_str(),
            payload_row.event.stream_id.as_deref(),
            payload_row.event.stream_version,
            payload_row.attempts,
        ),
        ("deep.event", Some("s"), Some(2), 1)
    );
    assert!(payload_row.event.position.unwrap() > first.position.unwrap());
    assert_eq!(
        metadata_row.reason,
        "undecodable: the stored metadata cannot be decoded"
    );
    assert_eq!(stored_text(metadata_row, "undecodable_payload"), "{}");
    assert_eq!(
        stored_text(metadata_row, "undecodable_metadata"),
        bad_metadata
    );
    assert_eq!(metadata_row.event.stream_version, Some(3));

    // Another store over the same schema (another process) reads on and parks nothing more;
    // a row whose dead letter was dealt with is not parked again either.
    assert!(dead_letters.discard(payload_row.id).await.unwrap());
    let other = PostgresEventStore::builder(pg.pool.clone())
        .schema(&pg.schema)
        .build()
        .unwrap();
    assert_eq!(
        ids(&other.read_all(0, 100).await.unwrap()),
        [first.id, after.id, live.id]
    );
    assert_eq!(ids(&other.load_stream("s", 1).await.unwrap()).len(), 3);
    assert_eq!(ids(&store.read_all(0, 100).await.unwrap()).len(), 3);
    assert_eq!(dead_letters.count(UNDECODABLE_SOURCE).await.unwrap(), 1);
    assert_eq!(
        dead_letters.list(UNDECODABLE_SOURCE, 10).await.unwrap()[0]
            .event
            .id,
        bad_meta
    );
    drop(other);
    pg.cleanup().await;
}

#[test]
fn a_deep_value_in_a_test_is_disposed_of_with_dismantle() {
    // What a caller must do with a value it built too deep: take it apart, not drop it.
    let deep = nested(100_000);
    assert_too_deep(Event::new("deep.event", &deep), "payload", 129);
    dismantle(deep);
}
