//! Benchmark: the PostgreSQL event store against raw sqlx on the same table shape, same run.
//!
//! Needs the server at `DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/test`).
//! Works in its own schema (`evbench_postgres`, dropped at the end); the raw baseline writes to
//! `raw_events` there, a table with the same columns and indexes whose position is a plain
//! identity column and which has no version check. Write figures are totals over six rounds,
//! ours and raw interleaved, tables truncated before each; read figures are totals over six interleaved rounds. Run with
//! `cargo bench --workspace --all-features --bench postgres`.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eventflow::postgres::PostgresEventStore;
use eventflow::{Event, EventCriteria, EventStore, EventStoreExt, ExpectedVersion, Metadata};
use eventflow_benches::{header, per_second, report};
use serde_json::{Value, json};
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use sqlx::types::Json;
use sqlx::types::chrono::{DateTime, Utc};
use uuid::Uuid;

const SCHEMA: &str = "evbench_postgres";
const ROUNDS: usize = 6;

const RAW_TABLE: &str = "
CREATE TABLE evbench_postgres.raw_events (
    position        bigint      GENERATED ALWAYS AS IDENTITY,
    transaction_id  bigint      NOT NULL DEFAULT 0,
    event_id        uuid        NOT NULL,
    stream_id       text        NOT NULL,
    stream_version  bigint      NOT NULL,
    event_type      text        NOT NULL,
    schema_version  integer     NOT NULL,
    payload         jsonb       NOT NULL,
    metadata        jsonb       NOT NULL,
    tenant_id       text,
    correlation_id  text,
    causation_id    text,
    source          text,
    occurred_at     timestamptz NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (position),
    UNIQUE (event_id),
    UNIQUE (stream_id, stream_version)
);
CREATE INDEX ON evbench_postgres.raw_events (event_type, position);
CREATE INDEX ON evbench_postgres.raw_events (correlation_id, position) WHERE correlation_id IS NOT NULL;
CREATE INDEX ON evbench_postgres.raw_events (causation_id) WHERE causation_id IS NOT NULL;
CREATE INDEX ON evbench_postgres.raw_events (tenant_id, position) WHERE tenant_id IS NOT NULL;
";

const RAW_INSERT: &str = "INSERT INTO evbench_postgres.raw_events (event_id, stream_id, \
     stream_version, event_type, schema_version, payload, metadata, tenant_id, correlation_id, \
     causation_id, source, occurred_at) \
     VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7::jsonb, $8, $9, $10, $11, $12)";

const RAW_UNNEST: &str = "INSERT INTO evbench_postgres.raw_events (event_id, stream_id, \
     stream_version, event_type, schema_version, payload, metadata, tenant_id, correlation_id, \
     causation_id, source, occurred_at) \
     SELECT b.id, $1, $2 + b.n, b.ty, b.sv, b.pl::jsonb, b.md::jsonb, b.te, b.co, b.ca, b.so, b.oc \
     FROM unnest($3::uuid[], $4::text[], $5::int4[], $6::text[], $7::text[], $8::text[], \
     $9::text[], $10::text[], $11::text[], $12::timestamptz[]) \
     WITH ORDINALITY AS b(id, ty, sv, pl, md, te, co, ca, so, oc, n)";

const RAW_COLUMNS: &str = "position, event_id, stream_id, stream_version, event_type, \
     schema_version, payload, metadata, correlation_id, causation_id, source, occurred_at";

/// What a raw reader decodes a row into.
#[allow(dead_code)]
#[derive(sqlx::FromRow)]
struct RawRow {
    position: i64,
    event_id: Uuid,
    stream_id: String,
    stream_version: i64,
    event_type: String,
    schema_version: i32,
    payload: Value,
    metadata: Json<Metadata>,
    correlation_id: Option<String>,
    causation_id: Option<String>,
    source: Option<String>,
    occurred_at: DateTime<Utc>,
}

fn event(n: u64) -> Event {
    Event::new(
        "bench.item_added",
        json!({ "order_id": format!("o-{n}"), "sku": "sku-123", "qty": n % 7, "price": 12.5 }),
    )
    .unwrap()
    .with_metadata(Metadata::default().tenant("acme").user("u-1"))
    .with_correlation(format!("c-{}", n % 100))
    .with_source("bench")
}

/// The raw side's column arrays for a batch (the same encoding work the store does).
struct RawBatch {
    ids: Vec<Uuid>,
    types: Vec<String>,
    versions: Vec<i32>,
    payloads: Vec<String>,
    metadata: Vec<String>,
    tenants: Vec<Option<String>>,
    correlations: Vec<Option<String>>,
    causations: Vec<Option<String>>,
    sources: Vec<Option<String>>,
    occurred: Vec<DateTime<Utc>>,
}

