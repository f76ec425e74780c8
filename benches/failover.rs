//! Relay failover time after SIGKILL of the lease holder: three processes run `with_relay` on
//! one PostgreSQL schema (one publishes, two stand by); the benchmark kills the publishing one
//! 20 times (starting a fresh process each time, so three stay) and measures, on the
//! database's clock, from the kill to the first event published by the successor. It prints
//! p50 and p99 next to the configured bound, the lease's time-to-live plus one heartbeat.
//!
//! Run: `cargo bench -p eventflow-benches --features postgres --bench failover`
//! (`DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/test`; a schema of its own,
//! dropped at the end).
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use eventflow::handler::{ErrorReceiver, ErrorSender};
use eventflow::postgres::{PgPool, PgPoolOptions, PostgresEventStore};
use eventflow::relay::read_status;
use eventflow::{
    Delivery, Event, EventBus, EventStore, ExpectedVersion, Handler, RelayOptions, Subscription,
    SubscriptionOptions, WithBus,
};

const TTL: Duration = Duration::from_millis(500);
const HEARTBEAT: Duration = Duration::from_millis(100);
const KILLS: usize = 20;
const WORKER_ENV: &str = "EVENTFLOW_FAILOVER_WORKER";

fn url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

async fn pool(size: u32) -> PgPool {
    let url = url();
    PgPoolOptions::new()
        .max_connections(size)
        .connect(&url)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL is not reachable at {url}: {e}"))
}

/// Inserts what it is given into `published`, with the relay's owner id.
struct TableBus {
    pool: PgPool,
    insert: String,
    owner: String,
    errors: ErrorSender,
}

#[async_trait]
impl EventBus for TableBus {
    fn guarantee(&self) -> Delivery {
        Delivery::AtMostOnce
    }
    async fn publish(&self, event: Event) -> eventflow::Result<()> {
        self.publish_batch(vec![event]).await
    }
    async fn publish_batch(&self, events: Vec<Event>) -> eventflow::Result<()> {
        let ids: Vec<uuid::Uuid> = events.iter().map(|e| e.id).collect();
        sqlx::query(&self.insert)
            .bind(&ids)
            .bind(&self.owner)
            .execute(&self.pool)
            .await
            .map_err(|e| eventflow::Error::backend("table bus", e))?;
        Ok(())
    }
    async fn subscribe_with(
        &self,
        _patterns: &[&str],
        _options: SubscriptionOptions,
        _handler: Arc<dyn Handler>,
    ) -> eventflow::Result<Subscription> {
        Err(eventflow::Error::InvalidArgument(
            "the table bus only publishes".into(),
        ))
    }
    async fn close(&self) -> eventflow::Result<()> {
        Ok(())
    }
    fn errors(&self) -> ErrorReceiver {
        self.errors.subscribe()
    }
}

/// A worker process: the relay of `schema` with owner `owner`, until killed.
async fn worker(schema: String, owner: String) {
    let pool = pool(4).await;
    let store = PostgresEventStore::builder(pool.clone())
        .schema(&schema)
        .poll_interval(Duration::from_millis(100))
        .build()
        .unwrap();
    let bus = TableBus {
        pool,
        insert: format!(
            "INSERT INTO \"{schema}\".published (event_id, owner) \
             SELECT id, $2 FROM unnest($1::uuid[]) AS t(id)"
        ),
        owner: owner.clone(),
        errors: ErrorSender::default(),
    };
    let _relayed = store.with_relay(
        bus,
        RelayOptions::default()
            .lease_timing(TTL, HEARTBEAT)
            .owner(owner),
    );
    // Runs until the benchmark kills it; a bound in case the benchmark itself dies.
    tokio::time::sleep(Duration::from_secs(600)).await;
}

fn spawn_worker(schema: &str, owner: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .env(WORKER_ENV, format!("{schema} {owner}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

async fn probe(store: &PostgresEventStore) {
    let event = Event::new("failover.probe", serde_json::json!({})).unwrap();
    store
        .append("probe", ExpectedVersion::Any, event)
        .await
        .unwrap();
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() {
    if let Ok(spec) = std::env::var(WORKER_ENV) {
        let (schema, owner) = spec.split_once(' ').unwrap();
        worker(schema.to_owned(), owner.to_owned()).await;
        return;
    }
    let pool = pool(4).await;
    let schema = format!("bench_failover_{}", std::process::id());
    let store = PostgresEventStore::builder(pool.clone())
        .schema(&schema)
        .poll_interval(Duration::from_millis(100))
        .build()
        .unwrap();
    store.migrate().await.unwrap();
    sqlx::query(&format!(
        "CREATE TABLE \"{schema}\".published (seq bigserial PRIMARY KEY, event_id uuid NOT NULL, \
         owner text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())"
    ))
    .execute(&pool)
    .await
    .unwrap();
    let last_by_other =
        format!("SELECT min(at) FROM \"{schema}\".published WHERE owner <> $1 AND at > $2");

    let mut workers: Vec<(String, Child)> = (0..3)
        .map(|i| {
            let owner = format!("w{i}");
            let child = spawn_worker(&schema, &owner);
            (owner, child)
        })
        .collect();
    let mut times = Vec::new();
    for kill in 0..KILLS {
        // Wait for a live holder that publishes.
        probe(&store).await;
        let holder = loop {
            let status = read_status(&store, "relay").await.unwrap();
            if let Some(lease) = status.lease.filter(|_| status.active && status.lag == 0) {
                break lease.owner;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let index = workers.iter().position(|(o, _)| *o == holder).unwrap();
        let (_, mut victim) = workers.remove(index);
        victim.kill().unwrap();
        victim.wait().unwrap();
        let killed_at: chrono::DateTime<chrono::Utc> =
            sqlx::query_scalar("SELECT clock_timestamp()")
                .fetch_one(&pool)
                .await
                .unwrap();
        let owner = format!("w{}", 3 + kill);
        workers.push((owner.clone(), spawn_worker(&schema, &owner)));
        // Probe every 5 ms until a successor publishes.
        let resumed = loop {
            probe(&store).await;
            let at: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(&last_by_other)
                .bind(&holder)
                .bind(killed_at)
                .fetch_one(&pool)
                .await
                .unwrap();
            if let Some(at) = at {
                break at;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        times.push((resumed - killed_at).to_std().unwrap_or_default());
    }
    for (_, mut child) in workers {
        let _ = child.kill();
        let _ = child.wait();
    }
    sqlx::query(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .execute(&pool)
        .await
        .unwrap();

    times.sort();
    let bound = TTL + HEARTBEAT;
    println!(
        "\n== relay failover after SIGKILL of the lease holder (3 processes, {KILLS} kills) =="
    );
    println!(
        "p50 {:>8.0} ms   p99 {:>8.0} ms   max {:>8.0} ms   bound (ttl {} ms + heartbeat {} ms) {:>6.0} ms   p99/bound {:.2}",
        percentile(&times, 0.5).as_secs_f64() * 1e3,
        percentile(&times, 0.99).as_secs_f64() * 1e3,
        times.last().unwrap().as_secs_f64() * 1e3,
        TTL.as_millis(),
        HEARTBEAT.as_millis(),
        bound.as_secs_f64() * 1e3,
        percentile(&times, 0.99).as_secs_f64() / bound.as_secs_f64(),
    );
}
