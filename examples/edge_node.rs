//! Example: an edge node that keeps working while its link to the centre is down.
//!
//! The node appends meter readings to its own SQLite file. Two [`Forwarder`]s follow that file
//! from checkpoints kept in it and ship every reading to the centre: one into the central
//! PostgreSQL store (idempotent append by event id), one into NATS JetStream (`Nats-Msg-Id` =
//! event id), each with the node's id in front of the stream ids. The node reaches the centre
//! through a local port standing in for its uplink: closed while the node records its first
//! readings (the forwarders retry with backoff and their status shows the backlog), opened
//! later, and the forwarders catch up, printing their progress. At the end every reading is in
//! the centre exactly once, and the example cleans up after itself.
//!
//! Needs PostgreSQL and NATS with JetStream on loopback (or `DATABASE_URL` / `NATS_URL`):
//!
//! ```text
//! cargo run -p eventflow-examples --features postgres,nats --example edge_node
//! ```
#![allow(clippy::print_stdout)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use eventflow::bus::nats::{NatsBus, NatsConfig};
use eventflow::postgres::{PgConnectOptions, PgPoolOptions, PostgresEventStore};
use eventflow::relay::{ForwardTarget, Forwarder, RelayHandle};
use eventflow::sqlite::SqliteEventStore;
use eventflow::{Error, Event, EventBus, EventStore, ExpectedVersion};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};