fn raw_batch(events: &[Event]) -> RawBatch {
    RawBatch {
        ids: events.iter().map(|e| e.id).collect(),
        types: events.iter().map(|e| e.event_type.clone()).collect(),
        versions: events.iter().map(|e| e.version as i32).collect(),
        payloads: events
            .iter()
            .map(|e| serde_json::to_string(&e.payload).unwrap())
            .collect(),
        metadata: events
            .iter()
            .map(|e| serde_json::to_string(&e.metadata).unwrap())
            .collect(),
        tenants: events
            .iter()
            .map(|e| e.metadata.tenant_id.clone())
            .collect(),
        correlations: events.iter().map(|e| e.correlation_id.clone()).collect(),
        causations: events.iter().map(|e| e.causation_id.clone()).collect(),
        sources: events.iter().map(|e| e.source.clone()).collect(),
        occurred: events.iter().map(|e| e.timestamp).collect(),
    }
}

async fn raw_insert_one(pool: &PgPool, stream: &str, version: i64, e: &Event) {
    sqlx::query(RAW_INSERT)
        .bind(e.id)
        .bind(stream)
        .bind(version)
        .bind(&e.event_type)
        .bind(e.version as i32)
        .bind(serde_json::to_string(&e.payload).unwrap())
        .bind(serde_json::to_string(&e.metadata).unwrap())
        .bind(&e.metadata.tenant_id)
        .bind(&e.correlation_id)
        .bind(&e.causation_id)
        .bind(&e.source)
        .bind(e.timestamp)
        .execute(pool)
        .await
        .unwrap();
}

async fn raw_unnest(pool: &PgPool, stream: &str, version: i64, events: &[Event]) {
    let b = raw_batch(events);
    sqlx::query(RAW_UNNEST)
        .bind(stream)
        .bind(version)
        .bind(&b.ids)
        .bind(&b.types)
        .bind(&b.versions)
        .bind(&b.payloads)
        .bind(&b.metadata)
        .bind(&b.tenants)
        .bind(&b.correlations)
        .bind(&b.causations)
        .bind(&b.sources)
        .bind(&b.occurred)
        .execute(pool)
        .await
        .unwrap();
}

/// CSV field: quoted, quotes doubled; empty unquoted for NULL.
fn csv(out: &mut String, field: Option<&str>) {
    if let Some(s) = field {
        out.push('"');
        out.push_str(&s.replace('"', "\"\""));
        out.push('"');
    }
}

async fn raw_copy(pool: &PgPool, stream: &str, version: i64, events: &[Event]) {
    let mut data = String::with_capacity(events.len() * 300);
    for (i, e) in events.iter().enumerate() {
        let payload = serde_json::to_string(&e.payload).unwrap();
        let metadata = serde_json::to_string(&e.metadata).unwrap();
        let fields = [
            Some(e.id.to_string()),
            Some(stream.to_owned()),
            Some((version + i as i64 + 1).to_string()),
            Some(e.event_type.clone()),
            Some(e.version.to_string()),
            Some(payload),
            Some(metadata),
            e.metadata.tenant_id.clone(),
            e.correlation_id.clone(),
            e.causation_id.clone(),
            e.source.clone(),
            Some(e.timestamp.to_rfc3339()),
        ];
        for (k, f) in fields.iter().enumerate() {
            if k > 0 {
                data.push(',');
            }
            csv(&mut data, f.as_deref());
        }
        data.push('\n');
    }
    let mut conn = pool.acquire().await.unwrap();
    let mut copy = conn
        .copy_in_raw(
            "COPY evbench_postgres.raw_events (event_id, stream_id, stream_version, event_type, \
             schema_version, payload, metadata, tenant_id, correlation_id, causation_id, source, \
             occurred_at) FROM STDIN (FORMAT csv)",
        )
        .await
        .unwrap();
    copy.send(data.as_bytes()).await.unwrap();
    copy.finish().await.unwrap();
}

async fn truncate(pool: &PgPool) {
    sqlx::query("TRUNCATE evbench_postgres.events, evbench_postgres.raw_events")
        .execute(pool)
        .await
        .unwrap();
}

