//! Reads that do not stall (PostgreSQL): `load` and `load_stream` answer at once whatever is
//! open elsewhere, while global-order readers still never skip; projection batches hold no
//! transaction id across handlers; a read that its own transaction would pin is a typed error;
//! `horizon()` names what holds global readers back (running and prepared transactions, on a
//! private server started by the test with `max_prepared_transactions` > 0).
//!
//! Against the real server (`DATABASE_URL`, default `postgres://postgres@127.0.0.1:5432/test`),
//! each test in a schema of its own.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use eventflow::postgres::{
    HolderKind, PgProjection, PgTransaction, PostgresEventStore, projection_runner,
};
use eventflow::{Error, Event, EventCriteria, EventStore, ExpectedVersion, HandlerResult};
use eventflow_tests::{database_url, free_port, service_unavailable, unique};
use serde_json::json;
use sqlx::Connection;
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};

async fn pool_at(url: &str, size: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(size)
        .acquire_timeout(Duration::from_secs(30))
        .connect(url)
        .await
        .unwrap_or_else(|e| service_unavailable("PostgreSQL", url, e))
}

async fn store_in(pool: &PgPool) -> PostgresEventStore {
    let store = PostgresEventStore::builder(pool.clone())
        .schema(unique("evreads"))
        .poll_interval(Duration::from_millis(100))
        // Long, so a read that waits for the open transaction is caught by the 50 ms bound.
        .settle_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    store.migrate().await.unwrap();
    sqlx::raw_sql(&format!(
        "CREATE TABLE \"{}\".scratch (n int); CREATE TABLE \"{0}\".model (n bigint)",
        store.schema()
    ))
    .execute(store.pool())
    .await
    .unwrap();
    store
}

async fn drop_schema(store: &PostgresEventStore) {
    sqlx::query(&format!("DROP SCHEMA \"{}\" CASCADE", store.schema()))
        .execute(store.pool())
        .await
        .unwrap();
}

fn ev(event_type: &str, n: u64) -> Event {
    Event::new(event_type, json!({ "n": n })).unwrap()
}

/// A session of its own with a write transaction open (it holds a transaction id); returns the
/// connection and its server pid.
async fn open_write_transaction(url: &str, schema: &str) -> (PgConnection, i32) {
    let mut conn = PgConnection::connect(url).await.unwrap();
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    sqlx::query("BEGIN").execute(&mut conn).await.unwrap();
    sqlx::query(&format!("INSERT INTO \"{schema}\".scratch VALUES (1)"))
        .execute(&mut conn)
        .await
        .unwrap();
    (conn, pid)
}

/// A projection writing one row per event into `model`, a little slowly, recording whether its
/// transaction held a transaction id when each handler started.
struct Model {
    xid_at_start: Arc<Mutex<Vec<Option<String>>>>,
    write: bool,
}

#[async_trait]
impl PgProjection for Model {
    fn name(&self) -> &str {
        "model"
    }

