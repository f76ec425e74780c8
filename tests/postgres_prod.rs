//! PostgreSQL in production: [`PostgresConfig`] (timeouts, pool, statement timeout,
//! application name), TLS against a private server with `ssl=on` and a test-made CA, migrations
//! from many pools at once, and futures that are `Send`.
//!
//! The TLS tests share one private server per test binary
//! ([`PgServer::shared`](eventflow_tests::pg_server::PgServer::shared)); everything else uses the
//! shared server (`DATABASE_URL`) in schemas of its own.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use eventflow::postgres::{PgSslMode, PostgresConfig, PostgresEventStore};
use eventflow::{Error, Event, EventCriteria, EventStore, ExpectedVersion};
use eventflow_tests::pg_server::{CERT_USER, PgServer};
use eventflow_tests::{database_url, free_port, unique};
use serde_json::json;
use sqlx::PgPool;

fn ev(n: u64) -> Event {
    Event::new("prod.tested", json!({ "n": n })).unwrap()
}

/// The error and every source below it, as `Display` and `Debug` print them.
fn error_text(error: &Error) -> String {
    let mut text = format!("{error} {error:?}");
    let mut source = std::error::Error::source(error);
    while let Some(s) = source {
        text.push_str(&format!(" | {s} {s:?}"));
        source = s.source();
    }
    text
}

async fn drop_schema(pool: &PgPool, schema: &str) {
    sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .execute(pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn connect_to_a_closed_port_fails_within_the_timeout_without_the_password() {
    let port = free_port(); // nothing listens there
    let mut config =
        PostgresConfig::new(format!("postgres://app:url-secret-1@127.0.0.1:{port}/app"));
    config.password = Some("field-secret-2".into());
    config.connect_timeout = Duration::from_secs(1);
    let started = Instant::now();
    let error = PostgresEventStore::connect_with(config).await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(error, Error::Connect { .. }), "{error:?}");
    let text = error_text(&error);
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(!text.contains("secret"), "{text}");
}

#[tokio::test]
async fn connect_to_a_server_that_never_answers_fails_within_the_timeout() {
    // Accepts the TCP connection and never says a word: only the timeout can end the wait.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            sockets.push(socket);
        }
    });
    let mut config = PostgresConfig::new(format!("postgres://app:s3cret@127.0.0.1:{port}/app"));
    config.connect_timeout = Duration::from_secs(1);
    let started = Instant::now();
    let error = PostgresEventStore::connect_with(config).await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_millis(1500),
        "{elapsed:?}"
    );
    assert!(matches!(error, Error::Connect { .. }), "{error:?}");
    assert!(!error_text(&error).contains("s3cret"));
    held.abort();
}

#[tokio::test]
async fn config_sets_pool_size_statement_timeout_and_application_name() {
    let schema = unique("evprod_cfg");
    let mut config = PostgresConfig::new(database_url());
    config.schema = schema.clone();
    config.max_connections = 3;
    config.statement_timeout = Some(Duration::from_millis(200));
    config.application_name = schema.clone();
    let store = PostgresEventStore::connect_with(config).await.unwrap();
    assert_eq!(store.schema(), schema);
    store.migrate().await.unwrap();
    store
        .append("s-1", ExpectedVersion::NoStream, ev(1))
        .await
        .unwrap();
    let pool = store.pool();
    assert_eq!(pool.options().get_max_connections(), 3);
    assert!(!pool.options().get_test_before_acquire());
    let name: String = sqlx::query_scalar("SELECT current_setting('application_name')")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(name, schema);
    let slow = sqlx::query("SELECT pg_sleep(2)")
        .execute(pool)
        .await
        .unwrap_err();
    let code = slow.as_database_error().and_then(|e| e.code()).unwrap();
    assert_eq!(code, "57014", "{slow}");
    drop_schema(pool, &schema).await;
}

