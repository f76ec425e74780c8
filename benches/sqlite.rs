//! Benchmark: the SQLite event store against raw sqlx on the same table shape (a second file
//! with the same migrations, written with plain `INSERT`s: no version check, no idempotency),
//! same run, same pragmas (WAL, `synchronous = FULL`); then forwarding throughput from a SQLite
//! file to JetStream and to PostgreSQL, next to a raw loop that reads pages and publishes or
//! appends them (no checkpoint, no retry). Totals over interleaved rounds.
//!
//! The forwarding part needs NATS (`NATS_URL`) and PostgreSQL (`DATABASE_URL`). Run with
//! `cargo bench --workspace --all-features --bench sqlite`.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use eventflow::bus::nats::{NatsBus, NatsConfig};
use eventflow::postgres::{PgPoolOptions, PostgresEventStore};
use eventflow::relay::{ForwardTarget, Forwarder};
use eventflow::sqlite::{SqliteEventStore, SqlitePool};
use eventflow::{Event, EventBus, EventStore, ExpectedVersion};
use eventflow_benches::{header, per_second, report};
use serde_json::{Value, json};
use sqlx::{QueryBuilder, Sqlite};
use uuid::Uuid;

const ROUNDS: usize = 3;
const SINGLES: u64 = 300;
const BATCHES: u64 = 30;
const LOADED: u64 = 10_000;
const FORWARDED: u64 = 10_000;

const RAW_INSERT: &str = "INSERT INTO events (event_id, stream_id, stream_version, event_type, \
     schema_version, payload, metadata, tenant_id, correlation_id, causation_id, source, \
     occurred_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";

const RAW_LOAD: &str = "SELECT position, event_id, stream_id, stream_version, event_type, \
     schema_version, payload, metadata, correlation_id, causation_id, source, occurred_at \
     FROM events WHERE stream_id = ? AND stream_version >= ? ORDER BY stream_version";

fn event(n: u64) -> Event {
    Event::new(
        "bench.appended",
        json!({ "n": n, "note": "a reading of modest size" }),
    )
    .unwrap()
    .with_correlation("bench")
}

/// What a user's raw insert binds: the same columns our append writes.
fn push_raw(
    row: &mut sqlx::query_builder::Separated<'_, '_, Sqlite, &'static str>,
    e: &Event,
    stream: &str,
    version: i64,
) {
    row.push_bind(e.id)
        .push_bind(stream.to_owned())
        .push_bind(version)
        .push_bind(e.event_type.clone())
        .push_bind(i64::from(e.version))
        .push_bind(serde_json::to_string(&e.payload).unwrap())
        .push_bind(serde_json::to_string(&e.metadata).unwrap())
        .push_bind(e.metadata.tenant_id.clone())
        .push_bind(e.correlation_id.clone())
        .push_bind(e.causation_id.clone())
        .push_bind(e.source.clone())
        .push_bind(e.timestamp.timestamp_micros());
}

async fn raw_single(pool: &SqlitePool, e: &Event, stream: &str, version: i64) {
    sqlx::query(RAW_INSERT)
        .bind(e.id)
        .bind(stream)
        .bind(version)
        .bind(&e.event_type)
        .bind(i64::from(e.version))
        .bind(serde_json::to_string(&e.payload).unwrap())
        .bind(serde_json::to_string(&e.metadata).unwrap())
        .bind(&e.metadata.tenant_id)
        .bind(&e.correlation_id)
        .bind(&e.causation_id)
        .bind(&e.source)
        .bind(e.timestamp.timestamp_micros())
        .execute(pool)
        .await
        .unwrap();
}

async fn raw_batch(pool: &SqlitePool, events: &[Event], stream: &str, first_version: i64) {
    let mut tx = pool.begin().await.unwrap();
    let mut q = QueryBuilder::<Sqlite>::new(
        "INSERT INTO events (event_id, stream_id, stream_version, event_type, schema_version, \
         payload, metadata, tenant_id, correlation_id, causation_id, source, occurred_at) ",
    );
    q.push_values(events.iter().zip(first_version..), |mut row, (e, v)| {
        push_raw(&mut row, e, stream, v);
    });
    q.build().execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
}

/// A raw read: the rows decoded into the values a user needs, JSON parsed.
type RawRow = (
    i64,
    Uuid,
    String,
    i64,
    String,
    i64,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    i64,
);

