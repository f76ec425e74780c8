//! The `eventflow` binary run as a process against the real PostgreSQL (and NATS for the bus
//! commands), on a freshly seeded schema per test: every command's table and `--json` output,
//! the checkout saga's causation tree, a rebuild, a dead-letter retry delivered once, one-line
//! errors; and the README's "Operating eventflow" output, which this test keeps true.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use eventflow::bus::memory::InMemoryBus;
use eventflow::bus::nats::{NatsBus, NatsConfig};
use eventflow::lease::LeaseStore;
use eventflow::postgres::{PostgresEventStore, PostgresSagaStore};
use eventflow::saga::{Saga, SagaContext, SagaManager};
use eventflow::store::{DeadLetterStore, ParkedEvent};
use eventflow::{
    BoxError, Event, EventBus, EventStore, ExpectedVersion, Metadata, WithBus, sync_handler,
};
use serde_json::{Value, json};
use uuid::Uuid;

const EVENTFLOW: &str = env!("CARGO_BIN_EXE_eventflow");
const DEMO: &str = env!("CARGO_BIN_EXE_eventflow-cli-demo");

fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "{prefix}_{}_{n}_{:08x}",
        std::process::id(),
        Uuid::new_v4().as_fields().0
    )
}

/// 2026-01-05 10:00:00 UTC plus `seconds`: seeded events have fixed times, so the output is
/// the same on every run.
fn at(seconds: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 5, 10, 0, 0).unwrap() + chrono::Duration::seconds(seconds)
}

/// The fixed id of the seeded dead letter.
const PARKED_ID: &str = "0194a000-0000-7000-8000-00000000dead";

/// The checkout saga of the example, reduced to what `eventflow sagas` shows: its state, the
/// events it handled and a pending deadline.
struct Checkout;

impl Saga for Checkout {
    type State = Value;
    fn name(&self) -> &str {
        "checkout"
    }
    fn starts_on(&self) -> Vec<String> {
        vec!["checkout.started".into()]
    }
    fn handles(&self) -> Vec<String> {
        vec!["inventory.reserved".into(), "payment.failed".into()]
    }
    fn handle(
        &self,
        state: &mut Value,
        event: &Event,
        ctx: &mut SagaContext,
    ) -> Result<(), BoxError> {
        let step = match event.event_type.as_str() {
            "checkout.started" => {
                let timeout = Event::new("checkout.timed_out", json!({}))?;
                ctx.set_deadline_at("payment-timeout", at(900), timeout);
                "reserving"
            }
            "inventory.reserved" => "paying",
            _ => "compensating",
        };
        *state = json!({ "step": step });
        Ok(())
    }
}

/// A store in a fresh schema holding two checkouts: `c1` whose payment failed (the
/// compensation branch: release the stock, cancel the order) and `c2` that went through; a
/// parked event of the relay; the `checkout` saga's instance of `c1`.
struct Seeded {
    store: PostgresEventStore,
    schema: String,
}

impl Seeded {
    async fn new() -> Self {
        let schema = unique("cli");
        let pool = eventflow::postgres::PgPoolOptions::new()
            .max_connections(4)
            .connect(&database_url())
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "PostgreSQL is not reachable at {}: {e}; start it with scripts/test",
                    database_url()
                )
            });
        let store = PostgresEventStore::builder(pool)
            .schema(&schema)
            .build()
            .unwrap();
        store.migrate().await.unwrap();
        let seeded = Seeded { store, schema };
        seeded.seed().await;
        seeded
    }

    async fn append(&self, stream: &str, mut event: Event, second: i64) -> Event {
        event.timestamp = at(second);
        self.store
            .append(stream, ExpectedVersion::Any, event)
            .await
            .unwrap()
    }

    async fn seed(&self) {
        let ev = |t: &str, source: &str, payload: Value| {
            Event::new(t, payload).unwrap().with_source(source)
        };
        // c1: the payment fails; the saga compensates.
        let started = self
            .append(
                "order-o1",
                ev(
                    "checkout.started",
                    "web",
                    json!({ "order_id": "o1", "amount_cents": 4200 }),
                )
                .with_correlation("c1")
                .with_metadata(Metadata::default().tenant("acme")),
                0,
            )
            .await;
        let reserve = self
            .append(
                "checkout-c1",
                ev(
                    "inventory.reserve",
                    "checkout-saga",
                    json!({ "sku": "sku-1" }),
                )
                .caused_by(&started),
                1,
            )
            .await;
        let reserved = self
            .append(
                "inventory-sku-1",
                ev("inventory.reserved", "inventory", json!({ "sku": "sku-1" }))
                    .caused_by(&reserve),
                2,
            )
            .await;
        let pay = self
            .append(
                "checkout-c1",
                ev(
                    "payment.process",
                    "checkout-saga",
                    json!({ "amount_cents": 4200 }),
                )
                .caused_by(&reserved),
                3,
            )
            .await;
        let failed = self
            .append(
                "payment-c1",
                ev(
                    "payment.failed",
                    "payment",
                    json!({ "reason": "card declined" }),
                )
                .caused_by(&pay),
                4,
            )
            .await;
        let release = self
            .append(
                "checkout-c1",
                ev(
                    "inventory.release",
                    "checkout-saga",
                    json!({ "sku": "sku-1" }),
                )
                .caused_by(&failed),
                5,
            )
            .await;
        self.append(
            "order-o1",
            ev(
                "order.cancelled",
                "checkout-saga",
                json!({ "order_id": "o1" }),
            )
            .caused_by(&failed),
            6,
        )
        .await;
        self.append(
            "inventory-sku-1",
            ev("inventory.released", "inventory", json!({ "sku": "sku-1" })).caused_by(&release),
            7,
        )
        .await;
        // c2: paid and confirmed.
        let started2 = self
            .append(
                "order-o2",
                ev(
                    "checkout.started",
                    "web",
                    json!({ "order_id": "o2", "amount_cents": 900 }),
                )
                .with_correlation("c2"),
                60,
            )
            .await;
        self.append(
            "order-o2",
            ev(
                "order.confirmed",
                "checkout-saga",
                json!({ "order_id": "o2" }),
            )
            .caused_by(&started2),
            61,
        )
        .await;

        // The saga's instance of c1.
        let manager = SagaManager::new(
            Checkout,
            Arc::new(PostgresSagaStore::for_store(&self.store).unwrap()),
        )
        .unwrap();
        for event in self
            .store
            .load(&eventflow::store::EventCriteria::all().correlation_id("c1"))
            .await
            .unwrap()
        {
            manager.handle(&event).await.unwrap();
        }

        // A parked event of the relay.
        let mut parked_event = ev(
            "payment.refund",
            "checkout-saga",
            json!({ "amount_cents": 4200 }),
        )
        .with_correlation("c1");
        parked_event.timestamp = at(8);
        let error = std::io::Error::other("payload larger than the server's max_payload");
        let mut parked = ParkedEvent::new(
            "relay",
            parked_event,
            "permanent: publish rejected",
            &error,
            3,
        );
        parked.id = PARKED_ID.parse().unwrap();
        parked.parked_at = at(9);
        self.store.dead_letters().park(parked).await.unwrap();
    }

    fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut command = Command::new(program);
        command
            .args(args)
            .env("DATABASE_URL", database_url())
            .env("EVENTFLOW_SCHEMA", &self.schema)
            .env("NO_COLOR", "1")
            .env_remove("NATS_URL")
            .env_remove("REDIS_URL");
        command
    }

    /// Runs `eventflow args` and returns its output.
    fn run(&self, args: &[&str]) -> Output {
        self.command(EVENTFLOW, args).output().unwrap()
    }

    /// Runs `eventflow args`, checks it succeeded, and returns its stdout with the schema name
    /// written as `eventflow` (the README's).
    fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(
            output.status.success(),
            "eventflow {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout)
            .unwrap()
            .replace(&self.schema, "eventflow")
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.push("--json");
        serde_json::from_str(&self.ok(&args)).unwrap()
    }
}

