//! Integration tests of the PostgreSQL event store against the real server
//! (`DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/test`). Every test works in a
//! schema of its own, dropped at the end, so tests run in parallel and twice in a row.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use eventflow::postgres::{PendingAppend, PostgresEventStore, PostgresSnapshotStore};
use eventflow::testing::conformance::{
    self, Scope,
    store::{Capabilities as StoreCapabilities, HoldsAppendOpen, OpenAppend, TestStore},
};
use eventflow::{
    CheckpointStore, Error, Event, EventCriteria, EventStore, EventStoreExt, ExpectedVersion,
    Metadata, Snapshot, SnapshotStore, SubscribeOptions, WithBus,
};
use eventflow_tests::{database_url, service_unavailable, unique};
use eventflow_tests::{eventually, recorder};
use serde_json::json;
use sqlx::postgres::{PgPool, PgPoolOptions};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(20);

/// A schema of its own, migrated; dropped by [`Fixture::cleanup`].
struct Fixture {
    pool: PgPool,
    store: PostgresEventStore,
    schema: String,
}

impl Fixture {
    async fn new() -> Self {
        Self::with_pool_size(8).await
    }

    async fn with_pool_size(size: u32) -> Self {
        let pool = pool(size).await;
        let schema = unique("evpg");
        let store = PostgresEventStore::builder(pool.clone())
            .schema(&schema)
            .poll_interval(Duration::from_millis(200))
            .settle_timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        store.migrate().await.unwrap();
        Fixture {
            pool,
            store,
            schema,
        }
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

async fn pool(size: u32) -> PgPool {
    let url = database_url();
    PgPoolOptions::new()
        .max_connections(size)
        .acquire_timeout(Duration::from_secs(30))
        .connect(&url)
        .await
        .unwrap_or_else(|e| service_unavailable("PostgreSQL", &url, e))
}

fn ev(event_type: &str, n: u64) -> Event {
    Event::new(event_type, json!({ "n": n })).unwrap()
}

#[tokio::test]
async fn migrate_is_explicit_and_idempotent() {
    let pool = pool(2).await;
    let schema = unique("evpg_mig");
    let store = PostgresEventStore::builder(pool.clone())
        .schema(&schema)
        .build()
        .unwrap();
    // Building the store changed nothing: the schema does not exist yet.
    let exists: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM information_schema.schemata WHERE schema_name = $1)",
    )
    .bind(&schema)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(!exists);
    assert!(store.stream_version("s").await.is_err());
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    PostgresEventStore::migrate_schema(&pool, &schema)
        .await
        .unwrap();
    assert_eq!(store.stream_version("s").await.unwrap(), 0);
    assert!(
        PostgresEventStore::builder(pool.clone())
            .schema("bad\"; drop")
            .build()
            .is_err()
    );
    sqlx::query(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .execute(&pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn append_load_round_trip_keeps_every_field() {
    let fx = Fixture::new().await;
    let store = &fx.store;
    let first = Event::new(
        "order.placed",
        json!({ "total": 42.5, "items": [1, 2], "big": u64::MAX }),
    )
    .unwrap()
    .with_metadata(
        Metadata::default()
            .tenant("acme")
            .user("u-1")
            .request("r-1")
            .trace("t-1")
            .with("k", json!({ "x": 1 })),
    )
    .with_correlation("c-1")
    .with_causation("cause-1")
    .with_source("orders")
    .with_version(3);
    let second = ev("order.paid", 2).caused_by(&first);
    let recorded = store
        .append_batch(
            "order-1",
            ExpectedVersion::NoStream,
            vec![first.clone(), second],
        )
        .await
        .unwrap();
    assert_eq!(recorded.len(), 2);
    assert_eq!(recorded[0].stream_version, Some(1));
    assert_eq!(recorded[1].stream_version, Some(2));
    assert!(recorded[0].position < recorded[1].position);
    assert_eq!(recorded[0].id, first.id);

    let loaded = store.load_stream("order-1", 0).await.unwrap();
    assert_eq!(loaded, recorded, "loaded events equal the recorded ones");
    assert_eq!(
        store.load_stream("order-1", 2).await.unwrap(),
        recorded[1..]
    );
    assert_eq!(store.stream_version("order-1").await.unwrap(), 2);
    assert_eq!(store.stream_version("nope").await.unwrap(), 0);
    assert!(store.load_stream("nope", 0).await.unwrap().is_empty());

    let all = store.read_all(0, 10).await.unwrap();
    assert_eq!(all, recorded);
    assert_eq!(
        store.head_position().await.unwrap(),
        recorded[1].position.unwrap()
    );
    assert_eq!(
        store
            .read_all(recorded[0].position.unwrap(), 10)
            .await
            .unwrap(),
        recorded[1..]
    );

    // Single appends continue the stream; positions grow.
    let third = store
        .append("order-1", ExpectedVersion::Exact(2), ev("order.shipped", 3))
        .await
        .unwrap();
    assert_eq!(third.stream_version, Some(3));
    assert!(third.position > recorded[1].position);

    // Criteria.
    let by_type = store
        .load(&EventCriteria::all().event_types(["order.paid", "order.shipped"]))
        .await
        .unwrap();
    assert_eq!(by_type.len(), 2);
    let by_tenant = store
        .load(&EventCriteria::all().tenant_id("acme"))
        .await
        .unwrap();
    assert_eq!(by_tenant.len(), 2, "the caused event inherits the tenant");
    let by_corr = store
        .load(&EventCriteria::all().correlation_id("c-1"))
        .await
        .unwrap();
    assert_eq!(by_corr.len(), 2);
    let limited = store.load(&EventCriteria::all().limit(1)).await.unwrap();
    assert_eq!(limited, recorded[..1]);
    let after = store
        .load(&EventCriteria::all().after_position(recorded[1].position.unwrap()))
        .await
        .unwrap();
    assert_eq!(after, vec![third.clone()]);
    let window = store
        .load(
            &EventCriteria::all()
                .since(first.timestamp)
                .until(third.timestamp)
                .stream_id("order-1"),
        )
        .await
        .unwrap();
    assert_eq!(window.len(), 2);
    fx.cleanup().await;
}

#[tokio::test]
async fn conflicts_are_typed_and_exactly_one_racer_wins() {
    let fx = Fixture::new().await;
    let store = &fx.store;
    store
        .append("acc", ExpectedVersion::NoStream, ev("acc.opened", 1))
        .await
        .unwrap();
    match store
        .append("acc", ExpectedVersion::NoStream, ev("acc.opened", 2))
        .await
    {
        Err(Error::Conflict {
            stream,
            expected,
            actual,
        }) => {
            assert_eq!(stream, "acc");
            assert_eq!(expected, ExpectedVersion::NoStream);
            assert_eq!(actual, 1);
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let err = store
        .append("acc", ExpectedVersion::Exact(5), ev("acc.x", 1))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Conflict { actual: 1, .. }), "{err}");

    // Racers with the same expected version: exactly one wins each round.
    for round in 0..10u64 {
        let version = store.stream_version("acc").await.unwrap();
        let tasks: Vec<_> = (0..4)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .append_batch(
                            "acc",
                            ExpectedVersion::Exact(version),
                            vec![ev("acc.deposited", i), ev("acc.deposited", i + 100)],
                        )
                        .await
                })
            })
            .collect();
        let mut wins = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(events) => {
                    wins += 1;
                    assert_eq!(events[0].stream_version, Some(version + 1));
                }
                Err(Error::Conflict { actual, .. }) => assert_eq!(actual, version + 2),
                Err(other) => panic!("unexpected error {other}"),
            }
        }
        assert_eq!(wins, 1, "round {round}");
        assert_eq!(store.stream_version("acc").await.unwrap(), version + 2);
    }
    let versions: Vec<u64> = store
        .load_stream("acc", 0)
        .await
        .unwrap()
        .iter()
        .map(|e| e.stream_version.unwrap())
        .collect();
    assert_eq!(versions, (1..=versions.len() as u64).collect::<Vec<_>>());
    fx.cleanup().await;
}

