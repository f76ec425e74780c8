//! Benchmark: partitioned projections with an I/O-bound handler, next to the single runner in
//! the same run; and the failover time after SIGKILL of a partition lease holder.
//!
//! - Throughput: a transactional PostgreSQL projection whose handler waits 1 ms per event (a
//!   call to another service, say) and inserts one row, catching up 2,000 stored events over
//!   400 streams. The baseline is the single `projection_runner` (one event at a time, in global
//!   order, batches of 100); then `partitioned_runner` with 1, 2 and 4 partitions in one
//!   process (`concurrency` = partitions; batches of 100 x partitions read, so each partition's
//!   transaction holds about 100 of its own events). Then 8 partitions (concurrency 2 per
//!   process) in 1 and 2 worker processes (this binary started again as a worker): the workers
//!   start and settle (every partition held by its rendezvous owner) first, then 2,000 events
//!   of a type only they handle are appended, timed from the first append to the last event
//!   applied (live rather than catch-up).
//! - Failover: one partition, two worker processes, lease time-to-live 1 s (heartbeat 333 ms),
//!   events appended continuously; the lease holder is SIGKILLed and the time until the other
//!   worker moves the partition's checkpoint is measured, over 20 kills (p50, p99, max).
//!
//! Run: `cargo bench -p eventflow-benches --features postgres --bench partitions`
//! (PostgreSQL at `DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/test`).
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use eventflow::lease::LeaseStore;
use eventflow::postgres::{
    PgPool, PgProjection, PgTransaction, PostgresCheckpointStore, PostgresEventStore,
    PostgresLeaseStore, partitioned_runner, projection_runner,
};
use eventflow::projection::{
    PartitionedOptions, ProjectionView, RunnerOptions, lease_name, partition_checkpoint,
};
use eventflow::{CheckpointStore, Event, EventStore, ExpectedVersion, HandlerResult};
use eventflow_benches::{header, per_second, report};
use serde_json::json;
use sqlx::postgres::PgPoolOptions;

const EVENTS: u64 = 2_000;
const STREAMS: u64 = 400;
const WORKER_ENV: &str = "EVENTFLOW_BENCH_PARTITION_WORKER";

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// Waits 1 ms per event (an I/O-bound handler), then writes one row.
struct Slow {
    name: String,
    /// The event type it handles.
    event_type: String,
}

