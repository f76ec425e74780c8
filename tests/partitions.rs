//! Partitioned projections and sagas across real OS processes on one PostgreSQL database
//! (`DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/test`).
//!
//! The workers are this binary's `#[ignore]`d `worker_*` tests, started as child processes
//! (`tests/support/child.rs`) with the schema and their worker id in the environment; each
//! connects with `application_name` = its worker id, so a trigger on the checkpoints table can
//! record which process wrote each checkpoint and who held the partition's lease at that moment.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use eventflow::postgres::{
    PgConnectOptions, PgPoolOptions, PgProjection, PgTransaction, PostgresEventStore,
    PostgresLeaseStore, PostgresSagaStore, partitioned_runner,
};
use eventflow::projection::{PartitionedOptions, ProjectionView, RunnerOptions};
use eventflow::saga::{PartitionedSaga, Saga, SagaContext, SagaManager};
use eventflow::{BoxError, Event, EventStore, ExpectedVersion, HandlerResult};
use eventflow_tests::child::{self, ChildProcess};
use eventflow_tests::{database_url, service_unavailable, unique};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::PgPool;

const SCHEMA_ENV: &str = "EVENTFLOW_TEST_SCHEMA";
const WORKER_ENV: &str = "EVENTFLOW_TEST_WORKER";
const PARTITIONS: u32 = 16;
const LEASE_TTL: Duration = Duration::from_secs(2);
const PROJECTION: &str = "applied";
const SAGA: &str = "trip";

async fn pool(size: u32, application_name: &str) -> PgPool {
    let url = database_url();
    let options: PgConnectOptions = url.parse().unwrap();
    PgPoolOptions::new()
        .max_connections(size)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(options.application_name(application_name))
        .await
        .unwrap_or_else(|e| service_unavailable("PostgreSQL", &url, e))
}