#[tokio::test]
async fn any_version_writers_to_one_stream_all_land_contiguously() {
    let fx = Fixture::new().await;
    let tasks: Vec<_> = (0..6)
        .map(|w| {
            let store = fx.store.clone();
            tokio::spawn(async move {
                for i in 0..20 {
                    store
                        .append("shared", ExpectedVersion::Any, ev("x.y", w * 100 + i))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let events = fx.store.load_stream("shared", 0).await.unwrap();
    assert_eq!(events.len(), 120);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.stream_version, Some(i as u64 + 1));
    }
    fx.cleanup().await;
}

#[tokio::test]
async fn appending_stored_ids_follows_the_idempotency_rule() {
    let fx = Fixture::new().await;
    let store = &fx.store;
    let batch = vec![ev("a.b", 1), ev("a.b", 2)];
    let recorded = store
        .append_batch("s", ExpectedVersion::NoStream, batch.clone())
        .await
        .unwrap();
    // The same batch again (a retry): no new rows, the stored copies come back, whatever the
    // expected version says (the id check comes first).
    for expected in [
        ExpectedVersion::NoStream,
        ExpectedVersion::Any,
        ExpectedVersion::Exact(2),
    ] {
        let again = store
            .append_batch("s", expected, batch.clone())
            .await
            .unwrap();
        assert_eq!(again, recorded);
    }
    assert_eq!(store.stream_version("s").await.unwrap(), 2);
    // Some stored, some new: typed duplicate, nothing written.
    let mixed = vec![batch[0].clone(), ev("a.b", 3)];
    match store.append_batch("s", ExpectedVersion::Any, mixed).await {
        Err(Error::DuplicateEvent { id, stream }) => {
            assert_eq!(id, batch[0].id);
            assert_eq!(stream, "s");
        }
        other => panic!("expected DuplicateEvent, got {other:?}"),
    }
    // Stored in another stream: duplicate as well.
    let err = store
        .append("other", ExpectedVersion::Any, batch[1].clone())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::DuplicateEvent { .. }), "{err}");
    // The same id twice in one batch is refused up front.
    let e = ev("a.b", 9);
    let err = store
        .append_batch("s", ExpectedVersion::Any, vec![e.clone(), e])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    assert_eq!(store.stream_version("s").await.unwrap(), 2);
    assert_eq!(store.stream_version("other").await.unwrap(), 0);
    assert_eq!(store.read_all(0, 100).await.unwrap().len(), 2);
    fx.cleanup().await;
}

#[tokio::test]
async fn a_batch_of_10000_events_is_one_call() {
    let fx = Fixture::new().await;
    let events: Vec<Event> = (0..10_000).map(|i| ev("bulk.item", i)).collect();
    let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
    let recorded = fx
        .store
        .append_batch("bulk", ExpectedVersion::NoStream, events)
        .await
        .unwrap();
    assert_eq!(recorded.len(), 10_000);
    assert_eq!(recorded.last().unwrap().stream_version, Some(10_000));
    let loaded = fx.store.load_stream("bulk", 0).await.unwrap();
    assert_eq!(loaded.iter().map(|e| e.id).collect::<Vec<_>>(), ids);
    assert_eq!(loaded, recorded);
    // One transaction: every position shares the transaction id in its high bits.
    let tx: HashSet<u64> = loaded.iter().map(|e| e.position.unwrap() >> 20).collect();
    assert_eq!(tx.len(), 1);
    fx.cleanup().await;
}

#[tokio::test]
async fn randomized_concurrent_writers_and_a_follower_agree() {
    const WRITERS: usize = 8;
    const APPENDS: usize = 150;
    let fx = Fixture::with_pool_size(16).await;
    let (seen, handler) = recorder();
    let _sub = fx
        .store
        .subscribe(EventCriteria::all(), handler)
        .await
        .unwrap();

    let tasks: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = fx.store.clone();
            tokio::spawn(async move {
                let mut committed = Vec::new();
                let mut rng = fastrand::Rng::with_seed(w as u64 * 7919 + 1);
                let stream = format!("writer-{w}");
                let mut version = 0u64;
                for i in 0..APPENDS {
                    let size = rng.usize(1..=3);
                    let events: Vec<Event> = (0..size)
                        .map(|k| ev("rand.event", (i * 10 + k) as u64))
                        .collect();
                    let pending = store
                        .begin_append(&stream, ExpectedVersion::Exact(version), events)
                        .await
                        .unwrap();
                    // Sleep inside the transaction so commits interleave out of position order.
                    let pause = rng.u64(0..4);
                    if pause > 0 {
                        tokio::time::sleep(Duration::from_millis(pause)).await;
                    }
                    if rng.u8(0..10) == 0 {
                        pending.rollback().await.unwrap();
                    } else {
                        let events = pending.commit().await.unwrap();
                        version += events.len() as u64;
                        committed.extend(events);
                    }
                }
                committed
            })
        })
        .collect();
    let mut committed = Vec::new();
    for t in tasks {
        committed.extend(t.await.unwrap());
    }
    let total = committed.len();
    eventually("the follower to catch up", || {
        seen.lock().unwrap().len() >= total
    })
    .await;
    // Give a duplicate (if any) a chance to show up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let delivered = seen.lock().unwrap().clone();

    let ids: HashSet<Uuid> = delivered.iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), delivered.len(), "duplicates delivered");
    let committed_ids: HashSet<Uuid> = committed.iter().map(|e| e.id).collect();
    assert_eq!(
        ids, committed_ids,
        "delivered set differs from committed set"
    );
    assert!(
        delivered.windows(2).all(|w| w[0].position < w[1].position),
        "not in global order"
    );
    let mut per_stream: HashMap<String, Vec<u64>> = HashMap::new();
    for e in &delivered {
        per_stream
            .entry(e.stream_id.clone().unwrap())
            .or_default()
            .push(e.stream_version.unwrap());
    }
    for (stream, versions) in per_stream {
        assert_eq!(
            versions,
            (1..=versions.len() as u64).collect::<Vec<_>>(),
            "stream {stream} out of order"
        );
    }
    // read_all agrees with the follower.
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let page = fx.store.read_all(after, 97).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.position.unwrap();
        all.extend(page);
    }
    assert_eq!(
        all.iter().map(|e| e.id).collect::<Vec<_>>(),
        delivered.iter().map(|e| e.id).collect::<Vec<_>>()
    );
    fx.cleanup().await;
}

