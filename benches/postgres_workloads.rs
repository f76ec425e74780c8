//! Benchmark: the workload shapes of the Rust event-sourcing peers (cqrs-es, esrs, disintegrate),
//! each next to the raw sqlx code a user would write instead, measured in the same run.
//!
//! - catch-up: read 100,000 events in global order and decode each into the typed event
//!   (eventflow: `read_all` pages, `read_all_stored` pages, and the `stream_all_stored` row
//!   stream; raw: a keyset loop selecting the payload as text and decoding it once into the
//!   typed event);
//! - load and fold one stream of 10,000 (eventflow: `Repository::load`; raw: one `SELECT`, the
//!   payload text decoded once per row, folded);
//! - one command = one event on a new aggregate, through `Repository::execute` (raw: one
//!   `INSERT ... RETURNING` per command), one writer and 4 concurrent writers;
//! - 1,000 commands on one existing aggregate with a snapshot every 100 events (raw: read the
//!   snapshot row and the tail, fold, `INSERT ... RETURNING`, upsert the snapshot every 100);
//! - 8 writers on 8 streams, one event per append (raw: `INSERT ... RETURNING` at the version
//!   the writer knows);
//! - commit to a subscriber in ANOTHER OS PROCESS (this binary started again as a child), p50 and
//!   p99, a steady stream (one every 3 ms) and bursts (20 back to back, then 30 ms): eventflow's
//!   `subscribe` vs raw `LISTEN` + keyset `SELECT`, whose writer notifies in the same statement
//!   as its insert. The latency of an event runs from the moment its append returned in the
//!   writer (wall clock) to the child's handler (wall clock, same machine).
//!
//! Works in its own schema (`evbench_workloads`, dropped at the end); the raw side writes to
//! `raw_events` (same columns and indexes, identity position, no version check beyond the unique
//! key) and `raw_snapshots` there. Every figure interleaves ours and raw rounds so both see the
//! same background load. Run with
//! `cargo bench -p eventflow-benches --features postgres --bench postgres_workloads [-- word]`.
#![allow(clippy::unwrap_used, clippy::print_stdout, missing_docs)]

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use eventflow::aggregate::{CommandContext, Repository};
use eventflow::postgres::PostgresEventStore;
use eventflow::{DomainEvent, Event, EventCriteria, EventStore, EventStoreExt, ExpectedVersion};
use eventflow_benches::{header, per_second, report};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use sqlx::types::chrono::{DateTime, Utc};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use uuid::Uuid;

const SCHEMA: &str = "evbench_workloads";
const CHANNEL: &str = "evbench_workloads_raw";