fn store(pool: &PgPool, schema: &str) -> PostgresEventStore {
    PostgresEventStore::builder(pool.clone())
        .schema(schema)
        .poll_interval(Duration::from_millis(100))
        .settle_timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

fn options(worker: &str) -> PartitionedOptions {
    PartitionedOptions::default()
        .partitions(PARTITIONS)
        .concurrency(4)
        .lease_ttl(LEASE_TTL)
        .worker_id(worker)
        .runner(RunnerOptions {
            batch_size: 100,
            poll_interval: Duration::from_millis(100),
            ..RunnerOptions::default()
        })
}

/// Writes one row per applied event, with the worker that applied it.
struct Applied {
    worker: String,
}

#[async_trait]
impl PgProjection for Applied {
    fn name(&self) -> &str {
        PROJECTION
    }
    async fn handle(&self, tx: &mut PgTransaction, event: &Event) -> HandlerResult {
        sqlx::query(
            "INSERT INTO applied (event_id, stream_id, version, worker) VALUES ($1, $2, $3, $4)",
        )
        .bind(event.id)
        .bind(event.stream_id.as_deref().unwrap_or_default())
        .bind(i64::try_from(event.stream_version.unwrap_or(0))?)
        .bind(&self.worker)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

/// The read model and the checkpoint history (a trigger records every checkpoint write: the
/// writer's `application_name`, and the partition lease's owner and epoch as the writing
/// transaction sees them).
async fn prepare(pool: &PgPool, schema: &str) {
    let setup = format!(
        r#"
        SET search_path TO "{schema}";
        CREATE TABLE applied (
            seq bigserial PRIMARY KEY, event_id uuid NOT NULL, stream_id text NOT NULL,
            version bigint NOT NULL, worker text NOT NULL);
        CREATE TABLE checkpoint_history (
            seq bigserial PRIMARY KEY, name text NOT NULL, old_position bigint,
            new_position bigint NOT NULL, writer text NOT NULL, lease_owner text,
            lease_epoch bigint);
        CREATE FUNCTION record_checkpoint() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO "{schema}".checkpoint_history
                (name, old_position, new_position, writer, lease_owner, lease_epoch)
            SELECT NEW.name, CASE WHEN TG_OP = 'UPDATE' THEN OLD.position END, NEW.position,
                   current_setting('application_name'), l.owner, l.epoch
            FROM (SELECT 1) AS one
            LEFT JOIN "{schema}".leases l ON l.name = 'projection:' || split_part(NEW.name, '#', 1)
                AND l.partition::text = split_part(NEW.name, '#', 2);
            RETURN NEW;
        END $$;
        CREATE TRIGGER checkpoint_history AFTER INSERT OR UPDATE ON checkpoints
            FOR EACH ROW EXECUTE FUNCTION record_checkpoint();
        "#
    );
    sqlx::raw_sql(&setup).execute(pool).await.unwrap();
}

async fn drop_schema(pool: &PgPool, schema: &str) {
    sqlx::query(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .execute(pool)
        .await
        .unwrap();
}

fn spawn(test: &str, schema: &str, worker: &str) -> ChildProcess {
    ChildProcess::spawn(
        test,
        &[
            (SCHEMA_ENV, schema.to_owned()),
            (WORKER_ENV, worker.to_owned()),
            ("RUST_LOG", "warn".to_owned()),
        ],
    )
}

/// In a child: the schema and the worker id.
fn child_env() -> Option<(std::path::PathBuf, String, String)> {
    let out = child::child_out()?;
    let schema = std::env::var(SCHEMA_ENV).ok()?;
    let worker = std::env::var(WORKER_ENV).ok()?;
    Some((out, schema, worker))
}

/// A worker process of the partitioned projection (started by the tests below).
#[tokio::test]
#[ignore = "a worker process started by partitioned_projection_across_processes"]
async fn worker_projection() {
    let Some((out, schema, worker)) = child_env() else {
        return;
    };
    let pool = pool(8, &worker).await;
    let store = store(&pool, &schema);
    let leases = Arc::new(PostgresLeaseStore::in_schema(pool.clone(), &schema).unwrap());
    let runner = partitioned_runner(
        Arc::new(store),
        pool.clone(),
        &schema,
        Applied {
            worker: worker.clone(),
        },
        leases,
        options(&worker),
    )
    .unwrap();
    let _task = runner.start();
    child::report(&out, child::READY);
    tokio::time::sleep(child::CHILD_LIFETIME).await;
}

/// Waits until none of `worker`'s leases is live any more (each was taken over or expired).
async fn wait_leases_lost(pool: &PgPool, schema: &str, worker: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let held: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM \"{schema}\".leases WHERE owner = $1 AND expires_at > now()"
        ))
        .bind(worker)
        .fetch_one(pool)
        .await
        .unwrap();
        if held == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{worker} still holds {held} leases"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Three workers run one projection over events appended while they run; one is SIGKILLed
/// mid-batch, one SIGSTOPped past its lease and resumed, a fourth joins late. Every event is
/// applied exactly once, in stream order; no checkpoint moves backwards, and every checkpoint
/// was written by the partition's lease holder.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_projection_across_processes() {
    const STREAMS: usize = 400;
    const EVENTS: usize = 50_000;
    const PER_APPEND: usize = 10;
    let pool = pool(4, "parent").await;
    let schema = unique("parts");
    let store = store(&pool, &schema);
    store.migrate().await.unwrap();
    prepare(&pool, &schema).await;
    let store: Arc<dyn EventStore> = Arc::new(store);
    let leases = Arc::new(PostgresLeaseStore::in_schema(pool.clone(), &schema).unwrap());
    let view = ProjectionView::new(
        PROJECTION,
        PARTITIONS,
        Arc::clone(&store),
        Arc::new(
            eventflow::postgres::PostgresCheckpointStore::in_schema(pool.clone(), &schema).unwrap(),
        ),
        leases,
    );

    let test = "worker_projection";
    let mut w1 = spawn(test, &schema, "w1");
    let mut w2 = spawn(test, &schema, "w2");
    let mut w3 = spawn(test, &schema, "w3");
    for w in [&mut w1, &mut w2, &mut w3] {
        w.wait_ready(Duration::from_secs(20)).await;
    }
    let started = Instant::now();

    let appender = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            let mut versions = vec![0u64; STREAMS];
            for i in 0..EVENTS / PER_APPEND {
                let s = fastrand::usize(..STREAMS);
                let events: Vec<Event> = (0..PER_APPEND)
                    .map(|k| Event::new("part.work", json!({ "i": i, "k": k })).unwrap())
                    .collect();
                store
                    .append_batch(
                        &format!("s-{s}"),
                        ExpectedVersion::Exact(versions[s]),
                        events,
                    )
                    .await
                    .unwrap();
                versions[s] += PER_APPEND as u64;
                if i % 50 == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        })
    };

    // SIGKILL w1 while it applies batches.
    wait_applied_by(&pool, &schema, "w1", 500).await;
    w1.kill();
    // SIGSTOP w2 until every lease it held is gone, then let it run again.
    wait_applied_by(&pool, &schema, "w2", 500).await;
    w2.signal("STOP");
    let stopped_at: i64 = max_history_seq(&pool, &schema).await;
    wait_leases_lost(&pool, &schema, "w2", Duration::from_secs(15)).await;
    w2.signal("CONT");
    // A fourth worker joins late.
    let mut w4 = spawn(test, &schema, "w4");
    w4.wait_ready(Duration::from_secs(20)).await;

    appender.await.unwrap();
    let head = store.head_position().await.unwrap();
    view.wait_for(head, Duration::from_secs(90)).await.unwrap();
    let elapsed = started.elapsed();

    // Per-partition progress and holders, read here, in a process that runs no partition.
    let status = view.status().await.unwrap();
    assert_eq!(status.partitions.len(), PARTITIONS as usize);
    assert!(status.position >= head && status.lag == 0, "{status:?}");
    for p in &status.partitions {
        assert!(
            p.position >= head,
            "partition {} behind: {p:?}",
            p.partition
        );
        assert!(
            p.owner.as_deref().is_none_or(|o| o != "w1"),
            "partition {} still held by the killed worker: {p:?}",
            p.partition
        );
    }

    // Read your writes across processes: once wait_for returns, the read model has the event.
    let marker = Event::new("part.marker", json!({})).unwrap();
    let marker_id = marker.id;
    let appended = store
        .append("marker", ExpectedVersion::NoStream, marker)
        .await
        .unwrap();
    let position = appended.position.unwrap();
    view.wait_for(position, Duration::from_secs(20))
        .await
        .unwrap();
    let found: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM \"{schema}\".applied WHERE event_id = $1"
    ))
    .bind(marker_id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        found, 1,
        "wait_for returned before the read model had the event"
    );

    // Each event exactly once.
    let (count, distinct): (i64, i64) = sqlx::query_as(&format!(
        "SELECT count(*), count(DISTINCT event_id) FROM \"{schema}\".applied"
    ))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(distinct, EVENTS as i64 + 1, "an event was never applied");
    assert_eq!(
        count,
        distinct,
        "{} events were applied twice",
        count - distinct
    );

    // Per-stream order: applied in version order.
    let disordered: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM (SELECT stream_id FROM \"{schema}\".applied GROUP BY stream_id \
         HAVING array_agg(version ORDER BY seq) <> array_agg(version ORDER BY version)) d"
    ))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(disordered, 0, "streams applied out of order");

    // No checkpoint ever moved backwards; every partition checkpoint was written by the
    // process holding its lease.
    let backwards: Vec<(String, i64, i64)> = sqlx::query_as(&format!(
        "SELECT name, old_position, new_position FROM \"{schema}\".checkpoint_history \
         WHERE old_position > new_position"
    ))
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(
        backwards.is_empty(),
        "checkpoints moved backwards: {backwards:?}"
    );
    let unfenced: Vec<(String, String, Option<String>)> = sqlx::query_as(&format!(
        "SELECT name, writer, lease_owner FROM \"{schema}\".checkpoint_history \
         WHERE name LIKE '{PROJECTION}#%' AND name <> '{PROJECTION}#partitions' \
         AND writer IS DISTINCT FROM lease_owner"
    ))
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(
        unfenced.is_empty(),
        "checkpoints written by a process without the lease: {unfenced:?}"
    );
    // The stopped worker: after its leases were taken, it wrote only under new leases (the
    // check above), and it did take part before and after.
    let w2_after: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM \"{schema}\".checkpoint_history WHERE writer = 'w2' AND seq > $1"
    ))
    .bind(stopped_at)
    .fetch_one(&pool)
    .await
    .unwrap();
    let by_worker: Vec<(String, i64)> = sqlx::query_as(&format!(
        "SELECT worker, count(*) FROM \"{schema}\".applied GROUP BY worker ORDER BY worker"
    ))
    .fetch_all(&pool)
    .await
    .unwrap();
    eprintln!(
        "{EVENTS} events over {STREAMS} streams in {elapsed:?}; applied per worker: \
         {by_worker:?}; w2 checkpoint writes after its stop (under new leases): {w2_after}"
    );
    let workers: HashMap<String, i64> = by_worker.into_iter().collect();
    assert!(
        workers.contains_key("w4"),
        "the late worker took no partition"
    );

    // With no worker left, wait_for times out instead of returning early.
    drop((w1, w2, w3, w4));
    let late = store
        .append(
            "late",
            ExpectedVersion::NoStream,
            Event::new("part.late", json!({})).unwrap(),
        )
        .await
        .unwrap();
    let err = view
        .wait_for(late.position.unwrap(), Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(err, eventflow::Error::Timeout { .. }), "{err}");

    drop_schema(&pool, &schema).await;
}