#[tokio::test]
async fn subscribe_catches_up_then_follows_live() {
    let fx = Fixture::new().await;
    let store = &fx.store;
    for i in 0..25 {
        store
            .append(
                &format!("s-{}", i % 3),
                ExpectedVersion::Any,
                ev("sub.old", i),
            )
            .await
            .unwrap();
    }
    let skip = store.read_all(0, 5).await.unwrap();
    let (seen, handler) = recorder();
    let _sub = store
        .subscribe_with(
            EventCriteria::all()
                .after_position(skip[4].position.unwrap())
                .event_types(["sub.old", "sub.new"]),
            SubscribeOptions::new().batch_size(7),
            handler,
        )
        .await
        .unwrap();
    eventually("catch-up", || seen.lock().unwrap().len() == 20).await;
    for i in 0..10 {
        store
            .append("live", ExpectedVersion::Any, ev("sub.new", i))
            .await
            .unwrap();
        store
            .append("live", ExpectedVersion::Any, ev("sub.ignored", i))
            .await
            .unwrap();
    }
    eventually("live events", || seen.lock().unwrap().len() == 30).await;
    let seen = seen.lock().unwrap().clone();
    assert!(seen.windows(2).all(|w| w[0].position < w[1].position));
    assert!(seen.iter().all(|e| e.event_type != "sub.ignored"));
    fx.cleanup().await;
}