#[tokio::test]
async fn bad_configurations_are_rejected_before_connecting() {
    let mut config = PostgresConfig::new(database_url());
    config.max_connections = 0;
    let error = PostgresEventStore::connect_with(config).await.unwrap_err();
    assert!(matches!(error, Error::InvalidArgument(_)), "{error:?}");
    let error =
        PostgresEventStore::connect_with(PostgresConfig::new("postgres://u:hunter2@h:notaport/db"))
            .await
            .unwrap_err();
    assert!(matches!(error, Error::InvalidArgument(_)), "{error:?}");
    assert!(
        !error_text(&error).contains("hunter2"),
        "{}",
        error_text(&error)
    );
}

/// 8 pools migrate one new schema at once, 20 times over: before the whole migration ran
/// under one lock, `CREATE SCHEMA IF NOT EXISTS` raced and failed with 23505.
#[tokio::test]
async fn eight_pools_migrate_one_new_schema_at_once() {
    let mut stores = Vec::new();
    for _ in 0..8 {
        let mut config = PostgresConfig::new(database_url());
        config.max_connections = 1;
        stores.push(PostgresEventStore::connect_with(config).await.unwrap());
    }
    for round in 0..20 {
        let schema = unique("evprod_mig");
        let tasks: Vec<_> = stores
            .iter()
            .map(|store| {
                let pool = store.pool().clone();
                let schema = schema.clone();
                // `tokio::spawn`: the future is `Send`.
                tokio::spawn(
                    async move { PostgresEventStore::migrate_schema(&pool, &schema).await },
                )
            })
            .collect();
        for task in tasks {
            task.await
                .unwrap()
                .unwrap_or_else(|e| panic!("round {round}: {}", error_text(&e)));
        }
        let store = PostgresEventStore::builder(stores[0].pool().clone())
            .schema(&schema)
            .build()
            .unwrap();
        store
            .append("s", ExpectedVersion::NoStream, ev(1))
            .await
            .unwrap();
        drop_schema(stores[0].pool(), &schema).await;
    }
}

/// Every public future of the store can be handed to `tokio::spawn` (this test does not
/// compile otherwise), and each does its work.
#[tokio::test]
async fn every_public_future_is_send() {
    let schema = unique("evprod_send");
    let mut config = PostgresConfig::new(database_url());
    config.schema = schema.clone();
    let store = tokio::spawn(PostgresEventStore::connect_with(config))
        .await
        .unwrap()
        .unwrap();
    let s = store.clone();
    tokio::spawn(async move { s.migrate().await })
        .await
        .unwrap()
        .unwrap();
    let (pool, name) = (store.pool().clone(), schema.clone());
    tokio::spawn(async move { PostgresEventStore::migrate_schema(&pool, &name).await })
        .await
        .unwrap()
        .unwrap();
    let url = database_url();
    tokio::spawn(async move { PostgresEventStore::connect(&url).await.map(|_| ()) })
        .await
        .unwrap()
        .unwrap();
    let s = store.clone();
    tokio::spawn(async move { s.append("a", ExpectedVersion::NoStream, ev(1)).await })
        .await
        .unwrap()
        .unwrap();
    let s = store.clone();
    tokio::spawn(async move {
        s.append_batch("a", ExpectedVersion::Exact(1), vec![ev(2)])
            .await
    })
    .await
    .unwrap()
    .unwrap();
    let s = store.clone();
    let pending = tokio::spawn(async move {
        s.begin_append("b", ExpectedVersion::NoStream, vec![ev(3)])
            .await
    })
    .await
    .unwrap()
    .unwrap();
    tokio::spawn(pending.commit()).await.unwrap().unwrap();
    let s = store.clone();
    let pending =
        tokio::spawn(async move { s.begin_append("c", ExpectedVersion::Any, vec![ev(4)]).await })
            .await
            .unwrap()
            .unwrap();
    tokio::spawn(pending.rollback()).await.unwrap().unwrap();
    let s = store.clone();
    let loaded = tokio::spawn(async move { s.load_stream("a", 0).await })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(loaded.len(), 2);
    let s = store.clone();
    assert_eq!(
        tokio::spawn(async move { s.stream_version("b").await })
            .await
            .unwrap()
            .unwrap(),
        1
    );
    let s = store.clone();
    let all = tokio::spawn(async move { s.load(&EventCriteria::default()).await })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(all.len(), 3);
    let s = store.clone();
    assert_eq!(
        tokio::spawn(async move { s.read_all(0, 10).await })
            .await
            .unwrap()
            .unwrap()
            .len(),
        3
    );
    let s = store.clone();
    assert!(
        tokio::spawn(async move { s.head_position().await })
            .await
            .unwrap()
            .unwrap()
            > 0
    );
    let s = store.clone();
    let (seen, handler) = eventflow_tests::recorder();
    let subscription = tokio::spawn(async move {
        s.subscribe_dyn(EventCriteria::default(), Default::default(), handler)
            .await
    })
    .await
    .unwrap()
    .unwrap();
    eventflow_tests::eventually("3 events through the subscription", || {
        seen.lock().unwrap().len() == 3
    })
    .await;
    drop(subscription);
    drop_schema(store.pool(), &schema).await;
}