/// Checks that a failed run printed exactly one line on stderr, starting with `error: `, and
/// nothing on stdout; returns the line.
fn one_line_error(output: &Output) -> String {
    assert!(!output.status.success(), "expected a failure");
    let stderr = String::from_utf8(output.stderr.clone()).unwrap();
    assert_eq!(
        stderr.lines().count(),
        1,
        "stderr is not one line: {stderr:?}"
    );
    assert!(stderr.starts_with("error: "), "{stderr:?}");
    assert!(!stderr.contains("panicked"), "{stderr:?}");
    assert!(output.stdout.is_empty(), "stdout: {:?}", output.stdout);
    stderr.trim_end().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_stream_and_events_as_tables_and_json() {
    let s = Seeded::new().await;
    assert_eq!(
        s.ok(&["streams"]),
        "STREAM           VERSION  LAST TYPE           LAST TIME
checkout-c1      3        inventory.release   2026-01-05 10:00:05.000Z
inventory-sku-1  2        inventory.released  2026-01-05 10:00:07.000Z
order-o1         2        order.cancelled     2026-01-05 10:00:06.000Z
order-o2         2        order.confirmed     2026-01-05 10:01:01.000Z
payment-c1       1        payment.failed      2026-01-05 10:00:04.000Z
"
    );
    let streams = s.json(&["streams", "--prefix", "order-"]);
    assert_eq!(
        streams,
        json!([
            { "stream_id": "order-o1", "version": 2, "last_event_type": "order.cancelled",
              "last_occurred_at": "2026-01-05T10:00:06Z" },
            { "stream_id": "order-o2", "version": 2, "last_event_type": "order.confirmed",
              "last_occurred_at": "2026-01-05T10:01:01Z" },
        ])
    );

    assert_eq!(
        s.ok(&["stream", "checkout-c1", "--from", "2"]),
        "VERSION  TYPE               TIME                      CORRELATION  PAYLOAD
2        payment.process    2026-01-05 10:00:03.000Z  c1           {\"amount_cents\":4200}
3        inventory.release  2026-01-05 10:00:05.000Z  c1           {\"sku\":\"sku-1\"}
"
    );
    let stream = s.json(&["stream", "checkout-c1"]);
    let stream = stream.as_array().unwrap();
    assert_eq!(stream.len(), 3);
    assert_eq!(stream[0]["type"], "inventory.reserve");
    assert_eq!(stream[0]["stream_version"], 1);
    assert_eq!(stream[0]["correlation_id"], "c1");
    assert_eq!(stream[2]["payload"], json!({ "sku": "sku-1" }));

    // Criteria: type, correlation, tenant, age, limit.
    let types = |v: Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| e["type"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        types(s.json(&["events", "--type", "checkout.started"])),
        ["checkout.started", "checkout.started"]
    );
    assert_eq!(
        types(s.json(&["events", "--correlation", "c2"])),
        ["checkout.started", "order.confirmed"]
    );
    // The tenant of c1's first event travels to every event it caused (`caused_by`).
    let acme = s.json(&["events", "--tenant", "acme"]);
    assert_eq!(acme.as_array().unwrap().len(), 8);
    assert!(
        acme.as_array()
            .unwrap()
            .iter()
            .all(|e| e["correlation_id"] == "c1")
    );
    assert_eq!(
        types(s.json(&["events", "--correlation", "c1", "--limit", "2"])),
        ["checkout.started", "inventory.reserve"]
    );
    // The seeded events occurred in 2026-01-05; none within the last hour of now... unless
    // now is that morning: the check holds as long as the clock is not within the hour after.
    let recent = s.json(&["events", "--since", "1h"]);
    let all = s.json(&["events"]);
    assert_eq!(all.as_array().unwrap().len(), 10);
    let now = Utc::now();
    if now < at(0) || now > at(3600 + 61) {
        assert_eq!(recent, json!([]));
    }
    assert_eq!(
        s.ok(&["events", "--correlation", "c2"]),
        "TIME                      TYPE              STREAM    VERSION  CORRELATION  SOURCE
2026-01-05 10:01:00.000Z  checkout.started  order-o2  1        c2           web
2026-01-05 10:01:01.000Z  order.confirmed   order-o2  2        c2           checkout-saga
"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_draws_the_checkout_causation_tree_with_its_compensation() {
    let s = Seeded::new().await;
    assert_eq!(
        s.ok(&["trace", "c1"]),
        "\
checkout.started  [web]  order-o1 v1  2026-01-05 10:00:00.000Z
└─ inventory.reserve  [checkout-saga]  checkout-c1 v1  2026-01-05 10:00:01.000Z
   └─ inventory.reserved  [inventory]  inventory-sku-1 v1  2026-01-05 10:00:02.000Z
      └─ payment.process  [checkout-saga]  checkout-c1 v2  2026-01-05 10:00:03.000Z
         └─ payment.failed  [payment]  payment-c1 v1  2026-01-05 10:00:04.000Z
            ├─ inventory.release  [checkout-saga]  checkout-c1 v3  2026-01-05 10:00:05.000Z
            │  └─ inventory.released  [inventory]  inventory-sku-1 v2  2026-01-05 10:00:07.000Z
            └─ order.cancelled  [checkout-saga]  order-o1 v2  2026-01-05 10:00:06.000Z
"
    );
    let mermaid = s.ok(&["trace", "c1", "--format", "mermaid"]);
    assert!(mermaid.starts_with("flowchart TD\n"), "{mermaid}");
    assert!(mermaid.contains("    e1[\"checkout.started<br/>web · order-o1\"]\n"));
    // payment.failed (e5) causes both compensations (e6, e7); e6 causes e8.
    for edge in ["e5 --> e6", "e5 --> e7", "e6 --> e8", "e1 --> e2"] {
        assert!(mermaid.contains(edge), "{edge} missing in {mermaid}");
    }
    assert_eq!(mermaid.matches("-->").count(), 7);
    let dot = s.ok(&["trace", "c1", "--format", "dot"]);
    assert!(dot.starts_with("digraph trace {"), "{dot}");
    assert!(
        dot.contains("e5 -> e7;") && dot.trim_end().ends_with('}'),
        "{dot}"
    );
    let json = s.json(&["trace", "c2"]);
    assert_eq!(json.as_array().unwrap().len(), 2);
    assert_eq!(json[1]["causation_id"], json[0]["id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_check_fails_while_migrations_are_pending() {
    let schema = unique("cli_migrate");
    let run = |args: &[&str]| {
        Command::new(EVENTFLOW)
            .args(args)
            .env("DATABASE_URL", database_url())
            .env("EVENTFLOW_SCHEMA", &schema)
            .output()
            .unwrap()
    };
    // Every PostgreSQL migration of the workspace is pending on a new schema.
    let all = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension() == Some("sql".as_ref()))
        .count();
    let pending = run(&["migrate", "--check"]);
    assert_eq!(pending.status.code(), Some(1));
    let text = String::from_utf8(pending.stdout).unwrap();
    assert!(
        text.starts_with(&format!(
            "schema {schema}: {all} pending\n  0001 event store\n"
        )),
        "{text}"
    );
    let json: Value =
        serde_json::from_slice(&run(&["migrate", "--check", "--json"]).stdout).unwrap();
    assert_eq!(json["pending"].as_array().unwrap().len(), all);
    let applied = run(&["migrate"]);
    assert!(applied.status.success());
    assert!(
        String::from_utf8(applied.stdout)
            .unwrap()
            .contains(&format!("applied {all}"))
    );
    let clean = run(&["migrate", "--check"]);
    assert_eq!(clean.status.code(), Some(0));
    assert_eq!(
        String::from_utf8(clean.stdout).unwrap(),
        format!("schema {schema}: up to date\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_show_state_handled_events_and_deadlines() {
    let s = Seeded::new().await;
    let text = s.ok(&["sagas", "c1"]);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("saga checkout  running  version 3  updated "),
        "{text}"
    );
    assert_eq!(lines[1], "  state: {\"step\":\"compensating\"}");
    assert_eq!(lines[2], "  handled (3):");
    for (line, t) in
        lines[3..6]
            .iter()
            .zip(["checkout.started", "inventory.reserved", "payment.failed"])
    {
        assert!(line.contains(&format!("  {t}  ")), "{line}");
    }
    assert_eq!(lines[6], "  deadlines (1):");
    assert_eq!(
        lines[7],
        "    payment-timeout  due 2026-01-05 10:15:00.000Z  fires checkout.timed_out"
    );
    let json = s.json(&["sagas", "c1"]);
    assert_eq!(json[0]["saga"], "checkout");
    assert_eq!(json[0]["completed"], false);
    assert_eq!(json[0]["handled"].as_array().unwrap().len(), 3);
    assert_eq!(json[0]["deadlines"][0]["name"], "payment-timeout");
    let missing = one_line_error(&s.run(&["sagas", "nope"]));
    assert_eq!(
        missing,
        "error: no saga instance for correlation id \"nope\""
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_status_and_projections_report_position_lag_and_parked() {
    let s = Seeded::new().await;
    assert!(one_line_error(&s.run(&["relay", "status"])).contains("no relay \"relay\""));
    // A relay to an in-memory bus publishes everything and saves its checkpoint.
    let relayed = s.store.clone().with_bus(InMemoryBus::new());
    relayed.flush(Duration::from_secs(20)).await.unwrap();
    // The relay attached to a PostgreSQL store holds the schema's relay lease.
    let lease = s
        .store
        .leases()
        .list(Some("relay:relay"))
        .await
        .unwrap()
        .pop()
        .expect("the relay's lease");
    let status = s.ok(&["relay", "status"]);
    let lines: Vec<&str> = status.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        [
            "RELAY", "ACTIVE", "STATUS", "LAG", "PARKED", "OWNER", "EPOCH", "EXPIRES", "UPDATED"
        ],
        "{status}"
    );
    let row = cells(lines[1]);
    assert_eq!(
        row[..7],
        [
            "relay",
            "yes",
            "caught up",
            "0",
            "1",
            lease.owner.as_str(),
            "1"
        ],
        "{status}"
    );
    assert_eq!(row[7], time(&lease.expires_at), "{status}");
    let json = s.json(&["relay", "status"]);
    assert_eq!(json["lag_events"], 0);
    assert_eq!(json["parked"], 1);
    assert_eq!(json["position"], json["head"]);
    assert_eq!(json["active"], true);
    assert_eq!(json["lease"]["owner"], lease.owner.as_str());
    assert_eq!(json["lease"]["epoch"], 1);
    assert_eq!(json["lease"]["active"], true);
    assert_eq!(
        serde_json::from_value::<DateTime<Utc>>(json["lease"]["expires_at"].clone()).unwrap(),
        lease.expires_at
    );
    drop(relayed);
    // Released (as a stopped relay does): the lease is kept, expired, and no relay is active.
    assert!(s.store.leases().release(&lease).await.unwrap());
    let json = s.json(&["relay", "status"]);
    assert_eq!(json["active"], false);
    assert_eq!(json["lease"]["active"], false);
    assert_eq!(json["lease"]["epoch"], 1);
    let status = s.ok(&["relay", "status"]);
    let expired = format!("{} (expired)", lease.owner);
    assert_eq!(
        cells(status.lines().nth(1).unwrap())[..7],
        ["relay", "no", "caught up", "0", "1", expired.as_str(), "1"],
        "{status}"
    );

    // The relay's checkpoint is not a projection; the rebuilt one is, caught up.
    sqlx::query(&format!(
        "CREATE TABLE {}.cli_type_counts (event_type text PRIMARY KEY, n bigint NOT NULL)",
        s.schema
    ))
    .execute(s.store.pool())
    .await
    .unwrap();
    assert_eq!(
        s.ok(&["projections"]),
        "PROJECTION  STATUS  LAG  PARKED  OWNER  EPOCH  EXPIRES  UPDATED\n"
    );
    let rebuilt = s
        .command(DEMO, &["projections", "rebuild", "type-counts"])
        .output()
        .unwrap();
    assert!(
        rebuilt.status.success(),
        "{}",
        String::from_utf8_lossy(&rebuilt.stderr)
    );
    let projections = s.json(&["projections"]);
    assert_eq!(projections.as_array().unwrap().len(), 1, "{projections}");
    assert_eq!(projections[0]["name"], "type-counts");
    assert_eq!(projections[0]["status"], "caught up");
    assert_eq!(projections[0]["lag_events"], 0);
    // One more event: the projection is one event behind.
    s.append(
        "order-o3",
        Event::new("order.placed", json!({})).unwrap(),
        120,
    )
    .await;
    let behind = s.ok(&["projections"]);
    assert!(
        behind
            .lines()
            .nth(1)
            .unwrap()
            .starts_with("type-counts  behind  1    0       -      -      -        2"),
        "{behind}"
    );
}

/// Counts events in `live_counts` (a transactional projection run in this process).
struct LiveCounts;

#[eventflow::async_trait]
impl eventflow::postgres::PgProjection for LiveCounts {
    fn name(&self) -> &str {
        "live-counts"
    }
    async fn handle(
        &self,
        tx: &mut eventflow::postgres::PgTransaction,
        _event: &Event,
    ) -> eventflow::HandlerResult {
        sqlx::query("UPDATE live_counts SET n = n + 1")
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_stops_a_running_projection_until_resume() {
    use eventflow::projection::RunState;
    let s = Seeded::new().await;
    for statement in [
        format!("CREATE TABLE {}.live_counts (n bigint NOT NULL)", s.schema),
        format!("INSERT INTO {}.live_counts VALUES (0)", s.schema),
    ] {
        sqlx::query(&statement)
            .execute(s.store.pool())
            .await
            .unwrap();
    }
    let count = || async {
        sqlx::query_scalar::<_, i64>(&format!("SELECT n FROM {}.live_counts", s.schema))
            .fetch_one(s.store.pool())
            .await
            .unwrap()
    };
    let runner = eventflow::postgres::projection_runner(
        Arc::new(s.store.clone()),
        s.store.pool().clone(),
        &s.schema,
        LiveCounts,
    )
    .unwrap()
    .poll_interval(Duration::from_millis(50));
    let _task = runner.start();
    runner
        .wait_caught_up(Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(count().await, 10);

    assert_eq!(
        s.ok(&["projections", "pause", "live-counts"]),
        "paused live-counts\n"
    );
    assert_eq!(s.json(&["projections"])[0]["status"], "paused");
    s.append(
        "order-o4",
        Event::new("order.placed", json!({})).unwrap(),
        300,
    )
    .await;
    // The runner read the new event and was refused (its state says so): nothing applied.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while runner.status().await.unwrap().state != RunState::Paused {
        assert!(
            std::time::Instant::now() < deadline,
            "the runner never saw the pause"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(count().await, 10);
    assert_eq!(s.json(&["projections"])[0]["lag_events"], 1);

    assert_eq!(
        s.ok(&["projections", "resume", "live-counts"]),
        "resumed live-counts\n"
    );
    runner
        .wait_caught_up(Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(count().await, 11);
    assert_eq!(s.json(&["projections"])[0]["status"], "caught up");
}

/// Does nothing with each event: a partitioned projection whose progress and leases the
/// command line shows.
struct Split;

#[eventflow::async_trait]
impl eventflow::postgres::PgProjection for Split {
    fn name(&self) -> &str {
        "split"
    }
    async fn handle(
        &self,
        _tx: &mut eventflow::postgres::PgTransaction,
        _event: &Event,
    ) -> eventflow::HandlerResult {
        Ok(())
    }
}

/// The cells of a table row (columns are separated by at least two spaces).
fn cells(line: &str) -> Vec<&str> {
    line.split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect()
}

/// The `time` format of the tables.
fn time(at: &DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S%.3fZ").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projections_show_each_partition_with_its_lease() {
    use eventflow::projection::{PartitionedOptions, RunnerOptions};
    let s = Seeded::new().await;
    let leases = s.store.leases();
    let runner = eventflow::postgres::partitioned_runner(
        Arc::new(s.store.clone()),
        s.store.pool().clone(),
        &s.schema,
        Split,
        Arc::new(leases.clone()),
        PartitionedOptions::default()
            .partitions(2)
            .lease_ttl(Duration::from_secs(30))
            .worker_id("worker-a")
            .runner(RunnerOptions {
                poll_interval: Duration::from_millis(50),
                ..RunnerOptions::default()
            }),
    )
    .unwrap();
    let task = runner.start();
    let head = s.store.head_position().await.unwrap();
    runner
        .wait_for(head, Duration::from_secs(20))
        .await
        .unwrap();
    // A parked event of partition 1 (its dead-letter source is its checkpoint's name).
    let parked = ParkedEvent::new(
        "split#1",
        Event::new("order.placed", json!({})).unwrap(),
        "handler failed",
        &std::io::Error::other("boom"),
        3,
    );
    s.store.dead_letters().park(parked).await.unwrap();

    let stored = leases.list(Some("projection:split")).await.unwrap();
    assert_eq!(stored.len(), 2, "{stored:?}");
    let json = s.json(&["projections"]);
    let rows = json.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{json}");
    let split = &rows[0];
    assert_eq!(split["name"], "split");
    assert_eq!(split["partitioned"], true);
    assert_eq!(split["status"], "caught up");
    assert_eq!(split["lag_events"], 0);
    assert_eq!(split["parked"], 1);
    assert_eq!(split["position"], head);
    let parts = split["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 2, "{json}");
    for (p, part) in parts.iter().enumerate() {
        assert_eq!(part["partition"], p);
        assert_eq!(part["checkpoint"], format!("split#{p}"));
        assert_eq!(part["position"], head);
        assert_eq!(part["lag_events"], 0);
        assert_eq!(part["parked"], u64::from(p == 1));
        assert_eq!(part["lease"]["owner"], "worker-a");
        assert_eq!(part["lease"]["epoch"], 1);
        assert_eq!(part["lease"]["active"], true);
        assert_eq!(
            serde_json::from_value::<DateTime<Utc>>(part["lease"]["expires_at"].clone()).unwrap(),
            stored[p].expires_at
        );
    }
    let table = s.ok(&["projections"]);
    let lines: Vec<Vec<&str>> = table.lines().map(cells).collect();
    assert_eq!(
        lines[0],
        [
            "PROJECTION",
            "STATUS",
            "LAG",
            "PARKED",
            "OWNER",
            "EPOCH",
            "EXPIRES",
            "UPDATED"
        ]
    );
    assert_eq!(lines.len(), 4, "{table}");
    assert_eq!(
        lines[1][..7],
        ["split", "caught up", "0", "1", "2/2 leased", "-", "-"],
        "{table}"
    );
    for p in 0..2 {
        let expires = time(&stored[p].expires_at);
        assert_eq!(
            lines[p + 2][..7],
            [
                format!("split#{p}").as_str(),
                "caught up",
                "0",
                if p == 1 { "1" } else { "0" },
                "worker-a",
                "1",
                expires.as_str()
            ],
            "{table}"
        );
    }

    // Paused with its partitions; one more event: the partitions fall behind.
    s.ok(&["projections", "pause", "split"]);
    s.append(
        "order-o5",
        Event::new("order.placed", json!({})).unwrap(),
        400,
    )
    .await;
    let json = s.json(&["projections"]);
    assert_eq!(json[0]["status"], "paused");
    assert_eq!(json[0]["lag_events"], 1);
    for part in json[0]["partitions"].as_array().unwrap() {
        assert_eq!(part["status"], "paused");
        assert_eq!(part["lag_events"], 1);
    }

    // Stopped: the worker releases its leases (kept, expired, same epoch).
    task.stop().await;
    let released = leases.list(Some("projection:split")).await.unwrap();
    let json = s.json(&["projections"]);
    for part in json[0]["partitions"].as_array().unwrap() {
        assert_eq!(part["lease"]["owner"], "worker-a");
        assert_eq!(part["lease"]["epoch"], 1);
        assert_eq!(part["lease"]["active"], false);
    }
    let table = s.ok(&["projections"]);
    let rows: Vec<Vec<&str>> = table.lines().map(cells).collect();
    assert_eq!(
        rows[1][..7],
        ["split", "paused", "1", "1", "0/2 leased", "-", "-"],
        "{table}"
    );
    assert_eq!(
        rows[2][..7],
        [
            "split#0",
            "paused",
            "1",
            "0",
            "worker-a (expired)",
            "1",
            time(&released[0].expires_at).as_str()
        ],
        "{table}"
    );
}

async fn type_counts(s: &Seeded) -> Vec<(String, i64)> {
    sqlx::query_as(&format!(
        "SELECT event_type, n FROM {}.cli_type_counts ORDER BY event_type",
        s.schema
    ))
    .fetch_all(s.store.pool())
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rebuild_replays_every_event_into_the_same_read_model() {
    let s = Seeded::new().await;
    sqlx::query(&format!(
        "CREATE TABLE {}.cli_type_counts (event_type text PRIMARY KEY, n bigint NOT NULL)",
        s.schema
    ))
    .execute(s.store.pool())
    .await
    .unwrap();
    // What the read model must hold: every stored event counted once per type.
    let expected: Vec<(String, i64)> = sqlx::query_as(&format!(
        "SELECT event_type, count(*) FROM {}.events GROUP BY event_type ORDER BY event_type",
        s.schema
    ))
    .fetch_all(s.store.pool())
    .await
    .unwrap();
    let rebuild = || {
        let output = s
            .command(DEMO, &["projections", "rebuild", "type-counts"])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let first = rebuild();
    assert!(
        first.starts_with("rebuilt type-counts: 10 events replayed, position "),
        "{first}"
    );
    assert_eq!(type_counts(&s).await, expected);
    // A damaged read model is rebuilt to the same state (reset clears it first: no doubles).
    sqlx::query(&format!(
        "UPDATE {}.cli_type_counts SET n = n + 100 WHERE event_type = 'checkout.started'",
        s.schema
    ))
    .execute(s.store.pool())
    .await
    .unwrap();
    rebuild();
    assert_eq!(type_counts(&s).await, expected);
    // Reset: the read model is empty and the checkpoint at 0 (all 10 events to replay).
    let reset = s
        .command(DEMO, &["projections", "reset", "type-counts"])
        .output()
        .unwrap();
    assert!(
        reset.status.success(),
        "{}",
        String::from_utf8_lossy(&reset.stderr)
    );
    assert_eq!(
        String::from_utf8(reset.stdout).unwrap(),
        "reset type-counts: read model cleared, checkpoint 0\n"
    );
    assert_eq!(type_counts(&s).await, []);
    let listed = s.json(&["projections"]);
    assert_eq!(listed[0]["position"], 0);
    assert_eq!(listed[0]["lag_events"], 10);
    assert_eq!(listed[0]["status"], "behind");
    rebuild();
    assert_eq!(type_counts(&s).await, expected);
    // The generic binary has no projection code: a clear error, nothing changed.
    let error = one_line_error(&s.run(&["projections", "rebuild", "type-counts"]));
    assert!(error.contains("not registered in this binary"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_list_show_discard_and_retry_delivers_once() {
    let s = Seeded::new().await;
    assert_eq!(
        s.ok(&["dead-letters", "list"]),
        format!(
            "ID                                    SOURCE  TYPE            ATTEMPTS  PARKED                    REASON
{PARKED_ID}  relay   payment.refund  3         2026-01-05 10:00:09.000Z  permanent: publish rejected
"
        )
    );
    let list = s.json(&["dead-letters", "list", "--source", "relay"]);
    assert_eq!(list[0]["id"], PARKED_ID);
    assert_eq!(
        list[0]["error"],
        "payload larger than the server's max_payload"
    );
    assert_eq!(list[0]["event"]["type"], "payment.refund");
    assert_eq!(
        s.json(&["dead-letters", "list", "--source", "other"]),
        json!([])
    );
    let shown = s.ok(&["dead-letters", "show", PARKED_ID]);
    assert!(
        shown.contains("reason:      permanent: publish rejected\n"),
        "{shown}"
    );
    assert_eq!(s.json(&["dead-letters", "show", PARKED_ID])["attempts"], 3);

    // Retry without a bus: a clear error, still parked.
    let error = one_line_error(&s.run(&["dead-letters", "retry", PARKED_ID]));
    assert!(error.contains("--bus"), "{error}");

    // Retry on NATS: a subscriber sees it once; a marker published after it bounds the wait.
    let prefix = unique("cli");
    let mut config = NatsConfig::new(nats_url());
    config.subject_prefix.clone_from(&prefix);
    let bus = NatsBus::connect(config)
        .await
        .unwrap_or_else(|e| panic!("NATS is not reachable at {}: {e}", nats_url()));
    let seen: Arc<Mutex<Vec<Event>>> = Arc::default();
    let sink = Arc::clone(&seen);
    let _sub = bus
        .subscribe(
            "*",
            Arc::new(sync_handler(move |e: &Event| {
                sink.lock().unwrap().push(e.clone());
                Ok(())
            })),
        )
        .await
        .unwrap();
    bus.flush().await.unwrap();
    let retried = s
        .command(
            EVENTFLOW,
            &[
                "--nats-url",
                &nats_url(),
                "--bus-prefix",
                &prefix,
                "dead-letters",
                "retry",
                PARKED_ID,
                "--bus",
                "nats",
            ],
        )
        .output()
        .unwrap();
    assert!(
        retried.status.success(),
        "{}",
        String::from_utf8_lossy(&retried.stderr)
    );
    // Retrying again finds nothing: the dead letter was removed once the bus took it.
    let again = one_line_error(
        &s.command(
            EVENTFLOW,
            &[
                "--nats-url",
                &nats_url(),
                "--bus-prefix",
                &prefix,
                "dead-letters",
                "retry",
                PARKED_ID,
                "--bus",
                "nats",
            ],
        )
        .output()
        .unwrap(),
    );
    assert_eq!(again, format!("error: no dead letter {PARKED_ID}"));
    let marker = Event::new("cli.marker", json!({})).unwrap();
    let marker_id = marker.id;
    bus.publish(marker).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !seen.lock().unwrap().iter().any(|e| e.id == marker_id) {
        assert!(
            std::time::Instant::now() < deadline,
            "the marker never arrived"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let types: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|e| e.event_type.clone())
        .collect();
    assert_eq!(types, ["payment.refund", "cli.marker"]);
    assert_eq!(s.json(&["dead-letters", "list"]), json!([]));

    // Discard.
    let mut parked = ParkedEvent::new(
        "type-counts",
        Event::new("x.y", json!({})).unwrap(),
        "handler failed",
        &std::io::Error::other("boom"),
        1,
    );
    let id = Uuid::new_v4();
    parked.id = id;
    s.store.dead_letters().park(parked).await.unwrap();
    assert_eq!(
        s.ok(&["dead-letters", "discard", &id.to_string()]),
        format!("discarded dead letter {id}\n")
    );
    assert_eq!(
        s.store.dead_letters().count("type-counts").await.unwrap(),
        0
    );
    assert_eq!(
        one_line_error(&s.run(&["dead-letters", "discard", &id.to_string()])),
        format!("error: no dead letter {id}")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_follows_new_events_matching_a_pattern() {
    let s = Seeded::new().await;
    let mut child = s
        .command(EVENTFLOW, &["tail", "order.*", "--count", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Ready once it says so on stderr: what is committed from then on is shown.
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert!(line.starts_with("following "), "{line}");
    for (stream, t) in [
        ("order-o9", "order.placed"),
        ("pay-9", "payment.failed"),
        ("order-o9", "order.shipped"),
    ] {
        s.append(stream, Event::new(t, json!({ "n": 9 })).unwrap(), 200)
            .await;
    }
    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            "2026-01-05 10:03:20.000Z  order.placed  order-o9 v1  -  {\"n\":9}",
            "2026-01-05 10:03:20.000Z  order.shipped  order-o9 v2  -  {\"n\":9}",
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_follows_a_nats_bus() {
    let s = Seeded::new().await;
    let prefix = unique("cli_tail");
    let mut config = NatsConfig::new(nats_url());
    config.subject_prefix.clone_from(&prefix);
    let bus = NatsBus::connect(config)
        .await
        .unwrap_or_else(|e| panic!("NATS is not reachable at {}: {e}", nats_url()));
    let mut child = s
        .command(
            EVENTFLOW,
            &[
                "--nats-url",
                &nats_url(),
                "--bus-prefix",
                &prefix,
                "tail",
                "order.*",
                "--bus",
                "nats",
                "--count",
                "1",
                "--json",
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert!(line.starts_with("following the Nats bus"), "{line}");
    // Core NATS delivers at most once and the server may see the tail's SUB after a first
    // publish: publish (events of another type first, which it must not show) until it exits.
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let waiter = {
        let done = Arc::clone(&done);
        tokio::task::spawn_blocking(move || {
            let output = child.wait_with_output();
            done.store(true, Ordering::SeqCst);
            output
        })
    };
    let mut sent = Vec::new();
    while !done.load(Ordering::SeqCst) {
        bus.publish(Event::new("payment.failed", json!({})).unwrap())
            .await
            .unwrap();
        let event = Event::new("order.placed", json!({ "n": sent.len() })).unwrap();
        sent.push(event.id);
        bus.publish(event).await.unwrap();
        assert!(sent.len() < 200, "tail never showed an event");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let output = waiter.await.unwrap().unwrap();
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let shown: Event = serde_json::from_str(stdout.trim_end()).unwrap();
    assert_eq!(shown.event_type, "order.placed");
    assert!(sent.contains(&shown.id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_one_line_on_stderr_and_a_failure() {
    let s = Seeded::new().await;
    let cases: &[(&[&str], &str)] = &[
        (&["stream", "nope"], "unknown stream \"nope\""),
        (&["trace", "nope"], "no events with correlation id \"nope\""),
        (&["tail", "order..x"], "pattern"),
        (
            &["dead-letters", "show", "not-a-uuid"],
            "invalid value 'not-a-uuid'",
        ),
        (
            &["events", "--since", "soon"],
            "invalid value 'soon' for '--since",
        ),
        (&["--bogus"], "unexpected argument '--bogus'"),
        (
            &[
                "--database-url",
                "postgres://postgres@127.0.0.1:1/test",
                "streams",
            ],
            "cannot connect to PostgreSQL at postgres://postgres@127.0.0.1:1/test",
        ),
        (
            &[
                "--database-url",
                "postgres://user:secret@127.0.0.1:1/test",
                "streams",
            ],
            "postgres://user@127.0.0.1:1/test",
        ),
        (
            &["--database-url", "mysql://x", "streams"],
            "invalid PostgreSQL URL",
        ),
        (&["--schema", "Bad-Name", "streams"], "invalid schema name"),
        (
            &["dead-letters", "retry", PARKED_ID, "--bus", "nats"],
            "pass --nats-url or set NATS_URL",
        ),
    ];
    for (args, expected) in cases {
        let line = one_line_error(&s.run(args));
        assert!(
            line.contains(expected),
            "eventflow {args:?}: {line:?} lacks {expected:?}"
        );
        assert!(!line.contains("secret"), "{line}");
    }
    let missing_url = one_line_error(
        &Command::new(EVENTFLOW)
            .args(["streams"])
            .env_remove("DATABASE_URL")
            .output()
            .unwrap(),
    );
    assert_eq!(
        missing_url,
        "error: no database: pass --database-url or set DATABASE_URL"
    );
}

#[test]
fn every_command_has_help() {
    for args in [
        &["--help"][..],
        &["migrate", "--help"],
        &["streams", "--help"],
        &["stream", "--help"],
        &["events", "--help"],
        &["tail", "--help"],
        &["trace", "--help"],
        &["projections", "--help"],
        &["projections", "rebuild", "--help"],
        &["projections", "reset", "--help"],
        &["projections", "pause", "--help"],
        &["projections", "resume", "--help"],
        &["relay", "status", "--help"],
        &["dead-letters", "--help"],
        &["dead-letters", "list", "--help"],
        &["dead-letters", "show", "--help"],
        &["dead-letters", "retry", "--help"],
        &["dead-letters", "discard", "--help"],
        &["sagas", "--help"],
    ] {
        let output = Command::new(EVENTFLOW).args(args).output().unwrap();
        assert!(output.status.success(), "{args:?}");
        let text = String::from_utf8(output.stdout).unwrap();
        assert!(text.contains("Usage: eventflow"), "{args:?}: {text}");
    }
}

/// The README's "Operating eventflow" section: each `console` block between the markers starts
/// with `$ eventflow ARGS`; the rest is what the binary prints for ARGS on the seeded store.
/// `EVENTFLOW_UPDATE_README=1` rewrites the blocks from the binary's output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_shows_real_output() {
    const BEGIN: &str = "<!-- cli-output:begin (eventflow-cli/tests/cli.rs keeps this true) -->";
    const END: &str = "<!-- cli-output:end -->";
    let s = Seeded::new().await;
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
    let readme = std::fs::read_to_string(path).unwrap();
    let start = readme
        .find(BEGIN)
        .expect("README lacks the cli-output markers")
        + BEGIN.len();
    let end = start + readme[start..].find(END).unwrap();
    let section = &readme[start..end];
    let mut rewritten = String::new();
    let mut rest = section;
    let mut blocks = 0;
    while let Some(open) = rest.find("```console\n") {
        let body_start = open + "```console\n".len();
        let close = body_start + rest[body_start..].find("```").unwrap();
        let body = &rest[body_start..close];
        let command = body.lines().next().unwrap();
        let args: Vec<&str> = command
            .strip_prefix("$ eventflow ")
            .expect("a block starts with `$ eventflow `")
            .split_whitespace()
            .collect();
        let actual = format!("{command}\n{}", s.ok(&args));
        if std::env::var_os("EVENTFLOW_UPDATE_README").is_none() {
            assert_eq!(
                body, actual,
                "README block for `{command}` is stale; rerun with EVENTFLOW_UPDATE_README=1"
            );
        }
        rewritten.push_str(&rest[..body_start]);
        rewritten.push_str(&actual);
        rest = &rest[close..];
        blocks += 1;
    }
    rewritten.push_str(rest);
    assert!(blocks >= 4, "only {blocks} blocks");
    if std::env::var_os("EVENTFLOW_UPDATE_README").is_some() {
        std::fs::write(
            path,
            format!("{}{rewritten}{}", &readme[..start], &readme[end..]),
        )
        .unwrap();
    }
}

/// Removes every key under a test's prefix from the shared Redis.
struct RedisCleanup(String);

impl Drop for RedisCleanup {
    fn drop(&mut self) {
        let Ok(client) = redis::Client::open(redis_url()) else {
            return;
        };
        let Ok(mut conn) = client.get_connection() else {
            return;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", self.0))
            .query(&mut conn)
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: redis::RedisResult<()> = redis::cmd("DEL").arg(keys).query(&mut conn);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_list_reads_the_redis_dead_letter_stream() {
    use eventflow::bus::SubscriptionOptions;
    use eventflow::bus::redis::{RedisBus, RedisConfig};
    let s = Seeded::new().await;
    let prefix = unique("ef_cli_dlq");
    let _cleanup = RedisCleanup(prefix.clone());
    let mut config = RedisConfig::new(redis_url());
    config.use_streams = true;
    config.key_prefix.clone_from(&prefix);
    config.max_deliveries = 2;
    config.retry_delay = Duration::from_millis(50);
    config.block = Duration::from_millis(200);
    let bus = RedisBus::connect(config)
        .await
        .unwrap_or_else(|e| panic!("Redis is not reachable at {}: {e}", redis_url()));
    let run = |args: &[&str]| {
        let mut args = args.to_vec();
        args.extend(["--bus-prefix", &prefix]);
        let output = s
            .command(EVENTFLOW, &args)
            .env("REDIS_URL", redis_url())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    // Nothing dead-lettered yet.
    assert_eq!(
        run(&["dead-letters", "list", "--bus", "redis"]),
        "ID  GROUP  TYPE  DELIVERIES  REASON  EVENT\n"
    );

    let mut errors = bus.errors();
    let handler = Arc::new(|event: Arc<Event>| async move {
        if event.payload["poison"] == json!(true) {
            Err::<(), BoxError>("cannot take it".into())
        } else {
            Ok(())
        }
    });
    let _sub = bus
        .subscribe_with(&["p.>"], SubscriptionOptions::named("p-svc"), handler)
        .await
        .unwrap();
    let poison = Event::new("p.item", json!({ "poison": true })).unwrap();
    bus.publish(poison.clone()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), async {
        while errors.recv().await.unwrap().kind != eventflow::bus::BusErrorKind::DeadLettered {}
    })
    .await
    .expect("never dead-lettered");

    let json: Value =
        serde_json::from_str(&run(&["dead-letters", "list", "--bus", "redis", "--json"])).unwrap();
    let entries = json.as_array().unwrap();
    assert_eq!(entries.len(), 1, "{json}");
    assert_eq!(entries[0]["group"], "p-svc");
    assert_eq!(entries[0]["reason"], "max deliveries");
    assert_eq!(entries[0]["deliveries"], 2);
    assert_eq!(entries[0]["event_type"], "p.item");
    assert_eq!(entries[0]["stream"], bus.stream_key());
    assert_eq!(entries[0]["event"]["id"], poison.id.to_string());
    let table = run(&["dead-letters", "list", "--bus", "redis"]);
    let rows: Vec<Vec<&str>> = table.lines().map(cells).collect();
    assert_eq!(rows.len(), 2, "{table}");
    let id = entries[0]["id"].as_str().unwrap();
    let event_id = poison.id.to_string();
    assert_eq!(
        rows[1],
        [
            id,
            "p-svc",
            "p.item",
            "2",
            "max deliveries",
            event_id.as_str()
        ],
        "{table}"
    );
    bus.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_list_reads_the_jetstream_dead_letter_subject() {
    let s = Seeded::new().await;
    let mut config = NatsConfig::new(nats_url());
    config.subject_prefix = unique("ef_cli_js");
    config.enable_jetstream = true;
    config.memory_storage = true;
    config.stream_name = unique("EF_CLI");
    config.max_deliver = 2;
    config.ack_wait = Duration::from_secs(2);
    config.retry_backoff = Duration::from_millis(20);
    config.max_retry_backoff = Duration::from_millis(200);
    let subject = unique("ef_cli_dlq");
    config.dead_letter_subject = Some(subject.clone());
    let streams = [
        config.stream_name.clone(),
        format!("{}-DLQ", config.stream_name),
    ];
    let bus = NatsBus::connect(config)
        .await
        .unwrap_or_else(|e| panic!("NATS is not reachable at {}: {e}", nats_url()));
    let run = |args: &[&str]| {
        let mut args = args.to_vec();
        args.extend(["--dead-letter-subject", &subject]);
        let output = s
            .command(EVENTFLOW, &args)
            .env("NATS_URL", nats_url())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    assert_eq!(
        run(&["dead-letters", "list", "--bus", "nats"]),
        "SEQ  CONSUMER  SUBJECT  DELIVERIES  ERROR  EVENT\n"
    );

    let mut errors = bus.errors();
    let _sub = bus
        .subscribe_with(
            &["poison.*"],
            eventflow::bus::SubscriptionOptions::named("p-svc"),
            Arc::new(sync_handler(|_e: &Event| Err("cannot digest".into()))),
        )
        .await
        .unwrap();
    let poison = Event::new("poison.pill", json!({ "n": 1 })).unwrap();
    bus.publish(poison.clone()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(20), async {
        while errors.recv().await.unwrap().kind != eventflow::bus::BusErrorKind::DeadLettered {}
    })
    .await
    .expect("never dead-lettered");

    let json: Value =
        serde_json::from_str(&run(&["dead-letters", "list", "--bus", "nats", "--json"])).unwrap();
    let messages = json.as_array().unwrap();
    assert_eq!(messages.len(), 1, "{json}");
    let m = &messages[0];
    assert_eq!(m["stream"], streams[1].as_str());
    assert_eq!(m["sequence"], 1);
    assert_eq!(m["consumer"], "p-svc");
    assert_eq!(m["deliveries"], 2);
    assert!(
        m["error"].as_str().unwrap().contains("cannot digest"),
        "{m}"
    );
    assert_eq!(m["stream_sequence"], 1);
    assert_eq!(m["event"]["id"], poison.id.to_string());
    let table = run(&["dead-letters", "list", "--bus", "nats"]);
    let rows: Vec<Vec<&str>> = table.lines().map(cells).collect();
    assert_eq!(rows.len(), 2, "{table}");
    let delivered_on = m["subject"].as_str().unwrap();
    assert!(delivered_on.ends_with(".poison.pill"), "{m}");
    let event_id = poison.id.to_string();
    assert_eq!(
        [rows[1][0], rows[1][1], rows[1][2], rows[1][3], rows[1][5]],
        ["1", "p-svc", delivered_on, "2", event_id.as_str()],
        "{table}"
    );
    // No dead-letter subject: one clear line.
    let output = s
        .command(EVENTFLOW, &["dead-letters", "list", "--bus", "nats"])
        .env("NATS_URL", nats_url())
        .output()
        .unwrap();
    assert!(one_line_error(&output).contains("--dead-letter-subject"));

    bus.close().await.unwrap();
    let client = async_nats::connect(nats_url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    for stream in &streams {
        js.delete_stream(stream).await.unwrap();
    }
}