#[tokio::test]
async fn notify_wakes_a_follower_in_another_process() {
    // Two stores over separate pools stand in for two processes: the follower polls only every
    // minute, so only the NOTIFY can wake it in time.
    let fx = Fixture::new().await;
    let other_pool = pool(4).await;
    let other = PostgresEventStore::builder(other_pool.clone())
        .schema(&fx.schema)
        .poll_interval(Duration::from_secs(60))
        .build()
        .unwrap();
    let mut signal = other.commit_signal();
    // Let the listener start.
    tokio::time::sleep(Duration::from_millis(300)).await;
    signal.borrow_and_update();
    fx.store
        .append("n", ExpectedVersion::Any, ev("n.one", 1))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), signal.changed())
        .await
        .expect("no notification reached the other store")
        .unwrap();
    let (seen, handler) = recorder();
    let _sub = other
        .subscribe(EventCriteria::all(), handler)
        .await
        .unwrap();
    eventually("first event", || seen.lock().unwrap().len() == 1).await;
    fx.store
        .append("n", ExpectedVersion::Any, ev("n.two", 2))
        .await
        .unwrap();
    // Well under the 60 s poll: woken by the notification.
    tokio::time::timeout(Duration::from_secs(10), async {
        while seen.lock().unwrap().len() < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the other process's follower was not woken by NOTIFY");
    drop(other);
    other_pool.close().await;
    fx.cleanup().await;
}

#[tokio::test]
async fn hostile_text_is_bound_never_spliced() {
    let fx = Fixture::new().await;
    let store = &fx.store;
    let nasty = [
        "it's",
        "a\"b",
        "x'; DROP TABLE events; --",
        "-- comment",
        "semi;colon",
        "$1",
        "ünïcödé ✓ 日本語 🚀",
        "back\\slash",
        "/* c */",
    ];
    let mut appended = Vec::new();
    for (i, text) in nasty.iter().enumerate() {
        let event = Event::new(
            "hostile.text",
            json!({ "text": text, "key": { *text: text } }),
        )
        .unwrap()
        .with_metadata(
            Metadata::default()
                .tenant(*text)
                .user(*text)
                .request(*text)
                .trace(*text)
                .with(*text, *text),
        )
        .with_correlation(*text)
        .with_causation(*text)
        .with_source(*text);
        appended.push(
            store
                .append(text, ExpectedVersion::Any, event)
                .await
                .unwrap(),
        );
        assert_eq!(store.stream_version(text).await.unwrap(), 1, "{i}");
    }
    for (text, event) in nasty.iter().zip(&appended) {
        assert_eq!(
            store.load_stream(text, 0).await.unwrap(),
            vec![event.clone()]
        );
        for criteria in [
            EventCriteria::all().stream_id(*text),
            EventCriteria::all().tenant_id(*text),
            EventCriteria::all().correlation_id(*text),
            EventCriteria::all()
                .stream_id(*text)
                .tenant_id(*text)
                .correlation_id(*text)
                .event_types(["hostile.text", text]),
        ] {
            assert_eq!(
                store.load(&criteria).await.unwrap(),
                vec![event.clone()],
                "{criteria:?}"
            );
        }
    }
    // Criteria that can match nothing, NUL included, give nothing and no error.
    for text in ["nul\0byte", "'", "x' OR '1'='1", "\0"] {
        for criteria in [
            EventCriteria::all().stream_id(text),
            EventCriteria::all().tenant_id(text),
            EventCriteria::all().correlation_id(text),
            EventCriteria::all().event_types([text]),
        ] {
            assert!(
                store.load(&criteria).await.unwrap().is_empty(),
                "{criteria:?}"
            );
        }
        assert!(
            store
                .load_stream(text, 0)
                .await
                .map(|v| v.is_empty())
                .unwrap_or(true)
        );
    }
    // A NUL in a stream id is refused before anything is sent.
    let err = store
        .append("nul\0stream", ExpectedVersion::Any, ev("a.b", 1))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidStreamId { .. }), "{err}");
    // The table is still there and whole.
    assert_eq!(store.read_all(0, 100).await.unwrap().len(), nasty.len());
    fx.cleanup().await;
}