async fn wait_applied_by(pool: &PgPool, schema: &str, worker: &str, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let applied: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM \"{schema}\".applied WHERE worker = $1"
        ))
        .bind(worker)
        .fetch_one(pool)
        .await
        .unwrap();
        if applied >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{worker} applied only {applied} events"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn max_history_seq(pool: &PgPool, schema: &str) -> i64 {
    sqlx::query_scalar(&format!(
        "SELECT coalesce(max(seq), 0) FROM \"{schema}\".checkpoint_history"
    ))
    .fetch_one(pool)
    .await
    .unwrap()
}

/// A saga per trip: started by `trip.started` (which sets a deadline), two `trip.step`s, and the
/// deadline's `trip.timeout`; it completes when it has seen all of them.
struct Trip;

#[derive(Debug, Default, Serialize, Deserialize)]
struct TripState {
    started: u32,
    steps: u32,
    timeouts: u32,
}

impl Saga for Trip {
    type State = TripState;
    fn name(&self) -> &str {
        SAGA
    }
    fn starts_on(&self) -> Vec<String> {
        vec!["trip.started".into()]
    }
    fn handles(&self) -> Vec<String> {
        vec!["trip.step".into(), "trip.timeout".into()]
    }
    fn handle(
        &self,
        state: &mut TripState,
        event: &Event,
        ctx: &mut SagaContext,
    ) -> Result<(), BoxError> {
        match event.event_type.as_str() {
            "trip.started" => {
                state.started += 1;
                ctx.set_deadline(
                    "timeout",
                    Duration::from_millis(1500),
                    Event::new("trip.timeout", json!({}))?,
                );
            }
            "trip.step" => state.steps += 1,
            "trip.timeout" => state.timeouts += 1,
            other => return Err(format!("unexpected {other}").into()),
        }
        if state.steps == 2 && state.timeouts == 1 {
            ctx.complete();
        }
        Ok(())
    }
}