const NODE: &str = "node-7";
const METERS: u64 = 4;
const READINGS: u64 = 50;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let database_url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let nats_url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned());
    let run = format!("edge_{}", std::process::id());

    // The centre, prepared by its operators: a schema for this run in PostgreSQL.
    let central = PostgresEventStore::builder(PgPoolOptions::new().connect(&database_url).await?)
        .schema(&run)
        .build()?;
    central.migrate().await?;

    // The node's uplink: two local ports that forward to the centre once the link is up.
    let pg: PgConnectOptions = database_url.parse()?;
    let pg_link = Uplink::down(format!("{}:{}", pg.get_host(), pg.get_port()));
    let nats_host = nats_url.trim_start_matches("nats://").to_owned();
    let nats_link = Uplink::down(nats_host);

    // The node: its own file, and a forwarder per far side.
    let dir = std::env::temp_dir().join(&run);
    std::fs::create_dir_all(&dir)?;
    let node = SqliteEventStore::open(dir.join("node.db")).await?;
    let to_postgres = {
        let (options, schema) = (pg.clone().port(pg_link.port), run.clone());
        Forwarder::new(
            node.clone(),
            ForwardTarget::store(move || {
                let (options, schema) = (options.clone(), schema.clone());
                async move {
                    let pool = PgPoolOptions::new()
                        .acquire_timeout(Duration::from_secs(1))
                        .connect_with(options)
                        .await
                        .map_err(|e| Error::Connect {
                            backend: "postgres",
                            target: "uplink".into(),
                            source: Box::new(e),
                        })?;
                    let store = PostgresEventStore::builder(pool).schema(&schema).build()?;
                    Ok(Arc::new(store) as Arc<dyn EventStore>)
                }
            }),
        )
        .name("to-postgres")
        .prefix_streams(format!("{NODE}/"))
        .backoff(Duration::from_millis(100), Duration::from_millis(500))
        .spawn()
    };
    let mut nats = NatsConfig::jetstream(format!("nats://127.0.0.1:{}", nats_link.port));
    nats.stream_name = run.to_uppercase();
    nats.subject_prefix = run.clone();
    nats.connect_timeout = Duration::from_millis(500);
    let to_jetstream = {
        let nats = nats.clone();
        Forwarder::new(
            node.clone(),
            ForwardTarget::bus(move || {
                let nats = nats.clone();
                async move { Ok(Arc::new(NatsBus::connect(nats).await?) as Arc<dyn EventBus>) }
            }),
        )
        .name("to-jetstream")
        .prefix_streams(format!("{NODE}/"))
        .backoff(Duration::from_millis(100), Duration::from_millis(500))
        .spawn()
    };

    // The link is down: the node records readings all the same.
    println!(
        "-- uplink down; {NODE} records {} readings",
        METERS * READINGS
    );
    let mut appended = HashSet::new();
    for reading in 0..READINGS {
        for meter in 0..METERS {
            let event = Event::new(
                "meter.reading",
                json!({ "meter": meter, "reading": reading, "kwh": 1000 + reading * 3 + meter }),
            )?;
            appended.insert(event.id);
            node.append(&format!("meter-{meter}"), ExpectedVersion::Any, event)
                .await?;
        }
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    print_status("while down", &to_postgres, &to_jetstream).await?;

    // The link comes back: the forwarders catch up.
    println!("-- uplink up");
    let _pg_up = pg_link.up().await?;
    let _nats_up = nats_link.up().await?;
    let head = node.head_position().await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while to_postgres.position() < head || to_jetstream.position() < head {
        if tokio::time::Instant::now() > deadline {
            return Err("the forwarders did not catch up within 60 s".into());
        }
        print_status("catching up", &to_postgres, &to_jetstream).await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    print_status("caught up", &to_postgres, &to_jetstream).await?;
    to_postgres.stop().await;
    to_jetstream.stop().await;

    // The centre holds every reading exactly once.
    let in_postgres = central.read_all(0, 100_000).await?;
    let ids: HashSet<_> = in_postgres.iter().map(|e| e.id).collect();
    assert_eq!(ids, appended, "PostgreSQL holds other events");
    assert_eq!(
        ids.len(),
        in_postgres.len(),
        "an event arrived twice in PostgreSQL"
    );
    let js = async_nats_client(&nats_url).await?;
    let mut stream = js.get_stream(&nats.stream_name).await?;
    let in_jetstream = stream.info().await?.state.messages;
    assert_eq!(
        in_jetstream,
        METERS * READINGS,
        "JetStream holds another count"
    );
    println!(
        "-- the centre holds {} readings in PostgreSQL (streams {NODE}/meter-*) and {in_jetstream} in JetStream",
        in_postgres.len()
    );

    // Clean up: the run's stream, schema and file.
    js.delete_stream(&nats.stream_name).await?;
    sqlx_drop_schema(&central, &run).await?;
    node.close().await;
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

async fn print_status(
    when: &str,
    to_postgres: &RelayHandle,
    to_jetstream: &RelayHandle,
) -> eventflow::Result<()> {
    let (pg, js) = (to_postgres.status().await?, to_jetstream.status().await?);
    println!(
        "   {when:<12} postgres: {:>3}/{} ({} behind)   jetstream: {:>3}/{} ({} behind)",
        pg.position, pg.head, pg.lag, js.position, js.head, js.lag
    );
    Ok(())
}

/// A local port standing in for the node's uplink: nothing listens until [`up`](Self::up),
/// then it forwards every connection to the centre.
struct Uplink {
    port: u16,
    centre: String,
}

impl Uplink {
    fn down(centre: String) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or(0);
        Uplink { port, centre }
    }

    /// Opens the link; it stays up while the returned task lives.
    async fn up(&self) -> std::io::Result<tokio::task::JoinHandle<()>> {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await?;
        let centre = self.centre.clone();
        Ok(tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let centre = centre.clone();
                tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&centre).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }))
    }
}

async fn async_nats_client(
    url: &str,
) -> Result<async_nats::jetstream::Context, Box<dyn std::error::Error>> {
    Ok(async_nats::jetstream::new(async_nats::connect(url).await?))
}

async fn sqlx_drop_schema(store: &PostgresEventStore, schema: &str) -> Result<(), sqlx::Error> {
    sqlx::query(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .execute(store.pool())
        .await
        .map(|_| ())
}