#[tokio::test]
async fn a_rejected_payload_fails_the_whole_batch() {
    let fx = Fixture::new().await;
    let store = &fx.store;
    store
        .append("s", ExpectedVersion::NoStream, ev("ok.first", 0))
        .await
        .unwrap();
    let bad = Event::new("bad.payload", json!({ "text": "nul \u{0000} inside" })).unwrap();
    let batch = vec![ev("ok.a", 1), bad, ev("ok.b", 2)];
    let err = store
        .append_batch("s", ExpectedVersion::Exact(1), batch)
        .await
        .unwrap_err();
    match &err {
        Error::InvalidArgument(message) => assert!(message.contains("22P05"), "{message}"),
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
    // NUL in a text column (metadata tenant) is rejected the same way.
    let bad_tenant = ev("ok.c", 3).with_metadata(Metadata::default().tenant("a\0b"));
    let err = store
        .append_batch(
            "s",
            ExpectedVersion::Exact(1),
            vec![ev("ok.d", 4), bad_tenant],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    // Nothing of either batch was written; the stream goes on normally.
    assert_eq!(store.stream_version("s").await.unwrap(), 1);
    assert_eq!(store.read_all(0, 100).await.unwrap().len(), 1);
    store
        .append("s", ExpectedVersion::Exact(1), ev("ok.next", 5))
        .await
        .unwrap();
    fx.cleanup().await;
}

#[tokio::test]
async fn a_killed_connection_is_a_typed_error_and_the_next_call_works() {
    let fx = Fixture::new().await;
    let store = &fx.store;
    let admin = pool(1).await;
    // Kill the backend in the middle of an append (between insert and commit).
    let pending = store
        .begin_append("k", ExpectedVersion::NoStream, vec![ev("k.one", 1)])
        .await
        .unwrap();
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE state = 'idle in transaction' AND query LIKE '%' || $1 || '%') t",
    )
    .bind(&fx.schema)
    .fetch_one(&admin)
    .await
    .unwrap();
    assert_eq!(killed, 1);
    let err = pending.commit().await.unwrap_err();
    assert!(
        matches!(err, Error::Connect { .. }),
        "expected Connect, got {err:?}"
    );
    // Nothing was committed; the next calls work.
    assert_eq!(store.stream_version("k").await.unwrap(), 0);
    store
        .append("k", ExpectedVersion::NoStream, ev("k.two", 2))
        .await
        .unwrap();

    // An idle pooled connection killed under a pool that does not test connections: the call
    // that meets it fails with a typed error, the next one works.
    let raw_pool = PgPoolOptions::new()
        .max_connections(1)
        .test_before_acquire(false)
        .connect(&database_url())
        .await
        .unwrap();
    let store2 = PostgresEventStore::builder(raw_pool.clone())
        .schema(&fx.schema)
        .build()
        .unwrap();
    assert_eq!(store2.stream_version("k").await.unwrap(), 1);
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&raw_pool)
        .await
        .unwrap();
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(pid)
        .execute(&admin)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let first = store2
        .append("k", ExpectedVersion::Exact(1), ev("k.three", 3))
        .await;
    match first {
        Err(Error::Connect { .. } | Error::Backend { .. }) => {
            store2
                .append("k", ExpectedVersion::Exact(1), ev("k.three", 3))
                .await
                .unwrap();
        }
        Err(other) => panic!("expected a typed connection error, got {other:?}"),
        // sqlx noticed the dead connection on its own: fine too.
        Ok(_) => {}
    }
    assert_eq!(store2.stream_version("k").await.unwrap(), 2);
    drop(store2);
    raw_pool.close().await;
    admin.close().await;
    fx.cleanup().await;
}