// ---- TLS, against the private server ----

fn tls_config(user: &str, host: &str, mode: PgSslMode) -> PostgresConfig {
    let server = PgServer::shared();
    let mut config = PostgresConfig::new(format!(
        "postgres://{user}:tls-secret@{host}:{}/postgres",
        server.port()
    ));
    config.ssl_mode = Some(mode);
    config.ssl_root_cert = Some(server.ca_cert());
    config.connect_timeout = Duration::from_secs(10);
    config.max_connections = 2;
    config
}

/// Whether the store's connection is encrypted, as the server sees it.
async fn uses_tls(store: &PostgresEventStore) -> bool {
    sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(store.pool())
        .await
        .unwrap()
}

async fn round_trip(store: &PostgresEventStore) {
    let schema = unique("evprod_tls");
    let store = PostgresEventStore::builder(store.pool().clone())
        .schema(&schema)
        .build()
        .unwrap();
    store.migrate().await.unwrap();
    let stored = store
        .append("tls-1", ExpectedVersion::NoStream, ev(1))
        .await
        .unwrap();
    assert_eq!(store.load_stream("tls-1", 0).await.unwrap(), vec![stored]);
    drop_schema(store.pool(), &schema).await;
}

#[tokio::test]
async fn tls_require_verify_ca_verify_full_and_prefer_connect_encrypted() {
    for mode in [
        PgSslMode::Require,
        PgSslMode::VerifyCa,
        PgSslMode::VerifyFull,
        PgSslMode::Prefer,
    ] {
        let store = PostgresEventStore::connect_with(tls_config("postgres", "127.0.0.1", mode))
            .await
            .unwrap_or_else(|e| panic!("{mode:?}: {}", error_text(&e)));
        assert!(uses_tls(&store).await, "{mode:?} connected in clear text");
        round_trip(&store).await;
    }
    // The host name in the URL is checked too, not only the IP address.
    let store = PostgresEventStore::connect_with(tls_config(
        "postgres",
        "localhost",
        PgSslMode::VerifyFull,
    ))
    .await
    .unwrap_or_else(|e| panic!("localhost: {}", error_text(&e)));
    assert!(uses_tls(&store).await);
}

#[tokio::test]
async fn tls_verify_full_refuses_a_certificate_for_another_host() {
    // 127.0.0.2 reaches the same server, whose certificate names 127.0.0.1 and localhost.
    let error = PostgresEventStore::connect_with(tls_config(
        "postgres",
        "127.0.0.2",
        PgSslMode::VerifyFull,
    ))
    .await
    .unwrap_err();
    assert!(matches!(error, Error::Connect { .. }), "{error:?}");
    let text = error_text(&error);
    assert!(text.to_lowercase().contains("certificate"), "{text}");
    assert!(!text.contains("tls-secret"), "{text}");
}

#[tokio::test]
async fn tls_verify_ca_refuses_a_server_signed_by_an_unknown_ca() {
    let mut config = tls_config("postgres", "127.0.0.1", PgSslMode::VerifyCa);
    config.ssl_root_cert = None; // the system's roots only
    let error = PostgresEventStore::connect_with(config).await.unwrap_err();
    assert!(matches!(error, Error::Connect { .. }), "{error:?}");
    assert!(error_text(&error).to_lowercase().contains("certificate"));
}

