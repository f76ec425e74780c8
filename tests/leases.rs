//! Leases with fencing on the real PostgreSQL server (`DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`): the lease kit, fenced checkpoint writes inside a
//! caller's transaction, and one active relay per schema across real OS processes. Every test
//! works in a schema of its own, dropped at the end.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use eventflow::lease::LeaseStore;
use eventflow::postgres::{PostgresEventStore, fenced_checkpoint};
use eventflow::testing::conformance;
use eventflow::{CheckpointStore, Error};
use eventflow_tests::{database_url, service_unavailable, unique};
use sqlx::postgres::{PgPool, PgPoolOptions};

/// A schema of its own, migrated; dropped by [`Fixture::cleanup`].
struct Fixture {
    pool: PgPool,
    store: PostgresEventStore,
    schema: String,
}

impl Fixture {
    async fn new() -> Self {
        let pool = pool(8).await;
        let schema = unique("lease");
        let store = PostgresEventStore::builder(pool.clone())
            .schema(&schema)
            .poll_interval(Duration::from_millis(200))
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

#[tokio::test]
async fn postgres_lease_store_passes_the_kit() {
    let fx = Fixture::new().await;
    conformance::leases::run(&fx.store.leases(), &fx.store.checkpoints(), "kit")
        .await
        .unwrap();
    fx.cleanup().await;
}

#[tokio::test]
async fn checkpoints_never_move_backwards() {
    let fx = Fixture::new().await;
    let checkpoints = fx.store.checkpoints();
    checkpoints.save_checkpoint("relay", 99).await.unwrap();
    checkpoints.save_checkpoint("relay", 42).await.unwrap();
    assert_eq!(
        checkpoints.load_checkpoint("relay").await.unwrap(),
        99,
        "a lower save must not move the checkpoint back"
    );
    checkpoints.reset_checkpoint("relay").await.unwrap();
    assert_eq!(checkpoints.load_checkpoint("relay").await.unwrap(), 0);
    fx.cleanup().await;
}

/// Whether a backend of this database waits on a lock while running `needle`: read from the
/// server, so "it is blocked" rests on no sleep.
async fn waiting_on_lock(pool: &PgPool, needle: &str) -> bool {
    let waiting: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE wait_event_type = 'Lock' AND query LIKE '%' || $1 || '%'",
    )
    .bind(needle)
    .fetch_one(pool)
    .await
    .unwrap();
    waiting > 0
}

#[tokio::test]
async fn a_takeover_waits_for_the_fenced_transaction_and_then_fences_it_off() {
    let fx = Fixture::new().await;
    let leases = fx.store.leases();
    let name = unique("work");
    let ttl = Duration::from_millis(300);
    let a = leases
        .try_acquire(&name, 0, "a", ttl)
        .await
        .unwrap()
        .unwrap();

    // A writes its checkpoint in its own transaction and keeps it open past the lease.
    let mut tx = fx.pool.begin().await.unwrap();
    leases
        .fenced_checkpoint_in(&mut tx, &a, "work-cp", 10)
        .await
        .unwrap();
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;

    // The lease has expired, but B's takeover must wait for A's transaction: otherwise B
    // would read the checkpoint before A's work commits and do that work again.
    let other = leases.clone();
    let name2 = name.clone();
    let takeover = tokio::spawn(async move {
        other
            .try_acquire(&name2, 0, "b", Duration::from_secs(30))
            .await
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !waiting_on_lock(&fx.pool, "leases").await {
        assert!(
            !takeover.is_finished(),
            "the takeover did not wait for A's transaction"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "no takeover waiting on the lease row"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tx.commit().await.unwrap();
    let b = takeover
        .await
        .unwrap()
        .unwrap()
        .expect("B takes the expired lease over");
    assert_eq!(b.epoch, a.epoch + 1);
    assert_eq!(
        fx.store
            .checkpoints()
            .load_checkpoint("work-cp")
            .await
            .unwrap(),
        10
    );

    // A, stale now, writes nothing: its transaction's fenced write fails and it rolls back.
    let mut tx = fx.pool.begin().await.unwrap();
    sqlx::query(&format!(
        "CREATE TABLE \"{}\".read_model (n int)",
        fx.schema
    ))
    .execute(&mut *tx)
    .await
    .unwrap();
    let fenced = fenced_checkpoint(&mut tx, &fx.schema, &a, "work-cp", 20).await;
    assert!(
        matches!(fenced, Err(Error::LeaseLost { ref owner, epoch, .. }) if owner == "a" && epoch == a.epoch),
        "{fenced:?}"
    );
    tx.rollback().await.unwrap();
    assert_eq!(
        fx.store
            .checkpoints()
            .load_checkpoint("work-cp")
            .await
            .unwrap(),
        10
    );
    // B's writes go through.
    let mut tx = fx.pool.begin().await.unwrap();
    fenced_checkpoint(&mut tx, &fx.schema, &b, "work-cp", 20)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(
        fx.store
            .checkpoints()
            .load_checkpoint("work-cp")
            .await
            .unwrap(),
        20
    );
    let listed = leases.list(Some(&name)).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].owner.as_str(), listed[0].epoch), ("b", b.epoch));
    fx.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// One active relay per schema, across real OS processes.
//
// Each worker is this test binary run again (`relay_worker`, an ignored test) with
// `with_relay` on the test's schema, publishing to a bus that writes every event it is given to
// the table `published` with the relay's owner id. Worker connections carry the owner id as
// `application_name`, and triggers on `checkpoints` log every checkpoint statement and every
// row it wrote with that name, so the parent sees from the server who published what and who
// committed which checkpoint.
// ---------------------------------------------------------------------------------------------

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use eventflow::handler::ErrorReceiver;
use eventflow::postgres::PgConnectOptions;
use eventflow::relay::read_status;
use eventflow::testing::RecordingBus;
use eventflow::{
    Delivery, Event, EventBus, EventStore, ExpectedVersion, Handler, RelayOptions, Subscription,
    SubscriptionOptions, WithBus,
};
use eventflow_tests::child::{ChildProcess, READY, child_out, report};
use serde_json::json;

/// A bus that inserts what it is given into `<schema>.published`, with the publishing relay's
/// owner id; optionally pausing after each insert, like a slow broker acknowledgement.
struct TableBus {
    pool: PgPool,
    insert: String,
    owner: String,
    pause: Duration,
    inner: RecordingBus,
}

#[async_trait]
impl EventBus for TableBus {
    fn guarantee(&self) -> Delivery {
        self.inner.guarantee()
    }
    async fn publish(&self, event: Event) -> eventflow::Result<()> {
        self.publish_batch(vec![event]).await
    }
    async fn publish_batch(&self, events: Vec<Event>) -> eventflow::Result<()> {
        let ids: Vec<uuid::Uuid> = events.iter().map(|e| e.id).collect();
        let positions: Vec<i64> = events
            .iter()
            .map(|e| i64::try_from(e.position.unwrap_or(0)).unwrap())
            .collect();
        sqlx::query(&self.insert)
            .bind(&ids)
            .bind(&positions)
            .bind(&self.owner)
            .execute(&self.pool)
            .await
            .map_err(|e| Error::backend("table bus", e))?;
        tokio::time::sleep(self.pause).await;
        Ok(())
    }
    async fn subscribe_with(
        &self,
        patterns: &[&str],
        options: SubscriptionOptions,
        handler: Arc<dyn Handler>,
    ) -> eventflow::Result<Subscription> {
        self.inner.subscribe_with(patterns, options, handler).await
    }
    async fn close(&self) -> eventflow::Result<()> {
        self.inner.close().await
    }
    fn errors(&self) -> ErrorReceiver {
        self.inner.errors()
    }
}

fn env_ms(name: &str) -> Duration {
    Duration::from_millis(
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    )
}

/// The worker process: a relay on `LEASE_SCHEMA` with a lease of `LEASE_TTL_MS` and a heartbeat
/// of `LEASE_HEARTBEAT_MS`, publishing to the `published` table (pausing `SINK_PAUSE_MS` after
/// each batch). Reports `owner <id>`, then `ready`, then `active` / `standby` on every change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a child process of the relay tests, started by them"]
async fn relay_worker() {
    let Some(out) = child_out() else { return };
    let schema = std::env::var("LEASE_SCHEMA").unwrap();
    let owner = eventflow::lease::worker_id("w");
    let options = PgConnectOptions::from_str(&database_url())
        .unwrap()
        .application_name(&owner);
    let pool = PgPoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .unwrap();
    let store = PostgresEventStore::builder(pool.clone())
        .schema(&schema)
        .poll_interval(Duration::from_millis(100))
        .build()
        .unwrap();
    let bus = TableBus {
        pool: pool.clone(),
        insert: format!(
            "INSERT INTO \"{schema}\".published (event_id, position, owner) \
             SELECT id, p, $3 FROM unnest($1::uuid[], $2::bigint[]) AS t(id, p)"
        ),
        owner: owner.clone(),
        pause: env_ms("SINK_PAUSE_MS"),
        inner: RecordingBus::new(),
    };
    let relayed = store.with_relay(
        bus,
        RelayOptions::default()
            .lease_timing(env_ms("LEASE_TTL_MS"), env_ms("LEASE_HEARTBEAT_MS"))
            .owner(&owner),
    );
    report(&out, &format!("owner {owner}"));
    report(&out, READY);
    let mut was = None;
    let deadline = tokio::time::Instant::now() + eventflow_tests::child::CHILD_LIFETIME;
    while tokio::time::Instant::now() < deadline {
        if let Ok(status) = relayed.relay_status().await
            && was != Some(status.active)
        {
            report(&out, if status.active { "active" } else { "standby" });
            was = Some(status.active);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

const TTL: Duration = Duration::from_millis(1000);
const HEARTBEAT: Duration = Duration::from_millis(250);

/// The sink table and the checkpoint triggers in the fixture's schema.
async fn observe(fx: &Fixture) {
    let s = &fx.schema;
    for statement in [
        format!(
            "CREATE TABLE \"{s}\".published (seq bigserial PRIMARY KEY, event_id uuid NOT NULL, \
             position bigint NOT NULL, owner text NOT NULL, \
             at timestamptz NOT NULL DEFAULT clock_timestamp())"
        ),
        format!(
            "CREATE TABLE \"{s}\".checkpoint_log (seq bigserial PRIMARY KEY, kind text NOT NULL, \
             name text, position bigint, writer text NOT NULL, \
             at timestamptz NOT NULL DEFAULT clock_timestamp())"
        ),
        format!(
            "CREATE FUNCTION \"{s}\".log_checkpoint_row() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN INSERT INTO \"{s}\".checkpoint_log (kind, name, position, writer) \
             VALUES ('write', NEW.name, NEW.position, current_setting('application_name')); \
             RETURN NEW; END $$"
        ),
        format!(
            "CREATE FUNCTION \"{s}\".log_checkpoint_statement() RETURNS trigger \
             LANGUAGE plpgsql AS $$ \
             BEGIN INSERT INTO \"{s}\".checkpoint_log (kind, writer) \
             VALUES ('attempt', current_setting('application_name')); RETURN NULL; END $$"
        ),
        format!(
            "CREATE TRIGGER log_row AFTER INSERT OR UPDATE ON \"{s}\".checkpoints \
             FOR EACH ROW EXECUTE FUNCTION \"{s}\".log_checkpoint_row()"
        ),
        // Fires for a statement that wrote no row too: a fenced write that was refused.
        format!(
            "CREATE TRIGGER log_statement AFTER INSERT ON \"{s}\".checkpoints \
             FOR EACH STATEMENT EXECUTE FUNCTION \"{s}\".log_checkpoint_statement()"
        ),
    ] {
        sqlx::query(&statement).execute(&fx.pool).await.unwrap();
    }
}

fn worker(fx: &Fixture, pause: Duration) -> ChildProcess {
    ChildProcess::spawn(
        "relay_worker",
        &[
            ("LEASE_SCHEMA", fx.schema.clone()),
            ("LEASE_TTL_MS", TTL.as_millis().to_string()),
            ("LEASE_HEARTBEAT_MS", HEARTBEAT.as_millis().to_string()),
            ("SINK_PAUSE_MS", pause.as_millis().to_string()),
            ("DATABASE_URL", database_url()),
        ],
    )
}

fn owner_of(child: &ChildProcess) -> String {
    child
        .lines()
        .iter()
        .find_map(|l| l.strip_prefix("owner ").map(str::to_owned))
        .expect("the worker reports its owner id first")
}

async fn append_events(store: &PostgresEventStore, from: u64, n: u64) -> Vec<uuid::Uuid> {
    let mut ids = Vec::new();
    for chunk in (from..from + n).collect::<Vec<_>>().chunks(10) {
        let events: Vec<Event> = chunk
            .iter()
            .map(|i| Event::new("lease.work", json!({ "n": i })).unwrap())
            .collect();
        ids.extend(events.iter().map(|e| e.id));
        store
            .append_batch(&format!("s-{}", chunk[0] % 7), ExpectedVersion::Any, events)
            .await
            .unwrap();
    }
    ids
}

/// Rows of `published`: (seq, event id, position, owner).
async fn published(fx: &Fixture) -> Vec<(i64, uuid::Uuid, i64, String)> {
    sqlx::query_as(&format!(
        "SELECT seq, event_id, position, owner FROM \"{}\".published ORDER BY seq",
        fx.schema
    ))
    .fetch_all(&fx.pool)
    .await
    .unwrap()
}

/// Waits until every id in `ids` was published.
async fn wait_published(fx: &Fixture, ids: &[uuid::Uuid], within: Duration) {
    let want: HashSet<uuid::Uuid> = ids.iter().copied().collect();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let seen: HashSet<uuid::Uuid> = published(fx).await.into_iter().map(|r| r.1).collect();
        let missing = want.difference(&seen).count();
        if missing == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{missing} of {} events never published",
            want.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn db_now(fx: &Fixture) -> chrono::DateTime<chrono::Utc> {
    sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(&fx.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_one_publisher_and_failover_within_the_lease_after_sigkill() {
    let fx = Fixture::new().await;
    observe(&fx).await;
    // Each bus takes 100 ms to acknowledge a batch, so the holder is likely killed mid-publish.
    let mut workers: Vec<ChildProcess> = (0..3)
        .map(|_| worker(&fx, Duration::from_millis(100)))
        .collect();
    for w in &mut workers {
        w.wait_ready(Duration::from_secs(30)).await;
    }
    let owners: Vec<String> = workers.iter().map(owner_of).collect();

    // Phase 1: three relays, one publisher.
    let mut ids = append_events(&fx.store, 0, 300).await;
    wait_published(&fx, &ids, Duration::from_secs(30)).await;
    let rows = published(&fx).await;
    let publishers: HashSet<&str> = rows.iter().map(|r| r.3.as_str()).collect();
    assert_eq!(
        publishers.len(),
        1,
        "only one relay published: {publishers:?}"
    );
    let holder = rows[0].3.clone();
    let status = read_status(&fx.store, "relay").await.unwrap();
    let lease = status.lease.clone().expect("the relay's lease is stored");
    assert_eq!(lease.owner, holder, "the publisher is the lease holder");
    assert!(status.active);
    assert_eq!(
        rows.len(),
        300,
        "no event published twice without a failover"
    );

    // Phase 2: kill the holder while events keep coming.
    let victim = owners.iter().position(|o| *o == holder).unwrap();
    let appender = {
        let store = fx.store.clone();
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for round in 0..30u64 {
                ids.extend(append_events(&store, 1000 + round * 10, 10).await);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            ids
        })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    let seq_before_kill = published(&fx).await.last().map_or(0, |r| r.0);
    workers[victim].kill();
    let killed_at = db_now(&fx).await;
    ids.extend(appender.await.unwrap());
    wait_published(&fx, &ids, Duration::from_secs(30)).await;

    // Failover within the time-to-live plus one heartbeat (with room for a loaded machine).
    let successor_first: (chrono::DateTime<chrono::Utc>, String) = sqlx::query_as(&format!(
        "SELECT at, owner FROM \"{}\".published WHERE owner <> $1 ORDER BY seq LIMIT 1",
        fx.schema
    ))
    .bind(&holder)
    .fetch_one(&fx.pool)
    .await
    .unwrap();
    let failover = (successor_first.0 - killed_at).to_std().unwrap_or_default();
    eprintln!(
        "relay failover after SIGKILL: {failover:?} (bound: ttl {TTL:?} + heartbeat {HEARTBEAT:?})"
    );
    assert!(
        failover <= TTL + HEARTBEAT + Duration::from_millis(1500),
        "publishing resumed only after {failover:?}"
    );
    let successor = successor_first.1;
    assert!(owners.contains(&successor));

    // Every event at least once; duplicates only from the failover window: published once by
    // the killed relay and once by its successor, at most one batch of them.
    let rows = published(&fx).await;
    let after_kill: HashSet<&str> = rows
        .iter()
        .filter(|r| r.0 > seq_before_kill && r.3 != holder)
        .map(|r| r.3.as_str())
        .collect();
    assert_eq!(
        after_kill,
        HashSet::from([successor.as_str()]),
        "one successor publishes"
    );
    let mut copies: HashMap<uuid::Uuid, Vec<&str>> = HashMap::new();
    for r in &rows {
        copies.entry(r.1).or_default().push(r.3.as_str());
    }
    let want: HashSet<uuid::Uuid> = ids.iter().copied().collect();
    assert_eq!(copies.keys().copied().collect::<HashSet<_>>(), want);
    let duplicates: Vec<_> = copies.iter().filter(|(_, o)| o.len() > 1).collect();
    for (id, by) in &duplicates {
        assert_eq!(
            by.as_slice(),
            [holder.as_str(), successor.as_str()],
            "event {id} was published twice, not by the killed relay then its successor"
        );
    }
    assert!(duplicates.len() <= 500, "{} duplicates", duplicates.len());
    eprintln!("duplicates from the failover window: {}", duplicates.len());

    // No checkpoint ever moved backwards, and status is readable from here (no relay here).
    let log: Vec<(String, i64)> = sqlx::query_as(&format!(
        "SELECT name, position FROM \"{}\".checkpoint_log WHERE kind = 'write' ORDER BY seq",
        fx.schema
    ))
    .fetch_all(&fx.pool)
    .await
    .unwrap();
    assert!(
        log.windows(2).all(|w| w[0].0 != w[1].0 || w[0].1 <= w[1].1),
        "a checkpoint moved backwards: {log:?}"
    );
    let head = fx.store.head_position().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        let status = read_status(&fx.store, "relay").await.unwrap();
        if status.position >= head {
            break status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the successor's checkpoint never reached the head"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(status.position, head);
    assert_eq!(status.lag, 0);
    let lease2 = status.lease.unwrap();
    assert_eq!(lease2.owner, successor);
    assert_eq!(
        lease2.epoch,
        lease.epoch + 1,
        "the takeover incremented the epoch"
    );
    drop(workers);
    fx.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigstopped_relay_commits_nothing_after_losing_its_lease() {
    let fx = Fixture::new().await;
    observe(&fx).await;
    // Both buses acknowledge slowly: A so that it is caught mid-publish, B so that A wakes up
    // while B's first batch (which holds A's unacknowledged one) is not yet checkpointed, when
    // an unfenced write of A would still move the checkpoint.
    let mut a = worker(&fx, Duration::from_millis(800));
    a.wait_ready(Duration::from_secs(30)).await;
    let owner_a = owner_of(&a);
    let first = append_events(&fx.store, 0, 20).await;
    wait_published(&fx, &first, Duration::from_secs(30)).await;
    let mut b = worker(&fx, Duration::from_millis(2000));
    b.wait_ready(Duration::from_secs(30)).await;
    let owner_b = owner_of(&b);

    // Stop A right after its bus took a batch, before it could checkpoint it.
    let seen = published(&fx).await.len();
    let mut ids = first.clone();
    ids.extend(append_events(&fx.store, 100, 20).await);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while published(&fx).await.len() == seen {
        assert!(
            tokio::time::Instant::now() < deadline,
            "A published nothing"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    a.signal("STOP");
    let stopped_at = db_now(&fx).await;
    let log_before: i64 = sqlx::query_scalar(&format!(
        "SELECT coalesce(max(seq), 0) FROM \"{}\".checkpoint_log",
        fx.schema
    ))
    .fetch_one(&fx.pool)
    .await
    .unwrap();

    // B takes the lease over once A's has expired.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let status = read_status(&fx.store, "relay").await.unwrap();
        if status.lease.is_some_and(|l| l.owner == owner_b) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "B never took the lease over"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // A wakes up: it finishes its publish, tries to checkpoint, is fenced off, stands by.
    a.signal("CONT");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while a.lines().last().map(String::as_str) != Some("standby") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "A never stood by: {:?}",
            a.lines()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // B publishes everything, including the batch A never checkpointed.
    ids.extend(append_events(&fx.store, 200, 20).await);
    wait_published(&fx, &ids, Duration::from_secs(30)).await;
    let lease = read_status(&fx.store, "relay")
        .await
        .unwrap()
        .lease
        .unwrap();
    assert_eq!(lease.owner, owner_b, "B holds the lease");
    // A marker after everything: once B published it, A has had every chance to write.
    let marker = append_events(&fx.store, 900, 1).await;
    wait_published(&fx, &marker, Duration::from_secs(30)).await;

    let after: Vec<(String, String)> = sqlx::query_as(&format!(
        "SELECT kind, writer FROM \"{}\".checkpoint_log WHERE seq > $1 ORDER BY seq",
        fx.schema
    ))
    .bind(log_before)
    .fetch_all(&fx.pool)
    .await
    .unwrap();
    let attempts_a = after
        .iter()
        .filter(|(k, w)| k == "attempt" && *w == owner_a)
        .count();
    let writes_a = after
        .iter()
        .filter(|(k, w)| k == "write" && *w == owner_a)
        .count();
    eprintln!("after SIGCONT: A attempted {attempts_a} checkpoint writes, committed {writes_a}");
    assert_eq!(
        writes_a, 0,
        "the stopped relay moved the checkpoint after losing its lease"
    );
    assert!(
        attempts_a >= 1,
        "A was caught mid-publish and must have tried (and failed) to checkpoint: {after:?}"
    );
    let published_by_a_late: i64 = sqlx::query_scalar(&format!(
        "SELECT count(*) FROM \"{}\".published WHERE owner = $1 AND at > $2",
        fx.schema
    ))
    .bind(&owner_a)
    .bind(stopped_at)
    .fetch_one(&fx.pool)
    .await
    .unwrap();
    assert_eq!(
        published_by_a_late, 0,
        "A started no batch after it woke up"
    );
    // B's checkpoint reaches the head (after its slow acknowledgement).
    let head = fx.store.head_position().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while read_status(&fx.store, "relay").await.unwrap().position < head {
        assert!(
            tokio::time::Instant::now() < deadline,
            "B never checkpointed the head"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop((a, b));
    fx.cleanup().await;
}