const RAW_TABLES: &str = "
CREATE TABLE evbench_workloads.raw_events (
    position        bigint      GENERATED ALWAYS AS IDENTITY,
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
CREATE INDEX ON evbench_workloads.raw_events (event_type, position);
CREATE INDEX ON evbench_workloads.raw_events (correlation_id, position) WHERE correlation_id IS NOT NULL;
CREATE INDEX ON evbench_workloads.raw_events (causation_id) WHERE causation_id IS NOT NULL;
CREATE INDEX ON evbench_workloads.raw_events (tenant_id, position) WHERE tenant_id IS NOT NULL;
CREATE TABLE evbench_workloads.raw_snapshots (
    stream_id text PRIMARY KEY,
    version   bigint NOT NULL,
    state     jsonb NOT NULL
);
";

const RAW_INSERT: &str = "INSERT INTO evbench_workloads.raw_events (event_id, stream_id, \
     stream_version, event_type, schema_version, payload, metadata, tenant_id, correlation_id, \
     causation_id, source, occurred_at) \
     VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7::jsonb, $8, $9, $10, $11, $12) RETURNING position";

const RAW_INSERT_NOTIFY: &str = "WITH ins AS (INSERT INTO evbench_workloads.raw_events \
     (event_id, stream_id, stream_version, event_type, schema_version, payload, metadata, \
     tenant_id, correlation_id, causation_id, source, occurred_at) \
     VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7::jsonb, $8, $9, $10, $11, $12) RETURNING position) \
     SELECT position FROM ins, pg_notify('evbench_workloads_raw', '')";

const RAW_UNNEST: &str = "INSERT INTO evbench_workloads.raw_events (event_id, stream_id, \
     stream_version, event_type, schema_version, payload, metadata, tenant_id, correlation_id, \
     causation_id, source, occurred_at) \
     SELECT b.id, $1, $2 + b.n, b.ty, b.sv, b.pl::jsonb, b.md::jsonb, b.te, b.co, b.ca, b.so, b.oc \
     FROM unnest($3::uuid[], $4::text[], $5::int4[], $6::text[], $7::text[], $8::text[], \
     $9::text[], $10::text[], $11::text[], $12::timestamptz[]) \
     WITH ORDINALITY AS b(id, ty, sv, pl, md, te, co, ca, so, oc, n)";

/// The raw reader selects every column of the envelope, the JSON columns as text.
const RAW_COLUMNS: &str = "position, event_id, stream_id, stream_version, event_type, \
     schema_version, payload::text, metadata::text, correlation_id, causation_id, source, \
     occurred_at";

// ---------------------------------------------------------------------------------------------
// The domain: an account, as in the aggregate benchmark.

#[derive(Debug, Clone, Serialize, Deserialize, eventflow::DomainEvent)]
#[event(prefix = "bench.account")]
pub enum AccountEvent {
    Deposited { amount: u64, memo: String },
    Withdrawn { amount: u64 },
}

#[derive(Debug, Default, Serialize, Deserialize, eventflow::Aggregate)]
#[aggregate(name = "bench_account", event = AccountEvent, snapshot)]
pub struct Account {
    balance: u64,
    events: u64,
}

impl ApplyAccountEvent for Account {
    fn deposited(&mut self, amount: u64, memo: String) {
        self.balance += amount;
        self.events += 1;
        black_box(memo);
    }
    fn withdrawn(&mut self, amount: u64) {
        self.balance = self.balance.saturating_sub(amount);
        self.events += 1;
    }
}

impl Account {
    fn deposit(&self, amount: u64) -> Result<Vec<AccountEvent>, String> {
        Ok(vec![AccountEvent::Deposited {
            amount,
            memo: format!("deposit after {} events", self.events),
        }])
    }
}

// The raw side: payload structs and a hand-written match on the type name.
#[derive(Deserialize)]
struct DepositedPayload {
    amount: u64,
    memo: String,
}
#[derive(Deserialize)]
struct WithdrawnPayload {
    amount: u64,
}

fn raw_decode(event_type: &str, payload: &str) -> AccountEvent {
    match event_type {
        "bench.account.deposited" => {
            let p: DepositedPayload = serde_json::from_str(payload).unwrap();
            AccountEvent::Deposited {
                amount: p.amount,
                memo: p.memo,
            }
        }
        "bench.account.withdrawn" => {
            let p: WithdrawnPayload = serde_json::from_str(payload).unwrap();
            AccountEvent::Withdrawn { amount: p.amount }
        }
        other => panic!("unknown event type {other}"),
    }
}

/// What the raw reader builds from a row: the typed event and the envelope's other fields.
#[allow(dead_code)]
struct RawEvent {
    position: i64,
    id: Uuid,
    stream_id: String,
    stream_version: i64,
    schema_version: i32,
    event: AccountEvent,
    metadata: eventflow::Metadata,
    correlation_id: Option<String>,
    causation_id: Option<String>,
    source: Option<String>,
    occurred_at: DateTime<Utc>,
}

type RawTuple = (
    i64,
    Uuid,
    String,
    i64,
    String,
    i32,
    String,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    DateTime<Utc>,
);

fn raw_event(t: RawTuple) -> RawEvent {
    RawEvent {
        position: t.0,
        id: t.1,
        stream_id: t.2,
        stream_version: t.3,
        schema_version: t.5,
        event: raw_decode(&t.4, &t.6),
        metadata: serde_json::from_str(&t.7).unwrap(),
        correlation_id: t.8,
        causation_id: t.9,
        source: t.10,
        occurred_at: t.11,
    }
}

fn envelope(i: u64) -> Event {
    let event = if i % 5 == 4 {
        AccountEvent::Withdrawn { amount: 3 }
    } else {
        AccountEvent::Deposited {
            amount: i % 100,
            memo: format!("deposit number {i}"),
        }
    };
    CommandContext::new()
        .with_correlation(format!("c-{}", i % 100))
        .with_source("bench")
        .envelope(&event)
        .unwrap()
}

fn fold_raw(state: &mut Account, event: AccountEvent) {
    eventflow::Aggregate::apply(state, event);
}

// ---------------------------------------------------------------------------------------------
// Raw helpers.

async fn raw_insert(pool: &PgPool, stream: &str, version: i64, e: &Event, notify: bool) -> i64 {
    let sql = if notify {
        RAW_INSERT_NOTIFY
    } else {
        RAW_INSERT
    };
    sqlx::query_scalar::<_, i64>(sql)
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
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn raw_unnest(pool: &PgPool, stream: &str, version: i64, events: &[Event]) {
    sqlx::query(RAW_UNNEST)
        .bind(stream)
        .bind(version)
        .bind(events.iter().map(|e| e.id).collect::<Vec<_>>())
        .bind(
            events
                .iter()
                .map(|e| e.event_type.clone())
                .collect::<Vec<_>>(),
        )
        .bind(events.iter().map(|e| e.version as i32).collect::<Vec<_>>())
        .bind(
            events
                .iter()
                .map(|e| serde_json::to_string(&e.payload).unwrap())
                .collect::<Vec<_>>(),
        )
        .bind(
            events
                .iter()
                .map(|e| serde_json::to_string(&e.metadata).unwrap())
                .collect::<Vec<_>>(),
        )
        .bind(
            events
                .iter()
                .map(|e| e.metadata.tenant_id.clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            events
                .iter()
                .map(|e| e.correlation_id.clone())
                .collect::<Vec<_>>(),
        )
        .bind(
            events
                .iter()
                .map(|e| e.causation_id.clone())
                .collect::<Vec<_>>(),
        )
        .bind(events.iter().map(|e| e.source.clone()).collect::<Vec<_>>())
        .bind(events.iter().map(|e| e.timestamp).collect::<Vec<_>>())
        .execute(pool)
        .await
        .unwrap();
}

/// Writes `n` events over `streams` streams to both tables, in batches of 1,000, then vacuums
/// and analyzes both, so reads measure a steady state.
async fn fill(pool: &PgPool, store: &PostgresEventStore, n: u64, streams: u64, prefix: &str) {
    let per_stream = n / streams;
    for s in 0..streams {
        let stream = format!("{prefix}-{s}");
        let mut done = 0u64;
        while done < per_stream {
            let size = (per_stream - done).min(1000);
            let events: Vec<Event> = (done..done + size).map(envelope).collect();
            raw_unnest(pool, &stream, done as i64, &events).await;
            store
                .append_batch(&stream, ExpectedVersion::Exact(done), events)
                .await
                .unwrap();
            done += size;
        }
    }
    sqlx::query("VACUUM (ANALYZE) evbench_workloads.events, evbench_workloads.raw_events")
        .execute(pool)
        .await
        .unwrap();
}

async fn truncate(pool: &PgPool) {
    sqlx::query(
        "TRUNCATE evbench_workloads.events, evbench_workloads.raw_events, \
         evbench_workloads.snapshots, evbench_workloads.raw_snapshots",
    )
    .execute(pool)
    .await
    .unwrap();
}

/// Total time of `rounds` runs of each side, interleaved (the order flips every round).
async fn interleave<O, OF, R, RF>(rounds: usize, mut ours: O, mut raw: R) -> (Duration, Duration)
where
    O: FnMut(usize) -> OF,
    OF: std::future::Future<Output = ()>,
    R: FnMut(usize) -> RF,
    RF: std::future::Future<Output = ()>,
{
    let (mut ours_time, mut raw_time) = (Duration::ZERO, Duration::ZERO);
    for round in 0..rounds {
        for side in [round % 2, 1 - round % 2] {
            let start = Instant::now();
            if side == 0 {
                ours(round).await;
                ours_time += start.elapsed();
            } else {
                raw(round).await;
                raw_time += start.elapsed();
            }
        }
    }
    (ours_time, raw_time)
}

fn rates(n: u64, rounds: usize, (ours, raw): (Duration, Duration)) -> (f64, f64) {
    let total = n * rounds as u64;
    (per_second(total, ours), per_second(total, raw))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn wall_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

// ---------------------------------------------------------------------------------------------
// The child process of the remote-subscriber latency: prints `<event id> <wall ns>` per event
// received, until its stdin closes.

async fn child(mode: &str, url: &str) {
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .test_before_acquire(false)
        .connect(url)
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Uuid, u128)>();
    let printer = tokio::spawn(async move {
        let mut out = tokio::io::stdout();
        out.write_all(b"ready\n").await.unwrap();
        out.flush().await.unwrap();
        while let Some((id, at)) = rx.recv().await {
            out.write_all(format!("{id} {at}\n").as_bytes())
                .await
                .unwrap();
            out.flush().await.unwrap();
        }
    });
    let _keep: Box<dyn std::any::Any + Send> = if mode == "ours" {
        let store = PostgresEventStore::builder(pool.clone())
            .schema(SCHEMA)
            .build()
            .unwrap();
        let head = store.head_position().await.unwrap();
        let sink = tx.clone();
        let sub = store
            .subscribe(
                EventCriteria::all().after_position(head),
                move |e: Arc<Event>| {
                    let sink = sink.clone();
                    async move {
                        sink.send((e.id, wall_nanos())).ok();
                        Ok(())
                    }
                },
            )
            .await
            .unwrap();
        // Let the listener connect before the parent starts writing.
        tokio::time::sleep(Duration::from_millis(300)).await;
        Box::new((sub, store))
    } else {
        let mut listener = PgListener::connect_with(&pool).await.unwrap();
        listener.listen(CHANNEL).await.unwrap();
        let mut after: i64 = sqlx::query_scalar(
            "SELECT coalesce(max(position), 0) FROM evbench_workloads.raw_events",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        let sink = tx.clone();
        let reader_pool = pool.clone();
        let task = tokio::spawn(async move {
            loop {
                let rows: Vec<RawTuple> = sqlx::query_as(&format!(
                    "SELECT {RAW_COLUMNS} FROM evbench_workloads.raw_events \
                     WHERE position > $1 ORDER BY position LIMIT 1000"
                ))
                .bind(after)
                .fetch_all(&reader_pool)
                .await
                .unwrap();
                let empty = rows.is_empty();
                for row in rows {
                    let event = raw_event(row);
                    after = event.position;
                    sink.send((event.id, wall_nanos())).ok();
                }
                if empty && listener.recv().await.is_err() {
                    return;
                }
            }
        });
        Box::new(AbortOnDrop(task))
    };
    drop(tx);
    // Until the parent closes stdin.
    let mut stdin = BufReader::new(tokio::io::stdin());
    let mut line = String::new();
    while stdin.read_line(&mut line).await.unwrap_or(0) > 0 {
        line.clear();
    }
    drop(_keep);
    printer.abort();
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs a child subscriber (`mode` = "ours" or "raw"), writes `pattern` (sleep after each
/// event) through `write`, and returns the sorted latencies (append returned → child handler).
async fn remote_latency<W, WF>(
    url: &str,
    mode: &str,
    pattern: &[Duration],
    mut write: W,
) -> Vec<Duration>
where
    W: FnMut(u64) -> WF,
    WF: std::future::Future<Output = Uuid>,
{
    let mut child = tokio::process::Command::new(std::env::current_exe().unwrap())
        .env("EVBENCH_CHILD", mode)
        .env("DATABASE_URL", url)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("ready"));
    let received: Arc<std::sync::Mutex<HashMap<Uuid, u128>>> = Arc::default();
    let sink = received.clone();
    let reader = tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let (id, at) = line.split_once(' ').unwrap();
            sink.lock()
                .unwrap()
                .insert(id.parse().unwrap(), at.parse().unwrap());
        }
    });
    // The child subscribes before printing "ready" (ours also waits for its listener).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut sent = Vec::with_capacity(pattern.len());
    for (i, pause) in pattern.iter().enumerate() {
        let id = write(i as u64).await;
        sent.push((id, wall_nanos()));
        if !pause.is_zero() {
            tokio::time::sleep(*pause).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while received.lock().unwrap().len() < sent.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(child.stdin.take());
    let _ = tokio::time::timeout(Duration::from_secs(5), child.wait()).await;
    reader.abort();
    let received = received.lock().unwrap();
    assert_eq!(
        received.len(),
        sent.len(),
        "the {mode} subscriber missed events"
    );
    let mut lags: Vec<Duration> = sent
        .iter()
        .map(|(id, at)| Duration::from_nanos(received[id].saturating_sub(*at) as u64))
        .collect();
    lags.sort();
    lags
}

#[tokio::main]
async fn main() {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    if let Ok(mode) = std::env::var("EVBENCH_CHILD") {
        child(&mode, &url).await;
        return;
    }
    let pool = PgPoolOptions::new()
        .max_connections(16)
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
    sqlx::raw_sql(RAW_TABLES).execute(&pool).await.unwrap();
    let dyn_store: Arc<dyn EventStore> = Arc::new(store.clone());
    let total = Instant::now();
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let run = |title: &str| filter.as_deref().is_none_or(|f| title.contains(f));

    if run("catch-up") {
        header("catch-up: read 100,000 events in global order, decode each into the typed event");
        truncate(&pool).await;
        let n = 100_000u64;
        fill(&pool, &store, n, 100, "cu").await;
        const PAGE: usize = 1000;
        let timings = interleave(
            3,
            |_| async {
                let mut after = 0u64;
                let mut count = 0u64;
                loop {
                    let page = store.read_all(after, PAGE).await.unwrap();
                    let Some(last) = page.last() else { break };
                    after = last.position.unwrap();
                    for e in &page {
                        black_box(AccountEvent::from_envelope(e).unwrap());
                        count += 1;
                    }
                }
                assert_eq!(count, n);
            },
            |_| async {
                let mut after = 0i64;
                let mut count = 0u64;
                loop {
                    let rows: Vec<RawTuple> = sqlx::query_as(&format!(
                        "SELECT {RAW_COLUMNS} FROM evbench_workloads.raw_events \
                         WHERE position > $1 ORDER BY position LIMIT {PAGE}"
                    ))
                    .bind(after)
                    .fetch_all(&pool)
                    .await
                    .unwrap();
                    if rows.is_empty() {
                        break;
                    }
                    for row in rows {
                        let e = raw_event(row);
                        after = e.position;
                        black_box(e);
                        count += 1;
                    }
                }
                assert_eq!(count, n);
            },
        )
        .await;
        let (ours, raw) = rates(n, 3, timings);
        report("catch-up 100,000 (read_all pages of 1,000)", ours, raw);
        // The typed fast path: payload text decoded once; raw reads the same columns.
        let timings = interleave(
            3,
            |_| async {
                let mut after = 0u64;
                let mut count = 0u64;
                loop {
                    let page = store.read_all_stored(after, PAGE).await.unwrap();
                    let Some(last) = page.last() else { break };
                    after = last.position.unwrap();
                    for e in &page {
                        black_box(AccountEvent::from_stored(e).unwrap());
                        count += 1;
                    }
                }
                assert_eq!(count, n);
            },
            |_| async {
                let mut after = 0i64;
                let mut count = 0u64;
                loop {
                    let rows: Vec<(i64, Uuid, String, i64, String, i32, String)> =
                        sqlx::query_as(&format!(
                            "SELECT position, event_id, stream_id, stream_version, event_type, \
                             schema_version, payload::text FROM evbench_workloads.raw_events \
                             WHERE position > $1 ORDER BY position LIMIT {PAGE}"
                        ))
                        .bind(after)
                        .fetch_all(&pool)
                        .await
                        .unwrap();
                    if rows.is_empty() {
                        break;
                    }
                    for (position, id, stream, version, ty, _sv, payload) in rows {
                        after = position;
                        black_box((id, stream, version, raw_decode(&ty, &payload)));
                        count += 1;
                    }
                }
                assert_eq!(count, n);
            },
        )
        .await;
        let (ours, raw) = rates(n, 3, timings);
        report("catch-up 100,000 (read_all_stored, no metadata)", ours, raw);
        // Streamed: each row decoded as it arrives, pages of 10,000 (the horizon check in each
        // page's statement); raw: the same keyset loop as above, with pages of 10,000.
        const BIG_PAGE: usize = 10_000;
        let timings = interleave(
            3,
            |_| async {
                let mut count = 0u64;
                let mut events = std::pin::pin!(store.stream_all_stored(0, BIG_PAGE));
                while let Some(e) = events.next().await {
                    black_box(AccountEvent::from_stored(&e.unwrap()).unwrap());
                    count += 1;
                }
                assert_eq!(count, n);
            },
            |_| async {
                let mut after = 0i64;
                let mut count = 0u64;
                loop {
                    let rows: Vec<(i64, Uuid, String, i64, String, i32, String)> =
                        sqlx::query_as(&format!(
                            "SELECT position, event_id, stream_id, stream_version, event_type, \
                             schema_version, payload::text FROM evbench_workloads.raw_events \
                             WHERE position > $1 ORDER BY position LIMIT {BIG_PAGE}"
                        ))
                        .bind(after)
                        .fetch_all(&pool)
                        .await
                        .unwrap();
                    if rows.is_empty() {
                        break;
                    }
                    for (position, id, stream, version, ty, _sv, payload) in rows {
                        after = position;
                        black_box((id, stream, version, raw_decode(&ty, &payload)));
                        count += 1;
                    }
                }
                assert_eq!(count, n);
            },
        )
        .await;
        let (ours, raw) = rates(n, 3, timings);
        report(
            "catch-up 100,000 (stream_all_stored, pages of 10,000)",
            ours,
            raw,
        );
    }

    if run("load") {
        header("load and fold one stream of 10,000");
        truncate(&pool).await;
        let n = 10_000u64;
        fill(&pool, &store, n, 1, "bench_account-load").await;
        let repo = Repository::<Account>::new(dyn_store.clone());
        let timings = interleave(
            6,
            |_| async {
                let loaded = repo.load("load-0").await.unwrap();
                assert_eq!(loaded.version, n);
                black_box(loaded);
            },
            |_| async {
                let rows: Vec<(i64, String, i32, String)> = sqlx::query_as(
                    "SELECT stream_version, event_type, schema_version, payload::text \
                     FROM evbench_workloads.raw_events WHERE stream_id = $1 \
                     ORDER BY stream_version",
                )
                .bind("bench_account-load-0")
                .fetch_all(&pool)
                .await
                .unwrap();
                let mut state = Account::default();
                let mut version = 0;
                for (v, ty, _sv, payload) in rows {
                    fold_raw(&mut state, raw_decode(&ty, &payload));
                    version = v;
                }
                assert_eq!(version as u64, n);
                black_box(state);
            },
        )
        .await;
        let (ours, raw) = rates(n, 6, timings);
        report("load+fold 10,000 (Repository::load)", ours, raw);
    }

    if run("execute") {
        header("one command = one event on a new aggregate (Repository::execute)");
        truncate(&pool).await;
        let repo = Repository::<Account>::new(dyn_store.clone());
        for writers in [1u64, 4] {
            let per_writer = 300 / writers;
            let n = per_writer * writers;
            let timings = interleave(
                4,
                |round| {
                    let repo = repo.clone();
                    async move {
                        let tasks: Vec<_> = (0..writers)
                            .map(|w| {
                                let repo = repo.clone();
                                tokio::spawn(async move {
                                    for i in 0..per_writer {
                                        let id = format!("new-{writers}-{round}-{w}-{i}");
                                        repo.execute(&id, |a| a.deposit(5)).await.unwrap();
                                    }
                                })
                            })
                            .collect();
                        for t in tasks {
                            t.await.unwrap();
                        }
                    }
                },
                |round| {
                    let pool = pool.clone();
                    async move {
                        let tasks: Vec<_> = (0..writers)
                            .map(|w| {
                                let pool = pool.clone();
                                tokio::spawn(async move {
                                    for i in 0..per_writer {
                                        let stream =
                                            format!("bench_account-new-{writers}-{round}-{w}-{i}");
                                        let events = Account::default().deposit(5).unwrap();
                                        let e = CommandContext::new().envelope(&events[0]).unwrap();
                                        black_box(raw_insert(&pool, &stream, 1, &e, false).await);
                                    }
                                })
                            })
                            .collect();
                        for t in tasks {
                            t.await.unwrap();
                        }
                    }
                },
            )
            .await;
            let (ours, raw) = rates(n, 4, timings);
            report(
                &format!("execute on a new aggregate, {writers} writer(s)"),
                ours,
                raw,
            );
        }
        for writers in [1u64, 4] {
            let per_writer = 300 / writers;
            let n = per_writer * writers;
            let timings = interleave(
                4,
                |round| {
                    let repo = repo.clone();
                    async move {
                        let tasks: Vec<_> = (0..writers)
                            .map(|w| {
                                let repo = repo.clone();
                                tokio::spawn(async move {
                                    for i in 0..per_writer {
                                        let id = format!("created-{writers}-{round}-{w}-{i}");
                                        repo.create(&id, |a| a.deposit(5)).await.unwrap();
                                    }
                                })
                            })
                            .collect();
                        for t in tasks {
                            t.await.unwrap();
                        }
                    }
                },
                |round| {
                    let pool = pool.clone();
                    async move {
                        let tasks: Vec<_> = (0..writers)
                            .map(|w| {
                                let pool = pool.clone();
                                tokio::spawn(async move {
                                    for i in 0..per_writer {
                                        let stream = format!(
                                            "bench_account-created-{writers}-{round}-{w}-{i}"
                                        );
                                        let events = Account::default().deposit(5).unwrap();
                                        let e = CommandContext::new().envelope(&events[0]).unwrap();
                                        black_box(raw_insert(&pool, &stream, 1, &e, false).await);
                                    }
                                })
                            })
                            .collect();
                        for t in tasks {
                            t.await.unwrap();
                        }
                    }
                },
            )
            .await;
            let (ours, raw) = rates(n, 4, timings);
            report(
                &format!("create (no read) a new aggregate, {writers} writer(s)"),
                ours,
                raw,
            );
        }
    }

    if run("existing") {
        header("1,000 commands on one existing aggregate, snapshot every 100");
        truncate(&pool).await;
        let repo = Repository::<Account>::new(dyn_store.clone())
            .snapshots(Arc::new(store.snapshots()))
            .snapshot_every(100);
        let n = 1000u64;
        let timings = interleave(
            2,
            |round| {
                let repo = repo.clone();
                async move {
                    let id = format!("existing-{round}");
                    for _ in 0..n {
                        repo.execute(&id, |a| a.deposit(7)).await.unwrap();
                    }
                }
            },
            |round| {
                let pool = pool.clone();
                async move {
                    let stream = format!("bench_account-raw-existing-{round}");
                    for _ in 0..n {
                        // Load: the snapshot row, then the tail after it.
                        let snap: Option<(i64, String)> = sqlx::query_as(
                            "SELECT version, state::text FROM evbench_workloads.raw_snapshots \
                             WHERE stream_id = $1",
                        )
                        .bind(&stream)
                        .fetch_optional(&pool)
                        .await
                        .unwrap();
                        let (mut version, mut state) = match snap {
                            Some((v, s)) => (v, serde_json::from_str::<Account>(&s).unwrap()),
                            None => (0, Account::default()),
                        };
                        let tail: Vec<(i64, String, String)> = sqlx::query_as(
                            "SELECT stream_version, event_type, payload::text \
                             FROM evbench_workloads.raw_events \
                             WHERE stream_id = $1 AND stream_version > $2 ORDER BY stream_version",
                        )
                        .bind(&stream)
                        .bind(version)
                        .fetch_all(&pool)
                        .await
                        .unwrap();
                        for (v, ty, payload) in tail {
                            fold_raw(&mut state, raw_decode(&ty, &payload));
                            version = v;
                        }
                        // Decide, append, snapshot every 100.
                        let events = state.deposit(7).unwrap();
                        let e = CommandContext::new().envelope(&events[0]).unwrap();
                        raw_insert(&pool, &stream, version + 1, &e, false).await;
                        if (version + 1) % 100 == 0 {
                            for event in events {
                                fold_raw(&mut state, event);
                            }
                            sqlx::query(
                                "INSERT INTO evbench_workloads.raw_snapshots \
                                 (stream_id, version, state) VALUES ($1, $2, $3::jsonb) \
                                 ON CONFLICT (stream_id) DO UPDATE SET version = EXCLUDED.version, \
                                 state = EXCLUDED.state",
                            )
                            .bind(&stream)
                            .bind(version + 1)
                            .bind(serde_json::to_string(&state).unwrap())
                            .execute(&pool)
                            .await
                            .unwrap();
                        }
                    }
                }
            },
        )
        .await;
        let (ours, raw) = rates(n, 2, timings);
        report("1,000 commands, one aggregate, snapshots", ours, raw);
    }

    if run("writers") {
        header("8 writers on 8 streams, one event per append");
        truncate(&pool).await;
        let per_writer = 100u64;
        let n = per_writer * 8;
        let timings = interleave(
            4,
            |round| {
                let store = store.clone();
                async move {
                    let tasks: Vec<_> = (0..8)
                        .map(|w| {
                            let store = store.clone();
                            tokio::spawn(async move {
                                let stream = format!("w8-{round}-{w}");
                                for i in 0..per_writer {
                                    store
                                        .append(&stream, ExpectedVersion::Exact(i), envelope(i))
                                        .await
                                        .unwrap();
                                }
                            })
                        })
                        .collect();
                    for t in tasks {
                        t.await.unwrap();
                    }
                }
            },
            |round| {
                let pool = pool.clone();
                async move {
                    let tasks: Vec<_> = (0..8)
                        .map(|w| {
                            let pool = pool.clone();
                            tokio::spawn(async move {
                                let stream = format!("raw-w8-{round}-{w}");
                                for i in 0..per_writer {
                                    raw_insert(&pool, &stream, i as i64 + 1, &envelope(i), false)
                                        .await;
                                }
                            })
                        })
                        .collect();
                    for t in tasks {
                        t.await.unwrap();
                    }
                }
            },
        )
        .await;
        let (ours, raw) = rates(n, 4, timings);
        report("8 writers, 8 streams (append)", ours, raw);
    }

    if run("remote") {
        header(
            "commit to a subscriber in another OS process (append returned -> child handler), \
             raw: INSERT + pg_notify in one statement, LISTEN + keyset SELECT",
        );
        truncate(&pool).await;
        let steady: Vec<Duration> = vec![Duration::from_millis(3); 300];
        let bursts: Vec<Duration> = (0..300)
            .map(|i| {
                if i % 20 == 19 {
                    Duration::from_millis(30)
                } else {
                    Duration::ZERO
                }
            })
            .collect();
        for (k, (shape, pattern)) in [("steady, 1 per 3 ms", &steady), ("bursts of 20", &bursts)]
            .into_iter()
            .enumerate()
        {
            // Interleaved: ours, raw, ours, raw.
            let mut ours_lags = Vec::new();
            let mut raw_lags = Vec::new();
            for round in 0..2 {
                let ours = remote_latency(&url, "ours", pattern, |i| {
                    let store = store.clone();
                    async move {
                        store
                            .append(
                                &format!("remote-{k}-{round}"),
                                ExpectedVersion::Any,
                                envelope(i),
                            )
                            .await
                            .unwrap()
                            .id
                    }
                })
                .await;
                let raw = remote_latency(&url, "raw", pattern, |i| {
                    let pool = pool.clone();
                    async move {
                        let e = envelope(i);
                        raw_insert(
                            &pool,
                            &format!("raw-remote-{k}-{round}"),
                            i as i64 + 1,
                            &e,
                            true,
                        )
                        .await;
                        e.id
                    }
                })
                .await;
                ours_lags.extend(ours);
                raw_lags.extend(raw);
            }
            ours_lags.sort();
            raw_lags.sort();
            let ms = |d: Duration| d.as_secs_f64() * 1e3;
            for p in [0.50, 0.99] {
                let (o, r) = (percentile(&ours_lags, p), percentile(&raw_lags, p));
                println!(
                    "remote subscriber, {shape:<20} p{:<2}  eventflow {:>7.2} ms   raw {:>7.2} ms   ratio {:>5.2}x",
                    (p * 100.0) as u32,
                    ms(o),
                    ms(r),
                    ms(o) / ms(r).max(1e-9)
                );
            }
        }
    }

    sqlx::query(&format!("DROP SCHEMA {SCHEMA} CASCADE"))
        .execute(&pool)
        .await
        .unwrap();
    println!(
        "\n(postgres_workloads bench took {:.1} s)",
        total.elapsed().as_secs_f64()
    );
}