#[tokio::test]
async fn clear_text_against_a_tls_only_server_fails_clearly() {
    let error =
        PostgresEventStore::connect_with(tls_config("postgres", "127.0.0.1", PgSslMode::Disable))
            .await
            .unwrap_err();
    assert!(matches!(error, Error::Connect { .. }), "{error:?}");
    let text = error_text(&error);
    // The server's own reason: no pg_hba.conf entry for an unencrypted connection.
    assert!(
        text.contains("pg_hba.conf") && text.contains("no encryption"),
        "{text}"
    );
    assert!(!text.contains("tls-secret"), "{text}");
}

#[tokio::test]
async fn tls_client_certificate_authenticates() {
    let server = PgServer::shared();
    let (cert, key) = server.client_cert();
    // Without the certificate the server refuses the user.
    let error =
        PostgresEventStore::connect_with(tls_config(CERT_USER, "127.0.0.1", PgSslMode::VerifyFull))
            .await
            .unwrap_err();
    assert!(matches!(error, Error::Connect { .. }), "{error:?}");
    let mut config = tls_config(CERT_USER, "127.0.0.1", PgSslMode::VerifyFull);
    config.ssl_client_cert = Some(cert);
    config.ssl_client_key = Some(key);
    let store = PostgresEventStore::connect_with(config)
        .await
        .unwrap_or_else(|e| panic!("{}", error_text(&e)));
    let user: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(user, CERT_USER);
    assert!(uses_tls(&store).await);
}

// ---- Appending inside the caller's transaction ----

/// A migrated store in a schema of its own, with a `customers` table of the "service".
async fn outbox_store() -> (PostgresEventStore, String) {
    let schema = unique("evprod_tx");
    let mut config = PostgresConfig::new(database_url());
    config.schema = schema.clone();
    config.poll_interval = Duration::from_millis(100);
    let store = PostgresEventStore::connect_with(config).await.unwrap();
    store.migrate().await.unwrap();
    sqlx::query(&format!(
        "CREATE TABLE \"{schema}\".customers (id text PRIMARY KEY, name text NOT NULL)"
    ))
    .execute(store.pool())
    .await
    .unwrap();
    (store, schema)
}