async fn raw_load(pool: &SqlitePool, stream: &str) -> usize {
    let rows: Vec<RawRow> = sqlx::query_as(RAW_LOAD)
        .bind(stream)
        .bind(0i64)
        .fetch_all(pool)
        .await
        .unwrap();
    let mut n = 0;
    for row in &rows {
        let payload: Value = serde_json::from_str(&row.6).unwrap();
        let metadata: Value = serde_json::from_str(&row.7).unwrap();
        n += usize::from(!payload.is_null() && !metadata.is_null());
    }
    n
}

#[tokio::main]
async fn main() {
    let dir = tempfile_dir();
    header("SQLite store vs raw sqlx (same table shape, WAL, synchronous = FULL)");
    let ours = SqliteEventStore::open(dir.join("ours.db")).await.unwrap();
    let raw_store = SqliteEventStore::open(dir.join("raw.db")).await.unwrap();
    let raw = raw_store.pool().clone();

    let (mut ours_single, mut raw_single_t) = (Duration::ZERO, Duration::ZERO);
    let (mut ours_batch, mut raw_batch_t) = (Duration::ZERO, Duration::ZERO);
    for round in 0..ROUNDS {
        let stream = format!("single-{round}");
        let events: Vec<Event> = (0..SINGLES).map(event).collect();
        let start = Instant::now();
        for (v, e) in events.iter().enumerate() {
            ours.append(&stream, ExpectedVersion::Exact(v as u64), e.clone())
                .await
                .unwrap();
        }
        ours_single += start.elapsed();
        let start = Instant::now();
        for (v, e) in events.iter().enumerate() {
            raw_single(&raw, e, &stream, v as i64 + 1).await;
        }
        raw_single_t += start.elapsed();

        let stream = format!("batch-{round}");
        let batches: Vec<Vec<Event>> = (0..BATCHES)
            .map(|b| (0..100).map(|i| event(b * 100 + i)).collect())
            .collect();
        let start = Instant::now();
        for (b, batch) in batches.iter().enumerate() {
            ours.append_batch(
                &stream,
                ExpectedVersion::Exact(b as u64 * 100),
                batch.clone(),
            )
            .await
            .unwrap();
        }
        ours_batch += start.elapsed();
        let start = Instant::now();
        for (b, batch) in batches.iter().enumerate() {
            raw_batch(&raw, batch, &stream, b as i64 * 100 + 1).await;
        }
        raw_batch_t += start.elapsed();
    }
    let singles = SINGLES * ROUNDS as u64;
    report(
        "append 1 event (own transaction)",
        per_second(singles, ours_single),
        per_second(singles, raw_single_t),
    );
    let batched = BATCHES * 100 * ROUNDS as u64;
    report(
        "append_batch of 100 events",
        per_second(batched, ours_batch),
        per_second(batched, raw_batch_t),
    );

    // load_stream of 10,000 events.
    let long: Vec<Event> = (0..LOADED).map(event).collect();
    for (chunk, events) in long.chunks(1_000).enumerate() {
        ours.append_batch(
            "long",
            ExpectedVersion::Exact(chunk as u64 * 1_000),
            events.to_vec(),
        )
        .await
        .unwrap();
        raw_batch(&raw, events, "long", chunk as i64 * 1_000 + 1).await;
    }
    let (mut ours_load, mut raw_load_t) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..ROUNDS * 2 {
        let start = Instant::now();
        assert_eq!(
            ours.load_stream("long", 0).await.unwrap().len() as u64,
            LOADED
        );
        ours_load += start.elapsed();
        let start = Instant::now();
        assert_eq!(raw_load(&raw, "long").await as u64, LOADED);
        raw_load_t += start.elapsed();
    }
    let loaded = LOADED * ROUNDS as u64 * 2;
    report(
        "load_stream of 10,000 events",
        per_second(loaded, ours_load),
        per_second(loaded, raw_load_t),
    );

    forwarding(&dir).await;
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("evbench_sqlite_{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A local file holding `FORWARDED` events in 20 streams.
async fn edge(path: std::path::PathBuf) -> SqliteEventStore {
    let store = SqliteEventStore::builder(path)
        .synchronous_normal()
        .open()
        .await
        .unwrap();
    for chunk in 0..FORWARDED / 100 {
        let batch = (0..100).map(|i| event(chunk * 100 + i)).collect();
        store
            .append_batch(
                &format!("meter-{}", chunk % 20),
                ExpectedVersion::Any,
                batch,
            )
            .await
            .unwrap();
    }
    store
}

/// Time until a forwarder from a fresh copy of the events has delivered them all.
async fn forward_all(local: SqliteEventStore, target: ForwardTarget) -> Duration {
    let head = local.head_position().await.unwrap();
    let start = Instant::now();
    let forwarder = Forwarder::new(local, target).batch_size(500).spawn();
    forwarder
        .wait_for(head, Duration::from_secs(120))
        .await
        .unwrap();
    let elapsed = start.elapsed();
    forwarder.stop().await;
    elapsed
}

/// The raw loop: read pages of 500 and hand each to `send`.
async fn raw_forward<F, Fut>(local: &SqliteEventStore, mut send: F) -> Duration
where
    F: FnMut(Vec<Event>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let start = Instant::now();
    let mut after = 0;
    loop {
        let page = local.read_all(after, 500).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.position.unwrap();
        send(page).await;
    }
    start.elapsed()
}

async fn forwarding(dir: &std::path::Path) {
    header("Forwarding 10,000 events from a SQLite file (batches of 500)");
    let nats_url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let database_url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let local = edge(dir.join("edge.db")).await;

    // JetStream: ours through a forwarder, raw as plain publish_batch calls, each into a
    // stream of its own.
    let (mut ours_js, mut raw_js) = (Duration::ZERO, Duration::ZERO);
    let pid = std::process::id();
    for round in 0..ROUNDS {
        let copy = edge(dir.join(format!("edge-js-{round}.db"))).await;
        let mut config = NatsConfig::jetstream(&nats_url);
        config.stream_name = format!("EVBENCH_FWD_{pid}_{round}");
        config.subject_prefix = format!("evbench_fwd_{pid}_{round}");
        let bus: Arc<dyn EventBus> = Arc::new(NatsBus::connect(config.clone()).await.unwrap());
        ours_js += forward_all(copy, ForwardTarget::connected_bus(bus)).await;
        let mut raw_config = config.clone();
        raw_config.stream_name = format!("EVBENCH_RAW_{pid}_{round}");
        raw_config.subject_prefix = format!("evbench_raw_{pid}_{round}");
        let raw_bus = NatsBus::connect(raw_config.clone()).await.unwrap();
        raw_js += raw_forward(&local, |page| {
            let bus = &raw_bus;
            async move { bus.publish_batch(page).await.unwrap() }
        })
        .await;
        let js = async_nats::jetstream::new(async_nats::connect(&nats_url).await.unwrap());
        for name in [&config.stream_name, &raw_config.stream_name] {
            js.delete_stream(name).await.unwrap();
        }
    }
    let total = FORWARDED * ROUNDS as u64;
    report(
        "SQLite -> JetStream (forwarder vs raw publish)",
        per_second(total, ours_js),
        per_second(total, raw_js),
    );

    // PostgreSQL: ours through a forwarder, raw as plain append_batch calls per stream run.
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect(&database_url)
        .await
        .unwrap();
    let (mut ours_pg, mut raw_pg) = (Duration::ZERO, Duration::ZERO);
    for round in 0..ROUNDS {
        let copy = edge(dir.join(format!("edge-pg-{round}.db"))).await;
        let (ours_schema, raw_schema) = (
            format!("evbench_fwd_{pid}_{round}"),
            format!("evbench_raw_{pid}_{round}"),
        );
        let central = |schema: &str| {
            PostgresEventStore::builder(pool.clone())
                .schema(schema)
                .build()
                .unwrap()
        };
        let (ours_central, raw_central) = (central(&ours_schema), central(&raw_schema));
        ours_central.migrate().await.unwrap();
        raw_central.migrate().await.unwrap();
        ours_pg += forward_all(copy, ForwardTarget::connected_store(Arc::new(ours_central))).await;
        raw_pg += raw_forward(&local, |page| {
            let central = &raw_central;
            async move {
                let mut rest = page.as_slice();
                while let Some(first) = rest.first() {
                    let run = rest
                        .iter()
                        .take_while(|e| e.stream_id == first.stream_id)
                        .count();
                    central
                        .append_batch(
                            first.stream_id.as_deref().unwrap(),
                            ExpectedVersion::Any,
                            rest[..run].to_vec(),
                        )
                        .await
                        .unwrap();
                    rest = &rest[run..];
                }
            }
        })
        .await;
        for schema in [&ours_schema, &raw_schema] {
            sqlx::query(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
                .execute(&pool)
                .await
                .unwrap();
        }
    }
    report(
        "SQLite -> PostgreSQL (forwarder vs raw append)",
        per_second(total, ours_pg),
        per_second(total, raw_pg),
    );
}