/// A worker process of the partitioned saga.
#[tokio::test]
#[ignore = "a worker process started by partitioned_saga_across_processes"]
async fn worker_saga() {
    let Some((out, schema, worker)) = child_env() else {
        return;
    };
    let pool = pool(8, &worker).await;
    let store = store(&pool, &schema);
    let checkpoints = Arc::new(store.checkpoints());
    let sagas = Arc::new(PostgresSagaStore::for_store(&store).unwrap());
    let leases = Arc::new(PostgresLeaseStore::in_schema(pool.clone(), &schema).unwrap());
    let manager = Arc::new(SagaManager::new(Trip, sagas).unwrap());
    let saga = Arc::new(
        PartitionedSaga::new(
            manager,
            Arc::new(store),
            checkpoints,
            leases,
            options(&worker),
        )
        .unwrap()
        .deadline_tick(Duration::from_millis(100)),
    );
    let _task = saga.start();
    child::report(&out, child::READY);
    tokio::time::sleep(child::CHILD_LIFETIME).await;
}

/// 1,000 trips across three worker processes, one SIGKILLed: one instance each, every step
/// once, every deadline once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_saga_across_processes() {
    const TRIPS: usize = 1000;
    let pool = pool(4, "parent").await;
    let schema = unique("psaga");
    let store = store(&pool, &schema);
    store.migrate().await.unwrap();
    let sagas = PostgresSagaStore::for_store(&store).unwrap();
    let store: Arc<dyn EventStore> = Arc::new(store);

    let test = "worker_saga";
    let mut workers: Vec<ChildProcess> = ["s1", "s2", "s3"]
        .iter()
        .map(|w| spawn(test, &schema, w))
        .collect();
    for w in &mut workers {
        w.wait_ready(Duration::from_secs(20)).await;
    }
    for t in 0..TRIPS {
        let trip = format!("trip-{t}");
        let events = vec![
            Event::new("trip.started", json!({}))
                .unwrap()
                .with_correlation(trip.clone()),
            Event::new("trip.step", json!({ "n": 1 }))
                .unwrap()
                .with_correlation(trip.clone()),
            Event::new("trip.step", json!({ "n": 2 }))
                .unwrap()
                .with_correlation(trip.clone()),
        ];
        store
            .append_batch(&trip, ExpectedVersion::NoStream, events)
            .await
            .unwrap();
        if t == TRIPS / 2 {
            workers[0].kill();
        }
    }

    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (instances, completed): (i64, i64) = sqlx::query_as(&format!(
            "SELECT count(*), count(*) FILTER (WHERE completed) FROM \"{schema}\".saga_instances \
             WHERE saga = $1"
        ))
        .bind(SAGA)
        .fetch_one(&pool)
        .await
        .unwrap();
        if completed == TRIPS as i64 {
            assert_eq!(instances, TRIPS as i64);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{completed} of {TRIPS} trips completed ({instances} instances)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let states: Vec<(String, serde_json::Value)> = sqlx::query_as(&format!(
        "SELECT correlation_id, state FROM \"{schema}\".saga_instances WHERE saga = $1"
    ))
    .bind(SAGA)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(states.len(), TRIPS, "one instance per trip");
    for (trip, state) in &states {
        let state: TripState = serde_json::from_value(state.clone()).unwrap();
        assert_eq!(
            (state.started, state.steps, state.timeouts),
            (1, 2, 1),
            "trip {trip}: every step and the deadline exactly once"
        );
    }
    assert_eq!(
        sagas.handled_count(SAGA).await.unwrap(),
        4 * TRIPS as u64,
        "four handled events per trip"
    );
    drop(workers);
    drop_schema(&pool, &schema).await;
}