    async fn handle(&self, tx: &mut PgTransaction, event: &Event) -> HandlerResult {
        let xid: Option<String> =
            sqlx::query_scalar("SELECT pg_current_xact_id_if_assigned()::text")
                .fetch_one(&mut **tx)
                .await?;
        self.xid_at_start.lock().unwrap().push(xid);
        if self.write {
            sqlx::query("INSERT INTO model VALUES ($1)")
                .bind(event.payload["n"].as_i64().unwrap_or(0))
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    async fn reset(&self, tx: &mut PgTransaction) -> HandlerResult {
        sqlx::query("TRUNCATE model").execute(&mut **tx).await?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_answers_at_once_while_a_transaction_is_open_and_a_projection_rebuilds() {
    let url = database_url();
    let pool = pool_at(&url, 8).await;
    let store = store_in(&pool).await;
    // History for the rebuild, and the first event of the stream we load.
    for chunk in 0..4u64 {
        let events = (0..500)
            .map(|i| ev("bulk.added", chunk * 500 + i))
            .collect();
        store
            .append_batch("bulk", ExpectedVersion::Any, events)
            .await
            .unwrap();
    }
    store
        .append("acct", ExpectedVersion::NoStream, ev("acct.opened", 1))
        .await
        .unwrap();
    // Another session holds a write transaction open; then an event commits behind it.
    let (mut other, _pid) = open_write_transaction(&url, store.schema()).await;
    let late = store
        .append("acct", ExpectedVersion::Exact(1), ev("acct.deposited", 2))
        .await
        .unwrap();
    // A projection rebuild runs meanwhile (its batches write their read model).
    let runner = projection_runner(
        Arc::new(store.clone()),
        pool.clone(),
        store.schema(),
        Model {
            xid_at_start: Arc::default(),
            write: true,
        },
    )
    .unwrap()
    .batch_size(200);
    let rebuild = {
        let runner = runner.clone();
        tokio::spawn(async move { runner.rebuild().await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;

    for _ in 0..5 {
        let start = Instant::now();
        let by_criteria = store
            .load(&EventCriteria::all().stream_id("acct"))
            .await
            .unwrap();
        let by_criteria_took = start.elapsed();
        let start = Instant::now();
        let stream = store.load_stream("acct", 1).await.unwrap();
        let stream_took = start.elapsed();
        // Both see the committed event held back from the global order, at once.
        assert_eq!(
            by_criteria.iter().map(|e| e.id).collect::<Vec<_>>().last(),
            Some(&late.id)
        );
        assert_eq!(stream.len(), 2);
        // Under 500 ms: well below the 1 s a stalled read waits (the settle timeout), and safe
        // from a loaded CI machine (typically a few ms; the 50 ms flaked under load).
        assert!(
            by_criteria_took < Duration::from_millis(500),
            "load took {by_criteria_took:?} while another transaction was open"
        );
        assert!(
            stream_took < Duration::from_millis(500),
            "load_stream took {stream_took:?} while another transaction was open"
        );
    }
    // The global order still never skips: `late` waits behind the open transaction.
    let head = store.horizon().await.unwrap();
    assert!(head.held_back, "{head:?}");
    assert!(head.safe_head < late.position.unwrap());
    let global = store.read_all(0, 10_000).await.unwrap();
    assert!(global.iter().all(|e| e.id != late.id));
    sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
    // (Other sessions of the shared server may hold the global order back a while longer.)
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let global = store.read_all(0, 10_000).await.unwrap();
        if global.last().map(|e| e.id) == Some(late.id) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the global order never reached {late:?}"
        );
    }
    rebuild.await.unwrap().unwrap();
    drop(runner);
    drop_schema(&store).await;
}

#[tokio::test]
async fn a_projection_batch_holds_no_transaction_id_across_handlers() {
    let url = database_url();
    let pool = pool_at(&url, 4).await;
    let store = store_in(&pool).await;
    let events = (0..30).map(|i| ev("item.added", i)).collect();
    let last = store
        .append_batch("items", ExpectedVersion::NoStream, events)
        .await
        .unwrap()
        .last()
        .unwrap()
        .position
        .unwrap();
    let seen: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let runner = projection_runner(
        Arc::new(store.clone()),
        pool.clone(),
        store.schema(),
        Model {
            xid_at_start: seen.clone(),
            write: false,
        },
    )
    .unwrap()
    .batch_size(10);
    // (Other sessions of the shared server may hold the global order back for a while.)
    let deadline = Instant::now() + Duration::from_secs(30);
    while runner.catch_up().await.unwrap() < last {
        assert!(Instant::now() < deadline, "the projection did not catch up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 30);
    // A handler that only reads runs in a transaction without a transaction id: the runner's
    // lock and checkpoint take none before the commit.
    assert!(seen.iter().all(Option::is_none), "{seen:?}");
    let checkpoint: i64 = sqlx::query_scalar(&format!(
        "SELECT position FROM \"{}\".checkpoints WHERE name = 'model'",
        store.schema()
    ))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(checkpoint as u64, last);
    drop_schema(&store).await;
}

#[tokio::test]
async fn reading_the_global_order_in_a_pinning_transaction_is_a_typed_error() {
    let url = database_url();
    let pool = pool_at(&url, 4).await;
    let store = store_in(&pool).await;
    let first = store
        .append("s", ExpectedVersion::NoStream, ev("s.one", 1))
        .await
        .unwrap();
    // Outside a transaction, and in a read-committed transaction that has not written: fine.
    // (`read_all_on` never waits, and other sessions of the shared server may hold the horizon
    // back for a moment: read until the event is there.)
    let mut conn = pool.acquire().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let read = store.read_all_on(&mut conn, 0, 10).await.unwrap();
        if read.iter().map(|e| e.id).collect::<Vec<_>>() == [first.id] {
            break;
        }
        assert!(read.is_empty() && Instant::now() < deadline, "{read:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(conn);
    let mut tx = pool.begin().await.unwrap();
    assert_eq!(store.read_all_on(&mut tx, 0, 10).await.unwrap().len(), 1);
    // Once it wrote, it holds a transaction id: the horizon stops at it.
    sqlx::query(&format!(
        "INSERT INTO \"{}\".scratch VALUES (1)",
        store.schema()
    ))
    .execute(&mut *tx)
    .await
    .unwrap();
    match store.read_all_on(&mut tx, 0, 10).await {
        Err(Error::ReadInTransaction { reason }) => assert!(reason.contains("transaction id")),
        other => panic!("expected ReadInTransaction, got {other:?}"),
    }
    tx.rollback().await.unwrap();
    // A repeatable-read transaction pins its snapshot.
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query("SELECT 1").execute(&mut *conn).await.unwrap();
    match store.read_all_on(&mut conn, 0, 10).await {
        Err(Error::ReadInTransaction { reason }) => assert!(reason.contains("snapshot")),
        other => panic!("expected ReadInTransaction, got {other:?}"),
    }
    sqlx::query("ROLLBACK").execute(&mut *conn).await.unwrap();
    drop(conn);
    drop_schema(&store).await;
}

/// A PostgreSQL server of this test's own (initdb + pg_ctl on a free port in a temp dir), with
/// two-phase commit enabled. Stopped (its own pid, through pg_ctl) on drop.
struct PrivateServer {
    dir: tempfile::TempDir,
    port: u16,
}

impl PrivateServer {
    fn start() -> Self {
        let bindir = Command::new("pg_config")
            .arg("--bindir")
            .output()
            .expect("pg_config (PostgreSQL server binaries) is needed for a private server");
        let bindir = PathBuf::from(String::from_utf8(bindir.stdout).unwrap().trim());
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let port = free_port();
        let as_root = Command::new("id")
            .arg("-u")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
            .unwrap_or(false);
        let run = |program: &str, args: &[String]| {
            let program = bindir.join(program);
            let mut cmd = if as_root {
                // The server refuses to run as root: run it as the `postgres` user.
                Command::new("chown")
                    .args(["-R", "postgres"])
                    .arg(dir.path())
                    .status()
                    .unwrap();
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(&program);
                c
            } else {
                Command::new(&program)
            };
            let out = cmd.args(args).output().unwrap();
            assert!(
                out.status.success(),
                "{} failed: {}",
                program.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let data_s = data.display().to_string();
        run(
            "initdb",
            &[
                "-D".into(),
                data_s.clone(),
                "-U".into(),
                "postgres".into(),
                "-A".into(),
                "trust".into(),
                "--no-sync".into(),
            ],
        );
        run(
            "pg_ctl",
            &[
                "-D".into(),
                data_s,
                "-l".into(),
                dir.path().join("log").display().to_string(),
                "-w".into(),
                "-o".into(),
                format!(
                    "-p {port} -k {} -c listen_addresses=127.0.0.1 \
                     -c max_prepared_transactions=4 -c fsync=off",
                    dir.path().display()
                ),
                "start".into(),
            ],
        );
        PrivateServer { dir, port }
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        let bindir = Command::new("pg_config").arg("--bindir").output();
        if let Ok(out) = bindir {
            let pg_ctl = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("pg_ctl");
            let data = self.dir.path().join("data");
            let _ = Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&pg_ctl)
                .arg("-D")
                .arg(&data)
                .args(["-m", "immediate", "stop"])
                .output()
                .or_else(|_| {
                    Command::new(&pg_ctl)
                        .arg("-D")
                        .arg(&data)
                        .args(["-m", "immediate", "stop"])
                        .output()
                });
        }
    }
}

#[tokio::test]
async fn horizon_names_the_oldest_running_and_prepared_transactions() {
    let server = PrivateServer::start();
    let url = server.url();
    let pool = pool_at(&url, 4).await;
    let store = store_in(&pool).await;
    let quiet = store.horizon().await.unwrap();
    assert!(!quiet.held_back, "{quiet:?}");
    assert!(quiet.holders.is_empty(), "{quiet:?}");

    // A running transaction, then an event committed behind it.
    let (mut running, pid) = open_write_transaction(&url, store.schema()).await;
    let held = store
        .append("s", ExpectedVersion::NoStream, ev("s.one", 1))
        .await
        .unwrap();
    let status = store.horizon().await.unwrap();
    assert!(status.held_back, "{status:?}");
    assert_eq!(status.newest, held.position.unwrap());
    let first = &status.holders[0];
    assert_eq!(first.kind, HolderKind::Running, "{status:?}");
    assert_eq!(first.pid, Some(pid));
    assert_eq!(first.detail.as_deref(), Some("idle in transaction"));

    // A prepared transaction outlives its session; once the running one ends, it is the
    // oldest, and it holds back an event committed after it.
    let mut preparer = PgConnection::connect(&url).await.unwrap();
    let gid = unique("evreads_gid");
    sqlx::query("BEGIN").execute(&mut preparer).await.unwrap();
    sqlx::query(&format!(
        "INSERT INTO \"{}\".scratch VALUES (2)",
        store.schema()
    ))
    .execute(&mut preparer)
    .await
    .unwrap();
    sqlx::query(&format!("PREPARE TRANSACTION '{gid}'"))
        .execute(&mut preparer)
        .await
        .unwrap();
    preparer.close().await.unwrap();
    sqlx::query("ROLLBACK").execute(&mut running).await.unwrap();
    let late = store
        .append("s", ExpectedVersion::Exact(1), ev("s.two", 2))
        .await
        .unwrap();
    let status = store.horizon().await.unwrap();
    assert!(status.held_back, "{status:?}");
    assert_eq!(status.safe_head, held.position.unwrap());
    assert_eq!(status.newest, late.position.unwrap());
    let first = &status.holders[0];
    assert_eq!(first.kind, HolderKind::Prepared, "{status:?}");
    assert_eq!(first.pid, None);
    assert_eq!(first.detail.as_deref(), Some(gid.as_str()));
    assert_eq!(first.database.as_deref(), Some("postgres"));

    sqlx::query(&format!("ROLLBACK PREPARED '{gid}'"))
        .execute(&pool)
        .await
        .unwrap();
    let status = store.horizon().await.unwrap();
    assert!(!status.held_back, "{status:?}");
    assert!(
        status
            .holders
            .iter()
            .all(|h| h.kind != HolderKind::Prepared),
        "{status:?}"
    );
    pool.close().await;
    drop(server);
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, eventflow::DomainEvent)]
#[event(prefix = "wallet")]
enum WalletEvent {
    Opened {
        owner: String,
    },
    // Version 2 renamed `amt` to `amount`; version-1 rows are upcast on load.
    #[event(version = 2)]
    Deposited {
        amount: u64,
    },
    Closed,
}

#[derive(Debug, Default, PartialEq, serde::Serialize, serde::Deserialize, eventflow::Aggregate)]
#[aggregate(event = WalletEvent, snapshot_every = 3)]
struct Wallet {
    owner: String,
    balance: u64,
    closed: bool,
}

impl ApplyWalletEvent for Wallet {
    fn opened(&mut self, owner: String) {
        self.owner = owner;
    }
    fn deposited(&mut self, amount: u64) {
        self.balance += amount;
    }
    fn closed(&mut self) {
        self.closed = true;
    }
}

#[tokio::test]
async fn the_repository_folds_payload_text_once_with_upcasts_and_create() {
    use eventflow::aggregate::Repository;
    use eventflow::store::{EventStore as _, StoredPayload};

    let url = database_url();
    let pool = pool_at(&url, 4).await;
    let store = store_in(&pool).await;
    let repo = Repository::<Wallet>::new(Arc::new(store.clone())).upcaster(
        "wallet.deposited",
        1,
        |mut v| {
            let amt = v["amt"].take();
            Ok(json!({ "amount": amt }))
        },
    );
    // `create` appends without reading: the first time it succeeds, then it is a conflict.
    let created = repo
        .create("w1", |_| {
            Ok::<_, String>(vec![WalletEvent::Opened {
                owner: "ann".into(),
            }])
        })
        .await
        .unwrap();
    assert_eq!(created[0].stream_version, Some(1));
    let again = repo
        .create("w1", |_| {
            Ok::<_, String>(vec![WalletEvent::Opened {
                owner: "bob".into(),
            }])
        })
        .await
        .unwrap_err();
    assert!(again.is_conflict(), "{again}");
    // A version-1 payload written by an older release, then current ones.
    let mut old = Event::new("wallet.deposited", json!({ "amt": 5 })).unwrap();
    old.version = 1;
    store
        .append("wallet-w1", ExpectedVersion::Exact(1), old)
        .await
        .unwrap();
    repo.execute("w1", |_| {
        Ok::<_, String>(vec![WalletEvent::Deposited { amount: 7 }])
    })
    .await
    .unwrap();
    repo.execute("w1", |_| Ok::<_, String>(vec![WalletEvent::Closed]))
        .await
        .unwrap();
    // The store hands the payloads over as text.
    let stored = store.load_stream_stored("wallet-w1", 1).await.unwrap();
    assert_eq!(stored.len(), 4);
    assert!(matches!(&stored[1].payload, StoredPayload::Text(t) if t.contains("\"amt\"")));
    assert_eq!(stored[1].version, 1);
    assert_eq!(stored[3].stream_version, Some(4));
    let loaded = repo.load("w1").await.unwrap();
    let want = Wallet {
        owner: "ann".into(),
        balance: 12,
        closed: true,
    };
    assert_eq!((loaded.state, loaded.version), (want, 4));
    // The envelope path folds to the same state.
    let mut by_envelope = Wallet::default();
    for e in store.load_stream("wallet-w1", 1).await.unwrap() {
        if e.event_type == "wallet.deposited" && e.version == 1 {
            by_envelope.deposited(5);
            continue;
        }
        eventflow::Aggregate::apply_envelope(&mut by_envelope, &e).unwrap();
    }
    assert_eq!(
        by_envelope,
        Wallet {
            owner: "ann".into(),
            balance: 12,
            closed: true
        }
    );
    // A payload that does not match its type is a typed decode error, never skipped.
    let bad = Event::new("wallet.deposited", json!({ "amount": "lots" })).unwrap();
    let mut bad = bad;
    bad.version = 2;
    store
        .append("wallet-w1", ExpectedVersion::Exact(4), bad)
        .await
        .unwrap();
    match repo.load("w1").await {
        Err(Error::Decode { event_type, .. }) => assert_eq!(event_type, "wallet.deposited"),
        other => panic!("expected a decode error, got {other:?}"),
    }
    drop_schema(&store).await;
}

#[tokio::test]
async fn read_all_stored_is_the_global_order_with_payload_text_and_never_skips() {
    use eventflow::DomainEvent;
    use eventflow::store::StoredPayload;

    let url = database_url();
    let pool = pool_at(&url, 4).await;
    let store = store_in(&pool).await;
    let impatient = PostgresEventStore::builder(pool.clone())
        .schema(store.schema())
        .settle_timeout(Duration::from_millis(20))
        .build()
        .unwrap();
    let ctx = eventflow::CommandContext::new();
    let a = store
        .append(
            "w-a",
            ExpectedVersion::NoStream,
            ctx.envelope(&WalletEvent::Opened { owner: "a".into() })
                .unwrap(),
        )
        .await
        .unwrap();
    // B stays open while C commits above it: C must wait behind B, never be read past.
    let pending = store
        .begin_append(
            "w-b",
            ExpectedVersion::NoStream,
            vec![ctx.envelope(&WalletEvent::Deposited { amount: 3 }).unwrap()],
        )
        .await
        .unwrap();
    let b_id = pending.events()[0].id;
    let c = store
        .append(
            "w-c",
            ExpectedVersion::NoStream,
            ctx.envelope(&WalletEvent::Closed).unwrap(),
        )
        .await
        .unwrap();
    let early = impatient.read_all_stored(0, 100).await.unwrap();
    assert!(early.iter().all(|e| e.id != c.id), "{early:?}");
    pending.commit().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let all = loop {
        let all = store.read_all_stored(0, 100).await.unwrap();
        if all.len() == 3 {
            break all;
        }
        assert!(Instant::now() < deadline, "{all:?}");
    };
    assert_eq!(
        all.iter().map(|e| e.id).collect::<Vec<_>>(),
        [a.id, b_id, c.id]
    );
    // The same order, positions and streams as read_all; payloads as text, decoded once.
    let envelopes = store.read_all(0, 100).await.unwrap();
    for (stored, envelope) in all.iter().zip(&envelopes) {
        assert_eq!(stored.position, envelope.position);
        assert_eq!(stored.stream_id, envelope.stream_id);
        assert_eq!(stored.stream_version, envelope.stream_version);
        assert!(matches!(stored.payload, StoredPayload::Text(_)));
        assert_eq!(
            WalletEvent::from_stored(stored).unwrap(),
            WalletEvent::from_envelope(envelope).unwrap()
        );
    }
    // Pages: after the first event.
    let rest = store
        .read_all_stored(all[0].position.unwrap(), 1)
        .await
        .unwrap();
    assert_eq!(rest.iter().map(|e| e.id).collect::<Vec<_>>(), [b_id]);
    drop_schema(&store).await;
}

/// The store's notification channel (as `schema.rs` derives it: FNV-1a of the schema name).
fn channel_of(schema: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in schema.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("eventflow_{hash:016x}")
}

#[tokio::test]
async fn appends_notify_only_when_another_process_listens() {
    use sqlx::postgres::PgListener;

    let url = database_url();
    let pool = pool_at(&url, 4).await;
    let store = store_in(&pool).await;
    let channel = channel_of(store.schema());
    // A bare LISTEN that did not register: appends must not notify for it.
    let mut bare = PgListener::connect(&url).await.unwrap();
    bare.listen(&channel).await.unwrap();
    store
        .append("s", ExpectedVersion::NoStream, ev("s.one", 1))
        .await
        .unwrap();
    // Marker: whatever the append sent would arrive before it.
    sqlx::query("SELECT pg_notify($1, 'marker')")
        .bind(&channel)
        .execute(&pool)
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), bare.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.payload(), "marker", "an append notified nobody");

    // A follower of another "process" (its own pool) registers its listener; then appends
    // notify, and the bare LISTEN hears them too.
    let other_pool = pool_at(&url, 2).await;
    let other = PostgresEventStore::builder(other_pool.clone())
        .schema(store.schema())
        .poll_interval(Duration::from_secs(60))
        .build()
        .unwrap();
    let _signal = other.commit_signal();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let registered: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM \"{}\".listeners",
            store.schema()
        ))
        .fetch_one(&pool)
        .await
        .unwrap();
        if registered == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "the listener never registered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    store
        .append("s", ExpectedVersion::Exact(1), ev("s.two", 2))
        .await
        .unwrap();
    let heard = tokio::time::timeout(Duration::from_secs(10), bare.recv())
        .await
        .expect("the append did not notify a registered listener")
        .unwrap();
    assert_eq!(heard.payload(), "");
    drop(other);
    other_pool.close().await;
    drop_schema(&store).await;
}

#[tokio::test]
async fn streamed_reads_yield_the_vec_forms_events_in_order_over_many_pages() {
    use futures_util::TryStreamExt;

    let pool = pool_at(&database_url(), 4).await;
    let store = store_in(&pool).await;
    for chunk in 0..6u64 {
        let stream = format!("s{}", chunk % 3);
        let events = (0..400)
            .map(|i| ev("bulk.added", chunk * 400 + i))
            .collect();
        store
            .append_batch(&stream, ExpectedVersion::Any, events)
            .await
            .unwrap();
    }
    let ids = |events: &[eventflow::store::StoredEvent]| {
        events
            .iter()
            .map(|e| (e.id, e.position, e.stream_version))
            .collect::<Vec<_>>()
    };
    let all = store.read_all_stored(0, 10_000).await.unwrap();
    assert_eq!(all.len(), 2_400);
    let envelopes = store.read_all(0, 10_000).await.unwrap();
    assert_eq!(
        all.iter().map(|e| e.id).collect::<Vec<_>>(),
        envelopes.iter().map(|e| e.id).collect::<Vec<_>>()
    );
    // Pages of 7 (not a divisor: the last page is short), of 100, and the default.
    for page in [7, 100, 0] {
        let streamed: Vec<_> = store
            .stream_all_stored(0, page)
            .try_collect()
            .await
            .unwrap();
        assert_eq!(ids(&streamed), ids(&all), "page {page}");
    }
    // From the middle.
    let after = all[1_000].position.unwrap();
    let rest: Vec<_> = store
        .stream_all_stored(after, 33)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(ids(&rest), ids(&all[1_001..]));
    // By stream, from the start and from a version.
    for from in [1, 500] {
        let loaded = store.load_stream_stored("s1", from).await.unwrap();
        assert_eq!(loaded.len(), 800 - (from as usize - 1));
        let streamed: Vec<_> = store.stream_stored("s1", from).try_collect().await.unwrap();
        assert_eq!(ids(&streamed), ids(&loaded));
    }
    let none: Vec<_> = store
        .stream_stored("nothing", 1)
        .try_collect()
        .await
        .unwrap();
    assert!(none.is_empty());
    // Bad input is a typed error, not a panic.
    let bad: Result<Vec<_>, _> = store.stream_all_stored(u64::MAX, 10).try_collect().await;
    assert!(matches!(bad, Err(Error::InvalidArgument(_))), "{bad:?}");
    drop_schema(&store).await;
}

#[tokio::test]
async fn stream_all_stored_never_skips_an_open_transaction() {
    use futures_util::TryStreamExt;

    let url = database_url();
    let pool = pool_at(&url, 4).await;
    let store = store_in(&pool).await;
    let impatient = PostgresEventStore::builder(pool.clone())
        .schema(store.schema())
        .settle_timeout(Duration::from_millis(20))
        .build()
        .unwrap();
    let a = store
        .append("w-a", ExpectedVersion::NoStream, ev("w.opened", 1))
        .await
        .unwrap();
    // B stays open while C commits above it: C must wait behind B, never be read past.
    let pending = store
        .begin_append("w-b", ExpectedVersion::NoStream, vec![ev("w.deposited", 2)])
        .await
        .unwrap();
    let b_id = pending.events()[0].id;
    let c = store
        .append("w-c", ExpectedVersion::NoStream, ev("w.closed", 3))
        .await
        .unwrap();
    // Pages of one: a full page, then a page at the head that stops in front of B.
    let early: Vec<_> = impatient
        .stream_all_stored(0, 1)
        .try_collect()
        .await
        .unwrap();
    assert_eq!(early.iter().map(|e| e.id).collect::<Vec<_>>(), [a.id]);
    // A patient stream waits at the head for B, then reads B and C in order.
    let commit = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        pending.commit().await.unwrap();
    });
    let all: Vec<_> = store.stream_all_stored(0, 2).try_collect().await.unwrap();
    commit.await.unwrap();
    assert_eq!(
        all.iter().map(|e| e.id).collect::<Vec<_>>(),
        [a.id, b_id, c.id]
    );
    drop_schema(&store).await;
}

#[tokio::test]
async fn load_snapshot_and_tail_reads_both_in_one_statement() {
    use eventflow::{Snapshot, SnapshotStore};

    let pool = pool_at(&database_url(), 4).await;
    let store = store_in(&pool).await;
    let events = (0..10).map(|i| ev("acct.deposited", i)).collect();
    store
        .append_batch("acct", ExpectedVersion::NoStream, events)
        .await
        .unwrap();
    // No snapshot: every event.
    let (none, all) = store.load_snapshot_and_tail("acct", 1).await.unwrap();
    assert!(none.is_none());
    let loaded = store.load_stream_stored("acct", 1).await.unwrap();
    let ids = |e: &[eventflow::store::StoredEvent]| {
        e.iter()
            .map(|e| (e.id, e.position, e.stream_version, e.event_type.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&all), ids(&loaded));
    // A snapshot at version 6 of state version 1: it, and the events after it.
    let snapshots = store.snapshots();
    let taken_at = chrono::Utc::now();
    snapshots
        .save_snapshot(Snapshot {
            stream_id: "acct".into(),
            version: 6,
            schema_version: 1,
            state: json!({ "balance": 15 }),
            taken_at,
        })
        .await
        .unwrap();
    let (snapshot, tail) = store.load_snapshot_and_tail("acct", 1).await.unwrap();
    let expected = snapshots.load_snapshot("acct").await.unwrap().unwrap();
    let snapshot = snapshot.unwrap();
    assert_eq!(snapshot.version, 6);
    assert_eq!(snapshot.state, expected.state);
    assert_eq!(snapshot.taken_at, expected.taken_at);
    assert_eq!(ids(&tail), ids(&loaded[6..]));
    // A snapshot of another state version is not used: every event.
    let (other, all) = store.load_snapshot_and_tail("acct", 2).await.unwrap();
    assert!(other.is_none());
    assert_eq!(ids(&all), ids(&loaded));
    drop_schema(&store).await;
}

/// A snapshot store that counts its `load_snapshot` calls and forwards everything else to a
/// PostgreSQL one, its colocation key too when `colocated`.
struct CountingSnapshots {
    inner: eventflow::postgres::PostgresSnapshotStore,
    colocated: bool,
    loads: std::sync::atomic::AtomicUsize,
}

#[async_trait]
impl eventflow::SnapshotStore for CountingSnapshots {
    async fn load_snapshot(
        &self,
        stream_id: &str,
    ) -> eventflow::Result<Option<eventflow::Snapshot>> {
        self.loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.load_snapshot(stream_id).await
    }

    async fn save_snapshot(&self, snapshot: eventflow::Snapshot) -> eventflow::Result<()> {
        self.inner.save_snapshot(snapshot).await
    }

    fn colocation(&self) -> Option<String> {
        if self.colocated {
            self.inner.colocation()
        } else {
            None
        }
    }
}

#[tokio::test]
async fn the_repository_reads_snapshot_and_tail_in_one_statement_on_the_same_schema() {
    use eventflow::SnapshotStore as _;
    use eventflow::aggregate::Repository;
    use std::sync::atomic::Ordering;

    let pool = pool_at(&database_url(), 4).await;
    let store = store_in(&pool).await;
    let mut loaded = Vec::new();
    for colocated in [true, false] {
        let counting = Arc::new(CountingSnapshots {
            inner: store.snapshots(),
            colocated,
            loads: Default::default(),
        });
        let repo = Repository::<Wallet>::new(Arc::new(store.clone()))
            .snapshots(counting.clone())
            .snapshot_every(4);
        let id = format!("snap-{colocated}");
        repo.create(&id, |_| {
            Ok::<_, String>(vec![WalletEvent::Opened {
                owner: "ann".into(),
            }])
        })
        .await
        .unwrap();
        for _ in 0..5 {
            repo.execute(&id, |_| {
                Ok::<_, String>(vec![WalletEvent::Deposited { amount: 2 }])
            })
            .await
            .unwrap();
        }
        counting.loads.store(0, Ordering::SeqCst);
        let got = repo.load(&id).await.unwrap();
        assert_eq!(got.snapshot_version, Some(4), "colocated {colocated}");
        assert_eq!(got.version, 6);
        // Same schema: one statement, the snapshot store's own read is never used.
        assert_eq!(
            counting.loads.load(Ordering::SeqCst),
            usize::from(!colocated),
            "colocated {colocated}"
        );
        loaded.push(got.state);
    }
    assert_eq!(loaded[0], loaded[1]);
    assert_eq!(loaded[0].balance, 10);
    // A snapshot store on another schema is never read together with this one.
    let elsewhere =
        eventflow::postgres::PostgresSnapshotStore::in_schema(pool.clone(), "elsewhere").unwrap();
    assert_ne!(elsewhere.colocation(), store.snapshots().colocation());
    drop_schema(&store).await;
}