#[tokio::test]
async fn snapshots_keep_the_latest() {
    let fx = Fixture::new().await;
    let snapshots = fx.store.snapshots();
    assert!(snapshots.load_snapshot("acc-1").await.unwrap().is_none());
    let snap = |version: u64, schema_version: u32| Snapshot {
        stream_id: "acc-1".into(),
        version,
        schema_version,
        state: json!({ "balance": version * 10, "name": "it's \"quoted\"" }),
        taken_at: chrono::DateTime::from_timestamp(1_700_000_000 + version as i64, 0).unwrap(),
    };
    snapshots.save_snapshot(snap(5, 1)).await.unwrap();
    assert_eq!(
        snapshots.load_snapshot("acc-1").await.unwrap(),
        Some(snap(5, 1))
    );
    snapshots.save_snapshot(snap(3, 1)).await.unwrap();
    assert_eq!(
        snapshots.load_snapshot("acc-1").await.unwrap(),
        Some(snap(5, 1)),
        "an older snapshot is ignored"
    );
    snapshots.save_snapshot(snap(8, 2)).await.unwrap();
    assert_eq!(
        snapshots.load_snapshot("acc-1").await.unwrap(),
        Some(snap(8, 2))
    );
    let by_new = PostgresSnapshotStore::in_schema(fx.pool.clone(), &fx.schema).unwrap();
    assert_eq!(
        by_new.load_snapshot("acc-1").await.unwrap(),
        Some(snap(8, 2))
    );
    assert!(by_new.load_snapshot("nul\0").await.unwrap().is_none());
    fx.cleanup().await;
}