#[async_trait]
impl PgProjection for Slow {
    fn name(&self) -> &str {
        &self.name
    }
    fn patterns(&self) -> Vec<String> {
        vec![self.event_type.clone()]
    }
    async fn handle(&self, tx: &mut PgTransaction, event: &Event) -> HandlerResult {
        tokio::time::sleep(Duration::from_millis(1)).await;
        sqlx::query("INSERT INTO bench_applied (event_id) VALUES ($1)")
            .bind(event.id)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

async fn pool(size: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(size)
        .connect(&database_url())
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {}: {e}", database_url()))
}

fn store(pool: &PgPool, schema: &str) -> PostgresEventStore {
    PostgresEventStore::builder(pool.clone())
        .schema(schema)
        .poll_interval(Duration::from_millis(50))
        .build()
        .unwrap()
}

fn options(partitions: u32, concurrency: usize, ttl: Duration) -> PartitionedOptions {
    PartitionedOptions::default()
        .partitions(partitions)
        .concurrency(concurrency)
        .lease_ttl(ttl)
        .runner(RunnerOptions {
            // Each partition reads every event and applies its own share: reading 100 per
            // partition per batch gives each partition's transaction about as many events as the
            // single runner's batch of 100.
            batch_size: 100 * partitions as usize,
            poll_interval: Duration::from_millis(50),
            ..RunnerOptions::default()
        })
}

/// A worker process: `schema,name,partitions,concurrency,ttl_ms,worker_id,event_type`.
async fn worker(spec: &str) {
    let parts: Vec<&str> = spec.split(',').collect();
    let (schema, name) = (parts[0], parts[1]);
    let partitions: u32 = parts[2].parse().unwrap();
    let concurrency: usize = parts[3].parse().unwrap();
    let ttl = Duration::from_millis(parts[4].parse().unwrap());
    let pool = pool(concurrency as u32 + 4).await;
    let store = store(&pool, schema);
    let leases = Arc::new(PostgresLeaseStore::in_schema(pool.clone(), schema).unwrap());
    let runner = partitioned_runner(
        Arc::new(store),
        pool.clone(),
        schema,
        Slow {
            name: name.to_owned(),
            event_type: parts[6].to_owned(),
        },
        leases,
        options(partitions, concurrency, ttl).worker_id(parts[5]),
    )
    .unwrap();
    let _task = runner.start();
    tokio::time::sleep(Duration::from_secs(120)).await;
}

fn spawn_worker(
    schema: &str,
    name: &str,
    partitions: u32,
    concurrency: usize,
    ttl: Duration,
    id: &str,
    event_type: &str,
) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .env(
            WORKER_ENV,
            format!(
                "{schema},{name},{partitions},{concurrency},{},{id},{event_type}",
                ttl.as_millis()
            ),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

fn kill(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

fn view(
    pool: &PgPool,
    schema: &str,
    store: &Arc<dyn EventStore>,
    name: &str,
    partitions: u32,
) -> ProjectionView {
    ProjectionView::new(
        name,
        partitions,
        Arc::clone(store),
        Arc::new(PostgresCheckpointStore::in_schema(pool.clone(), schema).unwrap()),
        Arc::new(PostgresLeaseStore::in_schema(pool.clone(), schema).unwrap()),
    )
}

#[tokio::main]
async fn main() {
    if let Ok(spec) = std::env::var(WORKER_ENV) {
        worker(&spec).await;
        return;
    }
    let pool = pool(16).await;
    let schema = format!("bench_parts_{}", std::process::id());
    let pg = store(&pool, &schema);
    pg.migrate().await.unwrap();
    sqlx::query(&format!(
        "CREATE TABLE \"{schema}\".bench_applied (event_id uuid NOT NULL)"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let store: Arc<dyn EventStore> = Arc::new(pg);
    for s in 0..STREAMS {
        let events: Vec<Event> = (0..EVENTS / STREAMS)
            .map(|n| Event::new("bench.work", json!({ "n": n })).unwrap())
            .collect();
        store
            .append_batch(&format!("s-{s}"), ExpectedVersion::NoStream, events)
            .await
            .unwrap();
    }
    let head = store.head_position().await.unwrap();

    header(&format!(
        "partitioned projection, I/O-bound handler (1 ms per event), {EVENTS} events, PostgreSQL"
    ));
    // The baseline runs before and after the partitioned runs (the machine's load varies);
    // the faster of the two is the baseline every ratio is taken against.
    let single_before = single_runner(&store, &pool, &schema, "single-before").await;
    let mut rates = Vec::new();
    for partitions in [1u32, 2, 4] {
        let name = format!("p{partitions}");
        let leases = Arc::new(PostgresLeaseStore::in_schema(pool.clone(), &schema).unwrap());
        let runner = partitioned_runner(
            Arc::clone(&store),
            pool.clone(),
            &schema,
            Slow {
                name: name.clone(),
                event_type: "bench.work".into(),
            },
            leases,
            options(partitions, partitions as usize, Duration::from_secs(10)),
        )
        .unwrap();
        let start = Instant::now();
        let task = runner.start();
        runner
            .wait_for(head, Duration::from_secs(120))
            .await
            .unwrap();
        rates.push((partitions, per_second(EVENTS, start.elapsed())));
        task.stop().await;
    }
    let single_after = single_runner(&store, &pool, &schema, "single-after").await;
    let single = single_before.max(single_after);
    println!(
        "single runner (baseline): {single_before:.0} ev/s before, {single_after:.0} ev/s after; \
         ratios against the faster"
    );
    report("single runner (baseline)", single, single);
    let mut results = Vec::new();
    for (partitions, rate) in rates {
        let ratio = report(
            &format!("{partitions} partition(s), one process"),
            rate,
            single,
        );
        results.push((partitions, ratio));
    }

    // Worker processes: started and settled first (every partition held by its rendezvous
    // owner), then 2,000 events of a type only they handle are appended; timed from the first
    // append to the last event applied.
    for processes in [1usize, 2] {
        let name = format!("procs{processes}");
        let event_type = format!("bench.live{processes}");
        let view = view(&pool, &schema, &store, &name, 8);
        let ids: Vec<String> = (0..processes).map(|i| format!("w{i}")).collect();
        let children: Vec<Child> = ids
            .iter()
            .map(|id| {
                spawn_worker(
                    &schema,
                    &name,
                    8,
                    2,
                    Duration::from_millis(1500),
                    id,
                    &event_type,
                )
            })
            .collect();
        settle(&view, &ids).await;
        let start = Instant::now();
        let mut last = 0;
        for s in 0..STREAMS {
            let events: Vec<Event> = (0..EVENTS / STREAMS)
                .map(|n| Event::new(&event_type, json!({ "n": n })).unwrap())
                .collect();
            let stored = store
                .append_batch(
                    &format!("{event_type}-{s}"),
                    ExpectedVersion::NoStream,
                    events,
                )
                .await
                .unwrap();
            last = stored.last().and_then(|e| e.position).unwrap_or(last);
        }
        view.wait_for(last, Duration::from_secs(120)).await.unwrap();
        let rate = per_second(EVENTS, start.elapsed());
        children.into_iter().for_each(kill);
        report(
            &format!("8 partitions, {processes} process(es) x concurrency 2"),
            rate,
            single,
        );
    }

    failover(&pool, &schema, &store).await;

    sqlx::query(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .execute(&pool)
        .await
        .unwrap();
    if let Some((_, ratio)) = results.iter().find(|(p, _)| *p == 4) {
        println!("target: 4 partitions >= 3x the single runner: {ratio:.2}x");
    }
}

/// The single `projection_runner` catching up every `bench.work` event: events per second.
async fn single_runner(
    store: &Arc<dyn EventStore>,
    pool: &PgPool,
    schema: &str,
    name: &str,
) -> f64 {
    let runner = projection_runner(
        Arc::clone(store),
        pool.clone(),
        schema,
        Slow {
            name: name.into(),
            event_type: "bench.work".into(),
        },
    )
    .unwrap()
    .batch_size(100);
    let start = Instant::now();
    runner.catch_up().await.unwrap();
    per_second(EVENTS, start.elapsed())
}

/// Waits until every partition is held by its rendezvous owner among `ids`.
async fn settle(view: &ProjectionView, ids: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = view.status().await.unwrap();
        let settled = status.partitions.iter().all(|p| {
            p.owner.as_deref()
                == eventflow::projection::partition::owner_of(ids, &status.name, p.partition)
        });
        if settled {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the workers did not settle: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// SIGKILL the lease holder of a one-partition projection; time until another worker moves the
/// checkpoint.
async fn failover(pool: &PgPool, schema: &str, store: &Arc<dyn EventStore>) {
    const KILLS: usize = 20;
    let ttl = Duration::from_secs(1);
    let name = "failover";
    header(&format!(
        "failover after SIGKILL of the partition lease holder (lease ttl {ttl:?}, heartbeat ttl/3), {KILLS} kills"
    ));
    let checkpoint = partition_checkpoint(name, 0);
    let checkpoints = PostgresCheckpointStore::in_schema(pool.clone(), schema).unwrap();
    let leases = PostgresLeaseStore::in_schema(pool.clone(), schema).unwrap();
    let appender = {
        let store = Arc::clone(store);
        tokio::spawn(async move {
            let mut v = 0;
            loop {
                let e = Event::new("bench.tick", json!({ "v": v })).unwrap();
                store
                    .append("failover-ticks", ExpectedVersion::Exact(v), e)
                    .await
                    .unwrap();
                v += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    let mut workers: std::collections::HashMap<String, Child> = (0..2)
        .map(|i| {
            let id = format!("f{i}");
            let child = spawn_worker(schema, name, 1, 1, ttl, &id, "bench.tick");
            (id, child)
        })
        .collect();
    let mut times = Vec::new();
    for kill_no in 0..KILLS {
        // The holder, once its partition is running (the checkpoint moves under its lease).
        let holder = loop {
            let live = leases
                .list(Some(&lease_name(name)))
                .await
                .unwrap()
                .into_iter()
                .find(|l| l.expires_at > chrono::Utc::now());
            if let Some(l) = live {
                break l;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let start = checkpoints.load_checkpoint(&checkpoint).await.unwrap();
        while checkpoints.load_checkpoint(&checkpoint).await.unwrap() == start {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let victim = workers
            .remove(&holder.owner)
            .expect("the holder is one of ours");
        let killed_at = Instant::now();
        kill(victim);
        let before = checkpoints.load_checkpoint(&checkpoint).await.unwrap();
        let id = format!("f{}", kill_no + 2);
        workers.insert(
            id.clone(),
            spawn_worker(schema, name, 1, 1, ttl, &id, "bench.tick"),
        );
        // Until another worker holds the lease and has moved the checkpoint.
        loop {
            let taken = leases
                .list(Some(&lease_name(name)))
                .await
                .unwrap()
                .into_iter()
                .any(|l| l.epoch > holder.epoch && l.expires_at > chrono::Utc::now());
            if taken && checkpoints.load_checkpoint(&checkpoint).await.unwrap() > before {
                times.push(killed_at.elapsed());
                break;
            }
            assert!(killed_at.elapsed() < Duration::from_secs(30), "no failover");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    appender.abort();
    workers.into_values().for_each(kill);
    times.sort();
    let pct = |q: f64| times[((times.len() as f64 - 1.0) * q).round() as usize];
    if times.is_empty() {
        println!("no failover measured");
    } else {
        println!(
            "{} failovers: p50 {:?}  p99 {:?}  max {:?}  (bound: ttl + heartbeat = {:?})",
            times.len(),
            pct(0.5),
            pct(0.99),
            times[times.len() - 1],
            ttl + ttl / 3
        );
    }
}