async fn customer_count(store: &PostgresEventStore, schema: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM \"{schema}\".customers"))
        .fetch_one(store.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn append_in_commits_with_the_callers_row_and_is_relayed_rollback_leaves_neither() {
    use eventflow::WithBus;
    use eventflow::testing::RecordingBus;
    use std::sync::Arc;
    let (store, schema) = outbox_store().await;
    let bus = Arc::new(RecordingBus::new());
    let relayed = store.clone().with_bus(bus.clone());
    let insert = format!("INSERT INTO \"{schema}\".customers (id, name) VALUES ($1, $2)");

    // Rolled back: neither the row nor the event, ever.
    let mut tx = store.pool().begin().await.unwrap();
    sqlx::query(&insert)
        .bind("c-0")
        .bind("Nobody")
        .execute(&mut *tx)
        .await
        .unwrap();
    let doomed = store
        .append_in(&mut tx, "customer-c-0", ExpectedVersion::NoStream, ev(0))
        .await
        .unwrap();
    tx.rollback().await.unwrap();

    // Committed: both.
    let mut tx = store.pool().begin().await.unwrap();
    sqlx::query(&insert)
        .bind("c-1")
        .bind("Ada")
        .execute(&mut *tx)
        .await
        .unwrap();
    let created = store
        .append_in(&mut tx, "customer-c-1", ExpectedVersion::NoStream, ev(1))
        .await
        .unwrap();
    // Not visible to others before the commit.
    assert!(
        store
            .load_stream("customer-c-1", 0)
            .await
            .unwrap()
            .is_empty()
    );
    tx.commit().await.unwrap();

    assert_eq!(customer_count(&store, &schema).await, 1);
    assert_eq!(
        store.load_stream("customer-c-1", 0).await.unwrap(),
        vec![created.clone()]
    );
    assert!(
        store
            .load_stream("customer-c-0", 0)
            .await
            .unwrap()
            .is_empty()
    );
    // The relay publishes the committed event; a marker appended after it shows that the
    // rolled-back one was not merely late.
    let marker = store
        .append("marker", ExpectedVersion::NoStream, ev(2))
        .await
        .unwrap();
    eventflow_tests::eventually("the marker on the bus", || {
        bus.events().iter().any(|e| e.id == marker.id)
    })
    .await;
    let published: Vec<_> = bus.events().iter().map(|e| e.id).collect();
    assert_eq!(published, vec![created.id, marker.id]);
    assert!(!published.contains(&doomed.id));
    drop(relayed);
    drop_schema(store.pool(), &schema).await;
}

#[tokio::test]
async fn append_in_keeps_the_conflict_and_idempotency_rules_and_the_transaction_usable() {
    let (store, schema) = outbox_store().await;
    let first = store
        .append("acct-1", ExpectedVersion::NoStream, ev(1))
        .await
        .unwrap();

    let mut tx = store.pool().begin().await.unwrap();
    // A version conflict: a typed error, and the transaction goes on.
    let error = store
        .append_in(&mut tx, "acct-1", ExpectedVersion::NoStream, ev(2))
        .await
        .unwrap_err();
    assert!(
        matches!(error, Error::Conflict { actual: 1, .. }),
        "{error:?}"
    );
    // The same event again (committed earlier): the stored copy comes back.
    let again = store
        .append_in(&mut tx, "acct-1", ExpectedVersion::NoStream, first.clone())
        .await
        .unwrap();
    assert_eq!(again, first);
    // The same id in another stream: a duplicate.
    let error = store
        .append_in(&mut tx, "acct-2", ExpectedVersion::Any, first.clone())
        .await
        .unwrap_err();
    assert!(matches!(error, Error::DuplicateEvent { .. }), "{error:?}");
    // Several appends in one transaction: their positions follow each other.
    let a = store
        .append_batch_in(
            &mut tx,
            "acct-1",
            ExpectedVersion::Exact(1),
            vec![ev(3), ev(4)],
        )
        .await
        .unwrap();
    let b = store
        .append_in(&mut tx, "acct-3", ExpectedVersion::NoStream, ev(5))
        .await
        .unwrap();
    // An event appended earlier in this transaction: the copy of this transaction comes back.
    let b_again = store
        .append_in(&mut tx, "acct-3", ExpectedVersion::NoStream, b.clone())
        .await
        .unwrap();
    assert_eq!(b_again, b);
    let positions: Vec<u64> = a.iter().chain([&b]).map(|e| e.position.unwrap()).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    sqlx::query(&format!(
        "INSERT INTO \"{schema}\".customers (id, name) VALUES ('c', 'still usable')"
    ))
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(customer_count(&store, &schema).await, 1);
    let versions: Vec<u64> = store
        .load_stream("acct-1", 0)
        .await
        .unwrap()
        .iter()
        .map(|e| e.stream_version.unwrap())
        .collect();
    assert_eq!(versions, vec![1, 2, 3]);
    assert_eq!(store.load_stream("acct-3", 0).await.unwrap(), vec![b]);
    let read: Vec<_> = store.read_all(0, 10).await.unwrap();
    assert_eq!(read.len(), 4);

    // Outside a transaction: refused, nothing written.
    let mut conn = store.pool().acquire().await.unwrap();
    let error = store
        .append_in(&mut conn, "acct-4", ExpectedVersion::Any, ev(6))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::InvalidArgument(_)), "{error:?}");
    drop(conn);
    assert_eq!(store.stream_version("acct-4").await.unwrap(), 0);
    drop_schema(store.pool(), &schema).await;
}

// ---- Position continuity ----