#[tokio::test]
async fn checkpoints_persist() {
    let fx = Fixture::new().await;
    let checkpoints = fx.store.checkpoints();
    assert_eq!(checkpoints.load_checkpoint("relay").await.unwrap(), 0);
    checkpoints.save_checkpoint("relay", 42).await.unwrap();
    checkpoints.save_checkpoint("proj'; --", 7).await.unwrap();
    assert_eq!(checkpoints.load_checkpoint("relay").await.unwrap(), 42);
    assert_eq!(checkpoints.load_checkpoint("proj'; --").await.unwrap(), 7);
    checkpoints.save_checkpoint("relay", 99).await.unwrap();
    let again = fx.store.checkpoints();
    assert_eq!(again.load_checkpoint("relay").await.unwrap(), 99);
    fx.cleanup().await;
}

/// The hook behind the kit's `can_hold_append_open`: `begin_append`, with a reader that waits
/// only briefly for open transactions (every global reader on the server waits for them, so the
/// kit keeps them open only briefly).
struct HoldOpen {
    store: PostgresEventStore,
    impatient: PostgresEventStore,
}

struct Held(PendingAppend);

#[async_trait]
impl OpenAppend for Held {
    fn events(&self) -> &[Event] {
        self.0.events()
    }

    async fn commit(self: Box<Self>) -> eventflow::Result<Vec<Event>> {
        self.0.commit().await
    }

    async fn rollback(self: Box<Self>) -> eventflow::Result<()> {
        self.0.rollback().await
    }
}

#[async_trait]
impl HoldsAppendOpen for HoldOpen {
    async fn begin_append(
        &self,
        stream_id: &str,
        expected: ExpectedVersion,
        events: Vec<Event>,
    ) -> eventflow::Result<Box<dyn OpenAppend>> {
        let pending = self.store.begin_append(stream_id, expected, events).await?;
        Ok(Box::new(Held(pending)))
    }

    fn reader(&self) -> Option<Arc<dyn EventStore>> {
        Some(Arc::new(self.impatient.clone()))
    }
}

/// The store conformance kit, gap safety across an open transaction and durability included;
/// stores of one kit scope share a schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn store_conformance_kit() {
    let pool = pool(16).await;
    let schemas: Arc<Mutex<HashSet<String>>> = Arc::default();
    let make = {
        let (pool, schemas) = (pool.clone(), schemas.clone());
        move |scope: Scope| {
            let (pool, schemas) = (pool.clone(), schemas.clone());
            async move {
                let schema = scope.name().to_owned();
                schemas.lock().unwrap().insert(schema.clone());
                let store = PostgresEventStore::builder(pool.clone())
                    .schema(&schema)
                    .poll_interval(Duration::from_millis(200))
                    .settle_timeout(Duration::from_secs(5))
                    .build()
                    .unwrap();
                store.migrate().await.unwrap();
                let impatient = PostgresEventStore::builder(pool)
                    .schema(&schema)
                    .settle_timeout(Duration::from_millis(20))
                    .build()
                    .unwrap();
                let hook = HoldOpen {
                    store: store.clone(),
                    impatient,
                };
                TestStore::new(Arc::new(store)).with_hold_open(Arc::new(hook))
            }
        }
    };
    let caps = StoreCapabilities {
        can_hold_append_open: true,
        durable: true,
    };
    let report = conformance::store::run(caps, make).await;
    assert!(report.skipped().is_empty(), "{report}");
    let schemas = schemas.lock().unwrap().clone();
    for schema in schemas {
        sqlx::query(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
            .execute(&pool)
            .await
            .unwrap();
    }
    pool.close().await;
}