/// Rates of ours and raw over `ROUNDS` rounds each, interleaved (the order flips every round)
/// so both sides see the same background load; tables truncated before every run. Each rate is
/// all events over all time of that side.
async fn compare<O, OF, R, RF>(pool: &PgPool, n: u64, mut ours: O, mut raw: R) -> (f64, f64)
where
    O: FnMut() -> OF,
    OF: std::future::Future<Output = ()>,
    R: FnMut() -> RF,
    RF: std::future::Future<Output = ()>,
{
    let (mut ours_time, mut raw_time) = (Duration::ZERO, Duration::ZERO);
    for round in 0..ROUNDS {
        for side in [round % 2, 1 - round % 2] {
            truncate(pool).await;
            let start = Instant::now();
            if side == 0 {
                ours().await;
                ours_time += start.elapsed();
            } else {
                raw().await;
                raw_time += start.elapsed();
            }
        }
    }
    let total = n * ROUNDS as u64;
    (per_second(total, ours_time), per_second(total, raw_time))
}

/// Reads measure a steady state: freshly written rows are vacuumed (hint bits set, visibility
/// map built) and analyzed in both tables first, so neither side pays for that, nor races an
/// autovacuum, inside its timing.
async fn settle_tables(pool: &PgPool) {
    sqlx::query("VACUUM (ANALYZE) evbench_postgres.events, evbench_postgres.raw_events")
        .execute(pool)
        .await
        .unwrap();
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let pool = PgPoolOptions::new()
        .max_connections(16)
        // Both sides share this pool; no ping before each statement, so the figures compare
        // the statements themselves.
        .test_before_acquire(false)
        .connect(&url)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL is not reachable at {url}: {e}"));
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
        .execute(&pool)
        .await
        .unwrap();
    let store = PostgresEventStore::builder(pool.clone())
        .schema(SCHEMA)
        .build()
        .unwrap();
    store.migrate().await.unwrap();
    sqlx::raw_sql(RAW_TABLE).execute(&pool).await.unwrap();
    let total = Instant::now();
    // `cargo bench --bench postgres -- <word>` runs only the sections whose title has <word>.
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let run = |title: &str| filter.as_deref().is_none_or(|f| title.contains(f));

    if run("single-event append") {
        header("postgres: single-event append");
        let n = 500u64;
        let (ours, raw) = compare(
            &pool,
            n,
            || async {
                for i in 0..n {
                    store
                        .append("single", ExpectedVersion::Exact(i), event(i))
                        .await
                        .unwrap();
                }
            },
            || async {
                for i in 0..n {
                    raw_insert_one(&pool, "single", i as i64 + 1, &event(i)).await;
                }
            },
        )
        .await;
        report("append 1 event, 1 writer (6 x 500)", ours, raw);
    }
    if run("single-event append 8") {
        let writers = 8u64;
        let per = 300u64;
        let n = writers * per;
        let (ours, raw) = compare(
            &pool,
            n,
            || async {
                let tasks: Vec<_> = (0..writers)
                    .map(|w| {
                        let store = store.clone();
                        tokio::spawn(async move {
                            let stream = format!("w-{w}");
                            for i in 0..per {
                                store
                                    .append(&stream, ExpectedVersion::Exact(i), event(i))
                                    .await
                                    .unwrap();
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
            },
            || async {
                let tasks: Vec<_> = (0..writers)
                    .map(|w| {
                        let pool = pool.clone();
                        tokio::spawn(async move {
                            let stream = format!("w-{w}");
                            for i in 0..per {
                                raw_insert_one(&pool, &stream, i as i64 + 1, &event(i)).await;
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
            },
        )
        .await;
        report(
            "append 1 event, 8 writers, distinct streams (6 x 2,400)",
            ours,
            raw,
        );
    }

    if run("batched append") {
        header("postgres: batched append (one call per batch)");
        for (size, batches) in [(10usize, 60usize), (100, 20), (1000, 5)] {
            let n = (size * batches) as u64;
            let make = |b: usize| -> Vec<Event> {
                (0..size).map(|i| event((b * size + i) as u64)).collect()
            };
            let (ours, raw) = compare(
                &pool,
                n,
                || async {
                    for b in 0..batches {
                        store
                            .append_batch(
                                "batch",
                                ExpectedVersion::Exact((b * size) as u64),
                                make(b),
                            )
                            .await
                            .unwrap();
                    }
                },
                || async {
                    for b in 0..batches {
                        raw_unnest(&pool, "batch", (b * size) as i64, &make(b)).await;
                    }
                },
            )
            .await;
            report(
                &format!("append_batch {size} (raw: UNNEST), 6 x {n} events"),
                ours,
                raw,
            );
            if size == 1000 {
                let (ours, raw) = compare(
                    &pool,
                    n,
                    || async {
                        for b in 0..batches {
                            store
                                .append_batch(
                                    "batch",
                                    ExpectedVersion::Exact((b * size) as u64),
                                    make(b),
                                )
                                .await
                                .unwrap();
                        }
                    },
                    || async {
                        for b in 0..batches {
                            raw_copy(&pool, "batch", (b * size) as i64, &make(b)).await;
                        }
                    },
                )
                .await;
                report(
                    &format!("append_batch {size} (raw: COPY), 6 x {n} events"),
                    ours,
                    raw,
                );
            }
        }
    }
    if run("reads load_stream") {
        header("postgres: reads");
        truncate(&pool).await;
        let events: Vec<Event> = (0..10_000).map(event).collect();
        store
            .append_batch("long", ExpectedVersion::NoStream, events.clone())
            .await
            .unwrap();
        raw_unnest(&pool, "long", 0, &events).await;
        settle_tables(&pool).await;
        let reps = 5u64;
        let (mut ours_time, mut raw_time) = (Duration::ZERO, Duration::ZERO);
        for _ in 0..ROUNDS {
            let start = Instant::now();
            for _ in 0..reps {
                let loaded = store.load_stream("long", 0).await.unwrap();
                assert_eq!(loaded.len(), 10_000);
            }
            ours_time += start.elapsed();
            let start = Instant::now();
            for _ in 0..reps {
                let rows: Vec<RawRow> = sqlx::query_as(&format!(
                    "SELECT {RAW_COLUMNS} FROM evbench_postgres.raw_events \
                     WHERE stream_id = $1 AND stream_version >= $2 ORDER BY stream_version"
                ))
                .bind("long")
                .bind(0i64)
                .fetch_all(&pool)
                .await
                .unwrap();
                assert_eq!(rows.len(), 10_000);
            }
            raw_time += start.elapsed();
        }
        let n = reps * 10_000 * ROUNDS as u64;
        let (ours, raw) = (per_second(n, ours_time), per_second(n, raw_time));
        report(
            "load_stream of 10,000 events (raw: SELECT + serde)",
            ours,
            raw,
        );
    }
    if run("reads read_all") {
        truncate(&pool).await;
        let total_events = 100_000usize;
        for chunk in 0..(total_events / 10_000) {
            let events: Vec<Event> = (0..10_000)
                .map(|i| event((chunk * 10_000 + i) as u64))
                .collect();
            let stream = format!("all-{chunk}");
            store
                .append_batch(&stream, ExpectedVersion::NoStream, events.clone())
                .await
                .unwrap();
            raw_unnest(&pool, &stream, 0, &events).await;
        }
        settle_tables(&pool).await;
        let page = 1000usize;
        let (mut ours_time, mut raw_time) = (Duration::ZERO, Duration::ZERO);
        for _ in 0..ROUNDS {
            let start = Instant::now();
            let (mut after, mut count) = (0u64, 0usize);
            loop {
                let events = store.read_all(after, page).await.unwrap();
                let Some(last) = events.last() else { break };
                after = last.position.unwrap();
                count += events.len();
            }
            assert_eq!(count, total_events);
            ours_time += start.elapsed();
            let start = Instant::now();
            let (mut after, mut count) = (0i64, 0usize);
            loop {
                let rows: Vec<RawRow> = sqlx::query_as(&format!(
                    "SELECT {RAW_COLUMNS} FROM evbench_postgres.raw_events \
                     WHERE position > $1 ORDER BY position LIMIT $2"
                ))
                .bind(after)
                .bind(page as i64)
                .fetch_all(&pool)
                .await
                .unwrap();
                let Some(last) = rows.last() else { break };
                after = last.position;
                count += rows.len();
            }
            assert_eq!(count, total_events);
            raw_time += start.elapsed();
        }
        let n = (total_events * ROUNDS) as u64;
        let (ours, raw) = (per_second(n, ours_time), per_second(n, raw_time));
        report(
            "read_all catch-up of 100,000 events, pages of 1,000 (raw: keyset loop)",
            ours,
            raw,
        );
    }

    if run("lag") {
        header("postgres: live subscription lag, commit to handler (500 events, one every 3 ms)");
        truncate(&pool).await;
        // The follower runs on a second store over its own pool, as another process would: it
        // is woken by LISTEN/NOTIFY, not by the writer's in-process signal.
        let follower_pool = PgPoolOptions::new()
            .max_connections(4)
            .connect(&url)
            .await
            .unwrap();
        let follower = PostgresEventStore::builder(follower_pool.clone())
            .schema(SCHEMA)
            .build()
            .unwrap();
        let in_process = lag_run(&store, &store).await;
        let cross = lag_run(&store, &follower).await;
        let raw = raw_lag(&pool).await;
        for (name, lags) in [
            ("eventflow subscribe, same process", in_process),
            ("eventflow subscribe, other process (NOTIFY)", cross),
            ("raw LISTEN/NOTIFY + keyset SELECT", raw),
        ] {
            println!(
                "{name:<48} p50 {:>8.2} ms   p99 {:>8.2} ms   max {:>8.2} ms   ({} events)",
                percentile(&lags, 0.50).as_secs_f64() * 1e3,
                percentile(&lags, 0.99).as_secs_f64() * 1e3,
                lags.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
                lags.len()
            );
        }
        drop(follower);
        follower_pool.close().await;
    }

    sqlx::query(&format!("DROP SCHEMA {SCHEMA} CASCADE"))
        .execute(&pool)
        .await
        .unwrap();
    println!(
        "\n(postgres bench took {:.1} s)",
        total.elapsed().as_secs_f64()
    );
}

const LAG_EVENTS: usize = 500;
const LAG_INTERVAL: Duration = Duration::from_millis(3);

/// Appends through `writer` while `reader` follows; the lag of each event is from the moment
/// its append returned (the commit is acknowledged) to the handler call, sorted.
async fn lag_run(writer: &PostgresEventStore, reader: &PostgresEventStore) -> Vec<Duration> {
    let start_after = reader.head_position().await.unwrap();
    let received: Arc<Mutex<HashMap<Uuid, Instant>>> = Arc::default();
    let sink = received.clone();
    let handler = move |e: Arc<Event>| {
        let sink = sink.clone();
        async move {
            sink.lock().unwrap().insert(e.id, Instant::now());
            Ok(())
        }
    };
    let sub = reader
        .subscribe(EventCriteria::all().after_position(start_after), handler)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut committed = Vec::with_capacity(LAG_EVENTS);
    for i in 0..LAG_EVENTS {
        let e = writer
            .append("lag", ExpectedVersion::Any, event(i as u64))
            .await
            .unwrap();
        committed.push((e.id, Instant::now()));
        tokio::time::sleep(LAG_INTERVAL).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while received.lock().unwrap().len() < LAG_EVENTS && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(sub);
    let received = received.lock().unwrap();
    assert_eq!(received.len(), LAG_EVENTS, "the subscriber missed events");
    let mut lags: Vec<Duration> = committed
        .iter()
        .map(|(id, at)| received[id].saturating_duration_since(*at))
        .collect();
    lags.sort();
    lags
}

/// The raw baseline: insert, commit, NOTIFY; a LISTEN connection wakes a keyset SELECT.
async fn raw_lag(pool: &PgPool) -> Vec<Duration> {
    let received: Arc<Mutex<HashMap<Uuid, Instant>>> = Arc::default();
    let sink = received.clone();
    let reader_pool = pool.clone();
    let mut listener = PgListener::connect_with(pool).await.unwrap();
    listener.listen("evbench_raw").await.unwrap();
    let reader = tokio::spawn(async move {
        let mut after = 0i64;
        loop {
            let rows: Vec<RawRow> = sqlx::query_as(&format!(
                "SELECT {RAW_COLUMNS} FROM evbench_postgres.raw_events \
                 WHERE position > $1 ORDER BY position LIMIT 1000"
            ))
            .bind(after)
            .fetch_all(&reader_pool)
            .await
            .unwrap();
            let now = Instant::now();
            for row in &rows {
                sink.lock().unwrap().insert(row.event_id, now);
                after = row.position;
            }
            if rows.is_empty() && listener.recv().await.is_err() {
                return;
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut committed = Vec::with_capacity(LAG_EVENTS);
    for i in 0..LAG_EVENTS {
        let e = event(i as u64);
        raw_insert_one(pool, "raw-lag", i as i64 + 1, &e).await;
        committed.push((e.id, Instant::now()));
        sqlx::query("SELECT pg_notify('evbench_raw', '')")
            .execute(pool)
            .await
            .unwrap();
        tokio::time::sleep(LAG_INTERVAL).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while received.lock().unwrap().len() < LAG_EVENTS && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    reader.abort();
    let received = received.lock().unwrap();
    let mut lags: Vec<Duration> = committed
        .iter()
        .filter_map(|(id, at)| received.get(id).map(|r| r.saturating_duration_since(*at)))
        .collect();
    lags.sort();
    lags
}