/// A store restored (`pg_dump` | `pg_restore`) into a new database of the private cluster,
/// whose transaction-id counter is far younger than the shared server's: new positions go on
/// above the old ones, and the relay, whose checkpoint came along with the dump, publishes
/// them (before the fix it skipped them: their positions were below its checkpoint).
#[tokio::test]
async fn after_a_restore_into_a_younger_cluster_positions_continue_and_nothing_is_skipped() {
    use eventflow::testing::RecordingBus;
    use eventflow::{CheckpointStore, WithBus};
    use eventflow_tests::pg_server::bin;
    use std::sync::Arc;
    let server = PgServer::shared();
    let schema = unique("evprod_dump");
    let mut config = PostgresConfig::new(database_url());
    config.schema = schema.clone();
    config.poll_interval = Duration::from_millis(100);
    let old = PostgresEventStore::connect_with(config).await.unwrap();
    old.migrate().await.unwrap();
    let bus = Arc::new(RecordingBus::new());
    let relayed = old.clone().with_bus(bus.clone());
    let mut before = Vec::new();
    for n in 0..3 {
        before.push(
            relayed
                .append("dumped", ExpectedVersion::Any, ev(n))
                .await
                .unwrap(),
        );
    }
    let old_max = before.last().unwrap().position.unwrap();
    eventflow_tests::eventually("the relay's checkpoint at the last event", || {
        bus.len() == 3
    })
    .await;
    relayed.flush(Duration::from_secs(20)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while old.checkpoints().load_checkpoint("relay").await.unwrap() != old_max {
        assert!(Instant::now() < deadline, "relay checkpoint not saved");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(relayed);

    let dir = tempfile::tempdir().unwrap();
    let dump = dir.path().join("store.dump");
    let out = std::process::Command::new(bin("pg_dump"))
        .arg(format!("--dbname={}", database_url()))
        .args(["-Fc", "-n", &schema, "-f"])
        .arg(&dump)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop_schema(old.pool(), &schema).await;
    let database = unique("restored");
    server.psql(&format!("CREATE DATABASE {database}"));
    let out = std::process::Command::new(bin("pg_restore"))
        .args(["-U", "postgres", "-h"])
        .arg(server.socket_dir())
        .args(["-p", &server.port().to_string(), "-d", &database])
        .arg(&dump)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let next_xid: i64 = server
        .psql_in(&database, "SELECT pg_current_xact_id()::text::bigint")
        .parse()
        .unwrap();
    assert!(
        next_xid << 20 < i64::try_from(old_max).unwrap(),
        "the private cluster is not younger (xid {next_xid}, old position {old_max}): the test \
         would prove nothing"
    );

    let mut config = tls_config("postgres", "127.0.0.1", PgSslMode::Require);
    config.url = server.url("postgres", &database);
    config.schema = schema.clone();
    config.poll_interval = Duration::from_millis(100);
    let restored = PostgresEventStore::connect_with(config).await.unwrap();
    // No migrate(): the first append checks by itself.
    let bus = Arc::new(RecordingBus::new());
    let relayed = restored.clone().with_bus(bus.clone());
    let mut after = Vec::new();
    for n in 10..12 {
        after.push(
            relayed
                .append("dumped", ExpectedVersion::Any, ev(n))
                .await
                .unwrap(),
        );
    }
    let mut concurrent = Vec::new();
    for n in 0..4 {
        let s = restored.clone();
        concurrent.push(tokio::spawn(async move {
            s.append(&format!("other-{n}"), ExpectedVersion::NoStream, ev(20 + n))
                .await
        }));
    }
    for task in concurrent {
        after.push(task.await.unwrap().unwrap());
    }
    after.sort_by_key(|e| e.position);
    for event in &after {
        assert!(
            event.position.unwrap() > old_max,
            "{event:?} at or below {old_max}"
        );
    }
    assert_eq!(
        restored.read_all(old_max, 100).await.unwrap().len(),
        after.len()
    );
    // The relay resumes from the restored checkpoint and skips nothing.
    eventflow_tests::eventually("the new events on the bus", || bus.len() >= after.len()).await;
    let published: Vec<_> = bus.events().iter().map(|e| e.id).collect();
    assert_eq!(published, after.iter().map(|e| e.id).collect::<Vec<_>>());
    // migrate() afterwards changes nothing.
    restored.migrate().await.unwrap();
    let more = restored
        .append("dumped", ExpectedVersion::Any, ev(30))
        .await
        .unwrap();
    assert!(more.position > after.last().unwrap().position);
    drop(relayed);
    restored.pool().close().await;
}

/// Past 2^43 transaction ids (here: the offset set close to it) `transaction_id << 20` would
/// wrap silently; the append is refused with a typed error instead, and nothing is written.
#[tokio::test]
async fn positions_past_two_to_the_43_are_refused() {
    let schema = unique("evprod_limit");
    let mut config = PostgresConfig::new(database_url());
    config.schema = schema.clone();
    let store = PostgresEventStore::connect_with(config).await.unwrap();
    store.migrate().await.unwrap();
    store
        .append("s", ExpectedVersion::NoStream, ev(1))
        .await
        .unwrap();
    sqlx::query(&format!(
        "UPDATE \"{schema}\".position_base SET xid_offset = (1::bigint << 43) - 1"
    ))
    .execute(store.pool())
    .await
    .unwrap();
    let error = store
        .append("s", ExpectedVersion::Exact(1), ev(2))
        .await
        .unwrap_err();
    assert!(matches!(error, Error::PositionsExhausted(_)), "{error:?}");
    assert!(error.is_permanent());
    assert_eq!(store.stream_version("s").await.unwrap(), 1);
    drop_schema(store.pool(), &schema).await;
}

// ---- Tenants ----

/// Replaces the user of `url` (`postgres://user@...`).
fn as_user(url: &str, user: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap();
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    format!("{scheme}://{user}@{host}")
}

/// Two tenants, one non-owner role each: a tenant's handle reads, queries and appends its own
/// events only, even by raw SQL through its own connection (after `SET eventflow.tenant` to the
/// other tenant, too); the operator's handle and its relay see both.
#[tokio::test]
async fn tenant_handles_see_only_their_tenant_even_by_raw_sql() {
    use eventflow::WithBus;
    use eventflow::testing::RecordingBus;
    use std::sync::Arc;
    let schema = unique("evprod_ten");
    let mut config = PostgresConfig::new(database_url());
    config.schema = schema.clone();
    config.poll_interval = Duration::from_millis(100);
    let operator = PostgresEventStore::connect_with(config).await.unwrap();
    operator.migrate().await.unwrap();
    let roles = [unique("acme_role"), unique("globex_role")];
    for (role, tenant) in roles.iter().zip(["acme", "globex"]) {
        sqlx::query(&format!("CREATE ROLE {role} LOGIN"))
            .execute(operator.pool())
            .await
            .unwrap();
        operator.grant_tenant(role, tenant).await.unwrap();
        operator.grant_tenant(role, tenant).await.unwrap(); // idempotent
    }
    let handle = |role: &str, tenant: &str| {
        let mut config = PostgresConfig::new(as_user(&database_url(), role));
        config.schema = schema.clone();
        config.tenant = Some(tenant.to_owned());
        PostgresEventStore::connect_with(config)
    };
    let acme = handle(&roles[0], "acme").await.unwrap();
    let globex = handle(&roles[1], "globex").await.unwrap();
    assert_eq!(acme.tenant_id(), Some("acme"));

    let a1 = acme
        .append("acme-order-1", ExpectedVersion::NoStream, ev(1))
        .await
        .unwrap();
    assert_eq!(a1.metadata.tenant_id.as_deref(), Some("acme"));
    let g1 = globex
        .append("globex-order-1", ExpectedVersion::NoStream, ev(2))
        .await
        .unwrap();
    let a2 = acme
        .append_batch("acme-order-1", ExpectedVersion::Exact(1), vec![ev(3)])
        .await
        .unwrap()
        .remove(0);

    // Reads: each tenant its own.
    let ids = |events: Vec<Event>| events.into_iter().map(|e| e.id).collect::<Vec<_>>();
    assert_eq!(
        ids(acme.read_all(0, 100).await.unwrap()),
        vec![a1.id, a2.id]
    );
    assert_eq!(ids(globex.read_all(0, 100).await.unwrap()), vec![g1.id]);
    assert!(
        acme.load_stream("globex-order-1", 0)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(acme.stream_version("globex-order-1").await.unwrap(), 0);
    // Criteria naming the other tenant find nothing.
    let mut criteria = EventCriteria {
        tenant_id: Some("globex".into()),
        ..Default::default()
    };
    assert!(acme.load(&criteria).await.unwrap().is_empty());
    assert_eq!(ids(globex.load(&criteria).await.unwrap()), vec![g1.id]);
    criteria.tenant_id = None;
    criteria.stream_id = Some("globex-order-1".into());
    assert!(acme.load(&criteria).await.unwrap().is_empty());

    // Appends: another tenant's event is refused before it reaches the server...
    let mut foreign = ev(4);
    foreign.metadata.tenant_id = Some("globex".into());
    let error = acme
        .append("acme-order-2", ExpectedVersion::NoStream, foreign)
        .await
        .unwrap_err();
    assert!(matches!(error, Error::InvalidArgument(_)), "{error:?}");

    // ... and raw SQL through the handle's own connection can neither see nor write it.
    let mut conn = acme.pool().acquire().await.unwrap();
    let events_table = format!("\"{schema}\".events");
    let count_sql = format!("SELECT count(*) FROM {events_table}");
    assert_eq!(
        sqlx::query_scalar::<_, i64>(&count_sql)
            .fetch_one(&mut *conn)
            .await
            .unwrap(),
        2
    );
    sqlx::query("SET eventflow.tenant = 'globex'")
        .execute(&mut *conn)
        .await
        .unwrap();
    assert_eq!(
        sqlx::query_scalar::<_, i64>(&count_sql)
            .fetch_one(&mut *conn)
            .await
            .unwrap(),
        0,
        "a session of acme's role switched to globex sees nothing"
    );
    let insert = sqlx::query(&format!(
        "INSERT INTO {events_table} (position, transaction_id, event_id, stream_id, \
         stream_version, event_type, schema_version, payload, metadata, tenant_id, occurred_at) \
         VALUES (1, 0, gen_random_uuid(), 'x', 1, 'x.y', 1, '{{}}', '{{}}', 'globex', now())"
    ))
    .execute(&mut *conn)
    .await
    .unwrap_err();
    let code = insert.as_database_error().and_then(|e| e.code()).unwrap();
    assert_eq!(code, "42501", "{insert}"); // row-level security
    let update = sqlx::query(&format!("UPDATE {events_table} SET tenant_id = 'acme'"))
        .execute(&mut *conn)
        .await
        .unwrap_err();
    assert_eq!(
        update.as_database_error().and_then(|e| e.code()).unwrap(),
        "42501",
        "{update}"
    );
    drop(conn);
    // A handle of acme's role scoped to globex (`tenant()`): the role was not granted globex.
    let acme_as_globex = acme.tenant("globex").unwrap();
    assert_eq!(acme_as_globex.tenant_id(), Some("globex"));
    assert!(acme_as_globex.read_all(0, 100).await.unwrap().is_empty());
    assert!(
        acme_as_globex
            .append("globex-order-2", ExpectedVersion::NoStream, ev(5))
            .await
            .is_err()
    );
    acme_as_globex.pool().close().await;

    // The operator sees both tenants, and so does its relay.
    assert_eq!(
        ids(operator.read_all(0, 100).await.unwrap()),
        vec![a1.id, g1.id, a2.id]
    );
    let bus = Arc::new(RecordingBus::new());
    let relayed = operator.clone().with_bus(bus.clone());
    eventflow_tests::eventually("both tenants' events on the bus", || bus.len() >= 3).await;
    assert_eq!(
        bus.events().iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![a1.id, g1.id, a2.id]
    );
    drop(relayed);
    acme.pool().close().await;
    globex.pool().close().await;
    drop_schema(operator.pool(), &schema).await;
    for role in &roles {
        sqlx::query(&format!("DROP ROLE {role}"))
            .execute(operator.pool())
            .await
            .unwrap();
    }
}