#[tokio::test]
async fn relay_publishes_every_committed_event_after_a_crash() {
    use eventflow::testing::RecordingBus;
    let fx = Fixture::new().await;
    // First relay: its bus refuses everything (closed), so nothing is published or
    // checkpointed; the relay keeps retrying until it is killed.
    let refusing = Arc::new(RecordingBus::new());
    eventflow::EventBus::close(&*refusing).await.unwrap();
    let stuck = fx.store.clone().with_bus(refusing);
    let mut committed = Vec::new();
    for i in 0..5 {
        committed.push(
            stuck
                .append(
                    &format!("r-{}", i % 2),
                    ExpectedVersion::Any,
                    ev("relay.event", i),
                )
                .await
                .unwrap(),
        );
    }
    committed.extend(
        stuck
            .append_batch(
                "r-batch",
                ExpectedVersion::NoStream,
                (10..15).map(|i| ev("relay.batch", i)).collect(),
            )
            .await
            .unwrap(),
    );
    // A rolled-back append and a failed batch must never reach the bus.
    let doomed = stuck
        .begin_append(
            "r-doomed",
            ExpectedVersion::NoStream,
            vec![ev("relay.doomed", 99)],
        )
        .await
        .unwrap();
    let doomed_id = doomed.events()[0].id;
    doomed.rollback().await.unwrap();
    let bad = Event::new("relay.bad", json!({ "s": "\u{0000}" })).unwrap();
    let bad_id = bad.id;
    assert!(
        stuck
            .append_batch("r-bad", ExpectedVersion::Any, vec![ev("relay.bad", 1), bad])
            .await
            .is_err()
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        stuck.checkpoints().load_checkpoint("relay").await.unwrap(),
        0
    );
    // The crash: the relay dies with everything committed and nothing published.
    drop(stuck);

    // A new process: its relay starts from the durable checkpoint and publishes everything.
    let bus = Arc::new(RecordingBus::new());
    let store = fx.store.clone().with_bus(bus.clone());
    store.flush(WAIT).await.unwrap();
    // `flush` waits for what is readable now; under heavy concurrent load (other tests holding
    // transactions) that may be less than everything, so also wait for the count.
    eventually("every event on the bus", || bus.len() >= committed.len()).await;
    let published = bus.events();
    assert_eq!(
        published.iter().map(|e| e.id).collect::<Vec<_>>(),
        committed.iter().map(|e| e.id).collect::<Vec<_>>(),
        "every committed event, in global order"
    );
    assert!(
        published
            .iter()
            .all(|e| e.id != doomed_id && e.id != bad_id)
    );
    // The checkpoint follows the publish; it ends at the last committed event.
    let last = committed.last().unwrap().position.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let status = store.relay_status().await.unwrap();
        let saved = store.checkpoints().load_checkpoint("relay").await.unwrap();
        if status.position == last && saved == last {
            break;
        }
        assert!(
            status.position <= last && saved <= last,
            "relay past the last event"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "relay checkpoint stuck at {saved}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // And it keeps following live.
    let live = store
        .append("r-live", ExpectedVersion::NoStream, ev("relay.live", 1))
        .await
        .unwrap();
    store.flush(WAIT).await.unwrap();
    eventually("the live event on the bus", || bus.len() > committed.len()).await;
    assert_eq!(bus.last().map(|e| e.id), Some(live.id));
    assert_eq!(bus.len(), committed.len() + 1);
    drop(store);
    fx.cleanup().await;
}
