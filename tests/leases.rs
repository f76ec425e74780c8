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
